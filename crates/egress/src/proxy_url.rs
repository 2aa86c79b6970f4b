//! The proxy URL grammar of `http_proxy` / `https_proxy`:
//! `[scheme://][<username>:<password>@]<host>[:<port>]`.
//!
//! Hand-written rather than `url::Url`: that crate reads `localhost:9988` as
//! scheme `localhost`, and this grammar is small enough to parse exactly,
//! with errors that say which part is wrong.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use http::HeaderValue;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// The port used when a proxy URL names none (both schemes), as Synapse does.
pub const DEFAULT_PROXY_PORT: u16 = 1080;

/// How egress talks to the proxy itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyScheme {
    /// Plain TCP to the proxy.
    Http,
    /// TLS to the proxy, verified against its host name or IP address.
    Https,
}

impl ProxyScheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyScheme::Http => "http",
            ProxyScheme::Https => "https",
        }
    }
}

/// A host: a DNS name (lower-cased, without a trailing dot) or an IP address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, lower-case ASCII.
    Name(String),
    /// An IP address (IPv6 written in brackets in URLs).
    Ip(IpAddr),
}

impl fmt::Display for Host {
    /// The host as written in a URL authority: IPv6 in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// User name and password for the proxy, sent as
/// `Proxy-Authorization: Basic …`. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: Option<String>,
    header: HeaderValue,
}

impl Credentials {
    /// Credentials from a user name and an optional password (already decoded).
    pub fn new(user: impl Into<String>, password: Option<String>) -> Credentials {
        let user = user.into();
        let plain = format!("{user}:{}", password.as_deref().unwrap_or(""));
        let encoded = base64::engine::general_purpose::STANDARD.encode(plain);
        let mut header = HeaderValue::from_str(&format!("Basic {encoded}"))
            .expect("base64 is a valid header value");
        header.set_sensitive(true);
        Credentials {
            user,
            password,
            header,
        }
    }

    /// The user name, percent-decoded.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password, percent-decoded. Handle with care: never log it.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The value of the `Proxy-Authorization` header: `Basic base64(user:password)`,
    /// one line, padded. Marked sensitive, so hyper's `Debug` hides it.
    pub fn proxy_authorization(&self) -> &HeaderValue {
        &self.header
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A parsed `http_proxy` / `https_proxy` value.
///
/// `Display` and `Debug` print it with scheme and port explicit and the
/// password masked: `http://user:***@proxy.example:3128`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    scheme: ProxyScheme,
    host: Host,
    port: u16,
    pub(crate) credentials: Option<Credentials>,
    /// `scheme://host:port#user`, made once: what the connection pool keys
    /// a proxy's connections by (shared, so a request's key costs no
    /// formatting). Never the password.
    pool_id: std::sync::Arc<str>,
}

impl ProxyUrl {
    /// Parses `[scheme://][user[:password]@]host[:port][/ignored]`.
    ///
    /// The error does not carry the value; callers that know which setting it
    /// came from wrap it in [`crate::ConfigError::ProxyUrl`], which does, masked.
    pub fn parse(value: &str) -> Result<ProxyUrl, ProxyUrlError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(ProxyUrlError::Empty);
        }
        let (scheme, rest) = match value.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = match scheme.to_ascii_lowercase().as_str() {
                    "http" => ProxyScheme::Http,
                    "https" => ProxyScheme::Https,
                    _ => return Err(ProxyUrlError::UnsupportedScheme(scheme.to_owned())),
                };
                (scheme, rest)
            }
            None => (ProxyScheme::Http, value),
        };
        // Whatever follows the authority (a path, a query, a trailing `/`) is ignored.
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let credentials = userinfo.map(parse_userinfo).transpose()?;
        let (host, port) = parse_host_port(host_port)?;
        let port = port.unwrap_or(DEFAULT_PROXY_PORT);
        let user = credentials.as_ref().map_or("", |c: &Credentials| c.user());
        let pool_id = format!("{}://{host}:{port}#{user}", scheme.as_str()).into();
        Ok(ProxyUrl {
            scheme,
            host,
            port,
            credentials,
            pool_id,
        })
    }

    /// The pool's identity of this proxy (`scheme://host:port#user`).
    pub(crate) fn pool_id(&self) -> &std::sync::Arc<str> {
        &self.pool_id
    }

    /// `http` (plain TCP to the proxy) or `https` (TLS to the proxy).
    pub fn scheme(&self) -> ProxyScheme {
        self.scheme
    }

    /// The proxy's host name or IP address.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The proxy's port; [`DEFAULT_PROXY_PORT`] when the URL gave none.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// User name and password for `Proxy-Authorization`, if the URL has any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }
}

/// What the display percent-encodes in a user name, so that it parses back
/// to the same user: controls, space, non-ASCII, and the characters that end
/// or split the userinfo (`:` `@` `/` `?` `#`), and `%` itself.
const USERINFO: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'%')
    .add(b':')
    .add(b'@')
    .add(b'/')
    .add(b'?')
    .add(b'#')
    .add(b'[')
    .add(b']');

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        if let Some(credentials) = &self.credentials {
            write!(f, "{}", utf8_percent_encode(credentials.user(), USERINFO))?;
            if credentials.password().is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

/// What is wrong with a proxy URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyUrlError {
    /// Nothing but white space.
    #[error("the value is empty")]
    Empty,
    /// A scheme other than `http` or `https` (SOCKS, FTP, …).
    #[error("scheme `{0}://` is not supported: only http:// and https:// proxies are supported")]
    UnsupportedScheme(String),
    /// No host between the scheme (or `@`) and the port.
    #[error("no proxy host is given")]
    MissingHost,
    /// An unbracketed IPv6 address such as `::1`.
    #[error("an IPv6 address must be written in brackets, as in `[{0}]`")]
    UnbracketedIpv6(String),
    /// `[...]` that does not hold an IPv6 address, or a missing `]`.
    #[error("`{0}` is not a bracketed IPv6 address")]
    BadIpv6(String),
    /// A host with characters no host name has.
    #[error("`{0}` is not a valid host name or IP address")]
    BadHost(String),
    /// A port that is empty, not a number, 0, or above 65535.
    #[error("port `{0}` is not a number from 1 to 65535")]
    BadPort(String),
    /// `%XX` that does not decode to UTF-8 text in the user name or password.
    #[error("the user name or password is not valid percent-encoded UTF-8")]
    BadCredentials,
}

fn parse_userinfo(userinfo: &str) -> Result<Credentials, ProxyUrlError> {
    let decode = |part: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| ProxyUrlError::BadCredentials)
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (decode(user)?, Some(decode(password)?)),
        None => (decode(userinfo)?, None),
    };
    Ok(Credentials::new(user, password))
}

/// A host without the brackets of an IPv6 literal: `[::1]` → `::1`.
pub(crate) fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Parses `host[:port]`, `[v6][:port]`. Shared with `no_proxy` entries.
pub(crate) fn parse_host_port(input: &str) -> Result<(Host, Option<u16>), ProxyUrlError> {
    if input.is_empty() {
        return Err(ProxyUrlError::MissingHost);
    }
    if let Some(bracketed) = input.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or_else(|| ProxyUrlError::BadIpv6(input.to_owned()))?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| ProxyUrlError::BadIpv6(input.to_owned()))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(parse_port(port)?),
                None => return Err(ProxyUrlError::BadIpv6(input.to_owned())),
            },
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    if input.matches(':').count() > 1 {
        return Err(ProxyUrlError::UnbracketedIpv6(input.to_owned()));
    }
    let (host, port) = match input.split_once(':') {
        Some((host, port)) => (host, Some(parse_port(port)?)),
        None => (input, None),
    };
    Ok((parse_host(host)?, port))
}

/// A host name or IPv4 address, lower-cased, trailing dot dropped.
pub(crate) fn parse_host(host: &str) -> Result<Host, ProxyUrlError> {
    if host.is_empty() {
        return Err(ProxyUrlError::MissingHost);
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(Host::Ip(IpAddr::V4(ip)));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && !name.split('.').any(str::is_empty);
    if !valid {
        return Err(ProxyUrlError::BadHost(host.to_owned()));
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

fn parse_port(port: &str) -> Result<u16, ProxyUrlError> {
    match port.parse::<u16>() {
        Ok(number) if number != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(number),
        _ => Err(ProxyUrlError::BadPort(port.to_owned())),
    }
}

/// `value` with the password of any `user:password@` replaced by `***`, for
/// error messages about values that may not parse at all.
pub fn mask_password(value: &str) -> String {
    let (prefix, rest) = match value.find("://") {
        Some(i) => value.split_at(i + 3),
        None => ("", value),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{prefix}{user}:***@{host}{tail}"),
            None => value.to_owned(),
        },
        None => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: &str) -> ProxyUrl {
        ProxyUrl::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    fn check(value: &str, scheme: ProxyScheme, host: &str, port: u16) {
        let url = ok(value);
        assert_eq!(url.scheme(), scheme, "{value}");
        assert_eq!(url.host().to_string(), host, "{value}");
        assert_eq!(url.port(), port, "{value}");
    }

    use ProxyScheme::{Http, Https};

    #[test]
    fn parses_the_documented_forms() {
        check("localhost", Http, "localhost", 1080);
        check("localhost:9988", Http, "localhost", 9988);
        check("https://localhost", Https, "localhost", 1080);
        check("1.2.3.4:9988", Http, "1.2.3.4", 9988);
        check("https://1.2.3.4", Https, "1.2.3.4", 1080);
        check(
            "[2001:0db8:85a3:0000:0000:8a2e:0370:effe]",
            Http,
            "[2001:db8:85a3::8a2e:370:effe]",
            1080,
        );
        check("https://[::1]:9988", Https, "[::1]", 9988);
        check("[::ffff:0.0.0.0]:9988", Http, "[::ffff:0.0.0.0]", 9988);
        check("http://proxy.com:8888/", Http, "proxy.com", 8888);
        check(
            "HTTP://Proxy.COM:8888/some/path?q=1",
            Http,
            "proxy.com",
            8888,
        );
        check("  http://proxy.com:8888  ", Http, "proxy.com", 8888);
        assert!(ok("localhost").credentials().is_none());
    }

    #[test]
    fn ipv6_host_is_an_address() {
        let url = ok("[2001:0db8:85a3:0000:0000:8a2e:0370:effe]");
        let expected: IpAddr = "2001:db8:85a3::8a2e:370:effe".parse().unwrap();
        assert_eq!(url.host(), &Host::Ip(expected));
    }

    #[test]
    fn credentials_become_basic_auth() {
        let url = ok("https://user:pass@1.2.3.4:9988");
        check("https://user:pass@1.2.3.4:9988", Https, "1.2.3.4", 9988);
        let creds = url.credentials().unwrap();
        assert_eq!(creds.user(), "user");
        assert_eq!(creds.password(), Some("pass"));
        assert_eq!(creds.proxy_authorization(), "Basic dXNlcjpwYXNz");
        assert!(creds.proxy_authorization().is_sensitive());

        let url = ok("user:pass@proxy.local:9988");
        check("user:pass@proxy.local:9988", Http, "proxy.local", 9988);
        assert_eq!(
            url.credentials().unwrap().proxy_authorization(),
            "Basic dXNlcjpwYXNz"
        );
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let url = ok("http://us%40er:p%3Ass%2F@proxy:3128");
        let creds = url.credentials().unwrap();
        assert_eq!(creds.user(), "us@er");
        assert_eq!(creds.password(), Some("p:ss/"));
        check("http://us%40er:p%3Ass%2F@proxy:3128", Http, "proxy", 3128);
        // An unencoded `@` in the password still works: the last `@` ends the userinfo.
        let url = ok("http://user:p@ss@proxy:3128");
        assert_eq!(url.credentials().unwrap().password(), Some("p@ss"));
    }

    #[test]
    fn user_without_password_sends_user_colon() {
        let url = ok("http://alice@proxy:3128");
        let creds = url.credentials().unwrap();
        assert_eq!(creds.password(), None);
        // base64("alice:")
        assert_eq!(creds.proxy_authorization(), "Basic YWxpY2U6");
        assert_eq!(url.to_string(), "http://alice@proxy:3128");
    }

    #[test]
    fn long_user_name_gives_one_header_line() {
        let user = "u".repeat(75);
        let url = ok(&format!("http://{user}:secret@proxy:3128"));
        let header = url.credentials().unwrap().proxy_authorization();
        let text = header.to_str().unwrap();
        assert!(!text.contains('\n') && !text.contains('\r'));
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.strip_prefix("Basic ").unwrap())
            .unwrap();
        assert_eq!(decoded, format!("{user}:secret").into_bytes());
        assert!(text.len() > 100, "one line, not wrapped at 76 columns");
    }

    #[test]
    fn display_and_debug_mask_the_password() {
        let url = ok("http://alice:s3cret@proxy.example:3128");
        assert_eq!(url.to_string(), "http://alice:***@proxy.example:3128");
        let debug = format!("{url:?} {:?}", url.credentials().unwrap());
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
    }

    #[test]
    fn the_display_encodes_the_user_so_that_it_parses_back() {
        // Found by the proxy_url fuzz target: a decoded `@` or control byte
        // in the user name made the display unparseable.
        let url = ok("http://a%40b%3Ac%16%25%20d%C3%A9:pw@proxy:3128");
        assert_eq!(url.credentials().unwrap().user(), "a@b:c\u{16}% dé");
        let shown = url.to_string();
        assert_eq!(shown, "http://a%40b%3Ac%16%25%20d%C3%A9:***@proxy:3128");
        let again = ok(&shown);
        assert_eq!(again.credentials().unwrap().user(), "a@b:c\u{16}% dé");
        assert_eq!(again.host(), url.host());
    }

    #[test]
    fn rejects_bad_values() {
        let err = |v: &str| ProxyUrl::parse(v).unwrap_err();
        assert!(
            matches!(err("socks5://proxy:1080"), ProxyUrlError::UnsupportedScheme(s) if s == "socks5")
        );
        assert!(
            matches!(err("socks5h://proxy:1080"), ProxyUrlError::UnsupportedScheme(s) if s == "socks5h")
        );
        assert!(err("socks5://proxy:1080")
            .to_string()
            .contains("only http:// and https:// proxies are supported"));
        assert!(matches!(
            err("ftp://proxy"),
            ProxyUrlError::UnsupportedScheme(_)
        ));
        assert_eq!(err("http://"), ProxyUrlError::MissingHost);
        assert_eq!(err("http://user:pw@"), ProxyUrlError::MissingHost);
        assert_eq!(err(":3128"), ProxyUrlError::MissingHost);
        assert_eq!(err("proxy:99999"), ProxyUrlError::BadPort("99999".into()));
        assert_eq!(err("proxy:abc"), ProxyUrlError::BadPort("abc".into()));
        assert_eq!(err("proxy:"), ProxyUrlError::BadPort("".into()));
        assert_eq!(err("proxy:0"), ProxyUrlError::BadPort("0".into()));
        assert_eq!(err("proxy:+80"), ProxyUrlError::BadPort("+80".into()));
        assert_eq!(err("::1"), ProxyUrlError::UnbracketedIpv6("::1".into()));
        assert!(err("::1").to_string().contains("`[::1]`"));
        assert_eq!(
            err("2001:db8::1"),
            ProxyUrlError::UnbracketedIpv6("2001:db8::1".into())
        );
        assert!(matches!(err("[::1"), ProxyUrlError::BadIpv6(_)));
        assert!(matches!(err("[nope]:80"), ProxyUrlError::BadIpv6(_)));
        assert!(matches!(err("prox y:80"), ProxyUrlError::BadHost(_)));
        assert_eq!(err("   "), ProxyUrlError::Empty);
    }

    #[test]
    fn masks_passwords_in_raw_values() {
        assert_eq!(
            mask_password("socks5://bob:hunter2@proxy:1080"),
            "socks5://bob:***@proxy:1080"
        );
        assert_eq!(
            mask_password("bob:hunter2@proxy:abc/x"),
            "bob:***@proxy:abc/x"
        );
        assert_eq!(mask_password("proxy:3128"), "proxy:3128");
        assert_eq!(mask_password("bob@proxy"), "bob@proxy");
    }
}
