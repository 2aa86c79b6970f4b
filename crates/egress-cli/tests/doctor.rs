//! `egress doctor` against real proxies: each check passes or fails with a hint.

#[path = "../../egress/tests/support/mod.rs"]
mod support;

use std::process::Output;

use serde_json::Value;
use support::*;

fn doctor(env: &[(&str, &str)], args: &[&str]) -> Output {
    run_egress(env!("CARGO_BIN_EXE_egress"), "doctor", env, args)
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn target() -> String {
    format!("localhost:{}", world().https_origin.port)
}

#[test]
fn a_good_proxy_passes_every_check() {
    let w = world();
    let proxy = format!(
        "https://{USER}:{PASSWORD_ENCODED}@localhost:{}",
        w.tls_squid_auth.port
    );
    let out = doctor(
        &[("HTTPS_PROXY", &proxy)],
        &["--target", &target(), "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = json(&out);
    let checks = report["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0].starts_with("TCP to https_proxy"));
    assert!(names[1].starts_with("TLS to https_proxy"));
    assert!(names[2].starts_with(&format!("CONNECT {} through https_proxy", target())));
    assert!(checks.iter().all(|c| c["ok"] == true), "{checks:?}");
    let cert = &checks[1]["certificate"];
    assert!(
        cert["issuer"].as_str().unwrap().contains("egress-test-ca"),
        "{cert}"
    );
    assert!(!cert["not_after"].as_str().unwrap().is_empty());
    assert_eq!(report["routes"].as_array().unwrap().len(), 14);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(PASSWORD_ENCODED));
}

#[test]
fn failures_carry_hints() {
    let w = world();
    let wrong = format!(
        "http://{USER}:{WRONG_PASSWORD}@localhost:{}",
        w.squid.auth_port
    );
    let untrusted = format!("https://localhost:{}", w.untrusted_tls_squid.port);
    let down = format!("http://localhost:{}", free_port());
    for (proxy, failing, hint) in [
        (
            wrong.as_str(),
            "CONNECT",
            "check the user name and password in https_proxy",
        ),
        (
            untrusted.as_str(),
            "TLS",
            "use_insecure_ssl_client_just_for_testing_do_not_use",
        ),
        (down.as_str(), "TCP", "that the proxy runs"),
    ] {
        let out = doctor(&[("HTTPS_PROXY", proxy)], &["--target", &target()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let fail_line = text
            .lines()
            .find(|l| l.starts_with("FAIL"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(fail_line.starts_with(&format!("FAIL  {failing}")), "{text}");
        assert!(text.contains(hint), "{text}");
        assert!(!text.contains(WRONG_PASSWORD), "{text}");
    }
    // The untrusted certificate is shown, though not trusted.
    let out = doctor(
        &[("HTTPS_PROXY", &untrusted)],
        &["--target", &target(), "--json"],
    );
    let tls = &json(&out)["checks"][1];
    assert_eq!(tls["ok"], false);
    assert!(
        tls["certificate"]["issuer"]
            .as_str()
            .unwrap()
            .contains("rogue-ca"),
        "{tls}"
    );
}

#[test]
fn configuration_errors_exit_78() {
    let out = doctor(&[("HTTPS_PROXY", "socks5://proxy:1080")], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("only http:// and https:// proxies are supported"));
}

#[test]
fn without_a_proxy_it_says_so() {
    let out = doctor(&[], &["--target", &target()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("no http_proxy or https_proxy is set"),
        "{text}"
    );
}
