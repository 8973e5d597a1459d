//! What the events say happened, per product: new holds, confirmations, expiries,
//! cancellations, extensions and stock-outs, counted as the read model applies them.

use super::render::rate;
use dashmap::DashMap;
use flashsale_proto::{Event, EventRecord, ReservationStatus, SkuId};
use serde_json::{json, Value};

/// Per product, what the events said happened, counted since this process started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SkuActivity {
    /// New holds.
    pub reserved: u64,
    pub confirmed: u64,
    pub expired: u64,
    pub cancelled: u64,
    pub extended: u64,
    /// Times the available count reached 0.
    pub stockouts: u64,
    /// Available after the newest inventory change seen (None: not seen yet).
    available: Option<u64>,
}

impl SkuActivity {
    pub(super) fn rates_since(&self, earlier: &SkuActivity, secs: f64) -> Value {
        let r = |now: u64, then: u64| rate(now.saturating_sub(then), secs);
        json!({
            "reserved": r(self.reserved, earlier.reserved),
            "confirmed": r(self.confirmed, earlier.confirmed),
            "expired": r(self.expired, earlier.expired),
            "cancelled": r(self.cancelled, earlier.cancelled),
            "extended": r(self.extended, earlier.extended),
        })
    }
}

/// Counts of reservation outcomes and stock-outs per SKU, from the events the read
/// model applies (each record once: the read model drops duplicates first). Memory:
/// one entry per configured product.
#[derive(Debug, Default)]
pub struct Activity {
    per_sku: DashMap<SkuId, SkuActivity>,
}

impl Activity {
    /// One partition's event record, applied once.
    pub fn observe(&self, rec: &EventRecord) {
        for (i, ev) in rec.events.iter().enumerate() {
            match ev {
                Event::SaleConfigured(cfg) => {
                    for p in &cfg.products {
                        self.per_sku.entry(p.sku.clone()).or_default().available =
                            Some(p.total_inventory);
                    }
                }
                Event::SaleDropped { skus, .. } => {
                    for s in skus {
                        self.per_sku.remove(s);
                    }
                }
                Event::Inventory {
                    sku,
                    total,
                    held,
                    sold,
                } => {
                    let now = total.saturating_sub(held + sold);
                    let mut a = self.per_sku.entry(sku.clone()).or_default();
                    if a.available.is_some_and(|before| before > 0) && now == 0 {
                        a.stockouts += 1;
                    }
                    a.available = Some(now);
                }
                Event::Reservation(v) => {
                    let mut a = self.per_sku.entry(v.sku.clone()).or_default();
                    match v.status {
                        // A new hold changes the product's counters at once (the
                        // core pushes its inventory event right after it); an
                        // extension changes nothing else.
                        ReservationStatus::Reserved => {
                            let new_hold = matches!(
                                rec.events.get(i + 1),
                                Some(Event::Inventory { sku, .. }) if *sku == v.sku
                            );
                            if new_hold {
                                a.reserved += 1;
                            } else {
                                a.extended += 1;
                            }
                        }
                        ReservationStatus::Confirmed => a.confirmed += 1,
                        ReservationStatus::Expired => a.expired += 1,
                        ReservationStatus::Cancelled => a.cancelled += 1,
                    }
                }
                // Pruning forgets ended holds; it changes no figure of the console.
                Event::OrderCreated(_)
                | Event::ProductPaused { .. }
                | Event::SaleEnded { .. }
                | Event::ReservationsPruned { .. } => {}
            }
        }
    }

    /// The counts of one SKU (zeros if none yet).
    pub fn of(&self, sku: &SkuId) -> SkuActivity {
        self.per_sku.get(sku).map(|a| *a).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_proto::{
        Cents, ProductSpec, ReservationId, ReservationView, SaleConfig, SaleId, SaleMeta, UserId,
    };

    fn sku() -> SkuId {
        SkuId::parse("SKU-1").unwrap()
    }

    fn view(status: ReservationStatus) -> Event {
        Event::Reservation(ReservationView {
            id: ReservationId {
                partition: 0,
                ulid: 1,
            },
            user: UserId::parse("u1").unwrap(),
            sku: sku(),
            quantity: 1,
            status,
            created_at: 0,
            expires_at: 1,
        })
    }

    fn inv(total: u64, held: u64, sold: u64) -> Event {
        Event::Inventory {
            sku: sku(),
            total,
            held,
            sold,
        }
    }

    fn rec(events: Vec<Event>) -> EventRecord {
        EventRecord {
            partition: 0,
            offset: 0,
            log_time: 0,
            events,
        }
    }

    #[test]
    fn counts_outcomes_and_stockouts() {
        let a = Activity::default();
        let spec = ProductSpec {
            sku: sku(),
            name: "n".into(),
            description: String::new(),
            category: String::new(),
            base_price: Cents(2),
            flash_sale_price: Cents(1),
            total_inventory: 2,
            per_user_limit: 1,
            image_url: String::new(),
        };
        a.observe(&rec(vec![Event::SaleConfigured(SaleConfig {
            sale: SaleMeta {
                sale_id: SaleId(1),
                name: "s".into(),
                starts_at: 0,
                ends_at: 10,
                reservation_ttl_s: 1,
                all_skus: vec![sku()],
            },
            products: vec![spec],
        })]));
        a.observe(&rec(vec![view(ReservationStatus::Reserved), inv(2, 1, 0)]));
        // an expiry, then a new hold, in one record
        a.observe(&rec(vec![
            view(ReservationStatus::Expired),
            inv(2, 0, 0),
            view(ReservationStatus::Reserved),
            inv(2, 1, 0),
        ]));
        // an extension: no inventory change after it
        a.observe(&rec(vec![view(ReservationStatus::Reserved)]));
        a.observe(&rec(vec![view(ReservationStatus::Reserved), inv(2, 2, 0)]));
        a.observe(&rec(vec![view(ReservationStatus::Cancelled), inv(2, 1, 0)]));
        a.observe(&rec(vec![view(ReservationStatus::Confirmed), inv(2, 0, 1)]));
        a.observe(&rec(vec![view(ReservationStatus::Reserved), inv(2, 1, 1)]));
        let s = a.of(&sku());
        assert_eq!(
            (s.reserved, s.extended, s.expired, s.cancelled, s.confirmed),
            (4, 1, 1, 1, 1)
        );
        // 2 → 0 available twice (after the 3rd hold and the last one)
        assert_eq!(s.stockouts, 2);
        assert_eq!(
            a.of(&SkuId::parse("OTHER").unwrap()),
            SkuActivity::default()
        );
    }
}
