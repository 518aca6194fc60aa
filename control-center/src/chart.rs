//! Small inline charts: a series as an SVG line scaled to its own maximum.

use leptos::prelude::*;

/// A sparkline of `values` (oldest first), `width` × `height` pixels.
pub fn sparkline(values: &[f64], width: f64, height: f64) -> impl IntoView + use<> {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let step = if values.len() > 1 {
        width / (values.len() - 1) as f64
    } else {
        0.0
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(index, value)| {
            let y = if max > 0.0 {
                height - 1.0 - (value / max) * (height - 2.0)
            } else {
                height - 1.0
            };
            format!("{:.1},{:.1}", index as f64 * step, y)
        })
        .collect();
    view! {
        <svg class="spark" width=width height=height viewBox=format!("0 0 {width} {height}")>
            <polyline points=points.join(" ") />
        </svg>
    }
}
