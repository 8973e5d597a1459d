//! `--find-max`: the highest write rate a target holds within a p99 SLO.
//!
//! The search is pure ([`Search`]): multiply the rate by a factor while steps hold, then
//! bisect between the last rate that held and the first that failed, a bounded number of
//! times. Each step is a full run (fresh sale, fresh SKUs) of the scenario at that write
//! rate, with its read ratio kept, no flash crowd (a burst would measure the crowd, not a
//! sustained rate) and the warm-up only before the first step. A failing step is run
//! once more before it counts (`confirm_failures`): on a shared 2-core machine one
//! hiccup in a few seconds of samples can move a p99.

use crate::client::ApiClient;
use crate::error::BenchError;
use crate::report::{FindMaxReport, FindMaxStep, OpReport};
use crate::runner::{run, RunOptions, RunOutput};
use crate::scenario::Scenario;

/// Bounds of the search.
#[derive(Debug, Clone, PartialEq)]
pub struct FindMaxOptions {
    /// First write rate tried.
    pub start_rate_per_s: f64,
    /// Rate multiplier between steps while they hold (> 1).
    pub factor: f64,
    /// Seconds per step.
    pub step_secs: f64,
    /// Most growth steps.
    pub max_steps: u32,
    /// Bisection steps after the first failure.
    pub refine_steps: u32,
    /// Repeats of a failing step before it counts as failed (one noisy hiccup in a short
    /// step should not end the search).
    pub confirm_failures: u32,
    /// p99 bound of reservations, ms.
    pub slo_p99_ms: f64,
    /// Highest share of failed or shed reservations that still holds.
    pub max_failure_share: f64,
}

/// Whether a step held: reservation p99 within the SLO and failures within bound.
pub fn step_holds(reserve: &OpReport, failure_share: f64, o: &FindMaxOptions) -> bool {
    reserve.sent > 0
        && reserve.latency_ms.p99 <= o.slo_p99_ms
        && failure_share <= o.max_failure_share
}

/// The pure search state.
#[derive(Debug, Clone)]
pub struct Search {
    opts: FindMaxOptions,
    held: Option<f64>,
    failed: Option<f64>,
    growth_steps: u32,
    refine_steps: u32,
}

impl Search {
    /// A search with `opts`.
    pub fn new(opts: FindMaxOptions) -> Self {
        Self {
            opts,
            held: None,
            failed: None,
            growth_steps: 0,
            refine_steps: 0,
        }
    }

    /// The first rate to try.
    pub fn first(&self) -> f64 {
        self.opts.start_rate_per_s
    }

    /// Notes the verdict for `rate` and returns the next rate, or `None` when done.
    pub fn next(&mut self, rate: f64, held: bool) -> Option<f64> {
        if held {
            self.held = Some(self.held.map_or(rate, |h| h.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
        match (self.held, self.failed) {
            (_, None) => {
                self.growth_steps += 1;
                (self.growth_steps < self.opts.max_steps)
                    .then_some((rate * self.opts.factor).round())
            }
            (None, Some(_)) => None, // even the first rate failed
            (Some(lo), Some(hi)) => {
                if self.refine_steps >= self.opts.refine_steps || hi - lo < lo * 0.05 {
                    return None;
                }
                self.refine_steps += 1;
                Some(((lo + hi) / 2.0).round())
            }
        }
    }

    /// The highest rate that held so far.
    pub fn best(&self) -> Option<f64> {
        self.held
    }

    /// True when the search ended on its step limit with every step holding: the
    /// capacity is above [`Search::best`].
    pub fn hit_step_limit(&self) -> bool {
        self.held.is_some() && self.failed.is_none()
    }
}

/// Runs the search; returns the report of the best step that held (or of the last step)
/// with the `find_max` object attached.
pub async fn find_max(
    client: &ApiClient,
    scenario: &Scenario,
    run_opts: &RunOptions,
    o: &FindMaxOptions,
) -> Result<RunOutput, BenchError> {
    let mut search = Search::new(o.clone());
    let mut rate = search.first();
    let mut steps = Vec::new();
    let mut best: Option<RunOutput> = None;
    let mut last: Option<RunOutput>;
    let mut first = true;
    loop {
        let s = Scenario {
            write_rate_per_s: rate,
            read_rate_per_s: scenario
                .read_rate_per_s
                .map(|r| r * rate / scenario.write_rate_per_s.max(1e-9)),
            duration_secs: o.step_secs,
            warmup_secs: if first { scenario.warmup_secs } else { 0.0 },
            flash_crowd_ms: 0,
            ..scenario.clone()
        };
        first = false;
        // The read ceiling, if asked for, runs once after the search, not per step.
        let step_opts = RunOptions {
            read_ceiling: None,
            ..run_opts.clone()
        };
        let mut attempts = 0;
        let (out, held) = loop {
            eprintln!("find-max: step at {rate:.0} writes/s for {} s", o.step_secs);
            let out = run(client, &s, &step_opts).await?;
            let reserve = out.report.op("reserve");
            let failure_share = reserve.failure_share();
            let held = step_holds(&reserve, failure_share, o) && out.report.violations.is_empty();
            steps.push(FindMaxStep {
                write_rate_per_s: rate,
                reserve_throughput_per_s: reserve.throughput_per_s,
                reserve_p99_ms: reserve.latency_ms.p99,
                failure_share,
                held,
            });
            attempts += 1;
            if held || !out.report.violations.is_empty() || attempts > o.confirm_failures {
                break (out, held);
            }
            eprintln!("find-max: {rate:.0} writes/s failed; repeating it once to confirm");
        };
        let violated = !out.report.violations.is_empty();
        if held
            && best
                .as_ref()
                .is_none_or(|b| b.report.scenario.scenario.write_rate_per_s < rate)
        {
            best = Some(out.clone());
        }
        last = Some(out);
        if violated {
            eprintln!("find-max: violations found, stopping the search");
            break;
        }
        match search.next(rate, held) {
            Some(r) => rate = r,
            None => break,
        }
    }
    // A run with violations is the one to report, whatever its rate.
    let violated = last
        .as_ref()
        .is_some_and(|l| !l.report.violations.is_empty());
    let mut out = match (violated, best, last) {
        (false, Some(b), _) => b,
        (_, _, Some(l)) => l,
        (_, Some(b), None) => b,
        (_, None, None) => return Err(BenchError::Setup("find-max ran no step".into())),
    };
    if let Some((concurrency, secs)) = run_opts.read_ceiling {
        if secs > 0.0 {
            let sku = out.charts.sku_ids[0].clone();
            out.report.read_ceiling =
                Some(crate::runner::read_ceiling(client, &sku, concurrency, secs).await);
        }
    }
    out.report.find_max = Some(FindMaxReport {
        slo_p99_ms: o.slo_p99_ms,
        max_failure_share: o.max_failure_share,
        max_rate_held_per_s: search.best(),
        step_limit_reached: search.hit_step_limit(),
        steps,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LatencySummary;

    fn opts() -> FindMaxOptions {
        FindMaxOptions {
            start_rate_per_s: 100.0,
            factor: 2.0,
            step_secs: 1.0,
            max_steps: 10,
            refine_steps: 2,
            confirm_failures: 1,
            slo_p99_ms: 50.0,
            max_failure_share: 0.001,
        }
    }

    /// Drives the search against a target that holds every rate up to `capacity`.
    fn search_with_capacity(capacity: f64) -> (Vec<f64>, Option<f64>) {
        let mut s = Search::new(opts());
        let mut rate = s.first();
        let mut tried = vec![rate];
        while let Some(r) = s.next(rate, rate <= capacity) {
            rate = r;
            tried.push(rate);
            assert!(tried.len() < 50, "the search is bounded");
        }
        (tried, s.best())
    }

    #[test]
    fn grows_then_bisects() {
        let (tried, best) = search_with_capacity(1000.0);
        assert_eq!(
            tried,
            vec![100.0, 200.0, 400.0, 800.0, 1600.0, 1200.0, 1000.0]
        );
        assert_eq!(best, Some(1000.0));
    }

    #[test]
    fn stops_when_the_first_step_fails() {
        let (tried, best) = search_with_capacity(10.0);
        assert_eq!(tried, vec![100.0]);
        assert_eq!(best, None);
    }

    #[test]
    fn stops_after_max_steps_when_everything_holds() {
        let (tried, best) = search_with_capacity(f64::INFINITY);
        assert_eq!(tried.len(), 10);
        assert_eq!(best, Some(100.0 * 2f64.powi(9)));
        let mut s = Search::new(opts());
        let mut rate = s.first();
        while let Some(r) = s.next(rate, true) {
            rate = r;
        }
        assert!(s.hit_step_limit());
    }

    #[test]
    fn holding_needs_p99_and_failures_within_bounds() {
        let mut r = OpReport::empty();
        r.sent = 1000;
        r.latency_ms = LatencySummary {
            p99: 40.0,
            ..LatencySummary::default()
        };
        assert!(step_holds(&r, 0.0005, &opts()));
        assert!(!step_holds(&r, 0.002, &opts()));
        r.latency_ms.p99 = 51.0;
        assert!(!step_holds(&r, 0.0, &opts()));
        assert!(
            !step_holds(&OpReport::empty(), 0.0, &opts()),
            "nothing sent holds nothing"
        );
    }
}
