//! The walk of `profile`'s cost runs towards the rate that keeps the deployment busy
//! (pure; see the module doc of `profile` for why).

/// A cost run whose busy share is this close to the goal ends the walk.
pub const BUSY_TOLERANCE: f64 = 0.1;
/// Most a cost run's rate changes from the previous one's, either way...
pub const MAX_RATE_STEP: f64 = 4.0;
/// ...and upwards once it extrapolates from two runs (a cost that falls fast with the
/// load makes the extrapolation jump far; the reads would overrun the one-core harness).
pub const MAX_LATER_STEP: f64 = 2.5;
/// Lowest exponent of `busy ∝ rate^α` the walk extrapolates with (a lower one from two
/// noisy runs would jump far past the goal).
pub const MIN_EXPONENT: f64 = 0.6;
/// A clean cost run answered at least this share of the requests it offered...
pub const CLEAN_ANSWERED: f64 = 0.95;
/// ...with a p99 of at most this, ms.
pub const CLEAN_P99_MS: f64 = 500.0;

/// Whether a cost run measured the deployment at the rate it was offered: nearly every
/// request answered ([`CLEAN_ANSWERED`]) within [`CLEAN_P99_MS`]. Past that the
/// deployment or the harness fell behind, and the CPU per answered request is not the
/// cost at that rate.
pub fn clean_run(answered: u64, offered: f64, p99_ms: f64) -> bool {
    answered as f64 >= CLEAN_ANSWERED * offered && p99_ms <= CLEAN_P99_MS
}

/// The walk of the cost runs of one request type towards the busy goal (pure).
///
/// After a clean run short of the goal, the next rate extrapolates `busy ∝ rate^α`: α
/// from the last two clean runs (the cost per request falls with the load, so busy grows
/// slower than the rate), between [`MIN_EXPONENT`] and 1 (1 on the first run), the step
/// within ×/÷ [`MAX_RATE_STEP`] (× [`MAX_LATER_STEP`] up after the first run), under the
/// lowest rate that was not clean and at most
/// `max_rate`. After a run that was not clean, the next rate is halfway (geometric)
/// between the highest clean rate and it, or a quarter of it when none was clean. It
/// ends when a clean run is within [`BUSY_TOLERANCE`] of the goal or the next rate is
/// within 5 % of one tried.
#[derive(Debug, Clone)]
pub struct Walk {
    goal: f64,
    max_rate: f64,
    /// Rate, busy share, clean, per run so far.
    runs: Vec<(f64, f64, bool)>,
}

impl Walk {
    /// A walk towards `goal` (a share of the deployment's core(s)).
    pub fn new(goal: f64, max_rate: f64) -> Self {
        Self {
            goal,
            max_rate,
            runs: Vec::new(),
        }
    }

    /// Notes a run; returns the next rate, or `None` when done.
    pub fn next(&mut self, rate: f64, busy: f64, clean: bool) -> Option<f64> {
        let prev_clean = self.runs.iter().rev().find(|r| r.2).copied();
        self.runs.push((rate, busy, clean));
        let lowest_unclean = self
            .runs
            .iter()
            .filter(|r| !r.2)
            .map(|r| r.0)
            .fold(f64::INFINITY, f64::min);
        let next = if clean {
            if (busy - self.goal).abs() <= BUSY_TOLERANCE {
                return None;
            }
            let alpha = match prev_clean {
                Some((r0, b0, _)) if r0 > 0.0 && b0 > 0.0 && busy > 0.0 && r0 != rate => {
                    ((busy / b0).ln() / (rate / r0).ln()).clamp(MIN_EXPONENT, 1.0)
                }
                _ => 1.0,
            };
            let scaled = if busy > 0.0 {
                rate * (self.goal / busy).powf(1.0 / alpha)
            } else {
                rate * MAX_RATE_STEP
            };
            let up = if prev_clean.is_some() {
                MAX_LATER_STEP
            } else {
                MAX_RATE_STEP
            };
            let mut n = scaled.clamp(rate / MAX_RATE_STEP, rate * up);
            if lowest_unclean.is_finite() && n >= lowest_unclean {
                n = (rate * lowest_unclean).sqrt();
            }
            n.min(self.max_rate)
        } else {
            let highest_clean = self
                .runs
                .iter()
                .filter(|r| r.2 && r.0 < rate)
                .map(|r| r.0)
                .fold(0.0, f64::max);
            if highest_clean > 0.0 {
                (highest_clean * rate).sqrt()
            } else {
                rate / 4.0
            }
        };
        let n = next.round().max(1.0);
        let tried = self.runs.iter().any(|r| (n - r.0).abs() < r.0 * 0.05);
        (!tried).then_some(n)
    }

    /// The run whose figures count: the clean one closest to the goal (the later on a
    /// tie), else the closest of all; 0 when none ran.
    pub fn chosen(&self) -> usize {
        let any_clean = self.runs.iter().any(|r| r.2);
        let mut best: Option<usize> = None;
        for (i, r) in self.runs.iter().enumerate() {
            if any_clean && !r.2 {
                continue;
            }
            if best.is_none_or(|b| (r.1 - self.goal).abs() <= (self.runs[b].1 - self.goal).abs()) {
                best = Some(i);
            }
        }
        best.unwrap_or(0)
    }
}

/// The share of `cores` the own processes were busy over a load of `load_secs`: their
/// CPU over the run less their idle rate over its wall time (set-up and checks
/// included), spread over the load, plus the idle rate itself.
pub fn busy_share(own: &[(f64, f64)], wall_secs: f64, load_secs: f64, cores: f64) -> f64 {
    let net: f64 = own.iter().map(|(cpu, idle)| cpu - idle * wall_secs).sum();
    let idle: f64 = own.iter().map(|(_, idle)| idle).sum();
    (net / load_secs.max(1e-9) + idle) / cores.max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::MAX_RATE;

    /// Walks against a deployment whose busy share at `rate` is `busy(rate)` and that
    /// stays clean up to `clean_to` req/s; returns the rates tried and the chosen one.
    fn walk_with(busy: impl Fn(f64) -> f64, clean_to: f64, first: f64) -> (Vec<f64>, f64) {
        let mut w = Walk::new(0.75, MAX_RATE);
        let mut rate = first;
        let mut tried = vec![rate];
        while let Some(r) = w.next(rate, busy(rate), rate <= clean_to) {
            rate = r;
            tried.push(rate);
            assert!(tried.len() < 20, "the walk ends");
        }
        (tried.clone(), tried[w.chosen()])
    }

    #[test]
    fn the_walk_scales_a_constant_cost_in_one_step() {
        // 100 µs per request: 1,000/s keeps 10 % of a core busy; ×4 at most, then
        // 7,500/s keeps 75 %.
        let (tried, chosen) = walk_with(|r| r * 100e-6, f64::INFINITY, 1000.0);
        assert_eq!(tried, vec![1000.0, 4000.0, 7500.0]);
        assert_eq!(chosen, 7500.0);
    }

    #[test]
    fn the_walk_extrapolates_a_falling_cost() {
        // busy = 0.01 × √rate (the cost per request falls as 1/√rate): 1,000/s is 32 %
        // busy; the first step assumes a constant cost (×2.37, to 2,372/s: 49 %); the
        // second sees α = 0.5, extrapolates with the floor 0.6 (2,372 × (0.75 /
        // 0.487)^(1/0.6) = 4,871/s) and lands at 70 % busy, within the tolerance.
        let (tried, chosen) = walk_with(|r| 0.01 * r.sqrt(), f64::INFINITY, 1000.0);
        assert_eq!(tried, vec![1000.0, 2372.0, 4871.0]);
        assert_eq!(chosen, 4871.0);
    }

    #[test]
    fn the_walk_backs_off_from_a_run_that_fell_behind() {
        // The harness keeps up to 3,000/s only: 4,000/s (×4 at most) falls behind, the
        // next is halfway (geometric) between 1,000 and 4,000, the ones after stay under
        // 4,000, and the chosen run is a clean one.
        let (tried, chosen) = walk_with(|r| r * 100e-6 * 0.8, 3000.0, 1000.0);
        assert_eq!(tried[..4], [1000.0, 4000.0, 2000.0, 2828.0]);
        assert!(chosen <= 3000.0, "{tried:?}: chose {chosen}");
        // Nothing clean at all: a quarter of the rate, then the closest run.
        let mut w = Walk::new(0.75, MAX_RATE);
        assert_eq!(w.next(4000.0, 0.9, false), Some(1000.0));
        assert_eq!(w.next(1000.0, 0.95, false), Some(250.0));
        assert_eq!(w.chosen(), 0);
    }

    #[test]
    fn the_walk_is_bounded_by_steps_and_the_highest_rate() {
        let mut w = Walk::new(0.75, MAX_RATE);
        assert_eq!(w.next(100.0, 0.0001, true), Some(400.0), "at most ×4");
        assert_eq!(w.next(400.0, 0.99, true), Some(303.0), "α at most 1");
        let mut w = Walk::new(0.75, 50_000.0);
        assert_eq!(w.next(40_000.0, 0.3, true), Some(50_000.0));
        assert_eq!(w.next(50_000.0, 0.35, true), None, "the highest rate again");
        assert_eq!(w.chosen(), 1);
        let mut w = Walk::new(0.75, MAX_RATE);
        assert_eq!(w.next(5000.0, 0.8, true), None, "within the tolerance");
    }

    #[test]
    fn the_walk_steps_up_less_once_it_extrapolates() {
        // Reads: 4,000/s 17 % busy, 16,000/s 32 % (α 0.46, floored to 0.6): the
        // extrapolation says ×4.1; at most ×2.5 from two runs.
        let mut w = Walk::new(0.75, MAX_RATE);
        assert_eq!(
            w.next(4000.0, 0.17, true),
            Some(16_000.0),
            "×4 from one run"
        );
        assert_eq!(w.next(16_000.0, 0.32, true), Some(40_000.0));
    }

    #[test]
    fn runs_are_clean_when_nearly_all_answered_in_time() {
        assert!(clean_run(3_900, 4_000.0, 30.0));
        assert!(!clean_run(3_700, 4_000.0, 30.0), "fewer than 95 % answered");
        assert!(!clean_run(4_000, 4_000.0, 5_623.0), "p99 over 500 ms");
    }

    #[test]
    fn busy_share_spreads_the_net_cpu_over_the_load() {
        // 2.2 CPU s over a 6 s run with 0.05/s idle = 1.9 s net over a 4 s load = 0.475,
        // plus the idle 0.05 = 0.525 of one core; of 2 cores 0.2625.
        let own = [(1.6, 0.03), (0.6, 0.02)];
        assert!((busy_share(&own, 6.0, 4.0, 1.0) - 0.525).abs() < 1e-9);
        assert!((busy_share(&own, 6.0, 4.0, 2.0) - 0.2625).abs() < 1e-9);
    }
}
