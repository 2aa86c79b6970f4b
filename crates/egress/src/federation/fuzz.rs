//! The `fuzzing` feature: federation's parsers of what remote servers send.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use ruma_common::{OwnedServerName, ServerName};
use ruma_federation_api::authentication::XMatrix;

use super::discovery::{explicit, literal, Resolution};
use super::error::FederationError;
use super::media::{boundary_of, read_multipart, MediaPart, OneChunkPerPoll, METADATA_LIMIT};
use super::signing::SigningKey;
use super::well_known::{cache_ttl, parse_answer};
use crate::connect::tunnel::authority;
use crate::{ProxyEnv, ProxySettings, Purpose, Route};

/// Checks what discovery makes of a server name that needs no lookup (an IP
/// literal, or a name with an explicit port), and routes it.
fn check_resolution(name: &ServerName) {
    let steps = Vec::new();
    let resolution: Resolution = if name.is_ip_literal() {
        literal(name, steps)
    } else if let Some(port) = name.port() {
        explicit(name, port, steps)
    } else {
        // A lookup (well-known, SRV) would follow: only the route is checked.
        route(&format!("https://{}/", name.as_str().to_ascii_lowercase()));
        return;
    };
    assert_eq!(resolution.targets.len(), 1);
    let (host, port) = &resolution.targets[0];
    assert_eq!(*port, name.port().unwrap_or(8448));
    assert!(!resolution.tls_name.starts_with('['), "{resolution:?}");
    assert_eq!(
        resolution.tls_name.parse::<std::net::IpAddr>().is_ok(),
        name.is_ip_literal(),
        "{resolution:?}"
    );
    assert_eq!(resolution.host_header, name.as_str().to_ascii_lowercase());
    // What goes on the CONNECT line and in the request URI must parse.
    let target = authority(host, *port);
    target
        .parse::<http::uri::Authority>()
        .unwrap_or_else(|e| panic!("CONNECT target `{target}` does not parse: {e}"));
    route(&format!("https://{}/", resolution.host_header));
    // The TLS name is a valid rustls server name or IP address, or an error.
    let _ = rustls::pki_types::ServerName::try_from(resolution.tls_name.clone());
}

/// Decides the route of a federation URL through a proxy with a no_proxy
/// list; the explanation is the same whatever the proxy's password (looking
/// for the password's text instead gives false alarms: a server name may
/// contain it).
fn route(url: &str) {
    static SETTINGS: std::sync::OnceLock<[ProxySettings; 2]> = std::sync::OnceLock::new();
    let settings = SETTINGS.get_or_init(|| {
        ["secret", "public"].map(|password| {
            let proxy = format!("http://user:{password}@proxy.example:3128");
            let env = ProxyEnv::from_vars([
                ("HTTPS_PROXY", proxy.as_str()),
                ("NO_PROXY", "bypass.example,10.0.0.0/8,[::1]:8448"),
            ]);
            ProxySettings::builder(&env)
                .build()
                .expect("valid settings")
        })
    });
    let uri: http::Uri = url
        .parse()
        .unwrap_or_else(|e| panic!("the URL `{url}` for a valid server name does not parse: {e}"));
    let [a, b] = settings
        .each_ref()
        .map(|settings| Route::decide(settings, Purpose::Federation, &uri).explain());
    assert_eq!(a, b, "the explanation shows the proxy's password");
}

/// A server name as a remote server or an admin writes it.
pub(crate) fn server_name(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(name) = OwnedServerName::try_from(text) else {
        return;
    };
    check_resolution(&name);
}

/// A `/.well-known/matrix/server` answer: the first line is the
/// `Cache-Control` header, the rest the body.
pub(crate) fn well_known(data: &[u8]) {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    if let Ok(value) = http::HeaderValue::from_bytes(header) {
        let ttl = cache_ttl(Some(&value));
        assert!(ttl >= std::time::Duration::from_secs(300));
        assert!(ttl <= std::time::Duration::from_secs(48 * 3600));
    }
    if let Ok(delegated) = parse_answer(body) {
        assert_ne!(delegated.port(), Some(0));
        check_resolution(&delegated);
    }
}

/// An in-memory body: one frame per chunk.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
    }
}

/// The remote media answer: byte 0 the media limit (in units of 16 bytes),
/// byte 1 the number of cut points, then those cut points, then the
/// `Content-Type` header's value (`multipart/mixed; boundary=…`, without the
/// header name) and a `\n`, then the body, delivered in chunks split at the cut
/// points.
pub(crate) fn media(data: &[u8]) {
    let [limit, cuts, rest @ ..] = data else {
        return;
    };
    let limit = u64::from(*limit) * 16;
    let cuts = usize::from(*cuts % 16).min(rest.len());
    let (cuts, rest) = rest.split_at(cuts);
    let (content_type, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => return,
    };
    let Some(boundary) = std::str::from_utf8(content_type).ok().and_then(boundary_of) else {
        return;
    };
    let chunks: Vec<Bytes> = crate::fuzzing::split_at_cuts(cuts, body)
        .into_iter()
        .map(Bytes::copy_from_slice)
        .collect();
    let outer = limit + METADATA_LIMIT;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut out = Vec::new();
    let result = runtime.block_on(async {
        let body = http_body_util::Limited::new(Chunks(chunks.into()), outer as usize);
        let stream = OneChunkPerPoll::new(body.into_data_stream());
        read_multipart(stream, boundary, "media", outer, limit, &mut out).await
    });
    assert!(
        out.len() as u64 <= limit,
        "{} bytes written over the limit {limit}",
        out.len()
    );
    match result {
        Ok(MediaPart::Written(_)) => {}
        Ok(MediaPart::Location(location)) => assert!(out.is_empty(), "{location}"),
        Err(FederationError::TooLarge { limit: said }) => assert_eq!(said, limit),
        Err(FederationError::BadResponse { .. }) => {}
        Err(other) => panic!("an unexpected error kind for an in-memory body: {other:?}"),
    }
}

/// An `Authorization: X-Matrix …` header value (parsed as a receiving server
/// would, with ruma's parser, which egress's requests are built with) and a
/// `signing.key` file.
pub(crate) fn x_matrix(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = XMatrix::parse(text) {
        let value = http::HeaderValue::from(&parsed);
        let again = XMatrix::try_from(&value).unwrap_or_else(|e| {
            panic!("X-Matrix `{value:?}` written from a parsed header does not parse: {e}")
        });
        assert_eq!(again.origin, parsed.origin);
        assert_eq!(again.destination, parsed.destination);
        assert_eq!(again.key, parsed.key);
        assert_eq!(again.sig.encode(), parsed.sig.encode());
    }
    if let Ok(key) = SigningKey::parse(text) {
        let line = key.to_file_line();
        let again = SigningKey::parse(&line).expect("a key file line parses");
        assert_eq!(again.key_id(), key.key_id());
        assert_eq!(again.public_key(), key.public_key());
        let seed = line.split_whitespace().nth(2).unwrap_or_default();
        let shown = format!("{key:?}");
        // (The key's version is shown, and may hold the seed's text.)
        let spelled = seed.is_empty() || key.key_id().contains(seed);
        assert!(spelled || !shown.contains(seed), "{shown}");
    }
}
