//! Real connections through squid, tinyproxy and TLS proxies (stunnel), to
//! real origins on loopback.

mod support;

use std::time::Duration;

use egress::{Error, HomeserverYaml, Outbound, ProxyEnv, ProxySettings, Purpose};
use http_body_util::BodyExt;
use support::*;

fn settings(env: &[(&str, &str)], yaml: &str) -> ProxySettings {
    let env = ProxyEnv::from_vars(env.iter().copied());
    let yaml = HomeserverYaml::parse(yaml).unwrap();
    ProxySettings::new(&env, Some(&yaml)).unwrap()
}

fn outbound(env: &[(&str, &str)], yaml: &str) -> Outbound {
    captured_logs();
    let mut builder = Outbound::builder(settings(env, yaml)).add_ca_file(&world().ca.pem_path);
    for i in 0..TEST_NAMES {
        builder = builder.resolve(&test_name(i), &[std::net::Ipv4Addr::LOCALHOST.into()]);
    }
    builder.build().unwrap()
}

async fn get(out: &Outbound, purpose: Purpose, url: &str) -> Result<(u16, String), Error> {
    let response = out.client(purpose).get(url).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[derive(Clone, Copy, Debug)]
enum Proxy {
    Squid,
    Tinyproxy,
}

/// The proxy URL for a combination, with the password percent-encoded.
fn proxy_url(proxy: Proxy, auth: bool, tls: bool) -> String {
    let w = world();
    let port = match (proxy, auth, tls) {
        (Proxy::Squid, false, false) => w.squid.open_port,
        (Proxy::Squid, true, false) => w.squid.auth_port,
        (Proxy::Squid, false, true) => w.tls_squid_open.port,
        (Proxy::Squid, true, true) => w.tls_squid_auth.port,
        (Proxy::Tinyproxy, false, false) => w.tinyproxy_open.port,
        (Proxy::Tinyproxy, true, false) => w.tinyproxy_auth.port,
        (Proxy::Tinyproxy, false, true) => w.tls_tinyproxy_open.port,
        (Proxy::Tinyproxy, true, true) => w.tls_tinyproxy_auth.port,
    };
    let scheme = if tls { "https" } else { "http" };
    let password = match proxy {
        Proxy::Squid => PASSWORD_ENCODED,
        Proxy::Tinyproxy => TINY_PASSWORD,
    };
    let creds = if auth {
        format!("{USER}:{password}@")
    } else {
        String::new()
    };
    format!("{scheme}://{creds}localhost:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_every_target_with_and_without_auth_and_tls() {
    let w = world();
    for proxy in [Proxy::Squid, Proxy::Tinyproxy] {
        for auth in [false, true] {
            for tls in [false, true] {
                for https_target in [false, true] {
                    let url = proxy_url(proxy, auth, tls);
                    let env = [("http_proxy", url.as_str()), ("https_proxy", url.as_str())];
                    let out = outbound(&env, "");
                    let tag = format!("matrix-{proxy:?}-{auth}-{tls}-{https_target}");
                    let origin = if https_target {
                        &w.https_origin
                    } else {
                        &w.http_origin
                    };
                    let target = origin.url("localhost", &format!("/{tag}"));
                    let (status, body) = get(&out, Purpose::Push, &target)
                        .await
                        .unwrap_or_else(|e| panic!("{tag}: {e}"));
                    assert_eq!(status, 200, "{tag}");
                    let scheme = if https_target { "https" } else { "http" };
                    assert_eq!(body, format!("origin {scheme} /{tag}"), "{tag}");
                    let seen = origin.seen(&tag);
                    assert_eq!(seen.len(), 1, "{tag}");
                    assert!(
                        !seen[0].headers.contains_key("proxy-authorization"),
                        "{tag}: origin saw Proxy-Authorization"
                    );
                    if !https_target {
                        // Forwarded: the proxy got the absolute URL.
                        match proxy {
                            Proxy::Squid => {
                                let lines = w.squid.log_lines(&format!("/{tag} "), 1);
                                assert_eq!(lines.len(), 1, "{tag}: squid log");
                                assert!(lines[0].contains(&format!(
                                    "GET http://localhost:{}/{tag}",
                                    w.http_origin.port
                                )));
                                assert_eq!(
                                    lines[0].contains(" alice "),
                                    auth,
                                    "{tag}: {}",
                                    lines[0]
                                );
                            }
                            Proxy::Tinyproxy => {
                                let lines = w.tinyproxy_open_or_auth(auth).log_lines(&format!(
                                    "GET http://localhost:{}/{tag}",
                                    w.http_origin.port
                                ));
                                assert_eq!(lines.len(), 1, "{tag}: tinyproxy log");
                            }
                        }
                    } else if let Proxy::Tinyproxy = proxy {
                        let lines = w
                            .tinyproxy_open_or_auth(auth)
                            .log_lines(&format!("CONNECT localhost:{}", w.https_origin.port));
                        assert!(!lines.is_empty(), "{tag}: tinyproxy saw no CONNECT");
                    }
                }
            }
        }
    }
    assert_no_password_logged();
}

trait Tiny {
    fn tinyproxy_open_or_auth(&self, auth: bool) -> &Tinyproxy;
}
impl Tiny for World {
    fn tinyproxy_open_or_auth(&self, auth: bool) -> &Tinyproxy {
        if auth {
            &self.tinyproxy_auth
        } else {
            &self.tinyproxy_open
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_share_one_tunnel() {
    let w = world();
    let url = proxy_url(Proxy::Squid, true, false);
    let out = outbound(&[("https_proxy", url.as_str())], "");
    let host = test_name(0);
    for i in 0..5 {
        let (status, _) = get(
            &out,
            Purpose::Push,
            &w.https_origin.url(&host, &format!("/keepalive/{i}")),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(out.pool_stats().idle_connections, 1);
    drop(out); // squid logs a CONNECT when the tunnel closes
    let lines = w
        .squid
        .log_lines(&format!("CONNECT {host}:{}", w.https_origin.port), 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("TCP_TUNNEL/200") && lines[0].contains(" alice "),
        "{}",
        lines[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_connections_are_shared_across_origins() {
    let w = world();
    let url = proxy_url(Proxy::Squid, false, false);
    let out = outbound(&[("http_proxy", url.as_str())], "");
    for i in 1..4 {
        let target = w
            .http_origin
            .url(&test_name(i), &format!("/shared-forward/{i}"));
        assert_eq!(get(&out, Purpose::Push, &target).await.unwrap().0, 200);
    }
    assert_eq!(
        out.pool_stats().idle_connections,
        1,
        "one connection to the proxy served three origins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_match_goes_direct() {
    let w = world();
    let url = proxy_url(Proxy::Squid, false, false);
    let host = test_name(5);
    let env = [("https_proxy", url.as_str()), ("no_proxy", host.as_str())];
    let out = outbound(&env, "ip_range_whitelist: ['127.0.0.0/8']\n");
    let target = w.https_origin.url(&host, "/bypass-direct");
    assert_eq!(get(&out, Purpose::Push, &target).await.unwrap().0, 200);
    // Through squid, the answer would have come after squid parsed the CONNECT.
    let connects = w.squid.requests(&format!("CONNECT {host}:"));
    assert_eq!(connects, Vec::<String>::new(), "the proxy saw {host}");
    // Control: the same record holds a request that did go through squid.
    let control_host = test_name(6);
    let control = outbound(&[("https_proxy", url.as_str())], "");
    let target = w.https_origin.url(&control_host, "/bypass-control");
    assert_eq!(get(&control, Purpose::Push, &target).await.unwrap().0, 200);
    let connects = w.squid.requests(&format!("CONNECT {control_host}:"));
    assert_eq!(connects.len(), 1, "squid's record: {connects:?}");
    assert_eq!(w.https_origin.seen("/bypass-direct").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_a_proxy_auth_error() {
    let w = world();
    for (proxy, port) in [
        (Proxy::Squid, w.squid.auth_port),
        (Proxy::Tinyproxy, w.tinyproxy_auth.port),
    ] {
        let url = format!("http://{USER}:{WRONG_PASSWORD}@localhost:{port}");
        let out = outbound(
            &[("https_proxy", url.as_str()), ("http_proxy", url.as_str())],
            "",
        );
        // Forwarded: the proxy's own 407 (or tinyproxy's 401) is an error, not a response.
        let err = get(
            &out,
            Purpose::Push,
            &w.http_origin.url("localhost", "/wrong-password"),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::ProxyAuth {
                    key: "http_proxy",
                    ..
                }
            ),
            "{proxy:?}: {err}"
        );
        assert!(w.http_origin.seen("/wrong-password").is_empty());
        let err = get(
            &out,
            Purpose::Push,
            &w.https_origin.url("localhost", "/wrong-password"),
        )
        .await
        .unwrap_err();
        match &err {
            Error::ProxyAuth {
                status_line,
                scheme,
                key,
                ..
            } => {
                let expected = if let Proxy::Squid = proxy {
                    "407"
                } else {
                    "401"
                };
                assert!(status_line.contains(expected), "{proxy:?}: {status_line}");
                assert_eq!(scheme.as_deref(), Some("Basic"), "{proxy:?}");
                assert_eq!(*key, "https_proxy");
            }
            other => panic!("{proxy:?}: expected ProxyAuth, got {other}"),
        }
        let text = format!("{err} {err:?}");
        assert!(!text.contains(WRONG_PASSWORD), "{text}");
        // The proxy's answer is a typed fact: 407 from squid, 401 from tinyproxy.
        let expected = if let Proxy::Squid = proxy { 407 } else { 401 };
        assert_eq!(err.proxy_status().map(|s| s.as_u16()), Some(expected));
    }
    assert_no_password_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_proxy_certificate_is_dropped_unless_insecure() {
    let w = world();
    let url = format!("https://localhost:{}", w.untrusted_tls_squid.port);
    let target = w.http_origin.url("localhost", "/untrusted-proxy");
    let out = outbound(&[("http_proxy", url.as_str())], "");
    let err = get(&out, Purpose::Push, &target).await.unwrap_err();
    match &err {
        Error::Certificate { is_proxy: true, .. } => {}
        other => panic!("expected a proxy certificate error, got {other}"),
    }
    let out = outbound(
        &[("http_proxy", url.as_str())],
        "use_insecure_ssl_client_just_for_testing_do_not_use: true\n",
    );
    assert_eq!(get(&out, Purpose::Push, &target).await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_down_fails_within_the_connect_timeout() {
    let port = free_port(); // nothing listens
    let url = format!("http://localhost:{port}");
    let out = outbound(&[("https_proxy", url.as_str())], "");
    let started = std::time::Instant::now();
    let err = get(&out, Purpose::Push, "https://t6.test/")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("proxy http://localhost:{port}")),
        "{err}"
    );
    // The I/O error is the source, with its kind; with_causes() shows it.
    let io = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .expect("an io::Error source");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused, "{io}");
    assert!(
        err.with_causes().contains("refused"),
        "{}",
        err.with_causes()
    );
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_destinations_are_refused_with_the_range() {
    let w = world();
    let url = proxy_url(Proxy::Squid, false, false);
    let out = outbound(&[("https_proxy", url.as_str())], "");
    // An IP literal in the blocklist: refused before any connection, though proxied.
    let err = get(
        &out,
        Purpose::Push,
        &w.https_origin.url("127.0.0.1", "/blocked"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.0/8"), "{err}");
    // A name resolving to a blocked address, on a direct route.
    let out = outbound(&[], "");
    let err = get(
        &out,
        Purpose::Push,
        &w.https_origin.url("localhost", "/blocked"),
    )
    .await
    .unwrap_err();
    match &err {
        Error::Blocked { host, blocked } => {
            assert_eq!(host, "localhost");
            assert!(
                blocked.range.to_string() == "127.0.0.0/8"
                    || blocked.range.to_string() == "::1/128",
                "{err}"
            );
        }
        other => panic!("expected Blocked, got {other}"),
    }
    assert!(w.https_origin.seen("/blocked").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_in_tls_through_an_https_proxy() {
    let w = world();
    let url = proxy_url(Proxy::Squid, true, true);
    let out = outbound(&[("https_proxy", url.as_str())], "");
    let host = test_name(7);
    let (status, body) = get(
        &out,
        Purpose::Push,
        &w.https_origin.url(&host, "/tls-in-tls"),
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "origin https /tls-in-tls"));
    drop(out);
    let lines = w.squid.log_lines(&format!("CONNECT {host}:"), 1);
    assert_eq!(lines.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_routed_anew_and_limited() {
    let w = world();
    let url = proxy_url(Proxy::Squid, false, false);
    let out = outbound(
        &[("https_proxy", url.as_str()), ("http_proxy", url.as_str())],
        "",
    );
    let final_url = w.http_origin.url("localhost", "/after-redirect");
    let first = w
        .https_origin
        .url("localhost", &format!("/redirect?to={final_url}"));
    let client = out.client(Purpose::UrlPreview).follow_redirects(10);
    let response = client.get(&first).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"origin http /after-redirect");
    // Off by default.
    let response = out.client(Purpose::UrlPreview).get(&first).await.unwrap();
    assert_eq!(response.status(), 302);
    // A redirect to a blocked literal is refused at that hop.
    let blocked = w
        .https_origin
        .url("localhost", "/redirect?to=http://10.0.0.1/");
    let err = client.get(&blocked).await.unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "{err}");
    // A loop ends after the limit.
    let err = client
        .get(&w.https_origin.url("localhost", "/loop"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TooManyRedirects(10)), "{err}");
    assert_eq!(w.https_origin.seen("/loop").len(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_401_through_a_forwarding_proxy_is_a_response() {
    let w = world();
    for proxy in [Proxy::Squid, Proxy::Tinyproxy] {
        let url = proxy_url(proxy, true, false);
        let out = outbound(&[("http_proxy", url.as_str())], "");
        let target = w.http_origin.url("localhost", "/status/401");
        let (status, body) = get(&out, Purpose::Push, &target)
            .await
            .unwrap_or_else(|e| panic!("{proxy:?}: {e}"));
        assert_eq!((status, body.as_str()), (401, "status 401"), "{proxy:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connector_serves_hyper_utils_legacy_client() {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client as LegacyClient;
    use hyper_util::rt::TokioExecutor;

    let w = world();
    let url = proxy_url(Proxy::Squid, true, false);
    let out = outbound(&[("https_proxy", url.as_str())], "");
    let client: LegacyClient<_, Full<bytes::Bytes>> =
        LegacyClient::builder(TokioExecutor::new()).build(out.connector(Purpose::Push));
    let host = test_name(8);
    for i in 0..3 {
        let uri = w
            .https_origin
            .url(&host, &format!("/legacy/{i}"))
            .parse()
            .unwrap();
        let response = client.get(uri).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("origin https /legacy/{i}"));
    }
    drop(client);
    drop(out);
    // Every request went through a tunnel. (How many: hyper-util's pool may
    // race a new connection against a returning one; egress's own pool is
    // held to exactly one in `keep_alive_requests_share_one_tunnel`.)
    let lines = w.squid.log_lines(&format!("CONNECT {host}:"), 1);
    assert!(!lines.is_empty(), "no CONNECT for {host}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("TCP_TUNNEL/200") && l.contains(" alice ")),
        "{lines:?}"
    );
}

/// What the test servers' cleanup relies on: stopping a server stops the
/// helpers it started too (as squid starts basic_ncsa_auth), not only the
/// process the tests spawned.
#[test]
fn stopping_a_test_server_stops_what_it_started() {
    let dir = temp_dir("stop-server");
    let pid_file = dir.join("helper.pid");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!(
        "sleep 300 & echo $! > {}.tmp && mv {0}.tmp {0}; exec sleep 300",
        pid_file.display()
    ));
    let server = spawn(cmd);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let helper: u32 = loop {
        if let Ok(text) = std::fs::read_to_string(&pid_file) {
            break text.trim().parse().expect("a pid");
        }
        assert!(std::time::Instant::now() < deadline, "no helper pid");
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = server.id();
    assert!(running(pid) && running(helper));
    stop_server(server);
    assert!(!running(pid), "the server outlived stop_server");
    assert!(!running(helper), "its helper outlived stop_server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_without_addresses_is_a_resolve_error() {
    // The override gives the name no address: the resolver's own failure,
    // recognised by its type (not by the text of hyper-util's message).
    let out = Outbound::builder(settings(&[], ""))
        .resolve("nowhere.test", &[])
        .build()
        .unwrap();
    let err = get(&out, Purpose::Oidc, "http://nowhere.test/")
        .await
        .unwrap_err();
    match &err {
        Error::Resolve { host, source } => {
            assert_eq!(host, "nowhere.test");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a resolve error, got {other:?}"),
    }
}
