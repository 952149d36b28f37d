use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::ManualClock;
use cairn_sqlite::SqliteRegistry;
use cairn_testkit::{execution, StoreFactory, TestStore};

struct Sqlite;

#[async_trait]
impl StoreFactory for Sqlite {
    async fn open(&self, clock: ManualClock) -> TestStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = SqliteRegistry::open(dir.path().join("cairn.db"), Arc::new(clock.clone())).expect("open");
        TestStore {
            registry: Arc::new(registry),
            clock,
            guard: Some(Box::new(dir)),
        }
    }
}

macro_rules! t {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() { execution::$name(&Sqlite).await; }
    )*};
}

t!(
    cancel_before_start_is_immediate,
    wait_signal_resumes_with_payload,
    rerunnable_reruns_after_lease_expiry,
    owner_bound_started_is_never_rerun,
    externally_owned_is_never_claimed,
    revenant_worker_cannot_write,
    worker_losing_lease_stops_run,
    two_workers_run_each_process_once,
    drain_abandons_owner_bound_and_hands_over_rerunnable,
    await_resolves_through_hub,
    await_resolves_without_hub,
    await_terminal_and_timeout,
    start_rejects_bad_tool_input,
    event_sink_receives_events
);
