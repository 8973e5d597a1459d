//! The engine's half of Kafka mode: one consumer group over `commands`, one
//! `PartitionActor` per assigned partition, all driven by one thread; and a
//! **standby copy** of every partition it does not own.
//!
//! **Structure**: [`host`] is the broker-free core: a state machine of events
//! (assigned, claimed, revoked, records, acks, produce failures, snapshots stored,
//! ticks, topic ids) and actions (seek, claim, produce, commit, snapshot, follow,
//! retake, not ready, restart, fail), with no rdkafka, tokio or clock inside; it holds
//! the actors, epochs, standby copies and what awaits acks. `shell` is the rdkafka
//! loop around it: it turns consumer and producer callbacks into events and carries
//! the actions out. A seeded simulation of engines, gateways and a log drives the same
//! core (`sim`, a unit test of this crate; `make simulate SEEDS=…`).
//! Errors are not exits: what the engine cannot go on from stops its thread with an
//! [`EngineFailed`] error, which the binary turns into its exit code after the other
//! parts of the process stopped.
//!
//! Per assigned partition:
//! 1. **Recover**: the state to start from is the better of the standby copy (below)
//!    and the newest snapshot that decodes, passes the invariants and lies at or below
//!    the group's committed offset `c`; then seek to its offset and replay. Outputs of
//!    records below `c` were acknowledged by the broker before `c` was committed, so
//!    they are not produced again; from `c` on, replies and events are produced
//!    (consumers drop repeats by partition and offset). `/ready` (serve mode) waits
//!    until the partition reached the end it had at assignment.
//! 2. **Claim**: append a claim record (a `Tick` with a `CLAIM_HEADER`) to the
//!    partition and wait for its offset: that is the **owner epoch**, written on every
//!    reply and event (`EPOCH_HEADER`).
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
//! **Fast detection, incremental rebalancing**: a short group session (600 ms) and
//! incremental assignment, so only the partitions that move are revoked and the
//! survivor keeps serving its own during the rebalance. By default KIP-848's consumer
//! protocol: the broker alone times the session (`group.consumer.session.timeout.ms`,
//! set by ops/kafka/start.sh; [`group_check`] warns before joining when the broker's is
//! longer than `--session-timeout-ms`); with `--group-protocol classic`,
//! `cooperative-sticky` and the client's `--session-timeout-ms` (the broker's
//! `group.min.session.timeout.ms` must allow it), which the client times too. No static
//! membership: a static member does not leave the group when it stops, so a planned
//! stop would leave its partitions unowned for a whole session, and a `kill -9` is
//! detected no sooner (the session is what detects it either way).
//!
//! **Fencing**: a paused-then-resumed old owner must never emit outputs that count.
//! (a) Its offset commits are refused by the group coordinator once it lost the
//! generation. (b) Every reply and event carries the producer's owner epoch; readers
//! (gateway follower, projector) keep the highest epoch seen per command partition in
//! each stream and drop records of a lower one (`EpochFence`): once a successor's
//! output is read, the old owner's late outputs are ignored. (Its outputs are those a
//! correct owner would produce for the same log prefix anyway; the epoch keeps a late
//! one from counting after the successor's.) (c) An owner holds its outputs until it
//! applied its own claim, and gives the partition up if another claim was appended
//! after its assignment began (its own claim came late: it was paused while the claim
//! was on its way, and its higher epoch would outrank the successor's). An owner that
//! reads, in its own
//! partition, a claim above its epoch stops producing for the partition at once and
//! keeps it as a standby copy (and claims it again if the group still assigns it to
//! this engine a few sessions later: the late claim of a former owner, see
//! `Action::Retake`). (d) Its snapshots are a pure function of the log prefix
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
//! The outage is told in a few lines (`KafkaHealth`), librdkafka's own lines are
//! rate-limited. Only a produce the broker refuses for good (not a timeout) stops the
//! engine (nothing more is produced once the refusal is seen): continuing would leave a
//! hole in what readers see. The group then hands the partitions to another engine,
//! which redoes the uncommitted outputs.
//!
//! **Recreated topics** (a new Kafka topic id under the same name): the engine checks
//! the ids of `commands`, `events` and `replies` every few seconds; on a change it lets
//! every partition go without committing, logs one ERROR line naming the topic and
//! both ids, turns `/ready` 503 with that reason, and either waits for the operator or,
//! with `adopt_new_topics` (`--adopt-new-topics`), stops with [`TopicRecreated`] so the
//! process starts the engine again on the new log.
//!
//! **Snapshot store down** (Postgres): recovery reads the store for a few seconds at
//! most; without it a partition starts from its standby copy or, when the log still
//! holds every record, from the log's start. Snapshots are written again once the
//! store answers.

pub mod group_check;
pub mod host;
mod shell;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod testkit;

use crate::store::SnapshotStore;
use flashsale_core::actor::SnapshotPolicy;
use flashsale_proto::Topics;
use flashsale_runtime::bus::EngineReadiness;
use flashsale_runtime::metrics::Metrics;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest wait for acks when partitions are let go (revoke, stop). What is not
/// acknowledged by then is not committed: the next owner produces it again.
pub const REVOKE_ACK_WAIT: Duration = Duration::from_secs(10);

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
    /// Under the consumer protocol the broker's `group.consumer.session.timeout.ms`
    /// applies; this is then the longest one accepted without a warning.
    pub session_timeout_ms: u32,
    pub heartbeat_interval_ms: u32,
    /// KIP-848's group protocol (`group.protocol=consumer`) instead of the classic one:
    /// the session and heartbeat are then the broker's `group.consumer.*` settings,
    /// not the two above.
    pub group_protocol_consumer: bool,
    /// Standby copies: the outputs of at most this many most recent records are kept
    /// per partition not owned (so a takeover re-produces what the dead owner may not
    /// have); 0 turns standby copies off.
    pub standby_window: usize,
    /// A topic recreated under the engine (new topic id): start again on the new log
    /// (`true`) or wait for the operator, not ready (`false`).
    pub adopt_new_topics: bool,
    /// The Kafka topic id of `commands` the engine was bound to (its snapshots are of
    /// that log). Offsets are committed with it as their metadata, and a committed
    /// offset carrying another id (a commit of a deleted topic's log, made by an engine
    /// that had not seen the change yet) is not used; the id is also the reference the
    /// engine checks the topic against. `None`: taken from the first check.
    pub commands_topic_id: Option<String>,
}

/// Why the engine stopped by itself: what it could not go on from. The binary exits
/// with [`EngineFailed::EXIT_CODE`] after stopping the other parts of the process.
#[derive(Debug, thiserror::Error)]
#[error("the engine stopped: {0}")]
pub struct EngineFailed(pub String);

impl EngineFailed {
    /// The exit status of a process whose engine failed (EX_SOFTWARE).
    pub const EXIT_CODE: u8 = 70;
}

/// The engine stopped because a topic was recreated and `adopt_new_topics` is set:
/// start it again, bound to the new log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TopicRecreated(pub String);

/// What the engine owns now; `/ready` of serve mode reads it.
#[derive(Debug)]
pub struct EngineStatus {
    partitions: u32,
    owned: AtomicUsize,
    catching_up: AtomicUsize,
    stopped: AtomicBool,
    /// Why the engine is not ready though running (a recreated topic).
    reason: Mutex<Option<String>>,
}

impl EngineStatus {
    pub fn owned(&self) -> usize {
        self.owned.load(Ordering::Acquire)
    }
    /// True once the engine thread ended (stopped, or failed by itself).
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
    /// Why the engine is not ready though it runs (a recreated topic), if so.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl EngineReadiness for EngineStatus {
    /// Ready when this engine owns every partition and has caught up with each (the
    /// single-engine deployment of `serve`).
    fn is_ready(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
            && self.owned.load(Ordering::Acquire) == self.partitions as usize
            && self.catching_up.load(Ordering::Acquire) == 0
            && self.not_ready_reason().is_none()
    }
    fn not_ready_reason(&self) -> Option<String> {
        EngineStatus::not_ready_reason(self)
    }
}

/// A running engine; [`EngineHandle::stop`] lets its partitions go cleanly.
pub struct EngineHandle {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    failure: Arc<Mutex<Option<anyhow::Error>>>,
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
    /// Finishes the batch in hand, waits for its acks, commits, leaves the group and
    /// writes the last snapshots. Blocking. The error the engine stopped with by
    /// itself, if it did ([`EngineFailed`], [`TopicRecreated`]).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                return Err(EngineFailed("the engine thread panicked".into()).into());
            }
        }
        match self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
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
    if opts.group_protocol_consumer {
        // The broker times the session under this protocol: refuse a broker without
        // it, warn about one whose session would make a failover slow.
        group_check::check(&opts.brokers, opts.session_timeout_ms)?;
    }
    let status = Arc::new(EngineStatus {
        partitions,
        owned: AtomicUsize::new(0),
        catching_up: AtomicUsize::new(0),
        stopped: AtomicBool::new(false),
        reason: Mutex::new(None),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let failure = Arc::new(Mutex::new(None));
    let thread = shell::spawn(
        opts.clone(),
        store,
        metrics,
        status.clone(),
        replies_partitions,
        stop.clone(),
        failure.clone(),
    )?;
    tracing::info!(group = %opts.group_id, topic = %opts.topics.commands, partitions, "engine joined the group");
    Ok(EngineHandle {
        stop,
        thread: Some(thread),
        failure,
        status,
    })
}
