//! Connection types: what a homeserver connects out for, and the rules each follows.

use std::fmt;
use std::str::FromStr;

/// What an outbound connection is for. Each purpose knows whether it may
/// use the proxy, which IP blocklist guards it and which TLS policy applies
/// (`forward_proxy.md`, "Connection types"). `non_exhaustive`: Synapse
/// adds connection types now and then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Purpose {
    /// Push gateway notifications.
    Push,
    /// The URL preview spider (redirects followed).
    UrlPreview,
    /// Phone-home statistics.
    PhoneHome,
    /// reCAPTCHA validation.
    Recaptcha,
    /// CAS ticket validation.
    Cas,
    /// OpenID Connect: discovery, JWKS, token and userinfo.
    Oidc,
    /// Outbound federation requests.
    Federation,
    /// "Checking public key revocation": the 3PID invite key validity check.
    PubkeyValidity,
    /// Fetching public keys of other servers (and notaries).
    KeyFetch,
    /// Downloading remote media (and following its CDN redirects).
    Media,
    /// Application services: never proxied.
    Appservice,
    /// Identity servers: never proxied.
    IdentityServer,
    /// Connections between workers: never proxied.
    Replication,
    /// Workers to Redis: not HTTP, always direct.
    Redis,
}

/// Which proxy settings a purpose may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyUse {
    /// `http_proxy` for `http://` targets and `https_proxy` for `https://` ones.
    ByScheme,
    /// Only `https_proxy` (federation, key fetching), whatever the target scheme.
    HttpsProxyOnly,
    /// Never proxied.
    Never,
}

/// Which IP blocklist guards a purpose's direct connections and IP literals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlocklistKind {
    /// `ip_range_blacklist` with `ip_range_whitelist`.
    General,
    /// `federation_ip_range_blacklist` when set, else the general list.
    Federation,
    /// `url_preview_ip_range_blacklist` with `url_preview_ip_range_whitelist`.
    UrlPreview,
}

/// Which certificate rules apply to a purpose's TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsKind {
    /// System trust store; `use_insecure_ssl_client_just_for_testing_do_not_use`
    /// turns verification off.
    Regular,
    /// `federation_verify_certificates`, `federation_certificate_verification_whitelist`
    /// and `federation_custom_ca_list`.
    Federation,
    /// Not TLS over HTTP (Redis).
    NotHttp,
}

impl Purpose {
    /// Every purpose, in the order of the user document.
    pub const ALL: [Purpose; 14] = [
        Purpose::Push,
        Purpose::UrlPreview,
        Purpose::PhoneHome,
        Purpose::Recaptcha,
        Purpose::Cas,
        Purpose::Oidc,
        Purpose::Federation,
        Purpose::PubkeyValidity,
        Purpose::KeyFetch,
        Purpose::Media,
        Purpose::Appservice,
        Purpose::IdentityServer,
        Purpose::Replication,
        Purpose::Redis,
    ];

    /// The snake_case name used by the CLI and JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Purpose::Push => "push",
            Purpose::UrlPreview => "url_preview",
            Purpose::PhoneHome => "phone_home",
            Purpose::Recaptcha => "recaptcha",
            Purpose::Cas => "cas",
            Purpose::Oidc => "oidc",
            Purpose::Federation => "federation",
            Purpose::PubkeyValidity => "pubkey_validity",
            Purpose::KeyFetch => "key_fetch",
            Purpose::Media => "media",
            Purpose::Appservice => "appservice",
            Purpose::IdentityServer => "identity_server",
            Purpose::Replication => "replication",
            Purpose::Redis => "redis",
        }
    }

    /// What the purpose is, in the user document's words.
    pub fn description(self) -> &'static str {
        match self {
            Purpose::Push => "push gateway notifications",
            Purpose::UrlPreview => "URL previews",
            Purpose::PhoneHome => "phone-home stats",
            Purpose::Recaptcha => "reCAPTCHA validation",
            Purpose::Cas => "CAS auth validation",
            Purpose::Oidc => "OpenID Connect",
            Purpose::Federation => "outbound federation",
            Purpose::PubkeyValidity => "checking public key revocation",
            Purpose::KeyFetch => "fetching public keys of other servers",
            Purpose::Media => "downloading remote media",
            Purpose::Appservice => "application services",
            Purpose::IdentityServer => "identity servers",
            Purpose::Replication => "connections between workers",
            Purpose::Redis => "connections from workers to Redis",
        }
    }

    /// Whether and how this purpose uses the proxy settings.
    pub fn proxy_use(self) -> ProxyUse {
        match self {
            Purpose::Federation | Purpose::KeyFetch => ProxyUse::HttpsProxyOnly,
            Purpose::Appservice
            | Purpose::IdentityServer
            | Purpose::Replication
            | Purpose::Redis => ProxyUse::Never,
            _ => ProxyUse::ByScheme,
        }
    }

    /// The blocklist that guards direct connections and IP-literal URLs, if any.
    /// Admin-configured endpoints (OIDC, CAS, reCAPTCHA, phone-home) and
    /// internal ones (application services, workers) have none.
    pub fn blocklist(self) -> Option<BlocklistKind> {
        match self {
            Purpose::Push | Purpose::PubkeyValidity => Some(BlocklistKind::General),
            Purpose::UrlPreview => Some(BlocklistKind::UrlPreview),
            Purpose::Federation | Purpose::KeyFetch | Purpose::Media | Purpose::IdentityServer => {
                Some(BlocklistKind::Federation)
            }
            Purpose::PhoneHome
            | Purpose::Recaptcha
            | Purpose::Cas
            | Purpose::Oidc
            | Purpose::Appservice
            | Purpose::Replication
            | Purpose::Redis => None,
        }
    }

    /// The TLS policy. Media uses the federation policy for the Matrix request;
    /// a CDN redirect it follows is a new hop with the regular policy.
    pub fn tls(self) -> TlsKind {
        match self {
            Purpose::Federation | Purpose::KeyFetch | Purpose::Media => TlsKind::Federation,
            Purpose::Redis => TlsKind::NotHttp,
            _ => TlsKind::Regular,
        }
    }

    /// False only for Redis, which is not HTTP.
    pub fn is_http(self) -> bool {
        self != Purpose::Redis
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a purpose.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown purpose `{0}`; expected one of: push, url_preview, phone_home, recaptcha, cas, oidc, federation, pubkey_validity, key_fetch, media, appservice, identity_server, replication, redis")]
pub struct UnknownPurpose(pub String);

impl FromStr for Purpose {
    type Err = UnknownPurpose;

    /// Accepts the snake_case name, with `-` for `_` and any case.
    fn from_str(s: &str) -> Result<Purpose, UnknownPurpose> {
        let wanted = s.trim().to_ascii_lowercase().replace('-', "_");
        Purpose::ALL
            .into_iter()
            .find(|p| p.name() == wanted)
            .ok_or_else(|| UnknownPurpose(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Purpose::ALL {
            assert_eq!(p.name().parse::<Purpose>().unwrap(), p);
        }
        assert_eq!(
            "URL-Preview".parse::<Purpose>().unwrap(),
            Purpose::UrlPreview
        );
        assert!("socks".parse::<Purpose>().is_err());
    }

    #[test]
    fn table_of_the_user_document() {
        use BlocklistKind::*;
        use ProxyUse::*;
        let expected = [
            (Purpose::Push, ByScheme, Some(General), TlsKind::Regular),
            (
                Purpose::UrlPreview,
                ByScheme,
                Some(UrlPreview),
                TlsKind::Regular,
            ),
            (Purpose::PhoneHome, ByScheme, None, TlsKind::Regular),
            (Purpose::Recaptcha, ByScheme, None, TlsKind::Regular),
            (Purpose::Cas, ByScheme, None, TlsKind::Regular),
            (Purpose::Oidc, ByScheme, None, TlsKind::Regular),
            (
                Purpose::Federation,
                HttpsProxyOnly,
                Some(Federation),
                TlsKind::Federation,
            ),
            (
                Purpose::PubkeyValidity,
                ByScheme,
                Some(General),
                TlsKind::Regular,
            ),
            (
                Purpose::KeyFetch,
                HttpsProxyOnly,
                Some(Federation),
                TlsKind::Federation,
            ),
            (
                Purpose::Media,
                ByScheme,
                Some(Federation),
                TlsKind::Federation,
            ),
            (Purpose::Appservice, Never, None, TlsKind::Regular),
            (
                Purpose::IdentityServer,
                Never,
                Some(Federation),
                TlsKind::Regular,
            ),
            (Purpose::Replication, Never, None, TlsKind::Regular),
            (Purpose::Redis, Never, None, TlsKind::NotHttp),
        ];
        assert_eq!(expected.len(), Purpose::ALL.len());
        for (p, proxy, blocklist, tls) in expected {
            assert_eq!(p.proxy_use(), proxy, "{p}");
            assert_eq!(p.blocklist(), blocklist, "{p}");
            assert_eq!(p.tls(), tls, "{p}");
        }
        assert!(!Purpose::Redis.is_http());
    }
}
