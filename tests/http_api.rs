//! The HTTP contract of docs/api.md through the real server (bound to 127.0.0.1:0): every
//! row of the error table with its status, `error` title and `details`, the happy
//! paths, and the error precedence. Each scenario runs in embedded mode and, when the
//! services are up, in Kafka mode with the same assertions.

use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;

both_modes!(
    reservation_checkout_cancel_happy_path,
    validation_errors_are_400_with_details,
    not_found_rows,
    conflict_rows_on_reservations,
    reservation_not_active_rows,
    idempotency_key_same_body_and_reuse,
    admin_sale_rules,
    operations_endpoints,
    error_precedence,
);

fn assert_error(a: &Answer, status: u16, title: &str) {
    assert_eq!(a.status.as_u16(), status, "{title}: body {}", a.body);
    assert_eq!(a.error(), title, "body {}", a.body);
    assert_eq!(a.body["status"], json!(status));
    assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(a.body["path"].as_str().is_some_and(|p| p.starts_with('/')));
    assert!(a.body["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(a.headers.contains_key("x-request-id"));
}

async fn reservation_checkout_cancel_happy_path(s: &TestServer) {
    let sku = unique_sku("HAPPY");
    let sale_id = s.create_sale(&[(&sku, 10, 2)], 120, -1).await;
    assert!(sale_id.starts_with("sale_"));

    let a = s.reserve("alice", &sku, 2).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let rid = a.body["reservationId"].as_str().unwrap().to_string();
    assert!(rid.starts_with("res_"));
    assert_eq!(a.body["userId"], "alice");
    assert_eq!(a.body["skuId"], sku.as_str());
    assert_eq!(a.body["quantity"], 2);
    assert_eq!(a.body["status"], "RESERVED");
    assert_eq!(a.body["expiresInSeconds"], 120);
    let created =
        chrono::DateTime::parse_from_rfc3339(a.body["createdAt"].as_str().unwrap()).unwrap();
    let expires =
        chrono::DateTime::parse_from_rfc3339(a.body["expiresAt"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 120);

    // read-your-writes: the creating gateway already knows it
    let g = s.get(&format!("/api/v1/reservations/{rid}")).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.body["reservationId"], rid.as_str());
    assert_eq!(g.body["status"], "RESERVED");
    let secs = g.body["expiresInSeconds"].as_u64().unwrap();
    assert!((1..=120).contains(&secs));

    let av = s.get(&format!("/api/v1/products/{sku}/availability")).await;
    assert_eq!(av.status, StatusCode::OK);
    assert_eq!(av.body["availableCount"], 8);
    assert_eq!(av.body["totalInventory"], 10);
    assert_eq!(av.body["isActive"], true);
    assert_eq!(av.body["isAvailable"], true);
    assert_eq!(av.body["discountPercentage"], 23);
    assert_eq!(av.body["basePrice"], 1299.99);
    assert_eq!(av.body["flashSalePrice"], 999.99);

    // checkout → 201 order; repeat with the same payment id → 200, same order
    let c = s.checkout(&rid, "pay_xyz789").await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let oid = c.body["orderId"].as_str().unwrap().to_string();
    assert!(oid.starts_with("ord_"));
    assert_eq!(c.body["reservationId"], rid.as_str());
    assert_eq!(c.body["totalPrice"], 1999.98);
    assert_eq!(c.body["status"], "PAID");
    assert_eq!(c.body["paymentMethod"], "CREDIT_CARD");
    assert_eq!(c.body["paymentTransactionId"], "pay_xyz789");
    assert_eq!(c.body["shippingAddress"], "123 Main St, City, State 12345");
    let again = s
        .post(
            "/api/v1/orders/checkout",
            json!({"reservationId": rid, "paymentTransactionId": "pay_xyz789", "paymentMethod": "UPI", "shippingAddress": "elsewhere"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.body, c.body,
        "a repeat returns the first order unchanged"
    );

    let g = s.get(&format!("/api/v1/reservations/{rid}")).await;
    assert_eq!(g.body["status"], "CONFIRMED");
    assert_eq!(g.body["expiresInSeconds"], 0);

    // the order is readable by id and by user (within 1 s in Kafka mode: poll, bounded)
    let mut list = Value::Null;
    for _ in 0..50 {
        list = s.get("/api/v1/orders/user/alice").await.body;
        if list.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list}");
    assert_eq!(list[0]["orderId"], oid.as_str());
    let o = s.get(&format!("/api/v1/orders/{oid}")).await;
    assert_eq!(o.status, StatusCode::OK);
    assert_eq!(o.body["orderId"], oid.as_str());
    assert_eq!(
        s.get("/api/v1/orders/user/nobody-here").await.body,
        json!([])
    );

    // a second hold and its cancel: units back at once; cancelling again is 200
    let b = s.reserve("bob", &sku, 1).await;
    assert_eq!(b.status, StatusCode::CREATED);
    let bid = b.body["reservationId"].as_str().unwrap().to_string();
    assert_eq!(
        s.get(&format!("/api/v1/products/{sku}/availability"))
            .await
            .body["availableCount"],
        7
    );
    let d = s
        .call(
            Method::DELETE,
            &format!("/api/v1/reservations/{bid}"),
            None,
            &[],
        )
        .await;
    assert_eq!(d.status, StatusCode::OK);
    assert_eq!(d.body["status"], "CANCELLED");
    assert_eq!(d.body["expiresInSeconds"], 0);
    assert_eq!(
        s.get(&format!("/api/v1/products/{sku}/availability"))
            .await
            .body["availableCount"],
        8
    );
    let d2 = s
        .call(
            Method::DELETE,
            &format!("/api/v1/reservations/{bid}"),
            None,
            &[],
        )
        .await;
    assert_eq!(d2.status, StatusCode::OK);
    assert_eq!(d2.body["status"], "CANCELLED");

    // admin view of the sale: counts per product
    let sale = s
        .call(
            Method::GET,
            &format!("/api/v1/admin/sales/{sale_id}"),
            None,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
    assert_eq!(sale.status, StatusCode::OK, "{}", sale.body);
    let p = &sale.body["products"][0];
    assert_eq!(p["skuId"], sku.as_str());
    assert_eq!(
        (
            p["totalInventory"].clone(),
            p["availableCount"].clone(),
            p["reservedCount"].clone(),
            p["soldCount"].clone()
        ),
        (json!(10), json!(8), json!(0), json!(2))
    );

    let all = s.get("/api/v1/products").await;
    assert!(all
        .body
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["skuId"] == sku.as_str()));
}

async fn validation_errors_are_400_with_details(s: &TestServer) {
    let sku = unique_sku("VAL");
    s.create_sale(&[(&sku, 10, 1)], 120, -1).await;
    let cases: Vec<(Value, &str)> = vec![
        (json!({"skuId": sku, "quantity": 1}), "userId"),
        (json!({"userId": "u", "quantity": 1}), "skuId"),
        (json!({"userId": "u", "skuId": sku}), "quantity"),
        (
            json!({"userId": "bad user", "skuId": sku, "quantity": 1}),
            "userId",
        ),
        (
            json!({"userId": "x".repeat(65), "skuId": sku, "quantity": 1}),
            "userId",
        ),
        (
            json!({"userId": "u", "skuId": "SKU/../x", "quantity": 1}),
            "skuId",
        ),
        (
            json!({"userId": "u", "skuId": sku, "quantity": 0}),
            "quantity",
        ),
        (
            json!({"userId": "u", "skuId": sku, "quantity": -3}),
            "quantity",
        ),
        (
            json!({"userId": "u", "skuId": sku, "quantity": 1_000_001}),
            "quantity",
        ),
        (
            json!({"userId": "u", "skuId": sku, "quantity": 1.5}),
            "quantity",
        ),
        (
            json!({"userId": "u", "skuId": sku, "quantity": "1"}),
            "quantity",
        ),
        (json!({"userId": 42, "skuId": sku, "quantity": 1}), "userId"),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let a = s.post("/api/v1/reservations", body.clone()).await;
        assert_error(&a, 400, "Bad Request");
        assert_eq!(
            a.body["details"]["field"], field,
            "body {body} → {}",
            a.body
        );
        assert!(a.body["details"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()));
    }
    // malformed JSON, empty body, unknown fields ignored
    let raw = s
        .client
        .post(format!("{}/api/v1/reservations", s.base))
        .body("{\"userId\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let raw = s
        .client
        .post(format!("{}/api/v1/reservations", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let ok = s
        .post(
            "/api/v1/reservations",
            json!({"userId": "u1", "skuId": sku, "quantity": 1, "color": "red"}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);

    // checkout fields
    let rid = ok.body["reservationId"].as_str().unwrap();
    let base = json!({"reservationId": rid, "paymentTransactionId": "p1", "paymentMethod": "UPI", "shippingAddress": "a"});
    for (field, value) in [
        ("paymentMethod", json!("BITCOIN")),
        ("paymentTransactionId", json!("")),
        ("paymentTransactionId", json!("p".repeat(129))),
        ("shippingAddress", json!("a".repeat(501))),
        ("shippingAddress", json!(7)),
        ("reservationId", json!(null)),
    ] {
        let mut b = base.clone();
        b[field] = value;
        let a = s.post("/api/v1/orders/checkout", b).await;
        assert_error(&a, 400, "Bad Request");
        assert_eq!(a.body["details"]["field"], field);
    }
    // a bad Idempotency-Key header
    let a = s
        .call(
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": "u2", "skuId": sku, "quantity": 1})),
            &[("idempotency-key", &"k".repeat(129))],
        )
        .await;
    assert_error(&a, 400, "Bad Request");
    assert_eq!(a.body["details"]["field"], "Idempotency-Key");
    // invalid user id in a path
    let a = s.get("/api/v1/orders/user/bad%20user").await;
    assert_error(&a, 400, "Bad Request");
}

async fn not_found_rows(s: &TestServer) {
    let a = s.reserve("u", "NO-SUCH-PRODUCT-XYZ", 1).await;
    assert_error(&a, 404, "Product Not Found");
    assert_eq!(a.body["details"]["skuId"], "NO-SUCH-PRODUCT-XYZ");
    let a = s
        .get("/api/v1/products/NO-SUCH-PRODUCT-XYZ/availability")
        .await;
    assert_error(&a, 404, "Product Not Found");
    // an invalid skuId in a path is 400 naming it (as in a body), not 404
    for path in [
        "/api/v1/products/bad%20sku/availability",
        &format!("/api/v1/products/{}/availability", "S".repeat(65)),
    ] {
        let a = s.get(path).await;
        assert_error(&a, 400, "Bad Request");
        assert_eq!(a.body["details"]["field"], "skuId", "{path}: {}", a.body);
    }

    let fake = "res_01HQZZZZZZZZZZZZZZZZZZZZZZ000";
    for a in [
        s.get(&format!("/api/v1/reservations/{fake}")).await,
        s.get("/api/v1/reservations/not-an-id").await,
        s.call(
            Method::DELETE,
            &format!("/api/v1/reservations/{fake}"),
            None,
            &[],
        )
        .await,
        s.checkout(fake, "p").await,
        s.checkout("res_garbage", "p").await,
    ] {
        assert_error(&a, 404, "Reservation Not Found");
        assert!(a.body["details"]["reservationId"].as_str().is_some());
    }
    let a = s
        .get("/api/v1/orders/ord_01HQZZZZZZZZZZZZZZZZZZZZZZ000")
        .await;
    assert_error(&a, 404, "Order Not Found");
    assert_eq!(
        a.body["details"]["orderId"],
        "ord_01HQZZZZZZZZZZZZZZZZZZZZZZ000"
    );
    let a = s
        .call(
            Method::GET,
            "/api/v1/admin/sales/sale_01HQZZZZZZZZZZZZZZZZZZZZZZ",
            None,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
    assert_error(&a, 404, "Sale Not Found");
    let a = s.get("/api/v1/nothing/here").await;
    assert_error(&a, 404, "Not Found");
    let a = s
        .call(Method::PUT, "/api/v1/reservations", Some(json!({})), &[])
        .await;
    assert_error(&a, 405, "Method Not Allowed");
    let a = s
        .call(Method::POST, "/api/v1/products", Some(json!({})), &[])
        .await;
    assert_error(&a, 405, "Method Not Allowed");
}

async fn conflict_rows_on_reservations(s: &TestServer) {
    let sku = unique_sku("CONF");
    let later = unique_sku("LATER");
    s.create_sale(&[(&sku, 2, 1)], 120, -1).await;
    s.create_sale(&[(&later, 5, 1)], 120, 3600).await;

    let a = s.reserve("u1", &later, 1).await;
    assert_error(&a, 409, "Sale Not Active");
    assert_eq!(a.body["details"]["skuId"], later.as_str());
    assert!(a.body["details"]["startsAt"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(a.body["details"]["endsAt"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let av = s
        .get(&format!("/api/v1/products/{later}/availability"))
        .await;
    assert_eq!(av.body["isActive"], false);
    assert_eq!(av.body["isAvailable"], false);

    assert_eq!(s.reserve("u1", &sku, 1).await.status, StatusCode::CREATED);
    let a = s.reserve("u1", &sku, 1).await;
    assert_error(&a, 409, "Purchase Limit Exceeded");
    assert_eq!(
        a.body["details"],
        json!({"skuId": sku, "limit": 1, "held": 1})
    );
    let a = s.reserve("u2", &sku, 2).await;
    assert_error(&a, 409, "Purchase Limit Exceeded");
    assert_eq!(a.body["details"]["held"], 0);

    assert_eq!(s.reserve("u2", &sku, 1).await.status, StatusCode::CREATED);
    let a = s.reserve("u3", &sku, 1).await;
    assert_error(&a, 409, "Out of Stock");
    assert_eq!(
        a.body["details"],
        json!({"skuId": sku, "requestedQuantity": 1, "availableQuantity": 0})
    );
    assert_eq!(
        a.body["message"],
        format!("Product {sku} is out of stock. Requested: 1, Available: 0")
    );
    let av = s.get(&format!("/api/v1/products/{sku}/availability")).await;
    assert_eq!(av.body["availableCount"], 0);
    assert_eq!(av.body["isAvailable"], false);
}

async fn reservation_not_active_rows(s: &TestServer) {
    let sku = unique_sku("NACT");
    s.create_sale(&[(&sku, 10, 1)], 120, -1).await;
    let r1 = s.reserve("u1", &sku, 1).await.body["reservationId"]
        .as_str()
        .unwrap()
        .to_string();
    let r2 = s.reserve("u2", &sku, 1).await.body["reservationId"]
        .as_str()
        .unwrap()
        .to_string();

    // checkout of a cancelled one
    assert_eq!(
        s.call(
            Method::DELETE,
            &format!("/api/v1/reservations/{r1}"),
            None,
            &[]
        )
        .await
        .status,
        StatusCode::OK
    );
    let a = s.checkout(&r1, "p1").await;
    assert_error(&a, 409, "Reservation Not Active");
    assert_eq!(
        a.body["details"],
        json!({"reservationId": r1, "status": "CANCELLED"})
    );

    // checkout of a confirmed one with another payment id; cancel of a confirmed one
    assert_eq!(s.checkout(&r2, "p2").await.status, StatusCode::CREATED);
    let a = s.checkout(&r2, "p-other").await;
    assert_error(&a, 409, "Reservation Not Active");
    assert_eq!(a.body["details"]["status"], "CONFIRMED");
    let a = s
        .call(
            Method::DELETE,
            &format!("/api/v1/reservations/{r2}"),
            None,
            &[],
        )
        .await;
    assert_error(&a, 409, "Reservation Not Active");
    assert_eq!(
        a.body["details"],
        json!({"reservationId": r2, "status": "CONFIRMED"})
    );
}

async fn idempotency_key_same_body_and_reuse(s: &TestServer) {
    let sku = unique_sku("IDEM");
    s.create_sale(&[(&sku, 10, 3)], 120, -1).await;
    let key = unique_sku("key");
    let body = json!({"userId": "u1", "skuId": sku, "quantity": 1});
    let a = s
        .call(
            Method::POST,
            "/api/v1/reservations",
            Some(body.clone()),
            &[("idempotency-key", &key)],
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let b = s
        .call(
            Method::POST,
            "/api/v1/reservations",
            Some(body.clone()),
            &[("idempotency-key", &key)],
        )
        .await;
    assert_eq!(b.status, StatusCode::CREATED);
    assert_eq!(a.body["reservationId"], b.body["reservationId"]);
    assert_eq!(
        s.get(&format!("/api/v1/products/{sku}/availability"))
            .await
            .body["availableCount"],
        9,
        "held once"
    );
    let c = s
        .call(
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": "u1", "skuId": sku, "quantity": 2})),
            &[("idempotency-key", &key)],
        )
        .await;
    assert_error(&c, 422, "Idempotency Key Reused");
    assert_eq!(
        s.get(&format!("/api/v1/products/{sku}/availability"))
            .await
            .body["availableCount"],
        9
    );
}

async fn admin_sale_rules(s: &TestServer) {
    let sku = unique_sku("ADM");
    let product = |sku: &str| json!({"skuId": sku, "name": "P", "basePrice": 10.0, "flashSalePrice": 5.0, "totalInventory": 3});
    let sale = |products: Vec<Value>| json!({"name": "S", "startsAt": time_in(-1), "endsAt": time_in(3600), "products": products});

    // 401: no token, wrong token
    let a = s
        .post("/api/v1/admin/sales", sale(vec![product(&sku)]))
        .await;
    assert_error(&a, 401, "Unauthorized");
    let a = s
        .call(
            Method::POST,
            "/api/v1/admin/sales",
            Some(sale(vec![product(&sku)])),
            &[("authorization", "Bearer nope")],
        )
        .await;
    assert_error(&a, 401, "Unauthorized");
    let a = s
        .get("/api/v1/admin/sales/sale_01HQZZZZZZZZZZZZZZZZZZZZZZ")
        .await;
    assert_error(&a, 401, "Unauthorized");

    // defaults
    let a = s
        .admin_post("/api/v1/admin/sales", sale(vec![product(&sku)]))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["reservationTtlSeconds"], 120);
    assert_eq!(a.body["products"][0]["perUserLimit"], 1);
    assert_eq!(a.body["products"][0]["description"], "");
    assert_eq!(a.body["products"][0]["availableCount"], 3);

    // 409 Conflict: the SKU belongs to another sale
    let other = unique_sku("ADM2");
    let a = s
        .admin_post(
            "/api/v1/admin/sales",
            sale(vec![product(&other), product(&sku)]),
        )
        .await;
    assert_error(&a, 409, "Conflict");
    assert_eq!(a.body["details"]["skuId"], sku.as_str());
    // all or nothing: the other SKU was not created
    assert_error(
        &s.get(&format!("/api/v1/products/{other}/availability"))
            .await,
        404,
        "Product Not Found",
    );

    // 400s
    let mut too_many = Vec::new();
    for i in 0..101 {
        too_many.push(product(&format!("{other}-{i}")));
    }
    let bad: Vec<(Value, &str)> = vec![
        (sale(vec![]), "products"),
        (sale(too_many), "products"),
        (
            json!({"name": "S", "startsAt": time_in(10), "endsAt": time_in(10), "products": [product(&other)]}),
            "endsAt",
        ),
        (
            json!({"name": "S", "startsAt": "yesterday", "endsAt": time_in(10), "products": [product(&other)]}),
            "startsAt",
        ),
        // a leap second is refused rather than taken as the next second (which would
        // answer `+10000-01-01T00:00:00Z` for this one)
        (
            json!({"name": "S", "startsAt": time_in(-1), "endsAt": "9999-12-31T23:59:60Z", "products": [product(&other)]}),
            "endsAt",
        ),
        (
            json!({"name": "S", "startsAt": "1969-12-31T23:59:59Z", "endsAt": time_in(10), "products": [product(&other)]}),
            "startsAt",
        ),
        (
            sale(vec![
                json!({"skuId": other, "name": "P", "basePrice": 5.0, "flashSalePrice": 6.0, "totalInventory": 3}),
            ]),
            "products[0].flashSalePrice",
        ),
        (
            sale(vec![
                json!({"skuId": other, "name": "P", "basePrice": 5.0, "flashSalePrice": 4.0, "totalInventory": -1}),
            ]),
            "products[0].totalInventory",
        ),
        (
            sale(vec![
                json!({"skuId": other, "name": "P", "basePrice": 5.001, "flashSalePrice": 4.0, "totalInventory": 1}),
            ]),
            "products[0].basePrice",
        ),
        (
            sale(vec![product(&other), product(&other)]),
            "products[1].skuId",
        ),
        (
            json!({"name": "S", "startsAt": time_in(-1), "endsAt": time_in(10), "reservationTtlSeconds": 0, "products": [product(&other)]}),
            "reservationTtlSeconds",
        ),
        (
            json!({"name": "S", "startsAt": time_in(-1), "endsAt": time_in(10), "reservationTtlSeconds": 3601, "products": [product(&other)]}),
            "reservationTtlSeconds",
        ),
    ];
    for (body, field) in bad {
        let a = s.admin_post("/api/v1/admin/sales", body).await;
        assert_error(&a, 400, "Bad Request");
        assert_eq!(a.body["details"]["field"], field, "{}", a.body);
    }
    // the last time the API takes is answered as it was sent
    let last = unique_sku("LAST");
    let a = s
        .admin_post(
            "/api/v1/admin/sales",
            json!({"name": "S", "startsAt": time_in(-1), "endsAt": "9999-12-31T23:59:59Z", "products": [product(&last)]}),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["endsAt"], "9999-12-31T23:59:59Z");
}

async fn operations_endpoints(s: &TestServer) {
    for path in ["/health", "/actuator/health"] {
        let a = s.get(path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(a.body, json!({"status": "UP"}));
    }
    // Readiness for reads (/ready) and for writes (/ready?writes): both, when ready.
    for path in ["/ready", "/ready?writes"] {
        let a = s.get(path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert_eq!(
            a.body,
            json!({"status": "UP", "reads": "UP", "writes": "UP"}),
            "{path}"
        );
    }
    // X-Request-Id: echoed when given, generated otherwise
    let a = s
        .call(Method::GET, "/health", None, &[("x-request-id", "abc-123")])
        .await;
    assert_eq!(a.headers["x-request-id"], "abc-123");
    let b = s.get("/health").await;
    let generated = b.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(!generated.is_empty() && generated != "abc-123");
    let e = s
        .call(Method::GET, "/nope", None, &[("x-request-id", "err-7")])
        .await;
    assert_eq!(e.headers["x-request-id"], "err-7");
    // the longest id, every visible ASCII character: echoed as sent
    let longest: String = (b'!'..=b'~').map(char::from).cycle().take(128).collect();
    let a = s
        .call(Method::GET, "/health", None, &[("x-request-id", &longest)])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-request-id"], longest.as_str());
    // any other id is 400 naming the header, answered with a generated id
    for bad in ["a b", &"x".repeat(129), "a\tb"] {
        let a = s
            .call(Method::GET, "/health", None, &[("x-request-id", bad)])
            .await;
        assert_error(&a, 400, "Bad Request");
        assert_eq!(a.body["details"]["field"], "X-Request-Id", "{}", a.body);
        let rid = a.headers["x-request-id"].to_str().unwrap();
        assert!(rid != bad && !rid.is_empty(), "{rid}");
    }

    let sku = unique_sku("MET");
    s.create_sale(&[(&sku, 1, 1)], 120, -1).await;
    s.reserve("m1", &sku, 1).await;
    s.reserve("m2", &sku, 1).await;
    let text = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "flashsale_reservation_total{result=\"ok\"}",
        "flashsale_reservation_total{result=\"out_of_stock\"}",
        "flashsale_reservation_latency_seconds_bucket",
        "flashsale_inventory_available{sku=",
        "flashsale_inventory_stockout_total",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
}

async fn error_precedence(s: &TestServer) {
    let big = "x".repeat(70 * 1024);
    // 413 before 401 (admin, no token) and before 400
    let a = s
        .call(
            Method::POST,
            "/api/v1/admin/sales",
            Some(json!({"name": big})),
            &[],
        )
        .await;
    assert_error(&a, 413, "Payload Too Large");
    let a = s.post("/api/v1/reservations", json!({"userId": big})).await;
    assert_error(&a, 413, "Payload Too Large");
    // 401 before 400
    let a = s.post("/api/v1/admin/sales", json!({"name": 1})).await;
    assert_error(&a, 401, "Unauthorized");
    // 400 before 404 (unknown product with a bad quantity)
    let a = s.reserve("u", "NO-SUCH-PRODUCT-XYZ", 0).await;
    assert_error(&a, 400, "Bad Request");
    let sku = unique_sku("PREC");
    s.create_sale(&[(&sku, 1, 1)], 120, -1).await;
    let key = unique_sku("k");
    let ok = s
        .call(
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": "p1", "skuId": sku, "quantity": 1})),
            &[("idempotency-key", &key)],
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    // Purchase Limit Exceeded before Out of Stock: p1 holds the last unit and asks again
    let a = s.reserve("p1", &sku, 1).await;
    assert_error(&a, 409, "Purchase Limit Exceeded");
    let a = s.reserve("p2", &sku, 1).await;
    assert_error(&a, 409, "Out of Stock");
}

/// 429 with Retry-After: the per-user limit, on a server that has it on (burst 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_429_with_retry_after() {
    let s = TestServer::start_with(Mode::Embedded, |a| {
        a.rate_limit_per_user = 1;
        a.rate_limit_burst = 2;
    })
    .await
    .unwrap();
    let sku = unique_sku("RATE");
    s.create_sale(&[(&sku, 100, 100)], 120, -1).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(s.reserve("eager", &sku, 1).await);
    }
    assert_eq!(statuses[0].status, StatusCode::CREATED);
    let limited: Vec<&Answer> = statuses
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert!(
        !limited.is_empty(),
        "10 attempts at once with burst 2 must be limited"
    );
    for a in limited {
        assert_error(a, 429, "Too Many Requests");
        let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry >= 1);
    }
    // 400 comes before 429: a malformed request is not counted as rate limited
    assert_error(&s.reserve("eager", &sku, 0).await, 400, "Bad Request");
    // another user is not limited
    assert_eq!(
        s.reserve("patient", &sku, 1).await.status,
        StatusCode::CREATED
    );
    s.stop().await;
}

/// 503 with Retry-After when the engine cannot answer: an embedded server whose
/// partition 0 cannot be recovered (its newest snapshot claims offsets the log does not
/// have) never becomes ready, and says so instead of queueing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecoverable_engine_is_503_with_retry_after() {
    use flashsale_engine::store::{FileSnapshotStore, SnapshotStore};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = TestServer::start_with(Mode::Embedded, |a| a.data_dir = data.clone())
        .await
        .unwrap();
    s.stop().await;
    let mut state = flashsale_engine::State::new(0);
    let tick = flashsale_proto::CommandRecord {
        request_id: flashsale_proto::RequestId(1),
        reply_to: flashsale_proto::NO_REPLY,
        idempotency_key: None,
        command: flashsale_proto::Command::Tick,
    };
    state.apply(99, 1, &tick, &mut Vec::new());
    let bytes = flashsale_engine::snapshot::encode(&state).unwrap();
    FileSnapshotStore::new(data.join("snapshots"))
        .save(0, 100, 1, &bytes)
        .unwrap();

    let mut args = serve_args(data);
    args.reply_deadline_ms = 300;
    let running = flashsale_ops::start(args).await.unwrap();
    let base = format!("http://{}", running.addr);
    let c = client();
    // Partition 0 is "recovering" until its recovery gives up: wait (bounded) until
    // /ready names it failed, so the answers below are the failed partition's.
    let mut ready = call(&c, &base, Method::GET, "/ready", None, &[]).await;
    for _ in 0..100 {
        if ready.body.to_string().contains("failedPartitions") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ready = call(&c, &base, Method::GET, "/ready", None, &[]).await;
    }
    assert_error(&ready, 503, "Service Unavailable");
    // Partitions fail alone: a SKU of the failed partition 0 gets 503 (a SKU of a
    // healthy partition would get that partition's real answer).
    let sku = (0..)
        .map(|i| format!("ANY{i}"))
        .find(|k| flashsale_proto::partition_for_key(k.as_bytes(), 4) == 0)
        .unwrap();
    let a = call(
        &c,
        &base,
        Method::POST,
        "/api/v1/reservations",
        Some(json!({"userId": "u", "skuId": sku, "quantity": 1})),
        &[],
    )
    .await;
    assert_error(&a, 503, "Service Unavailable");
    assert!(a.headers.contains_key("retry-after"));
    assert_eq!(a.body["details"]["partition"], 0, "{}", a.body);
    // health is about the process, not the engine
    assert_eq!(
        call(&c, &base, Method::GET, "/health", None, &[])
            .await
            .status,
        StatusCode::OK
    );
    running.stop().await.unwrap();
}

/// 503 with Retry-After when the engine does not answer within the deadline: a Kafka
/// gateway whose commands no engine consumes. The outcome is unknown, so the message
/// says to retry with the same Idempotency-Key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_deadline_is_503_with_retry_after() {
    let Some(svc) = kafka::services_or_skip("gateway without an engine") else {
        return;
    };
    let prefix = format!("flashsale-test-{}.", kafka::unique_id());
    let run = |args: Vec<String>| {
        std::process::Command::new(flashsale_bin())
            .args(args)
            .env_remove("FLASHSALE_POSTGRES")
            .output()
            .unwrap()
    };
    let o = run(vec![
        "topics".into(),
        "create".into(),
        "--kafka".into(),
        svc.kafka.clone(),
        "--topic-prefix".into(),
        prefix.clone(),
        "--partitions".into(),
        "2".into(),
        "--replies-partitions".into(),
        "1".into(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "gateway",
        "--kafka",
        &svc.kafka,
        "--topic-prefix",
        &prefix,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-token",
        TOKEN,
        "--gateway-id",
        "0",
        "--reply-deadline-ms",
        "500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut gw = kafka::Proc::spawn("gateway-no-engine", &args, dir.path()).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    wait_ready(&c, &base).await;
    let a = call(
        &c,
        &base,
        Method::POST,
        "/api/v1/reservations",
        Some(json!({"userId": "u", "skuId": "ANY-SKU", "quantity": 1})),
        &[("idempotency-key", "k-503")],
    )
    .await;
    assert_error(&a, 503, "Service Unavailable");
    assert_eq!(a.headers["retry-after"], "1");
    assert!(a.body["message"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    gw.kill9();
}

/// No input, however malformed, gets a 500, a panic or a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_4xx_never_500() {
    let s = TestServer::embedded().await;
    let sku = unique_sku("HOST");
    s.create_sale(&[(&sku, 5, 1)], 120, -1).await;
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"\"str\"".to_vec(),
        b"{\"userId\":\"u\",\"skuId\":\"x\",\"quantity\":1e400}".to_vec(),
        b"{\"userId\":\"u\",\"skuId\":\"x\",\"quantity\":18446744073709551616}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        b"{\"userId\":\"\xc3\x28\"}".to_vec(),
        "{".repeat(5000).into_bytes(),
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
    ];
    let paths = [
        ("POST", "/api/v1/reservations"),
        ("POST", "/api/v1/orders/checkout"),
        ("POST", "/api/v1/admin/sales"),
        ("DELETE", "/api/v1/reservations/%ff%fe"),
        ("GET", "/api/v1/reservations/res_%00"),
        ("GET", "/api/v1/products/%C0%AF/availability"),
        ("GET", "/api/v1/orders/user/%"),
        ("PATCH", "/api/v1/orders/checkout"),
    ];
    for (method, path) in paths {
        for body in &bodies {
            let res = s
                .client
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{}", s.base, path),
                )
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: connection failed: {e}"));
            let status = res.status();
            assert!(
                status.is_client_error(),
                "{method} {path} with {:?} → {status}",
                String::from_utf8_lossy(body)
            );
            let v: Value = res.json().await.expect("an error body is JSON");
            assert!(v["error"].as_str().is_some());
        }
    }
    // the server still serves
    assert_eq!(
        s.reserve("after", &sku, 1).await.status,
        StatusCode::CREATED
    );
    s.stop().await;
}
