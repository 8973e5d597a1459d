//! Recording: outcomes, latency histograms, per-interval series, percentiles.
//!
//! One [`Recorder`] per phase, owned by a single collector task (no locks): workers send it
//! [`Sample`]s. Latencies are kept in µs in `hdrhistogram`s with 3 significant digits
//! (whole run, per operation) and 2 (per time bucket, for the charts).

use std::borrow::Cow;
use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::contract::title;
use crate::schedule::Op;

/// Highest latency a histogram tracks, in µs (larger values are clamped): 10 minutes.
pub const MAX_LATENCY_US: u64 = 600_000_000;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The expected success status.
    Ok,
    /// A 4xx decision (not 429): the status and the API's `error` title (or `HTTP
    /// <status>` when the body had none).
    Rejected(u16, Cow<'static, str>),
    /// Shed load: a 429 or 503, which the contract answers with `Retry-After`. Neither a
    /// decision nor a failure of the server: it said "later".
    Shed {
        /// 429 or 503.
        status: u16,
        /// Whether the answer carried a `Retry-After` header (the contract says it must).
        retry_after: bool,
    },
    /// No usable answer: transport failure, timeout, 5xx, unexpected status. The text is a
    /// short kind, for the error breakdown.
    Error(Cow<'static, str>),
}

impl Outcome {
    /// Classifies an HTTP answer: `expected` statuses are success, 429 and 503 are shed
    /// load, other 4xx are rejections titled by the body's `error`, anything else an
    /// error. `retry_after` says whether the answer had a `Retry-After` header.
    pub fn classify(status: u16, expected: &[u16], body: &[u8], retry_after: bool) -> Outcome {
        if expected.contains(&status) {
            return Outcome::Ok;
        }
        if status == 429 || status == 503 {
            return Outcome::Shed {
                status,
                retry_after,
            };
        }
        let t = error_title(body);
        if (400..500).contains(&status) {
            Outcome::Rejected(
                status,
                t.unwrap_or_else(|| Cow::Owned(format!("HTTP {status}"))),
            )
        } else {
            Outcome::Error(match t {
                Some(t) => Cow::Owned(format!("{status} {t}")),
                None => Cow::Owned(format!("HTTP {status}")),
            })
        }
    }

    /// True when this is shed load (`429` or `503`), which `--find-max` counts as failure.
    pub fn is_shed(&self) -> bool {
        matches!(self, Outcome::Shed { .. })
    }

    /// True for a decision that counts as goodput: a success or a 409 (out of stock,
    /// over the limit, …: the server decided, and said so).
    pub fn is_goodput(&self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Rejected(409, _))
    }
}

/// The `error` title of an error body, as a static string for the known ones.
pub fn error_title(body: &[u8]) -> Option<Cow<'static, str>> {
    #[derive(Deserialize)]
    struct E<'a> {
        #[serde(borrow)]
        error: Cow<'a, str>,
    }
    let e: E<'_> = serde_json::from_slice(body).ok()?;
    const KNOWN: &[&str] = &[
        title::OUT_OF_STOCK,
        title::PURCHASE_LIMIT_EXCEEDED,
        title::SALE_NOT_ACTIVE,
        title::TOO_MANY_REQUESTS,
        title::SERVICE_UNAVAILABLE,
        title::PRODUCT_NOT_FOUND,
        title::BAD_REQUEST,
        title::NOT_FOUND,
        "Reservation Expired",
        "Reservation Not Active",
        "Reservation Not Found",
    ];
    Some(match KNOWN.iter().find(|k| **k == e.error) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(e.error.into_owned()),
    })
}

/// Latency percentiles in ms, as in the JSON report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl LatencySummary {
    /// Percentiles of a µs histogram, in ms (all 0 when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// A µs histogram with the harness's bounds.
pub fn new_histogram(sigfig: u8) -> Histogram<u64> {
    // Bounds are constants that are valid for hdrhistogram; failure is a programming error.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("valid histogram bounds")
}

/// Records `us` into `h`, clamped to the histogram's range.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, MAX_LATENCY_US));
}

/// Counters and the latency distributions of one operation.
///
/// Every request lands in exactly one of `ok`, `rejected`, `shed` and `errors`, so
/// `sent = ok + Σ rejected + shed + errors`.
#[derive(Debug, Clone)]
pub struct OpStats {
    /// Requests sent (or due and never sent: those count as errors too).
    pub sent: u64,
    /// Successes.
    pub ok: u64,
    /// Rejections (4xx decisions other than 429) by the API's error title.
    pub rejected: BTreeMap<String, u64>,
    /// Of the rejections, those with status 409: with `ok`, the goodput.
    pub conflicts: u64,
    /// Shed answers (429 and 503).
    pub shed: u64,
    /// Shed answers without the `Retry-After` header the contract requires.
    pub shed_without_retry_after: u64,
    /// Errors (no usable answer).
    pub errors: u64,
    /// Errors by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Latency from the scheduled time, µs, every answered or failed request.
    pub latency_us: Histogram<u64>,
    /// Latency of admitted requests (successes and rejections: the server decided).
    pub admitted_latency_us: Histogram<u64>,
    /// Latency of shed answers (how fast "later" came back).
    pub shed_latency_us: Histogram<u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        Self {
            sent: 0,
            ok: 0,
            rejected: BTreeMap::new(),
            conflicts: 0,
            shed: 0,
            shed_without_retry_after: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            latency_us: new_histogram(3),
            admitted_latency_us: new_histogram(3),
            shed_latency_us: new_histogram(3),
        }
    }
}

impl OpStats {
    /// Counts one finished request.
    pub fn record(&mut self, outcome: &Outcome, latency_us: u64) {
        self.sent += 1;
        match outcome {
            Outcome::Ok => {
                self.ok += 1;
                record_us(&mut self.admitted_latency_us, latency_us);
            }
            Outcome::Rejected(status, t) => {
                *self.rejected.entry(t.to_string()).or_default() += 1;
                if *status == 409 {
                    self.conflicts += 1;
                }
                record_us(&mut self.admitted_latency_us, latency_us);
            }
            Outcome::Shed { retry_after, .. } => {
                self.shed += 1;
                if !retry_after {
                    self.shed_without_retry_after += 1;
                }
                record_us(&mut self.shed_latency_us, latency_us);
            }
            Outcome::Error(k) => {
                self.errors += 1;
                *self.error_kinds.entry(k.to_string()).or_default() += 1;
            }
        }
        record_us(&mut self.latency_us, latency_us);
    }

    /// Requests that got a proper answer (success or rejection; not shed).
    pub fn answered(&self) -> u64 {
        self.ok + self.rejected.values().sum::<u64>()
    }

    /// Successes and 409 decisions.
    pub fn goodput(&self) -> u64 {
        self.ok + self.conflicts
    }

    /// Share of requests that failed or were shed; what `--find-max` holds below 0.1 %.
    pub fn failure_share(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        (self.errors + self.shed) as f64 / self.sent as f64
    }
}

/// One time bucket of one operation, for the charts.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Requests completed in this bucket (by completion time).
    pub completed: u64,
    /// Of which successes.
    pub ok: u64,
    /// Of which errors.
    pub errors: u64,
    /// Of which shed answers (429/503).
    pub shed: u64,
    /// Of which goodput (successes and 409 decisions).
    pub goodput: u64,
    /// Requests the schedule made due in this bucket (the offered load).
    pub offered: u64,
    /// Latency of admitted requests *scheduled* in this bucket, µs (shed answers apart,
    /// so that fast "later"s do not flatter the admitted ones).
    pub latency_us: Histogram<u64>,
    /// Latency of shed answers scheduled in this bucket, µs.
    pub shed_latency_us: Histogram<u64>,
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            completed: 0,
            ok: 0,
            errors: 0,
            shed: 0,
            goodput: 0,
            offered: 0,
            latency_us: new_histogram(2),
            shed_latency_us: new_histogram(2),
        }
    }
}

/// Per-bucket series of one phase, per operation.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// Bucket width.
    pub bucket_ns: u64,
    /// `buckets[op][i]` covers `[i, i+1) × bucket_ns` from the phase start.
    pub buckets: [Vec<Bucket>; 3],
}

impl Timeline {
    /// Width for a phase of `duration_ns`: about 100 buckets, 100 ms to 5 s.
    pub fn bucket_for(duration_ns: u64) -> u64 {
        (duration_ns / 100).clamp(100_000_000, 5_000_000_000)
    }

    /// An empty timeline of `bucket_ns` buckets.
    pub fn new(bucket_ns: u64) -> Self {
        Self {
            bucket_ns: bucket_ns.max(1),
            buckets: Default::default(),
        }
    }

    fn bucket(&mut self, op: Op, at_ns: u64) -> &mut Bucket {
        // Bounded: the phase is at most MAX_RUN_SECS + the drain, so at most a few
        // thousand buckets even at the 100 ms floor.
        let i = (at_ns / self.bucket_ns) as usize;
        let v = &mut self.buckets[op.index()];
        if v.len() <= i {
            v.resize_with(i + 1, Bucket::default);
        }
        &mut v[i]
    }

    /// Sets the offered load of `op`: `counts[i]` requests due in bucket `i`.
    pub fn set_offered(&mut self, op: Op, counts: &[u64]) {
        for (i, &n) in counts.iter().enumerate() {
            self.bucket(op, i as u64 * self.bucket_ns).offered = n;
        }
    }

    /// Adds a request scheduled at `scheduled_ns` that finished `latency_us` later.
    pub fn record(&mut self, op: Op, scheduled_ns: u64, latency_us: u64, outcome: &Outcome) {
        let at = self.bucket(op, scheduled_ns);
        if outcome.is_shed() {
            record_us(&mut at.shed_latency_us, latency_us);
        } else {
            record_us(&mut at.latency_us, latency_us);
        }
        let b = self.bucket(
            op,
            scheduled_ns.saturating_add(latency_us.saturating_mul(1000)),
        );
        b.completed += 1;
        if outcome.is_goodput() {
            b.goodput += 1;
        }
        match outcome {
            Outcome::Ok => b.ok += 1,
            Outcome::Error(_) => b.errors += 1,
            Outcome::Shed { .. } => b.shed += 1,
            Outcome::Rejected(..) => {}
        }
    }

    /// Number of buckets of the longest series.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Points on the percentile curve of a histogram: (percentile in %, latency ms), from
/// p0 up to the max, for the chart.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // 1 − q halves per step: a log spread that shows the tail, as HdrHistogram's own
    // percentile plots do.
    let mut out = Vec::new();
    let mut q = 0.0f64;
    for i in 0..=40 {
        if i > 0 {
            q = 1.0 - 0.5f64.powi(i / 2) * if i % 2 == 1 { 0.75 } else { 1.0 };
        }
        out.push((q * 100.0, h.value_at_quantile(q) as f64 / 1000.0));
        if (h.len() as f64) * (1.0 - q) < 1.0 {
            break;
        }
    }
    out.push((100.0, h.max() as f64 / 1000.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{periodic_at, Planned, Schedule, ScheduleSpec};

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram(3);
        for ms in 1..=1000u64 {
            record_us(&mut h, ms * 1000);
        }
        let s = LatencySummary::of(&h);
        // 3 significant digits: within 0.1 % of the exact rank value.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(near(s.p50, 500.0), "p50 {}", s.p50);
        assert!(near(s.p90, 900.0), "p90 {}", s.p90);
        assert!(near(s.p99, 990.0), "p99 {}", s.p99);
        assert!(near(s.p999, 999.0), "p999 {}", s.p999);
        assert!(near(s.max, 1000.0), "max {}", s.max);
        assert_eq!(
            LatencySummary::of(&new_histogram(3)),
            LatencySummary::default()
        );
    }

    #[test]
    fn a_single_outlier_shows_only_in_the_tail() {
        let mut h = new_histogram(3);
        for _ in 0..999 {
            record_us(&mut h, 2_000);
        }
        record_us(&mut h, 400_000);
        let s = LatencySummary::of(&h);
        assert!((s.p99 - 2.0).abs() < 0.01);
        assert!((s.max - 400.0).abs() < 0.5);
        let curve = percentile_curve(&h);
        assert!(curve
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(curve.last().map(|p| p.0), Some(100.0));
    }

    /// A simulated stall, no clock involved: requests due every 1 ms, a server that
    /// answers in 0.1 ms except that it is frozen from 10 ms to 110 ms. Measured from the
    /// scheduled time (what the harness does), the stall shows in p99; measured
    /// from the send time of a closed-loop client that waits for each reply before
    /// sending the next, it would hide in one sample.
    #[test]
    fn coordinated_omission_is_corrected() {
        let spec = ScheduleSpec {
            write_rate_per_s: 1000.0,
            read_rate_per_s: 0.0,
            duration_ns: 1_000_000_000,
            users: 10,
            products: 1,
            hot_share: 1.0,
            crowd_users: 0,
            crowd_window_ns: 0,
            crowd_hot_share: 1.0,
            checkout_share: 0.0,
            seed: 1,
            fresh_users: false,
        };
        let service_ns = 100_000u64;
        let (stall_from, stall_to) = (10_000_000u64, 110_000_000u64);
        let serve = |arrive: u64, free_at: u64| -> u64 {
            let mut start = arrive.max(free_at);
            if (stall_from..stall_to).contains(&start) {
                start = stall_to;
            }
            start + service_ns
        };

        // Open loop: arrivals at their scheduled times, FIFO server.
        let mut open = new_histogram(3);
        let mut free_at = 0;
        for slot in Schedule::new(spec) {
            assert!(matches!(slot.what, Planned::Reserve { .. }));
            let done = serve(slot.at_ns, free_at);
            free_at = done;
            record_us(&mut open, (done - slot.at_ns) / 1000);
        }
        // Closed loop: one client, the next request goes only after the previous reply,
        // and latency is measured from the actual send.
        let mut closed = new_histogram(3);
        let (mut now, mut k) = (0u64, 0u64);
        while now < 1_000_000_000 {
            let send = now.max(periodic_at(1000.0, k));
            let done = serve(send, 0);
            record_us(&mut closed, (done - send) / 1000);
            now = done;
            k += 1;
        }
        let (o, c) = (LatencySummary::of(&open), LatencySummary::of(&closed));
        assert!(c.p99 < 1.0, "closed loop hides the stall: p99 {} ms", c.p99);
        assert!(o.p99 > 50.0, "open loop shows it: p99 {} ms", o.p99);
        assert!(
            o.max >= 99.0,
            "the first request caught in the stall waited ~100 ms"
        );
        assert_eq!(open.len(), 1000, "every scheduled request is recorded");
    }

    #[test]
    fn outcomes_are_classified_by_status_and_title() {
        let body =
            br#"{"timestamp":"t","status":409,"error":"Out of Stock","message":"m","path":"/p"}"#;
        assert_eq!(Outcome::classify(201, &[201], b"", false), Outcome::Ok);
        let oos = Outcome::classify(409, &[201], body, false);
        assert_eq!(oos, Outcome::Rejected(409, Cow::Borrowed("Out of Stock")));
        assert!(oos.is_goodput());
        let nf = Outcome::classify(404, &[201], b"nope", false);
        assert_eq!(nf, Outcome::Rejected(404, Cow::Borrowed("HTTP 404")));
        assert!(!nf.is_goodput());
        let e = Outcome::classify(503, &[201], br#"{"error":"Service Unavailable"}"#, true);
        assert_eq!(
            e,
            Outcome::Shed {
                status: 503,
                retry_after: true
            }
        );
        assert!(e.is_shed() && !e.is_goodput());
        assert!(
            Outcome::classify(429, &[201], br#"{"error":"Too Many Requests"}"#, false).is_shed()
        );
        assert!(matches!(
            Outcome::classify(500, &[201], b"", false),
            Outcome::Error(_)
        ));
    }

    #[test]
    fn op_stats_count_and_failure_share() {
        let mut s = OpStats::default();
        for _ in 0..997 {
            s.record(&Outcome::Ok, 1000);
        }
        s.record(&Outcome::Rejected(409, Cow::Borrowed("Out of Stock")), 500);
        s.record(
            &Outcome::Shed {
                status: 429,
                retry_after: false,
            },
            300,
        );
        s.record(&Outcome::Error(Cow::Borrowed("timeout")), 5_000_000);
        assert_eq!(s.sent, 1000);
        assert_eq!(s.answered(), 998);
        assert_eq!(s.goodput(), 998);
        assert_eq!((s.shed, s.shed_without_retry_after), (1, 1));
        assert_eq!(s.errors, 1);
        assert_eq!(s.admitted_latency_us.len(), 998);
        assert_eq!(s.shed_latency_us.max(), 300);
        assert!((s.failure_share() - 0.002).abs() < 1e-12);
    }

    #[test]
    fn timeline_buckets_by_schedule_and_completion() {
        let mut t = Timeline::new(100_000_000);
        // Scheduled at 50 ms, took 120 ms: latency in bucket 0, completion in bucket 1.
        t.record(Op::Reserve, 50_000_000, 120_000, &Outcome::Ok);
        let b = &t.buckets[Op::Reserve.index()];
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].latency_us.len(), 1);
        assert_eq!(b[0].completed, 0);
        assert_eq!(b[1].completed, 1);
        assert_eq!(b[1].ok, 1);
        assert_eq!(Timeline::bucket_for(10_000_000_000), 100_000_000);
        assert_eq!(Timeline::bucket_for(3_600_000_000_000), 5_000_000_000);
    }
}
