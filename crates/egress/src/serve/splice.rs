//! Copying a tunnel's bytes both ways, with an idle limit.
//!
//! Between two TCP sockets the copy holds no buffer while the tunnel is idle:
//! it waits for readiness, then reads into a stack buffer and writes what the
//! other side takes at once; only a remainder the other side cannot take yet
//! goes to the heap. An idle tunnel costs its task and two sockets (the
//! figure in BENCHMARKS.md), where `tokio::io::copy_bidirectional` keeps
//! 16 KiB of buffers per tunnel. Other streams (TLS to a parent proxy) use
//! `copy_bidirectional` with activity counted on the way.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Read size per readiness event.
const CHUNK: usize = 16 * 1024;

/// Bytes moved each way and how the tunnel ended.
#[derive(Debug, Default)]
pub(crate) struct Moved {
    /// Client → target.
    pub(crate) up: AtomicU64,
    /// Target → client.
    pub(crate) down: AtomicU64,
    /// Milliseconds since `start` of the last byte moved.
    last: AtomicU64,
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides closed.
    Closed,
    /// Nothing moved for the idle limit.
    Idle,
    /// A read or write failed (reset, broken pipe).
    Error(io::ErrorKind),
}

impl End {
    pub(crate) fn describe(&self) -> String {
        match self {
            End::Closed => "closed".to_owned(),
            End::Idle => "idle timeout".to_owned(),
            End::Error(kind) => format!("ended by {kind}"),
        }
    }
}

struct Clock {
    start: Instant,
}

impl Clock {
    fn touch(&self, moved: &Moved) {
        moved
            .last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `idle`.
    async fn idle(&self, moved: &Moved, idle: Duration) {
        loop {
            let last = Duration::from_millis(moved.last.load(Ordering::Relaxed));
            let quiet_since = self.start + last;
            if quiet_since.elapsed() >= idle {
                return;
            }
            tokio::time::sleep_until((quiet_since + idle).into()).await;
        }
    }
}

/// Copies between two TCP sockets until both sides close, one fails, or
/// nothing moves for `idle`.
pub(crate) async fn tcp(
    mut client: TcpStream,
    mut target: TcpStream,
    idle: Duration,
    moved: &Moved,
) -> End {
    let clock = Clock {
        start: Instant::now(),
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut target_read, mut target_write) = target.split();
    let both = async {
        let up = pump(
            &mut client_read,
            &mut target_write,
            &moved.up,
            &clock,
            moved,
        );
        let down = pump(
            &mut target_read,
            &mut client_write,
            &moved.down,
            &clock,
            moved,
        );
        tokio::try_join!(up, down)
    };
    tokio::select! {
        result = both => match result {
            Ok(_) => End::Closed,
            Err(e) => End::Error(e.kind()),
        },
        () = clock.idle(moved, idle) => End::Idle,
    }
}

/// One direction: until end of file (then the write side is shut down).
async fn pump(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    count: &AtomicU64,
    clock: &Clock,
    moved: &Moved,
) -> io::Result<()> {
    loop {
        match std::future::poll_fn(|cx| transfer(cx, from, to)).await? {
            Step::Eof => {
                to.shutdown().await?;
                return Ok(());
            }
            Step::Moved(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                clock.touch(moved);
            }
            Step::Partial(rest, n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                clock.touch(moved);
                to.write_all(&rest).await?;
            }
        }
    }
}

enum Step {
    Eof,
    Moved(usize),
    /// Read `usize` bytes; the other side did not take this part yet.
    Partial(Vec<u8>, usize),
}

/// One read into a stack buffer and as much of a write as the other side
/// takes now. The buffer lives only for this call, so it is not part of the
/// task. The read goes through `poll_read`, which registers the task's waker
/// and, after a short read, clears the socket's readiness: the next turn
/// waits for the kernel instead of paying a read that would block.
fn transfer(
    cx: &mut Context<'_>,
    from: &mut ReadHalf<'_>,
    to: &WriteHalf<'_>,
) -> Poll<io::Result<Step>> {
    let mut storage = [0u8; CHUNK];
    let mut buf = ReadBuf::new(&mut storage);
    match Pin::new(from).poll_read(cx, &mut buf) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Ready(Ok(())) => {}
    }
    let n = buf.filled().len();
    if n == 0 {
        return Poll::Ready(Ok(Step::Eof));
    }
    let mut written = 0;
    while written < n {
        match to.try_write(&storage[written..n]) {
            Ok(k) => written += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(if written == n {
        Step::Moved(n)
    } else {
        Step::Partial(storage[written..n].to_vec(), n)
    }))
}

/// Copies between any two streams (TLS to a parent proxy), with the same
/// idle limit and counts.
pub(crate) async fn streams<A, B>(client: A, target: B, idle: Duration, moved: Arc<Moved>) -> End
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Arc::new(Clock {
        start: Instant::now(),
    });
    let mut client = Counted {
        inner: client,
        up: true,
        moved: moved.clone(),
        clock: clock.clone(),
    };
    let mut target = Counted {
        inner: target,
        up: false,
        moved: moved.clone(),
        clock: clock.clone(),
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut target) => match result {
            Ok(_) => End::Closed,
            Err(e) => End::Error(e.kind()),
        },
        () = clock.idle(&moved, idle) => End::Idle,
    }
}

/// A stream that counts what is read from it.
struct Counted<S> {
    inner: S,
    /// Reads from this side go up (client → target).
    up: bool,
    moved: Arc<Moved>,
    clock: Arc<Clock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let counter = if self.up {
                &self.moved.up
            } else {
                &self.moved.down
            };
            counter.fetch_add(n, Ordering::Relaxed);
            self.clock.touch(&self.moved);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_with_half_close_and_backpressure() {
        let (mut client, client_side) = pair().await;
        let (target_side, mut target) = pair().await;
        let moved = Arc::new(Moved::default());
        let m = moved.clone();
        let task =
            tokio::spawn(
                async move { tcp(client_side, target_side, Duration::from_secs(5), &m).await },
            );
        // 8 MiB up while the target reads slowly: the remainder path runs.
        let big = vec![7u8; 8 << 20];
        let writer = tokio::spawn(async move {
            client.write_all(&big).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = Vec::new();
        target.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 8 << 20);
        target.write_all(b"reply").await.unwrap();
        target.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply");
        assert_eq!(task.await.unwrap(), End::Closed);
        assert_eq!(moved.up.load(Ordering::Relaxed), 8 << 20);
        assert_eq!(moved.down.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn an_idle_tunnel_ends_after_the_limit() {
        let (_client, client_side) = pair().await;
        let (target_side, _target) = pair().await;
        let moved = Moved::default();
        let started = Instant::now();
        let end = tcp(client_side, target_side, Duration::from_millis(300), &moved).await;
        assert_eq!(end, End::Idle);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
