//! `egress serve` as a process: the protocol as Synapse and egress send it,
//! the blocklist after its own DNS, DNS rebinding, chaining through a real
//! squid, credentials, limits, faults and signals. Loopback only.

#[path = "../../egress/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_egress");
const WAIT: Duration = Duration::from_secs(10);

/// A running `egress serve`, stopped (SIGTERM to its group) with the test binary.
struct Serve {
    port: u16,
    metrics_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Serve {
    fn start(name: &str, yaml: &str, args: &[&str]) -> Serve {
        Serve::start_env(name, yaml, args, &[])
    }

    fn start_env(name: &str, yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Serve {
        Serve::launch(name, yaml, args, env, None, free_port())
    }

    /// On a port chosen beforehand (for a parent that must know it).
    fn start_on(name: &str, yaml: &str, args: &[&str], port: u16) -> Serve {
        Serve::launch(name, yaml, args, &[], None, port)
    }

    /// With stdout a pipe the test holds (and may never read).
    fn start_piped(name: &str, yaml: &str, args: &[&str]) -> (Serve, ChildStdout) {
        let mut serve = Serve::launch(name, yaml, args, &[], Some(Stdio::piped()), free_port());
        let stdout = serve.child.as_mut().unwrap().stdout.take().unwrap();
        (serve, stdout)
    }

    fn launch(
        name: &str,
        yaml: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stdout: Option<Stdio>,
        port: u16,
    ) -> Serve {
        let dir = temp_dir(&format!("serve-{name}"));
        std::fs::write(dir.join("homeserver.yaml"), yaml).unwrap();
        let metrics_port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "egress=debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.arg("serve")
            .arg("--config")
            .arg(dir.join("homeserver.yaml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--metrics")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(args)
            .stdout(
                stdout.unwrap_or_else(|| {
                    std::fs::File::create(dir.join("log.jsonl")).unwrap().into()
                }),
            )
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
        let mut child = spawn(cmd);
        wait_for_port(&mut child, port, "egress serve", &dir.join("stderr.log"));
        Serve {
            port,
            metrics_port,
            dir,
            child: Some(child),
        }
    }

    fn proxy(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("log.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The first record matching `want`, waiting for it (a tunnel's record
    /// is written when the tunnel closes).
    fn record(&self, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self.records().into_iter().find(|r| want(r)) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no such record; serve logged:\n{}\nstderr:\n{}",
                std::fs::read_to_string(self.dir.join("log.jsonl")).unwrap_or_default(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The name serve adds to `Via` (`egress-` and 8 hex digits), from its start-up log.
    fn via_name(&self) -> String {
        let stderr = self.stderr();
        let name = stderr
            .split("Via name ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("serve logged no Via name:\n{stderr}"));
        assert!(name.starts_with("egress-") && name.len() == 15, "{name}");
        name.to_owned()
    }

    fn metrics(&self) -> String {
        let (head, body) = raw(
            self.metrics_port,
            "GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
        );
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        // SAFETY: a signal to the child this test started.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits for serve to exit; its status.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A homeserver.yaml letting `addrs` through the default blocklist.
fn allow(addrs: &[&str]) -> String {
    format!(
        "ip_range_whitelist: [{}]\n",
        addrs
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn connect(port: u16) -> TcpStream {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    tcp
}

/// Reads a response head (up to the blank line) byte by byte, so that the
/// bytes after it stay in the socket.
fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => break,
            Err(e) => panic!(
                "reading a head: {e}; so far {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Records a serve row of RELIABILITY.md's fault table (support::FaultRow,
/// with EGRESS_FAULT_TABLE set): the status serve answered (None: it closed
/// the connection without one), what it did, and how long it took.
fn serve_row(
    id: &str,
    fault: &str,
    source: &str,
    status: Option<i32>,
    outcome: String,
    took: Duration,
) {
    FaultRow {
        id,
        fault,
        source,
        error: outcome,
        code: status,
        library: None,
        command: Some(took),
    }
    .record();
}

/// The status code of a response head (`HTTP/1.1 403 ...` → 403).
fn status_of(head: &str) -> Option<i32> {
    head.split_whitespace().nth(1)?.parse().ok()
}

/// `decision: reason` of serve's log record.
fn logged(record: &Value) -> String {
    format!(
        "{}: {}",
        record["decision"].as_str().unwrap_or("?"),
        record["reason"].as_str().unwrap_or("?")
    )
}

/// One request on a fresh connection that the server closes; head and body.
fn raw(port: u16, request: &str) -> (String, String) {
    let mut tcp = connect(port);
    tcp.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut tcp);
    let mut body = String::new();
    let _ = tcp.read_to_string(&mut body);
    (head, body)
}

/// `CONNECT target` on a new connection; the head of the answer and the socket.
fn tunnel(port: u16, request: &str) -> (String, TcpStream) {
    let mut tcp = connect(port);
    tcp.write_all(request.as_bytes()).unwrap();
    let head = read_head(&mut tcp);
    (head, tcp)
}

/// A plain HTTP origin of ours that echoes request bodies, serves `/big?n=N`
/// (N bytes in 64 KiB chunks) and counts the connections it accepted.
struct Echo {
    port: u16,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

impl Echo {
    fn start(ip: &str) -> Echo {
        let listener = StdListener::bind((ip, 0)).unwrap();
        Echo::on(listener)
    }

    fn on(listener: StdListener) -> Echo {
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (count, record) = (accepted.clone(), seen.clone());
        runtime().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let record = record.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let mut headers: HashMap<String, String> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
                                .collect();
                            headers.insert(":target".into(), req.uri().to_string());
                            record.lock().unwrap().push(headers);
                            let big = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("n="))
                                .and_then(|n| n.parse::<usize>().ok());
                            let body = if let Some(n) = big {
                                Repeat { left: n }.boxed()
                            } else {
                                let bytes = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                Full::new(bytes).map_err(|never| match never {}).boxed()
                            };
                            Ok::<_, std::convert::Infallible>(Response::new(body))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Echo {
            port,
            accepted,
            seen,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// `n` bytes of `x` in 64 KiB frames, produced as they are read.
struct Repeat {
    left: usize,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let len = self.left.min(65536);
        self.left -= len;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; len])))))
    }
}

/// dnsmasq answering A records from a hosts-format file (several lines for
/// one name give a mixed answer).
/// Its port, and the process (stopped with the test binary).
fn dnsmasq(name: &str, hosts: &str) -> (u16, Child) {
    let dir = temp_dir(&format!("dnsmasq-{name}"));
    std::fs::write(dir.join("hosts"), hosts).unwrap();
    let port = free_port();
    let mut cmd = dnsmasq_command(&dir, port);
    cmd.arg(format!("--addn-hosts={}", dir.join("hosts").display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("out.log")).unwrap());
    let child = spawn(cmd);
    // dnsmasq listens on UDP (and TCP): wait for the TCP side.
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "dnsmasq did not start: {}",
            std::fs::read_to_string(dir.join("out.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (port, child)
}

/// A fake DNS server (no real one changes its answer from one query to the
/// next, which is what a rebinding attacker's server does): the first A
/// query for any name gets `first`, every later one `then`; TTL 0. AAAA
/// queries get no address. Counts A queries.
struct FakeDns {
    port: u16,
    a_queries: Arc<AtomicUsize>,
}

impl FakeDns {
    fn start(first: [u8; 4], then: [u8; 4]) -> FakeDns {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let a_queries = Arc::new(AtomicUsize::new(0));
        let count = a_queries.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let query = &buf[..n];
                if n < 12 {
                    continue;
                }
                // The question: labels up to a zero byte, then type and class.
                let mut end = 12;
                while end < n && query[end] != 0 {
                    end += 1 + query[end] as usize;
                }
                let question_end = end + 5;
                if question_end > n {
                    continue;
                }
                let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
                let mut reply = Vec::with_capacity(64);
                reply.extend_from_slice(&query[..2]); // id
                reply.extend_from_slice(&[0x81, 0x80]); // response, recursion
                reply.extend_from_slice(&[0, 1]); // one question
                let answer = (qtype == 1).then(|| {
                    if count.fetch_add(1, Ordering::SeqCst) == 0 {
                        first
                    } else {
                        then
                    }
                });
                reply.extend_from_slice(&[0, u8::from(answer.is_some()), 0, 0, 0, 0]);
                reply.extend_from_slice(&query[12..question_end]);
                if let Some(ip) = answer {
                    reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                    reply.extend_from_slice(&ip);
                }
                let _ = socket.send_to(&reply, from);
            }
        });
        FakeDns { port, a_queries }
    }
}

fn get_through(serve: &Serve, url: &str) -> (String, String) {
    raw(
        serve.port,
        &format!(
            "GET {url} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            url.split('/').nth(2).unwrap()
        ),
    )
}

#[test]
fn connect_as_synapse_and_as_egress_send_it() {
    let echo = Echo::start("127.0.0.1");
    let serve = Serve::start("connect", &allow(&["127.0.0.1/32"]), &[]);
    // Synapse (Twisted): HTTP/1.0, no Host.
    let (head, mut tcp) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{} HTTP/1.0\r\n\r\n", echo.port),
    );
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    tcp.write_all(b"POST /tunnelled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with("hello"), "{answer}");
    drop(tcp);
    let record = serve.record(|r| {
        r["http.request.method"] == "CONNECT"
            && r["target"]
                .as_str()
                .unwrap()
                .ends_with(&format!(":{}", echo.port))
    });
    assert_eq!(record["decision"], "allowed");
    assert_eq!(record["resolved"], format!("127.0.0.1:{}", echo.port));
    assert_eq!(record["http.response.status_code"], 200);
    assert!(record["bytes_up"].as_u64().unwrap() >= 80, "{record}");
    assert!(record["bytes_down"].as_u64().unwrap() >= 5, "{record}");

    // egress's own client: HTTP/1.1 CONNECT with Host, TLS to the origin inside.
    let w = world();
    let out = run_egress(
        BIN,
        "fetch",
        &[("https_proxy", &serve.proxy())],
        &[&w.https_origin.url("localhost", "/through-serve")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "origin https /through-serve"
    );
    let record = serve.record(|r| r["target"] == format!("localhost:{}", w.https_origin.port));
    assert_eq!(
        record["resolved"],
        format!("127.0.0.1:{}", w.https_origin.port)
    );
}

#[test]
fn forwarded_requests_stream_bodies_keep_alive_and_drop_hop_by_hop_headers() {
    let echo = Echo::start("127.0.0.1");
    let serve = Serve::start("forward", &allow(&["127.0.0.1/32"]), &[]);
    let mut tcp = connect(serve.port);
    let body = "b".repeat(300_000);
    // Two requests on one client connection: a chunked upload, then a download.
    tcp.write_all(
        format!(
            "POST http://localhost:{}/up HTTP/1.1\r\nHost: localhost:{}\r\nTransfer-Encoding: chunked\r\n\
             Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\nProxy-Connection: keep-alive\r\n\
             Connection: keep-alive, X-Private\r\nX-Private: 1\r\nX-Kept: 2\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            echo.port,
            echo.port,
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let head = read_head(&mut tcp);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let via = format!("1.1 {}", serve.via_name());
    assert_eq!(header(&head, "via"), Some(via.as_str()), "{head}");
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let echoed = read_body(&mut reader, &head);
    assert_eq!(echoed.len(), body.len());
    tcp.write_all(
        format!(
            "GET http://localhost:{}/big?n=2000000 HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            echo.port, echo.port
        )
        .as_bytes(),
    )
    .unwrap();
    let head = read_head_buffered(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body(&mut reader, &head).len(), 2_000_000);
    drop(reader);
    drop(tcp);
    // One connection to the origin for both (pooled), and what it saw.
    assert_eq!(echo.accepted(), 1);
    let seen = echo.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for headers in &seen {
        assert_eq!(headers["host"], format!("localhost:{}", echo.port));
        assert_eq!(headers["via"], via);
        for gone in ["proxy-authorization", "proxy-connection", "x-private"] {
            assert!(
                !headers.contains_key(gone),
                "{gone} reached the origin: {headers:?}"
            );
        }
    }
    assert_eq!(seen[0]["x-kept"], "2");
    assert_eq!(seen[0][":target"], "/up");
    let up = serve.record(|r| r["target"].as_str().unwrap().ends_with("/up"));
    assert_eq!(up["bytes_up"], body.len());
    assert_eq!(up["resolved"], format!("127.0.0.1:{}", echo.port));
    let down = serve.record(|r| r["target"].as_str().unwrap().contains("/big"));
    assert_eq!(down["bytes_down"], 2_000_000);
    assert_eq!(logged(&down), "allowed: checked", "{down}");
    // A client that leaves mid-response: logged as such, not as complete.
    let mut tcp = connect(serve.port);
    tcp.write_all(
        format!(
            "GET http://localhost:{}/big?n=50000000 HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
            echo.port, echo.port
        )
        .as_bytes(),
    )
    .unwrap();
    let head = read_head(&mut tcp);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.read_exact(&mut [0u8; 1000]).unwrap();
    drop(tcp);
    let left = serve.record(|r| r["target"].as_str().unwrap().contains("n=50000000"));
    assert!(
        logged(&left).starts_with("allowed: checked; the client left after "),
        "{left}"
    );
    assert!(left["bytes_down"].as_u64().unwrap() < 50_000_000, "{left}");
    assert_eq!(
        metric(
            &serve.metrics(),
            r#"egress_serve_requests_total{decision="allowed",reason="client_gone"}"#
        ),
        1
    );
}

/// The value of the metric line starting with `name` (0 when absent).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

fn read_head_buffered(reader: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "closed in a head: {head}"
        );
        head.push_str(&line);
        if line == "\r\n" {
            return head;
        }
    }
}

/// A body by Content-Length or chunked framing.
fn read_body(reader: &mut BufReader<TcpStream>, head: &str) -> Vec<u8> {
    if let Some(len) = header(head, "content-length") {
        let mut body = vec![0; len.parse().unwrap()];
        reader.read_exact(&mut body).unwrap();
        return body;
    }
    assert_eq!(header(head, "transfer-encoding"), Some("chunked"), "{head}");
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).unwrap();
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

#[test]
fn one_blocked_address_refuses_the_whole_name_and_the_denial_names_the_range() {
    let allowed = Echo::start("127.0.0.1");
    let blocked = Echo::on(StdListener::bind(("127.0.0.9", allowed.port)).unwrap());
    let (dns, _dnsmasq) = dnsmasq(
        "mixed",
        "127.0.0.1 ok.test\n127.0.0.1 mixed.test\n127.0.0.9 mixed.test\n",
    );
    let serve = Serve::start(
        "mixed",
        &allow(&["127.0.0.1/32"]),
        &[
            "--dns-server",
            &format!("127.0.0.1:{dns}"),
            "--deny-domain",
            "*.denied.test",
        ],
    );
    let started = Instant::now();
    let (head, _) = tunnel(
        serve.port,
        &format!(
            "CONNECT mixed.test:{} HTTP/1.1\r\nHost: mixed.test\r\n\r\n",
            allowed.port
        ),
    );
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(
        header(&head, "x-egress-denied"),
        Some("127.0.0.9 is in 127.0.0.0/8 of ip_range_blacklist (default)")
    );
    // Neither address was dialled.
    assert_eq!((allowed.accepted(), blocked.accepted()), (0, 0));
    let record = serve.record(|r| r["target"].as_str().unwrap().starts_with("mixed.test"));
    assert_eq!(record["decision"], "denied");
    assert_eq!(record["http.response.status_code"], 403);
    serve_row(
        "S01",
        "target name whose DNS answer holds one blocked address",
        "dnsmasq",
        status_of(&head),
        logged(&record),
        took,
    );

    let (head, _) = tunnel(
        serve.port,
        &format!("CONNECT ok.test:{} HTTP/1.1\r\n\r\n", allowed.port),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // IP literals are checked the same way, in every IPv6 spelling.
    for (target, range) in [
        ("10.1.2.3:443", "10.1.2.3 is in 10.0.0.0/8 of ip_range_blacklist (default)"),
        ("[::ffff:10.1.2.3]:443", "::ffff:10.1.2.3 is in 10.0.0.0/8 (as ::ffff:10.0.0.0/104) of ip_range_blacklist (default)"),
        ("[::1]:443", "::1 is in ::1/128 of ip_range_blacklist (default)"),
        ("0.0.0.0:443", "0.0.0.0 is in 0.0.0.0/32 of ip_range_blacklist (default)"),
    ] {
        let started = Instant::now();
        let (head, _) = tunnel(serve.port, &format!("CONNECT {target} HTTP/1.1\r\n\r\n"));
        let took = started.elapsed();
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
        assert_eq!(header(&head, "x-egress-denied"), Some(range), "{target}");
        if target == "[::ffff:10.1.2.3]:443" {
            serve_row(
                "S02",
                "CONNECT to a blocked IP literal (IPv4-mapped IPv6 spelling)",
                "client",
                status_of(&head),
                format!("denied: {range}"),
                took,
            );
        }
    }
    let started = Instant::now();
    let (head, _) = tunnel(serve.port, "CONNECT www.denied.test:443 HTTP/1.1\r\n\r\n");
    let took = started.elapsed();
    assert_eq!(
        header(&head, "x-egress-denied"),
        Some("www.denied.test matches *.denied.test of --deny-domain")
    );
    serve_row(
        "S03",
        "CONNECT to a name matching --deny-domain",
        "client",
        status_of(&head),
        "denied: www.denied.test matches *.denied.test of --deny-domain".to_owned(),
        took,
    );
    // DNS failure and connection refused: 502, each with its reason.
    let started = Instant::now();
    let (head, _) = tunnel(serve.port, "CONNECT nowhere.test:443 HTTP/1.1\r\n\r\n");
    let dns_took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let dns_status = status_of(&head);
    let closed = free_port();
    let started = Instant::now();
    let (head, _) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{closed} HTTP/1.1\r\n\r\n"),
    );
    let refused_took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let dns_fail = serve.record(|r| r["target"] == "nowhere.test:443");
    assert_eq!(dns_fail["decision"], "failed");
    assert!(
        dns_fail["reason"]
            .as_str()
            .unwrap()
            .contains("cannot resolve nowhere.test"),
        "{dns_fail}"
    );
    let refused = serve.record(|r| r["target"] == format!("127.0.0.1:{closed}"));
    assert_eq!(refused["decision"], "failed");
    serve_row(
        "S04",
        "DNS failure: the DNS server refuses the query",
        "dnsmasq (no upstream: it answers REFUSED)",
        dns_status,
        logged(&dns_fail),
        dns_took,
    );
    serve_row(
        "S05",
        "target refuses the connection",
        "closed port",
        status_of(&head),
        logged(&refused),
        refused_took,
    );
    let metrics = serve.metrics();
    assert!(
        metrics.contains(r#"egress_serve_requests_total{decision="denied",reason="ip_blocked"} 5"#),
        "{metrics}"
    );
    // The same fact by list, named as the library's egress_client_refusals_total.
    assert!(
        metrics.contains(r#"egress_serve_refusals_total{list="general"} 5"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"egress_serve_requests_total{decision="failed",reason="dns_failure"} 1"#),
        "{metrics}"
    );
}

/// A name with two addresses, the first refusing: a forwarded `http://`
/// request goes to the second, as a CONNECT does. It used to try only the
/// first and answer 502, so with `--dns-server` (hickory puts AAAA answers
/// first) a host without IPv6 could not forward to any dual-stack name.
#[test]
fn a_forwarded_request_tries_the_next_checked_address() {
    let echo = Echo::start("127.0.0.1");
    // ::1 first, where nothing listens on the echo's port.
    let (dns_port, _dnsmasq) = dnsmasq("two-addresses", "127.0.0.1 two.test\n::1 two.test\n");
    let serve = Serve::start(
        "next-address",
        &allow(&["127.0.0.1/32", "::1/128"]),
        &["--dns-server", &format!("127.0.0.1:{dns_port}")],
    );
    for round in 0..2 {
        let path = format!("/next-address-{round}");
        let (head, body) = get_through(&serve, &format!("http://two.test:{}{path}", echo.port));
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "{head}{body}\n{}",
            serve.stderr()
        );
        let record = serve.record(|r| r["target"].as_str().unwrap().ends_with(&path));
        assert_eq!(
            record["resolved"],
            format!("127.0.0.1:{}", echo.port),
            "{record}"
        );
    }
    let stderr = serve.stderr();
    assert!(
        stderr.contains(&format!("cannot connect to [::1]:{}", echo.port)),
        "the first address was tried first: {stderr}"
    );
    // The second request reused the pooled connection to the address that answered.
    assert_eq!(echo.accepted(), 1);
}

/// dnsmasq answering A records in a fixed order: `answers` as (name, its
/// addresses in answer order). dnsmasq rotates hosts-file answers from one
/// query to the next; `--address` answers keep one order, the reverse of the
/// command line's. Its port, and the process.
fn dnsmasq_in_order(name: &str, answers: &[(&str, &[&str])]) -> (u16, Child) {
    let dir = temp_dir(&format!("dnsmasq-{name}"));
    let port = free_port();
    let mut cmd = dnsmasq_command(&dir, port);
    for (host, addrs) in answers {
        for addr in addrs.iter().rev() {
            cmd.arg(format!("--address=/{host}/{addr}"));
        }
    }
    cmd.stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("out.log")).unwrap());
    let mut child = spawn(cmd);
    wait_for_port(&mut child, port, "dnsmasq", &dir.join("out.log"));
    (port, child)
}

/// An echo origin on 127.0.0.1 and, on its port, three addresses that drop
/// SYNs (127.0.0.2-4, support::DropsSyns), with dnsmasq answering
/// `two.test` with 127.0.0.2 then 127.0.0.1, `refused.test` with 127.0.0.5
/// (nothing listens there: refused) then 127.0.0.1, and `dead.test` with
/// the three dead addresses.
struct DeadFirst {
    echo: Echo,
    dns: u16,
    _dead: Vec<DropsSyns>,
    _dnsmasq: Child,
}

impl DeadFirst {
    fn start(name: &str) -> DeadFirst {
        let echo = Echo::start("127.0.0.1");
        let dead = (2..=4)
            .map(|i| DropsSyns::on(SocketAddr::from(([127, 0, 0, i], echo.port))))
            .collect();
        let (dns, dnsmasq) = dnsmasq_in_order(
            name,
            &[
                ("two.test", &["127.0.0.2", "127.0.0.1"]),
                ("refused.test", &["127.0.0.5", "127.0.0.1"]),
                ("dead.test", &["127.0.0.2", "127.0.0.3", "127.0.0.4"]),
            ],
        );
        DeadFirst {
            echo,
            dns,
            _dead: dead,
            _dnsmasq: dnsmasq,
        }
    }

    fn yaml(&self) -> String {
        allow(&["127.0.0.1/32", "127.0.0.2/31", "127.0.0.4/31"])
    }

    fn dns_server(&self) -> String {
        format!("127.0.0.1:{}", self.dns)
    }

    /// `ip:port` on the echo's port.
    fn at(&self, ip: &str) -> String {
        format!("{ip}:{}", self.echo.port)
    }
}

/// The line serve logs when the stagger (not a failure) starts the attempt
/// to `next` while the one to `waiting` still waits.
fn overtaken(waiting: &str, next: &str) -> String {
    format!("no connection to {waiting} within 250ms; trying {next} too")
}

/// A CONNECT through serve whose tunnel must reach the echo origin: the
/// head of serve's answer (once the tunnel has carried one exchange) and
/// the time to the head.
fn tunnel_to_echo(serve: &Serve, target: &str, path: &str) -> (String, Duration) {
    let started = Instant::now();
    let (head, mut tcp) = tunnel(
        serve.port,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
    );
    let took = started.elapsed();
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{head}\nserve:\n{}",
        serve.stderr()
    );
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    (head, took)
}

/// Every checked address is dialled, staggered as RFC 8305 says: an address
/// that drops SYNs costs 250 ms (the next attempt starts then), not the
/// connect limit, for a CONNECT and a forwarded request alike; with every
/// address dead, one limit bounds the whole race. serve used to give the
/// first address the whole limit: a 504 after 10 s.
#[test]
fn a_checked_address_that_drops_syns_costs_250_ms_not_the_connect_limit() {
    let d = DeadFirst::start("stagger");
    let serve = Serve::start(
        "stagger",
        &d.yaml(),
        &["--dns-server", &d.dns_server(), "--connect-timeout", "10s"],
    );
    let (dead, live) = (d.at("127.0.0.2"), d.at("127.0.0.1"));
    let target = format!("two.test:{}", d.echo.port);
    let (head, took) = tunnel_to_echo(&serve, &target, "/stagger-tunnel");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let record = serve.record(|r| r["target"] == target.as_str());
    assert_eq!(record["resolved"], live.as_str(), "{record}");
    assert_eq!(
        serve.stderr().matches(&overtaken(&dead, &live)).count(),
        1,
        "the dead address was dialled first:\n{}",
        serve.stderr()
    );
    serve_row(
        "S17",
        "CONNECT to a name with two addresses, the first drops SYNs (--connect-timeout 10s)",
        "dnsmasq + kernel (full accept queue)",
        status_of(&head),
        "tunnel to the second address, dialled 250 ms after the first; logged as `resolved`"
            .to_owned(),
        took,
    );

    let path = "/stagger-forwarded";
    let started = Instant::now();
    let (head, body) = get_through(&serve, &format!("http://{target}{path}"));
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let record = serve.record(|r| r["target"].as_str().unwrap().ends_with(path));
    assert_eq!(record["resolved"], live.as_str(), "{record}");
    assert_eq!(serve.stderr().matches(&overtaken(&dead, &live)).count(), 2);
    serve_row(
        "S18",
        "forwarded http:// request to a name with two addresses, the first drops SYNs (--connect-timeout 10s)",
        "dnsmasq + kernel (full accept queue)",
        status_of(&head),
        "forwarded to the second address, dialled 250 ms after the first; logged as `resolved`"
            .to_owned(),
        took,
    );

    // Every address dead: one 1 s limit for the race, not one per address.
    let short = Serve::start(
        "stagger-dead",
        &d.yaml(),
        &["--dns-server", &d.dns_server(), "--connect-timeout", "1s"],
    );
    let target = format!("dead.test:{}", d.echo.port);
    let started = Instant::now();
    let (head, _) = tunnel(short.port, &format!("CONNECT {target} HTTP/1.1\r\n\r\n"));
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1900),
        "{took:?}"
    );
    let record = short.record(|r| r["target"] == target.as_str());
    let reason = record["reason"].as_str().unwrap();
    let all = [d.at("127.0.0.2"), d.at("127.0.0.3"), d.at("127.0.0.4")].join(", ");
    assert_eq!(reason, format!("timed out after 1s connecting to {all}"));
    assert_eq!(record["resolved"], d.at("127.0.0.2").as_str(), "{record}");
    serve_row(
        "S21",
        "CONNECT to a name whose three addresses all drop SYNs (--connect-timeout 1s)",
        "dnsmasq + kernel (full accept queue)",
        status_of(&head),
        "failed: connect_timeout, after one limit for the whole race (all three dialled, 250 ms apart)"
            .to_owned(),
        took,
    );
}

/// Through a parent, each checked address is its own connection to the
/// parent and its own `CONNECT ip:port`, staggered the same way: one the
/// parent hangs on (real tinyproxy, connecting to an address that drops
/// SYNs) is overtaken after 250 ms; one the parent answers 503 for (real
/// squid, connection refused there) is followed by the next at once. serve
/// used to ask the parent for the first checked address only.
#[test]
fn through_a_parent_each_checked_address_is_its_own_connect() {
    let d = DeadFirst::start("parent-stagger");
    let dir = temp_dir("tinyproxy-stagger");
    let tiny_port = free_port();
    std::fs::write(
        dir.join("tinyproxy.conf"),
        format!(
            "Port {tiny_port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\nConnectPort {}\n",
            d.echo.port
        ),
    )
    .unwrap();
    let log = dir.join("out.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(require("tinyproxy"));
    cmd.arg("-d").arg("-c").arg(dir.join("tinyproxy.conf"));
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    let mut tinyproxy = spawn(cmd);
    wait_for_port(&mut tinyproxy, tiny_port, "tinyproxy", &log);
    let tiny = format!("http://127.0.0.1:{tiny_port}");
    let serve = Serve::start(
        "parent-stagger",
        &d.yaml(),
        &[
            "--dns-server",
            &d.dns_server(),
            "--connect-timeout",
            "10s",
            "--upstream",
            &tiny,
        ],
    );
    let (dead, live) = (d.at("127.0.0.2"), d.at("127.0.0.1"));
    let target = format!("two.test:{}", d.echo.port);
    let (head, took) = tunnel_to_echo(&serve, &target, "/parent-stagger");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let record = serve.record(|r| r["target"] == target.as_str());
    assert_eq!(record["resolved"], live.as_str(), "{record}");
    assert_eq!(record["egress.proxy"], tiny.as_str(), "{record}");
    assert!(
        serve.stderr().contains(&overtaken(&dead, &live)),
        "{}",
        serve.stderr()
    );
    let tiny_log = std::fs::read_to_string(&log).unwrap_or_default();
    for asked in [&dead, &live] {
        assert!(
            tiny_log.contains(&format!("CONNECT {asked} ")),
            "tinyproxy was not asked for {asked}:\n{tiny_log}"
        );
    }
    serve_row(
        "S19",
        "through a parent, the first checked address drops SYNs: the parent hangs on its CONNECT (--connect-timeout 10s)",
        "tinyproxy + dnsmasq + kernel (full accept queue)",
        status_of(&head),
        "a second connection to the parent, CONNECT to the second address 250 ms later; logged as `resolved`"
            .to_owned(),
        took,
    );

    let w = world();
    let squid = format!("http://127.0.0.1:{}", w.squid.open_port);
    let via_squid = Serve::start(
        "parent-refused",
        &d.yaml(),
        &[
            "--dns-server",
            &d.dns_server(),
            "--connect-timeout",
            "10s",
            "--upstream",
            &squid,
        ],
    );
    let target = format!("refused.test:{}", d.echo.port);
    let (head, took) = tunnel_to_echo(&via_squid, &target, "/parent-refused");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let record = via_squid.record(|r| r["target"] == target.as_str());
    assert_eq!(record["resolved"], live.as_str(), "{record}");
    let refused = d.at("127.0.0.5");
    let lines = w.squid.log_lines(&format!("CONNECT {refused} "), 1);
    assert!(
        lines.iter().any(|l| l.contains("/503 ")),
        "squid's answer for {refused}: {lines:?}"
    );
    assert!(
        via_squid
            .stderr()
            .contains(&format!("could not reach {refused}")),
        "{}",
        via_squid.stderr()
    );
    serve_row(
        "S20",
        "through a parent, the parent answers 503 for the first checked address (connection refused there)",
        "squid + dnsmasq",
        status_of(&head),
        "CONNECT to the second address at once, on a new connection to the parent; logged as `resolved`"
            .to_owned(),
        took,
    );

    // Every address dead: one 1 s limit for the race through the parent too.
    let short = Serve::start(
        "parent-dead",
        &d.yaml(),
        &[
            "--dns-server",
            &d.dns_server(),
            "--connect-timeout",
            "1s",
            "--upstream",
            &tiny,
        ],
    );
    let target = format!("dead.test:{}", d.echo.port);
    let started = Instant::now();
    let (head, _) = tunnel(short.port, &format!("CONNECT {target} HTTP/1.1\r\n\r\n"));
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1900),
        "{took:?}"
    );
    let record = short.record(|r| r["target"] == target.as_str());
    let all = [d.at("127.0.0.2"), d.at("127.0.0.3"), d.at("127.0.0.4")].join(", ");
    assert_eq!(
        record["reason"].as_str().unwrap(),
        format!("timed out after 1s connecting to {all} through proxy {tiny}")
    );
    serve_row(
        "S22",
        "through a parent, all three checked addresses drop SYNs (--connect-timeout 1s)",
        "tinyproxy + dnsmasq + kernel (full accept queue)",
        status_of(&head),
        "failed: connect_timeout, after one limit for the whole race (three CONNECTs, 250 ms apart)"
            .to_owned(),
        took,
    );
    stop_server(tinyproxy);
}

/// The fake for a keep-alive race no real server makes on demand: on its
/// first connection it answers one request (keep-alive), then reads the next
/// and closes without answering, as a server does that closes an idle
/// connection just as the proxy reuses it. Later connections are answered
/// (`again`) and closed. Counts the connections.
fn closes_the_reused_connection() -> (u16, Arc<AtomicUsize>) {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let n = count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(WAIT)).unwrap();
                let mut reader = BufReader::new(tcp);
                let _ = read_head_buffered(&mut reader);
                let tcp = reader.get_mut();
                if n == 0 {
                    let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst");
                    let _ = read_head_buffered(&mut reader);
                } else {
                    let _ = tcp.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nagain",
                    );
                }
            });
        }
    });
    (port, accepted)
}

#[test]
fn a_get_whose_reused_connection_closes_unanswered_is_sent_again_and_a_post_is_not() {
    let serve = Serve::start("reused-closes", &allow(&["127.0.0.1/32"]), &[]);
    // GET: the second goes out on the pooled connection, which the origin
    // closes unanswered; serve sends it again on a new one.
    let (port, accepted) = closes_the_reused_connection();
    let url = format!("http://127.0.0.1:{port}");
    let (head, body) = get_through(&serve, &format!("{url}/one"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    assert_eq!(body, "first");
    std::thread::sleep(Duration::from_millis(200)); // back in the pool
    let (head, body) = get_through(&serve, &format!("{url}/two"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "{head}{body}\n{}",
        serve.stderr()
    );
    assert_eq!(body, "again");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let record = serve.record(|r| r["target"].as_str().unwrap().ends_with("/two"));
    assert_eq!(logged(&record), "allowed: checked", "{record}");
    // POST: not idempotent, so not sent again: a 502 that says why.
    let (port, accepted) = closes_the_reused_connection();
    let url = format!("http://127.0.0.1:{port}");
    let (head, _) = get_through(&serve, &format!("{url}/one"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    std::thread::sleep(Duration::from_millis(200));
    let (head, body) = raw(
        serve.port,
        &format!(
            "POST {url}/post HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
        ),
    );
    assert!(head.starts_with("HTTP/1.1 502"), "{head}{body}");
    assert!(body.contains("closed or broke the exchange"), "{body}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn dns_rebinding_cannot_switch_the_address_after_the_check() {
    // The name answers 127.0.0.1 (allowed) once, then 127.0.0.10 (blocked),
    // where another origin listens on the same port.
    let allowed = Echo::start("127.0.0.1");
    let rebound = Echo::on(StdListener::bind(("127.0.0.10", allowed.port)).unwrap());
    let dns = FakeDns::start([127, 0, 0, 1], [127, 0, 0, 10]);
    let serve = Serve::start(
        "rebind",
        &allow(&["127.0.0.1/32"]),
        &["--dns-server", &format!("127.0.0.1:{}", dns.port)],
    );
    let (head, mut tcp) = tunnel(
        serve.port,
        &format!("CONNECT rebind.test:{} HTTP/1.1\r\n\r\n", allowed.port),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.write_all(b"GET /r HTTP/1.1\r\nHost: rebind.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // One question, one dial, to the address that was checked.
    assert_eq!(dns.a_queries.load(Ordering::SeqCst), 1);
    assert_eq!((allowed.accepted(), rebound.accepted()), (1, 0));
    // The next answer is the blocked one: refused, and still never dialled.
    let started = Instant::now();
    let (head, _) = tunnel(
        serve.port,
        &format!("CONNECT rebind.test:{} HTTP/1.1\r\n\r\n", allowed.port),
    );
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(
        header(&head, "x-egress-denied"),
        Some("127.0.0.10 is in 127.0.0.0/8 of ip_range_blacklist (default)")
    );
    assert_eq!((allowed.accepted(), rebound.accepted()), (1, 0));
    serve_row(
        "S06",
        "DNS rebinding: the name's next answer (TTL 0) is a blocked address",
        "fake DNS server",
        status_of(&head),
        "denied; one query and one dial per request, to the checked address only".to_owned(),
        took,
    );
}

#[test]
fn chaining_asks_squid_for_the_checked_address_never_the_name() {
    let w = world();
    let serve = Serve::start(
        "chain",
        &allow(&["127.0.0.1/32"]),
        &[
            "--upstream",
            &format!("http://127.0.0.1:{}", w.squid.open_port),
        ],
    );
    let marker = "/chained-through-squid";
    let out = run_egress(
        BIN,
        "fetch",
        &[("https_proxy", &serve.proxy())],
        &[&w.https_origin.url("localhost", marker)],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        serve.stderr()
    );
    let connect = format!("CONNECT 127.0.0.1:{} ", w.https_origin.port);
    assert_eq!(
        w.squid.requests(&connect).len(),
        1,
        "{:?}",
        w.squid.requests("CONNECT")
    );
    assert!(w
        .squid
        .requests(&format!("localhost:{}", w.https_origin.port))
        .is_empty());
    let record = serve.record(|r| r["target"] == format!("localhost:{}", w.https_origin.port));
    assert_eq!(
        record["egress.proxy"],
        format!("http://127.0.0.1:{}", w.squid.open_port)
    );

    // Forwarded http://: squid gets the address in the URL, the origin the original Host.
    let (head, body) = get_through(&serve, &w.http_origin.url("localhost", "/chained-forward"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    assert_eq!(body, "origin http /chained-forward");
    assert_eq!(
        w.squid
            .requests(&format!(
                "GET http://127.0.0.1:{}/chained-forward",
                w.http_origin.port
            ))
            .len(),
        1
    );
    // serve sent the original Host with it; squid, as RFC 9112 §3.2.2 asks of
    // a proxy given an absolute-form target, replaced it from the URL.
    let cache_log = std::fs::read_to_string(w.squid_dir().join("cache.log")).unwrap();
    let request = cache_log
        .split("HTTP Client REQUEST:")
        .find(|block| {
            block.contains(&format!(
                "GET http://127.0.0.1:{}/chained-forward",
                w.http_origin.port
            ))
        })
        .expect("squid logged the request");
    assert!(
        request
            .to_ascii_lowercase()
            .contains(&format!("host: localhost:{}", w.http_origin.port)),
        "{request}"
    );
    let seen = w.http_origin.seen("/chained-forward");
    assert!(
        seen[0].headers["via"].contains("egress"),
        "{:?}",
        seen[0].headers
    );

    // Blocked targets never reach squid; squid's own address is exempt, its range is not.
    for target in ["10.9.9.9:443", "127.0.0.2:443"] {
        let (head, _) = tunnel(serve.port, &format!("CONNECT {target} HTTP/1.1\r\n\r\n"));
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
        assert!(
            w.squid.requests(target).is_empty(),
            "{target} reached squid"
        );
    }
}

#[test]
fn a_parent_that_wants_credentials_is_a_502_that_says_so() {
    let w = world();
    let echo = Echo::start("127.0.0.1");
    let serve = Serve::start(
        "chain-auth",
        &allow(&["127.0.0.1/32"]),
        &[
            "--upstream",
            &format!("http://{USER}:wrong@127.0.0.1:{}", w.squid.auth_port),
        ],
    );
    let started = Instant::now();
    let (head, tcp) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", echo.port),
    );
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // The body by its length: serve keeps the connection open for another request.
    let body = read_body(&mut BufReader::new(tcp), &head);
    let body = String::from_utf8_lossy(&body).into_owned();
    assert!(body.contains("407"), "{body}");
    serve_row(
        "S07",
        "parent proxy (--upstream) answers 407",
        "squid",
        status_of(&head),
        format!("failed: {}", body.trim()),
        took,
    );
    assert!(
        !body.contains("wrong") && !serve.stderr().contains("wrong"),
        "password shown: {body}"
    );
}

/// A parent proxy that sends serve's requests back to serve: real tinyproxy
/// with serve as its `Upstream`. serve names itself in `Via` (tinyproxy
/// passes `Via` on, for CONNECT too) and refuses what comes back with its own
/// name: one extra hop, then 508, instead of hops until the parent is full.
#[test]
fn a_forwarding_loop_through_a_parent_is_refused_on_its_first_return() {
    let echo = Echo::start("127.0.0.1");
    let serve_port = free_port();
    let dir = temp_dir("tinyproxy-loop");
    let tiny_port = free_port();
    std::fs::write(
        dir.join("tinyproxy.conf"),
        format!(
            "Port {tiny_port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\n\
             ConnectPort {}\nUpstream http 127.0.0.1:{serve_port}\n",
            echo.port
        ),
    )
    .unwrap();
    let log = dir.join("out.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(require("tinyproxy"));
    cmd.arg("-d").arg("-c").arg(dir.join("tinyproxy.conf"));
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    let mut tinyproxy = spawn(cmd);
    wait_for_port(&mut tinyproxy, tiny_port, "tinyproxy", &log);
    let serve = Serve::start_on(
        "loop",
        &allow(&["127.0.0.1/32"]),
        &["--upstream", &format!("http://127.0.0.1:{tiny_port}")],
        serve_port,
    );
    let name = serve.via_name();
    let tinyproxy_requests = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Request (file descriptor")
            .count()
    };

    // CONNECT: serve -> tinyproxy -> serve, which refuses; the client gets a
    // 502 naming the parent's 508.
    let started = Instant::now();
    let (head, tcp) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", echo.port),
    );
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    let body = String::from_utf8_lossy(&read_body(&mut BufReader::new(tcp), &head)).into_owned();
    assert!(body.contains("508 Loop Detected"), "{body}");
    let refused = serve.record(|r| r["http.response.status_code"] == 508);
    assert_eq!(refused["http.request.method"], "CONNECT");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("forwarding loop") && reason.contains(&name),
        "{reason}"
    );
    assert_eq!(tinyproxy_requests(), 1, "one hop through the parent");
    serve_row(
        "S16",
        "parent proxy sends the tunnel back to serve (forwarding loop)",
        "tinyproxy (Upstream: serve)",
        status_of(&head),
        format!(
            "failed: {}; the returning CONNECT logged `denied: forwarding loop`",
            body.trim()
        ),
        took,
    );

    // A forwarded request: the same, and the 508 itself comes back.
    let (head, body) = get_through(&serve, &format!("http://127.0.0.1:{}/looped", echo.port));
    assert!(head.starts_with("HTTP/1.1 508"), "{head}{body}");
    assert_eq!(tinyproxy_requests(), 2);
    assert_eq!(echo.accepted(), 0, "the origin was never reached");
    let metrics = serve.metrics();
    assert!(
        metrics.contains(r#"egress_serve_requests_total{decision="denied",reason="loop"} 2"#),
        "{metrics}"
    );
}

#[test]
fn client_credentials_from_htpasswd() {
    let echo = Echo::start("127.0.0.1");
    let dir = temp_dir("htpasswd-file");
    let hash = Command::new("openssl")
        .args(["passwd", "-apr1", "pr0xy-pw"])
        .output()
        .unwrap();
    std::fs::write(
        dir.join("htpasswd"),
        format!("synapse:{}", String::from_utf8_lossy(&hash.stdout)),
    )
    .unwrap();
    let serve = Serve::start(
        "htpasswd",
        &allow(&["127.0.0.1/32"]),
        &["--htpasswd", dir.join("htpasswd").to_str().unwrap()],
    );
    let url = format!("http://127.0.0.1:{}/authed", echo.port);
    let basic = |user_pass: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    };
    let (head, _) = raw(
        serve.port,
        &format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert_eq!(
        header(&head, "proxy-authenticate"),
        Some("Basic realm=\"egress\"")
    );
    let (head, _) = raw(serve.port, &format!("GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {}\r\nConnection: close\r\n\r\n", basic("synapse:nope")));
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    let (head, body) = raw(serve.port, &format!("GET {url} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {}\r\nConnection: close\r\n\r\n", basic("synapse:pr0xy-pw")));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}{body}");
    let (head, _) = tunnel(
        serve.port,
        &format!(
            "CONNECT 127.0.0.1:{} HTTP/1.0\r\nProxy-Authorization: Basic {}\r\n\r\n",
            echo.port,
            basic("synapse:pr0xy-pw")
        ),
    );
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    // Only the authenticated forward reached the origin, without the credentials.
    let seen = echo.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].contains_key("proxy-authorization"));
    assert!(
        !serve.stderr().contains("pr0xy-pw")
            && !std::fs::read_to_string(serve.dir.join("log.jsonl"))
                .unwrap()
                .contains("pr0xy-pw")
    );
}

#[test]
fn check_validates_and_refuses_an_open_proxy() {
    let dir = temp_dir("serve-check");
    std::fs::write(
        dir.join("hs.yaml"),
        "ip_range_blacklist: ['10.0.0.0/8']\nip_range_whitelist: ['10.1.0.0/16']\n",
    )
    .unwrap();
    let yaml = dir.join("hs.yaml");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .env_clear()
            .arg("serve")
            .arg("--config")
            .arg(&yaml)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = run(&["--check"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("blocklist ip_range_blacklist (1 ranges, plus 0.0.0.0 and ::): 10.0.0.0/8"),
        "{text}"
    );
    assert!(
        text.contains("allowed through the blocklist: 10.1.0.0/16"),
        "{text}"
    );
    let (code, text) = run(&["--check", "--listen", "0.0.0.0:3128"]);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("--listen 0.0.0.0:3128 is not a loopback address")
            && text.contains("hint: add --htpasswd"),
        "{text}"
    );
    assert_eq!(
        run(&["--check", "--listen", "0.0.0.0:3128", "--allow-open"]).0,
        Some(0)
    );
    // A parent that is serve itself (serve's env carrying the homeserver's proxy).
    let out = Command::new(BIN)
        .env_clear()
        .env("https_proxy", "http://127.0.0.1:3128")
        .args(["serve", "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("is this server's own listener 127.0.0.1:3128"));
    // Spelled as a name or a short form, it is still serve; --direct ignores it.
    for spelling in ["http://localhost:3128", "http://127.1:3128"] {
        let check = |extra: &[&str]| {
            Command::new(BIN)
                .env_clear()
                .env("https_proxy", spelling)
                .args(["serve", "--check"])
                .args(extra)
                .output()
                .unwrap()
        };
        assert_eq!(check(&[]).status.code(), Some(78), "{spelling}");
        let out = check(&["--direct"]);
        assert_eq!(out.status.code(), Some(0), "{spelling}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("parent proxy: none (--direct)"));
    }
    let (code, text) = run(&["--check", "--upstream", "socks5://u:secretpw@h:1"]);
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("--upstream") && !text.contains("secretpw"),
        "{text}"
    );
    let (code, text) = run(&["--check", "--listen", "127.0.0.1:1=preview"]);
    assert_eq!(code, Some(2), "{text}");
}

/// A homeserver.yaml serve's user cannot read (Debian's Synapse packages
/// make it 0640, group matrix-synapse; the unit runs serve as a dynamic
/// user): exit 78, the file and the OS error named, and the systemd fix as
/// the hint. Run as `nobody`, so it needs root (CI runs as root).
#[test]
fn an_unreadable_homeserver_yaml_names_the_file_and_hints_at_the_group() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running the binary as nobody needs root");
        return;
    }
    let dir = temp_dir("serve-unreadable");
    let yaml = dir.join("homeserver.yaml");
    std::fs::write(&yaml, "ip_range_blacklist: ['10.0.0.0/8']\n").unwrap();
    std::fs::set_permissions(&yaml, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .args(["serve", "--check", "--config"])
        .arg(&yaml)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains(&format!("cannot read {}", yaml.display()))
            && text.contains("Permission denied"),
        "{text}"
    );
    assert!(
        text.contains("hint: egress-serve.service runs as a dynamic user")
            && text.contains("SupplementaryGroups=matrix-synapse"),
        "{text}"
    );
    // Readable, the same command passes: the hint is about the permission.
    std::fs::set_permissions(&yaml, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .args(["serve", "--check", "--config"])
        .arg(&yaml)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A listener whose accept queue is full: Linux drops further SYNs, so a
/// connect attempt hangs until the connect limit.
fn unanswered_port() -> (u16, Vec<TcpStream>, socket_listener::Listener) {
    let listener = socket_listener::Listener::with_backlog(1);
    let port = listener.port;
    let mut queued = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&loopback(port), Duration::from_millis(300)) {
            Ok(tcp) => queued.push(tcp),
            Err(_) => return (port, queued, listener),
        }
    }
    panic!("the accept queue of 127.0.0.1:{port} never filled up");
}

mod socket_listener {
    /// A bound, listening socket with a given backlog that never accepts.
    pub struct Listener {
        pub port: u16,
        _socket: tokio::net::TcpListener,
    }

    impl Listener {
        pub fn with_backlog(backlog: u32) -> Listener {
            let _guard = super::runtime().enter();
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let listener = socket.listen(backlog).unwrap();
            Listener {
                port: listener.local_addr().unwrap().port(),
                _socket: listener,
            }
        }
    }
}

#[test]
fn limits_timeouts_and_sizes() {
    let echo = Echo::start("127.0.0.1");
    let mut serve = Serve::start(
        "limits",
        &allow(&["127.0.0.1/32"]),
        &[
            "--max-tunnels-per-client",
            "2",
            "--connect-timeout",
            "700ms",
            "--head-timeout",
            "1s",
            "--idle-timeout",
            "1s",
            "--max-response-bytes",
            "100000",
        ],
    );
    let open = |port: u16| {
        tunnel(
            serve.port,
            &format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
        )
    };
    // Two tunnels per client; the third is a 429 with Retry-After; one closes, room again.
    let (h1, t1) = open(echo.port);
    let (h2, t2) = open(echo.port);
    assert!(
        h1.starts_with("HTTP/1.1 200") && h2.starts_with("HTTP/1.1 200"),
        "{h1}{h2}"
    );
    let started = Instant::now();
    let (h3, _) = open(echo.port);
    let took = started.elapsed();
    assert!(h3.starts_with("HTTP/1.1 429"), "{h3}");
    assert_eq!(header(&h3, "retry-after"), Some("1"));
    serve_row(
        "S08",
        "a client opens more tunnels than --max-tunnels-per-client (2)",
        "client",
        status_of(&h3),
        "denied: limit, with Retry-After: 1".to_owned(),
        took,
    );
    drop((t1, t2));
    // Slots come back as serve sees the tunnels close.
    let open_when_free = |port: u16| {
        let deadline = Instant::now() + WAIT;
        loop {
            let (head, tcp) = open(port);
            if !head.starts_with("HTTP/1.1 429") {
                return (head, tcp);
            }
            assert!(
                Instant::now() < deadline,
                "the closed tunnels' slots never came back"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // An idle tunnel is closed by serve after --idle-timeout.
    let (head, mut idle) = open_when_free(echo.port);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let started = Instant::now();
    let mut buf = [0u8; 1];
    assert_eq!(
        idle.read(&mut buf).unwrap(),
        0,
        "serve closes the idle tunnel"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    serve_row(
        "S09",
        "an open tunnel moves nothing (--idle-timeout 1s)",
        "client",
        status_of(&head),
        "tunnel closed by serve after the idle limit".to_owned(),
        took,
    );

    // A target that drops SYNs: 504 after the connect limit.
    let (port, _queued, _listener) = unanswered_port();
    let started = Instant::now();
    let (head, _) = open_when_free(port);
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    serve_row(
        "S10",
        "target drops SYNs (--connect-timeout 700ms)",
        "kernel (full accept queue)",
        status_of(&head),
        "failed: connect_timeout".to_owned(),
        took,
    );

    // A slow head is dropped after --head-timeout, a huge one at once.
    let mut slow = connect(serve.port);
    slow.write_all(b"CONNECT 127.0.0.1:").unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "slow head held {took:?}");
    let rest = String::from_utf8_lossy(&rest).into_owned();
    serve_row(
        "S11",
        "slow client: the request head is never finished (--head-timeout 1s)",
        "client",
        status_of(&rest),
        "connection closed after the head limit".to_owned(),
        took,
    );
    let mut huge = connect(serve.port);
    let mut request = format!("GET http://127.0.0.1:{}/ HTTP/1.1\r\n", echo.port);
    for i in 0..2000 {
        request.push_str(&format!("X-Filler-{i}: {}\r\n", "f".repeat(30)));
    }
    request.push_str("\r\n");
    let started = Instant::now();
    let _ = huge.write_all(request.as_bytes());
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    let took = started.elapsed();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    serve_row(
        "S12",
        "huge request head (2000 header lines, about 90 KiB)",
        "client",
        status_of(&answer),
        "refused before any connection to the origin".to_owned(),
        took,
    );
    assert!(
        echo.seen.lock().unwrap().is_empty(),
        "the huge head reached the origin"
    );

    // Forwarded responses: over the limit by Content-Length is a 502; a
    // streamed one is cut.
    let mut tcp = connect(serve.port);
    tcp.write_all(
        format!(
            "GET http://127.0.0.1:{}/big?n=50000 HTTP/1.1\r\nHost: x\r\n\r\n",
            echo.port
        )
        .as_bytes(),
    )
    .unwrap();
    let mut reader = BufReader::new(tcp);
    let head = read_head_buffered(&mut reader);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body(&mut reader, &head).len(), 50_000);
    let started = Instant::now();
    let (head, body) = get_through(
        &serve,
        &format!("http://127.0.0.1:{}/big?n=300000", echo.port),
    );
    let took = started.elapsed();
    // The echo origin streams /big without a Content-Length: serve cuts it.
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.len() < 300_000, "{} bytes came through", body.len());
    let cut = serve.record(|r| r["target"].as_str().unwrap().ends_with("n=300000"));
    assert!(
        cut["reason"]
            .as_str()
            .unwrap()
            .contains("--max-response-bytes 100000"),
        "{cut}"
    );
    serve_row(
        "S13",
        "forwarded response larger than --max-response-bytes (300000 > 100000, streamed)",
        "test origin",
        status_of(&head),
        format!("cut after {} bytes; logged `{}`", body.len(), logged(&cut)),
        took,
    );

    let metrics = serve.metrics();
    assert!(
        metric(
            &metrics,
            r#"egress_serve_requests_total{decision="denied",reason="limit"}"#
        ) >= 1,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"egress_serve_requests_total{decision="failed",reason="connect_timeout"}"#
        ),
        1,
        "{metrics}"
    );
    serve.signal(libc::SIGTERM);
    assert!(serve.wait_exit(Duration::from_secs(10)).success());
}

/// A client that sends its first bytes with the CONNECT (in one write,
/// before the 200) has them counted up, whether the far end is a plain
/// socket (direct) or TLS to an https:// parent (stunnel in front of squid).
#[test]
fn bytes_sent_with_the_connect_count_up_direct_and_through_an_https_parent() {
    let w = world();
    let echo = Echo::start("127.0.0.1");
    let direct = Serve::start("early-direct", &allow(&["127.0.0.1/32"]), &[]);
    let parent = format!("https://127.0.0.1:{}", w.tls_squid_open.port);
    let chained = Serve::start_env(
        "early-parent",
        &allow(&["127.0.0.1/32"]),
        &["--upstream", &parent],
        &[("SSL_CERT_FILE", w.ca.pem_path.to_str().unwrap())],
    );
    let body = "pipelined";
    let request = format!(
        "POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    for (serve, upstream) in [(&direct, None), (&chained, Some(parent.as_str()))] {
        let mut tcp = connect(serve.port);
        tcp.write_all(
            format!(
                "CONNECT 127.0.0.1:{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n{request}",
                echo.port, echo.port
            )
            .as_bytes(),
        )
        .unwrap();
        let head = read_head(&mut tcp);
        assert!(head.starts_with("HTTP/1.1 200"), "{upstream:?}: {head}");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with(body),
            "{upstream:?}: {answer}"
        );
        drop(tcp);
        let record = serve.record(|r| r["target"] == format!("127.0.0.1:{}", echo.port));
        assert_eq!(record["egress.proxy"].as_str(), upstream, "{record}");
        assert_eq!(
            record["bytes_up"].as_u64().unwrap(),
            request.len() as u64,
            "{upstream:?}: {record}"
        );
        assert_eq!(
            record["bytes_down"].as_u64().unwrap(),
            answer.len() as u64,
            "{upstream:?}: {record}"
        );
    }
}

#[test]
fn faults_in_a_tunnel_end_it_cleanly() {
    let echo = Echo::start("127.0.0.1");
    // An origin that resets every connection after its first bytes arrive.
    let reset = StdListener::bind("127.0.0.1:0").unwrap();
    let reset_port = reset.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in reset.incoming() {
            let Ok(mut tcp) = tcp else { return };
            let mut buf = [0u8; 16];
            let _ = tcp.read(&mut buf);
            // SO_LINGER 0: close sends RST.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on a socket this thread owns.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&tcp),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as u32,
                );
            }
        }
    });
    let serve = Serve::start("faults", &allow(&["127.0.0.1/32"]), &[]);
    // Client gone mid-tunnel: serve ends the tunnel and logs it.
    let (head, mut tcp) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", echo.port),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tcp.write_all(b"POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial")
        .unwrap();
    let started = Instant::now();
    drop(tcp);
    let gone = serve.record(|r| r["target"] == format!("127.0.0.1:{}", echo.port));
    let took = started.elapsed();
    assert_eq!(gone["bytes_up"].as_u64().unwrap(), 61, "{gone}");
    serve_row(
        "S14",
        "client gone mid-tunnel (mid-request body)",
        "client",
        status_of(&head),
        format!("tunnel ended and logged ({} bytes up)", gone["bytes_up"]),
        took,
    );
    // Origin reset: the client's side ends too, and serve logs it.
    let (head, mut tcp) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{reset_port} HTTP/1.1\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let started = Instant::now();
    tcp.write_all(b"hello").unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    let took = started.elapsed();
    let record = serve.record(|r| r["target"] == format!("127.0.0.1:{reset_port}"));
    assert!(
        record["reason"]
            .as_str()
            .unwrap()
            .starts_with("checked; tunnel"),
        "{record}"
    );
    serve_row(
        "S15",
        "origin resets the connection mid-tunnel",
        "fake origin",
        status_of(&head),
        format!("client's side closed; logged `{}`", logged(&record)),
        took,
    );
    // Nothing stays open.
    let deadline = Instant::now() + WAIT;
    while !serve.metrics().contains("egress_serve_active_tunnels 0") {
        assert!(Instant::now() < deadline, "{}", serve.metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reloads_during_traffic_without_failing_a_request() {
    let echo = Echo::start("127.0.0.1");
    let other = Echo::start("127.0.0.3");
    let serve = Serve::start("reload", &allow(&["127.0.0.1/32", "127.0.0.3/32"]), &[]);
    let (head, mut held) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", echo.port),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = serve.port;
    let load: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let url = format!("http://127.0.0.1:{}/load", echo.port);
            std::thread::spawn(move || {
                let mut done = 0;
                while !stop.load(Ordering::SeqCst) {
                    let (head, body) = raw(
                        port,
                        &format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                    );
                    assert!(
                        head.starts_with("HTTP/1.1 200"),
                        "a request failed during reloads: {head}{body}"
                    );
                    done += 1;
                }
                done
            })
        })
        .collect();
    let reloads = 5;
    for i in 0..reloads {
        // The last reload drops 127.0.0.3 from the allowlist.
        let yaml = if i + 1 == reloads {
            allow(&["127.0.0.1/32"])
        } else {
            allow(&["127.0.0.1/32", "127.0.0.3/32"])
        };
        std::fs::write(serve.dir.join("homeserver.yaml"), yaml).unwrap();
        serve.signal(libc::SIGHUP);
        let deadline = Instant::now() + WAIT;
        while !serve
            .metrics()
            .contains(&format!("egress_serve_reloads_total {}", i + 1))
        {
            assert!(
                Instant::now() < deadline,
                "reload {} not seen: {}",
                i + 1,
                serve.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let done: usize = load.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(done > 0);
    // The tunnel opened before the reloads still works.
    held.write_all(b"GET /still HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    held.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The new list applies to new requests.
    let (head, _) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.3:{} HTTP/1.1\r\n\r\n", other.port),
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    // A broken file keeps the previous policy, and says why.
    std::fs::write(
        serve.dir.join("homeserver.yaml"),
        "ip_range_whitelist: [not-a-range]\n",
    )
    .unwrap();
    serve.signal(libc::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while !serve
        .stderr()
        .contains("reload failed, the previous policy stays")
    {
        assert!(Instant::now() < deadline, "{}", serve.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (head, _) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", echo.port),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn sigterm_stops_accepting_and_drains() {
    let echo = Echo::start("127.0.0.1");
    let mut serve = Serve::start(
        "drain",
        &allow(&["127.0.0.1/32"]),
        &["--drain-timeout", "20s"],
    );
    let (head, mut held) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", echo.port),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serve.signal(libc::SIGTERM);
    // New connections are refused once the listener is closed.
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", serve.port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The open tunnel still works, and serve exits when it closes.
    held.write_all(b"GET /drained HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    held.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
    let started = Instant::now();
    assert!(serve.wait_exit(Duration::from_secs(5)).success());
    assert!(started.elapsed() < Duration::from_secs(5));

    // With a tunnel that stays open, the drain limit ends it.
    let mut serve = Serve::start(
        "drain-limit",
        &allow(&["127.0.0.1/32"]),
        &["--drain-timeout", "1s"],
    );
    let (_, _held) = tunnel(
        serve.port,
        &format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", echo.port),
    );
    serve.signal(libc::SIGTERM);
    let started = Instant::now();
    assert!(serve.wait_exit(Duration::from_secs(6)).success());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        serve.stderr().contains("closed at the drain limit"),
        "{}",
        serve.stderr()
    );
}

#[test]
fn a_request_log_nobody_reads_does_not_stop_the_proxy() {
    // stdout is a pipe the test does not read: 64 KiB of log lines fill it.
    // Requests must still be answered; the lines wait in serve and arrive,
    // all of them, once the pipe is read.
    let (serve, stdout) = Serve::start_piped("stuck-log", "", &[]);
    const N: usize = 1500;
    let started = Instant::now();
    for i in 0..N {
        let (head, _tcp) = tunnel(
            serve.port,
            &format!("CONNECT 10.0.{}.{}:443 HTTP/1.1\r\n\r\n", i / 250, i % 250),
        );
        assert!(head.starts_with("HTTP/1.1 403"), "request {i}: {head}");
    }
    let elapsed = started.elapsed();
    assert!(elapsed < WAIT, "{N} denials took {elapsed:?}");
    // Every line arrives once the pipe is read (on a thread: a read with
    // no end would hang the test).
    let (sent, got) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = 0;
        for (n, line) in BufReader::new(stdout).lines().enumerate() {
            let line = line.unwrap();
            bytes += line.len() + 1;
            let record: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(record["decision"], "denied", "{record}");
            if n + 1 == N {
                break;
            }
        }
        sent.send(bytes).unwrap();
    });
    let bytes = got
        .recv_timeout(WAIT)
        .expect("all the log lines within 10 s");
    // More than a pipe holds (64 KiB): serve was really held up by it.
    assert!(bytes > 4 * 65_536, "{bytes} bytes of log");
    // Held up, not over its limit: no line was dropped, and the metric says so.
    assert!(
        serve
            .metrics()
            .contains("egress_serve_log_lines_dropped_total 0\n"),
        "{}",
        serve.metrics()
    );
}

/// serve trims its memory every `--memory-trim-interval`, counts it and
/// reports the RSS it read right after, and `/metrics` reports the
/// allocator's bytes in use: below the RSS, higher while 300 tunnels are open
/// than once they have closed.
#[test]
fn serve_trims_its_memory_and_reports_its_heap_in_use() {
    let echo = Echo::start("127.0.0.1");
    let serve = Serve::start(
        "trim",
        &allow(&["127.0.0.1/32"]),
        &["--memory-trim-interval", "1"],
    );
    let pid = serve.child.as_ref().unwrap().id();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap();
        kib * 1024
    };
    let heap = |text: &str| metric(text, "egress_serve_heap_in_use_bytes ");
    let trims = |text: &str| metric(text, "egress_serve_memory_trims_total ");

    // A trim a second: the counter moves within a few.
    let first = trims(&serve.metrics());
    let deadline = Instant::now() + WAIT;
    while trims(&serve.metrics()) < first + 2 {
        assert!(Instant::now() < deadline, "no trims in {WAIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let text = serve.metrics();
    let idle = heap(&text);
    assert!(idle > 0 && idle < rss(), "heap {idle}, RSS {}", rss());
    // What serve read right after its last trim: its code and its heap.
    let trimmed = metric(&text, "egress_serve_memory_trimmed_rss_bytes ");
    assert!(
        trimmed > idle && trimmed < 4 * rss(),
        "RSS after the trim {trimmed}, heap {idle}, RSS now {}",
        rss()
    );
    let target = format!("127.0.0.1:{}", echo.port);
    let open: Vec<TcpStream> = (0..300)
        .map(|_| {
            let (head, tcp) = tunnel(
                serve.port,
                &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"),
            );
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            tcp
        })
        .collect();
    let busy = heap(&serve.metrics());
    assert!(
        busy > idle + 300 * 1024,
        "heap in use {idle} at idle, {busy} with 300 tunnels open"
    );
    drop(open);
    let deadline = Instant::now() + WAIT;
    loop {
        let text = serve.metrics();
        let now = heap(&text);
        if metric(&text, "egress_serve_active_tunnels ") == 0 && now < busy - 150 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "heap in use {now} after the tunnels closed, {busy} while open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Under systemd (`Type=notify`) serve sends `READY=1` once its listeners
/// are bound (a connection right after it is accepted), `RELOADING=1` with
/// the time and then `READY=1` around a `SIGHUP`, and `STOPPING=1` when
/// `SIGTERM` starts the drain. The service manager here is a datagram socket
/// the test binds as `NOTIFY_SOCKET`.
#[test]
fn under_systemd_serve_says_ready_once_listening_and_reports_reloads_and_the_stop() {
    use std::os::unix::net::UnixDatagram;
    let dir = temp_dir("serve-notify");
    std::fs::write(dir.join("homeserver.yaml"), allow(&["127.0.0.1/32"])).unwrap();
    let socket_path = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&socket_path).unwrap();
    manager.set_read_timeout(Some(WAIT)).unwrap();
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NOTIFY_SOCKET", &socket_path)
        .arg("serve")
        .arg("--config")
        .arg(dir.join("homeserver.yaml"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::fs::File::create(dir.join("log.jsonl")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
    let mut serve = Serve {
        port,
        metrics_port: 0,
        dir,
        child: Some(spawn(cmd)),
    };
    let next = |what: &str| {
        let mut buf = [0u8; 4096];
        let n = manager.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no {what} notification within {WAIT:?} ({e}); serve:\n{}",
                serve.stderr()
            )
        });
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };

    let ready = next("ready");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=listening on 127.0.0.1:{port} (general)")),
        "{ready}"
    );
    // Listening already: no retry.
    TcpStream::connect(("127.0.0.1", port)).expect("serve said READY=1 before listening");

    serve.signal(libc::SIGHUP);
    let reloading = next("reloading");
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok_and(|v| v > 0))),
        "{reloading}"
    );
    let reloaded = next("reloaded");
    assert!(reloaded.lines().any(|l| l == "READY=1"), "{reloaded}");
    assert!(reloaded.contains("STATUS=reloaded"), "{reloaded}");

    serve.signal(libc::SIGTERM);
    let stopping = next("stopping");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(serve.wait_exit(Duration::from_secs(40)).success());
}
