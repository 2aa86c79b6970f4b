//! # egress
//!
//! Outbound HTTP(S) for a Matrix homeserver through corporate forward
//! proxies, with Synapse's documented `http_proxy` / `https_proxy` /
//! `no_proxy` semantics and homeserver.yaml keys.
//!
//! Data flows one way:
//!
//! * configuration ([`ProxyEnv`], [`HomeserverYaml`] → [`ProxySettings`] with
//!   [`NoProxy`], [`Blocklist`]s and [`TlsPolicy`]) — pure;
//! * the routing decision ([`Route::decide`]: settings + [`Purpose`] + URL →
//!   [`Route`] and its [`Reason`]) — pure, so `egress explain` prints exactly
//!   what a client will do.
//!
//! ```
//! use egress::{HomeserverYaml, ProxyEnv, ProxySettings, Purpose, Route};
//!
//! // The library never reads the process environment: pass it in.
//! let env = ProxyEnv::from_vars([
//!     ("HTTPS_PROXY", "http://alice:s3cret@proxy.example:3128"),
//!     ("NO_PROXY", "internal.example,10.0.0.0/8"),
//! ]);
//! let yaml = HomeserverYaml::parse("ip_range_whitelist: ['10.1.0.0/16']").unwrap();
//! let settings = ProxySettings::new(&env, Some(&yaml)).unwrap();
//!
//! let url = "https://push.example.org/_matrix/push/v1/notify".parse().unwrap();
//! let route = Route::decide(&settings, Purpose::Push, &url);
//! assert_eq!(route.mode(), Some("connect"));
//! assert_eq!(
//!     route.explain(),
//!     "through proxy http://alice:***@proxy.example:3128 (CONNECT tunnel): \
//!      https_proxy is set by environment variable HTTPS_PROXY and no no_proxy \
//!      entry matches push.example.org"
//! );
//!
//! // Application services never use the proxy.
//! let url = "https://bridge.example.org/".parse().unwrap();
//! let route = Route::decide(&settings, Purpose::Appservice, &url);
//! assert_eq!(route.kind(), "direct");
//!
//! // An IP literal in the blocklist is refused, proxy or not.
//! let url = "https://10.2.0.1/".parse().unwrap();
//! let route = Route::decide(&settings, Purpose::Push, &url);
//! assert_eq!(route.kind(), "refused");
//! ```

#![warn(missing_docs)]

pub mod blocklist;
pub mod client;
pub mod connect;
pub mod doctor;
pub mod env;
mod error;
#[cfg(feature = "federation")]
pub mod federation;
pub mod homeserver;
mod ip_table;
pub mod no_proxy;
pub mod proxy_url;
pub mod purpose;
pub mod route;
pub mod settings;
pub mod tls_policy;

pub use blocklist::{Blocked, Blocklist};
pub use client::{Body, Client, Outbound, OutboundBuilder};
pub use connect::{Connector, Timeouts};
pub use env::ProxyEnv;
pub use error::{ConfigError, Error};
pub use homeserver::HomeserverYaml;
pub use no_proxy::{NoProxy, NoProxyMatch};
pub use proxy_url::{Credentials, ProxyScheme, ProxyUrl};
pub use purpose::Purpose;
pub use route::{Reason, Route, Scheme};
pub use settings::{Blocklists, ProxySettings, Source, Sourced};
pub use tls_policy::TlsPolicy;
