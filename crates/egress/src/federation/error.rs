//! Why a federation operation failed.

use http::StatusCode;
use ruma_common::MxcUriError;

use super::body::BodyError;
use super::server_name::InvalidServerName;
use super::signing::SigningError;
use super::srv::DnsSetupError;
use crate::Error;

/// Why a federation operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// Not an `mxc://server/mediaId` URI.
    #[error("not a valid mxc:// URI: {0}")]
    Mxc(#[from] MxcUriError),
    /// A server name Synapse refuses (ruma's type takes it).
    #[error("not a valid server name: {0}")]
    InvalidServerName(#[from] InvalidServerName),
    /// DNS for SRV could not be set up.
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    /// Discovery found that the server offers no federation (its only SRV
    /// record has the target `.`): nothing was connected to.
    #[error("{server} does not offer federation: {reason}")]
    NotOffered {
        /// The server name.
        server: String,
        /// The discovery step that found it.
        reason: String,
    },
    /// No target could be reached; each target's error, in order.
    #[error("cannot reach {server}: {}", .errors.iter().map(|(t, e)| format!("{t}: {}", crate::error::chain(e))).collect::<Vec<_>>().join("; "))]
    Unreachable {
        /// The server name.
        server: String,
        /// `host:port` and why it failed.
        errors: Vec<(String, Error)>,
    },
    /// A transport error outside target selection.
    #[error(transparent)]
    Transport(#[from] Error),
    /// A non-2xx answer.
    #[error("{what} answered {status}: {body}")]
    Status {
        /// The request.
        what: String,
        /// The status code.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
    /// A body that is not what was expected.
    #[error("{what}: {problem}")]
    BadResponse {
        /// The request.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// Server keys that fail a check.
    #[error("server keys of {server}: {problem}")]
    Keys {
        /// Whose keys.
        server: String,
        /// The failed check.
        problem: String,
    },
    /// A signing key problem.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// A download larger than allowed.
    #[error("the media is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Writing the download failed.
    #[error("cannot write the media: {0}")]
    Write(std::io::Error),
    /// No signing key was given, but the request must be signed.
    #[error("this request must be signed and no signing key is set")]
    Unsigned,
}

impl FederationError {
    /// A body read error; a body over `limit` is [`FederationError::TooLarge`].
    pub(super) fn from_body(what: &str, error: BodyError) -> FederationError {
        match error {
            BodyError::TooLarge { limit } => FederationError::TooLarge { limit },
            BodyError::Transport(e) => FederationError::Transport(e),
            BodyError::Write(e) => FederationError::Write(e),
            BodyError::Other(e) => FederationError::BadResponse {
                what: what.to_owned(),
                problem: format!("reading the body failed: {e}"),
            },
        }
    }
}
