//! SRV lookups (`_matrix-fed._tcp`, `_matrix._tcp`) by local DNS.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

/// DNS for SRV lookups could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up DNS for SRV lookups: {0}")]
pub struct DnsSetupError(String);

/// An SRV resolver on the system's DNS or on one given server.
pub(super) struct Srv {
    dns: TokioResolver,
}

impl Srv {
    /// Uses the system's DNS, or `dns_server` when given.
    pub(super) fn new(dns_server: Option<SocketAddr>) -> Result<Srv, DnsSetupError> {
        let mut builder = match dns_server {
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
        builder.options_mut().timeout = Duration::from_secs(5);
        builder.options_mut().attempts = 2;
        let dns = builder.build().map_err(|e| DnsSetupError(e.to_string()))?;
        Ok(Srv { dns })
    }

    /// SRV targets in priority order (then by weight, heaviest first). A
    /// record whose target is `.` says the service is not offered.
    pub(super) async fn lookup(&self, query: &str) -> Result<Vec<(String, u16)>, String> {
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
}
