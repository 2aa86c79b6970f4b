//! Step-by-step checks of a configured proxy, for `egress doctor`: can it be
//! reached, does its TLS certificate verify, does it open a tunnel. The
//! checks use the same connection code as every request (the purpose's TLS
//! rules included); they report facts, and the application adds advice.

use crate::connect::stream::Stream;
use crate::connect::{handshake, Connector};
use crate::{Error, Outbound, ProxyScheme, ProxyUrl, Purpose, Scheme};

/// Which step a [`ProxyCheck`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyCheckStep {
    /// TCP to the proxy.
    Tcp,
    /// TLS to an `https://` proxy, certificate verified.
    Tls,
    /// `CONNECT target` through the proxy.
    Connect,
}

/// One check's outcome.
#[derive(Debug)]
#[non_exhaustive]
pub struct ProxyCheck {
    /// The step.
    pub step: ProxyCheckStep,
    /// The setting that names the proxy: `http_proxy` or `https_proxy`.
    pub key: &'static str,
    /// What was checked, e.g. `TCP to https_proxy http://proxy:3128`.
    pub name: String,
    /// What was found (the error's message when it failed).
    pub detail: String,
    /// The error, when it failed.
    pub error: Option<Error>,
    /// The certificate, for a TLS check (shown even when it failed to verify).
    pub certificate: Option<CertificateInfo>,
}

impl ProxyCheck {
    /// True when the check passed.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// The leaf certificate a server presented.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertificateInfo {
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// End of validity (RFC 2822).
    pub not_after: String,
    /// Subject alternative names.
    pub names: Vec<String>,
}

/// Checks the proxy configured for `scheme` (`http_proxy` for
/// [`Scheme::Http`], `https_proxy` for [`Scheme::Https`]) with the TLS rules
/// of `purpose`: TCP, TLS for an `https://` proxy, then `CONNECT target`
/// (`host:port`) when given. Stops at the first failure. Empty when that
/// proxy is not set.
pub async fn check_proxy(
    outbound: &Outbound,
    purpose: Purpose,
    scheme: Scheme,
    target: Option<&str>,
) -> Vec<ProxyCheck> {
    let key = scheme.proxy_key();
    let proxy = match scheme {
        Scheme::Http => outbound.settings().http_proxy(),
        Scheme::Https => outbound.settings().https_proxy(),
    };
    let Some(proxy) = proxy else {
        return Vec::new();
    };
    let connector = outbound.connector(purpose);
    let mut checks = Vec::new();
    let name = format!("TCP to {key} {proxy}");
    let stream = match connector.proxy_tcp(proxy).await {
        Ok(stream) => {
            let detail = format!("connected to {}:{}", proxy.host(), proxy.port());
            checks.push(pass(ProxyCheckStep::Tcp, key, name, detail));
            stream
        }
        Err(err) => {
            checks.push(fail(ProxyCheckStep::Tcp, key, name, err));
            return checks;
        }
    };
    let stream = match proxy.scheme() {
        ProxyScheme::Http => stream,
        ProxyScheme::Https => {
            let (check, stream) = tls_check(&connector, key, proxy, stream).await;
            checks.push(check);
            match stream {
                Some(stream) => stream,
                None => return checks,
            }
        }
    };
    let Some(target) = target else { return checks };
    let name = format!("CONNECT {target} through {key}");
    match connector.tunnel(stream, proxy, key, target, None).await {
        Ok(_) => checks.push(pass(
            ProxyCheckStep::Connect,
            key,
            name,
            "the proxy opened the tunnel (2xx)".to_owned(),
        )),
        Err(err) => checks.push(fail(ProxyCheckStep::Connect, key, name, err)),
    }
    checks
}

async fn tls_check(
    connector: &Connector,
    key: &'static str,
    proxy: &ProxyUrl,
    tcp: Stream,
) -> (ProxyCheck, Option<Stream>) {
    let name = format!("TLS to {key} {proxy}");
    let limit = connector.connect_limit();
    match connector.proxy_tls(tcp, proxy, limit).await {
        Ok(stream) => {
            let certificate = stream.tls().and_then(leaf_info);
            let host = proxy.host().to_string();
            let detail = format!(
                "certificate verified for {}",
                crate::proxy_url::unbracket(&host)
            );
            let check = ProxyCheck {
                certificate,
                ..pass(ProxyCheckStep::Tls, key, name, detail)
            };
            (check, Some(stream))
        }
        Err(err) => {
            // Look at the certificate anyway, without verifying, to show what was presented.
            let certificate = match connector.proxy_tcp(proxy).await {
                Ok(tcp) => {
                    let host = proxy.host().to_string();
                    let bare = crate::proxy_url::unbracket(&host);
                    let insecure = connector.tls_configs().insecure();
                    handshake(tcp, insecure, bare, String::new(), true, limit)
                        .await
                        .ok()
                        .and_then(|s| s.tls().and_then(leaf_info))
                }
                Err(_) => None,
            };
            let check = ProxyCheck {
                certificate,
                ..fail(ProxyCheckStep::Tls, key, name, err)
            };
            (check, None)
        }
    }
}

/// The leaf certificate of a TLS session, if it parses.
pub(crate) fn leaf_info(tls: &rustls::ClientConnection) -> Option<CertificateInfo> {
    let der = tls.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect()
        })
        .unwrap_or_default();
    Some(CertificateInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.to_rfc2822().unwrap_or_else(|e| e),
        names,
    })
}

fn pass(step: ProxyCheckStep, key: &'static str, name: String, detail: String) -> ProxyCheck {
    ProxyCheck {
        step,
        key,
        name,
        detail,
        error: None,
        certificate: None,
    }
}

fn fail(step: ProxyCheckStep, key: &'static str, name: String, err: Error) -> ProxyCheck {
    ProxyCheck {
        step,
        key,
        name,
        detail: crate::error::chain(&err),
        error: Some(err),
        certificate: None,
    }
}
