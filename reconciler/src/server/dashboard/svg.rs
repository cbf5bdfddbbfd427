//! Small SVG charts rendered on the server: lines (a job's progress) and points with error
//! bars (a metric against a hyper key). Written with maud like the pages, so every label
//! is escaped; no script, no external asset.

use maud::{html, Markup};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 44.0;
const COLOURS: [&str; 6] = [
    "#2f5bd3", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#1098ad",
];

/// One point; `err` draws a bar of ± that much.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub err: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// What the x axis shows: numbers, or categories at 0, 1, 2, ... (text hyper values).
#[derive(Debug, Clone, PartialEq)]
pub enum XAxis {
    Numbers,
    Categories(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: XAxis,
    /// Lines between the points of a series (else points alone).
    pub lines: bool,
    pub series: Vec<Series>,
}

/// A linear map from data to pixels.
#[derive(Debug, Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    from: f64,
    to: f64,
}

impl Scale {
    fn at(&self, v: f64) -> f64 {
        let span = self.hi - self.lo;
        let t = if span > 0.0 {
            (v - self.lo) / span
        } else {
            0.5
        };
        self.from + t * (self.to - self.from)
    }
}

/// Range covering `values`, padded a little, never empty.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < f64::EPSILON * lo.abs().max(1.0) {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// About five round tick values in `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    if !(raw.is_finite() && raw > 0.0) {
        return vec![lo];
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let mut out = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi && out.len() < 12 {
        // No "-0" label where a tick lands on zero.
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn label(v: f64) -> String {
    cis490_api::results::short_number(v)
}

impl Chart {
    pub fn render(&self) -> Markup {
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let (x_lo, x_hi) = match &self.x_axis {
            XAxis::Numbers => range(points().map(|p| p.x)),
            XAxis::Categories(c) => (-0.5, c.len() as f64 - 0.5),
        };
        let (y_lo, y_hi) = range(points().flat_map(|p| {
            let e = p.err.unwrap_or(0.0);
            [p.y - e, p.y + e]
        }));
        let x = Scale {
            lo: x_lo,
            hi: x_hi,
            from: LEFT,
            to: WIDTH - RIGHT,
        };
        let y = Scale {
            lo: y_lo,
            hi: y_hi,
            from: HEIGHT - BOTTOM,
            to: TOP,
        };
        let x_ticks: Vec<(f64, String)> = match &self.x_axis {
            XAxis::Numbers => ticks(x_lo, x_hi)
                .into_iter()
                .map(|t| (t, label(t)))
                .collect(),
            XAxis::Categories(c) => c
                .iter()
                .enumerate()
                .map(|(i, name)| (i as f64, name.clone()))
                .collect(),
        };
        let empty = points().next().is_none();
        html! {
            svg.chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
                width=(WIDTH) height=(HEIGHT) role="img" aria-label=(self.title) {
                text x=(LEFT) y="18" font-size="13" font-weight="600" { (self.title) }
                line x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH - RIGHT) y2=(HEIGHT - BOTTOM) stroke="#888" {}
                line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) stroke="#888" {}
                @for t in ticks(y_lo, y_hi) {
                    line x1=(LEFT) y1=(y.at(t)) x2=(WIDTH - RIGHT) y2=(y.at(t)) stroke="#eee" {}
                    text x=(LEFT - 6.0) y=(y.at(t) + 4.0) font-size="11" text-anchor="end" { (label(t)) }
                }
                @for (t, name) in &x_ticks {
                    text x=(x.at(*t)) y=(HEIGHT - BOTTOM + 16.0) font-size="11" text-anchor="middle" { (name) }
                }
                text x=((LEFT + WIDTH - RIGHT) / 2.0) y=(HEIGHT - 8.0) font-size="12" text-anchor="middle" { (self.x_label) }
                text x="14" y=((TOP + HEIGHT - BOTTOM) / 2.0) font-size="12" text-anchor="middle"
                    transform={ "rotate(-90 14 " ((TOP + HEIGHT - BOTTOM) / 2.0) ")" } { (self.y_label) }
                @if empty {
                    text x=(WIDTH / 2.0) y=(HEIGHT / 2.0) text-anchor="middle" fill="#888" { "no data yet" }
                }
                @for (i, s) in self.series.iter().enumerate() {
                    @let colour = COLOURS[i % COLOURS.len()];
                    g.series data-name=(s.name) {
                        @if self.lines && s.points.len() > 1 {
                            polyline fill="none" stroke=(colour) stroke-width="1.8"
                                points=(polyline(&s.points, x, y)) {}
                        }
                        @for p in &s.points {
                            @if let Some(e) = p.err {
                                line x1=(x.at(p.x)) y1=(y.at(p.y - e)) x2=(x.at(p.x)) y2=(y.at(p.y + e)) stroke=(colour) {}
                            }
                            circle.point cx=(x.at(p.x)) cy=(y.at(p.y)) r=(if self.lines { 2.0 } else { 4.0 }) fill=(colour) {
                                title { (s.name) ": " (label(p.x)) ", " (label(p.y)) @if let Some(e) = p.err { " ± " (label(e)) } }
                            }
                        }
                    }
                    @if self.series.len() > 1 {
                        text x=(WIDTH - RIGHT - 4.0) y=(TOP + 14.0 * i as f64) font-size="11" text-anchor="end" fill=(colour) { (s.name) }
                    }
                }
            }
        }
    }
}

fn polyline(points: &[Point], x: Scale, y: Scale) -> String {
    points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x.at(p.x), y.at(p.y)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(series: Vec<Series>) -> Chart {
        Chart {
            title: "acc <b>".into(),
            x_label: "lr".into(),
            y_label: "accuracy".into(),
            x_axis: XAxis::Numbers,
            lines: false,
            series,
        }
    }

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(0.013, 0.97);
        assert!(
            t.iter().all(|v| (0.013..=0.97).contains(v)) && t.len() >= 3,
            "{t:?}"
        );
        assert_eq!(range(std::iter::empty()), (0.0, 1.0));
        assert_eq!(range([2.0].into_iter()), (1.5, 2.5));
    }

    #[test]
    fn points_and_error_bars_are_drawn_and_labels_escaped() {
        let svg = chart(vec![Series {
            name: "<script>alert(1)</script>".into(),
            points: vec![
                Point {
                    x: 0.1,
                    y: 0.9,
                    err: Some(0.01),
                },
                Point {
                    x: 0.3,
                    y: 0.8,
                    err: None,
                },
            ],
        }])
        .render()
        .into_string();
        assert_eq!(svg.matches("<circle").count(), 2, "{svg}");
        assert!(svg.contains("acc &lt;b&gt;"), "{svg}");
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        let empty = chart(vec![]).render().into_string();
        assert!(empty.contains("no data yet"));
    }
}
