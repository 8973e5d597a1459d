//! The single-partition ceiling of `profile`: one hot SKU, reservation p99 ≤ 50 ms, on a
//! fresh deployment pinned like the cost runs (see the module doc of `profile`).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Instant;

use crate::client::ApiClient;
use crate::error::BenchError;
use crate::find_max::{find_max, FindMaxOptions};
use crate::plan::ProfileRun;

use super::deploy::Deployment;
use super::{
    answered, base_scenario, busy_share, clean_run, cost_per_request, idle_rates, measured,
    options, settle, Kind, ProfileArgs,
};

/// The hold run after the ceiling search offers this share of the ceiling: the costs
/// of a deployment running near its limit, which is what `plan --headroom 1` predicts.
pub const CEILING_AT_SHARE: f64 = 0.9;

/// The ceiling search starts at this share of the highest hold rate the cost runs
/// answered cleanly on the same pinned core (a rate the deployment is known to hold)...
pub const CEILING_START_SHARE: f64 = 0.8;
/// ...and grows by this factor per step...
pub const CEILING_FACTOR: f64 = 1.2;
/// ...for at most this many steps (to 0.8 × 1.2¹⁰ ≈ 5× the measured rate)...
pub const CEILING_STEPS: u32 = 10;
/// ...then bisects this many times (to within ~2 %).
pub const CEILING_BISECTIONS: u32 = 4;

/// The first rate of the ceiling search: `--ceiling-start`, else
/// [`CEILING_START_SHARE`] of the highest hold rate the cost runs answered cleanly
/// (`measured_max`), else 1,000/s; within 100-50,000/s. Derived from a measurement, not a
/// fixed grid: two searches report the same figure only if they hold the same rates.
pub fn ceiling_start(given: Option<f64>, measured_max: Option<f64>) -> f64 {
    let derived = measured_max
        .filter(|m| *m > 0.0)
        .map_or(1000.0, |m| CEILING_START_SHARE * m);
    given.unwrap_or(derived).clamp(100.0, 50_000.0).round()
}

/// The search's options from `start`: the plan-check's own procedure (×1.2 steps, 4
/// bisections, a failing step repeated once), so the profile and the check measure the
/// same thing.
pub fn ceiling_options(start: f64) -> FindMaxOptions {
    FindMaxOptions {
        start_rate_per_s: start,
        factor: CEILING_FACTOR,
        step_secs: 3.0,
        max_steps: CEILING_STEPS,
        refine_steps: CEILING_BISECTIONS,
        confirm_failures: 1,
        slo_p99_ms: 50.0,
        max_failure_share: 0.001,
    }
}

/// The single-partition ceiling on `client`: one SKU, reservation p99 ≤ 50 ms. Returns
/// the rate held and whether the search ended on its step limit (a lower bound).
pub(super) async fn ceiling(
    mode: &str,
    client: &ApiClient,
    start: f64,
) -> Result<Option<(f64, bool)>, BenchError> {
    let s = base_scenario(3.0);
    let o = ceiling_options(start);
    let t = Instant::now();
    let opts = options(&format!("{mode} ceiling"), "PX");
    let mut out = find_max(client, &s, &opts, &o).await?;
    if out
        .report
        .find_max
        .as_ref()
        .is_none_or(|f| f.max_rate_held_per_s.is_none())
    {
        // Even the first rate failed: once more from a quarter of it, ×1.5 (so the
        // search reaches it again, brackets the ceiling and bisects).
        let lower = FindMaxOptions {
            start_rate_per_s: (o.start_rate_per_s / 4.0).max(10.0),
            factor: 1.5,
            ..o.clone()
        };
        out = find_max(client, &s, &opts, &lower).await?;
    }
    let mut fm = out.report.find_max.clone();
    // Every step held (the step limit ended it): go on from the last rate held, once,
    // so a deployment far above its cost runs' rates is not reported at the limit.
    if let Some(last) = fm
        .as_ref()
        .filter(|f| f.step_limit_reached)
        .and_then(|f| f.max_rate_held_per_s)
    {
        let more = FindMaxOptions {
            start_rate_per_s: (last * o.factor).round(),
            ..o.clone()
        };
        let next = find_max(client, &s, &opts, &more).await?;
        if let Some(f) = next.report.find_max.as_ref() {
            if f.max_rate_held_per_s.is_some_and(|h| h > last) {
                fm = Some(f.clone());
            } else if let Some(prev) = fm.as_mut() {
                // The next step failed: `last` is the ceiling, not a lower bound.
                prev.step_limit_reached = false;
            }
        }
    }
    let held = fm.as_ref().and_then(|f| f.max_rate_held_per_s);
    eprintln!(
        "profile: {mode} single-partition ceiling (pinned): {} in {:.0} s",
        held.map_or("no rate held".into(), |h| format!("{h:.0} holds/s")),
        t.elapsed().as_secs_f64()
    );
    // Every step held: the ceiling is above the last one.
    Ok(held.map(|h| (h, fm.as_ref().is_some_and(|f| f.step_limit_reached))))
}

/// Pure: whether a ceiling search should be run once more: it held no rate, or ended
/// below the highest hold rate the cost runs answered cleanly on the same pinned core
/// (`hold_max`). One slow moment (a table growing, a page fault storm) fails a 3-second
/// step's p99, so a single search can end far below what the deployment holds; a
/// second one from the same start tells such a stall from a real limit.
pub fn search_again(search: Option<(f64, bool)>, hold_max: Option<f64>) -> bool {
    match (search, hold_max.filter(|m| *m > 0.0)) {
        (None, _) => true,
        (Some((h, _)), Some(m)) => h < m,
        (Some(_), None) => false,
    }
}

/// The higher of two searches' ceilings.
fn higher(a: Option<(f64, bool)>, b: Option<(f64, bool)>) -> Option<(f64, bool)> {
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 > x.0 { y } else { x }),
        (x, y) => x.or(y),
    }
}

/// What the ceiling's deployment gave: the ceiling (rate, lower bound), and the CPU µs
/// per hold of each of its processes in a hold run at [`CEILING_AT_SHARE`] of it (empty
/// when there was no ceiling or that run fell behind), with that run.
#[derive(Debug, Default)]
pub(super) struct AtCeiling {
    pub ceiling: Option<(f64, bool)>,
    pub hold_us: BTreeMap<String, f64>,
    pub run: Option<ProfileRun>,
}

/// The ceiling on a fresh deployment made by `start` (pinned like the cost runs: the
/// deployment on its core, the harness on its own), searched from the highest hold rate
/// the cost runs answered cleanly (`hold_max`); then one hold run at
/// [`CEILING_AT_SHARE`] of the ceiling, whose CPU per hold is the hold cost near
/// saturation.
pub(super) async fn ceiling_on(
    args: &ProfileArgs,
    mode: &str,
    hold_max: Option<f64>,
    start: impl Future<Output = Result<Deployment, BenchError>>,
) -> Result<AtCeiling, BenchError> {
    if args.no_ceiling {
        return Ok(AtCeiling::default());
    }
    let dep = start.await?;
    settle(mode, &dep.client).await?;
    let w = &dep.watched;
    let idle = idle_rates(w).await;
    let from = ceiling_start(args.ceiling_start, hold_max);
    let mut c = ceiling(mode, &dep.client, from).await?;
    if search_again(c, hold_max) {
        eprintln!(
            "profile: {mode} ceiling: below {:.0} holds/s, a rate the cost runs answered cleanly: searching once more (the higher one counts)",
            hold_max.unwrap_or_default()
        );
        c = higher(c, ceiling(mode, &dep.client, from).await?);
    }
    let mut at = AtCeiling {
        ceiling: c,
        ..AtCeiling::default()
    };
    let Some((top, _)) = c else {
        return Ok(at);
    };
    let rate = (CEILING_AT_SHARE * top).round().max(1.0);
    let secs = args.run_secs.clamp(2.0, 60.0);
    let m = measured(
        &dep.client,
        w,
        &Kind::Hold.scenario(rate, secs),
        &Kind::Hold.options(mode),
    )
    .await?;
    let n = answered(&m.out, "reserve");
    let p99 = m.out.report.op("reserve").latency_ms.p99;
    let clean = clean_run(n, rate * secs, p99);
    let own: Vec<(f64, f64)> = w
        .iter()
        .enumerate()
        .filter(|(_, x)| x.own)
        .map(|(i, _)| (m.cpu[i], idle[i]))
        .collect();
    let us: BTreeMap<String, f64> = w
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let us = cost_per_request(m.cpu[i], idle[i], m.wall, 0.0, n).unwrap_or(0.0);
            (x.name.clone(), us)
        })
        .collect();
    eprintln!(
        "profile: {mode} hold at {rate:.0}/s ({:.0} % of the ceiling): {n} answered, p99 {p99:.1} ms, µs per hold {}{}",
        CEILING_AT_SHARE * 100.0,
        us.iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        if clean { "" } else { " (fell behind: not used)" }
    );
    at.run = Some(ProfileRun {
        what: "hold at ceiling".into(),
        answered: n,
        secs: m.wall,
        p99_ms: p99,
        cpu_secs: w
            .iter()
            .zip(&m.cpu)
            .zip(&idle)
            .map(|((x, c), i)| (x.name.clone(), c - i * m.wall))
            .collect(),
        rate_per_s: rate,
        busy_cores: busy_share(&own, m.wall, secs, 1.0),
        used: clean,
    });
    if clean {
        at.hold_us = us;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_search_starts_from_the_measured_rate() {
        // The cost runs held 5,000/s cleanly: start at 4,000/s.
        assert_eq!(ceiling_start(None, Some(5000.0)), 4000.0);
        assert_eq!(ceiling_start(Some(3000.0), Some(5000.0)), 3000.0);
        assert_eq!(ceiling_start(None, None), 1000.0);
        assert_eq!(ceiling_start(None, Some(0.0)), 1000.0);
        assert_eq!(ceiling_start(None, Some(1e9)), 50_000.0);
        assert_eq!(ceiling_start(None, Some(10.0)), 100.0);
    }

    #[test]
    fn a_search_below_a_rate_the_cost_runs_held_is_run_once_more() {
        // The search ended at 6,469/s but the cost runs answered 10,000/s cleanly.
        assert!(search_again(Some((6469.0, false)), Some(10_000.0)));
        assert!(search_again(None, Some(900.0)));
        assert!(search_again(None, None));
        // Above the cost runs' rates: it stands.
        assert!(!search_again(Some((7700.0, false)), Some(1208.0)));
        assert!(!search_again(Some((7700.0, true)), None));
        assert_eq!(
            higher(Some((6469.0, false)), Some((9800.0, false))),
            Some((9800.0, false))
        );
        assert_eq!(higher(Some((6469.0, false)), None), Some((6469.0, false)));
        assert_eq!(higher(None, Some((1.0, true))), Some((1.0, true)));
    }

    #[test]
    fn the_ceiling_search_reaches_five_times_its_start() {
        let o = ceiling_options(1000.0);
        let top = o.start_rate_per_s * o.factor.powi(o.max_steps as i32);
        assert!((6100.0..6300.0).contains(&top), "{top}");
        assert_eq!(o.slo_p99_ms, 50.0);
        assert_eq!(o.refine_steps, 4);
    }
}
