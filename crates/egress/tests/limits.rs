//! Limits that keep a long-running server healthy: idle connections and
//! pool keys are dropped after the idle timeout, and each purpose's connect
//! limit reaches the TCP attempt itself.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use egress::{
    Error, HomeserverYaml, Outbound, ProxyEnv, ProxySettings, Purpose, TimeoutStep, Timeouts,
};
use http_body_util::BodyExt;
use support::Origin;

fn settings(yaml: &str) -> ProxySettings {
    let yaml = HomeserverYaml::parse(yaml).unwrap();
    ProxySettings::new(&ProxyEnv::default(), Some(&yaml)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_their_keys_are_reaped() {
    const ORIGINS: usize = 1_000;
    let idle = Duration::from_secs(3);
    let origin = Origin::start(None);
    let names: Vec<String> = (0..ORIGINS).map(|i| format!("o{i}.pool.test")).collect();
    let mut builder = Outbound::builder(settings("")).idle_timeout(idle);
    for name in &names {
        builder = builder.resolve(name, &[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    }
    let out = builder.build().unwrap();
    // OpenID Connect has no blocklist: 127.0.0.1 is reachable directly.
    let client = out.client(Purpose::Oidc);
    let started = Instant::now();
    for name in &names {
        let response = client.get(&origin.url(name, "/pooled")).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
    let stats = out.pool_stats();
    if started.elapsed() < idle {
        // Every origin is its own route: one idle connection under each key.
        assert_eq!((stats.idle_connections, stats.keys), (ORIGINS, ORIGINS));
    }
    // Nothing else uses the pool now: the reaper alone must empty it.
    let deadline = Instant::now() + idle * 3;
    loop {
        let stats = out.pool_stats();
        if stats.idle_connections == 0 && stats.keys == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?} the pool still holds {stats:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It is not emptied early: a fresh connection stays for the idle time.
    let response = client.get(&origin.url(&names[0], "/again")).await.unwrap();
    response.into_body().collect().await.unwrap();
    tokio::time::sleep(idle / 3).await;
    assert_eq!(out.pool_stats().idle_connections, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connections_are_counted_until_they_end() {
    let origin = Origin::start(None);
    let out = Outbound::builder(settings("")).build().unwrap();
    let client = out.client(Purpose::Oidc);
    let url = origin.url("127.0.0.1", "/busy");
    // Two responses whose bodies are not read yet: two busy connections.
    let first = client.get(&url).await.unwrap();
    let second = client.get(&url).await.unwrap();
    let stats = out.pool_stats();
    assert_eq!((stats.busy_connections, stats.idle_connections), (2, 0));
    // One read to the end goes back to the pool: idle, not busy.
    first.into_body().collect().await.unwrap();
    let stats = out.pool_stats();
    assert_eq!((stats.busy_connections, stats.idle_connections), (1, 1));
    // One dropped before its end is closed: it stops counting once its
    // connection has ended (within a scheduler turn or two).
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = out.pool_stats();
        if stats.busy_connections == 0 {
            assert_eq!(stats.idle_connections, 1);
            break;
        }
        assert!(Instant::now() < deadline, "still busy: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The fake for a fault no real server produces on demand: an origin that
/// answers the first request on each connection (keep-alive) and closes the
/// connection, unanswered, when the next request on it arrives, the race a
/// server's keep-alive timeout makes: with a FIN, or with a reset (`reset`).
/// Records `(connection, request line)`.
async fn closing_origin(reset: bool) -> (u16, Arc<Mutex<Vec<(usize, String)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            connections += 1;
            let (id, record) = (connections, record.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for answered in 0.. {
                    // One request: its head, then its Content-Length body.
                    let (line, need) = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            let line = head.lines().next().unwrap().to_uppercase();
                            break (line, end + 4 + len);
                        }
                        let mut chunk = [0u8; 4096];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < need {
                        let mut chunk = [0u8; 4096];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..need);
                    record.lock().unwrap().push((id, line));
                    if answered > 0 {
                        if reset {
                            tcp.set_zero_linger().unwrap();
                        }
                        return; // closed, unanswered
                    }
                    let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tcp.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_closed_between_requests_is_replaced_for_a_get_not_for_a_post() {
    for reset in [false, true] {
        let (port, seen) = closing_origin(reset).await;
        let out = Outbound::builder(settings("")).build().unwrap();
        let client = out.client(Purpose::Oidc);
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        let body = |r: http::Response<egress::Body>| async {
            r.into_body().collect().await.unwrap().to_bytes()
        };

        let first = client.get(&url("/first")).await.unwrap();
        assert_eq!(&body(first).await[..], b"ok");
        assert_eq!(out.pool_stats().idle_connections, 1);

        // The pooled connection is closed (or reset) when the GET arrives on
        // it: the GET is sent again on a new connection, and succeeds.
        let again = client.get(&url("/again")).await;
        let again = again.unwrap_or_else(|e| panic!("reset {reset}: {e:?}"));
        assert_eq!(&body(again).await[..], b"ok");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (1, "GET /FIRST HTTP/1.1".to_owned()),
                (1, "GET /AGAIN HTTP/1.1".to_owned()),
                (2, "GET /AGAIN HTTP/1.1".to_owned()),
            ],
            "reset {reset}"
        );

        // A POST is not resent: written once, on the pooled connection, which
        // closes; the caller gets the error, and nothing is sent again.
        let post = http::Request::post(url("/post"))
            .body(egress::RequestBody::from("data"))
            .unwrap();
        let err = client.send(post).await.unwrap_err();
        assert!(matches!(err, Error::Http { .. }), "reset {reset}: {err:?}");
        let posts: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, line)| line.starts_with("POST"))
            .cloned()
            .collect();
        assert_eq!(
            posts,
            [(2, "POST /POST HTTP/1.1".to_owned())],
            "reset {reset}"
        );
    }
}

/// A listener whose accept queue is full: Linux drops further SYNs, so a
/// connect attempt hangs until someone's time limit ends it.
async fn unanswered_port() -> (u16, Vec<tokio::net::TcpStream>, tokio::net::TcpListener) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(tcp)) => queued.push(tcp),
            _ => return (port, queued, listener),
        }
    }
    panic!("the accept queue of 127.0.0.1:{port} never filled up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_purpose_gets_its_own_connect_limit() {
    let (port, _queued, _listener) = unanswered_port().await;
    let timeouts = Timeouts::DEFAULT
        .with_connect(Duration::from_millis(300))
        .with_federation_connect(Duration::from_millis(1200));
    let out = Outbound::builder(settings("ip_range_whitelist: ['127.0.0.0/8']\n"))
        .timeouts(timeouts)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/");
    for (purpose, limit) in [
        (Purpose::Push, timeouts.connect),
        (Purpose::Federation, timeouts.federation_connect),
        (Purpose::KeyFetch, timeouts.federation_connect),
    ] {
        let started = Instant::now();
        let err = out.client(purpose).get(&url).await.unwrap_err();
        let took = started.elapsed();
        match &err {
            Error::Timeout {
                step: TimeoutStep::Connect,
                after,
                ..
            } => assert_eq!(*after, limit, "{purpose}: {err}"),
            other => panic!("{purpose}: expected a connect timeout, got {other:?}"),
        }
        // The limit the error names is the one that ran out: not earlier.
        assert!(
            took >= limit,
            "{purpose}: gave up after {took:?}, limit {limit:?}"
        );
        assert!(took < limit + Duration::from_secs(2), "{purpose}: {took:?}");
    }
}
