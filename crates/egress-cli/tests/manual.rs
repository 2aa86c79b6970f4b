//! The manual's examples cannot drift: every `console` block of docs/src runs
//! here against the `egress` just built, and its output (stdout and stderr
//! together) and exit status must be what the page shows (trycmd; the syntax
//! is in docs/src/introduction.md, "How to read the examples"). Examples that
//! need a network or a server are fenced `console,ignore` and their page says
//! so. A page's examples run in its `NAME.in/` folder when it has one (the
//! homeserver.yaml they read), else in this crate's folder.
//!
//! After changing what a command prints: `cargo test -p egress-cli --test
//! manual` shows each difference; bring the page up to date.

#[test]
fn manual() {
    // The examples set the variables they need, and only those: nothing from
    // the environment of whoever runs the tests may change what egress prints.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "http_proxy" | "https_proxy" | "no_proxy" | "all_proxy" | "request_method"
        ) || matches!(name, "RUST_LOG" | "SSL_CERT_FILE" | "SSL_CERT_DIR")
        {
            std::env::remove_var(name);
        }
    }
    let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/src");
    trycmd::TestCases::new()
        .register_bin("egress", std::path::Path::new(env!("CARGO_BIN_EXE_egress")))
        // clap wraps --help to the terminal; without one, to COLUMNS.
        .env("COLUMNS", "100")
        // An example that waits (a server that starts when it should refuse)
        // fails instead of hanging the suite.
        .timeout(std::time::Duration::from_secs(60))
        .case(format!("{docs}/**/*.md"));
}
