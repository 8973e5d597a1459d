//! The soak (issue 29): a long run's figures per window (per minute by default), the
//! watched server processes' RSS and CPU over time, and the verdict on flatness.
//!
//! Three parts, each small:
//! - [`Windows`]: per window and operation, counts and the admitted latency histogram,
//!   by *scheduled* time (as the timeline's latency), fed by the phase's collector.
//! - [`read_proc`] / [`sample_processes`]: utime + stime from `/proc/<pid>/stat` and
//!   `VmRSS` from `/proc/<pid>/status` of each `--watch-pid NAME=PID`, sampled at every
//!   window boundary (the parsers are pure; the sampler is bounded by the window count).
//! - [`judge`]: the pure verdict against the targets, on the report's own
//!   windows, so a JSON report can be judged again later.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::{ms, thousands};
use crate::schedule::Op;
use crate::stats::{new_histogram, record_us, Outcome};

/// Clock ticks per second of `/proc/<pid>/stat`'s utime and stime: USER_HZ, which the
/// kernel fixes at 100 for user space on every architecture Linux ships.
pub const USER_HZ: f64 = 100.0;
/// The error kind of a connection the server closed under a request (src/wire.rs).
pub const CONNECTION_CLOSED: &str = "connection closed";

/// The targets.
pub mod target {
    /// Reserve p99 in every window, ms (the default `--slo-p99-ms`).
    pub const RESERVE_P99_MS: f64 = 50.0;
    /// The last five minutes' reserve p99 within this multiple of the first five's.
    pub const LAST_OVER_FIRST: f64 = 1.2;
    /// Span of "the first five" and "the last five" minutes, s.
    pub const EDGE_SECS: f64 = 300.0;
    /// Most shed (429/503) answers, as a share of each operation's requests.
    pub const SHED_SHARE: f64 = 0.001;
    /// RSS over the last ten minutes within ± this share of its value when they began.
    pub const RSS_BAND: f64 = 0.10;
    /// Span of "the last ten minutes", s.
    pub const RSS_TAIL_SECS: f64 = 600.0;
}

/// One watched process: `--watch-pid NAME=PID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// Its name in the report (engine, gateway, projector, node, …).
    pub name: String,
    /// Its pid.
    pub pid: u32,
}

impl FromStr for Watch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, pid) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=PID (e.g. engine=1234), got {s:?}"))?;
        let name = name.trim();
        if name.is_empty()
            || name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "the name in {s:?} must be 1-32 letters, digits, '-' or '_'"
            ));
        }
        let pid = pid
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("the pid in {s:?} must be a positive number"))?;
        Ok(Watch {
            name: name.to_string(),
            pid,
        })
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// utime + stime, clock ticks ([`USER_HZ`]).
    pub cpu_ticks: u64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// utime + stime from the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so fields count from the last
/// `)`: the state is field 3, utime field 14, stime field 15.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in bytes from the text of `/proc/<pid>/status` (the kernel writes it in kB).
pub fn parse_status_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let kb: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => Some(kb * 1024),
        Some(_) => None,
    }
}

/// Reads `pid`'s CPU time and RSS; `None` when it is gone (or not Linux).
pub fn read_proc(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_ticks: parse_stat_cpu_ticks(&stat)?,
        rss_bytes: parse_status_rss(&status)?,
    })
}

/// The watched processes at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcPoint {
    /// Seconds since the phase start.
    pub t_s: f64,
    /// One reading per watched process, in `--watch-pid` order (`None`: not readable).
    pub samples: Vec<Option<ProcSample>>,
}

/// Reads every watched process at `start + k × period` for k = 0 ..= `windows` (the last
/// reading at `end` when the last window is short): `windows + 1` points at most.
pub async fn sample_processes(
    watch: Vec<Watch>,
    start: Instant,
    end: Instant,
    period: Duration,
    windows: usize,
) -> Vec<ProcPoint> {
    let mut out = Vec::with_capacity(windows + 1);
    for k in 0..=windows {
        let at = (start + period * k as u32).min(end);
        tokio::time::sleep_until(at.into()).await;
        let samples = watch.iter().map(|w| read_proc(w.pid)).collect();
        out.push(ProcPoint {
            t_s: at.saturating_duration_since(start).as_secs_f64(),
            samples,
        });
    }
    out
}

/// Counts and admitted latency of one operation in one window.
#[derive(Debug, Clone)]
pub struct WindowOp {
    /// Requests due in the window.
    pub sent: u64,
    /// Successes.
    pub ok: u64,
    /// 4xx decisions.
    pub rejected: u64,
    /// 429 and 503 answers.
    pub shed: u64,
    /// No usable answer (connections closed included).
    pub errors: u64,
    /// Of the errors, connections the server closed under a request.
    pub connections_closed: u64,
    /// Latency of admitted requests (successes and rejections), µs.
    pub latency_us: Histogram<u64>,
}

impl Default for WindowOp {
    fn default() -> Self {
        Self {
            sent: 0,
            ok: 0,
            rejected: 0,
            shed: 0,
            errors: 0,
            connections_closed: 0,
            latency_us: new_histogram(2),
        }
    }
}

/// Per-window figures of a phase, by scheduled time.
#[derive(Debug, Clone)]
pub struct Windows {
    /// Window width.
    pub period_ns: u64,
    /// Windows that may exist (later samples, past the phase's end, go to the last).
    pub max_windows: usize,
    /// `windows[i][op]` covers `[i, i+1) × period_ns` from the phase start.
    pub windows: Vec<[WindowOp; 3]>,
}

impl Windows {
    /// Empty windows of `period_ns` over a phase of `duration_ns`.
    pub fn new(period_ns: u64, duration_ns: u64) -> Self {
        let period_ns = period_ns.max(1);
        Self {
            period_ns,
            max_windows: duration_ns.div_ceil(period_ns).max(1) as usize,
            windows: Vec::new(),
        }
    }

    /// Adds one finished request.
    pub fn record(&mut self, op: Op, scheduled_ns: u64, latency_us: u64, outcome: &Outcome) {
        // Bounded: a request is scheduled inside the phase; clamp anyway.
        let i = ((scheduled_ns / self.period_ns) as usize).min(self.max_windows - 1);
        if self.windows.len() <= i {
            self.windows.resize_with(i + 1, Default::default);
        }
        let w = &mut self.windows[i][op.index()];
        w.sent += 1;
        match outcome {
            Outcome::Ok => {
                w.ok += 1;
                record_us(&mut w.latency_us, latency_us);
            }
            Outcome::Rejected(..) => {
                w.rejected += 1;
                record_us(&mut w.latency_us, latency_us);
            }
            Outcome::Shed { .. } => w.shed += 1,
            Outcome::Error(kind) => {
                w.errors += 1;
                if kind == CONNECTION_CLOSED {
                    w.connections_closed += 1;
                }
            }
        }
    }
}

/// One operation in one window, as reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowFigures {
    /// Requests due in the window.
    pub sent: u64,
    /// Successes.
    pub ok: u64,
    /// 4xx decisions.
    pub rejected: u64,
    /// 429 and 503 answers.
    pub shed: u64,
    /// No usable answer.
    pub errors: u64,
    /// Of the errors, connections closed by the server.
    pub connections_closed: u64,
    /// Median latency of admitted requests, ms.
    pub p50_ms: f64,
    /// 99th percentile latency of admitted requests, ms.
    pub p99_ms: f64,
}

/// One watched process over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcFigures {
    /// RSS at the end of the window, bytes.
    pub rss_bytes: u64,
    /// CPU used over the window, in cores (1.0 = one core busy all the window).
    pub cpu_cores: f64,
}

/// One window of the soak report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SoakWindow {
    /// Start, seconds after the measured phase began.
    pub start_s: f64,
    /// End, seconds (shorter than the period for a last, partial window).
    pub end_s: f64,
    /// `reserve`, `availability`, `checkout` (the operations the run used).
    pub ops: BTreeMap<String, WindowFigures>,
    /// Per watched process (absent when it could not be read at either end).
    pub processes: BTreeMap<String, ProcFigures>,
}

/// One check of the flatness verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Which target.
    pub name: String,
    /// `Some(true)` held, `Some(false)` missed, `None` not judged (and why, in `text`).
    pub held: Option<bool>,
    /// What was seen.
    pub text: String,
}

/// The flatness verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Flatness {
    /// No check missed.
    pub held: bool,
    /// Every check could be judged (a short run or no watched process leaves some out).
    pub complete: bool,
    /// The checks, in the order.
    pub checks: Vec<Check>,
}

impl Flatness {
    /// One line: "flat", "flat on what was judged (…)", "NOT flat: …".
    pub fn summary(&self) -> String {
        let missed: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.held == Some(false))
            .map(|c| c.name.as_str())
            .collect();
        let unjudged: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| c.held.is_none())
            .map(|c| c.name.as_str())
            .collect();
        if !missed.is_empty() {
            format!("NOT flat: missed {}", missed.join(", "))
        } else if !unjudged.is_empty() {
            format!(
                "flat on what was judged (not judged: {})",
                unjudged.join(", ")
            )
        } else {
            "flat: every target held".to_string()
        }
    }
}

/// The `soak` object of the JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoakReport {
    /// Window width, s.
    pub period_secs: f64,
    /// Watched processes, name → pid.
    pub watched: BTreeMap<String, u32>,
    /// The windows, in order.
    pub windows: Vec<SoakWindow>,
    /// The verdict against the targets.
    pub flatness: Flatness,
}

/// The report's windows from the recorder's windows and the process readings (one more
/// reading than windows: window i runs from reading i to reading i + 1).
pub fn build(
    w: &Windows,
    procs: &[ProcPoint],
    watch: &[Watch],
    duration_secs: f64,
    slo_p99_ms: f64,
) -> SoakReport {
    let period_s = w.period_ns as f64 / 1e9;
    let n = w.max_windows;
    let windows = (0..n)
        .map(|i| {
            let ops = Op::ALL
                .iter()
                .filter_map(|op| {
                    let f = w.windows.get(i).map(|win| &win[op.index()])?;
                    (f.sent > 0).then(|| {
                        let q = |q: f64| {
                            if f.latency_us.is_empty() {
                                0.0
                            } else {
                                f.latency_us.value_at_quantile(q) as f64 / 1000.0
                            }
                        };
                        (
                            op.key().to_string(),
                            WindowFigures {
                                sent: f.sent,
                                ok: f.ok,
                                rejected: f.rejected,
                                shed: f.shed,
                                errors: f.errors,
                                connections_closed: f.connections_closed,
                                p50_ms: q(0.5),
                                p99_ms: q(0.99),
                            },
                        )
                    })
                })
                .collect();
            let processes = watch
                .iter()
                .enumerate()
                .filter_map(|(j, wp)| {
                    let (a, b) = (procs.get(i)?, procs.get(i + 1)?);
                    let (sa, sb) = (a.samples.get(j)?.as_ref()?, b.samples.get(j)?.as_ref()?);
                    let dt = (b.t_s - a.t_s).max(1e-3);
                    let cpu = sb.cpu_ticks.saturating_sub(sa.cpu_ticks) as f64 / USER_HZ / dt;
                    Some((
                        wp.name.clone(),
                        ProcFigures {
                            rss_bytes: sb.rss_bytes,
                            cpu_cores: cpu,
                        },
                    ))
                })
                .collect();
            SoakWindow {
                start_s: i as f64 * period_s,
                end_s: ((i + 1) as f64 * period_s).min(duration_secs.max(i as f64 * period_s)),
                ops,
                processes,
            }
        })
        .collect::<Vec<_>>();
    let flatness = judge(&windows, slo_p99_ms);
    SoakReport {
        period_secs: period_s,
        watched: watch.iter().map(|w| (w.name.clone(), w.pid)).collect(),
        windows,
        flatness,
    }
}

fn minutes(s: f64) -> String {
    if s >= 60.0 && (s % 60.0).abs() < 1e-6 {
        format!("{} min", s / 60.0)
    } else {
        format!("{} s", ms(s))
    }
}

/// The flatness verdict of `windows` against the targets, with `slo_p99_ms` as
/// the per-window reserve p99 bound. Pure: the same windows always give the same verdict.
///
/// A run shorter than the targets' spans is judged on shortened spans, and says so: the
/// first and last "five minutes" are the first and last `min(5 min, half the run)`, the
/// RSS tail is the last `min(10 min, half the run)`.
pub fn judge(windows: &[SoakWindow], slo_p99_ms: f64) -> Flatness {
    let mut checks = Vec::new();
    let reserve_p99: Vec<(usize, f64)> = windows
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.ops.get("reserve").map(|f| (i, f.p99_ms)))
        .collect();
    let label = |i: usize| {
        let w = &windows[i];
        format!("{}–{}", minutes(w.start_s), minutes(w.end_s))
    };

    // 1. Reserve p99 in every window.
    checks.push(if reserve_p99.is_empty() {
        Check {
            name: "reserve p99 every window".into(),
            held: None,
            text: "no reservations".into(),
        }
    } else {
        let over: Vec<&(usize, f64)> = reserve_p99
            .iter()
            .filter(|(_, p)| *p > slo_p99_ms)
            .collect();
        let worst = reserve_p99
            .iter()
            .copied()
            .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
        Check {
            name: "reserve p99 every window".into(),
            held: Some(over.is_empty()),
            text: format!(
                "{} of {} windows over {} ms; worst {} ms ({})",
                over.len(),
                reserve_p99.len(),
                ms(slo_p99_ms),
                ms(worst.1),
                label(worst.0)
            ),
        }
    });

    // 2. The last five minutes within 1.2× of the first five (mean of the windows' p99).
    let period = windows
        .first()
        .map_or(0.0, |w| (w.end_s - w.start_s).max(1e-9));
    let k = ((target::EDGE_SECS / period.max(1e-9)).round() as usize)
        .max(1)
        .min(reserve_p99.len() / 2);
    checks.push(if k == 0 {
        Check {
            name: "last vs first".into(),
            held: None,
            text: "fewer than two windows with reservations".into(),
        }
    } else {
        let mean = |s: &[(usize, f64)]| s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64;
        let first = mean(&reserve_p99[..k]);
        let last = mean(&reserve_p99[reserve_p99.len() - k..]);
        let span = minutes(k as f64 * period);
        let ratio = if first > 0.0 { last / first } else { f64::INFINITY };
        Check {
            name: "last vs first".into(),
            held: Some(last <= first * target::LAST_OVER_FIRST),
            text: format!(
                "reserve p99 (mean of the windows) the last {span} {} ms vs the first {span} {} ms: {:.2}× (≤ {}×){}",
                ms(last),
                ms(first),
                ratio,
                target::LAST_OVER_FIRST,
                if (k as f64 * period) < target::EDGE_SECS - 1e-6 {
                    " — shortened: the run is shorter than 10 minutes"
                } else {
                    ""
                }
            ),
        }
    });

    // 3. No connection closed.
    let closed: u64 = windows
        .iter()
        .flat_map(|w| w.ops.values())
        .map(|f| f.connections_closed)
        .sum();
    let errors: u64 = windows
        .iter()
        .flat_map(|w| w.ops.values())
        .map(|f| f.errors)
        .sum();
    checks.push(Check {
        name: "connections closed".into(),
        held: Some(closed == 0),
        text: format!(
            "{} connections closed by the server ({} errors in all)",
            thousands(closed as f64),
            thousands(errors as f64)
        ),
    });

    // 4. Shed ≤ 0.1 % of each operation's requests.
    let mut per_op: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (key, f) in windows.iter().flat_map(|w| w.ops.iter()) {
        let e = per_op.entry(key.as_str()).or_default();
        e.0 += f.shed;
        e.1 += f.sent;
    }
    let shares: Vec<(&str, f64, u64)> = per_op
        .iter()
        .map(|(k, (shed, sent))| {
            (
                *k,
                if *sent == 0 {
                    0.0
                } else {
                    *shed as f64 / *sent as f64
                },
                *shed,
            )
        })
        .collect();
    checks.push(if shares.is_empty() {
        Check {
            name: "shed".into(),
            held: None,
            text: "no requests".into(),
        }
    } else {
        Check {
            name: "shed".into(),
            held: Some(shares.iter().all(|s| s.1 <= target::SHED_SHARE)),
            text: shares
                .iter()
                .map(|(k, share, n)| {
                    format!("{k} {:.3} % ({})", share * 100.0, thousands(*n as f64))
                })
                .collect::<Vec<_>>()
                .join(", ")
                + &format!(" (≤ {} %)", target::SHED_SHARE * 100.0),
        }
    });

    // 5. RSS of the last ten minutes within ±10 % of its value when they began.
    let names: Vec<&String> = {
        let mut v: Vec<&String> = windows.iter().flat_map(|w| w.processes.keys()).collect();
        v.sort();
        v.dedup();
        v
    };
    let total_s = windows.last().map_or(0.0, |w| w.end_s);
    let tail_s = target::RSS_TAIL_SECS.min(total_s / 2.0);
    checks.push(if names.is_empty() {
        Check {
            name: "RSS flat".into(),
            held: None,
            text: "no watched process (--watch-pid NAME=PID)".into(),
        }
    } else if windows.len() < 2 {
        Check {
            name: "RSS flat".into(),
            held: None,
            text: "fewer than two windows".into(),
        }
    } else {
        let from = total_s - tail_s;
        let mut held = true;
        let mut parts = Vec::new();
        for name in names {
            // The value when the tail began: the end of the last window before it (or
            // the first window in it), then every window ending inside it.
            let series: Vec<(f64, u64)> = windows
                .iter()
                .filter_map(|w| w.processes.get(name).map(|p| (w.end_s, p.rss_bytes)))
                .collect();
            let base = series
                .iter()
                .rev()
                .find(|(end, _)| *end <= from + 1e-6)
                .or_else(|| series.first())
                .map(|p| p.1);
            let tail: Vec<u64> = series
                .iter()
                .filter(|(end, _)| *end > from + 1e-6)
                .map(|p| p.1)
                .collect();
            let Some(base) = base.filter(|b| *b > 0 && !tail.is_empty()) else {
                parts.push(format!("{name}: too few readings"));
                held = false;
                continue;
            };
            let lo = *tail.iter().min().unwrap_or(&base);
            let hi = *tail.iter().max().unwrap_or(&base);
            let dev = |v: u64| (v as f64 - base as f64) / base as f64 * 100.0;
            let ok = lo as f64 >= base as f64 * (1.0 - target::RSS_BAND)
                && hi as f64 <= base as f64 * (1.0 + target::RSS_BAND);
            held &= ok;
            parts.push(format!(
                "{name} {} MB at the start, then {} to {} MB ({:+.1} % to {:+.1} %){}",
                mb(base),
                mb(lo),
                mb(hi),
                dev(lo),
                dev(hi),
                if ok { "" } else { " OUT OF BAND" }
            ));
        }
        Check {
            name: "RSS flat".into(),
            held: Some(held),
            text: format!(
                "the last {}{}: {} (± {} %)",
                minutes(tail_s),
                if tail_s < target::RSS_TAIL_SECS {
                    " (shortened: the run is shorter than 20 minutes)"
                } else {
                    ""
                },
                parts.join("; "),
                target::RSS_BAND * 100.0
            ),
        }
    });

    Flatness {
        held: checks.iter().all(|c| c.held != Some(false)),
        complete: checks.iter().all(|c| c.held.is_some()),
        checks,
    }
}

/// Bytes as MB, 3 significant digits.
pub fn mb(bytes: u64) -> String {
    crate::html::format_num(bytes as f64 / 1e6)
}

/// The per-window table and the verdict's checks, for the text output.
pub fn render(s: &SoakReport) -> String {
    let mut o = String::new();
    let ops: Vec<&str> = Op::ALL
        .iter()
        .map(|op| op.key())
        .filter(|k| s.windows.iter().any(|w| w.ops.contains_key(*k)))
        .collect();
    let procs: Vec<&String> = s.watched.keys().collect();
    let _ = writeln!(
        o,
        "per {} (latency of admitted requests by scheduled time, ms; shed/errors/closed: all operations; RSS at the window's end, CPU in cores):",
        minutes(s.period_secs)
    );
    let mut head = format!("{:>11}", "window");
    for k in &ops {
        let _ = write!(head, " {:>16} {:>8}", format!("{k} p50"), "p99");
    }
    let _ = write!(head, " {:>7} {:>7} {:>7}", "shed", "errors", "closed");
    for p in &procs {
        let _ = write!(head, " {:>12} {:>5}", format!("{p} RSS MB"), "CPU");
    }
    let _ = writeln!(o, "{head}");
    for w in &s.windows {
        let mut line = format!("{:>11}", format!("{}-{}s", ms(w.start_s), ms(w.end_s)));
        for k in &ops {
            match w.ops.get(*k) {
                Some(f) => {
                    let _ = write!(line, " {:>16.2} {:>8.2}", f.p50_ms, f.p99_ms);
                }
                None => {
                    let _ = write!(line, " {:>16} {:>8}", "-", "-");
                }
            }
        }
        let sum = |f: fn(&WindowFigures) -> u64| w.ops.values().map(f).sum::<u64>();
        let _ = write!(
            line,
            " {:>7} {:>7} {:>7}",
            sum(|f| f.shed),
            sum(|f| f.errors),
            sum(|f| f.connections_closed)
        );
        for p in &procs {
            match w.processes.get(*p) {
                Some(f) => {
                    let _ = write!(line, " {:>12} {:>5.2}", mb(f.rss_bytes), f.cpu_cores);
                }
                None => {
                    let _ = write!(line, " {:>12} {:>5}", "-", "-");
                }
            }
        }
        let _ = writeln!(o, "{line}");
    }
    let _ = writeln!(o, "soak: {}", s.flatness.summary());
    for c in &s.flatness.checks {
        let mark = match c.held {
            Some(true) => "held",
            Some(false) => "MISSED",
            None => "not judged",
        };
        let _ = writeln!(o, "  {:<26} {:<10} {}", c.name, mark, c.text);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// `n` one-minute windows with reserve p99 from `p99`, one process with RSS from
    /// `rss_mb`, and the given shed and closed counts in the first window.
    fn series(p99: &[f64], rss_mb: &[u64], shed: u64, closed: u64) -> Vec<SoakWindow> {
        p99.iter()
            .enumerate()
            .map(|(i, &p)| {
                let mut ops = BTreeMap::new();
                ops.insert(
                    "reserve".to_string(),
                    WindowFigures {
                        sent: 180_000,
                        ok: 180_000 - if i == 0 { shed + closed } else { 0 },
                        shed: if i == 0 { shed } else { 0 },
                        errors: if i == 0 { closed } else { 0 },
                        connections_closed: if i == 0 { closed } else { 0 },
                        p50_ms: p / 4.0,
                        p99_ms: p,
                        ..WindowFigures::default()
                    },
                );
                let mut processes = BTreeMap::new();
                if let Some(r) = rss_mb.get(i) {
                    processes.insert(
                        "engine".to_string(),
                        ProcFigures {
                            rss_bytes: r * 1_000_000,
                            cpu_cores: 1.0,
                        },
                    );
                }
                SoakWindow {
                    start_s: i as f64 * 60.0,
                    end_s: (i + 1) as f64 * 60.0,
                    ops,
                    processes,
                }
            })
            .collect()
    }

    fn check<'a>(f: &'a Flatness, name: &str) -> &'a Check {
        f.checks.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn a_flat_thirty_minutes_holds() {
        // p99 wobbles between 10 and 12 ms; RSS grows while TTL + retention fill the
        // state, then stays within a few % for the last 10 minutes.
        let p99: Vec<f64> = (0..30).map(|i| 10.0 + (i % 3) as f64).collect();
        let rss: Vec<u64> = (0..30)
            .map(|i| {
                if i < 8 {
                    100 + 50 * i
                } else {
                    480 + (i % 4) * 5
                }
            })
            .collect();
        let f = judge(&series(&p99, &rss, 100, 0), 50.0);
        assert!(f.held && f.complete, "{f:#?}");
        assert_eq!(f.checks.len(), 5);
        assert!(f.checks.iter().all(|c| c.held == Some(true)));
        assert!(f.summary().starts_with("flat"));
        assert!(check(&f, "last vs first").text.contains("5 min"));
        assert!(check(&f, "RSS flat").text.contains("10 min"));
    }

    #[test]
    fn one_slow_minute_misses_every_window() {
        let mut p99 = vec![10.0; 30];
        p99[17] = 51.0;
        let f = judge(&series(&p99, &[300; 30], 0, 0), 50.0);
        assert!(!f.held);
        let c = check(&f, "reserve p99 every window");
        assert_eq!(c.held, Some(false));
        assert!(c.text.contains("1 of 30"), "{}", c.text);
        assert!(c.text.contains("17 min–18 min"), "{}", c.text);
        assert_eq!(check(&f, "last vs first").held, Some(true));
        assert!(f.summary().contains("NOT flat"));
    }

    #[test]
    fn creeping_latency_misses_last_vs_first() {
        // Always under the SLO, but the last five minutes are 1.25× the first five.
        let p99: Vec<f64> = (0..30).map(|i| if i < 25 { 20.0 } else { 25.0 }).collect();
        let f = judge(&series(&p99, &[300; 30], 0, 0), 50.0);
        assert_eq!(check(&f, "reserve p99 every window").held, Some(true));
        assert_eq!(check(&f, "last vs first").held, Some(false));
        // Exactly 1.2× holds (the bound is inclusive).
        let p99: Vec<f64> = (0..30).map(|i| if i < 25 { 20.0 } else { 24.0 }).collect();
        let f = judge(&series(&p99, &[300; 30], 0, 0), 50.0);
        assert_eq!(check(&f, "last vs first").held, Some(true));
    }

    #[test]
    fn one_closed_connection_or_too_much_shed_misses() {
        let f = judge(&series(&[10.0; 30], &[300; 30], 0, 1), 50.0);
        assert_eq!(check(&f, "connections closed").held, Some(false));
        assert!(!f.held);
        // 30 × 180,000 reservations: 0.1 % is 5,400 shed.
        let f = judge(&series(&[10.0; 30], &[300; 30], 5_400, 0), 50.0);
        assert_eq!(check(&f, "shed").held, Some(true));
        let f = judge(&series(&[10.0; 30], &[300; 30], 5_401, 0), 50.0);
        assert_eq!(check(&f, "shed").held, Some(false));
    }

    #[test]
    fn growing_rss_in_the_last_ten_minutes_misses() {
        // Linear growth, 20 MB a minute: +14.5 % over the last ten minutes (1,380 → 1,580 MB).
        let rss: Vec<u64> = (0..30).map(|i| 1000 + 20 * i).collect();
        let f = judge(&series(&[10.0; 30], &rss, 0, 0), 50.0);
        let c = check(&f, "RSS flat");
        assert_eq!(c.held, Some(false), "{}", c.text);
        assert!(c.text.contains("OUT OF BAND"));
        // Growth only before the last ten minutes holds.
        let rss: Vec<u64> = (0..30).map(|i| 1000 + 20 * i.min(20)).collect();
        let f = judge(&series(&[10.0; 30], &rss, 0, 0), 50.0);
        assert_eq!(check(&f, "RSS flat").held, Some(true));
    }

    #[test]
    fn short_runs_and_unwatched_runs_say_what_was_not_judged() {
        let f = judge(&series(&[10.0; 4], &[], 0, 0), 50.0);
        assert!(f.held && !f.complete);
        assert_eq!(check(&f, "RSS flat").held, None);
        assert!(f.summary().contains("not judged: RSS flat"));
        let c = check(&f, "last vs first");
        assert_eq!(c.held, Some(true));
        assert!(c.text.contains("shortened"), "{}", c.text);
        let f = judge(&[], 50.0);
        assert!(!f.complete);
    }

    #[test]
    fn proc_files_are_parsed() {
        // A command name with a space and a parenthesis, as a thread may name itself.
        let stat = "1234 (tokio (rt) w) S 1 1234 1234 0 -1 4194560 5000 0 0 0 731 269 0 0 20 0 9 0 100 2000000 4000 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(1000));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        let status = "Name:\tflashsale\nVmPeak:\t  9000 kB\nVmRSS:\t   41236 kB\nThreads:\t9\n";
        assert_eq!(parse_status_rss(status), Some(41236 * 1024));
        assert_eq!(parse_status_rss("Name:\tx\n"), None);
        // This process is readable and has memory and some CPU time.
        let me = read_proc(std::process::id()).expect("/proc of this process");
        assert!(me.rss_bytes > 0);
    }

    #[test]
    fn watch_specs_parse_with_clear_errors() {
        assert_eq!(
            "engine=1234".parse::<Watch>(),
            Ok(Watch {
                name: "engine".into(),
                pid: 1234
            })
        );
        assert!("1234".parse::<Watch>().unwrap_err().contains("NAME=PID"));
        assert!("engine=abc".parse::<Watch>().unwrap_err().contains("pid"));
        assert!("engine=0".parse::<Watch>().is_err());
        assert!("a b=1".parse::<Watch>().unwrap_err().contains("name"));
    }

    #[test]
    fn windows_count_by_scheduled_time_and_build_cpu_from_ticks() {
        let mut w = Windows::new(1_000_000_000, 2_500_000_000);
        assert_eq!(w.max_windows, 3);
        w.record(Op::Reserve, 100, 2_000, &Outcome::Ok);
        w.record(
            Op::Reserve,
            1_200_000_000,
            900_000,
            &Outcome::Error(Cow::Borrowed(CONNECTION_CLOSED)),
        );
        w.record(
            Op::Availability,
            1_300_000_000,
            300,
            &Outcome::Shed {
                status: 503,
                retry_after: true,
            },
        );
        // Past the end (a clock edge): clamped into the last window.
        w.record(Op::Reserve, 9_000_000_000, 1_000, &Outcome::Ok);
        let watch = vec![Watch {
            name: "node".into(),
            pid: 1,
        }];
        let point = |t: f64, ticks: u64, rss: u64| ProcPoint {
            t_s: t,
            samples: vec![Some(ProcSample {
                cpu_ticks: ticks,
                rss_bytes: rss,
            })],
        };
        let procs = [
            point(0.0, 0, 10),
            point(1.0, 150, 20),
            point(2.0, 150, 30),
            point(2.5, 200, 40),
        ];
        let r = build(&w, &procs, &watch, 2.5, 50.0);
        assert_eq!(r.windows.len(), 3);
        assert_eq!(r.windows[2].end_s, 2.5, "the last window is partial");
        let r0 = &r.windows[0].ops["reserve"];
        assert_eq!((r0.sent, r0.ok), (1, 1));
        assert!((r0.p99_ms - 2.0).abs() < 0.05);
        let r1 = &r.windows[1];
        assert_eq!(r1.ops["reserve"].connections_closed, 1);
        assert_eq!(
            r1.ops["reserve"].p99_ms, 0.0,
            "errors are not admitted latency"
        );
        assert_eq!(r1.ops["availability"].shed, 1);
        assert_eq!(r.windows[2].ops["reserve"].ok, 1);
        let cpu: Vec<f64> = r
            .windows
            .iter()
            .map(|w| w.processes["node"].cpu_cores)
            .collect();
        assert_eq!(cpu, vec![1.5, 0.0, 1.0]);
        assert_eq!(r.windows[1].processes["node"].rss_bytes, 30);
        assert_eq!(check(&r.flatness, "connections closed").held, Some(false));
        let text = render(&r);
        assert!(text.contains("node RSS MB"), "{text}");
        assert!(text.contains("MISSED"), "{text}");
    }
}
