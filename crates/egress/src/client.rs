//! Pooled HTTP/1.1 clients, one per purpose, on top of the connectors.
//!
//! The pool is egress's own, not hyper-util's legacy client: that client keys
//! its pool by the request's origin, but connections to a forwarding proxy
//! must be shared across origins, while tunnels are per origin. Keys here
//! are the route: direct to an origin, forward via a proxy, or a tunnel
//! through a proxy to an origin.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST, LOCATION, PROXY_AUTHORIZATION};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::connect::tls::TlsConfigs;
use crate::connect::{target_of, Connector, Shared, Target, Timeouts};
use crate::purpose::TlsKind;
use crate::{Error, ProxySettings, Purpose, Route};

/// Redirects are never followed more than this many times.
pub const MAX_REDIRECTS: usize = 10;

/// The request body type: a whole body in memory.
pub type RequestBody = Full<Bytes>;

/// Builds an [`Outbound`].
pub struct OutboundBuilder {
    settings: ProxySettings,
    timeouts: Timeouts,
    extra_cas: Vec<std::path::PathBuf>,
    overrides: HashMap<String, Vec<std::net::IpAddr>>,
    max_idle_per_key: usize,
    idle_timeout: Duration,
}

impl OutboundBuilder {
    /// Replaces the default time limits.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Trusts the CA certificates of a PEM file too, for regular TLS
    /// (the CLI's `--cacert`).
    pub fn add_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.extra_cas.push(path.into());
        self
    }

    /// Resolves `host` to `addrs` instead of asking DNS (curl's `--resolve`).
    pub fn resolve(mut self, host: &str, addrs: &[std::net::IpAddr]) -> Self {
        self.overrides
            .entry(host.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .extend_from_slice(addrs);
        self
    }

    /// How many idle connections to keep per pool key (default 32).
    pub fn max_idle_per_key(mut self, n: usize) -> Self {
        self.max_idle_per_key = n;
        self
    }

    /// How long an idle connection is kept (default 90 s).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Loads the trust stores and builds the connectors.
    pub fn build(self) -> Result<Outbound, Error> {
        let tls = TlsConfigs::new(self.settings.tls(), &self.extra_cas)?;
        let shared = Shared::new(
            Arc::new(self.settings),
            tls,
            self.timeouts,
            Arc::new(self.overrides),
        );
        Ok(Outbound {
            shared: Arc::new(shared),
            pool: Arc::new(Pool {
                idle: Mutex::new(HashMap::new()),
                max_idle_per_key: self.max_idle_per_key,
                idle_timeout: self.idle_timeout,
            }),
        })
    }
}

/// A homeserver's outbound HTTP: pooled clients per purpose, sharing one
/// pool, one set of TLS configurations and the settings. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
}

impl Outbound {
    /// Defaults: the timeouts of [`Timeouts::default`], system trust store.
    pub fn new(settings: ProxySettings) -> Result<Outbound, Error> {
        Outbound::builder(settings).build()
    }

    /// A builder to set timeouts, extra CAs and resolver overrides.
    pub fn builder(settings: ProxySettings) -> OutboundBuilder {
        OutboundBuilder {
            settings,
            timeouts: Timeouts::default(),
            extra_cas: Vec::new(),
            overrides: HashMap::new(),
            max_idle_per_key: 32,
            idle_timeout: Duration::from_secs(90),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &ProxySettings {
        &self.shared.settings
    }

    /// The pooled client for a purpose. Redirects are off; see
    /// [`Client::follow_redirects`].
    pub fn client(&self, purpose: Purpose) -> Client {
        Client {
            outbound: self.clone(),
            purpose,
            max_redirects: 0,
        }
    }

    /// The connector for a purpose, for use with your own hyper client.
    pub fn connector(&self, purpose: Purpose) -> Connector {
        Connector::new(self.shared.clone(), purpose)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Idle pooled connections, all keys together.
    pub fn idle_connections(&self) -> usize {
        self.pool
            .idle
            .lock()
            .expect("pool lock")
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// A client for one purpose.
#[derive(Clone)]
pub struct Client {
    outbound: Outbound,
    purpose: Purpose,
    max_redirects: usize,
}

impl Client {
    /// Follows up to `max` redirects (at most [`MAX_REDIRECTS`]); every hop is
    /// routed and checked anew.
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
            .expect("valid request");
        self.send(request).await
    }

    /// Sends a request, following redirects if enabled, within the request
    /// time limit (up to the response headers).
    pub async fn send(&self, request: Request<RequestBody>) -> Result<Response<Body>, Error> {
        let limit = self.outbound.shared.timeouts.request;
        match tokio::time::timeout(limit, self.send_following(request)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                step: "waiting for the response".to_owned(),
                after: limit,
            }),
        }
    }

    async fn send_following(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<Response<Body>, Error> {
        let mut hops = 0;
        loop {
            // A media redirect leaves Matrix: the hop uses the regular TLS rules.
            let tls = match (self.purpose, hops) {
                (Purpose::Media, 1..) => TlsKind::Regular,
                _ => self.purpose.tls(),
            };
            let next = if self.max_redirects > 0 {
                Some(clone_request(&request))
            } else {
                None
            };
            let response = self.send_once(request, tls, None).await?;
            let Some(mut next) = next else {
                return Ok(response);
            };
            let status = response.status();
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok());
            let Some(location) = location.filter(|_| status.is_redirection()) else {
                return Ok(response);
            };
            if status == StatusCode::NOT_MODIFIED || status == StatusCode::MULTIPLE_CHOICES {
                return Ok(response);
            }
            if hops >= self.max_redirects {
                return Err(Error::TooManyRedirects(self.max_redirects));
            }
            let target = join(next.uri(), location).ok_or_else(|| Error::BadUrl {
                url: location.to_owned(),
                problem: "the redirect's Location is not a usable URL".to_owned(),
            })?;
            tracing::info!(target: "egress::wire", "< redirect {} to {target}", status.as_u16());
            let to_get = status == StatusCode::SEE_OTHER
                || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                    && next.method() == Method::POST);
            if to_get {
                *next.method_mut() = Method::GET;
                *next.body_mut() = RequestBody::default();
            }
            if next.uri().authority() != target.authority() {
                next.headers_mut().remove(http::header::AUTHORIZATION);
                next.headers_mut().remove(http::header::COOKIE);
            }
            next.headers_mut().remove(HOST);
            *next.uri_mut() = target;
            request = next;
            hops += 1;
        }
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
        let limit = self.outbound.shared.timeouts.request;
        match tokio::time::timeout(
            limit,
            self.send_once(request, self.purpose.tls(), Some((host, port))),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                step: "waiting for the response".to_owned(),
                after: limit,
            }),
        }
    }

    async fn send_once(
        &self,
        mut request: Request<RequestBody>,
        tls: TlsKind,
        connect_to: Option<(&str, u16)>,
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
        match connect_to {
            Some((host, port)) => {
                tracing::info!(target: "egress::wire", "* {} {uri} via {host}:{port}: {}", self.purpose, route.explain())
            }
            None => {
                tracing::info!(target: "egress::wire", "* {} {uri}: {}", self.purpose, route.explain())
            }
        }
        let key = PoolKey::new(&route, &target);
        prepare(&mut request, &route, &target);

        let mut sender = match self.outbound.pool.checkout(&key).await {
            Some(sender) => {
                tracing::debug!(?key, "reusing a pooled connection");
                sender
            }
            None => {
                let stream = self
                    .outbound
                    .connector(self.purpose)
                    .connect(&route, &target)
                    .await?;
                let (sender, connection) = hyper::client::conn::http1::Builder::new()
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|source| Error::Http {
                        peer: key.peer(),
                        source,
                    })?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!("connection ended: {e}");
                    }
                });
                sender
            }
        };
        if let Route::Forward { proxy, .. } = route {
            tracing::info!(target: "egress::wire", "> {} {} {:?}", request.method(), request.uri(), request.version());
            if let Some(credentials) = proxy.credentials() {
                tracing::info!(target: "egress::wire", "> Proxy-Authorization: Basic *** (user {})", credentials.user());
            }
        } else {
            tracing::info!(target: "egress::wire", "> {} {} {:?} (Host: {})", request.method(), request.uri(), request.version(),
                request.headers().get(HOST).and_then(|h| h.to_str().ok()).unwrap_or_default());
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| Error::Http {
                peer: key.peer(),
                source,
            })?;
        tracing::info!(target: "egress::wire", "< {:?} {}", response.version(), response.status());
        if let Route::Forward { proxy, .. } = route {
            // A forwarding proxy's own refusal: 407, or a 401 the proxy made
            // itself (tinyproxy does), told from an origin's 401 by the absence
            // of `Via`, which proxies add to the responses they relay.
            let headers = response.headers();
            let challenge = headers
                .get(http::header::PROXY_AUTHENTICATE)
                .or_else(|| headers.get(http::header::WWW_AUTHENTICATE));
            let status = response.status().as_u16();
            let from_proxy = !headers.contains_key(http::header::VIA);
            if status == 407 || (status == 401 && from_proxy) {
                return Err(Error::ProxyAuth {
                    proxy: proxy.to_string(),
                    target: crate::connect::tunnel::authority(target.host, target.port),
                    status_line: format!("{:?} {}", response.version(), response.status()),
                    scheme: challenge
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split_whitespace().next())
                        .map(str::to_owned),
                    key: "http_proxy",
                });
            }
        }
        let pool = self.outbound.pool.clone();
        let idle = shared.timeouts.body_idle;
        Ok(response.map(|incoming| Body::new(incoming, Return { pool, key, sender }, idle)))
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
            let origin_form = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            *request.uri_mut() = origin_form
                .parse()
                .unwrap_or_else(|_| Uri::from_static("/"));
        }
    }
}

fn clone_request(request: &Request<RequestBody>) -> Request<RequestBody> {
    let mut clone = Request::new(request.body().clone());
    *clone.method_mut() = request.method().clone();
    *clone.uri_mut() = request.uri().clone();
    *clone.headers_mut() = request.headers().clone();
    *clone.version_mut() = request.version();
    clone
}

/// Resolves a `Location` against the URL it came from.
fn join(base: &Uri, location: &str) -> Option<Uri> {
    let location = location.trim();
    if location.contains("://") {
        return location.parse().ok();
    }
    let scheme = base.scheme_str()?;
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().ok();
    }
    let authority = base.authority()?.as_str();
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let base_path = base.path();
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{location}", if dir.is_empty() { "/" } else { dir })
    };
    format!("{scheme}://{authority}{path}").parse().ok()
}

/// What a pooled connection is for: the same key means the same path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    /// `direct`, `forward` or `tunnel`.
    kind: &'static str,
    /// The proxy (`scheme://host:port`, no credentials), if any.
    proxy: Option<String>,
    /// The origin, except for forwarding (shared across origins).
    origin: Option<String>,
    /// TLS name and rules, when the origin is reached over TLS.
    tls: Option<(String, TlsKind)>,
}

impl PoolKey {
    fn new(route: &Route<'_>, target: &Target<'_>) -> PoolKey {
        let proxy = route
            .proxy()
            .map(|p| format!("{}://{}:{}", p.scheme().as_str(), p.host(), p.port()));
        let origin = || Some(crate::connect::tunnel::authority(target.host, target.port));
        let tls = || match target.scheme {
            crate::Scheme::Https => Some((target.server_name.to_owned(), target.tls)),
            crate::Scheme::Http => None,
        };
        match route {
            Route::Forward { proxy: p, .. } => PoolKey {
                kind: "forward",
                // Credentials are part of what the proxy sees on every request.
                proxy: proxy
                    .map(|s| format!("{s}#{}", p.credentials().map(|c| c.user()).unwrap_or(""))),
                origin: None,
                tls: None,
            },
            Route::Tunnel { .. } => PoolKey {
                kind: "tunnel",
                proxy,
                origin: origin(),
                tls: tls(),
            },
            _ => PoolKey {
                kind: "direct",
                proxy: None,
                origin: origin(),
                tls: tls(),
            },
        }
    }

    fn peer(&self) -> String {
        match (&self.proxy, &self.origin) {
            (Some(proxy), None) => format!("proxy {}", proxy.split('#').next().unwrap_or_default()),
            (_, Some(origin)) => origin.clone(),
            (None, None) => "?".to_owned(),
        }
    }
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    max_idle_per_key: usize,
    idle_timeout: Duration,
}

impl Pool {
    /// The most recently returned live connection for `key`, once ready.
    async fn checkout(&self, key: &PoolKey) -> Option<SendRequest<RequestBody>> {
        loop {
            let mut candidate = {
                let mut idle = self.idle.lock().expect("pool lock");
                let list = idle.get_mut(key)?;
                let now = Instant::now();
                list.retain(|c| {
                    !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout
                });
                let candidate = list.pop();
                if list.is_empty() {
                    idle.remove(key);
                }
                candidate?
            };
            if candidate.sender.is_ready() {
                return Some(candidate.sender);
            }
            // Its last response is fully read; it is ready within a scheduler tick,
            // unless the server closed it.
            let ready =
                tokio::time::timeout(Duration::from_secs(1), candidate.sender.ready()).await;
            if let Ok(Ok(())) = ready {
                return Some(candidate.sender);
            }
        }
    }

    fn put(&self, key: PoolKey, sender: SendRequest<RequestBody>) {
        if sender.is_closed() || self.max_idle_per_key == 0 {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(key).or_default();
        if list.len() < self.max_idle_per_key {
            list.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

struct Return {
    pool: Arc<Pool>,
    key: PoolKey,
    sender: SendRequest<RequestBody>,
}

/// A response body. When it has been read to the end, its connection goes
/// back to the pool; dropped before the end, the connection is closed. A body
/// that sends nothing for [`Timeouts::body_idle`] ends with [`Error::Timeout`].
pub struct Body {
    inner: Incoming,
    ret: Option<Return>,
    idle: Duration,
    /// The idle timer, made on the first wait and re-armed at each new wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl Body {
    fn new(inner: Incoming, ret: Return, idle: Duration) -> Body {
        let mut body = Body {
            inner,
            ret: Some(ret),
            idle,
            timer: None,
            waiting: false,
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(ret) = self.ret.take() {
            ret.pool.put(ret.key, ret.sender);
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.waiting {
                    timer.as_mut().reset(deadline);
                    this.waiting = true;
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Error::Timeout {
                        step: "waiting for more of the response body".to_owned(),
                        after: this.idle,
                    }))),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(frame) => {
                this.waiting = false;
                match &frame {
                    None => this.release(),
                    Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
                    _ => {}
                }
                let peer = || {
                    this.ret
                        .as_ref()
                        .map_or_else(|| "the server".to_owned(), |r| r.key.peer())
                };
                Poll::Ready(frame.map(|f| {
                    f.map_err(|source| Error::Http {
                        peer: peer(),
                        source,
                    })
                }))
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

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_locations() {
        let base: Uri = "https://a.example:8443/dir/page?q=1".parse().unwrap();
        let j = |l| join(&base, l).map(|u| u.to_string());
        assert_eq!(
            j("https://b.example/x").as_deref(),
            Some("https://b.example/x")
        );
        assert_eq!(j("//c.example/y").as_deref(), Some("https://c.example/y"));
        assert_eq!(j("/abs").as_deref(), Some("https://a.example:8443/abs"));
        assert_eq!(
            j("rel?x=2").as_deref(),
            Some("https://a.example:8443/dir/rel?x=2")
        );
    }
}
