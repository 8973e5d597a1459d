//! `profile`: what each request costs each process, measured on deployments this
//! command starts on this machine, for `plan` (src/plan.rs).
//!
//! Per mode, in turn:
//! - **embedded**: `flashsale serve --embedded` (one process, role `node`);
//! - **kafka**: `flashsale engine` ×2, `flashsale gateway` ×2 (ids 0 and 1) and
//!   `flashsale projector` as separate processes on the running broker and Postgres
//!   (fresh topics under a new prefix, a new database, dropped at the end). Requests go
//!   to gateway 0 only: gateway 1's CPU per hold is what following the events costs a
//!   gateway that did not take the hold; the engine that owns the one SKU's partition
//!   is the one that spent more, the other one's CPU per hold is its standby cost. The
//!   broker (`pgrep -f kafka.Kafka`) and Postgres (`pgrep -x postgres`, every process,
//!   shared with anything else using it) are measured as roles `broker` and `postgres`.
//!
//! Each request type runs alone at a steady rate under saturation with the harness's
//! runner (hold; availability read; hold + checkout), and each process's utime + stime
//! (`/proc/<pid>/stat`) over the run, less its idle rate measured first, is divided by
//! the requests answered ([`cost_per_request`]; a mixed run has the other requests' cost
//! taken off first). Memory per live hold: each process's RSS growth over the hold run
//! (holds kept live: a TTL of an hour, the sale kept) per hold granted. Then the
//! single-partition ceiling: `--find-max` on one SKU, reservation p99 ≤ 50 ms.
//!
//! Bounded: every run has a fixed schedule, every start-up a deadline, every process is
//! stopped (TERM, then KILL after 10 s) when the command ends, however it ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::ApiClient;
use crate::error::BenchError;
use crate::find_max::{find_max, FindMaxOptions};
use crate::plan::{
    BuildInfo, MachineInfo, ModeProfile, Profile, ProfileRun, RoleCost, PROFILE_SCHEMA,
    ROLE_BROKER, ROLE_ENGINE, ROLE_GATEWAY, ROLE_NODE, ROLE_POSTGRES, ROLE_PROJECTOR,
};
use crate::runner::{run, wait_ready, ProgressMode, RunOptions, RunOutput};
use crate::scenario::Scenario;
use crate::soak::{read_proc, USER_HZ};

/// Examples in `profile --help`.
pub const EXAMPLES: &str = "\
Examples:
  # Both modes (Kafka mode on the services of .services.env), about 3-4 minutes
  set -a; . ./.services.env; set +a
  flashsale-bench profile --json-out profile.json

  # Embedded only, quicker
  flashsale-bench profile --modes embedded --json-out profile.json

Run it on an idle machine (`uptime`): the harness shares the cores with what it
measures, and a busy machine inflates every cost. The JSON records the machine (cores,
CPU model, kernel, load) and the build (git commit, version, cargo profile).";

/// Longest wait for a deployment to answer /ready.
const READY_WAIT: Duration = Duration::from_secs(120);
/// Idle measurement before the runs, per deployment.
const IDLE_SECS: f64 = 3.0;

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
    /// Holds/s of the hold run (keep it well under the deployment's capacity).
    #[arg(long, default_value_t = 600.0)]
    pub hold_rate: f64,
    /// Availability reads/s of the read run.
    #[arg(long, default_value_t = 3000.0)]
    pub read_rate: f64,
    /// Holds/s of the checkout run (each hold checked out).
    #[arg(long, default_value_t = 300.0)]
    pub checkout_rate: f64,
    /// Seconds of each run.
    #[arg(long, default_value_t = 8.0)]
    pub run_secs: f64,
    /// Skip the single-partition ceiling search (about 40 s per mode).
    #[arg(long)]
    pub no_ceiling: bool,
    /// First rate of the ceiling search, holds/s.
    #[arg(long, default_value_t = 1000.0)]
    pub ceiling_start: f64,
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

/// A started process, stopped when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("profile: {} did not stop in 10 s: killed", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A measured process: a role name and the pids whose CPU counts for it.
#[derive(Debug, Clone)]
struct Watched {
    name: String,
    pids: Vec<u32>,
}

/// CPU seconds and RSS bytes of each watched process now.
fn sample(w: &[Watched]) -> Vec<(f64, u64)> {
    w.iter()
        .map(|x| {
            x.pids
                .iter()
                .filter_map(|p| read_proc(*p))
                .fold((0.0, 0), |a, s| {
                    (a.0 + s.cpu_ticks as f64 / USER_HZ, a.1 + s.rss_bytes)
                })
        })
        .collect()
}

fn pgrep(args: &[&str]) -> Vec<u32> {
    Command::new("pgrep")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pid listening on loopback TCP `port`, from `ss -Hltnp`.
fn listener_pid(port: &str) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("pid=")? + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn spawn(bin: &Path, name: &str, args: &[String], logs: &Path) -> Result<Proc, BenchError> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| BenchError::Setup(format!("{}: {e}", bin.display())))?;
    Ok(Proc {
        name: name.into(),
        child,
    })
}

fn run_tool(bin: &Path, args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| BenchError::Setup(format!("{}: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "{} {}: {}",
            bin.display(),
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        )));
    }
    Ok(())
}

/// The machine: cores, CPU model, kernel, load.
pub fn machine() -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    MachineInfo {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        cpu_model: model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        load_avg_1m: load_avg(),
    }
}

fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
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

fn answered(out: &RunOutput, op: &str) -> u64 {
    let r = out.report.op(op);
    r.sent.saturating_sub(r.errors)
}

/// Measures one deployment whose HTTP entry is `client`; `w` are its processes (the
/// driven gateway first in Kafka mode). Returns the figures per watched process name.
async fn profile_deployment(
    args: &ProfileArgs,
    mode: &str,
    client: &ApiClient,
    w: &[Watched],
) -> Result<
    (
        BTreeMap<String, RoleCost>,
        Vec<ProfileRun>,
        Option<(f64, bool)>,
    ),
    BenchError,
> {
    wait_ready(client, READY_WAIT).await?;
    // Idle: what each process spends doing nothing (consumers polling, timers).
    let before = sample(w);
    tokio::time::sleep(Duration::from_secs_f64(IDLE_SECS)).await;
    let after = sample(w);
    let idle: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a.0 - b.0) / IDLE_SECS)
        .collect();
    let secs = args.run_secs.clamp(2.0, 60.0);
    let mut runs = Vec::new();
    let mut costs: Vec<RoleCost> = vec![RoleCost::default(); w.len()];
    let record = |what: &str, m: &Measured, op: &str, runs: &mut Vec<ProfileRun>| {
        let r = m.out.report.op(op);
        eprintln!(
            "profile: {mode} {what}: {} answered in {:.1} s, p99 {:.1} ms",
            answered(&m.out, op),
            m.wall,
            r.latency_ms.p99
        );
        runs.push(ProfileRun {
            what: what.into(),
            answered: answered(&m.out, op),
            secs: m.wall,
            p99_ms: r.latency_ms.p99,
            cpu_secs: w
                .iter()
                .zip(&m.cpu)
                .zip(&idle)
                .map(|((x, c), i)| (x.name.clone(), c - i * m.wall))
                .collect(),
        });
    };

    // Holds alone, kept live.
    let s = Scenario {
        write_rate_per_s: args.hold_rate,
        ..base_scenario(secs)
    };
    let o = RunOptions {
        keep_sales: true,
        ..options(&format!("{mode} holds"), "PH")
    };
    let m = measured(client, w, &s, &o).await?;
    record("hold", &m, "reserve", &mut runs);
    let holds = answered(&m.out, "reserve");
    let granted = m.out.report.op("reserve").ok;
    for (i, c) in costs.iter_mut().enumerate() {
        c.cpu_us_per_hold = cost_per_request(m.cpu[i], idle[i], m.wall, 0.0, holds).unwrap_or(0.0);
        c.rss_bytes_per_live_hold =
            (granted > 0).then(|| (m.rss_growth[i].max(0) as f64) / granted as f64);
    }

    // Availability reads alone.
    let s = Scenario {
        write_rate_per_s: 0.0,
        read_rate_per_s: Some(args.read_rate),
        ..base_scenario(secs)
    };
    let m = measured(client, w, &s, &options(&format!("{mode} reads"), "PR")).await?;
    record("read", &m, "availability", &mut runs);
    let reads = answered(&m.out, "availability");
    for (i, c) in costs.iter_mut().enumerate() {
        c.cpu_us_per_read = cost_per_request(m.cpu[i], idle[i], m.wall, 0.0, reads).unwrap_or(0.0);
    }

    // Holds, each checked out: the holds' cost taken off.
    let s = Scenario {
        write_rate_per_s: args.checkout_rate,
        checkout_share: 1.0,
        checkout_delay_ms: 50,
        ..base_scenario(secs)
    };
    let m = measured(client, w, &s, &options(&format!("{mode} checkouts"), "PC")).await?;
    record("checkout", &m, "checkout", &mut runs);
    let holds = answered(&m.out, "reserve");
    let checkouts = answered(&m.out, "checkout");
    for (i, c) in costs.iter_mut().enumerate() {
        let others = holds as f64 * c.cpu_us_per_hold;
        c.cpu_us_per_checkout =
            cost_per_request(m.cpu[i], idle[i], m.wall, others, checkouts).unwrap_or(0.0);
    }

    // The single-partition ceiling: one SKU, reservation p99 ≤ 50 ms.
    let ceiling = if args.no_ceiling {
        None
    } else {
        let s = base_scenario(3.0);
        let o = FindMaxOptions {
            start_rate_per_s: args.ceiling_start.max(10.0),
            factor: 1.5,
            step_secs: 3.0,
            max_steps: 7,
            refine_steps: 1,
            confirm_failures: 1,
            slo_p99_ms: 50.0,
            max_failure_share: 0.001,
        };
        let t = Instant::now();
        let opts = options(&format!("{mode} ceiling"), "PX");
        let mut out = find_max(client, &s, &opts, &o).await?;
        if out
            .report
            .find_max
            .as_ref()
            .is_none_or(|f| f.max_rate_held_per_s.is_none())
        {
            // Even the first rate failed: once more from a fifth of it.
            let lower = FindMaxOptions {
                start_rate_per_s: (o.start_rate_per_s / 5.0).max(10.0),
                factor: 2.0,
                max_steps: 4,
                ..o.clone()
            };
            out = find_max(client, &s, &opts, &lower).await?;
        }
        let fm = out.report.find_max.clone();
        let held = fm.as_ref().and_then(|f| f.max_rate_held_per_s);
        eprintln!(
            "profile: {mode} single-partition ceiling: {} in {:.0} s",
            held.map_or("no rate held".into(), |h| format!("{h:.0} holds/s")),
            t.elapsed().as_secs_f64()
        );
        // Every step held: the ceiling is above the last one.
        held.map(|h| (h, fm.as_ref().is_some_and(|f| f.step_limit_reached)))
    };
    let named = w
        .iter()
        .map(|x| x.name.clone())
        .zip(costs)
        .collect::<BTreeMap<_, _>>();
    Ok((named, runs, ceiling))
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

async fn profile_embedded(
    args: &ProfileArgs,
    bin: &Path,
    logs: &Path,
) -> Result<ModeProfile, BenchError> {
    let data = logs.join("embedded-data");
    let url = format!("http://127.0.0.1:{}", args.port);
    let token = "profile-admin-token";
    let node = spawn(
        bin,
        "embedded-node",
        &[
            "serve".into(),
            "--embedded".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--partitions".into(),
            "8".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.port),
            "--admin-token".into(),
            token.into(),
            "--log".into(),
            "warn".into(),
        ],
        logs,
    )?;
    let w = vec![Watched {
        name: ROLE_NODE.into(),
        pids: vec![node.child.id()],
    }];
    let client = ApiClient::new(&url, token, 512, Duration::from_secs(5))?;
    let (roles, runs, ceiling) = profile_deployment(args, "embedded", &client, &w).await?;
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    Ok(ModeProfile {
        roles,
        single_partition_ceiling_holds_per_s: ceiling.map(|c| c.0),
        ceiling_is_lower_bound: ceiling.is_some_and(|c| c.1),
        runs,
    })
}

/// Drops the database when the profile ends, however it ends.
struct Database {
    admin_url: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {}", self.name),
            ])
            .output();
    }
}

async fn profile_kafka(
    args: &ProfileArgs,
    bin: &Path,
    logs: &Path,
    notes: &mut Vec<String>,
) -> Result<ModeProfile, BenchError> {
    let pg = args.postgres.clone().ok_or_else(|| {
        BenchError::Setup(
            "kafka mode needs --postgres or FLASHSALE_POSTGRES (set -a; . ./.services.env)".into(),
        )
    })?;
    crate::client::check_loopback(&format!("http://{}", args.kafka))
        .map_err(|_| BenchError::Target(format!("--kafka {} is not loopback", args.kafka)))?;
    let tag = format!(
        "fsprof{}_{}",
        std::process::id(),
        chrono::Utc::now().format("%H%M%S")
    );
    let base = pg
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .ok_or_else(|| BenchError::Setup(format!("{pg}: not a postgres://…/db URL")))?;
    let out = Command::new("psql")
        .args([
            &pg,
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {tag}"),
        ])
        .output()
        .map_err(|e| BenchError::Setup(format!("psql: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "CREATE DATABASE {tag}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let _db = Database {
        admin_url: pg.clone(),
        name: tag.clone(),
    };
    let db = format!("{base}/{tag}");
    let prefix = format!("{tag}.");
    run_tool(bin, &["migrate", "--postgres", &db, "--log", "warn"])?;
    run_tool(
        bin,
        &[
            "topics",
            "create",
            "--kafka",
            &args.kafka,
            "--topic-prefix",
            &prefix,
            "--partitions",
            "8",
            "--replies-partitions",
            "2",
        ],
    )?;
    let token = "profile-admin-token";
    let common = |cmd: &str| -> Vec<String> {
        vec![
            cmd.into(),
            "--kafka".into(),
            args.kafka.clone(),
            "--postgres".into(),
            db.clone(),
            "--topic-prefix".into(),
            prefix.clone(),
            "--log".into(),
            "warn".into(),
        ]
    };
    let mut procs = Vec::new();
    for i in 0..2 {
        let mut a = common("engine");
        a.extend([
            "--engine-group".into(),
            tag.clone(),
            "--data-dir".into(),
            logs.join(format!("engine{i}")).display().to_string(),
        ]);
        procs.push(spawn(bin, &format!("kafka-engine{i}"), &a, logs)?);
    }
    for i in 0..2u16 {
        let mut a = common("gateway");
        a.extend([
            "--gateway-id".into(),
            i.to_string(),
            "--data-dir".into(),
            logs.join(format!("gateway{i}")).display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.port + i),
            "--admin-token".into(),
            token.into(),
        ]);
        procs.push(spawn(bin, &format!("kafka-gateway{i}"), &a, logs)?);
    }
    procs.push(spawn(bin, "kafka-projector", &common("projector"), logs)?);
    let client = ApiClient::new(
        &format!("http://127.0.0.1:{}", args.port),
        token,
        512,
        Duration::from_secs(5),
    )?;
    let follower = ApiClient::new(
        &format!("http://127.0.0.1:{}", args.port + 1),
        token,
        4,
        Duration::from_secs(5),
    )?;
    wait_ready(&follower, READY_WAIT).await?;
    let pid = |i: usize| procs[i].child.id();
    let mut w = vec![
        Watched {
            name: "gateway0".into(),
            pids: vec![pid(2)],
        },
        Watched {
            name: "gateway1".into(),
            pids: vec![pid(3)],
        },
        Watched {
            name: "engine0".into(),
            pids: vec![pid(0)],
        },
        Watched {
            name: "engine1".into(),
            pids: vec![pid(1)],
        },
        Watched {
            name: ROLE_PROJECTOR.into(),
            pids: vec![pid(4)],
        },
    ];
    // The broker this deployment uses: the one listening on --kafka's port (several
    // may run on the machine); else every `kafka.Kafka` process.
    let port = args.kafka.rsplit(':').next().unwrap_or("");
    let mut broker = listener_pid(port).into_iter().collect::<Vec<_>>();
    if broker.is_empty() {
        broker = pgrep(&["-f", "kafka\\.Kafka"]);
    }
    if broker.is_empty() {
        notes.push("kafka: no broker process found on this machine (pgrep -f kafka.Kafka): its cost is not measured".into());
    } else {
        w.push(Watched {
            name: ROLE_BROKER.into(),
            pids: broker,
        });
    }
    let pg_pids = pgrep(&["-x", "postgres"]);
    if pg_pids.is_empty() {
        notes.push("kafka: no postgres process on this machine: its cost is not measured".into());
    } else {
        w.push(Watched {
            name: ROLE_POSTGRES.into(),
            pids: pg_pids,
        });
    }
    let (by_proc, runs, ceiling) = profile_deployment(args, "kafka", &client, &w).await?;
    drop(procs);
    let _ = std::fs::remove_dir_all(logs.join("engine0"));
    let _ = std::fs::remove_dir_all(logs.join("engine1"));
    let _ = std::fs::remove_dir_all(logs.join("gateway0"));
    let _ = std::fs::remove_dir_all(logs.join("gateway1"));
    Ok(ModeProfile {
        roles: kafka_roles(by_proc),
        single_partition_ceiling_holds_per_s: ceiling.map(|c| c.0),
        ceiling_is_lower_bound: ceiling.is_some_and(|c| c.1),
        runs,
    })
}

/// Folds the per-process figures of the Kafka deployment into roles: `gateway` is the
/// driven gateway 0 with gateway 1's hold cost as its follower cost; `engine` is the
/// engine that spent more per hold (it owned the SKU's partition), the other its
/// follower (standby).
pub fn kafka_roles(mut p: BTreeMap<String, RoleCost>) -> BTreeMap<String, RoleCost> {
    let mut roles = BTreeMap::new();
    if let (Some(mut g0), Some(g1)) = (p.remove("gateway0"), p.remove("gateway1")) {
        g0.follower_cpu_us_per_hold = Some(g1.cpu_us_per_hold);
        roles.insert(ROLE_GATEWAY.to_string(), g0);
    }
    if let (Some(e0), Some(e1)) = (p.remove("engine0"), p.remove("engine1")) {
        let (mut owner, standby) = if e0.cpu_us_per_hold >= e1.cpu_us_per_hold {
            (e0, e1)
        } else {
            (e1, e0)
        };
        owner.follower_cpu_us_per_hold = Some(standby.cpu_us_per_hold);
        roles.insert(ROLE_ENGINE.to_string(), owner);
    }
    roles.extend(p);
    roles
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
        if !(v > 0.0 && v <= 100_000.0) {
            return Err(BenchError::Scenario(format!(
                "{name} must be within (0, 100000], got {v}"
            )));
        }
    }
    let bin = flashsale_bin(args)?;
    let logs = match &args.out {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("flashsale-profile-{}", std::process::id())),
    };
    std::fs::create_dir_all(&logs)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
    eprintln!(
        "profile: logs in {}; load {:.2} on {} cores",
        logs.display(),
        profile.machine.load_avg_1m,
        profile.machine.cores
    );
    for m in &args.modes {
        if m == "embedded" {
            profile.embedded = Some(rt.block_on(profile_embedded(args, &bin, &logs))?);
        } else {
            let mut notes = Vec::new();
            profile.kafka = Some(rt.block_on(profile_kafka(args, &bin, &logs, &mut notes))?);
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

/// The profile as a table.
pub fn render(p: &Profile) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "profile of {} ({}, {} cores, kernel {}), flashsale {} {} ({})",
        p.taken_at,
        p.machine.cpu_model,
        p.machine.cores,
        p.machine.kernel,
        p.build.crate_version,
        p.build.git_commit,
        p.build.cargo_profile
    );
    for (mode, m) in [("embedded", &p.embedded), ("kafka", &p.kafka)] {
        let Some(m) = m else { continue };
        let _ = writeln!(o, "\n{mode}: CPU µs per request, memory per live hold");
        let _ = writeln!(
            o,
            "  {:<10} {:>8} {:>8} {:>9} {:>16} {:>12}",
            "role", "hold", "read", "checkout", "follower hold", "B/live hold"
        );
        for (name, c) in &m.roles {
            let _ = writeln!(
                o,
                "  {:<10} {:>8.1} {:>8.1} {:>9.1} {:>16} {:>12}",
                name,
                c.cpu_us_per_hold,
                c.cpu_us_per_read,
                c.cpu_us_per_checkout,
                c.follower_cpu_us_per_hold
                    .map_or("-".into(), |v| format!("{v:.1}")),
                c.rss_bytes_per_live_hold
                    .map_or("-".into(), |v| format!("{v:.0}"))
            );
        }
        let _ = writeln!(
            o,
            "  single-partition ceiling: {}",
            m.single_partition_ceiling_holds_per_s
                .map_or("not measured".into(), |c| format!(
                    "{c:.0} holds/s{}",
                    if m.ceiling_is_lower_bound {
                        " or more"
                    } else {
                        ""
                    }
                ))
        );
    }
    for n in &p.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
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

    #[test]
    fn kafka_processes_fold_into_roles() {
        let c = |hold: f64| RoleCost {
            cpu_us_per_hold: hold,
            ..RoleCost::default()
        };
        let p: BTreeMap<String, RoleCost> = [
            ("gateway0".to_string(), c(90.0)),
            ("gateway1".to_string(), c(15.0)),
            ("engine0".to_string(), c(4.0)),
            ("engine1".to_string(), c(40.0)),
            ("projector".to_string(), c(10.0)),
        ]
        .into();
        let r = kafka_roles(p);
        assert_eq!(
            r.keys().collect::<Vec<_>>(),
            ["engine", "gateway", "projector"]
        );
        assert_eq!(r["gateway"].cpu_us_per_hold, 90.0);
        assert_eq!(r["gateway"].follower_cpu_us_per_hold, Some(15.0));
        assert_eq!(r["engine"].cpu_us_per_hold, 40.0, "the owner spent more");
        assert_eq!(r["engine"].follower_cpu_us_per_hold, Some(4.0));
    }
}
