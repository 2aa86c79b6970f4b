//! Ed25519 signing keys in Synapse's `signing.key` format, canonical JSON,
//! JSON signatures and the `X-Matrix` request authorization.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde_json::{json, Value};

/// Decodes unpadded or padded base64, tolerating non-zero trailing bits (as
/// Python's decoder does; the specification's own test key has them).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A server's signing key. `Debug` never shows the seed.
pub struct SigningKey {
    version: String,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

/// What is wrong with a key or a signature.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// The key file is not `ed25519 <version> <unpadded base64 seed>`.
    #[error("not a signing key (expected `ed25519 <version> <base64 seed>`): {0}")]
    BadKey(String),
    /// A signature is missing or does not verify.
    #[error("{0}")]
    BadSignature(String),
}

impl SigningKey {
    /// Reads the first key of a Synapse `signing.key` file.
    pub fn parse(text: &str) -> Result<SigningKey, SigningError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [algorithm, version, seed] = parts[..] else {
            return Err(SigningError::BadKey("three fields are needed".into()));
        };
        if algorithm != "ed25519" {
            return Err(SigningError::BadKey(format!(
                "algorithm `{algorithm}` is not ed25519"
            )));
        }
        let bytes = LENIENT
            .decode(seed)
            .map_err(|e| SigningError::BadKey(format!("the seed is not base64: {e}")))?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SigningError::BadKey("the seed must be 32 bytes".into()))?;
        SigningKey::from_seed(version, seed)
    }

    /// A key from its version and 32-byte seed.
    pub fn from_seed(version: &str, seed: [u8; 32]) -> Result<SigningKey, SigningError> {
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(SigningError::BadKey(format!(
                "key version `{version}` must be letters, digits and _"
            )));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| SigningError::BadKey(e.to_string()))?;
        Ok(SigningKey {
            version: version.to_owned(),
            seed,
            pair,
        })
    }

    /// A new random key with a version like `a_Xy3Q`.
    pub fn generate() -> SigningKey {
        let rng = SystemRandom::new();
        let mut seed = [0u8; 32];
        rng.fill(&mut seed).expect("system randomness");
        let mut tag = [0u8; 3];
        rng.fill(&mut tag).expect("system randomness");
        let version = format!("a_{}", STANDARD_NO_PAD.encode(tag).replace(['+', '/'], "x"));
        SigningKey::from_seed(&version, seed).expect("valid")
    }

    /// The line of a `signing.key` file.
    pub fn to_file_line(&self) -> String {
        format!(
            "ed25519 {} {}\n",
            self.version,
            STANDARD_NO_PAD.encode(self.seed)
        )
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    /// The public key, unpadded base64.
    pub fn public_key(&self) -> String {
        STANDARD_NO_PAD.encode(self.pair.public_key().as_ref())
    }

    /// Signs bytes; the signature in unpadded base64.
    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD_NO_PAD.encode(self.pair.sign(message).as_ref())
    }

    /// Adds this key's signature for `server_name` to a JSON object.
    pub fn sign_json(&self, server_name: &str, value: &mut Value) {
        let signature = self.sign(canonical_json(&without_signatures(value)).as_bytes());
        let object = value.as_object_mut().expect("a JSON object");
        let signatures = object.entry("signatures").or_insert_with(|| json!({}));
        signatures[server_name][self.key_id()] = Value::String(signature);
    }

    /// The `Authorization: X-Matrix …` value for a request.
    pub fn x_matrix(
        &self,
        method: &str,
        uri: &str,
        origin: &str,
        destination: &str,
        content: Option<&Value>,
    ) -> String {
        let mut request = json!({
            "method": method,
            "uri": uri,
            "origin": origin,
            "destination": destination,
        });
        if let Some(content) = content {
            request["content"] = content.clone();
        }
        let signature = self.sign(canonical_json(&request).as_bytes());
        format!(
            "X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"{}\",sig=\"{signature}\"",
            self.key_id()
        )
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// Matrix canonical JSON: keys sorted, no insignificant white space, UTF-8.
/// (serde_json's map is ordered by key unless its `preserve_order` feature is on.)
pub fn canonical_json(value: &Value) -> String {
    serde_json::to_string(value).expect("a JSON value serialises")
}

fn without_signatures(value: &Value) -> Value {
    let mut copy = value.clone();
    if let Some(object) = copy.as_object_mut() {
        object.remove("signatures");
        object.remove("unsigned");
    }
    copy
}

/// Verifies `server_name`'s signature with `key_id` over a signed JSON object,
/// given the public key in unpadded base64.
pub fn verify_json(
    value: &Value,
    server_name: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), SigningError> {
    let signature = value
        .get("signatures")
        .and_then(|s| s.get(server_name))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            SigningError::BadSignature(format!("no signature by {server_name} with {key_id}"))
        })?;
    let signature = LENIENT.decode(signature).map_err(|_| {
        SigningError::BadSignature(format!(
            "the signature by {server_name} with {key_id} is not base64"
        ))
    })?;
    let public_key = LENIENT.decode(public_key).map_err(|_| {
        SigningError::BadSignature(format!("the public key {key_id} is not base64"))
    })?;
    let message = canonical_json(&without_signatures(value));
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message.as_bytes(), &signature)
        .map_err(|_| {
            SigningError::BadSignature(format!(
                "the signature by {server_name} with {key_id} does not verify"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip() {
        let key = SigningKey::generate();
        let line = key.to_file_line();
        let again = SigningKey::parse(&line).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert_eq!(again.key_id(), key.key_id());
        assert!(!format!("{key:?}").contains(line.split_whitespace().nth(2).unwrap()));
        for bad in [
            "",
            "ed25519 a_1",
            "rsa a_1 AAAA",
            "ed25519 a_1 !!!!",
            "ed25519 a_1 AAAA",
            "ed25519 a-b AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(SigningKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_example_key_signs_empty_object() {
        // The signing key of the Matrix specification's appendix test vectors.
        let seed = LENIENT
            .decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
            .unwrap();
        let key = SigningKey::from_seed("1", seed.try_into().unwrap()).unwrap();
        assert_eq!(
            key.public_key(),
            "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
        );
        let mut value = json!({});
        key.sign_json("domain", &mut value);
        assert_eq!(
            value["signatures"]["domain"]["ed25519:1"],
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        );
        verify_json(&value, "domain", "ed25519:1", &key.public_key()).unwrap();
        let mut value = json!({"one": 1, "two": "Two"});
        key.sign_json("domain", &mut value);
        assert_eq!(
            value["signatures"]["domain"]["ed25519:1"],
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let key = SigningKey::generate();
        let mut value = json!({"server_name": "hs", "valid_until_ts": 1});
        key.sign_json("hs", &mut value);
        verify_json(&value, "hs", &key.key_id(), &key.public_key()).unwrap();
        value["valid_until_ts"] = json!(2);
        assert!(verify_json(&value, "hs", &key.key_id(), &key.public_key()).is_err());
        assert!(verify_json(&value, "other", &key.key_id(), &key.public_key()).is_err());
    }

    #[test]
    fn canonical_json_sorts_keys_compactly() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": {"d": [1, 2], "c": "é"}}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":{"c":"é","d":[1,2]},"b":1}"#);
    }
}
