//! JSON in and out: request-field validation with docs/api.md's 400 details, and the
//! response shapes (camelCase, RFC 3339 times, money as numbers with 2 decimals).

use crate::error::ApiError;
use crate::readmodel::{ProductEntry, SaleEntry};
use flashsale_proto::*;
use serde_json::{json, Map, Value};

pub use crate::time::{now_ms, parse_time, rfc3339, rfc3339_now};

pub fn money(c: Cents) -> Value {
    serde_json::Number::from_f64(c.0 as f64 / 100.0)
        .map(Value::Number)
        .unwrap_or(json!(0))
}

/// A parsed JSON object body. Field accessors return docs/api.md's 400 on bad input.
pub struct Body(pub Map<String, Value>);

/// A hold request's fields (`userId`, `skuId`, `quantity`), validated as [`Body`]'s
/// accessors validate them, in the same order and with the same 400s.
///
/// A well-formed request (most of a crowd: one hold, or an attempt on a sold-out SKU)
/// is read by a typed parse that borrows its strings, without building a
/// `serde_json::Value` map. Anything the typed parse does not take as it is (a null, a
/// duplicate key, a float quantity, a value out of range, malformed JSON) goes through
/// [`Body`], whose answer, including which error comes first, is the API's.
pub fn parse_hold(bytes: &[u8]) -> Result<(UserId, SkuId, u32), ApiError> {
    #[derive(serde::Deserialize)]
    struct Hold<'a> {
        #[serde(rename = "userId", borrow)]
        user_id: std::borrow::Cow<'a, str>,
        #[serde(rename = "skuId", borrow)]
        sku_id: std::borrow::Cow<'a, str>,
        quantity: u64,
    }
    if let Ok(h) = serde_json::from_slice::<Hold>(bytes) {
        if !h.user_id.is_empty() && !h.sku_id.is_empty() {
            if let (Ok(user), Ok(sku), true) = (
                UserId::parse(&h.user_id),
                SkuId::parse(&h.sku_id),
                (1..=u64::from(MAX_QUANTITY)).contains(&h.quantity),
            ) {
                return Ok((user, sku, h.quantity as u32));
            }
        }
    }
    let b = Body::parse(bytes)?;
    let user = b.user_id("userId")?;
    let sku = b.sku_id("skuId")?;
    let quantity = b.int("quantity", 1, u64::from(MAX_QUANTITY), None)? as u32;
    Ok((user, sku, quantity))
}

/// The largest amount of money accepted (10^11 units), far above any real price and
/// far below where f64 loses cents.
const MAX_MONEY_CENTS: u64 = 10_000_000_000_000;

impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        if bytes.is_empty() {
            return Err(ApiError::bad_request(
                "body",
                "request body is empty; send a JSON object",
            ));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(m)) => Ok(Body(m)),
            Ok(_) => Err(ApiError::bad_request("body", "must be a JSON object")),
            Err(e) => Err(ApiError::bad_request(
                "body",
                format!("malformed JSON: {e}"),
            )),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn string(&self, name: &str, max_chars: usize) -> Result<String, ApiError> {
        self.opt_string(name, max_chars)?
            .ok_or_else(|| ApiError::bad_request(name, "is required"))
    }

    pub fn opt_string(&self, name: &str, max_chars: usize) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => {
                let n = s.chars().count();
                if n == 0 {
                    Err(ApiError::bad_request(name, "must not be empty"))
                } else if n > max_chars {
                    Err(ApiError::bad_request(
                        name,
                        format!("must be at most {max_chars} characters"),
                    ))
                } else {
                    Ok(Some(s.clone()))
                }
            }
            Some(_) => Err(ApiError::bad_request(name, "must be a string")),
        }
    }

    /// Optional free text where empty is allowed.
    pub fn text(&self, name: &str, max_chars: usize) -> Result<String, ApiError> {
        match self.get(name) {
            None => Ok(String::new()),
            Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(s.clone()),
            Some(Value::String(_)) => Err(ApiError::bad_request(
                name,
                format!("must be at most {max_chars} characters"),
            )),
            Some(_) => Err(ApiError::bad_request(name, "must be a string")),
        }
    }

    pub fn user_id(&self, name: &str) -> Result<UserId, ApiError> {
        let s = self.string(name, usize::MAX)?;
        UserId::parse(&s).map_err(|e| ApiError::bad_request(name, e.to_string()))
    }

    pub fn sku_id(&self, name: &str) -> Result<SkuId, ApiError> {
        let s = self.string(name, usize::MAX)?;
        SkuId::parse(&s).map_err(|e| ApiError::bad_request(name, e.to_string()))
    }

    /// A JSON integer in `min..=max`; `default` when absent.
    pub fn int(
        &self,
        name: &str,
        min: u64,
        max: u64,
        default: Option<u64>,
    ) -> Result<u64, ApiError> {
        let v = match (self.get(name), default) {
            (None, Some(d)) => return Ok(d),
            (None, None) => return Err(ApiError::bad_request(name, "is required")),
            (Some(v), _) => v,
        };
        let range =
            || ApiError::bad_request(name, format!("must be an integer from {min} to {max}"));
        match v {
            Value::Number(n) => match n.as_u64() {
                Some(x) if (min..=max).contains(&x) => Ok(x),
                Some(_) => Err(range()),
                None if n.as_i64().is_some() => Err(range()),
                None => Err(ApiError::bad_request(name, "must be an integer")),
            },
            _ => Err(ApiError::bad_request(name, "must be an integer")),
        }
    }

    /// Money: a JSON number ≥ 0 with at most 2 decimals.
    pub fn money(&self, name: &str) -> Result<Cents, ApiError> {
        let v = self
            .get(name)
            .ok_or_else(|| ApiError::bad_request(name, "is required"))?;
        let x = v
            .as_f64()
            .ok_or_else(|| ApiError::bad_request(name, "must be a number"))?;
        if !x.is_finite() || x < 0.0 {
            return Err(ApiError::bad_request(name, "must be a non-negative amount"));
        }
        let cents = (x * 100.0).round();
        if (x * 100.0 - cents).abs() > 1e-6 {
            return Err(ApiError::bad_request(name, "must have at most 2 decimals"));
        }
        if cents > MAX_MONEY_CENTS as f64 {
            return Err(ApiError::bad_request(name, "is too large"));
        }
        Ok(Cents(cents as u64))
    }

    pub fn time(&self, name: &str) -> Result<UnixMs, ApiError> {
        let s = self.string(name, 64)?;
        parse_time(&s).map_err(|reason| ApiError::bad_request(name, reason))
    }
}

/// Seconds left, rounded up, while RESERVED; 0 otherwise.
pub fn expires_in_seconds(v: &ReservationView, now: UnixMs) -> u64 {
    if v.status != ReservationStatus::Reserved {
        return 0;
    }
    v.expires_at.saturating_sub(now).div_ceil(1000)
}

pub fn reservation_json(v: &ReservationView, now: UnixMs) -> Value {
    json!({
        "reservationId": v.id.to_string(),
        "userId": v.user.as_str(),
        "skuId": v.sku.as_str(),
        "quantity": v.quantity,
        "status": v.status.as_str(),
        "expiresAt": rfc3339(v.expires_at),
        "createdAt": rfc3339(v.created_at),
        "expiresInSeconds": expires_in_seconds(v, now),
    })
}

pub fn order_json(o: &OrderView) -> Value {
    json!({
        "orderId": o.order_id.to_string(),
        "reservationId": o.reservation_id.to_string(),
        "userId": o.user.as_str(),
        "skuId": o.sku.as_str(),
        "quantity": o.quantity,
        "totalPrice": money(o.total_price),
        "paymentTransactionId": o.payment_transaction_id,
        "paymentMethod": o.payment_method.as_str(),
        "shippingAddress": o.shipping_address,
        "status": "PAID",
        "createdAt": rfc3339(o.created_at),
    })
}

pub fn discount_percentage(base: Cents, flash: Cents) -> u64 {
    if base.0 == 0 {
        return 0;
    }
    // round(100 × (base − flash) / base), half away from zero, in integers.
    let num = 100 * (base.0.saturating_sub(flash.0)) as u128;
    ((2 * num + base.0 as u128) / (2 * base.0 as u128)) as u64
}

/// [`product_json`]'s document, serialized straight from the entry (no
/// `serde_json::Value` tree, no copies of its strings): the availability read's body.
/// Same fields in the same order, so the same bytes.
pub fn product_json_bytes(p: &ProductEntry, now: UnixMs) -> Vec<u8> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct View<'a> {
        sku_id: &'a str,
        name: &'a str,
        description: &'a str,
        category: &'a str,
        base_price: f64,
        flash_sale_price: f64,
        discount_percentage: u64,
        available_count: u64,
        total_inventory: u64,
        is_available: bool,
        is_active: bool,
        image_url: &'a str,
    }
    let active = p.starts_at <= now && now < p.ends_at;
    let available = p.available();
    let view = View {
        sku_id: p.spec.sku.as_str(),
        name: &p.spec.name,
        description: &p.spec.description,
        category: &p.spec.category,
        base_price: p.spec.base_price.0 as f64 / 100.0,
        flash_sale_price: p.spec.flash_sale_price.0 as f64 / 100.0,
        discount_percentage: discount_percentage(p.spec.base_price, p.spec.flash_sale_price),
        available_count: available,
        total_inventory: p.spec.total_inventory,
        is_available: active && available > 0,
        is_active: active,
        image_url: &p.spec.image_url,
    };
    let mut out = Vec::with_capacity(256 + p.spec.description.len());
    // Serializing plain fields into a Vec cannot fail.
    serde_json::to_writer(&mut out, &view).expect("a product view serializes");
    out
}

pub fn product_json(p: &ProductEntry, now: UnixMs) -> Value {
    let active = p.starts_at <= now && now < p.ends_at;
    let available = p.available();
    json!({
        "skuId": p.spec.sku.as_str(),
        "name": p.spec.name,
        "description": p.spec.description,
        "category": p.spec.category,
        "basePrice": money(p.spec.base_price),
        "flashSalePrice": money(p.spec.flash_sale_price),
        "discountPercentage": discount_percentage(p.spec.base_price, p.spec.flash_sale_price),
        "availableCount": available,
        "totalInventory": p.spec.total_inventory,
        "isAvailable": active && available > 0,
        "isActive": active,
        "imageUrl": p.spec.image_url,
    })
}

/// A sale as the admin endpoints answer it; each product names the partition its SKU
/// lives on (of `partitions`: what `flashsale partition-of` prints).
pub fn sale_json(s: &SaleEntry, products: &[ProductEntry], partitions: u32) -> Value {
    let products: Vec<Value> = products
        .iter()
        .map(|p| {
            json!({
                "skuId": p.spec.sku.as_str(),
                "partition": partition_for_key(p.spec.sku.as_str().as_bytes(), partitions),
                "name": p.spec.name,
                "description": p.spec.description,
                "category": p.spec.category,
                "basePrice": money(p.spec.base_price),
                "flashSalePrice": money(p.spec.flash_sale_price),
                "discountPercentage": discount_percentage(p.spec.base_price, p.spec.flash_sale_price),
                "totalInventory": p.spec.total_inventory,
                "perUserLimit": p.spec.per_user_limit,
                "imageUrl": p.spec.image_url,
                "availableCount": p.available(),
                "reservedCount": p.held,
                "soldCount": p.sold,
            })
        })
        .collect();
    json!({
        "saleId": s.meta.sale_id.to_string(),
        "name": s.meta.name,
        "startsAt": rfc3339(s.meta.starts_at),
        "endsAt": rfc3339(s.meta.ends_at),
        "reservationTtlSeconds": s.meta.reservation_ttl_s,
        "products": products,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discount_rounds_like_the_api_example() {
        assert_eq!(discount_percentage(Cents(129_999), Cents(99_999)), 23);
        assert_eq!(discount_percentage(Cents(100), Cents(50)), 50);
        assert_eq!(discount_percentage(Cents(0), Cents(0)), 0);
    }

    #[test]
    fn product_bytes_are_product_json() {
        let spec = ProductSpec {
            sku: SkuId::parse("SKU-1").unwrap(),
            name: "Phone \"X\"".into(),
            description: "déjà vu\n".into(),
            category: "Phones".into(),
            base_price: Cents(100_000),
            flash_sale_price: Cents(79_999),
            total_inventory: 10,
            per_user_limit: 1,
            image_url: "https://x/y.png".into(),
        };
        let mut p = ProductEntry {
            spec,
            sale_id: SaleId(7),
            starts_at: 1_000,
            ends_at: 2_000,
            held: 3,
            sold: 2,
            paused: false,
        };
        for (now, sold) in [(1_500, 2), (500, 2), (2_000, 2), (1_500, 7)] {
            p.sold = sold;
            let v = product_json(&p, now);
            let bytes = product_json_bytes(&p, now);
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                v.to_string(),
                "now {now}, sold {sold}"
            );
        }
    }

    /// The typed parse of a hold gives what [`Body`]'s accessors give: the same values
    /// for good requests, the same first error for bad ones.
    #[test]
    fn parse_hold_agrees_with_body() {
        fn slow(bytes: &[u8]) -> Result<(UserId, SkuId, u32), ApiError> {
            let b = Body::parse(bytes)?;
            let user = b.user_id("userId")?;
            let sku = b.sku_id("skuId")?;
            let quantity = b.int("quantity", 1, u64::from(MAX_QUANTITY), None)? as u32;
            Ok((user, sku, quantity))
        }
        let cases: &[&str] = &[
            r#"{"userId":"u1","skuId":"SKU-1","quantity":1}"#,
            r#"{"skuId":"SKU-1","quantity":2,"userId":"u\u00e9","extra":[1,2]}"#,
            r#"{"userId":"u1","skuId":"SKU-1","quantity":1000000}"#,
            r#"{"userId":"u1","skuId":"SKU-1","quantity":1000001}"#,
            r#"{"userId":"u1","skuId":"SKU-1","quantity":0}"#,
            r#"{"userId":"u1","skuId":"SKU-1","quantity":-1}"#,
            r#"{"userId":"u1","skuId":"SKU-1","quantity":1.0}"#,
            r#"{"userId":"u1","skuId":"SKU-1","quantity":"1"}"#,
            r#"{"userId":"u1","skuId":"SKU-1"}"#,
            r#"{"userId":null,"skuId":"SKU-1","quantity":1}"#,
            r#"{"userId":"","skuId":"","quantity":1}"#,
            r#"{"userId":"u1","skuId":"bad sku!","quantity":1}"#,
            r#"{"userId":"u1","userId":"u2","skuId":"SKU-1","quantity":1}"#,
            r#"{"userId":7,"skuId":"SKU-1","quantity":1}"#,
            r#"{"userId":"u1","skuId":"SKU-1","quantity":1} x"#,
            r#"["userId"]"#,
            r#"{"userId":"u1","#,
            "",
        ];
        for case in cases {
            let fast = parse_hold(case.as_bytes());
            let want = slow(case.as_bytes());
            match (fast, want) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{case}"),
                (Err(a), Err(b)) => {
                    assert_eq!(a.status, b.status, "{case}");
                    assert_eq!(a.payload.message, b.payload.message, "{case}");
                    assert_eq!(a.payload.details, b.payload.details, "{case}");
                }
                (a, b) => panic!("{case}: typed {a:?}, Body {b:?}"),
            }
        }
        assert!(parse_hold(br#"{"userId":"u1","skuId":"SKU-1","quantity":1}"#).is_ok());
    }

    #[test]
    fn money_and_times() {
        let b = Body::parse(br#"{"a":999.99,"b":1.001,"c":-1,"d":"x","t":"2025-01-15T10:02:00Z","u":"2025-01-15T10:02:00+01:00"}"#).unwrap();
        assert_eq!(b.money("a").unwrap(), Cents(99_999));
        assert!(b.money("b").is_err());
        assert!(b.money("c").is_err());
        assert!(b.money("d").is_err());
        assert_eq!(rfc3339(b.time("t").unwrap()), "2025-01-15T10:02:00Z");
        assert!(b.time("u").is_err());
        assert_eq!(money(Cents(99_999)).to_string(), "999.99");
    }
}
