//! The gateway's half of Kafka mode: [`KafkaBus`] puts commands on `commands`, and the
//! [`Follower`] thread reads this gateway's `replies` partition and every `events`
//! partition.
//!
//! One consumer, one thread, for both topics: the read model and the replies are then
//! ordered by one hand, which is what read-your-writes needs (see [`super`]): a reply
//! for command offset `o` of partition `p` is handed to its waiting request only once
//! the read model has applied partition `p`'s events through `o`. Replies wait in a
//! bounded map meanwhile; nobody waits for one whose request is gone (deadline passed,
//! or a reply re-sent by an engine replaying after a failover), so it is dropped.
//!
//! While the broker is unreachable (an outage [`KafkaHealth`] announced), commands are
//! refused at once with 503 + `Retry-After` (the partitions are
//! [`PartitionStatus::WriteBlocked`]) and reads are served from the read model; a
//! command already queued fails after [`COMMAND_DELIVERY_TIMEOUT`] (its request was
//! answered 503 at its deadline). Both clients come back by themselves.

use crate::dispatch::{BusError, BusFuture, CommandBus, Pending};
use crate::readmodel::{Mark, ReadModel};
use crate::snapshot::{self, Snapshots, Trigger};
use anyhow::Context;
use flashsale_proto::*;
use flashsale_runtime::bus::{EngineReadiness, PartitionStatus};
use flashsale_runtime::kafka::{
    consumer_config, producer_config, watermarks, Delivery, KafkaHealth, QuietContext,
    STATS_INTERVAL_MS,
};
use flashsale_runtime::patience::QUIET_EVERY;
use flashsale_runtime::ratelimit::{similarity_key, LogLimiter};
use flashsale_runtime::telemetry::{TraceParent, TRACEPARENT_HEADER};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Replies parked until the read model catches up; past this, the oldest are dropped
/// (their requests answer 503 and are retried).
const MAX_PARKED: usize = 100_000;

/// How long a command may wait in the producer for the broker before it fails. Its
/// request was answered 503 at the reply deadline long before; a bound keeps commands
/// from reaching the log minutes after the buyer was told to retry.
pub const COMMAND_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KafkaBus {
    producer: FutureProducer<QuietContext>,
    health: Arc<KafkaHealth>,
    topic: String,
    partitions: u32,
    follower_ready: Arc<AtomicBool>,
    engine: Option<Arc<dyn EngineReadiness>>,
    closing: AtomicBool,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish()
    }
}

/// The record key: the SKU (the Java client's partitioner maps it to the same
/// partition). Commands that name a reservation, not a SKU, carry no key: their
/// partition is the one inside the reservation id.
pub fn command_key(cmd: &Command) -> Option<&str> {
    match cmd {
        Command::Reserve { sku, .. } => Some(sku.as_str()),
        Command::ConfigureSale(cfg) => cfg.products.first().map(|p| p.sku.as_str()),
        _ => None,
    }
}

impl KafkaBus {
    pub fn new(
        brokers: &str,
        topics: &Topics,
        partitions: u32,
        linger_ms: u32,
        follower_ready: Arc<AtomicBool>,
        engine: Option<Arc<dyn EngineReadiness>>,
        health: Arc<KafkaHealth>,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer<QuietContext> = producer_config(
            brokers,
            "flashsale-gateway",
            linger_ms,
            Delivery::Within(COMMAND_DELIVERY_TIMEOUT),
        )
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .create_with_context(QuietContext::new(health.clone()))
        .context("cannot create the Kafka producer")?;
        Ok(KafkaBus {
            producer,
            health,
            topic: topics.commands.clone(),
            partitions,
            follower_ready,
            engine,
            closing: AtomicBool::new(false),
        })
    }

    /// Refuses new commands and waits (bounded) for the ones queued to be acked.
    pub fn close(&self, timeout: Duration) {
        self.closing.store(true, Ordering::Release);
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "commands not all acknowledged at shutdown");
        }
    }
}

impl CommandBus for KafkaBus {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn send(&self, partition: u32, record: CommandRecord) -> BusFuture<'_> {
        self.send_traced(partition, record, None)
    }

    /// The trace context travels as a W3C `traceparent` record header.
    fn send_traced(
        &self,
        partition: u32,
        record: CommandRecord,
        trace: Option<TraceParent>,
    ) -> BusFuture<'_> {
        Box::pin(async move {
            if self.closing.load(Ordering::Acquire) {
                return Err(BusError::Unavailable("the server is shutting down".into()));
            }
            if !self.health.is_reachable() {
                return Err(BusError::Unavailable(
                    "the command log (Kafka) is unreachable; nothing was done".into(),
                ));
            }
            let payload = encode(&record);
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
                .partition(partition as i32)
                .payload(&payload);
            if let Some(k) = command_key(&record.command) {
                rec = rec.key(k.as_bytes());
            }
            if let Some(t) = trace {
                rec = rec.headers(OwnedHeaders::new().insert(Header {
                    key: TRACEPARENT_HEADER,
                    value: Some(&t.encode()[..]),
                }));
            }
            // The record's timestamp is left to the client: CreateTime = now.
            let delivery = self.producer.send_result(rec).map_err(|(e, _)| match e {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    BusError::Full(partition)
                }
                e => BusError::Unavailable(e.to_string()),
            })?;
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(BusError::Unavailable(format!(
                    "Kafka did not take the command: {e}"
                ))),
                Err(_) => Err(BusError::Unavailable("the Kafka producer stopped".into())),
            }
        })
    }

    fn is_ready(&self) -> bool {
        !self.closing.load(Ordering::Acquire)
            && self.follower_ready.load(Ordering::Acquire)
            && self.engine.as_ref().is_none_or(|e| e.is_ready())
    }

    /// During a broker outage every partition is write-blocked: commands answer 503 +
    /// `Retry-After` at once, reads are served from the read model.
    fn partition_status(&self, _partition: u32) -> PartitionStatus {
        if !self.is_ready() {
            PartitionStatus::Recovering
        } else if !self.health.is_reachable() {
            PartitionStatus::WriteBlocked("Kafka is unreachable".to_string())
        } else {
            PartitionStatus::Live
        }
    }
}

/// The follower thread: replies of one gateway + all events → read model + waiters.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").finish()
    }
}

pub struct FollowerOptions {
    pub brokers: String,
    pub topics: Topics,
    pub gateway_id: u32,
    pub partitions: u32,
    pub replies_partitions: u32,
    /// Shared with the gateway's [`KafkaBus`]: the follower's statistics say when the
    /// broker is back.
    pub health: Arc<KafkaHealth>,
    /// Read-model snapshots of this log: start from the newest valid one, and write
    /// new ones per its policy. `None`: replay `events` from the start, write none.
    pub snapshots: Option<Snapshots>,
}

impl Follower {
    /// Assigns the consumer (replies from their current end; events from the newest
    /// valid read-model snapshot, else from the start) and starts the thread. `ready`
    /// turns true once the read model holds every event that existed at start.
    pub fn start(
        opts: FollowerOptions,
        read: Arc<ReadModel>,
        pending: Arc<Pending>,
        ready: Arc<AtomicBool>,
    ) -> anyhow::Result<Follower> {
        anyhow::ensure!(
            opts.gateway_id < opts.replies_partitions,
            "--gateway-id {} has no partition in {} ({} partitions: ids 0-{}); add partitions with `flashsale topics grow --replies-partitions N` (running deployments too)",
            opts.gateway_id,
            opts.topics.replies,
            opts.replies_partitions,
            opts.replies_partitions - 1
        );
        let consumer: BaseConsumer<QuietContext> = consumer_config(
            &opts.brokers,
            &format!("flashsale-gateway-{}", opts.gateway_id),
        )
        // No group: an assigned consumer that commits nothing. librdkafka wants an
        // id all the same.
        .set(
            "group.id",
            format!("flashsale-gateway-follower-{}", opts.gateway_id),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.error.backoff.ms", "50")
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .create_with_context(QuietContext::new(opts.health.clone()))
        .context("cannot create the Kafka consumer")?;
        // Replies: from the end as it is now, resolved here (not lazily at the first
        // fetch) so that no reply to a request sent after this point is skipped.
        let (_, replies_end) = watermarks(&consumer, &opts.topics.replies, opts.gateway_id as i32)
            .with_context(|| {
                format!(
                    "cannot read the end of {} partition {}",
                    opts.topics.replies, opts.gateway_id
                )
            })?;
        let mut targets = Vec::with_capacity(opts.partitions as usize);
        let mut bounds = Vec::with_capacity(opts.partitions as usize);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            &opts.topics.replies,
            opts.gateway_id as i32,
            Offset::Offset(replies_end),
        )?;
        for p in 0..opts.partitions as i32 {
            let (low, high) = watermarks(&consumer, &opts.topics.events, p).with_context(|| {
                format!(
                    "cannot read the offsets of {} partition {p}",
                    opts.topics.events
                )
            })?;
            targets.push(high);
            bounds.push((low.max(0) as u64, high.max(0) as u64));
        }
        let starts = start_from_snapshot(&opts, &read, &bounds);
        for (p, start) in starts.iter().enumerate() {
            tpl.add_partition_offset(&opts.topics.events, p as i32, Offset::Offset(*start))?;
        }
        let trigger = match &opts.snapshots {
            Some(s) if !s.policy.never() => Some(Trigger::new(
                snapshot::Writer::start(read.clone(), s.store.clone())
                    .context("cannot start the read-model snapshot thread")?,
                s.policy,
            )),
            _ => None,
        };
        consumer
            .assign(&tpl)
            .context("cannot assign the follower's partitions")?;
        let stop = Arc::new(AtomicBool::new(false));
        let state = FollowerState {
            topics: opts.topics,
            read,
            pending,
            parked: vec![BTreeMap::new(); opts.partitions as usize],
            parked_count: 0,
            positions: starts,
            targets,
            ready,
            started: Instant::now(),
            trigger,
            replayed: 0,
            event_fence: EpochFence::default(),
            reply_fence: EpochFence::default(),
            fence_lines: LogLimiter::new(QUIET_EVERY),
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-follower-{}", opts.gateway_id))
            .spawn(move || follow(consumer, state, stop2, opts.health))
            .context("cannot start the follower thread")?;
        Ok(Follower {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread (blocking, bounded by one poll).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

struct FollowerState {
    topics: Topics,
    read: Arc<ReadModel>,
    pending: Arc<Pending>,
    /// Per command partition: replies waiting for the read model, by (offset, request).
    parked: Vec<BTreeMap<(u64, RequestId), ReplyRecord>>,
    parked_count: usize,
    /// Next events offset to read per partition.
    positions: Vec<i64>,
    /// Events end offsets at start; ready once every position reached them.
    targets: Vec<i64>,
    ready: Arc<AtomicBool>,
    started: Instant,
    /// Read-model snapshots, when this gateway writes them.
    trigger: Option<Trigger>,
    /// Event records read before the read model caught up (the start-up replay).
    replayed: u64,
    /// Highest owner epoch per command partition, in `events` and in this gateway's
    /// `replies` partition (each an ordered stream of its own): outputs of an older
    /// owner that arrive after a newer one's are dropped.
    event_fence: EpochFence,
    reply_fence: EpochFence,
    fence_lines: LogLimiter,
}

/// The owner epoch an engine wrote on an output record ([`EPOCH_HEADER`]).
fn record_epoch(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<u64> {
    use rdkafka::message::Headers;
    m.headers()?
        .iter()
        .find(|h| h.key == EPOCH_HEADER)
        .and_then(|h| h.value)
        .and_then(parse_epoch)
}

fn follow(
    consumer: BaseConsumer<QuietContext>,
    mut st: FollowerState,
    stop: Arc<AtomicBool>,
    health: Arc<KafkaHealth>,
) {
    let mut last_sweep = Instant::now();
    let lines = LogLimiter::new(QUIET_EVERY);
    st.check_ready();
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            // A lost connection: the health's lines tell it.
            Some(Err(e)) if flashsale_runtime::kafka::is_connection_error(&e) => {}
            Some(Err(e)) => {
                // Rate-limited, and left to the outage's own lines while one lasts.
                let text = e.to_string();
                if health.is_reachable() {
                    if let Some(left_out) = lines.check(&similarity_key(&text)) {
                        tracing::warn!(error = %text, similar_left_out = left_out, "Kafka follower: consume error");
                    }
                }
            }
            Some(Ok(m)) => {
                let Some(payload) = m.payload() else { continue };
                let epoch = record_epoch(&m);
                if m.topic() == st.topics.events {
                    st.on_event(m.partition(), m.offset(), payload, epoch);
                } else {
                    st.on_replies(payload, epoch);
                }
            }
        }
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            st.sweep();
        }
    }
}

impl FollowerState {
    fn on_event(
        &mut self,
        kafka_partition: i32,
        kafka_offset: i64,
        payload: &[u8],
        epoch: Option<u64>,
    ) {
        if let Some(p) = self.positions.get_mut(kafka_partition as usize) {
            *p = kafka_offset + 1;
        }
        // One Kafka record holds the events of one applied batch of commands of this
        // partition (events partition = command partition), all of one owner epoch.
        let mut recs: Vec<EventRecord> = Vec::new();
        if let Err(e) = decode_many(payload, &mut recs) {
            tracing::warn!(partition = kafka_partition, offset = kafka_offset, error = %e, "undecodable event record skipped");
        }
        let partition = kafka_partition as u32;
        if !recs.is_empty() && !self.event_fence.admit(partition, epoch) {
            self.fenced("events", partition, epoch, self.event_fence.dropped());
        } else {
            for rec in &recs {
                self.read.apply(rec);
            }
            if let Some(last) = recs.last() {
                self.release(last.partition);
            }
        }
        if let Some(t) = &mut self.trigger {
            t.applied();
        }
        if !self.ready.load(Ordering::Relaxed) {
            self.replayed += 1;
            self.check_ready();
        } else {
            self.maybe_snapshot(false);
        }
    }

    /// Offers a snapshot to the writer when one is due (never during the start-up
    /// replay, once at its end if it was long). Cheap: reads a few integers.
    fn maybe_snapshot(&mut self, caught_up_now: bool) {
        let Some(t) = &mut self.trigger else { return };
        if !t.due(caught_up_now) {
            return;
        }
        let marks = self
            .positions
            .iter()
            .enumerate()
            .map(|(p, pos)| Mark {
                events_offset: (*pos).max(0) as u64,
                next_command_offset: self.read.applied_through(p as u32),
            })
            .collect();
        t.offer(marks);
    }

    fn check_ready(&mut self) {
        let caught_up = self
            .positions
            .iter()
            .zip(&self.targets)
            .all(|(pos, target)| *target <= 0 || *pos >= *target);
        if caught_up {
            tracing::info!(
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                events = ?self.targets,
                replayed = self.replayed,
                "read model caught up with the events topic"
            );
            self.ready.store(true, Ordering::Release);
            self.maybe_snapshot(true);
        }
    }

    /// Says (rate-limited) that an output of a replaced (fenced) engine was dropped.
    fn fenced(&self, topic: &str, partition: u32, epoch: Option<u64>, dropped: u64) {
        if self.fence_lines.check(topic).is_some() {
            tracing::info!(
                topic,
                partition,
                epoch,
                dropped_so_far = dropped,
                "dropped an output of a replaced engine (older owner epoch: fenced)"
            );
        }
    }

    /// One Kafka record holds the replies of one applied batch of one command
    /// partition for this gateway, all of one owner epoch.
    fn on_replies(&mut self, payload: &[u8], epoch: Option<u64>) {
        let mut recs: Vec<ReplyRecord> = Vec::new();
        if let Err(e) = decode_many(payload, &mut recs) {
            tracing::warn!(error = %e, "undecodable reply record skipped");
        }
        let Some(partition) = recs.first().map(|r| r.partition) else {
            return;
        };
        if !self.reply_fence.admit(partition, epoch) {
            self.fenced("replies", partition, epoch, self.reply_fence.dropped());
            return;
        }
        for rec in recs {
            self.on_reply(rec);
        }
    }

    fn on_reply(&mut self, rec: ReplyRecord) {
        if !self.pending.is_waiting(&rec.request_id) {
            return;
        }
        if rec.offset < self.read.applied_through(rec.partition) {
            self.pending.complete(rec);
            return;
        }
        if rec.partition as usize >= self.parked.len() {
            self.pending.complete(rec);
            return;
        }
        if self.parked_count >= MAX_PARKED {
            // Bounded: the oldest waiter of the fullest partition loses (503, retried).
            if let Some(fullest) = self.parked.iter_mut().max_by_key(|m| m.len()) {
                if fullest.pop_first().is_some() {
                    self.parked_count -= 1;
                }
            }
        }
        if self.parked[rec.partition as usize]
            .insert((rec.offset, rec.request_id), rec)
            .is_none()
        {
            self.parked_count += 1;
        }
    }

    /// Hands over the replies of `partition` the read model has caught up with.
    fn release(&mut self, partition: u32) {
        let through = self.read.applied_through(partition);
        let Some(parked) = self.parked.get_mut(partition as usize) else {
            return;
        };
        while let Some(entry) = parked.first_entry() {
            if entry.key().0 >= through {
                break;
            }
            let rec = entry.remove();
            self.parked_count -= 1;
            self.pending.complete(rec);
        }
    }

    /// Drops parked replies nobody waits for any more (and writes a snapshot due by
    /// time while no events arrive).
    fn sweep(&mut self) {
        if self.ready.load(Ordering::Relaxed) {
            self.maybe_snapshot(false);
        }
        for m in &mut self.parked {
            m.retain(|(_, id), _| self.pending.is_waiting(id));
        }
        self.parked_count = self.parked.iter().map(|m| m.len()).sum();
    }
}

/// Loads the newest valid read-model snapshot into `read` (a new, empty model) and
/// returns where to read each events partition from: the snapshot's offsets, or each
/// partition's start. Says in one line what it started from and how much is left to
/// replay.
fn start_from_snapshot(
    opts: &FollowerOptions,
    read: &ReadModel,
    bounds: &[(u64, u64)],
) -> Vec<i64> {
    let from_start: Vec<i64> = bounds.iter().map(|(low, _)| *low as i64).collect();
    let to_replay = |starts: &[i64]| -> u64 {
        bounds
            .iter()
            .zip(starts)
            .map(|((_, high), s)| high.saturating_sub((*s).max(0) as u64))
            .sum()
    };
    let Some(snaps) = &opts.snapshots else {
        return from_start;
    };
    let t = Instant::now();
    let (found, refused) = snapshot::load_newest(snaps.store.as_ref(), opts.partitions, bounds);
    match found {
        Some((info, image)) => {
            read.restore(&image);
            let starts: Vec<i64> = image
                .marks
                .iter()
                .zip(bounds)
                .map(|(m, (low, _))| m.events_offset.max(*low) as i64)
                .collect();
            tracing::info!(
                snapshot = %info.id(),
                covered = info.covered,
                bytes = info.size_bytes,
                reservations = image.reservations.len(),
                load_ms = t.elapsed().as_millis() as u64,
                skipped = refused.len(),
                to_replay = to_replay(&starts),
                "read model starts from a snapshot"
            );
            starts
        }
        None => {
            tracing::info!(
                skipped = refused.len(),
                to_replay = to_replay(&from_start),
                store = %snaps.store.describe(),
                "read model starts from the beginning of the events topic (no usable snapshot)"
            );
            from_start
        }
    }
}
