//! Times as people read them: relative ("3 min ago") beside absolute (UTC).

use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{html, Markup};

/// Now, in epoch milliseconds.
pub(crate) fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

/// `2026-11-30 17:13:53 UTC`.
pub(crate) fn absolute(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// `12 s ago`, `3 min ago`, `in 2 h`, `5 d ago`.
pub(crate) fn relative(ms: u64, now: u64) -> String {
    let (delta, future) = if ms > now { (ms - now, true) } else { (now - ms, false) };
    let s = delta / 1000;
    let amount = match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A `<time>` showing the relative time with the absolute one beside it;
/// `app.js` keeps the relative text current without asking the server.
pub(crate) fn when(ms: u64) -> Markup {
    let abs = absolute(ms);
    html! {
        span.when {
            time datetime=(abs.replace(" UTC", "Z").replacen(' ', "T", 1)) data-ms=(ms) title=(abs) { (relative(ms, now_ms())) }
            " " small.abs { (abs) }
        }
    }
}

/// A filter bound typed by a person: epoch milliseconds, or a UTC date and time
/// as `YYYY-MM-DDTHH:MM[:SS]` (what `<input type=datetime-local>` sends) or
/// `YYYY-MM-DD`.
pub(crate) fn parse_bound(raw: &str) -> Result<u64, String> {
    let raw = raw.trim();
    if let Ok(ms) = raw.parse::<u64>() {
        return Ok(ms);
    }
    let parsed = NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(&format!("{raw}T00:00"), "%Y-%m-%dT%H:%M"))
        .map_err(|_| format!("`{raw}` is not a time: use YYYY-MM-DDTHH:MM (UTC) or epoch milliseconds"))?;
    u64::try_from(parsed.and_utc().timestamp_millis()).map_err(|_| format!("`{raw}` is before 1970"))
}

/// The value a `datetime-local` input shows for `ms`: to the minute, or as
/// finely as `ms` needs (seconds, milliseconds), so a form sent again keeps
/// the bound it was given.
pub(crate) fn input_value(ms: u64) -> String {
    let format = if ms.is_multiple_of(60_000) {
        "%Y-%m-%dT%H:%M"
    } else if ms.is_multiple_of(1_000) {
        "%Y-%m-%dT%H:%M:%S"
    } else {
        "%Y-%m-%dT%H:%M:%S%.3f"
    };
    i64::try_from(ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .map(|t| t.format(format).to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_value_reads_back_as_the_same_bound() {
        for ms in [1_700_000_040_000, 1_700_000_045_000, 1_700_000_045_123] {
            assert_eq!(parse_bound(&input_value(ms)), Ok(ms), "{}", input_value(ms));
        }
        assert_eq!(input_value(1_700_000_040_000), "2023-11-14T22:14");
    }

    #[test]
    fn relative_and_absolute() {
        assert_eq!(relative(1_000, 13_000), "12 s ago");
        assert_eq!(relative(0, 180_000), "3 min ago");
        assert_eq!(relative(7_200_000, 0), "in 2 h");
        assert_eq!(absolute(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn bounds_parse_or_explain() {
        assert_eq!(parse_bound("1000"), Ok(1000));
        assert_eq!(parse_bound("1970-01-01T00:01"), Ok(60_000));
        assert_eq!(parse_bound("1970-01-02"), Ok(86_400_000));
        assert!(parse_bound("yesterday").unwrap_err().contains("not a time"));
        assert_eq!(input_value(60_000), "1970-01-01T00:01");
    }
}
