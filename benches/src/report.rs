//! The report: its JSON shape (`--json-out`) and the table printed at the end of a run.
//!
//! The JSON shape is the one capacity planners' tools read (issue 6):
//! `{"scenario":{…},"operations":{"reserve":{"sent":N,"ok":N,"rejected":{"Out of Stock":N,…},
//! "errors":N,"throughput_per_s":X,"latency_ms":{"p50":X,"p90":X,"p99":X,"p999":X,"max":X}},
//! "availability":{…},"checkout":{…}},"violations":[…]}`. Two optional top-level objects
//! appear only when asked for: `find_max` (`--find-max`) and `read_ceiling`
//! (`--read-ceiling-secs`).
//!
//! Added since (issues 12 and 16), all optional when read so older reports still load:
//! per operation `goodput_per_s` (201 + 409 answers/s), `shed` / `shed_per_s` /
//! `shed_without_retry_after` (429 and 503 answers) and `admitted_latency_ms` /
//! `shed_latency_ms` (the two latencies apart); top-level `harness` (the harness's own
//! send lag and whether it spoils the figures), `crowd` (the flash crowd's answers and
//! when the hot SKU sold out) and `verdict` (the one line at the top of the HTML page).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::scenario::Scenario;
use crate::stats::{LatencySummary, OpStats};
use crate::verify::Violation;

/// The `scenario` object: the workload plus where it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// Name of the target in tables (`--label`).
    pub label: String,
    /// Base URL of the target.
    pub target: String,
    /// The workload, as run.
    #[serde(flatten)]
    pub scenario: Scenario,
}

/// One operation's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpReport {
    /// Requests due in the measured phase (sent, or never sent and counted as errors).
    pub sent: u64,
    /// Successes.
    pub ok: u64,
    /// Rejections by the API's error title.
    pub rejected: BTreeMap<String, u64>,
    /// Requests with no usable answer (timeouts, transport errors, 5xx, never sent).
    pub errors: u64,
    /// Answered requests (ok + rejected) per second of the measured phase.
    pub throughput_per_s: f64,
    /// Latency from the scheduled send time, every request (admitted, shed, failed).
    pub latency_ms: LatencySummary,
    /// Successes and 409 decisions per second: the work the server did for buyers.
    #[serde(default)]
    pub goodput_per_s: f64,
    /// Shed answers (429 and 503). Not in `rejected` nor in `errors`.
    #[serde(default)]
    pub shed: u64,
    /// Shed answers per second.
    #[serde(default)]
    pub shed_per_s: f64,
    /// Shed answers without a `Retry-After` header (the contract requires one).
    #[serde(default)]
    pub shed_without_retry_after: u64,
    /// Latency of admitted requests (successes and rejections).
    #[serde(default)]
    pub admitted_latency_ms: LatencySummary,
    /// Latency of shed answers.
    #[serde(default)]
    pub shed_latency_ms: LatencySummary,
}

impl OpReport {
    /// The figures of `s` over a phase of `secs` seconds.
    pub fn from_stats(s: &OpStats, secs: f64) -> Self {
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Self {
            sent: s.sent,
            ok: s.ok,
            rejected: s.rejected.clone(),
            errors: s.errors,
            throughput_per_s: per_s(s.answered()),
            latency_ms: LatencySummary::of(&s.latency_us),
            goodput_per_s: per_s(s.goodput()),
            shed: s.shed,
            shed_per_s: per_s(s.shed),
            shed_without_retry_after: s.shed_without_retry_after,
            admitted_latency_ms: LatencySummary::of(&s.admitted_latency_us),
            shed_latency_ms: LatencySummary::of(&s.shed_latency_us),
        }
    }

    /// Share of requests that failed or were shed.
    pub fn failure_share(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            (self.errors + self.shed) as f64 / self.sent as f64
        }
    }

    /// All zero (an operation the scenario did not use).
    pub fn empty() -> Self {
        Self {
            sent: 0,
            ok: 0,
            rejected: BTreeMap::new(),
            errors: 0,
            throughput_per_s: 0.0,
            latency_ms: LatencySummary::default(),
            goodput_per_s: 0.0,
            shed: 0,
            shed_per_s: 0.0,
            shed_without_retry_after: 0,
            admitted_latency_ms: LatencySummary::default(),
            shed_latency_ms: LatencySummary::default(),
        }
    }
}

/// The `harness` object: how late the harness itself sent requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarnessReport {
    /// Lag behind schedule that was the harness's own doing (short of CPU), not a wait
    /// for an in-flight slot (that one is the server's, and counts in the latency).
    pub send_lag_ms: LatencySummary,
    /// True when that lag is large enough to spoil the latency figures: p99 above
    /// [`LAG_SPOILS_MS`], or above a quarter of the reservations' p99.
    pub spoiled: bool,
    /// Why, in words, when spoiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The harness's own CPU over the measured phase (Linux: `/proc/self/stat`), and
    /// the cores it was allowed to run on; absent where it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<HarnessCpu>,
}

/// The harness's CPU cost: what `scripts/harness-cost.sh` and the crowd table read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarnessCpu {
    /// utime + stime of the whole harness process (every thread) per request sent in
    /// the measured phase, µs (USER_HZ ticks: ±10 ms over the phase).
    pub us_per_request: f64,
    /// That CPU over the phase's wall time, in cores (1.0 = one core busy throughout).
    pub cores_used: f64,
    /// Requests sent in the measured phase.
    pub requests: u64,
    /// The CPUs the harness may run on (`Cpus_allowed_list` of `/proc/self/status`,
    /// e.g. `1` when pinned with `taskset -c 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_allowed: Option<String>,
    /// Threads of its runtime (`--client-threads`; 1 = one thread does everything).
    pub threads: usize,
}

/// Send lag (p99) above which the harness calls its own figures spoiled.
pub const LAG_SPOILS_MS: f64 = 5.0;

impl HarnessReport {
    /// Judges `lag` against the reservations' p99 (`reserve_p99_ms`, 0 when none).
    pub fn judge(lag: LatencySummary, reserve_p99_ms: f64) -> Self {
        let spoiled = lag.p99 > LAG_SPOILS_MS || (lag.p99 > 1.0 && lag.p99 > reserve_p99_ms / 4.0);
        let note = spoiled.then(|| {
            format!(
                "the harness sent requests late by itself (p99 {:.1} ms, max {:.1} ms): it was \
                 short of CPU, so latencies include its own lag and the offered rate was not \
                 fully offered; give it a core of its own (taskset, as scripts/crowd.sh \
                 does) or more --client-threads",
                lag.p99, lag.max
            )
        });
        Self {
            send_lag_ms: lag,
            spoiled,
            note,
            cpu: None,
        }
    }
}

/// The `crowd` object: what the flash crowd's buyers were answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrowdReport {
    /// Buyers in the crowd (one reservation attempt each).
    pub buyers: u64,
    /// Of which got a hold (201).
    pub held: u64,
    /// Of which got a 409 decision (Out of Stock, Purchase Limit Exceeded, …).
    pub decided_409: u64,
    /// Of which were told "later" with 503 or 429 and a `Retry-After` header.
    pub shed_with_retry_after: u64,
    /// Of which got anything else: other 4xx, shed without `Retry-After`, errors,
    /// timeouts, never sent.
    pub not_answered: u64,
    /// `not_answered == 0`: the big crowd's requirement.
    pub every_buyer_answered: bool,
    /// Latency of the crowd's admitted requests.
    pub admitted_latency_ms: LatencySummary,
    /// Latency of the crowd's shed answers.
    pub shed_latency_ms: LatencySummary,
    /// Units of the hot SKU (product 0).
    pub hot_sku_units: i64,
    /// Units of it acknowledged (crowd and steady stream).
    pub hot_units_held: i64,
    /// When the last of them was acknowledged, ms after the first arrival; null when it
    /// did not sell out.
    pub sold_out_after_ms: Option<f64>,
    /// Reservations on the other products meanwhile, admitted latency (starved or not).
    pub others_admitted_latency_ms: LatencySummary,
}

/// The `verdict` object: one line for the top of the page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The p99 SLO judged against, ms.
    pub slo_p99_ms: f64,
    /// True when it held (and nothing was violated).
    pub held: bool,
    /// "held 14,000/s at p99 18 ms", "missed: p99 140 ms > SLO 50 ms at 20,000/s offered".
    pub text: String,
}

/// `1234567.8` → `"1,234,568"`.
pub fn thousands(v: f64) -> String {
    let n = v.round().abs() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v.round() < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// A latency in ms for prose: 3 significant digits at most.
pub fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}").trim_end_matches(".0").to_string()
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The verdict of a report against a p99 SLO and a failure bound: for a find-max, the
/// highest rate that held; for a run, whether its reservations (or, without any, its
/// reads) held at the rate offered.
pub fn verdict(r: &Report, slo_p99_ms: f64, max_failure_share: f64) -> Verdict {
    let mut v = verdict_core(r, slo_p99_ms, max_failure_share);
    if r.find_max.is_none() && r.violations.is_empty() {
        if let Some(c) = &r.crowd {
            crowd_verdict(&mut v, c, r.scenario.scenario.flash_crowd_ms);
        }
    }
    if let Some(s) = &r.soak {
        v.text
            .push_str(&format!("; soak: {}", s.flatness.summary()));
        v.held &= s.flatness.held;
    }
    if let Some(h) = r.harness.as_ref().filter(|h| h.spoiled) {
        v.text.push_str(&format!(
            " (harness lag p99 {} ms: figures spoiled)",
            ms(h.send_lag_ms.p99)
        ));
    }
    v
}

/// The crowd's own clause: its buyers arrived in `window_ms`, not spread over the
/// run, so the rate the server met is buyers / window (a 10,000-buyer crowd in 300 ms
/// is 33,333/s, though the run's average offered rate may read 1,000/s). A crowd with
/// buyers left unanswered does not hold; its admitted p99 is judged like the run's.
fn crowd_verdict(v: &mut Verdict, c: &CrowdReport, window_ms: u64) {
    if c.buyers == 0 || window_ms == 0 {
        return;
    }
    let rate = c.buyers as f64 / (window_ms as f64 / 1000.0);
    let p99 = c.admitted_latency_ms.p99;
    let mut text = format!(
        "; the crowd: {} buyers in {} ms ({}/s): {} held, {} refused (409), {} told to retry",
        thousands(c.buyers as f64),
        thousands(window_ms as f64),
        thousands(rate),
        thousands(c.held as f64),
        thousands(c.decided_409 as f64),
        thousands(c.shed_with_retry_after as f64),
    );
    if c.not_answered > 0 {
        text.push_str(&format!(
            ", {} not answered",
            thousands(c.not_answered as f64)
        ));
        v.held = false;
    }
    text.push_str(&format!(", admitted p99 {} ms", ms(p99)));
    if p99 > v.slo_p99_ms {
        text.push_str(&format!(" > SLO {} ms", ms(v.slo_p99_ms)));
        v.held = false;
    }
    v.text.push_str(&text);
}

fn verdict_core(r: &Report, slo: f64, max_fail: f64) -> Verdict {
    let mk = |held: bool, text: String| Verdict {
        slo_p99_ms: slo,
        held,
        text,
    };
    if !r.violations.is_empty() {
        return mk(
            false,
            format!(
                "FAILED: {} correctness violation{} (see the list below)",
                r.violations.len(),
                if r.violations.len() == 1 { "" } else { "s" }
            ),
        );
    }
    if let Some(fm) = &r.find_max {
        return match fm.max_rate_held_per_s {
            Some(rate) => {
                let p99 = fm
                    .steps
                    .iter()
                    .find(|s| s.held && s.write_rate_per_s == rate)
                    .map_or(0.0, |s| s.reserve_p99_ms);
                mk(
                    true,
                    format!(
                        "held {}/s at p99 {} ms (SLO {} ms){}",
                        thousands(rate),
                        ms(p99),
                        ms(fm.slo_p99_ms),
                        if fm.step_limit_reached {
                            "; the search stopped at its step limit: capacity is higher"
                        } else {
                            ""
                        }
                    ),
                )
            }
            None => {
                let first = fm.steps.first();
                let text = match first {
                    Some(s) if s.reserve_p99_ms > fm.slo_p99_ms => format!(
                        "missed: p99 {} ms > SLO {} ms at {}/s offered (the first step)",
                        ms(s.reserve_p99_ms),
                        ms(fm.slo_p99_ms),
                        thousands(s.write_rate_per_s)
                    ),
                    Some(s) => format!(
                        "missed: {:.2} % failed or shed > {:.2} % at {}/s offered (the first step)",
                        s.failure_share * 100.0,
                        fm.max_failure_share * 100.0,
                        thousands(s.write_rate_per_s)
                    ),
                    None => "missed: no step ran".to_string(),
                };
                mk(false, text)
            }
        };
    }
    let s = &r.scenario.scenario;
    let (key, what) = if r.op("reserve").sent > 0 {
        ("reserve", "")
    } else {
        ("availability", " reads")
    };
    let op = r.op(key);
    if op.sent == 0 {
        return mk(false, "nothing was sent".to_string());
    }
    let offered = op.sent as f64 / s.duration_secs.max(1e-9);
    let p99 = op.admitted_latency_ms.p99;
    let fail = op.failure_share();
    if p99 > slo {
        mk(
            false,
            format!(
                "missed: p99 {} ms > SLO {} ms at {}/s{what} offered",
                ms(p99),
                ms(slo),
                thousands(offered)
            ),
        )
    } else if fail > max_fail {
        mk(
            false,
            format!(
                "missed: {:.2} % failed or shed > {:.2} % at {}/s{what} offered (admitted p99 {} ms)",
                fail * 100.0,
                max_fail * 100.0,
                thousands(offered),
                ms(p99)
            ),
        )
    } else {
        mk(
            true,
            format!(
                "held {}/s{what} at p99 {} ms (SLO {} ms)",
                thousands(op.goodput_per_s.max(op.throughput_per_s)),
                ms(p99),
                ms(slo)
            ),
        )
    }
}

/// One step of `--find-max`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindMaxStep {
    /// Offered reservation attempts per second.
    pub write_rate_per_s: f64,
    /// Answered reservations per second.
    pub reserve_throughput_per_s: f64,
    /// Reservation p99, ms.
    pub reserve_p99_ms: f64,
    /// Share of reservations that failed or were shed.
    pub failure_share: f64,
    /// Whether the step stayed within the SLO.
    pub held: bool,
}

/// The `find_max` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindMaxReport {
    /// The p99 bound, ms.
    pub slo_p99_ms: f64,
    /// The failure-share bound.
    pub max_failure_share: f64,
    /// Highest offered write rate that held, or null when none did.
    pub max_rate_held_per_s: Option<f64>,
    /// The search stopped at its step limit with every step holding: the capacity is
    /// above `max_rate_held_per_s` (raise `--find-max-steps` or the start rate).
    #[serde(default)]
    pub step_limit_reached: bool,
    /// Every step, in the order run.
    pub steps: Vec<FindMaxStep>,
}

/// The `read_ceiling` object: closed-loop saturation of the static `/health` handler and
/// of the availability read on the same server, one after the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadCeilingReport {
    /// Concurrent requests kept in flight.
    pub concurrency: u32,
    /// Seconds per endpoint.
    pub secs: f64,
    /// `/health` answers per second.
    pub health_per_s: f64,
    /// Availability answers per second.
    pub availability_per_s: f64,
    /// availability / health (the issue's target: ≥ 0.9).
    pub ratio: f64,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The workload and target.
    pub scenario: ScenarioReport,
    /// `reserve`, `availability`, `checkout`.
    pub operations: BTreeMap<String, OpReport>,
    /// Broken invariants; empty on a correct run.
    pub violations: Vec<Violation>,
    /// Present with `--find-max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find_max: Option<FindMaxReport>,
    /// Present with `--read-ceiling-secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ceiling: Option<ReadCeilingReport>,
    /// The harness's own send lag (every run writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness: Option<HarnessReport>,
    /// Present when the scenario has a flash crowd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crowd: Option<CrowdReport>,
    /// The one-line verdict against `--slo-p99-ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Per-window figures, watched processes and the flatness verdict (`sample_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<crate::soak::SoakReport>,
}

impl Report {
    /// The figures of operation `key`, or an empty one.
    pub fn op(&self, key: &str) -> OpReport {
        self.operations
            .get(key)
            .cloned()
            .unwrap_or_else(OpReport::empty)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// Reads a report written by `--json-out`.
    pub fn from_json(text: &str) -> Result<Self, BenchError> {
        serde_json::from_str(text).map_err(|e| BenchError::Report(e.to_string()))
    }
}

/// Extra lines for the text table that the JSON does not carry.
#[derive(Debug, Clone, Default)]
pub struct TableExtras {
    /// Errors by kind, per operation key.
    pub error_kinds: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The scenario in one line.
pub fn describe_scenario(r: &Report) -> String {
    let s = &r.scenario;
    let mut o = format!(
        "{} @ {}: {} product{} × {} units, {} users, writes {}/s, reads {}/s, hot share {}",
        s.label,
        s.target,
        s.scenario.products,
        if s.scenario.products == 1 { "" } else { "s" },
        thousands(s.scenario.inventory_per_product as f64),
        thousands(f64::from(s.scenario.users)),
        thousands(s.scenario.write_rate_per_s),
        thousands(s.scenario.read_rate()),
        s.scenario.hot_sku_share,
    );
    if s.scenario.crowd_users() > 0 {
        o.push_str(&format!(
            ", crowd {} users in {} ms ({} % on the hot SKU)",
            thousands(f64::from(s.scenario.crowd_users())),
            s.scenario.flash_crowd_ms,
            s.scenario.crowd_hot_share() * 100.0
        ));
    }
    if let Some(m) = s.scenario.capacity_multiplier {
        o.push_str(&format!(", {m}× the given capacity"));
    }
    o.push_str(&format!(
        ", {} s (+{} s warm-up)",
        s.scenario.duration_secs, s.scenario.warmup_secs
    ));
    o
}

fn latency_cols(l: &LatencySummary) -> String {
    format!(
        "{:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
        l.p50, l.p90, l.p99, l.p999, l.max
    )
}

/// The end-of-run table, one block per operation.
pub fn render_table(r: &Report, extras: &TableExtras) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n{}", describe_scenario(r));
    if let Some(v) = &r.verdict {
        let _ = writeln!(o, "verdict: {}", v.text);
    }
    let _ = writeln!(
        o,
        "{:<13} {:>9} {:>9} {:>9} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "operation",
        "sent",
        "ok",
        "rejected",
        "shed",
        "errors",
        "goodput/s",
        "shed/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms"
    );
    for (key, op) in &r.operations {
        if op.sent == 0 {
            continue;
        }
        let rejected: u64 = op.rejected.values().sum();
        let _ = writeln!(
            o,
            "{:<13} {:>9} {:>9} {:>9} {:>8} {:>7} {:>10.1} {:>9.1} {}",
            key,
            op.sent,
            op.ok,
            rejected,
            op.shed,
            op.errors,
            op.goodput_per_s,
            op.shed_per_s,
            latency_cols(&op.latency_ms)
        );
        if op.shed > 0 {
            let _ = writeln!(
                o,
                "{:<13} {:>73} {}",
                "",
                "admitted (ok + rejected) latency:",
                latency_cols(&op.admitted_latency_ms)
            );
            let _ = writeln!(
                o,
                "{:<13} {:>73} {}",
                "",
                "shed (429/503) latency:",
                latency_cols(&op.shed_latency_ms)
            );
            if op.shed_without_retry_after > 0 {
                let _ = writeln!(
                    o,
                    "{:<13}   shed WITHOUT Retry-After: {}",
                    "", op.shed_without_retry_after
                );
            }
        }
        for (title, n) in &op.rejected {
            let _ = writeln!(o, "{:<13}   rejected {title:?}: {n}", "");
        }
        if let Some(kinds) = extras.error_kinds.get(key) {
            for (kind, n) in kinds {
                let _ = writeln!(o, "{:<13}   error {kind}: {n}", "");
            }
        }
    }
    let _ = writeln!(
        o,
        "goodput = 201 + 409 answers/s; shed = 429 + 503 answers; latency from each request's scheduled time"
    );
    if let Some(h) = &r.harness {
        let _ = writeln!(
            o,
            "harness send lag: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            h.send_lag_ms.p50,
            h.send_lag_ms.p99,
            h.send_lag_ms.max,
            if h.spoiled { "  <-- SPOILED" } else { " (ok)" }
        );
        if let Some(c) = &h.cpu {
            let _ = writeln!(
                o,
                "harness CPU: {:.1} µs per request, {:.2} cores over the phase ({} requests, {} thread(s), CPUs {})",
                c.us_per_request,
                c.cores_used,
                c.requests,
                c.threads,
                c.cpus_allowed.as_deref().unwrap_or("?")
            );
        }
        if let Some(n) = &h.note {
            let _ = writeln!(o, "WARNING: {n}");
        }
    }
    if let Some(c) = &r.crowd {
        let _ = writeln!(o, "{}", crowd_line(c));
    }
    if let Some(s) = &r.soak {
        o.push_str(&crate::soak::render(s));
    }
    if let Some(rc) = &r.read_ceiling {
        let _ = writeln!(
            o,
            "read ceiling ({} in flight, {} s each): /health {:.0}/s, availability {:.0}/s, ratio {:.2} (target ≥ 0.90)",
            rc.concurrency, rc.secs, rc.health_per_s, rc.availability_per_s, rc.ratio
        );
    }
    if let Some(fm) = &r.find_max {
        let _ = writeln!(
            o,
            "find-max (p99 ≤ {} ms, failures ≤ {:.2} %):",
            fm.slo_p99_ms,
            fm.max_failure_share * 100.0
        );
        for st in &fm.steps {
            let _ = writeln!(
                o,
                "  {:>9.0} writes/s offered → {:>9.1}/s answered, p99 {:>8.2} ms, failures {:.3} % {}",
                st.write_rate_per_s,
                st.reserve_throughput_per_s,
                st.reserve_p99_ms,
                st.failure_share * 100.0,
                if st.held { "held" } else { "FAILED" }
            );
        }
        match fm.max_rate_held_per_s {
            Some(r) => {
                let _ = writeln!(
                    o,
                    "  highest write rate that held: {r:.0}/s{}",
                    if fm.step_limit_reached {
                        " (step limit reached while holding: the capacity is higher)"
                    } else {
                        ""
                    }
                );
            }
            None => {
                let _ = writeln!(o, "  no step held");
            }
        }
    }
    if r.violations.is_empty() {
        let _ = writeln!(o, "correctness: no oversell, no user over its limit");
    } else {
        let _ = writeln!(o, "VIOLATIONS ({}):", r.violations.len());
        for v in &r.violations {
            let _ = writeln!(
                o,
                "  {:?} sku {}{}: {}",
                v.kind,
                v.sku_id,
                v.user_id
                    .as_deref()
                    .map(|u| format!(" user {u}"))
                    .unwrap_or_default(),
                v.message
            );
        }
    }
    o
}

/// The crowd's requirement in one line.
pub fn crowd_line(c: &CrowdReport) -> String {
    format!(
        "crowd: {} buyers: {} held, {} told 409 (out of stock, …), {} told 503/429 + Retry-After, {} not answered{}; hot SKU {}",
        thousands(c.buyers as f64),
        thousands(c.held as f64),
        thousands(c.decided_409 as f64),
        thousands(c.shed_with_retry_after as f64),
        thousands(c.not_answered as f64),
        if c.every_buyer_answered {
            " (every buyer answered)"
        } else {
            " (NOT every buyer answered)"
        },
        match c.sold_out_after_ms {
            Some(t) => format!(
                "all {} units held {} ms after the first arrival",
                thousands(c.hot_sku_units as f64),
                ms(t)
            ),
            None => format!(
                "not sold out: {} of {} units held",
                thousands(c.hot_units_held as f64),
                thousands(c.hot_sku_units as f64)
            ),
        }
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::{record_us, Outcome};
    use crate::verify::ViolationKind;
    use std::borrow::Cow;

    pub(crate) fn sample_report() -> Report {
        let mut st = OpStats::default();
        st.record(&Outcome::Ok, 1500);
        st.record(&Outcome::Rejected(409, Cow::Borrowed("Out of Stock")), 800);
        record_us(&mut st.latency_us, 900);
        let mut operations = BTreeMap::new();
        operations.insert("reserve".to_string(), OpReport::from_stats(&st, 2.0));
        operations.insert("availability".to_string(), OpReport::empty());
        operations.insert("checkout".to_string(), OpReport::empty());
        Report {
            scenario: ScenarioReport {
                label: "fake".into(),
                target: "http://127.0.0.1:1".into(),
                scenario: Scenario::default(),
            },
            operations,
            violations: vec![Violation {
                kind: ViolationKind::Oversold,
                sku_id: "S".into(),
                user_id: None,
                message: "m".into(),
            }],
            find_max: None,
            read_ceiling: None,
            harness: None,
            crowd: None,
            verdict: None,
            soak: None,
        }
    }

    #[test]
    fn json_has_exactly_the_issue_shape() {
        let v: serde_json::Value = serde_json::from_str(&sample_report().to_json()).unwrap();
        // Key sets, whatever order serde_json keeps them in.
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&v), vec!["operations", "scenario", "violations"]);
        assert_eq!(
            keys(&v["operations"]),
            vec!["availability", "checkout", "reserve"]
        );
        let r = &v["operations"]["reserve"];
        assert_eq!(
            keys(r),
            vec![
                "admitted_latency_ms",
                "errors",
                "goodput_per_s",
                "latency_ms",
                "ok",
                "rejected",
                "sent",
                "shed",
                "shed_latency_ms",
                "shed_per_s",
                "shed_without_retry_after",
                "throughput_per_s"
            ]
        );
        assert_eq!(r["goodput_per_s"], 1.0);
        assert_eq!(r["sent"], 2);
        assert_eq!(r["ok"], 1);
        assert_eq!(r["rejected"]["Out of Stock"], 1);
        assert_eq!(r["errors"], 0);
        assert_eq!(r["throughput_per_s"], 1.0);
        assert_eq!(
            keys(&r["latency_ms"]),
            vec!["max", "p50", "p90", "p99", "p999"]
        );
        assert!(r["latency_ms"]["p99"].is_f64());
        assert!(v["scenario"]["products"].is_u64());
        assert!(v["scenario"]["label"].is_string());
        assert_eq!(v["violations"][0]["kind"], "oversold");
    }

    #[test]
    fn older_reports_still_load() {
        let mut v: serde_json::Value = serde_json::from_str(&sample_report().to_json()).unwrap();
        for k in [
            "goodput_per_s",
            "shed",
            "shed_per_s",
            "shed_without_retry_after",
            "admitted_latency_ms",
            "shed_latency_ms",
        ] {
            v["operations"]["reserve"]
                .as_object_mut()
                .unwrap()
                .remove(k);
        }
        let r = Report::from_json(&v.to_string()).unwrap();
        assert_eq!(r.op("reserve").shed, 0);
    }

    #[test]
    fn verdicts_read_at_a_glance() {
        let mut r = sample_report();
        r.violations.clear();
        r.scenario.scenario.duration_secs = 1.0;
        let mut op = OpReport::empty();
        op.sent = 20_000;
        op.ok = 14_000;
        op.goodput_per_s = 14_000.0;
        op.admitted_latency_ms.p99 = 18.0;
        r.operations.insert("reserve".into(), op.clone());
        let v = verdict(&r, 50.0, 0.001);
        assert!(v.held);
        assert_eq!(v.text, "held 14,000/s at p99 18 ms (SLO 50 ms)");

        op.admitted_latency_ms.p99 = 140.0;
        r.operations.insert("reserve".into(), op.clone());
        let v = verdict(&r, 50.0, 0.001);
        assert!(!v.held);
        assert_eq!(v.text, "missed: p99 140 ms > SLO 50 ms at 20,000/s offered");

        op.admitted_latency_ms.p99 = 4.0;
        op.shed = 2_000;
        r.operations.insert("reserve".into(), op);
        let v = verdict(&r, 50.0, 0.001);
        assert!(
            v.text.starts_with("missed: 10.00 % failed or shed"),
            "{}",
            v.text
        );

        r.harness = Some(HarnessReport::judge(
            LatencySummary {
                p99: 30.0,
                max: 90.0,
                ..LatencySummary::default()
            },
            4.0,
        ));
        assert!(verdict(&r, 50.0, 0.5).text.ends_with("figures spoiled)"));

        r.violations = sample_report().violations;
        assert!(verdict(&r, 50.0, 0.5)
            .text
            .starts_with("FAILED: 1 correctness violation "));
    }

    #[test]
    fn a_crowd_verdict_speaks_of_the_crowd_s_rate_and_window() {
        let mut r = sample_report();
        r.violations.clear();
        r.harness = None;
        r.scenario.scenario.duration_secs = 10.0;
        r.scenario.scenario.flash_crowd_ms = 300;
        let mut op = OpReport::empty();
        op.sent = 10_000;
        op.ok = 10_000;
        op.goodput_per_s = 1_000.0;
        op.admitted_latency_ms.p99 = 18.0;
        r.operations.insert("reserve".into(), op);
        let mut crowd = CrowdReport {
            buyers: 10_000,
            held: 2_000,
            decided_409: 7_000,
            shed_with_retry_after: 1_000,
            not_answered: 0,
            every_buyer_answered: true,
            admitted_latency_ms: LatencySummary {
                p99: 20.0,
                ..LatencySummary::default()
            },
            shed_latency_ms: LatencySummary::default(),
            hot_sku_units: 2_000,
            hot_units_held: 2_000,
            sold_out_after_ms: Some(250.0),
            others_admitted_latency_ms: LatencySummary::default(),
        };
        r.crowd = Some(crowd.clone());
        let v = verdict(&r, 50.0, 0.5);
        assert!(v.held, "{}", v.text);
        assert!(
            v.text.contains("the crowd: 10,000 buyers in 300 ms (33,333/s): 2,000 held, 7,000 refused (409), 1,000 told to retry, admitted p99 20 ms"),
            "{}",
            v.text
        );
        crowd.not_answered = 5;
        crowd.admitted_latency_ms.p99 = 80.0;
        r.crowd = Some(crowd);
        let v = verdict(&r, 50.0, 0.5);
        assert!(!v.held);
        assert!(
            v.text
                .ends_with(", 5 not answered, admitted p99 80 ms > SLO 50 ms"),
            "{}",
            v.text
        );
    }

    #[test]
    fn lag_judgement_and_number_words() {
        let small = LatencySummary {
            p99: 0.3,
            ..LatencySummary::default()
        };
        assert!(!HarnessReport::judge(small, 2.0).spoiled);
        let mid = LatencySummary {
            p99: 3.0,
            ..LatencySummary::default()
        };
        assert!(
            HarnessReport::judge(mid, 4.0).spoiled,
            "lag ~ the p99 itself"
        );
        assert!(!HarnessReport::judge(mid, 40.0).spoiled);
        assert_eq!(thousands(14_000.4), "14,000");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(ms(18.04), "18");
        assert_eq!(ms(1.5), "1.5");
        assert_eq!(ms(140.2), "140");
    }

    #[test]
    fn json_round_trips() {
        let r = sample_report();
        assert_eq!(Report::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn table_mentions_every_used_operation_and_the_violation() {
        let mut r = sample_report();
        r.crowd = Some(CrowdReport {
            buyers: 100_000,
            held: 1000,
            decided_409: 90_000,
            shed_with_retry_after: 9_000,
            not_answered: 0,
            every_buyer_answered: true,
            admitted_latency_ms: LatencySummary::default(),
            shed_latency_ms: LatencySummary::default(),
            hot_sku_units: 1000,
            hot_units_held: 1000,
            sold_out_after_ms: Some(420.0),
            others_admitted_latency_ms: LatencySummary::default(),
        });
        let t = render_table(&r, &TableExtras::default());
        assert!(t.contains("every buyer answered"), "{t}");
        assert!(
            t.contains("all 1,000 units held 420 ms after the first arrival"),
            "{t}"
        );
        assert!(t.contains("reserve"));
        assert!(!t.contains("checkout "), "unused operations are left out");
        assert!(t.contains("rejected \"Out of Stock\": 1"));
        assert!(t.contains("VIOLATIONS (1)"));
    }
}
