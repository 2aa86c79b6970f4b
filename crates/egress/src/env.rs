//! Proxy settings from an environment, with Python's
//! `urllib.request.getproxies_environment` rules, which Synapse uses.
//!
//! The environment is passed in as name/value pairs; the library never reads
//! the process environment itself, so tests can run in parallel and callers
//! decide what counts.

/// A proxy-related variable that was found: its exact name and its value.
/// `Debug` masks any password in the value.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The variable's name as spelled in the environment, e.g. `HTTPS_PROXY`.
    pub name: String,
    /// Its value (may hold a password: never log it unmasked).
    pub value: String,
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvVar")
            .field("name", &self.name)
            .field("value", &crate::proxy_url::mask_password(&self.value))
            .finish()
    }
}

/// The effective `http`, `https` and `no` proxy variables of an environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    /// The variable that gives `http_proxy`, if any.
    pub http: Option<EnvVar>,
    /// The variable that gives `https_proxy`, if any.
    pub https: Option<EnvVar>,
    /// The variable that gives `no_proxy`, if any.
    pub no: Option<EnvVar>,
}

impl ProxyEnv {
    /// Reads the proxy variables from `vars`, in the order given (the order
    /// of `environ`, as `std::env::vars_os` yields it):
    ///
    /// 1. every variable whose lower-cased name ends in `_proxy` and whose
    ///    value is non-empty counts, under its lower-cased name;
    /// 2. if `REQUEST_METHOD` is set (a CGI request: "httpoxy"), the `http`
    ///    entry found so far is dropped;
    /// 3. then every variable whose name ends in lower-case `_proxy` wins:
    ///    its value replaces the entry, and an empty value removes it.
    ///
    /// So `http_proxy` wins over `HTTP_PROXY`, `http_proxy=""` cancels
    /// `HTTP_PROXY`, and only `http`, `https` and `no` are kept: `ALL_PROXY`
    /// is ignored, and there is no fallback from one to another.
    pub fn from_vars<I, K, V>(vars: I) -> ProxyEnv
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: Vec<(K, V)> = vars.into_iter().collect();
        let mut env = ProxyEnv::default();
        let mut cgi = false;
        for (name, value) in &vars {
            let (name, value) = (name.as_ref(), value.as_ref());
            cgi |= name == "REQUEST_METHOD";
            if !value.is_empty() && ends_with_proxy(name, true) {
                env.set(name, Some(value));
            }
        }
        if cgi {
            env.http = None;
        }
        for (name, value) in &vars {
            let (name, value) = (name.as_ref(), value.as_ref());
            if ends_with_proxy(name, false) {
                env.set(name, (!value.is_empty()).then_some(value));
            }
        }
        env
    }

    fn set(&mut self, name: &str, value: Option<&str>) {
        let prefix = name[..name.len() - "_proxy".len()].to_ascii_lowercase();
        let slot = match prefix.as_str() {
            "http" => &mut self.http,
            "https" => &mut self.https,
            "no" => &mut self.no,
            _ => return,
        };
        *slot = value.map(|value| EnvVar {
            name: name.to_owned(),
            value: value.to_owned(),
        });
    }
}

fn ends_with_proxy(name: &str, any_case: bool) -> bool {
    let Some(start) = name.len().checked_sub("_proxy".len()) else {
        return false;
    };
    let Some(suffix) = name.get(start..) else {
        return false;
    };
    if any_case {
        suffix.eq_ignore_ascii_case("_proxy")
    } else {
        suffix == "_proxy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        ProxyEnv::from_vars(vars.iter().copied())
    }

    fn value(var: &Option<EnvVar>) -> Option<(&str, &str)> {
        var.as_ref().map(|v| (v.name.as_str(), v.value.as_str()))
    }

    #[test]
    fn upper_case_alone_counts() {
        let e = env(&[
            ("HTTP_PROXY", "http://a:1"),
            ("HTTPS_PROXY", "http://b:2"),
            ("NO_PROXY", "x.org"),
        ]);
        assert_eq!(value(&e.http), Some(("HTTP_PROXY", "http://a:1")));
        assert_eq!(value(&e.https), Some(("HTTPS_PROXY", "http://b:2")));
        assert_eq!(value(&e.no), Some(("NO_PROXY", "x.org")));
    }

    #[test]
    fn lower_case_wins_in_either_order() {
        for vars in [
            [("https_proxy", "lower:1"), ("HTTPS_PROXY", "upper:1")],
            [("HTTPS_PROXY", "upper:1"), ("https_proxy", "lower:1")],
        ] {
            let e = env(&vars);
            assert_eq!(value(&e.https), Some(("https_proxy", "lower:1")));
        }
    }

    #[test]
    fn empty_lower_case_cancels_upper_case() {
        for vars in [
            [("http_proxy", ""), ("HTTP_PROXY", "upper:1")],
            [("HTTP_PROXY", "upper:1"), ("http_proxy", "")],
        ] {
            assert_eq!(env(&vars).http, None);
        }
        // An empty upper-case variable is simply not counted.
        let e = env(&[("NO_PROXY", ""), ("HTTPS_PROXY", "p:1")]);
        assert_eq!(e.no, None);
        assert!(e.https.is_some());
    }

    #[test]
    fn request_method_drops_upper_case_http_proxy_only() {
        let e = env(&[
            ("REQUEST_METHOD", "GET"),
            ("HTTP_PROXY", "evil:1"),
            ("HTTPS_PROXY", "ok:1"),
        ]);
        assert_eq!(e.http, None);
        assert!(e.https.is_some());
        let e = env(&[
            ("HTTP_PROXY", "evil:1"),
            ("REQUEST_METHOD", "GET"),
            ("http_proxy", "good:1"),
        ]);
        assert_eq!(value(&e.http), Some(("http_proxy", "good:1")));
    }

    #[test]
    fn all_proxy_and_others_are_ignored() {
        let e = env(&[
            ("ALL_PROXY", "all:1"),
            ("all_proxy", "all:1"),
            ("FTP_PROXY", "ftp:1"),
            ("PROXY", "p:1"),
            ("_proxy", "x"),
        ]);
        assert_eq!(e, ProxyEnv::default());
    }

    #[test]
    fn mixed_case_names_count_only_in_the_first_pass() {
        let e = env(&[("Https_Proxy", "mixed:1")]);
        assert_eq!(value(&e.https), Some(("Https_Proxy", "mixed:1")));
        // A name ending in lower-case `_proxy` overrides in the second pass.
        let e = env(&[("Https_Proxy", "mixed:1"), ("HTTPS_proxy", "")]);
        assert_eq!(e.https, None);
    }

    #[test]
    fn debug_masks_passwords() {
        let e = env(&[("HTTPS_PROXY", "http://bob:hunter2@p:1")]);
        let text = format!("{e:?}");
        assert!(
            !text.contains("hunter2") && text.contains("bob:***@p:1"),
            "{text}"
        );
    }

    #[test]
    fn non_ascii_names_do_not_panic() {
        let e = env(&[("é_proxy", "x"), ("ü", "y"), ("xxxé", "z")]);
        assert_eq!(e, ProxyEnv::default());
    }
}
