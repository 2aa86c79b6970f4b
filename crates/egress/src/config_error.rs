//! Configuration errors: each names the setting (by its [`Source`]) and the
//! value, password masked.

use std::path::PathBuf;

use crate::proxy_url::ProxyUrlError;
use crate::settings::Source;

/// A setting egress cannot use. The message is one sentence that names the
/// setting as the caller named it (an environment variable, a homeserver.yaml
/// key, or a key of the caller's own configuration) and the value as given,
/// with any password replaced by `***`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An `http_proxy` / `https_proxy` value that does not parse.
    #[error("{source_} has an invalid proxy URL `{value}`: {problem}")]
    ProxyUrl {
        /// Where the value comes from.
        source_: Source,
        /// The value, password masked.
        value: String,
        /// What is wrong with it.
        problem: ProxyUrlError,
    },
    /// An entry of a blocklist or allowlist that is not an IP address or range.
    #[error("{source_} has an invalid IP range `{value}`: {problem}")]
    IpRange {
        /// The list the entry is in.
        source_: Source,
        /// The entry as written.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A value egress cannot use (a non-ASCII certificate-check glob, an
    /// empty CA list, …).
    #[error("{source_} has an unusable value `{value}`: {problem}")]
    BadValue {
        /// Where the value comes from.
        source_: Source,
        /// The value (or the offending entry of a list).
        value: String,
        /// What is wrong, and what to write instead.
        problem: String,
    },
    /// A homeserver.yaml key holding the wrong kind of value.
    #[error("homeserver.yaml key `{key}` must be {expected}, not {found}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// What it must hold, e.g. "a string".
        expected: &'static str,
        /// What it holds, e.g. "a list".
        found: &'static str,
    },
    /// Two spellings of one setting, such as `ip_range_blacklist` and `ip_range_blocklist`.
    #[error("homeserver.yaml sets both `{0}` and `{1}`, which are one setting: keep one")]
    BothSpellings(&'static str, &'static str),
    /// Any other unusable value of a homeserver.yaml key (CA files that do
    /// not load, a TLS configuration rustls refuses).
    #[error("homeserver.yaml key `{key}`: {problem}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The configuration file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration file is not YAML, or not a mapping at the top.
    #[error("{} is not a valid homeserver.yaml: {problem}", path.display())]
    Yaml {
        /// The file (`homeserver.yaml` when parsed from a string).
        path: PathBuf,
        /// What the YAML parser said.
        problem: String,
    },
}
