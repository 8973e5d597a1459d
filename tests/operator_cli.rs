//! The operators' tools (`flashsale replay`, `audit`, `snapshot`) against real data:
//! - replay to a time in the middle of a sale shows exactly the stock the HTTP API
//!   reported at that moment, and replay to the end the stock it reports now;
//! - a corrupted snapshot: replay falls back to the one before and says so, and
//!   `snapshot verify` exits 1 naming it;
//! - audit is clean after a sale; an extra order row inserted straight into Postgres
//!   makes it exit 1 naming the order;
//! - replay and audit give the same answers in embedded and in Kafka mode for the
//!   same workload.

use flashsale_proto::partition_for_key;
use flashsale_tests::reqwest::Method;
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;
use std::process::Output;
use std::time::Duration;

const PARTITIONS: u32 = 4;

fn flashsale(args: &[String]) -> Output {
    std::process::Command::new(flashsale_bin())
        .args(args)
        .env_remove("FLASHSALE_KAFKA")
        .env_remove("FLASHSALE_POSTGRES")
        .output()
        .expect("run flashsale")
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// Stock per SKU from a replay's JSON output, in the order of `skus`.
fn replay_stock(v: &Value, skus: &[String]) -> Vec<(u64, u64, u64)> {
    skus.iter()
        .map(|s| {
            let p = v["products"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["sku"] == s.as_str())
                .unwrap_or_else(|| panic!("{s} not in {v}"));
            (
                p["available"].as_u64().unwrap(),
                p["held"].as_u64().unwrap(),
                p["sold"].as_u64().unwrap(),
            )
        })
        .collect()
}

struct Recorded {
    skus: Vec<String>,
    mid_time: String,
    mid_available: Vec<u64>,
    end_available: Vec<u64>,
    buyers_with_orders: Vec<String>,
}

async fn available(c: &reqwest::Client, base: &str, sku: &str) -> u64 {
    call(
        c,
        base,
        Method::GET,
        &format!("/api/v1/products/{sku}/availability"),
        None,
        &[],
    )
    .await
    .body["availableCount"]
        .as_u64()
        .unwrap()
}

/// A deterministic sale (sequential requests): holds, checkouts, cancels, sell-out.
/// Records the stock the API reported at a quiet moment in the middle, and its time.
async fn workload(base: &str, tag: &str) -> Recorded {
    let c = client();
    let skus = vec![
        unique_sku(&format!("OPS-{tag}-A")),
        unique_sku(&format!("OPS-{tag}-B")),
    ];
    create_sale(&c, base, &[(&skus[0], 30, 1), (&skus[1], 20, 1)], 120, -1).await;
    let mut buyers_with_orders = Vec::new();
    let step = |i: usize| (format!("ops-{tag}-user-{i}"), skus[i % 2].clone());
    for i in 0..40 {
        let (user, sku) = step(i);
        let a = call(
            &c,
            base,
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": user, "skuId": sku, "quantity": 1})),
            &[],
        )
        .await;
        assert_eq!(a.status.as_u16(), 201, "{}", a.body);
        let rid = a.body["reservationId"].as_str().unwrap().to_string();
        if i % 4 == 0 {
            let o = call(&c, base, Method::POST, "/api/v1/orders/checkout",
                Some(json!({"reservationId": rid, "paymentTransactionId": format!("pay-{i}"), "paymentMethod": "UPI", "shippingAddress": "1 Ops St"})), &[]).await;
            assert_eq!(o.status.as_u16(), 201, "{}", o.body);
            buyers_with_orders.push(user);
        } else if i % 5 == 0 {
            let d = call(
                &c,
                base,
                Method::DELETE,
                &format!("/api/v1/reservations/{rid}"),
                None,
                &[],
            )
            .await;
            assert_eq!(d.status.as_u16(), 200);
        }
    }
    let mut mid_available = Vec::new();
    for s in &skus {
        mid_available.push(available(&c, base, s).await);
    }
    // A quiet gap around the recorded time, so no record shares its millisecond.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mid_time = (chrono::Utc::now()).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for i in 40..75 {
        let (user, sku) = step(i);
        let a = call(
            &c,
            base,
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": user, "skuId": sku, "quantity": 1})),
            &[],
        )
        .await;
        assert!(
            a.status.as_u16() == 201 || a.error() == "Out of Stock",
            "{}",
            a.body
        );
    }
    let mut end_available = Vec::new();
    for s in &skus {
        end_available.push(available(&c, base, s).await);
    }
    assert!(
        mid_available != end_available,
        "the second half changed the stock"
    );
    Recorded {
        skus,
        mid_time,
        mid_available,
        end_available,
        buyers_with_orders,
    }
}

/// Runs replay for each SKU's partition at the middle and at the end; checks both
/// against what the API reported. Returns the replays (stock per SKU) for comparison.
fn check_replays(source: &[String], rec: &Recorded) -> Vec<Vec<(u64, u64, u64)>> {
    let mut out = Vec::new();
    for (i, sku) in rec.skus.iter().enumerate() {
        let p = partition_for_key(sku.as_bytes(), PARTITIONS).to_string();
        let mut args: Vec<String> = vec![
            "replay".into(),
            "--partition".into(),
            p.clone(),
            "--json".into(),
            "--quiet".into(),
        ];
        args.extend(source.iter().cloned());
        let mut mid = args.clone();
        mid.extend(["--to-time".to_string(), rec.mid_time.clone()]);
        let o = flashsale(&mid);
        assert!(
            o.status.success(),
            "replay failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v = stdout_json(&o);
        let mid_stock = replay_stock(&v, std::slice::from_ref(sku));
        assert_eq!(
            mid_stock[0].0, rec.mid_available[i],
            "replay to {} of {sku} shows the stock the API reported then",
            rec.mid_time
        );
        let o = flashsale(&args);
        assert!(
            o.status.success(),
            "replay failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v = stdout_json(&o);
        let end_stock = replay_stock(&v, std::slice::from_ref(sku));
        assert_eq!(
            end_stock[0].0, rec.end_available[i],
            "replay to the end of {sku} shows the stock now"
        );
        assert_eq!(v["violations"], json!([]));
        out.push(vec![mid_stock[0], end_stock[0]]);
    }
    out
}

fn audit(source: &[String]) -> (Output, Value) {
    let mut args: Vec<String> = vec!["audit".into(), "--json".into(), "--quiet".into()];
    args.extend(source.iter().cloned());
    let o = flashsale(&args);
    let v = stdout_json(&o);
    (o, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_replay_audit_and_corrupt_snapshot() {
    let s = TestServer::start_with(Mode::Embedded, |a| a.snapshot_every_commands = 10)
        .await
        .unwrap();
    let rec = workload(&s.base, "emb").await;
    let data = s.data_dir.clone();
    let source = vec!["--data-dir".to_string(), data.display().to_string()];
    // While the server runs (read only) ...
    let first = check_replays(&source, &rec);
    // ... and after it stopped (final snapshots written).
    let _kept = s.stop_keeping_data().await;
    assert_eq!(check_replays(&source, &rec), first);
    let (o, v) = audit(&source);
    assert!(o.status.success(), "audit: {v}");
    assert_eq!(v["violations"], json!([]));

    // Corrupt the newest snapshot of the first SKU's partition: replay falls back to
    // the one before, says so, and still reaches the same stock.
    let p = partition_for_key(rec.skus[0].as_bytes(), PARTITIONS);
    let dir = data.join("snapshots").join(format!("p{p:03}"));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "at least two snapshots to fall back between: {files:?}"
    );
    let newest = files.last().unwrap().clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    let o = flashsale(&[
        "replay".into(),
        "--partition".into(),
        p.to_string(),
        "--json".into(),
        "--quiet".into(),
        "--data-dir".into(),
        data.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("falling back"),
        "replay says it fell back: {stderr}"
    );
    let v = stdout_json(&o);
    assert_eq!(replay_stock(&v, &rec.skus[..1])[0].0, rec.end_available[0]);
    assert!(
        v["notes"][0].as_str().unwrap().contains("checksum"),
        "{}",
        v["notes"]
    );
    // snapshot verify names the bad one and exits 1
    let o = flashsale(&[
        "snapshot".into(),
        "verify".into(),
        "--partition".into(),
        p.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FAILED"), "{out}");
    // ... and the file an operator moves away, not just its id (issue 35)
    assert!(
        out.contains(&newest.display().to_string()),
        "verify names the snapshot's file {}: {out}",
        newest.display()
    );
    // --verify: the snapshot path and the full replay agree
    let o = flashsale(&[
        "replay".into(),
        "--partition".into(),
        p.to_string(),
        "--verify".into(),
        "--json".into(),
        "--quiet".into(),
        "--data-dir".into(),
        data.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert_eq!(stdout_json(&o)["verify"]["identical"], true);
    // errors name what is wrong
    let o = flashsale(&[
        "replay".into(),
        "--partition".into(),
        "99".into(),
        "--data-dir".into(),
        data.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown partition 99"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_replay_audit_match_embedded_and_catch_extra_orders() {
    let Some(svc) = kafka::services_or_skip("operators' tools in Kafka mode") else {
        return;
    };
    let Some(pg) = svc.postgres.clone() else {
        assert!(
            !kafka::services_required(),
            "FLASHSALE_REQUIRE_SERVICES=1 but no Postgres configured"
        );
        return;
    };
    // Kafka-mode server on fresh topics and a fresh schema.
    let dir = tempfile::tempdir().unwrap();
    let mut args = serve_args(dir.path().join("data"));
    args.partitions = PARTITIONS;
    args.snapshot_every_commands = 10;
    let kargs = kafka::serve_kafka_args(&svc).await.unwrap();
    let pg_url = kargs.postgres.clone().unwrap_or(pg);
    let (gw, k, extras) = flashsale_ops::kafka::cli::serve_parts(&args, &kargs)
        .await
        .unwrap();
    let running = flashsale_ops::kafka::start(gw, k, extras).await.unwrap();
    let base = format!("http://{}", running.addr);
    wait_ready(&client(), &base).await;
    let rec = workload(&base, "kfk").await;
    let source = vec![
        "--kafka".into(),
        svc.kafka.clone(),
        "--postgres".into(),
        pg_url.clone(),
        "--topic-prefix".into(),
        kargs.topic_prefix.clone(),
    ];
    let kafka_replays = check_replays(&source, &rec);

    // The orders reach Postgres (projector), then audit is clean.
    for user in &rec.buyers_with_orders {
        for _ in 0..100 {
            let l = call(
                &client(),
                &base,
                Method::GET,
                &format!("/api/v1/orders/user/{user}"),
                None,
                &[],
            )
            .await;
            if l.body.as_array().is_some_and(|a| !a.is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (o, v) = audit(&source);
    assert!(o.status.success(), "audit: {v}");
    assert_eq!(v["ordersChecked"], json!(rec.buyers_with_orders.len()));
    // Orders in Postgres belong to the events log they were projected from.
    let events_log = v["log"]["events"]
        .as_str()
        .expect("audit names the events log")
        .to_string();

    // The same workload in embedded mode gives the same replays.
    let e = TestServer::start(Mode::Embedded).await.unwrap();
    let erec = workload(&e.base, "cmp").await;
    let esource = vec!["--data-dir".to_string(), e.data_dir.display().to_string()];
    assert_eq!(
        check_replays(&esource, &erec),
        kafka_replays,
        "embedded and Kafka mode replays agree"
    );
    let (eo, ev) = audit(&esource);
    assert!(eo.status.success(), "{ev}");
    e.stop().await;

    // An order row nobody confirmed, straight into Postgres: audit exits 1 naming it.
    let pool = flashsale_runtime::pg::connect(&pg_url, 1).unwrap();
    let client = pool.get().await.unwrap();
    client
        .execute(
            "INSERT INTO orders (order_id, reservation_id, partition, log_offset, user_id, sku, quantity, total_price_cents,
                                 payment_transaction_id, payment_method, shipping_address, created_at, log_id)
             VALUES ('ord_FORGED0000000000000000000000', 'res_FORGED0000000000000000000000', 0, 0, 'mallory', $1, 1, 100,
                     'pay-forged', 'UPI', 'nowhere', now(), $2)",
            &[&rec.skus[0], &events_log],
        )
        .await
        .unwrap();
    let (o, v) = audit(&source);
    assert_eq!(o.status.code(), Some(1), "audit must fail: {v}");
    let text = v["violations"].to_string();
    assert!(
        text.contains("ord_FORGED0000000000000000000000"),
        "names the forged order: {text}"
    );
    running.stop().await.unwrap();
}
