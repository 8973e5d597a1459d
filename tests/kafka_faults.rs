//! Fault tests of Kafka mode against the real broker (issue 3, item 7): the
//! `flashsale` binary as child processes — two engines, two gateways, a projector —
//! on fresh topics and a fresh Postgres schema.
//!
//! One run: 20,000 reservation attempts over 10 SKUs (90 % on one hot SKU), clients
//! retrying 503s and dead connections with the same `Idempotency-Key` (switching
//! gateway); `kill -9` of one engine halfway (the other takes its partitions over)
//! and of one gateway at three quarters (its clients go on through the other one).
//! Afterwards: 201s per SKU = min(inventory, distinct users), no reservation id twice,
//! every 201 readable, availability consistent, checkouts' orders in Postgres,
//! `flashsale audit` clean. Then the hot partition is re-delivered from offset 0 to a
//! fresh engine: nothing changes.
//!
//! Bounded: a fixed number of attempts, each retried for at most 90 s; loopback only.
//! No timing assertions. Needs the services (`make services-up`) and the binary
//! (`cargo build --bin flashsale`); skips without services unless
//! `FLASHSALE_REQUIRE_SERVICES=1`.

use flashsale_tests::kafka::{self, Proc, Services};
use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 4;
const ATTEMPTS: usize = 20_000;
const CONCURRENCY: usize = 48;
/// Longest one attempt keeps retrying before the test calls it unresolved.
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(90);
const HOT: &str = "HOT";
const HOT_INVENTORY: u64 = 300;
const HOT_USERS: usize = 6000;
const COLD_USERS: usize = 150;

/// (sku, inventory) of the sale: the hot SKU, eight with less stock than buyers, one
/// with more.
fn skus() -> Vec<(String, u64)> {
    let mut v = vec![(HOT.to_string(), HOT_INVENTORY)];
    for i in 1..=8 {
        v.push((format!("COLD{i}"), 100));
    }
    v.push(("COLD9".to_string(), 1000));
    v
}

/// Attempt `i`: (user, sku). 90 % on the hot SKU from 6,000 users; the rest spread
/// over nine SKUs, 150 users each.
fn attempt(i: usize) -> (String, String) {
    if i % 10 != 9 {
        let h = i - i / 10;
        (format!("hot-u{}", h % HOT_USERS), HOT.to_string())
    } else {
        let c = i / 10;
        let sku = 1 + c % 9;
        (
            format!("c{sku}-u{}", (c / 9) % COLD_USERS),
            format!("COLD{sku}"),
        )
    }
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
                "2000",
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
                "--reply-deadline-ms",
                "2000",
            ]
            .map(String::from),
        );
        Proc::spawn(&format!("gateway{id}"), &args, self.dir.path()).expect("gateway starts")
    }
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    /// attempt index → reservation id, for 201s.
    created: BTreeMap<usize, String>,
    /// status → count, for answers other than 201.
    other: HashMap<u16, usize>,
    unresolved: Vec<(usize, String)>,
    retries: usize,
}

async fn one_attempt(
    client: &reqwest::Client,
    bases: &[String],
    alive: &[AtomicBool],
    i: usize,
) -> (Result<Answer, String>, usize) {
    let (user, sku) = attempt(i);
    let key = format!("attempt-{i}");
    let body = json!({"userId": user, "skuId": sku, "quantity": 1});
    let started = Instant::now();
    let mut g = i % bases.len();
    let mut retries = 0;
    loop {
        if !alive[g].load(Ordering::Acquire) {
            g = (g + 1) % bases.len();
        }
        let res = client
            .post(format!("{}/api/v1/reservations", bases[g]))
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(body.to_string())
            .send()
            .await;
        let retry_reason = match res {
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => "503".to_string(),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                return (
                    Ok(Answer {
                        status,
                        headers: Default::default(),
                        body,
                    }),
                    retries,
                );
            }
            Err(e) => e.to_string(),
        };
        if started.elapsed() > ATTEMPT_DEADLINE {
            return (
                Err(format!(
                    "still unanswered after {ATTEMPT_DEADLINE:?}: {retry_reason}"
                )),
                retries,
            );
        }
        retries += 1;
        // Another gateway for the retry (the same key makes it safe).
        g = (g + 1) % bases.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_and_gateways_killed_mid_load() {
    let Some(svc) = kafka::services_or_skip("kafka_faults") else {
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
    let ports = [free_port(), free_port()];
    let mut gateways = vec![c.gateway(0, ports[0]), c.gateway(1, ports[1])];
    let bases: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let client = client();
    for b in &bases {
        wait_ready(&client, b).await;
    }

    // The sale (retried: the engines may still be joining the group).
    let products: Vec<(String, u64)> = skus();
    let spec: Vec<(&str, u64, u64)> = products.iter().map(|(s, n)| (s.as_str(), *n, 1)).collect();
    let sale = eventually("sale created", 60, || async {
        let body = json!({"name": "Fault Sale", "startsAt": time_in(-5), "endsAt": time_in(7200),
            "reservationTtlSeconds": 3600,
            "products": spec.iter().map(|(s, n, l)| json!({"skuId": s, "name": s, "basePrice": 10.0,
                "flashSalePrice": 5.0, "totalInventory": n, "perUserLimit": l})).collect::<Vec<_>>()});
        let a = call(&client, &bases[0], Method::POST, "/api/v1/admin/sales", Some(body), &[("authorization", &format!("Bearer {TOKEN}"))]).await;
        (a.status == StatusCode::CREATED).then(|| a.body["saleId"].as_str().unwrap().to_string())
    })
    .await;
    assert!(sale.starts_with("sale_"));
    for b in &bases {
        eventually("products visible on every gateway", 30, || async {
            (products_by_sku(&client, b).await.len() == products.len()).then_some(())
        })
        .await;
    }

    // The load, with an engine and then a gateway killed along the way.
    let alive: Arc<Vec<AtomicBool>> =
        Arc::new(bases.iter().map(|_| AtomicBool::new(true)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (client, bases, alive, next, done, outcomes) = (
            client.clone(),
            bases.clone(),
            alive.clone(),
            next.clone(),
            done.clone(),
            outcomes.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::AcqRel);
                if i >= ATTEMPTS {
                    break;
                }
                let (r, retries) = one_attempt(&client, &bases, &alive, i).await;
                let mut o = outcomes.lock().unwrap();
                o.retries += retries;
                match r {
                    Ok(a) if a.status == StatusCode::CREATED => {
                        o.created
                            .insert(i, a.body["reservationId"].as_str().unwrap().to_string());
                    }
                    Ok(a) => *o.other.entry(a.status.as_u16()).or_default() += 1,
                    Err(e) => o.unresolved.push((i, e)),
                }
                drop(o);
                done.fetch_add(1, Ordering::AcqRel);
            }
        }));
    }
    let load_started = Instant::now();
    eventually("half the attempts done", 600, || async {
        (done.load(Ordering::Acquire) >= ATTEMPTS / 2).then_some(())
    })
    .await;
    engines[0].kill9();
    eprintln!(
        "kill -9 engine0 after {} attempts ({:?})",
        done.load(Ordering::Acquire),
        load_started.elapsed()
    );
    eventually("three quarters done", 600, || async {
        (done.load(Ordering::Acquire) >= ATTEMPTS * 3 / 4).then_some(())
    })
    .await;
    alive[1].store(false, Ordering::Release);
    gateways[1].kill9();
    eprintln!(
        "kill -9 gateway1 after {} attempts ({:?})",
        done.load(Ordering::Acquire),
        load_started.elapsed()
    );
    for t in tasks {
        t.await.expect("client task");
    }
    let o = std::mem::take(&mut *outcomes.lock().unwrap());
    eprintln!(
        "load done in {:?}: {} created, others {:?}, {} retries",
        load_started.elapsed(),
        o.created.len(),
        o.other,
        o.retries
    );
    assert!(
        o.unresolved.is_empty(),
        "unresolved attempts (first 5): {:?}",
        &o.unresolved[..o.unresolved.len().min(5)]
    );
    assert!(
        engines[1].is_running(),
        "the surviving engine died: {}",
        c.log("engine1")
    );
    let unexpected: Vec<_> = o.other.keys().filter(|s| **s != 409).collect();
    assert!(unexpected.is_empty(), "unexpected statuses {:?}", o.other);

    // 201s per SKU = min(inventory, distinct users); never a reservation id twice.
    let mut per_sku: HashMap<String, usize> = HashMap::new();
    let mut users_per_sku: HashMap<String, HashSet<String>> = HashMap::new();
    for i in 0..ATTEMPTS {
        let (user, sku) = attempt(i);
        users_per_sku.entry(sku).or_default().insert(user);
    }
    for i in o.created.keys() {
        *per_sku.entry(attempt(*i).1).or_default() += 1;
    }
    for (sku, inventory) in &products {
        let want = (*inventory as usize).min(users_per_sku[sku].len());
        assert_eq!(
            per_sku.get(sku).copied().unwrap_or(0),
            want,
            "201s for {sku}"
        );
    }
    let ids: HashSet<&String> = o.created.values().collect();
    assert_eq!(
        ids.len(),
        o.created.len(),
        "a reservation id was handed out twice"
    );

    // Every 201 readable through the surviving gateway; availability consistent.
    let g0 = &bases[0];
    for rid in o.created.values() {
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
            (a.status == StatusCode::OK).then_some(a)
        })
        .await;
        assert_eq!(a.body["status"], "RESERVED", "{rid}");
    }
    let before = eventually("availability = inventory - holds", 30, || async {
        let ps = products_by_sku(&client, g0).await;
        let ok = products.iter().all(|(sku, inv)| {
            ps[sku]["availableCount"].as_u64() == Some(inv - per_sku[sku] as u64)
        });
        ok.then_some(ps)
    })
    .await;

    // Checkouts: each order ends up in Postgres (served by the gateway from there).
    let to_buy: Vec<(usize, String)> = o
        .created
        .iter()
        .take(30)
        .map(|(i, r)| (*i, r.clone()))
        .collect();
    let mut orders = Vec::new();
    for (i, rid) in &to_buy {
        let body = json!({"reservationId": rid, "paymentTransactionId": format!("pay-{i}"),
            "paymentMethod": "CREDIT_CARD", "shippingAddress": "1 Test Street"});
        let a = eventually("checkout answered", 60, || async {
            let a = call(
                &client,
                g0,
                Method::POST,
                "/api/v1/orders/checkout",
                Some(body.clone()),
                &[],
            )
            .await;
            (a.status != StatusCode::SERVICE_UNAVAILABLE).then_some(a)
        })
        .await;
        assert!(
            a.status == StatusCode::CREATED || a.status == StatusCode::OK,
            "checkout {rid}: {:?}",
            a.body
        );
        orders.push((
            attempt(*i).0,
            a.body["orderId"].as_str().unwrap().to_string(),
        ));
    }
    for (user, oid) in &orders {
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
        assert_eq!(
            list.body.as_array().map(|v| v.len()),
            Some(1),
            "orders of {user}: {}",
            list.body
        );
    }
    let products_after_checkout = products_by_sku(&client, g0).await;
    for (sku, p) in &products_after_checkout {
        assert_eq!(
            p["availableCount"], before[sku]["availableCount"],
            "checkout does not free stock"
        );
    }

    // flashsale audit: every invariant, engine state against the Postgres orders.
    if let Some(pg) = &c.postgres {
        // The projector is within a second of the events; give it time, bounded.
        let mut clean = false;
        for _ in 0..20 {
            let mut args = vec!["audit".to_string(), "--quiet".into(), "--json".into()];
            args.extend([
                "--kafka".to_string(),
                svc.kafka.clone(),
                "--topic-prefix".into(),
                c.prefix.clone(),
            ]);
            args.extend(["--postgres".to_string(), pg.clone()]);
            let mut a = Proc::spawn("audit", &args, c.dir.path()).unwrap();
            if a.terminate_after_exit(120) {
                clean = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(clean, "flashsale audit found problems: {}", c.log("audit"));
    }

    // Re-deliver the hot partition from offset 0 to a fresh engine: nothing changes.
    let hot_partition = flashsale_proto::partition_for_key(HOT.as_bytes(), PARTITIONS);
    assert!(
        engines[1].terminate(),
        "engine1 did not stop on SIGTERM: {}",
        c.log("engine1")
    );
    let (brokers, group, topic) = (
        svc.kafka.clone(),
        c.group.clone(),
        format!("{}commands", c.prefix),
    );
    tokio::task::spawn_blocking(move || {
        flashsale_ops::kafka::topics::rewind_group(&brokers, &group, &topic, hot_partition, 0)
    })
    .await
    .unwrap()
    .expect("rewind the group");
    engines.push(c.engine("engine2"));
    // A probe through the re-delivered partition: answered only after everything
    // before it was applied again; the hot SKU is sold out, so it changes nothing.
    let probe = eventually("probe answered", 120, || async {
        let a = call(
            &client,
            g0,
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": "probe-user", "skuId": HOT, "quantity": 1})),
            &[("idempotency-key", "probe")],
        )
        .await;
        (a.status != StatusCode::SERVICE_UNAVAILABLE).then_some(a)
    })
    .await;
    assert_eq!(probe.status, StatusCode::CONFLICT, "{}", probe.body);
    assert_eq!(probe.error(), "Out of Stock");
    // The engine's one line per assignment lists the partitions it rebuilt by
    // replaying the whole log.
    let replayed = c.log("engine2").lines().any(|l| {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            return false;
        };
        let f = &v["fields"];
        f["message"] == "assignment recovered"
            && match &f["replayed_from_log_start"] {
                Value::Array(ps) => ps.iter().any(|x| x.as_u64() == Some(hot_partition as u64)),
                Value::String(s) => s
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .any(|x| x.trim() == hot_partition.to_string()),
                _ => false,
            }
    });
    assert!(
        replayed,
        "engine2 did not replay the hot partition from the start: {}",
        c.log("engine2")
    );
    assert_eq!(
        products_by_sku(&client, g0).await,
        products_after_checkout,
        "a re-delivery changed the products"
    );
    for rid in o.created.values().take(500) {
        let a = call(
            &client,
            g0,
            Method::GET,
            &format!("/api/v1/reservations/{rid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
    }
    for (user, oid) in &orders {
        let list = call(
            &client,
            g0,
            Method::GET,
            &format!("/api/v1/orders/user/{user}"),
            None,
            &[],
        )
        .await;
        let ids: Vec<&str> = list
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["orderId"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            vec![oid.as_str()],
            "orders of {user} after the re-delivery"
        );
    }
    drop(projector);
    drop(gateways);
    drop(engines);
}

/// A `commands` record holding a batch (what a gateway sends for the commands of one
/// partition that arrive together; any Kafka client may write one): holds on two SKUs
/// of one partition, a command delivered twice and a client's retry with the same
/// `Idempotency-Key` inside the batch. The engine applies it as consecutive commands:
/// each hold once, the duplicate and the retry make nothing new, stock and the
/// per-user limit hold; then single-command records still work next to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_record_from_any_client_is_applied_as_consecutive_commands() {
    use flashsale_proto::{
        partition_for_key, BatchEncoder, Command, CommandRecord, RequestId, ReservationId, SkuId,
        UserId, NO_REPLY,
    };
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let Some(svc) = kafka::services_or_skip("kafka_faults batch record") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let args = serve_args(dir.path().join("data"));
    let partitions = args.partitions;
    let k = kafka::serve_kafka_args(&svc).await.unwrap();
    let topic = format!("{}commands", k.topic_prefix);
    let (gw, kp, extras) = flashsale_ops::kafka::cli::serve_parts(&args, &k)
        .await
        .unwrap();
    let running = flashsale_ops::kafka::start(gw, kp, extras).await.unwrap();
    let base = format!("http://{}", running.addr);
    let client = client();
    wait_ready(&client, &base).await;
    // Two SKUs of one partition.
    let a = unique_sku("BATCH-A");
    let p = partition_for_key(a.as_bytes(), partitions);
    let b = (0..)
        .map(|i| format!("{a}-b{i}"))
        .find(|s| partition_for_key(s.as_bytes(), partitions) == p)
        .unwrap();
    create_sale(&client, &base, &[(&a, 2, 1), (&b, 5, 1)], 600, -5).await;
    let reserve = |req: u128, user: &str, sku: &str, key: Option<&str>| CommandRecord {
        request_id: RequestId(req),
        reply_to: NO_REPLY,
        idempotency_key: key.map(str::to_string),
        command: Command::Reserve {
            user: UserId::parse(user).unwrap(),
            sku: SkuId::parse(sku).unwrap(),
            quantity: 1,
        },
    };
    // Request ids in the ULID layout (48-bit ms time, then randomness), unique to this run.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let id = |n: u128| (t << 80) | (u128::from(std::process::id()) << 16) | n;
    let batch = [
        reserve(id(1), "batch-u1", &a, None),
        reserve(id(2), "batch-u2", &b, None),
        reserve(id(3), "batch-u3", &a, Some("batch-key")),
        // the client's retry with the same key
        reserve(id(4), "batch-u3", &a, Some("batch-key")),
        // request 1 delivered twice
        reserve(id(1), "batch-u1", &a, None),
        // over the per-user limit (1) on B
        reserve(id(5), "batch-u2", &b, None),
        // A is sold out (2 held)
        reserve(id(6), "batch-u4", &a, None),
    ];
    let mut enc = BatchEncoder::new();
    for c in &batch {
        enc.push(c);
    }
    let payload = enc.take();
    let single = flashsale_proto::encode(&reserve(id(7), "batch-u5", &b, None));
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &svc.kafka)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for value in [&payload, &single] {
        producer
            .send(
                FutureRecord::<[u8], [u8]>::to(&topic)
                    .partition(p as i32)
                    .key(a.as_bytes())
                    .payload(&value[..]),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let available = |sku: String| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r = call(
                &client,
                &base,
                Method::GET,
                &format!("/api/v1/products/{sku}/availability"),
                None,
                &[],
            )
            .await;
            r.body["availableCount"].as_u64()
        }
    };
    eventually("the batch and the single record applied", 60, || {
        let (fa, fb) = (available(a.clone()), available(b.clone()));
        async move {
            let (x, y) = (fa.await, fb.await);
            (x == Some(0) && y == Some(3)).then_some(())
        }
    })
    .await;
    let hold = |n: u128| ReservationId {
        partition: p as u16,
        ulid: id(n),
    };
    for (n, exists) in [
        (1, true),
        (2, true),
        (3, true),
        (4, false),
        (5, false),
        (6, false),
        (7, true),
    ] {
        let r = call(
            &client,
            &base,
            Method::GET,
            &format!("/api/v1/reservations/{}", hold(n)),
            None,
            &[],
        )
        .await;
        if exists {
            assert_eq!(r.status, StatusCode::OK, "request {n}: {:?}", r.body);
            assert_eq!(r.body["status"], "RESERVED", "request {n}");
        } else {
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "request {n} made no hold: {:?}",
                r.body
            );
        }
    }
    // Holds through the gateway (its own batches) still work next to it.
    let r = call(
        &client,
        &base,
        Method::POST,
        "/api/v1/reservations",
        Some(json!({"userId": "batch-u6", "skuId": b, "quantity": 1})),
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(available(b.clone()).await, Some(2));
    running.stop().await.unwrap();
}
