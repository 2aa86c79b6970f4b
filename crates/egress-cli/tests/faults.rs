//! RELIABILITY.md's fault table, proxy and origin rows: one test per fault.
//! Each makes the fault, asks the library (`Outbound`) for the URL and checks
//! the typed error and how long it took to fail, then runs `egress fetch`
//! for the same URL and checks its exit code and time. With
//! EGRESS_FAULT_TABLE set, each records its row (scripts/fault-table).
//!
//! Real parts where a real server produces the fault: squid (407, 403,
//! 503), tinyproxy (401, 403), `egress serve` with dnsmasq (502, 504, DNS
//! failures at the proxy), stunnel (certificates), the kernel (a closed
//! port, a full accept queue), glibc's resolver. A fake proxy
//! (support::FakeProxy) or a fake origin (`FakeOrigin` below), named as
//! such, only for what none of them does: garbage, split and oversized
//! replies, HTTP/2.0 to CONNECT, silence, resets and stalls.

#[path = "../../egress/tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Output;
use std::time::{Duration, Instant};

use egress::{Error, HomeserverYaml, Outbound, ProxyEnv, ProxySettings, Purpose, Timeouts};
use http_body_util::BodyExt;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_egress");

/// What a row expects.
enum Expect {
    /// A typed error that `matches`, and `egress fetch`'s exit code for it.
    Error(fn(&Error) -> bool, i32),
    /// The fault is survived: a response with this status, and the exit code.
    Response(u16, i32),
}

struct Row<'a> {
    id: &'a str,
    fault: &'a str,
    source: &'a str,
    /// Proxy variables, for the library and the command alike.
    env: Vec<(&'static str, String)>,
    /// homeserver.yaml, when the row needs one.
    yaml: &'a str,
    purpose: Purpose,
    url: String,
    /// Names resolved without DNS (the command's --resolve).
    resolve: Vec<(&'a str, IpAddr)>,
    redirects: bool,
    /// The library's limits; the command has only --max-time.
    timeouts: Timeouts,
    max_time: &'a str,
    expect: Expect,
    /// Both must fail (or succeed) within this.
    within: Duration,
}

/// Limits short enough that a row that hangs fails the test quickly.
fn quick() -> Timeouts {
    Timeouts::DEFAULT
        .with_connect(Duration::from_secs(3))
        .with_federation_connect(Duration::from_secs(3))
        .with_connect_reply(Duration::from_secs(3))
        .with_request(Duration::from_secs(5))
        .with_body_idle(Duration::from_secs(3))
}

/// The limits of a row that waits for a time limit: 1 s for each step, and
/// 2.5 s for the whole request (which includes the connection), so that the
/// step's limit is the one that ends it.
fn one_second() -> Timeouts {
    let s = Duration::from_secs(1);
    Timeouts::DEFAULT
        .with_connect(s)
        .with_federation_connect(s)
        .with_connect_reply(s)
        .with_request(Duration::from_millis(2500))
        .with_body_idle(s)
}

impl<'a> Row<'a> {
    fn new(id: &'a str, fault: &'a str, source: &'a str, url: String) -> Row<'a> {
        Row {
            id,
            fault,
            source,
            env: Vec::new(),
            yaml: "",
            purpose: Purpose::Push,
            url,
            resolve: Vec::new(),
            redirects: false,
            timeouts: quick(),
            max_time: "10",
            expect: Expect::Response(200, 0),
            within: Duration::from_secs(3),
        }
    }

    fn proxy(mut self, url: String) -> Self {
        self.env.push(("https_proxy", url.clone()));
        self.env.push(("http_proxy", url));
        self
    }

    /// A row that ends at a time limit: the library's are 1 s, the command's --max-time 1.
    fn timed(mut self) -> Self {
        self.timeouts = one_second();
        self.max_time = "1";
        self
    }

    fn expect(mut self, matches: fn(&Error) -> bool, code: i32) -> Self {
        self.expect = Expect::Error(matches, code);
        self
    }

    fn run(self) {
        captured_logs();
        let (result, library) = self.library();
        let text = match &result {
            Ok(status) => format!("response {status}"),
            Err(e) => variant(e),
        };
        let detail = match &result {
            Ok(status) => format!("status {status}"),
            Err(e) => format!("{}: {}", variant(e), e.with_causes()),
        };
        let code = match (&self.expect, &result) {
            (Expect::Error(matches, code), Err(e)) if matches(e) => *code,
            (Expect::Response(want, code), Ok(status)) if status == want => *code,
            _ => panic!("{}: unexpected outcome {detail}", self.id),
        };
        assert!(
            library < self.within,
            "{}: the library took {library:?} ({detail})",
            self.id
        );
        let (out, command) = self.command();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{}: {stderr}", self.id);
        assert!(
            command < self.within + Duration::from_secs(1),
            "{}: egress fetch took {command:?}",
            self.id
        );
        for secret in [PASSWORD, PASSWORD_ENCODED, WRONG_PASSWORD, TINY_PASSWORD] {
            assert!(!stderr.contains(secret), "{}: {stderr}", self.id);
        }
        assert_no_password_logged();
        FaultRow {
            id: self.id,
            fault: self.fault,
            source: self.source,
            error: text,
            code: Some(code),
            library: Some(library),
            command: Some(command),
        }
        .record();
    }

    /// The library's outcome: the response status (body read to the end) or the error.
    fn library(&self) -> (Result<u16, Error>, Duration) {
        let env = ProxyEnv::from_vars(self.env.iter().map(|(k, v)| (*k, v.as_str())));
        let yaml = HomeserverYaml::parse(self.yaml).unwrap();
        let settings = ProxySettings::new(&env, Some(&yaml)).unwrap();
        let mut builder = Outbound::builder(settings)
            .add_ca_file(&world().ca.pem_path)
            .timeouts(self.timeouts);
        for (host, ip) in &self.resolve {
            builder = builder.resolve(host, &[*ip]);
        }
        let out = builder.build().unwrap();
        let mut client = out.client(self.purpose);
        if self.redirects {
            client = client.follow_redirects(egress::MAX_REDIRECTS);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let result = rt.block_on(async {
            let response = client.get(&self.url).await?;
            let status = response.status().as_u16();
            response.into_body().collect().await?;
            Ok(status)
        });
        (result, started.elapsed())
    }

    /// `egress fetch` for the same URL, settings and names.
    fn command(&self) -> (Output, Duration) {
        let mut args: Vec<String> = vec![
            "--purpose".into(),
            self.purpose.name().into(),
            "--max-time".into(),
            self.max_time.into(),
        ];
        for (host, ip) in &self.resolve {
            args.push("--resolve".into());
            args.push(format!("{host}:0:{ip}"));
        }
        if !self.yaml.is_empty() {
            let yaml = temp_dir(&format!("fault-{}", self.id)).join("homeserver.yaml");
            std::fs::write(&yaml, self.yaml).unwrap();
            args.push("--config".into());
            args.push(yaml.to_str().unwrap().into());
        }
        if self.redirects {
            args.push("-L".into());
        }
        args.push(self.url.clone());
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = run_egress(BIN, "fetch", &env, &args);
        (out, started.elapsed())
    }
}

fn squid_auth() -> String {
    format!(
        "http://{USER}:{PASSWORD_ENCODED}@localhost:{}",
        world().squid.auth_port
    )
}

fn squid_open() -> String {
    format!("http://localhost:{}", world().squid.open_port)
}

/// The HTTPS test origin under a name squid and egress resolve to 127.0.0.1.
fn https_origin(path: &str) -> String {
    world().https_origin.url(&test_name(1), path)
}

fn fake_proxy(fault: Fault) -> String {
    format!("http://127.0.0.1:{}", FakeProxy::start(fault).port)
}

fn reply(bytes: &[u8]) -> Fault {
    Fault::Reply(vec![bytes.to_vec()], None)
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---- The proxy -----------------------------------------------------------

#[test]
fn p01_proxy_down() {
    Row::new(
        "P01",
        "proxy down: nothing listens on its port",
        "closed port",
        https_origin("/p01"),
    )
    .proxy(format!("http://127.0.0.1:{}", free_port()))
    .expect(|e| matches!(e, Error::Connect { .. }), 7)
    .run();
}

#[test]
fn p02_proxy_slow_to_accept() {
    let (port, _queued, _listener) = unanswered_port();
    Row::new(
        "P02",
        "proxy slow to accept: its accept queue is full, SYNs are dropped",
        "kernel (full accept queue)",
        https_origin("/p02"),
    )
    .proxy(format!("http://127.0.0.1:{port}"))
    .timed()
    .expect(
        |e| {
            matches!(
                e,
                Error::Timeout {
                    step: egress::TimeoutStep::Connect,
                    ..
                }
            )
        },
        28,
    )
    .run();
}

#[test]
fn p03_proxy_407() {
    Row::new(
        "P03",
        "407 to CONNECT (wrong password)",
        "squid",
        https_origin("/p03"),
    )
    .proxy(format!(
        "http://{USER}:{WRONG_PASSWORD}@localhost:{}",
        world().squid.auth_port
    ))
    .expect(
        |e| matches!(e, Error::ProxyAuth { status, .. } if *status == 407),
        41,
    )
    .run();
}

#[test]
fn p04_proxy_407_to_a_forwarded_request() {
    Row::new(
        "P04",
        "407 to a forwarded http:// request (wrong password)",
        "squid",
        world().http_origin.url(&test_name(1), "/p04"),
    )
    .proxy(format!(
        "http://{USER}:{WRONG_PASSWORD}@localhost:{}",
        world().squid.auth_port
    ))
    .expect(
        |e| matches!(e, Error::ProxyAuth { status, .. } if *status == 407),
        41,
    )
    .run();
}

#[test]
fn p05_proxy_401_without_via() {
    // A forwarded http:// request: tinyproxy answers a wrong password with
    // its own 401, which has no `Via` (an origin's 401 it relays has one: O21).
    let w = world();
    let head = {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(loopback(w.tinyproxy_auth.port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let url = w.http_origin.url("localhost", "/p05-raw");
        use base64::Engine as _;
        let wrong = format!("{USER}:{WRONG_PASSWORD}");
        let basic = base64::engine::general_purpose::STANDARD.encode(wrong);
        write!(
            tcp,
            "GET {url} HTTP/1.1\r\nHost: localhost\r\nProxy-Authorization: Basic {basic}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        head.starts_with("HTTP/1.0 401") || head.starts_with("HTTP/1.1 401"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("\r\nvia:"),
        "tinyproxy's own 401 has a Via: {head}"
    );
    Row::new(
        "P05",
        "401 without `Via` to a forwarded http:// request: the proxy's own (wrong password)",
        "tinyproxy",
        w.http_origin.url("localhost", "/p05"),
    )
    .proxy(format!(
        "http://{USER}:{WRONG_PASSWORD}@localhost:{}",
        w.tinyproxy_auth.port
    ))
    .expect(
        |e| matches!(e, Error::ProxyAuth { status, .. } if *status == 401),
        41,
    )
    .run();
}

#[test]
fn p27_proxy_401_to_connect() {
    Row::new(
        "P27",
        "401 to CONNECT from the proxy (wrong password)",
        "tinyproxy",
        world().https_origin.url("localhost", "/p27"),
    )
    .proxy(format!(
        "http://{USER}:{WRONG_PASSWORD}@localhost:{}",
        world().tinyproxy_auth.port
    ))
    .expect(
        |e| matches!(e, Error::ProxyAuth { status, .. } if *status == 401),
        41,
    )
    .run();
}

/// A connect limit of 10 s for the library (the command keeps its 15 s
/// default), so that a row that must get past a dead address shows it
/// costing the attempt delay, not a share of the limit.
fn ten_seconds_to_connect() -> Timeouts {
    let ten = Duration::from_secs(10);
    quick()
        .with_connect(ten)
        .with_federation_connect(ten)
        .with_request(Duration::from_secs(15))
}

/// Asserts egress logged that the attempt to `dead` was overtaken by one to
/// `live` (the stagger, not a failure, started it).
fn assert_overtaken(dead: SocketAddr, live: SocketAddr) {
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    let line = format!("no connection to {dead} within 250ms; trying {live} too");
    assert!(logs.contains(&line), "egress did not log `{line}`");
}

#[test]
fn p28_proxy_target_with_two_addresses_the_first_drops_syns() {
    // egress serve as the proxy: its DNS answers t38.test with 127.0.0.22
    // (SYNs dropped) first, then the origin's 127.0.0.1; serve's connect
    // limit is 800 ms, which the first address alone used to take whole.
    let origin = &world().https_origin;
    let _dead = DropsSyns::on(SocketAddr::from(([127, 0, 0, 22], origin.port)));
    let mut row = Row::new(
        "P28",
        "the proxy's target has two addresses, the first drops SYNs (serve's --connect-timeout 800ms; survived: serve dials the second 250 ms later)",
        "egress serve + dnsmasq + kernel (full accept queue)",
        origin.url(&test_name(38), "/p28"),
    )
    .proxy(serve_proxy().url());
    row.timeouts = ten_seconds_to_connect();
    row.within = Duration::from_millis(1500);
    row.run();
    let reason = serve_proxy().reason(&format!("{}:{}", test_name(38), origin.port));
    assert!(reason.starts_with("checked"), "{reason}");
}

#[test]
fn p06_proxy_403() {
    // tinyproxy allows CONNECT only to its ConnectPort list (the origins' ports).
    let port = free_port();
    Row::new(
        "P06",
        "403 to CONNECT (a port the proxy does not allow)",
        "tinyproxy",
        format!("https://localhost:{port}/p06"),
    )
    .proxy(format!("http://localhost:{}", world().tinyproxy_open.port))
    .expect(
        |e| matches!(e, Error::ProxyForbidden { status, .. } if *status == 403),
        42,
    )
    .run();
}

#[test]
fn p07_proxy_503_target_refused() {
    let port = free_port();
    Row::new(
        "P07",
        "503 to CONNECT: the proxy cannot connect to the target",
        "squid",
        format!("https://{}:{port}/p07", test_name(1)),
    )
    .proxy(squid_open())
    .expect(
        |e| matches!(e, Error::ProxyUnreachable { status, .. } if *status == 503),
        42,
    )
    .run();
}

#[test]
fn p08_proxy_502() {
    // egress serve as the proxy: it resolves closed.test and finds nothing listening.
    Row::new(
        "P08",
        "502 to CONNECT: the proxy's connection to the target is refused",
        "egress serve",
        format!("https://closed.test:{}/p08", free_port()),
    )
    .proxy(serve_proxy().url())
    .expect(
        |e| matches!(e, Error::ProxyUnreachable { status, .. } if *status == 502),
        42,
    )
    .run();
}

#[test]
fn p09_proxy_504() {
    // egress serve as the proxy: the target drops SYNs, serve's connect limit is 800 ms.
    let (port, _queued, _listener) = unanswered_port();
    Row::new(
        "P09",
        "504 to CONNECT: the proxy's connection to the target times out",
        "egress serve",
        format!("https://slow.test:{port}/p09"),
    )
    .proxy(serve_proxy().url())
    .expect(
        |e| matches!(e, Error::ProxyUnreachable { status, .. } if *status == 504),
        42,
    )
    .run();
}

#[test]
fn p10_proxy_garbage() {
    Row::new(
        "P10",
        "garbage reply to CONNECT",
        "fake proxy",
        https_origin("/p10"),
    )
    .proxy(fake_proxy(reply(b"garbage\r\n\r\n")))
    .expect(
        |e| matches!(e, Error::ProxyProtocol { problem, .. } if problem.contains("not HTTP")),
        43,
    )
    .run();
}

#[test]
fn p11_proxy_http2_reply() {
    Row::new(
        "P11",
        "HTTP/2.0 reply to CONNECT",
        "fake proxy",
        https_origin("/p11"),
    )
    .proxy(fake_proxy(reply(
        b"HTTP/2.0 200 Connection established\r\n\r\n",
    )))
    .expect(
        |e| matches!(e, Error::ProxyProtocol { problem, .. } if problem.contains("version")),
        43,
    )
    .run();
}

#[test]
fn p12_proxy_reply_split_across_reads() {
    let chunks: Vec<Vec<u8>> = [
        &b"HTT"[..],
        b"P/1.1 20",
        b"0 Connection est",
        b"ablished\r\n\r",
        b"\n",
    ]
    .iter()
    .map(|c| c.to_vec())
    .collect();
    Row::new(
        "P12",
        "reply to CONNECT split across five reads (survived)",
        "fake proxy",
        https_origin("/p12"),
    )
    .proxy(fake_proxy(Fault::Reply(
        chunks,
        Some(world().https_origin.port),
    )))
    .run();
}

#[test]
fn p13_proxy_reply_over_64_kib() {
    let mut long = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 70 * 1024));
    Row::new(
        "P13",
        "reply to CONNECT over 64 KiB",
        "fake proxy",
        https_origin("/p13"),
    )
    .proxy(fake_proxy(Fault::Reply(vec![long], None)))
    .expect(
        |e| matches!(e, Error::ProxyProtocol { problem, .. } if problem.contains("64 KiB")),
        43,
    )
    .run();
}

#[test]
fn p14_proxy_closes_without_replying() {
    Row::new(
        "P14",
        "proxy closes the connection without replying to CONNECT",
        "fake proxy",
        https_origin("/p14"),
    )
    .proxy(fake_proxy(Fault::Close))
    .expect(
        |e| matches!(e, Error::ProxyProtocol { problem, .. } if problem.contains("without replying")),
        43,
    )
    .run();
}

#[test]
fn p15_proxy_reply_cut_short() {
    Row::new(
        "P15",
        "reply to CONNECT cut off in its headers",
        "fake proxy",
        https_origin("/p15"),
    )
    .proxy(fake_proxy(reply(b"HTTP/1.1 200 OK\r\nX: y")))
    .expect(
        |e| matches!(e, Error::ProxyProtocol { problem, .. } if problem.contains("in the middle")),
        43,
    )
    .run();
}

#[test]
fn p16_proxy_silent_after_connect() {
    Row::new(
        "P16",
        "proxy reads CONNECT and never answers",
        "fake proxy",
        https_origin("/p16"),
    )
    .proxy(fake_proxy(Fault::Silent))
    .timed()
    .expect(
        |e| {
            matches!(
                e,
                Error::Timeout {
                    step: egress::TimeoutStep::ProxyReply,
                    ..
                }
            )
        },
        28,
    )
    .run();
}

#[test]
fn p17_tunnel_reset_after_connect() {
    Row::new(
        "P17",
        "tunnel reset after CONNECT (100 bytes into the origin's TLS handshake)",
        "fake proxy",
        https_origin("/p17"),
    )
    .proxy(fake_proxy(Fault::ResetAfter(
        world().https_origin.port,
        100,
    )))
    .expect(|e| matches!(e, Error::Tls { .. }), 35)
    .run();
}

#[test]
fn p18_tls_failure_to_the_proxy() {
    // https:// to squid's plain-HTTP port: squid answers the ClientHello with an HTTP error.
    Row::new(
        "P18",
        "TLS failure to the proxy (https:// proxy URL, plain-HTTP proxy port)",
        "squid",
        https_origin("/p18"),
    )
    .proxy(format!("https://localhost:{}", world().squid.open_port))
    .expect(|e| matches!(e, Error::Tls { .. }), 35)
    .run();
}

#[test]
fn p19_proxy_certificate_untrusted() {
    Row::new(
        "P19",
        "proxy's certificate from an untrusted CA",
        "stunnel",
        https_origin("/p19"),
    )
    .proxy(format!(
        "https://localhost:{}",
        world().untrusted_tls_squid.port
    ))
    .expect(
        |e| matches!(e, Error::Certificate { is_proxy: true, .. }),
        60,
    )
    .run();
}

#[test]
fn p20_proxy_certificate_for_another_name() {
    let w = world();
    let (_, _, cert) = w.ca.issue("p20.pem", &["other.test"]);
    let stunnel = Stunnel::start("p20-wrong-name", &cert, w.squid.open_port);
    Row::new(
        "P20",
        "proxy's certificate for another name",
        "stunnel",
        https_origin("/p20"),
    )
    .proxy(format!("https://localhost:{}", stunnel.port))
    .expect(
        |e| matches!(e, Error::Certificate { is_proxy: true, .. }),
        60,
    )
    .run();
}

#[test]
fn p21_proxy_tls_handshake_stalls() {
    let origin = FakeOrigin::start(OriginFault::Silent);
    Row::new(
        "P21",
        "https:// proxy accepts TCP, never answers the ClientHello",
        "fake proxy",
        https_origin("/p21"),
    )
    .proxy(format!("https://127.0.0.1:{}", origin.port))
    .timed()
    .expect(
        |e| {
            matches!(
                e,
                Error::Timeout {
                    step: egress::TimeoutStep::Connect | egress::TimeoutStep::TlsHandshake,
                    ..
                }
            )
        },
        28,
    )
    .run();
}

#[test]
fn p22_proxy_403_from_squid() {
    Row::new(
        "P22",
        "403 to CONNECT (`http_access deny` for the destination)",
        "squid",
        world().https_origin.url(FORBIDDEN_NAME, "/p22"),
    )
    .proxy(squid_open())
    .expect(
        |e| matches!(e, Error::ProxyForbidden { status, .. } if *status == 403),
        42,
    )
    .run();
}

#[test]
fn p23_proxy_407_without_credentials() {
    Row::new(
        "P23",
        "407 to CONNECT: the proxy wants credentials, the URL has none",
        "squid",
        https_origin("/p23"),
    )
    .proxy(format!("http://localhost:{}", world().squid.auth_port))
    .expect(
        |e| matches!(e, Error::ProxyAuth { status, .. } if *status == 407),
        41,
    )
    .run();
}

#[test]
fn p24_dns_failure_at_the_proxy() {
    Row::new(
        "P24",
        "DNS failure at the proxy: the name does not exist (NXDOMAIN)",
        "egress serve + dnsmasq",
        "https://nowhere.test/p24".to_owned(),
    )
    .proxy(serve_proxy().url())
    .expect(
        |e| matches!(e, Error::ProxyUnreachable { status, .. } if *status == 502),
        42,
    )
    .run();
    // The fault is the one named: serve found no address for the name.
    let reason = serve_proxy().reason("nowhere.test:443");
    assert_eq!(
        reason,
        "cannot resolve nowhere.test: the name has no address"
    );
}

#[test]
fn p25_blocked_address_at_the_proxy() {
    Row::new(
        "P25",
        "DNS answer with one blocked address, at the proxy: 403",
        "egress serve + dnsmasq",
        format!("https://mixed.test:{}/p25", world().https_origin.port),
    )
    .proxy(serve_proxy().url())
    .expect(
        |e| matches!(e, Error::ProxyForbidden { status, .. } if *status == 403),
        42,
    )
    .run();
}

#[test]
fn p26_proxy_name_does_not_resolve() {
    // A 64-octet label: glibc's resolver refuses the name without a query.
    let mut row = Row::new(
        "P26",
        "the proxy's own host name does not resolve",
        "glibc resolver",
        https_origin("/p26"),
    )
    .proxy(format!("http://{}.test:3128", "p".repeat(64)));
    row.source = "glibc resolver";
    row.expect(|e| matches!(e, Error::Resolve { .. }), 6).run();
}

// ---- The origin ----------------------------------------------------------

/// A direct row to a fake origin on 127.0.0.1 (OpenID Connect: no blocklist).
fn direct(id: &'static str, fault: &'static str, url: String) -> Row<'static> {
    let mut row = Row::new(id, fault, "fake origin", url);
    row.purpose = Purpose::Oidc;
    row
}

#[test]
fn o01_origin_refuses() {
    let mut row = direct(
        "O01",
        "origin down: connection refused (direct)",
        format!("http://127.0.0.1:{}/o01", free_port()),
    );
    row.source = "closed port";
    row.expect(|e| matches!(e, Error::Connect { .. }), 7).run();
}

#[test]
fn o02_tls_failure_to_the_origin() {
    // https:// to the plain-HTTP origin, through squid's tunnel.
    Row::new(
        "O02",
        "TLS failure to the origin (https:// URL, plain-HTTP port)",
        "squid + test origin",
        world()
            .http_origin
            .url(&test_name(1), "/o02")
            .replace("http:", "https:"),
    )
    .proxy(squid_auth())
    .expect(|e| matches!(e, Error::Tls { .. }), 35)
    .run();
}

#[test]
fn o03_origin_certificate_for_another_name() {
    // squid resolves hs1.test to 127.0.0.1; the origin's certificate does not name it.
    Row::new(
        "O03",
        "origin's certificate for another name",
        "squid + test origin",
        world().https_origin.url("hs1.test", "/o03"),
    )
    .proxy(squid_auth())
    .expect(
        |e| {
            matches!(
                e,
                Error::Certificate {
                    is_proxy: false,
                    ..
                }
            )
        },
        60,
    )
    .run();
}

#[test]
fn o04_origin_certificate_expired() {
    let w = world();
    let (_, _, cert) = w.ca.issue_with("o04.pem", &["localhost"], |params| {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let stunnel = Stunnel::start("o04-expired", &cert, w.http_origin.port);
    Row::new(
        "O04",
        "origin's certificate expired",
        "squid + stunnel",
        format!("https://localhost:{}/o04", stunnel.port),
    )
    .proxy(squid_auth())
    .expect(
        |e| matches!(e, Error::Certificate { is_proxy: false, source, .. } if format!("{source:?}").contains("Expired")),
        60,
    )
    .run();
}

#[test]
fn o05_origin_certificate_untrusted() {
    Row::new(
        "O05",
        "origin's certificate from an untrusted CA",
        "squid + stunnel",
        format!("https://localhost:{}/o05", world().untrusted_tls_squid.port),
    )
    .proxy(squid_auth())
    .expect(
        |e| {
            matches!(
                e,
                Error::Certificate {
                    is_proxy: false,
                    ..
                }
            )
        },
        60,
    )
    .run();
}

#[test]
fn o06_origin_tls_handshake_stalls() {
    let origin = FakeOrigin::start(OriginFault::Silent);
    direct(
        "O06",
        "origin accepts TCP, never answers the ClientHello",
        format!("https://127.0.0.1:{}/o06", origin.port),
    )
    .timed()
    .expect(
        |e| {
            matches!(
                e,
                Error::Timeout {
                    step: egress::TimeoutStep::Connect | egress::TimeoutStep::TlsHandshake,
                    ..
                }
            )
        },
        28,
    )
    .run();
}

#[test]
fn o07_origin_never_answers() {
    let origin = FakeOrigin::start(OriginFault::Silent);
    direct(
        "O07",
        "origin reads the request, never answers",
        format!("http://127.0.0.1:{}/o07", origin.port),
    )
    .timed()
    .tap(|row| row.timeouts.request = Duration::from_secs(1))
    .expect(
        |e| {
            matches!(
                e,
                Error::Timeout {
                    step: egress::TimeoutStep::Response,
                    ..
                }
            )
        },
        28,
    )
    .run();
}

#[test]
fn o08_origin_garbage() {
    let origin = FakeOrigin::start(OriginFault::Answer(
        b"garbage\r\n\r\n".to_vec(),
        Then::Close,
    ));
    direct(
        "O08",
        "origin answers garbage",
        format!("http://127.0.0.1:{}/o08", origin.port),
    )
    .expect(|e| matches!(e, Error::Http { .. }), 56)
    .run();
}

#[test]
fn o09_origin_closes_without_answering() {
    let origin = FakeOrigin::start(OriginFault::Answer(Vec::new(), Then::Close));
    direct(
        "O09",
        "origin closes the connection without answering",
        format!("http://127.0.0.1:{}/o09", origin.port),
    )
    .expect(|e| matches!(e, Error::Http { .. }), 56)
    .run();
}

#[test]
fn o10_origin_head_too_large() {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..200 {
        head.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "f".repeat(40)).as_bytes());
    }
    head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    let origin = FakeOrigin::start(OriginFault::Answer(head, Then::Close));
    direct(
        "O10",
        "origin's response head has 200 header lines",
        format!("http://127.0.0.1:{}/o10", origin.port),
    )
    .expect(|e| matches!(e, Error::Http { .. }), 56)
    .run();
}

#[test]
fn o11_origin_reset_mid_body() {
    let origin = FakeOrigin::start(OriginFault::Answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nfirst bytes".to_vec(),
        Then::Reset,
    ));
    direct(
        "O11",
        "origin resets the connection mid-body",
        format!("http://127.0.0.1:{}/o11", origin.port),
    )
    .expect(|e| matches!(e, Error::Http { .. }), 56)
    .run();
}

#[test]
fn o12_origin_closes_mid_body() {
    let origin = FakeOrigin::start(OriginFault::Answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nfirst bytes".to_vec(),
        Then::Close,
    ));
    direct(
        "O12",
        "origin closes before the Content-Length is sent",
        format!("http://127.0.0.1:{}/o12", origin.port),
    )
    .expect(|e| matches!(e, Error::Http { .. }), 56)
    .run();
}

#[test]
fn o13_origin_body_stalls() {
    let origin = FakeOrigin::start(OriginFault::Answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc".to_vec(),
        Then::Stall,
    ));
    direct(
        "O13",
        "origin sends the head and 3 of 100 bytes, then nothing",
        format!("http://127.0.0.1:{}/o13", origin.port),
    )
    .timed()
    .expect(
        |e| {
            matches!(
                e,
                Error::Timeout {
                    step: egress::TimeoutStep::BodyIdle,
                    ..
                }
            )
        },
        28,
    )
    .run();
}

#[test]
fn o14_origin_5xx_is_a_response() {
    Row::new(
        "O14",
        "origin answers 503 (a response, not an error)",
        "squid + test origin",
        https_origin("/status/503"),
    )
    .proxy(squid_auth())
    .tap(|row| row.expect = Expect::Response(503, 22))
    .run();
}

#[test]
fn o15_dns_failure() {
    // A 64-byte label: glibc's resolver refuses the name without sending a
    // query, so the test stays on loopback.
    let host = format!("{}.test", "a".repeat(64));
    let mut row = direct(
        "O15",
        "DNS failure: the system resolver cannot resolve the name",
        format!("http://{host}/o15"),
    );
    row.source = "glibc resolver";
    row.expect(|e| matches!(e, Error::Resolve { .. }), 6).run();
}

#[test]
fn o16_dns_answer_with_one_blocked_address() {
    // 127.0.0.1 is let through by ip_range_whitelist, 127.0.0.9 is not: the
    // whole answer is refused, and the allowed address (where nothing
    // listens: dialling it would be a connection error) is not dialled.
    let mut row = Row::new(
        "O16",
        "a name resolving to an allowed and a blocked address",
        "`--resolve` (both addresses)",
        format!("http://mixed.test:{}/o16", free_port()),
    );
    row.yaml = "ip_range_whitelist: ['127.0.0.1/32']\n";
    row.resolve = vec![
        ("mixed.test", LOCALHOST),
        ("mixed.test", IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))),
    ];
    row.expect(
        |e| matches!(e, Error::Blocked { blocked, .. } if blocked.addr == IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))),
        40,
    )
    .run();
}

#[test]
fn o22_two_addresses_the_first_drops_syns() {
    // The name's first address drops SYNs (a full accept queue on
    // 127.0.0.21, the origin's port), the second is the origin. Each address
    // is dialled 250 ms after the last one started; hyper-util's connector
    // gave each address of one family an even share of the connect limit.
    let origin = &world().http_origin;
    let dead = DropsSyns::on(SocketAddr::from(([127, 0, 0, 21], origin.port)));
    let mut row = Row::new(
        "O22",
        "a name with two IPv4 addresses, the first drops SYNs (connect limit 10 s; survived: the second is dialled 250 ms later, where hyper-util's connector, used before, gave the first half the limit)",
        "kernel (full accept queue) + `--resolve` (both addresses)",
        origin.url("two.test", "/o22"),
    );
    row.yaml = "ip_range_whitelist: ['127.0.0.1/32', '127.0.0.21/32']\n";
    row.resolve = vec![("two.test", dead.addr.ip()), ("two.test", LOCALHOST)];
    row.timeouts = ten_seconds_to_connect();
    row.within = Duration::from_millis(1500);
    row.run();
    assert_overtaken(dead.addr, SocketAddr::from(([127, 0, 0, 1], origin.port)));
}

#[test]
fn o17_blocked_literal() {
    Row::new(
        "O17",
        "URL with a blocked IP literal (refused before any connection, though proxied)",
        "client (the URL)",
        world().https_origin.url("127.0.0.1", "/o17"),
    )
    .proxy(squid_auth())
    .expect(|e| matches!(e, Error::Refused { .. }), 40)
    .run();
}

fn redirect_row(id: &'static str, fault: &'static str, path: &str) -> Row<'static> {
    let mut row =
        Row::new(id, fault, "squid + test origin", https_origin(path)).proxy(squid_auth());
    row.purpose = Purpose::UrlPreview;
    row.redirects = true;
    row
}

#[test]
fn o18_redirect_to_a_blocked_literal() {
    redirect_row(
        "O18",
        "redirect to a blocked IP literal",
        "/redirect?to=http://10.0.0.1/",
    )
    .expect(|e| matches!(e, Error::Refused { .. }), 40)
    .run();
}

#[test]
fn o19_redirect_loop() {
    redirect_row("O19", "redirect loop", "/loop")
        .expect(|e| matches!(e, Error::TooManyRedirects(10)), 47)
        .run();
}

#[test]
fn o20_redirect_to_an_unusable_location() {
    redirect_row(
        "O20",
        "redirect to an unusable Location (ftp://)",
        "/redirect?to=ftp://files.test/x",
    )
    .expect(|e| matches!(e, Error::BadRedirect { .. }), 47)
    .run();
}

#[test]
fn o21_origin_401_through_a_forwarding_proxy() {
    Row::new(
        "O21",
        "origin answers 401 through a forwarding proxy (a response, not proxy auth)",
        "squid + test origin",
        world().http_origin.url(&test_name(1), "/status/401"),
    )
    .proxy(squid_auth())
    .tap(|row| row.expect = Expect::Response(401, 22))
    .run();
}

impl<'a> Row<'a> {
    fn tap(mut self, f: impl FnOnce(&mut Row<'a>)) -> Self {
        f(&mut self);
        self
    }
}

// ---- Test parts ----------------------------------------------------------

/// A listener whose accept queue is full: Linux drops further SYNs, so a
/// connect attempt hangs until someone's time limit ends it.
fn unanswered_port() -> (u16, Vec<std::net::TcpStream>, tokio::net::TcpListener) {
    let _guard = runtime().enter();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&loopback(port), Duration::from_millis(300)) {
            Ok(tcp) => queued.push(tcp),
            Err(_) => return (port, queued, listener),
        }
    }
    panic!("the accept queue of 127.0.0.1:{port} never filled up");
}

/// `egress serve`, a real proxy that answers 502, 504 and 403 on its own,
/// with dnsmasq for its DNS: closed.test and slow.test are 127.0.0.1 (let
/// through), mixed.test is 127.0.0.1 and 127.0.0.9 (blocked), t38.test is
/// 127.0.0.22 then 127.0.0.1 (both let through), nowhere.test does not
/// exist (NXDOMAIN). Started once; stopped when the test binary exits.
struct ServeProxy {
    port: u16,
    dir: std::path::PathBuf,
    _dns: std::process::Child,
    _serve: std::process::Child,
}

impl ServeProxy {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The reason serve logged for its first request to `target`, waiting
    /// up to 5 s for the record (serve writes its log in batches).
    fn reason(&self, target: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = std::fs::read_to_string(self.dir.join("log.jsonl")).unwrap_or_default();
            let found = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|r| r["target"] == target)
                .and_then(|r| r["reason"].as_str().map(str::to_owned));
            if let Some(reason) = found {
                return reason;
            }
            assert!(
                Instant::now() < deadline,
                "serve logged nothing for {target}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve_proxy() -> &'static ServeProxy {
    static SERVE: std::sync::OnceLock<Result<ServeProxy, String>> = std::sync::OnceLock::new();
    start_once(&SERVE, start_serve_proxy, "egress serve")
}

fn start_serve_proxy() -> ServeProxy {
    let dir = temp_dir("fault-serve");
    std::fs::write(
        dir.join("hosts"),
        "127.0.0.1 closed.test\n127.0.0.1 slow.test\n127.0.0.1 mixed.test\n127.0.0.9 mixed.test\n",
    )
    .unwrap();
    // t38.test: 127.0.0.22 (P28 makes it drop SYNs), then 127.0.0.1. Unlike
    // hosts-file names, which dnsmasq rotates, `--address` answers keep one
    // order: the reverse of the command line's.
    let two = test_name(38);
    let dns_port = free_port();
    let mut cmd = dnsmasq_command(&dir, dns_port);
    let dns_log = dir.join("dnsmasq.out");
    // nowhere.test: NXDOMAIN (`--address=/name/` with no address).
    cmd.arg(format!("--addn-hosts={}", dir.join("hosts").display()))
        .arg("--address=/nowhere.test/")
        .arg(format!("--address=/{two}/127.0.0.1"))
        .arg(format!("--address=/{two}/127.0.0.22"))
        .stdout(std::fs::File::create(&dns_log).unwrap())
        .stderr(std::fs::File::create(dir.join("dnsmasq.err")).unwrap());
    let mut dns = spawn(cmd);
    // dnsmasq listens on UDP and TCP; TCP tells us it is up.
    wait_for_port(&mut dns, dns_port, "dnsmasq", &dns_log);
    let yaml = dir.join("homeserver.yaml");
    std::fs::write(
        &yaml,
        "ip_range_whitelist: ['127.0.0.1/32', '127.0.0.22/32']\n",
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("stderr.log");
    let mut cmd = std::process::Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("serve")
        .arg("--config")
        .arg(&yaml)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--dns-server")
        .arg(format!("127.0.0.1:{dns_port}"))
        .args(["--connect-timeout", "800ms"])
        .stdout(std::fs::File::create(dir.join("log.jsonl")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut serve = spawn(cmd);
    wait_for_port(&mut serve, port, "egress serve", &log);
    ServeProxy {
        port,
        dir,
        _dns: dns,
        _serve: serve,
    }
}

/// What a fake origin does after reading the request head.
#[derive(Clone)]
enum OriginFault {
    /// Never answer (nor complete a TLS handshake).
    Silent,
    /// Send these bytes, then `Then`.
    Answer(Vec<u8>, Then),
}

#[derive(Clone, Copy)]
enum Then {
    /// Close the connection (FIN).
    Close,
    /// Close with a reset (RST).
    Reset,
    /// Send nothing more, keep the connection open.
    Stall,
}

/// A fake origin (named as such) on 127.0.0.1, for faults no real server
/// produces on demand.
struct FakeOrigin {
    port: u16,
}

impl FakeOrigin {
    fn start(fault: OriginFault) -> FakeOrigin {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        runtime().spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let fault = fault.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    let OriginFault::Answer(bytes, then) = fault else {
                        // Silent: hold the connection until the client gives up.
                        while let Ok(n) = tcp.read(&mut chunk).await {
                            if n == 0 {
                                return;
                            }
                        }
                        return;
                    };
                    let _ = tcp.write_all(&bytes).await;
                    let _ = tcp.flush().await;
                    match then {
                        Then::Close => {}
                        Then::Reset => {
                            let _ = socket2_linger(&tcp);
                        }
                        Then::Stall => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                    }
                });
            }
        });
        FakeOrigin { port }
    }
}
