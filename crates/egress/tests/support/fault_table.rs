//! The fault table of RELIABILITY.md: each fault test records what it
//! measured. When `EGRESS_FAULT_TABLE` names a file, [`record`] appends one
//! JSON line per row to it (one `write` each, so rows from parallel tests and
//! from several test binaries do not interleave); `scripts/fault-table` runs
//! the tests with it set and renders the table from those lines. Without the
//! variable, recording does nothing: the tests assert the same either way.

use std::io::Write;
use std::time::Duration;

/// One row: a fault, what produced it, what a caller got and how fast.
pub struct Row<'a> {
    /// Sorts the table: `P…` proxy, `O…` origin and TLS, `D…` DNS and
    /// blocklist, `R…` redirects, `F…` federation, `S…` serve.
    pub id: &'a str,
    /// The fault, in words.
    pub fault: &'a str,
    /// What produces it: a real part, or a fake named as such.
    pub source: &'a str,
    /// What a caller of the library gets (the typed error, from the run).
    pub outcome: String,
    /// The CLI's answer: `egress fetch`'s (or `egress federation …`'s) exit
    /// code, or the status serve answers.
    pub code: String,
    /// Time to fail through the library (or serve), measured.
    pub elapsed: Duration,
    /// Time to fail through the CLI process, measured (None: not run).
    pub cli_elapsed: Option<Duration>,
    /// The bound the test asserts on the time to fail.
    pub bound: Duration,
}

/// Appends `row` to `$EGRESS_FAULT_TABLE`, naming the test (from libtest's
/// thread name) and its file.
pub fn record(file: &str, row: Row<'_>) {
    let Some(path) = std::env::var_os("EGRESS_FAULT_TABLE") else {
        return;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    let line = format!(
        "{{\"id\":{},\"fault\":{},\"source\":{},\"outcome\":{},\"code\":{},\"ms\":{},\"cli_ms\":{},\"bound_ms\":{},\"test\":{},\"file\":{}}}\n",
        json_str(row.id),
        json_str(row.fault),
        json_str(row.source),
        json_str(&row.outcome),
        json_str(&row.code),
        ms(row.elapsed),
        row.cli_elapsed.map_or("null".to_owned(), ms),
        ms(row.bound),
        json_str(test),
        json_str(file),
    );
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("EGRESS_FAULT_TABLE {}: {e}", path.to_string_lossy()));
    out.write_all(line.as_bytes())
        .expect("the fault table file takes a line");
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The variant of a typed error and its distinguishing fields, from its
/// `Debug` form (so the table shows what the run produced): `Connect`,
/// `Timeout { step: Connect }`, `ProxyUnreachable { status: 503 }`,
/// `Certificate { is_proxy: true, NotValidForName }`.
pub fn variant(err: &egress::Error) -> String {
    let debug = format!("{err:?}");
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    match err {
        egress::Error::Timeout { step, .. } => format!("{name} {{ step: {step:?} }}"),
        egress::Error::Certificate {
            is_proxy, source, ..
        } => {
            let why = format!("{source:?}");
            // InvalidCertificate(NotValidForNameContext { .. }) → NotValidForName
            let inner = why
                .split_once('(')
                .map_or(why.as_str(), |(_, rest)| rest)
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>();
            let inner = inner.strip_suffix("Context").unwrap_or(&inner).to_owned();
            format!("{name} {{ is_proxy: {is_proxy}, {inner} }}")
        }
        _ => match err.proxy_status() {
            Some(status) => format!("{name} {{ status: {} }}", status.as_u16()),
            None => name,
        },
    }
}
