//! `docs/reference.md`, rendered from the code: the routes and their answers
//! (from the OpenAPI document the server serves), every error code with its
//! HTTP status (from [`crate::server::api::status_of`]), the built-in tools and
//! their arguments (from `cairn_tools::args_schema`), the event types cairn writes
//! (from `cairn_core::events`) and the wire shapes. A test compares the file with
//! [`render`], so it cannot drift.

use std::fmt::Write;

use cairn_core::{CairnError, ProcessStatus, Tombstone};
use serde_json::Value;

use crate::server::api::status_of;
use crate::server::openapi;

/// Every core error, one of each code (the messages are placeholders).
fn core_errors() -> Vec<(CairnError, &'static str)> {
    let s = || "x".to_string();
    vec![
        (
            CairnError::InvalidId(s()),
            "an id is empty, over 256 bytes (a schedule's over 235: its fires add `@` and a time; a script's over 248: its calls' children add `/` and a number; a signal id over 248 less its signal name's length: its replay key `signal:{name}:{signal_id}` is held to 256), `.` or `..`, or holds a control character; or a session id holds `/frame:`; or a session's start takes a form cairn gives its own starts: a schedule's fire (`NAME@` and 13 or more digits), a script's or turn's child (`PARENT/N`, `PARENT/STEP.K`); or a module ref is not `module:sha256:` and 64 lowercase hex digits",
        ),
        (
            CairnError::InvalidRequest(s()),
            "the request is malformed or its content invalid (also: a tool's args; a payload, input, result or env spec nesting arrays and objects more than 64 levels deep, which a stored record could not be read back with)",
        ),
        (
            CairnError::InvalidEventTypeName(s()),
            "an event type name is not 1-128 of `[A-Za-z0-9._-]`",
        ),
        (
            CairnError::DuplicateEventType(s()),
            "a registration declares an event type twice",
        ),
        (
            CairnError::ReservedEventType(s()),
            "an append of a type only cairn writes (`process.started`, `process.waiting`, `process.resumed`, \
             `process.cancel_requested`, `process.abandon_requested`, `process.abandoned`, `script.*`, and \
             `turn.*` on a session turn), an append without the run's lease of a type the process's own \
             tool declares (`shell.output` of a `shell` call), a registration declaring a `process.*` or `script.*` type, or a script's `ctx.emit` of a \
             `process.*`, `script.*`, `signal.*` or `turn.*` type",
        ),
        (
            CairnError::InvalidSchema {
                event_type: s(),
                message: s(),
            },
            "a payload schema does not compile",
        ),
        (
            CairnError::InvalidSignalName(s()),
            "a signal name is not 1-128 of `[A-Za-z0-9_-]`",
        ),
        (
            CairnError::InvalidSemantics {
                event_type: s(),
                message: s(),
            },
            "an event type's semantics are invalid (also: a start declaring a terminal type in state `abandoned`, which only cairn writes; a start declaring a type what runs it writes, such as `turn.response` or `shell.output`, made terminal or under another payload schema: it may only be given wake semantics)",
        ),
        (
            CairnError::RegistrationConflict {
                id: s(),
                differs: vec![],
            },
            "the id exists with a different registration (or is not yours to see)",
        ),
        (
            CairnError::UnknownProcess(s()),
            "no such process (or, to a session token, not granted to its session, nor held by it when it was pruned)",
        ),
        (
            CairnError::NoLongerRetained(Box::new(Tombstone {
                id: s(),
                status: ProcessStatus::Completed,
                terminal_at_ms: 0,
                pruned_at_ms: 0,
            })),
            "the process was pruned; the body carries its tombstone (to a session token, only for a process its session as a whole held a grant on when it was pruned; one only an agent frame held answers `unknown_process`)",
        ),
        (
            CairnError::UndeclaredEventType {
                process_id: s(),
                event_type: s(),
            },
            "the process did not declare that event type (a process declares its types when it starts, \
             in the start request's `event_types`)",
        ),
        (
            CairnError::SchemaViolation {
                event_type: s(),
                message: s(),
            },
            "the payload fails its type's schema",
        ),
        (
            CairnError::PayloadTooLarge {
                what: s(),
                size: 0,
                limit: 0,
            },
            "a payload, input or body is over its limit",
        ),
        (
            CairnError::ReplayConflict {
                process_id: s(),
                key: s(),
            },
            "a replay key or signal id repeated with another payload",
        ),
        (
            CairnError::ProcessTerminal(s()),
            "the process has ended; nothing more is appended",
        ),
        (
            CairnError::LeaseHeld {
                process_id: s(),
                expires_at_ms: 0,
            },
            "another worker holds the lease",
        ),
        (CairnError::LeaseFenced(s()), "the lease is no longer the live one"),
        (
            CairnError::NotClaimable {
                process_id: s(),
                reason: s(),
            },
            "the process cannot be claimed",
        ),
        (
            CairnError::NotExternallyOwned(s()),
            "only externally owned processes are completed from outside",
        ),
        (
            CairnError::TerminalNeedsAuthority(s()),
            "a terminal event appended without the run's live lease to a process that is not externally owned (only its run ends it)",
        ),
        (
            CairnError::InvalidOutcome {
                event_type: s(),
                message: s(),
            },
            "the outcome is not a valid outcome",
        ),
        (
            CairnError::InvalidFilter(s()),
            "an unknown filter key, a wrong value, or two lenses at once",
        ),
        (CairnError::InvalidPage(s()), "a page size (`limit`) that is not a whole number from 1 to 1000"),
        (CairnError::UnknownWake(s()), "no such wake in that session"),
        (CairnError::UnknownEnv(s()), "no such execution environment"),
        (
            CairnError::CorruptEnv {
                env_ref: s(),
                message: s(),
            },
            "a stored environment does not match its address",
        ),
        (
            CairnError::UnknownTool(s()),
            "the server runs no tool of that name (`shell` needs `--allow-shell`)",
        ),
        (
            CairnError::UnknownModel(s()),
            "a session turn names a model the server was not given (`--model`)",
        ),
        (
            CairnError::UnknownModule(s()),
            "no script module is stored under that ref",
        ),
        (
            CairnError::InvalidModule(s()),
            "the module does not compile (the message names line and column), exports no function a \
             script can run, or exports one under a name no process can have (empty, over 256 bytes, `.` \
             or `..`, or holding a control character)",
        ),
        (
            CairnError::UnknownExport {
                module_ref: s(),
                process_name: s(),
                exports: Vec::new(),
            },
            "the module exports no function of that name (a class or a generator is none); the message \
             names the first 20 it does export",
        ),
        (CairnError::UnknownSchedule(s()), "no schedule is stored under that id"),
        (
            CairnError::ScheduleConflict { id: s(), differs: s() },
            "the schedule id exists with a different definition",
        ),
        (
            CairnError::InvalidDisposition(s()),
            "the input cannot have that disposition (a script is `rerunnable`; only `external` input is `externally_owned`, and it is nothing else)",
        ),
        (CairnError::Timeout(s()), "an operation ran out of time"),
        (
            CairnError::storage("x"),
            "the database failed; the request changed nothing",
        ),
        (
            CairnError::Unavailable(s()),
            "nothing was done; retry (also: too many connections, database not ready, a PostgreSQL server that did not answer a read or a not yet sent write within `call_timeout`)",
        ),
        (
            CairnError::OutcomeUnknown(s()),
            "the commit's reply was lost, or a sent write was not answered within `call_timeout` (PostgreSQL): read the state before retrying",
        ),
    ]
}

/// The server's own codes (not the core's): code, statuses, meaning.
const SERVER_ERRORS: &[(&str, &str, &str)] = &[
    (
        "invalid_request",
        "400, 415",
        "malformed JSON (also: a key given twice in an object, an integer past what 64 bits hold), unknown fields, bad parameters; 415: a body whose `Content-Type` is not `application/json` (or an `application/*+json` type), names a `charset` other than UTF-8 (or ASCII), or carries a `Content-Encoding` other than `identity`",
    ),
    (
        "request_timeout",
        "408",
        "the request body did not all arrive within `--body-timeout` of its headers (the connection closes)",
    ),
    (
        "unauthorized",
        "401",
        "a token is configured and none or an unknown one was given",
    ),
    (
        "forbidden",
        "403",
        "a host-only operation (schedules, prune, change feed, metrics, `originated_by`) or another session's state",
    ),
    ("not_found", "404", "no such route"),
    ("method_not_allowed", "405", "the route does not take that method"),
    (
        "payload_too_large",
        "413",
        "the body (by `Content-Length` or as read) is over `--max-body-bytes`",
    ),
    (
        "too_many_requests",
        "429",
        "a session token storing a module while its session's previous put is still queued or compiling (nothing is stored; retry once it has answered)",
    ),
    (
        "unavailable",
        "503",
        "over `--max-connections`, or `/healthz` found the database not answering",
    ),
];

/// The failure codes scripts and session turns end with: class, code, when.
const FAILURE_CODES: &[(&str, &str, &str)] = &[
    (
        "script",
        "uncaught",
        "the function threw or rejected and did not catch it; an error with a string `code` keeps that \
         code instead, as does a rejected context call's error (its class is on the JavaScript error, \
         `e.class`; the outcome's class is `script`); the JavaScript stack is in `raw`",
    ),
    (
        "script",
        "invalid_result",
        "the function returned a value that is not JSON (a function, a symbol, a `BigInt`, a cycle), or \
         larger or deeper than an outcome may be; a value is read as `JSON.stringify` reads it, so \
         `undefined` and functions inside an object are left out, inside an array they are `null`, \
         `undefined` itself is `null`, `NaN` is `null`, and a `Map` or `Set` is `{}` (a context call's \
         arguments are read the same way)",
    ),
    (
        "script",
        "nondeterminism",
        "on replay the function made another call than its journal records at that position",
    ),
    (
        "script",
        "journal_limit",
        "the script made more journaled calls than its limit: every context call, every `ctx.log` or \
         `console` line, and every clock or randomness read (`Date.now()`, `new Date()`, `Date()`, \
         `Math.random()`, `ctx.now()`, `ctx.random()`, `ctx.uuid()`) counts; the calls the step that \
         went over journaled before it are not made (their `script.call` events stay, with no child); \
         or its journal (calls, answers and log lines as stored) would pass `--script-max-journal-bytes` \
         (64 MiB), at a call, an answer or a line (not written), or already holds more at a replay (a \
         bound lowered since)",
    ),
    (
        "script",
        "invalid_call",
        "a context call's arguments did not serialize as a JSON object (a `toJSON` the script set on \
         `Object.prototype` answered something else)",
    ),
    ("script", "cpu_limit", "one activation (its replay included) used more CPU than its limit"),
    ("script", "memory_limit", "the activation's heap went over its limit"),
    (
        "script",
        "stuck",
        "the function awaits something no context call will ever settle",
    ),
    (
        "script",
        "unknown_export",
        "the export the process names is no function when its activation runs (the module's top level \
         made it something else; a start naming one that is none when stored is refused 404 `unknown_export`)",
    ),
    (
        "runtime",
        "script_engine",
        "the script engine itself failed (not the script)",
    ),
    (
        "turn",
        "max_steps",
        "the turn made `max_steps` model calls without a final answer",
    ),
    (
        "turn",
        "output_contract_violation",
        "the final answer does not meet the output contract after the repairs allowed, or the \
         endpoint cut it off (`finish_reason` `length` or `content_filter`) or cairn did (past the bytes it keeps of \
         one answer); the answer is in `raw`, and the message says when `max_steps` left no step for a repair",
    ),
    ("turn", "model_refused", "the model refused (its `refusal`); the answer is in `raw`"),
    (
        "turn",
        "unknown_model",
        "the server that ran the turn has no model of the name it gives (started again without that \
         `--model`); a start naming one is refused instead (404 `unknown_model`)",
    ),
    (
        "model",
        "model_unavailable",
        "the endpoint did not answer, or kept answering 429 or 5xx, past the retries (or asked to be called again more than an hour later)",
    ),
    (
        "model",
        "model_error",
        "the endpoint refused the request for good (an HTTP 4xx other than 429, 408 included; in the stream, an error naming a client error other than 408 and 429), or answered something that is not a chat completion (a choice without a `message` object, or a streamed choice carrying `text` or `message` in place of `delta`, or a call in the legacy `function_call` shape), or answered neither text nor tool calls without being cut off, or answered one JSON body (not streamed) of 8 MiB (8,388,608 bytes) or more",
    ),
];

/// What each event type cairn writes means.
fn event_meaning(name: &str) -> &'static str {
    match name {
        cairn_core::events::STARTED => "a worker claimed the process and began (or began again) to run it",
        cairn_core::events::WAITING => {
            "the run waits durably (for a signal, a timer or its children); the record's `wait` says on what"
        }
        cairn_core::events::RESUMED => {
            "a durable wait ended (`reason`: signal, timer, children, timed_out or cancel_requested; a signal or a child's end after the wait's deadline leaves it `timed_out`; a wait whose `until_ms` is a timer's due time, `due_timer` (a script's sleep raced against it), ends at it as `timer`; a signal or children wait whose deadline passed before it was recorded writes no `process.waiting`, only this `timed_out` marker, which a re-run replays instead of waiting again)"
        }
        cairn_core::events::CANCEL_REQUESTED => "cancellation was requested (written by the cancel operation only; its `reason`, like an abandon request's, is at most 64 KiB)",
        cairn_core::events::ABANDON_REQUESTED => "an abandon request was recorded",
        cairn_core::events::COMPLETED => "terminal: success, with the value",
        cairn_core::events::FAILED => "terminal: failure, with class, code and message",
        cairn_core::events::CANCELLED => "terminal: cancelled",
        cairn_core::events::ABANDONED => "terminal: abandoned, with the evidence (written only by cairn)",
        cairn_core::script::SCRIPT_CALL => {
            "a script's journaled context call (script processes): `{n, kind, ...}`, the call's arguments; \
             the first call (or `script.log` line) after the script first read `ctx.cancelled` as true \
             carries `cancel_seen`, which read that was, so a replay answers its reads the same"
        }
        cairn_core::script::SCRIPT_RESULT => {
            "the answer of script call `n`: `{n, value}` or `{n, error: {class, code, message, process_id?}}` \
             (`process_id`: the child whose failure, cancellation or abandonment rejects the call), with \
             `batch` (the answers delivered together), for a `waitSignal` `signal` (the ordinal it took), and \
             on the results of the step that told the script of its cancellation `cancelled` (the message); \
             `cancel_seen` (see `script.call`) when no call or log line after that read was journaled; \
             a call refused before it was journaled (too large, too deeply nested, or holding a string cut inside a character) has only its result, \
             whose `refused: {digest}` names the call, so a replay that makes another call there fails \
             `nondeterminism`; a call the function did not await that failed once it returned has its error \
             journaled so too (the outcome stays the function's)"
        }
        cairn_core::script::SCRIPT_LOG => {
            "a script's `ctx.log(...)` line: `{message, ordinal}` (and `cancel_seen`, see `script.call`; written once, not again on replay); \
             never dropped: a line past the payload limit (1 MiB) is cut there and marked `…[truncated]`, and a lone UTF-16 surrogate in it is U+FFFD"
        }
        cairn_tools::shell::OUTPUT_EVENT => {
            "output lines of a `shell` command: `{stream: stdout|stderr, lines: [...]}` (lines without their \
             newline and a `\\r` before it; bytes that are not UTF-8 as U+FFFD; a line over 16 KiB cut and \
             marked `…[truncated]`), each batch under the replay key `shell.output/{run}/{n}` (tried again while the run's lease holds, written once; a key \
             `{type}/…` naming a declared type is refused on another type's append); past the call's `max_output_bytes` (64 MiB by default) no more lines \
             are kept but a line `…[output past max_output_bytes (N bytes) is not kept from here on]` and, once the output ends, one per stream that lost \
             lines, `…[not kept: L lines, B bytes of STREAM past max_output_bytes (N bytes)]`"
        }
        cairn_turn::RESPONSE => {
            "a session turn's model answer for step `step` (journaled once; a replay reads it instead of \
             calling the model): `{step, message, usage, finish_reason?, cut_at_bytes?}` (`cut_at_bytes` when cairn cut the answer off past the bytes it keeps of one)"
        }
        cairn_turn::DELTA => {
            "streamed text of a session turn's model call, at most one per 100 ms (a live view; the \
             `turn.response` is the record): `{step, run, attempt, text}`"
        }
        _ => "",
    }
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn type_of(schema: &Value) -> String {
    match &schema["type"] {
        Value::String(t) if t == "array" => format!("array of {}", type_of(&schema["items"])),
        Value::String(t) if t == "object" && schema.get("additionalProperties").is_some_and(Value::is_object) => {
            format!("object of {}", type_of(&schema["additionalProperties"]))
        }
        Value::String(t) => t.clone(),
        _ => "any JSON".to_string(),
    }
}

/// The whole of `docs/reference.md`.
pub fn render() -> String {
    let tools = cairn_tools::builtin_tools(true);
    let mut names = tools.names();
    names.sort();
    let doc = openapi::document_for(&names);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# cairn reference\n");
    let _ = writeln!(
        w,
        "Rendered from the code by `cairn::reference::render`; `crates/cairn/tests/reference.rs`\n\
         fails when this file differs (`CAIRN_UPDATE_REFERENCE=1 cargo test -p cairn --test reference`\n\
         rewrites it). Every wire shape is described field by field, with its limits, in the\n\
         OpenAPI document the server serves at `GET /openapi.json`; `crates/cairn/README.md`\n\
         covers flags, auth and the CLI.\n"
    );

    let _ = writeln!(w, "## Routes\n");
    let _ = writeln!(
        w,
        "Auth: `Authorization: Bearer TOKEN` (a host or a session token) unless the server runs\n\
         open on loopback; `/healthz` and `/openapi.json` need none. Bodies are JSON.\n"
    );
    let _ = writeln!(w, "| method | path | operation | answers |");
    let _ = writeln!(w, "| --- | --- | --- | --- |");
    let mut ops = openapi::operations(&doc);
    ops.sort_by(|a, b| (a.1.as_str(), a.0.as_str()).cmp(&(b.1.as_str(), b.0.as_str())));
    for (method, path, op) in &ops {
        let mut statuses: Vec<&String> = op["responses"]
            .as_object()
            .map(|r| r.keys().collect())
            .unwrap_or_default();
        statuses.sort();
        let statuses: Vec<&str> = statuses.into_iter().map(String::as_str).collect();
        let _ = writeln!(
            w,
            "| {} | `{path}` | `{}` | {} |",
            method.to_uppercase(),
            op["operationId"].as_str().unwrap_or_default(),
            statuses.join(", ")
        );
    }
    let _ = writeln!(w, "| GET | `/openapi.json` | | 200, 403, 413 |");
    let _ = writeln!(w, "| POST | `/mcp` | | MCP over streamable HTTP (see ADR 0011) |\n");
    let _ = writeln!(w, "### Repeated starts and grants\n");
    let _ = writeln!(
        w,
        "A start is idempotent on its id: the same id with the same registration answers 200 with\n\
         the record as it is, and writes nothing; another registration is 409\n\
         `registration_conflict`. A start's `grant` is no part of the registration: only the start\n\
         that creates the process (201) writes it, and a repeat naming another scope or\n\
         descriptor still answers 200 and grants nothing. Its `wake_target` is part of it: a repeat\n\
         naming another one is 409. To hand a process to another scope, `POST /v1/grants/transfer`\n\
         moves a grant, its descriptor with it, from the scope that holds it to another; the\n\
         host's Rust API adds one with `Processes::grant`.\n"
    );

    let _ = writeln!(w, "## Errors\n");
    let _ = writeln!(
        w,
        "Every error answers `{{\"error\": {{\"code\", \"message\"}}}}` (plus `tombstone` on\n\
         `no_longer_retained`) and changed nothing, except `outcome_unknown` (and a start refused\n\
         for what is stored, `registration_conflict`, `no_longer_retained` or a `caused_by` parent\n\
         that does not exist, may leave the env it carried stored, unreferenced). A route under `/v1` that reads no query string refuses\n\
         one (`invalid_request`), and one that reads a query refuses a parameter it does not take\n\
         (naming those it takes) or one given twice (`invalid_request`; `/v1/processes`, whose\n\
         parameters are filter keys, `invalid_filter`); any route answers 413 to a body past `--max-body-bytes`. A request the HTTP layer cannot parse (a malformed request line or\n\
         header, a URI or headers past its limits) gets its bare 400, 414 or 431 with an empty\n\
         body. The CLI exits 2 on 400, 413 and 415 (bad input) and 1 on the others.\n"
    );
    let _ = writeln!(w, "| code | status | meaning |");
    let _ = writeln!(w, "| --- | --- | --- |");
    for (err, meaning) in core_errors() {
        let _ = writeln!(
            w,
            "| `{}` | {} | {} |",
            err.code(),
            status_of(&err).as_u16(),
            cell(meaning)
        );
    }
    for (code, status, meaning) in SERVER_ERRORS {
        let _ = writeln!(w, "| `{code}` (server) | {status} | {} |", cell(meaning));
    }

    let _ = writeln!(w, "\n## Built-in tools\n");
    let _ = writeln!(
        w,
        "Started as `{{\"type\": \"tool_call\", \"tool\": NAME, \"args\": {{...}}}}`. Unknown args are\n\
         refused at start (400 `invalid_request`). `shell` runs only on a server started with\n\
         `--allow-shell`.\n"
    );
    for name in &names {
        let Some(schema) = cairn_tools::args_schema(name) else {
            continue;
        };
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let _ = writeln!(w, "### `{name}`\n");
        if name == "shell" {
            let _ = writeln!(w, "Exactly one of `argv` and `command`.\n");
            let _ = writeln!(
                w,
                "The command runs in a process group of its own, and a cancel, a timeout, a lost lease or the \
                 server's exit stops the whole group; a `rerunnable` command's group also dies with a server \
                 killed outright (ADR 0025). A command that moves into a group or session of its own leaves \
                 reach of all of these: `setsid`, and GNU `timeout` unless given `--foreground` (use \
                 `timeout_ms` instead). A server killed outright does not stop an `owner_bound` command, but \
                 its stdout and stderr are pipes only the server read: its next write to either ends it with \
                 SIGPIPE (or fails with EPIPE, if it ignores SIGPIPE), and only a command that writes nothing \
                 more there may finish. Either way its record ends `abandoned` (its outcome unknown).\n"
            );
        }
        let _ = writeln!(w, "| arg | type | required | meaning |");
        let _ = writeln!(w, "| --- | --- | --- | --- |");
        for (arg, prop) in schema["properties"].as_object().into_iter().flatten() {
            let _ = writeln!(
                w,
                "| `{arg}` | {} | {} | {} |",
                type_of(prop),
                if required.contains(&arg.as_str()) { "yes" } else { "no" },
                cell(prop["description"].as_str().unwrap_or_default())
            );
        }
        if let Some(example) = cairn_tools::args_example(name) {
            let _ = writeln!(w, "\nExample args: `{example}`\n");
        }
    }

    let _ = writeln!(w, "## Event types\n");
    let _ = writeln!(
        w,
        "cairn's own types; a process declares its others at start (`event_types`), and a\n\
         signal named N is appended as `signal.N`.\n"
    );
    let _ = writeln!(w, "| type | meaning |");
    let _ = writeln!(w, "| --- | --- |");
    let mut types: Vec<String> = cairn_core::events::core_event_types()
        .into_iter()
        .map(|t| t.name)
        .collect();
    types.extend(cairn_core::script::script_event_types().into_iter().map(|t| t.name));
    for name in &names {
        if let Some(tool) = tools.get(name) {
            types.extend(tool.event_types().into_iter().map(|t| t.name));
        }
    }
    // A session turn's types (the `session_turn` tool, wired when models are configured).
    types.extend([cairn_turn::RESPONSE.to_string(), cairn_turn::DELTA.to_string()]);
    for t in &types {
        let _ = writeln!(w, "| `{t}` | {} |", cell(event_meaning(t)));
    }
    let _ = writeln!(w, "| `signal.{{name}}` | a signal: its payload as sent; the signal id is in the event's `replay_key`, `signal:{{name}}:{{signal_id}}` |\n");
    let _ = writeln!(w, "### Declared terminal types\n");
    let _ = writeln!(
        w,
        "A declared type with `semantics.terminal {{state, await_output}}` ends the process in\n\
         `state` (`completed`, `failed` or `cancelled`; `abandoned` is cairn's alone, 400\n\
         `invalid_semantics` at start). The value `await_output` selects (default: the whole\n\
         payload; nothing selected is 400 `invalid_outcome`) becomes the outcome:\n\n\
         - a value that reads as an outcome, with its fields and no others\n  \
         (`{{\"type\": \"success\", \"value\"}}`, `{{\"type\": \"failure\", \"class\", \"code\", \"message\", \"raw\"?}}`,\n  \
         `{{\"type\": \"cancelled\", \"message\", \"raw\"?}}`) is that outcome, and must be of the type's state\n  \
         (else 400 `invalid_outcome`);\n\
         - any other value is raw: `completed` succeeds with it as the value; `failed` fails with\n  \
         class `process`, code `failed`, its text as the message (a string as it is, anything\n  \
         else as JSON) and it as `raw`; `cancelled` is cancelled with its text as the message\n  \
         and it as `raw` (a `null`: an empty message, no `raw`).\n\n\
         So `{{\"result\": {{\"type\": \"success\", \"value\": {{\"rows\": 3}}}}}}` read at `/result` succeeds\n\
         with `{{\"rows\": 3}}`, and a `failed` type's `{{\"class\": \"ci\", \"code\": \"red\", \"message\": \"...\"}}`\n\
         (no `type`) fails as class `process`, code `failed`. A producer that wants its own\n\
         failure class and code selects a `{{\"type\": \"failure\", ...}}` object.\n"
    );

    let _ = writeln!(w, "## Failure codes of scripts and turns\n");
    let _ = writeln!(
        w,
        "A failed process's outcome is `{{\"type\": \"failure\", class, code, message, raw?}}`. Besides a\n\
         tool's own codes (`shell`'s `exit_status`, ...), scripts (SPEC §14) and session turns\n\
         (SPEC §15) end with these:\n"
    );
    let _ = writeln!(w, "| class | code | when |");
    let _ = writeln!(w, "| --- | --- | --- |");
    for (class, code, when) in FAILURE_CODES {
        let _ = writeln!(w, "| `{class}` | `{code}` | {} |", cell(when));
    }
    let _ = writeln!(
        w,
        "\nA cancelled script ends `cancelled`, however its cleanup (its `catch` and `finally`) ends. That\n\
         cleanup can `ctx.emit`, `ctx.log` and return or throw, and nothing more: every wait pending or made\n\
         then (`ctx.tool`, `ctx.turn`, `ctx.wait`, `ctx.sleep`, `ctx.waitSignal`) rejects `cancelled` at once,\n\
         and a child it starts (`ctx.start`) is born cancelled, so no tool runs (ADR 0016)."
    );
    let _ = writeln!(w);

    let _ = writeln!(w, "## Wire shapes\n");
    let _ = writeln!(w, "The named shapes of `/openapi.json` (`components.schemas`):\n");
    for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
        let description = schema["description"].as_str().unwrap_or_default();
        let first = description.split("\n\n").next().unwrap_or_default();
        let _ = writeln!(w, "- `{name}`: {}", first.replace('\n', " "));
    }
    out
}
