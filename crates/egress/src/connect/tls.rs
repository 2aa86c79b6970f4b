//! TLS client configurations, built once per [`crate::Outbound`]: verified
//! against the system trust store (which honours `SSL_CERT_FILE` and
//! `SSL_CERT_DIR`, the OpenSSL convention), unverified for the testing
//! switch, and the federation variant.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::purpose::TlsKind;
use crate::{ConfigError, Source, TlsPolicy};

/// The client configurations a set of settings needs.
#[derive(Clone)]
pub(crate) struct TlsConfigs {
    regular: Arc<ClientConfig>,
    federation: Arc<ClientConfig>,
    insecure: Arc<ClientConfig>,
    policy: TlsPolicy,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfigs")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl TlsConfigs {
    /// Loads the trust stores. `extra_cas` are PEM files trusted in addition
    /// to the system store for regular connections (the CLI's `--cacert`).
    pub(crate) fn new(
        policy: &TlsPolicy,
        extra_cas: &[PathBuf],
    ) -> Result<TlsConfigs, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut system = system_roots();
        for file in extra_cas {
            add_pem_file(
                &mut system,
                file,
                &Source::config("extra CA file (add_ca_file)"),
            )?;
        }
        let regular = verified_config(&provider, system.clone())?;
        let federation = match &policy.federation_custom_ca_list {
            Some(files) => {
                let mut roots = RootCertStore::empty();
                for file in files {
                    add_pem_file(&mut roots, file, policy.federation_custom_ca_list_source())?;
                }
                verified_config(&provider, roots)?
            }
            None => verified_config(&provider, system)?,
        };
        let insecure = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(tls_config_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        Ok(TlsConfigs {
            regular: Arc::new(with_alpn(regular)),
            federation: Arc::new(with_alpn(federation)),
            insecure: Arc::new(with_alpn(insecure)),
            policy: policy.clone(),
        })
    }

    /// The configuration that accepts any certificate (for showing one that failed).
    #[cfg(feature = "doctor")]
    pub(crate) fn insecure(&self) -> Arc<ClientConfig> {
        self.insecure.clone()
    }

    /// The configuration for a TLS connection to `server_name` under `kind`.
    /// `server_name` is what federation's whitelist is matched against.
    pub(crate) fn config(&self, kind: TlsKind, server_name: &str) -> Arc<ClientConfig> {
        match kind {
            TlsKind::Federation if self.policy.federation_verifies(server_name) => {
                self.federation.clone()
            }
            TlsKind::Federation => self.insecure.clone(),
            _ if self.policy.insecure_regular => self.insecure.clone(),
            _ => self.regular.clone(),
        }
    }
}

fn with_alpn(mut config: ClientConfig) -> ClientConfig {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn tls_config_error(e: rustls::Error) -> ConfigError {
    ConfigError::Invalid {
        key: "tls",
        problem: e.to_string(),
    }
}

fn verified_config(
    provider: &Arc<CryptoProvider>,
    roots: RootCertStore,
) -> Result<ClientConfig, ConfigError> {
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_config_error)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!("loading the system trust store: {error}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(added, ignored, "system trust store loaded");
    if added == 0 {
        tracing::warn!(
            "the system trust store holds no usable CA certificate: no TLS certificate will verify"
        );
    }
    roots
}

/// Adds a PEM file's certificates; errors name the setting that listed it.
fn add_pem_file(
    roots: &mut RootCertStore,
    file: &Path,
    setting: &Source,
) -> Result<(), ConfigError> {
    let invalid = |problem: String| ConfigError::BadValue {
        source_: setting.clone(),
        value: file.display().to_string(),
        problem,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| invalid(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no PEM certificate in the file".to_owned()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

/// The testing switch: any certificate is accepted, but handshake signatures
/// are still checked, so the session is at least with the holder of the key
/// the certificate names.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ProxyEnv, ProxySettings};

    #[test]
    fn unreadable_ca_files_name_the_callers_setting() {
        let settings = ProxySettings::builder(&ProxyEnv::default())
            .federation_custom_ca_list(["/nonexistent/ca.pem"], "federation.ca_files")
            .build()
            .unwrap();
        let err = TlsConfigs::new(settings.tls(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "config key federation.ca_files has an unusable value `/nonexistent/ca.pem`"
            ),
            "{err}"
        );
        let err = TlsConfigs::new(&TlsPolicy::default(), &["/nonexistent/extra.pem".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("add_ca_file") && err.contains("/nonexistent/extra.pem"),
            "{err}"
        );
    }
}
