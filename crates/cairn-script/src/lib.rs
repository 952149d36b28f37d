//! cairn-script: durable JavaScript scripts (SPEC §14) on QuickJS (ADR 0016).
//!
//! [`QuickJs`] is a [`cairn_core::ScriptEngine`]: it compiles modules to
//! learn their exports and runs one activation of a `script` process at a
//! time. An activation is a fresh runtime and context on a thread of its own
//! (QuickJS is single-threaded and not `Send`): no module loader (an import
//! fails, saying scripts have none), no timers, no network or file system, a
//! heap limit and a CPU-time interrupt. A module is stored only if its top
//! level loads with the globals an activation gives it. The function
//! runs from the top; each context call is numbered, and a call the journal
//! (the `script.call` / `script.result` events of the log) already holds is
//! answered from it, so a finished effect never happens twice. New calls are
//! journaled by the driver (this module), which performs their effects through
//! the run's [`ToolContext`] and suspends the process (SPEC §13) when what the
//! script awaits is not there yet.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # fn demo(registry: Arc<dyn cairn_core::ProcessRegistry>) {
//! let runtime = cairn_core::Processes::builder(registry)
//!     .script_engine(Arc::new(cairn_script::QuickJs::new(cairn_script::Limits::default())))
//!     .start();
//! # }
//! ```

mod engine;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU8;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::script::{SCRIPT_CALL, SCRIPT_LOG, SCRIPT_RESULT};
use cairn_core::{CairnError, FirstOf, Module, Outcome, Result, StopReason, ToolContext};
use serde_json::{json, Value};

use engine::{Entry, Reply, Setup, Step, Watch, ABORT};

/// The most engine threads that may be held at once before the engine
/// refuses further compiles (`unavailable`: nothing is stored, so nothing
/// durable is lost; the module can be put again after a restart). A thread
/// is held when a script ran on past its stop: parked for good (inside
/// promise executors), or never answering after its stop (a built-in the
/// engine cannot interrupt; such a thread may go on using a processor, at
/// the lowest priority). Each keeps its heap, up to the heap limit, until
/// it ends or the server stops. Activations are not refused at the bound:
/// one refused would fail a durable process, maybe another session's,
/// for good; they run, and a server whose memory runs out is killed and
/// recovers its processes as their dispositions say.
pub const MAX_HELD_THREADS: usize = 8;

/// How many engine threads are held now (see [`MAX_HELD_THREADS`]).
pub fn held_threads() -> usize {
    engine::held_threads()
}

/// The sources whose top level held an engine thread, by module ref, with
/// the refusal they were answered: a put of one again is answered so at
/// once, not run to hold another thread (eight such puts would refuse
/// every module put). At most [`HELD_SOURCES_KEPT`].
fn held_sources() -> std::sync::MutexGuard<'static, std::collections::HashMap<String, String>> {
    static SOURCES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, String>>> =
        std::sync::LazyLock::new(Default::default);
    SOURCES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The most sources [`held_sources`] keeps.
const HELD_SOURCES_KEPT: usize = 1024;

/// `refusal` of a compile, remembered for its source when the compile's
/// thread is held.
fn remember_held(watch: &Watch, module_ref: String, refusal: CairnError) -> CairnError {
    if watch.is_held() {
        let mut sources = held_sources();
        if sources.len() < HELD_SOURCES_KEPT {
            let said = match &refusal {
                CairnError::InvalidModule(m) => m.clone(),
                other => other.to_string(),
            };
            sources.insert(module_ref, said);
        }
    }
    refusal
}

/// Why the engine refuses to compile anything more, once
/// [`MAX_HELD_THREADS`] are held.
fn held_refusal() -> Option<String> {
    let held = engine::held_threads();
    (held >= MAX_HELD_THREADS).then(|| {
        format!(
            "{held} script engine threads are held (at most {MAX_HELD_THREADS} may be): each ran a script on past \
             its stop and keeps its memory until it ends or the server stops, so no more modules are \
             stored; restart the server to free them (its log names what each ran)"
        )
    })
}

/// The CPU time an engine thread may use, against a limit of `cpu`, before
/// it is taken to run on past its stop: the limit and as much again (at
/// least a second more), for the engine to unwind.
fn held_after(cpu: Duration) -> Duration {
    cpu.saturating_mul(2).max(cpu.saturating_add(Duration::from_secs(1)))
}

/// The wall-clock time a compile is waited for, against a CPU limit of
/// `cpu`, when its thread's CPU time cannot tell (a thread that gets no
/// processor for long): four times the limit and half a minute.
fn compile_wall_bound(cpu: Duration) -> Duration {
    cpu.saturating_mul(4).saturating_add(Duration::from_secs(30))
}

/// How often a waiter reads its engine thread's CPU time.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// The CPU time an activation's engine thread may use after its run was
/// dropped (cancelled, or its worker gave it up) before it is held.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Per-activation and per-process limits (SPEC §14; `cairn serve` flags).
#[derive(Clone, Debug)]
pub struct Limits {
    /// The heap of one activation, in bytes (`memory_limit` past it).
    pub heap_bytes: usize,
    /// The CPU time of one activation (`cpu_limit` past it).
    pub cpu: Duration,
    /// Journaled calls per process (`journal_limit` past it).
    pub max_calls: u64,
    /// The bytes of a process's journal (`journal_limit` past it): its
    /// `script.call`, `script.result` and `script.log` payloads as
    /// serialized. An activation holds the journal in memory to replay it,
    /// so this bounds what one activation reads and keeps (ADR 0036).
    pub max_journal_bytes: u64,
}

impl Limits {
    /// The smallest heap an activation may be given (1 MiB): below it
    /// QuickJS cannot build its runtime and intrinsics (and does not always
    /// check a refused allocation while it tries).
    pub const MIN_HEAP_BYTES: usize = 1 << 20;

    /// The default bound of a process's journal (64 MiB, ADR 0036).
    pub const DEFAULT_JOURNAL_BYTES: u64 = 64 << 20;

    /// Whether these limits can run a script: a heap of at least
    /// [`MIN_HEAP_BYTES`](Self::MIN_HEAP_BYTES), some CPU time, at least
    /// one journaled call and a journal of at least a byte. The error says
    /// which limit is wrong and why.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.heap_bytes < Self::MIN_HEAP_BYTES {
            return Err(format!(
                "the script heap limit is {} bytes; it must be at least {} (1 MiB)",
                self.heap_bytes,
                Self::MIN_HEAP_BYTES
            ));
        }
        if self.cpu.is_zero() {
            return Err("the script CPU limit is 0; it must be more".into());
        }
        if self.max_calls == 0 {
            return Err("the script call limit is 0; it must be at least 1".into());
        }
        if self.max_journal_bytes == 0 {
            return Err("the script journal limit is 0 bytes; it must be at least 1".into());
        }
        if self.max_calls > cairn_core::script::MAX_SCRIPT_CALLS {
            return Err(format!(
                "the script call limit is {}; it must be at most {} (a call's child is named `{{id}}/{{n}}`)",
                self.max_calls,
                cairn_core::script::MAX_SCRIPT_CALLS
            ));
        }
        Ok(())
    }
}

impl Default for Limits {
    /// SPEC's defaults: 64 MiB, 10 s, 10,000 calls; a 64 MiB journal.
    fn default() -> Self {
        Self {
            heap_bytes: 64 << 20,
            cpu: Duration::from_secs(10),
            max_calls: 10_000,
            max_journal_bytes: Self::DEFAULT_JOURNAL_BYTES,
        }
    }
}

/// The QuickJS script engine.
#[derive(Clone, Debug, Default)]
pub struct QuickJs {
    limits: Limits,
}

impl QuickJs {
    /// An engine under `limits`, unchecked: limits that cannot run a script
    /// ([`Limits::check`]) make every compile and activation fail, saying
    /// why. [`try_new`](Self::try_new) refuses them instead.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// An engine under `limits`, or `invalid_request` saying which limit
    /// cannot run a script ([`Limits::check`]): what a server checks its
    /// configuration with before it starts.
    pub fn try_new(limits: Limits) -> Result<Self> {
        limits.check().map_err(CairnError::InvalidRequest)?;
        Ok(Self { limits })
    }

    /// The limits it runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// The answer of a compile whose thread `watch` watches, under a CPU limit
/// of `cpu`; `invalid_module` once the thread ran past [`held_after`] of CPU
/// time (or [`compile_wall_bound`] of wall-clock time) without answering:
/// it is held, and the compile's turn ends.
fn await_compile(
    rx: &std::sync::mpsc::Receiver<engine::ExportsAnswer>,
    watch: &Watch,
    cpu: Duration,
) -> Result<engine::ExportsAnswer> {
    let began = std::time::Instant::now();
    loop {
        match rx.recv_timeout(WATCH_EVERY) {
            Ok(answer) => return Ok(answer),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(CairnError::Unavailable("the script engine panicked".into()))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let spun = watch.cpu().is_some_and(|used| used > held_after(cpu));
                if (spun || began.elapsed() > compile_wall_bound(cpu))
                    && watch.hold("the module's top level did not stop at its CPU limit")
                {
                    return Err(CairnError::InvalidModule(format!(
                        "loading the module failed: its top level did not stop at the CPU limit of {cpu:?} \
                         (`cairn serve --script-cpu`): it ran on in a built-in the engine cannot interrupt, \
                         and its engine thread is held until it ends, if ever"
                    )));
                }
            }
        }
    }
}

/// `line L, column C` from the first `script.js:L:C` of a stack.
fn position(stack: &str) -> Option<(u64, u64)> {
    let at = stack.find(engine::MODULE_NAME)? + engine::MODULE_NAME.len();
    let mut parts = stack[at..].strip_prefix(':')?.splitn(2, ':');
    let line = parts.next()?.parse().ok()?;
    let column: String = parts.next()?.chars().take_while(char::is_ascii_digit).collect();
    Some((line, column.parse().ok()?))
}

/// "line L, column C" for the engine's 1-based line and byte column, the
/// column counted in characters, as editors count it.
fn located(source: &str, line: u64, byte_column: u64) -> String {
    let text = usize::try_from(line.saturating_sub(1))
        .ok()
        .and_then(|skip| source.split('\n').nth(skip))
        .unwrap_or("");
    let bytes = usize::try_from(byte_column.saturating_sub(1)).unwrap_or(usize::MAX);
    let column = match text.get(..bytes.min(text.len())) {
        // A byte order mark leading the source is no column an editor shows.
        Some(before) if bytes <= text.len() => {
            before
                .strip_prefix('\u{feff}')
                .filter(|_| line == 1)
                .unwrap_or(before)
                .chars()
                .count() as u64
                + 1
        }
        _ => byte_column,
    };
    format!("line {line}, column {column}")
}

#[async_trait]
impl cairn_core::ScriptEngine for QuickJs {
    fn exports(&self, source: &str) -> Result<Vec<String>> {
        // Its size, and a NUL where it is (the engine reads up to one).
        cairn_core::script::check_source(source)?;
        // The engine's configuration, not the module, is wrong.
        self.limits.check().map_err(CairnError::Unavailable)?;
        let module_ref = cairn_core::script::module_ref(source);
        if let Some(refused) = held_sources().get(&module_ref) {
            return Err(CairnError::InvalidModule(format!(
                "{refused} (this source held an engine thread before: it is refused without running again)"
            )));
        }
        if let Some(refusal) = held_refusal() {
            return Err(CairnError::Unavailable(refusal));
        }
        let limits = self.limits.clone();
        let watch = Arc::new(Watch::new(format!("the top level of module {module_ref}")));
        let text = source.to_string();
        // The engine's thread has a stack of known size (its limit is set below it).
        // Its answer comes by channel, not by joining it: a top level that
        // escapes its stop is answered and its thread parked for good; one
        // that never answers (a built-in the engine cannot interrupt) is
        // given up past its CPU time and held, so the compile's turn ends.
        let (tx, rx) = std::sync::mpsc::channel();
        let engine_watch = watch.clone();
        std::thread::Builder::new()
            .name("cairn-script-compile".into())
            .stack_size(8 << 20)
            .spawn(move || engine::exports(&limits, &text, tx, engine_watch))
            .map_err(|e| CairnError::Unavailable(format!("cannot start the script engine: {e}")))?;
        let answer = match await_compile(&rx, &watch, self.limits.cpu) {
            Ok(answer) => answer,
            Err(e) => return Err(remember_held(&watch, module_ref, e)),
        };
        answer
            .map_err(|(syntax, err)| {
                let message = err.get("message").and_then(Value::as_str).unwrap_or("invalid module");
                let at = match (
                    err.get("line").and_then(Value::as_u64),
                    err.get("column").and_then(Value::as_u64),
                ) {
                    (Some(line), Some(column)) => Some((line, column)),
                    _ => err.get("stack").and_then(Value::as_str).and_then(position),
                }
                .map(|(line, column)| located(source, line, column));
                // The parser recurses into each nested bracket, block and
                // expression: past its stack, the engine knows no position.
                let message = if at.is_none() && message.contains("Maximum call stack size exceeded") {
                    format!("{message} (the module nests brackets, blocks or expressions too deeply to parse)")
                } else {
                    message.to_string()
                };
                match (syntax, at) {
                    (true, Some(at)) => CairnError::InvalidModule(format!("{message} at {at}")),
                    (_, Some(at)) => CairnError::InvalidModule(format!("loading the module failed: {message} at {at}")),
                    (true, None) => CairnError::InvalidModule(message.to_string()),
                    (false, None) => CairnError::InvalidModule(format!("loading the module failed: {message}")),
                }
            })
            .map_err(|e| remember_held(&watch, module_ref, e))
    }

    async fn run(&self, ctx: ToolContext, module: Module, process_name: String, args: Value) -> Outcome {
        let replayed = match replay(&ctx, &self.limits).await {
            Ok(r) => r,
            Err(Replay::Store(e)) => return Outcome::failure("runtime", e.code(), e.to_string()),
            Err(Replay::OverLimit(message)) => return limit_outcome(&ctx, None, message),
        };
        let stop = Arc::new(AtomicU8::new(engine::RUN));
        let watch = Arc::new(Watch::new(format!(
            "process {} (module {}, function `{process_name}`)",
            ctx.process_id(),
            module.info.module_ref
        )));
        // Whatever still runs in the engine stops at its next interrupt check
        // once this activation ends, also when the worker drops it unfinished
        // (a stopped run, a cancelled one's cleanup included, gets
        // `stop_grace`), so a cleanup that never ends holds its thread no longer.
        let _abort = AbortOnDrop(stop.clone(), watch.clone());
        let (step_tx, step_rx) = tokio::sync::mpsc::unbounded_channel();
        let (reply_tx, reply_rx) = std::sync::mpsc::channel();
        let setup = Setup {
            limits: self.limits.clone(),
            source: module.source,
            process_name,
            args,
            journal: replayed.journal,
            ctx: ctx.clone(),
            stop: stop.clone(),
            watch: watch.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("cairn-script".into())
            .stack_size(8 << 20)
            .spawn(move || engine::activate(setup, step_tx, reply_rx));
        if let Err(e) = spawned {
            return Outcome::failure(
                "runtime",
                "script_engine",
                format!("cannot start the script engine: {e}"),
            );
        }
        let Replayed {
            called_at,
            answered,
            taken,
            told,
            bytes,
            ..
        } = replayed;
        Driver {
            ctx: &ctx,
            steps: step_rx,
            replies: reply_tx,
            // A script told of its cancellation before stays told: however
            // its replay ends, it ends cancelled, as the told run would have.
            cancelled: told,
            called_at,
            answered,
            taken,
            journal_bytes: bytes,
            max_journal_bytes: self.limits.max_journal_bytes,
            over_limit: None,
            watch,
            cpu: self.limits.cpu,
        }
        .drive()
        .await
    }
}

/// What an activation learns from its log before it runs: the journal the
/// engine replays, and what the driver keeps of it.
struct Replayed {
    journal: engine::Journal,
    /// When each call was journaled (epoch ms, by number).
    called_at: HashMap<u64, u64>,
    /// The calls the journal answers.
    answered: HashSet<u64>,
    /// How many signals of each name the journaled calls took.
    taken: HashMap<String, u64>,
    /// The message of a cancellation an earlier activation told the script.
    told: Option<String>,
    /// The journal's bytes, as [`Limits::max_journal_bytes`] counts them.
    bytes: u64,
}

/// Why the log could not be replayed.
enum Replay {
    /// The store failed (after its retries while the lease held).
    Store(CairnError),
    /// The journal is past the byte limit (lowered since it was written):
    /// what is read stops there, and the process ends `journal_limit`.
    OverLimit(String),
}

/// Read the log page by page into the journal, keeping only the journal's
/// entries (moved from the pages, not copied) and stopping as soon as they
/// pass [`Limits::max_journal_bytes`]. A page holds at most as many events
/// as the largest ones fit in that bound or in the default bound, whichever
/// is larger: no page read for a replay is larger than both, and a bound
/// lowered below the default does not cut pages to a single event (a
/// round trip per event at every activation, however small the events).
async fn replay(ctx: &ToolContext, limits: &Limits) -> std::result::Result<Replayed, Replay> {
    let mut r = Replayed {
        journal: engine::Journal::default(),
        called_at: HashMap::new(),
        answered: HashSet::new(),
        taken: HashMap::new(),
        told: None,
        bytes: 0,
    };
    let mut signal_calls: HashMap<u64, String> = HashMap::new();
    let largest = (cairn_core::validate::MAX_PAYLOAD_BYTES + cairn_core::validate::TERMINAL_ENVELOPE_BYTES) as u64;
    let page_bytes = limits.max_journal_bytes.max(Limits::DEFAULT_JOURNAL_BYTES);
    let per_page = usize::try_from(page_bytes / largest).unwrap_or(usize::MAX);
    let mut after = 0;
    loop {
        let page = ctx.log_page(after, per_page).await.map_err(Replay::Store)?;
        for e in page.events {
            if !matches!(e.event_type.as_str(), SCRIPT_CALL | SCRIPT_RESULT | SCRIPT_LOG) {
                continue;
            }
            r.bytes = r.bytes.saturating_add(json_bytes(&e.payload));
            if r.bytes > limits.max_journal_bytes {
                return Err(Replay::OverLimit(format!(
                    "the script's journal holds more than {} bytes, its limit, by event {} of its log \
                     (every call, answer and log line counts as journaled; {JOURNAL_FLAG} sets the limit)",
                    limits.max_journal_bytes, e.sequence
                )));
            }
            let n = e.payload.get("n").and_then(Value::as_u64);
            match (e.event_type.as_str(), n) {
                (SCRIPT_CALL, Some(n)) => {
                    r.called_at.insert(n, e.occurred_at_ms);
                    if kind(&e.payload) == "wait_signal" {
                        signal_calls.insert(n, signal_name(&e.payload).to_string());
                    }
                }
                (SCRIPT_RESULT, Some(n)) => {
                    r.answered.insert(n);
                    if let Some(message) = e.payload.get("cancelled").and_then(Value::as_str) {
                        r.told.get_or_insert_with(|| message.to_string());
                    }
                    // A result that took a signal says which; one journaled
                    // before results said so took one if it has a value.
                    let took = match e.payload.get("signal") {
                        Some(ordinal) => ordinal.is_u64(),
                        None => e.payload.get("value").is_some_and(|v| !v.is_null()),
                    };
                    if let Some(name) = signal_calls.get(&n).filter(|_| took) {
                        *r.taken.entry(name.clone()).or_insert(0) += 1;
                    }
                }
                _ => {}
            }
            r.journal.push(e);
        }
        match page.next_after {
            Some(n) => after = n,
            None => return Ok(r),
        }
    }
}

/// The flag that sets the journal's byte limit, as messages name it.
const JOURNAL_FLAG: &str = "`cairn serve --script-max-journal-bytes`";

/// How a process past its journal's byte limit ends: `failed` with
/// `journal_limit`, as past the call limit; `cancelled` once it was told of
/// its cancellation (or was cancelled before it could be told), as any
/// other end of a cancelled script is.
fn limit_outcome(ctx: &ToolContext, told: Option<&String>, message: String) -> Outcome {
    match (told, ctx.stop_reason()) {
        (Some(told), _) => Outcome::cancelled(told.clone()),
        (None, Some(StopReason::Cancelled { reason })) => {
            Outcome::cancelled(reason.unwrap_or_else(|| "cancelled".into()))
        }
        _ => Outcome::failure("script", "journal_limit", message),
    }
}

/// The bytes of `value` as serialized (what the store holds of a payload),
/// counted without building the text.
fn json_bytes(value: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a sink that takes every byte cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Stops an activation's engine thread when dropped; one that runs on past
/// [`ABORT_GRACE`] of CPU time after it (in a built-in the engine cannot
/// interrupt) is held ([`MAX_HELD_THREADS`]), by a thread that watches it
/// until it ends or is held.
struct AbortOnDrop(Arc<AtomicU8>, Arc<Watch>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.store(ABORT, std::sync::atomic::Ordering::SeqCst);
        let watch = self.1.clone();
        if watch.ended() || watch.is_held() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("cairn-script-watch".into())
            .spawn(move || {
                let from = watch.cpu().unwrap_or_default();
                while !watch.ended() && !watch.is_held() {
                    std::thread::sleep(WATCH_EVERY);
                    if watch.cpu().is_some_and(|used| used.saturating_sub(from) > ABORT_GRACE) {
                        watch.hold("it ran on after its run ended (in a built-in the engine cannot interrupt)");
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot watch a stopped script engine thread: {e}");
        }
    }
}

/// The async side of an activation: journals the engine's entries, performs
/// pending calls, and answers them.
struct Driver<'a> {
    ctx: &'a ToolContext,
    steps: tokio::sync::mpsc::UnboundedReceiver<Step>,
    replies: std::sync::mpsc::Sender<Reply>,
    /// The cancellation message, once the script was told.
    cancelled: Option<String>,
    /// When each call was journaled (epoch ms, by number): a timer or a
    /// timeout runs from its call, not from when the driver got to it.
    called_at: HashMap<u64, u64>,
    /// The calls answered in the journal: their count numbers the rounds of
    /// waiting, as every round answers at least one call.
    answered: HashSet<u64>,
    /// How many signals of each name the script's calls took, in order.
    taken: HashMap<String, u64>,
    /// The journal's bytes so far, and their limit.
    journal_bytes: u64,
    max_journal_bytes: u64,
    /// Why the last append was refused when the journal would pass its
    /// byte limit: the activation ends `journal_limit` ([`Driver::failed`]).
    over_limit: Option<String>,
    /// The engine thread, whose CPU time is read while a step is awaited,
    /// and the activation's CPU limit.
    watch: Arc<Watch>,
    cpu: Duration,
}

/// Why a call was not answered.
enum Held {
    /// The run suspended (or was stopped): the activation ends here.
    Stopped,
    /// The store could not be reached while a wait was decided: nothing
    /// about the awaited calls is known, so nothing is journaled for them
    /// and the activation ends (`runtime`, the fault's code): a rerunnable
    /// run is released and replays the same waits later.
    Store(CairnError),
}

/// Whether `e` says only that the store could not be reached (or its
/// answer was lost): no answer of the awaited call, and none to journal.
fn store_fault(e: &CairnError) -> bool {
    matches!(e, CairnError::Unavailable(_) | CairnError::OutcomeUnknown(_))
}

fn error_result(n: u64, e: &CairnError) -> Value {
    json!({"n": n, "error": {"class": "cairn", "code": e.code(), "message": engine::rejection_message(e)}})
}

/// Why `ctx.emit` may not append `event_type`, when it is a type cairn
/// writes itself: the core namespaces (`process.*` and the `script.*`
/// journal, [`cairn_core::events::is_core_event_type`]: no producer declares
/// them and the HTTP append refuses them), signals (`signal.*`, sent through
/// the signal route with a signal id) and a session turn's `turn.*`. Under
/// the run's lease the core would take them, so a script could forge its own
/// journal or end its process with an outcome it made up.
fn reserved_for_emit(event_type: &str) -> Option<CairnError> {
    let reserved = cairn_core::events::is_core_event_type(event_type)
        || event_type.starts_with(cairn_core::events::SIGNAL_PREFIX)
        || event_type.starts_with(cairn_core::events::TURN_PREFIX);
    reserved.then(|| {
        CairnError::ReservedEventType(format!(
            "ctx.emit(\"{event_type}\"): `process.*`, `script.*`, `signal.*` and `turn.*` are written \
             only by cairn; emit a type this process declared (send a signal with its own route)"
        ))
    })
}

fn is_wait(kind: &str) -> bool {
    matches!(kind, "sleep" | "wait_signal" | "tool" | "turn" | "wait")
}

impl Driver<'_> {
    async fn drive(mut self) -> Outcome {
        loop {
            let step = tokio::select! {
                s = self.steps.recv() => match s {
                    Some(s) => s,
                    None => return Outcome::failure("runtime", "script_engine", "the script engine stopped"),
                },
                _ = self.ctx.stopped(), if self.cancelled.is_none() && !self.stop_is_cancel() => {
                    // A cancellation is told to the script at its next step
                    // (it may clean up); any other stop ends the activation.
                    if self.stop_is_cancel() {
                        continue;
                    }
                    return self.stopped_outcome();
                }
                // A built-in the engine cannot interrupt runs on past the CPU
                // limit: the thread is held, and the activation ends.
                _ = tokio::time::sleep(WATCH_EVERY) => {
                    let spun = self.watch.cpu().is_some_and(|used| used > held_after(self.cpu));
                    if spun && self.watch.hold("it ran on past its CPU limit") {
                        return self.held_outcome();
                    }
                    continue;
                }
            };
            // A call too large or too deeply nested to journal is not made:
            // it rejects with `payload_too_large` or `invalid_request` and the
            // script goes on (a replay makes the same call and is refused the
            // same way).
            let mut refused: Vec<(u64, CairnError)> = Vec::new();
            let mut refused_digests: HashMap<u64, String> = HashMap::new();
            // The first read of `ctx.cancelled` that answered true, when no
            // journaled call or log line of this step records it: the
            // results journaled at this step do.
            let mut cancel_seen = step.cancel_seen;
            for entry in step.entries {
                if let Entry::Refused {
                    n,
                    digest,
                    cancel_seen: seen,
                    error,
                } = entry
                {
                    refused_digests.insert(n, digest);
                    cancel_seen = cancel_seen.or(seen);
                    refused.push((n, error));
                    continue;
                }
                let call = match &entry {
                    Entry::Call(n, c) => {
                        refused_digests.insert(*n, engine::call_digest(c));
                        Some((*n, c.get(engine::CANCEL_SEEN).and_then(Value::as_u64)))
                    }
                    _ => None,
                };
                match (self.journal(entry).await, call) {
                    (Ok(()), _) => {}
                    (
                        Err(e @ (CairnError::PayloadTooLarge { .. } | CairnError::InvalidRequest(_))),
                        Some((n, seen)),
                    ) => {
                        cancel_seen = cancel_seen.or(seen);
                        refused.push((n, e))
                    }
                    (Err(e), _) => return self.failed(e),
                }
            }
            // A refused call's result names the call by its digest.
            let refused_answers: Vec<(u64, Value)> = refused
                .iter()
                .map(|(n, e)| {
                    let mut result = error_result(*n, e);
                    if let Some(digest) = refused_digests.get(n) {
                        result["refused"] = json!({ "digest": digest });
                    }
                    (*n, result)
                })
                .collect();
            if let Some(outcome) = step.end {
                // It saw `ctx.cancelled` turn true in synchronous code, before
                // a step could tell it: it ended knowing, so it ends cancelled.
                if step.saw_cancel && self.cancelled.is_none() {
                    self.cancelled = self.cancel_message();
                }
                if step.settled && self.cancelled.is_none() && !self.stop_is_cancel() {
                    if let Err(e) = self.make_unawaited(&step.pending, refused_answers).await {
                        return self.failed(e);
                    }
                }
                return match (&self.cancelled, outcome) {
                    (Some(message), Outcome::Success { .. } | Outcome::Failure { .. }) => {
                        Outcome::cancelled(message.clone())
                    }
                    // Cancelled while busy in synchronous code, before a step
                    // could tell it: the limit or the error that ended it came
                    // after the request, so the process ends `cancelled`.
                    (None, Outcome::Failure { .. }) if self.stop_is_cancel() => {
                        Outcome::cancelled(self.cancel_message().unwrap_or_else(|| "cancelled".into()))
                    }
                    (_, o) => o,
                };
            }
            // A cancellation is told to the script at this step: the waits
            // it has pending reject `cancelled` below, while the calls that
            // do not wait (an `emit` it made in synchronous code after
            // `ctx.cancelled` turned true, say) are made as any other.
            // The results of the step that tells it say so (`cancelled`, the
            // message): a replay that reaches the end from the journal alone
            // still ends cancelled, as this run would.
            let mut told = match &self.cancelled {
                None => {
                    self.cancelled = self.cancel_message();
                    self.cancelled.clone()
                }
                Some(_) => None,
            };
            let mut answers = refused_answers;
            let pending: Vec<(u64, Value)> = step
                .pending
                .into_iter()
                .filter(|(n, _)| !refused.iter().any(|(r, _)| r == n))
                .collect();
            for (n, call) in pending.iter().filter(|(_, c)| !is_wait(kind(c))) {
                answers.push((*n, self.perform(*n, call).await));
            }
            // Every pending `ctx.tool` and `ctx.turn` child starts now, together.
            for (n, call) in pending.iter().filter(|(_, c)| matches!(kind(c), "tool" | "turn")) {
                if self.cancelled.is_none() {
                    if let Some(failed) = self.start_tool(*n, call).await {
                        answers.push((*n, failed));
                    }
                }
            }
            // `ctx.wait(id)` names a child by its id: anything but a string,
            // or a string no process id can be, rejects now, saying so (the
            // read of a malformed id would fail the whole wait, and another
            // call would be rejected for it).
            for (n, call) in pending.iter().filter(|(_, c)| kind(c) == "wait") {
                let refused = match call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    Some(id) => cairn_core::validate::validate_id("ctx.wait(id)", id).err(),
                    None => {
                        let given = call.get("id").map_or_else(|| "nothing".to_string(), Value::to_string);
                        Some(CairnError::InvalidRequest(format!(
                            "ctx.wait(id) takes the id of a child process (a string), not {given}"
                        )))
                    }
                };
                if let Some(e) = refused {
                    answers.push((*n, error_result(*n, &e)));
                }
            }
            if self.cancelled.is_none() && answers.is_empty() {
                match self.race(&pending).await {
                    Ok(results) => answers.extend(results),
                    // Cancelled while it waited (or on its way to suspending,
                    // which the cancellation refused): told now, in this run.
                    Err(Held::Stopped) => match self.cancel_message() {
                        Some(message) => {
                            self.cancelled = Some(message.clone());
                            told = Some(message);
                        }
                        None => return self.stopped_outcome(),
                    },
                    Err(Held::Store(e)) => return Outcome::failure("runtime", e.code(), e.to_string()),
                }
            }
            if let Some(message) = &self.cancelled {
                // A cancelled script waits for nothing: each pending wait
                // rejects `cancelled` now, journaled in the same batch as the
                // calls made beside it, so a replay delivers them together
                // and in the same order.
                let e = json!({"class": "cairn", "code": "cancelled", "message": message});
                for (n, _) in pending.iter().filter(|(_, c)| is_wait(kind(c))) {
                    if !answers.iter().any(|(a, _)| a == n) {
                        answers.push((*n, json!({"n": n, "error": e})));
                    }
                }
            }
            // The answers are delivered together: their results say so
            // (`batch`, numbered by the calls answered before them), and a
            // replay delivers them together again, so a race replays as it ran.
            let batch = self.answered.len() as u64 + 1;
            for (n, answer) in answers.iter_mut() {
                let mark = |mut result: Value, cancel_seen: Option<u64>| {
                    if let Some(m) = result.as_object_mut() {
                        m.insert("batch".into(), json!(batch));
                        if let Some(message) = &told {
                            m.insert("cancelled".into(), json!(message));
                        }
                        if let Some(read) = cancel_seen {
                            m.insert(engine::CANCEL_SEEN.into(), json!(read));
                        }
                    }
                    result
                };
                let read = cancel_seen.take();
                let journaled = match self.journal(Entry::Result(*n, mark(answer.clone(), read))).await {
                    // An answer too large or too deeply nested to journal (a
                    // signal's payload at the limits, wrapped in its result)
                    // is no answer the script could replay: its call rejects
                    // with the reason, and the script goes on, as a call too
                    // large to journal does.
                    Err(e @ (CairnError::PayloadTooLarge { .. } | CairnError::InvalidRequest(_))) => {
                        // The signal it took stays taken (`signal` kept): a
                        // replay counts it, and the next wait takes the next.
                        let took = answer.get("signal").cloned();
                        *answer = error_result(*n, &e);
                        if let (Some(took), Some(m)) = (took, answer.as_object_mut()) {
                            m.insert("signal".into(), took);
                        }
                        self.journal(Entry::Result(*n, mark(answer.clone(), read))).await
                    }
                    other => other,
                };
                if let Err(e) = journaled {
                    return self.failed(e);
                }
            }
            if self.replies.send(Reply::Answers(answers)).is_err() {
                return Outcome::failure("runtime", "script_engine", "the script engine stopped");
            }
        }
    }

    /// How the activation ends when journaling failed with `e`: past the
    /// journal's byte limit, `journal_limit`; else the store's fault.
    fn failed(&mut self, e: CairnError) -> Outcome {
        match self.over_limit.take() {
            Some(message) => limit_outcome(self.ctx, self.cancelled.as_ref(), message),
            None => Outcome::failure("runtime", e.code(), e.to_string()),
        }
    }

    /// How an activation whose engine thread never stopped ends:
    /// `cpu_limit`, saying its thread is held; `cancelled` once it was
    /// cancelled, as any failure after a cancellation.
    fn held_outcome(&self) -> Outcome {
        if let Some(message) = self.cancelled.clone().or_else(|| self.cancel_message()) {
            return Outcome::cancelled(message);
        }
        Outcome::failure(
            "script",
            "cpu_limit",
            format!(
                "the activation used more than {:?} of CPU (`cairn serve --script-cpu` sets the limit) and ran on \
                 past it in a built-in the engine cannot interrupt: its engine thread is held until it ends, if ever",
                self.cpu
            ),
        )
    }

    fn stop_is_cancel(&self) -> bool {
        matches!(self.ctx.stop_reason(), Some(StopReason::Cancelled { .. }))
    }

    fn cancel_message(&self) -> Option<String> {
        match self.ctx.stop_reason() {
            Some(StopReason::Cancelled { reason }) => Some(reason.unwrap_or_else(|| "cancelled".into())),
            _ => None,
        }
    }

    /// What a run that was stopped (suspended, lease lost, shutdown) answers;
    /// the worker writes nothing for those.
    fn stopped_outcome(&self) -> Outcome {
        Outcome::failure("runtime", "stopped", "the run was stopped")
    }

    async fn journal(&mut self, entry: Entry) -> Result<()> {
        let (t, payload, key, call, result) = match entry {
            Entry::Call(n, p) => (SCRIPT_CALL, p, format!("script.call:{n}"), Some(n), None),
            Entry::Result(n, p) => (SCRIPT_RESULT, p, format!("script.result:{n}"), None, Some(n)),
            Entry::Log(k, p) => (SCRIPT_LOG, p, format!("script.log:{k}"), None, None),
            Entry::Refused { .. } => return Ok(()),
        };
        // The journal is replayed from memory at every activation: an entry
        // that would take it past its byte limit is not written, and the
        // activation ends (`failed`).
        let size = json_bytes(&payload);
        let total = self.journal_bytes.saturating_add(size);
        if total > self.max_journal_bytes {
            let what = match (t, call.or(result)) {
                (SCRIPT_CALL, Some(n)) => format!("call {n}"),
                (SCRIPT_RESULT, Some(n)) => format!("the answer to call {n}"),
                _ => "a log line".to_string(),
            };
            let message = format!(
                "journaling {what} ({size} bytes) would take the script's journal to {total} bytes, past its \
                 limit of {} bytes (every call, answer and log line counts as journaled; {JOURNAL_FLAG} sets \
                 the limit)",
                self.max_journal_bytes
            );
            self.over_limit = Some(message.clone());
            return Err(CairnError::Unavailable(message));
        }
        self.journal_bytes = total;
        let event = self.ctx.append_once(t, payload, &key).await?;
        if let Some(n) = call {
            self.called_at.insert(n, event.occurred_at_ms);
        }
        if let Some(n) = result {
            self.answered.insert(n);
        }
        Ok(())
    }

    /// Perform a call that does not wait; answer its result.
    async fn perform(&self, n: u64, call: &Value) -> Value {
        match kind(call) {
            "emit" => {
                let t = match string_arg(call, "type", "ctx.emit(type, payload)") {
                    Ok(t) => t,
                    Err(e) => return error_result(n, &e),
                };
                if let Some(e) = reserved_for_emit(t) {
                    return error_result(n, &e);
                }
                // A script ends by returning or throwing (SPEC §14): an event
                // that would end it mid-run, its children still running, is refused.
                let ends = self
                    .ctx
                    .record()
                    .event_types
                    .iter()
                    .any(|d| d.name == t && d.semantics.terminal.is_some());
                if ends {
                    return error_result(
                        n,
                        &CairnError::InvalidRequest(format!(
                            "ctx.emit(\"{t}\"): `{t}` ends its process (it has terminal semantics); \
                             a script ends by returning or throwing"
                        )),
                    );
                }
                let payload = call.get("payload").cloned().unwrap_or(Value::Null);
                match self.ctx.append_once(t, payload, &format!("script.emit:{n}")).await {
                    Ok(_) => json!({"n": n, "value": null}),
                    Err(e) => error_result(n, &e),
                }
            }
            "start" => {
                let mut request = call.get("request").cloned().unwrap_or(Value::Null);
                let id = self.child_id(n);
                if let Some(m) = request.as_object_mut() {
                    m.insert("id".into(), json!(id));
                }
                let started = if request.is_object() {
                    // Said of what ctx.start takes: a request without the
                    // `id` and `caused_by` it makes itself.
                    cairn_core::StartRequest::from_json(request).map_err(|e| match e {
                        CairnError::InvalidRequest(m) => {
                            CairnError::InvalidRequest(m.replace("`id`, ", "").replace("`caused_by`, ", ""))
                        }
                        other => other,
                    })
                } else {
                    Err(CairnError::InvalidRequest(format!(
                        "ctx.start takes a start request without `id`: an object with `input` and `disposition`, not {}",
                        cairn_core::validate::json_kind(&request)
                    )))
                };
                let started = match started {
                    Ok(r) => self.ctx.start_child(r).await,
                    Err(e) => Err(e),
                };
                match started {
                    Ok(child) => json!({"n": n, "value": child.id}),
                    Err(e) => error_result(n, &e),
                }
            }
            other => error_result(
                n,
                &CairnError::InvalidRequest(format!("unknown context call `{other}`")),
            ),
        }
    }

    fn child_id(&self, n: u64) -> String {
        format!("{}/{n}", self.ctx.process_id())
    }

    /// Make the calls a function left pending when it returned or threw: it
    /// made them, so an `emit` appends, a `start` starts, and a `tool` or
    /// `turn` child starts and runs on its own; a wait (`sleep`,
    /// `waitSignal`, `wait`) has no effect to make. A call that failed
    /// (`refused` ones too: too large to journal) has its error journaled
    /// as its `script.result`, as an awaited call's is, so the process's
    /// log shows it; the outcome stays what the function returned or threw.
    /// A success is not journaled (nobody awaits it). Each effect is
    /// idempotent, and a call the journal already answers (a run that ended
    /// again after a crash) is not made again.
    async fn make_unawaited(&mut self, pending: &[(u64, Value)], refused: Vec<(u64, Value)>) -> Result<()> {
        let mut failures = Vec::new();
        for (n, call) in pending {
            if self.answered.contains(n) {
                continue;
            }
            let failed = match refused.iter().find(|(r, _)| r == n) {
                Some((_, result)) => Some(result.clone()),
                None => match kind(call) {
                    "tool" | "turn" => self.start_tool(*n, call).await,
                    k if !is_wait(k) => Some(self.perform(*n, call).await).filter(|r| r.get("error").is_some()),
                    _ => None,
                },
            };
            if let Some(result) = failed {
                tracing::warn!(
                    process_id = self.ctx.process_id(),
                    call = n,
                    error = %result,
                    "a context call the script did not await failed"
                );
                failures.push((*n, result));
            }
        }
        // Journaled together, as the answers of one step are, numbered by
        // the calls answered before the function settled (a run cut short
        // after journaling some of them numbers the rest alike).
        let before = self.answered.len() - pending.iter().filter(|(n, _)| self.answered.contains(n)).count();
        let batch = before as u64 + 1;
        for (n, mut result) in failures {
            result["batch"] = json!(batch);
            self.journal(Entry::Result(n, result)).await?;
        }
        Ok(())
    }

    /// Start the child of a pending `ctx.tool` call (idempotent: a replayed
    /// start answers the stored child); an error result when it cannot start.
    async fn start_tool(&self, n: u64, call: &Value) -> Option<Value> {
        let name = match kind(call) {
            "tool" => match string_arg(call, "name", "ctx.tool(name, args)") {
                Ok(name) => name,
                Err(e) => return Some(error_result(n, &e)),
            },
            _ => "",
        };
        let args = call.get("args").cloned().unwrap_or(Value::Null);
        let disposition = match call.get("disposition").cloned().map(serde_json::from_value) {
            None => cairn_core::Disposition::Rerunnable,
            Some(Ok(d)) => d,
            Some(Err(_)) => {
                let given = call.get("disposition").map_or_else(String::new, Value::to_string);
                return Some(error_result(
                    n,
                    &CairnError::InvalidRequest(format!(
                        "ctx.tool's disposition is `rerunnable` (the default, when it is left out) \
                         or `owner_bound` (a tool call is run here, so never `externally_owned`), not {given}"
                    )),
                ));
            }
        };
        let request = if kind(call) == "turn" {
            // `ctx.turn(session, input, outputContract?)`: a session turn child (SPEC §15).
            let input = json!({
                "type": "session_turn",
                "session": call.get("session").cloned().unwrap_or(json!({})),
                "input": call.get("input").cloned().unwrap_or(Value::Null),
                "output_contract": call.get("output_contract").cloned().unwrap_or(Value::Null),
            });
            match serde_json::from_value(input) {
                Ok(input) => cairn_core::StartRequest::new(self.child_id(n), input, disposition),
                Err(e) => return Some(error_result(n, &CairnError::InvalidRequest(format!("ctx.turn: {e}")))),
            }
        } else {
            cairn_core::StartRequest::tool(self.child_id(n), name, args, disposition)
        };
        match self.ctx.start_child(request).await {
            Ok(_) => None,
            Err(e) => Some(error_result(n, &e)),
        }
    }

    /// When call `n` was journaled (now, for a call the driver has no time
    /// of, which a journaled call always has).
    fn called_at(&self, n: u64) -> u64 {
        self.called_at.get(&n).copied().unwrap_or_else(|| self.ctx.now_ms())
    }

    /// Wait for the first of the pending waits to settle and answer what
    /// settled: `Promise.race` and `Promise.all` over waits see each one
    /// settle in its own time. Every timer and timeout runs from its call's
    /// journal time. A round waits for the first of: any pending child to
    /// end, the next untaken signal of each name a pending call waits for,
    /// and the earliest deadline (a timer's, or a signal call's own); when
    /// only timers are pending, for the earliest of them.
    async fn race(&mut self, pending: &[(u64, Value)]) -> std::result::Result<Vec<(u64, Value)>, Held> {
        let waits: Vec<&(u64, Value)> = pending.iter().filter(|(_, c)| is_wait(kind(c))).collect();
        // Each timer's due time and each signal's own deadline; a bad
        // duration or signal name rejects its call now.
        let mut answers = Vec::new();
        let mut timers: Vec<(u64, u64)> = Vec::new();
        let mut signals: Vec<(u64, &Value, Option<u64>)> = Vec::new();
        for (n, call) in &waits {
            match kind(call) {
                "sleep" => match millis(call.get("ms"), "ctx.sleep(ms)") {
                    Ok(ms) => timers.push((*n, self.called_at(*n).saturating_add(ms))),
                    Err(e) => answers.push((*n, error_result(*n, &e))),
                },
                "wait_signal" => {
                    // `null` is refused before it is journaled (the
                    // prelude's `refused`): one journaled is an older
                    // run's, which waited without a deadline, as this does.
                    let own = match call.get("timeout_ms") {
                        None | Some(Value::Null) => Ok(None),
                        given => millis(given, "ctx.waitSignal's timeoutMs")
                            .map(|ms| Some(self.called_at(*n).saturating_add(ms))),
                    };
                    let named = string_arg(call, "name", "ctx.waitSignal(name)")
                        .and_then(cairn_core::events::validate_signal_name);
                    match own.and_then(|own| named.map(|()| own)) {
                        Ok(own) => signals.push((*n, call, own)),
                        Err(e) => answers.push((*n, error_result(*n, &e))),
                    }
                }
                _ => {}
            }
        }
        if !answers.is_empty() {
            return Ok(answers);
        }
        // A children wait names at most `MAX_AWAITED_CHILDREN`: a round waits
        // on the first of them still pending (it ends when any one ends), and
        // the rest wait their turn in later rounds, the same in every activation.
        let children: Vec<(u64, Value)> = waits
            .iter()
            .filter(|(_, c)| matches!(kind(c), "tool" | "turn" | "wait"))
            .take(cairn_core::validate::MAX_AWAITED_CHILDREN)
            .map(|w| (*w).clone())
            .collect();
        if children.is_empty() && signals.is_empty() {
            let Some(&(n, due)) = timers.iter().min_by_key(|(_, due)| *due) else {
                return Ok(answers);
            };
            let left = Duration::from_millis(due.saturating_sub(self.ctx.now_ms()));
            return match self.ctx.sleep_nth(n, left).await {
                Ok(()) => self.settle_due(&timers, &[]).await,
                slept => Ok(vec![self.answered(n, slept.map(|()| Value::Null))?]),
            };
        }
        // The first pending call of each signal name: a later call of the
        // same name waits its turn (the signal after the one this one takes).
        let mut firsts: Vec<(u64, String, u64)> = Vec::new();
        for (n, call, _) in &signals {
            let name = signal_name(call);
            if !firsts.iter().any(|(_, f, _)| f == name) {
                let ordinal = self.taken.get(name).copied().unwrap_or(0) + 1;
                firsts.push((*n, name.to_string(), ordinal));
            }
        }
        let until = timers
            .iter()
            .map(|(_, due)| *due)
            .chain(signals.iter().filter_map(|(_, _, own)| *own))
            .min();
        // Whether the earliest deadline is a sleep's due time (one raced
        // against the rest): reaching it is a timer's, recorded as such.
        // (A signal's own deadline at the same moment makes it a deadline:
        // that wait times out then, as it would alone.)
        let due_timer = until.is_some()
            && timers.iter().map(|(_, due)| *due).min() == until
            && signals.iter().filter_map(|(_, _, own)| *own).min() != until;
        let ids = self.child_ids(&children);
        // Each round of waiting answers at least one call, so the number of
        // calls answered names the round, the same in every activation.
        let round = self.answered.len() as u64 + 1;
        let awaited: Vec<(String, u64)> = firsts.iter().map(|(_, name, o)| (name.clone(), *o)).collect();
        let on_children = (!ids.is_empty()).then_some((ids.as_slice(), cairn_core::model::ChildrenMode::Any, round));
        match self.ctx.wait_first(&awaited, on_children, until, due_timer).await {
            Ok(FirstOf::Signal(i, payload)) => {
                let (n, name, ordinal) = &firsts[i];
                *self.taken.entry(name.clone()).or_insert(0) += 1;
                answers.push((*n, json!({"n": n, "value": payload, "signal": ordinal})));
            }
            Ok(FirstOf::Children(records)) => answers.extend(child_answers(&children, records)),
            Ok(FirstOf::TimedOut) => answers.extend(self.settle_due(&timers, &signals).await?),
            Err(_) if self.ctx.is_stopped() => return Err(Held::Stopped),
            Err(e) if store_fault(&e) => return Err(Held::Store(e)),
            // A `ctx.wait` that names no child of this process (an unknown
            // id, another process, its own): those calls reject, saying so,
            // and the others wait on in the next round.
            Err(e) => {
                answers.extend(refused_waits(&children, &e));
                if answers.is_empty() {
                    // Nothing names a call (the registry failed): the first
                    // pending wait rejects with the error, so the run moves on.
                    let first = children
                        .first()
                        .map(|(n, _)| *n)
                        .or_else(|| firsts.first().map(|f| f.0));
                    match first {
                        Some(n) => answers.push((n, error_result(n, &e))),
                        None => answers.extend(waits.iter().map(|(n, _)| (*n, error_result(*n, &e)))),
                    }
                }
            }
        }
        Ok(answers)
    }

    /// Settle call `n`, whose own deadline `own` passed: the first signal
    /// `name` no earlier call took if it came by then, else null.
    async fn signal_wait(&mut self, n: u64, name: &str, own: Option<u64>) -> std::result::Result<(u64, Value), Held> {
        let ordinal = self.taken.get(name).copied().unwrap_or(0) + 1;
        match self.ctx.wait_signal_until(name, ordinal, own).await {
            Ok(Some(payload)) => {
                *self.taken.entry(name.to_string()).or_insert(0) += 1;
                Ok((n, json!({"n": n, "value": payload, "signal": ordinal})))
            }
            waited => self.answered(n, waited.map(|_| Value::Null)),
        }
    }

    /// A wait's answer to call `n`: its value, its error, or `Held` when the
    /// run was stopped (suspended) while it waited.
    fn answered(&self, n: u64, waited: Result<Value>) -> std::result::Result<(u64, Value), Held> {
        match waited {
            Ok(value) => Ok((n, json!({"n": n, "value": value}))),
            Err(_) if self.ctx.is_stopped() => Err(Held::Stopped),
            Err(e) if store_fault(&e) => Err(Held::Store(e)),
            Err(e) => Ok((n, error_result(n, &e))),
        }
    }

    /// The answers of the timers that are due and the signals whose own
    /// deadline passed (a signal that arrived meanwhile answers its payload).
    async fn settle_due(
        &mut self,
        timers: &[(u64, u64)],
        signals: &[(u64, &Value, Option<u64>)],
    ) -> std::result::Result<Vec<(u64, Value)>, Held> {
        let now = self.ctx.now_ms();
        let mut answers = Vec::new();
        for &(n, due) in timers.iter().filter(|(_, due)| *due <= now) {
            // A timer recorded as a wait is ended by its own resumption.
            let left = Duration::from_millis(due.saturating_sub(now));
            let slept = self.ctx.sleep_nth(n, left).await.map(|()| Value::Null);
            answers.push(self.answered(n, slept)?);
        }
        for &(n, call, own) in signals.iter().filter(|(_, _, d)| d.is_some_and(|d| d <= now)) {
            answers.push(self.signal_wait(n, signal_name(call), own).await?);
        }
        Ok(answers)
    }

    /// The ids of the children pending calls wait for: a `ctx.tool` or
    /// `ctx.turn` call's own child, the id a `ctx.wait` names.
    fn child_ids(&self, calls: &[(u64, Value)]) -> Vec<String> {
        calls
            .iter()
            .map(|(n, c)| match kind(c) {
                "wait" => c.get("id").and_then(Value::as_str).unwrap_or("").to_string(),
                _ => self.child_id(*n),
            })
            .collect()
    }
}

/// A duration a script gave in milliseconds: a number from 0 up to 2^53 - 1, a fraction
/// rounded up (a wait is never shorter than asked); anything else makes the
/// call reject with `invalid_request`, as a silent zero or a wait without its
/// deadline would not say.
/// The string `field` of a call, or an error naming what was given instead
/// (a number passed for a name is no empty name).
fn string_arg<'a>(call: &'a Value, field: &str, what: &str) -> Result<&'a str> {
    match call.get(field) {
        Some(Value::String(s)) => Ok(s),
        given => Err(CairnError::InvalidRequest(format!(
            "{what} takes a string, not {}",
            given
                .filter(|v| !v.is_null())
                .map_or_else(|| "nothing".to_string(), Value::to_string)
        ))),
    }
}

fn millis(given: Option<&Value>, what: &str) -> Result<u64> {
    let longest = cairn_core::validate::LONGEST_WAIT_MS;
    let ms = given.and_then(Value::as_f64).filter(|ms| ms.is_finite() && *ms >= 0.0);
    match ms {
        Some(ms) if ms.ceil() <= longest as f64 => Ok(ms.ceil() as u64),
        Some(_) => Err(CairnError::InvalidRequest(format!(
            "{what} takes at most {longest} ms (a year), not {}",
            given.map_or_else(String::new, Value::to_string)
        ))),
        _ => Err(CairnError::InvalidRequest(format!(
            "{what} takes a number of milliseconds from 0 up, not {}",
            given.map_or_else(|| "nothing".to_string(), Value::to_string)
        ))),
    }
}

/// The results of the calls whose child ended (`tool` and `turn` reject
/// unless it succeeded; `wait` never rejects), from the children's records in
/// the order of the calls. A rejection keeps the child's `class` and `code`
/// and names the child, in its message and its `process_id`: journaled so, a
/// replay rejects with the very error the first run had.
fn child_answers(calls: &[(u64, Value)], records: Vec<cairn_core::ProcessRecord>) -> Vec<(u64, Value)> {
    let mut answers = Vec::new();
    for ((n, call), record) in calls.iter().zip(records) {
        let Some(outcome) = record.outcome else { continue };
        let id = record.id.as_str();
        let result = match outcome {
            outcome if kind(call) == "wait" => json!({"n": n, "value": outcome}),
            Outcome::Success { value } => json!({"n": n, "value": value}),
            Outcome::Failure {
                class, code, message, ..
            } => child_error(*n, id, &class, &code, &format!("failed: {message}")),
            Outcome::Cancelled { message, .. } => {
                child_error(*n, id, "cairn", "cancelled", &format!("was cancelled: {message}"))
            }
            Outcome::Abandoned { .. } => child_error(*n, id, "cairn", "abandoned", "was abandoned"),
        };
        answers.push((*n, result));
    }
    answers
}

/// The rejection of call `n` by its child `id`, which `what` (`failed: ...`).
fn child_error(n: u64, id: &str, class: &str, code: &str, what: &str) -> Value {
    json!({"n": n, "error": {
        "class": class, "code": code, "message": format!("child `{id}` {what}"), "process_id": id
    }})
}

/// The rejections of the pending `ctx.wait` calls that `error` (of a wait
/// for the children `calls`) names: each id the core refused as unknown or
/// as not a child of this process.
fn refused_waits(calls: &[(u64, Value)], error: &CairnError) -> Vec<(u64, Value)> {
    let named = error.to_string();
    let said = engine::rejection_message(error);
    calls
        .iter()
        .filter(|(_, c)| kind(c) == "wait")
        .filter_map(|(n, c)| {
            let id = c.get("id").and_then(Value::as_str)?;
            named.contains(&format!("`{id}`")).then(|| {
                let message = format!("ctx.wait({id:?}) awaits a child this process started: {said}");
                (
                    *n,
                    json!({"n": n, "error": {"class": "cairn", "code": error.code(), "message": message}}),
                )
            })
        })
        .collect()
}

/// The signal name of a `wait_signal` call.
fn signal_name(call: &Value) -> &str {
    call.get("name").and_then(Value::as_str).unwrap_or("")
}

fn kind(call: &Value) -> &str {
    call.get("kind").and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A thread that spins (as in a built-in the engine cannot interrupt)
    /// until `release` is set, watched by `watch`.
    fn spinner(watch: Arc<Watch>, release: Arc<AtomicBool>) {
        std::thread::spawn(move || {
            watch.begin();
            let _ends = engine::Ends(watch);
            while !release.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let began = std::time::Instant::now();
        while !done() {
            assert!(began.elapsed() < Duration::from_secs(20), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A compile whose thread never answers is given up once the thread has
    /// spun past its CPU time: the compile answers `invalid_module` (and its
    /// turn ends), the thread is held, and no longer once it ends.
    #[test]
    fn a_compile_that_never_answers_is_given_up_and_its_thread_held() {
        let watch = Arc::new(Watch::new("a test top level".into()));
        let release = Arc::new(AtomicBool::new(false));
        let (_tx, rx) = std::sync::mpsc::channel::<engine::ExportsAnswer>();
        spinner(watch.clone(), release.clone());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let waiter = watch.clone();
        std::thread::spawn(move || {
            let _ = done_tx.send(await_compile(&rx, &waiter, Duration::from_millis(100)).map(|_| ()));
        });
        let answer = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the compile was given up");
        let err = answer.expect_err("refused");
        assert_eq!(err.code(), "invalid_module");
        assert!(
            err.to_string().contains("did not stop at the CPU limit of 100ms"),
            "{err}"
        );
        assert!(watch.is_held());
        release.store(true, Ordering::Relaxed);
        wait_until("the thread ends", || watch.ended());
        assert!(!watch.is_held(), "a thread that ended is no longer held");
    }

    /// An activation dropped while its engine thread spins on (its run
    /// cancelled, or given up) has the thread held once it has spun past
    /// [`ABORT_GRACE`], and no longer once it ends.
    #[test]
    fn a_dropped_activation_whose_thread_spins_on_is_held() {
        let watch = Arc::new(Watch::new("a test activation".into()));
        let release = Arc::new(AtomicBool::new(false));
        spinner(watch.clone(), release.clone());
        let stop = Arc::new(AtomicU8::new(engine::RUN));
        drop(AbortOnDrop(stop.clone(), watch.clone()));
        assert_eq!(stop.load(Ordering::SeqCst), ABORT);
        wait_until("the spinning thread is held", || watch.is_held());
        release.store(true, Ordering::Relaxed);
        wait_until("the thread ends", || watch.ended());
        assert!(!watch.is_held());
    }
}
