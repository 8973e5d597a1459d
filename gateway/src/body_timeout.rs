//! The request body's read timeout, armed only when a read would wait.
//!
//! tower-http's `TimeoutBody` (which this replaced) starts a timer on every read of a
//! body, even when the bytes are already in hyper's buffer, as they are for nearly
//! every reservation (a 60-byte body sent with its head). That timer (a timer-wheel
//! insert, re-register and removal per request) was ~0.5 µs of every sold-out attempt
//! (issue 12). Here the body is read first, and the timer is started only when
//! the read returns `Pending`; it is dropped as soon as bytes come, so it times each
//! wait for more bytes, not the whole body, as before (and as nginx's
//! `client_body_timeout` does).

use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The error a body read fails with when no bytes came for the timeout
/// (`api::body_bytes` answers it with 408).
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes arrived within the body-read timeout")]
pub struct BodyTimedOut;

/// `inner`, failing with [`BodyTimedOut`] when a read waits longer than `timeout`.
pub struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    /// Armed while a read waits; `None` otherwise.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        TimedBody {
            inner,
            timeout,
            sleep: None,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<tower::BoxError>,
{
    type Data = B::Data;
    type Error = tower::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that yields `chunks`, waiting `gap` before each.
    fn slow_body(
        chunks: Vec<&'static str>,
        gap: Duration,
    ) -> http_body_util::StreamBody<
        futures::stream::BoxStream<'static, Result<Frame<bytes::Bytes>, std::io::Error>>,
    > {
        use futures::StreamExt;
        let s = futures::stream::iter(chunks).then(move |c| async move {
            tokio::time::sleep(gap).await;
            Ok(Frame::data(bytes::Bytes::from_static(c.as_bytes())))
        });
        http_body_util::StreamBody::new(s.boxed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_coming_is_read_whole() {
        // Each wait (4 s) is under the timeout (5 s); the whole body takes 12 s.
        let body = TimedBody::new(
            slow_body(vec!["ab", "cd", "ef"], Duration::from_secs(4)),
            Duration::from_secs(5),
        );
        let got = body.collect().await.expect("no wait was past the timeout");
        assert_eq!(got.to_bytes(), "abcdef");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_with_body_timed_out() {
        let body = TimedBody::new(
            slow_body(vec!["ab", "cd"], Duration::from_secs(6)),
            Duration::from_secs(5),
        );
        let err = body.collect().await.expect_err("the first wait is 6 s");
        assert!(err.is::<BodyTimedOut>(), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_already_here_never_arms_the_timer() {
        let mut body = TimedBody::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
            Duration::from_secs(5),
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "{}");
        assert!(body.sleep.is_none());
        assert!(body.frame().await.is_none());
        assert!(body.sleep.is_none());
    }
}
