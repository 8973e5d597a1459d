//! A buyer's commands on a hold: reserve (stock, per-user limit, idempotency key),
//! checkout (the hold becomes an order), cancel, and extend (up to the sale's max hold).

use super::{
    invalid, inventory_event, order_view, release_user, view, Hold, OrderRecord, State,
    MAX_ADDRESS_CHARS, MAX_IDEMPOTENCY_KEY_CHARS, MAX_PAYMENT_ID_CHARS, MAX_TTL_S,
};
use flashsale_proto::*;

/// Key bit of the expiry queues of extended holds (one queue per expiry time).
const EXTENDED_QUEUE: u64 = 1 << 63;

impl State {
    pub(super) fn reserve(
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

    pub(super) fn checkout(
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

    pub(super) fn cancel(
        &mut self,
        now: UnixMs,
        id: ReservationId,
        events: &mut Vec<Event>,
    ) -> Reply {
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

    pub(super) fn extend(
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
}
