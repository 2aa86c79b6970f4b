//! The reqwest adapter: egress's routing decision and blocklists installed
//! into a `reqwest::ClientBuilder` the application already has.
//!
//! Nothing is decided here: the proxy choice is [`Route::for_target`], the
//! resolver is the library's [`BlocklistResolver`] (or the application's,
//! with the same check on its answer), and refusals are [`Route::decide`]'s.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::reqwest::dns::{Addrs, Name, Resolve, Resolving};
use ::reqwest::redirect::{Attempt, Policy};
use ::reqwest::{ClientBuilder, Proxy, Url};

use crate::connect::resolve::{self, BlocklistResolver};
use crate::instruments::{list_name, Instruments};
use crate::route::Scheme;
use crate::{Error, Host, ProxySettings, ProxyUrl, Purpose, Route, Timeouts, MAX_REDIRECTS};

/// The application's own DNS resolver, as reqwest takes it.
pub type AppResolver = Arc<dyn Resolve>;

/// Configures reqwest clients with egress's rules, one purpose per client.
///
/// Built once from the settings; cheap to clone.
#[derive(Clone)]
pub struct Routing {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Arc<ProxySettings>,
    timeouts: Timeouts,
    /// `http_proxy` and `https_proxy` as reqwest URLs, credentials included.
    http_proxy: Option<Url>,
    https_proxy: Option<Url>,
    /// The proxies' host names: never checked against a blocklist.
    exempt: Vec<String>,
    resolver: Option<AppResolver>,
    /// The metrics (feature `metrics`): refusals by list.
    instruments: Arc<Instruments>,
}

impl fmt::Debug for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The proxies by their masked form; the reqwest URLs hold the password.
        f.debug_struct("Routing")
            .field("http_proxy", &self.inner.settings.http_proxy())
            .field("https_proxy", &self.inner.settings.https_proxy())
            .field("timeouts", &self.inner.timeouts)
            .field("app_resolver", &self.inner.resolver.is_some())
            .finish()
    }
}

impl Routing {
    /// Routing for these settings, with the default [`Timeouts`] and the
    /// system resolver.
    pub fn new(settings: Arc<ProxySettings>) -> Routing {
        let http_proxy = settings.http_proxy().map(reqwest_url);
        let https_proxy = settings.https_proxy().map(reqwest_url);
        let mut exempt = Vec::new();
        for proxy in [settings.http_proxy(), settings.https_proxy()]
            .into_iter()
            .flatten()
        {
            if let Host::Name(name) = proxy.host() {
                if !exempt.contains(name) {
                    exempt.push(name.clone());
                }
            }
        }
        Routing {
            inner: Arc::new(Inner {
                settings,
                timeouts: Timeouts::default(),
                http_proxy,
                https_proxy,
                exempt,
                resolver: None,
                instruments: Arc::new(Instruments::new()),
            }),
        }
    }

    /// Uses these time limits (of them, reqwest takes the connect limit).
    #[must_use]
    pub fn with_timeouts(self, timeouts: Timeouts) -> Routing {
        self.map(|inner| inner.timeouts = timeouts)
    }

    /// Resolves names with the application's resolver; its answers get the
    /// same blocklist check as the system resolver's.
    #[must_use]
    pub fn with_resolver(self, resolver: AppResolver) -> Routing {
        self.map(|inner| inner.resolver = Some(resolver))
    }

    fn map(self, f: impl FnOnce(&mut Inner)) -> Routing {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            settings: shared.settings.clone(),
            timeouts: shared.timeouts,
            http_proxy: shared.http_proxy.clone(),
            https_proxy: shared.https_proxy.clone(),
            exempt: shared.exempt.clone(),
            resolver: shared.resolver.clone(),
            instruments: shared.instruments.clone(),
        });
        f(&mut inner);
        Routing {
            inner: Arc::new(inner),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ProxySettings {
        &self.inner.settings
    }

    /// Configures `builder` for `purpose`:
    ///
    /// * reqwest's own proxy handling (its environment variables, system
    ///   proxy) is cleared, and the proxies [`Route::for_target`] chooses are
    ///   installed (`http_proxy` / `https_proxy`, `no_proxy` names, IPs, CIDR
    ///   ranges and ports, never-proxied purposes, `https_proxy` only for
    ///   federation and key fetching, the proxy's credentials): with
    ///   `no_proxy` entries, a [`Proxy::custom`] asks the decision for every
    ///   request and redirect hop; without, the decision is asked once per
    ///   scheme;
    /// * a DNS resolver refuses a whole name when one of its addresses is in
    ///   the purpose's blocklist (allowlist holes honoured), wrapping the
    ///   resolver given to [`Routing::with_resolver`]; the proxies' own host
    ///   names are exempt;
    /// * a redirect policy refuses a hop [`Route::decide`] refuses (an IP
    ///   literal in the blocklist, another scheme), after at most
    ///   [`MAX_REDIRECTS`] hops;
    /// * the purpose's connect time limit.
    ///
    /// Call it after the application's own settings: a later `proxy`,
    /// `no_proxy`, `dns_resolver` or `redirect` call undoes part of it.
    /// An IP-literal URL host is never resolved: send it through
    /// [`Routing::check`] first.
    pub fn configure(&self, purpose: Purpose, builder: ClientBuilder) -> ClientBuilder {
        self.install_proxies(purpose, builder.no_proxy())
            .dns_resolver(self.resolver(purpose))
            .redirect(self.redirect_policy(purpose, MAX_REDIRECTS))
            .connect_timeout(self.connect_timeout(purpose))
    }

    /// The proxies for `purpose`. With `no_proxy` entries the decision
    /// depends on the host: a [`Proxy::custom`] asks it for every request.
    /// Without any, it depends on the scheme only (an IP literal in the
    /// blocklist aside, which [`Routing::check`] refuses): the decision is
    /// asked once per scheme, and reqwest's fixed proxies apply it, without
    /// the cost `Proxy::custom` has on every `http://` request.
    fn install_proxies(&self, purpose: Purpose, mut builder: ClientBuilder) -> ClientBuilder {
        if !self.inner.settings.no_proxy().value.is_empty() {
            let inner = self.inner.clone();
            return builder.proxy(Proxy::custom(move |url: &Url| {
                inner.proxy_for(purpose, url)
            }));
        }
        for (scheme, url) in [
            (Scheme::Http, "http://egress.invalid/"),
            (Scheme::Https, "https://egress.invalid/"),
        ] {
            let proxy = self
                .inner
                .proxy_for(purpose, &Url::parse(url).expect("valid"));
            let proxy = match (scheme, proxy) {
                (_, None) => continue,
                (Scheme::Http, Some(proxy)) => Proxy::http(proxy),
                (Scheme::Https, Some(proxy)) => Proxy::https(proxy),
            };
            builder = builder.proxy(proxy.expect("a proxy URL reqwest parsed once"));
        }
        builder
    }

    /// The blocklisting resolver that [`Routing::configure`] installs.
    pub fn resolver(&self, purpose: Purpose) -> Arc<dyn Resolve> {
        let list = purpose
            .blocklist()
            .map(|kind| self.inner.settings.blocklists().get(kind).clone());
        Arc::new(GuardedResolver {
            guarded: BlocklistResolver::new(list, Arc::default()),
            open: BlocklistResolver::new(None, Arc::default()),
            exempt: self.inner.exempt.clone(),
            app: self.inner.resolver.clone(),
            purpose,
            instruments: self.inner.instruments.clone(),
        })
    }

    /// The redirect policy that [`Routing::configure`] installs, following
    /// at most `max` hops (capped at [`MAX_REDIRECTS`]).
    pub fn redirect_policy(&self, purpose: Purpose, max: usize) -> Policy {
        let inner = self.inner.clone();
        let max = max.min(MAX_REDIRECTS);
        Policy::custom(move |attempt: Attempt<'_>| {
            // `previous` holds the first URL and every hop followed so far.
            if attempt.previous().len() > max {
                return attempt.error(RedirectLimit(max));
            }
            match inner.refusal(purpose, attempt.url()) {
                Some(refused) => attempt.error(refused),
                None => attempt.follow(),
            }
        })
    }

    /// The purpose's connect time limit.
    pub fn connect_timeout(&self, purpose: Purpose) -> Duration {
        self.inner.timeouts.connect_for(purpose)
    }

    /// What reqwest cannot refuse by itself, checked before sending: an
    /// IP-literal host in the purpose's blocklist (reqwest never resolves
    /// it, so the resolver never sees it) and a scheme other than http or
    /// https.
    pub fn check(&self, purpose: Purpose, url: &Url) -> Result<(), Error> {
        match self.inner.refusal(purpose, url) {
            None => Ok(()),
            Some(RefusedHop {
                url,
                reason,
                bad_url,
            }) if bad_url => Err(Error::BadUrl {
                url,
                problem: reason,
            }),
            Some(RefusedHop { url, reason, .. }) => Err(Error::Refused { url, reason }),
        }
    }

    /// The egress error for a reqwest error, when it is one of the failures
    /// egress names: a name refused by the blocklist, a redirect hop refused,
    /// too many redirects, a name that does not resolve, and the failures of
    /// a `CONNECT` through the proxy (407, another refusal, the proxy
    /// unreachable, its reply cut short). reqwest does not keep the proxy's
    /// status line: a refusal other than 407 has no status code.
    pub fn classify(&self, err: &::reqwest::Error) -> Option<Error> {
        let proxy = || {
            self.inner
                .settings
                .https_proxy()
                .map_or_else(|| "(none)".to_owned(), ToString::to_string)
        };
        let target = || {
            err.url()
                .map(|url| {
                    format!(
                        "{}:{}",
                        url.host_str().unwrap_or_default(),
                        url.port_or_known_default().unwrap_or_default()
                    )
                })
                .unwrap_or_default()
        };
        if let Some(verdict) = resolve::resolver_verdict(err) {
            return Some(verdict);
        }
        for cause in resolve::causes(err) {
            if let Some(refused) = cause.downcast_ref::<RefusedHop>() {
                return Some(Error::Refused {
                    url: refused.url.clone(),
                    reason: refused.reason.clone(),
                });
            }
            if let Some(limit) = cause.downcast_ref::<RedirectLimit>() {
                return Some(Error::TooManyRedirects(limit.0));
            }
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(current) = cause {
            // hyper-util's tunnel error is not exported: known by its Debug form.
            let debug = format!("{current:?}");
            let problem = match debug.as_str() {
                "ProxyAuthRequired" => {
                    return Some(Error::ProxyAuth {
                        proxy: proxy(),
                        target: target(),
                        status: http::StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                        status_line: "407 (reqwest keeps no status line)".to_owned(),
                        scheme: None,
                        key: "https_proxy",
                    })
                }
                "TunnelUnsuccessful" => Some(
                    "it answered with a status other than 2xx or 407 (reqwest does not report which)",
                ),
                "TunnelUnexpectedEof" => Some("it closed the connection before answering"),
                "ProxyHeadersTooLong" => Some("its reply headers are too long"),
                _ => None,
            };
            if let Some(problem) = problem {
                return Some(Error::ProxyProtocol {
                    proxy: proxy(),
                    target: target(),
                    problem: problem.to_owned(),
                    source: None,
                });
            }
            if debug.starts_with("ConnectFailed(") {
                let source = find_io(current).map_or_else(
                    || std::io::Error::other(current.to_string()),
                    |io| std::io::Error::new(io.kind(), io.to_string()),
                );
                return Some(Error::Connect {
                    target: format!("proxy {}", proxy()),
                    source,
                });
            }
            cause = current.source();
        }
        None
    }
}

fn find_io<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut cause = err.source();
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        cause = current.source();
    }
    None
}

impl Inner {
    fn proxy_for(&self, purpose: Purpose, url: &Url) -> Option<Url> {
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        match Route::for_target(&self.settings, purpose, scheme, host, port) {
            Route::Forward { .. } => self.http_proxy.clone(),
            Route::Tunnel { .. } => self.https_proxy.clone(),
            Route::Direct { .. } | Route::Refused { .. } => None,
        }
    }

    /// Why `url` is refused for `purpose`, if it is.
    fn refusal(&self, purpose: Purpose, url: &Url) -> Option<RefusedHop> {
        let bad = |reason: String| RefusedHop {
            url: url.to_string(),
            reason,
            bad_url: true,
        };
        let uri: http::Uri = match url.as_str().parse() {
            Ok(uri) => uri,
            Err(e) => return Some(bad(format!("{e}"))),
        };
        match Route::decide(&self.settings, purpose, &uri) {
            Route::Refused { reason } => {
                let bad_url = !matches!(reason, crate::Reason::BlockedAddress(_));
                if let (false, Some(list)) = (bad_url, purpose.blocklist()) {
                    self.instruments.refused(purpose, list_name(list));
                }
                Some(RefusedHop {
                    url: url.to_string(),
                    reason: reason.to_string(),
                    bad_url,
                })
            }
            _ => None,
        }
    }
}

/// A proxy URL as reqwest takes it, credentials percent-encoded in it.
fn reqwest_url(proxy: &ProxyUrl) -> Url {
    let mut url = Url::parse(&format!(
        "{}://{}:{}",
        proxy.scheme().as_str(),
        proxy.host(),
        proxy.port()
    ))
    .expect("a parsed proxy URL is a valid URL");
    if let Some(credentials) = proxy.credentials() {
        // Both succeed on a URL with a host.
        let _ = url.set_username(credentials.user());
        let _ = url.set_password(credentials.password());
    }
    url
}

/// A redirect hop (or URL) the decision refuses.
#[derive(Debug, thiserror::Error)]
#[error("refused {url}: {reason}")]
struct RefusedHop {
    url: String,
    reason: String,
    /// Not an address refusal: the URL itself is unusable.
    bad_url: bool,
}

/// More redirects than allowed.
#[derive(Debug, thiserror::Error)]
#[error("more than {0} redirects")]
struct RedirectLimit(usize);

/// The resolver [`Routing::configure`] installs.
struct GuardedResolver {
    /// The system resolver with the purpose's blocklist.
    guarded: BlocklistResolver,
    /// The system resolver without one, for the proxies' own names.
    open: BlocklistResolver,
    exempt: Vec<String>,
    app: Option<AppResolver>,
    purpose: Purpose,
    instruments: Arc<Instruments>,
}

impl GuardedResolver {
    /// Counts a blocklist's refusal of a name in the metrics.
    fn count_refusal(
        instruments: &Instruments,
        purpose: Purpose,
        err: &(dyn std::error::Error + 'static),
    ) {
        if let (Some(crate::Error::Blocked { .. }), Some(list)) =
            (resolve::resolver_verdict(err), purpose.blocklist())
        {
            instruments.refused(purpose, list_name(list));
        }
    }

    fn is_exempt(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.exempt
            .iter()
            .any(|name| name.eq_ignore_ascii_case(host))
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let exempt = self.is_exempt(&host);
        match &self.app {
            None => {
                let resolver = if exempt { &self.open } else { &self.guarded }.clone();
                let (instruments, purpose) = (self.instruments.clone(), self.purpose);
                Box::pin(async move {
                    let addrs = resolver.resolve(&host).await.inspect_err(|e| {
                        GuardedResolver::count_refusal(&instruments, purpose, e);
                    })?;
                    Ok(Box::new(addrs.into_iter()) as Addrs)
                })
            }
            Some(app) => {
                let answer = app.resolve(name);
                let checker = self.guarded.clone();
                let (instruments, purpose) = (self.instruments.clone(), self.purpose);
                Box::pin(async move {
                    let addrs: Vec<SocketAddr> = answer.await?.collect();
                    if !exempt {
                        checker.check_answer(&host, &addrs).inspect_err(|e| {
                            GuardedResolver::count_refusal(&instruments, purpose, e);
                        })?;
                    }
                    Ok(Box::new(addrs.into_iter()) as Addrs)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyEnv;

    fn routing(vars: &[(&str, &str)]) -> Routing {
        let env = ProxyEnv::from_vars(vars.iter().copied());
        Routing::new(Arc::new(ProxySettings::builder(&env).build().unwrap()))
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn proxy_of(r: &Routing, purpose: Purpose, target: &str) -> Option<String> {
        r.inner
            .proxy_for(purpose, &url(target))
            .map(|u| u.to_string())
    }

    #[test]
    fn the_proxy_is_the_decisions() {
        let r = routing(&[
            ("HTTP_PROXY", "http://plain.example:3128"),
            (
                "HTTPS_PROXY",
                "http://alice:p%40ss:w%2Frd@proxy.example:3128",
            ),
            ("NO_PROXY", "internal.example,10.0.0.0/8,hs.example:8448"),
        ]);
        let tunnel = "http://alice:p%40ss%3Aw%2Frd@proxy.example:3128/";
        assert_eq!(
            proxy_of(&r, Purpose::Push, "https://push.example/").as_deref(),
            Some(tunnel)
        );
        assert_eq!(
            proxy_of(&r, Purpose::Push, "http://push.example/").as_deref(),
            Some("http://plain.example:3128/")
        );
        // Federation and key fetching use https_proxy only.
        assert_eq!(
            proxy_of(&r, Purpose::Federation, "http://hs.example/"),
            None
        );
        assert_eq!(
            proxy_of(&r, Purpose::KeyFetch, "https://hs.example/").as_deref(),
            Some(tunnel)
        );
        // Never proxied; no_proxy names, CIDR and ports.
        assert_eq!(
            proxy_of(&r, Purpose::Appservice, "https://as.example/"),
            None
        );
        assert_eq!(
            proxy_of(&r, Purpose::Push, "https://a.internal.example/"),
            None
        );
        assert_eq!(proxy_of(&r, Purpose::Oidc, "https://10.1.2.3/"), None);
        assert_eq!(
            proxy_of(&r, Purpose::Push, "https://hs.example:8448/"),
            None
        );
        assert!(proxy_of(&r, Purpose::Push, "https://hs.example:443/").is_some());
    }

    #[test]
    fn the_password_is_encoded_for_reqwest_and_masked_in_debug() {
        let r = routing(&[(
            "HTTPS_PROXY",
            "http://alice:p%40ss:w%2Frd@proxy.example:3128",
        )]);
        let url = r.inner.https_proxy.as_ref().unwrap();
        assert_eq!(url.username(), "alice");
        assert_eq!(url.password(), Some("p%40ss%3Aw%2Frd"));
        let debug = format!("{r:?}");
        assert!(debug.contains("alice:***@proxy.example"), "{debug}");
        assert!(
            !debug.contains("p%40ss") && !debug.contains("p@ss"),
            "{debug}"
        );
    }

    #[test]
    fn check_refuses_blocked_literals_and_other_schemes() {
        let r = routing(&[("HTTPS_PROXY", "http://proxy.example:3128")]);
        let err = r
            .check(Purpose::UrlPreview, &url("https://127.0.0.1/"))
            .unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{err}");
        assert!(err.to_string().contains("127.0.0.0/8"), "{err}");
        // Refused even though the route would be proxied.
        assert!(r
            .check(Purpose::Push, &url("https://[::ffff:10.0.0.1]/"))
            .is_err());
        let err = r
            .check(Purpose::Push, &url("ftp://files.example/"))
            .unwrap_err();
        assert!(matches!(err, Error::BadUrl { .. }), "{err}");
        r.check(Purpose::Push, &url("https://push.example/"))
            .unwrap();
        // No blocklist for OIDC.
        r.check(Purpose::Oidc, &url("http://127.0.0.1/")).unwrap();
    }

    #[test]
    fn the_proxy_hosts_are_exempt() {
        let r = routing(&[
            ("HTTP_PROXY", "http://proxy.internal:3128"),
            ("HTTPS_PROXY", "http://10.0.0.5:3128"),
        ]);
        assert_eq!(r.inner.exempt, ["proxy.internal"]);
        let resolver = GuardedResolver {
            guarded: BlocklistResolver::new(None, Arc::default()),
            open: BlocklistResolver::new(None, Arc::default()),
            exempt: r.inner.exempt.clone(),
            app: None,
            purpose: Purpose::Push,
            instruments: r.inner.instruments.clone(),
        };
        assert!(resolver.is_exempt("Proxy.Internal."));
        assert!(!resolver.is_exempt("other.internal"));
    }

    #[test]
    fn connect_timeouts_follow_the_purpose() {
        let r = routing(&[]).with_timeouts(Timeouts {
            connect: Duration::from_secs(3),
            federation_connect: Duration::from_secs(7),
            ..Timeouts::default()
        });
        assert_eq!(r.connect_timeout(Purpose::Push), Duration::from_secs(3));
        assert_eq!(
            r.connect_timeout(Purpose::Federation),
            Duration::from_secs(7)
        );
    }
}
