//! Self-contained HTML reports: inline SVG charts drawn with `plotters`, no network assets,
//! no scripts.
//!
//! A run's page opens with a one-line verdict ("held 14,000/s at p99 18 ms" / "missed: p99
//! 140 ms > SLO 50 ms at 20,000/s offered"), then the summary as an HTML table, then the
//! charts: latency over time with the SLO line, offered vs answered per second, stock
//! over time, the latency percentile curve with the SLO line. A run with per-window
//! figures (the soak) has a section of its own after the summary: latency, RSS and CPU
//! per window over the run, the flatness checks and the windows as a table. Everything fits a page about
//! A4 wide (charts 720 px, scaled down with the page). Log axes get their own "nice" ticks
//! (1, 2, 5 — or 1, 2, 3, 5 — per decade), so 1–5 ms data still has several labelled
//! ticks; legends are HTML under each chart, so they never cover a line. The compare page
//! has the ratio table and bar charts of the targets side by side.

use std::fmt::Write as _;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::report::{crowd_line, describe_scenario, render_table, Report, TableExtras};
use crate::runner::ChartData;
use crate::schedule::Op;
use crate::stats::percentile_curve;

/// Chart size in px: fits an A4 page's text width at 96 dpi with margins.
const W: u32 = 720;
const H: u32 = 300;
const FONT: &str = "sans-serif";
/// Colour of the SLO line.
const SLO_COLOR: RGBColor = RGBColor(200, 0, 0);

/// Line colours per operation, then for extra series.
const PALETTE: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

type Series = (String, Vec<(f64, f64)>);

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// Legend text.
    pub name: String,
    /// (x, y) in data units.
    pub points: Vec<(f64, f64)>,
    /// Colour.
    pub color: RGBColor,
    /// Dashed (offered load, references) rather than solid.
    pub dashed: bool,
}

impl Line {
    /// A solid line.
    pub fn solid(name: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Self {
            name: name.into(),
            points,
            color,
            dashed: false,
        }
    }

    /// A dashed line.
    pub fn dashed(name: impl Into<String>, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Self {
            dashed: true,
            ..Self::solid(name, points, color)
        }
    }
}

/// How an axis maps data to the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Linear from 0 (or the data's minimum when negative).
    Linear,
    /// Logarithmic, with 1-2-5-style ticks.
    Log,
    /// x only: percentiles (0–100) on a log scale of 1/(1−q), so p90, p99, p99.9 are
    /// evenly spaced; 100 (the max) is drawn just right of the last point.
    Percentile,
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct ChartSpec<'a> {
    /// Caption.
    pub title: &'a str,
    /// x axis label.
    pub x_desc: &'a str,
    /// y axis label.
    pub y_desc: &'a str,
    /// x mapping (`Linear` or `Percentile`).
    pub x_axis: Axis,
    /// y mapping (`Linear` or `Log`).
    pub y_axis: Axis,
    /// The lines; empty ones are skipped.
    pub lines: &'a [Line],
    /// A horizontal SLO line at this y (ms), labelled, kept inside the y range.
    pub slo: Option<f64>,
}

/// Ticks for a log axis from `lo` to `hi` (both > 0): 1-2-5 per decade, or 1-2-3-5 when
/// the range is short, or decades only when it is long; at least 3 when the range allows.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    const SETS: [&[f64]; 4] = [
        &[1.0],
        &[1.0, 2.0, 5.0],
        &[1.0, 2.0, 3.0, 5.0],
        &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0],
    ];
    if !(lo > 0.0 && hi > lo) {
        return Vec::new();
    }
    let ticks_of = |set: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let first = lo.log10().floor() as i32 - 1;
        let last = hi.log10().ceil() as i32 + 1;
        for e in first..=last {
            for m in set {
                let v = m * 10f64.powi(e);
                // Tolerate float noise at the ends.
                if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                    out.push(v);
                }
            }
        }
        out
    };
    let decades = ticks_of(SETS[0]);
    if decades.len() >= 5 {
        // Long ranges: every decade, thinned to at most 8 labels.
        let step = decades.len().div_ceil(8);
        return decades.into_iter().step_by(step).collect();
    }
    for set in &SETS[1..] {
        let t = ticks_of(set);
        if t.len() >= 4 {
            return t;
        }
    }
    ticks_of(SETS[3])
}

/// Ticks for a linear axis from `lo` to `hi`: about `n` at 1, 2, 2.5 or 5 × 10^k steps.
pub fn linear_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !hi.is_finite() || !lo.is_finite() || hi <= lo || n == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut out = Vec::new();
    let mut v = (lo / step).ceil() * step;
    while v <= hi + step * 1e-9 && out.len() < 4 * n + 2 {
        out.push(if v.abs() < step * 1e-9 { 0.0 } else { v });
        v += step;
    }
    out
}

/// A linear f64 axis whose tick marks are exactly the given values (plotters' own
/// `with_key_points` loses the default label formatting the mesh needs).
#[derive(Debug, Clone)]
struct Ticked {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl plotters::coord::ranged1d::Ranged for Ticked {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = (self.hi - self.lo).max(f64::MIN_POSITIVE);
        let share = (value - self.lo) / span;
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// The x position of a percentile on the percentile axis: log10(1/(1−q)).
fn pct_x(pct: f64) -> f64 {
    (1.0 / (1.0 - (pct / 100.0).min(0.999_999_9))).log10()
}

/// Percentile axis ticks up to `x_max` (in axis units), with `max_at` labelled "max".
fn pct_ticks(x_max: f64, max_at: Option<f64>) -> Vec<(f64, String)> {
    let mut out = vec![(0.0, "p0".to_string()), (pct_x(50.0), "p50".to_string())];
    for (pct, label) in [
        (90.0, "p90"),
        (99.0, "p99"),
        (99.9, "p99.9"),
        (99.99, "p99.99"),
        (99.999, "p99.999"),
        (99.9999, "p99.9999"),
    ] {
        let x = pct_x(pct);
        if x <= x_max && max_at.is_none_or(|m| m - x >= 0.45) {
            out.push((x, label.to_string()));
        }
    }
    if let Some(m) = max_at {
        out.push((m, "max".to_string()));
    }
    out
}

/// Draws a chart as inline SVG. With no data at all a short note is returned instead.
pub fn chart(spec: &ChartSpec<'_>) -> String {
    let lines: Vec<&Line> = spec.lines.iter().filter(|l| !l.points.is_empty()).collect();
    if lines.is_empty() {
        return format!("<p class=\"empty\">{}: no data</p>", escape(spec.title));
    }
    let log_y = spec.y_axis == Axis::Log;
    // y range in data units, then in axis units.
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let y_max_data = ys
        .clone()
        .fold(0.0f64, f64::max)
        .max(spec.slo.unwrap_or(0.0));
    let (y_lo, y_hi, y_ticks): (f64, f64, Vec<f64>) = if log_y {
        let pos_min = ys
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min)
            .min(spec.slo.unwrap_or(f64::INFINITY));
        let lo = if pos_min.is_finite() {
            pos_min / 1.6
        } else {
            0.001
        }
        .max(0.001);
        let hi = (y_max_data * 1.6).max(lo * 4.0);
        let ticks = log_ticks(lo, hi);
        (
            lo.log10(),
            hi.log10(),
            ticks.iter().map(|t| t.log10()).collect(),
        )
    } else {
        let y_min_data = ys.fold(0.0f64, f64::min);
        let hi = (y_max_data * 1.12).max(1.0);
        let ticks = linear_ticks(y_min_data, hi, 6);
        (y_min_data, hi, ticks)
    };
    let ty = |v: f64| {
        if log_y {
            v.max(10f64.powf(y_lo)).log10()
        } else {
            v
        }
    };
    // x in axis units.
    let pct = spec.x_axis == Axis::Percentile;
    // Every series' max (q = 1) at one place: half a decade right of the furthest
    // finite percentile of any series, where the axis says "max".
    let max_x = lines
        .iter()
        .flat_map(|l| l.points.iter().filter(|p| p.0 < 100.0).map(|p| pct_x(p.0)))
        .fold(0.0f64, f64::max)
        + 0.5;
    let mapped: Vec<(&Line, Vec<(f64, f64)>)> = lines
        .iter()
        .map(|l| {
            let mut pts: Vec<(f64, f64)> = Vec::with_capacity(l.points.len());
            for &(x, y) in &l.points {
                let x = if pct {
                    if x >= 100.0 {
                        max_x
                    } else {
                        pct_x(x)
                    }
                } else {
                    x
                };
                pts.push((x, ty(y)));
            }
            (*l, pts)
        })
        .collect();
    let xs = mapped.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let x_min = xs.clone().fold(f64::INFINITY, f64::min).min(0.0);
    let x_max = xs.fold(0.0f64, f64::max).max(1e-3);
    let (x_hi, x_ticks): (f64, Vec<(f64, String)>) = if pct {
        let max_at = lines
            .iter()
            .any(|l| l.points.iter().any(|p| p.0 >= 100.0))
            .then_some(max_x);
        let hi = x_max + 0.15;
        (hi, pct_ticks(hi, max_at))
    } else {
        let t = linear_ticks(x_min, x_max, 8);
        (x_max, t.into_iter().map(|v| (v, format_num(v))).collect())
    };
    let x_labels: Vec<(f64, String)> = x_ticks.clone();
    let mut svg = String::new();
    let res = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(spec.title, (FONT, 16))
            .margin(10)
            .margin_right(24)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(
                Ticked {
                    lo: x_min,
                    hi: x_hi,
                    ticks: x_ticks.iter().map(|t| t.0).collect(),
                },
                Ticked {
                    lo: y_lo,
                    hi: y_hi,
                    ticks: y_ticks,
                },
            )
            .map_err(|e| e.to_string())?;
        let x_fmt = |x: &f64| {
            x_labels
                .iter()
                .find(|t| (t.0 - *x).abs() < 1e-9)
                .map(|t| t.1.clone())
                .unwrap_or_else(|| format_num(*x))
        };
        let y_fmt = |y: &f64| {
            if log_y {
                format_num(10f64.powf(*y))
            } else {
                format_num(*y)
            }
        };
        chart
            .configure_mesh()
            .x_desc(spec.x_desc)
            .y_desc(spec.y_desc)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 13))
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .bold_line_style(RGBColor(225, 225, 225))
            .draw()
            .map_err(|e| e.to_string())?;
        for (l, pts) in &mapped {
            if l.dashed {
                chart
                    .draw_series(DashedLineSeries::new(
                        pts.iter().copied(),
                        6,
                        4,
                        l.color.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?;
            } else {
                chart
                    .draw_series(LineSeries::new(
                        pts.iter().copied(),
                        l.color.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?;
            }
        }
        if let Some(slo) = spec.slo {
            let y = ty(slo);
            chart
                .draw_series(DashedLineSeries::new(
                    [(x_min, y), (x_hi, y)],
                    10,
                    5,
                    SLO_COLOR.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            let label = format!("SLO p99 {} ms", format_num(slo));
            let style = TextStyle::from((FONT, 13).into_font())
                .color(&SLO_COLOR)
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Right,
                    plotters::style::text_anchor::VPos::Bottom,
                ));
            chart
                .draw_series(std::iter::once(Text::new(label, (x_hi, y), style)))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    })();
    match res {
        Ok(()) => {
            // The SVG is drawn at a fixed size; let it scale down with the page.
            let svg = svg.replacen("<svg ", "<svg class=\"chart\" ", 1);
            format!("{svg}{}", legend(&lines, spec.slo))
        }
        Err(e) => format!(
            "<p class=\"empty\">{}: chart failed: {}</p>",
            escape(spec.title),
            escape(&e)
        ),
    }
}

/// The legend of a chart, as HTML under it.
fn legend(lines: &[&Line], slo: Option<f64>) -> String {
    let mut o = String::from("<div class=\"legend\">");
    for l in lines {
        let RGBColor(r, g, b) = l.color;
        let _ = write!(
            o,
            "<span><i style=\"border-top:3px {} rgb({r},{g},{b})\"></i>{}</span>",
            if l.dashed { "dashed" } else { "solid" },
            escape(&l.name)
        );
    }
    if let Some(slo) = slo {
        let RGBColor(r, g, b) = SLO_COLOR;
        let _ = write!(
            o,
            "<span><i style=\"border-top:3px dashed rgb({r},{g},{b})\"></i>SLO: p99 ≤ {} ms</span>",
            format_num(slo)
        );
    }
    o.push_str("</div>\n");
    o
}

/// A line chart (kept for callers of the old API): `log_y` for latency.
pub fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log_y: bool,
) -> String {
    let lines: Vec<Line> = series
        .iter()
        .enumerate()
        .map(|(i, (n, p))| Line::solid(n.clone(), p.clone(), PALETTE[i % PALETTE.len()]))
        .collect();
    chart(&ChartSpec {
        title,
        x_desc,
        y_desc,
        x_axis: Axis::Linear,
        y_axis: if log_y { Axis::Log } else { Axis::Linear },
        lines: &lines,
        slo: None,
    })
}

/// The percentile curve of each series ((percentile %, ms) points), with an optional
/// SLO line.
pub fn percentile_chart(title: &str, series: &[Series], slo: Option<f64>) -> String {
    let lines: Vec<Line> = series
        .iter()
        .enumerate()
        .map(|(i, (n, p))| Line::solid(n.clone(), p.clone(), PALETTE[i % PALETTE.len()]))
        .collect();
    chart(&ChartSpec {
        title,
        x_desc: "percentile",
        y_desc: "latency ms (log)",
        x_axis: Axis::Percentile,
        y_axis: Axis::Log,
        lines: &lines,
        slo,
    })
}

/// A bar chart, one bar per (name, value).
pub fn bar_chart(title: &str, y_desc: &str, bars: &[(String, f64)]) -> String {
    if bars.is_empty() {
        return format!("<p class=\"empty\">{}: no data</p>", escape(title));
    }
    let y_max = bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut svg = String::new();
    let res = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(72)
            .build_cartesian_2d(
                // A segmented range a..b has b − a + 1 segments.
                (0u32..(bars.len() as u32 - 1).max(1)).into_segmented(),
                0f64..(y_max * 1.15).max(1e-6),
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_desc)
            .x_labels(bars.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| format_num(*v))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (_, v)) in bars.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(
                    Histogram::vertical(&chart)
                        .style(c.filled())
                        .margin(30)
                        .data([(i as u32, *v)]),
                )
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())
    })();
    match res {
        Ok(()) => svg,
        Err(e) => format!(
            "<p class=\"empty\">{}: chart failed: {}</p>",
            escape(title),
            escape(&e)
        ),
    }
}

/// Percentile labels: as many decimals as the nines need (90, 99, 99.9, 99.99).
pub fn format_pct(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Short number labels: 3 significant digits, no trailing zeros.
pub fn format_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        return crate::report::thousands(v);
    }
    let s = if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

const CSS: &str = "\
@page{size:A4;margin:12mm}\
body{font-family:sans-serif;margin:20px auto;padding:0 16px;color:#222;max-width:760px;font-size:14px;line-height:1.35}\
h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:22px 0 4px}\
.verdict{font-size:18px;font-weight:bold;padding:8px 12px;border-radius:4px;margin:8px 0}\
.held{background:#e6f4ea;color:#137333}.missed{background:#fce8e6;color:#a50e0e}\
.scenario{color:#444;font-size:13px}\
table{border-collapse:collapse;font-size:12px;width:100%;margin:6px 0}\
th,td{padding:3px 4px;text-align:right;border-bottom:1px solid #e2e2e2;white-space:nowrap}\
th:first-child,td:first-child{text-align:left}tr.sub td{color:#666;border-bottom:none}\
ul.notes{padding-left:18px;font-size:13px}ul.notes li{margin:3px 0}.warn{color:#a50e0e;font-weight:bold}\
svg.chart{display:block;width:100%;height:auto;margin:6px 0 0}\
.legend{font-size:12px;margin:2px 0 10px}.legend span{margin-right:14px;white-space:nowrap;display:inline-block}\
.legend i{display:inline-block;width:22px;height:0;margin-right:5px;vertical-align:middle}\
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:11px}.empty{color:#888}\
@media print{body{margin:0;max-width:none}details{display:none}}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{t}</title>\n\
<style>{CSS}</style></head><body>\n<h1>{t}</h1>\n{body}\n</body></html>\n",
        t = escape(title)
    )
}

/// The summary as an HTML table: one row per operation, and under an operation with
/// shed answers, its admitted and shed latencies apart.
fn summary_table(r: &Report) -> String {
    use crate::report::thousands;
    let mut o = String::from(
        "<table class=\"summary\"><tr><th>operation</th><th>sent</th><th>ok</th><th>rejected</th>\
<th>shed</th><th>errors</th><th>goodput/s</th><th>shed/s</th><th>p50 ms</th><th>p99 ms</th>\
<th>p99.9 ms</th><th>max ms</th></tr>\n",
    );
    let lat = |l: &crate::stats::LatencySummary| {
        format!(
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
            format_num(l.p50),
            format_num(l.p99),
            format_num(l.p999),
            format_num(l.max)
        )
    };
    for (key, op) in &r.operations {
        if op.sent == 0 {
            continue;
        }
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
            escape(key),
            thousands(op.sent as f64),
            thousands(op.ok as f64),
            thousands(op.rejected.values().sum::<u64>() as f64),
            thousands(op.shed as f64),
            thousands(op.errors as f64),
            thousands(op.goodput_per_s),
            thousands(op.shed_per_s),
            lat(&op.latency_ms)
        );
        if op.shed > 0 {
            let _ = writeln!(
                o,
                "<tr class=\"sub\"><td colspan=\"8\">{key}: admitted (ok + rejected) latency</td>{}</tr>\
<tr class=\"sub\"><td colspan=\"8\">{key}: shed (429/503) latency</td>{}</tr>",
                lat(&op.admitted_latency_ms),
                lat(&op.shed_latency_ms)
            );
        }
    }
    o.push_str("</table>\n");
    o
}

/// The notes under the summary: rejections by title, harness lag, crowd, read ceiling,
/// correctness.
fn notes(r: &Report, extras: &TableExtras) -> String {
    let mut items: Vec<String> = Vec::new();
    for (key, op) in &r.operations {
        if !op.rejected.is_empty() {
            let list: Vec<String> = op
                .rejected
                .iter()
                .map(|(t, n)| format!("{} {}", escape(t), crate::report::thousands(*n as f64)))
                .collect();
            items.push(format!("{key} rejected: {}", list.join(", ")));
        }
        if op.shed_without_retry_after > 0 {
            items.push(format!(
                "<span class=\"warn\">{key}: {} shed answers without Retry-After</span>",
                op.shed_without_retry_after
            ));
        }
        if let Some(kinds) = extras.error_kinds.get(key) {
            let list: Vec<String> = kinds
                .iter()
                .map(|(k, n)| format!("{} {n}", escape(k)))
                .collect();
            items.push(format!(
                "<span class=\"warn\">{key} errors: {}</span>",
                list.join(", ")
            ));
        }
    }
    if let Some(h) = &r.harness {
        let line = format!(
            "harness send lag: p50 {} ms, p99 {} ms, max {} ms",
            format_num(h.send_lag_ms.p50),
            format_num(h.send_lag_ms.p99),
            format_num(h.send_lag_ms.max)
        );
        items.push(match &h.note {
            Some(n) => format!("<span class=\"warn\">{line}: SPOILED: {}</span>", escape(n)),
            None => format!("{line} (does not spoil the figures)"),
        });
    }
    if let Some(c) = &r.crowd {
        let text = escape(&crowd_line(c));
        items.push(if c.every_buyer_answered {
            text
        } else {
            format!("<span class=\"warn\">{text}</span>")
        });
    }
    if let Some(rc) = &r.read_ceiling {
        items.push(format!(
            "read ceiling ({} in flight): /health {}/s, availability {}/s, ratio {:.2}",
            rc.concurrency,
            crate::report::thousands(rc.health_per_s),
            crate::report::thousands(rc.availability_per_s),
            rc.ratio
        ));
    }
    if r.violations.is_empty() {
        items.push("correctness: no oversell, no user over its limit".into());
    } else {
        for v in &r.violations {
            items.push(format!(
                "<span class=\"warn\">VIOLATION {:?} sku {}: {}</span>",
                v.kind,
                escape(&v.sku_id),
                escape(&v.message)
            ));
        }
    }
    let mut o = String::from("<ul class=\"notes\">");
    for i in items {
        let _ = write!(o, "<li>{i}</li>");
    }
    o.push_str("</ul>\n");
    o
}

/// The soak section: per-window latency, RSS and CPU of the watched processes (line
/// charts over the run, in minutes), the flatness checks, and the windows as a table.
pub fn soak_section(s: &crate::soak::SoakReport, slo: Option<f64>) -> String {
    use crate::report::thousands;
    use crate::soak::mb;
    let x = |w: &crate::soak::SoakWindow| w.end_s / 60.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<h2>Soak: per {} s</h2>\n<p class=\"verdict {}\">{}</p>\n<ul class=\"notes\">",
        format_num(s.period_secs),
        if s.flatness.held { "held" } else { "missed" },
        escape(&s.flatness.summary())
    );
    for c in &s.flatness.checks {
        let (class, mark) = match c.held {
            Some(true) => ("", "held"),
            Some(false) => (" class=\"warn\"", "MISSED"),
            None => ("", "not judged"),
        };
        let _ = write!(
            o,
            "<li{class}>{}: {mark}: {}</li>",
            escape(&c.name),
            escape(&c.text)
        );
    }
    o.push_str("</ul>\n");
    let colors = [PALETTE[0], PALETTE[1], PALETTE[2]];
    let mut latency = Vec::new();
    for op in Op::ALL {
        let key = op.key();
        let pts = |q99: bool| -> Vec<(f64, f64)> {
            s.windows
                .iter()
                .filter_map(|w| {
                    let f = w.ops.get(key)?;
                    let v = if q99 { f.p99_ms } else { f.p50_ms };
                    (v > 0.0).then(|| (x(w), v))
                })
                .collect()
        };
        let p99 = pts(true);
        if p99.is_empty() {
            continue;
        }
        latency.push(Line::solid(format!("{key} p99"), p99, colors[op.index()]));
        latency.push(Line::dashed(
            format!("{key} p50"),
            pts(false),
            colors[op.index()],
        ));
    }
    o.push_str(&chart(&ChartSpec {
        title: "latency per window (admitted requests, by scheduled time)",
        x_desc: "minutes",
        y_desc: "ms (log)",
        x_axis: Axis::Linear,
        y_axis: Axis::Log,
        lines: &latency,
        slo,
    }));
    let per_proc = |f: &dyn Fn(&crate::soak::ProcFigures) -> f64| -> Vec<Line> {
        s.watched
            .keys()
            .enumerate()
            .map(|(i, name)| {
                Line::solid(
                    name.clone(),
                    s.windows
                        .iter()
                        .filter_map(|w| w.processes.get(name).map(|p| (x(w), f(p))))
                        .collect(),
                    PALETTE[(i + 3) % PALETTE.len()],
                )
            })
            .filter(|l| !l.points.is_empty())
            .collect()
    };
    if s.watched.is_empty() {
        o.push_str(
            "<p class=\"empty\">No watched process: give --watch-pid NAME=PID for RSS and CPU.</p>\n",
        );
    } else {
        o.push_str(&chart(&ChartSpec {
            title: "RSS of the watched processes (end of each window)",
            x_desc: "minutes",
            y_desc: "MB",
            x_axis: Axis::Linear,
            y_axis: Axis::Linear,
            lines: &per_proc(&|p| p.rss_bytes as f64 / 1e6),
            slo: None,
        }));
        o.push_str(&chart(&ChartSpec {
            title: "CPU of the watched processes (utime + stime per window)",
            x_desc: "minutes",
            y_desc: "cores",
            x_axis: Axis::Linear,
            y_axis: Axis::Linear,
            lines: &per_proc(&|p| p.cpu_cores),
            slo: None,
        }));
    }
    o.push_str("<table><tr><th>window s</th>");
    let ops: Vec<&str> = Op::ALL
        .iter()
        .map(|op| op.key())
        .filter(|k| s.windows.iter().any(|w| w.ops.contains_key(*k)))
        .collect();
    for k in &ops {
        let _ = write!(o, "<th>{k} p50 / p99 ms</th>");
    }
    o.push_str("<th>shed</th><th>errors</th><th>closed</th>");
    for name in s.watched.keys() {
        let _ = write!(o, "<th>{} RSS MB / CPU</th>", escape(name));
    }
    o.push_str("</tr>\n");
    for w in &s.windows {
        let _ = write!(
            o,
            "<tr><td>{}–{}</td>",
            format_num(w.start_s),
            format_num(w.end_s)
        );
        for k in &ops {
            match w.ops.get(*k) {
                Some(f) => {
                    let _ = write!(
                        o,
                        "<td>{} / {}</td>",
                        format_num(f.p50_ms),
                        format_num(f.p99_ms)
                    );
                }
                None => o.push_str("<td>–</td>"),
            }
        }
        let sum = |f: fn(&crate::soak::WindowFigures) -> u64| w.ops.values().map(f).sum::<u64>();
        let _ = write!(
            o,
            "<td>{}</td><td>{}</td><td>{}</td>",
            thousands(sum(|f| f.shed) as f64),
            thousands(sum(|f| f.errors) as f64),
            thousands(sum(|f| f.connections_closed) as f64)
        );
        for name in s.watched.keys() {
            match w.processes.get(name) {
                Some(p) => {
                    let _ = write!(o, "<td>{} / {:.2}</td>", mb(p.rss_bytes), p.cpu_cores);
                }
                None => o.push_str("<td>–</td>"),
            }
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n");
    o
}

/// The find-max section: its steps as a table, offered vs answered, p99 per step.
fn find_max_section(fm: &crate::report::FindMaxReport) -> String {
    use crate::report::thousands;
    let mut o = String::from("<h2>Find-max steps</h2>\n");
    o.push_str(
        "<table><tr><th>offered writes/s</th><th>answered/s</th><th>p99 ms</th><th>failed or shed</th><th></th></tr>\n",
    );
    for st in &fm.steps {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.3} %</td><td>{}</td></tr>",
            thousands(st.write_rate_per_s),
            thousands(st.reserve_throughput_per_s),
            format_num(st.reserve_p99_ms),
            st.failure_share * 100.0,
            if st.held {
                "held"
            } else {
                "<span class=\"warn\">failed</span>"
            }
        );
    }
    o.push_str("</table>\n");
    let mut steps = fm.steps.clone();
    steps.sort_by(|a, b| a.write_rate_per_s.total_cmp(&b.write_rate_per_s));
    // A repeated step (a failure being confirmed) is one rate: a line needs two.
    let mut rates: Vec<f64> = steps.iter().map(|s| s.write_rate_per_s).collect();
    rates.dedup();
    if rates.len() < 2 {
        return o;
    }
    let offered: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| (s.write_rate_per_s, s.write_rate_per_s))
        .collect();
    let answered: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| (s.write_rate_per_s, s.reserve_throughput_per_s))
        .collect();
    let p99: Vec<(f64, f64)> = steps
        .iter()
        .map(|s| (s.write_rate_per_s, s.reserve_p99_ms))
        .collect();
    o.push_str(&chart(&ChartSpec {
        title: "answered vs offered, per step",
        x_desc: "offered writes/s",
        y_desc: "per second",
        x_axis: Axis::Linear,
        y_axis: Axis::Linear,
        lines: &[
            Line::dashed("offered", offered, RGBColor(120, 120, 120)),
            Line::solid("answered", answered, PALETTE[0]),
        ],
        slo: None,
    }));
    o.push_str(&chart(&ChartSpec {
        title: "reservation p99 per step",
        x_desc: "offered writes/s",
        y_desc: "ms (log)",
        x_axis: Axis::Linear,
        y_axis: Axis::Log,
        lines: &[Line::solid("reserve p99", p99, PALETTE[0])],
        slo: Some(fm.slo_p99_ms),
    }));
    o
}

/// The page of one run; `slo` draws the SLO line on the latency charts.
pub fn run_page(
    report: &Report,
    extras: &TableExtras,
    charts: &ChartData,
    slo: Option<f64>,
) -> String {
    let tl = &charts.timeline;
    let bucket_s = tl.bucket_ns as f64 / 1e9;
    let at = |i: usize| (i as f64 + 0.5) * bucket_s;
    let b_of = |op: Op| &tl.buckets[op.index()];
    let used = |op: Op| b_of(op).iter().any(|b| b.offered > 0 || b.completed > 0);
    let q_series = |op: Op, q: f64, shed: bool| -> Vec<(f64, f64)> {
        b_of(op)
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let h = if shed {
                    &b.shed_latency_us
                } else {
                    &b.latency_us
                };
                (!h.is_empty()).then(|| (at(i), h.value_at_quantile(q) as f64 / 1000.0))
            })
            .collect()
    };
    let rate = |op: Op, f: &dyn Fn(&crate::stats::Bucket) -> u64| -> Vec<(f64, f64)> {
        b_of(op)
            .iter()
            .enumerate()
            .map(|(i, b)| (at(i), f(b) as f64 / bucket_s))
            .collect()
    };
    let (red, blue, green, orange, purple, brown) = (
        PALETTE[0], PALETTE[1], PALETTE[2], PALETTE[3], PALETTE[4], PALETTE[5],
    );
    let mut latency = Vec::new();
    let mut throughput = Vec::new();
    if used(Op::Reserve) {
        latency.push(Line::solid(
            "reserve p50 (admitted)",
            q_series(Op::Reserve, 0.5, false),
            orange,
        ));
        latency.push(Line::solid(
            "reserve p99 (admitted)",
            q_series(Op::Reserve, 0.99, false),
            red,
        ));
        let shed = q_series(Op::Reserve, 0.99, true);
        if !shed.is_empty() {
            latency.push(Line::dashed("reserve p99 (shed 429/503)", shed, purple));
        }
        throughput.push(Line::dashed(
            "reserve offered/s",
            rate(Op::Reserve, &|b| b.offered),
            red,
        ));
        throughput.push(Line::solid(
            "reserve goodput/s (201 + 409)",
            rate(Op::Reserve, &|b| b.goodput),
            red,
        ));
        if b_of(Op::Reserve).iter().any(|b| b.shed > 0) {
            throughput.push(Line::solid(
                "reserve shed/s",
                rate(Op::Reserve, &|b| b.shed),
                purple,
            ));
        }
        if b_of(Op::Reserve).iter().any(|b| b.errors > 0) {
            throughput.push(Line::solid(
                "reserve errors/s",
                rate(Op::Reserve, &|b| b.errors),
                brown,
            ));
        }
    }
    if used(Op::Availability) {
        latency.push(Line::solid(
            "availability p99",
            q_series(Op::Availability, 0.99, false),
            blue,
        ));
        throughput.push(Line::dashed(
            "availability offered/s",
            rate(Op::Availability, &|b| b.offered),
            blue,
        ));
        throughput.push(Line::solid(
            "availability answered/s",
            rate(Op::Availability, &|b| b.completed - b.errors - b.shed),
            blue,
        ));
    }
    if used(Op::Checkout) {
        latency.push(Line::solid(
            "checkout p99",
            q_series(Op::Checkout, 0.99, false),
            green,
        ));
        throughput.push(Line::solid(
            "checkout answered/s",
            rate(Op::Checkout, &|b| b.completed - b.errors - b.shed),
            green,
        ));
    }
    let mut stock = Vec::new();
    if !charts.stock.is_empty() {
        let hot = charts.sku_ids.first().cloned().unwrap_or_default();
        stock.push(Line::solid(
            format!("{hot} (hot) available"),
            charts
                .stock
                .iter()
                .map(|p| {
                    (
                        p.t_ms / 1000.0,
                        p.available.first().copied().unwrap_or(0) as f64,
                    )
                })
                .collect(),
            red,
        ));
        if charts.sku_ids.len() > 1 {
            stock.push(Line::solid(
                "all products available",
                charts
                    .stock
                    .iter()
                    .map(|p| (p.t_ms / 1000.0, p.available.iter().sum::<i64>() as f64))
                    .collect(),
                blue,
            ));
        }
    }
    let curve_colors = [red, blue, green];
    let curves: Vec<Line> = Op::ALL
        .iter()
        .map(|op| {
            Line::solid(
                op.key(),
                percentile_curve(&charts.latency_us[op.index()]),
                curve_colors[op.index()],
            )
        })
        .filter(|l| !l.points.is_empty())
        .collect();

    let mut body = String::new();
    if let Some(v) = &report.verdict {
        let _ = writeln!(
            body,
            "<p class=\"verdict {}\">{}</p>",
            if v.held { "held" } else { "missed" },
            escape(&v.text)
        );
    }
    let _ = writeln!(
        body,
        "<p class=\"scenario\">{}</p>",
        escape(&describe_scenario(report))
    );
    body.push_str(&summary_table(report));
    body.push_str(&notes(report, extras));
    if let Some(s) = &report.soak {
        body.push_str(&soak_section(s, slo));
    }
    if let Some(fm) = &report.find_max {
        body.push_str(&find_max_section(fm));
        let _ = writeln!(
            body,
            "<p class=\"scenario\">The charts below are of the step at the highest rate that held (or the last step).</p>"
        );
    }
    let _ = writeln!(
        body,
        "<p class=\"scenario\">Latency is measured from each request's scheduled send time (open loop, coordinated omission corrected); buckets of {} ms.</p>",
        format_num(bucket_s * 1000.0)
    );
    let _ = writeln!(body, "<h2>Latency over time</h2>");
    body.push_str(&chart(&ChartSpec {
        title: "latency by scheduled time",
        x_desc: "seconds",
        y_desc: "ms (log)",
        x_axis: Axis::Linear,
        y_axis: Axis::Log,
        lines: &latency,
        slo,
    }));
    let _ = writeln!(body, "<h2>Offered vs answered</h2>");
    body.push_str(&chart(&ChartSpec {
        title: "requests per second (offered by schedule, answered by completion)",
        x_desc: "seconds",
        y_desc: "per second",
        x_axis: Axis::Linear,
        y_axis: Axis::Linear,
        lines: &throughput,
        slo: None,
    }));
    let _ = writeln!(body, "<h2>Stock over time</h2>");
    body.push_str(&chart(&ChartSpec {
        title: "availableCount (admin figures)",
        x_desc: "seconds",
        y_desc: "units",
        x_axis: Axis::Linear,
        y_axis: Axis::Linear,
        lines: &stock,
        slo: None,
    }));
    let _ = writeln!(body, "<h2>Latency percentiles</h2>");
    body.push_str(&chart(&ChartSpec {
        title: "latency by percentile (whole run)",
        x_desc: "percentile",
        y_desc: "ms (log)",
        x_axis: Axis::Percentile,
        y_axis: Axis::Log,
        lines: &curves,
        slo,
    }));
    let _ = writeln!(
        body,
        "<details><summary>The same figures as text</summary><pre>{}</pre></details>",
        escape(&render_table(report, extras))
    );
    page(
        &format!("flashsale-bench: {}", report.scenario.label),
        &body,
    )
}

/// One bar chart of the compare page.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    /// Chart title.
    pub title: &'static str,
    /// Y axis.
    pub y_desc: &'static str,
    /// (target, value).
    pub data: Vec<(String, f64)>,
}

/// The compare page: the ratio table and bar charts.
pub fn compare_page(table: &str, bars: &[Bars], links: &[(String, String)]) -> String {
    let mut body = String::new();
    let _ = writeln!(body, "<pre>{}</pre>", escape(table));
    for b in bars {
        body.push_str(&bar_chart(b.title, b.y_desc, &b.data));
    }
    if !links.is_empty() {
        let _ = writeln!(body, "<h2>Per-target reports</h2><ul>");
        for (name, href) in links {
            let _ = writeln!(
                body,
                "<li><a href=\"{}\">{}</a></li>",
                escape(href),
                escape(name)
            );
        }
        let _ = writeln!(body, "</ul>");
    }
    page("flashsale-bench: side by side", &body)
}

/// The plan page (`plan --html-out`): the answer at a glance (per mode: feasible or not,
/// the counts, the binding limit), the cores per role as bars, and the planner's table.
pub fn plan_page(table: &str, json: &serde_json::Value) -> String {
    let mut body = String::new();
    let modes = json["modes"].as_object().cloned().unwrap_or_default();
    for (mode, m) in &modes {
        // A prediction carries the plan at its maximum under `plan`.
        let plan = if m.get("plan").is_some() {
            &m["plan"]
        } else {
            m
        };
        let headline = match m.get("predicted_max_holds_per_s") {
            Some(h) => format!(
                "{mode}: at most {} holds/s and {} reads/s",
                format_num(h.as_f64().unwrap_or(0.0)),
                format_num(m["predicted_max_reads_per_s"].as_f64().unwrap_or(0.0))
            ),
            None if plan["feasible"].as_bool() == Some(true) => format!("{mode}: feasible"),
            None => format!("{mode}: NOT FEASIBLE"),
        };
        let _ = writeln!(body, "<h2>{}</h2>", escape(&headline));
        let _ = writeln!(
            body,
            "<p>gateways {} · engines {} · partitions {} · brokers {} · machines {}</p>",
            plan["gateways"],
            plan["engines"],
            plan["partitions"],
            plan["brokers"],
            plan["machines"]
        );
        let limit = m
            .get("binding_limit")
            .or(plan.get("binding_limit"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let _ = writeln!(body, "<p><b>binding limit:</b> {}</p>", escape(limit));
        let bars: Vec<(String, f64)> = plan["roles"]
            .as_object()
            .map(|r| {
                r.iter()
                    .map(|(name, v)| (name.clone(), v["cores"].as_f64().unwrap_or(0.0)))
                    .collect()
            })
            .unwrap_or_default();
        body.push_str(&bar_chart(
            &format!("{mode}: cores per role"),
            "cores",
            &bars,
        ));
    }
    let _ = writeln!(
        body,
        "<h2>The planner's table</h2><pre>{}</pre>",
        escape(table)
    );
    page("flashsale-bench: capacity plan", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_page_shows_the_answer() {
        let json = serde_json::json!({"modes": {"kafka": {
            "feasible": false, "gateways": 3, "engines": 2, "partitions": 6, "brokers": 3,
            "machines": 2, "binding_limit": "one hot SKU is one partition",
            "roles": {"gateway": {"cores": 2.5}, "engine": {"cores": 1.0}}}}});
        let p = plan_page("the table", &json);
        assert!(p.contains("kafka: NOT FEASIBLE"), "{p}");
        assert!(p.contains("gateways 3 · engines 2"));
        assert!(p.contains("one hot SKU is one partition"));
        assert!(p.contains("<svg"));
    }

    #[test]
    fn charts_are_inline_svg_without_network_assets() {
        let s = line_chart(
            "t",
            "x",
            "y",
            &[
                ("a".into(), vec![(0.0, 1.0), (1.0, 3.0)]),
                ("b".into(), vec![]),
            ],
            true,
        );
        assert!(s.starts_with("<svg"), "{s}");
        assert!(!s.contains("http://") || s.contains("http://www.w3.org/2000/svg"));
        let p = percentile_chart(
            "p",
            &[(
                "a".into(),
                vec![(0.0, 1.0), (50.0, 2.0), (99.0, 9.0), (100.0, 10.0)],
            )],
            Some(50.0),
        );
        assert!(p.starts_with("<svg"));
        assert!(p.contains("SLO p99 50 ms"));
        let b = bar_chart("b", "y", &[("x".into(), 3.0), ("y".into(), 5.0)]);
        assert!(b.starts_with("<svg"));
        assert!(line_chart("t", "x", "y", &[], false).contains("no data"));
    }

    /// Data of 1–5 ms gets several labelled ticks, not one.
    #[test]
    fn log_ticks_are_readable_on_short_ranges() {
        let t = log_ticks(1.0 / 1.6, 5.0 * 1.6);
        assert!(t.len() >= 4, "{t:?}");
        for want in [1.0, 2.0, 5.0] {
            assert!(t.iter().any(|v| (v - want).abs() < 1e-9), "{want} in {t:?}");
        }
        let long = log_ticks(0.01, 10_000.0);
        assert!(long.len() <= 8 && long.len() >= 4, "{long:?}");
        assert!(log_ticks(0.0, 1.0).is_empty());
        assert_eq!(
            linear_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        assert_eq!(
            linear_ticks(0.0, 1000.0, 4),
            vec![0.0, 250.0, 500.0, 750.0, 1000.0]
        );
    }

    #[test]
    fn percentile_ticks_do_not_crowd_the_max() {
        let t = pct_ticks(4.15, Some(4.0));
        let labels: Vec<&str> = t.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(labels, vec!["p0", "p50", "p90", "p99", "p99.9", "max"]);
        assert!(t.windows(2).all(|w| w[1].0 - w[0].0 >= 0.3), "{t:?}");
    }

    #[test]
    fn numbers_and_escaping() {
        assert_eq!(format_num(99.9), "99.9");
        assert_eq!(format_num(1234.4), "1,234");
        assert_eq!(format_num(0.5), "0.5");
        assert_eq!(format_num(2.0), "2");
        assert_eq!(format_pct(99.99), "99.99");
        assert_eq!(format_pct(90.0), "90");
        assert_eq!(escape("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
