//! The federation test world: a real Synapse homeserver (PyPI
//! `matrix-synapse`, in the venv that scripts/test makes), TLS in front of
//! its federation listener with certificates for different names (stunnel),
//! dnsmasq answering SRV queries, and a small Matrix test origin of ours on
//! 127.0.0.1:443 (well-known answers) and on a second port (a key server
//! for the IP-literal origin of signed requests).
//!
//! Declared by the federation test files next to `mod support` (as
//! `#[path = "support/matrix.rs"] mod matrix;`), so that the other test
//! binaries build without the `federation` feature.

#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use egress::SigningKey;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use super::*;

pub const SYNAPSE_USER: &str = "alice";
pub const SYNAPSE_PASSWORD: &str = "synapse-user-pw-9";

pub struct Matrix {
    /// Synapse's plain listener (client, federation, keys, media).
    pub synapse_port: u16,
    /// hs1.test's own TLS federation listener (certificate for hs1.test and srv2.test).
    pub tls_port: u16,
    /// hs2.test's TLS federation listener; hs2.test delegates to it by well-known.
    pub hs2_tls_port: u16,
    /// TLS with a certificate for backend.test only.
    pub backend_port: u16,
    /// TLS with a certificate from a CA nobody trusts, for untrusted.test.
    pub untrusted_port: u16,
    /// dnsmasq, for SRV.
    pub dns_port: u16,
    /// Our key server: its server name is `127.0.0.1:<port>`.
    pub key_server_port: u16,
    /// Our key server for `wk.test`, which delegates to `keys.test:<port>` by well-known.
    pub wk_server_port: u16,
    /// The key our key server publishes, for signing requests.
    pub key: Arc<SigningKey>,
    pub key_file: PathBuf,
    /// An access token of SYNAPSE_USER.
    pub access_token: String,
    pub dir: PathBuf,
    _children: Vec<Child>,
}

impl Matrix {
    pub fn origin_name(&self) -> String {
        format!("127.0.0.1:{}", self.key_server_port)
    }
}

pub fn venv() -> PathBuf {
    let dir = std::env::var_os("EGRESS_SYNAPSE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/egress/synapse-venv")
        });
    if !dir.join("bin/python").exists() {
        panic!(
            "no Synapse virtual environment at {}: run ./scripts/test, which makes it \
             (python3 -m venv DIR && DIR/bin/pip install matrix-synapse)",
            dir.display()
        );
    }
    dir
}

/// The federation world, started once; if it cannot start, every test says why.
pub fn matrix() -> &'static Matrix {
    static MATRIX: OnceLock<Result<Matrix, String>> = OnceLock::new();
    start_once(&MATRIX, start, "the federation test world")
}

/// A running Synapse: its plain port (client API, and behind stunnel) and
/// its own TLS federation listener.
struct Synapse {
    plain_port: u16,
    tls_port: u16,
    child: Child,
}

/// Generates a config for `server_name` in `dir` and starts Synapse with a
/// plain listener and a TLS federation listener using `cert_and_key`.
fn start_synapse(
    venv: &std::path::Path,
    dir: &std::path::Path,
    server_name: &str,
    cert: &str,
    key: &str,
) -> Synapse {
    generate_config(venv, dir, server_name);
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    let (plain_port, tls_port) = (free_port(), free_port());
    let d = dir.display();
    let extra = format!(
        "listeners:\n\
         \x20 - {{port: {tls_port}, tls: true, type: http, bind_addresses: ['127.0.0.1'], resources: [{{names: [federation, keys, media]}}]}}\n\
         \x20 - {{port: {plain_port}, tls: false, type: http, bind_addresses: ['127.0.0.1'], resources: [{{names: [client, federation, keys, media]}}]}}\n\
         tls_certificate_path: {d}/tls.crt\n\
         tls_private_key_path: {d}/tls.key\n\
         federation_ip_range_blacklist: []\n\
         ip_range_whitelist: ['127.0.0.0/8']\n\
         federation_verify_certificates: false\n\
         trusted_key_servers: []\n\
         suppress_key_server_warning: true\n\
         registration_shared_secret: egress-test-shared-secret\n\
         max_upload_size: 100M\n\
         rc_login: {{address: {{per_second: 1000, burst_count: 1000}}, account: {{per_second: 1000, burst_count: 1000}}}}\n\
         rc_registration: {{per_second: 1000, burst_count: 1000}}\n\
         rc_federation: {{window_size: 1000, sleep_limit: 1000, reject_limit: 1000, concurrent: 100}}\n"
    );
    std::fs::write(dir.join("extra.yaml"), extra).unwrap();
    let (mut child, log) = run_synapse(venv, dir, &[]);
    wait_for_synapse(&mut child, plain_port, &log);
    wait_for_synapse(&mut child, tls_port, &log);
    Synapse {
        plain_port,
        tls_port,
        child,
    }
}

/// Waits for Synapse to listen on `port`: up to 90 s, as starting it (a
/// Python program that imports a lot) took over 20 s on the 2-core test
/// machine under load from other work.
fn wait_for_synapse(child: &mut Child, port: u16, log: &std::path::Path) {
    wait_for_addr_within(
        child,
        loopback(port),
        "synapse",
        log,
        Duration::from_secs(90),
    );
}

/// `synapse.app.homeserver --generate-config` for `server_name` in `dir`.
fn generate_config(venv: &std::path::Path, dir: &std::path::Path, server_name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            server_name,
            "--config-path",
        ])
        .arg(dir.join("homeserver.yaml"))
        .args(["--generate-config", "--report-stats=no"])
        .current_dir(dir)
        .output()
        .expect("synapse generates its config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts Synapse with `dir`'s homeserver.yaml and extra.yaml, only PATH and
/// `env` in its environment, its output in `dir`/synapse.out (returned).
fn run_synapse(
    venv: &std::path::Path,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (Child, PathBuf) {
    let log = dir.join("synapse.out");
    let file = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args(["-m", "synapse.app.homeserver", "-c"])
        .arg(dir.join("homeserver.yaml"))
        .arg("-c")
        .arg(dir.join("extra.yaml"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    (spawn(cmd), log)
}

/// A Synapse of a test's own, beside the federation world (which it does not start).
pub struct ExtraSynapse {
    /// Its plain listener on 127.0.0.1 (client, federation, keys, media).
    pub port: u16,
    /// Its config folder (homeserver.yaml, extra.yaml, signing key, homeserver.log).
    pub dir: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
    pub child: Child,
}

/// Generates a config for `server_name` in `dir` and starts Synapse with one
/// plain listener on 127.0.0.1:`port` (client, federation, keys, media), the
/// world's registration secret and relaxed rate limits, then `extra_yaml`
/// (more top-level keys), with only PATH and `env` in its environment.
/// Waits up to 20 s for the listener.
pub fn start_extra_synapse(
    dir: &std::path::Path,
    server_name: &str,
    port: u16,
    extra_yaml: &str,
    env: &[(&str, &str)],
) -> ExtraSynapse {
    let venv = venv();
    generate_config(&venv, dir, server_name);
    let extra = format!(
        "listeners:\n\
         \x20 - {{port: {port}, tls: false, type: http, bind_addresses: ['127.0.0.1'], resources: [{{names: [client, federation, keys, media]}}]}}\n\
         trusted_key_servers: []\n\
         suppress_key_server_warning: true\n\
         registration_shared_secret: egress-test-shared-secret\n\
         rc_login: {{address: {{per_second: 1000, burst_count: 1000}}, account: {{per_second: 1000, burst_count: 1000}}}}\n\
         rc_registration: {{per_second: 1000, burst_count: 1000}}\n\
         rc_federation: {{window_size: 1000, sleep_limit: 1000, reject_limit: 1000, concurrent: 100}}\n\
         {extra_yaml}"
    );
    std::fs::write(dir.join("extra.yaml"), extra).unwrap();
    let (mut child, log) = run_synapse(&venv, dir, env);
    wait_for_synapse(&mut child, port, &log);
    ExtraSynapse {
        port,
        dir: dir.to_owned(),
        log,
        child,
    }
}

/// Registers SYNAPSE_USER on the Synapse at 127.0.0.1:`port` (started by
/// `start_extra_synapse`) and logs in: its access token.
pub fn register_user(port: u16) -> String {
    register_and_login(&venv(), port)
}

fn start() -> Matrix {
    let w = world();
    let dir = temp_dir("matrix");
    let mut children = Vec::new();
    let venv = venv();

    // Two Synapse homeservers, each with its own TLS federation listener:
    // hs1.test (found by SRV) and hs2.test (found by well-known).
    let (cert1, key1, _) = w.ca.issue("hs1.pem", &["hs1.test", "srv2.test"]);
    let (cert2, key2, _) = w.ca.issue("hs2.pem", &["hs2.test"]);
    let second = {
        let (venv, dir) = (venv.clone(), dir.join("hs2"));
        std::thread::spawn(move || start_synapse(&venv, &dir, "hs2.test", &cert2, &key2))
    };
    let hs1 = start_synapse(&venv, &dir.join("hs1"), "hs1.test", &cert1, &key1);
    let hs2 = second.join().expect("the second Synapse starts");
    let synapse_port = hs1.plain_port;
    children.push(hs1.child);
    children.push(hs2.child);

    // TLS fronts with other certificates, in front of hs1's plain listener.
    let (_, _, backend_cert) = w.ca.issue("backend.pem", &["backend.test"]);
    let rogue = TestCa::new(&dir, "rogue-federation-ca");
    let (_, _, untrusted_cert) = rogue.issue("untrusted.pem", &["untrusted.test"]);
    let backend = Stunnel::start("synapse-backend", &backend_cert, synapse_port);
    let untrusted = Stunnel::start("synapse-untrusted", &untrusted_cert, synapse_port);

    // dnsmasq for SRV.
    let dns_port = free_port();
    let mut cmd = dnsmasq_command(&dir, dns_port);
    cmd.args([
        &format!(
            "--srv-host=_matrix-fed._tcp.hs1.test,hs1.test,{},10,5",
            hs1.tls_port
        ),
        &format!(
            "--srv-host=_matrix-fed._tcp.hs3.test,backend.test,{},10,5",
            backend.port
        ),
        &format!(
            "--srv-host=_matrix-fed._tcp.srv2.test,direct.test,{},10,5",
            hs1.tls_port
        ),
        &format!(
            "--srv-host=_matrix-fed._tcp.untrusted.test,untrusted.test,{},10,5",
            untrusted.port
        ),
        "--srv-host=_matrix-fed._tcp.dot.test",
    ]);
    let dns_log = dir.join("dnsmasq.out");
    let file = std::fs::File::create(&dns_log).unwrap();
    cmd.stdout(file.try_clone().unwrap()).stderr(file);
    let mut dns = spawn(cmd);
    // dnsmasq listens on UDP and TCP; TCP tells us it is up.
    wait_for_port(&mut dns, dns_port, "dnsmasq", &dns_log);
    children.push(dns);

    // Our key server and well-known origin.
    let key = Arc::new(SigningKey::generate());
    let key_file = dir.join("origin.signing.key");
    std::fs::write(&key_file, key.to_file_line()).unwrap();
    let mut names: Vec<&str> = FED_NAMES.to_vec();
    names.push("127.0.0.1");
    let (cert, private, _) = w.ca.issue("matrix-origin.pem", &names);
    let tls_config = Arc::new(server_tls(&cert, &private));
    let key_server = StdListener::bind("127.0.0.1:0").unwrap();
    let key_server_port = key_server.local_addr().unwrap().port();
    let wk_server = StdListener::bind("127.0.0.1:0").unwrap();
    let wk_server_port = wk_server.local_addr().unwrap().port();
    let well_known = StdListener::bind("127.0.0.1:443").unwrap_or_else(|e| {
        panic!("the well-known test origin needs 127.0.0.1:443 (run the tests as root, as CI does): {e}")
    });
    let ports = OriginPorts {
        synapse_tls: hs1.tls_port,
        hs2_tls: hs2.tls_port,
        wk_server: wk_server_port,
    };
    serve_matrix_origin(key_server, tls_config.clone(), key.clone(), ports, None);
    serve_matrix_origin(
        wk_server,
        tls_config.clone(),
        key.clone(),
        ports,
        Some("wk.test"),
    );
    serve_matrix_origin(well_known, tls_config, key.clone(), ports, None);

    let access_token = register_and_login(&venv, synapse_port);
    Matrix {
        synapse_port,
        tls_port: hs1.tls_port,
        hs2_tls_port: hs2.tls_port,
        backend_port: backend.port,
        untrusted_port: untrusted.port,
        dns_port,
        key_server_port,
        wk_server_port,
        key,
        key_file,
        access_token,
        dir,
        // Dropping a Child handle does not stop the process; all of them
        // are stopped when the test process exits (support::spawn).
        _children: children,
    }
}

fn register_and_login(venv: &std::path::Path, port: u16) -> String {
    let out = Command::new(venv.join("bin/register_new_matrix_user"))
        .args([
            "-u",
            SYNAPSE_USER,
            "-p",
            SYNAPSE_PASSWORD,
            "--no-admin",
            "-k",
            "egress-test-shared-secret",
        ])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("register_new_matrix_user runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let body = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": SYNAPSE_USER},
        "password": SYNAPSE_PASSWORD,
    });
    let response = plain_request(
        port,
        "POST",
        "/_matrix/client/v3/login",
        None,
        "application/json",
        body.to_string().as_bytes(),
    );
    let value: serde_json::Value = serde_json::from_slice(&response).expect("login answer is JSON");
    value["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// Uploads bytes to Synapse's media repository; returns the media id.
pub fn upload_media(m: &Matrix, bytes: &[u8], content_type: &str) -> String {
    let response = plain_request(
        m.synapse_port,
        "POST",
        "/_matrix/media/v3/upload?filename=test.bin",
        Some(&m.access_token),
        content_type,
        bytes,
    );
    let value: serde_json::Value =
        serde_json::from_slice(&response).expect("upload answer is JSON");
    let uri = value["content_uri"]
        .as_str()
        .unwrap_or_else(|| panic!("{value}"));
    uri.rsplit('/').next().unwrap().to_owned()
}

/// A plain HTTP/1.1 request to Synapse's client API on loopback (test setup only).
fn plain_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    tcp.write_all(body).unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer")
        + 4;
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let body = answer[split..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return dechunk(&body);
    }
    body
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

#[derive(Clone, Copy)]
struct OriginPorts {
    synapse_tls: u16,
    hs2_tls: u16,
    wk_server: u16,
}

/// Serves well-known answers, `/_matrix/federation/v1/version`, and server
/// keys signed for `server_name` (or, without one, for the Host header).
fn serve_matrix_origin(
    listener: StdListener,
    tls: Arc<rustls::ServerConfig>,
    key: Arc<SigningKey>,
    ports: OriginPorts,
    server_name: Option<&'static str>,
) {
    listener.set_nonblocking(true).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    runtime().spawn(async move {
        let listener = TcpListener::from_std(listener).unwrap();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let key = key.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let key = key.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(matrix_answer(
                            req,
                            &key,
                            ports,
                            server_name,
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
}

fn matrix_answer(
    req: Request<Incoming>,
    key: &SigningKey,
    ports: OriginPorts,
    server_name: Option<&str>,
) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let name = host.split(':').next().unwrap_or("").to_owned();
    let json_response = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    match req.uri().path() {
        "/.well-known/matrix/server" => match name.as_str() {
            "delegated.test" => json_response(
                200,
                json!({"m.server": format!("hs1.test:{}", ports.synapse_tls)}).to_string(),
            ),
            "hs2.test" => json_response(
                200,
                json!({"m.server": format!("hs2.test:{}", ports.hs2_tls)}).to_string(),
            ),
            "wk.test" => json_response(
                200,
                json!({"m.server": format!("keys.test:{}", ports.wk_server)}).to_string(),
            ),
            "badjson.test" => json_response(200, "{not json".to_owned()),
            "nonstring.test" => json_response(200, json!({"m.server": 42}).to_string()),
            "big.test" => json_response(
                200,
                json!({"m.server": "x.test", "pad": "a".repeat(60 * 1024)}).to_string(),
            ),
            "loop.test" => Response::builder()
                .status(302)
                .header("location", "https://loop.test/.well-known/matrix/server")
                .body(Full::default())
                .unwrap(),
            _ => json_response(404, json!({"errcode": "M_NOT_FOUND"}).to_string()),
        },
        "/_matrix/key/v2/server" => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            let host = server_name.map_or(host, str::to_owned);
            // Fault-table faults: keys that expired an hour ago, and keys
            // signed by another key under the published key's id.
            let valid_until_ts = match name.as_str() {
                "expired.test" => now - 3_600_000,
                _ => now + 3_600_000,
            };
            let keys = json!({
                "server_name": host,
                "valid_until_ts": valid_until_ts,
                "verify_keys": {key.key_id(): {"key": key.public_key()}},
                "old_verify_keys": {},
            });
            let mut keys = egress::to_canonical_object(&keys).unwrap();
            if name == "missigned.test" {
                let version = key.key_id().trim_start_matches("ed25519:").to_owned();
                let other = SigningKey::generate().to_file_line();
                let seed = other.split_whitespace().nth(2).unwrap();
                let impostor = SigningKey::parse(&format!("ed25519 {version} {seed}")).unwrap();
                impostor.sign_json(&host, &mut keys).unwrap();
            } else {
                key.sign_json(&host, &mut keys).unwrap();
            }
            json_response(200, serde_json::to_string(&keys).unwrap())
        }
        // Remote media whose bytes are elsewhere: the multipart answer's
        // second part is a Location (on the plain HTTPS test origin).
        "/_matrix/federation/v1/media/download/elsewhere" => {
            let location = world().https_origin.url(&test_name(12), "/cdn/blob");
            let body = format!(
                "--b0undary\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
                 --b0undary\r\nLocation: {location}\r\n\r\n\r\n--b0undary--\r\n"
            );
            Response::builder()
                .header("content-type", "multipart/mixed; boundary=b0undary")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
        "/_matrix/federation/v1/version" => json_response(
            200,
            json!({"server": {"name": "egress-test-keyserver", "version": "1"}}).to_string(),
        ),
        // The legacy media endpoint (this origin does not know the federation one).
        path if path.starts_with("/_matrix/media/v3/download/") => Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(format!("legacy media {path}"))))
            .unwrap(),
        _ => json_response(404, json!({"errcode": "M_UNRECOGNIZED"}).to_string()),
    }
}

/// Waits until `f` is true, up to `limit`.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
