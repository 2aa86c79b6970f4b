//! The load: egress's client at concurrency 64 through squid (basic auth)
//! and stunnel (TLS in front of squid) to 500 origins on loopback, with the
//! fault schedule; one JSON line a minute, a table and a verdict at the end.
//!
//! Two [`Outbound`]s share the traffic: A sends `http://` through squid's
//! plain port (forwarding) and `https://` through stunnel (a CONNECT tunnel
//! inside TLS to the proxy); B the other way round (forwarding over TLS to the
//! proxy, CONNECT over plain TCP).
//!
//! The schedule repeats every minute of the main phase, in 10 s windows:
//! 0–10 s clean; 10–20 s 20 % of requests ask nginx for a 5xx; 20–30 s squid
//! is killed (SIGKILL to its process group) at 20 s and started again at
//! 23 s; 30–40 s 20 % of requests go to the fake origin's `/reset` (reset
//! mid-body); 40–50 s 1 % to `/stall` (stall mid-body until the client's body
//! timeout); 50–60 s 20 % to `/close` (closed right after a keep-alive
//! response). Always on: a quarter of nginx's origins close idle keep-alive
//! connections after 1 s, and squid closes idle client connections after 3 s,
//! both shorter than the pool's idle timeout (5 s).
//!
//! Fails (exit 1, saying why) when a request outlives its timeout (the
//! headers after `request`, or one wait for the body after `body_idle`, each
//! plus the slack), when an error is not one of the kinds these faults
//! should give, when a body is complete but of the wrong length, when the file
//! descriptors or RSS are not back within 10 % of the baseline once the pool's
//! idle timeout has passed after the load, or when anything panics.
//!
//! RSS is read twice at each sample (every minute, the baseline, after the
//! load): as it is, then after `malloc_trim(0)` has made glibc hand back the
//! free memory it keeps in its arenas. The check uses the second figure: what
//! the process still holds, which a leak makes grow, rather than the high-water
//! mark of free pages kept for reuse.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use egress::{Error, Outbound, PoolStats, ProxyEnv, ProxySettings, Purpose, TimeoutStep, Timeouts};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::fake::{BIG_LEN, SMALL_LEN};
use crate::{opt, opt_num, usage};

const CONCURRENCY: usize = 64;
const POST_LEN: usize = 4096;
const WINDOW: Duration = Duration::from_secs(10);
const SQUID_KILL_AT: Duration = Duration::from_secs(20);
const SQUID_DOWN_FOR: Duration = Duration::from_secs(3);
/// The client's limits.
const TIMEOUTS: Timeouts = Timeouts::DEFAULT
    .with_connect(Duration::from_secs(3))
    .with_federation_connect(Duration::from_secs(3))
    .with_connect_reply(Duration::from_secs(3))
    .with_request(Duration::from_secs(5))
    .with_body_idle(Duration::from_secs(3));
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long past its limit a wait is cut off and reported as a hang.
const GUARD: Duration = Duration::from_secs(10);
/// RSS and file descriptors after the load, over the baseline, at most.
const GROWTH: f64 = 1.10;

pub(crate) fn main(opts: &HashMap<String, String>) -> i32 {
    crate::count_panics();
    let config = crate::read_config(opts);
    let run = Run {
        minutes: opt_num(opts, "minutes", 1.0),
        warmup: Duration::from_secs_f64(opt_num(opts, "warmup", 60.0)),
        slack: Duration::from_millis(opt_num(opts, "slack-ms", 2000)),
        out: opt(opts, "out").to_owned(),
        max_slope: opts.get("max-slope").map(|v| {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("--max-slope: not a number: {v}")))
        }),
        rate: opts.get("rate").map(|v| match v.parse::<f64>() {
            Ok(r) if r > 0.0 => r,
            _ => usage(&format!("--rate: not a positive number: {v}")),
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(soak(config, run));
    // Not a plain drop: that waits for every blocking task, and a read of
    // stdin still waiting for soak/run's answer would hold the exit forever.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

struct Run {
    minutes: f64,
    warmup: Duration,
    slack: Duration,
    out: String,
    /// MiB per hour the memory may grow under load (`--max-slope`).
    max_slope: Option<f64>,
    /// Requests a second in all, at most (`--rate`; none: as fast as the 64
    /// workers go). A fixed rate keeps the load the same from the first
    /// minute to the last whatever else the machine runs, so a slope over
    /// the run measures growth, not a change of throughput.
    rate: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Nginx,
    Fake,
}

struct Origin {
    url: String,
    server: Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Small,
    Big,
    Post,
    Missing,
    /// `/big`, dropped after its first chunk.
    Abandon,
    Status(u16),
    Reset,
    Stall,
    Close,
}

impl Op {
    fn path(self) -> String {
        match self {
            Op::Small => "/small".into(),
            Op::Big | Op::Abandon => "/big".into(),
            Op::Post => "/post".into(),
            Op::Missing => "/missing".into(),
            Op::Status(code) => format!("/status/{code}"),
            Op::Reset => "/reset".into(),
            Op::Stall => "/stall".into(),
            Op::Close => "/close".into(),
        }
    }

    fn name(self) -> String {
        match self {
            Op::Abandon => "GET /big (abandoned)".into(),
            Op::Post => "POST /post".into(),
            other => format!("GET {}", other.path()),
        }
    }

    /// The status and body length of a complete, fault-free answer.
    fn expected(self) -> (u16, Option<usize>) {
        match self {
            Op::Small | Op::Close => (200, Some(SMALL_LEN)),
            Op::Big | Op::Abandon | Op::Reset | Op::Stall => (200, Some(BIG_LEN)),
            Op::Post => (200, Some(7)),
            Op::Missing => (404, None),
            Op::Status(code) => (code, None),
        }
    }
}

/// A small xorshift generator: the load needs variety, not cryptography.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The window of the schedule a moment of the main phase is in.
const WINDOWS: [&str; 6] = ["clean", "5xx", "squid killed", "reset", "stall", "close"];

fn window(since_start: Duration) -> usize {
    ((since_start.as_secs() % 60) / WINDOW.as_secs()) as usize
}

/// Both phases run the same schedule from their start; only the main
/// phase's requests are counted by window.
#[derive(Clone, Copy)]
enum Phase {
    Warmup(Instant),
    Main(Instant),
}

impl Phase {
    fn start(self) -> Instant {
        match self {
            Phase::Warmup(start) | Phase::Main(start) => start,
        }
    }
}

struct Plan {
    /// The window of the schedule (main phase only).
    window: Option<usize>,
    origin: usize,
    op: Op,
    outbound: usize,
    purpose: Purpose,
}

fn choose(rng: &mut Rng, phase: Phase, nginx: &[usize], fake: &[usize], all: usize) -> Plan {
    let r = rng.unit();
    let status = |rng: &mut Rng| Op::Status([500, 502, 503][rng.below(3)]);
    let fault = match window(phase.start().elapsed()) {
        1 if r < 0.2 => Some(status(rng)),
        3 if r < 0.2 => Some(Op::Reset),
        4 if r < 0.01 => Some(Op::Stall),
        5 if r < 0.2 => Some(Op::Close),
        _ => None,
    };
    let (origin, op) = match fault {
        Some(op @ Op::Status(_)) => (nginx[rng.below(nginx.len())], op),
        Some(op) => (fake[rng.below(fake.len())], op),
        None => {
            let op = match rng.below(100) {
                0..55 => Op::Small,
                55..70 => Op::Big,
                70..85 => Op::Post,
                85..90 => Op::Missing,
                _ => Op::Abandon,
            };
            (rng.below(all), op)
        }
    };
    let purpose = [Purpose::Push, Purpose::UrlPreview, Purpose::Oidc][rng.below(3)];
    Plan {
        window: match phase {
            Phase::Warmup(_) => None,
            Phase::Main(start) => Some(window(start.elapsed())),
        },
        origin,
        op,
        outbound: rng.below(2),
        purpose,
    }
}

/// The kinds of error the faults should give, and those that would mean a
/// bug (in egress or in this harness's setup).
enum Class {
    Expected(&'static str),
    Unexpected(&'static str),
    Untyped,
}

fn classify(e: &Error) -> Class {
    use Class::*;
    match e {
        Error::Connect { .. } => Expected("Connect"),
        Error::Tls { .. } => Expected("Tls"),
        Error::Http { .. } => Expected("Http"),
        Error::ProxyProtocol { .. } => Expected("ProxyProtocol"),
        Error::ProxyUnreachable { .. } => Expected("ProxyUnreachable"),
        Error::ProxyStatus { .. } => Expected("ProxyStatus"),
        Error::Timeout { step, .. } => match step {
            TimeoutStep::Connect => Expected("Timeout(Connect)"),
            TimeoutStep::TlsHandshake => Expected("Timeout(TlsHandshake)"),
            TimeoutStep::ProxyReply => Expected("Timeout(ProxyReply)"),
            TimeoutStep::Response => Expected("Timeout(Response)"),
            TimeoutStep::BodyIdle => Expected("Timeout(BodyIdle)"),
            _ => Untyped,
        },
        // Typed, but none of these faults should produce them.
        Error::Config(_) => Unexpected("Config"),
        Error::BadUrl { .. } => Unexpected("BadUrl"),
        Error::BadRedirect { .. } => Unexpected("BadRedirect"),
        Error::Refused { .. } => Unexpected("Refused"),
        Error::Blocked { .. } => Unexpected("Blocked"),
        Error::Resolve { .. } => Unexpected("Resolve"),
        Error::ProxyAuth { .. } => Unexpected("ProxyAuth"),
        Error::ProxyForbidden { .. } => Unexpected("ProxyForbidden"),
        Error::Certificate { .. } => Unexpected("Certificate"),
        Error::TooManyRedirects(_) => Unexpected("TooManyRedirects"),
        _ => Untyped,
    }
}

/// A finer label: what hyper or the socket said.
fn detail(e: &Error) -> String {
    use std::error::Error as _;
    let source = e.source();
    let sub = if let Some(h) = source.and_then(|s| s.downcast_ref::<hyper::Error>()) {
        if h.is_incomplete_message() {
            "incomplete message"
        } else if h.is_canceled() {
            "canceled"
        } else if h.is_closed() {
            "closed"
        } else if h.is_parse() {
            "parse"
        } else if h.is_timeout() {
            "timeout"
        } else if h.is_body_write_aborted() {
            "body write aborted"
        } else if h.is_user() {
            "user"
        } else {
            "other"
        }
        .to_owned()
    } else if let Some(io) = source.and_then(|s| s.downcast_ref::<std::io::Error>()) {
        format!("{:?}", io.kind())
    } else if let Error::ProxyProtocol { problem, .. } = e {
        problem.clone()
    } else if let Some(status) = e.proxy_status() {
        status.as_u16().to_string()
    } else {
        String::new()
    };
    let kind = match classify(e) {
        Class::Expected(k) | Class::Unexpected(k) => k,
        Class::Untyped => "untyped",
    };
    if sub.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {sub}")
    }
}

#[derive(Default)]
struct Minute {
    requests: u64,
    statuses: BTreeMap<String, u64>,
    errors: BTreeMap<&'static str, u64>,
    details: BTreeMap<String, u64>,
    unexpected_status: BTreeMap<String, u64>,
    slowest: Option<(Duration, String)>,
    squid_kills: u32,
    fds_max: usize,
    inflight_max: usize,
    /// Errors by the window of the schedule the request started in.
    errors_by_window: [u64; 6],
    details_by_window: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Failures {
    reasons: BTreeMap<String, (u64, String)>,
}

impl Failures {
    fn add(&mut self, what: &str, example: String) {
        let entry = self.reasons.entry(what.to_owned()).or_insert((0, example));
        entry.0 += 1;
    }
}

struct Shared {
    stop: AtomicBool,
    inflight: AtomicUsize,
    minute: Mutex<Minute>,
    failures: Mutex<Failures>,
    examples: Mutex<BTreeMap<String, String>>,
    slack: Duration,
    /// Each worker's least time between the starts of its requests (`--rate`).
    pace: Option<Duration>,
}

impl Shared {
    fn fail(&self, what: &str, example: String) {
        self.failures.lock().unwrap().add(what, example);
    }
}

async fn soak(config: Value, run: Run) -> i32 {
    let s = |k: &str| {
        config[k]
            .as_str()
            .unwrap_or_else(|| usage(&format!("config: {k} missing")))
            .to_owned()
    };
    let n = |k: &str| {
        config[k]
            .as_u64()
            .unwrap_or_else(|| usage(&format!("config: {k} missing")))
    };
    let (user, password, ca) = (s("user"), s("password"), s("ca"));
    let plain = format!("http://{user}:{password}@127.0.0.1:{}", n("squid_port"));
    let tls = format!("https://{user}:{password}@127.0.0.1:{}", n("stunnel_port"));
    let outbounds = Arc::new([outbound(&plain, &tls, &ca), outbound(&tls, &plain, &ca)]);
    let origins: Vec<Origin> = config["origins"]
        .as_array()
        .unwrap_or_else(|| usage("config: origins missing"))
        .iter()
        .map(|o| Origin {
            url: o["url"].as_str().unwrap().to_owned(),
            server: if o["server"] == "fake" {
                Server::Fake
            } else {
                Server::Nginx
            },
        })
        .collect();
    let origins = Arc::new(origins);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&run.out)
        .unwrap_or_else(|e| usage(&format!("cannot open --out {}: {e}", run.out)));
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        inflight: AtomicUsize::new(0),
        minute: Mutex::new(Minute::default()),
        failures: Mutex::new(Failures::default()),
        examples: Mutex::new(BTreeMap::new()),
        slack: run.slack,
        pace: run
            .rate
            .map(|rate| Duration::from_secs_f64(CONCURRENCY as f64 / rate)),
    });
    let mut writeln_json = |v: Value| {
        writeln!(out, "{v}")
            .and_then(|_| out.flush())
            .expect("write --out");
    };
    let sample = |outbounds: &[Outbound; 2]| Sample::take(outbounds);
    let begin = sample(&outbounds);
    writeln_json(json!({
        "phase": "start", "origins": origins.len(), "concurrency": CONCURRENCY,
        "timeouts_ms": {"connect": TIMEOUTS.connect.as_millis() as u64, "connect_reply": TIMEOUTS.connect_reply.as_millis() as u64,
                        "request": TIMEOUTS.request.as_millis() as u64, "body_idle": TIMEOUTS.body_idle.as_millis() as u64},
        "idle_timeout_ms": IDLE_TIMEOUT.as_millis() as u64, "slack_ms": run.slack.as_millis() as u64,
        "windows": WINDOWS, "minutes": run.minutes, "rate": run.rate, "sample": begin.json(),
    }));
    eprintln!(
        "soak: {} origins, concurrency {CONCURRENCY}{}; warm-up {:?}",
        origins.len(),
        run.rate.map_or(String::new(), |r| format!(
            ", at most {r} requests a second"
        )),
        run.warmup
    );

    // Warm-up: the schedule of the main phase (by default one whole minute:
    // every fault, squid killed and restarted), so that the caches and pools
    // have reached the sizes the load gives them; then the pool drains and
    // the baseline is taken. A leak grows with every further minute; a cache
    // filling once does not.
    let warm_start = Instant::now();
    let workers = start_workers(&shared, &outbounds, &origins, Phase::Warmup(warm_start));
    let squid = tokio::spawn(squid_schedule(shared.clone(), warm_start, run.warmup));
    tokio::time::sleep(run.warmup).await;
    stop_workers(&shared, workers).await;
    match squid.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => shared.fail("squid could not be killed and restarted", e),
        Err(e) => shared.fail("squid could not be killed and restarted", e.to_string()),
    }
    let warm = std::mem::take(&mut *shared.minute.lock().unwrap());
    let drained = drain(&outbounds, None).await;
    let baseline = Sample::take_trimmed(&outbounds);
    writeln_json(json!({
        "phase": "baseline", "warmup_requests": warm.requests, "warmup_errors": warm.errors,
        "drain_ms": drained.as_ref().map(|d| d.as_millis() as u64).ok(), "sample": baseline.json(),
        "anon_mappings": anon_mappings(),
    }));
    if let Err(e) = drained {
        shared.fail("the pool did not drain after the warm-up", e);
    }
    eprintln!(
        "soak: baseline after warm-up ({} requests): RSS {} KiB, {} fds",
        warm.requests, baseline.rss_kib, baseline.fds
    );

    // The main phase.
    let start = Instant::now();
    let total = Duration::from_secs_f64(run.minutes * 60.0);
    let mut workers = Some(start_workers(
        &shared,
        &outbounds,
        &origins,
        Phase::Main(start),
    ));
    let squid = tokio::spawn(squid_schedule(shared.clone(), start, total));
    let sampler = tokio::spawn(sample_fds(shared.clone()));
    let mut at = Duration::ZERO;
    let mut minute = 0;
    while at < total {
        minute += 1;
        at = (at + Duration::from_secs(60)).min(total);
        tokio::time::sleep_until((start + at).into()).await;
        let snap = Sample::take_trimmed(&outbounds);
        if at >= total {
            // The last minute also counts the requests in flight at the end.
            if let Some(workers) = workers.take() {
                stop_workers(&shared, workers).await;
            }
        }
        let m = std::mem::take(&mut *shared.minute.lock().unwrap());
        let row = Row::new(minute, at, &m, &snap);
        writeln_json(row.json());
        eprintln!("soak: {}", row.line());
    }
    squid.abort();
    sampler.abort();
    let squid_result = squid.await;
    if let Ok(Err(e)) = squid_result {
        shared.fail("squid could not be killed and restarted", e);
    }

    // After the load: once the pool's idle timeout has passed, the process
    // must be back near the baseline.
    let stopped = sample(&outbounds);
    let fds_limit = (baseline.fds as f64 * GROWTH).floor() as usize;
    let drained = drain(&outbounds, Some(fds_limit)).await;
    let after = Sample::take_trimmed(&outbounds);
    if let Err(e) = &drained {
        shared.fail(
            "file descriptors or pooled connections did not go back to the baseline",
            e.clone(),
        );
    }
    // RSS is compared once glibc has handed back the free memory it keeps
    // (malloc_trim at both points): a leak stays, reusable free pages do not.
    let (base_rss, after_rss) = (
        baseline.trimmed_kib.unwrap_or(baseline.rss_kib),
        after.trimmed_kib.unwrap_or(after.rss_kib),
    );
    let rss_limit = (base_rss as f64 * GROWTH) as u64;
    if after_rss > rss_limit {
        shared.fail(
            "RSS did not go back to the baseline",
            format!(
                "{after_rss} KiB after (trimmed; {} KiB before trimming), baseline {base_rss} KiB \
                 (trimmed; {} KiB before), limit {rss_limit} KiB",
                after.rss_kib, baseline.rss_kib
            ),
        );
    }
    let panics = crate::panics();
    if panics > 0 {
        shared.fail(
            "panics",
            format!("{panics} panic(s); see the messages above"),
        );
    }
    // Growth under load: least-squares slopes over the last 90 minutes (or
    // the whole run, if shorter) of the trimmed RSS, of the live heap, and
    // of their difference (what the process holds beyond its live
    // allocations: allocator pages, stacks, code), which the load's
    // ups and downs move much less.
    let rows = read_rows(&run.out);
    let window: Vec<Value> = rows
        .iter()
        .filter(|r| r["elapsed_s"].as_f64().unwrap_or(0.0) > (run.minutes - 90.0).max(0.0) * 60.0)
        .cloned()
        .map(|mut r| {
            let (t, h) = (r["rss_trimmed_kib"].as_u64(), r["heap_kib"].as_u64());
            r["beyond_heap_kib"] = json!(t.zip(h).map(|(t, h)| t.saturating_sub(h)));
            r
        })
        .collect();
    let mut slopes = serde_json::Map::new();
    let mut slope_lines = Vec::new();
    for (key, what) in [
        ("rss_trimmed_kib", "trimmed RSS"),
        ("heap_kib", "live heap"),
        ("beyond_heap_kib", "trimmed RSS beyond the live heap"),
    ] {
        if let Some((b, se)) = crate::slope(&window, key) {
            slopes.insert(key.to_owned(), json!({"mib_per_hour": b, "stderr": se}));
            slope_lines.push(format!(
                "growth under load over the last {} minutes, {what}: {b:+.3} MiB/h (standard error {se:.3})",
                window.len()
            ));
        }
    }
    // Live heap between the idle points (baseline and after the load): a
    // leak of live allocations, without the load's noise.
    let hours = run.minutes / 60.0;
    let idle_heap_rate = (after.heap_kib as f64 - baseline.heap_kib as f64) / 1024.0 / hours;
    slope_lines.push(format!(
        "live heap at idle: {:.2} -> {:.2} MiB, {idle_heap_rate:+.3} MiB/h",
        baseline.heap_kib as f64 / 1024.0,
        after.heap_kib as f64 / 1024.0
    ));
    if let Some(max) = run.max_slope {
        let beyond = slopes
            .get("beyond_heap_kib")
            .and_then(|v| v["mib_per_hour"].as_f64());
        match beyond {
            Some(b) if b > max => shared.fail(
                "memory grows under load",
                format!("trimmed RSS beyond the live heap grows {b:+.3} MiB/h (limit {max} MiB/h)"),
            ),
            None => shared.fail(
                "memory grows under load",
                "too few minutes for a slope".into(),
            ),
            _ => {}
        }
        if idle_heap_rate > max {
            shared.fail(
                "memory grows under load",
                format!(
                    "the live heap at idle grew {idle_heap_rate:+.3} MiB/h (limit {max} MiB/h)"
                ),
            );
        }
    }
    let failures = std::mem::take(&mut *shared.failures.lock().unwrap());
    let examples = std::mem::take(&mut *shared.examples.lock().unwrap());
    let reasons: Vec<Value> = failures
        .reasons
        .iter()
        .map(|(what, (count, example))| json!({"what": what, "count": count, "example": example}))
        .collect();
    let verdict = if reasons.is_empty() { "pass" } else { "fail" };
    writeln_json(json!({
        "phase": "after", "stopped": stopped.json(), "after": after.json(), "baseline": baseline.json(),
        "drain_ms": drained.as_ref().map(|d| d.as_millis() as u64).ok(),
        "fds_limit": fds_limit, "rss_limit_kib": rss_limit, "anon_mappings": anon_mappings(),
        "slopes": slopes, "slope_minutes": window.len(), "idle_heap_mib_per_hour": idle_heap_rate,
    }));
    writeln_json(json!({"verdict": verdict, "reasons": reasons, "error_examples": examples}));

    eprintln!("\n{}", table(&rows));
    for line in &slope_lines {
        eprintln!("{line}");
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "baseline (after warm-up, pool drained): RSS {:.1} MiB ({:.1} MiB trimmed), {} fds",
        mib(baseline.rss_kib),
        mib(base_rss),
        baseline.fds
    );
    eprintln!(
        "at the end of the load:                 RSS {:.1} MiB, {} fds, pool {} idle / {} busy",
        mib(stopped.rss_kib),
        stopped.fds,
        stopped.pool.idle_connections,
        stopped.pool.busy_connections
    );
    eprintln!(
        "after the pool's idle timeout ({}): RSS {:.1} MiB ({:.1} MiB trimmed), {} fds, pool {} idle / {} busy; \
         limits {:.1} MiB trimmed, {} fds",
        drained.as_ref().map_or_else(|_| "not drained".to_owned(), |d| format!("drained in {:.1} s", d.as_secs_f64())),
        mib(after.rss_kib),
        mib(after_rss),
        after.fds,
        after.pool.idle_connections,
        after.pool.busy_connections,
        mib(rss_limit),
        fds_limit,
    );
    if !examples.is_empty() {
        eprintln!("\nan example of each error:");
        for (kind, example) in &examples {
            eprintln!("  {kind}: {example}");
        }
    }
    let code = if reasons.is_empty() {
        eprintln!("\nsoak: PASS");
        0
    } else {
        eprintln!("\nsoak: FAIL");
        for (what, (count, example)) in &failures.reasons {
            eprintln!("  {what} ({count}×), e.g. {example}");
        }
        1
    };
    if std::env::var_os("EGRESS_SOAK_EXIT_LIVE").is_some() {
        // For a heap profiler (heaptrack): end here, with everything the
        // client holds after the load still allocated, so that the
        // profiler's "leaked" list is what is live now, by allocation site.
        // exit, not _exit: the profiler writes its last events in an atexit
        // handler. Rust's destructors do not run: what the load holds stays.
        eprintln!("soak: EGRESS_SOAK_EXIT_LIVE: exiting without freeing");
        // SAFETY: exit runs the atexit handlers and ends the process; no
        // Rust code runs after it.
        unsafe { libc::exit(code) };
    }
    code
}

fn outbound(http_proxy: &str, https_proxy: &str, ca: &str) -> Outbound {
    let env = ProxyEnv::from_vars([("HTTP_PROXY", http_proxy), ("HTTPS_PROXY", https_proxy)]);
    let settings = ProxySettings::builder(&env)
        .build()
        .expect("proxy settings");
    Outbound::builder(settings)
        .timeouts(TIMEOUTS)
        .add_ca_file(ca)
        .idle_timeout(IDLE_TIMEOUT)
        .build()
        .expect("outbound")
}

type Workers = Vec<tokio::task::JoinHandle<()>>;

fn start_workers(
    shared: &Arc<Shared>,
    outbounds: &Arc<[Outbound; 2]>,
    origins: &Arc<Vec<Origin>>,
    phase: Phase,
) -> Workers {
    shared.stop.store(false, Ordering::SeqCst);
    let nginx: Arc<Vec<usize>> = Arc::new(
        (0..origins.len())
            .filter(|&i| origins[i].server == Server::Nginx)
            .collect(),
    );
    let fake: Arc<Vec<usize>> = Arc::new(
        (0..origins.len())
            .filter(|&i| origins[i].server == Server::Fake)
            .collect(),
    );
    let handles = (0..CONCURRENCY)
        .map(|id| {
            let (shared, outbounds, origins) = (shared.clone(), outbounds.clone(), origins.clone());
            let (nginx, fake) = (nginx.clone(), fake.clone());
            tokio::spawn(async move {
                let mut rng = Rng(
                    0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)
                );
                // With --rate, each worker starts a request every `pace`
                // (later when one takes longer: no catching up in a burst).
                let mut pace = shared.pace.map(|every| {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick
                });
                while !shared.stop.load(Ordering::SeqCst) {
                    if let Some(tick) = &mut pace {
                        tick.tick().await;
                    }
                    let plan = choose(&mut rng, phase, &nginx, &fake, origins.len());
                    one(&shared, &outbounds, &origins, &plan).await;
                }
            })
        })
        .collect();
    handles
}

async fn stop_workers(shared: &Shared, workers: Workers) {
    shared.stop.store(true, Ordering::SeqCst);
    for handle in workers {
        if let Err(e) = handle.await {
            if e.is_panic() {
                shared.fail("panics", format!("a load task panicked: {e}"));
            }
        }
    }
}

/// One request, timed and checked; its outcome goes into the minute.
async fn one(shared: &Shared, outbounds: &[Outbound; 2], origins: &[Origin], plan: &Plan) {
    let url = format!("{}{}", origins[plan.origin].url, plan.op.path());
    let what = format!(
        "{} {url} ({}, {})",
        plan.op.name(),
        ["A", "B"][plan.outbound],
        plan.purpose
    );
    let client = outbounds[plan.outbound].client(plan.purpose);
    let request = match plan.op {
        Op::Post => http::Request::post(&url)
            .header("content-type", "application/octet-stream")
            .body(egress::RequestBody::new(Bytes::from(vec![b'p'; POST_LEN]))),
        _ => http::Request::get(&url).body(egress::RequestBody::default()),
    }
    .expect("request");
    let inflight = shared.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    let started = Instant::now();
    let head = tokio::time::timeout(TIMEOUTS.request + GUARD, client.send(request)).await;
    let head_time = started.elapsed();
    let head_limit = TIMEOUTS.request + shared.slack;
    if head_time > head_limit {
        shared.fail(
            "a request outlived its timeout (response headers)",
            format!(
                "{what}: {head_time:?}, limit {:?} + slack {:?}",
                TIMEOUTS.request, shared.slack
            ),
        );
    }
    let outcome: Result<(u16, Option<usize>), Option<Error>> = match head {
        Err(_) => Err(None),
        Ok(Err(e)) => Err(Some(e)),
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut len = 0usize;
            let mut result = Ok((status, None));
            loop {
                let waited = Instant::now();
                let frame = tokio::time::timeout(TIMEOUTS.body_idle + GUARD, body.frame()).await;
                let wait = waited.elapsed();
                if wait > TIMEOUTS.body_idle + shared.slack {
                    shared.fail(
                        "a request outlived its timeout (a wait for the body)",
                        format!(
                            "{what}: {wait:?}, limit {:?} + slack {:?}",
                            TIMEOUTS.body_idle, shared.slack
                        ),
                    );
                }
                match frame {
                    Err(_) => {
                        result = Err(None);
                        break;
                    }
                    Ok(None) => {
                        result = Ok((status, Some(len)));
                        break;
                    }
                    Ok(Some(Err(e))) => {
                        result = Err(Some(e));
                        break;
                    }
                    Ok(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            len += data.len();
                            if plan.op == Op::Abandon {
                                break; // dropped here: the connection is closed
                            }
                        }
                    }
                }
            }
            result
        }
    };
    let took = started.elapsed();
    shared.inflight.fetch_sub(1, Ordering::Relaxed);

    let mut m = shared.minute.lock().unwrap();
    m.requests += 1;
    m.inflight_max = m.inflight_max.max(inflight);
    let label;
    match outcome {
        Ok((status, len)) => {
            *m.statuses.entry(format!("{}xx", status / 100)).or_default() += 1;
            let (want, want_len) = plan.op.expected();
            if status != want {
                *m.unexpected_status
                    .entry(format!("{} → {status}", plan.op.name()))
                    .or_default() += 1;
            } else if let (Some(len), Some(want_len)) = (len, want_len) {
                if len != want_len {
                    drop(m);
                    shared.fail(
                        "a body ended without an error but with the wrong length",
                        format!("{what}: {len} bytes, not {want_len}"),
                    );
                    m = shared.minute.lock().unwrap();
                }
            }
            label = status.to_string();
        }
        Err(None) => {
            drop(m);
            shared.fail(
                "a request outlived its timeout (cut off by the harness)",
                format!("{what}: no answer after {took:?}"),
            );
            m = shared.minute.lock().unwrap();
            label = "hang".into();
        }
        Err(Some(e)) => {
            let detail = detail(&e);
            if let Some(w) = plan.window {
                m.errors_by_window[w] += 1;
                *m.details_by_window
                    .entry(format!("{}: {detail}", WINDOWS[w]))
                    .or_default() += 1;
            }
            match classify(&e) {
                Class::Expected(kind) => *m.errors.entry(kind).or_default() += 1,
                Class::Unexpected(kind) => {
                    *m.errors.entry(kind).or_default() += 1;
                    drop(m);
                    shared.fail(
                        "an error of a kind these faults should not give",
                        format!("{what}: {}", e.with_causes()),
                    );
                    m = shared.minute.lock().unwrap();
                }
                Class::Untyped => {
                    *m.errors.entry("untyped").or_default() += 1;
                    drop(m);
                    shared.fail(
                        "an error that is not one of egress's typed kinds",
                        format!("{what}: {e:?}"),
                    );
                    m = shared.minute.lock().unwrap();
                }
            }
            *m.details.entry(detail.clone()).or_default() += 1;
            shared
                .examples
                .lock()
                .unwrap()
                .entry(detail.clone())
                .or_insert_with(|| format!("{what}: {}", e.with_causes()));
            label = detail;
        }
    }
    if m.slowest.as_ref().is_none_or(|(d, _)| took > *d) {
        m.slowest = Some((took, format!("{what} → {label}")));
    }
}

/// Asks soak/run to kill squid at 20 s into each minute and to start it
/// again 3 s later; waits for its `ok`.
async fn squid_schedule(
    shared: Arc<Shared>,
    start: Instant,
    total: Duration,
) -> Result<(), String> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut minute = 0u32;
    loop {
        let kill_at = Duration::from_secs(60 * minute as u64) + SQUID_KILL_AT;
        if kill_at + SQUID_DOWN_FOR >= total {
            return Ok(());
        }
        for (at, command) in [
            (kill_at, "squid-kill"),
            (kill_at + SQUID_DOWN_FOR, "squid-start"),
        ] {
            tokio::time::sleep_until((start + at).into()).await;
            stdout
                .write_all(format!("{command}\n").as_bytes())
                .await
                .and(stdout.flush().await)
                .map_err(|e| format!("{command}: {e}"))?;
            let reply = tokio::time::timeout(Duration::from_secs(60), stdin.next_line()).await;
            match reply {
                Ok(Ok(Some(line))) if line == "ok" => {}
                other => return Err(format!("{command}: soak/run answered {other:?}")),
            }
            if command == "squid-kill" {
                shared.minute.lock().unwrap().squid_kills += 1;
            }
        }
        minute += 1;
    }
}

/// The most file descriptors open in each minute, sampled every second.
async fn sample_fds(shared: Arc<Shared>) {
    loop {
        let fds = count_fds();
        {
            let mut m = shared.minute.lock().unwrap();
            m.fds_max = m.fds_max.max(fds);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the pool holds no idle or busy connection (and, if given, the
/// process has at most `fds` descriptors open): the time it took.
async fn drain(outbounds: &[Outbound; 2], fds: Option<usize>) -> Result<Duration, String> {
    let started = Instant::now();
    // The reaper runs every quarter of the idle timeout.
    let deadline = started + IDLE_TIMEOUT + IDLE_TIMEOUT / 2 + Duration::from_secs(10);
    loop {
        let s = Sample::take(outbounds);
        let fds_ok = fds.is_none_or(|limit| s.fds <= limit);
        if s.pool.idle_connections == 0 && s.pool.busy_connections == 0 && fds_ok {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{:.1} s after the load: pool {} idle / {} busy, {} fds{}",
                started.elapsed().as_secs_f64(),
                s.pool.idle_connections,
                s.pool.busy_connections,
                s.fds,
                fds.map(|l| format!(" (limit {l})")).unwrap_or_default()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone, Copy)]
struct Sample {
    rss_kib: u64,
    /// RSS after `malloc_trim(0)` (baseline and after the load only).
    trimmed_kib: Option<u64>,
    fds: usize,
    pool: PoolStats,
    /// Live heap: bytes allocated and not freed (heap.rs).
    heap_kib: u64,
    /// Where the RSS is, by kind of mapping (trimmed samples only).
    regions: Option<Regions>,
}

/// One mapping of /proc/self/smaps with its resident KiB.
struct Mapping {
    start: String,
    size_kib: u64,
    perms: String,
    inode: u64,
    /// Empty for anonymous mappings.
    path: String,
    rss_kib: u64,
}

/// The process's mappings, from /proc/self/smaps (empty if unreadable).
fn mappings() -> Vec<Mapping> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // A header: `start-end perms offset dev inode [path]`.
        if let Some((start, end)) = fields.first().and_then(|f| f.split_once('-')) {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) {
                out.push(Mapping {
                    start: start.to_owned(),
                    size_kib: (b - a) / 1024,
                    perms: fields.get(1).unwrap_or(&"").to_string(),
                    inode: fields.get(4).and_then(|v| v.parse().ok()).unwrap_or(0),
                    path: fields.get(5).unwrap_or(&"").to_string(),
                    rss_kib: 0,
                });
                continue;
            }
        }
        if fields.first() == Some(&"Rss:") {
            if let Some(m) = out.last_mut() {
                m.rss_kib = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
    }
    out
}

/// Every anonymous mapping with resident pages: `start size_kib rss_kib
/// perms`, to tell thread stacks from glibc's arenas when the RSS moves.
fn anon_mappings() -> Vec<String> {
    mappings()
        .iter()
        .filter(|m| m.path.is_empty() && m.rss_kib > 0)
        .map(|m| format!("{} {} {} {}", m.start, m.size_kib, m.rss_kib, m.perms))
        .collect()
}

/// The RSS by kind of mapping, from /proc/self/smaps, in KiB.
#[derive(Clone, Copy, Default)]
struct Regions {
    /// The program's own file (code and read-only data).
    exe: u64,
    /// Shared libraries and other files.
    files: u64,
    /// glibc's main arena (`[heap]`, grown with brk).
    brk_heap: u64,
    /// Anonymous mappings: glibc's other arenas, thread stacks, large
    /// allocations glibc maps on their own.
    anon: u64,
    /// The main thread's stack, vdso and the like.
    other: u64,
}

impl Regions {
    fn read() -> Option<Regions> {
        use std::os::unix::fs::MetadataExt;
        // The program's file by inode: its path reads "(deleted)" once it is rebuilt.
        let exe = std::fs::metadata("/proc/self/exe").ok()?.ino();
        let mut r = Regions::default();
        for m in mappings() {
            let slot = match m.path.as_str() {
                "" => &mut r.anon,
                "[heap]" => &mut r.brk_heap,
                p if p.starts_with('[') => &mut r.other,
                _ if m.inode == exe => &mut r.exe,
                _ => &mut r.files,
            };
            *slot += m.rss_kib;
        }
        Some(r)
    }

    fn json(&self) -> Value {
        json!({"exe": self.exe, "files": self.files, "brk_heap": self.brk_heap, "anon": self.anon, "other": self.other})
    }
}

impl Sample {
    fn take(outbounds: &[Outbound; 2]) -> Sample {
        let mut pool = PoolStats::default();
        for o in outbounds {
            let s = o.pool_stats();
            pool.idle_connections += s.idle_connections;
            pool.busy_connections += s.busy_connections;
            pool.keys += s.keys;
        }
        Sample {
            rss_kib: rss_kib(),
            trimmed_kib: None,
            fds: count_fds(),
            pool,
            heap_kib: crate::heap::live_kib(),
            regions: None,
        }
    }

    /// The same, and then the RSS once glibc has given back the free memory
    /// it keeps in its arenas: what the process still uses.
    fn take_trimmed(outbounds: &[Outbound; 2]) -> Sample {
        let mut s = Sample::take(outbounds);
        // SAFETY: malloc_trim only releases free memory; it has no preconditions.
        unsafe { libc::malloc_trim(0) };
        s.trimmed_kib = Some(rss_kib());
        s.regions = Regions::read();
        s
    }

    fn json(&self) -> Value {
        json!({"rss_kib": self.rss_kib, "rss_trimmed_kib": self.trimmed_kib, "heap_kib": self.heap_kib, "regions_kib": self.regions.map(|r| r.json()), "fds": self.fds, "pool_idle": self.pool.idle_connections,
               "pool_busy": self.pool.busy_connections, "pool_keys": self.pool.keys})
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn count_fds() -> usize {
    // The listing's own descriptor is not counted.
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

struct Row {
    minute: u32,
    at: Duration,
    requests: u64,
    statuses: BTreeMap<String, u64>,
    errors: BTreeMap<&'static str, u64>,
    details: BTreeMap<String, u64>,
    unexpected_status: BTreeMap<String, u64>,
    slowest: Option<(Duration, String)>,
    squid_kills: u32,
    inflight_max: usize,
    fds_max: usize,
    errors_by_window: [u64; 6],
    details_by_window: BTreeMap<String, u64>,
    sample: Sample,
}

impl Row {
    fn new(minute: u32, at: Duration, m: &Minute, sample: &Sample) -> Row {
        Row {
            minute,
            at,
            requests: m.requests,
            statuses: m.statuses.clone(),
            errors: m.errors.clone(),
            details: m.details.clone(),
            unexpected_status: m.unexpected_status.clone(),
            slowest: m.slowest.clone(),
            squid_kills: m.squid_kills,
            inflight_max: m.inflight_max,
            fds_max: m.fds_max.max(sample.fds),
            errors_by_window: m.errors_by_window,
            details_by_window: m.details_by_window.clone(),
            sample: *sample,
        }
    }

    fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    fn json(&self) -> Value {
        json!({
            "minute": self.minute, "elapsed_s": self.at.as_secs_f64(), "requests": self.requests,
            "statuses": self.statuses, "errors": self.errors, "error_details": self.details,
            "unexpected_status": self.unexpected_status,
            "rss_kib": self.sample.rss_kib, "rss_trimmed_kib": self.sample.trimmed_kib, "heap_kib": self.sample.heap_kib, "regions_kib": self.sample.regions.map(|r| r.json()), "fds": self.sample.fds, "fds_max": self.fds_max,
            "pool_idle": self.sample.pool.idle_connections, "pool_busy": self.sample.pool.busy_connections,
            "pool_keys": self.sample.pool.keys, "inflight_max": self.inflight_max,
            "slowest_ms": self.slowest.as_ref().map(|s| s.0.as_millis() as u64),
            "slowest": self.slowest.as_ref().map(|s| s.1.clone()),
            "squid_kills": self.squid_kills,
            "error_details_by_window": self.details_by_window,
            "errors_by_window": WINDOWS.iter().zip(self.errors_by_window).map(|(w, n)| (w.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    }

    fn line(&self) -> String {
        format!(
            "minute {}: {} requests, {} errors, RSS {:.1} MiB ({:.1} trimmed, {:.1} live heap), {} fds, pool {}/{} idle/busy, slowest {}",
            self.minute,
            self.requests,
            self.errors_total(),
            self.sample.rss_kib as f64 / 1024.0,
            self.sample.trimmed_kib.unwrap_or(0) as f64 / 1024.0,
            self.sample.heap_kib as f64 / 1024.0,
            self.sample.fds,
            self.sample.pool.idle_connections,
            self.sample.pool.busy_connections,
            self.slowest
                .as_ref()
                .map_or_else(|| "-".to_owned(), |s| format!("{} ms: {}", s.0.as_millis(), s.1)),
        )
    }
}

/// The per-minute table, from the JSON lines the run wrote (read back at
/// the end: the load keeps nothing per minute in memory, so that a long run
/// does not grow by its own records).
fn table(rows: &[Value]) -> String {
    let mut t = String::from(
        "| min | requests | 2xx/4xx/5xx | errors by kind | RSS MiB (trimmed; live heap) | fds (max) | pool idle/busy | slowest ms | squid kills |\n\
         |----:|---------:|-------------|----------------|------------------:|----------:|---------------:|-----------:|------------:|\n",
    );
    let mib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / 1024.0;
    for r in rows {
        let s = |k: &str| r["statuses"][k].as_u64().unwrap_or(0);
        let errors = match r["errors"].as_object() {
            Some(e) if !e.is_empty() => e
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "-".to_owned(),
        };
        t.push_str(&format!(
            "| {} | {} | {}/{}/{} | {} | {:.1} ({:.1}; {:.1}) | {} ({}) | {}/{} | {} | {} |\n",
            r["minute"],
            r["requests"],
            s("2xx"),
            s("4xx"),
            s("5xx"),
            errors,
            mib(&r["rss_kib"]),
            mib(&r["rss_trimmed_kib"]),
            mib(&r["heap_kib"]),
            r["fds"],
            r["fds_max"],
            r["pool_idle"],
            r["pool_busy"],
            r["slowest_ms"].as_u64().unwrap_or(0),
            r["squid_kills"],
        ));
    }
    t
}

/// The per-minute rows of the run so far, read back from `--out`.
fn read_rows(path: &str) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("minute").is_some())
        .collect()
}
