//! `egress fetch --engine reqwest`: the same request through a reqwest
//! client configured by `egress::reqwest::Routing`, to compare the adapter
//! with egress's own client (conformance/ runs both).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use egress::reqwest::Routing;
use egress::Purpose;
use http::Request;
use http_body_util::Full;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::{advice, exit, Failure, NetArgs};

/// What `fetch` passes on.
pub struct Options<'a> {
    pub net: &'a NetArgs,
    pub purpose: Purpose,
    pub location: bool,
    pub max_time: Duration,
    pub verbose: bool,
    pub output: Option<&'a Path>,
}

/// --resolve as the application's resolver: its answers still go through
/// the adapter's blocklist check (reqwest's own `resolve` overrides would not).
struct Overrides(Vec<(String, IpAddr)>);

impl Resolve for Overrides {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let mapped: Vec<SocketAddr> = self
            .0
            .iter()
            .filter(|(h, _)| h.eq_ignore_ascii_case(&host))
            .map(|(_, ip)| SocketAddr::new(*ip, 0))
            .collect();
        Box::pin(async move {
            let addrs = if mapped.is_empty() {
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect()
            } else {
                mapped
            };
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn tls(cacert: &[std::path::PathBuf]) -> Result<rustls::ClientConfig, Failure> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    for file in cacert {
        let bad =
            |e: &dyn std::fmt::Display| (exit::CONFIG, format!("--cacert {}: {e}", file.display()));
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(file).map_err(|e| bad(&e))? {
            roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| (exit::FAILURE, format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

fn fail(routing: &Routing, err: &reqwest::Error) -> Failure {
    if let Some(egress_error) = routing.classify(err) {
        return (exit::code(&egress_error), advice::message(&egress_error));
    }
    let code = if err.is_timeout() {
        exit::TIMEOUT
    } else if err.is_connect() {
        exit::CONNECT
    } else {
        exit::FAILURE
    };
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    (code, message)
}

pub async fn fetch(options: Options<'_>, request: Request<Full<Bytes>>) -> Result<u8, Failure> {
    let settings = options
        .net
        .config
        .settings()
        .map_err(|e| (exit::CONFIG, format!("configuration error: {e}")))?;
    let routing = Routing::new(Arc::new(settings))
        .with_resolver(Arc::new(Overrides(options.net.overrides()?)));
    let url: reqwest::Url = request
        .uri()
        .to_string()
        .parse()
        .map_err(|e| (exit::USAGE, format!("`{}`: {e}", request.uri())))?;
    routing
        .check(options.purpose, &url)
        .map_err(|e| (exit::code(&e), advice::message(&e)))?;
    let mut builder = routing.configure(
        options.purpose,
        reqwest::Client::builder().tls_backend_preconfigured(tls(&options.net.cacert)?),
    );
    if !options.location {
        builder = builder.redirect(reqwest::redirect::Policy::none());
    }
    let client = builder.timeout(options.max_time).build().map_err(|e| {
        (
            exit::FAILURE,
            format!("cannot build the reqwest client: {e}"),
        )
    })?;
    let (parts, body) = request.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap_or_else(|never| match never {})
        .to_bytes();
    let request: reqwest::Request = Request::from_parts(parts, body)
        .try_into()
        .map_err(|e: reqwest::Error| (exit::USAGE, e.to_string()))?;
    let mut response = client
        .execute(request)
        .await
        .map_err(|e| fail(&routing, &e))?;
    if options.verbose {
        let mut err = std::io::stderr().lock();
        for (name, value) in response.headers() {
            let _ = writeln!(err, "< {name}: {}", value.to_str().unwrap_or("<binary>"));
        }
    }
    let status = response.status();
    let mut out: Box<dyn Write> = match options.output {
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| {
            (
                exit::FAILURE,
                format!("cannot write {}: {e}", path.display()),
            )
        })?),
        None => Box::new(std::io::stdout().lock()),
    };
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(&routing, &e))? {
        out.write_all(&chunk)
            .map_err(|e| (exit::FAILURE, format!("cannot write the body: {e}")))?;
    }
    out.flush()
        .map_err(|e| (exit::FAILURE, format!("cannot write the body: {e}")))?;
    Ok(if status.is_success() {
        exit::OK
    } else {
        exit::HTTP_STATUS
    })
}
