//! Postgres outage in the middle of a load (issue 4, item 4), against the real services:
//! `serve --kafka --postgres` in this process, clients reserving and checking out
//! without pause, and the real Postgres stopped for 30 s with `ops/postgres/stop.sh
//! --keep`, then started again with `ops/postgres/start.sh`.
//!
//! While Postgres is away, reservations and checkouts keep being answered (the log is
//! the truth). Afterwards every order answered 201 is in Postgres exactly once, every
//! answered reservation is there with its final state, snapshots are written again,
//! and the order reads of the API serve them.
//!
//! Bounded: a fixed load rate for a fixed time, every wait has a deadline; loopback
//! only; no timing assertions. Skips without the services unless
//! `FLASHSALE_REQUIRE_SERVICES=1`. Stops Postgres for everyone: it is the only test of
//! its binary, and cargo runs test binaries one at a time.

use flashsale_tests::kafka;
use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::json;
use flashsale_tests::*;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const OUTAGE: Duration = Duration::from_secs(30);
const CLIENTS: usize = 4;
/// Pause between two reserve+checkout rounds of one client (about 4 × 40 rounds/s).
const PAUSE: Duration = Duration::from_millis(25);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The variables of `.services.env` the ops scripts need to find the running cluster.
fn ops_env() -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(repo_root().join(".services.env")).unwrap_or_default();
    let file: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| file.get(k).cloned())
    };
    let dir = get("FLASHSALE_PG_DIR")?;
    let port = get("FLASHSALE_PG_PORT")?;
    Some(vec![
        ("FLASHSALE_PG_DIR".into(), dir),
        ("FLASHSALE_PG_PORT".into(), port),
    ])
}

fn run_script(script: &str, args: &[&str], env: &[(String, String)]) {
    let path = repo_root().join("ops/postgres").join(script);
    let out = std::process::Command::new(&path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts Postgres again if the test stops half-way (a panic must not leave it down).
struct Restart {
    env: Vec<(String, String)>,
    down: AtomicBool,
}

impl Restart {
    fn stop(&self) {
        self.down.store(true, Ordering::SeqCst);
        run_script("stop.sh", &["--keep"], &self.env);
    }
    fn start(&self) {
        run_script("start.sh", &[], &self.env);
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Restart {
    fn drop(&mut self) {
        if self.down.load(Ordering::SeqCst) {
            run_script("start.sh", &[], &self.env);
        }
    }
}

#[derive(Default)]
struct Outcome {
    /// reservation id → (user, order id if checked out)
    reservations: HashMap<String, (String, Option<String>)>,
    /// per phase (0 before, 1 during the outage, 2 after): reservations and orders answered
    answered: [(usize, usize); 3],
    unexpected: Vec<String>,
}

/// POST with the same body (and idempotency key) until it is answered; 503 is retried.
async fn post_until_answered(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: serde_json::Value,
    key: &str,
) -> Answer {
    let mut last = None;
    for _ in 0..100 {
        let a = call(
            client,
            base,
            Method::POST,
            path,
            Some(body.clone()),
            &[("idempotency-key", key)],
        )
        .await;
        if a.status != StatusCode::SERVICE_UNAVAILABLE {
            return a;
        }
        last = Some(a);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last.expect("at least one attempt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_load_loses_nothing_and_doubles_nothing() {
    let Some(svc) = kafka::services_or_skip("postgres outage") else {
        return;
    };
    let required = kafka::services_required();
    let (Some(_), Some(env)) = (svc.postgres.clone(), ops_env()) else {
        assert!(!required, "FLASHSALE_REQUIRE_SERVICES=1 but Postgres (FLASHSALE_POSTGRES, FLASHSALE_PG_DIR, FLASHSALE_PG_PORT) is not configured");
        eprintln!("postgres outage: Postgres not configured (make services-up); skipping");
        return;
    };
    let restart = Restart {
        env,
        down: AtomicBool::new(false),
    };

    // serve --kafka --postgres, snapshots often so some fall into the outage.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = serve_args(dir.path().join("data"));
    args.snapshot_every_commands = 300;
    args.snapshot_every_secs = 2;
    let kafka_args = kafka::serve_kafka_args(&svc)
        .await
        .expect("fresh topics and schema");
    let schema_url = kafka_args.postgres.clone().expect("a Postgres URL");
    let (gw, k, extras) = flashsale_ops::kafka::cli::serve_parts(&args, &kafka_args)
        .await
        .expect("serve parts");
    let running = flashsale_ops::kafka::start(gw, k, extras)
        .await
        .expect("serve --kafka starts");
    let base = format!("http://{}", running.addr);
    let client = client();
    wait_ready(&client, &base).await;
    let skus = ["OUTAGE-A", "OUTAGE-B", "OUTAGE-C"];
    create_sale(
        &client,
        &base,
        &[
            (skus[0], 1_000_000, 1),
            (skus[1], 1_000_000, 1),
            (skus[2], 1_000_000, 1),
        ],
        3600,
        0,
    )
    .await;

    // The load: each round reserves for a new user and checks the hold out.
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, base, phase, stop, outcome) = (
            client.clone(),
            base.clone(),
            phase.clone(),
            stop.clone(),
            outcome.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::SeqCst) && round < 10_000 {
                round += 1;
                let user = format!("outage-{c}-{round}");
                let sku = skus[round % skus.len()];
                let key = format!("res-{user}");
                let body = json!({"userId": user, "skuId": sku, "quantity": 1});
                let a = post_until_answered(&client, &base, "/api/v1/reservations", body, &key).await;
                let p = phase.load(Ordering::SeqCst);
                if a.status != StatusCode::CREATED {
                    outcome.lock().unwrap().unexpected.push(format!("reserve {user}: {} {}", a.status, a.body));
                    continue;
                }
                let rid = a.body["reservationId"].as_str().expect("reservationId").to_string();
                {
                    let mut o = outcome.lock().unwrap();
                    o.reservations.insert(rid.clone(), (user.clone(), None));
                    o.answered[p].0 += 1;
                }
                let body = json!({"reservationId": rid, "paymentTransactionId": format!("pay-{rid}"),
                                  "paymentMethod": "CREDIT_CARD", "shippingAddress": "1 Outage Road"});
                let a = post_until_answered(&client, &base, "/api/v1/orders/checkout", body, &format!("chk-{rid}")).await;
                let p = phase.load(Ordering::SeqCst);
                {
                    let mut o = outcome.lock().unwrap();
                    if a.status == StatusCode::CREATED || a.status == StatusCode::OK {
                        let oid = a.body["orderId"].as_str().expect("orderId").to_string();
                        o.reservations.get_mut(&rid).expect("recorded").1 = Some(oid);
                        o.answered[p].1 += 1;
                    } else {
                        o.unexpected.push(format!("checkout {rid}: {} {}", a.status, a.body));
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::block_in_place(|| restart.stop());
    phase.store(1, Ordering::SeqCst);
    tokio::time::sleep(OUTAGE).await;
    phase.store(2, Ordering::SeqCst);
    tokio::task::block_in_place(|| restart.start());
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client task");
    }

    let outcome = std::mem::take(&mut *outcome.lock().unwrap());
    assert!(
        outcome.unexpected.is_empty(),
        "every request answered as it should: {:?}",
        &outcome.unexpected[..outcome.unexpected.len().min(10)]
    );
    let [before, during, after] = outcome.answered;
    eprintln!("answered (reservations, orders): before {before:?}, during the outage {during:?}, after {after:?}");
    assert!(
        during.0 > 0 && during.1 > 0,
        "reservations and checkouts were answered while Postgres was down: {during:?}"
    );
    assert!(after.1 > 0, "and after it came back: {after:?}");

    // Every answered order reaches Postgres, exactly once (bounded wait for the catch-up).
    let expected_orders: HashSet<String> = outcome
        .reservations
        .values()
        .filter_map(|(_, o)| o.clone())
        .collect();
    assert_eq!(
        expected_orders.len(),
        outcome.reservations.len(),
        "every hold was checked out"
    );
    let pool = flashsale_runtime::pg::connect(&schema_url, 2).expect("valid URL");
    let mut in_pg = 0i64;
    for _ in 0..600 {
        if let Ok(c) = pool.get().await {
            if let Ok(row) = c.query_one("SELECT count(*) FROM orders", &[]).await {
                in_pg = row.get(0);
                if in_pg >= expected_orders.len() as i64 {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        in_pg,
        expected_orders.len() as i64,
        "every order is in Postgres, none twice"
    );
    let c = pool.get().await.expect("Postgres is back");
    let ids: HashSet<String> = c
        .query("SELECT order_id FROM orders", &[])
        .await
        .expect("orders")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_eq!(
        ids, expected_orders,
        "exactly the orders that were answered"
    );
    let distinct: i64 = c
        .query_one("SELECT count(DISTINCT reservation_id) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, in_pg, "one order per reservation");
    let confirmed: i64 = c
        .query_one(
            "SELECT count(*) FROM reservations WHERE status = 'CONFIRMED'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        confirmed,
        outcome.reservations.len() as i64,
        "every answered hold is in Postgres, confirmed"
    );

    // Snapshots are written again once Postgres is back (bounded wait).
    let mut snapshots = 0i64;
    for _ in 0..300 {
        snapshots = c
            .query_one("SELECT count(*) FROM engine_snapshots", &[])
            .await
            .unwrap()
            .get(0);
        if snapshots > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(snapshots > 0, "the engine's snapshots reached Postgres");

    // The API reads them back.
    for (rid, (user, oid)) in outcome.reservations.iter().take(50) {
        let oid = oid.as_ref().expect("order id");
        let a = call(
            &client,
            &base,
            Method::GET,
            &format!("/api/v1/orders/{oid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "GET order {oid}: {}", a.body);
        assert_eq!(a.body["reservationId"], json!(rid));
        let a = call(
            &client,
            &base,
            Method::GET,
            &format!("/api/v1/orders/user/{user}"),
            None,
            &[],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(
            a.body.as_array().map(Vec::len),
            Some(1),
            "{user} has exactly one order"
        );
    }
    running.stop().await.expect("clean stop");
    drop(restart);
}
