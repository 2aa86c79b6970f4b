//! The serve soak's load: `egress serve` (the real binary, started by
//! `soak/run --serve`) carrying a busy homeserver's outbound traffic on
//! loopback, with the fault schedule; one JSON line a minute, then the leak,
//! tunnel and accounting checks, a table and a verdict.
//!
//! The load is hand-written HTTP/1.1 over tokio and rustls, so that every
//! request is one this process sent, on a socket whose address it knows:
//!
//! * **federation**: [`LONG_TUNNELS`] long-lived CONNECT tunnels to as many
//!   destinations (`hsN.direct.soak.test`, `hsN.parent.soak.test` through the
//!   parent squid, and `127.0.0.1` literals), TLS to nginx inside; one in
//!   [`BUSY_EVERY`] is busy (a request every 0.2–1 s: 100 bytes, 4 KiB up or
//!   64 KiB down), the others send one request and then stay idle for
//!   20–100 s between requests. A tunnel that ends is opened again.
//! * **push / keys**: short tunnels: CONNECT, TLS, one request (`POST /post`
//!   or `GET /small`) with `Connection: close`, end.
//! * **plain**: short tunnels with plain HTTP inside (nginx's `http://` ports).
//! * **preview**: forwarded `GET http://pvN.….soak.test:PORT/…?r=ID` on
//!   keep-alive connections to serve (one in ten `/big` dropped after its
//!   first chunk: a client that leaves mid-body).
//! * **denied**: blocked literals (`10.1.2.3`, `[::ffff:10.1.2.3]`,
//!   `169.254.169.254`, `127.0.0.66`), names dnsmasq resolves to blocked
//!   addresses (`*.bad.soak.test` → 10.0.0.5, `*.lo.bad.soak.test` →
//!   127.0.0.66, `evil.parent.soak.test` → 10.0.0.7) and names the
//!   `--deny-domain '*.denied.soak.test'` glob refuses; CONNECT and GET.
//! * **vanish**: CONNECT, then the client drops the socket mid-tunnel:
//!   garbage then a reset, a reset in the middle of a 64 KiB body, or a
//!   plain close before anything was sent.
//! * **flip**: CONNECT to `flip.soak.test` (127.0.0.2): allowed by policy A,
//!   denied by policy B, the policies swapped by SIGHUP (below).
//!
//! The schedule repeats every minute, in 10 s windows: 0–10 clean; 10–20
//! origin faults (a fifth of previews and short tunnels go to the fake
//! origin's `/reset` or `/close`); 20–30 squid (the parent) SIGKILLed at 20 s
//! and started again at 23 s; 30–40 dnsmasq stopped at 30 s and started again
//! at 34 s; 40–50 stalls (one in twenty previews and plain tunnels ask the
//! fake for `/stall`; the client gives up after [`BODY_IDLE`] and drops the
//! connection); 50–60 reloads: SIGHUP with policy B at 50 s (127.0.0.2 no
//! longer allowed), policy A again at 56 s. Around each reload: a tunnel to
//! flip.soak.test opened before it must still carry a request after it, and a
//! new CONNECT to flip.soak.test must be denied after the first reload and
//! allowed after the second. `soak/run` does what the load asks on stdout
//! (`squid-kill`, `squid-start`, `dns-stop`, `dns-start`, `reload B`,
//! `reload A`) and answers `ok` on stdin once done (a reload: once serve's
//! `egress_serve_reloads_total` has counted it).
//!
//! Every request is recorded (its client address, method and target, the
//! decision its answer means, the decisions the schedule allows for it, and
//! for tunnels that ended cleanly the bytes each way). At the end serve's
//! JSON log is read and each line matched to a request by client
//! address:port, method and target (a previews' target carries a unique
//! `r=` id; a CONNECT target repeats, so lines with the same key are
//! matched as a multiset).
//!
//! Fails (exit 1, saying why) when: a request got no answer within
//! [`ANSWER_LIMIT`] (the CONNECT reply, or the response head); a request got
//! a decision the schedule does not allow (a denied target let through, an
//! allowed one refused, a failure outside a fault's window); a request
//! inside a tunnel to nginx failed outside a fault's window; a request has no
//! log line, two, or a line whose decision, status, upstream or bytes do not
//! match; a log line matches no request; `/metrics` counters do not agree
//! with the log (requests by decision, bytes); a log line was dropped (unless
//! `--allow-log-drops 1`); a reload check failed; `egress_serve_active_tunnels`
//! is not back to 0 once the clients have stopped; serve's descriptors or RSS
//! after the load are over the baseline + 10 %; with `--max-slope M`, serve's
//! memory grows more than M MiB per hour under load (least-squares slopes
//! over the run's last 90 minutes of the RSS serve reads right after its
//! trims and of each minute's median heap in use: see `growth`);
//! anything in the load panics.
//!
//! The baseline is taken after a warm-up of one whole schedule minute (every
//! fault, both reloads) once the clients have stopped, the tunnels are closed
//! and the origins have closed serve's idle keep-alive connections; the same
//! wait comes after the load. serve is another process, so its RSS is read as
//! it is (VmRSS in /proc/PID/status); serve hands its free pages back with
//! `malloc_trim` every `--memory-trim-interval` (the soak passes it on, 60 s
//! by default), and each idle point waits for the next trim
//! (`egress_serve_memory_trims_total` going up), so both figures are what
//! serve holds. With the interval 0, glibc's kept free pages are in both.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write as _};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::{opt, opt_num, usage};

/// Long-lived federation tunnels (one destination each).
const LONG_TUNNELS: usize = 240;
/// One long tunnel in this many is busy.
const BUSY_EVERY: usize = 5;
const SHORT_WORKERS: usize = 6;
const PLAIN_WORKERS: usize = 2;
const PREVIEW_WORKERS: usize = 6;
const DENIED_WORKERS: usize = 2;
const VANISH_WORKERS: usize = 2;
/// serve's answer to a request (the CONNECT reply, a response head), at
/// most: serve's limits (`--connect-timeout 2s` for DNS and again for the
/// connection, `--response-timeout 5s`) and slack.
pub(crate) const ANSWER_LIMIT: Duration = Duration::from_secs(12);
/// How long past a limit a wait is cut off.
const GUARD: Duration = Duration::from_secs(10);
/// The client gives up on a body that sends nothing for this long.
const BODY_IDLE: Duration = Duration::from_secs(3);
/// Inside a tunnel: the TLS handshake, a response head.
const INNER_LIMIT: Duration = Duration::from_secs(5);
/// A fault's window stays open this long after its end (squid's and
/// dnsmasq's first answers after a restart, serve's 2 s DNS limit).
const FAULT_TAIL: Duration = Duration::from_secs(3);
/// RSS and descriptors after the load, over the baseline, at most.
const GROWTH: f64 = 1.10;
const WINDOW: Duration = Duration::from_secs(10);
const WINDOWS: [&str; 6] = [
    "clean",
    "origin faults",
    "squid killed",
    "dnsmasq down",
    "stalls",
    "reloads",
];
const POST_LEN: usize = 4096;
const SMALL_LEN: usize = crate::fake::SMALL_LEN;
const BIG_LEN: usize = crate::fake::BIG_LEN;

pub(crate) fn main(opts: &HashMap<String, String>) -> i32 {
    crate::count_panics();
    let config = crate::read_config(opts);
    let run = Run {
        minutes: opt_num(opts, "minutes", 1.0),
        warmup: Duration::from_secs_f64(opt_num(opts, "warmup", 60.0)),
        out: opt(opts, "out").to_owned(),
        allow_log_drops: opt_num(opts, "allow-log-drops", 0u8) != 0,
        max_slope: opts.get("max-slope").map(|v| {
            v.parse()
                .unwrap_or_else(|_| crate::usage(&format!("--max-slope: not a number: {v}")))
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(soak(config, run));
    runtime.shutdown_timeout(Duration::from_secs(5));
    code
}

struct Run {
    minutes: f64,
    warmup: Duration,
    out: String,
    allow_log_drops: bool,
    /// MiB per hour serve's RSS may grow under load (`--max-slope`).
    max_slope: Option<f64>,
}

/// Where everything is (from soak/run).
struct Cfg {
    proxy: SocketAddr,
    metrics: SocketAddr,
    pid: u32,
    /// serve's `--memory-trim-interval` (none: it never trims).
    memory_trim: Option<Duration>,
    log: String,
    fed_ports: Vec<u16>,
    preview_ports: Vec<u16>,
    fake_http: Vec<u16>,
    fake_https: Vec<u16>,
    flip_port: u16,
    squid_port: u16,
    dns_port: u16,
    tls: tokio_rustls::TlsConnector,
}

// ---------------------------------------------------------------- requests

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Federation,
    Push,
    Keys,
    Plain,
    Preview,
    Denied,
    Vanish,
    Flip,
}

const KINDS: [Kind; 8] = [
    Kind::Federation,
    Kind::Push,
    Kind::Keys,
    Kind::Plain,
    Kind::Preview,
    Kind::Denied,
    Kind::Vanish,
    Kind::Flip,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Federation => "federation",
            Kind::Push => "push",
            Kind::Keys => "keys",
            Kind::Plain => "plain",
            Kind::Preview => "preview",
            Kind::Denied => "denied",
            Kind::Vanish => "vanish",
            Kind::Flip => "flip",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dec {
    Allowed = 1,
    Denied = 2,
    Failed = 4,
}

impl Dec {
    fn name(self) -> &'static str {
        match self {
            Dec::Allowed => "allowed",
            Dec::Denied => "denied",
            Dec::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Dec> {
        match s {
            "allowed" => Some(Dec::Allowed),
            "denied" => Some(Dec::Denied),
            "failed" => Some(Dec::Failed),
            _ => None,
        }
    }

    /// What serve's status means, as the client sees it. Origins in this
    /// load never answer 502 or 504, nor 403 with X-Egress-Denied.
    fn of(status: u16, egress_denied: bool, connect: bool) -> Dec {
        match status {
            502 | 504 => Dec::Failed,
            400 | 407 | 429 | 508 => Dec::Denied,
            403 if connect || egress_denied => Dec::Denied,
            _ => Dec::Allowed,
        }
    }
}

fn mask_names(mask: u8) -> String {
    [Dec::Allowed, Dec::Denied, Dec::Failed]
        .iter()
        .filter(|d| mask & **d as u8 != 0)
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// How a target is reached: a name serve connects to directly, a name it
/// reaches through the parent, or an IP literal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Direct,
    Parent,
    Literal,
}

/// One request as the load saw it.
struct Rec {
    client: SocketAddr,
    connect: bool,
    target: String,
    kind: Kind,
    route: Route,
    /// Decisions the schedule allows (a mask of [`Dec`]).
    ok: u8,
    /// The decision and status the answer meant; None: no answer.
    answer: Option<(Dec, u16)>,
    /// Bytes up and down through a tunnel that ended cleanly.
    bytes: Option<(u64, u64)>,
    /// A forwarded response the client gave up on (a stall): serve must log
    /// that the client left.
    left: bool,
}

// ------------------------------------------------------------------ faults

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Squid,
    Dns,
}

/// Fault windows (start, end), and the policy in force.
struct Faults {
    windows: Mutex<Vec<(Fault, Instant, Option<Instant>)>>,
    /// 0: policy A (flip.soak.test allowed), 1: policy B (denied).
    policy: AtomicU8,
}

impl Faults {
    fn begin(&self, fault: Fault) {
        self.windows
            .lock()
            .unwrap()
            .push((fault, Instant::now(), None));
    }

    fn end(&self, fault: Fault) {
        let mut w = self.windows.lock().unwrap();
        if let Some(open) = w
            .iter_mut()
            .rev()
            .find(|(f, _, e)| *f == fault && e.is_none())
        {
            open.2 = Some(Instant::now());
        }
    }

    /// Whether [from, to] overlaps a window of `fault` (open ones count, and
    /// each stays open for [`FAULT_TAIL`] after its end).
    fn overlaps(&self, fault: Fault, from: Instant, to: Instant) -> bool {
        self.windows.lock().unwrap().iter().any(|(f, start, end)| {
            *f == fault && *start <= to && end.is_none_or(|end| from <= end + FAULT_TAIL)
        })
    }

    /// Decisions allowed for a request to an origin serve must let through.
    fn allowed_target(&self, route: Route, fake: bool, from: Instant, to: Instant) -> u8 {
        let mut ok = Dec::Allowed as u8;
        let dns = route != Route::Literal && self.overlaps(Fault::Dns, from, to);
        let squid = route == Route::Parent && self.overlaps(Fault::Squid, from, to);
        if fake || dns || squid {
            ok |= Dec::Failed as u8;
        }
        ok
    }
}

// ------------------------------------------------------------------ shared

#[derive(Default)]
struct Minute {
    by_kind: BTreeMap<Kind, [u64; 4]>,
    inner_requests: u64,
    inner_failed: u64,
    slowest: Option<(Duration, String)>,
    squid_kills: u32,
    dns_restarts: u32,
    reloads: u32,
    rss_max_kib: u64,
    /// serve's RSS, once a second.
    rss_samples: Vec<u64>,
    /// serve's heap in use (egress_serve_heap_in_use_bytes, KiB), once a second.
    heap_samples: Vec<u64>,
    /// serve's RSS right after each of its trims
    /// (egress_serve_memory_trimmed_rss_bytes, KiB).
    trimmed: Vec<u64>,
    fds_max: usize,
    tunnels_max: i64,
}

#[derive(Default)]
struct Failures {
    reasons: BTreeMap<String, (u64, String)>,
}

struct Shared {
    cfg: Cfg,
    faults: Faults,
    minute: Mutex<Minute>,
    records: Mutex<Vec<Rec>>,
    failures: Mutex<Failures>,
    next_id: AtomicU64,
    /// Held by the flip worker for each request, and by the reloads.
    flip: tokio::sync::Mutex<()>,
    stop: watch::Sender<bool>,
    /// Schedule start of the phase (for the window).
    phase_start: Mutex<Instant>,
    warm: AtomicBool,
}

impl Shared {
    fn fail(&self, what: &str, example: String) {
        let mut f = self.failures.lock().unwrap();
        let entry = f.reasons.entry(what.to_owned()).or_insert((0, example));
        entry.0 += 1;
    }

    fn window(&self) -> usize {
        let start = *self.phase_start.lock().unwrap();
        ((start.elapsed().as_secs() % 60) / WINDOW.as_secs()) as usize
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a request: checks its answer against what the schedule
    /// allows and its time against the limit.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        kind: Kind,
        route: Route,
        client: SocketAddr,
        connect: bool,
        target: String,
        ok: u8,
        answer: Option<(Dec, u16)>,
        took: Duration,
    ) -> usize {
        let what = format!(
            "{} {} {target} from {client}",
            kind.name(),
            if connect { "CONNECT" } else { "GET" }
        );
        match answer {
            None => self.fail(
                "a request got no answer within its limit",
                format!("{what}: nothing after {took:?} (limit {ANSWER_LIMIT:?})"),
            ),
            Some((dec, status)) => {
                if took > ANSWER_LIMIT {
                    self.fail(
                        "a request got no answer within its limit",
                        format!(
                            "{what}: answered {status} after {took:?} (limit {ANSWER_LIMIT:?})"
                        ),
                    );
                }
                if ok & dec as u8 == 0 {
                    self.fail(
                        &format!(
                            "a {} request was {} (the schedule allows {})",
                            kind.name(),
                            dec.name(),
                            mask_names(ok)
                        ),
                        format!("{what}: status {status}"),
                    );
                }
            }
        }
        {
            let mut m = self.minute.lock().unwrap();
            let slot = match answer {
                Some((Dec::Allowed, _)) => 0,
                Some((Dec::Denied, _)) => 1,
                Some((Dec::Failed, _)) => 2,
                None => 3,
            };
            m.by_kind.entry(kind).or_default()[slot] += 1;
            if m.slowest.as_ref().is_none_or(|(d, _)| took > *d) {
                let answered =
                    answer.map_or("no answer".to_owned(), |(d, s)| format!("{} {s}", d.name()));
                m.slowest = Some((took, format!("{what} → {answered}")));
            }
        }
        let mut records = self.records.lock().unwrap();
        records.push(Rec {
            client,
            connect,
            target,
            kind,
            route,
            ok,
            answer,
            bytes: None,
            left: false,
        });
        records.len() - 1
    }

    fn set_left(&self, index: usize) {
        self.records.lock().unwrap()[index].left = true;
    }

    fn set_bytes(&self, index: usize, up: u64, down: u64) {
        self.records.lock().unwrap()[index].bytes = Some((up, down));
    }

    /// A request inside a tunnel: counted; a failure to nginx outside a
    /// fault's window fails the run.
    fn inner(&self, ok: bool, tolerated: bool, what: impl FnOnce() -> String) {
        let mut m = self.minute.lock().unwrap();
        m.inner_requests += 1;
        if !ok {
            m.inner_failed += 1;
            drop(m);
            if !tolerated {
                self.fail(
                    "a request inside a tunnel failed outside a fault's window",
                    what(),
                );
            }
        }
    }
}

// ------------------------------------------------------------- the streams

/// A TCP stream that counts the bytes each way.
struct Counted {
    tcp: TcpStream,
    up: u64,
    down: u64,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.tcp).poll_read(cx, buf);
        self.down += (buf.filled().len() - before) as u64;
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            self.up += *n as u64;
        }
        poll
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

type Tls = tokio_rustls::client::TlsStream<Counted>;

/// A response head.
struct Head {
    /// When the head was complete.
    at: Instant,
    status: u16,
    length: Option<usize>,
    chunked: bool,
    close: bool,
    egress_denied: bool,
}

/// How a body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyEnd {
    Complete(usize),
    /// End of file or an error before the end.
    Cut(usize),
    /// Nothing for [`BODY_IDLE`].
    Stalled(usize),
    /// The client stopped reading after the first bytes.
    Dropped(usize),
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = s.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Reads a response head by `deadline`; the bytes after it stay in `buf`.
async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
) -> Result<Head, String> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = text.split("\r\n");
            let status = lines
                .next()
                .and_then(|l| l.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("not a status line: {text:?}"))?;
            let mut head = Head {
                at: Instant::now(),
                status,
                length: None,
                chunked: false,
                close: false,
                egress_denied: false,
            };
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
                match name.as_str() {
                    "content-length" => head.length = value.parse().ok(),
                    "transfer-encoding" => head.chunked = value.eq_ignore_ascii_case("chunked"),
                    "connection" => head.close = value.eq_ignore_ascii_case("close"),
                    "x-egress-denied" => head.egress_denied = true,
                    _ => {}
                }
            }
            return Ok(head);
        }
        if buf.len() > 64 * 1024 {
            return Err("a response head over 64 KiB".into());
        }
        match tokio::time::timeout_at(deadline, read_more(s, buf)).await {
            Err(_) => return Err("timeout".into()),
            Ok(Ok(0)) => return Err("closed before the head".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{:?} before the head", e.kind())),
        }
    }
}

/// Reads a body after `head`; `drop_after_first` stops after the first
/// bytes (the caller then drops the connection).
async fn read_body<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head: &Head,
    drop_after_first: bool,
) -> BodyEnd {
    let mut got = 0usize;
    // Chunked: decoded here as it comes.
    if head.chunked {
        loop {
            let line_end = loop {
                if let Some(i) = find(buf, b"\r\n") {
                    break i;
                }
                match tokio::time::timeout(BODY_IDLE, read_more(s, buf)).await {
                    Err(_) => return BodyEnd::Stalled(got),
                    Ok(Ok(0)) | Ok(Err(_)) => return BodyEnd::Cut(got),
                    Ok(Ok(_)) => {}
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16);
            let Ok(size) = size else {
                return BodyEnd::Cut(got);
            };
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                if drop_after_first && got + buf.len() > 0 {
                    return BodyEnd::Dropped(got + buf.len());
                }
                match tokio::time::timeout(BODY_IDLE, read_more(s, buf)).await {
                    Err(_) => return BodyEnd::Stalled(got + buf.len()),
                    Ok(Ok(0)) | Ok(Err(_)) => return BodyEnd::Cut(got + buf.len()),
                    Ok(Ok(_)) => {}
                }
            }
            buf.drain(..size + 2);
            got += size;
            if size == 0 {
                return BodyEnd::Complete(got);
            }
        }
    }
    let want = match head.length {
        Some(n) => n,
        None if head.status == 204 || head.status == 304 => 0,
        None => usize::MAX, // to the end of the connection
    };
    loop {
        let have = buf.len().min(want);
        if have >= want {
            buf.drain(..want);
            return BodyEnd::Complete(want);
        }
        if drop_after_first && have > 0 {
            return BodyEnd::Dropped(have);
        }
        match tokio::time::timeout(BODY_IDLE, read_more(s, buf)).await {
            Err(_) => return BodyEnd::Stalled(buf.len()),
            Ok(Ok(0)) if want == usize::MAX => {
                let n = buf.len();
                buf.clear();
                return BodyEnd::Complete(n);
            }
            Ok(Ok(0)) | Ok(Err(_)) => return BodyEnd::Cut(buf.len()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One HTTP/1.1 exchange on an open stream: (status, how the body ended,
/// whether the server closes the connection after it).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    request: &[u8],
    limit: Duration,
    drop_after_first: bool,
) -> Result<(Head, BodyEnd), String> {
    let deadline = tokio::time::Instant::now() + limit;
    match tokio::time::timeout_at(deadline, async {
        s.write_all(request).await?;
        s.flush().await
    })
    .await
    {
        Err(_) => return Err("timeout writing the request".into()),
        Ok(Err(e)) => return Err(format!("{:?} writing the request", e.kind())),
        Ok(Ok(())) => {}
    }
    let head = read_head(s, buf, deadline).await?;
    let body = read_body(s, buf, &head, drop_after_first).await;
    Ok((head, body))
}

/// What an inner request asks for, and the body length nginx and the fake
/// answer it with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Small,
    Big,
    Post,
    Reset,
    Close,
    Stall,
}

impl Op {
    fn request(self, host: &str, close: bool) -> Vec<u8> {
        let connection = if close { "Connection: close\r\n" } else { "" };
        match self {
            Op::Post => {
                let mut r = format!(
                    "POST /post HTTP/1.1\r\nHost: {host}\r\n{connection}Content-Type: application/json\r\nContent-Length: {POST_LEN}\r\n\r\n"
                )
                .into_bytes();
                r.extend(std::iter::repeat_n(b'p', POST_LEN));
                r
            }
            op => format!(
                "GET {} HTTP/1.1\r\nHost: {host}\r\n{connection}\r\n",
                op.path()
            )
            .into_bytes(),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Op::Small => "/small",
            Op::Big => "/big",
            Op::Post => "/post",
            Op::Reset => "/reset",
            Op::Close => "/close",
            Op::Stall => "/stall",
        }
    }

    /// The complete body's length.
    fn len(self) -> usize {
        match self {
            Op::Small | Op::Close => SMALL_LEN,
            Op::Big | Op::Reset | Op::Stall => BIG_LEN,
            Op::Post => 7,
        }
    }

    fn is_fault(self) -> bool {
        matches!(self, Op::Reset | Op::Close | Op::Stall)
    }
}

/// A CONNECT through serve: the open socket and its address, the answer's
/// status (None: no answer) and the time to it.
struct Opened {
    tcp: Option<Counted>,
    client: SocketAddr,
    answer: Option<(Dec, u16)>,
    took: Duration,
}

async fn connect(cfg: &Cfg, target: &str, http10: bool) -> Opened {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + ANSWER_LIMIT + GUARD;
    let unknown: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(cfg.proxy)).await {
        Ok(Ok(tcp)) => tcp,
        _ => {
            return Opened {
                tcp: None,
                client: unknown,
                answer: None,
                took: started.elapsed(),
            }
        }
    };
    let _ = tcp.set_nodelay(true);
    let client = tcp.local_addr().unwrap_or(unknown);
    // Synapse's form (HTTP/1.0, no Host) or HTTP/1.1's.
    let request = if http10 {
        format!("CONNECT {target} HTTP/1.0\r\n\r\n")
    } else {
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
    };
    let mut tcp = tcp;
    let mut buf = Vec::new();
    let written = tokio::time::timeout_at(deadline, tcp.write_all(request.as_bytes())).await;
    let head = match written {
        Ok(Ok(())) => read_head(&mut tcp, &mut buf, deadline).await.ok(),
        _ => None,
    };
    let took = started.elapsed();
    let Some(head) = head else {
        return Opened {
            tcp: None,
            client,
            answer: None,
            took,
        };
    };
    let dec = Dec::of(head.status, head.egress_denied, true);
    if head.status != 200 || !buf.is_empty() {
        // A refusal's body is not read: the socket is closed.
        return Opened {
            tcp: None,
            client,
            answer: Some((dec, head.status)),
            took,
        };
    }
    Opened {
        tcp: Some(Counted {
            tcp,
            up: 0,
            down: 0,
        }),
        client,
        answer: Some((dec, head.status)),
        took,
    }
}

async fn tls(cfg: &Cfg, tcp: Counted, host: &str) -> Result<Tls, String> {
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    match tokio::time::timeout(INNER_LIMIT, cfg.tls.connect(name, tcp)).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(format!("TLS: {e}")),
        Err(_) => Err("TLS handshake timeout".into()),
    }
}

/// Ends a tunnel the client closes first: TLS close_notify and FIN, then
/// whatever comes back to the end. True when it ended cleanly.
async fn close_tls(tls: &mut Tls) -> bool {
    let shut = tokio::time::timeout(INNER_LIMIT, tls.shutdown()).await;
    if !matches!(shut, Ok(Ok(()))) {
        return false;
    }
    let mut sink = [0u8; 4096];
    let drained = tokio::time::timeout(INNER_LIMIT, async {
        loop {
            match tls.get_mut().0.read(&mut sink).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    matches!(drained, Ok(true))
}

/// Reads a plain stream to its end (after the server closed), then closes.
async fn drain_to_end<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut sink = [0u8; 4096];
    let drained = tokio::time::timeout(INNER_LIMIT, async {
        loop {
            match s.read(&mut sink).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    matches!(drained, Ok(true))
}

/// A reset instead of a close.
fn reset(tcp: &TcpStream) {
    let _ = tcp.set_zero_linger();
}

// ---------------------------------------------------------------- the load

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_add(1).wrapping_mul(0x2545_F491_4F6C_DD1D))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from + 1))
    }
}

/// Sleeps, or returns false at once when the phase stops.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return false;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    !stopped && !*stop.borrow()
}

/// A destination: (host, route).
fn destination(i: usize) -> (String, Route) {
    match i % 6 {
        0..=2 => (format!("hs{i}.direct.soak.test"), Route::Direct),
        3 | 4 => (format!("hs{i}.parent.soak.test"), Route::Parent),
        _ => ("127.0.0.1".to_owned(), Route::Literal),
    }
}

/// One long-lived federation tunnel, opened again whenever it ends.
async fn federation(sh: Arc<Shared>, i: usize) {
    let mut rng = Rng::new(1000 + i as u64);
    let mut stop = sh.stop.subscribe();
    let (host, route) = destination(i);
    let port = sh.cfg.fed_ports[i % sh.cfg.fed_ports.len()];
    let target = format!("{host}:{port}");
    let busy = i.is_multiple_of(BUSY_EVERY);
    // Start spread over the first seconds.
    if !pause(&mut stop, rng.millis(0, 3000)).await {
        return;
    }
    while !sh.stopped() {
        let opened_at = Instant::now();
        let o = connect(&sh.cfg, &target, i.is_multiple_of(2)).await;
        let ok = sh
            .faults
            .allowed_target(route, false, opened_at, Instant::now());
        let index = sh.record(
            Kind::Federation,
            route,
            o.client,
            true,
            target.clone(),
            ok,
            o.answer,
            o.took,
        );
        let Some(tcp) = o.tcp else {
            if !pause(&mut stop, Duration::from_secs(1)).await {
                return;
            }
            continue;
        };
        let mut tunnel = match tls(&sh.cfg, tcp, &host).await {
            Ok(t) => t,
            Err(e) => {
                let tolerated = sh
                    .faults
                    .allowed_target(route, false, opened_at, Instant::now());
                sh.inner(false, tolerated & Dec::Failed as u8 != 0, || {
                    format!("{target}: {e}")
                });
                let _ = pause(&mut stop, Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut buf = Vec::new();
        let mut clean = false;
        loop {
            let op = match rng.below(10) {
                0..=5 => Op::Small,
                6..=7 => Op::Post,
                _ => Op::Big,
            };
            let sent = Instant::now();
            let result = exchange(
                &mut tunnel,
                &mut buf,
                &op.request(&host, false),
                INNER_LIMIT,
                false,
            )
            .await;
            let good = matches!(&result, Ok((h, BodyEnd::Complete(n))) if h.status == 200 && *n == op.len());
            // Killing squid ends the tunnels through it, idle ones included.
            let tolerated = route == Route::Parent
                && sh.faults.overlaps(Fault::Squid, opened_at, Instant::now());
            let _ = sent;
            sh.inner(good, tolerated, || {
                format!(
                    "{target} {}: {:?}",
                    op.path(),
                    result.as_ref().map(|(h, b)| (h.status, *b))
                )
            });
            if !good {
                break;
            }
            if matches!(&result, Ok((h, _)) if h.close) {
                // nginx ends the connection (keepalive_requests): a clean end.
                clean = drain_to_end(tunnel.get_mut().0).await;
                break;
            }
            let wait = if busy {
                rng.millis(200, 1000)
            } else {
                rng.millis(20_000, 100_000)
            };
            if !pause(&mut stop, wait).await {
                clean = close_tls(&mut tunnel).await;
                break;
            }
        }
        let counted = tunnel.get_ref().0;
        if clean {
            sh.set_bytes(index, counted.up, counted.down);
        }
        drop(tunnel);
        if !pause(&mut stop, Duration::from_millis(500)).await {
            return;
        }
    }
}

/// Short tunnels: push (POST) and key fetches (GET), TLS to nginx, or to the
/// fake origin's faults in their window.
async fn short(sh: Arc<Shared>, w: usize) {
    let mut rng = Rng::new(2000 + w as u64);
    let mut stop = sh.stop.subscribe();
    while pause(&mut stop, rng.millis(50, 250)).await {
        let i = rng.below(1000);
        let (mut host, mut route) = destination(i);
        let kind = if rng.chance(50) {
            Kind::Push
        } else {
            Kind::Keys
        };
        let mut op = if kind == Kind::Push {
            Op::Post
        } else {
            Op::Small
        };
        let mut port = sh.cfg.fed_ports[i % sh.cfg.fed_ports.len()];
        let fake = sh.window() == 1 && rng.chance(20);
        if fake {
            op = if rng.chance(50) { Op::Reset } else { Op::Close };
            port = sh.cfg.fake_https[rng.below(sh.cfg.fake_https.len())];
            if route == Route::Literal {
                (host, route) = (format!("fake{i}.direct.soak.test"), Route::Direct);
            }
        }
        let target = format!("{host}:{port}");
        let started = Instant::now();
        let o = connect(&sh.cfg, &target, rng.chance(50)).await;
        let ok = sh
            .faults
            .allowed_target(route, fake, started, Instant::now());
        let index = sh.record(
            kind,
            route,
            o.client,
            true,
            target.clone(),
            ok,
            o.answer,
            o.took,
        );
        let Some(tcp) = o.tcp else { continue };
        let mut tunnel = match tls(&sh.cfg, tcp, &host).await {
            Ok(t) => t,
            Err(e) => {
                let ok = sh
                    .faults
                    .allowed_target(route, fake, started, Instant::now());
                sh.inner(false, ok & Dec::Failed as u8 != 0, || {
                    format!("{target}: {e}")
                });
                continue;
            }
        };
        let good =
            short_exchange(&sh, &mut tunnel, op, &host, route, &target, op == Op::Reset).await;
        // nginx closes after `Connection: close`: read to the end and close
        // without a close_notify of our own (nothing more goes up).
        if good && !op.is_fault() && drain_to_end(&mut tunnel).await {
            let counted = tunnel.get_ref().0;
            sh.set_bytes(index, counted.up, counted.down);
        }
    }
}

/// One `Connection: close` request inside a short tunnel, counted as an
/// inner request: true when it came back complete (200, the whole body). A
/// failure counts as failed unless `may_fail`; it is tolerated for the
/// fake's faults and, through the parent, while squid is down.
async fn short_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    sh: &Shared,
    s: &mut S,
    op: Op,
    host: &str,
    route: Route,
    target: &str,
    may_fail: bool,
) -> bool {
    let mut buf = Vec::new();
    let sent = Instant::now();
    let result = exchange(s, &mut buf, &op.request(host, true), INNER_LIMIT, false).await;
    let good =
        matches!(&result, Ok((h, BodyEnd::Complete(n))) if h.status == 200 && *n == op.len());
    let tolerated = op.is_fault()
        || route == Route::Parent && sh.faults.overlaps(Fault::Squid, sent, Instant::now());
    sh.inner(good || may_fail, tolerated, || {
        format!(
            "{target} {}: {:?}",
            op.path(),
            result.as_ref().map(|(h, b)| (h.status, *b))
        )
    });
    good
}

/// Short tunnels with plain HTTP inside: nginx's http:// ports, and the
/// fake's resets and stalls in their windows.
async fn plain(sh: Arc<Shared>, w: usize) {
    let mut rng = Rng::new(3000 + w as u64);
    let mut stop = sh.stop.subscribe();
    while pause(&mut stop, rng.millis(100, 300)).await {
        let i = rng.below(1000);
        let (host, route) = destination(i);
        let window = sh.window();
        let (op, port) = if window == 1 && rng.chance(20) {
            (
                Op::Reset,
                sh.cfg.fake_http[rng.below(sh.cfg.fake_http.len())],
            )
        } else if window == 4 && rng.chance(5) {
            (
                Op::Stall,
                sh.cfg.fake_http[rng.below(sh.cfg.fake_http.len())],
            )
        } else {
            let op = if rng.chance(30) { Op::Big } else { Op::Small };
            (op, sh.cfg.preview_ports[i % sh.cfg.preview_ports.len()])
        };
        let target = format!("{host}:{port}");
        let started = Instant::now();
        let o = connect(&sh.cfg, &target, false).await;
        let ok = sh
            .faults
            .allowed_target(route, op.is_fault(), started, Instant::now());
        let index = sh.record(
            Kind::Plain,
            route,
            o.client,
            true,
            target.clone(),
            ok,
            o.answer,
            o.took,
        );
        let Some(mut tcp) = o.tcp else { continue };
        let good = short_exchange(&sh, &mut tcp, op, &host, route, &target, op.is_fault()).await;
        if good && drain_to_end(&mut tcp).await {
            sh.set_bytes(index, tcp.up, tcp.down);
        }
        // A stall: the client gave up after BODY_IDLE and closes (FIN).
    }
}

/// A keep-alive client connection to serve for forwarded requests.
struct Keep {
    tcp: Option<(TcpStream, SocketAddr, Instant)>,
    buf: Vec<u8>,
}

impl Keep {
    /// The connection, opened if needed (and again after 5 s idle: serve
    /// closes idle client connections after --head-timeout).
    async fn get(&mut self, cfg: &Cfg) -> Option<SocketAddr> {
        if self
            .tcp
            .as_ref()
            .is_some_and(|(_, _, last)| last.elapsed() > Duration::from_secs(5))
        {
            self.tcp = None;
        }
        if self.tcp.is_none() {
            let tcp = tokio::time::timeout(INNER_LIMIT, TcpStream::connect(cfg.proxy))
                .await
                .ok()?
                .ok()?;
            let _ = tcp.set_nodelay(true);
            let addr = tcp.local_addr().ok()?;
            self.buf.clear();
            self.tcp = Some((tcp, addr, Instant::now()));
        }
        let (_, addr, last) = self.tcp.as_mut()?;
        *last = Instant::now();
        Some(*addr)
    }
}

/// A forwarded GET on `keep`; returns the record's index.
#[allow(clippy::too_many_arguments)]
async fn forwarded(
    sh: &Shared,
    keep: &mut Keep,
    kind: Kind,
    route: Route,
    url: String,
    host: &str,
    fake: bool,
    want_denied: bool,
    drop_after_first: bool,
) {
    let started = Instant::now();
    let Some(client) = keep.get(&sh.cfg).await else {
        sh.fail("cannot connect to serve", url);
        return;
    };
    let Some((tcp, _, _)) = keep.tcp.as_mut() else {
        return;
    };
    let request = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: egress-soak\r\n\r\n");
    let result = exchange(
        tcp,
        &mut keep.buf,
        request.as_bytes(),
        ANSWER_LIMIT + GUARD,
        drop_after_first,
    )
    .await;
    // The time to serve's answer: the response head.
    let took = result
        .as_ref()
        .map_or_else(|_| started.elapsed(), |(h, _)| h.at - started);
    let ok = if want_denied {
        let mut ok = Dec::Denied as u8;
        if route != Route::Literal && sh.faults.overlaps(Fault::Dns, started, Instant::now()) {
            ok |= Dec::Failed as u8;
        }
        ok
    } else {
        sh.faults
            .allowed_target(route, fake, started, Instant::now())
    };
    let answer = result
        .as_ref()
        .ok()
        .map(|(h, _)| (Dec::of(h.status, h.egress_denied, false), h.status));
    let index = sh.record(kind, route, client, false, url.clone(), ok, answer, took);
    if fake && matches!(&result, Ok((h, BodyEnd::Stalled(_))) if h.status == 200) {
        sh.set_left(index);
    }
    let reuse = match &result {
        Ok((h, BodyEnd::Complete(_))) => !h.close,
        _ => false,
    };
    if let Ok((h, body)) = &result {
        // A body from nginx must be whole, unless the parent died under it.
        let cut = matches!(body, BodyEnd::Cut(_) | BodyEnd::Stalled(_));
        if h.status == 200 && cut && !fake {
            let tolerated =
                route == Route::Parent && sh.faults.overlaps(Fault::Squid, started, Instant::now());
            if !tolerated {
                sh.fail(
                    "a forwarded body from nginx was cut",
                    format!("{url}: {body:?}"),
                );
            }
        }
    }
    if !reuse {
        if let Some((tcp, _, _)) = keep.tcp.take() {
            if drop_after_first {
                reset(&tcp);
            }
        }
    }
}

/// URL previews: forwarded GETs to nginx, and to the fake's faults.
async fn preview(sh: Arc<Shared>, w: usize) {
    let mut rng = Rng::new(4000 + w as u64);
    let mut stop = sh.stop.subscribe();
    let mut keep = Keep {
        tcp: None,
        buf: Vec::new(),
    };
    while pause(&mut stop, rng.millis(20, 80)).await {
        let i = rng.below(400);
        let route = if i.is_multiple_of(3) {
            Route::Parent
        } else {
            Route::Direct
        };
        let via = if route == Route::Parent {
            "parent"
        } else {
            "direct"
        };
        let window = sh.window();
        let (op, port, fake) = if window == 1 && rng.chance(20) {
            let op = if rng.chance(50) { Op::Reset } else { Op::Close };
            (
                op,
                sh.cfg.fake_http[rng.below(sh.cfg.fake_http.len())],
                true,
            )
        } else if window == 4 && rng.chance(5) {
            (
                Op::Stall,
                sh.cfg.fake_http[rng.below(sh.cfg.fake_http.len())],
                true,
            )
        } else {
            let op = if rng.chance(25) { Op::Big } else { Op::Small };
            (
                op,
                sh.cfg.preview_ports[i % sh.cfg.preview_ports.len()],
                false,
            )
        };
        let host = format!("pv{i}.{via}.soak.test:{port}");
        let url = format!("http://{host}{}?r={}", op.path(), sh.id());
        let abandon = op == Op::Big && rng.chance(40);
        forwarded(
            &sh,
            &mut keep,
            Kind::Preview,
            route,
            url,
            &host,
            fake,
            false,
            abandon,
        )
        .await;
    }
}

/// Requests serve must refuse.
async fn denied(sh: Arc<Shared>, w: usize) {
    let mut rng = Rng::new(5000 + w as u64);
    let mut stop = sh.stop.subscribe();
    let mut keep = Keep {
        tcp: None,
        buf: Vec::new(),
    };
    let preview_port = sh.cfg.preview_ports[0];
    let fed_port = sh.cfg.fed_ports[0];
    let mut n = w;
    while pause(&mut stop, rng.millis(30, 100)).await {
        n += 1;
        let id = sh.id();
        // (CONNECT target or GET URL, route, is a CONNECT)
        let (target, route, is_connect) = match n % 9 {
            0 => ("10.1.2.3:443".to_owned(), Route::Literal, true),
            1 => ("[::ffff:10.1.2.3]:8448".to_owned(), Route::Literal, true),
            2 => (
                format!("http://169.254.169.254/latest/meta-data/?r={id}"),
                Route::Literal,
                false,
            ),
            3 => (format!("n{id}.bad.soak.test:8448"), Route::Direct, true),
            4 => (
                format!("http://m{id}.lo.bad.soak.test:{preview_port}/small?r={id}"),
                Route::Direct,
                false,
            ),
            5 => (format!("x{id}.denied.soak.test:443"), Route::Direct, true),
            6 => (
                format!("http://y{id}.denied.soak.test/?r={id}"),
                Route::Direct,
                false,
            ),
            7 => (format!("127.0.0.66:{fed_port}"), Route::Literal, true),
            _ => ("evil.parent.soak.test:8448".to_owned(), Route::Parent, true),
        };
        if is_connect {
            let started = Instant::now();
            let o = connect(&sh.cfg, &target, rng.chance(50)).await;
            let mut ok = Dec::Denied as u8;
            // A name that must resolve first fails while dnsmasq is down
            // (the glob refuses `*.denied` before any lookup).
            if route != Route::Literal
                && !target.contains(".denied.")
                && sh.faults.overlaps(Fault::Dns, started, Instant::now())
            {
                ok |= Dec::Failed as u8;
            }
            sh.record(
                Kind::Denied,
                route,
                o.client,
                true,
                target,
                ok,
                o.answer,
                o.took,
            );
        } else {
            let host = target
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("")
                .to_owned();
            let dns = route != Route::Literal && !target.contains(".denied.");
            let route = if dns { Route::Direct } else { Route::Literal };
            forwarded(
                &sh,
                &mut keep,
                Kind::Denied,
                route,
                target,
                &host,
                false,
                true,
                false,
            )
            .await;
        }
    }
}

/// Clients that vanish mid-tunnel.
async fn vanish(sh: Arc<Shared>, w: usize) {
    let mut rng = Rng::new(6000 + w as u64);
    let mut stop = sh.stop.subscribe();
    while pause(&mut stop, rng.millis(200, 500)).await {
        let i = rng.below(1000);
        let (host, route) = destination(i);
        let port = sh.cfg.fed_ports[i % sh.cfg.fed_ports.len()];
        let target = format!("{host}:{port}");
        let started = Instant::now();
        let o = connect(&sh.cfg, &target, rng.chance(50)).await;
        let ok = sh
            .faults
            .allowed_target(route, false, started, Instant::now());
        sh.record(
            Kind::Vanish,
            route,
            o.client,
            true,
            target,
            ok,
            o.answer,
            o.took,
        );
        let Some(mut tcp) = o.tcp else { continue };
        match rng.below(3) {
            0 => {
                // Half a handshake's worth of garbage, then a reset.
                let _ = tokio::time::timeout(INNER_LIMIT, tcp.tcp.write_all(&[0x16; 100])).await;
                reset(&tcp.tcp);
            }
            1 => {
                // A reset in the middle of a 64 KiB body.
                if let Ok(mut tunnel) = tls(&sh.cfg, tcp, &host).await {
                    let mut buf = Vec::new();
                    let _ = exchange(
                        &mut tunnel,
                        &mut buf,
                        &Op::Big.request(&host, false),
                        INNER_LIMIT,
                        true,
                    )
                    .await;
                    reset(&tunnel.get_ref().0.tcp);
                }
            }
            _ => {} // gone before sending anything
        }
    }
}

/// A new CONNECT to flip.soak.test, TLS and one request: the answer's
/// decision, and whether a request went through.
async fn flip_once(sh: &Shared, want: Dec) -> (Option<Dec>, bool) {
    let target = format!("flip.soak.test:{}", sh.cfg.flip_port);
    let started = Instant::now();
    let o = connect(&sh.cfg, &target, false).await;
    // flip.soak.test is a name: while dnsmasq is down it fails.
    let mut ok = want as u8;
    if sh.faults.overlaps(Fault::Dns, started, Instant::now()) {
        ok |= Dec::Failed as u8;
    }
    let index = sh.record(
        Kind::Flip,
        Route::Direct,
        o.client,
        true,
        target.clone(),
        ok,
        o.answer,
        o.took,
    );
    let dec = o.answer.map(|(d, _)| d);
    let Some(tcp) = o.tcp else {
        return (dec, false);
    };
    let Ok(mut tunnel) = tls(&sh.cfg, tcp, "flip.soak.test").await else {
        return (dec, false);
    };
    let mut buf = Vec::new();
    let result = exchange(
        &mut tunnel,
        &mut buf,
        &Op::Small.request("flip.soak.test", true),
        INNER_LIMIT,
        false,
    )
    .await;
    let good =
        matches!(&result, Ok((h, BodyEnd::Complete(n))) if h.status == 200 && *n == SMALL_LEN);
    sh.inner(good, false, || {
        format!(
            "{target}: {:?}",
            result.as_ref().map(|(h, b)| (h.status, *b))
        )
    });
    if good && drain_to_end(&mut tunnel).await {
        let counted = tunnel.get_ref().0;
        sh.set_bytes(index, counted.up, counted.down);
    }
    (dec, good)
}

async fn flip(sh: Arc<Shared>) {
    let mut stop = sh.stop.subscribe();
    while pause(&mut stop, Duration::from_millis(300)).await {
        let _held = sh.flip.lock().await;
        let want = if sh.faults.policy.load(Ordering::SeqCst) == 1 {
            Dec::Denied
        } else {
            Dec::Allowed
        };
        flip_once(&sh, want).await;
    }
}

/// A tunnel to flip.soak.test held open across the reloads.
struct Held {
    tunnel: Tls,
    buf: Vec<u8>,
    index: usize,
}

async fn open_held(sh: &Shared) -> Result<Held, String> {
    let target = format!("flip.soak.test:{}", sh.cfg.flip_port);
    let o = connect(&sh.cfg, &target, true).await;
    let index = sh.record(
        Kind::Flip,
        Route::Direct,
        o.client,
        true,
        target,
        Dec::Allowed as u8,
        o.answer,
        o.took,
    );
    let tcp = o
        .tcp
        .ok_or_else(|| format!("CONNECT answered {:?}", o.answer))?;
    let tunnel = tls(&sh.cfg, tcp, "flip.soak.test").await?;
    let mut held = Held {
        tunnel,
        buf: Vec::new(),
        index,
    };
    held_request(sh, &mut held).await?;
    Ok(held)
}

async fn held_request(sh: &Shared, held: &mut Held) -> Result<(), String> {
    let result = exchange(
        &mut held.tunnel,
        &mut held.buf,
        &Op::Small.request("flip.soak.test", false),
        INNER_LIMIT,
        false,
    )
    .await;
    let good =
        matches!(&result, Ok((h, BodyEnd::Complete(n))) if h.status == 200 && *n == SMALL_LEN);
    sh.inner(good, true, String::new);
    if good {
        Ok(())
    } else {
        Err(format!("{:?}", result.map(|(h, b)| (h.status, b))))
    }
}

// ------------------------------------------------------------ the schedule

/// Asks soak/run to do `command`; waits for its `ok`.
async fn ask(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
    command: &str,
) -> Result<(), String> {
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("{command}\n").as_bytes())
        .await
        .and(stdout.flush().await)
        .map_err(|e| format!("{command}: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
        Ok(Ok(Some(line))) if line == "ok" => Ok(()),
        other => Err(format!("{command}: soak/run answered {other:?}")),
    }
}

/// The faults and reloads of each minute from `start`, until `total`.
async fn schedule(
    sh: Arc<Shared>,
    lines: Arc<tokio::sync::Mutex<tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>>>,
    start: Instant,
    total: Duration,
) {
    let mut lines = lines.lock().await;
    let mut minute = 0u64;
    loop {
        let at = |s: u64| Duration::from_secs(60 * minute + s);
        if at(23) >= total {
            return;
        }
        tokio::time::sleep_until((start + at(20)).into()).await;
        sh.faults.begin(Fault::Squid);
        if let Err(e) = ask(&mut lines, "squid-kill").await {
            sh.fail("soak/run could not kill squid", e);
        }
        sh.minute.lock().unwrap().squid_kills += 1;
        tokio::time::sleep_until((start + at(23)).into()).await;
        if let Err(e) = ask(&mut lines, "squid-start").await {
            sh.fail("soak/run could not start squid again", e);
        }
        sh.faults.end(Fault::Squid);
        if at(34) >= total {
            return;
        }
        tokio::time::sleep_until((start + at(30)).into()).await;
        sh.faults.begin(Fault::Dns);
        if let Err(e) = ask(&mut lines, "dns-stop").await {
            sh.fail("soak/run could not stop dnsmasq", e);
        }
        tokio::time::sleep_until((start + at(34)).into()).await;
        if let Err(e) = ask(&mut lines, "dns-start").await {
            sh.fail("soak/run could not start dnsmasq again", e);
        }
        sh.faults.end(Fault::Dns);
        sh.minute.lock().unwrap().dns_restarts += 1;
        if at(58) >= total {
            return;
        }
        tokio::time::sleep_until((start + at(50)).into()).await;
        reloads(&sh, &mut lines, start + at(56)).await;
        minute += 1;
    }
}

/// Policy B (flip.soak.test denied), then policy A again at `back_at`, with
/// the checks around each.
async fn reloads(
    sh: &Shared,
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
    back_at: Instant,
) {
    let check = |ok: bool, what: &str, detail: String| {
        if !ok {
            sh.fail(&format!("reload check: {what}"), detail);
        }
    };
    let held = {
        let _flip = sh.flip.lock().await;
        let held = open_held(sh).await;
        check(
            held.is_ok(),
            "a tunnel to flip.soak.test opened before the reload",
            format!("{:?}", held.as_ref().err()),
        );
        if let Err(e) = ask(lines, "reload B").await {
            sh.fail("soak/run could not reload serve", e);
        }
        sh.faults.policy.store(1, Ordering::SeqCst);
        sh.minute.lock().unwrap().reloads += 1;
        let (dec, _) = flip_once(sh, Dec::Denied).await;
        check(
            dec == Some(Dec::Denied),
            "a target allowed before the reload is denied after it",
            format!("new CONNECT flip.soak.test: {dec:?}"),
        );
        let mut held = held.ok();
        if let Some(h) = &mut held {
            let r = held_request(sh, h).await;
            check(
                r.is_ok(),
                "a tunnel opened before the reload still carries a request after it",
                format!("{r:?}"),
            );
        }
        held
    };
    tokio::time::sleep_until(back_at.into()).await;
    let _flip = sh.flip.lock().await;
    if let Err(e) = ask(lines, "reload A").await {
        sh.fail("soak/run could not reload serve", e);
    }
    sh.faults.policy.store(0, Ordering::SeqCst);
    sh.minute.lock().unwrap().reloads += 1;
    let (dec, good) = flip_once(sh, Dec::Allowed).await;
    check(
        dec == Some(Dec::Allowed) && good,
        "the target is allowed again after the second reload",
        format!("new CONNECT flip.soak.test: {dec:?}, request through it {good}"),
    );
    if let Some(mut h) = held {
        let r = held_request(sh, &mut h).await;
        check(
            r.is_ok(),
            "a tunnel opened before both reloads still carries a request after them",
            format!("{r:?}"),
        );
        if close_tls(&mut h.tunnel).await {
            let counted = h.tunnel.get_ref().0;
            sh.set_bytes(h.index, counted.up, counted.down);
        }
    }
}

// ------------------------------------------------------- serve, observed

/// serve's RSS (KiB), high-water mark (KiB) and open descriptors.
fn serve_status(pid: u32) -> (u64, u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (field("VmRSS:"), field("VmHWM:"), fds)
}

/// What serve's descriptors are, summed: sockets by state and peer port
/// (from /proc/net/tcp*, udp*), and the rest by kind (for a report when the
/// count does not go back).
fn serve_fd_kinds(cfg: &Cfg) -> BTreeMap<String, u64> {
    let pid = cfg.pid;
    let role = |port: u16| -> String {
        if port == cfg.squid_port {
            "squid".into()
        } else if port == cfg.dns_port {
            "dnsmasq".into()
        } else if cfg.fed_ports.contains(&port) || port == cfg.flip_port {
            "nginx https".into()
        } else if cfg.preview_ports.contains(&port) {
            "nginx http".into()
        } else if cfg.fake_http.contains(&port) || cfg.fake_https.contains(&port) {
            "fake origin".into()
        } else {
            format!(":{port}")
        }
    };
    let mut sockets: HashMap<String, String> = HashMap::new();
    for (file, proto) in [
        ("tcp", "tcp"),
        ("tcp6", "tcp6"),
        ("udp", "udp"),
        ("udp6", "udp6"),
    ] {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0)
            };
            let state = match f[3] {
                "01" => "established",
                "06" => "time-wait",
                "07" => "close",
                "08" => "close-wait",
                "0A" => "listen",
                other => other,
            };
            let what = if f[3] == "0A" {
                format!("{proto} listen :{}", port(f[1]))
            } else {
                format!("{proto} {state} to {}", role(port(f[2])))
            };
            sockets.insert(f[9].to_owned(), what);
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for entry in dir.flatten() {
            let link = std::fs::read_link(entry.path())
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            let kind = match link
                .strip_prefix("socket:[")
                .and_then(|l| l.strip_suffix(']'))
            {
                Some(inode) => sockets
                    .get(inode)
                    .cloned()
                    .unwrap_or_else(|| "socket (other)".to_owned()),
                None if link.starts_with("anon_inode:") => link,
                None if link.starts_with("pipe:") => "pipe".to_owned(),
                None => "file".to_owned(),
            };
            *out.entry(kind).or_default() += 1;
        }
    }
    out
}

/// `/metrics`, as (name with labels → value).
async fn metrics(addr: SocketAddr) -> Result<BTreeMap<String, f64>, String> {
    let fetch = async {
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut all = Vec::new();
        tcp.read_to_end(&mut all).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(all)
    };
    let all = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| "no answer within 5 s".to_owned())??;
    let text = String::from_utf8_lossy(&all);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let mut out = BTreeMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some((name, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse() {
                out.insert(name.to_owned(), v);
            }
        }
    }
    Ok(out)
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// Requests in `/metrics` by decision.
fn metric_decisions(m: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (name, v) in m {
        if let Some(labels) = name.strip_prefix("egress_serve_requests_total{") {
            if let Some(d) = labels
                .split(',')
                .find_map(|l| l.strip_prefix("decision=\""))
                .and_then(|d| d.split('"').next())
            {
                *out.entry(d.to_owned()).or_default() += *v as u64;
            }
        }
    }
    out
}

/// serve's heap in use in KiB (egress_serve_heap_in_use_bytes; none when it
/// does not export it). Read after the descriptors: the scrape is one.
async fn serve_heap(sh: &Shared) -> Option<u64> {
    let m = metrics(sh.cfg.metrics).await.ok()?;
    m.contains_key("egress_serve_heap_in_use_bytes")
        .then(|| metric(&m, "egress_serve_heap_in_use_bytes") as u64 / 1024)
}

/// Samples serve every second: the most RSS, descriptors and open tunnels.
async fn sampler(sh: Arc<Shared>) {
    let mut trims_seen = None;
    loop {
        // Not between phases: its scrape would be a descriptor of serve's
        // while the baseline is read.
        if sh.stopped() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        // The scrape first: its heap figure and the RSS after it are a
        // moment apart.
        let now = metrics(sh.cfg.metrics).await.ok();
        let (rss, _, fds) = serve_status(sh.cfg.pid);
        let tunnels = now
            .as_ref()
            .map_or(-1, |m| metric(m, "egress_serve_active_tunnels") as i64);
        let heap = now
            .as_ref()
            .filter(|m| m.contains_key("egress_serve_heap_in_use_bytes"))
            .map(|m| metric(m, "egress_serve_heap_in_use_bytes") as u64 / 1024);
        let trims = now
            .as_ref()
            .map(|m| metric(m, "egress_serve_memory_trims_total") as u64);
        // serve reads its RSS right after each trim; a new trim is a new
        // reading.
        let trimmed = now
            .as_ref()
            .filter(|_| matches!((trims_seen, trims), (Some(a), Some(b)) if b > a))
            .map(|m| metric(m, "egress_serve_memory_trimmed_rss_bytes") as u64 / 1024)
            .filter(|&kib| kib > 0);
        if trims.is_some() {
            trims_seen = trims;
        }
        {
            let mut m = sh.minute.lock().unwrap();
            m.rss_max_kib = m.rss_max_kib.max(rss);
            m.rss_samples.push(rss);
            m.heap_samples.extend(heap);
            m.trimmed.extend(trimmed);
            m.fds_max = m.fds_max.max(fds);
            m.tunnels_max = m.tunnels_max.max(tunnels);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Counts the log's lines as it grows.
struct LogTail {
    path: String,
    offset: u64,
    lines: u64,
}

impl LogTail {
    fn update(&mut self) -> u64 {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return self.lines;
        };
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return self.lines;
        }
        let mut new = Vec::new();
        if f.read_to_end(&mut new).is_err() {
            return self.lines;
        }
        // Only whole lines count; a part line is read again next time.
        let whole = new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.lines += new[..whole].iter().filter(|b| **b == b'\n').count() as u64;
        self.offset += whole as u64;
        self.lines
    }
}

// ---------------------------------------------------------------- a phase

fn start_load(sh: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    sh.stop.send_replace(false);
    *sh.phase_start.lock().unwrap() = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..LONG_TUNNELS {
        tasks.push(tokio::spawn(federation(sh.clone(), i)));
    }
    for w in 0..SHORT_WORKERS {
        tasks.push(tokio::spawn(short(sh.clone(), w)));
    }
    for w in 0..PLAIN_WORKERS {
        tasks.push(tokio::spawn(plain(sh.clone(), w)));
    }
    for w in 0..PREVIEW_WORKERS {
        tasks.push(tokio::spawn(preview(sh.clone(), w)));
    }
    for w in 0..DENIED_WORKERS {
        tasks.push(tokio::spawn(denied(sh.clone(), w)));
    }
    for w in 0..VANISH_WORKERS {
        tasks.push(tokio::spawn(vanish(sh.clone(), w)));
    }
    tasks.push(tokio::spawn(flip(sh.clone())));
    tasks
}

async fn stop_load(sh: &Shared, tasks: Vec<tokio::task::JoinHandle<()>>) {
    sh.stop.send_replace(true);
    // Every wait in a task is bounded; this is a guard.
    let deadline = tokio::time::Instant::now() + ANSWER_LIMIT + GUARD + INNER_LIMIT * 3;
    for task in tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => sh.fail("panics", format!("a load task panicked: {e}")),
            Ok(Err(_)) => {}
            Err(_) => sh.fail(
                "a load task did not stop",
                "still running after the guard".into(),
            ),
        }
    }
}

/// After the clients stopped: waits for serve's open tunnels to reach 0,
/// then for its descriptors to settle (the origins close serve's idle
/// keep-alive connections after 5 s, squid after 3 s) and, given a limit,
/// to be within it. (time to no tunnels, descriptors then)
async fn settle(sh: &Shared, fds_limit: Option<usize>) -> (Result<Duration, String>, usize) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let tunnels = loop {
        let open = metrics(sh.cfg.metrics)
            .await
            .map(|m| metric(&m, "egress_serve_active_tunnels") as i64);
        match open {
            Ok(0) => break Ok(started.elapsed()),
            _ if Instant::now() > deadline => {
                break Err(format!(
                    "egress_serve_active_tunnels is {open:?} {:.1} s after the clients stopped",
                    started.elapsed().as_secs_f64()
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    tokio::time::sleep(Duration::from_secs(8)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = usize::MAX;
    let fds = loop {
        let (_, _, fds) = serve_status(sh.cfg.pid);
        let within = fds_limit.is_none_or(|limit| fds <= limit);
        if (fds == last && within) || Instant::now() > deadline {
            break fds;
        }
        last = fds;
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    if let Some(every) = sh.cfg.memory_trim {
        if let Err(e) = next_trim(sh, every).await {
            sh.fail("serve did not trim its memory at idle", e);
        }
    }
    (tunnels, fds)
}

/// Waits for serve's next `malloc_trim` (egress_serve_memory_trims_total
/// going up), so an idle RSS is what serve holds, not glibc's kept free
/// pages. At most the interval and 10 s.
async fn next_trim(sh: &Shared, every: Duration) -> Result<(), String> {
    let trims = || async {
        metrics(sh.cfg.metrics)
            .await
            .map(|m| metric(&m, "egress_serve_memory_trims_total"))
    };
    let before = trims().await?;
    let deadline = Instant::now() + every + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = trims().await?;
        if now > before {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "egress_serve_memory_trims_total still {now} {:.0} s later (--memory-trim-interval {:.0} s)",
                (every + Duration::from_secs(10)).as_secs_f64(),
                every.as_secs_f64()
            ));
        }
    }
}

// ---------------------------------------------------------------- the soak

async fn soak(config: Value, run: Run) -> i32 {
    let s = |k: &str| {
        config[k]
            .as_str()
            .unwrap_or_else(|| usage(&format!("config: {k} missing")))
            .to_owned()
    };
    let ports = |k: &str| -> Vec<u16> {
        config[k]
            .as_array()
            .unwrap_or_else(|| usage(&format!("config: {k} missing")))
            .iter()
            .map(|p| p.as_u64().unwrap() as u16)
            .collect()
    };
    let ca = s("ca");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&ca).expect("ca") {
        roots.add(cert.expect("ca")).expect("ca");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let cfg = Cfg {
        proxy: s("proxy").parse().expect("proxy"),
        metrics: s("metrics").parse().expect("metrics"),
        pid: config["serve_pid"].as_u64().expect("serve_pid") as u32,
        memory_trim: config["memory_trim_s"]
            .as_f64()
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64),
        log: s("serve_log"),
        fed_ports: ports("fed_ports"),
        preview_ports: ports("preview_ports"),
        fake_http: ports("fake_http"),
        fake_https: ports("fake_https"),
        flip_port: config["flip_port"].as_u64().expect("flip_port") as u16,
        squid_port: config["squid_port"].as_u64().expect("squid_port") as u16,
        dns_port: config["dns_port"].as_u64().expect("dns_port") as u16,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&run.out)
        .unwrap_or_else(|e| usage(&format!("cannot open --out {}: {e}", run.out)));
    let mut write = |v: Value| {
        writeln!(out, "{v}")
            .and_then(|_| out.flush())
            .expect("write --out");
    };
    let (stop, _) = watch::channel(false);
    let sh = Arc::new(Shared {
        cfg,
        faults: Faults {
            windows: Mutex::new(Vec::new()),
            policy: AtomicU8::new(0),
        },
        minute: Mutex::new(Minute::default()),
        records: Mutex::new(Vec::new()),
        failures: Mutex::new(Failures::default()),
        next_id: AtomicU64::new(1),
        flip: tokio::sync::Mutex::new(()),
        stop,
        phase_start: Mutex::new(Instant::now()),
        warm: AtomicBool::new(true),
    });
    let stdin = Arc::new(tokio::sync::Mutex::new(
        tokio::io::BufReader::new(tokio::io::stdin()).lines(),
    ));
    let (rss0, _, fds0) = serve_status(sh.cfg.pid);
    write(json!({
        "phase": "start", "long_tunnels": LONG_TUNNELS, "busy_every": BUSY_EVERY,
        "workers": {"push_keys": SHORT_WORKERS, "plain": PLAIN_WORKERS, "preview": PREVIEW_WORKERS,
                    "denied": DENIED_WORKERS, "vanish": VANISH_WORKERS, "flip": 1},
        "answer_limit_ms": ANSWER_LIMIT.as_millis() as u64, "body_idle_ms": BODY_IDLE.as_millis() as u64,
        "windows": WINDOWS, "minutes": run.minutes, "warmup_s": run.warmup.as_secs_f64(),
        "serve": {"rss_kib": rss0, "fds": fds0},
    }));
    eprintln!(
        "soak: serve pid {}, {LONG_TUNNELS} long tunnels; warm-up {:?}",
        sh.cfg.pid, run.warmup
    );
    let sampler_task = tokio::spawn(sampler(sh.clone()));
    let mut tail = LogTail {
        path: sh.cfg.log.clone(),
        offset: 0,
        lines: 0,
    };

    // Warm-up: the whole schedule for `warmup`, then the baseline at idle.
    let tasks = start_load(&sh);
    let sched = tokio::spawn(schedule(
        sh.clone(),
        stdin.clone(),
        Instant::now(),
        run.warmup,
    ));
    tokio::time::sleep(run.warmup).await;
    stop_load(&sh, tasks).await;
    let _ = sched.await;
    let warm = std::mem::take(&mut *sh.minute.lock().unwrap());
    let warm_requests: u64 = warm.by_kind.values().map(|v| v.iter().sum::<u64>()).sum();
    let (tunnels, _) = settle(&sh, None).await;
    if let Err(e) = &tunnels {
        sh.fail(
            "open tunnels did not go back to 0 after the clients stopped",
            format!("after the warm-up: {e}"),
        );
    }
    let (base_rss, base_hwm, base_fds) = serve_status(sh.cfg.pid);
    let base_kinds = serve_fd_kinds(&sh.cfg);
    let base_heap = serve_heap(&sh).await;
    write(json!({
        "phase": "baseline", "warmup_requests": warm_requests,
        "serve": {"rss_kib": base_rss, "hwm_kib": base_hwm, "fds": base_fds, "fd_kinds": base_kinds, "heap_kib": base_heap},
        "tunnels_closed_ms": tunnels.as_ref().ok().map(|d| d.as_millis() as u64),
    }));
    eprintln!(
        "soak: baseline after the warm-up ({warm_requests} requests): serve RSS {base_rss} KiB (high-water {base_hwm}), {base_fds} fds"
    );
    sh.warm.store(false, Ordering::SeqCst);
    *sh.minute.lock().unwrap() = Minute::default();

    // The main phase.
    let total = Duration::from_secs_f64(run.minutes * 60.0);
    let start = Instant::now();
    let mut tasks = Some(start_load(&sh));
    let sched = tokio::spawn(schedule(sh.clone(), stdin.clone(), start, total));
    let mut rows = Vec::new();
    let mut at = Duration::ZERO;
    let mut minute = 0;
    let mut requests_total = 0u64;
    while at < total {
        minute += 1;
        at = (at + Duration::from_secs(60)).min(total);
        tokio::time::sleep_until((start + at).into()).await;
        if at >= total {
            if let Some(tasks) = tasks.take() {
                stop_load(&sh, tasks).await;
            }
        }
        let m = std::mem::take(&mut *sh.minute.lock().unwrap());
        let (rss, _, fds) = serve_status(sh.cfg.pid);
        let now = metrics(sh.cfg.metrics).await.unwrap_or_default();
        let row = Row::new(minute, at, &m, rss, fds, &now, tail.update());
        requests_total += row.requests();
        write(row.json());
        eprintln!("soak: {}", row.line());
        rows.push(row);
    }
    let _ = sched.await;

    // After the load.
    let fds_limit = (base_fds as f64 * GROWTH).floor() as usize;
    let rss_limit = (base_rss as f64 * GROWTH) as u64;
    let (tunnels, _) = settle(&sh, Some(fds_limit)).await;
    if let Err(e) = &tunnels {
        sh.fail(
            "open tunnels did not go back to 0 after the clients stopped",
            format!("after the load: {e}"),
        );
    }
    let (after_rss, after_hwm, after_fds) = serve_status(sh.cfg.pid);
    let after_kinds = serve_fd_kinds(&sh.cfg);
    let after_heap = serve_heap(&sh).await;
    if after_fds > fds_limit {
        sh.fail(
            "serve's file descriptors did not go back to the baseline",
            format!("{after_fds} after the load, baseline {base_fds}, limit {fds_limit}: now {after_kinds:?}, at the baseline {base_kinds:?}"),
        );
    }
    if after_rss > rss_limit {
        sh.fail(
            "serve's RSS did not go back to the baseline",
            format!("{after_rss} KiB after the load, baseline {base_rss} KiB, limit {rss_limit} KiB (high-water {base_hwm} → {after_hwm} KiB)"),
        );
    }
    let (slopes, slope_lines) = growth(
        &sh,
        &run,
        &rows,
        (base_rss, after_rss),
        base_heap.zip(after_heap),
    );
    sampler_task.abort();
    // The log's last batch (written every 200 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let final_metrics = metrics(sh.cfg.metrics).await;
    let accounting = account(&sh, final_metrics.as_ref().ok(), run.allow_log_drops);
    if let Err(e) = &final_metrics {
        sh.fail("/metrics did not answer after the load", e.clone());
    }
    let panics = crate::panics();
    if panics > 0 {
        sh.fail(
            "panics",
            format!("{panics} panic(s) in the load; see the messages above"),
        );
    }
    let failures = std::mem::take(&mut *sh.failures.lock().unwrap());
    let reasons: Vec<Value> = failures
        .reasons
        .iter()
        .map(|(what, (count, example))| json!({"what": what, "count": count, "example": example}))
        .collect();
    write(json!({
        "phase": "after", "baseline": {"rss_kib": base_rss, "hwm_kib": base_hwm, "fds": base_fds, "heap_kib": base_heap},
        "after": {"rss_kib": after_rss, "hwm_kib": after_hwm, "fds": after_fds, "fd_kinds": after_kinds, "heap_kib": after_heap},
        "limits": {"rss_kib": rss_limit, "fds": fds_limit},
        "tunnels_closed_ms": tunnels.as_ref().ok().map(|d| d.as_millis() as u64),
        "accounting": accounting.json(),
        "main_requests": requests_total, "warmup_requests": warm_requests,
        "slopes": slopes,
    }));
    let verdict = if reasons.is_empty() { "pass" } else { "fail" };
    write(json!({"verdict": verdict, "reasons": reasons}));

    eprintln!("\n{}", table(&rows));
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "serve at the baseline (after the warm-up, at idle): RSS {:.1} MiB (high-water {:.1}), {base_fds} fds",
        mib(base_rss),
        mib(base_hwm)
    );
    eprintln!(
        "serve after the load (at idle; tunnels closed in {}): RSS {:.1} MiB (high-water {:.1}), {after_fds} fds; limits {:.1} MiB, {fds_limit} fds",
        tunnels.as_ref().map_or_else(|e| e.clone(), |d| format!("{:.1} s", d.as_secs_f64())),
        mib(after_rss),
        mib(after_hwm),
        mib(rss_limit),
    );
    eprintln!("accounting: {}", accounting.line());
    for line in &slope_lines {
        eprintln!("{line}");
    }
    if reasons.is_empty() {
        eprintln!("\nsoak: PASS");
        0
    } else {
        eprintln!("\nsoak: FAIL");
        for (what, (count, example)) in &failures.reasons {
            eprintln!("  {what} ({count}×), e.g. {example}");
        }
        1
    }
}

// -------------------------------------------------------------- accounting

#[derive(Default)]
struct Accounting {
    requests: u64,
    lines: u64,
    matched: u64,
    missing: u64,
    extra: u64,
    wrong: u64,
    bytes_checked: u64,
    log_decisions: BTreeMap<String, u64>,
    metric_decisions: BTreeMap<String, u64>,
    dropped: u64,
}

impl Accounting {
    fn json(&self) -> Value {
        json!({"requests": self.requests, "log_lines": self.lines, "matched": self.matched,
               "missing": self.missing, "extra": self.extra, "mismatched": self.wrong,
               "tunnel_bytes_checked": self.bytes_checked, "log_by_decision": self.log_decisions,
               "metrics_by_decision": self.metric_decisions, "dropped_log_lines": self.dropped})
    }

    fn line(&self) -> String {
        format!(
            "{} requests sent, {} log lines, {} matched one to one ({} tunnels' bytes checked), {} without a line, {} lines for no request, {} lines that disagree; log {:?}, /metrics {:?}; {} dropped",
            self.requests, self.lines, self.matched, self.bytes_checked, self.missing, self.extra, self.wrong,
            self.log_decisions, self.metric_decisions, self.dropped
        )
    }
}

/// Every request has exactly one log line, with the decision its answer
/// meant (and status, upstream, bytes); `/metrics` agrees with the log.
fn account(sh: &Shared, m: Option<&BTreeMap<String, f64>>, allow_drops: bool) -> Accounting {
    let mut a = Accounting::default();
    let records = std::mem::take(&mut *sh.records.lock().unwrap());
    a.requests = records.len() as u64;
    // Requests by (client, method, target): several for one key are matched
    // as a multiset.
    let mut by_key: HashMap<(SocketAddr, bool, String), Vec<usize>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        by_key
            .entry((r.client, r.connect, r.target.clone()))
            .or_default()
            .push(i);
    }
    let text = match std::fs::read_to_string(&sh.cfg.log) {
        Ok(t) => t,
        Err(e) => {
            sh.fail("cannot read serve's log", e.to_string());
            return a;
        }
    };
    let (mut bytes_up, mut bytes_down) = (0u64, 0u64);
    for line in text.lines() {
        a.lines += 1;
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            sh.fail("a log line is not JSON", line.chars().take(200).collect());
            continue;
        };
        let decision = v["decision"].as_str().unwrap_or("");
        *a.log_decisions.entry(decision.to_owned()).or_default() += 1;
        bytes_up += v["bytes_up"].as_u64().unwrap_or(0);
        bytes_down += v["bytes_down"].as_u64().unwrap_or(0);
        let client = v["client"].as_str().and_then(|c| c.parse().ok());
        let connect = v["http.request.method"] == "CONNECT";
        let target = v["target"].as_str().unwrap_or("").to_owned();
        let Some(client) = client else {
            a.extra += 1;
            sh.fail(
                "a log line for no request the load sent",
                line.chars().take(300).collect(),
            );
            continue;
        };
        let key = (client, connect, target);
        let Some(candidates) = by_key.get_mut(&key) else {
            a.extra += 1;
            sh.fail(
                "a log line for no request the load sent",
                line.chars().take(300).collect(),
            );
            continue;
        };
        let dec = Dec::parse(decision);
        let status = v["http.response.status_code"].as_u64().unwrap_or(0) as u16;
        // The request this line is for: the first with the same answer.
        let pick = candidates
            .iter()
            .position(|&i| {
                records[i]
                    .answer
                    .is_some_and(|(d, s)| Some(d) == dec && s == status)
            })
            .unwrap_or(0);
        let i = candidates.remove(pick);
        if candidates.is_empty() {
            by_key.remove(&key);
        }
        let r = &records[i];
        a.matched += 1;
        let mut problems = Vec::new();
        match r.answer {
            Some((d, s)) => {
                if Some(d) != dec {
                    problems.push(format!("the client's answer meant {}", d.name()));
                }
                if s != status {
                    problems.push(format!("the client got status {s}"));
                }
            }
            None => problems.push("the client got no answer".to_owned()),
        }
        if dec == Some(Dec::Allowed) {
            let upstream = !v["egress.proxy"].is_null();
            let want = r.route == Route::Parent;
            if upstream != want {
                problems.push(format!(
                    "upstream {} for a {:?} route",
                    v["egress.proxy"], r.route
                ));
            }
        }
        let reason = v["reason"].as_str().unwrap_or("");
        if r.left && !reason.contains("the client left") {
            problems.push(
                "the client gave up on the response, and the reason does not say it left"
                    .to_owned(),
            );
        }
        if let Some((up, down)) = r.bytes {
            a.bytes_checked += 1;
            let (lu, ld) = (
                v["bytes_up"].as_u64().unwrap_or(0),
                v["bytes_down"].as_u64().unwrap_or(0),
            );
            if (lu, ld) != (up, down) {
                problems.push(format!("the client moved {up} bytes up and {down} down"));
            }
        }
        if !problems.is_empty() {
            a.wrong += 1;
            sh.fail(
                "a log line disagrees with its request",
                format!(
                    "{} ({}): {}",
                    line.chars().take(400).collect::<String>(),
                    r.kind.name(),
                    problems.join("; ")
                ),
            );
        }
    }
    for indexes in by_key.values() {
        for &i in indexes {
            a.missing += 1;
            let r = &records[i];
            // A request with no answer has no line if serve never read it.
            sh.fail(
                "a request has no log line",
                format!(
                    "{} {} {} from {} (answer {:?}, schedule allows {})",
                    r.kind.name(),
                    if r.connect { "CONNECT" } else { "GET" },
                    r.target,
                    r.client,
                    r.answer,
                    mask_names(r.ok)
                ),
            );
        }
    }
    if let Some(m) = m {
        a.metric_decisions = metric_decisions(m);
        a.dropped = metric(m, "egress_serve_log_lines_dropped_total") as u64;
        if a.dropped > 0 && !allow_drops {
            sh.fail(
                "serve dropped request log lines",
                format!("egress_serve_log_lines_dropped_total {}", a.dropped),
            );
        }
        let logged: u64 = a.log_decisions.values().sum();
        let counted: u64 = a.metric_decisions.values().sum();
        if counted != logged + a.dropped {
            sh.fail(
                "/metrics and the log disagree",
                format!("egress_serve_requests_total sums to {counted}, the log has {logged} lines and {} were dropped", a.dropped),
            );
        }
        if a.dropped == 0 && a.metric_decisions != a.log_decisions {
            sh.fail(
                "/metrics and the log disagree",
                format!(
                    "by decision: /metrics {:?}, log {:?}",
                    a.metric_decisions, a.log_decisions
                ),
            );
        }
        let (mu, md) = (
            metric(m, "egress_serve_bytes_total{direction=\"up\"}") as u64,
            metric(m, "egress_serve_bytes_total{direction=\"down\"}") as u64,
        );
        if a.dropped == 0 && (mu, md) != (bytes_up, bytes_down) {
            sh.fail(
                "/metrics and the log disagree",
                format!("bytes up/down: /metrics {mu}/{md}, log {bytes_up}/{bytes_down}"),
            );
        }
    }
    a
}

// ------------------------------------------------------------------ report

struct Row {
    minute: u32,
    at: Duration,
    by_kind: BTreeMap<Kind, [u64; 4]>,
    inner: (u64, u64),
    slowest: Option<(Duration, String)>,
    faults: (u32, u32, u32),
    /// serve's RSS at the minute's end, the most and the median of the
    /// per-second samples.
    rss: (u64, u64, u64),
    /// The medians of serve's heap in use and of its RSS right after each
    /// trim (KiB; none without the heap gauge or without trims).
    heap: Option<u64>,
    trimmed: Option<u64>,
    fds: (usize, usize),
    tunnels: (i64, i64),
    dropped: u64,
    log_lines: u64,
}

impl Row {
    fn new(
        minute: u32,
        at: Duration,
        m: &Minute,
        rss: u64,
        fds: usize,
        now: &BTreeMap<String, f64>,
        log_lines: u64,
    ) -> Row {
        Row {
            minute,
            at,
            by_kind: m.by_kind.clone(),
            inner: (m.inner_requests, m.inner_failed),
            slowest: m.slowest.clone(),
            faults: (m.squid_kills, m.dns_restarts, m.reloads),
            rss: (
                rss,
                m.rss_max_kib.max(rss),
                median(&m.rss_samples).unwrap_or(rss),
            ),
            heap: median(&m.heap_samples),
            trimmed: median(&m.trimmed),
            fds: (fds, m.fds_max.max(fds)),
            tunnels: (
                metric(now, "egress_serve_active_tunnels") as i64,
                m.tunnels_max,
            ),
            dropped: metric(now, "egress_serve_log_lines_dropped_total") as u64,
            log_lines,
        }
    }

    fn requests(&self) -> u64 {
        self.by_kind.values().map(|v| v.iter().sum::<u64>()).sum()
    }

    fn decisions(&self) -> [u64; 4] {
        let mut d = [0; 4];
        for v in self.by_kind.values() {
            for i in 0..4 {
                d[i] += v[i];
            }
        }
        d
    }

    fn json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = KINDS
            .iter()
            .filter_map(|k| {
                self.by_kind.get(k).map(|v| {
                    (
                        k.name().to_owned(),
                        json!({"allowed": v[0], "denied": v[1], "failed": v[2], "no_answer": v[3]}),
                    )
                })
            })
            .collect();
        let d = self.decisions();
        json!({
            "minute": self.minute, "elapsed_s": self.at.as_secs_f64(), "requests": self.requests(),
            "allowed": d[0], "denied": d[1], "failed": d[2], "no_answer": d[3], "by_kind": kinds,
            "tunnel_requests": self.inner.0, "tunnel_requests_failed": self.inner.1,
            "serve_rss_kib": self.rss.0, "serve_rss_max_kib": self.rss.1,
            "serve_rss_median_kib": self.rss.2,
            "serve_heap_median_kib": self.heap,
            "serve_rss_trimmed_kib": self.trimmed,
            "serve_fds": self.fds.0, "serve_fds_max": self.fds.1,
            "active_tunnels": self.tunnels.0, "active_tunnels_max": self.tunnels.1,
            "dropped_log_lines": self.dropped, "log_lines": self.log_lines,
            "slowest_ms": self.slowest.as_ref().map(|s| s.0.as_millis() as u64),
            "slowest": self.slowest.as_ref().map(|s| s.1.clone()),
            "squid_kills": self.faults.0, "dns_restarts": self.faults.1, "reloads": self.faults.2,
        })
    }

    fn line(&self) -> String {
        let d = self.decisions();
        format!(
            "minute {}: {} requests ({} allowed, {} denied, {} failed, {} unanswered), {} inside tunnels; serve RSS {:.1} MiB, {} fds, {} tunnels open; {} log lines, {} dropped; slowest {}",
            self.minute, self.requests(), d[0], d[1], d[2], d[3], self.inner.0,
            self.rss.0 as f64 / 1024.0, self.fds.0, self.tunnels.0, self.log_lines, self.dropped,
            self.slowest.as_ref().map_or_else(|| "-".to_owned(), |s| format!("{} ms: {}", s.0.as_millis(), s.1)),
        )
    }
}

/// serve's growth under load: least-squares slopes over the last 90
/// minutes of the RSS at each minute's end, of each minute's median, of the
/// RSS serve reads right after each trim and of the heap in use; and the
/// rates between the idle points.
///
/// `--max-slope` gates on what a leak or the allocator's keeping would make
/// grow: the RSS right after serve's trims (what it holds: a leak, or pages
/// a trim cannot give back) and, with serve's heap gauge, the heap in use (a
/// leak of live allocations, with the least noise); without trims, the
/// median RSS. The RSS between trims is recorded, not gated: it is the free
/// pages glibc keeps until the next trim.
fn growth(
    sh: &Shared,
    run: &Run,
    rows: &[Row],
    idle: (u64, u64),
    idle_heap: Option<(u64, u64)>,
) -> (Value, Vec<String>) {
    let window: Vec<Value> = rows
        .iter()
        .filter(|r| r.at.as_secs_f64() > (run.minutes - 90.0).max(0.0) * 60.0)
        .map(Row::json)
        .collect();
    let mut slopes = serde_json::Map::new();
    let mut lines = Vec::new();
    for (key, what) in [
        ("serve_rss_kib", "RSS at each minute's end"),
        ("serve_rss_median_kib", "median RSS of each minute"),
        ("serve_rss_trimmed_kib", "RSS right after each trim"),
        (
            "serve_heap_median_kib",
            "heap in use (median of each minute)",
        ),
    ] {
        if let Some((b, se)) = crate::slope(&window, key) {
            slopes.insert(key.to_owned(), json!({"mib_per_hour": b, "stderr": se}));
            lines.push(format!(
                "serve's growth under load over the last {} minutes, {what}: {b:+.3} MiB/h (standard error {se:.3})",
                window.len()
            ));
        }
    }
    let idle_rate = (idle.1 as f64 - idle.0 as f64) / 1024.0 / (run.minutes / 60.0);
    slopes.insert("idle_rss_mib_per_hour".into(), json!(idle_rate));
    lines.push(format!(
        "serve's RSS at idle: {:.2} -> {:.2} MiB, {idle_rate:+.3} MiB/h ({})",
        idle.0 as f64 / 1024.0,
        idle.1 as f64 / 1024.0,
        if sh.cfg.memory_trim.is_some() {
            "after serve's next trim"
        } else {
            "serve does not trim: glibc's kept free pages included"
        }
    ));
    if let Some((before, after)) = idle_heap {
        let rate = (after as f64 - before as f64) / 1024.0 / (run.minutes / 60.0);
        slopes.insert("idle_heap_mib_per_hour".into(), json!(rate));
        lines.push(format!(
            "serve's heap in use at idle: {:.2} -> {:.2} MiB, {rate:+.3} MiB/h",
            before as f64 / 1024.0,
            after as f64 / 1024.0
        ));
    }
    if let Some(max) = run.max_slope {
        let mut gated = Vec::new();
        if sh.cfg.memory_trim.is_some() {
            gated.push(("serve_rss_trimmed_kib", "the RSS right after serve's trims"));
        } else {
            gated.push(("serve_rss_median_kib", "the median RSS"));
        }
        if slopes.contains_key("serve_heap_median_kib") {
            gated.push(("serve_heap_median_kib", "the heap in use"));
        }
        for (key, what) in &gated {
            match slopes.get(*key).and_then(|v| v["mib_per_hour"].as_f64()) {
                Some(b) if b > max => sh.fail(
                    "serve's memory grows under load",
                    format!("{what} grows {b:+.3} MiB/h (limit {max} MiB/h)"),
                ),
                None => sh.fail(
                    "serve's memory grows under load",
                    format!("too few minutes for a slope of {what}"),
                ),
                _ => {}
            }
        }
    }
    (Value::Object(slopes), lines)
}

/// The middle of the samples (the upper one of two middles).
fn median(samples: &[u64]) -> Option<u64> {
    let mut s = samples.to_vec();
    s.sort_unstable();
    s.get(s.len() / 2).copied()
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| min | requests | allowed/denied/failed | in tunnels | serve RSS MiB (median, max) | after trims; heap in use MiB | fds (max) | tunnels open (max) | log lines | dropped | slowest ms | squid kills / dns restarts / reloads |\n\
         |----:|---------:|----------------------|-----------:|----------------------------:|-----------------------------:|----------:|-------------------:|----------:|--------:|-----------:|------------------|\n",
    );
    for r in rows {
        let d = r.decisions();
        t.push_str(&format!(
            "| {} | {} | {}/{}/{} | {} | {:.1} ({:.1}, {:.1}) | {}; {} | {} ({}) | {} ({}) | {} | {} | {} | {}/{}/{} |\n",
            r.minute,
            r.requests(),
            d[0],
            d[1],
            d[2],
            r.inner.0,
            r.rss.0 as f64 / 1024.0,
            r.rss.2 as f64 / 1024.0,
            r.rss.1 as f64 / 1024.0,
            r.trimmed
                .map_or("-".into(), |t| format!("{:.1}", t as f64 / 1024.0)),
            r.heap
                .map_or("-".into(), |h| format!("{:.1}", h as f64 / 1024.0)),
            r.fds.0,
            r.fds.1,
            r.tunnels.0,
            r.tunnels.1,
            r.log_lines,
            r.dropped,
            r.slowest.as_ref().map_or(0, |s| s.0.as_millis()),
            r.faults.0,
            r.faults.1,
            r.faults.2,
        ));
    }
    t
}
