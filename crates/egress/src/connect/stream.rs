//! The byte stream a connection ends up as: TCP, with any number of TLS
//! layers (TLS to an `https://` proxy, then TLS to the origin inside the
//! tunnel), and the bytes a proxy sent after its CONNECT reply.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connected stream. `Debug` names the layers.
pub(crate) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over another stream (to the proxy, or to the origin).
    Tls(Box<TlsStream<Stream>>),
    /// A stream with bytes already read from it (after a CONNECT reply).
    Prefixed(Bytes, Box<Stream>),
}

impl Stream {
    /// The TLS session of the outermost TLS layer, if any.
    #[cfg(feature = "doctor")]
    pub(crate) fn tls(&self) -> Option<&rustls::ClientConnection> {
        match self {
            Stream::Tls(tls) => Some(tls.get_ref().1),
            Stream::Prefixed(_, inner) => inner.tls(),
            Stream::Tcp(_) => None,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0.tcp(),
            Stream::Prefixed(_, inner) => inner.tcp(),
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Tcp(tcp) => write!(f, "Tcp({:?})", tcp.peer_addr().ok()),
            Stream::Tls(tls) => write!(f, "Tls({:?})", tls.get_ref().0),
            Stream::Prefixed(bytes, inner) => {
                write!(f, "Prefixed({} bytes, {inner:?})", bytes.len())
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Prefixed(prefix, inner) => {
                if prefix.has_remaining() {
                    let n = prefix.len().min(buf.remaining());
                    buf.put_slice(&prefix[..n]);
                    prefix.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Pin::new(inner.as_mut()).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Prefixed(_, inner) => Pin::new(inner.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::Prefixed(_, inner) => Pin::new(inner.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Prefixed(_, inner) => Pin::new(inner.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection made by a [`Connector`](crate::Connector), for hyper-util's
/// legacy client: one made to a forwarding proxy says so, so that the client
/// sends absolute-form requests.
#[derive(Debug)]
pub struct ConnectedStream {
    pub(crate) stream: Stream,
    pub(crate) forwarding_proxy: bool,
}

impl ConnectedStream {
    /// True for a connection to an `http_proxy` that forwards requests.
    pub fn is_forwarding_proxy(&self) -> bool {
        self.forwarding_proxy
    }
}

impl Connection for ConnectedStream {
    fn connected(&self) -> Connected {
        let tcp = self.stream.tcp().connected();
        tcp.proxy(self.forwarding_proxy)
    }
}

impl AsyncRead for ConnectedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnectedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
