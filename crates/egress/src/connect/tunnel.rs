//! `CONNECT host:port` through a proxy, and the proxy's reply read with a
//! real HTTP parser (httparse).
//!
//! hyper-util has a `Tunnel` connector, but it accepts only `200`, looks for
//! the reply by string matching and has one error for every failure; the
//! proxy's status line and distinct errors for 407/403/5xx are the point here.

use std::time::Duration;

use bytes::BytesMut;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::stream::Stream;
use crate::{Error, ProxyUrl, TimeoutStep};

/// The most a proxy may send before the blank line that ends its reply.
pub(crate) const MAX_REPLY_HEADER: usize = 64 * 1024;

/// `host:port` as written in a CONNECT line and its Host header: IPv6 in brackets.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Asks the proxy on `stream` for a tunnel to `target` (`host:port`) and
/// returns the stream, now connected to the target. Bytes the proxy sent after
/// its reply belong to the tunnel and are kept. `via` is sent as the `Via`
/// header (serve, tunnelling through its parent).
pub(crate) async fn connect(
    mut stream: Stream,
    proxy: &ProxyUrl,
    key: &'static str,
    target: &str,
    via: Option<&HeaderValue>,
    reply_timeout: Duration,
) -> Result<Stream, Error> {
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    tracing::info!(target: "egress::wire", "> CONNECT {target} HTTP/1.1 (to proxy {proxy})");
    if let Some(via) = via.and_then(|v| v.to_str().ok()) {
        request.push_str("Via: ");
        request.push_str(via);
        request.push_str("\r\n");
    }
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

    let protocol = |(problem, source): (String, Option<std::io::Error>)| Error::ProxyProtocol {
        proxy: proxy.to_string(),
        target: target.to_owned(),
        problem,
        source,
    };
    let exchange = async {
        let sent = async {
            stream.write_all(request.as_bytes()).await?;
            stream.flush().await
        };
        sent.await
            .map_err(|e| protocol(("it did not take the CONNECT request".to_owned(), Some(e))))?;
        read_reply(&mut stream).await.map_err(protocol)
    };
    let (status, status_line, auth_scheme, rest) =
        match tokio::time::timeout(reply_timeout, exchange).await {
            Ok(reply) => reply?,
            Err(_) => {
                return Err(Error::Timeout {
                    step: TimeoutStep::ProxyReply,
                    peer: format!("proxy {proxy} for {target}"),
                    after: reply_timeout,
                })
            }
        };
    tracing::info!(target: "egress::wire", "< {status_line} (from proxy)");
    let (proxy, target) = (proxy.to_string(), target.to_owned());
    match status.as_u16() {
        200..=299 if rest.is_empty() => Ok(stream),
        200..=299 => Ok(Stream::Prefixed(rest.freeze(), Box::new(stream))),
        401 | 407 => Err(Error::ProxyAuth {
            proxy,
            target,
            status,
            status_line,
            scheme: auth_scheme,
            key,
        }),
        403 => Err(Error::ProxyForbidden {
            proxy,
            target,
            status,
            status_line,
        }),
        502..=504 => Err(Error::ProxyUnreachable {
            proxy,
            target,
            status,
            status_line,
        }),
        _ => Err(Error::ProxyStatus {
            proxy,
            target,
            status,
            status_line,
        }),
    }
}

/// Reads until the end of the reply's header block. Returns the status code,
/// the status line, the scheme of `Proxy-Authenticate` (or `WWW-Authenticate`)
/// and any bytes after the blank line.
pub(crate) type ReplyError = (String, Option<std::io::Error>);

/// The status code, the status line, the authentication scheme asked for and
/// the bytes after the reply.
pub(crate) type Reply = (http::StatusCode, String, Option<String>, BytesMut);

pub(crate) async fn read_reply<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Reply, ReplyError> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= MAX_REPLY_HEADER {
            return Err((
                format!("its reply headers exceed {} KiB", MAX_REPLY_HEADER / 1024),
                None,
            ));
        }
        buf.reserve(4096.min(MAX_REPLY_HEADER - buf.len()));
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| ("reading its reply failed".to_owned(), Some(e)))?;
        if n == 0 {
            let problem = if buf.is_empty() {
                "it closed the connection without replying".to_owned()
            } else {
                format!(
                    "it closed the connection in the middle of its reply `{}`",
                    preview(&buf)
                )
            };
            return Err((problem, None));
        }
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut reply = httparse::Response::new(&mut headers);
        match reply.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                let code = reply.code.unwrap_or_default();
                // httparse reads exactly three digits; 100–999 is all `StatusCode` takes.
                let status = http::StatusCode::from_u16(code).map_err(|_| {
                    (
                        format!("its status code {code} is not valid: `{}`", preview(&buf)),
                        None,
                    )
                })?;
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
                return Ok((status, status_line, scheme, rest));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(("its reply has more than 100 header lines".to_owned(), None))
            }
            Err(e) => {
                return Err((
                    format!("its reply is not HTTP ({e}): `{}`", preview(&buf)),
                    None,
                ))
            }
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

    /// A fake proxy (no real proxy sends its 200 and tunnel bytes in one
    /// write on demand): the bytes after the reply belong to the tunnel.
    #[tokio::test]
    async fn bytes_glued_to_the_reply_are_kept() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                tcp.read_exact(&mut byte).await.unwrap();
                request.push(byte[0]);
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\n\r\nHELLO")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let proxy = ProxyUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut stream = connect(
            Stream::Tcp(tcp),
            &proxy,
            "https_proxy",
            "localhost:1",
            None,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut first = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut first))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&first, b"HELLO");
    }

    #[test]
    fn previews_are_short_and_printable() {
        assert_eq!(preview(b"HTTP/1.1 2000\r\n"), "HTTP/1.1 2000\\r\\n");
        assert!(preview(&[b'x'; 100]).ends_with('…'));
    }
}
