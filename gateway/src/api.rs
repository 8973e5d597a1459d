//! The HTTP API of docs/api.md as an axum `Router` (tests drive it without a socket).
//!
//! Each handler checks in docs/api.md's precedence order: 413 (body limit) → 401 → 400 →
//! 429 → then the engine decides 422 / 404 / 409s in its own order.
//!
//! This file holds the limits and the route table, the application state and the
//! router, and the request helpers the handlers share; the handlers are split by
//! concern: `holds` (reservations and orders), `catalog` (products and sales) and
//! `probes` (health, readiness, metrics).

use crate::dispatch::Dispatcher;
use crate::error::{render_errors, ApiError};
use crate::orders::OrderSource;
use crate::readmodel::ReadModel;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use flashsale_proto::*;
use flashsale_runtime::metrics::Metrics;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use std::num::NonZeroU32;
use std::sync::Arc;

mod catalog;
mod holds;
mod probes;

pub use catalog::parse_sale;
use catalog::{availability, create_sale, delete_sale, get_sale, list_products, list_sales};
use holds::{
    cancel_reservation, checkout, create_reservation, get_order, get_reservation, orders_of_user,
    RESERVATIONS_PATH,
};
use probes::{count_server_errors, health, metrics, ready};

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

pub(crate) fn unexpected(reply: Reply) -> ApiError {
    tracing::error!(?reply, "engine answered with an unexpected reply kind");
    ApiError::unavailable("Unexpected engine reply; retry shortly")
}
