//! Snapshots that never stall the actor.
//!
//! A partition's state is a pure function of its log prefix, so a second copy of it,
//! fed the same records after the actor applied them, is the same state. The
//! [`Snapshotter`] keeps that copy on its own thread and writes snapshots of it as it
//! is (no copy of the state on the actor's path: cloning a partition of 1,000,000
//! holds stopped the actor for a few hundred milliseconds, issue 11).
//!
//! Costs: the state's memory twice, and applying every record twice (the core decides
//! millions of commands a second; see README "Performance"). Limits:
//! - the queue between the actor and the copy holds at most [`QUEUE_BATCHES`] batches
//!   (minutes of traffic); when the copy falls that far behind (a very slow disk), the actor waits for room,
//!   which is the stall this module otherwise avoids, so it is logged;
//! - snapshots use at most [`MAX_SHARE`] of one core: after a snapshot that took `d`,
//!   the next one waits at least `d * (1 / MAX_SHARE - 1)`, whatever the policy says
//!   (a partition of a million holds takes over a second to encode; at 40,000 commands
//!   a second the count policy alone would keep a core busy encoding).
//!
//! On shutdown ([`Snapshotter::finish`]) the copy applies what is queued and writes a
//! last snapshot if anything was applied since the previous one.
//!
//! Every host writes its snapshots through the same two pieces: [`Pacer`] (the
//! [`MAX_SHARE`] rule above) and `write_snapshot` (encode, store, prune). The embedded
//! host's [`Snapshotter`] decides *when* from its copy's policy; the Kafka host's core
//! (`kafka::host`) decides it from the actor's policy, quiet partitions and hand-overs,
//! and hands the states to one [`SnapshotWriter`] thread.

use crate::store::{write_snapshot, SnapshotStore};
use flashsale_core::actor::PartitionActor;
use flashsale_core::{LogRecord, State};
use flashsale_runtime::metrics::Metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Batches queued between an actor and its snapshot copy: enough for minutes of
/// traffic while the copy writes a snapshot of a million holds (seconds), because the
/// actor waits when it is full (4,096 stalled the actor ~0.8 s at 20,000 holds/s in
/// batches of ~20). The records are the actor's, moved, not copied: at most
/// ~40 MB even if every batch held one record.
pub const QUEUE_BATCHES: usize = 262_144;
/// Most of one core that snapshot writing may take.
pub const MAX_SHARE: f64 = 0.1;

/// The background snapshot copy of one partition.
pub struct Snapshotter {
    partition: u32,
    tx: Option<mpsc::Sender<Vec<LogRecord>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("partition", &self.partition)
            .finish()
    }
}

impl Snapshotter {
    /// Starts from `copy`, a clone of the actor as it is now (state and snapshot
    /// counters: records replayed at recovery count towards the first snapshot).
    pub fn start(
        copy: PartitionActor,
        store: Arc<dyn SnapshotStore>,
        keep: usize,
        metrics: Arc<Metrics>,
    ) -> Snapshotter {
        let partition = copy.partition();
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let thread = std::thread::Builder::new()
            .name(format!("snapshot-{partition}"))
            .spawn(move || run(copy, rx, store, keep, metrics))
            .expect("spawning a thread");
        Snapshotter {
            partition,
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Hands the records the actor just applied to the copy (async callers).
    pub async fn follow(&self, batch: Vec<LogRecord>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(batch)) => {
                let t = Instant::now();
                let _ = tx.send(batch).await;
                self.warn_waited(t.elapsed());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Hands the records the actor just applied to the copy (threads outside tokio).
    pub fn follow_blocking(&self, batch: Vec<LogRecord>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(batch) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(batch)) => {
                let t = Instant::now();
                let _ = tx.blocking_send(batch);
                self.warn_waited(t.elapsed());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn warn_waited(&self, waited: Duration) {
        tracing::warn!(
            partition = self.partition,
            waited_ms = waited.as_millis() as u64,
            queued_batches = QUEUE_BATCHES,
            "the snapshot copy fell behind (slow snapshot store?); the actor waited for it"
        );
    }

    /// Lets the copy apply what is queued and write a last snapshot; returns when it
    /// is written (blocking: call it from a blocking thread).
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        // Dropping the sender ends the thread after it wrote what it owes; not joined.
        self.tx.take();
    }
}

fn run(
    mut copy: PartitionActor,
    mut rx: mpsc::Receiver<Vec<LogRecord>>,
    store: Arc<dyn SnapshotStore>,
    keep: usize,
    metrics: Arc<Metrics>,
) {
    let mut pacer = Pacer::default();
    while let Some(batch) = rx.blocking_recv() {
        copy.apply_batch_quietly(&batch);
        drop(batch);
        // Apply whatever else is queued first: the snapshot then covers more.
        while let Ok(batch) = rx.try_recv() {
            copy.apply_batch_quietly(&batch);
        }
        if pacer.wait_needed().is_some() || !copy.snapshot_due() {
            continue;
        }
        pacer.write(copy.state(), store.as_ref(), keep, &metrics);
    }
    if copy.dirty() {
        copy.mark_snapshot_taken();
        write_snapshot(copy.state(), store.as_ref(), keep, &metrics);
    }
}

/// Keeps snapshot writing under [`MAX_SHARE`] of a core: after a snapshot that took
/// `d`, the next one waits at least `d * (1 / MAX_SHARE - 1)`.
#[derive(Debug, Default)]
pub struct Pacer {
    not_before: Option<Instant>,
}

impl Pacer {
    /// How long the next snapshot must still wait, if at all.
    pub fn wait_needed(&self) -> Option<Duration> {
        self.not_before
            .and_then(|t| t.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Writes `state` (encode, store, prune) and paces the next one.
    pub fn write(
        &mut self,
        state: &State,
        store: &dyn SnapshotStore,
        keep: usize,
        metrics: &Metrics,
    ) {
        let t = Instant::now();
        write_snapshot(state, store, keep, metrics);
        let took = t.elapsed();
        self.not_before = Some(Instant::now() + took.mul_f64(1.0 / MAX_SHARE - 1.0));
    }
}

/// One background thread that writes the snapshots a host hands it, in order, paced
/// by a [`Pacer`]; of several states of one partition queued meanwhile only the
/// newest is written. What was written is read back with [`SnapshotWriter::done`].
pub struct SnapshotWriter {
    tx: Option<std::sync::mpsc::Sender<State>>,
    done: std::sync::mpsc::Receiver<(u32, u64)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter").finish_non_exhaustive()
    }
}

impl SnapshotWriter {
    pub fn start(
        store: Arc<dyn SnapshotStore>,
        keep: usize,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<SnapshotWriter> {
        let (tx, rx) = std::sync::mpsc::channel::<State>();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let mut pacer = Pacer::default();
                while let Ok(first) = rx.recv() {
                    if let Some(d) = pacer.wait_needed() {
                        std::thread::sleep(d);
                    }
                    // The newest state per partition among those queued.
                    let mut newest: std::collections::BTreeMap<u32, State> = Default::default();
                    for s in std::iter::once(first).chain(rx.try_iter()) {
                        let p = u32::from(s.partition());
                        let older = newest
                            .get(&p)
                            .is_some_and(|n| n.next_offset() >= s.next_offset());
                        if !older {
                            newest.insert(p, s);
                        }
                    }
                    for (p, s) in newest {
                        pacer.write(&s, store.as_ref(), keep, &metrics);
                        let _ = done_tx.send((p, s.next_offset()));
                    }
                }
            })?;
        Ok(SnapshotWriter {
            tx: Some(tx),
            done,
            thread: Some(thread),
        })
    }

    /// Queues `state` to be written.
    pub fn write(&self, state: State) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(state);
        }
    }

    /// (partition, offset) of the snapshots written (or given up) since the last call.
    pub fn done(&self) -> Vec<(u32, u64)> {
        self.done.try_iter().collect()
    }

    /// Writes what is queued, then returns (blocking).
    pub fn finish(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
