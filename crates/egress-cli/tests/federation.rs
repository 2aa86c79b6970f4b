//! `egress federation` against a real Synapse through squid.

#[path = "../../egress/tests/support/matrix.rs"]
mod matrix;
#[path = "../../egress/tests/support/mod.rs"]
mod support;

use std::process::Output;

use matrix::*;
use support::*;

fn federation(env: &[(&str, &str)], args: &[&str]) -> Output {
    run_egress(env!("CARGO_BIN_EXE_egress"), "federation", env, args)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A homeserver.yaml trusting the test CA for federation, and the DNS server for SRV.
fn setup() -> (String, String, String) {
    let m = matrix();
    let dir = std::env::temp_dir().join(format!("egress-cli-fed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = dir.join("homeserver.yaml");
    // Written once: tests run in parallel, and rewriting the file while
    // another test's command reads it gave that command an empty file.
    static WRITTEN: std::sync::Once = std::sync::Once::new();
    WRITTEN.call_once(|| {
        std::fs::write(
            &yaml,
            format!(
                "federation_custom_ca_list: ['{}']\n",
                world().ca.pem_path.display()
            ),
        )
        .unwrap()
    });
    let proxy = format!(
        "http://{USER}:{PASSWORD_ENCODED}@localhost:{}",
        world().squid.auth_port
    );
    (
        proxy,
        yaml.to_str().unwrap().to_owned(),
        format!("127.0.0.1:{}", m.dns_port),
    )
}

#[test]
fn federation_test_succeeds_via_srv_well_known_and_explicit_port() {
    let (proxy, yaml, dns) = setup();
    let m = matrix();
    let explicit = format!("keys.test:{}", m.key_server_port);
    for (server, step, reaches, version) in [
        // Synapse, found by SRV.
        (
            "hs1.test",
            "SRV _matrix-fed._tcp.hs1.test.".to_owned(),
            format!("hs1.test:{}", m.tls_port),
            "Synapse 1.",
        ),
        // Delegated by well-known to a host and port.
        (
            "wk.test",
            "m.server is keys.test".to_owned(),
            format!("keys.test:{}", m.wk_server_port),
            "egress-test-keyserver",
        ),
        // An explicit port.
        (
            explicit.as_str(),
            "has an explicit port".to_owned(),
            explicit.clone(),
            "egress-test-keyserver",
        ),
    ] {
        let out = federation(
            &[("HTTPS_PROXY", &proxy)],
            &["test", "--config", &yaml, "--dns-server", &dns, server],
        );
        let report = text(&out);
        assert_eq!(out.status.code(), Some(0), "{report}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().last(),
            Some("federation OK"),
            "{report}"
        );
        assert!(report.contains(&step), "{server}: {report}");
        assert!(
            report.contains(&format!(
                "{reaches}: through proxy http://alice:***@localhost:"
            )),
            "{report}"
        );
        assert!(report.contains("verification OK"), "{report}");
        assert!(report.contains(version), "{report}");
        assert!(report.contains("self-signature with ed25519:"), "{report}");
        assert!(
            !report.contains(PASSWORD_ENCODED) && !report.contains(PASSWORD),
            "{report}"
        );
    }
    let lines = world()
        .squid
        .log_lines(&format!("CONNECT hs1.test:{}", m.tls_port), 1);
    assert!(!lines.is_empty(), "squid saw no CONNECT to the SRV target");

    // delegated.test delegates to Synapse, whose keys are hs1.test's: another server.
    let out = federation(
        &[("HTTPS_PROXY", &proxy)],
        &[
            "test",
            "--config",
            &yaml,
            "--dns-server",
            &dns,
            "delegated.test",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(
            "federation FAILED: server keys of delegated.test: `server_name` is hs1.test"
        ),
        "{}",
        text(&out)
    );
}

#[test]
fn federation_test_reports_the_first_failure() {
    let (proxy, yaml, dns) = setup();
    let out = federation(
        &[("HTTPS_PROXY", &proxy)],
        &[
            "test",
            "--config",
            &yaml,
            "--dns-server",
            &dns,
            "--json",
            "hs3.test",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let result = report["result"].as_str().unwrap();
    assert!(
        result.starts_with("federation FAILED: TLS certificate of hs3.test was not accepted"),
        "{result}"
    );

    // Synapse's rule: empty labels are refused, though ruma's type takes them.
    for (bad, why) in [
        ("bad name", "`bad name` has ' '"),
        (
            "host:0",
            "`host:0` has a port that is not a number from 1 to 65535",
        ),
        ("[::1", "`[::1` is not an IPv6 address in brackets"),
        ("https://matrix.org", "`https://matrix.org` has a port"),
        (".example.com", "`.example.com` has an empty label"),
        ("a..b:8448", "`a..b:8448` has an empty label"),
    ] {
        let out = federation(&[], &["test", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("not a valid Matrix server name: {why}")),
            "{}",
            text(&out)
        );
    }
}

#[test]
fn signed_get_and_media_download() {
    let (proxy, yaml, dns) = setup();
    let m = matrix();
    let key = m.key_file.to_str().unwrap();
    let origin = m.origin_name();
    let path = format!("/_matrix/federation/v1/query/profile?user_id=%40{SYNAPSE_USER}%3Ahs1.test");
    let common = [
        "--config",
        yaml.as_str(),
        "--dns-server",
        dns.as_str(),
        "--origin",
        origin.as_str(),
        "--signing-key",
        key,
    ];
    let mut args = vec!["get"];
    args.extend(common);
    args.extend(["hs1.test", path.as_str()]);
    let out = federation(&[("HTTPS_PROXY", &proxy)], &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["displayname"], SYNAPSE_USER);

    let bytes: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let media_id = upload_media(m, &bytes, "image/png");
    let file = std::env::temp_dir().join(format!("egress-cli-media-{}", std::process::id()));
    let mxc = format!("mxc://hs1.test/{media_id}");
    let mut args = vec!["media"];
    args.extend(common);
    args.extend(["-o", file.to_str().unwrap(), mxc.as_str()]);
    let out = federation(&[("HTTPS_PROXY", &proxy)], &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        std::fs::read(&file).unwrap() == bytes,
        "the download differs"
    );
    let mut args = vec!["media"];
    args.extend(common);
    args.extend([
        "--max-size",
        "1000",
        "-o",
        file.to_str().unwrap(),
        mxc.as_str(),
    ]);
    let out = federation(&[("HTTPS_PROXY", &proxy)], &args);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("larger than the limit of 1000 bytes"),
        "{}",
        text(&out)
    );
}

#[test]
fn generate_key_writes_a_synapse_key_file_once() {
    let file = std::env::temp_dir().join(format!("egress-cli-key-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let out = federation(&[], &["generate-key", "-o", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let line = std::fs::read_to_string(&file).unwrap();
    let key = egress::SigningKey::parse(&line).unwrap();
    assert!(text(&out).contains(&key.public_key()));
    assert!(line.starts_with("ed25519 a_"));
    let out = federation(&[], &["generate-key", "-o", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "refuses to overwrite");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), line);
}

// ---- The fault table's federation rows (RELIABILITY.md, "Fault table") ----
//
// Each row makes the library call a homeserver makes (typed
// `FederationError`) and runs the `egress federation` command (exit code),
// both against the faults the federation world serves: our Matrix test
// origin (well-known answers, server keys), dnsmasq (SRV), stunnel
// (certificates) and Synapse (media), all through squid. Each records
// what it measured (support::FaultRow, with EGRESS_FAULT_TABLE set).

mod fault_rows {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use egress::{
        Federation, FederationError, HomeserverYaml, Outbound, OwnedMxcUri, OwnedServerName,
        ProxyEnv, ProxySettings, Purpose, ServerName, SigningKey,
    };
    use http::Method;

    use super::{
        matrix, setup, upload_media, variant, world, FaultRow, PASSWORD, PASSWORD_ENCODED,
    };

    /// The bound on every row's time to fail (each needs no waiting: the
    /// faults answer at once, and nothing here runs into a time limit).
    const BOUND: Duration = Duration::from_secs(5);

    /// The library's federation client, as `setup()` configures the CLI:
    /// through squid (with credentials), the test CA for federation, the
    /// world's dnsmasq for SRV.
    fn federation() -> Federation {
        let (proxy, yaml, dns) = setup();
        let env = ProxyEnv::from_vars([("https_proxy", proxy.as_str())]);
        let yaml = HomeserverYaml::read(std::path::Path::new(&yaml)).unwrap();
        let settings = ProxySettings::new(&env, Some(&yaml)).unwrap();
        let outbound = Outbound::builder(settings).build().unwrap();
        Federation::new(outbound, Some(dns.parse().unwrap())).unwrap()
    }

    fn name(s: &str) -> OwnedServerName {
        ServerName::parse(s).unwrap()
    }

    /// Runs a future on a runtime of its own, within the bound (plus slack,
    /// so that a hang fails the test instead of holding it); its time.
    fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = Instant::now();
        let out = rt
            .block_on(async { tokio::time::timeout(BOUND * 3, f).await })
            .expect("the library call hung");
        (out, started.elapsed())
    }

    /// `egress federation ARGS` with squid, the test CA and the world's DNS,
    /// killed if it runs past the bound (plus slack): exit code, all output, time.
    fn command(sub: &str, server_or_mxc: &[&str]) -> (i32, String, Duration) {
        let (proxy, yaml, dns) = setup();
        let dir = std::env::temp_dir().join(format!("egress-cli-fed-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out_file = dir.join(format!("{}.out", server_or_mxc.join("_").replace('/', "_")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_egress"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SSL_CERT_FILE", &world().ca.pem_path)
            .env("HTTPS_PROXY", &proxy)
            .args(["federation", sub, "--config", &yaml, "--dns-server", &dns])
            .args(server_or_mxc)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_file).unwrap())
            .stderr(std::fs::File::create(out_file.with_extension("err")).unwrap());
        // SAFETY: prctl in the child before exec: it dies with this test's thread.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().expect("egress runs");
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > BOUND * 3 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("egress federation {sub} {server_or_mxc:?} hung");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = started.elapsed();
        let text = std::fs::read_to_string(&out_file).unwrap_or_default()
            + &std::fs::read_to_string(out_file.with_extension("err")).unwrap_or_default();
        assert!(
            !text.contains(PASSWORD) && !text.contains(PASSWORD_ENCODED),
            "{text}"
        );
        (status.code().expect("exited"), text, took)
    }

    /// A `FederationError`'s variant, with the transport errors of an
    /// `Unreachable` (as support::variant names them).
    fn fed_variant(err: &FederationError) -> String {
        match err {
            FederationError::Unreachable { errors, .. } => format!(
                "Unreachable [{}]",
                errors
                    .iter()
                    .map(|(_, e)| variant(e))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            FederationError::Transport(e) => format!("Transport({})", variant(e)),
            other => format!("{other:?}")
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// Asserts both times within the bound and records the row.
    #[allow(clippy::too_many_arguments)]
    fn row(
        id: &str,
        fault: &str,
        source: &str,
        error: String,
        code: i32,
        library: Duration,
        cli: Duration,
    ) {
        for (who, took) in [("the library", library), ("the command", cli)] {
            assert!(took < BOUND, "{id} {fault}: {who} took {took:?}");
        }
        FaultRow {
            id,
            fault,
            source,
            error,
            code: Some(code),
            library: Some(library),
            command: Some(cli),
        }
        .record();
    }

    /// A well-known fault: discovery falls back, as Synapse does, to
    /// `server:8448`, and says why; nothing listens there, so the request
    /// then fails (squid: 503), and `federation test` exits 1 naming the step.
    fn falls_back(id: &str, fault: &str, source: &str, server: &str, step: &str) {
        let fed = federation();
        let (resolution, took) = timed(fed.discovery().resolve(&name(server)));
        let steps = resolution.steps.join("\n");
        assert!(steps.contains(step), "{id}: {steps}");
        assert_eq!(
            resolution.targets,
            vec![(server.to_owned(), 8448)],
            "{id}: {steps}"
        );
        let (result, request_took) = timed(fed.json(
            Purpose::Federation,
            Method::GET,
            &name(server),
            "/_matrix/federation/v1/version",
            None,
        ));
        let err = result.unwrap_err();
        assert!(
            matches!(&err, FederationError::Unreachable { errors, .. } if errors.len() == 1),
            "{id}: {err}"
        );
        let (code, text, cli) = command("test", &[server]);
        assert_eq!(code, 1, "{id}: {text}");
        assert!(text.contains(step), "{id}: {text}");
        row(
            id,
            fault,
            source,
            format!(
                "no error: falls back to {server}:8448 (\"{step}\"); there, {}",
                fed_variant(&err)
            ),
            code,
            took + request_took,
            cli,
        );
    }

    #[test]
    fn f01_well_known_not_json() {
        falls_back(
            "F01",
            "well-known is not JSON",
            "Matrix test origin (badjson.test)",
            "badjson.test",
            "not JSON",
        );
    }

    #[test]
    fn f02_well_known_m_server_not_a_string() {
        falls_back(
            "F02",
            "well-known `m.server` is not a string",
            "Matrix test origin (nonstring.test)",
            "nonstring.test",
            "`m.server` is not a string",
        );
    }

    #[test]
    fn f03_well_known_huge() {
        falls_back(
            "F03",
            "well-known of 60 KiB (over the 50 KiB limit)",
            "Matrix test origin (big.test)",
            "big.test",
            "larger than 50 KiB",
        );
    }

    #[test]
    fn f04_well_known_redirect_chain() {
        falls_back(
            "F04",
            "well-known redirects to itself (a redirect chain)",
            "Matrix test origin (loop.test)",
            "loop.test",
            "more than 10 redirects",
        );
    }

    #[test]
    fn f05_srv_target_dot() {
        // As Synapse: the server says it offers no federation, so nothing
        // is tried (no legacy SRV record, no port 8448).
        let fed = federation();
        let (result, took) = timed(fed.json(
            Purpose::Federation,
            Method::GET,
            &name("dot.test"),
            "/_matrix/federation/v1/version",
            None,
        ));
        let err = result.unwrap_err();
        assert!(
            matches!(&err, FederationError::NotOffered { reason, .. }
                if reason.contains("the target is `.`")),
            "{err}"
        );
        let (code, text, cli) = command("test", &["dot.test"]);
        assert_eq!(code, 1, "{text}");
        assert!(
            text.contains("federation FAILED: dot.test does not offer federation"),
            "{text}"
        );
        assert!(
            world().squid.requests("dot.test:8448").is_empty(),
            "a connection to dot.test:8448 was attempted"
        );
        row(
            "F05",
            "SRV record pointing at \".\" (service not offered)",
            "dnsmasq (dot.test)",
            fed_variant(&err),
            code,
            took,
            cli,
        );
    }

    /// A keys fault: `server_keys` fails its check; `federation test` exits 1 saying so.
    fn bad_keys(id: &str, fault: &str, source: &str, server: &str, problem: &str) {
        let fed = federation();
        let (result, took) = timed(fed.server_keys(&name(server)));
        let err = result.unwrap_err();
        assert!(
            matches!(&err, FederationError::Keys { problem: p, .. } if p.contains(problem)),
            "{id}: {err}"
        );
        let (code, text, cli) = command("test", &[server]);
        assert_eq!(code, 1, "{id}: {text}");
        assert!(
            text.contains(&format!("federation FAILED: server keys of {server}"))
                && text.contains(problem),
            "{id}: {text}"
        );
        row(id, fault, source, fed_variant(&err), code, took, cli);
    }

    #[test]
    fn f06_server_keys_expired() {
        let server = format!("expired.test:{}", matrix().key_server_port);
        bad_keys(
            "F06",
            "server keys expired (valid_until_ts an hour ago)",
            "Matrix test origin (expired.test)",
            &server,
            "the keys expired",
        );
    }

    #[test]
    fn f07_server_keys_mis_signed() {
        let server = format!("missigned.test:{}", matrix().key_server_port);
        bad_keys(
            "F07",
            "server keys mis-signed (another key under the published key's id)",
            "Matrix test origin (missigned.test)",
            &server,
            "does not verify",
        );
    }

    #[test]
    fn f08_server_keys_of_another_server() {
        // delegated.test delegates to Synapse, whose keys name hs1.test.
        bad_keys(
            "F08",
            "server keys for another server name",
            "Synapse (hs1.test's keys, reached through delegated.test's well-known)",
            "delegated.test",
            "`server_name` is hs1.test",
        );
    }

    /// A TLS fault at the target: every target fails; `federation test` exits 1.
    fn bad_certificate(id: &str, fault: &str, source: &str, server: &str) {
        let fed = federation();
        let (result, took) = timed(fed.json(
            Purpose::Federation,
            Method::GET,
            &name(server),
            "/_matrix/federation/v1/version",
            None,
        ));
        let err = result.unwrap_err();
        assert!(
            matches!(&err, FederationError::Unreachable { errors, .. }
                if matches!(errors[0].1, egress::Error::Certificate { is_proxy: false, .. })),
            "{id}: {err}"
        );
        let (code, text, cli) = command("test", &[server]);
        assert_eq!(code, 1, "{id}: {text}");
        assert!(
            text.contains(&format!("TLS certificate of {server} was not accepted")),
            "{id}: {text}"
        );
        row(id, fault, source, fed_variant(&err), code, took, cli);
    }

    #[test]
    fn f09_certificate_for_the_srv_target_not_the_server() {
        bad_certificate(
            "F09",
            "certificate for another name (the SRV target's, not the server name's)",
            "stunnel (certificate for backend.test) in front of Synapse",
            "hs3.test",
        );
    }

    #[test]
    fn f10_certificate_from_an_unknown_ca() {
        bad_certificate(
            "F10",
            "certificate from an unknown CA",
            "stunnel (a CA nobody trusts) in front of Synapse",
            "untrusted.test",
        );
    }

    #[test]
    fn f11_target_down() {
        let port = super::free_port();
        let server = format!("hs1.test:{port}");
        let fed = federation();
        let (result, took) = timed(fed.json(
            Purpose::Federation,
            Method::GET,
            &name(&server),
            "/_matrix/federation/v1/version",
            None,
        ));
        let err = result.unwrap_err();
        assert!(
            matches!(&err, FederationError::Unreachable { errors, .. }
                if matches!(&errors[0].1, egress::Error::ProxyUnreachable { status, .. } if *status == 503)),
            "{err}"
        );
        let (code, text, cli) = command("test", &[&server]);
        assert_eq!(code, 1, "{text}");
        row(
            "F11",
            "the server's port is closed",
            "squid (503: it cannot connect)",
            fed_variant(&err),
            code,
            took,
            cli,
        );
    }

    #[test]
    fn f12_media_over_the_size_limit() {
        let m = matrix();
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let media_id = upload_media(m, &bytes, "application/octet-stream");
        let mxc = format!("mxc://hs1.test/{media_id}");
        let key = SigningKey::parse(&std::fs::read_to_string(&m.key_file).unwrap()).unwrap();
        let fed = federation().with_signing_key(&name(&m.origin_name()), key);
        let mut out = Vec::new();
        let (result, took) =
            timed(fed.download_media(&OwnedMxcUri::from(mxc.as_str()), &mut out, 1000));
        let err = result.unwrap_err();
        assert!(
            matches!(err, FederationError::TooLarge { limit: 1000 }),
            "{err}"
        );
        assert!(
            out.len() <= 1000,
            "{} bytes written past the limit",
            out.len()
        );
        let file =
            std::env::temp_dir().join(format!("egress-cli-fed-row-media-{}", std::process::id()));
        let origin = m.origin_name();
        let (code, text, cli) = command(
            "media",
            &[
                "--origin",
                &origin,
                "--signing-key",
                m.key_file.to_str().unwrap(),
                "--max-size",
                "1000",
                "-o",
                file.to_str().unwrap(),
                &mxc,
            ],
        );
        assert_eq!(code, 1, "{text}");
        assert!(
            text.contains("larger than the limit of 1000 bytes"),
            "{text}"
        );
        assert!(!file.exists(), "a partial download was left as the output");
        row(
            "F12",
            "remote media over the size limit (5000 bytes, limit 1000)",
            "Synapse (the media repository)",
            fed_variant(&err),
            code,
            took,
            cli,
        );
    }
}
