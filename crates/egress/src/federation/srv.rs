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

/// What an SRV query found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum SrvAnswer {
    /// Targets in priority order (none: no record).
    Targets(Vec<(String, u16)>),
    /// The only records have the target `.`: the service is decidedly not
    /// offered (RFC 2782). Synapse then gives up on the server.
    NotOffered,
}

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

    /// SRV targets in priority order (then by weight, heaviest first).
    /// Records whose target is `.` are no targets; when they are all there
    /// is, the service is not offered.
    pub(super) async fn lookup(&self, query: &str) -> Result<SrvAnswer, String> {
        let lookup = match self.dns.lookup(query, RecordType::SRV).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() => return Ok(SrvAnswer::Targets(Vec::new())),
            Err(e) => return Err(e.to_string()),
        };
        let records: Vec<(u16, u16, String, u16)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => {
                    Some((srv.priority, srv.weight, srv.target.to_ascii(), srv.port))
                }
                _ => None,
            })
            .collect();
        Ok(targets(records))
    }
}

/// The answer for SRV records `(priority, weight, target, port)`.
fn targets(records: Vec<(u16, u16, String, u16)>) -> SrvAnswer {
    let found = !records.is_empty();
    let mut records: Vec<_> = records
        .into_iter()
        .filter(|(_, _, target, _)| target != "." && !target.is_empty())
        .collect();
    if found && records.is_empty() {
        return SrvAnswer::NotOffered;
    }
    records.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    SrvAnswer::Targets(
        records
            .into_iter()
            .map(|(_, _, target, port)| (target.trim_end_matches('.').to_ascii_lowercase(), port))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(priority: u16, weight: u16, target: &str, port: u16) -> (u16, u16, String, u16) {
        (priority, weight, target.to_owned(), port)
    }

    #[test]
    fn a_lone_dot_says_not_offered_and_dots_among_targets_are_skipped() {
        assert_eq!(targets(vec![record(10, 5, ".", 0)]), SrvAnswer::NotOffered);
        assert_eq!(targets(Vec::new()), SrvAnswer::Targets(Vec::new()));
        assert_eq!(
            targets(vec![
                record(20, 5, "b.test.", 8448),
                record(10, 5, ".", 0),
                record(10, 1, "a.test.", 443),
                record(10, 9, "C.test.", 444),
            ]),
            SrvAnswer::Targets(vec![
                ("c.test".to_owned(), 444),
                ("a.test".to_owned(), 443),
                ("b.test".to_owned(), 8448),
            ])
        );
    }
}
