//! `/metrics`: counters, gauges and histograms in the OpenMetrics text format,
//! through `prometheus-client` (the Prometheus project's Rust client), or in
//! the classic Prometheus text format (0.0.4) for a scraper that asks for it
//! ([`Exposition`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use cairn_core::{EndSink, ProcessRecord, ProcessStatus, Processes};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
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
struct OutcomeLabel {
    outcome: &'static str,
}

/// `cairn_schedule_fires_total`, by outcome: read from the runtime's own
/// counts ([`cairn_core::schedule::fire_counts`]) as it is rendered, so it
/// is never behind them.
#[derive(Debug)]
struct ScheduleFires;

impl TypedMetric for ScheduleFires {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ScheduleFires {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = cairn_core::schedule::fire_counts();
        for (outcome, n) in [
            ("started", counts.started),
            ("skipped", counts.skipped),
            ("refused", counts.refused),
        ] {
            encoder
                .encode_family(&OutcomeLabel { outcome })?
                .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
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
    script_threads_held: Gauge,
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
        let script_threads_held = gauge(
            &mut registry,
            "cairn_script_threads_held",
            "Script engine threads held: each ran a script on past its stop and keeps its heap until it ends or the \
             server stops; at 8, module puts are refused until a restart",
        );
        registry.register(
            "cairn_schedule_fires",
            "Schedule fires this server made, by outcome: `started` its process, `skipped` (overlap `skip`: the \
             previous fire's process still running), `refused` (by the start path; see the schedule's \
             `last_refusal`). Counted by the node whose advance of the schedule took",
            ScheduleFires,
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
            script_threads_held,
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

    /// Read the gauges that live in storage (within [`STORE_TIMEOUT`]), then render everything. A store
    /// that does not answer is said (`cairn_store_up 0`), not a failed
    /// scrape: this server's own counters matter most then.
    pub async fn render(&self, processes: &Processes) -> Result<String, cairn_core::CairnError> {
        self.render_within(processes, STORE_TIMEOUT).await
    }

    /// [`render`](Self::render), waiting at most `bound` for the store.
    async fn render_within(
        &self,
        processes: &Processes,
        bound: std::time::Duration,
    ) -> Result<String, cairn_core::CairnError> {
        // Counted in the store (one indexed count each), never by reading rows.
        let set = |gauge: &Gauge, n: u64| gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        // Bounded as `/healthz` is, well inside a scraper's own timeout (10 s
        // by default): a stalled store is then said, not a failed scrape.
        match tokio::time::timeout(bound, processes.gauges())
            .await
            .unwrap_or_else(|_| {
                Err(cairn_core::CairnError::Unavailable(format!(
                    "the store did not answer within {bound:?}"
                )))
            }) {
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
        let held = cairn_script::held_threads();
        self.script_threads_held.set(i64::try_from(held).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .map_err(|_| cairn_core::CairnError::storage("cannot render metrics"))?;
        Ok(out)
    }
}

/// The text format a scrape is answered in, by its `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0.0: what a scrape that says nothing (or `*/*`) gets.
    OpenMetrics,
    /// The classic Prometheus text format, version 0.0.4.
    Classic,
}

impl Exposition {
    /// The format `accept` (a request's `Accept` header) prefers: the
    /// classic one when it rates `text/plain` (of version 0.0.4, or of no
    /// version) above OpenMetrics, OpenMetrics otherwise: when it rates
    /// OpenMetrics as high or higher, names neither, or is absent. A media
    /// range's quality is that of the most specific range that matches it
    /// (`text/plain;version=0.0.4`, then `text/plain`, `text/*`, `*/*`).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::OpenMetrics;
        };
        // (specificity, quality) of the best-matching range, per format.
        let (mut open, mut classic) = (None::<(u8, f32)>, None::<(u8, f32)>);
        let better = |best: &mut Option<(u8, f32)>, specificity: u8, q: f32| {
            if best.is_none_or(|(s, _)| specificity > s) {
                *best = Some((specificity, q));
            }
        };
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut q, mut version) = (1.0f32, None);
            for param in parts {
                let (key, value) = param.split_once('=').unwrap_or((param, ""));
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.parse().unwrap_or(0.0),
                    "version" => version = Some(value.to_string()),
                    _ => {}
                }
            }
            match media.as_str() {
                "*/*" => {
                    better(&mut open, 0, q);
                    better(&mut classic, 0, q);
                }
                "application/*" => better(&mut open, 1, q),
                "text/*" => better(&mut classic, 1, q),
                "application/openmetrics-text" => better(&mut open, 2 + u8::from(version.is_some()), q),
                "text/plain" => match version.as_deref() {
                    None => better(&mut classic, 2, q),
                    Some("0.0.4") => better(&mut classic, 3, q),
                    Some(_) => {}
                },
                _ => {}
            }
        }
        let q = |best: Option<(u8, f32)>| best.map_or(0.0, |(_, q)| q);
        if q(classic) > q(open) {
            Self::Classic
        } else {
            Self::OpenMetrics
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// `openmetrics` (what [`Metrics::render`] renders) in this format.
    pub fn text(self, openmetrics: String) -> String {
        match self {
            Self::OpenMetrics => openmetrics,
            Self::Classic => classic_text(&openmetrics),
        }
    }
}

/// The classic Prometheus text format (0.0.4) of `openmetrics`, the
/// OpenMetrics text `prometheus-client` renders. That client renders
/// OpenMetrics only, and no maintained crate turns one format into the
/// other, so this does, line by line. What differs: a counter family `x`
/// is typed by its sample's name (`# TYPE x_total counter`), an info family
/// `x` is the gauge `x_info`, a state set a gauge, an unknown one untyped, a
/// gauge histogram a histogram (its `_gcount` and `_gsum` read as `_count`
/// and `_sum`); `_created` samples, `# UNIT` and `# EOF` have no place in
/// it; an exemplar is left off; a timestamp is in milliseconds, not
/// seconds; HELP escapes only `\` and line feeds.
fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The HELP line of the family whose TYPE comes next: (name, text).
    let mut help: Option<(&str, &str)> = None;
    // The family the samples belong to: (OpenMetrics name, type).
    let mut family: (&str, &str) = ("", "unknown");
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (classic_name, classic_kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "stateset" => (name.to_string(), "gauge"),
                "histogram" | "gaugehistogram" => (name.to_string(), "histogram"),
                "summary" => (name.to_string(), "summary"),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(of, _)| *of == name) {
                out.push_str(&format!("# HELP {classic_name} {}\n", classic_help(text)));
            }
            out.push_str(&format!("# TYPE {classic_name} {classic_kind}\n"));
            family = (name, kind);
            continue;
        }
        // `# UNIT`, `# EOF` and any other comment; blank lines.
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let (name, rest) = line.split_at(name_end);
        let (labels, rest) = if rest.starts_with('{') {
            rest.split_at(label_set_end(rest))
        } else {
            ("", rest)
        };
        let (of, kind) = family;
        let suffix = name.strip_prefix(of).unwrap_or_default();
        let name = match (kind, suffix) {
            ("counter" | "histogram" | "gaugehistogram" | "summary", "_created") => continue,
            ("gaugehistogram", "_gcount") => format!("{of}_count"),
            ("gaugehistogram", "_gsum") => format!("{of}_sum"),
            _ => name.to_string(),
        };
        // The value, then a timestamp (seconds) or an exemplar (` # {...}`).
        let mut fields = rest.split_whitespace();
        let value = fields.next().unwrap_or_default();
        out.push_str(&format!("{name}{labels} {value}"));
        if let Some(seconds) = fields.next().filter(|f| *f != "#").and_then(|f| f.parse::<f64>().ok()) {
            out.push_str(&format!(" {}", (seconds * 1000.0).round() as i64));
        }
        out.push('\n');
    }
    out
}

/// The end (one past its `}`) of the label set `text` begins with; label
/// values are quoted, and may hold `}` and escaped quotes.
fn label_set_end(text: &str) -> usize {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return i + 1,
            _ => {}
        }
    }
    text.len()
}

/// OpenMetrics HELP text as the classic format has it: both escape `\`
/// and line feeds; OpenMetrics also escapes `"`, which the classic format
/// does not (its parsers refuse `\"` there).
fn classic_help(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some(next) => {
                out.push('\\');
                out.push(next);
            }
            None => out.push_str("\\\\"),
        }
    }
    out
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
    // What a request's own log lines (a 5xx's ERROR, say) are about: its
    // method and path, ids included (never its query or headers, which may
    // carry what is not to be logged). Enabled wherever errors are.
    let span = tracing::error_span!("request", method = %req.method(), path = %req.uri().path());
    let started = Instant::now();
    let response = tracing::Instrument::instrument(next.run(req), span).await;
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

/// How long a scrape waits for the store's counts.
pub const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that does not answer at all (a stalled database) is said
    /// within the scrape's bound (`STORE_TIMEOUT`, 5 s, as `/healthz`), not
    /// after the store's own call timeout (30 s on PostgreSQL), past a
    /// scraper's.
    #[tokio::test]
    async fn a_scrape_of_a_stalled_store_answers_within_its_bound() {
        let probe = cairn_testkit::probe::ReadProbe::new(Arc::new(cairn_core::MemoryRegistry::new()));
        let processes = Processes::builder(probe.clone()).without_worker().start();
        let metrics = Metrics::new("memory");
        probe.hang_gauges(true);
        let bound = std::time::Duration::from_millis(50);
        let text = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            metrics.render_within(&processes, bound),
        )
        .await
        .expect("the scrape answered, not waiting on the store")
        .expect("rendered without the store");
        assert!(text.lines().any(|l| l == "cairn_store_up 0"), "{text}");
    }

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

    /// A scrape that asks for the classic text format (`text/plain`, of
    /// version 0.0.4 or none) above OpenMetrics gets it; one that prefers
    /// OpenMetrics, rates them the same, names neither or sends no
    /// `Accept` gets OpenMetrics, as before.
    #[test]
    fn the_format_follows_the_accept_header() {
        use Exposition::{Classic, OpenMetrics};
        for (accept, format) in [
            (None, OpenMetrics),
            (Some("*/*"), OpenMetrics),
            (Some(""), OpenMetrics),
            (Some("application/json"), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            // Prometheus 2's and 3's own: OpenMetrics first.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                     text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // Prometheus with `scrape_protocols: [PrometheusText0.0.4]`.
            (Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"), Classic),
            (Some("text/plain"), Classic),
            (Some("Text/Plain; Version=\"0.0.4\""), Classic),
            (Some("text/*"), Classic),
            (Some("text/plain, */*;q=0.5"), Classic),
            (Some("text/plain, application/openmetrics-text"), OpenMetrics),
            (Some("application/openmetrics-text;q=0.2, text/plain;q=0.3"), Classic),
            (Some("text/plain;q=0, */*"), OpenMetrics),
            (Some("text/plain;version=0.0.4;q=0, text/plain"), OpenMetrics),
            // Another version of the classic format is not this one.
            (Some("text/plain;version=2.0.0"), OpenMetrics),
            (Some("text/html, */*;q=0.8"), OpenMetrics),
        ] {
            assert_eq!(Exposition::negotiate(accept), format, "{accept:?}");
        }
        assert_eq!(Classic.content_type(), "text/plain; version=0.0.4; charset=utf-8");
        assert!(OpenMetrics
            .content_type()
            .starts_with("application/openmetrics-text; version=1.0.0"));
    }

    /// Each family in the classic format: a counter typed by its sample's
    /// name, a gauge and a histogram as they were, an info family as a
    /// gauge; no `_created`, `# UNIT` nor `# EOF`; exemplars left off,
    /// timestamps in milliseconds, HELP without OpenMetrics' `\"`.
    #[test]
    fn openmetrics_text_reads_as_the_classic_format() {
        let openmetrics = concat!(
            "# HELP jobs Jobs \\\"done\\\" \\\\ here.\n",
            "# TYPE jobs counter\n",
            "jobs_total{queue=\"a}\\\"b\"} 3 # {trace=\"x\"} 1.0 1.5\n",
            "jobs_created{queue=\"a}\\\"b\"} 1700000000.5\n",
            "# HELP queue Waiting.\n",
            "# TYPE queue gauge\n",
            "# UNIT queue items\n",
            "queue 2 1700000000.25\n",
            "# HELP lat Latency.\n",
            "# TYPE lat histogram\n",
            "lat_sum 0.25\n",
            "lat_count 1\n",
            "lat_bucket{le=\"0.5\"} 1\n",
            "lat_bucket{le=\"+Inf\"} 1\n",
            "lat_created 1700000000.0\n",
            "# HELP build Build.\n",
            "# TYPE build info\n",
            "build_info{version=\"1\"} 1\n",
            "# TYPE odd unknown\n",
            "odd NaN\n",
            "# EOF\n",
        );
        let classic = Exposition::Classic.text(openmetrics.to_string());
        let expected = [
            "# HELP jobs_total Jobs \"done\" \\\\ here.",
            "# TYPE jobs_total counter",
            "jobs_total{queue=\"a}\\\"b\"} 3",
            "# HELP queue Waiting.",
            "# TYPE queue gauge",
            "queue 2 1700000000250",
            "# HELP lat Latency.",
            "# TYPE lat histogram",
            "lat_sum 0.25",
            "lat_count 1",
            "lat_bucket{le=\"0.5\"} 1",
            "lat_bucket{le=\"+Inf\"} 1",
            "# HELP build_info Build.",
            "# TYPE build_info gauge",
            "build_info{version=\"1\"} 1",
            "# TYPE odd untyped",
            "odd NaN",
        ];
        assert_eq!(classic.lines().collect::<Vec<_>>(), expected, "{classic}");
        assert!(classic.ends_with('\n'));
        assert_eq!(
            Exposition::OpenMetrics.text(openmetrics.to_string()),
            openmetrics,
            "OpenMetrics is rendered as it was"
        );
    }

    /// This server's own scrape in the classic format: every sample comes
    /// after the `# TYPE` of its name (a histogram's with its suffixes), as
    /// a classic parser reads them, and nothing OpenMetrics alone has.
    #[tokio::test]
    async fn the_servers_scrape_in_the_classic_format() {
        let processes = Processes::builder(Arc::new(cairn_core::MemoryRegistry::new()))
            .without_worker()
            .start();
        let metrics = Metrics::new("memory");
        metrics.started.inc();
        metrics.ended.get_or_create(&StatusLabel { status: "completed" }).inc();
        metrics.append_latency.observe(0.003);
        let text = Exposition::Classic.text(metrics.render(&processes).await.expect("rendered"));
        for line in [
            "# TYPE cairn_processes_started_total counter",
            "cairn_processes_started_total 1",
            "# TYPE cairn_processes_ended_total counter",
            "cairn_processes_ended_total{status=\"completed\"} 1",
            "# TYPE cairn_store_up gauge",
            "cairn_store_up 1",
            "# TYPE cairn_append_duration_seconds histogram",
            "cairn_append_duration_seconds_count 1",
            "cairn_append_duration_seconds_bucket{le=\"0.0025\"} 0",
            "cairn_append_duration_seconds_bucket{le=\"0.005\"} 1",
            "cairn_append_duration_seconds_bucket{le=\"+Inf\"} 1",
            "# TYPE cairn_build_info gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        let mut typed: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("a name and a type");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                typed = Some((name.to_string(), kind.to_string()));
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let (family, kind) = typed.clone().unwrap_or_else(|| panic!("{line} before any TYPE"));
            let suffixes: &[&str] = if kind == "histogram" {
                &["_bucket", "_sum", "_count"]
            } else {
                &[""]
            };
            assert!(
                suffixes.iter().any(|s| name == format!("{family}{s}")),
                "{line} under `# TYPE {family} {kind}`"
            );
        }
    }
}
