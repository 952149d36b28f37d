//! Progress on stderr: a live spinner on a terminal, one line per step otherwise
//! (so logs of a non-interactive run still show where the time went).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Cheap to clone; every clone drives the same display.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
}

impl Progress {
    /// A spinner when stderr is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            start: Instant::now(),
        }
    }

    /// A new step: the spinner's message, or a timestamped line.
    pub fn step(&self, msg: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.set_message(msg.as_ref().to_string()),
            None => eprintln!("[{:>7.1}s] {}", self.start.elapsed().as_secs_f64(), msg.as_ref()),
        }
    }

    /// A frequent update: shown on a terminal only.
    pub fn detail(&self, msg: impl AsRef<str>) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.as_ref().to_string());
        }
    }

    /// A line that stays (above the spinner on a terminal).
    pub fn line(&self, msg: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(msg.as_ref()),
            None => eprintln!("[{:>7.1}s] {}", self.start.elapsed().as_secs_f64(), msg.as_ref()),
        }
    }

    /// Remove the spinner.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Report `done` of `total` under `label` until the returned guard drops:
    /// twice a second on a terminal, every 10 s as a line otherwise.
    pub fn counter(&self, label: String, total: usize, done: Arc<AtomicUsize>) -> CounterGuard {
        let progress = self.clone();
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let mut last_line = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let n = done.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                let rate = n as f64 / secs.max(1e-9);
                let eta = if rate > 0.0 {
                    format!(", ~{:.0}s left", total.saturating_sub(n) as f64 / rate)
                } else {
                    String::new()
                };
                let msg = format!("{label}: {n}/{total} ({rate:.0}/s{eta})");
                if progress.bar.is_some() {
                    progress.detail(msg);
                } else if last_line.elapsed() >= Duration::from_secs(10) {
                    last_line = Instant::now();
                    progress.step(msg);
                }
            }
        });
        CounterGuard(handle)
    }
}

/// Stops a [`Progress::counter`] when dropped.
pub struct CounterGuard(tokio::task::JoinHandle<()>);

impl Drop for CounterGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
