//! Self-contained HTML reports: inline SVG charts drawn with `plotters`, no network assets.
//!
//! A run's page has latency over time, throughput over time, stock over time and the
//! latency percentile curve, above the same table the terminal shows. The compare page
//! has the ratio table and bar charts of the targets side by side.

use std::fmt::Write as _;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::report::{render_table, Report, TableExtras};
use crate::runner::ChartData;
use crate::schedule::Op;
use crate::stats::percentile_curve;

const W: u32 = 900;
const H: u32 = 360;
const FONT: &str = "sans-serif";

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

/// A line chart as SVG; `log_y` for latency. Empty series are skipped; with no data at
/// all a short note is returned instead.
pub fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log_y: bool,
) -> String {
    let pts: Vec<&(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter()).collect();
    if pts.is_empty() {
        return format!("<p class=\"empty\">{}: no data</p>", escape(title));
    }
    let x_max = pts.iter().map(|p| p.0).fold(0.0f64, f64::max).max(1e-3);
    let x_min = pts
        .iter()
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let y_max = pts.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let mut svg = String::new();
    let res = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut b = ChartBuilder::on(&root);
        b.caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64);
        if log_y {
            let floor = pts
                .iter()
                .map(|p| p.1)
                .filter(|v| *v > 0.0)
                .fold(f64::INFINITY, f64::min)
                .min(y_max)
                .max(0.001)
                / 2.0;
            let mut chart = b
                .build_cartesian_2d(
                    x_min..x_max,
                    (floor..(y_max * 1.5).max(floor * 10.0)).log_scale(),
                )
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .y_labels(6)
                .y_label_formatter(&|v| format_num(*v))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, (name, p)) in series
                .iter()
                .enumerate()
                .filter(|(_, (_, p))| !p.is_empty())
            {
                let c = PALETTE[i % PALETTE.len()];
                chart
                    .draw_series(LineSeries::new(
                        p.iter().map(|&(x, y)| (x, y.max(floor))),
                        c.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        } else {
            let mut chart = b
                .build_cartesian_2d(x_min..x_max, 0f64..(y_max * 1.1).max(1.0))
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .y_label_formatter(&|v| format_num(*v))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, (name, p)) in series
                .iter()
                .enumerate()
                .filter(|(_, (_, p))| !p.is_empty())
            {
                let c = PALETTE[i % PALETTE.len()];
                chart
                    .draw_series(LineSeries::new(p.iter().copied(), c.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
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

/// The percentile curve: x is 1/(1−q) on a log axis (so p90, p99, p99.9 are evenly
/// spaced), labelled as percentiles.
pub fn percentile_chart(title: &str, series: &[Series]) -> String {
    // Input points are (percentile %, ms); map the percentile to 1/(1−q), capped where
    // q = 1 (the max) so it sits at the right edge.
    let mapped: Vec<Series> = series
        .iter()
        .map(|(n, p)| {
            let mut pts: Vec<(f64, f64)> = Vec::with_capacity(p.len());
            for &(pct, ms) in p {
                // The max (q = 1) has no finite position: draw it just right of the
                // highest percentile point.
                let x = if pct >= 100.0 {
                    pts.last().map_or(10.0, |l| l.0 * 2.0)
                } else {
                    1.0 / (1.0 - pct / 100.0)
                };
                pts.push((x, ms));
            }
            (n.clone(), pts)
        })
        .collect();
    let pts: Vec<&(f64, f64)> = mapped.iter().flat_map(|(_, p)| p.iter()).collect();
    if pts.is_empty() {
        return format!("<p class=\"empty\">{}: no data</p>", escape(title));
    }
    let x_max = pts.iter().map(|p| p.0).fold(10.0f64, f64::max) * 1.2;
    let y_max = pts.iter().map(|p| p.1).fold(0.0f64, f64::max);
    let y_min = (pts
        .iter()
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(y_max)
        .max(0.001))
        / 2.0;
    let mut svg = String::new();
    let res = (|| -> Result<(), String> {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (1f64..x_max).log_scale(),
                (y_min..(y_max * 1.5).max(y_min * 10.0)).log_scale(),
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency ms")
            .x_label_formatter(&|x| format!("p{}", format_pct(100.0 * (1.0 - 1.0 / x))))
            .y_label_formatter(&|v| format_num(*v))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, p)) in mapped
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| !p.is_empty())
        {
            let c = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    p.iter().map(|&(x, y)| (x, y.max(y_min))),
                    c.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
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

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
body{{font-family:sans-serif;margin:24px;color:#222;max-width:960px}}\
pre{{background:#f6f6f6;padding:12px;overflow-x:auto;font-size:12px}}\
h2{{margin-top:28px;font-size:18px}}.empty{{color:#888}}svg{{display:block;margin:8px 0}}\
</style></head><body>\n<h1>{t}</h1>\n{body}\n</body></html>\n",
        t = escape(title)
    )
}

/// The page of one run.
pub fn run_page(report: &Report, extras: &TableExtras, charts: &ChartData) -> String {
    let tl = &charts.timeline;
    let bucket_s = tl.bucket_ns as f64 / 1e9;
    let mut latency = Vec::new();
    let mut throughput = Vec::new();
    for op in Op::ALL {
        let b = &tl.buckets[op.index()];
        if b.iter()
            .all(|b| b.completed == 0 && b.latency_us.is_empty())
        {
            continue;
        }
        let at = |i: usize| (i as f64 + 0.5) * bucket_s;
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            if op != Op::Reserve && q < 0.9 {
                continue;
            }
            latency.push((
                format!("{} {name}", op.key()),
                b.iter()
                    .enumerate()
                    .filter(|(_, b)| !b.latency_us.is_empty())
                    .map(|(i, b)| (at(i), b.latency_us.value_at_quantile(q) as f64 / 1000.0))
                    .collect(),
            ));
        }
        throughput.push((
            format!("{} answered/s", op.key()),
            b.iter()
                .enumerate()
                .map(|(i, b)| (at(i), (b.completed - b.errors) as f64 / bucket_s))
                .collect(),
        ));
        if op == Op::Reserve {
            throughput.push((
                "reserve ok/s".to_string(),
                b.iter()
                    .enumerate()
                    .map(|(i, b)| (at(i), b.ok as f64 / bucket_s))
                    .collect(),
            ));
        }
    }
    let mut stock: Vec<Series> = Vec::new();
    if !charts.stock.is_empty() {
        let hot = charts.sku_ids.first().cloned().unwrap_or_default();
        stock.push((
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
        ));
        if charts.sku_ids.len() > 1 {
            stock.push((
                "all products available".to_string(),
                charts
                    .stock
                    .iter()
                    .map(|p| (p.t_ms / 1000.0, p.available.iter().sum::<i64>() as f64))
                    .collect(),
            ));
        }
    }
    let curves: Vec<Series> = Op::ALL
        .iter()
        .map(|op| {
            (
                op.key().to_string(),
                percentile_curve(&charts.latency_us[op.index()]),
            )
        })
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let mut body = String::new();
    let _ = writeln!(body, "<pre>{}</pre>", escape(&render_table(report, extras)));
    let _ = writeln!(
        body,
        "<p>Latency is measured from each request's scheduled send time (open loop, coordinated omission corrected). Buckets of {} ms.</p>",
        format_num(bucket_s * 1000.0)
    );
    let _ = writeln!(body, "<h2>Latency over time</h2>");
    body.push_str(&line_chart(
        "latency by scheduled time",
        "seconds",
        "ms (log)",
        &latency,
        true,
    ));
    let _ = writeln!(body, "<h2>Throughput over time</h2>");
    body.push_str(&line_chart(
        "answers per second by completion time",
        "seconds",
        "per second",
        &throughput,
        false,
    ));
    let _ = writeln!(body, "<h2>Stock over time</h2>");
    body.push_str(&line_chart(
        "availableCount (admin figures)",
        "seconds",
        "units",
        &stock,
        false,
    ));
    let _ = writeln!(body, "<h2>Latency percentiles</h2>");
    body.push_str(&percentile_chart("latency by percentile", &curves));
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

#[cfg(test)]
mod tests {
    use super::*;

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
        );
        assert!(p.starts_with("<svg"));
        let b = bar_chart("b", "y", &[("x".into(), 3.0), ("y".into(), 5.0)]);
        assert!(b.starts_with("<svg"));
        assert!(line_chart("t", "x", "y", &[], false).contains("no data"));
    }

    #[test]
    fn numbers_and_escaping() {
        assert_eq!(format_num(99.9), "99.9");
        assert_eq!(format_num(1234.4), "1234");
        assert_eq!(format_num(0.5), "0.5");
        assert_eq!(format_num(2.0), "2");
        assert_eq!(format_pct(99.99), "99.99");
        assert_eq!(format_pct(90.0), "90");
        assert_eq!(escape("<a&b>"), "&lt;a&amp;b&gt;");
    }
}
