//! Sales admin (docs/api.md "Admin"): `GET /api/v1/admin/sales` (every sale, newest first),
//! `DELETE /api/v1/admin/sales/{saleId}` of a sale no reservation touched (its SKUs
//! free again; 409 "Conflict" with `saleId` and `reservations` once one exists, the
//! sale left whole on every partition), the owning `saleId` in the 409 of a taken SKU,
//! each product's partition, and dates in the past (accepted: the mistake deletion is
//! for). In embedded mode and, when the services are up, Kafka mode; a deletion
//! survives a restart (embedded: replayed from the log).

use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;
use std::time::Duration;

both_modes!(
    sales_are_listed_and_an_untouched_sale_is_deleted,
    a_sale_with_reservations_stays_whole
);

const PARTITIONS: u32 = 4;

fn assert_error(a: &Answer, status: u16, title: &str) {
    assert_eq!(a.status.as_u16(), status, "{title}: body {}", a.body);
    assert_eq!(a.error(), title, "body {}", a.body);
    assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

fn partition(sku: &str) -> u32 {
    flashsale_proto::partition_for_key(sku.as_bytes(), PARTITIONS)
}

/// Two fresh SKUs on different partitions (so a sale spans two engine partitions).
fn two_partitions(prefix: &str) -> (String, String) {
    let a = unique_sku(prefix);
    loop {
        let b = unique_sku(prefix);
        if partition(&b) != partition(&a) {
            return (a, b);
        }
    }
}

async fn admin(s: &TestServer, method: Method, path: &str, body: Option<Value>) -> Answer {
    s.call(
        method,
        path,
        body,
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await
}

fn sale_body(skus: &[&str], starts_in_s: i64, ends_in_s: i64) -> Value {
    let products: Vec<Value> = skus
        .iter()
        .map(|sku| {
            json!({"skuId": sku, "name": format!("Product {sku}"), "basePrice": 10.0,
                          "flashSalePrice": 5.0, "totalInventory": 5, "perUserLimit": 1})
        })
        .collect();
    json!({"name": "Admin Sale", "startsAt": time_in(starts_in_s), "endsAt": time_in(ends_in_s),
           "products": products})
}

async fn create(s: &TestServer, body: Value) -> String {
    let a = admin(s, Method::POST, "/api/v1/admin/sales", Some(body)).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    a.body["saleId"].as_str().expect("saleId").to_string()
}

/// The list, polled (bounded: 30 s) until `ok` holds: a Kafka-mode read model follows
/// the events topic.
async fn list_until(s: &TestServer, what: &str, ok: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let mut last = Value::Null;
    for _ in 0..300 {
        let a = admin(s, Method::GET, "/api/v1/admin/sales", None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let list = a.body.as_array().expect("an array").clone();
        if ok(&list) {
            return list;
        }
        last = a.body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: the sales list never got there: {last}");
}

fn position(list: &[Value], sale_id: &str) -> Option<usize> {
    list.iter().position(|s| s["saleId"] == sale_id)
}

async fn sales_are_listed_and_an_untouched_sale_is_deleted(s: &TestServer) {
    let (a1, a2) = two_partitions("DEL");
    // 401 before anything else
    for (m, p) in [
        (Method::GET, "/api/v1/admin/sales".to_string()),
        (
            Method::DELETE,
            "/api/v1/admin/sales/sale_01HQZZZZZZZZZZZZZZZZZZZZZZ".to_string(),
        ),
    ] {
        assert_error(&s.call(m, &p, None, &[]).await, 401, "Unauthorized");
    }

    // A sale with dates in the past: accepted (docs/api.md lists no 400 for it), never active.
    let old = create(s, sale_body(&[&a1, &a2], -7200, -3600)).await;
    let r = s.reserve("u1", &a1, 1).await;
    assert_error(&r, 409, "Sale Not Active");
    // Each product names its partition.
    let g = admin(s, Method::GET, &format!("/api/v1/admin/sales/{old}"), None).await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.body);
    for p in g.body["products"].as_array().unwrap() {
        let sku = p["skuId"].as_str().unwrap();
        assert_eq!(p["partition"], partition(sku), "{p}");
    }

    // Listed, newest first.
    let (b1, _) = two_partitions("DELB");
    let newer = create(s, sale_body(&[&b1], -60, 3600)).await;
    let list = list_until(s, "both sales listed", |l| {
        position(l, &old).is_some() && position(l, &newer).is_some()
    })
    .await;
    assert!(
        position(&list, &newer) < position(&list, &old),
        "newest first: {list:?}"
    );
    let listed = &list[position(&list, &old).unwrap()];
    assert_eq!(listed["products"].as_array().unwrap().len(), 2);
    assert!(listed["products"][0]["partition"].is_u64());

    // A taken SKU: 409 names the sale that owns it.
    let (c1, _) = two_partitions("DELC");
    let a = admin(
        s,
        Method::POST,
        "/api/v1/admin/sales",
        Some(sale_body(&[&c1, &a2], -60, 3600)),
    )
    .await;
    assert_error(&a, 409, "Conflict");
    assert_eq!(a.body["details"]["skuId"], a2.as_str());
    assert_eq!(a.body["details"]["saleId"], old.as_str(), "{}", a.body);

    // Delete it: 200 with the sale as it was; gone everywhere; its SKUs are free.
    let d = admin(
        s,
        Method::DELETE,
        &format!("/api/v1/admin/sales/{old}"),
        None,
    )
    .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    assert_eq!(d.body["saleId"], old.as_str());
    assert_eq!(d.body["products"].as_array().unwrap().len(), 2);
    assert_error(
        &admin(s, Method::GET, &format!("/api/v1/admin/sales/{old}"), None).await,
        404,
        "Sale Not Found",
    );
    assert_error(
        &s.get(&format!("/api/v1/products/{a1}/availability")).await,
        404,
        "Product Not Found",
    );
    list_until(s, "the deleted sale unlisted", |l| {
        position(l, &old).is_none() && position(l, &newer).is_some()
    })
    .await;
    let again = create(s, sale_body(&[&a1, &a2], -60, 3600)).await;
    let r = s.reserve("u1", &a2, 1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let g = admin(
        s,
        Method::GET,
        &format!("/api/v1/admin/sales/{again}"),
        None,
    )
    .await;
    assert_eq!(
        g.body["products"].as_array().unwrap().len(),
        2,
        "{}",
        g.body
    );

    // Deleting it again, an unknown id or a malformed one: 404 with the id.
    for id in [old.as_str(), "sale_01HQZZZZZZZZZZZZZZZZZZZZZZ", "nope"] {
        let d = admin(
            s,
            Method::DELETE,
            &format!("/api/v1/admin/sales/{id}"),
            None,
        )
        .await;
        assert_error(&d, 404, "Sale Not Found");
        assert_eq!(d.body["details"]["saleId"], id);
    }
}

async fn a_sale_with_reservations_stays_whole(s: &TestServer) {
    let (a1, a2) = two_partitions("KEEP");
    let sale = create(s, sale_body(&[&a1, &a2], -60, 3600)).await;
    // One reservation, cancelled again: nothing held, but the sale was touched.
    let r = s.reserve("buyer", &a1, 1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let rid = r.body["reservationId"].as_str().unwrap().to_string();
    let c = s
        .call(
            Method::DELETE,
            &format!("/api/v1/reservations/{rid}"),
            None,
            &[],
        )
        .await;
    assert_eq!(c.status, StatusCode::OK, "{}", c.body);

    for _ in 0..2 {
        let d = admin(
            s,
            Method::DELETE,
            &format!("/api/v1/admin/sales/{sale}"),
            None,
        )
        .await;
        assert_error(&d, 409, "Conflict");
        assert_eq!(d.body["details"]["saleId"], sale.as_str(), "{}", d.body);
        assert_eq!(d.body["details"]["reservations"], 1, "{}", d.body);
        assert!(
            d.body["message"]
                .as_str()
                .unwrap()
                .contains("end it instead"),
            "{}",
            d.body
        );
    }
    // Whole on both partitions: the other partition's product was given back as it
    // was, and still sells.
    let r = s.reserve("buyer2", &a2, 1).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let mut last = Value::Null;
    let mut whole = false;
    for _ in 0..300 {
        let g = admin(s, Method::GET, &format!("/api/v1/admin/sales/{sale}"), None).await;
        assert_eq!(g.status, StatusCode::OK, "{}", g.body);
        let products = g.body["products"].as_array().unwrap();
        if products.len() == 2 && products.iter().any(|p| p["reservedCount"] == 1) {
            whole = true;
            break;
        }
        last = g.body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(whole, "the sale must stay whole: {last}");
    // Its SKUs stay taken.
    let a = admin(
        s,
        Method::POST,
        "/api/v1/admin/sales",
        Some(sale_body(&[&a2], -60, 3600)),
    )
    .await;
    assert_error(&a, 409, "Conflict");
    assert_eq!(a.body["details"]["saleId"], sale.as_str());
}

/// Embedded: the deletion is a command on the log, so a restart (replay) agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_survives_a_restart() {
    let s = TestServer::embedded().await;
    let (a1, a2) = two_partitions("RESTART");
    let gone = create(&s, sale_body(&[&a1, &a2], 3600, 7200)).await;
    let kept = create(&s, sale_body(&[&unique_sku("KEPT")], -60, 3600)).await;
    let d = admin(
        &s,
        Method::DELETE,
        &format!("/api/v1/admin/sales/{gone}"),
        None,
    )
    .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    let data_dir = s.data_dir.clone();
    let dir = s.stop_keeping_data().await;

    let s = TestServer::start_with(Mode::Embedded, |a| a.data_dir = data_dir)
        .await
        .expect("restarts");
    let list = list_until(&s, "after the restart", |l| position(l, &kept).is_some()).await;
    assert!(position(&list, &gone).is_none(), "{list:?}");
    // Its SKUs are still free.
    create(&s, sale_body(&[&a1, &a2], -60, 3600)).await;
    s.stop().await;
    drop(dir);
}
