//! One line chart as inline SVG: series of (step, value) on shared axes. Each series' points
//! are also in `data-steps` / `data-values` attributes, so the page can be checked against
//! metrics.jsonl by a parser.

use std::fmt::Write;

pub struct Series {
    /// `train/loss`, `eval/loss`, …
    pub name: String,
    /// (step, value); non-finite values are left out of the line (the warnings name them).
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 36.0;
/// Colour-blind-safe (Okabe–Ito), in series order.
const COLOURS: &[&str] = &[
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9",
];

/// An `<svg>` chart titled `title` (also its `data-plot`), or `None` when no series has a point.
pub fn line_chart(title: &str, series: &[Series]) -> Option<String> {
    let finite = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let all: Vec<(f64, f64)> = series.iter().flat_map(finite).collect();
    if all.is_empty() {
        return None;
    }
    let (x0, x1) = padded_range(all.iter().map(|p| p.0));
    let (y0, y1) = padded_range(all.iter().map(|p| p.1));
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT);
    let py = |y: f64| TOP + (y1 - y) / (y1 - y0) * (HEIGHT - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-plot="{}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img"><title>{}</title>"#,
        escape(title),
        escape(title)
    );
    let _ = write!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        WIDTH - LEFT - RIGHT,
        HEIGHT - TOP - BOTTOM
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{:.1}" font-size="10" text-anchor="end" fill="#333">{}</text>"##,
            LEFT - 4.0,
            py(y) + 3.0,
            tick(y)
        );
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle" fill="#333">{}</text>"##,
            px(x),
            HEIGHT - BOTTOM + 14.0,
            tick(x)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle" fill="#333">step</text>"##,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 4.0
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts = finite(s);
        let coords: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.2},{:.2}", px(x), py(y)))
            .collect();
        let join = |f: fn(&(f64, f64)) -> f64| {
            s.points
                .iter()
                .map(|p| number(f(p)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let dash = if s.name.starts_with("eval/") {
            r#" stroke-dasharray="5,3""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<polyline class="series" data-series="{}" data-steps="{}" data-values="{}" fill="none" stroke="{colour}" stroke-width="1.6"{dash} points="{}"/>"#,
            escape(&s.name),
            join(|p| p.0),
            join(|p| p.1),
            coords.join(" ")
        );
        // A lone point (an eval at the end only) is invisible as a line.
        for &(x, y) in pts.iter().filter(|_| pts.len() == 1) {
            let _ = write!(
                svg,
                r#"<circle cx="{:.2}" cy="{:.2}" r="3" fill="{colour}"/>"#,
                px(x),
                py(y)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="10" fill="{colour}">{}</text>"#,
            LEFT + 8.0 + 150.0 * i as f64,
            TOP + 12.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>");
    Some(svg)
}

/// Shortest text that reads back as the same f64 (`NaN`, `inf` as such).
pub fn number(v: f64) -> String {
    format!("{v}")
}

fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if hi - lo < 1e-12 * (1.0 + hi.abs()) {
        let pad = 0.5 * hi.abs().max(1e-3);
        return (lo - pad, hi + pad);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else {
        format!("{:.4}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
