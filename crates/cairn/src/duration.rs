//! Human durations for flags: `250ms`, `1.5s`, `5m`, `2h 30m`, `7d`, or bare milliseconds.

use std::time::Duration;

/// Parse a duration the way `humantime` does (`500ms`, `30s`, `5m`, `2h 30m`, `7d`),
/// plus decimal fractions of one unit (`1.5s`, `0.5h`) and bare numbers as
/// milliseconds (what `--lease-ttl 30000` always meant).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let d = parse_any(raw)?;
    // Past this a deadline computed from it overflows the clock (`await
    // --timeout 584000000000y` panicked), and no flag means it.
    if d > MAX_DURATION {
        return Err(format!("duration `{raw}` is too large (at most 100 years)"));
    }
    Ok(d)
}

/// The longest duration a flag takes: 100 years.
pub const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000); // humantime's 100y (365.25 d a year)

fn parse_any(raw: &str) -> Result<Duration, String> {
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return raw
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("duration `{raw}` is too large"));
    }
    let hint = "use e.g. 500ms, 1.5s, 30s, 5m, 2h, 7d";
    if let Some(d) = parse_fraction(raw) {
        return d.ok_or_else(|| format!("duration `{raw}` is too large"));
    }
    humantime::parse_duration(raw).map_err(|e| match e {
        // Said here: humantime's own text lists months and years, which
        // `--every` refuses.
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("`{raw}` is not a duration (unknown unit `{unit}`; {hint})")
        }
        e => format!("`{raw}` is not a duration ({e}; {hint})"),
    })
}

pub use cairn_core::schedule::calendar_unit;

/// [`parse_duration`] without bare numbers: for a flag where a number read
/// as milliseconds would surprise, or destroy (`prune --older-than 7` would
/// prune what ended 7 ms ago), the unit is required.
pub fn parse_duration_with_unit(raw: &str) -> Result<Duration, String> {
    let trimmed = raw.trim();
    // Zero is zero in any unit (`await --timeout 0`: ask once).
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) && trimmed.bytes().any(|b| b != b'0') {
        return Err(format!(
            "`{trimmed}` has no unit: write e.g. {trimmed}ms, {trimmed}s, {trimmed}m, {trimmed}h or {trimmed}d"
        ));
    }
    parse_duration(raw)
}

/// [`parse_duration_with_unit`] for a duration kept in whole milliseconds
/// (`run --timeout`, the shell tool's `timeout_ms`): one under 1 ms, or with
/// a part of a millisecond, is refused rather than rounded down (`500us`
/// would be 0, which the server refuses in its own field's words; `1500us`
/// would quietly be 1 ms).
pub fn parse_whole_millis(raw: &str) -> Result<Duration, String> {
    let d = parse_duration_with_unit(raw)?;
    let trimmed = raw.trim();
    if d < Duration::from_millis(1) {
        return Err(format!("`{trimmed}` is under 1 ms: give at least 1ms"));
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        let down = d.as_millis();
        return Err(format!(
            "`{trimmed}` is not a whole number of milliseconds: give e.g. {down}ms or {}ms",
            down + 1
        ));
    }
    // The shell tool's own bound, said in the flag's terms (the server
    // would name its `timeout_ms` field).
    let longest = cairn_core::validate::LONGEST_WAIT_MS;
    if d.as_millis() > u128::from(longest) {
        return Err(format!(
            "`{trimmed}` is over the longest timeout, a year (365d, {longest} ms)"
        ));
    }
    Ok(d)
}

/// `N.Mu` for one unit `u`: humantime takes integers only. `None` when `raw` is
/// not of that form; `Some(None)` when it overflows.
fn parse_fraction(raw: &str) -> Option<Option<Duration>> {
    let split = raw.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = raw.split_at(split);
    if !number.contains('.') || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let unit_secs = match unit.trim() {
        "ms" => 0.001,
        "s" | "sec" | "secs" => 1.0,
        "m" | "min" | "mins" => 60.0,
        "h" | "hr" | "hrs" => 3600.0,
        "d" | "day" | "days" => 86_400.0,
        _ => return None,
    };
    Some(Duration::try_from_secs_f64(value * unit_secs).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_fractions_and_bare_milliseconds() {
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.5h"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h 30m"), Ok(Duration::from_secs(9000)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
    }

    /// `run --timeout` is kept in whole milliseconds: what is not is
    /// refused, never rounded down to 0 or to the millisecond below.
    #[test]
    fn a_duration_in_whole_milliseconds_refuses_a_part_of_one() {
        for (raw, ms) in [
            ("1ms", 1),
            ("1.5s", 1500),
            ("1.1s", 1100),
            ("0.1s", 100),
            ("2.3s", 2300),
            ("0.001s", 1),
            ("1000us", 1),
            ("30s", 30_000),
        ] {
            assert_eq!(parse_whole_millis(raw), Ok(Duration::from_millis(ms)), "{raw}");
        }
        for (raw, said) in [
            ("500us", "`500us` is under 1 ms: give at least 1ms"),
            ("900us", "`900us` is under 1 ms"),
            ("0", "`0` is under 1 ms"),
            ("0s", "`0s` is under 1 ms"),
            (
                "1500us",
                "`1500us` is not a whole number of milliseconds: give e.g. 1ms or 2ms",
            ),
            (
                "1.0005s",
                "`1.0005s` is not a whole number of milliseconds: give e.g. 1000ms or 1001ms",
            ),
        ] {
            let e = parse_whole_millis(raw).expect_err(raw);
            assert!(e.starts_with(said), "{raw}: {e}");
        }
        assert!(parse_whole_millis("5").expect_err("5").contains("has no unit"));
        assert_eq!(parse_whole_millis("365d"), Ok(Duration::from_secs(365 * 86_400)));
        for raw in ["366d", "2y"] {
            let e = parse_whole_millis(raw).expect_err(raw);
            assert!(e.contains("over the longest timeout, a year"), "{raw}: {e}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in ["", "5x", "s", "1.5", ".5s", "1.s", "-1s", "1e400s"] {
            assert!(parse_duration(bad).is_err(), "{bad} was accepted");
        }
        assert!(parse_duration("99999999999999999999").is_err());
        for huge in ["584000000000y", "101y", "18446744073709551615"] {
            let e = parse_duration(huge).expect_err(huge);
            assert!(e.contains("too large"), "{e}");
            assert!(parse_duration_with_unit(huge).is_err(), "{huge}");
        }
        assert_eq!(parse_duration("100y").map(|d| d <= MAX_DURATION), Ok(true));
    }

    #[test]
    fn an_unknown_unit_is_named_without_humantime_s_list() {
        let e = parse_duration("1mo").expect_err("mo");
        assert!(e.contains("unknown unit `mo`") && e.contains("7d"), "{e}");
        assert!(!e.contains("month") && !e.contains("year"), "{e}");
    }

    #[test]
    fn month_and_year_units_are_found_in_any_spelling() {
        for (raw, unit) in [
            ("1mo", "mo"),
            ("1 Mo", "Mo"),
            ("2mos", "mos"),
            ("1mon", "mon"),
            ("1month", "month"),
            ("3 months", "months"),
            ("1M", "M"),
            ("1mth", "mth"),
            ("1y", "y"),
            ("1yr", "yr"),
            ("2 YEARS", "YEARS"),
            ("1d 1year", "year"),
        ] {
            assert_eq!(calendar_unit(raw), Some(unit), "{raw}");
        }
        for raw in ["1m", "5min", "2 minutes", "250ms", "1msec", "1h 30m", "7d", "2w", "1s"] {
            assert_eq!(calendar_unit(raw), None, "{raw}");
        }
    }

    #[test]
    fn a_unit_is_required_where_it_must_be() {
        let e = parse_duration_with_unit("7").expect_err("a bare number");
        assert!(e.contains("`7` has no unit") && e.contains("7d"), "{e}");
        assert_eq!(parse_duration_with_unit("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration_with_unit("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration_with_unit("0"), Ok(Duration::ZERO));
        assert!(parse_duration_with_unit("soon").is_err());
    }
}
