//! Matrix server discovery (server-server API, "Resolving server names"):
//! IP literal, explicit port, `/.well-known/matrix/server` (through the
//! routing decision, so through `https_proxy` unless bypassed), SRV
//! `_matrix-fed._tcp` then `_matrix._tcp` by local DNS, else port 8448.

use std::net::SocketAddr;

use ruma_common::ServerName;

use super::srv::{DnsSetupError, Srv, SrvAnswer};
use super::well_known::WellKnown;
use crate::Outbound;

/// Where to connect for a server name, and what to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resolution {
    /// The name TLS verifies and SNI carries (the delegated host, without port).
    pub tls_name: String,
    /// The `Host` header (the delegated name, with its port when it has one).
    pub host_header: String,
    /// `(host, port)` to connect to, in order; none when the server offers
    /// no federation (an SRV record with the target `.`).
    pub targets: Vec<(String, u16)>,
    /// What was done, step by step, for people.
    pub steps: Vec<String>,
}

/// Resolves server names; caches well-known answers.
pub struct Discovery {
    well_known: WellKnown,
    srv: Srv,
}

impl Discovery {
    /// Uses the system's DNS for SRV, or `dns_server` when given.
    pub fn new(
        outbound: Outbound,
        dns_server: Option<SocketAddr>,
    ) -> Result<Discovery, DnsSetupError> {
        Ok(Discovery {
            well_known: WellKnown::new(outbound),
            srv: Srv::new(dns_server)?,
        })
    }

    /// Resolves a server name to the targets to try, in order.
    pub async fn resolve(&self, name: &ServerName) -> Resolution {
        let mut steps = Vec::new();
        if let Err(e) = super::server_name::check_server_name(name) {
            // Synapse refuses the name: nothing to look up, no target.
            steps.push(format!("not a valid server name: {e}"));
            return Resolution {
                tls_name: name.host().to_owned(),
                host_header: name.to_string(),
                targets: Vec::new(),
                steps,
            };
        }
        if name.is_ip_literal() {
            steps.push(format!("{name} is an IP address"));
            return literal(name, steps);
        }
        if let Some(port) = name.port() {
            steps.push(format!("{name} has an explicit port: connect to {name}"));
            return explicit(name, port, steps);
        }
        let host = name.host().to_ascii_lowercase();
        match self.well_known.lookup(&host, &mut steps).await {
            Some(delegated) => {
                if delegated.is_ip_literal() {
                    steps.push(format!("delegated to IP address {delegated}"));
                    return literal(&delegated, steps);
                }
                if let Some(port) = delegated.port() {
                    steps.push(format!("delegated to {delegated} with an explicit port"));
                    return explicit(&delegated, port, steps);
                }
                let host = delegated.host().to_ascii_lowercase();
                self.srv_or_default(&host, steps).await
            }
            None => self.srv_or_default(&host, steps).await,
        }
    }

    async fn srv_or_default(&self, host: &str, mut steps: Vec<String>) -> Resolution {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let query = format!("{service}.{host}.");
            match self.srv.lookup(&query).await {
                Ok(SrvAnswer::NotOffered) => {
                    // As Synapse: the server says it offers no federation;
                    // no other record and no port 8448 is tried.
                    steps.push(format!(
                        "SRV {query}: the target is `.`: {host} does not offer federation"
                    ));
                    return Resolution {
                        tls_name: host.to_owned(),
                        host_header: host.to_owned(),
                        targets: Vec::new(),
                        steps,
                    };
                }
                Ok(SrvAnswer::Targets(targets)) if !targets.is_empty() => {
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
}

/// The host without IPv6 brackets, DNS names lower-cased: what TLS verifies
/// and SNI carries.
fn bare_host(name: &ServerName) -> String {
    crate::proxy_url::unbracket(name.host()).to_ascii_lowercase()
}

/// `host[:port]`, DNS names lower-cased.
fn host_header(name: &ServerName) -> String {
    name.as_str().to_ascii_lowercase()
}

/// An IP-literal name: that address, on its port or 8448.
pub(super) fn literal(name: &ServerName, mut steps: Vec<String>) -> Resolution {
    let port = name.port().unwrap_or(8448);
    steps.push(format!("connect to {} on port {port}", name.host()));
    Resolution {
        tls_name: bare_host(name),
        host_header: host_header(name),
        targets: vec![(bare_host(name), port)],
        steps,
    }
}

pub(super) fn explicit(name: &ServerName, port: u16, steps: Vec<String>) -> Resolution {
    Resolution {
        tls_name: bare_host(name),
        host_header: host_header(name),
        targets: vec![(name.host().to_ascii_lowercase(), port)],
        steps,
    }
}
