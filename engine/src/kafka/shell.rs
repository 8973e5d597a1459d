//! The rdkafka shell around [`Host`]: the group consumer, the standby consumer and
//! the producer; it turns their callbacks into [`Event`]s and carries out the
//! [`Action`]s. Everything it decides itself is I/O: how long to wait for the broker
//! or the snapshot store, and how to encode outputs into records.

mod output;
mod recover;

use super::host::{Action, BatchId, Event, Host, HostConfig};
use super::{EngineFailed, EngineOptions, EngineStatus, TopicRecreated, REVOKE_ACK_WAIT};
use crate::snapshotter::SnapshotWriter;
use crate::store::SnapshotStore;
use anyhow::Context;
use flashsale_core::actor::Applied;
use flashsale_core::{snapshot, LogRecord, State};
use flashsale_proto::*;
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
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A batch of events or replies is cut into another Kafka record past this many bytes
/// (the broker's default `message.max.bytes` is 1 MiB).
const MAX_OUTPUT_RECORD_BYTES: usize = 256 * 1024;
/// Least time between two ticks of one partition.
const MIN_TICK_GAP_MS: u64 = 200;
/// How often acknowledged offsets are committed.
const COMMIT_EVERY_MS: u64 = 100;
/// Longest the snapshot store may be unreachable during an assignment when the
/// partition cannot be rebuilt without it (its log's start was deleted).
const STORE_RETRY_FOR: Duration = Duration::from_secs(60);
/// Longest one read of the snapshot store may take at assignment before the engine
/// goes on without it (a standby copy, or the whole log).
const STORE_READ_WAIT: Duration = Duration::from_secs(3);
/// How often the topics' ids are checked (a recreated topic).
const TOPIC_ID_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct BatchAck {
    /// Records not acknowledged yet.
    remaining: AtomicUsize,
    /// The offset of the last record acknowledged (a claim's is its epoch); -1: none.
    offset: AtomicI64,
    /// The broker refused one of them for good.
    refused: Mutex<Option<String>>,
}

struct AckContext {
    quiet: QuietContext,
    /// Set at the first output the broker refused for good: nothing more is produced.
    refused: Arc<AtomicBool>,
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
        match result {
            // Never a timeout (there is none): the broker refused the record for good.
            // A failed batch must not be followed by later ones, or readers would see
            // a hole: the shell produces nothing once this is set and stops.
            Err((e, _)) => {
                self.refused.store(true, Ordering::Release);
                *ack.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
            Ok(m) => ack.offset.store(m.offset(), Ordering::Release),
        }
        ack.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

struct EngineContext {
    shell: Mutex<Shell>,
    quiet: QuietContext,
}
impl ClientContext for EngineContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.quiet.log_line(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error_line("engine consumer", &error, reason);
    }
    /// librdkafka's statistics (inside `poll`, where the shell is not locked): the
    /// broker's health, and the partition lag.
    fn stats(&self, stats: rdkafka::Statistics) {
        self.quiet.stats_seen(&stats);
        let shell = self.shell.lock().unwrap_or_else(|p| p.into_inner());
        let Some(topic) = stats.topics.get(&shell.opts.topics.commands) else {
            return;
        };
        for (p, o) in shell.host.owned() {
            if let Some(part) = topic.partitions.get(&(p as i32)) {
                if part.hi_offset >= 0 {
                    let next = o.actor.state().next_offset();
                    shell
                        .metrics
                        .partition_lag(p, (part.hi_offset as u64).saturating_sub(next));
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
        let mut shell = self.shell.lock().unwrap_or_else(|p| p.into_inner());
        match err {
            // Cooperative protocol: `tpl` holds only the partitions added or removed.
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                shell.assign(consumer, tpl);
                if let Err(e) = consumer.incremental_assign(tpl) {
                    shell.fail(format!("cannot take the assigned partitions: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                if lost {
                    tracing::warn!("the group's session was lost (broker unreachable, or this process was paused?); letting the partitions go, rejoining when the broker answers");
                }
                let parts = partitions_of(tpl, &shell.opts.topics.commands);
                shell.revoke(consumer, &parts, lost);
                if let Err(e) = consumer.incremental_unassign(tpl) {
                    tracing::warn!(error = %e, "unassign failed");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error; letting every partition go");
                let all: Vec<u32> = shell.host.owned().map(|(p, _)| p).collect();
                shell.revoke(consumer, &all, true);
                let _ = consumer.unassign();
            }
        }
    }
}

/// The shell's state: the clients, the core, and what awaits the broker.
struct Shell {
    opts: EngineOptions,
    host: Host,
    producer: ThreadedProducer<AckContext>,
    refused: Arc<AtomicBool>,
    store: Arc<dyn SnapshotStore>,
    writer: Option<SnapshotWriter>,
    metrics: Arc<Metrics>,
    status: Arc<EngineStatus>,
    replies_partitions: u32,
    standby_consumer: Option<BaseConsumer<QuietContext>>,
    /// This process in claim records and logs.
    name: String,
    /// Acks of produced batches, in production order.
    acks: Vec<(BatchId, Arc<BatchAck>)>,
    ticks: BTreeMap<u32, Arc<BatchAck>>,
    warned_reply_to: bool,
    /// When the replies topic's partition count was last read again (`topics grow`).
    replies_checked_at: Option<Instant>,
    health: Arc<KafkaHealth>,
    lines: LogLimiter,
    stop: Arc<AtomicBool>,
    /// Set once the engine must stop by itself.
    failure: Option<anyhow::Error>,
    /// Topic ids read by the checker thread, not yet handed to the core.
    topic_ids: Arc<Mutex<Vec<(String, String)>>>,
    /// A consumer-side seek wanted by the core (outside an assignment).
    seeks: Vec<(u32, u64)>,
    /// Partitions to assign again (fenced, still assigned).
    retakes: Vec<u32>,
}

/// One fetched command record: (partition, record, trace context, is a claim).
type Fetched = (u32, LogRecord, Option<TraceParent>, bool);

pub(super) fn spawn(
    opts: EngineOptions,
    store: Arc<dyn SnapshotStore>,
    metrics: Arc<Metrics>,
    status: Arc<EngineStatus>,
    replies_partitions: u32,
    stop: Arc<AtomicBool>,
    failure_out: Arc<Mutex<Option<anyhow::Error>>>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let health = KafkaHealth::new("the engine", opts.brokers.clone());
    let quiet = QuietContext::new(health.clone());
    let refused = Arc::new(AtomicBool::new(false));
    let producer: ThreadedProducer<AckContext> = producer_config(
        &opts.brokers,
        "flashsale-engine",
        opts.linger_ms,
        Delivery::UntilAcknowledged,
    )
    .set("statistics.interval.ms", STATS_INTERVAL_MS)
    .create_with_context(AckContext {
        quiet: quiet.clone(),
        refused: refused.clone(),
    })
    .context("cannot create the engine's Kafka producer")?;
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
    let topic_ids = Arc::new(Mutex::new(Vec::new()));
    spawn_topic_id_checker(&opts, topic_ids.clone(), stop.clone())?;
    let writer = SnapshotWriter::start(store.clone(), opts.keep_snapshots, metrics.clone())
        .context("cannot start the snapshot writer")?;
    let host = Host::new(HostConfig {
        snapshot: opts.snapshot,
        standby_window: opts.standby_window,
        session_timeout_ms: u64::from(opts.session_timeout_ms),
        commit_every_ms: COMMIT_EVERY_MS,
        min_tick_gap_ms: MIN_TICK_GAP_MS,
        adopt_new_topics: opts.adopt_new_topics,
    });
    let mut host = host;
    if let Some(id) = &opts.commands_topic_id {
        // The log the engine was bound to is the reference, not the first check's
        // answer: a topic recreated in between is seen at that check.
        host.handle(
            Event::TopicId {
                topic: opts.topics.commands.clone(),
                id: id.clone(),
            },
            &mut Vec::new(),
        );
    }
    let shell = Shell {
        opts: opts.clone(),
        host,
        producer,
        refused,
        store,
        writer: Some(writer),
        metrics,
        status: status.clone(),
        replies_partitions,
        standby_consumer,
        name: format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "engine".into()),
            std::process::id()
        ),
        acks: Vec::new(),
        ticks: BTreeMap::new(),
        warned_reply_to: false,
        replies_checked_at: None,
        health,
        lines: LogLimiter::new(QUIET_EVERY),
        stop: stop.clone(),
        failure: None,
        topic_ids: topic_ids.clone(),
        seeks: Vec::new(),
        retakes: Vec::new(),
    };
    let mut group_config = consumer_config(&opts.brokers, "flashsale-engine");
    group_config
        .set("group.id", &opts.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("max.poll.interval.ms", "300000")
        .set("fetch.error.backoff.ms", "50")
        .set("statistics.interval.ms", STATS_INTERVAL_MS);
    if opts.group_protocol_consumer {
        // KIP-848 (`--group-protocol consumer`): the broker keeps the session
        // (group.consumer.session.timeout.ms / heartbeat.interval.ms, its settings),
        // assignment is incremental, and the client has no session timer of its own: a
        // heartbeat answered late by a busy broker no longer drops the partitions.
        group_config.set("group.protocol", "consumer");
    } else {
        // Incremental (cooperative) rebalancing: only the partitions that move are
        // revoked; the others keep being served while the group rebalances. No static
        // membership: a static member that stops does not leave the group.
        group_config
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", opts.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                opts.heartbeat_interval_ms.to_string(),
            );
    }
    let consumer: BaseConsumer<EngineContext> = group_config
        .create_with_context(EngineContext {
            shell: Mutex::new(shell),
            quiet,
        })
        .context("cannot create the engine's Kafka consumer")?;
    consumer
        .subscribe(&[&opts.topics.commands])
        .with_context(|| format!("cannot subscribe to {}", opts.topics.commands))?;
    let max_batch = opts.max_batch.max(1);
    let thread = std::thread::Builder::new()
        .name("kafka-engine".into())
        .spawn(move || {
            lock(&consumer).init_standby(&consumer);
            run(&consumer, &stop, max_batch);
            let (writer, failure) = {
                let mut shell = lock(&consumer);
                (shell.writer.take(), shell.failure.take())
            };
            // Leave the group first (the successor starts now), then finish the
            // snapshots of the partitions let go.
            drop(consumer);
            if let Some(w) = writer {
                w.finish();
            }
            if let Some(e) = failure {
                tracing::error!(error = %format!("{e:#}"), "engine stopped");
                *failure_out.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
            status.stopped.store(true, Ordering::Release);
        })
        .context("cannot start the engine thread")?;
    Ok(thread)
}

/// Reads the ids of the engine's three topics every [`TOPIC_ID_EVERY`] on a thread of
/// its own (a broker that does not answer never holds the engine's loop).
fn spawn_topic_id_checker(
    opts: &EngineOptions,
    out: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let brokers = opts.brokers.clone();
    let t = &opts.topics;
    let topics = [t.commands.clone(), t.events.clone(), t.replies.clone()];
    std::thread::Builder::new()
        .name("topic-ids".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                for topic in &topics {
                    // Not answered now: asked again at the next check.
                    if let Ok(id) = flashsale_runtime::kafka_id::topic_identity(
                        &brokers,
                        topic,
                        Duration::from_secs(2),
                    ) {
                        out.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((topic.clone(), id.id));
                    }
                }
                let until = Instant::now() + TOPIC_ID_EVERY;
                while Instant::now() < until && !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
        .context("cannot start the topic id checker")?;
    Ok(())
}

fn lock(consumer: &BaseConsumer<EngineContext>) -> std::sync::MutexGuard<'_, Shell> {
    consumer
        .context()
        .shell
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

fn run(consumer: &BaseConsumer<EngineContext>, stop: &AtomicBool, max_batch: usize) {
    let mut batch: Vec<Fetched> = Vec::with_capacity(max_batch);
    let mut standby_busy = false;
    while !stop.load(Ordering::Acquire) {
        // Rebalance callbacks run inside poll: never hold the shell lock across it.
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
                    let mut shell = lock(consumer);
                    let session = shell.opts.session_timeout_ms;
                    shell.fail(format!(
                        "the broker refuses the group session of {session} ms (outside its group.min.session.timeout.ms .. group.max.session.timeout.ms): raise --session-timeout-ms, or lower group.min.session.timeout.ms in the broker's config (ops/kafka/start.sh sets 500)"
                    ));
                    break;
                }
                Some(Err(e)) => {
                    lock(consumer).warn_repeated("engine: consume error", &e);
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
        let mut shell = lock(consumer);
        shell.process(std::mem::take(&mut batch));
        shell.turn(consumer);
        standby_busy = shell.follow_standby(max_batch) >= max_batch;
        if shell.failure.is_some() {
            break;
        }
    }
    let mut shell = lock(consumer);
    if shell.failure.is_none() {
        let all: Vec<u32> = shell.host.owned().map(|(p, _)| p).collect();
        shell.revoke(consumer, &all, false);
        tracing::info!("engine stopped: partitions let go");
    } else {
        // Nothing more is produced or committed: whoever owns the partitions next
        // produces the uncommitted outputs again.
        shell
            .producer
            .purge(rdkafka::producer::PurgeConfig::default().queue());
    }
    drop(shell);
    consumer.unsubscribe();
}

impl Shell {
    /// A warning the loop may see again and again (an outage): once per kind and
    /// [`QUIET_EVERY`]; none while an announced outage lasts.
    fn warn_repeated(&self, what: &str, error: &dyn std::fmt::Display) {
        if !self.health.is_reachable() {
            return;
        }
        let text = error.to_string();
        if let Some(left_out) = self.lines.check(&similarity_key(&format!("{what} {text}"))) {
            tracing::warn!(error = %text, similar_left_out = left_out, "{what}");
        }
    }

    /// The engine stops by itself: the run loop ends, the binary decides the exit.
    fn fail(&mut self, reason: String) {
        tracing::error!("{reason}; stopping the engine");
        if self.failure.is_none() {
            self.failure = Some(EngineFailed(reason).into());
        }
        self.stop.store(true, Ordering::Release);
    }

    /// Hands `event` to the core and carries out its actions (those that need the
    /// group consumer are queued: seeks and retakes, done in [`Shell::turn`]).
    fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        self.host.handle(event, &mut actions);
        let mut rest = Vec::new();
        for a in actions {
            match a {
                Action::Produce {
                    batch,
                    partition,
                    epoch,
                    applied,
                } => self.emit(batch, partition, &applied, epoch),
                Action::ProduceTick { partition } => {
                    let topic = self.opts.topics.commands.clone();
                    let ack = Arc::new(BatchAck::default());
                    if self.produce(
                        &topic,
                        partition,
                        None,
                        None,
                        &encode(&CommandRecord::tick()),
                        &ack,
                        None,
                    ) {
                        self.ticks.insert(partition, ack);
                    }
                }
                Action::Snapshot { state, .. } => {
                    if let Some(w) = &self.writer {
                        w.write(state);
                    }
                }
                Action::Follow { partition, from } => self.follow(partition, from),
                Action::Unfollow { partition } => self.unfollow(partition),
                Action::Seek { partition, offset } => self.seeks.push((partition, offset)),
                Action::Retake { partition } => self.retakes.push(partition),
                Action::NotReady { reason } => {
                    *self.status.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
                }
                Action::Restart { reason } => {
                    if self.failure.is_none() {
                        self.failure = Some(TopicRecreated(reason).into());
                    }
                    self.stop.store(true, Ordering::Release);
                }
                Action::Fail { reason } => self.fail(reason),
                other @ (Action::Claim { .. } | Action::Commit { .. }) => rest.push(other),
            }
        }
        self.update_status();
        rest
    }

    fn update_status(&mut self) {
        let owned = self.host.owned().count();
        let catching_up = self.host.catching_up();
        self.status.owned.store(owned, Ordering::Release);
        let before = self.status.catching_up.swap(catching_up, Ordering::AcqRel);
        if before > 0 && catching_up == 0 && owned > 0 {
            tracing::info!(owned, "every owned partition caught up; serving");
        }
    }

    /// One turn of the loop after a batch: acks, snapshots written, the clock, the
    /// topics' ids; then what the core asked of the group consumer.
    fn turn(&mut self, consumer: &BaseConsumer<EngineContext>) {
        self.reap_acks();
        let done = self.writer.as_ref().map(|w| w.done()).unwrap_or_default();
        for (partition, offset) in done {
            self.handle(Event::SnapshotStored { partition, offset });
        }
        let ids = std::mem::take(&mut *self.topic_ids.lock().unwrap_or_else(|p| p.into_inner()));
        for (topic, id) in ids {
            self.handle(Event::TopicId { topic, id });
        }
        let rest = self.handle(Event::Tick { now: now_ms() });
        self.carry_out(consumer, rest);
        for (p, offset) in std::mem::take(&mut self.seeks) {
            let topic = self.opts.topics.commands.clone();
            if let Err(e) = consumer.seek(
                &topic,
                p as i32,
                Offset::Offset(offset as i64),
                ADMIN_TIMEOUT,
            ) {
                self.fail(format!(
                    "cannot move partition {p} back to offset {offset}: {e}"
                ));
            }
        }
        let retakes = std::mem::take(&mut self.retakes);
        if !retakes.is_empty() {
            self.retake(consumer, retakes);
        }
    }

    /// Commits and claims (actions that need the consumer or wait for the broker).
    fn carry_out(&mut self, consumer: &BaseConsumer<EngineContext>, actions: Vec<Action>) {
        let mut claims = Vec::new();
        for a in actions {
            match a {
                Action::Commit { offsets, sync } => self.commit(consumer, &offsets, sync),
                Action::Claim { partition } => claims.push(partition),
                _ => {}
            }
        }
        if !claims.is_empty() {
            self.claim(&claims);
        }
    }

    /// Groups a fetched batch by partition (log order within each) and applies it.
    fn process(&mut self, batch: Vec<Fetched>) {
        if batch.is_empty() {
            return;
        }
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
        for (partition, (records, traces, claims)) in by_partition {
            let was_owned = self.host.owns(partition);
            let t = Instant::now();
            let rest = self.handle(Event::Records {
                partition,
                records,
                claims,
                traces,
            });
            debug_assert!(rest.is_empty());
            self.metrics.engine_apply(t.elapsed());
            if was_owned && !self.host.owns(partition) {
                self.metrics.partition_released(partition);
            }
        }
    }

    /// Lets the owned partitions among `parts` go: acks, commit, snapshots (in the
    /// background); their actors become standby copies.
    fn revoke(&mut self, consumer: &BaseConsumer<EngineContext>, parts: &[u32], lost: bool) {
        let owned_before: Vec<u32> = parts
            .iter()
            .copied()
            .filter(|p| self.host.owns(*p))
            .collect();
        let t = Instant::now();
        let acked = if owned_before.is_empty() {
            true
        } else {
            self.drain_acks()
        };
        let lost = lost || !self.health.is_reachable();
        let rest = self.handle(Event::Revoked {
            partitions: parts.to_vec(),
            lost,
        });
        self.carry_out(consumer, rest);
        if owned_before.is_empty() {
            return;
        }
        for p in &owned_before {
            self.metrics.partition_released(*p);
        }
        tracing::info!(
            partitions = owned_before.len(),
            still_owned = ?self.host.owned().map(|(p, _)| p).collect::<Vec<_>>(),
            elapsed_ms = t.elapsed().as_millis() as u64,
            all_acked = acked,
            "partitions let go (acked outputs committed)"
        );
    }

    /// A fenced partition the group still assigns to this engine: assign it again and
    /// move the group consumer to the copy's next offset.
    fn retake(&mut self, consumer: &BaseConsumer<EngineContext>, parts: Vec<u32>) {
        let topic = self.opts.topics.commands.clone();
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            if assigned.find_partition(&topic, p as i32).is_some() && !self.host.owns(p) {
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
                // Without the seek the partition could skip records.
                self.fail(format!(
                    "cannot move partition {} back to offset {:?} after taking it again: {err}",
                    e.partition(),
                    e.offset()
                ));
            }
        }
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
        flashsale_proto::Event::SaleConfigured(cfg) => cfg.products.first().map(|p| p.sku.as_str()),
        flashsale_proto::Event::SaleDropped { skus, .. } => skus.first().map(|s| s.as_str()),
        flashsale_proto::Event::Inventory { sku, .. } => Some(sku.as_str()),
        flashsale_proto::Event::Reservation(v) => Some(v.sku.as_str()),
        flashsale_proto::Event::OrderCreated(o) => Some(o.sku.as_str()),
        flashsale_proto::Event::ProductPaused { sku, .. } => Some(sku.as_str()),
        flashsale_proto::Event::SaleEnded { skus, .. } => skus.first().map(|s| s.as_str()),
        flashsale_proto::Event::ReservationsPruned { .. } => None,
    })
}

/// True if a command record is an owner's claim (its `CLAIM_HEADER`).
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
