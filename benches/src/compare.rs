//! `flashsale-bench compare`: several targets' reports side by side, as ratios to one.
//!
//! Input is `NAME=FILE` pairs of JSON reports. A name may appear twice: a report with a
//! `find_max` object gives that target's sustained capacity, one without gives its
//! scenario figures (the flash-crowd run). The table shows each figure and its ratio to
//! the reference target, then the issue's targets, each marked met, not met, or n/a.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::BenchError;
use crate::html::Bars;
use crate::report::Report;

/// Conventional target names the checks look for.
pub mod names {
    /// flashsale on Kafka + Postgres.
    pub const KAFKA: &str = "flashsale-kafka";
    /// flashsale embedded.
    pub const EMBEDDED: &str = "flashsale-embedded";
    /// The PostgreSQL baseline.
    pub const POSTGRES: &str = "baseline-postgres";
    /// The Redis baseline.
    pub const REDIS: &str = "baseline-redis";
}

/// One target's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetFigures {
    /// Target name.
    pub name: String,
    /// Scenario run: answered reservations per second.
    pub reserve_per_s: Option<f64>,
    /// Scenario run: reservation p99, ms.
    pub reserve_p99_ms: Option<f64>,
    /// Scenario run: successful reservations.
    pub reserve_ok: Option<u64>,
    /// Scenario run: answered availability reads per second.
    pub availability_per_s: Option<f64>,
    /// Scenario run: availability p99, ms.
    pub availability_p99_ms: Option<f64>,
    /// Find-max: highest write rate held within the SLO.
    pub max_write_rate_held_per_s: Option<f64>,
    /// Find-max: reservation p99 at that rate, ms.
    pub p99_at_max_ms: Option<f64>,
    /// The SLO of the find-max, ms.
    pub slo_p99_ms: Option<f64>,
    /// The first rate the find-max tried.
    pub find_max_first_rate_per_s: Option<f64>,
    /// The find-max stopped at its step limit still holding (capacity is higher).
    #[serde(default)]
    pub find_max_step_limit_reached: bool,
    /// Read ceiling: availability / static handler.
    pub read_ceiling_ratio: Option<f64>,
    /// Violations over all its reports.
    pub violations: usize,
    /// Figures divided by the reference's (p99: lower is better, so > 1 means slower).
    pub ratios: BTreeMap<String, f64>,
}

/// One of the issue's targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    /// What is claimed.
    pub claim: String,
    /// Met, not met, or null when a figure is missing.
    pub met: Option<bool>,
    /// The figures behind the verdict.
    pub detail: String,
}

/// The compare JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The target the ratios are relative to.
    pub reference: String,
    /// Every target, in input order.
    pub targets: Vec<TargetFigures>,
    /// The issue's targets.
    pub checks: Vec<TargetCheck>,
}

/// Parses `NAME=FILE`.
pub fn parse_input(s: &str) -> Result<(String, PathBuf), BenchError> {
    match s.split_once('=') {
        Some((n, f)) if !n.is_empty() && !f.is_empty() => Ok((n.to_string(), PathBuf::from(f))),
        _ => Err(BenchError::Report(format!("expected NAME=FILE, got {s:?}"))),
    }
}

/// Loads the reports and builds the comparison.
pub fn load(
    inputs: &[(String, PathBuf)],
    reference: Option<&str>,
) -> Result<Comparison, BenchError> {
    let mut named: Vec<(String, Vec<Report>)> = Vec::new();
    for (name, path) in inputs {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Report(format!("{}: {e}", path.display())))?;
        let r = Report::from_json(&text)
            .map_err(|e| BenchError::Report(format!("{}: {e}", path.display())))?;
        match named.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(r),
            None => named.push((name.clone(), vec![r])),
        }
    }
    Ok(compare(&named, reference))
}

/// The comparison of already loaded reports, grouped by target name.
pub fn compare(named: &[(String, Vec<Report>)], reference: Option<&str>) -> Comparison {
    let mut targets: Vec<TargetFigures> = named.iter().map(|(n, rs)| figures(n, rs)).collect();
    let reference = reference
        .map(str::to_string)
        .or_else(|| {
            [names::KAFKA, names::EMBEDDED]
                .iter()
                .find(|n| targets.iter().any(|t| t.name == **n))
                .map(|n| n.to_string())
        })
        .or_else(|| targets.first().map(|t| t.name.clone()))
        .unwrap_or_default();
    if let Some(r) = targets.iter().find(|t| t.name == reference).cloned() {
        for t in &mut targets {
            let pairs = [
                ("reserve_per_s", t.reserve_per_s, r.reserve_per_s),
                ("reserve_p99_ms", t.reserve_p99_ms, r.reserve_p99_ms),
                (
                    "max_write_rate_held_per_s",
                    t.max_write_rate_held_per_s,
                    r.max_write_rate_held_per_s,
                ),
                (
                    "availability_per_s",
                    t.availability_per_s,
                    r.availability_per_s,
                ),
            ];
            for (k, a, b) in pairs {
                if let (Some(a), Some(b)) = (a, b) {
                    if b > 0.0 {
                        t.ratios.insert(k.to_string(), a / b);
                    }
                }
            }
        }
    }
    let checks = checks(&targets);
    Comparison {
        reference,
        targets,
        checks,
    }
}

fn figures(name: &str, reports: &[Report]) -> TargetFigures {
    let mut f = TargetFigures {
        name: name.to_string(),
        violations: reports.iter().map(|r| r.violations.len()).sum(),
        ..TargetFigures::default()
    };
    let scenario = reports
        .iter()
        .find(|r| r.find_max.is_none())
        .or_else(|| reports.first());
    if let Some(r) = scenario {
        let res = r.op("reserve");
        let av = r.op("availability");
        f.reserve_per_s = Some(res.throughput_per_s);
        f.reserve_p99_ms = Some(res.latency_ms.p99);
        f.reserve_ok = Some(res.ok);
        if av.sent > 0 {
            f.availability_per_s = Some(av.throughput_per_s);
            f.availability_p99_ms = Some(av.latency_ms.p99);
        }
    }
    if let Some(fm) = reports.iter().find_map(|r| r.find_max.as_ref()) {
        f.slo_p99_ms = Some(fm.slo_p99_ms);
        f.find_max_first_rate_per_s = fm.steps.first().map(|s| s.write_rate_per_s);
        f.find_max_step_limit_reached = fm.step_limit_reached;
        f.max_write_rate_held_per_s = fm.max_rate_held_per_s;
        f.p99_at_max_ms = fm.max_rate_held_per_s.and_then(|m| {
            fm.steps
                .iter()
                .find(|s| s.held && s.write_rate_per_s == m)
                .map(|s| s.reserve_p99_ms)
        });
    }
    f.read_ceiling_ratio = reports
        .iter()
        .find_map(|r| r.read_ceiling.as_ref().map(|c| c.ratio));
    f
}

fn checks(targets: &[TargetFigures]) -> Vec<TargetCheck> {
    let get = |n: &str| targets.iter().find(|t| t.name == n);
    let mut out = Vec::new();

    // Capacity claims compare sustained write rates within the same p99 SLO, so they need
    // a find-max of both targets: a fixed-rate scenario run answers at the offered rate
    // whenever the server keeps up, and cannot show a 10× difference.
    let capacity = |a: &str, b: &str, factor: f64, claim: String| -> TargetCheck {
        let (Some(x), Some(y)) = (get(a), get(b)) else {
            return TargetCheck {
                claim,
                met: None,
                detail: "needs both targets".into(),
            };
        };
        let (Some(slo), Some(_)) = (x.slo_p99_ms, y.slo_p99_ms) else {
            return TargetCheck {
                claim,
                met: None,
                detail: "needs a --find-max report of both targets".into(),
            };
        };
        let show = |t: &TargetFigures| match (t.max_write_rate_held_per_s, t.p99_at_max_ms) {
            (Some(r), Some(p)) => format!(
                "{}{r:.0}/s (p99 {p:.2} ms)",
                if t.find_max_step_limit_reached {
                    "≥ "
                } else {
                    ""
                }
            ),
            _ => format!(
                "< {:.0}/s (no step held)",
                t.find_max_first_rate_per_s.unwrap_or(0.0)
            ),
        };
        // What is known of each capacity: a lower bound (the best rate held, or 0) and an
        // upper bound (the first failed rate is above it; infinite when the step limit was
        // reached; the first rate tried when nothing held).
        let bounds = |t: &TargetFigures| -> (f64, f64) {
            match t.max_write_rate_held_per_s {
                Some(r) if t.find_max_step_limit_reached => (r, f64::INFINITY),
                Some(r) => (r, r),
                None => (0.0, t.find_max_first_rate_per_s.unwrap_or(0.0)),
            }
        };
        let ((x_lo, x_hi), (y_lo, y_hi)) = (bounds(x), bounds(y));
        let met = if x_lo > 0.0 && x_lo >= factor * y_hi {
            Some(true)
        } else if x_hi < factor * y_lo {
            Some(false)
        } else if x_hi.is_finite()
            && y_hi.is_finite()
            && x.max_write_rate_held_per_s.is_some()
            && y.max_write_rate_held_per_s.is_some()
        {
            // Both measured to the point of failure: the measured rates decide.
            Some(x_lo >= factor * y_lo)
        } else {
            None
        };
        TargetCheck {
            claim,
            met,
            detail: format!(
                "sustained writes/s within p99 ≤ {slo} ms: {} vs {}{}{}",
                show(x),
                show(y),
                if x_lo > 0.0 && y_lo > 0.0 {
                    format!(", ×{:.2}", x_lo / y_lo)
                } else {
                    String::new()
                },
                if met.is_none() {
                    " (inconclusive: a search held nothing or hit its step limit; adjust \
                     --find-max-start / --find-max-steps)"
                } else {
                    ""
                }
            ),
        }
    };
    out.push(capacity(
        names::KAFKA,
        names::POSTGRES,
        10.0,
        format!(
            "{} ≥ 10× {} hot-SKU reservations/s at an equal or lower p99",
            names::KAFKA,
            names::POSTGRES
        ),
    ));
    out.push(capacity(
        names::EMBEDDED,
        names::REDIS,
        1.0,
        format!("{} ≥ {} reservations/s", names::EMBEDDED, names::REDIS),
    ));
    for n in [names::EMBEDDED, names::KAFKA] {
        if let Some(t) = get(n) {
            let claim =
                format!("{n}: availability reads ≥ 0.9× the static /health handler's requests/s");
            out.push(match t.read_ceiling_ratio {
                Some(r) => TargetCheck {
                    claim,
                    met: Some(r >= 0.9),
                    detail: format!("ratio {r:.2}"),
                },
                None => TargetCheck {
                    claim,
                    met: None,
                    detail: "no read ceiling measured".into(),
                },
            });
        }
    }
    out
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.prec$}"))
}

fn ratio(t: &TargetFigures, k: &str) -> String {
    t.ratios
        .get(k)
        .map_or("-".to_string(), |r| format!("×{r:.2}"))
}

/// The ratio table.
pub fn render(c: &Comparison) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "side by side, ratios relative to {}", c.reference);
    let _ = writeln!(
        o,
        "{:<20} {:>11} {:>7} {:>11} {:>7} {:>12} {:>7} {:>10} {:>11} {:>8} {:>5}",
        "target",
        "reserve/s",
        "ratio",
        "p99 ms",
        "ratio",
        "max writes/s",
        "ratio",
        "p99@max",
        "avail/s",
        "reads/",
        "viol"
    );
    let _ = writeln!(
        o,
        "{:<20} {:>11} {:>7} {:>11} {:>7} {:>12} {:>7} {:>10} {:>11} {:>8} {:>5}",
        "", "(scenario)", "", "(scenario)", "", "(at SLO)", "", "ms", "", "static", ""
    );
    for t in &c.targets {
        let _ = writeln!(
            o,
            "{:<20} {:>11} {:>7} {:>11} {:>7} {:>12} {:>7} {:>10} {:>11} {:>8} {:>5}",
            t.name,
            opt(t.reserve_per_s, 1),
            ratio(t, "reserve_per_s"),
            opt(t.reserve_p99_ms, 2),
            ratio(t, "reserve_p99_ms"),
            match t.max_write_rate_held_per_s {
                Some(r) if t.find_max_step_limit_reached => format!("≥{r:.0}"),
                Some(r) => format!("{r:.0}"),
                None if t.slo_p99_ms.is_some() =>
                    format!("<{:.0}", t.find_max_first_rate_per_s.unwrap_or(0.0)),
                None => "-".to_string(),
            },
            ratio(t, "max_write_rate_held_per_s"),
            opt(t.p99_at_max_ms, 2),
            opt(t.availability_per_s, 0),
            opt(t.read_ceiling_ratio, 2),
            t.violations
        );
    }
    let _ = writeln!(o, "targets:");
    for ch in &c.checks {
        let mark = match ch.met {
            Some(true) => "met    ",
            Some(false) => "NOT MET",
            None => "n/a    ",
        };
        let _ = writeln!(o, "  [{mark}] {} — {}", ch.claim, ch.detail);
    }
    o
}

/// Bar-chart data for the compare page.
pub fn bars(c: &Comparison) -> Vec<Bars> {
    let pick = |f: fn(&TargetFigures) -> Option<f64>| -> Vec<(String, f64)> {
        c.targets
            .iter()
            .filter_map(|t| f(t).map(|v| (t.name.clone(), v)))
            .collect()
    };
    let mut out = vec![
        Bars {
            title: "Reservations answered per second (scenario)",
            y_desc: "per second",
            data: pick(|t| t.reserve_per_s),
        },
        Bars {
            title: "Reservation p99, ms (scenario)",
            y_desc: "ms",
            data: pick(|t| t.reserve_p99_ms),
        },
        Bars {
            title: "Highest write rate held within the p99 SLO",
            y_desc: "writes/s",
            data: pick(|t| t.max_write_rate_held_per_s),
        },
    ];
    out.retain(|b| !b.data.is_empty());
    out
}

/// Links to the per-target HTML pages that sit next to their JSON (`x.json` → `x.html`),
/// relative to `html_dir`.
pub fn links(inputs: &[(String, PathBuf)], html_dir: &Path) -> Vec<(String, String)> {
    inputs
        .iter()
        .filter_map(|(n, p)| {
            let h = p.with_extension("html");
            h.exists().then(|| {
                let href = h
                    .strip_prefix(html_dir)
                    .map(Path::to_path_buf)
                    .unwrap_or(h.clone());
                let file = h
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (format!("{n}: {file}"), href.to_string_lossy().into_owned())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;
    use crate::report::{FindMaxReport, FindMaxStep};

    fn with(label: &str, reserve_per_s: f64, p99: f64, max: Option<f64>) -> Vec<Report> {
        let mut a = sample_report();
        a.violations.clear();
        a.scenario.label = label.into();
        let op = a.operations.get_mut("reserve").unwrap();
        op.throughput_per_s = reserve_per_s;
        op.latency_ms.p99 = p99;
        let mut out = vec![a.clone()];
        if let Some(m) = max {
            let mut b = a;
            b.find_max = Some(FindMaxReport {
                slo_p99_ms: 50.0,
                max_failure_share: 0.001,
                max_rate_held_per_s: Some(m),
                step_limit_reached: false,
                steps: vec![FindMaxStep {
                    write_rate_per_s: m,
                    reserve_throughput_per_s: m,
                    reserve_p99_ms: p99,
                    failure_share: 0.0,
                    held: true,
                }],
            });
            out.push(b);
        }
        out
    }

    #[test]
    fn ratios_are_relative_to_kafka_and_checks_read_them() {
        let named = vec![
            (
                names::KAFKA.to_string(),
                with("k", 1000.0, 5.0, Some(20_000.0)),
            ),
            (
                names::EMBEDDED.to_string(),
                with("e", 1000.0, 2.0, Some(30_000.0)),
            ),
            (
                names::POSTGRES.to_string(),
                with("p", 500.0, 80.0, Some(1_000.0)),
            ),
            (
                names::REDIS.to_string(),
                with("r", 1000.0, 3.0, Some(40_000.0)),
            ),
        ];
        let c = compare(&named, None);
        assert_eq!(c.reference, names::KAFKA);
        let pg = c
            .targets
            .iter()
            .find(|t| t.name == names::POSTGRES)
            .unwrap();
        assert_eq!(pg.ratios["max_write_rate_held_per_s"], 0.05);
        assert_eq!(pg.ratios["reserve_p99_ms"], 16.0);
        assert_eq!(c.checks[0].met, Some(true), "{:?}", c.checks[0]);
        assert_eq!(c.checks[1].met, Some(false), "{:?}", c.checks[1]);
        assert!(
            c.checks[0].detail.contains("×20.00"),
            "{}",
            c.checks[0].detail
        );
        let t = render(&c);
        assert!(t.contains("baseline-postgres"));
        assert!(t.contains("NOT MET"));
        assert_eq!(bars(&c).len(), 3);
    }

    #[test]
    fn capacity_bounds_decide_or_say_inconclusive() {
        let none_held = |label: &str| {
            let mut v = with(label, 500.0, 80.0, Some(500.0));
            let fm = v[1].find_max.as_mut().unwrap();
            fm.max_rate_held_per_s = None;
            fm.steps[0].held = false;
            v
        };
        let capped = |label: &str, m: f64| {
            let mut v = with(label, 500.0, 3.0, Some(m));
            v[1].find_max.as_mut().unwrap().step_limit_reached = true;
            v
        };
        // Postgres held nothing from 500/s: 650/s is not provably 10× more.
        let c = compare(
            &[
                (names::KAFKA.to_string(), with("k", 600.0, 5.0, Some(650.0))),
                (names::POSTGRES.to_string(), none_held("p")),
            ],
            None,
        );
        assert_eq!(c.checks[0].met, None, "{:?}", c.checks[0]);
        // ...but 6000/s is.
        let c = compare(
            &[
                (
                    names::KAFKA.to_string(),
                    with("k", 600.0, 5.0, Some(6000.0)),
                ),
                (names::POSTGRES.to_string(), none_held("p")),
            ],
            None,
        );
        assert_eq!(c.checks[0].met, Some(true), "{:?}", c.checks[0]);
        // Embedded held nothing from 500/s, Redis at least 8389/s: not met.
        let c = compare(
            &[
                (names::EMBEDDED.to_string(), none_held("e")),
                (names::REDIS.to_string(), capped("r", 8389.0)),
            ],
            None,
        );
        assert_eq!(c.checks[1].met, Some(false), "{:?}", c.checks[1]);
        assert!(render(&c).contains("≥8389"));
        assert!(render(&c).contains("<500"));
        // Both searches hit their step limit at the same rate: nothing can be said.
        let c = compare(
            &[
                (names::EMBEDDED.to_string(), capped("e", 512.0)),
                (names::REDIS.to_string(), capped("r", 512.0)),
            ],
            None,
        );
        assert_eq!(c.checks[1].met, None, "{:?}", c.checks[1]);
    }

    #[test]
    fn embedded_is_the_reference_when_kafka_is_missing() {
        let named = vec![
            (names::POSTGRES.to_string(), with("p", 500.0, 80.0, None)),
            (names::EMBEDDED.to_string(), with("e", 1000.0, 2.0, None)),
        ];
        let c = compare(&named, None);
        assert_eq!(c.reference, names::EMBEDDED);
        assert_eq!(c.checks[0].met, None, "no kafka target");
        assert_eq!(c.checks[1].met, None, "no redis target");
        // Scenario runs alone cannot judge capacity.
        let named = vec![
            (names::EMBEDDED.to_string(), with("e", 1000.0, 2.0, None)),
            (names::REDIS.to_string(), with("r", 500.0, 3.0, Some(800.0))),
        ];
        let c = compare(&named, None);
        assert_eq!(c.checks[1].met, None, "{:?}", c.checks[1]);
        assert!(parse_input("a=b.json").is_ok());
        assert!(parse_input("nameonly").is_err());
    }
}
