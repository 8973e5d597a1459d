//! The HTTP client side: a keep-alive connection pool and the calls the harness makes.
//!
//! Only loopback targets are accepted ([`check_loopback`]): this is a load generator, and
//! its traffic must never leave the machine.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::contract::{CheckoutRequest, CreateSale, ReserveRequest, SaleView, API_BASE};
use crate::error::BenchError;
use crate::stats::Outcome;
use crate::wire::{Wire, WriteBody};

/// Checks that `url` is `http://` on a loopback address and returns it without a
/// trailing slash.
pub fn check_loopback(url: &str) -> Result<String, BenchError> {
    let u = reqwest::Url::parse(url).map_err(|e| BenchError::Target(format!("{url}: {e}")))?;
    if u.scheme() != "http" {
        return Err(BenchError::Target(format!(
            "{url}: only http:// is supported"
        )));
    }
    let host = u.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    if !loopback {
        return Err(BenchError::Target(format!(
            "{url}: the harness only loads loopback addresses (127.0.0.0/8, ::1, localhost)"
        )));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

enum CreateError {
    Retry(BenchError),
    Fatal(BenchError),
}

/// Result of one timed call.
#[derive(Debug, Clone)]
pub struct CallResult {
    /// How it ended.
    pub outcome: Outcome,
    /// The reservation id of a successful reservation.
    pub reservation_id: Option<String>,
}

impl CallResult {
    fn outcome(outcome: Outcome) -> Self {
        Self {
            outcome,
            reservation_id: None,
        }
    }
}

/// The API client: the measured requests (reserve, availability, checkout) on the
/// harness's own keep-alive connections ([`Wire`]), set-up and admin calls on a pooled
/// `reqwest::Client`, and the base URL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    wire: Arc<Wire>,
    base: String,
    admin_token: String,
}

impl ApiClient {
    /// A client for `base` (checked to be loopback) with at most `pool_size` idle
    /// connections kept and `timeout` per request.
    pub fn new(
        base: &str,
        admin_token: &str,
        pool_size: usize,
        timeout: Duration,
    ) -> Result<Self, BenchError> {
        let base = check_loopback(base)?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(pool_size)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .http1_only()
            .no_proxy()
            .build()
            .map_err(|e| BenchError::Setup(format!("http client: {e}")))?;
        let wire = Arc::new(Wire::new(&base, timeout)?);
        Ok(Self {
            http,
            wire,
            base,
            admin_token: admin_token.to_owned(),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn error_of(e: &reqwest::Error) -> Outcome {
        Outcome::Error(Cow::Borrowed(if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else {
            "transport"
        }))
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        expected: &[u16],
    ) -> (Outcome, bytes::Bytes) {
        match req.send().await {
            Err(e) => (Self::error_of(&e), bytes::Bytes::new()),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp.headers().contains_key(reqwest::header::RETRY_AFTER);
                match resp.bytes().await {
                    Err(e) => (Self::error_of(&e), bytes::Bytes::new()),
                    Ok(body) => (
                        Outcome::classify(status, expected, &body, retry_after),
                        body,
                    ),
                }
            }
        }
    }

    /// A measured request on the harness's own connections (`path` in parts, `body` a
    /// closure writing the JSON body into the connection's buffer).
    async fn send_wire(
        &self,
        method: &str,
        path: &[&str],
        body: Option<&WriteBody<'_>>,
        expected: &[u16],
    ) -> (Outcome, bytes::Bytes) {
        match self.wire.call(method, path, body).await {
            Err(e) => (e.outcome(), bytes::Bytes::new()),
            Ok(a) => (
                Outcome::classify(a.status, expected, &a.body, a.retry_after),
                a.body,
            ),
        }
    }

    /// `GET path` once, for the start-up wait: the status, or why there was none, in
    /// words a person acts on ("connection refused", "timed out", …).
    pub async fn probe(&self, path: &str) -> Result<u16, String> {
        match self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(describe(&e)),
        }
    }

    /// `GET /health`: the server's static handler.
    pub async fn health(&self) -> Outcome {
        self.send_wire("GET", &["/health"], None, &[200]).await.0
    }

    /// `GET /ready`: 200 once the server can decide (flashsale: every partition owned and
    /// caught up). Servers without it answer 404.
    pub async fn ready(&self) -> Outcome {
        self.send(self.http.get(format!("{}/ready", self.base)), &[200])
            .await
            .0
    }

    /// `POST /api/v1/reservations`.
    pub async fn reserve(&self, req: &ReserveRequest) -> CallResult {
        self.reserve_as(&req.user_id, None, &req.sku_id, req.quantity, true)
            .await
    }

    /// `POST /api/v1/reservations` for user `user_prefix` + `user_no` (the number left
    /// out when `None`), its body written straight into the connection's buffer: the
    /// measured loop's call, which allocates nothing per request but the reservation id,
    /// and that only when `want_id` (a checkout follows).
    pub async fn reserve_as(
        &self,
        user_prefix: &str,
        user_no: Option<u32>,
        sku_id: &str,
        quantity: u32,
        want_id: bool,
    ) -> CallResult {
        let write_body = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"{\"userId\":");
            json_string(out, user_prefix, user_no);
            out.extend_from_slice(b",\"skuId\":");
            json_string(out, sku_id, None);
            out.extend_from_slice(b",\"quantity\":");
            crate::wire::push_decimal(out, u64::from(quantity));
            out.push(b'}');
        };
        let (outcome, body) = self
            .send_wire(
                "POST",
                &[API_BASE, "/reservations"],
                Some(&write_body),
                &[201],
            )
            .await;
        if outcome != Outcome::Ok {
            return CallResult::outcome(outcome);
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created<'a> {
            #[serde(borrow)]
            reservation_id: Cow<'a, str>,
        }
        match serde_json::from_slice::<Created>(&body) {
            Ok(c) => CallResult {
                outcome,
                reservation_id: want_id.then(|| c.reservation_id.into_owned()),
            },
            // A 201 without a reservation id breaks the contract: not a success.
            Err(_) => CallResult::outcome(Outcome::Error(Cow::Borrowed("bad 201 body"))),
        }
    }

    /// `GET /api/v1/products/{skuId}/availability`.
    pub async fn availability(&self, sku_id: &str) -> Outcome {
        self.send_wire(
            "GET",
            &[API_BASE, "/products/", sku_id, "/availability"],
            None,
            &[200],
        )
        .await
        .0
    }

    /// `POST /api/v1/orders/checkout` (201 for a new order, 200 for a repeat).
    pub async fn checkout(&self, req: &CheckoutRequest) -> Outcome {
        let Ok(json) = serde_json::to_vec(req) else {
            return Outcome::Error(Cow::Borrowed("request encoding"));
        };
        let write_body = |out: &mut Vec<u8>| out.extend_from_slice(&json);
        self.send_wire(
            "POST",
            &[API_BASE, "/orders/checkout"],
            Some(&write_body),
            &[200, 201],
        )
        .await
        .0
    }

    /// `POST /api/v1/admin/sales`; returns the new `saleId`. A 503 (the contract's "retry
    /// shortly", e.g. while the engine recovers) is retried for up to 15 s.
    pub async fn create_sale(&self, sale: &CreateSale) -> Result<String, BenchError> {
        let mut last = None;
        for _ in 0..30 {
            match self.create_sale_once(sale).await {
                Err(CreateError::Retry(e)) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(CreateError::Fatal(e)) => return Err(e),
                Ok(id) => return Ok(id),
            }
        }
        Err(last.unwrap_or_else(|| BenchError::Setup("create sale: no attempt".into())))
    }

    async fn create_sale_once(&self, sale: &CreateSale) -> Result<String, CreateError> {
        let fatal = |e: BenchError| CreateError::Fatal(e);
        let resp = self
            .http
            .post(format!("{}{API_BASE}/admin/sales", self.base))
            .bearer_auth(&self.admin_token)
            .json(sale)
            .send()
            .await
            .map_err(|e| fatal(BenchError::Setup(format!("create sale: {e}"))))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| fatal(BenchError::Setup(format!("create sale: {e}"))))?;
        if status.as_u16() != 201 {
            let e = BenchError::Setup(format!("create sale: HTTP {status}: {body}"));
            return Err(if status.as_u16() == 503 {
                CreateError::Retry(e)
            } else {
                CreateError::Fatal(e)
            });
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            sale_id: String,
        }
        serde_json::from_str::<Created>(&body)
            .map(|c| c.sale_id)
            .map_err(|e| fatal(BenchError::Setup(format!("create sale: {e}: {body}"))))
    }

    /// `GET /api/v1/admin/sales/{saleId}`.
    pub async fn sale(&self, sale_id: &str) -> Result<SaleView, BenchError> {
        let resp = self
            .http
            .get(format!("{}{API_BASE}/admin/sales/{sale_id}", self.base))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .map_err(|e| BenchError::Setup(format!("sale figures: {e}")))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| BenchError::Setup(format!("sale figures: {e}")))?;
        if !status.is_success() {
            return Err(BenchError::Setup(format!(
                "sale figures: HTTP {status}: {body}"
            )));
        }
        serde_json::from_str(&body).map_err(|e| BenchError::Setup(format!("sale figures: {e}")))
    }

    /// Takes a sale the run created off the server: `DELETE` while no reservation ever
    /// touched it, else `POST …/end` (a touched sale cannot be deleted; ended, it takes
    /// no new holds and its live ones run out). Says which was done.
    pub async fn retire_sale(&self, sale_id: &str) -> Result<Retired, String> {
        let url = format!("{}{API_BASE}/admin/sales/{sale_id}", self.base);
        let status = |r: Result<reqwest::Response, reqwest::Error>| match r {
            Ok(resp) => Ok(resp.status().as_u16()),
            Err(e) => Err(describe(&e)),
        };
        let deleted = status(
            self.http
                .delete(&url)
                .bearer_auth(&self.admin_token)
                .timeout(Duration::from_secs(10))
                .send()
                .await,
        )?;
        if deleted == 200 || deleted == 204 {
            return Ok(Retired::Deleted);
        }
        let ended = status(
            self.http
                .post(format!("{url}/end"))
                .bearer_auth(&self.admin_token)
                .timeout(Duration::from_secs(10))
                .send()
                .await,
        )?;
        match ended {
            200 => Ok(Retired::Ended),
            // A target without the admin controls (the baseline server).
            404 | 405 if deleted == 404 || deleted == 405 => Ok(Retired::Unsupported),
            s => Err(format!(
                "DELETE answered {deleted}, POST …/end answered {s}"
            )),
        }
    }
}

/// What [`ApiClient::retire_sale`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retired {
    /// Removed (no reservation had touched it).
    Deleted,
    /// Ended now.
    Ended,
    /// The target has neither `DELETE` nor `…/end` for sales: left as it is.
    Unsupported,
}

/// Appends `s` (followed by `n` when given) as a JSON string, escaped as serde_json
/// escapes it, without allocating.
fn json_string(out: &mut Vec<u8>, s: &str, n: Option<u32>) {
    match n {
        None => {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, s);
        }
        Some(n) => {
            let _ = serde_json::to_writer(&mut *out, s);
            // Digits need no escaping: put them inside the closing quote.
            out.pop();
            crate::wire::push_decimal(out, u64::from(n));
            out.push(b'"');
        }
    }
}

/// A transport error in a few words: the innermost I/O error's kind when there is one
/// ("connection refused"), else what reqwest says it was.
pub fn describe(e: &reqwest::Error) -> String {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                std::io::ErrorKind::ConnectionReset => "connection reset".into(),
                std::io::ErrorKind::TimedOut => "timed out".into(),
                std::io::ErrorKind::AddrNotAvailable => "address not available".into(),
                _ => io.to_string(),
            };
        }
        src = s.source();
    }
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_bodies_are_the_contracts_json() {
        let mut out = Vec::new();
        json_string(&mut out, "u1-", Some(42));
        assert_eq!(out, b"\"u1-42\"");
        out.clear();
        json_string(&mut out, "a\"b", None);
        assert_eq!(out, br#""a\"b""#);
        // The in-place body parses as the contract's request.
        let mut body = b"{\"userId\":".to_vec();
        json_string(&mut body, "u-", Some(7));
        body.extend_from_slice(b",\"skuId\":");
        json_string(&mut body, "SKU-1", None);
        body.extend_from_slice(b",\"quantity\":1}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"userId": "u-7", "skuId": "SKU-1", "quantity": 1})
        );
    }

    #[test]
    fn only_loopback_targets() {
        assert_eq!(
            check_loopback("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(check_loopback("http://127.3.4.5:1").is_ok());
        assert!(check_loopback("http://localhost:1").is_ok());
        assert!(check_loopback("http://[::1]:1").is_ok());
        assert!(check_loopback("http://10.0.0.1:80").is_err());
        assert!(check_loopback("http://example.com").is_err());
        assert!(check_loopback("https://127.0.0.1").is_err());
        assert!(check_loopback("not a url").is_err());
    }
}
