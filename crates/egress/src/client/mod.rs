//! Pooled HTTP/1.1 clients, one per purpose, on top of the connectors.
//!
//! Every request, and every redirect hop, is routed by [`Route::decide`]
//! and connected by the purpose's [`Connector`](crate::Connector): the
//! blocklist, the proxy rules and the TLS policy cannot be skipped.

mod body;
mod outbound;
mod pool;
mod redirect;
mod span;

use bytes::Bytes;
use http::header::{HeaderValue, HOST, PROXY_AUTHORIZATION};
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

pub use self::body::Body;
pub use self::outbound::{Outbound, OutboundBuilder};
pub use self::pool::PoolStats;
pub use self::redirect::MAX_REDIRECTS;

use self::body::Return;
use self::pool::PoolKey;
use crate::connect::{authority, target_of, Target};
use crate::instruments::{Meter, RouteKind};
use crate::purpose::TlsKind;
use crate::{Error, Purpose, Route, TimeoutStep};

/// The request body type: a whole body in memory.
pub type RequestBody = Full<Bytes>;

/// A client for one purpose. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    outbound: Outbound,
    purpose: Purpose,
    max_redirects: usize,
}

impl Client {
    pub(crate) fn new(outbound: Outbound, purpose: Purpose) -> Client {
        Client {
            outbound,
            purpose,
            max_redirects: 0,
        }
    }

    /// The purpose whose rules this client applies.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// Follows up to `max` redirects (at most [`MAX_REDIRECTS`]); every hop is
    /// routed and checked anew.
    #[must_use]
    pub fn follow_redirects(mut self, max: usize) -> Client {
        self.max_redirects = max.min(MAX_REDIRECTS);
        self
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Response<Body>, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| Error::BadUrl {
                url: url.to_owned(),
                problem: e.to_string(),
            })?;
        let request = Request::get(uri)
            .body(RequestBody::default())
            .expect("a GET request with a parsed URI is valid");
        self.send(request).await
    }

    /// Sends a request, following redirects if enabled, within the request
    /// time limit (up to the response headers).
    pub async fn send(&self, request: Request<RequestBody>) -> Result<Response<Body>, Error> {
        let uri = request.uri().clone();
        let peer = move || {
            uri.authority()
                .map_or_else(|| uri.to_string(), |a| a.to_string())
        };
        let deadline = self.deadline();
        self.within_limit(peer, deadline, self.send_following(request, deadline))
            .await
    }

    /// Sends a request to `host:port` instead of the URL's authority, as
    /// federation does for SRV targets: TLS verification, SNI and `Host` still
    /// use the URL's host. The route is decided for `host`. No redirects.
    pub async fn send_to(
        &self,
        request: Request<RequestBody>,
        host: &str,
        port: u16,
    ) -> Result<Response<Body>, Error> {
        let tls = self.purpose.tls();
        let deadline = self.deadline();
        self.within_limit(
            || authority(host, port),
            deadline,
            self.send_once(request, tls, Some((host, port)), 0, deadline),
        )
        .await
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.outbound.shared.timeouts.request
    }

    async fn within_limit(
        &self,
        peer: impl FnOnce() -> String,
        deadline: tokio::time::Instant,
        exchange: impl std::future::Future<Output = Result<Response<Body>, Error>>,
    ) -> Result<Response<Body>, Error> {
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                step: TimeoutStep::Response,
                peer: peer(),
                after: self.outbound.shared.timeouts.request,
            }),
        }
    }

    async fn send_following(
        &self,
        mut request: Request<RequestBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Body>, Error> {
        let mut hops = 0;
        loop {
            // A media redirect leaves Matrix: the hop uses the regular TLS rules.
            let tls = match (self.purpose, hops) {
                (Purpose::Media, 1..) => TlsKind::Regular,
                _ => self.purpose.tls(),
            };
            let next = (self.max_redirects > 0).then(|| clone_request(&request));
            let response = self.send_once(request, tls, None, hops, deadline).await?;
            let Some(mut next) = next else {
                return Ok(response);
            };
            let status = response.status();
            let Some(location) = redirect::location(status, response.headers()) else {
                return Ok(response);
            };
            if hops >= self.max_redirects {
                return Err(Error::TooManyRedirects(self.max_redirects));
            }
            let target = redirect::join(next.uri(), location)?;
            tracing::debug!(target: "egress::wire", "< redirect {} to {target}", status.as_u16());
            self.outbound.shared.instruments.redirect(self.purpose);
            redirect::rewrite(&mut next, status, target);
            request = next;
            hops += 1;
        }
    }

    /// One exchange (one redirect hop), in its own span and measured.
    /// `attempt` counts the hops before it (the span's resend count).
    async fn send_once(
        &self,
        request: Request<RequestBody>,
        tls: TlsKind,
        connect_to: Option<(&str, u16)>,
        attempt: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Body>, Error> {
        let shared = &self.outbound.shared;
        let uri = request.uri().clone();
        let mut target = target_of(&uri, self.purpose)?;
        target.tls = tls;
        if let Some((host, port)) = connect_to {
            target.host = host;
            target.port = port;
        }
        let route = Route::for_target(
            &shared.settings,
            self.purpose,
            target.scheme,
            target.host,
            target.port,
        );
        let kind = RouteKind::of(&route);
        let span = span::request(
            self.purpose,
            &route,
            kind,
            request.method(),
            &uri,
            &target,
            attempt,
        );
        let mut ended = span::Ended::new(span, deadline);
        let span = ended.span();
        let mut meter = Meter::start(&shared.instruments, self.purpose, kind, deadline);
        let up = http_body::Body::size_hint(request.body())
            .exact()
            .unwrap_or(0);
        // The span is the events' explicit parent rather than entered at
        // every poll of the exchange (`Instrument`): the same tree, for the
        // cost of creating and closing it only.
        match connect_to {
            Some((host, port)) => {
                tracing::debug!(target: "egress::wire", parent: span, "* {} {uri} via {host}:{port}: {}", self.purpose, route.explain())
            }
            None => {
                tracing::debug!(target: "egress::wire", parent: span, "* {} {uri}: {}", self.purpose, route.explain())
            }
        }
        let exchange = self.exchange(request, &route, &target, attempt, span);
        match exchange.await {
            Ok((response, ret)) => {
                meter.response(response.status().as_u16(), up);
                ended.status(response.status().as_u16());
                let idle = shared.timeouts.body_idle;
                Ok(response.map(|incoming| Body::new(incoming, ret, idle, meter)))
            }
            Err(error) => {
                ended.error(error.kind());
                meter.failed(&error);
                Err(error)
            }
        }
    }

    /// Connects (or reuses a pooled connection) and sends the request:
    /// the response head and where its connection goes back to.
    async fn exchange(
        &self,
        mut request: Request<RequestBody>,
        route: &Route<'_>,
        target: &Target<'_>,
        attempt: usize,
        span: &tracing::Span,
    ) -> Result<(Response<hyper::body::Incoming>, Return), Error> {
        let key = PoolKey::new(route, target, &self.outbound.pool);
        prepare(&mut request, route, target);

        let pooled = self.outbound.pool.checkout(&key).await;
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(sender) => {
                tracing::debug!(parent: span, ?key, "reusing a pooled connection");
                sender
            }
            None => self.new_connection(route, target, &key).await?,
        };
        if let Route::Forward { proxy, .. } = route {
            tracing::debug!(target: "egress::wire", parent: span, "> {} {} {:?}", request.method(), request.uri(), request.version());
            if let Some(credentials) = proxy.credentials() {
                tracing::debug!(target: "egress::wire", parent: span, "> Proxy-Authorization: Basic *** (user {})", credentials.user());
            }
        } else {
            tracing::debug!(target: "egress::wire", parent: span, "> {} {} {:?} (Host: {})", request.method(), request.uri(), request.version(),
                request.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or_default());
        }
        // A server may close a keep-alive connection between requests, and the
        // close may cross our next request on the wire. On a reused connection
        // that ends or breaks before any response (an end of file, a reset, TLS
        // ending without close_notify), the request is sent once more on a new
        // connection: when it was never written (hyper gives it back), or when
        // Twisted's pool would resend it for Synapse (GET, HEAD, OPTIONS, DELETE
        // or TRACE without a body, idempotent by RFC 9110 §9.2.2), for which a
        // copy is kept.
        let spare = (reused && resendable(&request)).then(|| clone_request(&request));
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut failed) => {
                let unsent = failed.take_message();
                let again = match (reused, unsent, spare) {
                    (false, _, _) => None,
                    (true, Some(request), _) => Some(request),
                    (true, None, spare) => spare.filter(|_| connection_broke(failed.error())),
                };
                let Some(request) = again else {
                    return Err(Error::Http {
                        peer: key.peer(),
                        source: failed.into_error(),
                    });
                };
                tracing::debug!(parent: span, ?key, "the pooled connection ended before a response ({}): sending again on a new connection", failed.error());
                span.record("http.request.resend_count", attempt + 1);
                sender = self.new_connection(route, target, &key).await?;
                sender
                    .send_request(request)
                    .await
                    .map_err(|source| Error::Http {
                        peer: key.peer(),
                        source,
                    })?
            }
        };
        tracing::debug!(target: "egress::wire", parent: span, "< {:?} {}", response.version(), response.status());
        if let Route::Forward { proxy, .. } = route {
            // A forwarding proxy's own refusal: 407, or a 401 the proxy made
            // itself (tinyproxy does), told from an origin's 401 by the absence
            // of `Via`, which proxies add to the responses they relay.
            let headers = response.headers();
            let status = response.status();
            let from_proxy = !headers.contains_key(http::header::VIA);
            if status == 407 || (status == 401 && from_proxy) {
                let challenge = headers
                    .get(http::header::PROXY_AUTHENTICATE)
                    .or_else(|| headers.get(http::header::WWW_AUTHENTICATE));
                return Err(Error::ProxyAuth {
                    proxy: proxy.to_string(),
                    target: authority(target.host, target.port),
                    status,
                    status_line: format!("{:?} {}", response.version(), status),
                    scheme: challenge
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split_whitespace().next())
                        .map(str::to_owned),
                    key: "http_proxy",
                });
            }
        }
        let ret = Return {
            pool: self.outbound.pool.clone(),
            key,
            sender,
        };
        Ok((response, ret))
    }

    /// Opens a connection for `route` and starts its HTTP/1.1 task.
    async fn new_connection(
        &self,
        route: &Route<'_>,
        target: &Target<'_>,
        key: &PoolKey,
    ) -> Result<SendRequest<RequestBody>, Error> {
        let stream = self
            .outbound
            .connector(self.purpose)
            .connect(route, target)
            .await?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| Error::Http {
                peer: key.peer(),
                source,
            })?;
        let open = self.outbound.pool.opened(key.kind());
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

/// Sets the request target form, `Host`, and `Proxy-Authorization` for the route.
fn prepare(request: &mut Request<RequestBody>, route: &Route<'_>, target: &Target<'_>) {
    let uri = request.uri().clone();
    if !request.headers().contains_key(HOST) {
        // The URL's authority as written, without any user info.
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(target.host);
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        if let Ok(value) = HeaderValue::from_str(host) {
            request.headers_mut().insert(HOST, value);
        }
    }
    // The origin never sees Proxy-Authorization; only a forwarding proxy does.
    request.headers_mut().remove(PROXY_AUTHORIZATION);
    match route {
        Route::Forward { proxy, .. } => {
            if let Some(credentials) = proxy.credentials() {
                request.headers_mut().insert(
                    PROXY_AUTHORIZATION,
                    credentials.proxy_authorization().clone(),
                );
            }
        }
        _ => {
            // The origin form: the URL's path and query, shared, not parsed again.
            *request.uri_mut() = match uri.into_parts().path_and_query {
                Some(path) if path.as_str().starts_with('/') => Uri::from(path),
                _ => Uri::from_static("/"),
            };
        }
    }
}

/// The connection ended under a request before the response head: the
/// peer closed it (end of file) or it broke (an I/O error: a reset, TLS
/// ending without close_notify), as opposed to a protocol error.
fn connection_broke(error: &hyper::Error) -> bool {
    error.is_incomplete_message()
        || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
}

/// Whether a request that may have reached the server can be sent again
/// when its reused connection ends before any response: the methods and the
/// empty body Twisted's `HTTPConnectionPool` retries (`_shouldRetry`).
fn resendable(request: &Request<RequestBody>) -> bool {
    use http::Method;
    let method = request.method();
    (method == Method::GET
        || method == Method::HEAD
        || method == Method::OPTIONS
        || method == Method::DELETE
        || method == Method::TRACE)
        && http_body::Body::is_end_stream(request.body())
}

fn clone_request(request: &Request<RequestBody>) -> Request<RequestBody> {
    let mut clone = Request::new(request.body().clone());
    *clone.method_mut() = request.method().clone();
    *clone.uri_mut() = request.uri().clone();
    *clone.headers_mut() = request.headers().clone();
    *clone.version_mut() = request.version();
    clone
}
