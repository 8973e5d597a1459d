//! The Java client's default partitioner and ours agree, checked against the real
//! broker: the Java console producer (Kafka's own client, default partitioner) writes
//! keyed records, the console consumer says where each landed, and every key's
//! partition must be `partition_for_key(key, N)`: the partition whose engine actor
//! owns that SKU. So any Kafka client may produce commands.
//!
//! Needs the services (`make services-up`: Java and the Kafka jars); skips without
//! them unless `FLASHSALE_REQUIRE_SERVICES=1`.

use flashsale_tests::kafka;
#[path = "events_broker_restart.rs"]
mod events_broker_restart;
mod public_events;
use public_events::{
    audit_reservations, cancel_and_expire, holds_and_checkouts, inventory_matches_the_api,
    read_public_events, Acked, Expected,
};
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

/// The public sale events (docs/events.md) as another team's Kafka client sees them:
/// holds, checkouts, a cancel and an expiry through a Kafka deployment, published by
/// `flashsale events publish` (a child process, killed with SIGKILL mid-run and started
/// again), read back with `isolation.level=read_committed`: every acknowledged hold
/// exactly once as `created`, every checkout exactly once in `orders`, the cancel and
/// the expiry there, every record valid against its schema, ids unique, key = subject,
/// and each SKU's last inventory update equal to the API's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_events_reach_a_read_committed_consumer_exactly_once_through_kill9() {
    let _beside = public_events::beside_others().await;
    use flashsale_tests::{call, create_sale, kafka::Proc, unique_sku, TOKEN};
    use std::collections::{BTreeMap, HashSet};

    let Some(svc) = kafka::services_or_skip("public events") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let public_events::WithPublisher {
        running,
        base,
        prefix,
        http,
        publish_args,
        mut publisher,
    } = public_events::start_with_publisher(&svc, dir.path()).await;

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

/// `flashsale serve --publish-kafka` (embedded mode): the same public topics from the
/// node's own log. Holds, checkouts, a cancel and an expiry against a `flashsale serve`
/// child process that is killed with SIGKILL mid-run and started again on its data
/// directory; read back with read_committed exactly as the Kafka-mode test does (every
/// acknowledged hold once as `created`, every order once, schemas, unique ids), each
/// SKU's last inventory update equal to the API's count, and the reservations counted
/// by `flashsale audit` of the data directory equal to the `created` events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_serve_publishes_every_event_once_through_kill9_of_the_node() {
    let _beside = public_events::beside_others().await;
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
    let log = dir.path().join("server.log");
    let mut server = ChildServer::start_logged(&data, free_port(), &flags, Some(&log))
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
    server = ChildServer::start_logged(&data, free_port(), &flags, Some(&log))
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
        &dir.path().display().to_string(),
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
    let reservations = audit_reservations(&["--data-dir", data.to_str().unwrap()]);
    assert_eq!(
        reservations,
        acked.holds.len() as u64,
        "audit of the data dir"
    );
}

/// Kafka mode, `flashsale events publish` across an engine failover: two `flashsale
/// engine` processes and a gateway (child processes), the first engine killed with
/// SIGKILL mid-run (its partitions move to the second, which writes the same command
/// offsets' events again); every acknowledged hold still once as `created`, every order
/// once, read_committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_events_stay_exactly_once_through_kill9_of_an_engine() {
    let _beside = public_events::beside_others().await;
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
