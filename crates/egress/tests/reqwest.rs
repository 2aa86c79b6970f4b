//! reqwest clients configured by `egress::reqwest::Routing`, through real
//! squid (with basic auth) to real origins on loopback.

mod support;

/// The example's clients, driven here against squid.
#[path = "../examples/homeserver_clients.rs"]
#[allow(dead_code)]
mod homeserver_clients;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use egress::reqwest::Routing;
use egress::{Error, HomeserverYaml, ProxyEnv, ProxySettings, Purpose};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use support::*;

/// reqwest logs through the `log` crate: its records go to the same
/// captured logs as egress's, so the password check covers both.
struct CaptureLog;

impl log::Log for CaptureLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        use std::io::Write as _;
        let mut logs = captured_logs().lock().unwrap();
        let _ = writeln!(
            logs,
            "{} {}: {}",
            record.level(),
            record.target(),
            record.args()
        );
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        captured_logs();
        let _ = log::set_logger(&CaptureLog);
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn settings(env: &[(&str, &str)], yaml: &str) -> Arc<ProxySettings> {
    let env = ProxyEnv::from_vars(env.iter().copied());
    let yaml = HomeserverYaml::parse(yaml).unwrap();
    Arc::new(ProxySettings::new(&env, Some(&yaml)).unwrap())
}

/// rustls with ring, trusting the test CA.
fn tls() -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(world().ca.pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The application's own resolver: the test names are 127.0.0.1, as in
/// squid's hosts file.
struct TestNames;

impl Resolve for TestNames {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            if host.ends_with(".test") {
                let addrs = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0))];
                Ok(Box::new(addrs.into_iter()) as Addrs)
            } else {
                let addrs: Vec<SocketAddr> =
                    tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
                Ok(Box::new(addrs.into_iter()) as Addrs)
            }
        })
    }
}

fn client(routing: &Routing, purpose: Purpose) -> reqwest::Client {
    capture_logs();
    let builder = reqwest::Client::builder().tls_backend_preconfigured(tls());
    routing.configure(purpose, builder).build().unwrap()
}

fn squid_auth() -> String {
    format!(
        "http://{USER}:{PASSWORD_ENCODED}@localhost:{}",
        world().squid.auth_port
    )
}

/// Routing with `HTTP_PROXY` and `HTTPS_PROXY` both set to squid with basic auth.
fn routing_through_squid() -> Routing {
    let proxy = squid_auth();
    let env = [
        ("HTTP_PROXY", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
    ];
    Routing::new(settings(&env, ""))
}

async fn get(client: &reqwest::Client, url: &str) -> Result<(u16, String), reqwest::Error> {
    let response = client.get(url).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_goes_through_the_proxy_with_credentials_that_stay_there() {
    let w = world();
    let routing = routing_through_squid();
    let push = client(&routing, Purpose::Push);
    for origin in [&w.https_origin, &w.http_origin] {
        let tag = format!("rq-push-{}", origin.https);
        let url = origin.url(&test_name(0), &format!("/{tag}"));
        routing.check(Purpose::Push, &url.parse().unwrap()).unwrap();
        let (status, body) = get(&push, &url).await.unwrap();
        assert_eq!(status, 200, "{tag}: {body}");
        assert!(body.ends_with(&format!("/{tag}")), "{body}");
        let seen = origin.seen(&tag);
        assert_eq!(seen.len(), 1);
        assert!(
            !seen[0].headers.contains_key("proxy-authorization"),
            "{tag}: the origin saw Proxy-Authorization"
        );
        // squid's auth port took it (it refuses anyone else): CONNECT for
        // https, the absolute URL for http.
        let expected = if origin.https {
            format!("CONNECT {}:{}", test_name(0), origin.port)
        } else {
            format!("GET http://{}:{}/{tag}", test_name(0), origin.port)
        };
        assert!(
            !w.squid.requests(&expected).is_empty(),
            "{tag}: squid never saw `{expected}`"
        );
    }
    // The forwarded request is in the access log with the user name.
    let line = format!(
        "GET http://{}:{}/rq-push-false",
        test_name(0),
        w.http_origin.port
    );
    let lines = w.squid.log_lines(&line, 1);
    assert!(lines.iter().any(|l| l.contains(" alice ")), "{lines:?}");
    let debug = format!("{routing:?}");
    assert!(debug.contains("alice:***@localhost"), "{debug}");
    assert!(!debug.contains(PASSWORD_ENCODED) && !debug.contains(PASSWORD));
    assert_no_password_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_preview_refuses_a_name_resolving_to_loopback_unless_allowlisted() {
    let w = world();
    // No proxy: the resolver checks every answer. `localhost` comes from the
    // system resolver, the test names from the application's.
    let routing = Routing::new(settings(&[], "")).with_resolver(Arc::new(TestNames));
    let preview = client(&routing, Purpose::UrlPreview);
    for host in ["localhost".to_owned(), test_name(1)] {
        let tag = format!("rq-preview-{host}");
        let url = w.http_origin.url(&host, &format!("/{tag}"));
        // Nothing for `check` to see: the host is a name.
        routing
            .check(Purpose::UrlPreview, &url.parse().unwrap())
            .unwrap();
        let err = get(&preview, &url).await.unwrap_err();
        match routing.classify(&err) {
            Some(Error::Blocked { host: h, blocked }) => {
                assert_eq!(h, host);
                assert_eq!(blocked.range.to_string(), "127.0.0.0/8");
                assert!(blocked.list.starts_with("url_preview_ip_range_blacklist"));
            }
            other => panic!("{host}: expected Blocked, got {other:?} from {err:?}"),
        }
        assert!(
            w.http_origin.seen(&tag).is_empty(),
            "{tag} reached the origin"
        );
    }
    // The allowlist punches a hole.
    let yaml = "url_preview_ip_range_whitelist: ['127.0.0.1']\n";
    let routing = Routing::new(settings(&[], yaml)).with_resolver(Arc::new(TestNames));
    let preview = client(&routing, Purpose::UrlPreview);
    let url = w.https_origin.url(&test_name(1), "/rq-preview-allowed");
    let (status, _) = get(&preview, &url).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(w.https_origin.seen("rq-preview-allowed").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_literal_in_the_blocklist_is_refused_by_check() {
    let w = world();
    let routing = routing_through_squid();
    let url = w.http_origin.url("127.0.0.1", "/rq-literal");
    let err = routing
        .check(Purpose::UrlPreview, &url.parse().unwrap())
        .unwrap_err();
    match &err {
        Error::Refused { url: u, reason } => {
            assert_eq!(u, &url);
            assert!(reason.contains("127.0.0.1 is in 127.0.0.0/8"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    // Another scheme is not a request at all.
    let err = routing
        .check(
            Purpose::UrlPreview,
            &"gopher://example.org/".parse().unwrap(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::BadUrl { .. }), "{err}");
    // The limitation `check` exists for: reqwest alone does not resolve an
    // IP literal, so its resolver cannot refuse it (here it goes through
    // the proxy, which reaches it).
    let preview = client(&routing, Purpose::UrlPreview);
    let (status, _) = get(&preview, &url).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(w.http_origin.seen("rq-literal").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_blocked_literal_is_refused() {
    let w = world();
    let routing = routing_through_squid();
    let preview = client(&routing, Purpose::UrlPreview);
    let blocked = w.http_origin.url("127.0.0.1", "/rq-redirect-target");
    // An allowed origin (a name, through the proxy) redirects to the literal.
    let url = w
        .https_origin
        .url(&test_name(2), &format!("/redirect?to={blocked}"));
    routing
        .check(Purpose::UrlPreview, &url.parse().unwrap())
        .unwrap();
    let err = get(&preview, &url).await.unwrap_err();
    match routing.classify(&err) {
        Some(Error::Refused { url, reason }) => {
            assert_eq!(url, blocked);
            assert!(reason.contains("127.0.0.0/8"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?} from {err:?}"),
    }
    assert!(!w.https_origin.seen("/redirect?to=").is_empty());
    assert!(w.http_origin.seen("rq-redirect-target").is_empty());
    // squid has parsed the first request, never the second.
    assert!(w.squid.requests("rq-redirect-target").is_empty());
    // An allowed hop is followed, through the proxy.
    let next = w.http_origin.url(&test_name(2), "/rq-redirect-allowed");
    let url = w
        .https_origin
        .url(&test_name(2), &format!("/redirect?to={next}"));
    let open = format!("http://localhost:{}", w.squid.open_port);
    let env = [
        ("HTTP_PROXY", open.as_str()),
        ("HTTPS_PROXY", open.as_str()),
    ];
    let open_routing = Routing::new(settings(&env, ""));
    let (status, _) = get(&client(&open_routing, Purpose::UrlPreview), &url)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(w.http_origin.seen("rq-redirect-allowed").len(), 1);
    assert_eq!(w.squid.requests("rq-redirect-allowed").len(), 1);
    // reqwest's limitation (README): it adds Proxy-Authorization to the
    // first request only, so an http:// hop forwarded through a proxy
    // that wants credentials gets the proxy's 407.
    let next = w.http_origin.url(&test_name(2), "/rq-redirect-407");
    let url = w
        .https_origin
        .url(&test_name(2), &format!("/redirect?to={next}"));
    let (status, _) = get(&preview, &url).await.unwrap();
    assert_eq!(status, 407);
    assert!(w.http_origin.seen("rq-redirect-407").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appservices_are_never_proxied() {
    let w = world();
    let routing = routing_through_squid();
    let appservice = client(&routing, Purpose::Appservice);
    for origin in [&w.http_origin, &w.https_origin] {
        let tag = format!("rq-appservice-{}", origin.https);
        let (status, _) = get(&appservice, &origin.url("localhost", &format!("/{tag}")))
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert_eq!(origin.seen(&tag).len(), 1);
        assert!(
            w.squid.requests(&tag).is_empty(),
            "{tag} went through squid"
        );
    }
    // The same request as push goes through squid.
    let push = client(&routing, Purpose::Push);
    let (status, _) = get(
        &push,
        &w.http_origin.url("localhost", "/rq-appservice-push"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(w.squid.requests("rq-appservice-push").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_ignores_http_proxy() {
    let w = world();
    let proxy = squid_auth();
    let env = [
        ("HTTP_PROXY", proxy.as_str()),
        ("HTTPS_PROXY", proxy.as_str()),
    ];
    // The federation blocklist emptied, so that loopback origins are reachable direct.
    let routing = Routing::new(settings(&env, "federation_ip_range_blacklist: []\n"));
    let federation = client(&routing, Purpose::Federation);
    let (status, _) = get(&federation, &w.http_origin.url("localhost", "/rq-fed-http"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(w.http_origin.seen("rq-fed-http").len(), 1);
    assert!(
        w.squid.requests("rq-fed-http").is_empty(),
        "http_proxy was used"
    );
    // https_proxy is.
    let url = w.https_origin.url(&test_name(3), "/rq-fed-https");
    let (status, _) = get(&federation, &url).await.unwrap();
    assert_eq!(status, 200);
    let connect = format!("CONNECT {}:{}", test_name(3), w.https_origin.port);
    assert!(!w.squid.requests(&connect).is_empty());
}

/// tuwunel #554: the proxy is on a private address (here loopback, by the
/// name `localhost`), in the very range the blocklist refuses for targets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_on_a_private_address_is_reachable_while_the_range_stays_blocked() {
    let w = world();
    let proxy = squid_auth();
    let env = [("HTTPS_PROXY", proxy.as_str()), ("NO_PROXY", "t4.test")];
    let routing = Routing::new(settings(&env, "")).with_resolver(Arc::new(TestNames));
    let push = client(&routing, Purpose::Push);
    // Through the proxy at localhost (127.0.0.1, in 127.0.0.0/8).
    let (status, _) = get(&push, &w.https_origin.url(&test_name(5), "/rq-554-proxied"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(w.https_origin.seen("rq-554-proxied").len(), 1);
    // Direct (no_proxy) to a name in the same range: refused.
    let err = get(&push, &w.https_origin.url("t4.test", "/rq-554-direct"))
        .await
        .unwrap_err();
    assert!(
        matches!(routing.classify(&err), Some(Error::Blocked { ref host, .. }) if host == "t4.test"),
        "{err:?}"
    );
    assert!(w.https_origin.seen("rq-554-direct").is_empty());
    // And the range as an IP literal, through the proxy or not.
    let literal = w.https_origin.url("127.0.0.1", "/rq-554-literal");
    assert!(routing
        .check(Purpose::Push, &literal.parse().unwrap())
        .is_err());
    assert_no_password_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_failures_are_classified() {
    let w = world();
    // A wrong password: squid answers CONNECT with 407.
    let proxy = format!(
        "http://{USER}:{WRONG_PASSWORD}@localhost:{}",
        w.squid.auth_port
    );
    let routing = Routing::new(settings(&[("HTTPS_PROXY", proxy.as_str())], ""));
    let push = client(&routing, Purpose::Push);
    let err = get(&push, &w.https_origin.url(&test_name(6), "/rq-407"))
        .await
        .unwrap_err();
    match routing.classify(&err) {
        Some(e @ Error::ProxyAuth { .. }) => {
            assert_eq!(
                e.proxy_status(),
                Some(http::StatusCode::PROXY_AUTHENTICATION_REQUIRED)
            );
            let text = e.with_causes();
            assert!(text.contains("alice:***@localhost"), "{text}");
            assert!(!text.contains(WRONG_PASSWORD), "{text}");
        }
        other => panic!("expected ProxyAuth, got {other:?} from {err:?}"),
    }
    // squid refuses CONNECT to a name it cannot resolve: another status.
    let routing = Routing::new(settings(&[("HTTPS_PROXY", squid_auth().as_str())], ""));
    let push = client(&routing, Purpose::Push);
    let err = get(&push, "https://no-such-name.invalid/rq-502")
        .await
        .unwrap_err();
    assert!(
        matches!(routing.classify(&err), Some(Error::ProxyProtocol { .. })),
        "{err:?}"
    );
    // Nothing listens on the proxy's port.
    let port = free_port();
    let dead = format!("http://localhost:{port}");
    let routing = Routing::new(settings(&[("HTTPS_PROXY", dead.as_str())], ""));
    let push = client(&routing, Purpose::Push);
    let err = get(&push, &w.https_origin.url(&test_name(6), "/rq-dead"))
        .await
        .unwrap_err();
    match routing.classify(&err) {
        Some(Error::Connect { target, source }) => {
            assert_eq!(target, format!("proxy http://localhost:{port}"));
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("expected Connect, got {other:?} from {err:?}"),
    }
    // A plain HTTP error is not egress's to name.
    let routing = Routing::new(settings(&[], ""));
    let oidc = client(&routing, Purpose::Oidc);
    let response = oidc
        .get(w.http_origin.url("localhost", "/status/500"))
        .send()
        .await
        .unwrap();
    let err = response.error_for_status().unwrap_err();
    assert!(routing.classify(&err).is_none());
    assert_no_password_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_homeserver_clients_go_through_squid() {
    use homeserver_clients::{Clients, CLIENTS};
    let w = world();
    capture_logs();
    let proxy = squid_auth();
    let env = ProxyEnv::from_vars([("HTTPS_PROXY", proxy.as_str())]);
    // Once from homeserver.yaml, once from the builder.
    let yaml = "ip_range_whitelist: []\n";
    for (round, yaml) in [Some(yaml), None].into_iter().enumerate() {
        let settings = homeserver_clients::settings(&env, yaml).unwrap();
        let routing = Routing::new(Arc::new(settings)).with_resolver(Arc::new(TestNames));
        let clients = Clients::new(routing, || {
            reqwest::Client::builder().tls_backend_preconfigured(tls())
        })
        .unwrap();
        for (i, (name, purpose)) in CLIENTS.iter().enumerate() {
            let host = test_name(10 + 10 * round + i);
            let tag = format!("ex-{round}-{name}");
            let url = w.https_origin.url(&host, &format!("/{tag}"));
            let (status, body) = clients
                .fetch(name, &url)
                .await
                .unwrap_or_else(|e| panic!("{tag}: {e}"));
            assert_eq!(status, 200, "{tag}: {body}");
            assert_eq!(w.https_origin.seen(&tag).len(), 1, "{tag}");
            let proxied = !w
                .squid
                .requests(&format!("CONNECT {host}:{}", w.https_origin.port))
                .is_empty();
            assert_eq!(proxied, *purpose != Purpose::Appservice, "{tag}");
        }
        // The pusher refuses a loopback literal before sending anything.
        let err = clients
            .fetch("pusher", &w.https_origin.url("127.0.0.1", "/ex-literal"))
            .await
            .unwrap_err();
        assert!(
            err.contains("refused") && err.contains("127.0.0.0/8"),
            "{err}"
        );
        assert!(w.https_origin.seen("ex-literal").is_empty());
    }
    assert_no_password_logged();
}
