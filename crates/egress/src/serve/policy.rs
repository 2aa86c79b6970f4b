//! What `egress serve` lets through: the listener's IP blocklist (from the
//! homeserver's settings), optional domain globs, client credentials, and the
//! parent proxy a checked target goes through. Reloaded as a whole.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::sync::Arc;

use wildmatch::WildMatch;

use super::auth::Htpasswd;
use crate::proxy_url::unbracket;
use crate::route::Scheme;
use crate::{Blocked, Blocklist, BlocklistKind, ProxySettings, ProxyUrl};

/// The reloadable part of `egress serve`'s configuration: the settings the
/// blocklists and parent proxies come from, domain globs and credentials.
#[derive(Clone, Debug)]
pub struct ServePolicy {
    pub(crate) settings: Arc<ProxySettings>,
    pub(crate) upstream: Option<ProxyUrl>,
    /// Ignore the settings' proxies (`--direct`).
    pub(crate) direct: bool,
    pub(crate) allow_domains: Vec<Glob>,
    pub(crate) deny_domains: Vec<Glob>,
    pub(crate) users: Option<Htpasswd>,
}

/// A domain glob (`*` any run of characters, `?` one), matched without case.
#[derive(Clone)]
pub(crate) struct Glob {
    text: String,
    matcher: WildMatch,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Glob {
    fn new(text: &str) -> Glob {
        let text = text.trim().trim_end_matches('.').to_ascii_lowercase();
        Glob {
            matcher: WildMatch::new(&text),
            text,
        }
    }

    fn matches(&self, host: &str) -> bool {
        self.matcher.matches(host)
    }
}

/// Why serve refuses a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Denial {
    /// The name matches a `--deny-domain` glob.
    DomainDenied { host: String, glob: String },
    /// Domain allow globs are set and the name matches none.
    DomainNotAllowed { host: String },
    /// An address of the target is in the listener's blocklist.
    Blocked(Blocked),
}

impl Denial {
    /// The metrics label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Denial::DomainDenied { .. } => "domain_denied",
            Denial::DomainNotAllowed { .. } => "domain_not_allowed",
            Denial::Blocked(_) => "ip_blocked",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::DomainDenied { host, glob } => {
                write!(f, "{host} matches {glob} of --deny-domain")
            }
            Denial::DomainNotAllowed { host } => {
                write!(f, "{host} matches no --allow-domain glob")
            }
            Denial::Blocked(blocked) => write!(f, "{blocked}"),
        }
    }
}

impl ServePolicy {
    /// A policy from the homeserver's settings: its blocklists, and its
    /// `http_proxy` / `https_proxy` / `no_proxy` as the parent proxy.
    pub fn new(settings: impl Into<Arc<ProxySettings>>) -> ServePolicy {
        ServePolicy {
            settings: settings.into(),
            upstream: None,
            direct: false,
            allow_domains: Vec::new(),
            deny_domains: Vec::new(),
            users: None,
        }
    }

    /// A parent proxy for every target (`--upstream`), instead of the
    /// settings' `http_proxy` and `https_proxy`; `no_proxy` still applies.
    pub fn upstream(mut self, upstream: Option<ProxyUrl>) -> ServePolicy {
        self.upstream = upstream;
        self
    }

    /// Connect to targets directly, ignoring the settings' `http_proxy` and
    /// `https_proxy` (`--direct`); an [`upstream`](ServePolicy::upstream)
    /// still applies.
    pub fn direct(mut self, direct: bool) -> ServePolicy {
        self.direct = direct;
        self
    }

    /// The parent proxies in force, with the setting each comes from.
    pub(crate) fn parents(&self) -> Vec<(&ProxyUrl, &'static str)> {
        if let Some(upstream) = &self.upstream {
            return vec![(upstream, "--upstream")];
        }
        if self.direct {
            return Vec::new();
        }
        let mut parents = Vec::new();
        if let Some(p) = self.settings.http_proxy() {
            parents.push((p, "http_proxy"));
        }
        if let Some(p) = self.settings.https_proxy() {
            parents.push((p, "https_proxy"));
        }
        parents
    }

    /// Only names matching one of these globs are served (`--allow-domain`).
    pub fn allow_domains<I, S>(mut self, globs: I) -> ServePolicy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.allow_domains = globs.into_iter().map(|g| Glob::new(g.as_ref())).collect();
        self
    }

    /// Names matching one of these globs are refused (`--deny-domain`).
    pub fn deny_domains<I, S>(mut self, globs: I) -> ServePolicy
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.deny_domains = globs.into_iter().map(|g| Glob::new(g.as_ref())).collect();
        self
    }

    /// Clients must send Basic credentials found in this file.
    pub fn credentials(mut self, users: Option<Htpasswd>) -> ServePolicy {
        self.users = users;
        self
    }

    /// The settings the blocklists come from.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// True when clients must authenticate.
    pub fn requires_credentials(&self) -> bool {
        self.users.is_some()
    }

    /// The blocklist a listener with this policy applies.
    pub fn blocklist(&self, kind: BlocklistKind) -> &Blocklist {
        self.settings.blocklists().get(kind)
    }

    /// The domain verdict for a host name (IP literals: only the allow
    /// globs, matched as text).
    pub(crate) fn check_domain(&self, host: &str) -> Result<(), Denial> {
        let host = unbracket(host).trim_end_matches('.').to_ascii_lowercase();
        if let Some(glob) = self.deny_domains.iter().find(|g| g.matches(&host)) {
            return Err(Denial::DomainDenied {
                host,
                glob: glob.text.clone(),
            });
        }
        if !self.allow_domains.is_empty() && !self.allow_domains.iter().any(|g| g.matches(&host)) {
            return Err(Denial::DomainNotAllowed { host });
        }
        Ok(())
    }

    /// Synapse's rule on a whole answer: one blocked address refuses the name.
    pub(crate) fn check_addresses(
        &self,
        kind: BlocklistKind,
        addrs: &[IpAddr],
    ) -> Result<(), Denial> {
        let list = self.blocklist(kind);
        match addrs.iter().find_map(|ip| list.check(*ip)) {
            Some(blocked) => Err(Denial::Blocked(blocked)),
            None => Ok(()),
        }
    }

    /// The parent proxy for a target, with the setting it comes from, or
    /// `None` to connect directly (no parent, or a `no_proxy` match).
    pub(crate) fn parent(
        &self,
        scheme: Scheme,
        host: &str,
        port: u16,
    ) -> Option<(&ProxyUrl, &'static str)> {
        let (proxy, key) = match &self.upstream {
            Some(upstream) => (upstream, "--upstream"),
            None if self.direct => return None,
            None => match scheme {
                Scheme::Http => (self.settings.http_proxy()?, "http_proxy"),
                Scheme::Https => (self.settings.https_proxy()?, "https_proxy"),
            },
        };
        let no_proxy = &self.settings.no_proxy().value;
        let bypass = match unbracket(host).parse::<IpAddr>() {
            Ok(ip) => no_proxy.matches_ip(ip, port),
            Err(_) => no_proxy.matches_name(host, port),
        };
        match bypass {
            Some(_) => None,
            None => Some((proxy, key)),
        }
    }

    /// The effective policy for `--check`, one fact per line.
    pub fn describe(&self, kinds: &[BlocklistKind]) -> String {
        let mut out = String::new();
        let mut seen = Vec::new();
        for kind in kinds {
            if seen.contains(kind) {
                continue;
            }
            seen.push(*kind);
            let list = self.blocklist(*kind);
            let ranges: Vec<String> = list.ranges().map(|r| r.to_string()).collect();
            let allowed: Vec<String> = list.allowed_ranges().map(|r| r.to_string()).collect();
            let _ = writeln!(
                out,
                "policy {}: blocklist {} ({} ranges, plus 0.0.0.0 and ::): {}",
                policy_name(*kind),
                list.name(),
                ranges.len(),
                ranges.join(" ")
            );
            if !allowed.is_empty() {
                let _ = writeln!(
                    out,
                    "policy {}: allowed through the blocklist: {}",
                    policy_name(*kind),
                    allowed.join(" ")
                );
            }
        }
        let globs = |list: &[Glob]| {
            list.iter()
                .map(|g| g.text.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        if !self.deny_domains.is_empty() {
            let _ = writeln!(out, "deny domains: {}", globs(&self.deny_domains));
        }
        if !self.allow_domains.is_empty() {
            let _ = writeln!(out, "allow only domains: {}", globs(&self.allow_domains));
        }
        match &self.upstream {
            Some(upstream) => {
                let _ = writeln!(out, "parent proxy (--upstream): {upstream}");
            }
            None if self.direct => {
                let _ = writeln!(out, "parent proxy: none (--direct)");
            }
            None => {
                for (key, proxy) in [
                    ("http_proxy", self.settings.http_proxy()),
                    ("https_proxy", self.settings.https_proxy()),
                ] {
                    match proxy {
                        Some(p) => {
                            let _ = writeln!(out, "parent proxy for {key}: {p}");
                        }
                        None => {
                            let _ = writeln!(out, "parent proxy for {key}: none (direct)");
                        }
                    }
                }
            }
        }
        let no_proxy: Vec<&str> = self.settings.no_proxy().value.entries().collect();
        if !no_proxy.is_empty()
            && (self.upstream.is_some()
                || self.settings.https_proxy().is_some()
                || self.settings.http_proxy().is_some())
        {
            let _ = writeln!(
                out,
                "no_proxy (direct, still checked): {}",
                no_proxy.join(",")
            );
        }
        match &self.users {
            Some(users) => {
                let _ = writeln!(
                    out,
                    "client credentials: {} user(s) from {}",
                    users.len(),
                    users.source()
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "client credentials: none (any client on the listen addresses may use it)"
                );
            }
        }
        out
    }
}

/// The name of a listener policy, as written after `=` in `--listen`.
pub fn policy_name(kind: BlocklistKind) -> &'static str {
    // The same names as the client's `list` metric label.
    crate::instruments::list_name(kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProxyEnv;

    fn policy() -> ServePolicy {
        let settings = ProxySettings::builder(&ProxyEnv::default())
            .https_proxy(Some("http://parent.example:3128"), "https_proxy")
            .no_proxy(["internal.example"], "no_proxy")
            .ip_range_allowlist(["10.1.0.0/16"], "ip_range_whitelist")
            .build()
            .unwrap();
        ServePolicy::new(settings)
            .deny_domains(["*.evil.example"])
            .allow_domains(["*.example", "example"])
    }

    #[test]
    fn one_blocked_answer_refuses_the_name() {
        let p = policy();
        let ok: IpAddr = "93.184.216.34".parse().unwrap();
        let bad: IpAddr = "10.0.0.5".parse().unwrap();
        let hole: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(p
            .check_addresses(BlocklistKind::General, &[ok, hole])
            .is_ok());
        let denial = p
            .check_addresses(BlocklistKind::General, &[ok, bad])
            .unwrap_err();
        assert_eq!(
            denial.to_string(),
            "10.0.0.5 is in 10.0.0.0/8 of ip_range_blacklist (default)"
        );
        // The IPv4-mapped form is the same address.
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert!(p
            .check_addresses(BlocklistKind::General, &[mapped])
            .is_err());
    }

    #[test]
    fn domain_globs_deny_first_then_allow() {
        let p = policy();
        assert!(p.check_domain("www.example").is_ok());
        assert!(p.check_domain("EXAMPLE.").is_ok());
        assert_eq!(
            p.check_domain("a.evil.example").unwrap_err().to_string(),
            "a.evil.example matches *.evil.example of --deny-domain"
        );
        assert_eq!(
            p.check_domain("other.org").unwrap_err().to_string(),
            "other.org matches no --allow-domain glob"
        );
    }

    #[test]
    fn the_parent_is_chosen_by_scheme_and_no_proxy() {
        let p = policy();
        assert_eq!(
            p.parent(Scheme::Https, "matrix.org", 443).map(|(_, k)| k),
            Some("https_proxy")
        );
        assert!(p.parent(Scheme::Http, "matrix.org", 80).is_none());
        assert!(p.parent(Scheme::Https, "internal.example", 443).is_none());
        let up = ProxyUrl::parse("http://corp:8080").unwrap();
        let p = p.upstream(Some(up));
        assert_eq!(
            p.parent(Scheme::Http, "matrix.org", 80).map(|(_, k)| k),
            Some("--upstream")
        );
    }
}
