//! `schemas/openapi.yaml` describes exactly the router's routes: a route missing from
//! either side fails this test.

use flashsale_gateway::api::ROUTES;
use std::collections::BTreeSet;

#[test]
fn openapi_matches_the_router() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("schemas/openapi.yaml exists");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let mut spec = BTreeSet::new();
    for (p, item) in doc["paths"].as_mapping().expect("paths") {
        for (m, _) in item.as_mapping().expect("path item") {
            let m = m.as_str().unwrap();
            if ["get", "post", "put", "delete", "patch", "head", "options"].contains(&m) {
                spec.insert((m.to_string(), p.as_str().unwrap().to_string()));
            }
        }
    }
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let missing_in_spec: Vec<_> = routes.difference(&spec).collect();
    let missing_in_router: Vec<_> = spec.difference(&routes).collect();
    assert!(
        missing_in_spec.is_empty(),
        "routes not in openapi.yaml: {missing_in_spec:?}"
    );
    assert!(
        missing_in_router.is_empty(),
        "openapi.yaml paths the router lacks: {missing_in_router:?}"
    );
}

/// `ROUTES` is the router's own list: every entry answers something other than the
/// router's 404/405 fallback.
#[tokio::test]
async fn routes_list_matches_the_router() {
    use flashsale_tests::*;
    let s = TestServer::embedded().await;
    for (method, path) in ROUTES {
        let concrete = path
            .replace("{reservationId}", "res_01HQZZZZZZZZZZZZZZZZZZZZZZ000")
            .replace("{orderId}", "ord_01HQZZZZZZZZZZZZZZZZZZZZZZ000")
            .replace("{userId}", "u1")
            .replace("{skuId}", "SKU1")
            .replace("{saleId}", "sale_01HQZZZZZZZZZZZZZZZZZZZZZZ");
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let a = s.call(m, &concrete, None, &[]).await;
        assert_ne!(a.error(), "Not Found", "{method} {path} is not routed");
        assert_ne!(
            a.error(),
            "Method Not Allowed",
            "{method} {path} is not routed"
        );
    }
    s.stop().await;
}

fn spec() -> serde_yaml::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/openapi.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every status and title the server can put in an error body is in the spec's
/// `ErrorBody` (Schemathesis found 408, 414, 431, "Inventory Conflict" and "Extension
/// Limit Reached" missing): each engine refusal, and each status the server answers by
/// itself.
#[test]
fn every_error_the_server_sends_is_in_the_spec() {
    use flashsale_gateway::error::ApiError;
    use flashsale_proto::*;
    let doc = spec();
    let body = &doc["components"]["schemas"]["ErrorBody"]["properties"];
    let statuses: Vec<u64> = body["status"]["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let titles: Vec<&str> = body["error"]["enum"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let sku = SkuId::parse("SKU-1").unwrap();
    let res: ReservationId = "res_01HQZZZZZZZZZZZZZZZZZZZZZZ000".parse().unwrap();
    let sale: SaleId = "sale_01HQZZZZZZZZZZZZZZZZZZZZZZ".parse().unwrap();
    let rejections = [
        Rejection::ProductNotFound { sku: sku.clone() },
        Rejection::ReservationNotFound { reservation: res },
        Rejection::SaleNotActive {
            sku: sku.clone(),
            starts_at: 0,
            ends_at: 1,
        },
        Rejection::PurchaseLimitExceeded {
            sku: sku.clone(),
            limit: 1,
            held: 1,
        },
        Rejection::OutOfStock {
            sku: sku.clone(),
            requested: 1,
            available: 0,
        },
        Rejection::ReservationExpired {
            reservation: res,
            expired_at: 0,
        },
        Rejection::ReservationNotActive {
            reservation: res,
            status: ReservationStatus::Cancelled,
        },
        Rejection::IdempotencyKeyReused,
        Rejection::Conflict { sku: sku.clone() },
        Rejection::SaleInUse { sale_id: sale },
        Rejection::Invalid { reason: "x".into() },
        Rejection::ExtensionLimitReached {
            reservation: res,
            max_expires_at: 0,
        },
        Rejection::InventoryConflict {
            sku: sku.clone(),
            sold: 0,
            held: 0,
        },
        Rejection::ProductPaused {
            sku: sku.clone(),
            starts_at: 0,
            ends_at: 1,
        },
        Rejection::SkuTaken {
            sku: sku.clone(),
            sale_id: sale,
        },
        Rejection::SaleHasReservations {
            sale_id: sale,
            reservations: 1,
        },
    ];
    let mut errors: Vec<ApiError> = rejections.iter().map(ApiError::from_rejection).collect();
    for status in [
        400, 401, 404, 405, 408, 413, 414, 422, 429, 431, 503, 415, 500,
    ] {
        errors.push(ApiError::from_status(
            axum::http::StatusCode::from_u16(status).unwrap(),
        ));
    }
    errors.push(ApiError::shed("test"));
    errors.push(ApiError::too_many_requests(1));
    errors.push(ApiError::unauthorized());
    for e in errors {
        let status = u64::from(e.status.as_u16());
        assert!(
            statuses.contains(&status),
            "status {status} is not in ErrorBody"
        );
        assert!(
            titles.contains(&e.payload.title),
            "title {:?} ({status}) is not in ErrorBody",
            e.payload.title
        );
    }
}

/// `/metrics` answers the media type the spec documents for it.
#[tokio::test]
async fn metrics_answer_the_documented_media_type() {
    use flashsale_tests::*;
    let doc = spec();
    let content = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    let documented: Vec<&str> = content
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    let s = TestServer::embedded().await;
    let res = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap();
    let got = res.headers()["content-type"].to_str().unwrap().to_string();
    let media = got.split(';').next().unwrap().trim();
    assert!(documented.contains(&media), "{got} vs {documented:?}");
    assert!(res.text().await.unwrap().trim_end().ends_with("# EOF"));
    s.stop().await;
}
