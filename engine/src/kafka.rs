//! The engine's half of Kafka mode: one consumer group over `commands`, one
//! [`PartitionActor`] per assigned partition, all driven by one thread.
//!
//! Per assigned partition:
//! 1. **Recover**: the state to start from is the better of the actor this process
//!    kept when it last let the partition go (a state is a pure function of the log
//!    prefix, so it is still right) and the newest snapshot that decodes, passes the
//!    invariants and lies at or below the group's committed offset `c`; then seek to
//!    its offset and replay. Outputs of records below `c` were acknowledged by the
//!    broker before `c` was committed, so they are not produced again; from `c` on,
//!    replies and events are produced (consumers drop repeats by partition and offset).
//!    `/ready` (serve mode) waits until the partition reached the end it had at
//!    assignment.
//! 2. **Apply** whole fetched batches in log order, with the record's Kafka timestamp
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
//! 3. **Commit** a batch's end offset only after the broker acknowledged all of its
//!    replies and events (batches pipeline: applying never waits for acks).
//! 4. **Tick**: while a partition has holds due, the engine appends tick records to its
//!    own commands partition (at most one per 200 ms), as the embedded ticker does.
//! 5. **Snapshot** every N commands or T seconds of log time in a background thread;
//!    on revoke: wait for the acks, commit, snapshot, let go.
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
    base_config, producer_config, record_time_ms, Delivery, KafkaHealth, QuietContext,
    ADMIN_TIMEOUT, STATS_INTERVAL_MS,
};
use flashsale_runtime::metrics::Metrics;
use flashsale_runtime::now_ms;
use flashsale_runtime::patience::{Backoff, QUIET_EVERY};
use flashsale_runtime::ratelimit::{similarity_key, LogLimiter};
use flashsale_runtime::telemetry::{TraceParent, TRACEPARENT_HEADER};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A batch of events or replies is cut into another Kafka record past this many bytes
/// (the broker's default `message.max.bytes` is 1 MiB).
const MAX_OUTPUT_RECORD_BYTES: usize = 256 * 1024;
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
    let core = Core {
        opts: opts.clone(),
        producer,
        store,
        metrics,
        status: status.clone(),
        replies_partitions,
        owned: BTreeMap::new(),
        idle: BTreeMap::new(),
        inflight: VecDeque::new(),
        to_commit: BTreeMap::new(),
        last_commit: Instant::now(),
        warned_reply_to: false,
        ticks: BTreeMap::new(),
        health,
        lines: LogLimiter::new(QUIET_EVERY),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let stop = core.stop.clone();
    let consumer: BaseConsumer<EngineContext> = base_config(&opts.brokers, "flashsale-engine")
        .set("group.id", &opts.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Eager rebalancing: a partition is let go (acks, commit, snapshot) before
        // anyone else is given it.
        .set("partition.assignment.strategy", "roundrobin")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500")
        .set("max.poll.interval.ms", "300000")
        .set("fetch.wait.max.ms", "5")
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
            run(&consumer, &stop2, max_batch);
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
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                core.assign(consumer, tpl);
                if let Err(e) = consumer.assign(tpl) {
                    fatal(format!("cannot take the assigned partitions: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if consumer.assignment_lost() {
                    // The group moved on without us (a session lost during a broker
                    // outage): our commits would be refused; let go all the same.
                    tracing::warn!("the group's session was lost (broker unreachable?); letting the partitions go, rejoining when the broker answers");
                }
                core.revoke(consumer);
                if let Err(e) = consumer.unassign() {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; letting every partition go");
                core.revoke(consumer);
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
    /// Actors of partitions let go: reused if the partition comes back.
    idle: BTreeMap<u32, PartitionActor>,
    /// Batches whose outputs await the broker's ack, in production order.
    inflight: VecDeque<InFlight>,
    /// Acknowledged offsets not committed yet.
    to_commit: BTreeMap<u32, u64>,
    last_commit: Instant,
    warned_reply_to: bool,
    /// The last tick produced per partition, while it awaits its ack: no other is
    /// produced meanwhile, so an outage does not pile ticks up in the producer.
    ticks: BTreeMap<u32, Arc<BatchAck>>,
    health: Arc<KafkaHealth>,
    /// Repeated errors of the loop (consume, commit), rate-limited.
    lines: LogLimiter,
    /// Set by [`EngineHandle::stop`]: retries give up.
    stop: Arc<AtomicBool>,
}

fn run(consumer: &BaseConsumer<EngineContext>, stop: &AtomicBool, max_batch: usize) {
    let mut batch: Vec<(u32, LogRecord, Option<TraceParent>)> = Vec::with_capacity(max_batch);
    while !stop.load(Ordering::Acquire) {
        // Rebalance callbacks run inside poll: never hold the core lock across it.
        let mut timeout = Duration::from_millis(50);
        while batch.len() < max_batch {
            match consumer.poll(timeout) {
                None => break,
                Some(Err(e)) if flashsale_runtime::kafka::is_connection_error(&e) => break,
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
                    batch.push((m.partition() as u32, rec, traceparent(&m)));
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
    }
    let mut core = consumer
        .context()
        .core
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    core.revoke(consumer);
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
    fn process(&mut self, batch: Vec<(u32, LogRecord, Option<TraceParent>)>) {
        if batch.is_empty() {
            return;
        }
        // Per partition: its records, and (index, context) of the traced ones.
        type Part = (Vec<LogRecord>, Vec<(usize, TraceParent)>);
        let mut by_partition: BTreeMap<u32, Part> = BTreeMap::new();
        for (p, r, t) in batch {
            let (recs, traces) = by_partition.entry(p).or_default();
            if let Some(t) = t {
                traces.push((recs.len(), t));
            }
            recs.push(r);
        }
        for (p, (recs, traces)) in by_partition {
            self.apply(p, &recs, &traces);
        }
    }

    fn apply(&mut self, p: u32, recs: &[LogRecord], traces: &[(usize, TraceParent)]) {
        // A partition revoked while its records were being fetched: not ours now.
        let Some(o) = self.owned.get_mut(&p) else {
            return;
        };
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
        // One record per partition and applied batch on `events`, one per gateway on
        // `replies` (cut at MAX_OUTPUT_RECORD_BYTES): the per-record cost of Kafka
        // (client, broker, every reader) is paid per batch, not per command (issue 11).
        let ack = Arc::new(BatchAck::default());
        let events_topic = self.opts.topics.events.clone();
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
                self.produce(
                    &events_topic,
                    p,
                    key.take().as_deref(),
                    Some(last_time),
                    &payload,
                    &ack,
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
            );
        }
        let mut by_gateway: BTreeMap<u32, BatchEncoder> = BTreeMap::new();
        for (to, reply) in &applied.replies {
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
                let topic = self.opts.topics.replies.clone();
                self.produce(&topic, *to, None, None, &payload, &ack);
            }
        }
        for (to, mut replies) in by_gateway {
            if replies.count() > 0 {
                let topic = self.opts.topics.replies.clone();
                self.produce(&topic, to, None, None, &replies.take(), &ack);
            }
        }
        self.inflight.push_back(InFlight {
            partition: p,
            next_offset: after,
            ack,
        });
    }

    /// Enqueues one record in the producer, waiting while its queue is full (records
    /// wait there until the broker takes them, so a full queue is a long outage or a
    /// slow broker: a retry cures it).
    fn produce(
        &self,
        topic: &str,
        partition: u32,
        key: Option<&str>,
        time_ms: Option<u64>,
        payload: &[u8],
        ack: &Arc<BatchAck>,
    ) {
        ack.remaining.fetch_add(1, Ordering::AcqRel);
        let mut rec: BaseRecord<'_, str, [u8], Arc<BatchAck>> =
            BaseRecord::with_opaque_to(topic, ack.clone())
                .partition(partition as i32)
                .payload(payload);
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
            let tick = CommandRecord {
                request_id: RequestId(0),
                reply_to: NO_REPLY,
                idempotency_key: None,
                command: Command::Tick,
            };
            let topic = self.opts.topics.commands.clone();
            // Not tracked for commits: a lost tick is followed by another.
            let ack = Arc::new(BatchAck::default());
            self.produce(&topic, p, None, None, &encode(&tick), &ack);
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

    /// Lets every owned partition go: acks, commit, snapshot; keeps the actors idle.
    fn revoke(&mut self, consumer: &BaseConsumer<EngineContext>) {
        if self.owned.is_empty() {
            return;
        }
        let t = Instant::now();
        let acked = self.drain_acks();
        if self.health.is_reachable() && !consumer.assignment_lost() {
            self.maybe_commit(consumer, true);
        } else if !acked || !self.to_commit.is_empty() {
            tracing::warn!("offsets not committed now (broker unreachable); the next owner replays from the last commit");
        }
        let owned = std::mem::take(&mut self.owned);
        let n = owned.len();
        for (p, mut o) in owned {
            if o.actor.state().next_offset() > o.last_snapshot_offset {
                let state = o.actor.snapshot_now();
                write_snapshot(
                    &state,
                    self.store.as_ref(),
                    self.opts.keep_snapshots,
                    &self.metrics,
                );
            }
            self.idle.insert(p, o.actor);
            self.metrics.partition_released(p);
        }
        self.status.owned.store(0, Ordering::Release);
        self.status.catching_up.store(0, Ordering::Release);
        tracing::info!(
            partitions = n,
            elapsed_ms = t.elapsed().as_millis() as u64,
            all_acked = acked,
            "partitions let go (acked outputs committed, snapshotted)"
        );
    }

    /// Recovers every assigned partition and sets where its consumption starts.
    fn assign(&mut self, consumer: &BaseConsumer<EngineContext>, tpl: &mut TopicPartitionList) {
        let t = Instant::now();
        let topic = self.opts.topics.commands.clone();
        // Partitions rebuilt by replaying the whole log (no usable snapshot).
        let mut replayed_from_start: Vec<u32> = Vec::new();
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
        for p in parts {
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
            let (actor, from) = self.recover(p, c, low);
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
                },
            );
        }
        self.idle.retain(|p, _| !self.owned.contains_key(p));
        self.status.owned.store(self.owned.len(), Ordering::Release);
        // One line for the whole assignment (each partition's detail is at debug).
        tracing::info!(
            owned = ?self.owned.keys().collect::<Vec<_>>(),
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

    /// The state to start partition `p` from: the kept actor or the newest valid
    /// snapshot at or below the committed offset `c`, whichever is further.
    fn recover(&mut self, p: u32, c: u64, low: u64) -> (PartitionActor, &'static str) {
        let kept = self.idle.remove(&p);
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
        let (actor, from) = match (found, kept) {
            (Some(s), _) => (PartitionActor::new(s, self.opts.snapshot), "snapshot"),
            (None, Some(a)) => (a, "memory"),
            (None, None) => (
                PartitionActor::new(State::new(p as u16), self.opts.snapshot),
                "log start",
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
        (actor, from)
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
