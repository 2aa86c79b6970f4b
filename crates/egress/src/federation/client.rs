//! Signed federation requests to discovered targets, server keys, remote
//! media and the public key validity check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION};
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use super::discovery::{Discovery, DnsSetupError, Resolution};
use super::server_name::{BadServerName, ServerName};
use super::signing::{verify_json, SigningError, SigningKey};
use crate::{Body, Error, Outbound, Purpose};

/// Default limit for a remote media download.
pub const DEFAULT_MEDIA_LIMIT: u64 = 50 * 1024 * 1024;
/// The most of a JSON response that is read.
const JSON_LIMIT: u64 = 4 * 1024 * 1024;

/// Why a federation operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// Not a server name.
    #[error(transparent)]
    ServerName(#[from] BadServerName),
    /// DNS for SRV could not be set up.
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    /// No target could be reached; each target's error, in order.
    #[error("cannot reach {server}: {}", .errors.iter().map(|(t, e)| format!("{t}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreachable {
        /// The server name.
        server: String,
        /// `host:port` and why it failed.
        errors: Vec<(String, Error)>,
    },
    /// A transport error outside target selection.
    #[error(transparent)]
    Transport(#[from] Error),
    /// A non-2xx answer.
    #[error("{what} answered {status}: {body}")]
    Status {
        /// The request.
        what: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A body that is not the JSON expected.
    #[error("{what}: {problem}")]
    BadResponse {
        /// The request.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// Server keys that fail a check.
    #[error("server keys of {server}: {problem}")]
    Keys {
        /// Whose keys.
        server: String,
        /// The failed check.
        problem: String,
    },
    /// A signing key problem.
    #[error(transparent)]
    Signing(#[from] SigningError),
    /// A download larger than allowed.
    #[error("the media is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Writing the download failed.
    #[error("cannot write the media: {0}")]
    Write(std::io::Error),
    /// No signing key was given, but the request must be signed.
    #[error("this request must be signed: give an origin server name and a signing key")]
    Unsigned,
}

/// Server keys that passed every check.
#[derive(Clone, Debug)]
pub struct ServerKeys {
    /// The server the keys belong to.
    pub server_name: String,
    /// Key id → public key (unpadded base64).
    pub verify_keys: BTreeMap<String, String>,
    /// Until when the keys may be used (ms since the epoch).
    pub valid_until_ts: u64,
    /// The checks that passed, for people.
    pub checks: Vec<String>,
}

/// A federation client: discovery, then requests through the routing
/// decision (`https_proxy` unless `no_proxy` matches the target host).
pub struct Federation {
    outbound: Outbound,
    discovery: Discovery,
    signer: Option<(String, SigningKey)>,
}

impl Federation {
    /// A client on `outbound`, with SRV lookups on `dns_server` (or the system's DNS).
    pub fn new(
        outbound: Outbound,
        dns_server: Option<SocketAddr>,
    ) -> Result<Federation, FederationError> {
        let discovery = Discovery::new(outbound.clone(), dns_server)?;
        Ok(Federation {
            outbound,
            discovery,
            signer: None,
        })
    }

    /// Signs requests as `origin` with `key`.
    pub fn with_signing_key(mut self, origin: &str, key: SigningKey) -> Federation {
        self.signer = Some((origin.to_owned(), key));
        self
    }

    /// Server discovery.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Sends a request to `server`, signed when a key is set, trying each
    /// discovered target in order until one answers.
    pub async fn request(
        &self,
        purpose: Purpose,
        method: Method,
        server: &ServerName,
        path: &str,
        content: Option<&Value>,
    ) -> Result<(Resolution, Response<Body>), FederationError> {
        let resolution = self.discovery.resolve(server).await;
        let client = self.outbound.client(purpose);
        let mut errors = Vec::new();
        for (host, port) in &resolution.targets {
            let request = self.build(&method, server, &resolution, path, content)?;
            match client.send_to(request, host, *port).await {
                Ok(response) => return Ok((resolution, response)),
                Err(err) => {
                    tracing::debug!("{host}:{port}: {err}");
                    errors.push((crate::connect::tunnel::authority(host, *port), err));
                }
            }
        }
        Err(FederationError::Unreachable {
            server: server.to_string(),
            errors,
        })
    }

    fn build(
        &self,
        method: &Method,
        server: &ServerName,
        resolution: &Resolution,
        path: &str,
        content: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, FederationError> {
        let uri = format!("https://{}{path}", resolution.host_header);
        let body = content
            .map(|c| Bytes::from(c.to_string()))
            .unwrap_or_default();
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&uri)
            .body(Full::new(body))
            .map_err(|e| FederationError::BadResponse {
                what: uri.clone(),
                problem: format!("not a valid request: {e}"),
            })?;
        if content.is_some() {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, "application/json".parse().expect("valid"));
        }
        if let Some((origin, key)) = &self.signer {
            let value = key.x_matrix(method.as_str(), path, origin, &server.to_string(), content);
            let value = value.parse().map_err(|_| FederationError::BadResponse {
                what: uri,
                problem: "the Authorization header is not valid".to_owned(),
            })?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        Ok(request)
    }

    /// A request whose answer must be 2xx JSON.
    pub async fn json(
        &self,
        purpose: Purpose,
        method: Method,
        server: &ServerName,
        path: &str,
        content: Option<&Value>,
    ) -> Result<Value, FederationError> {
        let (_, response) = self
            .request(purpose, method.clone(), server, path, content)
            .await?;
        let what = format!("{method} {path} on {server}");
        json_body(&what, response).await
    }

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
        check_server_keys(&value, &server.to_string(), now_ms())
    }

    /// Asks `notary` for `server`'s keys (`POST /_matrix/key/v2/query`):
    /// checks each answer's self-signature and the notary's signature (with
    /// the notary's own keys, fetched and checked first).
    pub async fn notary_keys(
        &self,
        notary: &ServerName,
        server: &str,
    ) -> Result<Vec<ServerKeys>, FederationError> {
        let notary_keys = self.server_keys(notary).await?;
        let query = json!({"server_keys": {server: {}}});
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
            .filter(|a| a.get("server_name").and_then(Value::as_str) == Some(server))
        {
            let mut keys = check_server_keys(answer, server, now_ms())?;
            let notary_name = notary.to_string();
            let signed = notary_keys
                .verify_keys
                .iter()
                .find(|(id, key)| verify_json(answer, &notary_name, id, key).is_ok())
                .map(|(id, _)| id.clone())
                .ok_or_else(|| FederationError::Keys {
                    server: server.to_owned(),
                    problem: format!("no valid signature by the notary {notary_name}"),
                })?;
            keys.checks
                .push(format!("signed by notary {notary_name} with {signed}"));
            verified.push(keys);
        }
        Ok(verified)
    }

    /// Downloads `mxc://server/media_id` into `out`, at most `limit` bytes:
    /// the authenticated federation endpoint (signed), whose `multipart/mixed`
    /// answer holds the bytes or a `Location` to follow (a new hop, routed
    /// anew, regular TLS); the legacy `/_matrix/media/v3/download` when the
    /// server does not know that endpoint. Returns the content type.
    pub async fn download_media(
        &self,
        server: &ServerName,
        media_id: &str,
        out: &mut dyn std::io::Write,
        limit: u64,
    ) -> Result<Option<String>, FederationError> {
        if self.signer.is_none() {
            return Err(FederationError::Unsigned);
        }
        let path = format!("/_matrix/federation/v1/media/download/{media_id}");
        let (_, response) = self
            .request(Purpose::Media, Method::GET, server, &path, None)
            .await?;
        let status = response.status().as_u16();
        if status == 404 || status == 400 || status == 405 {
            let body = read_limited(response.into_body(), JSON_LIMIT)
                .await
                .unwrap_or_default();
            if String::from_utf8_lossy(&body).contains("M_UNRECOGNIZED") || status == 405 {
                tracing::info!(target: "egress::wire", "* {server} does not know {path}: legacy media download");
                return self.legacy_media(server, media_id, out, limit).await;
            }
            return Err(FederationError::Status {
                what: format!("GET {path} on {server}"),
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
        }
        if !(200..300).contains(&status) {
            return Err(status_error(format!("GET {path} on {server}"), response).await);
        }
        let boundary = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(boundary_of)
            .ok_or_else(|| FederationError::BadResponse {
                what: path.clone(),
                problem: "the answer is not multipart/mixed with a boundary".to_owned(),
            })?;
        // The JSON part is small; the limit plus room for the part headers bounds the rest.
        let body = read_limited(response.into_body(), limit + 64 * 1024)
            .await
            .map_err(|e| match e {
                FederationError::TooLarge { .. } => FederationError::TooLarge { limit },
                other => other,
            })?;
        let parts = multipart(&body, &boundary).ok_or_else(|| FederationError::BadResponse {
            what: path.clone(),
            problem: "the multipart body cannot be parsed".to_owned(),
        })?;
        let [_, (headers, bytes), ..] = &parts[..] else {
            return Err(FederationError::BadResponse {
                what: path,
                problem: "the multipart body has no media part".to_owned(),
            });
        };
        if let Some(location) = header(headers, "location") {
            tracing::info!(target: "egress::wire", "* media redirect to {location}");
            let response = self.follow(&location).await?;
            return save(format!("GET {location}"), response, out, limit).await;
        }
        if bytes.len() as u64 > limit {
            return Err(FederationError::TooLarge { limit });
        }
        out.write_all(bytes).map_err(FederationError::Write)?;
        Ok(header(headers, "content-type"))
    }

    async fn legacy_media(
        &self,
        server: &ServerName,
        media_id: &str,
        out: &mut dyn std::io::Write,
        limit: u64,
    ) -> Result<Option<String>, FederationError> {
        let path = format!(
            "/_matrix/media/v3/download/{server}/{media_id}?allow_remote=false&allow_redirect=true"
        );
        let (_, response) = self
            .request(Purpose::Media, Method::GET, server, &path, None)
            .await?;
        let response = if response.status().is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok());
            let location = location.ok_or_else(|| FederationError::BadResponse {
                what: path.clone(),
                problem: "a redirect without Location".to_owned(),
            })?;
            self.follow(location).await?
        } else {
            response
        };
        save(format!("GET {path} on {server}"), response, out, limit).await
    }

    /// A media redirect: a new hop, routed anew, regular TLS, redirects followed.
    async fn follow(&self, location: &str) -> Result<Response<Body>, FederationError> {
        let client = self
            .outbound
            .client(Purpose::Media)
            .follow_redirects(crate::client::MAX_REDIRECTS);
        Ok(client.get(location).await?)
    }

    /// The 3PID invite check: `GET <key_validity_url>?public_key=…` answering
    /// `{"valid": bool}`, on the regular proxied client.
    pub async fn public_key_valid(
        &self,
        key_validity_url: &str,
        public_key: &str,
    ) -> Result<bool, FederationError> {
        let encoded: String =
            percent_encoding::utf8_percent_encode(public_key, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let separator = if key_validity_url.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{key_validity_url}{separator}public_key={encoded}");
        let response = self
            .outbound
            .client(Purpose::PubkeyValidity)
            .get(&url)
            .await?;
        let value = json_body(&format!("GET {key_validity_url}"), response).await?;
        value
            .get("valid")
            .and_then(Value::as_bool)
            .ok_or_else(|| FederationError::BadResponse {
                what: key_validity_url.to_owned(),
                problem: "no boolean `valid`".to_owned(),
            })
    }
}

/// Checks a `/_matrix/key/v2/server` answer.
pub fn check_server_keys(
    value: &Value,
    server_name: &str,
    now_ms: u64,
) -> Result<ServerKeys, FederationError> {
    let fail = |problem: String| FederationError::Keys {
        server: server_name.to_owned(),
        problem,
    };
    let mut checks = Vec::new();
    let named = value
        .get("server_name")
        .and_then(Value::as_str)
        .ok_or_else(|| fail("no `server_name`".into()))?;
    if named != server_name {
        return Err(fail(format!("`server_name` is {named}, not {server_name}")));
    }
    checks.push(format!("server_name is {named}"));
    let valid_until_ts = value
        .get("valid_until_ts")
        .and_then(Value::as_u64)
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
    let keys = value
        .get("verify_keys")
        .and_then(Value::as_object)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| fail("no `verify_keys`".into()))?;
    let mut verify_keys = BTreeMap::new();
    for (id, key) in keys {
        let public = key
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| fail(format!("{id} has no `key`")))?;
        verify_json(value, server_name, id, public).map_err(|e| fail(e.to_string()))?;
        checks.push(format!("self-signature with {id} verifies"));
        verify_keys.insert(id.clone(), public.to_owned());
    }
    Ok(ServerKeys {
        server_name: named.to_owned(),
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

async fn json_body(what: &str, response: Response<Body>) -> Result<Value, FederationError> {
    if !response.status().is_success() {
        return Err(status_error(what.to_owned(), response).await);
    }
    let bytes = read_limited(response.into_body(), JSON_LIMIT)
        .await
        .map_err(|e| match e {
            FederationError::TooLarge { .. } => FederationError::BadResponse {
                what: what.to_owned(),
                problem: format!("the JSON is larger than {JSON_LIMIT} bytes"),
            },
            other => other,
        })?;
    serde_json::from_slice(&bytes).map_err(|e| FederationError::BadResponse {
        what: what.to_owned(),
        problem: format!("not JSON: {e}"),
    })
}

async fn status_error(what: String, response: Response<Body>) -> FederationError {
    let status = response.status().as_u16();
    let body = read_limited(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    FederationError::Status {
        what,
        status,
        body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    }
}

/// A whole body, at most `limit` bytes.
pub(crate) async fn read_limited(body: Body, limit: u64) -> Result<Vec<u8>, FederationError> {
    let mut bytes = Vec::new();
    stream_limited(body, &mut bytes, limit).await?;
    Ok(bytes)
}

/// Saves a media response into `out` (at most `limit` bytes); its content type.
async fn save(
    what: String,
    response: Response<Body>,
    out: &mut dyn std::io::Write,
    limit: u64,
) -> Result<Option<String>, FederationError> {
    if !response.status().is_success() {
        return Err(status_error(what, response).await);
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    stream_limited(response.into_body(), out, limit).await?;
    Ok(content_type)
}

/// Streams a body into `out`, ending with an error past `limit` bytes.
async fn stream_limited(
    mut body: Body,
    out: &mut dyn std::io::Write,
    limit: u64,
) -> Result<u64, FederationError> {
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            written += data.len() as u64;
            if written > limit {
                return Err(FederationError::TooLarge { limit });
            }
            out.write_all(&data).map_err(FederationError::Write)?;
        }
    }
    Ok(written)
}

fn boundary_of(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

type Part<'a> = (Vec<(String, String)>, &'a [u8]);

/// Splits a multipart body into (headers, content) parts.
fn multipart<'a>(body: &'a [u8], boundary: &str) -> Option<Vec<Part<'a>>> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = &body[find(body, delimiter.as_bytes())? + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Some(parts);
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let end = find(rest, format!("\r\n{delimiter}").as_bytes())?;
        let part = &rest[..end];
        let (head, content) = match find(part, b"\r\n\r\n") {
            Some(i) => (&part[..i], &part[i + 4..]),
            None if part.starts_with(b"\r\n") => (&part[..0], &part[2..]),
            None => return None,
        };
        let headers = String::from_utf8_lossy(head)
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        parts.push((headers, content));
        rest = &rest[end + 2 + delimiter.len()..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multipart_mixed() {
        let body = b"--abc\r\nContent-Type: application/json\r\n\r\n{}\r\n--abc\r\nContent-Type: text/plain\r\n\r\nhello\r\n--abc--\r\n";
        let parts = multipart(body, "abc").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1, b"{}");
        assert_eq!(
            header(&parts[1].0, "content-type").as_deref(),
            Some("text/plain")
        );
        assert_eq!(parts[1].1, b"hello");
        let body = b"--b\r\n\r\n{}\r\n--b\r\nLocation: https://cdn.example/x\r\n\r\n\r\n--b--";
        let parts = multipart(body, "b").unwrap();
        assert_eq!(
            header(&parts[1].0, "location").as_deref(),
            Some("https://cdn.example/x")
        );
        assert_eq!(
            boundary_of("multipart/mixed; boundary=\"xyz\"").as_deref(),
            Some("xyz")
        );
        assert_eq!(boundary_of("text/plain"), None);
        assert!(multipart(b"garbage", "b").is_none());
    }

    #[test]
    fn key_checks() {
        let key = SigningKey::generate();
        let mut value = json!({
            "server_name": "hs1.test",
            "valid_until_ts": 2_000,
            "verify_keys": {key.key_id(): {"key": key.public_key()}},
            "old_verify_keys": {},
        });
        key.sign_json("hs1.test", &mut value);
        let keys = check_server_keys(&value, "hs1.test", 1_000).unwrap();
        assert_eq!(keys.verify_keys[&key.key_id()], key.public_key());
        assert!(check_server_keys(&value, "hs2.test", 1_000).is_err());
        let e = check_server_keys(&value, "hs1.test", 3_000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expired"), "{e}");
        let mut tampered = value.clone();
        tampered["valid_until_ts"] = json!(2_001);
        assert!(check_server_keys(&tampered, "hs1.test", 1_000).is_err());
    }
}
