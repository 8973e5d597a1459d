//! Kafka mode knows its deployment (issue 15, items 8 and 9; issue 28), against the
//! real broker with the `flashsale` binary as child processes:
//!
//! 1. Two topic prefixes on one Postgres schema, each with engine (snapshots every few
//!    commands), gateway and projector, selling the SAME SKU to the SAME user ids:
//!    every read endpoint of each gateway answers its own deployment's data only
//!    (holds, orders by id and by user, products, availability, sales); `flashsale
//!    audit` of each is clean and names the other's rows instead of failing.
//! 2. Read-your-writes across gateways: a hold or order acknowledged by one gateway of
//!    a deployment is read at once (no retry) on its other gateway.
//! 3. The first prefix's topics deleted; its processes started again *before* the
//!    topics exist (they wait, retrying quietly), then the topics recreated: the new
//!    log starts empty (no snapshot or projector offset of the old log is used), new
//!    holds and orders are served and projected, the old log's orders stay readable
//!    (from Postgres), and `audit` of both logs is clean.
//! 4. `commands` and `events` deleted and recreated under load, processes running:
//!    each says so in one ERROR line naming the topic and both ids; a gateway without
//!    `--adopt-new-topics` answers `/ready` 503 with that reason, one with it (and the
//!    projector) follows the new log; no acknowledged order is lost; `audit` of the
//!    new log is clean.
//!
//! Bounded waits; no timing assertions; loopback only. Needs the services
//! (`make services-up`) and the binary (`cargo build --bin flashsale`).

use flashsale_tests::kafka::{self, Proc, Services};
use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const PARTITIONS: u32 = 2;

/// One deployment: a topic prefix with its engine group, on a shared database.
struct Deployment {
    svc: Services,
    prefix: String,
    group: String,
    postgres: String,
    port: u16,
    /// A second gateway (`--gateway-id 1`), if any.
    port2: Option<u16>,
    procs: Vec<Proc>,
}

impl Deployment {
    fn common(&self) -> Vec<String> {
        vec![
            "--kafka".into(),
            self.svc.kafka.clone(),
            "--topic-prefix".into(),
            self.prefix.clone(),
            "--postgres".into(),
            self.postgres.clone(),
        ]
    }
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// Engine, gateway and projector (named `<tag>-…` in `dir`).
    fn start(&mut self, tag: &str, dir: &Path) {
        let mut e = vec!["engine".to_string()];
        e.extend(self.common());
        e.extend(
            [
                "--engine-group",
                &self.group,
                "--snapshot-every-commands",
                "5",
                "--data-dir",
                dir.join(format!("{tag}-engine")).to_str().unwrap(),
            ]
            .map(String::from),
        );
        let gateway = |id: u32, port: u16| {
            let mut g = vec!["gateway".to_string()];
            g.extend(self.common());
            g.extend(
                [
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--gateway-id",
                    &id.to_string(),
                    "--admin-token",
                    TOKEN,
                    "--rate-limit-per-user",
                    "0",
                ]
                .map(String::from),
            );
            g
        };
        let mut p = vec!["projector".to_string()];
        p.extend(self.common());
        let mut procs = vec![
            Proc::spawn(&format!("{tag}-engine"), &e, dir).unwrap(),
            Proc::spawn(&format!("{tag}-gateway"), &gateway(0, self.port), dir).unwrap(),
            Proc::spawn(&format!("{tag}-projector"), &p, dir).unwrap(),
        ];
        if let Some(port2) = self.port2 {
            procs.push(Proc::spawn(&format!("{tag}-gateway1"), &gateway(1, port2), dir).unwrap());
        }
        self.procs = procs;
    }
    fn stop(&mut self) {
        for p in &mut self.procs {
            assert!(p.terminate(), "{} did not stop on SIGTERM", p.name);
        }
        self.procs.clear();
    }
    fn all_running(&mut self) -> bool {
        self.procs.iter_mut().all(|p| p.is_running())
    }
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// A sale of `sku` (100 units, limit 1), then `holds` holds by distinct users
/// (`<users>-u<i>`) and checkouts of the first `orders`. Returns (reservation ids,
/// (user, order id)).
async fn sell(
    client: &reqwest::Client,
    base: &str,
    (tag, users): (&str, &str),
    sku: &str,
    holds: usize,
    orders: usize,
) -> (Vec<String>, Vec<(String, String)>) {
    let body = json!({"name": format!("Sale {tag}"), "startsAt": time_in(-5), "endsAt": time_in(7200),
        "reservationTtlSeconds": 3600,
        "products": [{"skuId": sku, "name": sku, "basePrice": 10.0, "flashSalePrice": 5.0,
            "totalInventory": 100, "perUserLimit": 1}]});
    eventually(&format!("{tag}: sale created"), 60, || async {
        let a = call(
            client,
            base,
            Method::POST,
            "/api/v1/admin/sales",
            Some(body.clone()),
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
        (a.status == StatusCode::CREATED).then_some(())
    })
    .await;
    let mut rids = Vec::new();
    for i in 0..holds {
        let b = json!({"userId": format!("{users}-u{i}"), "skuId": sku, "quantity": 1});
        let key = format!("{tag}-hold-{i}");
        let a = eventually(&format!("{tag}: hold {i}"), 60, || async {
            let a = call(
                client,
                base,
                Method::POST,
                "/api/v1/reservations",
                Some(b.clone()),
                &[("idempotency-key", &key)],
            )
            .await;
            (a.status != StatusCode::SERVICE_UNAVAILABLE).then_some(a)
        })
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{tag}: hold {i}: {}", a.body);
        rids.push(a.body["reservationId"].as_str().unwrap().to_string());
    }
    let mut out = Vec::new();
    for (i, rid) in rids.iter().take(orders).enumerate() {
        let b = json!({"reservationId": rid, "paymentTransactionId": format!("{tag}-pay-{i}"),
            "paymentMethod": "CREDIT_CARD", "shippingAddress": "1 Test Street"});
        let a = eventually(&format!("{tag}: checkout {i}"), 60, || async {
            let a = call(
                client,
                base,
                Method::POST,
                "/api/v1/orders/checkout",
                Some(b.clone()),
                &[],
            )
            .await;
            (a.status != StatusCode::SERVICE_UNAVAILABLE).then_some(a)
        })
        .await;
        assert!(a.status.is_success(), "{tag}: checkout {i}: {}", a.body);
        out.push((
            format!("{users}-u{i}"),
            a.body["orderId"].as_str().unwrap().to_string(),
        ));
    }
    (rids, out)
}

/// Every hold answers 200 and every order is readable (by id and in its user's list).
async fn all_readable(
    client: &reqwest::Client,
    base: &str,
    rids: &[String],
    orders: &[(String, String)],
) {
    for rid in rids {
        let a = eventually("hold readable", 30, || async {
            let a = call(
                client,
                base,
                Method::GET,
                &format!("/api/v1/reservations/{rid}"),
                None,
                &[],
            )
            .await;
            (a.status != StatusCode::SERVICE_UNAVAILABLE).then_some(a)
        })
        .await;
        assert_eq!(a.status, StatusCode::OK, "reservation {rid}: {}", a.body);
    }
    for (user, oid) in orders {
        eventually(&format!("order {oid} projected"), 60, || async {
            let a = call(
                client,
                base,
                Method::GET,
                &format!("/api/v1/orders/{oid}"),
                None,
                &[],
            )
            .await;
            (a.status == StatusCode::OK).then_some(())
        })
        .await;
        let list = call(
            client,
            base,
            Method::GET,
            &format!("/api/v1/orders/user/{user}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            list.body.as_array().map(Vec::len),
            Some(1),
            "orders of {user}: {}",
            list.body
        );
    }
}

/// `flashsale audit --json` of `d` until clean (bounded: the projector may trail by
/// a moment); returns its report.
async fn audit_clean(d: &Deployment, dir: &Path, name: &str) -> Value {
    for _ in 0..20 {
        let mut args = vec!["audit".to_string(), "--quiet".into(), "--json".into()];
        args.extend(d.common());
        let out = std::process::Command::new(flashsale_bin())
            .args(&args)
            .env_remove("FLASHSALE_KAFKA")
            .env_remove("FLASHSALE_POSTGRES")
            .output()
            .unwrap();
        std::fs::write(
            dir.join(format!("{name}.log")),
            [&out.stdout[..], &out.stderr[..]].concat(),
        )
        .unwrap();
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("audit --json prints JSON");
        }
        assert_ne!(
            out.status.code(),
            Some(2),
            "audit could not run: {}",
            log(dir, name)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("flashsale audit found problems: {}", log(dir, name));
}

const SHARED_SKU: &str = "SKU-SHARED";

/// Every read endpoint of `mine` answers its own deployment only: its holds and
/// orders, none of `theirs` (same SKU, same user ids); its product with its own
/// stock (`available`); its own sale.
async fn kept_apart(
    client: &reqwest::Client,
    (base, rids, orders, available): (&str, &[String], &[(String, String)], u64),
    (_, their_rids, their_orders): (&str, &[String], &[(String, String)]),
) {
    let get = |path: String| async move { call(client, base, Method::GET, &path, None, &[]).await };
    for rid in their_rids {
        let a = get(format!("/api/v1/reservations/{rid}")).await;
        assert_eq!(
            a.status,
            StatusCode::NOT_FOUND,
            "{base}: their hold {rid}: {}",
            a.body
        );
    }
    for (user, oid) in their_orders {
        let a = get(format!("/api/v1/orders/{oid}")).await;
        assert_eq!(
            a.status,
            StatusCode::NOT_FOUND,
            "{base}: their order {oid}: {}",
            a.body
        );
        // The same user id here has exactly its orders here.
        let list = get(format!("/api/v1/orders/user/{user}")).await;
        let mine: Vec<&str> = orders
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, o)| o.as_str())
            .collect();
        let ids: Vec<&str> = list
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["orderId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, mine, "{base}: orders of {user}: {}", list.body);
    }
    for rid in rids {
        let a = get(format!("/api/v1/reservations/{rid}")).await;
        assert_eq!(
            a.status,
            StatusCode::OK,
            "{base}: own hold {rid}: {}",
            a.body
        );
    }
    let a = get(format!("/api/v1/products/{SHARED_SKU}/availability")).await;
    assert_eq!(
        a.body["availableCount"],
        json!(available),
        "{base}: availability: {}",
        a.body
    );
    let list = get("/api/v1/products".to_string()).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    let text = list.body.to_string();
    assert_eq!(
        text.matches(&format!("\"skuId\":\"{SHARED_SKU}\"")).count(),
        1,
        "{base}: one product: {text}"
    );
    assert!(
        text.contains(&format!("\"availableCount\":{available}")),
        "{base}: {text}"
    );
    let sales = call(
        client,
        base,
        Method::GET,
        "/api/v1/admin/sales",
        None,
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(sales.status, StatusCode::OK, "{}", sales.body);
    assert_eq!(
        sales.body.to_string().matches("\"saleId\"").count(),
        1,
        "{base}: one sale: {}",
        sales.body
    );
}

/// `n` holds and checkouts on `writer`, each read at once on `reader`: hold by id,
/// order by id, the user's orders. No retry: the reader catches up before it answers.
async fn read_your_writes(
    client: &reqwest::Client,
    writer: &str,
    reader: &str,
    tag: &str,
    n: usize,
) {
    let (rids, orders) = sell(client, writer, (tag, tag), &format!("SKU-{tag}"), n, n).await;
    // `sell` holds all, then checks out all: read each again now, and each new write
    // right after it is acknowledged.
    for (rid, (user, oid)) in rids.iter().zip(&orders) {
        let h = call(
            client,
            reader,
            Method::GET,
            &format!("/api/v1/reservations/{rid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            h.status,
            StatusCode::OK,
            "hold {rid} on the other gateway: {}",
            h.body
        );
        let o = call(
            client,
            reader,
            Method::GET,
            &format!("/api/v1/orders/{oid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            o.status,
            StatusCode::OK,
            "order {oid} on the other gateway: {}",
            o.body
        );
        let l = call(
            client,
            reader,
            Method::GET,
            &format!("/api/v1/orders/user/{user}"),
            None,
            &[],
        )
        .await;
        assert!(
            l.body.to_string().contains(oid.as_str()),
            "{user}'s orders on the other gateway: {}",
            l.body
        );
    }
    for i in 0..n {
        let user = format!("{tag}-w{i}");
        let h = call(
            client,
            writer,
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": user, "skuId": format!("SKU-{tag}"), "quantity": 1})),
            &[],
        )
        .await;
        assert_eq!(h.status, StatusCode::CREATED, "{}", h.body);
        let rid = h.body["reservationId"].as_str().unwrap().to_string();
        let r = call(
            client,
            reader,
            Method::GET,
            &format!("/api/v1/reservations/{rid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "hold {rid} read at once on the other gateway: {}",
            r.body
        );
        let c = call(
            client,
            writer,
            Method::POST,
            "/api/v1/orders/checkout",
            Some(
                json!({"reservationId": rid, "paymentTransactionId": format!("{tag}-wpay-{i}"),
                "paymentMethod": "UPI", "shippingAddress": "2 Test Street"}),
            ),
            &[],
        )
        .await;
        assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
        let oid = c.body["orderId"].as_str().unwrap();
        let o = call(
            client,
            reader,
            Method::GET,
            &format!("/api/v1/orders/{oid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            o.status,
            StatusCode::OK,
            "order {oid} read at once on the other gateway: {}",
            o.body
        );
        let l = call(
            client,
            reader,
            Method::GET,
            &format!("/api/v1/orders/user/{user}"),
            None,
            &[],
        )
        .await;
        assert!(
            l.body.to_string().contains(oid),
            "{user}'s orders at once on the other gateway: {}",
            l.body
        );
    }
}

async fn delete_topics(brokers: &str, prefix: &str) {
    delete_some_topics(brokers, prefix, &["commands", "events", "replies"]).await
}

async fn delete_some_topics(brokers: &str, prefix: &str, which: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let names: Vec<String> = which.iter().map(|t| format!("{prefix}{t}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for r in admin
        .delete_topics(&refs, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap_or_else(|(t, e)| panic!("delete {t}: {e}"));
    }
    // Deletion is asynchronous on the broker: wait until the names are gone.
    let b = brokers.to_string();
    let n = names.clone();
    eventually("topics deleted", 60, || {
        let (b, n) = (b.clone(), n.clone());
        async move {
            let counts = tokio::task::spawn_blocking(move || {
                let r: Vec<&str> = n.iter().map(String::as_str).collect();
                flashsale_runtime::kafka::partition_counts(&b, &r)
            })
            .await
            .unwrap()
            .ok()?;
            counts.iter().all(Option::is_none).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_prefixes_on_one_database_and_recreated_topics() {
    let Some(svc) = kafka::services_or_skip("kafka_deploy") else {
        return;
    };
    let Some(pg) = svc.postgres.clone() else {
        assert!(!kafka::services_required(), "kafka_deploy needs Postgres");
        eprintln!("kafka_deploy: no Postgres configured; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let id = kafka::unique_id();
    let shared = kafka::fresh_postgres(&pg, &id).await.unwrap();
    let deployment = |n: &str| Deployment {
        svc: svc.clone(),
        prefix: format!("flashsale-test-{id}-{n}."),
        group: format!("flashsale-test-{id}-{n}-engine"),
        postgres: shared.clone(),
        port: free_port(),
        port2: None,
        procs: Vec::new(),
    };
    let (mut a, mut b) = (deployment("a"), deployment("b"));
    a.port2 = Some(free_port());
    let client = client();

    // 1. Two deployments on one database, the same SKU and the same user ids.
    for d in [&a, &b] {
        kafka::create_topics(&svc.kafka, &d.prefix, PARTITIONS, 2)
            .await
            .unwrap();
    }
    a.start("a1", dir.path());
    b.start("b1", dir.path());
    wait_ready(&client, &a.base()).await;
    wait_ready(&client, &b.base()).await;
    // More commands on A than B, so A's snapshots lie past the end of B's log.
    let (a_rids, a_orders) = sell(&client, &a.base(), ("a1", "u"), SHARED_SKU, 40, 8).await;
    let (b_rids, b_orders) = sell(&client, &b.base(), ("b1", "u"), SHARED_SKU, 6, 2).await;
    all_readable(&client, &a.base(), &a_rids, &a_orders).await;
    all_readable(&client, &b.base(), &b_rids, &b_orders).await;
    kept_apart(
        &client,
        (&a.base(), &a_rids, &a_orders, 60),
        (&b.base(), &b_rids, &b_orders),
    )
    .await;
    kept_apart(
        &client,
        (&b.base(), &b_rids, &b_orders, 94),
        (&a.base(), &a_rids, &a_orders),
    )
    .await;

    // 2. Read-your-writes across A's two gateways: acknowledged on one, read at once
    //    (no retry) on the other.
    let a2_base = format!("http://127.0.0.1:{}", a.port2.unwrap());
    wait_ready(&client, &a2_base).await;
    read_your_writes(&client, &a.base(), &a2_base, "ryw", 20).await;
    let ra = audit_clean(&a, dir.path(), "audit-a1").await;
    let rb = audit_clean(&b, dir.path(), "audit-b1").await;
    // A's orders: the sale's, and read_your_writes' 20 + 20.
    assert_eq!(ra["ordersChecked"], json!(a_orders.len() + 40), "{ra}");
    assert_eq!(rb["ordersChecked"], json!(b_orders.len()), "{rb}");
    let notes = rb["otherLogs"].to_string();
    assert!(
        notes.contains(&format!("{}commands", a.prefix)),
        "B's audit names A's snapshots: {rb}"
    );

    // 2. A's topics deleted; A's processes started before they exist again.
    a.stop();
    delete_topics(&svc.kafka, &a.prefix).await;
    a.start("a2", dir.path());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        a.all_running(),
        "a process gave up while the topics were missing: {}\n{}",
        log(dir.path(), "a2-engine"),
        log(dir.path(), "a2-gateway")
    );
    kafka::create_topics(&svc.kafka, &a.prefix, PARTITIONS, 1)
        .await
        .unwrap();
    wait_ready(&client, &a.base()).await;
    // The new log is empty: the old sale's product is gone, not resurrected from a
    // snapshot of the deleted log.
    let old = call(
        &client,
        &a.base(),
        Method::GET,
        &format!("/api/v1/products/{SHARED_SKU}/availability"),
        None,
        &[],
    )
    .await;
    assert_eq!(
        old.status,
        StatusCode::NOT_FOUND,
        "old log's product: {}",
        old.body
    );
    let (a2_rids, a2_orders) = sell(&client, &a.base(), ("a2", "v"), "SKU-A2", 6, 3).await;
    all_readable(&client, &a.base(), &a2_rids, &a2_orders).await;
    // The old log's orders are still A's: read from Postgres (history), not B's.
    for (user, oid) in &a_orders {
        let o = call(
            &client,
            &a.base(),
            Method::GET,
            &format!("/api/v1/orders/{oid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            o.status,
            StatusCode::OK,
            "old log's order {oid} on A: {}",
            o.body
        );
        let list = call(
            &client,
            &a.base(),
            Method::GET,
            &format!("/api/v1/orders/user/{user}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            list.body.as_array().map(Vec::len),
            Some(1),
            "A's {user}: {}",
            list.body
        );
        let on_b = call(
            &client,
            &b.base(),
            Method::GET,
            &format!("/api/v1/orders/{oid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            on_b.status,
            StatusCode::NOT_FOUND,
            "A's order {oid} on B: {}",
            on_b.body
        );
    }
    let ra2 = audit_clean(&a, dir.path(), "audit-a2").await;
    assert_eq!(ra2["ordersChecked"], json!(a2_orders.len()), "{ra2}");
    assert!(
        ra2["otherLogs"]
            .to_string()
            .contains("order(s) were projected from"),
        "{ra2}"
    );
    audit_clean(&b, dir.path(), "audit-b2").await;
    all_readable(&client, &b.base(), &b_rids, &b_orders).await;
    let engine_log = log(dir.path(), "a2-engine");
    assert!(
        engine_log.contains("waiting for Kafka"),
        "one line naming what it waits for: {engine_log}"
    );
    assert!(
        engine_log.contains("refusing snapshots of another log"),
        "{engine_log}"
    );
    a.stop();
    b.stop();
}

/// A deployment on a fresh topic prefix (`…-<tag>.`) and a fresh database, not
/// started; `None` (the test skips) without the services.
async fn fresh_deployment(tag: &str) -> Option<Deployment> {
    let svc = kafka::services_or_skip("kafka_deploy")?;
    let Some(pg) = svc.postgres.clone() else {
        assert!(!kafka::services_required(), "kafka_deploy needs Postgres");
        return None;
    };
    let id = kafka::unique_id();
    Some(Deployment {
        prefix: format!("flashsale-test-{id}-{tag}."),
        group: format!("flashsale-test-{id}-{tag}-engine"),
        postgres: kafka::fresh_postgres(&pg, &id).await.unwrap(),
        svc,
        port: free_port(),
        port2: None,
        procs: Vec::new(),
    })
}

/// The ids of `prefix`'s topics `which`, as the broker gives them now.
async fn topic_ids(brokers: &str, prefix: &str, which: &[&str]) -> Vec<String> {
    let (b, names): (String, Vec<String>) = (
        brokers.to_string(),
        which.iter().map(|t| format!("{prefix}{t}")).collect(),
    );
    tokio::task::spawn_blocking(move || {
        names
            .iter()
            .map(|t| {
                flashsale_runtime::kafka_id::topic_identity(&b, t, Duration::from_secs(5))
                    .unwrap()
                    .id
            })
            .collect()
    })
    .await
    .unwrap()
}

type Load = (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    tokio::task::JoinHandle<Vec<(String, String)>>,
);

/// Holds and checkouts (SKU-R1, one user each) on `base` until told to stop; the
/// acknowledged orders as (user, order id).
fn load(client: &reqwest::Client, base: &str, tag: &str) -> Load {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (client, base, stop2, tag) = (
        client.clone(),
        base.to_string(),
        stop.clone(),
        tag.to_string(),
    );
    let task =
        tokio::spawn(async move {
            let mut acked: Vec<(String, String)> = Vec::new();
            let mut i = 0u32;
            while !stop2.load(std::sync::atomic::Ordering::Acquire) && i < 20_000 {
                i += 1;
                let user = format!("{tag}-{i}");
                let h = call(
                    &client,
                    &base,
                    Method::POST,
                    "/api/v1/reservations",
                    Some(json!({"userId": user, "skuId": "SKU-R1", "quantity": 1})),
                    &[("idempotency-key", &format!("{tag}-hold-{i}"))],
                )
                .await;
                let Some(rid) = h.body["reservationId"]
                    .as_str()
                    .filter(|_| h.status == StatusCode::CREATED)
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let c = call(&client, &base, Method::POST, "/api/v1/orders/checkout",
                Some(json!({"reservationId": rid, "paymentTransactionId": format!("{tag}-pay-{i}"),
                    "paymentMethod": "UPI", "shippingAddress": "3 Load Street"})), &[]).await;
                if c.status == StatusCode::CREATED {
                    acked.push((user, c.body["orderId"].as_str().unwrap().to_string()));
                }
            }
            acked
        });
    (stop, task)
}

/// The ERROR lines of a process's (JSON) log.
fn error_lines(dir: &Path, name: &str) -> Vec<String> {
    log(dir, name)
        .lines()
        .filter(|l| l.contains("\"ERROR\""))
        .map(str::to_string)
        .collect()
}

/// Issue 28, item 3: `commands` and `events` deleted and recreated under load while
/// every process runs. Each process says so in one ERROR line naming the topic and
/// both ids and never serves the old state again; a gateway without
/// `--adopt-new-topics` answers `/ready` 503 with that reason; with it (and the
/// projector, and the engine: FLASHSALE_ADOPT_NEW_TOPICS) the deployment goes on on
/// the new log. No acknowledged order is lost: every one stays readable, and `audit`
/// of the new log is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_topics_under_load_are_refused_or_adopted_never_served_stale() {
    let Some(mut d) = fresh_deployment("r").await else {
        return;
    };
    let svc = d.svc.clone();
    let dir = tempfile::tempdir().unwrap();
    let waiting_port = free_port();
    kafka::create_topics(&svc.kafka, &d.prefix, PARTITIONS, 2)
        .await
        .unwrap();
    let adopt = [("FLASHSALE_ADOPT_NEW_TOPICS", "true")];
    // Engine, gateway 0 and projector adopt new topics; gateway 1 waits for the operator.
    let mut e = vec!["engine".to_string()];
    e.extend(d.common());
    e.extend([
        "--engine-group".to_string(),
        d.group.clone(),
        "--data-dir".into(),
        dir.path().join("engine").to_str().unwrap().to_string(),
    ]);
    let gateway = |gid: u32, port: u16| {
        let mut g = vec!["gateway".to_string()];
        g.extend(d.common());
        g.extend([
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--gateway-id".into(),
            gid.to_string(),
            "--admin-token".into(),
            TOKEN.into(),
            "--rate-limit-per-user".into(),
            "0".into(),
        ]);
        g
    };
    let mut p = vec!["projector".to_string()];
    p.extend(d.common());
    d.procs = vec![
        Proc::spawn_with_env("r-engine", &e, &adopt, dir.path()).unwrap(),
        Proc::spawn_with_env("r-gateway0", &gateway(0, d.port), &adopt, dir.path()).unwrap(),
        Proc::spawn("r-gateway1", &gateway(1, waiting_port), dir.path()).unwrap(),
        Proc::spawn_with_env("r-projector", &p, &adopt, dir.path()).unwrap(),
    ];
    let client = client();
    let waiting = format!("http://127.0.0.1:{waiting_port}");
    wait_ready(&client, &d.base()).await;
    wait_ready(&client, &waiting).await;
    let (_, before) = sell(&client, &d.base(), ("r1", "u"), "SKU-R1", 10, 10).await;
    let old_ids = topic_ids(&svc.kafka, &d.prefix, &["commands", "events"]).await;

    // Load: holds and checkouts on gateway 0, every acknowledged order noted. Phase 1
    // on the old log, until its orders are projected (deleting a topic deletes what
    // nobody read of it yet); phase 2 all through the deletion and recreation.
    let phase1 = load(&client, &d.base(), "p1");
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase1.0.store(true, std::sync::atomic::Ordering::Release);
    let phase1 = phase1.1.await.unwrap();
    assert!(!phase1.is_empty(), "the load got orders acknowledged");
    let pool = flashsale_runtime::pg::connect(&d.postgres, 1).unwrap();
    let ids: Vec<String> = phase1
        .iter()
        .chain(&before)
        .map(|(_, o)| o.clone())
        .collect();
    eventually("phase 1's orders projected", 60, || async {
        let c = pool.get().await.ok()?;
        let n: i64 = c
            .query_one(
                "SELECT count(DISTINCT order_id) FROM orders WHERE order_id = ANY($1)",
                &[&ids],
            )
            .await
            .ok()?
            .get(0);
        (n == ids.len() as i64).then_some(())
    })
    .await;
    let phase2 = load(&client, &d.base(), "p2");
    delete_some_topics(&svc.kafka, &d.prefix, &["commands", "events"]).await;
    kafka::create_topics(&svc.kafka, &d.prefix, PARTITIONS, 2)
        .await
        .unwrap();
    let new_ids = topic_ids(&svc.kafka, &d.prefix, &["commands", "events"]).await;
    assert_ne!(old_ids, new_ids);

    // The gateway that waits for the operator: 503 on /ready, naming the topics and ids.
    let reason = eventually(
        "the waiting gateway's /ready names the recreated topics",
        60,
        || async {
            let r = call(&client, &waiting, Method::GET, "/ready", None, &[]).await;
            let text = r.body.to_string();
            (r.status == StatusCode::SERVICE_UNAVAILABLE && text.contains(&new_ids[1]))
                .then_some(text)
        },
    )
    .await;
    for (topic, (old, new)) in ["commands", "events"]
        .iter()
        .zip(old_ids.iter().zip(&new_ids))
    {
        assert!(
            reason.contains(&format!("{}{topic}", d.prefix))
                && reason.contains(old.as_str())
                && reason.contains(new.as_str()),
            "/ready names {topic} with both ids: {reason}"
        );
    }
    // Reads do not answer from the old log's state.
    let stale = call(
        &client,
        &waiting,
        Method::GET,
        "/api/v1/products/SKU-R1/availability",
        None,
        &[],
    )
    .await;
    assert_eq!(
        stale.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        stale.body
    );

    // The adopting processes go on on the new log: a new sale is sold and projected.
    eventually("gateway 0 adopted the new log", 120, || async {
        let r = call(&client, &d.base(), Method::GET, "/ready", None, &[]).await;
        (r.status == StatusCode::OK).then_some(())
    })
    .await;
    phase2.0.store(true, std::sync::atomic::Ordering::Release);
    let mut acked = phase2.1.await.unwrap();
    acked.extend(phase1);
    let (_, after) = sell(&client, &d.base(), ("r2", "v"), "SKU-R2", 5, 5).await;

    // One ERROR line per process naming each recreated topic with both ids.
    for name in ["r-gateway0", "r-gateway1", "r-projector", "r-engine"] {
        let lines = error_lines(dir.path(), name);
        let named = |topic: &str, old: &str, new: &str| {
            lines.iter().any(|l| {
                l.contains(&format!("{}{topic}", d.prefix)) && l.contains(old) && l.contains(new)
            })
        };
        assert!(
            named("events", &old_ids[1], &new_ids[1])
                || named("commands", &old_ids[0], &new_ids[0]),
            "{name} says in an ERROR line which topic was recreated, with both ids: {lines:?}\n{}",
            log(dir.path(), name)
        );
    }
    // No acknowledged order lost: every one (before, during, after) is readable.
    for (user, oid) in before.iter().chain(&acked).chain(&after) {
        let o = eventually(&format!("order {oid} readable"), 60, || async {
            let o = call(
                &client,
                &d.base(),
                Method::GET,
                &format!("/api/v1/orders/{oid}"),
                None,
                &[],
            )
            .await;
            (o.status != StatusCode::SERVICE_UNAVAILABLE).then_some(o)
        })
        .await;
        assert_eq!(
            o.status,
            StatusCode::OK,
            "acknowledged order {oid} of {user}: {}",
            o.body
        );
    }
    let report = audit_clean(&d, dir.path(), "audit-r").await;
    let checked = report["ordersChecked"].as_u64().unwrap_or(0);
    assert!(
        checked >= after.len() as u64,
        "the new log's orders are audited: {report}"
    );
    d.stop();
}

/// Issue 28 (regression; the fresh-clone CI run of 12da093 failed on it): an engine
/// that had not yet seen its topic recreated committed its old log's offsets onto the
/// new topic of the same name; the next engine started at that offset, far past the
/// new log's end, and answered nothing for a minute. Offsets carry the topic id they
/// were committed against (commit metadata), and one of another topic id is not used:
/// here a commit of offset 500 "of" another topic id is planted in the engine group
/// before the engine starts, and the deployment must serve at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_committed_against_a_deleted_topic_is_not_used() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let Some(mut d) = fresh_deployment("o").await else {
        return;
    };
    let svc = d.svc.clone();
    let dir = tempfile::tempdir().unwrap();
    kafka::create_topics(&svc.kafka, &d.prefix, PARTITIONS, 2)
        .await
        .unwrap();
    let (brokers, group, topic) = (
        svc.kafka.clone(),
        d.group.clone(),
        format!("{}commands", d.prefix),
    );
    let planted = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS as i32 {
            let mut e = tpl.add_partition(&topic, p);
            e.set_offset(Offset::Offset(500)).unwrap();
            e.set_metadata("00000000-0000-0000-0000-00000000dead");
        }
        c.commit(&tpl, CommitMode::Sync).unwrap();
        let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
        got.elements()
            .iter()
            .all(|e| e.offset() == Offset::Offset(500))
    })
    .await
    .unwrap();
    assert!(planted, "the old log's commits are in the engine group");
    d.start("o", dir.path());
    let client = client();
    wait_ready(&client, &d.base()).await;
    let (rids, orders) = sell(&client, &d.base(), ("o1", "w"), "SKU-O1", 4, 2).await;
    all_readable(&client, &d.base(), &rids, &orders).await;
    let engine_log = log(dir.path(), "o-engine");
    assert!(
        engine_log.contains("ignoring a committed offset of another log"),
        "the engine says it did not use the planted commit: {engine_log}"
    );
    audit_clean(&d, dir.path(), "audit-o").await;
    d.stop();
}

/// A TCP forwarder to `to` on a free loopback port: while `up` is false it closes
/// every connection at once (Postgres "down"); then it forwards them.
async fn switchable_proxy(to: std::net::SocketAddr, up: Arc<std::sync::atomic::AtomicBool>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            if !up.load(std::sync::atomic::Ordering::Acquire) {
                drop(c);
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut s) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                }
            });
        }
    });
    port
}

/// Issue 28, repro 4 and item 4: an engine started while its Postgres is down takes
/// its partitions from the log at once (it does not wait for Postgres), the
/// deployment sells, and once Postgres is back the engine writes its snapshots there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_started_while_postgres_is_down_serves_and_snapshots_once_it_is_back() {
    let Some(svc) = kafka::services_or_skip("kafka_deploy") else {
        return;
    };
    let Some(pg) = svc.postgres.clone() else {
        assert!(!kafka::services_required(), "kafka_deploy needs Postgres");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let id = kafka::unique_id();
    let prefix = format!("flashsale-test-{id}-p.");
    let database = kafka::fresh_postgres(&pg, &id).await.unwrap();
    // The same database, through the switchable forwarder.
    let url = reqwest::Url::parse(&database).unwrap();
    let target: std::net::SocketAddr =
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
            .parse()
            .unwrap();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy_port = switchable_proxy(target, up.clone()).await;
    let mut via_proxy = url.clone();
    via_proxy.set_port(Some(proxy_port)).unwrap();
    kafka::create_topics(&svc.kafka, &prefix, PARTITIONS, 2)
        .await
        .unwrap();
    let port = free_port();
    let common = |pg: &str| {
        vec![
            "--kafka".to_string(),
            svc.kafka.clone(),
            "--topic-prefix".into(),
            prefix.clone(),
            "--postgres".into(),
            pg.to_string(),
        ]
    };
    let mut e = vec!["engine".to_string()];
    e.extend(common(via_proxy.as_str()));
    e.extend(
        [
            "--engine-group",
            &format!("flashsale-test-{id}-p-engine"),
            "--snapshot-every-commands",
            "5",
        ]
        .map(String::from),
    );
    let mut g = vec!["gateway".to_string()];
    g.extend(common(&database));
    g.extend(
        [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-token",
            TOKEN,
            "--rate-limit-per-user",
            "0",
        ]
        .map(String::from),
    );
    let mut procs = vec![
        Proc::spawn("p-engine", &e, dir.path()).unwrap(),
        Proc::spawn("p-gateway", &g, dir.path()).unwrap(),
    ];
    let client = client();
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&client, &base).await;
    // Postgres is down for the engine all along this sale.
    let (rids, orders) = sell(&client, &base, ("p1", "x"), "SKU-P1", 6, 3).await;
    assert!(
        !up.load(std::sync::atomic::Ordering::Acquire),
        "sold while the engine's Postgres was down"
    );
    let engine_log = log(dir.path(), "p-engine");
    assert!(
        engine_log.contains("Postgres does not answer"),
        "the engine says it goes on without Postgres: {engine_log}"
    );
    let pool = flashsale_runtime::pg::connect(&database, 1).unwrap();
    let snapshots = || async {
        let c = pool.get().await.ok()?;
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM engine_snapshots WHERE log_id LIKE $1",
                &[&format!("{prefix}commands/%")],
            )
            .await
            .ok()?
            .get(0);
        Some(n)
    };
    assert_eq!(
        snapshots().await,
        Some(0),
        "no snapshot reached Postgres while it was down"
    );
    // Postgres back: more commands, and the engine's snapshots arrive.
    up.store(true, std::sync::atomic::Ordering::Release);
    let (rids2, orders2) = sell(&client, &base, ("p2", "y"), "SKU-P2", 12, 2).await;
    eventually("the engine's snapshots in Postgres", 90, || async {
        snapshots().await.filter(|n| *n > 0)
    })
    .await;
    all_readable(&client, &base, &rids, &orders).await;
    all_readable(&client, &base, &rids2, &orders2).await;
    for p in &mut procs {
        assert!(p.terminate(), "{} did not stop on SIGTERM", p.name);
    }
}
