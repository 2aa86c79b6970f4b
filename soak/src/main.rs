//! The Rust side of the soak under faults (issue 11), driven by `soak/run`.
//!
//! ```text
//! egress-soak certs DIR
//! egress-soak fake-origin --dir DIR --cert FILE --key FILE --http FIRST:COUNT --https FIRST:COUNT
//! egress-soak load --config FILE --out FILE --minutes N [--warmup SECONDS] [--slack-ms MS]
//! egress-soak serve-load --config FILE --out FILE --minutes N [--warmup SECONDS] [--allow-log-drops 1]
//! ```
//!
//! * `certs` makes a test CA and one server certificate for `*.soak.test`,
//!   `localhost` and 127.0.0.1 (nginx, stunnel and the fake origin use it).
//! * `fake-origin` is the **fake for faults**: a small HTTP/1.1 server for the
//!   behaviours no real server produces on request (a reset mid-body, a stall
//!   mid-body, a close right after a keep-alive response). Its normal paths
//!   answer like the real origins.
//! * `load` is the load: egress's own client at concurrency 64 through squid
//!   (basic auth) and stunnel in front of squid, to every origin, with the
//!   fault schedule; it records every minute and checks for leaks at the end.
//!   It asks `soak/run` to kill and restart squid by printing `squid-kill` /
//!   `squid-start` on stdout and waits for `ok` on stdin.
//! * `serve-load` is the serve soak's load (`soak/run --serve`): a busy
//!   homeserver's outbound traffic through `egress serve`, with faults and
//!   reloads, and the accounting of serve's log (see serve_load.rs).

mod fake;
mod heap;
mod load;
mod serve_load;

#[global_allocator]
static GLOBAL: heap::Counting = heap::Counting;

use std::collections::HashMap;
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        usage("missing subcommand");
    };
    let opts = parse_opts(rest);
    let code = match command.as_str() {
        "certs" => {
            let Some(dir) = rest.first() else {
                usage("certs needs a folder")
            };
            certs(Path::new(dir));
            0
        }
        "fake-origin" => fake::main(&opts),
        "load" => load::main(&opts),
        "serve-load" => serve_load::main(&opts),
        other => usage(&format!("unknown subcommand {other}")),
    };
    std::process::exit(code);
}

static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts every panic (then reports it as usual): a load fails on any.
pub(crate) fn count_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        default_hook(info);
    }));
}

/// The panics counted since `count_panics`.
pub(crate) fn panics() -> usize {
    PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

/// The JSON file `--config` names (soak/run writes it).
pub(crate) fn read_config(opts: &HashMap<String, String>) -> serde_json::Value {
    let config = std::fs::read_to_string(opt(opts, "config"))
        .unwrap_or_else(|e| usage(&format!("cannot read --config: {e}")));
    serde_json::from_str(&config).unwrap_or_else(|e| usage(&format!("--config: {e}")))
}

pub(crate) fn usage(problem: &str) -> ! {
    eprintln!(
        "egress-soak: {problem}\nusage: egress-soak certs|fake-origin|load|serve-load ... (see soak/src/main.rs)"
    );
    std::process::exit(2);
}

fn parse_opts(args: &[String]) -> HashMap<String, String> {
    let mut opts = HashMap::new();
    let mut it = args.iter();
    while let Some(name) = it.next() {
        let Some(name) = name.strip_prefix("--") else {
            continue;
        };
        let Some(value) = it.next() else {
            usage(&format!("--{name} needs a value"));
        };
        opts.insert(name.to_owned(), value.clone());
    }
    opts
}

pub(crate) fn opt<'a>(opts: &'a HashMap<String, String>, name: &str) -> &'a str {
    opts.get(name)
        .map(String::as_str)
        .unwrap_or_else(|| usage(&format!("--{name} is required")))
}

pub(crate) fn opt_num<T: std::str::FromStr>(
    opts: &HashMap<String, String>,
    name: &str,
    default: T,
) -> T {
    match opts.get(name) {
        None => default,
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| usage(&format!("--{name}: not a number: {v}"))),
    }
}

/// A test CA and a server certificate it issued (for `*.soak.test`, and the
/// serve soak's `*.direct.soak.test` and `*.parent.soak.test`), as PEM files in `dir`:
/// `ca.pem`, `server.crt`, `server.key`, and `server.pem` (both, for stunnel).
fn certs(dir: &Path) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "egress soak test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let names = vec![
        "*.soak.test".to_owned(),
        "*.direct.soak.test".to_owned(),
        "*.parent.soak.test".to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "*.soak.test");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", dir.join(name).display()))
    };
    write("ca.pem", &ca_cert.pem());
    write("server.crt", &cert.pem());
    write("server.key", &key.serialize_pem());
    write(
        "server.pem",
        &format!("{}{}", cert.pem(), key.serialize_pem()),
    );
}

/// A least-squares slope of `key` (KiB) over the rows' minutes, in MiB per
/// hour, with its standard error; `None` with fewer than three rows.
pub(crate) fn slope(rows: &[serde_json::Value], key: &str) -> Option<(f64, f64)> {
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r["elapsed_s"].as_f64()? / 3600.0, r[key].as_f64()? / 1024.0)))
        .collect();
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        return None;
    }
    let b = sxy / sxx;
    let residuals: f64 = points
        .iter()
        .map(|p| (p.1 - (my + b * (p.0 - mx))).powi(2))
        .sum();
    let se = (residuals / (n - 2.0) / sxx).sqrt();
    Some((b, se))
}
