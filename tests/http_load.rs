//! Contention and expiry through the real HTTP server, in both modes:
//! - 1,000 distinct users, 64 at a time, on a SKU with 100 units → exactly 100 × 201
//!   and 900 × "Out of Stock";
//! - 50 parallel requests by one user → exactly one 201;
//! - a 2 s TTL: never expired before `expiresAt`, expired by `expiresAt` + 1 s, stock
//!   back, checkout → "Reservation Expired", and the user may reserve again.

use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::json;
use flashsale_tests::*;
use futures::stream::{self, StreamExt};
use std::collections::HashSet;
use std::time::Duration;

flashsale_tests::both_modes!(
    thousand_users_hundred_units,
    one_user_fifty_parallel,
    ttl_expiry_returns_stock
);

async fn thousand_users_hundred_units(s: &TestServer) {
    let sku = unique_sku("HOT");
    let sale_id = s.create_sale(&[(&sku, 100, 1)], 120, -1).await;
    let answers: Vec<Answer> = stream::iter(0..1000)
        .map(|i| {
            let sku = sku.clone();
            async move { s.reserve(&format!("buyer-{i}"), &sku, 1).await }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let created: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .collect();
    let out_of_stock = answers
        .iter()
        .filter(|a| a.status == StatusCode::CONFLICT && a.error() == "Out of Stock")
        .count();
    assert_eq!(created.len(), 100, "exactly the inventory is held");
    assert_eq!(out_of_stock, 900, "everyone else is told Out of Stock");
    let ids: HashSet<&str> = created
        .iter()
        .map(|a| a.body["reservationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 100, "no reservation id twice");
    let users: HashSet<&str> = created
        .iter()
        .map(|a| a.body["userId"].as_str().unwrap())
        .collect();
    assert_eq!(users.len(), 100);

    // every 201 is visible, availability is 0, and the admin counts agree
    for a in &created {
        let id = a.body["reservationId"].as_str().unwrap();
        assert_eq!(
            s.get(&format!("/api/v1/reservations/{id}")).await.body["status"],
            "RESERVED"
        );
    }
    assert_eq!(
        s.get(&format!("/api/v1/products/{sku}/availability"))
            .await
            .body["availableCount"],
        0
    );
    let sale = s
        .call(
            Method::GET,
            &format!("/api/v1/admin/sales/{sale_id}"),
            None,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
    let p = &sale.body["products"][0];
    assert_eq!(
        (
            p["reservedCount"].clone(),
            p["soldCount"].clone(),
            p["availableCount"].clone()
        ),
        (json!(100), json!(0), json!(0))
    );
}

async fn one_user_fifty_parallel(s: &TestServer) {
    let sku = unique_sku("ONE");
    s.create_sale(&[(&sku, 100, 1)], 120, -1).await;
    let answers: Vec<Answer> =
        futures::future::join_all((0..50).map(|_| s.reserve("the-same-user", &sku, 1))).await;
    let created = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .count();
    assert_eq!(created, 1, "one user, limit 1: exactly one hold");
    for a in answers.iter().filter(|a| a.status != StatusCode::CREATED) {
        assert_eq!(a.error(), "Purchase Limit Exceeded", "{}", a.body);
    }
    assert_eq!(
        s.get(&format!("/api/v1/products/{sku}/availability"))
            .await
            .body["availableCount"],
        99
    );
}

async fn ttl_expiry_returns_stock(s: &TestServer) {
    let sku = unique_sku("TTL");
    s.create_sale(&[(&sku, 1, 1)], 2, -1).await;
    let a = s.reserve("slowpoke", &sku, 1).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let rid = a.body["reservationId"].as_str().unwrap().to_string();
    let expires_at = chrono::DateTime::parse_from_rfc3339(a.body["expiresAt"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    let path = format!("/api/v1/reservations/{rid}");

    // Never expired early: every read before expiresAt shows the hold (bounded poll).
    loop {
        let before = chrono::Utc::now();
        if before >= expires_at - chrono::Duration::milliseconds(100) {
            break;
        }
        let g = s.get(&path).await;
        let after = chrono::Utc::now();
        if after < expires_at {
            assert_eq!(g.body["status"], "RESERVED", "expired before expiresAt");
            assert_eq!(
                s.get(&format!("/api/v1/products/{sku}/availability"))
                    .await
                    .body["availableCount"],
                0
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Expired by expiresAt + 1 s (the tick), with the stock back.
    let deadline = expires_at + chrono::Duration::milliseconds(1000);
    let wait = (deadline - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    let g = s.get(&path).await;
    assert_eq!(
        g.body["status"], "EXPIRED",
        "not expired by expiresAt + 1 s: {}",
        g.body
    );
    assert_eq!(g.body["expiresInSeconds"], 0);
    assert_eq!(
        s.get(&format!("/api/v1/products/{sku}/availability"))
            .await
            .body["availableCount"],
        1
    );

    let c = s.checkout(&rid, "late-pay").await;
    assert_eq!(c.status, StatusCode::CONFLICT);
    assert_eq!(c.error(), "Reservation Expired");
    assert_eq!(c.body["details"]["reservationId"], rid.as_str());
    assert_eq!(c.body["details"]["expiredAt"], a.body["expiresAt"]);
    let d = s.call(Method::DELETE, &path, None, &[]).await;
    assert_eq!(
        d.error(),
        "Reservation Not Active",
        "cancel of an expired hold"
    );

    let again = s.reserve("slowpoke", &sku, 1).await;
    assert_eq!(
        again.status,
        StatusCode::CREATED,
        "the same user may reserve again: {}",
        again.body
    );
    assert_ne!(again.body["reservationId"], rid.as_str());
}
