//! Products and sales: the product list and one product's availability (public), and
//! the admin endpoints that create, read, list and delete sales (with the validation of
//! a sale body, [`parse_sale`]).

use super::{body_bytes, created, sale_id_param, sku_param, AppState};
use crate::error::ApiError;
use crate::json::*;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flashsale_proto::*;
use serde_json::{json, Value};

pub(super) async fn list_products(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
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

pub(super) async fn availability(
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

pub(super) async fn create_sale(
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

pub(super) async fn get_sale(
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

pub(super) async fn list_sales(
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

pub(super) async fn delete_sale(
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
