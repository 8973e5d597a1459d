//! Commands (gateway → engine), replies (engine → the asking gateway) and events
//! (engine → everyone who follows the `events` topic).

use crate::ids::*;
use serde::{Deserialize, Serialize};

/// What a gateway (or any producer) puts on the `commands` log, keyed by SKU: one per
/// record (`encode`), or several of one partition in one record (`BatchEncoder`), applied
/// in order at the record's offset (`schemas/commands/README.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// Unique per attempt; replies are correlated by it.
    pub request_id: RequestId,
    /// The gateway whose reply partition gets the reply. `u32::MAX`: nobody waits.
    pub reply_to: u32,
    /// The client's `Idempotency-Key`, when it gave one.
    pub idempotency_key: Option<String>,
    pub command: Command,
}

/// Nobody waits for the reply of a record with this `reply_to` (ticks, replays).
pub const NO_REPLY: u32 = u32::MAX;

impl CommandRecord {
    /// A tick: advances log time (expiries); nobody waits for its reply. Also what an
    /// undecodable record is applied as.
    pub fn tick() -> Self {
        CommandRecord {
            request_id: RequestId(0),
            reply_to: NO_REPLY,
            idempotency_key: None,
            command: Command::Tick,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Configure the products of one sale that live on this partition.
    ConfigureSale(SaleConfig),
    /// Undo a `ConfigureSale` that another partition refused (only while nothing of
    /// it is held or sold).
    DropSale {
        sale_id: SaleId,
    },
    Reserve {
        user: UserId,
        sku: SkuId,
        quantity: u32,
    },
    Checkout(CheckoutRequest),
    Cancel {
        reservation: ReservationId,
    },
    /// Advances the partition's clock; expires due holds.
    Tick,
    // New variants go at the end: bincode numbers variants by position, so records
    // already on the log keep decoding.
    /// Push a live hold's `expires_at` out to max(current, now + `seconds`), capped at
    /// `created_at` + the sale's max hold. `None`: the sale's reservation TTL.
    Extend {
        reservation: ReservationId,
        seconds: Option<u32>,
    },
    /// Add (or, negative, remove) units of a product; never below sold + held.
    AdjustInventory {
        sku: SkuId,
        delta: i64,
    },
    /// A paused product refuses new holds; live holds can still end as usual.
    PauseProduct {
        sku: SkuId,
    },
    ResumeProduct {
        sku: SkuId,
    },
    /// Close the sale on this partition now (`ends_at` = the record's log time).
    EndSale {
        sale_id: SaleId,
    },
    /// `ConfigureSale` with the settings added after version 1 of the layout.
    ConfigureSaleWith {
        config: SaleConfig,
        /// Longest a hold may live counting extensions, from its `created_at`.
        max_hold_s: u32,
    },
    /// Remove a sale's products on this partition, only if no reservation of them
    /// exists (an operator's mistake, e.g. a wrong date): its SKUs are free again.
    DeleteSale {
        sale_id: SaleId,
    },
}

/// `Debug` leaves the shipping address out (personal data never reaches a log).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRequest {
    pub reservation: ReservationId,
    pub payment_transaction_id: String,
    pub payment_method: PaymentMethod,
    pub shipping_address: String,
}

impl std::fmt::Debug for CheckoutRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckoutRequest")
            .field("reservation", &self.reservation)
            .field("payment_transaction_id", &self.payment_transaction_id)
            .field("payment_method", &self.payment_method)
            .field("shipping_address", &REDACTED)
            .finish()
    }
}

/// What `Debug` prints in place of personal data.
pub const REDACTED: Redacted = Redacted;

/// Prints as `<redacted>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PaymentMethod {
    CreditCard,
    DebitCard,
    Upi,
    Wallet,
    NetBanking,
}

impl PaymentMethod {
    pub const ALL: [PaymentMethod; 5] = [
        PaymentMethod::CreditCard,
        PaymentMethod::DebitCard,
        PaymentMethod::Upi,
        PaymentMethod::Wallet,
        PaymentMethod::NetBanking,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::CreditCard => "CREDIT_CARD",
            PaymentMethod::DebitCard => "DEBIT_CARD",
            PaymentMethod::Upi => "UPI",
            PaymentMethod::Wallet => "WALLET",
            PaymentMethod::NetBanking => "NET_BANKING",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// A sale as configured on one partition: the sale's settings and the subset of its
/// products whose SKUs hash to that partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleConfig {
    pub sale: SaleMeta,
    pub products: Vec<ProductSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleMeta {
    pub sale_id: SaleId,
    pub name: String,
    pub starts_at: UnixMs,
    pub ends_at: UnixMs,
    pub reservation_ttl_s: u32,
    /// Every SKU of the sale (all partitions), so any reader can list the sale.
    pub all_skus: Vec<SkuId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSpec {
    pub sku: SkuId,
    pub name: String,
    pub description: String,
    pub category: String,
    pub base_price: Cents,
    pub flash_sale_price: Cents,
    pub total_inventory: u64,
    pub per_user_limit: u32,
    pub image_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReservationStatus {
    Reserved,
    Confirmed,
    Expired,
    Cancelled,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "RESERVED",
            ReservationStatus::Confirmed => "CONFIRMED",
            ReservationStatus::Expired => "EXPIRED",
            ReservationStatus::Cancelled => "CANCELLED",
        }
    }
    pub fn is_terminal(self) -> bool {
        !matches!(self, ReservationStatus::Reserved)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationView {
    pub id: ReservationId,
    pub user: UserId,
    pub sku: SkuId,
    pub quantity: u32,
    pub status: ReservationStatus,
    pub created_at: UnixMs,
    pub expires_at: UnixMs,
}

/// `Debug` leaves the shipping address out (personal data never reaches a log).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: OrderId,
    pub reservation_id: ReservationId,
    pub user: UserId,
    pub sku: SkuId,
    pub quantity: u32,
    pub total_price: Cents,
    pub payment_transaction_id: String,
    pub payment_method: PaymentMethod,
    pub shipping_address: String,
    pub created_at: UnixMs,
}

impl std::fmt::Debug for OrderView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderView")
            .field("order_id", &self.order_id)
            .field("reservation_id", &self.reservation_id)
            .field("user", &self.user)
            .field("sku", &self.sku)
            .field("quantity", &self.quantity)
            .field("total_price", &self.total_price)
            .field("payment_transaction_id", &self.payment_transaction_id)
            .field("payment_method", &self.payment_method)
            .field("shipping_address", &REDACTED)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// The engine's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A hold; `repeat` when this is an idempotent repeat of an earlier request.
    Reserved {
        reservation: ReservationView,
        repeat: bool,
    },
    /// Cancel succeeded (or the reservation was already cancelled).
    Cancelled {
        reservation: ReservationView,
    },
    CheckedOut {
        order: OrderView,
        repeat: bool,
    },
    SaleConfigured {
        sale_id: SaleId,
    },
    SaleDropped {
        sale_id: SaleId,
    },
    Ticked,
    Rejected(Rejection),
    /// `Extend` succeeded; the reservation with its new `expires_at`.
    Extended {
        reservation: ReservationView,
    },
    /// A control (inventory, pause, resume) applied; the product's figures after it.
    ProductControlled(ProductFigures),
    /// `EndSale` applied on this partition.
    SaleEnded {
        sale_id: SaleId,
        ends_at: UnixMs,
    },
    /// `DeleteSale` applied on this partition. `removed`: what it removed (`None`: the
    /// sale had nothing here), enough to configure it again exactly when another
    /// partition refuses the deletion.
    SaleDeleted {
        sale_id: SaleId,
        removed: Option<RemovedSale>,
    },
}

/// A sale's part on one partition as `DeleteSale` removed it (no reservation existed,
/// so nothing was held or sold): `ConfigureSaleWith { config, max_hold_s }` followed by
/// `PauseProduct` of each `paused` SKU restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedSale {
    pub config: SaleConfig,
    pub max_hold_s: u32,
    pub paused: Vec<SkuId>,
}

/// A product's counters and switches, as the admin endpoints answer them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductFigures {
    pub sku: SkuId,
    pub total: u64,
    pub held: u64,
    pub sold: u64,
    pub paused: bool,
    pub ends_at: UnixMs,
}

/// Business outcomes that refuse a command. Values, not errors: the engine never
/// fails on a well-formed record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    ProductNotFound {
        sku: SkuId,
    },
    ReservationNotFound {
        reservation: ReservationId,
    },
    SaleNotActive {
        sku: SkuId,
        starts_at: UnixMs,
        ends_at: UnixMs,
    },
    PurchaseLimitExceeded {
        sku: SkuId,
        limit: u32,
        held: u32,
    },
    OutOfStock {
        sku: SkuId,
        requested: u32,
        available: u64,
    },
    ReservationExpired {
        reservation: ReservationId,
        expired_at: UnixMs,
    },
    ReservationNotActive {
        reservation: ReservationId,
        status: ReservationStatus,
    },
    IdempotencyKeyReused,
    /// A SKU already belongs to another sale.
    Conflict {
        sku: SkuId,
    },
    /// `DropSale` refused: units of the sale are already held or sold.
    SaleInUse {
        sale_id: SaleId,
    },
    /// The record breaks a wire rule (a producer bug, not a user error).
    Invalid {
        reason: String,
    },
    /// `Extend` of a hold that already reached `created_at` + the sale's max hold.
    ExtensionLimitReached {
        reservation: ReservationId,
        max_expires_at: UnixMs,
    },
    /// An inventory change would take the total below sold + held.
    InventoryConflict {
        sku: SkuId,
        sold: u64,
        held: u64,
    },
    /// A new hold on a paused product (API: 409 "Sale Not Active", `paused: true`).
    ProductPaused {
        sku: SkuId,
        starts_at: UnixMs,
        ends_at: UnixMs,
    },
    // New variants go at the end (replies of older engines keep decoding).
    /// A SKU already belongs to another sale, named (replaces `Conflict` in replies
    /// of this version on).
    SkuTaken {
        sku: SkuId,
        sale_id: SaleId,
    },
    /// `DeleteSale` refused: `reservations` reservations of the sale's products exist
    /// on this partition (end the sale instead).
    SaleHasReservations {
        sale_id: SaleId,
        reservations: u64,
    },
}

/// What the engine sends to the asking gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRecord {
    pub request_id: RequestId,
    pub partition: u32,
    /// Offset of the command record this answers.
    pub offset: u64,
    pub reply: Reply,
}

/// What changed, for read models and the order projector. Keyed by SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    SaleConfigured(SaleConfig),
    SaleDropped {
        sale_id: SaleId,
        skus: Vec<SkuId>,
    },
    /// A product's counters after a change.
    Inventory {
        sku: SkuId,
        total: u64,
        held: u64,
        sold: u64,
    },
    /// A reservation's state after a change.
    Reservation(ReservationView),
    OrderCreated(OrderView),
    /// A product paused or resumed.
    ProductPaused {
        sku: SkuId,
        paused: bool,
    },
    /// A sale closed early: its products' window now ends at `ends_at`.
    SaleEnded {
        sale_id: SaleId,
        skus: Vec<SkuId>,
        ends_at: UnixMs,
    },
    /// Expired or cancelled reservations the engine forgot, one retention (log time)
    /// after they ended: a read of one answers as for an unknown id from now on.
    /// Orders are never pruned.
    ReservationsPruned {
        reservations: Vec<ReservationId>,
    },
}

/// Events of one applied command record; consumers drop duplicates by
/// (partition, offset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub partition: u32,
    pub offset: u64,
    pub log_time: UnixMs,
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode, DecodeError};
    use proptest::prelude::*;

    fn sample() -> CommandRecord {
        CommandRecord {
            request_id: RequestId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            reply_to: 3,
            idempotency_key: Some("k-1".into()),
            command: Command::Reserve {
                user: UserId::parse("user123").unwrap(),
                sku: SkuId::parse("IPHONE15-256GB").unwrap(),
                quantity: 1,
            },
        }
    }

    #[test]
    fn round_trips_with_version_byte() {
        let rec = sample();
        let bytes = encode(&rec);
        assert_eq!(bytes[0], crate::FORMAT_VERSION);
        assert_eq!(decode::<CommandRecord>(&bytes).unwrap(), rec);
    }

    #[test]
    fn refuses_unknown_version_and_trailing_bytes() {
        let mut bytes = encode(&sample());
        bytes.push(0);
        assert!(matches!(
            decode::<CommandRecord>(&bytes),
            Err(DecodeError::Trailing(1))
        ));
        bytes[0] = 9;
        assert_eq!(
            decode::<CommandRecord>(&bytes),
            Err(DecodeError::Version { found: 9 })
        );
        assert_eq!(decode::<CommandRecord>(&[]), Err(DecodeError::Empty));
    }

    /// Variants added after the first release sit after the old ones, so a record
    /// written by an older build decodes to the same value: its variant index is
    /// unchanged (bincode writes the index first).
    #[test]
    fn old_variant_indices_are_stable() {
        assert_eq!(encode(&Command::Tick), vec![crate::FORMAT_VERSION, 5]);
        assert_eq!(encode(&Reply::Ticked), vec![crate::FORMAT_VERSION, 5]);
        assert_eq!(
            encode(&Rejection::IdempotencyKeyReused),
            vec![crate::FORMAT_VERSION, 7]
        );
        let sku = SkuId::parse("A").unwrap();
        let inv = encode(&Event::Inventory {
            sku: sku.clone(),
            total: 1,
            held: 0,
            sold: 0,
        });
        assert_eq!(inv[1], 2);
        // and the new ones round-trip
        for c in [
            Command::Extend {
                reservation: ReservationId {
                    partition: 1,
                    ulid: 7,
                },
                seconds: Some(60),
            },
            Command::AdjustInventory {
                sku: sku.clone(),
                delta: -5,
            },
            Command::PauseProduct { sku: sku.clone() },
            Command::ResumeProduct { sku: sku.clone() },
            Command::EndSale { sale_id: SaleId(9) },
        ] {
            assert_eq!(decode::<Command>(&encode(&c)).unwrap(), c);
        }
        let r = Reply::Rejected(Rejection::InventoryConflict {
            sku,
            sold: 1,
            held: 2,
        });
        assert_eq!(decode::<Reply>(&encode(&r)).unwrap(), r);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        /// Any byte string decodes to a value or an error; never a panic.
        #[test]
        fn decoding_random_bytes_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Some(b) = bytes.first_mut() { *b = crate::FORMAT_VERSION; }
            let _ = decode::<CommandRecord>(&bytes);
            let _ = decode::<ReplyRecord>(&bytes);
            let _ = decode::<EventRecord>(&bytes);
        }

        /// Flipping bytes of a valid record never panics either.
        #[test]
        fn decoding_mutated_records_never_panics(idx in 0usize..64, val in any::<u8>()) {
            let mut bytes = encode(&sample());
            let i = idx % bytes.len();
            bytes[i] = val;
            let _ = decode::<CommandRecord>(&bytes);
        }
    }
}

/// Kafka record header of every reply and event an engine produces in Kafka mode: the
/// producing engine's owner epoch of the command partition (decimal ASCII). The epoch
/// is the offset of the owner's claim record in that `commands` partition, so it is
/// monotonic per partition and part of the log. Readers keep the highest epoch seen
/// per (topic partition, command partition) and drop records of a lower one
/// ([`EpochFence`]): a paused-then-resumed old owner's outputs never count. The header
/// leaves the payload (and its codec version) as it was: a record without it (an
/// engine of an older build) is admitted, it names no epoch.
pub const EPOCH_HEADER: &str = "flashsale-epoch";

/// Kafka record header that makes a `Tick` command record an owner's claim of its
/// `commands` partition (value: the claiming engine's name, for logs). To the core it
/// is an ordinary tick, so replay stays exact; engines read the header: an owner that
/// meets a claim at an offset above its own epoch has been replaced and stops
/// producing for the partition at once.
pub const CLAIM_HEADER: &str = "flashsale-claim";

/// The value of [`EPOCH_HEADER`] for `epoch`.
pub fn epoch_header_value(epoch: u64) -> String {
    epoch.to_string()
}

/// Parses an [`EPOCH_HEADER`] value; `None` if it is not a decimal u64.
pub fn parse_epoch(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A reader's fencing state: the highest owner epoch seen per command partition of one
/// ordered stream (one Kafka partition of `events` or `replies`). Bounded by the
/// number of command partitions.
#[derive(Debug, Default, Clone)]
pub struct EpochFence {
    highest: std::collections::BTreeMap<u32, u64>,
    dropped: u64,
}

impl EpochFence {
    /// True if a record of command partition `partition` produced under `epoch` counts:
    /// its epoch is not below the highest one seen. `None` (no header) always counts.
    pub fn admit(&mut self, partition: u32, epoch: Option<u64>) -> bool {
        let Some(e) = epoch else { return true };
        let h = self.highest.entry(partition).or_insert(e);
        if e < *h {
            self.dropped += 1;
            return false;
        }
        *h = e;
        true
    }
    /// Records refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod epoch_tests {
    use super::*;

    #[test]
    fn a_lower_epoch_is_dropped_after_a_higher_one_and_partitions_are_independent() {
        let mut f = EpochFence::default();
        assert!(f.admit(0, Some(10)));
        assert!(f.admit(0, Some(10)));
        assert!(f.admit(1, Some(3)), "another partition has its own epoch");
        assert!(f.admit(0, Some(42)));
        assert!(!f.admit(0, Some(10)), "the old owner is fenced");
        assert!(f.admit(0, None), "a record without an epoch names none");
        assert!(f.admit(1, Some(3)));
        assert_eq!(f.dropped(), 1);
        assert_eq!(parse_epoch(epoch_header_value(42).as_bytes()), Some(42));
        assert_eq!(parse_epoch(b"x"), None);
    }
}
