//! Schedules (SPEC §18): durable cron expressions and intervals that start a
//! process per fire.
//!
//! This module holds every rule of a schedule: what a valid definition is
//! ([`ScheduleRequest::validate`]), when it fires next ([`ScheduleSpec::next_after`]),
//! and what a due fire does ([`plan_fire`]). Backends store [`Schedule`]s and
//! answer the compare-and-set that advances one (`ProcessRegistry::advance_schedule`);
//! the runtime fires them from the work driver (`Processes::fire_schedules`).
//!
//! - A fire at time `T` starts process `{schedule_id}@{T}` through the normal
//!   start path, which is idempotent on id: every node that fires the same due
//!   schedule starts the same process, and a crash between the start and the
//!   advance re-fires the same id.
//! - A due schedule fires its stored `next_fire_ms` once, then advances to the
//!   first fire time after now: after downtime, at most one missed fire is
//!   caught up.
//! - `every` fires at `created_ms + k × every` (k ≥ 1); `cron` is a 5-field
//!   expression (parsed by `croner`) evaluated in an IANA timezone (`chrono-tz`),
//!   default `UTC`. Across a daylight-saving change a wall-clock time that does
//!   not exist fires at the change (several such times fire there once); one
//!   that occurs twice fires once, at its first occurrence, unless the
//!   pattern fires every hour (`* * * * *`, `*/5 * * * *`, `0 * * * *`):
//!   that one follows the clock through the repeated hour and fires at both
//!   occurrences, as cron does, instead of pausing for an hour.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{CausalRef, Disposition, EnvSpec, ExternalRef, Originator, ProcessInput, SessionScope, StartGrant};
use crate::processes::StartRequest;
use crate::validate::{validate_id, MAX_ID_BYTES};
use crate::{CairnError, Result};

/// The shortest `every` a schedule may have.
pub const MIN_EVERY: Duration = Duration::from_secs(1);
/// The longest `every` a schedule may have: a hundred years (of 365.25 days,
/// as `humantime` counts a year), so every fire time stays a date a client
/// can print.
pub const MAX_EVERY: Duration = Duration::from_secs(100 * 31_557_600);

/// The separator between a schedule id and a fire time in a fired process's id.
pub const FIRE_ID_SEPARATOR: char = '@';

/// Digits a fire time takes at most in a process id (`u64::MAX` in decimal).
const FIRE_TIME_DIGITS: usize = 20;

/// What to do with a fire while the previous fire's process is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case", remote = "Self")]
pub enum Overlap {
    /// No fire starts while the previous fire's process is running: not
    /// ended, whether a worker runs it yet or it still waits for one in a
    /// backlog (such a fire is skipped, and the next one is due as usual).
    Skip,
    /// Every fire starts, whatever is still running.
    Allow,
}

crate::wire::string_enum!(Overlap, "an overlap policy: `skip` or `allow`");

/// A start request without an id: what each fire of a schedule starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "a schedule's start: an object with `input` and `disposition`",
    deny_unknown_fields
)]
pub struct StartTemplate {
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
    /// A session scope to grant each fired process to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<StartGrant>,
    /// The session scope each fired process's wakes go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_target: Option<SessionScope>,
    /// Event types beyond the core ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<crate::events::EventType>,
    /// An execution environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_spec: Option<EnvSpec>,
    /// The same work in another system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ref: Option<ExternalRef>,
}

impl StartTemplate {
    /// The start request of process `id`.
    pub fn start_request(&self, id: impl Into<String>) -> StartRequest {
        StartRequest {
            id: id.into(),
            input: self.input.clone(),
            disposition: self.disposition,
            originator: self.originator.clone(),
            caused_by: self.caused_by.clone(),
            grant: self.grant.clone(),
            wake_target: self.wake_target.clone(),
            event_types: self.event_types.clone(),
            env_spec: self.env_spec.clone(),
            external_ref: self.external_ref.clone(),
        }
    }
}

/// The wire shape of `POST /v1/schedules` (SPEC §18).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(
    expecting = "a schedule: an object with `id`, `start`, and `cron` or `every`",
    deny_unknown_fields
)]
pub struct ScheduleRequest {
    /// The schedule id, at most 235 bytes; each fire starts process
    /// `{id}@{fire_time_ms}`, which must fit an id's 256.
    pub id: String,
    /// A 5-field cron expression (minute hour day-of-month month day-of-week).
    /// Exactly one of `cron` and `every`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// An interval such as `30s`, `5m` or `1h 30m`, from 1 s to 100 years,
    /// in weeks, days or smaller units (months and years are refused: they
    /// would drift from the calendar; `cron` gives calendar dates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The IANA timezone a `cron` expression is read in (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The start request of each fire, without an id.
    pub start: StartTemplate,
    /// What a fire does while the previous fire's process is still running.
    pub overlap: Overlap,
}

impl ScheduleRequest {
    /// Parse the JSON wire shape; shape errors are `invalid_request` naming the
    /// problem (a template carrying an `id` among them).
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        if value.get("start").and_then(|s| s.get("id")).is_some() {
            return Err(CairnError::InvalidRequest(
                "schedule: `start` is a start request without `id` (each fire's id is `{schedule_id}@{fire_time_ms}`)"
                    .into(),
            ));
        }
        if let Some(start) = value.get("start").filter(|s| !s.is_object()) {
            return Err(CairnError::InvalidRequest(format!(
                "schedule: `start` must be a JSON object (a start request without `id`), not {}",
                crate::validate::json_kind(start)
            )));
        }
        // The field a refusal is about is named (`start.input.session.model`),
        // and what it takes said in wire terms.
        crate::validate::read_in_wire_terms(&value)
            .map_err(|why| CairnError::InvalidRequest(format!("schedule: {why}")))
            .and_then(|request: Self| {
                // Nor is a nested object read from an array (serde reads a struct
                // from one, by position).
                let Ok(read) = serde_json::to_value(&request) else {
                    return Ok(request);
                };
                match crate::validate::array_read_as_object(&value, &read) {
                    Some(at) => Err(CairnError::InvalidRequest(format!(
                        "schedule: `{at}`: expected a JSON object, not an array"
                    ))),
                    None => Ok(request),
                }
            })
    }

    /// The schedule this request would store, when its cron expression is
    /// refused only by a check newer than the schedule stored under its id
    /// (`1,,2`): read as that schedule was, for a repeated create to compare.
    pub fn as_stored_before_checks(&self, now_ms: u64) -> Option<Schedule> {
        self.newer_timing_problem()?;
        let spec = ScheduleSpec::parse(self.cron.as_deref(), self.every.as_deref(), self.timezone.as_deref()).ok()?;
        Schedule::new(self.clone(), &spec, now_ms).ok()
    }

    /// Check the id and the timing (not the template: the runtime checks it
    /// against its tools) and answer the parsed spec.
    pub fn validate(&self) -> Result<ScheduleSpec> {
        validate_id("schedule id", &self.id)?;
        if self.id.len() + 1 + FIRE_TIME_DIGITS > MAX_ID_BYTES {
            return Err(CairnError::InvalidId(format!(
                "schedule id is {} bytes; fired process ids add `@` and a time, so it may be at most {} bytes",
                self.id.len(),
                MAX_ID_BYTES - 1 - FIRE_TIME_DIGITS
            )));
        }
        // Bounded before anything quotes them: a schedule is read back
        // whole in every listing, and a refusal names what it refuses.
        for (field, value, limit) in [
            ("cron", &self.cron, MAX_CRON_BYTES),
            ("every", &self.every, MAX_TIMING_WORD_BYTES),
            ("timezone", &self.timezone, MAX_TIMING_WORD_BYTES),
        ] {
            if let Some(v) = value.as_deref().filter(|v| v.len() > limit) {
                return Err(CairnError::InvalidRequest(format!(
                    "schedule: `{field}` is {} bytes, over the {limit} byte limit",
                    v.len()
                )));
            }
        }
        if let Some(why) = self.newer_timing_problem() {
            return Err(CairnError::InvalidRequest(format!("schedule: {why}")));
        }
        ScheduleSpec::parse(self.cron.as_deref(), self.every.as_deref(), self.timezone.as_deref())
    }

    /// What the checks of a new schedule's timing refuse that a schedule
    /// stored before them was made with: such a stored schedule keeps
    /// firing as it was made (`1,,2` as `1,2`, a month named in the day of
    /// week field as that month's number, `1s 1ns` as `1s`, `every` `1month`
    /// as 30.44 days).
    fn newer_timing_problem(&self) -> Option<String> {
        if let Some(expr) = self.cron.as_deref() {
            if expr
                .chars()
                .any(|c| (c.is_whitespace() || c.is_control()) && c != ' ' && c != '\t')
            {
                return Some(format!(
                    "invalid cron `{}`: its fields are separated by spaces or tabs, not line breaks or other characters",
                    expr.escape_debug()
                ));
            }
            // A pattern of another number of fields is refused as such by
            // the parse (its fields would be read as the wrong ones here).
            if cron_macro_problem(expr).is_none() && expr.split_whitespace().count() != 5 {
                return None;
            }
            let why = cron_shape_problem(expr)
                .or_else(|| cron_name_problem(expr))
                .or_else(|| cron_days_problem(expr))
                .or_else(|| cron_step_problem(expr))?;
            return Some(format!("invalid cron `{expr}`: {why}"));
        }
        let text = self.every.as_deref()?;
        if let Some(why) = every_calendar_problem(text) {
            return Some(why);
        }
        let d = humantime::parse_duration(text).ok()?;
        (d.subsec_nanos() % 1_000_000 != 0)
            .then(|| format!("`every` `{text}` is finer than a millisecond (a schedule fires on whole milliseconds)"))
    }
}

/// The first unit in `raw` that names months or years, in any spelling a
/// person might write (`mo`, `mon`, `month`, `M`, `y`, `yr`, `years`, ...):
/// a length that varies with the calendar. `m`, `min`, `ms` and the like
/// are not among them.
pub fn calendar_unit(raw: &str) -> Option<&str> {
    raw.split(|c: char| !c.is_ascii_alphabetic()).find(|unit| {
        let lower = unit.to_ascii_lowercase();
        *unit == "M"
            || lower.starts_with("mo")
            || lower.starts_with("mth")
            || lower.starts_with("mnth")
            || lower.starts_with('y')
    })
}

/// Why an `every` naming months or years is refused, if it does: humantime
/// counts a month as 30.44 days and a year as 365.25, so the fires would
/// drift from the calendar a user meant.
pub fn every_calendar_problem(text: &str) -> Option<String> {
    calendar_unit(text).is_some().then(|| {
        format!(
            "`every` `{text}` counts a month as 30.44 days and a year as 365.25, so its fires would drift from \
                 the calendar: give `cron` for calendar dates (`0 0 1 * *` is midnight on the first of each month, \
                 `0 0 1 1 *` on each 1 January), or `every` in weeks, days or smaller units"
        )
    })
}

/// Longest `cron` a schedule takes (five fields with long lists fit).
pub const MAX_CRON_BYTES: usize = 1024;
/// Longest `every` or `timezone` (IANA names are under 40 bytes).
pub const MAX_TIMING_WORD_BYTES: usize = 128;

/// When a schedule fires: parsed and checked.
#[derive(Clone, Debug)]
pub enum ScheduleSpec {
    /// A cron expression in a timezone.
    Cron(Box<croner::Cron>, chrono_tz::Tz),
    /// An interval in milliseconds, counted from the schedule's creation.
    Every(u64),
}

impl ScheduleSpec {
    /// Parse `cron` or `every` (exactly one) and the timezone. Bad input is
    /// `invalid_request` saying what is wrong.
    pub fn parse(cron: Option<&str>, every: Option<&str>, timezone: Option<&str>) -> Result<Self> {
        let bad = |m: String| CairnError::InvalidRequest(format!("schedule: {m}"));
        let tz = match timezone {
            None => chrono_tz::UTC,
            Some(name) => chrono_tz::Tz::from_str(name).map_err(|_| {
                bad(format!(
                    "unknown timezone `{name}` (an IANA name such as `Europe/Paris`)"
                ))
            })?,
        };
        match (cron, every) {
            (Some(_), Some(_)) => Err(bad("give `cron` or `every`, not both".into())),
            (None, None) => Err(bad("give `cron` or `every`".into())),
            (Some(expr), None) => {
                if let Some(why) = cron_macro_problem(expr) {
                    return Err(bad(format!("invalid cron `{expr}`: {why}")));
                }
                if expr.split_whitespace().count() != 5 {
                    return Err(bad(format!(
                        "cron `{expr}` must have 5 fields (minute hour day-of-month month day-of-week)"
                    )));
                }
                let parsed = croner::parser::CronParser::builder()
                    .seconds(croner::parser::Seconds::Disallowed)
                    .year(croner::parser::Year::Disallowed)
                    .build()
                    .parse(expr)
                    .map_err(|e| {
                        let why = cron_field_problem(expr).unwrap_or_else(|| cron_form_problem(expr, &e.to_string()));
                        bad(format!("invalid cron `{expr}`: {why}"))
                    })?;
                let spec = Self::Cron(Box::new(parsed), tz);
                // A pattern that never matches (31 February) is refused too.
                if spec.next_after(0).is_none() {
                    return Err(bad(format!("cron `{expr}` never fires")));
                }
                Ok(spec)
            }
            (None, Some(text)) => {
                if timezone.is_some() {
                    return Err(bad("`timezone` applies to `cron` only".into()));
                }
                let d = humantime::parse_duration(text)
                    .map_err(|e| bad(format!("invalid `every` `{text}` (like `30s`, `5m`, `1h 30m`): {e}")))?;
                if d < MIN_EVERY {
                    return Err(bad(format!("`every` `{text}` is below the 1 s minimum")));
                }
                if d > MAX_EVERY {
                    return Err(bad(format!("`every` `{text}` is over the 100-year maximum")));
                }
                let ms = u64::try_from(d.as_millis()).map_err(|_| bad(format!("`every` `{text}` is too long")))?;
                Ok(Self::Every(ms))
            }
        }
    }

    /// The spec of a stored schedule.
    pub fn of(schedule: &Schedule) -> Result<Self> {
        Self::parse(
            schedule.cron.as_deref(),
            schedule.every.as_deref(),
            schedule.timezone.as_deref(),
        )
    }

    /// The first fire time strictly after `after_ms`, for a schedule created
    /// at `created_ms` (the anchor of `every`). `None` when it never fires again.
    pub fn next_after_from(&self, created_ms: u64, after_ms: u64) -> Option<u64> {
        match self {
            Self::Every(every) => {
                if after_ms < created_ms {
                    return created_ms.checked_add(*every);
                }
                let k = (after_ms - created_ms) / every + 1;
                created_ms.checked_add(k.checked_mul(*every)?)
            }
            Self::Cron(cron, tz) => cron_next(cron, *tz, after_ms),
        }
    }

    /// [`Self::next_after_from`] for a cron spec, or an interval anchored at 0.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        self.next_after_from(0, after_ms)
    }
}

/// Most wall-clock matches [`cron_next`] passes over before answering: each
/// one passed over is a time already fired in a daylight-saving change, at
/// most a skipped day's minutes.
const MAX_PASSED_OVER: usize = 10_000;

/// The names of a 5-field cron pattern's fields, in order.
const CRON_FIELDS: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

/// An empty part of a field that `croner` would pass over without a word
/// (`1,,2`, `1-`, `*/`): a list item, a range end or a step left out is a
/// slip, and the pattern would fire on fewer times than were written.
/// A macro (`@daily`), which cairn does not take, with the fields it stands for.
fn cron_macro_problem(expr: &str) -> Option<String> {
    let word = expr.trim().strip_prefix('@')?;
    let fields = match word.to_ascii_lowercase().as_str() {
        "yearly" | "annually" => Some("0 0 1 1 *"),
        "monthly" => Some("0 0 1 * *"),
        "weekly" => Some("0 0 * * 0"),
        "daily" | "midnight" => Some("0 0 * * *"),
        "hourly" => Some("0 * * * *"),
        _ => None,
    };
    Some(match fields {
        Some(fields) => format!("macros such as `@{word}` are not taken: write its 5 fields, `{fields}`"),
        None => "macros (`@...`) are not taken: write the 5 fields (minute hour day-of-month month day-of-week)".into(),
    })
}

fn cron_shape_problem(expr: &str) -> Option<String> {
    if let Some(why) = cron_macro_problem(expr) {
        return Some(why);
    }
    for (field, name) in expr.split_whitespace().zip(CRON_FIELDS) {
        for part in field.split(',') {
            if part.is_empty() {
                return Some(format!("{name} list `{field}` has an empty item"));
            }
            let (range, step) = part.split_once('/').map_or((part, None), |(r, s)| (r, Some(s)));
            if range.is_empty() || step.is_some_and(str::is_empty) {
                return Some(format!("{name} `{part}` needs a value on each side of `/`"));
            }
            if range.split('-').any(str::is_empty) {
                return Some(format!("{name} range `{range}` needs a value on each side of `-`"));
            }
        }
    }
    None
}

/// A name in a field that has none, or another field's (`MON` in the month
/// field, `JAN` in the day of week): croner reads every field's names as
/// their numbers, so such a pattern would fire at times nobody wrote. The
/// letters croner reads otherwise (`L`, `W`, a day's `L`) are left alone.
fn cron_name_problem(expr: &str) -> Option<String> {
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    for (i, (field, name)) in expr.split_whitespace().zip(CRON_FIELDS).enumerate() {
        // A day of week `L` alone names no day (croner reads it as none;
        // `5L` is the last Friday).
        if i == 4 {
            let alone = field
                .trim_start_matches('+')
                .split([',', '-', '/', '#'])
                .find(|part| part.eq_ignore_ascii_case("L"));
            if let Some(part) = alone {
                return Some(format!(
                    "{name} `{part}` alone names no day: write the day it is the last of (`5L`, `FRIL`)"
                ));
            }
        }
        for word in field
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| !w.is_empty())
        {
            let upper = word.to_ascii_uppercase();
            let day = |w: &str| DAYS.contains(&w);
            let taken = match i {
                2 => matches!(upper.as_str(), "L" | "W" | "LW"),
                3 => MONTHS.contains(&upper.as_str()),
                4 => upper == "L" || day(&upper) || upper.strip_suffix('L').is_some_and(day),
                _ => false,
            };
            if !taken {
                return Some(match i {
                    3 => format!("{name} `{word}` is not a number or a name (JAN-DEC)"),
                    4 => format!("{name} `{word}` is not a number or a name (SUN-SAT)"),
                    _ => format!("{name} `{word}` is not a number"),
                });
            }
        }
    }
    None
}

/// A day of month and a day of week both given, one of them beginning with
/// `*` (`*/2`): croner fires when either matches, where classic cron counts
/// a field beginning with `*` as unrestricted and fires only when both do.
/// Which was meant cannot be told, so it is asked for.
fn cron_days_problem(expr: &str) -> Option<String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let [_, _, dom, _, dow] = fields[..] else {
        return None;
    };
    // croner reads `?` as `*` in these fields (`?/2` is `*/2`).
    let given = |f: &str| f != "*" && f != "?";
    let starred = |f: &str| f.starts_with(['*', '?']);
    if !given(dom) || !given(dow) || dow.starts_with('+') || !(starred(dom) || starred(dow)) {
        return None;
    }
    Some(format!(
        "day of month `{dom}` and day of week `{dow}` both given fire here when either matches, where \
         classic cron fires only when both do (it counts a field beginning with `*` as unrestricted): \
         begin the day of week with `+` (`+{}`) to fire when both match, or write the field beginning \
         with `*` as a range (`1-31/2`, `0-6/2`) to fire when either does",
        dow.trim_start_matches('+')
    ))
}

/// Each cron field's lowest and highest value, and its names in order
/// (`JAN` is 1, `SUN` is 0).
const CRON_RANGES: [(u32, u32, &[&str]); 5] = [
    (0, 59, &[]),
    (0, 23, &[]),
    (1, 31, &[]),
    (
        1,
        12,
        &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
    ),
    (0, 7, &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]),
];

/// A token of the cron field `name` as its number: a number, or one of the
/// field's `names`; `None` for a form left to croner (`L`, `W`, `5#3`);
/// `Err` for a word the field has no name for.
fn cron_value(token: &str, name: &str, names: &[&str]) -> Option<Result<u32, String>> {
    if let Ok(n) = token.parse::<u32>() {
        return Some(Ok(n));
    }
    if token.is_empty() || !token.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    let upper = token.to_ascii_uppercase();
    if matches!(upper.as_str(), "L" | "W" | "LW") {
        return None;
    }
    let first = if names.len() == 12 { 1 } else { 0 };
    Some(match names.iter().position(|n| *n == upper) {
        Some(at) => Ok(first + at as u32),
        None if names.is_empty() => Err(format!("{name} `{token}` is not a number")),
        None => Err(format!(
            "{name} `{token}` is not a number or a name ({}-{})",
            names[0],
            names[names.len() - 1]
        )),
    })
}

/// A step over the span it steps through (`*/90` in the minute field,
/// `5-50/100`): croner takes it, and it selects the range's first value
/// only, so the pattern would fire far less often than written. A step
/// equal to the span (`*/59`: minutes 0 and 59) selects both ends and is
/// kept. In the day of week, `*` is 0-6 (7 is Sunday again, so `*/7` is
/// Sunday only). Ranges croner refuses are left to it.
fn cron_step_problem(expr: &str) -> Option<String> {
    for (i, ((field, name), (lo, hi, names))) in expr.split_whitespace().zip(CRON_FIELDS).zip(CRON_RANGES).enumerate() {
        let dow = i == 4;
        for part in field.trim_start_matches('+').split(',') {
            let Some((range, step)) = part.split_once('/') else {
                continue;
            };
            let Ok(step) = step.parse::<u32>() else {
                continue;
            };
            let (from, to) = match range {
                "*" => (lo, if dow { 6 } else { hi }),
                "?" if i == 2 || dow => (lo, if dow { 6 } else { hi }),
                _ => {
                    let Some((a, b)) = range.split_once('-') else {
                        continue;
                    };
                    match (cron_value(a, name, names), cron_value(b, name, names)) {
                        (Some(Ok(a)), Some(Ok(b))) if lo <= a && a <= b && b <= hi => (a, b),
                        _ => continue,
                    }
                }
            };
            if step == 0 {
                continue;
            }
            // The values it selects; Sunday is 0 and 7 in the day of week.
            let mut values = (from..=to).step_by(step as usize).map(|v| if dow { v % 7 } else { v });
            let Some(first) = values.next() else {
                continue;
            };
            if values.any(|v| v != first) {
                continue;
            }
            if step <= to - from {
                // `0-7/7`: both ends are Sunday.
                return Some(format!("{name} `{part}` selects Sunday only (0 and 7 are both Sunday)"));
            }
            let at = match i {
                0 | 1 => "at",
                3 => "in",
                _ => "on",
            };
            return Some(format!(
                "{name} step {step} is over the {from}-{to} range: `{part}` fires {at} {name} {first} only"
            ));
        }
    }
    None
}

/// Words for a pattern `croner` refused in a form [`cron_field_problem`]
/// leaves to it (`L`, `W`, `#`): the field at fault and what the form takes,
/// with croner's own words when no rule below explains it.
fn cron_form_problem(expr: &str, croner: &str) -> String {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let croner = croner.trim_start_matches("Component error: ").trim_end_matches('.');
    if let Some(dow) = fields.get(4) {
        for part in dow.split(',').filter(|p| p.contains('#')) {
            let nth = part.rsplit('#').next().unwrap_or_default();
            if !matches!(nth, "1" | "2" | "3" | "4" | "5") {
                return format!(
                    "day of week `{part}`: the occurrence after `#` is 1-5 (`5#2` is a month's second Friday)"
                );
            }
        }
        if dow.contains('#') || dow.to_ascii_uppercase().ends_with('L') {
            return format!(
                "day of week `{dow}`: {croner} (`#` takes a day and an occurrence 1-5, as `5#2`; `L` follows a day, \
                 as `5L`, a month's last Friday)"
            );
        }
    }
    if let Some(dom) = fields.get(2).filter(|f| f.contains(['L', 'W'])) {
        if dom.contains("L-") {
            return format!(
                "day of month `{dom}`: an offset from the last day (`L-3`) is not supported; `L` is the last day"
            );
        }
        return format!(
            "day of month `{dom}`: {croner} (`L` is the last day; `W` follows one day, as `15W`, the weekday \
             nearest the 15th, or `L`, as `LW`)"
        );
    }
    croner.to_string()
}

/// What is wrong with a field of a 5-field cron pattern `croner` refused, in
/// words (`hour 24 is outside 0-23`): `croner` says only "Number out of
/// bounds" or "Range out of bounds". Checked: numbers and names (`JAN`,
/// `MON`) against the field's range, ranges that run backwards, a step of 0,
/// a step from a single value (`5/10`, which croner refuses in its own
/// words), and a word that is no name of the field. Forms it does not know (`L`,
/// `W`, `#`) are left to `croner`; `None` when nothing checked is at fault.
fn cron_field_problem(expr: &str) -> Option<String> {
    for ((field, name), (lo, hi, names)) in expr.split_whitespace().zip(CRON_FIELDS).zip(CRON_RANGES) {
        // croner takes `?` as `*` in the day fields only, and refuses it
        // elsewhere in words that name no field.
        if field.contains('?') && !name.starts_with("day of") {
            return Some(format!(
                "{name} `{field}`: `?` is not supported there (use `*`; `?` is taken only in the day of month \
                 and day of week, as `*`)"
            ));
        }
        let value = |token: &str| cron_value(token, name, names);
        for part in field.split(',') {
            let mut pieces = part.splitn(2, '/');
            let range = pieces.next().unwrap_or(part);
            let step = pieces.next();
            if step.and_then(|step| step.parse::<u32>().ok()) == Some(0) {
                return Some(format!("{name} step 0 must be at least 1"));
            }
            // In the day of week, `*` steps through 0-6 (7 is Sunday again).
            let top = if names.len() == 7 { 6 } else { hi };
            let mut ends = range.splitn(2, '-');
            let a = ends.next().and_then(value);
            let b = ends.next().and_then(value);
            let mut bounds = Vec::new();
            for end in [a, b].into_iter().flatten() {
                match end {
                    Ok(n) if n < lo || n > hi => return Some(format!("{name} {n} is outside {lo}-{hi}")),
                    Ok(n) => bounds.push(n),
                    Err(said) => return Some(said),
                }
            }
            if let [a, b] = bounds[..] {
                if b < a {
                    return Some(format!("{name} range `{range}` runs backwards"));
                }
            }
            if let (Some(step), [from]) = (step, &bounds[..]) {
                if !range.contains('-') {
                    return Some(format!(
                        "{name} `{part}` steps from a single value: put `*` or a range before the step \
                         (`*/{step}`, or `{from}-{top}/{step}` to start at {from})"
                    ));
                }
            }
        }
    }
    None
}

/// The first fire of `cron` in `tz` strictly after `after_ms`.
///
/// The pattern is matched against wall-clock times (never against instants,
/// so a change of offset cannot skip or repeat a match), and each match is
/// placed in time: a wall-clock time that occurs twice fires at its first
/// occurrence only, and one that does not exist (the clock skipped it) fires
/// at the instant of the change; several skipped times fire there once.
///
/// A pattern that fires every hour fires at both occurrences of a repeated
/// time: an every-minute pattern goes on through the hour the clock repeats
/// (as cron does) instead of pausing for it, and an hourly one fires in
/// each of the two hours that read 01:00.
fn cron_next(cron: &croner::Cron, tz: chrono_tz::Tz, after_ms: u64) -> Option<u64> {
    let after = Utc.timestamp_millis_opt(i64::try_from(after_ms).ok()?).single()?;
    let every_hour = (0..24).all(|h| cron.pattern.hour_match(h).unwrap_or(false));
    let first = cron_next_wall(cron, tz, after, every_hour)?;
    let next = if every_hour {
        second_pass(cron, tz, after, first).unwrap_or(first)
    } else {
        first
    };
    u64::try_from(next.timestamp_millis()).ok()
}

/// [`cron_next`] by wall-clock matches from the wall-clock time of `after`:
/// a repeated time at its first occurrence after `after`, or (`both`) its
/// second when the first is past.
fn cron_next_wall(
    cron: &croner::Cron,
    tz: chrono_tz::Tz,
    after: chrono::DateTime<Utc>,
    both: bool,
) -> Option<chrono::DateTime<Utc>> {
    use chrono::LocalResult;
    // Wall-clock times are carried as UTC values, which have no changes.
    let mut wall = Utc.from_utc_datetime(&after.with_timezone(&tz).naive_local());
    for _ in 0..MAX_PASSED_OVER {
        wall = cron.find_next_occurrence(&wall, false).ok()?;
        let at = match tz.from_local_datetime(&wall.naive_utc()) {
            LocalResult::Single(at) => at.with_timezone(&Utc),
            LocalResult::Ambiguous(early, late) => {
                let (early, late) = (early.with_timezone(&Utc), late.with_timezone(&Utc));
                if both && early <= after {
                    late
                } else {
                    early
                }
            }
            LocalResult::None => change_after(tz, wall.naive_utc())?,
        };
        if at > after {
            return Some(at);
        }
    }
    None
}

/// For a pattern that fires every hour, the fire in the second pass of a
/// repeated hour that comes before `first`: when the clock is set back
/// between `after` and `first`, wall-clock matches from the moment of the
/// change, placed at their second occurrence. (`first`, found by wall-clock
/// time from `after`, would pass over the wall-clock times the clock reads
/// again.)
fn second_pass(
    cron: &croner::Cron,
    tz: chrono_tz::Tz,
    after: chrono::DateTime<Utc>,
    first: chrono::DateTime<Utc>,
) -> Option<chrono::DateTime<Utc>> {
    use chrono::{LocalResult, Offset};
    let offset = |t: chrono::DateTime<Utc>| tz.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc();
    if offset(first) >= offset(after) {
        return None;
    }
    // The change: the first second at the later offset (one change between
    // them; a bisection of the seconds).
    let (mut lo, mut hi) = (after.timestamp(), first.timestamp());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset(Utc.timestamp_opt(mid, 0).single()?) == offset(first) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let change = Utc.timestamp_opt(hi, 0).single()?;
    let from = Utc.from_utc_datetime(&change.with_timezone(&tz).naive_local());
    let wall = cron.find_next_occurrence(&from, true).ok()?;
    match tz.from_local_datetime(&wall.naive_utc()) {
        LocalResult::Ambiguous(_, late) => {
            let late = late.with_timezone(&Utc);
            (late > after && late < first).then_some(late)
        }
        _ => None,
    }
}

/// The instant a skipped wall-clock time `skipped` falls in: the end of the
/// gap, found from the last minute before it (a gap is at most a day: Samoa
/// skipped 30 December 2011).
fn change_after(tz: chrono_tz::Tz, skipped: chrono::NaiveDateTime) -> Option<chrono::DateTime<Utc>> {
    let minute = chrono::TimeDelta::minutes(1);
    let mut before = skipped;
    for _ in 0..(2 * 24 * 60) {
        before -= minute;
        if let Some(at) = tz.from_local_datetime(&before).latest() {
            return Some(at.with_timezone(&Utc) + minute);
        }
    }
    None
}

/// A stored schedule: its definition and its state (the wire shape of
/// `GET /v1/schedules/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Schedule {
    /// The schedule id.
    pub id: String,
    /// The cron expression, when it is one: its fields joined by one space
    /// (a schedule stored before that keeps the text it was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The interval, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<String>,
    /// The timezone a cron expression is read in, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// What each fire starts.
    pub start: StartTemplate,
    /// What a fire does while the previous fire's process is running.
    pub overlap: Overlap,
    /// Created at, epoch milliseconds (the anchor of `every`).
    pub created_ms: u64,
    /// Paused schedules do not fire.
    pub paused: bool,
    /// The next fire time, epoch milliseconds. While paused, the time that
    /// was next when it was paused, which may be past: a paused schedule
    /// never fires, and `resume` sets the first fire time after now.
    pub next_fire_ms: u64,
    /// The last fire that started a process, epoch milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fire_ms: Option<u64>,
    /// The process the last fire started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_process_id: Option<String>,
    /// The latest fire the start path refused (its tool gone from the
    /// server, its id taken, ...), until a later fire starts a process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refusal: Option<FireRefusal>,
}

/// A fire whose start was refused: skipped, and recorded on its schedule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FireRefusal {
    /// The fire time, epoch milliseconds.
    pub fire_ms: u64,
    /// The process id the fire would have started.
    pub process_id: String,
    /// The start's error code (`unknown_tool`, ...).
    pub code: String,
    /// The start's error message.
    pub message: String,
}

impl Schedule {
    /// A new schedule from a checked request, created at `now_ms`.
    pub fn new(request: ScheduleRequest, spec: &ScheduleSpec, now_ms: u64) -> Result<Self> {
        let next = spec.next_after_from(now_ms, now_ms).ok_or_else(|| {
            CairnError::InvalidRequest(format!("schedule `{}`: it never fires after now", request.id))
        })?;
        Ok(Self {
            id: request.id,
            // Stored and shown as its fields joined by one space: the
            // spaces a caller typed carry no meaning and would break columns.
            cron: request.cron.map(|c| c.split_whitespace().collect::<Vec<_>>().join(" ")),
            every: request.every,
            timezone: request.timezone,
            start: request.start,
            overlap: request.overlap,
            created_ms: now_ms,
            paused: false,
            next_fire_ms: next,
            last_fire_ms: None,
            last_process_id: None,
            last_refusal: None,
        })
    }

    /// Whether `other` has the same definition (a repeated create of it is the
    /// same create).
    pub fn same_definition(&self, other: &Schedule) -> bool {
        // Spelled differently, the same timing is the same definition: an
        // omitted timezone is UTC, `every` compares as a duration, and a
        // cron expression by its fields, whatever the spaces between them.
        let zone = |s: &Schedule| s.timezone.clone().unwrap_or_else(|| "UTC".into());
        let interval = |s: &Schedule| s.every.as_deref().map(humantime::parse_duration).and_then(|d| d.ok());
        let fields = |s: &Schedule| {
            s.cron
                .as_deref()
                .map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        };
        fields(self) == fields(other)
            && self.every.is_some() == other.every.is_some()
            && interval(self) == interval(other)
            && (self.cron.is_none() || zone(self) == zone(other))
            && self.start == other.start
            && self.overlap == other.overlap
    }

    /// How `other`, refused under this schedule's id, differs from this
    /// stored definition, in words: each part that differs, with the stored
    /// value where it is short (the timing, the overlap policy).
    pub fn differences(&self, other: &Schedule) -> String {
        let timing = |s: &Schedule| match (&s.cron, &s.every) {
            (Some(cron), _) => format!(
                "cron `{}` in {}",
                cron.split_whitespace().collect::<Vec<_>>().join(" "),
                s.timezone.as_deref().unwrap_or("UTC")
            ),
            (None, Some(every)) => format!("every `{every}`"),
            (None, None) => "no timing".into(),
        };
        let overlap = |s: &Schedule| match s.overlap {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        };
        let same_timing = Schedule {
            start: self.start.clone(),
            overlap: self.overlap,
            ..other.clone()
        };
        let mut parts = Vec::new();
        if !self.same_definition(&same_timing) {
            parts.push(format!(
                "it fires on {}, this request on {}",
                timing(self),
                timing(other)
            ));
        }
        if self.start != other.start {
            parts.push("its start template differs".to_string());
        }
        if self.overlap != other.overlap {
            parts.push(format!(
                "its overlap is `{}`, this request's `{}`",
                overlap(self),
                overlap(other)
            ));
        }
        parts.join("; ")
    }

    /// The process id a fire at `fire_ms` starts.
    pub fn fire_id(&self, fire_ms: u64) -> String {
        format!("{}{FIRE_ID_SEPARATOR}{fire_ms}", self.id)
    }

    /// The next fire time after `now_ms` (a resume starts counting from now).
    pub fn next_after(&self, now_ms: u64) -> Result<Option<u64>> {
        Ok(ScheduleSpec::of(self)?.next_after_from(self.created_ms, now_ms))
    }
}

/// The state change a fire writes: the compare-and-set of
/// `ProcessRegistry::advance_schedule`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleAdvance {
    /// When the schedule this fire is of was created (its `created_ms`): a
    /// losing advance records its fire on that schedule only, never on one
    /// made again under the same id after a delete.
    #[serde(default)]
    pub created_ms: u64,
    /// The next fire time; `None` when it never fires again (the schedule
    /// stays, paused).
    pub next_fire_ms: Option<u64>,
    /// The fire time and process id when this fire started one (a skipped fire
    /// leaves the last fire as it was). A fire that started one clears the
    /// last refusal.
    pub fired: Option<(u64, String)>,
    /// The refusal when the start path refused this fire's start (recorded
    /// as the last refusal; `None` leaves it as it was).
    #[serde(default)]
    pub refused: Option<FireRefusal>,
}

/// What a due fire does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirePlan {
    /// Not due yet (or paused): nothing.
    NotDue,
    /// Start `process_id` for the fire at `fire_ms`, then advance.
    Start {
        /// The fire time.
        fire_ms: u64,
        /// `{schedule_id}@{fire_ms}`.
        process_id: String,
        /// The advance to write once the start is recorded.
        advance: ScheduleAdvance,
    },
    /// The previous fire's process is still running (`overlap: skip`): advance only.
    Skip {
        /// The fire time skipped.
        fire_ms: u64,
        /// The advance to write.
        advance: ScheduleAdvance,
    },
}

/// What `schedule` does at `now_ms`, given whether the previous fire's process
/// (`last_process_id`) is still running. A due schedule fires its stored next
/// fire time once; the next one is the first after now (one catch-up at most).
pub fn plan_fire(schedule: &Schedule, now_ms: u64, previous_running: bool) -> Result<FirePlan> {
    if schedule.paused || schedule.next_fire_ms > now_ms {
        return Ok(FirePlan::NotDue);
    }
    let fire_ms = schedule.next_fire_ms;
    let next_fire_ms = schedule.next_after(now_ms.max(fire_ms))?;
    if previous_running && schedule.overlap == Overlap::Skip {
        return Ok(FirePlan::Skip {
            fire_ms,
            advance: ScheduleAdvance {
                created_ms: schedule.created_ms,
                next_fire_ms,
                fired: None,
                refused: None,
            },
        });
    }
    let process_id = schedule.fire_id(fire_ms);
    Ok(FirePlan::Start {
        fire_ms,
        advance: ScheduleAdvance {
            created_ms: schedule.created_ms,
            next_fire_ms,
            fired: Some((fire_ms, process_id.clone())),
            refused: None,
        },
        process_id,
    })
}

/// One page of `GET /v1/schedules`, in id order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchedulePage {
    /// The schedules.
    pub schedules: Vec<Schedule>,
    /// The `after` of the next page, when this one was full or stopped at
    /// 4 MiB of schedules (a template may hold a mebibyte of input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// What one pass over the due schedules did (`Processes::fire_schedules`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireReport {
    /// Processes this pass started (or found already started by another node).
    pub started: Vec<String>,
    /// Fires skipped because the previous fire's process was running, as
    /// `{schedule_id}@{fire_time_ms}`.
    pub skipped: Vec<String>,
    /// Fires whose start was refused (recorded as the schedule's
    /// `last_refusal`), as `{schedule_id}@{fire_time_ms}`.
    pub refused: Vec<String>,
    /// Schedules whose fire failed for the store's sake (tried again by a
    /// later pass; the others of this pass were fired all the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
    /// The pass stopped at its page cap with schedules still due: the next
    /// pass goes on at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// Fire times passed over: due after the one a schedule fired (or
    /// skipped) but before this pass, so never made. One missed fire per
    /// schedule is caught up, after downtime or a pass running behind (more
    /// fires due at once than it makes in a period); counted up to
    /// [`MAX_COUNTED_PASSED_OVER`] per schedule.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub passed_over: u64,
    /// `passed_over` is a lower bound: a schedule's count reached
    /// [`MAX_COUNTED_PASSED_OVER`] and more were passed over than counted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passed_over_at_least: bool,
    /// The schedules whose fire times were passed over, in the order fired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_over_by: Vec<String>,
    /// Those of `passed_over_by` whose caught-up fire was skipped
    /// (`overlap: skip`, the previous fire's process still running): no
    /// missed fire of theirs was caught up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catch_up_skipped_by: Vec<String>,
    /// Those of `passed_over_by` whose caught-up fire could not start (its
    /// refusal is the schedule's `last_refusal`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catch_up_refused_by: Vec<String>,
}

/// What a fire made of its fire time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FireOutcome {
    /// It started its process (or found it started).
    Started,
    /// `overlap: skip`, and the previous fire's process was running.
    Skipped,
    /// The start path refused it (recorded as the schedule's `last_refusal`).
    Refused,
}

/// Fires made by the runtimes of this OS process since it began, by
/// outcome, each counted by the runtime whose advance of its schedule took
/// (two nodes racing one fire count it once between them): what the
/// server's `cairn_schedule_fires_total` reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FireCounts {
    /// Fires that started their process.
    pub started: u64,
    /// Fires skipped by `overlap: skip`.
    pub skipped: u64,
    /// Fires the start path refused.
    pub refused: u64,
}

// Process-wide, as a server runs one runtime: the runtime's own state is
// out of reach of the server's metrics, which read these at scrape.
static FIRES_STARTED: AtomicU64 = AtomicU64::new(0);
static FIRES_SKIPPED: AtomicU64 = AtomicU64::new(0);
static FIRES_REFUSED: AtomicU64 = AtomicU64::new(0);

/// The fires counted so far ([`FireCounts`]).
pub fn fire_counts() -> FireCounts {
    FireCounts {
        started: FIRES_STARTED.load(Ordering::Relaxed),
        skipped: FIRES_SKIPPED.load(Ordering::Relaxed),
        refused: FIRES_REFUSED.load(Ordering::Relaxed),
    }
}

/// Counts one fire made (its advance took) in [`fire_counts`].
pub(crate) fn count_fire(outcome: FireOutcome) {
    let counter = match outcome {
        FireOutcome::Started => &FIRES_STARTED,
        FireOutcome::Skipped => &FIRES_SKIPPED,
        FireOutcome::Refused => &FIRES_REFUSED,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The most passed-over fire times one fire counts (a schedule of every
/// second, down for a day, passed over 86,400).
pub const MAX_COUNTED_PASSED_OVER: u64 = 10_000;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl FireReport {
    /// Adds what `other` (one schedule's fire) did to this report.
    pub fn merge(&mut self, other: FireReport) {
        self.started.extend(other.started);
        self.skipped.extend(other.skipped);
        self.refused.extend(other.refused);
        self.failed.extend(other.failed);
        self.more |= other.more;
        self.passed_over += other.passed_over;
        self.passed_over_at_least |= other.passed_over_at_least;
        self.passed_over_by.extend(other.passed_over_by);
        self.catch_up_skipped_by.extend(other.catch_up_skipped_by);
        self.catch_up_refused_by.extend(other.catch_up_refused_by);
    }

    /// Counts `n` fire times schedule `id` passed over ([`Schedule::passed_over`])
    /// by a fire (the one caught up) that came to `outcome`.
    pub fn add_passed_over(&mut self, id: &str, n: u64, outcome: FireOutcome) {
        if n == 0 {
            return;
        }
        self.passed_over += n;
        self.passed_over_at_least |= n >= MAX_COUNTED_PASSED_OVER;
        self.passed_over_by.push(id.to_string());
        match outcome {
            FireOutcome::Started => {}
            FireOutcome::Skipped => self.catch_up_skipped_by.push(id.to_string()),
            FireOutcome::Refused => self.catch_up_refused_by.push(id.to_string()),
        }
    }

    /// The schedules of `passed_over_by` as a WARN line names them: the
    /// first few, then how many more (`a, b, c and 2 more`).
    pub fn passed_over_names(&self) -> String {
        names(&self.passed_over_by)
    }

    /// The WARN line of a pass that passed fire times over: how many, of
    /// which schedules, and what became of the one missed fire each catches
    /// up: started, or (said apart, as no fire was caught up then) skipped
    /// for overlap or refused.
    pub fn passed_over_message(&self) -> String {
        let mut text = format!(
            "{}{} fire times of schedule(s) {} passed over: they fell due while the server was down or earlier \
             fires were being made; ",
            if self.passed_over_at_least { "at least " } else { "" },
            self.passed_over,
            self.passed_over_names()
        );
        let (skipped, refused) = (&self.catch_up_skipped_by, &self.catch_up_refused_by);
        let caught_up = self.passed_over_by.len() - skipped.len() - refused.len();
        if skipped.is_empty() && refused.is_empty() {
            text.push_str("one missed fire per schedule is caught up");
            return text;
        }
        let mut parts = Vec::new();
        if caught_up > 0 {
            parts.push(format!("one missed fire is caught up for {caught_up} of them"));
        }
        if !skipped.is_empty() {
            parts.push(format!(
                "the missed fire of {} was skipped, not caught up (overlap `skip`: the previous fire's process \
                 is still running)",
                names(skipped)
            ));
        }
        if !refused.is_empty() {
            parts.push(format!(
                "the missed fire of {} could not start (see the schedule's `last_refusal`)",
                names(refused)
            ));
        }
        text.push_str(&parts.join("; "));
        text
    }
}

/// Schedule ids as a log line names them: the first few, then how many more.
fn names(ids: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut text = ids.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        text.push_str(&format!(" and {} more", ids.len() - SHOWN));
    }
    text
}

impl Schedule {
    /// How many fire times fall strictly between `fire_ms` and `next_ms`
    /// (up to [`MAX_COUNTED_PASSED_OVER`]): those a fire at `fire_ms` whose
    /// next is `next_ms` passes over.
    pub fn passed_over(&self, fire_ms: u64, next_ms: Option<u64>) -> Result<u64> {
        let Some(next_ms) = next_ms else { return Ok(0) };
        let mut n = 0;
        let mut at = fire_ms;
        while n < MAX_COUNTED_PASSED_OVER {
            match self.next_after(at)? {
                Some(t) if t < next_ms => {
                    n += 1;
                    at = t;
                }
                _ => break,
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cron: Option<&str>, every: Option<&str>, tz: Option<&str>) -> ScheduleRequest {
        ScheduleRequest {
            id: "s".into(),
            cron: cron.map(Into::into),
            every: every.map(Into::into),
            timezone: tz.map(Into::into),
            start: StartTemplate {
                input: ProcessInput::ToolCall {
                    tool: "echo".into(),
                    args: serde_json::json!({"value": 1}),
                },
                disposition: Disposition::Rerunnable,
                originator: Originator::host(),
                caused_by: None,
                grant: None,
                wake_target: None,
                event_types: Vec::new(),
                env_spec: None,
                external_ref: None,
            },
            overlap: Overlap::Allow,
        }
    }

    fn refused(cron: Option<&str>, every: Option<&str>, tz: Option<&str>) -> String {
        let e = request(cron, every, tz).validate().expect_err("refused");
        assert_eq!(e.code(), "invalid_request", "{e}");
        e.to_string()
    }

    #[test]
    fn bad_timing_is_refused_with_a_reason() {
        assert!(refused(Some("61 * * * *"), None, None).contains("invalid cron"));
        // Which field is out of its range, or runs backwards, is said.
        for (expr, said) in [
            ("61 * * * *", "minute 61 is outside 0-59"),
            ("* 24 * * *", "hour 24 is outside 0-23"),
            ("0 5 0 * *", "day of month 0 is outside 1-31"),
            ("0 5 * 13 *", "month 13 is outside 1-12"),
            ("0 0 * * 8", "day of week 8 is outside 0-7"),
            ("0 5 * * 5-1", "day of week range `5-1` runs backwards"),
            ("0 0 * * FRI-MON", "day of week range `FRI-MON` runs backwards"),
            ("0 0 * DEC-jan *", "month range `DEC-jan` runs backwards"),
            ("0,70 5 * * *", "minute 70 is outside 0-59"),
            ("*/0 * * * *", "minute step 0 must be at least 1"),
            // `?`, taken as `*` in the day fields, is named in any other.
            (
                "0 3 ? ? *",
                "month `?`: `?` is not supported there (use `*`; `?` is taken only in the day of month",
            ),
            ("? 3 * * *", "minute `?`: `?` is not supported there (use `*`"),
            ("0 */? * * *", "hour `*/?`: `?` is not supported there"),
            // A step from one value (which croner refuses in its own words)
            // is said in the field's terms.
            (
                "5/60 * * * *",
                "minute `5/60` steps from a single value: put `*` or a range before the step (`*/60`, or \
                 `5-59/60` to start at 5)",
            ),
            (
                "0 0 * JAN/12 *",
                "month `JAN/12` steps from a single value: put `*` or a range before the step (`*/12`, or \
                 `1-12/12` to start at 1)",
            ),
            ("0 0 * * 1/2", "day of week `1/2` steps from a single value"),
            (
                "*/90 * * * *",
                "minute step 90 is over the 0-59 range: `*/90` fires at minute 0 only",
            ),
            (
                "5-50/100 * * * *",
                "minute step 100 is over the 5-50 range: `5-50/100` fires at minute 5 only",
            ),
            ("5-50/46 * * * *", "minute step 46 is over the 5-50 range"),
            (
                "0 */24 * * *",
                "hour step 24 is over the 0-23 range: `*/24` fires at hour 0 only",
            ),
            (
                "0 0 */45 * *",
                "day of month step 45 is over the 1-31 range: `*/45` fires on day of month 1 only",
            ),
            ("0 0 ?/31 * *", "day of month step 31 is over the 1-31 range"),
            (
                "0 0 1 */13 *",
                "month step 13 is over the 1-12 range: `*/13` fires in month 1 only",
            ),
            ("0 0 1 */12 *", "month step 12 is over the 1-12 range"),
            (
                "0 0 1 FEB-APR/3 *",
                "month step 3 is over the 2-4 range: `FEB-APR/3` fires in month 2 only",
            ),
            (
                "0 9 * * */8",
                "day of week step 8 is over the 0-6 range: `*/8` fires on day of week 0 only",
            ),
            ("0 9 * * */7", "day of week step 7 is over the 0-6 range"),
            ("0 9 * * 0-7/7", "day of week `0-7/7` selects Sunday only"),
            ("0 9 * * 1,*/9", "day of week step 9 is over the 0-6 range"),
            ("0,*/60 * * * *", "minute step 60 is over the 0-59 range"),
            ("a * * * *", "minute `a` is not a number"),
            (
                "@daily",
                "macros such as `@daily` are not taken: write its 5 fields, `0 0 * * *`",
            ),
            ("@reboot", "macros (`@...`) are not taken"),
            ("0 0 * * FUN", "day of week `FUN` is not a number or a name (SUN-SAT)"),
            ("1,,2 * * * *", "minute list `1,,2` has an empty item"),
            ("0 9, * * *", "hour list `9,` has an empty item"),
            (
                "0 0 1- * *",
                "day of month range `1-` needs a value on each side of `-`",
            ),
            ("0 0 * -3 *", "month range `-3` needs a value on each side of `-`"),
            ("*/ * * * *", "minute `*/` needs a value on each side of `/`"),
            ("0 0 * * /2", "day of week `/2` needs a value on each side of `/`"),
            ("0 0 * MON *", "month `MON` is not a number or a name (JAN-DEC)"),
            ("0 0 * * JAN", "day of week `JAN` is not a number or a name (SUN-SAT)"),
            ("MON * * * *", "minute `MON` is not a number"),
            ("0 JAN * * *", "hour `JAN` is not a number"),
            ("0 0 MON * *", "day of month `MON` is not a number"),
            ("0 0 15 * L", "day of week `L` alone names no day"),
            ("0 0 * * 1,l", "day of week `l` alone names no day"),
            ("0 0 * * *\n", "separated by spaces"),
            ("0\r\n0 * * *", "separated by spaces"),
            ("0\u{a0}0 * * *", "separated by spaces"),
        ] {
            let e = refused(Some(expr), None, None);
            assert!(e.contains(said), "{expr}: {e}");
        }
        assert!(refused(Some("* * * *"), None, None).contains("5 fields"));
        assert!(refused(Some("0 * * * * *"), None, None).contains("5 fields"));
        assert!(refused(Some("0 0 31 2 *"), None, None).contains("never fires"));
        assert!(refused(Some("* * * * *"), None, Some("Mars/Olympus")).contains("unknown timezone"));
        assert!(refused(None, Some("500ms"), None).contains("below the 1 s minimum"));
        assert!(refused(None, Some("soon"), None).contains("invalid `every`"));
        assert!(refused(Some("* * * * *"), Some("1m"), None).contains("not both"));
        assert!(refused(None, None, None).contains("give `cron` or `every`"));
        assert!(refused(None, Some("1m"), Some("UTC")).contains("`cron` only"));
        assert!(refused(None, Some("36526d"), None).contains("100-year maximum"));
        assert!(refused(None, Some("1s 1ns"), None).contains("finer than a millisecond"));
        assert!(request(None, Some("1s 500ms"), None).validate().is_ok());
        assert!(request(None, Some("36525d"), None).validate().is_ok());
        assert!(request(None, Some("2w 1d 1h 1m"), None).validate().is_ok());
        // Months and years are not the calendar's: cron is.
        for every in [
            "1month", "2 months", "1M", "1y", "1yr", "2yrs", "1year 2d", "3years", "1mo", "1mon", "2 Months", "1YR",
        ] {
            let e = refused(None, Some(every), None);
            assert!(
                e.contains("drift from the calendar") && e.contains("0 0 1 * *"),
                "{every}: {e}"
            );
        }
        // One stored before the check keeps firing as it was made.
        let stored = ScheduleSpec::parse(None, Some("1month"), None).expect("read as stored");
        assert!(stored.next_after(0).is_some());
        // A schedule stored before the check keeps its fires.
        let stored = ScheduleSpec::parse(Some("1,,2 9 * * *"), None, None).expect("read as stored");
        assert!(stored.next_after(0).is_some());
        let stored = ScheduleSpec::parse(Some("*/90 * * * *"), None, None).expect("read as stored");
        assert_eq!(stored.next_after(0), Some(3_600_000), "hourly, as it was made");
        // Forms croner knows beside plain numbers stay accepted.
        for expr in [
            "0 0 L * *",
            "0 0 15W * *",
            "0 0 * * 5#3",
            "0 0 * * 5L",
            "0 0 ? * MON-FRI",
            "*/15 9-17 * * *",
            "0 0 * JAN-MAR,DEC mon,WED",
            "0 0 * * MON#2",
            "0 10 * * SAT-SUN",
            "0 10 * * FRI-SUN",
            "0 0 * * FRIL",
            "0 0 LW * *",
            "0 0 1 * +MON",
            // A step equal to the span selects both its ends.
            "*/59 * * * *",
            "5-50/45 * * * *",
            "0 */23 * * *",
            "0 0 */30 * *",
            "0 0 1 */11 *",
            "0 9 * * */6",
            "0 9 * * 1-7/6",
        ] {
            assert!(request(Some(expr), None, None).validate().is_ok(), "{expr}");
        }
    }

    #[test]
    fn a_refused_l_w_or_hash_form_names_its_field() {
        for (expr, says) in [
            ("0 0 * * 5#6", "day of week `5#6`: the occurrence after `#` is 1-5"),
            ("0 0 * * 5#0", "day of week `5#0`: the occurrence after `#` is 1-5"),
            ("0 0 * * MON,5#9", "day of week `5#9`: the occurrence after `#` is 1-5"),
            (
                "0 0 L-3 * *",
                "day of month `L-3`: an offset from the last day (`L-3`) is not supported",
            ),
            ("0 0 W * *", "day of month `W`: "),
            ("0 0 1-5W * *", "day of month `1-5W`: "),
            ("0 0 0 L * *", "must have 5 fields"),
            ("0 0 0 1 JAN * 2026", "must have 5 fields"),
        ] {
            let e = request(Some(expr), None, None).validate().expect_err(expr).to_string();
            assert!(e.contains(says), "{expr}: {e}");
            assert!(!e.contains("Component error"), "{expr}: {e}");
        }
    }

    #[test]
    fn the_same_timing_spelled_differently_is_the_same_definition() {
        let make = |cron: Option<&str>, every: Option<&str>, tz: Option<&str>| {
            let req = request(cron, every, tz);
            let spec = req.validate().expect("valid");
            Schedule::new(req, &spec, 1_000).expect("fires")
        };
        let daily = make(Some("0 3 * * *"), None, None);
        assert!(daily.same_definition(&make(Some("0 3 * * *"), None, Some("UTC"))));
        assert!(!daily.same_definition(&make(Some("0 3 * * *"), None, Some("Europe/Paris"))));
        let spaced = make(Some(" 0  3 * *\t* "), None, None);
        assert!(daily.same_definition(&spaced));
        // Stored (and so shown) as its fields joined by one space.
        assert_eq!(spaced.cron.as_deref(), Some("0 3 * * *"));
        assert!(!daily.same_definition(&make(Some("0 3 * * 1"), None, None)));
        let every = make(None, Some("90m"), None);
        assert!(every.same_definition(&make(None, Some("1h 30m"), None)));
        assert!(!every.same_definition(&make(None, Some("1h"), None)));
        assert!(!every.same_definition(&daily));
        // A refusal says what differs from the stored definition.
        assert_eq!(
            daily.differences(&every),
            "it fires on cron `0 3 * * *` in UTC, this request on every `90m`"
        );
        let mut other = make(Some("0 3 * * *"), None, Some("Europe/Paris"));
        other.overlap = Overlap::Skip;
        other.start.disposition = Disposition::OwnerBound;
        assert_eq!(
            daily.differences(&other),
            "it fires on cron `0 3 * * *` in UTC, this request on cron `0 3 * * *` in Europe/Paris; \
             its start template differs; its overlap is `allow`, this request's `skip`"
        );
    }

    #[test]
    fn a_template_with_an_id_is_refused() {
        let mut v = serde_json::to_value(request(None, Some("10s"), None)).unwrap();
        v["start"]["id"] = "x".into();
        let e = ScheduleRequest::from_json(v).expect_err("refused");
        assert_eq!(e.code(), "invalid_request");
        assert!(e.to_string().contains("without `id`"), "{e}");
    }

    #[test]
    fn timing_fields_have_a_length_limit() {
        let long = format!("0{} * * * *", ",0".repeat(600));
        let e = refused(Some(&long), None, None);
        assert!(e.contains("`cron` is 1209 bytes, over the 1024 byte limit"), "{e}");
        let zone = "A".repeat(129);
        let e = refused(Some("0 0 * * *"), None, Some(&zone));
        assert!(e.contains("`timezone` is 129 bytes, over the 128 byte limit"), "{e}");
        assert!(!e.contains(&zone), "the value is not quoted back whole");
    }

    #[test]
    fn a_template_that_is_no_object_is_refused_as_such() {
        for (start, kind) in [(serde_json::json!([]), "an array"), (serde_json::Value::Null, "null")] {
            let mut v = serde_json::to_value(request(None, Some("10s"), None)).unwrap();
            v["start"] = start;
            let e = ScheduleRequest::from_json(v).expect_err("refused");
            assert_eq!(e.code(), "invalid_request");
            assert!(
                e.to_string().ends_with(&format!(
                    "must be a JSON object (a start request without `id`), not {kind}"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn every_counts_from_creation() {
        let spec = request(None, Some("10s"), None).validate().unwrap();
        let s = Schedule::new(request(None, Some("10s"), None), &spec, 1_000).unwrap();
        assert_eq!(s.next_fire_ms, 11_000);
        assert_eq!(s.next_after(11_000).unwrap(), Some(21_000));
        assert_eq!(s.next_after(20_999).unwrap(), Some(21_000));
        assert_eq!(s.next_after(3_600_000).unwrap(), Some(3_601_000));
    }

    /// The fire times strictly between a fire and its next are counted, up
    /// to the cap.
    #[test]
    fn passed_over_counts_the_fire_times_between() {
        let spec = request(None, Some("10s"), None).validate().unwrap();
        let s = Schedule::new(request(None, Some("10s"), None), &spec, 1_000).unwrap();
        assert_eq!(s.passed_over(11_000, Some(21_000)).unwrap(), 0);
        assert_eq!(s.passed_over(11_000, Some(41_000)).unwrap(), 2);
        assert_eq!(s.passed_over(21_000, Some(3_621_000)).unwrap(), 359);
        assert_eq!(s.passed_over(11_000, None).unwrap(), 0);
        let cap = s
            .passed_over(11_000, Some(11_000 + 10_000 * (MAX_COUNTED_PASSED_OVER + 5)))
            .unwrap();
        assert_eq!(cap, MAX_COUNTED_PASSED_OVER);
    }

    /// A report says which schedules passed fire times over, and whether its
    /// count is a lower bound (a schedule's count reached the cap).
    #[test]
    fn a_report_names_the_schedules_and_says_a_capped_count() {
        let mut report = FireReport::default();
        report.add_passed_over("a", 0, FireOutcome::Started);
        assert_eq!((report.passed_over, report.passed_over_names()), (0, String::new()));
        let mut one = FireReport::default();
        one.add_passed_over("a", 11, FireOutcome::Started);
        report.merge(one);
        assert!(!report.passed_over_at_least);
        for id in ["b", "c", "d", "e"] {
            let mut one = FireReport::default();
            one.add_passed_over(id, MAX_COUNTED_PASSED_OVER, FireOutcome::Started);
            report.merge(one);
        }
        assert_eq!(report.passed_over, 11 + 4 * MAX_COUNTED_PASSED_OVER);
        assert!(report.passed_over_at_least);
        assert_eq!(report.passed_over_names(), "a, b, c and 2 more");
    }

    #[test]
    fn a_due_schedule_fires_once_and_catches_up_at_most_once() {
        let spec = request(None, Some("10s"), None).validate().unwrap();
        let s = Schedule::new(request(None, Some("10s"), None), &spec, 0).unwrap();
        assert_eq!(plan_fire(&s, 9_999, false).unwrap(), FirePlan::NotDue);
        // An hour late: the stored fire, then the first after now.
        match plan_fire(&s, 3_600_500, false).unwrap() {
            FirePlan::Start {
                fire_ms,
                process_id,
                advance,
            } => {
                assert_eq!((fire_ms, process_id.as_str()), (10_000, "s@10000"));
                assert_eq!(advance.next_fire_ms, Some(3_610_000));
            }
            other => panic!("a start: {other:?}"),
        }
        assert!(matches!(plan_fire(&s, 10_000, true).unwrap(), FirePlan::Start { .. }));
        let skip = Schedule {
            overlap: Overlap::Skip,
            ..s.clone()
        };
        assert!(matches!(plan_fire(&skip, 10_000, true).unwrap(), FirePlan::Skip { .. }));
        let paused = Schedule { paused: true, ..s };
        assert_eq!(plan_fire(&paused, 10_000, false).unwrap(), FirePlan::NotDue);
    }

    fn ms(rfc3339: &str) -> u64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis() as u64
    }

    /// A day of month and a day of week both given: either matches, and
    /// `+` before the day of week makes both must; one beginning with `*`
    /// (`*/2`), which classic cron reads otherwise, is asked to say which.
    #[test]
    fn day_of_month_and_day_of_week_either_or_both_as_written() {
        let next = |cron: &str| {
            let spec = request(Some(cron), None, None).validate().unwrap();
            spec.next_after(ms("2026-12-05T12:00:00Z")).unwrap()
        };
        // Saturday 5 December 2026.
        assert_eq!(
            next("0 0 15,20 * 3"),
            ms("2026-12-09T00:00:00Z"),
            "a Wednesday, or the 15th"
        );
        assert_eq!(
            next("0 0 1-31/2 * 1"),
            ms("2026-12-07T00:00:00Z"),
            "an odd day, or a Monday"
        );
        assert_eq!(
            next("0 0 */2 * +3"),
            ms("2026-12-09T00:00:00Z"),
            "an odd day that is a Wednesday"
        );
        assert_eq!(
            next("0 0 15 * +0-6/2"),
            ms("2026-12-15T00:00:00Z"),
            "the 15th, a Tuesday"
        );
        assert_eq!(next("0 0 * * 3"), ms("2026-12-09T00:00:00Z"));
        assert_eq!(next("0 0 13 * ?"), ms("2026-12-13T00:00:00Z"));
        for cron in [
            "0 0 */2 * 3",
            "0 0 15 * */2",
            "0 0 */2 * */3",
            "0 0 ?/2 * MON",
            "0 0 15 * ?/2",
        ] {
            let e = refused(Some(cron), None, None);
            assert!(e.contains("classic cron fires only when both do"), "{cron}: {e}");
        }
        // Stored before the check, it keeps firing as croner reads it.
        let stored = ScheduleSpec::parse(Some("0 0 */2 * 3"), None, None).expect("read as stored");
        assert_eq!(
            stored.next_after(ms("2026-12-05T12:00:00Z")),
            Some(ms("2026-12-07T00:00:00Z"))
        );
    }

    #[test]
    fn cron_in_a_named_timezone_across_daylight_saving_changes() {
        let spec = request(Some("30 2 * * *"), None, Some("Europe/Paris"))
            .validate()
            .unwrap();
        // 2026-03-29: Paris skips 02:00-03:00 (CET to CEST). 02:30 does not
        // exist; the fire comes just after the change (03:00 CEST = 01:00 UTC).
        let day_before = spec.next_after(ms("2026-03-28T00:00:00Z")).unwrap();
        assert_eq!(day_before, ms("2026-03-28T01:30:00Z"), "02:30 CET");
        let gap = spec.next_after(day_before).unwrap();
        assert_eq!(gap, ms("2026-03-29T01:00:00Z"), "the skipped 02:30 fires at 03:00 CEST");
        assert_eq!(spec.next_after(gap).unwrap(), ms("2026-03-30T00:30:00Z"), "02:30 CEST");
        // 2026-10-25: 02:00-03:00 happens twice (CEST, then CET); 02:30 fires once.
        let first = spec.next_after(ms("2026-10-25T00:00:00Z")).unwrap();
        assert_eq!(first, ms("2026-10-25T00:30:00Z"), "02:30 CEST, the first pass");
        assert_eq!(
            spec.next_after(first).unwrap(),
            ms("2026-10-26T01:30:00Z"),
            "not again at 02:30 CET"
        );
        // Several times in a changing hour: each wall-clock time fires once.
        let fires = |cron: &str, tz: &str, from: &str, n: usize| {
            let spec = request(Some(cron), None, Some(tz)).validate().unwrap();
            let mut at = ms(from);
            (0..n)
                .map(|_| {
                    at = spec.next_after(at).unwrap();
                    at
                })
                .collect::<Vec<u64>>()
        };
        // New York skips 02:00-03:00 on 2027-03-14: 02:00 and 02:30 fire
        // once, at the change (03:00 EDT), and the day after as usual.
        assert_eq!(
            fires("*/30 2 * * *", "America/New_York", "2027-03-13T07:30:00Z", 2),
            [ms("2027-03-14T07:00:00Z"), ms("2027-03-15T06:00:00Z")]
        );
        assert_eq!(
            fires("0,30 2 14 3 *", "America/New_York", "2027-01-01T00:00:00Z", 1),
            [ms("2027-03-14T07:00:00Z")],
            "this year's change, not next year's 02:00 EDT"
        );
        // Every minute: the skipped hour and 03:00 are one fire.
        assert_eq!(
            fires("* * * * *", "America/New_York", "2027-03-14T06:59:00Z", 2),
            [ms("2027-03-14T07:00:00Z"), ms("2027-03-14T07:01:00Z")]
        );
        // New York repeats 01:00-02:00 on 2027-11-07: 01:00 and 01:30 fire in
        // the first pass (EDT) only.
        assert_eq!(
            fires("0,30 1 * * *", "America/New_York", "2027-11-07T04:00:00Z", 3),
            [
                ms("2027-11-07T05:00:00Z"),
                ms("2027-11-07T05:30:00Z"),
                ms("2027-11-08T06:00:00Z")
            ]
        );
        assert_eq!(
            fires("0,30 2 * * *", "Europe/Paris", "2026-10-24T23:59:00Z", 3),
            [
                ms("2026-10-25T00:00:00Z"),
                ms("2026-10-25T00:30:00Z"),
                ms("2026-10-26T01:00:00Z")
            ]
        );
        // A pattern that fires every hour follows the clock through the
        // repeated hour: hourly fires at 01:00 EDT and 01:00 EST ...
        assert_eq!(
            fires("0 * * * *", "America/New_York", "2027-11-07T04:30:00Z", 3),
            [
                ms("2027-11-07T05:00:00Z"),
                ms("2027-11-07T06:00:00Z"),
                ms("2027-11-07T07:00:00Z")
            ]
        );
        // ... and every minute goes on from 01:59 EDT to 01:00 EST, through
        // the second pass, to 02:00 EST.
        assert_eq!(
            fires("* * * * *", "America/New_York", "2027-11-07T05:58:00Z", 3),
            [
                ms("2027-11-07T05:59:00Z"),
                ms("2027-11-07T06:00:00Z"),
                ms("2027-11-07T06:01:00Z")
            ]
        );
        assert_eq!(
            fires("*/30 * * * *", "America/New_York", "2027-11-07T06:10:00Z", 2),
            [ms("2027-11-07T06:30:00Z"), ms("2027-11-07T07:00:00Z")]
        );
        assert_eq!(
            fires("15 * * * *", "Europe/Paris", "2026-10-25T00:20:00Z", 3),
            [
                ms("2026-10-25T01:15:00Z"),
                ms("2026-10-25T02:15:00Z"),
                ms("2026-10-25T03:15:00Z")
            ]
        );
        // Started during the second pass, the repeated times are past.
        assert_eq!(
            fires("0,30 1 * * *", "America/New_York", "2027-11-07T06:10:00Z", 1),
            [ms("2027-11-08T06:00:00Z")]
        );
        // The same cron in UTC ignores Paris's changes.
        let utc = request(Some("30 2 * * *"), None, None).validate().unwrap();
        assert_eq!(
            utc.next_after(ms("2026-03-29T00:00:00Z")).unwrap(),
            ms("2026-03-29T02:30:00Z")
        );
    }

    /// The catch-up WARN says what became of each schedule's caught-up fire:
    /// all started is said as before; a skipped or refused one apart,
    /// naming its schedules, and the started ones counted.
    #[test]
    fn the_catch_up_account_says_what_each_caught_up_fire_became() {
        let mut report = FireReport::default();
        report.add_passed_over("a", 3, FireOutcome::Started);
        report.add_passed_over("quiet", 0, FireOutcome::Skipped);
        assert_eq!(
            report.passed_over_message(),
            "3 fire times of schedule(s) a passed over: they fell due while the server was down or earlier fires \
             were being made; one missed fire per schedule is caught up"
        );
        report.add_passed_over("b", 2, FireOutcome::Skipped);
        report.add_passed_over("c", 1, FireOutcome::Refused);
        let said = report.passed_over_message();
        assert!(
            said.starts_with("6 fire times of schedule(s) a, b, c passed over")
                && said.contains("; one missed fire is caught up for 1 of them")
                && said.contains("; the missed fire of b was skipped, not caught up (overlap `skip`")
                && said.contains("; the missed fire of c could not start (see the schedule's `last_refusal`)")
                && !said.contains("per schedule"),
            "{said}"
        );
        assert_eq!(
            (
                report.catch_up_skipped_by.as_slice(),
                report.catch_up_refused_by.as_slice()
            ),
            (&["b".to_string()][..], &["c".to_string()][..])
        );
    }
}
