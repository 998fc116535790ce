//! Server-rendered SVG charts: no script, no library, readable without JavaScript.

use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 22.0;

/// One line of a chart.
pub struct Line<'a> {
    pub label: &'a str,
    pub color: &'a str,
    /// One value per step; `None` where there is no data.
    pub values: Vec<Option<f64>>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A round number at or above `max` for the y axis.
fn nice(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|v| *v >= max).unwrap_or(max)
}

/// A line chart over `steps` points with x labels at both ends, a y axis in `unit`,
/// and vertical markers (promotions) at step positions.
pub fn line_chart(
    title: &str,
    unit: &str,
    lines: &[Line<'_>],
    first: &str,
    last: &str,
    markers: &[(f64, String)],
) -> String {
    let steps = lines.iter().map(|l| l.values.len()).max().unwrap_or(0).max(2);
    let max = nice(lines.iter().flat_map(|l| l.values.iter().flatten()).fold(0.0f64, |a, b| a.max(*b)));
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - BOTTOM - 8.0;
    #[allow(clippy::cast_precision_loss)]
    let x = |i: f64| LEFT + plot_w * i / (steps - 1) as f64;
    let y = |v: f64| 8.0 + plot_h * (1.0 - v / max);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}"><title>{}</title>"#,
        escape(title),
        escape(title)
    );
    for frac in [0.0, 0.5, 1.0] {
        let v = max * frac;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#d9dde3"/><text x="{}" y="{:.1}" text-anchor="end" font-size="11" fill="#5b6470">{} {}</text>"##,
            WIDTH - 8.0,
            LEFT - 6.0,
            y(v) + 4.0,
            if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") },
            escape(unit),
            y = y(v),
        );
    }
    for (at, label) in markers {
        let mx = x(*at);
        let _ = write!(
            svg,
            r##"<line x1="{mx:.1}" x2="{mx:.1}" y1="8" y2="{:.1}" stroke="#8a5a00" stroke-dasharray="3 3"><title>{}</title></line>"##,
            8.0 + plot_h,
            escape(label)
        );
    }
    for line in lines {
        let mut path = String::new();
        let mut pen_down = false;
        for (i, v) in line.values.iter().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            match v {
                Some(v) => {
                    let _ = write!(path, "{}{:.1},{:.1} ", if pen_down { "L" } else { "M" }, x(i as f64), y(*v));
                    // A value with no neighbour draws no line: mark it with a dot.
                    let alone = !pen_down && line.values.get(i + 1).is_none_or(Option::is_none);
                    if alone {
                        let _ = write!(
                            svg,
                            r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                            x(i as f64),
                            y(*v),
                            line.color
                        );
                    }
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            svg,
            r#"<path d="{path}" fill="none" stroke="{}" stroke-width="2"><title>{}</title></path>"#,
            line.color,
            escape(line.label)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="{}" font-size="11" fill="#5b6470">{}</text><text x="{}" y="{}" text-anchor="end" font-size="11" fill="#5b6470">{}</text></svg>"##,
        HEIGHT - 4.0,
        escape(first),
        WIDTH - 8.0,
        HEIGHT - 4.0,
        escape(last)
    );
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_lines_with_gaps_and_markers() {
        let svg = line_chart(
            "Requests",
            "/s",
            &[Line { label: "rps", color: "#0b5cad", values: vec![Some(1.0), None, Some(3.0), Some(2.0)] }],
            "10:00",
            "10:03",
            &[(2.0, "serial 4".into())],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches('M').count(), 2, "a gap lifts the pen: {svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "the lone first value is a dot");
        assert!(svg.contains("serial 4") && svg.contains("5.0 /s"), "{svg}");
        assert_eq!(nice(7.3), 10.0);
        assert_eq!(nice(0.0), 1.0);
    }
}
