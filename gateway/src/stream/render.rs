//! One event of the stream: the cumulative figures at one moment ([`Sample`]) and the
//! JSON the console shows, built from two samples (rates over the time between them);
//! the sales in display order, the engine lag and the node's health it reads.

use super::{SkuActivity, MAX_SALES};
use crate::api::AppState;
use crate::readmodel::{ProductEntry, SaleEntry};
use crate::time::{now_ms, rfc3339};
use flashsale_proto::{SaleId, SkuId};
use flashsale_runtime::metrics::LatencyWindow;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Instant;

/// The cumulative figures at one moment; an event shows the difference of two.
pub(super) struct Sample {
    pub(super) at: Instant,
    pub(super) activity: BTreeMap<SkuId, SkuActivity>,
    pub(super) reservations: Vec<(&'static str, u64)>,
    pub(super) orders: Vec<(&'static str, u64)>,
    /// Every 5xx answer so far, any endpoint.
    pub(super) server_errors: u64,
    pub(super) latency: LatencyWindow,
    pub(super) latency_ok: LatencyWindow,
}

impl Sample {
    pub(super) fn take(app: &AppState) -> Sample {
        let activity = app
            .read
            .products()
            .iter()
            .map(|p| (p.spec.sku.clone(), app.read.activity().of(&p.spec.sku)))
            .collect();
        Sample {
            at: Instant::now(),
            activity,
            reservations: app.metrics.reservation_counts(),
            orders: app.metrics.order_counts(),
            server_errors: app.metrics.http_server_errors(),
            latency: app.metrics.latency_window(),
            latency_ok: app.metrics.latency_ok_window(),
        }
    }
}

pub(super) fn rate(n: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    ((n as f64 / secs) * 100.0).round() / 100.0
}

fn counts_rates(
    now: &[(&'static str, u64)],
    then: Option<&[(&'static str, u64)]>,
    secs: f64,
) -> Value {
    let mut m = Map::new();
    for (i, (name, n)) in now.iter().enumerate() {
        let before = then.and_then(|t| t.get(i)).map_or(*n, |(_, b)| *b);
        m.insert(
            (*name).to_string(),
            json!(rate(n.saturating_sub(before), secs)),
        );
    }
    Value::Object(m)
}

pub(super) fn round_ms(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |ms| json!((ms * 100.0).round() / 100.0))
}

/// One event: every figure the console shows.
pub(super) fn render(app: &AppState, now: &Sample, prev: Option<&Sample>) -> Value {
    let t = now_ms();
    // No previous sample (the first event): every rate is 0 (`before` = now).
    let secs = prev.map_or(0.0, |p| now.at.duration_since(p.at).as_secs_f64());

    let sales = ordered_sales(app, t);
    let phase = |starts: u64, ends: u64| phase(t, starts, ends);
    let omitted = sales.len().saturating_sub(MAX_SALES);
    let sales: Vec<Value> = sales
        .into_iter()
        .take(MAX_SALES)
        .map(|(sale, products)| {
            let mut total = SkuActivity::default();
            let mut total_before = SkuActivity::default();
            let (mut avail, mut held, mut sold, mut inventory) = (0u64, 0u64, 0u64, 0u64);
            let products: Vec<Value> = products
                .iter()
                .map(|p| {
                    let a = now.activity.get(&p.spec.sku).copied().unwrap_or_default();
                    let before = prev
                        .and_then(|s| s.activity.get(&p.spec.sku))
                        .copied()
                        .unwrap_or(a);
                    for (sum, x) in [(&mut total, &a), (&mut total_before, &before)] {
                        sum.reserved += x.reserved;
                        sum.confirmed += x.confirmed;
                        sum.expired += x.expired;
                        sum.cancelled += x.cancelled;
                        sum.extended += x.extended;
                        sum.stockouts += x.stockouts;
                    }
                    avail += p.available();
                    held += p.held;
                    sold += p.sold;
                    inventory += p.spec.total_inventory;
                    json!({
                        "skuId": p.spec.sku.as_str(),
                        "name": p.spec.name,
                        "totalInventory": p.spec.total_inventory,
                        "availableCount": p.available(),
                        "reservedCount": p.held,
                        "soldCount": p.sold,
                        "paused": p.paused,
                        "isActive": !p.paused && t >= p.starts_at && t < p.ends_at,
                        "endsAt": rfc3339(p.ends_at),
                        "stockOuts": a.stockouts,
                        "holdsPerSecond": a.rates_since(&before, secs),
                    })
                })
                .collect();
            let status = match phase(sale.meta.starts_at, sale.meta.ends_at) {
                0 => "ACTIVE",
                1 => "UPCOMING",
                _ => "ENDED",
            };
            json!({
                "saleId": sale.meta.sale_id.to_string(),
                "name": sale.meta.name,
                "startsAt": rfc3339(sale.meta.starts_at),
                "endsAt": rfc3339(sale.meta.ends_at),
                "status": status,
                "totalInventory": inventory,
                "availableCount": avail,
                "reservedCount": held,
                "soldCount": sold,
                "stockOuts": total.stockouts,
                "holdsPerSecond": total.rates_since(&total_before, secs),
                "products": products,
            })
        })
        .collect();

    // This node's own requests.
    let window = prev.map(|p| now.latency.since(&p.latency));
    let window_ok = prev.map(|p| now.latency_ok.since(&p.latency_ok));
    let latency = json!({
        "p50": round_ms(window.as_ref().and_then(|w| w.quantile_ms(0.50))),
        "p99": round_ms(window.as_ref().and_then(|w| w.quantile_ms(0.99))),
        "count": window.as_ref().map_or(0, LatencyWindow::count),
        "held": {
            "p50": round_ms(window_ok.as_ref().and_then(|w| w.quantile_ms(0.50))),
            "p99": round_ms(window_ok.as_ref().and_then(|w| w.quantile_ms(0.99))),
            "count": window_ok.as_ref().map_or(0, LatencyWindow::count),
        },
    });
    let node = json!({
        "scope": "this gateway's own requests (refusals never reach the log, so other gateways cannot see them)",
        "reservationsPerSecond": counts_rates(&now.reservations, prev.map(|p| p.reservations.as_slice()), secs),
        "ordersPerSecond": counts_rates(&now.orders, prev.map(|p| p.orders.as_slice()), secs),
        "latencyMs": latency,
        "stockOutsTotal": app.metrics.stockouts(),
        "openStreams": app.streams.open(),
    });

    // Engine lag per partition.
    let (lags, source) = lags(app);
    let lag = json!({
        "source": source,
        "max": lags.iter().map(|(_, l)| *l).max().unwrap_or(0),
        "partitions": lags.iter().map(|(p, l)| json!({"partition": p, "lag": l})).collect::<Vec<_>>(),
    });
    let h = health(app);
    let health = json!({
        "ready": h.ready,
        "partitions": app.dispatcher.partitions(),
        "down": h.down,
        "writeBlocked": h.blocked,
    });

    json!({
        "time": rfc3339(t),
        "intervalMs": (secs * 1000.0).round() as u64,
        "sales": sales,
        "salesOmitted": omitted,
        "node": node,
        "engineLag": lag,
        "health": health,
    })
}

/// Active first, then upcoming, then ended (0, 1, 2).
fn phase(t: u64, starts: u64, ends: u64) -> u8 {
    if t >= starts && t < ends {
        0
    } else if t < starts {
        1
    } else {
        2
    }
}

/// Sales with their products, from the read model: active first, then upcoming, then
/// ended; newest start first within each.
pub(super) fn ordered_sales(app: &AppState, t: u64) -> Vec<(SaleEntry, Vec<ProductEntry>)> {
    let mut by_sale: BTreeMap<SaleId, Vec<ProductEntry>> = BTreeMap::new();
    for p in app.read.products() {
        by_sale.entry(p.sale_id).or_default().push(p);
    }
    let mut sales: Vec<_> = by_sale
        .into_iter()
        .filter_map(|(id, products)| app.read.sale(&id).map(|(s, _)| (s, products)))
        .collect();
    sales.sort_by(|(a, _), (b, _)| {
        phase(t, a.meta.starts_at, a.meta.ends_at)
            .cmp(&phase(t, b.meta.starts_at, b.meta.ends_at))
            .then(b.meta.starts_at.cmp(&a.meta.starts_at))
            .then(a.meta.sale_id.cmp(&b.meta.sale_id))
    });
    sales
}

/// Engine lag of every partition of the node (0 for one with no figure yet), and
/// where it comes from: the `commands` topic's ends (Kafka mode) or the engine.
pub(super) fn lags(app: &AppState) -> (Vec<(u32, u64)>, &'static str) {
    match app.streams.fresh_log_ends() {
        Some(ends) => (
            ends.iter()
                .enumerate()
                .map(|(p, end)| {
                    let p = p as u32;
                    (p, end.saturating_sub(app.read.applied_through(p)))
                })
                .collect(),
            "log",
        ),
        None => {
            let known = app.metrics.partition_lags();
            (
                (0..app.dispatcher.partitions())
                    .map(|p| (p, known.get(&p).copied().unwrap_or(0)))
                    .collect(),
                "engine",
            )
        }
    }
}

/// The node's health as `/ready` sees it.
pub(super) struct Health {
    pub(super) ready: bool,
    pub(super) down: u32,
    pub(super) blocked: u32,
}

pub(super) fn health(app: &AppState) -> Health {
    use crate::dispatch::PartitionStatus as S;
    let (mut down, mut blocked) = (0, 0);
    for p in 0..app.dispatcher.partitions() {
        match app.dispatcher.partition_status(p) {
            S::Failed(_) => down += 1,
            S::WriteBlocked(_) => blocked += 1,
            S::Live | S::Recovering => {}
        }
    }
    Health {
        ready: app.dispatcher.is_ready() && blocked == 0,
        down,
        blocked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_round_to_a_hundredth() {
        assert_eq!(rate(3, 2.0), 1.5);
        assert_eq!(rate(1, 3.0), 0.33);
        assert_eq!(rate(5, 0.0), 0.0);
    }
}
