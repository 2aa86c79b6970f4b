//! The effective settings: environment and homeserver.yaml combined, each
//! value remembering where it came from.

use std::fmt;

use ipnet::IpNet;

use crate::blocklist::{default_ranges, parse_range, Blocklist};
use crate::env::{EnvVar, ProxyEnv};
use crate::homeserver::{HomeserverYaml, Key};
use crate::no_proxy::NoProxy;
use crate::proxy_url::{mask_password, ProxyUrl, ProxyUrlError};
use crate::purpose::BlocklistKind;
use crate::tls_policy::TlsPolicy;
use crate::ConfigError;

/// Where a setting's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// An environment variable, by its exact name (`HTTPS_PROXY`, `no_proxy`…).
    Env(String),
    /// A homeserver.yaml key.
    Yaml(&'static str),
    /// Not set anywhere: the default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Yaml(key) => write!(f, "homeserver.yaml key {key}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A value and where it came from.
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

/// The three blocklists a homeserver uses.
#[derive(Clone, Debug)]
pub struct Blocklists {
    /// `ip_range_blacklist` (or `ip_range_blocklist`) with `ip_range_whitelist`.
    pub general: Blocklist,
    /// `federation_ip_range_blacklist` (no allowlist, as in Synapse), or the
    /// general list when that key is absent.
    pub federation: Blocklist,
    /// `url_preview_ip_range_blacklist` with `url_preview_ip_range_whitelist`,
    /// or the default list when unset.
    pub url_preview: Blocklist,
}

impl Blocklists {
    /// The list for a kind of purpose.
    pub fn get(&self, kind: BlocklistKind) -> &Blocklist {
        match kind {
            BlocklistKind::General => &self.general,
            BlocklistKind::Federation => &self.federation,
            BlocklistKind::UrlPreview => &self.url_preview,
        }
    }

    fn from_yaml(yaml: &HomeserverYaml) -> Result<Blocklists, ConfigError> {
        let (key, blocked) = yaml.strings_either("ip_range_blacklist", "ip_range_blocklist")?;
        // Synapse: an explicit null is an empty list (only 0.0.0.0 and :: stay blocked).
        let (name, blocked) = match blocked {
            Key::Absent => ("ip_range_blacklist (default)", default_ranges()),
            Key::Null => (key, Vec::new()),
            Key::Value(list) => (key, ranges(key, &list)?),
        };
        let (allow_key, allowed) =
            yaml.strings_either("ip_range_whitelist", "ip_range_allowlist")?;
        let allowed = optional_ranges(allow_key, allowed)?;
        let general = Blocklist::new(name, &blocked, &allowed);

        const FEDERATION: &str = "federation_ip_range_blacklist";
        let federation = match yaml.strings(FEDERATION)? {
            Key::Absent => general.clone(),
            Key::Null => Blocklist::new(FEDERATION, &[], &[]),
            Key::Value(list) => Blocklist::new(FEDERATION, &ranges(FEDERATION, &list)?, &[]),
        };

        let (key, blocked) = yaml.strings_either(
            "url_preview_ip_range_blacklist",
            "url_preview_ip_range_blocklist",
        )?;
        let (name, blocked) = match blocked {
            Key::Absent => ("url_preview_ip_range_blacklist (default)", default_ranges()),
            Key::Null => (key, Vec::new()),
            Key::Value(list) => (key, ranges(key, &list)?),
        };
        let (allow_key, allowed) = yaml.strings_either(
            "url_preview_ip_range_whitelist",
            "url_preview_ip_range_allowlist",
        )?;
        let allowed = optional_ranges(allow_key, allowed)?;
        let url_preview = Blocklist::new(name, &blocked, &allowed);

        Ok(Blocklists {
            general,
            federation,
            url_preview,
        })
    }
}

impl Default for Blocklists {
    fn default() -> Blocklists {
        Blocklists::from_yaml(&HomeserverYaml::default()).expect("defaults are valid")
    }
}

fn ranges(key: &'static str, list: &[&str]) -> Result<Vec<IpNet>, ConfigError> {
    list.iter()
        .map(|text| {
            parse_range(text).map_err(|problem| ConfigError::IpRange {
                key,
                value: text.to_string(),
                problem,
            })
        })
        .collect()
}

fn optional_ranges(key: &'static str, list: Key<Vec<&str>>) -> Result<Vec<IpNet>, ConfigError> {
    match list {
        Key::Value(list) => ranges(key, &list),
        Key::Absent | Key::Null => Ok(Vec::new()),
    }
}

/// Everything the routing decision needs, built once at start-up.
///
/// ```
/// use egress::{ProxyEnv, ProxySettings};
///
/// let env = ProxyEnv::from_vars([("HTTPS_PROXY", "http://alice:s3cret@proxy.example:3128")]);
/// let settings = ProxySettings::new(&env, None).unwrap();
/// let proxy = settings.https_proxy().unwrap();
/// assert_eq!(proxy.to_string(), "http://alice:***@proxy.example:3128");
/// ```
#[derive(Clone, Debug)]
pub struct ProxySettings {
    http_proxy: Sourced<Option<ProxyUrl>>,
    https_proxy: Sourced<Option<ProxyUrl>>,
    no_proxy: Sourced<NoProxy>,
    blocklists: Blocklists,
    tls: TlsPolicy,
}

impl ProxySettings {
    /// Combines the environment and, if given, homeserver.yaml. Each of the
    /// keys `http_proxy`, `https_proxy` and `no_proxy_hosts` that is present
    /// in the YAML wins over the environment on its own; `null` means none.
    ///
    /// Logs each skipped `no_proxy` entry once, and a loud warning when
    /// certificate checks are switched off.
    pub fn new(
        env: &ProxyEnv,
        yaml: Option<&HomeserverYaml>,
    ) -> Result<ProxySettings, ConfigError> {
        let empty = HomeserverYaml::default();
        let yaml = yaml.unwrap_or(&empty);
        let http_proxy = proxy_setting(yaml, "http_proxy", env.http.as_ref())?;
        let https_proxy = proxy_setting(yaml, "https_proxy", env.https.as_ref())?;
        let no_proxy = match yaml.strings("no_proxy_hosts")? {
            Key::Value(entries) => Sourced {
                value: NoProxy::from_entries(&entries),
                source: Source::Yaml("no_proxy_hosts"),
            },
            Key::Null => Sourced {
                value: NoProxy::default(),
                source: Source::Yaml("no_proxy_hosts"),
            },
            Key::Absent => match &env.no {
                Some(var) => Sourced {
                    value: NoProxy::parse(&var.value),
                    source: Source::Env(var.name.clone()),
                },
                None => Sourced {
                    value: NoProxy::default(),
                    source: Source::Default,
                },
            },
        };
        for warning in no_proxy.value.warnings() {
            tracing::warn!("{} ({})", warning, no_proxy.source);
        }
        let tls = TlsPolicy::from_yaml(yaml)?;
        if tls.insecure_regular {
            tracing::warn!(
                "use_insecure_ssl_client_just_for_testing_do_not_use is true: TLS certificates \
                 of proxies and of non-federation servers are NOT verified. Anyone on the path \
                 can read and change this traffic. Use it only to test, never in production."
            );
        }
        Ok(ProxySettings {
            http_proxy,
            https_proxy,
            no_proxy,
            blocklists: Blocklists::from_yaml(yaml)?,
            tls,
        })
    }

    /// No proxy, no bypass, default blocklists and TLS.
    pub fn none() -> ProxySettings {
        ProxySettings::new(&ProxyEnv::default(), None).expect("defaults are valid")
    }

    /// The proxy for `http://` targets.
    pub fn http_proxy(&self) -> Option<&ProxyUrl> {
        self.http_proxy.value.as_ref()
    }

    /// The proxy for `https://` targets (and all federation).
    pub fn https_proxy(&self) -> Option<&ProxyUrl> {
        self.https_proxy.value.as_ref()
    }

    /// `http_proxy` and where it came from.
    pub fn http_proxy_setting(&self) -> &Sourced<Option<ProxyUrl>> {
        &self.http_proxy
    }

    /// `https_proxy` and where it came from.
    pub fn https_proxy_setting(&self) -> &Sourced<Option<ProxyUrl>> {
        &self.https_proxy
    }

    /// The compiled `no_proxy` and where it came from.
    pub fn no_proxy(&self) -> &Sourced<NoProxy> {
        &self.no_proxy
    }

    /// The IP blocklists.
    pub fn blocklists(&self) -> &Blocklists {
        &self.blocklists
    }

    /// The TLS policy.
    pub fn tls(&self) -> &TlsPolicy {
        &self.tls
    }
}

fn proxy_setting(
    yaml: &HomeserverYaml,
    key: &'static str,
    env: Option<&EnvVar>,
) -> Result<Sourced<Option<ProxyUrl>>, ConfigError> {
    let (raw, source) = match yaml.string(key)? {
        Key::Value(value) => (Some(value), Source::Yaml(key)),
        Key::Null => (None, Source::Yaml(key)),
        Key::Absent => match env {
            Some(var) => (Some(var.value.as_str()), Source::Env(var.name.clone())),
            None => (None, Source::Default),
        },
    };
    let value = match raw {
        None => None,
        Some(raw) => match ProxyUrl::parse(raw) {
            Ok(url) => Some(url),
            // An empty string is "no proxy", as in Synapse.
            Err(ProxyUrlError::Empty) => None,
            Err(problem) => {
                return Err(ConfigError::ProxyUrl {
                    source_: source,
                    value: mask_password(raw),
                    problem,
                })
            }
        },
    };
    Ok(Sourced { value, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn settings(env: &[(&str, &str)], yaml: &str) -> Result<ProxySettings, ConfigError> {
        let env = ProxyEnv::from_vars(env.iter().copied());
        let yaml = HomeserverYaml::parse(yaml).unwrap();
        ProxySettings::new(&env, Some(&yaml))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn environment_alone() {
        let s = settings(
            &[
                ("HTTP_PROXY", "http://h:1"),
                ("https_proxy", "https://s:2"),
                ("NO_PROXY", "a.org"),
            ],
            "",
        )
        .unwrap();
        assert_eq!(s.http_proxy().unwrap().to_string(), "http://h:1");
        assert_eq!(s.https_proxy().unwrap().to_string(), "https://s:2");
        assert_eq!(
            s.http_proxy_setting().source,
            Source::Env("HTTP_PROXY".into())
        );
        assert_eq!(
            s.https_proxy_setting().source,
            Source::Env("https_proxy".into())
        );
        assert_eq!(s.no_proxy().source, Source::Env("NO_PROXY".into()));
        assert!(s.no_proxy().value.matches("x.a.org", 443).is_some());
    }

    #[test]
    fn yaml_keys_override_one_by_one() {
        let env = [
            ("HTTP_PROXY", "http://envh:1"),
            ("HTTPS_PROXY", "http://envs:2"),
            ("NO_PROXY", "env.org"),
        ];
        let s = settings(&env, "https_proxy: http://yaml:3\n").unwrap();
        assert_eq!(s.http_proxy().unwrap().to_string(), "http://envh:1");
        assert_eq!(s.https_proxy().unwrap().to_string(), "http://yaml:3");
        assert_eq!(s.https_proxy_setting().source, Source::Yaml("https_proxy"));
        assert!(s.no_proxy().value.matches("env.org", 1).is_some());

        let s = settings(&env, "http_proxy: null\nno_proxy_hosts: [yaml.org]\n").unwrap();
        assert!(s.http_proxy().is_none());
        assert_eq!(s.http_proxy_setting().source, Source::Yaml("http_proxy"));
        assert!(s.no_proxy().value.matches("env.org", 1).is_none());
        assert!(s.no_proxy().value.matches("yaml.org", 1).is_some());

        let s = settings(&env, "no_proxy_hosts: []\n").unwrap();
        assert!(s.no_proxy().value.is_empty());
        assert_eq!(s.no_proxy().source, Source::Yaml("no_proxy_hosts"));
        let s = settings(&env, "no_proxy_hosts: null\n").unwrap();
        assert!(s.no_proxy().value.is_empty());
    }

    #[test]
    fn nothing_configured() {
        let s = ProxySettings::none();
        assert!(s.http_proxy().is_none() && s.https_proxy().is_none());
        assert!(s.no_proxy().value.is_empty());
        assert_eq!(s.no_proxy().source, Source::Default);
        assert!(!s.tls().insecure_regular);
    }

    #[test]
    fn errors_name_the_setting_and_mask_the_password() {
        let e = settings(&[("HTTPS_PROXY", "socks5://bob:hunter2@proxy:1080")], "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("environment variable HTTPS_PROXY"), "{e}");
        assert!(e.contains("socks5://bob:***@proxy:1080"), "{e}");
        assert!(
            e.contains("only http:// and https:// proxies are supported"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");

        let e = settings(&[], "http_proxy: 'alice:pw@proxy:99999'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("homeserver.yaml key http_proxy"), "{e}");
        assert!(e.contains("99999") && !e.contains("pw@"), "{e}");

        let e = settings(&[], "https_proxy: ['a']\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`https_proxy` must be a string"), "{e}");
        let e = settings(&[], "no_proxy_hosts: 'a.org'\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`no_proxy_hosts` must be a list of strings"),
            "{e}"
        );
        let e = settings(&[("http_proxy", "::1")], "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("[::1]"), "{e}");
    }

    #[test]
    fn empty_string_is_no_proxy() {
        let s = settings(&[("HTTPS_PROXY", "x:1")], "https_proxy: ''\n").unwrap();
        assert!(s.https_proxy().is_none());
    }

    #[test]
    fn blocklist_keys() {
        let s = settings(&[], "").unwrap();
        let b = s.blocklists();
        assert!(b.general.blocks(ip("127.0.0.1")));
        assert!(b.federation.blocks(ip("127.0.0.1")));
        assert!(b.url_preview.blocks(ip("10.0.0.1")));
        assert!(!b.general.blocks(ip("8.8.8.8")));

        let s = settings(&[], "ip_range_whitelist: ['127.0.0.0/8']\n").unwrap();
        let b = s.blocklists();
        assert!(!b.general.blocks(ip("127.0.0.1")));
        // The federation list falls back to the general one, allowlist included.
        assert!(!b.federation.blocks(ip("127.0.0.1")));
        // URL previews have their own allowlist.
        assert!(b.url_preview.blocks(ip("127.0.0.1")));

        let s = settings(
            &[],
            "ip_range_blocklist: ['8.8.8.0/24']\nip_range_allowlist: ['8.8.8.8']\n\
             federation_ip_range_blacklist: ['1.1.1.0/24']\n\
             url_preview_ip_range_blacklist: ['9.9.9.9']\nurl_preview_ip_range_whitelist: []\n",
        )
        .unwrap();
        let b = s.blocklists();
        assert!(b.general.blocks(ip("8.8.8.7")) && !b.general.blocks(ip("8.8.8.8")));
        assert!(!b.general.blocks(ip("127.0.0.1")));
        assert_eq!(
            b.general.check(ip("8.8.8.7")).unwrap().list,
            "ip_range_blocklist"
        );
        assert!(b.federation.blocks(ip("1.1.1.1")) && !b.federation.blocks(ip("8.8.8.7")));
        assert!(b.federation.blocks(ip("0.0.0.0")));
        assert!(b.url_preview.blocks(ip("9.9.9.9")) && !b.url_preview.blocks(ip("10.0.0.1")));

        let s = settings(&[], "ip_range_blacklist: null\n").unwrap();
        assert!(!s.blocklists().general.blocks(ip("10.0.0.1")));
        assert!(s.blocklists().general.blocks(ip("0.0.0.0")));

        let e = settings(&[], "ip_range_blacklist: ['10.0.0.0/33']\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`ip_range_blacklist`") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        assert!(settings(&[], "ip_range_blacklist: []\nip_range_blocklist: []\n").is_err());
        assert!(settings(&[], "federation_ip_range_blacklist: 'x'\n").is_err());
    }
}
