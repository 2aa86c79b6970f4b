//! `egress fetch` as a user runs it, against squid, tinyproxy and TLS proxies.

#[path = "../../egress/tests/support/mod.rs"]
mod support;

use std::process::{Command, Output};

use support::*;

fn fetch(env: &[(&str, &str)], args: &[&str]) -> Output {
    run_egress(env!("CARGO_BIN_EXE_egress"), "fetch", env, args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn squid_auth_url() -> String {
    format!(
        "http://{USER}:{PASSWORD_ENCODED}@localhost:{}",
        world().squid.auth_port
    )
}

/// Every output of every run here, to grep for passwords at the end of each test.
fn assert_clean(out: &Output) {
    use base64::Engine as _;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    for secret in [
        PASSWORD,
        PASSWORD_ENCODED,
        WRONG_PASSWORD,
        TINY_PASSWORD,
        basic.as_str(),
    ] {
        assert!(
            !all.contains(secret),
            "output holds a password ({secret}):\n{all}"
        );
    }
}

#[test]
fn https_through_squid_with_percent_encoded_credentials() {
    let w = world();
    let proxy = squid_auth_url();
    let url = w.https_origin.url("localhost", "/cli-https");
    let out = fetch(
        &[("HTTPS_PROXY", proxy.as_str()), ("RUST_LOG", "trace")],
        &["-v", &url],
    );
    assert_clean(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "origin https /cli-https");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "CONNECT localhost:{} HTTP/1.1",
            w.https_origin.port
        )),
        "{err}"
    );
    assert!(w
        .https_origin
        .seen("/cli-https")
        .iter()
        .all(|s| !s.headers.contains_key("proxy-authorization")));

    // -v without RUST_LOG: the route, the proxy exchange and the response head.
    let out = fetch(&[("HTTPS_PROXY", proxy.as_str())], &["-v", &url]);
    let err = text(&out.stderr);
    assert!(
        err.contains("through proxy http://alice:***@localhost:"),
        "{err}"
    );
    assert!(
        err.contains("https_proxy is set by environment variable HTTPS_PROXY"),
        "{err}"
    );
    assert!(
        err.contains("> Proxy-Authorization: Basic *** (user alice)"),
        "{err}"
    );
    assert!(
        err.contains("< HTTP/1.1 200 Connection established"),
        "{err}"
    );
    assert!(err.contains("< HTTP/1.1 200 OK"), "{err}");
    assert_clean(&out);
}

#[test]
fn http_through_tinyproxy_over_tls_to_a_file() {
    let w = world();
    let proxy = format!(
        "https://{USER}:{TINY_PASSWORD}@localhost:{}",
        w.tls_tinyproxy_auth.port
    );
    let dir = std::env::temp_dir().join(format!("egress-cli-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("body");
    let url = w.http_origin.url("localhost", "/cli-file");
    let out = fetch(
        &[("http_proxy", proxy.as_str()), ("RUST_LOG", "trace")],
        &["-o", file.to_str().unwrap(), &url],
    );
    assert_clean(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "origin http /cli-file"
    );
    assert_eq!(w.tinyproxy_auth.log_lines(&format!("GET {url}")).len(), 1);
}

#[test]
fn exit_codes_name_the_failure() {
    let w = world();
    let wrong = format!(
        "http://{USER}:{WRONG_PASSWORD}@localhost:{}",
        w.squid.auth_port
    );
    let https = w.https_origin.url("localhost", "/cli-codes");
    let untrusted = format!("https://localhost:{}", w.untrusted_tls_squid.port);
    let down = format!("http://localhost:{}", free_port());
    let good = squid_auth_url();
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<String>, i32, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("HTTPS_PROXY", &wrong)],
            vec![https.clone()],
            41,
            "hint: check the user name and password in https_proxy",
        ),
        (
            vec![("HTTPS_PROXY", &untrusted)],
            vec![https.clone()],
            60,
            "use_insecure_ssl_client_just_for_testing_do_not_use",
        ),
        (
            vec![("HTTPS_PROXY", &down)],
            vec![https.clone()],
            7,
            "cannot connect to proxy",
        ),
        (vec![], vec![https.clone()], 40, "127.0.0.0/8"),
        (vec![], vec!["https://127.0.0.1/".into()], 40, "refused"),
        (
            vec![("HTTPS_PROXY", "socks5://x:1")],
            vec![https.clone()],
            78,
            "only http:// and https:// proxies are supported",
        ),
        (
            vec![("HTTPS_PROXY", &good)],
            vec![w.https_origin.url("localhost", "/status/404")],
            22,
            "",
        ),
    ];
    for (env, args, code, needle) in cases {
        let mut env = env;
        env.push(("RUST_LOG", "trace"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = fetch(&env, &args);
        assert_clean(&out);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{env:?} {args:?}: {err}");
        assert!(err.contains(needle), "{env:?}: {err}");
    }
}

#[test]
fn insecure_switch_lets_an_untrusted_proxy_through() {
    let w = world();
    let dir = std::env::temp_dir().join(format!("egress-cli-insecure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = dir.join("homeserver.yaml");
    let untrusted = format!("https://localhost:{}", w.untrusted_tls_squid.port);
    std::fs::write(&yaml, format!("http_proxy: '{untrusted}'\nuse_insecure_ssl_client_just_for_testing_do_not_use: true\n")).unwrap();
    let url = w.http_origin.url("localhost", "/cli-insecure");
    let out = fetch(&[], &["--config", yaml.to_str().unwrap(), &url]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("NOT verified"));
}

#[test]
fn a_silent_proxy_times_out() {
    let fake = FakeProxy::start(Fault::Silent);
    let proxy = format!("http://127.0.0.1:{}", fake.port);
    let started = std::time::Instant::now();
    let out = fetch(
        &[("HTTPS_PROXY", proxy.as_str())],
        &["--max-time", "2", "https://t1.test/"],
    );
    assert_eq!(out.status.code(), Some(28), "{}", text(&out.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn help_documents_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_egress"))
        .args(["fetch", "--help"])
        .output()
        .unwrap();
    let help = text(&out.stdout);
    for line in [
        "41  the proxy requires authentication",
        "40  refused by the IP blocklist",
        "78  configuration error",
        "22  the response status is not 2xx",
    ] {
        assert!(help.contains(line), "{help}");
    }
}

/// `--engine reqwest`: the same request through reqwest configured by
/// `egress::reqwest::Routing`, with the same exit codes.
#[test]
fn the_reqwest_engine_goes_through_squid_and_refuses_the_same() {
    let w = world();
    let proxy = squid_auth_url();
    let env = [("HTTPS_PROXY", proxy.as_str()), ("RUST_LOG", "trace")];
    let url = w.https_origin.url("localhost", "/cli-reqwest");
    let out = fetch(&env, &["--engine", "reqwest", &url]);
    assert_clean(&out);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "origin https /cli-reqwest");
    assert_eq!(w.https_origin.seen("/cli-reqwest").len(), 1);
    // A loopback literal for URL previews: refused before connecting (40).
    let literal = w.https_origin.url("127.0.0.1", "/cli-reqwest-literal");
    let out = fetch(
        &env,
        &["--engine", "reqwest", "--purpose", "url_preview", &literal],
    );
    assert_eq!(out.status.code(), Some(40), "{}", text(&out.stderr));
    // A name resolving to loopback, direct (no_proxy): refused by the resolver.
    let env_direct = [("HTTPS_PROXY", proxy.as_str()), ("NO_PROXY", "t30.test")];
    let named = w.https_origin.url("t30.test", "/cli-reqwest-named");
    let out = fetch(
        &env_direct,
        &[
            "--engine",
            "reqwest",
            "--purpose",
            "url_preview",
            "--resolve",
            "t30.test:0:127.0.0.1",
            &named,
        ],
    );
    assert_eq!(out.status.code(), Some(40), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("t30.test"),
        "{}",
        text(&out.stderr)
    );
    assert!(w.https_origin.seen("cli-reqwest-").is_empty());
    // A wrong password: squid's 407, classified (41).
    let wrong = format!(
        "http://{USER}:{WRONG_PASSWORD}@localhost:{}",
        w.squid.auth_port
    );
    let out = fetch(
        &[("HTTPS_PROXY", wrong.as_str())],
        &["--engine", "reqwest", &url],
    );
    assert_clean(&out);
    assert_eq!(out.status.code(), Some(41), "{}", text(&out.stderr));
}
