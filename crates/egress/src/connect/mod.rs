//! Turning a [`Route`] into a connected stream.
//!
//! Layers, each wrapping the one below:
//! * TCP, direct with the purpose's blocklist on every DNS answer
//!   ([`resolve::BlocklistResolver`]), or to the proxy (its own address is
//!   never checked); every address of the answer dialled, staggered
//!   ([`dial`], RFC 8305), within the connect limit;
//! * TLS to an `https://` proxy ([`tls`]);
//! * `CONNECT host:port` through the proxy ([`tunnel`]);
//! * TLS to the origin, inside the tunnel when there is one.
//!
//! [`Connector`] is a `tower::Service<Uri>` that decides the route and stacks
//! the layers, for people who bring their own hyper client.

pub(crate) mod dial;
pub(crate) mod resolve;
pub(crate) mod stream;
pub(crate) mod tls;
pub(crate) mod tunnel;

pub(crate) use self::tunnel::authority;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tower_service::Service;

use self::resolve::{BlocklistResolver, Overrides};
use self::stream::{ConnectedStream, Stream};
use self::tls::TlsConfigs;
use crate::instruments::{list_name, Clock, ConnectStep, Instruments};
use crate::proxy_url::unbracket;
use crate::purpose::{BlocklistKind, TlsKind};
use crate::route::Scheme;
use crate::{Blocklist, Error, ProxyScheme, ProxySettings, ProxyUrl, Purpose, Route, TimeoutStep};

/// Time limits. Every network wait has one.
///
/// Start from [`Timeouts::DEFAULT`] and change what you need, in a `const`
/// too (the struct is `non_exhaustive`: a new limit is not a breaking
/// change):
///
/// ```
/// use std::time::Duration;
/// use egress::Timeouts;
///
/// const QUICK: Timeouts = Timeouts::DEFAULT
///     .with_connect(Duration::from_secs(3))
///     .with_request(Duration::from_secs(5));
/// assert_eq!(QUICK.connect_reply, Timeouts::default().connect_reply);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// Name resolution plus TCP connect plus each TLS handshake (15 s).
    pub connect: Duration,
    /// The same for federation, key fetching and media (30 s).
    pub federation_connect: Duration,
    /// Waiting for the proxy's answer to CONNECT (15 s).
    pub connect_reply: Duration,
    /// A whole request, up to the response headers (60 s).
    pub request: Duration,
    /// A response body that sends nothing for this long ends with a
    /// timeout error (60 s).
    pub body_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts::DEFAULT
    }
}

impl Timeouts {
    /// The defaults: 15 s to connect (30 s for federation), 15 s for the
    /// CONNECT reply, 60 s for a request and for a silent body.
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(15),
        federation_connect: Duration::from_secs(30),
        connect_reply: Duration::from_secs(15),
        request: Duration::from_secs(60),
        body_idle: Duration::from_secs(60),
    };

    /// With this [`connect`](Timeouts::connect) limit.
    pub const fn with_connect(mut self, limit: Duration) -> Timeouts {
        self.connect = limit;
        self
    }

    /// With this [`federation_connect`](Timeouts::federation_connect) limit.
    pub const fn with_federation_connect(mut self, limit: Duration) -> Timeouts {
        self.federation_connect = limit;
        self
    }

    /// With this [`connect_reply`](Timeouts::connect_reply) limit.
    pub const fn with_connect_reply(mut self, limit: Duration) -> Timeouts {
        self.connect_reply = limit;
        self
    }

    /// With this [`request`](Timeouts::request) limit.
    pub const fn with_request(mut self, limit: Duration) -> Timeouts {
        self.request = limit;
        self
    }

    /// With this [`body_idle`](Timeouts::body_idle) limit.
    pub const fn with_body_idle(mut self, limit: Duration) -> Timeouts {
        self.body_idle = limit;
        self
    }

    /// The connect limit for a purpose.
    pub fn connect_for(&self, purpose: Purpose) -> Duration {
        match purpose.tls() {
            TlsKind::Federation => self.federation_connect,
            _ => self.connect,
        }
    }
}

/// What the connectors share: settings, TLS configurations and resolvers,
/// built once.
pub(crate) struct Shared {
    pub(crate) settings: Arc<ProxySettings>,
    pub(crate) tls: TlsConfigs,
    pub(crate) timeouts: Timeouts,
    /// The resolvers of direct connections, one per blocklist (none, for
    /// proxies; general, federation, URL preview).
    resolvers: [BlocklistResolver; 4],
    /// The metrics (nothing without the `metrics` feature).
    pub(crate) instruments: Arc<Instruments>,
}

impl Shared {
    pub(crate) fn new(
        settings: Arc<ProxySettings>,
        tls: TlsConfigs,
        timeouts: Timeouts,
        overrides: Overrides,
    ) -> Shared {
        let lists = settings.blocklists();
        let resolver =
            |list: Option<&Blocklist>| BlocklistResolver::new(list.cloned(), overrides.clone());
        let resolvers = [
            resolver(None),
            resolver(Some(&lists.general)),
            resolver(Some(&lists.federation)),
            resolver(Some(&lists.url_preview)),
        ];
        Shared {
            settings,
            tls,
            timeouts,
            resolvers,
            instruments: Arc::new(Instruments::new()),
        }
    }

    /// The resolver for a blocklist (`None`: no list, for proxies).
    pub(crate) fn resolver_for(&self, kind: Option<BlocklistKind>) -> &BlocklistResolver {
        let list = match kind {
            None => 0,
            Some(BlocklistKind::General) => 1,
            Some(BlocklistKind::Federation) => 2,
            Some(BlocklistKind::UrlPreview) => 3,
        };
        &self.resolvers[list]
    }
}

/// Where a connection goes, once routed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    /// `http` or `https`.
    pub(crate) scheme: Scheme,
    /// The host to connect to (as in the URL; IPv6 with or without brackets).
    pub(crate) host: &'a str,
    /// The port.
    pub(crate) port: u16,
    /// The name TLS verifies and sends as SNI: the host, except for
    /// federation, where it is the server name.
    pub(crate) server_name: &'a str,
    /// Which certificate rules apply.
    pub(crate) tls: TlsKind,
}

/// Connects URIs for one purpose: decides the route with
/// [`Route::decide`] and makes that connection, with the purpose's
/// blocklist, proxy rules and TLS policy. A `tower::Service<Uri>`, so it
/// plugs into hyper-util's legacy client.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
    purpose: Purpose,
}

impl Connector {
    pub(crate) fn new(shared: Arc<Shared>, purpose: Purpose) -> Connector {
        Connector { shared, purpose }
    }

    /// The purpose this connector serves.
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// Makes the connection `route` describes to `target`. Crate-private: the
    /// route must come from the decision, never from a caller. Each step is
    /// timed, and a blocklist's refusal counted, in the metrics.
    pub(crate) async fn connect(
        &self,
        route: &Route<'_>,
        target: &Target<'_>,
    ) -> Result<Stream, Error> {
        let result = self.connect_steps(route, target).await;
        if let Err(Error::Refused { .. } | Error::Blocked { .. }) = &result {
            if let Some(list) = self.purpose.blocklist() {
                self.shared
                    .instruments
                    .refused(self.purpose, list_name(list));
            }
        }
        result
    }

    async fn connect_steps(&self, route: &Route<'_>, target: &Target<'_>) -> Result<Stream, Error> {
        let shared = &self.shared;
        let connect_limit = shared.timeouts.connect_for(self.purpose);
        let authority = tunnel::authority(target.host, target.port);
        match route {
            Route::Refused { reason } => Err(Error::Refused {
                url: authority,
                reason: reason.to_string(),
            }),
            Route::Direct { blocklist, .. } => {
                // The route's list is the purpose's (none for purposes without one).
                let resolver = shared.resolver_for(blocklist.and(self.purpose.blocklist()));
                let clock = Clock::start();
                let stream = tcp_connect(resolver, target.host, target.port, connect_limit, || {
                    authority.clone()
                })
                .await?;
                self.took(ConnectStep::Tcp, clock);
                match target.scheme {
                    Scheme::Http => Ok(stream),
                    Scheme::Https => self.origin_tls(stream, target, connect_limit).await,
                }
            }
            Route::Forward { proxy, .. } => self.proxy_stream(proxy, connect_limit).await,
            Route::Tunnel { proxy, .. } => {
                let stream = self.proxy_stream(proxy, connect_limit).await?;
                let clock = Clock::start();
                let stream = self
                    .tunnel(stream, proxy, "https_proxy", &authority, None)
                    .await?;
                self.took(ConnectStep::Connect, clock);
                match target.scheme {
                    Scheme::Http => Ok(stream),
                    Scheme::Https => self.origin_tls(stream, target, connect_limit).await,
                }
            }
        }
    }

    /// A connect step succeeded `since` the clock started.
    #[inline(always)]
    fn took(&self, step: ConnectStep, since: Clock) {
        self.shared
            .instruments
            .connect_step(self.purpose, step, since.elapsed());
    }

    /// TCP (and TLS for an `https://` proxy) to the proxy.
    pub(crate) async fn proxy_stream(
        &self,
        proxy: &ProxyUrl,
        limit: Duration,
    ) -> Result<Stream, Error> {
        let clock = Clock::start();
        let stream = self.proxy_tcp(proxy).await?;
        self.took(ConnectStep::Tcp, clock);
        match proxy.scheme() {
            ProxyScheme::Http => Ok(stream),
            ProxyScheme::Https => {
                let clock = Clock::start();
                let stream = self.proxy_tls(stream, proxy, limit).await?;
                self.took(ConnectStep::ProxyTls, clock);
                Ok(stream)
            }
        }
    }

    /// TCP to the proxy (its own address is never checked against a blocklist).
    pub(crate) async fn proxy_tcp(&self, proxy: &ProxyUrl) -> Result<Stream, Error> {
        let host = proxy.host().to_string();
        let resolver = self.shared.resolver_for(None);
        let limit = self.shared.timeouts.connect_for(self.purpose);
        tcp_connect(resolver, &host, proxy.port(), limit, || {
            format!("proxy {proxy}")
        })
        .await
    }

    /// TLS to an `https://` proxy, with the purpose's certificate rules.
    pub(crate) async fn proxy_tls(
        &self,
        stream: Stream,
        proxy: &ProxyUrl,
        limit: Duration,
    ) -> Result<Stream, Error> {
        let host = proxy.host().to_string();
        let name = unbracket(&host);
        let kind = match self.purpose.tls() {
            TlsKind::Federation => TlsKind::Federation,
            _ => TlsKind::Regular,
        };
        let config = self.shared.tls.config(kind, name);
        handshake(stream, config, name, format!("proxy {proxy}"), true, limit).await
    }

    /// `CONNECT target` through the proxy on `stream`.
    pub(crate) async fn tunnel(
        &self,
        stream: Stream,
        proxy: &ProxyUrl,
        key: &'static str,
        target: &str,
        via: Option<&http::HeaderValue>,
    ) -> Result<Stream, Error> {
        tunnel::connect(
            stream,
            proxy,
            key,
            target,
            via,
            self.shared.timeouts.connect_reply,
        )
        .await
    }

    /// The connect limit of this connector's purpose.
    #[cfg(feature = "doctor")]
    pub(crate) fn connect_limit(&self) -> Duration {
        self.shared.timeouts.connect_for(self.purpose)
    }

    /// The TLS configurations in use.
    #[cfg(feature = "doctor")]
    pub(crate) fn tls_configs(&self) -> &TlsConfigs {
        &self.shared.tls
    }

    async fn origin_tls(
        &self,
        stream: Stream,
        target: &Target<'_>,
        limit: Duration,
    ) -> Result<Stream, Error> {
        let name = unbracket(target.server_name);
        let config = self.shared.tls.config(target.tls, name);
        let clock = Clock::start();
        let stream = handshake(stream, config, name, name.to_owned(), false, limit).await?;
        self.took(ConnectStep::Tls, clock);
        Ok(stream)
    }

    /// Connects to `host:port` the way a request to a discovered federation
    /// target does — routed by the decision for `host`, TLS verified for
    /// `tls_name` under this purpose's rules — and closes the connection
    /// again. Returns the certificate the server presented.
    #[cfg(feature = "doctor")]
    pub async fn probe_tls(
        &self,
        host: &str,
        port: u16,
        tls_name: &str,
    ) -> Result<Option<crate::CertificateInfo>, Error> {
        let route = Route::for_target(
            &self.shared.settings,
            self.purpose,
            Scheme::Https,
            host,
            port,
        );
        let target = Target {
            scheme: Scheme::Https,
            host,
            port,
            server_name: tls_name,
            tls: self.purpose.tls(),
        };
        let stream = self.connect(&route, &target).await?;
        Ok(stream.tls().and_then(crate::doctor::leaf_info))
    }

    /// Decides the route for `uri` and connects. Forwarding connections are
    /// marked as proxied, so hyper-util's legacy client sends absolute-form
    /// requests (it does not add `Proxy-Authorization`: see [`crate::Client`]).
    pub async fn connect_uri(&self, uri: &Uri) -> Result<ConnectedStream, Error> {
        let settings = self.shared.settings.clone();
        let route = Route::decide(&settings, self.purpose, uri);
        let target = target_of(uri, self.purpose)?;
        let stream = self.connect(&route, &target).await?;
        Ok(ConnectedStream {
            stream,
            forwarding_proxy: matches!(route, Route::Forward { .. }),
        })
    }
}

/// The [`Target`] of a URL for a purpose.
pub(crate) fn target_of(uri: &Uri, purpose: Purpose) -> Result<Target<'_>, Error> {
    let bad = |problem: &str| Error::BadUrl {
        url: uri.to_string(),
        problem: problem.to_owned(),
    };
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
        Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
        _ => return Err(bad("only http:// and https:// URLs can be requested")),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("the URL has no host"))?;
    Ok(Target {
        scheme,
        host,
        port: uri.port_u16().unwrap_or(scheme.default_port()),
        server_name: host,
        tls: purpose.tls(),
    })
}

impl Service<Uri> for Connector {
    type Response = TokioIo<ConnectedStream>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect_uri(&uri).await.map(TokioIo::new) })
    }
}

/// TCP to `host:port`: an IP literal as it is, a name resolved by `resolver`
/// (its blocklist on the whole answer), then every address dialled,
/// staggered ([`dial`]). `limit` bounds the resolution and the whole race;
/// errors sorted into blocked / resolve / connect / timeout.
pub(crate) async fn tcp_connect(
    resolver: &BlocklistResolver,
    host: &str,
    port: u16,
    limit: Duration,
    describe: impl Fn() -> String,
) -> Result<Stream, Error> {
    let deadline = tokio::time::Instant::now() + limit;
    let timeout = || Error::Timeout {
        step: TimeoutStep::Connect,
        peer: describe(),
        after: limit,
    };
    let host = unbracket(host);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => match tokio::time::timeout_at(deadline, resolver.resolve(host)).await {
            Ok(Ok(answer)) => answer
                .into_iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect(),
            Ok(Err(io)) => {
                return Err(
                    resolve::resolver_verdict(&io).unwrap_or_else(|| Error::Resolve {
                        host: host.to_owned(),
                        source: io,
                    }),
                )
            }
            Err(_) => return Err(timeout()),
        },
    };
    let lost = match dial::tcp(&dial::interleave(&addrs), deadline).await {
        Ok((tcp, addr)) => {
            tracing::debug!(peer = %addr, "connected to {}", describe());
            return Ok(Stream::Tcp(tcp));
        }
        Err(lost) => lost,
    };
    let failed = match lost {
        dial::Lost::TimedOut { waiting, .. } => {
            tracing::debug!(?waiting, "no connection to {} within {limit:?}", describe());
            return Err(timeout());
        }
        lost => lost.last_failure(),
    };
    match failed {
        Some((_, io)) if io.kind() == std::io::ErrorKind::TimedOut => Err(timeout()),
        Some((_, io)) => Err(Error::Connect {
            target: describe(),
            source: io,
        }),
        None => Err(Error::Connect {
            target: describe(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to"),
        }),
    }
}

/// A TLS handshake over `stream`, verifying `name` (a DNS name or IP address).
pub(crate) async fn handshake(
    stream: Stream,
    config: Arc<rustls::ClientConfig>,
    name: &str,
    peer: String,
    is_proxy: bool,
    limit: Duration,
) -> Result<Stream, Error> {
    let server_name = match name.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(name.to_owned()).map_err(|e| Error::Tls {
            peer: peer.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?,
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(limit, connector.connect(server_name, stream)).await {
        Ok(Ok(tls)) => {
            tracing::debug!(peer, "TLS established");
            Ok(Stream::Tls(Box::new(tls)))
        }
        Ok(Err(io)) => {
            let rustls_error = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
            match rustls_error {
                Some(e @ rustls::Error::InvalidCertificate(_)) => Err(Error::Certificate {
                    peer,
                    is_proxy,
                    source: e.clone(),
                }),
                _ => Err(Error::Tls { peer, source: io }),
            }
        }
        Err(_) => Err(Error::Timeout {
            step: TimeoutStep::TlsHandshake,
            peer,
            after: limit,
        }),
    }
}
