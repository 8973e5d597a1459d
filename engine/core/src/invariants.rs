//! The invariants of ARCHITECTURE.md as pure predicates. The core asserts them (debug builds,
//! after every apply, for what the record touched); snapshots are checked with
//! [`check_state`] before they are written and after they are read; the simulation
//! tests and `flashsale audit` call the same functions.
//!
//! 1. per SKU: sold + held ≤ total (so available = total − sold − held ≥ 0);
//! 2. per (user, SKU): held + bought ≤ perUserLimit;
//! 3. RESERVED → CONFIRMED | EXPIRED | CANCELLED, terminal states never change
//!    (structural in `core`; here: the expiry index holds exactly the live holds);
//! 4. every confirmed reservation has exactly one order, and only those;
//! 5. bounded state: an expired or cancelled reservation is forgotten at the first
//!    record once the partition's retention has passed since it ended and its
//!    `expires_at` has passed (log time); confirmed ones (orders) are never forgotten;
//!    no idempotency key or expiry entry names a forgotten reservation
//!    ([`check_retention`]; here also: the ended index holds exactly the ended holds).

use crate::core::{Product, State};
use flashsale_proto::*;
use rustc_hash::FxHashMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    Oversold {
        sku: SkuId,
        total: u64,
        held: u64,
        sold: u64,
    },
    HeldMismatch {
        sku: SkuId,
        recorded: u64,
        counted: u64,
    },
    SoldMismatch {
        sku: SkuId,
        recorded: u64,
        counted: u64,
    },
    UserOverLimit {
        sku: SkuId,
        user: UserId,
        used: u32,
        limit: u32,
    },
    UserCountMismatch {
        sku: SkuId,
        user: UserId,
        recorded: u32,
        counted: u32,
    },
    ConfirmedWithoutOrder {
        reservation: ReservationId,
    },
    OrderWithoutConfirmation {
        reservation: ReservationId,
    },
    DuplicateOrderId {
        order: OrderId,
    },
    ExpiryIndexMismatch {
        reservation: ReservationId,
    },
    OrphanReservation {
        reservation: ReservationId,
        sku: SkuId,
    },
    /// An order in the hot map, or a non-confirmed reservation among the orders.
    MisplacedReservation {
        reservation: ReservationId,
    },
    WrongPartition {
        reservation: ReservationId,
    },
    LiveCountMismatch {
        recorded: u64,
        counted: u64,
    },
    /// An ended (expired, cancelled) reservation missing from the ended index, or an
    /// index entry naming no ended reservation, out of order, or after the clock.
    EndedIndexMismatch {
        reservation: ReservationId,
    },
    /// An ended reservation kept past its retention and its `expires_at` (it should
    /// have been pruned).
    KeptPastRetention {
        reservation: ReservationId,
        ended_at: UnixMs,
        clock: UnixMs,
        retention_ms: u64,
    },
    /// An idempotency key names a reservation that is not kept.
    DanglingIdempotencyKey {
        key: String,
        reservation: ReservationId,
    },
    RetentionOutOfRange {
        retention_ms: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Oversold { sku, total, held, sold } => {
                write!(f, "oversold: {sku} has sold {sold} + held {held} > total {total}")
            }
            Violation::HeldMismatch { sku, recorded, counted } => write!(
                f,
                "held mismatch: {sku} records {recorded} held, live reservations hold {counted}"
            ),
            Violation::SoldMismatch { sku, recorded, counted } => write!(
                f,
                "sold mismatch: {sku} records {recorded} sold, confirmed reservations sum to {counted}"
            ),
            Violation::UserOverLimit { sku, user, used, limit } => {
                write!(f, "user over limit: {user} holds/bought {used} of {sku}, limit {limit}")
            }
            Violation::UserCountMismatch { sku, user, recorded, counted } => write!(
                f,
                "user count mismatch: {user} on {sku} records {recorded}, reservations sum to {counted}"
            ),
            Violation::ConfirmedWithoutOrder { reservation } => {
                write!(f, "confirmed without order: {reservation}")
            }
            Violation::OrderWithoutConfirmation { reservation } => {
                write!(f, "order on an unconfirmed reservation: {reservation}")
            }
            Violation::DuplicateOrderId { order } => write!(f, "order id used twice: {order}"),
            Violation::ExpiryIndexMismatch { reservation } => {
                write!(f, "expiry index out of step for {reservation}")
            }
            Violation::OrphanReservation { reservation, sku } => {
                write!(f, "reservation {reservation} names unknown product {sku}")
            }
            Violation::LiveCountMismatch { recorded, counted } => {
                write!(f, "live hold count {recorded} recorded, {counted} counted")
            }
            Violation::WrongPartition { reservation } => {
                write!(f, "reservation {reservation} belongs to another partition")
            }
            Violation::MisplacedReservation { reservation } => write!(
                f,
                "reservation {reservation} is kept with the wrong kind (orders and holds are kept apart)"
            ),
            Violation::EndedIndexMismatch { reservation } => {
                write!(f, "ended-reservation index out of step for {reservation}")
            }
            Violation::KeptPastRetention { reservation, ended_at, clock, retention_ms } => write!(
                f,
                "kept past retention: {reservation} ended at {ended_at}, clock {clock}, retention {retention_ms} ms"
            ),
            Violation::DanglingIdempotencyKey { key, reservation } => write!(
                f,
                "idempotency key {key:?} names {reservation}, which is not kept"
            ),
            Violation::RetentionOutOfRange { retention_ms } => {
                write!(f, "retention {retention_ms} ms is out of range")
            }
        }
    }
}

/// Invariant 1 for one product.
pub fn check_product(p: &Product) -> Result<(), Violation> {
    if p.sold()
        .checked_add(p.held())
        .is_none_or(|used| used > p.total())
    {
        return Err(Violation::Oversold {
            sku: p.spec().sku.clone(),
            total: p.total(),
            held: p.held(),
            sold: p.sold(),
        });
    }
    Ok(())
}

/// Invariant 2 for one (user, product).
pub fn check_user_limit(p: &Product, user: &UserId) -> Result<(), Violation> {
    let used = p.used_by(user);
    let limit = p.spec().per_user_limit;
    if used > limit {
        return Err(Violation::UserOverLimit {
            sku: p.spec().sku.clone(),
            user: user.clone(),
            used,
            limit,
        });
    }
    Ok(())
}

/// Invariant 5's time bound: nothing due to be pruned is kept. The oldest ended
/// reservation not yet deferred ended less than the retention ago, and the first
/// deferred one (past its retention, cancelled before its hold ran out) has not reached
/// its `expires_at` (log time). The core checks it after every apply (debug builds).
pub fn check_retention(s: &State) -> Result<(), Violation> {
    if !(crate::core::MIN_RETENTION_MS..=crate::core::MAX_RETENTION_MS).contains(&s.retention_ms) {
        return Err(Violation::RetentionOutOfRange {
            retention_ms: s.retention_ms,
        });
    }
    match s.ended.front() {
        Some(&(ended_at, ulid)) if ended_at.saturating_add(s.retention_ms) <= s.clock => {
            return Err(Violation::KeptPastRetention {
                reservation: s.rid(ulid),
                ended_at,
                clock: s.clock,
                retention_ms: s.retention_ms,
            })
        }
        _ => {}
    }
    match s.deferred.first() {
        Some(&(expires_at, ulid)) if expires_at <= s.clock => Err(Violation::KeptPastRetention {
            reservation: s.rid(ulid),
            ended_at: expires_at,
            clock: s.clock,
            retention_ms: s.retention_ms,
        }),
        _ => Ok(()),
    }
}

/// Invariant 5's structure: the ended index holds exactly the ended reservations, once
/// each, in log-time order, none after the clock; every idempotency key names a kept
/// reservation. O(ended + keys).
fn check_ended_index(s: &State, out: &mut Vec<Violation>) {
    let mut last = 0;
    let mut indexed = rustc_hash::FxHashSet::default();
    for &(at, ulid) in &s.ended {
        let id = s.rid(ulid);
        let ended = s.reservation(&id).is_some_and(|r| {
            matches!(
                r.status(),
                ReservationStatus::Expired | ReservationStatus::Cancelled
            )
        });
        if !ended || at < last || at > s.clock || !indexed.insert(id) {
            out.push(Violation::EndedIndexMismatch { reservation: id });
        }
        last = at;
    }
    for &(expires_at, ulid) in &s.deferred {
        let id = s.rid(ulid);
        let ok = s.reservation(&id).is_some_and(|r| {
            matches!(
                r.status(),
                ReservationStatus::Expired | ReservationStatus::Cancelled
            ) && r.expires_at() == expires_at
        });
        if !ok || !indexed.insert(id) {
            out.push(Violation::EndedIndexMismatch { reservation: id });
        }
    }
    let mut missing: Vec<ReservationId> = s
        .reservations()
        .filter(|r| {
            matches!(
                r.status(),
                ReservationStatus::Expired | ReservationStatus::Cancelled
            ) && !indexed.contains(&r.id())
        })
        .map(|r| r.id())
        .collect();
    missing.sort_unstable();
    out.extend(
        missing
            .into_iter()
            .map(|reservation| Violation::EndedIndexMismatch { reservation }),
    );
    let mut dangling: Vec<(&str, ReservationId)> = s
        .idempotency
        .iter()
        .map(|(k, ulid)| (k, s.rid(ulid)))
        .filter(|(_, id)| s.reservation(id).is_none())
        .collect();
    dangling.sort();
    out.extend(
        dangling
            .into_iter()
            .map(|(key, reservation)| Violation::DanglingIdempotencyKey {
                key: key.to_string(),
                reservation,
            }),
    );
    if let Err(v) = check_retention(s) {
        out.push(v);
    }
}

/// Every invariant over a whole partition, recounting counters from the reservations.
/// Returns every violation found (empty = clean). O(reservations).
pub fn check_state(s: &State) -> Vec<Violation> {
    // Sized up front: recovery checks every snapshot it loads, and a partition may hold
    // millions of reservations; growing these maps step by step costs more than the check.
    let mut out = Vec::new();
    let mut held: FxHashMap<&SkuId, u64> = FxHashMap::default();
    let mut sold: FxHashMap<&SkuId, u64> = FxHashMap::default();
    // Per product, then per user: hashing the user alone, in a map sized for the product.
    let mut per_user: FxHashMap<&SkuId, FxHashMap<&UserId, u32>> = s
        .products
        .iter()
        .map(|(sku, p)| {
            (
                sku,
                FxHashMap::with_capacity_and_hasher(p.per_user.len(), Default::default()),
            )
        })
        .collect();
    let mut order_ids = rustc_hash::FxHashSet::default();
    let mut live = 0u64;
    // Invariant 3's index check compares two sorted lists (the queued entries, the live
    // holds) instead of probing a hash set a million times at random: on recovery of a
    // large partition, those cache misses were the biggest part of the check.
    let mut queued: Vec<(ReservationId, UnixMs)> =
        Vec::with_capacity(s.expiries.values().map(|q| q.len()).sum());
    queued.extend(s.expiries.values().flatten().map(|&(t, u)| (s.rid(u), t)));
    queued.sort_unstable();
    queued.dedup();
    let mut live_holds: Vec<(ReservationId, UnixMs)> = Vec::with_capacity(queued.len());
    // Orders are kept apart from the hot map (issue 29): each map holds only its kind.
    for (ulid, h) in &s.reservations {
        if h.status == ReservationStatus::Confirmed {
            out.push(Violation::MisplacedReservation {
                reservation: s.rid(*ulid),
            });
        }
    }
    for (ulid, h) in &s.orders {
        if h.status != ReservationStatus::Confirmed {
            out.push(Violation::MisplacedReservation {
                reservation: s.rid(*ulid),
            });
        }
    }
    for r in s.reservations() {
        if r.id().partition != s.partition() {
            out.push(Violation::WrongPartition {
                reservation: r.id(),
            });
        }
        if s.product(r.sku()).is_none() {
            out.push(Violation::OrphanReservation {
                reservation: r.id(),
                sku: r.sku().clone(),
            });
            continue;
        }
        let q = u64::from(r.quantity());
        match r.status() {
            ReservationStatus::Reserved => {
                live += 1;
                *held.entry(r.sku()).or_default() += q;
                *per_user
                    .entry(r.sku())
                    .or_default()
                    .entry(r.user())
                    .or_default() += r.quantity();
                live_holds.push((r.id(), r.expires_at()));
            }
            ReservationStatus::Confirmed => {
                *sold.entry(r.sku()).or_default() += q;
                *per_user
                    .entry(r.sku())
                    .or_default()
                    .entry(r.user())
                    .or_default() += r.quantity();
            }
            ReservationStatus::Expired | ReservationStatus::Cancelled => {}
        }
        match (r.status(), r.order()) {
            (ReservationStatus::Confirmed, None) => out.push(Violation::ConfirmedWithoutOrder {
                reservation: r.id(),
            }),
            (ReservationStatus::Confirmed, Some(o)) => {
                if !order_ids.insert(o.order_id) {
                    out.push(Violation::DuplicateOrderId { order: o.order_id });
                }
            }
            (_, Some(_)) => out.push(Violation::OrderWithoutConfirmation {
                reservation: r.id(),
            }),
            (_, None) => {}
        }
    }
    // Every live hold is queued at its expiry time; every queued entry names a hold.
    live_holds.sort_unstable();
    let mut q = queued.iter().peekable();
    let orphan_entry = |id: &ReservationId, out: &mut Vec<Violation>| {
        if s.reservation(id).is_none() {
            out.push(Violation::ExpiryIndexMismatch { reservation: *id });
        }
    };
    for hold in &live_holds {
        while let Some(entry) = q.next_if(|e| *e < hold) {
            orphan_entry(&entry.0, &mut out);
        }
        if q.next_if_eq(&hold).is_none() {
            out.push(Violation::ExpiryIndexMismatch {
                reservation: hold.0,
            });
        }
    }
    for entry in q {
        orphan_entry(&entry.0, &mut out);
    }
    check_ended_index(s, &mut out);
    if live != s.live {
        out.push(Violation::LiveCountMismatch {
            recorded: s.live,
            counted: live,
        });
    }
    let mut skus: Vec<_> = s.products().collect();
    skus.sort_by(|a, b| a.0.cmp(b.0));
    for (sku, p) in skus {
        if let Err(v) = check_product(p) {
            out.push(v);
        }
        let h = held.get(sku).copied().unwrap_or(0);
        if h != p.held() {
            out.push(Violation::HeldMismatch {
                sku: sku.clone(),
                recorded: p.held(),
                counted: h,
            });
        }
        let so = sold.get(sku).copied().unwrap_or(0);
        if so != p.sold() {
            out.push(Violation::SoldMismatch {
                sku: sku.clone(),
                recorded: p.sold(),
                counted: so,
            });
        }
        // Users in order, as before, but only those with something to report are sorted
        // (sorting a million user ids on every snapshot load was most of its cost).
        let mut counts = per_user.get_mut(sku);
        let mut found: Vec<(&UserId, Vec<Violation>)> = Vec::new();
        for (user, recorded) in p.per_user() {
            let mut vs = Vec::new();
            if let Err(v) = check_user_limit(p, user) {
                vs.push(v);
            }
            let counted = counts.as_mut().and_then(|c| c.remove(user)).unwrap_or(0);
            if counted != recorded {
                vs.push(Violation::UserCountMismatch {
                    sku: sku.clone(),
                    user: user.clone(),
                    recorded,
                    counted,
                });
            }
            if !vs.is_empty() {
                found.push((user, vs));
            }
        }
        found.sort_by(|a, b| a.0.cmp(b.0));
        out.extend(found.into_iter().flat_map(|(_, vs)| vs));
    }
    let mut rest: Vec<_> = per_user
        .into_iter()
        .flat_map(|(sku, users)| users.into_iter().map(move |(user, n)| ((sku, user), n)))
        .filter(|(_, n)| *n > 0)
        .collect();
    rest.sort();
    for ((sku, user), counted) in rest {
        out.push(Violation::UserCountMismatch {
            sku: sku.clone(),
            user: user.clone(),
            recorded: 0,
            counted,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_holds(n: u64) -> State {
        let sku = SkuId::parse("SKU-1").unwrap();
        let spec = ProductSpec {
            sku: sku.clone(),
            name: "p".into(),
            description: String::new(),
            category: String::new(),
            base_price: Cents(200),
            flash_sale_price: Cents(100),
            total_inventory: 1000,
            per_user_limit: 1,
            image_url: String::new(),
        };
        let sale = SaleMeta {
            sale_id: SaleId(1),
            name: "s".into(),
            starts_at: 0,
            ends_at: u64::MAX / 2,
            reservation_ttl_s: 60,
            all_skus: vec![sku.clone()],
        };
        let mut s = State::new(0);
        let mut ev = Vec::new();
        let rec = |id: u128, command| CommandRecord {
            request_id: RequestId(id),
            reply_to: NO_REPLY,
            idempotency_key: None,
            command,
        };
        s.apply(
            0,
            1000,
            &rec(
                1,
                Command::ConfigureSale(SaleConfig {
                    sale,
                    products: vec![spec],
                }),
            ),
            &mut ev,
        );
        for i in 0..n {
            let user = UserId::parse(&format!("u{i}")).unwrap();
            let cmd = Command::Reserve {
                user,
                sku: sku.clone(),
                quantity: 1,
            };
            s.apply(1 + i, 1000 + i, &rec(100 + u128::from(i), cmd), &mut ev);
        }
        s
    }

    #[test]
    fn the_expiry_index_must_hold_exactly_the_live_holds() {
        let s = state_with_holds(5);
        assert!(check_state(&s).is_empty());

        // A live hold missing from its queue.
        let mut missing = s.clone();
        let (_, dropped) = missing
            .expiries
            .values_mut()
            .next()
            .unwrap()
            .pop_back()
            .unwrap();
        assert_eq!(
            check_state(&missing),
            vec![Violation::ExpiryIndexMismatch {
                reservation: s.rid(dropped)
            }]
        );

        // A queued entry naming no reservation.
        let mut ghost = s.clone();
        let nobody = ReservationId {
            partition: 0,
            ulid: 999_999,
        };
        ghost
            .expiries
            .values_mut()
            .next()
            .unwrap()
            .push_back((5_000, nobody.ulid));
        assert_eq!(
            check_state(&ghost),
            vec![Violation::ExpiryIndexMismatch {
                reservation: nobody
            }]
        );

        // Queued at another time than the hold's expiry: that hold is not queued.
        let mut moved = s.clone();
        let q = moved.expiries.values_mut().next().unwrap();
        let (t, id) = q.pop_front().unwrap();
        q.push_front((t + 1, id));
        assert_eq!(
            check_state(&moved),
            vec![Violation::ExpiryIndexMismatch {
                reservation: s.rid(id)
            }]
        );
    }
}
