//! What to do about an error: the library states facts, the CLI adds advice.

use egress::{ConfigError, Error, ProxyCheck, ProxyCheckStep};

/// The message for an error: its causes, then what to do, if there is advice.
pub fn message(err: &Error) -> String {
    match hint(err) {
        Some(hint) => format!("{}\nhint: {hint}", err.with_causes()),
        None => err.with_causes(),
    }
}

/// What an admin can do about an error, when there is something to say.
pub fn hint(err: &Error) -> Option<String> {
    Some(match err {
        Error::ProxyAuth { key, .. } => format!(
            "check the user name and password in {key} (percent-encode @ : / in them)"
        ),
        Error::ProxyForbidden { target, .. } => format!(
            "the proxy's access rules do not allow {target}: ask its admin to allow CONNECT to this host and port"
        ),
        Error::ProxyUnreachable { target, .. } => format!(
            "the proxy could not reach {target}: check the proxy's own DNS and outbound access"
        ),
        Error::ProxyProtocol { .. } => {
            "this does not answer like an HTTP proxy: check the port (SOCKS proxies are not supported)"
                .to_owned()
        }
        Error::Certificate { is_proxy: true, .. } => {
            "the proxy's certificate must be issued for the proxy's host name by a CA in the system \
             trust store (SSL_CERT_FILE / SSL_CERT_DIR add one); to test whether this is the problem, \
             `use_insecure_ssl_client_just_for_testing_do_not_use: true` turns the check off (never in production)"
                .to_owned()
        }
        Error::Certificate { is_proxy: false, .. } => {
            "the server's certificate is not trusted for its name: --cacert FILE trusts another CA"
                .to_owned()
        }
        Error::Blocked { .. } | Error::Refused { .. } => {
            "the IP range blocklist refuses this address; an allowlist entry (ip_range_whitelist) makes a hole"
                .to_owned()
        }
        _ => return None,
    })
}

/// What serve's admin can do about a configuration error, when there is
/// something to say. The unit runs serve as a dynamic user, and Debian's
/// Synapse packages make homeserver.yaml readable by group matrix-synapse
/// only: the walk-through in the manual met exactly this.
pub fn serve_config_hint(err: &ConfigError) -> Option<&'static str> {
    match err {
        ConfigError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Some(
                "egress-serve.service runs as a dynamic user; if the file is readable by \
                 group matrix-synapse only (mode 0640), run `systemctl edit egress-serve`, \
                 add `[Service]` and `SupplementaryGroups=matrix-synapse`, then \
                 `systemctl restart egress-serve`",
            )
        }
        _ => None,
    }
}

/// The hint for a failed doctor check.
pub fn check_hint(check: &ProxyCheck) -> Option<String> {
    let err = check.error.as_ref()?;
    let key = check.key;
    Some(match (check.step, err) {
        (ProxyCheckStep::Tcp, _) => format!(
            "nothing answers there: check the host and port in {key}, that the proxy runs, \
             and that a firewall lets this machine reach it"
        ),
        (ProxyCheckStep::Tls, Error::Certificate { .. }) => {
            "the proxy's certificate is not trusted for its host name: install the CA that issued it in the \
             system trust store (or point SSL_CERT_FILE at it); to test whether this is the problem, \
             use_insecure_ssl_client_just_for_testing_do_not_use: true turns the check off"
                .to_owned()
        }
        (ProxyCheckStep::Tls, _) => {
            format!("is this a TLS port? if the proxy speaks plain HTTP, write http:// in {key}")
        }
        (ProxyCheckStep::Connect, Error::ProxyAuth { status_line, .. }) => format!(
            "the proxy answered `{status_line}`: check the user name and password in {key} \
             (percent-encode @ : / in them)"
        ),
        (ProxyCheckStep::Connect, Error::ProxyProtocol { .. }) => format!(
            "this does not answer like an HTTP proxy: check the port in {key} (SOCKS proxies are not supported)"
        ),
        (ProxyCheckStep::Connect, Error::Timeout { .. }) => {
            "the proxy did not answer in time: is this port a proxy?".to_owned()
        }
        (_, err) => return hint(err),
    })
}
