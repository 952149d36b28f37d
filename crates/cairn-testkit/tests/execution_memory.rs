use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::{ManualClock, MemoryRegistry};
use cairn_testkit::{execution, StoreFactory, TestStore};

struct Memory;

#[async_trait]
impl StoreFactory for Memory {
    async fn open(&self, clock: ManualClock) -> TestStore {
        TestStore {
            registry: Arc::new(MemoryRegistry::with_clock(Arc::new(clock.clone()))),
            clock,
            guard: None,
        }
    }
}

macro_rules! t {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() { execution::$name(&Memory).await; }
    )*};
}

t!(
    shell_output_in_order_and_exit_code,
    shell_failure_is_exit_status,
    cancel_running_shell_kills_child,
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
