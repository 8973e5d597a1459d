//! Seeded simulation of one partition against a small, obviously-correct reference
//! model. Each run applies ≥ 100,000 random commands over many SKUs, users and ticks
//! (with clock skew, idempotency-key collisions, day-long jumps and conflicting sales)
//! and checks, at every step: the engine's reply equals the model's, invariant 1 for
//! every product and invariant 2 for the touched product; every 1,000 steps and at the
//! end, every invariant over the whole state. At a random step the state is snapshotted
//! (encoded and decoded); replaying the rest from it must give identical replies and an
//! identical final state.
//!
//! Bounded state (invariant 5): each seed runs with a retention (2 s to a day of log
//! time); the model forgets idempotency keys after it, and ended (expired, cancelled)
//! holds once it has passed since they ended and their expiresAt has passed, exactly as
//! the engine must, so a hold pruned in one answers "not found" in both,
//! and every 1,000 steps the engine keeps exactly the reservations the model keeps.
//!
//! A failing run prints its seed; `FLASHSALE_SIM_SEED=<seed> cargo test -p
//! flashsale-engine --test simulation` reproduces it. `FLASHSALE_SIM_STEPS` changes the
//! length.

use flashsale_core::{check_state, invariants, snapshot, State};
use flashsale_proto::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};

const PARTITION: u16 = 3;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

// ---------------------------------------------------------------- reference model

#[derive(Clone)]
struct MProduct {
    sale: SaleId,
    spec: ProductSpec,
    starts: u64,
    ends: u64,
    ttl_ms: u64,
    max_hold_ms: u64,
    paused: bool,
}

#[derive(Clone)]
struct MRes {
    view: ReservationView,
    order: Option<OrderView>,
}

/// Plain vectors and recounts; only the indexes needed to keep it linear-time.
#[derive(Default)]
struct Model {
    clock: u64,
    sales: Vec<SaleId>,
    /// (starts, ends) per configured sale.
    windows: HashMap<SaleId, (u64, u64)>,
    products: BTreeMap<SkuId, MProduct>,
    res: Vec<MRes>,
    by_id: HashMap<ReservationId, usize>,
    /// Indexes of RESERVED or CONFIRMED reservations per SKU (bounded by inventory).
    counted: HashMap<SkuId, Vec<usize>>,
    /// (key, user, sku, quantity, reservation index, time)
    keys: Vec<(String, UserId, SkuId, u32, usize, u64)>,
    /// Log time for which keys and ended holds are remembered.
    retention_ms: u64,
    /// (log time it ended, index) of every expired or cancelled hold still kept.
    ended: Vec<(u64, usize)>,
    pruned: u64,
}

impl Model {
    fn used(&self, sku: &SkuId, user: Option<&UserId>) -> u64 {
        self.counted
            .get(sku)
            .map(|v| {
                v.iter()
                    .map(|&i| &self.res[i].view)
                    .filter(|r| user.is_none_or(|u| &r.user == u))
                    .map(|r| u64::from(r.quantity))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// (held, sold) units of a product.
    fn held_sold(&self, sku: &SkuId) -> (u64, u64) {
        let mut out = (0, 0);
        for &i in self.counted.get(sku).into_iter().flatten() {
            let r = &self.res[i].view;
            match r.status {
                ReservationStatus::Reserved => out.0 += u64::from(r.quantity),
                _ => out.1 += u64::from(r.quantity),
            }
        }
        out
    }

    fn figures(&self, sku: &SkuId) -> Reply {
        let p = &self.products[sku];
        let (held, sold) = self.held_sold(sku);
        Reply::ProductControlled(ProductFigures {
            sku: sku.clone(),
            total: p.spec.total_inventory,
            held,
            sold,
            paused: p.paused,
            ends_at: p.ends,
        })
    }

    fn configure(&mut self, cfg: &SaleConfig, max_hold_s: Option<u32>) -> Reply {
        if let Err(r) = flashsale_core::core::validate_sale(cfg) {
            return Reply::Rejected(Rejection::Invalid { reason: r });
        }
        let ttl = cfg.sale.reservation_ttl_s;
        let max_hold_s = max_hold_s.unwrap_or((2 * ttl).clamp(ttl, 3600));
        if max_hold_s < ttl || max_hold_s > 3600 {
            return Reply::Rejected(Rejection::Invalid {
                reason: "maxHoldSeconds must be reservationTtlSeconds-3600".into(),
            });
        }
        for p in &cfg.products {
            if let Some(mp) = self.products.get(&p.sku) {
                if mp.sale != cfg.sale.sale_id {
                    return Reply::Rejected(Rejection::SkuTaken {
                        sku: p.sku.clone(),
                        sale_id: mp.sale,
                    });
                }
            }
        }
        if !self.sales.contains(&cfg.sale.sale_id) {
            self.sales.push(cfg.sale.sale_id);
            self.windows
                .insert(cfg.sale.sale_id, (cfg.sale.starts_at, cfg.sale.ends_at));
            for p in &cfg.products {
                self.products.insert(
                    p.sku.clone(),
                    MProduct {
                        sale: cfg.sale.sale_id,
                        spec: p.clone(),
                        starts: cfg.sale.starts_at,
                        ends: cfg.sale.ends_at,
                        ttl_ms: u64::from(ttl) * 1000,
                        max_hold_ms: u64::from(max_hold_s) * 1000,
                        paused: false,
                    },
                );
            }
        }
        Reply::SaleConfigured {
            sale_id: cfg.sale.sale_id,
        }
    }

    fn new(retention_ms: u64) -> Self {
        Model {
            retention_ms,
            ..Model::default()
        }
    }

    /// Reservations kept (live, confirmed, and ended within the retention).
    fn kept(&self) -> usize {
        self.by_id.len()
    }

    fn end(&mut self, i: usize, status: ReservationStatus, now: u64) {
        self.res[i].view.status = status;
        self.uncount(i);
        self.ended.push((now, i));
    }

    fn uncount(&mut self, i: usize) {
        let sku = self.res[i].view.sku.clone();
        self.counted.get_mut(&sku).unwrap().retain(|&j| j != i);
    }

    fn apply(&mut self, time: u64, rec: &CommandRecord) -> Reply {
        self.clock = self.clock.max(time);
        let now = self.clock;
        // expire every live hold due by now, in (expires_at, id) order
        let mut due: Vec<usize> = self
            .counted
            .values()
            .flatten()
            .copied()
            .filter(|&i| {
                let r = &self.res[i].view;
                r.status == ReservationStatus::Reserved && r.expires_at <= now
            })
            .collect();
        due.sort_by_key(|&i| (self.res[i].view.expires_at, self.res[i].view.id));
        for i in due {
            self.end(i, ReservationStatus::Expired, now);
        }
        let retention = self.retention_ms;
        self.keys.retain(|k| k.5 + retention > now);
        // Forget ended holds one retention after they ended, once their hold time has
        // run out too (a hold cancelled early waits for its expiresAt): not found from
        // then on.
        let (keep, gone): (Vec<_>, Vec<_>) = self
            .ended
            .iter()
            .partition(|(at, i)| at + retention > now || self.res[*i].view.expires_at > now);
        for (_, i) in gone {
            let id = self.res[i].view.id;
            assert!(self.by_id.remove(&id).is_some(), "model: pruned twice");
            self.pruned += 1;
        }
        self.ended = keep;
        match &rec.command {
            Command::Tick => Reply::Ticked,
            Command::ConfigureSale(cfg) => self.configure(cfg, None),
            Command::ConfigureSaleWith { config, max_hold_s } => {
                self.configure(config, Some(*max_hold_s))
            }
            Command::Extend {
                reservation,
                seconds,
            } => {
                if seconds.is_some_and(|s| s == 0 || s > 3600) {
                    return Reply::Rejected(Rejection::Invalid {
                        reason: "extend: seconds must be 1-3600".into(),
                    });
                }
                let Some(&i) = self.by_id.get(reservation) else {
                    return Reply::Rejected(Rejection::ReservationNotFound {
                        reservation: *reservation,
                    });
                };
                let r = self.res[i].view.clone();
                match r.status {
                    ReservationStatus::Reserved => {}
                    ReservationStatus::Expired => {
                        return Reply::Rejected(Rejection::ReservationExpired {
                            reservation: r.id,
                            expired_at: r.expires_at,
                        })
                    }
                    s => {
                        return Reply::Rejected(Rejection::ReservationNotActive {
                            reservation: r.id,
                            status: s,
                        })
                    }
                }
                let p = &self.products[&r.sku];
                let cap = r.created_at + p.max_hold_ms;
                if r.expires_at >= cap {
                    return Reply::Rejected(Rejection::ExtensionLimitReached {
                        reservation: r.id,
                        max_expires_at: cap,
                    });
                }
                let by = seconds.map_or(p.ttl_ms, |s| u64::from(s) * 1000);
                let new = r.expires_at.max(now + by).min(cap);
                self.res[i].view.expires_at = new;
                Reply::Extended {
                    reservation: self.res[i].view.clone(),
                }
            }
            Command::AdjustInventory { sku, delta } => {
                let Some(p) = self.products.get(sku) else {
                    return Reply::Rejected(Rejection::ProductNotFound { sku: sku.clone() });
                };
                let (held, sold) = self.held_sold(sku);
                let total = p.spec.total_inventory as i128 + i128::from(*delta);
                if total > 1_000_000_000 {
                    return Reply::Rejected(Rejection::Invalid {
                        reason: "adjust inventory: totalInventory must stay at most 1000000000"
                            .into(),
                    });
                }
                if total < i128::from(held + sold) {
                    return Reply::Rejected(Rejection::InventoryConflict {
                        sku: sku.clone(),
                        sold,
                        held,
                    });
                }
                self.products.get_mut(sku).unwrap().spec.total_inventory = total as u64;
                self.figures(sku)
            }
            Command::PauseProduct { sku } | Command::ResumeProduct { sku } => {
                let Some(p) = self.products.get_mut(sku) else {
                    return Reply::Rejected(Rejection::ProductNotFound { sku: sku.clone() });
                };
                p.paused = matches!(rec.command, Command::PauseProduct { .. });
                self.figures(sku)
            }
            Command::EndSale { sale_id } => {
                let Some(&(starts, ends)) = self.windows.get(sale_id) else {
                    return Reply::Rejected(Rejection::Invalid {
                        reason: "end sale: no such sale on this partition".into(),
                    });
                };
                let ends_at = now.clamp(starts, ends);
                self.windows.insert(*sale_id, (starts, ends_at));
                for p in self.products.values_mut() {
                    if p.sale == *sale_id {
                        p.ends = ends_at;
                    }
                }
                Reply::SaleEnded {
                    sale_id: *sale_id,
                    ends_at,
                }
            }
            Command::DropSale { sale_id } => Reply::SaleDropped { sale_id: *sale_id },
            // Not generated here: sale deletion has the core's unit tests.
            Command::DeleteSale { .. } => unreachable!("the simulation never deletes a sale"),
            Command::Reserve {
                user,
                sku,
                quantity,
            } => {
                let q = *quantity;
                if q == 0 || q > MAX_QUANTITY {
                    return Reply::Rejected(Rejection::Invalid {
                        reason: "reserve: bad userId, skuId or quantity".into(),
                    });
                }
                if let Some(key) = &rec.idempotency_key {
                    if let Some(k) = self.keys.iter().find(|k| &k.0 == key) {
                        if (&k.1, &k.2, k.3) != (user, sku, q) {
                            return Reply::Rejected(Rejection::IdempotencyKeyReused);
                        }
                        return Reply::Reserved {
                            reservation: self.res[k.4].view.clone(),
                            repeat: true,
                        };
                    }
                }
                let id = ReservationId {
                    partition: PARTITION,
                    ulid: rec.request_id.0,
                };
                if let Some(&i) = self.by_id.get(&id) {
                    return Reply::Reserved {
                        reservation: self.res[i].view.clone(),
                        repeat: true,
                    };
                }
                let Some(p) = self.products.get(sku).cloned() else {
                    return Reply::Rejected(Rejection::ProductNotFound { sku: sku.clone() });
                };
                if now < p.starts || now >= p.ends {
                    return Reply::Rejected(Rejection::SaleNotActive {
                        sku: sku.clone(),
                        starts_at: p.starts,
                        ends_at: p.ends,
                    });
                }
                if p.paused {
                    return Reply::Rejected(Rejection::ProductPaused {
                        sku: sku.clone(),
                        starts_at: p.starts,
                        ends_at: p.ends,
                    });
                }
                let used = self.used(sku, Some(user)) as u32;
                if used + q > p.spec.per_user_limit {
                    return Reply::Rejected(Rejection::PurchaseLimitExceeded {
                        sku: sku.clone(),
                        limit: p.spec.per_user_limit,
                        held: used,
                    });
                }
                let available = p.spec.total_inventory - self.used(sku, None);
                if u64::from(q) > available {
                    return Reply::Rejected(Rejection::OutOfStock {
                        sku: sku.clone(),
                        requested: q,
                        available,
                    });
                }
                let view = ReservationView {
                    id,
                    user: user.clone(),
                    sku: sku.clone(),
                    quantity: q,
                    status: ReservationStatus::Reserved,
                    created_at: now,
                    expires_at: now + p.ttl_ms,
                };
                let i = self.res.len();
                self.res.push(MRes {
                    view: view.clone(),
                    order: None,
                });
                self.by_id.insert(id, i);
                self.counted.entry(sku.clone()).or_default().push(i);
                if let Some(key) = &rec.idempotency_key {
                    self.keys
                        .push((key.clone(), user.clone(), sku.clone(), q, i, now));
                }
                Reply::Reserved {
                    reservation: view,
                    repeat: false,
                }
            }
            Command::Cancel { reservation } => {
                let Some(&i) = self.by_id.get(reservation) else {
                    return Reply::Rejected(Rejection::ReservationNotFound {
                        reservation: *reservation,
                    });
                };
                match self.res[i].view.status {
                    ReservationStatus::Reserved => {
                        self.end(i, ReservationStatus::Cancelled, now);
                        Reply::Cancelled {
                            reservation: self.res[i].view.clone(),
                        }
                    }
                    ReservationStatus::Cancelled => Reply::Cancelled {
                        reservation: self.res[i].view.clone(),
                    },
                    s => Reply::Rejected(Rejection::ReservationNotActive {
                        reservation: *reservation,
                        status: s,
                    }),
                }
            }
            Command::Checkout(c) => {
                let Some(&i) = self.by_id.get(&c.reservation) else {
                    return Reply::Rejected(Rejection::ReservationNotFound {
                        reservation: c.reservation,
                    });
                };
                let r = self.res[i].view.clone();
                match r.status {
                    ReservationStatus::Reserved => {
                        let price =
                            self.products[&r.sku].spec.flash_sale_price.0 * u64::from(r.quantity);
                        let order = OrderView {
                            order_id: OrderId {
                                partition: PARTITION,
                                ulid: rec.request_id.0,
                            },
                            reservation_id: r.id,
                            user: r.user.clone(),
                            sku: r.sku.clone(),
                            quantity: r.quantity,
                            total_price: Cents(price),
                            payment_transaction_id: c.payment_transaction_id.clone(),
                            payment_method: c.payment_method,
                            shipping_address: c.shipping_address.clone(),
                            created_at: now,
                        };
                        self.res[i].view.status = ReservationStatus::Confirmed;
                        self.res[i].order = Some(order.clone());
                        Reply::CheckedOut {
                            order,
                            repeat: false,
                        }
                    }
                    ReservationStatus::Confirmed => {
                        let o = self.res[i].order.clone().unwrap();
                        if o.payment_transaction_id == c.payment_transaction_id {
                            Reply::CheckedOut {
                                order: o,
                                repeat: true,
                            }
                        } else {
                            Reply::Rejected(Rejection::ReservationNotActive {
                                reservation: r.id,
                                status: r.status,
                            })
                        }
                    }
                    ReservationStatus::Expired => Reply::Rejected(Rejection::ReservationExpired {
                        reservation: r.id,
                        expired_at: r.expires_at,
                    }),
                    ReservationStatus::Cancelled => {
                        Reply::Rejected(Rejection::ReservationNotActive {
                            reservation: r.id,
                            status: r.status,
                        })
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------- workload

struct Gen {
    rng: StdRng,
    time: u64,
    next_req: u128,
    skus: Vec<SkuId>,
    users: Vec<UserId>,
    known_res: Vec<ReservationId>,
    sales: u128,
}

const T0: u64 = 1_735_725_600_000; // 2025-01-01T10:00:00Z

impl Gen {
    fn new(seed: u64) -> Self {
        let g = Gen {
            rng: StdRng::seed_from_u64(seed),
            time: T0,
            next_req: 1,
            skus: Vec::new(),
            users: (0..300)
                .map(|i| UserId::parse(&format!("user{i}")).unwrap())
                .collect(),
            known_res: Vec::new(),
            sales: 0,
        };
        g
    }

    fn record(&mut self, command: Command, key: Option<String>) -> CommandRecord {
        self.next_req += 1;
        CommandRecord {
            request_id: RequestId(self.next_req << 16),
            reply_to: 0,
            idempotency_key: key,
            command,
        }
    }

    fn sale(&mut self) -> Command {
        self.sales += 1;
        let n = self.rng.random_range(1..=6);
        let mut skus: Vec<SkuId> = (0..n)
            .map(|i| {
                if !self.skus.is_empty() && self.rng.random_bool(0.05) {
                    // an SKU that may already belong to another sale: a conflict
                    self.skus[self.rng.random_range(0..self.skus.len())].clone()
                } else {
                    SkuId::parse(&format!("SKU-{}-{i}", self.sales)).unwrap()
                }
            })
            .collect();
        skus.dedup();
        for s in &skus {
            if !self.skus.contains(s) {
                self.skus.push(s.clone());
            }
        }
        if self.rng.random_bool(0.05) && !skus.is_empty() {
            skus.push(skus[0].clone()); // a duplicate: must be refused as invalid
        }
        let starts = self.time.saturating_sub(60_000) + self.rng.random_range(0..120_000);
        let ends = starts + self.rng.random_range(10_000..7_200_000);
        let products = skus
            .iter()
            .map(|s| ProductSpec {
                sku: s.clone(),
                name: format!("product {s}"),
                description: String::new(),
                category: "Electronics".into(),
                base_price: Cents(129_999),
                flash_sale_price: Cents(99_999),
                total_inventory: self.rng.random_range(0..30),
                per_user_limit: self.rng.random_range(1..=3),
                image_url: String::new(),
            })
            .collect();
        let config = SaleConfig {
            sale: SaleMeta {
                sale_id: SaleId(self.sales),
                name: format!("sale {}", self.sales),
                starts_at: starts,
                ends_at: ends,
                reservation_ttl_s: self.rng.random_range(1..=4),
                all_skus: skus.clone(),
            },
            products,
        };
        if self.rng.random_bool(0.5) {
            // the newer layout, with a max hold (sometimes out of range: refused)
            let max_hold_s = self.rng.random_range(1..=12);
            Command::ConfigureSaleWith { config, max_hold_s }
        } else {
            Command::ConfigureSale(config)
        }
    }

    /// Returns (log time, record). Log time mostly advances, sometimes jumps by hours,
    /// sometimes goes back (a skewed producer clock: the engine must not go back).
    fn next(&mut self) -> (u64, CommandRecord) {
        if self.rng.random_bool(1.0 / 20_000.0) {
            self.time += self.rng.random_range(6 * 3_600_000..12 * 3_600_000);
        } else {
            self.time += self.rng.random_range(0..120);
        }
        let t = if self.rng.random_bool(0.02) {
            self.time.saturating_sub(5_000)
        } else {
            self.time
        };
        let roll = self.rng.random_range(0..1000);
        let rec = if roll < 3 || self.skus.is_empty() {
            let c = self.sale();
            self.record(c, None)
        } else if roll < 680 {
            let user = self.users[self.rng.random_range(0..self.users.len())].clone();
            let sku = if self.rng.random_bool(0.02) {
                SkuId::parse("NO-SUCH-SKU").unwrap()
            } else {
                let n = self.skus.len();
                self.skus[self.rng.random_range(n.saturating_sub(40)..n)].clone()
            };
            let quantity = if self.rng.random_bool(0.01) {
                0
            } else {
                self.rng.random_range(1..=3)
            };
            let key = self
                .rng
                .random_bool(0.2)
                .then(|| format!("key-{}", self.rng.random_range(0..400)));
            self.record(
                Command::Reserve {
                    user,
                    sku,
                    quantity,
                },
                key,
            )
        } else if roll < 800 {
            let reservation = self.pick_res();
            let c = Command::Checkout(CheckoutRequest {
                reservation,
                payment_transaction_id: format!("pay_{}", self.rng.random_range(0..3)),
                payment_method: PaymentMethod::ALL[self.rng.random_range(0..5)],
                shipping_address: "1 Main St".into(),
            });
            self.record(c, None)
        } else if roll < 880 {
            let reservation = self.pick_res();
            self.record(Command::Cancel { reservation }, None)
        } else if roll < 885 {
            // a duplicate delivery of a reserve: same request id as an earlier one
            let user = self.users[0].clone();
            let sku = self.skus[self.skus.len() - 1].clone();
            let mut r = self.record(
                Command::Reserve {
                    user,
                    sku,
                    quantity: 1,
                },
                None,
            );
            if let Some(id) = self.known_res.last() {
                r.request_id = RequestId(id.ulid);
            }
            r
        } else if roll < 910 {
            // mostly a recent hold, so that many are live and some reach the cap
            let reservation = match self.known_res.len() {
                0 => self.pick_res(),
                n => self.known_res[self.rng.random_range(n.saturating_sub(15)..n)],
            };
            let seconds = match self.rng.random_range(0..10) {
                0 => None,
                1 => Some(0), // invalid
                _ => Some(self.rng.random_range(1..=8)),
            };
            self.record(
                Command::Extend {
                    reservation,
                    seconds,
                },
                None,
            )
        } else if roll < 922 {
            let sku = self.pick_sku();
            let delta = self.rng.random_range(-15..=15);
            self.record(Command::AdjustInventory { sku, delta }, None)
        } else if roll < 925 {
            let sku = self.pick_sku();
            self.record(Command::PauseProduct { sku }, None)
        } else if roll < 936 {
            let sku = self.pick_sku();
            self.record(Command::ResumeProduct { sku }, None)
        } else if roll < 937 {
            let sale_id = SaleId(self.rng.random_range(1..=self.sales + 1));
            self.record(Command::EndSale { sale_id }, None)
        } else {
            self.record(Command::Tick, None)
        };
        (t, rec)
    }

    fn pick_sku(&mut self) -> SkuId {
        if self.rng.random_bool(0.02) {
            return SkuId::parse("NO-SUCH-SKU").unwrap();
        }
        let n = self.skus.len();
        self.skus[self.rng.random_range(n.saturating_sub(40)..n)].clone()
    }

    fn pick_res(&mut self) -> ReservationId {
        if self.known_res.is_empty() || self.rng.random_bool(0.03) {
            ReservationId {
                partition: PARTITION,
                ulid: 7,
            }
        } else {
            let n = self.known_res.len();
            let lo = n.saturating_sub(200);
            self.known_res[self.rng.random_range(lo..n)]
        }
    }
}

// ---------------------------------------------------------------- the run

fn check_step(state: &State, rec: &CommandRecord) {
    for (_, p) in state.products() {
        invariants::check_product(p).unwrap_or_else(|v| panic!("{v}"));
    }
    if let Command::Reserve { sku, .. } = &rec.command {
        if let Some(p) = state.product(sku) {
            for (u, _) in p.per_user() {
                invariants::check_user_limit(p, u).unwrap_or_else(|v| panic!("{v}"));
            }
        }
    }
}

/// The retention a seed runs with: mostly short, so pruning happens all the time.
fn retention_for(seed: u64) -> u64 {
    [2_000, 10_000, 60_000, DAY_MS][(seed % 4) as usize]
}

fn run(seed: u64, steps: usize) {
    let mut gen = Gen::new(seed);
    let retention_ms = retention_for(seed);
    let mut engine = State::with_retention(PARTITION, retention_ms);
    let mut model = Model::new(retention_ms);
    let mut log: Vec<(u64, CommandRecord)> = Vec::with_capacity(steps);
    let mut replies: Vec<Reply> = Vec::with_capacity(steps);
    let snap_at = StdRng::seed_from_u64(seed ^ 0x5eed).random_range(steps / 10..steps);
    let mut snap: Option<Vec<u8>> = None;
    let mut events = Vec::new();
    let (mut reserved, mut sold_out, mut checkouts) = (0u64, 0u64, 0u64);
    let (mut extended, mut capped, mut controlled, mut conflicts, mut paused, mut ended) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for step in 0..steps {
        if step == snap_at {
            snap = Some(snapshot::encode(&engine).expect("a live state passes the invariants"));
        }
        let (t, rec) = gen.next();
        events.clear();
        let got = engine.apply(step as u64, t, &rec, &mut events);
        let want = model.apply(t, &rec);
        assert_eq!(got, want, "step {step}: reply differs for {rec:?}");
        match &got {
            Reply::Reserved {
                reservation,
                repeat: false,
            } => {
                gen.known_res.push(reservation.id);
                reserved += 1;
            }
            Reply::Rejected(Rejection::OutOfStock { .. }) => sold_out += 1,
            Reply::CheckedOut { repeat: false, .. } => checkouts += 1,
            Reply::Extended { .. } => extended += 1,
            Reply::Rejected(Rejection::ExtensionLimitReached { .. }) => capped += 1,
            Reply::ProductControlled(_) => controlled += 1,
            Reply::Rejected(Rejection::InventoryConflict { .. }) => conflicts += 1,
            Reply::Rejected(Rejection::ProductPaused { .. }) => paused += 1,
            Reply::SaleEnded { .. } => ended += 1,
            _ => {}
        }
        check_step(&engine, &rec);
        invariants::check_retention(&engine).unwrap_or_else(|v| panic!("step {step}: {v}"));
        if step % 1000 == 999 {
            let v = check_state(&engine);
            assert!(v.is_empty(), "step {step}: {v:?}");
            assert_eq!(
                engine.reservation_count(),
                model.kept(),
                "step {step}: reservations kept"
            );
            assert_eq!(engine.pruned_total(), model.pruned, "step {step}: pruned");
            for id in model.by_id.keys() {
                assert!(engine.reservation(id).is_some(), "step {step}: {id} lost");
            }
            for (sku, p) in engine.products() {
                assert_eq!(
                    p.available(),
                    p.total() - model.used(sku, None),
                    "step {step}: {sku}"
                );
            }
        }
        log.push((t, rec));
        replies.push(got);
    }
    assert!(check_state(&engine).is_empty());
    // The workload must have exercised the interesting paths, or the run proves little.
    eprintln!("seed {seed}: {steps} commands, {reserved} holds, {sold_out} out-of-stock, {checkouts} orders, log time span {} h", (gen.time - T0) / 3_600_000);
    assert!(
        reserved > 1000 && sold_out > 1000 && checkouts > 100,
        "{reserved} {sold_out} {checkouts}"
    );
    eprintln!(
        "seed {seed}: retention {retention_ms} ms, {} reservations pruned, {} kept at the end",
        engine.pruned_total(),
        engine.reservation_count()
    );
    if retention_ms < DAY_MS {
        assert!(
            engine.pruned_total() > 1000,
            "pruning was barely exercised: {}",
            engine.pruned_total()
        );
    }
    eprintln!("seed {seed}: {extended} extensions, {capped} at the cap, {controlled} controls, {conflicts} inventory conflicts, {paused} refused while paused, {ended} sale ends");
    assert!(
        extended > 100
            && capped > 10
            && controlled > 100
            && conflicts > 10
            && paused > 100
            && ended > 10,
        "the controls were barely exercised"
    );

    // Restore from the snapshot and replay the rest: identical replies and state.
    let mut restored = snapshot::decode(&snap.unwrap()).expect("snapshot decodes");
    assert_eq!(restored.next_offset(), snap_at as u64);
    for (i, (t, rec)) in log.iter().enumerate().skip(snap_at) {
        events.clear();
        let got = restored.apply(i as u64, *t, rec, &mut events);
        assert_eq!(
            got, replies[i],
            "replay from snapshot at {snap_at}: step {i} differs"
        );
    }
    assert!(
        restored == engine,
        "state after replay from snapshot differs from the straight run"
    );
}

fn run_reporting_seed(seed: u64, steps: usize) {
    let result = std::panic::catch_unwind(|| run(seed, steps));
    if let Err(e) = result {
        eprintln!("\nsimulation FAILED with seed {seed}; reproduce: FLASHSALE_SIM_SEED={seed} cargo test -p flashsale-engine --test simulation\n");
        std::panic::resume_unwind(e);
    }
}

fn steps() -> usize {
    std::env::var("FLASHSALE_SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

#[test]
fn simulation_matches_reference_model() {
    if let Some(seed) = std::env::var("FLASHSALE_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return run_reporting_seed(seed, steps());
    }
    // Fixed seeds keep CI reproducible; one more from the clock explores new ground
    // and prints itself if it fails.
    let clock_seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    for seed in [1u64, 2, 3, 4, clock_seed] {
        run_reporting_seed(seed, steps());
    }
}

/// A snapshot that is corrupt or breaks an invariant is never loaded.
#[test]
fn bad_snapshots_are_refused() {
    let mut gen = Gen::new(9);
    let mut s = State::new(PARTITION);
    let mut ev = Vec::new();
    for i in 0..5000u64 {
        let (t, rec) = gen.next();
        s.apply(i, t, &rec, &mut ev);
    }
    let good = snapshot::encode(&s).unwrap();
    assert!(snapshot::decode(&good).is_ok());
    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n / 2] ^= 0x40;
    assert!(matches!(
        snapshot::decode(&flipped),
        Err(snapshot::SnapshotError::Checksum { .. })
    ));
    assert!(snapshot::decode(&good[..n - 3]).is_err());
    assert!(matches!(
        snapshot::decode(b"nope"),
        Err(snapshot::SnapshotError::Magic)
    ));
}
