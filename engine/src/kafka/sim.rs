//! A seeded simulation of a Kafka deployment (TigerBeetle's VOPR as model): engines
//! driven by the Kafka host's core ([`Host`]), a simulated consumer group, a
//! simulated log (`commands` per partition, the outputs of each partition), a
//! snapshot store, gateways that send commands and read replies and events as the real
//! ones do (epoch fence, repeats dropped by partition and offset). Faults: engine
//! crashes and restarts, pauses (zombies whose session expires), rebalances, records
//! delivered twice, outputs written twice, acks and snapshot writes delayed, produce
//! failures, a snapshot store that is down.
//!
//! Checked after every step: one writer per partition (no engine produces for a
//! partition after it applied a later owner's claim; no engine commits a partition
//! it does not own), every output a reader admits is exactly what the log prefix
//! determines (so no unit is sold twice, no acknowledged hold differs), each order is
//! projected once, the invariants of ARCHITECTURE.md on every owned state. At the end
//! (faults healed, everything delivered): every command was answered, every order
//! projected exactly once, and every owner's state is the reference replay of its log.
//!
//! `cargo test -p flashsale-engine --lib kafka::sim` runs [`DEFAULT_SEEDS`] seeds;
//! `FLASHSALE_SIM_SEEDS=N` (and `FLASHSALE_SIM_FROM=S`) more (`make simulate
//! SEEDS=N`); `FLASHSALE_SIM_SEED=S` replays one, printing every step.

use super::host::{Action, BatchId, Event, Host, HostConfig};
use super::testkit::*;
use flashsale_core::actor::{PartitionActor, SnapshotPolicy};
use flashsale_core::{check_state, snapshot, LogRecord, State};
use flashsale_proto::{
    CommandRecord, EpochFence, Event as Ev, EventRecord, OrderId, Reply, ReplyRecord, RequestId,
    ReservationId, NO_REPLY,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod clients;
mod end;

/// Seeds run by `cargo test` (split over [`SHARDS`] tests).
pub const DEFAULT_SEEDS: u64 = 10_000;
const SHARDS: u64 = 4;
const PARTITIONS: u32 = 2;
const ENGINES: usize = 3;
const GATEWAYS: u32 = 2;
const STEPS: usize = 120;

#[derive(Clone)]
struct CmdRec {
    time: u64,
    payload: Vec<u8>,
    claim: bool,
    /// (request, gateway) of every command in the record someone waits for.
    waiting: Vec<(RequestId, u32)>,
}

#[derive(Clone)]
struct OutRec {
    epoch: u64,
    replies: Vec<(u32, ReplyRecord)>,
    events: Vec<EventRecord>,
}

enum Pending {
    Out {
        batch: BatchId,
        partition: u32,
        out: OutRec,
    },
    Claim(u32),
    Tick(u32),
}

struct Engine {
    host: Host,
    alive: bool,
    paused: bool,
    member: bool,
    /// Expelled from the group while paused: a lost revoke awaits it.
    lost_pending: bool,
    positions: BTreeMap<u32, u64>,
    standby_pos: BTreeMap<u32, u64>,
    queue: VecDeque<Pending>,
    writes: VecDeque<State>,
    acks: VecDeque<BatchId>,
}

struct Reader {
    fence: EpochFence,
    cursor: Vec<usize>,
    next_event: Vec<u64>,
    /// (partition, offset, request) of every reply admitted: a batch record has one
    /// per command.
    replies: BTreeSet<(u32, u64, RequestId)>,
    orders: BTreeMap<OrderId, (u32, u64)>,
}

/// The replies and events of one command record.
type Outputs = (Vec<(u32, ReplyRecord)>, Vec<EventRecord>);

struct Reference {
    actor: PartitionActor,
    outputs: Vec<Outputs>,
}

struct Sim {
    rng: StdRng,
    now: u64,
    log: Vec<Vec<CmdRec>>,
    outs: Vec<Vec<OutRec>>,
    owner: Vec<Option<usize>>,
    committed: Vec<u64>,
    engines: Vec<Engine>,
    store: BTreeMap<u32, Vec<State>>,
    store_down: bool,
    readers: Vec<Reader>,
    refs: Vec<Reference>,
    reservations: Vec<ReservationId>,
    next_request: u128,
    trace: bool,
    step: usize,
}

fn policy() -> SnapshotPolicy {
    SnapshotPolicy {
        every_commands: 7,
        every_ms: 20_000,
        retention_ms: None,
    }
}

fn host() -> Host {
    Host::new(HostConfig {
        snapshot: policy(),
        standby_window: 6,
        session_timeout_ms: 600,
        commit_every_ms: 100,
        min_tick_gap_ms: 200,
        adopt_new_topics: false,
    })
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let standby = rng.random_bool(0.7);
        let engines = (0..ENGINES)
            .map(|_| Engine {
                host: host(),
                alive: true,
                paused: false,
                member: true,
                lost_pending: false,
                positions: BTreeMap::new(),
                standby_pos: BTreeMap::new(),
                queue: VecDeque::new(),
                writes: VecDeque::new(),
                acks: VecDeque::new(),
            })
            .collect();
        let mut sim = Sim {
            rng,
            now: T0,
            log: vec![Vec::new(); PARTITIONS as usize],
            outs: vec![Vec::new(); PARTITIONS as usize],
            owner: vec![None; PARTITIONS as usize],
            committed: vec![0; PARTITIONS as usize],
            engines,
            store: BTreeMap::new(),
            store_down: false,
            readers: (0..GATEWAYS)
                .map(|_| Reader {
                    fence: EpochFence::default(),
                    cursor: vec![0; PARTITIONS as usize],
                    next_event: vec![0; PARTITIONS as usize],
                    replies: BTreeSet::new(),
                    orders: BTreeMap::new(),
                })
                .collect(),
            refs: (0..PARTITIONS)
                .map(|p| Reference {
                    actor: PartitionActor::new(State::new(p as u16), policy()),
                    outputs: Vec::new(),
                })
                .collect(),
            reservations: Vec::new(),
            next_request: 1,
            trace,
            step: 0,
        };
        for e in 0..ENGINES {
            if standby {
                sim.start_standby(e);
            }
        }
        for p in 0..PARTITIONS {
            sim.append(p, &sale(0, NO_REPLY, p, 3 + u64::from(p)), false);
        }
        sim
    }

    fn say(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[step {}] {}", self.step, what());
        }
    }

    fn append(&mut self, p: u32, cmd: &CommandRecord, claim: bool) -> u64 {
        self.append_record(
            p,
            flashsale_proto::encode(cmd),
            std::slice::from_ref(cmd),
            claim,
        )
    }

    /// Appends one batch record (a gateway's commands of one partition).
    fn append_batch(&mut self, p: u32, cmds: &[CommandRecord]) -> u64 {
        let mut enc = flashsale_proto::BatchEncoder::new();
        for c in cmds {
            enc.push(c);
        }
        self.append_record(p, enc.take(), cmds, false)
    }

    fn append_record(
        &mut self,
        p: u32,
        payload: Vec<u8>,
        cmds: &[CommandRecord],
        claim: bool,
    ) -> u64 {
        let log = &mut self.log[p as usize];
        log.push(CmdRec {
            time: self.now,
            payload,
            claim,
            waiting: cmds
                .iter()
                .filter(|c| {
                    c.reply_to != NO_REPLY && !matches!(c.command, flashsale_proto::Command::Tick)
                })
                .map(|c| (c.request_id, c.reply_to))
                .collect(),
        });
        log.len() as u64 - 1
    }

    fn record(&self, p: u32, offset: u64) -> LogRecord {
        let r = &self.log[p as usize][offset as usize];
        LogRecord {
            offset,
            log_time: r.time,
            payload: r.payload.clone(),
        }
    }

    fn start_standby(&mut self, e: usize) {
        for p in 0..PARTITIONS {
            let state = self
                .store
                .get(&p)
                .and_then(|v| v.last().cloned())
                .filter(|_| !self.store_down)
                .unwrap_or_else(|| State::new(p as u16));
            self.event(
                e,
                Event::StandbyStarted {
                    partition: p,
                    state,
                },
            );
        }
    }

    /// Hands `event` to engine `e` and carries out its actions.
    fn event(&mut self, e: usize, event: Event) {
        let mut actions = Vec::new();
        self.engines[e].host.handle(event, &mut actions);
        for a in actions {
            self.action(e, a);
        }
        self.check_owned_states(e);
    }

    fn action(&mut self, e: usize, a: Action) {
        match a {
            Action::Seek { partition, offset } => {
                self.engines[e].positions.insert(partition, offset);
            }
            Action::Claim { partition } => {
                self.engines[e].queue.push_back(Pending::Claim(partition))
            }
            Action::Produce {
                batch,
                partition,
                epoch,
                applied,
            } => {
                // One writer: an owner that applied a later owner's claim produces nothing.
                let next = self.engines[e]
                    .host
                    .owned()
                    .find(|(p, _)| *p == partition)
                    .map(|(_, o)| o.actor.state().next_offset())
                    .unwrap_or(0);
                let log = &self.log[partition as usize];
                if let Some(c) =
                    (epoch + 1..next.min(log.len() as u64)).find(|&o| log[o as usize].claim)
                {
                    panic!("one writer per partition: engine {e} produced for partition {partition} with epoch {epoch} after applying the claim at offset {c}");
                }
                self.engines[e].queue.push_back(Pending::Out {
                    batch,
                    partition,
                    out: OutRec {
                        epoch,
                        replies: applied.replies,
                        events: applied.events,
                    },
                });
            }
            Action::ProduceTick { partition } => {
                self.engines[e].queue.push_back(Pending::Tick(partition))
            }
            Action::Commit { offsets, .. } => {
                for (p, next) in offsets {
                    let eng = &self.engines[e];
                    if self.owner[p as usize] != Some(e) || !eng.member || eng.lost_pending {
                        continue; // refused by the coordinator: not this member's partition
                    }
                    assert!(
                        next >= self.committed[p as usize],
                        "partition {p}: commit went back from {} to {next}",
                        self.committed[p as usize]
                    );
                    assert!(
                        next <= self.log[p as usize].len() as u64,
                        "commit past the log's end"
                    );
                    self.committed[p as usize] = next;
                }
            }
            Action::Snapshot { state, .. } => self.engines[e].writes.push_back(state),
            Action::Follow { partition, from } => {
                self.engines[e].standby_pos.insert(partition, from);
            }
            Action::Unfollow { partition } => {
                self.engines[e].standby_pos.remove(&partition);
            }
            Action::Retake { partition } => {
                if self.owner[partition as usize] == Some(e) {
                    self.assign(e, partition);
                }
            }
            Action::NotReady { .. } | Action::Restart { .. } => {}
            Action::Fail { reason } => {
                self.say(|| format!("engine {e} fails: {reason}"));
                self.crash(e);
            }
        }
    }

    fn check_owned_states(&self, e: usize) {
        for (p, o) in self.engines[e].host.owned() {
            let v = check_state(o.actor.state());
            assert!(
                v.is_empty(),
                "engine {e} partition {p}: invariants broken: {v:?}"
            );
        }
    }

    fn crash(&mut self, e: usize) {
        self.say(|| format!("engine {e} crashes"));
        // What it handed to the broker may or may not have landed: a prefix did.
        let keep = self.rng.random_range(0..=self.engines[e].queue.len());
        while self.engines[e].queue.len() > keep {
            self.engines[e].queue.pop_back();
        }
        while !self.engines[e].queue.is_empty() {
            self.deliver(e, false);
        }
        // The group sees the member gone: its partitions are nobody's until assigned.
        for o in self.owner.iter_mut() {
            if *o == Some(e) {
                *o = None;
            }
        }
        let eng = &mut self.engines[e];
        eng.host = host();
        eng.alive = false;
        eng.member = false;
        eng.paused = false;
        eng.lost_pending = false;
        eng.positions.clear();
        eng.standby_pos.clear();
        eng.writes.clear();
        eng.acks.clear();
    }

    fn assign(&mut self, e: usize, p: u32) {
        let c = self.committed[p as usize];
        let high = self.log[p as usize].len() as u64;
        let snapshot = match self.engines[e].host.snapshot_wanted(p, c, 0) {
            Some(above) if !self.store_down => self
                .store
                .get(&p)
                .and_then(|v| {
                    v.iter()
                        .rev()
                        .find(|s| s.next_offset() <= c && s.next_offset() > above)
                })
                .cloned(),
            _ => None,
        };
        self.say(|| format!("engine {e} assigned partition {p} (committed {c}, end {high})"));
        self.event(
            e,
            Event::Assigned {
                partition: p,
                committed: c,
                low: 0,
                high,
                snapshot,
            },
        );
    }

    /// The group's members: alive, joined, not awaiting a lost revoke.
    fn members(&self) -> Vec<usize> {
        (0..ENGINES)
            .filter(|&e| {
                let g = &self.engines[e];
                g.alive && g.member && !g.lost_pending
            })
            .collect()
    }

    fn rebalance(&mut self) {
        let members = self.members();
        for p in 0..PARTITIONS {
            let cur = self.owner[p as usize];
            // A paused member does not answer: its partitions move only once its
            // session expires (then it is no member any more).
            if cur.is_some_and(|c| members.contains(&c) && self.engines[c].paused) {
                continue;
            }
            let keep = cur.filter(|c| members.contains(c) && self.rng.random_bool(0.6));
            let target = keep.or_else(|| {
                (!members.is_empty()).then(|| members[self.rng.random_range(0..members.len())])
            });
            if target == cur {
                continue;
            }
            if let Some(c) = cur.filter(|c| members.contains(c)) {
                // Cooperative: the old owner lets go first (acks waited for, or not).
                if self.rng.random_bool(0.7) {
                    while !self.engines[c].queue.is_empty() {
                        self.deliver(c, false);
                    }
                    self.reap(c, usize::MAX);
                }
                self.say(|| format!("engine {c} revoked partition {p}"));
                self.engines[c].positions.remove(&p);
                self.event(
                    c,
                    Event::Revoked {
                        partitions: vec![p],
                        lost: false,
                    },
                );
            }
            self.owner[p as usize] = target;
            if let Some(t) = target {
                self.assign(t, p);
            }
        }
    }

    /// Delivers the next record of `e`'s producer queue (`fail`: the broker refuses it).
    fn deliver(&mut self, e: usize, fail: bool) {
        let Some(pending) = self.engines[e].queue.pop_front() else {
            return;
        };
        match pending {
            Pending::Out {
                batch,
                partition,
                out,
            } => {
                if fail {
                    self.engines[e].queue.clear();
                    self.event(
                        e,
                        Event::ProduceFailed {
                            batch,
                            error: "refused".into(),
                        },
                    );
                    return;
                }
                self.say(|| {
                    let offs: Vec<u64> = out.replies.iter().map(|(_, r)| r.offset).collect();
                    format!("engine {e} delivers outputs of partition {partition} epoch {} replies at {offs:?}", out.epoch)
                });
                let twice = self.rng.random_bool(0.05);
                self.outs[partition as usize].push(out.clone());
                if twice {
                    self.outs[partition as usize].push(out);
                }
                self.engines[e].acks.push_back(batch);
            }
            Pending::Claim(p) => {
                let epoch = self.append(p, &CommandRecord::tick(), true);
                self.say(|| format!("engine {e} claimed partition {p} at {epoch}"));
                if self.engines[e].alive {
                    self.event(
                        e,
                        Event::Claimed {
                            partition: p,
                            epoch,
                        },
                    );
                }
            }
            Pending::Tick(p) => {
                self.append(p, &CommandRecord::tick(), false);
                if self.engines[e].alive {
                    self.event(e, Event::TickDone { partition: p });
                }
            }
        }
    }

    /// Hands up to `n` delayed acks to `e`.
    fn reap(&mut self, e: usize, n: usize) {
        for _ in 0..n {
            let Some(batch) = self.engines[e].acks.pop_front() else {
                break;
            };
            if self.engines[e].alive {
                self.event(e, Event::Acked { batch });
            }
        }
    }

    fn fetch(&mut self, e: usize) {
        let parts: Vec<(u32, u64)> = self.engines[e]
            .positions
            .iter()
            .map(|(p, o)| (*p, *o))
            .collect();
        if parts.is_empty() {
            return;
        }
        let (p, mut from) = parts[self.rng.random_range(0..parts.len())];
        let end = self.log[p as usize].len() as u64;
        if from > 0 && self.rng.random_bool(0.05) {
            from -= self.rng.random_range(1..=from.min(3)); // delivered again
        }
        if from >= end {
            return;
        }
        let to = (from + self.rng.random_range(1..=5)).min(end);
        let records: Vec<LogRecord> = (from..to).map(|o| self.record(p, o)).collect();
        let claims: Vec<u64> = (from..to)
            .filter(|&o| self.log[p as usize][o as usize].claim)
            .collect();
        self.engines[e].positions.insert(p, to);
        self.event(
            e,
            Event::Records {
                partition: p,
                records,
                claims,
                traces: Vec::new(),
            },
        );
    }

    fn follow(&mut self, e: usize) {
        let parts: Vec<(u32, u64)> = self.engines[e]
            .standby_pos
            .iter()
            .map(|(p, o)| (*p, *o))
            .collect();
        if parts.is_empty() {
            return;
        }
        let (p, from) = parts[self.rng.random_range(0..parts.len())];
        let end = self.log[p as usize].len() as u64;
        if from >= end {
            return;
        }
        let to = (from + self.rng.random_range(1..=5)).min(end);
        let records: Vec<LogRecord> = (from..to).map(|o| self.record(p, o)).collect();
        self.engines[e].standby_pos.insert(p, to);
        self.event(
            e,
            Event::StandbyRecords {
                partition: p,
                records,
            },
        );
    }

    fn write_snapshot(&mut self, e: usize) {
        let Some(state) = self.engines[e].writes.pop_front() else {
            return;
        };
        let p = u32::from(state.partition());
        let offset = state.next_offset();
        if self.store_down {
            self.event(
                e,
                Event::SnapshotFailed {
                    partition: p,
                    error: "down".into(),
                },
            );
            return;
        }
        let bytes = snapshot::encode(&state).expect("a snapshot encodes");
        let back = snapshot::decode(&bytes).expect("a snapshot decodes");
        let v = self.store.entry(p).or_default();
        v.push(back);
        v.sort_by_key(State::next_offset);
        self.event(
            e,
            Event::SnapshotStored {
                partition: p,
                offset,
            },
        );
    }

    fn run(&mut self) {
        let mut expel_at: BTreeMap<usize, usize> = BTreeMap::new();
        for step in 0..STEPS {
            self.step = step;
            self.now += self.rng.random_range(0..400);
            // Session expiry of paused members.
            let due: Vec<usize> = expel_at
                .iter()
                .filter(|(_, s)| **s <= step)
                .map(|(e, _)| *e)
                .collect();
            for e in due {
                expel_at.remove(&e);
                if self.engines[e].paused && self.engines[e].member {
                    self.say(|| format!("engine {e}'s session expires (paused)"));
                    self.engines[e].member = false;
                    self.engines[e].lost_pending = true;
                    self.rebalance();
                }
            }
            let e = self.rng.random_range(0..ENGINES);
            let live = self.engines[e].alive && !self.engines[e].paused;
            match self.rng.random_range(0..100) {
                0..=24 => self.client(),
                25..=39 if live => self.fetch(e),
                40..=47 if live => self.follow(e),
                48..=59 if live => {
                    let fail = self.rng.random_bool(0.01);
                    self.deliver(e, fail);
                }
                60..=66 if live => {
                    let n = self.rng.random_range(1..=3);
                    self.reap(e, n);
                }
                67..=71 if live => self.write_snapshot(e),
                72..=79 if live => self.event(e, Event::Tick { now: self.now }),
                80..=83 => self.rebalance(),
                84 if live && self.rng.random_bool(0.5) => {
                    self.crash(e);
                    self.rebalance();
                }
                85 if !self.engines[e].alive => {
                    self.say(|| format!("engine {e} restarts"));
                    self.engines[e].alive = true;
                    self.engines[e].member = true;
                    if self.rng.random_bool(0.7) {
                        self.start_standby(e);
                    }
                    self.rebalance();
                }
                86 if live && self.engines[e].member => {
                    self.say(|| format!("engine {e} pauses"));
                    self.engines[e].paused = true;
                    expel_at.insert(e, step + self.rng.random_range(1..20));
                }
                87 if self.engines[e].paused => self.resume(e),
                88 if self.engines[e].lost_pending && !self.engines[e].paused => {
                    self.lost_revoke(e)
                }
                89 => self.store_down = !self.store_down,
                _ => {
                    let g = self.rng.random_range(0..GATEWAYS as usize);
                    let p = self.rng.random_range(0..PARTITIONS);
                    self.read(g, p);
                }
            }
        }
        self.heal();
    }

    fn resume(&mut self, e: usize) {
        self.say(|| format!("engine {e} resumes"));
        self.engines[e].paused = false;
    }

    /// A resumed engine whose session expired learns that it lost its partitions,
    /// and joins again.
    fn lost_revoke(&mut self, e: usize) {
        let mut parts: Vec<u32> = self.engines[e].positions.keys().copied().collect();
        parts.extend(self.engines[e].host.owned().map(|(p, _)| p));
        parts.sort_unstable();
        parts.dedup();
        self.say(|| format!("engine {e} lost its assignment {parts:?}"));
        self.engines[e].positions.clear();
        self.event(
            e,
            Event::Revoked {
                partitions: parts,
                lost: true,
            },
        );
        self.engines[e].lost_pending = false;
        self.engines[e].member = true;
        self.rebalance();
    }
}

fn run_seed(seed: u64, trace: bool) -> Result<(), String> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Sim::new(seed, trace).run();
    }));
    result.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

fn run_shard(shard: u64) {
    if let Ok(seed) = std::env::var("FLASHSALE_SIM_SEED") {
        if shard == 0 {
            let seed: u64 = seed.parse().expect("FLASHSALE_SIM_SEED is a number");
            if let Err(e) = run_seed(seed, true) {
                panic!("seed {seed}: {e}");
            }
        }
        return;
    }
    let seeds: u64 = std::env::var("FLASHSALE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEEDS);
    let from: u64 = std::env::var("FLASHSALE_SIM_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut failed = None;
    for seed in (from..from + seeds).filter(|s| s % SHARDS == shard) {
        if let Err(e) = run_seed(seed, false) {
            failed = Some((seed, e));
            break;
        }
    }
    if let Some((seed, e)) = failed {
        panic!(
            "seed {seed} failed: {e}\nreplay: FLASHSALE_SIM_SEED={seed} cargo test -p flashsale-engine --lib kafka::sim -- --nocapture"
        );
    }
}

/// Seeds that found bugs, kept whatever the default range becomes: 41 and 120 lost
/// answers when a former owner took its partition back counting outputs it had
/// produced but never had acknowledged (readers had dropped them, fenced by the
/// successor's epoch) as produced.
#[test]
fn simulated_cluster_regressions() {
    for seed in [41, 120] {
        if let Err(e) = run_seed(seed, false) {
            panic!("seed {seed} failed: {e}\nreplay: FLASHSALE_SIM_SEED={seed} cargo test -p flashsale-engine --lib kafka::sim -- --nocapture");
        }
    }
}

#[test]
fn simulated_cluster_shard_0() {
    run_shard(0);
}
#[test]
fn simulated_cluster_shard_1() {
    run_shard(1);
}
#[test]
fn simulated_cluster_shard_2() {
    run_shard(2);
}
#[test]
fn simulated_cluster_shard_3() {
    run_shard(3);
}
