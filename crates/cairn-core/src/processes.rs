//! The host API (SPEC §9): the [`Processes`] facade over a registry, the
//! awaiter and the worker.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::awaiter::{Awaiter, Backoff};
use crate::clock::{system_clock, SharedClock};
use crate::events::{self, AppendRequest, AppendResult, EventPage, EventType, ProcessEvent};
use crate::model::{
    CausalRef, ChangePage, Claim, Disposition, EnvSpec, ExternalRef, Grant, GrantDescriptor, GrantedProcess,
    Originator, Outcome, ProcessFilter, ProcessInput, ProcessRecord, Provenance, PruneFilter, PruneReport,
    Registration, SessionDeleteReport, SessionScope, StartGrant, TransferReport, WakeDelivery, Watermark,
};
use crate::registry::{ProcessRegistry, Registered};
use crate::script::{Module, ModuleInfo, ModulePut, ScriptEngine};
use crate::tool::ToolRegistry;
use crate::validate::validate_id;
use crate::watch::{ChangeHub, EndSink, EventSink, WatchedRegistry};
use crate::worker::{StartSlot, WorkDriver, Worker, WorkerConfig};
use crate::{CairnError, Result};

/// A start request: the wire shape of `POST /v1/processes` (SPEC §12).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    deny_unknown_fields,
    expecting = "a start request: an object with `id`, `input` and `disposition`"
)]
pub struct StartRequest {
    /// The process id, chosen by the caller: a repeated start with the same id and
    /// the same registration is the same start.
    pub id: String,
    /// What the process runs.
    pub input: ProcessInput,
    /// Required: there is no default recovery contract.
    pub disposition: Disposition,
    /// Who started it (default: the host).
    #[serde(default)]
    pub originator: Originator,
    /// What caused it, when it has a cause worth recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<CausalRef>,
    /// A session scope to grant the new process to, in the same transaction.
    /// Only the start that creates the process writes it: the grant is no
    /// part of the registration, so a repeated start naming another scope or
    /// descriptor is still the same start (200) and grants nothing (a
    /// `wake_target` is part of it: another one is `registration_conflict`).
    /// To hand the process to another scope, `POST /v1/grants/transfer` moves
    /// a grant, descriptor and all, from the scope holding it; the host API
    /// (`Processes::grant`) adds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<StartGrant>,
    /// The session scope its wakes go to. Only an appended event whose
    /// declared type has wake semantics makes a wake (SPEC §3); the core
    /// types (`process.completed` and the rest) have none, so a process's end
    /// alone wakes no one: await or watch it to learn of its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_target: Option<SessionScope>,
    /// Event types beyond the core ones (a tool adds its own at start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<EventType>,
    /// An execution environment, stored content-addressed and referenced by the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_spec: Option<EnvSpec>,
    /// The same work in another system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
}

impl StartRequest {
    /// A start with the host as originator and nothing optional set.
    pub fn new(id: impl Into<String>, input: ProcessInput, disposition: Disposition) -> Self {
        Self {
            id: id.into(),
            input,
            disposition,
            originator: Originator::host(),
            caused_by: None,
            grant: None,
            wake_target: None,
            event_types: Vec::new(),
            env_spec: None,
            external_ref: None,
        }
    }

    /// A `tool_call` start.
    pub fn tool(id: impl Into<String>, tool: impl Into<String>, args: Value, disposition: Disposition) -> Self {
        Self::new(
            id,
            ProcessInput::ToolCall {
                tool: tool.into(),
                args,
            },
            disposition,
        )
    }

    /// An `external` start (always `externally_owned`).
    pub fn external(id: impl Into<String>, metadata: Value) -> Self {
        Self::new(id, ProcessInput::External { metadata }, Disposition::ExternallyOwned)
    }

    /// Parse the JSON wire shape; shape errors are `invalid_request` naming the problem.
    pub fn from_json(value: Value) -> Result<Self> {
        let request: Self = crate::validate::read_in_wire_terms(&value)
            .map_err(|why| CairnError::InvalidRequest(format!("start request: {why}")))?;
        // Nor is a nested object read from an array, by position.
        if let Ok(read) = serde_json::to_value(&request) {
            if let Some(at) = crate::validate::array_read_as_object(&value, &read) {
                return Err(CairnError::InvalidRequest(format!(
                    "start request: `{at}`: expected a JSON object, not an array"
                )));
            }
        }
        Ok(request)
    }

    /// Record `originator` as who started it.
    pub fn with_originator(mut self, originator: Originator) -> Self {
        self.originator = originator;
        self
    }

    /// Grant the process to `scope` with `descriptor`, in the same transaction as the start.
    pub fn with_grant(mut self, scope: SessionScope, descriptor: GrantDescriptor) -> Self {
        self.grant = Some(StartGrant {
            session_scope: scope,
            descriptor,
        });
        self
    }

    /// Make the start one that session `scope` may make (SPEC §4): started as
    /// the session (an originator naming the same session stays as given),
    /// granted to it (with the descriptor asked for). An originator, grant or
    /// wake target naming another session, a grant to one of its agent
    /// frames, or an originator naming a host scope, is refused
    /// (`invalid_request`): the caller would believe it had handed the
    /// process on.
    pub fn confine_to_session(&mut self, scope: &SessionScope) -> Result<()> {
        let other = |what: &str, named: &str| {
            Err(CairnError::InvalidRequest(format!(
                "a start for session `{}` may only {what} that session, not `{named}`",
                scope.session_id
            )))
        };
        if let Some(w) = self.wake_target.as_ref().filter(|w| w.session_id != scope.session_id) {
            return other("set a wake target in", &w.session_id);
        }
        if let Some(g) = self
            .grant
            .as_ref()
            .filter(|g| g.session_scope.session_id != scope.session_id)
        {
            return other("grant the process to", &g.session_scope.session_id);
        }
        // Granted to one of its agent frames alone, the process would be
        // one the session could not move back (as a transfer into a frame
        // would): refused, not widened to the whole session.
        if let Some(frame) = self
            .grant
            .as_ref()
            .and_then(|g| g.session_scope.agent_frame_id.as_deref())
        {
            return Err(CairnError::InvalidRequest(format!(
                "a start for session `{}` is granted to that session as a whole, not to its agent frame `{frame}` \
                 (the host may grant a process to a frame)",
                scope.session_id
            )));
        }
        match &self.originator {
            Originator::Session { scope: named } if named.session_id != scope.session_id => {
                return other("name as its originator", &named.session_id);
            }
            // A host scope named outright is the host's to name (no scope
            // is what a start that names no originator has: it is the
            // session's, below).
            Originator::Host { scope: Some(host) } => {
                return other("name as its originator", &format!("host:{host}"));
            }
            _ => {}
        }
        let own = matches!(&self.originator, Originator::Session { scope: s } if s.session_id == scope.session_id);
        if !own {
            self.originator = Originator::session(scope.clone());
        }
        let descriptor = self.grant.take().map(|g| g.descriptor).unwrap_or_default();
        self.grant = Some(StartGrant {
            session_scope: scope.clone(),
            descriptor,
        });
        Ok(())
    }

    /// Refuse (`invalid_id`) an id of a form cairn gives its own starts, for
    /// a start a session makes itself (not one its process makes, through
    /// [`ToolContext::start_child`](crate::ToolContext::start_child)): a
    /// schedule's fire (`{schedule_id}@{fire_time_ms}`, SPEC §18: `@` and 13
    /// or more digits), and a script's or a turn's child (`{parent}/{n}`,
    /// `{parent}/{step}.{k}`, SPEC §14, §15), whatever exists and whatever
    /// `caused_by` says. A session taking one first would make the fire, or
    /// the parent's start of its child, fail; other ids with `@` or `/`
    /// (`retry@2`, `repo/issue-12`) are any caller's.
    pub fn refuse_runtime_id_forms(&self) -> Result<()> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if let Some((_, millis)) = self.id.rsplit_once('@') {
            if millis.len() >= 13 && digits(millis) {
                return Err(CairnError::InvalidId(format!(
                    "process id `{}` has the form of a schedule's fire (`SCHEDULE@MILLIS`), which only a schedule starts",
                    self.id
                )));
            }
        }
        if let Some((parent, last)) = self.id.rsplit_once('/') {
            let child = match last.split_once('.') {
                Some((step, k)) => digits(step) && digits(k),
                None => digits(last),
            };
            if child {
                return Err(CairnError::InvalidId(format!(
                    "process id `{}` has the form of a child `{parent}` starts (`PARENT/N`, `PARENT/STEP.K`), which only its parent starts",
                    self.id
                )));
            }
        }
        Ok(())
    }

    /// Send its wakes to `scope`.
    pub fn with_wake_target(mut self, scope: SessionScope) -> Self {
        self.wake_target = Some(scope);
        self
    }

    /// Declare another event type.
    pub fn with_event_type(mut self, t: EventType) -> Self {
        self.event_types.push(t);
        self
    }

    /// Run it in the execution environment `env`.
    pub fn with_env(mut self, env: EnvSpec) -> Self {
        self.env_spec = Some(env);
        self
    }
}

/// Check a start against `tools` (a `tool_call`'s tool, or the runner of the
/// input's kind: [`crate::Tool::check_start_of`], and its event types declared;
/// a tool outside them is `unknown_tool` when `require_tool`), store its env
/// and register it: a host's start and a parent's start of a child alike.
pub(crate) async fn register_start(
    registry: &dyn ProcessRegistry,
    tools: &ToolRegistry,
    require_tool: bool,
    req: StartRequest,
) -> Result<Registered> {
    let (registration, grant) = prepare_registration(registry, tools, require_tool, req).await?;
    registry.register(registration, grant).await
}

/// [`register_start`] of a child by the run of its parent holding
/// `parent_lease` ([`ProcessRegistry::register_child`]): an existing id
/// writes no grant.
pub(crate) async fn register_child_start(
    registry: &dyn ProcessRegistry,
    tools: &ToolRegistry,
    req: StartRequest,
    parent_lease: &crate::model::Lease,
) -> Result<Registered> {
    let (registration, grant) = prepare_registration(registry, tools, true, req).await?;
    registry
        .register_child(registration, grant.into_iter().collect(), parent_lease)
        .await
}

/// [`register_start`], claiming what it creates for `slot` when it may run
/// now ([`ProcessRegistry::register_claimed`]).
async fn register_start_claimed(
    registry: &dyn ProcessRegistry,
    tools: &ToolRegistry,
    require_tool: bool,
    req: StartRequest,
    slot: &StartSlot,
) -> Result<(Registered, Option<Claim>)> {
    let (registration, grant) = prepare_registration(registry, tools, require_tool, req).await?;
    registry
        .register_claimed(registration, grant, &slot.owner, slot.ttl_ms)
        .await
}

/// [`prepare_start`], with the env it asks for stored.
async fn prepare_registration(
    registry: &dyn ProcessRegistry,
    tools: &ToolRegistry,
    require_tool: bool,
    req: StartRequest,
) -> Result<(Registration, Option<StartGrant>)> {
    let (mut registration, grant, env_spec) = prepare_start(registry, tools, require_tool, req).await?;
    if let Some(spec) = &env_spec {
        // What the registration alone is refused for is found before the env
        // is stored: a refused start stores nothing. (A start refused by what
        // is stored, a conflict or a pruned id, may leave its env behind.)
        crate::ops::Op::register(&registration, grant.clone(), 0)?;
        registration.env_ref = Some(registry.put_env(spec).await?);
    }
    Ok((registration, grant))
}

/// A start may declare a type that what runs it writes (`turn.response`,
/// `shell.output`) again to give it wake semantics, and nothing else: made
/// terminal, the first piece its runner writes would end the process with
/// that piece as its result; given a schema, the runner's own writes could
/// be refused after their work was done.
fn check_redeclared(own: &crate::events::EventType, runner: &crate::events::EventType) -> Result<()> {
    let bad = |message: String| CairnError::InvalidSemantics {
        event_type: own.name.clone(),
        message,
    };
    if own.semantics.terminal.is_some() && own.semantics.terminal != runner.semantics.terminal {
        return Err(bad(format!(
            "`{}` is written by what runs the process: a start may give it wake semantics, not make it terminal",
            own.name
        )));
    }
    if own.payload_schema != runner.payload_schema && !crate::validate::accepts_anything(&own.payload_schema) {
        return Err(bad(format!(
            "`{}` is written by what runs the process, under its own payload schema: a start may give it \
             wake semantics, not another schema",
            own.name
        )));
    }
    Ok(())
}

/// The registration, grant and env spec `req` asks for, checked by what runs
/// it ([`crate::Tool::check_start_of`]) and with its event types declared.
async fn prepare_start(
    registry: &dyn ProcessRegistry,
    tools: &ToolRegistry,
    require_tool: bool,
    mut req: StartRequest,
) -> Result<(Registration, Option<StartGrant>, Option<EnvSpec>)> {
    // A script's arguments are what its function reads fields of (SPEC §14:
    // `"args": {...}`): none given is an empty object, and a string or a
    // number is refused here rather than read as `undefined` fields later.
    if let ProcessInput::Script { args, .. } = &mut req.input {
        match args {
            Value::Null => *args = Value::Object(serde_json::Map::new()),
            Value::Object(_) => {}
            other => {
                return Err(CairnError::InvalidRequest(format!(
                    "a script's `args` is a JSON object (the function's `args`, `ctx.args`), not {}",
                    crate::validate::json_kind(other)
                )))
            }
        }
    }
    let mut event_types = req.event_types;
    // SPEC §2: an `externally_owned` process is never run here, so work that
    // only a cairn worker runs would wait for good.
    if req.disposition == Disposition::ExternallyOwned && !matches!(req.input, ProcessInput::External { .. }) {
        return Err(CairnError::InvalidDisposition(format!(
            "a `{}` input is run by cairn's workers, and an `externally_owned` process is never run: \
             give work another system does an `external` input",
            req.input.kind()
        )));
    }
    if let Some((runs, args)) = tools.resolve(&req.input) {
        // A check that panics is the tool's bug: refused as one, whichever
        // task the start runs on, not unwound into the caller.
        std::panic::AssertUnwindSafe(runs.check_start_of(&req.id, &args, req.disposition))
            .catch_unwind()
            .await
            .map_err(|panic| {
                CairnError::InvalidRequest(format!(
                    "the `{}` tool panicked checking its arguments: {}",
                    runs.name(),
                    crate::worker::panic_message(panic.as_ref())
                ))
            })??;
        for declared in runs.event_types() {
            match event_types.iter().find(|e| e.name == declared.name) {
                None => event_types.push(declared),
                Some(own) => check_redeclared(own, &declared)?,
            }
        }
    } else if let (ProcessInput::ToolCall { tool, .. }, true) = (&req.input, require_tool) {
        return Err(CairnError::UnknownTool(tool.clone()));
    } else if let (ProcessInput::External { .. }, true) = (&req.input, require_tool) {
        // Another system runs external work (SPEC §2): with no runner of its
        // own for the kind, a worker here could only fail it on its first claim.
        if req.disposition != Disposition::ExternallyOwned {
            return Err(CairnError::InvalidDisposition(format!(
                "an `external` input is run by another system: its disposition is `externally_owned`, not `{}`",
                req.disposition.label()
            )));
        }
    }
    if let ProcessInput::Script {
        module_ref,
        process_name,
        ..
    } = &req.input
    {
        if req.id.len() > crate::script::MAX_SCRIPT_ID_BYTES {
            return Err(CairnError::InvalidId(format!(
                "a script names its calls' children `{{id}}/{{n}}`, so its id is at most {} bytes, not {}",
                crate::script::MAX_SCRIPT_ID_BYTES,
                req.id.len()
            )));
        }
        check_script_start(registry, module_ref, process_name, req.disposition).await?;
        // Nothing could ever append it: `ctx.emit` refuses a terminal type
        // (a script ends by returning or throwing), and a host's append of
        // one needs the lease the script's run holds. A repeat of a start an
        // earlier version stored with one is answered as any repeat is.
        if let Some(terminal) = event_types.iter().find(|t| t.semantics.terminal.is_some()) {
            match registry.get(&req.id).await {
                Ok(_) => {}
                Err(CairnError::UnknownProcess(_) | CairnError::NoLongerRetained(_)) => {
                    return Err(CairnError::InvalidSemantics {
                        event_type: terminal.name.clone(),
                        message: format!(
                            "`{}` is declared terminal, and nothing could append it to a script: a script ends \
                             by returning or throwing, not by an event",
                            terminal.name
                        ),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }
    let registration = Registration {
        id: req.id,
        input: req.input,
        disposition: req.disposition,
        event_types,
        provenance: Provenance {
            originator: req.originator,
            caused_by: req.caused_by,
        },
        wake_target: req.wake_target,
        env_ref: None,
        external_ref: req.external_ref,
    };
    Ok((registration, req.grant, req.env_spec))
}

/// A script start's checks (SPEC §14): `rerunnable`, a stored module, an
/// exported function of that name.
async fn check_script_start(
    registry: &dyn ProcessRegistry,
    module_ref: &str,
    process_name: &str,
    disposition: Disposition,
) -> Result<()> {
    if disposition != Disposition::Rerunnable {
        return Err(CairnError::InvalidDisposition(format!(
            "a script process is `rerunnable` (it resumes by replaying its journal), not `{}`",
            disposition.label()
        )));
    }
    // A ref that is no module ref is `invalid_id`, as `GET /v1/modules/{ref}`
    // answers it; a well-formed one nobody stored is `unknown_module`.
    crate::script::validate_module_ref(module_ref)?;
    let module = registry.get_module(module_ref).await?;
    if !module.info.exports.iter().any(|e| e == process_name) {
        return Err(CairnError::UnknownExport {
            module_ref: module_ref.to_string(),
            process_name: process_name.to_string(),
            exports: module.info.exports.clone(),
        });
    }
    Ok(())
}

/// What a session sees of its processes at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    /// The scope this snapshot is of.
    pub scope: SessionScope,
    /// Running processes granted to the scope.
    pub running: Vec<GrantedProcess>,
    /// Pending wakes for the session.
    pub wakes: Vec<WakeDelivery>,
}

/// The answer of [`Processes::cancel_all`]: counts, never ids (a session's
/// work may be hundreds of thousands of processes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CancelAllReport {
    /// Running processes granted to the scope, and their running
    /// descendants, whose cancellation this call requested. One that
    /// already carried a request is not requested again and not counted.
    pub requested: u64,
    /// Of those, the ones that ended `cancelled` at once (nobody had started them).
    pub cancelled_now: u64,
}

/// Builds a [`Processes`] runtime.
pub struct RuntimeBuilder {
    registry: Arc<dyn ProcessRegistry>,
    tools: ToolRegistry,
    scripts: Option<Arc<dyn ScriptEngine>>,
    clock: SharedClock,
    worker: WorkerConfig,
    sink: Option<Arc<dyn EventSink>>,
    ends: Option<Arc<dyn EndSink>>,
    backoff: Backoff,
    use_hub: bool,
    run_worker: bool,
    hub: Option<ChangeHub>,
}

impl RuntimeBuilder {
    /// Tools to run (default: none; the built-ins of SPEC §12 are
    /// `cairn_tools::builtin_tools`). A start naming a tool in this registry has
    /// its args checked and the tool's event types declared; one naming a tool
    /// outside it is refused `unknown_tool` when this runtime runs a worker.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// The engine that compiles script modules and runs `script` inputs (SPEC
    /// §14; `cairn_script::QuickJs` is cairn's). Without one, storing a module
    /// is `unavailable` and script processes fail `unsupported_input` when run.
    pub fn script_engine(mut self, engine: Arc<dyn ScriptEngine>) -> Self {
        self.scripts = Some(engine);
        self
    }

    /// The clock the worker uses for evidence times, schedules read for now
    /// and whether a lease has lapsed (the registry has its own, which writes
    /// the leases' expiry times: the two must tell the same time, or runs are
    /// refused as lapsed, or run past their lease; both are the system clock
    /// unless a host sets them).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// How the worker claims and runs (ignored without a worker).
    pub fn worker_config(mut self, config: WorkerConfig) -> Self {
        self.worker = config;
        self
    }

    /// Best-effort push of every appended event.
    pub fn event_sink(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Tell `ends` of every process a write of this runtime creates or ends,
    /// with the record and without reading it back ([`EndSink`]).
    pub fn end_sink(mut self, ends: Arc<dyn EndSink>) -> Self {
        self.ends = Some(ends);
        self
    }

    /// The awaiter's fallback backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Use an existing hub (to share it with a cross-node notification source).
    pub fn hub(mut self, hub: ChangeHub) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Without the in-process hub, awaits ride the backoff point reads
    /// alone. The worker still hears of the work this runtime's writes make
    /// (a start, a signal that satisfies a suspended wait) from the hub.
    pub fn without_hub(mut self) -> Self {
        self.use_hub = false;
        self
    }

    /// Do not run a worker in this runtime (a client-only or external-only host).
    pub fn without_worker(mut self) -> Self {
        self.run_worker = false;
        self
    }

    /// Build and start the runtime (spawns the driver). Needs a tokio runtime.
    ///
    /// The driver runs on its own task until [`Processes::shutdown`]: it
    /// does not stop when the last handle is dropped, and goes on claiming
    /// and running work. Call `shutdown().await` to stop the runtime, and
    /// only then drop what holds its node id (a `hold_node` answer): another
    /// runtime under the same id would sweep work this one still runs.
    ///
    /// # Panics
    ///
    /// When this runtime runs a worker whose [`WorkerConfig`] could never run
    /// anything, with a message naming the field: a `batch_size` of 0, a
    /// `lease_ttl` under 1 ms, or a `node_id` (an `owner_id`, without one)
    /// the store would refuse to register. As with a tokio runtime builder,
    /// such a configuration is a mistake in the host's code.
    pub fn start(self) -> Processes {
        if self.run_worker {
            if let Some(why) = self.worker.unusable() {
                panic!("cairn cannot start this runtime: {why}");
            }
        }
        let hub = self.hub.unwrap_or_default();
        let mut watched = WatchedRegistry::new(self.registry, hub.clone(), self.sink);
        if let Some(ends) = self.ends {
            watched = watched.with_end_sink(ends);
        }
        let registry: Arc<dyn ProcessRegistry> = Arc::new(watched);
        let awaiter_hub = self.use_hub.then(|| hub.clone());
        let awaiter = Awaiter::new(registry.clone(), awaiter_hub.clone()).with_backoff(self.backoff);
        let starter = Arc::new(Starter {
            registry: registry.clone(),
            tools: self.tools.clone(),
            runs_worker: self.run_worker,
        });
        let scheduler: Arc<dyn crate::worker::DueWork> = Arc::new(crate::scheduler::Scheduler::new(
            registry.clone(),
            starter.clone(),
            self.clock.clone(),
        ));
        let driver = self.run_worker.then(|| {
            let worker = Worker::new(
                registry.clone(),
                self.tools.clone(),
                awaiter.clone(),
                Some(hub.clone()),
                self.clock.clone(),
                self.worker.clone(),
            );
            let worker = match &self.scripts {
                Some(engine) => worker.with_script_engine(engine.clone()),
                None => worker,
            };
            WorkDriver::start_with(worker, Some(hub.clone()), Some(scheduler))
        });
        Processes {
            inner: Arc::new(Inner {
                registry,
                starter,
                scripts: self.scripts,
                compiles: Arc::new(tokio::sync::Semaphore::new(1)),
                clock: self.clock,
                awaiter,
                hub,
                driver,
            }),
        }
    }
}

/// The start path (SPEC §9), shared by [`Processes::start`] and the fires of
/// schedules (SPEC §18).
pub(crate) struct Starter {
    registry: Arc<dyn ProcessRegistry>,
    tools: ToolRegistry,
    /// Whether this runtime runs a worker: only then is a tool outside
    /// `tools` refused.
    runs_worker: bool,
}

impl Starter {
    /// Whether `req` would be accepted by a start, without writing anything:
    /// every check of the start path but those of stored state (an existing
    /// id, a stored env).
    pub(crate) async fn check(&self, req: StartRequest, now_ms: u64) -> Result<()> {
        let (registration, grant, env_spec) =
            prepare_start(self.registry.as_ref(), &self.tools, self.runs_worker, req).await?;
        if let Some(spec) = &env_spec {
            crate::validate::env_ref_and_bytes(spec)?;
        }
        // The write checks the parent under its lock; a check ahead of it
        // (a schedule's template) must find it too, or every fire would fail.
        // A pruned parent's tombstone stands for it, as in the write.
        if let Some(parent) = registration
            .provenance
            .caused_by
            .as_ref()
            .and_then(CausalRef::parent_process)
        {
            match self.registry.get(parent).await {
                Err(CairnError::NoLongerRetained(_)) => {}
                Err(CairnError::UnknownProcess(_)) => {
                    return Err(CairnError::InvalidRequest(format!(
                        "`caused_by` names process `{parent}`, which does not exist: a child names an existing parent"
                    )))
                }
                other => {
                    other?;
                }
            }
        }
        crate::ops::Op::register(&registration, grant, now_ms).map(|_| ())
    }

    /// The event types a start of `req` declares beyond the core ones: its
    /// own and its tool's (as `prepare_start` merges them), without the
    /// start's checks; `None` for a tool this runtime does not run (its
    /// types are not known here).
    pub(crate) fn declared_types(&self, req: &StartRequest) -> Option<Vec<EventType>> {
        let mut types = req.event_types.clone();
        // A script's journal types, which every script registration declares.
        if matches!(req.input, ProcessInput::Script { .. }) {
            types.extend(crate::script::script_event_types());
        }
        match self.tools.resolve(&req.input) {
            Some((runs, _)) => {
                for declared in runs.event_types() {
                    if !types.iter().any(|e| e.name == declared.name) {
                        types.push(declared);
                    }
                }
            }
            // Scripts and external work have no runner here that declares types.
            None if matches!(req.input, ProcessInput::Script { .. } | ProcessInput::External { .. }) => {}
            None => return None,
        }
        Some(types)
    }

    pub(crate) async fn start(&self, req: StartRequest) -> Result<Registered> {
        register_start(self.registry.as_ref(), &self.tools, self.runs_worker, req).await
    }

    async fn start_claimed(&self, req: StartRequest, slot: &StartSlot) -> Result<(Registered, Option<Claim>)> {
        register_start_claimed(self.registry.as_ref(), &self.tools, self.runs_worker, req, slot).await
    }
}

pub(crate) struct Inner {
    pub(crate) registry: Arc<dyn ProcessRegistry>,
    pub(crate) starter: Arc<Starter>,
    pub(crate) clock: SharedClock,
    pub(crate) scripts: Option<Arc<dyn ScriptEngine>>,
    /// Module compiles run one at a time: each may run a module's top level
    /// for up to a script activation's CPU limit, and unlike activations
    /// (bounded by worker slots) they come straight from requests.
    compiles: Arc<tokio::sync::Semaphore>,
    awaiter: Awaiter,
    hub: ChangeHub,
    pub(crate) driver: Option<Arc<WorkDriver>>,
}

/// The host API. Cheap to clone.
///
/// Dropping every handle does not stop the runtime: its driver runs on (it
/// claims and runs work until the tokio runtime itself ends). Call
/// [`shutdown`](Self::shutdown)`.await` to stop it, and only then drop a
/// node hold taken for it: a runtime started under the same node id after
/// the hold is gone sweeps, as abandoned, owner-bound work this one still
/// runs.
#[derive(Clone)]
pub struct Processes {
    pub(crate) inner: Arc<Inner>,
}

/// The bytes (as JSON) of events at which a page of [`Processes::events`]
/// stops.
///
/// 4 MiB: a page, with its one event more, answered over MCP (which sends
/// a result twice, as structured content and as its text) stays well under
/// what an MCP client reads in one message (16 MiB for the official SDK).
pub const EVENT_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// How many events [`Processes::events`] reads first toward a page: a read
/// of events of a mebibyte each holds this many at most.
const EVENT_CHUNK: usize = 16;

/// The bytes (as JSON) of records at which a page of [`Processes::list`],
/// [`Processes::list_granted_to`], [`Processes::list_originated_by`] or
/// [`Processes::list_schedules`] stops, for the reason [`EVENT_PAGE_BYTES`]
/// gives: a record may hold mebibytes (its input and outcome; a schedule's
/// template, its input), and a page of a thousand would be gigabytes in
/// memory and more than an MCP client reads.
pub const LIST_PAGE_BYTES: usize = EVENT_PAGE_BYTES;

/// One page of a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct Listed<T> {
    /// The items, in the listing's order (by id, or newest first).
    pub items: Vec<T>,
    /// Where the next page starts (its `after_id`): the last item's id when
    /// the page is full or was cut at [`LIST_PAGE_BYTES`], else `None`.
    pub next_after_id: Option<String>,
}

/// Read one page of a listing in chunks through `read(after_id, limit)`
/// (the registry's own paging, in the filter's order): at most `limit` items, and
/// none after those that bring it to [`LIST_PAGE_BYTES`] as JSON.
async fn list_in_chunks<T, F, Fut>(filter: &ProcessFilter, id_of: impl Fn(&T) -> &str, mut read: F) -> Result<Listed<T>>
where
    T: Serialize,
    F: FnMut(ProcessFilter) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let limit = crate::model::page_limit(filter.limit)?;
    let (items, more, _) = read_in_chunks(
        limit,
        filter.after_id.clone(),
        |item: &T| Some(id_of(item).to_string()),
        |after_id, want| {
            read(ProcessFilter {
                after_id,
                limit: Some(want),
                ..filter.clone()
            })
        },
    )
    .await?;
    Ok(Listed {
        next_after_id: if more {
            items.last().map(|i| id_of(i).to_string())
        } else {
            None
        },
        items,
    })
}

/// Read at most `limit` items in chunks through `read(after, want)`, where
/// `after` is the position to read on from (`position_of` the last item
/// read, `start` at first), and none after those that bring the page to
/// [`LIST_PAGE_BYTES`] as JSON. The first read takes [`EVENT_CHUNK`]; the
/// next, as many as the bytes left hold at the size seen so far. Answers
/// the items, whether the page stopped short of the end (full, or cut at
/// the bytes), and the position after the last item.
pub(crate) async fn read_in_chunks<T, K, F, Fut>(
    limit: usize,
    start: K,
    position_of: impl Fn(&T) -> K,
    mut read: F,
) -> Result<(Vec<T>, bool, K)>
where
    T: Serialize,
    K: Clone,
    F: FnMut(K, usize) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>>>,
{
    let mut items: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    let mut after = start;
    loop {
        let left = limit - items.len();
        let want = match items.len() {
            0 => left.min(EVENT_CHUNK),
            n => {
                let seen = (bytes / n).max(1);
                left.min(((LIST_PAGE_BYTES - bytes.min(LIST_PAGE_BYTES)) / seen).max(1))
            }
        };
        let chunk = read(after.clone(), want).await?;
        let got = chunk.len();
        let mut taken = 0;
        for item in chunk {
            bytes = bytes.saturating_add(serde_json::to_vec(&item).map_or(0, |j| j.len()));
            after = position_of(&item);
            items.push(item);
            taken += 1;
            if bytes >= LIST_PAGE_BYTES {
                break;
            }
        }
        let full = items.len() >= limit;
        if taken == got && got < want && !full {
            return Ok((items, false, after));
        }
        if full || bytes >= LIST_PAGE_BYTES {
            return Ok((items, true, after));
        }
    }
}

impl Processes {
    /// Start building a runtime over `registry`.
    pub fn builder(registry: Arc<dyn ProcessRegistry>) -> RuntimeBuilder {
        RuntimeBuilder {
            registry,
            tools: ToolRegistry::new(),
            scripts: None,
            clock: system_clock(),
            worker: WorkerConfig::default(),
            sink: None,
            ends: None,
            backoff: Backoff::default(),
            use_hub: true,
            run_worker: true,
            hub: None,
        }
    }

    /// The (watched) registry behind this facade.
    pub fn registry(&self) -> &Arc<dyn ProcessRegistry> {
        &self.inner.registry
    }

    /// The change hub this runtime publishes into and awaits on.
    pub fn hub(&self) -> &ChangeHub {
        &self.inner.hub
    }

    /// The awaiter behind the `await_*` methods.
    pub fn awaiter(&self) -> &Awaiter {
        &self.inner.awaiter
    }

    /// The worker, when this runtime runs one.
    pub fn worker(&self) -> Option<&Arc<Worker>> {
        self.inner.driver.as_ref().map(|d| d.worker())
    }

    /// Record durable intent (record, grant, env) and nudge the worker. Idempotent on id.
    ///
    /// When this runtime's worker has a free slot and no older work waits for
    /// it, the same write claims the new process for the worker, which runs it
    /// at once (ADR 0022); the answer is the record as registered either way.
    ///
    /// After [`shutdown`](Self::shutdown) a runtime that ran a worker
    /// refuses every start (`unavailable`) and records nothing: nothing here
    /// would run the process.
    pub async fn start(&self, req: StartRequest) -> Result<Registered> {
        let Some(driver) = &self.inner.driver else {
            return self.inner.starter.start(req).await;
        };
        if driver.is_shut_down() {
            return Err(CairnError::Unavailable(format!(
                "this runtime has shut down, and nothing here would run process `{}`: start it through a \
                 runtime that is running",
                req.id
            )));
        }
        // A new process no worker runs (an externally owned one) is nothing
        // to drive for.
        let wants_a_drive = |r: &Registered| r.created && crate::fold::may_be_work(&r.process);
        let Some(slot) = driver.worker().slot_for_start() else {
            let registered = self.inner.starter.start(req).await?;
            if wants_a_drive(&registered) {
                driver.nudge();
            }
            return Ok(registered);
        };
        // The claim and the run it hands over are one task of their own: a
        // caller that goes (a timeout, a client that hung up) once the write
        // is under way must not leave a process claimed and `started` that
        // nobody runs (an owner-bound one could never be run again).
        let (starter, driver) = (self.inner.starter.clone(), driver.clone());
        let asked_at_ms = self.inner.clock.now_ms();
        tokio::spawn(async move {
            let id = req.id.clone();
            let (registered, claim) = match starter.start_claimed(req, &slot).await {
                Ok(answer) => answer,
                Err(e @ CairnError::OutcomeUnknown(_)) => {
                    drop(slot);
                    driver.worker().settle_lost_start(id, asked_at_ms);
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            match claim {
                Some(claim) => driver.worker().run_started(claim, slot),
                None if wants_a_drive(&registered) => driver.nudge(),
                None => {}
            }
            Ok(registered)
        })
        .await
        .map_err(|e| CairnError::Unavailable(format!("the start stopped: {e}")))?
    }

    /// Compile and store a script module (SPEC §14): answers the stored module
    /// and whether this call stored it. A syntax error is `invalid_module`
    /// (line and column in the message); a source over 1 MiB `payload_too_large`.
    pub async fn put_module(&self, source: String, name: Option<String>) -> Result<ModulePut> {
        crate::script::check_source(&source)?;
        let Some(engine) = &self.inner.scripts else {
            return Err(CairnError::Unavailable("this runtime has no script engine".into()));
        };
        // A name is checked whether or not the source is stored already.
        crate::script::check_module_name(name.as_deref())?;
        // A source stored already is answered as it is, not compiled again.
        // A store that cannot be read fails the put now (it could not store
        // the module either), not after a compile and a second wait.
        match self
            .inner
            .registry
            .get_module(&crate::script::module_ref(&source))
            .await
        {
            Ok(stored) => {
                return Ok(ModulePut {
                    module: stored.info,
                    created: false,
                })
            }
            Err(CairnError::UnknownModule(_)) => {}
            Err(e) if !e.is_client_error() => return Err(e),
            Err(_) => {}
        }
        // Compiling may run the module's top-level code (under the engine's
        // limits): off the async threads, and one at a time, so requests
        // storing modules whose top level spins hold one core at most.
        let exports = {
            // The turn is held by the compile itself, not by the request: a
            // client that hangs up does not free it while the compile runs.
            let turn = self
                .inner
                .compiles
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| CairnError::Unavailable("the script compiler is closed".into()))?;
            let (engine, source) = (engine.clone(), source.clone());
            tokio::task::spawn_blocking(move || {
                let _turn = turn;
                engine.exports(&source)
            })
            .await
            .map_err(|e| CairnError::Unavailable(format!("the script compiler stopped: {e}")))??
        };
        // A module no start could run is refused as it is stored, not at
        // every start that names it; one stored before this rule answered
        // above, as any stored source does.
        if exports.is_empty() {
            return Err(CairnError::InvalidModule(
                "the module exports no function a script can run (an `export async function`, or a \
                 function or arrow function exported by name)"
                    .into(),
            ));
        }
        let module = Module {
            info: ModuleInfo {
                module_ref: crate::script::module_ref(&source),
                name,
                exports,
                created_at_ms: self.inner.clock.now_ms(),
            },
            source,
        };
        self.inner.registry.put_module(&module).await
    }

    /// One page of stored modules, without sources ([`ProcessRegistry::list_modules`]).
    pub async fn list_modules(&self, after: Option<&str>, limit: Option<usize>) -> Result<Vec<ModuleInfo>> {
        if let Some(after) = after {
            validate_id("module cursor", after)?;
        }
        self.inner.registry.list_modules(after, limit).await
    }

    /// One module with its source ([`ProcessRegistry::get_module`]).
    pub async fn get_module(&self, module_ref: &str) -> Result<Module> {
        validate_id("module ref", module_ref)?;
        self.inner.registry.get_module(module_ref).await
    }

    /// The current record ([`ProcessRegistry::get`]).
    pub async fn get(&self, id: &str) -> Result<ProcessRecord> {
        self.inner.registry.get(id).await
    }

    /// Counts of the live state ([`ProcessRegistry::gauges`]).
    pub async fn gauges(&self) -> Result<crate::model::Gauges> {
        self.inner.registry.gauges().await
    }

    /// One page of records ([`ProcessRegistry::list`]), read in chunks and
    /// cut at [`LIST_PAGE_BYTES`].
    pub async fn list(&self, filter: &ProcessFilter) -> Result<Listed<ProcessRecord>> {
        let registry = &self.inner.registry;
        list_in_chunks(
            filter,
            |r: &ProcessRecord| r.id.as_str(),
            |f| async move { registry.list(&f).await },
        )
        .await
    }

    /// The grants held on process `id` ([`ProcessRegistry::grants_of`]).
    pub async fn grants_of(&self, id: &str) -> Result<Vec<crate::model::Grant>> {
        self.inner.registry.grants_of(id).await
    }

    /// The tombstone of pruned process `id` when `scope` held a grant on it
    /// as it was pruned ([`ProcessRegistry::pruned_grant`]).
    pub async fn pruned_grant(&self, scope: &SessionScope, id: &str) -> Result<Option<crate::model::Tombstone>> {
        self.inner.registry.pruned_grant(scope, id).await
    }

    /// One page of the processes granted to `scope`
    /// ([`ProcessRegistry::list_granted_to`]), read in chunks and cut at
    /// [`LIST_PAGE_BYTES`].
    pub async fn list_granted_to(
        &self,
        scope: &SessionScope,
        filter: &ProcessFilter,
    ) -> Result<Listed<GrantedProcess>> {
        let registry = &self.inner.registry;
        list_in_chunks(
            filter,
            |g: &GrantedProcess| g.process.id.as_str(),
            |f| async move { registry.list_granted_to(scope, &f).await },
        )
        .await
    }

    /// One page of the processes `scope` started
    /// ([`ProcessRegistry::list_originated_by`]), read in chunks and cut at
    /// [`LIST_PAGE_BYTES`].
    pub async fn list_originated_by(
        &self,
        scope: &SessionScope,
        filter: &ProcessFilter,
    ) -> Result<Listed<ProcessRecord>> {
        let registry = &self.inner.registry;
        list_in_chunks(
            filter,
            |r: &ProcessRecord| r.id.as_str(),
            |f| async move { registry.list_originated_by(scope, &f).await },
        )
        .await
    }

    /// One page of the log after `after` ([`ProcessRegistry::events_after`]).
    ///
    /// A page holds at most `limit` events, and stops once its events reach
    /// [`EVENT_PAGE_BYTES`] as JSON (so it holds at most that and one event
    /// more: events may be a mebibyte each, and a page of a thousand would
    /// be a gibibyte in memory); a page cut so says where the next one
    /// starts, as a full one does.
    pub async fn events(&self, id: &str, after: u64, limit: Option<usize>) -> Result<EventPage> {
        let limit = crate::model::page_limit(limit)?;
        let mut page = EventPage {
            events: Vec::new(),
            next_after: None,
        };
        let mut bytes = 0usize;
        let mut from = after;
        loop {
            // The first read takes a few; the next, as many as the bytes
            // left hold at the size seen so far (small events: one more
            // read for the rest of the page).
            let left = limit - page.events.len();
            let want = match page.events.len() {
                0 => left.min(EVENT_CHUNK),
                n => {
                    let seen = (bytes / n).max(1);
                    left.min(((EVENT_PAGE_BYTES - bytes.min(EVENT_PAGE_BYTES)) / seen).max(1))
                }
            };
            let chunk = self.inner.registry.events_after(id, from, Some(want)).await?;
            let (got, log_goes_on) = (chunk.events.len(), chunk.next_after.is_some());
            let mut taken = 0;
            for event in chunk.events {
                bytes = bytes.saturating_add(serde_json::to_vec(&event).map_or(0, |j| j.len()));
                from = event.sequence;
                page.events.push(event);
                taken += 1;
                if bytes >= EVENT_PAGE_BYTES {
                    break;
                }
            }
            if taken == got && !log_goes_on {
                return Ok(page);
            }
            if bytes >= EVENT_PAGE_BYTES || page.events.len() >= limit {
                page.next_after = Some(from);
                return Ok(page);
            }
        }
    }

    /// The record once terminal, or the still-running record when `timeout` passes first.
    pub async fn await_output(&self, id: &str, timeout: Duration) -> Result<ProcessRecord> {
        self.inner.awaiter.await_terminal_for(id, timeout).await
    }

    /// The first `event_type` event after `after_sequence`, or `timeout` (error `timeout`).
    pub async fn await_event(
        &self,
        id: &str,
        event_type: &str,
        after_sequence: u64,
        timeout: Duration,
    ) -> Result<ProcessEvent> {
        match tokio::time::timeout(timeout, self.inner.awaiter.await_event(id, event_type, after_sequence)).await {
            Ok(r) => r,
            Err(_) => Err(CairnError::Timeout(format!(
                "no `{event_type}` event on `{id}` within {timeout:?}"
            ))),
        }
    }

    /// Follow a log: the next page after `after`, waiting up to `timeout` for one
    /// event. An empty page means the timeout passed, or the process ended and
    /// its log has nothing after `after`.
    pub async fn follow(&self, id: &str, after: u64, limit: Option<usize>, timeout: Duration) -> Result<EventPage> {
        match tokio::time::timeout(timeout, self.inner.awaiter.await_events(id, after, limit)).await {
            Ok(r) => r,
            Err(_) => Ok(EventPage {
                events: Vec::new(),
                next_after: None,
            }),
        }
    }

    /// Request cancellation of `id` and, in the same write, of its running
    /// descendants (see [`ProcessRegistry::request_cancel`], SPEC §13).
    /// Answers the record of `id` after the request.
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> Result<ProcessRecord> {
        Ok(self.inner.registry.request_cancel(id, reason).await?.process)
    }

    /// Request cancellation of every running process granted to `scope`
    /// (and, in each request's write, of its running descendants: SPEC
    /// §13), a page at a time; only the counts are kept, whatever the
    /// number of processes. A process that already carries a request, with
    /// whatever reason, is skipped: a second request would only add an
    /// event to it. A failure part way leaves the requests made, and a
    /// second call requests only what the first did not reach.
    pub async fn cancel_all(&self, scope: &SessionScope, reason: Option<String>) -> Result<CancelAllReport> {
        crate::validate::validate_scope(scope)?;
        // Refused before any request is made, not at the first process.
        if let Some(reason) = &reason {
            crate::validate::validate_reason("reason", reason)?;
        }
        let mut report = CancelAllReport::default();
        let mut filter = ProcessFilter {
            limit: Some(crate::model::MAX_PAGE_SIZE),
            ..ProcessFilter::running()
        };
        loop {
            let page = self.list_granted_to(scope, &filter).await?;
            for granted in &page.items {
                if granted.process.cancel_request.is_some() {
                    continue;
                }
                match self
                    .inner
                    .registry
                    .request_cancel(&granted.process.id, reason.clone())
                    .await
                {
                    Ok(answer) => {
                        // Nothing appended: reached since the page was read
                        // by a request this loop made for an ancestor, which
                        // counted it among that one's descendants.
                        if answer.appended > 0 {
                            report.requested += 1;
                            report.cancelled_now += u64::from(answer.cancelled_now);
                        }
                        // The write requested each of these (they had none),
                        // so none is counted again when the listing reaches it.
                        for d in &answer.descendants {
                            report.requested += 1;
                            report.cancelled_now += u64::from(d.status == crate::model::ProcessStatus::Cancelled);
                        }
                    }
                    // Ended (or pruned) since the page was read, by a
                    // request made for an ancestor earlier in this loop or
                    // otherwise.
                    Err(
                        CairnError::ProcessTerminal(_)
                        | CairnError::UnknownProcess(_)
                        | CairnError::NoLongerRetained(_),
                    ) => {}
                    Err(e) => return Err(e),
                }
            }
            // A process started meanwhile with an id before the cursor is
            // the child of one this loop reached or will reach: born
            // cancelled, or reached with its ancestor's request.
            match page.next_after_id {
                Some(next) => filter.after_id = Some(next),
                None => break,
            }
        }
        Ok(report)
    }

    /// Send signal `name` with an idempotency id; a repeated id returns the same event.
    pub async fn signal(&self, id: &str, name: &str, signal_id: &str, payload: Value) -> Result<ProcessEvent> {
        let event_type = events::signal_event_type(name)?;
        // The replay key is `signal:{name}:{signal_id}`, an id itself: the
        // signal id gets what the name leaves of it (said so at any length
        // past it, and before the id's own limit, which is the looser).
        let key = events::signal_replay_key(name, signal_id);
        if key.len() > crate::validate::MAX_ID_BYTES {
            let room = crate::validate::MAX_ID_BYTES - (key.len() - signal_id.len());
            return Err(CairnError::InvalidId(format!(
                "signal id is {} bytes, over the {room} bytes a signal named `{name}` leaves of {}",
                signal_id.len(),
                crate::validate::MAX_ID_BYTES
            )));
        }
        validate_id("signal id", signal_id)?;
        let req = AppendRequest::new(event_type, payload).with_replay_key(key);
        Ok(self.inner.registry.append_event(id, req).await?.event)
    }

    /// Running processes and pending wakes of a session scope: every running
    /// process granted to it (paged to the end), and the oldest pending
    /// wakes of its session, at most [`crate::model::MAX_PAGE_SIZE`] and
    /// [`LIST_PAGE_BYTES`] (a frame's scope: the oldest aimed at that frame,
    /// however many other frames' wait before them); acknowledged ones make
    /// room for later ones.
    pub async fn session_snapshot(&self, scope: &SessionScope) -> Result<SessionSnapshot> {
        let mut running = Vec::new();
        let mut filter = ProcessFilter {
            limit: Some(crate::model::MAX_PAGE_SIZE),
            ..ProcessFilter::running()
        };
        loop {
            let page = self.inner.registry.list_granted_to(scope, &filter).await?;
            let full = page.len() >= crate::model::MAX_PAGE_SIZE;
            let Some(last) = page.last() else { break };
            filter.after_id = Some(last.process.id.clone());
            running.extend(page);
            if !full {
                break;
            }
        }
        let page = Some(crate::model::MAX_PAGE_SIZE);
        let wakes = match &scope.agent_frame_id {
            None => self.inner.registry.pending_wakes(&scope.session_id, page).await?,
            Some(frame) => {
                self.inner
                    .registry
                    .pending_frame_wakes(&scope.session_id, frame, page)
                    .await?
            }
        };
        Ok(SessionSnapshot {
            scope: scope.clone(),
            running,
            wakes,
        })
    }

    /// Grant process `id` to `scope` ([`ProcessRegistry::grant`]).
    pub async fn grant(&self, scope: &SessionScope, id: &str, descriptor: GrantDescriptor) -> Result<Grant> {
        self.inner.registry.grant(scope, id, descriptor).await
    }

    /// Move the grants on `ids` from `from` to `to` ([`ProcessRegistry::transfer`]).
    pub async fn transfer(&self, from: &SessionScope, to: &SessionScope, ids: &[String]) -> Result<TransferReport> {
        self.inner.registry.transfer(from, to, ids).await
    }

    /// Remove `scope`'s grant on `id`; whether there was one ([`ProcessRegistry::revoke`]).
    pub async fn revoke(&self, scope: &SessionScope, id: &str) -> Result<bool> {
        self.inner.registry.revoke(scope, id).await
    }

    /// Remove a session's grants and pending wakes ([`ProcessRegistry::delete_session`]).
    pub async fn delete_session(&self, session_id: &str) -> Result<SessionDeleteReport> {
        self.inner.registry.delete_session(session_id).await
    }

    /// Remove a session's grants, with `keep_frames` only those to the
    /// session as a whole, and its pending wakes
    /// ([`ProcessRegistry::delete_session_with`]).
    pub async fn delete_session_with(&self, session_id: &str, keep_frames: bool) -> Result<SessionDeleteReport> {
        self.inner.registry.delete_session_with(session_id, keep_frames).await
    }

    /// Delete terminal processes older than `cutoff_ms` that pass `filter` (a
    /// [`PruneFilter`], or just a [`crate::StatusFilter`]), leaving tombstones
    /// ([`ProcessRegistry::prune`]).
    pub async fn prune(
        &self,
        cutoff_ms: u64,
        filter: impl Into<PruneFilter>,
        watermark: Watermark,
    ) -> Result<PruneReport> {
        self.inner.registry.prune(cutoff_ms, filter.into(), watermark).await
    }

    /// Record an abandon request; the worker reconciles it once the lease lapses.
    pub async fn request_abandon(&self, id: &str, requested_by: &str, reason: &str) -> Result<ProcessRecord> {
        let r = self.inner.registry.request_abandon(id, requested_by, reason).await?;
        if let Some(d) = &self.inner.driver {
            d.nudge();
        }
        Ok(r)
    }

    /// End an externally owned process with `outcome` ([`ProcessRegistry::complete_external`]).
    pub async fn complete_external(&self, id: &str, outcome: Outcome, authority: &str) -> Result<ProcessRecord> {
        Ok(self
            .inner
            .registry
            .complete_external(id, outcome, authority)
            .await?
            .process)
    }

    /// Append a declared event (for external owners).
    ///
    /// A type the process's own tool or runner declares (`shell.output` of a
    /// `shell` call) is written by its run: without the run's lease it is
    /// refused as `reserved_event_type` (its log is the run's account).
    pub async fn append_event(&self, id: &str, req: AppendRequest) -> Result<AppendResult> {
        let tools = &self.inner.starter.tools;
        if req.lease.is_none() && tools.declares(&req.event_type) {
            let record = self.inner.registry.get(id).await?;
            if tools.run_writes(&record.input, &req.event_type) {
                return Err(CairnError::ReservedEventType(format!(
                    "`{}` is written by the process's own run, under its lease",
                    req.event_type
                )));
            }
        }
        self.inner.registry.append_event(id, req).await
    }

    /// A session's pending wakes ([`ProcessRegistry::pending_wakes`]).
    pub async fn wakes(&self, session_id: &str, limit: Option<usize>) -> Result<Vec<WakeDelivery>> {
        self.inner.registry.pending_wakes(session_id, limit).await
    }

    /// Acknowledge a wake; whether it was pending ([`ProcessRegistry::ack_wake`]).
    pub async fn ack_wake(&self, session_id: &str, wake_id: &str) -> Result<bool> {
        self.inner.registry.ack_wake(session_id, wake_id).await
    }

    /// Records changed after `cursor` ([`ProcessRegistry::changed_since`]),
    /// read in chunks so that a page stops at the record that brings it to
    /// [`LIST_PAGE_BYTES`] as JSON: a record may hold mebibytes (its input
    /// and outcome), and a thousand of them would be gigabytes. The page's
    /// `next_cursor` is its last change's, so a cut page reads on from there.
    pub async fn changed_since(&self, cursor: u64, limit: Option<usize>) -> Result<ChangePage> {
        Ok(self.changed_since_more(cursor, limit).await?.0)
    }

    /// The head of the change feed ([`ProcessRegistry::change_head`]): where
    /// a reader that wants only the changes from now on starts.
    pub async fn change_head(&self) -> Result<u64> {
        self.inner.registry.change_head().await
    }

    /// [`Processes::changed_since`], and whether more may follow the page:
    /// it is full, or was cut at its bytes. A page shorter than `limit`
    /// may still have been cut, so a reader that follows the feed to its
    /// end reads on while this says so.
    pub async fn changed_since_more(&self, cursor: u64, limit: Option<usize>) -> Result<(ChangePage, bool)> {
        let limit = crate::model::page_limit(limit)?;
        let registry = &self.inner.registry;
        let (changes, more, next_cursor) = read_in_chunks(
            limit,
            cursor,
            |c: &crate::model::Change| c.cursor,
            |after, want| async move { Ok(registry.changed_since(after, Some(want)).await?.changes) },
        )
        .await?;
        // Each chunk is its own read: a record that changed between two of
        // them comes again, later, at its new cursor. The page lists each
        // record once, at its latest change, as one read would.
        let mut seen = std::collections::HashSet::new();
        let mut changes: Vec<crate::model::Change> = changes
            .into_iter()
            .rev()
            .filter(|c| seen.insert(c.process.id.clone()))
            .collect();
        changes.reverse();
        Ok((ChangePage { changes, next_cursor }, more))
    }

    /// Ask the worker to look for work now.
    pub fn nudge(&self) {
        if let Some(d) = &self.inner.driver {
            d.nudge();
        }
    }

    /// Resolves once this runtime's worker found a newer incarnation of its
    /// node id registered ([`Worker::superseded`]): another runtime runs under
    /// the id, and this one has stopped claiming. Never without a worker.
    pub async fn superseded(&self) {
        match &self.inner.driver {
            Some(d) => d.worker().superseded().await,
            None => std::future::pending().await,
        }
    }

    /// Stop taking new work, leaving the runs in flight alone: no claims, no
    /// start claiming its own process, no schedule fires, from now on. For a
    /// server's shutdown grace, before [`shutdown`](Self::shutdown) drains:
    /// work claimed during the grace would only be stopped by the drain (an
    /// owner-bound process abandoned, never having run) instead of being
    /// left queued for the next start or a peer.
    pub fn stop_claiming(&self) {
        if let Some(d) = &self.inner.driver {
            d.worker().stop_claiming();
        }
    }

    /// Graceful shutdown: stop claiming, drain per disposition, return when
    /// done. A runtime that runs a worker stops for good: a later
    /// [`start`](Self::start) on any handle to it is refused
    /// (`unavailable`). A second call does nothing more.
    pub async fn shutdown(&self) {
        if let Some(d) = &self.inner.driver {
            d.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schedule's fire that started a script before a crash is its own
    /// process when fired again: the script's journal types, which its
    /// registration declares, are no sign of another start.
    #[test]
    fn a_script_fires_own_process_is_known_as_such() {
        let starter = Starter {
            registry: Arc::new(crate::MemoryRegistry::new()),
            tools: ToolRegistry::new(),
            runs_worker: true,
        };
        let input = ProcessInput::Script {
            module_ref: format!("module:sha256:{}", "a".repeat(64)),
            process_name: "main".into(),
            args: serde_json::json!({}),
        };
        let mut req = StartRequest::new("tick@1000", input, Disposition::Rerunnable);
        req.event_types.push(EventType::plain("app.progress"));
        let registration = Registration {
            id: req.id.clone(),
            input: req.input.clone(),
            disposition: req.disposition,
            event_types: req.event_types.clone(),
            provenance: Provenance {
                originator: req.originator.clone(),
                caused_by: req.caused_by.clone(),
            },
            wake_target: None,
            env_ref: None,
            external_ref: None,
        };
        let record = crate::fold::initial_record(&registration, 1_000).expect("a record");
        assert!(crate::scheduler::made_by(&record, &req, starter.declared_types(&req)));
        // Another start's type is still told apart.
        let mut other = registration.clone();
        other.event_types.push(EventType::plain("app.other"));
        let record = crate::fold::initial_record(&other, 1_000).expect("a record");
        assert!(!crate::scheduler::made_by(&record, &req, starter.declared_types(&req)));
    }

    /// An engine whose compiles take a while, counting how many run at once
    /// and how many ran.
    struct SlowCompiles {
        now: std::sync::atomic::AtomicUsize,
        most: std::sync::atomic::AtomicUsize,
        ran: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl ScriptEngine for SlowCompiles {
        fn exports(&self, _source: &str) -> Result<Vec<String>> {
            use std::sync::atomic::Ordering::SeqCst;
            let at_once = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(at_once, SeqCst);
            self.ran.fetch_add(1, SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            self.now.fetch_sub(1, SeqCst);
            Ok(vec!["main".into()])
        }

        async fn run(&self, _ctx: crate::ToolContext, _module: Module, _name: String, _args: Value) -> Outcome {
            Outcome::failure("script", "unused", "not run here")
        }
    }

    /// Module compiles (which may run a module's top level for a whole
    /// activation's CPU limit) run one at a time, however many requests
    /// store modules at once, and a source stored already is not compiled
    /// again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn module_compiles_run_one_at_a_time_and_stored_sources_are_not_compiled_again() {
        let engine = Arc::new(SlowCompiles {
            now: 0.into(),
            most: 0.into(),
            ran: 0.into(),
        });
        let p = Processes::builder(Arc::new(crate::memory::MemoryRegistry::new()))
            .script_engine(engine.clone())
            .without_worker()
            .start();
        let puts = (0..6).map(|i| {
            let p = p.clone();
            async move {
                p.put_module(format!("export async function main() {{ return {i}; }}"), None)
                    .await
            }
        });
        for put in futures::future::join_all(puts).await {
            assert!(put.expect("stored").created);
        }
        use std::sync::atomic::Ordering::SeqCst;
        assert_eq!(engine.most.load(SeqCst), 1, "compiles ran one at a time");
        assert_eq!(engine.ran.load(SeqCst), 6);
        let again = p
            .put_module("export async function main() { return 0; }".into(), None)
            .await
            .expect("stored already");
        assert!(!again.created);
        assert_eq!(engine.ran.load(SeqCst), 6, "a stored source is not compiled again");
        // Its name is checked all the same.
        let err = p
            .put_module(
                "export async function main() { return 0; }".into(),
                Some("bad\u{7}".into()),
            )
            .await
            .expect_err("a bad name");
        assert_eq!(err.code(), "invalid_request", "{err}");
        // A request that goes while its compile runs keeps the compile's turn
        // until the compile ends: the next compile does not run beside it.
        let gone = {
            let p = p.clone();
            tokio::spawn(async move { p.put_module("export async function gone() {}".into(), None).await })
        };
        while engine.now.load(SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        p.put_module("export async function next() {}".into(), None)
            .await
            .expect("stored");
        assert_eq!(
            engine.most.load(SeqCst),
            1,
            "a compile whose request went kept its turn"
        );
    }

    /// Pages of small events hold `limit` each, every event once and in
    /// order, and the last says the log ends there.
    #[tokio::test]
    async fn pages_of_small_events_hold_their_limit() {
        let p = Processes::builder(Arc::new(crate::memory::MemoryRegistry::new()))
            .without_worker()
            .start();
        p.start(StartRequest::external("log", serde_json::json!({})).with_event_type(EventType::plain("note")))
            .await
            .expect("start");
        for i in 0..250 {
            p.append_event("log", AppendRequest::new("note", serde_json::json!({ "i": i })))
                .await
                .expect("append");
        }
        let last = p.get("log").await.expect("get").last_sequence;
        for limit in [1usize, 7, 100, 1000] {
            let (mut after, mut seen) = (0, Vec::new());
            loop {
                let page = p.events("log", after, Some(limit)).await.expect("page");
                assert!(page.events.len() <= limit);
                seen.extend(page.events.iter().map(|e| e.sequence));
                match page.next_after {
                    Some(next) => {
                        assert_eq!(page.events.len(), limit, "only a full page says more");
                        after = next;
                    }
                    None => break,
                }
            }
            assert_eq!(seen, (1..=last).collect::<Vec<u64>>(), "limit {limit}");
        }
    }

    /// A session snapshot holds every running process granted to the scope,
    /// past one page of the listing.
    #[tokio::test]
    async fn a_session_snapshot_holds_every_running_process() {
        let p = Processes::builder(Arc::new(crate::memory::MemoryRegistry::new()))
            .without_worker()
            .start();
        let scope = SessionScope::session("s1");
        let n = crate::model::MAX_PAGE_SIZE + 1;
        for i in 0..n {
            let req = StartRequest::external(format!("e{i:05}"), serde_json::json!({}))
                .with_grant(scope.clone(), Default::default());
            p.start(req).await.expect("start");
        }
        let snapshot = p.session_snapshot(&scope).await.expect("snapshot");
        assert_eq!(snapshot.running.len(), n);
        let frame = p
            .session_snapshot(&SessionScope::frame("s1", "f1"))
            .await
            .expect("frame snapshot");
        assert!(frame.running.is_empty() && frame.wakes.is_empty());
    }

    /// `done` ends at once; `hold` runs until it is stopped; `picky`
    /// panics checking its args.
    struct TestTool(&'static str);

    #[async_trait::async_trait]
    impl crate::Tool for TestTool {
        fn name(&self) -> &str {
            self.0
        }

        fn validate_args(&self, _args: &Value) -> Result<()> {
            if self.0 == "picky" {
                panic!("no args suit me");
            }
            Ok(())
        }

        async fn run(&self, ctx: crate::ToolContext, _args: Value) -> Outcome {
            if self.0 == "hold" {
                ctx.stopped().await;
                return ctx.stopped_outcome();
            }
            Outcome::success(serde_json::json!("done"))
        }
    }

    fn test_tools() -> ToolRegistry {
        ToolRegistry::new()
            .with(Arc::new(TestTool("done")))
            .with(Arc::new(TestTool("hold")))
            .with(Arc::new(TestTool("picky")))
    }

    fn run_now(id: &str, tool: &str) -> StartRequest {
        StartRequest::tool(id, tool, serde_json::json!({}), Disposition::Rerunnable)
    }

    /// The message of the panic `build` makes.
    fn panic_of(build: impl FnOnce() -> Processes) -> String {
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(build))
            .err()
            .expect("the build panics");
        crate::worker::panic_message(panic.as_ref())
    }

    /// A worker configuration that could never run anything panics as the
    /// runtime is built, naming the field; without a worker it is ignored.
    #[tokio::test]
    async fn a_worker_config_that_could_never_run_panics_at_build() {
        let cases = [
            (
                WorkerConfig {
                    batch_size: 0,
                    ..WorkerConfig::default()
                },
                "`WorkerConfig::batch_size` is 0",
            ),
            (
                WorkerConfig {
                    lease_ttl: Duration::ZERO,
                    ..WorkerConfig::default()
                },
                "`WorkerConfig::lease_ttl` is 0ns",
            ),
            (
                WorkerConfig {
                    lease_ttl: Duration::from_micros(999),
                    ..WorkerConfig::default()
                },
                "shorter than 1 ms",
            ),
            (
                WorkerConfig {
                    sweep_interval: Duration::ZERO,
                    ..WorkerConfig::default()
                },
                "`WorkerConfig::sweep_interval` is 0",
            ),
            (
                WorkerConfig {
                    node_id: Some("bad node!".into()),
                    ..WorkerConfig::default()
                },
                "`WorkerConfig::node_id` would be refused by the store (invalid id: node id `bad node!` must be",
            ),
            (
                WorkerConfig {
                    owner_id: String::new(),
                    ..WorkerConfig::default()
                },
                "`WorkerConfig::owner_id` would be refused by the store (invalid id: owner id must not be empty)",
            ),
        ];
        for (config, said) in cases {
            let registry = Arc::new(crate::memory::MemoryRegistry::new());
            let message = panic_of(|| {
                Processes::builder(registry.clone())
                    .worker_config(config.clone())
                    .start()
            });
            assert!(
                message.starts_with("cairn cannot start this runtime: ") && message.contains(said),
                "{message}"
            );
            Processes::builder(registry)
                .worker_config(config)
                .without_worker()
                .start();
        }
        // The smallest lease and batch are fine, as is a node id without an owner id.
        let p = Processes::builder(Arc::new(crate::memory::MemoryRegistry::new()))
            .worker_config(WorkerConfig {
                lease_ttl: Duration::from_millis(1),
                batch_size: 1,
                owner_id: String::new(),
                node_id: Some("box-1".into()),
                ..WorkerConfig::default()
            })
            .start();
        p.shutdown().await;
    }

    /// A sweep interval of `Duration::MAX` means no periodic sweep: the
    /// runtime runs its work, with or without a node id.
    #[tokio::test]
    async fn a_sweep_interval_of_duration_max_runs_work() {
        for node_id in [None, Some("box-1".to_string())] {
            let p = Processes::builder(Arc::new(crate::memory::MemoryRegistry::new()))
                .tools(test_tools())
                .worker_config(WorkerConfig {
                    sweep_interval: Duration::MAX,
                    node_id: node_id.clone(),
                    ..WorkerConfig::default()
                })
                .start();
            for id in ["a", "b"] {
                p.start(run_now(id, "done")).await.expect("start");
                let record = p.await_output(id, Duration::from_secs(10)).await.expect("await");
                assert_eq!(
                    record.status,
                    crate::model::ProcessStatus::Completed,
                    "{id} with node {node_id:?}"
                );
            }
            p.shutdown().await;
        }
    }

    /// A lease time-to-live too long to count in milliseconds is as long
    /// as a lease can be, not what is left of it cut to 64 bits.
    #[tokio::test]
    async fn a_lease_ttl_past_u64_millis_is_the_longest_lease() {
        let p = Processes::builder(Arc::new(crate::memory::MemoryRegistry::new()))
            .tools(test_tools())
            .worker_config(WorkerConfig {
                // 2^64 ms and 384 more: cut to 64 bits, a 384 ms lease.
                lease_ttl: Duration::from_millis(u64::MAX) + Duration::from_millis(385),
                ..WorkerConfig::default()
            })
            .start();
        p.start(run_now("held", "hold")).await.expect("start");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let lease = loop {
            if let Some(lease) = p.get("held").await.expect("get").lease {
                break lease;
            }
            assert!(tokio::time::Instant::now() < deadline, "`held` never claimed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let year_ms = 365 * 86_400_000;
        assert!(lease.expires_at_ms > p.inner.clock.now_ms() + year_ms, "{lease:?}");
        p.shutdown().await;
    }

    /// After `shutdown`, a start on any handle is refused (`unavailable`,
    /// saying why) and records nothing; one before it was recorded.
    #[tokio::test]
    async fn a_start_after_shutdown_is_refused_and_records_nothing() {
        let p = Processes::builder(Arc::new(crate::memory::MemoryRegistry::new()))
            .tools(test_tools())
            .start();
        let other = p.clone();
        p.start(run_now("before", "done")).await.expect("start");
        p.shutdown().await;
        let err = other.start(run_now("late", "done")).await.expect_err("refused");
        assert_eq!(err.code(), "unavailable", "{err}");
        assert_eq!(
            err.to_string(),
            "unavailable: this runtime has shut down, and nothing here would run process `late`: start it \
             through a runtime that is running"
        );
        let missing = p.get("late").await.expect_err("nothing recorded");
        assert_eq!(missing.code(), "unknown_process", "{missing}");
        // The same process started before the shutdown is refused too.
        let again = p.start(run_now("before", "done")).await.expect_err("refused");
        assert_eq!(again.code(), "unavailable", "{again}");
        p.get("before").await.expect("recorded before the shutdown");
        // A second shutdown is still nothing more.
        p.shutdown().await;
    }

    /// A tool whose `validate_args` panics is refused the same way whether
    /// or not the worker has a free slot for the start: `invalid_request`
    /// naming the tool and what it said, nothing recorded, nothing unwound
    /// into the caller.
    #[tokio::test]
    async fn a_panicking_check_is_refused_alike_with_and_without_a_free_slot() {
        let p = Processes::builder(Arc::new(crate::memory::MemoryRegistry::new()))
            .tools(test_tools())
            .worker_config(WorkerConfig {
                concurrency: 1,
                ..WorkerConfig::default()
            })
            .start();
        let worker = p.worker().expect("a worker").clone();
        let expected = "invalid request: the `picky` tool panicked checking its arguments: no args suit me";
        // With a free slot the start claims its own process on a task of its
        // own: wait until the driver's first drive lets it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while worker.slot_for_start().is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no slot for a start");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let err = p.start(run_now("free", "picky")).await.expect_err("refused");
        assert_eq!((err.code(), err.to_string().as_str()), ("invalid_request", expected));
        // With the one slot taken, the start is checked on the caller's task.
        p.start(run_now("holding", "hold")).await.expect("start");
        while p.get("holding").await.expect("get").started.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "`holding` never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(worker.slot_for_start().is_none(), "the slot is taken");
        let err = p.start(run_now("busy", "picky")).await.expect_err("refused");
        assert_eq!((err.code(), err.to_string().as_str()), ("invalid_request", expected));
        for id in ["free", "busy"] {
            let missing = p.get(id).await.expect_err("nothing recorded");
            assert_eq!(missing.code(), "unknown_process", "{missing}");
        }
        p.shutdown().await;
    }
}
