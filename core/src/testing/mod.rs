//! Test support (feature `testing`): the storage conformance suite every backend runs,
//! and helpers for users' own tests.

pub mod conformance;
pub mod delete_conformance;
pub mod engine;
pub mod engine_observability;
pub mod flow_conformance;
pub mod metadata_conformance;
pub mod observability_conformance;
pub mod operations_conformance;
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

/// Expands to one `#[test]` per conformance case for a [`ConformanceHarness`] type.
///
/// ```ignore
/// durable_jobs::storage_conformance_tests!(MyHarness);
/// ```
#[macro_export]
macro_rules! storage_conformance_tests {
    ($harness:ty) => {
        $crate::__conformance_cases!(conformance, $harness;
            claims_by_priority_then_run_at_then_id,
            delayed_job_invisible_until_due,
            dequeue_filters_queues_and_tasks,
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
    };
}

/// Expands to one `#[test]` per workflow conformance case (suspend, children, signals,
/// subtree cancellation, deletion) for a [`ConformanceHarness`].
#[macro_export]
macro_rules! storage_workflow_conformance_tests {
    ($harness:ty) => {
        $crate::__conformance_cases!(workflow_conformance, $harness;
            suspended_job_wakes_at_its_time,
            suspended_job_without_timer_waits_for_a_signal,
            wake_while_running_is_not_lost,
            signals_are_consumed_once_in_order,
            stale_lease_cannot_suspend_spawn_or_take,
            signal_to_finished_or_missing_job_is_refused,
            spawn_children_writes_children_and_checkpoint,
            child_final_write_wakes_waiting_parent,
            cancel_cascades_to_descendants,
            delete_job_removes_job_and_checkpoints,
        );
    };
}

/// Expands to one `#[test]` per engine conformance case: the workflow primitives
/// (steps, calls, sleep, signals, children, bundles, cancellation, versioning) driven
/// through a real queue and worker on the harness's storage.
#[macro_export]
macro_rules! engine_conformance_tests {
    ($harness:ty) => {
        $crate::__conformance_cases!(engine, $harness;
            step_runs_once_across_retries,
            retried_workflow_runs_only_unfinished_calls,
            sleep_frees_the_slot_and_resumes_on_time,
            signals_wake_waiting_jobs_in_order,
            signal_timeout_gives_up_at_a_fixed_deadline,
            peek_and_drain_signals,
            fan_out_collects_results_in_order,
            fan_out_fail_fast_cancels_the_rest,
            fan_out_threshold,
            bundles_report_when_done,
            cancel_reaches_children_and_running_handlers,
            versioning_keeps_old_runs_on_their_branch,
            handlers_finish_whether_or_not_they_wait,
            slow_first_polls_move_later_handlers_to_tasks,
            heartbeats_renew_running_and_buffered_leases,
        );
        $crate::__conformance_cases!(engine_observability, $harness;
            worker_registers_renews_and_leaves,
            dead_workers_show_as_dead_then_go,
            reclaimed_leases_are_events,
            suspend_cancel_and_schedule_ticks_are_events,
        );
    };
}

/// Expands to one `#[test]` per operations conformance case (job-key modes, serial keys,
/// flags, paused queues, schedules, management calls) for a [`ConformanceHarness`].
#[macro_export]
macro_rules! storage_operations_conformance_tests {
    ($harness:ty) => {
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
    };
}

/// Expands to one `#[test]` per engine operations case: schedules racing across
/// schedulers, catch-up, no-overlap, pause and validation; serial keys through a worker;
/// retrying a failed workflow by hand.
#[macro_export]
macro_rules! engine_operations_conformance_tests {
    ($harness:ty) => {
        $crate::__conformance_cases!(engine, $harness;
            racing_schedulers_enqueue_each_tick_once,
            missed_ticks_follow_the_catch_up_rule,
            schedules_no_overlap_pause_and_validation,
            serial_keys_run_one_at_a_time_through_the_worker,
            retry_by_hand_keeps_or_drops_checkpoints,
        );
    };
}

/// Expands to one `#[test]` per metadata conformance case (stored at enqueue, read
/// back, matched by key and value) for a [`ConformanceHarness`].
#[macro_export]
macro_rules! storage_metadata_conformance_tests {
    ($harness:ty) => {
        $crate::__conformance_cases!(metadata_conformance, $harness;
            metadata_is_stored_and_read_back,
            list_filters_by_metadata_key_and_value,
        );
    };
}

/// Expands to one `#[test]` per delete-by-filter conformance case (bounded batches,
/// every filter term, never a running job, children only with their root) for a
/// [`ConformanceHarness`].
#[macro_export]
macro_rules! storage_delete_conformance_tests {
    ($harness:ty) => {
        $crate::__conformance_cases!(delete_conformance, $harness;
            delete_jobs_runs_in_bounded_batches,
            delete_jobs_honours_every_filter_term,
            delete_jobs_never_deletes_a_running_job,
            delete_jobs_takes_children_only_with_their_root,
        );
    };
}

/// Expands to one `#[test]` per flow-control conformance case (running caps per key,
/// rate limits per queue) for a [`ConformanceHarness`].
#[macro_export]
macro_rules! storage_flow_conformance_tests {
    ($harness:ty) => {
        $crate::__conformance_cases!(flow_conformance, $harness;
            key_limit_caps_running_jobs_per_key,
            queue_rate_limit_caps_starts_per_window,
        );
    };
}

/// Expands each named case of a conformance module into a `#[test]` that runs it on a
/// fresh harness. Used by the public conformance macros.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($module:ident, $harness:ty; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::testing::run_case::<$harness, _>(|h| {
                    Box::pin($crate::testing::$module::$case(h))
                });
            }
        )*
    };
}
