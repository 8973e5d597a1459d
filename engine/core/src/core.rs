//! The pure state machine: `State::apply(offset, log_time, record) -> reply (+ events)`.
//!
//! No I/O, no clock, no randomness, no tokio: the state after applying a log prefix is
//! a function of that prefix alone. Time is the log time of the record being applied;
//! ids are derived from the request id stamped by the gateway. This is what makes zero
//! oversell checkable, replay exact and simulation cheap.
//!
//! This file holds the limits, [`State`] with its read side and [`State::apply`], the
//! dispatcher; the rest is split by concern: `records` (what the state keeps per product
//! and per reservation), `holds` (reserve, checkout, cancel, extend), `sales` (configure,
//! drop, end and delete a sale; an operator's inventory and pause controls) and `expiry`
//! (holds falling due, forgetting old idempotency keys and ended reservations).

#[cfg(debug_assertions)]
use crate::invariants;
use crate::keys::IdempotencyKeys;
use flashsale_proto::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod expiry;
mod holds;
mod records;
mod sales;

use records::{order_view, view};
pub(crate) use records::{Hold, SkuIx};
pub use records::{OrderRecord, Product, Reservation};
pub use sales::{default_max_hold_s, validate_sale};

/// Idempotency keys, and expired or cancelled reservations, are remembered for this
/// long of log time by default (ARCHITECTURE.md): the retention of a new [`State`].
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 60 * 60 * 1000;
/// Shortest retention a partition accepts (a retry of a request whose hold was already
/// cancelled and forgotten would hold again: the retention must outlast any retry).
pub const MIN_RETENTION_MS: u64 = 1_000;
/// Longest retention a partition accepts (30 days).
pub const MAX_RETENTION_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Longest idempotency key (docs/api.md).
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
pub const MAX_PRODUCTS_PER_SALE: usize = 100;
pub const MAX_TTL_S: u32 = 3600;
pub const MAX_PAYMENT_ID_CHARS: usize = 128;
pub const MAX_ADDRESS_CHARS: usize = 500;
/// Bound on free-text fields of a product (name, description, ...), so one sale cannot
/// blow up a partition's memory.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Largest `totalInventory` (docs/api.md, sale creation).
pub const MAX_INVENTORY: u64 = 1_000_000_000;

/// One partition's inventory, reservations and orders. Owned by exactly one actor.
///
/// Memory (issue 29): holds are compact [`Hold`]s keyed by their ULID; orders leave
/// the hot map for [`State::orders`] when they are made, so the hot map holds only
/// live holds and ended ones within the retention (bounded by TTL + retention, sized
/// once the sale is warm: no rehash of a growing map on the actor's path), while the
/// orders, which only grow, live in a B-tree that never rehashes. Per-user counts stay
/// in [`Product`] (exact: they do not depend on where a reservation is kept), and an
/// idempotency key maps to the reservation alone (its user, SKU and quantity are the
/// reservation's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub(crate) partition: u16,
    /// Log time of the last applied record (never decreases).
    pub(crate) clock: UnixMs,
    /// Offset of the next record to apply.
    pub(crate) next_offset: u64,
    pub(crate) sales: BTreeMap<SaleId, SaleMeta>,
    pub(crate) products: FxHashMap<SkuId, Product>,
    /// Interned SKUs: a [`Hold`]'s `sku` indexes this. Append-only (a SKU is added when
    /// a sale configures it; bounded by the sales configured on the partition).
    pub(crate) skus: Vec<SkuId>,
    /// Live holds and ended (expired, cancelled) ones within the retention, by ULID.
    #[serde(deserialize_with = "crate::presized::map")]
    pub(crate) reservations: FxHashMap<u128, Hold>,
    /// Confirmed reservations (orders), by ULID: never pruned (the read model and
    /// checkout retries answer from them).
    pub(crate) orders: BTreeMap<u128, Hold>,
    /// Expiry queues, one per TTL. Log time never goes back, so within one TTL the
    /// expiry times arrive in order: a FIFO is already sorted (O(1) insert, unlike a
    /// tree). Holds that end early (checkout, cancel) stay queued and are skipped when
    /// they reach the front. Expiry order is (expires_at, id) across queues.
    pub(crate) expiries: BTreeMap<u64, VecDeque<(UnixMs, u128)>>,
    /// Number of `RESERVED` reservations.
    pub(crate) live: u64,
    /// Idempotency keys within the retention, each naming the reservation it made.
    /// Boxed: the state travels by value in the Kafka host's actions.
    pub(crate) idempotency: Box<IdempotencyKeys>,
    /// Expired and cancelled reservations in the order they ended, with the log time
    /// they ended at: they are forgotten (pruned) `retention_ms` later. Log time never
    /// goes back, so the FIFO is sorted by that time.
    pub(crate) ended: VecDeque<(UnixMs, u128)>,
    /// Ended holds past their retention whose expiry-queue entries are still queued (a
    /// hold cancelled before its `expires_at`): pruned once log time reaches that
    /// `expires_at`, so no queued entry ever names a pruned hold. By (expires_at, id).
    pub(crate) deferred: BTreeSet<(UnixMs, u128)>,
    /// How long idempotency keys and ended (expired, cancelled) reservations are kept,
    /// in log time. One setting for both: a key is taken no later than its hold ends,
    /// so a remembered key always names a kept reservation.
    pub(crate) retention_ms: u64,
    /// Reservations pruned since the partition began (travels in snapshots).
    pub(crate) pruned_total: u64,
}

impl State {
    pub fn new(partition: u16) -> Self {
        State {
            partition,
            clock: 0,
            next_offset: 0,
            sales: BTreeMap::new(),
            products: FxHashMap::default(),
            skus: Vec::new(),
            reservations: FxHashMap::default(),
            orders: BTreeMap::new(),
            expiries: BTreeMap::new(),
            live: 0,
            idempotency: Box::default(),
            ended: VecDeque::new(),
            deferred: BTreeSet::new(),
            retention_ms: IDEMPOTENCY_RETENTION_MS,
            pruned_total: 0,
        }
    }

    /// Sets what snapshots do not carry after decoding: each product's SKU index.
    /// Refuses interned SKUs listed twice and products whose SKU is not interned.
    pub(crate) fn reindex(&mut self) -> Result<(), String> {
        let ix: FxHashMap<&SkuId, SkuIx> = self
            .skus
            .iter()
            .enumerate()
            .map(|(i, s)| (s, i as SkuIx))
            .collect();
        if ix.len() != self.skus.len() {
            return Err("a SKU is interned twice".into());
        }
        for (sku, p) in self.products.iter_mut() {
            p.ix = *ix
                .get(sku)
                .ok_or_else(|| format!("product {sku} is not interned"))?;
        }
        Ok(())
    }

    /// The interned index of `sku`, interning it if new (a linear search: SKUs are
    /// interned when a sale is configured, a few hundred per partition at most).
    pub(crate) fn intern_sku(&mut self, sku: &SkuId) -> SkuIx {
        if let Some(i) = self.skus.iter().position(|s| s == sku) {
            return i as SkuIx;
        }
        self.skus.push(sku.clone());
        (self.skus.len() - 1) as SkuIx
    }

    /// The full id of the reservation with this ULID on this partition.
    pub(crate) fn rid(&self, ulid: u128) -> ReservationId {
        ReservationId {
            partition: self.partition,
            ulid,
        }
    }

    fn hold(&self, ulid: u128) -> Option<&Hold> {
        self.reservations
            .get(&ulid)
            .or_else(|| self.orders.get(&ulid))
    }

    /// A new partition state keeping idempotency keys and ended reservations for
    /// `retention_ms` of log time (clamped to [`MIN_RETENTION_MS`, `MAX_RETENTION_MS`]).
    pub fn with_retention(partition: u16, retention_ms: u64) -> Self {
        let mut s = State::new(partition);
        s.set_retention_ms(retention_ms);
        s
    }

    /// Changes the retention (an operator's setting, applied after loading a snapshot
    /// taken with another). Clamped to [`MIN_RETENTION_MS`, `MAX_RETENTION_MS`]. What
    /// the new setting makes overdue is pruned by the next record applied.
    pub fn set_retention_ms(&mut self, retention_ms: u64) {
        self.retention_ms = retention_ms.clamp(MIN_RETENTION_MS, MAX_RETENTION_MS);
    }
    pub fn retention_ms(&self) -> u64 {
        self.retention_ms
    }
    /// Expired and cancelled reservations still kept (pruned `retention_ms` after
    /// they ended).
    pub fn ended_reservations(&self) -> usize {
        self.ended.len() + self.deferred.len()
    }
    /// Reservations pruned since the partition began.
    pub fn pruned_total(&self) -> u64 {
        self.pruned_total
    }
    /// Log time at which the oldest kept ended reservation ended, if any.
    pub fn oldest_ended_at(&self) -> Option<UnixMs> {
        self.ended.front().map(|(t, _)| *t)
    }

    pub fn partition(&self) -> u16 {
        self.partition
    }
    pub fn clock(&self) -> UnixMs {
        self.clock
    }
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }
    pub fn sales(&self) -> impl Iterator<Item = &SaleMeta> {
        self.sales.values()
    }
    pub fn product(&self, sku: &SkuId) -> Option<&Product> {
        self.products.get(sku)
    }
    pub fn products(&self) -> impl Iterator<Item = (&SkuId, &Product)> {
        self.products.iter()
    }
    pub fn reservation(&self, id: &ReservationId) -> Option<Reservation<'_>> {
        if id.partition != self.partition {
            return None;
        }
        self.hold(id.ulid).map(|h| self.borrow(id.ulid, h))
    }
    fn borrow<'a>(&'a self, ulid: u128, hold: &'a Hold) -> Reservation<'a> {
        Reservation {
            id: self.rid(ulid),
            hold,
            sku: &self.skus[hold.sku as usize],
        }
    }
    /// Every reservation kept: the hot ones (live, ended within the retention), then
    /// the orders.
    pub fn reservations(&self) -> impl Iterator<Item = Reservation<'_>> {
        self.reservations
            .iter()
            .chain(self.orders.iter())
            .map(|(u, h)| self.borrow(*u, h))
    }
    /// Reservations kept: live holds, orders, and ended ones within the retention.
    pub fn reservation_count(&self) -> usize {
        self.reservations.len() + self.orders.len()
    }
    /// Orders (confirmed reservations) kept.
    pub fn order_count(&self) -> usize {
        self.orders.len()
    }
    pub fn live_reservations(&self) -> u64 {
        self.live
    }
    /// Idempotency keys remembered.
    pub fn idempotency_keys(&self) -> usize {
        self.idempotency.len()
    }
    /// True while ticks are needed to expire holds on time.
    pub fn needs_ticks(&self) -> bool {
        self.live > 0
    }
    /// When the next queued hold falls due, if any (it may have ended early; a tick
    /// then changes nothing).
    pub fn next_expiry(&self) -> Option<UnixMs> {
        self.expiries
            .values()
            .filter_map(|q| q.front().map(|(t, _)| *t))
            .min()
    }

    /// About how many bytes a snapshot of this state takes, from its counts (O(1)):
    /// what the snapshot cadence weighs the log's growth against
    /// ([`crate::actor::SnapshotPolicy`]). Per-entry figures from
    /// `engine/benches/state_size.rs`, rounded up.
    pub fn approx_snapshot_bytes(&self) -> u64 {
        let holds = self.reservations.len() as u64;
        let orders = self.orders.len() as u64;
        let keys = self.idempotency.len() as u64;
        4096 + holds * 100 + orders * 210 + keys * 70
    }
    /// Applies one command record at log `offset` and log time `log_time`; appends what
    /// changed to `events` and returns the reply. Records must come in log order;
    /// a record at an offset already applied is a caller bug.
    pub fn apply(
        &mut self,
        offset: u64,
        log_time: UnixMs,
        record: &CommandRecord,
        events: &mut Vec<Event>,
    ) -> Reply {
        assert!(
            offset >= self.next_offset,
            "offset {offset} applied twice (next is {})",
            self.next_offset
        );
        self.next_offset = offset + 1;
        // The clock never goes back, whatever the producer's timestamps say.
        self.clock = self.clock.max(log_time);
        let now = self.clock;
        self.expire_due(now, events);
        self.forget_old_keys(now);
        self.prune_ended(now, events);
        let reply = match &record.command {
            Command::Reserve {
                user,
                sku,
                quantity,
            } => self.reserve(now, record, user, sku, *quantity, events),
            Command::Checkout(req) => self.checkout(now, record.request_id, req, events),
            Command::Cancel { reservation } => self.cancel(now, *reservation, events),
            Command::ConfigureSale(cfg) => self.configure(cfg, None, events),
            Command::DropSale { sale_id } => self.drop_sale(*sale_id, events),
            Command::Tick => Reply::Ticked,
            Command::Extend {
                reservation,
                seconds,
            } => self.extend(now, *reservation, *seconds, events),
            Command::AdjustInventory { sku, delta } => self.adjust_inventory(sku, *delta, events),
            Command::PauseProduct { sku } => self.set_paused(sku, true, events),
            Command::ResumeProduct { sku } => self.set_paused(sku, false, events),
            Command::EndSale { sale_id } => self.end_sale(now, *sale_id, events),
            Command::ConfigureSaleWith { config, max_hold_s } => {
                self.configure(config, Some(*max_hold_s), events)
            }
            Command::DeleteSale { sale_id } => self.delete_sale(*sale_id, events),
        };
        #[cfg(debug_assertions)]
        self.assert_touched(record);
        reply
    }

    /// Debug builds check, after every apply, the invariants the record could have
    /// broken: its product's counters and its user's limit.
    #[cfg(debug_assertions)]
    fn assert_touched(&self, record: &CommandRecord) {
        let of = |id: &ReservationId| match self.reservation(id) {
            Some(r) => (Some(r.sku().clone()), Some(r.user().clone())),
            None => (None, None),
        };
        let (sku, user) = match &record.command {
            Command::Reserve { sku, user, .. } => (Some(sku.clone()), Some(user.clone())),
            Command::Checkout(c) => of(&c.reservation),
            Command::Cancel { reservation } => of(reservation),
            Command::Extend { reservation, .. } => of(reservation),
            Command::AdjustInventory { sku, .. } => (Some(sku.clone()), None),
            _ => (None, None),
        };
        invariants::check_retention(self).unwrap_or_else(|v| panic!("invariant broken: {v}"));
        if let Some(p) = sku.as_ref().and_then(|s| self.products.get(s)) {
            invariants::check_product(p).unwrap_or_else(|v| panic!("invariant broken: {v}"));
            if let Some(u) = &user {
                invariants::check_user_limit(p, u)
                    .unwrap_or_else(|v| panic!("invariant broken: {v}"));
            }
        }
    }
}

fn release_user(p: &mut Product, user: &UserId, q: u32) {
    let n = p
        .per_user
        .get_mut(user)
        .expect("a hold counts for its user");
    *n = n
        .checked_sub(q)
        .expect("a user never releases more than they hold");
    if *n == 0 {
        p.per_user.remove(user);
    }
}

fn inventory_event(sku: &SkuId, p: &Product) -> Event {
    Event::Inventory {
        sku: sku.clone(),
        total: p.total(),
        held: p.held,
        sold: p.sold,
    }
}

fn invalid(reason: &str) -> Reply {
    Reply::Rejected(Rejection::Invalid {
        reason: reason.to_string(),
    })
}
