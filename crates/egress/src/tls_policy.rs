//! TLS settings: the troubleshooting switch for regular HTTPS, and the
//! federation keys.

use std::path::PathBuf;

use crate::homeserver::{HomeserverYaml, Key};
use crate::ConfigError;

/// The TLS keys of homeserver.yaml.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    /// `use_insecure_ssl_client_just_for_testing_do_not_use`: no certificate
    /// checks for non-federation HTTPS, to the proxy and to origins.
    pub insecure_regular: bool,
    /// `federation_verify_certificates` (default true).
    pub federation_verify: bool,
    /// `federation_certificate_verification_whitelist`: server names whose
    /// certificates are not checked (globs; `*` crosses dots; any case).
    pub federation_whitelist: Vec<String>,
    /// `federation_custom_ca_list`: CA files that replace the system trust
    /// store for federation.
    pub federation_custom_ca_list: Option<Vec<PathBuf>>,
}

impl Default for TlsPolicy {
    fn default() -> TlsPolicy {
        TlsPolicy {
            insecure_regular: false,
            federation_verify: true,
            federation_whitelist: Vec::new(),
            federation_custom_ca_list: None,
        }
    }
}

impl TlsPolicy {
    /// Reads the TLS keys; absent or `null` keys keep their defaults.
    pub fn from_yaml(yaml: &HomeserverYaml) -> Result<TlsPolicy, ConfigError> {
        let mut policy = TlsPolicy::default();
        if let Key::Value(b) =
            yaml.boolean("use_insecure_ssl_client_just_for_testing_do_not_use")?
        {
            policy.insecure_regular = b;
        }
        if let Key::Value(b) = yaml.boolean("federation_verify_certificates")? {
            policy.federation_verify = b;
        }
        const WHITELIST: &str = "federation_certificate_verification_whitelist";
        if let Key::Value(globs) = yaml.strings(WHITELIST)? {
            if let Some(bad) = globs.iter().find(|g| !g.is_ascii()) {
                return Err(ConfigError::Invalid {
                    key: WHITELIST,
                    problem: format!("`{bad}` is not ASCII: write the punycode (xn--) form"),
                });
            }
            policy.federation_whitelist = globs.iter().map(|g| g.to_string()).collect();
        }
        const CA_LIST: &str = "federation_custom_ca_list";
        if let Key::Value(files) = yaml.strings(CA_LIST)? {
            if files.is_empty() {
                return Err(ConfigError::Invalid {
                    key: CA_LIST,
                    problem: "the list is empty: remove the key, or list CA files".to_owned(),
                });
            }
            policy.federation_custom_ca_list = Some(files.iter().map(PathBuf::from).collect());
        }
        Ok(policy)
    }

    /// Whether a federation certificate for `server_name` is verified:
    /// `federation_verify_certificates`, unless a whitelist glob matches.
    pub fn federation_verifies(&self, server_name: &str) -> bool {
        self.federation_verify
            && !self
                .federation_whitelist
                .iter()
                .any(|glob| glob_matches(glob.as_bytes(), server_name.as_bytes()))
    }
}

/// Case-insensitive glob over the whole text: `*` is any run of characters
/// (dots too), `?` is one character.
fn glob_matches(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, t));
                g += 1;
            }
            Some(&c) if c == b'?' || c.eq_ignore_ascii_case(&text[t]) => {
                g += 1;
                t += 1;
            }
            _ => match star {
                Some((sg, st)) => {
                    g = sg + 1;
                    t = st + 1;
                    star = Some((sg, st + 1));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let m = |g: &str, t: &str| glob_matches(g.as_bytes(), t.as_bytes());
        assert!(m("*.example.com", "a.example.com"));
        assert!(m("*.example.com", "a.b.example.com"));
        assert!(!m("*.example.com", "example.com"));
        assert!(m("*", "anything.at.all"));
        assert!(m("EXAMPLE.com", "example.COM"));
        assert!(m("ex?mple.com", "exemple.com"));
        assert!(!m("example.com", "example.com.evil"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
    }

    #[test]
    fn reads_keys() {
        let y = HomeserverYaml::parse(
            "use_insecure_ssl_client_just_for_testing_do_not_use: true\n\
             federation_verify_certificates: true\n\
             federation_certificate_verification_whitelist: ['*.test']\n\
             federation_custom_ca_list: [/etc/ca.pem]\n",
        )
        .unwrap();
        let p = TlsPolicy::from_yaml(&y).unwrap();
        assert!(p.insecure_regular);
        assert!(p.federation_verifies("other.org"));
        assert!(!p.federation_verifies("hs1.TEST"));
        assert_eq!(
            p.federation_custom_ca_list,
            Some(vec![PathBuf::from("/etc/ca.pem")])
        );

        let y = HomeserverYaml::parse("federation_verify_certificates: false\n").unwrap();
        assert!(!TlsPolicy::from_yaml(&y)
            .unwrap()
            .federation_verifies("x.org"));

        let y = HomeserverYaml::parse("federation_custom_ca_list: []\n").unwrap();
        assert!(TlsPolicy::from_yaml(&y).is_err());
        let y = HomeserverYaml::parse("federation_verify_certificates: 'no'\n").unwrap();
        assert!(TlsPolicy::from_yaml(&y).is_err());
    }
}
