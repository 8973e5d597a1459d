//! The load run: set-up, warm-up, the measured open-loop phase, the end-of-run checks.
//!
//! Shape of a phase: one dispatcher walks the [`Schedule`], sleeps until each request is
//! due and spawns it; a semaphore caps the requests in flight (when it is exhausted the
//! dispatcher waits, and the wait counts in the latency because latency runs from the
//! due time). Workers send one [`Sample`] each to a single collector task that owns the
//! [`Recorder`], so recording needs no locks. Everything is bounded: the schedule is
//! finite, every request has a timeout, and a phase ends at a hard deadline (its duration
//! plus one timeout) whatever the server does; requests still unsent then count as errors.

use std::borrow::Cow;
use std::io::{IsTerminal, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use hdrhistogram::Histogram;
use rand::Rng;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at};

use crate::client::{ApiClient, Retired};
use crate::contract::{rfc3339, CheckoutRequest, CreateSale, NewProduct, SaleView};
use crate::error::BenchError;
use crate::report::{
    CrowdReport, HarnessCpu, HarnessReport, OpReport, ReadCeilingReport, Report, ScenarioReport,
    TableExtras,
};
use crate::scenario::Scenario;
use crate::schedule::{corrected_latency, Op, Planned, Schedule, ScheduleSpec, Slot};
use crate::soak::{self, ProcPoint, Watch, Windows};
use crate::stats::{new_histogram, record_us, LatencySummary, OpStats, Outcome, Timeline};
use crate::verify::{check_ledger, check_server, Expected, Ledger, ViolationKind};

/// Samples buffered between workers and the collector.
const SAMPLE_CHANNEL: usize = 65_536;
/// The dispatcher yields to the workers after this many back-to-back sends, so a
/// single-threaded runtime keeps answering while the harness catches up on its schedule.
const YIELD_EVERY: u32 = 64;
/// How often the start-up wait says it is still waiting.
const READY_NOTE_EVERY: Duration = Duration::from_secs(5);
/// Requests per closed-loop worker of the read ceiling, at most.
const CEILING_MAX_REQUESTS: u64 = 5_000_000;

/// How the live progress line is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A terminal line rewritten in place when stderr is a terminal, else `plain`.
    Auto,
    /// A new line on stderr every 5 s.
    Plain,
    /// Nothing.
    Off,
}

/// How a run talks to its target, apart from the workload.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Name in tables and charts.
    pub label: String,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Requests in flight at most (also the connection pool size).
    pub max_in_flight: usize,
    /// Live progress.
    pub progress: ProgressMode,
    /// Interval of the stock samples (admin figures) during the measured phase.
    pub stock_sample: Duration,
    /// Prefix of the SKU ids the run creates.
    pub sku_prefix: String,
    /// Closed-loop read ceiling after the run: (concurrency, seconds per endpoint).
    pub read_ceiling: Option<(u32, f64)>,
    /// Longest wait for the target to answer `/ready` (or `/health`) before giving up.
    pub ready_wait: Duration,
    /// Leave the sales the run created as they are (`--keep-sales`); by default they
    /// are deleted or ended when the run is over.
    pub keep_sales: bool,
    /// Processes whose RSS and CPU the per-window report shows (`--watch-pid`).
    pub watch: Vec<Watch>,
}

/// Admin figures at one moment of the measured phase.
#[derive(Debug, Clone, PartialEq)]
pub struct StockPoint {
    /// ms since the phase start.
    pub t_ms: f64,
    /// `availableCount` per product, in product order.
    pub available: Vec<i64>,
}

/// What the charts need beyond the JSON report.
#[derive(Debug, Clone)]
pub struct ChartData {
    /// Per-bucket series of the measured phase.
    pub timeline: Timeline,
    /// Whole-phase latency histograms, µs, per operation.
    pub latency_us: [Histogram<u64>; 3],
    /// Stock samples.
    pub stock: Vec<StockPoint>,
    /// Product SKUs, hot first.
    pub sku_ids: Vec<String>,
}

/// Everything a run produces.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// The JSON report.
    pub report: Report,
    /// Table-only figures.
    pub extras: TableExtras,
    /// Chart data.
    pub charts: ChartData,
}

/// One finished (or abandoned) request, from a worker to the collector.
#[derive(Debug)]
struct Sample {
    op: Op,
    /// Due time, ns from the phase start.
    scheduled_ns: u64,
    /// From due time to answer (coordinated omission corrected).
    latency_us: u64,
    /// How late the harness got to the request by its own doing (short of CPU): from its
    /// due time, or from the end of the dispatcher's last wait for an in-flight slot if
    /// that is later (that wait is the server's doing, and counts in the latency).
    lag_us: u64,
    outcome: Outcome,
    /// (user, product, units) of an acknowledged reservation.
    granted: Option<(u32, u16, u32)>,
    /// Product of a reservation attempt, and whether it was a crowd arrival.
    reserve_of: Option<(u16, bool)>,
}

/// The single-owner state of a phase's collector.
#[derive(Debug)]
struct Recorder {
    ops: [OpStats; 3],
    timeline: Timeline,
    ledger: Ledger,
    lag_us: Histogram<u64>,
    /// Latest completion, ns from the phase start.
    last_done_ns: u64,
    user_prefix: Arc<str>,
    write_skus: Arc<Vec<String>>,
    /// The flash crowd's reservation attempts alone.
    crowd: OpStats,
    /// Reservation attempts on products other than the hot one.
    others: OpStats,
    /// Units of product 0 acknowledged, and when the last of them was (ns from start).
    hot_units: i64,
    hot_last_grant_ns: u64,
    /// Per-window figures, when the scenario asks for them (`sample_secs`).
    windows: Option<Windows>,
}

impl Recorder {
    fn new(
        bucket_ns: u64,
        user_prefix: Arc<str>,
        write_skus: Arc<Vec<String>>,
        windows: Option<Windows>,
        per_user_ledger: bool,
    ) -> Self {
        Self {
            ops: Default::default(),
            timeline: Timeline::new(bucket_ns),
            ledger: if per_user_ledger {
                Ledger::default()
            } else {
                Ledger::per_sku_only()
            },
            lag_us: new_histogram(3),
            last_done_ns: 0,
            user_prefix,
            write_skus,
            crowd: OpStats::default(),
            others: OpStats::default(),
            hot_units: 0,
            hot_last_grant_ns: 0,
            windows,
        }
    }

    fn record(&mut self, s: Sample) {
        self.ops[s.op.index()].record(&s.outcome, s.latency_us);
        self.timeline
            .record(s.op, s.scheduled_ns, s.latency_us, &s.outcome);
        if let Some(w) = &mut self.windows {
            w.record(s.op, s.scheduled_ns, s.latency_us, &s.outcome);
        }
        record_us(&mut self.lag_us, s.lag_us);
        let done_ns = s.scheduled_ns + s.latency_us * 1000;
        self.last_done_ns = self.last_done_ns.max(done_ns);
        match s.reserve_of {
            Some((_, true)) => self.crowd.record(&s.outcome, s.latency_us),
            Some((sku, false)) if sku != 0 => self.others.record(&s.outcome, s.latency_us),
            _ => {}
        }
        if let Some((user, sku, qty)) = s.granted {
            if sku == 0 {
                self.hot_units += i64::from(qty);
                self.hot_last_grant_ns = self.hot_last_grant_ns.max(done_ns);
            }
            let user_id = format!("{}{user}", self.user_prefix);
            self.ledger
                .record(&user_id, &self.write_skus[sku as usize], qty);
        }
    }

    /// The crowd's answers, when there was a crowd.
    fn crowd_report(&self, scenario: &Scenario) -> Option<CrowdReport> {
        if scenario.crowd_users() == 0 {
            return None;
        }
        let c = &self.crowd;
        let shed_ok = c.shed - c.shed_without_retry_after;
        // Every crowd user arrives once, so the crowd's size is exact; requests never sent
        // (or never answered) before the phase's hard deadline are not in `c` at all.
        let buyers = u64::from(scenario.crowd_users());
        let not_answered = buyers.saturating_sub(c.goodput() + shed_ok);
        Some(CrowdReport {
            buyers,
            held: c.ok,
            decided_409: c.conflicts,
            shed_with_retry_after: shed_ok,
            not_answered,
            every_buyer_answered: not_answered == 0,
            admitted_latency_ms: LatencySummary::of(&c.admitted_latency_us),
            shed_latency_ms: LatencySummary::of(&c.shed_latency_us),
            hot_sku_units: scenario.inventory_per_product,
            hot_units_held: self.hot_units,
            sold_out_after_ms: (self.hot_units >= scenario.inventory_per_product)
                .then(|| self.hot_last_grant_ns as f64 / 1e6),
            others_admitted_latency_ms: LatencySummary::of(&self.others.admitted_latency_us),
        })
    }
}

/// Shared, read-only context of a phase's workers.
#[derive(Debug)]
struct Ctx {
    client: ApiClient,
    tx: mpsc::Sender<Sample>,
    sem: Arc<Semaphore>,
    write_skus: Arc<Vec<String>>,
    read_skus: Arc<Vec<String>>,
    user_prefix: Arc<str>,
    quantity: u32,
    checkout_delay: Duration,
    start: Instant,
    end: Instant,
    hard_end: Instant,
}

impl Ctx {
    fn since_start_ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.start).as_nanos() as u64
    }

    async fn emit(
        &self,
        op: Op,
        due: Instant,
        lag: Duration,
        outcome: Outcome,
        granted: Option<(u32, u16, u32)>,
        reserve_of: Option<(u16, bool)>,
    ) {
        let done = Instant::now();
        let s = Sample {
            op,
            scheduled_ns: self.since_start_ns(due),
            latency_us: corrected_latency(due, done).as_micros() as u64,
            lag_us: lag.as_micros() as u64,
            outcome,
            granted,
            reserve_of,
        };
        // The collector may have stopped at the hard deadline; a late sample is dropped.
        let _ = self.tx.send(s).await;
    }
}

/// Runs `scenario` against `client`'s target: creates the sale(s), warms up, measures,
/// checks, and returns the report. Fails only when the run cannot be set up.
pub async fn run(
    client: &ApiClient,
    scenario: &Scenario,
    opts: &RunOptions,
) -> Result<RunOutput, BenchError> {
    scenario.validate()?;
    wait_ready(client, opts.ready_wait).await?;
    let run_id = run_id();
    let sku_ids: Vec<String> = (0..scenario.products)
        .map(|i| format!("{}{run_id}-{i:03}", opts.sku_prefix))
        .collect();
    let expected: Vec<Expected> = sku_ids
        .iter()
        .map(|s| Expected {
            sku_id: s.clone(),
            total_inventory: scenario.inventory_per_product,
            per_user_limit: scenario.per_user_limit,
        })
        .collect();
    let sale_id = client
        .create_sale(&sale_body(
            &format!("flashsale-bench {run_id}"),
            &sku_ids,
            scenario.inventory_per_product,
            scenario.per_user_limit,
            scenario.reservation_ttl_secs,
        ))
        .await?;
    let skus = Arc::new(sku_ids.clone());

    let mut created = vec![sale_id.clone()];

    if scenario.warmup_secs > 0.0 {
        // Warm-up writes go to a sale of their own so they do not touch measured stock;
        // reads go to the measured products (reads change nothing).
        // One warm-up SKU per product, so the schedule's product choice maps one to one.
        let warm_skus: Vec<String> = (0..scenario.products)
            .map(|i| format!("{}{run_id}-W{i:03}", opts.sku_prefix))
            .collect();
        let warm = client
            .create_sale(&sale_body(
                &format!("flashsale-bench {run_id} warm-up"),
                &warm_skus,
                10_000_000,
                1_000_000,
                scenario.reservation_ttl_secs,
            ))
            .await;
        match warm {
            Ok(id) => created.push(id),
            Err(e) => {
                retire_sales(client, opts, &created).await;
                return Err(e);
            }
        }
        let _ = run_phase(
            client,
            opts,
            "warm-up",
            ScheduleSpec::warmup(scenario),
            Arc::new(warm_skus),
            skus.clone(),
            Arc::from(format!("w{run_id}-")),
            scenario,
            None,
            false,
        )
        .await;
    }

    let spec = ScheduleSpec::measured(scenario);
    let phase = run_phase(
        client,
        opts,
        "measure",
        spec.clone(),
        skus.clone(),
        skus.clone(),
        Arc::from(format!("u{run_id}-")),
        scenario,
        Some(sale_id.clone()),
        true,
    )
    .await;

    let mut violations = check_ledger(&expected, &phase.rec.ledger);
    match settled_figures(client, &sale_id).await {
        Ok(sale) => violations.extend(
            check_server(&expected, &phase.rec.ledger, &sale)
                .into_iter()
                // Expired holds free their units: with expiry allowed, fewer units held or
                // sold than acknowledged is the expiry, not a lost reservation.
                .filter(|v| !(scenario.allow_expiry && v.kind == ViolationKind::AcknowledgedLost)),
        ),
        Err(e) => eprintln!(
            "warning: no admin figures at the end of the run, server-side checks skipped: {e}"
        ),
    }

    let read_ceiling = match opts.read_ceiling {
        Some((concurrency, secs)) if secs > 0.0 => {
            Some(read_ceiling(client, &sku_ids[0], concurrency, secs).await)
        }
        _ => None,
    };

    retire_sales(client, opts, &created).await;

    // Throughput over the measured window, stretched to the last answer when the server
    // fell behind its schedule.
    let secs = (spec.duration_ns.max(phase.rec.last_done_ns)) as f64 / 1e9;
    let operations = Op::ALL
        .iter()
        .map(|op| {
            (
                op.key().to_string(),
                OpReport::from_stats(&phase.rec.ops[op.index()], secs),
            )
        })
        .collect();
    let lag = LatencySummary::of(&phase.rec.lag_us);
    let reserve_p99 =
        LatencySummary::of(&phase.rec.ops[Op::Reserve.index()].admitted_latency_us).p99;
    let report = Report {
        scenario: ScenarioReport {
            label: opts.label.clone(),
            target: client.base().to_string(),
            scenario: scenario.clone(),
        },
        operations,
        violations,
        find_max: None,
        read_ceiling,
        harness: Some(HarnessReport {
            cpu: phase.cpu.map(|(cpu_s, wall_s, requests)| HarnessCpu {
                us_per_request: if requests > 0 {
                    cpu_s * 1e6 / requests as f64
                } else {
                    0.0
                },
                cores_used: if wall_s > 0.0 { cpu_s / wall_s } else { 0.0 },
                requests,
                cpus_allowed: cpus_allowed(),
                threads: runtime_threads(),
            }),
            ..HarnessReport::judge(lag, reserve_p99)
        }),
        crowd: phase.rec.crowd_report(scenario),
        verdict: None,
        soak: phase.rec.windows.as_ref().map(|w| {
            soak::build(
                w,
                &phase.procs,
                &opts.watch,
                scenario.duration_secs,
                soak::target::RESERVE_P99_MS,
            )
        }),
    };
    let extras = TableExtras {
        error_kinds: Op::ALL
            .iter()
            .filter(|op| !phase.rec.ops[op.index()].error_kinds.is_empty())
            .map(|op| {
                (
                    op.key().to_string(),
                    phase.rec.ops[op.index()].error_kinds.clone(),
                )
            })
            .collect(),
    };
    let [a, b, c] = &phase.rec.ops;
    let charts = ChartData {
        timeline: phase.rec.timeline.clone(),
        latency_us: [
            a.latency_us.clone(),
            b.latency_us.clone(),
            c.latency_us.clone(),
        ],
        stock: phase.stock,
        sku_ids,
    };
    Ok(RunOutput {
        report,
        extras,
        charts,
    })
}

/// Deletes or ends the sales a run created (each run creates its own, so none would be
/// left ACTIVE for 24 hours), unless `--keep-sales`. A failure is a warning: the
/// figures are already taken.
async fn retire_sales(client: &ApiClient, opts: &RunOptions, sale_ids: &[String]) {
    if opts.keep_sales {
        eprintln!(
            "kept the run's sales (--keep-sales): {}; end them with POST /api/v1/admin/sales/{{saleId}}/end",
            sale_ids.join(", ")
        );
        return;
    }
    for id in sale_ids {
        match client.retire_sale(id).await {
            Ok(Retired::Deleted) => eprintln!("sale {id}: deleted (--keep-sales keeps it)"),
            Ok(Retired::Ended) => eprintln!("sale {id}: ended (--keep-sales keeps it open)"),
            Ok(Retired::Unsupported) => {}
            Err(e) => eprintln!("warning: sale {id} is still open: {e}; end it with POST /api/v1/admin/sales/{id}/end"),
        }
    }
}

/// A unique, short, id-safe run id: ms since the epoch in hex plus 16 random bits.
fn run_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms:x}-{:04x}", rand::rng().random::<u16>())
}

/// The admin body of a sale open from a second ago for a day.
fn sale_body(
    name: &str,
    sku_ids: &[String],
    inventory: i64,
    per_user_limit: u32,
    ttl_secs: u32,
) -> CreateSale {
    let now = Utc::now();
    CreateSale {
        name: name.to_string(),
        // A second in the past so that the engine's clock is inside the window at once.
        starts_at: rfc3339(now - chrono::Duration::seconds(1)),
        ends_at: rfc3339(now + chrono::Duration::days(1)),
        reservation_ttl_seconds: ttl_secs,
        products: sku_ids
            .iter()
            .enumerate()
            .map(|(i, sku)| NewProduct {
                sku_id: sku.clone(),
                name: format!("Bench product {i}"),
                description: "flashsale-bench load test product".into(),
                category: "Bench".into(),
                base_price: 100.0,
                flash_sale_price: 79.99,
                total_inventory: inventory,
                per_user_limit,
                image_url: String::new(),
            })
            .collect(),
    }
}

/// One look at the target: `Ok` when `/ready` (or, for servers without it, `/health`)
/// answers 200, else what stands in the way, in words.
async fn readiness(client: &ApiClient) -> Result<(), String> {
    match client.probe("/ready").await? {
        200 => Ok(()),
        404 => match client.probe("/health").await? {
            200 => Ok(()),
            s => Err(format!("/health answers HTTP {s}")),
        },
        503 => Err("/ready answers 503: not ready yet".into()),
        s => Err(format!("/ready answers HTTP {s}")),
    }
}

/// Waits until the target is ready, for at most `wait`. Says so on stderr at once when
/// it is not ("waiting for URL (connection refused)…"), again when the reason changes
/// and every few seconds, so a wrong `--target` is obvious; then gives up with the last
/// reason.
pub async fn wait_ready(client: &ApiClient, wait: Duration) -> Result<(), BenchError> {
    let started = Instant::now();
    let deadline = started + wait;
    let mut said: Option<(String, Instant)> = None;
    loop {
        let why = match readiness(client).await {
            Ok(()) => {
                if said.is_some() {
                    eprintln!(
                        "{} is ready (after {:.1} s)",
                        client.base(),
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(());
            }
            Err(why) => why,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(BenchError::Target(format!(
                "{} did not become ready within {} s ({why}); is the server running and \
                 is --target right? (--wait-ready-secs sets the wait)",
                client.base(),
                wait.as_secs_f64()
            )));
        }
        let due = match &said {
            None => true,
            Some((last, at)) => *last != why || now.duration_since(*at) >= READY_NOTE_EVERY,
        };
        if due {
            eprintln!(
                "waiting for {} ({why})… {:.0} s of {:.0} s",
                client.base(),
                now.duration_since(started).as_secs_f64(),
                wait.as_secs_f64()
            );
            said = Some((why, now));
        }
        tokio::time::sleep(Duration::from_millis(200).min(deadline.saturating_duration_since(now)))
            .await;
    }
}

/// The admin figures once two reads 200 ms apart agree (read models may trail the
/// engine by up to 100 ms), for at most 3 s; the last read otherwise.
async fn settled_figures(client: &ApiClient, sale_id: &str) -> Result<SaleView, BenchError> {
    let mut last = client.sale(sale_id).await?;
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = client.sale(sale_id).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

struct PhaseResult {
    rec: Recorder,
    stock: Vec<StockPoint>,
    /// Readings of the watched processes at the window boundaries (per-window runs).
    procs: Vec<ProcPoint>,
    /// The harness's own CPU seconds and the wall seconds over the phase (from the
    /// phase's start to its last answer), and the requests it sent; `None` where
    /// `/proc/self/stat` cannot be read.
    cpu: Option<(f64, f64, u64)>,
}

/// utime + stime of this process, seconds (`/proc/self/stat`, USER_HZ 100).
fn own_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_ticks(&stat).map(|t| t as f64 / 100.0)
}

/// utime + stime, in ticks, of a `/proc/PID/stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_ascii_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Threads that run the harness's tasks: 1 on a current-thread runtime, else the
/// workers (the thread in `block_on` runs the dispatcher besides).
fn runtime_threads() -> usize {
    let h = tokio::runtime::Handle::current();
    match h.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => 1,
        _ => h.metrics().num_workers() + 1,
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list`), e.g. `1` under `taskset -c 1`.
fn cpus_allowed() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

#[allow(clippy::too_many_arguments)] // one call site per phase; a struct would only rename them
async fn run_phase(
    client: &ApiClient,
    opts: &RunOptions,
    name: &'static str,
    spec: ScheduleSpec,
    write_skus: Arc<Vec<String>>,
    read_skus: Arc<Vec<String>>,
    user_prefix: Arc<str>,
    scenario: &Scenario,
    stock_sale: Option<String>,
    measured: bool,
) -> PhaseResult {
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_nanos(spec.duration_ns);
    let hard_end = end + opts.timeout + Duration::from_millis(500);
    let sem = Arc::new(Semaphore::new(opts.max_in_flight));
    let (tx, rx) = mpsc::channel(SAMPLE_CHANNEL);
    let bucket_ns = Timeline::bucket_for(spec.duration_ns);
    // Per-window figures and process readings: the measured phase of a run that asks.
    let period = (measured && scenario.sample_secs > 0.0)
        .then(|| Duration::from_secs_f64(scenario.sample_secs));
    let windows = period.map(|p| Windows::new(p.as_nanos() as u64, spec.duration_ns));
    let procs_sampler = windows.as_ref().zip(period).map(|(w, p)| {
        tokio::spawn(soak::sample_processes(
            opts.watch.clone(),
            start,
            end,
            p,
            w.max_windows,
        ))
    });
    // With a new user per write, no (user, SKU) pair can repeat: the per-user map would
    // only grow (millions of entries over a soak) to find nothing.
    let per_user_ledger = !(scenario.fresh_users && scenario.crowd_users() == 0);
    let rec = Recorder::new(
        bucket_ns,
        user_prefix.clone(),
        write_skus.clone(),
        windows,
        per_user_ledger,
    );
    let progress = Progress::new(opts.progress, name, spec.duration_ns as f64 / 1e9);
    let collector = tokio::spawn(collect(
        rx,
        rec,
        progress,
        sem.clone(),
        opts.max_in_flight,
        start,
        hard_end + Duration::from_millis(500),
    ));
    let sampler = stock_sale.map(|sale_id| {
        tokio::spawn(sample_stock(
            client.clone(),
            sale_id,
            write_skus.clone(),
            start,
            end,
            opts.stock_sample,
        ))
    });
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        tx,
        sem: sem.clone(),
        write_skus,
        read_skus,
        user_prefix,
        quantity: scenario.quantity,
        checkout_delay: Duration::from_millis(scenario.checkout_delay_ms),
        start,
        end,
        hard_end,
    });

    let mut not_sent = [0u64; 3];
    let mut dispatched = [0u64; 3];
    // The offered load per chart bucket, counted here from the schedule itself so that
    // requests never sent still show as offered.
    let mut offered: [Vec<u64>; 3] = Default::default();
    let mut offer = |slot: &Slot| {
        let v = &mut offered[op_of(slot).index()];
        let i = (slot.at_ns / bucket_ns) as usize;
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] += 1;
    };
    let mut schedule = Schedule::new(spec);
    let cpu_at_start = own_cpu_secs();
    let mut burst = 0u32;
    let mut last_unblock = start;
    while let Some(slot) = schedule.next() {
        offer(&slot);
        let due = start + Duration::from_nanos(slot.at_ns);
        if due > Instant::now() + Duration::from_micros(50) {
            sleep_until(due.into()).await;
            burst = 0;
        } else {
            burst += 1;
            if burst >= YIELD_EVERY {
                burst = 0;
                tokio::task::yield_now().await;
            }
        }
        let permit = match sem.clone().try_acquire_owned() {
            Ok(p) => Ok(Ok(p)),
            Err(_) => {
                let p = timeout_at(hard_end.into(), sem.clone().acquire_owned()).await;
                last_unblock = Instant::now();
                p
            }
        };
        let Ok(Ok(permit)) = permit else {
            // Blocked past the hard deadline behind a server that does not answer: this
            // request and every later one would have been infinitely late.
            not_sent[op_of(&slot).index()] += 1;
            for rest in schedule.by_ref() {
                offer(&rest);
                not_sent[op_of(&rest).index()] += 1;
            }
            break;
        };
        dispatched[op_of(&slot).index()] += 1;
        // The lag is taken when the request is written, not here: on a one-thread
        // runtime the task runs only when the dispatcher yields.
        tokio::spawn(dispatch(
            ctx.clone(),
            slot,
            due,
            due.max(last_unblock),
            permit,
        ));
    }
    drop(ctx);
    // Ends when every worker has dropped its sender, or at the hard deadline.
    let mut rec = match collector.await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    let cpu = cpu_at_start.zip(own_cpu_secs()).map(|(a, b)| {
        let wall = Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64();
        (b - a, wall, dispatched.iter().sum::<u64>())
    });
    for op in Op::ALL {
        rec.timeline.set_offered(op, &offered[op.index()]);
    }
    let late_us = opts.timeout.as_micros() as u64;
    for op in Op::ALL {
        let i = op.index();
        // Sent, but the collector stopped at the hard deadline before their answer came.
        let unanswered = dispatched[i].saturating_sub(rec.ops[i].sent);
        for _ in 0..unanswered {
            rec.ops[i].record(
                &Outcome::Error(Cow::Borrowed("no answer before the deadline")),
                late_us,
            );
        }
        for _ in 0..not_sent[i] {
            rec.ops[i].record(
                &Outcome::Error(Cow::Borrowed("not sent before the deadline")),
                late_us,
            );
        }
    }
    let stock = match sampler {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let procs = match procs_sampler {
        Some(h) => h.await.unwrap_or_default(),
        None => Vec::new(),
    };
    PhaseResult {
        rec,
        stock,
        procs,
        cpu,
    }
}

fn op_of(slot: &Slot) -> Op {
    match slot.what {
        Planned::Reserve { .. } => Op::Reserve,
        Planned::Read { .. } => Op::Availability,
    }
}

/// One scheduled request, and the checkout that may follow a reservation. `ready` is
/// when the harness could have sent it (its due time, or the end of the dispatcher's
/// wait for an in-flight slot): the send lag runs from there to the moment it is sent.
async fn dispatch(
    ctx: Arc<Ctx>,
    slot: Slot,
    due: Instant,
    ready: Instant,
    permit: OwnedSemaphorePermit,
) {
    let lag = Instant::now().saturating_duration_since(ready);
    match slot.what {
        Planned::Read { sku } => {
            let outcome = ctx.client.availability(&ctx.read_skus[sku as usize]).await;
            drop(permit);
            ctx.emit(Op::Availability, due, lag, outcome, None, None)
                .await;
        }
        Planned::Reserve {
            user,
            sku,
            checkout,
            crowd,
        } => {
            // Written straight into the connection's buffer: no request struct, no
            // formatted user id, no JSON encoder per request.
            let res = ctx
                .client
                .reserve_as(
                    &ctx.user_prefix,
                    Some(user),
                    &ctx.write_skus[sku as usize],
                    ctx.quantity,
                    checkout,
                )
                .await;
            drop(permit);
            let answered = Instant::now();
            let granted = (res.outcome == Outcome::Ok).then_some((user, sku, ctx.quantity));
            ctx.emit(
                Op::Reserve,
                due,
                lag,
                res.outcome,
                granted,
                Some((sku, crowd)),
            )
            .await;
            if let (true, Some(reservation_id)) = (checkout, res.reservation_id) {
                run_checkout(&ctx, reservation_id, answered + ctx.checkout_delay).await;
            }
        }
    }
}

/// The checkout of a reservation, due `delay` after its reply; skipped when that falls
/// after the measured phase.
async fn run_checkout(ctx: &Ctx, reservation_id: String, due: Instant) {
    if due >= ctx.end {
        return;
    }
    sleep_until(due.into()).await;
    let lag = Instant::now().saturating_duration_since(due);
    let Ok(Ok(permit)) = timeout_at(ctx.hard_end.into(), ctx.sem.clone().acquire_owned()).await
    else {
        let outcome = Outcome::Error(Cow::Borrowed("not sent before the deadline"));
        ctx.emit(Op::Checkout, due, lag, outcome, None, None).await;
        return;
    };
    let req = CheckoutRequest {
        payment_transaction_id: format!("pay_{reservation_id}"),
        reservation_id,
        payment_method: "CREDIT_CARD".into(),
        shipping_address: "1 Bench Street, Loopback 127001".into(),
    };
    let outcome = ctx.client.checkout(&req).await;
    drop(permit);
    ctx.emit(Op::Checkout, due, lag, outcome, None, None).await;
}

/// The collector: owns the recorder, prints progress, stops when every sender is gone or
/// at `deadline`.
async fn collect(
    mut rx: mpsc::Receiver<Sample>,
    mut rec: Recorder,
    mut progress: Progress,
    sem: Arc<Semaphore>,
    max_in_flight: usize,
    start: Instant,
    deadline: Instant,
) -> Recorder {
    let mut tick = tokio::time::interval_at((start + progress.every).into(), progress.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stop = sleep_until(deadline.into());
    tokio::pin!(stop);
    let mut buf = Vec::with_capacity(256);
    loop {
        tokio::select! {
            biased;
            n = rx.recv_many(&mut buf, 256) => {
                if n == 0 {
                    break;
                }
                for s in buf.drain(..) {
                    rec.record(s);
                }
            }
            _ = tick.tick() => {
                progress.show(&rec, start, max_in_flight - sem.available_permits());
            }
            _ = &mut stop => break,
        }
    }
    progress.finish(&rec, start);
    rec
}

/// The live progress line.
#[derive(Debug)]
struct Progress {
    mode: ProgressMode,
    tty: bool,
    every: Duration,
    phase: &'static str,
    phase_secs: f64,
    last_completed: [u64; 3],
    last_at: Option<Instant>,
}

impl Progress {
    fn new(mode: ProgressMode, phase: &'static str, phase_secs: f64) -> Self {
        let tty = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        Self {
            mode,
            tty,
            every: Duration::from_secs(if tty { 1 } else { 5 }),
            phase,
            phase_secs,
            last_completed: [0; 3],
            last_at: None,
        }
    }

    fn line(&mut self, rec: &Recorder, start: Instant, in_flight: Option<usize>) -> String {
        let now = Instant::now();
        let since = self.last_at.unwrap_or(start);
        let dt = now.saturating_duration_since(since).as_secs_f64().max(1e-3);
        self.last_at = Some(now);
        let mut parts = Vec::new();
        for op in Op::ALL {
            let s = &rec.ops[op.index()];
            if s.sent == 0 {
                continue;
            }
            let rate = (s.sent - self.last_completed[op.index()]) as f64 / dt;
            self.last_completed[op.index()] = s.sent;
            let p99 = s.latency_us.value_at_quantile(0.99) as f64 / 1000.0;
            parts.push(format!(
                "{} {:.0}/s ok {} rej {} shed {} err {} p99 {:.2}ms",
                op.key(),
                rate,
                s.ok,
                s.rejected.values().sum::<u64>(),
                s.shed,
                s.errors,
                p99
            ));
        }
        let elapsed = now.saturating_duration_since(start).as_secs_f64();
        let inflight = in_flight
            .map(|n| format!(" | in flight {n}"))
            .unwrap_or_default();
        format!(
            "[{} {:>5.1}/{:.0}s] {}{}",
            self.phase,
            elapsed.min(self.phase_secs + 99.0),
            self.phase_secs,
            parts.join(" | "),
            inflight
        )
    }

    fn show(&mut self, rec: &Recorder, start: Instant, in_flight: usize) {
        if self.mode == ProgressMode::Off {
            return;
        }
        let line = self.line(rec, start, Some(in_flight));
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r{line}\x1b[K")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    fn finish(&mut self, rec: &Recorder, start: Instant) {
        if self.mode == ProgressMode::Off {
            return;
        }
        self.last_completed = [0; 3];
        self.last_at = Some(start);
        let line = self.line(rec, start, None);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            writeln!(err, "\r{line} (done)\x1b[K")
        } else {
            writeln!(err, "{line} (done)")
        };
    }
}

/// Samples the admin figures every `every` from `start` to `end` (bounded count).
async fn sample_stock(
    client: ApiClient,
    sale_id: String,
    skus: Arc<Vec<String>>,
    start: Instant,
    end: Instant,
    every: Duration,
) -> Vec<StockPoint> {
    let every = every.max(Duration::from_millis(20));
    let total = end.saturating_duration_since(start);
    let n = (total.as_nanos() / every.as_nanos()) as u64 + 2;
    let mut out = Vec::with_capacity(n as usize);
    for k in 0..n {
        let at = start + every * (k as u32);
        sleep_until(at.into()).await;
        if let Ok(sale) = client.sale(&sale_id).await {
            let available = skus
                .iter()
                .map(|sku| {
                    sale.products
                        .iter()
                        .find(|p| &p.sku_id == sku)
                        .map_or(0, |p| p.available_count)
                })
                .collect();
            out.push(StockPoint {
                t_ms: Instant::now()
                    .saturating_duration_since(start)
                    .as_secs_f64()
                    * 1000.0,
                available,
            });
        }
    }
    out
}

/// Closed-loop saturation of `/health` and of the availability read, alternating in four
/// rounds so that slow drift of the machine (a checkpoint, a vacuum) hits both alike.
pub async fn read_ceiling(
    client: &ApiClient,
    sku_id: &str,
    concurrency: u32,
    secs: f64,
) -> ReadCeilingReport {
    const ROUNDS: u32 = 4;
    let slice = Duration::from_secs_f64(secs / f64::from(ROUNDS));
    let sku: Arc<str> = Arc::from(sku_id);
    let (mut health, mut avail) = ((0u64, 0f64), (0u64, 0f64));
    for _ in 0..ROUNDS {
        let h = closed_loop(client, concurrency, slice, |c: ApiClient| async move {
            c.health().await
        })
        .await;
        let a = closed_loop(client, concurrency, slice, {
            let sku = sku.clone();
            move |c: ApiClient| {
                let sku = sku.clone();
                async move { c.availability(&sku).await }
            }
        })
        .await;
        health = (health.0 + h.0, health.1 + h.1);
        avail = (avail.0 + a.0, avail.1 + a.1);
    }
    let per_s = |(n, s): (u64, f64)| if s > 0.0 { n as f64 / s } else { 0.0 };
    let (health_per_s, availability_per_s) = (per_s(health), per_s(avail));
    ReadCeilingReport {
        concurrency,
        secs,
        health_per_s,
        availability_per_s,
        ratio: if health_per_s > 0.0 {
            availability_per_s / health_per_s
        } else {
            0.0
        },
    }
}

/// `concurrency` loops each sending the next request when the previous one is answered,
/// for `dur`; returns (successes, elapsed seconds).
async fn closed_loop<F, Fut>(
    client: &ApiClient,
    concurrency: u32,
    dur: Duration,
    f: F,
) -> (u64, f64)
where
    F: Fn(ApiClient) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Outcome> + Send,
{
    let t0 = Instant::now();
    let deadline = t0 + dur;
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (c, f) = (client.clone(), f.clone());
        set.spawn(async move {
            let mut ok = 0u64;
            for _ in 0..CEILING_MAX_REQUESTS {
                if Instant::now() >= deadline {
                    break;
                }
                if f(c.clone()).await == Outcome::Ok {
                    ok += 1;
                }
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += r.unwrap_or(0);
    }
    (ok, t0.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        // pid (comm, which may hold spaces) state ppid pgrp session tty tpgid flags
        // minflt cminflt majflt cmajflt utime stime ...
        let line = "4242 (flash bench) R 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(line), Some(325));
        assert_eq!(cpu_ticks("4242 (x) R 1"), None);
        assert_eq!(cpu_ticks("garbage"), None);
        // This process's own line parses (Linux).
        if let Ok(own) = std::fs::read_to_string("/proc/self/stat") {
            assert!(cpu_ticks(&own).is_some());
        }
    }
}
