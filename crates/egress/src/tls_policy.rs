//! TLS settings: the troubleshooting switch for regular HTTPS, and the
//! federation keys. Set through [`crate::ProxySettings::builder`].

use std::path::PathBuf;

use crate::settings::Source;

#[cfg(feature = "yaml")]
use crate::{ConfigError, HomeserverYaml, ProxyEnv, ProxySettings};

/// The TLS settings (homeserver.yaml's TLS keys, or the builder's TLS setters).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Where `federation_custom_ca_list` was set, for errors about its files.
    ca_list_source: Source,
}

impl Default for TlsPolicy {
    fn default() -> TlsPolicy {
        TlsPolicy {
            insecure_regular: false,
            federation_verify: true,
            federation_whitelist: Vec::new(),
            federation_custom_ca_list: None,
            ca_list_source: Source::Default,
        }
    }
}

impl TlsPolicy {
    /// Reads the TLS keys of homeserver.yaml; absent or `null` keys keep
    /// their defaults. The same checks as [`crate::ProxySettings::builder`]'s
    /// TLS setters.
    #[cfg(feature = "yaml")]
    pub fn from_yaml(yaml: &HomeserverYaml) -> Result<TlsPolicy, ConfigError> {
        yaml.configure_tls(ProxySettings::builder(&ProxyEnv::default()))?
            .tls()
    }

    /// Where [`federation_custom_ca_list`](TlsPolicy::federation_custom_ca_list)
    /// was set (the caller's key), so that an error about one of its files
    /// names it; [`Source::Default`] when unset.
    pub fn federation_custom_ca_list_source(&self) -> &Source {
        &self.ca_list_source
    }

    pub(crate) fn set_ca_list_source(&mut self, source: Source) {
        self.ca_list_source = source;
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
    #[cfg(feature = "yaml")]
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
        assert_eq!(
            p.federation_custom_ca_list_source(),
            &Source::Yaml("federation_custom_ca_list")
        );
        assert_eq!(
            TlsPolicy::default().federation_custom_ca_list_source(),
            &Source::Default
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
