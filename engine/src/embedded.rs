//! Embedded mode (the default): the command log, the engine actors and the snapshot
//! store run inside this process, over files in `--data-dir`. Same dispatch, same
//! actor core, same read model as Kafka mode; only the log and the store differ.
//!
//! Per partition: a writer thread owns the log file and group-commits batches
//! (append + fdatasync) before handing them to the actor task; the actor applies them
//! in order, publishes events (read model first) and then replies. Nothing is applied,
//! so nothing is acknowledged, before it is on disk: a `kill -9` loses no answered
//! request. A ticker appends tick records while holds are due; snapshots are written
//! by a second copy of the state that follows the same records on its own thread
//! ([`crate::snapshotter`]), so taking one never stops the actor.

use crate::log::{LogRecord, PartitionLog};
use crate::recovery::{load_partition, Access};
use crate::snapshotter::Snapshotter;
use crate::store::{FileSnapshotStore, SnapshotStore};
use crate::trace;
use anyhow::Context;
use flashsale_core::actor::{Applied, PartitionActor, SnapshotPolicy};
use flashsale_core::State;
use flashsale_proto::*;
use flashsale_runtime::bus::{BusError, BusFuture, CommandBus, PartitionStatus};
use flashsale_runtime::metrics::Metrics;
use flashsale_runtime::now_ms;
use flashsale_runtime::telemetry::TraceParent;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Records one group commit may hold.
const MAX_BATCH: usize = 4096;
/// Batches queued between a writer and its actor.
const ACTOR_QUEUE: usize = 64;
/// How often the ticker looks for partitions with holds due.
const TICK_CHECK: Duration = Duration::from_millis(100);
/// Least time between two ticks of one partition.
const MIN_TICK_GAP_MS: u64 = 200;
/// How often a partition whose log cannot be written tries again.
const WRITE_RETRY_MS: u64 = 1000;
/// Layout version of the data directory.
const DATA_FORMAT: u32 = 1;

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub data_dir: PathBuf,
    pub partitions: u32,
    pub snapshot: SnapshotPolicy,
    pub keep_snapshots: usize,
    /// Free bytes a snapshot must leave on the data directory's file system for the
    /// log; a snapshot that would leave less is skipped (`--snapshot-reserve-mb`).
    pub snapshot_reserve_bytes: u64,
    /// Commands queued per partition before new ones are refused with 503.
    pub queue_depth: usize,
    /// Does a node whose every partition is either live or failed (recovery failed)
    /// report ready? The failed ones are named by `/ready` either way.
    pub ready_with_failed_partitions: bool,
}

/// Where an actor's output goes.
pub trait EngineOutput: Send + Sync + 'static {
    fn deliver(&self, partition: u32, applied: Applied);
    /// The partition's whole state after recovery.
    fn reset(&self, state: &State);
}

/// Messages to a partition's writer thread.
enum WriterMsg {
    /// An encoded command record, and its trace context (kept beside the record on
    /// its way to the actor, never written to the log).
    Append(Vec<u8>, Option<TraceParent>),
    Stop,
}

/// Records written by one group commit, with the trace contexts of the traced ones
/// as (index, context): empty, so never allocated, when nothing is traced.
type Written = (Vec<LogRecord>, Vec<(usize, TraceParent)>);

pub struct EmbeddedBus {
    writers: Vec<mpsc::Sender<WriterMsg>>,
    health: Arc<Health>,
    partitions: u32,
    closing: AtomicBool,
    ready_with_failed: bool,
}

const RECOVERING: u8 = 0;
const LIVE: u8 = 1;
const FAILED: u8 = 2;
const WRITE_BLOCKED: u8 = 3;

/// Every partition's status, shared by recovery, the writers and the bus.
struct Health {
    status: Vec<AtomicU8>,
    errors: Vec<Mutex<String>>,
    metrics: Arc<Metrics>,
}

impl Health {
    fn new(partitions: u32, metrics: Arc<Metrics>) -> Self {
        Health {
            status: (0..partitions).map(|_| AtomicU8::new(RECOVERING)).collect(),
            errors: (0..partitions).map(|_| Mutex::new(String::new())).collect(),
            metrics,
        }
    }
    fn set(&self, p: u32, status: u8, error: String) {
        *self.errors[p as usize].lock().expect("health lock") = error;
        self.status[p as usize].store(status, Ordering::Release);
        let count = |s| {
            self.status
                .iter()
                .filter(|x| x.load(Ordering::Acquire) == s)
                .count() as u64
        };
        self.metrics.set_partitions_failed(count(FAILED));
        self.metrics
            .set_partitions_write_blocked(count(WRITE_BLOCKED));
    }
    fn get(&self, p: u32) -> PartitionStatus {
        let error = || self.errors[p as usize].lock().expect("health lock").clone();
        match self.status[p as usize].load(Ordering::Acquire) {
            LIVE => PartitionStatus::Live,
            FAILED => PartitionStatus::Failed(error()),
            WRITE_BLOCKED => PartitionStatus::WriteBlocked(error()),
            _ => PartitionStatus::Recovering,
        }
    }
    fn is(&self, p: u32, status: u8) -> bool {
        self.status[p as usize].load(Ordering::Acquire) == status
    }
}

impl CommandBus for EmbeddedBus {
    fn partitions(&self) -> u32 {
        self.partitions
    }
    fn send(&self, partition: u32, record: CommandRecord) -> BusFuture<'_> {
        self.send_traced(partition, record, None)
    }
    fn send_traced(
        &self,
        partition: u32,
        record: CommandRecord,
        trace: Option<TraceParent>,
    ) -> BusFuture<'_> {
        let result = if self.closing.load(Ordering::Acquire) {
            Err(BusError::Unavailable("the server is shutting down".into()))
        } else if partition < self.partitions && !self.health.is(partition, LIVE) {
            Err(BusError::Unavailable(match self.health.get(partition) {
                PartitionStatus::Failed(e) => format!("partition {partition} is down: {e}"),
                PartitionStatus::WriteBlocked(e) => {
                    format!("partition {partition} cannot write its log now ({e}); it retries by itself")
                }
                _ => format!("partition {partition} is recovering"),
            }))
        } else {
            match self.writers.get(partition as usize) {
                None => Err(BusError::Unavailable(format!("no partition {partition}"))),
                Some(w) => w
                    .try_send(WriterMsg::Append(encode(&record), trace))
                    .map_err(|e| match e {
                        mpsc::error::TrySendError::Full(_) => BusError::Full(partition),
                        mpsc::error::TrySendError::Closed(_) => {
                            BusError::Unavailable("the log writer stopped".into())
                        }
                    }),
            }
        };
        Box::pin(std::future::ready(result))
    }
    fn is_ready(&self) -> bool {
        if self.closing.load(Ordering::Acquire) {
            return false;
        }
        let (mut live, mut failed) = (0, 0);
        for p in 0..self.partitions {
            match self.health.status[p as usize].load(Ordering::Acquire) {
                LIVE => live += 1,
                FAILED => failed += 1,
                _ => return false,
            }
        }
        failed == 0 || (self.ready_with_failed && live > 0)
    }
    fn partition_status(&self, partition: u32) -> PartitionStatus {
        if partition >= self.partitions {
            return PartitionStatus::Failed(format!("no partition {partition}"));
        }
        self.health.get(partition)
    }
}

/// What recovery of one partition found; logged, and shown by `/ready`'s absence of 503.
#[derive(Debug)]
pub struct RecoveryReport {
    pub partition: u32,
    pub snapshot_offset: Option<u64>,
    pub rejected_snapshots: Vec<String>,
    pub replayed: u64,
    pub log_end: u64,
    pub truncated_bytes: u64,
    /// Damaged stretches of the log that the snapshot covered (recovered past them).
    pub damage: Vec<crate::log::Damage>,
}

pub struct EmbeddedNode {
    bus: Arc<EmbeddedBus>,
    actors: Arc<tokio::sync::Mutex<Vec<JoinHandle<()>>>>,
    ticker: JoinHandle<()>,
    _lock: std::fs::File,
}

impl std::fmt::Debug for EmbeddedNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedNode")
            .field("partitions", &self.bus.partitions)
            .finish()
    }
}

struct PartitionShared {
    needs_tick_at: AtomicU64,
    last_tick: AtomicU64,
    written: AtomicU64,
}

impl EmbeddedNode {
    /// Opens the data directory and starts recovering every partition in the
    /// background; the bus reports ready once all have caught up.
    pub fn start(
        opts: EmbeddedOptions,
        output: Arc<dyn EngineOutput>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            opts.partitions >= 1 && opts.partitions <= MAX_PARTITIONS,
            "--partitions must be 1-{MAX_PARTITIONS}"
        );
        let lock = prepare_data_dir(&opts.data_dir, opts.partitions)?;
        let mut writers = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..opts.partitions {
            let (tx, rx) = mpsc::channel(opts.queue_depth.max(1));
            writers.push(tx);
            inboxes.push(rx);
        }
        let health = Arc::new(Health::new(opts.partitions, metrics.clone()));
        let bus = Arc::new(EmbeddedBus {
            writers,
            health: health.clone(),
            partitions: opts.partitions,
            closing: AtomicBool::new(false),
            ready_with_failed: opts.ready_with_failed_partitions,
        });
        let shared: Arc<Vec<PartitionShared>> = Arc::new(
            (0..opts.partitions)
                .map(|_| PartitionShared {
                    needs_tick_at: AtomicU64::new(u64::MAX),
                    last_tick: AtomicU64::new(0),
                    written: AtomicU64::new(0),
                })
                .collect(),
        );
        let file_store = FileSnapshotStore::new(opts.data_dir.join("snapshots"))
            .with_reserve(opts.snapshot_reserve_bytes);
        for p in 0..opts.partitions {
            match file_store.remove_temp_files(p) {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    partition = p,
                    files = n,
                    "removed unfinished snapshot files (*.snap.tmp) left by an earlier run"
                ),
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "could not remove unfinished snapshot files")
                }
            }
        }
        let store: Arc<dyn SnapshotStore> = Arc::new(file_store);
        let actors = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        {
            let (bus, shared, actors, opts) =
                (bus.clone(), shared.clone(), actors.clone(), opts.clone());
            let health = health.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut failed = Vec::new();
                // One partition after another (the machine's cores are shared), but each
                // recovers or fails alone: a failed one never stops the others.
                for (p, inbox) in inboxes.into_iter().enumerate() {
                    let p = p as u32;
                    let (store2, metrics2, dir) =
                        (store.clone(), metrics.clone(), opts.data_dir.join("log"));
                    let rec = tokio::task::spawn_blocking(move || {
                        recover(&dir, p, store2.as_ref(), &metrics2, opts.snapshot)
                    })
                    .await;
                    let (log, actor, report) = match rec {
                        Ok(Ok(x)) => x,
                        Ok(Err(e)) => {
                            let e = format!("{e:#}");
                            tracing::error!(partition = p, error = %e, "recovery failed; this partition stays down, the others serve");
                            health.set(p, FAILED, format!("recovery failed: {e}"));
                            failed.push(p);
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(partition = p, error = %e, "recovery panicked; this partition stays down, the others serve");
                            health.set(p, FAILED, format!("recovery panicked: {e}; run `flashsale replay --partition {p}` to diagnose"));
                            failed.push(p);
                            continue;
                        }
                    };
                    // Per partition at debug: the summary line below says it once.
                    tracing::debug!(
                        partition = p,
                        snapshot_offset = ?report.snapshot_offset,
                        rejected_snapshots = ?report.rejected_snapshots,
                        replayed = report.replayed,
                        log_end = report.log_end,
                        truncated_bytes = report.truncated_bytes,
                        "partition recovered"
                    );
                    output.reset(actor.state());
                    let sh = &shared[p as usize];
                    sh.written.store(log.next_offset(), Ordering::Release);
                    sh.needs_tick_at.store(
                        actor.state().next_expiry().unwrap_or(u64::MAX),
                        Ordering::Release,
                    );
                    let (to_actor, actor_rx) = mpsc::channel(ACTOR_QUEUE);
                    let (shared_w, health_w) = (shared.clone(), health.clone());
                    std::thread::Builder::new()
                        .name(format!("log-writer-{p}"))
                        .spawn(move || writer_loop(log, inbox, to_actor, shared_w, health_w, p))
                        .expect("spawning a thread");
                    let snapshotter = Snapshotter::start(
                        actor.clone(),
                        store.clone(),
                        opts.keep_snapshots,
                        metrics.clone(),
                    );
                    let handle = tokio::spawn(actor_loop(
                        actor,
                        actor_rx,
                        output.clone(),
                        shared.clone(),
                        snapshotter,
                        metrics.clone(),
                    ));
                    actors.lock().await.push(handle);
                    health.set(p, LIVE, String::new());
                }
                if failed.is_empty() {
                    tracing::info!(
                        partitions = opts.partitions,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "all partitions recovered; ready"
                    );
                } else {
                    tracing::error!(
                        partitions = opts.partitions,
                        failed = ?failed,
                        ready = bus.is_ready(),
                        "recovery done; some partitions failed and stay down (see /ready; docs/operations.md, \"Storage damage and recovery\")"
                    );
                }
            });
        }
        let ticker = tokio::spawn(ticker_loop(bus.clone(), shared));
        Ok(EmbeddedNode {
            bus,
            actors,
            ticker,
            _lock: lock,
        })
    }

    pub fn bus(&self) -> Arc<dyn CommandBus> {
        self.bus.clone()
    }

    /// Stops taking commands, lets writers flush and actors apply what is written,
    /// and writes a final snapshot of every partition.
    pub async fn shutdown(self) {
        self.bus.closing.store(true, Ordering::Release);
        self.ticker.abort();
        for w in &self.bus.writers {
            let _ = tokio::time::timeout(Duration::from_secs(5), w.send(WriterMsg::Stop)).await;
        }
        let handles = std::mem::take(&mut *self.actors.lock().await);
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
        }
    }
}

/// Creates the layout, takes an exclusive lock, and checks the partition count.
fn prepare_data_dir(dir: &Path, partitions: u32) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(dir.join("log"))
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .with_context(|| format!("cannot open {}/.lock", dir.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!("data directory {} is in use by another flashsale process; stop it or pass another --data-dir", dir.display())
    })?;
    let meta_path = dir.join("flashsale.json");
    match std::fs::read(&meta_path) {
        Ok(bytes) => {
            let meta: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid JSON", meta_path.display()))?;
            let have = meta.get("partitions").and_then(|v| v.as_u64()).unwrap_or(0);
            anyhow::ensure!(
                have == u64::from(partitions),
                "data directory {} was created with {have} partitions; start with --partitions {have} or use a new --data-dir",
                dir.display()
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Every partition's log is created with the directory, before the file
            // that marks it created: from then on a missing log is a lost file
            // (crate::recovery), never recreated empty.
            for p in 0..partitions {
                PartitionLog::open(&dir.join("log"), p)
                    .with_context(|| format!("cannot create the log of partition {p}"))?;
            }
            std::fs::File::open(dir.join("log"))
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}/log", dir.display()))?;
            let meta = serde_json::json!({"format": DATA_FORMAT, "partitions": partitions});
            std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta)?)
                .with_context(|| format!("cannot write {}", meta_path.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", meta_path.display())),
    }
    Ok(lock)
}

/// Newest valid snapshot + replay of the log after it. Which snapshot, and whether the
/// partition may serve at all, is [`crate::recovery::load_partition`]'s verdict, the
/// same the operators' tools reach.
pub fn recover(
    log_dir: &Path,
    partition: u32,
    store: &dyn SnapshotStore,
    metrics: &Metrics,
    policy: SnapshotPolicy,
) -> anyhow::Result<(PartitionLog, PartitionActor, RecoveryReport)> {
    let loaded = load_partition(log_dir, partition, store, Access::Server)?;
    for r in &loaded.rejected {
        metrics.snapshot_rejected();
        tracing::warn!(partition, snapshot = %r.info.id, error = %r.error, "snapshot refused; falling back to an older one");
    }
    if let Some((info, _)) = &loaded.snapshot {
        let aside = loaded.log.keep_damage_aside()?;
        for (d, file) in loaded.damage().iter().zip(&aside) {
            tracing::error!(
                partition,
                file = %loaded.log.path().display(),
                byte = d.position,
                lost_offsets = %format!("{}..{}", d.offset, d.resume_offset.saturating_sub(1)),
                reason = d.reason,
                snapshot = %info.id,
                damaged_bytes_copied_to = %file.display(),
                "the command log is damaged (not a torn tail) where snapshot {} already covers it: recovering from that snapshot and the valid records after the damage; the log file is left as it is (docs/operations.md, \"Storage damage and recovery\")",
                info.id
            );
        }
    }
    let rejected = loaded.rejected;
    let log = loaded.log;
    let (snapshot_offset, state) = match loaded.snapshot {
        Some((info, state)) => {
            metrics.snapshot_at(partition, info.taken_at);
            (Some(info.offset), state)
        }
        None => {
            metrics.snapshot_at(partition, now_ms());
            (None, State::new(partition as u16))
        }
    };
    if log.truncated_bytes() > 0 {
        tracing::warn!(partition, bytes = log.truncated_bytes(), at = log.next_offset(), "cutting a torn tail (a write cut short by a crash: the record is not on disk in full, so it was never synced or acknowledged); its bytes are kept in pNNN.log.torn-<position>");
    }
    let mut log = log;
    log.cut_torn_tail()?;
    let mut actor = PartitionActor::new(state, policy);
    let mut replayed = 0;
    let mut batch = Vec::with_capacity(1024);
    let from = actor.state().next_offset();
    for rec in log.reader_from(from)? {
        batch.push(rec?);
        if batch.len() == 1024 {
            replayed += batch.len() as u64;
            actor.apply_batch(&batch);
            batch.clear();
        }
    }
    replayed += batch.len() as u64;
    actor.apply_batch(&batch);
    let report = RecoveryReport {
        partition,
        snapshot_offset,
        rejected_snapshots: rejected
            .iter()
            .map(|r| format!("{}: {}", r.info.id, r.error))
            .collect(),
        replayed,
        log_end: log.next_offset(),
        truncated_bytes: log.truncated_bytes(),
        damage: log.damage().to_vec(),
    };
    Ok((log, actor, report))
}

fn writer_loop(
    mut log: PartitionLog,
    mut inbox: mpsc::Receiver<WriterMsg>,
    to_actor: mpsc::Sender<Written>,
    shared: Arc<Vec<PartitionShared>>,
    health: Arc<Health>,
    partition: u32,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut traces = Vec::new();
    let mut stop = false;
    while !stop {
        match inbox.blocking_recv() {
            Some(WriterMsg::Append(p, t)) => {
                if let Some(t) = t {
                    traces.push((batch.len(), t));
                }
                batch.push(p)
            }
            Some(WriterMsg::Stop) | None => break,
        }
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(WriterMsg::Append(p, t)) => {
                    if let Some(t) = t {
                        traces.push((batch.len(), t));
                    }
                    batch.push(p)
                }
                Ok(WriterMsg::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let records = match log.append(std::mem::take(&mut batch), now_ms()) {
            Ok(r) => {
                if !health.is(partition, LIVE) {
                    tracing::warn!(partition, "command log writable again; taking commands");
                    health.set(partition, LIVE, String::new());
                }
                r
            }
            Err(e) => {
                // Nothing of this batch is on disk, so nothing of it is applied or
                // acknowledged (its requests time out with 503 and are retried with
                // their Idempotency-Key). New commands are refused until a retry of the
                // ticker's writes succeeds.
                if !health.is(partition, WRITE_BLOCKED) {
                    tracing::error!(partition, error = %e, "command log write failed (disk full?); refusing commands on this partition and retrying every second");
                }
                health.set(partition, WRITE_BLOCKED, e.to_string());
                // The next try (a ticker probe) one retry interval from now.
                shared[partition as usize]
                    .last_tick
                    .store(now_ms(), Ordering::Release);
                traces.clear();
                continue;
            }
        };
        shared[partition as usize]
            .written
            .store(log.next_offset(), Ordering::Release);
        if to_actor
            .blocking_send((records, std::mem::take(&mut traces)))
            .is_err()
        {
            break;
        }
    }
}

async fn actor_loop(
    mut actor: PartitionActor,
    mut inbox: mpsc::Receiver<Written>,
    output: Arc<dyn EngineOutput>,
    shared: Arc<Vec<PartitionShared>>,
    snapshotter: Snapshotter,
    metrics: Arc<Metrics>,
) {
    let p = actor.partition();
    while let Some((batch, traces)) = inbox.recv().await {
        let t = Instant::now();
        let applied = trace::apply_traced(&mut actor, &batch, &traces);
        metrics.engine_apply(t.elapsed());
        let sh = &shared[p as usize];
        sh.needs_tick_at.store(
            actor.state().next_expiry().unwrap_or(u64::MAX),
            Ordering::Release,
        );
        output.deliver(p, applied);
        let lag = sh
            .written
            .load(Ordering::Acquire)
            .saturating_sub(actor.state().next_offset());
        metrics.partition_lag(p, lag);
        // Snapshots are written from a copy that follows the same records on its own
        // thread: the actor never stops for one (engine/src/snapshotter.rs).
        snapshotter.follow(batch).await;
    }
    // The writer stopped (shutdown): the copy writes one last snapshot so the next
    // start replays little.
    let _ = tokio::task::spawn_blocking(move || snapshotter.finish()).await;
}

async fn ticker_loop(bus: Arc<EmbeddedBus>, shared: Arc<Vec<PartitionShared>>) {
    let mut interval = tokio::time::interval(TICK_CHECK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = now_ms();
        for (p, sh) in shared.iter().enumerate() {
            if bus.health.is(p as u32, WRITE_BLOCKED) {
                // Probe: a tick written straight to the writer, past the refusal.
                if sh.last_tick.load(Ordering::Acquire) + WRITE_RETRY_MS <= now {
                    sh.last_tick.store(now, Ordering::Release);
                    let tick = CommandRecord::tick();
                    let _ = bus.writers[p].try_send(WriterMsg::Append(encode(&tick), None));
                }
                continue;
            }
            let due = sh.needs_tick_at.load(Ordering::Acquire);
            if due > now || sh.last_tick.load(Ordering::Acquire) + MIN_TICK_GAP_MS > now {
                continue;
            }
            sh.last_tick.store(now, Ordering::Release);
            let tick = CommandRecord::tick();
            // A full queue means commands are flowing, and each of them expires due holds.
            let _ = bus.send(p as u32, tick).await;
        }
    }
}
