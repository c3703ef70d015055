//! A line plot of loss curves written as SVG by hand: axes with "nice"
//! ticks, grid, axis labels, title and legend; one colour per series. No
//! plotting dependency, and any browser or `rsvg-convert` shows it.
//!
//! Non-finite points (a diverged loss) break a line instead of bending
//! the axes; long series are thinned to the min and max per pixel column,
//! which looks the same and keeps the file small.

use std::fmt::Write as _;
use std::path::Path;

use super::error::Result;
use super::fsutil::write_atomic;

/// One named curve: `(x, y)` points in order of x.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            name: name.into(),
            points,
        }
    }
}

/// Several series against a common x axis (the step).
#[derive(Clone, Debug, PartialEq)]
pub struct LossPlot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Size of the picture in pixels.
    pub width: u32,
    pub height: u32,
    pub series: Vec<Series>,
}

/// Matplotlib's "tab10" colours, distinct for people with common colour
/// blindness.
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

const LEFT: f64 = 78.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;

impl LossPlot {
    /// An empty 800x480 plot with x label "step" and y label "loss".
    pub fn new(title: impl Into<String>) -> LossPlot {
        LossPlot {
            title: title.into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            width: 800,
            height: 480,
            series: Vec::new(),
        }
    }

    /// Adds a series (builder style).
    pub fn with_series(mut self, name: impl Into<String>, points: Vec<(f64, f64)>) -> LossPlot {
        self.series.push(Series::new(name, points));
        self
    }

    pub fn add_series(&mut self, name: impl Into<String>, points: Vec<(f64, f64)>) {
        self.series.push(Series::new(name, points));
    }

    /// Writes [`to_svg`](Self::to_svg) to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_svg().as_bytes())
    }

    /// The SVG document. A plot without finite points shows empty axes
    /// and "no data".
    pub fn to_svg(&self) -> String {
        let w = self.width.max(200) as f64;
        let h = self.height.max(150) as f64;
        let (x0, x1) = (LEFT, w - RIGHT);
        let (y0, y1) = (TOP, h - BOTTOM); // y0 is the top of the plot area.

        let finite = || {
            self.series
                .iter()
                .flat_map(|s| s.points.iter())
                .filter(|(x, y)| x.is_finite() && y.is_finite())
        };
        let has_data = finite().next().is_some();
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in finite() {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymin = ymin.min(y);
            ymax = ymax.max(y);
        }
        if !has_data {
            (xmin, xmax, ymin, ymax) = (0.0, 1.0, 0.0, 1.0);
        }
        // Losses are non-negative: start the y axis at 0 so that the
        // small regularization loss and the large total share one scale.
        if ymin >= 0.0 {
            ymin = 0.0;
        }
        // x spans exactly the data (steps need no margin); y widens to
        // whole ticks.
        let mut xt = nice_ticks(xmin, xmax, 6);
        if xmax > xmin {
            xt.ticks
                .retain(|&t| t >= xmin - 1e-9 * xt.step && t <= xmax + 1e-9 * xt.step);
            (xt.lo, xt.hi) = (xmin, xmax);
        }
        let yt = nice_ticks(ymin, ymax, 6);
        let (xa, xb) = (xt.lo, xt.hi);
        let (ya, yb) = (yt.lo, yt.hi);
        let px = |x: f64| x0 + (x - xa) / (xb - xa) * (x1 - x0);
        let py = |y: f64| y1 - (y - ya) / (yb - ya) * (y1 - y0);

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="26" font-size="17" font-weight="bold" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            escape(&self.title)
        );

        // Grid and tick labels.
        s.push_str("<g stroke=\"#e0e0e0\" stroke-width=\"1\">\n");
        for &t in &xt.ticks {
            let x = px(t);
            let _ = writeln!(s, r#"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}"/>"#);
        }
        for &t in &yt.ticks {
            let y = py(t);
            let _ = writeln!(s, r#"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}"/>"#);
        }
        s.push_str("</g>\n<g font-size=\"12\" fill=\"#333\">\n");
        for &t in &xt.ticks {
            let x = px(t);
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                y1 + 5.0,
                y1 + 19.0,
                format_tick(t, xt.step)
            );
        }
        for &t in &yt.ticks {
            let y = py(t);
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{y:.1}" x2="{x0}" y2="{y:.1}" stroke="black"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                x0 - 5.0,
                x0 - 8.0,
                y + 4.0,
                format_tick(t, yt.step)
            );
        }
        s.push_str("</g>\n");
        // Axes frame.
        let _ = writeln!(
            s,
            r#"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="black" stroke-width="1"/>"#,
            x1 - x0,
            y1 - y0
        );
        // Axis labels.
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            h - 14.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{0}" font-size="14" text-anchor="middle" transform="rotate(-90 18 {0})">{1}</text>"#,
            (y0 + y1) / 2.0,
            escape(&self.y_label)
        );

        // Curves, clipped to the plot area.
        let _ = writeln!(
            s,
            r#"<clipPath id="area"><rect x="{x0}" y="{y0}" width="{}" height="{}"/></clipPath>"#,
            x1 - x0,
            y1 - y0
        );
        s.push_str("<g clip-path=\"url(#area)\" fill=\"none\" stroke-width=\"1.8\" stroke-linejoin=\"round\">\n");
        let columns = (x1 - x0).max(1.0) as usize;
        for (i, series) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            for segment in segments(&series.points) {
                let pts = thin(&segment, xa, xb, columns);
                if pts.len() == 1 {
                    let (x, y) = pts[0];
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}" stroke="none"/>"#,
                        px(x),
                        py(y)
                    );
                    continue;
                }
                let _ = write!(s, r#"<polyline stroke="{color}" points=""#);
                for (k, &(x, y)) in pts.iter().enumerate() {
                    if k > 0 {
                        s.push(' ');
                    }
                    let _ = write!(s, "{:.1},{:.1}", px(x), py(y));
                }
                s.push_str("\"/>\n");
            }
        }
        s.push_str("</g>\n");

        if !has_data {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" font-size="16" fill="#888" text-anchor="middle">no data</text>"##,
                (x0 + x1) / 2.0,
                (y0 + y1) / 2.0
            );
        }

        // Legend, top right inside the plot area.
        if !self.series.is_empty() {
            let longest = self
                .series
                .iter()
                .map(|s| s.name.chars().count())
                .max()
                .unwrap_or(0) as f64;
            let lw = 44.0 + longest * 7.4;
            let lh = 10.0 + 20.0 * self.series.len() as f64;
            let lx = x1 - lw - 10.0;
            let ly = y0 + 10.0;
            let _ = writeln!(
                s,
                r##"<rect x="{lx:.1}" y="{ly:.1}" width="{lw:.1}" height="{lh:.1}" fill="white" fill-opacity="0.9" stroke="#999"/>"##
            );
            for (i, series) in self.series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let cy = ly + 15.0 + 20.0 * i as f64;
                let _ = writeln!(
                    s,
                    r#"<line x1="{:.1}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}" font-size="13">{}</text>"#,
                    lx + 8.0,
                    lx + 32.0,
                    lx + 38.0,
                    cy + 4.5,
                    escape(&series.name)
                );
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Tick positions covering `[lo, hi]`, which they also widen to.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticks {
    pub lo: f64,
    pub hi: f64,
    pub step: f64,
    pub ticks: Vec<f64>,
}

/// About `target` ticks at multiples of 1, 2 or 5 times a power of ten
/// (Heckbert's "nice numbers"), the axis widened to whole ticks.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        // A flat series: a unit-wide band around it.
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    };
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * mag);
    let a = (lo / step).floor();
    let b = (hi / step).ceil();
    let ticks = (0..=((b - a) as i64))
        .map(|i| (a + i as f64) * step)
        .collect();
    Ticks {
        lo: a * step,
        hi: b * step,
        step,
        ticks,
    }
}

/// A tick label with as many decimals as the tick step needs; large round
/// numbers as `12k`, `1.5M`.
pub fn format_tick(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    if v.abs() >= 10_000.0 && step >= 1000.0 {
        let (div, unit) = if v.abs() >= 1e6 && step >= 1e5 {
            (1e6, "M")
        } else {
            (1e3, "k")
        };
        let d = decimals(step / div);
        return format!("{:.*}{unit}", d, v / div);
    }
    format!("{:.*}", decimals(step), v)
}

fn decimals(step: f64) -> usize {
    if step >= 1.0 {
        // 2.5 needs one decimal.
        if (step - step.round()).abs() > 1e-9 {
            1
        } else {
            0
        }
    } else {
        let d = (-step.log10()).ceil() as usize;
        // Steps like 0.25 need one more.
        let scaled = step * 10f64.powi(d as i32);
        if (scaled - scaled.round()).abs() > 1e-6 {
            d + 1
        } else {
            d
        }
    }
}

/// Runs of finite points.
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            cur.push((x, y));
        } else if !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// At most the first, min, max and last point per pixel column (in x
/// order), so a 100k-step curve draws like the full one.
fn thin(points: &[(f64, f64)], xa: f64, xb: f64, columns: usize) -> Vec<(f64, f64)> {
    if points.len() <= 4 * columns {
        return points.to_vec();
    }
    let col = |x: f64| (((x - xa) / (xb - xa)) * columns as f64).floor() as i64;
    let mut out = Vec::with_capacity(4 * columns);
    let mut start = 0;
    while start < points.len() {
        let c = col(points[start].0);
        let mut end = start + 1;
        while end < points.len() && col(points[end].0) == c {
            end += 1;
        }
        let run = &points[start..end];
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in run.iter().enumerate() {
            if p.1 < run[lo].1 {
                lo = i;
            }
            if p.1 > run[hi].1 {
                hi = i;
            }
        }
        let mut keep = vec![0, lo, hi, run.len() - 1];
        keep.sort_unstable();
        keep.dedup();
        out.extend(keep.into_iter().map(|i| run[i]));
        start = end;
    }
    out
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = nice_ticks(0.0, 2.37, 6);
        assert_eq!(t.step, 0.5);
        assert_eq!((t.lo, t.hi), (0.0, 2.5));
        assert_eq!(t.ticks.len(), 6);
        let t = nice_ticks(1.0, 1000.0, 8);
        assert_eq!(t.step, 200.0);
        assert_eq!((t.lo, t.hi), (0.0, 1000.0));
        let t = nice_ticks(3.0, 3.0, 5);
        assert!(t.lo < 3.0 && t.hi > 3.0);
    }

    #[test]
    fn tick_labels() {
        assert_eq!(format_tick(0.5, 0.5), "0.5");
        assert_eq!(format_tick(0.25, 0.25), "0.25");
        assert_eq!(format_tick(2.0, 0.5), "2.0");
        assert_eq!(format_tick(400.0, 200.0), "400");
        assert_eq!(format_tick(20_000.0, 5_000.0), "20k");
        assert_eq!(format_tick(2_500_000.0, 500_000.0), "2.5M");
        assert_eq!(format_tick(1e-17, 0.1), "0.0");
    }

    #[test]
    fn thinning_keeps_extremes_and_ends() {
        let pts: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (i as f64, if i == 5_000 { 9.0 } else { (i % 7) as f64 }))
            .collect();
        let t = thin(&pts, 0.0, 10_000.0, 100);
        assert!(t.len() <= 400);
        assert_eq!(t.first(), pts.first());
        assert_eq!(t.last(), pts.last());
        assert!(t.contains(&(5000.0, 9.0)));
    }
}
