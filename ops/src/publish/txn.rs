//! The transactional half both publishers share: `events publish` (Kafka mode, `kafka.rs`)
//! and `serve --publish-kafka` (embedded mode, `embedded.rs`).
//!
//! [`TxnPublisher::commit`] writes one round of public records and the publisher's read
//! positions in one Kafka transaction: the positions are committed offsets of the
//! consumer group `<transactional id>` (`send_offsets_to_transaction`), each carrying as
//! its commit metadata the next command offset not yet published per command partition
//! ([`encode_meta`]). Records and positions commit together or not at all, so a publisher
//! killed at any moment starts again exactly where its last committed transaction ended.
//! A fixed `transactional.id` fences a previous incarnation: `init_transactions` aborts
//! what it left open.

use super::{Outgoing, PublisherConfig};
use flashsale_runtime::kafka::{base_config, consumer_config};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::TopicPartitionList;
use std::time::{Duration, Instant};

/// Longest wait of one transaction step (init, offsets, commit, abort) and of reading
/// the committed positions. A step that waits longer ends the session (its open
/// transaction aborted or left to the next `init_transactions`), and the next session
/// starts again from the committed positions; so after a broker outage the publisher
/// resumes within about this much of the broker's return, instead of a chain of long
/// waits (a step normally takes milliseconds; 10 s is far above a loaded broker's).
pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(10);

/// A transactional producer and the consumer whose group holds the positions.
pub(super) struct TxnPublisher {
    producer: ThreadedProducer<DefaultProducerContext>,
    /// Group `<transactional id>`: reads the committed positions; the Kafka-mode
    /// publisher also reads `<prefix>events` with it.
    pub consumer: BaseConsumer,
    group: ConsumerGroupMetadata,
    topic_prefix: String,
}

impl TxnPublisher {
    /// Creates both clients and fences any previous holder of the transactional id.
    pub fn open(config: &PublisherConfig) -> anyhow::Result<Self> {
        let producer: ThreadedProducer<DefaultProducerContext> =
            base_config(&config.kafka, "flashsale-publisher")
                .set("transactional.id", &config.transactional_id)
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("transaction.timeout.ms", "60000")
                // librdkafka retries a transaction step the coordinator answers
                // CONCURRENT_TRANSACTIONS (the previous commit's markers still being
                // written: the normal case right after a commit) after
                // retry.backoff.ms, 100 by default, doubling: that wait, not the broker,
                // was most of send_offsets_to_transaction's time between back-to-back
                // transactions (Kafka's Java client uses 20 ms for this case).
                .set("retry.backoff.ms", "5")
                .set("retry.backoff.max.ms", "250")
                .create()
                .map_err(|e| anyhow::anyhow!("cannot create the publisher's producer: {e}"))?;
        producer
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("init_transactions ({}): {e}", config.transactional_id))?;
        let consumer: BaseConsumer = consumer_config(&config.kafka, "flashsale-publisher")
            .set("group.id", &config.transactional_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| anyhow::anyhow!("cannot create the publisher's consumer: {e}"))?;
        let group = consumer
            .group_metadata()
            .ok_or_else(|| anyhow::anyhow!("the publisher's consumer has no group metadata"))?;
        Ok(TxnPublisher {
            producer,
            consumer,
            group,
            topic_prefix: config.topic_prefix.clone(),
        })
    }

    /// One transaction: `out` to the public topics and `positions` (with their
    /// metadata) to the group. Aborted, and an error, if any step fails.
    pub fn commit(&self, out: &[Outgoing], positions: &TopicPartitionList) -> anyhow::Result<()> {
        self.begin()?;
        for o in out {
            self.send(o)?;
        }
        self.finish(positions).map(|_| ())
    }

    /// Opens a transaction: [`send`](Self::send) records into it, then
    /// [`finish`](Self::finish) it.
    pub fn begin(&self) -> anyhow::Result<()> {
        self.producer
            .begin_transaction()
            .map_err(|e| anyhow::anyhow!("beginning a transaction: {e}"))
    }

    /// Hands one record of the open transaction to the producer (sent in the
    /// background, `linger.ms`); aborts the transaction on an error.
    pub fn send(&self, o: &Outgoing) -> anyhow::Result<()> {
        let topic = o.channel.topic(&self.topic_prefix);
        let mut record = BaseRecord::to(&topic).key(&o.key).payload(o.value());
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((e, r))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    let _ = self.producer.abort_transaction(TXN_TIMEOUT);
                    return Err(anyhow::anyhow!("producing to {topic}: {e}"));
                }
            }
        }
    }

    /// Adds `positions` (with their metadata) to the open transaction and commits it
    /// (waits until the broker has it); aborts it, and an error, if a step fails.
    /// Returns how long each of the two steps waited: (offsets, commit).
    pub fn finish(&self, positions: &TopicPartitionList) -> anyhow::Result<(Duration, Duration)> {
        let t = Instant::now();
        let mut offsets = Duration::ZERO;
        let done = self
            .producer
            .send_offsets_to_transaction(positions, &self.group, TXN_TIMEOUT)
            .and_then(|()| {
                offsets = t.elapsed();
                self.producer.commit_transaction(TXN_TIMEOUT)
            });
        if let Err(e) = done {
            let _ = self.producer.abort_transaction(TXN_TIMEOUT);
            return Err(anyhow::anyhow!("committing a transaction: {e}"));
        }
        Ok((offsets, t.elapsed() - offsets))
    }
}

/// Version tag of the positions' commit metadata.
const META_TAG: &str = "fs-pub-v1";

/// A position's commit metadata: the tag, the log id, then `<partition>:<next offset>`
/// per command partition.
pub(super) fn encode_meta(log_id: &str, next: impl IntoIterator<Item = (u32, u64)>) -> String {
    let mut s = format!("{META_TAG} {log_id}");
    for (cp, off) in next {
        s.push_str(&format!(" {cp}:{off}"));
    }
    s
}

/// The `(command partition, next offset)` pairs of a position's metadata; `None` if it
/// is not of this log (another build's, or of a log since replaced: its offsets mean
/// nothing in this one).
pub(super) fn decode_meta(meta: &str, log_id: &str) -> Option<Vec<(u32, u64)>> {
    let mut parts = meta.split(' ');
    if parts.next() != Some(META_TAG) || parts.next() != Some(log_id) {
        return None;
    }
    Some(
        parts
            .filter_map(|p| {
                let (cp, off) = p.split_once(':')?;
                Some((cp.parse::<u32>().ok()?, off.parse::<u64>().ok()?))
            })
            .collect(),
    )
}

#[cfg(test)]
mod meta_tests {
    use super::*;

    #[test]
    fn commit_metadata_round_trips() {
        let m = encode_meta("t.events/uuid-1", [(3, 9), (7, 0)]);
        assert_eq!(m, "fs-pub-v1 t.events/uuid-1 3:9 7:0");
        assert_eq!(
            decode_meta(&m, "t.events/uuid-1"),
            Some(vec![(3, 9), (7, 0)])
        );
        assert_eq!(decode_meta("something else 1:2", "t.events/uuid-1"), None);
        assert_eq!(
            decode_meta(&m, "t.events/uuid-2"),
            None,
            "a recreated log's positions are not this log's"
        );
    }
}
