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
