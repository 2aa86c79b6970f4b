//! Limits that keep a long-running server healthy: idle connections and
//! pool keys are dropped after the idle timeout, and each purpose's connect
//! limit reaches the TCP attempt itself.

mod support;

use std::net::{IpAddr, Ipv4Addr};
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
    let timeouts = Timeouts {
        connect: Duration::from_millis(300),
        federation_connect: Duration::from_millis(1200),
        ..Timeouts::default()
    };
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
