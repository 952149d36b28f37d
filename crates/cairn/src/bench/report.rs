//! What a bench run reports: figures with their limits, as a table or one JSON document.

use serde_json::{json, Value};

use super::limits::Limit;
use super::stats;

/// How a figure relates to its backend's limit.
#[derive(Clone, Debug)]
pub enum Bound {
    /// A rate held against the commit rate: fraction = figure / commits per second.
    Rate,
    /// A latency held against the time of this many durable commits on its
    /// path: fraction = figure / (commits × one commit's time).
    Commits(u32),
    /// No limit applies; the reason is printed.
    NotApplicable(&'static str),
    /// A target the specification sets (SPEC §13's scale figures, say): value,
    /// unit, and where it comes from. fraction = figure / target.
    Target(f64, &'static str, &'static str),
}

/// One figure: a value per measured run.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Stable machine key (`throughput.w1`, `await.same.p99`, ...).
    pub key: String,
    /// Human label.
    pub label: String,
    /// Unit of the value.
    pub unit: &'static str,
    /// Whether a larger value is better (rates) or worse (latencies, memory).
    pub higher_is_better: bool,
    /// One value per measured run (warm-ups excluded).
    pub runs: Vec<f64>,
    /// What limit it is held against.
    pub bound: Bound,
    /// Latency samples behind each run's value, when it is a percentile.
    pub samples_per_run: Option<usize>,
}

impl Figure {
    /// A rate (higher is better) held against the commit rate.
    pub fn rate(key: impl Into<String>, label: impl Into<String>, unit: &'static str) -> Self {
        Self {
            key: key.into(),
            label: label.into(),
            unit,
            higher_is_better: true,
            runs: Vec::new(),
            bound: Bound::Rate,
            samples_per_run: None,
        }
    }

    /// A latency in milliseconds held against `commits` durable commits.
    pub fn latency(key: impl Into<String>, label: impl Into<String>, commits: u32, samples: usize) -> Self {
        Self {
            key: key.into(),
            label: label.into(),
            unit: "ms",
            higher_is_better: false,
            runs: Vec::new(),
            bound: Bound::Commits(commits),
            samples_per_run: Some(samples),
        }
    }

    /// The median over runs.
    pub fn value(&self) -> f64 {
        stats::median(&self.runs)
    }

    /// The limit's value, unit and description for this figure.
    fn limit(&self, limit: Option<&Limit>) -> Result<(f64, &'static str, String), String> {
        match (&self.bound, limit) {
            (Bound::NotApplicable(why), _) => Err(format!("n/a: {why}")),
            (Bound::Target(v, unit, what), _) => Ok((*v, unit, (*what).to_string())),
            (_, None) => Err("n/a: the memory backend makes nothing durable".into()),
            (Bound::Rate, Some(l)) => Ok((l.rate_per_s, "commits/s", l.what.clone())),
            (Bound::Commits(k), Some(l)) => Ok((
                f64::from(*k) * l.commit_ms(),
                "ms",
                format!(
                    "{k} durable commit{} at the measured rate ({})",
                    if *k == 1 { "" } else { "s" },
                    l.what
                ),
            )),
        }
    }

    fn fraction(&self, limit: Option<&Limit>) -> Option<f64> {
        self.limit(limit).ok().map(|(v, _, _)| self.value() / v)
    }

    /// The JSON form.
    pub fn to_json(&self, limit: Option<&Limit>) -> Value {
        let (min, max) = stats::min_max(&self.runs);
        let value = self.value();
        let mut out = json!({
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "value": finite(value),
            "median": finite(value),
            "min": finite(min),
            "max": finite(max),
            "runs": self.runs.iter().map(|v| finite(*v)).collect::<Vec<_>>(),
            "higher_is_better": self.higher_is_better,
        });
        if let Some(n) = self.samples_per_run {
            out["samples_per_run"] = json!(n);
        }
        match self.limit(limit) {
            Ok((v, unit, what)) => {
                out["limit"] = json!({"value": finite(v), "unit": unit, "what": what});
                out["fraction"] = finite(value / v);
            }
            Err(note) => {
                out["limit"] = Value::Null;
                out["limit_note"] = json!(note);
                out["fraction"] = Value::Null;
            }
        }
        out
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// How a scenario ended on one backend.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Ran; its figures are measured.
    Ok,
    /// Did not apply (the reason says why).
    Skipped(String),
    /// Went wrong (the error says what).
    Failed(String),
}

/// One scenario on one backend.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub name: &'static str,
    pub outcome: Outcome,
    /// The parameters it ran with.
    pub params: Value,
    /// What to know to read the figures.
    pub notes: Vec<String>,
    pub figures: Vec<Figure>,
    pub seconds: f64,
}

impl ScenarioReport {
    /// An empty report for `name` with `params`.
    pub fn new(name: &'static str, params: Value) -> Self {
        Self {
            name,
            outcome: Outcome::Ok,
            params,
            notes: Vec::new(),
            figures: Vec::new(),
            seconds: 0.0,
        }
    }

    fn to_json(&self, limit: Option<&Limit>) -> Value {
        let (status, error) = match &self.outcome {
            Outcome::Ok => ("ok", None),
            Outcome::Skipped(why) => ("skipped", Some(why.clone())),
            Outcome::Failed(e) => ("failed", Some(e.clone())),
        };
        json!({
            "scenario": self.name,
            "status": status,
            "reason": error,
            "params": self.params,
            "notes": self.notes,
            "seconds": self.seconds,
            "figures": self.figures.iter().map(|f| f.to_json(limit)).collect::<Vec<_>>(),
        })
    }
}

/// One backend: its limit and its scenarios.
#[derive(Clone, Debug)]
pub struct BackendReport {
    /// The URL with any password redacted.
    pub url: String,
    pub kind: &'static str,
    pub outcome: Outcome,
    pub limit: Option<Limit>,
    pub scenarios: Vec<ScenarioReport>,
    pub seconds: f64,
}

impl BackendReport {
    fn to_json(&self) -> Value {
        let (status, error) = match &self.outcome {
            Outcome::Ok => ("ok", None),
            Outcome::Skipped(why) => ("skipped", Some(why.clone())),
            Outcome::Failed(e) => ("failed", Some(e.clone())),
        };
        json!({
            "url": self.url,
            "kind": self.kind,
            "status": status,
            "reason": error,
            "limit": self.limit,
            "seconds": self.seconds,
            "scenarios": self.scenarios.iter().map(|s| s.to_json(self.limit.as_ref())).collect::<Vec<_>>(),
        })
    }
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The settings every figure was measured with (seed, runs, N, W, ...).
    pub config: Value,
    pub notes: Vec<String>,
    pub backends: Vec<BackendReport>,
    pub seconds: f64,
}

impl Report {
    /// The machine form: one JSON document.
    pub fn to_json(&self) -> Value {
        json!({
            "cairn_bench": 1,
            "cairn_version": env!("CARGO_PKG_VERSION"),
            "config": self.config,
            "notes": self.notes,
            "seconds": self.seconds,
            "backends": self.backends.iter().map(BackendReport::to_json).collect::<Vec<_>>(),
        })
    }

    /// The human form: a header, then one table per backend.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        out.push_str(&format!(
            "cairn bench: seed {}, {} measured run(s) per figure after {} warm-up run(s); median and min..max over runs\n",
            c["seed"], c["runs"], c["warmup"]
        ));
        for note in &self.notes {
            out.push_str(&format!("  {note}\n"));
        }
        for b in &self.backends {
            out.push('\n');
            out.push_str(&format!("backend {} ({})\n", b.url, b.kind));
            match &b.limit {
                Some(l) => {
                    let (lo, hi) = stats::min_max(&l.probes);
                    out.push_str(&format!(
                        "  limit: {} = {} commits/s (probes {}..{}), one commit = {} ms\n",
                        l.what,
                        fmt_num(l.rate_per_s),
                        fmt_num(lo),
                        fmt_num(hi),
                        fmt_num(l.commit_ms())
                    ));
                    if let Some(note) = &l.note {
                        out.push_str(&format!("  note: {note}\n"));
                    }
                }
                None => out.push_str("  limit: n/a\n"),
            }
            match &b.outcome {
                Outcome::Ok => {}
                Outcome::Skipped(why) => {
                    out.push_str(&format!("  skipped: {why}\n"));
                    continue;
                }
                Outcome::Failed(e) => {
                    out.push_str(&format!("  FAILED: {e}\n"));
                    continue;
                }
            }
            let mut rows: Vec<[String; 7]> = vec![[
                "scenario".into(),
                "figure".into(),
                "median".into(),
                "min..max".into(),
                "unit".into(),
                "limit".into(),
                "fraction".into(),
            ]];
            let mut trailing = Vec::new();
            for s in &b.scenarios {
                match &s.outcome {
                    Outcome::Ok => {}
                    Outcome::Skipped(why) => trailing.push(format!("  {}: skipped: {why}", s.name)),
                    Outcome::Failed(e) => trailing.push(format!("  {}: FAILED: {e}", s.name)),
                }
                for f in &s.figures {
                    let (lo, hi) = stats::min_max(&f.runs);
                    let (limit, fraction) = match f.limit(b.limit.as_ref()) {
                        Ok((v, unit, _)) => (
                            format!("{} {unit}", fmt_num(v)),
                            f.fraction(b.limit.as_ref()).map(fmt_num).unwrap_or_default(),
                        ),
                        Err(note) => (note.split(':').next().unwrap_or("n/a").to_string(), "n/a".into()),
                    };
                    rows.push([
                        s.name.to_string(),
                        f.label.clone(),
                        fmt_num(f.value()),
                        format!("{}..{}", fmt_num(lo), fmt_num(hi)),
                        f.unit.to_string(),
                        limit,
                        fraction,
                    ]);
                }
                for note in &s.notes {
                    trailing.push(format!("  {}: {note}", s.name));
                }
            }
            let mut widths = [0usize; 7];
            for row in &rows {
                for (w, cell) in widths.iter_mut().zip(row) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            for row in &rows {
                let mut line = String::from(" ");
                for (i, (w, cell)) in widths.iter().zip(row).enumerate() {
                    let pad = w - cell.chars().count();
                    line.push(' ');
                    // Numbers right-aligned, words left-aligned.
                    if matches!(i, 2 | 3 | 6) {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    } else {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    }
                }
                out.push_str(line.trim_end());
                out.push('\n');
            }
            for t in trailing {
                out.push_str(&t);
                out.push('\n');
            }
            out.push_str(&format!("  ({:.0} s on this backend)\n", b.seconds));
        }
        out.push_str(&format!("\ntotal: {:.0} s\n", self.seconds));
        out
    }
}

/// A number for people: thousands separators for large values, three
/// significant digits or so for small ones.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    if a >= 1000.0 {
        let s = format!("{:.0}", a);
        let mut grouped = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        format!("{}{grouped}", if v < 0.0 { "-" } else { "" })
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(7877.4), "7,877");
        assert_eq!(fmt_num(1_234_567.0), "1,234,567");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.1234), "0.123");
        assert_eq!(fmt_num(f64::NAN), "n/a");
    }

    #[test]
    fn fractions_follow_the_bound() {
        let limit = Limit {
            what: "disk".into(),
            rate_per_s: 1000.0,
            probes: vec![1000.0],
            note: None,
        };
        let mut rate = Figure::rate("t", "t", "processes/s");
        rate.runs = vec![400.0, 500.0, 600.0];
        assert_eq!(rate.to_json(Some(&limit))["fraction"], json!(0.5));
        let mut lat = Figure::latency("l", "l", 2, 10);
        lat.runs = vec![4.0];
        // Two commits at 1 ms each: 4 ms is twice the limit.
        assert_eq!(lat.to_json(Some(&limit))["fraction"], json!(2.0));
        assert_eq!(lat.to_json(None)["fraction"], Value::Null);
        assert!(lat.to_json(None)["limit_note"]
            .as_str()
            .is_some_and(|n| n.starts_with("n/a")));
    }
}
