//! `egress doctor`: check the settings and every configured proxy, step by step.

use std::io::Write;
use std::process::ExitCode;

use egress::{check_proxy, ProxyCheck, Purpose, Route, Scheme};
use serde_json::json;

use crate::{advice, exit, NetArgs};

/// Check the proxy settings and each configured proxy, the way the homeserver
/// would use them: is the proxy reachable, does its TLS certificate verify
/// (for an https:// proxy), does it open a CONNECT tunnel to the target, and
/// which route every connection type takes.
///
/// Each check passes or fails with a hint. Exit codes: 0 all passed, 1 a check
/// failed, 78 configuration error.
///
/// Example:
///
///   HTTPS_PROXY=http://alice:secret@proxy.example:3128 egress doctor
///
///   egress doctor --config /etc/synapse/homeserver.yaml --target matrix.org:8448 --json
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    net: NetArgs,

    /// Where the CONNECT check asks the proxy to connect.
    #[arg(long, value_name = "HOST:PORT", default_value = "matrix.org:443")]
    target: String,

    /// One JSON object: settings, checks, routes.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> ExitCode {
    let Some((host, port)) = args
        .target
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
    else {
        eprintln!("egress: --target `{}`: expected HOST:PORT", args.target);
        return ExitCode::from(exit::USAGE);
    };
    let outbound = match args.net.outbound() {
        Ok(outbound) => outbound,
        Err((code, message)) => {
            if args.json {
                println!(
                    "{}",
                    json!({"settings": {"ok": false, "error": message}, "checks": [], "routes": []})
                );
            } else {
                println!("FAIL  settings: {message}");
            }
            return ExitCode::from(code);
        }
    };
    let settings = outbound.settings();
    let no_proxy = settings.https_proxy().is_none() && settings.http_proxy().is_none();
    // https_proxy opens tunnels; http_proxy forwards http:// requests, so no CONNECT check.
    let mut checks: Vec<ProxyCheck> = check_proxy(
        &outbound,
        Purpose::Push,
        Scheme::Https,
        Some(args.target.as_str()),
    )
    .await;
    checks.extend(check_proxy(&outbound, Purpose::Push, Scheme::Http, None).await);
    let url: http::Uri = match format!("https://{}/", crate::authority(host, port)).parse() {
        Ok(url) => url,
        Err(e) => {
            eprintln!("egress: --target `{}`: {e}", args.target);
            return ExitCode::from(exit::USAGE);
        }
    };
    let routes: Vec<(Purpose, Route)> = Purpose::ALL
        .iter()
        .map(|&p| (p, Route::decide(settings, p, &url)))
        .collect();
    let ok = checks.iter().all(ProxyCheck::ok);
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        let checks: Vec<_> = checks
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "ok": c.ok(), "detail": c.detail, "hint": advice::check_hint(c),
                    "certificate": c.certificate.as_ref().map(|cert| json!({
                        "subject": cert.subject, "issuer": cert.issuer,
                        "not_after": cert.not_after, "names": cert.names,
                    })),
                })
            })
            .collect();
        let routes: Vec<_> = routes
            .iter()
            .map(|(p, r)| json!({"purpose": p.name(), "route": r.kind(), "mode": r.mode(), "proxy": r.proxy().map(|p| p.to_string()), "reason": r.reason().to_string()}))
            .collect();
        writeln!(
            out,
            "{}",
            json!({"settings": {"ok": true}, "checks": checks, "routes": routes, "ok": ok})
        )
    } else {
        write_text(&mut out, &checks, &routes, &url, no_proxy)
    };
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("egress: cannot write output: {e}");
        }
    }
    ExitCode::from(if ok { exit::OK } else { exit::FAILURE })
}

fn write_text(
    out: &mut impl Write,
    checks: &[ProxyCheck],
    routes: &[(Purpose, Route)],
    url: &http::Uri,
    no_proxy: bool,
) -> std::io::Result<()> {
    writeln!(out, "PASS  settings are valid")?;
    if no_proxy {
        writeln!(
            out,
            "      no http_proxy or https_proxy is set: every connection is direct"
        )?;
    }
    for check in checks {
        writeln!(
            out,
            "{}  {}: {}",
            if check.ok() { "PASS" } else { "FAIL" },
            check.name,
            check.detail
        )?;
        if let Some(cert) = &check.certificate {
            writeln!(out, "      subject:  {}", cert.subject)?;
            writeln!(out, "      issuer:   {}", cert.issuer)?;
            writeln!(out, "      expires:  {}", cert.not_after)?;
            if !cert.names.is_empty() {
                writeln!(out, "      names:    {}", cert.names.join(", "))?;
            }
        }
        if let Some(hint) = advice::check_hint(check) {
            writeln!(out, "      hint: {hint}")?;
        }
    }
    writeln!(out, "\nroutes to {url}:")?;
    for (purpose, route) in routes {
        writeln!(out, "  {:16} {}", purpose.name(), route.explain())?;
    }
    Ok(())
}
