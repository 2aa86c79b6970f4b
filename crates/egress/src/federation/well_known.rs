//! `/.well-known/matrix/server`, fetched through the routing decision (so
//! through `https_proxy` unless bypassed) and kept in a bounded TTL cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruma_common::OwnedServerName;

use super::body::{read_limited, BodyError};
use crate::{Outbound, Purpose};

/// The most of a well-known response that is read.
pub const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;
/// The most server names whose well-known answer is cached. When the cache
/// is full, expired entries are dropped first, then the oldest entry. An
/// entry is a name and an answer: ten thousand take about a megabyte.
pub const WELL_KNOWN_CACHE_ENTRIES: usize = 10_000;
const CACHE_MIN: Duration = Duration::from_secs(5 * 60);
const CACHE_MAX: Duration = Duration::from_secs(48 * 3600);
const CACHE_DEFAULT: Duration = Duration::from_secs(24 * 3600);
const CACHE_FAILURE: Duration = Duration::from_secs(3600);

/// A cached answer: the delegated server name, or why there is none.
pub(super) type Answer = Result<OwnedServerName, String>;

#[derive(Clone)]
struct Entry {
    answer: Answer,
    inserted: Instant,
    expires: Instant,
}

/// A TTL cache of at most `capacity` entries. `order` holds names by
/// insertion time (stale items, for names re-inserted since, are skipped).
pub(super) struct Cache {
    entries: HashMap<String, Entry>,
    order: VecDeque<(Instant, String)>,
    capacity: usize,
    last_sweep: Option<Instant>,
}

/// How often, at most, a full cache is swept for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Cache {
    pub(super) fn new(capacity: usize) -> Cache {
        Cache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            last_sweep: None,
        }
    }

    /// The answer for `host` and how long it has left, unless expired.
    pub(super) fn get(&mut self, host: &str, now: Instant) -> Option<(Answer, Duration)> {
        let entry = self.entries.get(host)?;
        if entry.expires <= now {
            self.entries.remove(host);
            return None;
        }
        Some((entry.answer.clone(), entry.expires - now))
    }

    /// Caches `answer` for `ttl`. When full: drops the expired entries (at
    /// most once a minute), then, if still full, the oldest entry.
    pub(super) fn insert(&mut self, host: &str, answer: Answer, ttl: Duration, now: Instant) {
        if !self.entries.contains_key(host) && self.entries.len() >= self.capacity {
            if self
                .last_sweep
                .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
            {
                self.entries.retain(|_, e| e.expires > now);
                self.last_sweep = Some(now);
            }
            while self.entries.len() >= self.capacity {
                let Some((inserted, name)) = self.order.pop_front() else {
                    break;
                };
                if self
                    .entries
                    .get(&name)
                    .is_some_and(|e| e.inserted == inserted)
                {
                    self.entries.remove(&name);
                }
            }
        }
        self.entries.insert(
            host.to_owned(),
            Entry {
                answer,
                inserted: now,
                expires: now + ttl,
            },
        );
        self.order.push_back((now, host.to_owned()));
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(t, name)| entries.get(name).is_some_and(|e| e.inserted == *t));
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Well-known lookups with their cache.
pub(super) struct WellKnown {
    outbound: Outbound,
    cache: Mutex<Cache>,
}

impl WellKnown {
    pub(super) fn new(outbound: Outbound) -> WellKnown {
        WellKnown {
            outbound,
            cache: Mutex::new(Cache::new(WELL_KNOWN_CACHE_ENTRIES)),
        }
    }

    /// The delegated server name from `https://host/.well-known/matrix/server`, cached.
    pub(super) async fn lookup(
        &self,
        host: &str,
        steps: &mut Vec<String>,
    ) -> Option<OwnedServerName> {
        let cached = self
            .cache
            .lock()
            .expect("cache lock")
            .get(host, Instant::now());
        if let Some((answer, left)) = cached {
            return match answer {
                Ok(d) => {
                    steps.push(format!(
                        "well-known (cached, {}s left): m.server is {d}",
                        left.as_secs()
                    ));
                    Some(d)
                }
                Err(e) => {
                    steps.push(format!(
                        "well-known (cached failure, {}s left): {e}",
                        left.as_secs()
                    ));
                    None
                }
            };
        }
        let url = format!("https://{host}/.well-known/matrix/server");
        let (answer, ttl) = match self.fetch(&url).await {
            Ok((delegated, ttl)) => {
                steps.push(format!(
                    "well-known {url}: m.server is {delegated} (cached {}s)",
                    ttl.as_secs()
                ));
                (Ok(delegated), ttl)
            }
            Err(e) => {
                steps.push(format!(
                    "well-known {url}: {e} (cached {}s)",
                    CACHE_FAILURE.as_secs()
                ));
                (Err(e), CACHE_FAILURE)
            }
        };
        self.cache.lock().expect("cache lock").insert(
            host,
            answer.clone(),
            jitter(ttl),
            Instant::now(),
        );
        answer.ok()
    }

    async fn fetch(&self, url: &str) -> Result<(OwnedServerName, Duration), String> {
        let client = self
            .outbound
            .client(Purpose::Federation)
            .follow_redirects(crate::client::MAX_REDIRECTS);
        let response = client.get(url).await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status != 200 {
            return Err(format!("status {status}"));
        }
        let ttl = cache_ttl(response.headers().get(http::header::CACHE_CONTROL));
        let bytes = read_limited(response.into_body(), WELL_KNOWN_MAX_BYTES as u64)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge { .. } => format!(
                    "the body is larger than {} KiB",
                    WELL_KNOWN_MAX_BYTES / 1024
                ),
                other => format!("reading the body failed: {other}"),
            })?;
        Ok((parse_answer(&bytes)?, ttl))
    }
}

/// The delegated server name in a well-known body.
pub(super) fn parse_answer(bytes: &[u8]) -> Result<OwnedServerName, String> {
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
    let server = json
        .get("m.server")
        .ok_or("the JSON has no `m.server`")?
        .as_str()
        .ok_or("`m.server` is not a string")?;
    let server = OwnedServerName::try_from(server)
        .map_err(|e| format!("`m.server` is not a valid server name ({server}): {e}"))?;
    if server.port() == Some(0) {
        return Err(format!("`m.server` names port 0 ({server})"));
    }
    Ok(server)
}

/// `Cache-Control: max-age` bounded to 5 minutes – 48 hours; 24 hours without one.
pub(super) fn cache_ttl(header: Option<&http::HeaderValue>) -> Duration {
    let max_age = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .filter_map(|d| d.trim().strip_prefix("max-age="))
                .find_map(|s| s.trim().parse::<u64>().ok())
        })
        .map(Duration::from_secs);
    max_age.map_or(CACHE_DEFAULT, |age| age.clamp(CACHE_MIN, CACHE_MAX))
}

/// Up to 10% less, so that entries cached together do not expire together.
fn jitter(ttl: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut byte = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    ttl.mul_f64(1.0 - f64::from(byte[0]) / 255.0 * 0.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_times_are_bounded() {
        let h = |s: &'static str| Some(http::HeaderValue::from_static(s));
        assert_eq!(cache_ttl(None), CACHE_DEFAULT);
        assert_eq!(
            cache_ttl(h("max-age=600").as_ref()),
            Duration::from_secs(600)
        );
        assert_eq!(cache_ttl(h("public, max-age=10").as_ref()), CACHE_MIN);
        assert_eq!(cache_ttl(h("max-age=99999999").as_ref()), CACHE_MAX);
        assert_eq!(cache_ttl(h("no-store").as_ref()), CACHE_DEFAULT);
        let j = jitter(CACHE_DEFAULT);
        assert!(j <= CACHE_DEFAULT && j >= CACHE_DEFAULT.mul_f64(0.9));
    }

    #[test]
    fn the_cache_stays_bounded_after_many_names() {
        let mut cache = Cache::new(WELL_KNOWN_CACHE_ENTRIES);
        let start = Instant::now();
        for i in 0..3 * WELL_KNOWN_CACHE_ENTRIES {
            let now = start + Duration::from_millis(i as u64);
            cache.insert(&format!("s{i}.test"), Err("404".into()), CACHE_DEFAULT, now);
            assert!(cache.len() <= WELL_KNOWN_CACHE_ENTRIES);
        }
        assert_eq!(cache.len(), WELL_KNOWN_CACHE_ENTRIES);
        let now = start + Duration::from_millis(3 * WELL_KNOWN_CACHE_ENTRIES as u64);
        // The newest names stayed; the oldest went.
        let last = format!("s{}.test", 3 * WELL_KNOWN_CACHE_ENTRIES - 1);
        assert!(cache.get(&last, now).is_some());
        assert!(cache.get("s0.test", now).is_none());
    }

    #[test]
    fn expired_entries_go_before_the_oldest() {
        let mut cache = Cache::new(3);
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        cache.insert("old.test", Err("x".into()), secs(1000), t0);
        cache.insert("short.test", Err("x".into()), secs(5), t0 + secs(1));
        cache.insert("mid.test", Err("x".into()), secs(1000), t0 + secs(2));
        // Expired entries are not answered.
        assert!(cache.get("short.test", t0 + secs(10)).is_none());
        cache.insert("a.test", Err("x".into()), secs(1000), t0 + secs(10));
        cache.insert("late.test", Err("x".into()), secs(1000), t0 + secs(11));
        // Full, nothing expired: the oldest (old.test) went.
        assert_eq!(cache.len(), 3);
        let now = t0 + secs(12);
        assert!(cache.get("old.test", now).is_none());
        for kept in ["mid.test", "a.test", "late.test"] {
            assert!(cache.get(kept, now).is_some(), "{kept}");
        }
        // Full with an expired entry: that one goes, not the oldest.
        let mut cache = Cache::new(2);
        cache.insert("old.test", Err("x".into()), secs(1000), t0);
        cache.insert("short.test", Err("x".into()), secs(5), t0 + secs(1));
        cache.insert("new.test", Err("x".into()), secs(1000), t0 + secs(10));
        assert!(cache.get("old.test", t0 + secs(11)).is_some());
        assert!(cache.get("new.test", t0 + secs(11)).is_some());
    }
}
