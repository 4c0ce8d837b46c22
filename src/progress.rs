//! Progress on a terminal: images done, images per second, time left. Hidden when stderr is not
//! a terminal or with --json; messages (errors, warnings) go to stderr either way, above the bar.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(show: bool, images: usize) -> Self {
        if !show {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(images as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>7} [{bar:30}] {pos}/{len} images  {per_sec}  {eta} left  {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix("explain");
        Progress { bar: Some(bar) }
    }

    /// One more image done (written or failed).
    pub fn inc(&self) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// A note next to the bar (ScoreCAM's masked passes).
    pub fn message(&self, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg);
        }
    }

    /// Runs `f` (which prints) with the bar out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// A line on stderr.
    pub fn eprintln(&self, line: &str) {
        self.suspend(|| {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{line}");
        });
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
