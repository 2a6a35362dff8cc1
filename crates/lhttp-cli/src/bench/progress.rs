//! The progress bar of `lhttp bench`: on stderr, so that stdout holds only the report, and
//! hidden when stderr is not a terminal or the report is JSON (a machine is reading).

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps of `unit` ("deliveries", "requests", ...), or a hidden one.
pub(crate) fn bar(show: bool, len: u64, unit: &str) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(10));
    let template =
        format!("{{elapsed:>4}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A rate for the bar's message: `1.23M/s`.
pub(crate) fn rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2}M/s", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.1}k/s", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}/s")
    }
}
