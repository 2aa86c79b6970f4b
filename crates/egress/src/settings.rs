//! The effective settings: the environment and the caller's configuration
//! (homeserver.yaml, or a homeserver's own keys through
//! [`ProxySettings::builder`]) combined, each value remembering where it came
//! from.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::blocklist::{default_ranges, parse_range, Blocklist};
use crate::env::{EnvVar, ProxyEnv};
#[cfg(feature = "yaml")]
use crate::homeserver::HomeserverYaml;
use crate::no_proxy::NoProxy;
use crate::proxy_url::{mask_password, ProxyUrl, ProxyUrlError};
use crate::purpose::BlocklistKind;
use crate::tls_policy::TlsPolicy;
use crate::ConfigError;

/// Where a setting's value comes from.
///
/// `From<&'static str>` and `From<String>` make a [`Source::Config`], so a
/// builder setter takes the caller's key name as is:
/// `.https_proxy(Some(url), "proxy.https")`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// An environment variable, by its exact name (`HTTPS_PROXY`, `no_proxy`…).
    Env(String),
    /// A homeserver.yaml key.
    Yaml(&'static str),
    /// A key of the caller's own configuration, by the caller's name for it
    /// (`ip_range_denylist`, `global.proxy.https`…). Displayed as
    /// `config key NAME`. A `Cow` because key paths of nested configurations
    /// (TOML tables) are often built at run time, while most names are
    /// literals that need no allocation.
    Config(Cow<'static, str>),
    /// Not set anywhere: the default.
    Default,
}

impl Source {
    /// A key of the caller's configuration: `Source::config("proxy.https")`.
    pub fn config(name: impl Into<Cow<'static, str>>) -> Source {
        Source::Config(name.into())
    }

    /// The variable or key name, without the kind of source; `None` for
    /// [`Source::Default`].
    pub fn name(&self) -> Option<&str> {
        match self {
            Source::Env(name) => Some(name),
            Source::Yaml(key) => Some(key),
            Source::Config(key) => Some(key),
            Source::Default => None,
        }
    }

    /// The name as an owned-or-static string, for a blocklist's name.
    fn list_name(&self) -> Option<Cow<'static, str>> {
        match self {
            Source::Env(name) => Some(Cow::Owned(name.clone())),
            Source::Yaml(key) => Some(Cow::Borrowed(key)),
            Source::Config(key) => Some(key.clone()),
            Source::Default => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(name) => write!(f, "environment variable {name}"),
            Source::Yaml(key) => write!(f, "homeserver.yaml key {key}"),
            Source::Config(key) => write!(f, "config key {key}"),
            Source::Default => f.write_str("default"),
        }
    }
}

impl From<&'static str> for Source {
    fn from(key: &'static str) -> Source {
        Source::Config(Cow::Borrowed(key))
    }
}

impl From<String> for Source {
    fn from(key: String) -> Source {
        Source::Config(Cow::Owned(key))
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
}

impl Default for Blocklists {
    /// Synapse's defaults, named `ip_range_blacklist (default)` and
    /// `url_preview_ip_range_blacklist (default)`.
    fn default() -> Blocklists {
        ProxySettings::none().blocklists
    }
}

/// Everything the routing decision needs, built once at start-up.
///
/// ```
/// use egress::{ProxyEnv, ProxySettings};
///
/// let env = ProxyEnv::from_vars([("HTTPS_PROXY", "http://alice:s3cret@proxy.example:3128")]);
/// let settings = ProxySettings::builder(&env).build().unwrap();
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
    /// Starts from the environment `env`; every setter then names the
    /// caller's own key, which errors and route reasons repeat.
    ///
    /// A homeserver configured in TOML (tuwunel, conduwuit, continuwuity)
    /// passes its keys under its own names:
    ///
    /// ```
    /// use egress::{ProxyEnv, ProxySettings, Purpose, Route};
    ///
    /// // [global.proxy] https = "http://bob:hunter2@proxy.example:3128"
    /// //                no_proxy = ["internal.example"]
    /// // [global] ip_range_denylist = ["10.0.0.0/8"]
    /// let env = ProxyEnv::from_vars([("HTTPS_PROXY", "http://env.example:3128")]);
    /// let settings = ProxySettings::builder(&env)
    ///     .https_proxy(Some("http://bob:hunter2@proxy.example:3128"), "global.proxy.https")
    ///     .no_proxy(["internal.example"], "global.proxy.no_proxy")
    ///     .ip_range_denylist(["10.0.0.0/8"], "global.ip_range_denylist")
    ///     .build()
    ///     .unwrap();
    ///
    /// let url = "https://push.example.org/_matrix/push/v1/notify".parse().unwrap();
    /// let route = Route::decide(&settings, Purpose::Push, &url);
    /// assert_eq!(
    ///     route.explain(),
    ///     "through proxy http://bob:***@proxy.example:3128 (CONNECT tunnel): https_proxy is \
    ///      set by config key global.proxy.https and no no_proxy entry matches push.example.org"
    /// );
    /// let url = "https://10.1.2.3/".parse().unwrap();
    /// let route = Route::decide(&settings, Purpose::Push, &url);
    /// assert!(route.explain().ends_with("10.1.2.3 is in 10.0.0.0/8 of global.ip_range_denylist; \
    ///                                    refused even through a proxy"));
    ///
    /// // Bad input is an error naming the key and the value, password masked.
    /// let err = ProxySettings::builder(&env)
    ///     .https_proxy(Some("socks5://bob:hunter2@proxy.example:1080"), "global.proxy.https")
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "config key global.proxy.https has an invalid proxy URL \
    ///      `socks5://bob:***@proxy.example:1080`: scheme `socks5://` is not supported: only \
    ///      http:// and https:// proxies are supported"
    /// );
    /// ```
    pub fn builder(env: &ProxyEnv) -> ProxySettingsBuilder {
        ProxySettingsBuilder::new(env)
    }

    /// Combines the environment and, if given, homeserver.yaml. Each of the
    /// keys `http_proxy`, `https_proxy` and `no_proxy_hosts` that is present
    /// in the YAML wins over the environment on its own; `null` means none.
    /// The same as [`HomeserverYaml::configure`] on
    /// [`ProxySettings::builder`], then [`ProxySettingsBuilder::build`].
    ///
    /// Logs each skipped `no_proxy` entry once, and a loud warning when
    /// certificate checks are switched off.
    #[cfg(feature = "yaml")]
    pub fn new(
        env: &ProxyEnv,
        yaml: Option<&HomeserverYaml>,
    ) -> Result<ProxySettings, ConfigError> {
        let builder = ProxySettings::builder(env);
        match yaml {
            Some(yaml) => yaml.configure(builder)?.build(),
            None => builder.build(),
        }
    }

    /// No proxy, no bypass, default blocklists and TLS.
    pub fn none() -> ProxySettings {
        ProxySettings::builder(&ProxyEnv::default())
            .build()
            .expect("defaults are valid")
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

/// A proxy URL as given: `Debug` masks its password.
#[derive(Clone)]
struct RawProxy(Option<String>);

impl fmt::Debug for RawProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.as_deref().map(mask_password), f)
    }
}

/// Collects raw settings, each with the caller's name for it; nothing is
/// parsed until [`build`](ProxySettingsBuilder::build), which reports the
/// first unusable value as a [`ConfigError`] naming that name.
///
/// A setting that is never set keeps the environment's value (proxies and
/// `no_proxy`) or Synapse's default (blocklists, TLS). Setting it, even to
/// `None` or an empty list, overrides the environment: as homeserver.yaml's
/// `null`, "none" is a value. A `null` list is the same as an empty list, so
/// list setters have no `None`.
///
/// Created by [`ProxySettings::builder`]. `Debug` masks proxy passwords.
#[derive(Clone, Debug)]
#[must_use]
pub struct ProxySettingsBuilder {
    env: ProxyEnv,
    http_proxy: Option<Sourced<RawProxy>>,
    https_proxy: Option<Sourced<RawProxy>>,
    no_proxy: Option<Sourced<Vec<String>>>,
    denylist: Option<Sourced<Vec<String>>>,
    allowlist: Option<Sourced<Vec<String>>>,
    federation_denylist: Option<Sourced<Vec<String>>>,
    url_preview_denylist: Option<Sourced<Vec<String>>>,
    url_preview_allowlist: Option<Sourced<Vec<String>>>,
    default_names: [Cow<'static, str>; 2],
    accept_invalid_certs: Option<Sourced<bool>>,
    federation_verify: Option<Sourced<bool>>,
    federation_whitelist: Option<Sourced<Vec<String>>>,
    federation_custom_ca_list: Option<Sourced<Vec<PathBuf>>>,
}

fn strings<I, S>(items: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    items.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

fn sourced<T>(value: T, name: impl Into<Source>) -> Option<Sourced<T>> {
    Some(Sourced {
        value,
        source: name.into(),
    })
}

impl ProxySettingsBuilder {
    fn new(env: &ProxyEnv) -> ProxySettingsBuilder {
        ProxySettingsBuilder {
            env: env.clone(),
            http_proxy: None,
            https_proxy: None,
            no_proxy: None,
            denylist: None,
            allowlist: None,
            federation_denylist: None,
            url_preview_denylist: None,
            url_preview_allowlist: None,
            default_names: [
                Cow::Borrowed("ip_range_blacklist (default)"),
                Cow::Borrowed("url_preview_ip_range_blacklist (default)"),
            ],
            accept_invalid_certs: None,
            federation_verify: None,
            federation_whitelist: None,
            federation_custom_ca_list: None,
        }
    }

    /// The proxy for `http://` targets, `[scheme://][user:password@]host[:port]`.
    /// `None` or `""` means no proxy (the environment is not consulted).
    pub fn http_proxy(mut self, url: Option<&str>, name: impl Into<Source>) -> Self {
        self.http_proxy = sourced(RawProxy(url.map(str::to_owned)), name);
        self
    }

    /// The proxy for `https://` targets and all federation. `None` or `""`
    /// means no proxy (the environment is not consulted).
    pub fn https_proxy(mut self, url: Option<&str>, name: impl Into<Source>) -> Self {
        self.https_proxy = sourced(RawProxy(url.map(str::to_owned)), name);
        self
    }

    /// The hosts, domains, IP addresses and CIDR ranges that bypass the
    /// proxy (as homeserver.yaml's `no_proxy_hosts`). Replaces the
    /// environment's `no_proxy`; an empty list means no bypass.
    pub fn no_proxy<I, S>(mut self, entries: I, name: impl Into<Source>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.no_proxy = sourced(strings(entries), name);
        self
    }

    /// The general blocklist (Synapse's `ip_range_blacklist`): addresses or
    /// CIDR ranges. Replaces Synapse's default list; empty leaves only
    /// `0.0.0.0` and `::` blocked. The list is named after `name`.
    pub fn ip_range_denylist<I, S>(mut self, ranges: I, name: impl Into<Source>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.denylist = sourced(strings(ranges), name);
        self
    }

    /// Holes in the general blocklist (Synapse's `ip_range_whitelist`).
    /// Also applies to federation while the federation list is unset.
    pub fn ip_range_allowlist<I, S>(mut self, ranges: I, name: impl Into<Source>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.allowlist = sourced(strings(ranges), name);
        self
    }

    /// The federation blocklist (Synapse's `federation_ip_range_blacklist`),
    /// which has no allowlist. Unset, federation uses the general list with
    /// its allowlist.
    pub fn federation_ip_range_denylist<I, S>(mut self, ranges: I, name: impl Into<Source>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.federation_denylist = sourced(strings(ranges), name);
        self
    }

    /// The URL-preview blocklist (Synapse's `url_preview_ip_range_blacklist`).
    /// Unset, it is Synapse's default list.
    pub fn url_preview_ip_range_denylist<I, S>(mut self, ranges: I, name: impl Into<Source>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.url_preview_denylist = sourced(strings(ranges), name);
        self
    }

    /// Holes in the URL-preview blocklist (Synapse's `url_preview_ip_range_whitelist`).
    pub fn url_preview_ip_range_allowlist<I, S>(
        mut self,
        ranges: I,
        name: impl Into<Source>,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.url_preview_allowlist = sourced(strings(ranges), name);
        self
    }

    /// The names of the general and URL-preview blocklists while they are
    /// unset (Synapse's default list is used). By default
    /// `ip_range_blacklist (default)` and `url_preview_ip_range_blacklist (default)`.
    pub fn default_blocklist_names(
        mut self,
        general: impl Into<Cow<'static, str>>,
        url_preview: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.default_names = [general.into(), url_preview.into()];
        self
    }

    /// `true` turns certificate verification off for all non-federation
    /// HTTPS, to proxies and origins (Synapse's
    /// `use_insecure_ssl_client_just_for_testing_do_not_use`). For tests
    /// only: `build` logs a loud warning. Default `false`.
    pub fn danger_accept_invalid_certs(mut self, accept: bool, name: impl Into<Source>) -> Self {
        self.accept_invalid_certs = sourced(accept, name);
        self
    }

    /// Whether federation certificates are verified (Synapse's
    /// `federation_verify_certificates`). Default `true`.
    pub fn federation_verify_certificates(mut self, verify: bool, name: impl Into<Source>) -> Self {
        self.federation_verify = sourced(verify, name);
        self
    }

    /// Server names whose federation certificates are not verified (Synapse's
    /// `federation_certificate_verification_whitelist`): globs where `*`
    /// crosses dots, any case, ASCII only (write the `xn--` form).
    pub fn federation_certificate_whitelist<I, S>(
        mut self,
        globs: I,
        name: impl Into<Source>,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.federation_whitelist = sourced(strings(globs), name);
        self
    }

    /// CA files (PEM) that replace the system trust store for federation
    /// (Synapse's `federation_custom_ca_list`). Must not be empty; unset
    /// means the system trust store. The files are read when a client is built.
    pub fn federation_custom_ca_list<I, P>(mut self, files: I, name: impl Into<Source>) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        self.federation_custom_ca_list = sourced(files.into_iter().map(Into::into).collect(), name);
        self
    }

    /// Parses every value. The first unusable one is an error naming the
    /// setting by the name it was given, and the value (password masked).
    ///
    /// Logs each skipped `no_proxy` entry once, and a loud warning when
    /// certificate checks are switched off.
    pub fn build(&self) -> Result<ProxySettings, ConfigError> {
        let http_proxy = proxy_setting(self.http_proxy.as_ref(), self.env.http.as_ref())?;
        let https_proxy = proxy_setting(self.https_proxy.as_ref(), self.env.https.as_ref())?;
        let no_proxy = match (&self.no_proxy, &self.env.no) {
            (Some(set), _) => Sourced {
                value: NoProxy::from_entries(&set.value),
                source: set.source.clone(),
            },
            (None, Some(var)) => Sourced {
                value: NoProxy::parse(&var.value),
                source: Source::Env(var.name.clone()),
            },
            (None, None) => Sourced {
                value: NoProxy::default(),
                source: Source::Default,
            },
        };
        let blocklists = self.blocklists()?;
        let tls = self.tls()?;
        for warning in no_proxy.value.warnings() {
            tracing::warn!("{} ({})", warning, no_proxy.source);
        }
        if let Some(Sourced {
            value: true,
            source,
        }) = &self.accept_invalid_certs
        {
            tracing::warn!(
                "{source} is true: TLS certificates of proxies and of non-federation servers \
                 are NOT verified. Anyone on the path can read and change this traffic. Use it \
                 only to test, never in production."
            );
        }
        Ok(ProxySettings {
            http_proxy,
            https_proxy,
            no_proxy,
            blocklists,
            tls,
        })
    }

    fn blocklists(&self) -> Result<Blocklists, ConfigError> {
        let [general_default, url_preview_default] = &self.default_names;
        let general = list_with_holes(
            self.denylist.as_ref(),
            self.allowlist.as_ref(),
            general_default.clone(),
        )?;
        let federation = match &self.federation_denylist {
            None => general.clone(),
            Some(set) => Blocklist::new(list_name(set, "federation"), &ranges(set)?, &[]),
        };
        let url_preview = list_with_holes(
            self.url_preview_denylist.as_ref(),
            self.url_preview_allowlist.as_ref(),
            url_preview_default.clone(),
        )?;
        Ok(Blocklists {
            general,
            federation,
            url_preview,
        })
    }

    /// The TLS policy alone.
    pub(crate) fn tls(&self) -> Result<TlsPolicy, ConfigError> {
        let mut policy = TlsPolicy::default();
        if let Some(set) = &self.accept_invalid_certs {
            policy.insecure_regular = set.value;
        }
        if let Some(set) = &self.federation_verify {
            policy.federation_verify = set.value;
        }
        if let Some(set) = &self.federation_whitelist {
            if let Some(bad) = set.value.iter().find(|glob| !glob.is_ascii()) {
                return Err(ConfigError::BadValue {
                    source_: set.source.clone(),
                    value: bad.clone(),
                    problem: "it is not ASCII: write the punycode (xn--) form".to_owned(),
                });
            }
            policy.federation_whitelist = set.value.clone();
        }
        if let Some(set) = &self.federation_custom_ca_list {
            if set.value.is_empty() {
                return Err(ConfigError::BadValue {
                    source_: set.source.clone(),
                    value: "[]".to_owned(),
                    problem: "the list is empty: remove the setting to use the system trust \
                              store, or list CA files"
                        .to_owned(),
                });
            }
            policy.federation_custom_ca_list = Some(set.value.clone());
            policy.set_ca_list_source(set.source.clone());
        }
        Ok(policy)
    }
}

/// A blocklist and its allowlist: unset, Synapse's default list named
/// `default_name`.
fn list_with_holes(
    denylist: Option<&Sourced<Vec<String>>>,
    allowlist: Option<&Sourced<Vec<String>>>,
    default_name: Cow<'static, str>,
) -> Result<Blocklist, ConfigError> {
    let (name, blocked) = match denylist {
        None => (default_name, default_ranges()),
        Some(set) => (list_name(set, &default_name), ranges(set)?),
    };
    let allowed = match allowlist {
        None => Vec::new(),
        Some(set) => ranges(set)?,
    };
    Ok(Blocklist::new(name, &blocked, &allowed))
}

/// A list is named after its key; `fallback` when the caller gave
/// [`Source::Default`].
fn list_name<T>(set: &Sourced<T>, fallback: &str) -> Cow<'static, str> {
    set.source
        .list_name()
        .unwrap_or_else(|| Cow::Owned(fallback.to_owned()))
}

fn ranges(set: &Sourced<Vec<String>>) -> Result<Vec<IpNet>, ConfigError> {
    set.value
        .iter()
        .map(|text| {
            parse_range(text).map_err(|problem| ConfigError::IpRange {
                source_: set.source.clone(),
                value: text.clone(),
                problem,
            })
        })
        .collect()
}

fn proxy_setting(
    set: Option<&Sourced<RawProxy>>,
    env: Option<&EnvVar>,
) -> Result<Sourced<Option<ProxyUrl>>, ConfigError> {
    let (raw, source) = match (set, env) {
        (Some(set), _) => (set.value.0.as_deref(), set.source.clone()),
        (None, Some(var)) => (Some(var.value.as_str()), Source::Env(var.name.clone())),
        (None, None) => (None, Source::Default),
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

/// The homeserver.yaml path through the builder ([`ProxySettings::new`]).
#[cfg(all(test, feature = "yaml"))]
mod yaml_tests {
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
    fn configure_sets_only_the_keys_present() {
        let env = ProxyEnv::from_vars([("HTTPS_PROXY", "http://env:1"), ("NO_PROXY", "env.org")]);
        let yaml = HomeserverYaml::parse(
            "http_proxy: http://yaml:2\nip_range_blocklist: ['10.0.0.0/8']\n\
             federation_verify_certificates: false\n",
        )
        .unwrap();
        let s = yaml
            .configure(ProxySettings::builder(&env))
            .unwrap()
            .url_preview_ip_range_denylist(["9.9.9.9"], "later")
            .build()
            .unwrap();
        assert_eq!(s.http_proxy_setting().source, Source::Yaml("http_proxy"));
        assert_eq!(
            s.https_proxy_setting().source,
            Source::Env("HTTPS_PROXY".into())
        );
        assert_eq!(s.no_proxy().source, Source::Env("NO_PROXY".into()));
        assert_eq!(s.blocklists().general.name(), "ip_range_blocklist");
        assert_eq!(s.blocklists().federation.name(), "ip_range_blocklist");
        assert_eq!(s.blocklists().url_preview.name(), "later");
        assert!(!s.tls().federation_verify);
        // A setter after `configure` overrides the file's key.
        let s = yaml
            .configure(ProxySettings::builder(&env))
            .unwrap()
            .http_proxy(None, "cli.http_proxy")
            .build()
            .unwrap();
        assert!(s.http_proxy().is_none());
        // Types are checked by `configure`, values by `build`.
        let bad_type = HomeserverYaml::parse("federation_custom_ca_list: 'ca.pem'\n").unwrap();
        assert!(matches!(
            bad_type.configure(ProxySettings::builder(&env)),
            Err(ConfigError::WrongType { .. })
        ));
        let bad_value = HomeserverYaml::parse("federation_custom_ca_list: []\n").unwrap();
        let b = bad_value.configure(ProxySettings::builder(&env)).unwrap();
        assert_eq!(
            b.build().unwrap_err().to_string(),
            "homeserver.yaml key federation_custom_ca_list has an unusable value `[]`: the list \
             is empty: remove the setting to use the system trust store, or list CA files"
        );
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
        assert_eq!(
            e,
            "homeserver.yaml key ip_range_blacklist has an invalid IP range `10.0.0.0/33`: \
             not an IP address or CIDR range"
        );
        assert!(settings(&[], "ip_range_blacklist: []\nip_range_blocklist: []\n").is_err());
        assert!(settings(&[], "federation_ip_range_blacklist: 'x'\n").is_err());
    }
}

#[cfg(test)]
mod builder_tests {
    use super::*;
    use crate::{Purpose, Route};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        ProxyEnv::from_vars(vars.iter().copied())
    }

    fn explain(settings: &ProxySettings, purpose: Purpose, url: &str) -> String {
        let url = url.parse().unwrap();
        Route::decide(settings, purpose, &url).explain()
    }

    const ENV: &[(&str, &str)] = &[
        ("HTTP_PROXY", "http://envh:1"),
        ("https_proxy", "http://envs:2"),
        ("NO_PROXY", "env.org"),
    ];

    #[test]
    fn unset_settings_keep_the_environment() {
        let s = ProxySettings::builder(&env(ENV)).build().unwrap();
        assert_eq!(s.http_proxy().unwrap().to_string(), "http://envh:1");
        assert_eq!(
            s.https_proxy_setting().source,
            Source::Env("https_proxy".into())
        );
        assert_eq!(s.no_proxy().source, Source::Env("NO_PROXY".into()));
        assert!(s.no_proxy().value.matches("a.env.org", 443).is_some());
        assert_eq!(s.tls(), &TlsPolicy::default());

        let s = ProxySettings::builder(&ProxyEnv::default())
            .build()
            .unwrap();
        assert!(s.http_proxy().is_none() && s.https_proxy().is_none());
        assert_eq!(s.http_proxy_setting().source, Source::Default);
        assert_eq!(s.no_proxy().source, Source::Default);
    }

    #[test]
    fn proxy_setters_win_over_the_environment_one_by_one() {
        let s = ProxySettings::builder(&env(ENV))
            .https_proxy(Some("https://alice:pw@conf:3"), "proxy.https")
            .build()
            .unwrap();
        assert_eq!(
            s.https_proxy().unwrap().to_string(),
            "https://alice:***@conf:3"
        );
        assert_eq!(
            s.https_proxy_setting().source,
            Source::config("proxy.https")
        );
        assert_eq!(s.http_proxy().unwrap().to_string(), "http://envh:1");
        assert_eq!(s.no_proxy().source, Source::Env("NO_PROXY".into()));

        // None and "" mean no proxy; the environment is not consulted.
        let s = ProxySettings::builder(&env(ENV))
            .http_proxy(None, "proxy.http")
            .https_proxy(Some(""), String::from("proxy.https"))
            .build()
            .unwrap();
        assert!(s.http_proxy().is_none() && s.https_proxy().is_none());
        assert_eq!(s.http_proxy_setting().source, Source::config("proxy.http"));
        assert_eq!(
            s.https_proxy_setting().source,
            Source::config("proxy.https")
        );
        // The last call wins.
        let s = ProxySettings::builder(&env(ENV))
            .http_proxy(None, "a")
            .http_proxy(Some("http://b:1"), "b")
            .build()
            .unwrap();
        assert_eq!(s.http_proxy().unwrap().to_string(), "http://b:1");
        assert_eq!(s.http_proxy_setting().source, Source::config("b"));
    }

    #[test]
    fn no_proxy_setter_replaces_the_environment() {
        let s = ProxySettings::builder(&env(ENV))
            .no_proxy(["conf.org", "10.0.0.0/8"], "proxy.no_proxy")
            .build()
            .unwrap();
        assert!(s.no_proxy().value.matches("env.org", 443).is_none());
        assert!(s.no_proxy().value.matches("x.conf.org", 443).is_some());
        assert!(s.no_proxy().value.matches_ip(ip("10.1.1.1"), 80).is_some());
        assert_eq!(s.no_proxy().source, Source::config("proxy.no_proxy"));

        let s = ProxySettings::builder(&env(ENV))
            .no_proxy(Vec::<String>::new(), "proxy.no_proxy")
            .build()
            .unwrap();
        assert!(s.no_proxy().value.is_empty());
        assert_eq!(s.no_proxy().source, Source::config("proxy.no_proxy"));
    }

    #[test]
    fn reasons_name_the_callers_keys() {
        let s = ProxySettings::builder(&ProxyEnv::default())
            .https_proxy(Some("http://p:3128"), "global.proxy.https")
            .http_proxy(None, "global.proxy.http")
            .no_proxy(["internal.example"], "global.proxy.no_proxy")
            .ip_range_denylist(["10.0.0.0/8"], "global.ip_range_denylist")
            .build()
            .unwrap();
        assert_eq!(
            explain(&s, Purpose::Push, "https://push.example/"),
            "through proxy http://p:3128 (CONNECT tunnel): https_proxy is set by config key \
             global.proxy.https and no no_proxy entry matches push.example"
        );
        assert_eq!(
            explain(&s, Purpose::Push, "http://push.example/"),
            "direct, resolved addresses checked against global.ip_range_denylist: http_proxy \
             is empty or null in config key global.proxy.http"
        );
        assert_eq!(
            explain(&s, Purpose::Push, "https://internal.example/"),
            "direct, resolved addresses checked against global.ip_range_denylist: no_proxy \
             entry `internal.example` (config key global.proxy.no_proxy) matches internal.example"
        );
        assert_eq!(
            explain(&s, Purpose::Push, "https://10.9.9.9/"),
            "refused: the URL's host 10.9.9.9 is in 10.0.0.0/8 of global.ip_range_denylist; \
             refused even through a proxy"
        );
        // Federation falls back to the general list, under its name.
        assert!(explain(&s, Purpose::Federation, "https://10.9.9.9/")
            .contains("of global.ip_range_denylist"));
        // The URL-preview list is unset: Synapse's default.
        assert!(
            explain(&s, Purpose::UrlPreview, "https://127.0.0.1/")
                .contains("of url_preview_ip_range_blacklist (default)"),
            "{}",
            explain(&s, Purpose::UrlPreview, "https://127.0.0.1/")
        );
    }

    #[test]
    fn general_list_and_its_allowlist() {
        let s = ProxySettings::builder(&ProxyEnv::default())
            .build()
            .unwrap();
        let b = s.blocklists();
        assert!(b.general.blocks(ip("127.0.0.1")) && b.url_preview.blocks(ip("10.0.0.1")));
        assert_eq!(b.general.name(), "ip_range_blacklist (default)");
        assert_eq!(b.federation.name(), "ip_range_blacklist (default)");
        assert_eq!(
            b.url_preview.name(),
            "url_preview_ip_range_blacklist (default)"
        );

        let s = ProxySettings::builder(&ProxyEnv::default())
            .ip_range_denylist(["8.8.8.0/24"], "deny")
            .ip_range_allowlist(["8.8.8.8"], "allow")
            .build()
            .unwrap();
        let b = s.blocklists();
        // The list replaces the default.
        assert!(!b.general.blocks(ip("127.0.0.1")));
        assert!(b.general.blocks(ip("8.8.8.7")) && !b.general.blocks(ip("8.8.8.8")));
        assert_eq!(b.general.check(ip("8.8.8.7")).unwrap().list, "deny");
        // Federation falls back to the general list, allowlist included.
        assert!(b.federation.blocks(ip("8.8.8.7")) && !b.federation.blocks(ip("8.8.8.8")));
        assert_eq!(b.federation.name(), "deny");
        // URL previews keep the default list and have no allowlist of their own.
        assert!(b.url_preview.blocks(ip("127.0.0.1")) && !b.url_preview.blocks(ip("8.8.8.7")));

        // An allowlist alone punches a hole in the default list.
        let s = ProxySettings::builder(&ProxyEnv::default())
            .ip_range_allowlist(["127.0.0.0/8"], "allow")
            .build()
            .unwrap();
        assert!(!s.blocklists().general.blocks(ip("127.0.0.1")));
        assert!(s.blocklists().general.blocks(ip("10.0.0.1")));

        // An empty list (YAML null) blocks only 0.0.0.0 and ::.
        let s = ProxySettings::builder(&ProxyEnv::default())
            .ip_range_denylist(Vec::<&str>::new(), "deny")
            .build()
            .unwrap();
        let b = &s.blocklists().general;
        assert!(!b.blocks(ip("10.0.0.1")) && b.blocks(ip("0.0.0.0")) && b.blocks(ip("::")));
        assert_eq!(b.name(), "deny");
    }

    #[test]
    fn federation_and_url_preview_lists() {
        let s = ProxySettings::builder(&ProxyEnv::default())
            .ip_range_allowlist(["1.1.1.1"], "allow")
            .federation_ip_range_denylist(["1.1.1.0/24"], "federation.deny".to_owned())
            .url_preview_ip_range_denylist(["9.9.9.0/24"], "preview.deny")
            .url_preview_ip_range_allowlist(["9.9.9.9"], "preview.allow")
            .build()
            .unwrap();
        let b = s.blocklists();
        // The federation list has no allowlist: the general one does not apply.
        assert!(b.federation.blocks(ip("1.1.1.1")) && !b.federation.blocks(ip("127.0.0.1")));
        assert_eq!(
            b.federation.check(ip("1.1.1.1")).unwrap().list,
            "federation.deny"
        );
        assert!(b.url_preview.blocks(ip("9.9.9.8")) && !b.url_preview.blocks(ip("9.9.9.9")));
        assert!(!b.url_preview.blocks(ip("10.0.0.1")));
        assert_eq!(b.url_preview.name(), "preview.deny");
        // The general list is untouched.
        assert!(b.general.blocks(ip("10.0.0.1")) && !b.general.blocks(ip("1.1.1.1")));

        // An empty federation list: only 0.0.0.0 and ::.
        let s = ProxySettings::builder(&ProxyEnv::default())
            .federation_ip_range_denylist(Vec::<&str>::new(), "federation.deny")
            .build()
            .unwrap();
        let f = &s.blocklists().federation;
        assert!(!f.blocks(ip("127.0.0.1")) && f.blocks(ip("::")));
    }

    #[test]
    fn default_blocklist_names_name_the_callers_keys() {
        let s = ProxySettings::builder(&ProxyEnv::default())
            .default_blocklist_names("ip_range_denylist (default)", String::from("preview"))
            .build()
            .unwrap();
        let b = s.blocklists();
        assert_eq!(
            b.general.check(ip("10.0.0.1")).unwrap().list,
            "ip_range_denylist (default)"
        );
        assert_eq!(b.federation.name(), "ip_range_denylist (default)");
        assert_eq!(b.url_preview.name(), "preview");
        // The default list itself is Synapse's.
        assert_eq!(
            b.general.ranges().count(),
            crate::blocklist::DEFAULT_IP_RANGE_BLOCKLIST.len()
        );
    }

    #[test]
    fn tls_setters() {
        let s = ProxySettings::builder(&ProxyEnv::default())
            .danger_accept_invalid_certs(true, "tls.insecure")
            .federation_verify_certificates(true, "federation.verify")
            .federation_certificate_whitelist(["*.test"], "federation.unverified")
            .federation_custom_ca_list(["/etc/ca.pem"], "federation.ca_files")
            .build()
            .unwrap();
        let tls = s.tls();
        assert!(tls.insecure_regular);
        assert!(tls.federation_verifies("other.org") && !tls.federation_verifies("hs.TEST"));
        assert_eq!(
            tls.federation_custom_ca_list,
            Some(vec![PathBuf::from("/etc/ca.pem")])
        );
        assert_eq!(
            tls.federation_custom_ca_list_source(),
            &Source::config("federation.ca_files")
        );

        let s = ProxySettings::builder(&ProxyEnv::default())
            .danger_accept_invalid_certs(false, "tls.insecure")
            .federation_verify_certificates(false, "federation.verify")
            .build()
            .unwrap();
        assert!(!s.tls().insecure_regular && !s.tls().federation_verifies("x.org"));

        let e = ProxySettings::builder(&ProxyEnv::default())
            .federation_certificate_whitelist(["ok.test", "bücher.test"], "federation.unverified")
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key federation.unverified has an unusable value `bücher.test`: it is not \
             ASCII: write the punycode (xn--) form"
        );
        let e = ProxySettings::builder(&ProxyEnv::default())
            .federation_custom_ca_list(Vec::<PathBuf>::new(), "federation.ca_files")
            .build()
            .unwrap_err();
        assert!(
            matches!(&e, ConfigError::BadValue { source_, .. } if *source_ == Source::config("federation.ca_files")),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(
                "config key federation.ca_files has an unusable value `[]`: the list is empty"
            ),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_callers_key_and_mask_the_password() {
        let e = ProxySettings::builder(&ProxyEnv::default())
            .http_proxy(Some("http://bob:hunter2@proxy:99999"), "global.proxy.http")
            .build()
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "config key global.proxy.http has an invalid proxy URL `http://bob:***@proxy:99999`"
            ),
            "{text}"
        );
        assert!(!text.contains("hunter2") && !format!("{e:?}").contains("hunter2"));
        assert!(matches!(e, ConfigError::ProxyUrl { source_, .. }
            if source_ == Source::Config(Cow::Owned("global.proxy.http".into()))));

        // A key path built at run time.
        let table = "global";
        let e = ProxySettings::builder(&ProxyEnv::default())
            .ip_range_allowlist(
                ["127.0.0.1", "10.0.0.0/33"],
                format!("{table}.ip_range_allowlist"),
            )
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "config key global.ip_range_allowlist has an invalid IP range `10.0.0.0/33`: not an \
             IP address or CIDR range"
        );
        for (setter, name) in [
            (0, "deny"),
            (1, "federation"),
            (2, "preview"),
            (3, "preview_allow"),
            (4, "no_such"),
        ] {
            let b = ProxySettings::builder(&ProxyEnv::default());
            let b = match setter {
                0 => b.ip_range_denylist(["example.com"], name),
                1 => b.federation_ip_range_denylist(["example.com"], name),
                2 => b.url_preview_ip_range_denylist(["example.com"], name),
                3 => b.url_preview_ip_range_allowlist(["example.com"], name),
                _ => b.https_proxy(Some("ftp://a:b@h"), name),
            };
            let e = b.build().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("config key {name} has an invalid")),
                "{e}"
            );
            assert!(!e.contains(":b@"), "{e}");
        }

        // An environment variable is named as such, whatever the builder sets elsewhere.
        let e = ProxySettings::builder(&env(&[("HTTPS_PROXY", "socks5://u:pw@p:1")]))
            .http_proxy(None, "proxy.http")
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "environment variable HTTPS_PROXY has an invalid proxy URL `socks5://u:***@p:1`"
            ),
            "{e}"
        );
    }

    #[test]
    fn debug_masks_passwords() {
        let b = ProxySettings::builder(&env(&[("HTTP_PROXY", "http://e:envpw@p:1")]))
            .https_proxy(Some("http://bob:hunter2@proxy:3128"), "proxy.https");
        let text = format!("{b:?}");
        assert!(text.contains("bob:***@proxy:3128"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("envpw"),
            "{text}"
        );
    }

    #[test]
    fn sources() {
        assert_eq!(Source::from("a.b"), Source::config("a.b"));
        assert_eq!(Source::from(String::from("a.b")), Source::config("a.b"));
        assert_eq!(Source::config("a.b").to_string(), "config key a.b");
        assert_eq!(
            Source::Yaml("http_proxy").to_string(),
            "homeserver.yaml key http_proxy"
        );
        assert_eq!(Source::config("a.b").name(), Some("a.b"));
        assert_eq!(Source::Env("NO_PROXY".into()).name(), Some("NO_PROXY"));
        assert_eq!(Source::Default.name(), None);
        // The caller may name a setting after its own environment variable.
        let s = ProxySettings::builder(&ProxyEnv::default())
            .ip_range_denylist(["10.0.0.0/8"], Source::Env("MY_DENYLIST".into()))
            .build()
            .unwrap();
        assert_eq!(s.blocklists().general.name(), "MY_DENYLIST");
    }
}
