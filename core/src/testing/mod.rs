//! Test support (feature `testing`): the storage conformance suite every backend runs,
//! and helpers for users' own tests.

pub mod checkpoint_conformance;
pub mod conformance;
pub mod delete_conformance;
pub mod determinism_conformance;
pub mod engine_calls;
pub mod engine_children;
pub mod engine_events;
pub mod engine_execution;
pub mod engine_idle;
pub mod engine_observability;
pub mod engine_prefetch;
pub mod engine_retries;
pub mod engine_schedules;
pub mod engine_shutdown;
pub mod engine_waits;
pub mod fault;
pub mod flow_conformance;
pub mod kit;
pub mod metadata_conformance;
pub mod observability_conformance;
pub mod operations_conformance;
pub mod progress_conformance;
pub mod results_conformance;
pub mod retention_conformance;
pub mod simulation;
pub mod snooze_conformance;
mod support;
pub mod timeline_conformance;
pub mod workflow_conformance;

use crate::storage::DynStorage;
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// What a backend provides to run the conformance suite: a fresh, migrated, isolated
/// storage per test (its own schema, file or instance) and a way to move its time.
#[async_trait]
pub trait ConformanceHarness: Send + Sync + Sized + 'static {
    /// A fresh storage, migrated, sharing nothing with other tests.
    async fn setup() -> Self;
    /// The storage under test.
    fn storage(&self) -> DynStorage;
    /// Moves the storage's notion of time forward by `by`, as if that much time passed.
    async fn advance(&self, by: Duration);
    /// Removes what `setup` created.
    async fn teardown(self);

    /// Marks `job` finished with `status` (completed, failed or cancelled, now) the way a
    /// write from outside the library would: an operator's hand edit, or a crash of a
    /// version that wrote in two steps. It wakes nobody, its parent included, which is
    /// the state the healing sweep of [`crate::Storage::release_stale_locks`] repairs.
    /// Returns false where the harness cannot write past its storage (cases that need it
    /// then stop there, and say so on stderr).
    async fn finish_out_of_band(&self, job: crate::JobId, status: crate::JobStatus) -> bool {
        let _ = (job, status);
        false
    }
}

/// Runs one conformance case on a fresh multi-thread runtime: setup, case, teardown.
/// Teardown runs even when the case fails, and the failure is then re-raised.
pub fn run_case<H, F>(case: F)
where
    H: ConformanceHarness,
    F: for<'a> FnOnce(&'a H) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime for the conformance case");
    rt.block_on(async move {
        let h = H::setup().await;
        let outcome = CatchUnwind(case(&h)).await;
        h.teardown().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    });
}

/// Polls a future, catching a panic from it (a tiny `catch_unwind` for futures), so the
/// harness can tear down before the failure is re-raised.
struct CatchUnwind<F: ?Sized>(Pin<Box<F>>);

impl<F: Future<Output = ()> + ?Sized> Future for CatchUnwind<F> {
    type Output = std::thread::Result<()>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(())) => std::task::Poll::Ready(Ok(())),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(p) => std::task::Poll::Ready(Err(p)),
        }
    }
}

/// Expands to one `#[test]` per conformance case, every suite, for a
/// [`ConformanceHarness`] type: the storage contract (claims, leases, workflows,
/// operations, observability, timelines) called directly, and the engine (a real
/// [`crate::Queue`] and [`crate::Worker`]) on top of it. This is the one entry point a
/// backend needs; each suite's cases land in a module named for the suite, so
/// `cargo nextest run engine_retries::` runs one concern.
///
/// ```ignore
/// durable_jobs::conformance_tests!(MyHarness);
/// ```
///
/// A new conformance file adds its cases here with one `__conformance_cases!` line (its
/// module, then its cases); backends change nothing.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:ty) => {
        $crate::__conformance_cases!(conformance, $harness;
            claims_by_priority_then_run_at_then_id,
            delayed_job_invisible_until_due,
            dequeue_filters_queues_and_tasks,
            a_claim_of_several_queues_keeps_claim_order_across_them,
            concurrent_dequeuers_never_claim_a_job_twice,
            complete_stores_result,
            complete_many_fences_each_item,
            stale_lease_cannot_complete,
            stale_lease_cannot_fail,
            stale_lease_cannot_heartbeat,
            stale_lease_cannot_checkpoint,
            expired_lease_is_reclaimed,
            heartbeat_keeps_lease_alive,
            heartbeat_many_renews_each_held_lease,
            reclaim_with_attempts_exhausted_fails_job,
            retry_then_terminal_failure,
            release_does_not_spend_an_attempt,
            checkpoints_roundtrip,
            dedupe_key_returns_existing_unfinished_job,
            enqueue_many_keeps_order_and_dedupes,
            list_jobs_filters_and_paginates,
            counts_per_queue_and_status,
            cancel_pending_and_running_jobs,
            get_missing_job_is_none,
        );
        $crate::__conformance_cases!(observability_conformance, $harness;
            worker_registry_records_renews_and_removes,
            trace_context_is_stored_with_the_job,
            release_stale_locks_reports_released_jobs,
        );
        $crate::__conformance_cases!(timeline_conformance, $harness;
            job_carries_parent_tags_flags_and_serial_key,
            attempt_history_records_each_attempt,
            attempt_history_records_reclaims_cancels_and_goes_with_the_job,
            finished_counts_since_a_time,
        );
        $crate::__conformance_cases!(workflow_conformance, $harness;
            suspended_job_wakes_at_its_time,
            suspended_job_without_timer_waits_for_a_signal,
            wake_while_running_is_not_lost,
            signals_are_consumed_once_in_order,
            stale_lease_cannot_suspend_spawn_or_take,
            signal_to_finished_or_missing_job_is_refused,
            spawn_children_writes_children_and_checkpoint,
            bundle_with_a_deduplicated_parent_adds_no_children,
            child_final_write_wakes_waiting_parent,
            release_stale_locks_heals_parents_left_waiting,
            cancel_cascades_to_descendants,
            delete_job_removes_job_and_checkpoints,
        );
        $crate::__conformance_cases!(operations_conformance, $harness;
            job_key_replace_updates_the_waiting_job,
            job_key_preserve_run_at_keeps_the_time,
            job_key_with_a_running_holder,
            concurrent_enqueues_with_one_key_make_one_job,
            serial_key_runs_one_job_at_a_time,
            forbidden_flags_are_not_claimed,
            paused_queue_is_not_claimed,
            schedules_are_stored_paused_and_removed,
            advance_schedule_is_compare_and_set,
            retry_jobs_requeues_failed_jobs,
            reschedule_moves_a_waiting_job,
            finish_jobs_by_hand,
            purge_finished_removes_old_jobs,
            list_filters_by_tag_and_time,
        );
        $crate::__conformance_cases!(engine_execution, $harness;
            jobs_run_by_priority_then_age,
            delayed_jobs_wait_for_the_clock,
            every_registration_form_runs_and_stores_its_result,
            arguments_that_do_not_fit_are_refused_at_enqueue,
            payload_that_does_not_deserialize_fails_without_retry,
            dedupe_key_returns_the_existing_job,
            a_panicking_handler_fails_its_attempt_and_the_worker_lives_on,
            a_job_past_its_timeout_fails_the_attempt,
            each_queue_has_its_own_concurrency,
            serial_keys_run_one_at_a_time_through_the_worker,
            a_local_enqueue_wakes_an_idle_worker_at_once,
            handlers_finish_whether_or_not_they_wait,
            slow_first_polls_move_later_handlers_to_tasks,
            heartbeats_keep_a_long_job_leased,
            heartbeats_renew_running_and_buffered_leases,
            a_dead_workers_job_is_reclaimed_and_its_lease_fenced,
            job_context_reports_the_attempt,
            a_blocking_handler_past_its_timeout_holds_its_lease_until_it_returns,
        );
        $crate::__conformance_cases!(engine_retries, $harness;
            retries_back_off_exponentially_then_fail_for_good,
            default_backoff_has_jitter_within_bounds,
            no_retry_fails_at_once,
            retry_after_sets_the_delay,
            a_per_task_policy_replaces_the_default,
            std_errors_convert_with_question_mark_and_retry,
            retry_by_hand_keeps_or_drops_checkpoints,
        );
        $crate::__conformance_cases!(engine_shutdown, $harness;
            shutdown_returns_unfinished_jobs_without_spending_an_attempt,
            a_handler_sees_cancellation_and_can_finish_within_the_grace_period,
            prefetched_jobs_run_and_are_released_unspent_at_shutdown,
            a_lost_lease_cancels_the_handler_and_drops_it_after_the_grace,
            a_blocking_handler_past_the_shutdown_grace_holds_its_lease_until_it_returns,
        );
        $crate::__conformance_cases!(engine_idle, $harness;
            a_drain_outlasts_an_empty_claim_that_a_handler_outran,
        );
        $crate::__conformance_cases!(engine_prefetch, $harness;
            a_buffered_job_whose_lease_was_lost_never_starts,
            a_buffered_job_whose_lease_ran_short_is_released_not_started,
            a_better_job_claimed_later_starts_before_the_buffered_ones,
        );
        $crate::__conformance_cases!(engine_events, $harness;
            hooks_see_start_complete_retry_and_fail,
            the_event_stream_reports_each_step_in_order,
            a_slow_subscriber_learns_it_missed_events,
        );
        $crate::__conformance_cases!(engine_calls, $harness;
            step_runs_once_across_retries,
            retried_workflow_runs_only_unfinished_calls,
            a_retried_workflow_runs_only_the_unfinished_calls,
            nested_calls_two_levels_deep_replay_correctly,
            a_partly_finished_nested_call_resumes_inside_itself,
            a_replay_that_meets_another_name_is_a_non_determinism_error,
            terminal_call_errors_are_checkpointed_and_retryable_ones_are_not,
            calling_an_unknown_task_fails_the_job_clearly,
            versioning_keeps_old_runs_on_their_branch,
        );
        $crate::__conformance_cases!(engine_waits, $harness;
            sleep_frees_the_slot_and_resumes_on_time,
            signals_wake_waiting_jobs_in_order,
            signal_timeout_gives_up_at_a_fixed_deadline,
            peek_and_drain_signals,
        );
        $crate::__conformance_cases!(engine_children, $harness;
            fan_out_collects_results_in_order,
            fan_out_fail_fast_cancels_the_rest,
            fan_out_threshold,
            bundles_report_when_done,
            cancel_reaches_children_and_running_handlers,
        );
        $crate::__conformance_cases!(engine_schedules, $harness;
            racing_schedulers_enqueue_each_tick_once,
            missed_ticks_follow_the_catch_up_rule,
            schedules_no_overlap_pause_and_validation,
        );
        $crate::__conformance_cases!(engine_observability, $harness;
            worker_registers_renews_and_leaves,
            dead_workers_show_as_dead_then_go,
            reclaimed_leases_are_events,
            suspend_cancel_and_schedule_ticks_are_events,
        );
        $crate::__conformance_cases!(results_conformance, $harness;
            wait_for_returns_the_typed_result,
            wait_for_reports_failure_with_the_last_error,
            wait_for_reports_cancellation,
            wait_for_times_out_and_reports_bad_ids_and_types,
            wait_for_wakes_on_the_storage_notification,
        );
        $crate::__conformance_cases!(snooze_conformance, $harness;
            snooze_reschedules_without_spending_an_attempt,
            snoozing_handler_runs_again_with_its_attempts_intact,
            snooze_limit_fails_the_job,
        );
        $crate::__conformance_cases!(progress_conformance, $harness;
            progress_is_stored_fenced_and_kept,
            handler_progress_is_an_event_and_in_job_details,
        );
        $crate::__conformance_cases!(determinism_conformance, $harness;
            argument_hashes_roundtrip_with_checkpoints,
            changed_arguments_fail_a_strict_replay,
            changed_arguments_warn_and_keep_the_stored_result,
            checkpoints_without_a_hash_are_not_checked,
        );
        $crate::__conformance_cases!(retention_conformance, $harness;
            retention_deletes_each_status_after_its_own_retention,
            retention_batches_are_bounded_and_oldest_first,
            large_retention_batches_delete_exactly_their_limit,
            retention_takes_children_with_their_root,
            racing_retention_batches_delete_each_job_once,
            retention_goes_by_the_latest_finish_of_a_job_retried_by_hand,
            worker_purges_by_its_policy,
        );
        $crate::__conformance_cases!(checkpoint_conformance, $harness;
            checkpoint_many_fences_each_item,
            concurrent_steps_are_stored_and_replayed,
            claims_say_no_checkpoints_only_for_jobs_that_hold_none,
        );
        $crate::__conformance_cases!(metadata_conformance, $harness;
            metadata_is_stored_and_read_back,
            list_filters_by_metadata_key_and_value,
        );
        $crate::__conformance_cases!(delete_conformance, $harness;
            delete_jobs_runs_in_bounded_batches,
            delete_jobs_honours_every_filter_term,
            delete_jobs_never_deletes_a_running_job,
            delete_jobs_takes_children_only_with_their_root,
        );
        $crate::__conformance_cases!(flow_conformance, $harness;
            key_limit_caps_running_jobs_per_key,
            a_keys_next_job_runs_however_its_slot_or_turn_is_given_up,
            a_keys_turn_passes_on_when_its_next_job_leaves_after_the_key_freed,
            a_key_with_room_serves_each_claimer_its_first_job,
            queue_rate_limit_caps_starts_per_window,
        );
    };
}

/// Expands each named case of a conformance module into a `#[test]` that runs it on a
/// fresh harness, inside a module named for the conformance module (so names stay unique
/// across suites and a filter can pick one suite).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($module:ident, $harness:ty; $($case:ident),* $(,)?) => {
        mod $module {
            // The harness is named where the entry point was invoked, one module up.
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $case() {
                    $crate::testing::run_case::<$harness, _>(|h| {
                        Box::pin($crate::testing::$module::$case(h))
                    });
                }
            )*
        }
    };
}
