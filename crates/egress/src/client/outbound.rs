//! [`Outbound`]: a homeserver's outbound HTTP, built once from the settings.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::pool::{Pool, PoolStats};
use super::Client;
use crate::connect::tls::TlsConfigs;
use crate::connect::{Connector, Shared};
use crate::{Error, ProxySettings, Purpose, Timeouts};

/// Builds an [`Outbound`].
#[derive(Debug)]
#[must_use]
pub struct OutboundBuilder {
    settings: Arc<ProxySettings>,
    timeouts: Timeouts,
    extra_cas: Vec<PathBuf>,
    overrides: HashMap<String, Vec<IpAddr>>,
    max_idle_per_key: usize,
    idle_timeout: Duration,
}

impl OutboundBuilder {
    /// Replaces the default time limits.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Trusts the CA certificates of a PEM file too, for regular TLS
    /// (the CLI's `--cacert`).
    pub fn add_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.extra_cas.push(path.into());
        self
    }

    /// Resolves `host` to `addrs` instead of asking DNS (curl's `--resolve`).
    /// The blocklists still apply to these addresses.
    pub fn resolve(mut self, host: &str, addrs: &[IpAddr]) -> Self {
        self.overrides
            .entry(host.trim_end_matches('.').to_ascii_lowercase())
            .or_default()
            .extend_from_slice(addrs);
        self
    }

    /// How many idle connections to keep per route (default 32).
    pub fn max_idle_per_key(mut self, n: usize) -> Self {
        self.max_idle_per_key = n;
        self
    }

    /// How long an idle connection is kept (default 2 minutes, as Synapse).
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Loads the trust stores and builds the connectors.
    pub fn build(self) -> Result<Outbound, Error> {
        let tls = TlsConfigs::new(self.settings.tls(), &self.extra_cas)?;
        let shared = Shared::new(self.settings, tls, self.timeouts, Arc::new(self.overrides));
        let pool = Pool::new(
            self.max_idle_per_key,
            self.idle_timeout,
            shared.instruments.clone(),
        );
        Ok(Outbound {
            shared: Arc::new(shared),
            pool: Arc::new(pool),
        })
    }
}

/// A homeserver's outbound HTTP: pooled clients per purpose, sharing one
/// pool, one set of TLS configurations and the settings. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    pub(crate) shared: Arc<Shared>,
    pub(crate) pool: Arc<Pool>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("settings", &self.shared.settings)
            .field("timeouts", &self.shared.timeouts)
            .field("pool", &self.pool.stats())
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// Defaults: the timeouts of [`Timeouts::default`], system trust store.
    pub fn new(settings: ProxySettings) -> Result<Outbound, Error> {
        Outbound::builder(settings).build()
    }

    /// A builder to set timeouts, extra CAs, resolver overrides and pool limits.
    pub fn builder(settings: impl Into<Arc<ProxySettings>>) -> OutboundBuilder {
        OutboundBuilder {
            settings: settings.into(),
            timeouts: Timeouts::default(),
            extra_cas: Vec::new(),
            overrides: HashMap::new(),
            max_idle_per_key: 32,
            idle_timeout: Duration::from_secs(120),
        }
    }

    /// The settings in use.
    pub fn settings(&self) -> &ProxySettings {
        &self.shared.settings
    }

    /// The time limits in use.
    pub fn timeouts(&self) -> &Timeouts {
        &self.shared.timeouts
    }

    /// The pooled client for a purpose. Redirects are off; see
    /// [`Client::follow_redirects`].
    pub fn client(&self, purpose: Purpose) -> Client {
        Client::new(self.clone(), purpose)
    }

    /// The connector for a purpose, for use with your own hyper client: it
    /// decides the route of each URI and applies the same rules.
    pub fn connector(&self, purpose: Purpose) -> Connector {
        Connector::new(self.shared.clone(), purpose)
    }

    /// Idle pooled connections and the routes they are kept under.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }
}
