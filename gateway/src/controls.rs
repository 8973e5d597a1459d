//! Hold extension and the operators' mid-sale controls (docs/api.md: `…/extend`, "Mid-sale
//! controls"). Each is one command on its SKU's partition log, so it is ordered with
//! the buyers' commands and replayed exactly; the engine decides, this module
//! validates input and turns replies into HTTP answers.

use crate::api::{body_bytes, path_param, sale_id_param, sku_param, unexpected, AppState};
use crate::error::ApiError;
use crate::json::{money, reservation_json, sale_json, Body};
use crate::readmodel::ProductEntry;
use crate::time::rfc3339;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use flashsale_core::core::{MAX_INVENTORY, MAX_TTL_S};
use flashsale_proto::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// `POST /api/v1/reservations/{id}/extend`, body optional `{"seconds":1..3600}`.
pub async fn extend_reservation(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let bytes = body_bytes(body)?;
    let raw = path_param(id, "reservationId")?;
    let seconds = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let b = Body::parse(&bytes)?;
        match b.0.get("seconds").filter(|v| !v.is_null()) {
            None => None,
            Some(_) => Some(b.int("seconds", 1, u64::from(MAX_TTL_S), None)? as u32),
        }
    };
    let id: ReservationId = raw
        .parse()
        .map_err(|_| ApiError::reservation_not_found(&raw))?;
    if u32::from(id.partition) >= app.dispatcher.partitions() {
        return Err(ApiError::reservation_not_found(&raw));
    }
    let rec = app
        .dispatcher
        .call(
            u32::from(id.partition),
            Command::Extend {
                reservation: id,
                seconds,
            },
            None,
        )
        .await?;
    match rec.reply {
        Reply::Extended { reservation } => {
            app.read.upsert_reservation(&reservation, rec.offset);
            Ok(Json(reservation_json(&reservation, crate::time::now_ms())))
        }
        Reply::Rejected(r) => Err(ApiError::from_rejection(&r)),
        other => Err(unexpected(other)),
    }
}

/// A sale body's optional `maxHoldSeconds`: from its `reservationTtlSeconds` to 3600.
pub fn parse_max_hold(b: &Body, ttl_s: u32) -> Result<Option<u32>, ApiError> {
    if b.0.get("maxHoldSeconds").is_none_or(Value::is_null) {
        return Ok(None);
    }
    let v = b.int(
        "maxHoldSeconds",
        u64::from(ttl_s),
        u64::from(MAX_TTL_S),
        None,
    )?;
    Ok(Some(v as u32))
}

/// A product as the admin endpoints show it (the fields of `GET …/admin/sales/{id}`'s
/// products, plus the controls' state).
pub fn admin_product_json(p: &ProductEntry) -> Value {
    json!({
        "skuId": p.spec.sku.as_str(),
        "saleId": p.sale_id.to_string(),
        "name": p.spec.name,
        "flashSalePrice": money(p.spec.flash_sale_price),
        "totalInventory": p.spec.total_inventory,
        "perUserLimit": p.spec.per_user_limit,
        "availableCount": p.available(),
        "reservedCount": p.held,
        "soldCount": p.sold,
        "paused": p.paused,
        "endsAt": rfc3339(p.ends_at),
    })
}

/// Sends one product control and answers with the product's figures after it. The
/// engine's "invalid" refusal of a control names `field` (the body's field it comes
/// from: an inventory change that would take the total past its maximum).
async fn control(
    app: &AppState,
    raw_sku: &str,
    sku: &SkuId,
    command: Command,
    field: &str,
) -> Result<Json<Value>, ApiError> {
    if app.read.product(sku).is_none() {
        return Err(ApiError::product_not_found(raw_sku));
    }
    let partition = app.dispatcher.partition_of(sku);
    let rec = app.dispatcher.call(partition, command, None).await?;
    match rec.reply {
        Reply::ProductControlled(f) => {
            let p = app
                .read
                .apply_figures(&f)
                .ok_or_else(|| ApiError::product_not_found(raw_sku))?;
            Ok(Json(admin_product_json(&p)))
        }
        Reply::Rejected(Rejection::Invalid { reason }) => Err(ApiError::bad_request(field, reason)),
        Reply::Rejected(r) => Err(ApiError::from_rejection(&r)),
        other => Err(unexpected(other)),
    }
}

/// `POST /api/v1/admin/products/{skuId}/inventory` `{"delta":n}`.
pub async fn adjust_inventory(
    State(app): State<AppState>,
    headers: HeaderMap,
    sku: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let bytes = body_bytes(body)?;
    app.authorize(&headers)?;
    let (raw, sku) = sku_param(sku)?;
    let b = Body::parse(&bytes)?;
    let limit = MAX_INVENTORY as i64;
    let delta = match b.0.get("delta") {
        None | Some(Value::Null) => return Err(ApiError::bad_request("delta", "is required")),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(d) if d != 0 && (-limit..=limit).contains(&d) => d,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "delta",
                    format!("must be a non-zero integer from -{limit} to {limit}"),
                ))
            }
            None => return Err(ApiError::bad_request("delta", "must be an integer")),
        },
        Some(_) => return Err(ApiError::bad_request("delta", "must be an integer")),
    };
    let command = Command::AdjustInventory {
        sku: sku.clone(),
        delta,
    };
    control(&app, &raw, &sku, command, "delta").await
}

/// `POST /api/v1/admin/products/{skuId}/pause`.
pub async fn pause_product(
    State(app): State<AppState>,
    headers: HeaderMap,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers)?;
    let (raw, sku) = sku_param(sku)?;
    let command = Command::PauseProduct { sku: sku.clone() };
    control(&app, &raw, &sku, command, "skuId").await
}

/// `POST /api/v1/admin/products/{skuId}/resume`.
pub async fn resume_product(
    State(app): State<AppState>,
    headers: HeaderMap,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers)?;
    let (raw, sku) = sku_param(sku)?;
    let command = Command::ResumeProduct { sku: sku.clone() };
    control(&app, &raw, &sku, command, "skuId").await
}

/// `POST /api/v1/admin/sales/{saleId}/end`: `endsAt` = now on every partition of the
/// sale; answers with the sale.
pub async fn end_sale(
    State(app): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    app.authorize(&headers)?;
    let (raw, sale_id) = sale_id_param(id)?;
    let (sale, _) = app
        .read
        .sale(&sale_id)
        .ok_or_else(|| ApiError::sale_not_found(&raw))?;
    let partitions: BTreeSet<u32> = sale
        .meta
        .all_skus
        .iter()
        .map(|s| app.dispatcher.partition_of(s))
        .collect();
    let calls = partitions
        .iter()
        .map(|&p| app.dispatcher.call(p, Command::EndSale { sale_id }, None));
    for r in futures::future::join_all(calls).await {
        match r?.reply {
            Reply::SaleEnded { ends_at, .. } => app.read.end_sale(sale_id, ends_at),
            Reply::Rejected(r) => return Err(ApiError::from_rejection(&r)),
            other => return Err(unexpected(other)),
        }
    }
    let (sale, products) = app
        .read
        .sale(&sale_id)
        .ok_or_else(|| ApiError::sale_not_found(&raw))?;
    Ok(Json(sale_json(
        &sale,
        &products,
        app.dispatcher.partitions(),
    )))
}
