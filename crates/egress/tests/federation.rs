//! Federation through squid against a real Synapse homeserver: discovery
//! (well-known, SRV, explicit port), SNI and verification by server name,
//! no_proxy on SRV targets, signed requests Synapse accepts or rejects,
//! server keys, notary keys and remote media.

#![cfg(feature = "federation")]

#[path = "support/matrix.rs"]
mod matrix;
mod support;

use egress::{Error, HomeserverYaml, Outbound, ProxyEnv, ProxySettings, Purpose};
use egress::{Federation, FederationError, OwnedMxcUri, OwnedServerName, ServerName, SigningKey};
use http::Method;
use matrix::*;
use support::*;

fn federation(env: &[(&str, &str)], yaml: &str) -> Federation {
    captured_logs();
    let m = matrix();
    let env = ProxyEnv::from_vars(env.iter().copied());
    let settings = ProxySettings::new(&env, Some(&HomeserverYaml::parse(yaml).unwrap())).unwrap();
    let outbound = Outbound::builder(settings)
        .add_ca_file(&world().ca.pem_path)
        .resolve("direct.test", &[std::net::Ipv4Addr::LOCALHOST.into()])
        .build()
        .unwrap();
    let dns = format!("127.0.0.1:{}", m.dns_port).parse().unwrap();
    Federation::new(outbound, Some(dns)).unwrap()
}

fn squid_env() -> String {
    format!(
        "http://{USER}:{PASSWORD_ENCODED}@localhost:{}",
        world().squid.auth_port
    )
}

/// Federation TLS trusts the test CA through federation_custom_ca_list.
fn ca_yaml() -> String {
    format!(
        "federation_custom_ca_list: ['{}']\n",
        world().ca.pem_path.display()
    )
}

/// The key our key server publishes for the origin of signed requests.
fn origin_key() -> SigningKey {
    SigningKey::parse(&std::fs::read_to_string(&matrix().key_file).unwrap()).unwrap()
}

/// Through squid, signing as our key server's IP-literal origin.
fn signed_federation() -> Federation {
    federation(&[("https_proxy", &squid_env())], &ca_yaml())
        .with_signing_key(&name(&matrix().origin_name()), origin_key())
}

fn name(s: &str) -> OwnedServerName {
    ServerName::parse(s).unwrap()
}

fn mxc(media_id: &str) -> OwnedMxcUri {
    let mxc = OwnedMxcUri::from(format!("mxc://hs1.test/{media_id}"));
    mxc.validate().unwrap();
    mxc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_discovery_through_squid_reaches_synapse() {
    let m = matrix();
    let proxy = squid_env();
    let fed = federation(&[("https_proxy", &proxy)], &ca_yaml());
    let resolution = fed.discovery().resolve(&name("hs1.test")).await;
    assert_eq!(
        resolution.targets,
        vec![("hs1.test".to_owned(), m.tls_port)],
        "{:?}",
        resolution.steps
    );
    assert_eq!(resolution.tls_name, "hs1.test");
    let version = fed
        .json(
            Purpose::Federation,
            Method::GET,
            &name("hs1.test"),
            "/_matrix/federation/v1/version",
            None,
        )
        .await
        .unwrap();
    assert_eq!(version["server"]["name"], "Synapse");
    let keys = fed.server_keys(&name("hs1.test")).await.unwrap();
    assert_eq!(keys.server_name, "hs1.test");
    assert!(!keys.verify_keys.is_empty());
    drop(fed);
    let lines = world()
        .squid
        .log_lines(&format!("CONNECT hs1.test:{}", m.tls_port), 1);
    assert!(!lines.is_empty(), "squid saw no CONNECT to the SRV target");
    assert_no_password_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_known_delegation_and_explicit_port() {
    let m = matrix();
    let proxy = squid_env();
    let fed = federation(&[("https_proxy", &proxy)], &ca_yaml());
    let resolution = fed.discovery().resolve(&name("delegated.test")).await;
    assert_eq!(
        resolution.targets,
        vec![("hs1.test".to_owned(), m.tls_port)],
        "{:?}",
        resolution.steps
    );
    assert_eq!(resolution.host_header, format!("hs1.test:{}", m.tls_port));
    assert!(
        resolution.steps[0].contains("m.server is hs1.test"),
        "{:?}",
        resolution.steps
    );
    // The second time comes from the cache.
    let again = fed.discovery().resolve(&name("delegated.test")).await;
    assert!(again.steps[0].contains("cached"), "{:?}", again.steps);
    let version = fed
        .json(
            Purpose::Federation,
            Method::GET,
            &name("delegated.test"),
            "/_matrix/federation/v1/version",
            None,
        )
        .await
        .unwrap();
    assert_eq!(version["server"]["name"], "Synapse");

    // An explicit port: our key server answers for keys.test:<port>.
    let keys_name = format!("keys.test:{}", m.key_server_port);
    let keys = fed.server_keys(&name(&keys_name)).await.unwrap();
    assert_eq!(keys.server_name, keys_name);
    // Synapse's keys say hs1.test, so hs1.test:<port> is another server: refused clearly.
    let err = fed
        .server_keys(&name(&format!("hs1.test:{}", m.tls_port)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("`server_name` is hs1.test"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_server_name_not_the_srv_target() {
    let proxy = squid_env();
    let fed = federation(&[("https_proxy", &proxy)], &ca_yaml());
    // hs3.test's SRV target is backend.test, whose certificate names only backend.test.
    let err = fed
        .json(
            Purpose::Federation,
            Method::GET,
            &name("hs3.test"),
            "/_matrix/federation/v1/version",
            None,
        )
        .await
        .unwrap_err();
    match &err {
        FederationError::Unreachable { errors, .. } => {
            assert!(
                matches!(
                    errors[0].1,
                    Error::Certificate {
                        is_proxy: false,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(errors[0].1.to_string().contains("hs3.test"), "{err}");
        }
        other => panic!("expected a certificate failure, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_pass_with_verification_off_or_whitelisted() {
    let proxy = squid_env();
    let untrusted = name("untrusted.test");
    let version = "/_matrix/federation/v1/version";
    let fed = federation(&[("https_proxy", &proxy)], &ca_yaml());
    let err = fed
        .json(Purpose::Federation, Method::GET, &untrusted, version, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not accepted"), "{err}");
    for yaml in [
        "federation_verify_certificates: false\n",
        "federation_certificate_verification_whitelist: ['*.TEST']\n",
    ] {
        let fed = federation(&[("https_proxy", &proxy)], yaml);
        let answer = fed
            .json(Purpose::Federation, Method::GET, &untrusted, version, None)
            .await;
        assert_eq!(answer.unwrap()["server"]["name"], "Synapse", "{yaml}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_on_the_srv_target_goes_direct() {
    let proxy = squid_env();
    // srv2.test's SRV target is direct.test; no_proxy names the target, not the server.
    let yaml = format!("{}ip_range_whitelist: ['127.0.0.0/8']\n", ca_yaml());
    let fed = federation(
        &[("https_proxy", &proxy), ("no_proxy", "direct.test")],
        &yaml,
    );
    let version = fed
        .json(
            Purpose::Federation,
            Method::GET,
            &name("srv2.test"),
            "/_matrix/federation/v1/version",
            None,
        )
        .await
        .unwrap();
    assert_eq!(version["server"]["name"], "Synapse");
    // Through squid, the answer would have come after squid parsed the CONNECT.
    assert_eq!(
        world().squid.requests("direct.test"),
        Vec::<String>::new(),
        "the proxy saw direct.test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_accepts_our_signature_and_rejects_a_wrong_key() {
    let m = matrix();
    let proxy = squid_env();
    let path = format!("/_matrix/federation/v1/query/profile?user_id=%40{SYNAPSE_USER}%3Ahs1.test");
    let origin = m.origin_name();
    let fed = signed_federation();
    let (_, response) = fed
        .request(
            Purpose::Federation,
            Method::GET,
            &name("hs1.test"),
            &path,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "Synapse rejected a correctly signed request"
    );

    // Same key id as the published one, another key: the signature cannot verify.
    let published = origin_key();
    let version = published.key_id().trim_start_matches("ed25519:").to_owned();
    let fresh = SigningKey::generate().to_file_line();
    let seed = fresh.split_whitespace().nth(2).unwrap();
    let impostor = SigningKey::parse(&format!("ed25519 {version} {seed}")).unwrap();
    let fed = federation(&[("https_proxy", &proxy)], &ca_yaml())
        .with_signing_key(&name(&origin), impostor);
    let (_, response) = fed
        .request(
            Purpose::Federation,
            Method::GET,
            &name("hs1.test"),
            &path,
            None,
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "Synapse accepted a wrong signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notary_keys_verify_and_tampering_fails() {
    let m = matrix();
    let proxy = squid_env();
    let fed = federation(&[("https_proxy", &proxy)], &ca_yaml());
    // Synapse as the notary for our key server's keys. Synapse answers a POST
    // query from its cache only, so first make it fetch them: a signed request
    // from our origin does.
    let signed = signed_federation();
    let path = format!("/_matrix/federation/v1/query/profile?user_id=%40{SYNAPSE_USER}%3Ahs1.test");
    let (_, response) = signed
        .request(
            Purpose::Federation,
            Method::GET,
            &name("hs1.test"),
            &path,
            None,
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answers = fed
        .notary_keys(&name("hs1.test"), &name(&m.origin_name()))
        .await
        .unwrap();
    assert_eq!(answers.len(), 1);
    assert!(
        answers[0]
            .checks
            .iter()
            .any(|c| c.contains("signed by notary hs1.test")),
        "{:?}",
        answers[0].checks
    );
    // A tampered copy of Synapse's keys fails the self-signature check.
    let mut value = fed
        .json(
            Purpose::KeyFetch,
            Method::GET,
            &name("hs1.test"),
            "/_matrix/key/v2/server",
            None,
        )
        .await
        .unwrap();
    value["valid_until_ts"] = serde_json::json!(value["valid_until_ts"].as_u64().unwrap() + 1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let err = egress::check_server_keys(&value, &name("hs1.test"), now).unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_media_downloads_byte_for_byte_and_respects_the_limit() {
    let m = matrix();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let media_id = upload_media(m, &bytes, "application/octet-stream");
    let fed = signed_federation();
    let mxc = mxc(&media_id);
    let mut out = Vec::new();
    let content_type = fed
        .download_media(&mxc, &mut out, 50 * 1024 * 1024)
        .await
        .unwrap();
    assert_eq!(out.len(), bytes.len());
    assert!(out == bytes, "the download differs from the upload");
    assert_eq!(content_type.as_deref(), Some("application/octet-stream"));
    let mut small = Vec::new();
    let err = fed
        .download_media(&mxc, &mut small, 1000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FederationError::TooLarge { limit: 1000 }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_well_known_answers_fall_back_with_a_clear_reason() {
    let proxy = squid_env();
    let fed = federation(&[("https_proxy", &proxy)], &ca_yaml());
    for (server, needle) in [
        ("badjson.test", "not JSON"),
        ("nonstring.test", "`m.server` is not a string"),
        ("big.test", "larger than 50 KiB"),
        ("loop.test", "more than 10 redirects"),
    ] {
        let resolution = fed.discovery().resolve(&name(server)).await;
        let steps = resolution.steps.join("\n");
        assert!(steps.contains(needle), "{server}: {steps}");
        // Falls back to SRV (none), then port 8448.
        assert_eq!(
            resolution.targets,
            vec![(server.to_owned(), 8448)],
            "{server}: {steps}"
        );
    }
    // An SRV record whose target is `.`: the server offers no federation.
    // As Synapse, nothing is tried (no legacy SRV, no port 8448).
    let resolution = fed.discovery().resolve(&name("dot.test")).await;
    let steps = resolution.steps.join("\n");
    assert!(
        steps.contains("the target is `.`: dot.test does not offer federation"),
        "{steps}"
    );
    assert!(!steps.contains("_matrix._tcp"), "{steps}");
    assert_eq!(resolution.targets, Vec::<(String, u16)>::new());
    let err = fed
        .json(
            Purpose::Federation,
            Method::GET,
            &name("dot.test"),
            "/_matrix/federation/v1/version",
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FederationError::NotOffered { server, .. } if server == "dot.test"),
        "{err}"
    );
    assert!(
        world().squid.requests("dot.test:8448").is_empty(),
        "a connection to dot.test was attempted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_validity_goes_through_the_regular_proxied_client() {
    let w = world();
    let proxy = squid_env();
    let fed = federation(&[("https_proxy", &proxy)], "");
    let url = w.https_origin.url(&test_name(9), "/pubkey/isvalid");
    assert!(fed.public_key_valid(&url, "good+key").await.unwrap());
    assert!(!fed.public_key_valid(&url, "bad+key").await.unwrap());
    drop(fed);
    let lines = w.squid.log_lines(&format!("CONNECT {}:", test_name(9)), 1);
    assert!(!lines.is_empty(), "the check did not go through the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literal_server_names_connect_to_that_address() {
    let fed = federation(&[], "");
    let r = fed.discovery().resolve(&name("127.0.0.1:8449")).await;
    assert_eq!(r.targets, vec![("127.0.0.1".to_owned(), 8449)]);
    assert_eq!(
        (r.tls_name.as_str(), r.host_header.as_str()),
        ("127.0.0.1", "127.0.0.1:8449")
    );
    let r = fed.discovery().resolve(&name("[::1]")).await;
    assert_eq!(r.targets, vec![("::1".to_owned(), 8448)]);
    assert_eq!(
        (r.tls_name.as_str(), r.host_header.as_str()),
        ("::1", "[::1]")
    );
    assert!(
        r.steps.iter().all(|s| !s.contains("well-known")),
        "{:?}",
        r.steps
    );
}

/// The test build has serde_json's `preserve_order` on (a dev-dependency
/// feature, unified into this build): every test here, against Synapse
/// included, runs with maps that keep insertion order.
#[test]
fn serde_json_preserve_order_is_on_in_this_build() {
    let mut map = serde_json::Map::new();
    map.insert("b".to_owned(), 1.into());
    map.insert("a".to_owned(), 2.into());
    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["b", "a"],
        "preserve_order is off: the canonical JSON tests below prove nothing"
    );
    let parsed: serde_json::Value = serde_json::from_str(r#"{"z": 1, "y": 2}"#).unwrap();
    assert_eq!(parsed.to_string(), r#"{"z":1,"y":2}"#);
}

/// The specification's canonical JSON and signing test vectors (appendices),
/// written with keys out of order, under `preserve_order`.
#[test]
fn spec_test_vectors_hold_with_preserve_order() {
    use egress::canonical_json;
    for (input, canonical) in [
        (r#"{"one": 1, "two": "Two"}"#, r#"{"one":1,"two":"Two"}"#),
        (r#"{"b": "2", "a": "1"}"#, r#"{"a":"1","b":"2"}"#),
        (
            r#"{"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email", "address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}"#,
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
        ),
        (r#"{"a": "日本語"}"#, r#"{"a":"日本語"}"#),
        (r#"{"本": 2, "日": 1}"#, r#"{"日":1,"本":2}"#),
        (r#"{"a": "\u65E5"}"#, r#"{"a":"日"}"#),
        (r#"{"a": null}"#, r#"{"a":null}"#),
    ] {
        let value: serde_json::Value = serde_json::from_str(input).unwrap();
        assert_eq!(canonical_json(&value).unwrap(), canonical, "{input}");
    }

    // The spec's signing key signs {"two": "Two", "one": 1} (out of order here).
    let key = SigningKey::parse("ed25519 1 YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
    assert_eq!(
        key.public_key(),
        "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
    );
    let value: serde_json::Value = serde_json::from_str(r#"{"two": "Two", "one": 1}"#).unwrap();
    let mut object = egress::to_canonical_object(&value).unwrap();
    key.sign_json("domain", &mut object).unwrap();
    let signed = serde_json::to_value(&object).unwrap();
    assert_eq!(
        signed["signatures"]["domain"]["ed25519:1"],
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
    );
    // A signed object as the spec prints it, signatures first: verifies.
    let printed: serde_json::Value = serde_json::from_str(
        r#"{"signatures": {"domain": {"ed25519:1": "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}}, "two": "Two", "one": 1}"#,
    )
    .unwrap();
    let printed = egress::to_canonical_object(&printed).unwrap();
    egress::verify_json(&printed, "domain", "ed25519:1", &key.public_key()).unwrap();
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// A writer that discards bytes and records the highest RSS seen while writing.
struct RssSink {
    written: u64,
    peak_rss: u64,
}

impl std::io::Write for RssSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len() as u64;
        self.peak_rss = self.peak_rss.max(rss());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// 50 MiB from Synapse through squid: written as it arrives, so the
/// process grows by less than 8 MiB (a buffered answer would hold all of it
/// while writing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_download_streams_in_bounded_memory() {
    const SIZE: usize = 50 * 1024 * 1024;
    let m = matrix();
    let media_id = {
        let bytes: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        upload_media(m, &bytes, "application/octet-stream")
    };
    let fed = signed_federation();
    let mxc = mxc(&media_id);
    // A small download first, so that connection pools, TLS and discovery
    // caches exist before the baseline.
    let mut warm = RssSink {
        written: 0,
        peak_rss: 0,
    };
    let err = fed.download_media(&mxc, &mut warm, 1024).await.unwrap_err();
    assert!(matches!(err, FederationError::TooLarge { .. }), "{err}");
    let before = rss();
    let mut sink = RssSink {
        written: 0,
        peak_rss: before,
    };
    fed.download_media(&mxc, &mut sink, egress::DEFAULT_MEDIA_LIMIT)
        .await
        .unwrap();
    assert_eq!(sink.written, SIZE as u64);
    let growth = sink.peak_rss.saturating_sub(before);
    assert!(
        growth < 8 * 1024 * 1024,
        "RSS grew by {} KiB during a 50 MiB download",
        growth / 1024
    );
}

/// A multipart answer whose media part is a Location: followed as a new hop,
/// routed anew (through squid), with the size limit still applying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_location_part_is_a_new_routed_hop() {
    let m = matrix();
    let w = world();
    let fed = signed_federation();
    let mxc = OwnedMxcUri::from(format!("mxc://keys.test:{}/elsewhere", m.key_server_port));
    let mut small = Vec::new();
    let err = fed.download_media(&mxc, &mut small, 10).await.unwrap_err();
    assert!(
        matches!(err, FederationError::TooLarge { limit: 10 }),
        "{err}"
    );
    let mut out = Vec::new();
    fed.download_media(&mxc, &mut out, 1024).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "origin https /cdn/blob");
    assert!(
        !w.https_origin.seen("/cdn/blob").is_empty(),
        "the CDN origin saw no request"
    );
    // squid logs a tunnel when it closes.
    drop(fed);
    let lines = w.squid.log_lines(&format!("CONNECT {}:", test_name(12)), 1);
    assert!(
        !lines.is_empty(),
        "the CDN hop did not go through the proxy"
    );
}

/// A server that answers the federation media endpoint with M_UNRECOGNIZED
/// gets the legacy `/_matrix/media/v3/download` request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_falls_back_to_the_legacy_endpoint() {
    let m = matrix();
    let fed = signed_federation();
    let server = format!("keys.test:{}", m.key_server_port);
    let mxc = OwnedMxcUri::from(format!("mxc://{server}/old_1"));
    let mut out = Vec::new();
    let content_type = fed.download_media(&mxc, &mut out, 1024).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("legacy media /_matrix/media/v3/download/{server}/old_1")
    );
    assert_eq!(content_type.as_deref(), Some("text/plain"));
}

/// A signed POST whose JSON content is written out of key order (kept so by
/// `preserve_order`): the X-Matrix signature covers the canonical form, and
/// Synapse accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_accepts_a_signed_request_with_unordered_content() {
    let fed = signed_federation();
    let content: serde_json::Value = serde_json::from_str(&format!(
        r#"{{"z_unused": {{"b": 1, "a": 2}}, "device_keys": {{"@{SYNAPSE_USER}:hs1.test": []}}}}"#
    ))
    .unwrap();
    assert!(
        content.to_string().starts_with(r#"{"z_unused":{"b":1"#),
        "{content}"
    );
    let (_, response) = fed
        .request(
            Purpose::Federation,
            Method::POST,
            &name("hs1.test"),
            "/_matrix/federation/v1/user/keys/query",
            Some(&content),
        )
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "Synapse rejected a signed request with content"
    );
}

/// Every name the real Synapse refuses (`parse_and_validate_server_name`,
/// from the Synapse virtual environment) egress refuses too: Synapse's own
/// test cases, edge cases, and 4,000 random strings over the characters that
/// matter. Where egress refuses a name Synapse takes, it is the documented
/// stricter rule (the port, or an IPv6 form Rust's parser does not take).
#[test]
fn a_server_name_synapse_refuses_egress_refuses() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let mut names: Vec<String> = [
        "localhost",
        "my-example.com:1234",
        "1.2.3.4",
        "[0abc:1def::1234]",
        "1.2.3.4:1",
        "[0abc:1def::1234]:8080",
        "",
        "localhost:http",
        "1234]",
        "[1234",
        "[1.2.3.4]",
        "underscore_.com",
        "percent%65.com",
        "newline.com\n",
        ".empty-label.com",
        "1234:5678:80",
        ":80",
        "a..b",
        "example.com.",
        "example.com.:8448",
        ".",
        "-",
        "a-.b",
        "a.b:0",
        "a.b:+80",
        "a.b: 80",
        "a.b:",
        "a.b:65536",
        "a.b:08448",
        "[::1]",
        "[::1]:8448",
        "[::ffff:1.2.3.4]",
        "[]",
        "[::1",
        "::1",
        "a.b:8_0",
        "a.b:\u{0668}\u{0660}",
        "é.example",
        "a b",
        "[::1]x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A fixed xorshift: the same 4,000 strings every run.
    let pieces = [
        "a", "Z", "0", "9", "-", ".", ".", ":", "[", "]", "_", "%", "+", " ", "\n", "::1",
        "1.2.3.4", "example", "com", "8448", "0", "65535", "\u{0668}", "é",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..4000 {
        let mut name = String::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        for _ in 0..(state % 7 + 1) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            name.push_str(pieces[(state % pieces.len() as u64) as usize]);
        }
        names.push(name);
    }

    let script = "import json, sys\n\
        from synapse.util.stringutils import parse_and_validate_server_name\n\
        out = []\n\
        for name in json.load(sys.stdin):\n\
        \x20   try:\n\
        \x20       parse_and_validate_server_name(name)\n\
        \x20       out.append(True)\n\
        \x20   except ValueError:\n\
        \x20       out.append(False)\n\
        print(json.dumps(out))\n";
    let mut child = Command::new(venv().join("bin/python"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Synapse's python");
    let pid = child.id();
    // Never a hang: the interpreter is killed after 60 s.
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(60));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&names).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "Synapse's check did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let synapse: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(synapse.len(), names.len());

    let (mut both, mut refused, mut stricter) = (0, 0, 0);
    for (name, synapse_takes) in names.iter().zip(synapse) {
        match (synapse_takes, egress::parse_server_name(name)) {
            (false, Ok(_)) => panic!("Synapse refuses {name:?}; egress takes it"),
            (false, Err(_)) => refused += 1,
            (true, Ok(_)) => both += 1,
            (
                true,
                Err(egress::InvalidServerName::Port(_) | egress::InvalidServerName::Ipv6(_)),
            ) => stricter += 1,
            (true, Err(e)) => {
                panic!("Synapse takes {name:?}; egress refuses it outside its stricter rule: {e}")
            }
        }
    }
    // The cases reach both sides of the rule.
    assert!(
        both >= 100 && refused >= 1000,
        "{both} taken by both, {refused} refused by both"
    );
    eprintln!("{both} taken by both, {refused} refused by both, {stricter} refused by egress only (port or IPv6)");
}
