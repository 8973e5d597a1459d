//! Admission: which requests are served and which are told "later" (503 +
//! `Retry-After`) while more arrive than the node can serve (issue 31). The whole
//! design is in docs/overload.md; in short, four decisions, each as early and as cheap
//! as what it needs to know allows:
//!
//! 0. **Lag, at once** ([`RunQueueLag`], checked by [`crate::dispatch`] before 2 and 3):
//!    a probe task measures all the time how long a task that became ready waits for
//!    the runtime's CPU (its *lag*); a request's bytes waited about that long in the
//!    socket before the server read its head, a wait no stamp taken by the server can
//!    see. Every request carries the lag of the moment its head was read
//!    ([`Arrived::lag`]); when that plus its own wait since is over
//!    [`AdmissionPolicy::max_lag`], the node is behind on CPU and the command is shed
//!    at once ([`behind`]), before anything is queued, unless its partition has fewer
//!    than [`MIN_LIMIT`] in flight (then it is not what keeps the CPU busy, and a node
//!    starved by a neighbour must not shed everything). Shedding costs a third of a hold,
//!    so the backlog drains and the lag falls back: the rule keeps the wait before any
//!    answer, shed or admitted, near `max_lag` instead of letting it grow to hundreds
//!    of milliseconds (issue 31 measured a shed p99 of 446 ms with only 1–3).
//! 1. **Node, before the body** ([`crate::server`]): tower's `ConcurrencyLimit` under
//!    `LoadShed` bounds the requests being handled at once (`--http-max-requests`);
//!    one past it is answered 503 before its body is read or anything is routed.
//! 2. **Sojourn, at the partition's queue** ([`crate::dispatch`]): every request is
//!    stamped with [`Arrived`] when the server has its head (before its body is read).
//!    A command that has already waited [`AdmissionPolicy::max_wait`] when its turn
//!    comes to be handed to its partition's log (the embedded queue, or the Kafka
//!    producer) is shed, and so is one past its reply deadline: it is never queued,
//!    never produced to Kafka, and leaves no trace in the state.
//! 3. **Adaptive per-partition limit** ([`AdaptiveLimit`]): each partition admits at
//!    most `limit` commands in flight (from hand-over to reply). The limit starts at
//!    the fixed budget (`--max-in-flight-per-partition`) and follows the latency its
//!    commands see: a window whose mean latency is above
//!    [`AdmissionPolicy::target`] cuts it in proportion (at most by half), a window on
//!    target with the limit in use raises it again by an eighth. A hot SKU lives on
//!    one partition, so only its partition sheds; the others keep their own limits.
//!
//! The SKU of a hold is in its JSON body, so the per-partition decisions (0, 2, 3) are
//! made after the body (≤ 64 KiB, normally in the same packet as the head) is read and
//! its three fields parsed, about a microsecond, and before anything is queued. The
//! decision rules themselves ([`behind`], [`next_lag`], [`next_limit`]) are pure
//! functions.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The admission settings of a server (flags `--admission-max-wait-ms`,
/// `--admission-target-ms`, `--admission-max-lag-ms`); `None` turns a rule off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionPolicy {
    /// Longest a request may have waited, from its head's arrival, when its command is
    /// about to be handed to its partition's log; past it, 503 and nothing is queued.
    pub max_wait: Option<Duration>,
    /// Latency (hand-over to reply) a partition's commands should see; the adaptive
    /// limit shrinks while a window's mean is above it.
    pub target: Option<Duration>,
    /// Longest a request may have waited, counting the runtime's lag when its head was
    /// read (the unseen wait of its bytes in the socket), when its command is about to
    /// be handed over; past it, 503 at once (rule 0, [`behind`]).
    pub max_lag: Option<Duration>,
}

/// Default of `--admission-max-wait-ms`: the admitted-latency target of a flash sale
/// (p99 ≤ 100 ms): a request that spent all of it before its turn is late however fast
/// the rest goes, and shedding it leaves the room to one that is still on time.
pub const DEFAULT_MAX_WAIT_MS: u64 = 100;
/// Default of `--admission-target-ms`: the admitted-latency target (p99 100 ms). A
/// window whose *mean* latency is over it means a queue has built up in either mode
/// (Kafka mode's batching and reply path alone stay well under it, and its flash-crowd
/// p99 was 82 ms), so only a real backlog makes the limit shrink.
pub const DEFAULT_TARGET_MS: u64 = 100;
/// Default of `--admission-max-lag-ms`: half the shed-answer target of issue 31 (p99
/// ≤ 20 ms). A node that is not overloaded runs a ready task within a millisecond or
/// two; 10 ms behind means requests arrive faster than the CPU serves them, and every
/// one admitted then makes the next one wait longer.
pub const DEFAULT_MAX_LAG_MS: u64 = 10;

impl Default for AdmissionPolicy {
    fn default() -> Self {
        AdmissionPolicy {
            max_wait: Some(Duration::from_millis(DEFAULT_MAX_WAIT_MS)),
            target: Some(Duration::from_millis(DEFAULT_TARGET_MS)),
            max_lag: Some(Duration::from_millis(DEFAULT_MAX_LAG_MS)),
        }
    }
}

impl AdmissionPolicy {
    /// From the flags' milliseconds; 0 turns a rule off.
    pub fn from_millis(max_wait_ms: u64, target_ms: u64, max_lag_ms: u64) -> Self {
        let on = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        AdmissionPolicy {
            max_wait: on(max_wait_ms),
            target: on(target_ms),
            max_lag: on(max_lag_ms),
        }
    }
}

/// Rule 0: is a request that arrived while the runtime was `lag` behind, and has
/// waited `waited` since its head was read, to be shed at once, its partition having
/// `in_flight` commands awaiting replies? Its whole wait so far is about `lag +
/// waited`; over `max_lag`, the node is behind on CPU. But a partition with fewer than
/// [`MIN_LIMIT`] in flight is not what keeps the CPU busy (another process is, or
/// another partition): shedding its requests would free nothing, so it keeps making
/// progress (a node starved by a neighbour would otherwise shed everything).
pub fn behind(lag: Duration, waited: Duration, max_lag: Duration, in_flight: u32) -> bool {
    in_flight >= MIN_LIMIT && lag.saturating_add(waited) > max_lag
}

/// The lag to publish after a probe measured `sample`: a rise counts at once, a fall
/// halves the previous value at most per probe (about a millisecond), so one lucky
/// sample in a backlog does not open the doors to a burst.
pub fn next_lag(prev: Duration, sample: Duration) -> Duration {
    sample.max(prev / 2)
}

/// How often the lag probe measures (plus the lag itself: a late probe measures late).
pub const LAG_PROBE_EVERY: Duration = Duration::from_millis(1);

/// The runtime's lag: how long a task that became ready waits for a worker (rule 0).
/// Written by one probe task ([`RunQueueLag::probe`]), read by every request.
#[derive(Debug, Default)]
pub struct RunQueueLag {
    us: AtomicU64,
}

impl RunQueueLag {
    /// The lag now (zero before the first probe).
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.us.load(Ordering::Relaxed))
    }

    fn observe(&self, sample: Duration) {
        let next = next_lag(self.now(), sample);
        let us = u64::try_from(next.as_micros()).unwrap_or(u64::MAX);
        self.us.store(us, Ordering::Relaxed);
    }

    /// Measures the lag until `stop` resolves: every [`LAG_PROBE_EVERY`], how long a
    /// `yield_now` takes to come back. A yielded task is woken after the runtime's
    /// next look at its sockets and queued behind every task ready then, which is
    /// where a request whose bytes just arrived waits too. About a microsecond of CPU
    /// per probe.
    pub async fn probe(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let t = Instant::now();
            tokio::task::yield_now().await;
            self.observe(t.elapsed());
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(LAG_PROBE_EVERY) => {}
            }
        }
    }
}

/// When the server had this request's head (before its body was read), the runtime's
/// lag then, and the server's admission policy. A request extension set by
/// [`crate::server::serve`]; a router driven without it (tests) has none, and then the
/// request counts as arrived when its command is dispatched.
#[derive(Debug, Clone, Copy)]
pub struct Arrived {
    pub at: Instant,
    /// [`RunQueueLag::now`] when the head was read: about how long the request's bytes
    /// waited before that (zero when rule 0 is off).
    pub lag: Duration,
    pub policy: AdmissionPolicy,
}

/// Smallest adaptive limit of a partition: however slow the node, a partition keeps
/// this many commands in flight, so it always makes progress and measures latency.
pub const MIN_LIMIT: u32 = 8;
/// Shortest measuring window of the adaptive limit.
const MIN_WINDOW: Duration = Duration::from_millis(5);

/// The adaptive limit's rule: the next limit after a window whose commands saw
/// `mean` latency, with at most `peak` in flight at once.
///
/// - Over `target`: cut in proportion to how far over (`limit × target / mean`), at
///   most by half per window, never below `min`.
/// - On target, and the limit was in use (`peak` ≥ half of it): raise by an eighth
///   (at least 1), never above `max`.
/// - Otherwise: unchanged (an idle partition keeps what it learned).
pub fn next_limit(
    limit: u32,
    min: u32,
    max: u32,
    mean: Duration,
    target: Duration,
    peak: u32,
) -> u32 {
    let min = min.min(max);
    let next = if mean > target {
        let ratio = (target.as_secs_f64() / mean.as_secs_f64()).max(0.5);
        (f64::from(limit) * ratio).floor() as u32
    } else if peak.saturating_mul(2) >= limit {
        limit.saturating_add((limit / 8).max(1))
    } else {
        limit
    };
    next.clamp(min, max)
}

/// One partition's in-flight count and its adaptive limit (see the module docs).
/// Lock-free: a hot partition's every request touches it.
#[derive(Debug)]
pub struct AdaptiveLimit {
    max: u32,
    limit: AtomicU32,
    in_flight: AtomicU32,
    /// The current window: its start (µs since `base`), latency sum (µs), samples,
    /// and the most in flight seen.
    base: Instant,
    window_start_us: AtomicU64,
    sum_us: AtomicU64,
    samples: AtomicU64,
    peak: AtomicU32,
}

/// A command in flight on a partition; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot<'a>(&'a AdaptiveLimit);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl AdaptiveLimit {
    /// A limit that starts at, and never goes above, `max` (the fixed budget).
    pub fn new(max: usize) -> Self {
        let max = u32::try_from(max).unwrap_or(u32::MAX).max(1);
        AdaptiveLimit {
            max,
            limit: AtomicU32::new(max),
            in_flight: AtomicU32::new(0),
            base: Instant::now(),
            window_start_us: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            peak: AtomicU32::new(0),
        }
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Commands in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A slot, or `None` when the partition is at its limit (shed the request).
    pub fn try_acquire(&self) -> Option<Slot<'_>> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if before >= self.limit() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.peak.fetch_max(before + 1, Ordering::Relaxed);
        Some(Slot(self))
    }

    /// Records one command's latency (hand-over to reply, or to its deadline) and, at
    /// the end of a window (`target` long, at least 5 ms), moves the limit by
    /// [`next_limit`].
    pub fn record(&self, latency: Duration, target: Duration, now: Instant) {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us(latency), Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
        let now_us = us(now.saturating_duration_since(self.base));
        let start = self.window_start_us.load(Ordering::Relaxed);
        if now_us.saturating_sub(start) < us(target.max(MIN_WINDOW)) {
            return;
        }
        // One caller closes the window; the others go on counting into the next.
        if self
            .window_start_us
            .compare_exchange(start, now_us, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let sum = self.sum_us.swap(0, Ordering::AcqRel);
        let n = self.samples.swap(0, Ordering::AcqRel);
        let peak = self.peak.swap(self.in_flight(), Ordering::AcqRel);
        if n == 0 {
            return;
        }
        let mean = Duration::from_micros(sum / n);
        let limit = self.limit();
        let next = next_limit(limit, MIN_LIMIT, self.max, mean, target, peak);
        if next != limit {
            self.limit.store(next, Ordering::Relaxed);
            tracing::debug!(
                limit = next,
                mean_ms = mean.as_secs_f64() * 1e3,
                "adaptive limit moved"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn over_target_the_limit_is_cut_in_proportion_at_most_by_half_never_below_min() {
        // Twice the target: half.
        assert_eq!(next_limit(100, 8, 128, MS(100), MS(50), 100), 50);
        // A little over: a little less.
        assert_eq!(next_limit(100, 8, 128, MS(55), MS(50), 100), 90);
        // Ten times over: still only half per window.
        assert_eq!(next_limit(100, 8, 128, MS(500), MS(50), 100), 50);
        // Never below the floor.
        assert_eq!(next_limit(10, 8, 128, MS(500), MS(50), 10), 8);
        // A budget below the floor is the floor.
        assert_eq!(next_limit(4, 8, 4, MS(500), MS(50), 4), 4);
    }

    #[test]
    fn on_target_the_limit_grows_only_while_in_use_and_never_past_the_budget() {
        assert_eq!(next_limit(64, 8, 128, MS(10), MS(50), 64), 72);
        assert_eq!(next_limit(64, 8, 128, MS(10), MS(50), 32), 72);
        // Mostly idle: no growth.
        assert_eq!(next_limit(64, 8, 128, MS(10), MS(50), 31), 64);
        // At least 1 a window.
        assert_eq!(next_limit(8, 8, 128, MS(10), MS(50), 8), 9);
        assert_eq!(next_limit(125, 8, 128, MS(10), MS(50), 125), 128);
    }

    #[test]
    fn slots_are_refused_at_the_limit_and_freed_on_drop() {
        let l = AdaptiveLimit::new(2);
        let a = l.try_acquire().expect("first");
        let b = l.try_acquire().expect("second");
        assert!(l.try_acquire().is_none(), "third is over the limit");
        assert_eq!(l.in_flight(), 2);
        drop(a);
        let c = l.try_acquire().expect("a freed slot is reused");
        drop((b, c));
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn slow_windows_shrink_the_limit_and_fast_busy_ones_grow_it_back() {
        let l = AdaptiveLimit::new(128);
        let t0 = l.base;
        let target = MS(50);
        // Slow window: every sample at 200 ms; closing it halves the limit.
        let slots: Vec<_> = (0..100).map(|_| l.try_acquire().unwrap()).collect();
        for i in 0..10 {
            l.record(MS(200), target, t0 + MS(i));
        }
        l.record(MS(200), target, t0 + MS(60));
        assert_eq!(l.limit(), 64);
        // Another slow window: 32.
        l.record(MS(200), target, t0 + MS(120));
        assert_eq!(l.limit(), 32);
        drop(slots);
        // Fast windows with the limit in use: it grows again by an eighth a window.
        let slots: Vec<_> = (0..32).map(|_| l.try_acquire().unwrap()).collect();
        assert!(l.try_acquire().is_none(), "32 is the limit now");
        l.record(MS(5), target, t0 + MS(180));
        assert_eq!(l.limit(), 36);
        drop(slots);
        assert!(l.try_acquire().is_some());
    }

    #[test]
    fn policy_from_flags_zero_turns_a_rule_off() {
        let p = AdmissionPolicy::from_millis(0, 50, 0);
        assert_eq!(p.max_wait, None);
        assert_eq!(p.target, Some(MS(50)));
        assert_eq!(p.max_lag, None);
        assert_eq!(
            AdmissionPolicy::from_millis(
                DEFAULT_MAX_WAIT_MS,
                DEFAULT_TARGET_MS,
                DEFAULT_MAX_LAG_MS
            ),
            AdmissionPolicy::default()
        );
    }

    #[test]
    fn behind_counts_the_unseen_lag_and_the_seen_wait_together() {
        let busy = MIN_LIMIT;
        // On time: neither alone nor together over the limit.
        assert!(!behind(MS(4), MS(5), MS(10), busy));
        assert!(!behind(MS(10), Duration::ZERO, MS(10), busy));
        // The lag alone: its bytes sat in the socket too long.
        assert!(behind(MS(11), Duration::ZERO, MS(10), busy));
        // The wait since its head alone.
        assert!(behind(Duration::ZERO, MS(11), MS(10), busy));
        // Both, each under the limit.
        assert!(behind(MS(6), MS(6), MS(10), busy));
        // No overflow on absurd values.
        assert!(behind(Duration::MAX, Duration::MAX, MS(10), busy));
    }

    #[test]
    fn a_partition_with_few_in_flight_is_never_shed_for_lag() {
        // However far behind the node: below the floor the partition keeps going.
        assert!(!behind(MS(500), MS(500), MS(10), 0));
        assert!(!behind(MS(500), MS(500), MS(10), MIN_LIMIT - 1));
        assert!(behind(MS(500), MS(500), MS(10), MIN_LIMIT));
    }

    #[test]
    fn the_lag_rises_at_once_and_falls_by_at_most_half_a_probe() {
        assert_eq!(next_lag(MS(2), MS(40)), MS(40));
        assert_eq!(next_lag(MS(40), MS(1)), MS(20));
        assert_eq!(next_lag(MS(20), MS(1)), MS(10));
        assert_eq!(next_lag(MS(20), MS(15)), MS(15));
        assert_eq!(next_lag(Duration::ZERO, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_probe_publishes_the_smoothed_lag() {
        let l = RunQueueLag::default();
        assert_eq!(l.now(), Duration::ZERO);
        l.observe(MS(30));
        assert_eq!(l.now(), MS(30));
        l.observe(MS(0));
        assert_eq!(l.now(), MS(15));
    }
}
