//! The Java client's default partitioner and ours agree, checked against the real
//! broker: the Java console producer (Kafka's own client, default partitioner) writes
//! keyed records, the console consumer says where each landed, and every key's
//! partition must be `partition_for_key(key, N)`: the partition whose engine actor
//! owns that SKU. So any Kafka client may produce commands.
//!
//! Needs the services (`make services-up`: Java and the Kafka jars); skips without
//! them unless `FLASHSALE_REQUIRE_SERVICES=1`.

use flashsale_tests::kafka;
use std::io::Write;
use std::process::{Command, Stdio};

const PARTITIONS: u32 = 8;

fn run_class() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops/kafka/run-class.sh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_default_partitioner_matches_partition_for_key() {
    let Some(svc) = kafka::services_or_skip("kafka_partitioner") else {
        return;
    };
    let prefix = format!("flashsale-test-{}.", kafka::unique_id());
    kafka::create_topics(&svc.kafka, &prefix, PARTITIONS, 1)
        .await
        .expect("topics");
    let topic = format!("{prefix}commands");
    // Kafka's own murmur2 test keys, SKU-like ids of every length from 1 to 64, and
    // the characters docs/api.md allows in a skuId.
    let mut keys: Vec<String> = [
        "21",
        "foobar",
        "a-little-bit-long-string",
        "a-little-bit-longer-string",
        "abc",
    ]
    .map(String::from)
    .to_vec();
    keys.extend((1..=64).map(|n| {
        format!("SKU-{}", "X".repeat(n))
            .chars()
            .take(n)
            .collect::<String>()
    }));
    keys.extend((0..100).map(|i| format!("IPHONE15-{i}GB")));
    keys.push("a.b:c@d_e-F9".to_string());

    let n = keys.len();
    let brokers = svc.kafka.clone();
    let (topic2, keys2) = (topic.clone(), keys.clone());
    let produced = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("bash")
            .arg(run_class())
            .args([
                "org.apache.kafka.tools.ConsoleProducer",
                "--bootstrap-server",
                &brokers,
                "--topic",
                &topic2,
            ])
            .args([
                "--property",
                "parse.key=true",
                "--property",
                "key.separator=|",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("console producer starts");
        let mut stdin = child.stdin.take().expect("stdin");
        for (i, k) in keys2.iter().enumerate() {
            writeln!(stdin, "{k}|value-{i}").expect("write a record");
        }
        drop(stdin);
        child.wait().expect("console producer ends")
    })
    .await
    .unwrap();
    assert!(produced.success(), "the Java console producer failed");

    let brokers = svc.kafka.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(run_class())
            .args([
                "org.apache.kafka.tools.consumer.ConsoleConsumer",
                "--bootstrap-server",
                &brokers,
                "--topic",
                &topic,
            ])
            .args([
                "--from-beginning",
                "--timeout-ms",
                "10000",
                "--max-messages",
                &keys.len().to_string(),
            ])
            .args([
                "--property",
                "print.partition=true",
                "--property",
                "print.key=true",
            ])
            .stderr(Stdio::null())
            .output()
            .expect("console consumer runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = 0;
    for line in text.lines() {
        // "Partition:3\tKEY\tvalue-7"
        let mut cols = line.split('\t');
        let (Some(p), Some(key)) = (
            cols.next().and_then(|p| p.strip_prefix("Partition:")),
            cols.next(),
        ) else {
            continue;
        };
        let p: u32 = p.trim().parse().expect("a partition number");
        assert_eq!(
            p,
            flashsale_proto::partition_for_key(key.as_bytes(), PARTITIONS),
            "the Java client put key {key:?} on partition {p}"
        );
        seen += 1;
    }
    assert_eq!(seen, n, "records read back: {text}");
}

/// What a run acknowledged: every hold (reservation id -> SKU), every order, the holds
/// checked out, one cancelled and one left to expire.
struct Expected<'a> {
    holds: &'a std::collections::BTreeMap<String, String>,
    orders: &'a std::collections::HashSet<String>,
    confirmed: &'a std::collections::HashSet<String>,
    cancelled: &'a String,
    expiring: &'a String,
}

/// Reads the three public topics of `prefix` from their start with
/// `isolation.level=read_committed` until every expected event came (and 3 s more for a
/// duplicate to show), checking each record against its schema, key = subject and
/// unique ids; then every hold exactly once as `created`, every order exactly once,
/// each checkout's `confirmed` after its `created` on one partition, the cancel and the
/// expiry once, and no `created` of a hold nobody asked for. Returns each SKU's last
/// `inventory.updated` available count.
fn read_public_events(
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
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut quiet_since: Option<Instant> = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "not every event arrived within 90 s; seen {} kinds; publisher logs in {logs}",
            seen.len(),
        );
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

/// The public sale events (docs/events.md) as another team's Kafka client sees them:
/// holds, checkouts, a cancel and an expiry through a Kafka deployment, published by
/// `flashsale events publish` (a child process, killed with SIGKILL mid-run and started
/// again), read back with `isolation.level=read_committed`: every acknowledged hold
/// exactly once as `created`, every checkout exactly once in `orders`, the cancel and
/// the expiry there, every record valid against its schema, ids unique, key = subject,
/// and each SKU's last inventory update equal to the API's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_events_reach_a_read_committed_consumer_exactly_once_through_kill9() {
    use flashsale_tests::{call, client, create_sale, kafka::Proc, serve_args, unique_sku, TOKEN};
    use std::collections::{BTreeMap, HashSet};

    let Some(svc) = kafka::services_or_skip("public events") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let kafka_args = kafka::serve_kafka_args(&svc).await.unwrap();
    let prefix = kafka_args.topic_prefix.clone();
    let args = serve_args(dir.path().join("data"));
    let (gw, k, extras) = flashsale_ops::kafka::cli::serve_parts(&args, &kafka_args)
        .await
        .unwrap();
    let running = flashsale_ops::kafka::start(gw, k, extras).await.unwrap();
    let base = format!("http://{}", running.addr);
    let http = client();
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
    let mut publisher = Proc::spawn("publisher", &publish_args, dir.path()).unwrap();

    let skus: Vec<String> = (0..3).map(|_| unique_sku("PUB")).collect();
    let short = unique_sku("PUBTTL");
    create_sale(
        &http,
        &base,
        &skus.iter().map(|s| (s.as_str(), 30, 1)).collect::<Vec<_>>(),
        600,
        -1,
    )
    .await;
    create_sale(&http, &base, &[(short.as_str(), 1, 1)], 2, -1).await;

    let post = |path: &str, body: serde_json::Value| {
        let (http, base, path) = (http.clone(), base.clone(), path.to_string());
        async move { call(&http, &base, reqwest::Method::POST, &path, Some(body), &[]).await }
    };
    let mut holds: BTreeMap<String, String> = BTreeMap::new(); // reservation -> sku
    let mut orders: HashSet<String> = HashSet::new();
    let mut confirmed: HashSet<String> = HashSet::new();
    for i in 0..60usize {
        if i == 30 {
            // Mid-run: the publisher dies without a word and starts again.
            publisher.kill9();
            publisher = Proc::spawn("publisher-2", &publish_args, dir.path()).unwrap();
        }
        let sku = &skus[i % 3];
        let a = post(
            "/api/v1/reservations",
            serde_json::json!({"userId": format!("u{i}"), "skuId": sku, "quantity": 1}),
        )
        .await;
        assert_eq!(a.status, 201, "hold {i}: {}", a.body);
        let rid = a.body["reservationId"].as_str().unwrap().to_string();
        holds.insert(rid.clone(), sku.clone());
        if i % 3 == 0 {
            let o = post(
                "/api/v1/orders/checkout",
                serde_json::json!({"reservationId": rid, "paymentTransactionId": format!("pay{i}"),
                    "paymentMethod": "UPI", "shippingAddress": "1 Main St"}),
            )
            .await;
            assert_eq!(o.status, 201, "checkout {i}: {}", o.body);
            orders.insert(o.body["orderId"].as_str().unwrap().to_string());
            confirmed.insert(rid);
        }
    }
    let cancelled = holds
        .keys()
        .find(|r| !confirmed.contains(*r))
        .unwrap()
        .clone();
    let c = call(
        &http,
        &base,
        reqwest::Method::DELETE,
        &format!("/api/v1/reservations/{cancelled}"),
        None,
        &[],
    )
    .await;
    assert_eq!(c.status, 200, "cancel: {}", c.body);
    let e = post(
        "/api/v1/reservations",
        serde_json::json!({"userId": "late", "skuId": short, "quantity": 1}),
    )
    .await;
    assert_eq!(e.status, 201, "{}", e.body);
    let expiring = e.body["reservationId"].as_str().unwrap().to_string();
    holds.insert(expiring.clone(), short.clone());

    let available = read_public_events(
        &svc.kafka,
        &prefix,
        &Expected {
            holds: &holds,
            orders: &orders,
            confirmed: &confirmed,
            cancelled: &cancelled,
            expiring: &expiring,
        },
        &dir.path().display().to_string(),
    );
    drop(publisher);
    for sku in skus.iter().chain([&short]) {
        let a = call(
            &http,
            &base,
            reqwest::Method::GET,
            &format!("/api/v1/products/{sku}/availability"),
            None,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
        assert_eq!(
            available.get(sku).copied(),
            a.body["availableCount"].as_i64(),
            "{sku}: the last inventory update is the API's count"
        );
    }
    running.stop().await.unwrap();
}

/// What a sale run acknowledged (see [`Expected`]), owned.
#[derive(Default)]
struct Acked {
    holds: std::collections::BTreeMap<String, String>,
    orders: std::collections::HashSet<String>,
    confirmed: std::collections::HashSet<String>,
}

/// POSTs `body` to `path` with an Idempotency-Key until it is answered 201 (a 503 of a
/// fault in progress is retried with the same key, so it is one hold however often it
/// is sent), for up to 60 s.
async fn post_until_201(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: serde_json::Value,
    key: &str,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
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
        if a.status == 201 {
            return a.body;
        }
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
async fn holds_and_checkouts(
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
async fn cancel_and_expire(
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
async fn inventory_matches_the_api(
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

/// `flashsale serve --publish-kafka` (embedded mode): the same public topics from the
/// node's own log. Holds, checkouts, a cancel and an expiry against a `flashsale serve`
/// child process that is killed with SIGKILL mid-run and started again on its data
/// directory; read back with read_committed exactly as the Kafka-mode test does (every
/// acknowledged hold once as `created`, every order once, schemas, unique ids), each
/// SKU's last inventory update equal to the API's count, and the reservations counted
/// by `flashsale audit` of the data directory equal to the `created` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_serve_publishes_every_event_once_through_kill9_of_the_node() {
    use flashsale_tests::{client, create_sale, free_port, unique_sku, ChildServer};

    let Some(svc) = kafka::services_or_skip("embedded public events") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let prefix = format!("flashsale-test-{}.", kafka::unique_id());
    kafka::create_topics(&svc.kafka, &prefix, 4, 1)
        .await
        .unwrap();
    let flags = [
        "--publish-kafka",
        svc.kafka.as_str(),
        "--topic-prefix",
        prefix.as_str(),
    ];
    let mut server = ChildServer::start(&data, free_port(), &flags)
        .await
        .unwrap();
    let http = client();

    let skus: Vec<String> = (0..3).map(|_| unique_sku("EPUB")).collect();
    let short = unique_sku("EPUBTTL");
    create_sale(
        &http,
        &server.base,
        &skus.iter().map(|s| (s.as_str(), 30, 1)).collect::<Vec<_>>(),
        600,
        -1,
    )
    .await;
    create_sale(&http, &server.base, &[(short.as_str(), 1, 1)], 2, -1).await;
    let mut acked = Acked::default();
    holds_and_checkouts(&http, &server.base, &skus, 0..30, &mut acked).await;
    // Mid-run: the node dies without a word (its publisher too) and starts again.
    server.kill9();
    server = ChildServer::start(&data, free_port(), &flags)
        .await
        .unwrap();
    holds_and_checkouts(&http, &server.base, &skus, 30..60, &mut acked).await;
    let (cancelled, expiring) = cancel_and_expire(&http, &server.base, &short, &mut acked).await;

    let available = read_public_events(
        &svc.kafka,
        &prefix,
        &Expected {
            holds: &acked.holds,
            orders: &acked.orders,
            confirmed: &acked.confirmed,
            cancelled: &cancelled,
            expiring: &expiring,
        },
        "(the child server's stderr is not kept)",
    );
    inventory_matches_the_api(
        &http,
        &server.base,
        skus.iter().cloned().chain([short]),
        &available,
    )
    .await;
    server.kill9();

    // The operators' audit of the same log counts the same reservations.
    let out = Command::new(flashsale_tests::flashsale_bin())
        .args(["audit", "--json", "--quiet", "--data-dir"])
        .arg(&data)
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
    let reservations: u64 = report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reservations"].as_u64().unwrap())
        .sum();
    assert_eq!(reservations, acked.holds.len() as u64, "audit: {report}");
}

/// Kafka mode, `flashsale events publish` across an engine failover: two `flashsale
/// engine` processes and a gateway (child processes), the first engine killed with
/// SIGKILL mid-run (its partitions move to the second, which writes the same command
/// offsets' events again); every acknowledged hold still once as `created`, every order
/// once, read_committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_events_stay_exactly_once_through_kill9_of_an_engine() {
    use flashsale_tests::{
        client, create_sale, free_port, kafka::Proc, unique_sku, wait_ready, TOKEN,
    };

    let Some(svc) = kafka::services_or_skip("public events through an engine failover") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let id = kafka::unique_id();
    let prefix = format!("flashsale-test-{id}.");
    kafka::create_topics(&svc.kafka, &prefix, 4, 1)
        .await
        .unwrap();
    let common = [
        "--kafka",
        svc.kafka.as_str(),
        "--topic-prefix",
        prefix.as_str(),
    ];
    let engine = |name: &str| {
        let mut args: Vec<String> = vec!["engine".into()];
        args.extend(common.map(String::from));
        args.extend(
            [
                "--engine-group",
                &format!("flashsale-test-{id}-engine"),
                "--data-dir",
                dir.path().join("engines").to_str().unwrap(),
            ]
            .map(String::from),
        );
        Proc::spawn(name, &args, dir.path()).expect("engine starts")
    };
    let mut first = engine("engine0");
    let _second = engine("engine1");
    let port = free_port();
    let mut args: Vec<String> = vec!["gateway".into()];
    args.extend(common.map(String::from));
    args.extend(
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
    let _gateway = Proc::spawn("gateway", &args, dir.path()).expect("gateway starts");
    let mut args: Vec<String> = vec!["events".into(), "publish".into()];
    args.extend(common.map(String::from));
    let _publisher = Proc::spawn("publisher", &args, dir.path()).expect("publisher starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    wait_ready(&http, &base).await;

    let skus: Vec<String> = (0..3).map(|_| unique_sku("FPUB")).collect();
    let short = unique_sku("FPUBTTL");
    create_sale(
        &http,
        &base,
        &skus.iter().map(|s| (s.as_str(), 30, 1)).collect::<Vec<_>>(),
        600,
        -1,
    )
    .await;
    create_sale(&http, &base, &[(short.as_str(), 1, 1)], 2, -1).await;
    let mut acked = Acked::default();
    holds_and_checkouts(&http, &base, &skus, 0..30, &mut acked).await;
    first.kill9();
    holds_and_checkouts(&http, &base, &skus, 30..60, &mut acked).await;
    let (cancelled, expiring) = cancel_and_expire(&http, &base, &short, &mut acked).await;
    let available = read_public_events(
        &svc.kafka,
        &prefix,
        &Expected {
            holds: &acked.holds,
            orders: &acked.orders,
            confirmed: &acked.confirmed,
            cancelled: &cancelled,
            expiring: &expiring,
        },
        &dir.path().display().to_string(),
    );
    inventory_matches_the_api(
        &http,
        &base,
        skus.iter().cloned().chain([short]),
        &available,
    )
    .await;
}

/// schemas/asyncapi.yaml names the three public topics, and each channel's message
/// payload is one of schemas/events/*.json, which a real JSON Schema validator
/// compiles (no broker needed).
#[test]
fn asyncapi_channels_point_at_compiling_schemas() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("asyncapi.yaml")).unwrap())
            .unwrap();
    assert_eq!(doc["asyncapi"].as_str(), Some("3.0.0"));
    let mut addresses = Vec::new();
    for (name, ch) in doc["channels"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        addresses.push(ch["address"].as_str().unwrap().to_string());
        for (_, m) in ch["messages"].as_mapping().unwrap() {
            let r = m["$ref"].as_str().unwrap();
            let key = r.strip_prefix("#/components/messages/").unwrap();
            let payload = doc["components"]["messages"][key]["payload"]["$ref"]
                .as_str()
                .unwrap();
            assert_eq!(payload, format!("events/{name}.json"));
            let schema: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(root.join(payload)).unwrap())
                    .unwrap();
            jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("{payload}: {e}"));
        }
    }
    addresses.sort();
    assert_eq!(
        addresses,
        [
            "flashsale.inventory-updates",
            "flashsale.orders",
            "flashsale.reservations"
        ]
    );
}
