//! The engine's half of Kafka mode: one consumer group over `commands`, one
//! [`PartitionActor`] per assigned partition, all driven by one thread; and a
//! **standby copy** of every partition it does not own.
//!
//! Per assigned partition:
//! 1. **Recover**: the state to start from is the better of the standby copy (below)
//!    and the newest snapshot that decodes, passes the invariants and lies at or below
//!    the group's committed offset `c`; then seek to its offset and replay. Outputs of
//!    records below `c` were acknowledged by the broker before `c` was committed, so
//!    they are not produced again; from `c` on, replies and events are produced
//!    (consumers drop repeats by partition and offset). `/ready` (serve mode) waits
//!    until the partition reached the end it had at assignment.
//! 2. **Claim**: append a claim record (a `Tick` with a [`CLAIM_HEADER`]) to the
//!    partition and wait for its offset: that is the **owner epoch**, written on every
//!    reply and event ([`EPOCH_HEADER`]).
//! 3. **Apply** whole fetched batches in log order, with the record's Kafka timestamp
//!    as log time; produce the batch's events to `events` as ONE record (a batch of
//!    event records, `BatchEncoder`, cut at 256 KiB; same partition, key = the skuId
//!    of its first keyed event, timestamp = log time of its last; an empty event record
//!    at the batch's last offset if that command changed nothing, so gateways know how
//!    far the read model is) and its replies as one record per gateway to `replies`
//!    partition `reply_to`; one idempotent producer that does not linger (its records
//!    are whole batches already; `--linger-ms` 0) and never times a
//!    record out (`message.timeout.ms=0`), so what a reader sees of one partition has
//!    no holes: librdkafka retries every retriable failure in order, and a failure
//!    the broker makes final stops the engine before it produces anything more (what
//!    `enable.gapless.guarantee` would do; that property is experimental and makes
//!    librdkafka print a CONFWARN at every start).
//! 4. **Commit** a batch's end offset only after the broker acknowledged all of its
//!    replies and events (batches pipeline: applying never waits for acks).
//! 5. **Tick**: while a partition has holds due, the engine appends tick records to its
//!    own commands partition (at most one per 200 ms), as the embedded ticker does.
//! 6. **Snapshot** every N commands or T seconds of log time in a background thread;
//!    on revoke: wait for the acks, commit, let go, snapshot in the background.
//!
//! **Standby copies** (issue 13): a second consumer, outside the group (assigned by
//! hand), follows the `commands` of every partition this engine does not own and
//! applies them to a [`PartitionActor`] that produces nothing (no replies, events,
//! ticks, snapshots or commits). A state is a pure function of the log prefix, so the
//! copy is exactly what an owner would hold. Because the dead owner may not have
//! produced the outputs of its last records (those past its last commit `c`), the copy
//! keeps the outputs of its last `standby_window` records; a takeover starts from the
//! copy if those reach back to `c` (or the copy has not passed `c`), produces the kept
//! outputs from `c` on again, and catches up the few records left: no snapshot load,
//! no long replay. Otherwise it falls back to the snapshot and the log. Cost: one
//! partition state per partition not owned, the kept outputs, and applying every
//! partition's commands once more.
//!
//! **Fast detection, incremental rebalancing**: a short group session (600 ms by
//! default, `--session-timeout-ms`; the broker's `group.min.session.timeout.ms` must
//! allow it) and `cooperative-sticky` assignment, so only the partitions that move
//! are revoked and the survivor keeps serving its own during the rebalance. No static
//! membership: a static member does not leave the group when it stops, so a planned
//! stop would leave its partitions unowned for a whole session, and a `kill -9` is
//! detected no sooner (the session is what detects it either way).
//!
//! **Fencing**: a paused-then-resumed old owner must never emit outputs that count.
//! (a) Its offset commits are refused by the group coordinator once it lost the
//! generation. (b) Every reply and event carries the producer's owner epoch; readers
//! (gateway follower, projector) keep the highest epoch seen per command partition in
//! each stream and drop records of a lower one ([`EpochFence`]): once a successor's
//! output is read, the old owner's late outputs are ignored. (Its outputs are those a
//! correct owner would produce for the same log prefix anyway; the epoch keeps a late
//! one from counting after the successor's.) (c) An owner that reads, in its own
//! partition, a claim above its epoch stops producing for the partition at once and
//! keeps it as a standby copy (and claims it again if the group still assigns it to
//! this engine a few sessions later: the late claim of a former owner, see
//! `Core::retake_fenced`). (d) Its snapshots are a pure function of the log prefix
//! they cover, so a zombie's snapshot is as good as anyone's. (e) Its tick records are
//! ordinary commands of the log, applied by everyone the same way.
//!
//! **Planned hand-over** (SIGTERM): the engine finishes the batch in hand, waits for
//! its acks, commits, leaves the group (the successor starts from its standby copy at
//! once), then writes its last snapshots. Requests wait for the successor within their
//! reply deadline.
//!
//! **Broker outages** of any length are ridden out: outputs are produced with
//! `message.timeout.ms=0` (librdkafka retries them, in order and without duplicates,
//! until the broker takes them), ticks are not piled up while one is unacknowledged,
//! a revoke waits for acks only [`REVOKE_ACK_WAIT`] (what is not acknowledged by then
//! is not committed, so whoever owns the partition next produces it again; readers
//! drop repeats by partition and offset), and reading offsets at assignment is retried.
//! The outage is told in a few lines ([`KafkaHealth`]), librdkafka's own lines are
//! rate-limited. Only a produce the broker refuses for good (not a timeout) stops the
//! process: continuing would leave a hole in what readers see. The group then hands the
//! partitions to another engine, which redoes the uncommitted outputs.

use crate::store::{write_snapshot, SnapshotStore};
use crate::trace;
use anyhow::Context;
use flashsale_core::actor::{PartitionActor, SnapshotPolicy};
use flashsale_core::{snapshot, LogRecord, State};
use flashsale_proto::*;
use flashsale_runtime::bus::EngineReadiness;
use flashsale_runtime::kafka::{
    consumer_config, producer_config, record_time_ms, Delivery, KafkaHealth, QuietContext,
    ADMIN_TIMEOUT, STATS_INTERVAL_MS,
};
use flashsale_runtime::metrics::Metrics;
use flashsale_runtime::now_ms;
use flashsale_runtime::patience::{Backoff, QUIET_EVERY};
use flashsale_runtime::ratelimit::{similarity_key, LogLimiter};
use flashsale_runtime::telemetry::{TraceParent, TRACEPARENT_HEADER};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A batch of events or replies is cut into another Kafka record past this many bytes
/// (the broker's default `message.max.bytes` is 1 MiB).
const MAX_OUTPUT_RECORD_BYTES: usize = 256 * 1024;
/// A partition fenced off but still assigned this many sessions later is taken again.
const FENCE_GRACE_SESSIONS: u64 = 3;
/// Least time between two ticks of one partition.
const MIN_TICK_GAP_MS: u64 = 200;
/// How often acknowledged offsets are committed.
const COMMIT_EVERY: Duration = Duration::from_millis(100);
/// Longest wait for acks when partitions are let go (revoke, stop). What is not
/// acknowledged by then is not committed: the next owner produces it again.
pub const REVOKE_ACK_WAIT: Duration = Duration::from_secs(10);
/// Longest the snapshot store may be unreachable during an assignment.
const STORE_RETRY_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub brokers: String,
    pub topics: Topics,
    /// Consumer group of the engines of one deployment.
    pub group_id: String,
    pub snapshot: SnapshotPolicy,
    pub keep_snapshots: usize,
    /// Most records applied as one batch.
    pub max_batch: usize,
    pub linger_ms: u32,
    /// The group session: a member silent this long is dead and its partitions move.
    pub session_timeout_ms: u32,
    pub heartbeat_interval_ms: u32,
    /// Standby copies: the outputs of at most this many most recent records are kept
    /// per partition not owned (so a takeover re-produces what the dead owner may not
    /// have); 0 turns standby copies off.
    pub standby_window: usize,
}

/// What the engine owns now; `/ready` of serve mode reads it.
#[derive(Debug)]
pub struct EngineStatus {
    partitions: u32,
    owned: AtomicUsize,
    catching_up: AtomicUsize,
    stopped: AtomicBool,
}

impl EngineStatus {
    pub fn owned(&self) -> usize {
        self.owned.load(Ordering::Acquire)
    }
}

impl EngineReadiness for EngineStatus {
    /// Ready when this engine owns every partition and has caught up with each (the
    /// single-engine deployment of `serve`).
    fn is_ready(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
            && self.owned.load(Ordering::Acquire) == self.partitions as usize
            && self.catching_up.load(Ordering::Acquire) == 0
    }
}

/// A running engine; [`EngineHandle::stop`] lets its partitions go cleanly.
pub struct EngineHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub status: Arc<EngineStatus>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("status", &self.status)
            .finish()
    }
}

impl EngineHandle {
    /// Finishes the batch in hand, waits for its acks, commits, snapshots every owned
    /// partition and leaves the group. Blocking.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// True while the engine thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts the engine thread: checks the topics, joins the group.
pub fn start(
    opts: EngineOptions,
    store: Arc<dyn SnapshotStore>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<EngineHandle> {
    let (partitions, replies_partitions) =
        flashsale_runtime::kafka::check(&opts.brokers, &opts.topics)?;
    let status = Arc::new(EngineStatus {
        partitions,
        owned: AtomicUsize::new(0),
        catching_up: AtomicUsize::new(0),
        stopped: AtomicBool::new(false),
    });
    let health = KafkaHealth::new("the engine", opts.brokers.clone());
    let quiet = QuietContext::new(health.clone());
    let producer: ThreadedProducer<AckContext> = producer_config(
        &opts.brokers,
        "flashsale-engine",
        opts.linger_ms,
        Delivery::UntilAcknowledged,
    )
    .set("statistics.interval.ms", STATS_INTERVAL_MS)
    .create_with_context(AckContext {
        quiet: quiet.clone(),
    })
    .context("cannot create the engine's Kafka producer")?;
    // Standby copies follow the partitions this engine does not own with a consumer of
    // their own, outside the group (assigned by hand, commits nothing).
    let standby_consumer = if opts.standby_window > 0 {
        let c: BaseConsumer<QuietContext> =
            consumer_config(&opts.brokers, "flashsale-engine-standby")
                .set("group.id", format!("{}-standby", opts.group_id))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                // Never skip records silently: a standby copy with a hole would be wrong.
                .set("auto.offset.reset", "error")
                .set("fetch.error.backoff.ms", "50")
                .create_with_context(quiet.clone())
                .context("cannot create the engine's standby consumer")?;
        Some(c)
    } else {
        None
    };
    let core = Core {
        opts: opts.clone(),
        producer,
        store,
        metrics,
        status: status.clone(),
        replies_partitions,
        owned: BTreeMap::new(),
        standby: BTreeMap::new(),
        standby_consumer,
        name: format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "engine".into()),
            std::process::id()
        ),
        snapshot_writers: Vec::new(),
        fenced: BTreeMap::new(),
        inflight: VecDeque::new(),
        to_commit: BTreeMap::new(),
        last_commit: Instant::now(),
        warned_reply_to: false,
        replies_checked_at: None,
        ticks: BTreeMap::new(),
        health,
        lines: LogLimiter::new(QUIET_EVERY),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let stop = core.stop.clone();
    let consumer: BaseConsumer<EngineContext> = consumer_config(&opts.brokers, "flashsale-engine")
        .set("group.id", &opts.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Incremental (cooperative) rebalancing: only the partitions that move are
        // revoked; the others keep being served while the group rebalances. A moving
        // partition is still let go (acks, commit) before anyone else is given it.
        // No static membership (`group.instance.id`): a static member that stops does
        // not leave the group, so a planned stop would leave its partitions unowned
        // for a whole session, and a kill -9 is detected no sooner.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", opts.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            opts.heartbeat_interval_ms.to_string(),
        )
        .set("max.poll.interval.ms", "300000")
        .set("fetch.error.backoff.ms", "50")
        // For the partition-lag gauge and the broker's health (see `EngineContext::stats`).
        .set("statistics.interval.ms", STATS_INTERVAL_MS)
        .create_with_context(EngineContext {
            core: Mutex::new(core),
            quiet,
        })
        .context("cannot create the engine's Kafka consumer")?;
    consumer
        .subscribe(&[&opts.topics.commands])
        .with_context(|| format!("cannot subscribe to {}", opts.topics.commands))?;
    let stop2 = stop.clone();
    let status2 = status.clone();
    let max_batch = opts.max_batch.max(1);
    let thread = std::thread::Builder::new()
        .name("kafka-engine".into())
        .spawn(move || {
            consumer
                .context()
                .core
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .init_standby(&consumer);
            run(&consumer, &stop2, max_batch);
            let writers = std::mem::take(
                &mut consumer
                    .context()
                    .core
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .snapshot_writers,
            );
            // Leave the group first (the successor starts now), then finish the
            // snapshots of the partitions let go.
            drop(consumer);
            for w in writers {
                let _ = w.join();
            }
            status2.stopped.store(true, Ordering::Release);
        })
        .context("cannot start the engine thread")?;
    tracing::info!(group = %opts.group_id, topic = %opts.topics.commands, partitions, "engine joined the group");
    Ok(EngineHandle {
        stop,
        thread: Some(thread),
        status,
    })
}

/// Crash loudly: the log stays the truth, another engine takes over.
fn fatal(msg: String) -> ! {
    tracing::error!("{msg}; stopping the process");
    eprintln!("fatal: {msg}");
    std::process::exit(70);
}

#[derive(Debug, Default)]
struct BatchAck {
    /// Records not acknowledged yet (a failure stops the process: see `delivery`).
    remaining: AtomicUsize,
    /// The offset of the last record acknowledged (a claim's is its epoch); -1: none.
    offset: AtomicI64,
}

struct AckContext {
    quiet: QuietContext,
}
impl ClientContext for AckContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.quiet.log_line(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error_line("engine producer", &error, reason);
    }
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.quiet.stats_seen(&statistics);
    }
}
impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<BatchAck>;
    fn delivery(&self, result: &DeliveryResult<'_>, ack: Arc<BatchAck>) {
        if let Err((e, _)) = result {
            // Never a timeout (there is none): the broker refused the record for good.
            // A failed batch must not be followed by later ones, or readers would see
            // a hole: stop now, from librdkafka's thread, before anything else is
            // produced. The group hands the partitions over; the next owner produces
            // the uncommitted outputs again.
            fatal(format!("the broker refused an output record for good: {e}"));
        }
        if let Ok(m) = result {
            ack.offset.store(m.offset(), Ordering::Release);
        }
        ack.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

struct EngineContext {
    core: Mutex<Core>,
    quiet: QuietContext,
}
impl ClientContext for EngineContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.quiet.log_line(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error_line("engine consumer", &error, reason);
    }
    /// librdkafka's statistics (every `statistics.interval.ms`, delivered inside
    /// `poll`, where the core is not locked): the broker's health, and the partition
    /// lag (the high watermark of the last fetch minus the next offset to apply).
    fn stats(&self, stats: rdkafka::Statistics) {
        self.quiet.stats_seen(&stats);
        let core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        let Some(topic) = stats.topics.get(&core.opts.topics.commands) else {
            return;
        };
        for (p, o) in &core.owned {
            if let Some(part) = topic.partitions.get(&(*p as i32)) {
                if part.hi_offset >= 0 {
                    let next = o.actor.state().next_offset();
                    core.metrics
                        .partition_lag(*p, (part.hi_offset as u64).saturating_sub(next));
                }
            }
        }
    }
}

impl ConsumerContext for EngineContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        match err {
            // Cooperative protocol: `tpl` holds only the partitions added or removed.
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                core.assign(consumer, tpl);
                if let Err(e) = consumer.incremental_assign(tpl) {
                    fatal(format!("cannot take the assigned partitions: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() {
                    // The group moved on without us (a session lost during a broker
                    // outage, or a pause): our commits would be refused; let go all
                    // the same.
                    tracing::warn!("the group's session was lost (broker unreachable, or this process was paused?); letting the partitions go, rejoining when the broker answers");
                }
                let parts = partitions_of(tpl, &core.opts.topics.commands);
                core.revoke(consumer, &parts);
                if let Err(e) = consumer.incremental_unassign(tpl) {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; letting every partition go");
                let all: Vec<u32> = core.owned.keys().copied().collect();
                core.revoke(consumer, &all);
                let _ = consumer.unassign();
            }
        }
    }
}

struct Owned {
    actor: PartitionActor,
    /// Outputs of records below this offset were acknowledged before (by this or
    /// another engine): not produced again.
    emit_from: u64,
    /// The partition's end at assignment while replaying towards it.
    catch_up_to: Option<u64>,
    needs_tick_at: UnixMs,
    last_tick: UnixMs,
    last_snapshot_offset: u64,
    writing: Arc<AtomicBool>,
    /// The owner epoch: the offset of this engine's claim record in the partition.
    epoch: u64,
}

/// A warm copy of a partition this engine does not own: the state after the log
/// prefix read so far (outputs not produced), and the outputs of the last records
/// (at most `standby_window`), which a takeover produces again from the committed
/// offset on (the old owner may not have produced them).
struct Standby {
    actor: PartitionActor,
    /// Outputs of records from this offset on are known: in `ring`, or (below the
    /// ring) handed to this engine's producer while it owned the partition.
    covered_from: u64,
    ring: VecDeque<RingBatch>,
    ring_records: u64,
}

struct RingBatch {
    /// The copy's next offset before the batch.
    start: u64,
    /// Offset after the batch's last record.
    end: u64,
    /// The copy's clock after the batch.
    clock: UnixMs,
    applied: flashsale_core::actor::Applied,
}

impl Standby {
    fn new(actor: PartitionActor, covered_from: u64) -> Self {
        Standby {
            actor,
            covered_from,
            ring: VecDeque::new(),
            ring_records: 0,
        }
    }
}

struct InFlight {
    partition: u32,
    next_offset: u64,
    ack: Arc<BatchAck>,
}

struct Core {
    opts: EngineOptions,
    producer: ThreadedProducer<AckContext>,
    store: Arc<dyn SnapshotStore>,
    metrics: Arc<Metrics>,
    status: Arc<EngineStatus>,
    replies_partitions: u32,
    owned: BTreeMap<u32, Owned>,
    /// Warm copies of the partitions not owned (followed by `standby_consumer` when
    /// `standby_window` > 0; else the actors of partitions let go, kept as they were).
    standby: BTreeMap<u32, Standby>,
    standby_consumer: Option<BaseConsumer<QuietContext>>,
    /// This process in claim records and logs.
    name: String,
    /// Snapshots of partitions let go, written in the background.
    snapshot_writers: Vec<std::thread::JoinHandle<()>>,
    /// Partitions this engine stopped producing for on reading a later claim, while
    /// the group has not revoked them: see [`Core::retake_fenced`].
    fenced: BTreeMap<u32, Instant>,
    /// Batches whose outputs await the broker's ack, in production order.
    inflight: VecDeque<InFlight>,
    /// Acknowledged offsets not committed yet.
    to_commit: BTreeMap<u32, u64>,
    last_commit: Instant,
    warned_reply_to: bool,
    /// When the replies topic's partition count was last read again (`topics grow`).
    replies_checked_at: Option<Instant>,
    /// The last tick produced per partition, while it awaits its ack: no other is
    /// produced meanwhile, so an outage does not pile ticks up in the producer.
    ticks: BTreeMap<u32, Arc<BatchAck>>,
    health: Arc<KafkaHealth>,
    /// Repeated errors of the loop (consume, commit), rate-limited.
    lines: LogLimiter,
    /// Set by [`EngineHandle::stop`]: retries give up.
    stop: Arc<AtomicBool>,
}

/// One fetched command record: (partition, record, trace context, is a claim).
type Fetched = (u32, LogRecord, Option<TraceParent>, bool);

fn run(consumer: &BaseConsumer<EngineContext>, stop: &AtomicBool, max_batch: usize) {
    let mut batch: Vec<Fetched> = Vec::with_capacity(max_batch);
    let mut standby_busy = false;
    while !stop.load(Ordering::Acquire) {
        // Rebalance callbacks run inside poll: never hold the core lock across it.
        let mut timeout = if standby_busy {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        };
        while batch.len() < max_batch {
            match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) if flashsale_runtime::kafka::is_connection_error(&e) => break,
                Some(Err(e))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::InvalidSessionTimeout) =>
                {
                    let session = consumer
                        .context()
                        .core
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .opts
                        .session_timeout_ms;
                    fatal(format!(
                        "the broker refuses the group session of {session} ms (outside its group.min.session.timeout.ms .. group.max.session.timeout.ms): raise --session-timeout-ms, or lower group.min.session.timeout.ms in the broker's config (ops/kafka/start.sh sets 500)"
                    ));
                }
                Some(Err(e)) => {
                    let core = consumer
                        .context()
                        .core
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    core.warn_repeated("engine: consume error", &e);
                    break;
                }
                Some(Ok(m)) => {
                    let log_time = record_time_ms(m.timestamp()).unwrap_or(0);
                    let rec = LogRecord {
                        offset: m.offset() as u64,
                        log_time,
                        payload: m.payload().unwrap_or(&[]).to_vec(),
                    };
                    batch.push((m.partition() as u32, rec, traceparent(&m), is_claim(&m)));
                }
            }
            timeout = Duration::ZERO;
        }
        let mut core = consumer
            .context()
            .core
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        core.process(std::mem::take(&mut batch));
        core.reap_acks();
        core.maybe_commit(consumer, false);
        core.tick();
        standby_busy = core.follow_standby(max_batch) >= max_batch;
        core.retake_fenced(consumer);
    }
    let mut core = consumer
        .context()
        .core
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let all: Vec<u32> = core.owned.keys().copied().collect();
    core.revoke(consumer, &all);
    drop(core);
    consumer.unsubscribe();
    tracing::info!("engine stopped: partitions let go");
}

impl Core {
    /// A warning the loop may see again and again (an outage): once per kind and
    /// [`QUIET_EVERY`], with a count of those left out; none while an announced outage
    /// lasts (its lines say it all).
    fn warn_repeated(&self, what: &str, error: &dyn std::fmt::Display) {
        if !self.health.is_reachable() {
            return;
        }
        let text = error.to_string();
        if let Some(left_out) = self.lines.check(&similarity_key(&format!("{what} {text}"))) {
            tracing::warn!(error = %text, similar_left_out = left_out, "{what}");
        }
    }

    /// Groups a fetched batch by partition (log order within each) and applies it.
    fn process(&mut self, batch: Vec<Fetched>) {
        if batch.is_empty() {
            return;
        }
        // Per partition: its records, (index, context) of the traced ones, and the
        // offsets of claim records.
        type Part = (Vec<LogRecord>, Vec<(usize, TraceParent)>, Vec<u64>);
        let mut by_partition: BTreeMap<u32, Part> = BTreeMap::new();
        for (p, r, t, claim) in batch {
            let (recs, traces, claims) = by_partition.entry(p).or_default();
            if let Some(t) = t {
                traces.push((recs.len(), t));
            }
            if claim {
                claims.push(r.offset);
            }
            recs.push(r);
        }
        for (p, (recs, traces, claims)) in by_partition {
            self.apply(p, &recs, &traces, &claims);
        }
    }

    fn apply(
        &mut self,
        p: u32,
        recs: &[LogRecord],
        traces: &[(usize, TraceParent)],
        claims: &[u64],
    ) {
        // A partition revoked while its records were being fetched: not ours now.
        let Some(o) = self.owned.get_mut(&p) else {
            return;
        };
        // Fencing: another engine claimed the partition after us. Produce nothing
        // more for it (readers drop our late outputs by epoch anyway); the group
        // revokes it from us shortly.
        if let Some(&claim) = claims
            .iter()
            .find(|&&c| c > o.epoch && c >= o.actor.state().next_offset())
        {
            let epoch = o.epoch;
            let o = self.owned.remove(&p).expect("owned");
            if o.catch_up_to.is_some() {
                self.status.catching_up.fetch_sub(1, Ordering::AcqRel);
            }
            self.status.owned.store(self.owned.len(), Ordering::Release);
            self.metrics.partition_released(p);
            tracing::warn!(
                partition = p,
                our_epoch = epoch,
                claim_offset = claim,
                "fenced: another engine claimed the partition (this process was paused or cut off?); producing nothing more for it"
            );
            self.keep_standby(p, o.actor, o.emit_from);
            self.fenced.insert(p, Instant::now());
            self.apply_standby(p, recs);
            return;
        }
        let before = o.actor.state().next_offset();
        let t = Instant::now();
        let mut applied = trace::apply_traced(&mut o.actor, recs, traces);
        self.metrics.engine_apply(t.elapsed());
        let after = o.actor.state().next_offset();
        if after == before {
            return; // re-delivered records only
        }
        let last = after - 1;
        let emit_from = o.emit_from;
        if emit_from > before {
            applied.replies.retain(|(_, r)| r.offset >= emit_from);
            applied.events.retain(|e| e.offset >= emit_from);
        }
        if last >= emit_from && applied.events.last().is_none_or(|e| e.offset != last) {
            applied.events.push(EventRecord {
                partition: p,
                offset: last,
                log_time: o.actor.state().clock(),
                events: Vec::new(),
            });
        }
        o.needs_tick_at = o.actor.state().next_expiry().unwrap_or(u64::MAX);
        if let Some(target) = o.catch_up_to {
            self.metrics.partition_lag(p, target.saturating_sub(after));
            if after >= target {
                o.catch_up_to = None;
                self.status.catching_up.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(
                    partition = p,
                    offset = after,
                    "partition caught up; serving"
                );
                if self.status.catching_up.load(Ordering::Acquire) == 0 {
                    tracing::info!(
                        owned = self.status.owned.load(Ordering::Acquire),
                        "every owned partition caught up; serving"
                    );
                }
            }
        }
        let snapshot = if o.writing.load(Ordering::Acquire) {
            None
        } else {
            o.actor.take_snapshot_if_due()
        };
        if let Some(state) = snapshot {
            o.last_snapshot_offset = state.next_offset();
            o.writing.store(true, Ordering::Release);
            let (store, metrics, writing, keep) = (
                self.store.clone(),
                self.metrics.clone(),
                o.writing.clone(),
                self.opts.keep_snapshots,
            );
            std::thread::spawn(move || {
                write_snapshot(&state, store.as_ref(), keep, &metrics);
                writing.store(false, Ordering::Release);
            });
        }
        let epoch = o.epoch;
        self.emit(p, &applied, after, epoch);
    }

    /// Produces one batch's events and replies (with the owner epoch) and tracks
    /// their acks; `after` is the offset after the batch (committed once acked).
    /// One record per partition and applied batch on `events`, one per gateway on
    /// `replies` (cut at MAX_OUTPUT_RECORD_BYTES): the per-record cost of Kafka
    /// (client, broker, every reader) is paid per batch, not per command (issue 11).
    fn emit(&mut self, p: u32, applied: &flashsale_core::actor::Applied, after: u64, epoch: u64) {
        let ack = Arc::new(BatchAck::default());
        let events_topic = self.opts.topics.events.clone();
        let replies_topic = self.opts.topics.replies.clone();
        let mut batch = BatchEncoder::new();
        let mut key: Option<String> = None;
        let mut last_time = 0;
        for ev in &applied.events {
            if key.is_none() {
                key = event_key(ev).map(str::to_owned);
            }
            batch.push(ev);
            last_time = ev.log_time;
            if batch.body_len() >= MAX_OUTPUT_RECORD_BYTES {
                let payload = batch.take();
                let k = key.take();
                self.produce(
                    &events_topic,
                    p,
                    k.as_deref(),
                    Some(last_time),
                    &payload,
                    &ack,
                    Some(epoch),
                );
            }
        }
        if batch.count() > 0 {
            let payload = batch.take();
            self.produce(
                &events_topic,
                p,
                key.as_deref(),
                Some(last_time),
                &payload,
                &ack,
                Some(epoch),
            );
        }
        let mut by_gateway: BTreeMap<u32, BatchEncoder> = BTreeMap::new();
        for (to, reply) in &applied.replies {
            if *to >= self.replies_partitions {
                self.refresh_replies_partitions();
            }
            if *to >= self.replies_partitions {
                if !self.warned_reply_to {
                    self.warned_reply_to = true;
                    tracing::warn!(
                        reply_to = to,
                        replies_partitions = self.replies_partitions,
                        "reply for a gateway id with no replies partition dropped"
                    );
                }
                continue;
            }
            let replies = by_gateway.entry(*to).or_default();
            replies.push(reply);
            if replies.body_len() >= MAX_OUTPUT_RECORD_BYTES {
                let payload = replies.take();
                self.produce(&replies_topic, *to, None, None, &payload, &ack, Some(epoch));
            }
        }
        for (to, mut replies) in by_gateway {
            if replies.count() > 0 {
                let payload = replies.take();
                self.produce(&replies_topic, to, None, None, &payload, &ack, Some(epoch));
            }
        }
        self.inflight.push_back(InFlight {
            partition: p,
            next_offset: after,
            ack,
        });
    }

    /// A reply for a gateway id past the replies partitions this engine knows: the
    /// topic may have grown since it started (`flashsale topics grow`). Reads the count
    /// again, at most once a second, through the producer's own client, so the
    /// producer's metadata knows the new partitions before anything is produced to
    /// them (producing to a partition it does not know fails).
    fn refresh_replies_partitions(&mut self) {
        if self
            .replies_checked_at
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.replies_checked_at = Some(Instant::now());
        let topic = self.opts.topics.replies.clone();
        match self
            .producer
            .client()
            .fetch_metadata(Some(topic.as_str()), Duration::from_secs(5))
        {
            Ok(md) => {
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map_or(0, |t| t.partitions().len() as u32);
                if n > self.replies_partitions {
                    tracing::info!(
                        topic = %topic,
                        before = self.replies_partitions,
                        partitions = n,
                        "the replies topic has more partitions now (topics grow)"
                    );
                    self.replies_partitions = n;
                    self.warned_reply_to = false;
                }
            }
            Err(e) => {
                tracing::warn!(topic = %topic, error = %e, "cannot read the replies topic's partition count")
            }
        }
    }

    /// Enqueues one record in the producer, waiting while its queue is full (records
    /// wait there until the broker takes them, so a full queue is a long outage or a
    /// slow broker: a retry cures it). `epoch`: the [`EPOCH_HEADER`] of an output.
    #[allow(clippy::too_many_arguments)]
    fn produce(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&str>,
        time_ms: Option<u64>,
        payload: &[u8],
        ack: &Arc<BatchAck>,
        epoch: Option<u64>,
    ) {
        ack.remaining.fetch_add(1, Ordering::AcqRel);
        let mut rec: BaseRecord<'_, str, [u8], Arc<BatchAck>> =
            BaseRecord::with_opaque_to(topic, ack.clone())
                .partition(partition as i32)
                .payload(payload);
        if let Some(e) = epoch {
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: EPOCH_HEADER,
                value: Some(epoch_header_value(e).as_bytes()),
            }));
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        if let Some(t) = time_ms {
            rec = rec.timestamp(t as i64);
        }
        let mut full_since: Option<Instant> = None;
        loop {
            match self.producer.send(rec) {
                Ok(()) => {
                    if let Some(t) = full_since {
                        tracing::info!(
                            waited_ms = t.elapsed().as_millis() as u64,
                            "the producer's queue has room again"
                        );
                    }
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    let since = *full_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_secs(5) {
                        self.warn_repeated(
                            "the producer's queue is full (the broker takes nothing); waiting",
                            &format!("{topic} partition {partition}"),
                        );
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((e, _)) => fatal(format!(
                    "cannot produce to {topic} partition {partition}: {e}"
                )),
            }
        }
    }

    /// Moves acknowledged batches (in order) to the commit list.
    fn reap_acks(&mut self) {
        while let Some(front) = self.inflight.front() {
            if front.ack.remaining.load(Ordering::Acquire) > 0 {
                break;
            }
            let f = self.inflight.pop_front().expect("front exists");
            self.to_commit.insert(f.partition, f.next_offset);
        }
    }

    fn maybe_commit(&mut self, consumer: &BaseConsumer<EngineContext>, sync: bool) {
        if self.to_commit.is_empty() || (!sync && self.last_commit.elapsed() < COMMIT_EVERY) {
            return;
        }
        self.last_commit = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for (p, next) in std::mem::take(&mut self.to_commit) {
            if self.owned.contains_key(&p) {
                let _ = tpl.add_partition_offset(
                    &self.opts.topics.commands,
                    p as i32,
                    Offset::Offset(next as i64),
                );
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let mode = if sync {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = consumer.commit(&tpl, mode) {
            // Not fatal: a later commit covers it; a takeover re-produces a little more.
            self.warn_repeated("offset commit failed", &e);
        }
    }

    /// Appends tick records to partitions with holds due, and snapshots partitions
    /// gone quiet.
    fn tick(&mut self) {
        let now = now_ms();
        self.snapshot_quiet(now);
        let due: Vec<u32> = self
            .owned
            .iter()
            .filter(|(p, o)| {
                o.catch_up_to.is_none()
                    && o.needs_tick_at <= now
                    && o.last_tick + MIN_TICK_GAP_MS <= now
                    && self
                        .ticks
                        .get(p)
                        .is_none_or(|a| a.remaining.load(Ordering::Acquire) == 0)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            if let Some(o) = self.owned.get_mut(&p) {
                o.last_tick = now;
            }
            let tick = CommandRecord::tick();
            let topic = self.opts.topics.commands.clone();
            // Not tracked for commits: a lost tick is followed by another.
            let ack = Arc::new(BatchAck::default());
            self.produce(&topic, p, None, None, &encode(&tick), &ack, None);
            self.ticks.insert(p, ack);
        }
    }

    /// A partition whose last record is older (in wall time) than the snapshot interval
    /// and has records no snapshot covers gets one now: the policy counts log time,
    /// which stands still while nothing is appended, and the log behind an old
    /// snapshot may meanwhile be deleted by retention.
    fn snapshot_quiet(&mut self, now: UnixMs) {
        let every_ms = self.opts.snapshot.every_ms;
        for o in self.owned.values_mut() {
            let quiet = o.catch_up_to.is_none()
                && o.actor.state().next_offset() > o.last_snapshot_offset
                && now.saturating_sub(o.actor.state().clock()) >= every_ms
                && !o.writing.load(Ordering::Acquire);
            if !quiet {
                continue;
            }
            let state = o.actor.snapshot_now();
            o.last_snapshot_offset = state.next_offset();
            o.writing.store(true, Ordering::Release);
            let (store, metrics, writing, keep) = (
                self.store.clone(),
                self.metrics.clone(),
                o.writing.clone(),
                self.opts.keep_snapshots,
            );
            std::thread::spawn(move || {
                write_snapshot(&state, store.as_ref(), keep, &metrics);
                writing.store(false, Ordering::Release);
            });
        }
    }

    /// Waits (at most [`REVOKE_ACK_WAIT`]) for the produced outputs to be acknowledged;
    /// true if all were. Those that were not stay queued in the producer (delivered
    /// when the broker is back) and uncommitted (whoever owns their partition next
    /// produces them again; readers drop the repeats).
    fn drain_acks(&mut self) -> bool {
        let wait = if self.health.is_reachable() {
            REVOKE_ACK_WAIT
        } else {
            // An announced outage: nothing will be acknowledged in the meantime.
            Duration::from_millis(200)
        };
        let _ = self.producer.flush(wait);
        self.reap_acks();
        match self.inflight.front() {
            None => true,
            Some(f) => {
                tracing::warn!(
                    partition = f.partition,
                    batches = self.inflight.len(),
                    waited_ms = wait.as_millis() as u64,
                    "outputs not acknowledged yet (broker unreachable?): left uncommitted, still queued; the next owner of the partition produces them again"
                );
                false
            }
        }
    }

    /// Lets the owned partitions among `parts` go: acks, commit, snapshot (in the
    /// background); their actors become standby copies.
    fn revoke(&mut self, consumer: &BaseConsumer<EngineContext>, parts: &[u32]) {
        for p in parts {
            self.fenced.remove(p);
        }
        if !parts.iter().any(|p| self.owned.contains_key(p)) {
            return;
        }
        let t = Instant::now();
        let acked = self.drain_acks();
        if self.health.is_reachable() && !consumer.assignment_lost() {
            self.maybe_commit(consumer, true);
        } else if !acked || !self.to_commit.is_empty() {
            tracing::warn!("offsets not committed now (broker unreachable); the next owner replays from the last commit");
        }
        let mut n = 0;
        for p in parts {
            let Some(mut o) = self.owned.remove(p) else {
                continue;
            };
            n += 1;
            if o.catch_up_to.is_some() {
                self.status.catching_up.fetch_sub(1, Ordering::AcqRel);
            }
            if o.actor.state().next_offset() > o.last_snapshot_offset {
                // In the background: the successor does not wait for it (it has a
                // standby copy, or the previous snapshot and a longer replay).
                let state = o.actor.snapshot_now();
                let (store, metrics, writing, keep) = (
                    self.store.clone(),
                    self.metrics.clone(),
                    o.writing.clone(),
                    self.opts.keep_snapshots,
                );
                self.snapshot_writers.push(std::thread::spawn(move || {
                    while writing.swap(true, Ordering::AcqRel) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    write_snapshot(&state, store.as_ref(), keep, &metrics);
                    writing.store(false, Ordering::Release);
                }));
            }
            self.keep_standby(*p, o.actor, o.emit_from);
            self.metrics.partition_released(*p);
        }
        self.snapshot_writers.retain(|w| !w.is_finished());
        self.status.owned.store(self.owned.len(), Ordering::Release);
        tracing::info!(
            partitions = n,
            still_owned = ?self.owned.keys().collect::<Vec<_>>(),
            elapsed_ms = t.elapsed().as_millis() as u64,
            all_acked = acked,
            "partitions let go (acked outputs committed)"
        );
    }

    /// A later claim fences this engine off a partition, and normally the group revokes
    /// the partition from it at once (it was paused or cut off, and someone else owns
    /// the partition now). But a claim can also come late from an engine that lost the
    /// partition while its claim waited for the broker (an outage during a rebalance):
    /// then nobody produces for the partition. So a partition still assigned to this
    /// engine [`FENCE_GRACE_SESSIONS`] sessions after it was fenced is taken again: a
    /// new claim (above the late one), and the group consumer moved to the copy's
    /// next offset.
    fn retake_fenced(&mut self, consumer: &BaseConsumer<EngineContext>) {
        let grace =
            Duration::from_millis(u64::from(self.opts.session_timeout_ms) * FENCE_GRACE_SESSIONS);
        let due: Vec<u32> = self
            .fenced
            .iter()
            .filter(|(_, at)| at.elapsed() >= grace)
            .map(|(p, _)| *p)
            .collect();
        if due.is_empty() {
            return;
        }
        let topic = self.opts.topics.commands.clone();
        let assigned = match consumer.assignment() {
            Ok(a) => a,
            Err(_) => return, // asked again at the next turn
        };
        let mut tpl = TopicPartitionList::new();
        for p in due {
            self.fenced.remove(&p);
            if assigned.find_partition(&topic, p as i32).is_some() && !self.owned.contains_key(&p) {
                let _ = tpl.add_partition(&topic, p as i32);
            }
        }
        if tpl.count() == 0 {
            return;
        }
        tracing::warn!(
            partitions = ?partitions_of(&tpl, &topic),
            "the group still assigns partitions this engine was fenced off (a late claim of a former owner?); claiming them again"
        );
        self.assign(consumer, &mut tpl);
        for e in tpl.elements_for_topic(&topic) {
            if let Err(err) = consumer.seek(&topic, e.partition(), e.offset(), ADMIN_TIMEOUT) {
                // Without the seek the partition could skip records: let it go.
                fatal(format!(
                    "cannot move partition {} back to offset {:?} after taking it again: {err}",
                    e.partition(),
                    e.offset()
                ));
            }
        }
    }

    /// Keeps `actor` as the standby copy of `p` (outputs from `covered_from` on were
    /// handed to this engine's producer) and follows the partition from its next offset.
    fn keep_standby(&mut self, p: u32, actor: PartitionActor, covered_from: u64) {
        let next = actor.state().next_offset();
        self.standby.insert(p, Standby::new(actor, covered_from));
        if self.stop.load(Ordering::Acquire) {
            return;
        }
        if let Some(c) = &self.standby_consumer {
            let mut tpl = TopicPartitionList::new();
            let _ = tpl.add_partition_offset(
                &self.opts.topics.commands,
                p as i32,
                Offset::Offset(next as i64),
            );
            if let Err(e) = c.incremental_assign(&tpl) {
                tracing::warn!(partition = p, error = %e, "cannot follow the partition as a standby copy");
            }
        }
    }

    /// Builds the standby copies of every partition (newest snapshot, then the log)
    /// before the engine joins the group's work.
    fn init_standby(&mut self, consumer: &BaseConsumer<EngineContext>) {
        if self.standby_consumer.is_none() {
            return;
        }
        let t = Instant::now();
        let topic = self.opts.topics.commands.clone();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.status.partitions {
            let low = match flashsale_runtime::kafka::watermarks(consumer, &topic, p as i32) {
                Ok((l, _)) => l.max(0) as u64,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "no standby copy (cannot read the partition's offsets)");
                    continue;
                }
            };
            let state = match self.newest_snapshot(p, u64::MAX) {
                Ok(s) => s.unwrap_or_else(|| State::new(p as u16)),
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "no standby copy (snapshot store unavailable)");
                    continue;
                }
            };
            let next = state.next_offset();
            if next < low {
                tracing::warn!(
                    partition = p,
                    log_start = low,
                    snapshot = next,
                    "no standby copy (the log behind the newest snapshot is deleted)"
                );
                continue;
            }
            let actor = PartitionActor::new(state, self.opts.snapshot);
            self.standby.insert(p, Standby::new(actor, next));
            let _ = tpl.add_partition_offset(&topic, p as i32, Offset::Offset(next as i64));
        }
        if let Some(c) = &self.standby_consumer {
            if let Err(e) = c.assign(&tpl) {
                tracing::warn!(error = %e, "cannot follow the partitions as standby copies");
                self.standby.clear();
            }
        }
        tracing::info!(
            partitions = self.standby.len(),
            elapsed_ms = t.elapsed().as_millis() as u64,
            window = self.opts.standby_window,
            "standby copies started (following the partitions not owned)"
        );
    }

    /// Applies what the standby consumer has fetched (at most `max` records) to the
    /// standby copies; returns how many records it fetched.
    fn follow_standby(&mut self, max: usize) -> usize {
        let Some(c) = &self.standby_consumer else {
            return 0;
        };
        let mut by_partition: BTreeMap<u32, Vec<LogRecord>> = BTreeMap::new();
        let mut n = 0;
        while n < max {
            match c.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    if !flashsale_runtime::kafka::is_connection_error(&e) {
                        self.warn_repeated("engine: standby consume error", &e);
                    }
                    break;
                }
                Some(Ok(m)) => {
                    n += 1;
                    by_partition
                        .entry(m.partition() as u32)
                        .or_default()
                        .push(LogRecord {
                            offset: m.offset() as u64,
                            log_time: record_time_ms(m.timestamp()).unwrap_or(0),
                            payload: m.payload().unwrap_or(&[]).to_vec(),
                        });
                }
            }
        }
        for (p, recs) in by_partition {
            self.apply_standby(p, &recs);
        }
        n
    }

    /// Applies records to the standby copy of `p`, keeping their outputs in its ring
    /// (bounded by `standby_window` records).
    fn apply_standby(&mut self, p: u32, recs: &[LogRecord]) {
        // Records of a partition taken over meanwhile: the owner applies them.
        let Some(sb) = self.standby.get_mut(&p) else {
            return;
        };
        let before = sb.actor.state().next_offset();
        let applied = sb.actor.apply_batch(recs);
        let after = sb.actor.state().next_offset();
        if after == before {
            return;
        }
        sb.ring_records += after - before;
        sb.ring.push_back(RingBatch {
            start: before,
            end: after,
            clock: sb.actor.state().clock(),
            applied,
        });
        let window = self.opts.standby_window as u64;
        while sb.ring_records > window {
            let Some(old) = sb.ring.pop_front() else {
                break;
            };
            sb.ring_records -= old.end - old.start;
            sb.covered_from = old.end;
        }
    }

    /// Recovers every assigned partition and sets where its consumption starts.
    fn assign(&mut self, consumer: &BaseConsumer<EngineContext>, tpl: &mut TopicPartitionList) {
        let t = Instant::now();
        let topic = self.opts.topics.commands.clone();
        // Partitions rebuilt by replaying the whole log (no usable snapshot).
        let mut replayed_from_start: Vec<u32> = Vec::new();
        // Outputs of standby copies to produce again (the old owner may not have).
        let mut reemit: Vec<(u32, VecDeque<RingBatch>)> = Vec::new();
        let parts: Vec<u32> = tpl
            .elements_for_topic(&topic)
            .iter()
            .map(|e| e.partition() as u32)
            .collect();
        // Retried (a broker that went away again): a retry cures it. Given up only
        // when the engine stops, taking nothing.
        let committed = match self.retry("the committed offsets", || {
            consumer.committed_offsets(tpl.clone(), ADMIN_TIMEOUT)
        }) {
            Some(c) => c,
            None => return,
        };
        if let Some(sc) = &self.standby_consumer {
            let mut stop_following = TopicPartitionList::new();
            for p in &parts {
                if self.standby.contains_key(p) {
                    let _ = stop_following.add_partition(&topic, *p as i32);
                }
            }
            if stop_following.count() > 0 {
                if let Err(e) = sc.incremental_unassign(&stop_following) {
                    tracing::warn!(error = %e, "cannot stop following the partitions taken over");
                }
            }
        }
        for &p in &parts {
            self.fenced.remove(&p);
            let c = match committed
                .find_partition(&topic, p as i32)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(c)) if c >= 0 => c as u64,
                _ => 0,
            };
            let (low, high) = match self.retry(&format!("the offsets of partition {p}"), || {
                flashsale_runtime::kafka::watermarks(consumer, &topic, p as i32)
            }) {
                Some((l, h)) => (l.max(0) as u64, h.max(0) as u64),
                None => {
                    // Stopping: the partitions recovered so far are kept (let go at
                    // stop), the others are not taken.
                    self.status.owned.store(self.owned.len(), Ordering::Release);
                    return;
                }
            };
            let (actor, from, ring) = self.recover(p, c, low);
            if !ring.is_empty() {
                reemit.push((p, ring));
            }
            if from == "log start" {
                replayed_from_start.push(p);
            }
            let next = actor.state().next_offset();
            if let Err(e) = tpl.set_partition_offset(&topic, p as i32, Offset::Offset(next as i64))
            {
                fatal(format!("cannot set the start offset of partition {p}: {e}"));
            }
            let catch_up_to = (high > next).then_some(high);
            self.metrics.partition_lag(p, high.saturating_sub(next));
            if catch_up_to.is_some() {
                self.status.catching_up.fetch_add(1, Ordering::AcqRel);
            }
            tracing::debug!(
                partition = p,
                from,
                start = next,
                committed = c,
                end = high,
                "partition assigned"
            );
            let needs_tick_at = actor.state().next_expiry().unwrap_or(u64::MAX);
            self.owned.insert(
                p,
                Owned {
                    actor,
                    emit_from: c,
                    catch_up_to,
                    needs_tick_at,
                    last_tick: 0,
                    last_snapshot_offset: next,
                    writing: Arc::new(AtomicBool::new(false)),
                    epoch: 0,
                },
            );
        }
        self.standby.retain(|p, _| !self.owned.contains_key(p));
        let Some(epochs) = self.claim(&parts) else {
            return; // stopping
        };
        let mut reproduced = 0u64;
        for (p, ring) in reemit {
            let Some(o) = self.owned.get(&p) else {
                continue;
            };
            let (from, epoch) = (o.emit_from, o.epoch);
            for mut b in ring {
                if b.end <= from {
                    continue;
                }
                let last = b.end - 1;
                b.applied.replies.retain(|(_, r)| r.offset >= from);
                b.applied.events.retain(|e| e.offset >= from);
                if b.applied.events.last().is_none_or(|e| e.offset != last) {
                    b.applied.events.push(EventRecord {
                        partition: p,
                        offset: last,
                        log_time: b.clock,
                        events: Vec::new(),
                    });
                }
                reproduced += (b.applied.replies.len() + b.applied.events.len()) as u64;
                self.emit(p, &b.applied, b.end, epoch);
            }
        }
        self.status.owned.store(self.owned.len(), Ordering::Release);
        // One line for the whole assignment (each partition's detail is at debug).
        tracing::info!(
            owned = ?self.owned.keys().collect::<Vec<_>>(),
            claimed = ?epochs,
            reproduced_outputs = reproduced,
            catching_up = self.status.catching_up.load(Ordering::Acquire),
            replayed_from_log_start = ?replayed_from_start,
            elapsed_ms = t.elapsed().as_millis() as u64,
            "assignment recovered"
        );
    }

    /// Runs `f` until it succeeds, with backoff and one line per [`QUIET_EVERY`];
    /// `None` once the engine is told to stop.
    fn retry<T>(
        &self,
        what: &str,
        mut f: impl FnMut() -> rdkafka::error::KafkaResult<T>,
    ) -> Option<T> {
        let mut backoff = Backoff::default();
        let mut failures = 0u64;
        loop {
            match f() {
                Ok(v) => {
                    if failures > 0 {
                        tracing::info!(failures, "read {what} after retrying");
                    }
                    return Some(v);
                }
                Err(e) => {
                    failures += 1;
                    self.warn_repeated(&format!("cannot read {what}; retrying"), &e);
                    let until = Instant::now() + backoff.delay();
                    while Instant::now() < until {
                        if self.stop.load(Ordering::Acquire) {
                            return None;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }

    /// The state to start partition `p` from: the standby copy (with the outputs it
    /// kept, to produce again from `c` on) or the newest valid snapshot at or below
    /// the committed offset `c`, whichever is further. A standby copy is usable when
    /// it knows the outputs from `c` on (`covered_from <= c`) or has not passed `c`.
    fn recover(
        &mut self,
        p: u32,
        c: u64,
        low: u64,
    ) -> (PartitionActor, &'static str, VecDeque<RingBatch>) {
        let usable = self
            .standby
            .remove(&p)
            .filter(|s| s.covered_from <= c || s.actor.state().next_offset() <= c)
            .filter(|s| s.actor.state().next_offset() >= low);
        let (kept, ring) = match usable {
            // The fast path of a takeover: at or past the commit, nothing to load.
            Some(s) if s.actor.state().next_offset() >= c => {
                self.metrics.snapshot_at(p, now_ms());
                return (s.actor, "standby", s.ring);
            }
            Some(s) => (Some(s.actor), s.ring),
            None => (None, VecDeque::new()),
        };
        let kept_next = kept.as_ref().map_or(0, |a| a.state().next_offset());
        let mut found: Option<State> = None;
        let deadline = Instant::now() + STORE_RETRY_FOR;
        let list = loop {
            match self.store.list(p) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(partition = p, error = %e, "snapshot store unavailable; retrying");
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) if kept.is_some() => {
                    tracing::warn!(partition = p, error = %e, "snapshot store unavailable; using the state kept in memory");
                    break Vec::new();
                }
                Err(e) => fatal(format!("snapshot store unavailable for partition {p}: {e}")),
            }
        };
        for info in list {
            if info.offset > c {
                continue; // its outputs may not all be acknowledged: replay them instead
            }
            if kept.is_some() && info.offset <= kept_next {
                break; // the kept actor is at least as far
            }
            let loaded = self
                .store
                .load(&info)
                .map_err(|e| e.to_string())
                .and_then(|b| snapshot::decode(&b).map_err(|e| e.to_string()))
                .and_then(|s| {
                    if u32::from(s.partition()) == p && s.next_offset() == info.offset {
                        Ok(s)
                    } else {
                        Err(format!(
                            "holds partition {} at offset {}",
                            s.partition(),
                            s.next_offset()
                        ))
                    }
                });
            match loaded {
                Ok(s) => {
                    self.metrics.snapshot_at(p, info.taken_at);
                    found = Some(s);
                    break;
                }
                Err(error) => {
                    self.metrics.snapshot_rejected();
                    tracing::warn!(partition = p, snapshot = %info.id, %error, "snapshot refused; falling back to an older one");
                }
            }
        }
        let (actor, from, ring) = match (found, kept) {
            (Some(s), _) => (
                PartitionActor::new(s, self.opts.snapshot),
                "snapshot",
                VecDeque::new(),
            ),
            (None, Some(a)) => (a, "standby", ring),
            (None, None) => (
                PartitionActor::new(State::new(p as u16), self.opts.snapshot),
                "log start",
                VecDeque::new(),
            ),
        };
        if from != "snapshot" {
            // No snapshot loaded: the age counts from now (the kept actor's partition
            // was snapshotted when it was let go).
            self.metrics.snapshot_at(p, now_ms());
        }
        let next = actor.state().next_offset();
        if next < low {
            fatal(format!(
                "partition {p}: the log starts at offset {low} (older records deleted by retention) but the newest usable snapshot covers only up to {next}; restore a snapshot or raise the retention of {}",
                self.opts.topics.commands
            ));
        }
        (actor, from, ring)
    }

    /// The newest snapshot of `p` at or below offset `at_most` that decodes and
    /// passes the checks (no retry: for standby copies).
    fn newest_snapshot(&self, p: u32, at_most: u64) -> Result<Option<State>, String> {
        let list = self.store.list(p).map_err(|e| e.to_string())?;
        for info in list {
            if info.offset > at_most {
                continue;
            }
            let loaded = self
                .store
                .load(&info)
                .map_err(|e| e.to_string())
                .and_then(|b| snapshot::decode(&b).map_err(|e| e.to_string()));
            match loaded {
                Ok(s) if u32::from(s.partition()) == p && s.next_offset() == info.offset => {
                    return Ok(Some(s))
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(partition = p, snapshot = %info.id, "snapshot refused for the standby copy; trying an older one");
                }
            }
        }
        Ok(None)
    }

    /// Appends a claim record to each partition of `parts` now owned and waits for
    /// the broker to take them: each one's offset is this engine's owner epoch of the
    /// partition (written on every output; see [`EPOCH_HEADER`]). `None` if the
    /// engine is told to stop meanwhile.
    fn claim(&mut self, parts: &[u32]) -> Option<BTreeMap<u32, u64>> {
        let topic = self.opts.topics.commands.clone();
        let payload = encode(&CommandRecord::tick());
        let mut acks = Vec::new();
        for &p in parts {
            if !self.owned.contains_key(&p) {
                continue;
            }
            let ack = Arc::new(BatchAck::default());
            ack.remaining.fetch_add(1, Ordering::AcqRel);
            let mut rec: BaseRecord<'_, str, [u8], Arc<BatchAck>> =
                BaseRecord::with_opaque_to(&topic, ack.clone())
                    .partition(p as i32)
                    .payload(&payload[..])
                    .headers(OwnedHeaders::new().insert(Header {
                        key: CLAIM_HEADER,
                        value: Some(self.name.as_bytes()),
                    }));
            loop {
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        rec = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err((e, _)) => fatal(format!("cannot claim partition {p}: {e}")),
                }
            }
            acks.push((p, ack));
        }
        let since = Instant::now();
        let mut warned = false;
        while acks
            .iter()
            .any(|(_, a)| a.remaining.load(Ordering::Acquire) > 0)
        {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            if !warned && since.elapsed() >= Duration::from_secs(5) {
                warned = true;
                tracing::warn!("the broker has not taken the claim records yet (unreachable?); the partitions taken over wait");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut epochs = BTreeMap::new();
        for (p, ack) in acks {
            let epoch = ack.offset.load(Ordering::Acquire).max(0) as u64;
            if let Some(o) = self.owned.get_mut(&p) {
                o.epoch = epoch;
            }
            epochs.insert(p, epoch);
        }
        Some(epochs)
    }
}

/// The trace context of a command record (its `traceparent` header), if any.
fn traceparent(m: &BorrowedMessage<'_>) -> Option<TraceParent> {
    let headers = m.headers()?;
    headers
        .iter()
        .find(|h| h.key == TRACEPARENT_HEADER)
        .and_then(|h| h.value)
        .and_then(TraceParent::parse)
}

/// The SKU an event record is about (its Kafka key).
fn event_key(rec: &EventRecord) -> Option<&str> {
    rec.events.iter().find_map(|e| match e {
        Event::SaleConfigured(cfg) => cfg.products.first().map(|p| p.sku.as_str()),
        Event::SaleDropped { skus, .. } => skus.first().map(|s| s.as_str()),
        Event::Inventory { sku, .. } => Some(sku.as_str()),
        Event::Reservation(v) => Some(v.sku.as_str()),
        Event::OrderCreated(o) => Some(o.sku.as_str()),
        Event::ProductPaused { sku, .. } => Some(sku.as_str()),
        Event::SaleEnded { skus, .. } => skus.first().map(|s| s.as_str()),
        Event::ReservationsPruned { .. } => None,
    })
}

/// True if a command record is an owner's claim (its [`CLAIM_HEADER`]).
fn is_claim(m: &BorrowedMessage<'_>) -> bool {
    m.headers()
        .is_some_and(|h| h.iter().any(|h| h.key == CLAIM_HEADER))
}

/// The partitions of `topic` in a rebalance's list.
fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<u32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition() as u32)
        .collect()
}
