//! A homeserver wiring egress's metrics and spans into what it already
//! runs: the Prometheus exporter as the `metrics` recorder, and JSON log
//! lines from `tracing-subscriber`, one per request when its span closes.
//!
//! ```text
//! HTTP_PROXY=http://alice:secret@127.0.0.1:3128 \
//!   cargo run -p egress --features yaml,metrics --example observability -- \
//!   [--config homeserver.yaml] push=http://push.example/ url_preview=http://… …
//! ```
//!
//! Each `PURPOSE=URL` argument is fetched (redirects followed) by that
//! purpose's client; the JSON lines go to stderr, the status of each request
//! and then the Prometheus text (`/metrics`) to stdout.

use std::process::ExitCode;

use egress::{HomeserverYaml, Outbound, ProxyEnv, ProxySettings, Purpose};
use http_body_util::BodyExt;
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("observability: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The recorder, before the first request (egress keeps the handles it
    //    gets at a series' first use). Histograms as Prometheus histograms,
    //    with buckets from 1 ms to about 16 s, rather than summaries.
    let buckets: Vec<f64> = (0..15).map(|i| 0.001 * 2f64.powi(i)).collect();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&buckets)?
        .install_recorder()?;

    // 2. Spans: a JSON line when each request span closes, with its fields
    //    (`http.request.method`, `server.address`, `egress.route`, …). The
    //    `egress::wire` events are at debug: RUST_LOG=info,egress::wire=debug
    //    adds them as lines of their own inside the span.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr)
        .init();

    // 3. egress as the homeserver builds it.
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let yaml = match args.iter().position(|a| a == "--config") {
        Some(i) if i + 1 < args.len() => {
            let path = args.remove(i + 1);
            args.remove(i);
            Some(HomeserverYaml::read(path.as_ref())?)
        }
        _ => None,
    };
    let env = ProxyEnv::from_vars(std::env::vars());
    let settings = ProxySettings::new(&env, yaml.as_ref())?;
    let outbound = Outbound::new(settings)?;

    for arg in &args {
        let (purpose, url) = arg
            .split_once('=')
            .ok_or_else(|| format!("`{arg}`: expected PURPOSE=URL"))?;
        let purpose: Purpose = purpose.parse()?;
        let client = outbound.client(purpose).follow_redirects(5);
        match client.get(url).await {
            Ok(response) => {
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                println!("{purpose} {url}: {status}, {} bytes", body.len());
            }
            Err(e) => println!("{purpose} {url}: {}", e.with_causes()),
        }
    }
    print!("{}", prometheus.render());
    Ok(())
}
