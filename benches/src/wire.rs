//! The measured requests' transport: keep-alive HTTP/1.1 connections of its own, one
//! request at a time on each, answers read with `httparse`.
//!
//! Why not `reqwest` for these: on a 2-core box the harness shares the CPU with the
//! server it measures, and reqwest's pool, its per-connection task and the channels
//! between them cost ~56 µs of CPU per request — as much as the server's hold. The
//! overload scenario offers twice the node's capacity, so that cost took the CPU the node
//! needed to answer the excess with 503s. Here a request is one `write` of a prepared
//! buffer and one or two `read`s on a connection the request owns while it runs (no
//! task, no channel); setup and admin calls still go through reqwest.
//!
//! Per request nothing is allocated here: the request is written into the connection's
//! own buffers (the body by a closure, e.g. [`crate::client::ApiClient::reserve`]'s JSON
//! written in place), the answer read into its read buffer, and a connection returned
//! to the pool less than [`PROBE_AFTER`] ago is reused without the extra non-blocking
//! `read` that checks whether the server closed it (`scripts/harness-cost.sh` measures
//! the harness's CPU per request).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::error::BenchError;
use crate::stats::Outcome;

/// Largest answer head (status line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer body accepted (the API's bodies are well under 1 KiB).
const MAX_BODY: usize = 1024 * 1024;
/// Headers parsed per answer, at most.
const MAX_HEADERS: usize = 32;
/// Initial read buffer of a connection.
const READ_BUF: usize = 4096;
/// An idle connection back in the pool for less than this is reused without checking
/// whether the server closed it: servers close idle keep-alive connections after
/// seconds (flashsale: 30 s), so a check per request would cost a syscall for nothing.
pub const PROBE_AFTER: Duration = Duration::from_millis(500);

/// One kept-alive connection and its read buffer.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The request being written (reused between requests).
    out: Vec<u8>,
    /// Its body, written first so that its length is known (reused too).
    body: Vec<u8>,
    /// When it went back to the pool.
    idle_since: Instant,
}

impl Conn {
    /// True when the peer closed the connection (or sent bytes nobody asked for, which
    /// makes it unusable too): one non-blocking read, which finds nothing to read on a
    /// live idle connection.
    fn peer_closed(&self) -> bool {
        let mut b = [0u8; 1];
        match self.stream.try_read(&mut b) {
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => true,
        }
    }
}

/// A pool of idle connections to one loopback address. A request takes a connection (or
/// opens one), and puts it back only after a complete answer that did not say
/// `Connection: close`; anything else drops it. The harness's in-flight cap bounds how
/// many exist.
#[derive(Debug)]
pub struct Wire {
    addr: SocketAddr,
    host: String,
    idle: Mutex<Vec<Conn>>,
    timeout: Duration,
}

/// Writes a request's JSON body into the connection's buffer.
pub type WriteBody<'a> = dyn Fn(&mut Vec<u8>) + Sync + 'a;

/// A parsed answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: bool,
    pub body: Bytes,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    Connect,
    Timeout,
    Transport(&'static str),
}

impl WireError {
    pub fn outcome(&self) -> Outcome {
        Outcome::Error(Cow::Borrowed(match self {
            WireError::Connect => "connect",
            WireError::Timeout => "timeout",
            WireError::Transport(what) => what,
        }))
    }
}

impl Wire {
    /// A pool for `base` (`http://host:port`, already checked to be loopback).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, BenchError> {
        let hostport = base
            .strip_prefix("http://")
            .unwrap_or(base)
            .trim_end_matches('/');
        let addr = resolve(hostport)
            .ok_or_else(|| BenchError::Target(format!("{base}: cannot resolve the address")))?;
        Ok(Self {
            addr,
            host: hostport.to_owned(),
            idle: Mutex::new(Vec::new()),
            timeout,
        })
    }

    /// Sends `method` on the path made of `path` (its parts in a row, so callers need
    /// not allocate one) and reads the answer, within the per-request timeout. With
    /// `body`, the closure writes the JSON body into the connection's buffer.
    pub async fn call(
        &self,
        method: &str,
        path: &[&str],
        body: Option<&WriteBody<'_>>,
    ) -> Result<Answer, WireError> {
        let conn = self.take_idle();
        let mut conn = match conn {
            Some(c) => c,
            None => self.connect().await?,
        };
        let answer =
            tokio::time::timeout(self.timeout, self.exchange(&mut conn, method, path, body))
                .await
                .map_err(|_| WireError::Timeout)??;
        if answer.1 {
            conn.idle_since = Instant::now();
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
        Ok(answer.0)
    }

    /// An idle connection the server has not closed meanwhile. A server closes idle
    /// keep-alive connections after its own timeout (flashsale: `--http-header-timeout-secs`,
    /// 30 s), and a request sent on one would read nothing and count as "connection
    /// closed" against the server, which did nothing wrong; an HTTP client opens a fresh
    /// one instead, and so does this. A connection the server closes *under* a request
    /// still counts.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the pool, which the harness's in-flight cap bounds. The pool is a
        // stack: the connection just returned is the one taken, and under load it was
        // returned microseconds ago.
        while let Some(c) = idle.pop() {
            if c.idle_since.elapsed() < PROBE_AFTER || !c.peer_closed() {
                return Some(c);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, WireError> {
        let stream = tokio::time::timeout(
            self.timeout.min(Duration::from_secs(5)),
            TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| WireError::Timeout)?
        .map_err(|_| WireError::Connect)?;
        stream.set_nodelay(true).map_err(|_| WireError::Connect)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_BUF),
            out: Vec::with_capacity(512),
            body: Vec::with_capacity(256),
            idle_since: Instant::now(),
        })
    }

    /// One request and its answer; the flag says whether the connection can be reused.
    async fn exchange(
        &self,
        conn: &mut Conn,
        method: &str,
        path: &[&str],
        body: Option<&WriteBody<'_>>,
    ) -> Result<(Answer, bool), WireError> {
        if let Some(write) = body {
            conn.body.clear();
            write(&mut conn.body);
        }
        let body = body.is_some().then_some(&conn.body[..]);
        write_request(&mut conn.out, method, path, &self.host, body);
        conn.stream
            .write_all(&conn.out)
            .await
            .map_err(|_| WireError::Transport("transport"))?;
        conn.buf.clear();
        loop {
            if let Some(done) = parse_answer(&mut conn.buf, method == "HEAD")? {
                return Ok(done);
            }
            if conn.buf.capacity() - conn.buf.len() < 1024 {
                conn.buf.reserve(READ_BUF);
            }
            let n = conn
                .stream
                .read_buf(&mut conn.buf)
                .await
                .map_err(|_| WireError::Transport("transport"))?;
            if n == 0 {
                return Err(WireError::Transport("connection closed"));
            }
        }
    }
}

fn resolve(hostport: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs as _;
    let hostport = if let Some(port) = hostport.strip_prefix("localhost:") {
        Cow::Owned(format!("127.0.0.1:{port}"))
    } else {
        Cow::Borrowed(hostport)
    };
    hostport.to_socket_addrs().ok()?.next()
}

/// Writes an HTTP/1.1 request into `out` (cleared first; no allocation once it has
/// grown to the largest request).
fn write_request(out: &mut Vec<u8>, method: &str, path: &[&str], host: &str, body: Option<&[u8]>) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    for part in path {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(b) = body {
        out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
        push_decimal(out, b.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// Appends `n` in decimal (no formatter, no allocation).
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Parses a complete answer out of `buf`: `None` while more bytes are needed. Only
/// `Content-Length` framing is read (the API's answers all have one); a chunked answer
/// is a transport error, not a silent misread.
fn parse_answer(buf: &mut BytesMut, head_only: bool) -> Result<Option<(Answer, bool)>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(WireError::Transport("answer head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(WireError::Transport("malformed answer")),
    };
    let status = resp.code.unwrap_or(0);
    let mut content_length = 0usize;
    let mut retry_after = false;
    let mut keep_alive = resp.version == Some(1);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            content_length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(WireError::Transport("malformed answer"))?;
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(WireError::Transport("chunked answer"));
        }
    }
    if head_only || status == 204 || status == 304 {
        content_length = 0;
    }
    if content_length > MAX_BODY {
        return Err(WireError::Transport("answer body too large"));
    }
    if buf.len() < head_len + content_length {
        return Ok(None);
    }
    buf.advance(head_len);
    let body = buf.split_to(content_length).freeze();
    // Bytes past the answer mean the server sent something unasked: do not reuse.
    let reuse = keep_alive && buf.is_empty();
    Ok(Some((
        Answer {
            status,
            retry_after,
            body,
        },
        reuse,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<(Answer, bool)>, WireError> {
        let mut buf = BytesMut::from(bytes);
        parse_answer(&mut buf, false)
    }

    /// A server that answers one request per connection with keep-alive and then closes
    /// the connection (as an idle timeout would): the next request goes on a fresh
    /// connection instead of failing with "connection closed".
    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_not_reused() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel::<()>(4);
        let server = tokio::spawn(async move {
            let mut accepted = 0u32;
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                accepted += 1;
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await
                    .unwrap();
                drop(s);
                closed_tx.send(()).await.unwrap();
            }
            accepted
        });
        let wire = Wire::new(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
        let a = wire.call("GET", &["/health"], None).await.unwrap();
        assert_eq!(a.status, 200);
        closed_rx.recv().await.unwrap();
        // The first connection went back to the pool and is closed now (and idle for
        // longer than the probe's grace, as after a pause between runs).
        tokio::time::sleep(PROBE_AFTER + Duration::from_millis(50)).await;
        let b = wire.call("GET", &["/health"], None).await.unwrap();
        assert_eq!(b.status, 200);
        assert_eq!(server.await.unwrap(), 2, "a second connection was opened");
    }

    #[test]
    fn a_request_is_written_with_its_length() {
        let mut out = Vec::new();
        write_request(&mut out, "POST", &["/a"], "127.0.0.1:1", Some(b"{\"x\":1}"));
        assert_eq!(
            out,
            b"POST /a HTTP/1.1\r\nhost: 127.0.0.1:1\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n{\"x\":1}"
        );
        write_request(&mut out, "GET", &["/b/", "c", "/d"], "h", None);
        assert_eq!(out, b"GET /b/c/d HTTP/1.1\r\nhost: h\r\n\r\n");
    }

    #[test]
    fn decimals_are_written_without_a_formatter() {
        for n in [0u64, 7, 10, 99, 100, 12_345, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn answers_are_framed_by_content_length() {
        let full =
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}";
        for cut in 0..full.len() {
            assert!(parse(&full[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let (a, reuse) = parse(full).unwrap().unwrap();
        assert_eq!(
            (a.status, a.retry_after, &a.body[..], reuse),
            (503, true, &b"{}"[..], true)
        );

        let (a, reuse) =
            parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!((a.status, a.retry_after, reuse), (200, false, false));
        // Extra bytes after the answer: the connection is not reused.
        let (_, reuse) = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\nX")
            .unwrap()
            .unwrap();
        assert!(!reuse);
    }

    #[test]
    fn broken_answers_are_errors() {
        assert!(parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
        assert!(parse(&vec![b'a'; MAX_HEAD + 1]).is_err());
    }
}
