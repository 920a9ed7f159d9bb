//! Body wrappers on the request path: the request body is counted and capped; the response
//! body is counted and keeps the invocation open until the last byte is sent.

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use nubo_core::BoxError;
use nubo_telemetry::Invocation;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Error yielded when a request body passes its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body is larger than the limit of {0} bytes")]
pub struct TooLarge(pub u64);

/// A request body that counts bytes into the invocation and fails past `limit`.
pub struct LimitedBody<B> {
    inner: B,
    seen: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
    invocation: Option<Invocation>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `exceeded` is set when the limit is passed.
    pub fn new(
        inner: B,
        limit: u64,
        exceeded: Arc<AtomicBool>,
        invocation: Option<Invocation>,
    ) -> Self {
        LimitedBody {
            inner,
            seen: 0,
            limit,
            exceeded,
            invocation,
        }
    }
}

impl<B> HttpBody for LimitedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.seen += n;
                    if let Some(inv) = &this.invocation {
                        inv.add_bytes_in(n);
                    }
                    if this.seen > this.limit {
                        this.exceeded.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            other => other.map(|_| None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts bytes out and holds the invocation until it ends or is dropped,
/// so the record's duration and byte counts cover the whole response.
pub struct MeteredBody<B> {
    inner: B,
    invocation: Option<Invocation>,
}

impl<B> MeteredBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, invocation: Invocation) -> Self {
        MeteredBody {
            inner,
            invocation: Some(invocation),
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // The client went away (or the body was never polled to its end).
        if let Some(inv) = self.invocation.take() {
            inv.response_done();
        }
    }
}

impl<B> HttpBody for MeteredBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(inv)) = (frame.data_ref(), &this.invocation) {
                    inv.add_bytes_out(data.len() as u64);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                // End of the response: release the invocation so its record is written now.
                if let Some(inv) = this.invocation.take() {
                    inv.response_done();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
