//! The console's history: one [`Point`] a second in a ring of [`HISTORY_POINTS`]
//! (recorded whether or not a console is open, [`spawn_recorder`]), sent to a stream
//! as columns, the whole ring first and then the points added since.

use super::render::{health, lags, ordered_sales, rate, round_ms, Sample};
use super::{Streams, EVENT_EVERY, HISTORY_POINTS, MAX_PRODUCT_SERIES, MAX_SALES};
use crate::api::AppState;
use crate::time::now_ms;
use flashsale_proto::{SaleId, SkuId};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;

/// One second of the console's charts.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Point {
    t_ms: u64,
    node: NodePoint,
    sales: Vec<SalePoint>,
    products: Vec<ProductPoint>,
}

/// This node in one second: reservations per second by result, latency, health.
#[derive(Debug, Clone, Default, PartialEq)]
struct NodePoint {
    ok: f64,
    out_of_stock: f64,
    /// Other 409/404/400 decisions (limit, not active, unknown product, bad input).
    refused: f64,
    shed: f64,
    rate_limited: f64,
    /// 5xx answers that were not shed (not ready, partition down, no reply in time,
    /// internal errors), of any endpoint: reads, checkouts, admin calls too.
    errors: f64,
    orders: f64,
    p50: Option<f64>,
    p99: Option<f64>,
    held_p50: Option<f64>,
    held_p99: Option<f64>,
    ready: bool,
    down: u32,
    blocked: u32,
    lags: Vec<u64>,
}

/// Stock (units) and activity (per second) of a sale or a product at one point.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Figures {
    available: u64,
    held: u64,
    sold: u64,
    reserved: f64,
    confirmed: f64,
    expired: f64,
    cancelled: f64,
}

impl Figures {
    fn add(&mut self, o: &Figures) {
        self.available += o.available;
        self.held += o.held;
        self.sold += o.sold;
        self.reserved += o.reserved;
        self.confirmed += o.confirmed;
        self.expired += o.expired;
        self.cancelled += o.cancelled;
    }
}

#[derive(Debug, Clone, PartialEq)]
struct SalePoint {
    id: SaleId,
    f: Figures,
}

#[derive(Debug, Clone, PartialEq)]
struct ProductPoint {
    sku: SkuId,
    f: Figures,
}

/// The ring of points, newest last.
#[derive(Debug, Default)]
pub(super) struct History {
    pub(super) points: VecDeque<Point>,
}

impl History {
    fn push(&mut self, p: Point) {
        if self.points.back().is_some_and(|last| last.t_ms >= p.t_ms) {
            return; // the clock stepped back: keep the series in time order
        }
        if self.points.len() == HISTORY_POINTS {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }
}

impl Streams {
    fn record(&self, p: Point) {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(p);
    }
    /// The points newer than `after` (all with `None`) as columns, and the time of the
    /// newest of them.
    pub(super) fn history_since(&self, after: Option<u64>) -> (Value, Option<u64>) {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let start = after.map_or(0, |a| h.points.partition_point(|p| p.t_ms <= a));
        let points: Vec<&Point> = h.points.range(start..).collect();
        (columns(&points), points.last().map(|p| p.t_ms))
    }
}

/// Points as columns (one array per series, `null` where a sale or product did not
/// exist yet), the shape the console's charts take:
/// `{"t": [ms…], "node": {"ok": […], …}, "sales": {id: {"available": […], …}},
/// "products": {sku: {…}}}`.
fn columns(points: &[&Point]) -> Value {
    let n = points.len();
    let col = |f: &dyn Fn(&Point) -> Value| -> Value {
        Value::Array(points.iter().map(|p| f(p)).collect())
    };
    let r2 = |v: f64| json!((v * 100.0).round() / 100.0);
    let node = json!({
        "ok": col(&|p| r2(p.node.ok)),
        "outOfStock": col(&|p| r2(p.node.out_of_stock)),
        "refused": col(&|p| r2(p.node.refused)),
        "shed": col(&|p| r2(p.node.shed)),
        "rateLimited": col(&|p| r2(p.node.rate_limited)),
        "errors": col(&|p| r2(p.node.errors)),
        "orders": col(&|p| r2(p.node.orders)),
        "p50": col(&|p| round_ms(p.node.p50)),
        "p99": col(&|p| round_ms(p.node.p99)),
        "heldP50": col(&|p| round_ms(p.node.held_p50)),
        "heldP99": col(&|p| round_ms(p.node.held_p99)),
        "ready": col(&|p| json!(p.node.ready)),
        "down": col(&|p| json!(p.node.down)),
        "writeBlocked": col(&|p| json!(p.node.blocked)),
        "lagMax": col(&|p| json!(p.node.lags.iter().copied().max().unwrap_or(0))),
        "lags": col(&|p| json!(p.node.lags)),
    });
    // Series of each sale and product, in order of first appearance.
    let mut sales: Vec<(SaleId, Map<String, Value>)> = Vec::new();
    let mut products: Vec<(SkuId, Map<String, Value>)> = Vec::new();
    let blank = |keys: &[&str]| -> Map<String, Value> {
        keys.iter()
            .map(|k| ((*k).to_string(), Value::Array(vec![Value::Null; n])))
            .collect()
    };
    const SALE_KEYS: [&str; 7] = [
        "available",
        "held",
        "sold",
        "reserved",
        "confirmed",
        "expired",
        "cancelled",
    ];
    let set = |m: &mut Map<String, Value>, k: &str, i: usize, v: Value| {
        if let Some(Value::Array(a)) = m.get_mut(k) {
            a[i] = v;
        }
    };
    let put = |m: &mut Map<String, Value>, i: usize, f: &Figures| {
        set(m, "available", i, json!(f.available));
        set(m, "held", i, json!(f.held));
        set(m, "sold", i, json!(f.sold));
        set(m, "reserved", i, r2(f.reserved));
        set(m, "confirmed", i, r2(f.confirmed));
        set(m, "expired", i, r2(f.expired));
        set(m, "cancelled", i, r2(f.cancelled));
    };
    for (i, p) in points.iter().enumerate() {
        for s in &p.sales {
            let at = match sales.iter().position(|(id, _)| *id == s.id) {
                Some(at) => at,
                None => {
                    sales.push((s.id, blank(&SALE_KEYS)));
                    sales.len() - 1
                }
            };
            put(&mut sales[at].1, i, &s.f);
        }
        for q in &p.products {
            let at = match products.iter().position(|(sku, _)| *sku == q.sku) {
                Some(at) => at,
                None => {
                    products.push((q.sku.clone(), blank(&SALE_KEYS)));
                    products.len() - 1
                }
            };
            put(&mut products[at].1, i, &q.f);
        }
    }
    json!({
        "t": col(&|p| json!(p.t_ms)),
        "node": node,
        "sales": sales.into_iter().map(|(id, m)| (id.to_string(), Value::Object(m))).collect::<Map<String, Value>>(),
        "products": products.into_iter().map(|(sku, m)| (sku.as_str().to_string(), Value::Object(m))).collect::<Map<String, Value>>(),
    })
}

/// How much the counter `name` of `now` grew since `then`.
fn count(now: &[(&'static str, u64)], then: &[(&'static str, u64)], name: &str) -> u64 {
    now.iter()
        .zip(then)
        .filter(|((n, _), _)| *n == name)
        .map(|((_, a), (_, b))| a.saturating_sub(*b))
        .sum()
}

/// One point from two samples a second apart.
fn point(app: &AppState, now: &Sample, prev: &Sample, t: u64) -> Point {
    let secs = now.at.duration_since(prev.at).as_secs_f64();
    let diff = |now: &[(&'static str, u64)], then: &[(&'static str, u64)], names: &[&str]| {
        let n: u64 = now
            .iter()
            .zip(then)
            .filter(|((name, _), _)| names.contains(name))
            .map(|((_, a), (_, b))| a.saturating_sub(*b))
            .sum();
        rate(n, secs)
    };
    let (r, rp) = (&now.reservations, &prev.reservations);
    let latency = now.latency.since(&prev.latency);
    let held = now.latency_ok.since(&prev.latency_ok);
    let h = health(app);
    let node = NodePoint {
        ok: diff(r, rp, &["ok"]),
        out_of_stock: diff(r, rp, &["out_of_stock"]),
        refused: diff(
            r,
            rp,
            &[
                "limit_exceeded",
                "sale_not_active",
                "not_found",
                "idempotency_key_reused",
                "invalid",
            ],
        ),
        shed: diff(r, rp, &["shed"]),
        rate_limited: diff(r, rp, &["rate_limited"]),
        // Every 5xx of any endpoint but the shed reservations (their own tile).
        errors: rate(
            now.server_errors
                .saturating_sub(prev.server_errors)
                .saturating_sub(count(r, rp, "shed")),
            secs,
        ),
        orders: diff(&now.orders, &prev.orders, &["created"]),
        p50: latency.quantile_ms(0.50),
        p99: latency.quantile_ms(0.99),
        held_p50: held.quantile_ms(0.50),
        held_p99: held.quantile_ms(0.99),
        ready: h.ready,
        down: h.down,
        blocked: h.blocked,
        lags: lags(app).0.into_iter().map(|(_, l)| l).collect(),
    };
    let mut sales = Vec::new();
    let mut products = Vec::new();
    for (sale, list) in ordered_sales(app, t).into_iter().take(MAX_SALES) {
        let mut sp = SalePoint {
            id: sale.meta.sale_id,
            f: Figures::default(),
        };
        for p in &list {
            let a = now.activity.get(&p.spec.sku).copied().unwrap_or_default();
            let b = prev.activity.get(&p.spec.sku).copied().unwrap_or(a);
            let r = |x: u64, y: u64| rate(x.saturating_sub(y), secs);
            let f = Figures {
                available: p.available(),
                held: p.held,
                sold: p.sold,
                reserved: r(a.reserved, b.reserved),
                confirmed: r(a.confirmed, b.confirmed),
                expired: r(a.expired, b.expired),
                cancelled: r(a.cancelled, b.cancelled),
            };
            sp.f.add(&f);
            if products.len() < MAX_PRODUCT_SERIES {
                products.push(ProductPoint {
                    sku: p.spec.sku.clone(),
                    f,
                });
            }
        }
        sales.push(sp);
    }
    Point {
        t_ms: t,
        node,
        sales,
        products,
    }
}

/// Records one history point a second from now on, whether or not a console is
/// open, until the server shuts down ([`Streams::close`]) or the task is aborted.
pub fn spawn_recorder(app: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut closed = app.streams.closed.subscribe();
        let mut every = tokio::time::interval(EVENT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prev: Option<Sample> = None;
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = closed.wait_for(|c| *c) => return,
            }
            let now = Sample::take(&app);
            if let Some(before) = &prev {
                let p = point(&app, &now, before, now_ms());
                app.streams.record(p);
            }
            prev = Some(now);
        }
    })
}
