//! Crowd and overload accounting, against the in-process fake server (the baseline HTTP
//! shell over `MemoryStore`), and the start-up wait against a port nobody listens on.
//! No assertion depends on timing.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use flashsale_bench::baseline::{router, MemoryStore};
use flashsale_bench::client::ApiClient;
use flashsale_bench::report::{verdict, Report};
use flashsale_bench::runner::{run, ProgressMode, RunOptions};
use flashsale_bench::scenario::Scenario;

const TOKEN: &str = "test-token";

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

fn options() -> RunOptions {
    RunOptions {
        label: "fake".into(),
        timeout: Duration::from_secs(3),
        max_in_flight: 128,
        progress: ProgressMode::Off,
        stock_sample: Duration::from_millis(100),
        sku_prefix: "C-".into(),
        read_ceiling: None,
        ready_wait: Duration::from_secs(5),
        keep_sales: false,
        watch: Vec::new(),
    }
}

fn client(addr: SocketAddr) -> ApiClient {
    ApiClient::new(
        &format!("http://{addr}"),
        TOKEN,
        128,
        Duration::from_secs(3),
    )
    .unwrap()
}

/// A small big crowd: 300 buyers in 100 ms for the 40 units of product 0, while the
/// steady stream shops the two other products.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_crowd_buyer_is_answered_and_the_sell_out_is_timed() {
    let addr = serve(router(MemoryStore::new(), TOKEN)).await;
    let s = Scenario {
        products: 3,
        inventory_per_product: 40,
        users: 1000,
        hot_sku_share: 0.0,
        crowd_hot_share: Some(1.0),
        flash_crowd_ms: 100,
        flash_crowd_users: Some(300),
        reads_per_write: 1.0,
        write_rate_per_s: 50.0,
        duration_secs: 1.0,
        warmup_secs: 0.0,
        ..Scenario::default()
    };
    let out = run(&client(addr), &s, &options()).await.unwrap();
    let r = &out.report;
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let c = r.crowd.as_ref().expect("a crowd report");
    assert_eq!(c.buyers, 300);
    assert!(c.every_buyer_answered, "{c:?}");
    assert_eq!(c.not_answered, 0);
    assert_eq!(c.held, 40, "the steady stream never touches product 0");
    assert_eq!(c.held + c.decided_409, 300);
    assert_eq!(c.hot_units_held, 40);
    assert!(c.sold_out_after_ms.is_some());
    assert!(r.harness.is_some());
    // The JSON carries both, and reads back.
    let back = Report::from_json(&r.to_json()).unwrap();
    assert_eq!(&back, r);
    let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
    assert!(v["crowd"]["every_buyer_answered"].as_bool().unwrap());
    assert!(v["harness"]["send_lag_ms"]["p99"].is_number());
    assert!(v["harness"]["spoiled"].is_boolean());
}

/// A node that sheds every third reservation with 503 + Retry-After: shed answers are
/// counted apart from decisions and errors, with their own latency, and goodput leaves
/// them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_answers_are_counted_apart() {
    let n = Arc::new(AtomicU64::new(0));
    let shed_every_third = {
        let n = n.clone();
        move |req: Request<Body>, next: Next| {
            let n = n.clone();
            async move {
                let is_reserve = req.method() == axum::http::Method::POST
                    && req.uri().path() == "/api/v1/reservations";
                if is_reserve && n.fetch_add(1, Ordering::Relaxed) % 3 == 2 {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "1"), ("content-type", "application/json")],
                        r#"{"timestamp":"t","status":503,"error":"Service Unavailable","message":"busy","path":"/api/v1/reservations"}"#,
                    )
                        .into_response();
                }
                let resp: Response = next.run(req).await;
                resp
            }
        }
    };
    let app = router(MemoryStore::new(), TOKEN).layer(middleware::from_fn(shed_every_third));
    let addr = serve(app).await;
    let s = Scenario {
        products: 1,
        inventory_per_product: 100_000,
        users: 100_000,
        // A user picked twice must not meet its limit: every answer here is 201 or 503.
        per_user_limit: 1000,
        reads_per_write: 0.0,
        write_rate_per_s: 300.0,
        duration_secs: 1.0,
        warmup_secs: 0.0,
        ..Scenario::default()
    };
    let out = run(&client(addr), &s, &options()).await.unwrap();
    let r = &out.report;
    assert!(
        r.violations.is_empty(),
        "shed requests leave no trace: {:?}",
        r.violations
    );
    let res = r.op("reserve");
    assert_eq!(res.sent, 300);
    assert_eq!(res.shed, 100);
    assert_eq!(res.shed_without_retry_after, 0);
    assert_eq!(res.errors, 0, "a 503 is shed load, not an error");
    assert_eq!(res.ok, 200);
    assert!(res.rejected.is_empty());
    assert!(res.shed_per_s > 0.0 && res.goodput_per_s > 0.0);
    assert!(res.shed_latency_ms.max > 0.0 && res.admitted_latency_ms.max > 0.0);
    let v = verdict(r, 5_000.0, 0.001);
    assert!(!v.held);
    assert!(v.text.contains("failed or shed"), "{}", v.text);
    let table = flashsale_bench::report::render_table(r, &out.extras);
    assert!(table.contains("shed (429/503) latency"), "{table}");
    assert!(table.contains("harness send lag"), "{table}");
}

/// A wrong --target says what it waits for at once, then gives up with exit 2.
#[test]
fn an_unreachable_target_says_so_and_exits_2() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-bench"))
        .args([
            "--target",
            &format!("http://127.0.0.1:{port}"),
            "--wait-ready-secs",
            "1",
            "--progress",
            "off",
        ])
        .env_remove("FLASHSALE_BENCH_TARGET")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let waiting = format!("waiting for http://127.0.0.1:{port} (connection refused)");
    let gave_up = "did not become ready within 1 s (connection refused)";
    let (Some(w), Some(g)) = (err.find(&waiting), err.find(gave_up)) else {
        panic!("stderr lacks {waiting:?} or {gave_up:?}: {err}");
    };
    assert!(w < g, "the wait is announced before the give-up: {err}");
    assert!(err.contains("--target"), "says what to check: {err}");
}
