//! Errors of outbound requests.

use crate::ConfigError;

/// Why an outbound request failed. Messages name the host, the proxy
/// (password masked) and what to check; credentials never appear.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The settings are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The URL cannot be requested (bad scheme, no host, …).
    #[error("cannot request `{url}`: {problem}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The routing decision refused the URL (an IP literal in the blocklist).
    #[error("refused {url}: {reason}")]
    Refused {
        /// The URL.
        url: String,
        /// The decision's reason.
        reason: String,
    },
    /// A host name resolved to an address in the blocklist; no address of it is used.
    #[error("refused {host}: it resolves to {blocked}; no address of it is used")]
    Blocked {
        /// The host name.
        host: String,
        /// The address, its range and the setting.
        blocked: crate::Blocked,
    },
    /// The host name could not be resolved.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// TCP connection to the origin or the proxy failed.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// `host:port`, or `proxy http://…:3128`.
        target: String,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy asks for credentials (407, or 401 from tinyproxy).
    #[error("proxy {proxy} requires authentication for {target}: it answered `{status_line}`{}. Check the user name and password in {key}", scheme.as_ref().map(|s| format!(" (Proxy-Authenticate: {s})")).unwrap_or_default())]
    ProxyAuth {
        /// The proxy, password masked.
        proxy: String,
        /// `host:port` asked for.
        target: String,
        /// The proxy's status line.
        status_line: String,
        /// The scheme the proxy asks for (`Basic`, `Negotiate`, …).
        scheme: Option<String>,
        /// `http_proxy` or `https_proxy`.
        key: &'static str,
    },
    /// The proxy refuses to connect there (403).
    #[error("proxy {proxy} refused CONNECT {target}: `{status_line}`. Its access rules do not allow this destination")]
    ProxyForbidden {
        /// The proxy.
        proxy: String,
        /// `host:port`.
        target: String,
        /// The proxy's status line.
        status_line: String,
    },
    /// The proxy could not reach the destination (502, 503, 504).
    #[error("the proxy could not reach {target}: proxy {proxy} answered `{status_line}`")]
    ProxyUnreachable {
        /// The proxy.
        proxy: String,
        /// `host:port`.
        target: String,
        /// The proxy's status line.
        status_line: String,
    },
    /// Any other non-2xx CONNECT reply.
    #[error("proxy {proxy} failed CONNECT {target}: `{status_line}`")]
    ProxyStatus {
        /// The proxy.
        proxy: String,
        /// `host:port`.
        target: String,
        /// The proxy's status line.
        status_line: String,
    },
    /// The proxy's reply is not HTTP, too large, or cut short.
    #[error("proxy {proxy} sent a bad reply to CONNECT {target}: {problem}")]
    ProxyProtocol {
        /// The proxy.
        proxy: String,
        /// `host:port`.
        target: String,
        /// What was wrong.
        problem: String,
    },
    /// A TLS certificate was not accepted.
    #[error("TLS certificate of {peer} was not accepted: {source}.{}", hint(*is_proxy))]
    Certificate {
        /// `proxy https://…` or the origin host.
        peer: String,
        /// True when the peer is the proxy.
        is_proxy: bool,
        /// The verifier's verdict.
        source: rustls::Error,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with {peer} failed: {source}")]
    Tls {
        /// `proxy https://…` or the origin host.
        peer: String,
        /// Why.
        source: std::io::Error,
    },
    /// A step did not finish in time.
    #[error("timed out after {after:?} {step}")]
    Timeout {
        /// What was being waited for.
        step: String,
        /// The limit.
        after: std::time::Duration,
    },
    /// More redirects than allowed.
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// The HTTP exchange with the origin (or forwarding proxy) failed.
    #[error("HTTP error talking to {peer}: {source}")]
    Http {
        /// The origin or proxy.
        peer: String,
        /// hyper's error.
        source: hyper::Error,
    },
}

fn hint(is_proxy: bool) -> &'static str {
    if is_proxy {
        " The proxy's certificate must be issued for the proxy's host name by a CA in the system \
         trust store (SSL_CERT_FILE / SSL_CERT_DIR add one). To test whether this is the problem, \
         `use_insecure_ssl_client_just_for_testing_do_not_use: true` turns the check off \
         (never in production)"
    } else {
        ""
    }
}

impl Error {
    /// True when a time limit passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}
