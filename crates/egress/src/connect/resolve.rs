//! Name resolution for direct connections, with the purpose's blocklist
//! applied to every answer: if any address is blocked, none is used.
//!
//! The connector dials the whole answer (staggered, [`super::dial`]); the
//! reqwest adapter hands it to reqwest's connector.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::{Blocked, Blocklist};

/// Host name → addresses that replace DNS for it (curl's `--resolve`, and tests).
pub(crate) type Overrides = Arc<HashMap<String, Vec<IpAddr>>>;

/// The error a resolver returns when an answer is blocked; found again by
/// walking the error's sources.
#[derive(Debug, thiserror::Error)]
#[error("{host}: among its addresses, {blocked}")]
pub(crate) struct BlockedAnswer {
    /// The name.
    pub(crate) host: String,
    /// The blocked address and its range.
    pub(crate) blocked: Blocked,
}

/// The error a resolver returns when a name has no address (or DNS
/// failed); found again by type, as [`BlockedAnswer`] is.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}")]
pub(crate) struct Unresolved {
    /// The name.
    pub(crate) host: String,
    /// The resolver's error.
    #[source]
    pub(crate) source: io::Error,
}

/// Resolves with the system resolver (or `overrides`) and refuses the whole
/// answer if any address is in `blocklist`.
#[derive(Clone)]
pub(crate) struct BlocklistResolver {
    blocklist: Option<Blocklist>,
    overrides: Overrides,
}

impl BlocklistResolver {
    /// A resolver applying `blocklist`, if any.
    pub(crate) fn new(blocklist: Option<Blocklist>, overrides: Overrides) -> BlocklistResolver {
        BlocklistResolver {
            blocklist,
            overrides,
        }
    }

    /// Resolves `host` (port 0 in the answers; the connector sets the port).
    pub(crate) async fn resolve(&self, host: &str) -> io::Result<Vec<SocketAddr>> {
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        let unresolved = |source: io::Error| {
            io::Error::new(
                source.kind(),
                Unresolved {
                    host: host.to_owned(),
                    source,
                },
            )
        };
        let addrs: Vec<SocketAddr> = match self.overrides.get(&key) {
            Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
            None => tokio::net::lookup_host((host, 0))
                .await
                .map_err(unresolved)?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(unresolved(io::Error::new(
                io::ErrorKind::NotFound,
                "the name has no address",
            )));
        }
        self.check_answer(host, &addrs)?;
        tracing::debug!(host, ?addrs, "resolved");
        Ok(addrs)
    }

    /// Synapse's rule on an answer for `host`: if any address is in the
    /// blocklist, the whole answer is refused.
    pub(crate) fn check_answer(&self, host: &str, addrs: &[SocketAddr]) -> io::Result<()> {
        if let Some(list) = &self.blocklist {
            if let Some(blocked) = addrs.iter().find_map(|a| list.check(a.ip())) {
                return Err(io::Error::other(BlockedAnswer {
                    host: host.to_owned(),
                    blocked,
                }));
            }
        }
        Ok(())
    }
}

/// Every error in `err`'s chain, `err` first, with the error each
/// `io::Error` wraps right after it (an `io::Error`'s `source()` skips it).
/// For the error paths only.
pub(crate) fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut all = Vec::new();
    let mut cause = Some(err);
    while let Some(current) = cause {
        all.push(current);
        if let Some(inner) = current
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
        {
            all.push(inner as &(dyn std::error::Error + 'static));
        }
        cause = current.source();
    }
    all
}

/// The resolver's refusal ([`crate::Error::Blocked`]) or failure
/// ([`crate::Error::Resolve`]), when `err`'s chain holds one, found by type.
pub(crate) fn resolver_verdict(err: &(dyn std::error::Error + 'static)) -> Option<crate::Error> {
    causes(err).into_iter().find_map(|cause| {
        if let Some(blocked) = cause.downcast_ref::<BlockedAnswer>() {
            return Some(crate::Error::Blocked {
                host: blocked.host.clone(),
                blocked: blocked.blocked.clone(),
            });
        }
        cause
            .downcast_ref::<Unresolved>()
            .map(|unresolved| crate::Error::Resolve {
                host: unresolved.host.clone(),
                source: copy_io_error(&unresolved.source),
            })
    })
}

/// An owned copy of an I/O error found by reference in a chain: the OS
/// error code when there is one, else its kind and text.
pub(crate) fn copy_io_error(io: &io::Error) -> io::Error {
    match io.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(io.kind(), io.to_string()),
    }
}
