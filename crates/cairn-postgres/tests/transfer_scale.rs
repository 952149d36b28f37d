//! How long a grant transfer of many ids takes on PostgreSQL. Ignored: run
//! it by hand to measure (it asserts what moved, never how fast):
//!
//! `CAIRN_TRANSFER_IDS=180000 cargo test -p cairn-postgres --test transfer_scale -- --ignored --nocapture`

use std::sync::Arc;
use std::time::Instant;

use cairn_core::{ProcessRegistry, SessionScope, StartGrant, SystemClock};
use cairn_postgres::testing::{self, TestSchema};
use cairn_testkit::{descriptor, rerunnable};

#[ignore = "a measurement: run by hand with --ignored"]
#[tokio::test]
async fn transfer_of_many_ids() {
    // Run by hand to measure: without a server there is nothing to report.
    assert!(testing::enabled(), "set {} to measure", testing::URL_VAR);
    let n: usize = std::env::var("CAIRN_TRANSFER_IDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let schema = TestSchema::new("cairn_xfer");
    let registry = schema.connect(Arc::new(SystemClock)).await.expect("connect");
    let (s1, s2) = (SessionScope::session("s1"), SessionScope::session("s2"));
    let grant = StartGrant {
        session_scope: s1.clone(),
        descriptor: descriptor("tool", "x"),
    };
    registry
        .register(rerunnable("p0000000"), Some(grant))
        .await
        .expect("register");
    // Copies of the one process and its grant under other ids: a transfer
    // reads only the grants and locks the process rows.
    let cols = "record, status, disposition, definition, originator, originator_scope, waiting, \
                created_at_ms, terminal_at_ms, last_sequence, change_cursor, run_candidate, abandon_candidate, \
                fencing_counter";
    let s = &schema.name;
    schema
        .execute(&format!(
            "INSERT INTO \"{s}\".processes (id, {cols}) \
             SELECT 'p' || lpad(n::text, 7, '0'), {cols} FROM \"{s}\".processes, generate_series(1, {n} - 1) n \
             WHERE id = 'p0000000'; \
             INSERT INTO \"{s}\".grants (scope_id, session_id, process_id, grant_json) \
             SELECT scope_id, session_id, 'p' || lpad(n::text, 7, '0'), \
             replace(grant_json, 'p0000000', 'p' || lpad(n::text, 7, '0')) \
             FROM \"{s}\".grants, generate_series(1, {n} - 1) n WHERE process_id = 'p0000000'; \
             ANALYZE \"{s}\".processes; ANALYZE \"{s}\".grants;"
        ))
        .await
        .expect("copy the grants");
    let ids: Vec<String> = (0..n).rev().map(|i| format!("p{i:07}")).collect();
    let started = Instant::now();
    let report = registry.transfer(&s1, &s2, &ids).await.expect("transfer");
    let secs = started.elapsed().as_secs_f64();
    eprintln!("transfer of {n} ids: {secs:.2} s");
    assert_eq!(report.moved, ids, "every id moved, in the order named");
    assert!(report.not_granted.is_empty());
    let held = registry.grants_of("p0000001").await.expect("grants_of");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].scope, s2);
}
