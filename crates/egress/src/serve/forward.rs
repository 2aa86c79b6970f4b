//! Forwarded `http://` requests: sent to the checked addresses, every one
//! dialled, staggered as a CONNECT's are (or to the parent proxy, naming the
//! first checked address), with
//! the original `Host`, bodies streamed both ways, hop-by-hop headers removed
//! and `Via` added. hyper-util's client pools direct connections per target
//! name and port (each connected to an address checked for that name), and
//! connections to the parent per checked address.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpInfo;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service;

use super::handler::{dial_direct, text, Active, BoxError, Pending, ServeBody, Unreachable};
use super::limits::Slot;
use super::log::Decision;
use super::{ServeConfig, ServePolicy, State, Working};
use crate::connect::authority;
use crate::connect::stream::{ConnectedStream, Stream};
use crate::route::Scheme;
use crate::{Connector, Error, ProxyUrl};

/// Idle pooled connections kept per checked address.
const POOL_PER_ADDRESS: usize = 128;
/// Idle pooled connections are closed after this.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// hyper-util's pooled client, one for direct targets and one through the
/// `http://` parent (when there is one).
pub(crate) struct ForwardClient {
    direct: Client<Dial, UpBody>,
    parent: Option<(ProxyUrl, Client<Dial, UpBody>)>,
}

impl ForwardClient {
    pub(crate) fn new(
        config: &ServeConfig,
        policy: &ServePolicy,
        connector: Connector,
    ) -> ForwardClient {
        let build = |dial: Dial| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_max_idle_per_host(POOL_PER_ADDRESS)
                .pool_timer(TokioTimer::new())
                .build(dial)
        };
        let limit = config.connect_timeout;
        let parent_url = match (&policy.upstream, policy.direct) {
            (Some(upstream), _) => Some(upstream.clone()),
            (None, true) => None,
            (None, false) => policy.settings.http_proxy().cloned(),
        };
        ForwardClient {
            direct: build(Dial {
                parent: None,
                limit,
            }),
            parent: parent_url.map(|proxy| {
                let client = build(Dial {
                    parent: Some((proxy.clone(), connector)),
                    limit,
                });
                (proxy, client)
            }),
        }
    }
}

tokio::task_local! {
    /// The addresses checked for the request being sent: the direct
    /// client's dial races them ([`dial_direct`]). hyper-util calls the dial while
    /// polling `Client::request`, inside this scope.
    static CHECKED: Arc<[IpAddr]>;
}

/// Connects the forwarding client: to the request's checked addresses
/// ([`CHECKED`]; nothing is resolved, and without them nothing is dialled),
/// or to the parent proxy (its address exempt).
#[derive(Clone)]
pub(crate) struct Dial {
    parent: Option<(ProxyUrl, Connector)>,
    limit: Duration,
}

impl Service<Uri> for Dial {
    type Response = TokioIo<ConnectedStream>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        let checked = CHECKED.try_with(Arc::clone);
        Box::pin(async move {
            if let Some((proxy, connector)) = &this.parent {
                let stream = connector.proxy_stream(proxy, this.limit).await?;
                return Ok(TokioIo::new(ConnectedStream {
                    stream,
                    forwarding_proxy: true,
                }));
            }
            let checked = checked.map_err(|_| Error::BadUrl {
                url: uri.to_string(),
                problem: "serve dials checked addresses only, and none came with this one"
                    .to_owned(),
            })?;
            let (tcp, _) = dial_direct(&checked, uri.port_u16().unwrap_or(80), this.limit).await?;
            Ok(TokioIo::new(ConnectedStream {
                stream: Stream::Tcp(tcp),
                forwarding_proxy: false,
            }))
        })
    }
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), and the
/// proxy's own.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn forward(
    state: Arc<State>,
    active: Arc<Active>,
    mut pending: Pending,
    req: Request<Incoming>,
    host: String,
    port: u16,
    addrs: Vec<IpAddr>,
    slot: Slot,
    working: Working,
) -> Response<ServeBody> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let parent = active.policy.parent(Scheme::Http, &host, port);
    // Through the parent, the URL names the first checked address (the
    // parent must not resolve the name again); direct, the name keys the
    // pool and the dial gets the checked addresses from CHECKED.
    let target = match parent {
        Some(_) => authority(&addrs[0].to_string(), port),
        None => authority(&host, port),
    };
    let uri: Uri = match format!("http://{target}{path}").parse() {
        Ok(uri) => uri,
        Err(e) => {
            return fail(
                pending,
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("bad request target: {e}"),
            )
        }
    };
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        let default = port == Scheme::Http.default_port();
        let value = if default {
            host_for_header(&host)
        } else {
            authority(&host, port)
        };
        HeaderValue::from_str(&value).ok()
    });
    strip_hop_by_hop(&mut parts.headers);
    state.via.add(&mut parts.headers, parts.version);
    if let Some(host) = original_host {
        parts.headers.insert(header::HOST, host);
    }
    let client = match (&parent, &active.forward.parent) {
        (Some(_), Some((proxy, client))) => {
            if let Some(credentials) = proxy.credentials() {
                parts.headers.insert(
                    header::PROXY_AUTHORIZATION,
                    credentials.proxy_authorization().clone(),
                );
            }
            pending.record.upstream = Some(proxy.to_string());
            client
        }
        _ => &active.forward.direct,
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let up = Arc::new(AtomicU64::new(0));
    // A request that can be sent again if its connection closes first: kept.
    let again = (idempotent(&parts.method) && body.is_end_stream()).then(|| {
        let mut copy = Request::new(());
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.version_mut() = parts.version;
        *copy.headers_mut() = parts.headers.clone();
        copy
    });
    let request = Request::from_parts(
        parts,
        UpBody {
            inner: Some(body),
            count: up.clone(),
        },
    );
    let through_parent = pending.record.upstream.is_some();
    let addrs: Arc<[IpAddr]> = addrs.into();
    let sent = async {
        let first = CHECKED.scope(addrs.clone(), client.request(request)).await;
        match (first, again) {
            // A pooled connection the target (or parent) closed as idle
            // just as this request went out: nothing was answered, and the
            // request is idempotent and has no body, so it goes once more,
            // on another connection (as squid and browsers do).
            (Err(err), Some(again)) if closed_before_answering(&err) => {
                tracing::debug!(
                    target = %pending.record.target,
                    "the connection closed before an answer ({}); sending the request again",
                    crate::error::chain(&err)
                );
                let (parts, ()) = again.into_parts();
                let request = Request::from_parts(
                    parts,
                    UpBody {
                        inner: None,
                        count: up.clone(),
                    },
                );
                CHECKED.scope(addrs, client.request(request)).await
            }
            (first, _) => first,
        }
    };
    let sent = tokio::time::timeout(state.config.response_timeout, sent).await;
    let response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            pending.record.bytes_up = up.load(Ordering::Relaxed);
            let failure = classify(&err, through_parent);
            return fail(pending, failure.status, failure.label, failure.reason);
        }
        Err(_) => {
            let after = state.config.response_timeout;
            return fail(
                pending,
                StatusCode::GATEWAY_TIMEOUT,
                "response_timeout",
                format!("no response head within {after:?}"),
            );
        }
    };
    let (mut parts, body) = response.into_parts();
    if !through_parent {
        // The address the connection went to (a pooled one may be another
        // checked address of the name than this answer's first).
        if let Some(info) = parts.extensions.get::<HttpInfo>() {
            pending.record.resolved = Some(info.remote_addr());
        }
    }
    if through_parent && parts.status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        return fail(
            pending,
            StatusCode::BAD_GATEWAY,
            "parent_failed",
            "the parent proxy asks for credentials (407): check the user and password in its URL"
                .to_owned(),
        );
    }
    if let (Some(max), Some(length)) = (
        state.config.max_response_bytes,
        content_length(&parts.headers),
    ) {
        if length > max {
            return fail(
                pending,
                StatusCode::BAD_GATEWAY,
                "response_too_large",
                format!("the response is {length} bytes, over --max-response-bytes {max}"),
            );
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    state.via.add(&mut parts.headers, Version::HTTP_11);
    pending.record.status = parts.status.as_u16();
    let status = parts.status;
    let down = DownBody {
        inner: body,
        count: 0,
        limit: state.config.max_response_bytes,
        idle: state.config.idle_timeout,
        sleep: Box::pin(tokio::time::sleep(state.config.idle_timeout)),
        finish: Some(Finish {
            pending,
            up,
            status,
            problem: None,
            _slot: slot,
            _working: working,
        }),
    };
    Response::from_parts(parts, down.boxed())
}

fn host_for_header(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn fail(
    pending: Pending,
    status: StatusCode,
    label: &'static str,
    reason: String,
) -> Response<ServeBody> {
    tracing::debug!(target = %pending.record.target, "{reason}");
    pending.finish(Decision::Failed, label, reason.clone(), status);
    text(status, &reason)
}

/// Sorts the pooled client's error: egress's connection error when the
/// connector failed, else the exchange with the target.
fn classify(err: &hyper_util::client::legacy::Error, through_parent: bool) -> Unreachable {
    let ours = crate::connect::resolve::causes(err)
        .into_iter()
        .find_map(|cause| cause.downcast_ref::<Error>());
    match ours {
        Some(e) => Unreachable::from_error(e, through_parent),
        None => Unreachable {
            status: StatusCode::BAD_GATEWAY,
            label: "exchange_failed",
            reason: format!(
                "the {} closed or broke the exchange: {}",
                if through_parent {
                    "parent proxy"
                } else {
                    "target"
                },
                crate::error::chain(err)
            ),
        },
    }
}

/// Methods a proxy may send again after a connection closed without an
/// answer (RFC 9110 §9.2.2: idempotent; bodiless requests only, see
/// [`forward`]).
fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE].contains(method)
}

/// The exchange failed because the connection closed (or was reset) before
/// any answer came, not because it could not be made.
fn closed_before_answering(err: &hyper_util::client::legacy::Error) -> bool {
    if err.is_connect() {
        return false;
    }
    crate::connect::resolve::causes(err)
        .into_iter()
        .any(|cause| {
            if let Some(h) = cause.downcast_ref::<hyper::Error>() {
                return h.is_incomplete_message() || h.is_canceled();
            }
            cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            })
        })
}

/// The request body on its way up, counted (`None`: a bodiless request sent
/// again).
pub(crate) struct UpBody {
    inner: Option<Incoming>,
    count: Arc<AtomicU64>,
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = &mut self.inner else {
            return Poll::Ready(None);
        };
        let poll = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll {
            if let Some(data) = frame.data_ref() {
                self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// Logs the request when its response body ends (or is dropped).
struct Finish {
    pending: Pending,
    up: Arc<AtomicU64>,
    status: StatusCode,
    problem: Option<(&'static str, String)>,
    _slot: Slot,
    _working: Working,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let (label, reason) = self
            .problem
            .take()
            .unwrap_or(("checked", "checked".to_owned()));
        self.pending.record.bytes_up = self.up.load(Ordering::Relaxed);
        let status = self.status;
        self.pending.log(Decision::Allowed, label, reason, status);
    }
}

/// The response body on its way down: counted, cut at the size limit, and
/// ended when the target sends nothing for the idle limit.
struct DownBody {
    inner: Incoming,
    count: u64,
    limit: Option<u64>,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    finish: Option<Finish>,
}

impl DownBody {
    fn end(&mut self, problem: Option<(&'static str, String)>) {
        if let Some(mut finish) = self.finish.take() {
            finish.pending.record.bytes_down = self.count;
            finish.problem = problem;
        }
    }
}

impl Drop for DownBody {
    /// Dropped before its end (hyper stops at the end on its own only when
    /// the origin's body is complete): the client left mid-response, which
    /// the log says rather than `checked` alone.
    fn drop(&mut self) {
        if self.finish.is_some() && !self.inner.is_end_stream() {
            self.end(Some((
                "client_gone",
                format!(
                    "checked; the client left after {} bytes of the response",
                    self.count
                ),
            )));
        }
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count += data.len() as u64;
                    if let Some(finish) = &mut this.finish {
                        finish.pending.record.bytes_down = this.count;
                    }
                    if let Some(max) = this.limit {
                        if this.count > max {
                            let reason =
                                format!("the response passed --max-response-bytes {max}; cut");
                            this.end(Some(("response_too_large", reason.clone())));
                            return Poll::Ready(Some(Err(reason.into())));
                        }
                    }
                }
                let deadline = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.end(Some((
                    "body_failed",
                    format!("the target's body broke off: {e}"),
                )));
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.end(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    let reason = format!("the target sent nothing for {:?}", this.idle);
                    this.end(Some(("body_idle", reason.clone())));
                    return Poll::Ready(Some(Err(reason.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_via_is_appended() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(
            "proxy-authorization",
            HeaderValue::from_static("Basic Zm9v"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        headers.insert("via", HeaderValue::from_static("1.1 squid"));
        strip_hop_by_hop(&mut headers);
        super::super::via::Via::named("egress-0badcafe").add(&mut headers, Version::HTTP_11);
        let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "via"]);
        assert_eq!(headers["via"], "1.1 squid, 1.1 egress-0badcafe");
    }
}
