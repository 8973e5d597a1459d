//! `plan`: the capacity planner, pure. From a measured [`Profile`] (CPU per request per
//! process role, memory per live hold, the single-partition ceiling; written by
//! `flashsale-bench profile`) and a target load, it sizes a deployment per mode, or with
//! a fixed number of machines it predicts the highest load they sustain.
//!
//! The model, in CPU microseconds per second (a machine's budget is `cores × headroom ×
//! 1,000,000`):
//! - **embedded**: one process does everything: `holds × hold + reads × read + checkouts
//!   × checkout`; it cannot be spread over machines.
//! - **kafka**: per role. Every gateway follows every event into its read model, so a
//!   hold costs the gateway that took it its full `hold` figure and every other gateway
//!   its `follower_hold` figure; every engine keeps standby copies of the partitions it
//!   does not own, so a hold costs its owner `hold` and each other engine
//!   `follower_hold`. Projector, broker and Postgres are paid once per request. The
//!   number of gateways (engines) is the smallest that fits the machine budget with the
//!   follower cost every extra copy adds; when one copy's follower cost alone exceeds a
//!   machine's budget, no count fits and the plan says so.
//! - **the hot SKU**: one SKU is one partition, one engine actor: `holds × hot share`
//!   must stay under the profile's single-partition ceiling (× headroom), whatever the
//!   machines. Partitions: enough that the other products' holds fit under the same
//!   ceiling, and at least one per engine.
//! - **machines**: processes packed first-fit-decreasing into machines of the budget
//!   (broker and Postgres too, unless `services_elsewhere`).
//!
//! Not modelled: network, disks, a broker's replication traffic (the profile is taken on
//! one broker), Postgres beyond one primary, harness CPU.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The `schema` of a profile this planner reads.
pub const PROFILE_SCHEMA: &str = "flashsale-capacity-profile/1";
/// Role names in a profile's modes.
pub const ROLE_NODE: &str = "node";
/// Kafka-mode roles.
pub const ROLE_GATEWAY: &str = "gateway";
/// The engine process.
pub const ROLE_ENGINE: &str = "engine";
/// The order projector.
pub const ROLE_PROJECTOR: &str = "projector";
/// The Kafka broker.
pub const ROLE_BROKER: &str = "broker";
/// PostgreSQL (all its processes).
pub const ROLE_POSTGRES: &str = "postgres";
/// Most processes of one role a plan proposes (a bound on the search, not advice).
pub const MAX_PROCESSES: u32 = 10_000;

/// The machine a profile was taken on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MachineInfo {
    /// Online cores.
    pub cores: u32,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// `uname -r` (/proc/sys/kernel/osrelease).
    pub kernel: String,
    /// 1-minute load average when the profile started (a busy machine inflates costs).
    pub load_avg_1m: f64,
}

/// The build a profile measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BuildInfo {
    /// `git rev-parse HEAD` of the checkout (with `-dirty` when it had changes).
    pub git_commit: String,
    /// The workspace crate version.
    pub crate_version: String,
    /// Cargo profile of the harness binary: `release` or `debug`.
    pub cargo_profile: String,
}

/// What one process role costs, per request it handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RoleCost {
    /// CPU µs per hold (reservation) it took.
    pub cpu_us_per_hold: f64,
    /// CPU µs per availability read.
    pub cpu_us_per_read: f64,
    /// CPU µs per checkout.
    pub cpu_us_per_checkout: f64,
    /// CPU µs per shed answer (503), when measured.
    #[serde(default)]
    pub cpu_us_per_shed: Option<f64>,
    /// CPU µs per hold of a copy of this role that did not take it (a gateway following
    /// events, an engine's standby), when the role has copies.
    #[serde(default)]
    pub follower_cpu_us_per_hold: Option<f64>,
    /// Resident memory per live hold, bytes, when measured.
    #[serde(default)]
    pub rss_bytes_per_live_hold: Option<f64>,
}

/// The measured figures of one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ModeProfile {
    /// Costs per role (`node`; or `gateway`, `engine`, `projector`, `broker`, `postgres`).
    pub roles: BTreeMap<String, RoleCost>,
    /// Holds/s one SKU (one partition, one engine actor) sustained at p99 ≤ the SLO.
    pub single_partition_ceiling_holds_per_s: Option<f64>,
    /// Whether that search stopped on its step limit with every step holding (the
    /// ceiling is then higher than the figure).
    #[serde(default)]
    pub ceiling_is_lower_bound: bool,
    /// The runs the figures come from.
    #[serde(default)]
    pub runs: Vec<ProfileRun>,
}

/// One measured run of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProfileRun {
    /// `hold`, `read`, `checkout`, `hold at ceiling` (the run at 90 % of the ceiling).
    pub what: String,
    /// Requests of that kind answered.
    pub answered: u64,
    /// Wall-clock seconds of the run, set-up included.
    pub secs: f64,
    /// p99 of that kind, ms.
    pub p99_ms: f64,
    /// CPU seconds per process over the run, idle subtracted.
    pub cpu_secs: BTreeMap<String, f64>,
    /// The rate offered, requests (holds for `checkout`)/s.
    #[serde(default)]
    pub rate_per_s: f64,
    /// How busy the deployment's own processes were over the load, in cores (idle
    /// included): what the next run's rate was scaled from.
    #[serde(default)]
    pub busy_cores: f64,
    /// Whether the profile's figures for this request type come from this run (the
    /// one closest to the busy goal).
    #[serde(default)]
    pub used: bool,
}

/// A `flashsale-bench profile` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Profile {
    /// [`PROFILE_SCHEMA`].
    pub schema: String,
    /// When it was taken (RFC 3339).
    pub taken_at: String,
    /// Where.
    pub machine: MachineInfo,
    /// What.
    pub build: BuildInfo,
    /// Embedded mode (`flashsale serve --embedded`).
    pub embedded: Option<ModeProfile>,
    /// Kafka mode (gateway, engine, projector as separate processes).
    pub kafka: Option<ModeProfile>,
    /// What the profile could not measure, and other remarks.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The profile is unreadable or from another build.
    #[error("profile: {0}")]
    Profile(String),
    /// The target or a flag is out of range.
    #[error("input: {0}")]
    Input(String),
}

/// The load to plan for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// Availability reads/s.
    pub reads_per_s: f64,
    /// Holds (reservation attempts)/s.
    pub holds_per_s: f64,
    /// Checkouts/s.
    pub checkouts_per_s: f64,
    /// Share (0–1) of holds on the one hot SKU.
    pub hot_sku_share: f64,
    /// Products in the sale.
    pub products: u32,
}

/// The machines and the rules of the plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sizing {
    /// Cores per machine.
    pub cores_per_machine: u32,
    /// Share (0–1] of a machine's CPU the plan may use.
    pub headroom: f64,
    /// Fewest engines (2: one can fail over to the other).
    pub min_engines: u32,
    /// Fewest brokers (3: replication factor 3).
    pub min_brokers: u32,
    /// Broker and Postgres run on machines the plan does not count.
    pub services_elsewhere: bool,
    /// Fixed gateway count (Kafka mode), instead of the smallest that fits.
    pub gateways: Option<u32>,
    /// Fixed engine count (Kafka mode), instead of the smallest that fits.
    pub engines: Option<u32>,
}

impl Default for Sizing {
    fn default() -> Self {
        Self {
            cores_per_machine: 16,
            headroom: 0.6,
            min_engines: 2,
            min_brokers: 3,
            services_elsewhere: false,
            gateways: None,
            engines: None,
        }
    }
}

/// CPU of one role in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolePlan {
    /// Processes of the role.
    pub processes: u32,
    /// Cores the role uses in total at the target.
    pub cores: f64,
    /// Cores per process.
    pub cores_per_process: f64,
}

/// The deployment for one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModePlan {
    /// `embedded` or `kafka`.
    pub mode: String,
    /// Whether the target fits at all.
    pub feasible: bool,
    /// HTTP processes (embedded: the one node).
    pub gateways: u32,
    /// Engine processes (embedded: the one node).
    pub engines: u32,
    /// Partitions of `commands` / `events` (embedded: `--partitions`).
    pub partitions: u32,
    /// Kafka brokers (embedded: 0).
    pub brokers: u32,
    /// Machines, processes packed by CPU.
    pub machines: u32,
    /// Per role.
    pub roles: BTreeMap<String, RolePlan>,
    /// The limit that binds first, in words.
    pub binding_limit: String,
    /// Holds/s the hot SKU gets, and the ceiling it is checked against (× headroom).
    pub hot_sku_holds_per_s: f64,
    /// The profile's single-partition ceiling, holds/s.
    pub single_partition_ceiling_holds_per_s: Option<f64>,
    /// Resident memory of the live holds, bytes (holds/s × TTL is not known here: per
    /// 100,000 live holds, summed over the roles that keep them).
    pub rss_bytes_per_100k_live_holds: Option<f64>,
    /// Other remarks.
    pub notes: Vec<String>,
}

/// What `--machines N` predicts for one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// `embedded` or `kafka`.
    pub mode: String,
    /// Highest holds/s (with `reads_per_hold` reads each) the machines sustain.
    pub predicted_max_holds_per_s: f64,
    /// Highest availability reads/s alone.
    pub predicted_max_reads_per_s: f64,
    /// What stops the holds there.
    pub binding_limit: String,
    /// The plan at the predicted holds/s.
    pub plan: Option<ModePlan>,
}

/// Checks a profile against the build that reads it. An unknown schema or another crate
/// version is refused; another commit or a debug build is returned as a note.
pub fn check_profile(
    p: &Profile,
    crate_version: &str,
    git_commit: Option<&str>,
) -> Result<Vec<String>, PlanError> {
    if p.schema != PROFILE_SCHEMA {
        return Err(PlanError::Profile(format!(
            "schema {:?}, this planner reads {PROFILE_SCHEMA:?}: take a new profile \
             (flashsale-bench profile --json-out profile.json)",
            p.schema
        )));
    }
    if p.build.crate_version != crate_version {
        return Err(PlanError::Profile(format!(
            "taken with flashsale {} but this is {crate_version}: costs change between \
             versions, take a new profile",
            p.build.crate_version
        )));
    }
    if p.embedded.is_none() && p.kafka.is_none() {
        return Err(PlanError::Profile("no mode measured".into()));
    }
    for (mode, m) in [("embedded", &p.embedded), ("kafka", &p.kafka)] {
        let Some(m) = m else { continue };
        for (role, c) in &m.roles {
            for (what, v) in [
                ("cpu_us_per_hold", Some(c.cpu_us_per_hold)),
                ("cpu_us_per_read", Some(c.cpu_us_per_read)),
                ("cpu_us_per_checkout", Some(c.cpu_us_per_checkout)),
                ("follower_cpu_us_per_hold", c.follower_cpu_us_per_hold),
            ] {
                if let Some(v) = v {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(PlanError::Profile(format!(
                            "{mode}.{role}.{what} is {v}: must be a number ≥ 0"
                        )));
                    }
                }
            }
        }
        if let Some(c) = m.single_partition_ceiling_holds_per_s {
            if !(c.is_finite() && c > 0.0) {
                return Err(PlanError::Profile(format!(
                    "{mode}.single_partition_ceiling_holds_per_s is {c}: must be > 0"
                )));
            }
        }
    }
    let mut notes = Vec::new();
    if let Some(c) = git_commit {
        if !c.is_empty() && c != p.build.git_commit {
            notes.push(format!(
                "the profile is from commit {}, this checkout is {c}: re-profile if the \
                 hot paths changed",
                p.build.git_commit
            ));
        }
    }
    if p.build.cargo_profile != "release" {
        notes.push(format!(
            "the profile measured a {} build: its costs are not a release build's",
            p.build.cargo_profile
        ));
    }
    if p.machine.load_avg_1m > f64::from(p.machine.cores.max(1)) * 0.5 {
        notes.push(format!(
            "the profile was taken at load {:.1} on {} cores: costs are inflated",
            p.machine.load_avg_1m, p.machine.cores
        ));
    }
    Ok(notes)
}

fn check_inputs(t: &Target, s: &Sizing) -> Result<(), PlanError> {
    for (name, v) in [
        ("--reads-per-s", t.reads_per_s),
        ("--holds-per-s", t.holds_per_s),
        ("--checkouts-per-s", t.checkouts_per_s),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(PlanError::Input(format!("{name} must be ≥ 0, got {v}")));
        }
    }
    if !(0.0..=1.0).contains(&t.hot_sku_share) {
        return Err(PlanError::Input(format!(
            "--hot-sku-share must be within 0–1, got {}",
            t.hot_sku_share
        )));
    }
    if t.products == 0 {
        return Err(PlanError::Input("--products must be ≥ 1".into()));
    }
    if t.products == 1 && t.hot_sku_share < 1.0 {
        return Err(PlanError::Input(
            "--products 1 means every hold is on the hot SKU: --hot-sku-share 1".into(),
        ));
    }
    if s.cores_per_machine == 0 {
        return Err(PlanError::Input("--cores-per-machine must be ≥ 1".into()));
    }
    if !(s.headroom > 0.0 && s.headroom <= 1.0) {
        return Err(PlanError::Input(format!(
            "--headroom is the share of CPU to use, within (0, 1] (0.6 = 60 %), got {}",
            s.headroom
        )));
    }
    for (name, v) in [("--gateways", s.gateways), ("--engines", s.engines)] {
        if v == Some(0) {
            return Err(PlanError::Input(format!("{name} must be ≥ 1")));
        }
    }
    Ok(())
}

fn role<'a>(m: &'a ModeProfile, name: &str, mode: &str) -> Result<&'a RoleCost, PlanError> {
    m.roles
        .get(name)
        .ok_or_else(|| PlanError::Profile(format!("{mode} has no figures for role {name:?}")))
}

/// µs of CPU per second a role spends on the load, paid once.
fn once(c: &RoleCost, t: &Target) -> f64 {
    t.holds_per_s * c.cpu_us_per_hold
        + t.reads_per_s * c.cpu_us_per_read
        + t.checkouts_per_s * c.cpu_us_per_checkout
}

/// The smallest n ≥ `min` with `n × budget ≥ base + (n − 1) × per_copy`, or `None` when
/// every extra copy costs a whole budget or more (no count fits).
fn copies_needed(base: f64, per_copy: f64, budget: f64, min: u32) -> Option<u32> {
    let fits = |n: u32| f64::from(n) * budget >= base + f64::from(n - 1) * per_copy - 1e-9;
    if fits(min.max(1)) {
        return Some(min.max(1));
    }
    if per_copy >= budget {
        return None;
    }
    // n (budget − per_copy) ≥ base − per_copy
    let n = ((base - per_copy) / (budget - per_copy)).ceil().max(1.0);
    (n <= f64::from(MAX_PROCESSES)).then(|| (n as u32).max(min.max(1)))
}

/// First-fit-decreasing: machines needed for `loads` (µs/s each) of `budget` each, or
/// `None` if one load is larger than a machine.
pub fn pack(loads: &[f64], budget: f64) -> Option<u32> {
    let mut sorted: Vec<f64> = loads.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let mut bins: Vec<f64> = Vec::new();
    for l in sorted {
        if l > budget + 1e-9 {
            return None;
        }
        match bins.iter_mut().find(|b| **b + l <= budget + 1e-9) {
            Some(b) => *b += l,
            None => bins.push(l),
        }
    }
    Some(bins.len().max(1) as u32)
}

fn cores(us_per_s: f64) -> f64 {
    us_per_s / 1e6
}

/// Partitions: the hot SKU's own, plus enough for the other products' holds under the
/// ceiling × headroom; at least one per engine; rounded up to a multiple of the engines.
fn partitions(t: &Target, ceiling: Option<f64>, headroom: f64, engines: u32) -> u32 {
    let cold = t.holds_per_s * (1.0 - t.hot_sku_share);
    let per_partition = ceiling.map(|c| c * headroom);
    let cold_parts = match per_partition {
        Some(c) if cold > 0.0 => (cold / c).ceil() as u32,
        _ => 0,
    }
    .min(t.products.saturating_sub(1).max(1));
    let hot = u32::from(t.hot_sku_share > 0.0 || cold_parts == 0);
    let n = (hot + cold_parts).max(engines).max(1);
    n.div_ceil(engines.max(1)) * engines.max(1)
}

/// The hot-SKU check: `Some(reason)` when the hot SKU's holds exceed the ceiling ×
/// headroom.
fn hot_limit(t: &Target, m: &ModeProfile, headroom: f64) -> (f64, Option<String>) {
    let hot = t.holds_per_s * t.hot_sku_share;
    let Some(c) = m.single_partition_ceiling_holds_per_s else {
        return (hot, None);
    };
    if hot <= 0.0 {
        return (hot, None);
    }
    let allowed = c * headroom;
    (
        hot,
        (hot > allowed + 1e-9).then(|| {
            format!(
                "one hot SKU is one partition: {} holds/s on it needs an engine actor that \
                 sustains that; measured {}/s{} (× headroom {:.0} % = {}/s)",
                num(hot),
                num(c),
                if m.ceiling_is_lower_bound {
                    " or more"
                } else {
                    ""
                },
                headroom * 100.0,
                num(allowed)
            )
        }),
    )
}

/// The note of a plan whose profile has no single-partition ceiling.
fn unchecked_hot(t: &Target, m: &ModeProfile) -> Option<String> {
    (m.single_partition_ceiling_holds_per_s.is_none() && t.holds_per_s * t.hot_sku_share > 0.0)
        .then(|| {
            "the profile has no single-partition ceiling (its search held no rate): the hot SKU's \
             holds/s are NOT checked; re-profile on an idle machine"
                .to_string()
        })
}

fn live_holds_rss(m: &ModeProfile, copies: &BTreeMap<&str, u32>) -> Option<f64> {
    let mut sum = None;
    // The holds live in flashsale's processes; a broker's or Postgres's RSS growth over
    // a run is caches and heap, not per-hold state.
    for (name, c) in m
        .roles
        .iter()
        .filter(|(n, _)| *n != ROLE_BROKER && *n != ROLE_POSTGRES)
    {
        if let Some(b) = c.rss_bytes_per_live_hold {
            let n = copies.get(name.as_str()).copied().unwrap_or(1);
            *sum.get_or_insert(0.0) += b * f64::from(n) * 100_000.0;
        }
    }
    sum
}

/// The embedded deployment for `t`.
pub fn plan_embedded(m: &ModeProfile, t: &Target, s: &Sizing) -> Result<ModePlan, PlanError> {
    check_inputs(t, s)?;
    let node = role(m, ROLE_NODE, "embedded")?;
    let budget = f64::from(s.cores_per_machine) * s.headroom * 1e6;
    let load = once(node, t);
    let (hot, hot_err) = hot_limit(t, m, s.headroom);
    let mut feasible = true;
    let mut binding = format!(
        "CPU of the one node: {:.2} of {:.2} usable cores ({} × {:.0} %)",
        cores(load),
        cores(budget),
        s.cores_per_machine,
        s.headroom * 100.0
    );
    if load > budget {
        feasible = false;
        binding = format!(
            "embedded mode is one process on one machine: the load needs {:.2} cores, a \
             machine gives {:.2} ({} × {:.0} %); use Kafka mode or bigger machines",
            cores(load),
            cores(budget),
            s.cores_per_machine,
            s.headroom * 100.0
        );
    } else if let Some(e) = hot_err {
        feasible = false;
        binding = e;
    }
    let mut roles = BTreeMap::new();
    roles.insert(
        ROLE_NODE.to_string(),
        RolePlan {
            processes: 1,
            cores: cores(load),
            cores_per_process: cores(load),
        },
    );
    let mut notes: Vec<String> = unchecked_hot(t, m).into_iter().collect();
    if t.products > 1 && t.hot_sku_share < 1.0 {
        notes.push("partitions: `flashsale serve --partitions`".into());
    }
    Ok(ModePlan {
        mode: "embedded".into(),
        feasible,
        gateways: 1,
        engines: 1,
        partitions: partitions(t, m.single_partition_ceiling_holds_per_s, s.headroom, 1),
        brokers: 0,
        machines: 1,
        roles,
        binding_limit: binding,
        hot_sku_holds_per_s: hot,
        single_partition_ceiling_holds_per_s: m.single_partition_ceiling_holds_per_s,
        rss_bytes_per_100k_live_holds: live_holds_rss(m, &BTreeMap::new()),
        notes,
    })
}

/// The Kafka-mode deployment for `t`.
pub fn plan_kafka(m: &ModeProfile, t: &Target, s: &Sizing) -> Result<ModePlan, PlanError> {
    check_inputs(t, s)?;
    let gw = role(m, ROLE_GATEWAY, "kafka")?;
    let en = role(m, ROLE_ENGINE, "kafka")?;
    let budget = f64::from(s.cores_per_machine) * s.headroom * 1e6;
    let mut blockers: Vec<String> = Vec::new();

    // Gateways: the requests once, plus every extra gateway's following of the events.
    let gw_follow = t.holds_per_s * gw.follower_cpu_us_per_hold.unwrap_or(0.0);
    let gw_base = once(gw, t);
    let gateways = match s.gateways {
        Some(n) => n,
        None => copies_needed(gw_base, gw_follow, budget, 1).unwrap_or_else(|| {
            blockers.push(format!(
                "every gateway follows every event: {} holds/s cost each gateway {:.2} \
                 cores, a machine gives {:.2}",
                num(t.holds_per_s),
                cores(gw_follow),
                cores(budget)
            ));
            1
        }),
    };
    let gw_total = gw_base + f64::from(gateways - 1) * gw_follow;

    let en_follow = t.holds_per_s * en.follower_cpu_us_per_hold.unwrap_or(0.0);
    let en_base = once(en, t);
    let engines = match s.engines {
        Some(n) => n,
        None => copies_needed(en_base, en_follow, budget, s.min_engines).unwrap_or_else(|| {
            blockers.push(format!(
                "every engine keeps standby copies of the others' partitions: {} holds/s \
                 cost each engine {:.2} cores, a machine gives {:.2}",
                num(t.holds_per_s),
                cores(en_follow),
                cores(budget)
            ));
            s.min_engines.max(1)
        }),
    };
    let en_total = en_base + f64::from(engines - 1) * en_follow;

    let mut roles = BTreeMap::new();
    let mut loads: Vec<f64> = Vec::new();
    let mut add = |name: &str, n: u32, total: f64, placed: bool, loads: &mut Vec<f64>| {
        let n = n.max(1);
        roles.insert(
            name.to_string(),
            RolePlan {
                processes: n,
                cores: cores(total),
                cores_per_process: cores(total / f64::from(n)),
            },
        );
        if placed {
            loads.extend(std::iter::repeat_n(total / f64::from(n), n as usize));
        }
    };
    add(ROLE_GATEWAY, gateways, gw_total, true, &mut loads);
    add(ROLE_ENGINE, engines, en_total, true, &mut loads);
    if let Some(p) = m.roles.get(ROLE_PROJECTOR) {
        let total = once(p, t);
        let n = (total / budget).ceil().max(1.0) as u32;
        add(ROLE_PROJECTOR, n, total, true, &mut loads);
    }
    let mut brokers = s.min_brokers.max(1);
    if let Some(b) = m.roles.get(ROLE_BROKER) {
        let total = once(b, t);
        brokers = brokers.max((total / budget).ceil() as u32);
        add(
            ROLE_BROKER,
            brokers,
            total,
            !s.services_elsewhere,
            &mut loads,
        );
    }
    if let Some(p) = m.roles.get(ROLE_POSTGRES) {
        let total = once(p, t);
        if total > budget {
            blockers.push(format!(
                "Postgres (one primary, not sharded by this plan) needs {:.2} cores, a \
                 machine gives {:.2}",
                cores(total),
                cores(budget)
            ));
        }
        add(ROLE_POSTGRES, 1, total, !s.services_elsewhere, &mut loads);
    }
    let (hot, hot_err) = hot_limit(t, m, s.headroom);
    if let Some(e) = hot_err {
        blockers.push(e);
    }
    let machines = match pack(&loads, budget) {
        Some(n) => n,
        None => {
            let biggest = loads.iter().copied().fold(0.0, f64::max);
            blockers.push(format!(
                "one process needs {:.2} cores, more than a machine's {:.2}",
                cores(biggest),
                cores(budget)
            ));
            loads.iter().map(|l| (l / budget).ceil() as u32).sum()
        }
    };
    let feasible = blockers.is_empty();
    let binding_limit = if feasible {
        // The role using the largest share of its machines is the one to watch.
        let (name, rp) = roles
            .iter()
            .filter(|(n, _)| !(s.services_elsewhere && (*n == ROLE_BROKER || *n == ROLE_POSTGRES)))
            .max_by(|a, b| a.1.cores_per_process.total_cmp(&b.1.cores_per_process))
            .expect("gateway and engine are always there");
        let hot_note = match m.single_partition_ceiling_holds_per_s {
            Some(c) if t.hot_sku_share > 0.0 => format!(
                "; the hot SKU runs at {:.0} % of the single-partition ceiling ({}/s)",
                100.0 * hot / c,
                num(c)
            ),
            _ => String::new(),
        };
        format!(
            "CPU of each {name}: {:.2} of {:.2} usable cores per machine{hot_note}",
            rp.cores_per_process,
            cores(budget)
        )
    } else {
        blockers.join("; ")
    };
    let copies: BTreeMap<&str, u32> = [(ROLE_GATEWAY, gateways), (ROLE_ENGINE, engines)].into();
    let mut notes: Vec<String> = unchecked_hot(t, m).into_iter().collect();
    if s.services_elsewhere {
        notes.push("broker and Postgres run on machines not counted here".into());
    }
    let parts = partitions(
        t,
        m.single_partition_ceiling_holds_per_s,
        s.headroom,
        engines,
    );
    if parts > t.products {
        notes.push(format!(
            "{parts} partitions for {} products: some partitions stay idle (a SKU is one \
             partition); they keep every engine busy only after a rebalance",
            t.products
        ));
    }
    Ok(ModePlan {
        mode: "kafka".into(),
        feasible,
        gateways,
        engines,
        partitions: parts,
        brokers,
        machines,
        roles,
        binding_limit,
        hot_sku_holds_per_s: hot,
        single_partition_ceiling_holds_per_s: m.single_partition_ceiling_holds_per_s,
        rss_bytes_per_100k_live_holds: live_holds_rss(m, &copies),
        notes,
    })
}

/// The plan of `mode` (`embedded` or `kafka`) for `t`.
pub fn plan_mode(
    p: &Profile,
    mode: &str,
    t: &Target,
    s: &Sizing,
) -> Result<Option<ModePlan>, PlanError> {
    match mode {
        "embedded" => p
            .embedded
            .as_ref()
            .map(|m| plan_embedded(m, t, s))
            .transpose(),
        "kafka" => p.kafka.as_ref().map(|m| plan_kafka(m, t, s)).transpose(),
        _ => Err(PlanError::Input(format!(
            "unknown mode {mode:?} (embedded, kafka)"
        ))),
    }
}

/// Whether `plan` fits `machines`.
fn fits(plan: &ModePlan, machines: u32) -> bool {
    plan.feasible && plan.machines <= machines
}

/// The largest x in [0, hi] with `ok(x)`, by bisection (`ok` monotone decreasing).
fn largest(hi: f64, ok: impl Fn(f64) -> Result<bool, PlanError>) -> Result<f64, PlanError> {
    if ok(hi)? {
        return Ok(hi);
    }
    let (mut lo, mut hi) = (0.0_f64, hi);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if ok(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 0.5 {
            break;
        }
    }
    Ok(lo)
}

/// `--machines N`: the highest holds/s (each with `reads_per_hold` reads, and the hot
/// share and products of `shape`) and reads/s alone that `machines` sustain, per mode.
pub fn predict(
    p: &Profile,
    mode: &str,
    machines: u32,
    reads_per_hold: f64,
    shape: &Target,
    s: &Sizing,
) -> Result<Option<Prediction>, PlanError> {
    if machines == 0 {
        return Err(PlanError::Input("--machines must be ≥ 1".into()));
    }
    if !(reads_per_hold.is_finite() && reads_per_hold >= 0.0) {
        return Err(PlanError::Input(format!(
            "--reads-per-hold must be ≥ 0, got {reads_per_hold}"
        )));
    }
    let at = |holds: f64, reads: f64| Target {
        holds_per_s: holds,
        reads_per_s: reads,
        checkouts_per_s: 0.0,
        ..shape.clone()
    };
    if plan_mode(p, mode, &at(0.0, 0.0), s)?.is_none() {
        return Ok(None);
    }
    // Upper bound: every core of every machine at 1 µs per request.
    let hi = f64::from(machines) * f64::from(s.cores_per_machine) * 1e6;
    let holds =
        largest(hi, |h| {
            Ok(plan_mode(p, mode, &at(h, h * reads_per_hold), s)?
                .is_some_and(|pl| fits(&pl, machines)))
        })?;
    let reads = largest(hi, |r| {
        Ok(plan_mode(p, mode, &at(0.0, r), s)?.is_some_and(|pl| fits(&pl, machines)))
    })?;
    // What stops it: the plan just above the maximum.
    let above = plan_mode(p, mode, &at(holds + 1.0, (holds + 1.0) * reads_per_hold), s)?
        .expect("mode present");
    let binding_limit = if above.feasible {
        format!(
            "{} machines: one more hold/s needs {}",
            machines, above.machines
        )
    } else {
        above.binding_limit.clone()
    };
    Ok(Some(Prediction {
        mode: mode.into(),
        predicted_max_holds_per_s: holds.floor(),
        predicted_max_reads_per_s: reads.floor(),
        binding_limit,
        plan: plan_mode(p, mode, &at(holds, holds * reads_per_hold), s)?,
    }))
}

/// `1234567.8` as `1,234,568`.
pub fn num(v: f64) -> String {
    crate::report::thousands(v)
}

/// The table of a target plan.
pub fn render_plans(t: &Target, s: &Sizing, plans: &[ModePlan], notes: &[String]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "target: {} holds/s ({:.0} % on one hot SKU, {} products), {} reads/s, {} \
         checkouts/s; machines of {} cores at {:.0} % CPU",
        num(t.holds_per_s),
        t.hot_sku_share * 100.0,
        t.products,
        num(t.reads_per_s),
        num(t.checkouts_per_s),
        s.cores_per_machine,
        s.headroom * 100.0
    );
    for p in plans {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{}: {}",
            p.mode,
            if p.feasible {
                "feasible"
            } else {
                "NOT FEASIBLE"
            }
        );
        let _ = writeln!(
            o,
            "  gateways {}  engines {}  partitions {}  brokers {}  machines {}",
            p.gateways, p.engines, p.partitions, p.brokers, p.machines
        );
        let _ = writeln!(
            o,
            "  {:<10} {:>9} {:>11} {:>17}",
            "role", "processes", "cores", "cores/process"
        );
        for (name, r) in &p.roles {
            let _ = writeln!(
                o,
                "  {:<10} {:>9} {:>11.2} {:>17.2}",
                name, r.processes, r.cores, r.cores_per_process
            );
        }
        if let Some(c) = p.single_partition_ceiling_holds_per_s {
            let _ = writeln!(
                o,
                "  hot SKU: {} holds/s; single-partition ceiling {}/s",
                num(p.hot_sku_holds_per_s),
                num(c)
            );
        }
        if let Some(b) = p.rss_bytes_per_100k_live_holds {
            let _ = writeln!(o, "  memory: {:.1} MB per 100,000 live holds", b / 1e6);
        }
        let _ = writeln!(o, "  binding limit: {}", p.binding_limit);
        for n in &p.notes {
            let _ = writeln!(o, "  note: {n}");
        }
    }
    for n in notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

/// The table of a `--machines` prediction.
pub fn render_predictions(
    machines: u32,
    reads_per_hold: f64,
    s: &Sizing,
    preds: &[Prediction],
    notes: &[String],
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{machines} machine(s) of {} cores at {:.0} % CPU, {reads_per_hold} reads per hold",
        s.cores_per_machine,
        s.headroom * 100.0
    );
    let _ = writeln!(
        o,
        "{:<9} {:>14} {:>14}  binding limit",
        "mode", "max holds/s", "max reads/s"
    );
    for p in preds {
        let _ = writeln!(
            o,
            "{:<9} {:>14} {:>14}  {}",
            p.mode,
            num(p.predicted_max_holds_per_s),
            num(p.predicted_max_reads_per_s),
            p.binding_limit
        );
    }
    for n in notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(hold: f64, read: f64, checkout: f64, follower: Option<f64>) -> RoleCost {
        RoleCost {
            cpu_us_per_hold: hold,
            cpu_us_per_read: read,
            cpu_us_per_checkout: checkout,
            follower_cpu_us_per_hold: follower,
            ..RoleCost::default()
        }
    }

    /// Round figures, so the answers can be checked by hand.
    fn profile() -> Profile {
        let embedded = ModeProfile {
            roles: [(ROLE_NODE.to_string(), cost(60.0, 20.0, 40.0, None))].into(),
            single_partition_ceiling_holds_per_s: Some(20_000.0),
            ..ModeProfile::default()
        };
        let kafka = ModeProfile {
            roles: [
                (ROLE_GATEWAY.into(), cost(50.0, 20.0, 30.0, Some(10.0))),
                (ROLE_ENGINE.into(), cost(40.0, 0.0, 20.0, Some(5.0))),
                (ROLE_PROJECTOR.into(), cost(10.0, 0.0, 10.0, None)),
                (ROLE_BROKER.into(), cost(50.0, 0.0, 50.0, None)),
                (ROLE_POSTGRES.into(), cost(5.0, 0.0, 100.0, None)),
            ]
            .into(),
            single_partition_ceiling_holds_per_s: Some(10_000.0),
            ..ModeProfile::default()
        };
        Profile {
            schema: PROFILE_SCHEMA.into(),
            taken_at: "2026-12-07T21:00:00Z".into(),
            machine: MachineInfo {
                cores: 2,
                cpu_model: "test".into(),
                kernel: "6.1".into(),
                load_avg_1m: 0.1,
            },
            build: BuildInfo {
                git_commit: "abc".into(),
                crate_version: "0.1.0".into(),
                cargo_profile: "release".into(),
            },
            embedded: Some(embedded),
            kafka: Some(kafka),
            notes: vec![],
        }
    }

    fn target(holds: f64, reads: f64, hot: f64, products: u32) -> Target {
        Target {
            reads_per_s: reads,
            holds_per_s: holds,
            checkouts_per_s: 0.0,
            hot_sku_share: hot,
            products,
        }
    }

    #[test]
    fn embedded_sums_the_node_costs() {
        // 1,000 × 60 + 10,000 × 20 = 260,000 µs/s = 0.26 cores; 16 × 0.6 = 9.6 usable.
        let pl = plan_embedded(
            profile().embedded.as_ref().unwrap(),
            &target(1_000.0, 10_000.0, 1.0, 1),
            &Sizing::default(),
        )
        .unwrap();
        assert!(pl.feasible, "{pl:?}");
        assert!((pl.roles[ROLE_NODE].cores - 0.26).abs() < 1e-9);
        assert_eq!((pl.machines, pl.partitions, pl.brokers), (1, 1, 0));
    }

    #[test]
    fn embedded_cannot_grow_past_one_machine() {
        // 200,000 × 60 = 12 cores > 9.6.
        let pl = plan_embedded(
            profile().embedded.as_ref().unwrap(),
            &target(200_000.0, 0.0, 0.0, 100),
            &Sizing::default(),
        )
        .unwrap();
        assert!(!pl.feasible);
        assert!(
            pl.binding_limit.contains("one process"),
            "{}",
            pl.binding_limit
        );
    }

    #[test]
    fn kafka_plan_by_hand() {
        // 25,000 holds/s on 100 products, 10 % hot (2,500/s < 10,000 × 0.6), 250,000
        // reads/s; machines of 16 cores at 60 % = 9.6 cores each.
        let s = Sizing::default();
        let t = target(25_000.0, 250_000.0, 0.1, 100);
        let pl = plan_kafka(profile().kafka.as_ref().unwrap(), &t, &s).unwrap();
        assert!(pl.feasible, "{pl:?}");
        // Gateways: base = 25,000 × 50 + 250,000 × 20 = 6.25 cores; each extra one
        // follows 25,000 × 10 = 0.25 cores: n × 9.6 ≥ 6.25 + (n − 1) × 0.25 → n = 1.
        assert_eq!(pl.gateways, 1);
        assert!((pl.roles[ROLE_GATEWAY].cores - 6.25).abs() < 1e-9);
        // Engines: 25,000 × 40 = 1 core, at least 2: 1 + 1 × 0.125 = 1.125 cores.
        assert_eq!(pl.engines, 2);
        assert!((pl.roles[ROLE_ENGINE].cores - 1.125).abs() < 1e-9);
        // Broker 25,000 × 50 = 1.25 cores over 3 brokers.
        assert_eq!(pl.brokers, 3);
        assert!((pl.roles[ROLE_BROKER].cores - 1.25).abs() < 1e-9);
        // Partitions: 22,500 cold holds/s / 6,000 per partition = 4 (3.75 up), + 1 hot
        // = 5, rounded up to a multiple of 2 engines = 6.
        assert_eq!(pl.partitions, 6);
        // Processes: gateway 6.25, engines 2 × 0.5625, projector 0.25, brokers 3 ×
        // 0.4167, postgres 0.125 = 9.0 cores in total; FFD: 6.25 + 0.5625 + 0.5625 +
        // 0.4167 × 3 + 0.25 = 8.875, + 0.125 = 9.0 ≤ 9.6: one machine.
        assert_eq!(pl.machines, 1);
    }

    #[test]
    fn gateways_pay_for_following_every_event() {
        // Machines of 1 core at 100 %: 1,000,000 µs/s each. 10,000 holds/s: the base is
        // 10,000 × 50 + 100,000 × 20 = 2.5 cores; each extra gateway follows 10,000 × 10
        // = 0.1 core: n ≥ (2.5 − 0.1) / (1 − 0.1) = 2.67 → 3 gateways, 2.7 cores.
        let s = Sizing {
            cores_per_machine: 1,
            headroom: 1.0,
            ..Sizing::default()
        };
        let t = target(10_000.0, 100_000.0, 0.0, 100);
        let pl = plan_kafka(profile().kafka.as_ref().unwrap(), &t, &s).unwrap();
        assert_eq!(pl.gateways, 3);
        assert!((pl.roles[ROLE_GATEWAY].cores - 2.7).abs() < 1e-9);
        // 150,000 holds/s: following alone costs each gateway 1.5 cores > 1: no count
        // fits, and the plan says why.
        let t = target(150_000.0, 0.0, 0.0, 100);
        let pl = plan_kafka(profile().kafka.as_ref().unwrap(), &t, &s).unwrap();
        assert!(!pl.feasible);
        assert!(
            pl.binding_limit
                .contains("every gateway follows every event"),
            "{}",
            pl.binding_limit
        );
    }

    #[test]
    fn a_hot_sku_beyond_the_ceiling_is_named() {
        // 25,000 holds/s all on one SKU; the ceiling is 10,000/s (× 0.6 = 6,000).
        let t = target(25_000.0, 250_000.0, 1.0, 1);
        let pl = plan_kafka(profile().kafka.as_ref().unwrap(), &t, &Sizing::default()).unwrap();
        assert!(!pl.feasible);
        assert!(
            pl.binding_limit
                .contains("one hot SKU is one partition: 25,000 holds/s"),
            "{}",
            pl.binding_limit
        );
        assert!(pl.binding_limit.contains("measured 10,000/s"));
        let text = render_plans(&t, &Sizing::default(), &[pl], &[]);
        assert!(text.contains("NOT FEASIBLE"), "{text}");
    }

    #[test]
    fn one_machine_one_core_predictions_by_hand() {
        let p = profile();
        let s = Sizing {
            cores_per_machine: 1,
            headroom: 1.0,
            min_engines: 1,
            min_brokers: 1,
            services_elsewhere: true,
            gateways: Some(1),
            engines: Some(1),
        };
        let shape = target(0.0, 0.0, 1.0, 1);
        // Embedded: 1,000,000 / 60 = 16,666/s, under the 20,000/s ceiling.
        let e = predict(&p, "embedded", 1, 0.0, &shape, &s)
            .unwrap()
            .unwrap();
        assert!(
            (e.predicted_max_holds_per_s - 16_666.0).abs() <= 1.0,
            "{e:?}"
        );
        assert!((e.predicted_max_reads_per_s - 50_000.0).abs() <= 1.0);
        // Kafka, broker and Postgres elsewhere: gateway 50 + engine 40 + projector 10 =
        // 100 µs per hold → 10,000/s (also the ceiling); reads 1,000,000 / 20 = 50,000/s.
        let k = predict(&p, "kafka", 1, 0.0, &shape, &s).unwrap().unwrap();
        assert!(
            (k.predicted_max_holds_per_s - 10_000.0).abs() <= 1.0,
            "{k:?}"
        );
        assert!((k.predicted_max_reads_per_s - 50_000.0).abs() <= 1.0);
        // 2 gateways + 2 engines: + 10 + 5 of following = 115 µs → 8,695/s.
        let s22 = Sizing {
            gateways: Some(2),
            engines: Some(2),
            ..s.clone()
        };
        let k = predict(&p, "kafka", 1, 0.0, &shape, &s22).unwrap().unwrap();
        assert!(
            (k.predicted_max_holds_per_s - 8_695.0).abs() <= 1.0,
            "{k:?}"
        );
        // With 1 read per hold on embedded: 60 + 20 = 80 µs → 12,500 holds/s.
        let e = predict(&p, "embedded", 1, 1.0, &shape, &s)
            .unwrap()
            .unwrap();
        assert!(
            (e.predicted_max_holds_per_s - 12_500.0).abs() <= 1.0,
            "{e:?}"
        );
    }

    #[test]
    fn the_ceiling_caps_a_prediction() {
        // 4 machines of 16 cores: CPU alone would allow far more than 10,000 holds/s on
        // one SKU; at 100 % headroom the ceiling is what binds.
        let s = Sizing {
            headroom: 1.0,
            ..Sizing::default()
        };
        let k = predict(&profile(), "kafka", 4, 0.0, &target(0.0, 0.0, 1.0, 1), &s)
            .unwrap()
            .unwrap();
        assert!(
            (k.predicted_max_holds_per_s - 10_000.0).abs() <= 1.0,
            "{k:?}"
        );
        assert!(
            k.binding_limit.contains("one hot SKU"),
            "{}",
            k.binding_limit
        );
    }

    #[test]
    fn bad_input_is_refused_plainly() {
        let p = profile();
        let m = p.kafka.as_ref().unwrap();
        let s = Sizing::default();
        let err = plan_kafka(m, &target(-5.0, 0.0, 1.0, 1), &s).unwrap_err();
        assert!(
            err.to_string().contains("--holds-per-s must be ≥ 0"),
            "{err}"
        );
        let err = plan_kafka(m, &target(5.0, f64::NAN, 1.0, 1), &s).unwrap_err();
        assert!(err.to_string().contains("--reads-per-s"), "{err}");
        let err = plan_kafka(m, &target(5.0, 0.0, 1.5, 1), &s).unwrap_err();
        assert!(err.to_string().contains("--hot-sku-share"), "{err}");
        let err = plan_kafka(m, &target(5.0, 0.0, 1.0, 0), &s).unwrap_err();
        assert!(err.to_string().contains("--products"), "{err}");
        let bad = Sizing {
            headroom: 60.0,
            ..Sizing::default()
        };
        let err = plan_kafka(m, &target(5.0, 0.0, 1.0, 1), &bad).unwrap_err();
        assert!(err.to_string().contains("--headroom"), "{err}");
        let err = predict(&p, "kafka", 0, 0.0, &target(0.0, 0.0, 1.0, 1), &s).unwrap_err();
        assert!(err.to_string().contains("--machines"), "{err}");
    }

    #[test]
    fn a_profile_from_another_build_is_refused_or_flagged() {
        let mut p = profile();
        assert_eq!(
            check_profile(&p, "0.1.0", Some("abc")).unwrap(),
            Vec::<String>::new()
        );
        let notes = check_profile(&p, "0.1.0", Some("def")).unwrap();
        assert!(notes[0].contains("from commit abc"), "{notes:?}");
        let err = check_profile(&p, "0.2.0", Some("abc")).unwrap_err();
        assert!(
            err.to_string().contains("taken with flashsale 0.1.0"),
            "{err}"
        );
        p.schema = "something-else/9".into();
        let err = check_profile(&p, "0.1.0", None).unwrap_err();
        assert!(err.to_string().contains("take a new profile"), "{err}");
        let mut p = profile();
        p.kafka
            .as_mut()
            .unwrap()
            .roles
            .get_mut(ROLE_ENGINE)
            .unwrap()
            .cpu_us_per_hold = -3.0;
        let err = check_profile(&p, "0.1.0", None).unwrap_err();
        assert!(
            err.to_string().contains("kafka.engine.cpu_us_per_hold"),
            "{err}"
        );
        let mut p = profile();
        p.build.cargo_profile = "debug".into();
        assert!(check_profile(&p, "0.1.0", None).unwrap()[0].contains("debug"));
    }

    #[test]
    fn a_profile_without_a_ceiling_says_the_hot_sku_is_unchecked() {
        let mut p = profile();
        let k = p.kafka.as_mut().unwrap();
        k.single_partition_ceiling_holds_per_s = None;
        k.roles
            .get_mut(ROLE_BROKER)
            .unwrap()
            .rss_bytes_per_live_hold = Some(1e6);
        k.roles
            .get_mut(ROLE_ENGINE)
            .unwrap()
            .rss_bytes_per_live_hold = Some(100.0);
        let pl = plan_kafka(k, &target(25_000.0, 0.0, 1.0, 1), &Sizing::default()).unwrap();
        assert!(pl.notes[0].contains("NOT checked"), "{:?}", pl.notes);
        // 2 engines × 100 B × 100,000; the broker's heap growth is not per-hold state.
        assert_eq!(pl.rss_bytes_per_100k_live_holds, Some(20e6));
    }

    #[test]
    fn packing_is_first_fit_decreasing() {
        assert_eq!(pack(&[0.6, 0.6, 0.3, 0.3, 0.2], 1.0), Some(3));
        assert_eq!(pack(&[0.5, 0.5], 1.0), Some(1));
        assert_eq!(pack(&[1.5], 1.0), None);
        assert_eq!(pack(&[], 1.0), Some(1));
    }

    #[test]
    fn the_profile_round_trips_through_json() {
        let p = profile();
        let text = serde_json::to_string(&p).unwrap();
        let back: Profile = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
    }
}
