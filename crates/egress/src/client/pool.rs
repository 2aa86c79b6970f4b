//! The connection pool, keyed by the route: direct to an origin, forwarding
//! through a proxy (shared across origins), or a tunnel through a proxy to an
//! origin. hyper-util's legacy pool keys by the request's origin, which
//! cannot share forwarding connections.
//!
//! Memory stays bounded over a server's lifetime: at most
//! `max_idle_per_key` idle connections per key, each dropped after
//! `idle_timeout` by a reaper task that runs only while something is idle,
//! and a key with no idle connection left is removed at the reaper's next
//! round (every quarter of `idle_timeout`, at most 30 s), unless its
//! connection came back meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use super::RequestBody;
use crate::connect::Target;
use crate::instruments::{Instruments, RouteKind};
use crate::purpose::TlsKind;
use crate::{Route, Scheme};

/// What a pooled connection is for: the same key means the same path.
/// Made for every request, so it formats nothing: the proxy's identity is
/// shared with the settings, the host and TLS name are copied once each.
/// Hashed once, when made, with the pool's random keys: the map's lookups
/// (checkout and return) reuse that hash.
#[derive(Clone, Debug)]
pub(crate) struct PoolKey {
    /// The hash of the fields below (`Pool::hasher`).
    hash: u64,
    fields: KeyFields,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct KeyFields {
    /// Direct, forward or tunnel.
    kind: RouteKind,
    /// The proxy (`scheme://host:port#user`, never the password), if any.
    /// Forwarding connections carry the user's credentials on every request.
    proxy: Option<Arc<str>>,
    /// The origin's host and port, except for forwarding (shared across origins).
    origin: Option<(Box<str>, u16)>,
    /// TLS rules when the origin is reached over TLS, and the name TLS
    /// verifies when it is not the host (federation's server name).
    tls: Option<(TlsKind, Option<Box<str>>)>,
}

impl PartialEq for PoolKey {
    fn eq(&self, other: &PoolKey) -> bool {
        self.hash == other.hash && self.fields == other.fields
    }
}

impl Eq for PoolKey {}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The map's hasher: the key's hash is already a keyed SipHash, taken as it is.
#[derive(Clone, Copy, Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (PoolKey's Hash); anything else still hashes.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<PoolKey, V, std::hash::BuildHasherDefault<Prehashed>>;

impl PoolKey {
    pub(crate) fn new(route: &Route<'_>, target: &Target<'_>, pool: &Pool) -> PoolKey {
        let fields = KeyFields::new(route, target);
        PoolKey {
            hash: std::hash::BuildHasher::hash_one(&pool.hasher, &fields),
            fields,
        }
    }

    /// Direct, forward or tunnel.
    pub(crate) fn kind(&self) -> RouteKind {
        self.fields.kind
    }

    /// The origin or the proxy, for messages.
    pub(crate) fn peer(&self) -> String {
        match (&self.fields.proxy, &self.fields.origin) {
            (Some(proxy), None) => format!("proxy {}", proxy.split('#').next().unwrap_or_default()),
            (_, Some((host, port))) => crate::connect::authority(host, *port),
            (None, None) => "?".to_owned(),
        }
    }
}

impl KeyFields {
    fn new(route: &Route<'_>, target: &Target<'_>) -> KeyFields {
        let proxy = route.proxy().map(|p| p.pool_id().clone());
        let origin = || Some((Box::from(target.host), target.port));
        let tls = || match target.scheme {
            Scheme::Https => Some((
                target.tls,
                (target.server_name != target.host).then(|| Box::from(target.server_name)),
            )),
            Scheme::Http => None,
        };
        match route {
            Route::Forward { .. } => KeyFields {
                kind: RouteKind::Forward,
                proxy,
                origin: None,
                tls: None,
            },
            Route::Tunnel { .. } => KeyFields {
                kind: RouteKind::Tunnel,
                proxy,
                origin: origin(),
                tls: tls(),
            },
            _ => KeyFields {
                kind: RouteKind::Direct,
                proxy: None,
                origin: origin(),
                tls: tls(),
            },
        }
    }
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

#[derive(Default)]
struct State {
    idle: KeyMap<Vec<Idle>>,
    /// Idle connections by route kind (direct, forward, tunnel), for the
    /// pool gauges.
    idle_by_route: [usize; 3],
    /// A reaper task is running.
    reaping: bool,
}

/// The index of a pooled route kind (a refused route has no connection).
fn slot(kind: RouteKind) -> usize {
    match kind {
        RouteKind::Direct | RouteKind::Refused => 0,
        RouteKind::Forward => 1,
        RouteKind::Tunnel => 2,
    }
}

const KINDS: [RouteKind; 3] = [RouteKind::Direct, RouteKind::Forward, RouteKind::Tunnel];

/// Idle connections by key.
pub(crate) struct Pool {
    state: Mutex<State>,
    max_idle_per_key: usize,
    idle_timeout: Duration,
    /// Connections open, idle or not, by route kind: from the HTTP
    /// handshake until the connection's task ends.
    open: Arc<[AtomicUsize; 3]>,
    instruments: Arc<Instruments>,
    /// The random keys the pool keys are hashed with.
    hasher: std::hash::RandomState,
}

/// Counts one open connection for as long as it lives (held by the
/// connection's task, so it ends when the connection ends or its runtime
/// shuts down). Holds the pool weakly: connections do not keep it alive.
pub(crate) struct OpenConnection {
    open: Arc<[AtomicUsize; 3]>,
    kind: RouteKind,
    pool: Weak<Pool>,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open[slot(self.kind)].fetch_sub(1, Ordering::Relaxed);
        if let Some(pool) = self.pool.upgrade() {
            let state = pool.lock();
            pool.gauge(&state, self.kind);
        }
    }
}

/// How many idle connections a pool holds, and under how many keys; how
/// many of its connections are busy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Idle connections, all keys together.
    pub idle_connections: usize,
    /// Keys (routes) with at least one idle connection.
    pub keys: usize,
    /// Open connections that are not idle: carrying a request or its
    /// response, or closing. Counted from the HTTP handshake until the
    /// connection has ended, so a connection that is never returned nor
    /// closed stays counted here.
    pub busy_connections: usize,
}

impl Pool {
    pub(crate) fn new(
        max_idle_per_key: usize,
        idle_timeout: Duration,
        instruments: Arc<Instruments>,
    ) -> Pool {
        Pool {
            state: Mutex::new(State::default()),
            max_idle_per_key,
            idle_timeout,
            open: Arc::default(),
            instruments,
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Counts a new connection as open until the returned guard is dropped.
    pub(crate) fn opened(self: &Arc<Self>, kind: RouteKind) -> OpenConnection {
        self.open[slot(kind)].fetch_add(1, Ordering::Relaxed);
        let state = self.lock();
        self.gauge(&state, kind);
        OpenConnection {
            open: self.open.clone(),
            kind,
            pool: Arc::downgrade(self),
        }
    }

    /// Sets the pool gauges of a route kind (under the lock, so that the
    /// idle count and the open count are read together).
    fn gauge(&self, state: &State, kind: RouteKind) {
        let i = slot(kind);
        let idle = state.idle_by_route[i];
        let open = self.open[i].load(Ordering::Relaxed);
        self.instruments
            .pool(KINDS[i], idle, open.saturating_sub(idle));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only a map of idle connections: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let state = self.lock();
        let idle_connections = state.idle.values().map(Vec::len).sum();
        PoolStats {
            idle_connections,
            keys: state.idle.values().filter(|l| !l.is_empty()).count(),
            // Read under the lock, after the idle count; a connection that
            // closes in between is at most momentarily missing from both.
            busy_connections: self
                .open
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .sum::<usize>()
                .saturating_sub(idle_connections),
        }
    }

    /// The most recently returned live connection for `key`, once ready.
    pub(crate) async fn checkout(&self, key: &PoolKey) -> Option<SendRequest<RequestBody>> {
        loop {
            let mut candidate = {
                let mut state = self.lock();
                let State {
                    idle,
                    idle_by_route,
                    ..
                } = &mut *state;
                // One lookup. A key whose last idle connection is taken stays,
                // empty, for its connection's return (no second lookup, no new
                // allocation); the reaper removes it at its next round if
                // nothing came back.
                let list = idle.get_mut(key)?;
                let now = Instant::now();
                let before = list.len();
                list.retain(|c| {
                    !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout
                });
                let candidate = list.pop();
                let taken = before - list.len();
                idle_by_route[slot(key.kind())] -= taken;
                if taken > 0 {
                    self.gauge(&state, key.kind());
                }
                candidate?
            };
            if candidate.sender.is_ready() {
                return Some(candidate.sender);
            }
            // Its last response is fully read; it is ready within a scheduler tick,
            // unless the server closed it.
            let ready =
                tokio::time::timeout(Duration::from_secs(1), candidate.sender.ready()).await;
            if let Ok(Ok(())) = ready {
                return Some(candidate.sender);
            }
        }
    }

    /// Keeps a connection whose response has been read, for reuse.
    pub(crate) fn put(self: &Arc<Self>, key: PoolKey, sender: SendRequest<RequestBody>) {
        if sender.is_closed() || self.max_idle_per_key == 0 || self.idle_timeout.is_zero() {
            return;
        }
        let mut state = self.lock();
        let kind = key.kind();
        let list = state.idle.entry(key).or_default();
        if list.len() >= self.max_idle_per_key {
            return;
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
        state.idle_by_route[slot(kind)] += 1;
        self.gauge(&state, kind);
        if !state.reaping {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                state.reaping = true;
                runtime.spawn(reap(Arc::downgrade(self), self.idle_timeout));
            }
        }
    }

    /// Drops expired and closed connections and empty keys. True when nothing is left.
    fn reap(&self) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let mut by_route = [0; 3];
        state.idle.retain(|key, list| {
            list.retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout
            });
            by_route[slot(key.kind())] += list.len();
            !list.is_empty()
        });
        if by_route != state.idle_by_route {
            state.idle_by_route = by_route;
            for kind in KINDS {
                self.gauge(&state, kind);
            }
        }
        if state.idle.is_empty() {
            state.reaping = false;
            true
        } else {
            false
        }
    }
}

/// Clears the `reaping` flag if the task ends without doing so (its runtime
/// shut down), so that the next `put` starts a new one.
struct ReaperGuard(Option<Weak<Pool>>);

impl Drop for ReaperGuard {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take().and_then(|p| p.upgrade()) {
            pool.lock().reaping = false;
        }
    }
}

/// Runs while the pool lives and holds idle connections.
async fn reap(pool: Weak<Pool>, idle_timeout: Duration) {
    let mut guard = ReaperGuard(Some(pool.clone()));
    let every = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.reap() {
            // `reap` cleared the flag under the lock; a `put` may have set it since.
            guard.0 = None;
            return;
        }
    }
}
