//! Prometheus metrics (docs/observability.md), one registry per process, passed
//! down explicitly (no global recorder, so tests can run several servers at once).
//! Labels stay low-cardinality: `result`, `partition`, and `sku` only for configured
//! products; never user ids.
//!
//! Series whose labels are known up front (every `result` of
//! [`RESERVATION_RESULTS`] and [`ORDER_RESULTS`]) exist from the start at 0 (docs/observability.md,
//! "Observability"), so a dashboard shows 0 rather than nothing. The operators' console
//! (`GET /api/v1/admin/stream`) reads the same figures back: counters by result,
//! [`Metrics::latency_window`] for p50/p99 over the last second, and the engine's lag
//! per partition.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkuLabel {
    pub sku: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub partition: u32,
}

/// Every `result` of `flashsale_reservation_total` (the gateway's labels, in the
/// order the console shows them). Each series starts at 0.
pub const RESERVATION_RESULTS: &[&str] = &[
    "ok",
    "out_of_stock",
    "limit_exceeded",
    "sale_not_active",
    "not_found",
    "rate_limited",
    "idempotency_key_reused",
    "shed",
    "unavailable",
    "invalid",
    "other",
];

/// Every `result` of `flashsale_order_total`. Each series starts at 0.
pub const ORDER_RESULTS: &[&str] = &["created", "repeat", "rejected", "unavailable"];

/// Buckets for request latencies: 0.25 ms to 2.5 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets for engine batch applies: 1 µs to 100 ms.
const APPLY_BUCKETS: [f64; 12] = [
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1,
];
/// Buckets for snapshot writes: 1 ms to 60 s.
const SNAPSHOT_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reservation_total: Family<ResultLabel, Counter>,
    /// The counters of `reservation_total`, one per [`RESERVATION_RESULTS`] entry in
    /// its order: the hot path finds its counter by a short scan instead of hashing the
    /// label into the family's locked map on every answer.
    reservation_counters: Vec<Counter>,
    reservation_latency: Histogram,
    order_total: Family<ResultLabel, Counter>,
    inventory_available: Family<SkuLabel, Gauge>,
    stockout_total: Counter,
    /// Every 5xx answer of the HTTP API, any endpoint (shed reservations included).
    http_server_errors: Counter,
    readmodel_hit: Counter,
    readmodel_miss: Counter,
    engine_apply: Histogram,
    partition_lag: Family<PartitionLabel, Gauge>,
    snapshot_seconds: Histogram,
    snapshot_rejected: Counter,
    snapshot_skipped: Counter,
    reservations_pruned: Counter,
    snapshot_age: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
    /// Per partition: unix ms of its newest snapshot; ages are computed at render.
    snapshot_times: Mutex<BTreeMap<u32, u64>>,
    projector_records: Counter,
    projector_orders: Counter,
    partitions_failed: Gauge,
    partitions_write_blocked: Gauge,
    /// Reservation latencies again, in fine buckets the console reads back.
    latency_fine: LatencyBuckets,
    /// The latencies of reservations that got a hold (`ok`) alone: the console shows
    /// them apart, as a crowd's cheap refusals would hide them.
    latency_ok: LatencyBuckets,
    /// The newest engine lag per partition this process owns (what
    /// `flashsale_engine_partition_lag` shows), for the console.
    lags: Mutex<BTreeMap<u32, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let reservation_total = Family::<ResultLabel, Counter>::default();
        let reservation_counters: Vec<Counter> = RESERVATION_RESULTS
            .iter()
            .map(|&result| {
                reservation_total
                    .get_or_create(&ResultLabel { result })
                    .clone()
            })
            .collect();
        registry.register(
            "flashsale_reservation",
            "Reservation attempts by result",
            reservation_total.clone(),
        );
        let reservation_latency = Histogram::new(LATENCY_BUCKETS);
        registry.register(
            "flashsale_reservation_latency_seconds",
            "Time to answer POST /api/v1/reservations",
            reservation_latency.clone(),
        );
        let order_total = Family::<ResultLabel, Counter>::default();
        for result in ORDER_RESULTS {
            let _ = order_total.get_or_create(&ResultLabel { result });
        }
        registry.register(
            "flashsale_order",
            "Checkout attempts by result",
            order_total.clone(),
        );
        let inventory_available = Family::<SkuLabel, Gauge>::default();
        registry.register(
            "flashsale_inventory_available",
            "Units neither held nor sold, per configured product",
            inventory_available.clone(),
        );
        let stockout_total = Counter::default();
        registry.register(
            "flashsale_inventory_stockout",
            "Times a product's available count reached 0",
            stockout_total.clone(),
        );
        let http_server_errors = Counter::default();
        registry.register(
            "flashsale_http_server_errors",
            "HTTP answers with a 5xx status, any endpoint (503s of shed reservations included)",
            http_server_errors.clone(),
        );
        let readmodel_hit = Counter::default();
        registry.register(
            "flashsale_readmodel_hit",
            "Read-model lookups that found the item",
            readmodel_hit.clone(),
        );
        let readmodel_miss = Counter::default();
        registry.register(
            "flashsale_readmodel_miss",
            "Read-model lookups that did not",
            readmodel_miss.clone(),
        );
        let partitions_failed = Gauge::default();
        registry.register(
            "flashsale_partitions_failed",
            "Partitions whose recovery failed (down until an operator acts; /ready names them)",
            partitions_failed.clone(),
        );
        let partitions_write_blocked = Gauge::default();
        registry.register(
            "flashsale_partitions_write_blocked",
            "Partitions whose log cannot be written now (disk full, I/O error); retried by itself",
            partitions_write_blocked.clone(),
        );
        let engine_apply = Histogram::new(APPLY_BUCKETS);
        registry.register(
            "flashsale_engine_apply_seconds",
            "Time to apply one batch of command records",
            engine_apply.clone(),
        );
        let partition_lag = Family::<PartitionLabel, Gauge>::default();
        registry.register(
            "flashsale_engine_partition_lag",
            "Command records written but not yet applied, per partition",
            partition_lag.clone(),
        );
        let snapshot_seconds = Histogram::new(SNAPSHOT_BUCKETS);
        registry.register(
            "flashsale_snapshot_seconds",
            "Time to encode and write one snapshot",
            snapshot_seconds.clone(),
        );
        let snapshot_rejected = Counter::default();
        registry.register(
            "flashsale_snapshot_rejected",
            "Snapshots refused at recovery (corrupt or failing invariants)",
            snapshot_rejected.clone(),
        );
        let snapshot_skipped = Counter::default();
        registry.register(
            "flashsale_snapshots_skipped",
            "Snapshots not written because the write would leave less free space than the command log's reserve (--snapshot-reserve-mb)",
            snapshot_skipped.clone(),
        );
        let reservations_pruned = Counter::default();
        registry.register(
            "flashsale_reservations_pruned",
            "Expired and cancelled reservations forgotten after the retention (--retention-secs), as seen by this process's read model",
            reservations_pruned.clone(),
        );
        let snapshot_age = Family::<PartitionLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "flashsale_snapshot_age_seconds",
            "Seconds since the partition's newest snapshot (or since this process took the partition up, if it had none), per partition this process owns",
            snapshot_age.clone(),
        );
        let projector_records = Counter::default();
        registry.register(
            "flashsale_projector_records",
            "Event records the projector wrote to Postgres",
            projector_records.clone(),
        );
        let projector_orders = Counter::default();
        registry.register(
            "flashsale_projector_orders",
            "Orders the projector inserted into Postgres",
            projector_orders.clone(),
        );
        Metrics {
            registry,
            reservation_total,
            reservation_counters,
            reservation_latency,
            order_total,
            inventory_available,
            stockout_total,
            http_server_errors,
            readmodel_hit,
            readmodel_miss,
            engine_apply,
            partition_lag,
            snapshot_seconds,
            snapshot_rejected,
            snapshot_skipped,
            reservations_pruned,
            snapshot_age,
            snapshot_times: Mutex::new(BTreeMap::new()),
            projector_records,
            projector_orders,
            partitions_failed,
            partitions_write_blocked,
            latency_fine: LatencyBuckets::default(),
            latency_ok: LatencyBuckets::default(),
            lags: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn reservation(&self, result: &'static str, latency: Duration) {
        debug_assert!(
            RESERVATION_RESULTS.contains(&result),
            "reservation result {result:?} is missing from RESERVATION_RESULTS"
        );
        match RESERVATION_RESULTS.iter().position(|&r| r == result) {
            Some(i) => {
                self.reservation_counters[i].inc();
            }
            None => {
                self.reservation_total
                    .get_or_create(&ResultLabel { result })
                    .inc();
            }
        }
        self.reservation_latency.observe(latency.as_secs_f64());
        self.latency_fine.observe(latency);
        if result == "ok" {
            self.latency_ok.observe(latency);
        }
    }
    pub fn order(&self, result: &'static str) {
        debug_assert!(
            ORDER_RESULTS.contains(&result),
            "order result {result:?} is missing from ORDER_RESULTS"
        );
        self.order_total
            .get_or_create(&ResultLabel { result })
            .inc();
    }
    /// Reservation attempts so far, per result of [`RESERVATION_RESULTS`], in its order.
    pub fn reservation_counts(&self) -> Vec<(&'static str, u64)> {
        RESERVATION_RESULTS
            .iter()
            .map(|&result| {
                let n = self
                    .reservation_total
                    .get_or_create(&ResultLabel { result });
                (result, n.get())
            })
            .collect()
    }
    /// Checkout attempts so far, per result of [`ORDER_RESULTS`], in its order.
    pub fn order_counts(&self) -> Vec<(&'static str, u64)> {
        ORDER_RESULTS
            .iter()
            .map(|&result| {
                (
                    result,
                    self.order_total
                        .get_or_create(&ResultLabel { result })
                        .get(),
                )
            })
            .collect()
    }
    /// Every reservation latency so far, as counts per fine bucket; the difference
    /// of two of these is the window between them ([`LatencyWindow::quantile_ms`]).
    pub fn latency_window(&self) -> LatencyWindow {
        self.latency_fine.snapshot()
    }
    /// [`Metrics::latency_window`] of the reservations that got a hold only.
    pub fn latency_ok_window(&self) -> LatencyWindow {
        self.latency_ok.snapshot()
    }
    /// `flashsale_inventory_stockout_total` so far.
    pub fn stockouts(&self) -> u64 {
        self.stockout_total.get()
    }
    /// The newest engine lag of each partition this process owns.
    pub fn partition_lags(&self) -> BTreeMap<u32, u64> {
        self.lags.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set_available(&self, sku: &str, available: u64) {
        self.inventory_available
            .get_or_create(&SkuLabel {
                sku: sku.to_string(),
            })
            .set(available as i64);
    }
    /// One 5xx answer of the HTTP API.
    pub fn http_server_error(&self) {
        self.http_server_errors.inc();
    }
    /// `flashsale_http_server_errors_total` so far.
    pub fn http_server_errors(&self) -> u64 {
        self.http_server_errors.get()
    }
    pub fn stockout(&self) {
        self.stockout_total.inc();
    }
    pub fn readmodel_lookup(&self, hit: bool) {
        if hit {
            self.readmodel_hit.inc();
        } else {
            self.readmodel_miss.inc();
        }
    }
    pub fn set_partitions_failed(&self, n: u64) {
        self.partitions_failed.set(n as i64);
    }
    pub fn set_partitions_write_blocked(&self, n: u64) {
        self.partitions_write_blocked.set(n as i64);
    }
    pub fn engine_apply(&self, d: Duration) {
        self.engine_apply.observe(d.as_secs_f64());
    }
    pub fn partition_lag(&self, partition: u32, lag: u64) {
        self.partition_lag
            .get_or_create(&PartitionLabel { partition })
            .set(lag as i64);
        self.lags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partition, lag);
    }
    pub fn snapshot_written(&self, d: Duration) {
        self.snapshot_seconds.observe(d.as_secs_f64());
    }
    pub fn snapshot_rejected(&self) {
        self.snapshot_rejected.inc();
    }
    /// A snapshot skipped to keep free space for the log.
    pub fn snapshot_skipped(&self) {
        self.snapshot_skipped.inc();
    }
    /// `n` ended reservations pruned (bounded state).
    pub fn reservations_pruned(&self, n: u64) {
        self.reservations_pruned.inc_by(n);
    }
    /// The newest snapshot of `partition` is from `at_ms` (unix ms): written now, or
    /// found at recovery.
    pub fn snapshot_at(&self, partition: u32, at_ms: u64) {
        let mut t = self
            .snapshot_times
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let e = t.entry(partition).or_insert(at_ms);
        *e = (*e).max(at_ms);
    }
    /// This process no longer owns `partition` (Kafka rebalance): its per-partition
    /// gauges go, so another engine's figures are the only ones.
    pub fn partition_released(&self, partition: u32) {
        self.snapshot_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&partition);
        self.snapshot_age.remove(&PartitionLabel { partition });
        self.partition_lag.remove(&PartitionLabel { partition });
        self.lags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&partition);
    }
    pub fn projected(&self, records: u64, orders: u64) {
        self.projector_records.inc_by(records);
        self.projector_orders.inc_by(orders);
    }

    /// The registry in the text exposition format.
    pub fn render(&self) -> String {
        let now = crate::now_ms();
        for (p, at) in self
            .snapshot_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let age = now.saturating_sub(*at) as f64 / 1000.0;
            self.snapshot_age
                .get_or_create(&PartitionLabel { partition: *p })
                .set(age);
        }
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// `GET /metrics`: the registry in the OpenMetrics text format.
    pub fn response(&self) -> axum::response::Response {
        use axum::http::{header, HeaderValue};
        use axum::response::IntoResponse;
        let mut res = self.render().into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        res
    }
}

/// Fine latency buckets: bucket `i` holds latencies from 2^(i/4) to 2^((i+1)/4)
/// microseconds (about 19% wide), the last one everything above ~24 minutes. One
/// relaxed atomic add per observation, no lock on the reservation path.
const FINE_BUCKETS: usize = 128;

#[derive(Debug)]
struct LatencyBuckets([AtomicU64; FINE_BUCKETS]);

impl Default for LatencyBuckets {
    fn default() -> Self {
        LatencyBuckets(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl LatencyBuckets {
    fn observe(&self, d: Duration) {
        let us = d.as_micros().max(1) as f64;
        let i = ((us.log2() * 4.0).floor() as usize).min(FINE_BUCKETS - 1);
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> LatencyWindow {
        LatencyWindow(self.0.iter().map(|b| b.load(Ordering::Relaxed)).collect())
    }
}

/// Counts of reservation latencies per fine bucket: cumulative as
/// [`Metrics::latency_window`] returns it, or the window between two of those
/// ([`LatencyWindow::since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyWindow(Vec<u64>);

impl LatencyWindow {
    /// What was observed after `earlier` (an older snapshot of the same metrics).
    pub fn since(&self, earlier: &LatencyWindow) -> LatencyWindow {
        LatencyWindow(
            self.0
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.0.get(i).copied().unwrap_or(0)))
                .collect(),
        )
    }
    pub fn count(&self) -> u64 {
        self.0.iter().sum()
    }
    /// The `q` quantile (0 < q ≤ 1) in milliseconds, as the geometric middle of its
    /// bucket (within ~10%); `None` when the window is empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.0.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(2f64.powf((i as f64 + 0.5) / 4.0) / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_result_series_start_at_zero() {
        let m = Metrics::new();
        let text = m.render();
        for r in RESERVATION_RESULTS {
            let line = format!("flashsale_reservation_total{{result=\"{r}\"}} 0");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        for r in ORDER_RESULTS {
            let line = format!("flashsale_order_total{{result=\"{r}\"}} 0");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        m.reservation("out_of_stock", Duration::from_millis(2));
        assert!(m
            .render()
            .contains("flashsale_reservation_total{result=\"out_of_stock\"} 1"));
        assert_eq!(m.reservation_counts()[1], ("out_of_stock", 1));
    }

    #[test]
    fn latency_quantiles_of_a_window() {
        let m = Metrics::new();
        assert_eq!(m.latency_window().quantile_ms(0.5), None);
        for _ in 0..50 {
            m.reservation("ok", Duration::from_millis(300));
        }
        let before = m.latency_window();
        for _ in 0..98 {
            m.reservation("ok", Duration::from_millis(1));
        }
        for _ in 0..2 {
            m.reservation("ok", Duration::from_millis(100));
        }
        let w = m.latency_window().since(&before);
        assert_eq!(w.count(), 100);
        // A refusal counts in the window of every attempt, not in that of holds.
        let ok_before = m.latency_ok_window();
        m.reservation("out_of_stock", Duration::from_millis(1));
        assert_eq!(m.latency_ok_window().since(&ok_before).count(), 0);
        assert_eq!(m.latency_ok_window().count(), 150);
        let p50 = w.quantile_ms(0.5).unwrap();
        let p99 = w.quantile_ms(0.99).unwrap();
        assert!((0.85..1.2).contains(&p50), "p50 {p50}");
        assert!((85.0..120.0).contains(&p99), "p99 {p99}");
        // the 300 ms before the window do not count
        assert!(w.quantile_ms(1.0).unwrap() < 120.0);
    }

    #[test]
    fn lags_follow_the_gauge() {
        let m = Metrics::new();
        m.partition_lag(2, 7);
        m.partition_lag(0, 1);
        assert_eq!(
            m.partition_lags().into_iter().collect::<Vec<_>>(),
            [(0, 1), (2, 7)]
        );
        m.partition_released(2);
        assert_eq!(m.partition_lags().len(), 1);
    }
}
