//! The federation client: signed requests to discovered targets, JSON
//! answers, and the 3PID public key validity check.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::Full;
use ruma_common::{OwnedServerName, ServerName};
use ruma_federation_api::authentication::{XMatrix, XMatrixSigningInput};
use serde_json::Value;

use super::body::read_limited;
use super::discovery::{Discovery, Resolution};
use super::error::FederationError;
use super::signing::{SigningError, SigningKey};
use crate::{Body, Outbound, Purpose};

/// The most of a JSON response that is read.
pub(super) const JSON_LIMIT: u64 = 4 * 1024 * 1024;

/// A federation client: discovery, then requests through the routing
/// decision (`https_proxy` unless `no_proxy` matches the target host).
pub struct Federation {
    pub(super) outbound: Outbound,
    discovery: Discovery,
    pub(super) signer: Option<(OwnedServerName, SigningKey)>,
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

    /// Signs requests (`Authorization: X-Matrix`) as `origin` with `key`.
    pub fn with_signing_key(mut self, origin: &ServerName, key: SigningKey) -> Federation {
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
            .body(body)
            .map_err(|e| FederationError::BadResponse {
                what: uri.clone(),
                problem: format!("not a valid request: {e}"),
            })?;
        if content.is_some() {
            request
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        if let Some((origin, key)) = &self.signer {
            let input = XMatrixSigningInput::new(origin.clone(), server.to_owned(), key.key_pair());
            let x_matrix = XMatrix::sign_http_request(&request, input)
                .map_err(|e| SigningError::NotCanonical(e.to_string()))?;
            request
                .headers_mut()
                .insert(AUTHORIZATION, HeaderValue::from(&x_matrix));
        }
        Ok(request.map(Full::new))
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

/// A 2xx JSON answer, at most [`JSON_LIMIT`] bytes.
pub(super) async fn json_body(
    what: &str,
    response: Response<Body>,
) -> Result<Value, FederationError> {
    if !response.status().is_success() {
        return Err(status_error(what.to_owned(), response).await);
    }
    let bytes = read_limited(response.into_body(), JSON_LIMIT)
        .await
        .map_err(|e| match FederationError::from_body(what, e) {
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

/// A non-2xx answer as an error, with the start of its body.
pub(super) async fn status_error(what: String, response: Response<Body>) -> FederationError {
    let status = response.status();
    let body = read_limited(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    FederationError::Status {
        what,
        status,
        body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    }
}
