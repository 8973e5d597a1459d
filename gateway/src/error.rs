//! The API's error body, rendered in one place.
//!
//! Handlers return [`ApiError`]; it becomes a response carrying an [`ErrorPayload`]
//! extension, and the [`render_errors`] middleware (which knows the request path and
//! the time) writes the JSON body. Any 4xx/5xx produced elsewhere (axum rejections,
//! the 405 of a method router, the body limit) gets the same body from its status.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use flashsale_proto::{Rejection, SaleId};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone)]
pub struct ErrorPayload {
    pub title: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub retry_after_s: Option<u64>,
    /// Refused by admission control (counted as `shed`, not `unavailable`).
    pub shed: bool,
}

/// Every error the API answers with. One variant per row of docs/api.md's table.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub payload: ErrorPayload,
}

impl ApiError {
    fn new(
        status: StatusCode,
        title: &'static str,
        message: impl Into<String>,
        details: Option<Value>,
    ) -> Self {
        ApiError {
            status,
            payload: ErrorPayload {
                title,
                message: message.into(),
                details,
                retry_after_s: None,
                shed: false,
            },
        }
    }
    pub fn bad_request(field: &str, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            format!("Invalid {field}: {reason}"),
            Some(json!({"field": field, "reason": reason})),
        )
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Missing or wrong admin bearer token",
            None,
        )
    }
    pub fn too_many_requests(retry_after_s: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Too Many Requests",
            format!("Too many reservation attempts for this user; retry in {retry_after_s} s"),
            None,
        );
        e.payload.retry_after_s = Some(retry_after_s);
        e
    }
    /// 503 of admission control: the node is past a limit, answered at once, nothing
    /// done (docs/api.md, 503 row). Retry-After 1 s: a flash crowd's peak passes in seconds.
    pub fn shed(why: &str) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            format!("Busy: {why}; nothing was done, retry in 1 s"),
            None,
        );
        e.payload.retry_after_s = Some(1);
        e.payload.shed = true;
        e
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            message,
            None,
        );
        e.payload.retry_after_s = Some(1);
        e
    }
    /// A partition that failed recovery: down until an operator acts.
    pub fn partition_down(partition: u32, error: String) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
            format!("Partition {partition} is down and needs an operator; other partitions serve"),
            Some(json!({"partition": partition, "error": error})),
        );
        e.payload.retry_after_s = Some(30);
        e
    }
    /// 503 with details (e.g. `/ready`'s list of partitions).
    pub fn unavailable_with(message: impl Into<String>, details: Value) -> Self {
        let mut e = Self::unavailable(message);
        e.payload.details = Some(details);
        e
    }
    pub fn product_not_found(sku: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Product Not Found",
            format!("Product {sku} not found"),
            Some(json!({"skuId": sku})),
        )
    }
    pub fn reservation_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Reservation Not Found",
            format!("Reservation {id} not found"),
            Some(json!({"reservationId": id})),
        )
    }
    pub fn order_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Order Not Found",
            format!("Order {id} not found"),
            Some(json!({"orderId": id})),
        )
    }
    pub fn sale_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "Sale Not Found",
            format!("Sale {id} not found"),
            Some(json!({"saleId": id})),
        )
    }
    /// 409 "Conflict": `sku` already belongs to another sale, named when known (docs/api.md:
    /// `skuId`, `saleId` of the owner).
    pub fn conflict(sku: &str, owner: Option<SaleId>) -> Self {
        match owner {
            Some(owner) => Self::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("Product {sku} already belongs to sale {owner}; delete or end that sale first, or use another skuId"),
                Some(json!({"skuId": sku, "saleId": owner.to_string()})),
            ),
            None => Self::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("Product {sku} already belongs to another sale"),
                Some(json!({"skuId": sku})),
            ),
        }
    }
    /// 409 "Conflict": a sale with reservations cannot be deleted (docs/api.md: `saleId`,
    /// `reservations`).
    pub fn sale_has_reservations(sale_id: SaleId, reservations: u64) -> Self {
        let noun = if reservations == 1 {
            "reservation"
        } else {
            "reservations"
        };
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!("Sale {sale_id} has {reservations} {noun} and cannot be deleted; end it instead (POST /api/v1/admin/sales/{sale_id}/end)"),
            Some(json!({"saleId": sale_id.to_string(), "reservations": reservations})),
        )
    }
    pub fn from_status(status: StatusCode) -> Self {
        let (title, message) = match status.as_u16() {
            400 => ("Bad Request", "The request could not be understood"),
            401 => ("Unauthorized", "Missing or wrong admin bearer token"),
            404 => ("Not Found", "No such route"),
            405 => (
                "Method Not Allowed",
                "This route does not accept that method",
            ),
            408 => (
                "Request Timeout",
                "The request body stopped arriving or took too long; send the request again",
            ),
            413 => ("Payload Too Large", "Request body is over 64 KiB"),
            414 => (
                "URI Too Long",
                "The request target is over 8 KiB; shorten it",
            ),
            431 => (
                "Request Header Fields Too Large",
                "The request head is over 16 KiB; send fewer or shorter headers",
            ),
            415 => ("Bad Request", "Unsupported content type"),
            422 => ("Bad Request", "The request body could not be processed"),
            429 => ("Too Many Requests", "Too many requests"),
            503 => ("Service Unavailable", "Service unavailable; retry shortly"),
            _ if status.is_client_error() => ("Bad Request", "The request could not be understood"),
            _ => ("Service Unavailable", "Service unavailable; retry shortly"),
        };
        // Never answer 500 (docs/api.md): anything unexpected is reported as 503, retryable.
        let status = match status.as_u16() {
            415 | 422 => StatusCode::BAD_REQUEST,
            s if s >= 500 => StatusCode::SERVICE_UNAVAILABLE,
            _ => status,
        };
        let mut e = Self::new(status, title, message, None);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            e.payload.retry_after_s = Some(1);
        }
        e
    }

    /// The engine's business outcomes, mapped to docs/api.md's table.
    pub fn from_rejection(r: &Rejection) -> Self {
        use crate::time::rfc3339;
        match r {
            Rejection::ProductNotFound { sku } => Self::product_not_found(sku.as_str()),
            Rejection::ReservationNotFound { reservation } => Self::reservation_not_found(&reservation.to_string()),
            Rejection::SaleNotActive { sku, starts_at, ends_at } => Self::new(
                StatusCode::CONFLICT,
                "Sale Not Active",
                format!("The sale of {sku} is not active: it runs from {} to {}", rfc3339(*starts_at), rfc3339(*ends_at)),
                Some(json!({"skuId": sku.as_str(), "startsAt": rfc3339(*starts_at), "endsAt": rfc3339(*ends_at)})),
            ),
            Rejection::PurchaseLimitExceeded { sku, limit, held } => Self::new(
                StatusCode::CONFLICT,
                "Purchase Limit Exceeded",
                format!("Purchase limit for {sku} is {limit} per user; this user already holds or bought {held}"),
                Some(json!({"skuId": sku.as_str(), "limit": limit, "held": held})),
            ),
            Rejection::OutOfStock { sku, requested, available } => Self::new(
                StatusCode::CONFLICT,
                "Out of Stock",
                format!("Product {sku} is out of stock. Requested: {requested}, Available: {available}"),
                Some(json!({"skuId": sku.as_str(), "requestedQuantity": requested, "availableQuantity": available})),
            ),
            Rejection::ReservationExpired { reservation, expired_at } => Self::new(
                StatusCode::CONFLICT,
                "Reservation Expired",
                format!("Reservation {reservation} expired at {}", rfc3339(*expired_at)),
                Some(json!({"reservationId": reservation.to_string(), "expiredAt": rfc3339(*expired_at)})),
            ),
            Rejection::ReservationNotActive { reservation, status } => Self::new(
                StatusCode::CONFLICT,
                "Reservation Not Active",
                format!("Reservation {reservation} is {}", status.as_str()),
                Some(json!({"reservationId": reservation.to_string(), "status": status.as_str()})),
            ),
            Rejection::IdempotencyKeyReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Idempotency Key Reused",
                "This Idempotency-Key was used with a different request body",
                None,
            ),
            Rejection::Conflict { sku } => Self::conflict(sku.as_str(), None),
            Rejection::SkuTaken { sku, sale_id } => Self::conflict(sku.as_str(), Some(*sale_id)),
            Rejection::SaleHasReservations { sale_id, reservations } => Self::sale_has_reservations(*sale_id, *reservations),
            Rejection::SaleInUse { sale_id } => Self::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!("Sale {sale_id} already has held or sold units"),
                None,
            ),
            Rejection::Invalid { reason } => Self::bad_request("body", reason.clone()),
            Rejection::ExtensionLimitReached { reservation, max_expires_at } => Self::new(
                StatusCode::CONFLICT,
                "Extension Limit Reached",
                format!("Reservation {reservation} cannot be held past {}: the sale's maxHoldSeconds is reached; check out before then", rfc3339(*max_expires_at)),
                Some(json!({"reservationId": reservation.to_string(), "maxExpiresAt": rfc3339(*max_expires_at)})),
            ),
            Rejection::InventoryConflict { sku, sold, held } => Self::new(
                StatusCode::CONFLICT,
                "Inventory Conflict",
                format!("Product {sku} cannot go below sold + held ({sold} sold, {held} held); remove fewer units"),
                Some(json!({"skuId": sku.as_str(), "sold": sold, "held": held})),
            ),
            Rejection::ProductPaused { sku, starts_at, ends_at } => Self::new(
                StatusCode::CONFLICT,
                "Sale Not Active",
                format!("The sale of {sku} is paused by the operator; try again later"),
                Some(json!({"skuId": sku.as_str(), "startsAt": rfc3339(*starts_at), "endsAt": rfc3339(*ends_at), "paused": true})),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        res.extensions_mut().insert(self.payload);
        res
    }
}

/// Header every response carries.
pub const REQUEST_ID: &str = "x-request-id";

#[derive(Debug, Clone)]
pub struct RequestIdValue(pub HeaderValue);

/// Longest client `X-Request-Id` (docs/api.md): 1 to this many visible ASCII characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// A client `X-Request-Id` the API echoes: 1-128 visible ASCII characters (`!`..`~`).
pub fn valid_request_id(v: &HeaderValue) -> bool {
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID_CHARS
        && v.as_bytes().iter().all(|b| (0x21..0x7f).contains(b))
}

/// Stamps `X-Request-Id` (the client's, echoed, else a new ULID) and renders the error
/// body of every 4xx/5xx response. Checks of the request head come first, before any
/// handler: 414 / 431 for a head past our limits, 413 at once for a declared
/// `Content-Length` over the body limit (nothing of the body is read), 400 for a
/// client `X-Request-Id` that is not 1-128 visible ASCII characters (answered with a
/// generated id).
pub async fn render_errors(mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let given = req.headers().get(REQUEST_ID);
    let bad_rid = given.is_some_and(|v| !valid_request_id(v));
    let rid = given.filter(|_| !bad_rid).cloned().unwrap_or_else(|| {
        HeaderValue::from_str(&ulid::Ulid::new().to_string()).expect("ulid is ascii")
    });
    req.extensions_mut().insert(RequestIdValue(rid.clone()));
    let refused = head_too_large(&req)
        .or_else(|| declared_body_too_large(&req))
        .or_else(|| {
            bad_rid.then(|| {
                ApiError::bad_request(
                    "X-Request-Id",
                    "must be 1-128 visible ASCII characters (! to ~)",
                )
            })
        });
    // A body refused before it is read is left unread: the connection ends with this
    // answer, and the client is told so.
    let close = refused
        .as_ref()
        .is_some_and(|e| e.status == StatusCode::PAYLOAD_TOO_LARGE);
    let mut res = match refused {
        Some(e) => e.into_response(),
        None => next.run(req).await,
    };
    let status = res.status();
    if (status.is_client_error() || status.is_server_error())
        && res.extensions().get::<Rendered>().is_none()
    {
        let payload = res.extensions_mut().remove::<ErrorPayload>();
        let err = match payload {
            Some(p) => ApiError { status, payload: p },
            None => ApiError::from_status(status),
        };
        res = error_response(&err, &path);
    }
    res.headers_mut().insert(REQUEST_ID, rid);
    if close {
        res.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    res
}

/// Largest request target (path and query) answered with the API's 414 body; hyper's
/// own, bodiless limit is higher (see [`crate::server`]).
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest request head (request line and headers, as sent) answered with the API's
/// 431 body; hyper's own, bodiless limit is higher (see [`crate::server`]).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// 414 / 431 with the API's body for a request head past our own limits, which sit
/// below hyper's: hyper refuses a head past *its* limits before any of our code runs,
/// with a bare status line (README, "What the HTTP library answers by itself").
fn head_too_large(req: &Request) -> Option<ApiError> {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::from_status(StatusCode::URI_TOO_LONG));
    }
    // "METHOD SP target SP HTTP/1.1 CRLF", then "name: value CRLF" per header.
    let line = req.method().as_str().len() + target + 12;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    (line + headers > MAX_HEAD_BYTES)
        .then(|| ApiError::from_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
}

/// 413 for a request whose `Content-Length` is over the body limit: answered at once,
/// without waiting for a body that is refused whatever it holds.
fn declared_body_too_large(req: &Request) -> Option<ApiError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()?;
    (declared > crate::api::MAX_BODY_BYTES as u64)
        .then(|| ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE))
}

impl ApiError {
    /// 408: the request body stopped arriving (the server's body-read timeout).
    pub fn request_timeout() -> Self {
        Self::from_status(StatusCode::REQUEST_TIMEOUT)
    }

    /// The API's JSON error body of this error for a request to `path`.
    pub fn body(&self, path: &str) -> Value {
        let mut body = Map::new();
        body.insert("timestamp".into(), json!(crate::time::rfc3339_now()));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("error".into(), json!(self.payload.title));
        body.insert("message".into(), json!(self.payload.message));
        body.insert("path".into(), json!(path));
        if let Some(d) = &self.payload.details {
            body.insert("details".into(), d.clone());
        }
        Value::Object(body)
    }
}

/// Marks a response whose error body is already the API's (see
/// [`out_of_stock_response`]): [`render_errors`] leaves it as it is.
#[derive(Clone, Copy)]
struct Rendered;

/// 409 "Out of Stock" for `rejection` (an [`Rejection::OutOfStock`]), answered on
/// `path`. The body is the one [`render_errors`] would write, rendered once per
/// worker thread for each SKU, requested and available quantity and second, then
/// shared: the attempts of a sold-out crowd repeat the same refusal thousands of
/// times a second, and rendering it (message, details, JSON) was ~0.8 µs of each
/// (issue 12, the sold-out crowd at about the cost of a read). One entry per
/// thread: the crowd is on the hot SKU; another refusal renders and takes the slot.
pub fn out_of_stock_response(rejection: &Rejection, path: &'static str) -> Response {
    type Slot = Option<(Rejection, &'static str, i64, bytes::Bytes)>;
    thread_local! {
        static LAST: std::cell::RefCell<Slot> = const { std::cell::RefCell::new(None) };
    }
    let now = chrono::Utc::now().timestamp();
    let body = LAST.with_borrow_mut(|slot| match slot {
        Some((r, p, s, body)) if *s == now && *p == path && r == rejection => body.clone(),
        _ => {
            let (secs, timestamp) = crate::time::rfc3339_now_with_secs();
            let err = ApiError::from_rejection(rejection);
            let body = bytes::Bytes::from(error_body_bytes_at(&err, path, timestamp));
            *slot = Some((rejection.clone(), path, secs, body.clone()));
            body
        }
    });
    let mut res = (
        StatusCode::CONFLICT,
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    res.extensions_mut().insert(Rendered);
    res
}

/// [`ApiError::body`] serialized straight to bytes (no `Value` map built per error): the
/// same fields in the same order. Errors are most of a crowd's answers (sold out, shed).
fn error_body_bytes(err: &ApiError, path: &str) -> Vec<u8> {
    error_body_bytes_at(err, path, crate::time::rfc3339_now())
}

/// [`error_body_bytes`] with the `timestamp` given.
fn error_body_bytes_at(err: &ApiError, path: &str, timestamp: String) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct View<'a> {
        timestamp: String,
        status: u16,
        error: &'a str,
        message: &'a str,
        path: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        details: Option<&'a Value>,
    }
    let view = View {
        timestamp,
        status: err.status.as_u16(),
        error: err.payload.title,
        message: &err.payload.message,
        path,
        details: err.payload.details.as_ref(),
    };
    let mut out = Vec::with_capacity(256);
    // Strings, numbers and a Value: serializing into a Vec cannot fail.
    serde_json::to_writer(&mut out, &view).expect("an error body serializes");
    out
}

fn error_response(err: &ApiError, path: &str) -> Response {
    let mut res = (
        err.status,
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        error_body_bytes(err, path),
    )
        .into_response();
    if let Some(s) = err.payload.retry_after_s {
        res.headers_mut()
            .insert("retry-after", HeaderValue::from(s));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_proto::{Rejection, SkuId};

    /// The bytes an error is answered with are [`ApiError::body`] (timestamp aside: the
    /// clock moves between the two), key order included.
    #[test]
    fn error_bytes_are_the_error_body() {
        let sold_out = ApiError::from_rejection(&Rejection::OutOfStock {
            sku: SkuId::parse("SKU-1").unwrap(),
            requested: 1,
            available: 0,
        });
        let errors = [
            sold_out,
            ApiError::shed("the node is at its in-flight limit"),
            ApiError::bad_request("userId", "is required"),
        ];
        for e in errors {
            let bytes = error_body_bytes(&e, "/api/v1/reservations");
            let mut got: Value = serde_json::from_slice(&bytes).unwrap();
            let mut want = e.body("/api/v1/reservations");
            let got_keys: Vec<String> = got.as_object().unwrap().keys().cloned().collect();
            let want_keys: Vec<String> = want.as_object().unwrap().keys().cloned().collect();
            assert_eq!(got_keys, want_keys);
            assert!(crate::time::parse_time(got["timestamp"].as_str().unwrap()).is_ok());
            got["timestamp"] = Value::Null;
            want["timestamp"] = Value::Null;
            assert_eq!(got, want);
        }
    }

    /// The shared "Out of Stock" answer is the body `render_errors` writes for the same
    /// rejection (timestamp aside), marked so it is not rendered again, and a change in
    /// SKU or stock never reuses the previous answer.
    #[tokio::test]
    async fn the_shared_out_of_stock_answer_is_the_rendered_one() {
        async fn body_of(res: Response) -> Value {
            let bytes = axum::body::to_bytes(res.into_body(), 1 << 16)
                .await
                .unwrap();
            let mut v: Value = serde_json::from_slice(&bytes).unwrap();
            assert!(crate::time::parse_time(v["timestamp"].as_str().unwrap()).is_ok());
            v["timestamp"] = Value::Null;
            v
        }
        let path = "/api/v1/reservations";
        let cases = [
            ("SKU-1", 1, 0),
            ("SKU-1", 1, 0),
            ("SKU-1", 2, 1),
            ("SKU-2", 2, 1),
        ];
        for (sku, requested, available) in cases {
            let r = Rejection::OutOfStock {
                sku: SkuId::parse(sku).unwrap(),
                requested,
                available,
            };
            let res = out_of_stock_response(&r, path);
            assert_eq!(res.status(), StatusCode::CONFLICT);
            assert!(res.extensions().get::<Rendered>().is_some());
            assert_eq!(res.headers()["content-type"], "application/json");
            let mut want = ApiError::from_rejection(&r).body(path);
            want["timestamp"] = Value::Null;
            assert_eq!(body_of(res).await, want, "{sku} {requested} {available}");
        }
    }
}
