//! `egress explain` as a user runs it: a real process, a controlled environment.

use std::io::Write;
use std::process::{Command, Output};

fn egress(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_egress"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("egress runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn yaml_file(text: &str) -> tempfile_path::TempYaml {
    tempfile_path::TempYaml::new(text)
}

/// A homeserver.yaml in the target directory, removed on drop.
mod tempfile_path {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct TempYaml(pub PathBuf);

    impl TempYaml {
        pub fn new(text: &str) -> TempYaml {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!("egress-explain-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("hs{}.yaml", N.fetch_add(1, Ordering::Relaxed)));
            std::fs::File::create(&path)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            TempYaml(path)
        }

        pub fn arg(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempYaml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn nothing_configured_is_direct() {
    let out = egress(&[], &["explain", "https://matrix.org/"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("push") && text.contains("direct") && text.contains("no https_proxy is set"),
        "{text}"
    );
}

#[test]
fn json_has_exactly_the_documented_fields() {
    let env = [("HTTPS_PROXY", "alice:s3cret@proxy.example:3128")];
    let out = egress(&env, &["explain", "--json", "https://matrix.org/"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    let obj = lines[0].as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "blocklist_applies",
            "mode",
            "proxy",
            "purpose",
            "reason",
            "route",
            "url"
        ]
    );
    assert_eq!(obj["url"], "https://matrix.org/");
    assert_eq!(obj["purpose"], "push");
    assert_eq!(obj["route"], "proxy");
    assert_eq!(obj["mode"], "connect");
    assert_eq!(obj["proxy"], "http://alice:***@proxy.example:3128");
    assert_eq!(obj["blocklist_applies"], false);
    assert!(obj["reason"].as_str().unwrap().contains("HTTPS_PROXY"));
    assert!(!stdout(&out).contains("s3cret"));
}

#[test]
fn all_purposes_prints_one_line_each() {
    let env = [
        ("https_proxy", "http://proxy.example:3128"),
        ("http_proxy", "http://proxy.example:3128"),
    ];
    let out = egress(
        &env,
        &[
            "explain",
            "--all-purposes",
            "--json",
            "https://matrix.org/",
            "http://example.com/",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 28);
    let route_of = |url: &str, purpose: &str| {
        lines
            .iter()
            .find(|l| l["url"] == url && l["purpose"] == purpose)
            .map(|l| (l["route"].as_str().unwrap().to_owned(), l["mode"].clone()))
            .unwrap()
    };
    assert_eq!(
        route_of("https://matrix.org/", "federation"),
        ("proxy".into(), "connect".into())
    );
    assert_eq!(
        route_of("https://matrix.org/", "appservice"),
        ("direct".into(), serde_json::Value::Null)
    );
    assert_eq!(
        route_of("https://matrix.org/", "redis"),
        ("direct".into(), serde_json::Value::Null)
    );
    assert_eq!(
        route_of("http://example.com/", "push"),
        ("proxy".into(), "forward".into())
    );
    assert_eq!(
        route_of("http://example.com/", "key_fetch"),
        ("direct".into(), serde_json::Value::Null)
    );

    let out = egress(&env, &["explain", "--all-purposes", "https://matrix.org/"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2 + 14, "{text}");
    assert!(
        text.contains("application services never use the proxy"),
        "{text}"
    );
    assert!(text.contains("redis is not HTTP"), "{text}");
}

#[test]
fn purpose_flag_and_yaml_config() {
    let yaml = yaml_file(
        "https_proxy: 'https://bob:hunter2@corp-proxy.example:8443'\n\
         no_proxy_hosts: ['internal.example']\n\
         federation_ip_range_blacklist: []\n",
    );
    let env = [("HTTPS_PROXY", "http://env-proxy.example:3128")];
    let out = egress(
        &env,
        &[
            "explain",
            "--config",
            yaml.arg(),
            "--purpose",
            "federation",
            "--json",
            "https://hs.internal.example:8448/",
            "https://127.0.0.1:8448/",
            "https://matrix.org:8448/",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["route"], "direct");
    assert_eq!(lines[0]["blocklist_applies"], true);
    assert!(lines[0]["reason"]
        .as_str()
        .unwrap()
        .contains("no_proxy entry `internal.example` (homeserver.yaml key no_proxy_hosts)"));
    assert_eq!(
        lines[1]["route"], "proxy",
        "federation_ip_range_blacklist: [] allows loopback"
    );
    assert_eq!(lines[2]["proxy"], "https://bob:***@corp-proxy.example:8443");
    assert!(!stdout(&out).contains("hunter2"));
}

#[test]
fn refused_ip_literal_names_the_range() {
    let out = egress(
        &[("HTTPS_PROXY", "proxy:3128")],
        &["explain", "--json", "https://[::ffff:10.1.2.3]/"],
    );
    assert!(out.status.success());
    let line = &json_lines(&out)[0];
    assert_eq!(line["route"], "refused");
    assert_eq!(line["mode"], serde_json::Value::Null);
    let reason = line["reason"].as_str().unwrap();
    assert!(
        reason.contains("10.0.0.0/8") && reason.contains("ip_range_blacklist"),
        "{reason}"
    );
}

#[test]
fn configuration_errors_exit_78_with_masked_password() {
    for (env, needle) in [
        (
            ("HTTPS_PROXY", "socks5://bob:hunter2@proxy:1080"),
            "only http:// and https:// proxies are supported",
        ),
        (("http_proxy", "bob:hunter2@proxy:99999"), "99999"),
        (("HTTPS_PROXY", "2001:db8::1"), "[2001:db8::1]"),
    ] {
        let out = egress(&[env], &["explain", "https://matrix.org/"]);
        assert_eq!(out.status.code(), Some(78), "{env:?}");
        let err = stderr(&out);
        assert!(err.contains(env.0), "names the variable: {err}");
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    let yaml = yaml_file("no_proxy_hosts: 'a.example'\n");
    let out = egress(
        &[],
        &["explain", "--config", yaml.arg(), "https://matrix.org/"],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("no_proxy_hosts"));
    let out = egress(
        &[],
        &[
            "explain",
            "--config",
            "/nonexistent/homeserver.yaml",
            "https://matrix.org/",
        ],
    );
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("/nonexistent/homeserver.yaml"));
}

#[test]
fn usage_errors_use_clap_code() {
    let out = egress(
        &[],
        &["explain", "--purpose", "socks", "https://matrix.org/"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown purpose `socks`"));
    let out = egress(
        &[],
        &[
            "explain",
            "--purpose",
            "push",
            "--all-purposes",
            "https://x/",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let out = egress(&[], &["explain"]);
    assert_eq!(out.status.code(), Some(2));
    let out = egress(&[], &["explain", "ht tp://bad"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not a valid URL"));
}

#[test]
fn show_config_says_where_each_value_came_from() {
    let yaml = yaml_file("http_proxy: null\nip_range_whitelist: ['127.0.0.0/8']\n");
    let env = [
        ("HTTP_PROXY", "http://ignored:1"),
        ("HTTPS_PROXY", "http://carol:pw123@proxy.example:3128"),
        ("no_proxy", "a.example,10.0.0.0/33"),
    ];
    let out = egress(&env, &["explain", "--show-config", "--config", yaml.arg()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("http_proxy:            none  [homeserver.yaml key http_proxy]"),
        "{text}"
    );
    assert!(
        text.contains("http://carol:***@proxy.example:3128  [environment variable HTTPS_PROXY]"),
        "{text}"
    );
    assert!(
        text.contains("a.example  [environment variable no_proxy]"),
        "{text}"
    );
    assert!(text.contains("allows 127.0.0.0/8"), "{text}");
    assert!(
        text.contains("warning: ignoring no_proxy entry `10.0.0.0/33`"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("10.0.0.0/33"),
        "logged once as a warning too"
    );
    assert!(!text.contains("pw123"));

    let out = egress(
        &env,
        &["explain", "--show-config", "--json", "--config", yaml.arg()],
    );
    let config = &json_lines(&out)[0];
    assert_eq!(
        config["https_proxy"]["source"],
        "environment variable HTTPS_PROXY"
    );
    assert_eq!(
        config["no_proxy"]["entries"],
        serde_json::json!(["a.example"])
    );
    assert_eq!(
        config["blocklists"]["general"]["allowed"],
        serde_json::json!(["127.0.0.0/8"])
    );
}

#[test]
fn insecure_switch_logs_a_loud_warning() {
    let yaml = yaml_file("use_insecure_ssl_client_just_for_testing_do_not_use: true\n");
    let out = egress(
        &[],
        &["explain", "--config", yaml.arg(), "https://matrix.org/"],
    );
    assert!(out.status.success());
    let err = stderr(&out);
    assert!(err.contains("NOT verified"), "{err}");
    assert!(
        err.contains("use_insecure_ssl_client_just_for_testing_do_not_use"),
        "{err}"
    );
}

#[test]
fn lower_case_variables_win() {
    let env = [
        ("HTTPS_PROXY", "http://upper:1"),
        ("https_proxy", "http://lower:2"),
    ];
    let out = egress(&env, &["explain", "--json", "https://matrix.org/"]);
    assert_eq!(json_lines(&out)[0]["proxy"], "http://lower:2");
    let env = [("HTTPS_PROXY", "http://upper:1"), ("https_proxy", "")];
    let out = egress(&env, &["explain", "--json", "https://matrix.org/"]);
    assert_eq!(json_lines(&out)[0]["route"], "direct");
}

/// `egress --version` names the version and the commit the binary was built
/// from: this checkout's HEAD, when it is a git checkout and the build did
/// not set EGRESS_COMMIT.
#[test]
fn version_names_the_commit() {
    let out = egress(&[], &["--version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    let want = format!("egress {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = line
        .trim_end()
        .strip_prefix(&want)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line:?}"));
    let head = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned());
    match head {
        // A build with EGRESS_COMMIT set names that instead.
        Some(head) if std::env::var_os("EGRESS_COMMIT").is_none() => {
            assert_eq!(commit, head, "the commit is not HEAD")
        }
        _ => assert!(!commit.is_empty(), "{line:?}"),
    }
}

/// `egress generate man|completions DIR` writes the man pages and the shell
/// completions from the clap definitions: every command's page, with the
/// options `--help` shows; the command itself is not in `--help`.
#[test]
fn generate_writes_man_pages_and_completions_from_the_clap_definitions() {
    let dir = std::env::temp_dir().join(format!("egress-generate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = egress(&[], &["generate", "man", dir.join("man").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in [
        "egress",
        "egress-explain",
        "egress-serve",
        "egress-federation-test",
    ] {
        let path = dir.join("man").join(format!("{page}.1"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert!(
            text.starts_with(".ie \\n(.g .ds Aq") || text.contains(".TH"),
            "{page}: {text}"
        );
        assert!(
            stdout(&out).contains(path.to_str().unwrap()),
            "{}",
            stdout(&out)
        );
    }
    let serve = std::fs::read_to_string(dir.join("man/egress-serve.1")).unwrap();
    assert!(serve.contains("memory\\-trim\\-interval"), "{serve}");
    let out = egress(
        &[],
        &[
            "generate",
            "completions",
            dir.join("comp").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let bash = std::fs::read_to_string(dir.join("comp/egress.bash")).unwrap();
    assert!(bash.contains("--memory-trim-interval"), "{bash}");
    for file in ["_egress", "egress.fish"] {
        assert!(dir.join("comp").join(file).is_file(), "{file}");
    }
    let help = stdout(&egress(&[], &["--help"]));
    assert!(
        help.contains("explain") && !help.contains("generate"),
        "{help}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
