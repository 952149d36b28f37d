//! PostgreSQL-specific behaviour: the schema and its migrations, clear errors,
//! claims across nodes, the notification feed, the gap-safe change feed,
//! recovery from broken connections and answers to writes whose reply was lost
//! after they committed. Needs `CAIRN_TEST_POSTGRES_URL`.
//!
//! Why one file past 800 lines: these tests share the throwaway schemas and
//! the reply-losing proxy defined here; what every backend shares lives in
//! cairn-testkit instead.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{ChangeHub, ManualClock, ProcessFilter, ProcessRegistry, SystemClock};
use cairn_postgres::testing::{self, TestSchema};
use cairn_postgres::{PostgresOptions, PostgresRegistry, SCHEMA_VERSION};
use cairn_testkit::{external, note, rerunnable};
use serde_json::{json, Value};

fn clock() -> Arc<SystemClock> {
    Arc::new(SystemClock)
}

async fn client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

async fn meta(url: &str, schema: &str, key: &str) -> Option<String> {
    client(url)
        .await
        .query_opt(
            &format!("SELECT value FROM \"{schema}\".cairn_meta WHERE key = $1"),
            &[&key],
        )
        .await
        .expect("meta")
        .map(|r| r.get(0))
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn fresh_schema_is_versioned_and_reopening_keeps_data() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let first = schema.connect(clock()).await.expect("create");
    first.register(rerunnable("kept"), None).await.expect("register");
    drop(first);
    assert_eq!(
        meta(&schema.url, &schema.name, "schema_version").await,
        Some(SCHEMA_VERSION.to_string())
    );
    assert_eq!(
        meta(&schema.url, &schema.name, "application").await.as_deref(),
        Some("cairn")
    );
    let again = schema.connect(clock()).await.expect("reopen");
    assert_eq!(again.get("kept").await.expect("get").id, "kept");
}

/// Connections this schema's registries hold open, by role (`write`, `read`).
async fn connections(url: &str, schema: &str, role: &str) -> i64 {
    client(url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("cairn-{role}-{schema}")],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn url_parameters_size_a_nodes_connections() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let url = format!("{}&write_lanes=3&read_connections=1", schema.db_url());
    let node = PostgresRegistry::connect(&url, clock()).await.expect("connect");
    node.register(rerunnable("sized"), None).await.expect("register");
    assert_eq!(node.get("sized").await.expect("get").id, "sized");
    assert_eq!(connections(&schema.url, &schema.name, "write").await, 3);
    assert_eq!(connections(&schema.url, &schema.name, "read").await, 1);
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn nodes_starting_together_migrate_once() {
    if !testing::enabled() {
        return;
    }
    let schema = Arc::new(TestSchema::new("cairn_t"));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let schema = schema.clone();
        tasks.push(tokio::spawn(async move { schema.connect(clock()).await.map(|_| ()) }));
    }
    for t in tasks {
        t.await.expect("join").expect("every node connects");
    }
    assert_eq!(
        meta(&schema.url, &schema.name, "schema_version").await,
        Some(SCHEMA_VERSION.to_string())
    );
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn a_foreign_schema_is_refused_untouched() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    schema
        .execute(&format!(
            "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".orders (id int); INSERT INTO \"{0}\".orders VALUES (7)",
            schema.name
        ))
        .await
        .expect("setup");
    let err = schema.connect(clock()).await.expect_err("foreign schema");
    assert_eq!(err.code(), "storage");
    assert!(err.to_string().contains("not a cairn schema"), "{err}");
    let c = client(&schema.url).await;
    let tables: i64 = c
        .query_one("SELECT count(*) FROM pg_tables WHERE schemaname = $1", &[&schema.name])
        .await
        .expect("count")
        .get(0);
    assert_eq!(tables, 1, "nothing was created");
    let kept: i32 = c
        .query_one(&format!("SELECT id FROM \"{}\".orders", schema.name), &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(kept, 7);
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    drop(schema.connect(clock()).await.expect("create"));
    schema
        .execute(&format!(
            "UPDATE \"{}\".cairn_meta SET value = '999' WHERE key = 'schema_version'",
            schema.name
        ))
        .await
        .expect("bump");
    let err = schema.connect(clock()).await.expect_err("newer schema");
    assert!(err.to_string().contains("newer cairn"), "{err}");
    assert_eq!(
        meta(&schema.url, &schema.name, "schema_version").await.as_deref(),
        Some("999")
    );
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn bad_urls_and_schema_names_are_clear_errors() {
    if !testing::enabled() {
        return;
    }
    let url = testing::test_url().expect("url");
    let err = PostgresRegistry::connect_with(PostgresOptions::new(&url, clock()).with_schema("Bad-Name"))
        .await
        .expect_err("bad schema");
    assert_eq!(err.code(), "invalid_request");
    let err = PostgresRegistry::connect("postgres://u:hunter2@127.0.0.1:5432/test?nonsense_option=1", clock())
        .await
        .expect_err("bad url");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = PostgresRegistry::connect("postgres://postgres@127.0.0.1:1/test", clock())
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(err.code(), "unavailable", "{err}");
    // Why it could not connect is said, not only that it could not.
    assert!(err.to_string().contains("refused"), "{err}");
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_from_two_nodes_never_overlap() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let a = Arc::new(schema.connect(clock()).await.expect("node a"));
    let b = Arc::new(schema.connect(clock()).await.expect("node b"));
    let n = 400;
    let mut regs = Vec::new();
    for i in 0..n {
        let a = a.clone();
        regs.push(tokio::spawn(async move {
            a.register(rerunnable(&format!("p{i:04}")), None).await
        }));
    }
    for r in regs {
        r.await.expect("join").expect("register");
    }
    let mut claimers = Vec::new();
    for (k, node) in [a.clone(), b.clone(), a.clone(), b.clone()].into_iter().enumerate() {
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claims = node.claim_batch(&format!("owner-{k}"), 60_000, 7).await.expect("claim");
                if claims.is_empty() {
                    return mine;
                }
                mine.extend(claims.into_iter().map(|c| c.lease.process_id));
            }
        }));
    }
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.expect("join"));
    }
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(all.len(), n, "every process claimed exactly once");
    assert_eq!(distinct.len(), n);
    for id in ["p0000", "p0199", "p0399"] {
        let events = a.events_after(id, 0, None).await.expect("events").events;
        assert_eq!(
            events.iter().filter(|e| e.event_type == "process.started").count(),
            1,
            "{id}"
        );
    }
}

/// Wait (bounded) for the hub to announce `id` at `seq` or later.
async fn announced(rx: &mut tokio::sync::watch::Receiver<u64>, seq: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| *s >= seq))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// An end this node wrote is not answered from its hub's recent ends once
/// another node pruned the process: the prune's notification has every
/// node's hub forget them, so an await reads and finds the process gone.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prune_on_another_node_is_not_answered_from_recent_ends() {
    if !testing::enabled() {
        return;
    }
    use cairn_core::{Awaiter, Clock, Outcome, ProcessStatus, StatusFilter, WatchedRegistry, Watermark};
    let schema = TestSchema::new("cairn_t");
    let clock = Arc::new(ManualClock::new(1_000));
    let here = schema.connect(clock.clone()).await.expect("this node");
    let there = schema.connect(clock.clone()).await.expect("the other node");
    let hub = ChangeHub::new();
    let mut generation = here.listener_generation();
    here.listen(hub.clone());
    generation.wait_for(|g| *g >= 1).await.expect("first listen");
    let ours: Arc<dyn ProcessRegistry> = Arc::new(WatchedRegistry::new(Arc::new(here), hub.clone(), None));
    let awaiter = Awaiter::new(ours.clone(), Some(hub.clone()));

    ours.register(external("gone"), None).await.expect("register");
    ours.complete_external("gone", Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let ended = awaiter.await_terminal("gone").await.expect("ended here");
    assert_eq!(ended.status, ProcessStatus::Completed);

    clock.advance(10);
    let report = there
        .prune(clock.now_ms(), StatusFilter::Any.into(), Watermark::NoProjector)
        .await
        .expect("their prune");
    assert_eq!(report.pruned, 1, "{report:?}");
    // Notifications arrive in commit order: once a later write of theirs is
    // announced here, so was the prune.
    let mut later = hub.subscribe("later");
    there
        .register(external("later"), None)
        .await
        .expect("their later write");
    there
        .append_event("later", note(json!({})))
        .await
        .expect("their append");
    assert!(announced(&mut later, 1).await, "their later write reached this hub");
    let gone = awaiter.await_terminal("gone").await.expect_err("pruned elsewhere");
    assert_eq!(gone.code(), "no_longer_retained", "{gone}");
}

/// Two nodes on `schema`: one listening into the hub (its first LISTEN made),
/// one to write; and the listener's generation.
async fn listening_pair(
    schema: &TestSchema,
) -> (
    PostgresRegistry,
    PostgresRegistry,
    ChangeHub,
    tokio::sync::watch::Receiver<u64>,
) {
    let listener = schema.connect(clock()).await.expect("listening node");
    let writer = schema.connect(clock()).await.expect("writing node");
    let hub = ChangeHub::new();
    let mut generation = listener.listener_generation();
    listener.listen(hub.clone());
    generation.wait_for(|g| *g >= 1).await.expect("first listen");
    (listener, writer, hub, generation)
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_reach_other_nodes_and_the_listener_reconnects() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let (_listener, writer, hub, mut generation) = listening_pair(&schema).await;
    writer.register(external("x"), None).await.expect("register");
    let mut rx = hub.subscribe("x");
    writer.append_event("x", note(json!({}))).await.expect("append");
    assert!(
        announced(&mut rx, 1).await,
        "an append on another node reaches this hub"
    );

    // Kill the listening connection from the server side.
    let killed: i64 = client(&schema.url)
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("cairn-listen-{}", schema.name)],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 1);
    tokio::time::timeout(Duration::from_secs(20), generation.wait_for(|g| *g >= 2))
        .await
        .expect("the listener reconnects")
        .expect("generation");
    writer.append_event("x", note(json!({}))).await.expect("append");
    assert!(
        announced(&mut rx, 2).await,
        "notifications flow again after the reconnect"
    );
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn change_feed_holds_back_rows_an_older_open_transaction_could_precede() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let reg = schema.connect(clock()).await.expect("connect");
    reg.register(external("before"), None).await.expect("register");
    let page = reg.changed_since(0, None).await.expect("feed");
    assert_eq!(page.changes.len(), 1);
    let cursor = page.next_cursor;

    // An open transaction holding a transaction id: any commit after it may
    // carry a higher cursor than rows that transaction could still write.
    let mut holder = client(&schema.url).await;
    let tx = holder.transaction().await.expect("begin");
    tx.query_one("SELECT pg_current_xact_id()::text", &[])
        .await
        .expect("xid");
    reg.register(external("after"), None).await.expect("register");
    let held = reg.changed_since(cursor, None).await.expect("feed");
    assert!(held.changes.is_empty(), "rows above the horizon wait: {held:?}");
    assert_eq!(held.next_cursor, cursor);
    tx.commit().await.expect("commit");
    let page = reg.changed_since(cursor, None).await.expect("feed");
    let ids: Vec<_> = page.changes.iter().map(|c| c.process.id.as_str()).collect();
    assert_eq!(ids, vec!["after"]);
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_connections_are_replaced_and_writes_go_through() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let reg = schema
        .connect(Arc::new(ManualClock::new(1_000)))
        .await
        .expect("connect");
    reg.register(external("e"), None).await.expect("register");
    let killed: i64 = client(&schema.url)
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("cairn-%-{}", schema.name)],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(killed >= 2, "write and read connections were killed ({killed})");
    for i in 0..8 {
        reg.append_event("e", note(json!({ "i": i })))
            .await
            .expect("append after reconnect");
    }
    let record = reg.get("e").await.expect("read after reconnect");
    assert_eq!(record.last_sequence, 8);
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_lists_are_stored_once_apart_from_the_rows_and_read_back() {
    if !testing::enabled() {
        return;
    }
    let (reg, schema) = testing::fresh(clock()).await;
    let declared = reg
        .register(rerunnable("declared"), None)
        .await
        .expect("register")
        .process;
    let mut bare = rerunnable("bare");
    bare.event_types.clear();
    let bare = reg.register(bare, None).await.expect("register").process;
    for i in 0..5 {
        reg.register(rerunnable(&format!("same-{i}")), None)
            .await
            .expect("register");
    }
    assert!(declared.event_types.len() > bare.event_types.len());
    let c = client(&schema.url).await;
    let q = |sql: &str| sql.replace("{s}", &schema.name);
    // Two distinct lists, each stored once; rows carry a key, not the schemas.
    let lists: i64 = c
        .query_one(&q("SELECT count(*) FROM \"{s}\".type_lists"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(lists, 2);
    for row in c
        .query(&q("SELECT record, types_key FROM \"{s}\".processes"), &[])
        .await
        .expect("rows")
    {
        let record: String = row.get(0);
        let key: Option<String> = row.get(1);
        assert!(!record.contains("payload_schema"), "{record}");
        assert!(key.is_some_and(|k| k.starts_with("types:sha256:")));
    }

    // Read through a cold cache: the lists come back from the server.
    testing::forget_type_lists();
    assert_eq!(reg.get("declared").await.expect("get"), declared);
    assert_eq!(reg.get("bare").await.expect("get"), bare);
    let listed = reg.list(&cairn_core::ProcessFilter::default()).await.expect("list");
    assert_eq!(listed.len(), 7);
    assert!(listed
        .iter()
        .filter(|r| r.id.starts_with("same-"))
        .all(|r| r.event_types == declared.event_types));

    // A row written before type lists (list inline, no key) still reads.
    let mut inline = declared.clone();
    inline.lease = None;
    c.execute(
        &q("UPDATE \"{s}\".processes SET record = $1, types_key = NULL WHERE id = 'declared'"),
        &[&serde_json::to_string(&inline).expect("json")],
    )
    .await
    .expect("legacy row");
    assert_eq!(reg.get("declared").await.expect("legacy get"), declared);
    // And a write over it moves its list out of the row.
    reg.append_event("declared", note(json!({"n": 1})))
        .await
        .expect("append");
    let key: Option<String> = c
        .query_one(&q("SELECT types_key FROM \"{s}\".processes WHERE id = 'declared'"), &[])
        .await
        .expect("key")
        .get(0);
    assert_eq!(key.as_deref(), Some(declared.event_types.key()));

    // A missing or tampered list is a clear storage error, not a silent default.
    c.execute(
        &q("UPDATE \"{s}\".processes SET types_key = 'types:sha256:00' WHERE id = 'bare'"),
        &[],
    )
    .await
    .expect("dangle");
    testing::forget_type_lists();
    let err = reg.get("bare").await.expect_err("dangling key");
    assert_eq!(err.code(), "storage");
    assert!(err.to_string().contains("not stored"), "{err}");
    c.execute(
        &q("UPDATE \"{s}\".type_lists SET types = '[]' WHERE key = $1"),
        &[&declared.event_types.key()],
    )
    .await
    .expect("tamper");
    testing::forget_type_lists();
    let err = reg.get("same-0").await.expect_err("tampered list");
    assert_eq!(err.code(), "storage");
    assert!(err.to_string().contains("content address"), "{err}");
}

/// Many finished rows copied from `run-00`, as a long-lived database has,
/// with fresh planner statistics.
async fn fill_completed_like_run_00(schema: &TestSchema) {
    schema
        .execute(&format!(
            "INSERT INTO \"{s}\".processes (id, record, status, disposition, definition, originator, waiting, \
             created_at_ms, terminal_at_ms, last_sequence, change_cursor, run_candidate, abandon_candidate, \
             fencing_counter, types_key) \
             SELECT 'done-' || g, record, 'completed', disposition, definition, originator, false, created_at_ms, \
             created_at_ms, 2, 0, false, false, 1, types_key FROM \"{s}\".processes, generate_series(1, 20000) g \
             WHERE id = 'run-00'; ANALYZE \"{s}\".processes",
            s = schema.name
        ))
        .await
        .expect("fill");
}

#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn claims_and_worklists_read_their_partial_indexes() {
    if !testing::enabled() {
        return;
    }
    let (reg, schema) = testing::fresh(clock()).await;
    for i in 0..20 {
        reg.register(rerunnable(&format!("run-{i:02}")), None)
            .await
            .expect("register");
    }
    reg.register(external("ext"), None).await.expect("register");
    reg.request_abandon("ext", "op", "x").await.expect("abandon");
    // Many finished rows around them, as a long-lived database has.
    fill_completed_like_run_00(&schema).await;
    let c = client(&schema.url).await;
    c.batch_execute(&format!("SET search_path TO \"{}\"", schema.name))
        .await
        .expect("search path");
    for (name, sql, index) in testing::indexed_queries() {
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN {sql}"), &[&i64::MAX, &256i64])
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{name} should use {index}:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{name} scans the table:\n{plan}");
    }
    // A new incarnation's look for its earlier ones' leases reads leased rows
    // alone, never every running one.
    let plan: Vec<String> = c
        .query(
            &format!("EXPLAIN {}", testing::EARLIER_LEASES_SQL),
            &[&"node", &2i64, &256i64],
        )
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("processes_claimable"), "earlier leases:\n{plan}");
}

/// A frame's pending wakes are read through their own index: the frame is
/// compared as the index holds it, so the read never parses the session's
/// other pending wakes. Sequential scans are turned off, so the plan shows
/// whether the index can serve the query at all (a tiny table would be
/// scanned whichever it could).
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frames_pending_wakes_are_read_through_their_own_index() {
    if !testing::enabled() {
        return;
    }
    let (_reg, schema) = testing::fresh(clock()).await;
    let c = client(&schema.url).await;
    c.batch_execute(&format!(
        "SET search_path TO \"{}\"; SET enable_seqscan = off",
        schema.name
    ))
    .await
    .expect("search path");
    let plan: Vec<String> = c
        .query(
            &format!("EXPLAIN {}", testing::FRAME_WAKES_SQL),
            &[&"s1", &100i64, &(4i64 << 20), &"f1"],
        )
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("wakes_frame_pending"), "a frame's wakes:\n{plan}");
}

/// The listing indexes are partial (ADR 0026): a listing of running, failed
/// or a session's processes still walks its index in id order among many
/// completed rows, which are in neither.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn listings_read_their_partial_indexes() {
    if !testing::enabled() {
        return;
    }
    let (reg, schema) = testing::fresh(clock()).await;
    reg.register(rerunnable("run-00"), None).await.expect("register");
    fill_completed_like_run_00(&schema).await;
    let cases = [
        (json!({"status": "running"}), "processes_status_id"),
        (json!({"status": "failed", "after_id": "a"}), "processes_status_id"),
        (
            json!({"status": "any", "originator": "session:s1"}),
            "processes_originator_id",
        ),
    ];
    assert_listing_plans(&schema, &cases).await;
    let filter = ProcessFilter::from_json(json!({"status": "completed"})).expect("filter");
    assert_eq!(reg.list(&filter).await.expect("list").len(), 100);
}

/// Lane and read connections price sequential scans out: on a tiny table (where
/// a generic plan would otherwise be a scan that a grown table then pays for on
/// every batch) their plans still use the partial indexes. An admin connection,
/// which keeps the planner's default, shows the scan the setting prevents.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn lane_and_read_connections_plan_index_lookups_even_on_a_tiny_table() {
    if !testing::enabled() {
        return;
    }
    let (reg, schema) = testing::fresh(clock()).await;
    reg.register(rerunnable("run-00"), None).await.expect("register");
    schema
        .execute(&format!("ANALYZE \"{}\".processes", schema.name))
        .await
        .expect("analyze");
    let (name, sql, index) = testing::indexed_queries()[0];
    let admin = testing::plan_on(&schema.url, &schema.name, "admin", sql)
        .await
        .expect("plan");
    assert!(
        admin.contains("Seq Scan"),
        "control: with the planner's default, {name} on a one-row table scans it:\n{admin}"
    );
    for role in ["write", "read"] {
        let plan = testing::plan_on(&schema.url, &schema.name, role, sql)
            .await
            .expect("plan");
        assert!(plan.contains(index), "{role}: {name} should use {index}:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{role}: {name} scans the table:\n{plan}");
    }
}

/// Lane and read connections take the generic plan of every statement: a lone
/// write (one id in its arrays) does not plan its statements again at each
/// execution. An admin connection, which keeps the planner's default, shows
/// the custom plans the setting saves (and that the count is read right).
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn lane_and_read_connections_do_not_plan_a_lone_write_again_at_each_execution() {
    if !testing::enabled() {
        return;
    }
    let (reg, schema) = testing::fresh(clock()).await;
    reg.register(rerunnable("run-00"), None).await.expect("register");
    fill_completed_like_run_00(&schema).await;
    let sql = testing::LOAD_ROWS;
    let (_, custom) = testing::plans_made(&schema.url, &schema.name, "admin", sql, "run-00", 12)
        .await
        .expect("plans");
    // PostgreSQL plans the first five executions anew whatever follows; on a
    // larger table (the bench's) it keeps doing so for a one-id load.
    assert!(
        custom >= 5,
        "control: with the planner's default, a one-id load is planned anew at its first executions ({custom} of 12)"
    );
    for role in ["write", "read"] {
        let (generic, custom) = testing::plans_made(&schema.url, &schema.name, role, sql, "run-00", 12)
            .await
            .expect("plans");
        assert_eq!((generic, custom), (12, 0), "{role}: plans made (generic, custom)");
    }
}

/// Registrations queued together commit as one batch; each must be answered as
/// it would be alone, whether its id is new, exists with the same or another
/// registration, was pruned, names an env that does or does not exist, or
/// repeats an id earlier in the batch.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn a_registration_batch_answers_each_registration_as_if_alone() {
    if !testing::enabled() {
        return;
    }
    use cairn_core::{CairnError, Clock, EnvSpec, Outcome, StatusFilter, Watermark};
    let schema = TestSchema::new("cairn_t");
    let clock = Arc::new(ManualClock::new(1_000));
    let reg = schema.connect(clock.clone()).await.expect("connect");
    reg.register(rerunnable("same"), None).await.expect("register same");
    reg.register(rerunnable("changed"), None)
        .await
        .expect("register changed");
    reg.register(external("gone"), None).await.expect("register gone");
    reg.complete_external("gone", Outcome::success(json!({})), "test")
        .await
        .expect("complete gone");
    clock.advance(100);
    let report = reg
        .prune(clock.now_ms(), StatusFilter::Any.into(), Watermark::NoProjector)
        .await
        .expect("prune");
    assert_eq!(report.pruned, 1);
    let env = reg
        .put_env(&EnvSpec {
            plugin_options: json!({"k": 1}),
            policy: json!({}),
        })
        .await
        .expect("env");

    let mut changed = rerunnable("changed");
    changed.input = cairn_core::ProcessInput::ToolCall {
        tool: "echo".into(),
        args: json!({"other": true}),
    };
    let mut with_env = rerunnable("with-env");
    with_env.env_ref = Some(env);
    let mut missing_env = rerunnable("missing-env");
    missing_env.env_ref = Some(format!("process-env:sha256:{}", "0".repeat(64)));
    let batch = vec![
        rerunnable("new-1"),
        rerunnable("same"),
        changed,
        external("gone"),
        with_env,
        missing_env,
        rerunnable("new-1"),
        external("new-2"),
    ];
    let answers = testing::register_together(&reg, &batch).await;
    let created = |i: usize| match &answers[i] {
        Ok(r) => {
            assert_eq!(r.process.id, batch[i].id);
            r.created
        }
        Err(e) => panic!("{} answered {e}", batch[i].id),
    };
    assert!(created(0), "a new id is created");
    assert!(!created(1), "the same registration again is not");
    assert!(
        matches!(&answers[2], Err(CairnError::RegistrationConflict { id, .. }) if id == "changed"),
        "{:?}",
        answers[2]
    );
    assert!(
        matches!(&answers[3], Err(CairnError::NoLongerRetained(t)) if t.id == "gone"),
        "{:?}",
        answers[3]
    );
    assert!(created(4), "an existing env is accepted");
    assert!(
        matches!(&answers[5], Err(CairnError::UnknownEnv(_))),
        "{:?}",
        answers[5]
    );
    assert!(!created(6), "a repeat within the batch finds the first");
    assert!(created(7));

    // Exactly the created rows exist, as registered, and the refused ones do not.
    for id in ["new-1", "with-env", "new-2", "same", "changed"] {
        let record = reg.get(id).await.expect(id);
        assert_eq!(record.last_sequence, 0, "{id}");
    }
    assert_eq!(
        reg.get("changed").await.expect("changed").input,
        rerunnable("changed").input,
        "a conflicting registration changes nothing"
    );
    assert!(matches!(
        reg.get("missing-env").await,
        Err(CairnError::UnknownProcess(_))
    ));
    assert!(matches!(reg.get("gone").await, Err(CairnError::NoLongerRetained(_))));
    assert_eq!(reg.get("with-env").await.expect("with-env").env_ref, batch[4].env_ref);
}

// ------------------------------------------------- replies lost after a commit

/// Anything the proxy relays to: the server over TCP or its Unix socket.
trait Upstream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Upstream for T {}

/// The completion tag to lose the reply to, the SQLSTATE of the error to
/// answer in its place (a pooler's, when its server died) or none (a silent
/// break), and who hears that it happened.
type Trigger = Arc<std::sync::Mutex<Option<(String, Option<&'static str>, tokio::sync::oneshot::Sender<()>)>>>;

/// A proxy between cairn and the test server that loses one reply on purpose,
/// the way a network fault does. Armed with a completion tag, it lets the
/// server run the next statement that completes with that tag, withholds the
/// reply, waits for the server's ReadyForQuery (sent only once the statement's
/// transaction has committed) and closes both sides: the client sees its
/// connection break while what it wrote is already durable.
struct LosingProxy {
    url: String,
    trigger: Trigger,
    /// While true, the server's replies are held back (the server still
    /// runs what it is sent): a server gone silent, as a frozen host or
    /// relay is, which no TCP fault reports.
    silent: Arc<tokio::sync::watch::Sender<bool>>,
}

impl LosingProxy {
    async fn start(url: &str) -> Self {
        use tokio_postgres::config::Host;
        let config: tokio_postgres::Config = url.parse().expect("test url");
        let host = config.get_hosts().first().cloned().expect("the test url names a host");
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let trigger: Trigger = Arc::default();
        let armed = trigger.clone();
        let silent = Arc::new(tokio::sync::watch::channel(false).0);
        let hush = silent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (host, armed, hush) = (host.clone(), armed.clone(), hush.subscribe());
                tokio::spawn(async move {
                    let server: Box<dyn Upstream> = match &host {
                        Host::Tcp(h) => {
                            let server = tokio::net::TcpStream::connect((h.as_str(), port)).await?;
                            server.set_nodelay(true)?;
                            Box::new(server)
                        }
                        Host::Unix(dir) => {
                            Box::new(tokio::net::UnixStream::connect(dir.join(format!(".s.PGSQL.{port}"))).await?)
                        }
                    };
                    relay(client, server, armed, hush).await
                });
            }
        });
        let user = config.get_user().unwrap_or("postgres");
        let password = config
            .get_password()
            .map(|p| format!(":{}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        let db = config.get_dbname().unwrap_or(user);
        Self {
            url: format!("postgres://{user}{password}@{addr}/{db}?sslmode=disable"),
            trigger,
            silent,
        }
    }

    /// Hold back every reply from now on (`true`), or let them through again.
    fn go_silent(&self, silent: bool) {
        self.silent.send_replace(silent);
    }

    /// Lose the reply to the next statement that completes with `tag`; the
    /// receiver hears when that happened.
    fn lose_reply_to(&self, tag: &str) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.trigger.lock().expect("trigger") = Some((tag.to_string(), None, tx));
        rx
    }

    /// As [`lose_reply_to`](Self::lose_reply_to), but answer a FATAL error
    /// with `sqlstate` in the reply's place before the break, as a pooler
    /// does for a server that died after the statement ran.
    fn fail_reply_to(&self, tag: &str, sqlstate: &'static str) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.trigger.lock().expect("trigger") = Some((tag.to_string(), Some(sqlstate), tx));
        rx
    }

    /// A registry on `schema` whose every connection runs through this proxy.
    async fn registry(&self, schema: &TestSchema) -> PostgresRegistry {
        PostgresRegistry::connect_with(
            PostgresOptions::new(&self.url, Arc::new(ManualClock::new(1_000))).with_schema(schema.name.clone()),
        )
        .await
        .expect("connect through the proxy")
    }
}

/// Relay one connection: the client's bytes as they come, the server's message
/// by message (every server message is a type byte and a length).
async fn relay(
    client: tokio::net::TcpStream,
    server: Box<dyn Upstream>,
    trigger: Trigger,
    mut silent: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    client.set_nodelay(true)?;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let upstream = tokio::io::copy(&mut client_read, &mut server_write);
    let downstream = async {
        let mut losing: Option<(Option<&'static str>, tokio::sync::oneshot::Sender<()>)> = None;
        loop {
            let mut message = vec![0u8; 5];
            server_read.read_exact(&mut message).await?;
            let len = u32::from_be_bytes([message[1], message[2], message[3], message[4]]) as usize;
            message.resize(1 + len.max(4), 0);
            server_read.read_exact(&mut message[5..]).await?;
            if let Some((error, heard)) = losing.take() {
                if message[0] == b'Z' {
                    // It ran: now break the connection, after the error if armed with one.
                    if let Some(sqlstate) = error {
                        let mut fields = Vec::new();
                        for (kind, value) in [
                            (b'S', "FATAL"),
                            (b'V', "FATAL"),
                            (b'C', sqlstate),
                            (b'M', "server conn crashed?"),
                        ] {
                            fields.push(kind);
                            fields.extend_from_slice(value.as_bytes());
                            fields.push(0);
                        }
                        fields.push(0);
                        let mut response = vec![b'E'];
                        response.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
                        response.extend_from_slice(&fields);
                        client_write.write_all(&response).await?;
                        client_write.flush().await?;
                    }
                    let _ = heard.send(());
                    return Ok::<(), std::io::Error>(());
                }
                losing = Some((error, heard));
                continue;
            }
            if message[0] == b'C' {
                let tag = message[5..].split(|b| *b == 0).next().unwrap_or_default();
                let mut armed = trigger.lock().expect("trigger");
                if armed.as_ref().is_some_and(|(t, _, _)| t.as_bytes() == tag) {
                    losing = armed.take().map(|(_, error, heard)| (error, heard));
                    continue;
                }
            }
            if silent.wait_for(|silent| !*silent).await.is_err() {
                return Ok(());
            }
            client_write.write_all(&message).await?;
        }
    };
    tokio::select! {
        r = upstream => r.map(drop),
        r = downstream => r,
    }
}

fn assert_unknown_outcome<T: std::fmt::Debug>(answer: cairn_core::Result<T>, what: &str) -> String {
    match answer {
        Err(e) if e.code() == "outcome_unknown" => e.to_string(),
        other => panic!("{what}: a write whose reply was lost must not be answered as if known: {other:?}"),
    }
}

/// A single-statement write that answers whether it changed anything, whose
/// reply is lost after it committed: the retry finds nothing left to do, and
/// that must not be reported as "this call changed nothing".
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_to_revoke_or_ack_is_not_answered_false() {
    if !testing::enabled() {
        return;
    }
    use cairn_testkit::{notify, session, start_grant, waking};
    let schema = TestSchema::new("cairn_t");
    let proxy = LosingProxy::start(&schema.url).await;
    let reg = proxy.registry(&schema).await;
    let s1 = session("s1");
    reg.register(waking(external("a"), &s1), Some(start_grant(&s1, "k", "a")))
        .await
        .expect("register");
    let wake = reg
        .append_event("a", notify("hello"))
        .await
        .expect("append")
        .wake
        .expect("a wake");

    let lost = proxy.lose_reply_to("DELETE 1");
    let said = assert_unknown_outcome(reg.revoke(&s1, "a").await, "revoke");
    lost.await.expect("the proxy lost the reply");
    assert!(said.contains("revok"), "{said}");
    let granted = reg
        .list_granted_to(&s1, &cairn_core::ProcessFilter::default())
        .await
        .expect("list");
    assert!(granted.is_empty(), "the lost revoke landed: {granted:?}");
    assert!(
        !reg.revoke(&s1, "a").await.expect("revoke again"),
        "nothing left to revoke"
    );

    let lost = proxy.lose_reply_to("SELECT 1");
    let said = assert_unknown_outcome(reg.ack_wake("s1", &wake.wake_id).await, "ack_wake");
    lost.await.expect("the proxy lost the reply");
    assert!(said.contains("acknowledg"), "{said}");
    let pending = reg.pending_wakes("s1", None).await.expect("pending");
    assert!(pending.is_empty(), "the lost ack landed: {pending:?}");
    assert!(
        !reg.ack_wake("s1", &wake.wake_id).await.expect("ack again"),
        "already acknowledged"
    );
}

/// A transaction on the admin connection (transfer, delete_session, prune) is
/// run again after a fault before its commit, and answered as unknown, never
/// run again, when the connection broke while committing.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_transactions_retry_before_the_commit_and_never_after_it() {
    if !testing::enabled() {
        return;
    }
    use cairn_core::{Outcome, StatusFilter, Watermark};
    use cairn_testkit::{session, start_grant};
    let schema = TestSchema::new("cairn_t");
    let proxy = LosingProxy::start(&schema.url).await;
    let reg = proxy.registry(&schema).await;
    let (s1, s2, s3) = (session("s1"), session("s2"), session("s3"));
    let ids = vec!["b".to_string(), "c".to_string()];
    for id in &ids {
        reg.register(external(id), Some(start_grant(&s1, "k", id)))
            .await
            .expect("register");
    }
    let granted = |scope: &cairn_core::SessionScope| {
        let (reg, scope) = (&reg, scope.clone());
        async move {
            reg.list_granted_to(&scope, &cairn_core::ProcessFilter::default())
                .await
                .expect("list")
                .into_iter()
                .map(|g| g.process.id)
                .collect::<Vec<_>>()
        }
    };

    // Lost before the commit (the reply to the statement moving both
    // grants): the transaction rolled back and ran again.
    let lost = proxy.lose_reply_to("INSERT 0 2");
    let report = reg.transfer(&s1, &s2, &ids).await.expect("transfer retried");
    lost.await.expect("the proxy lost the reply");
    assert_eq!(report.moved, ids, "{report:?}");
    assert!(report.not_granted.is_empty(), "{report:?}");
    assert_eq!(granted(&s2).await, ids);

    // Lost while committing: it landed, and the answer says it is unknown.
    let lost = proxy.lose_reply_to("COMMIT");
    let said = assert_unknown_outcome(reg.transfer(&s2, &s3, &ids).await, "transfer");
    lost.await.expect("the proxy lost the reply");
    assert!(said.contains("transfer"), "{said}");
    assert_eq!(granted(&s3).await, ids, "the transfer landed once");
    assert!(granted(&s2).await.is_empty());

    // The same with a pooler's error for the lost server in the reply's place.
    let lost = proxy.fail_reply_to("COMMIT", "57P01");
    let said = assert_unknown_outcome(reg.transfer(&s3, &s2, &ids).await, "transfer");
    lost.await.expect("the proxy failed the reply");
    assert!(said.contains("transfer"), "{said}");
    assert_eq!(granted(&s2).await, ids, "the transfer landed once");
    let report = reg.transfer(&s2, &s3, &ids).await.expect("transfer back");
    assert_eq!(report.moved, ids, "{report:?}");

    let lost = proxy.lose_reply_to("COMMIT");
    let said = assert_unknown_outcome(reg.delete_session("s3").await, "delete_session");
    lost.await.expect("the proxy lost the reply");
    assert!(said.contains("session"), "{said}");
    assert!(granted(&s3).await.is_empty(), "the session's grants are gone");

    for id in &ids {
        reg.complete_external(id, Outcome::success(json!({})), "test")
            .await
            .expect("complete");
    }
    let lost = proxy.lose_reply_to("COMMIT");
    let said = assert_unknown_outcome(
        reg.prune(1_001, StatusFilter::Any.into(), Watermark::NoProjector).await,
        "prune",
    );
    lost.await.expect("the proxy lost the reply");
    assert!(said.contains("prun"), "{said}");
    for id in &ids {
        let err = reg.get(id).await.expect_err("pruned");
        assert_eq!(err.code(), "no_longer_retained", "{err}");
    }
}

/// A lane batch whose load's reply is lost runs again from the start (nothing
/// was written); one whose `COMMIT` reply is lost landed, and is answered as
/// unknown rather than run again.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_batch_runs_again_before_its_commit_and_is_unknown_after_it() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let proxy = LosingProxy::start(&schema.url).await;
    let reg = proxy.registry(&schema).await;
    reg.register(external("e"), None).await.expect("register");

    let lost = proxy.lose_reply_to("SELECT 1");
    reg.append_event("e", note(json!({ "i": 1 })))
        .await
        .expect("the batch ran again");
    lost.await.expect("the proxy lost the load's reply");
    assert_eq!(reg.get("e").await.expect("get").last_sequence, 1, "appended once");

    let lost = proxy.lose_reply_to("COMMIT");
    let said = assert_unknown_outcome(reg.append_event("e", note(json!({ "i": 2 }))).await, "append");
    lost.await.expect("the proxy lost the commit's reply");
    assert!(said.contains("may or may not"), "{said}");
    assert_eq!(
        reg.get("e").await.expect("get").last_sequence,
        2,
        "the append landed, once"
    );

    reg.append_event("e", note(json!({ "i": 3 })))
        .await
        .expect("the lane writes on a fresh connection");
    let events = reg.events_after("e", 0, None).await.expect("events");
    let seen: Vec<_> = events.events.iter().map(|e| e.payload["i"].clone()).collect();
    assert_eq!(seen, vec![json!(1), json!(2), json!(3)]);

    // A pooler whose server died after the commit answers it with an error
    // of the connection class: still unknown, never run again.
    let lost = proxy.fail_reply_to("COMMIT", "08P01");
    let said = assert_unknown_outcome(reg.append_event("e", note(json!({ "i": 4 }))).await, "append");
    lost.await.expect("the proxy failed the commit's reply");
    assert!(said.contains("may or may not"), "{said}");
    assert_eq!(
        reg.get("e").await.expect("get").last_sequence,
        4,
        "the append landed, once"
    );
}

/// A process one node suspended resumes when another node writes its signal:
/// the woken row is announced to every node (NOTIFY), the suspending node's
/// driver claims it, and the awaiter on the signalling node hears the end.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signal_on_one_node_resumes_a_suspension_made_by_another() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let node = |reg: PostgresRegistry, worker: bool| {
        let hub = ChangeHub::new();
        reg.listen(hub.clone());
        let b = cairn_core::Processes::builder(Arc::new(reg))
            .hub(hub)
            .tools(cairn_tools::builtin_tools(false))
            .worker_config(cairn_core::WorkerConfig {
                owner_id: "node-a".into(),
                ..cairn_core::WorkerConfig::default()
            });
        if worker {
            b.start()
        } else {
            b.without_worker().start()
        }
    };
    let a = node(schema.connect(clock()).await.expect("node a"), true);
    let b = node(schema.connect(clock()).await.expect("node b"), false);
    let wait = Duration::from_secs(20);
    a.start(cairn_core::StartRequest::tool(
        "x",
        "wait_signal",
        json!({"name": "go"}),
        cairn_core::Disposition::Rerunnable,
    ))
    .await
    .expect("start on a");
    b.await_event("x", "process.waiting", 0, wait)
        .await
        .expect("b sees the wait");
    let rec = b.get("x").await.expect("get");
    assert!(rec.lease.is_none(), "suspended on a: {rec:?}");
    b.signal("x", "go", "from-b", json!({"ok": 1}))
        .await
        .expect("signal on b");
    let done = b.await_output("x", wait).await.expect("await on b");
    assert_eq!(
        done.outcome,
        Some(cairn_core::Outcome::success(json!({"ok": 1}))),
        "{done:?}"
    );
    assert_eq!(done.started.map(|s| s.owner_id), Some("node-a".to_string()));
    let events = b.events("x", 0, Some(100)).await.expect("events").events;
    let resumed: Vec<_> = events.iter().filter(|e| e.event_type == "process.resumed").collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].payload["reason"], "signal");
    a.shutdown().await;
    b.shutdown().await;
}

/// A transfer on one node racing a prune on another never leaves a grant on
/// a pruned process: the transfer locks the process row before it moves the
/// grant, so the prune (which locks it `FOR UPDATE` and deletes its grants)
/// either sees the moved grant or leaves the transfer nothing to move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
async fn a_transfer_racing_a_prune_leaves_no_grant_behind() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let a = Arc::new(schema.connect(clock()).await.expect("node a"));
    let b = Arc::new(schema.connect(clock()).await.expect("node b"));
    let (s1, s2) = (cairn_testkit::session("s1"), cairn_testkit::session("s2"));
    let n = 300;
    let ids: Vec<String> = (0..n).map(|i| format!("t{i:04}")).collect();
    for id in &ids {
        a.register(external(id), Some(cairn_testkit::start_grant(&s1, "k", id)))
            .await
            .expect("register");
        a.complete_external(id, cairn_core::Outcome::success(json!(1)), "ci")
            .await
            .expect("complete");
    }
    let cutoff = cairn_core::Clock::now_ms(&SystemClock) + 1;
    let transfers = {
        let (a, s1, s2, ids) = (a.clone(), s1.clone(), s2.clone(), ids.clone());
        tokio::spawn(async move {
            for id in ids {
                a.transfer(&s1, &s2, std::slice::from_ref(&id)).await.expect("transfer");
            }
        })
    };
    let prunes = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut pruned = 0;
            while pruned < n as u64 {
                let r = b
                    .prune(
                        cutoff,
                        cairn_core::StatusFilter::Any.into(),
                        cairn_core::Watermark::NoProjector,
                    )
                    .await
                    .expect("prune");
                pruned += r.pruned;
                tokio::task::yield_now().await;
            }
        })
    };
    transfers.await.expect("transfers");
    prunes.await.expect("prunes");
    let report = a.delete_session("s2").await.expect("delete session");
    assert_eq!(report.revoked_grants, 0, "grants outlived their processes: {report:?}");
}

/// Stored env bytes that no longer match their address are `corrupt_env`, as
/// on the other backends.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn corrupt_env_is_detected() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let reg = schema.connect(clock()).await.expect("create");
    let spec = cairn_core::EnvSpec {
        plugin_options: json!({"image": "alpine"}),
        policy: json!({}),
    };
    let env_ref = reg.put_env(&spec).await.expect("put_env");
    assert_eq!(reg.get_env(&env_ref).await.expect("intact"), spec);
    reg.corrupt_env_for_test(&env_ref, br#"{"plugin_options":{},"policy":{}}"#.to_vec())
        .await
        .expect("overwrite");
    let err = reg.get_env(&env_ref).await.expect_err("corrupt bytes must not load");
    assert_eq!(err.code(), "corrupt_env", "{err}");
}

/// A write that locks a due row and leaves it as it was (a replayed append,
/// a transfer of its grant) tells every node's drivers to look for work: a
/// claim made while the lock was held passed over the row (SKIP LOCKED), and
/// nothing else would say it is still there.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_due_row_locked_and_left_as_it_was_is_announced_as_work() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let (_listener, writer, hub, _generation) = listening_pair(&schema).await;
    let heard = || tokio::time::timeout(Duration::from_secs(10), hub.work_available());
    // The hub keeps one pending work notice: each write below is announced
    // (its notification seen on the hub), then the notice spent, so what is
    // heard after the next write is that write's own.
    let spend = || async {
        let _ = tokio::time::timeout(Duration::ZERO, hub.work_available()).await;
    };
    let mut due = hub.subscribe("due");
    writer.register(rerunnable("due"), None).await.expect("register");
    let append = note(json!({})).with_replay_key("once");
    let first = writer.append_event("due", append.clone()).await.expect("append");
    assert!(
        announced(&mut due, first.event.sequence).await,
        "the append reached the hub"
    );
    spend().await;
    let again = writer.append_event("due", append).await.expect("replayed append");
    assert_eq!(again.event.sequence, first.event.sequence, "the replay wrote nothing");
    heard().await.expect("the replay's lock was announced as work");

    // A transfer locks the rows of the processes it names (`FOR SHARE`), so
    // it too tells the drivers to look again.
    use cairn_testkit::{session, start_grant};
    let (s1, s2) = (session("s1"), session("s2"));
    let mut queued = hub.subscribe("queued");
    writer
        .register(rerunnable("queued"), Some(start_grant(&s1, "k", "queued")))
        .await
        .expect("register");
    let noted = writer.append_event("queued", note(json!({}))).await.expect("append");
    assert!(
        announced(&mut queued, noted.event.sequence).await,
        "the append reached the hub"
    );
    spend().await;
    let report = writer
        .transfer(&s1, &s2, &["queued".to_string()])
        .await
        .expect("transfer");
    assert_eq!(report.moved, ["queued"]);
    heard().await.expect("the transfer was announced as work");
    // Retried, it moves nothing, and is announced all the same.
    spend().await;
    let report = writer
        .transfer(&s1, &s2, &["queued".to_string()])
        .await
        .expect("transfer again");
    assert_eq!(report.not_granted, ["queued"]);
    heard().await.expect("the retried transfer was announced as work");
    // A session's deletion locks the processes it holds as well.
    spend().await;
    let report = writer.delete_session("s2").await.expect("delete session");
    assert_eq!(report.revoked_grants, 1);
    heard().await.expect("the session's deletion was announced as work");
}

/// A claim that locks more candidates than it answers (each half of the
/// worklist locks up to the limit) tells the drivers to look for work: a
/// claim on another node passed over the rows it left out while it held them,
/// and nothing else would say they are there.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn candidates_a_claim_locked_and_left_out_are_announced_as_work() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let (_listener, writer, hub, _generation) = listening_pair(&schema).await;
    for id in ["ready-1", "ready-2", "timed-1", "timed-2"] {
        writer.register(rerunnable(id), None).await.expect("register");
    }
    for id in ["timed-1", "timed-2"] {
        writer.claim(id, "gone", 1).await.expect("claim");
    }
    // The leases of a millisecond have lapsed by the wall clock.
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Every notice of the writes above reached the hub before the marker's
    // (one listening connection, commit order); then the pending one is spent.
    writer.register(external("marker"), None).await.expect("register");
    let mut marker = hub.subscribe("marker");
    writer.append_event("marker", note(json!({}))).await.expect("append");
    assert!(announced(&mut marker, 1).await, "the marker reached the hub");
    let _ = tokio::time::timeout(Duration::ZERO, hub.work_available()).await;
    let claimed: Vec<String> = testing::claim_together(&writer, &[("w", 2)])
        .await
        .remove(0)
        .expect("claims")
        .into_iter()
        .map(|c| c.process.id)
        .collect();
    assert_eq!(claimed, ["ready-1", "ready-2"], "registered first, claimed first");
    tokio::time::timeout(Duration::from_secs(10), hub.work_available())
        .await
        .expect("the lapsed leases the claim locked and left were announced as work");
}

/// A claim of "everything" (`usize::MAX`) queued beside another claim in one
/// write batch claims every claimable row, as it does alone (the batch's
/// candidate count saturates rather than overflowing).
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn a_claim_of_everything_beside_another_claims_all() {
    if !testing::enabled() {
        return;
    }
    let (reg, _schema) = testing::fresh(clock()).await;
    for id in ["c1", "c2", "c3"] {
        reg.register(rerunnable(id), None).await.expect("register");
    }
    let answers = testing::claim_together(&reg, &[("w1", usize::MAX), ("w2", 1)]).await;
    let claimed: Vec<usize> = answers.into_iter().map(|a| a.expect("claims").len()).collect();
    assert_eq!(claimed, vec![3, 0]);
}

/// A session's deletion racing a batch that registers a child of a process
/// the session holds leaves no grant to the deleted session: the deletion
/// locks the processes the session holds first, so it waits for the batch
/// (which holds the parent `FOR UPDATE` and gives the child the parent's
/// grants) and then deletes the child's grant too. Here a raw transaction
/// plays the batch: it locks the parent and its grants as a batch does and
/// grants another process to the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
async fn a_session_deletion_waits_for_a_batch_granting_a_child() {
    if !testing::enabled() {
        return;
    }
    session_deletion_racing_a_child_grant("").await;
    // A server (or a URL) whose transactions default to another isolation
    // level: cairn's own still read what committed before each statement.
    session_deletion_racing_a_child_grant("options=-c%20default_transaction_isolation%3Drepeatable%5C%20read").await;
}

async fn session_deletion_racing_a_child_grant(url_params: &str) {
    let schema = TestSchema::new("cairn_t");
    let url = if url_params.is_empty() {
        schema.url.clone()
    } else {
        let sep = if schema.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}{url_params}", schema.url)
    };
    let options = PostgresOptions::new(&url, clock()).with_schema(schema.name.clone());
    let reg = Arc::new(PostgresRegistry::connect_with(options).await.expect("connect"));
    let s1 = cairn_testkit::session("s1");
    reg.register(external("par"), Some(cairn_testkit::start_grant(&s1, "k", "par")))
        .await
        .expect("register the parent");
    reg.register(external("kid"), None).await.expect("register the child");
    let mut kid_grant = reg.grants_of("par").await.expect("grants").remove(0);
    kid_grant.process_id = "kid".into();

    let mut batch = client(&schema.url).await;
    let tx = batch.transaction().await.expect("begin");
    let name = &schema.name;
    tx.execute(
        &format!("SELECT 1 FROM \"{name}\".processes WHERE id = 'par' FOR UPDATE"),
        &[],
    )
    .await
    .expect("lock the parent");
    tx.execute(
        &format!("SELECT 1 FROM \"{name}\".grants WHERE process_id = 'par' FOR SHARE"),
        &[],
    )
    .await
    .expect("lock its grants");
    tx.execute(
        &format!(
            "INSERT INTO \"{name}\".grants (scope_id, session_id, process_id, grant_json) VALUES ($1, $2, 'kid', $3)"
        ),
        &[
            &kid_grant.scope.scope_id(),
            &kid_grant.scope.session_id,
            &serde_json::to_string(&kid_grant).expect("json"),
        ],
    )
    .await
    .expect("grant the child");

    let deletion = {
        let reg = reg.clone();
        tokio::spawn(async move { reg.delete_session("s1").await })
    };
    // The deletion waits on the batch's locks before the batch commits.
    waiting_on_a_lock(&schema.url, "%grants WHERE session_id = $1%")
        .await
        .expect("the deletion waits for the batch");
    tx.commit().await.expect("commit the batch");
    let report = deletion.await.expect("join").expect("delete session");
    assert_eq!(report.revoked_grants, 2, "{report:?}");
    assert!(
        reg.grants_of("kid").await.expect("grants").is_empty(),
        "the child's grant outlived its session"
    );
}

/// Two stores of the same module at once: the one that waited on the
/// other's insert answers the stored module (`created: false`), not a
/// storage error (its statement's snapshot predates the other's commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
async fn a_module_stored_twice_at_once_answers_the_stored_one() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let reg = Arc::new(schema.connect(clock()).await.expect("connect"));
    let source = "export async function main(ctx) { return 1; }";
    let module = cairn_core::Module {
        info: cairn_core::ModuleInfo {
            module_ref: cairn_core::script::module_ref(source),
            name: Some("m.js".into()),
            exports: vec!["main".into()],
            created_at_ms: 1_000,
        },
        source: source.to_string(),
    };
    let mut other = client(&schema.url).await;
    let tx = other.transaction().await.expect("begin");
    tx.execute(
        &format!(
            "INSERT INTO \"{}\".modules (module_ref, name, exports, source, created_at_ms) VALUES ($1, 'm.js', '[\"main\"]', $2, 1000)",
            schema.name
        ),
        &[&module.info.module_ref, &source],
    )
    .await
    .expect("the other store's insert");
    let put = {
        let (reg, module) = (reg.clone(), module.clone());
        tokio::spawn(async move { reg.put_module(&module).await })
    };
    waiting_on_a_lock(&schema.url, "%INSERT INTO modules%")
        .await
        .expect("the store waits for the other");
    tx.commit().await.expect("commit the other store");
    let put = put.await.expect("join").expect("the second store answers");
    assert!(!put.created);
    assert_eq!(put.module.module_ref, module.info.module_ref);
}

/// Within 20 s, a statement whose text is `LIKE` `pattern` waits on a lock
/// (another transaction holds what it needs).
async fn waiting_on_a_lock(url: &str, pattern: &str) -> Result<(), tokio::time::error::Elapsed> {
    let watcher = client(url).await;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND datname = current_database() AND query LIKE $1",
                    &[&pattern],
                )
                .await
                .expect("activity")
                .get(0);
            if waiting > 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// A server that stops answering (a frozen host or relay: no TCP fault says
/// so) fails each call at the call timeout instead of holding it: a read as
/// `unavailable`, a write that was sent as `outcome_unknown` (it may still
/// land, and here it does), a write still queued behind it as `unavailable`,
/// and that one is never sent.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_fails_calls_at_the_call_timeout() {
    if !testing::enabled() {
        return;
    }
    use cairn_core::{CairnError, EnvSpec};
    // A call the registry failed to bound would hang the test: fail it instead.
    async fn answered<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer 20 s into a 1 s call timeout"))
    }
    let schema = TestSchema::new("cairn_t");
    let proxy = LosingProxy::start(&schema.url).await;
    let reg = PostgresRegistry::connect_with(
        PostgresOptions::new(
            &format!("{}&call_timeout=1", proxy.url),
            Arc::new(ManualClock::new(1_000)),
        )
        .with_schema(schema.name.clone()),
    )
    .await
    .expect("connect through the proxy");
    reg.register(external("warm"), None)
        .await
        .expect("register while answered");

    proxy.go_silent(true);
    let read = answered("get", reg.get("warm")).await;
    match &read {
        Err(CairnError::Unavailable(m)) => assert!(m.contains("did not answer within 1 s"), "{m}"),
        other => panic!("a read of a silent server: {other:?}"),
    }
    // The idle lane sends this one at once; its answer never comes.
    let sent = answered("register sent", reg.register(external("sent"), None)).await;
    assert!(
        matches!(&sent, Err(CairnError::OutcomeUnknown(m)) if m.contains("may still land")),
        "a sent write: {sent:?}"
    );
    // Queued behind the batch the server holds: never sent.
    let held = answered("register held", reg.register(external("held"), None)).await;
    assert!(
        matches!(&held, Err(CairnError::Unavailable(m)) if m.contains("was not sent")),
        "a queued write: {held:?}"
    );
    let env = EnvSpec {
        plugin_options: json!({"silent": true}),
        policy: json!({}),
    };
    let put = answered("put_env", reg.put_env(&env)).await;
    assert!(
        matches!(&put, Err(CairnError::OutcomeUnknown(m)) if m.contains("storing the env")),
        "a single-statement write: {put:?}"
    );
    // A worker's claim is not given up on: told `outcome_unknown`, a worker
    // could not tell which processes it then holds.
    let mut claim = Box::pin(reg.claim_batch("w-silent", 60_000, 8));
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut claim).await.is_err(),
        "a worker's claim waits for the server past the call timeout"
    );
    // Both read connections were given up above: this write waits on a new
    // one the silent server never opens, so it was never sent.
    let unsent_env = EnvSpec {
        plugin_options: json!({"never": "sent"}),
        policy: json!({}),
    };
    let unsent = answered("put_env unsent", reg.put_env(&unsent_env)).await;
    assert!(
        matches!(&unsent, Err(CairnError::Unavailable(_))),
        "a write that never reached a connection: {unsent:?}"
    );
    let deleted = answered("delete_session", reg.delete_session("s-silent")).await;
    assert!(
        matches!(&deleted, Err(CairnError::Unavailable(m)) if m.contains("not committed")),
        "an admin transaction unanswered before its commit: {deleted:?}"
    );

    // A start against the silent server fails at the bound, saying why.
    let started = answered(
        "connect",
        PostgresRegistry::connect_with(
            PostgresOptions::new(
                &format!("{}&call_timeout=1", proxy.url),
                Arc::new(ManualClock::new(1_000)),
            )
            .with_schema(schema.name.clone()),
        ),
    )
    .await;
    assert!(
        matches!(&started, Err(CairnError::Unavailable(m)) if m.contains("did not answer")),
        "a start against a silent server: {:?}",
        started.err()
    );

    proxy.go_silent(false);
    let claimed = answered("the claim", claim).await.expect("claimed once answered");
    assert!(
        claimed.is_empty(),
        "externally owned work is never claimed: {claimed:?}"
    );
    // Lanes keep their order: once this answers, the held batch has committed.
    answered("register after", reg.register(external("after"), None))
        .await
        .expect("register once answered again");
    answered("get sent", reg.get("sent"))
        .await
        .expect("the sent write landed");
    assert!(
        matches!(
            answered("get held", reg.get("held")).await,
            Err(CairnError::UnknownProcess(_))
        ),
        "a write its caller was told was not sent must not land"
    );
    let (unsent_ref, _) = cairn_core::validate::env_ref_and_bytes(&unsent_env).expect("an env ref");
    assert!(
        matches!(
            answered("get unsent env", reg.get_env(&unsent_ref)).await,
            Err(CairnError::UnknownEnv(_))
        ),
        "a write its caller was told was not sent must not land"
    );
    let env_ref = answered("put_env again", reg.put_env(&env)).await.expect("put_env");
    answered("get_env", reg.get_env(&env_ref))
        .await
        .expect("the env is stored");
}

/// Every test in the workspace that reaches PostgreSQL through
/// `cairn_postgres::testing` is built `#[ignore]`d when the server is not
/// configured (or is ignored outright), so one that did not run never
/// reports as passed: without the attribute, its `if !testing::enabled()
/// { return; }` would read as a pass.
#[test]
fn every_postgres_test_is_ignored_when_the_server_is_not_configured() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    let mut unmarked = Vec::new();
    for krate in std::fs::read_dir(&crates).expect("crates") {
        let tests = krate.expect("entry").path().join("tests");
        let Ok(files) = std::fs::read_dir(&tests) else { continue };
        for file in files {
            let path = file.expect("entry").path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let lines: Vec<&str> = text.lines().collect();
            for (at, line) in lines.iter().enumerate() {
                let Some(name) = line.strip_prefix("async fn ").or_else(|| line.strip_prefix("fn ")) else {
                    continue;
                };
                // The item's attributes and docs: the lines above it up to
                // the end of the item before (or a blank line).
                let head = lines[..at]
                    .iter()
                    .rev()
                    .take_while(|l| !l.is_empty() && **l != "}")
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n");
                if !head.contains("#[test]") && !head.contains("#[tokio::test") {
                    continue;
                }
                let body = lines[at..]
                    .iter()
                    .take_while(|l| **l != "}")
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n");
                if !body.contains("testing::enabled()") && !body.contains("testing::test_url()") {
                    continue;
                }
                checked += 1;
                if !head.contains("cairn_no_postgres") && !head.contains("#[ignore") {
                    let name = name.split('(').next().unwrap_or(name);
                    unmarked.push(format!("{}: {name}", path.display()));
                }
            }
        }
    }
    assert!(checked >= 30, "the scan found the PostgreSQL tests ({checked})");
    assert!(unmarked.is_empty(), "not ignored without a server: {unmarked:#?}");
}

/// When the type list `key` was last stored, by the server's clock; `None`
/// when it is not stored.
async fn list_touched(c: &tokio_postgres::Client, schema: &TestSchema, key: &str) -> Option<i64> {
    c.query_opt(
        &format!(
            "SELECT touched_at_ms FROM \"{}\".type_lists WHERE key = $1",
            schema.name
        ),
        &[&key],
    )
    .await
    .expect("touched")
    .map(|r| r.get(0))
}

/// Mark the type list `key` as last stored at `at` (epoch ms).
async fn backdate_list(c: &tokio_postgres::Client, schema: &TestSchema, key: &str, at: i64) {
    c.execute(
        &format!(
            "UPDATE \"{}\".type_lists SET touched_at_ms = $1 WHERE key = $2",
            schema.name
        ),
        &[&at, &key],
    )
    .await
    .expect("backdate");
}

/// A registration declaring one type of its own (a list no other test names).
fn declaring(id: &str, name: &str) -> cairn_core::Registration {
    let mut reg = external(id);
    reg.event_types.push(cairn_core::EventType::plain(name));
    reg
}

/// Register `registration` and answer the key of its type list.
async fn register_list(reg: &PostgresRegistry, registration: cairn_core::Registration) -> String {
    reg.register(registration, None)
        .await
        .expect("register")
        .process
        .event_types
        .key()
        .to_string()
}

/// Register `registration` and check that it stored the type list `key`
/// again, by the server's clock, while it registered.
async fn assert_stores_again(
    reg: &PostgresRegistry,
    c: &tokio_postgres::Client,
    schema: &TestSchema,
    key: &str,
    registration: cairn_core::Registration,
    why: &str,
) {
    let before = testing::server_now_ms(c).await;
    reg.register(registration, None).await.expect("register");
    let touched = list_touched(c, schema, key).await.expect("stored");
    assert!(touched >= before, "{why}: stored again ({touched} < {before})");
}

/// Register `registration`, checking that it named the type list `key`
/// without storing it again: the list is still as last stored at `at`.
async fn assert_named_on_trust(
    reg: &PostgresRegistry,
    c: &tokio_postgres::Client,
    schema: &TestSchema,
    key: &str,
    registration: cairn_core::Registration,
    at: i64,
    why: &str,
) {
    reg.register(registration, None).await.expect("register");
    assert_eq!(list_touched(c, schema, key).await, Some(at), "{why}");
}

/// Read each of `ids` back, its type list fetched from the server, and check
/// that it declares `name`.
async fn assert_read_back(reg: &PostgresRegistry, ids: &[&str], name: &str) {
    testing::forget_type_lists();
    for id in ids {
        let r = reg.get(id).await.expect("reads back");
        assert!(r.event_types.find(name).is_some(), "{id}");
    }
}

/// Put an env spec working in `cwd` and answer its reference.
async fn put_env(reg: &PostgresRegistry, cwd: &str) -> String {
    reg.put_env(&cairn_core::EnvSpec {
        plugin_options: json!({ "cwd": cwd }),
        policy: json!({}),
    })
    .await
    .expect("put")
}

/// Complete the external process `id` and prune everything ended, which
/// removes it alone.
async fn complete_and_prune(reg: &PostgresRegistry, id: &str) {
    reg.complete_external(id, cairn_core::Outcome::success(json!(1)), "host")
        .await
        .expect("complete");
    let report = reg
        .prune(
            cairn_core::Clock::now_ms(&SystemClock) + 1,
            cairn_core::StatusFilter::Any.into(),
            cairn_core::Watermark::NoProjector,
        )
        .await
        .expect("prune");
    assert_eq!(report.pruned, 1);
}

/// A lane names a type list it stored without storing it again for 10
/// minutes, then stores it again (touching it, by the server's clock) before
/// it names it, and trusts it anew from then on (ADR 0034): a collection,
/// which takes only lists untouched for an hour, never deletes one a lane
/// names on trust.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn a_lane_stores_a_list_again_once_it_stops_trusting_it() {
    if !testing::enabled() {
        return;
    }
    let (reg, schema) = testing::fresh(clock()).await;
    let c = client(&schema.url).await;
    let key = register_list(&reg, declaring("first", "trust.me")).await;
    assert!(list_touched(&c, &schema, &key).await.is_some(), "stored");
    backdate_list(&c, &schema, &key, 1).await;
    let trusted = declaring("trusted", "trust.me");
    let why = "stored minutes ago: named without storing it again";
    assert_named_on_trust(&reg, &c, &schema, &key, trusted, 1, why).await;
    reg.age_type_lists_for_test(Duration::from_secs(601));
    let past = declaring("past", "trust.me");
    assert_stores_again(&reg, &c, &schema, &key, past, "past the trust").await;
    backdate_list(&c, &schema, &key, 2).await;
    let anew = declaring("anew", "trust.me");
    assert_named_on_trust(&reg, &c, &schema, &key, anew, 2, "trusted anew").await;
    assert_read_back(&reg, &["first", "trusted", "past", "anew"], "trust.me").await;
}

/// A lane's trust in a list it stored is timed on the registry's clock as
/// well as on this host's monotonic one, which stops while the host is
/// suspended: when the registry's clock (here following the server's, over
/// a manual base) moves 11 minutes while the `Instant` barely moves, the
/// next batch naming the list stores it again; so does one after the clock
/// is set back, since the time since the store is then unknown. With
/// neither moving, the list is named on trust.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn a_lane_stops_trusting_a_list_when_the_registry_clock_moves_past_the_trust() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let base = ManualClock::new(cairn_core::Clock::now_ms(&SystemClock));
    let options = schema
        .options(Arc::new(base.clone()))
        .following_server_clock(true)
        .clock_refresh_for_test(Duration::from_secs(3600));
    let reg = PostgresRegistry::connect_with(options).await.expect("connect");
    let c = client(&schema.url).await;
    let key = register_list(&reg, declaring("first", "suspend.me")).await;
    backdate_list(&c, &schema, &key, 1).await;
    base.advance(60_000);
    let trusted = declaring("trusted", "suspend.me");
    let why = "a minute by the registry's clock: named on trust";
    assert_named_on_trust(&reg, &c, &schema, &key, trusted, 1, why).await;
    base.advance(10 * 60_000);
    let woken = declaring("woken", "suspend.me");
    assert_stores_again(&reg, &c, &schema, &key, woken, "11 minutes by the registry's clock").await;
    backdate_list(&c, &schema, &key, 2).await;
    base.set(cairn_core::Clock::now_ms(&base) - 5 * 60_000);
    let set_back = declaring("set_back", "suspend.me");
    assert_stores_again(&reg, &c, &schema, &key, set_back, "the registry's clock set back").await;
    assert_read_back(&reg, &["first", "trusted", "woken", "set_back"], "suspend.me").await;
}

/// A prune's collection takes the env specs and type lists no process names
/// only once nobody stored or put them for the grace (an hour, by the
/// server's clock): one a minute short of it stays, one past it goes, and a
/// list or env a running process names stays however old.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn a_collection_never_deletes_what_was_stored_within_the_grace() {
    if !testing::enabled() {
        return;
    }
    let (reg, schema) = testing::fresh(clock()).await;
    let c = client(&schema.url).await;
    let (gone_env, live_env) = (put_env(&reg, "gone").await, put_env(&reg, "live").await);
    let with_env = |mut r: cairn_core::Registration, env: &str| {
        r.env_ref = Some(env.to_string());
        r
    };
    let gone_key = register_list(&reg, with_env(declaring("gone", "grace.gone"), &gone_env)).await;
    let live_key = register_list(&reg, with_env(declaring("live", "grace.live"), &live_env)).await;
    complete_and_prune(&reg, "gone").await;
    assert!(list_touched(&c, &schema, &gone_key).await.is_some(), "stored just now");
    reg.get_env(&gone_env).await.expect("put just now");

    let grace = cairn_core::registry::DEFAULT_COLLECT_GRACE.as_millis() as i64;
    let age = |by_ms: i64| {
        let (c, name) = (&c, &schema.name);
        async move {
            for table in ["envs", "type_lists"] {
                c.execute(
                    &format!("UPDATE \"{name}\".{table} SET touched_at_ms = touched_at_ms - $1"),
                    &[&by_ms],
                )
                .await
                .expect("age");
            }
        }
    };
    age(grace - 60_000).await;
    let kept = reg
        .collect_unreferenced(cairn_core::registry::DEFAULT_COLLECT_GRACE)
        .await
        .expect("collect");
    assert_eq!(
        kept,
        cairn_core::registry::Collected::default(),
        "a minute short of the grace"
    );
    age(120_000).await;
    let collected = reg
        .collect_unreferenced(cairn_core::registry::DEFAULT_COLLECT_GRACE)
        .await
        .expect("collect");
    assert_eq!(collected, cairn_core::registry::Collected { envs: 1, type_lists: 1 });
    assert_eq!(list_touched(&c, &schema, &gone_key).await, None);
    assert_eq!(
        reg.get_env(&gone_env).await.expect_err("collected").code(),
        "unknown_env"
    );
    assert!(
        list_touched(&c, &schema, &live_key).await.is_some(),
        "named by a running process"
    );
    reg.get_env(&live_env).await.expect("named by a running process");
    assert_read_back(&reg, &["live"], "grace.live").await;
}

/// A schema from before lists and envs kept when they were last stored gains
/// the columns on connect, every row stored as of the upgrade by the server's
/// clock (a node of the older build may be about to name one it cached), and
/// a row an older build inserts after it is stored as of its insert.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn touches_are_added_on_upgrade() {
    /// The schema version whose migration adds when each row was stored.
    const TOUCHES_FROM: u32 = 12;
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let reg = schema.connect(clock()).await.expect("create");
    let env = put_env(&reg, "/old").await;
    reg.register(declaring("old", "upgrade.old"), None)
        .await
        .expect("register");
    drop(reg);
    schema
        .execute(&format!(
            "SET search_path TO \"{s}\";
             ALTER TABLE envs DROP COLUMN touched_at_ms;
             ALTER TABLE type_lists DROP COLUMN touched_at_ms;
             DROP INDEX processes_created;
             DROP INDEX processes_waiting;
             UPDATE cairn_meta SET value = '{TOUCHES_FROM}' WHERE key = 'schema_version';",
            s = schema.name
        ))
        .await
        .expect("make the older shape");
    let c = client(&schema.url).await;
    let before = testing::server_now_ms(&c).await;
    let reg = schema.connect(clock()).await.expect("upgrade");
    let after = testing::server_now_ms(&c).await;
    assert_eq!(
        meta(&schema.url, &schema.name, "schema_version").await,
        Some(SCHEMA_VERSION.to_string())
    );
    for table in ["envs", "type_lists"] {
        for row in c
            .query(&format!("SELECT touched_at_ms FROM \"{}\".{table}", schema.name), &[])
            .await
            .expect("touched")
        {
            let t: i64 = row.get(0);
            assert!((before..=after).contains(&t), "{table}: {t} not in {before}..={after}");
        }
    }
    // An insert as the older build makes it, naming no time.
    c.execute(
        &format!(
            "INSERT INTO \"{}\".type_lists (key, types) VALUES ('types:sha256:old', '[]')",
            schema.name
        ),
        &[],
    )
    .await
    .expect("older insert");
    let t = list_touched(&c, &schema, "types:sha256:old").await.expect("stored");
    assert!(t >= after, "{t} < {after}");
    // Within the grace of the upgrade, nothing goes.
    assert_eq!(
        reg.collect_unreferenced(cairn_core::registry::DEFAULT_COLLECT_GRACE)
            .await
            .expect("collect"),
        cairn_core::registry::Collected::default()
    );
    reg.get_env(&env).await.expect("kept");
}

/// A prune that removes a process collects with the registry's grace
/// (`PostgresOptions::collect_grace`): with none, the pruned process's env
/// and type list go with it, and a new registration declaring the list on
/// the same node stores it again.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn a_prune_collects_with_the_configured_grace() {
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let mut options = schema.options(clock());
    options.collect_grace = Duration::ZERO;
    let reg = PostgresRegistry::connect_with(options).await.expect("connect");
    let c = client(&schema.url).await;
    let env = put_env(&reg, "/pruned").await;
    let mut once = declaring("once", "pruned.with");
    once.env_ref = Some(env.clone());
    let key = register_list(&reg, once).await;
    complete_and_prune(&reg, "once").await;
    assert_eq!(
        list_touched(&c, &schema, &key).await,
        None,
        "the list went with the prune"
    );
    assert_eq!(reg.get_env(&env).await.expect_err("collected").code(), "unknown_env");
    reg.register(declaring("again", "pruned.with"), None)
        .await
        .expect("register again");
    assert!(list_touched(&c, &schema, &key).await.is_some(), "stored again");
}

/// A listing bounded by creation time (one bound or both, any status) reads
/// the creation-time index, and one of the waiting processes the waiting
/// index (ADR 0037), as generic plans: not the id order, skipping every row
/// outside the window.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn creation_windows_and_waiting_listings_read_their_indexes() {
    if !testing::enabled() {
        return;
    }
    let (reg, schema) = testing::fresh(clock()).await;
    reg.register(rerunnable("run-00"), None).await.expect("register");
    fill_completed_like_run_00(&schema).await;
    for (f, index) in [
        (json!({"status": "any", "created_from_ms": 5}), "processes_created"),
        (json!({"status": "any", "created_before_ms": 9}), "processes_created"),
        (
            json!({"status": "completed", "created_from_ms": 5, "created_before_ms": 9, "after_id": "a"}),
            "processes_created",
        ),
        (json!({"status": "any", "waiting": true}), "processes_waiting"),
        (json!({"status": "running", "waiting": true}), "processes_waiting"),
    ] {
        let filter = ProcessFilter::from_json(f.clone()).expect("filter");
        let plan = testing::listing_plan(&schema.url, &schema.name, &filter)
            .await
            .expect("plan");
        assert!(plan.contains(index), "{f} should use {index}:\n{plan}");
    }
}

/// A newest-first listing of every status reads the creation-time index
/// from its newest end (sorting only the ties of a millisecond, if at
/// all), as a generic plan: never a sort of the whole table.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn a_newest_first_listing_reads_the_creation_time_index() {
    if !testing::enabled() {
        return;
    }
    let (reg, schema) = testing::fresh(clock()).await;
    reg.register(rerunnable("run-00"), None).await.expect("register");
    fill_completed_like_run_00(&schema).await;
    // Creation times spread as a live table's are (the fill copies one).
    schema
        .execute(&format!(
            "UPDATE \"{s}\".processes SET created_at_ms = created_at_ms + substr(id, 6)::int8 / 3 \
             WHERE id LIKE 'done-%'; ANALYZE \"{s}\".processes",
            s = schema.name
        ))
        .await
        .expect("spread");
    let created = "processes_created";
    // Newest first, every status reads the creation-time index from the top;
    // a bound status, or waiting, reads its own partial index and sorts.
    let cases = [
        (json!({"status": "any", "order": "newest"}), created),
        (
            json!({"status": "any", "order": "newest", "after_id": "done-7"}),
            created,
        ),
        (
            json!({"status": "any", "order": "newest", "created_from_ms": 5}),
            created,
        ),
        (
            json!({"status": "any", "order": "newest", "created_before_ms": 9, "after_id": "a"}),
            created,
        ),
        (json!({"status": "running", "order": "newest"}), "processes_status_id"),
        (
            json!({"status": "failed", "order": "newest", "after_id": "done-7"}),
            "processes_status_id",
        ),
        (
            json!({"status": "any", "waiting": true, "order": "newest", "after_id": "done-7"}),
            "processes_waiting",
        ),
    ];
    assert_listing_plans(&schema, &cases).await;
    // By status, the page is first looked for among the newest processes,
    // down the creation-time index from where the walk stops, not sorted.
    for f in [
        json!({"status": "running", "order": "newest", "created_from_ms": 5}),
        json!({"status": "failed", "order": "newest", "created_from_ms": 5, "after_id": "done-7"}),
    ] {
        let filter = ProcessFilter::from_json(f.clone()).expect("filter");
        let plan = testing::walk_plan(&schema.url, &schema.name, &filter)
            .await
            .expect("plan");
        assert!(
            plan.contains("processes_created"),
            "{f} should walk processes_created:\n{plan}"
        );
        assert!(!plan.contains("Seq Scan"), "{f} scans the table:\n{plan}");
    }
}

/// Each listing filter's generic plan reads the index named beside it, and
/// scans no table.
async fn assert_listing_plans(schema: &TestSchema, cases: &[(Value, &str)]) {
    for (f, index) in cases {
        let filter = ProcessFilter::from_json(f.clone()).expect("filter");
        let plan = testing::listing_plan(&schema.url, &schema.name, &filter)
            .await
            .expect("plan");
        assert!(plan.contains(index), "{f} should use {index}:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{f} scans the table:\n{plan}");
    }
}

/// A populated schema from before the listing windows (version 13) gains
/// the creation-time and waiting indexes on connect, and its listings by
/// creation time and of waiting processes find what they did.
#[cfg_attr(
    cairn_no_postgres,
    ignore = "CAIRN_TEST_POSTGRES_URL is unset: see cairn_postgres::testing"
)]
#[tokio::test]
async fn listing_window_indexes_are_added_on_upgrade() {
    /// The schema version whose migration adds the listing window indexes.
    const LISTING_WINDOWS_FROM: u32 = 13;
    if !testing::enabled() {
        return;
    }
    let schema = TestSchema::new("cairn_t");
    let reg = schema.connect(clock()).await.expect("create");
    for i in 0..30u64 {
        reg.register(rerunnable(&format!("p{:02}", 29 - i)), None)
            .await
            .expect("register");
    }
    for id in ["p05", "p21"] {
        let lease = reg.claim(id, "w1", 30_000).await.expect("claim");
        let rec = reg.record_started(&lease).await.expect("started");
        let waited = reg
            .wait(
                &lease,
                cairn_core::WaitRequest::signal("go", 1, None),
                rec.last_sequence,
            )
            .await
            .expect("wait");
        assert!(waited, "{id} waits");
    }
    drop(reg);
    schema
        .execute(&format!(
            "SET search_path TO \"{s}\";
             DROP INDEX processes_created;
             DROP INDEX processes_waiting;
             UPDATE cairn_meta SET value = '{LISTING_WINDOWS_FROM}' WHERE key = 'schema_version';",
            s = schema.name
        ))
        .await
        .expect("make the older shape");
    let reg = schema.connect(clock()).await.expect("upgrade");
    assert_eq!(
        meta(&schema.url, &schema.name, "schema_version").await,
        Some(SCHEMA_VERSION.to_string())
    );
    let listed = |filter: ProcessFilter| {
        let reg = &reg;
        async move { reg.list(&filter).await.expect("list") }
    };
    let any = ProcessFilter {
        status: cairn_core::StatusFilter::Any,
        ..ProcessFilter::default()
    };
    // Each window finds the rows created in it, in id order.
    let all = listed(any.clone()).await;
    let mut times: Vec<u64> = all.iter().map(|r| r.created_at_ms).collect();
    times.sort_unstable();
    for (from, before) in [
        (Some(times[10]), Some(times[20])),
        (Some(times[25]), None),
        (None, Some(times[3])),
    ] {
        let want: Vec<&str> = all
            .iter()
            .filter(|r| from.is_none_or(|f| r.created_at_ms >= f) && before.is_none_or(|b| r.created_at_ms < b))
            .map(|r| r.id.as_str())
            .collect();
        let window = ProcessFilter {
            created_from_ms: from,
            created_before_ms: before,
            ..any.clone()
        };
        let got: Vec<String> = listed(window).await.into_iter().map(|r| r.id).collect();
        assert!(!want.is_empty(), "{from:?}..{before:?}");
        assert_eq!(got, want, "{from:?}..{before:?}");
    }
    let waiting: Vec<String> = listed(ProcessFilter {
        waiting: Some(true),
        ..any.clone()
    })
    .await
    .into_iter()
    .map(|r| r.id)
    .collect();
    assert_eq!(waiting, ["p05", "p21"]);
    for index in ["processes_created", "processes_waiting"] {
        let plan = testing::listing_plan(
            &schema.url,
            &schema.name,
            &ProcessFilter::from_json(if index == "processes_created" {
                json!({"status": "any", "created_from_ms": 1})
            } else {
                json!({"status": "any", "waiting": true})
            })
            .expect("filter"),
        )
        .await
        .expect("plan");
        assert!(plan.contains(index), "{index}:\n{plan}");
    }
}
