//! `flashsale-bench side-by-side`: the one table of `benches/scripts/bench-compare.sh`.
//!
//! The script measures each target over several rounds (wrk closed loop at 64 and 256
//! connections, wrk on `/health` and on the availability read, `flashsale-bench
//! --find-max`, server CPU from `/proc`) and appends one line per figure to a
//! tab-separated file: `TARGET\tMETRIC\tVALUE` (a round is simply another line for the
//! same pair), or `TARGET\tnote\tTEXT`. This module reads that file, takes the median of
//! each figure over its rounds, and renders one table with ratios. Pure: no I/O beyond the
//! text it is given.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::error::BenchError;
use crate::report::thousands;

/// Target names, in table order, with the label printed for each.
pub const TARGETS: [(&str, &str); 4] = [
    ("flashsale-embedded", "flashsale embedded"),
    ("flashsale-kafka", "flashsale Kafka mode"),
    ("baseline-redis", "baseline-redis"),
    ("baseline-postgres", "baseline-postgres"),
];

/// Connection counts of the closed-loop rows.
pub const CONNS: [u32; 3] = [64, 256, LONE];
/// The lone buyer's row: holds one after another on one connection of an idle server
/// (metrics `…@1`).
pub const LONE: u32 = 1;

/// Every figure of one target, each as its values over the rounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measured {
    /// metric → values, one per round, in file order.
    pub values: BTreeMap<String, Vec<f64>>,
    /// Notes (why a row is missing, …).
    pub notes: Vec<String>,
    /// Paths of `--find-max` JSON reports (`TARGET\tfind_max_report\tPATH`), one per
    /// round; [`Measured::add_find_max`] turns each into figures.
    pub find_max_reports: Vec<String>,
}

impl Measured {
    /// The median of `metric` over its rounds.
    pub fn median(&self, metric: &str) -> Option<f64> {
        median(self.values.get(metric)?)
    }

    /// Adds a round's find-max figures: the highest rate that held and the p99 there.
    pub fn add_find_max(&mut self, r: &crate::report::Report) {
        let Some(fm) = &r.find_max else { return };
        let Some(rate) = fm.max_rate_held_per_s else {
            self.notes
                .push("a find-max round had no step within the SLO".to_string());
            return;
        };
        self.values
            .entry("find_max_per_s".into())
            .or_default()
            .push(rate);
        if let Some(st) = fm
            .steps
            .iter()
            .find(|s| s.held && s.write_rate_per_s == rate)
        {
            self.values
                .entry("find_max_p99_ms".into())
                .or_default()
                .push(st.reserve_p99_ms);
        }
    }

    /// Rounds measured of `metric`.
    pub fn rounds(&self, metric: &str) -> usize {
        self.values.get(metric).map_or(0, Vec::len)
    }
}

/// The median of `v` (mean of the middle two for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Parses the script's TSV.
pub fn parse(text: &str) -> Result<BTreeMap<String, Measured>, BenchError> {
    let mut out: BTreeMap<String, Measured> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (Some(target), Some(metric), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(BenchError::Report(format!(
                "line {}: expected TARGET<TAB>METRIC<TAB>VALUE, got {line:?}",
                i + 1
            )));
        };
        let m = out.entry(target.to_string()).or_default();
        if metric == "note" {
            m.notes.push(value.to_string());
            continue;
        }
        if metric == "find_max_report" {
            m.find_max_reports.push(value.to_string());
            continue;
        }
        let v: f64 = value.trim().parse().map_err(|_| {
            BenchError::Report(format!("line {}: {value:?} is not a number", i + 1))
        })?;
        m.values.entry(metric.to_string()).or_default().push(v);
    }
    Ok(out)
}

/// One row of the table, as the JSON carries it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Row {
    /// Target name.
    pub target: String,
    /// Connections (0 for the HTTP ceiling row).
    pub conns: u32,
    /// Median 201 answers per second.
    pub holds_per_s: Option<f64>,
    /// Ratio to the reference target at the same connections.
    pub holds_ratio: Option<f64>,
    /// Median p50, ms.
    pub p50_ms: Option<f64>,
    /// Median p99, ms.
    pub p99_ms: Option<f64>,
    /// Median server CPU per hold, µs.
    pub cpu_us_per_hold: Option<f64>,
    /// Median CPU per hold of the Kafka broker(s), µs (Kafka mode only).
    pub broker_cpu_us_per_hold: Option<f64>,
    /// Median find-max rate (open loop, p99 within the SLO), writes/s.
    pub find_max_per_s: Option<f64>,
    /// Median reservation p99 at that rate, ms.
    pub find_max_p99_ms: Option<f64>,
    /// Median availability reads per second (closed loop).
    pub reads_per_s: Option<f64>,
    /// Reads as a share of the `/health` rate of the same server.
    pub reads_ratio: Option<f64>,
    /// Rounds behind the figures (the fewest of this row's).
    pub rounds: usize,
}

/// Builds the rows: the HTTP ceiling (the reference's `/health`), then each target at
/// each connection count it was measured at.
pub fn rows(m: &BTreeMap<String, Measured>, reference: &str) -> Vec<Row> {
    let mut out = Vec::new();
    let refm = m.get(reference);
    if let Some(h) = refm.and_then(|r| r.median("health_per_s")) {
        out.push(Row {
            target: format!("{reference} /health (HTTP ceiling)"),
            reads_per_s: Some(h),
            reads_ratio: Some(1.0),
            rounds: refm.map_or(0, |r| r.rounds("health_per_s")),
            ..Row::default()
        });
    }
    for (name, _) in TARGETS {
        // A target with notes only (skipped) has no row; its notes say why.
        let Some(t) = m.get(name).filter(|t| !t.values.is_empty()) else {
            continue;
        };
        for (k, conns) in CONNS.iter().enumerate() {
            let key = |metric: &str| format!("{metric}@{conns}");
            let holds = t.median(&key("holds_per_s"));
            if holds.is_none() && k > 0 {
                continue;
            }
            let ref_holds = refm.and_then(|r| r.median(&key("holds_per_s")));
            let mut row = Row {
                target: name.to_string(),
                conns: *conns,
                holds_per_s: holds,
                holds_ratio: match (holds, ref_holds) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
                p50_ms: t.median(&key("p50_ms")),
                p99_ms: t.median(&key("p99_ms")),
                cpu_us_per_hold: t.median(&key("cpu_us_per_hold")),
                broker_cpu_us_per_hold: t.median(&key("broker_cpu_us_per_hold")),
                rounds: t.rounds(&key("holds_per_s")),
                ..Row::default()
            };
            if k == 0 {
                row.find_max_per_s = t.median("find_max_per_s");
                row.find_max_p99_ms = t.median("find_max_p99_ms");
                row.reads_per_s = t.median("reads_per_s");
                // Reads as a share of the same server's /health, else of the reference's.
                let health = t
                    .median("health_per_s")
                    .or_else(|| refm.and_then(|r| r.median("health_per_s")));
                row.reads_ratio = match (row.reads_per_s, health) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
            }
            out.push(row);
        }
    }
    out
}

fn cell(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

fn ms(v: f64) -> String {
    crate::report::ms(v)
}

/// The table, its notes and a legend of what each column is.
pub fn render(m: &BTreeMap<String, Measured>, reference: &str, slo_p99_ms: f64) -> String {
    let rows = rows(m, reference);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<42} {:>5} {:>9} {:>6} {:>7} {:>7} {:>8} {:>9} {:>17} {:>9} {:>7} {:>6}",
        "target",
        "conns",
        "holds/s",
        "×ref",
        "p50 ms",
        "p99 ms",
        "CPU µs",
        "broker µs",
        "find-max/s (p99)",
        "reads/s",
        "×health",
        "rounds"
    );
    for r in &rows {
        let label = TARGETS
            .iter()
            .find(|t| t.0 == r.target)
            .map_or(r.target.as_str(), |t| t.1);
        let _ = writeln!(
            o,
            "{:<42} {:>5} {:>9} {:>6} {:>7} {:>7} {:>8} {:>9} {:>17} {:>9} {:>7} {:>6}",
            label,
            if r.conns == 0 {
                "-".to_string()
            } else if r.conns == LONE {
                "lone".to_string()
            } else {
                r.conns.to_string()
            },
            cell(r.holds_per_s, thousands),
            cell(r.holds_ratio, |v| format!("{v:.2}×")),
            cell(r.p50_ms, ms),
            cell(r.p99_ms, ms),
            cell(r.cpu_us_per_hold, |v| format!("{v:.0}")),
            cell(r.broker_cpu_us_per_hold, |v| format!("{v:.0}")),
            match (r.find_max_per_s, r.find_max_p99_ms) {
                (Some(a), Some(b)) => format!("{} ({} ms)", thousands(a), ms(b)),
                (Some(a), None) => thousands(a),
                _ => "-".to_string(),
            },
            cell(r.reads_per_s, thousands),
            cell(r.reads_ratio, |v| format!("{v:.2}×")),
            r.rounds
        );
    }
    for (name, _) in TARGETS {
        if !m.contains_key(name) {
            let _ = writeln!(o, "{name}: not run");
        }
    }
    for (name, t) in m {
        for n in &t.notes {
            let _ = writeln!(o, "{name}: {n}");
        }
    }
    let _ = writeln!(
        o,
        "holds/s, p50, p99: wrk closed loop (2 threads, a new userId per request, one SKU of \
         10^9 units, rate limit off), 201 answers only; ×ref: to {reference} at the same \
         connections. CPU µs: the server's utime+stime per 201 (/proc); broker µs: the Kafka \
         broker's (Kafka mode). lone: 200 holds one after another on one connection of \
         the idle server (curl), p50/p99 of their times. find-max: \
         flashsale-bench open loop, highest rate with reservation p99 ≤ {} ms. reads/s: wrk \
         on the availability read; ×health: to the same server's /health. Medians over the \
         rounds.",
        ms(slo_p99_ms)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const TSV: &str = "\
flashsale-embedded\thealth_per_s\t80000
flashsale-embedded\thealth_per_s\t82000
flashsale-embedded\thealth_per_s\t90000
flashsale-embedded\treads_per_s\t69600
flashsale-embedded\tholds_per_s@64\t29000
flashsale-embedded\tholds_per_s@64\t30000
flashsale-embedded\tholds_per_s@64\t31000
flashsale-embedded\tp99_ms@64\t35
flashsale-embedded\tcpu_us_per_hold@64\t41.5
flashsale-embedded\tfind_max_per_s\t14000
flashsale-embedded\tfind_max_p99_ms\t18
baseline-redis\tholds_per_s@64\t33000
baseline-redis\tholds_per_s@256\t34000
baseline-redis\treads_per_s\t51300
flashsale-kafka\tnote\tskipped: no FLASHSALE_KAFKA in .services.env
flashsale-embedded\tholds_per_s@1\t600
flashsale-embedded\tp50_ms@1\t1.5
flashsale-embedded\tp99_ms@1\t2.5
";

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let m = parse(TSV).unwrap();
        let rows = rows(&m, "flashsale-embedded");
        assert_eq!(rows[0].reads_per_s, Some(82_000.0), "the HTTP ceiling row");
        let emb = &rows[1];
        assert_eq!((emb.conns, emb.holds_per_s), (64, Some(30_000.0)));
        assert_eq!(emb.holds_ratio, Some(1.0));
        assert_eq!(emb.rounds, 3);
        assert!((emb.reads_ratio.unwrap() - 69_600.0 / 82_000.0).abs() < 1e-9);
        let redis64 = rows
            .iter()
            .find(|r| r.target == "baseline-redis" && r.conns == 64);
        assert_eq!(redis64.unwrap().holds_ratio, Some(1.1));
        let redis256 = rows
            .iter()
            .find(|r| r.target == "baseline-redis" && r.conns == 256);
        assert_eq!(redis256.unwrap().holds_ratio, None, "no reference at 256");
    }

    #[test]
    fn one_table_with_notes() {
        let m = parse(TSV).unwrap();
        let t = render(&m, "flashsale-embedded", 50.0);
        assert!(t.contains("HTTP ceiling"), "{t}");
        assert!(t.contains("30,000"), "{t}");
        assert!(t.contains("14,000 (18 ms)"), "{t}");
        assert!(
            t.contains("flashsale-kafka: skipped: no FLASHSALE_KAFKA"),
            "{t}"
        );
        assert!(t.contains("baseline-postgres: not run"), "{t}");
        assert!(t.contains(" lone "), "the lone buyer's row: {t}");
        assert!(t.contains("broker µs"), "{t}");
        assert!(parse("a\tb\n").is_err());
        assert!(parse("a\tb\tnope\n").is_err());
    }
}
