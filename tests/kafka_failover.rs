//! Failover tests of Kafka mode against the real broker (issue 13): two engines with
//! standby copies, one or two gateways, a projector, on fresh topics and a fresh
//! Postgres schema; one fault per test, in the middle of a bounded load.
//!
//! The load: 2,400 reservation attempts over 8 SKUs (8 partitions, 150 units each,
//! one per user, some users trying twice), every fifth hold checked out and every
//! fifth cancelled; clients retry 503s and dead connections with the same
//! `Idempotency-Key` (switching gateway when one is dead). The faults:
//! (a) `kill -9` of an engine; (b) `SIGSTOP` of an engine for longer than the group
//! session (the load goes on through the other), then `SIGCONT`: the resumed engine
//! learns it lost its partitions and nothing it produces counts; (c) `SIGTERM` of an
//! engine (a rolling restart): no request is answered 503; (d) `kill -9` of a gateway.
//! After each: every acknowledged hold, order and cancel is intact, nothing is
//! oversold, availability is consistent, `flashsale audit` is clean.
//!
//! Bounded: a fixed number of attempts, each retried for at most 90 s; the tests run
//! one at a time (one lock). No timing assertions. Needs the services
//! (`make services-up`) and the binary (`cargo build --bin flashsale`); skips without
//! services unless `FLASHSALE_REQUIRE_SERVICES=1`.

use flashsale_tests::kafka::{self, Proc, Services};
use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 8;
const SKUS: usize = 8;
const INVENTORY: u64 = 150;
const ATTEMPTS: usize = 2400;
/// Distinct users per SKU: 300 attempts per SKU from 280 users (20 try twice).
const USERS_PER_SKU: usize = 280;
const CONCURRENCY: usize = 24;
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(90);

/// One test at a time: each starts its own processes on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn sku(i: usize) -> String {
    format!("FO{}", i % SKUS)
}

/// Attempt `i`: (user, sku).
fn attempt(i: usize) -> (String, String) {
    let s = sku(i);
    (format!("{s}-u{}", (i / SKUS) % USERS_PER_SKU), s)
}

/// What the client does with attempt `i`'s hold once it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    Keep,
    Checkout,
    Cancel,
}

fn then(i: usize) -> Then {
    match (i / SKUS) % 5 {
        0 => Then::Checkout,
        1 => Then::Cancel,
        _ => Then::Keep,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillEngine,
    PauseEngine,
    StopEngine,
    KillGateway,
}

struct Cluster {
    svc: Services,
    prefix: String,
    group: String,
    postgres: Option<String>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn common(&self) -> Vec<String> {
        let mut v = vec![
            "--kafka".to_string(),
            self.svc.kafka.clone(),
            "--topic-prefix".into(),
            self.prefix.clone(),
        ];
        if let Some(pg) = &self.postgres {
            v.extend(["--postgres".to_string(), pg.clone()]);
        }
        v
    }
    fn engine(&self, name: &str) -> Proc {
        let mut args = vec!["engine".to_string()];
        args.extend(self.common());
        args.extend(
            [
                "--engine-group",
                &self.group,
                "--snapshot-every-commands",
                "500",
                "--data-dir",
                self.dir.path().join("engines").to_str().unwrap(),
            ]
            .map(String::from),
        );
        Proc::spawn(name, &args, self.dir.path()).expect("engine starts")
    }
    fn gateway(&self, id: u32, port: u16) -> Proc {
        let mut args = vec!["gateway".to_string()];
        args.extend(self.common());
        args.extend(
            [
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-token",
                TOKEN,
                "--gateway-id",
                &id.to_string(),
                "--rate-limit-per-user",
                "0",
            ]
            .map(String::from),
        );
        Proc::spawn(&format!("gateway{id}"), &args, self.dir.path()).expect("gateway starts")
    }
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
    /// The `fields` of the JSON log lines of `name` whose message is `message`.
    fn lines(&self, name: &str, message: &str) -> Vec<Value> {
        self.log(name)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| v["fields"].clone())
            .filter(|f| f["message"].as_str().is_some_and(|m| m.contains(message)))
            .collect()
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
struct Outcomes {
    /// attempt → reservation id, for 201s.
    created: BTreeMap<usize, String>,
    /// attempt → order id, for holds checked out.
    orders: BTreeMap<usize, String>,
    /// attempts whose hold was cancelled (200).
    cancelled: HashSet<usize>,
    /// status → count, for reservation answers other than 201.
    other: HashMap<u16, usize>,
    /// 503 answers of any request.
    unavailable: usize,
    unresolved: Vec<(usize, String)>,
}

struct Load {
    client: reqwest::Client,
    bases: Vec<String>,
    alive: Vec<AtomicBool>,
    outcomes: Mutex<Outcomes>,
}

impl Load {
    /// One request, retried on 503 and dead connections (another gateway for each
    /// retry, the same key), until an answer or [`ATTEMPT_DEADLINE`].
    async fn send(
        &self,
        i: usize,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: &str,
    ) -> Result<(StatusCode, Value), String> {
        let started = Instant::now();
        let mut g = i % self.bases.len();
        loop {
            if !self.alive[g].load(Ordering::Acquire) {
                g = (g + 1) % self.bases.len();
            }
            let mut req = self
                .client
                .request(method.clone(), format!("{}{path}", self.bases[g]))
                .header("idempotency-key", key);
            if let Some(b) = &body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let reason = match req.send().await {
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let text = r.text().await.unwrap_or_default();
                    self.outcomes.lock().unwrap().unavailable += 1;
                    format!("503 {text}")
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return Ok((
                        status,
                        serde_json::from_str(&text).unwrap_or(Value::String(text)),
                    ));
                }
                Err(e) => e.to_string(),
            };
            if started.elapsed() > ATTEMPT_DEADLINE {
                return Err(format!(
                    "{method} {path} unanswered after {ATTEMPT_DEADLINE:?}: {reason}"
                ));
            }
            g = (g + 1) % self.bases.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn attempt(&self, i: usize) -> Result<(), String> {
        let (user, sku) = attempt(i);
        let (status, body) = self
            .send(
                i,
                Method::POST,
                "/api/v1/reservations",
                Some(json!({"userId": user, "skuId": sku, "quantity": 1})),
                &format!("hold-{i}"),
            )
            .await?;
        if status != StatusCode::CREATED {
            *self
                .outcomes
                .lock()
                .unwrap()
                .other
                .entry(status.as_u16())
                .or_default() += 1;
            return Ok(());
        }
        let rid = body["reservationId"]
            .as_str()
            .ok_or_else(|| format!("201 without a reservationId: {body}"))?
            .to_string();
        self.outcomes.lock().unwrap().created.insert(i, rid.clone());
        match then(i) {
            Then::Keep => {}
            Then::Checkout => {
                let body = json!({"reservationId": rid, "paymentTransactionId": format!("pay-{i}"),
                    "paymentMethod": "CREDIT_CARD", "shippingAddress": "1 Test Street"});
                let (status, body) = self
                    .send(
                        i,
                        Method::POST,
                        "/api/v1/orders/checkout",
                        Some(body),
                        &format!("buy-{i}"),
                    )
                    .await?;
                if status != StatusCode::CREATED && status != StatusCode::OK {
                    return Err(format!("checkout of {rid}: {status} {body}"));
                }
                let oid = body["orderId"]
                    .as_str()
                    .ok_or_else(|| format!("checkout without an orderId: {body}"))?;
                self.outcomes.lock().unwrap().orders.insert(i, oid.into());
            }
            Then::Cancel => {
                let (status, body) = self
                    .send(
                        i,
                        Method::DELETE,
                        &format!("/api/v1/reservations/{rid}"),
                        None,
                        &format!("cancel-{i}"),
                    )
                    .await?;
                if status != StatusCode::OK || body["status"] != "CANCELLED" {
                    return Err(format!("cancel of {rid}: {status} {body}"));
                }
                self.outcomes.lock().unwrap().cancelled.insert(i);
            }
        }
        Ok(())
    }
}

async fn products_by_sku(client: &reqwest::Client, base: &str) -> BTreeMap<String, Value> {
    let a = call(client, base, Method::GET, "/api/v1/products", None, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    a.body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["skuId"].as_str().unwrap().to_string(), p.clone()))
        .collect()
}

fn signal(p: &Proc, sig: &str) {
    let pid = p.pid().expect("the process runs");
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

async fn run(fault: Fault) {
    let _serial = SERIAL.lock().await;
    let Some(svc) = kafka::services_or_skip("kafka_failover") else {
        return;
    };
    let id = kafka::unique_id();
    let postgres = match &svc.postgres {
        Some(url) => Some(kafka::fresh_postgres(url, &id).await.expect("fresh schema")),
        None => None,
    };
    let c = Cluster {
        svc: svc.clone(),
        prefix: format!("flashsale-test-{id}."),
        group: format!("flashsale-test-{id}-engine"),
        postgres,
        dir: tempfile::tempdir().unwrap(),
    };
    kafka::create_topics(&svc.kafka, &c.prefix, PARTITIONS, 2)
        .await
        .expect("topics");
    let mut projector = None;
    if let Some(pg) = &c.postgres {
        let mut m = Proc::spawn(
            "migrate",
            &["migrate".into(), "--postgres".into(), pg.clone()],
            c.dir.path(),
        )
        .unwrap();
        assert!(
            m.terminate_after_exit(60),
            "flashsale migrate failed: {}",
            c.log("migrate")
        );
        let mut args = vec!["projector".to_string()];
        args.extend(c.common());
        projector = Some(Proc::spawn("projector", &args, c.dir.path()).unwrap());
    }
    let mut engines = vec![c.engine("engine0"), c.engine("engine1")];
    let gateways_n = if fault == Fault::KillGateway { 2 } else { 1 };
    let ports: Vec<u16> = (0..gateways_n).map(|_| free_port()).collect();
    let mut gateways: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| c.gateway(i as u32, *p))
        .collect();
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let client = client();
    for b in &bases {
        wait_ready(&client, b).await;
    }
    // Both engines own partitions before the load (the fault must hit an owner).
    for e in ["engine0", "engine1"] {
        eventually(&format!("{e} owns partitions"), 60, || async {
            c.lines(e, "assignment recovered")
                .iter()
                .any(|f| f["owned"].as_array().is_some_and(|o| !o.is_empty()))
                .then_some(())
        })
        .await;
    }

    let skus: Vec<String> = (0..SKUS).map(sku).collect();
    eventually("sale created", 60, || async {
        let body = json!({"name": "Failover Sale", "startsAt": time_in(-5), "endsAt": time_in(7200),
            "reservationTtlSeconds": 3600,
            "products": skus.iter().map(|s| json!({"skuId": s, "name": s, "basePrice": 10.0,
                "flashSalePrice": 5.0, "totalInventory": INVENTORY, "perUserLimit": 1})).collect::<Vec<_>>()});
        let a = call(&client, &bases[0], Method::POST, "/api/v1/admin/sales", Some(body), &[("authorization", &format!("Bearer {TOKEN}"))]).await;
        (a.status == StatusCode::CREATED).then_some(())
    })
    .await;
    for b in &bases {
        eventually("products visible on every gateway", 30, || async {
            (products_by_sku(&client, b).await.len() == SKUS).then_some(())
        })
        .await;
    }

    // The load, with the fault a third of the way.
    let load = Arc::new(Load {
        client: client.clone(),
        bases: bases.clone(),
        alive: bases.iter().map(|_| AtomicBool::new(true)).collect(),
        outcomes: Mutex::new(Outcomes::default()),
    });
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (load, next, done) = (load.clone(), next.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::AcqRel);
                if i >= ATTEMPTS {
                    break;
                }
                if let Err(e) = load.attempt(i).await {
                    load.outcomes.lock().unwrap().unresolved.push((i, e));
                }
                done.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }
    let progress = |n: usize, what: &'static str| {
        let done = done.clone();
        async move {
            eventually(what, 300, || async {
                (done.load(Ordering::Acquire) >= n).then_some(())
            })
            .await
        }
    };
    progress(ATTEMPTS / 3, "a third of the attempts done").await;
    let mut survivor = "engine1";
    match fault {
        Fault::KillEngine => engines[0].kill9(),
        Fault::KillGateway => {
            load.alive[1].store(false, Ordering::Release);
            gateways[1].kill9();
            survivor = "";
        }
        Fault::StopEngine => signal(&engines[0], "TERM"),
        Fault::PauseEngine => {
            signal(&engines[0], "STOP");
            // The other engine takes the paused one's partitions over (its session
            // ends): the load goes on, through every SKU.
            eventually("engine1 owns every partition", 120, || async {
                c.lines("engine1", "assignment recovered")
                    .last()
                    .and_then(|f| f["owned"].as_array().map(|o| o.len()))
                    .is_some_and(|n| n == PARTITIONS as usize)
                    .then_some(())
            })
            .await;
            let at = done.load(Ordering::Acquire);
            progress(at + ATTEMPTS / 4, "attempts done while engine0 is paused").await;
            signal(&engines[0], "CONT");
        }
    }
    eprintln!("{fault:?} after {} attempts", done.load(Ordering::Acquire));
    for t in tasks {
        t.await.expect("client task");
    }
    let o = std::mem::take(&mut *load.outcomes.lock().unwrap());
    eprintln!(
        "load done: {} holds, {} orders, {} cancels, other answers {:?}, {} answers 503",
        o.created.len(),
        o.orders.len(),
        o.cancelled.len(),
        o.other,
        o.unavailable
    );
    assert!(
        o.unresolved.is_empty(),
        "unresolved attempts (first 5): {:?}",
        &o.unresolved[..o.unresolved.len().min(5)]
    );
    let unexpected: Vec<_> = o.other.keys().filter(|s| **s != 409).collect();
    assert!(unexpected.is_empty(), "unexpected statuses {:?}", o.other);
    if !survivor.is_empty() {
        assert!(
            engines[1].is_running(),
            "the other engine died: {}",
            c.log(survivor)
        );
    }

    if matches!(fault, Fault::KillEngine | Fault::StopEngine) {
        // The other engine took every partition over.
        let owned = c
            .lines("engine1", "assignment recovered")
            .last()
            .and_then(|f| f["owned"].as_array().map(|o| o.len()));
        assert_eq!(owned, Some(PARTITIONS as usize), "{}", c.log("engine1"));
    }
    match fault {
        Fault::StopEngine => {
            // A planned hand-over: the leaving engine exits cleanly, and no request
            // was told to come back later.
            assert!(
                engines[0].terminate_after_exit(60),
                "engine0 did not exit cleanly on SIGTERM: {}",
                c.log("engine0")
            );
            assert_eq!(o.unavailable, 0, "503 answers during a planned hand-over");
        }
        Fault::PauseEngine => {
            // The resumed engine learnt that it lost its partitions (its session
            // ended, or it met its successor's claim in the log) ...
            let told = eventually("engine0 knows it was replaced", 60, || async {
                let log = c.log("engine0");
                if log.contains("fenced: another engine claimed the partition") {
                    Some("fenced by the successor's claim")
                } else if log.contains("the group's session was lost") {
                    Some("its session was lost")
                } else {
                    None
                }
            })
            .await;
            eprintln!("the resumed engine0 learnt that {told}");
            // ... and the successor claimed them: a claim (epoch) above engine0's.
            let claims = c.lines("engine1", "assignment recovered");
            assert!(
                claims
                    .iter()
                    .any(|f| f["claimed"].as_str().is_some_and(|s| s != "{}")),
                "engine1 claimed nothing: {}",
                c.log("engine1")
            );
        }
        _ => {}
    }

    // Holds per SKU never above the stock; ids unique; one live hold per user and SKU.
    let live = kafka::live_holds(&o.created, &o.cancelled, attempt);
    for (s, n) in &live {
        assert!(
            *n <= INVENTORY,
            "{s}: {n} holds and orders for {INVENTORY} units"
        );
    }
    // A 409 means sold out (or the user's limit): every SKU sold all it had.
    assert!(
        o.other.get(&409).copied().unwrap_or(0) > 0,
        "the load sold out nothing"
    );

    // Every acknowledged hold, cancel and order is there, through the first gateway.
    let g0 = &bases[0];
    for (i, rid) in &o.created {
        let want = if o.orders.contains_key(i) {
            "CONFIRMED"
        } else if o.cancelled.contains(i) {
            "CANCELLED"
        } else {
            "RESERVED"
        };
        let a = eventually("reservation visible", 30, || async {
            let a = call(
                &client,
                g0,
                Method::GET,
                &format!("/api/v1/reservations/{rid}"),
                None,
                &[],
            )
            .await;
            (a.status == StatusCode::OK && a.body["status"] == want).then_some(a)
        })
        .await;
        assert_eq!(a.body["status"], want, "{rid}");
    }
    eventually("availability = stock - live holds - sold", 30, || async {
        let ps = products_by_sku(&client, g0).await;
        skus.iter()
            .all(|s| {
                ps[s]["availableCount"].as_u64()
                    == Some(INVENTORY - live.get(s).copied().unwrap_or(0))
            })
            .then_some(())
    })
    .await;
    if c.postgres.is_some() {
        for (i, oid) in &o.orders {
            let user = attempt(*i).0;
            eventually("order readable", 30, || async {
                let a = call(
                    &client,
                    g0,
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
                g0,
                Method::GET,
                &format!("/api/v1/orders/user/{user}"),
                None,
                &[],
            )
            .await;
            // A user is a user of one SKU (its name says which): one order at most.
            assert_eq!(
                list.body.as_array().map(|v| v.len()),
                Some(1),
                "orders of {user}: {}",
                list.body
            );
        }
    }

    // flashsale audit: every invariant, engine state against the Postgres orders.
    if let Some(pg) = &c.postgres {
        let mut clean = false;
        for _ in 0..20 {
            let mut args = vec!["audit".to_string(), "--quiet".into(), "--json".into()];
            args.extend([
                "--kafka".to_string(),
                svc.kafka.clone(),
                "--topic-prefix".into(),
                c.prefix.clone(),
                "--postgres".into(),
                pg.clone(),
            ]);
            let mut a = Proc::spawn("audit", &args, c.dir.path()).unwrap();
            if a.terminate_after_exit(120) {
                clean = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(clean, "flashsale audit found problems: {}", c.log("audit"));
    }
    drop(projector);
    drop(gateways);
    drop(engines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_an_engine_mid_load() {
    run(Fault::KillEngine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_engine_is_replaced_and_fenced_mid_load() {
    run(Fault::PauseEngine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_an_engine_mid_load_answers_no_503() {
    run(Fault::StopEngine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_gateway_mid_load() {
    run(Fault::KillGateway).await;
}
