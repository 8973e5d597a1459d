//! The open-loop schedule: when each request is due, computed before anything is sent.
//!
//! Open loop means the send times do not depend on the server: a slow reply does not
//! delay the next request (as it would with a fixed set of clients each waiting for its
//! reply, the "coordinated omission" of closed-loop tools). Every request's latency is
//! measured from its *scheduled* time ([`corrected_latency`]), so time a request spent
//! waiting to be sent, because the harness was blocked behind a stalled server, counts
//! against the server as it would for a real user.
//!
//! The schedule is a pure, deterministic iterator (no clock, seeded randomness): it merges
//! a steady write stream, a steady read stream and an optional flash crowd in time order.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::scenario::Scenario;

/// Kinds of request the harness sends and reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `POST /api/v1/reservations`.
    Reserve,
    /// `GET /api/v1/products/{skuId}/availability`.
    Availability,
    /// `POST /api/v1/orders/checkout`.
    Checkout,
}

impl Op {
    /// All operations, in report order.
    pub const ALL: [Op; 3] = [Op::Reserve, Op::Availability, Op::Checkout];

    /// Key in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Op::Reserve => "reserve",
            Op::Availability => "availability",
            Op::Checkout => "checkout",
        }
    }

    /// Dense index for per-operation arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One request the schedule asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Planned {
    /// A reservation attempt by `user` for product `sku`; `checkout` says whether a
    /// success is to be checked out afterwards.
    Reserve {
        /// User index (0..users).
        user: u32,
        /// Product index (0 = hot).
        sku: u16,
        /// Check out on success.
        checkout: bool,
        /// One of the flash crowd's arrivals (each crowd user arrives once).
        crowd: bool,
    },
    /// An availability read of product `sku`.
    Read {
        /// Product index (0 = hot).
        sku: u16,
    },
}

/// A request and its due time, in ns from the start of the phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Due time, ns after the phase start.
    pub at_ns: u64,
    /// What to send.
    pub what: Planned,
}

/// Parameters of one phase's schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    /// Steady reservation attempts per second (0 = none).
    pub write_rate_per_s: f64,
    /// Steady reads per second (0 = none).
    pub read_rate_per_s: f64,
    /// Length of the phase; nothing is due at or after it.
    pub duration_ns: u64,
    /// Users the steady writes pick from.
    pub users: u32,
    /// Products (product 0 is hot).
    pub products: u16,
    /// Share of requests for product 0.
    pub hot_share: f64,
    /// Crowd users (each one reservation in the crowd window); 0 = no crowd.
    pub crowd_users: u32,
    /// Crowd window.
    pub crowd_window_ns: u64,
    /// Share of crowd arrivals for product 0 (the rest spread over the others).
    pub crowd_hot_share: f64,
    /// Share of reservations marked for checkout.
    pub checkout_share: f64,
    /// Seed for all choices.
    pub seed: u64,
    /// Each steady write is a new user (the n-th write is user n) instead of a random
    /// pick from `users`.
    pub fresh_users: bool,
}

impl ScheduleSpec {
    /// The measured phase of `s`.
    pub fn measured(s: &Scenario) -> Self {
        Self {
            write_rate_per_s: s.write_rate_per_s,
            read_rate_per_s: s.read_rate(),
            duration_ns: secs_to_ns(s.duration_secs),
            users: s.users,
            products: s.products as u16,
            hot_share: s.hot_sku_share,
            crowd_users: s.crowd_users(),
            crowd_window_ns: s.flash_crowd_ms * 1_000_000,
            crowd_hot_share: s.crowd_hot_share(),
            checkout_share: s.checkout_share,
            seed: s.seed,
            fresh_users: s.fresh_users,
        }
    }

    /// The warm-up phase of `s`: the steady streams only, no crowd, no checkouts.
    pub fn warmup(s: &Scenario) -> Self {
        Self {
            duration_ns: secs_to_ns(s.warmup_secs),
            crowd_users: 0,
            checkout_share: 0.0,
            seed: s.seed ^ 0x5741_524d, // a different but fixed stream of choices
            ..Self::measured(s)
        }
    }

    /// Requests this schedule will produce (exact).
    pub fn len(&self) -> u64 {
        periodic_count(self.write_rate_per_s, self.duration_ns)
            + periodic_count(self.read_rate_per_s, self.duration_ns)
            + u64::from(self.crowd_users)
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Seconds (f64) to whole ns.
pub fn secs_to_ns(secs: f64) -> u64 {
    (secs * 1e9).round() as u64
}

/// Events of a constant-rate stream in `[0, duration)`.
fn periodic_count(rate: f64, duration_ns: u64) -> u64 {
    if rate <= 0.0 {
        return 0;
    }
    // The k-th event is at k / rate; count k with k / rate < duration.
    let n = (duration_ns as f64 * rate / 1e9).ceil() as u64;
    // Float rounding at the boundary: trim an event that lands on or past the end.
    if n > 0 && periodic_at(rate, n - 1) >= duration_ns {
        n - 1
    } else {
        n
    }
}

/// Due time of the k-th event of a constant-rate stream.
pub fn periodic_at(rate: f64, k: u64) -> u64 {
    (k as f64 * 1e9 / rate).round() as u64
}

/// Due time of the i-th of n crowd arrivals, spread evenly over the window.
pub fn crowd_at(window_ns: u64, i: u32, n: u32) -> u64 {
    if n == 0 {
        return 0;
    }
    (u128::from(window_ns) * u128::from(i) / u128::from(n)) as u64
}

/// Latency of a request due at `scheduled` and answered at `done`, coordinated omission
/// corrected: measured from when it was due, not from when it was sent.
pub fn corrected_latency(scheduled: Instant, done: Instant) -> Duration {
    done.saturating_duration_since(scheduled)
}

/// The iterator over a phase's requests, in due-time order (ties: crowd, write, read).
#[derive(Debug)]
pub struct Schedule {
    spec: ScheduleSpec,
    rng: StdRng,
    write_k: u64,
    write_n: u64,
    read_k: u64,
    read_n: u64,
    crowd_i: u32,
    crowd_order: Vec<u32>,
}

impl Schedule {
    /// A schedule for `spec`.
    pub fn new(spec: ScheduleSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        // The crowd is distinct users (each arrives once), in a seeded random order.
        let mut crowd_order: Vec<u32> = (0..spec.crowd_users.min(spec.users)).collect();
        crowd_order.shuffle(&mut rng);
        Self {
            write_n: periodic_count(spec.write_rate_per_s, spec.duration_ns),
            read_n: periodic_count(spec.read_rate_per_s, spec.duration_ns),
            write_k: 0,
            read_k: 0,
            crowd_i: 0,
            crowd_order,
            spec,
            rng,
        }
    }

    fn pick_sku(&mut self, hot_share: f64) -> u16 {
        let p = self.spec.products.max(1);
        if p == 1 || self.rng.random::<f64>() < hot_share {
            0
        } else {
            1 + self.rng.random_range(0..p - 1)
        }
    }

    fn reserve(&mut self, user: u32, crowd: bool) -> Planned {
        let sku = self.pick_sku(if crowd {
            self.spec.crowd_hot_share
        } else {
            self.spec.hot_share
        });
        let checkout =
            self.spec.checkout_share > 0.0 && self.rng.random::<f64>() < self.spec.checkout_share;
        Planned::Reserve {
            user,
            sku,
            checkout,
            crowd,
        }
    }
}

impl Iterator for Schedule {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        let n_crowd = self.crowd_order.len() as u32;
        let crowd = (self.crowd_i < n_crowd)
            .then(|| crowd_at(self.spec.crowd_window_ns, self.crowd_i, n_crowd));
        let write = (self.write_k < self.write_n)
            .then(|| periodic_at(self.spec.write_rate_per_s, self.write_k));
        let read = (self.read_k < self.read_n)
            .then(|| periodic_at(self.spec.read_rate_per_s, self.read_k));
        let min = [crowd, write, read].into_iter().flatten().min()?;
        if crowd == Some(min) {
            let user = self.crowd_order[self.crowd_i as usize];
            self.crowd_i += 1;
            let what = self.reserve(user, true);
            return Some(Slot { at_ns: min, what });
        }
        if write == Some(min) {
            self.write_k += 1;
            let user = if self.spec.fresh_users {
                // At most MAX_RATE_PER_S × MAX_RUN_SECS = 3.6e9 writes: fits a u32.
                (self.write_k - 1) as u32
            } else {
                self.rng.random_range(0..self.spec.users.max(1))
            };
            let what = self.reserve(user, false);
            return Some(Slot { at_ns: min, what });
        }
        self.read_k += 1;
        let sku = self.pick_sku(self.spec.hot_share);
        Some(Slot {
            at_ns: min,
            what: Planned::Read { sku },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ScheduleSpec {
        ScheduleSpec {
            write_rate_per_s: 100.0,
            read_rate_per_s: 0.0,
            duration_ns: 1_000_000_000,
            users: 50,
            products: 4,
            hot_share: 0.5,
            crowd_users: 0,
            crowd_window_ns: 0,
            crowd_hot_share: 0.5,
            checkout_share: 0.0,
            seed: 7,
            fresh_users: false,
        }
    }

    #[test]
    fn fresh_users_never_repeat() {
        let s = ScheduleSpec {
            fresh_users: true,
            read_rate_per_s: 300.0,
            ..spec()
        };
        let users: Vec<u32> = Schedule::new(s)
            .filter_map(|slot| match slot.what {
                Planned::Reserve { user, .. } => Some(user),
                Planned::Read { .. } => None,
            })
            .collect();
        assert_eq!(users, (0..100).collect::<Vec<u32>>());
    }

    #[test]
    fn constant_rate_is_evenly_spaced_and_bounded() {
        let slots: Vec<Slot> = Schedule::new(spec()).collect();
        assert_eq!(slots.len(), 100);
        assert_eq!(slots.len() as u64, spec().len());
        for (k, s) in slots.iter().enumerate() {
            assert_eq!(s.at_ns, k as u64 * 10_000_000, "slot {k}");
        }
        assert!(slots.iter().all(|s| s.at_ns < 1_000_000_000));
    }

    #[test]
    fn fractional_rates_count_exactly() {
        for (rate, dur_ms, want) in [
            (3.0, 1000, 3),
            (2.5, 1000, 3),
            (1000.0, 10, 10),
            (0.0, 1000, 0),
        ] {
            let n = periodic_count(rate, dur_ms * 1_000_000);
            assert_eq!(n, want, "rate {rate} over {dur_ms} ms");
        }
    }

    #[test]
    fn streams_merge_in_time_order_with_the_read_ratio() {
        let s = ScheduleSpec {
            read_rate_per_s: 1000.0,
            ..spec()
        };
        let slots: Vec<Slot> = Schedule::new(s.clone()).collect();
        assert_eq!(slots.len() as u64, s.len());
        assert!(slots.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        let reads = slots
            .iter()
            .filter(|s| matches!(s.what, Planned::Read { .. }))
            .count();
        assert_eq!(reads, 1000);
        assert_eq!(slots.len() - reads, 100);
    }

    #[test]
    fn flash_crowd_arrives_inside_its_window_once_per_user() {
        let s = ScheduleSpec {
            write_rate_per_s: 0.0,
            crowd_users: 40,
            crowd_window_ns: 200_000_000,
            ..spec()
        };
        let slots: Vec<Slot> = Schedule::new(s).collect();
        assert_eq!(slots.len(), 40);
        assert!(slots.iter().all(|s| s.at_ns < 200_000_000));
        let mut users: Vec<u32> = slots
            .iter()
            .map(|s| match s.what {
                Planned::Reserve { user, .. } => user,
                Planned::Read { .. } => unreachable!("crowd only writes"),
            })
            .collect();
        users.sort_unstable();
        users.dedup();
        assert_eq!(users.len(), 40, "each crowd user arrives once");
    }

    /// The big crowd: every arrival on the hot SKU while the steady stream goes to the
    /// other products only.
    #[test]
    fn the_crowd_has_its_own_hot_share() {
        let s = ScheduleSpec {
            crowd_users: 30,
            crowd_window_ns: 100_000_000,
            crowd_hot_share: 1.0,
            hot_share: 0.0,
            ..spec()
        };
        let (mut crowd, mut steady) = (0, 0);
        for slot in Schedule::new(s) {
            match slot.what {
                Planned::Reserve {
                    crowd: true, sku, ..
                } => {
                    assert_eq!(sku, 0);
                    crowd += 1;
                }
                Planned::Reserve { sku, .. } => {
                    assert_ne!(sku, 0);
                    steady += 1;
                }
                Planned::Read { .. } => {}
            }
        }
        assert_eq!((crowd, steady), (30, 100));
    }

    #[test]
    fn same_seed_same_requests_and_hot_share_holds() {
        let a: Vec<Slot> = Schedule::new(spec()).collect();
        let b: Vec<Slot> = Schedule::new(spec()).collect();
        assert_eq!(a, b);
        let all_hot = ScheduleSpec {
            hot_share: 1.0,
            ..spec()
        };
        assert!(Schedule::new(all_hot).all(|s| matches!(s.what, Planned::Reserve { sku: 0, .. })));
        let none_hot = ScheduleSpec {
            hot_share: 0.0,
            ..spec()
        };
        assert!(Schedule::new(none_hot).all(|s| !matches!(s.what, Planned::Reserve { sku: 0, .. })));
    }

    #[test]
    fn latency_counts_from_the_scheduled_time() {
        // A request due at t0 that could only be sent 90 ms late (the harness was blocked
        // behind a stalled server) and was answered 1 ms after sending has a latency of
        // 91 ms, not 1 ms.
        let t0 = Instant::now();
        let sent = t0 + Duration::from_millis(90);
        let done = sent + Duration::from_millis(1);
        assert_eq!(corrected_latency(t0, done), Duration::from_millis(91));
        assert_eq!(corrected_latency(done, t0), Duration::ZERO);
    }
}
