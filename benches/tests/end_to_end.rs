//! The harness end to end against an in-process fake server that speaks the contract
//! (the baseline HTTP shell over `MemoryStore`), on an ephemeral loopback port. About a
//! second of load per test; no assertion depends on timing.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use flashsale_bench::baseline::{router, MemoryStore};
use flashsale_bench::cli::{run_command, Cli, EXIT_OK, EXIT_VIOLATIONS};
use flashsale_bench::client::ApiClient;
use flashsale_bench::report::Report;
use flashsale_bench::runner::{run, ProgressMode, RunOptions};
use flashsale_bench::scenario::Scenario;
use flashsale_bench::schedule::ScheduleSpec;
use flashsale_bench::verify::ViolationKind;

const TOKEN: &str = "test-token";

async fn fake_server(store: MemoryStore) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router(store, TOKEN)).await.unwrap();
    });
    addr
}

fn small_scenario() -> Scenario {
    Scenario {
        products: 3,
        inventory_per_product: 40,
        per_user_limit: 1,
        users: 300,
        hot_sku_share: 0.8,
        reads_per_write: 3.0,
        write_rate_per_s: 150.0,
        flash_crowd_ms: 100,
        flash_crowd_users: Some(120),
        checkout_share: 0.25,
        checkout_delay_ms: 20,
        duration_secs: 1.0,
        warmup_secs: 0.2,
        ..Scenario::default()
    }
}

fn options() -> RunOptions {
    RunOptions {
        label: "fake".into(),
        timeout: Duration::from_secs(3),
        max_in_flight: 64,
        progress: ProgressMode::Off,
        stock_sample: Duration::from_millis(100),
        sku_prefix: "T-".into(),
        read_ceiling: Some((4, 0.2)),
        ready_wait: Duration::from_secs(5),
        keep_sales: false,
        watch: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_server_gives_a_clean_report() {
    let addr = fake_server(MemoryStore::new()).await;
    let client =
        ApiClient::new(&format!("http://{addr}"), TOKEN, 64, Duration::from_secs(3)).unwrap();
    let s = small_scenario();
    let out = run(&client, &s, &options()).await.unwrap();
    let r = &out.report;

    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let reserve = r.op("reserve");
    let spec = ScheduleSpec::measured(&s);
    let reads = r.op("availability");
    assert_eq!(
        reserve.sent + reads.sent,
        spec.len(),
        "every scheduled request is accounted for"
    );
    assert_eq!(reserve.errors, 0);
    assert_eq!(reads.errors, 0);
    assert_eq!(reads.ok, reads.sent);
    // The crowd alone (120 distinct users) is more than the hot SKU's 40 units.
    let rejected: u64 = reserve.rejected.values().sum();
    assert_eq!(reserve.ok + rejected, reserve.sent);
    assert!(reserve.rejected.get("Out of Stock").copied().unwrap_or(0) > 0);
    assert!(reserve.ok <= 3 * 40);
    // The fake has no checkout route: checkouts are sent and rejected as "Not Found".
    let checkout = r.op("checkout");
    assert!(checkout.sent > 0);
    assert_eq!(
        checkout.rejected.get("Not Found").copied(),
        Some(checkout.sent)
    );
    assert!(reserve.latency_ms.p50 <= reserve.latency_ms.p99);
    assert!(reserve.latency_ms.p99 <= reserve.latency_ms.max);

    // Charts and JSON.
    assert!(!out.charts.stock.is_empty());
    let hot_end = out.charts.stock.last().unwrap().available[0];
    assert!((0..=40).contains(&hot_end));
    let page = flashsale_bench::html::run_page(r, &out.extras, &out.charts, Some(50.0));
    assert!(page.matches("<svg").count() >= 4, "four charts");
    assert!(!page.contains("<script"));
    let back = Report::from_json(&r.to_json()).unwrap();
    assert_eq!(&back, r);
    let rc = r.read_ceiling.as_ref().unwrap();
    assert!(rc.health_per_s > 0.0 && rc.availability_per_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overselling_server_is_caught_and_exits_1() {
    let addr = fake_server(MemoryStore::overselling()).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let html = dir.path().join("r.html");
    let cli = Cli::try_parse_from([
        "flashsale-bench",
        "--target",
        &format!("http://{addr}"),
        "--admin-token",
        TOKEN,
        "--products",
        "1",
        "--inventory",
        "10",
        "--users",
        "20",
        "--write-rate",
        "100",
        "--reads-per-write",
        "1",
        "--duration-secs",
        "1",
        "--warmup-secs",
        "0",
        "--progress",
        "off",
        "--json-out",
        json.to_str().unwrap(),
        "--html-out",
        html.to_str().unwrap(),
    ])
    .unwrap();
    let code = run_command(&cli.run).await.unwrap();
    assert_eq!(code, EXIT_VIOLATIONS);
    let r = Report::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let kinds: Vec<ViolationKind> = r.violations.iter().map(|v| v.kind).collect();
    // 100 attempts by 20 users on 10 units, all granted: oversold, users over their limit,
    // and the server's own figures negative.
    assert!(kinds.contains(&ViolationKind::Oversold), "{kinds:?}");
    assert!(kinds.contains(&ViolationKind::UserOverLimit), "{kinds:?}");
    assert!(
        kinds.contains(&ViolationKind::ServerNegativeAvailable),
        "{kinds:?}"
    );
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_max_steps_up_against_the_fake() {
    let addr = fake_server(MemoryStore::new()).await;
    let cli = Cli::try_parse_from([
        "flashsale-bench",
        "--target",
        &format!("http://{addr}"),
        "--admin-token",
        TOKEN,
        "--inventory",
        "100000",
        "--users",
        "100000",
        "--reads-per-write",
        "0",
        "--warmup-secs",
        "0",
        "--progress",
        "off",
        "--find-max",
        "--find-max-start",
        "50",
        "--find-max-factor",
        "2",
        "--find-max-steps",
        "2",
        "--find-max-refine",
        "0",
        "--find-max-step-secs",
        "0.5",
        // A generous SLO: this test checks the search's mechanics, not the machine.
        "--slo-p99-ms",
        "5000",
    ])
    .unwrap();
    assert_eq!(run_command(&cli.run).await.unwrap(), EXIT_OK);
}

#[tokio::test]
async fn non_loopback_targets_are_refused() {
    let cli = Cli::try_parse_from(["flashsale-bench", "--target", "http://192.0.2.1:80"]).unwrap();
    let err = run_command(&cli.run).await.unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
}

/// The soak's per-window sampling, end to end: the soak scenario cut to 3 s at 3 % of
/// its rates, 1 s windows, and this test process (which hosts the fake server) as the
/// watched process. Asserts that every window has its figures and the process's
/// readings; nothing about how fast anything was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_reports_every_window_with_the_watched_process() {
    let addr = fake_server(MemoryStore::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    let html = dir.path().join("soak.html");
    let soak = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/soak.toml");
    let watch = format!("server={}", std::process::id());
    let cli = Cli::try_parse_from([
        "flashsale-bench",
        "--target",
        &format!("http://{addr}"),
        "--admin-token",
        TOKEN,
        "--scenario",
        soak,
        "--duration",
        "3s",
        "--scale",
        "0.03",
        "--warmup-secs",
        "0",
        "--sample-secs",
        "1",
        "--watch-pid",
        &watch,
        "--progress",
        "off",
        "--json-out",
        json.to_str().unwrap(),
        "--html-out",
        html.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(run_command(&cli.run).await.unwrap(), EXIT_OK);
    let r = Report::from_json(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r.scenario.scenario.products, 100);
    assert_eq!(r.scenario.scenario.write_rate_per_s, 90.0);
    let s = r.soak.as_ref().expect("a soak object");
    assert_eq!(s.period_secs, 1.0);
    assert_eq!(s.watched.get("server"), Some(&std::process::id()));
    assert_eq!(s.windows.len(), 3);
    let mut sent = 0;
    for (i, w) in s.windows.iter().enumerate() {
        assert_eq!(w.start_s, i as f64);
        for key in ["reserve", "availability"] {
            let f = w
                .ops
                .get(key)
                .unwrap_or_else(|| panic!("{key} in window {i}"));
            assert!(f.sent > 0 && f.ok > 0, "window {i} {key}: {f:?}");
            assert!(
                f.p50_ms > 0.0 && f.p50_ms <= f.p99_ms,
                "window {i} {key}: {f:?}"
            );
            assert_eq!(f.connections_closed, 0);
            sent += f.sent;
        }
        let p = w.processes.get("server").expect("the watched process");
        assert!(p.rss_bytes > 1_000_000, "window {i}: {p:?}");
        assert!(p.cpu_cores >= 0.0 && p.cpu_cores.is_finite());
    }
    // Every scheduled reservation and read is in exactly one window.
    assert_eq!(sent, r.op("reserve").sent + r.op("availability").sent);
    let names: Vec<&str> = s.flatness.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "reserve p99 every window",
            "last vs first",
            "connections closed",
            "shed",
            "RSS flat"
        ]
    );
    assert!(
        s.flatness.checks.iter().all(|c| c.held.is_some()),
        "{:#?}",
        s.flatness
    );
    assert!(r.verdict.as_ref().unwrap().text.contains("soak:"));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("Soak: per 1 s"));
    assert!(page.contains("RSS of the watched processes"));
}
