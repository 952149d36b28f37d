//! The CLI client commands: each is one or a few HTTP calls, printed as a table
//! (or one JSON document with `--json`).
//!
//! Exit codes: 0 on success; 1 when the server answered an error or could not
//! be reached, or the output could not be written; 2 for bad input (the command
//! line, or a request the server refused as invalid: HTTP 400, 413 or 415);
//! 141 when the output was closed by its reader ([`output`]); `await` answers 3
//! when the process is still running at the timeout; `run` answers the
//! command's own exit code (130 when interrupted by Ctrl-C).

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::cli::{Command, CompleteArgs, LsArgs, ModuleCommand, PruneArgs, ResolvedClient, RunArgs};

mod hints;
pub mod http;
mod ls;
pub mod mcp;
pub mod output;
mod schedule;

use hints::{cmd, token_note};
use http::{query, segment, Client, ClientError};
use output::{errln, outln};

/// Exit code: the process was still running when `await` timed out.
pub const EXIT_STILL_RUNNING: u8 = 3;
/// Exit code: `run` was interrupted by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Run one client command.
pub async fn run(opts: &ResolvedClient, command: Command) -> ExitCode {
    hints::set(opts.server_flag.as_deref(), opts.token_flag);
    // An empty `--server` clap refuses; an empty `CAIRN_SERVER` is refused
    // here, not read as the default: a variable set to nothing is more
    // likely one whose value went missing than a wish for 127.0.0.1.
    let client = if opts.server.is_empty() {
        Err(ClientError::Usage(format!(
            "CAIRN_SERVER is set but empty: set it to the server's URL (e.g. {}), give --server, or unset it for \
             that default",
            crate::cli::DEFAULT_SERVER
        )))
    } else {
        Client::new(&opts.server, opts.token.as_deref())
    };
    let result = match client {
        Ok(client) => execute(&client, opts.json, command).await,
        Err(e) => Err(e),
    };
    // All of the output is written before the command says how it went.
    match result.and_then(|code| output::flush().map(|()| code)) {
        Ok(code) => code,
        Err(e) => fail(&e, opts.json),
    }
}

/// Say `e` on stderr (one line of JSON with `json`) and answer its exit
/// code. An output closed by its reader is not said: nobody reads it, and
/// the command ends quietly, as a command a closed pipe stops does.
pub fn fail(e: &ClientError, json: bool) -> ExitCode {
    let code = e.exit_code();
    // Not `eprintln!`: a closed stderr must not turn the error into a panic.
    if code == output::EXIT_OUTPUT_CLOSED {
        return ExitCode::from(code);
    }
    if json {
        let _ = errln!("{}", e.to_json());
    } else {
        let _ = errln!("error: {}", shown(&e.to_string()));
        if let Some(hint) = e.hint() {
            let _ = errln!("hint: {}", shown(&hint));
        }
    }
    ExitCode::from(code)
}

/// A command line clap refused, as `--json` says an error: one line of
/// `{"error": {"code": "usage", "message", "exit_code": 2, "hint"}}`, the
/// shape of every other usage error. The message is clap's error on one
/// line; the hint its tip, else the command's usage: `usage` (the
/// command's, as `Command::render_usage` gives it), else clap's.
pub fn usage_error_json(e: &clap::Error, usage: Option<&str>) -> Value {
    let rendered = e.render().to_string();
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut paragraphs = rendered.split("\n\n").map(str::trim).filter(|p| !p.is_empty());
    // The command's own usage first: clap's error shows a shorter one (the
    // arguments in play, an optional one sometimes as required).
    let usage = usage
        .into_iter()
        .flat_map(str::lines)
        .chain(rendered.lines())
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|u| format!("usage: {}", one_line(u)));
    let message = match e.kind() {
        // A missing (sub)command: which ones there are, as the help lists
        // them (clap's own list has the hidden `bench-child` too).
        kind @ (clap::error::ErrorKind::MissingSubcommand
        | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand) => {
            let listed: Vec<String> = match e.get(clap::error::ContextKind::ValidSubcommand) {
                Some(clap::error::ContextValue::Strings(listed)) => listed.clone(),
                // The help: the first word of each line of its `Commands:`.
                _ => rendered
                    .lines()
                    .skip_while(|l| l.trim() != "Commands:")
                    .skip(1)
                    .take_while(|l| !l.trim().is_empty())
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .collect(),
            };
            let root = kind == clap::error::ErrorKind::MissingSubcommand && listed.iter().any(|c| c == "bench-child");
            let shown: Vec<&str> = listed
                .iter()
                .map(String::as_str)
                .filter(|c| !matches!(*c, "help" | "bench-child"))
                .collect();
            format!(
                "a {}command is needed: one of {}",
                if root { "" } else { "sub" },
                shown.join(", ")
            )
        }
        _ => paragraphs
            .next()
            .map(|p| one_line(p.strip_prefix("error:").unwrap_or(p)))
            .unwrap_or_default(),
    };
    let tips: Vec<String> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip:"))
        .map(one_line)
        .collect();
    let mut doc = ClientError::Usage(message).to_json();
    if let Some(hint) = if tips.is_empty() { usage } else { Some(tips.join("; ")) } {
        doc["error"]["hint"] = Value::String(hint);
    }
    doc
}

/// `e`, or, when it is `process_terminal` (the process `id` has ended), the
/// same error saying how it ended and where to look, in place of the
/// server's bare "is terminal": the record is read for its status. The code,
/// HTTP status and exit code stay the server's.
async fn ended_already(client: &Client, id: &str, e: ClientError, nothing_to: &str) -> ClientError {
    let ClientError::Api {
        status,
        code,
        tombstone,
        ..
    } = &e
    else {
        return e;
    };
    if code != "process_terminal" {
        return e;
    }
    let how = match client.get(&proc_path(id)).await {
        Ok(record) => record
            .get("status")
            .and_then(Value::as_str)
            .map(|s| format!(" ({})", shown(s)))
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    ClientError::Api {
        status: *status,
        code: code.clone(),
        message: format!(
            "{id} already ended{how}: nothing to {nothing_to}; `{}`{} shows how",
            cmd(format_args!("get {id}")),
            token_note()
        ),
        tombstone: tombstone.clone(),
    }
}

/// `e`, or, when the server refused to append `event_type` as a signal
/// without a signal's replay key, the same refusal pointing at `cairn signal`
/// rather than the HTTP route the server's message names. The code, HTTP
/// status and exit code stay the server's.
fn signal_appended(e: ClientError, id: &str, event_type: &str) -> ClientError {
    match (e, event_type.strip_prefix(cairn_core::events::SIGNAL_PREFIX)) {
        (
            ClientError::Api {
                status,
                code,
                message,
                tombstone,
            },
            Some(name),
        ) if code == "invalid_request" && message.contains(&format!("`{event_type}` is a signal:")) => {
            ClientError::Api {
                status,
                code,
                message: hints::signal_append(id, name),
                tombstone,
            }
        }
        (e, _) => e,
    }
}

fn proc_path(id: &str) -> String {
    format!("/v1/processes/{}", segment(id))
}

/// `raw` as JSON, refusing a key given twice in an object (serde_json keeps
/// the last one; the server refuses it in its own bodies, and a command
/// line must not quietly pick one: `{"id":"a","id":"b"}` would start `b`).
fn parse_json_arg(what: &str, raw: &str, whole: bool) -> Result<Value, ClientError> {
    if raw.trim().is_empty() {
        return Err(ClientError::Usage(format!(
            "{what} is empty: give it as an argument, or on stdin (`- < FILE`)"
        )));
    }
    cairn_core::validate::parse_strict_json(raw.as_bytes()).map_err(|e| {
        // A file's name where its content was meant.
        let file = std::path::Path::new(raw.trim()).is_file();
        let hint = if file {
            format!("; `{raw}` is a file: give it as `@{raw}`, or pipe it in with `- < {raw}`")
        } else {
            String::new()
        };
        // Past the parser's own limit (128 levels): said as the server says
        // it, with the 64 level limit a value less deep is refused with.
        if e.to_string().starts_with("recursion limit exceeded") {
            return ClientError::Usage(too_deep(what, raw, whole));
        }
        // Valid JSON refused for what it holds is said as such.
        let is = if e.classify() == serde_json::error::Category::Data {
            "is refused"
        } else {
            "is not JSON"
        };
        ClientError::Usage(format!("{what} {is}: {e}{hint}"))
    })
}

/// The refusal of a JSON argument nested past what the parser reads, in the
/// server's words (`request body: `payload` nests arrays and objects 200
/// levels deep, over the 64 level limit`): how deep the value goes, or, for
/// a request (`whole` false: `start`'s, a schedule's template), which of its
/// fields and how deep that field's value goes.
fn too_deep(what: &str, raw: &str, whole: bool) -> String {
    use cairn_core::validate::{json_text_depth, too_deep_message};
    match json_text_depth(raw.as_bytes()) {
        (_, Some((field, field_depth))) if !whole => {
            too_deep_message(&format!("{what}: `{}`", field.escape_debug()), field_depth)
        }
        (depth, _) => too_deep_message(what, depth),
    }
}

/// A JSON flag's value (`--payload`, `--value`, `--outcome`): as given, from
/// stdin for `-`, or from a file for `@FILE` (no JSON text begins with `@`,
/// and `-` alone is none: neither can be meant as itself).
fn json_flag(flag: &str, raw: &str) -> Result<Value, ClientError> {
    let (text, what) = json_arg_text(flag, Some(raw))?;
    parse_json_arg(&what, &text, true).map_err(|e| match e {
        // A bare word (`--value green`) is most likely a string meant
        // without its JSON quotes.
        ClientError::Usage(why) if what == flag && is_bare_word(raw) => {
            // A string is an outcome's value, not an outcome.
            let flag = if flag == "--outcome" { "--value" } else { flag };
            let quoted = serde_json::to_string(raw.trim()).unwrap_or_default();
            ClientError::Usage(format!("{why}; a string is quoted as JSON: {flag} '{quoted}'"))
        }
        e => e,
    })
}

/// Text with no JSON punctuation, quote or backslash: a word meant as a
/// string.
fn is_bare_word(raw: &str) -> bool {
    let word = raw.trim();
    !word.is_empty()
        && word
            .chars()
            .all(|c| !c.is_control() && !matches!(c, '{' | '}' | '[' | ']' | '"' | '\'' | '\\' | ',' | ':'))
}

/// A signal name or event type that is JSON (`cairn signal ID '{...}'`): a
/// payload given where the name goes. Refused before it is sent, with the
/// command that sends it as a payload.
fn json_where_a_name_goes(command: &str, id: &str, what: &str, name: &str) -> Result<(), ClientError> {
    if !name.trim_start().starts_with(['{', '[']) {
        return Ok(());
    }
    let upper = what.rsplit(' ').next().unwrap_or(what).to_ascii_uppercase();
    Err(ClientError::Usage(format!(
        "the {what} `{name}` looks like JSON: the payload goes in --payload '...' (`{}`)",
        cmd(format_args!(
            "{command} {} {upper} --payload {}",
            hints::word(id),
            hints::word(name)
        ))
    )))
}

/// A third argument after a signal name or event type (`cairn signal ID
/// NAME '{...}'`): a payload without its flag. Refused before anything is
/// sent, with the command that sends it.
fn payload_where_a_flag_goes(command: &str, id: &str, name: &str, stray: Option<&str>) -> Result<(), ClientError> {
    let Some(stray) = stray else { return Ok(()) };
    // Text that is not JSON is offered as the JSON string it likely meant.
    let payload = match serde_json::from_str::<Value>(stray) {
        Ok(_) => stray.to_string(),
        Err(_) => serde_json::to_string(stray).unwrap_or_default(),
    };
    Err(ClientError::Usage(format!(
        "unexpected argument `{stray}`: a payload goes in --payload (`{}`)",
        cmd(format_args!(
            "{command} {} {} --payload {}",
            hints::word(id),
            hints::word(name),
            hints::word(&payload)
        ))
    )))
}

/// A JSON argument's text (`cairn start`'s request, `schedule add`'s
/// template, a JSON flag's value): as given, from stdin when absent or `-`,
/// or from a file for `@FILE`; with what to call it in an error. Read from
/// stdin or a file, one leading UTF-8 byte-order mark is dropped, as the
/// HTTP API drops one (RFC 8259 §8.1): some editors begin a file with it.
fn json_arg_text(what: &str, raw: Option<&str>) -> Result<(String, String), ClientError> {
    let (text, what) = match raw {
        None | Some("-") => (read_stdin(what)?, format!("{what} (stdin)")),
        Some(at) if at.starts_with('@') => {
            let path = &at[1..];
            let bytes = std::fs::read(path)
                .map_err(|e| ClientError::Usage(format!("{what} {at}: cannot read `{path}`: {e}")))?;
            let text = utf8_text(bytes, &format!("{what} {at}: `{path}`"))?;
            (text, format!("{what} ({path})"))
        }
        Some(s) => return Ok((s.to_string(), what.to_string())),
    };
    match text.strip_prefix('\u{feff}') {
        Some(rest) => Ok((rest.to_string(), what)),
        None => Ok((text, what)),
    }
}

async fn execute(client: &Client, json: bool, command: Command) -> Result<ExitCode, ClientError> {
    match command {
        Command::Serve(_) | Command::Bench(_) | Command::BenchChild(_) | Command::Completions { .. } => {
            Err(ClientError::Usage("not a client command".into()))
        }
        Command::Start { body, .. } => {
            let (raw, what) = json_arg_text("the start request", body.as_deref())?;
            let request = parse_json_arg(&what, &raw, false)?;
            if let Some(id) = request.get("id").and_then(Value::as_str) {
                hints::on_lost_answer(format_args!("get {}", hints::word(id)), None);
            }
            // Sent as written: the server's complaints point into it.
            let (status, record) = client.post_text("/v1/processes", raw).await?;
            if json {
                print_json(&with_created(record, status))?;
            } else {
                let verb = start_verb(status, &record);
                outln!("{verb} {} ({})", str_at(&record, "/id"), str_at(&record, "/status"))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_command(client, json, args).await,
        // Its output is the protocol's own JSON-RPC: a `--json` accepted
        // and ignored would promise a form it never prints.
        Command::Mcp { .. } if json => Err(ClientError::Usage(
            "`cairn mcp` speaks MCP (JSON-RPC) on stdin and stdout: `--json` does not apply to it".into(),
        )),
        Command::Mcp { .. } => mcp::serve(client).await,
        Command::Ls(args) => ls(client, json, args).await,
        Command::Get { id, .. } => {
            let record = client.get(&proc_path(&id)).await?;
            if json {
                print_json(&record)?;
            } else {
                print_record(&record)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Events { id, after, follow, .. } => {
            if follow {
                // A stream has no end to wait for before printing: one JSON event per line.
                client
                    .follow(&id, after, false, |event| {
                        if json {
                            outln!("{event}")?;
                        } else {
                            print_event_row(event)?;
                        }
                        output::flush()
                    })
                    .await?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut after = after;
            // With `--json`, `{"events": [...]}` is written a page at a time,
            // as the whole would print it: a long log is never held at once.
            let mut printed = 0usize;
            loop {
                let page = client
                    .get(&format!(
                        "{}/events?{}",
                        proc_path(&id),
                        query([("after", after.to_string())])
                    ))
                    .await?;
                let batch = page
                    .get("events")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if json {
                    for event in &batch {
                        print_json_item(if printed == 0 { "{\n  \"events\": [\n" } else { ",\n" }, event)?;
                        printed += 1;
                    }
                } else {
                    batch.iter().try_for_each(print_event_row)?;
                }
                match page.get("next_after").and_then(Value::as_u64) {
                    Some(next) if next > after => after = next,
                    _ => break,
                }
            }
            if json {
                outln!(
                    "{}",
                    if printed == 0 {
                        "{\n  \"events\": []\n}"
                    } else {
                        "\n  ]\n}"
                    }
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Await { id, timeout, .. } => await_command(client, json, &id, timeout).await,
        Command::Signal {
            id,
            name,
            signal_id,
            payload: payload_arg,
            stray,
            ..
        } => {
            json_where_a_name_goes("signal", &id, "signal name", &name)?;
            payload_where_a_flag_goes("signal", &id, &name, stray.as_deref())?;
            // Refused as the server refuses it (`invalid_signal_name`), before
            // anything is sent.
            cairn_core::events::validate_signal_name(&name).map_err(|e| ClientError::Refused {
                code: e.code().into(),
                message: e.to_string(),
            })?;
            let payload = json_flag("--payload", &payload_arg)?;
            let signal_id = signal_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            // A repeat takes the signal once only under the same signal id,
            // which may have been made here: the command that repeats it
            // carries it.
            let payload_flag = match payload_arg.as_str() {
                "null" => String::new(),
                given if given.len() <= 200 => format!(" --payload {}", hints::word(given)),
                _ => " --payload ...".to_string(),
            };
            hints::on_lost_answer(
                format_args!("events {}", hints::word(&id)),
                Some(format!(
                    "signal {} {} --id {}{payload_flag}",
                    hints::word(&id),
                    hints::word(&name),
                    hints::word(&signal_id)
                )),
            );
            let body = json!({"signal_id": signal_id, "payload": payload});
            let posted = client
                .post(&format!("{}/signals/{}", proc_path(&id), segment(&name)), &body)
                .await;
            let (_, event) = match posted {
                Err(e) => return Err(ended_already(client, &id, e, "signal").await),
                Ok(answer) => answer,
            };
            if json {
                print_json(&event)?;
            } else {
                outln!(
                    "{} recorded on {} as event {} (signal id {signal_id})",
                    str_at(&event, "/event_type"),
                    str_at(&event, "/process_id"),
                    num_at(&event, "/sequence")
                )?;
                // A signal to work whose node is gone waits for nothing that
                // will take it: said, as `cancel` says it (a failed read
                // leaves the line above as all there is to say).
                if let Ok(record) = client.get(&proc_path(&id)).await {
                    if let Some(stranded) = stranded(&id, &record, now_ms()) {
                        outln!("but {stranded}")?;
                    }
                    if let Some(note) = waits_for_another(&id, &name, &record, &event) {
                        errln!("note: {note}")?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Append {
            id,
            event_type,
            payload,
            replay_key,
            stray,
            ..
        } => {
            json_where_a_name_goes("append", &id, "event type", &event_type)?;
            payload_where_a_flag_goes("append", &id, &event_type, stray.as_deref())?;
            hints::on_lost_answer(format_args!("events {}", hints::word(&id)), None);
            let payload = json_flag("--payload", &payload)?;
            let mut body = json!({"event_type": event_type, "payload": payload});
            if let Some(key) = replay_key {
                body["replay_key"] = Value::String(key);
            }
            let (_, answer) = client
                .post(&format!("{}/events", proc_path(&id)), &body)
                .await
                .map_err(|e| signal_appended(e, &id, &event_type))?;
            if json {
                print_json(&answer)?;
            } else {
                let replayed = if answer.get("replayed").and_then(Value::as_bool) == Some(true) {
                    " (a replay: the original event)"
                } else {
                    ""
                };
                outln!(
                    "{} recorded on {} as event {}{replayed}",
                    str_at(&answer, "/event/event_type"),
                    str_at(&answer, "/event/process_id"),
                    num_at(&answer, "/event/sequence")
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Complete(args) => complete(client, json, args).await,
        Command::Cancel {
            session: Some(session),
            reason,
            ..
        } => cancel_session(client, json, &session, reason).await,
        Command::Cancel { id, reason, .. } => {
            // Clap asks for one of the id and `--session`.
            let Some(id) = id else {
                return Err(ClientError::Usage("give a process id or --session SESSION".into()));
            };
            hints::on_lost_answer(format_args!("get {}", hints::word(&id)), None);
            let body = match &reason {
                Some(r) => json!({"reason": r}),
                None => json!({}),
            };
            // Whether it had ended before this request (a process this
            // request cancels at once ends `cancelled` too): read first, for
            // the words only.
            let (ended_before, asked_before) = match client.get(&proc_path(&id)).await {
                Ok(before) => (
                    before.get("terminal_at_ms").is_some_and(|t| !t.is_null()),
                    repeats_its_cancel(&before, reason.as_deref()),
                ),
                Err(_) => (false, false),
            };
            let posted = client.post(&format!("{}/cancel", proc_path(&id)), &body).await;
            let (_, record) = match posted {
                Err(e) => return Err(ended_already(client, &id, e, "cancel").await),
                Ok(answer) => answer,
            };
            if json {
                print_json(&record)?;
            } else {
                let status = str_at(&record, "/status");
                if ended_before && repeats_its_cancel(&record, reason.as_deref()) {
                    // The request recorded before it ended, again (a
                    // retry): the server answers the record and writes
                    // nothing, whether that request cancelled it or it
                    // ended otherwise first.
                    if status == "cancelled" {
                        outln!("{id} was already cancelled: this repeats the request that cancelled it")?;
                    } else {
                        outln!(
                            "{id} had already ended ({status}); this repeats the cancellation requested before it \
                             ended, and changed nothing"
                        )?;
                    }
                } else if ended_before || matches!(status.as_str(), "completed" | "failed" | "abandoned") {
                    // Answered for a process that had ended: the request went
                    // to its running children (SPEC §13).
                    outln!(
                        "{id} had already ended ({status}); the cancellation went to its running children \
                         (`{}`{})",
                        cmd(format_args!("ls --caused-by {id}")),
                        token_note()
                    )?;
                } else if asked_before && repeats_its_cancel(&record, reason.as_deref()) {
                    // The same request stood already: the server wrote nothing.
                    outln!(
                        "a cancellation with this reason was already requested for {id}; this one changed nothing: \
                         {id} is {status}"
                    )?;
                } else if let Some(stranded) = stranded(&id, &record, now_ms()) {
                    // An owner_bound process whose worker is gone: no other
                    // node takes it on, so nothing acts on the request.
                    outln!("cancellation requested: {id} is {status}, but {stranded}")?;
                } else {
                    outln!("cancellation requested: {id} is {status}")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Abandon {
            id,
            reason,
            requested_by,
            ..
        } => {
            hints::on_lost_answer(format_args!("get {}", hints::word(&id)), None);
            let mut body = json!({"reason": reason});
            if let Some(by) = requested_by {
                body["requested_by"] = Value::String(by);
            }
            // Whether a request stood before this one (the first stands, and
            // a repeat records nothing): read first, for the words only.
            let stood_before = match client.get(&proc_path(&id)).await {
                Ok(before) => before.get("abandon_request").is_some_and(Value::is_object),
                Err(_) => false,
            };
            let posted = client.post(&format!("{}/abandon-request", proc_path(&id)), &body).await;
            let (_, record) = match posted {
                Err(e) => return Err(ended_already(client, &id, e, "abandon").await),
                Ok(answer) => answer,
            };
            // The first request stands (SPEC §2: it is recorded once); one
            // repeated with another reason changed nothing, which is said.
            // (Not its requester: a session token's request names the
            // session, whatever `--requested-by` says.)
            let standing = |field: &str| {
                record
                    .pointer(&format!("/abandon_request/{field}"))
                    .and_then(Value::as_str)
                    .map(String::from)
            };
            let (first_reason, first_by) = (standing("reason"), standing("requested_by"));
            let other = first_reason.as_ref().is_some_and(|r| *r != reason);
            if json {
                print_json(&record)?;
            } else if other {
                outln!(
                    "an abandon request was already recorded for {id} (reason: {}, by {}); this one changed nothing",
                    shown(first_reason.as_deref().unwrap_or_default()),
                    shown(first_by.as_deref().unwrap_or_default())
                )?;
            } else if record.get("terminal_at_ms").is_some_and(|t| !t.is_null()) {
                // An answer for an ended process recorded nothing: a request
                // stood (this one, sent before: a retry) and it ended.
                let status = str_at(&record, "/status");
                if str_at(&record, "/outcome/evidence/writer") == "reconciled_request" {
                    outln!("{id} was already abandoned: this repeats the request that abandoned it")?;
                } else {
                    outln!(
                        "{id} had already ended ({status}); this repeats the abandon request recorded before it \
                         ended, and changed nothing"
                    )?;
                }
            } else if stood_before {
                let status = str_at(&record, "/status");
                outln!(
                    "an abandon request with this reason was already recorded for {id}; this one changed nothing: \
                     {id} is {status}{}",
                    abandon_when(&record, now_ms())
                )?;
            } else {
                let status = str_at(&record, "/status");
                outln!("abandon requested: {id} is {status}{}", abandon_when(&record, now_ms()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Transfer {
            from,
            from_frame,
            to,
            to_frame,
            ids,
            ..
        } => {
            let scope = |session: String, frame: Option<String>| match frame {
                Some(f) => json!({"session_id": session, "agent_frame_id": f}),
                None => json!({"session_id": session}),
            };
            let body = json!({"from": scope(from, from_frame), "to": scope(to, to_frame), "process_ids": ids});
            let (_, report) = client.post("/v1/grants/transfer", &body).await?;
            if json {
                print_json(&report)?;
            } else {
                let list = |p: &str| {
                    report
                        .get(p)
                        .and_then(Value::as_array)
                        .map(|a| a.iter().map(|v| str_at(v, "")).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                };
                let moved = list("moved");
                outln!("moved: {}", if moved.is_empty() { "none" } else { &moved })?;
                let not_granted = list("not_granted");
                if !not_granted.is_empty() {
                    outln!("not granted to the source (left alone): {not_granted}")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Changes { cursor, limit, .. } => {
            let mut pairs = vec![("cursor", cursor.to_string())];
            if let Some(l) = limit {
                pairs.push(("limit", l.to_string()));
            }
            let page = client.get(&format!("/v1/changes?{}", query(pairs))).await?;
            if json {
                print_json(&page)?;
            } else {
                let rows: Vec<Vec<String>> = page
                    .get("changes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        vec![
                            num_at(c, "/cursor"),
                            str_at(c, "/process/id"),
                            str_at(c, "/process/status"),
                            num_at(c, "/process/last_sequence"),
                            age(c.pointer("/process/updated_at_ms")),
                        ]
                    })
                    .collect();
                print_table(&["CURSOR", "ID", "STATUS", "EVENTS", "UPDATED"], &rows)?;
                errln!("(next: --cursor {})", num_at(&page, "/next_cursor"))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune(args) => prune(client, json, args).await,
        Command::Schedule { action, .. } => schedule::execute(client, json, action).await,
        Command::Module { action, .. } => module(client, json, action).await,
        Command::Wakes { session, limit, .. } => {
            let mut path = format!("/v1/sessions/{}/wakes", segment(&session));
            if let Some(limit) = limit {
                path.push_str(&format!("?limit={limit}"));
            }
            let page = client.get(&path).await?;
            let wakes = page.get("wakes").and_then(Value::as_array);
            let shown = wakes.map_or(0, Vec::len);
            // A page also stops at LIST_PAGE_BYTES of wakes.
            let bytes: usize = wakes
                .into_iter()
                .flatten()
                .map(|w| serde_json::to_vec(w).map_or(0, |j| j.len()))
                .sum();
            if shown == limit.unwrap_or(cairn_core::model::DEFAULT_PAGE_SIZE) || bytes >= cairn_core::LIST_PAGE_BYTES {
                // The route has no cursor: pending wakes leave it when acknowledged.
                let larger = if shown < cairn_core::model::MAX_PAGE_SIZE && bytes < cairn_core::LIST_PAGE_BYTES {
                    ", or pass a larger --limit, up to 1000"
                } else {
                    ""
                };
                errln!("(the oldest {shown} pending wakes; there may be more: acknowledge these{larger})")?;
            }
            if json {
                print_json(&page)?;
            } else {
                let rows: Vec<Vec<String>> = page
                    .get("wakes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        vec![
                            str_at(w, "/wake_id"),
                            str_at(w, "/target_scope/agent_frame_id"),
                            str_at(w, "/process_id"),
                            num_at(w, "/sequence"),
                            str_at(w, "/event_type"),
                            age(w.get("created_at_ms")),
                            one_line(&str_at(w, "/input"), 60),
                        ]
                    })
                    .collect();
                print_table(&["WAKE", "FRAME", "PROCESS", "SEQ", "TYPE", "AGE", "INPUT"], &rows)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ack { session, wake_id, .. } => {
            hints::on_lost_answer(format_args!("wakes {}", hints::word(&session)), None);
            let (_, answer) = client
                .post(
                    &format!("/v1/sessions/{}/wakes/{}/ack", segment(&session), segment(&wake_id)),
                    &json!({}),
                )
                .await?;
            if json {
                print_json(&answer)?;
            } else if answer.get("acked").and_then(Value::as_bool) == Some(true) {
                outln!("acknowledged {wake_id}")?;
            } else {
                outln!("{wake_id} was already acknowledged")?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `cancel --session`: one request, whose server goes on to the end when
/// the answer is lost; a session's work may be hundreds of thousands of
/// processes, so it waits as long as a prune does.
async fn cancel_session(
    client: &Client,
    json: bool,
    session: &str,
    reason: Option<String>,
) -> Result<ExitCode, ClientError> {
    hints::on_lost_answer(format_args!("ls --granted-to {}", hints::word(session)), None);
    let body = match &reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    };
    let (_, report) = client
        .post_within(
            &format!("/v1/sessions/{}/cancel", segment(session)),
            &body,
            Duration::from_secs(24 * 3600),
        )
        .await?;
    if json {
        print_json(&report)?;
    } else {
        let requested = report.get("requested").and_then(Value::as_u64).unwrap_or(0);
        let now = report.get("cancelled_now").and_then(Value::as_u64).unwrap_or(0);
        if requested == 0 {
            outln!(
                "session {session} has no running process granted to it whose cancellation was not requested \
                 already: nothing to cancel"
            )?;
        } else {
            let plural = if requested == 1 { "" } else { "es" };
            outln!(
                "cancellation requested for {requested} running process{plural} granted to session {session} \
                 or descending from them ({now} ended at once; the rest end as their runs stop)"
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `await`: one request per server cap (`--max-await`) until the process ends or
/// the caller's whole timeout has passed, so a long timeout is never cut short.
/// A server that stops partway (a shutdown or restart, or a 503) is asked
/// again with the waits a broken event stream uses (about 40 s in all), within
/// the caller's timeout: the process is durable, and so is waiting for it.
async fn await_command(client: &Client, json: bool, id: &str, timeout: Duration) -> Result<ExitCode, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut reached = false;
    // Whether the server ever answered this wait with the record.
    let mut answered = false;
    let mut retries = http::reconnect_delays();
    // What ended the first wait of the current outage, said if it outlasts us.
    let mut outage: Option<String> = None;
    let record = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let asked = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
        let sent = Instant::now();
        // The server answers at its deadline; one that does not (hung, or
        // a network that drops what it carries) is not waited on past ours.
        let answer = client
            .get_within(
                &format!("{}/await?{}", proc_path(id), query([("timeout_ms", asked.to_string())])),
                remaining.saturating_add(http::AWAIT_GRACE),
            )
            .await;
        // What the server showed this time, and whether it took the
        // request and never answered (hung), not gone.
        let (lost, hung) = match answer {
            Ok(record) => {
                reached = true;
                answered = true;
                // The server answered "running" before our deadline at once:
                // a shutdown ends the waits it holds so (a cap answers after
                // waiting). Ask again as after an outage.
                let early = sent.elapsed() < Duration::from_millis(50) && asked >= 1000;
                if str_at(&record, "/status") != "running" || Instant::now() >= deadline {
                    break record;
                }
                if !early {
                    retries = http::reconnect_delays();
                    outage = None;
                    continue;
                }
                ("it answered at once, as a server shutting down does".to_string(), false)
            }
            // A server never reached is said at once, with its hint.
            Err(e @ ClientError::Unreachable { .. }) if !reached => return Err(e),
            Err(
                e @ (ClientError::Unreachable { .. }
                | ClientError::Http(_)
                | ClientError::NoAnswer { .. }
                | ClientError::Interrupted(_)
                | ClientError::Api { status: 503, .. }),
            ) => {
                // A wait cut off (a server killed while it held it) or a
                // 503 was a server reached: asked again, its restart's
                // refused connections are an outage, not "never there".
                reached = true;
                (e.server_state(), e.is_no_answer())
            }
            Err(e) => return Err(e),
        };
        let first = outage.get_or_insert_with(|| lost.clone());
        let remaining = deadline.saturating_duration_since(Instant::now());
        match retries.next() {
            Some(delay) if !remaining.is_zero() => tokio::time::sleep(delay.min(remaining)).await,
            // A server that takes the wait and never answers: whether the
            // process ended is not known.
            _ if hung => {
                return Err(ClientError::Interrupted(format!(
                    "no answer to the wait in time ({lost}); {id}'s state is unknown: `{}`{} again once the \
                     server answers",
                    cmd(format_args!("await {id}")),
                    token_note()
                )))
            }
            // A server gone (refusing or closing connections, or answering
            // 503) and not back.
            _ => {
                let since = if *first == lost {
                    String::new()
                } else {
                    format!(" ({lost})")
                };
                let last_seen = if answered {
                    format!("; {id} was still running when it last answered")
                } else {
                    String::new()
                };
                return Err(ClientError::Interrupted(format!(
                    "the server ended the wait ({first}) and was not back in time{since}{last_seen}: `{}`{} \
                     again once the server is back",
                    cmd(format_args!("await {id}")),
                    token_note()
                )));
            }
        }
    };
    if json {
        print_json(&record)?;
    } else {
        print_record(&record)?;
    }
    if str_at(&record, "/status") == "running" {
        // With `--json`, the record says it runs, and the exit code why.
        if !json {
            errln!(
                "timed out after {}: {id} is still running (exit code {EXIT_STILL_RUNNING})",
                humantime::format_duration(timeout)
            )?;
        }
        return Ok(ExitCode::from(EXIT_STILL_RUNNING));
    }
    // Ended: 0 only for a success, so `cairn await build-42 && deploy`
    // deploys only what succeeded (a command's own exit code is not passed
    // on: 2 and 3 mean other things here).
    Ok(match exit_code_of(&record, false, json)? {
        code if code == ExitCode::SUCCESS => code,
        _ => ExitCode::FAILURE,
    })
}

/// `run --id X` of an `X` started otherwise: which of what identifies a run
/// differs (its command, directory, forwarded environment, disposition,
/// timeout), and what to do.
async fn run_conflict(client: &Client, id: &str, body: &Value) -> ClientError {
    let stored = client.get(&proc_path(id)).await.ok();
    let mut differs = Vec::new();
    if let Some(stored) = &stored {
        let mine = |p: &str| body.pointer(p).cloned().unwrap_or(Value::Null);
        let theirs = |p: &str| stored.pointer(p).cloned().unwrap_or(Value::Null);
        for (pointer, what) in [
            ("/input/args/argv", "command"),
            ("/input/args/cwd", "directory (cwd)"),
            ("/input/args/env", "forwarded environment"),
            ("/input/args/timeout_ms", "timeout"),
            ("/disposition", "disposition"),
            ("/input/tool", "kind of process"),
        ] {
            if mine(pointer) != theirs(pointer) {
                differs.push(what);
            }
        }
    }
    let said = match (&stored, differs.as_slice()) {
        // Unreadable here (another session's, say): nothing to compare, and
        // nothing to look at.
        (None, _) => format!("{id} already exists, started otherwise: an id names one run; give a new --id"),
        (Some(_), []) => format!(
            "{id} already exists, started with a different start request: an id names one run; give a new --id, \
             or see that one with `{}` and `{}`{}",
            cmd(format_args!("get {id}")),
            cmd(format_args!("events {id}")),
            token_note()
        ),
        (Some(_), differs) => format!(
            "{id} already exists, started with a different {}: an id names one run; give a new --id, \
             or see that one with `{}` and `{}`{}",
            differs.join(", "),
            cmd(format_args!("get {id}")),
            cmd(format_args!("events {id}")),
            token_note()
        ),
    };
    ClientError::Api {
        status: 409,
        code: "registration_conflict".into(),
        message: said,
        tombstone: None,
    }
}

/// How long `run` waits for the server to answer its cancel request once
/// it was told to stop.
const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long `run` waits for its command to start before it says the run is
/// queued for a worker slot.
const QUEUED_NOTE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// A line on stderr for `run` where a failed write changes nothing (it is
/// stopping anyway): never a panic.
fn note(line: std::fmt::Arguments<'_>) {
    let _ = output::note(line);
}

/// The first of `run`'s writes that failed (its output closed, or full),
/// told to the loop that follows the process, which then cancels it.
#[derive(Default)]
struct OutputLost {
    told: tokio::sync::Notify,
    error: std::sync::Mutex<Option<ClientError>>,
}

impl OutputLost {
    /// Whether `written` was: a failure is kept (the first) and told.
    fn written(&self, written: Result<(), ClientError>) -> bool {
        let Err(e) = written else { return true };
        let mut kept = self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.is_none() {
            *kept = Some(e);
            self.told.notify_one();
        }
        false
    }

    /// The failure kept.
    fn take(&self) -> Option<ClientError> {
        self.error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// A stream of `kind` signals, or none where it cannot be installed (the
/// run then goes on without hearing of them) or the caller set it to be
/// ignored: `nohup cairn run ...` keeps its run through a hangup.
fn unix_signal(kind: tokio::signal::unix::SignalKind) -> Option<tokio::signal::unix::Signal> {
    // SAFETY: `sigaction` with a null new action only reads the current one
    // into `old`, a zeroed struct of the right type.
    let ignored = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(kind.as_raw_value(), std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    };
    if ignored {
        return None;
    }
    tokio::signal::unix::signal(kind).ok()
}

/// Resolves once stdout is a pipe whose reader has gone away
/// (`cairn run ... | head -1` after `head` exits), even while nothing is
/// written: Linux marks a pipe's write end `POLLERR` then. Never, for
/// any other stdout, or on another system.
async fn stdout_reader_gone() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `fstat` writes into a zeroed struct of the right type.
        let is_pipe = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(libc::STDOUT_FILENO, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO
        };
        if is_pipe {
            let (tell, told) = tokio::sync::oneshot::channel::<()>();
            // A blocking `poll` in a thread of its own: it may wait as long as
            // the run does, and is left behind when `run` exits.
            let spawned = std::thread::Builder::new()
                .name("stdout-reader".into())
                .spawn(move || loop {
                    let mut fd = libc::pollfd {
                        fd: libc::STDOUT_FILENO,
                        events: 0,
                        revents: 0,
                    };
                    // SAFETY: one valid `pollfd`, waited on with no timeout.
                    let n = unsafe { libc::poll(&mut fd, 1, -1) };
                    if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    if n > 0 && fd.revents & libc::POLLERR != 0 {
                        let _ = tell.send(());
                    }
                    return;
                });
            if spawned.is_ok() && told.await.is_ok() {
                return;
            }
        }
    }
    std::future::pending().await
}

/// The next signal of `signal`; never, without one.
async fn recv_signal(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether stdin carries data `run` would silently drop: a non-empty file, or a
/// pipe or socket with input (or its end) within 100 ms. A terminal, `/dev/null`,
/// or a pipe nobody writes to (`ssh host cairn run ...`) is fine: nothing is being sent.
fn stdin_has_input() -> bool {
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let stdin = std::io::stdin();
    let Ok(fd) = stdin.as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return meta.len() > 0;
    }
    if !(kind.is_fifo() || kind.is_socket()) {
        return false;
    }
    let handle = stdin.as_fd();
    let mut fds = [nix::poll::PollFd::new(handle, nix::poll::PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, 100u8) {
        Ok(n) if n > 0 => {
            // Readable: either data (refuse) or the writer's end (nothing was sent).
            let mut byte = [0u8; 1];
            matches!(stdin.lock().read(&mut byte), Ok(n) if n > 0)
        }
        _ => false,
    }
}

/// The `env` of the shell tool's args: `--env-all` first, then each `--env`.
fn forwarded_env(args: &RunArgs) -> Result<serde_json::Map<String, Value>, ClientError> {
    let mut env = serde_json::Map::new();
    if args.env_all {
        // Variables that are not UTF-8 cannot travel in JSON; they are left
        // out. So is the client's own configuration (`CAIRN_TOKEN`, a
        // database URL's password): what is forwarded is stored in the
        // process's record, which every reader of the process sees.
        // Those left out for not being UTF-8 are said, by name (escaped):
        // the command would otherwise see the server's value, or none,
        // with nothing said (`--env KEY` refuses such a variable).
        let mut not_utf8 = Vec::new();
        for (k, v) in std::env::vars_os() {
            match (k.to_str(), v.to_str()) {
                (Some(k), _) if k.starts_with("CAIRN_") => {}
                (Some(k), Some(v)) => {
                    env.insert(k.to_string(), Value::String(v.to_string()));
                }
                (Some(k), None) => not_utf8.push(format!("`{}`", k.escape_debug())),
                (None, _) => not_utf8.push(format!("`{}`", k.as_encoded_bytes().escape_ascii())),
            }
        }
        if !not_utf8.is_empty() {
            not_utf8.sort();
            note(format_args!(
                "--env-all: not forwarded, their name or value is not UTF-8 (JSON cannot carry it): {}",
                not_utf8.join(", ")
            ));
        }
    }
    for item in &args.env {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => {
                let value = std::env::var(item).map_err(|_| {
                    ClientError::Usage(format!("--env {item}: `{item}` is not set (or not UTF-8) here"))
                })?;
                (item.clone(), value)
            }
        };
        if key.is_empty() {
            return Err(ClientError::Usage(format!("--env {item}: the name is empty")));
        }
        env.insert(key, Value::String(value));
    }
    Ok(env)
}

async fn run_command(client: &Client, json: bool, args: RunArgs) -> Result<ExitCode, ClientError> {
    if stdin_has_input() {
        return Err(ClientError::Usage(
            "`cairn run` does not forward stdin: the command runs on the server with stdin closed. \
             Pass input as an argument or a file, or run with `< /dev/null`"
                .into(),
        ));
    }
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("run-{}", uuid::Uuid::new_v4().simple()));
    let mut tool_args = json!({"argv": args.argv});
    // The server resolves a relative directory against its own, which the
    // caller does not know: a relative --cwd is taken from here.
    let cwd = match &args.cwd {
        Some(cwd) => {
            let path = std::path::absolute(cwd)
                .map_err(|e| ClientError::Usage(format!("--cwd `{cwd}` cannot be made absolute: {e}")))?;
            Some(
                path.to_str()
                    .map(str::to_string)
                    .ok_or_else(|| ClientError::Usage(format!("--cwd `{}` is not UTF-8 text", path.display())))?,
            )
        }
        // The command runs in this directory, as the docs promise: one that
        // cannot be read (removed, or not UTF-8) is refused, never left to
        // the server's own directory.
        None => {
            let here = std::env::current_dir().map_err(|e| {
                ClientError::Usage(format!(
                    "cannot read this directory ({e}), where the command would run: pass --cwd"
                ))
            })?;
            Some(here.to_str().map(str::to_string).ok_or_else(|| {
                ClientError::Usage(format!(
                    "this directory `{}` is not UTF-8 text, which the command's directory must be: pass --cwd",
                    here.display()
                ))
            })?)
        }
    };
    if let Some(cwd) = cwd {
        tool_args["cwd"] = Value::String(cwd);
    }
    let env = forwarded_env(&args)?;
    if !env.is_empty() {
        tool_args["env"] = Value::Object(env);
    }
    if let Some(t) = args.timeout {
        tool_args["timeout_ms"] = json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    }
    let body = json!({
        "id": id,
        "input": {"type": "tool_call", "tool": "shell", "args": tool_args},
        "disposition": args.disposition.wire(),
    });
    hints::on_lost_answer(
        format_args!("get {}", hints::word(&id)),
        Some(format!("run --id {} -- ...", hints::word(&id))),
    );
    let (status, record) = match client.post("/v1/processes", &body).await {
        Err(ClientError::Api { code, .. }) if code == "registration_conflict" => {
            return Err(run_conflict(client, &id, &body).await)
        }
        // The id was made here: said, so the start can be looked up, or
        // repeated under it without running the command twice; so too when
        // the server says it cannot tell (`outcome_unknown`).
        Err(e @ (ClientError::NoAnswer { .. } | ClientError::LostAnswer(_))) => {
            return Err(ClientError::Interrupted(format!(
                "{e}; `{id}` may or may not have started: `{}` tells, and `{}`{} with the same command repeats \
                 the start without running it twice",
                cmd(format_args!("get {id}")),
                cmd(format_args!("run --id {id} -- ...")),
                token_note()
            )))
        }
        // Still the server's answer (its code and status, for `--json`).
        Err(ClientError::Api {
            status,
            code,
            message,
            tombstone,
        }) if code == "outcome_unknown" => {
            return Err(ClientError::Api {
                status,
                code,
                message: format!(
                    "{message}; `{id}` may or may not have started: `{}` tells, and `{}`{} with the same \
                     command repeats the start without running it twice",
                    cmd(format_args!("get {id}")),
                    cmd(format_args!("run --id {id} -- ...")),
                    token_note()
                ),
                tombstone,
            })
        }
        other => other?,
    };
    let verb = start_verb(status, &record);
    let ended = str_at(&record, "/status") != "running";
    if args.detach {
        // Nothing to cancel when the output closes: it ends as other
        // commands do.
        if json {
            print_json(&record)?;
        } else {
            outln!("{id}")?;
            if ended {
                errln!(
                    "{id} already ran: it ended {}; see how with `{}`, its output with `{}`{}",
                    str_at(&record, "/status"),
                    cmd(format_args!("get {id}")),
                    cmd(format_args!("events {id}")),
                    token_note()
                )?;
            } else {
                errln!(
                    "{verb} {id} in the background; follow it with `{}`, wait with `{}`, stop it with `{}`{}",
                    cmd(format_args!("events {id} --follow")),
                    cmd(format_args!("await {id}")),
                    cmd(format_args!("cancel {id}")),
                    token_note()
                )?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Install the Ctrl-C handler before saying the run started, so an
    // interrupt right after that line is never the default kill; one the
    // caller set to be ignored (a shell's background job) stays ignored.
    let mut ctrl_c = unix_signal(tokio::signal::unix::SignalKind::interrupt());
    // What ends a command run in a terminal ends it here too: the terminal
    // closing (SIGHUP), a `timeout` or a CI job stopping (SIGTERM), the
    // reader of its output going away (`cairn run ... | head`). Each cancels
    // the process, then `run` exits at once (128 + the signal).
    let mut terminate = unix_signal(tokio::signal::unix::SignalKind::terminate());
    let mut hangup = unix_signal(tokio::signal::unix::SignalKind::hangup());
    // A closed stderr is a closed output too (a write there fails): the
    // process is cancelled.
    let output_lost = OutputLost::default();
    if !json {
        output_lost.written(if ended {
            errln!(
                "{id} already ran and ended {}; its output again:",
                str_at(&record, "/status")
            )
        } else {
            errln!("{verb} {id} (Ctrl-C cancels it)")
        });
    }
    // Output lines go where the command wrote them; the rest of the log is not
    // the command's output, except that a new attempt is said (a rerunnable
    // run whose server stopped runs again from the start). A write that
    // fails is the loop's to act on (cancel the process): the stream goes on
    // until then, its lines unwritten.
    let lost = &output_lost;
    // Whether the follow has seen the command start (its log read from the
    // start, so a run already started says so at once).
    let started = std::cell::Cell::new(false);
    let follow = client.follow(&id, 0, true, |event| {
        if event.get("event_type").and_then(Value::as_str) == Some("process.started") {
            started.set(true);
        }
        if json {
            return Ok(());
        }
        match event.get("event_type").and_then(Value::as_str) {
            Some("shell.output") => {}
            Some("process.started") => {
                let attempt = event.pointer("/payload/attempt").and_then(Value::as_u64).unwrap_or(1);
                if attempt > 1 && ended {
                    lost.written(errln!(
                        "{id} ran again (attempt {attempt}): the run before did not end (its server stopped \
                         or lost it), and a rerunnable run starts over; the output below is that run's"
                    ));
                } else if attempt > 1 {
                    lost.written(errln!(
                        "{id} runs again (attempt {attempt}): its last run did not end (its server stopped \
                         or lost it), and a rerunnable run starts over; the output below is the new run's"
                    ));
                }
                return Ok(());
            }
            _ => return Ok(()),
        }
        let to_stderr = event.pointer("/payload/stream").and_then(Value::as_str) == Some("stderr");
        for line in event
            .pointer("/payload/lines")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = line.as_str().map(str::to_string).unwrap_or_else(|| line.to_string());
            let written = if to_stderr { errln!("{text}") } else { outln!("{text}") };
            if !lost.written(written) {
                return Ok(());
            }
        }
        lost.written(output::flush());
        Ok(())
    });
    let mut follow = std::pin::pin!(follow);
    // A run whose worker's lease lapsed and that no worker took on (its node
    // died and did not come back) is said once, rather than waited on in
    // silence: looked at a little after each expiry, never more often than
    // every few seconds.
    let lease_watch = async {
        if json || ended {
            return std::future::pending().await;
        }
        // The lease as last seen and since when (this machine's clock): a
        // lease seen unrenewed for `LEASE_UNCHANGED_MS` has lapsed whatever
        // the two machines' clocks say (a live one is renewed every third of
        // its time to live, and that is under a minute by default).
        let mut seen: Option<(Value, u64)> = None;
        let mut unchanged = |record: &Value, now: u64| {
            let lease = record.get("lease").cloned().unwrap_or(Value::Null);
            match &seen {
                Some((last, since)) if *last == lease => now.saturating_sub(*since),
                _ => {
                    seen = Some((lease, now));
                    0
                }
            }
        };
        let now = now_ms();
        let mut look = lease_look(&id, &record, now, unchanged(&record, now));
        loop {
            let due = match look {
                LeaseLook::Again(at) => at,
                LeaseLook::Lapsed(_) => now_ms(),
                LeaseLook::Done => break,
            };
            tokio::time::sleep(Duration::from_millis(due.saturating_sub(now_ms()))).await;
            look = match client.get(&proc_path(&id)).await {
                Ok(now_record) => {
                    let now = now_ms();
                    lease_look(&id, &now_record, now, unchanged(&now_record, now))
                }
                Err(_) => LeaseLook::Again(now_ms() + LEASE_LOOK_GAP_MS),
            };
            if let LeaseLook::Lapsed(text) = &look {
                lost.written(errln!("{text}"));
                break;
            }
        }
        std::future::pending().await
    };
    let mut lease_watch = std::pin::pin!(lease_watch);
    // A run not started a little after it was taken waits for a worker slot
    // (all of the server's `--workers` busy): said once, from what the
    // follow has seen, asking the server nothing more.
    let queued_note = async {
        if json || ended {
            return std::future::pending().await;
        }
        tokio::time::sleep(QUEUED_NOTE_AFTER).await;
        if !started.get() {
            let timeout = if args.timeout.is_some() {
                "; its --timeout counts from when it starts"
            } else {
                ""
            };
            lost.written(errln!(
                "{id} is queued: it has not started, waiting for a free worker slot on the server \
                 (its `--workers` are busy){timeout}"
            ));
        }
        std::future::pending().await
    };
    let mut queued_note = std::pin::pin!(queued_note);
    // The reader of stdout gone while the command is quiet: told as a failed
    // write is, so the process is cancelled now, not at its next line.
    let reader_gone = async {
        stdout_reader_gone().await;
        lost.written(Err(ClientError::Output {
            stream: output::Stream::Stdout,
            source: std::io::Error::from(std::io::ErrorKind::BrokenPipe),
        }));
        std::future::pending::<()>().await
    };
    let mut reader_gone = std::pin::pin!(reader_gone);
    let mut interrupted = false;
    let mut cancel_recorded = false;
    // A write that failed otherwise than on a closed output (a full disk):
    // said once the process is cancelled, and `run` exits 1.
    let mut unwritten = None;
    loop {
        let ended_by = tokio::select! {
            done = &mut follow => {
                done?;
                break;
            }
            () = &mut lease_watch => continue,
            () = &mut queued_note => continue,
            () = &mut reader_gone => continue,
            () = output_lost.told.notified() => match output_lost.take() {
                Some(e) if e.exit_code() != output::EXIT_OUTPUT_CLOSED => {
                    unwritten = Some(e);
                    ("its output could not be written".to_string(), 1)
                }
                _ => ("its output was closed".to_string(), output::EXIT_OUTPUT_CLOSED),
            },
            Some(()) = recv_signal(&mut terminate) => ("SIGTERM".to_string(), 128 + 15),
            Some(()) = recv_signal(&mut hangup) => ("SIGHUP".to_string(), 128 + 1),
            Some(()) = recv_signal(&mut ctrl_c) => {
                let stopped_following = |recorded: bool| {
                    if recorded {
                        note(format_args!(
                            "stopped following {id}; its cancellation is recorded: `{}`{} shows how it ended",
                            cmd(format_args!("await {id}")),
                            token_note()
                        ));
                    } else {
                        note(format_args!(
                            "stopped following {id}, which may still run (its cancellation was not recorded): `{}`{}",
                            cmd(format_args!("cancel {id}")),
                            token_note()
                        ));
                    }
                    Ok(ExitCode::from(EXIT_INTERRUPTED))
                };
                if interrupted {
                    return stopped_following(cancel_recorded);
                }
                interrupted = true;
                let body = json!({"reason": "interrupted: Ctrl-C in `cairn run`"});
                let cancel_path = format!("{}/cancel", proc_path(&id));
                // A server that does not answer leaves the next Ctrl-C its
                // meaning: stop following.
                let posted = tokio::select! {
                    posted = tokio::time::timeout(CANCEL_WAIT, client.post(&cancel_path, &body)) => posted,
                    Some(()) = recv_signal(&mut ctrl_c) => return stopped_following(false),
                };
                match posted {
                    Ok(Ok(_)) => {
                        cancel_recorded = true;
                        note(format_args!("cancelling {id} (Ctrl-C); waiting for it to stop (Ctrl-C again to stop waiting)"));
                    }
                    Ok(Err(e)) => {
                        note(format_args!("could not cancel {id}: {e} (Ctrl-C again to stop following it)"));
                    }
                    Err(_) => {
                        note(format_args!("could not cancel {id}: the server did not answer in {} s (Ctrl-C again to stop following it)", CANCEL_WAIT.as_secs()));
                    }
                }
                continue;
            }
        };
        let (what, code) = ended_by;
        // A run replaying the output of one that ended has nothing to cancel.
        if ended {
            return unwritten.map_or(Ok(ExitCode::from(code)), Err);
        }
        let body = json!({"reason": format!("interrupted: {what} (`cairn run`)")});
        // Bounded, and a second signal ends the wait: a server that does not
        // answer must not leave `run` deaf to the signals that stop it.
        let cancel_path = format!("{}/cancel", proc_path(&id));
        let cancel = tokio::time::timeout(CANCEL_WAIT, client.post(&cancel_path, &body));
        let posted = tokio::select! {
            posted = cancel => posted.ok(),
            Some(()) = recv_signal(&mut terminate) => None,
            Some(()) = recv_signal(&mut hangup) => None,
            Some(()) = recv_signal(&mut ctrl_c) => None,
        };
        match posted {
            Some(Ok(_)) => {
                note(format_args!("cancelled {id}: `cairn run` was stopped ({what})"));
            }
            // It ended before the cancel: nothing runs, nothing to say.
            Some(Err(ClientError::Api { code: c, .. })) if c == "process_terminal" => {}
            Some(Err(e)) => {
                note(format_args!(
                    "`cairn run` was stopped ({what}) and could not cancel {id}, which may still run: {e}"
                ));
            }
            None => {
                note(format_args!(
                    "`cairn run` was stopped ({what}) and could not cancel {id} (no answer in time), which may \
                     still run: `{}`{}",
                    cmd(format_args!("cancel {id}")),
                    token_note()
                ));
            }
        }
        return unwritten.map_or(Ok(ExitCode::from(code)), Err);
    }
    // The process ended as its output closed (the two told at once):
    // nothing to cancel, and the output lost is said as any other command's.
    if let Some(e) = output_lost.take() {
        return Err(e);
    }
    // The process has ended: a closed output now ends `run` as it does
    // every other command; a signal while its record is read ends `run`
    // (128 + the signal) rather than waiting on a server that does not answer.
    let path = proc_path(&id);
    let record = tokio::select! {
        record = client.get(&path) => record?,
        Some(()) = recv_signal(&mut terminate) => return Ok(ExitCode::from(128 + 15)),
        Some(()) = recv_signal(&mut hangup) => return Ok(ExitCode::from(128 + 1)),
        Some(()) = recv_signal(&mut ctrl_c) => return Ok(ExitCode::from(EXIT_INTERRUPTED)),
    };
    if json {
        print_json(&record)?;
    }
    let code = exit_code_of(&record, true, json)?;
    Ok(
        if interrupted && record.pointer("/outcome/type").and_then(Value::as_str) == Some("cancelled") {
            ExitCode::from(EXIT_INTERRUPTED)
        } else {
            code
        },
    )
}

/// How long a lease may have lapsed before `run` says no worker holds its
/// process: a peer's takeover of rerunnable work comes well within it.
const LEASE_LAPSE_MARGIN_MS: u64 = 5_000;
/// The least time between two of `run`'s looks at its process's lease.
const LEASE_LOOK_GAP_MS: u64 = 5_000;
/// How long `run` must see the same lease unrenewed before saying it lapsed.
const LEASE_UNCHANGED_MS: u64 = 20_000;
/// When `run` looks again at a process no lease holds (not claimed yet, or
/// suspended).
const NO_LEASE_LOOK_MS: u64 = 10_000;

/// What `run` makes of its process's record at a look at the lease.
#[derive(Debug, PartialEq)]
enum LeaseLook {
    /// Its lease lapsed a while ago and no worker took it on: the note.
    Lapsed(String),
    /// Look again at this time (epoch ms).
    Again(u64),
    /// It ended: nothing more to look at.
    Done,
}

fn lease_look(id: &str, record: &Value, now: u64, unchanged_ms: u64) -> LeaseLook {
    if str_at(record, "/status") != "running" {
        return LeaseLook::Done;
    }
    let Some(lease) = record.get("lease").filter(|l| l.is_object()) else {
        return LeaseLook::Again(now + NO_LEASE_LOOK_MS);
    };
    let at = lease.get("expires_at_ms").and_then(Value::as_u64).unwrap_or(now);
    if now < at.saturating_add(LEASE_LAPSE_MARGIN_MS) {
        return LeaseLook::Again(at.saturating_add(LEASE_LAPSE_MARGIN_MS).max(now + LEASE_LOOK_GAP_MS));
    }
    // This machine's clock may run ahead of the server's: only a lease also
    // seen unrenewed for a while is said to have lapsed.
    if unchanged_ms < LEASE_UNCHANGED_MS {
        return LeaseLook::Again(now + LEASE_LOOK_GAP_MS);
    }
    let head = format!(
        "{id}: the lease of worker {} lapsed {} and no worker holds it (its server may be gone)",
        str_at(lease, "/owner_id"),
        age_at(at, now)
    );
    LeaseLook::Lapsed(if str_at(record, "/disposition") == "rerunnable" {
        format!("{head}; rerunnable work runs again once a worker claims it. Still following {id}")
    } else {
        format!(
            "{head}; owner_bound work is not run again: it stays running until its server restarts (same \
             --node-id) or `{}`{} ends it. Still following {id}",
            cmd(format_args!("abandon {id} --reason ...")),
            token_note()
        )
    })
}

/// How a start's answer is said: `started` (201), `already started` for a
/// repeat of one still running, `already ran` for one that has ended.
fn start_verb(status: reqwest::StatusCode, record: &Value) -> &'static str {
    if status.as_u16() == 201 {
        "started"
    } else if str_at(record, "/status") == "running" {
        "already started"
    } else {
        "already ran"
    }
}

/// The exit code a finished `run` reports: 0 for success, the command's own
/// when the outcome carries it (and `command_code`: `run` printed the
/// command's output, which says the rest); otherwise 1. Without `json`,
/// how the process ended is said on stderr (with it, the record printed
/// on stdout says so, and stderr holds only errors).
fn exit_code_of(record: &Value, command_code: bool, json: bool) -> Result<ExitCode, ClientError> {
    let (code, said) = ending_of(record, command_code);
    if let Some(said) = said.filter(|_| !json) {
        errln!("{said}")?;
    }
    Ok(code)
}

/// [`exit_code_of`]'s code, and what it says of the ending.
fn ending_of(record: &Value, command_code: bool) -> (ExitCode, Option<String>) {
    let outcome = record.get("outcome").unwrap_or(&Value::Null);
    let id = str_at(record, "/id");
    match outcome.get("type").and_then(Value::as_str) {
        Some("success") => (ExitCode::SUCCESS, None),
        Some("failure") => {
            if let Some(code) = outcome
                .pointer("/raw/exit_code")
                .and_then(Value::as_u64)
                .filter(|_| command_code)
            {
                return (
                    ExitCode::from(u8::try_from(code).ok().filter(|c| *c != 0).unwrap_or(1)),
                    None,
                );
            }
            // A command a signal ended answers 128 + the signal, as a shell
            // does; said on stderr too, since the output does not say it.
            if let Some(signal) = outcome
                .pointer("/raw/signal")
                .and_then(Value::as_u64)
                .filter(|s| command_code && (1..128).contains(s) && str_at(outcome, "/code") == "exit_status")
            {
                return (
                    ExitCode::from(128 + u8::try_from(signal).unwrap_or(0)),
                    Some(format!("{id}: the command was killed by signal {signal}")),
                );
            }
            let said = format!(
                "{id} failed: {}: {}",
                shown(&str_at(outcome, "/code")),
                shown(&str_at(outcome, "/message"))
            );
            (ExitCode::FAILURE, Some(said))
        }
        Some("cancelled") => (
            ExitCode::FAILURE,
            Some(format!("{id} was cancelled: {}", shown(&str_at(outcome, "/message")))),
        ),
        Some("abandoned") => (
            ExitCode::FAILURE,
            Some(format!("{id} was abandoned: {}", abandonment(outcome))),
        ),
        _ => (
            ExitCode::FAILURE,
            Some(format!("{id} ended without an outcome ({})", str_at(record, "/status"))),
        ),
    }
}

/// When the worker reconciles an abandon request, as `cairn abandon` says
/// it (after the status): it ended already, a live lease holds it off until
/// it lapses, a lapsed one (a dead node's stranded work) or none does not.
fn abandon_when(record: &Value, now: u64) -> String {
    if str_at(record, "/status") != "running" {
        return String::new();
    }
    match record.get("lease").filter(|l| l.is_object()) {
        None => " (no lease holds it: reconciled shortly)".into(),
        Some(lease) => match lease.get("expires_at_ms").and_then(Value::as_u64) {
            Some(at) if at <= now => format!(" (its lease lapsed {}: reconciled shortly)", age_at(at, now)),
            _ => " (reconciled once its lease lapses)".into(),
        },
    }
}

/// What `cairn cancel` and `cairn signal` add for a running owner_bound
/// process whose lease lapsed (its node gone): no other node takes it on, so
/// nothing acts on the request or the signal until that node comes back
/// (whose restart abandons it) or an abandon request ends it. `None` for
/// every other process.
fn stranded(id: &str, record: &Value, now: u64) -> Option<String> {
    if str_at(record, "/status") != "running" || str_at(record, "/disposition") != "owner_bound" {
        return None;
    }
    let lease = record.get("lease").filter(|l| l.is_object())?;
    let at = lease
        .get("expires_at_ms")
        .and_then(Value::as_u64)
        .filter(|at| *at <= now)?;
    let owner = str_at(lease, "/owner_id");
    let comes_back = match cairn_core::NodeIdentity::parse_owner(&owner) {
        Some(n) => format!("node {0} must come back (`cairn serve --node-id {0}`)", n.node),
        None => format!("worker {owner} must come back"),
    };
    Some(format!(
        "nothing acts on it: the lease of worker {owner} lapsed {} and owner_bound work is taken on by no \
         other node; {comes_back}, or an abandon request ends it (`{}`{})",
        age_at(at, now),
        cmd(format_args!("abandon {id} --reason ...")),
        token_note()
    ))
}

/// What to say of signal `name`, recorded as `event`, when `record` (read
/// after it) shows process `id` waiting for a signal of another name: kept
/// (SPEC §13), the signal wakes nothing now, which a typo in its name would
/// otherwise leave unsaid. A wait that began after the signal says nothing
/// of it (the signal may have ended the wait before it).
fn waits_for_another(id: &str, name: &str, record: &Value, event: &Value) -> Option<String> {
    let wait = record.get("wait").filter(|w| str_at(w, "/kind") == "signal")?;
    let awaited = str_at(wait, "/name");
    let since = wait.get("since_ms").and_then(Value::as_u64)?;
    let sent = event.get("occurred_at_ms").and_then(Value::as_u64)?;
    (str_at(record, "/status") == "running" && awaited != name && since <= sent)
        .then(|| format!("{id} waits for signal `{awaited}`, not `{name}`; the signal is kept for a later wait"))
}

/// Why a process was abandoned, for humans.
fn abandonment(outcome: &Value) -> String {
    let owner = str_at(outcome, "/evidence/owner/owner_id");
    let by = if owner.is_empty() {
        String::new()
    } else {
        format!(" (worker {owner})")
    };
    // A request's evidence names the last run's owner (from `started`),
    // which may be a live server: the process may have been suspended (its
    // lease released) or never run, with no lease lapsed and no worker lost.
    let last_run = if owner.is_empty() {
        String::new()
    } else {
        format!(" (last run by worker {owner})")
    };
    match str_at(outcome, "/evidence/writer").as_str() {
        "owner_drain" => format!(
            "the server running it{by} shut down before it ended; owner_bound work is never run again \
             (start it with `--disposition rerunnable` to have it re-run after a restart)"
        ),
        "sweep" => format!("its worker{by} was lost before it ended; owner_bound work is never run again"),
        "reconciled_request" => format!("an abandon request was reconciled once no live lease held it{last_run}"),
        other => format!("writer {other}{by}"),
    }
}

async fn ls(client: &Client, json: bool, args: LsArgs) -> Result<ExitCode, ClientError> {
    // An ended process never waits: with `--waiting true` the ended ones
    // would add nothing, so an empty listing does not point at them.
    let ended_would_add = args.status.is_none() && args.waiting != Some(true);
    let mut pairs: Vec<(&str, String)> = Vec::new();
    let mut add = |k: &'static str, v: Option<String>| {
        if let Some(v) = v {
            pairs.push((k, v));
        }
    };
    add("status", args.status);
    add("granted_to", args.granted_to);
    add("originated_by", args.originated_by);
    add("waiting", args.waiting.map(|w| w.to_string()));
    add("definition", args.definition);
    add("originator", args.originator);
    add("caused_by", args.caused_by);
    created_range(args.created_from, args.created_before)?;
    add("created_from_ms", args.created_from.map(|t| t.to_string()));
    add("created_before_ms", args.created_before.map(|t| t.to_string()));
    let paged = args.after_id.is_some();
    let n = args.limit.unwrap_or(ls::LS_DEFAULT_LIMIT);
    let listing = ls::newest(client, &pairs, n, args.after_id).await?;
    // Where the next listing goes on (`--after-id`) when this one left matches out.
    let next = listing
        .more
        .then(|| listing.rows.last().map(|(r, _)| str_at(r, "/id")))
        .flatten();
    if let Some(last) = &next {
        // Said on stderr, as the other notes are: more matched.
        let shown = if paged {
            format!("{n} shown")
        } else {
            format!("the newest {n} shown")
        };
        let how = if args.limit.is_some() {
            "raise --limit to see them"
        } else {
            "a --limit over 10000 shows more"
        };
        errln!(
            "({shown}; more match: {how}, or --after-id {} goes on after the last shown)",
            hints::word(last)
        )?;
    }
    let (rows, limited, with_grants) = (listing.rows, listing.more, listing.with_grants);
    if json {
        let view = LsView {
            paged,
            limited,
            with_grants,
        };
        print_json(&ls_document(rows, next, view))?;
        return Ok(ExitCode::SUCCESS);
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(p, _)| {
            vec![
                str_at(p, "/id"),
                str_at(p, "/status"),
                str_at(p, "/disposition"),
                definition(p),
                age(p.get("created_at_ms")),
                if p.get("wait").is_some_and(|w| !w.is_null()) {
                    "yes".into()
                } else {
                    "".into()
                },
            ]
        })
        .collect();
    print_table(
        &["ID", "STATUS", "DISPOSITION", "DEFINITION", "CREATED", "WAITING"],
        &table,
    )?;
    if table.is_empty() && ended_would_add {
        // The default lists running processes only: say so, or an empty
        // table reads as "nothing was ever started".
        errln!("(nothing running matches; `--status any` lists ended processes too)")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `ls --json`: the rows, and their grants whenever the server's pages
/// carried them (`with_grants`: a session's listing, `--granted-to`), empty
/// or not; one that leaves matches out (its `--limit`, or 10,000 without
/// one) says `limited`, as the table's note does for people, and
/// `next_after_id` (`next`: its last row, for `--after-id` to go on from),
/// which a listing of `--after-id` carries in any case (`null` at the end).
fn ls_document(rows: Vec<(Value, Option<Value>)>, next: Option<String>, view: LsView) -> Value {
    let (processes, grants): (Vec<Value>, Vec<Value>) =
        rows.into_iter().map(|(p, g)| (p, g.unwrap_or(Value::Null))).unzip();
    let mut doc = json!({ "processes": processes });
    if view.with_grants {
        doc["grants"] = Value::Array(grants);
    }
    let LsView { paged, limited, .. } = view;
    if paged || limited {
        doc["next_after_id"] = next.map(Value::String).unwrap_or(Value::Null);
    }
    if limited {
        doc["limited"] = json!(true);
    }
    doc
}

/// What `ls --json`'s document says beside its rows ([`ls_document`]).
#[derive(Clone, Copy, Default)]
struct LsView {
    /// A listing after `--after-id`.
    paged: bool,
    /// Matching processes were left out (`--limit`, or 10,000 without one).
    limited: bool,
    /// The server's pages carried grants.
    with_grants: bool,
}

async fn complete(client: &Client, json: bool, args: CompleteArgs) -> Result<ExitCode, ClientError> {
    let outcome = match (&args.value, &args.failure, &args.outcome) {
        (Some(v), None, None) => json!({"type": "success", "value": json_flag("--value", v)?}),
        (None, Some(code), None) => json!({
            "type": "failure", "class": "process", "code": code,
            "message": args.message.clone().unwrap_or_else(|| code.clone()),
        }),
        // Read as an outcome here, so a fault is named in the user's own
        // JSON and flag, not at a column of the body built around it.
        (None, None, Some(o)) => {
            let outcome = json_flag("--outcome", o)?;
            // Said before its shape: no evidence would make it one a
            // completion may give.
            if outcome.get("type").and_then(Value::as_str) == Some("abandoned") {
                return Err(ClientError::Usage(
                    "--outcome cannot abandon a process: a completion gives success, failure or cancelled; \
                     ask for its abandonment with `cairn abandon`"
                        .into(),
                ));
            }
            // Read as the server reads a completion's: a `type` it does not
            // know is told the three a completion takes.
            if let Err(e) = cairn_core::Outcome::deserialize_completion(outcome.clone()) {
                return Err(ClientError::Usage(format!("--outcome is no outcome: {e}")));
            }
            outcome
        }
        _ => return Err(ClientError::Usage("give one of --value, --failure or --outcome".into())),
    };
    hints::on_lost_answer(format_args!("get {}", hints::word(&args.id)), None);
    let mut body = json!({ "outcome": outcome });
    if let Some(a) = args.authority {
        body["authority"] = Value::String(a);
    }
    let (_, record) = client.post(&format!("{}/complete", proc_path(&args.id)), &body).await?;
    if json {
        print_json(&record)?;
    } else {
        // `x1 failed`: "is failed" does not read; the other ends do
        // (`is completed`, `is cancelled`).
        match str_at(&record, "/status").as_str() {
            "failed" => outln!("{} failed", args.id)?,
            status => outln!("{} is {status}", args.id)?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--created-from` and `--created-before` together: a range that holds no
/// time is refused (a `ls` that lists nothing, a prune that prunes nothing,
/// would read as "none there"; most likely the two were swapped).
fn created_range(from: Option<u64>, before: Option<u64>) -> Result<(), ClientError> {
    match (from, before) {
        (Some(from), Some(before)) if from >= before => Err(ClientError::Usage(format!(
            "`--created-from` ({}) is not before `--created-before` ({}): no process was created in between",
            timestamp(Some(&json!(from))),
            timestamp(Some(&json!(before)))
        ))),
        _ => Ok(()),
    }
}

async fn prune(client: &Client, json: bool, args: PruneArgs) -> Result<ExitCode, ClientError> {
    let now = now_ms();
    let cutoff = now.saturating_sub(u64::try_from(args.older_than.as_millis()).unwrap_or(u64::MAX));
    let watermark = match args.watermark {
        Some(cursor) => json!({"type": "cursor", "cursor": cursor}),
        None => json!({"type": "no_projector"}),
    };
    let mut body = json!({"cutoff_ms": cutoff, "status": args.status, "watermark": watermark});
    for (key, value) in [
        ("definition", args.definition),
        ("originator", args.originator),
        ("caused_by", args.caused_by),
    ] {
        if let Some(v) = value {
            body[key] = Value::String(v);
        }
    }
    created_range(args.created_from, args.created_before)?;
    for (key, value) in [
        ("created_from_ms", args.created_from),
        ("created_before_ms", args.created_before),
    ] {
        if let Some(t) = value {
            body[key] = json!(t);
        }
    }
    // A prune of millions of rows is one request that takes minutes.
    let (_, report) = client
        .post_within("/v1/prune", &body, Duration::from_secs(24 * 3600))
        .await?;
    if json {
        print_json(&report)?;
    } else {
        outln!(
            "pruned {} processes ({} events, {} grants, {} wakes); {} held by the watermark, {} by a running parent, {} by a running descendant",
            num_at(&report, "/pruned"),
            num_at(&report, "/events_deleted"),
            num_at(&report, "/grants_deleted"),
            num_at(&report, "/wakes_deleted"),
            num_at(&report, "/held_by_watermark"),
            num_at(&report, "/held_by_running_parent"),
            num_at(&report, "/held_by_running_descendant"),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Standard input, read whole: `what` is what it should hold, named when a
/// terminal gives nothing to read.
pub(crate) fn read_stdin(what: &str) -> Result<String, ClientError> {
    if std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(format!("give {what} as an argument or on stdin")));
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .read_to_end(&mut bytes)
        .map_err(|e| ClientError::Usage(format!("cannot read stdin: {e}")))?;
    utf8_text(bytes, &format!("{what} on stdin"))
}

/// `bytes` as text, or an error naming `whose` they are and the offset of
/// the first byte that is not UTF-8 (a Latin-1 file, a binary one).
fn utf8_text(bytes: Vec<u8>, whose: &str) -> Result<String, ClientError> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let byte = e.as_bytes()[at];
        ClientError::Usage(format!(
            "{whose} is not UTF-8 text: the byte at offset {at} (0x{byte:02X}) is not valid UTF-8"
        ))
    })
}

/// `cairn module put|ls|get`.
async fn module(client: &Client, json: bool, command: ModuleCommand) -> Result<ExitCode, ClientError> {
    match command {
        ModuleCommand::Put { file, name } => {
            let (source, default_name) = if file == "-" {
                (read_stdin("the module source")?, None)
            } else {
                let bytes = std::fs::read(&file).map_err(|e| ClientError::Usage(format!("cannot read {file}: {e}")))?;
                let source = utf8_text(bytes, &format!("`{file}`"))?;
                let base = std::path::Path::new(&file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                (source, base)
            };
            let mut body = json!({ "source": source });
            let asked = name.or(default_name);
            if let Some(n) = &asked {
                body["name"] = json!(n);
            }
            let (status, module) = client.post("/v1/modules", &body).await?;
            if json {
                print_json(&with_created(module, status))?;
            } else {
                let verb = if status.as_u16() == 201 {
                    "stored"
                } else {
                    "already stored"
                };
                outln!("{verb} {}", str_at(&module, "/module_ref"))?;
                outln!("exports: {}", exports_of(&module))?;
                // A module is immutable, its name too: one stored already
                // keeps the name it was first given (or none).
                let kept = module.get("name").and_then(Value::as_str);
                if let Some(asked) = asked.filter(|a| Some(a.as_str()) != kept) {
                    errln!(
                        "the name `{}` was not applied: this source was stored already, {} (a module, its name \
                         included, never changes)",
                        shown(&asked),
                        kept.map_or_else(|| "without a name".to_string(), |k| format!("as `{}`", shown(k)))
                    )?;
                }
            }
        }
        ModuleCommand::Ls => {
            // Every page, so a long listing is never cut at the first.
            let all = client.every_page("/v1/modules", "modules").await?;
            if json {
                print_json(&json!({ "modules": all }))?;
            } else {
                let rows: Vec<Vec<String>> = all
                    .iter()
                    .map(|m| {
                        vec![
                            str_at(m, "/module_ref"),
                            str_at(m, "/name"),
                            exports_cell(m),
                            age(m.get("created_at_ms")),
                        ]
                    })
                    .collect();
                print_table(&["MODULE", "NAME", "EXPORTS", "AGE"], &rows)?;
            }
        }
        ModuleCommand::Get { module_ref } => {
            let module = client.get(&format!("/v1/modules/{}", segment(&module_ref))).await?;
            if json {
                print_json(&module)?;
            } else {
                output::bytes(str_at(&module, "/source").as_bytes())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn exports_of(module: &Value) -> String {
    module
        .get("exports")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// The widest a listing's EXPORTS cell gets: every row is padded to the
/// widest cell, so one module of thousands of exports would widen them all.
/// `module get` lists every export.
const EXPORTS_CELL_CHARS: usize = 60;

/// A module's exports as a listing shows them: as many as fit in
/// [`EXPORTS_CELL_CHARS`], then how many more there are.
fn exports_cell(module: &Value) -> String {
    let names: Vec<&str> = module
        .get("exports")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut cell = String::new();
    for (i, name) in names.iter().enumerate() {
        let more = names.len() - i;
        let sep = if i == 0 { "" } else { ", " };
        // Room for this name and, unless it is the last, a "+N more" after it.
        let tail = if more > 1 {
            format!(", +{} more", more - 1).chars().count()
        } else {
            0
        };
        if cell.chars().count() + sep.len() + name.chars().count() + tail > EXPORTS_CELL_CHARS {
            return if i == 0 {
                format!("{more} exports")
            } else {
                format!("{cell}, +{more} more")
            };
        }
        cell.push_str(sep);
        cell.push_str(name);
    }
    cell
}

/// A create's answer (`start`, `module put`, `schedule add`) with whether
/// this call created it (`"created": true`, the server's 201) or found it
/// there already, the same (`false`, its 200).
pub(crate) fn with_created(mut answer: Value, status: reqwest::StatusCode) -> Value {
    if let Some(fields) = answer.as_object_mut() {
        fields.insert("created".into(), Value::Bool(status == reqwest::StatusCode::CREATED));
    }
    answer
}

fn print_json(v: &Value) -> Result<(), ClientError> {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()))
}

/// `before`, then `v` as [`print_json`] prints it inside a list of an
/// object's field (each line indented four spaces), without a line end: a
/// list printed an item at a time reads as the whole printed at once.
fn print_json_item(before: &str, v: &Value) -> Result<(), ClientError> {
    let pretty = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    output::bytes(format!("{before}    {}", pretty.replace('\n', "\n    ")).as_bytes())
}

fn print_record(r: &Value) -> Result<(), ClientError> {
    let mut rows = vec![
        ("id", str_at(r, "/id")),
        ("status", str_at(r, "/status")),
        ("disposition", str_at(r, "/disposition")),
        ("definition", definition(r)),
        ("originator", originator(r)),
        ("created", age(r.get("created_at_ms"))),
        ("updated", age(r.get("updated_at_ms"))),
        ("events", num_at(r, "/last_sequence")),
    ];
    // What it runs (a shell's argv and directory, a script's args, ...): the
    // input beside its type, which `definition` names.
    if let Some(input) = r.get("input").and_then(Value::as_object) {
        let mut shown = input.clone();
        shown.remove("type");
        // A shell call's forwarded environment values may be secrets:
        // named, not shown (`--json` gives the record whole).
        let mut shown = Value::Object(shown);
        cairn_core::tool::hide_shell_env(&mut shown);
        rows.insert(4, ("input", one_line(&shown.to_string(), line_room())));
    }
    if let Some(parent) = r.pointer("/provenance/caused_by/process_id").and_then(Value::as_str) {
        rows.push(("parent", parent.to_string()));
    }
    if let Some(lease) = r.get("lease").filter(|l| !l.is_null()) {
        rows.push(("lease", lease_line(lease, now_ms())));
    }
    if let Some(wait) = r.get("wait").filter(|w| !w.is_null()) {
        rows.push(("waiting", wait.to_string()));
    }
    if let Some(req) = r.get("cancel_request").filter(|c| !c.is_null()) {
        rows.push(("cancel request", req.to_string()));
    }
    if let Some(req) = r.get("abandon_request").filter(|a| !a.is_null()) {
        rows.push(("abandon request", req.to_string()));
    }
    if let Some(outcome) = r.get("outcome").filter(|o| !o.is_null()) {
        let text = match outcome.get("type").and_then(Value::as_str) {
            Some("abandoned") => format!("abandoned: {}", abandonment(outcome)),
            _ => outcome.to_string(),
        };
        rows.push(("outcome", text));
    }
    for (k, v) in rows {
        outln!("{k:<16} {v}")?;
    }
    Ok(())
}

/// One event as a line: its payload cut to 160 characters on a terminal,
/// whole where the output goes to a file or a program (a payload is JSON on
/// one line either way).
fn print_event_row(e: &Value) -> Result<(), ClientError> {
    // A script's journaled shell call names the variables it forwards, not
    // their values (as `get` of the child shows its input; `--json` gives
    // the event whole).
    let payload = e
        .get("payload")
        .map(|p| {
            let mut p = p.clone();
            cairn_core::tool::hide_shell_env(&mut p);
            p.to_string()
        })
        .unwrap_or_default();
    let max = line_room();
    outln!(
        "{:>5}  {}  {:<28} {}",
        num_at(e, "/sequence"),
        timestamp(e.get("occurred_at_ms")),
        str_at(e, "/event_type"),
        one_line(&payload, max)
    )
}

/// A borderless table (`comfy-table`), columns two spaces apart, no trailing blanks.
fn print_table(headers: &[&str], rows: &[Vec<String>]) -> Result<(), ClientError> {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for row in rows {
        table.add_row(row.clone());
    }
    let last = headers.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    for line in table.lines() {
        outln!("{}", line.trim_end())?;
    }
    Ok(())
}

/// Whether `record` holds a cancellation request of `reason` (an empty or
/// blank reason is none, as the server counts it): one given again after the
/// process ended is a retry, answered with the record.
fn repeats_its_cancel(record: &Value, reason: Option<&str>) -> bool {
    let given = reason.filter(|r| !r.trim().is_empty());
    let recorded = record
        .pointer("/cancel_request/reason")
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty());
    record.get("cancel_request").is_some_and(Value::is_object) && given == recorded
}

fn str_at(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn num_at(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .map(|n| n.to_string())
        .unwrap_or_default()
}

fn definition(r: &Value) -> String {
    match str_at(r, "/input/type").as_str() {
        "tool_call" => format!("tool:{}", str_at(r, "/input/tool")),
        "script" => format!(
            "script:{}#{}",
            str_at(r, "/input/module_ref"),
            str_at(r, "/input/process_name")
        ),
        other => other.to_string(),
    }
}

fn originator(r: &Value) -> String {
    let o = r.pointer("/provenance/originator").unwrap_or(&Value::Null);
    match str_at(o, "/type").as_str() {
        "session" => {
            let frame = str_at(o, "/scope/agent_frame_id");
            if frame.is_empty() {
                format!("session:{}", str_at(o, "/scope/session_id"))
            } else {
                format!("session:{}/frame:{frame}", str_at(o, "/scope/session_id"))
            }
        }
        "host" => match o.get("scope").and_then(Value::as_str) {
            Some(s) => format!("host:{s}"),
            None => "host".into(),
        },
        _ => String::new(),
    }
}

/// Text from the server (an error's message, an outcome's) as it may go to
/// a terminal: a control character other than a newline or a tab is written
/// as its escape (`\u{1b}`), so a message cannot clear the screen, retitle
/// the window or hide what follows.
pub(crate) fn shown(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// How much of a long value a line shows: 160 characters on a terminal,
/// all of it where the output goes to a file or a program.
fn line_room() -> usize {
    if std::io::stdout().is_terminal() {
        160
    } else {
        usize::MAX
    }
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An epoch-ms timestamp as RFC 3339 UTC with milliseconds.
fn timestamp(ms: Option<&Value>) -> String {
    let Some(ms) = ms.and_then(Value::as_u64) else {
        return String::new();
    };
    use std::fmt::Write as _;
    // RFC 3339 has four-digit years: a time past 9999 prints as a number.
    let mut text = String::new();
    let time = UNIX_EPOCH.checked_add(Duration::from_millis(ms));
    match time.map(|t| write!(text, "{}", humantime::format_rfc3339_millis(t))) {
        Some(Ok(())) => text,
        _ => format!("{ms} ms after the epoch"),
    }
}

/// A lease as `get` shows it: its owner, its fencing token, and until when
/// it holds, or since when it has lapsed (by this machine's clock): a lapsed
/// lease's owner no longer runs the process, whatever the record still names.
fn lease_line(lease: &Value, now: u64) -> String {
    let head = format!(
        "{} (fencing {})",
        str_at(lease, "/owner_id"),
        num_at(lease, "/fencing_token")
    );
    match lease.get("expires_at_ms").and_then(Value::as_u64) {
        Some(at) if at <= now => format!("{head}, lapsed {}", age_at(at, now)),
        Some(at) => format!("{head}, held until {}", timestamp(Some(&Value::from(at)))),
        None => head,
    }
}

/// A compact age ("42s ago") of an epoch-ms timestamp (one unit, unlike
/// humantime's "1m 12s 345ms", to keep table columns narrow).
fn age(ms: Option<&Value>) -> String {
    let Some(ms) = ms.and_then(Value::as_u64) else {
        return String::new();
    };
    age_at(ms, now_ms())
}

/// [`age`] at `now`.
fn age_at(ms: u64, now: u64) -> String {
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;

    #[test]
    fn a_lease_says_until_when_it_holds_or_since_when_it_lapsed() {
        let lease = json!({"owner_id": "node-a", "fencing_token": 3, "expires_at_ms": 1_000_000});
        assert_eq!(
            lease_line(&lease, 999_000),
            "node-a (fencing 3), held until 1970-01-01T00:16:40.000Z"
        );
        assert_eq!(lease_line(&lease, 1_000_000), "node-a (fencing 3), lapsed 0s ago");
        assert_eq!(lease_line(&lease, 1_130_000), "node-a (fencing 3), lapsed 2m ago");
    }

    #[test]
    fn a_time_past_the_year_9999_prints_as_a_number() {
        assert_eq!(timestamp(Some(&json!(0))), "1970-01-01T00:00:00.000Z");
        let far = 253_402_300_800_000u64; // 10000-01-01
        assert_eq!(timestamp(Some(&json!(far))), format!("{far} ms after the epoch"));
        assert_eq!(
            timestamp(Some(&json!(u64::MAX))),
            format!("{} ms after the epoch", u64::MAX)
        );
        assert_eq!(timestamp(None), "");
    }
}

#[cfg(test)]
mod ls_tests {
    use super::*;

    /// A listing that leaves matches out says so in `--json` too, where a
    /// script reads it, not only in the table's note; a page of
    /// `--after-id` says where the next one starts.
    #[test]
    fn a_listing_says_in_json_what_it_left_out() {
        let rows = vec![(json!({"id": "a"}), None)];
        let whole = ls_document(rows.clone(), None, LsView::default());
        assert!(
            whole.get("limited").is_none() && whole.get("next_after_id").is_none(),
            "{whole}"
        );
        let limited = ls_document(
            rows.clone(),
            Some("a".into()),
            LsView {
                limited: true,
                ..LsView::default()
            },
        );
        assert_eq!(limited["limited"], true, "{limited}");
        assert_eq!(limited["next_after_id"], "a", "where `--after-id` goes on: {limited}");
        // A session's listing carries its grants, none matching or not.
        let granted = LsView {
            with_grants: true,
            ..LsView::default()
        };
        assert_eq!(ls_document(Vec::new(), None, granted)["grants"], json!([]));
        assert!(ls_document(rows.clone(), None, LsView::default())
            .get("grants")
            .is_none());
        let paged = LsView {
            paged: true,
            ..LsView::default()
        };
        let page = ls_document(rows.clone(), None, paged);
        assert_eq!(page["next_after_id"], Value::Null, "{page}");
        let page = ls_document(rows, Some("a".into()), paged);
        assert_eq!(page["next_after_id"], "a", "{page}");
    }
}

#[cfg(test)]
mod abandon_tests {
    use super::*;

    /// `cairn cancel` of a running owner_bound process whose lease lapsed
    /// (its node gone) says nothing acts on it, naming the node that must
    /// come back and the abandon request that ends it; any other process
    /// gets no such words.
    #[test]
    fn a_cancel_of_stranded_owner_bound_work_says_what_ends_it() {
        let held = |disposition: &str, owner: &str, at: u64| {
            json!({"status": "running", "disposition": disposition,
                   "lease": {"owner_id": owner, "expires_at_ms": at}})
        };
        assert_eq!(
            stranded("ob1", &held("owner_bound", "n1#1", 1_000_000), 1_013_000).as_deref(),
            Some(
                "nothing acts on it: the lease of worker n1#1 lapsed 13s ago and owner_bound work is taken on by \
                 no other node; node n1 must come back (`cairn serve --node-id n1`), or an abandon request ends \
                 it (`cairn abandon ob1 --reason ...`)"
            )
        );
        let odd = stranded("ob1", &held("owner_bound", "host-worker", 1_000_000), 1_013_000);
        assert!(odd.is_some_and(|s| s.contains("; worker host-worker must come back, or")));
        // A live lease, rerunnable work (a peer takes it on), no lease, an end.
        assert_eq!(stranded("ob1", &held("owner_bound", "n1#1", 1_000_000), 999_000), None);
        assert_eq!(stranded("re1", &held("rerunnable", "n1#1", 1_000_000), 1_013_000), None);
        let free = json!({"status": "running", "disposition": "owner_bound", "lease": null});
        assert_eq!(stranded("ob1", &free, 1_013_000), None);
        let ended = json!({"status": "completed", "disposition": "owner_bound",
                           "lease": {"owner_id": "n1#1", "expires_at_ms": 1}});
        assert_eq!(stranded("ob1", &ended, 1_013_000), None);
    }

    /// `cairn abandon` of a process whose lease lapsed long ago (a dead
    /// node's stranded work) says it is reconciled shortly, not "once its
    /// lease lapses".
    #[test]
    fn an_abandon_request_says_when_it_is_reconciled() {
        let held = |at: u64| json!({"status": "running", "lease": {"owner_id": "a#1", "expires_at_ms": at}});
        assert_eq!(
            abandon_when(&held(1_000_000), 999_000),
            " (reconciled once its lease lapses)"
        );
        assert_eq!(
            abandon_when(&held(1_000_000), 1_130_000),
            " (its lease lapsed 2m ago: reconciled shortly)"
        );
        let free = json!({"status": "running", "lease": null});
        assert_eq!(abandon_when(&free, 0), " (no lease holds it: reconciled shortly)");
        assert_eq!(abandon_when(&json!({"status": "completed"}), 0), "");
    }

    /// A reconciled request's evidence names the last run's owner, which
    /// need not have lost a lease (a suspended process released it; one
    /// never run had none): the words claim no lapse.
    #[test]
    fn a_reconciled_request_claims_no_lost_worker() {
        let outcome =
            |owner: Value| json!({"type": "abandoned", "evidence": {"writer": "reconciled_request", "owner": owner}});
        assert_eq!(
            abandonment(&outcome(json!({"owner_id": "b#2"}))),
            "an abandon request was reconciled once no live lease held it (last run by worker b#2)"
        );
        assert_eq!(
            abandonment(&outcome(Value::Null)),
            "an abandon request was reconciled once no live lease held it"
        );
    }

    /// `run` looks at the lease a little after it would lapse, at most every
    /// few seconds, and says once that no worker holds it when it lapsed
    /// more than the margin ago.
    #[test]
    fn run_says_a_lease_that_lapsed_a_while_ago() {
        let rec = |at: u64, disposition: &str| {
            json!({"status": "running", "disposition": disposition,
                   "lease": {"owner_id": "a#1", "fencing_token": 1, "expires_at_ms": at}})
        };
        let now = 1_000_000;
        // Live, long: looked at just past its expiry and the margin.
        assert_eq!(
            lease_look("p", &rec(now + 60_000, "owner_bound"), now, 0),
            LeaseLook::Again(now + 60_000 + LEASE_LAPSE_MARGIN_MS)
        );
        // Short, or just lapsed (a peer may take it over): not before the gap.
        assert_eq!(
            lease_look("p", &rec(now + 100, "owner_bound"), now, 0),
            LeaseLook::Again(now + LEASE_LOOK_GAP_MS.max(100 + LEASE_LAPSE_MARGIN_MS))
        );
        assert_eq!(
            lease_look("p", &rec(now - 1_000, "rerunnable"), now, LEASE_UNCHANGED_MS),
            LeaseLook::Again(now + LEASE_LOOK_GAP_MS)
        );
        // Lapsed by this machine's clock, but seen unrenewed only briefly
        // (this clock may run ahead of the server's): looked at again.
        assert_eq!(
            lease_look("p", &rec(now - 7_000, "owner_bound"), now, LEASE_UNCHANGED_MS - 1),
            LeaseLook::Again(now + LEASE_LOOK_GAP_MS)
        );
        let LeaseLook::Lapsed(text) = lease_look("p", &rec(now - 7_000, "owner_bound"), now, LEASE_UNCHANGED_MS) else {
            panic!("a lease lapsed 7 s ago is said");
        };
        assert!(
            text.starts_with("p: the lease of worker a#1 lapsed 7s ago and no worker holds it"),
            "{text}"
        );
        assert!(text.contains("`cairn abandon p --reason ...`"), "{text}");
        let LeaseLook::Lapsed(text) = lease_look("p", &rec(now - 7_000, "rerunnable"), now, LEASE_UNCHANGED_MS) else {
            panic!("a lease lapsed 7 s ago is said");
        };
        assert!(text.contains("runs again once a worker claims it"), "{text}");
        // No lease (not claimed yet, or suspended): looked at again later.
        let free = json!({"status": "running", "lease": null});
        assert_eq!(lease_look("p", &free, now, 0), LeaseLook::Again(now + NO_LEASE_LOOK_MS));
        assert_eq!(
            lease_look("p", &json!({"status": "abandoned"}), now, 0),
            LeaseLook::Done
        );
    }
}

#[cfg(test)]
mod signal_tests {
    use super::*;

    /// A signal sent to a process waiting for a signal of another name is
    /// noted as kept; one it waits for, a wait that began after the signal,
    /// another kind of wait, no wait and an end are not.
    #[test]
    fn a_signal_of_another_name_than_the_awaited_one_is_noted() {
        let waiting = |kind: &str, name: &str, since: u64| {
            json!({"status": "running",
                   "wait": {"kind": kind, "name": name, "since_ms": since, "ordinal": 1}})
        };
        let sent = json!({"event_type": "signal.og", "occurred_at_ms": 1_000});
        assert_eq!(
            waits_for_another("gw", "og", &waiting("signal", "go", 900), &sent).as_deref(),
            Some("gw waits for signal `go`, not `og`; the signal is kept for a later wait")
        );
        // A wait that began in the same millisecond as the signal still waits.
        assert!(waits_for_another("gw", "og", &waiting("signal", "go", 1_000), &sent).is_some());
        assert_eq!(
            waits_for_another("gw", "og", &waiting("signal", "og", 900), &sent),
            None
        );
        assert_eq!(
            waits_for_another("gw", "og", &waiting("signal", "go", 1_001), &sent),
            None
        );
        assert_eq!(waits_for_another("gw", "og", &waiting("timer", "", 900), &sent), None);
        assert_eq!(
            waits_for_another("gw", "og", &json!({"status": "running", "wait": null}), &sent),
            None
        );
        let mut ended = waiting("signal", "go", 900);
        ended["status"] = json!("cancelled");
        assert_eq!(waits_for_another("gw", "og", &ended, &sent), None);
    }
}
