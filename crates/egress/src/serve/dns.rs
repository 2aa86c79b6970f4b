//! serve's own name resolution: the system resolver (getaddrinfo) by
//! default, or one DNS server (`--dns-server`, hickory). The answer is checked
//! whole and the checked addresses are dialled: nothing resolves the name
//! again, so a second answer cannot sneak in (DNS rebinding).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use super::ServeError;

/// Resolves names for serve.
pub(crate) enum Dns {
    System,
    Server(Box<TokioResolver>),
}

impl Dns {
    /// The system resolver, or `server` when given.
    pub(crate) fn new(server: Option<SocketAddr>) -> Result<Dns, ServeError> {
        let Some(addr) = server else {
            return Ok(Dns::System);
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
        let lookup = async {
            match self {
                Dns::System => Ok(tokio::net::lookup_host((host, 0))
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
        Ok(addrs)
    }
}
