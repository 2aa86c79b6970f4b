//! serve's own name resolution: the system resolver (getaddrinfo) by
//! default, or one DNS server (`--dns-server`, hickory). The answer is checked
//! whole and the checked addresses are dialled: nothing resolves the name
//! again, so a second answer cannot sneak in (DNS rebinding).
//!
//! getaddrinfo gives no TTL and runs on a blocking thread (reading
//! /etc/hosts, nsswitch.conf, resolv.conf each time), so its answers are kept
//! for [`SYSTEM_CACHE_TTL`], for at most [`SYSTEM_CACHE_ENTRIES`] names (as
//! squid's ipcache and nscd do). The answer is checked against the policy
//! on every use. hickory (`--dns-server`) caches by the records' TTLs.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use super::ServeError;

/// How long a system resolver answer is reused.
pub const SYSTEM_CACHE_TTL: Duration = Duration::from_secs(10);
/// Names whose system resolver answers are kept at most.
pub const SYSTEM_CACHE_ENTRIES: usize = 10_000;

/// Resolves names for serve.
pub(crate) enum Dns {
    System(Mutex<HashMap<String, (Instant, Vec<IpAddr>)>>),
    Server(Box<TokioResolver>),
}

impl Dns {
    fn cached(&self, host: &str) -> Option<Vec<IpAddr>> {
        let Dns::System(cache) = self else {
            return None;
        };
        let cache = cache.lock().expect("not poisoned");
        let (at, addrs) = cache.get(host)?;
        (at.elapsed() < SYSTEM_CACHE_TTL).then(|| addrs.clone())
    }

    fn remember(&self, host: &str, addrs: &[IpAddr]) {
        let Dns::System(cache) = self else { return };
        let mut cache = cache.lock().expect("not poisoned");
        if cache.len() >= SYSTEM_CACHE_ENTRIES {
            cache.retain(|_, (at, _)| at.elapsed() < SYSTEM_CACHE_TTL);
            if cache.len() >= SYSTEM_CACHE_ENTRIES {
                // All fresh: the oldest goes.
                if let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
                {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(host.to_owned(), (Instant::now(), addrs.to_vec()));
    }

    #[cfg(test)]
    fn cache_len(&self) -> usize {
        match self {
            Dns::System(cache) => cache.lock().expect("not poisoned").len(),
            Dns::Server(_) => 0,
        }
    }
}

impl Dns {
    /// The system resolver, or `server` when given.
    pub(crate) fn new(server: Option<SocketAddr>) -> Result<Dns, ServeError> {
        let Some(addr) = server else {
            return Ok(Dns::System(Mutex::default()));
        };
        let mut config = NameServerConfig::udp_and_tcp(addr.ip());
        for connection in &mut config.connections {
            connection.port = addr.port();
        }
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![config]),
            TokioRuntimeProvider::default(),
        );
        builder.options_mut().timeout = Duration::from_secs(5);
        builder.options_mut().attempts = 2;
        let resolver = builder.build().map_err(|e| ServeError::Dns {
            server: addr,
            problem: e.to_string(),
        })?;
        Ok(Dns::Server(Box::new(resolver)))
    }

    /// Every address of `host`, within `limit`.
    pub(crate) async fn lookup(&self, host: &str, limit: Duration) -> io::Result<Vec<IpAddr>> {
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(addrs) = self.cached(&key) {
            return Ok(addrs);
        }
        let lookup = async {
            match self {
                Dns::System(_) => Ok(tokio::net::lookup_host((host, 0))
                    .await?
                    .map(|a| a.ip())
                    .collect::<Vec<_>>()),
                Dns::Server(resolver) => match resolver.lookup_ip(host).await {
                    Ok(answer) => Ok(answer.iter().collect()),
                    Err(e) if e.is_no_records_found() => Ok(Vec::new()),
                    Err(e) => Err(io::Error::other(e.to_string())),
                },
            }
        };
        let mut addrs = match tokio::time::timeout(limit, lookup).await {
            Ok(answer) => answer?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {limit:?}"),
                ))
            }
        };
        addrs.dedup();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no address",
            ));
        }
        self.remember(&key, &addrs);
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn system_answers_are_reused_and_the_cache_is_bounded() {
        let dns = Dns::new(None).unwrap();
        let first = dns
            .lookup("localhost", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(dns.cached("localhost"), Some(first));
        for i in 0..SYSTEM_CACHE_ENTRIES + 10 {
            dns.remember(&format!("n{i}.test"), &[IpAddr::from([127, 0, 0, 1])]);
        }
        assert_eq!(dns.cache_len(), SYSTEM_CACHE_ENTRIES);
    }
}
