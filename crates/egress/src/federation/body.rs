//! Bounded body reads ([`http_body_util::Limited`]), shared by discovery and
//! the federation requests.

use std::error::Error as StdError;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::{Body, Error};

/// Why a bounded body read failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// More than `limit` bytes.
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The connection failed or timed out.
    #[error(transparent)]
    Transport(Error),
    /// Writing what was read failed.
    #[error("cannot write the body: {0}")]
    Write(std::io::Error),
    /// Any other failure of the body stream.
    #[error("{0}")]
    Other(Box<dyn StdError + Send + Sync>),
}

impl BodyError {
    /// Sorts the boxed error of a [`Limited`] body (or of a stream over one).
    pub(crate) fn classify(error: Box<dyn StdError + Send + Sync>, limit: u64) -> BodyError {
        if error.is::<LengthLimitError>() {
            return BodyError::TooLarge { limit };
        }
        match error.downcast::<Error>() {
            Ok(e) => BodyError::Transport(*e),
            Err(other) => BodyError::Other(other),
        }
    }
}

/// `body` limited to `limit` bytes: reading past it is an error.
pub(crate) fn limited(body: Body, limit: u64) -> Limited<Body> {
    Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
}

/// A whole body, at most `limit` bytes.
pub(crate) async fn read_limited(body: Body, limit: u64) -> Result<Bytes, BodyError> {
    limited(body, limit)
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|e| BodyError::classify(e, limit))
}

/// Streams a body into `out` as it arrives, at most `limit` bytes; the number
/// of bytes written.
pub(crate) async fn stream_limited(
    body: Body,
    out: &mut dyn std::io::Write,
    limit: u64,
) -> Result<u64, BodyError> {
    let mut body = limited(body, limit);
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::classify(e, limit))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data).map_err(BodyError::Write)?;
            written += data.len() as u64;
        }
    }
    Ok(written)
}
