//! The end of a seed: every fault healed, everything delivered, then the end state
//! checked (every command answered, every order projected once, every owner's state the
//! reference replay of its log).

use super::*;

impl Sim {
    /// Ends every fault, lets everything be delivered, then checks the end state.
    pub(super) fn heal(&mut self) {
        self.store_down = false;
        for e in 0..ENGINES {
            if self.engines[e].paused {
                self.resume(e);
            }
            if self.engines[e].lost_pending {
                self.lost_revoke(e);
            }
            if !self.engines[e].alive {
                self.engines[e].alive = true;
                self.engines[e].member = true;
                self.start_standby(e);
            }
        }
        self.rebalance();
        for p in 0..PARTITIONS {
            if self.owner[p as usize].is_none() {
                let e = self.members()[0];
                self.owner[p as usize] = Some(e);
                self.assign(e, p);
            }
        }
        for round in 0..400 {
            self.now += 1_000 + if round > 50 { 60_000 } else { 0 };
            let mut busy = false;
            for e in 0..ENGINES {
                while !self.engines[e].queue.is_empty() {
                    self.deliver(e, false);
                    busy = true;
                }
                if !self.engines[e].acks.is_empty() {
                    busy = true;
                    self.reap(e, usize::MAX);
                }
                while !self.engines[e].writes.is_empty() {
                    self.write_snapshot(e);
                }
                for p in 0..PARTITIONS {
                    while self.engines[e]
                        .positions
                        .get(&p)
                        .is_some_and(|&o| o < self.log[p as usize].len() as u64)
                    {
                        busy = true;
                        self.fetch_partition(e, p);
                    }
                }
                self.event(e, Event::Tick { now: self.now });
                busy |= !self.engines[e].queue.is_empty();
            }
            if !busy && round > 60 {
                break;
            }
        }
        for p in 0..PARTITIONS {
            for g in 0..GATEWAYS as usize {
                while self.readers[g].cursor[p as usize] < self.outs[p as usize].len() {
                    self.read(g, p);
                }
            }
        }
        self.check_end();
    }

    pub(super) fn fetch_partition(&mut self, e: usize, p: u32) {
        let from = self.engines[e].positions[&p];
        let end = self.log[p as usize].len() as u64;
        let to = (from + 50).min(end);
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

    pub(super) fn check_end(&mut self) {
        for p in 0..PARTITIONS {
            self.reference(p);
            let pi = p as usize;
            let owner = self.owner[pi].expect("every partition has an owner after healing");
            let reference = self.refs[pi].actor.state();
            assert!(
                check_state(reference).is_empty(),
                "the reference breaks an invariant"
            );
            let (_, o) = self.engines[owner]
                .host
                .owned()
                .find(|(q, _)| *q == p)
                .unwrap_or_else(|| panic!("engine {owner} owns partition {p} after healing"));
            assert!(
                o.actor.state() == reference,
                "partition {p}: the owner's state (engine {owner}, next offset {}) is not the replay of the log ({} records)",
                o.actor.state().next_offset(),
                self.log[pi].len()
            );
            // Every command answered, once (every command of a batch record, too).
            for (offset, rec) in self.log[pi].iter().enumerate() {
                if rec.claim {
                    continue;
                }
                for (request, to) in &rec.waiting {
                    assert!(
                        self.readers[*to as usize]
                            .replies
                            .contains(&(p, offset as u64, *request)),
                        "partition {p} offset {offset} request {request:?}: the command was never answered (an acknowledged write may be lost)"
                    );
                }
            }
            // Every order projected exactly once, by every reader.
            let orders: BTreeSet<OrderId> = reference
                .reservations()
                .filter_map(|r| {
                    r.order()
                        .map(|_| r.order_view().expect("an order").order_id)
                })
                .collect();
            for r in &self.readers {
                let seen: BTreeSet<OrderId> = r
                    .orders
                    .iter()
                    .filter(|(_, (q, _))| *q == p)
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(
                    seen, orders,
                    "partition {p}: orders projected differ from the orders made"
                );
            }
        }
    }
}
