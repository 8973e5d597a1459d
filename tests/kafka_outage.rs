//! Broker outages (issue 15, items 9-11), against the real broker, with the
//! `flashsale` binary as child processes (engine, gateway, projector on one prefix;
//! `serve --kafka` on another):
//!
//! 1. **Started before the broker**: the broker is stopped (`ops/kafka/stop.sh
//!    --keep`), the four processes are started and wait (still running), the broker is
//!    started again (`ops/kafka/start.sh`): they come up, a sale is created and a hold
//!    round-trips through each.
//! 2. **A 60 s outage under a bounded load**: a few hundred holds over several SKUs,
//!    before, during and after the outage (each retried with its `Idempotency-Key`
//!    while it gets 503; never a 500), checkouts before and after, reads of existing
//!    holds during it, and `/ready` 200 (reads) while `/ready?writes` is 503.
//!    Afterwards every process still runs (none exited), every acknowledged hold is
//!    readable, availability matches the holds, every order is projected (exactly
//!    one per user), `flashsale audit` is clean, and each process's
//!    stderr during the outage holds a bounded number of lines (a few, not 10-20 a
//!    second).
//!
//! Stops the shared broker: it is the only test of its binary, and cargo runs test
//! binaries one at a time. A panic half-way starts the broker again (`Restart`).
//! Bounded waits; no timing assertions; loopback only. Needs the services
//! (`make services-up`) and the binary (`cargo build --bin flashsale`).

use flashsale_tests::kafka::{self, Proc, Services};
use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 2;
const OUTAGE: Duration = Duration::from_secs(60);
/// Most stderr lines one process may write during the outage (60 s).
const MAX_OUTAGE_LINES: usize = 60;
/// SKUs of the sale and their stock (more than the holds: every attempt gets a 201).
const SKUS: [&str; 6] = ["OUT-A", "OUT-B", "OUT-C", "OUT-D", "OUT-E", "OUT-F"];
const INVENTORY: u64 = 200;
/// Holds before, during and after the outage.
const BEFORE: usize = 60;
const DURING: usize = 100;
const AFTER: usize = 140;
/// Longest one hold attempt keeps retrying 503s.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(240);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The variables of `.services.env` the Kafka scripts need to find the running broker.
fn kafka_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join(".services.env")).unwrap_or_default();
    let file: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect();
    [
        "FLASHSALE_KAFKA_DIR",
        "FLASHSALE_KAFKA_PORT",
        "FLASHSALE_KAFKA_CONTROLLER_PORT",
        "FLASHSALE_KAFKA_BROKERS",
        "FLASHSALE_SERVICES_ENV",
    ]
    .iter()
    .filter_map(|k| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| file.get(*k).cloned())
            .map(|v| (k.to_string(), v))
    })
    .collect()
}

fn run_script(script: &str, args: &[&str], env: &[(String, String)]) {
    let path = repo_root().join("ops/kafka").join(script);
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

/// Stops and starts the broker; starts it again if the test stops half-way.
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

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// Lines of `name`'s stderr written after byte `from` (and up to `to`).
fn lines_between(dir: &Path, name: &str, from: usize, to: usize) -> Vec<String> {
    let text = log(dir, name);
    let end = to.min(text.len());
    text.get(from.min(end)..end)
        .unwrap_or("")
        .lines()
        .map(str::to_string)
        .collect()
}

/// `/ready` answered 200 (bounded by `secs`).
async fn ready(client: &reqwest::Client, base: &str, secs: u64) {
    eventually(&format!("{base} ready"), secs, || async {
        let r = client.get(format!("{base}/ready")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await
}

/// What one hold attempt saw.
#[derive(Debug, Default, Clone)]
struct Attempt {
    user: String,
    sku: String,
    /// The reservation id of its 201.
    reservation: Option<String>,
    /// Every status other than 201 it was answered with (503s while retrying).
    others: Vec<u16>,
    /// Connection errors (the gateway must not go away).
    errors: Vec<String>,
}

/// One hold, retried with the same `Idempotency-Key` while answered 503.
async fn hold(client: &reqwest::Client, base: &str, tag: &str, i: usize) -> Attempt {
    let sku = SKUS[i % SKUS.len()].to_string();
    let user = format!("{tag}-u{i}");
    let mut a = Attempt {
        user: user.clone(),
        sku: sku.clone(),
        ..Attempt::default()
    };
    let body = json!({"userId": user, "skuId": sku, "quantity": 1});
    let key = format!("{tag}-hold-{i}");
    let started = Instant::now();
    while started.elapsed() < ATTEMPT_DEADLINE {
        let res = client
            .post(format!("{base}/api/v1/reservations"))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(body.to_string())
            .send()
            .await;
        match res {
            Ok(r) if r.status() == StatusCode::CREATED => {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                a.reservation = v["reservationId"].as_str().map(str::to_string);
                return a;
            }
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    r.headers().contains_key("retry-after"),
                    "a 503 without Retry-After"
                );
                a.others.push(503);
            }
            Ok(r) => {
                a.others.push(r.status().as_u16());
                return a;
            }
            Err(e) => a.errors.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    a
}

/// `count` holds `tag`-0.. through `base`, `concurrency` at a time, the next started
/// every `gap`.
async fn holds(
    client: &reqwest::Client,
    base: &str,
    tag: &str,
    count: usize,
    gap: Duration,
) -> Vec<Attempt> {
    let mut tasks = Vec::new();
    for i in 0..count {
        let (client, base, tag) = (client.clone(), base.to_string(), tag.to_string());
        tasks.push(tokio::spawn(
            async move { hold(&client, &base, &tag, i).await },
        ));
        tokio::time::sleep(gap).await;
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("hold task"));
    }
    out
}

async fn checkout(client: &reqwest::Client, base: &str, rid: &str, tag: &str) -> String {
    let body = json!({"reservationId": rid, "paymentTransactionId": format!("pay-{tag}"),
        "paymentMethod": "CREDIT_CARD", "shippingAddress": "1 Test Street"});
    let a = eventually(&format!("checkout {rid}"), 120, || async {
        let a = call(
            client,
            base,
            Method::POST,
            "/api/v1/orders/checkout",
            Some(body.clone()),
            &[("idempotency-key", &format!("checkout-{tag}"))],
        )
        .await;
        (a.status != StatusCode::SERVICE_UNAVAILABLE).then_some(a)
    })
    .await;
    assert!(a.status.is_success(), "checkout {rid}: {}", a.body);
    a.body["orderId"].as_str().expect("orderId").to_string()
}

async fn sale(client: &reqwest::Client, base: &str, skus: &[&str]) {
    let body = json!({"name": "Outage Sale", "startsAt": time_in(-5), "endsAt": time_in(7200),
        "reservationTtlSeconds": 3600,
        "products": skus.iter().map(|s| json!({"skuId": s, "name": s, "basePrice": 10.0,
            "flashSalePrice": 5.0, "totalInventory": INVENTORY, "perUserLimit": 1})).collect::<Vec<_>>()});
    eventually("sale created", 120, || async {
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
}

struct Setup {
    svc: Services,
    prefix: String,
    postgres: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn common(&self, prefix: &str, postgres: &str) -> Vec<String> {
        vec![
            "--kafka".into(),
            self.svc.kafka.clone(),
            "--topic-prefix".into(),
            prefix.to_string(),
            "--postgres".into(),
            postgres.to_string(),
        ]
    }
    fn spawn(&self, name: &str, args: Vec<String>) -> Proc {
        Proc::spawn(name, &args, self.dir.path()).expect("spawn flashsale")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_before_the_broker_and_a_60s_outage_under_load() {
    let Some(svc) = kafka::services_or_skip("kafka_outage") else {
        return;
    };
    let Some(pg) = svc.postgres.clone() else {
        assert!(
            !kafka::services_required(),
            "kafka_outage needs FLASHSALE_POSTGRES"
        );
        eprintln!("kafka_outage: no Postgres configured; skipping");
        return;
    };
    let env = kafka_env();
    assert!(
        env.iter().any(|(k, _)| k == "FLASHSALE_KAFKA_DIR"),
        "kafka_outage: FLASHSALE_KAFKA_DIR unknown (neither in the environment nor in .services.env)"
    );
    let broker = Restart {
        env,
        down: AtomicBool::new(false),
    };
    let id = kafka::unique_id();
    let s = Setup {
        svc: svc.clone(),
        prefix: format!("flashsale-test-{id}."),
        postgres: kafka::fresh_postgres(&pg, &id).await.expect("schema"),
        dir: tempfile::tempdir().unwrap(),
    };
    let serve_id = kafka::unique_id();
    let serve_prefix = format!("flashsale-test-{serve_id}.");
    let serve_pg = kafka::fresh_postgres(&pg, &serve_id).await.expect("schema");
    kafka::create_topics(&svc.kafka, &s.prefix, PARTITIONS, 2)
        .await
        .expect("topics");
    let mut migrate = s.spawn(
        "migrate",
        vec!["migrate".into(), "--postgres".into(), s.postgres.clone()],
    );
    assert!(
        migrate.terminate_after_exit(60),
        "migrate failed: {}",
        log(s.dir.path(), "migrate")
    );

    // 1. Started before the broker.
    broker.stop();
    let (gw_port, serve_port) = (free_port(), free_port());
    let mut procs: Vec<Proc> = Vec::new();
    {
        let mut e = vec!["engine".to_string()];
        e.extend(s.common(&s.prefix, &s.postgres));
        e.extend(
            [
                "--engine-group",
                &format!("flashsale-test-{id}-engine"),
                "--snapshot-every-commands",
                "50",
            ]
            .map(String::from),
        );
        procs.push(s.spawn("engine", e));
        let mut g = vec!["gateway".to_string()];
        g.extend(s.common(&s.prefix, &s.postgres));
        g.extend(
            [
                "--listen",
                &format!("127.0.0.1:{gw_port}"),
                "--admin-token",
                TOKEN,
                "--rate-limit-per-user",
                "0",
            ]
            .map(String::from),
        );
        procs.push(s.spawn("gateway", g));
        let mut p = vec!["projector".to_string()];
        p.extend(s.common(&s.prefix, &s.postgres));
        procs.push(s.spawn("projector", p));
        let mut sv = vec!["serve".to_string()];
        sv.extend(s.common(&serve_prefix, &serve_pg));
        sv.extend(
            [
                "--listen",
                &format!("127.0.0.1:{serve_port}"),
                "--admin-token",
                TOKEN,
                "--rate-limit-per-user",
                "0",
                "--partitions",
                &PARTITIONS.to_string(),
                "--engine-group",
                &format!("flashsale-test-{serve_id}-engine"),
                "--data-dir",
                s.dir.path().join("serve-data").to_str().unwrap(),
            ]
            .map(String::from),
        );
        procs.push(s.spawn("serve", sv));
    }
    let names: Vec<String> = procs.iter().map(|p| p.name.clone()).collect();
    // They wait, saying so; none exits.
    for name in &names {
        eventually(&format!("{name} says it waits for Kafka"), 60, || async {
            log(s.dir.path(), name)
                .contains("waiting for")
                .then_some(())
        })
        .await;
    }
    for p in &mut procs {
        assert!(
            p.is_running(),
            "{} exited while the broker was down: {}",
            p.name,
            log(s.dir.path(), &p.name)
        );
    }
    broker.start();
    let client = client();
    let gw = format!("http://127.0.0.1:{gw_port}");
    let sv = format!("http://127.0.0.1:{serve_port}");
    ready(&client, &gw, 180).await;
    ready(&client, &sv, 180).await;
    sale(&client, &gw, &SKUS).await;
    sale(&client, &sv, &["SERVE-1"]).await;
    let first = hold(&client, &gw, "first", 0).await;
    let first_rid = first
        .reservation
        .clone()
        .expect("a hold through the gateway");
    let a = call(
        &client,
        &gw,
        Method::GET,
        &format!("/api/v1/reservations/{first_rid}"),
        None,
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let b = call(
        &client,
        &sv,
        Method::POST,
        "/api/v1/reservations",
        Some(json!({"userId": "serve-u0", "skuId": "SERVE-1", "quantity": 1})),
        &[("idempotency-key", "serve-0")],
    )
    .await;
    assert_eq!(b.status, StatusCode::CREATED, "serve --kafka: {}", b.body);

    // 2. A 60 s outage under a bounded load.
    let before = holds(&client, &gw, "before", BEFORE, Duration::from_millis(20)).await;
    let mut orders: Vec<(String, String)> = Vec::new(); // (user, order id)
    for a in before.iter().take(10) {
        let rid = a.reservation.as_ref().expect("a hold before the outage");
        orders.push((a.user.clone(), checkout(&client, &gw, rid, &a.user).await));
    }
    let offsets_at = |dir: &Path| -> BTreeMap<String, usize> {
        names
            .iter()
            .map(|n| (n.clone(), log(dir, n).len()))
            .collect()
    };
    let outage_lines_from = offsets_at(s.dir.path());
    broker.stop();
    let outage_started = Instant::now();
    // Holds during the outage: one every 0.5 s, each retrying its 503s until the
    // broker is back.
    let during = {
        let (client, gw) = (client.clone(), gw.clone());
        tokio::spawn(async move {
            holds(&client, &gw, "during", DURING, Duration::from_millis(500)).await
        })
    };
    // Reads of existing holds are served meanwhile (from the read model).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let reads_during = Arc::new(Mutex::new(Vec::new()));
    for a in before.iter().take(5) {
        let rid = a.reservation.clone().unwrap();
        let r = call(
            &client,
            &gw,
            Method::GET,
            &format!("/api/v1/reservations/{rid}"),
            None,
            &[],
        )
        .await;
        reads_during.lock().unwrap().push((rid, r.status));
    }
    let post = call(
        &client,
        &gw,
        Method::POST,
        "/api/v1/reservations",
        Some(json!({"userId": "probe", "skuId": SKUS[0], "quantity": 1})),
        &[],
    )
    .await;
    assert_eq!(
        post.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a hold during the outage: {}",
        post.body
    );
    assert!(
        post.headers.contains_key("retry-after"),
        "503 without Retry-After"
    );
    // Issue 28: reads are served, so `/ready` (reads) stays 200 and a load balancer
    // keeps the gateway; `/ready?writes` says writes are not taken.
    let ready_reads = call(&client, &gw, Method::GET, "/ready", None, &[]).await;
    assert_eq!(
        ready_reads.status,
        StatusCode::OK,
        "/ready during the outage: {}",
        ready_reads.body
    );
    assert_eq!(
        ready_reads.body["reads"],
        json!("UP"),
        "{}",
        ready_reads.body
    );
    assert_eq!(
        ready_reads.body["writes"],
        json!("DOWN"),
        "{}",
        ready_reads.body
    );
    let ready_writes = call(&client, &gw, Method::GET, "/ready?writes", None, &[]).await;
    assert_eq!(
        ready_writes.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "/ready?writes during the outage: {}",
        ready_writes.body
    );
    let left = OUTAGE.saturating_sub(outage_started.elapsed());
    tokio::time::sleep(left).await;
    let outage_lines_to = offsets_at(s.dir.path());
    for p in &mut procs {
        assert!(
            p.is_running(),
            "{} exited during the outage: {}",
            p.name,
            log(s.dir.path(), &p.name)
        );
    }
    broker.start();
    let during = during.await.expect("holds during the outage");
    let after = holds(&client, &gw, "after", AFTER, Duration::from_millis(20)).await;
    for a in during.iter().take(5).chain(after.iter().take(5)) {
        let rid = a.reservation.as_ref().expect("a hold");
        orders.push((a.user.clone(), checkout(&client, &gw, rid, &a.user).await));
    }
    let c = call(
        &client,
        &sv,
        Method::POST,
        "/api/v1/reservations",
        Some(json!({"userId": "serve-u1", "skuId": "SERVE-1", "quantity": 1})),
        &[("idempotency-key", "serve-1")],
    )
    .await;
    assert_eq!(
        c.status,
        StatusCode::CREATED,
        "serve --kafka after the outage: {}",
        c.body
    );

    // Every process still up; none wrote more than a few lines during the outage.
    for p in &mut procs {
        assert!(
            p.is_running(),
            "{} exited after the outage: {}",
            p.name,
            log(s.dir.path(), &p.name)
        );
    }
    for name in &names {
        let lines = lines_between(
            s.dir.path(),
            name,
            outage_lines_from[name],
            outage_lines_to[name],
        );
        eprintln!("{name}: {} lines during the outage", lines.len());
        assert!(
            lines.len() < MAX_OUTAGE_LINES,
            "{name} wrote {} lines during the {OUTAGE:?} outage:\n{}",
            lines.len(),
            lines.join("\n")
        );
    }
    let announced = lines_between(
        s.dir.path(),
        "engine",
        outage_lines_from["engine"],
        usize::MAX,
    );
    assert!(
        announced.iter().any(|l| l.contains("is unreachable")),
        "the engine did not say the broker is unreachable: {announced:#?}"
    );
    assert!(
        announced.iter().any(|l| l.contains("reachable again")),
        "the engine did not say the broker is back: {announced:#?}"
    );

    // Every acknowledged hold: a 201 in the end, readable; never a 500, never an error.
    let all: Vec<&Attempt> = before.iter().chain(&during).chain(&after).collect();
    let unexpected: Vec<_> = all
        .iter()
        .filter(|a| {
            a.reservation.is_none() || a.others.iter().any(|s| *s != 503) || !a.errors.is_empty()
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "holds not answered 201 (or answered other than 503 on the way): {unexpected:#?}"
    );
    let saw_503 = during.iter().filter(|a| a.others.contains(&503)).count();
    eprintln!("{saw_503} of {DURING} holds during the outage were answered 503 before their 201");
    assert!(saw_503 > 0, "no hold was refused during the outage");
    for (rid, status) in reads_during.lock().unwrap().iter() {
        assert_eq!(*status, StatusCode::OK, "read of {rid} during the outage");
    }
    for a in &all {
        let rid = a.reservation.as_ref().unwrap();
        let r = call(
            &client,
            &gw,
            Method::GET,
            &format!("/api/v1/reservations/{rid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "reservation {rid}: {}", r.body);
    }
    let mut per_sku: HashMap<&str, u64> = HashMap::new();
    for a in &all {
        *per_sku.entry(a.sku.as_str()).or_default() += 1;
    }
    *per_sku.entry(SKUS[0]).or_default() += 1; // `first`
    eventually("availability = inventory - holds", 60, || async {
        let p = call(&client, &gw, Method::GET, "/api/v1/products", None, &[]).await;
        let by: HashMap<String, u64> = p
            .body
            .as_array()?
            .iter()
            .map(|v| {
                (
                    v["skuId"].as_str().unwrap_or("").to_string(),
                    v["availableCount"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        SKUS.iter()
            .all(|s| by.get(*s) == Some(&(INVENTORY - per_sku[s])))
            .then_some(())
    })
    .await;
    for (user, oid) in &orders {
        eventually(&format!("order {oid} projected"), 120, || async {
            let a = call(
                &client,
                &gw,
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
            &client,
            &gw,
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

    // flashsale audit: clean (bounded retries: the projector may trail a moment).
    let mut clean = false;
    for i in 0..20 {
        let mut args = vec!["audit".to_string(), "--quiet".into(), "--json".into()];
        args.extend(s.common(&s.prefix, &s.postgres));
        let name = format!("audit{i}");
        let mut a = s.spawn(&name, args);
        if a.terminate_after_exit(120) {
            clean = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        clean,
        "flashsale audit found problems: {}",
        log(s.dir.path(), "audit19")
    );
    for p in &mut procs {
        assert!(p.terminate(), "{} did not stop on SIGTERM", p.name);
    }
    drop(broker);
}
