//! Exit codes, shared by the commands. Where curl has a code for the same
//! failure, it is the same number.

use egress::Error;

/// A 2xx response, or every check passed.
pub const OK: u8 = 0;
/// Anything else that failed.
pub const FAILURE: u8 = 1;
/// Usage error (clap's own code).
pub const USAGE: u8 = 2;
/// The host name could not be resolved (curl: 6).
pub const RESOLVE: u8 = 6;
/// The TCP connection failed: origin or proxy down (curl: 7).
pub const CONNECT: u8 = 7;
/// The response status was not 2xx (curl --fail: 22).
pub const HTTP_STATUS: u8 = 22;
/// A time limit passed (curl: 28).
pub const TIMEOUT: u8 = 28;
/// TLS failed for another reason than the certificate (curl: 35).
pub const TLS: u8 = 35;
/// Refused by the IP blocklist (egress).
pub const BLOCKED: u8 = 40;
/// The proxy requires authentication: 407, or tinyproxy's 401 (egress).
pub const PROXY_AUTH: u8 = 41;
/// The proxy refused or failed the CONNECT: 403, 5xx, other status (egress).
pub const PROXY_REFUSED: u8 = 42;
/// The proxy's reply was not HTTP, too large or cut short (egress).
pub const PROXY_PROTOCOL: u8 = 43;
/// Too many redirects (curl: 47).
pub const REDIRECTS: u8 = 47;
/// The HTTP exchange failed after connecting (curl: 56).
pub const RECV: u8 = 56;
/// The TLS certificate was not accepted (curl: 60).
pub const CERTIFICATE: u8 = 60;
/// Configuration error (sysexits EX_CONFIG).
pub const CONFIG: u8 = 78;

/// The table printed by `--help`.
pub const HELP: &str = "Exit codes:
   0  2xx response
   6  cannot resolve the host name
   7  cannot connect (origin or proxy down)
  22  the response status is not 2xx
  28  timed out
  35  TLS handshake failed
  40  refused by the IP blocklist
  41  the proxy requires authentication (407, or 401 from tinyproxy)
  42  the proxy refused or failed the CONNECT (403, 502/503/504, other)
  43  the proxy's reply is not valid HTTP
  47  too many redirects, or an unusable redirect Location
  56  the HTTP exchange failed
  60  TLS certificate not accepted
  78  configuration error
   2  usage error";

/// The exit code for an error.
pub fn code(err: &Error) -> u8 {
    match err {
        Error::Config(_) => CONFIG,
        Error::BadUrl { .. } => USAGE,
        Error::Refused { .. } | Error::Blocked { .. } => BLOCKED,
        Error::Resolve { .. } => RESOLVE,
        Error::Connect { .. } => CONNECT,
        Error::ProxyAuth { .. } => PROXY_AUTH,
        Error::ProxyForbidden { .. }
        | Error::ProxyUnreachable { .. }
        | Error::ProxyStatus { .. } => PROXY_REFUSED,
        Error::ProxyProtocol { .. } => PROXY_PROTOCOL,
        Error::Certificate { .. } => CERTIFICATE,
        Error::Tls { .. } => TLS,
        Error::Timeout { .. } => TIMEOUT,
        Error::TooManyRedirects(_) | Error::BadRedirect { .. } => REDIRECTS,
        Error::Http { .. } => RECV,
        _ => FAILURE,
    }
}
