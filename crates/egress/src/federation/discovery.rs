//! Matrix server discovery (server-server API, "Resolving server names"):
//! IP literal, explicit port, `/.well-known/matrix/server` (through the
//! routing decision, so through `https_proxy` unless bypassed), SRV
//! `_matrix-fed._tcp` then `_matrix._tcp` by local DNS, else port 8448.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use super::client::{read_limited, FederationError};
use super::server_name::ServerName;
use crate::{Outbound, Purpose};

/// The most of a well-known response that is read.
pub const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;
const CACHE_MIN: Duration = Duration::from_secs(5 * 60);
const CACHE_MAX: Duration = Duration::from_secs(48 * 3600);
const CACHE_DEFAULT: Duration = Duration::from_secs(24 * 3600);
const CACHE_FAILURE: Duration = Duration::from_secs(3600);

/// Where to connect for a server name, and what to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The name TLS verifies and SNI carries (the delegated host, without port).
    pub tls_name: String,
    /// The `Host` header (the delegated name, with its port when it has one).
    pub host_header: String,
    /// `(host, port)` to connect to, in order.
    pub targets: Vec<(String, u16)>,
    /// What was done, step by step, for people.
    pub steps: Vec<String>,
}

#[derive(Clone)]
struct Cached {
    delegated: Result<String, String>,
    expires: Instant,
}

/// Resolves server names; caches well-known answers.
pub struct Discovery {
    outbound: Outbound,
    dns: TokioResolver,
    well_known: Mutex<HashMap<String, Cached>>,
}

/// Discovery could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up DNS for SRV lookups: {0}")]
pub struct DnsSetupError(String);

impl Discovery {
    /// Uses the system's DNS for SRV, or `dns_server` when given.
    pub fn new(
        outbound: Outbound,
        dns_server: Option<SocketAddr>,
    ) -> Result<Discovery, DnsSetupError> {
        let builder = match dns_server {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| DnsSetupError(e.to_string()))?,
        };
        let mut builder = builder;
        builder.options_mut().timeout = Duration::from_secs(5);
        builder.options_mut().attempts = 2;
        let dns = builder.build().map_err(|e| DnsSetupError(e.to_string()))?;
        Ok(Discovery {
            outbound,
            dns,
            well_known: Mutex::new(HashMap::new()),
        })
    }

    /// Resolves a server name to the targets to try, in order.
    pub async fn resolve(&self, name: &ServerName) -> Resolution {
        let mut steps = Vec::new();
        if name.ip().is_some() {
            steps.push(format!("{name} is an IP address"));
            return literal(name, steps);
        }
        if let Some(port) = name.port() {
            steps.push(format!("{name} has an explicit port: connect to {name}"));
            return explicit(name, port, steps);
        }
        match self.well_known(name.host(), &mut steps).await {
            Some(delegated) => match ServerName::parse(&delegated) {
                Ok(delegated) => {
                    if delegated.ip().is_some() {
                        steps.push(format!("delegated to IP address {delegated}"));
                        return literal(&delegated, steps);
                    }
                    if let Some(port) = delegated.port() {
                        steps.push(format!("delegated to {delegated} with an explicit port"));
                        return explicit(&delegated, port, steps);
                    }
                    self.srv_or_default(delegated.host(), steps).await
                }
                Err(e) => {
                    steps.push(format!("well-known: {e}; ignoring it"));
                    self.srv_or_default(name.host(), steps).await
                }
            },
            None => self.srv_or_default(name.host(), steps).await,
        }
    }

    async fn srv_or_default(&self, host: &str, mut steps: Vec<String>) -> Resolution {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let query = format!("{service}.{host}.");
            match self.srv(&query).await {
                Ok(targets) if !targets.is_empty() => {
                    let list: Vec<String> =
                        targets.iter().map(|(h, p)| format!("{h}:{p}")).collect();
                    steps.push(format!("SRV {query} → {}", list.join(", ")));
                    return Resolution {
                        tls_name: host.to_owned(),
                        host_header: host.to_owned(),
                        targets,
                        steps,
                    };
                }
                Ok(_) => steps.push(format!("SRV {query}: no usable record")),
                Err(e) => steps.push(format!("SRV {query}: {e}")),
            }
        }
        steps.push(format!("no SRV record: connect to {host}:8448"));
        Resolution {
            tls_name: host.to_owned(),
            host_header: host.to_owned(),
            targets: vec![(host.to_owned(), 8448)],
            steps,
        }
    }

    /// SRV targets in priority order (then by weight, heaviest first). A
    /// record whose target is `.` says the service is not offered.
    async fn srv(&self, query: &str) -> Result<Vec<(String, u16)>, String> {
        let lookup = match self.dns.lookup(query, RecordType::SRV).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
            Err(e) => return Err(e.to_string()),
        };
        let mut records: Vec<(u16, u16, String, u16)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => {
                    Some((srv.priority, srv.weight, srv.target.to_ascii(), srv.port))
                }
                _ => None,
            })
            .collect();
        if records
            .iter()
            .any(|(_, _, target, _)| target == "." || target.is_empty())
        {
            return Err("the record's target is `.`: the service is not offered there".to_owned());
        }
        records.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        Ok(records
            .into_iter()
            .map(|(_, _, target, port)| (target.trim_end_matches('.').to_ascii_lowercase(), port))
            .collect())
    }

    /// The delegated server name from `https://host/.well-known/matrix/server`, cached.
    async fn well_known(&self, host: &str, steps: &mut Vec<String>) -> Option<String> {
        if let Some(cached) = self
            .well_known
            .lock()
            .expect("cache lock")
            .get(host)
            .cloned()
        {
            if cached.expires > Instant::now() {
                let left = cached.expires - Instant::now();
                return match cached.delegated {
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
        }
        let url = format!("https://{host}/.well-known/matrix/server");
        let (delegated, ttl) = match self.fetch_well_known(&url).await {
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
        let expires = Instant::now() + jitter(ttl);
        self.well_known.lock().expect("cache lock").insert(
            host.to_owned(),
            Cached {
                delegated: delegated.clone(),
                expires,
            },
        );
        delegated.ok()
    }

    async fn fetch_well_known(&self, url: &str) -> Result<(String, Duration), String> {
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
                FederationError::TooLarge { .. } => format!(
                    "the body is larger than {} KiB",
                    WELL_KNOWN_MAX_BYTES / 1024
                ),
                other => format!("reading the body failed: {other}"),
            })?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("the body is not JSON: {e}"))?;
        let server = json
            .get("m.server")
            .ok_or("the JSON has no `m.server`")?
            .as_str()
            .ok_or("`m.server` is not a string")?;
        ServerName::parse(server).map_err(|e| e.to_string())?;
        Ok((server.to_owned(), ttl))
    }
}

/// An IP-literal name: that address, on its port or 8448.
fn literal(name: &ServerName, mut steps: Vec<String>) -> Resolution {
    let port = name.port().unwrap_or(8448);
    steps.push(format!("connect to {} on port {port}", name.host()));
    Resolution {
        tls_name: name.bare_host().to_owned(),
        host_header: name.to_string(),
        targets: vec![(name.bare_host().to_owned(), port)],
        steps,
    }
}

fn explicit(name: &ServerName, port: u16, steps: Vec<String>) -> Resolution {
    Resolution {
        tls_name: name.bare_host().to_owned(),
        host_header: name.to_string(),
        targets: vec![(name.host().to_owned(), port)],
        steps,
    }
}

/// `Cache-Control: max-age` bounded to 5 minutes – 48 hours; 24 hours without one.
fn cache_ttl(header: Option<&http::HeaderValue>) -> Duration {
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
}
