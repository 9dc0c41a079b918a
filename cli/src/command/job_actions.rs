//! `jobs retry|cancel|delete|purge`.

use super::{for_each_job, Ctx};
use crate::cli::DeleteArgs;
use crate::database::Db;
use crate::duration::format_duration;
use crate::error::CliError;
use crate::output;
use durable_jobs::{Error, Job, JobFilter, JobId, JobStatus};
use std::time::Duration;

/// How many jobs one purge page reads.
const PURGE_PAGE: usize = 500;

async fn existing(db: &Db, id: JobId) -> Result<Job, CliError> {
    db.queue.get_job(id).await?.ok_or_else(|| not_found(id))
}

fn not_found(id: JobId) -> CliError {
    CliError::NotFound(format!("job {id} not found"))
}

/// `jobs retry ID... [--keep-checkpoints]`.
pub async fn retry(
    db: &Db,
    ids: &[JobId],
    keep_checkpoints: bool,
    ctx: Ctx,
) -> Result<(), CliError> {
    for_each_job(ids, "retry", ctx, |id| async move {
        let job = existing(db, id).await?;
        if !matches!(job.status, JobStatus::Failed | JobStatus::Cancelled) {
            return Err(CliError::Refused(format!(
                "job {id} is {}: only failed or cancelled jobs can be retried",
                job.status
            )));
        }
        match db.queue.retry_jobs(&[id], keep_checkpoints).await? {
            0 => Err(CliError::Refused(format!(
                "job {id} changed while retrying it; check it with `durable-jobs jobs show {id}`"
            ))),
            _ if keep_checkpoints => Ok(format!(
                "retried job {id} (pending; a workflow resumes after its finished steps)"
            )),
            _ => Ok(format!("retried job {id} (pending, from scratch)")),
        }
    })
    .await
}

/// `jobs cancel ID...`.
pub async fn cancel(db: &Db, ids: &[JobId], ctx: Ctx) -> Result<(), CliError> {
    for_each_job(ids, "cancel", ctx, |id| async move {
        let job = existing(db, id).await?;
        if job.status.is_finished() {
            return Err(CliError::Refused(format!(
                "job {id} is already {}: nothing to cancel",
                job.status
            )));
        }
        match db.queue.cancel(id).await {
            Ok(true) => Ok(format!("cancelled job {id} (was {})", job.status)),
            Ok(false) => Err(CliError::Refused(format!(
                "job {id} finished before it could be cancelled"
            ))),
            Err(Error::JobNotFound(_)) => Err(not_found(id)),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// `jobs delete ID...`.
pub async fn delete(db: &Db, ids: &[JobId], ctx: Ctx) -> Result<(), CliError> {
    for_each_job(ids, "delete", ctx, |id| async move {
        let job = existing(db, id).await?;
        if job.status == JobStatus::Running {
            return Err(running_refusal(id));
        }
        match db.queue.delete_job(id).await {
            Ok(true) => Ok(format!("deleted job {id} (was {})", job.status)),
            Ok(false) => Err(not_found(id)),
            Err(Error::InvalidState { .. }) => Err(running_refusal(id)),
            Err(e) => Err(e.into()),
        }
    })
    .await
}

/// `jobs delete --status ... --older-than ... [--yes]`: without `--yes`, counts what the
/// filters match and deletes nothing.
pub async fn delete_matching(db: &Db, args: DeleteArgs, ctx: Ctx) -> Result<(), CliError> {
    let created_before = match args.older_than {
        None => None,
        Some(age) => {
            let now = db.storage().now().await?;
            let age = chrono::Duration::from_std(age)
                .map_err(|_| CliError::Usage("--older-than is too long".into()))?;
            Some(now - age)
        }
    };
    let filter = JobFilter {
        statuses: args.status,
        queue: args.queue,
        task: args.task,
        tag: args.tag,
        metadata: args.meta,
        created_before,
        ..JobFilter::default()
    };
    if !args.yes {
        let matching = count_matching(db, &filter).await?;
        return Err(CliError::Refused(format!(
            "{matching} job{} match (running jobs and children of a live parent never are \
             deleted; a deleted job takes its children with it): add --yes to delete them",
            if matching == 1 { "" } else { "s" }
        )));
    }
    let batch = usize::try_from(args.batch_size).unwrap_or(usize::MAX);
    let deleted = db.queue.delete_jobs(filter, batch).await?;
    if ctx.json {
        return output::print_json(&serde_json::json!({ "deleted": deleted }));
    }
    output::print(&format!(
        "deleted {deleted} job{}\n",
        if deleted == 1 { "" } else { "s" }
    ));
    Ok(())
}

/// How many jobs a delete's filter matches and could take (not running), page by page.
async fn count_matching(db: &Db, filter: &JobFilter) -> Result<u64, CliError> {
    let mut matching = 0;
    let mut after_id = None;
    loop {
        let page = db
            .queue
            .list_jobs(JobFilter {
                after_id,
                limit: Some(PURGE_PAGE),
                ..filter.clone()
            })
            .await?;
        matching += page
            .iter()
            .filter(|j| j.status != JobStatus::Running)
            .count() as u64;
        if page.len() < PURGE_PAGE {
            return Ok(matching);
        }
        after_id = page.last().map(|j| j.id);
    }
}

fn running_refusal(id: JobId) -> CliError {
    CliError::Refused(format!(
        "job {id} is running and cannot be deleted: cancel it first (`durable-jobs jobs cancel {id}`)"
    ))
}

/// `jobs purge --older-than DURATION [--status S]`.
pub async fn purge(
    db: &Db,
    older_than: Duration,
    status: Option<JobStatus>,
    ctx: Ctx,
) -> Result<(), CliError> {
    let purged = match status {
        None => db.queue.purge_finished(older_than).await?,
        Some(status) => purge_status(db, older_than, status).await?,
    };
    if ctx.json {
        return output::print_json(&serde_json::json!({
            "purged": purged,
            "older_than": format_duration(older_than),
            "status": status.map(JobStatus::as_str),
        }));
    }
    let which = status.map_or_else(|| "finished".to_string(), |s| s.to_string());
    output::print(&format!(
        "purged {purged} {which} job{} that finished more than {} ago\n",
        if purged == 1 { "" } else { "s" },
        format_duration(older_than)
    ));
    Ok(())
}

/// Deletes jobs of one finished status that finished before now - `older_than` (the
/// storage clock), page by page. The storage's own purge takes every finished status.
async fn purge_status(db: &Db, older_than: Duration, status: JobStatus) -> Result<u64, CliError> {
    let now = db.storage().now().await?;
    let age = chrono::Duration::from_std(older_than)
        .map_err(|_| CliError::Usage("--older-than is too long".into()))?;
    let cutoff = now - age;
    let mut purged = 0;
    let mut after_id = None;
    loop {
        let page = db
            .queue
            .list_jobs(JobFilter {
                statuses: vec![status],
                // A job that finished before the cutoff was created before it too.
                created_before: Some(cutoff),
                after_id,
                limit: Some(PURGE_PAGE),
                ..JobFilter::default()
            })
            .await?;
        for job in &page {
            if job.status.is_finished() && job.completed_at.is_some_and(|t| t < cutoff) {
                match db.queue.delete_job(job.id).await {
                    Ok(true) => purged += 1,
                    // Gone or restarted meanwhile: not ours to purge any more.
                    Ok(false) | Err(Error::InvalidState { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if page.len() < PURGE_PAGE {
            return Ok(purged);
        }
        after_id = page.last().map(|j| j.id);
    }
}
