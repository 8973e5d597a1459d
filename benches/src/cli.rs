//! The command line of `flashsale-bench`, and what each command does with it.
//!
//! Scenario flags are optional on purpose: a value given on the command line (or in its
//! `FLASHSALE_BENCH_…` variable) overrides the TOML file of `--scenario`, which overrides
//! the built-in default named in each flag's help.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::ApiClient;
use crate::compare;
use crate::error::BenchError;
use crate::find_max::{find_max, FindMaxOptions};
use crate::html;
use crate::report::{render_table, verdict, Report};
use crate::runner::{run, ProgressMode, RunOptions, RunOutput};
use crate::scenario::Scenario;

const EXAMPLES: &str = "\
Examples:
  # 10 s at 500 reservations/s and 5,000 reads/s on one hot SKU, after a 2 s warm-up
  flashsale-bench --target http://127.0.0.1:8080 --admin-token secret --write-rate 500

  # A flash crowd: 5,000 users arrive in the first 300 ms, then a steady 200 writes/s
  flashsale-bench --users 5000 --flash-crowd-ms 300 --inventory 1000 \\
      --json-out run.json --html-out run.html

  # The highest write rate that keeps reservation p99 under 20 ms
  flashsale-bench --find-max --slo-p99-ms 20 --inventory 1000000 --users 1000000

  # A scenario file, with one value overridden
  flashsale-bench --scenario benches/scenarios/flash-crowd.toml --duration-secs 30

  # Reports side by side, ratios relative to flashsale in Kafka mode
  flashsale-bench compare flashsale-kafka=k.json baseline-postgres=pg.json --html-out cmp.html

Exit codes: 0 clean run, 1 correctness violations found, 2 the run could not be done.";

/// Open-loop load harness for flashsale and its baselines.
///
/// Creates its own sale on the target, offers requests at fixed, precomputed times (open
/// loop: latency counts from each request's scheduled time, so coordinated omission is
/// corrected), shows a live progress line on stderr, prints a table per operation, and
/// checks at the end that nothing was oversold and no user went over its limit. Loopback
/// targets only.
#[derive(Debug, Parser)]
#[command(
    name = "flashsale-bench",
    version,
    after_long_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A subcommand; without one, a load run with the flags below.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The load run.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put several JSON reports side by side, as ratios to a reference target.
    Compare(CompareArgs),
    /// Render bench-compare.sh's measurements (TARGET<TAB>METRIC<TAB>VALUE lines, one per
    /// round) as one table of medians and ratios.
    SideBySide(SideBySideArgs),
    /// Fill a deployment's (fresh) events topic with many synthetic but valid event
    /// records, for the gateway start-up benchmark (scripts/gateway-startup.sh).
    #[command(after_help = "Example:
  flashsale-bench fill-events --kafka 127.0.0.1:19092 --topic-prefix fsstart1. \
      --records 10000000")]
    FillEvents(crate::fill_events::FillEventsArgs),
    /// Size a deployment for a target load from a profile (`profile --json-out`), or
    /// with --machines N predict the highest load N machines sustain.
    #[command(after_long_help = PLAN_EXAMPLES)]
    Plan(PlanArgs),
    /// Measure what each request costs each process (CPU from /proc, memory per live
    /// hold) and the single-partition ceiling, on deployments it starts on this machine;
    /// the profile `plan` reads.
    #[command(after_long_help = crate::profile::EXAMPLES)]
    Profile(crate::profile::ProfileArgs),
}

const PLAN_EXAMPLES: &str = "\
Examples:
  # The customer's 10:00: 250,000 reads/s and 25,000 holds/s, all on one hot product
  flashsale-bench plan --profile profile.json --reads-per-s 250000 --holds-per-s 25000 \\
      --hot-sku-share 1 --products 1 --cores-per-machine 16 --headroom 0.6

  # The same spread over 100 products, 10 % of the holds on the hot one
  flashsale-bench plan --profile profile.json --reads-per-s 250000 --holds-per-s 25000 \\
      --hot-sku-share 0.1 --products 100 --cores-per-machine 16 --json-out plan.json

  # What one 1-core machine sustains, broker and Postgres elsewhere (plan-check.sh)
  flashsale-bench plan --profile profile.json --machines 1 --cores-per-machine 1 \\
      --headroom 1 --gateways 1 --engines 1 --services-elsewhere

The model (benches/src/plan.rs, docs/capacity.md): CPU µs per request per role from
the profile, times the rates; every gateway also pays for following every hold's
events, every engine for its standby copies; one hot SKU is one partition, capped by
the profile's single-partition ceiling; processes packed into machines of
cores × headroom. Not modelled: network, disks, broker replication traffic.

Exit codes: 0 the target fits (or a prediction was made), 1 a mode's plan is not
feasible (the table says which limit binds), 2 bad input or an unusable profile.";

/// Flags of `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The profile (JSON of `flashsale-bench profile --json-out`).
    #[arg(long)]
    pub profile: PathBuf,
    /// Availability reads per second to plan for.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub reads_per_s: f64,
    /// Holds (reservation attempts) per second to plan for.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub holds_per_s: f64,
    /// Checkouts per second to plan for.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub checkouts_per_s: f64,
    /// Share (0–1) of the holds that go to the one hot SKU.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub hot_sku_share: f64,
    /// Products in the sale (each SKU lives on one partition).
    #[arg(long, default_value_t = 1)]
    pub products: u32,
    /// Cores of each machine.
    #[arg(long, default_value_t = 16)]
    pub cores_per_machine: u32,
    /// Share (0–1] of each machine's CPU the plan may use (0.6 = 60 %).
    #[arg(long, default_value_t = 0.6, allow_negative_numbers = true)]
    pub headroom: f64,
    /// Instead of a target: predict the highest holds/s and reads/s N machines sustain.
    #[arg(long)]
    pub machines: Option<u32>,
    /// With --machines: availability reads sent with each hold.
    #[arg(long, default_value_t = 0.0, requires = "machines")]
    pub reads_per_hold: f64,
    /// Plan only this mode (embedded or kafka) [default: every mode of the profile].
    #[arg(long)]
    pub mode: Option<String>,
    /// Fewest engines (Kafka mode; 2 so one can take over from the other).
    #[arg(long, default_value_t = 2)]
    pub min_engines: u32,
    /// Fewest brokers (3: replication factor 3, which the profile does not measure).
    #[arg(long, default_value_t = 3)]
    pub min_brokers: u32,
    /// Fixed number of gateways (Kafka mode) instead of the fewest that fit.
    #[arg(long)]
    pub gateways: Option<u32>,
    /// Fixed number of engines (Kafka mode) instead of the fewest that fit.
    #[arg(long)]
    pub engines: Option<u32>,
    /// The broker and Postgres run on machines this plan does not count.
    #[arg(long)]
    pub services_elsewhere: bool,
    /// Write the plan as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Write the plan as a self-contained HTML page here.
    #[arg(long)]
    pub html_out: Option<PathBuf>,
}

/// `git rev-parse HEAD` of the current directory's checkout, `-dirty` when it has
/// changes to tracked files; `None` outside a checkout.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let mut c = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .args(["diff", "--quiet", "HEAD", "--"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(false);
    if dirty {
        c.push_str("-dirty");
    }
    Some(c)
}

/// `plan`: prints the table and writes the outputs; returns the exit code.
pub fn plan_command(args: &PlanArgs) -> Result<u8, BenchError> {
    use crate::plan;
    let text = std::fs::read_to_string(&args.profile)
        .map_err(|e| BenchError::Report(format!("{}: {e}", args.profile.display())))?;
    let profile: plan::Profile = serde_json::from_str(&text).map_err(|e| {
        BenchError::Report(format!(
            "{}: not a profile ({e}): take one with `flashsale-bench profile --json-out`",
            args.profile.display()
        ))
    })?;
    let bad = |e: plan::PlanError| BenchError::Scenario(e.to_string());
    let notes = plan::check_profile(&profile, env!("CARGO_PKG_VERSION"), git_commit().as_deref())
        .map_err(bad)?;
    let target = plan::Target {
        reads_per_s: args.reads_per_s,
        holds_per_s: args.holds_per_s,
        checkouts_per_s: args.checkouts_per_s,
        hot_sku_share: args.hot_sku_share,
        products: args.products,
    };
    let sizing = plan::Sizing {
        cores_per_machine: args.cores_per_machine,
        headroom: args.headroom,
        min_engines: args.min_engines,
        min_brokers: args.min_brokers,
        services_elsewhere: args.services_elsewhere,
        gateways: args.gateways,
        engines: args.engines,
    };
    let modes: Vec<&str> = match args.mode.as_deref() {
        None => vec!["embedded", "kafka"],
        Some(m @ ("embedded" | "kafka")) => vec![m],
        Some(m) => {
            return Err(BenchError::Scenario(format!(
                "--mode {m:?}: embedded or kafka"
            )))
        }
    };
    let source = serde_json::json!({
        "file": args.profile.display().to_string(),
        "taken_at": profile.taken_at,
        "machine": profile.machine,
        "build": profile.build,
    });
    let (table, json, code) = if let Some(n) = args.machines {
        if args.holds_per_s > 0.0 || args.reads_per_s > 0.0 || args.checkouts_per_s > 0.0 {
            return Err(BenchError::Scenario(
                "--machines predicts the load: give it without --holds-per-s / --reads-per-s"
                    .into(),
            ));
        }
        let mut preds = Vec::new();
        for m in &modes {
            if let Some(p) =
                plan::predict(&profile, m, n, args.reads_per_hold, &target, &sizing).map_err(bad)?
            {
                preds.push(p);
            }
        }
        let table = plan::render_predictions(n, args.reads_per_hold, &sizing, &preds, &notes);
        let json = serde_json::json!({
            "kind": "prediction",
            "profile": source,
            "machines": n,
            "reads_per_hold": args.reads_per_hold,
            "shape": target,
            "sizing": sizing,
            "modes": preds.iter().map(|p| (p.mode.clone(), p)).collect::<std::collections::BTreeMap<_, _>>(),
            "notes": notes,
        });
        (table, json, EXIT_OK)
    } else {
        let mut plans = Vec::new();
        for m in &modes {
            if let Some(p) = plan::plan_mode(&profile, m, &target, &sizing).map_err(bad)? {
                plans.push(p);
            }
        }
        let code = if plans.iter().all(|p| p.feasible) {
            EXIT_OK
        } else {
            EXIT_VIOLATIONS
        };
        let table = plan::render_plans(&target, &sizing, &plans, &notes);
        let json = serde_json::json!({
            "kind": "plan",
            "profile": source,
            "target": target,
            "sizing": sizing,
            "modes": plans.iter().map(|p| (p.mode.clone(), p)).collect::<std::collections::BTreeMap<_, _>>(),
            "notes": notes,
        });
        (table, json, code)
    };
    print!("{table}");
    if let Some(p) = &args.json_out {
        write_file(
            p,
            &serde_json::to_string_pretty(&json).map_err(|e| BenchError::Report(e.to_string()))?,
        )?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.html_out {
        write_file(p, &html::plan_page(&table, &json))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(code)
}

/// Flags of `side-by-side`.
#[derive(Debug, Args)]
pub struct SideBySideArgs {
    /// The measurements file.
    pub input: PathBuf,
    /// Target the holds/s ratios are relative to.
    #[arg(long, default_value = "flashsale-embedded")]
    pub reference: String,
    /// The find-max SLO, for the legend, ms.
    #[arg(long, default_value_t = 50.0)]
    pub slo_p99_ms: f64,
    /// Write the rows as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// `side-by-side`: prints the table; returns the exit code.
pub fn side_by_side_command(args: &SideBySideArgs) -> Result<u8, BenchError> {
    use crate::side_by_side;
    let text = std::fs::read_to_string(&args.input)
        .map_err(|e| BenchError::Report(format!("{}: {e}", args.input.display())))?;
    let mut m = side_by_side::parse(&text)?;
    for t in m.values_mut() {
        for path in t.find_max_reports.clone() {
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| Report::from_json(&text).map_err(|e| e.to_string()))
            {
                Ok(r) => t.add_find_max(&r),
                Err(e) => t.notes.push(format!("find-max report {path}: {e}")),
            }
        }
    }
    print!(
        "{}",
        side_by_side::render(&m, &args.reference, args.slo_p99_ms)
    );
    if let Some(p) = &args.json_out {
        let rows = side_by_side::rows(&m, &args.reference);
        write_file(
            p,
            &serde_json::to_string_pretty(&serde_json::json!({
                "reference": args.reference,
                "rows": rows,
                "measured": m,
            }))
            .map_err(|e| BenchError::Report(e.to_string()))?,
        )?;
        eprintln!("wrote {}", p.display());
    }
    Ok(EXIT_OK)
}

/// Flags of a load run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Base URL of the server under test (loopback only).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_TARGET",
        default_value = "http://127.0.0.1:8080"
    )]
    pub target: String,
    /// Bearer token of the admin API (to create the sale and read its figures).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_ADMIN_TOKEN",
        default_value = "bench-admin-token",
        hide_env_values = true
    )]
    pub admin_token: String,
    /// Name of the target in tables and charts [default: the target URL].
    #[arg(long, env = "FLASHSALE_BENCH_LABEL")]
    pub label: Option<String>,
    /// TOML scenario file (keys as in the JSON report's `scenario`); flags override it.
    #[arg(long, env = "FLASHSALE_BENCH_SCENARIO")]
    pub scenario: Option<PathBuf>,

    /// Products in the sale, 1–100; product 0 is the hot SKU [default: 1].
    #[arg(long, env = "FLASHSALE_BENCH_PRODUCTS", help_heading = "Scenario")]
    pub products: Option<u32>,
    /// Units of each product [default: 1000].
    #[arg(long, env = "FLASHSALE_BENCH_INVENTORY", help_heading = "Scenario")]
    pub inventory: Option<i64>,
    /// perUserLimit of each product [default: 1].
    #[arg(
        long,
        env = "FLASHSALE_BENCH_PER_USER_LIMIT",
        help_heading = "Scenario"
    )]
    pub per_user_limit: Option<u32>,
    /// Distinct users the writes are spread over [default: 10000].
    #[arg(long, env = "FLASHSALE_BENCH_USERS", help_heading = "Scenario")]
    pub users: Option<u32>,
    /// Share (0–1) of writes and reads that go to the hot SKU [default: 1].
    #[arg(long, env = "FLASHSALE_BENCH_HOT_SHARE", help_heading = "Scenario")]
    pub hot_share: Option<f64>,
    /// Availability reads per reservation attempt [default: 10].
    #[arg(
        long,
        env = "FLASHSALE_BENCH_READS_PER_WRITE",
        help_heading = "Scenario"
    )]
    pub reads_per_write: Option<f64>,
    /// Steady reservation attempts per second [default: 200].
    #[arg(long, env = "FLASHSALE_BENCH_WRITE_RATE", help_heading = "Scenario")]
    pub write_rate: Option<f64>,
    /// Steady availability reads per second [default: write rate × reads per write].
    #[arg(long, env = "FLASHSALE_BENCH_READ_RATE", help_heading = "Scenario")]
    pub read_rate: Option<f64>,
    /// Flash crowd: its users each send one reservation within the first N ms, on top of
    /// the steady stream; 0 = no crowd [default: 0].
    #[arg(
        long,
        env = "FLASHSALE_BENCH_FLASH_CROWD_MS",
        help_heading = "Scenario"
    )]
    pub flash_crowd_ms: Option<u64>,
    /// Users in the flash crowd [default: all users].
    #[arg(
        long,
        env = "FLASHSALE_BENCH_FLASH_CROWD_USERS",
        help_heading = "Scenario"
    )]
    pub flash_crowd_users: Option<u32>,
    /// Share (0–1) of the flash crowd that goes for the hot SKU [default: --hot-share].
    #[arg(
        long,
        env = "FLASHSALE_BENCH_CROWD_HOT_SHARE",
        help_heading = "Scenario"
    )]
    pub crowd_hot_share: Option<f64>,
    /// Offer this multiple of the target's capacity (--capacity-per-s or
    /// --capacity-from) as the write rate; overrides the scenario's capacity_multiplier
    /// (overload.toml: 2).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_RATE_MULTIPLIER",
        help_heading = "Scenario"
    )]
    pub rate_multiplier: Option<f64>,
    /// The target's measured capacity, writes/s, for scenarios offered as a multiple of
    /// it (overload.toml).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_CAPACITY_PER_S",
        help_heading = "Scenario",
        conflicts_with = "capacity_from"
    )]
    pub capacity_per_s: Option<f64>,
    /// Take the capacity from a --find-max JSON report (its highest rate that held).
    #[arg(long, env = "FLASHSALE_BENCH_CAPACITY_FROM", help_heading = "Scenario")]
    pub capacity_from: Option<PathBuf>,
    /// Share (0–1) of successful reservations that are checked out [default: 0].
    #[arg(
        long,
        env = "FLASHSALE_BENCH_CHECKOUT_SHARE",
        help_heading = "Scenario"
    )]
    pub checkout_share: Option<f64>,
    /// Delay from a reservation's reply to its checkout, ms [default: 200].
    #[arg(
        long,
        env = "FLASHSALE_BENCH_CHECKOUT_DELAY_MS",
        help_heading = "Scenario"
    )]
    pub checkout_delay_ms: Option<u64>,
    /// Units per reservation [default: 1].
    #[arg(long, env = "FLASHSALE_BENCH_QUANTITY", help_heading = "Scenario")]
    pub quantity: Option<u32>,
    /// Length of the measured phase, seconds [default: 10].
    #[arg(long, env = "FLASHSALE_BENCH_DURATION_SECS", help_heading = "Scenario")]
    pub duration_secs: Option<f64>,
    /// Length of the measured phase with a unit: 90s, 5m, 1h (a bare number is
    /// seconds); the same as --duration-secs.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_DURATION",
        value_parser = parse_duration_secs,
        conflicts_with = "duration_secs",
        help_heading = "Scenario"
    )]
    pub duration: Option<f64>,
    /// Multiply every steady rate (writes, reads) by this factor after the file and the
    /// other flags, e.g. 0.25 to run the soak at a quarter of its load [default: 1].
    #[arg(long, env = "FLASHSALE_BENCH_SCALE", help_heading = "Scenario")]
    pub scale: Option<f64>,
    /// Report figures per window of this many seconds (latency of each operation,
    /// shed, errors, connections closed, the watched processes' RSS and CPU) with a
    /// verdict on flatness; 0 = off [default: 0; the soak scenario: 60].
    #[arg(long, env = "FLASHSALE_BENCH_SAMPLE_SECS", help_heading = "Scenario")]
    pub sample_secs: Option<f64>,
    /// Warm-up before it (own sale, not recorded), seconds [default: 2].
    #[arg(long, env = "FLASHSALE_BENCH_WARMUP_SECS", help_heading = "Scenario")]
    pub warmup_secs: Option<f64>,
    /// reservationTtlSeconds of the sale; must outlast the run [default: 3600].
    #[arg(
        long,
        env = "FLASHSALE_BENCH_RESERVATION_TTL_SECS",
        help_heading = "Scenario"
    )]
    pub reservation_ttl_secs: Option<u32>,
    /// Seed of the schedule's choices [default: 1].
    #[arg(long, env = "FLASHSALE_BENCH_SEED", help_heading = "Scenario")]
    pub seed: Option<u64>,

    /// Per-request timeout, ms.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_TIMEOUT_MS",
        default_value_t = 5000,
        help_heading = "Client"
    )]
    pub timeout_ms: u64,
    /// Requests in flight at most; also the keep-alive pool size.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_MAX_IN_FLIGHT",
        default_value_t = 2048,
        help_heading = "Client"
    )]
    pub max_in_flight: usize,
    /// Threads of the harness's runtime (the server shares the machine).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_CLIENT_THREADS",
        default_value_t = 1,
        help_heading = "Client"
    )]
    pub client_threads: usize,
    /// Longest wait, seconds, for the target to answer /ready (or /health) before the
    /// run gives up with exit 2; the wait says what it waits for on stderr at once.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_WAIT_READY_SECS",
        default_value_t = 15.0,
        help_heading = "Client"
    )]
    pub wait_ready_secs: f64,
    /// Live progress line on stderr.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_PROGRESS",
        value_enum,
        default_value = "auto",
        help_heading = "Client"
    )]
    pub progress: ProgressMode,
    /// Interval of the stock samples (admin figures) for the stock chart, ms.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_STOCK_SAMPLE_MS",
        default_value_t = 250,
        help_heading = "Client"
    )]
    pub stock_sample_ms: u64,
    /// Prefix of the SKU ids the run creates (a unique run id follows).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_SKU_PREFIX",
        default_value = "BENCH-",
        help_heading = "Client"
    )]
    pub sku_prefix: String,
    /// A server process to watch in the per-window report, as NAME=PID (repeat it:
    /// --watch-pid engine=1234 --watch-pid gateway=5678): its RSS (VmRSS of
    /// /proc/PID/status) and CPU (utime + stime of /proc/PID/stat) at every window.
    /// Needs per-window figures (--sample-secs or the scenario's sample_secs).
    #[arg(
        long,
        env = "FLASHSALE_BENCH_WATCH_PID",
        value_delimiter = ',',
        help_heading = "Client"
    )]
    pub watch_pid: Vec<crate::soak::Watch>,
    /// Leave the sales the run creates (the measured sale and its warm-up sale) open.
    /// By default each is deleted (never touched) or ended when the run is over, so
    /// no bench sale stays ACTIVE for 24 hours.
    #[arg(long, env = "FLASHSALE_BENCH_KEEP_SALES", help_heading = "Client")]
    pub keep_sales: bool,

    /// Write the JSON report here.
    #[arg(long, env = "FLASHSALE_BENCH_JSON_OUT", help_heading = "Output")]
    pub json_out: Option<PathBuf>,
    /// Write a self-contained HTML page with charts here.
    #[arg(long, env = "FLASHSALE_BENCH_HTML_OUT", help_heading = "Output")]
    pub html_out: Option<PathBuf>,
    /// After the run, saturate /health and then the availability read, closed loop, for
    /// this many seconds each, and report their ratio; 0 = off.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_READ_CEILING_SECS",
        default_value_t = 0.0,
        help_heading = "Output"
    )]
    pub read_ceiling_secs: f64,
    /// Requests in flight during the read ceiling.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_READ_CEILING_CONCURRENCY",
        default_value_t = 64,
        help_heading = "Output"
    )]
    pub read_ceiling_concurrency: u32,

    /// Search for the highest write rate whose reservation p99 stays within --slo-p99-ms
    /// and failures within --max-failure-pct (steps without flash crowd).
    #[arg(long, env = "FLASHSALE_BENCH_FIND_MAX", help_heading = "Find max")]
    pub find_max: bool,
    /// The p99 SLO of reservations, ms: what --find-max holds, and what the report's
    /// verdict line and the SLO line of its latency charts are drawn against.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_SLO_P99_MS",
        default_value_t = 50.0,
        help_heading = "Find max"
    )]
    pub slo_p99_ms: f64,
    /// Highest share of failed or shed (429/503) reservations, in percent.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_MAX_FAILURE_PCT",
        default_value_t = 0.1,
        help_heading = "Find max"
    )]
    pub max_failure_pct: f64,
    /// First write rate of the search, per second.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_FIND_MAX_START",
        default_value_t = 200.0,
        help_heading = "Find max"
    )]
    pub find_max_start: f64,
    /// Rate multiplier between steps while they hold.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_FIND_MAX_FACTOR",
        default_value_t = 1.5,
        help_heading = "Find max"
    )]
    pub find_max_factor: f64,
    /// Seconds per step.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_FIND_MAX_STEP_SECS",
        default_value_t = 5.0,
        help_heading = "Find max"
    )]
    pub find_max_step_secs: f64,
    /// Most growth steps.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_FIND_MAX_STEPS",
        default_value_t = 12,
        help_heading = "Find max"
    )]
    pub find_max_steps: u32,
    /// Bisection steps between the last rate that held and the first that failed.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_FIND_MAX_REFINE",
        default_value_t = 2,
        help_heading = "Find max"
    )]
    pub find_max_refine: u32,
    /// Repeats of a failing step before it counts as failed.
    #[arg(
        long,
        env = "FLASHSALE_BENCH_FIND_MAX_CONFIRM",
        default_value_t = 1,
        help_heading = "Find max"
    )]
    pub find_max_confirm: u32,
}

/// Flags of `compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Reports as NAME=FILE (a name may appear twice: its find-max report and its scenario
    /// report). Names the target checks look for: flashsale-kafka, flashsale-embedded,
    /// baseline-postgres, baseline-redis.
    #[arg(
        required = true,
        env = "FLASHSALE_BENCH_COMPARE_INPUTS",
        value_delimiter = ','
    )]
    pub inputs: Vec<String>,
    /// Target the ratios are relative to [default: flashsale-kafka if present, else
    /// flashsale-embedded, else the first].
    #[arg(long, env = "FLASHSALE_BENCH_COMPARE_REFERENCE")]
    pub reference: Option<String>,
    /// Write the comparison as JSON here.
    #[arg(long, env = "FLASHSALE_BENCH_COMPARE_JSON_OUT")]
    pub json_out: Option<PathBuf>,
    /// Write a self-contained HTML page with bar charts here.
    #[arg(long, env = "FLASHSALE_BENCH_COMPARE_HTML_OUT")]
    pub html_out: Option<PathBuf>,
}

impl RunArgs {
    /// The scenario: defaults, then the TOML file, then the flags.
    pub fn scenario(&self) -> Result<Scenario, BenchError> {
        let mut s = match &self.scenario {
            Some(p) => Scenario::from_toml(
                &std::fs::read_to_string(p)
                    .map_err(|e| BenchError::Scenario(format!("{}: {e}", p.display())))?,
            )?,
            None => Scenario::default(),
        };
        macro_rules! over {
            ($flag:ident => $field:ident) => {
                if let Some(v) = self.$flag {
                    s.$field = v;
                }
            };
            ($flag:ident => Some $field:ident) => {
                if let Some(v) = self.$flag {
                    s.$field = Some(v);
                }
            };
        }
        over!(products => products);
        over!(inventory => inventory_per_product);
        over!(per_user_limit => per_user_limit);
        over!(users => users);
        over!(hot_share => hot_sku_share);
        over!(reads_per_write => reads_per_write);
        over!(write_rate => write_rate_per_s);
        over!(read_rate => Some read_rate_per_s);
        over!(flash_crowd_ms => flash_crowd_ms);
        over!(flash_crowd_users => Some flash_crowd_users);
        over!(crowd_hot_share => Some crowd_hot_share);
        over!(rate_multiplier => Some capacity_multiplier);
        over!(checkout_share => checkout_share);
        over!(checkout_delay_ms => checkout_delay_ms);
        over!(quantity => quantity);
        over!(duration_secs => duration_secs);
        over!(duration => duration_secs);
        over!(sample_secs => sample_secs);
        over!(warmup_secs => warmup_secs);
        over!(reservation_ttl_secs => reservation_ttl_secs);
        over!(seed => seed);
        s.apply_capacity(self.capacity()?)?;
        if let Some(f) = self.scale {
            if !(f > 0.0 && f.is_finite()) {
                return Err(BenchError::Scenario(format!(
                    "--scale must be > 0 (0.25 = a quarter of every rate), got {f}"
                )));
            }
            s.write_rate_per_s *= f;
            s.read_rate_per_s = s.read_rate_per_s.map(|r| r * f);
        }
        if !self.watch_pid.is_empty() && s.sample_secs == 0.0 {
            return Err(BenchError::Scenario(
                "--watch-pid is reported per window: give --sample-secs N (60 = per minute)".into(),
            ));
        }
        s.validate()?;
        Ok(s)
    }

    /// The capacity given by --capacity-per-s or read from --capacity-from.
    fn capacity(&self) -> Result<Option<f64>, BenchError> {
        let Some(p) = &self.capacity_from else {
            return Ok(self.capacity_per_s);
        };
        let text = std::fs::read_to_string(p)
            .map_err(|e| BenchError::Scenario(format!("{}: {e}", p.display())))?;
        let r = Report::from_json(&text)
            .map_err(|e| BenchError::Scenario(format!("{}: {e}", p.display())))?;
        match r.find_max.and_then(|f| f.max_rate_held_per_s) {
            Some(c) => Ok(Some(c)),
            None => Err(BenchError::Scenario(format!(
                "{}: not a --find-max report with a rate that held",
                p.display()
            ))),
        }
    }

    /// Client-side options.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            label: self.label.clone().unwrap_or_else(|| self.target.clone()),
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            max_in_flight: self.max_in_flight.clamp(1, 65_536),
            progress: self.progress,
            stock_sample: Duration::from_millis(self.stock_sample_ms.max(20)),
            sku_prefix: self.sku_prefix.clone(),
            read_ceiling: (self.read_ceiling_secs > 0.0).then_some((
                self.read_ceiling_concurrency.clamp(1, 4096),
                self.read_ceiling_secs.min(60.0),
            )),
            ready_wait: Duration::from_secs_f64(self.wait_ready_secs.clamp(0.0, 600.0)),
            keep_sales: self.keep_sales,
            watch: self.watch_pid.clone(),
        }
    }

    fn find_max_options(&self) -> FindMaxOptions {
        FindMaxOptions {
            start_rate_per_s: self.find_max_start.max(1.0),
            factor: self.find_max_factor.max(1.05),
            step_secs: self.find_max_step_secs.clamp(0.5, 300.0),
            max_steps: self.find_max_steps.clamp(1, 40),
            refine_steps: self.find_max_refine.min(10),
            confirm_failures: self.find_max_confirm.min(5),
            slo_p99_ms: self.slo_p99_ms,
            max_failure_share: self.max_failure_pct / 100.0,
        }
    }
}

/// `90s`, `5m`, `1h`, `1.5m` or a bare number of seconds, as seconds.
pub fn parse_duration_secs(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let mult = match unit {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}: use s, m or h (5m, 90s)"
            ))
        }
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: a number and s, m or h (5m, 90s)"))?;
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("the duration must be > 0, got {s:?}"));
    }
    Ok(v * mult)
}

/// Exit code of a run without violations.
pub const EXIT_OK: u8 = 0;
/// Exit code when violations were found.
pub const EXIT_VIOLATIONS: u8 = 1;
/// Exit code when the run could not be done.
pub const EXIT_FAILED: u8 = 2;

/// A load run (or find-max) with its outputs; returns the exit code.
pub async fn run_command(args: &RunArgs) -> Result<u8, BenchError> {
    let scenario = args.scenario()?;
    let opts = args.run_options();
    let client = ApiClient::new(
        &args.target,
        &args.admin_token,
        opts.max_in_flight,
        opts.timeout,
    )?;
    let mut out = if args.find_max {
        find_max(&client, &scenario, &opts, &args.find_max_options()).await?
    } else {
        run(&client, &scenario, &opts).await?
    };
    if let Some(s) = &mut out.report.soak {
        // The per-window reserve p99 is judged against the run's SLO (default: the
        // issue's 50 ms).
        s.flatness = crate::soak::judge(&s.windows, args.slo_p99_ms);
    }
    out.report.verdict = Some(verdict(
        &out.report,
        args.slo_p99_ms,
        args.max_failure_pct / 100.0,
    ));
    write_outputs(&out, args.json_out.as_deref(), args.html_out.as_deref())?;
    print!("{}", render_table(&out.report, &out.extras));
    Ok(if out.report.violations.is_empty() {
        EXIT_OK
    } else {
        EXIT_VIOLATIONS
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).map_err(|e| BenchError::Report(format!("{}: {e}", path.display())))
}

/// Writes the JSON and HTML reports of a run, where asked.
pub fn write_outputs(
    out: &RunOutput,
    json: Option<&Path>,
    html_path: Option<&Path>,
) -> Result<(), BenchError> {
    if let Some(p) = json {
        write_file(p, &out.report.to_json())?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = html_path {
        let slo = out.report.verdict.as_ref().map(|v| v.slo_p99_ms);
        write_file(
            p,
            &html::run_page(&out.report, &out.extras, &out.charts, slo),
        )?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// `compare`; returns the exit code (1 when any report had violations).
pub fn compare_command(args: &CompareArgs) -> Result<u8, BenchError> {
    let inputs = args
        .inputs
        .iter()
        .map(|s| compare::parse_input(s))
        .collect::<Result<Vec<_>, _>>()?;
    let c = compare::load(&inputs, args.reference.as_deref())?;
    let table = compare::render(&c);
    print!("{table}");
    if let Some(p) = &args.json_out {
        write_file(
            p,
            &serde_json::to_string_pretty(&c).map_err(|e| BenchError::Report(e.to_string()))?,
        )?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.html_out {
        let dir = p.parent().unwrap_or(Path::new("."));
        let page = html::compare_page(&table, &compare::bars(&c), &compare::links(&inputs, dir));
        write_file(p, &page)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(if c.targets.iter().any(|t| t.violations > 0) {
        EXIT_VIOLATIONS
    } else {
        EXIT_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_scenario_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s.toml");
        std::fs::write(&f, "products = 4\nusers = 77\nwrite_rate_per_s = 10.0\n").unwrap();
        let cli = Cli::try_parse_from([
            "flashsale-bench",
            "--scenario",
            f.to_str().unwrap(),
            "--users",
            "99",
            "--read-rate",
            "5",
        ])
        .unwrap();
        let s = cli.run.scenario().unwrap();
        assert_eq!(s.products, 4, "from the file");
        assert_eq!(s.users, 99, "flag wins");
        assert_eq!(s.write_rate_per_s, 10.0);
        assert_eq!(s.read_rate(), 5.0);
        assert_eq!(
            s.inventory_per_product,
            Scenario::default().inventory_per_product
        );
    }

    #[test]
    fn overload_takes_its_rate_from_the_capacity() {
        let overload = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/overload.toml");
        let no_capacity = Cli::try_parse_from(["flashsale-bench", "--scenario", overload]).unwrap();
        let err = no_capacity.run.scenario().unwrap_err().to_string();
        assert!(err.contains("--capacity-per-s"), "{err}");
        let cli = Cli::try_parse_from([
            "flashsale-bench",
            "--scenario",
            overload,
            "--capacity-per-s",
            "5000",
        ])
        .unwrap();
        assert_eq!(cli.run.scenario().unwrap().write_rate_per_s, 10_000.0);
        let cli = Cli::try_parse_from([
            "flashsale-bench",
            "--scenario",
            overload,
            "--capacity-per-s",
            "5000",
            "--rate-multiplier",
            "1.5",
        ])
        .unwrap();
        assert_eq!(cli.run.scenario().unwrap().write_rate_per_s, 7_500.0);
    }

    #[test]
    fn the_soak_runs_short_with_duration_and_scale() {
        let soak = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/soak.toml");
        let cli = Cli::try_parse_from([
            "flashsale-bench",
            "--scenario",
            soak,
            "--duration",
            "5m",
            "--scale",
            "0.25",
            "--watch-pid",
            "engine=1234",
            "--watch-pid",
            "gateway=5678",
        ])
        .unwrap();
        let s = cli.run.scenario().unwrap();
        assert_eq!(s.duration_secs, 300.0);
        assert_eq!(s.write_rate_per_s, 750.0);
        assert_eq!(s.read_rate(), 2250.0);
        assert_eq!(s.sample_secs, 60.0, "from the file");
        let names: Vec<&str> = cli.run.watch_pid.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["engine", "gateway"]);
        assert_eq!(cli.run.run_options().watch[1].pid, 5678);

        assert_eq!(parse_duration_secs("90s"), Ok(90.0));
        assert_eq!(parse_duration_secs("1.5m"), Ok(90.0));
        assert_eq!(parse_duration_secs("1h"), Ok(3600.0));
        assert_eq!(parse_duration_secs("42"), Ok(42.0));
        assert!(parse_duration_secs("5 weeks").is_err());
        assert!(parse_duration_secs("-5m").is_err());
        // Both duration flags at once are refused; so is a bad scale, and a watched pid
        // without windows.
        assert!(Cli::try_parse_from([
            "flashsale-bench",
            "--duration",
            "5m",
            "--duration-secs",
            "3"
        ])
        .is_err());
        let bad = Cli::try_parse_from(["flashsale-bench", "--scale", "0"]).unwrap();
        assert!(bad
            .run
            .scenario()
            .unwrap_err()
            .to_string()
            .contains("--scale"));
        let unwindowed = Cli::try_parse_from(["flashsale-bench", "--watch-pid", "node=1"]).unwrap();
        let err = unwindowed.run.scenario().unwrap_err().to_string();
        assert!(err.contains("--sample-secs"), "{err}");
    }

    #[test]
    fn compare_is_a_subcommand() {
        let cli =
            Cli::try_parse_from(["flashsale-bench", "compare", "a=x.json", "b=y.json"]).unwrap();
        match cli.command {
            Some(Command::Compare(c)) => assert_eq!(c.inputs.len(), 2),
            _ => panic!("expected compare"),
        }
    }
}
