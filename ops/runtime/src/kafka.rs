//! Kafka client settings every process shares (idempotent producers, `acks=all`,
//! latency-first sockets), and small helpers around librdkafka's blocking admin calls.

use anyhow::Context as _;
use flashsale_proto::Topics;
use rdkafka::consumer::BaseConsumer;
use rdkafka::consumer::Consumer as _;
use rdkafka::ClientConfig;

/// Settings every client of this process shares.
pub fn base_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        // Loopback and LAN brokers: find a dead broker quickly.
        .set("socket.keepalive.enable", "true")
        // Small records, latency first: never let Nagle hold a request back.
        .set("socket.nagle.disable", "true")
        .set("reconnect.backoff.max.ms", "1000")
        .set("log_level", "4");
    c
}

/// An idempotent producer (`enable.idempotence`, `acks=all`, ordered, no duplicates
/// on retry). `linger_ms` trades a little latency for batching under load.
pub fn producer_config(brokers: &str, client_id: &str, linger_ms: u32) -> ClientConfig {
    let mut c = base_config(brokers, client_id);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "262144")
        // A record not acked in 30 s fails; its request got a 503 long before.
        .set("message.timeout.ms", "30000");
    c
}

/// Milliseconds of a Kafka record timestamp (`CreateTime`), if it has one.
pub fn record_time_ms(ts: rdkafka::Timestamp) -> Option<u64> {
    ts.to_millis().and_then(|t| u64::try_from(t).ok())
}

/// A wait for metadata and other admin answers.
pub const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// `(low, high)` offsets of a partition, retried (bounded) while the broker is still
/// electing its leader: right after a topic is created, `ListOffsets` can answer
/// `NotLeaderForPartition` for a moment.
pub fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> rdkafka::error::KafkaResult<(i64, i64)> {
    use rdkafka::consumer::Consumer;
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        match consumer.fetch_watermarks(topic, partition, ADMIN_TIMEOUT) {
            Ok(w) => return Ok(w),
            Err(e) if std::time::Instant::now() < deadline && is_transient(&e) => {
                tracing::debug!(topic, partition, error = %e, "offsets not available yet; retrying");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors a broker answers while a partition's leadership settles.
pub fn is_transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::UnknownTopicOrPartition
                | C::UnknownLeaderEpoch
                | C::NotCoordinator
                | C::RequestTimedOut
                | C::OperationTimedOut
        )
    )
}

/// Partition counts of the named topics (`None` for a topic that does not exist).
pub fn partition_counts(brokers: &str, names: &[&str]) -> anyhow::Result<Vec<Option<u32>>> {
    count_partitions(brokers, names, false)
}

/// Per named topic, how many partitions it has (`only_led`: how many have a leader);
/// `None` for a topic that does not exist.
pub fn count_partitions(
    brokers: &str,
    names: &[&str],
    only_led: bool,
) -> anyhow::Result<Vec<Option<u32>>> {
    let consumer: BaseConsumer = base_config(brokers, "flashsale-metadata")
        .create()
        .context("cannot create a Kafka client")?;
    let md = consumer
        .fetch_metadata(None, ADMIN_TIMEOUT)
        .with_context(|| format!("cannot read topic metadata from {brokers}; is Kafka running?"))?;
    Ok(names
        .iter()
        .map(|n| {
            md.topics()
                .iter()
                .find(|t| t.name() == *n && t.error().is_none())
                .map(|t| {
                    t.partitions()
                        .iter()
                        .filter(|p| !only_led || (p.error().is_none() && p.leader() >= 0))
                        .count() as u32
                })
        })
        .collect())
}

/// The partition counts of an existing deployment: (commands = events, replies).
/// Errors name the missing topic and the command that creates it.
pub fn check(brokers: &str, topics: &Topics) -> anyhow::Result<(u32, u32)> {
    let counts = partition_counts(
        brokers,
        &[&topics.commands, &topics.events, &topics.replies],
    )?;
    let names = [&topics.commands, &topics.events, &topics.replies];
    for (c, n) in counts.iter().zip(names) {
        anyhow::ensure!(
            c.is_some(),
            "topic {n} does not exist on {brokers}; create the topics first: flashsale topics create --kafka {brokers} --partitions N"
        );
    }
    let (commands, events, replies) = (
        counts[0].unwrap_or(0),
        counts[1].unwrap_or(0),
        counts[2].unwrap_or(0),
    );
    anyhow::ensure!(
        commands == events,
        "{} has {commands} partitions but {} has {events}: they must match",
        topics.commands,
        topics.events
    );
    Ok((commands, replies))
}
