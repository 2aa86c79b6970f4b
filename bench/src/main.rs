//! The Rust side of the benchmark harness (issue 5): drives egress's library
//! and reqwest against the same squid and nginx that `bench/run` starts.
//!
//! ```text
//! egress-bench client --impl egress|reqwest|reqwest+egress --scenario N --concurrency C --requests R
//!                     [--proxy URL] --url URL --ca FILE [--max-seconds S]
//! egress-bench idle   --impl egress|reqwest --proxy URL --url-base https://localhost
//!                     --first-port P --origins 100 --per-origin 100 --ca FILE
//!                     [--proxy-port N] [--hold stdin]
//! ```
//!
//! With `--hold stdin`, `idle` prints its JSON line as soon as the tunnels are
//! open and idle, then keeps them open until its stdin reaches end of file
//! (the harness measures the proxy's memory meanwhile).
//!
//! Both print one JSON object on stdout. Scenarios: 1 `http://` through the
//! proxy (forward, keep-alive), 2 `https://` through CONNECT with pooled
//! tunnels, 3 `https://` with a new tunnel per request (pooling off:
//! `max_idle_per_key(0)` / `pool_max_idle_per_host(0)`), 4 direct (no proxy),
//! 5 direct with a new connection per request (pooling off; the harness
//! points it at HAProxy's `mode tcp` relay, the floor of scenario 3).
//! Only loopback URLs are accepted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        usage("missing subcommand");
    };
    if command == "spawn" {
        spawn(rest);
    }
    let opts = parse_opts(rest);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match command.as_str() {
        "client" => runtime.block_on(client(&opts)),
        "idle" => runtime.block_on(idle(&opts)),
        other => usage(&format!("unknown subcommand {other}")),
    };
    match result {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("egress-bench: {e}");
            std::process::exit(1);
        }
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("egress-bench: {problem}\nusage: egress-bench client|idle --impl egress|reqwest|reqwest+egress ... (see bench/src/main.rs)");
    std::process::exit(2);
}

fn parse_opts(args: &[String]) -> HashMap<String, String> {
    let mut opts = HashMap::new();
    let mut it = args.iter();
    while let Some(name) = it.next() {
        let Some(name) = name.strip_prefix("--") else {
            usage(&format!("unexpected argument {name}"));
        };
        let Some(value) = it.next() else {
            usage(&format!("--{name} needs a value"));
        };
        opts.insert(name.to_owned(), value.clone());
    }
    opts
}

fn opt<'a>(opts: &'a HashMap<String, String>, name: &str) -> &'a str {
    opts.get(name)
        .map(String::as_str)
        .unwrap_or_else(|| usage(&format!("--{name} is required")))
}

fn num(opts: &HashMap<String, String>, name: &str, default: Option<usize>) -> usize {
    match (opts.get(name), default) {
        (Some(v), _) => v
            .parse()
            .unwrap_or_else(|_| usage(&format!("--{name}: not a number: {v}"))),
        (None, Some(d)) => d,
        (None, None) => usage(&format!("--{name} is required")),
    }
}

/// Refuses anything but loopback: the harness never sends traffic elsewhere.
fn check_loopback(url: &str) -> Result<(), BoxError> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    match host {
        "localhost" | "127.0.0.1" | "::1" => Ok(()),
        _ => Err(format!("refusing non-loopback URL {url}").into()),
    }
}

#[derive(Clone, Copy)]
struct Usage {
    cpu_us: u64,
}

fn rusage() -> Usage {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Usage {
        cpu_us: us(ru.ru_utime) + us(ru.ru_stime),
    }
}

/// Peak RSS of this process's own memory (`VmHWM`). Not `ru_maxrss`: Linux
/// carries the pre-`exec` RSS of the forking parent (here the Python
/// orchestrator) into it.
fn vm_hwm_kb() -> u64 {
    status_kb("VmHWM:")
}

fn vm_rss_kb() -> u64 {
    status_kb("VmRSS:")
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// egress's settings for the bench: the proxy as `https_proxy` and
/// `http_proxy`, loopback allowed (it is in the default blocklist of direct
/// routes).
fn egress_settings(proxy: Option<&str>) -> Result<egress::ProxySettings, BoxError> {
    let vars: Vec<(&str, &str)> = match proxy {
        Some(p) => vec![("https_proxy", p), ("http_proxy", p)],
        None => vec![],
    };
    let env = egress::ProxyEnv::from_vars(vars);
    let yaml = egress::HomeserverYaml::parse("ip_range_whitelist: ['127.0.0.0/8', '::1/128']\n")?;
    Ok(egress::ProxySettings::new(&env, Some(&yaml))?)
}

/// `egress+obs`: the Prometheus exporter as the `metrics` recorder (rendered
/// once at the end, as a scrape) and a JSON subscriber at info writing a
/// line per request span (to a sink: the formatting is measured, not the
/// write).
#[cfg(feature = "obs")]
fn observe() -> Result<(), BoxError> {
    use tracing_subscriber::fmt::format::FmtSpan;
    // EGRESS_BENCH_OBS picks a part, to find where the cost is: `metrics`,
    // `spans` (the JSON lines), `spans-fmt` (the default text format, no
    // line per span), `registry` (spans kept, no output: what a layer that
    // formats nothing eagerly, such as an OpenTelemetry exporter's, adds to
    // the registry), `metrics+registry` (the default: a real recorder and a
    // subscriber at info), `metrics+fmt`, `metrics+spans`.
    let part = std::env::var("EGRESS_BENCH_OBS").unwrap_or_default();
    let (metrics_on, spans) = match part.split_once('+') {
        Some(("metrics", spans)) => (true, spans.to_owned()),
        _ if part == "metrics" => (true, String::new()),
        _ if part.is_empty() => (true, "registry".to_owned()),
        _ => (false, part.clone()),
    };
    if metrics_on {
        let buckets: Vec<f64> = (0..15).map(|i| 0.001 * 2f64.powi(i)).collect();
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&buckets)?
            .install_recorder()?;
        let _ = PROMETHEUS.set(handle);
    }
    let info = tracing_subscriber::filter::LevelFilter::INFO;
    match spans.as_str() {
        "spans" => tracing_subscriber::fmt()
            .json()
            .with_max_level(info)
            .with_span_events(FmtSpan::CLOSE)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::sink)
            .init(),
        "spans-fmt" | "fmt" => tracing_subscriber::fmt()
            .with_max_level(info)
            .with_writer(std::io::sink)
            .init(),
        "registry" => {
            use tracing_subscriber::layer::SubscriberExt as _;
            let subscriber = tracing_subscriber::registry().with(info);
            tracing::subscriber::set_global_default(subscriber)?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(feature = "obs")]
static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

#[cfg(not(feature = "obs"))]
fn observe() -> Result<(), BoxError> {
    Err("egress+obs needs egress-bench built with --features obs".into())
}

/// The Prometheus text's line count, for `egress+obs` (rendered once).
fn scrape_lines() -> Option<usize> {
    #[cfg(feature = "obs")]
    return PROMETHEUS.get().map(|h| h.render().lines().count());
    #[cfg(not(feature = "obs"))]
    None
}

/// One of the Rust clients (egress, reqwest, reqwest configured by
/// `egress::reqwest::Routing`), behind one call.
#[derive(Clone)]
enum Impl {
    Egress(egress::Client, egress::Outbound),
    Reqwest(reqwest::Client),
}

impl Impl {
    fn build(name: &str, proxy: Option<&str>, ca: &str, max_idle: usize) -> Result<Impl, BoxError> {
        if let Some(p) = proxy {
            check_loopback(p)?;
        }
        match name {
            "egress" | "egress+obs" => {
                if name == "egress+obs" {
                    observe()?;
                }
                let settings = egress_settings(proxy)?;
                let outbound = egress::Outbound::builder(settings)
                    .add_ca_file(ca)
                    .max_idle_per_key(max_idle)
                    .build()?;
                Ok(Impl::Egress(
                    outbound.client(egress::Purpose::Push),
                    outbound,
                ))
            }
            "reqwest" | "reqwest+egress" => {
                let pem = std::fs::read(ca)?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                    roots.add(cert?)?;
                }
                let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                let mut builder = reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .http1_only()
                    .pool_max_idle_per_host(max_idle);
                if name == "reqwest+egress" {
                    // The same proxy settings as egress's, through the adapter.
                    let routing = egress::reqwest::Routing::new(Arc::new(egress_settings(proxy)?));
                    builder = routing.configure(egress::Purpose::Push, builder);
                } else {
                    builder = builder.no_proxy();
                    if let Some(p) = proxy {
                        builder = builder.proxy(reqwest::Proxy::all(p)?);
                    }
                }
                Ok(Impl::Reqwest(builder.build()?))
            }
            other => Err(format!("--impl: unknown client {other}").into()),
        }
    }

    /// GET `url`, read the whole body; the status must be 200.
    async fn get(&self, url: &str) -> Result<usize, BoxError> {
        self.get_together(url, None).await
    }

    /// As `get`, but with `together`, the body is read only once every
    /// request of the barrier has its response head (or after 10 s): the
    /// connections are all checked out at once, so none is reused by a
    /// request that started late and each request opens a tunnel of its own.
    async fn get_together(
        &self,
        url: &str,
        together: Option<&tokio::sync::Barrier>,
    ) -> Result<usize, BoxError> {
        let wait = || async {
            if let Some(barrier) = together {
                let _ = tokio::time::timeout(Duration::from_secs(10), barrier.wait()).await;
            }
        };
        match self {
            Impl::Egress(client, _) => {
                let response = client.get(url).await?;
                wait().await;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                if status != 200 {
                    return Err(format!("egress: {url}: status {status}").into());
                }
                Ok(body.len())
            }
            Impl::Reqwest(client) => {
                let response = client.get(url).send().await?;
                wait().await;
                let status = response.status();
                let body = response.bytes().await?;
                if status != 200 {
                    return Err(format!("reqwest: {url}: status {status}").into());
                }
                Ok(body.len())
            }
        }
    }
}

async fn client(opts: &HashMap<String, String>) -> Result<serde_json::Value, BoxError> {
    let name = opt(opts, "impl");
    let scenario = num(opts, "scenario", None);
    let concurrency = num(opts, "concurrency", Some(1)).max(1);
    let requests = num(opts, "requests", None).max(1);
    let max_seconds = num(opts, "max-seconds", Some(120));
    let url = opt(opts, "url").to_owned();
    check_loopback(&url)?;
    let proxy = match scenario {
        1..=3 => Some(opt(opts, "proxy")),
        4 | 5 => None,
        n => return Err(format!("--scenario: no scenario {n}").into()),
    };
    let max_idle = if scenario == 3 || scenario == 5 {
        0
    } else {
        concurrency.max(32)
    };
    let client = Impl::build(name, proxy, opt(opts, "ca"), max_idle)?;

    let start_usage = rusage();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(max_seconds as u64);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, next, errors, first_error) = (
            client.clone(),
            url.clone(),
            next.clone(),
            errors.clone(),
            first_error.clone(),
        );
        tasks.spawn(async move {
            let mut done = 0usize;
            // Bounded in count (shared counter) and in time (deadline).
            while next.fetch_add(1, Ordering::Relaxed) < requests && Instant::now() < deadline {
                match tokio::time::timeout_at(deadline.into(), client.get(&url)).await {
                    Ok(Ok(_)) => done += 1,
                    Ok(Err(e)) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                    }
                    Err(_) => break,
                }
            }
            done
        });
    }
    let mut done = 0;
    while let Some(n) = tasks.join_next().await {
        done += n?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let end_usage = rusage();
    let cpu_ms = (end_usage.cpu_us - start_usage.cpu_us) as f64 / 1000.0;
    let errors = errors.load(Ordering::Relaxed);
    let idle = match &client {
        Impl::Egress(_, outbound) => Some(outbound.pool_stats().idle_connections),
        Impl::Reqwest(_) => None,
    };
    let first_error = first_error.lock().unwrap().take();
    let scrape = scrape_lines();
    Ok(serde_json::json!({
        "impl": name,
        "metrics_lines": scrape,
        "scenario": scenario,
        "concurrency": concurrency,
        "requests": done,
        "errors": errors,
        "first_error": first_error,
        "seconds": elapsed,
        "rps": done as f64 / elapsed,
        "cpu_ms": cpu_ms,
        "cpu_ms_per_1000": if done > 0 { cpu_ms * 1000.0 / done as f64 } else { f64::NAN },
        "max_rss_kb": vm_hwm_kb(),
        "idle_pooled": idle,
    }))
}

/// Established TCP connections from this machine to `port` on loopback
/// (the client's side of its tunnels to the proxy's dedicated port).
fn established_to(port: u16) -> usize {
    let mut n = 0;
    for file in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 4 || fields[3] != "01" {
                continue;
            }
            let remote_port = fields[2]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if remote_port == Some(port) {
                n += 1;
            }
        }
    }
    n
}

async fn idle(opts: &HashMap<String, String>) -> Result<serde_json::Value, BoxError> {
    let name = opt(opts, "impl");
    let proxy = opt(opts, "proxy");
    let base = opt(opts, "url-base").to_owned();
    let first_port = num(opts, "first-port", None);
    let origins = num(opts, "origins", Some(100));
    let per_origin = num(opts, "per-origin", Some(100));
    let proxy_port = num(opts, "proxy-port", Some(0)) as u16;
    check_loopback(&base)?;
    let rss_before_client = vm_rss_kb();
    let client = Impl::build(name, Some(proxy), opt(opts, "ca"), per_origin)?;
    let rss_baseline = vm_rss_kb();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(num(opts, "max-seconds", Some(240)) as u64);
    let mut errors = 0usize;
    let mut first_error = None;
    for o in 0..origins {
        let url = format!("{base}:{}/", first_port + o);
        // All requests of an origin in flight at once: each needs its own tunnel.
        let mut tasks = tokio::task::JoinSet::new();
        let together = Arc::new(tokio::sync::Barrier::new(per_origin));
        for _ in 0..per_origin {
            let (client, url, together) = (client.clone(), url.clone(), together.clone());
            tasks.spawn(async move {
                tokio::time::timeout_at(deadline.into(), client.get_together(&url, Some(&together)))
                    .await
            });
        }
        while let Some(r) = tasks.join_next().await {
            match r? {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    errors += 1;
                    first_error.get_or_insert(e.to_string());
                }
                Err(_) => {
                    errors += 1;
                    first_error.get_or_insert("deadline".to_owned());
                }
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    let fill_seconds = started.elapsed().as_secs_f64();
    // Let the connections settle back into the pools.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = vm_rss_kb();
    let idle_pooled = match &client {
        Impl::Egress(_, outbound) => Some(outbound.pool_stats().idle_connections),
        Impl::Reqwest(_) => None,
    };
    let open = if proxy_port > 0 {
        Some(established_to(proxy_port))
    } else {
        None
    };
    let result = serde_json::json!({
        "impl": name,
        "origins": origins,
        "per_origin": per_origin,
        "errors": errors,
        "first_error": first_error,
        "fill_seconds": fill_seconds,
        "rss_kb_at_start": rss_before_client,
        "rss_kb_client_built": rss_baseline,
        "rss_kb": rss,
        "max_rss_kb": vm_hwm_kb(),
        "idle_pooled": idle_pooled,
        "tunnels_open": open,
    });
    if opts.get("hold").map(String::as_str) == Some("stdin") {
        use std::io::Write as _;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{result}")?;
        stdout.flush()?;
        // The tunnels stay in the pool (the client is alive) until stdin closes.
        tokio::task::spawn_blocking(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        })
        .await?;
        drop(client);
    }
    Ok(result)
}

/// `spawn -- CMD ARGS...`: runs CMD (curl), waits for it with `wait4` and
/// prints its exit status, CPU time, peak RSS and wall time as JSON. This small
/// process is the parent so that the child's `ru_maxrss` is not inflated by
/// the big orchestrator's pre-`exec` RSS.
fn spawn(args: &[String]) -> ! {
    // `--keep-stdout`: the child's stdout comes first (wrk's report), then
    // the JSON line; otherwise it goes to /dev/null (curl's bodies).
    let (keep, args) = match args.strip_prefix(&["--keep-stdout".to_owned()]) {
        Some(rest) => (true, rest),
        None => (false, args),
    };
    let args = args.strip_prefix(&["--".to_owned()]).unwrap_or(args);
    let Some((program, rest)) = args.split_first() else {
        usage("spawn: missing command");
    };
    let started = Instant::now();
    let stdout = if keep {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    };
    let child = std::process::Command::new(program)
        .args(rest)
        .stdout(stdout)
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("egress-bench: spawn {program}: {e}");
            std::process::exit(1);
        });
    let mut status = 0;
    // SAFETY: wait4 fills `ru` for the child we started.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    let seconds = started.elapsed().as_secs_f64();
    if pid < 0 {
        eprintln!("egress-bench: wait4: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    println!(
        "{}",
        serde_json::json!({
            "exit": code,
            "seconds": seconds,
            "cpu_ms": (us(ru.ru_utime) + us(ru.ru_stime)) as f64 / 1000.0,
            "max_rss_kb": ru.ru_maxrss,
        })
    );
    std::process::exit(0);
}
