//! Kafka mode: the same dispatcher, actor core and read model as the embedded node,
//! with Apache Kafka as the log.
//!
//! - [`topics`]: names, partition counts and configs of `commands`, `events` and
//!   `replies`; `flashsale topics create`.
//! - [`bus`]: the gateway's half. [`bus::KafkaBus`] produces commands (idempotent,
//!   `acks=all`, partition = murmur2 of the SKU, as the Java client would choose); one
//!   follower thread reads this gateway's `replies` partition and every `events`
//!   partition, feeds the read model and completes waiting requests.
//! - [`engine`]: the engine's half. A consumer group over `commands`; per assigned
//!   partition a [`PartitionActor`](flashsale_engine::actor::PartitionActor) recovered
//!   from the newest usable snapshot and the log, whole fetched batches applied in log
//!   order, replies and events produced, offsets committed after the broker acked them.
//! - [`node`]: wiring for `flashsale gateway`, `flashsale engine` and
//!   `flashsale serve --kafka`.
//!
//! What it does not do: decide anything (the engine core does), or keep state of its
//! own that the log cannot rebuild.
//!
//! Read-your-writes across the two topics: the engine produces, for every batch it
//! applies, an event record at the batch's last offset (an empty one if that command
//! changed nothing), and the follower hands a reply to its request only once the read
//! model has applied the events up to the reply's offset. A client that got its answer
//! therefore reads a state at least as new as that answer, as in embedded mode.

pub mod bus;
pub mod cli;
pub mod engine;
pub mod node;
mod postgres;
pub mod topics;

use rdkafka::ClientConfig;

/// Default prefix of the three topic names.
pub const DEFAULT_PREFIX: &str = "flashsale.";

/// The three topics of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub events: String,
    pub replies: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            commands: format!("{prefix}commands"),
            events: format!("{prefix}events"),
            replies: format!("{prefix}replies"),
        }
    }
}

/// Settings every client of this process shares.
pub(crate) fn base_config(brokers: &str, client_id: &str) -> ClientConfig {
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
pub(crate) fn producer_config(brokers: &str, client_id: &str, linger_ms: u32) -> ClientConfig {
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
pub(crate) fn record_time_ms(ts: rdkafka::Timestamp) -> Option<u64> {
    ts.to_millis().and_then(|t| u64::try_from(t).ok())
}

/// A wait for metadata and other admin answers.
pub(crate) const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// `(low, high)` offsets of a partition, retried (bounded) while the broker is still
/// electing its leader: right after a topic is created, `ListOffsets` can answer
/// `NotLeaderForPartition` for a moment.
pub(crate) fn watermarks<C: rdkafka::consumer::ConsumerContext>(
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
fn is_transient(e: &rdkafka::error::KafkaError) -> bool {
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
