//! # egress
//!
//! Outbound HTTP(S) for a Matrix homeserver through corporate forward
//! proxies, with Synapse's documented `http_proxy` / `https_proxy` /
//! `no_proxy` semantics, its IP range blocklists and its TLS switches.
//!
//! Data flows one way, and every connection goes through the decision:
//!
//! 1. **Settings** ([`ProxyEnv`] and homeserver.yaml or a builder →
//!    [`ProxySettings`]) — pure;
//! 2. **the decision** ([`Route::decide`]: settings + [`Purpose`] + URL →
//!    [`Route`] and its [`Reason`]) — pure, so `egress explain` prints
//!    exactly what a client will do;
//! 3. **clients** ([`Outbound`] → one [`Client`] per purpose, pooled) and
//!    **connectors** ([`Connector`], a `tower::Service<Uri>` for your own
//!    hyper client): each decides the route of every request and redirect
//!    hop and applies it — the blocklist on every direct connection, the
//!    proxy (`CONNECT` or absolute-form), the TLS policy. Nothing public
//!    turns a hand-made route into a connection;
//! 4. **federation** ([`Federation`]): server discovery, signed
//!    requests, server keys and remote media on top of the clients.
//!
//! ## Settings and the decision
//!
//! A homeserver with its own configuration format passes its values to the
//! builder with its own key names; reasons and errors then name *its* keys.
//! (With the `yaml` feature, `ProxySettings::new(&env, Some(&yaml))` reads
//! Synapse's homeserver.yaml through the same builder.)
//!
//! ```
//! use egress::{ProxyEnv, ProxySettings, Purpose, Route};
//!
//! // The library never reads the process environment: pass it in.
//! let env = ProxyEnv::from_vars([
//!     ("HTTPS_PROXY", "http://alice:s3cret@proxy.example:3128"),
//!     ("NO_PROXY", "internal.example,10.0.0.0/8"),
//! ]);
//! let settings = ProxySettings::builder(&env)
//!     .ip_range_allowlist(["10.1.0.0/16"], "global.ip_range_allowlist")
//!     .build()
//!     .unwrap();
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
//!
//! // An address in the caller's allowlist is not; no_proxy sends it direct,
//! // and the reason names the caller's key for the allowlist.
//! let url = "https://10.1.2.3/".parse().unwrap();
//! let route = Route::decide(&settings, Purpose::Push, &url);
//! assert_eq!(route.kind(), "direct");
//! assert!(route.explain().contains("no_proxy entry `10.0.0.0/8`"));
//! ```
//!
//! ## Clients
//!
//! An [`Outbound`] is built once (trust stores loaded, connectors made) and
//! hands out a [`Client`] per purpose; all share one pool. Responses stream:
//! the connection goes back to the pool when the body has been read.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use egress::{Error, Outbound, ProxySettings, Purpose};
//! use http_body_util::BodyExt;
//!
//! # let port = hello_server().await;
//! let outbound = Outbound::new(ProxySettings::none())?;
//!
//! // Push has the general blocklist, which holds 127.0.0.0/8: refused
//! // before any connection is made.
//! let url = format!("http://127.0.0.1:{port}/_matrix/push/v1/notify");
//! let err = outbound.client(Purpose::Push).get(&url).await.unwrap_err();
//! assert!(matches!(err, Error::Refused { .. }), "{err}");
//!
//! // OpenID Connect has no blocklist, and no proxy is set: direct.
//! let url = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
//! let response = outbound.client(Purpose::Oidc).get(&url).await?;
//! assert_eq!(response.status(), 200);
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(&body[..], b"hello");
//! assert_eq!(outbound.pool_stats().idle_connections, 1);
//! # Ok(())
//! # }
//! # async fn hello_server() -> u16 {
//! #     use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! #     let port = listener.local_addr().unwrap().port();
//! #     tokio::spawn(async move {
//! #         while let Ok((mut tcp, _)) = listener.accept().await {
//! #             tokio::spawn(async move {
//! #                 let mut buf = [0u8; 4096];
//! #                 while let Ok(n) = tcp.read(&mut buf).await {
//! #                     if n == 0 { break }
//! #                     let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
//! #                     if tcp.write_all(reply).await.is_err() { break }
//! #                 }
//! #             });
//! #         }
//! #     });
//! #     port
//! # }
//! ```
//!
//! ## Your own hyper client
//!
//! [`Outbound::connector`] gives a `tower::Service<Uri>` for hyper-util's
//! legacy client: each connection is routed and checked the same way.
//! (That client does not add `Proxy-Authorization` to forwarded `http://`
//! requests; [`Client`] does.)
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use egress::{Outbound, ProxySettings, Purpose};
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//!
//! # let port = hello_server().await;
//! let outbound = Outbound::new(ProxySettings::none())?;
//! let hyper = Client::builder(TokioExecutor::new())
//!     .build::<_, http_body_util::Empty<bytes::Bytes>>(outbound.connector(Purpose::Oidc));
//! let response = hyper.get(format!("http://127.0.0.1:{port}/").parse()?).await?;
//! assert_eq!(response.status(), 200);
//!
//! // The same connector refuses what the purpose's blocklist refuses.
//! let hyper = Client::builder(TokioExecutor::new())
//!     .build::<_, http_body_util::Empty<bytes::Bytes>>(outbound.connector(Purpose::Push));
//! assert!(hyper.get(format!("http://127.0.0.1:{port}/").parse()?).await.is_err());
//! # Ok(())
//! # }
//! # async fn hello_server() -> u16 {
//! #     use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! #     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! #     let port = listener.local_addr().unwrap().port();
//! #     tokio::spawn(async move {
//! #         while let Ok((mut tcp, _)) = listener.accept().await {
//! #             tokio::spawn(async move {
//! #                 let mut buf = [0u8; 4096];
//! #                 while let Ok(n) = tcp.read(&mut buf).await {
//! #                     if n == 0 { break }
//! #                     let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
//! #                     if tcp.write_all(reply).await.is_err() { break }
//! #                 }
//! #             });
//! #         }
//! #     });
//! #     port
//! # }
//! ```
//!
//! ## Errors
//!
//! [`Error`] states what happened as typed facts — the proxy's
//! [`StatusCode`](http::StatusCode), the [`TimeoutStep`] that ran out, the
//! I/O error as [`source()`](std::error::Error::source) — and never shows a
//! password. What to do about it is the application's to say.
//!
//! ## Cargo features
//!
//! * `yaml` (default): [`HomeserverYaml`], reading Synapse's homeserver.yaml;
//! * `doctor` (default): [`check_proxy`] and certificate details;
//! * `federation` (default): [`Federation`], with hickory for SRV and ruma
//!   for Matrix types ([`ServerName`], [`MxcUri`], canonical JSON, signatures);
//! * `reqwest` (off by default): [`reqwest::Routing`], configuring reqwest
//!   0.13 clients with the same decision and blocklists (no TLS backend forced).

#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

mod blocklist;
mod client;
mod config_error;
mod connect;
#[cfg(feature = "doctor")]
mod doctor;
mod env;
mod error;
#[cfg(feature = "federation")]
#[cfg(feature = "federation")]
mod federation;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "yaml")]
mod homeserver;
mod instruments;
mod ip_table;
mod no_proxy;
mod proxy_url;
mod purpose;
#[cfg(feature = "reqwest")]
mod reqwest_adapter;
mod route;
#[cfg(feature = "serve")]
pub mod serve;
mod settings;
mod tls_policy;

pub use blocklist::{Blocked, Blocklist, DEFAULT_IP_RANGE_BLOCKLIST};
pub use client::{Body, Client, Outbound, OutboundBuilder, PoolStats, RequestBody, MAX_REDIRECTS};
pub use config_error::ConfigError;
pub use connect::stream::ConnectedStream;
pub use connect::{Connector, Timeouts};
#[cfg(feature = "doctor")]
pub use doctor::{check_proxy, CertificateInfo, ProxyCheck, ProxyCheckStep};
pub use env::{EnvVar, ProxyEnv};
pub use error::{Error, TimeoutStep};
#[cfg(all(feature = "federation", feature = "doctor"))]
pub use federation::TargetCheck;
#[cfg(feature = "federation")]
pub use federation::{
    canonical_json, check_server_keys, check_server_name, parse_server_name, to_canonical,
    to_canonical_object, verify_json, CanonicalJsonObject, CanonicalJsonValue, Discovery,
    DnsSetupError, Federation, FederationError, InvalidServerName, MxcUri, OwnedMxcUri,
    OwnedServerName, Resolution, ServerKeys, ServerName, SigningError, SigningKey,
    DEFAULT_MEDIA_LIMIT, WELL_KNOWN_CACHE_ENTRIES, WELL_KNOWN_MAX_BYTES,
};
#[cfg(feature = "yaml")]
pub use homeserver::{HomeserverYaml, Key};
pub use no_proxy::{NoProxy, NoProxyMatch, NoProxyWarning};
pub use proxy_url::{
    mask_password, Credentials, Host, ProxyScheme, ProxyUrl, ProxyUrlError, DEFAULT_PROXY_PORT,
};
pub use purpose::{BlocklistKind, ProxyUse, Purpose, TlsKind, UnknownPurpose};
pub use route::{Reason, Route, Scheme};
pub use settings::{Blocklists, ProxySettings, ProxySettingsBuilder, Source, Sourced};
pub use tls_policy::TlsPolicy;

/// The `reqwest` feature: egress's proxy rules and blocklists installed into
/// the `reqwest::ClientBuilder`s an application already builds (see
/// [`reqwest::Routing`]).
#[cfg(feature = "reqwest")]
pub mod reqwest {
    pub use crate::reqwest_adapter::{AppResolver, Routing};
}
