//! Properties of the decision, for any settings and any URL (proptest):
//! it never panics, its explanation names the setting that decided, and a
//! refused route never becomes a connection.

use std::net::TcpListener;

use egress::{Error, Outbound, ProxyEnv, ProxySettings, Purpose, Reason, Route};
use proptest::prelude::*;

/// Settings from the environment and from a caller's own keys.
#[derive(Clone, Debug)]
struct Case {
    env: Vec<(&'static str, String)>,
    denylist: Option<Vec<&'static str>>,
    allowlist: Vec<&'static str>,
    config_proxy: Option<Option<&'static str>>,
    purpose: Purpose,
    url: String,
}

fn proxy_value() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "http://proxy.example:3128",
        "https://alice:s3cret@proxy.example:8443",
        "proxy.example",
        "http://[::1]:3128",
        "http://10.9.9.9",
        "",
    ])
    .prop_map(str::to_owned)
}

fn no_proxy_value() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "internal.example",
            ".example.org",
            "*",
            "10.0.0.0/8",
            "127.0.0.1",
            "[::1]",
            "host.example:8448",
            "EXAMPLE.COM.",
            " spaced.example ",
            "10.0.0.0/33",
        ]),
        0..4,
    )
    .prop_map(|entries| entries.join(","))
}

fn url() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec!["http://", "https://", "HTTPS://", "ftp://", ""]);
    let host = prop::sample::select(vec![
        "matrix.org",
        "internal.example",
        "a.example.org",
        "host.example",
        "example.com",
        "127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "8.8.8.8",
        "[::1]",
        "[::ffff:10.0.0.1]",
        "[2001:db8::1]",
        "0.0.0.0",
    ]);
    let port = prop::option::of(prop::sample::select(vec![80u16, 443, 8448, 3128]));
    (scheme, host, port).prop_map(|(s, h, p)| match p {
        Some(p) => format!("{s}{h}:{p}/path?q=1"),
        None => format!("{s}{h}/"),
    })
}

fn case() -> impl Strategy<Value = Case> {
    let env = (
        prop::option::of(prop::sample::select(vec!["HTTP_PROXY", "http_proxy"])),
        proxy_value(),
        prop::option::of(prop::sample::select(vec!["HTTPS_PROXY", "https_proxy"])),
        proxy_value(),
        prop::option::of(prop::sample::select(vec!["NO_PROXY", "no_proxy"])),
        no_proxy_value(),
    )
        .prop_map(|(hk, hv, sk, sv, nk, nv)| {
            let mut env = Vec::new();
            if let Some(k) = hk {
                env.push((k, hv));
            }
            if let Some(k) = sk {
                env.push((k, sv));
            }
            if let Some(k) = nk {
                env.push((k, nv));
            }
            env
        });
    let ranges = vec![
        "10.0.0.0/8",
        "127.0.0.0/8",
        "192.168.0.0/16",
        "::1/128",
        "8.8.8.0/24",
    ];
    (
        env,
        prop::option::of(prop::sample::subsequence(ranges.clone(), 0..3)),
        prop::sample::subsequence(ranges, 0..2),
        prop::option::of(prop::option::of(prop::sample::select(vec![
            "http://configured.example:3128",
            "",
        ]))),
        prop::sample::select(Purpose::ALL.to_vec()),
        url(),
    )
        .prop_map(
            |(env, denylist, allowlist, config_proxy, purpose, url)| Case {
                env,
                denylist,
                allowlist,
                config_proxy,
                purpose,
                url,
            },
        )
}

fn settings(case: &Case) -> ProxySettings {
    let env = ProxyEnv::from_vars(case.env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut builder = ProxySettings::builder(&env);
    if let Some(list) = &case.denylist {
        builder = builder.ip_range_denylist(list, "net.denylist");
    }
    if !case.allowlist.is_empty() {
        builder = builder.ip_range_allowlist(&case.allowlist, "net.allowlist");
    }
    if let Some(proxy) = case.config_proxy {
        builder = builder.https_proxy(proxy, "net.https_proxy");
    }
    // The generated values are all valid: a failure here is a bug.
    builder.build().expect("valid settings")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_decision_explains_itself(case in case()) {
        let settings = settings(&case);
        let Ok(uri) = case.url.parse::<http::Uri>() else {
            // Not a URI at all: nothing to decide.
            return Ok(());
        };
        let route = Route::decide(&settings, case.purpose, &uri);
        let explained = route.explain();
        prop_assert!(!explained.is_empty());
        match route.reason() {
            Reason::ProxySet { key, source, .. } => {
                prop_assert!(route.proxy().is_some());
                prop_assert!(explained.contains(key), "{explained}");
                prop_assert!(explained.contains(&source.to_string()), "{explained}");
                // Credentials never show.
                prop_assert!(!explained.contains("s3cret"), "{explained}");
            }
            Reason::BlockedAddress(blocked) => {
                prop_assert_eq!(route.kind(), "refused");
                prop_assert!(explained.contains(blocked.list.as_ref()), "{explained}");
            }
            Reason::Bypassed { source, .. } => {
                prop_assert_eq!(route.kind(), "direct");
                prop_assert!(explained.contains("no_proxy"), "{explained}");
                prop_assert!(explained.contains(&source.to_string()), "{explained}");
            }
            _ => {}
        }
        // Never-proxied purposes never get a proxy, whatever the settings.
        if case.purpose.proxy_use() == egress::ProxyUse::Never {
            prop_assert!(route.proxy().is_none(), "{explained}");
        }
    }
}

/// A refused route never becomes a connection: the connector and the client
/// fail with `Refused` before any TCP attempt, even when something listens
/// at the refused address.
#[test]
fn refused_routes_never_connect() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(200));
    let strategy = (case(), prop::sample::select(vec!["http", "https"]));
    let refused = std::cell::Cell::new(0);
    runner
        .run(&strategy, |(case, scheme)| {
            let settings = settings(&case);
            let url = format!("{scheme}://127.0.0.1:{port}/");
            let uri: http::Uri = url.parse().unwrap();
            let route = Route::decide(&settings, case.purpose, &uri);
            if route.kind() != "refused" {
                return Ok(());
            }
            refused.set(refused.get() + 1);
            let outbound = Outbound::new(settings.clone()).unwrap();
            let (by_connector, by_client) = runtime.block_on(async {
                let connector = outbound.connector(case.purpose);
                (
                    connector.connect_uri(&uri).await.map(|_| ()),
                    outbound.client(case.purpose).get(&url).await.map(|_| ()),
                )
            });
            prop_assert!(
                matches!(by_connector, Err(Error::Refused { .. })),
                "{by_connector:?}"
            );
            prop_assert!(
                matches!(by_client, Err(Error::Refused { .. })),
                "{by_client:?}"
            );
            // connect() returns only after the handshake: a connection would be queued now.
            prop_assert!(
                listener.accept().is_err(),
                "a refused route reached the listener"
            );
            Ok(())
        })
        .unwrap();
    let refused = refused.get();
    assert!(refused > 10, "only {refused} refused cases were generated");
}
