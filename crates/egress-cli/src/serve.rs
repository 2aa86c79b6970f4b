//! `egress serve`: the forward proxy that applies the homeserver's IP
//! blocklists after its own DNS resolution.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress::serve::{
    policy_name, Htpasswd, Listen, MemoryTrim, ServeConfig, ServeError, ServeHandle, ServePolicy,
    Server,
};
use egress::ProxyUrl;
use serde_json::json;

use crate::log_writer::LogWriter;
use crate::{exit, ConfigArgs};

/// Run a forward proxy for a homeserver that applies its IP blocklist.
///
/// Synapse does not apply its IP blocklist to requests it sends through a
/// proxy; its documentation expects the proxy to. `egress serve` is that
/// proxy: it reads the same homeserver.yaml, resolves each target itself,
/// refuses the whole name if any address is blocked (Synapse's rule, with
/// the allowlist holes and the IPv4-mapped, compatible and 6to4 forms), and
/// connects to exactly the address it checked.
///
/// Point the homeserver at it: give the homeserver https_proxy and
/// http_proxy set to http://127.0.0.1:3128 (and keep its no_proxy for workers
/// and local services), and run serve with the same homeserver.yaml.
///
/// One JSON line per request goes to stdout (a tunnel's line when it
/// closes); diagnostics go to stderr (RUST_LOG=debug for more). SIGHUP
/// re-reads homeserver.yaml and the htpasswd file without closing open
/// tunnels (listeners, limits and flags stay as started); SIGTERM or SIGINT
/// stops accepting and lets in-flight work finish (up to --drain-timeout).
///
/// Answers: 403 with X-Egress-Denied when refused ("10.0.0.5 is in
/// 10.0.0.0/8 of ip_range_blacklist"), 407 without valid credentials, 429
/// over a limit, 502 when the name does not resolve or the target refuses,
/// 504 when connecting times out.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  egress serve --config homeserver.yaml --check
  egress serve --config homeserver.yaml --listen 127.0.0.1:3128 --metrics 127.0.0.1:9128
  egress serve --listen 127.0.0.1:3128 --listen 127.0.0.1:3129=url_preview
  egress serve --config homeserver.yaml --upstream http://user:pass@corp-proxy:8080

Exit status: 0 after a clean stop (or a valid --check), 78 for a configuration
error, 1 when a listener cannot be bound.")]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,

    /// Where to listen, with the policy its clients get: general
    /// (ip_range_blacklist), federation or url_preview. Repeatable.
    #[arg(long, value_name = "ADDR:PORT[=POLICY]", default_value = "127.0.0.1:3128", value_parser = Listen::parse)]
    listen: Vec<Listen>,

    /// Parent proxy for every target (instead of http_proxy / https_proxy from
    /// the environment or homeserver.yaml). Targets are checked first and the
    /// parent is asked for the checked address, never the name.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,

    /// Connect to every target directly: ignore http_proxy / https_proxy from
    /// the environment and homeserver.yaml (they are often meant for the
    /// homeserver, pointing at serve itself).
    #[arg(long, conflicts_with = "upstream")]
    direct: bool,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,

    /// Validate the configuration, print the effective policy and exit (0, or 78).
    #[arg(long)]
    check: bool,

    /// With --check: print the policy as JSON.
    #[arg(long)]
    json: bool,

    /// Require client Basic credentials from this htpasswd file (bcrypt or apr1).
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,

    /// Allow listening on a non-loopback address without --htpasswd.
    #[arg(long)]
    allow_open: bool,

    /// Ask this DNS server (ADDR:PORT) instead of the system resolver.
    #[arg(long, value_name = "ADDR:PORT")]
    dns_server: Option<SocketAddr>,

    /// Serve only names matching one of these globs (*.example.com). Repeatable.
    #[arg(long, value_name = "GLOB")]
    allow_domain: Vec<String>,

    /// Refuse names matching one of these globs. Repeatable.
    #[arg(long, value_name = "GLOB")]
    deny_domain: Vec<String>,

    /// Concurrent tunnels and forwarded requests, in all.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_tunnels: usize,

    /// Concurrent tunnels and forwarded requests per client address.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_tunnels_per_client: usize,

    /// Time to resolve and connect to a target or the parent (10, 10s, 500ms, 2m).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// Time a client has to send a request head (at most 64 KiB).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    head_timeout: Duration,

    /// Close a tunnel (or forwarded body) that moves nothing for this long.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Time to wait for a forwarded request's response head.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    response_timeout: Duration,

    /// Cut forwarded responses larger than this many bytes.
    #[arg(long, value_name = "BYTES")]
    max_response_bytes: Option<u64>,

    /// After SIGTERM, how long in-flight work may finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// How often freed memory is handed back to the kernel (glibc's
    /// malloc_trim; each trim is counted in egress_serve_memory_trims_total).
    /// Without it RSS stays at the high-water mark of the busiest minute; 0
    /// turns it off.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    memory_trim_interval: Duration,

    /// Threads that carry traffic. The default, 1, is the least CPU per
    /// request (no work stealing, no wake-ups across threads) and carried
    /// about 19,000 requests a second through pooled tunnels on the
    /// benchmark machine; give more (up to one per core) only when one core
    /// is not enough. Password checks and DNS lookups run on their own
    /// threads either way.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
}

/// `10`, `10s`, `500ms`, `2m`, `1h`.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{value}` is not a duration such as 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("`{value}`: the unit must be ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{value}`: {e}"))
}

impl Args {
    /// The policy from the settings (environment + homeserver.yaml) and the
    /// flags: read at start and on every SIGHUP.
    fn policy(&self) -> Result<ServePolicy, String> {
        let settings =
            self.config
                .settings()
                .map_err(|e| match crate::advice::serve_config_hint(&e) {
                    Some(hint) => format!("configuration error: {e}\nhint: {hint}"),
                    None => format!("configuration error: {e}"),
                })?;
        let upstream = self
            .upstream
            .as_deref()
            .map(|url| {
                ProxyUrl::parse(url)
                    .map_err(|e| format!("--upstream `{}`: {e}", egress::mask_password(url)))
            })
            .transpose()?;
        let users = self
            .htpasswd
            .as_deref()
            .map(Htpasswd::read)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(ServePolicy::new(settings)
            .upstream(upstream)
            .direct(self.direct)
            .allow_domains(&self.allow_domain)
            .deny_domains(&self.deny_domain)
            .credentials(users))
    }

    fn serve_config(&self) -> ServeConfig {
        let mut config = ServeConfig::default();
        config.listen = self.listen.clone();
        config.metrics = self.metrics;
        config.dns_server = self.dns_server;
        config.allow_open = self.allow_open;
        config.max_tunnels = self.max_tunnels;
        config.max_tunnels_per_client = self.max_tunnels_per_client;
        config.connect_timeout = self.connect_timeout;
        config.head_timeout = self.head_timeout;
        config.idle_timeout = self.idle_timeout;
        config.response_timeout = self.response_timeout;
        config.max_response_bytes = self.max_response_bytes;
        config.drain_timeout = self.drain_timeout;
        config.memory_trim = memory_trim(self.memory_trim_interval);
        config.heap_in_use = heap_in_use();
        config
    }
}

/// glibc's `malloc_trim(0)` every `every` (none when 0, or without glibc).
fn memory_trim(every: Duration) -> Option<MemoryTrim> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trim() -> bool {
        // SAFETY: malloc_trim only hands free memory back to the kernel; it
        // has no preconditions and takes the arenas' own locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return (!every.is_zero()).then(|| MemoryTrim::new(every, trim));
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = every;
        None
    }
}

/// glibc's count of the bytes its allocator has handed out and not got back
/// (`mallinfo2`: in the arenas, and in blocks mapped on their own), for
/// `egress_serve_heap_in_use_bytes` (none without glibc).
fn heap_in_use() -> Option<fn() -> u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn read() -> u64 {
        // SAFETY: mallinfo2 only reads the allocator's statistics, under the
        // arenas' own locks; it has no preconditions (glibc 2.33 and later).
        let info = unsafe { libc::mallinfo2() };
        (info.uordblks + info.hblkhd) as u64
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    return Some(read);
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

/// Builds the runtime and serves until SIGTERM.
pub fn main(args: Args) -> ExitCode {
    // One thread: a current-thread runtime (no work stealing, no
    // cross-thread wake-ups: the least CPU per request, as squid's one
    // process). More: tokio's multi-threaded runtime.
    let mut builder = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(threads));
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("egress serve: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let policy = match args.policy() {
        Ok(policy) => policy,
        Err(e) => {
            eprintln!("egress serve: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let mut config = args.serve_config();
    if args.check {
        return check(&args, &config, &policy);
    }
    // Lines are gathered and written by a thread of their own (every
    // 200 ms or at 64 KiB): a request never waits for stdout, and one
    // write per request was a third of serve's system calls.
    let log = match LogWriter::start(std::io::stdout()) {
        Ok(log) => Arc::new(log),
        Err(e) => {
            eprintln!("egress serve: cannot start the request log's thread: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    // A line the log cannot keep is counted in the metrics
    // (egress_serve_log_lines_dropped_total) through the server's handle,
    // known once bound; the slot is emptied at the end (the handle holds
    // the server, which holds this closure).
    let counter: Arc<Mutex<Option<ServeHandle>>> = Arc::default();
    let sink = log.clone();
    let count_drop = counter.clone();
    config.on_request = Some(Arc::new(move |record| {
        if !sink.line(&record.to_json()) {
            if let Some(handle) = &*count_drop.lock().unwrap_or_else(|e| e.into_inner()) {
                handle.log_lines_dropped(1);
            }
        }
    }));
    let server = match Server::bind(config, policy).await {
        Ok(server) => server,
        Err(e @ ServeError::Bind { .. }) => {
            eprintln!("egress serve: {e}");
            return ExitCode::from(exit::FAILURE);
        }
        Err(e) => {
            eprintln!("egress serve: {e}{}", hint(&e));
            return ExitCode::from(exit::CONFIG);
        }
    };
    for listen in server.local_addrs() {
        tracing::info!(
            "listening on {} (policy {})",
            listen.addr,
            policy_name(listen.policy)
        );
    }
    if let Some(addr) = server.metrics_addr() {
        tracing::info!("metrics on http://{addr}/metrics");
    }
    tracing::info!(
        "Via name {} (a request that comes back with it is a forwarding loop: 508)",
        server.via_name()
    );
    let listening: Vec<String> = server
        .local_addrs()
        .iter()
        .map(|l| format!("{} ({})", l.addr, policy_name(l.policy)))
        .collect();
    let handle = server.handle();
    *counter.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle.clone());
    // The handlers first: a SIGHUP that comes right after READY=1 (systemctl
    // reload) would otherwise find the default action, which ends serve.
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    // Every listener is bound: connections queue from here on.
    crate::notify::ready(&format!("listening on {}", listening.join(", ")));
    let signals = tokio::spawn(async move {
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    crate::notify::reloading();
                    let failed = match args.policy() {
                        Ok(policy) => handle
                            .reload(policy)
                            .err()
                            .map(|e| format!("reload refused, the previous policy stays: {e}")),
                        Err(e) => Some(format!("reload failed, the previous policy stays: {e}")),
                    };
                    if let Some(why) = &failed {
                        tracing::error!("{why}");
                    }
                    crate::notify::reloaded(failed.as_deref().unwrap_or("reloaded"));
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        tracing::info!(
            in_flight = handle.in_flight(),
            "stopping: no new connections; draining"
        );
        crate::notify::stopping();
        handle.shutdown();
    });
    let drained = server.run().await;
    signals.abort();
    counter.lock().unwrap_or_else(|e| e.into_inner()).take();
    log.finish();
    if drained.abandoned > 0 {
        tracing::warn!(
            "{} connections closed at the drain limit",
            drained.abandoned
        );
    }
    ExitCode::SUCCESS
}

fn hint(err: &ServeError) -> &'static str {
    match err {
        ServeError::OpenProxy { .. } => {
            "\nhint: add --htpasswd FILE, listen on 127.0.0.1, or pass --allow-open if a firewall \
             already limits who can connect"
        }
        ServeError::UpstreamIsSelf { .. } => {
            "\nhint: serve reads http_proxy / https_proxy too; unset them in serve's environment \
             (they are meant for the homeserver), pass --direct, or give the real parent with \
             --upstream"
        }
        _ => "",
    }
}

fn check(args: &Args, config: &ServeConfig, policy: &ServePolicy) -> ExitCode {
    // The checks `bind` makes, without binding.
    let problem = Server::check(config, policy).err();
    let kinds: Vec<_> = config.listen.iter().map(|l| l.policy).collect();
    if args.json {
        let listeners: Vec<_> = config
            .listen
            .iter()
            .map(|l| {
                let list = policy.blocklist(l.policy);
                json!({
                    "listen": l.addr.to_string(),
                    "policy": policy_name(l.policy),
                    "blocklist": list.name(),
                    "ranges": list.ranges().map(|r| r.to_string()).collect::<Vec<_>>(),
                    "allowed": list.allowed_ranges().map(|r| r.to_string()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = json!({
            "ok": problem.is_none(),
            "error": problem.as_ref().map(|e| e.to_string()),
            "listeners": listeners,
            "policy": policy.describe(&kinds).lines().collect::<Vec<_>>(),
            "limits": {
                "max_tunnels": config.max_tunnels,
                "max_tunnels_per_client": config.max_tunnels_per_client,
                "connect_timeout_s": config.connect_timeout.as_secs_f64(),
                "head_timeout_s": config.head_timeout.as_secs_f64(),
                "idle_timeout_s": config.idle_timeout.as_secs_f64(),
                "max_response_bytes": config.max_response_bytes,
            },
        });
        println!("{out:#}");
    } else {
        for l in &config.listen {
            println!("listen {} (policy {})", l.addr, policy_name(l.policy));
        }
        print!("{}", policy.describe(&kinds));
        println!(
            "limits: {} tunnels, {} per client; connect {:?}, head {:?}, idle {:?}{}",
            config.max_tunnels,
            config.max_tunnels_per_client,
            config.connect_timeout,
            config.head_timeout,
            config.idle_timeout,
            config
                .max_response_bytes
                .map(|m| format!(", responses up to {m} bytes"))
                .unwrap_or_default()
        );
        if let Some(e) = &problem {
            eprintln!("egress serve: {e}{}", hint(e));
        } else {
            println!("configuration OK");
        }
    }
    match problem {
        None => ExitCode::SUCCESS,
        Some(_) => ExitCode::from(exit::CONFIG),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("2 weeks").unwrap_err().contains("unit"));
        assert!(parse_duration("fast")
            .unwrap_err()
            .contains("not a duration"));
    }
}
