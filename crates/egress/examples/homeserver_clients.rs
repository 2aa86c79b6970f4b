//! The clients of a tuwunel-like homeserver, each a reqwest client
//! configured by `egress::reqwest::Routing` for its purpose.
//!
//! ```text
//! HTTPS_PROXY=http://alice:secret@proxy.internal:3128 \
//!   cargo run -p egress --features reqwest --example homeserver_clients -- \
//!   [--config homeserver.yaml] pusher=https://push.example/_matrix/push/v1/notify ...
//! ```
//!
//! Settings come from the environment plus homeserver.yaml when given, or
//! else from the builder with the homeserver's own key names (as a TOML-
//! configured server would pass them). Each `CLIENT=URL` argument is
//! checked and fetched by that client; the result goes to stdout.

use std::sync::Arc;

use egress::reqwest::Routing;
use egress::{HomeserverYaml, ProxyEnv, ProxySettings, Purpose};
use reqwest::{Client, ClientBuilder};

/// The ten clients, named as tuwunel names them, and the purpose whose
/// rules each follows.
pub const CLIENTS: [(&str, Purpose); 10] = [
    // General requests to admin-configured endpoints: no blocklist.
    ("default", Purpose::PhoneHome),
    ("url_preview", Purpose::UrlPreview),
    ("extern_media", Purpose::Media),
    // Server discovery (.well-known/matrix/server) is federation.
    ("well_known", Purpose::Federation),
    ("federation", Purpose::Federation),
    ("synapse", Purpose::Federation),
    ("sender", Purpose::Federation),
    ("appservice", Purpose::Appservice),
    ("pusher", Purpose::Push),
    ("oauth", Purpose::Oidc),
];

/// The clients, built from `base` (the application's own settings: TLS,
/// user agent, pools, timeouts) with egress's rules on top.
pub struct Clients {
    routing: Routing,
    clients: Vec<(&'static str, Purpose, Client)>,
}

impl Clients {
    /// Builds every client. `base` makes the application's common builder.
    pub fn new(
        routing: Routing,
        base: impl Fn() -> ClientBuilder,
    ) -> Result<Clients, reqwest::Error> {
        let mut clients = Vec::with_capacity(CLIENTS.len());
        for (name, purpose) in CLIENTS {
            // The application's settings first, egress's on top.
            let mut builder = routing.configure(purpose, base());
            if matches!(name, "federation" | "synapse" | "sender" | "oauth") {
                // tuwunel follows no redirects on these: none to check either.
                builder = builder.redirect(reqwest::redirect::Policy::none());
            }
            clients.push((name, purpose, builder.build()?));
        }
        Ok(Clients { routing, clients })
    }

    /// The client named `name` and its purpose.
    pub fn get(&self, name: &str) -> Option<(Purpose, &Client)> {
        self.clients
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, purpose, client)| (*purpose, client))
    }

    /// `GET url` with the client named `name`: the status, or egress's
    /// account of the failure when it has one.
    pub async fn fetch(&self, name: &str, url: &str) -> Result<(u16, String), String> {
        let (purpose, client) = self
            .get(name)
            .ok_or_else(|| format!("no client named `{name}`"))?;
        let url: reqwest::Url = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
        // What reqwest cannot refuse by itself: an IP literal in the blocklist.
        self.routing
            .check(purpose, &url)
            .map_err(|e| e.with_causes())?;
        let response = client
            .get(url)
            .send()
            .await
            .map_err(|e| self.describe(&e))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| self.describe(&e))?;
        Ok((status, body))
    }

    fn describe(&self, err: &reqwest::Error) -> String {
        if let Some(egress_error) = self.routing.classify(err) {
            return egress_error.with_causes();
        }
        // Any other reqwest error, with its causes.
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// The settings: the environment, then homeserver.yaml if given, else the
/// builder with a TOML server's key names.
pub fn settings(env: &ProxyEnv, yaml: Option<&str>) -> Result<ProxySettings, egress::ConfigError> {
    match yaml {
        Some(text) => ProxySettings::new(env, Some(&HomeserverYaml::parse(text)?)),
        None => ProxySettings::builder(env)
            .ip_range_denylist(
                egress::DEFAULT_IP_RANGE_BLOCKLIST.iter().copied(),
                "global.ip_range_denylist",
            )
            .build(),
    }
}

/// rustls with ring and the system's roots (SSL_CERT_FILE honoured).
fn system_tls() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let yaml = match args.iter().position(|a| a == "--config") {
        Some(i) if i + 1 < args.len() => {
            let path = args.remove(i + 1);
            args.remove(i);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text),
                Err(e) => {
                    eprintln!("cannot read {path}: {e}");
                    return std::process::ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let env = ProxyEnv::from_vars(std::env::vars());
    let settings = match settings(&env, yaml.as_deref()) {
        Ok(settings) => Arc::new(settings),
        Err(e) => {
            eprintln!("configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let routing = Routing::new(settings);
    let clients = match Clients::new(routing, || {
        Client::builder().tls_backend_preconfigured(system_tls())
    }) {
        Ok(clients) => clients,
        Err(e) => {
            eprintln!("cannot build the clients: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for arg in &args {
        let Some((name, url)) = arg.split_once('=') else {
            eprintln!("expected CLIENT=URL, got `{arg}`");
            return std::process::ExitCode::from(2);
        };
        match clients.fetch(name, url).await {
            Ok((status, _)) => println!("{name} {url}: {status}"),
            Err(e) => {
                failed = true;
                println!("{name} {url}: {e}");
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
