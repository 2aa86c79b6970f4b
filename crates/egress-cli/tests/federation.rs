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
    std::fs::write(
        &yaml,
        format!(
            "federation_custom_ca_list: ['{}']\n",
            world().ca.pem_path.display()
        ),
    )
    .unwrap();
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

    for bad in ["bad name", "host:0", "[::1", "https://matrix.org"] {
        let out = federation(&[], &["test", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(
            text(&out).contains("is not a valid Matrix server name"),
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
