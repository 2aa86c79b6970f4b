//! The fake for faults: a small HTTP/1.1 origin (plain and TLS) for the
//! behaviours no real server produces on request. nginx serves the normal
//! origins and the 5xx answers; this serves the origins that also misbehave:
//!
//! * `/reset`: headers announcing 64 KiB, 1,000 bytes of body, then a TCP
//!   reset (SO_LINGER 0 and close);
//! * `/stall`: the same start, then nothing more until the client gives up
//!   (or 120 s pass);
//! * `/close`: a complete keep-alive response (no `Connection: close`), then
//!   the connection is closed at once, between requests;
//! * `/small`, `/big`, `/post`: the normal answers, as nginx gives them
//!   (`SOAK_SMALL_LEN` and `SOAK_BIG_LEN` bytes, `posted\n`); anything else 404.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{opt, usage};

/// Body sizes of `/small` and `/big`, the same as nginx's (soak/run writes
/// nginx's files with these sizes).
pub(crate) const SMALL_LEN: usize = 100;
pub(crate) const BIG_LEN: usize = 64 * 1024;
/// What `/reset` and `/stall` send of their body before the fault.
const PARTIAL: usize = 1000;

pub(crate) fn main(opts: &HashMap<String, String>) -> i32 {
    let _dir = opt(opts, "dir"); // on the command line for scripts/leftovers
    let tls = server_tls(opt(opts, "cert"), opt(opts, "key"));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let range = |name: &str| -> (u16, u16) {
        let v = opt(opts, name);
        v.split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .unwrap_or_else(|| usage(&format!("--{name} FIRST:COUNT, not {v}")))
    };
    let (http_first, http_count) = range("http");
    let (https_first, https_count) = range("https");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for (first, count, tls) in [
            (http_first, http_count, false),
            (https_first, https_count, true),
        ] {
            for port in first..first + count {
                let listener = TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap_or_else(|e| {
                        panic!("fake origin: cannot listen on 127.0.0.1:{port}: {e}")
                    });
                listeners.push((listener, tls));
            }
        }
        eprintln!("fake origin: listening on {} ports", listeners.len());
        let mut tasks = Vec::new();
        for (listener, tls) in listeners {
            let acceptor = acceptor.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let (tcp, _) = match listener.accept().await {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, go on.
                            eprintln!("fake origin: accept: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        if tls {
                            let handshake =
                                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp));
                            if let Ok(Ok(stream)) = handshake.await {
                                serve(stream).await;
                            }
                        } else {
                            serve(tcp).await;
                        }
                    });
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    0
}

fn server_tls(cert: &str, key: &str) -> rustls::ServerConfig {
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("fake origin: cannot read {cert}: {e}"));
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| panic!("fake origin: cannot read {key}: {e}"));
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap()
}

/// A stream whose TCP connection can be made to end with a reset.
trait Resettable: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;
}

impl Resettable for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Resettable for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Serves requests on one connection until the client closes it, goes
/// quiet for 30 s, or a fault ends it.
async fn serve<S: Resettable>(mut stream: S) {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    loop {
        let Some((path, head_len, body_len)) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        // The request body is read and dropped.
        let need = head_len + body_len;
        while buf.len() < need {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        buf.drain(..need);
        // A query (the serve soak's unique `?r=ID`) does not change the answer.
        let ok = match path.split('?').next().unwrap_or("") {
            "/small" => respond(&mut stream, "200 OK", &body(SMALL_LEN)).await,
            "/big" => respond(&mut stream, "200 OK", &body(BIG_LEN)).await,
            "/post" => respond(&mut stream, "200 OK", b"posted\n").await,
            "/reset" => {
                let _ = partial(&mut stream).await;
                // SO_LINGER 0: closing sends RST instead of FIN.
                let _ = stream.tcp().set_zero_linger();
                return;
            }
            "/stall" => {
                if partial(&mut stream).await {
                    // Nothing more, until the client closes (or 120 s).
                    let mut sink = [0u8; 1024];
                    let wait = async {
                        while let Ok(n) = stream.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(120), wait).await;
                }
                return;
            }
            "/close" => {
                let _ = respond(&mut stream, "200 OK", &body(SMALL_LEN)).await;
                return;
            }
            _ => respond(&mut stream, "404 Not Found", b"not found\n").await,
        };
        if !ok {
            return;
        }
    }
}

/// `SOAK` repeated: the body of `/small` and `/big`.
fn body(len: usize) -> Vec<u8> {
    b"SOAK".iter().copied().cycle().take(len).collect()
}

/// Reads until a whole request head is in `buf`: (path, head length, Content-Length).
async fn read_head<S: Resettable>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Option<(String, usize, usize)> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let path = lines.next()?.split(' ').nth(1)?.to_owned();
            let mut body_len = 0;
            for line in lines {
                if let Some((name, value)) = line.split_once(':') {
                    if name.trim().eq_ignore_ascii_case("content-length") {
                        body_len = value.trim().parse().ok()?;
                    }
                }
            }
            return Some((path, end + 4, body_len));
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        // An idle keep-alive connection is dropped after 30 s.
        match tokio::time::timeout(Duration::from_secs(30), read_more(stream, buf)).await {
            Ok(true) => {}
            _ => return None,
        }
    }
}

async fn read_more<S: Resettable>(stream: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn respond<S: Resettable>(stream: &mut S, status: &str, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut reply = head.into_bytes();
    reply.extend_from_slice(body);
    stream.write_all(&reply).await.is_ok() && stream.flush().await.is_ok()
}

/// Headers announcing `BIG_LEN` bytes, and only `PARTIAL` of them.
async fn partial<S: Resettable>(stream: &mut S) -> bool {
    let head =
        format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {BIG_LEN}\r\n\r\n");
    let mut reply = head.into_bytes();
    reply.extend_from_slice(&body(PARTIAL));
    stream.write_all(&reply).await.is_ok() && stream.flush().await.is_ok()
}
