//! Remote media: the authenticated federation download (signed), whose
//! `multipart/mixed` answer is parsed as it arrives and streamed to the
//! caller's writer; a `Location` part is a new, routed hop; the legacy
//! `/_matrix/media/v3/download` when the server does not know the endpoint.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use ruma_common::MxcUri;

use super::body::{limited, read_limited, stream_limited, BodyError};
use super::error::FederationError;
use super::request::{status_error, Federation, JSON_LIMIT};
use crate::{Body, Purpose};

/// Default limit for a remote media download.
pub const DEFAULT_MEDIA_LIMIT: u64 = 50 * 1024 * 1024;
/// The most read of the multipart answer's first (JSON metadata) part, and
/// the room allowed for part headers and delimiters beyond the media limit.
pub(super) const METADATA_LIMIT: u64 = 64 * 1024;

impl Federation {
    /// Downloads `mxc://server/media_id` into `out`, at most `limit` bytes,
    /// written as they arrive: the authenticated federation endpoint
    /// (signed), whose `multipart/mixed` answer holds the bytes or a
    /// `Location` to follow (a new hop, routed anew, regular TLS); the legacy
    /// `/_matrix/media/v3/download` when the server does not know that
    /// endpoint. Returns the content type.
    pub async fn download_media(
        &self,
        mxc: &MxcUri,
        out: &mut dyn std::io::Write,
        limit: u64,
    ) -> Result<Option<String>, FederationError> {
        let (server, media_id) = mxc.parts()?;
        if self.signer.is_none() {
            return Err(FederationError::Unsigned);
        }
        let path = format!("/_matrix/federation/v1/media/download/{media_id}");
        let what = format!("GET {path} on {server}");
        let (_, response) = self
            .request(Purpose::Media, Method::GET, server, &path, None)
            .await?;
        let status = response.status();
        if [
            StatusCode::NOT_FOUND,
            StatusCode::BAD_REQUEST,
            StatusCode::METHOD_NOT_ALLOWED,
        ]
        .contains(&status)
        {
            let body = read_limited(response.into_body(), JSON_LIMIT)
                .await
                .unwrap_or_default();
            if String::from_utf8_lossy(&body).contains("M_UNRECOGNIZED")
                || status == StatusCode::METHOD_NOT_ALLOWED
            {
                tracing::info!(target: "egress::wire", "* {server} does not know {path}: legacy media download");
                return self.legacy_media(mxc, out, limit).await;
            }
            return Err(FederationError::Status {
                what,
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
        }
        if !status.is_success() {
            return Err(status_error(what, response).await);
        }
        let boundary = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(boundary_of)
            .ok_or_else(|| FederationError::BadResponse {
                what: what.clone(),
                problem: "the answer is not multipart/mixed with a boundary".to_owned(),
            })?;
        let outer = limit.saturating_add(METADATA_LIMIT);
        let stream = OneChunkPerPoll::new(limited(response.into_body(), outer).into_data_stream());
        match read_multipart(stream, boundary, &what, outer, limit, out).await? {
            MediaPart::Written(content_type) => Ok(content_type),
            MediaPart::Location(location) => {
                tracing::info!(target: "egress::wire", "* media redirect to {location}");
                let response = self.follow(&location).await?;
                save(format!("GET {location}"), response, out, limit).await
            }
        }
    }

    async fn legacy_media(
        &self,
        mxc: &MxcUri,
        out: &mut dyn std::io::Write,
        limit: u64,
    ) -> Result<Option<String>, FederationError> {
        let (server, media_id) = mxc.parts()?;
        let path = format!(
            "/_matrix/media/v3/download/{server}/{media_id}?allow_remote=false&allow_redirect=true"
        );
        let (_, response) = self
            .request(Purpose::Media, Method::GET, server, &path, None)
            .await?;
        let response = if response.status().is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok());
            let location = location.ok_or_else(|| FederationError::BadResponse {
                what: path.clone(),
                problem: "a redirect without Location".to_owned(),
            })?;
            self.follow(location).await?
        } else {
            response
        };
        save(format!("GET {path} on {server}"), response, out, limit).await
    }

    /// A media redirect: a new hop, routed anew, regular TLS, redirects followed.
    async fn follow(&self, location: &str) -> Result<Response<Body>, FederationError> {
        let client = self
            .outbound
            .client(Purpose::Media)
            .follow_redirects(crate::client::MAX_REDIRECTS);
        Ok(client.get(location).await?)
    }
}

/// What the media part of a multipart answer held.
pub(super) enum MediaPart {
    /// The bytes, written out; the part's content type.
    Written(Option<String>),
    /// A `Location` to fetch the bytes from.
    Location(String),
}

/// Reads a multipart media answer (already limited to `outer` bytes): the
/// metadata part, then the media part, written into `out` (at most `limit`
/// bytes) unless it is a `Location`.
pub(super) async fn read_multipart<S, E>(
    stream: S,
    boundary: String,
    what: &str,
    outer: u64,
    limit: u64,
    out: &mut dyn std::io::Write,
) -> Result<MediaPart, FederationError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut multipart = multer::Multipart::new(stream, boundary);
    let parse = |e| multipart_error(what, e, outer, limit);

    let mut metadata = multipart
        .next_field()
        .await
        .map_err(parse)?
        .ok_or_else(|| bad(what, "the multipart body has no part"))?;
    let mut size = 0u64;
    while let Some(chunk) = metadata.chunk().await.map_err(parse)? {
        size += chunk.len() as u64;
        if size > METADATA_LIMIT {
            return Err(bad(what, "the metadata part is larger than 64 KiB"));
        }
    }
    drop(metadata);

    let mut media = multipart
        .next_field()
        .await
        .map_err(parse)?
        .ok_or_else(|| bad(what, "the multipart body has no media part"))?;
    let header = |name| {
        media
            .headers()
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(CONTENT_TYPE);
    if let Some(location) = header(LOCATION) {
        return Ok(MediaPart::Location(location));
    }
    let mut written = 0u64;
    while let Some(chunk) = media.chunk().await.map_err(parse)? {
        written += chunk.len() as u64;
        if written > limit {
            return Err(FederationError::TooLarge { limit });
        }
        out.write_all(&chunk).map_err(FederationError::Write)?;
    }
    Ok(MediaPart::Written(content_type))
}

fn bad(what: &str, problem: &str) -> FederationError {
    FederationError::BadResponse {
        what: what.to_owned(),
        problem: problem.to_owned(),
    }
}

/// A multipart parse error: the body's own errors (too large, transport) as such.
fn multipart_error(what: &str, error: multer::Error, outer: u64, limit: u64) -> FederationError {
    match error {
        multer::Error::StreamReadFailed(e) => match BodyError::classify(e, outer) {
            BodyError::TooLarge { .. } => FederationError::TooLarge { limit },
            other => FederationError::from_body(what, other),
        },
        other => FederationError::BadResponse {
            what: what.to_owned(),
            problem: format!("the multipart body cannot be parsed: {other}"),
        },
    }
}

/// Saves a media response into `out` (at most `limit` bytes); its content type.
async fn save(
    what: String,
    response: Response<Body>,
    out: &mut dyn std::io::Write,
    limit: u64,
) -> Result<Option<String>, FederationError> {
    if !response.status().is_success() {
        return Err(status_error(what, response).await);
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match stream_limited(response.into_body(), out, limit).await {
        Ok(_) => Ok(content_type),
        Err(BodyError::TooLarge { .. }) => Err(FederationError::TooLarge { limit }),
        Err(e) => Err(FederationError::from_body(&what, e)),
    }
}

/// The boundary of a `multipart/mixed` content type.
pub(super) fn boundary_of(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// Hands the multipart parser one chunk per poll: the parser reads every
/// chunk that is ready before parsing, so on a fast connection it would
/// otherwise gather much of the body in memory.
pub(super) struct OneChunkPerPoll<S> {
    inner: S,
    just_yielded: bool,
}

impl<S> OneChunkPerPoll<S> {
    pub(super) fn new(inner: S) -> Self {
        OneChunkPerPoll {
            inner,
            just_yielded: false,
        }
    }
}

impl<S, E> Stream for OneChunkPerPoll<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.just_yielded {
            self.just_yielded = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(_))) = next {
            self.just_yielded = true;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        assert_eq!(
            boundary_of("multipart/mixed; boundary=\"xyz\"").as_deref(),
            Some("xyz")
        );
        assert_eq!(
            boundary_of("Multipart/Mixed;charset=utf-8; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary_of("text/plain"), None);
        assert_eq!(boundary_of("multipart/form-data; boundary=abc"), None);
    }
}
