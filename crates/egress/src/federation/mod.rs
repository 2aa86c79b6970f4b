//! Federation through the proxy: server discovery, signed requests, server
//! keys, remote media, and the 3PID public key validity check.

pub mod client;
pub mod discovery;
pub mod server_name;
pub mod signing;

pub use client::{check_server_keys, Federation, FederationError, ServerKeys, DEFAULT_MEDIA_LIMIT};
pub use discovery::{Discovery, Resolution};
pub use server_name::{BadServerName, ServerName};
pub use signing::{canonical_json, verify_json, SigningError, SigningKey};
