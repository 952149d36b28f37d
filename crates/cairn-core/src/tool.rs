//! Host tools: the [`Tool`] trait, the [`ToolRegistry`] and the [`ToolContext`]
//! a running tool sees.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::awaiter::Awaiter;
use crate::events::{self, AppendRequest, EventType, ProcessEvent};
use crate::model::{EnvSpec, Lease, Outcome, ProcessRecord};
use crate::registry::ProcessRegistry;
use crate::{CairnError, Result};

/// A unit of work a `tool_call` process runs.
///
/// A tool must observe [`ToolContext::stopped`]: when it fires (cancellation,
/// lost lease, shutdown) the tool stops its work, cleans up (a child process
/// group, for example) and returns promptly. What it returns after a stop is
/// used only for cancellation; after a lost lease nothing is written.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The name `tool_call` inputs use.
    fn name(&self) -> &str;

    /// Event types this tool appends; added to the registration of every
    /// process that calls it (unless the producer declares the same name).
    fn event_types(&self) -> Vec<EventType> {
        Vec::new()
    }

    /// Check `args` before a process is recorded, so bad input fails the start
    /// rather than the run.
    fn validate_args(&self, _args: &Value) -> Result<()> {
        Ok(())
    }

    /// Run once. Return success, failure or cancelled; abandoned is cairn's to write.
    async fn run(&self, ctx: ToolContext, args: Value) -> Outcome;
}

/// The tools a runtime can run, by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a tool.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> &mut Self {
        self.tools.insert(tool.name().to_string(), tool);
        self
    }

    /// Builder form of [`register`](Self::register).
    pub fn with(mut self, tool: Arc<dyn Tool>) -> Self {
        self.register(tool);
        self
    }

    /// The tool registered under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.get(name).cloned()
    }

    /// The names of the registered tools (in no particular order).
    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }
}

/// Why a run was told to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A cancellation request was recorded.
    Cancelled {
        /// The reason given with the request, if any.
        reason: Option<String>,
    },
    /// The worker lost the lease: another owner may run the process now.
    LeaseLost,
    /// The worker is draining for shutdown.
    Shutdown,
}

/// What a running tool can see and do. Cheap to clone.
#[derive(Clone)]
pub struct ToolContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    record: ProcessRecord,
    env: Option<EnvSpec>,
    registry: Arc<dyn ProcessRegistry>,
    awaiter: Awaiter,
    lease: Mutex<Lease>,
    stop: CancellationToken,
    stop_reason: Mutex<Option<StopReason>>,
}

impl ToolContext {
    /// A context for one run. The worker keeps the lease current through
    /// [`set_lease`](Self::set_lease) and stops the run through [`stop`](Self::stop).
    pub fn new(
        record: ProcessRecord,
        env: Option<EnvSpec>,
        registry: Arc<dyn ProcessRegistry>,
        awaiter: Awaiter,
        lease: Lease,
    ) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                record,
                env,
                registry,
                awaiter,
                lease: Mutex::new(lease),
                stop: CancellationToken::new(),
                stop_reason: Mutex::new(None),
            }),
        }
    }

    /// The id of the process this run belongs to.
    pub fn process_id(&self) -> &str {
        &self.inner.record.id
    }

    /// The record as of the claim that started this run.
    pub fn record(&self) -> &ProcessRecord {
        &self.inner.record
    }

    /// 1 on the first run, higher on re-runs of rerunnable work.
    pub fn attempt(&self) -> u64 {
        self.inner.record.started.as_ref().map_or(1, |s| s.attempt)
    }

    /// The execution environment, when the process names one.
    pub fn env(&self) -> Option<&EnvSpec> {
        self.inner.env.as_ref()
    }

    /// The current lease.
    pub fn lease(&self) -> Lease {
        self.inner.lease.lock().clone()
    }

    /// Replace the lease after a renewal.
    pub fn set_lease(&self, lease: Lease) {
        *self.inner.lease.lock() = lease;
    }

    /// Tell the tool to stop. The first reason wins.
    pub fn stop(&self, reason: StopReason) {
        let mut slot = self.inner.stop_reason.lock();
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.inner.stop.cancel();
    }

    /// Why the run was told to stop, if it was.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.inner.stop_reason.lock().clone()
    }

    /// Whether the run was told to stop.
    pub fn is_stopped(&self) -> bool {
        self.inner.stop.is_cancelled()
    }

    /// Resolves when the run is told to stop.
    pub async fn stopped(&self) {
        self.inner.stop.cancelled().await
    }

    /// Append a declared event under the run's lease (fenced: after a lost
    /// lease this fails with `lease_fenced` and writes nothing).
    pub async fn append(&self, event_type: &str, payload: Value) -> Result<ProcessEvent> {
        let req = AppendRequest::new(event_type, payload).with_lease(self.lease());
        Ok(self.inner.registry.append_event(self.process_id(), req).await?.event)
    }

    /// Append with a replay key, so a re-run does not duplicate the event.
    pub async fn append_once(&self, event_type: &str, payload: Value, replay_key: &str) -> Result<ProcessEvent> {
        let req = AppendRequest::new(event_type, payload)
            .with_lease(self.lease())
            .with_replay_key(replay_key);
        Ok(self.inner.registry.append_event(self.process_id(), req).await?.event)
    }

    /// Wait durably for the next signal `name`: the record shows `waiting` until
    /// it arrives, then `process.resumed` is appended and its payload returned.
    /// A re-run resumes the same wait (a signal that arrived meanwhile is not lost).
    /// `Ok(None)` when `timeout` passes first; `Err` when the run is stopped or
    /// the lease is lost.
    pub async fn wait_signal(&self, name: &str, timeout: Option<Duration>) -> Result<Option<Value>> {
        let signal_type = events::signal_event_type(name)?;
        let id = self.process_id().to_string();
        // Which signal of this name is ours: one past those already consumed.
        let mut consumed = 0u64;
        let mut signals: Vec<ProcessEvent> = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .inner
                .registry
                .events_after(&id, after, Some(crate::model::MAX_PAGE_SIZE))
                .await?;
            for e in &page.events {
                if e.event_type == events::RESUMED
                    && e.payload.get("name").and_then(Value::as_str) == Some(name)
                    && e.payload.get("timed_out").is_none()
                {
                    consumed += 1;
                }
                if e.event_type == signal_type {
                    signals.push(e.clone());
                }
            }
            match page.next_after {
                Some(n) => after = n,
                None => break,
            }
        }
        let ordinal = consumed + 1;
        let ready = signals.get(consumed as usize).cloned();
        let signal = match ready {
            Some(s) => s,
            None => {
                let waiting_already = self
                    .inner
                    .record
                    .wait
                    .as_ref()
                    .is_some_and(|w| w.name.as_deref() == Some(name) && w.ordinal == Some(ordinal));
                if !waiting_already {
                    self.append(
                        events::WAITING,
                        json!({"kind": "signal", "name": name, "ordinal": ordinal}),
                    )
                    .await?;
                }
                let after_seq = signals.last().map_or(0, |s| s.sequence);
                let wait = self.inner.awaiter.await_event(&id, &signal_type, after_seq);
                let stopped = self.stopped();
                tokio::select! {
                    r = wait_with_timeout(wait, timeout) => match r {
                        Some(r) => r?,
                        None => {
                            self.append(events::RESUMED, json!({"name": name, "ordinal": ordinal, "timed_out": true})).await?;
                            return Ok(None);
                        }
                    },
                    _ = stopped => {
                        return Err(CairnError::Unavailable(format!("process `{id}` stopped while waiting for signal `{name}`")));
                    }
                }
            }
        };
        self.append(
            events::RESUMED,
            json!({"name": name, "ordinal": ordinal, "signal_sequence": signal.sequence}),
        )
        .await?;
        Ok(Some(signal.payload))
    }
}

async fn wait_with_timeout<F: std::future::Future>(fut: F, timeout: Option<Duration>) -> Option<F::Output> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
        None => Some(fut.await),
    }
}
