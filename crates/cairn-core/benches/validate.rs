//! The per-process validation work every start and append does: the
//! registration hash of a start and the payload checks of the two appends a
//! run writes (`process.started`, `process.completed`).
//!
//! `cargo bench -p cairn-core --bench validate`. Figures go to docs/BENCHMARKS.md.

use std::hint::black_box;
use std::time::Instant;

use cairn_core::events::{core_event_types, EventType, COMPLETED, STARTED};
use cairn_core::model::{Disposition, ProcessInput, Provenance, Registration};
use cairn_core::validate::{check_payload, registration_hash};
use serde_json::json;

fn core_type(name: &str) -> EventType {
    core_event_types()
        .into_iter()
        .find(|t| t.name == name)
        .expect("a core type")
}

/// Nanoseconds per call of `f`, over `n` calls.
fn per_call(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let registration = Registration {
        id: "echo-12345".into(),
        input: ProcessInput::ToolCall {
            tool: "echo".into(),
            args: json!({"value": 12345}),
        },
        disposition: Disposition::Rerunnable,
        event_types: Vec::new(),
        provenance: Provenance::default(),
        wake_target: None,
        env_ref: None,
        external_ref: None,
    };
    let (started, completed) = (core_type(STARTED), core_type(COMPLETED));
    let started_payload = json!({"owner_id": "worker-0", "fencing_token": 1, "attempt": 1});
    let completed_payload = json!({"await_output": {"type": "success", "value": 12345}});
    let n = 200_000;
    // The first round warms caches (the compiled schemas among them).
    for round in 0..3 {
        let hash = per_call(n, || {
            black_box(registration_hash(black_box(&registration)).expect("hash"));
        });
        let payloads = per_call(n, || {
            check_payload(&started, black_box(&started_payload)).expect("started");
            check_payload(&completed, black_box(&completed_payload)).expect("completed");
        });
        if round > 0 {
            println!(
                "registration hash: {hash:>6.0} ns   payload checks of one run (started + completed): {payloads:>6.0} ns"
            );
        }
    }
}
