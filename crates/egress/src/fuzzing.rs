//! Entry points for the fuzz targets in `fuzz/` and the corpus replay test
//! (`tests/fuzz_corpus.rs`): the hidden `fuzzing` feature. Not part of the
//! API. Each function takes the fuzzer's bytes and panics when a property
//! the library promises does not hold.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::Pin;
use std::task::{Context, Poll};

use ipnet::IpNet;
use tokio::io::{AsyncRead, ReadBuf};

use crate::proxy_url::Credentials;
use crate::{NoProxy, NoProxyMatch, ProxyUrl};

/// A target's name and entry point.
pub type Target = (&'static str, fn(&[u8]));

/// The targets, by name: what `fuzz/` builds and the replay test runs.
pub const TARGETS: &[Target] = &[
    ("proxy_url", proxy_url),
    ("no_proxy", no_proxy),
    ("connect_reply", connect_reply),
    #[cfg(feature = "yaml")]
    ("homeserver_yaml", homeserver_yaml),
    #[cfg(feature = "federation")]
    ("server_name", server_name),
    #[cfg(feature = "federation")]
    ("well_known", well_known),
    #[cfg(feature = "federation")]
    ("media", media),
    #[cfg(feature = "federation")]
    ("x_matrix", x_matrix),
    #[cfg(feature = "serve")]
    ("serve", serve),
];

/// The raw (still percent-encoded) password of a proxy URL, if any.
fn raw_password(value: &str) -> Option<&str> {
    let rest = value.split_once("://").map_or(value, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, password)| password)
}

/// `ProxyUrl::parse`: never panics; what parses shows the same URL, password
/// masked, in `Display` and `Debug`, and parsing that display gives the same
/// scheme, host, port and user back.
pub fn proxy_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::mask_password(text);
    let Ok(url) = ProxyUrl::parse(text) else {
        return;
    };
    let shown = url.to_string();
    let debug = format!("{url:?}");
    // The display does not depend on the password at all: the same URL with
    // another password shows the same. (Looking for the password's text in
    // the display instead gives false alarms: the display can spell it from
    // the host, the port and the user's percent-encoding.)
    if let Some(credentials) = url.credentials() {
        if let Some(password) = credentials.password() {
            let mut other = url.clone();
            let changed = format!("{password}-changed");
            other.credentials = Some(Credentials::new(credentials.user(), Some(changed)));
            assert_eq!(other.to_string(), shown, "the display shows the password");
            assert_eq!(format!("{other:?}"), debug, "Debug shows the password");
            let same_user = Credentials::new(credentials.user(), Some(format!("{password}-x")));
            assert_eq!(format!("{same_user:?}"), format!("{credentials:?}"));
        }
    }
    let again = ProxyUrl::parse(&shown)
        .unwrap_or_else(|e| panic!("the display `{shown}` does not parse: {e}"));
    assert_eq!(again.scheme(), url.scheme(), "{shown}");
    assert_eq!(again.host(), url.host(), "{shown}");
    assert_eq!(again.port(), url.port(), "{shown}");
    assert_eq!(
        again.credentials().map(|c| c.user()),
        url.credentials().map(|c| c.user()),
        "{shown}"
    );
    assert_eq!(
        again.credentials().map(|c| c.password().is_some()),
        url.credentials().map(|c| c.password().is_some()),
        "{shown}"
    );
    assert_eq!(again.to_string(), shown);
}

/// One `no_proxy` entry as the documentation describes it.
#[derive(Debug)]
enum NaiveEntry {
    Name(String, Option<u16>),
    Net(IpNet, Option<u16>),
}

/// The naive reading of one entry: a CIDR range, an IP address, or
/// `[*][.…]host[:port]` with `host` a name or IP literal (IPv6 in brackets).
fn naive_entry(raw: &str) -> Option<NaiveEntry> {
    if raw.contains('/') {
        return raw.parse::<IpNet>().ok().map(|n| NaiveEntry::Net(n, None));
    }
    if let Ok(ip) = raw.parse::<IpAddr>() {
        return Some(NaiveEntry::Net(IpNet::from(ip), None));
    }
    if raw == "*" {
        return None;
    }
    let mut rest = raw.strip_prefix('*').unwrap_or(raw);
    while let Some(r) = rest.strip_prefix('.') {
        rest = r;
    }
    let port_of = |p: &str| -> Option<u16> {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        p.parse::<u16>().ok().filter(|p| *p != 0)
    };
    if let Some(inside) = rest.strip_prefix('[') {
        let close = inside.find(']')?;
        let ip: Ipv6Addr = inside[..close].parse().ok()?;
        let after = &inside[close + 1..];
        let port = if after.is_empty() {
            None
        } else {
            Some(port_of(after.strip_prefix(':')?)?)
        };
        return Some(NaiveEntry::Net(IpNet::from(IpAddr::V6(ip)), port));
    }
    let colons = rest.chars().filter(|c| *c == ':').count();
    let (host, port) = match colons {
        0 => (rest, None),
        1 => {
            let (h, p) = rest.split_once(':')?;
            (h, Some(port_of(p)?))
        }
        _ => return None,
    };
    if host.is_empty() {
        return None;
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(NaiveEntry::Net(IpNet::from(IpAddr::V4(ip)), port));
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    let ok_labels = name.split('.').all(|label| !label.is_empty());
    if name.is_empty() || name.len() > 253 || !ok_chars || !ok_labels {
        return None;
    }
    Some(NaiveEntry::Name(name.to_ascii_lowercase(), port))
}

/// Which entries (as written) match `host` on `port`, by a linear scan; `None`
/// when the whole value is `*`.
fn naive_matches(value: &str, host: &str, port: u16) -> Option<BTreeSet<String>> {
    if value.trim() == "*" {
        return None;
    }
    let entries: Vec<(&str, NaiveEntry)> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .filter_map(|e| naive_entry(e).map(|n| (e, n)))
        .collect();
    let port_ok = |p: &Option<u16>| p.is_none() || *p == Some(port);
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let mut matched = BTreeSet::new();
    match bare.parse::<IpAddr>() {
        Ok(ip) => {
            for (text, entry) in &entries {
                if let NaiveEntry::Net(net, p) = entry {
                    if net.contains(&ip) && port_ok(p) {
                        matched.insert(text.to_string());
                    }
                }
            }
        }
        Err(_) => {
            let host = host.strip_suffix('.').unwrap_or(host);
            // Longer than any DNS name (253, and a trailing dot): never matched.
            if host.len() <= 255 {
                let host = host.to_ascii_lowercase();
                for (text, entry) in &entries {
                    if let NaiveEntry::Name(name, p) = entry {
                        let suffix = host.ends_with(&format!(".{name}"));
                        if (host == *name || suffix) && port_ok(p) {
                            matched.insert(text.to_string());
                        }
                    }
                }
            }
        }
    }
    Some(matched)
}

/// `NoProxy` against the naive matcher: bytes 0–1 are the port, then the
/// `no_proxy` value, then one host per line. Same verdict for every host, and
/// the entry `NoProxy` names is one the naive matcher finds.
pub fn no_proxy(data: &[u8]) {
    let [p0, p1, rest @ ..] = data else {
        return;
    };
    let port = u16::from_le_bytes([*p0, *p1]);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut lines = text.split('\n');
    let value = lines.next().unwrap_or_default();
    let compiled = NoProxy::parse(value);
    // The list form is the same as the joined value.
    let entries: Vec<&str> = value.split(',').collect();
    let listed = NoProxy::from_entries(&entries);
    assert_eq!(
        compiled.entries().collect::<Vec<_>>(),
        listed.entries().collect::<Vec<_>>()
    );
    let accepted: Vec<&str> = compiled.entries().collect();
    for warning in compiled.warnings() {
        assert!(warning.to_string().contains(&warning.entry));
    }
    for host in lines.chain(std::iter::once(value)) {
        let got = compiled.matches(host, port);
        match (naive_matches(value, host, port), got) {
            (None, Some(NoProxyMatch::Everything)) => {}
            (Some(expected), None) => assert!(
                expected.is_empty(),
                "no_proxy `{value}` does not match `{host}`:{port}; the naive matcher finds {expected:?}"
            ),
            (Some(expected), Some(NoProxyMatch::Entry(entry))) => {
                assert!(
                    expected.contains(entry),
                    "no_proxy `{value}` matches `{host}`:{port} by `{entry}`; the naive matcher finds {expected:?}"
                );
                assert!(accepted.contains(&entry));
            }
            (expected, got) => {
                panic!("no_proxy `{value}`, host `{host}`:{port}: got {got:?}, expected {expected:?}")
            }
        }
        assert_eq!(listed.matches(host, port), got);
        // The split entry points agree with `matches`.
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => assert_eq!(compiled.matches_ip(ip, port), got),
            Err(_) => assert_eq!(compiled.matches_name(host, port), got),
        }
    }
}

/// A reader that hands out its chunks one read at a time (at most what fits).
struct ChunkedReader(VecDeque<Vec<u8>>);

impl AsyncRead for ChunkedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(mut chunk) = self.0.pop_front() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                self.0.push_front(chunk.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn read_reply_from(chunks: Vec<Vec<u8>>) -> Result<crate::connect::tunnel::Reply, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut reader = ChunkedReader(chunks.into());
    runtime
        .block_on(crate::connect::tunnel::read_reply(&mut reader))
        .map_err(|(problem, _)| problem)
}

/// Splits `rest` into chunks at the positions `cuts` names (each byte a
/// fraction of the length, in 256ths): how targets deliver input across reads.
pub(crate) fn split_at_cuts<'a>(cuts: &[u8], rest: &'a [u8]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) * rest.len() / 256)
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        if point > start {
            chunks.push(&rest[start..point]);
            start = point;
        }
    }
    chunks.push(&rest[start..]);
    chunks
}

/// The proxy's reply to CONNECT: byte 0 the number of cut points, then the
/// cut points, then the reply, delivered split at the cut points. The reply
/// read is the same however it is split, and the bytes kept for the tunnel
/// are the ones that followed the reply.
pub fn connect_reply(data: &[u8]) {
    let Some((&cuts, rest)) = data.split_first() else {
        return;
    };
    let cuts = usize::from(cuts % 32).min(rest.len());
    let (cuts, reply) = rest.split_at(cuts);
    let chunks = split_at_cuts(cuts, reply)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let split = read_reply_from(chunks);
    if let Ok((_, line, _, _)) = &split {
        assert!(line.starts_with("HTTP/1."), "{line}");
    }
    // Split or whole, the same reply (below the header limit, where how
    // the bytes arrive decides when the limit is checked).
    if reply.len() < crate::connect::tunnel::MAX_REPLY_HEADER - 8192 {
        let whole = read_reply_from(vec![reply.to_vec()]);
        match (&split, &whole) {
            (Ok((s1, l1, a1, t1)), Ok((s2, l2, a2, t2))) => {
                assert_eq!((s1, l1, a1), (s2, l2, a2));
                // Bytes after the reply: those that came in the same read.
                assert!(t2.starts_with(t1), "{t1:?} {t2:?}");
                assert_eq!(&reply[reply.len() - t2.len()..], &t2[..]);
            }
            (Err(_), Err(_)) => {}
            _ => panic!("split {split:?}, whole {whole:?}"),
        }
    }
}

/// homeserver.yaml: arbitrary YAML read into settings, which are then used
/// for a decision per purpose; a password in the proxy URLs never shows in
/// errors, `Debug` or the explanations: the same file with the password
/// replaced by another of the same length gives the same outputs.
#[cfg(feature = "yaml")]
pub fn homeserver_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (outputs, passwords) = yaml_outputs(text);
    for raw in passwords {
        // Only a password of letters, digits, `-` and `_` written once in
        // the file: swapping its letters changes nothing else in the YAML.
        if raw.is_empty()
            || !raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || text.matches(raw.as_str()).count() != 1
        {
            continue;
        }
        let swapped: String = raw
            .chars()
            .map(|c| if c == 'x' { 'y' } else { 'x' })
            .collect();
        let other = text.replacen(raw.as_str(), &swapped, 1);
        let (other_outputs, other_passwords) = yaml_outputs(&other);
        if !other_passwords.contains(&swapped) {
            continue; // the text replaced was not where the password came from
        }
        for (a, b) in outputs.iter().zip(&other_outputs) {
            assert_eq!(a, b, "a proxy password shows");
        }
        assert_eq!(outputs.len(), other_outputs.len());
    }
}

/// Everything homeserver.yaml's text shows (errors, `Debug`, the
/// explanations of decisions), and the raw passwords of its proxy URLs.
#[cfg(feature = "yaml")]
fn yaml_outputs(text: &str) -> (Vec<String>, Vec<String>) {
    use crate::{HomeserverYaml, Key, ProxyEnv, ProxySettings, Purpose, Route};
    let yaml = match HomeserverYaml::parse(text) {
        Ok(yaml) => yaml,
        Err(e) => return (vec![e.to_string()], Vec::new()),
    };
    let passwords = ["http_proxy", "https_proxy"]
        .into_iter()
        .filter_map(|key| match yaml.string(key) {
            Ok(Key::Value(value)) => raw_password(value.trim()).map(str::to_owned),
            _ => None,
        })
        .collect();
    let settings = match ProxySettings::new(&ProxyEnv::default(), Some(&yaml)) {
        Ok(settings) => settings,
        Err(e) => return (vec![e.to_string(), format!("{e:?}")], passwords),
    };
    let mut outputs = vec![format!("{settings:?}")];
    let urls = [
        "https://example.org/",
        "http://example.org:8080/x",
        "https://10.1.2.3:8448/",
        "https://[::1]/",
        "https://internal.example:443/",
        "http://127.0.0.1/",
    ];
    for url in urls {
        let uri: http::Uri = url.parse().expect("valid URL");
        for purpose in Purpose::ALL {
            let route = Route::decide(&settings, purpose, &uri);
            outputs.push(route.explain());
            outputs.push(format!("{route:?}"));
        }
    }
    (outputs, passwords)
}

/// A server name: parsed as ruma does, then resolved (when no lookup is
/// needed) and routed.
#[cfg(feature = "federation")]
pub fn server_name(data: &[u8]) {
    crate::federation::fuzz::server_name(data);
}

/// A `/.well-known/matrix/server` answer (first line: `Cache-Control`).
#[cfg(feature = "federation")]
pub fn well_known(data: &[u8]) {
    crate::federation::fuzz::well_known(data);
}

/// A remote media `multipart/mixed` answer, delivered in chunks.
#[cfg(feature = "federation")]
pub fn media(data: &[u8]) {
    crate::federation::fuzz::media(data);
}

/// An `X-Matrix` header value and a `signing.key` file.
#[cfg(feature = "federation")]
pub fn x_matrix(data: &[u8]) {
    crate::federation::fuzz::x_matrix(data);
}

/// Bytes from a client of `egress serve`, over an in-memory connection, with
/// a policy that denies every target before resolving it.
#[cfg(feature = "serve")]
pub fn serve(data: &[u8]) {
    crate::serve::fuzz::connection(data);
}
