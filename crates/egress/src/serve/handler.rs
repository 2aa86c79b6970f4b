//! One request to `egress serve`: credentials, limits, domain globs, one DNS
//! answer checked whole, then a tunnel or a forwarded request to exactly the
//! checked address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::forward::{self, ForwardClient};
use super::limits::{self, Slot};
use super::log::{Decision, RequestLog};
use super::metrics::Metrics;
use super::policy::Denial;
use super::splice::{self, Moved};
use super::{ServeConfig, ServeError, ServePolicy, State, Working};
use crate::connect::dial::{self, Lost};
use crate::connect::resolve::Overrides;
use crate::connect::stream::Stream;
use crate::connect::tls::TlsConfigs;
use crate::connect::{authority, Connector, Shared};
use crate::proxy_url::unbracket;
use crate::route::Scheme;
use crate::{BlocklistKind, Error, ProxyUrl, Purpose, Timeouts};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type ServeBody = BoxBody<Bytes, BoxError>;

/// The policy in force, with what it needs to reach parents and targets.
pub(crate) struct Active {
    pub(crate) policy: ServePolicy,
    /// The parent's connections: TCP (its address exempt), TLS, CONNECT.
    pub(crate) parent: Connector,
    /// Forwarded `http://` requests, pooled per checked address.
    pub(crate) forward: ForwardClient,
}

impl Active {
    pub(crate) fn new(config: &ServeConfig, policy: ServePolicy) -> Result<Active, ServeError> {
        let settings = policy.settings.clone();
        let tls = TlsConfigs::new(settings.tls(), &[])?;
        let timeouts = Timeouts {
            connect: config.connect_timeout,
            federation_connect: config.connect_timeout,
            connect_reply: config.connect_timeout,
            request: config.response_timeout,
            body_idle: config.idle_timeout,
        };
        let shared = Arc::new(Shared::new(settings, tls, timeouts, Overrides::default()));
        let parent = Connector::new(shared, Purpose::Push);
        let forward = ForwardClient::new(config, &policy, parent.clone());
        Ok(Active {
            policy,
            parent,
            forward,
        })
    }
}

/// A request on its way to its log record.
pub(crate) struct Pending {
    pub(crate) state: Arc<State>,
    pub(crate) record: RequestLog,
    pub(crate) start: Instant,
}

impl Pending {
    /// Logs and counts the request.
    pub(crate) fn finish(
        mut self,
        decision: Decision,
        label: &'static str,
        reason: String,
        status: StatusCode,
    ) {
        self.log(decision, label, reason, status);
    }

    /// Logs and counts the request (once: the caller makes sure).
    pub(crate) fn log(
        &mut self,
        decision: Decision,
        label: &'static str,
        reason: String,
        status: StatusCode,
    ) {
        self.record.decision = decision;
        self.record.reason = reason;
        self.record.status = status.as_u16();
        self.record.duration = self.start.elapsed();
        emit(&self.state, &self.record, label);
    }
}

pub(crate) fn emit(state: &State, record: &RequestLog, label: &'static str) {
    state.metrics.count(record.decision.as_str(), label);
    if label == "ip_blocked" {
        state.metrics.refused(super::policy_name(record.policy));
    }
    state.metrics.bytes(record.bytes_up, record.bytes_down);
    if let Some(on_request) = &state.config.on_request {
        on_request(record);
    }
}

/// A short plain-text answer.
pub(crate) fn text(status: StatusCode, body: &str) -> Response<ServeBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{body}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Refuses or fails a request before anything was relayed.
fn reject(
    pending: Pending,
    decision: Decision,
    label: &'static str,
    status: StatusCode,
    reason: String,
) -> Response<ServeBody> {
    let mut response = text(status, &reason);
    match status {
        StatusCode::PROXY_AUTHENTICATION_REQUIRED => {
            response.headers_mut().insert(
                header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"egress\""),
            );
        }
        StatusCode::TOO_MANY_REQUESTS => {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::FORBIDDEN => {
            if let Ok(value) = HeaderValue::from_str(&reason) {
                response.headers_mut().insert("x-egress-denied", value);
            }
        }
        _ => {}
    }
    if decision == Decision::Denied {
        tracing::debug!(target = %pending.record.target, client = %pending.record.client, "denied: {reason}");
    } else {
        tracing::debug!(target = %pending.record.target, "{reason}");
    }
    pending.finish(decision, label, reason, status);
    response
}

/// What the client asked for.
struct Asked {
    host: String,
    port: u16,
}

fn asked(req: &Request<Incoming>) -> Result<Asked, String> {
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        let authority = uri
            .authority()
            .ok_or("CONNECT needs host:port".to_owned())?;
        let port = authority
            .port_u16()
            .ok_or_else(|| format!("CONNECT {authority}: the port is missing"))?;
        return Ok(Asked {
            host: unbracket(authority.host()).to_owned(),
            port,
        });
    }
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(s) if s.eq_ignore_ascii_case("https") => {
            return Err("https:// URLs go through CONNECT, not as forwarded requests".to_owned())
        }
        Some(other) => return Err(format!("scheme `{other}` is not served: only http:// and CONNECT")),
        None => {
            return Err(
                "this is a forward proxy: send absolute-form requests (GET http://host/path) or CONNECT"
                    .to_owned(),
            )
        }
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no host")?;
    Ok(Asked {
        host: unbracket(host).to_owned(),
        port: uri.port_u16().unwrap_or(80),
    })
}

/// `Some(problem)` when the client's Basic credentials are missing or wrong.
async fn credentials_problem(
    policy: &ServePolicy,
    req: &Request<Incoming>,
) -> Option<&'static str> {
    let users = policy.users.as_ref()?;
    let Some(value) = req.headers().get(header::PROXY_AUTHORIZATION) else {
        return Some("proxy credentials required");
    };
    let decoded = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
        })
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
        return Some("proxy credentials are not Basic user:password");
    };
    if users.known(user, password) {
        return None;
    }
    let (users, user, password) = (users.clone(), user.to_owned(), password.to_owned());
    let ok = tokio::task::spawn_blocking(move || users.check(&user, &password))
        .await
        .unwrap_or(false);
    (!ok).then_some("wrong proxy user name or password")
}

pub(crate) async fn handle(
    state: Arc<State>,
    client: SocketAddr,
    kind: BlocklistKind,
    mut req: Request<Incoming>,
) -> Response<ServeBody> {
    let active = state.active();
    let target = if req.method() == Method::CONNECT {
        req.uri().to_string()
    } else {
        crate::mask_password(&req.uri().to_string())
    };
    let pending = Pending {
        record: RequestLog {
            time: SystemTime::now(),
            client,
            policy: kind,
            method: req.method().to_string(),
            target,
            resolved: None,
            decision: Decision::Denied,
            reason: String::new(),
            upstream: None,
            status: 0,
            bytes_up: 0,
            bytes_down: 0,
            duration: Duration::ZERO,
        },
        start: Instant::now(),
        state: state.clone(),
    };
    if let Some(problem) = credentials_problem(&active.policy, &req).await {
        return reject(
            pending,
            Decision::Denied,
            "credentials",
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            problem.to_owned(),
        );
    }
    if let Some(via) = state.via.loop_in(req.headers()) {
        return reject(
            pending,
            Decision::Denied,
            "loop",
            StatusCode::LOOP_DETECTED,
            format!(
                "forwarding loop: this request has already passed through this proxy \
                 ({} in Via: {via}); a parent proxy sends it back here",
                state.via.name()
            ),
        );
    }
    let asked = match asked(&req) {
        Ok(asked) => asked,
        Err(problem) => {
            return reject(
                pending,
                Decision::Denied,
                "bad_request",
                StatusCode::BAD_REQUEST,
                problem,
            )
        }
    };
    let slot = match limits::acquire(&state, client.ip()) {
        Ok(slot) => slot,
        Err(full) => {
            return reject(
                pending,
                Decision::Denied,
                "limit",
                StatusCode::TOO_MANY_REQUESTS,
                full.to_string(),
            )
        }
    };
    let working = state.in_flight.start();
    let mut pending = pending;
    let addrs = match checked_addresses(&state, &active, kind, &asked).await {
        Ok(addrs) => addrs,
        Err(Refusal::Denied(denial)) => {
            return reject(
                pending,
                Decision::Denied,
                denial.label(),
                StatusCode::FORBIDDEN,
                denial.to_string(),
            )
        }
        Err(Refusal::Dns(problem)) => {
            return reject(
                pending,
                Decision::Failed,
                "dns_failure",
                StatusCode::BAD_GATEWAY,
                problem,
            )
        }
    };
    if req.method() == Method::CONNECT {
        let on_upgrade = hyper::upgrade::on(&mut req);
        // Only a CONNECT through a parent passes a Via on.
        let via = active
            .policy
            .parent(Scheme::Https, &asked.host, asked.port)
            .and_then(|_| state.via.onward(req.headers(), req.version()));
        connect(
            state, active, pending, asked, addrs, via, slot, working, on_upgrade,
        )
        .await
    } else {
        pending.record.resolved = Some(SocketAddr::new(addrs[0], asked.port));
        forward::forward(
            state, active, pending, req, asked.host, asked.port, addrs, slot, working,
        )
        .await
    }
}

enum Refusal {
    Denied(Denial),
    Dns(String),
}

/// The domain globs, then one DNS answer (or the literal) checked whole.
async fn checked_addresses(
    state: &State,
    active: &Active,
    kind: BlocklistKind,
    asked: &Asked,
) -> Result<Vec<IpAddr>, Refusal> {
    let literal = asked.host.parse::<IpAddr>().ok();
    if literal.is_none() || !active.policy.allow_domains.is_empty() {
        active
            .policy
            .check_domain(&asked.host)
            .map_err(Refusal::Denied)?;
    }
    let addrs = match literal {
        Some(ip) => vec![ip],
        None => {
            let started = Instant::now();
            let answer = state
                .dns
                .lookup(&asked.host, state.config.connect_timeout)
                .await;
            Metrics::observe(&state.metrics.dns_seconds, started.elapsed());
            answer.map_err(|e| Refusal::Dns(format!("cannot resolve {}: {e}", asked.host)))?
        }
    };
    active
        .policy
        .check_addresses(kind, &addrs)
        .map_err(Refusal::Denied)?;
    Ok(addrs)
}

/// A failure to reach a checked target: status, label, reason.
pub(crate) struct Unreachable {
    pub(crate) status: StatusCode,
    pub(crate) label: &'static str,
    pub(crate) reason: String,
}

impl Unreachable {
    /// Sorts egress's connection errors.
    pub(crate) fn from_error(err: &Error, through_parent: bool) -> Unreachable {
        let (status, label) = match err {
            Error::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "connect_timeout"),
            Error::Connect { .. } if !through_parent => (StatusCode::BAD_GATEWAY, "connect_failed"),
            _ if through_parent => (StatusCode::BAD_GATEWAY, "parent_failed"),
            _ => (StatusCode::BAD_GATEWAY, "connect_failed"),
        };
        Unreachable {
            status,
            label,
            reason: err.to_string(),
        }
    }
}

/// The checked addresses with the port, in dialling order (RFC 8305 §4:
/// address families interleaved, the first answer's family first).
fn dial_order(addrs: &[IpAddr], port: u16) -> Vec<SocketAddr> {
    let addrs: Vec<SocketAddr> = addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
    dial::interleave(&addrs)
}

/// `a, b, c` for a message.
fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Connects to the first checked address that answers: every one tried,
/// staggered ([`dial`]), the whole race within the limit.
pub(crate) async fn dial_direct(
    addrs: &[IpAddr],
    port: u16,
    limit: Duration,
) -> Result<(TcpStream, SocketAddr), Error> {
    let order = dial_order(addrs, port);
    let deadline = tokio::time::Instant::now() + limit;
    match dial::tcp(&order, deadline).await {
        Ok(won) => Ok(won),
        Err(Lost::TimedOut { waiting, .. }) => Err(Error::Timeout {
            step: crate::TimeoutStep::Connect,
            peer: list(if waiting.is_empty() { &order } else { &waiting }),
            after: limit,
        }),
        Err(lost) => Err(match lost.last_failure() {
            Some((addr, source)) => Error::Connect {
                target: addr.to_string(),
                source,
            },
            None => Error::Connect {
                target: format!("port {port}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no checked address to connect to",
                ),
            },
        }),
    }
}

/// `CONNECT ip:port` through the parent for the first checked address whose
/// tunnel opens: each attempt its own connection to the parent, staggered
/// like a direct dial ([`dial`]), the whole race within the limit. An error
/// reply that is the address's (502, 503, 504: the parent could not reach
/// it) starts the next attempt at once; any other failure is the parent's
/// and ends the race.
async fn dial_parent(
    active: &Active,
    proxy: &ProxyUrl,
    key: &'static str,
    addrs: &[IpAddr],
    port: u16,
    via: Option<&HeaderValue>,
    limit: Duration,
) -> Result<(Stream, SocketAddr), Error> {
    let order = dial_order(addrs, port);
    let deadline = tokio::time::Instant::now() + limit;
    let attempt = |addr: SocketAddr| async move {
        let stream = active.parent.proxy_stream(proxy, limit).await?;
        let target = authority(&addr.ip().to_string(), addr.port());
        let tunnel = active.parent.tunnel(stream, proxy, key, &target, via).await;
        if let Err(e) = &tunnel {
            tracing::debug!("through {proxy}: {e}");
        }
        tunnel
    };
    let address_failed = |e: &Error| matches!(e, Error::ProxyUnreachable { .. });
    match dial::race(&order, deadline, attempt, |e| !address_failed(e)).await {
        Ok(won) => Ok(won),
        Err(Lost::TimedOut { waiting, .. }) => Err(Error::Timeout {
            step: crate::TimeoutStep::Connect,
            peer: format!(
                "{} through proxy {proxy}",
                list(if waiting.is_empty() { &order } else { &waiting })
            ),
            after: limit,
        }),
        Err(lost) => Err(match lost.last_failure() {
            Some((_, e)) => e,
            None => Error::Connect {
                target: format!("port {port} through proxy {proxy}"),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no checked address to connect to",
                ),
            },
        }),
    }
}

/// Opens the tunnel's far end: a checked address directly, or through the
/// parent asked for `CONNECT ip:port` with `via`.
async fn open(
    state: &State,
    active: &Active,
    asked: &Asked,
    addrs: &[IpAddr],
    via: Option<&HeaderValue>,
) -> Result<(Stream, SocketAddr, Option<String>), Unreachable> {
    let limit = state.config.connect_timeout;
    let started = Instant::now();
    let result = match active.policy.parent(Scheme::Https, &asked.host, asked.port) {
        None => dial_direct(addrs, asked.port, limit)
            .await
            .map(|(tcp, addr)| (Stream::Tcp(tcp), addr, None))
            .map_err(|e| Unreachable::from_error(&e, false)),
        Some((proxy, key)) => dial_parent(active, proxy, key, addrs, asked.port, via, limit)
            .await
            .map(|(stream, addr)| (stream, addr, Some(proxy.to_string())))
            .map_err(|e| Unreachable::from_error(&e, true)),
    };
    Metrics::observe(&state.metrics.connect_seconds, started.elapsed());
    result
}

#[allow(clippy::too_many_arguments)]
async fn connect(
    state: Arc<State>,
    active: Arc<Active>,
    mut pending: Pending,
    asked: Asked,
    addrs: Vec<IpAddr>,
    via: Option<HeaderValue>,
    slot: Slot,
    working: Working,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Response<ServeBody> {
    let (stream, addr, upstream) = match open(&state, &active, &asked, &addrs, via.as_ref()).await {
        Ok(opened) => opened,
        Err(failure) => {
            pending.record.resolved = Some(SocketAddr::new(addrs[0], asked.port));
            return reject(
                pending,
                Decision::Failed,
                failure.label,
                failure.status,
                failure.reason,
            );
        }
    };
    pending.record.resolved = Some(addr);
    pending.record.upstream = upstream;
    let idle = state.config.idle_timeout;
    tokio::spawn(async move {
        let _working = working;
        let _slot = slot;
        let upgraded = match tokio::time::timeout(state.config.head_timeout, on_upgrade).await {
            Ok(Ok(upgraded)) => upgraded,
            _ => {
                pending.finish(
                    Decision::Allowed,
                    "client_gone",
                    "the client left before the tunnel opened".to_owned(),
                    StatusCode::OK,
                );
                return;
            }
        };
        state.metrics.active_tunnels.inc();
        let moved = Arc::new(Moved::default());
        let end = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // What the client sent after its CONNECT head, read with it:
                // the tunnel's first bytes up, whatever the far end is.
                let early = parts.read_buf;
                let client = parts.io.into_inner();
                let mut target = stream;
                let written = target.write_all(&early).await;
                if written.is_ok() {
                    moved
                        .up
                        .fetch_add(early.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                // Not kept for the tunnel's life: an empty slice may still
                // hold hyper's whole read buffer.
                drop(early);
                match (written, target) {
                    (Ok(()), Stream::Tcp(target)) => {
                        splice::tcp(client, target, idle, &moved).await
                    }
                    (Ok(()), target) => splice::streams(client, target, idle, moved.clone()).await,
                    (Err(e), _) => splice::End::Error(e.kind()),
                }
            }
            Err(upgraded) => {
                splice::streams(TokioIo::new(upgraded), stream, idle, moved.clone()).await
            }
        };
        state.metrics.active_tunnels.dec();
        pending.record.bytes_up = moved.up.load(std::sync::atomic::Ordering::Relaxed);
        pending.record.bytes_down = moved.down.load(std::sync::atomic::Ordering::Relaxed);
        pending.finish(
            Decision::Allowed,
            "checked",
            format!("checked; tunnel {}", end.describe()),
            StatusCode::OK,
        );
    });
    Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    )
}
