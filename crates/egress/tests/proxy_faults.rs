//! Faults a real proxy cannot be made to produce, from a small fake proxy
//! (support::FakeProxy, named as such): garbage, bad status lines, split
//! replies, oversized headers, silence, resets, and error statuses.

mod support;

use std::time::{Duration, Instant};

use egress::{Error, HomeserverYaml, Outbound, ProxyEnv, ProxySettings, Purpose, Timeouts};
use http_body_util::BodyExt;
use support::*;

fn outbound_via(port: u16, timeouts: Timeouts) -> Outbound {
    captured_logs();
    let url = format!("http://{USER}:{PASSWORD_ENCODED}@127.0.0.1:{port}");
    let env = ProxyEnv::from_vars([("https_proxy", url.as_str())]);
    let yaml = HomeserverYaml::parse("").unwrap();
    let settings = ProxySettings::new(&env, Some(&yaml)).unwrap();
    Outbound::builder(settings)
        .add_ca_file(&world().ca.pem_path)
        .timeouts(timeouts)
        .build()
        .unwrap()
}

async fn fetch(fault: Fault, timeouts: Timeouts) -> (Result<String, Error>, FakeProxy) {
    let proxy = FakeProxy::start(fault);
    let out = outbound_via(proxy.port, timeouts);
    let url = world().https_origin.url("localhost", "/via-fake-proxy");
    let result = async {
        let response = out.client(Purpose::Push).get(&url).await?;
        let body = response.into_body().collect().await?;
        Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
    }
    .await;
    (result, proxy)
}

fn reply(chunks: &[&[u8]], relay: bool) -> Fault {
    let origin = relay.then_some(world().https_origin.port);
    Fault::Reply(chunks.iter().map(|c| c.to_vec()).collect(), origin)
}

fn quick() -> Timeouts {
    Timeouts::DEFAULT.with_connect_reply(Duration::from_secs(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_request_is_http11_with_host_and_credentials() {
    let (result, proxy) = fetch(reply(&[b"HTTP/1.1 200 OK\r\n\r\n"], true), quick()).await;
    assert_eq!(result.unwrap(), "origin https /via-fake-proxy");
    let request = proxy.requests.lock().unwrap()[0].clone();
    let port = world().https_origin.port;
    assert!(
        request.starts_with(&format!("CONNECT localhost:{port} HTTP/1.1\r\n")),
        "{request}"
    );
    assert!(
        request.contains(&format!("\r\nHost: localhost:{port}\r\n")),
        "{request}"
    );
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    assert!(
        request.contains(&format!("\r\nProxy-Authorization: Basic {basic}\r\n")),
        "{request}"
    );
    assert_eq!(
        world()
            .https_origin
            .seen("/via-fake-proxy")
            .iter()
            .filter(|s| s.headers.contains_key("proxy-authorization"))
            .count(),
        0
    );
    assert_no_password_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_status_line_and_any_2xx_succeed() {
    let (result, _) = fetch(
        reply(
            &[
                b"HTT",
                b"P/1.1 20",
                b"0 Connection est",
                b"ablished\r\n\r",
                b"\n",
            ],
            true,
        ),
        quick(),
    )
    .await;
    assert_eq!(result.unwrap(), "origin https /via-fake-proxy");
    let (result, _) = fetch(
        reply(&[b"HTTP/1.0 204 Fine\r\nX-A: b\r\n\r\n"], true),
        quick(),
    )
    .await;
    assert_eq!(result.unwrap(), "origin https /via-fake-proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replies_are_protocol_errors() {
    for (chunks, needle) in [
        (vec![&b"garbage\r\n\r\n"[..]], "not HTTP"),
        (vec![&b"HTTP/1.1 2000 OK\r\n\r\n"[..]], "not HTTP"),
        (
            vec![&b"HTTP/1.1 200 OK\r\nX: y"[..]],
            "closed the connection in the middle",
        ),
    ] {
        let (result, _) = fetch(reply(&chunks, false), quick()).await;
        match result.unwrap_err() {
            Error::ProxyProtocol { problem, .. } => assert!(problem.contains(needle), "{problem}"),
            other => panic!("expected a protocol error for {chunks:?}, got {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_reply_headers_fail() {
    let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
    while big.len() < 70 * 1024 {
        big.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    // Few enough lines for httparse, too many bytes for us: one long header.
    let mut long = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 70 * 1024));
    for reply_bytes in [big, long] {
        let (result, _) = fetch(Fault::Reply(vec![reply_bytes], None), quick()).await;
        match result.unwrap_err() {
            Error::ProxyProtocol { problem, .. } => {
                assert!(
                    problem.contains("64 KiB") || problem.contains("100 header lines"),
                    "{problem}"
                )
            }
            other => panic!("expected a protocol error, got {other}"),
        }
    }
}

// Bytes glued to the CONNECT reply: a unit test in connect/tunnel.rs (it needs the raw tunnel).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_before_replying_and_silence() {
    let (result, _) = fetch(Fault::Close, quick()).await;
    match result.unwrap_err() {
        Error::ProxyProtocol { problem, .. } => {
            assert!(problem.contains("without replying"), "{problem}")
        }
        other => panic!("expected a protocol error, got {other}"),
    }
    let started = Instant::now();
    let (result, _) = fetch(Fault::Silent, quick()).await;
    let err = result.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("CONNECT"), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_tunnel_is_an_error_not_a_hang() {
    let proxy = FakeProxy::start(Fault::ResetAfter(world().https_origin.port, 100));
    let out = outbound_via(proxy.port, quick());
    let url = world().https_origin.url("localhost", "/reset");
    let started = Instant::now();
    let err = out.client(Purpose::Push).get(&url).await.unwrap_err();
    assert!(
        matches!(err, Error::Tls { .. } | Error::Http { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_are_distinct() {
    let (result, _) = fetch(reply(&[b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Negotiate\r\n\r\n"], false), quick()).await;
    match result.unwrap_err() {
        Error::ProxyAuth {
            status_line,
            scheme,
            ..
        } => {
            assert_eq!(status_line, "HTTP/1.0 407 Proxy Authentication Required");
            assert_eq!(scheme.as_deref(), Some("Negotiate"));
        }
        other => panic!("{other}"),
    }
    let (result, _) = fetch(reply(&[b"HTTP/1.1 403 Forbidden\r\n\r\n"], false), quick()).await;
    assert!(
        matches!(result.unwrap_err(), Error::ProxyForbidden { status_line, .. } if status_line == "HTTP/1.1 403 Forbidden")
    );
    for code in [
        "502 Bad Gateway",
        "503 Service Unavailable",
        "504 Gateway Timeout",
    ] {
        let bytes = format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n");
        let (result, _) = fetch(Fault::Reply(vec![bytes.into_bytes()], None), quick()).await;
        let err = result.unwrap_err();
        assert!(
            matches!(&err, Error::ProxyUnreachable { status_line, .. } if status_line.ends_with(code)),
            "{err}"
        );
        assert!(
            err.to_string()
                .starts_with("the proxy could not reach localhost:"),
            "{err}"
        );
    }
    let (result, _) = fetch(
        reply(&[b"HTTP/1.1 418 I'm a teapot\r\n\r\n"], false),
        quick(),
    )
    .await;
    assert!(matches!(result.unwrap_err(), Error::ProxyStatus { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_body_times_out() {
    // A fake origin (named as such): sends the head and 3 of 100 bytes, then nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let settings = ProxySettings::none();
    let timeouts = Timeouts::DEFAULT.with_body_idle(Duration::from_secs(1));
    let out = Outbound::builder(settings)
        .timeouts(timeouts)
        .build()
        .unwrap();
    // OIDC endpoints have no blocklist: a loopback literal is allowed.
    let response = out
        .client(Purpose::Oidc)
        .get(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    let started = Instant::now();
    let err = response.into_body().collect().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(err.to_string().contains("response body"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
