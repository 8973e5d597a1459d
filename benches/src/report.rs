//! The report: its JSON shape (`--json-out`) and the table printed at the end of a run.
//!
//! The JSON shape is the one capacity planners' tools read (issue 6):
//! `{"scenario":{…},"operations":{"reserve":{"sent":N,"ok":N,"rejected":{"Out of Stock":N,…},
//! "errors":N,"throughput_per_s":X,"latency_ms":{"p50":X,"p90":X,"p99":X,"p999":X,"max":X}},
//! "availability":{…},"checkout":{…}},"violations":[…]}`. Two optional top-level objects
//! appear only when asked for: `find_max` (`--find-max`) and `read_ceiling`
//! (`--read-ceiling-secs`).

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
    /// Latency from the scheduled send time.
    pub latency_ms: LatencySummary,
}

impl OpReport {
    /// The figures of `s` over a phase of `secs` seconds.
    pub fn from_stats(s: &OpStats, secs: f64) -> Self {
        Self {
            sent: s.sent,
            ok: s.ok,
            rejected: s.rejected.clone(),
            errors: s.errors,
            throughput_per_s: if secs > 0.0 {
                s.answered() as f64 / secs
            } else {
                0.0
            },
            latency_ms: LatencySummary::of(&s.latency_us),
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
        }
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
    /// How late the harness got to requests relative to schedule, before any wait for an
    /// in-flight slot (p99, max), ms.
    pub dispatch_lag_ms: Option<(f64, f64)>,
}

/// The end-of-run table, one block per operation.
pub fn render_table(r: &Report, extras: &TableExtras) -> String {
    let mut o = String::new();
    let s = &r.scenario;
    let _ = writeln!(
        o,
        "\n{} @ {} — {} products × {} units, {} users, writes {}/s, reads {}/s, hot share {}, crowd {} users in {} ms, {} s (+{} s warm-up)",
        s.label,
        s.target,
        s.scenario.products,
        s.scenario.inventory_per_product,
        s.scenario.users,
        s.scenario.write_rate_per_s,
        s.scenario.read_rate(),
        s.scenario.hot_sku_share,
        s.scenario.crowd_users(),
        s.scenario.flash_crowd_ms,
        s.scenario.duration_secs,
        s.scenario.warmup_secs,
    );
    let _ = writeln!(
        o,
        "{:<13} {:>9} {:>9} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "operation",
        "sent",
        "ok",
        "rejected",
        "errors",
        "answers/s",
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
        let l = &op.latency_ms;
        let rejected: u64 = op.rejected.values().sum();
        let _ = writeln!(
            o,
            "{:<13} {:>9} {:>9} {:>9} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            key,
            op.sent,
            op.ok,
            rejected,
            op.errors,
            op.throughput_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
        for (title, n) in &op.rejected {
            let _ = writeln!(o, "{:<13}   rejected {title:?}: {n}", "");
        }
        if let Some(kinds) = extras.error_kinds.get(key) {
            for (kind, n) in kinds {
                let _ = writeln!(o, "{:<13}   error {kind}: {n}", "");
            }
        }
    }
    if let Some((p99, max)) = extras.dispatch_lag_ms {
        let _ = writeln!(
            o,
            "harness lag behind schedule: p99 {p99:.2} ms, max {max:.2} ms{}",
            if p99 > 5.0 {
                "  (the harness itself was short of CPU: latencies include its lag)"
            } else {
                ""
            }
        );
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::{record_us, Outcome};
    use crate::verify::ViolationKind;
    use std::borrow::Cow;

    pub(crate) fn sample_report() -> Report {
        let mut st = OpStats::default();
        st.record(&Outcome::Ok, 1500);
        st.record(&Outcome::Rejected(Cow::Borrowed("Out of Stock")), 800);
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
                "errors",
                "latency_ms",
                "ok",
                "rejected",
                "sent",
                "throughput_per_s"
            ]
        );
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
    fn json_round_trips() {
        let r = sample_report();
        assert_eq!(Report::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn table_mentions_every_used_operation_and_the_violation() {
        let t = render_table(&sample_report(), &TableExtras::default());
        assert!(t.contains("reserve"));
        assert!(!t.contains("checkout "), "unused operations are left out");
        assert!(t.contains("rejected \"Out of Stock\": 1"));
        assert!(t.contains("VIOLATIONS (1)"));
    }
}
