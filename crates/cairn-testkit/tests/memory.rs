//! The conformance suite against the in-memory registry.

use std::sync::Arc;

use cairn_core::{EnvSpec, ManualClock, MemoryRegistry, ProcessRegistry};
use cairn_testkit::TestStore;

async fn memory_store(clock: ManualClock) -> TestStore {
    TestStore::new(Arc::new(MemoryRegistry::with_clock(Arc::new(clock.clone()))), clock)
}

// Against itself the reference comparison proves nothing: the property test
// checks the invariants alone here.
cairn_testkit::conformance_suite!(
    conformance,
    memory_store,
    enabled = true,
    property = cairn_testkit::property::Property {
        cases: 64,
        reference: false,
    }
);

/// Stored env bytes that no longer match their address are `corrupt_env`
/// (memory only: other backends corrupt their storage their own way).
#[test]
fn corrupt_env_is_detected() {
    cairn_testkit::run(async {
        let registry = MemoryRegistry::with_clock(Arc::new(ManualClock::new(0)));
        let spec = EnvSpec {
            plugin_options: serde_json::json!({"image": "alpine"}),
            policy: serde_json::json!({}),
        };
        let env_ref = registry.put_env(&spec).await.expect("put_env");
        registry.corrupt_env_for_test(&env_ref, br#"{"plugin_options":{},"policy":{}}"#.to_vec());
        let err = registry
            .get_env(&env_ref)
            .await
            .expect_err("corrupt bytes must not load");
        assert_eq!(err.code(), "corrupt_env");
    });
}

cairn_testkit::execution_suite!(memory_store);

/// An awaiter passes over a notice of a sequence it has read already (on
/// PostgreSQL, the echo of this node's own commit, which the hub announced
/// at the commit) and reads again only for a change past it. A current-thread
/// runtime and an in-memory registry make "it did not read" exact: a woken
/// awaiter runs, and reads, whenever the test yields.
#[tokio::test(flavor = "current_thread")]
async fn an_awaiter_passes_over_a_notice_of_what_it_has_read() {
    use cairn_core::{Awaiter, ChangeHub, Outcome};
    let registry = Arc::new(MemoryRegistry::with_clock(Arc::new(ManualClock::new(1_000))));
    registry
        .register(cairn_testkit::builders::external("x"), None)
        .await
        .expect("register");
    let seen = registry.get("x").await.expect("get").last_sequence;
    let probe = cairn_testkit::probe::ReadProbe::new(registry.clone());
    let hub = ChangeHub::default();
    let awaiter = Awaiter::new(probe.clone(), Some(hub.clone()));
    let waiter = tokio::spawn(async move { awaiter.await_terminal("x").await });
    probe.answered_gets(1).await;
    let settle = || async {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    };
    for _ in 0..3 {
        hub.publish("x", seen);
        settle().await;
    }
    assert_eq!(
        *probe.gets().borrow(),
        1,
        "an echo of the sequence read made the awaiter read again"
    );
    registry
        .complete_external("x", Outcome::success(serde_json::json!(1)), "test")
        .await
        .expect("complete");
    // The change, then a late echo of the earlier sequence before the awaiter runs:
    // the notice it keeps carries the later one.
    hub.publish("x", seen + 1);
    hub.publish("x", seen);
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .expect("the later change was lost behind the echo")
        .expect("join")
        .expect("await");
    assert!(r.is_terminal(), "{r:?}");
    assert_eq!(*probe.gets().borrow(), 2);
}

/// A page of the change feed read in several chunks lists each record once,
/// at its latest change: one that changed between two chunk reads comes
/// again in the later chunk, and only that entry stays.
#[tokio::test]
async fn a_change_feed_page_lists_a_record_once_though_it_changed_between_chunks() {
    use cairn_core::{Outcome, ProcessRegistry, Processes};
    let registry = Arc::new(MemoryRegistry::with_clock(Arc::new(ManualClock::new(1_000))));
    let ids: Vec<String> = (0..20).map(|i| format!("x{i:02}")).collect();
    for id in &ids {
        registry
            .register(cairn_testkit::builders::external(id), None)
            .await
            .expect("register");
    }
    let probe = cairn_testkit::probe::ReadProbe::new(registry.clone());
    let p = Processes::builder(probe.clone()).without_worker().start();
    let inner = registry.clone();
    probe.after_next_changes(Box::new(move || {
        Box::pin(async move {
            inner
                .complete_external("x00", Outcome::success(serde_json::json!(1)), "test")
                .await
                .expect("complete");
        })
    }));
    let page = p.changed_since(0, Some(100)).await.expect("changes");
    let listed: Vec<&str> = page.changes.iter().map(|c| c.process.id.as_str()).collect();
    let mut want: Vec<&str> = ids[1..].iter().map(String::as_str).collect();
    want.push("x00");
    assert_eq!(listed, want, "each record once, at its latest change");
    assert!(page.changes.last().expect("x00").process.is_terminal());
    assert_eq!(page.next_cursor, page.changes.last().expect("x00").cursor);
}

/// A prune that removes a process collects, with the registry's grace, the
/// env spec no process names any more (ADR 0034): with a grace of 0 the
/// pruned process's env goes at once, a running process's stays; with the
/// default grace an env put within the hour stays, and so does one put just
/// before the prune for a registration that comes after it.
#[tokio::test]
async fn a_prune_collects_the_envs_its_processes_named_after_the_grace() {
    use cairn_core::{Clock, Outcome, StatusFilter, Watermark};
    use cairn_testkit::builders::external;
    let env = |task: &str| EnvSpec {
        plugin_options: serde_json::json!({ "cwd": format!("/work/{task}") }),
        policy: serde_json::json!({}),
    };
    let named = |id: &str, env_ref: &str| {
        let mut reg = external(id);
        reg.env_ref = Some(env_ref.to_string());
        reg
    };
    for (grace, collected) in [
        (std::time::Duration::ZERO, true),
        (std::time::Duration::from_secs(3600), false),
    ] {
        let clock = ManualClock::new(1_000);
        let registry = MemoryRegistry::with_clock(Arc::new(clock.clone())).with_collect_grace(grace);
        let (dead, live) = (
            registry.put_env(&env("dead")).await.expect("put"),
            registry.put_env(&env("live")).await.expect("put"),
        );
        registry.register(named("dead", &dead), None).await.expect("register");
        registry.register(named("live", &live), None).await.expect("register");
        registry
            .complete_external("dead", Outcome::success(serde_json::json!(1)), "test")
            .await
            .expect("complete");
        clock.advance(60_000);
        let next = registry.put_env(&env("next")).await.expect("put");
        let report = registry
            .prune(clock.now_ms(), StatusFilter::Any.into(), Watermark::NoProjector)
            .await
            .expect("prune");
        assert_eq!(report.pruned, 1);
        let dead_env = registry.get_env(&dead).await;
        match collected {
            true => assert_eq!(dead_env.expect_err("collected").code(), "unknown_env"),
            false => assert_eq!(dead_env.expect("kept within the grace"), env("dead")),
        }
        registry.get_env(&live).await.expect("a running process's env stays");
        if !collected {
            registry.get_env(&next).await.expect("put within the grace");
            registry
                .register(named("next", &next), None)
                .await
                .expect("a registration after the prune names the env put before it");
        }
    }
}
