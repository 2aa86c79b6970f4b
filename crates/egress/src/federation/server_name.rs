//! Server names as Synapse checks them (`parse_and_validate_server_name` in
//! synapse/util/stringutils.py), on top of ruma's type.
//!
//! ruma's `ServerName` accepts a host with empty labels (`.example.com`,
//! `a..b`, `example.com.`); Synapse refuses those, and refuses them wherever a
//! name comes from outside (the `origin` of an `X-Matrix` header, a media
//! server name, its own `server_name`). Synapse's rule: a host is labels of
//! ASCII letters, digits and `-`, joined by single dots, or an IPv6 address
//! in brackets; then an optional `:port`. egress refuses everything Synapse
//! refuses, and is stricter in one place, on purpose: Synapse reads the port
//! with Python's `int()`, so it takes `+80`, ` 80`, `0`, `99999` or `٨٠`
//! (Arabic-Indic digits); egress takes ASCII digits for 1 to 65535 only (a
//! port nothing can connect to is an error here, not a later connection
//! failure).

use std::net::Ipv6Addr;

use ruma_common::{IdParseError, OwnedServerName, ServerName};

/// Why a string is not a server name Synapse would accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidServerName {
    /// Nothing before the port (or nothing at all).
    #[error("`{0}` has no host")]
    Empty(String),
    /// A label is empty: a leading, trailing or doubled dot.
    #[error("`{0}` has an empty label (a leading, trailing or doubled `.`)")]
    EmptyLabel(String),
    /// A character a host name cannot have.
    #[error("`{name}` has {character:?}, which a host name cannot have (ASCII letters, digits, `-` and `.` only)")]
    Character {
        /// The whole name.
        name: String,
        /// The first character not allowed.
        character: char,
    },
    /// A bracketed host that is not an IPv6 address.
    #[error("`{0}` is not an IPv6 address in brackets")]
    Ipv6(String),
    /// A port that is not ASCII digits for 1 to 65535.
    #[error("`{0}` has a port that is not a number from 1 to 65535")]
    Port(String),
    /// Synapse's rule holds but ruma's type refuses the name.
    #[error("`{name}`: {source}")]
    Ruma {
        /// The whole name.
        name: String,
        /// ruma's reason.
        source: IdParseError,
    },
}

/// Parses a server name, refusing every name Synapse refuses (see the
/// module's rule).
///
/// ```
/// use egress::parse_server_name;
/// assert_eq!(parse_server_name("matrix.org:8448").unwrap().port(), Some(8448));
/// assert!(parse_server_name(".matrix.org").is_err());
/// assert!(parse_server_name("[::1]").is_ok());
/// ```
pub fn parse_server_name(text: &str) -> Result<OwnedServerName, InvalidServerName> {
    check(text)?;
    ServerName::parse(text).map_err(|source| InvalidServerName::Ruma {
        name: text.to_owned(),
        source,
    })
}

/// Checks a name already of ruma's type against Synapse's rule.
pub fn check_server_name(name: &ServerName) -> Result<(), InvalidServerName> {
    check(name.as_str())
}

fn check(text: &str) -> Result<(), InvalidServerName> {
    let name = || text.to_owned();
    // As Synapse: a name ending in `]` is all host; otherwise the port is
    // after the last `:`.
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) if !text.ends_with(']') => (host, Some(port)),
        _ => (text, None),
    };
    if let Some(port) = port {
        let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(InvalidServerName::Port(name()));
        }
    }
    if host.is_empty() {
        return Err(InvalidServerName::Empty(name()));
    }
    if let Some(inner) = host.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(address) if address.parse::<Ipv6Addr>().is_ok() => Ok(()),
            _ => Err(InvalidServerName::Ipv6(name())),
        };
    }
    if let Some(character) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(InvalidServerName::Character {
            name: name(),
            character,
        });
    }
    if host.split('.').any(str::is_empty) {
        return Err(InvalidServerName::EmptyLabel(name()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synapses_own_cases() {
        // synapse tests/util/test_stringutils.py: the names it parses...
        for good in [
            "localhost",
            "my-example.com:1234",
            "1.2.3.4",
            "[0abc:1def::1234]",
            "1.2.3.4:1",
            "[0abc:1def::1234]:8080",
        ] {
            assert!(parse_server_name(good).is_ok(), "{good}");
        }
        // ...and those it refuses.
        for bad in [
            "",
            "localhost:http",
            "1234]",
            "[1234",
            "[1.2.3.4]",
            "underscore_.com",
            "percent%65.com",
            "newline.com\n",
            ".empty-label.com",
            "1234:5678:80",
            ":80",
        ] {
            assert!(parse_server_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_labels_are_refused_though_ruma_takes_them() {
        for name in [
            ".example.com",
            "a..b",
            "example.com.",
            "example.com.:8448",
            ".",
        ] {
            assert!(ServerName::parse(name).is_ok(), "ruma takes {name}");
            assert_eq!(
                parse_server_name(name).unwrap_err(),
                InvalidServerName::EmptyLabel(name.to_owned())
            );
        }
    }

    #[test]
    fn ports_are_ascii_digits_for_1_to_65535() {
        for name in [
            "a.b:0",
            "a.b:65536",
            "a.b:+80",
            "a.b: 80",
            "a.b:",
            "a.b:8_0",
        ] {
            assert_eq!(
                parse_server_name(name).unwrap_err(),
                InvalidServerName::Port(name.to_owned()),
                "{name}"
            );
        }
        assert_eq!(parse_server_name("a.b:65535").unwrap().port(), Some(65535));
        assert_eq!(parse_server_name("a.b:08448").unwrap().port(), Some(8448));
    }

    #[test]
    fn the_error_names_the_name_and_the_problem() {
        let e = parse_server_name("bad_name.example").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`bad_name.example` has '_', which a host name cannot have (ASCII letters, digits, `-` and `.` only)"
        );
        assert!(parse_server_name("[::1]:8448").is_ok());
        assert!(parse_server_name("[::1%eth0]").is_err());
    }
}
