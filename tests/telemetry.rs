//! Observability end to end, through the `flashsale` binary: one reservation is one
//! trace across gateway and engine (exported over OTLP/HTTP to a real receiver started
//! here), engine and projector serve `/metrics`, and a run at debug log level never
//! logs the admin token or a shipping address.

use flashsale_tests::otlp::{OtlpReceiver, ReceivedSpan};
use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::json;
use flashsale_tests::{call, client, flashsale_bin, free_port, kafka, wait_ready};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TOKEN: &str = "tok-Zq8sEcRetAdm1n-7731";
const ADDRESS: &str = "221B Qwzxyv Street, Unmistakable-Town 90210";
/// The caller's trace context of the traced reservation.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A `flashsale` child process; stderr to `<dir>/<name>.log`. SIGTERM + bounded wait
/// on [`Child::stop`], SIGKILL on drop.
struct Child {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Child {
    fn spawn(name: &str, args: &[String], otlp: &str, dir: &Path) -> Child {
        Self::spawn_with(name, args, otlp, "http/protobuf", dir)
    }

    fn spawn_with(name: &str, args: &[String], otlp: &str, protocol: &str, dir: &Path) -> Child {
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new(flashsale_bin())
            .args(args)
            .args(["--otlp-endpoint", otlp, "--otlp-protocol", protocol])
            .args(["--trace-sample-ratio", "1"])
            .args(["--log", "debug", "--log-format", "json"])
            .env_remove("FLASHSALE_KAFKA")
            .env_remove("FLASHSALE_POSTGRES")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("OTEL_SERVICE_NAME")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn flashsale");
        Child {
            child: Some(child),
            log,
        }
    }

    /// SIGTERM, then wait (30 s at most); the log afterwards.
    fn stop(mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            for _ in 0..300 {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The spans of one trace form gateway → command → engine: a server span of the
/// reservation route, a `command` child of it, and an `engine.apply` child of that.
fn check_trace(spans: &[ReceivedSpan], trace_id: &str, gateway: &str, engine: &str) {
    let of_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let http = of_trace
        .iter()
        .find(|s| s.name == "POST /api/v1/reservations")
        .unwrap_or_else(|| panic!("no HTTP span in trace {trace_id}: {of_trace:#?}"));
    assert_eq!(http.service, gateway, "{http:?}");
    assert_eq!(http.kind, 2, "server span: {http:?}");
    assert_eq!(
        http.attr("http.response.status_code"),
        Some("201"),
        "{http:?}"
    );
    let command = of_trace
        .iter()
        .find(|s| s.name == "command reserve")
        .unwrap_or_else(|| panic!("no command span in trace {trace_id}: {of_trace:#?}"));
    assert_eq!(command.service, gateway);
    assert_eq!(
        command.parent_span_id, http.span_id,
        "command is a child of the request"
    );
    let apply = of_trace
        .iter()
        .find(|s| s.name == "engine.apply")
        .unwrap_or_else(|| panic!("no engine span in trace {trace_id}: {of_trace:#?}"));
    assert_eq!(apply.service, engine);
    assert_eq!(
        apply.parent_span_id, command.span_id,
        "the engine span is a child of the command span"
    );
    assert_eq!(
        apply.attr("flashsale.outcome"),
        Some("reserved"),
        "{apply:?}"
    );
}

fn trace_complete(spans: &[ReceivedSpan], trace_id: &str) -> bool {
    [
        "POST /api/v1/reservations",
        "command reserve",
        "engine.apply",
    ]
    .iter()
    .all(|n| spans.iter().any(|s| s.trace_id == trace_id && s.name == *n))
}

/// Secrets must appear in neither the logs nor any span attribute.
fn check_no_secrets(what: &str, log: &str, spans: &[ReceivedSpan]) {
    assert!(
        !log.contains(TOKEN),
        "{what}: the admin token is in the log"
    );
    assert!(
        !log.contains(ADDRESS),
        "{what}: the shipping address is in the log"
    );
    assert!(
        !log.contains("Qwzxyv"),
        "{what}: part of the shipping address is in the log"
    );
    for sp in spans {
        for (k, v) in &sp.attributes {
            assert!(
                !v.contains(TOKEN) && !v.contains("Qwzxyv"),
                "{what}: span {} attribute {k} holds a secret",
                sp.name
            );
        }
    }
}

/// Reserve (with the caller's trace context), check out with the address, and a few
/// calls that fail (wrong token, bad checkout) so error paths log too.
async fn traffic(base: &str, sku: &str) -> String {
    let c = client();
    let auth = format!("Bearer {TOKEN}");
    let r = call(
        &c,
        base,
        Method::POST,
        "/api/v1/reservations",
        Some(json!({"userId": "user-1", "skuId": sku, "quantity": 1})),
        &[("traceparent", TRACEPARENT)],
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["reservationId"]
        .as_str()
        .expect("reservationId")
        .to_string();
    let order = json!({"reservationId": id, "paymentTransactionId": "pay-1",
                       "paymentMethod": "CREDIT_CARD", "shippingAddress": ADDRESS});
    let o = call(
        &c,
        base,
        Method::POST,
        "/api/v1/orders/checkout",
        Some(order),
        &[],
    )
    .await;
    assert_eq!(o.status, StatusCode::CREATED, "{:?}", o.body);
    // A repeat, a checkout of an unknown reservation, a malformed one, a wrong token.
    let again = json!({"reservationId": id, "paymentTransactionId": "pay-1",
                       "paymentMethod": "CREDIT_CARD", "shippingAddress": ADDRESS});
    call(
        &c,
        base,
        Method::POST,
        "/api/v1/orders/checkout",
        Some(again),
        &[],
    )
    .await;
    let unknown = json!({"reservationId": "res_nope", "paymentTransactionId": "pay-2",
                         "paymentMethod": "CREDIT_CARD", "shippingAddress": ADDRESS});
    call(
        &c,
        base,
        Method::POST,
        "/api/v1/orders/checkout",
        Some(unknown),
        &[],
    )
    .await;
    let bad = json!({"reservationId": id, "paymentTransactionId": "pay-3",
                     "paymentMethod": "CASH", "shippingAddress": ADDRESS});
    call(
        &c,
        base,
        Method::POST,
        "/api/v1/orders/checkout",
        Some(bad),
        &[],
    )
    .await;
    let w = call(
        &c,
        base,
        Method::GET,
        "/api/v1/admin/sales/sale_x",
        None,
        &[("authorization", &format!("{auth}x"))],
    )
    .await;
    assert_eq!(w.status, StatusCode::UNAUTHORIZED);
    // An untraced reservation too (the sampler decides: ratio 1).
    let r2 = call(
        &c,
        base,
        Method::POST,
        "/api/v1/reservations",
        Some(json!({"userId": "user-2", "skuId": sku, "quantity": 1})),
        &[],
    )
    .await;
    assert_eq!(r2.status, StatusCode::CREATED, "{:?}", r2.body);
    id
}

/// Creates a sale through the admin API (the test token differs from the support
/// crate's), retrying while the engine is not there yet (Kafka mode).
async fn create_sale_with_token(base: &str, sku: &str) {
    let c = client();
    let body = json!({"name": "Trace Sale", "startsAt": flashsale_tests::time_in(-5), "endsAt": flashsale_tests::time_in(3600),
        "reservationTtlSeconds": 300,
        "products": [{"skuId": sku, "name": "P", "category": "C", "basePrice": 10.0, "flashSalePrice": 5.0,
                      "totalInventory": 100, "perUserLimit": 2}]});
    for _ in 0..120 {
        let a = call(
            &c,
            base,
            Method::POST,
            "/api/v1/admin/sales",
            Some(body.clone()),
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
        if a.status == StatusCode::CREATED {
            return;
        }
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.body);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the sale was not created within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_one_trace_per_reservation_and_no_secrets_in_logs() {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("data");
    let server = Child::spawn(
        "serve",
        &s(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-token",
            TOKEN,
            "--partitions",
            "2",
            "--rate-limit-per-user",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
        ]),
        &receiver.endpoint(),
        dir.path(),
    );
    wait_ready(&client(), &base).await;
    create_sale_with_token(&base, "TRACE-SKU").await;
    traffic(&base, "TRACE-SKU").await;

    let reservations = |s: &[ReceivedSpan]| {
        s.iter()
            .filter(|s| s.name == "engine.apply" && s.attr("flashsale.outcome") == Some("reserved"))
            .count()
    };
    let spans = receiver
        .wait_for(Duration::from_secs(30), |s| {
            trace_complete(s, TRACE_ID) && reservations(s) >= 2
        })
        .await;
    check_trace(&spans, TRACE_ID, "flashsale", "flashsale");
    // The untraced reservation started a trace of its own, with the engine in it.
    let own: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "POST /api/v1/reservations" && s.trace_id != TRACE_ID)
        .collect();
    assert_eq!(own.len(), 1, "one more reservation trace: {own:#?}");
    let other = own[0].trace_id.clone();
    let spans = receiver
        .wait_for(Duration::from_secs(30), |s| trace_complete(s, &other))
        .await;
    check_trace(&spans, &other, "flashsale", "flashsale");
    // The checkout is traced too, and its command carries no address.
    assert!(
        spans.iter().any(|s| s.name == "command checkout"),
        "no checkout command span"
    );

    let log = server.stop();
    assert!(
        log.contains("\"level\":\"DEBUG\"") || log.contains("\"level\":\"INFO\""),
        "the log is empty or not JSON: {log}"
    );
    check_no_secrets("embedded serve", &log, &receiver.spans());
}

/// Kafka mode: gateway and engine are separate processes; the context crosses the
/// broker in the record's `traceparent` header. The engine's `/metrics` has the engine
/// figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_one_trace_across_gateway_and_engine_processes() {
    let Some(svc) = kafka::services_or_skip("kafka trace test") else {
        return;
    };
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let id = kafka::unique_id();
    let prefix = format!("flashsale-test-{id}.");
    let out = std::process::Command::new(flashsale_bin())
        .args([
            "topics",
            "create",
            "--kafka",
            &svc.kafka,
            "--prefix",
            &prefix,
            "--partitions",
            "2",
            "--replies-partitions",
            "1",
        ])
        .env_remove("FLASHSALE_KAFKA")
        .output()
        .expect("run flashsale topics create");
    assert!(
        out.status.success(),
        "topics create: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let metrics_port = free_port();
    let data = dir.path().join("engine-data");
    let engine = Child::spawn(
        "engine",
        &s(&[
            "engine",
            "--kafka",
            &svc.kafka,
            "--prefix",
            &prefix,
            "--engine-group",
            &format!("flashsale-test-{id}-engine"),
            "--data-dir",
            data.to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--snapshot-every-secs",
            "1",
        ]),
        &receiver.endpoint(),
        dir.path(),
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let gateway = Child::spawn(
        "gateway",
        &s(&[
            "gateway",
            "--kafka",
            &svc.kafka,
            "--prefix",
            &prefix,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-token",
            TOKEN,
            "--gateway-id",
            "0",
            "--rate-limit-per-user",
            "0",
        ]),
        &receiver.endpoint(),
        dir.path(),
    );
    wait_ready(&client(), &base).await;
    create_sale_with_token(&base, "KTRACE-SKU").await;
    traffic(&base, "KTRACE-SKU").await;

    let spans = receiver
        .wait_for(Duration::from_secs(30), |s| trace_complete(s, TRACE_ID))
        .await;
    check_trace(&spans, TRACE_ID, "flashsale-gateway", "flashsale-engine");

    // The engine's own /metrics: applies recorded, lag and snapshot age per partition.
    let m = client()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .expect("engine /metrics")
        .text()
        .await
        .unwrap();
    let count = m
        .lines()
        .find_map(|l| l.strip_prefix("flashsale_engine_apply_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(count > 0.0, "no engine applies recorded:\n{m}");
    for name in [
        "flashsale_engine_partition_lag{",
        "flashsale_snapshot_age_seconds{",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(name)),
            "{name} missing from the engine's /metrics:\n{m}"
        );
    }

    let glog = gateway.stop();
    let elog = engine.stop();
    let spans = receiver.spans();
    check_no_secrets("kafka gateway", &glog, &spans);
    check_no_secrets("kafka engine", &elog, &spans);
}

/// `flashsale projector --metrics-listen` serves the registry (Postgres needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_serves_metrics() {
    let Some(svc) = kafka::services_or_skip("projector metrics test") else {
        return;
    };
    let Some(pg) = svc.postgres.clone() else {
        assert!(
            !kafka::services_required(),
            "FLASHSALE_REQUIRE_SERVICES=1 but no Postgres is configured"
        );
        eprintln!("projector metrics test: no Postgres configured; skipping");
        return;
    };
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let id = kafka::unique_id();
    let url = kafka::fresh_postgres(&pg, &id).await.expect("fresh schema");
    let port = free_port();
    let projector = Child::spawn(
        "projector",
        &s(&[
            "projector",
            "--kafka",
            &svc.kafka,
            "--postgres",
            &url,
            "--topic-prefix",
            &format!("flashsale-test-{id}."),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ]),
        &receiver.endpoint(),
        dir.path(),
    );
    let c = client();
    let mut text = String::new();
    for _ in 0..200 {
        if let Ok(r) = c
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
        {
            text = r.text().await.unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains("flashsale_projector_records_total"),
        "projector /metrics:\n{text}"
    );
    projector.stop();
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` (here `--otlp-protocol grpc`): the same trace
/// reaches an OTLP gRPC receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_reaches_a_grpc_receiver() {
    let receiver = OtlpReceiver::start_grpc().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("data");
    let server = Child::spawn_with(
        "serve-grpc",
        &s(&[
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-token",
            TOKEN,
            "--partitions",
            "2",
            "--rate-limit-per-user",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
        ]),
        &receiver.endpoint(),
        "grpc",
        dir.path(),
    );
    wait_ready(&client(), &base).await;
    create_sale_with_token(&base, "GRPC-SKU").await;
    traffic(&base, "GRPC-SKU").await;
    let spans = receiver
        .wait_for(Duration::from_secs(30), |s| trace_complete(s, TRACE_ID))
        .await;
    check_trace(&spans, TRACE_ID, "flashsale", "flashsale");
    server.stop();
}
