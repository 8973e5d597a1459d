//! Taking snapshots while the follower runs: the background [`Writer`] (copies the read
//! model, encodes, stores, prunes; one at a time, never blocking the follower) and the
//! follower's [`Trigger`] (counts applied events and offers marks per the policy).

use super::{covered, encode, ImageStore, Policy, KEEP};
use crate::readmodel::{Mark, ReadModel};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

/// The background writer: takes the follower's marks, copies the read model, encodes,
/// stores, prunes. One snapshot at a time; [`Writer::offer`] never blocks.
pub struct Writer {
    tx: SyncSender<Vec<Mark>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish()
    }
}

impl Writer {
    /// Starts the thread; it ends when the writer is dropped (after the snapshot in
    /// hand, if any).
    pub fn start(read: Arc<ReadModel>, store: Arc<dyn ImageStore>) -> std::io::Result<Writer> {
        let (tx, rx) = sync_channel::<Vec<Mark>>(0);
        std::thread::Builder::new()
            .name("readmodel-snapshots".into())
            .spawn(move || {
                while let Ok(marks) = rx.recv() {
                    write_one(&read, store.as_ref(), marks);
                }
            })?;
        Ok(Writer { tx })
    }

    /// Hands `marks` to the thread if it is idle; false if it is still busy with the
    /// previous snapshot (this one is skipped).
    pub fn offer(&self, marks: Vec<Mark>) -> bool {
        match self.tx.try_send(marks) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

fn write_one(read: &ReadModel, store: &dyn ImageStore, marks: Vec<Mark>) {
    let t = Instant::now();
    let covered = covered(&marks);
    let image = read.image(marks);
    let reservations = image.reservations.len();
    let result = encode(&image).and_then(|bytes| {
        store.save(covered, flashsale_runtime::now_ms(), &bytes)?;
        Ok(bytes.len())
    });
    match result {
        Ok(bytes) => {
            tracing::info!(
                covered,
                bytes,
                reservations,
                elapsed_ms = t.elapsed().as_millis() as u64,
                store = %store.describe(),
                "read-model snapshot written"
            );
            if let Err(error) = store.prune(KEEP) {
                tracing::warn!(%error, "could not prune old read-model snapshots");
            }
        }
        Err(error) => {
            tracing::warn!(covered, %error, store = %store.describe(), "read-model snapshot not written (the next one tries again; a start replays more meanwhile)")
        }
    }
}

/// The follower's side: counts applied events and, per the policy, offers the marks
/// to the writer.
#[derive(Debug)]
pub struct Trigger {
    writer: Writer,
    policy: Policy,
    since: u64,
    last: Instant,
}

impl Trigger {
    pub fn new(writer: Writer, policy: Policy) -> Self {
        Trigger {
            writer,
            policy,
            since: 0,
            last: Instant::now(),
        }
    }

    /// One event record applied.
    pub fn applied(&mut self) {
        self.since += 1;
    }

    /// True when a snapshot is due: `every_events` applied, or `every` passed with at
    /// least one applied. `caught_up_now`: the start-up replay just ended; a snapshot
    /// is then due if that replay was at least `every_events` long.
    pub fn due(&self, caught_up_now: bool) -> bool {
        if self.since == 0 || self.policy.never() {
            return false;
        }
        let by_count = self.policy.every_events > 0 && self.since >= self.policy.every_events;
        let by_time = !caught_up_now
            && !self.policy.every.is_zero()
            && self.last.elapsed() >= self.policy.every;
        by_count || by_time
    }

    /// Offers `marks`; restarts the counts if the writer took them.
    pub fn offer(&mut self, marks: Vec<Mark>) {
        if self.writer.offer(marks) {
            self.since = 0;
            self.last = Instant::now();
        }
    }
}
