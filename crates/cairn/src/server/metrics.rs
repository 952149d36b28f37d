//! `/metrics`: counters, gauges and histograms in the OpenMetrics text format,
//! through `prometheus-client` (the Prometheus project's Rust client).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use cairn_core::{EndSink, ProcessRecord, ProcessStatus, Processes};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::AppState;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Clone)]
struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        latency_histogram()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    backend: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    started: Counter,
    ended: Family<StatusLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_latency: Family<RouteLabels, Histogram, LatencyHistogram>,
    /// Appends through the API (events and signals).
    pub append_latency: Histogram,
    /// Await requests, from arrival to answer.
    pub await_latency: Histogram,
    awaits_open: Gauge,
    connections: Gauge,
    running: Gauge,
    waiting: Gauge,
    leased: Gauge,
    lapsed: Gauge,
    worker_runs: Gauge,
    pending_wakes: Gauge,
    store_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new("memory")
    }
}

impl Metrics {
    /// Every metric, registered; `backend` is the storage kind (`memory`, `sqlite`, `postgres`).
    pub fn new(backend: &str) -> Self {
        let mut registry = Registry::default();
        let started = Counter::default();
        registry.register(
            "cairn_processes_started",
            "Processes created by this server's runtime (starts through every surface, schedule fires, children)",
            started.clone(),
        );
        let ended = Family::<StatusLabel, Counter>::default();
        registry.register(
            "cairn_processes_ended",
            "Terminal events written while this server ran, by status",
            ended.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "cairn_http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        let request_latency = Family::new_with_constructor(LatencyHistogram);
        registry.register(
            "cairn_http_request_duration_seconds",
            "Time from a request's arrival to its answer's head, by method and route",
            request_latency.clone(),
        );
        let append_latency = latency_histogram();
        registry.register(
            "cairn_append_duration_seconds",
            "Latency of event and signal appends through the API",
            append_latency.clone(),
        );
        let await_latency = latency_histogram();
        registry.register(
            "cairn_await_duration_seconds",
            "Time await requests waited before answering",
            await_latency.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
            registry.register(name, help, g.clone());
            g
        };
        let connections = gauge(&mut registry, "cairn_http_connections_open", "Open HTTP connections");
        let awaits_open = gauge(
            &mut registry,
            "cairn_awaits_open",
            "Await requests (HTTP and MCP) waiting for their process to end",
        );
        let running = gauge(
            &mut registry,
            "cairn_processes_running",
            "Running processes in the store (read at scrape)",
        );
        let waiting = gauge(
            &mut registry,
            "cairn_processes_waiting",
            "Running processes waiting (for a signal, a timer, ...), read at scrape",
        );
        let leased = gauge(
            &mut registry,
            "cairn_leases_held",
            "Running processes with a lease stored, live or lapsed, on any node (read at scrape)",
        );
        let lapsed = gauge(
            &mut registry,
            "cairn_leases_lapsed",
            "Running processes whose stored lease has lapsed: work an owner left (a dead node's), until a claim, \
             a sweep or an abandon takes it (read at scrape)",
        );
        let worker_runs = gauge(
            &mut registry,
            "cairn_worker_runs",
            "Runs in progress on this server's worker",
        );
        let pending_wakes = gauge(
            &mut registry,
            "cairn_wakes_pending",
            "Wake deliveries not acknowledged, over every session (read at scrape)",
        );
        let store_up = gauge(
            &mut registry,
            "cairn_store_up",
            "1 when the store answered this scrape's counts; 0 when it did not (the counts read at scrape keep their last values)",
        );
        registry.register(
            "cairn_build",
            "Version and storage backend of this server",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                backend: backend.to_string(),
            }),
        );
        Self {
            registry,
            started,
            ended,
            requests,
            request_latency,
            append_latency,
            await_latency,
            awaits_open,
            connections,
            running,
            waiting,
            leased,
            lapsed,
            worker_runs,
            pending_wakes,
            store_up,
        }
    }

    /// An await begins waiting; it counts in `cairn_awaits_open` until the
    /// guard drops (answered, timed out, or its client went away).
    pub fn await_opened(&self) -> OpenAwait {
        self.awaits_open.inc();
        OpenAwait(self.awaits_open.clone())
    }

    /// A connection was accepted.
    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    /// A connection closed.
    pub fn connection_closed(&self) {
        self.connections.dec();
    }

    /// Read the gauges that live in storage, then render everything. A store
    /// that does not answer is said (`cairn_store_up 0`), not a failed
    /// scrape: this server's own counters matter most then.
    pub async fn render(&self, processes: &Processes) -> Result<String, cairn_core::CairnError> {
        // Counted in the store (one indexed count each), never by reading rows.
        let set = |gauge: &Gauge, n: u64| gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        match processes.gauges().await {
            Ok(g) => {
                set(&self.running, g.running);
                set(&self.waiting, g.waiting);
                set(&self.leased, g.leased);
                set(&self.lapsed, g.lapsed);
                set(&self.pending_wakes, g.pending_wakes);
                self.store_up.set(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: the store did not answer its counts");
                self.store_up.set(0);
            }
        }
        let runs = processes.worker().map(|w| w.running().len()).unwrap_or(0);
        self.worker_runs.set(i64::try_from(runs).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|_| cairn_core::CairnError::storage("cannot render metrics"))?;
        Ok(out)
    }
}

/// One await counted open; dropping it counts it closed.
pub struct OpenAwait(Gauge);

impl Drop for OpenAwait {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts the starts and ends written by this server's runtime (by the
/// worker, the schedule driver and every surface) from the records it is
/// handed, without a read.
pub struct TerminalCounter(pub Arc<Metrics>);

impl EndSink for TerminalCounter {
    fn created(&self, _record: &ProcessRecord) {
        self.0.started.inc();
    }

    fn ended(&self, record: &ProcessRecord) {
        let status = match record.status {
            ProcessStatus::Completed => "completed",
            ProcessStatus::Failed => "failed",
            ProcessStatus::Cancelled => "cancelled",
            ProcessStatus::Abandoned => "abandoned",
            ProcessStatus::Running => return,
        };
        self.0.ended.get_or_create(&StatusLabel { status }).inc();
    }
}

/// Middleware: count every answered request by method, matched route and status,
/// and time it by method and route.
pub async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // Methods are client input: only the standard ones become label values.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    // The route template (not the raw path) keeps label cardinality bounded.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let started = Instant::now();
    let response = next.run(req).await;
    let elapsed: Duration = started.elapsed();
    tracing::debug!(%method, %route, status = response.status().as_u16(), ?elapsed, "request");
    let metrics = &state.metrics;
    metrics
        .request_latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(elapsed.as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that does not answer its counts leaves the scrape whole: this
    /// server's own counters, and `cairn_store_up 0`.
    #[tokio::test]
    async fn a_scrape_without_the_store_still_renders() {
        let probe = cairn_testkit::probe::ReadProbe::new(Arc::new(cairn_core::MemoryRegistry::new()));
        let processes = Processes::builder(probe.clone()).without_worker().start();
        let metrics = Metrics::new("memory");
        let text = metrics.render(&processes).await.expect("rendered");
        assert!(text.lines().any(|l| l == "cairn_store_up 1"), "{text}");
        probe.fail_gauges(true);
        let text = metrics.render(&processes).await.expect("rendered without the store");
        assert!(text.lines().any(|l| l == "cairn_store_up 0"), "{text}");
        assert!(text.contains("cairn_processes_started_total 0"), "{text}");
    }
}
