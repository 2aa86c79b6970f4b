//! Step-by-step checks of a proxy, for `egress doctor`: can it be reached,
//! does its TLS certificate verify, and does it open a tunnel.

use crate::connect::stream::Stream;
use crate::connect::{handshake, tcp_connect, tunnel};
use crate::purpose::TlsKind;
use crate::{Error, Outbound, ProxyScheme, ProxyUrl};

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked, e.g. `TCP to proxy http://proxy:3128`.
    pub name: String,
    /// Passed?
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What the admin can do, when it failed.
    pub hint: Option<String>,
    /// The certificate, for a TLS check.
    pub certificate: Option<CertificateInfo>,
}

/// The leaf certificate a server presented.
#[derive(Clone, Debug)]
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

/// Checks one proxy setting (`key` is `http_proxy` or `https_proxy`):
/// TCP, TLS for an `https://` proxy, then `CONNECT target` when given.
/// Stops at the first failure.
pub async fn check_proxy(
    outbound: &Outbound,
    key: &'static str,
    proxy: &ProxyUrl,
    target: Option<&str>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let limit = outbound.shared().timeouts.connect;
    let host = proxy.host().to_string();
    let tcp = outbound.shared().tcp_for(None);
    let stream = match tcp_connect(tcp, &host, proxy.port(), limit, || format!("proxy {proxy}"))
        .await
    {
        Ok(stream) => {
            checks.push(pass(
                format!("TCP to {key} {proxy}"),
                format!("connected to {}:{}", host, proxy.port()),
            ));
            stream
        }
        Err(err) => {
            checks.push(fail(
                format!("TCP to {key} {proxy}"),
                &err,
                format!(
                    "nothing answers at {host}:{}: check the host and port in {key}, that the proxy runs, \
                     and that a firewall lets this machine reach it",
                    proxy.port()
                ),
            ));
            return checks;
        }
    };
    let stream = match proxy.scheme() {
        ProxyScheme::Http => stream,
        ProxyScheme::Https => match tls_check(outbound, key, proxy, stream).await {
            (check, Some(stream)) => {
                checks.push(check);
                stream
            }
            (check, None) => {
                checks.push(check);
                return checks;
            }
        },
    };
    let Some(target) = target else { return checks };
    let name = format!("CONNECT {target} through {key}");
    let reply_limit = outbound.shared().timeouts.connect_reply;
    match tunnel::connect(stream, proxy, key, target, reply_limit).await {
        Ok(_) => checks.push(pass(name, "the proxy opened the tunnel (2xx)".to_owned())),
        Err(err) => {
            let hint = match &err {
                Error::ProxyAuth { status_line, .. } => format!(
                    "the proxy answered `{status_line}`: check the user name and password in {key} \
                     (percent-encode @ : / in them)"
                ),
                Error::ProxyForbidden { .. } => format!(
                    "the proxy refuses tunnels to {target}: ask its admin to allow CONNECT to this host and port"
                ),
                Error::ProxyUnreachable { .. } => format!(
                    "the proxy could not reach {target}: check the proxy's own DNS and outbound access"
                ),
                Error::ProxyProtocol { .. } => format!(
                    "this does not answer like an HTTP proxy: check the port in {key} (SOCKS proxies are not supported)"
                ),
                Error::Timeout { .. } => "the proxy did not answer in time: is this port a proxy?".to_owned(),
                _ => format!("the CONNECT to {target} failed"),
            };
            checks.push(fail(name, &err, hint));
        }
    }
    checks
}

async fn tls_check(
    outbound: &Outbound,
    key: &'static str,
    proxy: &ProxyUrl,
    tcp: Stream,
) -> (Check, Option<Stream>) {
    let shared = outbound.shared();
    let name = format!("TLS to {key} {proxy}");
    let host = proxy.host().to_string();
    let bare = crate::proxy_url::unbracket(&host).to_owned();
    let limit = shared.timeouts.connect;
    let config = shared.tls.config(TlsKind::Regular, &bare);
    match handshake(tcp, config, &bare, format!("proxy {proxy}"), true, limit).await {
        Ok(stream) => {
            let certificate = stream.tls().and_then(leaf_info);
            let check = Check {
                certificate,
                ..pass(name, format!("certificate verified for {bare}"))
            };
            (check, Some(stream))
        }
        Err(err) => {
            // Look at the certificate anyway, without verifying, to show what was presented.
            let mut certificate = None;
            if let Ok(tcp) = tcp_connect(shared.tcp_for(None), &host, proxy.port(), limit, || {
                host.clone()
            })
            .await
            {
                if let Ok(stream) = handshake(
                    tcp,
                    shared.tls.insecure(),
                    &bare,
                    String::new(),
                    true,
                    limit,
                )
                .await
                {
                    certificate = stream.tls().and_then(leaf_info);
                }
            }
            let hint = match &err {
                Error::Certificate { .. } => format!(
                    "the proxy's certificate is not trusted for {bare}: install the CA that issued it in the \
                     system trust store (or point SSL_CERT_FILE at it); to test whether this is the problem, \
                     use_insecure_ssl_client_just_for_testing_do_not_use: true turns the check off"
                ),
                _ => format!("is this a TLS port? if the proxy speaks plain HTTP, write http:// in {key}"),
            };
            (
                Check {
                    certificate,
                    ..fail(name, &err, hint)
                },
                None,
            )
        }
    }
}

/// The leaf certificate of a TLS session, if it parses.
pub fn leaf_info(tls: &rustls::ClientConnection) -> Option<CertificateInfo> {
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

fn pass(name: String, detail: String) -> Check {
    Check {
        name,
        ok: true,
        detail,
        hint: None,
        certificate: None,
    }
}

fn fail(name: String, err: &Error, hint: String) -> Check {
    Check {
        name,
        ok: false,
        detail: err.to_string(),
        hint: Some(hint),
        certificate: None,
    }
}
