//! `script`: durable scripts (SPEC §14) on the QuickJS engine.
//!
//! - **Replay.** One script makes 1,000 journaled calls (`ctx.now`,
//!   `ctx.random`, `ctx.emit` and ten `echo` children) and completes. Then one
//!   activation of it is run again and again through the engine
//!   ([`cairn_script::QuickJs`] as a [`ScriptEngine`]), each replaying the whole
//!   journal from the log: the log read, a fresh runtime, the module, the
//!   function and 1,000 calls answered from the journal. Every call is
//!   journaled already, so an activation writes nothing; each must answer the
//!   outcome the process completed with. Held against SPEC §14's 50 ms.
//! - **Throughput.** N scripts of three sequential `echo` children each (every
//!   step a child, a suspension and a resumption), started by the same
//!   starters as `throughput` and awaited to completion, scripts/s; in the same
//!   run and on the same runtime, N plain `echo` processes, processes/s.

use std::sync::Arc;
use std::time::Instant;

use cairn_core::{
    Disposition, EventType, Lease, Outcome as ProcessOutcome, ProcessInput, ProcessStatus, Processes, ScriptEngine,
    StartRequest, ToolContext, WorkerConfig,
};
use cairn_script::{Limits, QuickJs};
use cairn_tools::builtin_tools;
use serde_json::{json, Value};

use super::report::{Bound, Figure, Outcome, ScenarioReport};
use super::stats::quantile;
use super::throughput::{drive_batch, Batch, BATCH, CONCURRENCY, STARTERS};
use super::{ms, start_new, Ctx, AWAIT_TIMEOUT};

/// Journaled calls of the replayed script (SPEC §14's figure).
pub(crate) const JOURNAL_CALLS: u64 = 1_000;
/// SPEC §14: one activation replays a 1,000-call journal in under this.
const REPLAY_TARGET_MS: f64 = 50.0;
/// Warm-ups run at most this many scripts (and activations).
const WARMUP_N: usize = 500;
const WARMUP_SAMPLES: usize = 10;

const MODULE: &str = r#"
// 1,000 journaled calls: every 100th an echo child, the rest clock readings,
// random numbers and events in turn.
export async function journal(ctx, args) {
  let children = 0, local = 0;
  for (let i = 1; i <= args.calls; i++) {
    if (i % 100 === 0) children += await ctx.tool("echo", {value: i});
    else if (i % 3 === 0) await ctx.emit("tick", {i});
    else if (i % 3 === 1) local += ctx.now() > 0 ? 1 : 0;
    else local += ctx.random() < 1 ? 1 : 0;
  }
  return {children, local};
}

// Three steps, each an echo child the script waits for.
export async function three(ctx, args) {
  const a = await ctx.tool("echo", {value: args.v});
  const b = await ctx.tool("echo", {value: a + 1});
  const c = await ctx.tool("echo", {value: b + 1});
  return a + b + c;
}
"#;

/// What `journal` returns for `calls`.
fn journal_value(calls: u64) -> Value {
    let children: u64 = (1..=calls).filter(|i| i % 100 == 0).sum();
    let local = (1..=calls).filter(|i| i % 100 != 0 && i % 3 != 0).count();
    json!({"children": children, "local": local})
}

pub(crate) async fn run(ctx: &Ctx<'_>) -> ScenarioReport {
    let plan = ctx.plan;
    let mut r = ScenarioReport::new(
        "script",
        json!({
            "journal_calls": JOURNAL_CALLS,
            "samples": plan.samples,
            "script_n": plan.script_n,
            "steps": 3,
            "starters": STARTERS,
            "worker_concurrency": CONCURRENCY,
            "claim_batch": BATCH,
            "warmup_n": plan.script_n.min(WARMUP_N),
            "engine": "QuickJS (cairn-script), default limits",
        }),
    );
    r.notes.push(format!(
        "replay = one activation through the engine (ScriptEngine::run) of a completed script whose journal holds \
         {JOURNAL_CALLS} calls: the log read, a fresh QuickJS runtime, the module and every call answered from the \
         journal (nothing is written); --samples activations per run"
    ));
    r.notes.push(format!(
        "three-step scripts and plain echo processes: {STARTERS} concurrent starters, one runtime (concurrency \
         {CONCURRENCY}, claim batch {BATCH}), timed from the first start to the last terminal; a script is 4 \
         processes (itself and 3 children) and 4 activations"
    ));
    let p = runtime(ctx, format!("{}-worker", ctx.prefix("script", "all")));
    let result = measure(ctx, &p, &mut r).await;
    p.shutdown().await;
    if let Err(e) = result {
        r.outcome = Outcome::Failed(e);
    }
    r
}

/// A runtime over the shared backend with the script engine and its own worker.
fn runtime(ctx: &Ctx<'_>, owner: String) -> Processes {
    Processes::builder(ctx.backend.registry.clone())
        .hub(ctx.backend.hub.clone())
        .clock(ctx.backend.clock.clone())
        .tools(builtin_tools(false))
        .script_engine(Arc::new(QuickJs::new(Limits::default())))
        .worker_config(WorkerConfig {
            owner_id: owner,
            concurrency: CONCURRENCY,
            batch_size: BATCH,
            ..WorkerConfig::default()
        })
        .start()
}

fn script(id: String, module_ref: &str, name: &str, args: Value) -> StartRequest {
    StartRequest::new(
        id,
        ProcessInput::Script {
            module_ref: module_ref.into(),
            process_name: name.into(),
            args,
        },
        Disposition::Rerunnable,
    )
}

async fn measure(ctx: &Ctx<'_>, p: &Processes, r: &mut ScenarioReport) -> Result<(), String> {
    let put = p
        .put_module(MODULE.to_string(), Some("bench.js".into()))
        .await
        .map_err(|e| format!("put the module: {e}"))?;
    let module_ref = put.module.module_ref;

    let mut p50 = Figure::latency(
        "script.replay.p50",
        format!("replay a {JOURNAL_CALLS}-call journal, one activation, p50"),
        1,
        ctx.plan.samples,
    );
    p50.bound = Bound::Target(REPLAY_TARGET_MS, "ms", "SPEC §14: under 50 ms per activation");
    let mut p99 = p50.clone();
    p99.key = "script.replay.p99".into();
    p99.label = format!("replay a {JOURNAL_CALLS}-call journal, one activation, p99");
    let replayed = journaled_script(ctx, p, &module_ref).await?;
    for (label, measured) in ctx.runs() {
        let n = if measured {
            ctx.plan.samples
        } else {
            ctx.plan.samples.min(WARMUP_SAMPLES)
        };
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            ctx.progress
                .detail(format!("{}: script replay, {label}: {i}/{n}", ctx.tag()));
            lat.push(replayed.activation(p).await?);
        }
        if measured {
            p50.runs.push(quantile(&lat, 0.50));
            p99.runs.push(quantile(&lat, 0.99));
        }
    }
    replayed.unchanged(p).await?;
    r.figures.extend([p50, p99]);

    let mut scripts = Figure::rate("script.three_step", "start -> complete, three-step script", "scripts/s");
    let mut echo = Figure::rate("script.echo", "start -> complete (echo), same run", "processes/s");
    let runtimes = Arc::new(vec![p.clone()]);
    for (label, measured) in ctx.runs() {
        let n = if measured {
            ctx.plan.script_n
        } else {
            ctx.plan.script_n.min(WARMUP_N)
        };
        let rate = drive_batch(ctx, &runtimes, three_step(ctx, &module_ref, &label, n)).await?;
        let echo_rate = drive_batch(ctx, &runtimes, echoes(ctx, &label, n)).await?;
        if measured {
            scripts.runs.push(rate);
            echo.runs.push(echo_rate);
        }
    }
    r.figures.extend([scripts, echo]);
    Ok(())
}

/// The completed 1,000-call script an activation replays.
struct Replayed {
    id: String,
    module: cairn_core::Module,
    record: cairn_core::ProcessRecord,
    args: Value,
    events: usize,
    engine: QuickJs,
}

async fn journaled_script(ctx: &Ctx<'_>, p: &Processes, module_ref: &str) -> Result<Replayed, String> {
    let id = ctx.id("script", "journal", 0);
    let args = json!({"calls": JOURNAL_CALLS});
    let req = script(id.clone(), module_ref, "journal", args.clone()).with_event_type(EventType::plain("tick"));
    ctx.progress
        .detail(format!("{}: script: journaling {JOURNAL_CALLS} calls", ctx.tag()));
    start_new(p, req).await?;
    let record = p
        .await_output(&id, AWAIT_TIMEOUT)
        .await
        .map_err(|e| format!("await `{id}`: {e}"))?;
    if record.status != ProcessStatus::Completed
        || record.outcome != Some(ProcessOutcome::success(journal_value(JOURNAL_CALLS)))
    {
        return Err(format!("`{id}` ended {:?} instead of its value", record.outcome));
    }
    let log = all_events(p, &id).await?;
    let calls = log.iter().filter(|e| e.event_type == "script.call").count();
    let results = log.iter().filter(|e| e.event_type == "script.result").count();
    if (calls as u64, results as u64) != (JOURNAL_CALLS, JOURNAL_CALLS) {
        return Err(format!(
            "`{id}` journaled {calls} calls and {results} results, not {JOURNAL_CALLS} each"
        ));
    }
    let module = p
        .get_module(module_ref)
        .await
        .map_err(|e| format!("get the module: {e}"))?;
    Ok(Replayed {
        id,
        module,
        record,
        args,
        events: log.len(),
        engine: QuickJs::new(Limits::default()),
    })
}

async fn all_events(p: &Processes, id: &str) -> Result<Vec<cairn_core::ProcessEvent>, String> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = p
            .events(id, after, Some(1_000))
            .await
            .map_err(|e| format!("events of `{id}`: {e}"))?;
        all.extend(page.events);
        match page.next_after {
            Some(n) => after = n,
            None => return Ok(all),
        }
    }
}

impl Replayed {
    /// One activation, timed; it must answer the outcome the script completed with.
    async fn activation(&self, p: &Processes) -> Result<f64, String> {
        // The activation only reads: the lease is never presented to a write.
        let lease = Lease {
            process_id: self.id.clone(),
            owner_id: "bench-replay".into(),
            lease_token: "bench-replay".into(),
            fencing_token: 0,
            claimed_at_ms: 0,
            expires_at_ms: u64::MAX,
        };
        let run = ToolContext::new(
            self.record.clone(),
            None,
            p.registry().clone(),
            p.awaiter().clone(),
            lease,
        );
        let t = Instant::now();
        let outcome = self
            .engine
            .run(run, self.module.clone(), "journal".into(), self.args.clone())
            .await;
        let elapsed = t.elapsed();
        if Some(&outcome) != self.record.outcome.as_ref() {
            return Err(format!("a replay of `{}` answered {outcome:?}", self.id));
        }
        Ok(ms(elapsed))
    }

    /// Replays wrote nothing.
    async fn unchanged(&self, p: &Processes) -> Result<(), String> {
        let now = all_events(p, &self.id).await?.len();
        if now != self.events {
            return Err(format!(
                "replays of `{}` changed its log from {} to {now} events",
                self.id, self.events
            ));
        }
        Ok(())
    }
}

fn shuffled(ctx: &Ctx<'_>, stream: &str, n: usize) -> (Vec<usize>, Vec<u64>) {
    let mut rng = ctx.rng(stream);
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let values = (0..n).map(|_| rng.next_u64() >> 24).collect();
    (order, values)
}

fn three_step(ctx: &Ctx<'_>, module_ref: &str, label: &str, n: usize) -> Batch {
    let run = format!("three-{label}");
    let (order, values) = shuffled(ctx, &format!("script-{run}"), n);
    Batch {
        what: format!("script {run}"),
        requests: (0..n)
            .map(|i| script(ctx.id("script", &run, i), module_ref, "three", json!({"v": values[i]})))
            .collect(),
        // a + (a + 1) + (a + 2)
        expected: values.iter().map(|v| json!(3 * v + 3)).collect(),
        order,
    }
}

fn echoes(ctx: &Ctx<'_>, label: &str, n: usize) -> Batch {
    let run = format!("echo-{label}");
    let (order, values) = shuffled(ctx, &format!("script-{run}"), n);
    Batch {
        what: format!("script {run}"),
        requests: (0..n)
            .map(|i| {
                StartRequest::tool(
                    ctx.id("script", &run, i),
                    "echo",
                    json!({"value": values[i]}),
                    Disposition::Rerunnable,
                )
            })
            .collect(),
        expected: values.iter().map(|v| json!(v)).collect(),
        order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_script_makes_the_calls_it_is_named_for() {
        // 10 children (100..1000), and 990 other calls of which 330 are emits.
        assert_eq!(journal_value(1_000), json!({"children": 5_500, "local": 660}));
    }
}
