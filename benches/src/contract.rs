//! The slice of the HTTP contract (`docs/api.md`) that the harness speaks and the baselines serve.
//!
//! These are plain serde mirrors of the JSON bodies, kept separate from the gateway's own
//! types on purpose: the harness must judge the server by the contract, not by sharing its
//! code. Unknown fields are ignored when reading (the contract allows servers to add some).

use serde::{Deserialize, Serialize};

/// Base path of the versioned API.
pub const API_BASE: &str = "/api/v1";

/// Error titles (`error` field) that the harness and the baselines use by name.
pub mod title {
    /// 400.
    pub const BAD_REQUEST: &str = "Bad Request";
    /// 401.
    pub const UNAUTHORIZED: &str = "Unauthorized";
    /// 404 for an unknown SKU.
    pub const PRODUCT_NOT_FOUND: &str = "Product Not Found";
    /// 404 for an unknown sale.
    pub const SALE_NOT_FOUND: &str = "Sale Not Found";
    /// 404 for an unknown route.
    pub const NOT_FOUND: &str = "Not Found";
    /// 405.
    pub const METHOD_NOT_ALLOWED: &str = "Method Not Allowed";
    /// 409: not enough unheld units.
    pub const OUT_OF_STOCK: &str = "Out of Stock";
    /// 409: the user would go over the product's `perUserLimit`.
    pub const PURCHASE_LIMIT_EXCEEDED: &str = "Purchase Limit Exceeded";
    /// 409: outside the sale window.
    pub const SALE_NOT_ACTIVE: &str = "Sale Not Active";
    /// 409: admin, a SKU already belongs to another sale.
    pub const CONFLICT: &str = "Conflict";
    /// 413.
    pub const PAYLOAD_TOO_LARGE: &str = "Payload Too Large";
    /// 429.
    pub const TOO_MANY_REQUESTS: &str = "Too Many Requests";
    /// 503.
    pub const SERVICE_UNAVAILABLE: &str = "Service Unavailable";
    /// 500: never expected; the baselines use it only for a broken backing store.
    pub const INTERNAL: &str = "Internal Server Error";
}

/// `POST /api/v1/reservations` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReserveRequest {
    /// Buyer.
    pub user_id: String,
    /// Product.
    pub sku_id: String,
    /// Units, 1..=1,000,000.
    pub quantity: u32,
}

/// A reservation as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    /// `res_…`.
    pub reservation_id: String,
    /// Buyer.
    pub user_id: String,
    /// Product.
    pub sku_id: String,
    /// Units held.
    pub quantity: u32,
    /// `RESERVED`, `CONFIRMED`, `EXPIRED` or `CANCELLED`.
    pub status: String,
    /// RFC 3339.
    pub expires_at: String,
    /// RFC 3339.
    pub created_at: String,
    /// Seconds left while `RESERVED`, else 0.
    pub expires_in_seconds: u64,
}

/// `POST /api/v1/orders/checkout` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckoutRequest {
    /// The live reservation to buy.
    pub reservation_id: String,
    /// Payment provider's id; the idempotency key of a checkout.
    pub payment_transaction_id: String,
    /// `CREDIT_CARD`, `DEBIT_CARD`, `UPI`, `WALLET` or `NET_BANKING`.
    pub payment_method: String,
    /// 1–500 chars.
    pub shipping_address: String,
}

/// `GET /api/v1/products/{skuId}/availability` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Availability {
    /// Product.
    pub sku_id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Free text.
    #[serde(default)]
    pub category: String,
    /// Price before the sale.
    pub base_price: f64,
    /// Price during the sale.
    pub flash_sale_price: f64,
    /// round(100 × (base − flash) / base).
    pub discount_percentage: i64,
    /// total − sold − held.
    pub available_count: i64,
    /// Units in the sale.
    pub total_inventory: i64,
    /// `isActive` and `availableCount` > 0.
    pub is_available: bool,
    /// The sale window contains now.
    pub is_active: bool,
    /// Free text.
    #[serde(default)]
    pub image_url: String,
}

/// One product of `POST /api/v1/admin/sales`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewProduct {
    /// Unique across sales.
    pub sku_id: String,
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Free text.
    #[serde(default)]
    pub category: String,
    /// Price before the sale.
    pub base_price: f64,
    /// Price during the sale, ≤ `base_price`.
    pub flash_sale_price: f64,
    /// Units for sale, ≥ 0.
    pub total_inventory: i64,
    /// Units one user may hold plus buy; default 1.
    #[serde(default = "default_per_user_limit")]
    pub per_user_limit: u32,
    /// Free text.
    #[serde(default)]
    pub image_url: String,
}

fn default_per_user_limit() -> u32 {
    1
}

fn default_ttl() -> u32 {
    120
}

/// `POST /api/v1/admin/sales` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSale {
    /// Display name.
    pub name: String,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339, after `starts_at`.
    pub ends_at: String,
    /// 1–3600, default 120.
    #[serde(default = "default_ttl")]
    pub reservation_ttl_seconds: u32,
    /// 1–100 products.
    pub products: Vec<NewProduct>,
}

/// A product of a sale with its stock figures (`GET /api/v1/admin/sales/{saleId}`).
///
/// Only the fields the harness checks are required; the rest of the contract's product
/// fields may be present and are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductStats {
    /// Product.
    pub sku_id: String,
    /// Units in the sale.
    pub total_inventory: i64,
    /// total − sold − held.
    pub available_count: i64,
    /// Units held by live reservations.
    pub reserved_count: i64,
    /// Units bought.
    pub sold_count: i64,
    /// Units one user may hold plus buy.
    #[serde(default = "default_per_user_limit")]
    pub per_user_limit: u32,
}

/// A sale as the admin API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SaleView {
    /// `sale_…`.
    pub sale_id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// The products with their stock figures.
    pub products: Vec<ProductStats>,
}

/// The error body of every 4xx/5xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// RFC 3339.
    pub timestamp: String,
    /// HTTP status.
    pub status: u16,
    /// One of the fixed titles ([`title`]).
    pub error: String,
    /// Human-readable.
    pub message: String,
    /// Request path.
    pub path: String,
    /// Title-specific fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// `userId`/`skuId` rule: 1–64 chars of `[A-Za-z0-9_.:@-]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// RFC 3339 UTC with `Z`, millisecond precision.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_contract() {
        assert!(valid_id("user_1.a:b@c-d"));
        assert!(!valid_id(""));
        assert!(!valid_id("has space"));
        assert!(!valid_id(&"x".repeat(65)));
        assert!(valid_id(&"x".repeat(64)));
    }

    #[test]
    fn sale_view_ignores_unknown_fields() {
        let v: SaleView = serde_json::from_str(
            r#"{"saleId":"sale_1","name":"n","startsAt":"x","products":[{"skuId":"A","name":"a",
            "totalInventory":10,"availableCount":7,"reservedCount":2,"soldCount":1,"perUserLimit":2}]}"#,
        )
        .unwrap();
        assert_eq!(v.products[0].reserved_count, 2);
        assert_eq!(v.products[0].per_user_limit, 2);
    }
}
