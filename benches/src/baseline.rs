//! The shared HTTP shell of the baseline servers (`benches/baselines/`).
//!
//! Each baseline is a [`Store`] (where the stock lives and how a reservation is decided)
//! behind the same axum [`router`], which speaks the part of docs/api.md the harness uses:
//! `POST /api/v1/reservations`, `GET /api/v1/products/{skuId}/availability`,
//! `POST /api/v1/admin/sales`, `GET /api/v1/admin/sales/{saleId}`, `/health`, with the
//! contract's JSON shapes, validation, error titles and `X-Request-Id`. Checkout, cancel
//! and expiry are not implemented: the comparison is about the reservation decision, and
//! the harness's sales outlast its runs.
//!
//! [`MemoryStore`] is an in-process store (one mutex): the fake server of the harness's
//! own tests, with an optional deliberate oversell to prove the checks catch one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::contract::{
    rfc3339, title, valid_id, Availability, CreateSale, ErrorBody, ReserveRequest, API_BASE,
};

/// Largest request body (docs/api.md).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A product as a store keeps it. Money in integer cents.
#[derive(Debug, Clone, PartialEq)]
pub struct Product {
    /// Unique across sales.
    pub sku_id: String,
    /// The sale it belongs to.
    pub sale_id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Free text.
    pub category: String,
    /// Price before the sale, cents.
    pub base_price_cents: i64,
    /// Price during the sale, cents.
    pub flash_price_cents: i64,
    /// Units in the sale.
    pub total: i64,
    /// Units neither held nor sold.
    pub available: i64,
    /// Units sold.
    pub sold: i64,
    /// Units one user may hold plus buy.
    pub per_user_limit: u32,
    /// Free text.
    pub image_url: String,
    /// Sale window start.
    pub starts_at: DateTime<Utc>,
    /// Sale window end (exclusive).
    pub ends_at: DateTime<Utc>,
}

impl Product {
    /// Units held by live reservations.
    pub fn reserved(&self) -> i64 {
        self.total - self.available - self.sold
    }

    /// The window contains `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// The availability JSON.
    pub fn availability(&self, now: DateTime<Utc>) -> Availability {
        let active = self.is_active(now);
        let base = self.base_price_cents;
        let discount = if base > 0 {
            ((100 * (base - self.flash_price_cents)) as f64 / base as f64).round() as i64
        } else {
            0
        };
        Availability {
            sku_id: self.sku_id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            category: self.category.clone(),
            base_price: cents_to_money(base),
            flash_sale_price: cents_to_money(self.flash_price_cents),
            discount_percentage: discount,
            available_count: self.available,
            total_inventory: self.total,
            is_available: active && self.available > 0,
            is_active: active,
            image_url: self.image_url.clone(),
        }
    }

    /// The admin JSON of this product (contract fields plus stock figures).
    pub fn admin_json(&self) -> serde_json::Value {
        json!({
            "skuId": self.sku_id,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "basePrice": cents_to_money(self.base_price_cents),
            "flashSalePrice": cents_to_money(self.flash_price_cents),
            "totalInventory": self.total,
            "perUserLimit": self.per_user_limit,
            "imageUrl": self.image_url,
            "availableCount": self.available,
            "reservedCount": self.reserved(),
            "soldCount": self.sold,
        })
    }
}

/// A validated sale.
#[derive(Debug, Clone, PartialEq)]
pub struct Sale {
    /// `sale_…`.
    pub sale_id: String,
    /// Display name.
    pub name: String,
    /// Window start.
    pub starts_at: DateTime<Utc>,
    /// Window end.
    pub ends_at: DateTime<Utc>,
    /// Reservation TTL.
    pub ttl_secs: u32,
    /// Its products, in request order.
    pub products: Vec<Product>,
}

impl Sale {
    /// The admin JSON.
    pub fn admin_json(&self) -> serde_json::Value {
        json!({
            "saleId": self.sale_id,
            "name": self.name,
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at),
            "reservationTtlSeconds": self.ttl_secs,
            "products": self.products.iter().map(Product::admin_json).collect::<Vec<_>>(),
        })
    }
}

/// A granted reservation.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    /// `res_…`.
    pub reservation_id: String,
    /// Buyer.
    pub user_id: String,
    /// Product.
    pub sku_id: String,
    /// Units.
    pub quantity: u32,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Until.
    pub expires_at: DateTime<Utc>,
}

/// What a store decided for one reservation request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Held.
    Reserved(Granted),
    /// No such SKU.
    UnknownProduct,
    /// Outside the sale window.
    NotActive {
        /// Window start.
        starts_at: DateTime<Utc>,
        /// Window end.
        ends_at: DateTime<Utc>,
    },
    /// The user would go over the limit.
    LimitExceeded {
        /// The product's limit.
        limit: u32,
        /// Units the user already holds or bought.
        held: i64,
    },
    /// Not enough units.
    OutOfStock {
        /// Units available when decided.
        available: i64,
    },
}

/// Failures of a store (not business outcomes).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A SKU of a new sale already belongs to another sale.
    #[error("sku {0} already belongs to another sale")]
    Conflict(String),
    /// The backing database failed.
    #[error("backend: {0}")]
    Backend(String),
}

/// Where a baseline keeps its stock and how it decides a reservation.
pub trait Store: Send + Sync + 'static {
    /// Stores a new sale (ids already assigned).
    fn create_sale(&self, sale: &Sale) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Decides one reservation.
    fn reserve(
        &self,
        req: &ReserveRequest,
        reservation_id: String,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send;
    /// The product for the availability read.
    fn product(
        &self,
        sku_id: &str,
    ) -> impl Future<Output = Result<Option<Product>, StoreError>> + Send;
    /// A sale with current figures.
    fn sale(&self, sale_id: &str) -> impl Future<Output = Result<Option<Sale>, StoreError>> + Send;
}

struct AppState<S> {
    store: S,
    admin_token: String,
    request_seq: AtomicU64,
}

/// The baseline HTTP app over `store`.
pub fn router<S: Store>(store: S, admin_token: &str) -> Router {
    let state = Arc::new(AppState {
        store,
        admin_token: admin_token.to_string(),
        request_seq: AtomicU64::new(0),
    });
    Router::new()
        .route(&format!("{API_BASE}/reservations"), post(reserve::<S>))
        .route(
            &format!("{API_BASE}/products/{{sku_id}}/availability"),
            get(availability::<S>),
        )
        .route(&format!("{API_BASE}/admin/sales"), post(create_sale::<S>))
        .route(
            &format!("{API_BASE}/admin/sales/{{sale_id}}"),
            get(get_sale::<S>),
        )
        .route("/health", get(health))
        .route("/actuator/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_id::<S>,
        ))
        .with_state(state)
}

async fn request_id<S: Store>(
    State(st): State<Arc<AppState<S>>>,
    req: Request,
    next: Next,
) -> Response {
    let id = req.headers().get("x-request-id").cloned();
    let mut resp = next.run(req).await;
    let id = id.unwrap_or_else(|| {
        let n = st.request_seq.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("req_{n:016x}")).unwrap_or(HeaderValue::from_static("req"))
    });
    resp.headers_mut().insert("x-request-id", id);
    resp
}

/// The contract's error response.
pub fn error_response(
    status: StatusCode,
    error: &str,
    message: String,
    path: &str,
    details: Option<serde_json::Value>,
) -> Response {
    let body = ErrorBody {
        timestamp: rfc3339(Utc::now()),
        status: status.as_u16(),
        error: error.to_string(),
        message,
        path: path.to_string(),
        details,
    };
    (status, Json(body)).into_response()
}

fn bad_request(path: &str, field: &str, reason: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        title::BAD_REQUEST,
        format!("invalid {field}: {reason}"),
        path,
        Some(json!({"field": field, "reason": reason})),
    )
}

fn backend_error(path: &str, e: &StoreError) -> Response {
    // The store's text stays in the log; the client gets the fixed title only.
    tracing::error!(error = %e, "store failed");
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        title::SERVICE_UNAVAILABLE,
        "the store did not answer; retry".into(),
        path,
        None,
    )
}

fn rejection_response(r: BytesRejection, path: &str) -> Response {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            title::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_BODY_BYTES} bytes"),
            path,
            None,
        )
    } else {
        bad_request(path, "body", "unreadable body")
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t == token)
}

fn unauthorized(path: &str) -> Response {
    error_response(
        StatusCode::UNAUTHORIZED,
        title::UNAUTHORIZED,
        "missing or wrong bearer token".into(),
        path,
        None,
    )
}

/// Validates a reservation body.
pub fn parse_reserve(body: &[u8]) -> Result<ReserveRequest, (&'static str, String)> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ("body", format!("malformed JSON: {e}")))?;
    let s = |k: &'static str| -> Result<String, (&'static str, String)> {
        match v.get(k).and_then(|x| x.as_str()) {
            Some(x) if valid_id(x) => Ok(x.to_string()),
            Some(_) => Err((k, "1–64 chars of [A-Za-z0-9_.:@-]".into())),
            None => Err((k, "missing or not a string".into())),
        }
    };
    let user_id = s("userId")?;
    let sku_id = s("skuId")?;
    let quantity = match v.get("quantity").and_then(|q| q.as_u64()) {
        Some(q) if (1..=1_000_000).contains(&q) => q as u32,
        _ => return Err(("quantity", "an integer from 1 to 1000000".into())),
    };
    Ok(ReserveRequest {
        user_id,
        sku_id,
        quantity,
    })
}

/// Money (≤ 2 decimals, ≥ 0) to cents.
pub fn money_to_cents(v: f64) -> Option<i64> {
    let c = v * 100.0;
    (v.is_finite() && v >= 0.0 && (c - c.round()).abs() < 1e-6).then_some(c.round() as i64)
}

/// Cents to a JSON number.
pub fn cents_to_money(c: i64) -> f64 {
    c as f64 / 100.0
}

/// Validates a sale body and assigns its id.
pub fn parse_sale(body: &[u8], sale_id: String) -> Result<Sale, (&'static str, String)> {
    let req: CreateSale =
        serde_json::from_slice(body).map_err(|e| ("body", format!("malformed sale: {e}")))?;
    let time = |k: &'static str, s: &str| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| (k, "not an RFC 3339 time".to_string()))
    };
    let starts_at = time("startsAt", &req.starts_at)?;
    let ends_at = time("endsAt", &req.ends_at)?;
    if ends_at <= starts_at {
        return Err(("endsAt", "must be after startsAt".into()));
    }
    if !(1..=3600).contains(&req.reservation_ttl_seconds) {
        return Err(("reservationTtlSeconds", "1 to 3600".into()));
    }
    if req.products.is_empty() || req.products.len() > 100 {
        return Err(("products", "1 to 100 products".into()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut products = Vec::with_capacity(req.products.len());
    for p in req.products {
        if !valid_id(&p.sku_id) {
            return Err(("skuId", "1–64 chars of [A-Za-z0-9_.:@-]".into()));
        }
        if !seen.insert(p.sku_id.clone()) {
            return Err(("skuId", format!("duplicate {}", p.sku_id)));
        }
        let base = money_to_cents(p.base_price)
            .ok_or(("basePrice", "money, ≥ 0, 2 decimals".to_string()))?;
        let flash = money_to_cents(p.flash_sale_price)
            .ok_or(("flashSalePrice", "money, ≥ 0, 2 decimals".to_string()))?;
        if flash > base {
            return Err(("flashSalePrice", "must not exceed basePrice".into()));
        }
        if p.total_inventory < 0 {
            return Err(("totalInventory", "must be ≥ 0".into()));
        }
        if p.per_user_limit == 0 {
            return Err(("perUserLimit", "must be ≥ 1".into()));
        }
        products.push(Product {
            sku_id: p.sku_id,
            sale_id: sale_id.clone(),
            name: p.name,
            description: p.description,
            category: p.category,
            base_price_cents: base,
            flash_price_cents: flash,
            total: p.total_inventory,
            available: p.total_inventory,
            sold: 0,
            per_user_limit: p.per_user_limit,
            image_url: p.image_url,
            starts_at,
            ends_at,
        });
    }
    Ok(Sale {
        sale_id,
        name: req.name,
        starts_at,
        ends_at,
        ttl_secs: req.reservation_ttl_seconds,
        products,
    })
}

async fn reserve<S: Store>(
    State(st): State<Arc<AppState<S>>>,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let path = uri.path();
    let body = match body {
        Ok(b) => b,
        Err(r) => return rejection_response(r, path),
    };
    let req = match parse_reserve(&body) {
        Ok(r) => r,
        Err((field, reason)) => return bad_request(path, field, &reason),
    };
    let now = Utc::now();
    let id = format!("res_{}", ulid::Ulid::new());
    match st.store.reserve(&req, id, now).await {
        Err(e) => backend_error(path, &e),
        Ok(Decision::Reserved(g)) => {
            let secs = (g.expires_at - g.created_at).num_seconds().max(0);
            (
                StatusCode::CREATED,
                Json(json!({
                    "reservationId": g.reservation_id,
                    "userId": g.user_id,
                    "skuId": g.sku_id,
                    "quantity": g.quantity,
                    "status": "RESERVED",
                    "expiresAt": rfc3339(g.expires_at),
                    "createdAt": rfc3339(g.created_at),
                    "expiresInSeconds": secs,
                })),
            )
                .into_response()
        }
        Ok(Decision::UnknownProduct) => error_response(
            StatusCode::NOT_FOUND,
            title::PRODUCT_NOT_FOUND,
            format!("Product {} not found", req.sku_id),
            path,
            Some(json!({"skuId": req.sku_id})),
        ),
        Ok(Decision::NotActive { starts_at, ends_at }) => error_response(
            StatusCode::CONFLICT,
            title::SALE_NOT_ACTIVE,
            format!("The sale of {} is not active", req.sku_id),
            path,
            Some(
                json!({"skuId": req.sku_id, "startsAt": rfc3339(starts_at), "endsAt": rfc3339(ends_at)}),
            ),
        ),
        Ok(Decision::LimitExceeded { limit, held }) => error_response(
            StatusCode::CONFLICT,
            title::PURCHASE_LIMIT_EXCEEDED,
            format!(
                "User {} may hold at most {limit} of {}; holds {held}, requested {}",
                req.user_id, req.sku_id, req.quantity
            ),
            path,
            Some(json!({"skuId": req.sku_id, "limit": limit, "held": held})),
        ),
        Ok(Decision::OutOfStock { available }) => error_response(
            StatusCode::CONFLICT,
            title::OUT_OF_STOCK,
            format!(
                "Product {} is out of stock. Requested: {}, Available: {available}",
                req.sku_id, req.quantity
            ),
            path,
            Some(
                json!({"skuId": req.sku_id, "requestedQuantity": req.quantity, "availableQuantity": available}),
            ),
        ),
    }
}

async fn availability<S: Store>(
    State(st): State<Arc<AppState<S>>>,
    uri: Uri,
    Path(sku_id): Path<String>,
) -> Response {
    let path = uri.path();
    if !valid_id(&sku_id) {
        return bad_request(path, "skuId", "1–64 chars of [A-Za-z0-9_.:@-]");
    }
    match st.store.product(&sku_id).await {
        Err(e) => backend_error(path, &e),
        Ok(None) => error_response(
            StatusCode::NOT_FOUND,
            title::PRODUCT_NOT_FOUND,
            format!("Product {sku_id} not found"),
            path,
            Some(json!({"skuId": sku_id})),
        ),
        Ok(Some(p)) => Json(p.availability(Utc::now())).into_response(),
    }
}

async fn create_sale<S: Store>(
    State(st): State<Arc<AppState<S>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let path = uri.path();
    let body = match body {
        Ok(b) => b,
        Err(r) => return rejection_response(r, path),
    };
    if !authorized(&headers, &st.admin_token) {
        return unauthorized(path);
    }
    let sale = match parse_sale(&body, format!("sale_{}", ulid::Ulid::new())) {
        Ok(s) => s,
        Err((field, reason)) => return bad_request(path, field, &reason),
    };
    match st.store.create_sale(&sale).await {
        Ok(()) => (StatusCode::CREATED, Json(sale.admin_json())).into_response(),
        Err(StoreError::Conflict(sku)) => error_response(
            StatusCode::CONFLICT,
            title::CONFLICT,
            format!("SKU {sku} already belongs to another sale"),
            path,
            Some(json!({"skuId": sku})),
        ),
        Err(e) => backend_error(path, &e),
    }
}

async fn get_sale<S: Store>(
    State(st): State<Arc<AppState<S>>>,
    uri: Uri,
    headers: HeaderMap,
    Path(sale_id): Path<String>,
) -> Response {
    let path = uri.path();
    if !authorized(&headers, &st.admin_token) {
        return unauthorized(path);
    }
    match st.store.sale(&sale_id).await {
        Err(e) => backend_error(path, &e),
        Ok(None) => error_response(
            StatusCode::NOT_FOUND,
            title::SALE_NOT_FOUND,
            format!("Sale {sale_id} not found"),
            path,
            Some(json!({"saleId": sale_id})),
        ),
        Ok(Some(s)) => Json(s.admin_json()).into_response(),
    }
}

async fn health() -> Response {
    Json(json!({"status": "UP"})).into_response()
}

async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        title::NOT_FOUND,
        "no such route".into(),
        uri.path(),
        None,
    )
}

async fn method_not_allowed(uri: Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        title::METHOD_NOT_ALLOWED,
        "method not allowed on this route".into(),
        uri.path(),
        None,
    )
}

/// Serves `app` on `listen` until Ctrl-C or SIGTERM.
pub async fn serve(listen: std::net::SocketAddr, app: Router, name: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "{name} listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("{name} stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// In-process store: one mutex over all state. The fake server of the tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
    /// When set, stock checks are skipped: the server oversells (and ignores limits), so
    /// tests can prove the harness catches it.
    pub oversell: bool,
}

#[derive(Debug, Default)]
struct MemoryInner {
    sales: HashMap<String, (Sale, Vec<String>)>,
    products: HashMap<String, Product>,
    held: HashMap<(String, String), i64>,
}

impl MemoryStore {
    /// A correct store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that oversells on purpose.
    pub fn overselling() -> Self {
        Self {
            oversell: true,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A poisoned lock means a panic mid-update: the state is suspect, stop here.
        self.inner.lock().expect("memory store lock poisoned")
    }
}

impl Store for MemoryStore {
    async fn create_sale(&self, sale: &Sale) -> Result<(), StoreError> {
        let mut g = self.lock();
        if let Some(p) = sale
            .products
            .iter()
            .find(|p| g.products.contains_key(&p.sku_id))
        {
            return Err(StoreError::Conflict(p.sku_id.clone()));
        }
        for p in &sale.products {
            g.products.insert(p.sku_id.clone(), p.clone());
        }
        let skus = sale.products.iter().map(|p| p.sku_id.clone()).collect();
        g.sales.insert(sale.sale_id.clone(), (sale.clone(), skus));
        Ok(())
    }

    async fn reserve(
        &self,
        req: &ReserveRequest,
        reservation_id: String,
        now: DateTime<Utc>,
    ) -> Result<Decision, StoreError> {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(p) = g.products.get_mut(&req.sku_id) else {
            return Ok(Decision::UnknownProduct);
        };
        if !p.is_active(now) {
            return Ok(Decision::NotActive {
                starts_at: p.starts_at,
                ends_at: p.ends_at,
            });
        }
        let q = i64::from(req.quantity);
        let held = g
            .held
            .entry((req.user_id.clone(), req.sku_id.clone()))
            .or_default();
        if !self.oversell {
            if *held + q > i64::from(p.per_user_limit) {
                return Ok(Decision::LimitExceeded {
                    limit: p.per_user_limit,
                    held: *held,
                });
            }
            if p.available < q {
                return Ok(Decision::OutOfStock {
                    available: p.available,
                });
            }
        }
        *held += q;
        p.available -= q;
        Ok(Decision::Reserved(Granted {
            reservation_id,
            user_id: req.user_id.clone(),
            sku_id: req.sku_id.clone(),
            quantity: req.quantity,
            created_at: now,
            expires_at: now + chrono::Duration::seconds(3600),
        }))
    }

    async fn product(&self, sku_id: &str) -> Result<Option<Product>, StoreError> {
        Ok(self.lock().products.get(sku_id).cloned())
    }

    async fn sale(&self, sale_id: &str) -> Result<Option<Sale>, StoreError> {
        let g = self.lock();
        Ok(g.sales.get(sale_id).map(|(s, skus)| Sale {
            products: skus
                .iter()
                .filter_map(|k| g.products.get(k).cloned())
                .collect(),
            ..s.clone()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_bodies_are_validated() {
        assert!(parse_reserve(br#"{"userId":"u1","skuId":"S","quantity":1,"extra":true}"#).is_ok());
        assert_eq!(
            parse_reserve(br#"{"userId":"u 1","skuId":"S","quantity":1}"#)
                .unwrap_err()
                .0,
            "userId"
        );
        assert_eq!(
            parse_reserve(br#"{"userId":"u","skuId":"S","quantity":0}"#)
                .unwrap_err()
                .0,
            "quantity"
        );
        assert_eq!(
            parse_reserve(br#"{"userId":"u","skuId":"S","quantity":1.5}"#)
                .unwrap_err()
                .0,
            "quantity"
        );
        assert_eq!(parse_reserve(b"{").unwrap_err().0, "body");
    }

    #[test]
    fn money_is_cents() {
        assert_eq!(money_to_cents(999.99), Some(99_999));
        assert_eq!(money_to_cents(0.1 + 0.2), Some(30));
        assert_eq!(money_to_cents(1.001), None);
        assert_eq!(money_to_cents(-1.0), None);
    }

    #[test]
    fn sales_are_validated() {
        let ok = br#"{"name":"n","startsAt":"2025-01-15T10:00:00Z","endsAt":"2025-01-15T12:00:00Z",
            "products":[{"skuId":"A","name":"a","basePrice":10.0,"flashSalePrice":8.0,"totalInventory":5}]}"#;
        let s = parse_sale(ok, "sale_1".into()).unwrap();
        assert_eq!(s.ttl_secs, 120);
        assert_eq!(s.products[0].per_user_limit, 1);
        let dup = br#"{"name":"n","startsAt":"2025-01-15T10:00:00Z","endsAt":"2025-01-15T12:00:00Z",
            "products":[{"skuId":"A","name":"a","basePrice":10.0,"flashSalePrice":8.0,"totalInventory":5},
                        {"skuId":"A","name":"a","basePrice":10.0,"flashSalePrice":8.0,"totalInventory":5}]}"#;
        assert_eq!(parse_sale(dup, "s".into()).unwrap_err().0, "skuId");
        let pricey = br#"{"name":"n","startsAt":"2025-01-15T10:00:00Z","endsAt":"2025-01-15T12:00:00Z",
            "products":[{"skuId":"A","name":"a","basePrice":10.0,"flashSalePrice":18.0,"totalInventory":5}]}"#;
        assert_eq!(
            parse_sale(pricey, "s".into()).unwrap_err().0,
            "flashSalePrice"
        );
    }
}
