//! The request span: one per exchange (each redirect hop is one), named
//! and filled after OpenTelemetry's HTTP client conventions, so a
//! `tracing-opentelemetry` layer exports it as it is. The `egress::wire`
//! lines are events inside it.
//!
//! Fields: `otel.name` (the method), `otel.kind` (`client`),
//! `http.request.method`, `server.address`, `server.port`, `url.full`
//! (without user info, signature-like query values redacted),
//! `egress.purpose`, `egress.route`, `egress.proxy` (password masked),
//! `http.request.resend_count` (redirect hops before this one, plus one when
//! a broken pooled connection made egress send it again),
//! `http.response.status_code`, `error.type` (an [`Error::kind`](crate::Error::kind),
//! or `timeout` / `cancelled` when the request's time ran out or its
//! caller dropped it).

use std::fmt;

use http::{Method, Uri};
use tracing::field::Empty;
use tracing::Span;

use crate::connect::Target;
use crate::instruments::RouteKind;
use crate::proxy_url::unbracket;
use crate::{Purpose, Route};

/// The span name (OpenTelemetry's name is in `otel.name`).
pub(crate) const NAME: &str = "http_request";

/// A span for one exchange.
pub(crate) fn request(
    purpose: Purpose,
    route: &Route<'_>,
    kind: RouteKind,
    method: &Method,
    uri: &Uri,
    target: &Target<'_>,
    attempt: usize,
) -> Span {
    // Every field known now is given now: a subscriber that formats fields
    // (tracing-subscriber's fmt and JSON layers) pays again for each
    // `record`, the JSON one by parsing what it formatted before.
    macro_rules! span {
        ($($proxy:tt)*) => {
            tracing::info_span!(
                target: "egress::client",
                NAME,
                otel.name = %method,
                otel.kind = "client",
                http.request.method = %method,
                server.address = %unbracket(target.host),
                server.port = target.port,
                url.full = %UrlFull(uri),
                egress.purpose = %purpose.name(),
                egress.route = %kind.as_str(),
                $($proxy)*
                http.request.resend_count = if attempt > 0 { Some(attempt) } else { None },
                http.response.status_code = Empty,
                error.type = Empty,
            )
        };
    }
    match route.proxy() {
        Some(proxy) => span!(egress.proxy = %proxy,),
        None => span!(),
    }
}

/// Records how the exchange ended; dropped before that (the request's time
/// ran out, or its caller dropped the future), records `error.type` as
/// `timeout` or `cancelled`.
pub(crate) struct Ended {
    span: Span,
    deadline: tokio::time::Instant,
    recorded: bool,
}

impl Ended {
    pub(crate) fn new(span: Span, deadline: tokio::time::Instant) -> Ended {
        Ended {
            span,
            deadline,
            recorded: false,
        }
    }

    /// The span, as the parent of the exchange's events.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    pub(crate) fn status(&mut self, status: u16) {
        self.recorded = true;
        self.span.record("http.response.status_code", status);
    }

    pub(crate) fn error(&mut self, kind: &'static str) {
        self.recorded = true;
        self.span.record("error.type", kind);
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        if !self.recorded && !self.span.is_disabled() {
            let kind = if tokio::time::Instant::now() >= self.deadline {
                "timeout"
            } else {
                "cancelled"
            };
            self.span.record("error.type", kind);
        }
    }
}

/// Query parameters whose values are credentials or signatures: shown as
/// `REDACTED` (OpenTelemetry's list, with Amazon's signed-URL parameters and
/// Matrix's `access_token`).
const REDACTED_QUERY: [&str; 8] = [
    "AWSAccessKeyId",
    "Signature",
    "sig",
    "X-Goog-Signature",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "access_token",
];

/// `url.full`: the URL without user info, with the values of
/// [`REDACTED_QUERY`] parameters replaced.
pub(crate) struct UrlFull<'a>(pub(crate) &'a Uri);

impl fmt::Display for UrlFull<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        if let Some(scheme) = uri.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(authority) = uri.authority() {
            let host = authority
                .as_str()
                .rsplit_once('@')
                .map_or(authority.as_str(), |(_, host)| host);
            f.write_str(host)?;
        }
        f.write_str(uri.path())?;
        let Some(query) = uri.query() else {
            return Ok(());
        };
        f.write_str("?")?;
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            match pair.split_once('=') {
                Some((name, _)) if REDACTED_QUERY.contains(&name) => {
                    write!(f, "{name}=REDACTED")?;
                }
                _ => f.write_str(pair)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(url: &str) -> String {
        UrlFull(&url.parse().unwrap()).to_string()
    }

    #[test]
    fn url_full_drops_user_info_and_redacts_signatures() {
        assert_eq!(
            full("https://a:b@x.test:8448/p?q=1"),
            "https://x.test:8448/p?q=1"
        );
        assert_eq!(
            full("https://cdn.test/m?X-Amz-Signature=abc&w=1&sig=zz"),
            "https://cdn.test/m?X-Amz-Signature=REDACTED&w=1&sig=REDACTED"
        );
        assert_eq!(full("http://[::1]:80/"), "http://[::1]:80/");
        assert_eq!(full("http://x.test/?flag"), "http://x.test/?flag");
    }
}
