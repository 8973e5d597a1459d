//! Kafka mode knows its deployment (issue 15, items 8 and 9), against the real broker
//! with the `flashsale` binary as child processes:
//!
//! 1. Two topic prefixes on one Postgres schema, each with engine (snapshots every few
//!    commands), gateway and projector: holds and orders of both; `flashsale audit`
//!    of each is clean and names the other's rows instead of failing.
//! 2. The first prefix's topics deleted; its processes started again *before* the
//!    topics exist (they wait, retrying quietly), then the topics recreated: the new
//!    log starts empty (no snapshot or projector offset of the old log is used), new
//!    holds and orders are served and projected, and `audit` of both logs is clean.
//!
//! Bounded waits; no timing assertions; loopback only. Needs the services
//! (`make services-up`) and the binary (`cargo build --bin flashsale`).

use flashsale_tests::kafka::{self, Proc, Services};
use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;
use std::path::Path;
use std::time::Duration;

const PARTITIONS: u32 = 2;

/// One deployment: a topic prefix with its engine group, on a shared database.
struct Deployment {
    svc: Services,
    prefix: String,
    group: String,
    postgres: String,
    port: u16,
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
        let mut g = vec!["gateway".to_string()];
        g.extend(self.common());
        g.extend(
            [
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--admin-token",
                TOKEN,
                "--rate-limit-per-user",
                "0",
            ]
            .map(String::from),
        );
        let mut p = vec!["projector".to_string()];
        p.extend(self.common());
        self.procs = vec![
            Proc::spawn(&format!("{tag}-engine"), &e, dir).unwrap(),
            Proc::spawn(&format!("{tag}-gateway"), &g, dir).unwrap(),
            Proc::spawn(&format!("{tag}-projector"), &p, dir).unwrap(),
        ];
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
/// (`<tag>-u<i>`) and checkouts of the first `orders`. Returns (reservation ids,
/// (user, order id)).
async fn sell(
    client: &reqwest::Client,
    base: &str,
    tag: &str,
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
        let b = json!({"userId": format!("{tag}-u{i}"), "skuId": sku, "quantity": 1});
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
            format!("{tag}-u{i}"),
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

async fn delete_topics(brokers: &str, prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let names: Vec<String> = ["commands", "events", "replies"]
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect();
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
        procs: Vec::new(),
    };
    let (mut a, mut b) = (deployment("a"), deployment("b"));
    let client = client();

    // 1. Two deployments on one database.
    for d in [&a, &b] {
        kafka::create_topics(&svc.kafka, &d.prefix, PARTITIONS, 1)
            .await
            .unwrap();
    }
    a.start("a1", dir.path());
    b.start("b1", dir.path());
    wait_ready(&client, &a.base()).await;
    wait_ready(&client, &b.base()).await;
    // More commands on A than B, so A's snapshots lie past the end of B's log.
    let (a_rids, a_orders) = sell(&client, &a.base(), "a1", "SKU-A", 40, 8).await;
    let (b_rids, b_orders) = sell(&client, &b.base(), "b1", "SKU-B", 6, 2).await;
    all_readable(&client, &a.base(), &a_rids, &a_orders).await;
    all_readable(&client, &b.base(), &b_rids, &b_orders).await;
    let ra = audit_clean(&a, dir.path(), "audit-a1").await;
    let rb = audit_clean(&b, dir.path(), "audit-b1").await;
    assert_eq!(ra["ordersChecked"], json!(a_orders.len()), "{ra}");
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
        "/api/v1/products/SKU-A/availability",
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
    let (a2_rids, a2_orders) = sell(&client, &a.base(), "a2", "SKU-A2", 6, 3).await;
    all_readable(&client, &a.base(), &a2_rids, &a2_orders).await;
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
