//! Progress bars for long work, shown only when stderr is a terminal, so scripts and logs stay
//! quiet.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar counting bytes, with files in the message; `total` may be learned later.
    pub fn bytes(what: &str, total: Option<u64>) -> Progress {
        let bar = ProgressBar::with_draw_target(total, Self::target());
        let template = if total.is_some() {
            "{prefix} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}"
        } else {
            "{prefix} [{elapsed_precise}] {bytes} {binary_bytes_per_sec} {msg}"
        };
        bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Progress { bar }
    }

    /// A bar counting items (packs, snapshots).
    pub fn items(what: &str, total: u64) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), Self::target());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(what.to_string());
        Progress { bar }
    }

    fn target() -> ProgressDrawTarget {
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        }
    }

    pub fn is_visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    pub fn add(&self, n: u64) {
        self.bar.inc(n);
    }

    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
    }

    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// Prints a line above the bar (or plainly when there is no bar).
    pub fn note(&self, line: &str) {
        if self.bar.is_hidden() {
            crate::tell!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
