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

use crate::store::{write_snapshot, SnapshotStore};
use flashsale_core::actor::PartitionActor;
use flashsale_core::LogRecord;
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
    let mut not_before: Option<Instant> = None;
    while let Some(batch) = rx.blocking_recv() {
        copy.apply_batch_quietly(&batch);
        drop(batch);
        // Apply whatever else is queued first: the snapshot then covers more.
        while let Ok(batch) = rx.try_recv() {
            copy.apply_batch_quietly(&batch);
        }
        if not_before.is_some_and(|t| Instant::now() < t) || !copy.snapshot_due() {
            continue;
        }
        let t = Instant::now();
        write_snapshot(copy.state(), store.as_ref(), keep, &metrics);
        let took = t.elapsed();
        not_before = Some(Instant::now() + took.mul_f64(1.0 / MAX_SHARE - 1.0));
    }
    if copy.dirty() {
        copy.mark_snapshot_taken();
        write_snapshot(copy.state(), store.as_ref(), keep, &metrics);
    }
}
