//! The request body's read timeout and whole-body deadline, armed only when a read
//! would wait.
//!
//! tower-http's `TimeoutBody` (which this replaced) starts a timer on every read of a
//! body, even when the bytes are already in hyper's buffer, as they are for nearly
//! every reservation (a 60-byte body sent with its head). That timer (a timer-wheel
//! insert, re-register and removal per request) was ~0.5 µs of every sold-out attempt
//! (issue 12). Here the body is read first, and the timer is started only when
//! the read returns `Pending`; it is dropped as soon as bytes come, so it times each
//! wait for more bytes, as before (and as nginx's `client_body_timeout` does).
//!
//! A per-wait timeout alone lets a client that sends one byte just inside it keep a
//! request, and its connection, for as long as it likes (64 KiB at a byte every 9 s
//! is a week). So the body also has a deadline for the whole of it, counted from the
//! first wait (bytes that came with the head cost no time): past it the read fails
//! the same way, and the handler answers 408.

use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The error a body read fails with when no bytes came for the timeout, or the whole
/// body did not arrive by its deadline (`api::body_bytes` answers it with 408).
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body stopped arriving (body-read timeout) or took longer than the body deadline"
)]
pub struct BodyTimedOut;

/// `inner`, failing with [`BodyTimedOut`] when a read waits longer than `timeout`, or
/// when the body is still incomplete `deadline` after its first wait.
pub struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    deadline: Duration,
    /// When the first read had to wait (the deadline counts from it).
    first_wait: Option<Instant>,
    /// Armed while a read waits; `None` otherwise.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, timeout: Duration, deadline: Duration) -> Self {
        TimedBody {
            inner,
            timeout,
            deadline,
            first_wait: None,
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
        let (timeout, deadline) = (this.timeout, this.deadline);
        let first_wait = &mut this.first_wait;
        let sleep = this.sleep.get_or_insert_with(|| {
            let now = Instant::now();
            let whole = *first_wait.get_or_insert(now) + deadline;
            Box::pin(tokio::time::sleep_until(whole.min(now + timeout)))
        });
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
            Duration::from_secs(60),
        );
        let got = body.collect().await.expect("no wait was past the timeout");
        assert_eq!(got.to_bytes(), "abcdef");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_with_body_timed_out() {
        let body = TimedBody::new(
            slow_body(vec!["ab", "cd"], Duration::from_secs(6)),
            Duration::from_secs(5),
            Duration::from_secs(60),
        );
        let err = body.collect().await.expect_err("the first wait is 6 s");
        assert!(err.is::<BodyTimedOut>(), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_fails_at_its_deadline() {
        // Every wait (3 s) is under the per-read timeout (5 s), but the whole body
        // (10 chunks, 30 s) is past the deadline (20 s).
        let body = TimedBody::new(
            slow_body(vec!["a"; 10], Duration::from_secs(3)),
            Duration::from_secs(5),
            Duration::from_secs(20),
        );
        let err = body.collect().await.expect_err("the body takes 30 s");
        assert!(err.is::<BodyTimedOut>(), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_already_here_never_arms_the_timer() {
        let mut body = TimedBody::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"{}")),
            Duration::from_secs(5),
            Duration::from_secs(20),
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "{}");
        assert!(body.sleep.is_none());
        assert!(body.frame().await.is_none());
        assert!(body.sleep.is_none() && body.first_wait.is_none());
    }
}
