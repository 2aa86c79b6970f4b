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

/// One discovered target's connection check ([`Federation::check_targets`]).
#[cfg(feature = "doctor")]
#[derive(Debug)]
#[non_exhaustive]
pub struct TargetCheck {
    /// The host connected to.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The route taken and why ([`crate::Route::explain`]).
    pub route: String,
    /// The certificate the server presented (verified), or why the connection failed.
    pub result: Result<Option<crate::CertificateInfo>, crate::Error>,
}

/// What one attempt on a target came to.
enum Attempt<T> {
    /// Done: stop here.
    Done(T),
    /// Try the next target; the error, to report if none works.
    Next(Option<crate::Error>),
}

/// Tries `attempt` on each target of `resolution` in order until one is
/// done: its answer, and the failures before it as (`host:port`, error). An
/// `Err` from `attempt` (not about the target) ends the loop at once. The
/// one target loop of federation: requests and checks both use it.
async fn first_target<'r, T, F, Fut>(
    resolution: &'r Resolution,
    mut attempt: F,
) -> Result<(Option<T>, Vec<(String, crate::Error)>), FederationError>
where
    F: FnMut(&'r str, u16) -> Fut,
    Fut: std::future::Future<Output = Result<Attempt<T>, FederationError>>,
{
    let mut errors = Vec::new();
    for (host, port) in &resolution.targets {
        match attempt(host, *port).await? {
            Attempt::Done(answer) => return Ok((Some(answer), errors)),
            Attempt::Next(Some(err)) => {
                tracing::debug!("{host}:{port}: {err}");
                errors.push((crate::connect::authority(host, *port), err));
            }
            Attempt::Next(None) => {}
        }
    }
    Ok((None, errors))
}

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
        // Synapse refuses these names (ruma's type takes them).
        super::server_name::check_server_name(server)?;
        let resolution = self.discovery.resolve(server).await;
        if resolution.targets.is_empty() {
            return Err(FederationError::NotOffered {
                server: server.to_string(),
                reason: resolution.steps.last().cloned().unwrap_or_default(),
            });
        }
        let client = self.outbound.client(purpose);
        let (answer, errors) = first_target(&resolution, |host, port| {
            let request = self.build(&method, server, &resolution, path, content);
            let client = &client;
            async move {
                Ok(match client.send_to(request?, host, port).await {
                    Ok(response) => Attempt::Done(response),
                    Err(err) => Attempt::Next(Some(err)),
                })
            }
        })
        .await?;
        match answer {
            Some(response) => Ok((resolution, response)),
            None => Err(FederationError::Unreachable {
                server: server.to_string(),
                errors,
            }),
        }
    }

    /// Discovers `server` and connects to its targets in the order
    /// [`Federation::request`] tries them, until one completes TLS (verified
    /// for the server name, under the federation rules): each attempt with its
    /// route and outcome. No request is sent.
    #[cfg(feature = "doctor")]
    pub async fn check_targets(&self, server: &ServerName) -> (Resolution, Vec<TargetCheck>) {
        let resolution = self.discovery.resolve(server).await;
        let connector = self.outbound.connector(Purpose::Federation);
        // Shared by the attempts, one at a time (never borrowed across an await).
        let checks = std::cell::RefCell::new(Vec::new());
        let settings = self.outbound.settings();
        let done = first_target(&resolution, |host, port| {
            let route = crate::Route::for_target(
                settings,
                Purpose::Federation,
                crate::Scheme::Https,
                host,
                port,
            )
            .explain();
            let connector = &connector;
            let tls_name = resolution.tls_name.as_str();
            let checks = &checks;
            async move {
                let result = connector.probe_tls(host, port, tls_name).await;
                let ok = result.is_ok();
                checks.borrow_mut().push(TargetCheck {
                    host: host.to_owned(),
                    port,
                    route,
                    result,
                });
                Ok(if ok {
                    Attempt::Done(())
                } else {
                    Attempt::Next(None)
                })
            }
        })
        .await;
        debug_assert!(done.is_ok(), "the checks' attempts never fail");
        (resolution, checks.into_inner())
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
