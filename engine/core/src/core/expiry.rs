//! Time passing in a partition, at the start of every apply: holds whose `expires_at`
//! has come expire (their units return to stock), idempotency keys older than the
//! retention are forgotten, and expired or cancelled reservations past the retention are
//! pruned, so the state stays bounded in log time.

use super::{inventory_event, release_user, view, State};
use flashsale_proto::*;

impl State {
    /// The queue whose front is due first at `now`, by (expires_at, id).
    pub(super) fn due_queue(&self, now: UnixMs) -> Option<u64> {
        self.expiries
            .iter()
            .filter_map(|(ttl, q)| q.front().filter(|(t, _)| *t <= now).map(|f| (*f, *ttl)))
            .min()
            .map(|(_, ttl)| ttl)
    }

    pub(super) fn expire_due(&mut self, now: UnixMs, events: &mut Vec<Event>) {
        while let Some(ttl) = self.due_queue(now) {
            let q = self.expiries.get_mut(&ttl).expect("due queue exists");
            let (due_at, ulid) = q.pop_front().expect("due queue has a front");
            if q.is_empty() {
                self.expiries.remove(&ttl);
            }
            let Some(r) = self.reservations.get_mut(&ulid) else {
                // Checked out: the order left the hot map, its entry stays queued.
                debug_assert!(
                    self.orders.contains_key(&ulid),
                    "expiry queue names a reservation"
                );
                continue;
            };
            if r.status != ReservationStatus::Reserved {
                continue; // ended early by cancel
            }
            if r.expires_at != due_at {
                continue; // extended: queued again at its new time
            }
            self.live -= 1;
            r.status = ReservationStatus::Expired;
            self.ended.push_back((now, ulid));
            let sku = &self.skus[r.sku as usize];
            let p = self.products.get_mut(sku).expect("a hold's product exists");
            p.held -= u64::from(r.quantity);
            release_user(p, &r.user, r.quantity);
            let id = ReservationId {
                partition: self.partition,
                ulid,
            };
            events.push(Event::Reservation(view(id, r, sku)));
            events.push(inventory_event(sku, p));
        }
    }

    pub(super) fn forget_old_keys(&mut self, now: UnixMs) {
        while let Some(at) = self.idempotency.oldest() {
            if at.saturating_add(self.retention_ms) > now {
                break;
            }
            self.idempotency.forget_oldest();
        }
    }

    /// Forgets the expired and cancelled reservations that ended `retention_ms` or
    /// more ago (log time) and whose `expires_at` has passed, with one event naming
    /// them. Runs after `expire_due` (so every queue entry of such a hold, all at or
    /// before its `expires_at`, is gone) and after `forget_old_keys` with the same
    /// `now` (a key is taken no later than its hold ends, so every key naming a pruned
    /// hold is already forgotten): no index ever names a pruned hold.
    pub(super) fn prune_ended(&mut self, now: UnixMs, events: &mut Vec<Event>) {
        let mut pruned = Vec::new();
        while let Some((at, _)) = self.ended.front() {
            if at.saturating_add(self.retention_ms) > now {
                break;
            }
            let (_, ulid) = self.ended.pop_front().expect("front exists");
            let expires_at = self.reservations[&ulid].expires_at;
            if expires_at > now {
                // Cancelled early: its expiry entries are still queued.
                self.deferred.insert((expires_at, ulid));
                continue;
            }
            self.forget(ulid);
            pruned.push(self.rid(ulid));
        }
        while let Some(&(expires_at, ulid)) = self.deferred.first() {
            if expires_at > now {
                break;
            }
            self.deferred.pop_first();
            self.forget(ulid);
            pruned.push(self.rid(ulid));
        }
        if !pruned.is_empty() {
            self.pruned_total += pruned.len() as u64;
            events.push(Event::ReservationsPruned {
                reservations: pruned,
            });
        }
    }

    fn forget(&mut self, ulid: u128) {
        let r = self
            .reservations
            .remove(&ulid)
            .expect("the ended index names a kept reservation");
        debug_assert!(matches!(
            r.status,
            ReservationStatus::Expired | ReservationStatus::Cancelled
        ));
    }
}
