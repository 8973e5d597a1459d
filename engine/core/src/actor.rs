//! The synchronous part of a partition actor, shared by the embedded and Kafka shells:
//! decode each record, skip what was already applied, apply in log order, collect the
//! replies and events to send, and say when a snapshot is due.

use crate::record::LogRecord;
use crate::State;
use flashsale_proto::*;

/// When to snapshot: after `every_commands` records or `every_ms` of log time,
/// whichever comes first (only if something was applied since the last one); and what
/// a snapshot keeps: ended reservations and idempotency keys for `retention_ms`.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotPolicy {
    pub every_commands: u64,
    pub every_ms: u64,
    /// The state's retention (log time) of expired/cancelled reservations and
    /// idempotency keys, set on the state the actor starts from. `None` keeps the
    /// state's own (a snapshot's, or the default of a new state): what operators'
    /// replays use, so they rebuild exactly what the engine had.
    pub retention_ms: Option<u64>,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_commands: 50_000,
            every_ms: 30_000,
            retention_ms: None,
        }
    }
}

/// What one batch produced: replies for waiting gateways and events for everyone.
#[derive(Debug, Default)]
pub struct Applied {
    /// (reply_to gateway, reply)
    pub replies: Vec<(u32, ReplyRecord)>,
    pub events: Vec<EventRecord>,
    /// Records in the batch at offsets already applied (re-deliveries), ignored.
    pub skipped: u64,
    /// Records whose payload did not decode (applied as ticks, no reply).
    pub undecodable: u64,
}

/// `Clone` copies the state and the snapshot counters: the engine's background
/// snapshotter starts from such a copy.
#[derive(Debug, Clone)]
pub struct PartitionActor {
    state: State,
    policy: SnapshotPolicy,
    applied_since_snapshot: u64,
    last_snapshot_time: UnixMs,
    events_buf: Vec<Event>,
}

impl PartitionActor {
    pub fn new(mut state: State, policy: SnapshotPolicy) -> Self {
        if let Some(ms) = policy.retention_ms {
            state.set_retention_ms(ms);
        }
        let last_snapshot_time = state.clock();
        PartitionActor {
            state,
            policy,
            applied_since_snapshot: 0,
            last_snapshot_time,
            events_buf: Vec::new(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }
    pub fn partition(&self) -> u32 {
        u32::from(self.state.partition())
    }

    /// Applies one record (if not already applied) and appends its outputs to `out`.
    pub fn apply_record(&mut self, rec: &LogRecord, out: &mut Applied) {
        if rec.offset < self.state.next_offset() {
            out.skipped += 1;
            return;
        }
        let decoded: Result<CommandRecord, _> = decode(&rec.payload);
        let record = match decoded {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(partition = self.partition(), offset = rec.offset, error = %e, "undecodable command record; applied as a tick");
                out.undecodable += 1;
                CommandRecord::tick()
            }
        };
        self.events_buf.clear();
        let reply = self
            .state
            .apply(rec.offset, rec.log_time, &record, &mut self.events_buf);
        self.applied_since_snapshot += 1;
        if record.reply_to != NO_REPLY && !matches!(record.command, Command::Tick) {
            out.replies.push((
                record.reply_to,
                ReplyRecord {
                    request_id: record.request_id,
                    partition: self.partition(),
                    offset: rec.offset,
                    reply,
                },
            ));
        }
        if !self.events_buf.is_empty() {
            out.events.push(EventRecord {
                partition: self.partition(),
                offset: rec.offset,
                log_time: self.state.clock(),
                events: std::mem::take(&mut self.events_buf),
            });
        }
    }

    pub fn apply_batch(&mut self, records: &[LogRecord]) -> Applied {
        let mut out = Applied::default();
        for r in records {
            self.apply_record(r, &mut out);
        }
        out
    }

    /// A copy of the state to write, if a snapshot is due; resets the counters.
    pub fn take_snapshot_if_due(&mut self) -> Option<State> {
        if self.applied_since_snapshot == 0 {
            return None;
        }
        let by_count = self.applied_since_snapshot >= self.policy.every_commands;
        let by_time =
            self.state.clock().saturating_sub(self.last_snapshot_time) >= self.policy.every_ms;
        if !(by_count || by_time) {
            return None;
        }
        Some(self.snapshot_now())
    }

    /// Applies records like [`Self::apply_batch`] but keeps no replies or events: what
    /// a copy of the state that only writes snapshots needs (the engine's background
    /// snapshotter follows the same log, so its state is the same pure function of it).
    pub fn apply_batch_quietly(&mut self, records: &[LogRecord]) {
        for rec in records {
            if rec.offset < self.state.next_offset() {
                continue;
            }
            let record: CommandRecord =
                decode(&rec.payload).unwrap_or_else(|_| CommandRecord::tick());
            self.events_buf.clear();
            let _ = self
                .state
                .apply(rec.offset, rec.log_time, &record, &mut self.events_buf);
            self.applied_since_snapshot += 1;
        }
    }

    /// True (and the counters reset) when the policy says a snapshot is due: the
    /// caller then writes [`Self::state`] as it is, without a copy.
    pub fn snapshot_due(&mut self) -> bool {
        if self.applied_since_snapshot == 0 {
            return false;
        }
        let by_count = self.applied_since_snapshot >= self.policy.every_commands;
        let by_time =
            self.state.clock().saturating_sub(self.last_snapshot_time) >= self.policy.every_ms;
        if !(by_count || by_time) {
            return false;
        }
        self.mark_snapshot_taken();
        true
    }

    /// Resets the counters as if a snapshot of the state as it is had been taken.
    pub fn mark_snapshot_taken(&mut self) {
        self.applied_since_snapshot = 0;
        self.last_snapshot_time = self.state.clock();
    }

    /// True when records were applied since the last snapshot.
    pub fn dirty(&self) -> bool {
        self.applied_since_snapshot > 0
    }

    /// A copy of the state now (on shutdown or revoke).
    pub fn snapshot_now(&mut self) -> State {
        self.applied_since_snapshot = 0;
        self.last_snapshot_time = self.state.clock();
        self.state.clone()
    }
}
