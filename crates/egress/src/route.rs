//! The routing decision: purpose + URL → [`Route`], with a reason a person can
//! read. Pure: no I/O, no allocation on the common paths.

use std::fmt;
use std::net::IpAddr;

use http::Uri;

use crate::blocklist::{Blocked, Blocklist};
use crate::no_proxy::NoProxyMatch;
use crate::proxy_url::{unbracket, ProxyUrl};
use crate::purpose::{ProxyUse, Purpose};
use crate::settings::{ProxySettings, Source};

/// The scheme of a target URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

impl Scheme {
    /// The default port: 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// The proxy setting that serves this scheme.
    pub fn proxy_key(self) -> &'static str {
        match self {
            Scheme::Http => "http_proxy",
            Scheme::Https => "https_proxy",
        }
    }
}

/// How a connection is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Straight to the origin. When `blocklist` is set, every address the
    /// host resolves to is checked against it before connecting.
    Direct {
        /// The blocklist applied to the resolved addresses, if any.
        blocklist: Option<&'a Blocklist>,
        /// Why the proxy is not used.
        reason: Reason<'a>,
    },
    /// An `http://` target through `http_proxy`: absolute-form requests
    /// (`GET http://host/path`) sent to the proxy.
    Forward {
        /// The proxy.
        proxy: &'a ProxyUrl,
        /// Which setting chose the proxy.
        reason: Reason<'a>,
    },
    /// `CONNECT host:port` through the proxy, then TLS to the origin inside
    /// the tunnel.
    Tunnel {
        /// The proxy.
        proxy: &'a ProxyUrl,
        /// Which setting chose the proxy.
        reason: Reason<'a>,
    },
    /// No connection is made.
    Refused {
        /// Why.
        reason: Reason<'a>,
    },
}

/// Why a route was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason<'a> {
    /// A proxy setting applies and no `no_proxy` entry matches.
    ProxySet {
        /// `http_proxy` or `https_proxy`.
        key: &'static str,
        /// Where it was set.
        source: &'a Source,
        /// The host that was checked against `no_proxy`.
        host: &'a str,
    },
    /// No proxy is set for this target.
    NoProxySet {
        /// The setting that would serve it.
        key: &'static str,
        /// Where it was unset (a YAML `null`), or `Default`.
        source: &'a Source,
    },
    /// A `no_proxy` entry matches the host.
    Bypassed {
        /// The host.
        host: &'a str,
        /// The entry, or `*`.
        entry: NoProxyMatch<'a>,
        /// Where `no_proxy` was set.
        source: &'a Source,
    },
    /// Federation and key fetching use `https_proxy` only, and this is `http://`.
    HttpsProxyOnly(Purpose),
    /// The purpose never uses the proxy.
    NeverProxied(Purpose),
    /// Redis is not HTTP.
    NotHttp,
    /// The URL's host is an IP literal in the purpose's blocklist.
    BlockedAddress(Blocked),
    /// A scheme other than `http` or `https`.
    UnsupportedScheme(&'a str),
    /// A URL without a scheme or host.
    NotAbsolute,
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ProxySet { key, source, host } => {
                write!(f, "{key} is set by {source} and no no_proxy entry matches {host}")
            }
            Reason::NoProxySet { key, source } => match source {
                Source::Default => write!(f, "no {key} is set"),
                _ => write!(f, "{key} is empty or null in {source}"),
            },
            Reason::Bypassed {
                host,
                entry: NoProxyMatch::Everything,
                source,
            } => write!(f, "no_proxy is `*` ({source}): {host} and every other host bypass the proxy"),
            Reason::Bypassed {
                host,
                entry: NoProxyMatch::Entry(entry),
                source,
            } => write!(f, "no_proxy entry `{entry}` ({source}) matches {host}"),
            Reason::HttpsProxyOnly(purpose) => write!(
                f,
                "{purpose} uses https_proxy only, and this is an http:// URL; http_proxy is never used for it"
            ),
            Reason::NeverProxied(purpose) => {
                write!(f, "{} never use the proxy", purpose.description())
            }
            Reason::NotHttp => f.write_str(
                "redis is not HTTP: connections from workers to Redis are always direct",
            ),
            Reason::BlockedAddress(blocked) => {
                write!(f, "the URL's host {blocked}; refused even through a proxy")
            }
            Reason::UnsupportedScheme(scheme) => {
                write!(f, "scheme `{scheme}` is not supported: only http:// and https:// URLs")
            }
            Reason::NotAbsolute => f.write_str("the URL needs a scheme and a host, as in https://example.com/"),
        }
    }
}

impl<'a> Route<'a> {
    /// Decides how `purpose` connects to `url`. See [`Route::for_target`].
    pub fn decide(settings: &'a ProxySettings, purpose: Purpose, url: &'a Uri) -> Route<'a> {
        if !purpose.is_http() {
            return Route::Direct {
                blocklist: None,
                reason: Reason::NotHttp,
            };
        }
        let scheme = match url.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            Some(other) => {
                return Route::Refused {
                    reason: Reason::UnsupportedScheme(other),
                }
            }
            None => {
                return Route::Refused {
                    reason: Reason::NotAbsolute,
                }
            }
        };
        let host = match url.host() {
            Some(host) if !host.is_empty() => host,
            _ => {
                return Route::Refused {
                    reason: Reason::NotAbsolute,
                }
            }
        };
        let port = url.port_u16().unwrap_or(scheme.default_port());
        Route::for_target(settings, purpose, scheme, host, port)
    }

    /// Decides how `purpose` connects to `host:port` over `scheme`. This is
    /// the decision for federation targets found by server discovery.
    ///
    /// 1. Redis is always direct; other purposes that never use the proxy
    ///    (application services, identity servers, workers) are direct.
    /// 2. An IP-literal host in the purpose's blocklist is refused, even when
    ///    the route would be proxied.
    /// 3. `http_proxy` serves `http://`, `https_proxy` serves `https://`;
    ///    federation and key fetching use `https_proxy` only.
    /// 4. A `no_proxy` match on the host (and port) goes direct.
    /// 5. Otherwise `http://` is forwarded and `https://` tunnelled.
    pub fn for_target(
        settings: &'a ProxySettings,
        purpose: Purpose,
        scheme: Scheme,
        host: &'a str,
        port: u16,
    ) -> Route<'a> {
        if !purpose.is_http() {
            return Route::Direct {
                blocklist: None,
                reason: Reason::NotHttp,
            };
        }
        let blocklist = purpose
            .blocklist()
            .map(|kind| settings.blocklists().get(kind));
        let ip = unbracket(host).parse::<IpAddr>().ok();
        if let (Some(ip), Some(list)) = (ip, blocklist) {
            if let Some(blocked) = list.check(ip) {
                return Route::Refused {
                    reason: Reason::BlockedAddress(blocked),
                };
            }
        }
        let proxy_setting = match (purpose.proxy_use(), scheme) {
            (ProxyUse::Never, _) => {
                return Route::Direct {
                    blocklist,
                    reason: Reason::NeverProxied(purpose),
                }
            }
            (ProxyUse::HttpsProxyOnly, Scheme::Http) => {
                return Route::Direct {
                    blocklist,
                    reason: Reason::HttpsProxyOnly(purpose),
                }
            }
            (_, Scheme::Http) => settings.http_proxy_setting(),
            (_, Scheme::Https) => settings.https_proxy_setting(),
        };
        let Some(proxy) = &proxy_setting.value else {
            return Route::Direct {
                blocklist,
                reason: Reason::NoProxySet {
                    key: scheme.proxy_key(),
                    source: &proxy_setting.source,
                },
            };
        };
        let no_proxy = settings.no_proxy();
        let bypass = match ip {
            Some(ip) => no_proxy.value.matches_ip(ip, port),
            None => no_proxy.value.matches_name(host, port),
        };
        if let Some(entry) = bypass {
            return Route::Direct {
                blocklist,
                reason: Reason::Bypassed {
                    host,
                    entry,
                    source: &no_proxy.source,
                },
            };
        }
        let reason = Reason::ProxySet {
            key: scheme.proxy_key(),
            source: &proxy_setting.source,
            host,
        };
        match scheme {
            Scheme::Http => Route::Forward { proxy, reason },
            Scheme::Https => Route::Tunnel { proxy, reason },
        }
    }

    /// Why this route was chosen.
    pub fn reason(&self) -> &Reason<'a> {
        match self {
            Route::Direct { reason, .. }
            | Route::Forward { reason, .. }
            | Route::Tunnel { reason, .. }
            | Route::Refused { reason } => reason,
        }
    }

    /// The proxy used, if any.
    pub fn proxy(&self) -> Option<&'a ProxyUrl> {
        match self {
            Route::Forward { proxy, .. } | Route::Tunnel { proxy, .. } => Some(proxy),
            Route::Direct { .. } | Route::Refused { .. } => None,
        }
    }

    /// `"direct"`, `"proxy"` or `"refused"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Direct { .. } => "direct",
            Route::Forward { .. } | Route::Tunnel { .. } => "proxy",
            Route::Refused { .. } => "refused",
        }
    }

    /// `Some("forward")` for absolute-form requests, `Some("connect")` for a
    /// tunnel, `None` otherwise.
    pub fn mode(&self) -> Option<&'static str> {
        match self {
            Route::Forward { .. } => Some("forward"),
            Route::Tunnel { .. } => Some("connect"),
            Route::Direct { .. } | Route::Refused { .. } => None,
        }
    }

    /// Whether the destination's resolved addresses are checked against a
    /// blocklist: only on direct routes, for purposes that have one. (Through
    /// a proxy, the proxy resolves the name; an IP-literal URL host is
    /// checked before any route is taken.)
    pub fn blocklist_applies(&self) -> bool {
        matches!(
            self,
            Route::Direct {
                blocklist: Some(_),
                ..
            }
        )
    }

    /// One sentence: what happens and why.
    pub fn explain(&self) -> String {
        match self {
            Route::Direct { blocklist, reason } => {
                let guard = match blocklist {
                    Some(list) => format!(", resolved addresses checked against {}", list.name()),
                    None => String::new(),
                };
                format!("direct{guard}: {reason}")
            }
            Route::Forward { proxy, reason } => {
                format!("through proxy {proxy} (absolute-form request): {reason}")
            }
            Route::Tunnel { proxy, reason } => {
                format!("through proxy {proxy} (CONNECT tunnel): {reason}")
            }
            Route::Refused { reason } => format!("refused: {reason}"),
        }
    }
}

impl fmt::Display for Route<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explain())
    }
}
