//! Prometheus metrics (DESIGN.md "Observability"), one registry per process, passed
//! down explicitly (no global recorder, so tests can run several servers at once).
//! Labels stay low-cardinality: `result`, `partition`, and `sku` only for configured
//! products; never user ids.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
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
    reservation_latency: Histogram,
    order_total: Family<ResultLabel, Counter>,
    inventory_available: Family<SkuLabel, Gauge>,
    stockout_total: Counter,
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
            reservation_latency,
            order_total,
            inventory_available,
            stockout_total,
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
        }
    }

    pub fn reservation(&self, result: &'static str, latency: Duration) {
        self.reservation_total
            .get_or_create(&ResultLabel { result })
            .inc();
        self.reservation_latency.observe(latency.as_secs_f64());
    }
    pub fn order(&self, result: &'static str) {
        self.order_total
            .get_or_create(&ResultLabel { result })
            .inc();
    }
    pub fn set_available(&self, sku: &str, available: u64) {
        self.inventory_available
            .get_or_create(&SkuLabel {
                sku: sku.to_string(),
            })
            .set(available as i64);
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
