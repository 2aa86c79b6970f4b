//! Matrix server names: `host[:port]`, where host is a DNS name, an IPv4
//! address or a bracketed IPv6 address (server-server API, "Server names").

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A parsed server name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerName {
    host: String,
    ip: Option<IpAddr>,
    port: Option<u16>,
}

/// A string that is not a server name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a valid Matrix server name: {problem}")]
pub struct BadServerName {
    /// The text.
    pub name: String,
    /// What is wrong.
    pub problem: &'static str,
}

impl ServerName {
    /// Parses `host[:port]` per the grammar: a DNS name (letters, digits,
    /// `-`, `.`), dotted IPv4, or `[IPv6]`; port 1 to 65535 in at most 5 digits.
    pub fn parse(text: &str) -> Result<ServerName, BadServerName> {
        let bad = |problem| BadServerName {
            name: text.to_owned(),
            problem,
        };
        if text.is_empty() || text.len() > 255 {
            return Err(bad("it must be 1 to 255 characters"));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("a `[` without `]`"))?;
            inside
                .parse::<Ipv6Addr>()
                .map_err(|_| bad("not an IPv6 address in brackets"))?;
            (&text[..inside.len() + 2], after)
        } else {
            match text.find(':') {
                Some(i) => (&text[..i], &text[i..]),
                None => (text, ""),
            }
        };
        let port = match port {
            "" => None,
            p => {
                let digits = p
                    .strip_prefix(':')
                    .ok_or_else(|| bad("unexpected text after the host"))?;
                if digits.is_empty()
                    || digits.len() > 5
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad("the port must be 1 to 5 digits"));
                }
                match digits.parse::<u16>() {
                    Ok(0) | Err(_) => return Err(bad("the port must be from 1 to 65535")),
                    Ok(port) => Some(port),
                }
            }
        };
        let ip = if host.starts_with('[') {
            host[1..host.len() - 1].parse::<IpAddr>().ok()
        } else if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            Some(IpAddr::V4(
                host.parse().map_err(|_| bad("not a valid IPv4 address"))?,
            ))
        } else {
            let valid = host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !host.split('.').any(str::is_empty);
            if !valid {
                return Err(bad(
                    "the host must be a DNS name, an IPv4 address or [IPv6]",
                ));
            }
            None
        };
        Ok(ServerName {
            host: if ip.is_some() {
                host.to_owned()
            } else {
                host.to_ascii_lowercase()
            },
            ip,
            port,
        })
    }

    /// The host as written (IPv6 in brackets), DNS names lower-cased.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host without brackets: what TLS verifies and SNI carries.
    pub fn bare_host(&self) -> &str {
        crate::proxy_url::unbracket(&self.host)
    }

    /// The IP address, for an IP-literal server name.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_grammar() {
        let n = ServerName::parse("Matrix.ORG").unwrap();
        assert_eq!((n.host(), n.port(), n.ip()), ("matrix.org", None, None));
        let n = ServerName::parse("hs1.test:28448").unwrap();
        assert_eq!((n.host(), n.port()), ("hs1.test", Some(28448)));
        let n = ServerName::parse("1.2.3.4:8449").unwrap();
        assert_eq!(n.ip(), Some("1.2.3.4".parse().unwrap()));
        let n = ServerName::parse("[::1]:8448").unwrap();
        assert_eq!(
            (n.host(), n.bare_host(), n.port()),
            ("[::1]", "::1", Some(8448))
        );
        assert_eq!(n.to_string(), "[::1]:8448");
        assert_eq!(
            ServerName::parse("[2001:db8::1]").unwrap().ip(),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "a b",
            "host:",
            "host:0",
            "host:65536",
            "host:123456",
            "host:x",
            "[::1",
            "[nope]",
            "::1",
            "1.2.3.256",
            "a..b",
            "-.",
            "host:80:90",
            "ex_ample.com",
            "héllo.org",
            "https://matrix.org",
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = ServerName::parse("a b").unwrap_err();
        assert!(e
            .to_string()
            .contains("`a b` is not a valid Matrix server name"));
    }
}
