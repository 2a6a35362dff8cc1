//! The SVG charts of `lhttp bench --plot FILE.svg`, drawn with `plotters` (SVG backend and
//! line series only: no fonts, no bitmap code).
//!
//! - latency: the percentile curve, with the percentile axis on a log scale of 1/(1-p) as HDR
//!   histogram plots do, so that p50, p90, p99, p99.9 are equally spaced and the tail is visible.
//! - throughput: delivered messages per second over time, one point per sample.

use std::path::Path;

use anyhow::{Result, anyhow};
use hdrhistogram::Histogram;
use plotters::prelude::*;

const SIZE: (u32, u32) = (900, 500);

/// Draws the latency percentile curve of `histogram` (nanoseconds) into `path`.
pub(crate) fn latency(path: &Path, histogram: &Histogram<u64>, title: &str) -> Result<()> {
    // (1/(1-p), microseconds) for each percentile step; the last one (p = 1) is the maximum,
    // placed one decade beyond the highest finite step.
    let mut points: Vec<(f64, f64)> = histogram
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            (
                1.0 / (1.0 - v.quantile_iterated_to()),
                v.value_iterated_to() as f64 / 1e3,
            )
        })
        .collect();
    if points.is_empty() {
        return Err(anyhow!("no latency was recorded: nothing to plot"));
    }
    let last_x = points.last().map_or(1.0, |p| p.0);
    points.push((last_x * 10.0, histogram.max() as f64 / 1e3));
    let x_max = last_x * 10.0;
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1;
    draw(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("publish-to-delivery latency (us)")
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
        Ok(())
    })
}

/// Draws `samples` of (seconds since start, deliveries per second) into `path`.
pub(crate) fn throughput(path: &Path, samples: &[(f64, f64)], title: &str) -> Result<()> {
    if samples.is_empty() {
        return Err(anyhow!("the run was too short to sample: nothing to plot"));
    }
    let x_max = samples.last().map_or(1.0, |s| s.0).max(0.1);
    let y_max = samples.iter().map(|s| s.1).fold(0.0, f64::max) * 1.1;
    draw(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("delivered messages per second")
            .y_label_formatter(&|y| si(*y))
            .draw()?;
        chart.draw_series(LineSeries::new(
            samples.iter().copied(),
            BLUE.stroke_width(2),
        ))?;
        Ok(())
    })
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn draw(
    path: &Path,
    chart: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> DrawResult,
) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let drawn = root
        .fill(&WHITE)
        .map_err(|e| anyhow!("{e}"))
        .and_then(|()| chart(&root).map_err(|e| anyhow!("{e}")))
        .and_then(|()| root.present().map_err(|e| anyhow!("{e}")));
    drawn.map_err(|e| anyhow!("cannot draw {}: {e}", path.display()))
}

/// `1/(1-p)` as a percentile: 1 -> "0%", 10 -> "90%", 1000 -> "99.9%".
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x.max(1.0));
    let decimals = (x.log10().round() as usize).saturating_sub(2);
    format!("{p:.decimals$}%")
}

/// 1500000 -> "1.5M".
fn si(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels_read_as_percentiles() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10000.0), "99.99%");
    }
}
