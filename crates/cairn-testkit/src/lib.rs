//! The cairn backend conformance suite.
//!
//! Every [`ProcessRegistry`] backend runs the same contracts. A backend supplies a
//! [`StoreFactory`]: something that, given a [`ManualClock`], builds a fresh, empty
//! store reading time from that clock. Then its `tests/conformance.rs` is:
//!
//! ```no_run
//! use std::sync::Arc;
//! use cairn_core::{ManualClock, MemoryRegistry};
//! use cairn_testkit::TestStore;
//!
//! async fn store(clock: ManualClock) -> TestStore {
//!     TestStore::new(Arc::new(MemoryRegistry::with_clock(Arc::new(clock.clone()))), clock)
//! }
//!
//! cairn_testkit::conformance_suite!(store);
//! ```
//!
//! The macro expands to a module `conformance` with one `#[test]` per contract in
//! [`contracts`] (each on its own multi-threaded tokio runtime, failing as hung
//! after [`CONTRACT_TIMEOUT`]) plus the property test
//! [`property::random_operation_sequences`], which runs random operation
//! sequences against the store and the memory registry as a reference model.
//! Contracts can also be called one by one: each is a `pub async fn(&dyn StoreFactory)`.
//! A unit test checks that every contract is listed in its suite macro.
//!
//! A store that needs to keep something alive for the length of a test (a temp
//! dir, a database handle) puts it in [`TestStore::guard`].

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use cairn_core::{ManualClock, ProcessRegistry};

pub mod builders;
pub mod contracts;
pub mod execution;
mod execution_children;
pub mod fake_openai;
pub mod harness;
pub mod probe;
pub mod property;
pub mod scheduled;

pub use builders::*;
pub use harness::{assert_fold, expect_code, Folded, Harness, StoreSnapshot};

/// A fresh store under test.
pub struct TestStore {
    /// The backend, empty.
    pub registry: Arc<dyn ProcessRegistry>,
    /// The clock the backend reads; tests move it with [`ManualClock::advance`].
    pub clock: ManualClock,
    /// Kept alive until the test ends (a temp dir, a database, ...).
    pub guard: Option<Box<dyn Any + Send + Sync>>,
}

impl TestStore {
    /// A store without a guard.
    pub fn new(registry: Arc<dyn ProcessRegistry>, clock: ManualClock) -> Self {
        Self {
            registry,
            clock,
            guard: None,
        }
    }

    /// Keep `guard` alive as long as the store.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }
}

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Builds a fresh, empty store on the given clock.
///
/// Implemented for every `Fn(ManualClock) -> impl Future<Output = TestStore>`,
/// so an `async fn store(clock: ManualClock) -> TestStore` is a factory. For a
/// closure, wrap it in [`factory`] so its argument type is inferred.
pub trait StoreFactory: Send + Sync {
    fn create(&self, clock: ManualClock) -> BoxFuture<TestStore>;
}

impl<F, Fut> StoreFactory for F
where
    F: Fn(ManualClock) -> Fut + Send + Sync,
    Fut: Future<Output = TestStore> + Send + 'static,
{
    fn create(&self, clock: ManualClock) -> BoxFuture<TestStore> {
        Box::pin(self(clock))
    }
}

/// Identity helper that lets a closure factory's argument type be inferred:
/// `cairn_testkit::factory(|clock| async move { ... })`.
pub fn factory<F, Fut>(f: F) -> F
where
    F: Fn(ManualClock) -> Fut + Send + Sync,
    Fut: Future<Output = TestStore> + Send + 'static,
{
    f
}

/// How long one contract may take before it fails as hung. Generous: the
/// slowest contract (500 processes over two workers on PostgreSQL) takes
/// seconds; a run that never ends (a worker that never notices a lost lease,
/// an await that is never woken) must fail the suite, naming itself, not hang it.
pub const CONTRACT_TIMEOUT: Duration = Duration::from_secs(120);

/// Run one contract on a fresh multi-threaded runtime, failing it when it
/// takes longer than [`CONTRACT_TIMEOUT`].
///
/// # Panics
/// When the runtime cannot be built, when the contract fails, or when it hangs.
pub fn run<Fut: Future<Output = ()>>(contract: Fut) {
    run_contract("contract", CONTRACT_TIMEOUT, contract);
}

/// Run the contract `name` like [`run`] under its own time bound (used by the
/// suite macros, so a hung contract fails with its name).
///
/// # Panics
/// When the runtime cannot be built, when the contract fails, or when it does
/// not finish within `limit`.
pub fn run_contract<Fut: Future<Output = ()>>(name: &str, limit: Duration, contract: Fut) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("build a tokio runtime for a conformance contract");
    let finished = runtime.block_on(async { tokio::time::timeout(limit, contract).await });
    if finished.is_err() {
        // Tasks the contract left behind may never end; do not wait for them.
        runtime.shutdown_timeout(Duration::from_secs(1));
        panic!("`{name}` did not finish within {limit:?}: it hangs");
    }
}

/// Expands to a module with one `#[test]` per conformance contract.
///
/// `conformance_suite!(factory_expr)` names the module `conformance`;
/// `conformance_suite!(mod_name, factory_expr)` names it yourself (to run the suite
/// more than once in one file). `factory_expr` is evaluated once per test and must
/// implement [`StoreFactory`]; items of the calling module are in scope.
///
/// `conformance_suite!(mod_name, factory_expr, enabled = bool_expr)` evaluates
/// `bool_expr` at the start of every test and returns early when it is false:
/// for backends that need an external server, whose `bool_expr` says loudly
/// why the test is skipped (or fails when skipping is not allowed).
///
/// `..., skip_when = cfg_predicate` (after `property`) marks every test
/// `#[ignore]` when the predicate holds at build time, so a backend whose
/// server was not configured shows its tests as ignored, never as passed.
///
/// `..., property = property_expr` (a [`property::Property`]) sets how many
/// random sequences the property test runs and whether it compares with the
/// memory reference (default: 64 cases, compared).
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr $(,)?) => {
        $crate::conformance_suite!(conformance, $factory);
    };
    ($module:ident, $factory:expr $(,)?) => {
        $crate::conformance_suite!($module, $factory, enabled = true);
    };
    ($module:ident, $factory:expr, enabled = $enabled:expr $(,)?) => {
        $crate::conformance_suite!(
            $module,
            $factory,
            enabled = $enabled,
            property = $crate::property::Property::default()
        );
    };
    ($module:ident, $factory:expr, enabled = $enabled:expr, property = $property:expr $(,)?) => {
        $crate::conformance_suite!(
            $module,
            $factory,
            enabled = $enabled,
            property = $property,
            skip_when = any()
        );
    };
    (
        $module:ident,
        $factory:expr,
        enabled = $enabled:expr,
        property = $property:expr,
        skip_when = $skip:meta $(,)?
    ) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::__conformance_tests!($factory, $enabled, $skip;
                // registration
                register_creates_running_record,
                register_is_idempotent,
                register_child_is_fenced_by_the_parents_lease,
                register_does_not_reapply_grant,
                register_conflict_changes_nothing,
                registration_hash_is_stable,
                register_rejects_bad_ids,
                register_rejects_duplicate_event_types,
                register_rejects_reserved_event_types,
                register_rejects_bad_event_type_names,
                register_rejects_uncompilable_schema,
                register_rejects_over_deep_declarations,
                register_rejects_bad_semantics,
                register_rejects_bad_signal_declarations,
                register_requires_stored_env,
                register_with_grant,
                unknown_ids_are_unknown_process,
                // events
                append_declared_event,
                append_rejects_undeclared_type,
                append_rejects_schema_violation,
                append_rejects_oversize_payload,
                append_rejects_over_deep_payload,
                append_rejects_reserved_types,
                terminal_append_needs_authority,
                producer_terminal_type_ends_process,
                replay_key_is_idempotent,
                a_replay_key_with_a_control_character_is_refused,
                replay_key_conflict,
                cairns_own_replay_keys_are_refused_on_other_appends,
                sequences_are_gap_free_and_ordered,
                events_after_pages,
                events_after_rejects_bad_page_sizes,
                terminal_is_write_once,
                wait_state_is_folded,
                caused_by_lists_children,
                suspension_releases_the_lease,
                signal_wakes_a_suspension,
                wait_refuses_a_stale_view,
                timer_is_due_at_its_deadline,
                abandon_request_on_a_suspension_is_due_at_once,
                work_is_served_in_the_order_it_became_claimable,
                abandon_requests_are_listed_in_the_order_they_became_due,
                signal_wait_deadline_times_out,
                cancel_wakes_a_suspension,
                only_rerunnable_processes_suspend,
                next_due_names_lease_expiry,
                gauges_count_the_live_state,
                children_all_wakes_on_the_last_end,
                a_resumption_repeated_is_written_once,
                a_swept_child_wakes_its_parent,
                children_any_wakes_on_the_first_end,
                children_wait_checks_its_children,
                children_wait_deadline_times_out,
                cancel_of_an_ended_parent_reaches_its_running_children,
                a_wait_naming_other_signals_wakes_on_any_of_them,
                cancel_reaches_the_tree_in_one_write,
                a_child_of_a_cancelled_parent_is_born_cancelled,
                a_child_names_an_existing_parent,
                tree_cancel_races_child_starts,
                signals_are_implicitly_declared,
                // wakes
                wake_delivery_is_written,
                wake_dedupe_and_ack,
                wake_when_false_writes_no_wake,
                wake_needs_a_target,
                wake_target_needs_wake_semantics,
                wake_default_dedupe_is_per_event,
                rendered_keys_never_meet_event_identities,
                pending_wakes_order_and_paging,
                pending_wakes_stop_at_the_page_bytes,
                frame_wakes_are_read_past_other_frames,
                // cancellation
                cancel_never_claimed_ends_at_once,
                cancel_started_records_request_only,
                cancel_is_idempotent_per_reason,
                a_cancel_reason_past_the_limit_changes_nothing,
                cancel_externally_owned_records_request_only,
                cancel_after_lease_lapse_follows_disposition,
                // sessions and grants
                grant_and_revoke,
                grant_descriptors_are_checked,
                transfer_moves_grants_only,
                transfer_replaces_and_reports_in_order,
                granted_and_originated_lenses,
                delete_session_reports_and_never_cancels,
                delete_session_keeping_frames_keeps_the_frames_grants,
                // filters
                list_status_filter,
                list_filters,
                list_paging,
                lens_listings_apply_filters,
                filter_parsing_errors,
                listings_check_a_filter_built_in_code,
                // newest-first listings
                newest_first_pages_each_record_once,
                lens_listings_page_newest_first,
                a_newest_cursor_naming_no_process_is_invalid_page,
                newest_first_by_status_over_a_long_history,
                list_order_parsing,
                // leases
                claim_is_exclusive_under_race,
                claim_batch_never_double_claims,
                claim_held_by_other_owner,
                claim_writes_no_event,
                own_lease_reclaim,
                expired_lease_reclaimed_with_higher_fencing_token,
                stale_lease_is_fenced,
                renew_extends_live_lease_only,
                release_frees_lease,
                claim_batch_marks_started,
                register_claimed_claims_what_it_creates,
                owner_bound_started_is_not_claimable,
                not_claimable_dispositions,
                record_started_is_fenced,
                complete_writes_each_outcome,
                worklist_contents,
                worklist_is_bounded,
                // abandon and external completion
                request_abandon_is_an_event,
                abandon_worklist_is_not_hidden_by_queued_work,
                reconcile_abandon_waits_for_lease,
                live_owner_may_finish_despite_abandon_request,
                complete_external_only_for_externally_owned,
                appended_terminal_is_checked_as_a_completion,
                // node identities and the sweep
                register_node_counts_incarnations,
                sweep_abandons_an_earlier_incarnations_work,
                the_leases_of_earlier_incarnations_are_found_and_released,
                sweep_never_takes_a_live_incarnations_work,
                // retention and change feed
                prune_leaves_tombstones,
                prune_never_touches_running,
                prune_respects_cutoff_and_status,
                prune_by_filter,
                prune_respects_watermark,
                prune_keeps_the_ended_children_of_a_running_parent,
                prune_keeps_the_ancestors_of_a_running_process,
                a_prune_walks_every_chunk_past_what_it_keeps,
                prune_keeps_the_scopes_that_held_a_grant,
                prune_collects_what_no_process_names,
                change_feed_order_and_paging,
                change_feed_dedupes_to_latest,
                change_head_is_where_the_feed_ends,
                // environments
                env_store_round_trip,
                // schedules
                schedules_round_trip,
                schedule_advance_is_compare_and_set,
                // script modules
                module_store_round_trip,
            );

            #[test]
            #[cfg_attr($skip, ignore = "its backend's server is not configured: see the backend crate's tests")]
            fn random_operation_sequences() {
                if !$enabled {
                    return;
                }
                let factory = $factory;
                $crate::property::random_operation_sequences_with(&factory, $property);
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($factory:expr, $enabled:expr, $skip:meta; $($name:ident),* $(,)?) => {
        $(
            #[test]
            #[cfg_attr($skip, ignore = "its backend's server is not configured: see the backend crate's tests")]
            fn $name() {
                if !$enabled {
                    return;
                }
                let factory = $factory;
                $crate::run_contract(
                    stringify!($name),
                    $crate::CONTRACT_TIMEOUT,
                    async move { $crate::contracts::$name(&factory).await },
                );
            }
        )*
    };
}

/// Expands to a module with one `#[test]` per execution contract (worker,
/// recovery, awaiter, built-in tools); same forms as [`conformance_suite!`]
/// (with `skip_when` right after `enabled`, and no `property`).
#[macro_export]
macro_rules! execution_suite {
    ($factory:expr $(,)?) => {
        $crate::execution_suite!(execution, $factory);
    };
    ($module:ident, $factory:expr $(,)?) => {
        $crate::execution_suite!($module, $factory, enabled = true);
    };
    ($module:ident, $factory:expr, enabled = $enabled:expr $(,)?) => {
        $crate::execution_suite!($module, $factory, enabled = $enabled, skip_when = any());
    };
    ($module:ident, $factory:expr, enabled = $enabled:expr, skip_when = $skip:meta $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            $crate::__execution_tests!($factory, $enabled, $skip;
                shell_output_in_order_and_exit_code,
                a_shell_commands_last_lines_survive_slow_appends,
                a_shell_output_append_the_store_fails_is_tried_again,
                a_shell_batch_cut_off_by_its_timeout_is_still_appended,
                shell_failure_is_exit_status,
                cancel_running_shell_kills_child,
                cancel_before_start_is_immediate,
                a_refused_start_stores_no_env,
                a_start_whose_caller_goes_still_runs_what_it_claimed,
                an_owner_bound_start_whose_answer_was_lost_is_abandoned,
                a_tools_own_event_types_are_written_only_by_its_run,
                wait_signal_resumes_with_payload,
                a_signal_at_the_payload_limits_is_returned,
                an_owner_bound_signal_in_time_is_not_timed_out,
                rerunnable_reruns_after_lease_expiry,
                a_burst_of_abandon_requests_is_reconciled_in_one_drive,
                owner_bound_started_is_never_rerun,
                a_start_claims_into_an_idle_slot,
                a_full_worker_runs_queued_work_as_slots_free,
                a_start_racing_a_drive_leaves_no_claim_without_a_slot,
                a_claim_waiting_for_a_slot_outlives_a_failed_renewal,
                an_owner_bound_claim_lapsed_waiting_for_a_slot_is_abandoned,
                a_claim_made_before_claiming_stopped_still_runs,
                a_run_the_store_failed_is_run_again,
                an_owner_bound_run_cut_off_from_the_store_is_abandoned,
                an_owner_bound_outcome_that_cannot_be_written_is_abandoned,
                an_owner_bound_run_ending_past_its_lease_is_abandoned,
                a_drained_worker_stops_filing_abandon_requests,
                a_claim_waiting_for_a_slot_sees_a_cancel_before_it_runs,
                a_drain_waits_for_a_claim_waiting_for_a_slot,
                a_drain_waits_for_a_drive_claiming,
                an_await_of_an_end_just_written_here_reads_nothing,
                externally_owned_is_never_claimed,
                revenant_worker_cannot_write,
                restarted_node_sweeps_its_earlier_incarnation,
                an_earlier_incarnation_stops_claiming_before_its_next_sweep,
                worker_losing_lease_stops_run,
                a_run_whose_renewals_fail_stops_when_its_lease_lapses,
                a_run_whose_renewals_hang_stops_when_its_lease_lapses,
                a_failed_drive_is_tried_again_before_the_sweep,
                a_completion_the_store_fails_is_tried_again,
                a_run_whose_reads_the_store_fails_runs,
                a_claim_whose_reads_outlast_its_lease_does_not_run,
                a_claim_whose_lease_lapsed_before_its_run_does_not_run,
                two_workers_run_each_process_once,
                drain_abandons_owner_bound_and_hands_over_rerunnable,
                await_resolves_through_hub,
                await_resolves_from_the_ending_write,
                await_event_past_an_ended_log_answers_terminal,
                await_resolves_without_hub,
                await_terminal_and_timeout,
                start_rejects_bad_tool_input,
                an_outcome_over_the_size_limit_fails_the_process,
                event_sink_receives_events,
                terminal_only_sink_receives_the_ends,
                end_sink_hears_each_end_once,
                suspended_wait_frees_its_worker_slot,
                durable_sleep_resumes_at_its_due_time,
                a_sleep_whose_wait_came_late_ends_on_time,
                cancel_resumes_a_suspended_run,
                hub_fed_await_does_not_poll,
                cancel_reaches_running_children,
                parent_suspends_until_its_children_end,
                the_sink_receives_the_wake_a_childs_end_wrote,
                a_wake_a_cancel_wrote_is_sunk_once,
                a_wait_that_timed_out_unrecorded_replays_as_timed_out,
                an_owner_bound_wait_for_a_child_that_ends_late_times_out,
                a_sessions_process_acts_only_for_that_session,
                a_hosts_process_is_told_what_it_awaits_is_not_its_child,
                a_sessions_store_wait_refuses_a_non_child_as_unknown,
                cancel_all_requests_each_running_process_once,
                a_transferred_parents_children_go_to_its_new_holder,
                a_deleted_sessions_process_has_its_children_granted_to_none,
                a_childs_wake_target_is_confined_to_its_parents_holders,
                a_parent_transferred_as_its_child_starts_gives_the_child_to_its_new_holder,
                a_rerun_finds_its_child_though_its_start_would_now_be_refused,
                a_child_id_another_registration_took_is_refused_to_the_parent,
                input_runner_runs_its_kind,
                // schedules (scheduled.rs)
                every_fires_on_time_once_per_fire,
                a_fire_whose_advance_failed_refires_the_same_process,
                skip_skips_while_the_last_run_is_running,
                pause_and_resume,
                a_pause_landing_after_the_due_read_wins,
                one_catch_up_after_downtime,
                only_the_fire_that_advances_counts_what_it_passed_over,
                a_refused_fire_is_recorded_until_one_starts,
                a_fire_made_before_a_crash_is_not_refused_again,
                schedule_rejects_bad_input,
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __execution_tests {
    ($factory:expr, $enabled:expr, $skip:meta; $($name:ident),* $(,)?) => {
        $(
            #[test]
            #[cfg_attr($skip, ignore = "its backend's server is not configured: see the backend crate's tests")]
            fn $name() {
                if !$enabled {
                    return;
                }
                let factory = $factory;
                $crate::run_contract(
                    stringify!($name),
                    $crate::CONTRACT_TIMEOUT,
                    async move { $crate::execution::$name(&factory).await },
                );
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// The names of the `pub async fn`s in `files` (every one is a contract).
    fn contracts_in(files: &[std::path::PathBuf]) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            for line in text.lines() {
                if let Some(rest) = line.trim_start().strip_prefix("pub async fn ") {
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    names.insert(name);
                }
            }
        }
        names
    }

    /// The names listed in this file's invocation of `macro_name!(...)`.
    fn listed_in(macro_name: &str) -> BTreeSet<String> {
        let source = include_str!("lib.rs");
        let call = format!("{macro_name}!($factory, $enabled, $skip;");
        let start = source.find(&call).unwrap_or_else(|| panic!("no `{call}` in lib.rs")) + call.len();
        let end = start + source[start..].find(");").expect("the list ends");
        source[start..end]
            .lines()
            .map(|l| l.split("//").next().unwrap_or("").trim().trim_end_matches(','))
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("read the contracts directory")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        files.sort();
        files
    }

    /// A contract written but not listed in its suite macro would never run on
    /// any backend: every `pub async fn` of `contracts/` and `execution.rs` is listed.
    #[test]
    fn every_contract_is_listed_in_its_suite_macro() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for (files, macro_name) in [
            (rust_files(&src.join("contracts")), "__conformance_tests"),
            (
                vec![
                    src.join("execution.rs"),
                    src.join("execution_children.rs"),
                    src.join("scheduled.rs"),
                ],
                "__execution_tests",
            ),
        ] {
            let written = contracts_in(&files);
            let listed = listed_in(&format!("$crate::{macro_name}"));
            assert!(written.len() > 10, "found only {written:?}");
            let missing: Vec<_> = written.difference(&listed).collect();
            assert!(
                missing.is_empty(),
                "contracts missing from `{macro_name}!`: {missing:?}"
            );
        }
    }
}
