//! Errors of outbound requests.

use crate::ConfigError;

/// Which wait ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutStep {
    /// Resolving the name and opening the TCP connection (to the origin or the proxy).
    Connect,
    /// A TLS handshake (with the proxy or the origin).
    TlsHandshake,
    /// The proxy's answer to `CONNECT`.
    ProxyReply,
    /// The response headers: the whole request's time limit.
    Response,
    /// More of the response body, after it had sent nothing for a while.
    BodyIdle,
}

impl TimeoutStep {
    fn describe(self) -> &'static str {
        match self {
            TimeoutStep::Connect => "connecting to",
            TimeoutStep::TlsHandshake => "in the TLS handshake with",
            TimeoutStep::ProxyReply => "waiting for the answer to CONNECT from",
            TimeoutStep::Response => "waiting for the response from",
            TimeoutStep::BodyIdle => "waiting for more of the response body from",
        }
    }
}

/// Why an outbound request failed. Each variant states one fact and carries
/// it typed (status codes, the I/O error as `source()`); advice on what to do
/// is the application's business (the `egress` CLI adds it). Proxies are
/// shown with their password masked; credentials never appear.
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
    /// A redirect's `Location` cannot be resolved to an http(s) URL.
    #[error("the redirect from {from} has an unusable Location `{location}`: {problem}")]
    BadRedirect {
        /// The URL that answered with the redirect.
        from: String,
        /// The `Location` header as sent.
        location: String,
        /// What is wrong with it.
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
    #[error("refused {host}: among its addresses, {blocked}; none of them is used")]
    Blocked {
        /// The host name.
        host: String,
        /// The address, its range and the setting.
        blocked: crate::Blocked,
    },
    /// The host name could not be resolved.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// TCP connection to the origin or the proxy failed.
    #[error("cannot connect to {target}")]
    Connect {
        /// `host:port`, or `proxy http://…:3128`.
        target: String,
        /// The connect error.
        source: std::io::Error,
    },
    /// The proxy asks for credentials (407, or a 401 the proxy made itself, as tinyproxy does).
    #[error("proxy {proxy} requires authentication for {target}: it answered `{status_line}`{}", scheme.as_ref().map(|s| format!(" (Proxy-Authenticate: {s})")).unwrap_or_default())]
    ProxyAuth {
        /// The proxy, password masked.
        proxy: String,
        /// `host:port` asked for.
        target: String,
        /// The proxy's status code.
        status: http::StatusCode,
        /// The proxy's status line, for display.
        status_line: String,
        /// The scheme the proxy asks for (`Basic`, `Negotiate`, …).
        scheme: Option<String>,
        /// The setting that names the proxy: `http_proxy` or `https_proxy`.
        key: &'static str,
    },
    /// The proxy refuses to connect there (403).
    #[error("proxy {proxy} refused CONNECT {target}: it answered `{status_line}`")]
    ProxyForbidden {
        /// The proxy.
        proxy: String,
        /// `host:port`.
        target: String,
        /// The proxy's status code.
        status: http::StatusCode,
        /// The proxy's status line, for display.
        status_line: String,
    },
    /// The proxy could not reach the destination (502, 503, 504).
    #[error("the proxy could not reach {target}: proxy {proxy} answered `{status_line}`")]
    ProxyUnreachable {
        /// The proxy.
        proxy: String,
        /// `host:port`.
        target: String,
        /// The proxy's status code.
        status: http::StatusCode,
        /// The proxy's status line, for display.
        status_line: String,
    },
    /// Any other non-2xx CONNECT reply.
    #[error("proxy {proxy} failed CONNECT {target}: it answered `{status_line}`")]
    ProxyStatus {
        /// The proxy.
        proxy: String,
        /// `host:port`.
        target: String,
        /// The proxy's status code.
        status: http::StatusCode,
        /// The proxy's status line, for display.
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
        /// The I/O error, when the connection failed.
        source: Option<std::io::Error>,
    },
    /// A TLS certificate was not accepted.
    #[error("TLS certificate of {peer} was not accepted")]
    Certificate {
        /// `proxy https://…` or the origin host.
        peer: String,
        /// True when the peer is the proxy.
        is_proxy: bool,
        /// The verifier's verdict.
        source: rustls::Error,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with {peer} failed")]
    Tls {
        /// `proxy https://…` or the origin host.
        peer: String,
        /// Why.
        source: std::io::Error,
    },
    /// A step did not finish in time.
    #[error("timed out after {after:?} {} {peer}", step.describe())]
    Timeout {
        /// What was being waited for.
        step: TimeoutStep,
        /// Whom it was waiting for: `host:port`, or `proxy http://…`.
        peer: String,
        /// The limit.
        after: std::time::Duration,
    },
    /// More redirects than allowed.
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    /// The HTTP exchange with the origin (or forwarding proxy) failed.
    #[error("HTTP exchange with {peer} failed")]
    Http {
        /// The origin or proxy.
        peer: String,
        /// hyper's error.
        source: hyper::Error,
    },
}

impl Error {
    /// True when a time limit passed ([`Error::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// This error's message followed by those of its causes, joined with
    /// `: ` — for a log line or a person, where `Display` alone (one
    /// sentence, as the Rust convention goes) leaves the causes out.
    pub fn with_causes(&self) -> String {
        chain(self)
    }

    /// The kind of error as a short, stable snake_case name, one per
    /// variant: `config`, `bad_url`, `bad_redirect`, `refused`, `blocked`,
    /// `resolve`, `connect`, `proxy_auth`, `proxy_forbidden`,
    /// `proxy_unreachable`, `proxy_status`, `proxy_protocol`, `certificate`,
    /// `tls`, `timeout`, `too_many_redirects`, `http`. It is the `outcome`
    /// label of `egress_client_requests_total` and the `error.type` of the
    /// request span: a bounded set, unlike the message.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::BadUrl { .. } => "bad_url",
            Error::BadRedirect { .. } => "bad_redirect",
            Error::Refused { .. } => "refused",
            Error::Blocked { .. } => "blocked",
            Error::Resolve { .. } => "resolve",
            Error::Connect { .. } => "connect",
            Error::ProxyAuth { .. } => "proxy_auth",
            Error::ProxyForbidden { .. } => "proxy_forbidden",
            Error::ProxyUnreachable { .. } => "proxy_unreachable",
            Error::ProxyStatus { .. } => "proxy_status",
            Error::ProxyProtocol { .. } => "proxy_protocol",
            Error::Certificate { .. } => "certificate",
            Error::Tls { .. } => "tls",
            Error::Timeout { .. } => "timeout",
            Error::TooManyRedirects(_) => "too_many_redirects",
            Error::Http { .. } => "http",
        }
    }

    /// The proxy's status code, for the errors that carry one.
    pub fn proxy_status(&self) -> Option<http::StatusCode> {
        match self {
            Error::ProxyAuth { status, .. }
            | Error::ProxyForbidden { status, .. }
            | Error::ProxyUnreachable { status, .. }
            | Error::ProxyStatus { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An error and its sources, joined with `: ` (for messages that embed an
/// error, as the doctor's details and federation's per-target list do).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        // Wrappers often repeat their cause's text: print it once.
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}
