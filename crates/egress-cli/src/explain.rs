//! `egress explain`: which route each connection takes, and why. No network.

use std::io::{self, Write};
use std::process::ExitCode;

use egress::{Blocklist, ProxySettings, ProxyUrl, Purpose, Route, Sourced};
use serde_json::{json, Value};

use crate::{parse_purpose, ConfigArgs, EXIT_CONFIG, EXIT_USAGE};

/// Print how the homeserver would connect to each URL, and why.
///
/// Reads the environment (http_proxy, https_proxy, no_proxy in any case) and,
/// with --config, homeserver.yaml. Nothing is sent on the network.
///
/// Exit codes: 0 decided (including "refused"), 78 configuration error,
/// 2 usage error.
///
/// Examples:
///
///   HTTPS_PROXY=http://proxy.example:3128 egress explain https://matrix.org/
///
///   egress explain --config /etc/synapse/homeserver.yaml --all-purposes https://matrix.org/
///
///   egress explain --json --purpose federation https://matrix.org:8448/
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    config: ConfigArgs,

    /// The connection type to explain.
    #[arg(long, value_name = "PURPOSE", default_value = "push", value_parser = parse_purpose,
          conflicts_with = "all_purposes",
          long_help = "The connection type to explain: push, url_preview, phone_home, recaptcha, \
                       cas, oidc, federation, pubkey_validity, key_fetch, media, appservice, \
                       identity_server, replication or redis.")]
    purpose: Purpose,

    /// One line per connection type instead of one purpose.
    #[arg(long)]
    all_purposes: bool,

    /// One JSON object per line: url, purpose, route, mode, proxy,
    /// blocklist_applies, reason.
    #[arg(long)]
    json: bool,

    /// Print the effective settings and where each came from.
    #[arg(long)]
    show_config: bool,

    /// URLs to explain, e.g. https://matrix.org/
    #[arg(value_name = "URL", required_unless_present = "show_config")]
    urls: Vec<String>,
}

pub fn run(args: Args) -> ExitCode {
    let settings = match args.config.settings() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("egress: configuration error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut urls = Vec::with_capacity(args.urls.len());
    for text in &args.urls {
        match text.parse::<http::Uri>() {
            Ok(uri) => urls.push((text.as_str(), uri)),
            Err(err) => {
                eprintln!("egress: `{text}` is not a valid URL: {err}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let purposes: Vec<Purpose> = if args.all_purposes {
        Purpose::ALL.to_vec()
    } else {
        vec![args.purpose]
    };
    let mut out = io::stdout().lock();
    let written = (|| -> io::Result<()> {
        if args.show_config {
            if args.json {
                writeln!(out, "{}", config_json(&settings))?;
            } else {
                write_config(&mut out, &settings)?;
                if !urls.is_empty() {
                    writeln!(out)?;
                }
            }
        }
        for (i, (text, uri)) in urls.iter().enumerate() {
            let rows: Vec<Row> = purposes
                .iter()
                .map(|&purpose| Row::new(text, purpose, Route::decide(&settings, purpose, uri)))
                .collect();
            if args.json {
                for row in &rows {
                    writeln!(out, "{}", row.json())?;
                }
            } else {
                if i > 0 {
                    writeln!(out)?;
                }
                write_table(&mut out, text, &rows)?;
            }
        }
        out.flush()
    })();
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`egress explain … | head`) is not an error worth a message.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("egress: cannot write output: {err}");
            ExitCode::FAILURE
        }
    }
}

/// One decision, ready to print.
struct Row<'a> {
    url: &'a str,
    purpose: Purpose,
    route: &'static str,
    mode: Option<&'static str>,
    proxy: Option<String>,
    blocklist_applies: bool,
    reason: String,
}

impl<'a> Row<'a> {
    fn new(url: &'a str, purpose: Purpose, route: Route<'_>) -> Row<'a> {
        Row {
            url,
            purpose,
            route: route.kind(),
            mode: route.mode(),
            proxy: route.proxy().map(ProxyUrl::to_string),
            blocklist_applies: route.blocklist_applies(),
            reason: match &route {
                Route::Direct {
                    blocklist: Some(list),
                    reason,
                } => format!(
                    "{reason}; resolved addresses are checked against {}",
                    list.name()
                ),
                _ => route.reason().to_string(),
            },
        }
    }

    fn json(&self) -> Value {
        json!({
            "url": self.url,
            "purpose": self.purpose.name(),
            "route": self.route,
            "mode": self.mode,
            "proxy": self.proxy,
            "blocklist_applies": self.blocklist_applies,
            "reason": self.reason,
        })
    }
}

fn write_table(out: &mut impl Write, url: &str, rows: &[Row]) -> io::Result<()> {
    writeln!(out, "{url}")?;
    let purpose_w = rows
        .iter()
        .map(|r| r.purpose.name().len())
        .max()
        .unwrap_or(0)
        .max(7);
    let proxy_w = rows
        .iter()
        .map(|r| r.proxy.as_deref().unwrap_or("-").len())
        .max()
        .unwrap_or(0)
        .max(5);
    writeln!(
        out,
        "  {:purpose_w$}  {:7}  {:7}  {:proxy_w$}  {:9}  REASON",
        "PURPOSE", "ROUTE", "MODE", "PROXY", "BLOCKLIST"
    )?;
    for r in rows {
        writeln!(
            out,
            "  {:purpose_w$}  {:7}  {:7}  {:proxy_w$}  {:9}  {}",
            r.purpose.name(),
            r.route,
            r.mode.unwrap_or("-"),
            r.proxy.as_deref().unwrap_or("-"),
            if r.blocklist_applies { "yes" } else { "no" },
            r.reason
        )?;
    }
    Ok(())
}

fn proxy_text(setting: &Sourced<Option<ProxyUrl>>) -> String {
    match &setting.value {
        Some(url) => url.to_string(),
        None => "none".to_owned(),
    }
}

fn ranges_text(list: &Blocklist) -> String {
    let blocked: Vec<String> = list.ranges().map(|r| r.to_string()).collect();
    let allowed: Vec<String> = list.allowed_ranges().map(|r| r.to_string()).collect();
    let mut text = format!("{} (blocks {}", list.name(), blocked.join(", "));
    if !blocked.is_empty() {
        text.push_str(", ");
    }
    text.push_str("0.0.0.0, ::");
    if !allowed.is_empty() {
        text.push_str(&format!("; allows {}", allowed.join(", ")));
    }
    text.push(')');
    text
}

fn write_config(out: &mut impl Write, s: &ProxySettings) -> io::Result<()> {
    let no_proxy = s.no_proxy();
    let entries: Vec<&str> = no_proxy.value.entries().collect();
    let tls = s.tls();
    writeln!(
        out,
        "http_proxy:            {}  [{}]",
        proxy_text(s.http_proxy_setting()),
        s.http_proxy_setting().source
    )?;
    writeln!(
        out,
        "https_proxy:           {}  [{}]",
        proxy_text(s.https_proxy_setting()),
        s.https_proxy_setting().source
    )?;
    writeln!(
        out,
        "no_proxy:              {}  [{}]",
        if entries.is_empty() {
            "none".to_owned()
        } else {
            entries.join(",")
        },
        no_proxy.source
    )?;
    for warning in no_proxy.value.warnings() {
        writeln!(out, "  warning: {warning}")?;
    }
    let lists = s.blocklists();
    writeln!(
        out,
        "blocklist:             {}",
        ranges_text(&lists.general)
    )?;
    writeln!(
        out,
        "federation blocklist:  {}",
        ranges_text(&lists.federation)
    )?;
    writeln!(
        out,
        "url preview blocklist: {}",
        ranges_text(&lists.url_preview)
    )?;
    writeln!(
        out,
        "regular TLS:           {}",
        if tls.insecure_regular {
            "certificates NOT verified (use_insecure_ssl_client_just_for_testing_do_not_use: true)"
        } else {
            "verified against the system trust store"
        }
    )?;
    let federation_tls = match (tls.federation_verify, &tls.federation_custom_ca_list) {
        (false, _) => {
            "certificates NOT verified (federation_verify_certificates: false)".to_owned()
        }
        (true, None) => "verified against the system trust store".to_owned(),
        (true, Some(files)) => format!(
            "verified against federation_custom_ca_list: {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    writeln!(out, "federation TLS:        {federation_tls}")?;
    if !tls.federation_whitelist.is_empty() {
        writeln!(
            out,
            "  not verified for:    {}  [federation_certificate_verification_whitelist]",
            tls.federation_whitelist.join(", ")
        )?;
    }
    Ok(())
}

fn config_json(s: &ProxySettings) -> Value {
    let proxy = |setting: &Sourced<Option<ProxyUrl>>| {
        json!({
            "value": setting.value.as_ref().map(ProxyUrl::to_string),
            "source": setting.source.to_string(),
        })
    };
    let list = |list: &Blocklist| {
        json!({
            "name": list.name(),
            "blocked": list.ranges().map(|r| r.to_string()).collect::<Vec<_>>(),
            "allowed": list.allowed_ranges().map(|r| r.to_string()).collect::<Vec<_>>(),
        })
    };
    let no_proxy = s.no_proxy();
    let tls = s.tls();
    json!({
        "http_proxy": proxy(s.http_proxy_setting()),
        "https_proxy": proxy(s.https_proxy_setting()),
        "no_proxy": {
            "entries": no_proxy.value.entries().collect::<Vec<_>>(),
            "source": no_proxy.source.to_string(),
            "warnings": no_proxy.value.warnings().iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        },
        "blocklists": {
            "general": list(&s.blocklists().general),
            "federation": list(&s.blocklists().federation),
            "url_preview": list(&s.blocklists().url_preview),
        },
        "tls": {
            "insecure_regular": tls.insecure_regular,
            "federation_verify_certificates": tls.federation_verify,
            "federation_certificate_verification_whitelist": tls.federation_whitelist,
            "federation_custom_ca_list": tls.federation_custom_ca_list.as_ref().map(|files| {
                files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>()
            }),
        },
    })
}
