//! [`run_publisher`]: follows `<prefix>events` and publishes the public topics in Kafka
//! transactions, exactly once (docs/events.md "Exactly once").
//!
//! T1 a transaction opens with the first `events` record read after the last commit;
//! each record read is mapped and handed to the producer at once (sent in the
//! background while the publisher reads on); the transaction commits when it is
//! [`PublisherConfig::commit_interval`] old or holds [`PublisherConfig::max_batch`]
//! records, whichever comes first. Its public records and the publisher's read
//! positions of `events` (`send_offsets_to_transaction`, consumer group
//! `<transactional id>`) commit together or not at all (`txn.rs`, shared with the
//! embedded publisher). Each position carries, as
//! its commit metadata, the next command offset not yet published per command partition
//! seen on that events partition, so the same events written twice (two engines during a
//! rebalance, the same command offsets) are published once, across restarts too. A
//! fixed `transactional.id` fences a previous incarnation (killed, or still running
//! elsewhere): `init_transactions` aborts what it left open. Any error ends the session;
//! the next one starts again from the committed positions.

use super::txn::{self, TxnPublisher, TXN_TIMEOUT};
use super::{map_batch, Channel, Origin};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What [`run_publisher`] (and the embedded publisher) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// Prefix of every topic name: reads `<prefix>events`, writes `<prefix>reservations`,
    /// `<prefix>inventory-updates`, `<prefix>orders`.
    pub topic_prefix: String,
    /// The producer's `transactional.id`, also the consumer group of its positions.
    /// One publisher per deployment runs under it; another one started with the same id
    /// fences the first (default `<prefix>publisher`).
    pub transactional_id: String,
    /// Most `events` records read into one transaction.
    pub max_batch: usize,
    /// How long a transaction stays open for more records (`events publish`; T1).
    pub commit_interval: Duration,
}

/// Default of [`PublisherConfig::commit_interval`] (`--publisher-commit-ms`).
pub const DEFAULT_COMMIT_MS: u64 = 20;

impl PublisherConfig {
    pub fn new(kafka: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        let topic_prefix = topic_prefix.into();
        PublisherConfig {
            kafka: kafka.into(),
            transactional_id: format!("{topic_prefix}publisher"),
            topic_prefix,
            max_batch: 2000,
            commit_interval: Duration::from_millis(DEFAULT_COMMIT_MS),
        }
    }

    fn events_topic(&self) -> String {
        format!("{}events", self.topic_prefix)
    }
}

/// Follows the events topic and publishes until `shutdown`; errors restart the session
/// (with backoff) from the committed positions.
pub async fn run_publisher(
    config: PublisherConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let events = config.events_topic();
    let log = {
        let (b, t) = (config.kafka.clone(), events.clone());
        let what = format!("Kafka at {} (topic {events})", config.kafka);
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            id = flashsale_runtime::patience::retry_forever(
                &what,
                move || flashsale_runtime::kafka_id::topic_identity(&b, &t, flashsale_runtime::kafka::ADMIN_TIMEOUT),
            ) => id,
        }
    };
    let origin = Origin::new(&events, log.log_id());
    tracing::info!(
        log = %log.log_id(),
        transactional_id = %config.transactional_id,
        "publisher: {events} -> {}, {}, {}",
        Channel::Reservations.topic(&config.topic_prefix),
        Channel::InventoryUpdates.topic(&config.topic_prefix),
        Channel::Orders.topic(&config.topic_prefix),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let mut backoff = Duration::from_millis(200);
            while !stop.load(Ordering::Relaxed) {
                match session(&config, &origin, &stop) {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(
                        error = %format!("{e:#}"),
                        "publisher session failed; starting again from the committed positions \
                         (are the public topics there? flashsale topics create)"
                    ),
                }
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    };
    shutdown.await;
    stop.store(true, Ordering::Relaxed);
    worker.await?;
    tracing::info!("publisher stopped");
    Ok(())
}

/// Per command partition, the next command offset not yet published and the events
/// partition it was seen on.
type Next = BTreeMap<u32, (i32, u64)>;

fn encode_meta(next: &Next, events_partition: i32, log_id: &str) -> String {
    txn::encode_meta(
        log_id,
        next.iter()
            .filter(|(_, (ep, _))| *ep == events_partition)
            .map(|(cp, (_, off))| (*cp, *off)),
    )
}

/// Reads a position's metadata into `next`; false if it is not of this log.
fn decode_meta(meta: &str, events_partition: i32, log_id: &str, next: &mut Next) -> bool {
    match txn::decode_meta(meta, log_id) {
        Some(pairs) => {
            for (cp, off) in pairs {
                next.insert(cp, (events_partition, off));
            }
            true
        }
        None => false,
    }
}

fn session(config: &PublisherConfig, origin: &Origin, stop: &AtomicBool) -> anyhow::Result<()> {
    let events = config.events_topic();
    let txn = TxnPublisher::open(config)?;
    let consumer = &txn.consumer;
    let md = consumer.fetch_metadata(Some(&events), TXN_TIMEOUT)?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == events)
        .map_or(0, |t| t.partitions().len()) as i32;
    anyhow::ensure!(n > 0, "the events topic {events} has no partitions yet");
    // Where the last committed transaction left off.
    let mut ask = TopicPartitionList::new();
    for p in 0..n {
        ask.add_partition(&events, p);
    }
    let committed = consumer.committed_offsets(ask, TXN_TIMEOUT)?;
    let mut next: Next = BTreeMap::new();
    let mut start = TopicPartitionList::new();
    for e in committed.elements_for_topic(&events) {
        let offset = match e.offset() {
            Offset::Offset(o)
                if decode_meta(e.metadata(), e.partition(), &origin.log_id, &mut next) =>
            {
                Offset::Offset(o)
            }
            Offset::Offset(o) => {
                tracing::warn!(
                    partition = e.partition(),
                    offset = o,
                    log = %origin.log_id,
                    "the committed position is of another log (the events topic was created again?): publishing this log from its start"
                );
                Offset::Beginning
            }
            _ => Offset::Beginning,
        };
        start.add_partition_offset(&events, e.partition(), offset)?;
    }
    consumer.assign(&start)?;
    tracing::info!(
        topic = %events,
        partitions = n,
        resumed = next.len(),
        "publisher following the events topic"
    );
    let mut fence = flashsale_proto::EpochFence::default();
    let max_batch = config.max_batch.max(1);
    let interval = config.commit_interval.max(Duration::from_millis(1));
    let mut stats = TxnStats::default();
    let mut last_progress = Instant::now();
    // The open transaction (T1): when it began, the events records read into it, and
    // per events partition the next offset to read (its positions).
    let mut began: Option<Instant> = None;
    let mut read = 0usize;
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if let Some(t) = began {
            if read >= max_batch || t.elapsed() >= interval || stopping {
                let waits = finish(&txn, &events, &positions, &next, &origin.log_id)?;
                stats.record(read, waits);
                (began, read) = (None, 0);
                positions.clear();
                continue;
            }
        } else if stopping {
            break;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            stats.report();
            last_progress = Instant::now();
        }
        let wait = began.map_or(IDLE_POLL, |t| interval.saturating_sub(t.elapsed()));
        let Some(m) = consumer.poll(wait) else {
            continue;
        };
        let msg = match m {
            Ok(msg) => msg,
            Err(e) if flashsale_runtime::kafka::is_connection_error(&e) => continue,
            Err(e) => return Err(anyhow::anyhow!("reading {events}: {e}")),
        };
        if began.is_none() {
            txn.begin()?;
            began = Some(Instant::now());
        }
        read += 1;
        positions.insert(msg.partition(), msg.offset() + 1);
        let epoch = flashsale_runtime::kafka::record_epoch(&msg);
        let mut batch: Vec<flashsale_proto::EventRecord> = Vec::new();
        match msg
            .payload()
            .map(|b| flashsale_proto::decode_many(b, &mut batch))
        {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "undecodable event record skipped");
                continue;
            }
            None => continue,
        }
        if !fence.admit(msg.partition() as u32, epoch) {
            continue; // a replaced engine's output
        }
        // Drop what was published already (the same command offsets written twice).
        batch.retain(|r| {
            let slot = next.entry(r.partition).or_insert((msg.partition(), 0));
            if r.offset < slot.1 {
                return false;
            }
            *slot = (msg.partition(), r.offset + 1);
            true
        });
        stats.records += batch.len() as u64;
        for o in map_batch(origin, &batch) {
            txn.send(&o)?;
            stats.published += 1;
        }
    }
    stats.report();
    Ok(())
}

/// How long an idle publisher (no transaction open) waits for a record per poll.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often the publisher logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Commits the open transaction with `positions` (and, as their metadata, the next
/// command offsets of `next`); returns the waits of its two steps (offsets, commit).
fn finish(
    txn: &TxnPublisher,
    events: &str,
    positions: &BTreeMap<i32, i64>,
    next: &Next,
    log_id: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let mut offsets = TopicPartitionList::new();
    for (p, o) in positions {
        offsets.add_partition_offset(events, *p, Offset::Offset(*o))?;
        if let Some(mut e) = offsets.find_partition(events, *p) {
            e.set_metadata(encode_meta(next, *p, log_id));
        }
    }
    txn.finish(&offsets)
}

/// What the progress line reports: totals of the session, and the transactions and
/// their commit waits since the last line (where a hold's lag goes: the wait of
/// `send_offsets_to_transaction` and of `commit_transaction`).
#[derive(Debug, Default)]
struct TxnStats {
    /// Event records read (after dropping duplicates) and public records sent.
    records: u64,
    published: u64,
    transactions: u64,
    /// Since the last line: transactions, events records in them, waits.
    window_txns: u32,
    window_read: u64,
    window_offsets: Duration,
    window_commit: Duration,
    window_max: Duration,
}

impl TxnStats {
    fn record(&mut self, read: usize, (offsets, commit): (Duration, Duration)) {
        self.transactions += 1;
        self.window_txns += 1;
        self.window_read += read as u64;
        self.window_offsets += offsets;
        self.window_commit += commit;
        self.window_max = self.window_max.max(offsets + commit);
    }

    fn report(&mut self) {
        let n = self.window_txns;
        if n > 0 {
            let ms = |d: Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
            tracing::info!(
                records = self.records,
                published = self.published,
                transactions = self.transactions,
                reads_per_txn = self.window_read / u64::from(n),
                offsets_ms_mean = ms(self.window_offsets / n),
                commit_ms_mean = ms(self.window_commit / n),
                finish_ms_max = ms(self.window_max),
                "publisher progress"
            );
        }
        *self = TxnStats {
            records: self.records,
            published: self.published,
            transactions: self.transactions,
            ..TxnStats::default()
        };
    }
}

#[cfg(test)]
mod meta_tests {
    use super::*;

    #[test]
    fn commit_metadata_round_trips_per_events_partition() {
        let mut next: Next = BTreeMap::new();
        next.insert(0, (0, 17));
        next.insert(3, (3, 9));
        let m = encode_meta(&next, 3, "t.events/uuid-1");
        assert_eq!(m, "fs-pub-v1 t.events/uuid-1 3:9");
        let mut back: Next = BTreeMap::new();
        assert!(decode_meta(&m, 3, "t.events/uuid-1", &mut back));
        assert!(!decode_meta(
            "something else 1:2",
            1,
            "t.events/uuid-1",
            &mut back
        ));
        assert!(
            !decode_meta(&m, 3, "t.events/uuid-2", &mut back),
            "a recreated topic's positions are not this log's"
        );
        assert_eq!(back, BTreeMap::from([(3, (3, 9))]));
    }
}
