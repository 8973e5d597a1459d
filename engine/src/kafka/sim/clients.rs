//! The simulation's gateways: the commands they send (alone and as batch records) and
//! the replies and events they read, each admitted output checked against what the log
//! prefix determines.

use super::*;

impl Sim {
    /// A gateway's batch record: 2-5 commands of partition `p` (holds, checkouts and
    /// cancels of its reservations), now and then a command delivered twice in it or a
    /// client's retry with the same `Idempotency-Key`.
    pub(super) fn client_batch(&mut self) {
        let p = self.rng.random_range(0..PARTITIONS);
        let g = self.rng.random_range(0..GATEWAYS);
        let mine: Vec<ReservationId> = self
            .reservations
            .iter()
            .filter(|id| u32::from(id.partition) == p)
            .copied()
            .collect();
        let n = self.rng.random_range(2..=5);
        let mut cmds = Vec::with_capacity(n + 2);
        for _ in 0..n {
            self.next_request += 1;
            let r = self.next_request;
            let cmd = match self.rng.random_range(0..10) {
                0..=6 => reserve(
                    r,
                    g,
                    self.rng.random_range(0..4),
                    p,
                    self.rng.random_range(1..=2),
                ),
                7..=8 if !mine.is_empty() => {
                    checkout(r, g, mine[self.rng.random_range(0..mine.len())])
                }
                _ if !mine.is_empty() => cancel(r, g, mine[self.rng.random_range(0..mine.len())]),
                _ => reserve(r, g, 0, p, 1),
            };
            cmds.push(cmd);
        }
        match self.rng.random_range(0..4) {
            0 => {
                let again = cmds[self.rng.random_range(0..cmds.len())].clone();
                cmds.push(again);
            }
            1 => {
                let key = format!("key-{}", self.next_request);
                self.next_request += 1;
                let first = with_key(
                    reserve(self.next_request, g, self.rng.random_range(0..4), p, 1),
                    &key,
                );
                self.next_request += 1;
                let mut retry = first.clone();
                retry.request_id = reserve(self.next_request, g, 0, p, 1).request_id;
                cmds.insert(0, first);
                cmds.push(retry);
            }
            _ => {}
        }
        self.say(|| {
            format!(
                "gateway {g} appends a batch of {} commands to partition {p}",
                cmds.len()
            )
        });
        self.append_batch(p, &cmds);
    }

    pub(super) fn client(&mut self) {
        if self.rng.random_range(0..3) == 0 {
            return self.client_batch();
        }
        let p = self.rng.random_range(0..PARTITIONS);
        let g = self.rng.random_range(0..GATEWAYS);
        self.next_request += 1;
        let r = self.next_request;
        let cmd = match self.rng.random_range(0..10) {
            0..=5 => reserve(
                r,
                g,
                self.rng.random_range(0..4),
                p,
                self.rng.random_range(1..=2),
            ),
            6..=8 if !self.reservations.is_empty() => {
                let id = self.reservations[self.rng.random_range(0..self.reservations.len())];
                checkout(r, g, id)
            }
            _ if !self.reservations.is_empty() => {
                let id = self.reservations[self.rng.random_range(0..self.reservations.len())];
                cancel(r, g, id)
            }
            _ => reserve(r, g, 0, p, 1),
        };
        // A command goes to the SKU's partition: here sku(p) lives on partition p.
        let p = match &cmd.command {
            flashsale_proto::Command::Reserve { .. } => p,
            _ => self.partition_of_reservation(&cmd),
        };
        self.append(p, &cmd, false);
    }

    pub(super) fn partition_of_reservation(&self, cmd: &CommandRecord) -> u32 {
        let id = match &cmd.command {
            flashsale_proto::Command::Checkout(c) => &c.reservation,
            flashsale_proto::Command::Cancel { reservation } => reservation,
            _ => return 0,
        };
        (0..PARTITIONS)
            .find(|p| {
                self.refs[*p as usize]
                    .actor
                    .state()
                    .reservation(id)
                    .is_some()
            })
            .unwrap_or(0)
    }

    /// The reference outputs of partition `p` up to its log's end.
    pub(super) fn reference(&mut self, p: u32) {
        let len = self.log[p as usize].len() as u64;
        while (self.refs[p as usize].outputs.len() as u64) < len {
            let o = self.refs[p as usize].outputs.len() as u64;
            let rec = self.record(p, o);
            let r = &mut self.refs[p as usize];
            let applied = r.actor.apply_batch(&[rec]);
            for (_, reply) in &applied.replies {
                if let Reply::Reserved { reservation, .. } = &reply.reply {
                    self.reservations.push(reservation.id);
                }
            }
            r.outputs.push((applied.replies, applied.events));
        }
    }

    /// Reader `g` reads one output record of partition `p`, as a gateway and the
    /// projector do, and checks what it admits.
    pub(super) fn read(&mut self, g: usize, p: u32) {
        let pi = p as usize;
        let Some(rec) = self.outs[pi].get(self.readers[g].cursor[pi]).cloned() else {
            return;
        };
        self.readers[g].cursor[pi] += 1;
        if !self.readers[g].fence.admit(p, Some(rec.epoch)) {
            return;
        }
        self.reference(p);
        for ev in rec.events {
            let r = &mut self.readers[g];
            if ev.offset < r.next_event[pi] {
                continue; // a repeat
            }
            r.next_event[pi] = ev.offset + 1;
            if ev.events.is_empty() {
                continue;
            }
            let expected = &self.refs[pi].outputs[ev.offset as usize].1;
            assert!(
                expected.contains(&ev),
                "partition {p} offset {}: an admitted event record differs from what the log determines",
                ev.offset
            );
            for e in &ev.events {
                if let Ev::OrderCreated(o) = e {
                    if let Some(prev) = r.orders.insert(o.order_id, (p, ev.offset)) {
                        panic!(
                            "order {} projected twice: at {prev:?} and {:?}",
                            o.order_id,
                            (p, ev.offset)
                        );
                    }
                }
            }
        }
        for (to, reply) in rec.replies {
            if to as usize != g {
                continue;
            }
            if !self.readers[g]
                .replies
                .insert((p, reply.offset, reply.request_id))
            {
                continue; // a repeat
            }
            let expected = &self.refs[pi].outputs[reply.offset as usize].0;
            assert!(
                expected.iter().any(|(t, r)| *t == to && *r == reply),
                "partition {p} offset {}: an admitted reply differs from what the log determines",
                reply.offset
            );
        }
    }
}
