//! Following a redirect: the `Location` is resolved against the URL that
//! answered, by RFC 3986 (`url::Url::join`); the method changes as RFC 9110
//! says; credentials stay with their origin.

use http::header::{AUTHORIZATION, COOKIE, HOST};
use http::{HeaderValue, Method, Request, StatusCode, Uri};

use super::RequestBody;
use crate::Error;

/// Redirects are never followed more than this many times.
pub const MAX_REDIRECTS: usize = 10;

/// Whether a response is a redirect to follow: a 3xx with a `Location`,
/// except 300 (a choice for a person) and 304 (not a redirect).
pub(crate) fn location(status: StatusCode, headers: &http::HeaderMap) -> Option<&HeaderValue> {
    if !status.is_redirection()
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::MULTIPLE_CHOICES
    {
        return None;
    }
    headers.get(http::header::LOCATION)
}

/// The absolute URL a `Location` points to, from the URL that sent it.
pub(crate) fn join(from: &Uri, location: &HeaderValue) -> Result<Uri, Error> {
    let text = String::from_utf8_lossy(location.as_bytes());
    let bad = |problem: String| Error::BadRedirect {
        from: from.to_string(),
        location: text.clone().into_owned(),
        problem,
    };
    let location = location
        .to_str()
        .map_err(|_| bad("it is not ASCII".to_owned()))?
        .trim();
    let base = url::Url::parse(&from.to_string()).map_err(|e| bad(format!("the base: {e}")))?;
    let mut next = base.join(location).map_err(|e| bad(e.to_string()))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(bad(format!(
            "scheme `{}` is not http or https",
            next.scheme()
        )));
    }
    if next.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host".to_owned()));
    }
    // The fragment stays with the client; it is never sent.
    next.set_fragment(None);
    next.as_str()
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))
}

/// Turns the request that got `status` into the request for `target`:
/// 303 (and 301/302 after POST) become GET without a body; `Authorization`
/// and `Cookie` are dropped when the origin changes; `Host` is set anew.
pub(crate) fn rewrite(request: &mut Request<RequestBody>, status: StatusCode, target: Uri) {
    let to_get = status == StatusCode::SEE_OTHER
        || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
            && request.method() == Method::POST);
    if to_get {
        *request.method_mut() = Method::GET;
        *request.body_mut() = RequestBody::default();
        request.headers_mut().remove(http::header::CONTENT_TYPE);
        request.headers_mut().remove(http::header::CONTENT_LENGTH);
    }
    let same_origin = request.uri().scheme() == target.scheme()
        && request.uri().authority() == target.authority();
    if !same_origin {
        request.headers_mut().remove(AUTHORIZATION);
        request.headers_mut().remove(COOKIE);
    }
    request.headers_mut().remove(HOST);
    *request.uri_mut() = target;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(base: &str, location: &str) -> Result<String, Error> {
        let base: Uri = base.parse().unwrap();
        join(&base, &HeaderValue::from_str(location).unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn locations_resolve_by_rfc_3986() {
        let base = "https://a.example:8443/dir/file?q=1";
        let ok = |l: &str| j(base, l).unwrap();
        assert_eq!(ok("https://b.example/x"), "https://b.example/x");
        assert_eq!(ok("//c.example/y"), "https://c.example/y");
        assert_eq!(ok("/abs"), "https://a.example:8443/abs");
        assert_eq!(ok("rel?x=2"), "https://a.example:8443/dir/rel?x=2");
        // A query alone keeps the path (a hand-made join gave /dir/?x=2).
        assert_eq!(ok("?x=2"), "https://a.example:8443/dir/file?x=2");
        // `://` inside the query is not a scheme (a hand-made join called this a bad URL).
        assert_eq!(
            ok("/login?next=https://a.example/"),
            "https://a.example:8443/login?next=https://a.example/"
        );
        assert_eq!(ok("../up"), "https://a.example:8443/up");
        assert_eq!(ok("./x"), "https://a.example:8443/dir/x");
        assert_eq!(ok("x#frag"), "https://a.example:8443/dir/x");
        assert_eq!(ok(" /trimmed "), "https://a.example:8443/trimmed");
        assert_eq!(ok("HTTP://B.EXAMPLE/"), "http://b.example/");
    }

    #[test]
    fn unusable_locations_are_clear_errors() {
        let base = "https://a.example/dir/file";
        for bad in [
            "http://[::1",
            "ftp://files.example/x",
            "mailto:a@b.example",
            "https://",
        ] {
            match j(base, bad) {
                Err(Error::BadRedirect { from, location, .. }) => {
                    assert_eq!(from, base);
                    assert_eq!(location, bad);
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let e = j(base, "ftp://files.example/x").unwrap_err().to_string();
        assert!(
            e.contains("`ftp://files.example/x`") && e.contains("ftp"),
            "{e}"
        );
    }

    #[test]
    fn method_and_credentials() {
        let mut request = Request::post("https://a.example/form")
            .header(AUTHORIZATION, "Bearer x")
            .header(HOST, "a.example")
            .body(RequestBody::from("data"))
            .unwrap();
        rewrite(
            &mut request,
            StatusCode::FOUND,
            "https://b.example/next".parse().unwrap(),
        );
        assert_eq!(request.method(), Method::GET);
        assert!(request.headers().get(AUTHORIZATION).is_none());
        assert!(request.headers().get(HOST).is_none());

        let mut request = Request::put("https://a.example/x")
            .header(AUTHORIZATION, "Bearer x")
            .body(RequestBody::from("data"))
            .unwrap();
        rewrite(
            &mut request,
            StatusCode::TEMPORARY_REDIRECT,
            "https://a.example/y".parse().unwrap(),
        );
        assert_eq!(request.method(), Method::PUT);
        assert!(request.headers().get(AUTHORIZATION).is_some());
    }
}
