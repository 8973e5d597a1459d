//! The pure state machine: `State::apply(offset, log_time, record) -> reply (+ events)`.
//!
//! No I/O, no clock, no randomness, no tokio: the state after applying a log prefix is
//! a function of that prefix alone. Time is the log time of the record being applied;
//! ids are derived from the request id stamped by the gateway. This is what makes zero
//! oversell checkable, replay exact and simulation cheap.

#[cfg(debug_assertions)]
use crate::invariants;
use crate::keys::IdempotencyKeys;
use flashsale_proto::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub(crate) spec: ProductSpec,
    pub(crate) sale_id: SaleId,
    pub(crate) starts_at: UnixMs,
    pub(crate) ends_at: UnixMs,
    pub(crate) ttl_ms: u64,
    /// Units held by `RESERVED` reservations.
    pub(crate) held: u64,
    /// Units of `CONFIRMED` reservations.
    pub(crate) sold: u64,
    /// Per user: units held + bought. Zero entries are removed.
    #[serde(deserialize_with = "crate::presized::map")]
    pub(crate) per_user: FxHashMap<UserId, u32>,
    /// Longest a hold may live, extensions included, from its `created_at`.
    pub(crate) max_hold_ms: u64,
    /// Paused by an operator: new holds are refused.
    pub(crate) paused: bool,
    /// Its SKU's index in [`State::skus`] (set on load by [`State::reindex`]; not in
    /// snapshots, so a product encodes as before).
    #[serde(skip)]
    pub(crate) ix: SkuIx,
}

impl Product {
    pub fn spec(&self) -> &ProductSpec {
        &self.spec
    }
    pub fn sale_id(&self) -> SaleId {
        self.sale_id
    }
    pub fn total(&self) -> u64 {
        self.spec.total_inventory
    }
    pub fn held(&self) -> u64 {
        self.held
    }
    pub fn sold(&self) -> u64 {
        self.sold
    }
    /// `total - sold - held`; never negative while the invariants hold.
    pub fn available(&self) -> u64 {
        self.total().saturating_sub(self.sold + self.held)
    }
    pub fn used_by(&self, user: &UserId) -> u32 {
        self.per_user.get(user).copied().unwrap_or(0)
    }
    pub fn per_user(&self) -> impl Iterator<Item = (&UserId, u32)> {
        self.per_user.iter().map(|(u, n)| (u, *n))
    }
    pub fn is_paused(&self) -> bool {
        self.paused
    }
    pub fn max_hold_ms(&self) -> u64 {
        self.max_hold_ms
    }
    pub fn starts_at(&self) -> UnixMs {
        self.starts_at
    }
    pub fn ends_at(&self) -> UnixMs {
        self.ends_at
    }
    /// The figures the admin endpoints answer with.
    pub fn figures(&self) -> ProductFigures {
        ProductFigures {
            sku: self.spec.sku.clone(),
            total: self.total(),
            held: self.held,
            sold: self.sold,
            paused: self.paused,
            ends_at: self.ends_at,
        }
    }
    fn is_open(&self, now: UnixMs) -> bool {
        self.starts_at <= now && now < self.ends_at
    }
}

/// `Debug` leaves the shipping address out (personal data never reaches a log).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub order_id: OrderId,
    pub payment_transaction_id: String,
    pub payment_method: PaymentMethod,
    pub shipping_address: String,
    pub total_price: Cents,
    pub created_at: UnixMs,
}

impl std::fmt::Debug for OrderRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderRecord")
            .field("order_id", &self.order_id)
            .field("payment_transaction_id", &self.payment_transaction_id)
            .field("payment_method", &self.payment_method)
            .field("shipping_address", &flashsale_proto::REDACTED)
            .field("total_price", &self.total_price)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// Index of an interned SKU in [`State::skus`] (a partition sees a few hundred SKUs at
/// most; every hold names one, in 4 bytes instead of a 24-byte id).
pub(crate) type SkuIx = u32;

/// One reservation as the state keeps it: fixed-size fields, no allocation unless it
/// became an order. Its id is its map key (the request's ULID; the partition is the
/// state's), its SKU an index into [`State::skus`]. The user id stays inline (a
/// `CompactString` of up to 24 bytes, no allocation): interning it would cost ~80 bytes
/// per distinct user against 20 saved per hold, a loss when buyers hold once or twice
/// (docs/performance.md, "Memory per hold and snapshots").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hold {
    pub(crate) user: UserId,
    pub(crate) created_at: UnixMs,
    pub(crate) expires_at: UnixMs,
    pub(crate) order: Option<Box<OrderRecord>>,
    pub(crate) sku: SkuIx,
    pub(crate) quantity: u32,
    pub(crate) status: ReservationStatus,
}

/// A reservation of a [`State`], borrowed: what [`State::reservation`] and
/// [`State::reservations`] give (the state stores the compact [`Hold`]).
#[derive(Debug, Clone, Copy)]
pub struct Reservation<'a> {
    id: ReservationId,
    hold: &'a Hold,
    sku: &'a SkuId,
}

impl<'a> Reservation<'a> {
    pub fn id(&self) -> ReservationId {
        self.id
    }
    pub fn sku(&self) -> &'a SkuId {
        self.sku
    }
    pub fn user(&self) -> &'a UserId {
        &self.hold.user
    }
    pub fn quantity(&self) -> u32 {
        self.hold.quantity
    }
    pub fn status(&self) -> ReservationStatus {
        self.hold.status
    }
    pub fn created_at(&self) -> UnixMs {
        self.hold.created_at
    }
    pub fn expires_at(&self) -> UnixMs {
        self.hold.expires_at
    }
    pub fn order(&self) -> Option<&'a OrderRecord> {
        self.hold.order.as_deref()
    }
    pub fn view(&self) -> ReservationView {
        view(self.id, self.hold, self.sku)
    }
    pub fn order_view(&self) -> Option<OrderView> {
        order_view(self.id, self.hold, self.sku)
    }
}

fn view(id: ReservationId, h: &Hold, sku: &SkuId) -> ReservationView {
    ReservationView {
        id,
        user: h.user.clone(),
        sku: sku.clone(),
        quantity: h.quantity,
        status: h.status,
        created_at: h.created_at,
        expires_at: h.expires_at,
    }
}

fn order_view(id: ReservationId, h: &Hold, sku: &SkuId) -> Option<OrderView> {
    h.order.as_ref().map(|o| OrderView {
        order_id: o.order_id,
        reservation_id: id,
        user: h.user.clone(),
        sku: sku.clone(),
        quantity: h.quantity,
        total_price: o.total_price,
        payment_transaction_id: o.payment_transaction_id.clone(),
        payment_method: o.payment_method,
        shipping_address: o.shipping_address.clone(),
        created_at: o.created_at,
    })
}

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
    /// The queue whose front is due first at `now`, by (expires_at, id).
    fn due_queue(&self, now: UnixMs) -> Option<u64> {
        self.expiries
            .iter()
            .filter_map(|(ttl, q)| q.front().filter(|(t, _)| *t <= now).map(|f| (*f, *ttl)))
            .min()
            .map(|(_, ttl)| ttl)
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

    fn expire_due(&mut self, now: UnixMs, events: &mut Vec<Event>) {
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

    fn forget_old_keys(&mut self, now: UnixMs) {
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
    fn prune_ended(&mut self, now: UnixMs, events: &mut Vec<Event>) {
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

    fn reserve(
        &mut self,
        now: UnixMs,
        record: &CommandRecord,
        user: &UserId,
        sku: &SkuId,
        quantity: u32,
        events: &mut Vec<Event>,
    ) -> Reply {
        if !user.is_valid() || !sku.is_valid() || quantity == 0 || quantity > MAX_QUANTITY {
            return invalid("reserve: bad userId, skuId or quantity");
        }
        if let Some(key) = &record.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS {
                return invalid("reserve: idempotency key must be 1-128 characters");
            }
            if let Some(ulid) = self.idempotency.get(key) {
                // A remembered key names a kept reservation, made by that key's
                // request: its user, SKU and quantity are the key's.
                let r = self
                    .reservation(&self.rid(ulid))
                    .expect("a remembered key names a kept reservation");
                if r.user() != user || r.sku() != sku || r.quantity() != quantity {
                    return Reply::Rejected(Rejection::IdempotencyKeyReused);
                }
                return Reply::Reserved {
                    reservation: r.view(),
                    repeat: true,
                };
            }
        }
        let ulid = record.request_id.0;
        let id = self.rid(ulid);
        if let Some(r) = self.reservation(&id) {
            // The same request delivered twice (a producer retry): answer it again.
            return Reply::Reserved {
                reservation: r.view(),
                repeat: true,
            };
        }
        let Some(p) = self.products.get_mut(sku) else {
            return Reply::Rejected(Rejection::ProductNotFound { sku: sku.clone() });
        };
        let ix = p.ix;
        if !p.is_open(now) {
            return Reply::Rejected(Rejection::SaleNotActive {
                sku: sku.clone(),
                starts_at: p.starts_at,
                ends_at: p.ends_at,
            });
        }
        if p.paused {
            return Reply::Rejected(Rejection::ProductPaused {
                sku: sku.clone(),
                starts_at: p.starts_at,
                ends_at: p.ends_at,
            });
        }
        let used = p.used_by(user);
        let limit = p.spec.per_user_limit;
        if u64::from(used) + u64::from(quantity) > u64::from(limit) {
            return Reply::Rejected(Rejection::PurchaseLimitExceeded {
                sku: sku.clone(),
                limit,
                held: used,
            });
        }
        let available = p.available();
        if u64::from(quantity) > available {
            return Reply::Rejected(Rejection::OutOfStock {
                sku: sku.clone(),
                requested: quantity,
                available,
            });
        }
        p.held += u64::from(quantity);
        *p.per_user.entry(user.clone()).or_insert(0) += quantity;
        let expires_at = now.saturating_add(p.ttl_ms);
        let ttl_ms = p.ttl_ms;
        let r = Hold {
            user: user.clone(),
            created_at: now,
            expires_at,
            order: None,
            sku: ix,
            quantity,
            status: ReservationStatus::Reserved,
        };
        let view = view(id, &r, sku);
        events.push(Event::Reservation(view.clone()));
        events.push(inventory_event(sku, p));
        self.reservations.insert(ulid, r);
        let q = self.expiries.entry(ttl_ms).or_default();
        debug_assert!(
            q.back().is_none_or(|(t, _)| *t <= expires_at),
            "log time went back"
        );
        q.push_back((expires_at, ulid));
        self.live += 1;
        if let Some(key) = &record.idempotency_key {
            self.idempotency.insert(now, key, ulid);
        }
        Reply::Reserved {
            reservation: view,
            repeat: false,
        }
    }

    fn checkout(
        &mut self,
        now: UnixMs,
        request_id: RequestId,
        req: &CheckoutRequest,
        events: &mut Vec<Event>,
    ) -> Reply {
        if req.payment_transaction_id.is_empty()
            || req.payment_transaction_id.chars().count() > MAX_PAYMENT_ID_CHARS
            || req.shipping_address.is_empty()
            || req.shipping_address.chars().count() > MAX_ADDRESS_CHARS
        {
            return invalid("checkout: bad paymentTransactionId or shippingAddress");
        }
        let id = req.reservation;
        let Some(r) = self.reservation(&id) else {
            return Reply::Rejected(Rejection::ReservationNotFound { reservation: id });
        };
        match r.status() {
            ReservationStatus::Reserved => {}
            ReservationStatus::Confirmed => {
                let order = r.order_view().expect("a confirmed hold has an order");
                return if order.payment_transaction_id == req.payment_transaction_id {
                    Reply::CheckedOut {
                        order,
                        repeat: true,
                    }
                } else {
                    Reply::Rejected(Rejection::ReservationNotActive {
                        reservation: id,
                        status: r.status(),
                    })
                };
            }
            ReservationStatus::Expired => {
                return Reply::Rejected(Rejection::ReservationExpired {
                    reservation: id,
                    expired_at: r.expires_at(),
                })
            }
            ReservationStatus::Cancelled => {
                return Reply::Rejected(Rejection::ReservationNotActive {
                    reservation: id,
                    status: r.status(),
                })
            }
        }
        // A live hold: it is in the hot map. The order leaves it for `orders` (its
        // expiry-queue entry stays and is skipped when it falls due).
        let mut r = self
            .reservations
            .remove(&id.ulid)
            .expect("a live hold is in the hot map");
        // `expire_due` ran first, so a live hold here has not reached expires_at.
        debug_assert!(now < r.expires_at);
        let sku = &self.skus[r.sku as usize];
        let p = self.products.get_mut(sku).expect("a hold's product exists");
        let q = u64::from(r.quantity);
        r.status = ReservationStatus::Confirmed;
        r.order = Some(Box::new(OrderRecord {
            order_id: OrderId {
                partition: self.partition,
                ulid: request_id.0,
            },
            payment_transaction_id: req.payment_transaction_id.clone(),
            payment_method: req.payment_method,
            shipping_address: req.shipping_address.clone(),
            total_price: Cents(p.spec.flash_sale_price.0.saturating_mul(q)),
            created_at: now,
        }));
        p.held -= q;
        p.sold += q;
        self.live -= 1;
        let order = order_view(id, &r, sku).expect("just set");
        events.push(Event::Reservation(view(id, &r, sku)));
        events.push(inventory_event(sku, p));
        events.push(Event::OrderCreated(order.clone()));
        self.orders.insert(id.ulid, r);
        Reply::CheckedOut {
            order,
            repeat: false,
        }
    }

    fn cancel(&mut self, now: UnixMs, id: ReservationId, events: &mut Vec<Event>) -> Reply {
        let Some(r) = self.reservation(&id) else {
            return Reply::Rejected(Rejection::ReservationNotFound { reservation: id });
        };
        match r.status() {
            ReservationStatus::Reserved => {
                let r = self
                    .reservations
                    .get_mut(&id.ulid)
                    .expect("a live hold is in the hot map");
                let sku = &self.skus[r.sku as usize];
                let p = self.products.get_mut(sku).expect("a hold's product exists");
                r.status = ReservationStatus::Cancelled;
                self.ended.push_back((now, id.ulid));
                p.held -= u64::from(r.quantity);
                release_user(p, &r.user, r.quantity);
                self.live -= 1;
                let v = view(id, r, sku);
                events.push(Event::Reservation(v.clone()));
                events.push(inventory_event(sku, p));
                Reply::Cancelled { reservation: v }
            }
            ReservationStatus::Cancelled => Reply::Cancelled {
                reservation: r.view(),
            },
            ReservationStatus::Confirmed | ReservationStatus::Expired => {
                Reply::Rejected(Rejection::ReservationNotActive {
                    reservation: id,
                    status: r.status(),
                })
            }
        }
    }

    fn configure(
        &mut self,
        cfg: &SaleConfig,
        max_hold_s: Option<u32>,
        events: &mut Vec<Event>,
    ) -> Reply {
        if let Err(reason) = validate_sale(cfg) {
            return invalid(&reason);
        }
        let max_hold_s = max_hold_s.unwrap_or(default_max_hold_s(cfg.sale.reservation_ttl_s));
        if max_hold_s < cfg.sale.reservation_ttl_s || max_hold_s > MAX_TTL_S {
            return invalid("maxHoldSeconds must be reservationTtlSeconds-3600");
        }
        let sale_id = cfg.sale.sale_id;
        for spec in &cfg.products {
            if let Some(p) = self.products.get(&spec.sku) {
                if p.sale_id != sale_id {
                    return Reply::Rejected(Rejection::SkuTaken {
                        sku: spec.sku.clone(),
                        sale_id: p.sale_id,
                    });
                }
            }
        }
        if self.sales.contains_key(&sale_id) {
            // A repeat of a command already applied (a retry): nothing changes.
            return Reply::SaleConfigured { sale_id };
        }
        self.sales.insert(sale_id, cfg.sale.clone());
        let ttl_ms = u64::from(cfg.sale.reservation_ttl_s) * 1000;
        for spec in &cfg.products {
            let ix = self.intern_sku(&spec.sku);
            let p = Product {
                spec: spec.clone(),
                sale_id,
                starts_at: cfg.sale.starts_at,
                ends_at: cfg.sale.ends_at,
                ttl_ms,
                held: 0,
                sold: 0,
                per_user: FxHashMap::default(),
                max_hold_ms: u64::from(max_hold_s) * 1000,
                paused: false,
                ix,
            };
            self.products.insert(spec.sku.clone(), p);
        }
        events.push(Event::SaleConfigured(cfg.clone()));
        for spec in &cfg.products {
            events.push(inventory_event(&spec.sku, &self.products[&spec.sku]));
        }
        Reply::SaleConfigured { sale_id }
    }

    fn drop_sale(&mut self, sale_id: SaleId, events: &mut Vec<Event>) -> Reply {
        let mut skus: Vec<SkuId> = self
            .products
            .iter()
            .filter(|(_, p)| p.sale_id == sale_id)
            .map(|(s, _)| s.clone())
            .collect();
        skus.sort();
        if skus.iter().any(|s| {
            let p = &self.products[s];
            p.held + p.sold > 0
        }) {
            return Reply::Rejected(Rejection::SaleInUse { sale_id });
        }
        for s in &skus {
            self.products.remove(s);
        }
        if self.sales.remove(&sale_id).is_some() {
            events.push(Event::SaleDropped { sale_id, skus });
        }
        Reply::SaleDropped { sale_id }
    }

    fn extend(
        &mut self,
        now: UnixMs,
        id: ReservationId,
        seconds: Option<u32>,
        events: &mut Vec<Event>,
    ) -> Reply {
        if seconds.is_some_and(|s| s == 0 || s > MAX_TTL_S) {
            return invalid("extend: seconds must be 1-3600");
        }
        let Some(r) = self.reservation(&id) else {
            return Reply::Rejected(Rejection::ReservationNotFound { reservation: id });
        };
        match r.status() {
            ReservationStatus::Reserved => {}
            ReservationStatus::Expired => {
                return Reply::Rejected(Rejection::ReservationExpired {
                    reservation: id,
                    expired_at: r.expires_at(),
                })
            }
            ReservationStatus::Confirmed | ReservationStatus::Cancelled => {
                return Reply::Rejected(Rejection::ReservationNotActive {
                    reservation: id,
                    status: r.status(),
                })
            }
        }
        let r = self
            .reservations
            .get_mut(&id.ulid)
            .expect("a live hold is in the hot map");
        let sku = &self.skus[r.sku as usize];
        let p = self.products.get(sku).expect("a hold's product exists");
        let cap = r.created_at.saturating_add(p.max_hold_ms);
        if r.expires_at >= cap {
            return Reply::Rejected(Rejection::ExtensionLimitReached {
                reservation: id,
                max_expires_at: cap,
            });
        }
        let by_ms = seconds.map_or(p.ttl_ms, |s| u64::from(s) * 1000);
        let new_expiry = r.expires_at.max(now.saturating_add(by_ms)).min(cap);
        if new_expiry > r.expires_at {
            r.expires_at = new_expiry;
            // Its old queue entry stays and is skipped when it falls due (its time no
            // longer matches). The new one gets a queue of its own time, so each queue
            // stays sorted; the high bit keeps those keys apart from the TTL queues.
            self.expiries
                .entry(EXTENDED_QUEUE | new_expiry)
                .or_default()
                .push_back((new_expiry, id.ulid));
            events.push(Event::Reservation(view(id, r, sku)));
        }
        Reply::Extended {
            reservation: view(id, r, sku),
        }
    }

    fn adjust_inventory(&mut self, sku: &SkuId, delta: i64, events: &mut Vec<Event>) -> Reply {
        let Some(p) = self.products.get_mut(sku) else {
            return Reply::Rejected(Rejection::ProductNotFound { sku: sku.clone() });
        };
        let Some(total) = p.total().checked_add_signed(delta) else {
            return Reply::Rejected(Rejection::InventoryConflict {
                sku: sku.clone(),
                sold: p.sold,
                held: p.held,
            });
        };
        if total > MAX_INVENTORY {
            return invalid("adjust inventory: totalInventory must stay at most 1000000000");
        }
        if total < p.sold + p.held {
            return Reply::Rejected(Rejection::InventoryConflict {
                sku: sku.clone(),
                sold: p.sold,
                held: p.held,
            });
        }
        p.spec.total_inventory = total;
        events.push(inventory_event(sku, p));
        Reply::ProductControlled(p.figures())
    }

    fn set_paused(&mut self, sku: &SkuId, paused: bool, events: &mut Vec<Event>) -> Reply {
        let Some(p) = self.products.get_mut(sku) else {
            return Reply::Rejected(Rejection::ProductNotFound { sku: sku.clone() });
        };
        if p.paused != paused {
            p.paused = paused;
            events.push(Event::ProductPaused {
                sku: sku.clone(),
                paused,
            });
        }
        Reply::ProductControlled(p.figures())
    }

    fn end_sale(&mut self, now: UnixMs, sale_id: SaleId, events: &mut Vec<Event>) -> Reply {
        let Some(meta) = self.sales.get_mut(&sale_id) else {
            return invalid("end sale: no such sale on this partition");
        };
        // `ends_at` = now, but never before the start (a sale ended before it opened
        // simply never opens) and never later than it was.
        let ends_at = now.clamp(meta.starts_at, meta.ends_at);
        if ends_at == meta.ends_at {
            return Reply::SaleEnded { sale_id, ends_at };
        }
        meta.ends_at = ends_at;
        let mut skus: Vec<SkuId> = Vec::new();
        for (sku, p) in self.products.iter_mut() {
            if p.sale_id == sale_id {
                p.ends_at = ends_at;
                skus.push(sku.clone());
            }
        }
        skus.sort();
        events.push(Event::SaleEnded {
            sale_id,
            skus,
            ends_at,
        });
        Reply::SaleEnded { sale_id, ends_at }
    }

    /// `DeleteSale` (docs/api.md: DELETE of a sale no reservation touched): removes the
    /// sale's products on this partition and frees their SKUs, unless a reservation of
    /// them exists here (any status: a held, sold, cancelled or expired one). The count
    /// is a scan of this partition's reservations: an operator's call, rare, and it
    /// keeps the snapshot layout as it is. The reply carries what was removed so the
    /// gateway can restore it exactly if another partition of the sale refuses.
    fn delete_sale(&mut self, sale_id: SaleId, events: &mut Vec<Event>) -> Reply {
        let Some(meta) = self.sales.get(&sale_id) else {
            // Nothing here (never configured on this partition, or already deleted:
            // a retry answers the same).
            return Reply::SaleDeleted {
                sale_id,
                removed: None,
            };
        };
        let mut skus: Vec<SkuId> = self
            .products
            .iter()
            .filter(|(_, p)| p.sale_id == sale_id)
            .map(|(s, _)| s.clone())
            .collect();
        skus.sort();
        let reservations = self
            .reservations()
            .filter(|r| skus.binary_search(r.sku()).is_ok())
            .count() as u64;
        let units = skus.iter().any(|s| {
            let p = &self.products[s];
            p.held + p.sold > 0
        });
        if reservations > 0 || units {
            return Reply::Rejected(Rejection::SaleHasReservations {
                sale_id,
                reservations,
            });
        }
        let config = SaleConfig {
            sale: meta.clone(),
            products: skus.iter().map(|s| self.products[s].spec.clone()).collect(),
        };
        let max_hold_s = skus
            .first()
            .map(|s| (self.products[s].max_hold_ms / 1000) as u32)
            .unwrap_or_else(|| default_max_hold_s(meta.reservation_ttl_s));
        let paused = skus
            .iter()
            .filter(|s| self.products[*s].paused)
            .cloned()
            .collect();
        for s in &skus {
            self.products.remove(s);
        }
        self.sales.remove(&sale_id);
        events.push(Event::SaleDropped { sale_id, skus });
        Reply::SaleDeleted {
            sale_id,
            removed: Some(RemovedSale {
                config,
                max_hold_s,
                paused,
            }),
        }
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

/// Key bit of the expiry queues of extended holds (one queue per expiry time).
const EXTENDED_QUEUE: u64 = 1 << 63;
/// Largest `totalInventory` (docs/api.md, sale creation).
pub const MAX_INVENTORY: u64 = 1_000_000_000;

/// A sale's max hold when it sets none: twice the TTL, within [TTL, 3600 s].
pub fn default_max_hold_s(ttl_s: u32) -> u32 {
    ttl_s.saturating_mul(2).min(MAX_TTL_S).max(ttl_s)
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

/// The wire rules of a `ConfigureSale` (the gateway checks the same, with user-facing
/// messages; this guards against other producers).
pub fn validate_sale(cfg: &SaleConfig) -> Result<(), String> {
    let s = &cfg.sale;
    if cfg.products.is_empty() || cfg.products.len() > MAX_PRODUCTS_PER_SALE {
        return Err("a sale has 1-100 products".into());
    }
    if s.all_skus.len() > MAX_PRODUCTS_PER_SALE {
        return Err("a sale has 1-100 products".into());
    }
    if s.ends_at <= s.starts_at {
        return Err("endsAt must be after startsAt".into());
    }
    if s.reservation_ttl_s == 0 || s.reservation_ttl_s > MAX_TTL_S {
        return Err("reservationTtlSeconds must be 1-3600".into());
    }
    if s.name.len() > MAX_TEXT_CHARS {
        return Err("sale name too long".into());
    }
    let mut seen = BTreeSet::new();
    for p in &cfg.products {
        if !p.sku.is_valid() || !seen.insert(&p.sku) {
            return Err(format!("bad or duplicate skuId {}", p.sku));
        }
        if p.flash_sale_price > p.base_price {
            return Err(format!("{}: flashSalePrice above basePrice", p.sku));
        }
        if p.per_user_limit == 0 {
            return Err(format!("{}: perUserLimit must be at least 1", p.sku));
        }
        if [&p.name, &p.description, &p.category, &p.image_url]
            .iter()
            .any(|t| t.len() > MAX_TEXT_CHARS)
        {
            return Err(format!("{}: a text field is too long", p.sku));
        }
    }
    Ok(())
}
