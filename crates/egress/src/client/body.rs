//! The response body: the connection goes back to the pool when the body
//! has been read to the end, and a body that goes quiet times out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use super::pool::{Pool, PoolKey};
use super::RequestBody;
use crate::instruments::Meter;
use crate::{Error, TimeoutStep};

/// Where a connection goes back to once its response is read.
pub(crate) struct Return {
    pub(crate) pool: Arc<Pool>,
    pub(crate) key: PoolKey,
    pub(crate) sender: SendRequest<RequestBody>,
}

/// A response body. When it has been read to the end, its connection goes
/// back to the pool; dropped before the end, the connection is closed. A body
/// that sends nothing for [`Timeouts::body_idle`](crate::Timeouts::body_idle)
/// ends with [`Error::Timeout`].
pub struct Body {
    inner: Incoming,
    ret: Option<Return>,
    idle: Duration,
    /// The idle timer, made on the first wait and re-armed at each new wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
    /// The request's metrics, timed when the body ends or is dropped.
    meter: Meter,
}

impl Body {
    pub(crate) fn new(inner: Incoming, ret: Return, idle: Duration, meter: Meter) -> Body {
        let mut body = Body {
            inner,
            ret: Some(ret),
            idle,
            timer: None,
            waiting: false,
            meter,
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    /// Whom the body comes from, for errors (computed only then).
    fn peer(&self) -> String {
        self.ret
            .as_ref()
            .map_or_else(|| "the server".to_owned(), |r| r.key.peer())
    }

    fn release(&mut self) {
        self.meter.finish();
        if let Some(ret) = self.ret.take() {
            ret.pool.put(ret.key, ret.sender);
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !this.waiting {
                    timer.as_mut().reset(deadline);
                    this.waiting = true;
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Error::Timeout {
                        step: TimeoutStep::BodyIdle,
                        peer: this.peer(),
                        after: this.idle,
                    }))),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(frame) => {
                this.waiting = false;
                if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
                    this.meter.body_bytes(data.len());
                }
                match &frame {
                    None => this.release(),
                    Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
                    _ => {}
                }
                Poll::Ready(frame.map(|f| {
                    f.map_err(|source| Error::Http {
                        peer: this.peer(),
                        source,
                    })
                }))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("peer", &self.peer())
            .finish_non_exhaustive()
    }
}
