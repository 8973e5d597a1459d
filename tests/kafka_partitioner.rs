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
