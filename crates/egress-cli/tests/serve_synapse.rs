//! `egress serve` with a real Synapse as its client.
//!
//! Synapse A (PyPI, from the test venv) has `https_proxy` and `http_proxy`
//! pointing at two listeners of one `egress serve`: federation (always
//! HTTPS, so CONNECT through `https_proxy`) goes to a listener with the
//! `federation` policy; URL previews of `http://` pages (absolute-form
//! requests through `http_proxy`) go to a listener with the `url_preview`
//! policy. serve resolves every name with its own dnsmasq (`--dns-server`):
//!
//! - `hs-b.test` → 127.0.0.3: Synapse B's federation port, TLS by stunnel
//!   with a certificate of the test CA that A trusts
//!   (`federation_custom_ca_list`); serve's `ip_range_whitelist` opens
//!   127.0.0.3/32 in the default list, which blocks the rest of 127.0.0.0/8.
//! - `evil.test` → 127.0.0.5: an origin that must never get a connection.
//! - `good.test` → 127.0.0.6: an origin in serve's `url_preview_ip_range_whitelist`.
//!
//! A's own `url_preview_ip_range_blacklist` blocks 127.0.0.0/8, and Synapse
//! ignores it because a proxy is configured (it says so in its log): with
//! the proxy doing the DNS, Synapse cannot check the addresses. That is the
//! hole serve closes.

#[path = "../../egress/tests/support/matrix.rs"]
mod matrix;
#[path = "../../egress/tests/support/mod.rs"]
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use matrix::*;
use serde_json::{json, Value};
use support::*;

const B_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const EVIL_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const GOOD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
const GOOD_TITLE: &str = "The page serve lets through";

/// Everything the tests share, started once.
struct Setup {
    /// Synapse A's plain port (client API, key notary).
    a_port: u16,
    a_dir: PathBuf,
    a_log: PathBuf,
    /// SYNAPSE_USER's access token on A.
    token: String,
    /// Synapse B's server name, `hs-b.test:<port of its TLS front>`.
    b_name: String,
    /// Synapse B's plain port (to ask B itself for its keys).
    b_port: u16,
    /// Where B's TLS front listens: 127.0.0.3:<port>.
    b_front: SocketAddr,
    /// serve's stdout: one JSON line per request.
    serve_log: PathBuf,
    /// serve's stderr.
    serve_err: PathBuf,
    /// The origin at 127.0.0.5 that must get no connection. It never
    /// accepts on its own: a connection anyone made waits in its backlog,
    /// so draining the backlog after a request counts exactly the
    /// connections made until then.
    evil: Mutex<StdListener>,
    evil_port: u16,
    /// The allowed origin at 127.0.0.6 and how many connections it accepted.
    good_port: u16,
    good_hits: Arc<AtomicUsize>,
    _children: Vec<Child>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Result<Setup, String>> = OnceLock::new();
    start_once(&SETUP, start, "Synapse, serve and their helpers")
}

/// A port free on `ip` (any loopback address).
fn free_port_on(ip: Ipv4Addr) -> u16 {
    StdListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Setup {
    let dir = temp_dir("serve-synapse");
    let mut children = Vec::new();

    // B: a second Synapse behind stunnel on 127.0.0.3, named with its port
    // (no well-known or SRV lookup by A: A's only outbound connection is the
    // CONNECT to serve).
    let ca = TestCa::new(&dir, "serve-synapse-ca");
    let (_, _, b_cert) = ca.issue("hs-b.pem", &["hs-b.test"]);
    let b_port = free_port();
    let b_front = SocketAddr::from((B_IP, free_port_on(B_IP)));
    let b_name = format!("hs-b.test:{}", b_front.port());
    let b = {
        let (dir, name) = (dir.join("hs-b"), b_name.clone());
        std::thread::spawn(move || start_extra_synapse(&dir, &name, b_port, "", &[]))
    };

    // serve's resolver.
    let dns_port = free_port();
    let mut cmd = dnsmasq_command(&dir, dns_port);
    cmd.args([
        &format!("--address=/hs-b.test/{B_IP}"),
        &format!("--address=/evil.test/{EVIL_IP}"),
        &format!("--address=/good.test/{GOOD_IP}"),
    ]);
    let dns_log = dir.join("dnsmasq.out");
    let file = std::fs::File::create(&dns_log).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    let mut dns = spawn(cmd);
    wait_for_port(&mut dns, dns_port, "dnsmasq", &dns_log);
    children.push(dns);

    // serve: a federation listener and a url_preview listener. The general
    // list (which federation uses while federation_ip_range_blacklist is
    // unset) is Synapse's default with B's address opened; the URL-preview
    // list blocks 127.0.0.0/8 but for the good origin.
    let serve_yaml = dir.join("serve-homeserver.yaml");
    std::fs::write(
        &serve_yaml,
        format!(
            "ip_range_whitelist: ['{B_IP}/32']\n\
             url_preview_ip_range_blacklist: ['127.0.0.0/8', '10.0.0.0/8', '172.16.0.0/12', \
             '192.168.0.0/16', '100.64.0.0/10', '169.254.0.0/16', '::1/128', 'fe80::/10', 'fc00::/7']\n\
             url_preview_ip_range_whitelist: ['{GOOD_IP}/32']\n"
        ),
    )
    .unwrap();
    let (federation_port, preview_port) = (free_port(), free_port());
    let serve_log = dir.join("serve.jsonl");
    let serve_err = dir.join("serve.err");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egress"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("serve")
        .arg("--config")
        .arg(&serve_yaml)
        .args([
            "--listen",
            &format!("127.0.0.1:{federation_port}=federation"),
            "--listen",
            &format!("127.0.0.1:{preview_port}=url_preview"),
            "--dns-server",
            &format!("127.0.0.1:{dns_port}"),
            // Synapse keeps federation connections for minutes; serve logs
            // a tunnel when it closes, so let idle tunnels close soon.
            "--idle-timeout",
            "2s",
        ])
        .stdout(std::fs::File::create(&serve_log).unwrap())
        .stderr(std::fs::File::create(&serve_err).unwrap());
    let mut serve = spawn(cmd);
    wait_for_port(&mut serve, federation_port, "egress serve", &serve_err);
    wait_for_port(&mut serve, preview_port, "egress serve", &serve_err);
    children.push(serve);

    // A: everything it sends out goes to serve; nothing needs to stay direct
    // (no no_proxy): A's only other traffic is inbound.
    let a_port = free_port();
    let a_dir = dir.join("hs-a");
    let a_yaml = format!(
        "federation_custom_ca_list: ['{}']\n\
         url_preview_enabled: true\n\
         url_preview_ip_range_blacklist: ['127.0.0.0/8']\n",
        ca.pem_path.display()
    );
    let https_proxy = format!("http://127.0.0.1:{federation_port}");
    let http_proxy = format!("http://127.0.0.1:{preview_port}");
    let a = start_extra_synapse(
        &a_dir,
        "hs-a.test",
        a_port,
        &a_yaml,
        &[("https_proxy", &https_proxy), ("http_proxy", &http_proxy)],
    );
    children.push(a.child);
    let b = b.join().expect("Synapse B starts");
    children.push(b.child);
    // Dropping a Stunnel does not stop it: every process started here stops
    // when the test binary exits (support::spawn).
    Stunnel::start_on("hs-b", &b_cert, b_front, b_port);
    let token = register_user(a_port);

    let evil = StdListener::bind((EVIL_IP, 0)).unwrap();
    let evil_port = evil.local_addr().unwrap().port();
    let (good_port, good_hits) = start_good_origin();

    Setup {
        a_port,
        a_dir,
        a_log: a.log,
        token,
        b_name,
        b_port,
        b_front,
        serve_log,
        serve_err,
        evil: Mutex::new(evil),
        evil_port,
        good_port,
        good_hits,
        _children: children,
    }
}

/// An HTML page with an og:title on 127.0.0.6; counts the connections it accepts.
fn start_good_origin() -> (u16, Arc<AtomicUsize>) {
    let listener = StdListener::bind((GOOD_IP, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let page = format!(
                    "<!doctype html><html><head><title>fallback title</title>\
                     <meta property=\"og:title\" content=\"{GOOD_TITLE}\" />\
                     <meta property=\"og:description\" content=\"served on {GOOD_IP}\" />\
                     </head><body><p>hello</p></body></html>"
                );
                let _ = tcp.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                        page.len()
                    )
                    .as_bytes(),
                );
            });
        }
    });
    (port, hits)
}

/// One request to Synapse on 127.0.0.1:`port` (HTTP/1.0: no chunks, the
/// body ends with the connection); its status and body. Up to 60 s.
fn synapse_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.map(Value::to_string).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.write_all(body.as_bytes()).unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("{method} {path}: no answer from Synapse within 60 s: {e}"));
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: not an HTTP answer: {text}"));
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status in {head}"));
    let json = serde_json::from_str(body).unwrap_or_else(|_| json!({ "raw": body }));
    (status, json)
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A's preview of `url`.
fn preview(s: &Setup, url: &str) -> (u16, Value) {
    synapse_request(
        s.a_port,
        "GET",
        &format!(
            "/_matrix/client/v1/media/preview_url?url={}",
            percent_encode(url)
        ),
        Some(&s.token),
        None,
    )
}

/// serve's JSON lines so far.
fn serve_lines(s: &Setup) -> Vec<Value> {
    std::fs::read_to_string(&s.serve_log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The first line of serve's log that `matches`, waiting up to `limit`
/// for it (a tunnel's line is written when the tunnel closes).
fn serve_line(s: &Setup, limit: Duration, matches: impl Fn(&Value) -> bool) -> Value {
    let mut found = None;
    eventually(limit, || {
        found = serve_lines(s).into_iter().find(|l| matches(l));
        found.is_some()
    });
    found.unwrap_or_else(|| {
        panic!(
            "serve logged no such line within {limit:?}; its log:\n{}\nits stderr:\n{}",
            std::fs::read_to_string(&s.serve_log).unwrap_or_default(),
            std::fs::read_to_string(&s.serve_err).unwrap_or_default()
        )
    })
}

/// Connections made to the evil origin so far (its backlog, drained).
fn evil_connections(s: &Setup) -> usize {
    let evil = s.evil.lock().unwrap();
    evil.set_nonblocking(true).unwrap();
    let mut n = 0;
    loop {
        match evil.accept() {
            Ok(_) => n += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return n,
            Err(e) => panic!("the evil origin's listener: {e}"),
        }
    }
}

fn synapse_logs(s: &Setup) -> String {
    let mut text = std::fs::read_to_string(&s.a_log).unwrap_or_default();
    text.push_str(&std::fs::read_to_string(s.a_dir.join("homeserver.log")).unwrap_or_default());
    text
}

#[test]
fn federation_key_query_goes_through_serve() {
    let s = setup();
    // B's keys, from B itself.
    let (status, own) = synapse_request(s.b_port, "GET", "/_matrix/key/v2/server", None, None);
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["server_name"], s.b_name.as_str(), "{own}");
    let key_id = own["verify_keys"]
        .as_object()
        .and_then(|keys| keys.keys().next())
        .unwrap_or_else(|| panic!("B publishes no key: {own}"))
        .clone();

    // A's notary: asked for a key it does not have, A fetches B's keys
    // (CONNECT hs-b.test:<port> to serve, TLS to B inside the tunnel). The
    // GET form without a key id (`/_matrix/key/v2/query/<server>`) only
    // answers from A's cache (Synapse 1.163: `{"server_keys":[]}` before
    // any fetch), so the fetch is asked for with the POST form and a key id.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let query = json!({"server_keys": {s.b_name.as_str(): {
        key_id.as_str(): {"minimum_valid_until_ts": now}
    }}});
    let (status, answer) = synapse_request(
        s.a_port,
        "POST",
        "/_matrix/key/v2/query",
        None,
        Some(&query),
    );
    assert_eq!(status, 200, "{answer}");
    let keys = answer["server_keys"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"));
    let fetched = keys
        .iter()
        .find(|k| k["server_name"] == s.b_name.as_str())
        .unwrap_or_else(|| {
            panic!(
                "A's notary has no keys of {}: {answer}\nA's log:\n{}",
                s.b_name,
                synapse_logs(s)
            )
        });
    assert_eq!(fetched["verify_keys"], own["verify_keys"], "{answer}");
    // B signed them, and A as notary.
    assert!(
        fetched["signatures"][s.b_name.as_str()][key_id.as_str()].is_string(),
        "{fetched}"
    );
    assert!(fetched["signatures"]["hs-a.test"].is_object(), "{fetched}");

    // The GET form of the notary now answers them too (from A's cache).
    let (status, answer) = synapse_request(
        s.a_port,
        "GET",
        &format!("/_matrix/key/v2/query/{}", s.b_name),
        None,
        None,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["server_keys"][0]["verify_keys"], own["verify_keys"],
        "{answer}"
    );

    // serve let the CONNECT through to exactly the address it checked.
    let b_target = s.b_name.clone();
    let line = serve_line(s, Duration::from_secs(30), |l| {
        l["http.request.method"] == "CONNECT" && l["target"] == b_target.as_str()
    });
    assert_eq!(line["decision"], "allowed", "{line}");
    assert_eq!(line["policy"], "federation", "{line}");
    assert_eq!(line["resolved"], s.b_front.to_string().as_str(), "{line}");
    assert_eq!(line["http.response.status_code"], 200, "{line}");
    assert!(
        line["reason"].as_str().unwrap_or("").starts_with("checked"),
        "{line}"
    );
    assert!(line["bytes_down"].as_u64().unwrap_or(0) > 0, "{line}");
    assert!(line["bytes_up"].as_u64().unwrap_or(0) > 0, "{line}");
    // Nothing to B was refused.
    let refused: Vec<Value> = serve_lines(s)
        .into_iter()
        .filter(|l| l["target"] == b_target.as_str() && l["decision"] != "allowed")
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
}

#[test]
fn url_preview_of_a_name_resolving_to_loopback_is_denied_by_serve() {
    let s = setup();
    // Synapse says it ignores its own list: the hole.
    let logs = synapse_logs(s);
    assert!(
        logs.contains(
            "url_preview_ip_range_blacklist will be ignored as an HTTP(s) proxy is configured"
        ),
        "{logs}"
    );
    assert_eq!(evil_connections(s), 0, "the evil origin was reached before");

    // http:// through http_proxy, the url_preview listener.
    let url = format!("http://evil.test:{}/internal-secrets", s.evil_port);
    let (status, answer) = preview(s, &url);
    assert_ne!(status, 200, "{answer}");
    // Synapse answered after serve's 403: had serve connected, the
    // connection would be waiting in the origin's backlog now.
    assert_eq!(evil_connections(s), 0, "serve connected to the evil origin");
    let line = serve_line(s, Duration::from_secs(10), |l| l["target"] == url.as_str());
    assert_eq!(line["decision"], "denied", "{line}");
    assert_eq!(line["http.request.method"], "GET", "{line}");
    assert_eq!(line["policy"], "url_preview", "{line}");
    assert_eq!(line["http.response.status_code"], 403, "{line}");
    assert_eq!(line["resolved"], Value::Null, "{line}");
    assert_eq!(
        line["reason"],
        format!("{EVIL_IP} is in 127.0.0.0/8 of url_preview_ip_range_blacklist").as_str(),
        "{line}"
    );

    // https:// goes through https_proxy (the federation listener): CONNECT,
    // refused by the general list, which blocks 127.0.0.0/8 but for B.
    let url = format!("https://evil.test:{}/internal-secrets", s.evil_port);
    let (status, answer) = preview(s, &url);
    assert_ne!(status, 200, "{answer}");
    assert_eq!(evil_connections(s), 0, "serve connected to the evil origin");
    let target = format!("evil.test:{}", s.evil_port);
    let line = serve_line(s, Duration::from_secs(10), |l| {
        l["http.request.method"] == "CONNECT" && l["target"] == target.as_str()
    });
    assert_eq!(line["decision"], "denied", "{line}");
    assert_eq!(line["http.response.status_code"], 403, "{line}");
    assert_eq!(line["resolved"], Value::Null, "{line}");
    assert_eq!(
        line["reason"],
        format!("{EVIL_IP} is in 127.0.0.0/8 of ip_range_blacklist (default)").as_str(),
        "{line}"
    );

    // The allowed origin: the preview works and has the page's og:title.
    let url = format!("http://good.test:{}/page", s.good_port);
    let (status, answer) = preview(s, &url);
    assert_eq!(
        status,
        200,
        "{answer}\nserve:\n{}",
        std::fs::read_to_string(&s.serve_log).unwrap_or_default()
    );
    assert_eq!(answer["og:title"], GOOD_TITLE, "{answer}");
    assert!(s.good_hits.load(Ordering::SeqCst) >= 1);
    let line = serve_line(s, Duration::from_secs(10), |l| l["target"] == url.as_str());
    assert_eq!(line["decision"], "allowed", "{line}");
    assert_eq!(line["policy"], "url_preview", "{line}");
    assert_eq!(line["http.response.status_code"], 200, "{line}");
    assert_eq!(
        line["resolved"],
        format!("{GOOD_IP}:{}", s.good_port).as_str(),
        "{line}"
    );
    assert_eq!(evil_connections(s), 0);

    // The count is not blind: a connection made directly is counted.
    let direct = TcpStream::connect((EVIL_IP, s.evil_port)).unwrap();
    assert_eq!(evil_connections(s), 1);
    drop(direct);
}
