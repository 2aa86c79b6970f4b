//! `egress serve`: a forward proxy that applies a homeserver's IP blocklists
//! after its own DNS resolution, and dials exactly the addresses it checked.
//!
//! Synapse does not apply its IP blocklist to connections through a proxy;
//! its documentation expects the proxy to. This is that proxy, built from the
//! same settings ([`ProxySettings`](crate::ProxySettings), read from homeserver.yaml and the
//! environment) and the same blocklists as egress's clients.
//!
//! * `CONNECT host:port` (HTTP/1.0 without `Host`, as Synapse sends it, or
//!   HTTP/1.1) and absolute-form `http://` requests (bodies streamed both
//!   ways, keep-alive on both sides, hop-by-hop headers removed, `Via` added);
//! * the target is resolved once, every address is checked with Synapse's
//!   rule (one blocked address refuses the name), and the checked address is
//!   dialled, or asked of the parent proxy as `CONNECT ip:port`;
//! * denials answer `403` with `X-Egress-Denied` naming the address, the
//!   range and the setting.
//!
//! ```no_run
//! # async fn run() -> Result<(), egress::serve::ServeError> {
//! use egress::serve::{Listen, ServeConfig, ServePolicy, Server};
//! use egress::{BlocklistKind, ProxyEnv, ProxySettings};
//!
//! let settings = ProxySettings::builder(&ProxyEnv::default()).build().unwrap();
//! let mut config = ServeConfig::default();
//! config.listen = vec![Listen::new("127.0.0.1:3128".parse().unwrap(), BlocklistKind::General)];
//! config.on_request = Some(std::sync::Arc::new(|record| println!("{}", record.to_json())));
//! let server = Server::bind(config, ServePolicy::new(settings)).await?;
//! let handle = server.handle(); // reload() on SIGHUP, shutdown() on SIGTERM
//! server.run().await;
//! # Ok(()) }
//! ```

mod auth;
mod dns;
mod forward;
mod handler;
mod limits;
mod log;
mod memory;
mod metrics;
mod policy;
mod splice;
mod via;

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};

pub use self::auth::Htpasswd;
pub use self::dns::{SYSTEM_CACHE_ENTRIES, SYSTEM_CACHE_TTL};
pub use self::log::{Decision, RequestLog};
pub use self::memory::MemoryTrim;
pub use self::policy::{policy_name, ServePolicy};

use self::dns::Dns;
use self::handler::Active;
use self::metrics::Metrics;
use crate::BlocklistKind;

/// A listening address and the policy its clients get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Listen {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Which blocklist applies: `general` (`ip_range_blacklist`),
    /// `federation` or `url_preview`.
    pub policy: BlocklistKind,
}

impl Listen {
    /// A listener.
    pub fn new(addr: SocketAddr, policy: BlocklistKind) -> Listen {
        Listen { addr, policy }
    }

    /// Parses `ADDR:PORT` or `ADDR:PORT=POLICY` (`general`, `federation`,
    /// `url_preview`).
    pub fn parse(value: &str) -> Result<Listen, String> {
        let (addr, policy) = match value.rsplit_once('=') {
            Some((addr, policy)) => (addr, policy),
            None => (value, "general"),
        };
        let policy = match policy {
            "general" => BlocklistKind::General,
            "federation" => BlocklistKind::Federation,
            "url_preview" | "url-preview" => BlocklistKind::UrlPreview,
            other => {
                return Err(format!(
                    "policy `{other}` is not one of general, federation, url_preview"
                ))
            }
        };
        let addr = addr.parse().map_err(|_| {
            format!("`{addr}` is not ADDR:PORT (an IP address and a port, IPv6 in brackets)")
        })?;
        Ok(Listen { addr, policy })
    }
}

/// How a request is logged: called once per request, when it ends.
pub type OnRequest = Arc<dyn Fn(&RequestLog) + Send + Sync>;

/// The fixed part of `egress serve`'s configuration (the policy is
/// [`ServePolicy`], which can be reloaded).
#[derive(Clone)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Listening addresses (default 127.0.0.1:3128, policy `general`).
    pub listen: Vec<Listen>,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The DNS server to ask instead of the system resolver.
    pub dns_server: Option<SocketAddr>,
    /// Listening on a non-loopback address without client credentials is
    /// refused unless this is set.
    pub allow_open: bool,
    /// Concurrent tunnels and forwarded requests, in all (10,000).
    pub max_tunnels: usize,
    /// Concurrent tunnels and forwarded requests per client address (10,000).
    pub max_tunnels_per_client: usize,
    /// Name resolution, and connecting to the target or parent (15 s).
    pub connect_timeout: Duration,
    /// Reading a request head (10 s); a head must also fit in 64 KiB.
    pub head_timeout: Duration,
    /// A tunnel, or a forwarded body, that moves nothing for this long is
    /// closed (10 minutes).
    pub idle_timeout: Duration,
    /// Waiting for a forwarded request's response head (60 s).
    pub response_timeout: Duration,
    /// Forwarded responses larger than this are cut (none).
    pub max_response_bytes: Option<u64>,
    /// After [`ServeHandle::shutdown`], how long in-flight work may finish (30 s).
    pub drain_timeout: Duration,
    /// Handing freed memory back to the kernel at an interval (none; the
    /// `egress` CLI passes glibc's `malloc_trim` every 60 s).
    pub memory_trim: Option<MemoryTrim>,
    /// Reads how many bytes the allocator has handed out and not got back,
    /// at each `/metrics` scrape, as `egress_serve_heap_in_use_bytes` (none:
    /// the gauge is absent; the `egress` CLI passes glibc's `mallinfo2`). With
    /// the RSS it tells a leak (this grows) from pages the allocator keeps
    /// (only the RSS grows).
    pub heap_in_use: Option<fn() -> u64>,
    /// Called with each request's record.
    pub on_request: Option<OnRequest>,
}

impl fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("listen", &self.listen)
            .field("metrics", &self.metrics)
            .field("dns_server", &self.dns_server)
            .field("allow_open", &self.allow_open)
            .field("max_tunnels", &self.max_tunnels)
            .field("max_tunnels_per_client", &self.max_tunnels_per_client)
            .field("connect_timeout", &self.connect_timeout)
            .field("head_timeout", &self.head_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("drain_timeout", &self.drain_timeout)
            .field("memory_trim", &self.memory_trim)
            .field("heap_in_use", &self.heap_in_use.is_some())
            .finish_non_exhaustive()
    }
}

/// The most a request head may take.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

impl Default for ServeConfig {
    fn default() -> ServeConfig {
        ServeConfig {
            listen: vec![Listen::new(
                SocketAddr::from(([127, 0, 0, 1], 3128)),
                BlocklistKind::General,
            )],
            metrics: None,
            dns_server: None,
            allow_open: false,
            max_tunnels: 10_000,
            max_tunnels_per_client: 10_000,
            connect_timeout: Duration::from_secs(15),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            response_timeout: Duration::from_secs(60),
            max_response_bytes: None,
            drain_timeout: Duration::from_secs(30),
            memory_trim: None,
            heap_in_use: None,
            on_request: None,
        }
    }
}

/// Why serve cannot start (or reload).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A listening address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A non-loopback listener without client credentials.
    #[error(
        "--listen {addr} is not a loopback address and no client credentials are set: \
         anyone who reaches it could use the proxy"
    )]
    OpenProxy {
        /// The address.
        addr: SocketAddr,
    },
    /// The parent proxy is one of serve's own listeners.
    #[error("the parent proxy {upstream} (from {key}) is this server's own listener {listen}")]
    UpstreamIsSelf {
        /// The parent, masked.
        upstream: String,
        /// The setting it came from.
        key: &'static str,
        /// The listener.
        listen: SocketAddr,
    },
    /// No listening address.
    #[error("no --listen address")]
    NoListener,
    /// The htpasswd file cannot be used.
    #[error("htpasswd file {file}: {problem}")]
    Htpasswd {
        /// The file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The DNS server cannot be used.
    #[error("--dns-server {server}: {problem}")]
    Dns {
        /// The server.
        server: SocketAddr,
        /// What is wrong.
        problem: String,
    },
    /// The settings' TLS part (for an `https://` parent proxy) cannot be loaded.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
}

/// Counts connections and tunnels still running, for the drain.
#[derive(Default)]
pub(crate) struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One unit of in-flight work; ends when dropped.
pub(crate) struct Working(Arc<InFlight>);

impl InFlight {
    pub(crate) fn start(self: &Arc<Self>) -> Working {
        self.count.fetch_add(1, Ordering::SeqCst);
        Working(self.clone())
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Working {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What serve's tasks share.
pub(crate) struct State {
    pub(crate) config: ServeConfig,
    pub(crate) active: RwLock<Arc<Active>>,
    pub(crate) dns: Dns,
    pub(crate) metrics: Metrics,
    pub(crate) tunnels: Arc<Semaphore>,
    pub(crate) per_client: Mutex<HashMap<IpAddr, usize>>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// This instance's name in `Via`, and the loop check.
    pub(crate) via: via::Via,
}

impl State {
    pub(crate) fn active(&self) -> Arc<Active> {
        self.active.read().expect("not poisoned").clone()
    }
}

/// A bound `egress serve`, ready to [`run`](Server::run).
pub struct Server {
    listeners: Vec<(TcpListener, BlocklistKind)>,
    metrics: Option<TcpListener>,
    state: Arc<State>,
    shutdown: Arc<watch::Sender<bool>>,
}

/// Reloads the policy and stops a running [`Server`].
#[derive(Clone)]
pub struct ServeHandle {
    state: Arc<State>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl ServeHandle {
    /// Replaces the policy for new requests; open tunnels and requests in
    /// flight keep the one they started with.
    pub fn reload(&self, policy: ServePolicy) -> Result<(), ServeError> {
        let listens: Vec<SocketAddr> = self.state.config.listen.iter().map(|l| l.addr).collect();
        check_policy(&self.state.config, &policy, &listens)?;
        let active = Active::new(&self.state.config, policy)?;
        *self.state.active.write().expect("not poisoned") = Arc::new(active);
        self.state.metrics.reloads.inc();
        tracing::info!("policy reloaded");
        Ok(())
    }

    /// Stops accepting; [`Server::run`] returns once in-flight work is done
    /// or the drain limit passes.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Counts request log lines that the caller's log
    /// ([`ServeConfig::on_request`]) could not keep, for
    /// `egress_serve_log_lines_dropped_total`: a log that drops lines when its
    /// output is too slow says so here, and the loss shows in the metrics.
    pub fn log_lines_dropped(&self, lines: u64) {
        self.state.metrics.log_lines_dropped.inc_by(lines);
    }

    /// Connections and tunnels still open.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.count()
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drained {
    /// Connections and tunnels still open when the drain limit passed
    /// (0: everything finished).
    pub abandoned: usize,
}

fn check_policy(
    config: &ServeConfig,
    policy: &ServePolicy,
    listens: &[SocketAddr],
) -> Result<(), ServeError> {
    if !config.allow_open && !policy.requires_credentials() {
        if let Some(open) = config.listen.iter().find(|l| !l.addr.ip().is_loopback()) {
            return Err(ServeError::OpenProxy { addr: open.addr });
        }
    }
    // A parent that is this server would loop every request. Names are
    // resolved here (at start and on reload) to catch `localhost`, `127.1`
    // and names for serve's own address.
    for (parent, key) in policy.parents() {
        let host = parent.host().to_string();
        let host = crate::proxy_url::unbracket(&host);
        let parent_ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host, parent.port()))
                .map(|addrs| addrs.map(|a| a.ip()).collect())
                .unwrap_or_default(),
        };
        for listen in listens {
            let same_ip = parent_ips
                .iter()
                .any(|ip| *ip == listen.ip() || listen.ip().is_unspecified());
            if same_ip && listen.port() == parent.port() {
                return Err(ServeError::UpstreamIsSelf {
                    upstream: parent.to_string(),
                    key,
                    listen: *listen,
                });
            }
        }
    }
    Ok(())
}

impl Server {
    /// The checks [`Server::bind`] makes, without binding: listeners, open
    /// proxy, a parent that is serve itself, the DNS server, TLS files.
    pub fn check(config: &ServeConfig, policy: &ServePolicy) -> Result<(), ServeError> {
        if config.listen.is_empty() {
            return Err(ServeError::NoListener);
        }
        let listens: Vec<SocketAddr> = config.listen.iter().map(|l| l.addr).collect();
        check_policy(config, policy, &listens)?;
        Dns::new(config.dns_server)?;
        Active::new(config, policy.clone())?;
        Ok(())
    }

    /// Checks the configuration and policy, and binds every listener.
    pub async fn bind(config: ServeConfig, policy: ServePolicy) -> Result<Server, ServeError> {
        if config.listen.is_empty() {
            return Err(ServeError::NoListener);
        }
        let requested: Vec<SocketAddr> = config.listen.iter().map(|l| l.addr).collect();
        check_policy(&config, &policy, &requested)?;
        let dns = Dns::new(config.dns_server)?;
        let active = Active::new(&config, policy)?;
        let mut listeners = Vec::new();
        for listen in &config.listen {
            let listener =
                TcpListener::bind(listen.addr)
                    .await
                    .map_err(|source| ServeError::Bind {
                        addr: listen.addr,
                        source,
                    })?;
            listeners.push((listener, listen.policy));
        }
        let metrics = match config.metrics {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?,
            ),
            None => None,
        };
        // Port 0 listeners now have their real port in the config.
        let mut config = config;
        for (listen, (listener, _)) in config.listen.iter_mut().zip(&listeners) {
            if let Ok(addr) = listener.local_addr() {
                listen.addr = addr;
            }
        }
        let (sender, receiver) = watch::channel(false);
        let counters = Metrics::new(config.heap_in_use);
        let state = Arc::new(State {
            tunnels: Arc::new(Semaphore::new(config.max_tunnels)),
            config,
            active: RwLock::new(Arc::new(active)),
            dns,
            metrics: counters,
            per_client: Mutex::default(),
            in_flight: Arc::default(),
            shutdown: receiver,
            via: via::Via::random(),
        });
        Ok(Server {
            listeners,
            metrics,
            state,
            shutdown: Arc::new(sender),
        })
    }

    /// The bound addresses, with their policies.
    pub fn local_addrs(&self) -> Vec<Listen> {
        self.state.config.listen.clone()
    }

    /// This instance's name in the `Via` header it adds (`egress-` and 8 random
    /// hex digits, new at each start). A request that arrives with this name in
    /// its `Via` has come back through a parent proxy: it is refused with 508
    /// Loop Detected.
    pub fn via_name(&self) -> &str {
        self.state.via.name()
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A handle to reload or stop the server.
    pub fn handle(&self) -> ServeHandle {
        ServeHandle {
            state: self.state.clone(),
            shutdown: self.shutdown.clone(),
        }
    }

    /// Serves until [`ServeHandle::shutdown`], then drains.
    pub async fn run(self) -> Drained {
        let Server {
            listeners,
            metrics,
            state,
            shutdown,
        } = self;
        let mut accepting = Vec::new();
        for (listener, kind) in listeners {
            accepting.push(tokio::spawn(accept_loop(state.clone(), listener, kind)));
        }
        let metrics_task =
            metrics.map(|listener| tokio::spawn(metrics_loop(state.clone(), listener)));
        let trim_task = state
            .config
            .memory_trim
            .filter(|memory| !memory.every.is_zero())
            .map(|memory| tokio::spawn(memory::trim_loop(state.clone(), memory)));
        let mut stop = shutdown.subscribe();
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        // Listeners close as their loops end.
        for task in accepting {
            let _ = task.await;
        }
        tracing::info!(
            in_flight = state.in_flight.count(),
            "stopped accepting; draining"
        );
        let drained = async {
            loop {
                let notified = state.in_flight.idle.notified();
                if state.in_flight.count() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(state.config.drain_timeout, drained).await;
        if let Some(task) = metrics_task {
            task.abort();
        }
        if let Some(task) = trim_task {
            task.abort();
        }
        let abandoned = state.in_flight.count();
        if abandoned > 0 {
            tracing::warn!(abandoned, "drain limit passed; closing what is still open");
        }
        Drained { abandoned }
    }
}

async fn accept_loop(state: Arc<State>, listener: TcpListener, kind: BlocklistKind) {
    let mut stop = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (tcp, client) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let working = state.in_flight.start();
        let state = state.clone();
        tokio::spawn(async move {
            serve_connection(state, tcp, client, kind).await;
            drop(working);
        });
    }
}

async fn serve_connection<IO>(state: Arc<State>, tcp: IO, client: SocketAddr, kind: BlocklistKind)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut stop = state.shutdown.clone();
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let state = service_state.clone();
        async move { Ok::<_, std::convert::Infallible>(handler::handle(state, client, kind, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.head_timeout)
        .max_headers(200)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%client, "client connection ended: {e}");
    }
}

async fn metrics_loop(state: Arc<State>, listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        hyper::Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(http_body_util::Full::new(bytes::Bytes::from(
                                state.metrics.render(),
                            )))
                    } else {
                        hyper::Response::builder()
                            .status(404)
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                b"GET /metrics\n",
                            )))
                    };
                    Ok::<_, std::convert::Infallible>(response.expect("valid response"))
                }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values_parse_with_their_policy() {
        assert_eq!(
            Listen::parse("127.0.0.1:3128").unwrap(),
            Listen::new("127.0.0.1:3128".parse().unwrap(), BlocklistKind::General)
        );
        assert_eq!(
            Listen::parse("[::1]:3129=federation").unwrap().policy,
            BlocklistKind::Federation
        );
        assert!(Listen::parse("127.0.0.1:3128=preview")
            .unwrap_err()
            .contains("`preview`"));
        assert!(Listen::parse("localhost:3128")
            .unwrap_err()
            .contains("ADDR:PORT"));
    }

    #[tokio::test]
    async fn log_lines_the_caller_dropped_are_counted_in_the_metrics() {
        let config = ServeConfig {
            listen: vec![Listen::new(
                "127.0.0.1:0".parse().unwrap(),
                BlocklistKind::General,
            )],
            ..ServeConfig::default()
        };
        let settings = crate::ProxySettings::none();
        let server = Server::bind(config, ServePolicy::new(settings))
            .await
            .unwrap();
        let metrics = || server.state.metrics.render();
        assert!(
            metrics().contains("egress_serve_log_lines_dropped_total 0\n"),
            "{}",
            metrics()
        );
        server.handle().log_lines_dropped(3);
        server.handle().log_lines_dropped(2);
        assert!(
            metrics().contains("egress_serve_log_lines_dropped_total 5\n"),
            "{}",
            metrics()
        );
    }
}
