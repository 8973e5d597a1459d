//! A sale's lifecycle and an operator's controls: configure (validated by
//! [`validate_sale`]), drop, end and delete a sale; adjust a product's inventory, pause
//! and resume it.

use super::{
    invalid, inventory_event, Product, State, MAX_INVENTORY, MAX_PRODUCTS_PER_SALE, MAX_TEXT_CHARS,
    MAX_TTL_S,
};
use flashsale_proto::*;
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;

impl State {
    pub(super) fn configure(
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

    pub(super) fn drop_sale(&mut self, sale_id: SaleId, events: &mut Vec<Event>) -> Reply {
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

    pub(super) fn adjust_inventory(
        &mut self,
        sku: &SkuId,
        delta: i64,
        events: &mut Vec<Event>,
    ) -> Reply {
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

    pub(super) fn set_paused(
        &mut self,
        sku: &SkuId,
        paused: bool,
        events: &mut Vec<Event>,
    ) -> Reply {
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

    pub(super) fn end_sale(
        &mut self,
        now: UnixMs,
        sale_id: SaleId,
        events: &mut Vec<Event>,
    ) -> Reply {
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
    pub(super) fn delete_sale(&mut self, sale_id: SaleId, events: &mut Vec<Event>) -> Reply {
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
}

/// A sale's max hold when it sets none: twice the TTL, within [TTL, 3600 s].
pub fn default_max_hold_s(ttl_s: u32) -> u32 {
    ttl_s.saturating_mul(2).min(MAX_TTL_S).max(ttl_s)
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
