//! The Grafana dashboard (`ops/grafana/flashsale.json`) queries only metrics that a
//! running server exposes, and `ops/prometheus.yml` scrapes every kind of process.

use flashsale_tests::serde_json::Value;
use flashsale_tests::{Mode, TestServer};
use std::collections::BTreeSet;
use std::path::PathBuf;

fn repo_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL `expr` in the dashboard, wherever it sits in the JSON.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// The `flashsale_…` metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("flashsale_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Sample names in a Prometheus/OpenMetrics text exposition.
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(flashsale_a_bucket[1m]))) / flashsale_b"
        ),
        vec!["flashsale_a_bucket", "flashsale_b"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exposed_embedded() {
    dashboard_metrics_exposed(Mode::Embedded).await;
}

/// `serve --kafka`: engine, gateway and (with Postgres) projector share one registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exposed_kafka() {
    dashboard_metrics_exposed(Mode::Kafka).await;
}

async fn dashboard_metrics_exposed(mode: Mode) {
    let dashboard: Value =
        flashsale_tests::serde_json::from_str(&repo_file("ops/grafana/flashsale.json"))
            .expect("dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 5, "too few queries in the dashboard: {all:?}");
    let wanted: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    for panel in [
        "Reservations/s by result",
        "Reservation latency p50 / p99",
        "Stock per SKU",
        "Engine lag per partition",
        "Snapshot age per partition",
    ] {
        assert!(
            dashboard["panels"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["title"] == panel),
            "panel {panel:?} missing"
        );
    }

    // One server with every process's metrics in one registry. Traffic: a sale,
    // reservations (one refused), a checkout, reads.
    let Some(s) = TestServer::start_with(mode, |a| a.snapshot_every_secs = 1).await else {
        return; // Kafka not configured: skipped (said why)
    };
    s.create_sale(&[("DASH-1", 2, 1), ("DASH-2", 5, 1)], 300, -5)
        .await;
    let r = s.reserve("u1", "DASH-1", 1).await;
    assert_eq!(r.status.as_u16(), 201, "{:?}", r.body);
    s.reserve("u2", "DASH-1", 1).await;
    assert_eq!(s.reserve("u3", "DASH-1", 1).await.error(), "Out of Stock");
    let id = r.body["reservationId"].as_str().unwrap().to_string();
    assert_eq!(s.checkout(&id, "pay-dash").await.status.as_u16(), 201);
    s.get("/api/v1/products/DASH-2/availability").await;
    s.get("/api/v1/products/NOPE-1/availability").await;
    let text = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let have = exposed(&text);
    let missing: Vec<&String> = wanted.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics /metrics does not have: {missing:?}\n/metrics:\n{text}"
    );
    // Labels stay low-cardinality: sku only for configured products, never a user id.
    assert!(
        text.contains("flashsale_inventory_available{sku=\"DASH-1\"}"),
        "{text}"
    );
    for user in ["u1", "u2", "u3"] {
        assert!(
            !text.contains(&format!("\"{user}\"")),
            "a user id is a label value:\n{text}"
        );
    }
    assert!(
        !text.contains("NOPE-1"),
        "an unknown SKU became a label:\n{text}"
    );
    s.stop().await;
}

#[test]
fn prometheus_scrapes_every_kind_of_process() {
    let cfg = repo_file("ops/prometheus.yml");
    for job in [
        "job_name: flashsale-gateway",
        "job_name: flashsale-engine",
        "job_name: flashsale-projector",
    ] {
        assert!(cfg.contains(job), "ops/prometheus.yml has no {job}");
    }
    assert!(cfg.matches("metrics_path: /metrics").count() >= 3);
}
