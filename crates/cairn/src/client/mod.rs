//! The CLI client commands: each is one or two HTTP calls, printed as a table
//! (or raw JSON with `--json`).
//!
//! Exit codes: 0 on success; 1 when the server answered an error or could not
//! be reached; 2 for bad input; `await` answers 3 when the process is still
//! running at the timeout; `run` answers the command's own exit code.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::cli::{Command, LsArgs, PruneArgs, RunArgs};

pub mod http;
pub mod mcp;

use http::{query, segment, Client, ClientError};

/// Run one client command against `server`.
pub async fn run(server: &str, token: Option<&str>, json: bool, command: Command) -> ExitCode {
    let result = match Client::new(server, token) {
        Ok(client) => execute(&client, json, command).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                ClientError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn proc_path(id: &str) -> String {
    format!("/v1/processes/{}", segment(id))
}

async fn execute(client: &Client, json: bool, command: Command) -> Result<ExitCode, ClientError> {
    match command {
        Command::Serve(_) => Err(ClientError::Usage("`serve` is not a client command".into())),
        Command::Bench(_) | Command::BenchChild(_) => Err(ClientError::Usage("`bench` is not a client command".into())),
        Command::Start { body } => {
            let raw = match body.as_deref() {
                None | Some("-") => read_stdin()?,
                Some(s) => s.to_string(),
            };
            let body: Value = serde_json::from_str(&raw)
                .map_err(|e| ClientError::Usage(format!("start request is not JSON: {e}")))?;
            let (status, record) = client.post("/v1/processes", &body).await?;
            if json {
                print_json(&record);
            } else {
                let verb = if status.as_u16() == 201 {
                    "started"
                } else {
                    "already started"
                };
                println!("{verb} {} ({})", str_at(&record, "/id"), str_at(&record, "/status"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_command(client, json, args).await,
        Command::Mcp => mcp::serve(client).await,
        Command::Ls(args) => ls(client, json, args).await,
        Command::Get { id } => {
            let record = client.get(&proc_path(&id)).await?;
            if json {
                print_json(&record);
            } else {
                print_record(&record);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Events { id, after, follow } => {
            if follow {
                client
                    .follow(&id, after, |event| {
                        if json {
                            println!("{event}");
                        } else {
                            print_event_row(event);
                        }
                        let _ = std::io::stdout().flush();
                    })
                    .await?;
            } else {
                let mut after = after;
                loop {
                    let page = client
                        .get(&format!(
                            "{}/events?{}",
                            proc_path(&id),
                            query([("after", after.to_string())])
                        ))
                        .await?;
                    for event in page.get("events").and_then(Value::as_array).into_iter().flatten() {
                        if json {
                            println!("{event}");
                        } else {
                            print_event_row(event);
                        }
                    }
                    match page.get("next_after").and_then(Value::as_u64) {
                        Some(next) if next > after => after = next,
                        _ => break,
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Await { id, timeout } => {
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            let record = client
                .get(&format!(
                    "{}/await?{}",
                    proc_path(&id),
                    query([("timeout_ms", ms.to_string())])
                ))
                .await?;
            if json {
                print_json(&record);
            } else {
                print_record(&record);
            }
            let running = str_at(&record, "/status") == "running";
            Ok(if running { ExitCode::from(3) } else { ExitCode::SUCCESS })
        }
        Command::Signal {
            id,
            name,
            signal_id,
            payload,
        } => {
            let payload: Value = serde_json::from_str(&payload)
                .map_err(|e| ClientError::Usage(format!("--payload is not JSON: {e}")))?;
            let signal_id = signal_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let body = json!({"signal_id": signal_id, "payload": payload});
            let (_, event) = client
                .post(&format!("{}/signals/{}", proc_path(&id), segment(&name)), &body)
                .await?;
            if json {
                print_json(&event);
            } else {
                println!(
                    "{} recorded on {} as event {} (signal id {signal_id})",
                    str_at(&event, "/event_type"),
                    str_at(&event, "/process_id"),
                    num_at(&event, "/sequence")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, reason } => {
            let body = match reason {
                Some(r) => json!({"reason": r}),
                None => json!({}),
            };
            let (_, record) = client.post(&format!("{}/cancel", proc_path(&id)), &body).await?;
            if json {
                print_json(&record);
            } else {
                println!("cancellation requested: {} is {}", id, str_at(&record, "/status"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Abandon {
            id,
            reason,
            requested_by,
        } => {
            let mut body = json!({"reason": reason});
            if let Some(by) = requested_by {
                body["requested_by"] = Value::String(by);
            }
            let (_, record) = client
                .post(&format!("{}/abandon-request", proc_path(&id)), &body)
                .await?;
            if json {
                print_json(&record);
            } else {
                println!(
                    "abandon requested: {} is {} (reconciled once its lease lapses)",
                    id,
                    str_at(&record, "/status")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune(args) => prune(client, json, args).await,
        Command::Wakes { session } => {
            let page = client.get(&format!("/v1/sessions/{}/wakes", segment(&session))).await?;
            if json {
                print_json(&page);
            } else {
                let rows: Vec<Vec<String>> = page
                    .get("wakes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|w| {
                        vec![
                            str_at(w, "/wake_id"),
                            str_at(w, "/process_id"),
                            num_at(w, "/sequence"),
                            str_at(w, "/event_type"),
                            age(w.get("created_at_ms")),
                            one_line(&str_at(w, "/input"), 60),
                        ]
                    })
                    .collect();
                print_table(&["WAKE", "PROCESS", "SEQ", "TYPE", "AGE", "INPUT"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ack { session, wake_id } => {
            let (_, answer) = client
                .post(
                    &format!("/v1/sessions/{}/wakes/{}/ack", segment(&session), segment(&wake_id)),
                    &json!({}),
                )
                .await?;
            if json {
                print_json(&answer);
            } else if answer.get("acked").and_then(Value::as_bool) == Some(true) {
                println!("acknowledged {wake_id}");
            } else {
                println!("{wake_id} was already acknowledged");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_command(client: &Client, json: bool, args: RunArgs) -> Result<ExitCode, ClientError> {
    let id = args
        .id
        .unwrap_or_else(|| format!("run-{}", uuid::Uuid::new_v4().simple()));
    let mut tool_args = json!({"argv": args.argv});
    if let Some(cwd) = args.cwd {
        tool_args["cwd"] = Value::String(cwd);
    }
    if let Some(t) = args.timeout {
        tool_args["timeout_ms"] = json!(u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    }
    let body = json!({
        "id": id,
        "input": {"type": "tool_call", "tool": "shell", "args": tool_args},
        "disposition": "owner_bound",
    });
    let (_, record) = client.post("/v1/processes", &body).await?;
    if args.detach {
        if json {
            print_json(&record);
        } else {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Output lines go where the command wrote them; the rest of the log is not the command's output.
    client
        .follow(&id, 0, |event| {
            if json || event.get("event_type").and_then(Value::as_str) != Some("shell.output") {
                return;
            }
            let to_stderr = event.pointer("/payload/stream").and_then(Value::as_str) == Some("stderr");
            for line in event
                .pointer("/payload/lines")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = line.as_str().map(str::to_string).unwrap_or_else(|| line.to_string());
                if to_stderr {
                    eprintln!("{text}");
                } else {
                    println!("{text}");
                }
            }
        })
        .await?;
    let record = client.get(&proc_path(&id)).await?;
    if json {
        print_json(&record);
    }
    Ok(exit_code_of(&record))
}

/// The exit code a finished `run` reports: the command's own when the outcome carries it.
fn exit_code_of(record: &Value) -> ExitCode {
    let outcome = record.get("outcome").unwrap_or(&Value::Null);
    match outcome.get("type").and_then(Value::as_str) {
        Some("success") => ExitCode::SUCCESS,
        Some("failure") => {
            let code = outcome
                .pointer("/raw/exit_code")
                .and_then(Value::as_u64)
                .and_then(|c| u8::try_from(c).ok())
                .filter(|c| *c != 0)
                .unwrap_or(1);
            if outcome.pointer("/raw/exit_code").is_none() {
                eprintln!("failed: {}: {}", str_at(outcome, "/code"), str_at(outcome, "/message"));
            }
            ExitCode::from(code)
        }
        Some(other) => {
            eprintln!("process ended {other}: {}", outcome);
            ExitCode::FAILURE
        }
        None => ExitCode::FAILURE,
    }
}

async fn ls(client: &Client, json: bool, args: LsArgs) -> Result<ExitCode, ClientError> {
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
    add("after_id", args.after_id);
    add("limit", args.limit.map(|l| l.to_string()));
    let path = if pairs.is_empty() {
        "/v1/processes".to_string()
    } else {
        format!("/v1/processes?{}", query(pairs))
    };
    let page = client.get(&path).await?;
    if json {
        print_json(&page);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = page
        .get("processes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
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
    print_table(&["ID", "STATUS", "DISPOSITION", "DEFINITION", "AGE", "WAITING"], &rows);
    if let Some(next) = page.get("next_after_id").and_then(Value::as_str) {
        eprintln!("(more: --after-id {next})");
    }
    Ok(ExitCode::SUCCESS)
}

async fn prune(client: &Client, json: bool, args: PruneArgs) -> Result<ExitCode, ClientError> {
    let now = now_ms();
    let cutoff = now.saturating_sub(u64::try_from(args.older_than.as_millis()).unwrap_or(u64::MAX));
    let watermark = match args.watermark {
        Some(cursor) => json!({"type": "cursor", "cursor": cursor}),
        None => json!({"type": "no_projector"}),
    };
    let body = json!({"cutoff_ms": cutoff, "status": args.status, "watermark": watermark});
    let (_, report) = client.post("/v1/prune", &body).await?;
    if json {
        print_json(&report);
    } else {
        println!(
            "pruned {} processes ({} events, {} grants, {} wakes); {} held by the watermark",
            num_at(&report, "/pruned"),
            num_at(&report, "/events_deleted"),
            num_at(&report, "/grants_deleted"),
            num_at(&report, "/wakes_deleted"),
            num_at(&report, "/held_by_watermark"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn read_stdin() -> Result<String, ClientError> {
    if std::io::stdin().is_terminal() {
        return Err(ClientError::Usage(
            "give the start request as an argument or on stdin".into(),
        ));
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| ClientError::Usage(format!("cannot read stdin: {e}")))?;
    Ok(s)
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

fn print_record(r: &Value) {
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
    if let Some(lease) = r.get("lease").filter(|l| !l.is_null()) {
        rows.push((
            "lease",
            format!(
                "{} (fencing {})",
                str_at(lease, "/owner_id"),
                num_at(lease, "/fencing_token")
            ),
        ));
    }
    if let Some(wait) = r.get("wait").filter(|w| !w.is_null()) {
        rows.push(("waiting", wait.to_string()));
    }
    if let Some(req) = r.get("abandon_request").filter(|a| !a.is_null()) {
        rows.push(("abandon request", req.to_string()));
    }
    if let Some(outcome) = r.get("outcome").filter(|o| !o.is_null()) {
        rows.push(("outcome", outcome.to_string()));
    }
    for (k, v) in rows {
        println!("{k:<16} {v}");
    }
}

fn print_event_row(e: &Value) {
    println!(
        "{:>5}  {:<28} {}",
        num_at(e, "/sequence"),
        str_at(e, "/event_type"),
        one_line(&e.get("payload").map(Value::to_string).unwrap_or_default(), 160)
    );
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
                s.push_str(cell);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
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

/// A compact age ("42s ago") of an epoch-ms timestamp.
fn age(ms: Option<&Value>) -> String {
    let Some(ms) = ms.and_then(Value::as_u64) else {
        return String::new();
    };
    let secs = now_ms().saturating_sub(ms) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}
