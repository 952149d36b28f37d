//! One activation on its own thread: a fresh QuickJS runtime and context, the
//! prelude, the module, the function; then run the job queue until nothing
//! moves, report a [`Step`] to the driver, and wait for its [`Reply`].
//!
//! Nothing here does I/O: every call is answered from the journal, computed
//! (`now`, `random`, `uuid`), or left pending for the driver to perform.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::script::{SCRIPT_CALL, SCRIPT_LOG, SCRIPT_RESULT};
use cairn_core::{Outcome, ProcessEvent, ToolContext};
use rquickjs::{Context, Ctx, Function, Module, Object, Runtime, Value as JsValue};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;

use crate::Limits;

const PRELUDE: &str = include_str!("prelude.js");
/// What a module whose top level never finishes is told (its top level
/// awaits something only a context call could settle, and it has none).
const PENDING_TOP_LEVEL: &str =
    "the module's top level awaits something that never settles (it runs before any context exists)";
/// The name the module is compiled under (it shows in stacks and syntax errors).
pub(crate) const MODULE_NAME: &str = "script.js";

/// How many engine threads are held now: parked for good (a script ran on
/// past its stop inside promise executors) or never answered after their
/// stop (a native built-in that makes no interrupt polls). Each keeps its
/// heap, at most the heap limit, until the server stops.
static HELD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The engine threads held now ([`HELD`]).
pub(crate) fn held_threads() -> usize {
    HELD.load(Ordering::SeqCst)
}

/// One engine thread, as its waiter sees it: what it runs (for the log),
/// its CPU clock, and whether it ended or is held.
pub(crate) struct Watch {
    what: String,
    clock: std::sync::OnceLock<(libc::clockid_t, libc::pid_t)>,
    /// (ended, held): one lock, so a thread that ends as it is taken to be
    /// held is counted once or not at all.
    state: std::sync::Mutex<(bool, bool)>,
}

impl Watch {
    pub(crate) fn new(what: String) -> Self {
        Self {
            what,
            clock: std::sync::OnceLock::new(),
            state: std::sync::Mutex::new((false, false)),
        }
    }

    /// Called on the engine thread as it begins: its CPU clock and its id
    /// (on Linux; elsewhere its CPU time is not read from outside, and only
    /// a compile's wall-clock bound gives it up).
    #[cfg(target_os = "linux")]
    pub(crate) fn begin(&self) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `pthread_self` is this thread; the clock id is written
        // through a valid pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        if rc == 0 {
            let _ = self.clock.set((clock, tid));
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn begin(&self) {}

    /// The CPU time the engine thread has used so far (none before it began).
    pub(crate) fn cpu(&self) -> Option<Duration> {
        let (clock, _) = *self.clock.get()?;
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes one timespec through a valid pointer.
        let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    /// Whether the engine thread has ended.
    pub(crate) fn ended(&self) -> bool {
        self.state.lock().map_or(true, |s| s.0)
    }

    /// Whether the engine thread is held.
    pub(crate) fn is_held(&self) -> bool {
        self.state.lock().map_or(true, |s| s.1)
    }

    /// Take the engine thread to be held (`why`): counted and logged once,
    /// unless it ended; a thread still running is given the lowest
    /// scheduling priority, so that one spinning in a native built-in
    /// yields its processor to everything else. Answers whether it is held.
    pub(crate) fn hold(&self, why: &str) -> bool {
        let Ok(mut state) = self.state.lock() else { return false };
        if state.0 {
            return false;
        }
        if !state.1 {
            state.1 = true;
            let held = HELD.fetch_add(1, Ordering::SeqCst) + 1;
            tracing::error!(
                what = %self.what,
                held,
                most = crate::MAX_HELD_THREADS,
                "a script engine thread is held until it ends or the server stops: {why}"
            );
            if let Some((_, tid)) = self.clock.get() {
                // SAFETY: setpriority on a thread id of this process.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, *tid as libc::id_t, 19) };
            }
        }
        true
    }

    /// Called as the engine thread ends (also by unwinding): a thread taken
    /// to be held that ends after all is no longer counted.
    fn end(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = true;
            if std::mem::take(&mut state.1) {
                HELD.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Ends a [`Watch`] when the engine thread's work is dropped.
pub(crate) struct Ends(pub(crate) Arc<Watch>);

impl Drop for Ends {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Why the interrupt handler stopped the script.
pub(crate) const RUN: u8 = 0;
pub(crate) const CPU: u8 = 1;
pub(crate) const ABORT: u8 = 2;
pub(crate) const FATAL: u8 = 3;
pub(crate) const MEMORY: u8 = 4;

/// The heap of one runtime: Rust's allocator (rquickjs's `RustAllocator`)
/// under the activation's limit, enforced here rather than by QuickJS so that
/// a refusal is known for certain. QuickJS reports running out as an
/// exception it may be unable to allocate (a script then sees `null` thrown);
/// this records the refusal in `stop` (which also interrupts the script, so it
/// cannot catch it and go on) and the failure is `memory_limit` whatever was
/// thrown.
///
/// The CPU limit is checked here too, not only at the interrupt handler's
/// polls, which a long native built-in (`JSON.stringify` of a large string)
/// makes none of; and once the script is stopped, a large block (a
/// built-in's buffer) is refused, so a built-in cannot go on working past
/// the stop.
struct Heap {
    inner: rquickjs::allocator::RustAllocator,
    used: usize,
    limit: usize,
    stop: Arc<AtomicU8>,
    /// Set once the runtime's context is built: refusals past this point
    /// are ones QuickJS checks (it does not always while building intrinsics).
    armed: Arc<std::sync::atomic::AtomicBool>,
    /// The thread's CPU time when the activation began, and its allowance.
    started: Duration,
    cpu: Duration,
    /// Allocations since the CPU time was last read.
    since_check: u32,
    /// Allocations asked for since the script was stopped.
    after_stop: u32,
    /// Bytes the activation holds outside this heap for the script: the
    /// calls and log lines of the step not yet handed to the driver
    /// ([`State::outside`]). They count against the limit as the heap does.
    outside: Arc<std::sync::atomic::AtomicUsize>,
}

/// Allocations (of the few that reach this allocator) between two reads of
/// the thread's CPU time.
const CPU_CHECK_EVERY: u32 = 8;

impl Heap {
    fn refuse(&self) -> *mut u8 {
        let _ = self
            .stop
            .compare_exchange(RUN, MEMORY, Ordering::SeqCst, Ordering::SeqCst);
        std::ptr::null_mut()
    }

    /// What the activation holds: this heap, and its calls outside it.
    fn held(&self) -> usize {
        self.used.saturating_add(self.outside.load(Ordering::Relaxed))
    }

    /// Whether an allocation of `size` bytes must be refused because the
    /// script is to stop (already, or now: past its CPU time). Only a block
    /// larger than an arena is: the native work a built-in does past the stop
    /// is cut short, while the small blocks the engine's own unwinding needs
    /// (its uncatchable "interrupted" error, a new 4 KiB arena for it) are
    /// given: refused, the error would be a catchable `null`. Past
    /// [`STOPPED_ALLOCATIONS`] of them every block is refused: a built-in
    /// that loops without polls, allocating only small blocks, fails then.
    fn stopping(&mut self, size: usize) -> bool {
        if !self.armed.load(Ordering::Relaxed) {
            return false;
        }
        if self.stop.load(Ordering::Relaxed) != RUN {
            self.after_stop = self.after_stop.saturating_add(1);
            return size > ENGINE_ARENA_BYTES || self.after_stop > STOPPED_ALLOCATIONS;
        }
        self.since_check += 1;
        if self.since_check >= CPU_CHECK_EVERY {
            self.since_check = 0;
            if thread_cpu().saturating_sub(self.started) > self.cpu {
                let _ = self.stop.compare_exchange(RUN, CPU, Ordering::SeqCst, Ordering::SeqCst);
                return size > ENGINE_ARENA_BYTES;
            }
        }
        false
    }
}

/// The small allocations given after a stop: far more than the engine's
/// own unwinding makes (its "interrupted" error, the frames it frees).
const STOPPED_ALLOCATIONS: u32 = 1 << 16;

/// The engine's arena size (QuickJS's `JS_ARENA_SIZE`): it serves blocks up
/// to 512 bytes from arenas of this size, and asks for larger blocks alone.
const ENGINE_ARENA_BYTES: usize = 4096;

// SAFETY: every call is passed through to `RustAllocator` unchanged or
// refused with a null pointer, which the trait allows; the sizes counted are
// the ones `RustAllocator::usable_size` reports for its own allocations.
unsafe impl rquickjs::allocator::Allocator for Heap {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        if self.stopping(size) {
            return std::ptr::null_mut();
        }
        if self.held().saturating_add(size) > self.limit {
            return self.refuse();
        }
        let ptr = self.inner.alloc(size);
        if !ptr.is_null() {
            // SAFETY: `ptr` was just allocated by `inner`.
            self.used += unsafe { rquickjs::allocator::RustAllocator::usable_size(ptr) };
        }
        ptr
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        if self.stopping(count.saturating_mul(size)) {
            return std::ptr::null_mut();
        }
        if self.held().saturating_add(count.saturating_mul(size)) > self.limit {
            return self.refuse();
        }
        let ptr = self.inner.calloc(count, size);
        if !ptr.is_null() {
            // SAFETY: `ptr` was just allocated by `inner`.
            self.used += unsafe { rquickjs::allocator::RustAllocator::usable_size(ptr) };
        }
        ptr
    }

    unsafe fn dealloc(&mut self, ptr: *mut u8) {
        self.used = self
            .used
            .saturating_sub(rquickjs::allocator::RustAllocator::usable_size(ptr));
        self.inner.dealloc(ptr);
    }

    unsafe fn realloc(&mut self, ptr: *mut u8, new_size: usize) -> *mut u8 {
        if self.stopping(new_size) {
            return std::ptr::null_mut();
        }
        let old = rquickjs::allocator::RustAllocator::usable_size(ptr);
        if self.held().saturating_sub(old).saturating_add(new_size) > self.limit {
            return self.refuse();
        }
        let grown = self.inner.realloc(ptr, new_size);
        if !grown.is_null() {
            self.used = self.used.saturating_sub(old) + rquickjs::allocator::RustAllocator::usable_size(grown);
        }
        grown
    }

    unsafe fn usable_size(ptr: *mut u8) -> usize {
        rquickjs::allocator::RustAllocator::usable_size(ptr)
    }
}

/// The journal read from the log: calls and results by number, and how many
/// log lines were written.
#[derive(Default)]
pub(crate) struct Journal {
    calls: BTreeMap<u64, Value>,
    results: BTreeMap<u64, Value>,
    /// The results of calls the driver answered, in the order they were
    /// answered, each with the batch it was delivered in (none in journals
    /// written before results said so): a replay delivers them the same way.
    order: Vec<(u64, Option<u64>)>,
    logs: u64,
    /// The highest call number the journal holds (a call's or a result's).
    last_n: u64,
    /// Which read of `ctx.cancelled` first answered true in the run that
    /// journaled it (`cancel_seen` on the next call or log line it made).
    cancel_seen: Option<u64>,
}

impl Journal {
    /// Take the next event of the log, in order: a journal entry's payload
    /// is kept (moved, not copied: the replay holds one copy of its journal),
    /// anything else is dropped.
    pub(crate) fn push(&mut self, e: ProcessEvent) {
        let ProcessEvent {
            event_type, payload, ..
        } = e;
        let t = event_type.as_str();
        if !matches!(t, SCRIPT_CALL | SCRIPT_LOG | SCRIPT_RESULT) {
            return;
        }
        let n = payload.get("n").and_then(Value::as_u64);
        if self.cancel_seen.is_none() {
            self.cancel_seen = payload.get(CANCEL_SEEN).and_then(Value::as_u64);
        }
        if matches!(t, SCRIPT_CALL | SCRIPT_RESULT) {
            self.last_n = self.last_n.max(n.unwrap_or(0));
        }
        match (t, n) {
            (SCRIPT_CALL, Some(n)) => {
                self.calls.insert(n, payload);
            }
            (SCRIPT_RESULT, Some(n)) if !self.results.contains_key(&n) => {
                let answered_at_once = self.calls.get(&n).is_some_and(|c| is_sync(call_kind(c)));
                if !answered_at_once {
                    self.order.push((n, payload.get("batch").and_then(Value::as_u64)));
                }
                self.results.insert(n, payload);
            }
            (SCRIPT_LOG, _) => self.logs += 1,
            _ => {}
        }
    }
}

/// The field of the first entry journaled after a script first read
/// `ctx.cancelled` as true (the next call or log line it made, else the
/// results the driver journals at that step; a refused call's result
/// carries it for the call): which read that was (1 for the first). A
/// replay answers its reads from it, as the journaling run saw them; a
/// replay of a journal without it answers `false` until the journal is
/// replayed (the run saw `true` only after its last journaled entry).
pub(crate) const CANCEL_SEEN: &str = "cancel_seen";

/// Where a refused call's result records the call it refused
/// (`{"refused": {"digest"}}`, [`call_digest`]).
pub(crate) const REFUSED_DIGEST: &str = "/refused/digest";

/// The digest of a call as the engine made it: a replay that makes another
/// call where the journal holds a refused one is told apart by it.
pub(crate) fn call_digest(call: &Value) -> String {
    cairn_core::validate::sha256_hex(call.to_string().as_bytes())
}

/// A new journal entry, to append in order.
#[derive(Debug)]
pub(crate) enum Entry {
    Call(u64, Value),
    Result(u64, Value),
    Log(u64, Value),
    /// A call too large to journal, refused where it was made (only its
    /// digest is kept, not its arguments): the driver answers it as it
    /// answers a call whose append was refused.
    Refused {
        n: u64,
        digest: String,
        cancel_seen: Option<u64>,
        error: cairn_core::CairnError,
    },
}

/// The stand-in kept pending for a refused call: its arguments are not
/// held (a script making many such calls would hold them all outside its
/// heap limit until the step ends).
fn refused_stub(n: u64, kind: &str) -> Value {
    json!({"n": n, "kind": kind})
}

/// Whether `call` (a `kind` call made from `text` bytes of arguments) is too
/// large or too deeply nested to be made, said of what the script gave;
/// measured exactly only when it may be (its text near the limit, or with
/// brackets enough to nest past it).
///
/// The value the script hands on (an emit's payload, a tool's args, a start
/// request) is held to the limits of what it becomes (an event's payload, a
/// child's input), not to them less the journal's own fields: the
/// `script.call` event that journals it has room for those beside a value
/// at the limits, as a `script.result` has
/// ([`cairn_core::validate::TERMINAL_ENVELOPE_BYTES`], checked as the event
/// is appended), and no store holds an event to less. The call as a whole
/// (its name, type or options too) must fit that room.
fn too_large(kind: &str, text: &str, call: &Value) -> Option<cairn_core::CairnError> {
    use cairn_core::validate::{check_size, check_terminal_payload, MAX_JSON_DEPTH, MAX_PAYLOAD_BYTES};
    let deep = || text.bytes().filter(|b| matches!(b, b'[' | b'{')).count() > MAX_JSON_DEPTH;
    if text.len() + 1024 < MAX_PAYLOAD_BYTES && !deep() {
        return None;
    }
    let given = match kind {
        "emit" => Some((format!("`ctx.emit{}`'s payload", named(call, "type")), "payload")),
        "tool" => Some((format!("`ctx.tool{}`'s `args`", named(call, "name")), "args")),
        "start" => Some(("`ctx.start`'s request".to_string(), "request")),
        _ => None,
    };
    if let Some((what, field)) = given {
        if let Err(e) = check_size(&what, call.get(field).unwrap_or(&Value::Null)) {
            return Some(e);
        }
    }
    let label = named(call, if kind == "emit" { "type" } else { "name" });
    check_terminal_payload(|| format!("`{}{label}` as journaled", call_name(kind)), call).err()
}

/// The most characters of a name (an event type, a tool's or a signal's) a
/// refusal quotes.
const QUOTED_NAME_CHARS: usize = 64;

/// `("name")`, the string `field` of a call as a refusal quotes it (cut
/// when long), or nothing when it has none.
fn named(call: &Value, field: &str) -> String {
    match call.get(field).and_then(Value::as_str) {
        Some(name) => {
            let cut: String = name.chars().take(QUOTED_NAME_CHARS).collect();
            let more = if cut.len() < name.len() { "..." } else { "" };
            format!("({}{more})", Value::String(cut))
        }
        None => String::new(),
    }
}

/// The context method a call of `kind` is made by.
fn call_name(kind: &str) -> String {
    match kind {
        "wait_signal" => "ctx.waitSignal".into(),
        other => format!("ctx.{other}"),
    }
}

/// What an activation reports each time its job queue is empty.
pub(crate) struct Step {
    pub(crate) entries: Vec<Entry>,
    /// Outstanding calls the driver must answer (number, call payload).
    pub(crate) pending: Vec<(u64, Value)>,
    /// Set when the function settled or the activation failed.
    pub(crate) end: Option<Outcome>,
    /// The function itself returned or threw (not a limit, a refused call or
    /// the engine): the calls it left pending are still made.
    pub(crate) settled: bool,
    /// The script has seen `ctx.cancelled` true: however it ends, it ends
    /// cancelled.
    pub(crate) saw_cancel: bool,
    /// The read of `ctx.cancelled` that first answered true, when no call
    /// or log line of this step recorded it: the driver journals it on the
    /// step's results (`CANCEL_SEEN`).
    pub(crate) cancel_seen: Option<u64>,
}

/// The driver's answer to a step: the results (`{n, value}` or `{n,
/// error}`) of pending calls, in the order it journaled them. A
/// cancellation is told this way too: each pending wait rejects `cancelled`
/// (a journaled result like any other, so a replay delivers it in the same
/// batch and order), while a call that does not wait is made as usual.
pub(crate) enum Reply {
    Answers(Vec<(u64, Value)>),
}

pub(crate) struct Setup {
    pub(crate) limits: Limits,
    pub(crate) source: String,
    pub(crate) process_name: String,
    pub(crate) args: Value,
    pub(crate) journal: Journal,
    pub(crate) ctx: ToolContext,
    pub(crate) stop: Arc<AtomicU8>,
    /// The thread's watch: ended as the activation ends.
    pub(crate) watch: Arc<Watch>,
}

fn call_kind(call: &Value) -> &str {
    call.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// The calls answered at once (journaled with their value) rather than
/// performed by the driver.
fn is_sync(kind: &str) -> bool {
    matches!(kind, "now" | "random" | "uuid")
}

/// A new value for a call answered at once (`now` is `now_ms`).
fn fresh(kind: &str, now_ms: u64) -> Value {
    match kind {
        "now" => json!(now_ms),
        // 53 random bits as a float in [0, 1), like Math.random; the uuid
        // crate's generator is already here, so no other one is pulled in.
        // A v4 UUID's version (bits 76-79) and variant (bits 62-63) are
        // fixed: the top 48 bits and the low 5 are random.
        "random" => {
            let v = uuid::Uuid::new_v4().as_u128();
            let bits = ((v >> 80) << 5) | (v & 0x1f);
            json!(bits as f64 / (1u64 << 53) as f64)
        }
        _ => json!(uuid::Uuid::new_v4().to_string()),
    }
}

/// Build the script context in `ctx` with the prelude: the globals every
/// evaluation of a module runs with (the journaled `Date` and
/// `Math.random`, `console`, no `performance`, `WeakRef` or
/// `FinalizationRegistry`), at store time as at run
/// time, and the handle the runner drives an activation with.
fn prelude<'js>(
    ctx: &Ctx<'js>,
    native: Function<'js>,
    process_id: &str,
    args: &Value,
) -> rquickjs::Result<Object<'js>> {
    let factory: Function = ctx.eval(PRELUDE)?;
    let js_args = ctx.json_parse(args.to_string())?;
    factory.call((native, process_id, js_args))
}

/// The context calls of a module's top level at store time, when no
/// process runs it: the clock and randomness answer fresh values, as a
/// first run would, and `console` lines are dropped (nothing is written
/// anywhere). The top level has no `ctx`, so nothing else is asked.
fn loading_native(kind: &str, calls: u64, max_calls: u64) -> String {
    // `calls` counts those an activation journals: a top level making more
    // than a process may could never run.
    if calls > max_calls && matches!(kind, "now" | "random" | "uuid" | "log") {
        let message = format!(
            "the module's top level makes more than {max_calls} journaled calls (the script call limit, \
             `cairn serve --script-max-calls`), so no activation of it could run"
        );
        return json!({"error": {"class": "script", "code": "journal_limit", "message": message}}).to_string();
    }
    match kind {
        "now" | "random" | "uuid" => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            json!({ "sync": fresh(kind, now_ms) }).to_string()
        }
        "log" => "{}".into(),
        "cancelled" => "false".into(),
        other => {
            let message = format!("ctx.{other} cannot be called while the module loads");
            json!({"error": {"class": "cairn", "code": "invalid_request", "message": message}}).to_string()
        }
    }
}

thread_local! {
    /// The specifier of the last import this thread's engine refused.
    static REFUSED_IMPORT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Why an import of `specifier` fails.
fn import_refused(specifier: &str) -> String {
    format!(
        "scripts cannot import modules (SPEC §14), and this one imports {}",
        Value::String(specifier.to_string())
    )
}

/// The runtime's module resolver and loader: scripts have no imports, so
/// every import (a static one when the module is compiled, `import()` when it
/// runs) throws a `ReferenceError` saying so and naming the specifier, rather
/// than the engine's "could not load module".
struct NoImports;

impl NoImports {
    fn refuse(ctx: &Ctx<'_>, specifier: &str) -> rquickjs::Error {
        REFUSED_IMPORT.with(|r| *r.borrow_mut() = Some(specifier.to_string()));
        rquickjs::Exception::throw_reference(ctx, &import_refused(specifier))
    }
}

impl rquickjs::loader::Resolver for NoImports {
    fn resolve<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        _base: &str,
        name: &str,
        _attributes: Option<rquickjs::loader::ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        Err(Self::refuse(ctx, name))
    }
}

impl rquickjs::loader::Loader for NoImports {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<rquickjs::loader::ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, rquickjs::module::Declared>> {
        Err(Self::refuse(ctx, name))
    }
}

/// Where the import of `specifier` that QuickJS refused first is in
/// `source` (1-based line and byte column of its opening quote), found
/// without parsing JavaScript here: each place the quoted specifier is
/// written, in order, is replaced by another name and the module compiled
/// again; the first whose new name the engine then refuses is the import
/// (one in a comment or a string changes nothing). Only the first few
/// places are tried.
fn import_at(rt: &Runtime, source: &str, specifier: &str) -> Option<(u64, u64)> {
    let mut places: Vec<usize> = Vec::new();
    for q in ['"', '\''] {
        let quoted = format!("{q}{specifier}{q}");
        places.extend(source.match_indices(&quoted).map(|(at, _)| at));
    }
    places.sort_unstable();
    let spans = places.into_iter().map(|at| (at + 1, specifier.len(), at));
    first_place(rt, source, spans, |probe, _| {
        REFUSED_IMPORT.with(|r| r.borrow_mut().take()).as_deref() == Some(probe)
    })
}

/// Where the local name of an `export { name }` that names no variable is
/// in `source` (QuickJS says which name, not where), found as
/// [`import_at`] finds an import: each place the name is written as a word
/// is renamed in turn, and the first whose new name the engine then says
/// does not exist is the export.
fn missing_export_at(rt: &Runtime, source: &str, name: &str) -> Option<(u64, u64)> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
    let spans = source
        .match_indices(name)
        .filter(|(at, _)| !word(source[..*at].chars().next_back()) && !word(source[at + name.len()..].chars().next()))
        .map(|(at, _)| (at, name.len(), at));
    first_place(rt, source, spans, |probe, message| {
        message == Some(format!("exported variable '{probe}' does not exist").as_str())
    })
}

/// The 1-based line and byte column of the first of `spans` (the span's
/// start and length, and the place to report) that, written as a probe
/// name and compiled, makes `names_probe(probe, compile error message)`
/// true. Only the first few spans are tried.
fn first_place(
    rt: &Runtime,
    source: &str,
    spans: impl Iterator<Item = (usize, usize, usize)>,
    names_probe: impl Fn(&str, Option<&str>) -> bool,
) -> Option<(u64, u64)> {
    const TRIES: usize = 16;
    let probe = format!("cairnProbe{}", uuid::Uuid::new_v4().simple());
    spans.take(TRIES).find_map(|(start, len, at)| {
        let probed = format!("{}{probe}{}", &source[..start], &source[start + len..]);
        let context = Context::full(rt).ok()?;
        REFUSED_IMPORT.with(|r| r.borrow_mut().take());
        let found = context.with(|ctx| {
            let _ = Module::declare(ctx.clone(), MODULE_NAME, probed);
            let thrown = ctx.catch();
            let message = thrown.as_exception().and_then(|e| e.message());
            names_probe(&probe, message.as_deref())
        });
        found.then(|| {
            let line = source[..at].matches('\n').count() as u64 + 1;
            let line_start = source[..at].rfind('\n').map_or(0, |n| n + 1);
            (line, (at - line_start) as u64 + 1)
        })
    })
}

struct State {
    journal: Journal,
    max_calls: u64,
    n: u64,
    logs: u64,
    entries: Vec<Entry>,
    pending: BTreeMap<u64, Value>,
    /// Pending calls whose results the journal holds: the replay delivers
    /// them itself, in the batches and order they were first delivered.
    held: BTreeSet<u64>,
    /// How far into `journal.order` the replay has delivered.
    replayed: usize,
    /// How many journaled results the replay has delivered, in order or not.
    delivered: usize,
    signal_counts: HashMap<String, u64>,
    fatal: Option<(String, String)>,
    cancelled: bool,
    /// How many times the script read `ctx.cancelled`.
    cancel_reads: u64,
    /// The read that first answered true, until the next call or log line
    /// records it (`CANCEL_SEEN`).
    cancel_seen: Option<u64>,
    ctx: ToolContext,
    stop: Arc<AtomicU8>,
    /// The bytes of `entries` (each call's JSON, held as the entry and its
    /// pending copy), counted against the heap limit ([`Heap`]) until the
    /// step hands them to the driver: a script cannot pile calls up outside
    /// the heap it is limited to.
    outside: Arc<std::sync::atomic::AtomicUsize>,
}

impl State {
    /// Whether the journal holds more than this activation has replayed:
    /// calls or log lines it has not made again, or results not delivered.
    fn replaying(&self) -> bool {
        self.n < self.journal.last_n || self.logs < self.journal.logs || self.delivered < self.journal.order.len()
    }

    fn set_fatal(&mut self, code: &str, message: String) -> String {
        if self.fatal.is_none() {
            self.fatal = Some((code.to_string(), message.clone()));
        }
        self.stop.store(FATAL, Ordering::SeqCst);
        json!({"error": {"class": "script", "code": code, "message": message}}).to_string()
    }

    fn over_the_limit(&self) -> String {
        format!(
            "the script made more than {} journaled calls (every context call counts, and so does \
             every `ctx.log` or `console` line and every clock or randomness read: `Date.now()`, \
             `new Date()`, `Date()`, `Math.random()`, `ctx.now()`, `ctx.random()`, `ctx.uuid()`; \
             `cairn serve --script-max-calls` sets the limit)",
            self.max_calls
        )
    }

    fn fresh(&self, kind: &str) -> Value {
        fresh(kind, self.ctx.now_ms())
    }

    /// The step's entries, handed on: they are no longer held here.
    fn take_entries(&mut self) -> Vec<Entry> {
        self.outside.store(0, Ordering::Relaxed);
        std::mem::take(&mut self.entries)
    }

    /// A context call `kind` with its arguments as JSON text; `refusal`
    /// when the prelude refuses the call, sent as an older run made and
    /// journaled it (the prelude's `refused`).
    fn native(&mut self, kind: &str, payload: &str, refusal: Option<String>) -> String {
        let refusal = refusal.map(cairn_core::CairnError::InvalidRequest);
        match kind {
            // Live, not only at the script's next call: a synchronous loop
            // that polls `ctx.cancelled` sees the request as soon as the run
            // is stopped for it.
            // A replay answers as the journaling run was answered
            // (`CANCEL_SEEN`), though the cancellation is in force from its
            // start: a script that branches on it replays the same calls.
            "cancelled" => {
                self.cancel_reads += 1;
                if !self.cancelled {
                    let seen = match self.journal.cancel_seen {
                        Some(read) => self.cancel_reads >= read,
                        None if self.replaying() => false,
                        None => matches!(self.ctx.stop_reason(), Some(cairn_core::StopReason::Cancelled { .. })),
                    };
                    if seen {
                        self.cancelled = true;
                        self.cancel_seen = Some(self.cancel_reads);
                    }
                }
                return self.cancelled.to_string();
            }
            // A log line is journaled, so it counts against the journaled
            // calls. It is never lost: one too large to journal is cut to
            // fit and marked as cut (the prelude made it well-formed). Both
            // depend on nothing but the script, so a replay counts and cuts
            // alike, and writes the same event.
            "log" => {
                if let Some((code, message)) = &self.fatal {
                    return json!({"error": {"class": "script", "code": code, "message": message}}).to_string();
                }
                if self.n + self.logs >= self.max_calls {
                    return self.set_fatal("journal_limit", self.over_the_limit());
                }
                let mut p: Value = match parse_call(payload) {
                    Ok(p) => p,
                    Err(refusal) => return refusal,
                };
                if let Some(m) = p.as_object_mut() {
                    m.insert("ordinal".into(), json!(self.logs + 1));
                    if let Some(read) = self.cancel_seen.take() {
                        m.insert(CANCEL_SEEN.into(), json!(read));
                    }
                }
                let kept = fit_log_line(&mut p);
                self.logs += 1;
                if self.logs > self.journal.logs {
                    self.outside.fetch_add(kept, Ordering::Relaxed);
                    self.entries.push(Entry::Log(self.logs, p));
                }
                return "{}".into();
            }
            _ => {}
        }
        if let Some((code, message)) = &self.fatal {
            return json!({"error": {"class": "script", "code": code, "message": message}}).to_string();
        }
        // Arguments no decoder reads back (nested past its limit, a string
        // holding a lone surrogate) are refused as a call too large is: the
        // call counts, and its result names it by the digest of its text, so
        // a replay that makes another call there fails `nondeterminism`.
        let (mut call, unreadable) = match serde_json::from_str::<Value>(payload) {
            Ok(call) => (call, None),
            Err(e) => (json!({}), Some((unreadable_call(&e), e.to_string()))),
        };
        self.n += 1;
        let n = self.n;
        // A journal written before such calls counted holds the next call
        // at `n`: this one is refused uncounted and in the words it was then,
        // so the replay goes on as that run did (a new journal holds no call
        // where one was refused, only its result).
        if let Some((_, said)) = &unreadable {
            // The next call there may itself have been refused (too large):
            // then only its result stands at `n`, and it is no refusal of
            // unreadable arguments (which only a newer journal holds).
            let other_refused = self.journal.results.get(&n).is_some_and(|r| {
                r.pointer(REFUSED_DIGEST).is_some()
                    && !r
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .is_some_and(|m| m.contains(UNREADABLE))
            });
            if self.journal.calls.contains_key(&n) || other_refused {
                self.n -= 1;
                let message = format!("{UNREADABLE}: {said}");
                return json!({"error": {"class": "cairn", "code": "invalid_request", "message": message}}).to_string();
            }
        }
        let unreadable = unreadable.map(|(e, _)| e);
        if n + self.logs > self.max_calls {
            return self.set_fatal("journal_limit", self.over_the_limit());
        }
        let Some(map) = call.as_object_mut() else {
            return self.set_fatal("invalid_call", format!("call {n} (`{kind}`) is not an object"));
        };
        if kind == "wait_signal" {
            let name = map.get("name").and_then(Value::as_str).unwrap_or("").to_string();
            let k = self.signal_counts.entry(name).or_insert(0);
            *k += 1;
            map.insert("ordinal".into(), json!(*k));
        }
        map.insert("n".into(), json!(n));
        map.insert("kind".into(), json!(kind));
        if let Some(read) = self.cancel_seen.take() {
            map.insert(CANCEL_SEEN.into(), json!(read));
        }
        // A journal written before non-finite durations travelled as text
        // holds `null` where the call now says `"NaN"` or `"Infinity"`: the
        // same call, which keeps its journaled meaning.
        if let Some(journaled) = self.journal.calls.get(&n) {
            if *journaled != call && journaled_non_finite(journaled, &call) {
                call = journaled.clone();
            }
        }
        match self.journal.calls.get(&n) {
            Some(journaled) if *journaled != call => {
                let message = format!("call {n} replayed as {call} but the journal has {journaled}");
                return self.set_fatal("nondeterminism", message);
            }
            Some(_) => {}
            // A call refused before it was journaled (too large) has only its
            // result, which names the call by its digest (results journaled
            // before it did are taken as they are).
            None => match self.journal.results.get(&n).map(|r| r.pointer(REFUSED_DIGEST)) {
                Some(Some(digest)) if *digest != json!(refused_digest(&call, unreadable.as_ref(), payload)) => {
                    let message = format!("call {n} replayed as {call} but the journal refused another call there");
                    return self.set_fatal("nondeterminism", message);
                }
                Some(Some(_)) => call = refused_stub(n, kind),
                Some(None) => {}
                None => match unreadable
                    .clone()
                    .or_else(|| too_large(kind, payload, &call))
                    .or(refusal)
                {
                    Some(error) => {
                        self.entries.push(Entry::Refused {
                            n,
                            digest: refused_digest(&call, unreadable.as_ref(), payload),
                            cancel_seen: call.get(CANCEL_SEEN).and_then(Value::as_u64),
                            error,
                        });
                        call = refused_stub(n, kind);
                    }
                    None => {
                        self.outside
                            .fetch_add(payload.len().saturating_mul(2), Ordering::Relaxed);
                        self.entries.push(Entry::Call(n, call.clone()));
                    }
                },
            },
        }
        if let Some(result) = self.journal.results.get(&n) {
            if is_sync(kind) {
                return answer(kind, result);
            }
            // Answered at the next quiet point, as the first run was, so a
            // race settles as it did then (`replay_batch`).
            self.pending.insert(n, call);
            self.held.insert(n);
            return json!({ "pending": n }).to_string();
        }
        if is_sync(kind) {
            let value = self.fresh(kind);
            let result = json!({"n": n, "value": value});
            self.entries.push(Entry::Result(n, result.clone()));
            return answer(kind, &result);
        }
        self.pending.insert(n, call);
        json!({ "pending": n }).to_string()
    }
}

/// What a `script.log` line cut to fit ends with, as `shell.output` marks
/// a cut line.
pub(crate) const TRUNCATED_MARK: &str = "…[truncated]";

/// The bytes `c` takes inside a JSON string as serde_json writes it.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The bytes of `s` inside a JSON string, its quotes left out.
fn json_str_len(s: &str) -> usize {
    s.chars().map(json_char_len).sum()
}

/// Cut the `message` of a `script.log` payload `p` so that the payload
/// fits an event ([`cairn_core::validate::MAX_PAYLOAD_BYTES`]): at the last
/// character that fits with the mark, then [`TRUNCATED_MARK`]. A line that
/// fits is kept whole. Answers the payload's size as journaled.
fn fit_log_line(p: &mut Value) -> usize {
    use cairn_core::validate::MAX_PAYLOAD_BYTES;
    let size = |p: &Value| serde_json::to_string(p).map_or(usize::MAX, |t| t.len());
    let whole = size(p);
    let Some(message) = p.get("message").and_then(Value::as_str) else {
        return whole;
    };
    if whole <= MAX_PAYLOAD_BYTES {
        return whole;
    }
    let around = whole - json_str_len(message);
    let room = MAX_PAYLOAD_BYTES.saturating_sub(around + json_str_len(TRUNCATED_MARK));
    let mut used = 0;
    let end = message
        .char_indices()
        .find_map(|(at, c)| {
            used += json_char_len(c);
            (used > room).then_some(at)
        })
        .unwrap_or(message.len());
    let cut = format!("{}{TRUNCATED_MARK}", &message[..end]);
    p["message"] = Value::String(cut);
    size(p)
}

/// A log line's arguments as the prelude serialized them, or the answer
/// that rejects it: JSON nested past what a decoder reads (or a string
/// holding a lone surrogate) is refused, never taken as empty arguments.
fn parse_call(payload: &str) -> std::result::Result<Value, String> {
    serde_json::from_str(payload).map_err(|e| {
        let e = unreadable_call(&e);
        json!({"error": {"class": "cairn", "code": e.code(), "message": rejection_message(&e)}}).to_string()
    })
}

/// What a call's rejection says of `e`: its message, without the words of
/// its code (`invalid request: `), which the rejection's `code` says.
pub(crate) fn rejection_message(e: &cairn_core::CairnError) -> String {
    match e {
        cairn_core::CairnError::InvalidRequest(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Why a call's arguments, as the prelude serialized them, cannot be read
/// back, in words.
fn unreadable_call(e: &serde_json::Error) -> cairn_core::CairnError {
    cairn_core::CairnError::InvalidRequest(format!("{UNREADABLE}: {}", why_unreadable(e)))
}

/// Why JSON text the prelude made from a script's value cannot be read
/// back, in the script's terms (the decoder's own names a place in that
/// text, which the script never saw).
fn why_unreadable(e: &serde_json::Error) -> String {
    if e.to_string().contains("recursion limit") {
        format!(
            "arrays and objects nest more levels deep than a decoder reads, over the {} level limit",
            cairn_core::validate::MAX_JSON_DEPTH
        )
    } else if e.to_string().contains("escape") {
        "a string holds a lone UTF-16 surrogate (a character cut in half), which JSON text cannot carry".into()
    } else {
        e.to_string()
    }
}

/// How the refusal of a call whose arguments cannot be read back begins.
const UNREADABLE: &str = "the call's arguments cannot be journaled";

/// The digest a refused call's result names it by: its arguments' when they
/// were read, else their text's (a replay serializes the same text).
fn refused_digest(call: &Value, unreadable: Option<&cairn_core::CairnError>, payload: &str) -> String {
    match unreadable {
        None => call_digest(call),
        Some(_) => cairn_core::validate::sha256_hex(format!("{call}{payload}").as_bytes()),
    }
}

impl State {
    /// When the function settles having made fewer calls than the journal
    /// holds, the replay took another path than the run that journaled
    /// them (whose effects may have happened): the message naming the first
    /// call it did not make.
    fn unreplayed(&self) -> Option<String> {
        let (n, call) = self.journal.calls.range(self.n + 1..).next()?;
        Some(format!(
            "the replay settled after {} call(s), but the journal has call {n}: {call}",
            self.n
        ))
    }

    /// The next batch of journaled results to deliver at a quiet point: the
    /// next batch of the journal when every call of it is pending, as it was
    /// when first delivered (results without a batch: the longest run of
    /// them whose calls are pending). Otherwise, every pending call the
    /// journal answers, in journal order, so a replay always moves on.
    fn replay_batch(&mut self) -> Vec<(u64, Value)> {
        let order = &self.journal.order;
        let mut end = self.replayed;
        match order.get(end).map(|(_, b)| *b) {
            Some(Some(batch)) => {
                while order.get(end).is_some_and(|(_, b)| *b == Some(batch)) {
                    end += 1;
                }
            }
            Some(None) => {
                while order
                    .get(end)
                    .is_some_and(|(n, b)| b.is_none() && self.held.contains(n))
                {
                    end += 1;
                }
            }
            None => {}
        }
        let next = &order[self.replayed..end];
        let ns: Vec<u64> = if !next.is_empty() && next.iter().all(|(n, _)| self.held.contains(n)) {
            self.replayed = end;
            next.iter().map(|(n, _)| *n).collect()
        } else {
            let held: Vec<u64> = order
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| self.held.contains(n))
                .collect();
            held
        };
        let delivered: Vec<(u64, Value)> = ns
            .into_iter()
            .filter_map(|n| {
                self.held.remove(&n);
                self.pending.remove(&n);
                // Taken, not copied: a delivered answer is not looked up
                // again (its call was made), so the replay frees the
                // journal as it goes.
                Some((n, self.journal.results.remove(&n)?))
            })
            .collect();
        self.delivered += delivered.len();
        // The journaling run took its first true read of `ctx.cancelled` at
        // the step these results answered (the driver journaled it on them):
        // that read is spent, and the calls after it were journaled without
        // it, as a replay must make them.
        if delivered.iter().any(|(_, r)| r.get(CANCEL_SEEN).is_some()) {
            self.cancel_seen = None;
        }
        delivered
    }
}

/// A journaled result as the prelude's answer.
fn answer(kind: &str, result: &Value) -> String {
    match (result.get("error"), is_sync(kind)) {
        (Some(e), _) => json!({ "error": e }).to_string(),
        (None, true) => json!({"sync": result.get("value").cloned().unwrap_or(Value::Null)}).to_string(),
        (None, false) => json!({"value": result.get("value").cloned().unwrap_or(Value::Null)}).to_string(),
    }
}

/// CPU time of the calling thread.
pub(crate) fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Interruptions a stopped script may go on past before it is taken to have
/// escaped them (each is 10,000 of the engine's polls of script code run
/// after the stop; the engine's own unwinding runs none).
const ESCAPES_ALLOWED: u32 = 16;

/// A fresh runtime and its context under the limits, its interrupt handler
/// (and its heap) watching `stop` and the CPU time this thread spends from
/// now on.
///
/// QuickJS turns its interruption into a rejection inside a `Promise`
/// executor (and a thenable's `then`), so a script spinning in executors
/// runs on after it is stopped. A script that goes on past
/// [`ESCAPES_ALLOWED`] interruptions is given up: `on_escape` tells the
/// caller how it ended, and this thread is parked for good (it cannot be
/// unwound): it holds its heap, at most the limit, and no processor, and
/// `watch` counts it held ([`crate::MAX_HELD_THREADS`]).
pub(crate) fn runtime(
    limits: &Limits,
    stop: Arc<AtomicU8>,
    outside: Arc<std::sync::atomic::AtomicUsize>,
    on_escape: Box<dyn FnOnce() + Send>,
    watch: Arc<Watch>,
) -> Result<(Runtime, Context), String> {
    // Below the minimum QuickJS cannot build its intrinsics, and a refused
    // allocation while it does is not always checked: never try.
    limits.check()?;
    let started = thread_cpu();
    let cpu = limits.cpu;
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = Runtime::new_with_alloc(Heap {
        inner: rquickjs::allocator::RustAllocator,
        used: 0,
        limit: limits.heap_bytes,
        stop: stop.clone(),
        armed: armed.clone(),
        started,
        cpu,
        since_check: 0,
        after_stop: 0,
        outside,
    })
    .map_err(|e| e.to_string())?;
    rt.set_max_stack_size(1 << 20);
    rt.set_loader(NoImports, NoImports);
    let context = Context::full(&rt).map_err(|e| e.to_string())?;
    armed.store(true, Ordering::SeqCst);
    let mut on_escape = Some(on_escape);
    let mut after_stop = 0u32;
    rt.set_interrupt_handler(Some(Box::new(move || {
        if stop.load(Ordering::Relaxed) != RUN {
            after_stop += 1;
            if after_stop > ESCAPES_ALLOWED {
                watch.hold("it ran on past its stop (inside promise executors), so its thread is parked");
                if let Some(tell) = on_escape.take() {
                    tell();
                }
                loop {
                    std::thread::park();
                }
            }
            return true;
        }
        if thread_cpu().saturating_sub(started) > cpu {
            stop.store(CPU, Ordering::SeqCst);
            return true;
        }
        false
    })));
    Ok((rt, context))
}

/// Run the job queue until it is empty, or the script is stopped.
fn run_jobs(ctx: &Ctx<'_>, stop: &AtomicU8) {
    while stop.load(Ordering::Relaxed) == RUN && ctx.execute_pending_job() {}
}

/// The thrown value of the last failed call, described by the prelude.
fn caught<'js>(ctx: &Ctx<'js>, api: Option<&Object<'js>>) -> Value {
    let thrown = ctx.catch();
    let described = api
        .and_then(|a| a.get::<_, Function>("describe").ok())
        .and_then(|f| f.call::<_, String>((thrown.clone(),)).ok())
        .and_then(|s| serde_json::from_str::<Value>(&s).ok());
    described.unwrap_or_else(|| {
        let message = thrown
            .as_exception()
            .and_then(|e| e.message())
            .or_else(|| thrown.as_string().and_then(|s| s.to_string().ok()))
            .unwrap_or_else(|| "the script threw".into());
        let obj = thrown.as_object();
        let stack = thrown.as_exception().and_then(|e| e.stack());
        let number = |k: &str| obj.and_then(|o| o.get::<_, Option<u32>>(k).ok().flatten());
        json!({
            "code": "uncaught",
            "message": message,
            "stack": stack,
            "line": number("lineNumber"),
            "column": number("columnNumber"),
        })
    })
}

/// An error description (`{code, message, stack}`) as a failure, the limits
/// first; a call of what is not a function says what the script called, and
/// the `ctx` method it may have meant ([`slip`]), from the module's `source`.
fn failure(stop: &AtomicU8, limits: &Limits, source: &str, err: &Value) -> Outcome {
    let mut message = err.get("message").and_then(Value::as_str).unwrap_or("").to_string();
    if stop.load(Ordering::SeqCst) == CPU {
        return Outcome::failure(
            "script",
            "cpu_limit",
            format!(
                "the activation used more than {:?} of CPU (`cairn serve --script-cpu` sets the limit)",
                limits.cpu
            ),
        );
    }
    // The engine's own "out of memory" error carries no code; a script's
    // error that merely says so keeps its own.
    let engines_oom = message == "out of memory" && err.get("code").is_none_or(Value::is_null);
    if stop.load(Ordering::SeqCst) == MEMORY || engines_oom {
        return Outcome::failure(
            "script",
            "memory_limit",
            format!(
                "the activation's heap went over {} bytes (`cairn serve --script-heap-bytes` sets the limit)",
                limits.heap_bytes
            ),
        );
    }
    // A failure's code and message are never blank (as a completion's may
    // not be): a code of spaces is `uncaught`, as an empty one is, and an
    // error thrown without words says so.
    let code = err
        .get("code")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .unwrap_or("uncaught")
        .to_string();
    if message.trim().is_empty() {
        message = BLANK_MESSAGE.to_string();
    }
    if message == NOT_A_FUNCTION && code == "uncaught" {
        if let Some(hint) = err.get("stack").and_then(Value::as_str).and_then(|st| slip(source, st)) {
            message = format!("{NOT_A_FUNCTION}: {hint}");
        }
    }
    Outcome::Failure {
        class: "script".into(),
        code,
        message,
        raw: err
            .get("stack")
            .and_then(Value::as_str)
            .and_then(script_stack)
            .map(|s| json!({ "stack": s })),
    }
}

/// A failure's message when the script threw one that says nothing (`throw
/// new Error()`, `throw ""`).
const BLANK_MESSAGE: &str = "the script threw an error without a message";

/// What QuickJS says of a call of what is not a function, and nothing more.
const NOT_A_FUNCTION: &str = "not a function";

/// The methods of a script's `ctx` (prelude.js).
const CTX_METHODS: [&str; 11] = [
    "tool",
    "start",
    "wait",
    "turn",
    "sleep",
    "waitSignal",
    "emit",
    "now",
    "random",
    "uuid",
    "log",
];

/// What a "not a function" failure adds, read from the module's `source` at
/// the script's top frame of `stack` (`script.js:LINE:COLUMN`, where QuickJS
/// points at the name called, or at the dot before it): `` `.waitsignal` (did you mean
/// `ctx.waitSignal`?) `` for a member a letter or two from a `ctx` method
/// (one for a name under five letters, two past it), the name alone for any
/// other member. Read on the failure only: a script's reads of `ctx` are the
/// engine's own, whatever they name.
fn slip(source: &str, stack: &str) -> Option<String> {
    let frame = stack.lines().find(|l| l.contains(&format!("({MODULE_NAME}:")))?;
    let at = frame.rsplit_once(&format!("{MODULE_NAME}:"))?.1.trim_end_matches(')');
    let (line, column) = at.split_once(':')?;
    let (line, column): (usize, usize) = (line.parse().ok()?, column.parse().ok()?);
    let text: Vec<char> = source.lines().nth(line.checked_sub(1)?)?.chars().collect();
    // QuickJS's column is the name's, or its dot's (on a module's first line).
    let mut start = column.checked_sub(1)?;
    if text.get(start) == Some(&'.') {
        start += 1;
    }
    let is_name = |c: &char| c.is_alphanumeric() || *c == '_' || *c == '$';
    let name: String = text.get(start..)?.iter().take_while(|c| is_name(c)).collect();
    if name.is_empty() || start == 0 || text[start - 1] != '.' || CTX_METHODS.contains(&name.as_str()) {
        return None;
    }
    let lower = name.to_lowercase();
    let meant = CTX_METHODS
        .iter()
        .map(|m| (strsim::levenshtein(&lower, &m.to_lowercase()), *m))
        .min()
        .filter(|(d, _)| *d <= if name.chars().count() >= 5 { 2 } else { 1 });
    Some(match meant {
        Some((_, m)) => format!("`.{name}` (did you mean `ctx.{m}`?)"),
        None => format!("`.{name}`"),
    })
}

/// Where a stack frame of the prelude points: it is evaluated as a script
/// QuickJS names `eval_script`, and the module is `script.js`.
const PRELUDE_FRAME: &str = "(eval_script:";

/// `stack` without the prelude's frames (the engine's own calls into and out
/// of the script, which say nothing about it); `None` when no frame is left.
fn script_stack(stack: &str) -> Option<String> {
    let kept: String = stack
        .lines()
        .filter(|l| !l.contains(PRELUDE_FRAME) && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    (!kept.is_empty()).then_some(kept)
}

/// Compile `source` in a fresh runtime under `limits` and answer its exported
/// functions, or a description of the error (`{code, message, stack}`) and
/// whether it was a syntax error.
///
/// The answer goes to `answer`, once: a top level that escapes its stop
/// (see [`runtime`]) is answered from the interrupt handler, and this thread
/// goes no further.
pub(crate) fn exports(
    limits: &Limits,
    source: &str,
    answer: std::sync::mpsc::Sender<ExportsAnswer>,
    watch: Arc<Watch>,
) {
    watch.begin();
    let _ends = Ends(watch.clone());
    let stop = Arc::new(AtomicU8::new(RUN));
    let on_escape: Box<dyn FnOnce() + Send> = {
        let (answer, stop, limits) = (answer.clone(), stop.clone(), limits.clone());
        Box::new(move || {
            let mut message = top_level_limit(&stop, &limits)
                .unwrap_or_else(|| "its top level ran on past the limit that stopped it".into());
            message.push_str(
                "; it ran on past its stop (inside promise executors): its engine thread is held until the server stops",
            );
            let _ = answer.send(Err((false, json!({"message": message, "stack": null}))));
        })
    };
    let _ = answer.send(compile(limits, source, stop, on_escape, watch));
}

/// What [`exports`] answers: the exported functions, or a description of the
/// error (`{code, message, stack}`) and whether it was a syntax error.
pub(crate) type ExportsAnswer = Result<Vec<String>, (bool, Value)>;

fn compile(
    limits: &Limits,
    source: &str,
    stop: Arc<AtomicU8>,
    on_escape: Box<dyn FnOnce() + Send>,
    watch: Arc<Watch>,
) -> ExportsAnswer {
    let fail = |m: String| (false, json!({"code": "script_engine", "message": m, "stack": null}));
    let (rt, context) = runtime(limits, stop.clone(), Arc::default(), on_escape, watch).map_err(fail)?;
    REFUSED_IMPORT.with(|r| r.borrow_mut().take());
    let answer = context.with(|ctx| {
        // The module loads with the globals an activation gives it.
        let calls = Rc::new(std::cell::Cell::new(0u64));
        let max_calls = limits.max_calls;
        let counted = calls.clone();
        let native = Function::new(
            ctx.clone(),
            move |kind: String, _payload: String, _refusal: rquickjs::function::Opt<String>| -> String {
                if matches!(kind.as_str(), "now" | "random" | "uuid" | "log") {
                    counted.set(counted.get() + 1);
                }
                loading_native(&kind, counted.get(), max_calls)
            },
        )
        .map_err(|e| fail(e.to_string()))?;
        let api = prelude(&ctx, native, "", &Value::Null).map_err(|e| fail(e.to_string()))?;
        let declared = Module::declare(ctx.clone(), MODULE_NAME, source).map_err(|_| (true, caught(&ctx, None)))?;
        let (module, promise) = declared.eval().map_err(|_| (false, caught(&ctx, Some(&api))))?;
        run_jobs(&ctx, &stop);
        match promise.result::<JsValue>() {
            Some(Ok(_)) => {}
            Some(Err(_)) => return Err((false, caught(&ctx, Some(&api)))),
            // Stopped by a limit (said below), or awaiting what nothing
            // could ever settle: a top level has no context to wait on.
            None => {
                return Err((
                    false,
                    json!({"code": "uncaught", "message": PENDING_TOP_LEVEL, "stack": null}),
                ))
            }
        }
        // Past the limit in calls whose refusal the top level need not see
        // (a `console.log` line's is dropped), it is refused all the same.
        if calls.get() > max_calls {
            let message = format!(
                "the module's top level makes more than {max_calls} journaled calls (the script call limit, \
                 `cairn serve --script-max-calls`), so no activation of it could run"
            );
            return Err((
                false,
                json!({"code": "journal_limit", "message": message, "stack": null}),
            ));
        }
        let ns = module.namespace().map_err(|_| (false, caught(&ctx, Some(&api))))?;
        // A class needs `new` and a generator answers an iterator, never the
        // script's value: functions to JavaScript, but none a start can run.
        let runnable: Function = ctx
            .eval(
                r#"(f) => {
                    if (/^class\b/.test(Function.prototype.toString.call(f))) return false;
                    const kind = Object.getPrototypeOf(f)?.constructor?.name;
                    return kind !== "GeneratorFunction" && kind !== "AsyncGeneratorFunction";
                }"#,
            )
            .map_err(|e| fail(e.to_string()))?;
        let mut names = Vec::new();
        for key in ns.keys::<String>() {
            let key = key.map_err(|e| fail(e.to_string()))?;
            let v: JsValue = ns.get(key.as_str()).map_err(|_| (false, caught(&ctx, None)))?;
            if v.is_function() && runnable.call::<_, bool>((v,)).map_err(|e| fail(e.to_string()))? {
                names.push(key);
            }
        }
        names.sort();
        Ok(names)
    });
    // A refused import is named where it is, which the engine does not say
    // (found once this context is done with: the runtime runs one at a time).
    let refused = REFUSED_IMPORT.with(|r| r.borrow_mut().take());
    let answer = match (answer, refused) {
        (Err((true, mut err)), Some(specifier)) => {
            if let (Some((line, column)), Some(m)) = (import_at(&rt, source, &specifier), err.as_object_mut()) {
                m.insert("line".into(), json!(line));
                m.insert("column".into(), json!(column));
            }
            Err((true, err))
        }
        // So is an export of a name no variable has.
        (Err((true, mut err)), None) => {
            let missing = err
                .get("message")
                .and_then(Value::as_str)
                .and_then(|m| m.strip_prefix("exported variable '"))
                .and_then(|m| m.strip_suffix("' does not exist"))
                .map(str::to_string);
            let unplaced = err.get("line").is_none_or(Value::is_null);
            let at = missing
                .filter(|_| unplaced)
                .and_then(|name| missing_export_at(&rt, source, &name));
            if let (Some((line, column)), Some(m)) = (at, err.as_object_mut()) {
                m.insert("line".into(), json!(line));
                m.insert("column".into(), json!(column));
            }
            Err((true, err))
        }
        (answer, _) => answer,
    };
    // A top level stopped by a limit says which one, not where it stopped.
    match (answer, top_level_limit(&stop, limits)) {
        (Err(_), Some(message)) => Err((false, json!({"message": message, "stack": null}))),
        (answer, _) => answer,
    }
}

/// The limit a stopped top level ran past, said as a store refuses it.
fn top_level_limit(stop: &AtomicU8, limits: &Limits) -> Option<String> {
    match stop.load(Ordering::SeqCst) {
        CPU => Some(format!(
            "its top level ran past the CPU limit of {:?} (`cairn serve --script-cpu`)",
            limits.cpu
        )),
        MEMORY => Some(format!(
            "its top level ran past the heap limit of {} bytes (`cairn serve --script-heap-bytes`)",
            limits.heap_bytes
        )),
        _ => None,
    }
}

/// One activation: runs until the function settles or the driver stops answering.
pub(crate) fn activate(setup: Setup, steps: UnboundedSender<Step>, replies: Receiver<Reply>) {
    let Setup {
        limits,
        source,
        process_name,
        args,
        journal,
        ctx: tool_ctx,
        stop,
        watch,
    } = setup;
    watch.begin();
    let _ends = Ends(watch.clone());
    let engine_failure = |m: String| Outcome::failure("runtime", "script_engine", m);
    let end = |o: Outcome, entries: Vec<Entry>| {
        let _ = steps.send(Step {
            entries,
            pending: Vec::new(),
            end: Some(o),
            settled: false,
            saw_cancel: false,
            cancel_seen: None,
        });
    };
    let on_escape: Box<dyn FnOnce() + Send> = {
        let (steps, stop, limits) = (steps.clone(), stop.clone(), limits.clone());
        Box::new(move || {
            let err = json!({"message": "the script ran on past the limit that stopped it", "stack": null});
            let mut end = failure(&stop, &limits, "", &err);
            if let Outcome::Failure { message, .. } = &mut end {
                message.push_str(
                    "; it ran on past its stop (inside promise executors): its engine thread is held until the server stops",
                );
            }
            let _ = steps.send(Step {
                entries: Vec::new(),
                pending: Vec::new(),
                end: Some(end),
                settled: false,
                saw_cancel: false,
                cancel_seen: None,
            });
        })
    };
    let outside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (_rt, context) = match runtime(&limits, stop.clone(), outside.clone(), on_escape, watch) {
        Ok(built) => built,
        Err(e) => return end(engine_failure(e), Vec::new()),
    };
    let process_id = tool_ctx.process_id().to_string();
    let state = Rc::new(RefCell::new(State {
        journal,
        max_calls: limits.max_calls,
        n: 0,
        logs: 0,
        entries: Vec::new(),
        pending: BTreeMap::new(),
        held: BTreeSet::new(),
        replayed: 0,
        delivered: 0,
        signal_counts: HashMap::new(),
        fatal: None,
        cancelled: false,
        cancel_reads: 0,
        cancel_seen: None,
        ctx: tool_ctx,
        stop: stop.clone(),
        outside,
    }));
    // How a call that threw ends the activation: a limit the context's calls
    // hit (`journal_limit`, say) interrupts the script, and QuickJS reports
    // the interruption as the thrown value; the limit is what ended it.
    let thrown = |err: &Value| match state.borrow().fatal.clone() {
        Some((code, message)) => Outcome::failure("script", code, message),
        None => failure(&stop, &limits, &source, err),
    };
    context.with(|ctx| {
        let native = {
            let state = state.clone();
            Function::new(
                ctx.clone(),
                move |kind: String, payload: String, refusal: rquickjs::function::Opt<String>| -> String {
                    state.borrow_mut().native(&kind, &payload, refusal.0)
                },
            )
        };
        let api = match native.and_then(|native| prelude(&ctx, native, process_id.as_str(), &args)) {
            Ok(api) => api,
            Err(_) => {
                let err = caught(&ctx, None);
                return end(failure(&stop, &limits, &source, &err), Vec::new());
            }
        };
        // The module's top level runs as the function does: what it throws
        // is described alike, and a limit its calls hit is what ended it.
        let setup = (|| -> rquickjs::Result<Option<Object<'_>>> {
            let declared = Module::declare(ctx.clone(), MODULE_NAME, source.as_str())?;
            let (module, promise) = declared.eval()?;
            run_jobs(&ctx, &stop);
            match promise.result::<JsValue>() {
                Some(Ok(_)) => module.namespace().map(Some),
                Some(Err(_)) => Err(rquickjs::Error::Exception),
                None => Ok(None),
            }
        })();
        let ns = match setup {
            Ok(Some(ns)) => ns,
            Ok(None) => {
                let err = json!({"code": "uncaught", "message": PENDING_TOP_LEVEL, "stack": null});
                let entries = state.borrow_mut().take_entries();
                return end(thrown(&err), entries);
            }
            Err(_) => {
                let err = caught(&ctx, Some(&api));
                let entries = state.borrow_mut().take_entries();
                return end(thrown(&err), entries);
            }
        };
        let start = api
            .get::<_, Function>("start")
            .and_then(|f| f.call::<_, ()>((ns, process_name.as_str())));
        if start.is_err() {
            let err = caught(&ctx, Some(&api));
            let entries = state.borrow_mut().take_entries();
            return end(thrown(&err), entries);
        }
        let (Ok(deliver), Ok(settled)) = (api.get::<_, Function>("deliver"), api.get::<_, Function>("settled")) else {
            return end(
                engine_failure("the prelude lost its deliver or settled function".into()),
                Vec::new(),
            );
        };
        loop {
            run_jobs(&ctx, &stop);
            // The journal's answers first, batch by batch, each followed by
            // what it set off, until the replay reaches what was never
            // answered, or the function settles: the run that journaled
            // them ended there, and what it journaled after (the failures of
            // calls the function did not await) was never delivered, so a
            // handler the script left on such a call runs in neither run.
            loop {
                if settled.call::<_, bool>(()).unwrap_or(false) {
                    break;
                }
                let batch = state.borrow_mut().replay_batch();
                if batch.is_empty() {
                    break;
                }
                for (n, result) in batch {
                    if deliver.call::<_, ()>((n, result.to_string())).is_err() {
                        let err = caught(&ctx, Some(&api));
                        let entries = state.borrow_mut().take_entries();
                        return end(thrown(&err), entries);
                    }
                }
                run_jobs(&ctx, &stop);
            }
            let outcome = api
                .get::<_, Function>("outcome")
                .and_then(|f| f.call::<_, Option<String>>(()));
            let (entries, pending, fatal) = {
                let mut s = state.borrow_mut();
                (
                    s.take_entries(),
                    s.pending.iter().map(|(n, c)| (*n, c.clone())).collect::<Vec<_>>(),
                    s.fatal.clone(),
                )
            };
            let mut settled = false;
            let end_with = if let Some((code, message)) = fatal {
                Some(Outcome::failure("script", code, message))
            } else if matches!(stop.load(Ordering::SeqCst), CPU | MEMORY) {
                Some(failure(&stop, &limits, &source, &json!({})))
            } else {
                match outcome {
                    Ok(Some(_)) if state.borrow().unreplayed().is_some() => {
                        let message = state.borrow().unreplayed().unwrap_or_default();
                        Some(Outcome::failure("script", "nondeterminism", message))
                    }
                    Ok(Some(json)) => {
                        settled = true;
                        // A value nested past what a decoder reads (or holding
                        // a lone surrogate) is no value cairn could store:
                        // the script's result is not JSON (what it throws is
                        // made storable before it gets here).
                        match serde_json::from_str::<Value>(&json) {
                            Err(e) => Some(Outcome::failure(
                                "script",
                                "invalid_result",
                                format!("the returned value is not JSON cairn can store: {}", why_unreadable(&e)),
                            )),
                            Ok(v) => match (v.get("ok"), v.get("err")) {
                                // Nested past what a payload may be: not JSON
                                // cairn stores either, said the same way.
                                // Too large is no value cairn stores either.
                                (Some(ok), _) => match cairn_core::validate::check_terminal_payload(
                                    || "the returned value, as its process's outcome,".to_string(),
                                    &cairn_core::fold::terminal_payload(&Outcome::success(ok.clone()), None),
                                ) {
                                    // The code says what is wrong; the message
                                    // needs no "invalid request:" before it.
                                    Err(cairn_core::CairnError::InvalidRequest(m)) => {
                                        Some(Outcome::failure("script", "invalid_result", m))
                                    }
                                    Err(e) => Some(Outcome::failure("script", "invalid_result", e.to_string())),
                                    Ok(()) => Some(Outcome::success(ok.clone())),
                                },
                                (None, Some(err)) => Some(failure(&stop, &limits, &source, err)),
                                _ => Some(engine_failure("the script settled without a value".into())),
                            },
                        }
                    }
                    Ok(None) if pending.is_empty() => Some(Outcome::failure(
                        "script",
                        "stuck",
                        "the function awaits something no context call will ever settle",
                    )),
                    Ok(None) => None,
                    Err(_) => {
                        let err = caught(&ctx, Some(&api));
                        Some(failure(&stop, &limits, &source, &err))
                    }
                }
            };
            let done = end_with.is_some();
            let (saw_cancel, cancel_seen) = {
                let mut s = state.borrow_mut();
                (s.cancelled, s.cancel_seen.take())
            };
            if steps
                .send(Step {
                    entries,
                    pending,
                    end: end_with,
                    settled,
                    saw_cancel,
                    cancel_seen,
                })
                .is_err()
                || done
            {
                return;
            }
            let Ok(reply) = replies.recv() else { return };
            let Reply::Answers(answers) = reply;
            for (n, result) in answers {
                state.borrow_mut().pending.remove(&n);
                if deliver.call::<_, ()>((n, result.to_string())).is_err() {
                    let err = caught(&ctx, Some(&api));
                    return end(failure(&stop, &limits, &source, &err), Vec::new());
                }
            }
        }
    })
}

/// Whether `call` is `journaled` but for a duration (`ms`, `timeout_ms`)
/// the journal holds as `null` and the call as a non-finite number's text:
/// how such a duration travelled before it was refused.
fn journaled_non_finite(journaled: &Value, call: &Value) -> bool {
    ["ms", "timeout_ms"].into_iter().any(|key| {
        let non_finite = call
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|s| matches!(s, "NaN" | "Infinity" | "-Infinity"));
        if !non_finite || journaled.get(key) != Some(&Value::Null) {
            return false;
        }
        let mut as_before = call.clone();
        as_before[key] = Value::Null;
        as_before == *journaled
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once the script is stopped, the heap gives small blocks (what the
    /// engine's own unwinding needs) up to [`STOPPED_ALLOCATIONS`], then
    /// refuses every block: a built-in looping without polls that
    /// allocates only small blocks (atoms, past index 2^31) fails then.
    #[test]
    fn past_the_stop_small_blocks_are_given_then_refused() {
        let stop = Arc::new(AtomicU8::new(RUN));
        let mut heap = Heap {
            inner: rquickjs::allocator::RustAllocator,
            used: 0,
            limit: 64 << 20,
            stop: stop.clone(),
            armed: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            started: thread_cpu(),
            cpu: Duration::from_secs(3600),
            since_check: 0,
            after_stop: 0,
            outside: Arc::default(),
        };
        use rquickjs::allocator::Allocator;
        let block = heap.alloc(64);
        assert!(!block.is_null(), "running: given");
        // SAFETY: `block` came from this heap.
        unsafe { heap.dealloc(block) };
        stop.store(CPU, Ordering::SeqCst);
        assert!(
            heap.alloc(ENGINE_ARENA_BYTES + 1).is_null(),
            "stopped: a large block is refused"
        );
        for i in 1..STOPPED_ALLOCATIONS {
            let block = heap.alloc(64);
            assert!(!block.is_null(), "stopped: small block {i} is given");
            // SAFETY: `block` came from this heap.
            unsafe { heap.dealloc(block) };
        }
        assert!(heap.alloc(64).is_null(), "past the bound: refused");
        assert!(heap.calloc(1, 8).is_null(), "past the bound: refused");
    }

    /// A log line past the payload limit is cut at a whole character, as
    /// close to the limit as it goes, and marked; one that fits is kept.
    #[test]
    fn a_log_line_is_cut_to_fit_at_a_whole_character() {
        use cairn_core::validate::MAX_PAYLOAD_BYTES;
        let mut fits = json!({"message": "short", "ordinal": 1});
        let size = fit_log_line(&mut fits);
        assert_eq!(
            (fits["message"].as_str(), size),
            (Some("short"), fits.to_string().len())
        );
        for unit in ["é", "😀", "\u{1}", "a\"", "ab"] {
            let line = unit.repeat(MAX_PAYLOAD_BYTES);
            let mut p = json!({"message": line, "ordinal": 7, "cancel_seen": 2});
            let size = fit_log_line(&mut p);
            let kept = p["message"]
                .as_str()
                .unwrap()
                .strip_suffix(TRUNCATED_MARK)
                .expect("marked");
            assert!(line.starts_with(kept), "{unit:?}: cut from its start");
            assert_eq!(size, p.to_string().len(), "{unit:?}");
            assert!(
                size <= MAX_PAYLOAD_BYTES && size + 6 > MAX_PAYLOAD_BYTES,
                "{unit:?}: {size}"
            );
            assert!(cairn_core::validate::check_size("line", &p).is_ok(), "{unit:?}");
        }
    }

    /// A journal from before non-finite durations were refused replays: its
    /// `null` and the call's `"Infinity"` are the same call; any other
    /// difference is not.
    #[test]
    fn a_journaled_null_duration_is_the_non_finite_one() {
        let journaled = json!({"name": "go", "timeout_ms": null, "ordinal": 1, "n": 1, "kind": "wait_signal"});
        let call = json!({"name": "go", "timeout_ms": "Infinity", "ordinal": 1, "n": 1, "kind": "wait_signal"});
        assert!(journaled_non_finite(&journaled, &call));
        let slept = json!({"ms": null, "n": 2, "kind": "sleep"});
        assert!(journaled_non_finite(
            &slept,
            &json!({"ms": "NaN", "n": 2, "kind": "sleep"})
        ));
        let other = json!({"name": "stop", "timeout_ms": "Infinity", "ordinal": 1, "n": 1, "kind": "wait_signal"});
        assert!(!journaled_non_finite(&journaled, &other));
        let finite = json!({"name": "go", "timeout_ms": 5, "ordinal": 1, "n": 1, "kind": "wait_signal"});
        assert!(!journaled_non_finite(&journaled, &finite));
    }
}
