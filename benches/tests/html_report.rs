//! The HTML report, rendered from a synthetic run (no server, no clock): the verdict
//! line, readable ticks for 1–5 ms latencies, the SLO line, offered vs answered; and a
//! screenshot of it in headless Chromium when `chromium` is on PATH (required when
//! FLASHSALE_REQUIRE_BROWSER=1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flashsale_bench::html::run_page;
use flashsale_bench::report::{
    verdict, CrowdReport, HarnessReport, OpReport, Report, ScenarioReport, TableExtras,
};
use flashsale_bench::runner::{ChartData, StockPoint};
use flashsale_bench::scenario::Scenario;
use flashsale_bench::schedule::Op;
use flashsale_bench::stats::{
    new_histogram, record_us, LatencySummary, OpStats, Outcome, Timeline,
};

const SLO_MS: f64 = 50.0;

/// 10 s at 1,000 reservations/s and 5,000 reads/s; reservations take 1–5 ms, reads
/// 0.5–2 ms; 3 % of reservations are shed towards the end (`p99_extra_ms` adds to every
/// reservation, to make a run that misses its SLO).
fn synthetic(p99_extra_ms: u64) -> (Report, TableExtras, ChartData) {
    let bucket_ns = 100_000_000u64;
    let mut tl = Timeline::new(bucket_ns);
    let mut ops: [OpStats; 3] = Default::default();
    let mut offered: [Vec<u64>; 3] = Default::default();
    for (op, rate, lo_us, span_us) in [
        (Op::Reserve, 1000u64, 1000u64, 4000u64),
        (Op::Availability, 5000, 500, 1500),
    ] {
        let n = rate * 10;
        for k in 0..n {
            let at_ns = k * 1_000_000_000 / rate;
            let bucket = (at_ns / bucket_ns) as usize;
            let v = &mut offered[op.index()];
            if v.len() <= bucket {
                v.resize(bucket + 1, 0);
            }
            v[bucket] += 1;
            // A deterministic spread over [lo, lo + span).
            let mut us = lo_us + (k * 7919) % span_us;
            let outcome = if op == Op::Reserve && k > n * 7 / 10 && k % 10 == 0 {
                us = 300;
                Outcome::Shed {
                    status: 503,
                    retry_after: true,
                }
            } else if op == Op::Reserve && k > 8000 {
                Outcome::Rejected(409, "Out of Stock".into())
            } else {
                Outcome::Ok
            };
            if op == Op::Reserve && !outcome.is_shed() {
                us += p99_extra_ms * 1000;
            }
            ops[op.index()].record(&outcome, us);
            tl.record(op, at_ns, us, &outcome);
        }
    }
    for op in Op::ALL {
        tl.set_offered(op, &offered[op.index()]);
    }
    let operations: BTreeMap<String, OpReport> = Op::ALL
        .iter()
        .map(|op| {
            (
                op.key().to_string(),
                OpReport::from_stats(&ops[op.index()], 10.0),
            )
        })
        .collect();
    let scenario = Scenario {
        products: 2,
        inventory_per_product: 8000,
        users: 100_000,
        write_rate_per_s: 1000.0,
        read_rate_per_s: Some(5000.0),
        flash_crowd_ms: 300,
        flash_crowd_users: Some(3000),
        duration_secs: 10.0,
        ..Scenario::default()
    };
    let reserve_p99 = LatencySummary::of(&ops[0].admitted_latency_us).p99;
    let mut lag = new_histogram(3);
    for us in [20, 40, 80, 120] {
        record_us(&mut lag, us);
    }
    let mut report = Report {
        scenario: ScenarioReport {
            label: "flashsale-embedded".into(),
            target: "http://127.0.0.1:18181".into(),
            scenario,
        },
        operations,
        violations: Vec::new(),
        find_max: None,
        read_ceiling: None,
        harness: Some(HarnessReport::judge(LatencySummary::of(&lag), reserve_p99)),
        crowd: Some(CrowdReport {
            buyers: 3000,
            held: 2000,
            decided_409: 900,
            shed_with_retry_after: 100,
            not_answered: 0,
            every_buyer_answered: true,
            admitted_latency_ms: LatencySummary::default(),
            shed_latency_ms: LatencySummary::default(),
            hot_sku_units: 8000,
            hot_units_held: 8000,
            sold_out_after_ms: Some(842.0),
            others_admitted_latency_ms: LatencySummary::default(),
        }),
        verdict: None,
        soak: None,
    };
    // A run that sheds 3 % would miss the default 0.1 % bound; judge the latency here.
    report.verdict = Some(verdict(&report, SLO_MS, 0.05));
    let stock = (0..=40)
        .map(|i| StockPoint {
            t_ms: f64::from(i) * 250.0,
            available: vec![(8000 - i * 200).max(0).into(), 8000],
        })
        .collect();
    let charts = ChartData {
        timeline: tl,
        latency_us: [
            ops[0].latency_us.clone(),
            ops[1].latency_us.clone(),
            ops[2].latency_us.clone(),
        ],
        stock,
        sku_ids: vec!["BENCH-hot".into(), "BENCH-other".into()],
    };
    (report, TableExtras::default(), charts)
}

/// The HTML between `<h2>{title}</h2>` and the next `<h2>`.
fn section<'a>(page: &'a str, title: &str) -> &'a str {
    let start = page
        .find(&format!("<h2>{title}</h2>"))
        .unwrap_or_else(|| panic!("no section {title}"));
    let rest = &page[start + 4..];
    &rest[..rest.find("<h2>").unwrap_or(rest.len())]
}

/// SVG `<text>` contents of a piece of page.
fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = &t[t.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

fn render(p99_extra_ms: u64) -> String {
    let (r, e, c) = synthetic(p99_extra_ms);
    run_page(&r, &e, &c, Some(SLO_MS))
}

#[test]
fn the_report_reads_at_a_glance() {
    let page = render(0);
    assert!(
        page.contains("<p class=\"verdict held\">held "),
        "verdict line"
    );
    let verdict_line = &page[page.find("class=\"verdict").unwrap()..];
    let verdict_line = &verdict_line[..verdict_line.find("</p>").unwrap()];
    assert!(
        verdict_line.contains("/s at p99 ") && verdict_line.contains("(SLO 50 ms)"),
        "{verdict_line}"
    );
    // The summary is an HTML table, not a clipped <pre>.
    assert!(page.contains("<table class=\"summary\">"));
    assert!(page.contains("shed (429/503) latency"));
    assert!(page.contains("every buyer answered"));
    assert!(!page.contains("<script"));

    // Latency over time: several labelled ticks for 1–5 ms data, and the SLO line.
    let lat = section(&page, "Latency over time");
    let labels = texts(lat);
    for want in ["1", "2", "5", "50"] {
        assert!(
            labels.iter().any(|l| l == want),
            "tick {want} in {labels:?}"
        );
    }
    assert!(labels.iter().any(|l| l == "SLO p99 50 ms"), "{labels:?}");
    assert!(lat.contains("SLO: p99 ≤ 50 ms"), "the legend names the SLO");

    // Offered vs answered.
    let thr = section(&page, "Offered vs answered");
    assert!(thr.contains("reserve offered/s") && thr.contains("reserve goodput/s"));
    assert!(thr.contains("reserve shed/s") && thr.contains("availability answered/s"));

    // Percentiles: the labels are the decades and the max, none of them twice.
    let pct = section(&page, "Latency percentiles");
    let labels = texts(pct);
    for want in ["p50", "p90", "p99", "p99.9", "max", "SLO p99 50 ms"] {
        assert!(labels.iter().any(|l| l == want), "{want} in {labels:?}");
    }
    let pl: Vec<&String> = labels.iter().filter(|l| l.starts_with('p')).collect();
    let mut dedup = pl.clone();
    dedup.dedup();
    assert_eq!(pl, dedup, "no percentile label repeated");

    // Every chart fits an A4-ish width and scales with the page.
    for svg in page.split("<svg ").skip(1) {
        assert!(
            svg.starts_with("class=\"chart\" width=\"720\""),
            "{}",
            &svg[..60]
        );
    }
    assert!(page.contains("max-width:760px"));
}

#[test]
fn a_run_over_its_slo_says_missed() {
    let page = render(140);
    assert!(
        page.contains("<p class=\"verdict missed\">missed: p99 14"),
        "{}",
        &page[page.find("verdict").unwrap()..][..200]
    );
    assert!(page.contains("&gt; SLO 50 ms at 1,000/s offered"));
}

/// Width and height of a PNG, from its IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&bytes[16..20]), be(&bytes[20..24])))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd` for at most `limit`; kills it (only it) past that.
fn run_bounded(cmd: &mut Command, limit: Duration) -> std::process::ExitStatus {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The report as a browser draws it: a screenshot in headless Chromium, checked for
/// existence, size and dimensions (look at it: `target/tmp/bench-report.png`).
#[test]
fn the_report_renders_in_headless_chromium() {
    let Some(chromium) = on_path("chromium") else {
        assert!(
            std::env::var("FLASHSALE_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "FLASHSALE_REQUIRE_BROWSER=1 but chromium is not on PATH (apt-get install chromium)"
        );
        eprintln!("skipped: chromium is not on PATH");
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir).unwrap();
    let html = dir.join("bench-report.html");
    let png = dir.join("bench-report.png");
    let profile = tempfile::tempdir().unwrap();
    std::fs::write(&html, render(0)).unwrap();
    let _ = std::fs::remove_file(&png);
    let status = run_bounded(
        Command::new(chromium)
            .arg("--headless")
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--hide-scrollbars")
            // Its own profile: parallel runs do not share (or lock) one.
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--screenshot={}", png.display()))
            .arg("--window-size=1200,1600")
            .arg(format!("file://{}", html.display())),
        Duration::from_secs(90),
    );
    assert!(status.success(), "chromium exited {status}");
    let bytes = std::fs::read(&png).expect("the screenshot exists");
    assert!(
        bytes.len() > 30_000,
        "a blank page compresses to a few KB; got {} bytes",
        bytes.len()
    );
    assert_eq!(png_size(&bytes), Some((1200, 1600)), "{}", png.display());
    // Where to look at it (`cargo test -- --nocapture` shows this line).
    println!("bench report screenshot: {}", png.display());
}
