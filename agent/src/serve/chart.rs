//! The status page's charts: a series of points over time -> an inline SVG,
//! drawn by hand (no JavaScript, no fonts, no files), pure and unit-tested.
//!
//! One chart is a time axis (x, first to last point) and a value axis (y,
//! smallest to largest value), each labelled at its ends; a polyline
//! through the points and a `<circle>` per point with a `<title>` tooltip
//! (`b012 2026-11-22 07:00 UTC: 1.2 GB`). Every text goes through maud, so
//! it is escaped like the rest of the page.

use chrono::{DateTime, Utc};
use maud::{html, Markup};

/// One data point: a backup, when it finished, and its value.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    pub at: DateTime<Utc>,
    pub value: f64,
}

pub const WIDTH: f64 = 560.0;
pub const HEIGHT: f64 = 170.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// A linear map from `[lo, hi]` onto `[from, to]`; a domain of one value
/// maps to the middle of the range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub lo: f64,
    pub hi: f64,
    pub from: f64,
    pub to: f64,
}

impl Scale {
    /// Over `values` (at least one), onto `[from, to]`.
    pub fn over(values: impl Iterator<Item = f64>, from: f64, to: f64) -> Option<Scale> {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        (lo <= hi).then_some(Scale { lo, hi, from, to })
    }

    pub fn map(&self, v: f64) -> f64 {
        if self.hi - self.lo <= f64::EPSILON * self.hi.abs().max(1.0) {
            return (self.from + self.to) / 2.0;
        }
        self.from + (v - self.lo) / (self.hi - self.lo) * (self.to - self.from)
    }

    /// True when every value maps to the same place (one label is enough).
    pub fn flat(&self) -> bool {
        self.map(self.lo) == self.map(self.hi)
    }
}

/// `2026-11-22 07:00 UTC`.
pub fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The chart of `points` (in any order), values shown with `fmt`; `what`
/// names it for screen readers. No points: a line of text, no SVG.
pub fn chart(what: &str, points: &[Point], fmt: impl Fn(f64) -> String) -> Markup {
    let mut points: Vec<&Point> = points.iter().filter(|p| p.value.is_finite()).collect();
    points.sort_by_key(|p| p.at);
    let (Some(x), Some(y)) = (
        Scale::over(points.iter().map(|p| p.at.timestamp() as f64), LEFT, WIDTH - RIGHT),
        Scale::over(points.iter().map(|p| p.value), HEIGHT - BOTTOM, TOP),
    ) else {
        return html! { p.empty { "No completed captures yet." } };
    };
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (x.map(p.at.timestamp() as f64), y.map(p.value))).collect();
    let line = xy.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect::<Vec<_>>().join(" ");
    let first = points.first().map(|p| p.at).unwrap_or_default();
    let last = points.last().map(|p| p.at).unwrap_or_default();
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    html! {
        svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label=(what)
            viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } width=(WIDTH) height=(HEIGHT) {
            line class="axis" x1=(x0) y1=(y0) x2=(x1) y2=(y0) {}
            line class="axis" x1=(x0) y1=(y0) x2=(x0) y2=(y1) {}
            // The value axis: smallest at the bottom, largest at the top.
            @if y.flat() {
                text class="label" x=(x0 - 6.0) y=(y.map(y.lo) + 4.0) text-anchor="end" { (fmt(y.lo)) }
            } @else {
                text class="label" x=(x0 - 6.0) y=(y0) text-anchor="end" { (fmt(y.lo)) }
                text class="label" x=(x0 - 6.0) y=(y1 + 8.0) text-anchor="end" { (fmt(y.hi)) }
            }
            // The time axis: first and last capture.
            @if x.flat() {
                text class="label" x=(x.map(x.lo)) y=(y0 + 18.0) text-anchor="middle" { (when(first)) }
            } @else {
                text class="label" x=(x0) y=(y0 + 18.0) text-anchor="start" { (when(first)) }
                text class="label" x=(x1) y=(y0 + 18.0) text-anchor="end" { (when(last)) }
            }
            polyline class="line" points=(line) {}
            @for (p, (cx, cy)) in points.iter().zip(&xy) {
                circle class="point" cx=(format!("{cx:.1}")) cy=(format!("{cy:.1}")) r="3.5" {
                    title { (p.label) " " (when(p.at)) ": " (fmt(p.value)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32) -> DateTime<Utc> {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap().and_hms_opt(h, 0, 0).unwrap().and_utc()
    }

    fn pt(label: &str, h: u32, value: f64) -> Point {
        Point { label: label.into(), at: at(h), value }
    }

    fn bytes(v: f64) -> String {
        format!("{v:.0} B")
    }

    fn circles(svg: &str) -> Vec<(f64, f64)> {
        svg.match_indices("<circle ")
            .map(|(i, _)| {
                let tag = &svg[i..i + svg[i..].find('>').unwrap()];
                let attr = |name: &str| {
                    let s = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                    tag[s..s + tag[s..].find('"').unwrap()].parse::<f64>().unwrap()
                };
                (attr("cx"), attr("cy"))
            })
            .collect()
    }

    #[test]
    fn a_circle_per_point_on_scales_spanning_the_plot() {
        let svg =
            chart("stored", &[pt("b003", 9, 300.0), pt("b001", 7, 100.0), pt("b002", 8, 200.0)], bytes).into_string();
        assert!(svg.starts_with("<svg "), "{svg}");
        let c = circles(&svg);
        assert_eq!(c.len(), 3);
        // Sorted by time: first at the left and bottom (smallest), last at the right and top.
        assert_eq!(c[0], (LEFT, HEIGHT - BOTTOM));
        assert_eq!(c[1], ((LEFT + WIDTH - RIGHT) / 2.0, (HEIGHT - BOTTOM + TOP) / 2.0));
        assert_eq!(c[2], (WIDTH - RIGHT, TOP));
        assert_eq!(svg.matches("<polyline ").count(), 1);
        assert!(svg.contains("<title>b001 2026-11-22 07:00 UTC: 100 B</title>"), "{svg}");
        // The axes are labelled at their ends.
        for label in ["100 B", "300 B", "2026-11-22 07:00 UTC", "2026-11-22 09:00 UTC"] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}: {svg}");
        }
    }

    #[test]
    fn scales_map_ends_to_ends_and_one_value_to_the_middle() {
        let s = Scale::over([10.0, 30.0, 20.0].into_iter(), 100.0, 0.0).unwrap();
        assert_eq!((s.lo, s.hi), (10.0, 30.0));
        assert_eq!(s.map(10.0), 100.0);
        assert_eq!(s.map(30.0), 0.0);
        assert_eq!(s.map(20.0), 50.0);
        assert!(!s.flat());
        let one = Scale::over([5.0].into_iter(), 0.0, 100.0).unwrap();
        assert_eq!(one.map(5.0), 50.0);
        assert!(one.flat());
        assert_eq!(Scale::over(std::iter::empty(), 0.0, 1.0), None);
        assert_eq!(Scale::over([f64::NAN].into_iter(), 0.0, 1.0), None);
    }

    #[test]
    fn no_points_is_a_sentence_and_one_point_sits_in_the_middle() {
        let none = chart("stored", &[], bytes).into_string();
        assert!(!none.contains("<svg"), "{none}");
        assert!(none.contains("No completed captures yet."));
        let one = chart("stored", &[pt("b001", 7, 42.0)], bytes).into_string();
        assert_eq!(circles(&one), vec![((LEFT + WIDTH - RIGHT) / 2.0, (HEIGHT - BOTTOM + TOP) / 2.0)]);
        // One label per axis, no NaN anywhere.
        assert_eq!(one.matches(">42 B</text>").count(), 1);
        assert_eq!(one.matches(">2026-11-22 07:00 UTC</text>").count(), 1);
        assert!(!one.contains("NaN"), "{one}");
    }

    #[test]
    fn labels_are_escaped() {
        let svg = chart("<x>", &[pt("<script>\"&'", 7, 1.0)], bytes).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;&quot;&amp;'"), "{svg}");
        assert!(svg.contains("aria-label=\"&lt;x&gt;\""), "{svg}");
    }
}
