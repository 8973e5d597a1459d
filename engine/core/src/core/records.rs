//! What the state keeps: a [`Product`] (its spec and counters), an [`OrderRecord`], the
//! compact [`Hold`] stored per reservation and the borrowed [`Reservation`] handed out,
//! with the views (`ReservationView`, `OrderView`) built from them.

#[cfg(doc)]
use super::State;
use flashsale_proto::*;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

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
    pub(super) fn is_open(&self, now: UnixMs) -> bool {
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
    pub(super) id: ReservationId,
    pub(super) hold: &'a Hold,
    pub(super) sku: &'a SkuId,
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

pub(super) fn view(id: ReservationId, h: &Hold, sku: &SkuId) -> ReservationView {
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

pub(super) fn order_view(id: ReservationId, h: &Hold, sku: &SkuId) -> Option<OrderView> {
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
