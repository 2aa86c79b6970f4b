//! Server keys: `GET /_matrix/key/v2/server` and notary queries, with every check.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;
use ruma_common::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};
use serde_json::{json, Value};

use super::error::FederationError;
use super::request::Federation;
use super::signing::{to_canonical_object, verify_json};
use crate::Purpose;

/// Server keys that passed every check.
#[derive(Clone, Debug)]
pub struct ServerKeys {
    /// The server the keys belong to.
    pub server_name: OwnedServerName,
    /// Key id → public key (unpadded base64).
    pub verify_keys: BTreeMap<String, String>,
    /// Until when the keys may be used (ms since the epoch).
    pub valid_until_ts: u64,
    /// The checks that passed, for people.
    pub checks: Vec<String>,
}

impl Federation {
    /// `GET /_matrix/key/v2/server`, with every check: `server_name`,
    /// `valid_until_ts` in the future, and a self-signature by every key.
    pub async fn server_keys(&self, server: &ServerName) -> Result<ServerKeys, FederationError> {
        let value = self
            .json(
                Purpose::KeyFetch,
                Method::GET,
                server,
                "/_matrix/key/v2/server",
                None,
            )
            .await?;
        check_server_keys(&value, server, now_ms())
    }

    /// Asks `notary` for `server`'s keys (`POST /_matrix/key/v2/query`):
    /// checks each answer's self-signature and the notary's signature (with
    /// the notary's own keys, fetched and checked first).
    pub async fn notary_keys(
        &self,
        notary: &ServerName,
        server: &ServerName,
    ) -> Result<Vec<ServerKeys>, FederationError> {
        let notary_keys = self.server_keys(notary).await?;
        let query = json!({"server_keys": {server.as_str(): {}}});
        let value = self
            .json(
                Purpose::KeyFetch,
                Method::POST,
                notary,
                "/_matrix/key/v2/query",
                Some(&query),
            )
            .await?;
        let answers = value
            .get("server_keys")
            .and_then(Value::as_array)
            .ok_or_else(|| FederationError::BadResponse {
                what: format!("key query to {notary}"),
                problem: "no `server_keys` list".to_owned(),
            })?;
        let mut verified = Vec::new();
        for answer in answers
            .iter()
            .filter(|a| a.get("server_name").and_then(Value::as_str) == Some(server.as_str()))
        {
            let mut keys = check_server_keys(answer, server, now_ms())?;
            let object = canonical(answer, server)?;
            let signed = notary_keys
                .verify_keys
                .iter()
                .find(|(id, key)| verify_json(&object, notary.as_str(), id, key).is_ok())
                .map(|(id, _)| id.clone())
                .ok_or_else(|| FederationError::Keys {
                    server: server.to_string(),
                    problem: format!("no valid signature by the notary {notary}"),
                })?;
            keys.checks
                .push(format!("signed by notary {notary} with {signed}"));
            verified.push(keys);
        }
        Ok(verified)
    }
}

fn canonical(
    value: &Value,
    server_name: &ServerName,
) -> Result<CanonicalJsonObject, FederationError> {
    to_canonical_object(value).map_err(|e| FederationError::Keys {
        server: server_name.to_string(),
        problem: e.to_string(),
    })
}

/// Checks a `/_matrix/key/v2/server` answer.
pub fn check_server_keys(
    value: &Value,
    server_name: &ServerName,
    now_ms: u64,
) -> Result<ServerKeys, FederationError> {
    let fail = |problem: String| FederationError::Keys {
        server: server_name.to_string(),
        problem,
    };
    let object = canonical(value, server_name)?;
    let mut checks = Vec::new();
    let named = object
        .get("server_name")
        .and_then(CanonicalJsonValue::as_str)
        .ok_or_else(|| fail("no `server_name`".into()))?;
    if named != server_name.as_str() {
        return Err(fail(format!("`server_name` is {named}, not {server_name}")));
    }
    checks.push(format!("server_name is {named}"));
    let valid_until_ts = object
        .get("valid_until_ts")
        .and_then(CanonicalJsonValue::as_integer)
        .and_then(|ts| u64::try_from(i64::from(ts)).ok())
        .ok_or_else(|| fail("no `valid_until_ts`".into()))?;
    if valid_until_ts <= now_ms {
        return Err(fail(format!(
            "the keys expired (valid_until_ts {valid_until_ts} is in the past)"
        )));
    }
    checks.push(format!(
        "valid for {} more minutes",
        (valid_until_ts - now_ms) / 60_000
    ));
    let keys = object
        .get("verify_keys")
        .and_then(CanonicalJsonValue::as_object)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| fail("no `verify_keys`".into()))?;
    let mut verify_keys = BTreeMap::new();
    for (id, key) in keys {
        let public = key
            .as_object()
            .and_then(|k| k.get("key"))
            .and_then(CanonicalJsonValue::as_str)
            .ok_or_else(|| fail(format!("{id} has no `key`")))?;
        verify_json(&object, server_name.as_str(), id, public).map_err(|e| fail(e.to_string()))?;
        checks.push(format!("self-signature with {id} verifies"));
        verify_keys.insert(id.clone(), public.to_owned());
    }
    Ok(ServerKeys {
        server_name: server_name.to_owned(),
        verify_keys,
        valid_until_ts,
        checks,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::SigningKey;

    #[test]
    fn key_checks() {
        let key = SigningKey::generate();
        let hs1 = <&ServerName>::try_from("hs1.test").unwrap();
        let hs2 = <&ServerName>::try_from("hs2.test").unwrap();
        let mut object = to_canonical_object(&json!({
            "server_name": "hs1.test",
            "valid_until_ts": 2_000,
            "verify_keys": {key.key_id(): {"key": key.public_key()}},
            "old_verify_keys": {},
        }))
        .unwrap();
        key.sign_json("hs1.test", &mut object).unwrap();
        let value = serde_json::to_value(&object).unwrap();
        let keys = check_server_keys(&value, hs1, 1_000).unwrap();
        assert_eq!(keys.verify_keys[&key.key_id()], key.public_key());
        assert!(check_server_keys(&value, hs2, 1_000).is_err());
        let e = check_server_keys(&value, hs1, 3_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired"), "{e}");
        let mut tampered = value.clone();
        tampered["valid_until_ts"] = json!(2_001);
        assert!(check_server_keys(&tampered, hs1, 1_000).is_err());
    }
}
