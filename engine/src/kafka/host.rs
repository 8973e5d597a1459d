//! The broker-free core of the Kafka host: a state machine that takes [`Event`]s
//! (partitions assigned, claimed, revoked or lost; a batch of command records; a
//! standby batch; a produce acknowledged or failed; a snapshot stored or failed; a
//! tick of the wall clock; a topic id observed) and returns [`Action`]s (seek, claim,
//! produce, produce a tick, commit, snapshot, follow as a standby copy, retake, give
//! up, report not ready, fail). No rdkafka, tokio, clock or thread inside: the time
//! is what [`Event::Tick`] says, so a seeded simulation can drive it
//! (`engine/src/kafka/sim.rs`) exactly as the rdkafka shell (`engine/src/kafka/shell.rs`)
//! does.
//!
//! Per partition the host holds one of:
//! - **owned** ([`Owned`]): the [`PartitionActor`] of a partition assigned to this
//!   engine. `Claiming` until the broker acknowledged this engine's claim record
//!   ([`Event::Claimed`]): its offset is the owner epoch; nothing is applied or
//!   produced before. Then `Serving`: batches are applied in log order, outputs of
//!   records at or past `emit_from` (the group's committed offset at assignment) are
//!   produced with the epoch, and a batch's end offset is committed once all of its
//!   outputs are acknowledged, in production order.
//! - **standby** ([`Standby`]): a copy that follows the partition and produces nothing,
//!   keeping the outputs of its last `standby_window` records (a takeover re-produces
//!   them from the committed offset on).
//!
//! Rules (each has a unit test below, and the simulation checks their sum):
//! - *Fence*: a claim record above this engine's epoch, read in its own partition,
//!   ends ownership at once (the copy becomes a standby copy, nothing more is
//!   produced); if the group still assigns the partition [`FENCE_GRACE_SESSIONS`]
//!   sessions later, the host asks to take it again ([`Action::Retake`]).
//! - *Commit*: only offsets whose outputs (and those of every earlier batch) were
//!   acknowledged; never for a partition no longer owned; at most every
//!   `commit_every_ms`, and synchronously when partitions are let go (not when the
//!   assignment was lost: the coordinator would refuse it).
//! - *Produce failed*: a failure the broker makes final stops the engine
//!   ([`Action::Fail`]): what it produced after would leave a hole for readers.
//! - *Snapshots*: one at a time per partition; when the actor's policy says so, when
//!   a partition has been quiet (wall time) for the policy's interval, and when a
//!   partition is let go.
//! - *Ticks*: while holds are due, at most one tick record per partition in flight and
//!   one per `min_tick_gap_ms`.
//! - *Topic identity*: the first id seen of each topic is the one the state belongs to;
//!   another one (the topic was deleted and created again) lets every partition go
//!   without committing, reports not ready with the reason, and either asks the
//!   shell to start again on the new log ([`Action::Restart`], with
//!   `adopt_new_topics`) or waits for the operator.

use crate::trace;
use flashsale_core::actor::{Applied, PartitionActor, SnapshotPolicy};
use flashsale_core::{LogRecord, State};
use flashsale_proto::{EventRecord, UnixMs};
use flashsale_runtime::telemetry::TraceParent;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A partition fenced off but still assigned this many sessions later is taken again.
pub const FENCE_GRACE_SESSIONS: u64 = 3;

/// Identifies the outputs of one applied batch (the shell counts their acks).
pub type BatchId = u64;

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub snapshot: SnapshotPolicy,
    /// Outputs of at most this many records are kept per standby copy.
    pub standby_window: usize,
    pub session_timeout_ms: u64,
    pub commit_every_ms: u64,
    pub min_tick_gap_ms: u64,
    /// On a recreated topic: start again on the new log instead of waiting.
    pub adopt_new_topics: bool,
}

/// What happened, as the shell (or the simulation) saw it.
#[derive(Debug)]
pub enum Event {
    /// A standby copy to start from (engine start): the newest snapshot, or a new state.
    StandbyStarted {
        partition: u32,
        state: State,
    },
    /// The group assigned `partition`: its committed offset, its log's start and end,
    /// and the newest usable snapshot at or below `committed` the shell loaded (asked
    /// for by [`Host::snapshot_wanted`]); `store_down`: the store could not be read.
    Assigned {
        partition: u32,
        committed: u64,
        low: u64,
        high: u64,
        snapshot: Option<State>,
    },
    /// The broker acknowledged this engine's claim record of `partition` at `epoch`.
    Claimed {
        partition: u32,
        epoch: u64,
    },
    /// The group took partitions away; `lost`: the session was lost meanwhile (a
    /// pause, an outage), so commits would be refused.
    Revoked {
        partitions: Vec<u32>,
        lost: bool,
    },
    /// Command records fetched for an assigned partition, in log order: the offsets of
    /// the claim records among them, and (index, context) of the traced ones.
    Records {
        partition: u32,
        records: Vec<LogRecord>,
        claims: Vec<u64>,
        traces: Vec<(usize, TraceParent)>,
    },
    /// Command records fetched by the standby consumer.
    StandbyRecords {
        partition: u32,
        records: Vec<LogRecord>,
    },
    /// Every output of `batch` was acknowledged.
    Acked {
        batch: BatchId,
    },
    /// The broker refused an output for good.
    ProduceFailed {
        batch: BatchId,
        error: String,
    },
    /// The tick record of `partition` was acknowledged (or refused: another follows).
    TickDone {
        partition: u32,
    },
    SnapshotStored {
        partition: u32,
        offset: u64,
    },
    SnapshotFailed {
        partition: u32,
        error: String,
    },
    /// The wall clock, now.
    Tick {
        now: UnixMs,
    },
    /// The id Kafka gives `topic` now.
    TopicId {
        topic: String,
        id: String,
    },
}

/// What the shell must do, in this order.
#[derive(Debug)]
pub enum Action {
    /// Consume `partition` of the group from `offset` on.
    Seek { partition: u32, offset: u64 },
    /// Append a claim record to `partition`; answer with [`Event::Claimed`].
    Claim { partition: u32 },
    /// Produce one applied batch's events and replies with the owner epoch; answer
    /// with [`Event::Acked`] or [`Event::ProduceFailed`].
    Produce {
        batch: BatchId,
        partition: u32,
        epoch: u64,
        applied: Applied,
    },
    /// Append a tick record to `partition`; answer with [`Event::TickDone`].
    ProduceTick { partition: u32 },
    /// Commit these next offsets of the group.
    Commit {
        offsets: Vec<(u32, u64)>,
        sync: bool,
    },
    /// Write this state as a snapshot (in the background); answer with
    /// [`Event::SnapshotStored`] or [`Event::SnapshotFailed`].
    Snapshot { partition: u32, state: State },
    /// Follow `partition` from `from` with the standby consumer.
    Follow { partition: u32, from: u64 },
    /// Stop following `partition` (it is owned now).
    Unfollow { partition: u32 },
    /// If the group still assigns `partition` to this engine, assign it again.
    Retake { partition: u32 },
    /// `/ready` turns 503 with this reason (or 200 again with `None`).
    NotReady { reason: Option<String> },
    /// Stop consuming and start again on the new topics (a recreated topic adopted).
    Restart { reason: String },
    /// Stop the engine with this error: continuing would be wrong.
    Fail { reason: String },
}

#[derive(Debug)]
pub struct Owned {
    pub actor: PartitionActor,
    /// Outputs of records below this offset were acknowledged before (by this or
    /// another engine): not produced again.
    pub emit_from: u64,
    /// The partition's end at assignment while replaying towards it.
    pub catch_up_to: Option<u64>,
    /// The owner epoch; `None` while the claim awaits the broker.
    pub epoch: Option<u64>,
    /// Outputs of records below this offset were acknowledged (or were not this
    /// engine's to produce): what a standby copy made of this actor may count as
    /// produced. Outputs produced but not acknowledged may reach readers after a
    /// successor's, under an epoch they then drop: they do not count.
    acked_to: u64,
    /// Outputs to produce again once claimed (a standby copy's kept outputs).
    reemit: VecDeque<RingBatch>,
    /// Where the actor started at assignment: "snapshot", "standby" or "log start".
    pub from: &'static str,
    /// The partition's end at assignment (before this engine's claim).
    start: u64,
    /// True once the actor applied its own claim and found no other claim between
    /// `start` and it; until then outputs are held (`held`: offset after the batch,
    /// its outputs): another claim there was appended after this assignment began, so
    /// this engine is a late claimer (a pause while its claim was on its way; the
    /// group gave the partition to another engine meanwhile) and must produce
    /// nothing, or readers would take its higher epoch and drop the successor's.
    verified: bool,
    held: Vec<(u64, Applied)>,
    needs_tick_at: UnixMs,
    last_tick: UnixMs,
    last_snapshot_offset: u64,
}

/// A warm copy of a partition this engine does not own.
#[derive(Debug)]
pub struct Standby {
    pub actor: PartitionActor,
    /// Outputs of records from this offset on are known: in `ring`, or (below the
    /// ring) handed to this engine's producer while it owned the partition.
    pub covered_from: u64,
    ring: VecDeque<RingBatch>,
    ring_records: u64,
}

#[derive(Debug)]
struct RingBatch {
    start: u64,
    end: u64,
    clock: UnixMs,
    applied: Applied,
}

#[derive(Debug)]
struct InFlight {
    batch: BatchId,
    partition: u32,
    next_offset: u64,
}

/// The Kafka host's state machine. See the module doc.
#[derive(Debug)]
pub struct Host {
    cfg: HostConfig,
    owned: BTreeMap<u32, Owned>,
    standby: BTreeMap<u32, Standby>,
    /// Partitions fenced off while still assigned: when (host time).
    fenced: BTreeMap<u32, UnixMs>,
    inflight: VecDeque<InFlight>,
    acked: BTreeSet<BatchId>,
    to_commit: BTreeMap<u32, u64>,
    last_commit: UnixMs,
    next_batch: BatchId,
    ticks_in_flight: BTreeSet<u32>,
    /// Partitions whose snapshot is being written.
    writing: BTreeSet<u32>,
    topic_ids: BTreeMap<String, String>,
    not_ready: Option<String>,
    failed: bool,
    now: UnixMs,
}

impl Host {
    pub fn new(cfg: HostConfig) -> Self {
        Host {
            cfg,
            owned: BTreeMap::new(),
            standby: BTreeMap::new(),
            fenced: BTreeMap::new(),
            inflight: VecDeque::new(),
            acked: BTreeSet::new(),
            to_commit: BTreeMap::new(),
            last_commit: 0,
            next_batch: 1,
            ticks_in_flight: BTreeSet::new(),
            writing: BTreeSet::new(),
            topic_ids: BTreeMap::new(),
            not_ready: None,
            failed: false,
            now: 0,
        }
    }

    /// Partitions owned (claimed or claiming).
    pub fn owned(&self) -> impl Iterator<Item = (u32, &Owned)> {
        self.owned.iter().map(|(p, o)| (*p, o))
    }
    pub fn owns(&self, p: u32) -> bool {
        self.owned.contains_key(&p)
    }
    /// Owned partitions still replaying towards their end at assignment.
    pub fn catching_up(&self) -> usize {
        self.owned
            .values()
            .filter(|o| o.catch_up_to.is_some() || o.epoch.is_none())
            .count()
    }
    pub fn standby(&self, p: u32) -> Option<&Standby> {
        self.standby.get(&p)
    }
    /// Why `/ready` is 503 (a recreated topic), if it is for that.
    pub fn not_ready(&self) -> Option<&str> {
        self.not_ready.as_deref()
    }
    pub fn has_failed(&self) -> bool {
        self.failed
    }
    /// Batches produced and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Before [`Event::Assigned`]: `None` if the standby copy of `p` is enough to take
    /// it over at the committed offset `c` (no snapshot to load); else `Some(above)`:
    /// a snapshot is worth loading only if it covers more than offset `above`.
    pub fn snapshot_wanted(&self, p: u32, c: u64, low: u64) -> Option<u64> {
        match self.usable_standby(p, c, low) {
            Some(s) if s.actor.state().next_offset() >= c => None,
            Some(s) => Some(s.actor.state().next_offset()),
            None => Some(0),
        }
    }

    fn usable_standby(&self, p: u32, c: u64, low: u64) -> Option<&Standby> {
        self.standby.get(&p).filter(|s| {
            let next = s.actor.state().next_offset();
            (s.covered_from <= c || next <= c) && next >= low
        })
    }

    /// Handles one event; the actions are appended to `out`, in the order to do them.
    pub fn handle(&mut self, event: Event, out: &mut Vec<Action>) {
        if self.failed {
            return;
        }
        match event {
            Event::StandbyStarted { partition, state } => {
                if !self.owned.contains_key(&partition) {
                    let next = state.next_offset();
                    let actor = PartitionActor::new(state, self.cfg.snapshot);
                    self.standby.insert(partition, Standby::new(actor, next));
                    out.push(Action::Follow {
                        partition,
                        from: next,
                    });
                }
            }
            Event::Assigned {
                partition,
                committed,
                low,
                high,
                snapshot,
            } => self.assigned(partition, committed, low, high, snapshot, out),
            Event::Claimed { partition, epoch } => self.claimed(partition, epoch),
            Event::Revoked { partitions, lost } => self.revoke(&partitions, lost, out),
            Event::Records {
                partition,
                records,
                claims,
                traces,
            } => self.records(partition, &records, &claims, &traces, out),
            Event::StandbyRecords { partition, records } => self.apply_standby(partition, &records),
            Event::Acked { batch } => {
                // Batches of partitions let go meanwhile are not tracked any more.
                if self.inflight.iter().any(|f| f.batch == batch) {
                    self.acked.insert(batch);
                }
                while let Some(f) = self.inflight.front() {
                    if !self.acked.remove(&f.batch) {
                        break;
                    }
                    let f = self.inflight.pop_front().expect("front exists");
                    self.to_commit.insert(f.partition, f.next_offset);
                    if let Some(o) = self.owned.get_mut(&f.partition) {
                        o.acked_to = o.acked_to.max(f.next_offset);
                    }
                }
            }
            Event::ProduceFailed { batch, error } => {
                self.failed = true;
                out.push(Action::Fail {
                    reason: format!(
                        "the broker refused an output record for good (batch {batch}): {error}"
                    ),
                });
            }
            Event::TickDone { partition } => {
                self.ticks_in_flight.remove(&partition);
            }
            Event::SnapshotStored { partition, .. } => {
                self.writing.remove(&partition);
            }
            Event::SnapshotFailed { partition, error } => {
                self.writing.remove(&partition);
                tracing::debug!(partition, %error, "snapshot not stored; the next one tries again");
            }
            Event::Tick { now } => self.tick(now, out),
            Event::TopicId { topic, id } => self.topic_id(topic, id, out),
        }
    }

    fn assigned(
        &mut self,
        p: u32,
        c: u64,
        low: u64,
        high: u64,
        snapshot: Option<State>,
        out: &mut Vec<Action>,
    ) {
        self.fenced.remove(&p);
        if self.owned.contains_key(&p) {
            return; // assigned twice (a retake of a partition never let go)
        }
        let usable = self.usable_standby(p, c, low).is_some();
        let kept = self.standby.remove(&p);
        if kept.is_some() {
            out.push(Action::Unfollow { partition: p });
        }
        let kept = kept.filter(|_| usable);
        let kept_next = kept.as_ref().map(|s| s.actor.state().next_offset());
        let snapshot = snapshot.filter(|s| {
            u32::from(s.partition()) == p
                && s.next_offset() <= c
                && kept_next.is_none_or(|k| s.next_offset() > k)
        });
        let (actor, ring, from) = match (snapshot, kept) {
            (Some(s), _) => (
                PartitionActor::new(s, self.cfg.snapshot),
                VecDeque::new(),
                "snapshot",
            ),
            (None, Some(s)) => (s.actor, s.ring, "standby"),
            (None, None) => (
                PartitionActor::new(State::new(p as u16), self.cfg.snapshot),
                VecDeque::new(),
                "log start",
            ),
        };
        let next = actor.state().next_offset();
        if next < low {
            self.failed = true;
            out.push(Action::Fail {
                reason: format!("partition {p}: the log starts at offset {low} (older records deleted by retention) but the newest usable snapshot covers only up to {next}; restore a snapshot or raise the retention of the commands topic"),
            });
            return;
        }
        let needs_tick_at = actor.state().next_expiry().unwrap_or(u64::MAX);
        self.owned.insert(
            p,
            Owned {
                actor,
                emit_from: c,
                catch_up_to: (high > next).then_some(high),
                epoch: None,
                acked_to: c,
                reemit: ring,
                start: high,
                from,
                verified: false,
                held: Vec::new(),
                needs_tick_at,
                last_tick: 0,
                last_snapshot_offset: next,
            },
        );
        out.push(Action::Seek {
            partition: p,
            offset: next,
        });
        out.push(Action::Claim { partition: p });
    }

    fn claimed(&mut self, p: u32, epoch: u64) {
        let Some(o) = self.owned.get_mut(&p) else {
            return; // let go while the claim was on its way
        };
        if o.epoch.is_some() {
            return;
        }
        o.epoch = Some(epoch);
        let from = o.emit_from;
        for mut b in std::mem::take(&mut o.reemit) {
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
            o.held.push((b.end, b.applied));
        }
    }

    fn produce(&mut self, p: u32, epoch: u64, after: u64, applied: Applied, out: &mut Vec<Action>) {
        let batch = self.next_batch;
        self.next_batch += 1;
        self.inflight.push_back(InFlight {
            batch,
            partition: p,
            next_offset: after,
        });
        out.push(Action::Produce {
            batch,
            partition: p,
            epoch,
            applied,
        });
    }

    fn records(
        &mut self,
        p: u32,
        recs: &[LogRecord],
        claims: &[u64],
        traces: &[(usize, TraceParent)],
        out: &mut Vec<Action>,
    ) {
        // A partition revoked while its records were being fetched: not ours now.
        let Some(o) = self.owned.get_mut(&p) else {
            return;
        };
        let Some(epoch) = o.epoch else {
            // Not claimed yet: apply nothing; read them again once claimed.
            let offset = o.actor.state().next_offset();
            out.push(Action::Seek {
                partition: p,
                offset,
            });
            return;
        };
        // Fencing: another engine claimed the partition after us; or, before our own
        // claim is applied, between where we started and it (our claim came late).
        let (next, start, verified) = (o.actor.state().next_offset(), o.start, o.verified);
        if let Some(&claim) = claims.iter().find(|&&c| {
            (c > epoch && c >= next) || (!verified && c != epoch && c >= start && c < epoch)
        }) {
            let o = self.owned.remove(&p).expect("owned");
            tracing::warn!(
                partition = p,
                our_epoch = epoch,
                claim_offset = claim,
                "fenced: another engine claimed the partition (this process was paused or cut off?); producing nothing more for it"
            );
            self.to_commit.remove(&p);
            let covered = o.covered_from();
            self.keep_standby(p, o.actor, covered, out);
            self.fenced.insert(p, self.now);
            self.apply_standby(p, recs);
            return;
        }
        let before = o.actor.state().next_offset();
        let mut applied = trace::apply_traced(&mut o.actor, recs, traces);
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
        if o.catch_up_to.is_some_and(|t| after >= t) {
            o.catch_up_to = None;
        }
        if !self.writing.contains(&p) {
            if let Some(state) = o.actor.take_snapshot_if_due() {
                o.last_snapshot_offset = state.next_offset();
                self.writing.insert(p);
                out.push(Action::Snapshot {
                    partition: p,
                    state,
                });
            }
        }
        if !o.verified {
            if last >= emit_from {
                o.held.push((after, applied));
            }
            if after <= epoch {
                return; // our claim not applied yet: hold the outputs
            }
            o.verified = true;
            for (after, applied) in std::mem::take(&mut o.held) {
                self.produce(p, epoch, after, applied, out);
            }
            return;
        }
        if last >= emit_from {
            self.produce(p, epoch, after, applied, out);
        }
    }

    fn tick(&mut self, now: UnixMs, out: &mut Vec<Action>) {
        self.now = now;
        // Commits.
        if !self.to_commit.is_empty()
            && now.saturating_sub(self.last_commit) >= self.cfg.commit_every_ms
        {
            self.last_commit = now;
            let offsets: Vec<(u32, u64)> = std::mem::take(&mut self.to_commit)
                .into_iter()
                .filter(|(p, _)| self.owned.get(p).is_some_and(|o| o.epoch.is_some()))
                .collect();
            if !offsets.is_empty() {
                out.push(Action::Commit {
                    offsets,
                    sync: false,
                });
            }
        }
        // Quiet partitions get a snapshot; due holds get a tick.
        let every_ms = self.cfg.snapshot.every_ms;
        for (&p, o) in self.owned.iter_mut() {
            if o.epoch.is_none() || o.catch_up_to.is_some() {
                continue;
            }
            if o.actor.state().next_offset() > o.last_snapshot_offset
                && now.saturating_sub(o.actor.state().clock()) >= every_ms
                && !self.writing.contains(&p)
            {
                let state = o.actor.snapshot_now();
                o.last_snapshot_offset = state.next_offset();
                self.writing.insert(p);
                out.push(Action::Snapshot {
                    partition: p,
                    state,
                });
            }
            if o.needs_tick_at <= now
                && o.last_tick + self.cfg.min_tick_gap_ms <= now
                && !self.ticks_in_flight.contains(&p)
            {
                o.last_tick = now;
                self.ticks_in_flight.insert(p);
                out.push(Action::ProduceTick { partition: p });
            }
        }
        // Fenced partitions still assigned after the grace: take them again.
        let grace = self.cfg.session_timeout_ms * FENCE_GRACE_SESSIONS;
        let due: Vec<u32> = self
            .fenced
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) >= grace)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.fenced.remove(&p);
            if !self.owned.contains_key(&p) {
                out.push(Action::Retake { partition: p });
            }
        }
    }

    /// Lets the owned partitions among `parts` go: commit what is acknowledged (unless
    /// the assignment was lost), snapshot what no snapshot covers, keep the actors as
    /// standby copies.
    fn revoke(&mut self, parts: &[u32], lost: bool, out: &mut Vec<Action>) {
        for p in parts {
            self.fenced.remove(p);
        }
        if !lost {
            let offsets: Vec<(u32, u64)> = self
                .to_commit
                .iter()
                .filter(|(p, _)| self.owned.get(p).is_some_and(|o| o.epoch.is_some()))
                .map(|(p, n)| (*p, *n))
                .collect();
            if !offsets.is_empty() {
                out.push(Action::Commit {
                    offsets,
                    sync: true,
                });
            }
        }
        for p in parts {
            self.to_commit.remove(p);
            let Some(mut o) = self.owned.remove(p) else {
                continue;
            };
            self.ticks_in_flight.remove(p);
            if o.epoch.is_some() && o.actor.state().next_offset() > o.last_snapshot_offset {
                let state = o.actor.snapshot_now();
                self.writing.insert(*p);
                out.push(Action::Snapshot {
                    partition: *p,
                    state,
                });
            }
            let covered = o.covered_from();
            self.keep_standby(*p, o.actor, covered, out);
        }
        // Batches of partitions let go are not committed by this engine any more.
        let owned = &self.owned;
        self.inflight
            .retain(|f| owned.contains_key(&f.partition) || !parts.contains(&f.partition));
    }

    fn keep_standby(
        &mut self,
        p: u32,
        actor: PartitionActor,
        covered_from: u64,
        out: &mut Vec<Action>,
    ) {
        let from = actor.state().next_offset();
        self.standby.insert(p, Standby::new(actor, covered_from));
        out.push(Action::Follow { partition: p, from });
    }

    fn apply_standby(&mut self, p: u32, recs: &[LogRecord]) {
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
        let window = self.cfg.standby_window as u64;
        while sb.ring_records > window {
            let Some(old) = sb.ring.pop_front() else {
                break;
            };
            sb.ring_records -= old.end - old.start;
            sb.covered_from = old.end;
        }
    }

    fn topic_id(&mut self, topic: String, id: String, out: &mut Vec<Action>) {
        let first = self
            .topic_ids
            .entry(topic.clone())
            .or_insert_with(|| id.clone());
        if *first == id {
            return;
        }
        let reason = format!(
            "topic {topic} was recreated: its id changed from {first} to {id}; the state of the old log is not used"
        );
        if self.not_ready.as_deref() == Some(reason.as_str()) {
            return;
        }
        tracing::error!(topic = %topic, old_id = %first, new_id = %id, adopt = self.cfg.adopt_new_topics, "{reason}");
        // Nothing of the old log counts any more: no commit, no snapshot.
        self.owned.clear();
        self.standby.clear();
        self.fenced.clear();
        self.inflight.clear();
        self.acked.clear();
        self.to_commit.clear();
        self.ticks_in_flight.clear();
        self.not_ready = Some(reason.clone());
        out.push(Action::NotReady {
            reason: Some(reason.clone()),
        });
        if self.cfg.adopt_new_topics {
            out.push(Action::Restart { reason });
        }
    }
}

impl Owned {
    /// From which offset on the outputs of this actor's records are known if it
    /// becomes a standby copy now: from `emit_from` if every output it produced was
    /// acknowledged (readers have them, ahead of any successor's); else only from its
    /// next offset (an unacknowledged output may reach readers after a successor's,
    /// under an epoch they drop, so it must be produced again).
    fn covered_from(&self) -> u64 {
        let next = self.actor.state().next_offset();
        if self.acked_to >= next {
            self.emit_from.min(next)
        } else {
            next
        }
    }
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

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;
