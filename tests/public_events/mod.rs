//! What the public-events tests share (tests/kafka_partitioner.rs,
//! tests/events_broker_restart.rs): a sale run's acknowledged holds and orders, and a
//! read_committed reader of the three public topics that checks each event once.
#![allow(dead_code)] // each test binary uses its own part

/// `flashsale audit --json --quiet` of the log that `log_args` name (`--data-dir DIR`, or
/// `--kafka BROKERS --topic-prefix P`): asserts it exits 0 with no violation and returns
/// the reservations it counts over all partitions.
pub(crate) fn audit_reservations(log_args: &[&str]) -> u64 {
    let out = std::process::Command::new(flashsale_tests::flashsale_bin())
        .args(["audit", "--json", "--quiet"])
        .args(log_args)
        .env_remove("FLASHSALE_KAFKA")
        .env_remove("FLASHSALE_POSTGRES")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["violations"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reservations"].as_u64().unwrap())
        .sum()
}

/// What a run acknowledged: every hold (reservation id -> SKU), every order, the holds
/// checked out, one cancelled and one left to expire.
pub(crate) struct Expected<'a> {
    pub(crate) holds: &'a std::collections::BTreeMap<String, String>,
    pub(crate) orders: &'a std::collections::HashSet<String>,
    pub(crate) confirmed: &'a std::collections::HashSet<String>,
    pub(crate) cancelled: &'a String,
    pub(crate) expiring: &'a String,
}

/// The broker-restart test starts, stops and starts again a broker JVM of its own, which
/// takes both cores of a small machine for seconds at a time; the other public-events
/// tests of the binary run beside each other ([`beside_others`]) but not beside it
/// ([`alone`]), so that none of them measures a starved machine. (What a starved
/// publisher does is what the broker-restart test itself checks.)
/// (tokio's lock: each test has its own runtime, and a guard is held across awaits.)
static HEAVY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by the broker-restart test for its whole run.
pub(crate) async fn alone() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    HEAVY.write().await
}

/// Held by the other public-events tests for their whole run.
pub(crate) async fn beside_others() -> tokio::sync::RwLockReadGuard<'static, ()> {
    HEAVY.read().await
}

/// How long [`read_public_events`] waits for every expected event: a bound for a stuck
/// publisher, far above a normal run's few seconds (a broker restarted on a loaded
/// machine can take tens of seconds to serve transactions again).
const READ_DEADLINE_SECS: u64 = 150;

/// Reads the three public topics of `prefix` from their start with
/// `isolation.level=read_committed` until every expected event came (and 3 s more for a
/// duplicate to show), checking each record against its schema, key = subject and
/// unique ids; then every hold exactly once as `created`, every order exactly once,
/// each checkout's `confirmed` after its `created` on one partition, the cancel and the
/// expiry once, and no `created` of a hold nobody asked for. Returns each SKU's last
/// `inventory.updated` available count.
pub(crate) fn read_public_events(
    kafka: &str,
    prefix: &str,
    e: &Expected<'_>,
    logs: &str,
) -> std::collections::HashMap<String, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    use std::collections::{HashMap, HashSet};
    use std::time::{Duration, Instant};
    let (holds, orders, confirmed, cancelled, expiring) =
        (e.holds, e.orders, e.confirmed, e.cancelled, e.expiring);
    // The schemas, compiled by a real validator.
    let schemas: HashMap<String, jsonschema::Validator> =
        ["reservations", "inventory-updates", "orders"]
            .into_iter()
            .map(|name| {
                let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(format!("../schemas/events/{name}.json"));
                let schema: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
                let v = jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap();
                (format!("{prefix}{name}"), v)
            })
            .collect();

    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", format!("{prefix}test-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in schemas.keys() {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .unwrap();
        let n = md.topics()[0].partitions().len() as i32;
        assert!(n > 0, "topic {t} was created with the others");
        for p in 0..n {
            tpl.add_partition_offset(t, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    consumer.assign(&tpl).unwrap();

    // (type, reservation or order id) -> times seen; per SKU the last inventory count.
    let mut seen: HashMap<(String, String), u32> = HashMap::new();
    let mut ids: HashSet<String> = HashSet::new();
    let mut available: HashMap<String, i64> = HashMap::new();
    // per reservation, (partition, offset) of each state, to check log order per SKU
    let mut order_of: HashMap<String, Vec<(i32, i64, String)>> = HashMap::new();
    let complete = |seen: &HashMap<(String, String), u32>| {
        holds
            .keys()
            .all(|r| seen.contains_key(&("com.flashsale.reservation.created".into(), r.clone())))
            && orders
                .iter()
                .all(|o| seen.contains_key(&("com.flashsale.order.created".into(), o.clone())))
            && seen.contains_key(&(
                "com.flashsale.reservation.cancelled".into(),
                cancelled.clone(),
            ))
            && seen.contains_key(&("com.flashsale.reservation.expired".into(), expiring.clone()))
    };
    let deadline = Instant::now() + Duration::from_secs(READ_DEADLINE_SECS);
    let mut quiet_since: Option<Instant> = None;
    loop {
        if Instant::now() >= deadline {
            let missing_holds = holds
                .keys()
                .filter(|r| {
                    !seen.contains_key(&("com.flashsale.reservation.created".into(), (*r).clone()))
                })
                .count();
            let missing_orders = orders
                .iter()
                .filter(|o| {
                    !seen.contains_key(&("com.flashsale.order.created".into(), (*o).clone()))
                })
                .count();
            panic!(
                "not every event arrived within {READ_DEADLINE_SECS} s: {missing_holds} of {} holds and \
                 {missing_orders} of {} orders not seen as created; {} events seen. The \
                 processes' logs (their last lines):\n{}",
                holds.len(),
                orders.len(),
                ids.len(),
                log_tails(std::path::Path::new(logs), 40),
            );
        }
        if complete(&seen) {
            // Keep reading 3 s more: a duplicate would show up now.
            let q = *quiet_since.get_or_insert_with(Instant::now);
            if q.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let errors: Vec<String> = schemas[m.topic()]
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{value}: {errors:?}");
        assert_eq!(
            m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value["subject"].as_str().map(String::from),
            "key = subject = skuId"
        );
        let id = value["id"].as_str().unwrap().to_string();
        assert!(
            ids.insert(id.clone()),
            "event {id} delivered twice: {value}"
        );
        let ty = value["type"].as_str().unwrap().to_string();
        let data = &value["data"];
        let what = data["orderId"]
            .as_str()
            .filter(|_| ty.contains(".order."))
            .or_else(|| data["reservationId"].as_str())
            .or_else(|| data["skuId"].as_str())
            .unwrap()
            .to_string();
        if ty == "com.flashsale.inventory.updated" {
            available.insert(what.clone(), data["availableCount"].as_i64().unwrap());
        }
        if ty.starts_with("com.flashsale.reservation.") {
            order_of
                .entry(what.clone())
                .or_default()
                .push((m.partition(), m.offset(), ty.clone()));
        }
        *seen.entry((ty, what)).or_default() += 1;
    }

    for r in holds.keys() {
        assert_eq!(
            seen.get(&("com.flashsale.reservation.created".into(), r.clone())),
            Some(&1),
            "hold {r} as created"
        );
    }
    for o in orders {
        assert_eq!(
            seen.get(&("com.flashsale.order.created".into(), o.clone())),
            Some(&1),
            "order {o}"
        );
    }
    for r in confirmed {
        assert_eq!(
            seen.get(&("com.flashsale.reservation.confirmed".into(), r.clone())),
            Some(&1)
        );
        // created before confirmed, in the SKU's partition
        let states = &order_of[r];
        assert_eq!(states.len(), 2, "{r}: {states:?}");
        assert_eq!(states[0].0, states[1].0, "one key, one partition");
        assert!(states[0].1 < states[1].1, "{r}: {states:?}");
        assert_eq!(states[0].2, "com.flashsale.reservation.created");
    }
    assert_eq!(
        seen.get(&(
            "com.flashsale.reservation.cancelled".into(),
            cancelled.clone()
        )),
        Some(&1)
    );
    assert_eq!(
        seen.get(&("com.flashsale.reservation.expired".into(), expiring.clone())),
        Some(&1)
    );
    let created = seen
        .keys()
        .filter(|(t, _)| t == "com.flashsale.reservation.created")
        .count();
    assert_eq!(
        created,
        holds.len(),
        "no created event of a hold nobody asked for"
    );
    available
}

/// What a sale run acknowledged (see [`Expected`]), owned.
#[derive(Default)]
pub(crate) struct Acked {
    pub(crate) holds: std::collections::BTreeMap<String, String>,
    pub(crate) orders: std::collections::HashSet<String>,
    pub(crate) confirmed: std::collections::HashSet<String>,
}

/// POSTs `body` to `path` with an Idempotency-Key until it is answered 201 (a 503 of a
/// fault in progress is retried with the same key, so it is one hold however often it
/// is sent), for up to 60 s. After a 503 a checkout may also be answered 200: the
/// attempt whose outcome was unknown made the order, and the API answers a repeated
/// checkout with that first order and 200.
pub(crate) async fn post_until_201(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: serde_json::Value,
    key: &str,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut retried = false;
    loop {
        let a = flashsale_tests::call(
            http,
            base,
            reqwest::Method::POST,
            path,
            Some(body.clone()),
            &[("idempotency-key", key)],
        )
        .await;
        if a.status == 201 || (a.status == 200 && retried && path.ends_with("/checkout")) {
            return a.body;
        }
        retried = true;
        assert!(
            a.status == 503 && std::time::Instant::now() < deadline,
            "{path} {body}: {} {}",
            a.status,
            a.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Holds `range` (user u<i> on `skus[i % 3]`), every third one checked out.
pub(crate) async fn holds_and_checkouts(
    http: &reqwest::Client,
    base: &str,
    skus: &[String],
    range: std::ops::Range<usize>,
    acked: &mut Acked,
) {
    for i in range {
        let sku = &skus[i % 3];
        let a = post_until_201(
            http,
            base,
            "/api/v1/reservations",
            serde_json::json!({"userId": format!("u{i}"), "skuId": sku, "quantity": 1}),
            &format!("hold-{i}"),
        )
        .await;
        let rid = a["reservationId"].as_str().unwrap().to_string();
        acked.holds.insert(rid.clone(), sku.clone());
        if i % 3 == 0 {
            let o = post_until_201(
                http,
                base,
                "/api/v1/orders/checkout",
                serde_json::json!({"reservationId": rid, "paymentTransactionId": format!("pay{i}"),
                    "paymentMethod": "UPI", "shippingAddress": "1 Main St"}),
                &format!("checkout-{i}"),
            )
            .await;
            acked
                .orders
                .insert(o["orderId"].as_str().unwrap().to_string());
            acked.confirmed.insert(rid);
        }
    }
}

/// Cancels one hold that was not checked out and holds the one unit of `short` (TTL 2 s,
/// left to expire); returns (cancelled, expiring).
pub(crate) async fn cancel_and_expire(
    http: &reqwest::Client,
    base: &str,
    short: &str,
    acked: &mut Acked,
) -> (String, String) {
    let cancelled = acked
        .holds
        .keys()
        .find(|r| !acked.confirmed.contains(*r))
        .unwrap()
        .clone();
    let c = flashsale_tests::call(
        http,
        base,
        reqwest::Method::DELETE,
        &format!("/api/v1/reservations/{cancelled}"),
        None,
        &[],
    )
    .await;
    assert_eq!(c.status, 200, "cancel: {}", c.body);
    let e = post_until_201(
        http,
        base,
        "/api/v1/reservations",
        serde_json::json!({"userId": "late", "skuId": short, "quantity": 1}),
        "late",
    )
    .await;
    let expiring = e["reservationId"].as_str().unwrap().to_string();
    acked.holds.insert(expiring.clone(), short.to_string());
    (cancelled, expiring)
}

/// Each SKU's last `inventory.updated` equals the API's available count.
pub(crate) async fn inventory_matches_the_api(
    http: &reqwest::Client,
    base: &str,
    skus: impl IntoIterator<Item = String>,
    available: &std::collections::HashMap<String, i64>,
) {
    for sku in skus {
        let a = flashsale_tests::call(
            http,
            base,
            reqwest::Method::GET,
            &format!("/api/v1/products/{sku}/availability"),
            None,
            &[(
                "authorization",
                &format!("Bearer {}", flashsale_tests::TOKEN),
            )],
        )
        .await;
        assert_eq!(
            available.get(&sku).copied(),
            a.body["availableCount"].as_i64(),
            "{sku}: the last inventory update is the API's count"
        );
    }
}

/// The last `n` lines of every `*.log` in `dir` (the child processes' logs of a test,
/// deleted with its temporary dir), for a failure message.
pub(crate) fn log_tails(dir: &std::path::Path, n: usize) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return format!("(no logs: cannot read {})", dir.display());
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!(
            "--- {} ({} lines) ---\n",
            p.display(),
            lines.len()
        ));
        for l in &lines[lines.len().saturating_sub(n)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// A Kafka deployment with its publisher, as the public-events tests start it:
/// `serve --kafka` in this process on fresh topics of `svc` (data in `dir/data`), ready,
/// and `flashsale events publish` on the same topics as a child process (its log in
/// `dir`).
pub(crate) struct WithPublisher {
    pub(crate) running: flashsale_ops::Running,
    pub(crate) base: String,
    pub(crate) prefix: String,
    pub(crate) http: reqwest::Client,
    /// The publisher's command line, to start another one after a kill.
    pub(crate) publish_args: Vec<String>,
    pub(crate) publisher: flashsale_tests::kafka::Proc,
}

pub(crate) async fn start_with_publisher(
    svc: &flashsale_tests::kafka::Services,
    dir: &std::path::Path,
) -> WithPublisher {
    let kafka_args = flashsale_tests::kafka::serve_kafka_args(svc).await.unwrap();
    let prefix = kafka_args.topic_prefix.clone();
    let args = flashsale_tests::serve_args(dir.join("data"));
    let (gw, k, extras) = flashsale_ops::kafka::cli::serve_parts(&args, &kafka_args)
        .await
        .unwrap();
    let running = flashsale_ops::kafka::start(gw, k, extras).await.unwrap();
    let base = format!("http://{}", running.addr);
    let http = flashsale_tests::client();
    flashsale_tests::wait_ready(&http, &base).await;
    let publish_args: Vec<String> = [
        "events",
        "publish",
        "--kafka",
        &svc.kafka,
        "--topic-prefix",
        &prefix,
    ]
    .map(String::from)
    .to_vec();
    let publisher = flashsale_tests::kafka::Proc::spawn("publisher", &publish_args, dir).unwrap();
    WithPublisher {
        running,
        base,
        prefix,
        http,
        publish_args,
        publisher,
    }
}
