//! `CONNECT host:port` through a proxy, and the proxy's reply read with a
//! real HTTP parser (httparse).
//!
//! hyper-util has a `Tunnel` connector, but it accepts only `200`, looks for
//! the reply by string matching and has one error for every failure; the
//! proxy's status line and distinct errors for 407/403/5xx are the point here.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::stream::Stream;
use crate::{Error, ProxyUrl};

/// The most a proxy may send before the blank line that ends its reply.
pub const MAX_REPLY_HEADER: usize = 64 * 1024;

/// `host:port` as written in a CONNECT line and its Host header: IPv6 in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Asks the proxy on `stream` for a tunnel to `target` (`host:port`) and
/// returns the stream, now connected to the target. Bytes the proxy sent after
/// its reply belong to the tunnel and are kept.
pub async fn connect(
    mut stream: Stream,
    proxy: &ProxyUrl,
    key: &'static str,
    target: &str,
    reply_timeout: Duration,
) -> Result<Stream, Error> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    tracing::info!(target: "egress::wire", "> CONNECT {target} HTTP/1.1 (to proxy {proxy})");
    if let Some(credentials) = proxy.credentials() {
        let value = credentials
            .proxy_authorization()
            .to_str()
            .expect("base64 header is ASCII");
        request.push_str("Proxy-Authorization: ");
        request.push_str(value);
        request.push_str("\r\n");
        tracing::info!(target: "egress::wire", "> Proxy-Authorization: Basic *** (user {})", credentials.user());
    }
    request.push_str("\r\n");

    let protocol = |problem: String| Error::ProxyProtocol {
        proxy: proxy.to_string(),
        target: target.to_owned(),
        problem,
    };
    let exchange = async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| protocol(format!("cannot send the CONNECT request: {e}")))?;
        stream
            .flush()
            .await
            .map_err(|e| protocol(format!("cannot send the CONNECT request: {e}")))?;
        read_reply(&mut stream).await.map_err(protocol)
    };
    let (status, status_line, auth_scheme, rest) =
        match tokio::time::timeout(reply_timeout, exchange).await {
            Ok(reply) => reply?,
            Err(_) => {
                return Err(Error::Timeout {
                    step: format!("waiting for proxy {proxy} to answer CONNECT {target}"),
                    after: reply_timeout,
                })
            }
        };
    tracing::info!(target: "egress::wire", "< {status_line} (from proxy)");
    let (proxy, target) = (proxy.to_string(), target.to_owned());
    match status {
        200..=299 if rest.is_empty() => Ok(stream),
        200..=299 => Ok(Stream::Prefixed(rest.freeze(), Box::new(stream))),
        401 | 407 => Err(Error::ProxyAuth {
            proxy,
            target,
            status_line,
            scheme: auth_scheme,
            key,
        }),
        403 => Err(Error::ProxyForbidden {
            proxy,
            target,
            status_line,
        }),
        502..=504 => Err(Error::ProxyUnreachable {
            proxy,
            target,
            status_line,
        }),
        _ => Err(Error::ProxyStatus {
            proxy,
            target,
            status_line,
        }),
    }
}

/// Reads until the end of the reply's header block. Returns the status code,
/// the status line, the scheme of `Proxy-Authenticate` (or `WWW-Authenticate`)
/// and any bytes after the blank line.
async fn read_reply(
    stream: &mut Stream,
) -> Result<(u16, String, Option<String>, BytesMut), String> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= MAX_REPLY_HEADER {
            return Err(format!(
                "its reply headers exceed {} KiB",
                MAX_REPLY_HEADER / 1024
            ));
        }
        buf.reserve(4096.min(MAX_REPLY_HEADER - buf.len()));
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("reading its reply failed: {e}"))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "it closed the connection without replying".to_owned()
            } else {
                format!(
                    "it closed the connection in the middle of its reply `{}`",
                    preview(&buf)
                )
            });
        }
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut reply = httparse::Response::new(&mut headers);
        match reply.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                let code = reply.code.unwrap_or_default();
                let status_line = format!(
                    "HTTP/1.{} {} {}",
                    reply.version.unwrap_or(1),
                    code,
                    reply.reason.unwrap_or_default()
                )
                .trim_end()
                .to_owned();
                let scheme = reply
                    .headers
                    .iter()
                    .find(|h| {
                        h.name.eq_ignore_ascii_case("proxy-authenticate")
                            || h.name.eq_ignore_ascii_case("www-authenticate")
                    })
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.split_whitespace().next())
                    .map(str::to_owned);
                let rest = buf.split_off(len);
                return Ok((code, status_line, scheme, rest));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err("its reply has more than 100 header lines".to_owned())
            }
            Err(e) => return Err(format!("its reply is not HTTP ({e}): `{}`", preview(&buf))),
        }
    }
}

/// The first bytes of a reply, printable.
fn preview(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(60)];
    let text: String = head.escape_ascii().to_string();
    if bytes.len() > 60 {
        format!("{text}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_bracket_ipv6() {
        assert_eq!(authority("example.com", 443), "example.com:443");
        assert_eq!(authority("::1", 8448), "[::1]:8448");
        assert_eq!(authority("[::1]", 8448), "[::1]:8448");
        assert_eq!(authority("1.2.3.4", 80), "1.2.3.4:80");
    }

    #[test]
    fn previews_are_short_and_printable() {
        assert_eq!(preview(b"HTTP/1.1 2000\r\n"), "HTTP/1.1 2000\\r\\n");
        assert!(preview(&[b'x'; 100]).ends_with('…'));
    }
}
