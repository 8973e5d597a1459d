//! The HTTP server of every process that serves the API (embedded `serve`, Kafka-mode
//! `gateway` and `serve --kafka`): one accept loop, [`serve`], so the modes cannot drift.
//!
//! Its limits, each taken from the library that owns the job where one does:
//! - **Header-read timeout**: hyper's `http1::Builder::header_read_timeout`. Its clock
//!   runs whenever hyper waits for a request head: from the moment a connection opens,
//!   and again from the end of each response, so it is also the **idle keep-alive
//!   timeout**. A silent, half-sent or idle connection is closed when it fires.
//! - **Body-read timeout and body deadline**: [`crate::body_timeout`] (tower-http's
//!   `TimeoutBody`, with the timer armed only when a read waits): a body that stalls
//!   (no bytes) for the timeout, or is still incomplete at its deadline (counted from
//!   its first wait, so a body trickled a byte at a time cannot hold a connection for
//!   days), fails to read; the handler answers 408 with the API's error body
//!   (`api::body_bytes`), and hyper closes the connection (the body was not read to
//!   its end).
//! - **Declared body size**: a `Content-Length` over the body limit is answered 413 at
//!   once, before any of the body is read (`error::render_errors`).
//! - **Requests being handled** (admission, docs/overload.md): tower's
//!   `ConcurrencyLimit` under `LoadShed` bounds the requests in the handlers at once
//!   (`max_requests`); one past it is answered 503 + `Retry-After` with the API's error
//!   body before its body is read or it is routed. Every request is stamped with
//!   [`crate::admission::Arrived`] as the server gets its head, with the runtime's lag
//!   then ([`crate::admission::RunQueueLag`], measured by a probe task while the server
//!   runs: how long the request's bytes waited unseen), so the dispatcher can shed one
//!   that waited too long before anything is queued.
//! - **Connection limit**: hyper has none, so this loop counts connections; past
//!   `max_connections`, a new connection is answered at once with 503, `Retry-After`
//!   and the API's error body, and closed. Refusals are bounded too
//!   ([`MAX_REFUSING`]); past that, a connection is closed at once, never left hanging.
//! - **Request head size**: hyper's `max_header_size` / `max_buf_size`
//!   ([`HARD_HEAD_BYTES`]) bound a connection's memory; hyper answers a head past
//!   them with a bare 431. Below them, our own limits (`error::MAX_HEAD_BYTES`,
//!   `error::MAX_URI_BYTES`) answer 431 / 414 with the API's body and `X-Request-Id`.
//! - **Shutdown**: stop accepting, tell long-lived responses ([`Draining`]: the console's
//!   event stream ends on it), let hyper finish the requests in flight (hyper-util's
//!   `GracefulShutdown`) for at most `drain`, then close whatever is still open, so a
//!   slow client never holds back the final snapshots.

use crate::admission::{AdmissionPolicy, Arrived, RunQueueLag};
use crate::body_timeout::TimedBody;
use crate::error::ApiError;
use axum::http::StatusCode;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// hyper's own limit on a request head (request line + headers), and so on the
/// memory a connection's head can take. Past it hyper answers a bare 431.
pub const HARD_HEAD_BYTES: usize = 64 * 1024;
/// hyper's read buffer per connection (heads, pipelined requests, body chunks).
const MAX_BUF_BYTES: usize = 2 * HARD_HEAD_BYTES;
/// Refusals being written at once; past this a connection over the limit is closed
/// without an answer (a flood must not turn refusals into a queue of their own).
pub const MAX_REFUSING: usize = 256;
/// How long a refused connection may take to receive its 503 and let go.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The server's limits (flags `--http-*` and `--shutdown-drain-secs`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time to send a complete request head, from connect or from the previous
    /// response (so also the idle keep-alive timeout).
    pub header_read_timeout: Duration,
    /// Longest wait for more bytes of a request body before answering 408.
    pub body_read_timeout: Duration,
    /// Longest a request body may take as a whole, from its first wait, before
    /// answering 408.
    pub body_deadline: Duration,
    /// Most connections open at once; past it, 503 at once.
    pub max_connections: usize,
    /// Most requests being handled at once (head read, answer not yet given); past it,
    /// 503 at once, before the body is read.
    pub max_requests: usize,
    /// The dispatcher's sojourn and adaptive-limit rules (docs/overload.md).
    pub admission: AdmissionPolicy,
    /// On shutdown, how long requests in flight may take before their connections are
    /// closed.
    pub drain: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(10),
            body_deadline: Duration::from_secs(30),
            max_connections: 10_000,
            max_requests: DEFAULT_MAX_REQUESTS,
            admission: AdmissionPolicy::default(),
            drain: Duration::from_secs(10),
        }
    }
}

/// Tells long-lived responses (an event stream) that the server is shutting down, so
/// they end instead of holding the drain to its deadline. Every request served by
/// [`serve`] carries one as an extension: take `Option<Extension<Draining>>` in the
/// handler (a router driven without [`serve`], as in tests, has none).
#[derive(Debug, Clone, Default)]
pub struct Draining(CancellationToken);

impl Draining {
    /// True once the server stopped accepting connections.
    pub fn is_draining(&self) -> bool {
        self.0.is_cancelled()
    }
    /// Resolves when the server starts draining.
    pub async fn wait(&self) {
        self.0.cancelled().await
    }
    /// [`Draining::wait`] as an owned future (for `take_until` on a stream).
    pub fn wait_owned(self) -> impl Future<Output = ()> + Send + 'static {
        self.0.cancelled_owned()
    }
}

/// Default of `--http-max-requests`: with HTTP/1.1 a connection has one request in a
/// handler at a time, so this is the connections whose request is being handled; each
/// may hold up to a 64 KiB body, so it bounds that memory too (128 MiB). Far above what
/// the per-partition limits admit, so it only sheds a flood they would shed anyway, but
/// before its bodies are read.
pub const DEFAULT_MAX_REQUESTS: usize = 2_048;

/// Connections waiting in the kernel for `accept`, at most (the kernel caps it at
/// `net.core.somaxconn`). tokio's `TcpListener::bind` asks for 1,024: a crowd opening
/// connections faster than a busy node accepts them overflowed that queue, and every
/// dropped SYN is retried by the client only after a second (the 1 s tails of the
/// crowd benchmarks, counted as `ListenOverflows` by `nstat`).
pub const LISTEN_BACKLOG: u32 = 8_192;

/// A listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's `bind`).
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` with `limits` until `shutdown` resolves, then drains
/// (at most `limits.drain`) and returns. What runs after it (final snapshots) is
/// never held back by a client.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let draining = Draining::default();
    let policy = limits.admission;
    // Rule 0 of admission: the runtime's lag, measured while the server runs.
    let lag = Arc::new(RunQueueLag::default());
    let probe_stop = CancellationToken::new();
    if policy.max_lag.is_some() {
        tokio::spawn(lag.clone().probe(probe_stop.clone().cancelled_owned()));
    }
    let _probe_stop = probe_stop.drop_guard();
    let stamp_lag = lag.clone();
    let service = tower::ServiceBuilder::new()
        .layer(axum::Extension(draining.clone()))
        .map_request(move |req: axum::http::Request<hyper::body::Incoming>| {
            let mut req =
                req.map(|b| TimedBody::new(b, limits.body_read_timeout, limits.body_deadline));
            req.extensions_mut().insert(Arrived {
                at: std::time::Instant::now(),
                lag: stamp_lag.now(),
                policy,
            });
            req
        })
        .map_result(overload_to_503)
        .load_shed()
        .concurrency_limit(limits.max_requests.max(1))
        .service(app);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(HARD_HEAD_BYTES)
        .max_buf_size(MAX_BUF_BYTES);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let graceful = GracefulShutdown::new();
    let hard_stop = CancellationToken::new();
    let mut accept_errors = flashsale_runtime::patience::Quiet::new(
        "the HTTP listener to accept connections (out of file descriptors? raise `ulimit -n` or lower --http-max-connections)",
    );
    if let Some(files) = open_files_soft_limit() {
        let wanted = limits.max_connections as u64 + FILES_BESIDES_CONNECTIONS;
        if wanted > files {
            tracing::warn!(
                max_connections = limits.max_connections,
                open_files_limit = files,
                "--http-max-connections is above what the open-file limit allows: past about {} connections accepting fails and clients wait instead of getting 503; raise `ulimit -n` or lower --http-max-connections",
                files.saturating_sub(FILES_BESIDES_CONNECTIONS)
            );
        }
    }
    let mut refused_logged: Option<std::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accept_errors.succeeded();
                    stream
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // EMFILE and the like: back off a little instead of spinning.
                    accept_errors.failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "HTTP connection limit reached: new connections get 503 + Retry-After (raise --http-max-connections if the clients are legitimate)"
                );
                refused_logged = Some(std::time::Instant::now());
            }
            refuse(stream, &refusing);
            continue;
        };
        let conn = graceful.watch(http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        ));
        let hard_stop = hard_stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        // Timeouts and malformed requests end here; hyper already
                        // answered what it could.
                        tracing::debug!(error = %e, "HTTP connection closed");
                    }
                }
                _ = hard_stop.cancelled() => {}
            }
        });
    }
    drop(listener);
    draining.0.cancel();
    let open = limits.max_connections.max(1) - connections.available_permits();
    tracing::info!(
        open_connections = open,
        drain_secs = limits.drain.as_secs_f64(),
        "HTTP server draining: no new connections, requests in flight finish"
    );
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_secs = limits.drain.as_secs_f64(),
            open_connections = limits.max_connections.max(1) - connections.available_permits(),
            "HTTP connections still open after the drain time; closing them"
        );
    }
    hard_stop.cancel();
}

/// `LoadShed`'s refusal (past `max_requests`) as the API's 503: `Retry-After`, a new
/// `X-Request-Id`, the error body (its `path` is empty: nothing of the request was
/// looked at). Never an error: the router itself never fails (its error type is
/// `Infallible`); the type is `BoxError` only because `LoadShed`'s readiness error
/// converts into it.
fn overload_to_503(
    r: Result<axum::response::Response, tower::BoxError>,
) -> Result<axum::response::Response, tower::BoxError> {
    Ok(r.unwrap_or_else(|_| {
        let err = ApiError::shed("the server is at its limit of requests being handled");
        let mut res =
            axum::response::Response::new(axum::body::Body::from(err.body("").to_string()));
        *res.status_mut() = err.status;
        let h = res.headers_mut();
        h.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        h.insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(err.payload.retry_after_s.unwrap_or(1)),
        );
        if let Ok(rid) = axum::http::HeaderValue::from_str(&ulid::Ulid::new().to_string()) {
            h.insert(crate::error::REQUEST_ID, rid);
        }
        res
    }))
}

/// Files a process needs besides its connections (logs, snapshots, Kafka sockets).
const FILES_BESIDES_CONNECTIONS: u64 = 256;

/// The soft limit on open files, where the OS tells (Linux: `/proc/self/limits`).
fn open_files_soft_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Accept errors about one connection (it went away before we took it): not the
/// listener's problem.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// The answer to a connection over the limit, before any byte of it is read: 503 +
/// `Retry-After` + the API's error body (its `path` is empty: the request was not
/// read), then close.
fn refusal_bytes() -> Vec<u8> {
    let err = ApiError::shed("the server is at its connection limit");
    debug_assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = err.body("").to_string();
    let rid = ulid::Ulid::new();
    let retry = err.payload.retry_after_s.unwrap_or(1);
    let mut out = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {retry}\r\nx-request-id: {rid}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn refuse(stream: TcpStream, refusing: &Arc<Semaphore>) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        // Too many refusals in progress: close at once (the client sees the
        // connection closed, at once, rather than waiting).
        drop(stream);
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut stream = stream;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(&refusal_bytes()).await?;
            stream.shutdown().await?;
            // Read what the client sent before closing: closing a socket with unread
            // bytes sends a reset, which can destroy the 503 in the client's buffer.
            let mut buf = [0u8; 4096];
            let mut read = 0;
            while read < MAX_BUF_BYTES {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                read += n;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_listener_accepts_and_keeps_its_address_reusable() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, peer) = l.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        drop((server, client, l));
        // SO_REUSEADDR: the port binds again at once although a connection of it is in
        // TIME_WAIT (a restarted node keeps its --listen address).
        bind(addr).unwrap();
    }
}
