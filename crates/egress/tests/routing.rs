//! The routing decision for every connection type (SPEC §4–5), with no network.

use egress::{HomeserverYaml, ProxyEnv, ProxySettings, Purpose, Route, Scheme};
use http::Uri;

const HTTP_PROXY: &str = "http://alice:apw@hproxy.example:3128";
const HTTPS_PROXY: &str = "https://bob:bpw@sproxy.example:8443";

fn settings(env: &[(&str, &str)], yaml: &str) -> ProxySettings {
    let env = ProxyEnv::from_vars(env.iter().copied());
    let yaml = HomeserverYaml::parse(yaml).unwrap();
    ProxySettings::new(&env, Some(&yaml)).unwrap()
}

fn both_proxies() -> ProxySettings {
    settings(
        &[
            ("HTTP_PROXY", HTTP_PROXY),
            ("HTTPS_PROXY", HTTPS_PROXY),
            ("NO_PROXY", "internal.example,10.1.0.0/16,[fd00::1]:8448"),
        ],
        "",
    )
}

/// (route kind, mode, proxy as displayed) for a purpose and URL.
fn decide(
    s: &ProxySettings,
    purpose: Purpose,
    url: &str,
) -> (&'static str, Option<&'static str>, Option<String>) {
    let uri: Uri = url.parse().unwrap();
    let route = Route::decide(s, purpose, &uri);
    (
        route.kind(),
        route.mode(),
        route.proxy().map(|p| p.to_string()),
    )
}

const HTTPS_SHOWN: &str = "https://bob:***@sproxy.example:8443";
const HTTP_SHOWN: &str = "http://alice:***@hproxy.example:3128";

#[test]
fn proxied_purposes_use_the_proxy_of_the_target_scheme() {
    let s = both_proxies();
    for purpose in [
        Purpose::Push,
        Purpose::UrlPreview,
        Purpose::PhoneHome,
        Purpose::Recaptcha,
        Purpose::Cas,
        Purpose::Oidc,
        Purpose::PubkeyValidity,
        Purpose::Media,
    ] {
        assert_eq!(
            decide(&s, purpose, "https://origin.example/path"),
            ("proxy", Some("connect"), Some(HTTPS_SHOWN.into())),
            "{purpose} https"
        );
        assert_eq!(
            decide(&s, purpose, "http://origin.example/path"),
            ("proxy", Some("forward"), Some(HTTP_SHOWN.into())),
            "{purpose} http"
        );
    }
}

#[test]
fn federation_and_key_fetch_use_https_proxy_only() {
    let s = both_proxies();
    for purpose in [Purpose::Federation, Purpose::KeyFetch] {
        assert_eq!(
            decide(
                &s,
                purpose,
                "https://matrix.example:8448/_matrix/key/v2/server"
            ),
            ("proxy", Some("connect"), Some(HTTPS_SHOWN.into())),
            "{purpose}"
        );
        let (kind, mode, proxy) = decide(&s, purpose, "http://matrix.example/");
        assert_eq!(
            (kind, mode, proxy),
            ("direct", None, None),
            "{purpose}: http_proxy is never used"
        );
    }
    // With only http_proxy set, federation is direct.
    let s = settings(&[("HTTP_PROXY", HTTP_PROXY)], "");
    assert_eq!(
        decide(&s, Purpose::Federation, "https://matrix.example:8448/").0,
        "direct"
    );
}

#[test]
fn never_proxied_purposes_are_direct() {
    let s = both_proxies();
    for purpose in [
        Purpose::Appservice,
        Purpose::IdentityServer,
        Purpose::Replication,
        Purpose::Redis,
    ] {
        for url in ["https://origin.example/", "http://origin.example/"] {
            assert_eq!(
                decide(&s, purpose, url),
                ("direct", None, None),
                "{purpose} {url}"
            );
        }
    }
    let uri: Uri = "https://bridge.example/".parse().unwrap();
    let route = Route::decide(&s, Purpose::Appservice, &uri);
    assert_eq!(
        route.reason().to_string(),
        "application services never use the proxy"
    );
}

#[test]
fn redis_is_not_http_and_always_direct() {
    let s = both_proxies();
    for url in [
        "redis://10.0.0.5:6379",
        "https://10.0.0.5/",
        "http://127.0.0.1:6379",
    ] {
        let uri: Uri = url.parse().unwrap();
        let route = Route::decide(&s, Purpose::Redis, &uri);
        assert_eq!(route.kind(), "direct", "{url}");
        assert!(!route.blocklist_applies());
        assert!(route.reason().to_string().contains("redis is not HTTP"));
    }
}

#[test]
fn no_scheme_fallback_between_proxies() {
    let s = settings(&[("HTTPS_PROXY", HTTPS_PROXY)], "");
    assert_eq!(
        decide(&s, Purpose::Push, "http://origin.example/").0,
        "direct"
    );
    assert_eq!(
        decide(&s, Purpose::Push, "https://origin.example/").0,
        "proxy"
    );
    let s = settings(&[("HTTP_PROXY", HTTP_PROXY)], "");
    assert_eq!(
        decide(&s, Purpose::Push, "https://origin.example/").0,
        "direct"
    );
    assert_eq!(
        decide(&s, Purpose::Push, "http://origin.example/").0,
        "proxy"
    );
    let s = settings(&[("ALL_PROXY", HTTP_PROXY)], "");
    assert_eq!(
        decide(&s, Purpose::Push, "http://origin.example/").0,
        "direct"
    );
}

#[test]
fn no_proxy_matches_send_direct_with_the_blocklist() {
    let s = both_proxies();
    for (url, entry) in [
        ("https://internal.example/", "internal.example"),
        ("https://a.internal.example/", "internal.example"),
        ("http://10.1.2.3/", "10.1.0.0/16"),
        ("https://[fd00::1]:8448/", "[fd00::1]:8448"),
    ] {
        let uri: Uri = url.parse().unwrap();
        // pubkey_validity: a purpose whose blocklist does not block 10.1/16 after allowlisting below.
        let route = Route::decide(&s, Purpose::Oidc, &uri);
        assert_eq!(route.kind(), "direct", "{url}");
        let reason = route.reason().to_string();
        assert!(
            reason.contains(&format!("no_proxy entry `{entry}`")),
            "{url}: {reason}"
        );
        assert!(reason.contains("environment variable NO_PROXY"), "{reason}");
    }
    let uri: Uri = "https://a.internal.example/".parse().unwrap();
    let route = Route::decide(&s, Purpose::Push, &uri);
    assert!(route.blocklist_applies());
    assert!(route
        .explain()
        .contains("checked against ip_range_blacklist"));
    // The port-limited entry does not match another port.
    assert_eq!(decide(&s, Purpose::Oidc, "https://[fd00::1]/").0, "proxy");
    assert_eq!(
        decide(&s, Purpose::Oidc, "https://xinternal.example/").0,
        "proxy"
    );
}

#[test]
fn star_bypasses_everything() {
    let s = settings(&[("HTTPS_PROXY", HTTPS_PROXY), ("no_proxy", "*")], "");
    assert_eq!(
        decide(&s, Purpose::Push, "https://anything.example/").0,
        "direct"
    );
    assert_eq!(
        decide(&s, Purpose::Federation, "https://anything.example:8448/").0,
        "direct"
    );
}

#[test]
fn blocked_ip_literals_are_refused_even_when_proxied() {
    let s = both_proxies();
    for (purpose, url) in [
        (Purpose::Push, "https://127.0.0.1/"),
        (Purpose::Push, "http://[::ffff:127.0.0.1]/"),
        (Purpose::UrlPreview, "http://192.168.1.1/"),
        (Purpose::Federation, "https://[::1]:8448/"),
        (Purpose::KeyFetch, "https://10.0.0.1:8448/"),
        (Purpose::Media, "https://169.254.169.254/"),
        (Purpose::PubkeyValidity, "https://[2002:7f00:1::]/"),
        (Purpose::IdentityServer, "https://10.0.0.1/"),
        // A no_proxy match does not save a blocked literal either.
        (Purpose::Push, "http://10.1.2.3/"),
    ] {
        let uri: Uri = url.parse().unwrap();
        let route = Route::decide(&s, purpose, &uri);
        assert_eq!(route.kind(), "refused", "{purpose} {url}");
        let reason = route.reason().to_string();
        assert!(reason.contains(" is in "), "{reason}");
    }
    let uri: Uri = "https://127.0.0.1/".parse().unwrap();
    assert_eq!(
        Route::decide(&s, Purpose::Push, &uri).reason().to_string(),
        "the URL's host 127.0.0.1 is in 127.0.0.0/8 of ip_range_blacklist (default); refused even through a proxy"
    );
    // Purposes without a blocklist go to internal addresses.
    for purpose in [
        Purpose::PhoneHome,
        Purpose::Recaptcha,
        Purpose::Cas,
        Purpose::Oidc,
        Purpose::Appservice,
        Purpose::Replication,
    ] {
        assert_ne!(
            decide(&s, purpose, "https://127.0.0.1/").0,
            "refused",
            "{purpose}"
        );
    }
    // A public literal is proxied.
    assert_eq!(decide(&s, Purpose::Push, "https://8.8.8.8/").0, "proxy");
}

#[test]
fn blocklist_settings_change_refusals() {
    let env = [("HTTPS_PROXY", HTTPS_PROXY)];
    let s = settings(&env, "ip_range_whitelist: ['127.0.0.0/8']\n");
    assert_eq!(decide(&s, Purpose::Push, "https://127.0.0.1/").0, "proxy");
    assert_eq!(
        decide(&s, Purpose::Federation, "https://127.0.0.1:8448/").0,
        "proxy"
    );
    assert_eq!(
        decide(&s, Purpose::UrlPreview, "https://127.0.0.1/").0,
        "refused"
    );

    let s = settings(&env, "federation_ip_range_blacklist: []\n");
    assert_eq!(
        decide(&s, Purpose::Federation, "https://127.0.0.1:8448/").0,
        "proxy"
    );
    assert_eq!(decide(&s, Purpose::Media, "https://10.0.0.1/").0, "proxy");
    assert_eq!(decide(&s, Purpose::Push, "https://127.0.0.1/").0, "refused");
    assert_eq!(
        decide(&s, Purpose::Federation, "https://0.0.0.0:8448/").0,
        "refused"
    );

    let s = settings(&env, "url_preview_ip_range_blacklist: ['8.8.8.0/24']\n");
    assert_eq!(
        decide(&s, Purpose::UrlPreview, "https://8.8.8.8/").0,
        "refused"
    );
    assert_eq!(
        decide(&s, Purpose::UrlPreview, "https://127.0.0.1/").0,
        "proxy"
    );
}

#[test]
fn yaml_null_turns_a_proxy_off() {
    let s = settings(&[("HTTPS_PROXY", HTTPS_PROXY)], "https_proxy: null\n");
    let uri: Uri = "https://origin.example/".parse().unwrap();
    let route = Route::decide(&s, Purpose::Push, &uri);
    assert_eq!(route.kind(), "direct");
    assert_eq!(
        route.reason().to_string(),
        "https_proxy is empty or null in homeserver.yaml key https_proxy"
    );
}

#[test]
fn reasons_name_the_setting() {
    let s = settings(
        &[("https_proxy", HTTPS_PROXY)],
        "http_proxy: 'http://yaml.example:1'\n",
    );
    let uri: Uri = "https://origin.example/".parse().unwrap();
    let route = Route::decide(&s, Purpose::Push, &uri);
    assert_eq!(
        route.explain(),
        "through proxy https://bob:***@sproxy.example:8443 (CONNECT tunnel): https_proxy is set by \
         environment variable https_proxy and no no_proxy entry matches origin.example"
    );
    let uri: Uri = "http://origin.example/".parse().unwrap();
    let route = Route::decide(&s, Purpose::Push, &uri);
    assert!(route
        .explain()
        .contains("(absolute-form request): http_proxy is set by homeserver.yaml key http_proxy"));
}

#[test]
fn urls_that_cannot_be_routed_are_refused() {
    let s = both_proxies();
    for url in ["ftp://origin.example/", "/relative/path", "socks5://x:1"] {
        let uri: Uri = url.parse().unwrap();
        assert_eq!(
            Route::decide(&s, Purpose::Push, &uri).kind(),
            "refused",
            "{url}"
        );
    }
}

#[test]
fn federation_targets_route_by_host_and_port() {
    let s = both_proxies();
    let route = Route::for_target(
        &s,
        Purpose::Federation,
        Scheme::Https,
        "backend.matrix.example",
        8448,
    );
    assert_eq!(route.mode(), Some("connect"));
    let route = Route::for_target(&s, Purpose::Federation, Scheme::Https, "fd00::1", 8448);
    assert_eq!(
        route.kind(),
        "refused",
        "fd00::/7 is in the default federation list"
    );
    let s = settings(
        &[
            ("HTTPS_PROXY", HTTPS_PROXY),
            ("NO_PROXY", "srv-target.example"),
        ],
        "",
    );
    let route = Route::for_target(
        &s,
        Purpose::Federation,
        Scheme::Https,
        "srv-target.example",
        8448,
    );
    assert_eq!(route.kind(), "direct");
    assert!(route.blocklist_applies());
}

#[test]
fn nothing_configured_means_direct_everywhere() {
    let s = ProxySettings::none();
    for purpose in Purpose::ALL {
        for url in ["https://matrix.org/", "http://example.com/"] {
            assert_eq!(decide(&s, purpose, url).0, "direct", "{purpose} {url}");
        }
    }
}

#[test]
fn debug_output_never_shows_passwords() {
    let s = both_proxies();
    let text = format!("{s:?}");
    assert!(!text.contains("apw") && !text.contains("bpw"), "{text}");
    let uri: Uri = "https://origin.example/".parse().unwrap();
    let route = Route::decide(&s, Purpose::Push, &uri);
    let text = format!("{route:?} {route}");
    assert!(!text.contains("bpw"), "{text}");
    // The clients and their builder show the settings, masked.
    let builder = egress::Outbound::builder(s.clone());
    let text = format!("{builder:?}");
    assert!(
        text.contains("***") && !text.contains("apw") && !text.contains("bpw"),
        "{text}"
    );
    let outbound = builder.build().unwrap();
    let text = format!("{outbound:?} {:?}", outbound.client(Purpose::Push));
    assert!(
        text.contains("***") && !text.contains("apw") && !text.contains("bpw"),
        "{text}"
    );
}
