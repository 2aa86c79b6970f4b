//! Federation through the proxy: server discovery, signed requests, server
//! keys, remote media, and the 3PID public key validity check. Server names,
//! `mxc://` URIs, canonical JSON, signatures and the `X-Matrix` header are
//! ruma's types.

mod body;
mod discovery;
mod error;
mod keys;
mod media;
mod request;
mod server_name;
mod signing;
mod srv;
mod well_known;

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;

pub use discovery::{Discovery, Resolution};
pub use error::FederationError;
pub use keys::{check_server_keys, ServerKeys};
pub use media::DEFAULT_MEDIA_LIMIT;
pub use request::Federation;
#[cfg(feature = "doctor")]
pub use request::TargetCheck;
pub use ruma_common::{
    CanonicalJsonObject, CanonicalJsonValue, MxcUri, OwnedMxcUri, OwnedServerName, ServerName,
};
pub use server_name::{check_server_name, parse_server_name, InvalidServerName};
pub use signing::{
    canonical_json, to_canonical, to_canonical_object, verify_json, SigningError, SigningKey,
};
pub use srv::DnsSetupError;
pub use well_known::{WELL_KNOWN_CACHE_ENTRIES, WELL_KNOWN_MAX_BYTES};
