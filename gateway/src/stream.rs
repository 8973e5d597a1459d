//! `GET /api/v1/admin/stream`: the operators' live figures as Server-Sent Events, one
//! `data:` JSON event at once and then every second (docs/api.md, "GET /console"). The
//! console page (`GET /console`, [`crate::console`]) is its reader.
//!
//! Where each figure comes from, so that in Kafka mode every gateway shows the whole
//! sale and says which figures are its own:
//! - stock (available / held / sold / total, paused, end of the window): the read model,
//!   which follows every partition's events (the whole sale in either mode);
//! - holds per second by outcome (new holds, confirmed, expired, cancelled, extended)
//!   and stock-outs per product: [`Activity`], counted from the same events as the read
//!   model applies them (the whole sale);
//! - reservation attempts per second by API result (`ok`, `out_of_stock`, …), orders
//!   per second, p50/p99 latency: this node's own requests (the refusals never reach the
//!   log, so no other node can see them); the event puts them under `node`;
//! - engine lag per partition: command records not yet reflected in this gateway's view.
//!   In Kafka mode that is the `commands` topic's end minus what the read model has
//!   applied (the wiring probes the ends, [`spawn_log_end_probe`]); in embedded mode the
//!   engine's own count of records written but not applied.
//!
//! History: every gateway records one point a second ([`spawn_recorder`]) in a ring
//! of [`HISTORY_POINTS`] (16 minutes): per sale and per product (the first
//! [`MAX_PRODUCT_SERIES`]) stock and holds per second, this node's reservations per
//! second by result, p50/p99 of every attempt and of the holds alone, and its health
//! (ready, partitions down or write-blocked, engine lag per partition). The first
//! event of a stream carries the whole ring under `history`, each later one the points
//! added since, so a console opened at 10:01 shows 10:00.
//!
//! Bounded: at most [`MAX_STREAMS`] streams at once (503 past that), at most
//! [`MAX_SALES`] sales per event, [`HISTORY_POINTS`] points of at most [`MAX_SALES`]
//! sales and [`MAX_PRODUCT_SERIES`] products each, and every stream ends when the
//! server shuts down ([`Streams::close`]), so an open console never holds a graceful
//! stop back.

use crate::api::AppState;
use crate::error::ApiError;
use crate::readmodel::{ProductEntry, SaleEntry};
use crate::time::{now_ms, rfc3339};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use flashsale_proto::{Event, EventRecord, ReservationStatus, SaleId, SkuId};
use flashsale_runtime::metrics::LatencyWindow;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Streams open at once on one node (each costs a task and one JSON render a second).
pub const MAX_STREAMS: usize = 16;
/// Sales per event: active ones first, then upcoming, then ended, newest first.
pub const MAX_SALES: usize = 20;
/// One event at least this often.
pub const EVENT_EVERY: Duration = Duration::from_secs(1);
/// A probed log end older than this is not used (the probe is failing).
const LOG_ENDS_FRESH_FOR: Duration = Duration::from_secs(5);
/// Points of history kept (one a second): 16 minutes.
pub const HISTORY_POINTS: usize = 960;
/// Products with a history of their own: the first ones of the sales shown.
pub const MAX_PRODUCT_SERIES: usize = 64;

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
    fn rates_since(&self, earlier: &SkuActivity, secs: f64) -> Value {
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

/// The node's open streams: the limit, the shutdown signal, and (Kafka mode) the
/// probed ends of the `commands` partitions.
#[derive(Debug)]
pub struct Streams {
    permits: Arc<Semaphore>,
    closed: watch::Sender<bool>,
    log_ends: Mutex<Option<(Vec<u64>, Instant)>>,
    history: Mutex<History>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            permits: Arc::new(Semaphore::new(MAX_STREAMS)),
            closed: watch::Sender::new(false),
            log_ends: Mutex::new(None),
            history: Mutex::new(History::default()),
        }
    }
}

impl Streams {
    /// Ends every open stream and refuses new ones (server shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.permits.close();
    }
    /// Streams open now.
    pub fn open(&self) -> usize {
        MAX_STREAMS.saturating_sub(self.permits.available_permits())
    }
    /// The newest end offset of each `commands` partition (Kafka mode's lag probe).
    pub fn set_log_ends(&self, ends: Vec<u64>) {
        *self.log_ends.lock().unwrap_or_else(|p| p.into_inner()) = Some((ends, Instant::now()));
    }
    /// Points recorded so far (at most [`HISTORY_POINTS`]).
    pub fn history_len(&self) -> usize {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .points
            .len()
    }
    fn fresh_log_ends(&self) -> Option<Vec<u64>> {
        let g = self.log_ends.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .filter(|(_, at)| at.elapsed() < LOG_ENDS_FRESH_FOR)
            .map(|(e, _)| e.clone())
    }
}

/// Kafka mode: every second while a stream is open, asks `probe` (a blocking call to
/// the broker) for the end offset of each `commands` partition, so the console's lag
/// covers engines in other processes too. Stops with the returned task.
pub fn spawn_log_end_probe<F>(app: AppState, probe: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> anyhow::Result<Vec<u64>> + Send + 'static,
{
    let probe = Arc::new(Mutex::new(probe));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EVENT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        let mut tick = 0u64;
        loop {
            every.tick().await;
            tick += 1;
            // Every second while a console watches; every 5 s for the history.
            if app.streams.open() == 0 && !tick.is_multiple_of(5) {
                continue;
            }
            let probe = probe.clone();
            let ends = tokio::task::spawn_blocking(move || {
                let mut p = probe.lock().unwrap_or_else(|p| p.into_inner());
                (*p)()
            })
            .await;
            match ends {
                Ok(Ok(ends)) => {
                    warned = false;
                    app.streams.set_log_ends(ends);
                }
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %format!("{e:#}"), "console: cannot read the commands topic's end offsets; engine lag shows this process's engine only");
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::warn!(error = %e, "console: the log-end probe panicked"),
            }
        }
    })
}

/// `GET /api/v1/admin/stream` (Bearer auth).
pub async fn admin_stream(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = app.authorize(&headers) {
        return e.into_response();
    }
    let permit = match app.streams.permits.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(tokio::sync::TryAcquireError::Closed) => {
            return ApiError::unavailable("The server is shutting down").into_response()
        }
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            return ApiError::shed(&format!(
                "{MAX_STREAMS} console streams are open on this node (the limit); close one"
            ))
            .into_response()
        }
    };
    let closed = app.streams.closed.subscribe();
    let state = StreamState {
        app,
        _permit: permit,
        closed,
        prev: None,
        every: None,
        sent_through: None,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        match &mut st.every {
            None => {
                let mut every = tokio::time::interval(EVENT_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await; // the first tick is now
                st.every = Some(every);
            }
            Some(every) => {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = st.closed.wait_for(|c| *c) => return None,
                }
            }
        }
        if *st.closed.borrow() {
            return None;
        }
        let sample = Sample::take(&st.app);
        let mut body = render(&st.app, &sample, st.prev.as_ref());
        let (history, through) = st.app.streams.history_since(st.sent_through);
        body["history"] = history;
        st.sent_through = through.or(st.sent_through);
        st.prev = Some(sample);
        Some((
            Ok::<_, Infallible>(SseEvent::default().data(body.to_string())),
            st,
        ))
    });
    let mut res = Sse::new(events).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies (nginx) must not hold the events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

struct StreamState {
    app: AppState,
    _permit: OwnedSemaphorePermit,
    closed: watch::Receiver<bool>,
    prev: Option<Sample>,
    every: Option<tokio::time::Interval>,
    /// Time of the newest history point sent.
    sent_through: Option<u64>,
}

/// The cumulative figures at one moment; an event shows the difference of two.
struct Sample {
    at: Instant,
    activity: BTreeMap<SkuId, SkuActivity>,
    reservations: Vec<(&'static str, u64)>,
    orders: Vec<(&'static str, u64)>,
    /// Every 5xx answer so far, any endpoint.
    server_errors: u64,
    latency: LatencyWindow,
    latency_ok: LatencyWindow,
}

impl Sample {
    fn take(app: &AppState) -> Sample {
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

fn rate(n: u64, secs: f64) -> f64 {
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

fn round_ms(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |ms| json!((ms * 100.0).round() / 100.0))
}

/// One event: every figure the console shows.
fn render(app: &AppState, now: &Sample, prev: Option<&Sample>) -> Value {
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
fn ordered_sales(app: &AppState, t: u64) -> Vec<(SaleEntry, Vec<ProductEntry>)> {
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
fn lags(app: &AppState) -> (Vec<(u32, u64)>, &'static str) {
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
struct Health {
    ready: bool,
    down: u32,
    blocked: u32,
}

fn health(app: &AppState) -> Health {
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

// ------------------------------------------------------------------ history

/// One second of the console's charts.
#[derive(Debug, Clone, PartialEq)]
struct Point {
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
struct History {
    points: VecDeque<Point>,
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
    fn history_since(&self, after: Option<u64>) -> (Value, Option<u64>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use flashsale_proto::{
        Cents, ProductSpec, ReservationId, ReservationView, SaleConfig, SaleMeta, UserId,
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

    #[test]
    fn rates_round_to_a_hundredth() {
        assert_eq!(rate(3, 2.0), 1.5);
        assert_eq!(rate(1, 3.0), 0.33);
        assert_eq!(rate(5, 0.0), 0.0);
    }
}
