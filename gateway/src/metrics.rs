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
const LATENCY_BUCKETS: [f64; 14] =
    [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
/// Buckets for engine batch applies: 1 µs to 100 ms.
const APPLY_BUCKETS: [f64; 12] = [1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1];
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
        registry.register("flashsale_reservation", "Reservation attempts by result", reservation_total.clone());
        let reservation_latency = Histogram::new(LATENCY_BUCKETS.into_iter());
        registry.register(
            "flashsale_reservation_latency_seconds",
            "Time to answer POST /api/v1/reservations",
            reservation_latency.clone(),
        );
        let order_total = Family::<ResultLabel, Counter>::default();
        registry.register("flashsale_order", "Checkout attempts by result", order_total.clone());
        let inventory_available = Family::<SkuLabel, Gauge>::default();
        registry.register(
            "flashsale_inventory_available",
            "Units neither held nor sold, per configured product",
            inventory_available.clone(),
        );
        let stockout_total = Counter::default();
        registry.register("flashsale_inventory_stockout", "Times a product's available count reached 0", stockout_total.clone());
        let readmodel_hit = Counter::default();
        registry.register("flashsale_readmodel_hit", "Read-model lookups that found the item", readmodel_hit.clone());
        let readmodel_miss = Counter::default();
        registry.register("flashsale_readmodel_miss", "Read-model lookups that did not", readmodel_miss.clone());
        let engine_apply = Histogram::new(APPLY_BUCKETS.into_iter());
        registry.register("flashsale_engine_apply_seconds", "Time to apply one batch of command records", engine_apply.clone());
        let partition_lag = Family::<PartitionLabel, Gauge>::default();
        registry.register(
            "flashsale_engine_partition_lag",
            "Command records written but not yet applied, per partition",
            partition_lag.clone(),
        );
        let snapshot_seconds = Histogram::new(SNAPSHOT_BUCKETS.into_iter());
        registry.register("flashsale_snapshot_seconds", "Time to encode and write one snapshot", snapshot_seconds.clone());
        let snapshot_rejected = Counter::default();
        registry.register(
            "flashsale_snapshot_rejected",
            "Snapshots refused at recovery (corrupt or failing invariants)",
            snapshot_rejected.clone(),
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
        }
    }

    pub fn reservation(&self, result: &'static str, latency: Duration) {
        self.reservation_total.get_or_create(&ResultLabel { result }).inc();
        self.reservation_latency.observe(latency.as_secs_f64());
    }
    pub fn order(&self, result: &'static str) {
        self.order_total.get_or_create(&ResultLabel { result }).inc();
    }
    pub fn set_available(&self, sku: &str, available: u64) {
        self.inventory_available.get_or_create(&SkuLabel { sku: sku.to_string() }).set(available as i64);
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
    pub fn engine_apply(&self, d: Duration) {
        self.engine_apply.observe(d.as_secs_f64());
    }
    pub fn partition_lag(&self, partition: u32, lag: u64) {
        self.partition_lag.get_or_create(&PartitionLabel { partition }).set(lag as i64);
    }
    pub fn snapshot_written(&self, d: Duration) {
        self.snapshot_seconds.observe(d.as_secs_f64());
    }
    pub fn snapshot_rejected(&self) {
        self.snapshot_rejected.inc();
    }

    /// The registry in the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
