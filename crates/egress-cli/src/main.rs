//! The `egress` command: see and test what a homeserver's outbound traffic does.

mod advice;
mod doctor;
mod exit;
mod explain;
mod federation;
mod fetch;
mod fetch_reqwest;
mod generate;
mod log_writer;
mod notify;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use egress::{ConfigError, HomeserverYaml, ProxyEnv, ProxySettings};

pub use exit::{CONFIG as EXIT_CONFIG, USAGE as EXIT_USAGE};

/// `egress --version`: the version and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EGRESS_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "egress",
    version = VERSION,
    about = "See and test a Matrix homeserver's outbound HTTP(S) through forward proxies",
    long_about = "See and test a Matrix homeserver's outbound HTTP(S) through forward proxies.\n\n\
        egress reads the proxy settings a homeserver reads: the environment variables \
        http_proxy, https_proxy and no_proxy (any case; lower case wins) and, with --config, \
        the homeserver.yaml keys http_proxy, https_proxy, no_proxy_hosts, the IP range \
        blocklists and the TLS keys.\n\n\
        Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Explain(explain::Args),
    Fetch(fetch::Args),
    Doctor(doctor::Args),
    /// Matrix federation through your proxy: test a server step by step, send
    /// signed requests, fetch remote media, make a signing key.
    Federation(federation::Args),
    Serve(serve::Args),
}

/// Options shared by the commands that read the settings.
#[derive(clap::Args)]
pub struct ConfigArgs {
    /// homeserver.yaml to read; its keys override the environment one by one.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl ConfigArgs {
    /// The effective settings from the process environment and the YAML.
    pub fn settings(&self) -> Result<ProxySettings, ConfigError> {
        let env = ProxyEnv::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        );
        let yaml = self
            .config
            .as_deref()
            .map(HomeserverYaml::read)
            .transpose()?;
        ProxySettings::new(&env, yaml.as_ref())
    }
}

/// Parses a purpose name for clap.
pub fn parse_purpose(s: &str) -> Result<egress::Purpose, String> {
    s.parse().map_err(|e: egress::UnknownPurpose| e.to_string())
}

/// `host:port`, with an IPv6 address in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A failure to report: the exit code and the message.
pub type Failure = (u8, String);

/// Settings plus the network options of the commands that connect.
#[derive(clap::Args)]
pub struct NetArgs {
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Also trust the CA certificates in this PEM file (regular TLS: proxies, origins).
    #[arg(long, value_name = "FILE")]
    pub cacert: Vec<PathBuf>,

    /// Resolve HOST to ADDR instead of asking DNS, as curl's --resolve (HOST:PORT:ADDR; the port is ignored).
    #[arg(long, value_name = "HOST:PORT:ADDR")]
    pub resolve: Vec<String>,
}

impl NetArgs {
    /// The pooled clients for these settings and options.
    pub fn outbound(&self) -> Result<egress::Outbound, Failure> {
        let config_error =
            |e: &dyn std::fmt::Display| (exit::CONFIG, format!("configuration error: {e}"));
        let settings = self.config.settings().map_err(|e| config_error(&e))?;
        let mut builder = egress::Outbound::builder(settings);
        for file in &self.cacert {
            builder = builder.add_ca_file(file);
        }
        for (host, ip) in self.overrides()? {
            builder = builder.resolve(&host, &[ip]);
        }
        builder.build().map_err(|e| config_error(&e))
    }

    /// The --resolve entries: host name → address.
    pub fn overrides(&self) -> Result<Vec<(String, std::net::IpAddr)>, Failure> {
        let mut overrides = Vec::new();
        for entry in &self.resolve {
            let usage = |problem: &str| (exit::USAGE, format!("--resolve `{entry}`: {problem}"));
            let mut parts = entry.splitn(3, ':');
            let (Some(host), Some(_port), Some(addr)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(usage("expected HOST:PORT:ADDR"));
            };
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            let ip = addr
                .parse()
                .map_err(|_| usage(&format!("`{addr}` is not an IP address")))?;
            overrides.push((host.to_owned(), ip));
        }
        Ok(overrides)
    }
}

fn main() -> ExitCode {
    // `egress generate`, for packages, is not one of Cli's commands: it
    // stays out of --help and of the pages and completions it writes.
    if std::env::args_os().nth(1).is_some_and(|a| a == "generate") {
        return generate::main();
    }
    let cli = Cli::parse();
    // -v shows egress's wire log (target `egress::wire`) as bare lines;
    // RUST_LOG, when set, decides instead.
    let verbose = matches!(&cli.command, Command::Fetch(args) if args.verbose());
    let default = if verbose {
        "warn,egress::wire=debug"
    } else if matches!(&cli.command, Command::Serve(_)) {
        "warn,egress::serve=info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // A daemon's diagnostics carry the time; a command's do not.
    if matches!(&cli.command, Command::Serve(_)) {
        builder.init();
        return run(cli.command);
    }
    let builder = builder.without_time();
    if verbose && std::env::var_os("RUST_LOG").is_none() {
        builder.with_level(false).init();
    } else {
        builder.init();
    }
    run(cli.command)
}

fn run(command: Command) -> ExitCode {
    let command = match command {
        // Pure: no runtime needed.
        Command::Explain(args) => return explain::run(args),
        // Its own multi-threaded runtime.
        Command::Serve(args) => return serve::main(args),
        other => other,
    };
    // One runtime for the whole command.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("egress: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    runtime.block_on(async {
        match command {
            Command::Explain(_) | Command::Serve(_) => unreachable!("handled above"),
            Command::Fetch(args) => fetch::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Federation(args) => federation::run(args).await,
        }
    })
}
