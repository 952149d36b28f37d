//! Host tools: the [`Tool`] trait, the [`ToolRegistry`] and the [`ToolContext`]
//! a running tool sees.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::awaiter::Awaiter;
use crate::clock::{system_clock, SharedClock};
use crate::events::{self, AppendRequest, EventType, ProcessEvent};
use crate::model::{ChildrenMode, Disposition, EnvSpec, Lease, Outcome, ProcessInput, ProcessRecord, WaitRequest};
use crate::processes::{register_child_start, StartRequest};
use crate::registry::ProcessRegistry;
use crate::{CairnError, Result};

/// What a human view shows of `value` (a process's input, an event's
/// payload): every shell call in it, at any depth (a script's journaled
/// `ctx.tool("shell", ...)` or `ctx.start` of one), with its `args.env`
/// values replaced by `(not shown)`: the variables a call forwards are named,
/// their values, often secrets, are not. Machine views (`--json`, the API)
/// give the value whole.
pub fn hide_shell_env(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("tool").and_then(Value::as_str) == Some("shell") {
                if let Some(env) = map
                    .get_mut("args")
                    .and_then(|a| a.get_mut("env"))
                    .and_then(Value::as_object_mut)
                {
                    for v in env.values_mut() {
                        *v = Value::String("(not shown)".into());
                    }
                }
            }
            for v in map.values_mut() {
                hide_shell_env(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hide_shell_env),
        _ => {}
    }
}

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
    /// Only the tool's run writes them: an append of one without the run's
    /// lease is refused (`reserved_event_type`, see
    /// `Processes::append_event`). A type others should append is the
    /// producer's to declare.
    fn event_types(&self) -> Vec<EventType> {
        Vec::new()
    }

    /// The JSON Schema of `args`, for callers that describe the tool (a model
    /// offered it in a session turn); [`validate_args`](Self::validate_args)
    /// stays the authority. Default: none known.
    fn args_schema(&self) -> Option<Value> {
        None
    }

    /// Check `args` before a process is recorded, so bad input fails the start
    /// rather than the run.
    fn validate_args(&self, _args: &Value) -> Result<()> {
        Ok(())
    }

    /// Check a start before it is recorded, where that needs more than the
    /// args (stored state, the disposition): a runner of an input kind checks
    /// here that its module or model exists. Default: [`validate_args`](Self::validate_args).
    async fn check_start(&self, args: &Value, _disposition: Disposition) -> Result<()> {
        self.validate_args(args)
    }

    /// [`check_start`](Self::check_start) for the process `id`, for a runner
    /// whose check needs the id (a session turn names its tool calls' children
    /// after it). Default: [`check_start`](Self::check_start).
    async fn check_start_of(&self, _id: &str, args: &Value, disposition: Disposition) -> Result<()> {
        self.check_start(args, disposition).await
    }

    /// Run once. Return success, failure or cancelled; abandoned is cairn's to write.
    async fn run(&self, ctx: ToolContext, args: Value) -> Outcome;
}

/// The tools a runtime can run, by name, and the runners of input kinds
/// other than `tool_call`. A clone shares the maps (each run's context holds one).
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: Arc<BTreeMap<String, Arc<dyn Tool>>>,
    runners: Arc<BTreeMap<String, Arc<dyn Tool>>>,
    /// Every event type a registered tool or runner declares (a replaced
    /// one's too: it only spares appends of other types a record read).
    declared: Arc<std::collections::BTreeSet<String>>,
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a tool.
    ///
    /// # Panics
    ///
    /// When no start could ever run the tool, with a message naming it and
    /// the problem: its name is not one a start may give (empty, too long,
    /// a control character, `.` or `..`), or the event types it declares are
    /// not ones a start may declare (a bad name, one in the `process.` or
    /// `script.` namespaces cairn keeps, the same name twice, a schema that
    /// does not compile, malformed semantics). Each start would be refused
    /// for it as though the caller had erred; the mistake is the host's code.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> &mut Self {
        if let Err(e) = check_tool(tool.as_ref()) {
            panic!("the `{}` tool cannot be registered: {e}", tool.name().escape_debug());
        }
        self.note_declared(tool.as_ref());
        Arc::make_mut(&mut self.tools).insert(tool.name().to_string(), tool);
        self
    }

    fn note_declared(&mut self, tool: &dyn Tool) {
        let declared = Arc::make_mut(&mut self.declared);
        declared.extend(tool.event_types().into_iter().map(|t| t.name));
    }

    /// Builder form of [`register`](Self::register).
    ///
    /// # Panics
    ///
    /// As [`register`](Self::register) does, for a tool no start could run.
    pub fn with(mut self, tool: Arc<dyn Tool>) -> Self {
        self.register(tool);
        self
    }

    /// The tool registered under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.get(name).cloned()
    }

    /// Run processes whose input is of `kind` (`script`, `session_turn`) with
    /// `runner`: a [`Tool`] whose args are the whole input (its wire JSON),
    /// checked at start by [`Tool::check_start`], whose event types every such
    /// process declares. Without a runner such inputs are recorded, and a
    /// worker that claims one ends it `unsupported_input`.
    pub fn register_runner(&mut self, kind: &str, runner: Arc<dyn Tool>) -> &mut Self {
        self.note_declared(runner.as_ref());
        Arc::make_mut(&mut self.runners).insert(kind.to_string(), runner);
        self
    }

    /// The runner of input `kind`, if one is registered.
    pub fn runner(&self, kind: &str) -> Option<Arc<dyn Tool>> {
        self.runners.get(kind).cloned()
    }

    /// What runs `input`, and its args: the tool a `tool_call` names (with
    /// its args), or the runner of the input's kind (with the whole input).
    pub fn resolve(&self, input: &ProcessInput) -> Option<(Arc<dyn Tool>, Value)> {
        match input {
            ProcessInput::ToolCall { tool, args } => self.get(tool).map(|t| (t, args.clone())),
            other => {
                let runner = self.runner(other.kind())?;
                Some((runner, serde_json::to_value(other).unwrap_or(Value::Null)))
            }
        }
    }

    /// Whether the tool or runner that runs `input` declares `event_type`:
    /// its run writes that type (`shell.output`), so an append from outside
    /// the run, without its lease, is refused (`Processes::append_event`).
    pub fn run_writes(&self, input: &ProcessInput, event_type: &str) -> bool {
        if !self.declared.contains(event_type) {
            return false;
        }
        let tool = match input {
            ProcessInput::ToolCall { tool, .. } => self.get(tool),
            other => self.runner(other.kind()),
        };
        tool.is_some_and(|t| t.event_types().iter().any(|t| t.name == event_type))
    }

    /// Whether some registered tool or runner declares `event_type`.
    pub fn declares(&self, event_type: &str) -> bool {
        self.declared.contains(event_type)
    }

    /// The names of the registered tools (in no particular order).
    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }
}

/// Refuse a tool no start could run, as a start naming it would be
/// refused: its name as a `tool_call` gives it, its event types as a
/// registration declares them.
fn check_tool(tool: &dyn Tool) -> Result<()> {
    crate::validate::validate_id("tool name", tool.name())?;
    let registration = crate::model::Registration {
        id: "tool-check".into(),
        input: ProcessInput::ToolCall {
            tool: tool.name().to_string(),
            args: json!({}),
        },
        disposition: Disposition::Rerunnable,
        event_types: tool.event_types(),
        provenance: Default::default(),
        wake_target: None,
        env_ref: None,
        external_ref: None,
    };
    crate::validate::validate_registration(&registration).map(|_| ())
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
    /// The run suspended (SPEC §13): its wait is recorded and its lease
    /// released; a later claim resumes it from the log. Nothing more is written.
    Suspended,
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
    clock: SharedClock,
    /// How many waits of each kind (`signal:{name}`, `timer`) this run has made:
    /// a re-run makes the same calls in the same order, so the n-th call is
    /// the n-th wait of the log (durable execution by replay).
    ordinals: Mutex<HashMap<String, u64>>,
    /// The tools children may run (what a start checks its `tool_call` against).
    tools: ToolRegistry,
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
                clock: system_clock(),
                ordinals: Mutex::new(HashMap::new()),
                tools: ToolRegistry::new(),
            }),
        }
    }

    /// Whether `other` is this very run's context (a clone of it), not
    /// another run's of the same process.
    pub fn is_same_run(&self, other: &ToolContext) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The same context reading time from `clock` (deadlines of waits and
    /// timers). Call before the run starts.
    pub fn with_clock(self, clock: SharedClock) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.clock = clock;
                Self { inner: Arc::new(inner) }
            }
            Err(inner) => Self { inner },
        }
    }

    /// The same context starting children that may run `tools` (what the
    /// worker runs). Call before the run starts.
    pub fn with_tools(self, tools: ToolRegistry) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.tools = tools;
                Self { inner: Arc::new(inner) }
            }
            Err(inner) => Self { inner },
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

    /// Whether the lease has lapsed by this run's clock: no renewal has
    /// reached the store in time (or this node was paused), and a peer may
    /// hold the process by now. A tool about to start a side effect it
    /// cannot take back (a child process, a request) checks this first.
    pub fn lease_lapsed(&self) -> bool {
        self.now_ms() >= self.inner.lease.lock().expires_at_ms
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
    /// A store fault of the moment is tried again while the lease holds (the
    /// replay key makes a second try of a write that did land answer it).
    pub async fn append_once(&self, event_type: &str, payload: Value, replay_key: &str) -> Result<ProcessEvent> {
        let lease = self.lease();
        let req = AppendRequest::new(event_type, payload)
            .with_lease(lease.clone())
            .with_replay_key(replay_key);
        let appended = crate::retry::while_lease_holds(&self.inner.clock, &lease, "an append", || {
            self.inner.registry.append_event(self.process_id(), req.clone())
        })
        .await?;
        Ok(appended.event)
    }

    /// Wait durably for the next signal `name` and answer its payload; `Ok(None)`
    /// when `timeout` passes first.
    ///
    /// The n-th call for a name in a run waits for the n-th signal of that name
    /// (a re-run makes the same calls, so it finds the same signals). In a
    /// `rerunnable` process the wait suspends (SPEC §13): the lease is released,
    /// the run is told to stop with [`StopReason::Suspended`] and this answers
    /// `Err`; the tool returns and a later claim, once the signal, the deadline
    /// or a cancellation request arrives, runs it again. In an `owner_bound`
    /// process the run waits holding its lease. `Err` also when the run is
    /// stopped or the lease is lost.
    pub async fn wait_signal(&self, name: &str, timeout: Option<Duration>) -> Result<Option<Value>> {
        events::validate_signal_name(name)?;
        let ordinal = self.next_ordinal(&format!("signal:{name}"));
        self.wait_signal_nth(name, ordinal, timeout).await
    }

    /// [`wait_signal`](Self::wait_signal) for the `ordinal`-th signal of
    /// `name` (from 1), for a runner that numbers its own waits (a script's
    /// journal) rather than counting this run's calls.
    pub async fn wait_signal_nth(&self, name: &str, ordinal: u64, timeout: Option<Duration>) -> Result<Option<Value>> {
        self.signal_wait(name, ordinal, Deadline::After(timeout)).await
    }

    /// [`wait_signal_nth`](Self::wait_signal_nth) with a deadline the runner
    /// fixed itself (a script's: the call's journal time plus its timeout, or
    /// an earlier timer it races). The deadline is part of the wait's
    /// identity, so the same signal awaited again under another deadline is a
    /// new wait: one that timed out at a timer's deadline does not answer a
    /// later one with `None`.
    pub async fn wait_signal_until(&self, name: &str, ordinal: u64, until_ms: Option<u64>) -> Result<Option<Value>> {
        self.signal_wait(name, ordinal, Deadline::At(until_ms)).await
    }

    async fn signal_wait(&self, name: &str, ordinal: u64, deadline: Deadline) -> Result<Option<Value>> {
        let signal_type = events::signal_event_type(name)?;
        let ordinal = ordinal.max(1);
        let mut wait = WaitRequest::signal(name, ordinal, None);
        loop {
            let log = self.read_log().await?;
            let seen = log.last().map_or(0, |e| e.sequence);
            let (waited, resumed) = marks(&log, &wait, deadline);
            if timed_out(resumed) {
                return Ok(None);
            }
            let index = usize::try_from(ordinal - 1).unwrap_or(usize::MAX);
            if let Some(signal) = log.iter().filter(|e| e.event_type == signal_type).nth(index) {
                // A signal that came after the deadline (a claim that resumed
                // the run late) did not come in time: the wait timed out first.
                let until = match deadline {
                    Deadline::At(until) => until,
                    Deadline::After(_) => waited.and_then(|e| e.payload.get("until_ms").and_then(Value::as_u64)),
                };
                if until.is_some_and(|t| signal.occurred_at_ms > t) {
                    if waited.is_some() && resumed.is_none() {
                        wait.until_ms = until;
                        self.resume(&wait, "timed_out").await?;
                    }
                    return Ok(None);
                }
                if waited.is_some() && resumed.is_none() {
                    self.resume(&wait, "signal").await?;
                }
                return Ok(Some(signal.payload.clone()));
            }
            self.check_stopped_by(&log, name)?;
            match self.pend(&mut wait, waited, deadline, seen).await? {
                Pending::TimedOut => return Ok(None),
                Pending::ReadAgain => continue,
                Pending::Hold => {}
            }
            // An owner-bound run waits here, holding its lease: the hub (or the
            // awaiter's backstop) tells it of the signal.
            let id = self.process_id().to_string();
            let awaiter = self.inner.awaiter.clone();
            let signal_type = &signal_type;
            let arrived = async move { awaiter.await_event(&id, signal_type, seen).await.map(|_| ()) };
            self.hold(&wait, vec![Box::pin(arrived)]).await?;
        }
    }

    /// Sleep durably for `duration` and return when it has passed.
    ///
    /// The n-th call in a run is the n-th timer of the log: its due time is
    /// fixed when it is first recorded, so a re-run sleeps only what is left.
    /// In a `rerunnable` process the sleep suspends (as in
    /// [`wait_signal`](Self::wait_signal)): a three-day sleep holds nothing but
    /// its rows and survives restarts. `Err` when the run is stopped.
    pub async fn sleep(&self, duration: Duration) -> Result<()> {
        let ordinal = self.next_ordinal("timer");
        self.sleep_nth(ordinal, duration).await
    }

    /// [`sleep`](Self::sleep) as the timer numbered `ordinal` of the log, for
    /// a runner that numbers its own waits (a script's journal). The numbers
    /// only tell timers apart: each must be used by one sleep.
    pub async fn sleep_nth(&self, ordinal: u64, duration: Duration) -> Result<()> {
        let mut wait = WaitRequest::timer(ordinal, 0);
        // The deadline first fixed while the wait is not yet recorded: a wait
        // the store refused (its deadline passed while the write queued, or
        // the log moved) keeps it, so the sleep ends on time instead of
        // moving its deadline on at every pass.
        let mut fixed: Option<u64> = None;
        loop {
            let log = self.read_log().await?;
            let seen = log.last().map_or(0, |e| e.sequence);
            let matching = |t: &str| log.iter().rev().find(|e| e.event_type == t && wait.matches(&e.payload));
            if matching(events::RESUMED).is_some() {
                return Ok(());
            }
            let recorded = matching(events::WAITING);
            let until = recorded
                .and_then(|e| e.payload.get("until_ms").and_then(Value::as_u64))
                .or(fixed)
                .unwrap_or_else(|| self.now_ms().saturating_add(duration_ms(duration)));
            fixed = Some(until);
            wait.until_ms = Some(until);
            if until <= self.now_ms() {
                if recorded.is_some() {
                    self.resume(&wait, "timer").await?;
                }
                return Ok(());
            }
            self.check_stopped_by(&log, "timer")?;
            if self.suspends() {
                if self.suspend(&wait, seen).await? {
                    return Err(self.suspended_error());
                }
                continue;
            }
            if recorded.is_none() && !self.hold_wait(&wait, seen).await? {
                continue;
            }
            let left = Duration::from_millis(until.saturating_sub(self.now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(left) => {
                    self.resume(&wait, "timer").await?;
                    return Ok(());
                }
                _ = self.stopped() => {}
            }
        }
    }

    /// Start a child of this process: `request` with `caused_by` naming this
    /// process (SPEC §13), checked like any start. The parent names it
    /// (`request.id`) deterministically, so a re-run's start of the same child
    /// answers the stored one; a different request under an id no child of
    /// this process holds is a `registration_conflict`.
    ///
    /// A start refused when the child already exists under this parent with
    /// the same input and disposition (a re-run's start, after a tool or model it names
    /// changed) answers the stored child; one another registration took (a
    /// host's start under the child's id) stays refused, or the parent would
    /// take that process's outcome for the work it asked for.
    ///
    /// A child of a process a session started acts for that session, as the
    /// session's own starts do (SPEC §4): it is started as the session, and a
    /// request that names another session as its originator or grantee is
    /// refused. It is granted to the scopes that hold the parent when it
    /// starts (a parent transferred to another session has its later
    /// children seen there, not by the session that gave it away), and to
    /// none when none does (the session was deleted: its grants are not made
    /// again). Its wake target, likewise, may only be in a session that holds
    /// the parent when it starts (`invalid_request` otherwise, and when none
    /// does): a transferred parent's children do not wake the session that
    /// gave it away. A child that names no wake target has none (it takes
    /// nothing from its parent's). A host's process may start children as
    /// anyone, as the host may.
    pub async fn start_child(&self, mut request: StartRequest) -> Result<ProcessRecord> {
        request.caused_by = Some(crate::model::CausalRef::process(self.process_id()));
        if let crate::model::Originator::Session { scope } = &self.inner.record.provenance.originator {
            // Its grants are the parent's holders', read in the registering
            // transaction (a transfer or revoke of the parent is wholly
            // before or after it), in place of this grant to the session;
            // its wake target is checked against those holders there too.
            let wake_target = request.wake_target.take();
            request.confine_to_session(scope)?;
            request.wake_target = wake_target;
        }
        // Every holder's grant is written with the child, in one
        // transaction: a re-run's start of the same child writes none, so a
        // grant revoked or moved since stays so.
        // A store fault of the moment is tried again while the lease holds
        // (a second start of a child that did land answers it).
        let lease = self.lease();
        let (id, input, disposition) = (request.id.clone(), request.input.clone(), request.disposition);
        let registered = crate::retry::while_lease_holds(&self.inner.clock, &lease, "starting a child", || {
            register_child_start(self.inner.registry.as_ref(), &self.inner.tools, request.clone(), &lease)
        })
        .await;
        match registered {
            Ok(registered) => Ok(registered.process),
            // A child an earlier run of this parent started stands as it
            // is: a re-run's start of it is refused only by what changed
            // around it since (a tool removed or redeclared, a model gone by
            // an upgrade), which must not turn a child that may have run, or
            // ended, into a failed start.
            Err(e) if e.is_client_error() && !matches!(e, CairnError::LeaseFenced(_)) => {
                match self.inner.registry.get(&id).await {
                    Ok(existing)
                        if existing.input == input
                            && existing.disposition == disposition
                            && existing
                                .provenance
                                .caused_by
                                .as_ref()
                                .and_then(crate::model::CausalRef::parent_process)
                                == Some(self.process_id()) =>
                    {
                        Ok(existing)
                    }
                    _ => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Wait until the children `ids` end: all of them, or any one
    /// ([`ChildrenMode`]). Answers their records, in the order of `ids`, once
    /// the wait is satisfied, and `Ok(None)` when `timeout` passes first.
    ///
    /// As with [`wait_signal`](Self::wait_signal), a `rerunnable` process
    /// suspends (the lease released, this answering `Err`, the run returning)
    /// and the end that satisfies the wait makes it claimable again in the same
    /// transaction; an `owner_bound` run waits holding its lease. Every id must
    /// name a child of this process: `unknown_process` for an id nothing
    /// holds, `invalid_request` for another process (`unknown_process` too,
    /// as for an id nothing holds, when a session started this one).
    pub async fn wait_children(
        &self,
        ids: &[String],
        mode: ChildrenMode,
        timeout: Option<Duration>,
    ) -> Result<Option<Vec<ProcessRecord>>> {
        let ordinal = self.next_ordinal("children");
        self.children_wait(ids, mode, ordinal, Deadline::After(timeout)).await
    }

    /// [`wait_children`](Self::wait_children) as the wait numbered `ordinal`,
    /// with a deadline the runner fixed itself (see
    /// [`wait_signal_until`](Self::wait_signal_until)), for a runner that
    /// numbers its own waits: each number names one wait.
    pub async fn wait_children_until(
        &self,
        ids: &[String],
        mode: ChildrenMode,
        ordinal: u64,
        until_ms: Option<u64>,
    ) -> Result<Option<Vec<ProcessRecord>>> {
        self.children_wait(ids, mode, ordinal, Deadline::At(until_ms)).await
    }

    async fn children_wait(
        &self,
        ids: &[String],
        mode: ChildrenMode,
        ordinal: u64,
        deadline: Deadline,
    ) -> Result<Option<Vec<ProcessRecord>>> {
        let mut wait = WaitRequest::children(ids.to_vec(), mode, ordinal, None);
        loop {
            let log = self.read_log().await?;
            let seen = log.last().map_or(0, |e| e.sequence);
            let (waited, resumed) = marks(&log, &wait, deadline);
            if timed_out(resumed) {
                return Ok(None);
            }
            let children = self.children_records(ids).await?;
            if children_satisfied(&children, mode) {
                // Satisfied only after the deadline (an owner-bound run that
                // read late): the wait timed out first, as a suspended one's
                // would (`wake_parent` takes no end past it).
                let until = match deadline {
                    Deadline::At(until) => until,
                    Deadline::After(_) => waited.and_then(|e| e.payload.get("until_ms").and_then(Value::as_u64)),
                };
                let ends = children.iter().filter_map(|r| r.terminal_at_ms);
                let satisfied_at = match mode {
                    ChildrenMode::Any => ends.min(),
                    ChildrenMode::All => ends.max(),
                };
                if let (Some(until), Some(at)) = (until, satisfied_at) {
                    if at > until && resumed.is_none() {
                        if waited.is_some() {
                            wait.until_ms = Some(until);
                            self.resume(&wait, "timed_out").await?;
                        }
                        return Ok(None);
                    }
                }
                if waited.is_some() && resumed.is_none() {
                    self.resume(&wait, "children").await?;
                }
                return Ok(Some(children));
            }
            self.check_stopped_by(&log, "children")?;
            match self.pend(&mut wait, waited, deadline, seen).await? {
                Pending::TimedOut => return Ok(None),
                Pending::ReadAgain => continue,
                Pending::Hold => {}
            }
            // An owner-bound run waits here, holding its lease, for the first
            // of the pending children to end; the loop then decides again.
            let pending = children.iter().filter(|r| !r.is_terminal()).map(|r| {
                let awaiter = self.inner.awaiter.clone();
                let id = r.id.clone();
                Box::pin(async move { awaiter.await_terminal(&id).await.map(|_| ()) }) as Arrival<'_>
            });
            self.hold(&wait, pending.collect()).await?;
        }
    }

    /// An owner-bound run's wait, holding its lease: until one of `arrivals`
    /// (what the wait waits for) happens, the run is told to stop, or the
    /// wait's deadline passes. The caller's loop then reads the log and
    /// decides again: past the deadline, what came in time is answered (the
    /// run may hear of it late: a notice, then a read) and only then is the
    /// wait timed out (`pend`).
    async fn hold(&self, wait: &WaitRequest, arrivals: Vec<Arrival<'_>>) -> Result<()> {
        let left = wait
            .until_ms
            .map(|t| Duration::from_millis(t.saturating_sub(self.now_ms())));
        tokio::select! {
            r = wait_with_timeout(futures::future::select_all(arrivals), left) => match r {
                // A store fault of the moment while waiting (a read the
                // awaiter made) is no end of the wait: the caller reads the
                // log again (tried while the lease holds), after a pause so
                // a store that keeps failing is not asked in a loop.
                Some((Err(e), _, _)) if !e.is_client_error() => {
                    tracing::warn!(process_id = %self.process_id(), error = %e, "waiting failed; reading again");
                    tokio::select! {
                        _ = tokio::time::sleep(HOLD_RETRY) => {}
                        _ = self.stopped() => {}
                    }
                    Ok(())
                }
                Some((r, _, _)) => r,
                None => Ok(()),
            },
            _ = self.stopped() => Ok(()),
        }
    }

    /// The records of `ids`, each of which must be a child of this process:
    /// only a child's end can satisfy a wait, ended or not (an ended process
    /// elsewhere is not this run's to read). The first id, in the order
    /// given, that is no child is refused: `unknown_process` when nothing
    /// holds it, `invalid_request` when another process does. A session's
    /// process is answered for any id that is no child exactly as for an id
    /// nothing holds (`unknown_process`, the same words), so it cannot tell
    /// another session's process, or the host's, from none, as the
    /// session's token cannot.
    async fn children_records(&self, ids: &[String]) -> Result<Vec<ProcessRecord>> {
        let lease = self.lease();
        // Prune keeps the ended children of a parent that still runs, so a
        // tombstone is never this process's child: it answers as an unknown
        // id does, and a session's process cannot read when another
        // session's pruned process ended. Every id is read before any is
        // refused, so the id a refusal names does not depend on which read
        // answered first.
        let found = crate::retry::while_lease_holds(&self.inner.clock, &lease, "reading children", || {
            futures::future::try_join_all(ids.iter().map(|id| async move {
                match self.inner.registry.get(id).await {
                    Err(CairnError::NoLongerRetained(_) | CairnError::UnknownProcess(_)) => Ok(None),
                    read => read.map(Some),
                }
            }))
        })
        .await?;
        let session = matches!(
            self.inner.record.provenance.originator,
            crate::model::Originator::Session { .. }
        );
        let mut children = Vec::with_capacity(found.len());
        for (id, record) in ids.iter().zip(found) {
            match record {
                Some(r)
                    if r.provenance
                        .caused_by
                        .as_ref()
                        .and_then(crate::model::CausalRef::parent_process)
                        == Some(self.process_id()) =>
                {
                    children.push(r);
                }
                Some(_) if !session => return Err(crate::ops::not_a_child(id, self.process_id())),
                _ => return Err(CairnError::UnknownProcess(id.clone())),
            }
        }
        Ok(children)
    }

    /// Wait for the first of several conditions: the `ordinal`-th signal of
    /// each name in `signals`, or, when given, the children wait `children`
    /// (its ids, mode and number, as in
    /// [`wait_children_until`](Self::wait_children_until)), until `until_ms`
    /// (part of the wait's identity, as in
    /// [`wait_signal_until`](Self::wait_signal_until)). For a runner that
    /// races waits (a script's `Promise.race`). One wait is recorded: the
    /// children wait, else the first signal's, either also ended by the next
    /// signal of the other names ([`WaitRequest::signals`]); as with every
    /// wait, a `rerunnable` process suspends (`Err`, the run returns).
    /// `due_timer` says `until_ms` is a pending timer's due time (a sleep
    /// raced against the rest), not a deadline of the wait's own: reaching
    /// it is recorded as `timer`, not `timed_out` ([`WaitState::due_timer`]).
    ///
    /// [`WaitState::due_timer`]: crate::model::WaitState::due_timer
    pub async fn wait_first(
        &self,
        signals: &[(String, u64)],
        children: Option<(&[String], ChildrenMode, u64)>,
        until_ms: Option<u64>,
        due_timer: bool,
    ) -> Result<FirstOf> {
        let names = |from: &[(String, u64)]| from.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        let mut wait = match (children, signals.split_first()) {
            (Some((ids, mode, ordinal)), _) => {
                WaitRequest::children(ids.to_vec(), mode, ordinal, None).or_signals(names(signals))
            }
            (None, Some(((name, ordinal), rest))) => {
                WaitRequest::signal(name, (*ordinal).max(1), None).or_signals(names(rest))
            }
            (None, None) => return Err(CairnError::InvalidRequest("a wait for the first of nothing".into())),
        };
        wait.due_timer = due_timer && until_ms.is_some();
        let passed = if wait.due_timer { "timer" } else { "timed_out" };
        let types = signals
            .iter()
            .map(|(n, _)| events::signal_event_type(n))
            .collect::<Result<Vec<_>>>()?;
        let deadline = Deadline::At(until_ms);
        loop {
            let log = self.read_log().await?;
            let seen = log.last().map_or(0, |e| e.sequence);
            let (waited, resumed) = marks(&log, &wait, deadline);
            if timed_out(resumed) || reason_of(resumed) == Some("timer") {
                return Ok(FirstOf::TimedOut);
            }
            // What has happened, the earliest first: a signal that came (in
            // the order they came), or the children's wait satisfied.
            let mut came: Option<(u64, u64, usize)> = None;
            for (i, ((_, ordinal), t)) in signals.iter().zip(&types).enumerate() {
                let index = usize::try_from(ordinal.max(&1) - 1).unwrap_or(usize::MAX);
                if let Some(signal) = log.iter().filter(|e| e.event_type == *t).nth(index) {
                    let at = (signal.occurred_at_ms, signal.sequence, i);
                    came = came.filter(|c| (c.0, c.1) < (at.0, at.1)).or(Some(at));
                }
            }
            let mut pending_children = Vec::new();
            let mut ended = None;
            if let Some((ids, mode, _)) = children {
                let records = self.children_records(ids).await?;
                if children_satisfied(&records, mode) {
                    let ends = records.iter().filter_map(|r| r.terminal_at_ms);
                    let at = match mode {
                        ChildrenMode::Any => ends.min(),
                        ChildrenMode::All => ends.max(),
                    };
                    ended = Some((at.unwrap_or(0), records));
                } else {
                    pending_children = records
                        .iter()
                        .filter(|r| !r.is_terminal())
                        .map(|r| r.id.clone())
                        .collect();
                }
            }
            let first_at = match (&came, &ended) {
                (Some(c), Some((e, _))) => Some(c.0.min(*e)),
                (Some(c), None) => Some(c.0),
                (None, Some((e, _))) => Some(*e),
                (None, None) => None,
            };
            // What came after the deadline (a claim that resumed the run
            // late) did not come in time: the wait timed out first.
            if let (Some(at), Some(until)) = (first_at, until_ms) {
                if at > until {
                    if waited.is_some() && resumed.is_none() {
                        wait.until_ms = until_ms;
                        self.resume(&wait, passed).await?;
                    }
                    return Ok(FirstOf::TimedOut);
                }
            }
            match (came, ended) {
                (Some((at, _, i)), ended) if ended.as_ref().is_none_or(|(e, _)| at <= *e) => {
                    if waited.is_some() && resumed.is_none() {
                        self.resume(&wait, "signal").await?;
                    }
                    let (_, ordinal) = &signals[i];
                    let index = usize::try_from(ordinal.max(&1) - 1).unwrap_or(usize::MAX);
                    let payload = log
                        .iter()
                        .filter(|e| e.event_type == types[i])
                        .nth(index)
                        .map_or(Value::Null, |e| e.payload.clone());
                    return Ok(FirstOf::Signal(i, payload));
                }
                (_, Some((_, records))) => {
                    if waited.is_some() && resumed.is_none() {
                        self.resume(&wait, "children").await?;
                    }
                    return Ok(FirstOf::Children(records));
                }
                _ => {}
            }
            self.check_stopped_by(&log, "the first of several waits")?;
            match self.pend(&mut wait, waited, deadline, seen).await? {
                Pending::TimedOut => return Ok(FirstOf::TimedOut),
                Pending::ReadAgain => continue,
                Pending::Hold => {}
            }
            // An owner-bound run waits here, holding its lease, for any of
            // the signals or the pending children; the loop then decides again.
            let id = self.process_id().to_string();
            let mut arrivals: Vec<Arrival<'_>> = Vec::new();
            for t in &types {
                let (awaiter, id) = (self.inner.awaiter.clone(), id.clone());
                arrivals.push(Box::pin(
                    async move { awaiter.await_event(&id, t, seen).await.map(|_| ()) },
                ));
            }
            for child in pending_children {
                let awaiter = self.inner.awaiter.clone();
                arrivals.push(Box::pin(
                    async move { awaiter.await_terminal(&child).await.map(|_| ()) },
                ));
            }
            self.hold(&wait, arrivals).await?;
        }
    }

    /// The part of a signal or children wait that is not yet satisfied: fix
    /// its deadline (the recorded one, else now + `timeout`), time it out when
    /// that passed, else suspend (`Err`: the run returns) or, in an
    /// owner-bound run, record it and hold the lease.
    async fn pend(
        &self,
        wait: &mut WaitRequest,
        waited: Option<&ProcessEvent>,
        deadline: Deadline,
        seen: u64,
    ) -> Result<Pending> {
        wait.until_ms = match deadline {
            Deadline::At(until) => until,
            // Not yet recorded: the deadline an earlier pass fixed (the
            // caller keeps `wait` across passes), so a wait the store refused
            // times out on time instead of moving its deadline on.
            Deadline::After(timeout) => waited
                .and_then(|e| e.payload.get("until_ms").and_then(Value::as_u64))
                .or(wait.until_ms)
                .or_else(|| timeout.map(|t| self.now_ms().saturating_add(duration_ms(t)))),
        };
        if wait.until_ms.is_some_and(|t| t <= self.now_ms()) {
            self.resume(wait, if wait.due_timer { "timer" } else { "timed_out" })
                .await?;
            return Ok(Pending::TimedOut);
        }
        if self.suspends() {
            if self.suspend(wait, seen).await? {
                return Err(self.suspended_error());
            }
            return Ok(Pending::ReadAgain);
        }
        if waited.is_none() && !self.hold_wait(wait, seen).await? {
            return Ok(Pending::ReadAgain);
        }
        Ok(Pending::Hold)
    }

    /// Whether this run's waits suspend (a `rerunnable` process) rather than
    /// hold the lease.
    pub fn suspends(&self) -> bool {
        self.inner.record.disposition == Disposition::Rerunnable
    }

    /// Whether the run suspended.
    pub fn is_suspended(&self) -> bool {
        self.stop_reason() == Some(StopReason::Suspended)
    }

    fn next_ordinal(&self, key: &str) -> u64 {
        let mut map = self.inner.ordinals.lock();
        let n = map.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    /// The time on this run's clock, in epoch milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Stopped, or cancelled by a request `log` holds: the run stops for it
    /// now rather than when its guard hears of it. A wait that would suspend
    /// is refused while a cancellation is pending, and without this its loop
    /// would read and ask again until the guard told it.
    fn check_stopped_by(&self, log: &[ProcessEvent], what: &str) -> Result<()> {
        if !self.is_stopped() {
            // The first request's reason, as the record keeps it.
            if let Some(request) = log.iter().find(|e| e.event_type == events::CANCEL_REQUESTED) {
                let reason = request
                    .payload
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.stop(StopReason::Cancelled { reason });
            }
        }
        self.check_stopped(what)
    }

    fn check_stopped(&self, what: &str) -> Result<()> {
        if self.is_stopped() {
            return Err(CairnError::Unavailable(format!(
                "process `{}` stopped while waiting ({what})",
                self.process_id()
            )));
        }
        Ok(())
    }

    fn suspended_error(&self) -> CairnError {
        CairnError::Unavailable(format!(
            "process `{}` suspended; a later claim resumes it",
            self.process_id()
        ))
    }

    /// Record the wait an owner-bound run holds its lease through; `false`
    /// when the log moved. A store fault of the moment is tried again while
    /// the lease holds (the run cannot run again): a try whose answer was
    /// lost but that landed moved the log, so the next answers `false` and
    /// the caller reads the wait back from the log.
    async fn hold_wait(&self, wait: &WaitRequest, seen: u64) -> Result<bool> {
        let lease = self.lease();
        crate::retry::while_lease_holds(&self.inner.clock, &lease, "recording a wait", || {
            self.inner.registry.wait(&lease, wait.clone(), seen)
        })
        .await
    }

    /// Record the wait and release the lease; `false` when the log moved.
    async fn suspend(&self, wait: &WaitRequest, seen: u64) -> Result<bool> {
        let suspended = self.inner.registry.wait(&self.lease(), wait.clone(), seen).await?;
        if suspended {
            self.stop(StopReason::Suspended);
        }
        Ok(suspended)
    }

    async fn resume(&self, wait: &WaitRequest, reason: &str) -> Result<()> {
        let mut payload = serde_json::to_value(wait).unwrap_or_else(|_| json!({}));
        if let Some(map) = payload.as_object_mut() {
            map.insert("reason".into(), json!(reason));
        }
        let lease = self.lease();
        // A store fault of the moment is tried again while the lease holds
        // (an owner-bound run cannot run again: failing here would lose the
        // signal, child or timer that came). A try whose answer was lost may
        // have landed: the resumption's replay key (its claim and its wait)
        // answers the retry with it, writing nothing twice. (The record
        // cannot tell: a wait that times out before it was recorded has none
        // either way, and its `timed_out` marker is what a re-run replays.)
        crate::retry::while_lease_holds(&self.inner.clock, &lease, "resuming", || async {
            self.inner.registry.resume(&lease, payload.clone()).await.map(|_| ())
        })
        .await
    }

    /// What a run that stopped answers: `cancelled` with the request's reason,
    /// or a placeholder the worker never writes (lost lease, suspension,
    /// shutdown hand the process to a later run).
    pub fn stopped_outcome(&self) -> Outcome {
        match self.stop_reason() {
            Some(StopReason::Cancelled { reason }) => Outcome::cancelled(reason.unwrap_or_else(|| "cancelled".into())),
            Some(StopReason::LeaseLost) => Outcome::cancelled("lease lost"),
            // Never written: the worker completes nothing after a suspension.
            Some(StopReason::Suspended) => Outcome::cancelled("suspended"),
            Some(StopReason::Shutdown) | None => Outcome::cancelled("worker shutting down"),
        }
    }

    /// The process's whole log as it stands, read in pages: what a re-run
    /// replays its journal from.
    pub async fn log(&self) -> Result<Vec<ProcessEvent>> {
        self.read_log().await
    }

    /// The whole log, in pages.
    pub async fn read_log(&self) -> Result<Vec<ProcessEvent>> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.log_page(after, crate::model::MAX_PAGE_SIZE).await?;
            all.extend(page.events);
            match page.next_after {
                Some(n) => after = n,
                None => return Ok(all),
            }
        }
    }

    /// One page of the log: up to `limit` events (1 to
    /// [`MAX_PAGE_SIZE`](crate::model::MAX_PAGE_SIZE)) after sequence
    /// `after`. A runner that need not hold the whole log (a script's
    /// replay, which keeps only its journal and bounds its bytes) reads it
    /// page by page with this.
    pub async fn log_page(&self, after: u64, limit: usize) -> Result<events::EventPage> {
        let limit = limit.clamp(1, crate::model::MAX_PAGE_SIZE);
        let lease = self.lease();
        // A store fault of the moment is tried again while the lease holds:
        // a run that cannot read its log cannot go on.
        crate::retry::while_lease_holds(&self.inner.clock, &lease, "reading the log", || {
            self.inner.registry.events_after(self.process_id(), after, Some(limit))
        })
        .await
    }
}

/// The latest `process.waiting` and `process.resumed` of `wait` (with this
/// deadline, when the deadline names it) in `log`.
fn marks<'a>(
    log: &'a [ProcessEvent],
    wait: &WaitRequest,
    deadline: Deadline,
) -> (Option<&'a ProcessEvent>, Option<&'a ProcessEvent>) {
    let latest = |t: &str| {
        log.iter()
            .rev()
            .find(|e| e.event_type == t && wait.matches(&e.payload) && deadline.names(&e.payload))
    };
    (latest(events::WAITING), latest(events::RESUMED))
}

/// Whether a wait's resumption says its deadline passed.
fn timed_out(resumed: Option<&ProcessEvent>) -> bool {
    reason_of(resumed) == Some("timed_out")
}

/// Why a wait was resumed, as its `process.resumed` says.
fn reason_of(resumed: Option<&ProcessEvent>) -> Option<&str> {
    resumed.and_then(|e| e.payload.get("reason").and_then(Value::as_str))
}

/// Something an owner-bound wait waits to happen.
type Arrival<'a> = futures::future::BoxFuture<'a, Result<()>>;

/// How long an owner-bound wait whose awaiting read failed pauses before
/// it reads its log again.
const HOLD_RETRY: Duration = Duration::from_millis(200);

/// What ended a [`ToolContext::wait_first`].
#[derive(Clone, Debug)]
pub enum FirstOf {
    /// The awaited signal of `signals[i]` came: its payload.
    Signal(usize, Value),
    /// The children wait was satisfied: the children's records, in the order of its ids.
    Children(Vec<ProcessRecord>),
    /// The deadline passed first.
    TimedOut,
}

/// Whether `children`'s ends satisfy a wait of `mode`.
fn children_satisfied(children: &[ProcessRecord], mode: ChildrenMode) -> bool {
    let ended = |r: &ProcessRecord| r.is_terminal();
    match mode {
        ChildrenMode::All => children.iter().all(ended),
        ChildrenMode::Any => children.iter().any(ended),
    }
}

/// How a signal or children wait's deadline is fixed.
#[derive(Clone, Copy)]
enum Deadline {
    /// `timeout` after the wait is first recorded (then the recorded one).
    After(Option<Duration>),
    /// Given by the runner, and part of the wait's identity.
    At(Option<u64>),
}

impl Deadline {
    /// Whether a `process.waiting` or `process.resumed` payload (already
    /// matched by kind, name and ordinal) is of a wait with this deadline.
    fn names(self, payload: &Value) -> bool {
        match self {
            Deadline::After(_) => true,
            Deadline::At(until) => payload.get("until_ms").and_then(Value::as_u64) == until,
        }
    }
}

/// What an unsatisfied wait does next.
enum Pending {
    /// Its deadline passed (recorded as `timed_out`).
    TimedOut,
    /// The log moved under it: read and decide again.
    ReadAgain,
    /// An owner-bound run waits holding its lease.
    Hold,
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn wait_with_timeout<F: std::future::Future>(fut: F, timeout: Option<Duration>) -> Option<F::Output> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut).await.ok(),
        None => Some(fut.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell call's env values are hidden wherever the call sits: a
    /// process input, a script's journaled call, a start nested in one;
    /// other tools' args and the names of the variables stay.
    #[test]
    fn shell_env_values_are_hidden_at_any_depth() {
        let mut v = json!({
            "n": 1, "kind": "tool", "tool": "shell",
            "args": {"argv": ["sh"], "env": {"TOK": "secret-1"}},
            "calls": [{"input": {"type": "tool_call", "tool": "shell", "args": {"env": {"K": "secret-2"}}}}],
            "other": {"tool": "echo", "args": {"env": {"KEEP": "shown"}}}
        });
        hide_shell_env(&mut v);
        let text = v.to_string();
        assert!(!text.contains("secret-1") && !text.contains("secret-2"), "{text}");
        assert_eq!(v.pointer("/args/env/TOK"), Some(&json!("(not shown)")));
        assert_eq!(v.pointer("/calls/0/input/args/env/K"), Some(&json!("(not shown)")));
        assert_eq!(v.pointer("/other/args/env/KEEP"), Some(&json!("shown")));
    }

    /// A tool named `name` declaring `types`.
    struct Declares(&'static str, Vec<EventType>);

    #[async_trait]
    impl Tool for Declares {
        fn name(&self) -> &str {
            self.0
        }

        fn event_types(&self) -> Vec<EventType> {
            self.1.clone()
        }

        async fn run(&self, _ctx: ToolContext, _args: Value) -> Outcome {
            Outcome::success(json!(null))
        }
    }

    /// What registering `tool` panics with, through `register` and `with` alike.
    fn refusal(tool: Declares) -> String {
        let tool: Arc<dyn Tool> = Arc::new(tool);
        let said = |panic: Box<dyn std::any::Any + Send>| crate::worker::panic_message(panic.as_ref());
        let by_register = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ToolRegistry::new().register(tool.clone());
        }))
        .map_err(said)
        .expect_err("`register` refuses it");
        let by_with = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ToolRegistry::new().with(tool.clone())))
            .map(|_| ())
            .map_err(said)
            .expect_err("`with` refuses it");
        assert_eq!(by_register, by_with);
        by_register
    }

    /// A tool no start could run is refused as it is registered, naming the
    /// tool and the problem; a tool a start could run is registered.
    #[test]
    fn a_tool_no_start_could_run_is_refused_at_registration() {
        let plain = |name: &str| EventType::plain(name);
        assert_eq!(
            refusal(Declares("", vec![])),
            "the `` tool cannot be registered: invalid id: tool name must not be empty"
        );
        assert_eq!(
            refusal(Declares("..", vec![])),
            "the `..` tool cannot be registered: invalid id: tool name `..` is a relative path segment, which no \
             URL can name; choose another"
        );
        assert_eq!(
            refusal(Declares("reserved", vec![plain("process.completed")])),
            "the `reserved` tool cannot be registered: reserved event type: `process.completed`: the `process.` \
             and `script.` namespaces belong to cairn"
        );
        let bad = refusal(Declares("badtype", vec![plain("bad type!")]));
        assert!(
            bad.starts_with("the `badtype` tool cannot be registered: invalid event type name: `bad type!`: "),
            "{bad}"
        );
        assert_eq!(
            refusal(Declares("dup", vec![plain("a.b"), plain("a.b")])),
            "the `dup` tool cannot be registered: duplicate event type: a.b"
        );
        let schema = refusal(Declares(
            "schema",
            vec![EventType {
                payload_schema: json!({"type": 7}),
                ..plain("a.b")
            }],
        ));
        assert!(
            schema.starts_with("the `schema` tool cannot be registered: invalid payload schema for `a.b`"),
            "{schema}"
        );
        let tools = ToolRegistry::new()
            .with(Arc::new(Declares("fine", vec![plain("a.b"), plain("signal.go")])))
            .with(Arc::new(Declares("plain", vec![])));
        assert_eq!(tools.names(), vec!["fine".to_string(), "plain".to_string()]);
        assert!(tools.declares("a.b"));
    }
}
