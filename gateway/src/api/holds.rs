//! The buyers' endpoints: hold (`POST /api/v1/reservations`, with its idempotency key
//! and the sold-out fast path), read, cancel and check out a reservation, and read
//! orders.

use super::{body_bytes, created, path_param, unexpected, AppInner, AppState};
use crate::admission::Arrived;
use crate::error::ApiError;
use crate::json::*;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use flashsale_proto::*;
use serde_json::{json, Value};
use std::time::Instant;

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
pub(super) const RESERVATIONS_PATH: &str = "/api/v1/reservations";

/// When the server got the request's head ([`crate::server::serve`] stamps it; a
/// router driven without the server has none).
type ArrivedAt = Option<Extension<Arrived>>;

pub(super) async fn create_reservation(
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

/// Parses a reservation id from a path or body; a malformed id names no reservation.
fn reservation_id(raw: &str) -> Result<ReservationId, ApiError> {
    raw.parse::<ReservationId>()
        .map_err(|_| ApiError::reservation_not_found(raw))
}

pub(super) async fn get_reservation(
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

pub(super) async fn cancel_reservation(
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

pub(super) async fn checkout(
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

pub(super) async fn get_order(
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

pub(super) async fn orders_of_user(
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
