//! Ed25519 signing keys in Synapse's `signing.key` format, on ruma's key
//! pair; canonical JSON and JSON signatures from ruma.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ruma_common::{CanonicalJsonObject, CanonicalJsonValue, SigningKeyAlgorithm};
use ruma_signatures::{Ed25519KeyPair, KeyPair as _};
use serde_json::Value;

/// Decodes unpadded or padded base64, tolerating non-zero trailing bits (as
/// Python's decoder does; the specification's own test key has them).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The PKCS#8 v1 DER encoding of an Ed25519 private key (RFC 8410) is this
/// fixed prefix followed by the 32-byte seed.
const PKCS8_V1_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A server's signing key: a [`ruma_signatures::Ed25519KeyPair`] that also
/// reads and writes Synapse's `signing.key` format. `Debug` never shows the seed.
pub struct SigningKey {
    seed: [u8; 32],
    pair: Ed25519KeyPair,
}

/// What is wrong with a key, a signature or a JSON value to sign.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The key file is not `ed25519 <version> <unpadded base64 seed>`.
    #[error("not a signing key (expected `ed25519 <version> <base64 seed>`): {0}")]
    BadKey(String),
    /// A signature is missing or does not verify.
    #[error("{0}")]
    BadSignature(String),
    /// A JSON value that has no canonical form (a float, an integer out of range, not an object).
    #[error("the JSON has no canonical form: {0}")]
    NotCanonical(String),
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
        let mut der = [0u8; 48];
        der[..16].copy_from_slice(&PKCS8_V1_ED25519_PREFIX);
        der[16..].copy_from_slice(&seed);
        let pair = Ed25519KeyPair::from_der(&der, version.to_owned());
        der.fill(0);
        let pair = pair.map_err(|e| SigningError::BadKey(e.to_string()))?;
        Ok(SigningKey { seed, pair })
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

    /// The ruma key pair, for ruma's signing functions.
    pub fn key_pair(&self) -> &Ed25519KeyPair {
        &self.pair
    }

    /// The line of a `signing.key` file.
    pub fn to_file_line(&self) -> String {
        format!(
            "ed25519 {} {}\n",
            self.pair.version(),
            STANDARD_NO_PAD.encode(self.seed)
        )
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    /// The public key, unpadded base64.
    pub fn public_key(&self) -> String {
        STANDARD_NO_PAD.encode(self.pair.public_key())
    }

    /// Signs bytes; the signature in unpadded base64.
    pub fn sign(&self, message: &[u8]) -> String {
        self.pair.sign(message).base64()
    }

    /// Adds this key's signature for `server_name` to a JSON object
    /// (`signatures` and `unsigned` are not signed).
    pub fn sign_json(
        &self,
        server_name: &str,
        object: &mut CanonicalJsonObject,
    ) -> Result<(), SigningError> {
        ruma_signatures::sign_json(server_name, &self.pair, object)
            .map_err(|e| SigningError::NotCanonical(e.to_string()))
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        self.seed.fill(0);
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

/// A JSON value as ruma's canonical JSON value (no floats; integers in the
/// range JSON numbers hold exactly).
pub fn to_canonical(value: &Value) -> Result<CanonicalJsonValue, SigningError> {
    CanonicalJsonValue::try_from(value.clone())
        .map_err(|e| SigningError::NotCanonical(e.to_string()))
}

/// A JSON object as ruma's canonical JSON object.
pub fn to_canonical_object(value: &Value) -> Result<CanonicalJsonObject, SigningError> {
    match to_canonical(value)? {
        CanonicalJsonValue::Object(object) => Ok(object),
        _ => Err(SigningError::NotCanonical("not a JSON object".to_owned())),
    }
}

/// Matrix canonical JSON: keys sorted, no insignificant white space, UTF-8
/// (ruma's, independent of serde_json's `preserve_order` feature).
pub fn canonical_json(value: &Value) -> Result<String, SigningError> {
    Ok(to_canonical(value)?.to_string())
}

/// Verifies `server_name`'s signature with `key_id` over a signed JSON object,
/// given the public key in unpadded base64. Other signatures on the object
/// are not checked.
pub fn verify_json(
    object: &CanonicalJsonObject,
    server_name: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), SigningError> {
    let signature = object
        .get("signatures")
        .and_then(CanonicalJsonValue::as_object)
        .and_then(|s| s.get(server_name))
        .and_then(CanonicalJsonValue::as_object)
        .and_then(|s| s.get(key_id))
        .and_then(CanonicalJsonValue::as_str)
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
    let algorithm = key_id.split_once(':').map_or(key_id, |(a, _)| a);
    if algorithm != "ed25519" {
        return Err(SigningError::BadSignature(format!(
            "the key {key_id} is not an ed25519 key"
        )));
    }
    let message = ruma_signatures::to_canonical_json_string_for_signing(object)
        .map_err(|e| SigningError::NotCanonical(e.to_string()))?;
    ruma_signatures::verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        &public_key,
        &signature,
        message.as_bytes(),
    )
    .map_err(|_| {
        SigningError::BadSignature(format!(
            "the signature by {server_name} with {key_id} does not verify"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> CanonicalJsonObject {
        to_canonical_object(&value).unwrap()
    }

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

    /// The signing key of the Matrix specification's appendix test vectors.
    pub(crate) fn spec_key() -> SigningKey {
        let seed = LENIENT
            .decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
            .unwrap();
        SigningKey::from_seed("1", seed.try_into().unwrap()).unwrap()
    }

    #[test]
    fn spec_example_key_signs_the_test_vectors() {
        let key = spec_key();
        assert_eq!(
            key.public_key(),
            "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
        );
        let mut value = object(json!({}));
        key.sign_json("domain", &mut value).unwrap();
        let signature = &value["signatures"].as_object().unwrap()["domain"]
            .as_object()
            .unwrap()["ed25519:1"];
        assert_eq!(
            signature.as_str().unwrap(),
            "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
        );
        verify_json(&value, "domain", "ed25519:1", &key.public_key()).unwrap();
        // Written in reverse key order: canonical JSON sorts it whatever the map keeps.
        let mut value = object(serde_json::from_str(r#"{"two": "Two", "one": 1}"#).unwrap());
        key.sign_json("domain", &mut value).unwrap();
        let signature = &value["signatures"].as_object().unwrap()["domain"]
            .as_object()
            .unwrap()["ed25519:1"];
        assert_eq!(
            signature.as_str().unwrap(),
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let key = SigningKey::generate();
        let mut value = object(json!({"server_name": "hs", "valid_until_ts": 1}));
        key.sign_json("hs", &mut value).unwrap();
        verify_json(&value, "hs", &key.key_id(), &key.public_key()).unwrap();
        value.insert(
            "valid_until_ts".to_owned(),
            CanonicalJsonValue::Integer(2u32.into()),
        );
        assert!(verify_json(&value, "hs", &key.key_id(), &key.public_key()).is_err());
        assert!(verify_json(&value, "other", &key.key_id(), &key.public_key()).is_err());
    }

    #[test]
    fn canonical_json_sorts_keys_compactly() {
        let v: Value = serde_json::from_str(r#"{"b": 1, "a": {"d": [1, 2], "c": "é"}}"#).unwrap();
        assert_eq!(
            canonical_json(&v).unwrap(),
            r#"{"a":{"c":"é","d":[1,2]},"b":1}"#
        );
        assert!(canonical_json(&json!({"f": 1.5})).is_err());
    }
}
