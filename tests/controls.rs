//! Hold extension and the operators' mid-sale controls (docs/api.md: `…/extend`, "Mid-sale
//! controls") through the real server: the happy paths, every new error row (400 with
//! `field`, 401, 404, 409 "Extension Limit Reached" / "Inventory Conflict" / "Sale Not
//! Active" with `paused`), in embedded mode and, when the services are up, Kafka mode.

use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;

both_modes!(
    extend_and_its_limits,
    inventory_pause_resume_end,
    ending_a_sale_before_it_starts
);

fn assert_error(a: &Answer, status: u16, title: &str) {
    assert_eq!(a.status.as_u16(), status, "{title}: body {}", a.body);
    assert_eq!(a.error(), title, "body {}", a.body);
    assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

fn assert_bad(a: &Answer, field: &str) {
    assert_error(a, 400, "Bad Request");
    assert_eq!(a.body["details"]["field"], field, "{}", a.body);
}

fn time(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time")).expect("RFC 3339")
}

async fn extend(s: &TestServer, rid: &str, body: Option<Value>) -> Answer {
    s.call(
        Method::POST,
        &format!("/api/v1/reservations/{rid}/extend"),
        body,
        &[],
    )
    .await
}

async fn admin(s: &TestServer, path: &str, body: Option<Value>, token: &str) -> Answer {
    s.call(
        Method::POST,
        path,
        body,
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

async fn extend_and_its_limits(s: &TestServer) {
    let sku = unique_sku("EXTEND");
    // TTL 60 s: the default max hold is 120 s from creation.
    s.create_sale(&[(&sku, 10, 3)], 60, -1).await;
    let a = s.reserve("payer", &sku, 1).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let rid = a.body["reservationId"].as_str().unwrap().to_string();
    let created = time(&a.body["createdAt"]);

    // no body: by the TTL; never earlier than before
    let e = extend(s, &rid, None).await;
    assert_eq!(e.status, StatusCode::OK, "{}", e.body);
    assert_eq!(e.body["status"], "RESERVED");
    assert!(time(&e.body["expiresAt"]) >= time(&a.body["expiresAt"]));
    // a long extension is cut to createdAt + maxHoldSeconds and answered 200 (the
    // contract, docs/api.md: the buyer gets all the time there is); only the next
    // one, with expiresAt at the cap, is 409
    let e = extend(s, &rid, Some(json!({"seconds": 3600}))).await;
    assert_eq!(e.status, StatusCode::OK, "{}", e.body);
    assert_eq!((time(&e.body["expiresAt"]) - created).num_seconds(), 120);
    assert!(e.body["expiresInSeconds"].as_u64().unwrap() > 60);
    // the read model knows at once
    let g = s.get(&format!("/api/v1/reservations/{rid}")).await;
    assert_eq!(g.body["expiresAt"], e.body["expiresAt"]);
    // the cap reached: 409 with the cap
    let e2 = extend(s, &rid, Some(json!({}))).await;
    assert_error(&e2, 409, "Extension Limit Reached");
    assert_eq!(e2.body["details"]["reservationId"], rid.as_str());
    assert_eq!(e2.body["details"]["maxExpiresAt"], e.body["expiresAt"]);

    // bad input: 400 with the field
    assert_bad(
        &extend(s, &rid, Some(json!({"seconds": 0}))).await,
        "seconds",
    );
    assert_bad(
        &extend(s, &rid, Some(json!({"seconds": 3601}))).await,
        "seconds",
    );
    assert_bad(
        &extend(s, &rid, Some(json!({"seconds": "60"}))).await,
        "seconds",
    );
    assert_bad(&extend(s, &rid, Some(json!([1]))).await, "body");
    // unknown or malformed ids: 404
    assert_error(
        &extend(s, "res_01ARZ3NDEKTSV4RRFFQ69G5FAV", None).await,
        404,
        "Reservation Not Found",
    );
    assert_error(
        &extend(s, "nonsense", None).await,
        404,
        "Reservation Not Found",
    );

    // a cancelled one: 409 Reservation Not Active; a confirmed one too
    let b = s.reserve("payer", &sku, 1).await;
    let rid2 = b.body["reservationId"].as_str().unwrap().to_string();
    let d = s
        .call(
            Method::DELETE,
            &format!("/api/v1/reservations/{rid2}"),
            None,
            &[],
        )
        .await;
    assert_eq!(d.status, StatusCode::OK);
    let e = extend(s, &rid2, None).await;
    assert_error(&e, 409, "Reservation Not Active");
    assert_eq!(e.body["details"]["status"], "CANCELLED");
    assert_eq!(s.checkout(&rid, "pay_1").await.status, StatusCode::CREATED);
    assert_error(&extend(s, &rid, None).await, 409, "Reservation Not Active");

    // maxHoldSeconds at creation: from the TTL to 3600
    let bad = admin(
        s,
        "/api/v1/admin/sales",
        Some(
            json!({"name": "x", "startsAt": time_in(-1), "endsAt": time_in(3600),
                    "reservationTtlSeconds": 60, "maxHoldSeconds": 30,
                    "products": [{"skuId": unique_sku("MH"), "name": "n", "basePrice": 2.0,
                                  "flashSalePrice": 1.0, "totalInventory": 1}]}),
        ),
        TOKEN,
    )
    .await;
    assert_bad(&bad, "maxHoldSeconds");
    let sku3 = unique_sku("MAXHOLD");
    let ok = admin(
        s,
        "/api/v1/admin/sales",
        Some(
            json!({"name": "x", "startsAt": time_in(-1), "endsAt": time_in(3600),
                    "reservationTtlSeconds": 10, "maxHoldSeconds": 25,
                    "products": [{"skuId": sku3, "name": "n", "basePrice": 2.0,
                                  "flashSalePrice": 1.0, "totalInventory": 1}]}),
        ),
        TOKEN,
    )
    .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.body);
    let c = s.reserve("slow", &sku3, 1).await;
    let e = extend(
        s,
        c.body["reservationId"].as_str().unwrap(),
        Some(json!({"seconds": 600})),
    )
    .await;
    assert_eq!(e.status, StatusCode::OK, "{}", e.body);
    assert_eq!(
        (time(&e.body["expiresAt"]) - time(&c.body["createdAt"])).num_seconds(),
        25
    );
}

async fn availability(s: &TestServer, sku: &str) -> Value {
    let a = s.get(&format!("/api/v1/products/{sku}/availability")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    a.body
}

async fn inventory_pause_resume_end(s: &TestServer) {
    let sku = unique_sku("CONTROL");
    let sale_id = s.create_sale(&[(&sku, 10, 5)], 120, -1).await;
    let inv = format!("/api/v1/admin/products/{sku}/inventory");
    let r = s.reserve("u1", &sku, 3).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let rid = r.body["reservationId"].as_str().unwrap().to_string();

    // 401 without the right token, before anything else is looked at
    assert_error(
        &admin(s, &inv, Some(json!({"delta": 1})), "wrong").await,
        401,
        "Unauthorized",
    );
    assert_error(
        &s.call(
            Method::POST,
            &format!("/api/v1/admin/products/{sku}/pause"),
            None,
            &[],
        )
        .await,
        401,
        "Unauthorized",
    );
    assert_error(
        &s.call(
            Method::POST,
            &format!("/api/v1/admin/sales/{sale_id}/end"),
            None,
            &[],
        )
        .await,
        401,
        "Unauthorized",
    );
    // 400 with the field
    assert_bad(
        &admin(s, &inv, Some(json!({"delta": "5"})), TOKEN).await,
        "delta",
    );
    assert_bad(
        &admin(s, &inv, Some(json!({"delta": 0})), TOKEN).await,
        "delta",
    );
    assert_bad(
        &admin(s, &inv, Some(json!({"delta": 1.5})), TOKEN).await,
        "delta",
    );
    assert_bad(&admin(s, &inv, Some(json!({})), TOKEN).await, "delta");
    assert_bad(&admin(s, &inv, None, TOKEN).await, "body");
    // a delta in its range that would take the total past 1,000,000,000: the engine
    // refuses it, and the answer names the field
    let over = admin(s, &inv, Some(json!({"delta": 999_999_999})), TOKEN).await;
    assert_bad(&over, "delta");
    assert!(
        over.body["details"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("1000000000")),
        "{}",
        over.body
    );
    // an invalid skuId in the path is 400 naming it, as in a body
    for path in [
        "/api/v1/admin/products/bad%20sku/inventory",
        "/api/v1/admin/products/bad%20sku/pause",
        "/api/v1/admin/products/bad%20sku/resume",
    ] {
        assert_bad(
            &admin(s, path, Some(json!({"delta": 1})), TOKEN).await,
            "skuId",
        );
    }
    // 404 for unknown ids
    assert_error(
        &admin(
            s,
            "/api/v1/admin/products/NO-SUCH/inventory",
            Some(json!({"delta": 1})),
            TOKEN,
        )
        .await,
        404,
        "Product Not Found",
    );
    assert_error(
        &admin(s, "/api/v1/admin/products/NO-SUCH/pause", None, TOKEN).await,
        404,
        "Product Not Found",
    );
    assert_error(
        &admin(
            s,
            "/api/v1/admin/sales/sale_01ARZ3NDEKTSV4RRFFQ69G5FAV/end",
            None,
            TOKEN,
        )
        .await,
        404,
        "Sale Not Found",
    );

    // below sold + held: 409 Inventory Conflict
    let c = admin(s, &inv, Some(json!({"delta": -8})), TOKEN).await;
    assert_error(&c, 409, "Inventory Conflict");
    assert_eq!(c.body["details"]["held"], 3);
    assert_eq!(c.body["details"]["sold"], 0);
    assert_eq!(c.body["details"]["skuId"], sku.as_str());
    // a top-up and a removal
    let up = admin(s, &inv, Some(json!({"delta": 5})), TOKEN).await;
    assert_eq!(up.status, StatusCode::OK, "{}", up.body);
    assert_eq!(up.body["totalInventory"], 15);
    assert_eq!(up.body["availableCount"], 12);
    assert_eq!(up.body["reservedCount"], 3);
    let av = availability(s, &sku).await;
    assert_eq!(av["totalInventory"], 15);
    assert_eq!(av["availableCount"], 12);
    let down = admin(s, &inv, Some(json!({"delta": -10})), TOKEN).await;
    assert_eq!(down.status, StatusCode::OK, "{}", down.body);
    assert_eq!(down.body["totalInventory"], 5);
    assert_eq!(down.body["availableCount"], 2);

    // pause: new holds refused with paused: true; live holds still extend and check out
    let p = admin(
        s,
        &format!("/api/v1/admin/products/{sku}/pause"),
        None,
        TOKEN,
    )
    .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(p.body["paused"], true);
    let refused = s.reserve("u2", &sku, 1).await;
    assert_error(&refused, 409, "Sale Not Active");
    assert_eq!(refused.body["details"]["paused"], true);
    assert_eq!(refused.body["details"]["skuId"], sku.as_str());
    assert_eq!(extend(s, &rid, None).await.status, StatusCode::OK);
    assert_eq!(s.checkout(&rid, "pay_c").await.status, StatusCode::CREATED);
    // resume: holds again
    let p = admin(
        s,
        &format!("/api/v1/admin/products/{sku}/resume"),
        None,
        TOKEN,
    )
    .await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(p.body["paused"], false);
    assert_eq!(p.body["soldCount"], 3);
    let again = s.reserve("u2", &sku, 1).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    let rid2 = again.body["reservationId"].as_str().unwrap().to_string();

    // end the sale now: no new holds, live ones can still check out
    let e = admin(
        s,
        &format!("/api/v1/admin/sales/{sale_id}/end"),
        None,
        TOKEN,
    )
    .await;
    assert_eq!(e.status, StatusCode::OK, "{}", e.body);
    assert_eq!(e.body["saleId"], sale_id.as_str());
    assert!(time(&e.body["endsAt"]) <= chrono::Utc::now());
    let late = s.reserve("u3", &sku, 1).await;
    assert_error(&late, 409, "Sale Not Active");
    assert!(
        late.body["details"].get("paused").is_none(),
        "{}",
        late.body
    );
    assert_eq!(availability(s, &sku).await["isActive"], false);
    assert_eq!(s.checkout(&rid2, "pay_d").await.status, StatusCode::CREATED);
    // ending twice is harmless
    let e2 = admin(
        s,
        &format!("/api/v1/admin/sales/{sale_id}/end"),
        None,
        TOKEN,
    )
    .await;
    assert_eq!(e2.status, StatusCode::OK, "{}", e2.body);
    assert_eq!(e2.body["endsAt"], e.body["endsAt"]);
}

/// "End sale" on a sale that has not started: `endsAt` becomes its `startsAt` (an
/// empty window that never opens), not now, which is before the start: a window never
/// ends before it starts (docs/api.md, "Mid-sale controls").
async fn ending_a_sale_before_it_starts(s: &TestServer) {
    let sku = unique_sku("EARLY");
    let sale_id = s.create_sale(&[(&sku, 10, 1)], 60, 3600).await;
    let before = s
        .call(
            Method::GET,
            &format!("/api/v1/admin/sales/{sale_id}"),
            None,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);
    let starts = time(&before.body["startsAt"]);
    assert!(starts > chrono::Utc::now(), "{}", before.body);
    let e = admin(
        s,
        &format!("/api/v1/admin/sales/{sale_id}/end"),
        None,
        TOKEN,
    )
    .await;
    assert_eq!(e.status, StatusCode::OK, "{}", e.body);
    assert_eq!(time(&e.body["endsAt"]), starts, "{}", e.body);
    assert_eq!(e.body["startsAt"], before.body["startsAt"]);
    let av = availability(s, &sku).await;
    assert_eq!(av["isActive"], false);
    assert_error(&s.reserve("u1", &sku, 1).await, 409, "Sale Not Active");
}
