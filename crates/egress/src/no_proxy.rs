//! `no_proxy`: which hosts are connected to directly, never through the proxy.
//!
//! The value is compiled once into a [`NoProxy`]; [`NoProxy::matches`] does not
//! allocate. Name entries sit in a hash map probed once per label suffix of the
//! host, so the cost does not grow with the number of entries; IP and CIDR
//! entries are compared as addresses.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::ip_table::IpTable;
use crate::proxy_url::{parse_host_port, unbracket, Host};

/// Longest host name we compare (DNS allows 253 characters, plus a trailing dot).
const MAX_HOST_LEN: usize = 255;

/// A compiled `no_proxy` value.
#[derive(Clone, Debug, Default)]
pub struct NoProxy {
    /// `*` as the whole value: bypass everything.
    all: bool,
    /// Name entry (lower-case, no leading or trailing dots) → the entries for it.
    names: HashMap<Box<str>, Vec<Entry>>,
    /// IP address and CIDR entries.
    nets: IpTable<Entry>,
    /// The accepted entries as written, in order.
    accepted: Vec<Box<str>>,
    warnings: Vec<NoProxyWarning>,
}

/// One entry as written, with the port it is limited to, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    text: Box<str>,
    port: Option<u16>,
}

/// A `no_proxy` entry that was skipped, with why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ignoring no_proxy entry `{entry}`: {problem}")]
pub struct NoProxyWarning {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Why a host bypasses the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoProxyMatch<'a> {
    /// The whole value is `*`.
    Everything,
    /// This entry, as written, matched.
    Entry(&'a str),
}

impl NoProxy {
    /// Compiles a comma-separated `no_proxy` value. Entries that cannot be
    /// understood are skipped and reported by [`NoProxy::warnings`]; this
    /// never fails.
    pub fn parse(value: &str) -> NoProxy {
        let mut no_proxy = NoProxy::default();
        if value.trim() == "*" {
            no_proxy.all = true;
            return no_proxy;
        }
        for raw in value.split(',') {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            match no_proxy.add(raw) {
                Ok(()) => no_proxy.accepted.push(raw.into()),
                Err(problem) => no_proxy.warnings.push(NoProxyWarning {
                    entry: raw.to_owned(),
                    problem,
                }),
            }
        }
        no_proxy
    }

    /// Compiles a list of entries, as homeserver.yaml's `no_proxy_hosts`
    /// gives them. Same as [`NoProxy::parse`] of the entries joined by commas.
    pub fn from_entries<S: AsRef<str>>(entries: &[S]) -> NoProxy {
        let joined: Vec<&str> = entries.iter().map(AsRef::as_ref).collect();
        NoProxy::parse(&joined.join(","))
    }

    fn add(&mut self, raw: &str) -> Result<(), String> {
        let text: Box<str> = raw.into();
        // CIDR ranges and bare IPv6 addresses (which contain colons) first.
        if raw.contains('/') {
            let net: IpNet = raw
                .parse()
                .map_err(|_| "not a valid IP range in CIDR notation".to_owned())?;
            self.nets.push(net.trunc(), Entry { text, port: None });
            return Ok(());
        }
        if let Ok(ip) = raw.parse::<IpAddr>() {
            self.nets.push(IpNet::from(ip), Entry { text, port: None });
            return Ok(());
        }
        if raw == "*" {
            return Err("`*` bypasses everything only as the whole no_proxy value".to_owned());
        }
        // `*.example.com`, `.example.com` and `example.com` are the same entry.
        let name = raw.strip_prefix('*').unwrap_or(raw).trim_start_matches('.');
        let (host, port) = parse_host_port(name).map_err(|e| e.to_string())?;
        match host {
            Host::Ip(ip) => self.nets.push(IpNet::from(ip), Entry { text, port }),
            Host::Name(name) => self
                .names
                .entry(name.into_boxed_str())
                .or_default()
                .push(Entry { text, port }),
        }
        Ok(())
    }

    /// The entries that were skipped, with why. Each is also logged once, at
    /// `warn`, by [`crate::ProxySettings`] when it compiles the value.
    pub fn warnings(&self) -> &[NoProxyWarning] {
        &self.warnings
    }

    /// The entries in use, as written, in order (`*` when everything bypasses).
    pub fn entries(&self) -> impl Iterator<Item = &str> {
        let all = self.all.then_some("*");
        all.into_iter().chain(self.accepted.iter().map(|e| &**e))
    }

    /// True when nothing bypasses the proxy (empty or unset value).
    pub fn is_empty(&self) -> bool {
        !self.all && self.names.is_empty() && self.nets.is_empty()
    }

    /// Whether a connection to `host` on `port` bypasses the proxy, and which
    /// entry says so.
    ///
    /// `host` is a name (any case, trailing dot allowed) or an IP literal
    /// (IPv6 with or without brackets). An IP host matches only IP and CIDR
    /// entries, compared as addresses; a name matches an entry equal to it or
    /// one of its parent domains (`example.com` matches `a.example.com`, not
    /// `xexample.com`). An entry with a port matches only that port.
    pub fn matches(&self, host: &str, port: u16) -> Option<NoProxyMatch<'_>> {
        if self.all {
            return Some(NoProxyMatch::Everything);
        }
        match unbracket(host).parse::<IpAddr>() {
            Ok(ip) => self.matches_ip(ip, port),
            Err(_) => self.matches_name(host, port),
        }
    }

    /// Whether a connection to the DNS name `host` (any case, trailing dot
    /// allowed) on `port` bypasses the proxy. IP and CIDR entries are not
    /// consulted: use [`NoProxy::matches_ip`] for addresses.
    pub fn matches_name(&self, host: &str, port: u16) -> Option<NoProxyMatch<'_>> {
        if self.all {
            return Some(NoProxyMatch::Everything);
        }
        if self.names.is_empty() {
            return None;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.len() > MAX_HOST_LEN {
            return None;
        }
        let mut buf = [0u8; MAX_HOST_LEN];
        let lower = &mut buf[..host.len()];
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        // Lower-casing ASCII bytes keeps the text valid UTF-8.
        let mut candidate = std::str::from_utf8(lower).ok()?;
        loop {
            if let Some(entries) = self.names.get(candidate) {
                if let Some(entry) = entries.iter().find(|e| e.port.is_none_or(|p| p == port)) {
                    return Some(NoProxyMatch::Entry(&entry.text));
                }
            }
            match candidate.split_once('.') {
                Some((_, parent)) => candidate = parent,
                None => return None,
            }
        }
    }

    /// Whether a connection to `ip` on `port` bypasses the proxy.
    pub fn matches_ip(&self, ip: IpAddr, port: u16) -> Option<NoProxyMatch<'_>> {
        if self.all {
            return Some(NoProxyMatch::Everything);
        }
        self.nets
            .find(ip, |entry| entry.port.is_none_or(|p| p == port))
            .map(|(_, entry)| NoProxyMatch::Entry(&entry.text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bypass(value: &str, host: &str) -> bool {
        NoProxy::parse(value).matches(host, 443).is_some()
    }

    #[test]
    fn star_alone_bypasses_everything() {
        assert!(bypass("*", "anything.example"));
        assert!(bypass("*", "10.0.0.1"));
        assert!(bypass(" * ", "anything.example"));
        assert_eq!(
            NoProxy::parse("*").matches("x", 1),
            Some(NoProxyMatch::Everything)
        );
    }

    #[test]
    fn star_in_a_list_is_warned_about() {
        let np = NoProxy::parse("*,good.org");
        assert!(!bypass("*,good.org", "other.org"));
        assert!(np.matches("good.org", 443).is_some());
        assert_eq!(np.warnings().len(), 1);
        assert_eq!(np.warnings()[0].entry, "*");
    }

    #[test]
    fn names_match_on_label_boundaries() {
        let v = "test.com,unused.com";
        assert!(bypass(v, "test.com"));
        assert!(bypass(v, "a.test.com"));
        assert!(bypass(v, "deep.a.test.com"));
        assert!(!bypass(v, "xtest.com"));
        assert!(!bypass(v, "com"));
        assert!(bypass(v, "TEST.COM"));
        assert!(bypass("TEST.com", "test.COM"));
        assert_eq!(
            NoProxy::parse(v).matches("a.test.com", 1),
            Some(NoProxyMatch::Entry("test.com"))
        );
    }

    #[test]
    fn leading_dot_and_wildcard() {
        assert!(bypass(".test.com", "test.com"));
        assert!(bypass(".test.com", "a.test.com"));
        assert!(bypass("*.test.com", "a.test.com"));
        assert!(bypass("*.test.com", "test.com"));
        assert!(!bypass("*.test.com", "atest.com"));
    }

    #[test]
    fn cidr_ranges() {
        let v = "10.1.0.0/16,172.30.0.0/16";
        assert!(bypass(v, "10.1.2.3"));
        assert!(!bypass(v, "10.2.0.1"));
        assert!(bypass(v, "172.30.255.255"));
        assert!(bypass("fd00::/8", "fd12::1"));
        assert!(bypass("fd00::/8", "[fd12::1]"));
        assert!(!bypass("fd00::/8", "fe80::1"));
        // A host name is not compared with ranges.
        assert!(!bypass("10.0.0.0/8", "10.example"));
    }

    #[test]
    fn ip_literals_are_compared_as_addresses() {
        assert!(bypass("::1", "0:0:0:0:0:0:0:1"));
        assert!(bypass("::1", "[::1]"));
        assert!(!bypass("3.4", "1.2.3.4"));
        assert!(bypass("1.2.3.4", "1.2.3.4"));
        assert!(!bypass("1.2.3.4", "1.2.3.5"));
        assert!(bypass("[::1]", "::1"));
    }

    #[test]
    fn ports_limit_entries() {
        let np = NoProxy::parse("example.com:8443");
        assert!(np.matches("example.com", 8443).is_some());
        assert!(np.matches("example.com", 443).is_none());
        assert!(np.matches("sub.example.com", 8443).is_some());
        let np = NoProxy::parse("[::1]:8448");
        assert!(np.matches("::1", 8448).is_some());
        assert!(np.matches("[::1]", 8448).is_some());
        assert!(np.matches("::1", 443).is_none());
        let np = NoProxy::parse("1.2.3.4:80,example.com:8443,example.com:9000");
        assert!(np.matches("1.2.3.4", 80).is_some());
        assert!(np.matches("1.2.3.4", 81).is_none());
        assert!(np.matches("example.com", 9000).is_some());
    }

    #[test]
    fn trailing_dots_are_ignored() {
        assert!(bypass("example.com.", "example.com"));
        assert!(bypass("example.com", "example.com."));
        assert!(bypass("example.com.", "a.example.com."));
    }

    #[test]
    fn bad_entries_are_warned_about_and_skipped() {
        let np = NoProxy::parse("10.0.0.0/33,good.org");
        assert_eq!(np.warnings().len(), 1);
        assert_eq!(np.warnings()[0].entry, "10.0.0.0/33");
        assert!(np.warnings()[0].to_string().contains("10.0.0.0/33"));
        assert!(np.matches("good.org", 443).is_some());
        assert!(np.matches("10.0.0.1", 443).is_none());
        assert_eq!(np.entries().collect::<Vec<_>>(), ["good.org"]);
        assert_eq!(NoProxy::parse(" * ").entries().collect::<Vec<_>>(), ["*"]);

        let np = NoProxy::parse("bad host,example.com:99999,[::1,ok.org");
        assert_eq!(np.warnings().len(), 3, "{:?}", np.warnings());
        assert!(np.matches("ok.org", 443).is_some());
    }

    #[test]
    fn empty_values_never_bypass() {
        for v in ["", " ", ",", " , ,"] {
            let np = NoProxy::parse(v);
            assert!(np.is_empty());
            assert!(np.matches("example.com", 443).is_none());
            assert!(np.matches("127.0.0.1", 443).is_none());
            assert!(np.warnings().is_empty());
        }
    }

    #[test]
    fn entries_list_is_joined() {
        assert!(NoProxy::from_entries(&["*"]).matches("any", 1).is_some());
        let np = NoProxy::from_entries(&["a.org", "10.0.0.0/8"]);
        assert!(np.matches("x.a.org", 1).is_some());
        assert!(np.matches("10.9.9.9", 1).is_some());
        assert!(NoProxy::from_entries::<&str>(&[]).is_empty());
    }

    #[test]
    fn overlong_and_odd_hosts_do_not_panic_and_do_not_match() {
        let np = NoProxy::parse("example.com");
        assert!(np.matches(&"a".repeat(1000), 1).is_none());
        assert!(np.matches("", 1).is_none());
        assert!(np.matches(".", 1).is_none());
        assert!(np.matches("ex\u{e9}mple.com", 1).is_none());
    }
}
