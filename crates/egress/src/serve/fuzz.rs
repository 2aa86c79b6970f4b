//! The `fuzzing` feature: serve's connection handler fed arbitrary client
//! bytes over an in-memory stream, with a policy that refuses every target
//! (names before any is resolved, IP literals by the blocklists), so nothing
//! reaches the network.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

use super::dns::Dns;
use super::handler::Active;
use super::metrics::Metrics;
use super::{serve_connection, Htpasswd, ServeConfig, ServePolicy, State};
use crate::{BlocklistKind, ProxyEnv, ProxySettings};

/// One runtime (time paused: timers fire as soon as nothing else can run)
/// and two servers' states, made once and reused for every input.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    open: Arc<State>,
    with_users: Arc<State>,
    _shutdown: watch::Sender<bool>,
}

/// How long a client that stays connected may wait for an answer or a close:
/// the head timeout and some.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);
/// How long the handler may take to end once the client has closed.
const END_WITHIN: Duration = Duration::from_secs(120);

fn fixture() -> &'static Mutex<Fixture> {
    static FIXTURE: OnceLock<Mutex<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let (sender, receiver) = watch::channel(false);
        let (open, with_users) = runtime.block_on(async {
            let config = ServeConfig {
                // Never asked: every name is denied before resolution.
                dns_server: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
                ..ServeConfig::default()
            };
            // Names are denied by the glob, IP literals by every blocklist
            // covering every address. (The runtime has no I/O driver: a
            // connection attempt panics.)
            let everything = ["0.0.0.0/0", "::/0"];
            let settings = ProxySettings::builder(&ProxyEnv::default())
                .ip_range_denylist(everything, "fuzz")
                .federation_ip_range_denylist(everything, "fuzz")
                .url_preview_ip_range_denylist(everything, "fuzz")
                .build()
                .expect("settings");
            let deny_all = ServePolicy::new(settings).deny_domains(["*"]);
            // A `{SHA}` entry (fast to check) for user `fuzz`, password `fuzz`.
            let users = Htpasswd::parse("fuzz:{SHA}BJLg30AHfASxlD3BqtsyxlkID6w=\n", "fuzz")
                .expect("htpasswd");
            let make = |policy: ServePolicy| {
                Arc::new(State {
                    tunnels: Arc::new(Semaphore::new(config.max_tunnels)),
                    active: RwLock::new(Arc::new(Active::new(&config, policy).expect("policy"))),
                    dns: Dns::new(config.dns_server).expect("dns"),
                    metrics: Metrics::new(None),
                    per_client: Mutex::default(),
                    in_flight: Arc::default(),
                    shutdown: receiver.clone(),
                    via: super::via::Via::named("egress-f0zzf0zz"),
                    config: config.clone(),
                })
            };
            (
                make(deny_all.clone()),
                make(deny_all.credentials(Some(users))),
            )
        });
        Mutex::new(Fixture {
            runtime,
            open,
            with_users,
            _shutdown: sender,
        })
    })
}

/// Byte 0 chooses the listener (credentials or not; policy kind) and whether
/// the client closes its side after sending; the rest is what the client
/// sends. Panics if the handler panics, neither answers nor closes within
/// [`ANSWER_WITHIN`], does not end once the client has gone, or leaves
/// requests counted in flight.
pub(crate) fn connection(data: &[u8]) {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let fixture = fixture().lock().unwrap_or_else(|e| e.into_inner());
    let state = if mode & 1 == 0 {
        fixture.open.clone()
    } else {
        fixture.with_users.clone()
    };
    let close = mode & 2 == 0;
    let kind = match (mode >> 2) % 3 {
        0 => BlocklistKind::General,
        1 => BlocklistKind::Federation,
        _ => BlocklistKind::UrlPreview,
    };
    let input = input.to_vec();
    fixture.runtime.block_on(async move {
        let (client, server) = tokio::io::duplex(16 * 1024);
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        let conn = tokio::spawn(serve_connection(state.clone(), server, peer, kind));
        let (mut read, mut write) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&input).await;
            if close {
                let _ = write.shutdown().await;
            }
            write
        });
        let mut answer = Vec::new();
        if close {
            // Everything sent and the client's side closed: the handler must
            // answer what it can and close.
            let read_all = read.read_to_end(&mut answer);
            match tokio::time::timeout(END_WITHIN, read_all).await {
                Ok(_) => {}
                Err(_) => panic!(
                    "serve neither answered nor closed within {END_WITHIN:?} of the client's close"
                ),
            }
        } else {
            let mut buf = [0u8; 4096];
            match tokio::time::timeout(ANSWER_WITHIN, read.read(&mut buf)).await {
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => {}
                Err(_) => panic!("serve neither answered nor closed within {ANSWER_WITHIN:?}"),
            }
        }
        if !answer.is_empty() {
            assert!(
                answer.starts_with(b"HTTP/1."),
                "serve answered something that is not HTTP/1: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(100)])
            );
        }
        let write = writer.await.expect("the writer does not panic");
        drop(write);
        drop(read);
        match tokio::time::timeout(END_WITHIN, conn).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            Err(_) => {
                panic!("serve's connection did not end within {END_WITHIN:?} of the client leaving")
            }
        }
        // Nothing spawned by a request may outlive it here: every target is denied.
        for _ in 0..100 {
            if state.in_flight.count() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(state.in_flight.count(), 0, "requests left in flight");
        assert!(
            state
                .per_client
                .lock()
                .expect("not poisoned")
                .values()
                .all(|n| *n == 0),
            "per-client slots left taken"
        );
    });
}
