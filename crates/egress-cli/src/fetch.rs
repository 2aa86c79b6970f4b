//! `egress fetch`: a curl for a homeserver's outbound traffic.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use egress::{Error, Purpose};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};

use crate::{advice, exit, parse_purpose, Failure, NetArgs};

/// Make one request the way the homeserver would: same proxy, no_proxy,
/// blocklist and TLS rules for the chosen connection type.
///
/// The body goes to stdout (or -o FILE). With -v, stderr shows the route and
/// why, the exchange with the proxy (CONNECT line, the proxy's status line),
/// and the response status and headers; credentials are always masked.
///
/// Examples:
///
///   HTTPS_PROXY=http://alice:secret@proxy.example:3128 egress fetch -v https://matrix.org/_matrix/federation/v1/version
///
///   egress fetch --config /etc/synapse/homeserver.yaml --purpose url_preview -L https://example.com/
#[derive(clap::Args)]
#[command(verbatim_doc_comment, after_help = exit::HELP)]
pub struct Args {
    #[command(flatten)]
    net: NetArgs,

    /// The connection type whose rules apply.
    #[arg(long, value_name = "PURPOSE", default_value = "push", value_parser = parse_purpose)]
    purpose: Purpose,

    /// Request method (default GET, or POST with -d).
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    method: Option<String>,

    /// Extra request header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,

    /// Request body; `@FILE` reads it from a file.
    #[arg(short = 'd', long = "data", value_name = "DATA")]
    data: Option<String>,

    /// Write the body to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,

    /// Follow redirects (at most 10), routing and checking every hop anew.
    #[arg(short = 'L', long = "location")]
    location: bool,

    /// Time limit for the whole request, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    max_time: f64,

    /// Show the route, the proxy exchange and the response head on stderr.
    #[arg(short, long)]
    verbose: bool,

    /// Which client makes the request: egress's own, or a reqwest client
    /// configured by `egress::reqwest::Routing` (to compare the two).
    #[arg(long, value_enum, default_value_t = Engine::Egress)]
    engine: Engine,

    /// The URL to request.
    url: String,
}

/// The client that makes the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// egress's own client.
    Egress,
    /// reqwest 0.13 configured by `egress::reqwest::Routing`.
    Reqwest,
}

impl Args {
    /// Whether -v asks for the wire log.
    pub fn verbose(&self) -> bool {
        self.verbose
    }
}

pub async fn run(args: Args) -> ExitCode {
    let code = fetch(args).await.unwrap_or_else(|(code, message)| {
        eprintln!("egress: {message}");
        code
    });
    ExitCode::from(code)
}

fn fail(err: Error) -> Failure {
    (exit::code(&err), advice::message(&err))
}

fn usage(message: String) -> Failure {
    (exit::USAGE, message)
}

async fn fetch(args: Args) -> Result<u8, Failure> {
    if args.engine == Engine::Reqwest {
        let request = build_request(&args)?;
        let engine = crate::fetch_reqwest::Options {
            net: &args.net,
            purpose: args.purpose,
            location: args.location,
            max_time: Duration::from_secs_f64(args.max_time.max(0.001)),
            verbose: args.verbose,
            output: args.output.as_deref(),
        };
        return crate::fetch_reqwest::fetch(engine, request).await;
    }
    let outbound = args.net.outbound()?;
    let request = build_request(&args)?;
    let mut client = outbound.client(args.purpose);
    if args.location {
        client = client.follow_redirects(egress::MAX_REDIRECTS);
    }
    let limit = Duration::from_secs_f64(args.max_time.max(0.001));
    let exchange = async {
        let response = client.send(request).await.map_err(fail)?;
        if args.verbose {
            let mut err = std::io::stderr().lock();
            for (name, value) in response.headers() {
                let _ = writeln!(err, "< {name}: {}", value.to_str().unwrap_or("<binary>"));
            }
        }
        let status = response.status();
        let mut out: Box<dyn Write> = match &args.output {
            Some(path) => Box::new(std::fs::File::create(path).map_err(|e| {
                (
                    exit::FAILURE,
                    format!("cannot write {}: {e}", path.display()),
                )
            })?),
            None => Box::new(std::io::stdout().lock()),
        };
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                (
                    exit::code(&e),
                    format!("reading the response body failed: {}", advice::message(&e)),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data)
                    .map_err(|e| (exit::FAILURE, format!("cannot write the body: {e}")))?;
            }
        }
        out.flush()
            .map_err(|e| (exit::FAILURE, format!("cannot write the body: {e}")))?;
        Ok::<_, Failure>(if status.is_success() {
            exit::OK
        } else {
            exit::HTTP_STATUS
        })
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(result) => result,
        Err(_) => Err((
            exit::TIMEOUT,
            format!("timed out after {limit:?} (--max-time)"),
        )),
    }
}

fn build_request(args: &Args) -> Result<Request<Full<Bytes>>, Failure> {
    let body = match &args.data {
        Some(data) => match data.strip_prefix('@') {
            Some(file) => std::fs::read(file).map_err(|e| usage(format!("-d @{file}: {e}")))?,
            None => data.clone().into_bytes(),
        },
        None => Vec::new(),
    };
    let method = match (&args.method, &args.data) {
        (Some(m), _) => Method::from_bytes(m.as_bytes())
            .map_err(|_| usage(format!("-X `{m}` is not an HTTP method")))?,
        (None, Some(_)) => Method::POST,
        (None, None) => Method::GET,
    };
    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|e| usage(format!("`{}` is not a valid URL: {e}", args.url)))?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from(body)))
        .expect("valid parts");
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| usage(format!("-H `{header}`: expected `Name: value`")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| usage(format!("-H `{header}`: bad header name")))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| usage(format!("-H `{header}`: bad header value")))?;
        request.headers_mut().append(name, value);
    }
    if args.data.is_some() && !request.headers().contains_key(CONTENT_TYPE) {
        request.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    }
    Ok(request)
}
