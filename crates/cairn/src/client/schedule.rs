//! `cairn schedule`: the client of `/v1/schedules` (SPEC §18).

use std::process::ExitCode;

use serde_json::{json, Value};

use super::http::{segment, Client, ClientError};
use super::output::outln;
use super::{parse_json_arg, print_json, print_table, str_at, timestamp};
use crate::cli::ScheduleAction;

fn path(id: &str) -> String {
    format!("/v1/schedules/{}", segment(id))
}

fn when(s: &Value) -> String {
    match (
        s.get("cron").and_then(Value::as_str),
        s.get("every").and_then(Value::as_str),
    ) {
        (Some(cron), _) => match s.get("timezone").and_then(Value::as_str) {
            Some(tz) => format!("cron {cron} ({tz})"),
            None => format!("cron {cron}"),
        },
        (None, Some(every)) => format!("every {every}"),
        _ => String::new(),
    }
}

fn row(s: &Value) -> Vec<String> {
    let paused = s.get("paused").and_then(Value::as_bool) == Some(true);
    // A paused schedule's stored next fire is where it stopped, not a time it
    // will fire; resuming computes the next one from then.
    let next = if paused {
        "none while paused".to_string()
    } else {
        timestamp(s.get("next_fire_ms"))
    };
    let mut state = (if paused { "paused" } else { "active" }).to_string();
    if let Some(code) = s.pointer("/last_refusal/code").and_then(Value::as_str) {
        state.push_str(&format!(", last fire refused ({})", super::shown(code)));
    }
    vec![
        str_at(s, "/id"),
        when(s),
        str_at(s, "/overlap"),
        state,
        next,
        str_at(s, "/last_process_id"),
    ]
}

const HEADERS: [&str; 6] = ["ID", "WHEN", "OVERLAP", "STATE", "NEXT FIRE", "LAST PROCESS"];

fn print_one(s: &Value) -> Result<(), ClientError> {
    print_table(&HEADERS, &[row(s)])?;
    // A fire the start path refused is skipped: say which and why, or the
    // schedule reads as healthy while nothing starts.
    if let Some(r) = s.get("last_refusal").filter(|r| r.is_object()) {
        outln!(
            "last refused fire: {} at {}: {}: {}",
            str_at(r, "/process_id"),
            timestamp(r.get("fire_ms")),
            super::shown(&str_at(r, "/code")),
            super::shown(&str_at(r, "/message"))
        )?;
    }
    Ok(())
}

pub(super) async fn execute(client: &Client, json: bool, action: ScheduleAction) -> Result<ExitCode, ClientError> {
    match action {
        ScheduleAction::Add {
            id,
            cron,
            every,
            timezone,
            overlap,
            template,
        } => {
            let (raw, what) = super::json_arg_text("the start template", template.as_deref())?;
            let start = parse_json_arg(&what, &raw, false)?;
            let mut body = json!({"id": id, "start": start, "overlap": overlap});
            for (key, value) in [("cron", cron), ("every", every), ("timezone", timezone)] {
                if let Some(v) = value {
                    body[key] = Value::String(v);
                }
            }
            super::hints::on_lost_answer(format_args!("schedule get {}", super::hints::word(&id)), None);
            let (status, schedule) = client.post("/v1/schedules", &body).await?;
            if json {
                print_json(&super::with_created(schedule, status))?;
            } else if status.as_u16() == 201 {
                outln!("created {id}")?;
                print_one(&schedule)?;
            } else {
                // A repeat of the same create: a different one is a conflict.
                outln!("{id} already existed, as given (nothing changed)")?;
                print_one(&schedule)?;
            }
        }
        ScheduleAction::Ls => {
            let all = client.every_page("/v1/schedules", "schedules").await?;
            let rows: Vec<Vec<String>> = all.iter().map(row).collect();
            if json {
                // As `ls` and `module ls` do: the items under their name,
                // the shape of the API's page.
                print_json(&serde_json::json!({ "schedules": all }))?;
            } else {
                print_table(&HEADERS, &rows)?;
            }
        }
        ScheduleAction::Get { id } => {
            let s = client.get(&path(&id)).await?;
            if json {
                print_json(&s)?;
            } else {
                print_one(&s)?;
            }
        }
        ScheduleAction::Rm { id } => {
            super::hints::on_lost_answer(format_args!("schedule get {}", super::hints::word(&id)), None);
            client.delete(&path(&id)).await?;
            if json {
                print_json(&json!({"deleted": id}))?;
            } else {
                outln!("deleted {id}")?;
            }
        }
        ScheduleAction::Pause { id } => flip(client, json, &id, "pause", "paused").await?,
        ScheduleAction::Resume { id } => flip(client, json, &id, "resume", "resumed").await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn flip(client: &Client, json: bool, id: &str, action: &str, done: &str) -> Result<(), ClientError> {
    super::hints::on_lost_answer(format_args!("schedule get {}", super::hints::word(id)), None);
    let (_, s) = client.post(&format!("{}/{action}", path(id)), &json!({})).await?;
    if json {
        print_json(&s)?;
    } else {
        outln!("{done} {id}")?;
        print_one(&s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schedule whose last fire was refused says so in its state, not only
    /// in its JSON.
    #[test]
    fn a_refused_fire_shows_in_the_state_column() {
        let mut s = json!({"id": "tick", "every": "10s", "overlap": "allow", "paused": false, "next_fire_ms": 0});
        assert_eq!(row(&s)[3], "active");
        s["last_refusal"] =
            json!({"fire_ms": 0, "process_id": "tick@0", "code": "unknown_tool", "message": "unknown tool"});
        assert_eq!(row(&s)[3], "active, last fire refused (unknown_tool)");
    }
}
