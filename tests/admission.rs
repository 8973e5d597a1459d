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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_far_above_capacity_gets_only_api_answers_and_exact_state_embedded() {
    burst_far_above_capacity(Mode::Embedded, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_far_above_capacity_gets_only_api_answers_and_exact_state_kafka() {
    burst_far_above_capacity(Mode::Kafka, false).await;
}

/// The same burst with admission's rule 0 (the node's lag) at 1 ms, which a burst on
/// any test machine crosses: whatever it sheds, every answer is an API answer and the
/// state is exact (docs/overload.md). It sheds for every product of a node behind on
/// CPU, so here the other product's buyers may be told "later" too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_with_the_lag_rule_gets_only_api_answers_and_exact_state_embedded() {
    burst_far_above_capacity(Mode::Embedded, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_with_the_lag_rule_gets_only_api_answers_and_exact_state_kafka() {
    burst_far_above_capacity(Mode::Kafka, true).await;
}

/// A shed answer: 503, the API's error body, `Retry-After: 1`, a request id.
fn assert_shed_answer(a: &Answer) {
    assert_eq!(a.error(), "Service Unavailable", "{:?}", a.body);
    assert_eq!(a.body["status"], 503, "the API's error body: {:?}", a.body);
    assert_eq!(
        a.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1"),
        "{:?}",
        a.body
    );
    assert!(a.headers.contains_key("x-request-id"));
}

/// A hold retried as a client is told to (503 + Retry-After: again), a bounded number
/// of times: with the lag rule on, a busy test machine may shed even a lone request.
async fn reserve_retrying(s: &TestServer, user: &str, sku: &str, retry: bool) -> Answer {
    for _ in 0..50 {
        let a = s.reserve(user, sku, 1).await;
        if !(retry && a.status == StatusCode::SERVICE_UNAVAILABLE) {
            return a;
        }
        assert_shed_answer(&a);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{user}: shed 50 times in a row");
}

/// A SKU whose partition (of `partitions`) is not `not`.
fn sku_off_partition(prefix: &str, partitions: u32, not: u32) -> String {
    loop {
        let sku = unique_sku(prefix);
        if flashsale_proto::partition_for_key(sku.as_bytes(), partitions) != not {
            return sku;
        }
    }
}

/// The partition a reservation id names.
fn partition_of_hold(a: &Answer) -> u32 {
    let id = a.body["reservationId"].as_str().expect("reservationId");
    let id: flashsale_proto::ReservationId = id.parse().expect("a reservation id");
    u32::from(id.partition)
}

/// Issue 31: 450 hold attempts at once (150 buyers × 3) on a product of 40 units,
/// through small per-partition budgets that adapt to latency (a 1 ms target, so they
/// do), while another product on another partition is asked one buyer at a time.
/// Every answer is a hold, a 409 or a shed 503 with `Retry-After`; nothing is dropped
/// or 500; each buyer holds at most their limit; the stock, the availability and the
/// sale's counts agree with the 201s; the remaining stock is exactly what can still be
/// held afterwards (a shed request left no trace); and the other product's buyers are
/// all served, however hard the first one is hammered.
async fn burst_far_above_capacity(mode: Mode, lag_rule: bool) {
    const UNITS: u64 = 40;
    const LIMIT: u64 = 2;
    const BUYERS: usize = 150;
    const TRIES: usize = 3;
    const COLD_BUYERS: usize = 20;
    let Some(s) = TestServer::start_with(mode, |a| {
        a.max_in_flight_per_partition = Some(16);
        a.max_in_flight = Some(40);
        a.http.admission_target_ms = 1;
        // The sojourn rule sheds by time, which a busy test machine cannot promise
        // for the other product's buyers; the partition budgets are what this checks.
        a.http.admission_max_wait_ms = 0;
        a.http.admission_max_lag_ms = u64::from(lag_rule);
    })
    .await
    else {
        return;
    };
    let hot = unique_sku("BURST");
    let hot_partition = flashsale_proto::partition_for_key(hot.as_bytes(), 4);
    let cold = sku_off_partition("QUIET", 4, hot_partition);
    let sale_id = s
        .create_sale(
            &[(&hot, UNITS, LIMIT), (&cold, COLD_BUYERS as u64, 1)],
            120,
            OPENED_AGO_S,
        )
        .await;
    let burst = futures::future::join_all((0..BUYERS * TRIES).map(|i| {
        let user = format!("burst{}", i % BUYERS);
        s.reserve_owned(user, hot.clone())
    }));
    let quiet = async {
        let mut answers = Vec::new();
        for i in 0..COLD_BUYERS {
            answers.push(s.reserve(&format!("quiet{i}"), &cold, 1).await);
        }
        answers
    };
    let (answers, quiet) = tokio::join!(burst, quiet);

    let mut held_by: std::collections::HashMap<String, u64> = Default::default();
    let (mut created, mut shed, mut refused) = (Vec::new(), 0usize, 0usize);
    for (i, a) in answers.iter().enumerate() {
        match a.status {
            StatusCode::CREATED => {
                *held_by.entry(format!("burst{}", i % BUYERS)).or_default() += 1;
                created.push(a);
            }
            StatusCode::CONFLICT => {
                assert!(
                    ["Out of Stock", "Purchase Limit Exceeded"].contains(&a.error()),
                    "{:?}",
                    a.body
                );
                refused += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_shed_answer(a);
                shed += 1;
            }
            other => panic!("unexpected {other}: {:?}", a.body),
        }
    }
    assert_eq!(
        created.len() + refused + shed,
        BUYERS * TRIES,
        "every request answered"
    );
    eprintln!(
        "{mode:?} burst: {} held, {refused} refused (409), {shed} shed (503)",
        created.len()
    );
    assert!(created.len() as u64 <= UNITS, "oversold: {}", created.len());
    for (user, n) in &held_by {
        assert!(*n <= LIMIT, "{user} holds {n}, over the limit of {LIMIT}");
    }
    let ids: HashSet<&str> = created
        .iter()
        .map(|a| a.body["reservationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), created.len(), "no reservation id twice");

    // The other product, on another partition, served every one of its buyers (with
    // the lag rule, a node behind sheds them too: then with a shed answer).
    let mut quiet_held = 0;
    for (i, a) in quiet.iter().enumerate() {
        if lag_rule && a.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_shed_answer(a);
            continue;
        }
        assert_eq!(a.status, StatusCode::CREATED, "quiet{i}: {:?}", a.body);
        assert_ne!(partition_of_hold(a), hot_partition);
        quiet_held += 1;
    }
    let cold_av = s
        .get(&format!("/api/v1/products/{cold}/availability"))
        .await;
    assert_eq!(
        cold_av.body["availableCount"],
        COLD_BUYERS as u64 - quiet_held,
        "{:?}",
        cold_av.body
    );

    // The state agrees with the 201s: availability, and the sale's own counts.
    let held = created.len() as u64;
    let av = s.get(&format!("/api/v1/products/{hot}/availability")).await;
    assert_eq!(av.body["availableCount"], UNITS - held, "{:?}", av.body);
    let sale = s
        .call(
            Method::GET,
            &format!("/api/v1/admin/sales/{sale_id}"),
            None,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
    let product = sale.body["products"]
        .as_array()
        .expect("products")
        .iter()
        .find(|p| p["skuId"] == hot.as_str())
        .expect("the hot product");
    assert_eq!(product["reservedCount"], held, "{product:?}");
    assert_eq!(product["soldCount"], 0, "{product:?}");
    for a in &created {
        let id = a.body["reservationId"].as_str().unwrap();
        let r = s.get(&format!("/api/v1/reservations/{id}")).await;
        assert_eq!(r.body["status"], "RESERVED", "{:?}", r.body);
    }

    // What is left can be held, exactly that much, by newcomers one at a time: the
    // shed requests hold nothing.
    for i in 0..UNITS - held {
        let a = reserve_retrying(&s, &format!("late{i}"), &hot, lag_rule).await;
        assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    }
    let a = reserve_retrying(&s, "late-last", &hot, lag_rule).await;
    assert_eq!(a.error(), "Out of Stock", "{:?}", a.body);
    // And one checkout of the burst's holds becomes one order.
    if let Some(first) = created.first() {
        let id = first.body["reservationId"].as_str().unwrap();
        let mut o = s.checkout(id, "pay-burst-0").await;
        for _ in 0..50 {
            if !(lag_rule && o.status == StatusCode::SERVICE_UNAVAILABLE) {
                break;
            }
            assert_shed_answer(&o);
            tokio::time::sleep(Duration::from_millis(20)).await;
            o = s.checkout(id, "pay-burst-0").await;
        }
        assert_eq!(o.status, StatusCode::CREATED, "{:?}", o.body);
    }
    s.stop().await;
}

/// `--http-max-requests`: while the node's one request slot is taken (a hold whose
/// body has not arrived yet), every other request is answered at once with the API's
/// 503 + `Retry-After`, before its body is read: a hold sent then leaves no trace.
/// Once the slot is free, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn past_the_request_limit_requests_are_shed_before_their_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(Mode::Embedded, |a| a.http.http_max_requests = 1)
        .await
        .expect("embedded");
    let sku = unique_sku("SLOT");
    s.create_sale(&[(&sku, 10, 1)], 60, OPENED_AGO_S).await;
    // A hold whose head is sent and whose body is not: its handler waits in the slot.
    let body = json!({"userId": "slow", "skuId": sku, "quantity": 1}).to_string();
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/reservations HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let shed = eventually("the slot is taken", 30, || async {
        let a = s.get("/health").await;
        (a.status == StatusCode::SERVICE_UNAVAILABLE).then_some(a)
    })
    .await;
    assert_eq!(shed.error(), "Service Unavailable", "{:?}", shed.body);
    assert!(
        shed.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("requests being handled")),
        "{:?}",
        shed.body
    );
    assert_eq!(
        shed.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(shed.headers.contains_key("x-request-id"));
    // A hold sent now is shed too, and holds nothing.
    let a = s.reserve("fast", &sku, 1).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.body);
    // The slow hold's body arrives: it is held, and its slot is free again.
    slow.write_all(body.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = slow.read(&mut buf).await.unwrap();
        assert!(n > 0, "the slow hold got no answer");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    drop(slow);
    let av = eventually("the slot is free again", 30, || async {
        let a = s.get(&format!("/api/v1/products/{sku}/availability")).await;
        (a.status == StatusCode::OK).then_some(a)
    })
    .await;
    assert_eq!(
        av.body["availableCount"], 9,
        "only the slow hold: {:?}",
        av.body
    );
    let a = s.reserve("fast", &sku, 1).await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    s.stop().await;
}
