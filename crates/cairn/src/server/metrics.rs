//! A small Prometheus registry: counters and histograms rendered in the text
//! exposition format. Hand-rolled to keep the dependency tree small.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use cairn_core::{EventSink, ProcessEvent, ProcessStatus, TerminalState};
use parking_lot::Mutex;

use super::AppState;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(slot) = BUCKETS
            .iter()
            .zip(&self.counts)
            .find(|(b, _)| secs <= **b)
            .map(|(_, c)| c)
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, slot) in BUCKETS.iter().zip(&self.counts) {
            cumulative += slot.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The server's metrics.
#[derive(Default)]
pub struct Metrics {
    started: AtomicU64,
    /// Indexed by [`terminal_index`].
    ended: [AtomicU64; 4],
    /// (method, route, status) -> count
    http: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// Appends through the API (events and signals).
    pub append_latency: Histogram,
    /// Await requests, from arrival to answer.
    pub await_latency: Histogram,
}

fn terminal_index(state: TerminalState) -> usize {
    match state {
        TerminalState::Completed => 0,
        TerminalState::Failed => 1,
        TerminalState::Cancelled => 2,
        TerminalState::Abandoned => 3,
    }
}

const TERMINAL_LABELS: [ProcessStatus; 4] = [
    ProcessStatus::Completed,
    ProcessStatus::Failed,
    ProcessStatus::Cancelled,
    ProcessStatus::Abandoned,
];

impl Metrics {
    /// A process was created through the API.
    pub fn process_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// Render the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cairn_processes_started_total Processes created by this server."
        );
        let _ = writeln!(out, "# TYPE cairn_processes_started_total counter");
        let _ = writeln!(
            out,
            "cairn_processes_started_total {}",
            self.started.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cairn_processes_ended_total Terminal events written while this server ran, by status."
        );
        let _ = writeln!(out, "# TYPE cairn_processes_ended_total counter");
        for (status, slot) in TERMINAL_LABELS.iter().zip(&self.ended) {
            let _ = writeln!(
                out,
                "cairn_processes_ended_total{{status=\"{}\"}} {}",
                status.label(),
                slot.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP cairn_http_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE cairn_http_requests_total counter");
        for ((method, route, status), n) in self.http.lock().iter() {
            let _ = writeln!(
                out,
                "cairn_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape_label(route)
            );
        }
        self.append_latency.render(
            &mut out,
            "cairn_append_duration_seconds",
            "Latency of event and signal appends through the API.",
        );
        self.await_latency.render(
            &mut out,
            "cairn_await_duration_seconds",
            "Time await requests waited before answering.",
        );
        out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Counts terminal events from the runtime's best-effort event sink, so ends
/// written by the worker are counted as well as those written through the API.
pub struct TerminalCounter(pub Arc<Metrics>);

impl EventSink for TerminalCounter {
    fn deliver(&self, event: &ProcessEvent) {
        if let Some(outcome) = &event.semantics.terminal {
            self.0.ended[terminal_index(outcome.state())].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Middleware: count every answered request by method, matched route and status.
pub async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    // The route template (not the raw path) keeps label cardinality bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = Instant::now();
    let response = next.run(req).await;
    tracing::debug!(%method, %route, status = response.status().as_u16(), elapsed = ?started.elapsed(), "request");
    *state
        .metrics
        .http
        .lock()
        .entry((method, route, response.status().as_u16()))
        .or_default() += 1;
    response
}
