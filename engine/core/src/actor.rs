//! The synchronous part of a partition actor, shared by the embedded and Kafka shells:
//! decode each record, skip what was already applied, apply in log order, collect the
//! replies and events to send, and say when a snapshot is due.

use crate::record::LogRecord;
use crate::State;
use flashsale_proto::*;

/// When to snapshot: after `every_commands` records or `every_ms` of log time,
/// whichever comes first, once the log has grown enough since the last one (below);
/// and what a snapshot keeps: ended reservations and idempotency keys for
/// `retention_ms`.
///
/// Growth (issue 29): a snapshot rewrites the whole state, so one every 30 s of a big
/// partition wrote more than the log it saved replaying (897 MB of snapshots for
/// 368 MB of log). A snapshot is only due once the log bytes applied since the last
/// one reach [`SNAPSHOT_LOG_SHARE`] of the state's estimated snapshot size
/// ([`State::approx_snapshot_bytes`]): snapshot bytes written stay below
/// 1 / [`SNAPSHOT_LOG_SHARE`] (1.5×) the log bytes written, whatever the cadence
/// flags, and the log replayed at recovery stays below two thirds of a snapshot.
/// [`MAX_SNAPSHOT_INTERVAL_MS`] of log time since the last one makes a snapshot due
/// whatever the growth (the log's own retention must never pass the newest snapshot).
/// A state estimated at most [`SMALL_SNAPSHOT_BYTES`] keeps the plain cadence.
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

/// Log bytes applied since the last snapshot, as a share of the state's estimated
/// snapshot size, before the next snapshot is due ([`SnapshotPolicy`]).
pub const SNAPSHOT_LOG_SHARE: f64 = 2.0 / 3.0;
/// A state whose snapshot is estimated at most this big is snapshotted on the count
/// and time cadence alone (at most 1 MiB per cadence period: cheap whatever the log).
pub const SMALL_SNAPSHOT_BYTES: u64 = 1 << 20;
/// A snapshot is due after this much log time whatever the log's growth (an hour; far
/// inside the command log's retention of days).
pub const MAX_SNAPSHOT_INTERVAL_MS: u64 = 3_600_000;
/// What a record costs in the log beyond its payload (offset, time, length, CRC),
/// about: the growth rule counts it.
pub const RECORD_OVERHEAD_BYTES: u64 = 24;

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
    /// Log bytes (payload + [`RECORD_OVERHEAD_BYTES`]) applied since the last snapshot.
    log_bytes_since_snapshot: u64,
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
            log_bytes_since_snapshot: 0,
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
    ///
    /// A record holds one command ([`FORMAT_VERSION`]) or a batch of them
    /// ([`BATCH_FORMAT_VERSION`], what a gateway sends for the commands of one partition
    /// that arrive together): a batch's commands are applied in their order inside the
    /// record, all at the record's offset and log time, as if they were consecutive
    /// records. A command's position in the log is (offset, index in its record); what
    /// identifies it is its request id, as for single records. Its reply carries the
    /// record's offset, and the events of the whole record are ONE [`EventRecord`] at
    /// that offset, so readers that drop outputs by (partition, offset) keep working. A
    /// record is applied whole or not at all (a snapshot never splits one). An empty or
    /// undecodable record is applied as a tick.
    pub fn apply_record(&mut self, rec: &LogRecord, out: &mut Applied) {
        if rec.offset < self.state.next_offset() {
            out.skipped += 1;
            return;
        }
        let commands = self.decode_record(rec, Some(&mut out.undecodable));
        self.events_buf.clear();
        for (i, record) in commands.iter().enumerate() {
            let reply = self.apply_one(rec, i, record);
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
        }
        self.count_applied(rec, commands.len());
        if !self.events_buf.is_empty() {
            out.events.push(EventRecord {
                partition: self.partition(),
                offset: rec.offset,
                log_time: self.state.clock(),
                events: std::mem::take(&mut self.events_buf),
            });
        }
    }

    /// The commands of `rec`: one, a batch, or a tick when it does not decode (counted
    /// in `undecodable`) or is an empty batch.
    fn decode_record(&self, rec: &LogRecord, undecodable: Option<&mut u64>) -> Vec<CommandRecord> {
        let mut commands: Vec<CommandRecord> = Vec::with_capacity(1);
        if let Err(e) = decode_many(&rec.payload, &mut commands) {
            if let Some(n) = undecodable {
                tracing::warn!(partition = self.partition(), offset = rec.offset, error = %e, "undecodable command record; applied as a tick");
                *n += 1;
            }
            commands.clear();
        }
        if commands.is_empty() {
            commands.push(CommandRecord::tick());
        }
        commands
    }

    /// Applies command `index` of record `rec`, appending its events to `events_buf`.
    fn apply_one(&mut self, rec: &LogRecord, index: usize, record: &CommandRecord) -> Reply {
        if index > 0 {
            // The record's next command, at the same offset: the state took the
            // record's offset as applied with its first command.
            debug_assert_eq!(self.state.next_offset, rec.offset + 1);
            self.state.next_offset = rec.offset;
        }
        self.state
            .apply(rec.offset, rec.log_time, record, &mut self.events_buf)
    }

    fn count_applied(&mut self, rec: &LogRecord, commands: usize) {
        self.applied_since_snapshot += commands as u64;
        self.log_bytes_since_snapshot += rec.payload.len() as u64 + RECORD_OVERHEAD_BYTES;
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
        if !self.is_due() {
            return None;
        }
        Some(self.snapshot_now())
    }

    /// The policy's rule ([`SnapshotPolicy`]): something applied; the count or time
    /// cadence reached; and the log grown by [`SNAPSHOT_LOG_SHARE`] of a snapshot, or
    /// [`MAX_SNAPSHOT_INTERVAL_MS`] passed.
    pub fn is_due(&self) -> bool {
        if self.applied_since_snapshot == 0 {
            return false;
        }
        let since = self.state.clock().saturating_sub(self.last_snapshot_time);
        let by_count = self.applied_since_snapshot >= self.policy.every_commands;
        let by_time = since >= self.policy.every_ms;
        let size = self.state.approx_snapshot_bytes();
        let grown = size <= SMALL_SNAPSHOT_BYTES
            || self.log_bytes_since_snapshot as f64 >= size as f64 * SNAPSHOT_LOG_SHARE;
        ((by_count || by_time) && grown) || since >= MAX_SNAPSHOT_INTERVAL_MS
    }

    /// Log bytes applied since the last snapshot.
    pub fn log_bytes_since_snapshot(&self) -> u64 {
        self.log_bytes_since_snapshot
    }

    /// Applies records like [`Self::apply_batch`] but keeps no replies or events: what
    /// a copy of the state that only writes snapshots needs (the engine's background
    /// snapshotter follows the same log, so its state is the same pure function of it).
    pub fn apply_batch_quietly(&mut self, records: &[LogRecord]) {
        for rec in records {
            if rec.offset < self.state.next_offset() {
                continue;
            }
            let commands = self.decode_record(rec, None);
            self.events_buf.clear();
            for (i, record) in commands.iter().enumerate() {
                let _ = self.apply_one(rec, i, record);
            }
            self.count_applied(rec, commands.len());
        }
    }

    /// True (and the counters reset) when the policy says a snapshot is due: the
    /// caller then writes [`Self::state`] as it is, without a copy.
    pub fn snapshot_due(&mut self) -> bool {
        if !self.is_due() {
            return false;
        }
        self.mark_snapshot_taken();
        true
    }

    /// Resets the counters as if a snapshot of the state as it is had been taken.
    pub fn mark_snapshot_taken(&mut self) {
        self.applied_since_snapshot = 0;
        self.log_bytes_since_snapshot = 0;
        self.last_snapshot_time = self.state.clock();
    }

    /// True when records were applied since the last snapshot.
    pub fn dirty(&self) -> bool {
        self.applied_since_snapshot > 0
    }

    /// A copy of the state now (on shutdown or revoke).
    pub fn snapshot_now(&mut self) -> State {
        self.applied_since_snapshot = 0;
        self.log_bytes_since_snapshot = 0;
        self.last_snapshot_time = self.state.clock();
        self.state.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: u64, request: u128, command: Command) -> LogRecord {
        LogRecord {
            offset,
            log_time: 1_000 + offset,
            payload: encode(&CommandRecord {
                request_id: RequestId(request),
                reply_to: NO_REPLY,
                idempotency_key: None,
                command,
            }),
        }
    }

    /// A big state is snapshotted only once the log grew by two thirds of its
    /// estimated snapshot, however often the count cadence says so.
    #[test]
    fn a_big_state_waits_for_the_log_to_grow() {
        let sku = SkuId::parse("SKU-1").unwrap();
        let policy = SnapshotPolicy {
            every_commands: 1,
            every_ms: u64::MAX,
            retention_ms: None,
        };
        let mut a = PartitionActor::new(State::new(0), policy);
        let cfg = Command::ConfigureSale(SaleConfig {
            sale: SaleMeta {
                sale_id: SaleId(1),
                name: "s".into(),
                starts_at: 0,
                ends_at: u64::MAX / 2,
                reservation_ttl_s: 3600,
                all_skus: vec![sku.clone()],
            },
            products: vec![ProductSpec {
                sku: sku.clone(),
                name: "p".into(),
                description: String::new(),
                category: String::new(),
                base_price: Cents(2),
                flash_sale_price: Cents(1),
                total_inventory: 1_000_000,
                per_user_limit: 1,
                image_url: String::new(),
            }],
        });
        let mut offset = 0;
        let mut next = |a: &mut PartitionActor, cmd| {
            a.apply_batch(&[rec(offset, 100 + u128::from(offset), cmd)]);
            offset += 1;
        };
        next(&mut a, cfg);
        assert!(a.snapshot_due(), "a small state keeps the count cadence");
        for i in 0..20_000 {
            let user = UserId::parse(&format!("u{i}")).unwrap();
            next(
                &mut a,
                Command::Reserve {
                    user,
                    sku: sku.clone(),
                    quantity: 1,
                },
            );
        }
        let size = a.state().approx_snapshot_bytes();
        assert!(size > SMALL_SNAPSHOT_BYTES);
        a.mark_snapshot_taken();
        next(&mut a, Command::Tick);
        assert!(!a.is_due(), "count reached, log not grown: not due");
        let mut ticks = 1u64;
        while !a.is_due() {
            next(&mut a, Command::Tick);
            ticks += 1;
            assert!(ticks < 1_000_000);
        }
        assert!(
            a.log_bytes_since_snapshot() as f64 >= size as f64 * SNAPSHOT_LOG_SHARE,
            "due once the log grew by two thirds of the snapshot"
        );
        assert!(a.snapshot_due());
        assert_eq!(a.log_bytes_since_snapshot(), 0);
    }
}
