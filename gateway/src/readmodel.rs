//! The gateway's in-memory read model, built from the engine's events: what the hot
//! read paths (availability, reservation status, orders in embedded mode) answer from.
//! Never a database per request.
//!
//! Events of a partition are applied in offset order and duplicates (same partition,
//! offset) dropped; a reservation keeps the offset of its newest change so that a
//! reply applied early (read-your-writes) is never overwritten by an older event.

use dashmap::DashMap;
use flashsale_core::State;
use flashsale_proto::*;
use flashsale_runtime::metrics::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The read model's maps. foldhash instead of the default SipHash: every request looks
/// keys up here (SipHash was ~1 % of a sold-out attempt's CPU), and its per-process
/// random seed still keeps keys chosen by buyers (user ids) from being aimed at one
/// bucket.
type Map<K, V> = DashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProductEntry {
    pub spec: ProductSpec,
    pub sale_id: SaleId,
    pub starts_at: UnixMs,
    pub ends_at: UnixMs,
    pub held: u64,
    pub sold: u64,
    /// Paused by an operator: new holds are refused.
    pub paused: bool,
}

impl ProductEntry {
    pub fn available(&self) -> u64 {
        self.spec
            .total_inventory
            .saturating_sub(self.held + self.sold)
    }
}

#[derive(Debug, Clone)]
pub struct SaleEntry {
    pub meta: SaleMeta,
}

#[derive(Debug)]
pub struct ReadModel {
    products: Map<SkuId, ProductEntry>,
    sales: Map<SaleId, SaleEntry>,
    reservations: Map<ReservationId, Kept>,
    orders: Map<OrderId, OrderView>,
    user_orders: Map<UserId, Vec<OrderId>>,
    /// Units each user holds or bought per SKU (RESERVED + CONFIRMED reservations), so
    /// the sold-out fast path keeps docs/api.md's precedence: "Purchase Limit Exceeded"
    /// before "Out of Stock".
    used: Map<(UserId, SkuId), u32>,
    /// Next event offset expected per partition.
    next_offset: Vec<AtomicU64>,
    metrics: Arc<Metrics>,
    /// Reservation outcomes and stock-outs per SKU, for the console's stream.
    activity: crate::stream::Activity,
}

impl ReadModel {
    pub fn new(partitions: u32, metrics: Arc<Metrics>) -> Self {
        ReadModel {
            products: Map::default(),
            sales: Map::default(),
            reservations: Map::default(),
            orders: Map::default(),
            user_orders: Map::default(),
            used: Map::default(),
            next_offset: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            metrics,
            activity: crate::stream::Activity::default(),
        }
    }

    /// What the events said happened per SKU (the console's rates and stock-outs).
    pub fn activity(&self) -> &crate::stream::Activity {
        &self.activity
    }

    pub fn product(&self, sku: &SkuId) -> Option<ProductEntry> {
        let r = self.products.get(sku).map(|p| p.clone());
        self.metrics.readmodel_lookup(r.is_some());
        r
    }
    /// `f` of the product, read in place (no copy of its strings): the availability
    /// read's path, the hottest read of a sale.
    pub fn with_product<R>(&self, sku: &SkuId, f: impl FnOnce(&ProductEntry) -> R) -> Option<R> {
        let r = self.products.get(sku).map(|p| f(&p));
        self.metrics.readmodel_lookup(r.is_some());
        r
    }
    pub fn products(&self) -> Vec<ProductEntry> {
        let mut v: Vec<ProductEntry> = self.products.iter().map(|e| e.value().clone()).collect();
        v.sort_by(|a, b| a.spec.sku.cmp(&b.spec.sku));
        v
    }
    pub fn has_products(&self) -> bool {
        !self.products.is_empty()
    }
    pub fn sale(&self, id: &SaleId) -> Option<(SaleEntry, Vec<ProductEntry>)> {
        let s = self.sales.get(id)?.clone();
        let products = s
            .meta
            .all_skus
            .iter()
            .filter_map(|k| self.products.get(k).map(|p| p.clone()))
            .collect();
        Some((s, products))
    }
    /// Every sale with its products, newest first (sale ids are ULIDs: creation order).
    pub fn sales(&self) -> Vec<(SaleEntry, Vec<ProductEntry>)> {
        let mut ids: Vec<SaleId> = self.sales.iter().map(|e| *e.key()).collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.iter().filter_map(|id| self.sale(id)).collect()
    }
    /// Forgets a deleted sale's products (those of `skus` still owned by it) and the
    /// sale: applied from its `SaleDropped` event, and at once by the gateway that
    /// deleted it (read-your-writes: its SKUs are free for the next sale at once).
    /// The sale stays listed while a product of it is left (a deletion one partition
    /// refused or did not answer), so it can be seen and deleted again.
    pub fn drop_sale(&self, sale_id: SaleId, skus: &[SkuId]) {
        for s in skus {
            self.products.remove_if(s, |_, p| p.sale_id == sale_id);
        }
        self.sales.remove_if(&sale_id, |_, s| {
            !s.meta
                .all_skus
                .iter()
                .any(|k| self.products.get(k).is_some_and(|p| p.sale_id == sale_id))
        });
    }
    /// The sale a SKU belongs to, if any.
    pub fn sale_of(&self, sku: &SkuId) -> Option<SaleId> {
        self.products.get(sku).map(|p| p.sale_id)
    }
    pub fn reservation(&self, id: &ReservationId) -> Option<ReservationView> {
        let r = self.reservations.get(id).map(|r| r.view(*id));
        self.metrics.readmodel_lookup(r.is_some());
        r
    }
    pub fn order(&self, id: &OrderId) -> Option<OrderView> {
        self.orders.get(id).map(|o| o.clone())
    }
    /// Newest first.
    pub fn orders_of(&self, user: &UserId) -> Vec<OrderView> {
        let ids = self
            .user_orders
            .get(user)
            .map(|v| v.clone())
            .unwrap_or_default();
        let mut v: Vec<OrderView> = ids.iter().filter_map(|id| self.order(id)).collect();
        v.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then(b.order_id.cmp(&a.order_id))
        });
        v
    }

    /// A reservation as of `version` (the offset of the record that produced it).
    pub fn upsert_reservation(&self, view: &ReservationView, version: u64) {
        let mut before = None;
        let mut changed = false;
        self.reservations
            .entry(view.id)
            .and_modify(|e| {
                if version >= e.version {
                    before = Some(e.counted());
                    changed = true;
                    *e = Kept::new(view, version);
                }
            })
            .or_insert_with(|| {
                before = Some(0);
                changed = true;
                Kept::new(view, version)
            });
        if changed {
            self.count_use(view, before.unwrap_or(0), counted(view));
        }
    }

    fn count_use(&self, view: &ReservationView, before: u32, after: u32) {
        if before == after {
            return;
        }
        let key = (view.user.clone(), view.sku.clone());
        if after > before {
            *self.used.entry(key).or_insert(0) += after - before;
        } else if let dashmap::Entry::Occupied(mut e) = self.used.entry(key) {
            let left = e.get().saturating_sub(before - after);
            if left == 0 {
                e.remove();
            } else {
                *e.get_mut() = left;
            }
        }
    }

    /// The sold-out fast path (docs/sales.md, "Semantics worth knowing"): the engine's answer to a
    /// reservation attempt, decided here when the read model already knows it, so the
    /// crowd of attempts on a sold-out product costs about what a read costs and never
    /// reaches the log. `Some` only when every earlier check of docs/api.md's precedence is
    /// known to pass (the product exists and is not paused, its sale is open with a second's margin on
    /// either side of the window so the engine's clock cannot disagree, this user is
    /// within the limit) and fewer units than asked are unheld. Anything in doubt goes
    /// to the engine. The model is at most ~100 ms behind the engine (docs/api.md), so a
    /// unit freed by an expiry a moment ago may be refused as it would have been a
    /// moment earlier; it is never held or sold here.
    pub fn refuse_sold_out(
        &self,
        user: &UserId,
        sku: &SkuId,
        quantity: u32,
        now: UnixMs,
    ) -> Option<Rejection> {
        const CLOCK_MARGIN_MS: u64 = 1_000;
        let p = self.products.get(sku)?;
        let available = p.available();
        if u64::from(quantity) <= available
            || p.paused
            || now < p.starts_at.saturating_add(CLOCK_MARGIN_MS)
            || now.saturating_add(CLOCK_MARGIN_MS) >= p.ends_at
        {
            return None;
        }
        let limit = p.spec.per_user_limit;
        drop(p);
        let used = self
            .used
            .get(&(user.clone(), sku.clone()))
            .map_or(0, |u| *u);
        if u64::from(used) + u64::from(quantity) > u64::from(limit) {
            return None;
        }
        Some(Rejection::OutOfStock {
            sku: sku.clone(),
            requested: quantity,
            available,
        })
    }

    pub fn insert_order(&self, o: &OrderView) {
        if self.orders.insert(o.order_id, o.clone()).is_none() {
            self.user_orders
                .entry(o.user.clone())
                .or_default()
                .push(o.order_id);
        }
    }

    fn insert_sale(&self, cfg: &SaleConfig) {
        self.sales.insert(
            cfg.sale.sale_id,
            SaleEntry {
                meta: cfg.sale.clone(),
            },
        );
        for spec in &cfg.products {
            self.products.insert(
                spec.sku.clone(),
                ProductEntry {
                    spec: spec.clone(),
                    sale_id: cfg.sale.sale_id,
                    starts_at: cfg.sale.starts_at,
                    ends_at: cfg.sale.ends_at,
                    held: 0,
                    sold: 0,
                    paused: false,
                },
            );
            self.metrics
                .set_available(spec.sku.as_str(), spec.total_inventory);
        }
    }

    /// Applies a control's reply at once (read-your-writes for the operator); the
    /// events that follow carry the same absolute figures. Returns the product after.
    pub fn apply_figures(&self, f: &ProductFigures) -> Option<ProductEntry> {
        let mut p = self.products.get_mut(&f.sku)?;
        p.spec.total_inventory = f.total;
        p.held = f.held;
        p.sold = f.sold;
        p.paused = f.paused;
        p.ends_at = f.ends_at;
        self.metrics.set_available(f.sku.as_str(), p.available());
        Some(p.clone())
    }

    /// Applies an `EndSale` reply at once (the `SaleEnded` event repeats it).
    pub fn end_sale(&self, sale_id: SaleId, ends_at: UnixMs) {
        let skus = match self.sales.get_mut(&sale_id) {
            Some(mut s) => {
                s.meta.ends_at = s.meta.ends_at.min(ends_at);
                s.meta.all_skus.clone()
            }
            None => return,
        };
        for sku in skus {
            if let Some(mut p) = self.products.get_mut(&sku) {
                if p.sale_id == sale_id {
                    p.ends_at = p.ends_at.min(ends_at);
                }
            }
        }
    }

    /// The next command offset of `partition` whose events are not applied yet: every
    /// event of a command at a lower offset is in the model.
    pub fn applied_through(&self, partition: u32) -> u64 {
        self.next_offset
            .get(partition as usize)
            .map_or(0, |n| n.load(Ordering::Acquire))
    }

    /// Applies one partition's event record; drops it if already applied.
    pub fn apply(&self, rec: &EventRecord) {
        let Some(next) = self.next_offset.get(rec.partition as usize) else {
            tracing::warn!(
                partition = rec.partition,
                "event for a partition this gateway does not know"
            );
            return;
        };
        if rec.offset < next.load(Ordering::Acquire) {
            return;
        }
        next.store(rec.offset + 1, Ordering::Release);
        self.activity.observe(rec);
        for ev in &rec.events {
            match ev {
                Event::SaleConfigured(cfg) => self.insert_sale(cfg),
                Event::SaleDropped { sale_id, skus } => self.drop_sale(*sale_id, skus),
                Event::Inventory {
                    sku,
                    total,
                    held,
                    sold,
                } => {
                    if let Some(mut p) = self.products.get_mut(sku) {
                        let before = p.available();
                        p.spec.total_inventory = *total;
                        p.held = *held;
                        p.sold = *sold;
                        let after = p.available();
                        if before > 0 && after == 0 {
                            self.metrics.stockout();
                        }
                        self.metrics.set_available(sku.as_str(), after);
                    }
                }
                Event::Reservation(v) => self.upsert_reservation(v, rec.offset),
                Event::OrderCreated(o) => self.insert_order(o),
                Event::ProductPaused { sku, paused } => {
                    if let Some(mut p) = self.products.get_mut(sku) {
                        p.paused = *paused;
                    }
                }
                Event::ReservationsPruned { reservations } => {
                    self.prune(reservations);
                }
                Event::SaleEnded {
                    sale_id,
                    skus,
                    ends_at,
                } => {
                    if let Some(mut s) = self.sales.get_mut(sale_id) {
                        s.meta.ends_at = *ends_at;
                    }
                    for sku in skus {
                        if let Some(mut p) = self.products.get_mut(sku) {
                            p.ends_at = *ends_at;
                        }
                    }
                }
            }
        }
    }

    /// Forgets reservations the engine pruned (ended more than its retention ago): a
    /// read of one then answers 404, as for an unknown id. Only ended ones are removed
    /// (a pruned hold never counts toward a user's limit, so `used` is unchanged); an
    /// order is never pruned.
    fn prune(&self, ids: &[ReservationId]) {
        let mut n = 0;
        for id in ids {
            let removed = self.reservations.remove_if(id, |_, k| k.counted() == 0);
            n += u64::from(removed.is_some());
        }
        self.metrics.reservations_pruned(n);
    }

    /// Reservations the model holds (live, ordered, and ended within the retention).
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// Loads a partition's whole state (after recovery), replacing what was known.
    pub fn reset(&self, state: &State) {
        let partition = u32::from(state.partition());
        let version = state.next_offset().saturating_sub(1);
        for sale in state.sales() {
            self.sales
                .insert(sale.sale_id, SaleEntry { meta: sale.clone() });
        }
        for (sku, p) in state.products() {
            let meta = state.sales().find(|s| s.sale_id == p.sale_id()).cloned();
            let Some(meta) = meta else { continue };
            self.products.insert(
                sku.clone(),
                ProductEntry {
                    spec: p.spec().clone(),
                    sale_id: p.sale_id(),
                    starts_at: meta.starts_at,
                    ends_at: p.ends_at(),
                    held: p.held(),
                    sold: p.sold(),
                    paused: p.is_paused(),
                },
            );
            self.metrics.set_available(sku.as_str(), p.available());
        }
        for r in state.reservations() {
            self.upsert_reservation(&r.view(), version);
            if let Some(o) = r.order_view() {
                self.insert_order(&o);
            }
        }
        if let Some(n) = self.next_offset.get(partition as usize) {
            n.store(state.next_offset(), Ordering::Release);
        }
    }
}

/// Where a read-model image stands in one events partition: the events-topic offset to
/// read next, and the next command offset whose events are not in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub events_offset: u64,
    pub next_command_offset: u64,
}

/// A copy of the read model ([`ReadModel::image`]), what a read-model snapshot holds
/// (`crate::snapshot`). Derived data (per-user counts, the orders-by-user index) is
/// rebuilt by [`ReadModel::restore`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Image {
    /// One per events partition.
    pub marks: Vec<Mark>,
    pub sales: Vec<SaleMeta>,
    pub products: Vec<ProductEntry>,
    /// Each with the command offset of its newest change.
    pub reservations: Vec<(ReservationView, u64)>,
    pub orders: Vec<OrderView>,
}

impl ReadModel {
    /// Copies the model for a snapshot, taken after `marks` were read from the follower.
    ///
    /// The copy is not atomic: the follower keeps applying events while the maps are
    /// read (a snapshot never stalls it), so each entry is as of some point between
    /// `marks` and the end of the copy. Replaying the events from `marks` over it gives
    /// the same model as replaying them over an exact copy, because every write the
    /// read model does is an overwrite in log order: absolute figures (products, sales,
    /// pauses, windows), reservations versioned by command offset (an older event never
    /// overwrites a newer one), orders inserted once, removals (pruned reservations,
    /// dropped sales) repeated by the replay. Sorted, so equal models give equal images.
    pub fn image(&self, marks: Vec<Mark>) -> Image {
        let mut sales: Vec<SaleMeta> = self.sales.iter().map(|e| e.value().meta.clone()).collect();
        sales.sort_by_key(|s| s.sale_id);
        let mut products: Vec<ProductEntry> =
            self.products.iter().map(|e| e.value().clone()).collect();
        products.sort_by(|a, b| a.spec.sku.cmp(&b.spec.sku));
        let mut reservations: Vec<(ReservationView, u64)> = self
            .reservations
            .iter()
            .map(|e| (e.value().view(*e.key()), e.value().version))
            .collect();
        reservations.sort_by_key(|(v, _)| v.id);
        let mut orders: Vec<OrderView> = self.orders.iter().map(|e| e.value().clone()).collect();
        orders.sort_by_key(|o| o.order_id);
        Image {
            marks,
            sales,
            products,
            reservations,
            orders,
        }
    }

    /// Loads an image into this (new, empty) model: the follower then reads the events
    /// from the image's marks on. Rebuilds the per-user counts and order index.
    /// Forgets everything (the log it followed is gone: its topics were recreated and
    /// the gateway adopts the new one, which starts at offset 0). Availability gauges
    /// of the SKUs it knew are removed too.
    pub fn clear(&self) {
        for e in self.products.iter() {
            self.metrics.set_available(e.key().as_str(), 0);
        }
        self.products.clear();
        self.sales.clear();
        self.reservations.clear();
        self.orders.clear();
        self.user_orders.clear();
        self.used.clear();
        for n in &self.next_offset {
            n.store(0, Ordering::Release);
        }
    }

    pub fn restore(&self, image: &Image) {
        for meta in &image.sales {
            self.sales
                .insert(meta.sale_id, SaleEntry { meta: meta.clone() });
        }
        for p in &image.products {
            self.metrics
                .set_available(p.spec.sku.as_str(), p.available());
            self.products.insert(p.spec.sku.clone(), p.clone());
        }
        for (view, version) in &image.reservations {
            self.upsert_reservation(view, *version);
        }
        for o in &image.orders {
            self.insert_order(o);
        }
        for (next, mark) in self.next_offset.iter().zip(&image.marks) {
            next.store(mark.next_command_offset, Ordering::Release);
        }
    }
}

/// A reservation as the model keeps it (issue 29): its view without the id, which is
/// the map's key, and the command offset of its newest change. 80 bytes instead of the
/// 128 of `(ReservationView, u64)`; ids stay inline (`CompactString`, no allocation).
#[derive(Debug, Clone)]
struct Kept {
    user: UserId,
    sku: SkuId,
    created_at: UnixMs,
    expires_at: UnixMs,
    version: u64,
    quantity: u32,
    status: ReservationStatus,
}

impl Kept {
    fn new(v: &ReservationView, version: u64) -> Self {
        Kept {
            user: v.user.clone(),
            sku: v.sku.clone(),
            created_at: v.created_at,
            expires_at: v.expires_at,
            version,
            quantity: v.quantity,
            status: v.status,
        }
    }
    fn view(&self, id: ReservationId) -> ReservationView {
        ReservationView {
            id,
            user: self.user.clone(),
            sku: self.sku.clone(),
            quantity: self.quantity,
            status: self.status,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
    fn counted(&self) -> u32 {
        match self.status {
            ReservationStatus::Reserved | ReservationStatus::Confirmed => self.quantity,
            ReservationStatus::Expired | ReservationStatus::Cancelled => 0,
        }
    }
}

/// Units a reservation holds or bought, for the per-user counts.
fn counted(v: &ReservationView) -> u32 {
    match v.status {
        ReservationStatus::Reserved | ReservationStatus::Confirmed => v.quantity,
        ReservationStatus::Expired | ReservationStatus::Cancelled => 0,
    }
}
