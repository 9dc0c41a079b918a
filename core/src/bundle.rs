//! Bundles: jobs enqueued together and tracked as one unit, with no workflow parent.
//! The tracking job and its members are written in one storage transaction
//! ([`crate::Storage::enqueue_with_children`]): all of them or none.
//!
//! A bundle is a small tracking job (task [`BUNDLE_TASK`]) that is the parent of its
//! members. Each member's final write wakes it in the same transaction; when every member
//! has finished it records the outcome, emits [`Event::BundleFinished`] (and runs
//! `on_bundle_done` hooks), and, when asked, deletes the members of a bundle that
//! succeeded. Its status is the bundle's: completed when every member completed, failed
//! otherwise.

use crate::error::{Error, Result};
use crate::event::Event;
use crate::job::{far_future, JobId, JobStatus};
use crate::options::JobOptions;
use crate::queue::Queue;
use crate::storage::JobFilter;
use crate::storage::Storage;
use crate::task::TaskError;
use crate::trace;
use crate::workflow::JobContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;

/// The task name of bundle tracking jobs; every [`Queue`] registers it.
pub const BUNDLE_TASK: &str = "durable_jobs.bundle";

/// One job of a bundle.
#[derive(Debug, Clone)]
pub struct BundleItem {
    task: String,
    payload: Result<Value, String>,
    options: JobOptions,
}

impl BundleItem {
    /// A job of `task` with these arguments and options.
    pub fn new<A: Serialize + ?Sized>(task: &str, args: &A, options: JobOptions) -> Self {
        BundleItem {
            task: task.to_string(),
            payload: serde_json::to_value(args).map_err(|e| e.to_string()),
            options,
        }
    }
}

/// Options for a bundle.
#[derive(Debug, Clone, Default)]
pub struct BundleOptions {
    delete_on_success: bool,
    queue: Option<String>,
}

impl BundleOptions {
    /// Defaults: members are kept; the tracking job runs on the `default` queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deletes the members once the bundle succeeded (the tracking job keeps the summary).
    pub fn delete_on_success(mut self, yes: bool) -> Self {
        self.delete_on_success = yes;
        self
    }

    /// The queue the tracking job runs on; a worker must serve it. Defaults to `default`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
}

/// Where a bundle stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleStatus {
    /// The bundle's id (its tracking job).
    pub bundle_id: JobId,
    /// Completed when every member completed, failed when one did not, otherwise pending,
    /// running or waiting while members run.
    pub status: JobStatus,
    /// Members in all.
    pub total: usize,
    /// Members completed.
    pub completed: usize,
    /// Members failed.
    pub failed: usize,
    /// Members cancelled.
    pub cancelled: usize,
    /// Members not finished yet.
    pub unfinished: usize,
    /// Each member's id and status, in enqueue order.
    pub members: Vec<(JobId, JobStatus)>,
}

#[derive(Serialize, Deserialize)]
struct BundleArgs {
    delete_on_success: bool,
}

impl Queue {
    /// Enqueues `items` as one bundle and returns the bundle's id.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for an empty bundle; the same checks as
    /// [`Queue::enqueue`] for every item (nothing is enqueued if one fails).
    pub async fn enqueue_bundle(
        &self,
        items: Vec<BundleItem>,
        options: BundleOptions,
    ) -> Result<JobId> {
        if items.is_empty() {
            return Err(Error::InvalidOption {
                option: "bundle",
                message: "a bundle needs at least one job".into(),
            });
        }
        let mut jobs = Vec::with_capacity(items.len());
        for item in items {
            let payload = item.payload.map_err(|message| Error::InvalidPayload {
                task: item.task.clone(),
                message,
            })?;
            jobs.push(self.build_job(&item.task, payload, &item.options)?);
        }
        let mut tracker = JobOptions::new()
            .at(far_future())
            .retries(crate::options::MAX_RETRIES);
        if let Some(q) = options.queue {
            tracker = tracker.queue(q);
        }
        let args = serde_json::to_value(BundleArgs {
            delete_on_success: options.delete_on_success,
        })?;
        let mut tracker = tracker.build(BUNDLE_TASK, args)?;
        // One enqueue span for the whole bundle: the tracker and every member store its
        // trace context, so their attempts all continue the enqueuing trace.
        let (span, context) =
            trace::enqueue_span(BUNDLE_TASK, &tracker.queue, jobs.len() + 1, None);
        let traceparent = context.to_traceparent();
        tracker.trace_context = Some(traceparent.clone());
        async {
            for j in &mut jobs {
                j.trace_context = Some(traceparent.clone());
            }
            // One write: a crash part-way leaves no tracker without its members (which
            // would never finish) and no member without its tracker.
            let (bundle, _) = self.storage().enqueue_with_children(tracker, jobs).await?;
            self.wake();
            Ok(bundle.id)
        }
        .instrument(span)
        .await
    }

    /// Where the bundle stands.
    ///
    /// # Errors
    /// [`Error::JobNotFound`] when no bundle has this id; storage errors.
    pub async fn bundle_status(&self, bundle_id: JobId) -> Result<BundleStatus> {
        let job = self
            .get_job(bundle_id)
            .await?
            .filter(|j| j.task == BUNDLE_TASK)
            .ok_or(Error::JobNotFound(bundle_id))?;
        let members = children(self, bundle_id).await?;
        let count = |s: JobStatus| members.iter().filter(|(_, st)| *st == s).count();
        Ok(BundleStatus {
            bundle_id,
            status: job.status,
            total: members.len(),
            completed: count(JobStatus::Completed),
            failed: count(JobStatus::Failed),
            cancelled: count(JobStatus::Cancelled),
            unfinished: members.iter().filter(|(_, s)| !s.is_finished()).count(),
            members,
        })
    }

    /// Runs `hook` when a bundle finishes (succeeded or failed).
    pub fn on_bundle_done(&self, hook: impl Fn(&Event) + Send + Sync + 'static) -> &Self {
        self.add_bundle_hook(hook)
    }

    pub(crate) fn register_builtins(&self) {
        self.register(BUNDLE_TASK, |ctx: JobContext, args: BundleArgs| {
            run_bundle(ctx, args)
        });
    }
}

async fn children(queue: &Queue, parent: JobId) -> Result<Vec<(JobId, JobStatus)>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = queue
            .storage()
            .list_jobs(JobFilter {
                parent_id: Some(parent),
                after_id: after,
                limit: Some(1000),
                ..JobFilter::default()
            })
            .await?;
        let done = page.len() < 1000;
        after = page.last().map(|j| j.id);
        out.extend(page.into_iter().map(|j| (j.id, j.status)));
        if done {
            return Ok(out);
        }
    }
}

async fn run_bundle(ctx: JobContext, args: BundleArgs) -> Result<Value, TaskError> {
    let queue = ctx.queue().clone();
    let members = children(&queue, ctx.job_id())
        .await
        .map_err(TaskError::from_engine)?;
    if members.iter().any(|(_, s)| !s.is_finished()) {
        return Err(ctx.suspend_until(None));
    }
    let completed = members
        .iter()
        .filter(|(_, s)| *s == JobStatus::Completed)
        .count();
    let failed = members
        .iter()
        .filter(|(_, s)| *s == JobStatus::Failed)
        .count();
    let cancelled = members
        .iter()
        .filter(|(_, s)| *s == JobStatus::Cancelled)
        .count();
    let succeeded = completed == members.len();
    if succeeded && args.delete_on_success {
        for (id, _) in &members {
            queue
                .storage()
                .delete_job(*id)
                .await
                .map_err(TaskError::from_engine)?;
        }
    }
    queue.emit(Event::BundleFinished {
        bundle_id: ctx.job_id(),
        succeeded,
        completed,
        failed,
        cancelled,
    });
    let summary = serde_json::json!({
        "total": members.len(),
        "completed": completed,
        "failed": failed,
        "cancelled": cancelled,
        "deleted": succeeded && args.delete_on_success,
    });
    if succeeded {
        Ok(summary)
    } else {
        Err(TaskError::no_retry(format!(
            "bundle finished with {failed} failed and {cancelled} cancelled of {} jobs",
            members.len()
        )))
    }
}
