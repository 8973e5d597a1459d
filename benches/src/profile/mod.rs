//! `profile`: what each request costs each process, measured on deployments this
//! command starts on this machine, for `plan` (src/plan.rs).
//!
//! Per mode, in turn:
//! - **embedded**: `flashsale serve --embedded` (one process, role `node`);
//! - **kafka**: `flashsale engine` ×2, `flashsale gateway` ×2 (ids 0 and 1) and
//!   `flashsale projector` as separate processes on the running broker and Postgres
//!   (fresh topics under a new prefix, a new database; both deleted at the end; the
//!   engines with a 6 s group session, see deploy.rs). Requests go to gateway 0 only:
//!   gateway 1's CPU per hold is what following the events costs a gateway that did not
//!   take the hold; the engine that owns the one SKU's partition is the one that spent
//!   more, the other one's CPU per hold is its standby cost. The
//!   broker (`pgrep -f kafka.Kafka`) and Postgres (`pgrep -x postgres`, every process,
//!   shared with anything else using it) are measured as roles `broker` and `postgres`.
//!
//! **The cost runs.** The deployment's own processes start pinned to CPU 0 (`taskset -c
//! 0`: one core, as on a one-core machine; the runtime sizes its threads to it) and the
//! harness pins itself to CPU 1, so neither takes the other's CPU; the broker and
//! Postgres are shared services and stay unpinned (`--no-pin`: nothing pinned). Settle
//! probes first (`settle`: the engines' consumer group rebalances as they join), then
//! each process's idle rate. Then each request type runs alone (hold; availability
//! read; hold + checkout) at a steady open-loop rate with the harness's
//! runner, and each process's utime + stime (`/proc/<pid>/stat`) over the run, less its
//! idle rate, is divided by the requests answered ([`cost_per_request`]; the checkout
//! run has its holds' cost taken off first).
//!
//! **At which rate.** The CPU a request costs depends on the load: a request that comes
//! alone pays its own wake-ups, polls, flushes and syscalls, which under load a batch
//! shares (an embedded hold cost 310 µs at 600/s, 45 µs at saturation). Taking off the
//! idle CPU does not remove that, and a plan sizes machines that run busy, so the costs
//! are measured where the deployment is busy: the runs of each request type walk
//! ([`Walk`]) from `--hold-rate` (`--read-rate`, `--checkout-rate`) towards the rate at
//! which the deployment's own processes keep `--busy` (75 %) of their core busy (idle
//! included; [`busy_share`]), extrapolating from the runs so far, backing off from a run
//! that fell behind (fewer than 95 % answered or p99 over 500 ms, [`clean_run`]: the
//! deployment or the one-core harness could not keep up). At most `--max-runs` runs of
//! `--run-secs`; the clean run closest to the goal gives the figures, and every run is in
//! the JSON. Memory per live hold: each process's RSS growth over that hold run per hold
//! granted (holds kept live: a TTL of an hour, the sale kept).
//!
//! **The single-partition ceiling, and the hold cost at it.** A fresh deployment,
//! pinned like the cost runs (Kafka mode: one gateway, one engine and the projector:
//! one engine actor with only what a hold needs around it), then `--find-max` on one
//! SKU, reservation p99 ≤ 50 ms, from 80 % of the highest hold rate the cost runs
//! answered cleanly (`--ceiling-start`), ×1.2 per step, 4 bisections (ceiling.rs). Then
//! one hold run at 90 % of the ceiling: its CPU per hold, per process, replaces the cost
//! runs' hold cost ([`hold_costs_at_ceiling`]). The cost of a Kafka-mode hold falls
//! steeply with the rate (batches fill), and the busy share is no guide to how far a
//! deployment is from its limit (a one-core 1+1 was ~45 % busy at 4,000 holds/s on a
//! loaded machine, 128 µs per hold against 372 at 1,000/s), so
//! the walk alone measured it far from where `plan --headroom 1` predicts.
//!
//! Bounded: every run has a fixed schedule, every start-up a deadline, every process is
//! stopped (TERM, then KILL after 10 s) when the command ends, however it ends.

mod ceiling;
mod deploy;
mod render;
mod roles;
mod walk;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::ApiClient;
use crate::error::BenchError;
use crate::plan::{BuildInfo, ModeProfile, Profile, ProfileRun, RoleCost, PROFILE_SCHEMA};
use crate::runner::{run, wait_ready, ProgressMode, RunOptions, RunOutput};
use crate::scenario::Scenario;
use ceiling::{ceiling_on, AtCeiling};
pub use ceiling::{ceiling_options, ceiling_start, CEILING_AT_SHARE};
pub use deploy::{cpu_list_len, machine};
use deploy::{load_avg, sample, set_affinity, Deployment, Pinning, Watched};
pub use render::render;
pub use roles::{hold_costs_at_ceiling, kafka_roles};
pub use walk::{
    busy_share, clean_run, Walk, BUSY_TOLERANCE, CLEAN_ANSWERED, CLEAN_P99_MS, MAX_LATER_STEP,
    MAX_RATE_STEP, MIN_EXPONENT,
};

/// Examples in `profile --help`.
pub const EXAMPLES: &str = "\
Examples:
  # Both modes (Kafka mode on the services of .services.env), about 4-5 minutes
  set -a; . ./.services.env; set +a
  flashsale-bench profile --json-out profile.json

  # Embedded only, quicker
  flashsale-bench profile --modes embedded --json-out profile.json

Run it on an idle machine (`uptime`) of 2 cores or more: the deployment is pinned to
CPU 0 and the harness to CPU 1 for the cost runs, and anything else running there
inflates every cost. The JSON records the machine (cores, CPU model, kernel, load) and
the build (git commit, version, cargo profile).";

/// Longest wait for a deployment to answer /ready.
const READY_WAIT: Duration = Duration::from_secs(120);
/// Idle measurement before the runs, per deployment.
const IDLE_SECS: f64 = 3.0;
/// Highest rate a cost run offers, requests/s.
pub const MAX_RATE: f64 = 100_000.0;
/// Most settle probes (2 s at [`SETTLE_RATE`]) before a deployment is measured anyway.
const SETTLE_TRIES: u32 = 8;
/// Holds/s of a settle probe.
const SETTLE_RATE: f64 = 200.0;
/// p99 a settle probe must meet, ms (the ceiling's SLO).
const SETTLE_P99_MS: f64 = 50.0;

/// Flags of `profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// Modes to profile, comma-separated: embedded, kafka.
    #[arg(long, value_delimiter = ',', default_value = "embedded,kafka")]
    pub modes: Vec<String>,
    /// The `flashsale` binary [default: next to this one].
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// Kafka bootstrap servers (loopback).
    #[arg(long, env = "FLASHSALE_KAFKA", default_value = "127.0.0.1:19092")]
    pub kafka: String,
    /// Postgres URL; the profile creates and drops its own database next to it.
    #[arg(long, env = "FLASHSALE_POSTGRES")]
    pub postgres: Option<String>,
    /// First of the loopback ports the deployments listen on (gateway 1: +1).
    #[arg(long, default_value_t = 18940)]
    pub port: u16,
    /// Holds/s of the first hold run (the next ones are scaled towards --busy).
    #[arg(long, default_value_t = 1000.0)]
    pub hold_rate: f64,
    /// Availability reads/s of the first read run.
    #[arg(long, default_value_t = 4000.0)]
    pub read_rate: f64,
    /// Holds/s of the first checkout run (each hold checked out).
    #[arg(long, default_value_t = 400.0)]
    pub checkout_rate: f64,
    /// Share of its core(s) the deployment should be busy in the cost runs (0.2-0.95):
    /// the load the costs are measured at.
    #[arg(long, default_value_t = 0.75)]
    pub busy: f64,
    /// Most cost runs per request type (1-6); the run closest to --busy gives the figures.
    #[arg(long, default_value_t = 3)]
    pub max_runs: u32,
    /// Seconds of each cost run.
    #[arg(long, default_value_t = 4.0)]
    pub run_secs: f64,
    /// Pin nothing (default: the deployment on CPU 0 and the harness on CPU 1 for the
    /// cost runs, when the machine has 2 cores or more and taskset is there).
    #[arg(long)]
    pub no_pin: bool,
    /// Skip the single-partition ceiling search and the hold run at it (about 40-70 s
    /// per mode; the hold costs are then the cost runs').
    #[arg(long)]
    pub no_ceiling: bool,
    /// First rate of the ceiling search, holds/s [default: 80 % of the highest hold rate
    /// the cost runs answered cleanly].
    #[arg(long)]
    pub ceiling_start: Option<f64>,
    /// Where the processes' logs go [default: a new temporary directory].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write the profile here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// CPU µs per request of one process over a run: its CPU seconds less its idle rate over
/// the run's wall time, less what the run's other requests cost it (`others_us`), per
/// request answered; `None` when nothing was answered. Never below 0 (a noisy idle
/// rate can exceed a cheap role's work).
pub fn cost_per_request(
    cpu_secs: f64,
    idle_cpu_per_s: f64,
    wall_secs: f64,
    others_us: f64,
    answered: u64,
) -> Option<f64> {
    (answered > 0).then(|| {
        let us = (cpu_secs - idle_cpu_per_s * wall_secs) * 1e6 - others_us;
        (us / answered as f64).max(0.0)
    })
}

fn options(label: &str, prefix: &str) -> RunOptions {
    RunOptions {
        label: label.into(),
        timeout: Duration::from_secs(5),
        max_in_flight: 512,
        progress: ProgressMode::Off,
        stock_sample: Duration::from_millis(500),
        sku_prefix: prefix.into(),
        read_ceiling: None,
        ready_wait: READY_WAIT,
        keep_sales: false,
        watch: Vec::new(),
    }
}

/// One SKU, a large stock and many users, so every hold is a real decrement.
fn base_scenario(secs: f64) -> Scenario {
    Scenario {
        products: 1,
        inventory_per_product: 10_000_000,
        per_user_limit: 1,
        users: 1_000_000,
        hot_sku_share: 1.0,
        reads_per_write: 0.0,
        duration_secs: secs,
        warmup_secs: 0.0,
        reservation_ttl_secs: 3600,
        ..Scenario::default()
    }
}

/// A request type of the cost runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Holds alone, kept live.
    Hold,
    /// Availability reads alone.
    Read,
    /// Holds, each checked out.
    Checkout,
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Hold => "hold",
            Kind::Read => "read",
            Kind::Checkout => "checkout",
        }
    }

    /// The runner's name of the measured operation.
    fn op(self) -> &'static str {
        match self {
            Kind::Hold => "reserve",
            Kind::Read => "availability",
            Kind::Checkout => "checkout",
        }
    }

    fn scenario(self, rate: f64, secs: f64) -> Scenario {
        match self {
            Kind::Hold => Scenario {
                write_rate_per_s: rate,
                ..base_scenario(secs)
            },
            Kind::Read => Scenario {
                write_rate_per_s: 0.0,
                read_rate_per_s: Some(rate),
                ..base_scenario(secs)
            },
            Kind::Checkout => Scenario {
                write_rate_per_s: rate,
                checkout_share: 1.0,
                checkout_delay_ms: 50,
                ..base_scenario(secs)
            },
        }
    }

    fn options(self, mode: &str) -> RunOptions {
        match self {
            Kind::Hold => RunOptions {
                keep_sales: true,
                ..options(&format!("{mode} holds"), "PH")
            },
            Kind::Read => options(&format!("{mode} reads"), "PR"),
            Kind::Checkout => options(&format!("{mode} checkouts"), "PC"),
        }
    }
}

/// What a measured run gives: per watched process, CPU seconds (idle taken off later)
/// and RSS growth; the run's report.
struct Measured {
    wall: f64,
    cpu: Vec<f64>,
    rss_growth: Vec<i64>,
    out: RunOutput,
}

async fn measured(
    client: &ApiClient,
    w: &[Watched],
    s: &Scenario,
    o: &RunOptions,
) -> Result<Measured, BenchError> {
    let before = sample(w);
    let t = Instant::now();
    let out = run(client, s, o).await?;
    let wall = t.elapsed().as_secs_f64();
    let after = sample(w);
    Ok(Measured {
        wall,
        cpu: before.iter().zip(&after).map(|(b, a)| a.0 - b.0).collect(),
        rss_growth: before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.1 as i64 - b.1 as i64)
            .collect(),
        out,
    })
}

/// Requests of `op` the deployment did the work of: granted or refused, not shed (a 503
/// costs a fraction of a hold) nor failed.
fn answered(out: &RunOutput, op: &str) -> u64 {
    let r = out.report.op(op);
    r.sent.saturating_sub(r.errors).saturating_sub(r.shed)
}

/// What the cost runs of one deployment give.
struct Costs {
    /// Per watched process name.
    by_proc: BTreeMap<String, RoleCost>,
    runs: Vec<ProfileRun>,
    /// The highest hold rate a cost run answered cleanly, holds/s: where the ceiling
    /// search starts from.
    hold_max: Option<f64>,
}

/// The cost runs of one kind: from `first` req/s, walked towards the busy goal; returns
/// the run closest to it. Every run is added to `runs`.
#[allow(clippy::too_many_arguments)] // one call site per kind
async fn walk(
    args: &ProfileArgs,
    mode: &str,
    dep: &Deployment,
    idle: &[f64],
    cores: f64,
    kind: Kind,
    first: f64,
    runs: &mut Vec<ProfileRun>,
) -> Result<(Measured, Option<f64>), BenchError> {
    let w = &dep.watched;
    let secs = args.run_secs.clamp(2.0, 60.0);
    let mut rate = first;
    let mut tried: Vec<Measured> = Vec::new();
    let mut walk = Walk::new(args.busy, MAX_RATE);
    let from = runs.len();
    let mut highest_clean: Option<f64> = None;
    for k in 0..args.max_runs.clamp(1, 6) {
        let m = measured(
            &dep.client,
            w,
            &kind.scenario(rate, secs),
            &kind.options(mode),
        )
        .await?;
        let own: Vec<(f64, f64)> = w
            .iter()
            .zip(&m.cpu)
            .zip(idle)
            .filter(|((x, _), _)| x.own)
            .map(|((_, c), i)| (*c, *i))
            .collect();
        let b = busy_share(&own, m.wall, secs, cores);
        let r = m.out.report.op(kind.op());
        let n = answered(&m.out, kind.op());
        // A checkout follows each granted hold: those are what it was offered.
        let offered = match kind {
            Kind::Checkout => m.out.report.op("reserve").ok as f64,
            _ => rate * secs,
        };
        let clean = clean_run(n, offered, r.latency_ms.p99);
        if clean {
            highest_clean = Some(highest_clean.map_or(rate, |h: f64| h.max(rate)));
        }
        eprintln!(
            "profile: {mode} {} at {rate:.0}/s: {n} answered, p99 {:.1} ms, deployment {:.0} % busy{}",
            kind.what(),
            r.latency_ms.p99,
            b * 100.0,
            if clean { "" } else { " (fell behind)" }
        );
        runs.push(ProfileRun {
            what: kind.what().into(),
            answered: n,
            secs: m.wall,
            p99_ms: r.latency_ms.p99,
            cpu_secs: w
                .iter()
                .zip(&m.cpu)
                .zip(idle)
                .map(|((x, c), i)| (x.name.clone(), c - i * m.wall))
                .collect(),
            rate_per_s: rate,
            busy_cores: b * cores,
            used: false,
        });
        tried.push(m);
        match walk.next(rate, b, clean) {
            Some(r) if k + 1 < args.max_runs.clamp(1, 6) => rate = r,
            _ => break,
        }
    }
    let i = walk.chosen();
    runs[from + i].used = true;
    Ok((tried.swap_remove(i), highest_clean))
}

/// Waits until the deployment answers holds in time: 2-second probes at a low rate
/// until one meets [`SETTLE_P99_MS`], at most [`SETTLE_TRIES`]. A Kafka deployment's
/// engines rebalance their consumer group as they join (partitions move, commands wait),
/// and a run then measures the rebalance, not the requests.
async fn settle(mode: &str, client: &ApiClient) -> Result<(), BenchError> {
    wait_ready(client, READY_WAIT).await?;
    for i in 1..=SETTLE_TRIES {
        let out = run(
            client,
            &Kind::Hold.scenario(SETTLE_RATE, 2.0),
            &options(&format!("{mode} settle"), "PS"),
        )
        .await?;
        let p99 = out.report.op("reserve").latency_ms.p99;
        if p99 <= SETTLE_P99_MS {
            return Ok(());
        }
        eprintln!("profile: {mode}: not settled yet ({SETTLE_RATE:.0} holds/s at p99 {p99:.0} ms, probe {i} of {SETTLE_TRIES})");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("profile: {mode}: never settled: measuring anyway");
    Ok(())
}

/// What each process spends doing nothing (consumers polling, timers), CPU s per s.
async fn idle_rates(w: &[Watched]) -> Vec<f64> {
    let before = sample(w);
    tokio::time::sleep(Duration::from_secs_f64(IDLE_SECS)).await;
    let after = sample(w);
    before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0) / IDLE_SECS)
        .collect()
}

/// The cost runs of one deployment (pinned to `cores` cores, or the machine's).
async fn cost_runs(
    args: &ProfileArgs,
    mode: &str,
    dep: &Deployment,
    cores: f64,
) -> Result<Costs, BenchError> {
    let w = &dep.watched;
    settle(mode, &dep.client).await?;
    let idle = idle_rates(w).await;
    let mut runs = Vec::new();
    let mut costs: Vec<RoleCost> = vec![RoleCost::default(); w.len()];
    let mut hold_max = None;
    // In this order: the checkout run takes its holds' cost off.
    for (kind, first) in [
        (Kind::Hold, args.hold_rate),
        (Kind::Read, args.read_rate),
        (Kind::Checkout, args.checkout_rate),
    ] {
        let (m, clean_max) = walk(args, mode, dep, &idle, cores, kind, first, &mut runs).await?;
        let n = answered(&m.out, kind.op());
        let holds = answered(&m.out, "reserve");
        let granted = m.out.report.op("reserve").ok;
        for (i, c) in costs.iter_mut().enumerate() {
            let us =
                |others: f64| cost_per_request(m.cpu[i], idle[i], m.wall, others, n).unwrap_or(0.0);
            match kind {
                Kind::Hold => {
                    c.cpu_us_per_hold = us(0.0);
                    c.rss_bytes_per_live_hold =
                        (granted > 0).then(|| (m.rss_growth[i].max(0) as f64) / granted as f64);
                }
                Kind::Read => c.cpu_us_per_read = us(0.0),
                Kind::Checkout => c.cpu_us_per_checkout = us(holds as f64 * c.cpu_us_per_hold),
            }
        }
        if kind == Kind::Hold {
            hold_max = clean_max;
        }
    }
    Ok(Costs {
        by_proc: w.iter().map(|x| x.name.clone()).zip(costs).collect(),
        runs,
        hold_max,
    })
}

fn flashsale_bin(args: &ProfileArgs) -> Result<PathBuf, BenchError> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("flashsale"))
            .ok_or_else(|| BenchError::Setup("no directory of this binary".into()))?,
    };
    if !bin.exists() {
        return Err(BenchError::Setup(format!(
            "{} not found: build it (cargo build --release --bin flashsale) or give --bin",
            bin.display()
        )));
    }
    Ok(bin)
}

/// Where the profile runs: the pinning (if any) and the cores the deployment has.
struct Placement {
    pin: Option<Pinning>,
    /// Cores of the machine.
    cores: u32,
}

impl Placement {
    /// Cores the deployment may use in the cost runs.
    fn deployment_cores(&self) -> f64 {
        if self.pin.is_some() {
            1.0
        } else {
            f64::from(self.cores)
        }
    }

    /// The harness (this process) on its own CPU, when pinned.
    fn harness(&self) -> Result<(), BenchError> {
        match &self.pin {
            Some(p) => set_affinity(std::process::id(), &p.harness),
            None => Ok(()),
        }
    }

    /// The deployment's CPUs for `taskset -c`, when pinned.
    fn deployment(&self) -> Option<&str> {
        self.pin.as_ref().map(|p| p.deployment.as_str())
    }
}

fn mode_profile(
    mut roles: BTreeMap<String, RoleCost>,
    mut runs: Vec<ProfileRun>,
    mut at: AtCeiling,
) -> ModeProfile {
    // The hold costs of the faster of the two clean runs: the cost falls with the rate,
    // and a plan predicts the rate where the deployment runs at its limit.
    let walked = runs
        .iter()
        .filter(|r| r.what == "hold" && r.used)
        .map(|r| r.rate_per_s)
        .fold(0.0, f64::max);
    match &mut at.run {
        Some(r) if r.used && r.rate_per_s > walked => {
            // The walk's hold run keeps `used`: memory and follower costs come from it.
            hold_costs_at_ceiling(&mut roles, &at.hold_us);
        }
        Some(r) => r.used = false,
        None => {}
    }
    runs.extend(at.run);
    ModeProfile {
        roles,
        single_partition_ceiling_holds_per_s: at.ceiling.map(|c| c.0),
        ceiling_is_lower_bound: at.ceiling.is_some_and(|c| c.1),
        runs,
    }
}

async fn profile_embedded(
    args: &ProfileArgs,
    bin: &Path,
    logs: &Path,
    place: &Placement,
) -> Result<ModeProfile, BenchError> {
    let dep = deploy::start_embedded(args, bin, logs, place.deployment())?;
    let costs = cost_runs(args, "embedded", &dep, place.deployment_cores()).await?;
    drop(dep);
    let at = ceiling_on(args, "embedded", costs.hold_max, async {
        deploy::start_embedded(args, bin, logs, place.deployment())
    })
    .await?;
    Ok(mode_profile(costs.by_proc, costs.runs, at))
}

async fn profile_kafka(
    args: &ProfileArgs,
    bin: &Path,
    logs: &Path,
    place: &Placement,
    notes: &mut Vec<String>,
) -> Result<ModeProfile, BenchError> {
    let tag = format!(
        "fsprof{}_{}",
        std::process::id(),
        chrono::Utc::now().format("%H%M%S")
    );
    let dep = deploy::start_kafka(args, bin, logs, &tag, 2, place.deployment(), notes).await?;
    let costs = cost_runs(args, "kafka", &dep, place.deployment_cores()).await?;
    drop(dep);
    // The ceiling on one gateway, one engine and the projector: one engine actor with
    // only what a hold needs around it on the core.
    let ctag = format!("{tag}c");
    let mut cnotes = Vec::new();
    let at = ceiling_on(
        args,
        "kafka",
        costs.hold_max,
        deploy::start_kafka(args, bin, logs, &ctag, 1, place.deployment(), &mut cnotes),
    )
    .await?;
    Ok(mode_profile(kafka_roles(costs.by_proc), costs.runs, at))
}

/// `profile`: measures, prints the figures, writes the JSON; returns the exit code.
pub fn profile_command(args: &ProfileArgs) -> Result<u8, BenchError> {
    for m in &args.modes {
        if m != "embedded" && m != "kafka" {
            return Err(BenchError::Scenario(format!(
                "--modes: unknown mode {m:?} (embedded, kafka)"
            )));
        }
    }
    for (name, v) in [
        ("--hold-rate", args.hold_rate),
        ("--read-rate", args.read_rate),
        ("--checkout-rate", args.checkout_rate),
    ] {
        if !(v > 0.0 && v <= MAX_RATE) {
            return Err(BenchError::Scenario(format!(
                "{name} must be within (0, {MAX_RATE}], got {v}"
            )));
        }
    }
    if !(0.2..=0.95).contains(&args.busy) {
        return Err(BenchError::Scenario(format!(
            "--busy is a share of the deployment's core, within 0.2-0.95, got {}",
            args.busy
        )));
    }
    if !(1..=6).contains(&args.max_runs) {
        return Err(BenchError::Scenario(format!(
            "--max-runs must be within 1-6, got {}",
            args.max_runs
        )));
    }
    let bin = flashsale_bin(args)?;
    let cores = machine().cores;
    let taskset = std::process::Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let place = Placement {
        pin: (!args.no_pin && cores >= 2 && taskset).then(|| Pinning {
            deployment: "0".into(),
            harness: "1".into(),
        }),
        cores,
    };
    // Before the runtime starts: its threads inherit this thread's CPUs.
    place.harness()?;
    let logs = match &args.out {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("flashsale-profile-{}", std::process::id())),
    };
    std::fs::create_dir_all(&logs)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if place.pin.is_some() { 1 } else { 2 })
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut profile = Profile {
        schema: PROFILE_SCHEMA.into(),
        taken_at: chrono::Utc::now().to_rfc3339(),
        machine: machine(),
        build: BuildInfo {
            git_commit: crate::cli::git_commit().unwrap_or_else(|| "unknown".into()),
            crate_version: env!("CARGO_PKG_VERSION").into(),
            cargo_profile: if cfg!(debug_assertions) {
                "debug".into()
            } else {
                "release".into()
            },
        },
        notes: vec![
            "shed (503) answers are not measured: provoking them needs a saturated node, \
             which is what the other runs avoid"
                .into(),
            "Postgres per snapshot is not measured; its per-order cost is in \
             postgres.cpu_us_per_checkout (every Postgres process on the machine counts)"
                .into(),
        ],
        ..Profile::default()
    };
    profile.notes.push(match &place.pin {
        Some(p) => format!(
            "cost runs: the deployment pinned to CPU {}, the harness to CPU {}, each request \
             type at the rate that keeps the deployment ~{:.0} % busy; the ceiling and the hold \
             cost at 90 % of it pinned the same way",
            p.deployment,
            p.harness,
            args.busy * 100.0
        ),
        None => format!(
            "cost runs NOT pinned (--no-pin, one core or no taskset): the harness shares the \
             deployment's cores; each request type at the rate that keeps the deployment \
             ~{:.0} % busy",
            args.busy * 100.0
        ),
    });
    eprintln!(
        "profile: logs in {}; load {:.2} on {} cores",
        logs.display(),
        profile.machine.load_avg_1m,
        profile.machine.cores
    );
    for m in &args.modes {
        if m == "embedded" {
            profile.embedded = Some(rt.block_on(profile_embedded(args, &bin, &logs, &place))?);
        } else {
            let mut notes = Vec::new();
            profile.kafka =
                Some(rt.block_on(profile_kafka(args, &bin, &logs, &place, &mut notes))?);
            profile.notes.extend(notes);
        }
    }
    let load_end = load_avg();
    profile.notes.push(format!(
        "took {:.0} s; load average {:.2} at the start, {load_end:.2} at the end",
        started.elapsed().as_secs_f64(),
        profile.machine.load_avg_1m
    ));
    print!("{}", render(&profile));
    if let Some(p) = &args.json_out {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            p,
            serde_json::to_string_pretty(&profile)
                .map_err(|e| BenchError::Report(e.to_string()))?,
        )?;
        eprintln!("wrote {}", p.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_per_request_takes_off_idle_and_other_requests() {
        // 1.0 CPU s over 10 s with 0.01 s/s idle = 0.9 s; less 300,000 µs of holds =
        // 600,000 µs over 6,000 checkouts = 100 µs.
        let c = cost_per_request(1.0, 0.01, 10.0, 300_000.0, 6_000).unwrap();
        assert!((c - 100.0).abs() < 1e-9, "{c}");
        assert_eq!(cost_per_request(1.0, 0.0, 1.0, 0.0, 0), None);
        assert_eq!(cost_per_request(0.01, 0.1, 1.0, 0.0, 10), Some(0.0));
    }
}
