//! The invariants of DESIGN.md as pure predicates. The core asserts them (debug builds,
//! after every apply, for what the record touched); snapshots are checked with
//! [`check_state`] before they are written and after they are read; the simulation
//! tests and `flashsale audit` call the same functions.
//!
//! 1. per SKU: sold + held ≤ total (so available = total − sold − held ≥ 0);
//! 2. per (user, SKU): held + bought ≤ perUserLimit;
//! 3. RESERVED → CONFIRMED | EXPIRED | CANCELLED, terminal states never change
//!    (structural in `core`; here: the expiry index holds exactly the live holds);
//! 4. every confirmed reservation has exactly one order, and only those.

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
    WrongPartition {
        reservation: ReservationId,
    },
    LiveCountMismatch {
        recorded: u64,
        counted: u64,
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
    let mut queued: rustc_hash::FxHashSet<(UnixMs, ReservationId)> =
        rustc_hash::FxHashSet::with_capacity_and_hasher(
            s.expiries.values().map(|q| q.len()).sum(),
            Default::default(),
        );
    queued.extend(s.expiries.values().flatten().copied());
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
                if !queued.contains(&(r.expires_at, r.id())) {
                    out.push(Violation::ExpiryIndexMismatch {
                        reservation: r.id(),
                    });
                }
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
    for (_, id) in &queued {
        if s.reservation(id).is_none() {
            out.push(Violation::ExpiryIndexMismatch { reservation: *id });
        }
    }
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
