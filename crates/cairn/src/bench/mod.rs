//! `cairn bench`: measured figures of the runtime over real backends, each held
//! against the limit of the storage under it, measured in the same run.
//!
//! Scenarios (each runnable alone with `--scenario`):
//!
//! - `throughput`: N `echo` processes from start to terminal with W workers.
//! - `http`: N `echo` processes started and awaited over HTTP by 32 clients
//!   of a `cairn serve` child, beside the same clients in process.
//! - `await`: completion → awaiter resolved, in this process and in a second OS
//!   process (`cairn bench-child await`) that opens the same database.
//! - `signal`: signal → `wait_signal` process resumed and terminal.
//! - `append`: event appends, one appender and 64 concurrent appenders.
//! - `memory`: resident memory per 10,000 waiting processes, each run in a fresh
//!   OS process (`cairn bench-child memory`) so one run's heap cannot hide the next's.
//! - `suspended`: what N suspended rerunnable `wait_signal` processes cost a
//!   server (RSS, idle CPU), a short process started meanwhile, and signal →
//!   running again, in a fresh OS process (`cairn bench-child suspended`),
//!   held against SPEC §13's targets.
//! - `sse`: what open event streams cost a `cairn serve` child (RSS, idle CPU)
//!   and what closing them gives back, held against issue 17's targets.
//! - `scale`: `get` and a session's live listing among many terminal rows.
//! - `script`: one activation replaying a 1,000-call script journal (SPEC §14's
//!   50 ms), and three-step scripts per second beside plain `echo` processes.
//! - `schedules`: what N schedules with far-away fires cost an idle server (CPU
//!   against the same process with none, RSS) and their creation rate, in a
//!   fresh OS process (`cairn bench-child schedules`).
//!
//! Limits ([`limits`]): the disk's fsync rate for `sqlite:`, the server's
//! single-row commit rate for `postgres://`, none for `memory`. Every random
//! choice comes from `--seed`; warm-up runs are excluded; each figure is the
//! median over `--runs` runs with its min and max.

pub mod child;
mod limits;
mod progress;
mod report;
mod stats;

mod append;
mod awaiting;
mod http;
mod memory;
mod scale;
mod schedules;
mod script;
mod serve;
mod signal;
mod sse;
mod suspended;
mod throughput;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cairn_core::{Processes, StartRequest, WorkerConfig};
use cairn_tools::builtin_tools;
use serde_json::{json, Value};

use crate::cli::BenchArgs;
use crate::db::{open_backend, Backend, OpenError};

use progress::Progress;
use report::{BackendReport, Outcome, Report, ScenarioReport};

pub use limits::{redact_in, redact_url};

/// The fixed default seed.
pub const DEFAULT_SEED: u64 = 20_261_122;

/// Every scenario, in the order they run.
pub const SCENARIOS: &[&str] = &[
    "throughput",
    "http",
    "await",
    "signal",
    "append",
    "memory",
    "suspended",
    "sse",
    "scale",
    "script",
    "schedules",
];

/// Default terminal rows of `scale`. Each costs two registry writes (start, then
/// complete); SQLite's single writer inserts about 2,100 such rows a second on a
/// 2-core machine, so a million would take ~8 minutes alone and break the
/// ten-minute budget of a default run. 200,000 take ~1.5 minutes;
/// `--scale-rows 1000000` measures the full size.
pub const DEFAULT_SCALE_ROWS: usize = 200_000;

/// The environment variable naming an extra PostgreSQL backend for the default run.
pub const POSTGRES_ENV: &str = "CAIRN_BENCH_POSTGRES_URL";

/// The environment variable a child process reads its database URL from (never
/// the command line: a PostgreSQL URL may carry a password).
pub const CHILD_DB_ENV: &str = "CAIRN_BENCH_CHILD_DB";

/// Longest any single await of the bench may take before the run is failed.
const AWAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a bench run does, checked.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Scenarios to run, in [`SCENARIOS`] order.
    pub scenarios: Vec<&'static str>,
    /// Database URLs; `sqlite` alone means a fresh file in a temporary directory.
    pub dbs: Vec<String>,
    /// Measured runs per figure.
    pub runs: usize,
    /// Warm-up runs per scenario (excluded).
    pub warmup: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// `throughput`: processes per run.
    pub n: usize,
    /// `throughput`: worker counts.
    pub workers: Vec<usize>,
    /// `await`, `signal`, `scale`: latency samples per run.
    pub samples: usize,
    /// `scale`: terminal rows.
    pub scale_rows: usize,
    /// `scale`: live rows.
    pub scale_live: usize,
    /// `append`: events per run and variant.
    pub events: usize,
    /// `memory`: waiting processes per run.
    pub memory_processes: usize,
    /// `suspended`: suspended processes per run.
    pub suspended_processes: usize,
    /// `suspended`, `sse`, `schedules`: seconds of idle CPU measured.
    pub idle_seconds: u64,
    /// `sse`: streams open at once per run.
    pub sse_streams: usize,
    /// `script`: three-step scripts (and `echo` processes) per run.
    pub script_n: usize,
    /// `schedules`: schedules per run.
    pub schedules: usize,
}

impl Plan {
    /// Check the arguments; the error says what is wrong and what would do.
    pub fn from_args(args: BenchArgs) -> Result<Self, String> {
        let mut scenarios = Vec::new();
        for name in &args.scenarios {
            let Some(known) = SCENARIOS.iter().find(|s| **s == name.as_str()) else {
                return Err(format!(
                    "unknown scenario `{name}`: expected one of {}",
                    SCENARIOS.join(", ")
                ));
            };
            if !scenarios.contains(known) {
                scenarios.push(*known);
            }
        }
        // Always the fixed order, whatever order they were named in.
        let scenarios: Vec<&'static str> = if scenarios.is_empty() {
            SCENARIOS.to_vec()
        } else {
            SCENARIOS.iter().copied().filter(|s| scenarios.contains(s)).collect()
        };
        let positive = [
            ("--runs", args.runs),
            ("--n", args.n),
            ("--samples", args.samples),
            ("--scale-rows", args.scale_rows),
            ("--scale-live", args.scale_live),
            ("--events", args.events),
            ("--memory-processes", args.memory_processes),
            ("--suspended-processes", args.suspended_processes),
            ("--sse-streams", args.sse_streams),
            ("--script-n", args.script_n),
            ("--schedules", args.schedules),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if args.workers.is_empty() || args.workers.contains(&0) {
            return Err("--workers must list worker counts of at least 1 (e.g. 1,3)".into());
        }
        if args.workers.iter().any(|w| *w > 64) {
            return Err("--workers: at most 64 runtimes in one process".into());
        }
        let mut dbs = args.dbs.clone();
        if dbs.is_empty() {
            dbs.push("sqlite".into());
            if let Some(url) = std::env::var(POSTGRES_ENV).ok().filter(|u| !u.trim().is_empty()) {
                dbs.push(url);
            }
        }
        for db in &dbs {
            if backend_kind(db).is_none() {
                return Err(format!(
                    "unsupported database URL `{}`: use `memory`, `sqlite` (a temporary file), `sqlite:PATH` or `postgres://...`",
                    redact_url(db)
                ));
            }
        }
        Ok(Self {
            scenarios,
            dbs,
            runs: args.runs,
            warmup: args.warmup,
            seed: args.seed,
            n: args.n,
            workers: args.workers,
            samples: args.samples,
            scale_rows: args.scale_rows,
            scale_live: args.scale_live,
            events: args.events,
            memory_processes: args.memory_processes,
            suspended_processes: args.suspended_processes,
            idle_seconds: args.idle_seconds,
            sse_streams: args.sse_streams,
            script_n: args.script_n,
            schedules: args.schedules,
        })
    }

    fn config(&self) -> Value {
        json!({
            "seed": self.seed,
            "runs": self.runs,
            "warmup": self.warmup,
            "scenarios": self.scenarios,
            "n": self.n,
            "workers": self.workers,
            "samples": self.samples,
            "scale_rows": self.scale_rows,
            "scale_live": self.scale_live,
            "events": self.events,
            "memory_processes": self.memory_processes,
            "suspended_processes": self.suspended_processes,
            "idle_seconds": self.idle_seconds,
            "sse_streams": self.sse_streams,
            "script_n": self.script_n,
            "schedules": self.schedules,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        })
    }
}

/// `memory`, `sqlite` or `postgres`, or `None` for a URL no backend takes.
pub fn backend_kind(url: &str) -> Option<&'static str> {
    if url == "memory" || url == "memory:" {
        Some("memory")
    } else if url == "sqlite" || url.strip_prefix("sqlite:").is_some_and(|p| !p.is_empty()) {
        Some("sqlite")
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some("postgres")
    } else {
        None
    }
}

/// Run `cairn bench`: exit 0 when every backend ran or was skipped as not
/// supported by this build, 1 when something failed, 2 for bad arguments.
pub async fn run(args: BenchArgs, json: bool) -> ExitCode {
    let plan = match Plan::from_args(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cairn bench: {e}");
            return ExitCode::from(2);
        }
    };
    let progress = Progress::new();
    let started = Instant::now();
    let mut temp_dirs = Vec::new();
    let mut backends = Vec::new();
    for db in &plan.dbs {
        let url = if db == "sqlite" {
            match tempfile::Builder::new().prefix("cairn-bench-").tempdir() {
                Ok(dir) => {
                    let url = format!("sqlite:{}", dir.path().join("bench.db").display());
                    temp_dirs.push(dir);
                    url
                }
                Err(e) => {
                    eprintln!("cairn bench: cannot create a temporary directory: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            db.clone()
        };
        backends.push(run_backend(&plan, &url, &progress).await);
    }
    progress.finish();
    let mut notes = vec![
        "W workers are W runtimes (each with its own worker and owner id) in this OS process over one shared registry."
            .to_string(),
        "Rates are held against the commit rate (fraction = figure / limit); latencies against the time of the durable \
         commits on their path (fraction = figure / limit; about 1.0 is the floor)."
            .to_string(),
    ];
    if !temp_dirs.is_empty() {
        notes.push("`sqlite` databases were created in a fresh temporary directory and removed afterwards.".into());
    }
    let report = Report {
        config: plan.config(),
        notes,
        backends,
        seconds: started.elapsed().as_secs_f64(),
    };
    if json {
        match serde_json::to_string_pretty(&report.to_json()) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("cairn bench: cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.to_table());
    }
    let failed = report.backends.iter().any(|b| {
        matches!(b.outcome, Outcome::Failed(_)) || b.scenarios.iter().any(|s| matches!(s.outcome, Outcome::Failed(_)))
    });
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn run_backend(plan: &Plan, url: &str, progress: &Progress) -> BackendReport {
    // A PostgreSQL URL without `schema=` gets a scratch schema, dropped afterwards,
    // so a bench never writes into the schema a deployment uses.
    let scratch = (crate::db::is_postgres(url) && cairn_postgres::split_schema(url).1.is_none())
        .then(|| format!("cairn_bench_{}", std::process::id()));
    let effective = match &scratch {
        Some(schema) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}schema={schema}")
        }
        None => url.to_string(),
    };
    let mut report = run_backend_inner(plan, &effective, progress).await;
    report.url = redact_url(url);
    if let Some(schema) = &scratch {
        if let Err(e) = limits::postgres_drop_schema(url, schema).await {
            progress.line(redact_in(
                &format!("could not drop the scratch schema {schema}: {e}"),
                url,
            ));
        }
    }
    let scrub = |o: &mut Outcome| match o {
        Outcome::Ok => {}
        Outcome::Skipped(m) | Outcome::Failed(m) => *m = redact_in(m, url),
    };
    scrub(&mut report.outcome);
    for s in &mut report.scenarios {
        scrub(&mut s.outcome);
    }
    report
}

async fn run_backend_inner(plan: &Plan, url: &str, progress: &Progress) -> BackendReport {
    let kind = backend_kind(url).unwrap_or("unknown");
    let started = Instant::now();
    let mut report = BackendReport {
        url: redact_url(url),
        kind,
        outcome: Outcome::Ok,
        limit: None,
        scenarios: Vec::new(),
        seconds: 0.0,
    };
    progress.step(format!("{kind}: opening {}", report.url));
    let backend = match open_backend(url).await {
        Ok(b) => b,
        Err(e @ OpenError::Unsupported(_)) => {
            progress.line(redact_in(&format!("{}: skipped: {e}", report.url), url));
            report.outcome = Outcome::Skipped(format!("this build cannot open it: {e}"));
            report.seconds = started.elapsed().as_secs_f64();
            return report;
        }
        Err(e) => {
            report.outcome = Outcome::Failed(e.to_string());
            report.seconds = started.elapsed().as_secs_f64();
            return report;
        }
    };
    progress.step(format!("{kind}: measuring the limit"));
    let limit = match kind {
        "sqlite" => {
            let dir = sqlite_dir(url);
            tokio::task::spawn_blocking(move || limits::fsync_rate(&dir))
                .await
                .unwrap_or_else(|e| Err(format!("fsync probe: {e}")))
                .map(Some)
        }
        "postgres" => limits::postgres_commit_rate(url).await.map(Some),
        _ => Ok(None),
    };
    match limit {
        Ok(limit) => report.limit = limit,
        Err(e) => {
            report.outcome = Outcome::Failed(e);
            report.seconds = started.elapsed().as_secs_f64();
            return report;
        }
    }
    let ctx = Ctx {
        url,
        kind,
        backend: &backend,
        plan,
        progress,
    };
    for name in &plan.scenarios {
        progress.step(format!("{kind}: {name}"));
        let t = Instant::now();
        let mut s = match *name {
            "throughput" => throughput::run(&ctx).await,
            "http" => http::run(&ctx).await,
            "await" => awaiting::run(&ctx).await,
            "signal" => signal::run(&ctx).await,
            "append" => append::run(&ctx).await,
            "memory" => memory::run(&ctx).await,
            "suspended" => suspended::run(&ctx).await,
            "sse" => sse::run(&ctx).await,
            "scale" => scale::run(&ctx).await,
            "script" => script::run(&ctx).await,
            "schedules" => schedules::run(&ctx).await,
            other => {
                let mut s = ScenarioReport::new("unknown", json!({}));
                s.outcome = Outcome::Failed(format!("no scenario `{other}`"));
                s
            }
        };
        s.seconds = t.elapsed().as_secs_f64();
        let status = match &s.outcome {
            Outcome::Ok => "done".to_string(),
            Outcome::Skipped(why) => format!("skipped ({why})"),
            Outcome::Failed(e) => format!("FAILED: {e}"),
        };
        progress.line(redact_in(
            &format!("{kind}: {name} {status} in {:.1} s", s.seconds),
            url,
        ));
        report.scenarios.push(s);
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// The directory of a `sqlite:PATH` database (where its fsyncs land).
pub(crate) fn sqlite_dir(url: &str) -> PathBuf {
    let path = Path::new(url.strip_prefix("sqlite:").unwrap_or(url));
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What a scenario works with.
pub(crate) struct Ctx<'a> {
    /// The real URL (children open it too).
    pub url: &'a str,
    pub kind: &'static str,
    pub backend: &'a Backend,
    pub plan: &'a Plan,
    pub progress: &'a Progress,
}

impl Ctx<'_> {
    /// A runtime over the shared backend with its own worker.
    pub fn runtime(&self, owner: String, concurrency: usize, batch: usize) -> Processes {
        Processes::builder(self.backend.registry.clone())
            .hub(self.backend.hub.clone())
            .clock(self.backend.clock.clone())
            .tools(builtin_tools(false))
            .worker_config(WorkerConfig {
                owner_id: owner,
                concurrency,
                batch_size: batch,
                ..WorkerConfig::default()
            })
            .start()
    }

    /// A deterministic process id: seed, scenario, run label and index.
    pub fn id(&self, scenario: &str, run: &str, i: usize) -> String {
        format!("{}-{i:07}", self.prefix(scenario, run))
    }

    /// The id prefix of one scenario run.
    pub fn prefix(&self, scenario: &str, run: &str) -> String {
        format!("bench-{:x}-{scenario}-{run}", self.plan.seed)
    }

    /// A generator for one stream of this run's random choices.
    pub fn rng(&self, stream: &str) -> stats::Rng {
        stats::Rng::new(self.plan.seed, stream)
    }

    /// Run labels in order: warm-ups (`false`: excluded) then measured runs.
    pub fn runs(&self) -> Vec<(String, bool)> {
        (1..=self.plan.warmup)
            .map(|i| (format!("warm{i}"), false))
            .chain((1..=self.plan.runs).map(|i| (format!("run{i}"), true)))
            .collect()
    }

    /// A short progress prefix.
    pub fn tag(&self) -> &'static str {
        self.kind
    }
}

/// Start a process that must be new: an id left by an earlier bench in the same
/// database (same seed) would measure nothing.
pub(crate) async fn start_new(p: &Processes, req: StartRequest) -> Result<(), String> {
    let id = req.id.clone();
    let registered = p.start(req).await.map_err(|e| format!("start `{id}`: {e}"))?;
    if !registered.created {
        return Err(format!(
            "`{id}` already exists in this database (left by an earlier bench with the same seed): \
             use a fresh database or another --seed"
        ));
    }
    Ok(())
}

/// Milliseconds of a duration, as a float.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        use clap::Parser;
        let mut argv = vec!["cairn", "bench"];
        argv.extend_from_slice(extra);
        match crate::cli::Cli::try_parse_from(argv).expect("parse").command {
            crate::cli::Command::Bench(a) => a,
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn plans_check_their_input() {
        let plan = Plan::from_args(args(&[
            "--scenario",
            "scale",
            "--scenario",
            "throughput",
            "--db",
            "memory",
        ]))
        .expect("plan");
        assert_eq!(
            plan.scenarios,
            vec!["throughput", "scale"],
            "fixed order, whatever was typed"
        );
        assert_eq!(plan.workers, vec![1, 3]);
        let err = Plan::from_args(args(&["--scenario", "nope"])).expect_err("unknown scenario");
        assert!(err.contains("unknown scenario `nope`"), "{err}");
        let err = Plan::from_args(args(&["--n", "0"])).expect_err("n = 0");
        assert!(err.contains("--n must be at least 1"), "{err}");
        let err = Plan::from_args(args(&["--db", "mysql://x:pw@h/db"])).expect_err("bad url");
        assert!(err.contains("unsupported database URL `mysql://x:***@h/db`"), "{err}");
        let err = Plan::from_args(args(&["--workers", "1,0"])).expect_err("zero workers");
        assert!(err.contains("--workers"), "{err}");
        assert!(Plan::from_args(args(&["--db", "postgres://u:p@h/d", "--db", "sqlite:/tmp/x.db"])).is_ok());
    }

    #[test]
    fn sqlite_dirs() {
        assert_eq!(sqlite_dir("sqlite:/tmp/a/b.db"), PathBuf::from("/tmp/a"));
        assert_eq!(sqlite_dir("sqlite:b.db"), PathBuf::from("."));
    }
}
