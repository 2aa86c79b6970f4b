//! `egress federation`: test federation through the proxy from inside the
//! network, make signed requests, download remote media, make a signing key.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use egress::Purpose;
use egress::{
    Federation, FederationError, OwnedMxcUri, OwnedServerName, ServerName, SigningKey,
    DEFAULT_MEDIA_LIMIT,
};
use http::Method;
use serde_json::{json, Value};

use crate::{exit, Failure, NetArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    Test(TestArgs),
    Get(GetArgs),
    Media(MediaArgs),
    GenerateKey(GenerateKeyArgs),
}

/// Options shared by the commands that talk to a server.
#[derive(clap::Args)]
struct FedNetArgs {
    #[command(flatten)]
    net: NetArgs,

    /// DNS server for SRV lookups (ADDR:PORT); default: the system's.
    #[arg(long, value_name = "ADDR:PORT")]
    dns_server: Option<SocketAddr>,
}

/// Signing options.
#[derive(clap::Args)]
struct SignArgs {
    /// This server's name: the origin of signed requests.
    #[arg(long, value_name = "NAME")]
    origin: String,

    /// The signing key, in Synapse's signing.key format.
    #[arg(long, value_name = "FILE")]
    signing_key: PathBuf,
}

/// Test federation with a server, through your proxy, step by step.
///
/// Prints each discovery step (well-known and its cache time, SRV answers,
/// the targets in order), the route of each connection (proxy or direct, and
/// why), the TLS certificate and its verification against the server name,
/// /_matrix/federation/v1/version and the server keys with their checks. The
/// last line is `federation OK` or `federation FAILED: <first reason>`.
///
/// Exit codes: 0 OK, 1 FAILED, 2 usage error, 78 configuration error.
///
/// Example:
///
///   HTTPS_PROXY=http://proxy.example:3128 egress federation test matrix.org
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
struct TestArgs {
    #[command(flatten)]
    net: FedNetArgs,

    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,

    /// The server name to test, e.g. matrix.org or example.com:8448.
    server_name: String,
}

/// A signed federation GET; the body goes to stdout.
///
/// Exit codes: 0 for 2xx, 22 for another status, 1 when no target answers.
///
/// Example:
///
///   egress federation get matrix.org /_matrix/federation/v1/version --origin example.com --signing-key signing.key
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
struct GetArgs {
    #[command(flatten)]
    net: FedNetArgs,
    #[command(flatten)]
    sign: SignArgs,
    /// The server name.
    server_name: String,
    /// The path and query, e.g. /_matrix/federation/v1/version
    path: String,
}

/// Download remote media (mxc://server/mediaId) through the proxy.
///
/// Uses the authenticated federation endpoint (signed), following a CDN
/// redirect as a new, routed hop, and the legacy endpoint when the server
/// does not know the new one.
#[derive(clap::Args)]
struct MediaArgs {
    #[command(flatten)]
    net: FedNetArgs,
    #[command(flatten)]
    sign: SignArgs,
    /// Where to write the media.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// The most bytes to download.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MEDIA_LIMIT)]
    max_size: u64,
    /// mxc://server/mediaId
    mxc: String,
}

/// Write a new signing key in Synapse's signing.key format.
#[derive(clap::Args)]
struct GenerateKeyArgs {
    /// The file to write (refuses to overwrite one).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        default_value = "signing.key"
    )]
    output: PathBuf,
}

pub async fn run(args: Args) -> ExitCode {
    let result = match args.command {
        Sub::GenerateKey(a) => return generate_key(a),
        Sub::Test(a) => test(a).await,
        Sub::Get(a) => get(a).await,
        Sub::Media(a) => media(a).await,
    };
    ExitCode::from(result.unwrap_or_else(|(code, message)| {
        eprintln!("egress: {message}");
        code
    }))
}

fn generate_key(args: GenerateKeyArgs) -> ExitCode {
    let key = SigningKey::generate();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&args.output);
    match file.and_then(|mut f| f.write_all(key.to_file_line().as_bytes())) {
        Ok(()) => {
            println!(
                "wrote {} ({}, public key {})",
                args.output.display(),
                key.key_id(),
                key.public_key()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egress: cannot write {}: {e}", args.output.display());
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn build(net: &FedNetArgs) -> Result<Federation, Failure> {
    let outbound = net.net.outbound()?;
    Federation::new(outbound, net.dns_server).map_err(|e| (exit::FAILURE, e.to_string()))
}

fn signed(federation: Federation, sign: &SignArgs) -> Result<Federation, Failure> {
    let text = std::fs::read_to_string(&sign.signing_key).map_err(|e| {
        (
            exit::CONFIG,
            format!("cannot read {}: {e}", sign.signing_key.display()),
        )
    })?;
    let key = SigningKey::parse(&text)
        .map_err(|e| (exit::CONFIG, format!("{}: {e}", sign.signing_key.display())))?;
    let origin = egress::parse_server_name(&sign.origin).map_err(|e| {
        (
            exit::USAGE,
            format!("--origin: not a valid Matrix server name: {e}"),
        )
    })?;
    Ok(federation.with_signing_key(&origin, key))
}

fn server_name(text: &str) -> Result<OwnedServerName, Failure> {
    // Synapse's rule (ruma's type alone takes empty labels and port 0).
    egress::parse_server_name(text)
        .map_err(|e| (exit::USAGE, format!("not a valid Matrix server name: {e}")))
}

async fn get(args: GetArgs) -> Result<u8, Failure> {
    let server = server_name(&args.server_name)?;
    let federation = build(&args.net)?;
    let federation = signed(federation, &args.sign)?;
    let (_, response) = federation
        .request(Purpose::Federation, Method::GET, &server, &args.path, None)
        .await
        .map_err(|e| (exit::FAILURE, e.to_string()))?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| {
            (
                exit::code(&e),
                format!("reading the body failed: {}", crate::advice::message(&e)),
            )
        })?
        .to_bytes();
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&body).and_then(|_| out.flush());
    Ok(if status.is_success() {
        exit::OK
    } else {
        exit::HTTP_STATUS
    })
}

async fn media(args: MediaArgs) -> Result<u8, Failure> {
    let mxc = OwnedMxcUri::from(args.mxc.as_str());
    mxc.validate().map_err(|e| {
        (
            exit::USAGE,
            format!("`{}` is not an mxc://server/mediaId URI: {e}", args.mxc),
        )
    })?;
    let federation = build(&args.net)?;
    let federation = signed(federation, &args.sign)?;
    let partial = args.output.with_extension("part");
    let mut file = std::fs::File::create(&partial).map_err(|e| {
        (
            exit::FAILURE,
            format!("cannot write {}: {e}", partial.display()),
        )
    })?;
    let result = federation
        .download_media(&mxc, &mut file, args.max_size)
        .await;
    drop(file);
    match result {
        Ok(content_type) => {
            std::fs::rename(&partial, &args.output).map_err(|e| {
                (
                    exit::FAILURE,
                    format!("cannot write {}: {e}", args.output.display()),
                )
            })?;
            let size = std::fs::metadata(&args.output)
                .map(|m| m.len())
                .unwrap_or(0);
            eprintln!(
                "wrote {} ({size} bytes, {})",
                args.output.display(),
                content_type.as_deref().unwrap_or("no content type")
            );
            Ok(exit::OK)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err((exit::FAILURE, e.to_string()))
        }
    }
}

/// One line of the test report.
struct Report {
    json: bool,
    lines: Vec<Value>,
}

impl Report {
    fn step(&mut self, section: &str, text: String) {
        if !self.json {
            println!("{section:10} {text}");
        }
        self.lines.push(json!({"step": section, "detail": text}));
    }
}

async fn test(args: TestArgs) -> Result<u8, Failure> {
    let server = server_name(&args.server_name)?;
    let federation = build(&args.net)?;
    let mut report = Report {
        json: args.json,
        lines: Vec::new(),
    };
    let outcome = run_test(&server, &federation, &mut report).await;
    let (ok, last) = match &outcome {
        Ok(()) => (true, "federation OK".to_owned()),
        Err(reason) => (false, format!("federation FAILED: {reason}")),
    };
    if args.json {
        println!(
            "{}",
            json!({"server_name": server.to_string(), "ok": ok, "steps": report.lines, "result": last})
        );
    } else {
        println!("{last}");
    }
    Ok(if ok { exit::OK } else { exit::FAILURE })
}

async fn run_test(
    server: &ServerName,
    federation: &Federation,
    report: &mut Report,
) -> Result<(), String> {
    let (resolution, checks) = federation.check_targets(server).await;
    for step in &resolution.steps {
        report.step("discovery", step.clone());
    }
    if resolution.targets.is_empty() {
        let reason = resolution.steps.last().cloned().unwrap_or_default();
        return Err(format!("{server} does not offer federation: {reason}"));
    }
    let targets: Vec<String> = resolution
        .targets
        .iter()
        .map(|(h, p)| crate::authority(h, *p))
        .collect();
    report.step(
        "targets",
        format!(
            "{} (TLS name {}, Host {})",
            targets.join(", "),
            resolution.tls_name,
            resolution.host_header
        ),
    );
    let mut first_error = None;
    for check in &checks {
        let (host, port) = (&check.host, check.port);
        report.step("route", format!("{host}:{port}: {}", check.route));
        match &check.result {
            Ok(Some(cert)) => report.step(
                "tls",
                format!(
                    "certificate for {}: subject {}, issuer {}, expires {}; verification OK",
                    resolution.tls_name, cert.subject, cert.issuer, cert.not_after
                ),
            ),
            Ok(None) => {}
            Err(e) => {
                let e = e.with_causes();
                report.step("tls", format!("{host}:{port}: {e}"));
                first_error.get_or_insert(e);
            }
        }
    }
    if !checks.iter().any(|c| c.result.is_ok()) {
        return Err(first_error.unwrap_or_else(|| "no target".to_owned()));
    }
    let version = federation
        .json(
            Purpose::Federation,
            Method::GET,
            server,
            "/_matrix/federation/v1/version",
            None,
        )
        .await
        .map_err(|e: FederationError| e.to_string())?;
    report.step(
        "version",
        format!(
            "{} {}",
            version["server"]["name"].as_str().unwrap_or("?"),
            version["server"]["version"].as_str().unwrap_or("?")
        ),
    );
    let keys = federation
        .server_keys(server)
        .await
        .map_err(|e| e.to_string())?;
    for check in &keys.checks {
        report.step("keys", check.clone());
    }
    Ok(())
}
