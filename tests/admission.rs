//! The 10:00 crowd (issue 12): admission control and the cheap sold-out path, through
//! the real server in embedded and Kafka mode. No timing assertions: every check is
//! about answers and state.

use flashsale_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

/// Sales here opened 5 s ago, so the gateway's sold-out path (which keeps a 1 s margin
/// on either side of the window) applies at once.
const OPENED_AGO_S: i64 = -5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sold_out_path_keeps_the_api_precedence_embedded() {
    sold_out_path_keeps_the_api_precedence(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sold_out_path_keeps_the_api_precedence_kafka() {
    sold_out_path_keeps_the_api_precedence(Mode::Kafka).await;
}

async fn sold_out_path_keeps_the_api_precedence(mode: Mode) {
    let Some(s) = TestServer::start(mode).await else {
        return;
    };
    let sku = unique_sku("SOLD");
    let later = unique_sku("LATER");
    s.create_sale(&[(&sku, 3, 1)], 60, OPENED_AGO_S).await;
    s.create_sale(&[(&later, 0, 1)], 60, 3600).await;
    let mut holds = Vec::new();
    for u in ["u1", "u2", "u3"] {
        let a = s.reserve(u, &sku, 1).await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
        holds.push(a.body["reservationId"].as_str().unwrap().to_string());
    }
    // Sold out: a newcomer gets "Out of Stock" with the API's details.
    let a = s.reserve("u4", &sku, 1).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.error(), "Out of Stock", "{:?}", a.body);
    assert_eq!(a.body["details"]["availableQuantity"], 0);
    assert_eq!(a.body["details"]["requestedQuantity"], 1);
    assert_eq!(a.body["details"]["skuId"], sku.as_str());
    // A holder asking again is over the limit: that comes before "Out of Stock".
    let a = s.reserve("u1", &sku, 1).await;
    assert_eq!(a.error(), "Purchase Limit Exceeded", "{:?}", a.body);
    // Asking for more than the limit is the limit, not the stock, too.
    let a = s.reserve("u9", &sku, 2).await;
    assert_eq!(a.error(), "Purchase Limit Exceeded", "{:?}", a.body);
    // A sale that has not started says so, even with nothing in stock.
    let a = s.reserve("u4", &later, 1).await;
    assert_eq!(a.error(), "Sale Not Active", "{:?}", a.body);
    // An unknown product is 404, sold out or not.
    let a = s.reserve("u4", "NO-SUCH-SKU", 1).await;
    assert_eq!(a.error(), "Product Not Found", "{:?}", a.body);
    // Stock comes back: the next attempt is not refused by a stale "sold out".
    let a = s
        .call(
            Method::DELETE,
            &format!("/api/v1/reservations/{}", holds[1]),
            None,
            &[],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let a = s.reserve("u4", &sku, 1).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    // And with an Idempotency-Key the engine decides (a retry of a hold gets its 201).
    let a = s
        .call(
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": "u5", "skuId": sku, "quantity": 1})),
            &[("idempotency-key", "k-u5")],
        )
        .await;
    assert_eq!(a.error(), "Out of Stock", "{:?}", a.body);
    let av = s.get(&format!("/api/v1/products/{sku}/availability")).await;
    assert_eq!(av.body["availableCount"], 0);
    // A paused product says so, sold out or not ("Sale Not Active" comes first).
    let a = s
        .admin_post(&format!("/api/v1/admin/products/{sku}/pause"), json!({}))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let a = s.reserve("u6", &sku, 1).await;
    assert_eq!(a.error(), "Sale Not Active", "{:?}", a.body);
    assert_eq!(a.body["details"]["paused"], true, "{:?}", a.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crowd_waves_with_expiries_embedded() {
    crowd_waves_with_expiries(Mode::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crowd_waves_with_expiries_kafka() {
    crowd_waves_with_expiries(Mode::Kafka).await;
}

/// Three waves of 60 buyers on 10 units with a 1 s hold: each wave, once the previous
/// holds expired, gets exactly 10 holds (nothing oversold, nothing wrongly refused by
/// the sold-out path), holders asking again get "Purchase Limit Exceeded", and the
/// same buyers may buy again after their holds expired.
async fn crowd_waves_with_expiries(mode: Mode) {
    const UNITS: u64 = 10;
    const BUYERS: usize = 60;
    let Some(s) = TestServer::start(mode).await else {
        return;
    };
    let sku = unique_sku("WAVE");
    s.create_sale(&[(&sku, UNITS, 1)], 1, OPENED_AGO_S).await;
    for wave in 0..3 {
        wait_available(&s, &sku, UNITS).await;
        let answers = futures::future::join_all(
            (0..BUYERS).map(|i| s.reserve_owned(format!("buyer{i}"), sku.clone())),
        )
        .await;
        let mut held = HashSet::new();
        for (i, a) in answers.iter().enumerate() {
            match a.status {
                StatusCode::CREATED => {
                    held.insert(i);
                }
                StatusCode::CONFLICT => assert_eq!(a.error(), "Out of Stock", "{:?}", a.body),
                other => panic!("wave {wave}: unexpected {other}: {:?}", a.body),
            }
        }
        assert_eq!(
            held.len() as u64,
            UNITS,
            "wave {wave}: every unit held once"
        );
        // Holders asking again: over the limit, even though sold out.
        for &i in held.iter().take(3) {
            let a = s.reserve(&format!("buyer{i}"), &sku, 1).await;
            assert_eq!(a.error(), "Purchase Limit Exceeded", "{:?}", a.body);
        }
        let av = s.get(&format!("/api/v1/products/{sku}/availability")).await;
        assert_eq!(av.body["availableCount"], 0, "wave {wave}");
    }
    wait_available(&s, &sku, UNITS).await;
    s.stop().await;
}

async fn wait_available(s: &TestServer, sku: &str, units: u64) {
    for _ in 0..200 {
        let av = s.get(&format!("/api/v1/products/{sku}/availability")).await;
        if av.body["availableCount"] == units {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sku}: stock did not come back to {units} after the holds expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_limits_every_answer_is_an_api_answer_and_shed_ones_leave_no_trace() {
    let s = TestServer::start_with(Mode::Embedded, |a| {
        a.max_in_flight = Some(4);
        a.max_in_flight_per_partition = Some(2);
    })
    .await
    .expect("embedded");
    let sku = unique_sku("CROWD");
    s.create_sale(&[(&sku, 1_000, 1)], 60, OPENED_AGO_S).await;
    let answers =
        futures::future::join_all((0..300).map(|i| s.reserve_owned(format!("c{i}"), sku.clone())))
            .await;
    let (mut created, mut shed) = (0u64, Vec::new());
    for (i, a) in answers.iter().enumerate() {
        match a.status {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(a.error(), "Service Unavailable", "{:?}", a.body);
                assert_eq!(
                    a.headers.get("retry-after").and_then(|v| v.to_str().ok()),
                    Some("1")
                );
                assert!(a.headers.contains_key("x-request-id"));
                shed.push(i);
            }
            other => panic!("unexpected {other}: {:?}", a.body),
        }
    }
    let av = s.get(&format!("/api/v1/products/{sku}/availability")).await;
    assert_eq!(
        av.body["availableCount"],
        1_000 - created,
        "no trace of shed requests"
    );
    // A shed buyer holds nothing: asking again (alone) gets the unit.
    for &i in shed.iter().take(20) {
        let a = s.reserve(&format!("c{i}"), &sku, 1).await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    }
    s.stop().await;
}
