//! `flashsale serve --publish-kafka BROKERS`: the public topics of an embedded node,
//! published from its own command log, exactly once (docs/events.md, "Embedded mode").
//!
//! Two ways in, one log:
//! - **live**: each batch the partition actors apply is handed to an [`EmbeddedFeed`]
//!   (its event records and the command offsets it covers), beside the read model. The
//!   feed is a bounded queue per partition: when the publisher cannot keep up (Kafka
//!   down or slow), the queue is emptied and the sale goes on; nothing waits for Kafka.
//! - **catch-up**: whatever the feed does not hold (after a restart, a `kill -9`, or an
//!   overflow) is derived again from the command log on disk: the newest snapshot at or
//!   below the publisher's position, the log replayed quietly up to the position, then
//!   applied with outputs from there (the core is deterministic: the same log gives the
//!   same events, with the same ids).
//!
//! Either way the records come from the log in log order, and go out through the same
//! transactional writer as `flashsale events publish` ([`TxnPublisher`]): one Kafka
//! transaction holds a round's public records and the publisher's position (per
//! partition, the next command offset whose events are not yet published), stored as
//! commit metadata of the group `<transactional id>` on `<prefix>reservations`
//! (embedded partition p on its partition p mod R). A publisher killed at any moment
//! starts again where its last committed transaction ended; a read_committed consumer
//! sees each event once.
//!
//! Invariants:
//! - E1 a batch of the feed covers command offsets `[from, through)` and holds every
//!   event record of them; consecutive batches of a partition are contiguous unless the
//!   queue was emptied, which the publisher sees as `from > position` (or an empty
//!   queue behind `through`) and fills from the log;
//! - E2 the position only moves in a committed transaction, with the records of the
//!   offsets it passes.

use super::txn::{self, TxnPublisher, TXN_TIMEOUT};
use super::{map_batch, Origin, Outgoing, PublisherConfig};
use flashsale_core::actor::{PartitionActor, SnapshotPolicy};
use flashsale_core::State;
use flashsale_engine::log::{LogReader, PartitionLog};
use flashsale_engine::store::{load_newest_valid_where, FileSnapshotStore};
use flashsale_proto::EventRecord;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Event records queued per partition before the queue is emptied (and the publisher
/// falls back to the log): bounds the memory a Kafka outage can take.
pub const FEED_CAPACITY: usize = 16_384;
/// How long a stopping node keeps publishing what its feed holds.
const DRAIN: Duration = Duration::from_secs(5);
/// Most command records replayed from the log per round of a catch-up.
const CATCH_UP_CHUNK: usize = 4_096;

/// One applied batch as the feed holds it (E1).
#[derive(Debug)]
struct Batch {
    from: u64,
    through: u64,
    events: Vec<EventRecord>,
}

#[derive(Debug, Default)]
struct Part {
    queue: VecDeque<Batch>,
    queued: usize,
    /// The next command offset after the last batch delivered (the actor's position,
    /// up to records that had no output).
    through: u64,
}

/// The live half: what the partition actors applied, queued for the publisher.
#[derive(Debug)]
pub struct EmbeddedFeed {
    parts: Vec<Mutex<Part>>,
    capacity: usize,
    overflows: AtomicU64,
}

impl EmbeddedFeed {
    pub fn new(partitions: u32, capacity: usize) -> Arc<Self> {
        Arc::new(EmbeddedFeed {
            parts: (0..partitions)
                .map(|_| Mutex::new(Part::default()))
                .collect(),
            capacity: capacity.max(1),
            overflows: AtomicU64::new(0),
        })
    }

    fn part(&self, partition: u32) -> Option<std::sync::MutexGuard<'_, Part>> {
        self.parts
            .get(partition as usize)
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A partition recovered at `next_offset`: what came before is the log's.
    pub fn reset(&self, partition: u32, next_offset: u64) {
        if let Some(mut p) = self.part(partition) {
            p.queue.clear();
            p.queued = 0;
            p.through = next_offset;
        }
    }

    /// One applied batch: its event records, and the offset after its last record with
    /// an output (`None`: no output, nothing to queue). Never blocks on Kafka: a full
    /// queue is emptied (the publisher reads those offsets from the log instead).
    pub fn push(&self, partition: u32, events: Vec<EventRecord>, through: Option<u64>) {
        let Some(through) = through else { return };
        let Some(mut p) = self.part(partition) else {
            return;
        };
        if through <= p.through {
            return;
        }
        if p.queued + events.len() > self.capacity {
            p.queue.clear();
            p.queued = 0;
            self.overflows.fetch_add(1, Ordering::Relaxed);
        }
        let from = p.through;
        p.queued += events.len();
        p.queue.push_back(Batch {
            from,
            through,
            events,
        });
        p.through = through;
    }
}

/// The embedded publisher's settings: the Kafka side ([`PublisherConfig`], its
/// `topic_prefix` naming the public topics) and the node's data directory.
#[derive(Debug, Clone)]
pub struct EmbeddedPublisher {
    pub kafka: PublisherConfig,
    pub data_dir: PathBuf,
    pub partitions: u32,
    /// The node's policy: the catch-up replays with the same retention.
    pub policy: SnapshotPolicy,
}

/// A running embedded publisher; [`Self::stop`] publishes what the feed holds (for at
/// most a few seconds) and ends it.
#[derive(Debug)]
pub struct PublisherHandle {
    stop: Arc<AtomicBool>,
    worker: tokio::task::JoinHandle<()>,
}

impl PublisherHandle {
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.worker.await;
    }
}

/// The data directory's identity in event ids and `source` (`embedded/<id>`): a new
/// directory is a new log, whose positions start again at 0.
fn log_identity(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("events-source-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let tmp = data_dir.join("events-source-id.tmp");
    std::fs::write(&tmp, &id)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

/// Starts publishing `feed` (and the log behind it). The node serves whatever Kafka
/// does: sessions that fail start again from the committed position, with backoff.
pub fn start(
    config: EmbeddedPublisher,
    feed: Arc<EmbeddedFeed>,
) -> anyhow::Result<PublisherHandle> {
    let id = log_identity(&config.data_dir)?;
    let origin = Origin {
        log_id: format!("embedded/{id}"),
        source: format!("/flashsale/embedded/{id}"),
    };
    tracing::info!(
        log = %origin.log_id,
        transactional_id = %config.kafka.transactional_id,
        kafka = %config.kafka.kafka,
        "publishing the public events to {}reservations, {}inventory-updates, {}orders",
        config.kafka.topic_prefix, config.kafka.topic_prefix, config.kafka.topic_prefix,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            let mut backoff = Duration::from_millis(200);
            loop {
                match session(&config, &origin, &feed, &stop) {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(
                        error = %format!("{e:#}"),
                        "embedded publisher: session failed; the sale goes on, publishing \
                         catches up from the committed position (are the public topics \
                         there? flashsale topics create)"
                    ),
                }
                let until = Instant::now() + backoff;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    };
    Ok(PublisherHandle { stop, worker })
}

/// A partition being filled from the log: the actor copy at `next`, up to `target`.
struct CatchUp {
    actor: PartitionActor,
    reader: LogReader,
    next: u64,
    target: u64,
}

impl CatchUp {
    /// The state at `from` (newest snapshot at or below it, then a quiet replay), and a
    /// reader of the log from there.
    fn open(
        config: &EmbeddedPublisher,
        partition: u32,
        from: u64,
        target: u64,
    ) -> anyhow::Result<Self> {
        let store = FileSnapshotStore::new(config.data_dir.join("snapshots"));
        let (loaded, _) = load_newest_valid_where(&store, partition, |i| i.offset <= from)
            .map_err(|e| anyhow::anyhow!("partition {partition}: reading snapshots: {e}"))?;
        let state = loaded
            .map(|(_, s)| s)
            .unwrap_or_else(|| State::new(partition as u16));
        let mut actor = PartitionActor::new(state, config.policy);
        let log = PartitionLog::open_read_only(&config.data_dir.join("log"), partition)
            .map_err(|e| anyhow::anyhow!("partition {partition}: opening the log: {e}"))?;
        let mut reader = log
            .reader_from(actor.state().next_offset())
            .map_err(|e| anyhow::anyhow!("partition {partition}: reading the log: {e}"))?;
        let mut quiet = Vec::with_capacity(CATCH_UP_CHUNK);
        let mut at = actor.state().next_offset();
        while at < from {
            quiet.clear();
            for rec in reader
                .by_ref()
                .take(CATCH_UP_CHUNK.min((from - at) as usize))
            {
                quiet.push(rec?);
            }
            anyhow::ensure!(
                !quiet.is_empty(),
                "partition {partition}: the log ends at {at}, before the published position {from}"
            );
            at += quiet.len() as u64;
            actor.apply_batch_quietly(&quiet);
        }
        Ok(CatchUp {
            actor,
            reader,
            next: from,
            target,
        })
    }

    /// The next chunk's event records; the position after it.
    fn step(&mut self) -> anyhow::Result<(Vec<EventRecord>, u64)> {
        let want = CATCH_UP_CHUNK.min(self.target.saturating_sub(self.next) as usize);
        let mut records = Vec::with_capacity(want);
        for rec in self.reader.by_ref().take(want) {
            records.push(rec?);
        }
        anyhow::ensure!(
            !records.is_empty() || want == 0,
            "the log ends at {} before {}",
            self.next,
            self.target
        );
        self.next += records.len() as u64;
        Ok((self.actor.apply_batch(&records).events, self.next))
    }
}

fn session(
    config: &EmbeddedPublisher,
    origin: &Origin,
    feed: &EmbeddedFeed,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let kafka = &config.kafka;
    let txn = TxnPublisher::open(kafka)?;
    let topic = super::Channel::Reservations.topic(&kafka.topic_prefix);
    let md = txn.consumer.fetch_metadata(Some(&topic), TXN_TIMEOUT)?;
    let slots = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len()) as u32;
    anyhow::ensure!(slots > 0, "the topic {topic} has no partitions yet");
    let n = config.partitions;
    // Where the last committed transaction left off.
    let mut ask = TopicPartitionList::new();
    for s in 0..slots.min(n) {
        ask.add_partition(&topic, s as i32);
    }
    let committed = txn.consumer.committed_offsets(ask, TXN_TIMEOUT)?;
    let mut pos = vec![0u64; n as usize];
    for e in committed.elements_for_topic(&topic) {
        if !matches!(e.offset(), Offset::Offset(_)) {
            continue;
        }
        match txn::decode_meta(e.metadata(), &origin.log_id) {
            Some(pairs) => {
                for (p, off) in pairs {
                    if let Some(slot) = pos.get_mut(p as usize) {
                        *slot = off;
                    }
                }
            }
            None => tracing::warn!(
                slot = e.partition(),
                log = %origin.log_id,
                "embedded publisher: the committed position is of another log (another data directory?): publishing this log from its start"
            ),
        }
    }
    tracing::info!(positions = ?pos, "embedded publisher: following the node's log");
    let mut catch_up: Vec<Option<CatchUp>> = (0..n).map(|_| None).collect();
    let max = kafka.max_batch.max(1);
    let (mut published, mut last_progress) = (0u64, Instant::now());
    let mut last_commit = Instant::now();
    let mut dirty = false;
    let mut stopping: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let t = *stopping.get_or_insert_with(Instant::now);
            if t.elapsed() > DRAIN {
                return Ok(());
            }
        }
        let mut next = pos.clone();
        // One group per applied batch (or chunk of the log): map_batch's unit, so each
        // SKU gets one inventory update per group, as in Kafka mode per applied batch.
        let mut groups: Vec<Vec<EventRecord>> = Vec::new();
        let mut records = 0usize;
        for p in 0..n {
            let i = p as usize;
            if records >= max {
                break;
            }
            if let Some(c) = catch_up[i].as_mut() {
                let (events, at) = c.step()?;
                records += events.len();
                groups.push(events);
                next[i] = at;
                if at >= c.target {
                    tracing::info!(
                        partition = p,
                        at,
                        "embedded publisher: caught up from the log"
                    );
                    catch_up[i] = None;
                }
                continue;
            }
            let mut part = feed.part(p).expect("a partition of the node");
            while let Some(b) = part.queue.front() {
                if b.through <= next[i] {
                    // Published already (before a restart of the session).
                    let b = part.queue.pop_front().expect("front");
                    part.queued -= b.events.len();
                } else if b.from <= next[i] && records < max {
                    let b = part.queue.pop_front().expect("front");
                    part.queued -= b.events.len();
                    let from = next[i];
                    let events: Vec<EventRecord> =
                        b.events.into_iter().filter(|r| r.offset >= from).collect();
                    records += events.len();
                    groups.push(events);
                    next[i] = b.through;
                } else {
                    break;
                }
            }
            // A hole between the position and the feed: fill it from the log (E1).
            let target = match part.queue.front() {
                Some(b) if b.from > next[i] => Some(b.from),
                None if part.through > next[i] => Some(part.through),
                _ => None,
            };
            drop(part);
            if let Some(target) = target {
                tracing::info!(
                    partition = p,
                    from = next[i],
                    to = target,
                    "embedded publisher: reading events from the log (after a restart, or the feed overflowed while Kafka was slow)"
                );
                catch_up[i] = Some(CatchUp::open(config, p, next[i], target)?);
            }
        }
        let moved = next != pos;
        dirty |= moved;
        if records == 0 {
            // Positions past records without events: stored now and then, not per round.
            if dirty && (last_commit.elapsed() >= Duration::from_secs(1) || stopping.is_some()) {
                commit(&txn, &topic, slots, origin, &[], &next)?;
                last_commit = Instant::now();
                dirty = false;
            }
            pos = next;
            if !moved {
                if stopping.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        let out: Vec<Outgoing> = groups.iter().flat_map(|g| map_batch(origin, g)).collect();
        commit(&txn, &topic, slots, origin, &out, &next)?;
        last_commit = Instant::now();
        dirty = false;
        pos = next;
        published += out.len() as u64;
        if last_progress.elapsed() >= Duration::from_secs(10) {
            let behind: u64 = (0..n)
                .map(|p| {
                    let through = feed.part(p).map_or(0, |x| x.through);
                    through.saturating_sub(pos[p as usize])
                })
                .sum();
            tracing::info!(
                published,
                behind_commands = behind,
                feed_overflows = feed.overflows.load(Ordering::Relaxed),
                "embedded publisher progress"
            );
            last_progress = Instant::now();
        }
    }
}

/// One transaction: `out`, and every partition's position as metadata on its slot.
fn commit(
    txn: &TxnPublisher,
    topic: &str,
    slots: u32,
    origin: &Origin,
    out: &[Outgoing],
    pos: &[u64],
) -> anyhow::Result<()> {
    let mut offsets = TopicPartitionList::new();
    let used = slots.min(pos.len() as u32).max(1);
    for s in 0..used {
        let meta = txn::encode_meta(
            &origin.log_id,
            (0..pos.len() as u32)
                .filter(|p| p % used == s)
                .map(|p| (p, pos[p as usize])),
        );
        offsets.add_partition_offset(topic, s as i32, Offset::Offset(0))?;
        if let Some(mut e) = offsets.find_partition(topic, s as i32) {
            e.set_metadata(meta);
        }
    }
    txn.commit(out, &offsets)
}
