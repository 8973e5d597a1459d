//! The HTTP API of docs/api.md as an axum `Router` (tests drive it without a socket).
//!
//! Each handler checks in docs/api.md's precedence order: 413 (body limit) → 401 → 400 →
//! 429 → then the engine decides 422 / 404 / 409s in its own order.

use crate::admission::Arrived;
use crate::dispatch::Dispatcher;
use crate::error::{render_errors, ApiError};
use crate::json::*;
use crate::orders::OrderSource;
use crate::readmodel::ReadModel;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use flashsale_proto::*;
use flashsale_runtime::metrics::Metrics;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{json, Value};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

/// Largest request body (docs/api.md).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every route of the API, as (method, path template). The OpenAPI test compares
/// this list with `schemas/openapi.yaml`.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/v1/reservations"),
    ("get", "/api/v1/reservations/{reservationId}"),
    ("delete", "/api/v1/reservations/{reservationId}"),
    ("post", "/api/v1/orders/checkout"),
    ("get", "/api/v1/orders/{orderId}"),
    ("get", "/api/v1/orders/user/{userId}"),
    ("get", "/api/v1/products"),
    ("get", "/api/v1/products/{skuId}/availability"),
    ("post", "/api/v1/admin/sales"),
    ("get", "/api/v1/admin/sales"),
    ("get", "/api/v1/admin/sales/{saleId}"),
    ("delete", "/api/v1/admin/sales/{saleId}"),
    ("post", "/api/v1/reservations/{reservationId}/extend"),
    ("post", "/api/v1/admin/products/{skuId}/inventory"),
    ("post", "/api/v1/admin/products/{skuId}/pause"),
    ("post", "/api/v1/admin/products/{skuId}/resume"),
    ("post", "/api/v1/admin/sales/{saleId}/end"),
    ("get", "/api/v1/admin/stream"),
    ("get", "/console"),
    ("get", "/health"),
    ("get", "/actuator/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
];

/// Per-user limit on reservation attempts.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    /// Attempts per second per `userId`; 0 turns the limit off.
    pub per_second: u32,
    pub burst: u32,
}

pub struct ApiConfig {
    pub admin_token: String,
    pub rate_limit: RateLimit,
}

pub struct AppInner {
    pub dispatcher: Dispatcher,
    pub read: Arc<ReadModel>,
    pub orders: Arc<dyn OrderSource>,
    pub metrics: Arc<Metrics>,
    /// The console's open streams (`GET /api/v1/admin/stream`).
    pub streams: crate::stream::Streams,
    admin_token: String,
    limiter: Option<DefaultKeyedRateLimiter<UserId>>,
}

pub type AppState = Arc<AppInner>;

impl AppInner {
    pub fn new(
        dispatcher: Dispatcher,
        read: Arc<ReadModel>,
        orders: Arc<dyn OrderSource>,
        metrics: Arc<Metrics>,
        cfg: ApiConfig,
    ) -> AppState {
        let limiter = NonZeroU32::new(cfg.rate_limit.per_second).map(|rate| {
            let burst = NonZeroU32::new(cfg.rate_limit.burst.max(1)).expect("max(1) is non-zero");
            RateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst))
        });
        Arc::new(AppInner {
            dispatcher,
            read,
            orders,
            metrics,
            streams: crate::stream::Streams::default(),
            admin_token: cfg.admin_token,
            limiter,
        })
    }

    /// Forgets idle users' rate-limit state (bounded memory); call periodically.
    pub fn housekeeping(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    fn rate_limit(&self, user: &UserId) -> Result<(), ApiError> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        l.check_key(user).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            ApiError::too_many_requests(wait.as_secs_f64().ceil().max(1.0) as u64)
        })
    }

    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), self.admin_token.as_bytes()) => Ok(()),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(RESERVATIONS_PATH, post(create_reservation))
        .route(
            "/api/v1/reservations/{reservation_id}",
            get(get_reservation).delete(cancel_reservation),
        )
        .route("/api/v1/orders/checkout", post(checkout))
        .route("/api/v1/orders/user/{user_id}", get(orders_of_user))
        .route("/api/v1/orders/{order_id}", get(get_order))
        .route("/api/v1/products", get(list_products))
        .route("/api/v1/products/{sku_id}/availability", get(availability))
        .route("/api/v1/admin/sales", post(create_sale).get(list_sales))
        .route(
            "/api/v1/admin/sales/{sale_id}",
            get(get_sale).delete(delete_sale),
        )
        .route(
            "/api/v1/reservations/{reservation_id}/extend",
            post(crate::controls::extend_reservation),
        )
        .route(
            "/api/v1/admin/products/{sku_id}/inventory",
            post(crate::controls::adjust_inventory),
        )
        .route(
            "/api/v1/admin/products/{sku_id}/pause",
            post(crate::controls::pause_product),
        )
        .route(
            "/api/v1/admin/products/{sku_id}/resume",
            post(crate::controls::resume_product),
        )
        .route(
            "/api/v1/admin/sales/{sale_id}/end",
            post(crate::controls::end_sale),
        )
        .route("/api/v1/admin/stream", get(crate::stream::admin_stream))
        .route("/console", get(crate::console::page))
        .route("/health", get(health))
        .route("/actuator/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn(
            flashsale_runtime::telemetry::trace_http,
        ))
        .fallback(|| async { ApiError::from_status(StatusCode::NOT_FOUND) })
        .method_not_allowed_fallback(|| async {
            ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_server_errors,
        ))
        .layer(axum::middleware::from_fn(render_errors))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::from_status(StatusCode::SERVICE_UNAVAILABLE).into_response()
        }))
        .with_state(state)
}

/// The body, or 413/400 in docs/api.md's order; 408 when it stopped arriving (the
/// server's body-read timeout, [`crate::server::HttpLimits::body_read_timeout`]).
pub(crate) fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::from_status(StatusCode::PAYLOAD_TOO_LARGE)
        } else if body_timed_out(&e) {
            ApiError::request_timeout()
        } else {
            ApiError::bad_request("body", e.body_text())
        }
    })
}

/// Did reading the body fail because the body-read timeout fired?
fn body_timed_out(e: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<crate::body_timeout::BodyTimedOut>() {
            return true;
        }
        cause = c.source();
    }
    false
}

pub(crate) fn path_param(
    p: Result<Path<String>, PathRejection>,
    name: &str,
) -> Result<String, ApiError> {
    p.map(|Path(s)| s)
        .map_err(|e| ApiError::bad_request(name, e.body_text()))
}

/// A `{skuId}` path parameter: the raw text and the parsed id, or 400 naming the field
/// when it is not a valid `skuId` (1-64 of `[A-Za-z0-9_.:@-]`, as in a body).
pub(crate) fn sku_param(
    p: Result<Path<String>, PathRejection>,
) -> Result<(String, SkuId), ApiError> {
    let raw = path_param(p, "skuId")?;
    let sku = SkuId::parse(&raw).map_err(|e| ApiError::bad_request("skuId", e.to_string()))?;
    Ok((raw, sku))
}

/// A `{saleId}` path parameter: the raw text and the parsed id, or 404 "Sale Not Found"
/// naming it.
pub(crate) fn sale_id_param(
    p: Result<Path<String>, PathRejection>,
) -> Result<(String, SaleId), ApiError> {
    let raw = path_param(p, "saleId")?;
    let id = raw.parse().map_err(|_| ApiError::sale_not_found(&raw))?;
    Ok((raw, id))
}

fn created(v: Value) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

fn reservation_result(result: &ApiError) -> &'static str {
    if result.payload.shed {
        return "shed";
    }
    match result.payload.title {
        "Out of Stock" => "out_of_stock",
        "Purchase Limit Exceeded" => "limit_exceeded",
        "Sale Not Active" => "sale_not_active",
        "Product Not Found" => "not_found",
        "Too Many Requests" => "rate_limited",
        "Idempotency Key Reused" => "idempotency_key_reused",
        "Service Unavailable" => "unavailable",
        "Payload Too Large" | "Bad Request" => "invalid",
        _ => "other",
    }
}

/// The `Idempotency-Key` header alone, checked: the reservation handler does not copy
/// the whole header map (a sold-out crowd's every attempt would pay for it). A bad key
/// is answered only after the body is read and parsed, keeping docs/api.md's error order.
pub(crate) struct IdempotencyKey(Result<Option<String>, ApiError>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdempotencyKey {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(IdempotencyKey(idempotency_key(&parts.headers)))
    }
}

/// Why a hold was not made: an API error, or "Out of Stock", whose answer is
/// rendered once per SKU, stock and second ([`crate::error::out_of_stock_response`]):
/// most of a flash crowd gets it.
enum NotHeld {
    OutOfStock(Rejection),
    Api(ApiError),
}

impl From<ApiError> for NotHeld {
    fn from(e: ApiError) -> Self {
        NotHeld::Api(e)
    }
}

/// The path of [`create_reservation`]'s route, and so the `path` of its error bodies
/// (axum matches it exactly).
const RESERVATIONS_PATH: &str = "/api/v1/reservations";

/// When the server got the request's head ([`crate::server::serve`] stamps it; a
/// router driven without the server has none).
type ArrivedAt = Option<Extension<Arrived>>;

async fn create_reservation(
    State(app): State<AppState>,
    key: IdempotencyKey,
    arrived: ArrivedAt,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let result = reserve(&app, key, arrived.map(|Extension(a)| a), body).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(NotHeld::OutOfStock(_)) => "out_of_stock",
        Err(NotHeld::Api(e)) => reservation_result(e),
    };
    app.metrics.reservation(label, started.elapsed());
    match result {
        Ok(v) => created(v),
        Err(NotHeld::OutOfStock(r)) => crate::error::out_of_stock_response(&r, RESERVATIONS_PATH),
        Err(NotHeld::Api(e)) => e.into_response(),
    }
}

async fn reserve(
    app: &AppInner,
    IdempotencyKey(key): IdempotencyKey,
    arrived: Option<Arrived>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, NotHeld> {
    let bytes = body_bytes(body)?;
    let (user, sku, quantity) = parse_hold(&bytes)?;
    let key = key?;
    app.rate_limit(&user)?;
    if key.is_none() {
        if let Some(sold_out) = app.read.refuse_sold_out(&user, &sku, quantity, now_ms()) {
            return Err(NotHeld::OutOfStock(sold_out));
        }
    }
    // Admission per partition happens here, at enqueue time (docs/overload.md): the
    // SKU, and so the partition, is known only once the body is parsed.
    let partition = app.dispatcher.partition_of(&sku);
    let rec = app
        .dispatcher
        .call_arrived(
            partition,
            Command::Reserve {
                user,
                sku,
                quantity,
            },
            key,
            arrived,
        )
        .await?;
    match rec.reply {
        Reply::Reserved { reservation, .. } => {
            app.read.upsert_reservation(&reservation, rec.offset);
            Ok(reservation_json(&reservation, now_ms()))
        }
        Reply::Rejected(r @ Rejection::OutOfStock { .. }) => Err(NotHeld::OutOfStock(r)),
        Reply::Rejected(r) => Err(ApiError::from_rejection(&r).into()),
        other => Err(unexpected(other).into()),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let ok =
        !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| (0x21..0x7f).contains(b));
    if !ok {
        return Err(ApiError::bad_request(
            "Idempotency-Key",
            "must be 1-128 visible ASCII characters",
        ));
    }
    Ok(Some(v.to_str().expect("checked ascii").to_string()))
}

pub(crate) fn unexpected(reply: Reply) -> ApiError {
    tracing::error!(?reply, "engine answered with an unexpected reply kind");
    ApiError::unavailable("Unexpected engine reply; retry shortly")
}

/// Parses a reservation id from a path or body; a malformed id names no reservation.
fn reservation_id(raw: &str) -> Result<ReservationId, ApiError> {
    raw.parse::<ReservationId>()
        .map_err(|_| ApiError::reservation_not_found(raw))
}

async fn get_reservation(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = path_param(id, "reservationId")?;
    let id = reservation_id(&raw)?;
    let found = match app.read.reservation(&id) {
        Some(v) => Some(v),
        None => {
            // Held through another gateway a moment ago? (Kafka mode: read-your-writes.)
            app.orders.catch_up(u32::from(id.partition)).await?;
            app.read.reservation(&id)
        }
    };
    let Some(v) = found else {
        if u32::from(id.partition) < app.dispatcher.partitions() {
            app.dispatcher.check_readable(u32::from(id.partition))?;
        }
        return Err(ApiError::reservation_not_found(&raw));
    };
    Ok(Json(reservation_json(&v, now_ms())))
}

async fn cancel_reservation(
    State(app): State<AppState>,
    arrived: ArrivedAt,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = path_param(id, "reservationId")?;
    let id = reservation_id(&raw)?;
    if u32::from(id.partition) >= app.dispatcher.partitions() {
        return Err(ApiError::reservation_not_found(&raw));
    }
    let rec = app
        .dispatcher
        .call_arrived(
            u32::from(id.partition),
            Command::Cancel { reservation: id },
            None,
            arrived.map(|Extension(a)| a),
        )
        .await?;
    match rec.reply {
        Reply::Cancelled { reservation } => {
            app.read.upsert_reservation(&reservation, rec.offset);
            Ok(Json(reservation_json(&reservation, now_ms())))
        }
        Reply::Rejected(r) => Err(ApiError::from_rejection(&r)),
        other => Err(unexpected(other)),
    }
}

async fn checkout(
    State(app): State<AppState>,
    arrived: ArrivedAt,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = do_checkout(&app, arrived.map(|Extension(a)| a), body).await;
    app.metrics.order(match &result {
        Ok((StatusCode::CREATED, _)) => "created",
        Ok(_) => "repeat",
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        Err(_) => "rejected",
    });
    match result {
        Ok((status, v)) => (status, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn do_checkout(
    app: &AppInner,
    arrived: Option<Arrived>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Value), ApiError> {
    let bytes = body_bytes(body)?;
    let b = Body::parse(&bytes)?;
    let raw_id = b.string("reservationId", 128)?;
    let payment_transaction_id = b.string("paymentTransactionId", 128)?;
    let method = b.string("paymentMethod", 32)?;
    let payment_method = PaymentMethod::parse(&method).ok_or_else(|| {
        ApiError::bad_request(
            "paymentMethod",
            "must be one of CREDIT_CARD, DEBIT_CARD, UPI, WALLET, NET_BANKING",
        )
    })?;
    let shipping_address = b.string("shippingAddress", 500)?;
    let id = reservation_id(&raw_id)?;
    if u32::from(id.partition) >= app.dispatcher.partitions() {
        return Err(ApiError::reservation_not_found(&raw_id));
    }
    let cmd = Command::Checkout(CheckoutRequest {
        reservation: id,
        payment_transaction_id,
        payment_method,
        shipping_address,
    });
    let rec = app
        .dispatcher
        .call_arrived(u32::from(id.partition), cmd, None, arrived)
        .await?;
    match rec.reply {
        Reply::CheckedOut { order, repeat } => {
            app.read.insert_order(&order);
            let status = if repeat {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            Ok((status, order_json(&order)))
        }
        Reply::Rejected(r) => Err(ApiError::from_rejection(&r)),
        other => Err(unexpected(other)),
    }
}

async fn get_order(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = path_param(id, "orderId")?;
    let id: OrderId = raw.parse().map_err(|_| ApiError::order_not_found(&raw))?;
    let Some(o) = app.orders.order(&id).await? else {
        if app.orders.served_from_read_model()
            && u32::from(id.partition) < app.dispatcher.partitions()
        {
            app.dispatcher.check_readable(u32::from(id.partition))?;
        }
        return Err(ApiError::order_not_found(&raw));
    };
    Ok(Json(order_json(&o)))
}

async fn orders_of_user(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let raw = path_param(id, "userId")?;
    let user = UserId::parse(&raw).map_err(|e| ApiError::bad_request("userId", e.to_string()))?;
    if app.orders.served_from_read_model() {
        // As for the product list: a partial list would hide orders that exist.
        let missing = app.dispatcher.unreadable_partitions();
        if !missing.is_empty() {
            return Err(ApiError::unavailable_with(
                format!("Orders of partitions {missing:?} are not loaded (recovering or down); retry shortly"),
                json!({"partitions": missing}),
            ));
        }
    }
    let orders: Vec<Value> = app
        .orders
        .orders_of(&user)
        .await?
        .iter()
        .map(order_json)
        .collect();
    Ok(Json(Value::Array(orders)))
}

async fn list_products(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    // A partial list would look like products that do not exist: 503 until every
    // partition's products are loaded.
    let missing = app.dispatcher.unreadable_partitions();
    if !missing.is_empty() {
        return Err(ApiError::unavailable_with(
            format!("Products of partitions {missing:?} are not loaded (recovering or down); retry shortly"),
            json!({"partitions": missing}),
        ));
    }
    let now = now_ms();
    Ok(Json(Value::Array(
        app.read
            .products()
            .iter()
            .map(|p| product_json(p, now))
            .collect(),
    )))
}

async fn availability(
    State(app): State<AppState>,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let (raw, sku) = sku_param(sku)?;
    let now = now_ms();
    let Some(body) = app
        .read
        .with_product(&sku, |p| crate::json::product_json_bytes(p, now))
    else {
        app.dispatcher
            .check_readable(app.dispatcher.partition_of(&sku))?;
        return Err(ApiError::product_not_found(&raw));
    };
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

async fn create_sale(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body)?;
    app.authorize(&headers)?;
    let b = Body::parse(&bytes)?;
    let (meta, products) = parse_sale(&b)?;
    let max_hold_s = crate::controls::parse_max_hold(&b, meta.reservation_ttl_s)?;
    let sale =
        crate::sales::create_sale_with(&app.dispatcher, &app.read, meta, products, max_hold_s)
            .await?;
    Ok(created(sale))
}

/// Validates a sale body (docs/api.md "Admin"), in body order, with field paths like
/// `products[2].flashSalePrice`.
pub fn parse_sale(b: &Body) -> Result<(SaleMeta, Vec<ProductSpec>), ApiError> {
    let name = b.string("name", 200)?;
    let starts_at = b.time("startsAt")?;
    let ends_at = b.time("endsAt")?;
    if ends_at <= starts_at {
        return Err(ApiError::bad_request("endsAt", "must be after startsAt"));
    }
    let ttl = b.int("reservationTtlSeconds", 1, 3600, Some(120))? as u32;
    let items = match b.0.get("products") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad_request("products", "must be an array")),
        None => return Err(ApiError::bad_request("products", "is required")),
    };
    if items.is_empty() || items.len() > 100 {
        return Err(ApiError::bad_request(
            "products",
            "a sale has 1 to 100 products",
        ));
    }
    let mut products: Vec<ProductSpec> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |f: &str| format!("products[{i}].{f}");
        let Value::Object(m) = item else {
            return Err(ApiError::bad_request(
                &format!("products[{i}]"),
                "must be an object",
            ));
        };
        let pb = Body(m.clone());
        let rename = |e: ApiError, f: &str| -> ApiError {
            let reason = e
                .payload
                .details
                .as_ref()
                .and_then(|d| d.get("reason"))
                .and_then(|r| r.as_str())
                .unwrap_or("is invalid")
                .to_string();
            ApiError::bad_request(&field(f), reason)
        };
        let sku = pb.sku_id("skuId").map_err(|e| rename(e, "skuId"))?;
        if products.iter().any(|p| p.sku == sku) {
            return Err(ApiError::bad_request(
                &field("skuId"),
                format!("duplicate skuId {sku} in this sale"),
            ));
        }
        let spec = ProductSpec {
            name: pb.string("name", 200).map_err(|e| rename(e, "name"))?,
            description: pb
                .text("description", 2000)
                .map_err(|e| rename(e, "description"))?,
            category: pb
                .text("category", 200)
                .map_err(|e| rename(e, "category"))?,
            base_price: pb.money("basePrice").map_err(|e| rename(e, "basePrice"))?,
            flash_sale_price: pb
                .money("flashSalePrice")
                .map_err(|e| rename(e, "flashSalePrice"))?,
            total_inventory: match m.get("totalInventory") {
                Some(Value::Number(n)) if n.as_i64().is_some_and(|x| x < 0) => {
                    return Err(ApiError::bad_request(
                        &field("totalInventory"),
                        "must not be negative",
                    ))
                }
                _ => pb
                    .int("totalInventory", 0, 1_000_000_000, None)
                    .map_err(|e| rename(e, "totalInventory"))?,
            },
            per_user_limit: pb
                .int("perUserLimit", 1, u64::from(MAX_QUANTITY), Some(1))
                .map_err(|e| rename(e, "perUserLimit"))? as u32,
            image_url: pb
                .text("imageUrl", 2000)
                .map_err(|e| rename(e, "imageUrl"))?,
            sku,
        };
        if spec.flash_sale_price > spec.base_price {
            return Err(ApiError::bad_request(
                &field("flashSalePrice"),
                "must not be above basePrice",
            ));
        }
        products.push(spec);
    }
    let meta = SaleMeta {
        sale_id: SaleId(ulid::Ulid::new().0),
        name,
        starts_at,
        ends_at,
        reservation_ttl_s: ttl,
        all_skus: products.iter().map(|p| p.sku.clone()).collect(),
    };
    Ok((meta, products))
}

async fn get_sale(
    State(app): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers)?;
    let (raw, id) = sale_id_param(id)?;
    let (sale, products) = app
        .read
        .sale(&id)
        .ok_or_else(|| ApiError::sale_not_found(&raw))?;
    Ok(Json(sale_json(
        &sale,
        &products,
        app.dispatcher.partitions(),
    )))
}

async fn list_sales(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers)?;
    // A partial list would hide sales: 503 until every partition's sales are loaded.
    let missing = app.dispatcher.unreadable_partitions();
    if !missing.is_empty() {
        return Err(ApiError::unavailable_with(
            format!("Sales of partitions {missing:?} are not loaded (recovering or down); retry shortly"),
            json!({"partitions": missing}),
        ));
    }
    Ok(Json(crate::sales::list_sales(&app.dispatcher, &app.read)))
}

async fn delete_sale(
    State(app): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers)?;
    let (_, id) = sale_id_param(id)?;
    Ok(Json(
        crate::sales::delete_sale(&app.dispatcher, &app.read, id).await?,
    ))
}

/// Counts every 5xx answer of the API's handlers, for `/metrics` and the console's
/// health strip. `/ready`'s 503 is a probe's answer ("not ready yet"), not an error
/// served to a client: not counted.
async fn count_server_errors(
    State(app): State<AppState>,
    uri: axum::http::Uri,
    res: Response,
) -> Response {
    if res.status().is_server_error() && uri.path() != "/ready" {
        app.metrics.http_server_error();
    }
    res
}

async fn health() -> Json<Value> {
    Json(json!({"status": "UP"}))
}

/// `GET /ready`: can this node serve reads (every partition's data loaded)? For a
/// load balancer's read pool; 200 through a Kafka outage or a full disk, when reads
/// are served and writes are refused. `GET /ready?writes`: can it take writes too?
/// The body says both (`reads`, `writes`: "UP" or "DOWN") and why not.
async fn ready(
    State(app): State<AppState>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    use crate::dispatch::PartitionStatus as S;
    let for_writes = q.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "writes" || kv.starts_with("writes="))
    });
    let (mut failed, mut blocked, mut recovering) = (Vec::new(), Vec::new(), Vec::new());
    let mut reasons: Vec<String> = Vec::new();
    for p in 0..app.dispatcher.partitions() {
        match app.dispatcher.partition_status(p) {
            S::Live => {}
            S::Recovering => recovering.push(p),
            S::Failed(e) => {
                if !reasons.contains(&e) {
                    reasons.push(e.clone());
                }
                failed.push(json!({"partition": p, "error": e}));
            }
            S::WriteBlocked(e) => blocked.push(json!({"partition": p, "error": e})),
        }
    }
    // `--ready-with-failed-partitions` (embedded): the bus reports ready while some
    // partitions are live, so a node with a refused partition stays in the balancer
    // for the products it can serve.
    let reads = recovering.is_empty() && (failed.is_empty() || app.dispatcher.is_ready());
    let writes = reads && blocked.is_empty() && app.dispatcher.is_ready();
    let up = |b: bool| if b { "UP" } else { "DOWN" };
    let mut body = json!({"status": "UP", "reads": up(reads), "writes": up(writes)});
    if !failed.is_empty() {
        body["failedPartitions"] = json!(failed);
    }
    if !blocked.is_empty() {
        body["writeBlockedPartitions"] = json!(blocked);
    }
    if !recovering.is_empty() {
        body["recoveringPartitions"] = json!(recovering);
    }
    if (!for_writes && reads) || writes {
        Ok(Json(body))
    } else {
        let message = if reasons.len() == 1 && failed.len() as u32 == app.dispatcher.partitions() {
            // One cause for the whole node (a topic recreated, in Kafka mode).
            reasons[0].clone()
        } else if !failed.is_empty() {
            "Some partitions failed recovery and are down (see details.failedPartitions); docs/operations.md, \"Storage damage and recovery\", says how to recover".to_string()
        } else if !recovering.is_empty() || !app.dispatcher.is_ready() {
            "Not every partition is owned and caught up yet".to_string()
        } else {
            "Some partitions cannot write their command log now (disk full, or the Kafka cluster unreachable); reads are served and writing is retried by itself".to_string()
        };
        body["status"] = json!("DOWN");
        Err(ApiError::unavailable_with(message, body))
    }
}

async fn metrics(State(app): State<AppState>) -> Response {
    app.metrics.response()
}
