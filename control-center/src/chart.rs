//! Small inline charts: a series as an SVG line scaled to its own maximum.

use leptos::prelude::*;

/// A sparkline of `values` (oldest first, evenly spaced), `width` × `height` pixels. A value that
/// is not a number (no sample there) breaks the line.
pub fn sparkline(values: &[f64], width: f64, height: f64) -> impl IntoView + use<> {
    let max = values
        .iter()
        .copied()
        .filter(|value| value.is_finite())
        .fold(0.0_f64, f64::max);
    let step = if values.len() > 1 {
        width / (values.len() - 1) as f64
    } else {
        0.0
    };
    let point = |index: usize, value: f64| {
        let y = if max > 0.0 {
            height - 1.0 - (value / max) * (height - 2.0)
        } else {
            height - 1.0
        };
        format!("{:.1},{:.1}", index as f64 * step, y)
    };
    // Runs of finite values, each its own line.
    let mut lines: Vec<Vec<String>> = Vec::new();
    let mut open = false;
    for (index, value) in values.iter().copied().enumerate() {
        if !value.is_finite() {
            open = false;
            continue;
        }
        if !open {
            lines.push(Vec::new());
            open = true;
        }
        if let Some(line) = lines.last_mut() {
            line.push(point(index, value));
        }
    }
    // A lone sample between gaps is drawn as a short dash, not lost.
    for line in &mut lines {
        if let [only] = line.as_slice()
            && let Some((x, y)) = only.split_once(',')
            && let Ok(x) = x.parse::<f64>()
        {
            let next = format!("{:.1},{y}", (x + 2.0).min(width));
            let previous = format!("{:.1},{y}", (x - 2.0).max(0.0));
            *line = vec![previous, next];
        }
    }
    view! {
        <svg class="spark" width=width height=height viewBox=format!("0 0 {width} {height}")>
            {lines
                .into_iter()
                .map(|line| view! { <polyline points=line.join(" ") /> })
                .collect_view()}
        </svg>
    }
}
