//! The homeserver.yaml keys egress reads, with type checks that name the key.
//! One user of [`ProxySettings::builder`](crate::ProxySettings::builder): see
//! [`HomeserverYaml::configure`].
//! Needs the `yaml` feature (on by default).

use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use crate::settings::{ProxySettingsBuilder, Source};
use crate::ConfigError;

/// A homeserver.yaml, parsed. Only the keys egress knows are ever read;
/// every other key is left alone. `Debug` lists the keys, never the values
/// (they hold passwords and secrets).
#[derive(Clone, Default)]
pub struct HomeserverYaml {
    map: Mapping,
}

impl std::fmt::Debug for HomeserverYaml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.map.keys().filter_map(Value::as_str);
        f.debug_struct("HomeserverYaml")
            .field("keys", &keys.collect::<Vec<_>>())
            .finish()
    }
}

/// A key's state: absent, present with `null`, or present with a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key<T> {
    /// The key is not in the file.
    Absent,
    /// The key is present with `null` (or `~`, or nothing after the colon).
    Null,
    /// The key holds this value.
    Value(T),
}

impl HomeserverYaml {
    /// Parses YAML text. An empty document is an empty configuration.
    pub fn parse(text: &str) -> Result<HomeserverYaml, ConfigError> {
        Self::parse_at(text, Path::new("homeserver.yaml"))
    }

    /// Reads and parses a file.
    pub fn read(path: &Path) -> Result<HomeserverYaml, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse_at(&text, path)
    }

    fn parse_at(text: &str, path: &Path) -> Result<HomeserverYaml, ConfigError> {
        let yaml_error = |problem: String| ConfigError::Yaml {
            path: PathBuf::from(path),
            problem,
        };
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(e.to_string()))?;
        match value {
            Value::Mapping(map) => Ok(HomeserverYaml { map }),
            Value::Null => Ok(HomeserverYaml::default()),
            other => Err(yaml_error(format!(
                "the top level must be a mapping of keys, not {}",
                kind(&other)
            ))),
        }
    }

    fn get(&self, key: &str) -> Key<&Value> {
        match self.map.get(key) {
            None => Key::Absent,
            Some(Value::Null) => Key::Null,
            Some(value) => Key::Value(value),
        }
    }

    /// A string key such as `http_proxy`.
    pub fn string(&self, key: &'static str) -> Result<Key<&str>, ConfigError> {
        match self.get(key) {
            Key::Absent => Ok(Key::Absent),
            Key::Null => Ok(Key::Null),
            Key::Value(Value::String(s)) => Ok(Key::Value(s)),
            Key::Value(other) => Err(wrong_type(key, "a string", other)),
        }
    }

    /// A boolean key such as `federation_verify_certificates`.
    pub fn boolean(&self, key: &'static str) -> Result<Key<bool>, ConfigError> {
        match self.get(key) {
            Key::Absent => Ok(Key::Absent),
            Key::Null => Ok(Key::Null),
            Key::Value(Value::Bool(b)) => Ok(Key::Value(*b)),
            Key::Value(other) => Err(wrong_type(key, "true or false", other)),
        }
    }

    /// A list-of-strings key such as `no_proxy_hosts`.
    pub fn strings(&self, key: &'static str) -> Result<Key<Vec<&str>>, ConfigError> {
        let expected = "a list of strings";
        match self.get(key) {
            Key::Absent => Ok(Key::Absent),
            Key::Null => Ok(Key::Null),
            Key::Value(Value::Sequence(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(wrong_type(key, expected, other)),
                })
                .collect::<Result<_, _>>()
                .map(Key::Value),
            Key::Value(other) => Err(wrong_type(key, expected, other)),
        }
    }

    /// A list of strings that may be spelled two ways (`ip_range_blacklist`
    /// and `ip_range_blocklist`). Returns the key used and its state.
    pub fn strings_either(
        &self,
        old: &'static str,
        new: &'static str,
    ) -> Result<(&'static str, Key<Vec<&str>>), ConfigError> {
        match (self.map.contains_key(old), self.map.contains_key(new)) {
            (true, true) => Err(ConfigError::BothSpellings(old, new)),
            (false, true) => Ok((new, self.strings(new)?)),
            _ => Ok((old, self.strings(old)?)),
        }
    }
}

/// The homeserver.yaml keys of the blocklists, with their new spellings.
const DENYLIST: (&str, &str) = ("ip_range_blacklist", "ip_range_blocklist");
const ALLOWLIST: (&str, &str) = ("ip_range_whitelist", "ip_range_allowlist");
const FEDERATION_DENYLIST: &str = "federation_ip_range_blacklist";
const URL_PREVIEW_DENYLIST: (&str, &str) = (
    "url_preview_ip_range_blacklist",
    "url_preview_ip_range_blocklist",
);
const URL_PREVIEW_ALLOWLIST: (&str, &str) = (
    "url_preview_ip_range_whitelist",
    "url_preview_ip_range_allowlist",
);

impl HomeserverYaml {
    /// Sets on `builder` every key of this file that egress reads, named
    /// `homeserver.yaml key …` in errors and reasons; absent keys are left
    /// unset. A `null` proxy key means no proxy and hides the environment's;
    /// a `null` list is an empty list (so `ip_range_blacklist: null` blocks
    /// only `0.0.0.0` and `::`, as in Synapse); a `null` TLS key keeps its
    /// default. Only the types are checked here; values are checked by
    /// [`ProxySettingsBuilder::build`].
    ///
    /// [`ProxySettings::new`](crate::ProxySettings::new) is this on
    /// [`ProxySettings::builder`](crate::ProxySettings::builder).
    pub fn configure(
        &self,
        builder: ProxySettingsBuilder,
    ) -> Result<ProxySettingsBuilder, ConfigError> {
        let mut b = builder;
        for key in ["http_proxy", "https_proxy"] {
            let url = match self.string(key)? {
                Key::Absent => continue,
                Key::Null => None,
                Key::Value(url) => Some(url),
            };
            b = match key {
                "http_proxy" => b.http_proxy(url, Source::Yaml(key)),
                _ => b.https_proxy(url, Source::Yaml(key)),
            };
        }
        if let Some(hosts) = self.list("no_proxy_hosts")? {
            b = b.no_proxy(hosts, Source::Yaml("no_proxy_hosts"));
        }
        if let Some((key, list)) = self.list_either(DENYLIST)? {
            b = b.ip_range_denylist(list, Source::Yaml(key));
        }
        if let Some((key, list)) = self.list_either(ALLOWLIST)? {
            b = b.ip_range_allowlist(list, Source::Yaml(key));
        }
        if let Some(list) = self.list(FEDERATION_DENYLIST)? {
            b = b.federation_ip_range_denylist(list, Source::Yaml(FEDERATION_DENYLIST));
        }
        if let Some((key, list)) = self.list_either(URL_PREVIEW_DENYLIST)? {
            b = b.url_preview_ip_range_denylist(list, Source::Yaml(key));
        }
        if let Some((key, list)) = self.list_either(URL_PREVIEW_ALLOWLIST)? {
            b = b.url_preview_ip_range_allowlist(list, Source::Yaml(key));
        }
        self.configure_tls(b)
    }

    /// The TLS keys alone; absent or `null` keys keep their defaults.
    pub(crate) fn configure_tls(
        &self,
        builder: ProxySettingsBuilder,
    ) -> Result<ProxySettingsBuilder, ConfigError> {
        let mut b = builder;
        const INSECURE: &str = "use_insecure_ssl_client_just_for_testing_do_not_use";
        if let Key::Value(insecure) = self.boolean(INSECURE)? {
            b = b.danger_accept_invalid_certs(insecure, Source::Yaml(INSECURE));
        }
        const VERIFY: &str = "federation_verify_certificates";
        if let Key::Value(verify) = self.boolean(VERIFY)? {
            b = b.federation_verify_certificates(verify, Source::Yaml(VERIFY));
        }
        const WHITELIST: &str = "federation_certificate_verification_whitelist";
        if let Key::Value(globs) = self.strings(WHITELIST)? {
            b = b.federation_certificate_whitelist(globs, Source::Yaml(WHITELIST));
        }
        const CA_LIST: &str = "federation_custom_ca_list";
        if let Key::Value(files) = self.strings(CA_LIST)? {
            b = b.federation_custom_ca_list(files, Source::Yaml(CA_LIST));
        }
        Ok(b)
    }

    /// A list key, `null` read as empty; `None` when absent.
    fn list(&self, key: &'static str) -> Result<Option<Vec<&str>>, ConfigError> {
        Ok(match self.strings(key)? {
            Key::Absent => None,
            Key::Null => Some(Vec::new()),
            Key::Value(list) => Some(list),
        })
    }

    /// A list key with two spellings, `null` read as empty; `None` when absent.
    fn list_either(
        &self,
        (old, new): (&'static str, &'static str),
    ) -> Result<Option<(&'static str, Vec<&str>)>, ConfigError> {
        let (key, list) = self.strings_either(old, new)?;
        Ok(match list {
            Key::Absent => None,
            Key::Null => Some((key, Vec::new())),
            Key::Value(list) => Some((key, list)),
        })
    }
}

fn wrong_type(key: &'static str, expected: &'static str, found: &Value) -> ConfigError {
    ConfigError::WrongType {
        key,
        expected,
        found: kind(found),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_in_their_three_states() {
        let y = HomeserverYaml::parse(
            "http_proxy: http://p:1\nhttps_proxy: null\nno_proxy_hosts: []\n",
        )
        .unwrap();
        assert_eq!(y.string("http_proxy").unwrap(), Key::Value("http://p:1"));
        assert_eq!(y.string("https_proxy").unwrap(), Key::Null);
        assert_eq!(y.string("other").unwrap(), Key::Absent);
        assert_eq!(y.strings("no_proxy_hosts").unwrap(), Key::Value(vec![]));
    }

    #[test]
    fn wrong_types_name_the_key() {
        let y = HomeserverYaml::parse(
            "http_proxy: 3128\nno_proxy_hosts: a.org\nlist: [a, 1]\nflag: yes-please\n",
        )
        .unwrap();
        let e = y.string("http_proxy").unwrap_err().to_string();
        assert_eq!(
            e,
            "homeserver.yaml key `http_proxy` must be a string, not a number"
        );
        let e = y.strings("no_proxy_hosts").unwrap_err().to_string();
        assert!(
            e.contains("`no_proxy_hosts` must be a list of strings, not a string"),
            "{e}"
        );
        assert!(y.strings("list").is_err());
        assert!(y.boolean("flag").is_err());
    }

    #[test]
    fn both_spellings_are_an_error() {
        let y = HomeserverYaml::parse("ip_range_blacklist: []\nip_range_blocklist: []\n").unwrap();
        assert!(matches!(
            y.strings_either("ip_range_blacklist", "ip_range_blocklist"),
            Err(ConfigError::BothSpellings(..))
        ));
        let y = HomeserverYaml::parse("ip_range_blocklist: ['10.0.0.0/8']\n").unwrap();
        let (key, value) = y
            .strings_either("ip_range_blacklist", "ip_range_blocklist")
            .unwrap();
        assert_eq!(key, "ip_range_blocklist");
        assert_eq!(value, Key::Value(vec!["10.0.0.0/8"]));
    }

    #[test]
    fn debug_shows_keys_not_values() {
        let y =
            HomeserverYaml::parse("https_proxy: http://u:hunter2@p:1\nmacaroon_secret_key: s3\n")
                .unwrap();
        let text = format!("{y:?}");
        assert!(
            text.contains("https_proxy") && !text.contains("hunter2") && !text.contains("s3\""),
            "{text}"
        );
    }

    #[test]
    fn bad_documents_are_errors() {
        assert!(matches!(
            HomeserverYaml::parse("- a\n- b\n"),
            Err(ConfigError::Yaml { .. })
        ));
        assert!(matches!(
            HomeserverYaml::parse("a: [\n"),
            Err(ConfigError::Yaml { .. })
        ));
        assert!(HomeserverYaml::parse("").is_ok());
        let e = HomeserverYaml::read(Path::new("/nonexistent/homeserver.yaml")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/homeserver.yaml"),
            "{e}"
        );
    }
}
