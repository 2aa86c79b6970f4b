//! Real parts on loopback for the transport tests: a test CA, HTTP and HTTPS
//! origins that record what they receive, squid (with and without basic
//! auth), tinyproxy (with and without), stunnel in front of each (TLS
//! proxies), and a small fake proxy for faults no real proxy produces.
//!
//! Started once per test binary. Each server runs in its own process group;
//! when the test binary exits normally (the harness's `main` returns or calls
//! `exit`), an `atexit` handler stops every group, helpers and kids included
//! (SIGTERM, then SIGKILL). If the binary dies without exiting, the direct
//! children still die with it (PR_SET_PDEATHSIG, tied to a fixture thread
//! that lives as long as the process), except squid: it changes user, which
//! clears PR_SET_PDEATHSIG. scripts/test's final check (scripts/leftovers)
//! reports and stops anything left.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const USER: &str = "alice";
/// Needs percent-encoding in a URL: `@ : /`.
pub const PASSWORD: &str = "p@ss:w/rd";
pub const PASSWORD_ENCODED: &str = "p%40ss%3Aw%2Frd";
pub const WRONG_PASSWORD: &str = "wr0ng-secret";
/// tinyproxy's config accepts only plain characters in a password.
pub const TINY_PASSWORD: &str = "tiny-s3cret_pw";
/// Host names squid resolves (hosts_file) and egress resolves (overrides) to 127.0.0.1.
pub const TEST_NAMES: usize = 40;

/// A name squid refuses (403, `http_access deny`) on both ports, before any DNS.
pub const FORBIDDEN_NAME: &str = "forbidden.test";

/// Names of the federation tests, mapped to 127.0.0.1 in squid's hosts file.
pub const FED_NAMES: &[&str] = &[
    "hs1.test",
    "hs2.test",
    "delegated.test",
    "hs3.test",
    "backend.test",
    "srv2.test",
    "direct.test",
    "untrusted.test",
    "keys.test",
    "wk.test",
    "badjson.test",
    "nonstring.test",
    "big.test",
    "loop.test",
    "dot.test",
    "expired.test",
    "missigned.test",
];

pub fn test_name(i: usize) -> String {
    format!("t{i}.test")
}

/// The fixture runtime: origins and fake proxies run here, outside any test's runtime.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("fixture runtime")
    })
}

/// Spawns children from one thread that lives until the process exits, so
/// that PR_SET_PDEATHSIG (which follows the spawning thread) kills them only then.
/// Each child leads a process group of its own, which `stop_servers` ends
/// (with everything the child started) when the test binary exits.
pub fn spawn(mut cmd: Command) -> Child {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        // SAFETY: registers a plain `extern "C" fn` that never unwinds.
        let rc = unsafe { libc::atexit(stop_servers) };
        assert_eq!(rc, 0, "cannot register the test servers' stop handler");
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (mut cmd, reply) in rx {
                cmd.process_group(0);
                unsafe {
                    cmd.pre_exec(|| {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        Ok(())
                    });
                }
                let child = cmd.spawn();
                if let Ok(child) = &child {
                    server_groups()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(child.id() as libc::pid_t);
                }
                let _ = reply.send(child);
            }
        });
        Mutex::new(tx)
    });
    cmd.stdin(Stdio::null());
    let (tx, rx) = mpsc::channel();
    spawner.lock().unwrap().send((cmd, tx)).unwrap();
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start a test server: {e}"))
}

/// The process groups of the servers started by `spawn` (each group's id is
/// its leader's pid, the child `spawn` started).
fn server_groups() -> &'static Mutex<Vec<libc::pid_t>> {
    static GROUPS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());
    &GROUPS
}

/// Stops every server `spawn` started, with everything each one started.
/// Runs from `atexit`, so it must not panic.
extern "C" fn stop_servers() {
    let groups: Vec<libc::pid_t> =
        std::mem::take(&mut *server_groups().lock().unwrap_or_else(|e| e.into_inner()));
    stop_groups(&groups);
}

/// Stops a server `spawn` started, and everything it started.
pub fn stop_server(server: Child) {
    let group = server.id() as libc::pid_t;
    server_groups()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&g| g != group);
    // `stop_groups` reaps it (waitpid): `Child::wait` would find nothing to wait for.
    stop_groups(&[group]);
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // `pid (comm) state ...`: comm may hold spaces and parentheses.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// SIGTERM to each whole process group, up to 5 s for them to end (squid
/// takes about 1.5 s), then SIGKILL to whatever is left; reaps the group
/// leaders (our children). Never panics.
fn stop_groups(groups: &[libc::pid_t]) {
    if groups.is_empty() {
        return;
    }
    // SAFETY: kill and waitpid on process groups and children this process
    // started; no memory is shared with them.
    let alive = |group: libc::pid_t| unsafe {
        // Reap the leader if it has ended, so that a zombie does not count.
        libc::waitpid(group, std::ptr::null_mut(), libc::WNOHANG);
        libc::kill(-group, 0) == 0
    };
    let wait = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while groups.iter().any(|&g| alive(g)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for &group in groups {
        unsafe { libc::kill(-group, libc::SIGTERM) };
    }
    wait(Duration::from_secs(5));
    let mut killed = Vec::new();
    for &group in groups {
        if alive(group) {
            unsafe { libc::kill(-group, libc::SIGKILL) };
            killed.push(group);
        }
    }
    if !killed.is_empty() {
        eprintln!("test servers: process groups {killed:?} ignored SIGTERM for 5 s; killed");
        wait(Duration::from_secs(2));
    }
}

pub fn require(binary: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        let path = Path::new(dir).join(binary);
        if path.exists() {
            return path;
        }
    }
    panic!(
        "`{binary}` is not installed: the transport tests need squid, tinyproxy and stunnel4 \
         (run ./scripts/test, which installs them, or apt-get install squid tinyproxy stunnel4)"
    );
}

/// dnsmasq on 127.0.0.1:`port` with the options every test uses (no
/// upstream, no /etc/hosts, foreground); the caller adds its records. The
/// options are all on the command line; an empty config file in `dir` puts
/// the test folder in the command line, which is how scripts/leftovers finds
/// a dnsmasq that outlived its test.
pub fn dnsmasq_command(dir: &Path, port: u16) -> Command {
    let conf = dir.join("dnsmasq.conf");
    std::fs::write(&conf, "# egress tests: options on the command line\n").unwrap();
    let mut cmd = Command::new(require("dnsmasq"));
    cmd.arg(format!("--conf-file={}", conf.display())).args([
        "--no-daemon",
        &format!("--port={port}"),
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--user=root",
    ]);
    cmd
}

/// Starts a fixture once (on a thread of its own, so a panic inside is
/// caught); every later caller gets it, or the same panic with why it failed.
pub fn start_once<T: Send + Sync>(
    cell: &'static OnceLock<Result<T, String>>,
    start: fn() -> T,
    what: &str,
) -> &'static T {
    let started = cell.get_or_init(|| {
        std::thread::spawn(start).join().map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match started {
        Ok(fixture) => fixture,
        Err(why) => panic!("{what} did not start: {why}"),
    }
}

/// A port nothing listens on, for a server a test starts. Taken below the
/// kernel's ephemeral range (32768-60999 on Linux), where the source ports of
/// the suite's own outgoing connections come from: a port the kernel handed
/// out (`bind(:0)`) could become a connection's source port before the
/// server binds it ("Address already in use", seen in CI). A process-wide
/// sequence from a per-process start keeps the tests of one binary apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 20_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 20_000, "no free port below the ephemeral range");
        let port = 10_000 + ((start + n * 7) % 20_000) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn wait_for_port(child: &mut Child, port: u16, what: &str, log: &Path) {
    wait_for_addr(child, loopback(port), what, log);
}

/// Waits up to 20 s until `child` accepts connections on `addr`.
pub fn wait_for_addr(child: &mut Child, addr: SocketAddr, what: &str, log: &Path) {
    wait_for_addr_within(child, addr, what, log, Duration::from_secs(20));
}

/// Waits up to `limit` until `child` accepts connections on `addr`.
pub fn wait_for_addr_within(
    child: &mut Child,
    addr: SocketAddr,
    what: &str,
    log: &Path,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited ({status}) before listening on {addr}; its log:\n{log}");
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(log).unwrap_or_default();
    panic!("{what} did not listen on {addr} within {limit:?}; its log:\n{log}");
}

pub fn temp_dir(name: &str) -> PathBuf {
    // Folders of earlier runs whose process is gone are removed first.
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Only `egress-test-<pid>-<name>`: a folder of another kind that
            // happens to share the prefix is not ours to remove.
            let Some(pid) = name
                .strip_prefix("egress-test-")
                .and_then(|r| r.split('-').next())
                .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
    let dir = std::env::temp_dir().join(format!("egress-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A certificate authority made at test time, and certificates it issues.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
    pub pem_path: PathBuf,
    dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        let pem_path = dir.join(format!("{name}.pem"));
        std::fs::write(&pem_path, &pem).unwrap();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
            pem_path,
            dir: dir.to_owned(),
        }
    }

    /// A server certificate for `names` (DNS names or IPs): (cert PEM, key PEM, combined file).
    pub fn issue(&self, file: &str, names: &[&str]) -> (String, String, PathBuf) {
        self.issue_with(file, names, |_| {})
    }

    /// As `issue`, with `tweak` applied to the certificate's parameters
    /// first (an expired certificate: a `not_after` in the past).
    pub fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String, PathBuf) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        tweak(&mut params);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let path = self.dir.join(file);
        std::fs::write(&path, format!("{cert_pem}{key_pem}")).unwrap();
        (cert_pem, key_pem, path)
    }
}

/// One request as an origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HashMap<String, String>,
}

/// An HTTP or HTTPS origin on 127.0.0.1 that records every request.
/// `/status/N` answers N; `/redirect?to=URL` answers 302 to URL; `/loop`
/// redirects to itself; anything
/// else answers 200 with `origin <scheme> <path>`.
pub struct Origin {
    pub port: u16,
    pub https: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    pub fn start(tls: Option<rustls::ServerConfig>) -> Origin {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let std_listener = StdListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let https = tls.is_some();
        let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(Arc::new(c)));
        let record = seen.clone();
        runtime().spawn(async move {
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let record = record.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let record = record.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(req, https, &record)) }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        Origin { port, https, seen }
    }

    /// Requests whose target contains `needle`.
    pub fn seen(&self, needle: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.target.contains(needle))
            .cloned()
            .collect()
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!(
            "{}://{host}:{}{path}",
            if self.https { "https" } else { "http" },
            self.port
        )
    }
}

fn answer(req: Request<Incoming>, https: bool, record: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    let target = req.uri().to_string();
    record.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        target: target.clone(),
        headers,
    });
    let path = req.uri().path();
    if let Some(code) = path.strip_prefix("/status/") {
        let code = code.parse().unwrap_or(500);
        return Response::builder()
            .status(code)
            .body(Full::new(Bytes::from(format!("status {code}"))))
            .unwrap();
    }
    if path == "/pubkey/isvalid" {
        let valid = req.uri().query() == Some("public_key=good%2Bkey");
        let body = format!("{{\"valid\":{valid}}}");
        return Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
    }
    if path == "/loop" {
        return Response::builder()
            .status(302)
            .header("location", "/loop")
            .body(Full::default())
            .unwrap();
    }
    if let Some(to) = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("to="))
        .filter(|_| path.starts_with("/redirect"))
    {
        return Response::builder()
            .status(302)
            .header("location", to)
            .body(Full::default())
            .unwrap();
    }
    let scheme = if https { "https" } else { "http" };
    Response::new(Full::new(Bytes::from(format!("origin {scheme} {path}"))))
}

/// A server TLS config from PEM.
pub fn server_tls(cert_pem: &str, key_pem: &str) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

/// squid with two ports: one open to loopback, one requiring basic auth.
pub struct Squid {
    pub open_port: u16,
    pub auth_port: u16,
    dir: PathBuf,
    _child: Child,
}

impl Squid {
    fn start() -> Squid {
        let squid = require("squid");
        let dir = temp_dir("squid");
        let hash = Command::new("openssl")
            .args(["passwd", "-apr1", PASSWORD])
            .output()
            .expect("openssl passwd");
        assert!(hash.status.success());
        std::fs::write(
            dir.join("passwd"),
            format!("{USER}:{}", String::from_utf8_lossy(&hash.stdout)),
        )
        .unwrap();
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for i in 0..TEST_NAMES {
            hosts.push_str(&format!("127.0.0.1 {}\n", test_name(i)));
        }
        for name in FED_NAMES {
            hosts.push_str(&format!("127.0.0.1 {name}\n"));
        }
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        let (open_port, auth_port) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            "http_port 127.0.0.1:{auth_port} name=authport\n\
             http_port 127.0.0.1:{open_port} name=openport\n\
             pid_filename {d}/squid.pid\n\
             access_log stdio:{d}/access.log\n\
             cache_log {d}/cache.log\n\
             cache deny all\n\
             hosts_file {d}/hosts\n\
             dns_timeout 2 seconds\n\
             auth_param basic program /usr/lib/squid/basic_ncsa_auth {d}/passwd\n\
             acl open myportname openport\n\
             acl authed proxy_auth REQUIRED\n\
             acl forbidden dstdomain {FORBIDDEN_NAME}\n\
             http_access deny forbidden\n\
             http_access allow open\n\
             http_access allow authed\n\
             http_access deny all\n\
             shutdown_lifetime 0 seconds\n\
             debug_options ALL,1 11,2\n"
        );
        std::fs::write(dir.join("squid.conf"), conf).unwrap();
        let _ = Command::new("chown")
            .args(["-R", "proxy"])
            .arg(&dir)
            .status();
        let out = std::fs::File::create(dir.join("out.log")).unwrap();
        let mut cmd = Command::new(squid);
        cmd.arg("-f").arg(dir.join("squid.conf")).arg("-N");
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        let mut child = spawn(cmd);
        wait_for_port(&mut child, open_port, "squid", &dir.join("cache.log"));
        wait_for_port(&mut child, auth_port, "squid", &dir.join("cache.log"));
        Squid {
            open_port,
            auth_port,
            dir,
            _child: child,
        }
    }

    /// Access log lines containing `needle`, waiting up to 5 s for at least `min` of them.
    pub fn log_lines(&self, needle: &str, min: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_owned)
                .collect();
            if lines.len() >= min || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl World {
    /// squid's folder (its cache.log holds every request it parsed, with headers).
    pub fn squid_dir(&self) -> &Path {
        &self.squid.dir
    }
}

impl Squid {
    /// Request lines (`CONNECT host:port HTTP/1.1`, `GET http://... HTTP/1.1`)
    /// of every request squid has parsed, that contain `needle`. squid writes
    /// each to cache.log (debug section 11, level 2) when it parses it, before
    /// it forwards or answers it: once a request has been answered, its line
    /// is there, so an empty result after an answer proves squid never saw
    /// it, with no waiting.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("cache.log")).unwrap_or_default();
        let mut lines = text.lines();
        let mut found = Vec::new();
        while let Some(line) = lines.next() {
            if line.ends_with("HTTP Client REQUEST:") {
                // A line of dashes, then the request line.
                if let Some(request) = lines.nth(1) {
                    if request.contains(needle) {
                        found.push(request.to_owned());
                    }
                }
            }
        }
        found
    }
}

/// tinyproxy, open or with basic auth.
pub struct Tinyproxy {
    pub port: u16,
    log: PathBuf,
    _child: Child,
}

impl Tinyproxy {
    fn start(auth: bool, connect_ports: &[u16]) -> Tinyproxy {
        let tinyproxy = require("tinyproxy");
        let dir = temp_dir(if auth { "tinyproxy-auth" } else { "tinyproxy" });
        let port = free_port();
        let mut conf = format!("Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\n");
        if auth {
            conf.push_str(&format!("BasicAuth {USER} {TINY_PASSWORD}\n"));
        }
        for p in connect_ports {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        std::fs::write(dir.join("tinyproxy.conf"), conf).unwrap();
        let log = dir.join("out.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(tinyproxy);
        cmd.arg("-d").arg("-c").arg(dir.join("tinyproxy.conf"));
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        let mut child = spawn(cmd);
        wait_for_port(&mut child, port, "tinyproxy", &log);
        Tinyproxy {
            port,
            log,
            _child: child,
        }
    }

    /// Log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// stunnel: TLS on `port` in front of a plain proxy port.
pub struct Stunnel {
    pub port: u16,
    _child: Child,
}

impl Stunnel {
    pub fn start(name: &str, cert_and_key: &Path, backend: u16) -> Stunnel {
        Stunnel::start_on(name, cert_and_key, loopback(free_port()), backend)
    }

    /// TLS on `accept` (any loopback address) in front of 127.0.0.1:`backend`.
    pub fn start_on(name: &str, cert_and_key: &Path, accept: SocketAddr, backend: u16) -> Stunnel {
        let stunnel = require("stunnel4");
        let dir = temp_dir(&format!("stunnel-{name}"));
        let port = accept.port();
        let conf = format!(
            "foreground = yes\npid =\n[{name}]\naccept = {accept}\nconnect = 127.0.0.1:{backend}\ncert = {}\n",
            cert_and_key.display()
        );
        std::fs::write(dir.join("stunnel.conf"), conf).unwrap();
        let log = dir.join("out.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(stunnel);
        cmd.arg(dir.join("stunnel.conf"));
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        let mut child = spawn(cmd);
        wait_for_addr(&mut child, accept, "stunnel", &log);
        Stunnel {
            port,
            _child: child,
        }
    }
}

/// Everything, started once.
pub struct World {
    pub dir: PathBuf,
    pub ca: TestCa,
    pub http_origin: Origin,
    pub https_origin: Origin,
    pub squid: Squid,
    pub tinyproxy_open: Tinyproxy,
    pub tinyproxy_auth: Tinyproxy,
    pub tls_squid_open: Stunnel,
    pub tls_squid_auth: Stunnel,
    pub tls_tinyproxy_open: Stunnel,
    pub tls_tinyproxy_auth: Stunnel,
    /// TLS in front of squid's open port with a certificate from a CA nobody trusts.
    pub untrusted_tls_squid: Stunnel,
}

pub fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = temp_dir("world");
        let ca = TestCa::new(&dir, "egress-test-ca");
        let mut names = vec!["localhost", "127.0.0.1", "::1"];
        let test_names: Vec<String> = (0..TEST_NAMES).map(test_name).collect();
        names.extend(test_names.iter().map(String::as_str));
        let (cert, key, combined) = ca.issue("server.pem", &names);
        let http_origin = Origin::start(None);
        let https_origin = Origin::start(Some(server_tls(&cert, &key)));
        let squid = Squid::start();
        let ports = [http_origin.port, https_origin.port];
        let tinyproxy_open = Tinyproxy::start(false, &ports);
        let tinyproxy_auth = Tinyproxy::start(true, &ports);
        let tls_squid_open = Stunnel::start("squid-open", &combined, squid.open_port);
        let tls_squid_auth = Stunnel::start("squid-auth", &combined, squid.auth_port);
        let tls_tinyproxy_open = Stunnel::start("tinyproxy-open", &combined, tinyproxy_open.port);
        let tls_tinyproxy_auth = Stunnel::start("tinyproxy-auth", &combined, tinyproxy_auth.port);
        let rogue = TestCa::new(&dir, "rogue-ca");
        let (_, _, rogue_combined) = rogue.issue("rogue.pem", &["localhost", "127.0.0.1"]);
        let untrusted_tls_squid = Stunnel::start("untrusted", &rogue_combined, squid.open_port);
        World {
            dir,
            ca,
            http_origin,
            https_origin,
            squid,
            tinyproxy_open,
            tinyproxy_auth,
            tls_squid_open,
            tls_squid_auth,
            tls_tinyproxy_open,
            tls_tinyproxy_auth,
            untrusted_tls_squid,
        }
    })
}

/// A scripted fake proxy, for faults a real proxy cannot be made to produce.
/// Each accepted connection reads the CONNECT request, then plays `script`.
#[derive(Clone)]
pub enum Fault {
    /// Send these byte chunks (with a pause between them), then relay to `origin`
    /// if given, or close.
    Reply(Vec<Vec<u8>>, Option<u16>),
    /// Close without a word.
    Close,
    /// Read the request and never answer.
    Silent,
    /// Answer 200, relay to the origin, and reset the connection after `n` bytes from it.
    ResetAfter(u16, usize),
}

pub struct FakeProxy {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl FakeProxy {
    pub fn start(fault: Fault) -> FakeProxy {
        let std_listener = StdListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        runtime().spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = TcpListener::from_std(std_listener).unwrap();
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let fault = fault.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    match fault {
                        Fault::Close => {}
                        Fault::Silent => tokio::time::sleep(Duration::from_secs(3600)).await,
                        Fault::Reply(chunks, origin) => {
                            for c in chunks {
                                if tcp.write_all(&c).await.is_err() {
                                    return;
                                }
                                let _ = tcp.flush().await;
                                tokio::time::sleep(Duration::from_millis(30)).await;
                            }
                            if let Some(port) = origin {
                                if let Ok(mut up) =
                                    tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                                {
                                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
                                }
                            }
                        }
                        Fault::ResetAfter(port, n) => {
                            let _ = tcp
                                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                                .await;
                            let Ok(mut up) =
                                tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                            else {
                                return;
                            };
                            let (mut up_r, mut up_w) = up.split();
                            let (mut r, mut w) = tcp.split();
                            let to_origin = tokio::io::copy(&mut r, &mut up_w);
                            let from_origin = async {
                                let mut sent = 0;
                                let mut b = [0u8; 1];
                                while sent < n {
                                    match up_r.read(&mut b).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(_) => {
                                            let _ = w.write_all(&b).await;
                                            sent += 1;
                                        }
                                    }
                                }
                            };
                            tokio::select! { _ = to_origin => {}, _ = from_origin => {} }
                            // SO_LINGER 0: close with a reset.
                            let _ = socket2_linger(&tcp);
                        }
                    }
                });
            }
        });
        FakeProxy { port, requests }
    }
}

pub fn socket2_linger(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Everything logged by egress in this test binary, at trace level.
pub fn captured_logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Asserts nothing logged so far holds a test password, in any spelling.
pub fn assert_no_password_logged() {
    let logs = captured_logs().lock().unwrap();
    let text = String::from_utf8_lossy(&logs);
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    };
    for secret in [
        PASSWORD,
        PASSWORD_ENCODED,
        WRONG_PASSWORD,
        TINY_PASSWORD,
        b64.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "the logs hold a password ({secret})"
        );
    }
}

/// Runs the `egress` binary at `bin` with only PATH, the test CA as
/// SSL_CERT_FILE, and `env` in its environment.
pub fn run_egress(
    bin: &str,
    subcommand: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SSL_CERT_FILE", &world().ca.pem_path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.arg(subcommand)
        .args(args)
        .output()
        .expect("egress runs")
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An address that drops SYNs, on loopback: a listener on `addr` that never
/// accepts, its accept queue filled, so that Linux drops every further SYN
/// and a connect to it hangs until the caller's limit (a dead address in a
/// DNS answer). Checked when made: a plain connect to it must time out.
/// Dropping it closes the listener and the queued connections.
pub struct DropsSyns {
    pub addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: Vec<std::net::TcpStream>,
}

impl DropsSyns {
    pub fn on(addr: SocketAddr) -> DropsSyns {
        let _guard = runtime().enter();
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .unwrap();
        socket
            .bind(addr)
            .unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"));
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let wait = Duration::from_millis(300);
        let mut queued = Vec::new();
        loop {
            match std::net::TcpStream::connect_timeout(&addr, wait) {
                Ok(tcp) => queued.push(tcp),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the accept queue of {addr}: {e}"),
            }
            assert!(
                queued.len() < 16,
                "the accept queue of {addr} never filled up"
            );
        }
        let started = Instant::now();
        let check = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500));
        assert!(
            matches!(&check, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
            "a connect to {addr} must time out, it ended {check:?} after {:?}",
            started.elapsed()
        );
        DropsSyns {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }
}

/// One row of RELIABILITY.md's fault table, as a test measured it. When
/// EGRESS_FAULT_TABLE names a file (scripts/fault-table sets it), `record`
/// appends the row to it as one JSON line; otherwise it does nothing.
pub struct FaultRow<'a> {
    /// Sort key and anchor: `P03`, `O12`, `F05`, `S02`.
    pub id: &'a str,
    /// The fault, in a few words.
    pub fault: &'a str,
    /// What produces it: `squid`, `tinyproxy`, `stunnel`, `fake proxy`, ...
    pub source: &'a str,
    /// The typed error a library caller gets (or the outcome, for a fault survived).
    pub error: String,
    /// `egress fetch` / `egress federation` exit code, or the status serve answers.
    pub code: Option<i32>,
    /// How long the library call took to fail.
    pub library: Option<Duration>,
    /// How long the command (or serve's answer) took.
    pub command: Option<Duration>,
}

impl FaultRow<'_> {
    pub fn record(&self) {
        let Some(file) = std::env::var_os("EGRESS_FAULT_TABLE") else {
            return;
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        let test = std::thread::current()
            .name()
            .unwrap_or("?")
            .rsplit("::")
            .next()
            .unwrap_or("?")
            .to_owned();
        let line = serde_json::json!({
            "id": self.id,
            "fault": self.fault,
            "source": self.source,
            "test": format!("{}::{test}", env!("CARGO_CRATE_NAME")),
            "file": test_file(),
            "error": self.error,
            "code": self.code,
            "library_ms": ms(self.library),
            "command_ms": ms(self.command),
        });
        // One write of one line, O_APPEND: rows from parallel tests and
        // test binaries do not interleave.
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .expect("EGRESS_FAULT_TABLE is writable");
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

/// The test binary's source file, from the binary's name (`faults-<hash>`).
fn test_file() -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    let stem = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = stem.rsplit_once('-').map_or(stem.as_str(), |(n, _)| n);
    let krate = if env!("CARGO_PKG_NAME") == "egress" {
        "crates/egress"
    } else {
        "crates/egress-cli"
    };
    format!("{krate}/tests/{name}.rs")
}

/// The name of an `egress::Error`'s variant, with the detail a table needs
/// (the timeout's step, whether a certificate was the proxy's).
pub fn variant(err: &egress::Error) -> String {
    match err {
        egress::Error::Timeout { step, .. } => format!("Timeout {{ step: {step:?} }}"),
        egress::Error::Certificate { is_proxy, .. } => {
            format!("Certificate {{ is_proxy: {is_proxy} }}")
        }
        other if other.proxy_status().is_some() => {
            let debug = format!("{other:?}");
            let name = debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default();
            let status = other.proxy_status().map_or(0, |s| s.as_u16());
            format!("{name} {{ status: {status} }}")
        }
        other => {
            let debug = format!("{other:?}");
            debug
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_owned()
        }
    }
}
