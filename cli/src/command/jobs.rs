//! `jobs list` and `jobs show`.

use super::Ctx;
use crate::cli::ListArgs;
use crate::database::Db;
use crate::error::CliError;
use crate::output::{self, Table};
use durable_jobs::manage::DETAILS_CHILDREN_LIMIT;
use durable_jobs::{Checkpoint, CheckpointOutcome, Job, JobFilter, JobId};
use serde_json::{json, Value};

/// `jobs list`.
pub async fn list(db: &Db, args: ListArgs, ctx: Ctx) -> Result<(), CliError> {
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let filter = JobFilter {
        statuses: args.status,
        queue: args.queue,
        task: args.task,
        parent_id: args.parent,
        tag: args.tag,
        metadata: args.meta,
        after_id: args.after,
        limit: Some(limit),
        ..JobFilter::default()
    };
    let jobs = db.queue.list_jobs(filter).await?;
    // A full page may have a next one; a short page is the last.
    let next_after = (jobs.len() >= limit)
        .then(|| jobs.last().map(|j| j.id))
        .flatten();
    if ctx.json {
        return output::print_json(&json!({ "jobs": jobs, "next_after": next_after }));
    }
    if jobs.is_empty() {
        output::print("no jobs match\n");
        return Ok(());
    }
    output::print(&table(&jobs).render(0));
    if let Some(after) = next_after {
        output::note(&format!(
            "showing {} jobs; the next page: add --after {after}",
            jobs.len()
        ));
    }
    Ok(())
}

/// Jobs as a table.
pub fn table(jobs: &[Job]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "STATUS",
        "QUEUE",
        "TASK",
        "ATTEMPT",
        "PRI",
        "RUN AT",
        "UPDATED",
        "LAST ERROR",
    ]);
    for j in jobs {
        t.row(vec![
            j.id.to_string(),
            j.status.to_string(),
            output::clean(&j.queue),
            output::clean(&j.task),
            format!("{}/{}", j.attempt, j.max_attempts),
            j.priority.to_string(),
            output::time(j.run_at),
            output::time(j.updated_at),
            j.last_error
                .as_deref()
                .map_or_else(|| "-".into(), |e| output::clip(e, 60)),
        ]);
    }
    t
}

/// What kind of workflow step a checkpoint records, from the name the engine gives it.
pub fn checkpoint_kind(name: &str) -> &'static str {
    match name.split_once(':').map_or(name, |(prefix, _)| prefix) {
        "sleep" => "sleep",
        "signal" => "signal",
        "signal-deadline" => "signal timeout",
        "spawn" => "children",
        "join" => "join",
        "version" => "version",
        _ => "call/step",
    }
}

fn checkpoint_json(c: &Checkpoint) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("kind".into(), json!(checkpoint_kind(&c.name)));
    }
    v
}

/// `jobs show ID`.
pub async fn show(db: &Db, id: JobId, ctx: Ctx) -> Result<(), CliError> {
    let Some(details) = db.queue.job_details(id).await? else {
        return Err(CliError::NotFound(format!(
            "job {id} not found: see `durable-jobs jobs list`"
        )));
    };
    let job = &details.job;
    let children_cut = details.children.len() >= DETAILS_CHILDREN_LIMIT;
    if ctx.json {
        return output::print_json(&json!({
            "job": job,
            "attempts": details.attempts,
            "checkpoints": details.checkpoints.iter().map(checkpoint_json).collect::<Vec<_>>(),
            "children": details.children,
            "children_truncated": children_cut,
        }));
    }
    let mut text = format!("job {}  {}\n", job.id, job.status);
    let mut fields = Table::new(&["", ""]);
    let mut field = |name: &str, value: String| fields.row(vec![name.to_string(), value]);
    field("task", output::clean(&job.task));
    field("queue", output::clean(&job.queue));
    field("priority", job.priority.to_string());
    field(
        "attempt",
        format!("{} of {}", job.attempt, job.max_attempts),
    );
    field("run at", output::time(job.run_at));
    field("created", output::time(job.created_at));
    field("started", output::opt_time(job.started_at));
    field("finished", output::opt_time(job.completed_at));
    field("updated", output::time(job.updated_at));
    field("parent", output::opt(job.parent_id));
    field("tags", output::list(&job.tags));
    field("flags", output::list(&job.flags));
    field(
        "metadata",
        if job.metadata.is_empty() {
            "-".into()
        } else {
            output::clean(&serde_json::Value::Object(job.metadata.clone()).to_string())
        },
    );
    field("key", output::opt(job.dedupe_key.as_deref()));
    field("serial key", output::opt(job.serial_key.as_deref()));
    field(
        "timeout",
        job.timeout()
            .map_or_else(|| "-".into(), crate::duration::format_duration),
    );
    if let Some(lease) = &job.lease {
        field(
            "lease",
            format!(
                "held by {} until {}",
                output::clean(&lease.holder),
                output::time(lease.expires_at)
            ),
        );
    }
    field("trace", output::opt(job.trace_context.as_deref()));
    // The field table has no header row.
    let rendered = fields.render(2);
    text.push_str(rendered.split_once('\n').map_or("", |(_, rest)| rest));

    text.push_str("\npayload:\n");
    text.push_str(&output::json_block(&job.payload, 2));
    text.push_str("\nresult:\n");
    match &job.result {
        Some(r) => text.push_str(&output::json_block(r, 2)),
        None => text.push_str("  -\n"),
    }
    // Only jobs whose handler reported progress show it, the last report.
    if let Some(p) = &job.progress {
        text.push_str("\nprogress:\n");
        text.push_str(&output::json_block(p, 2));
    }
    text.push_str("\nlast error:\n");
    match &job.last_error {
        Some(e) => text.push_str(&output::indent_block(&output::clean_keep_lines(e), 2)),
        None => text.push_str("  -\n"),
    }

    text.push_str(&format!("\nattempts ({}):\n", details.attempts.len()));
    if !details.attempts.is_empty() {
        let mut t = Table::new(&[
            "#", "OUTCOME", "WORKER", "STARTED", "FINISHED", "TOOK", "ERROR",
        ]);
        for a in &details.attempts {
            let took = a.finished_at.map_or_else(
                || "-".into(),
                |end| {
                    (end - a.started_at)
                        .to_std()
                        .map_or_else(|_| "-".into(), crate::duration::format_duration)
                },
            );
            t.row(vec![
                a.attempt.to_string(),
                a.outcome.to_string(),
                output::opt(a.worker.as_deref()),
                output::time(a.started_at),
                output::opt_time(a.finished_at),
                took,
                a.error
                    .as_deref()
                    .map_or_else(|| "-".into(), |e| output::clip(e, 60)),
            ]);
        }
        text.push_str(&t.render(2));
    }

    text.push_str(&format!("\ncheckpoints ({}):\n", details.checkpoints.len()));
    if !details.checkpoints.is_empty() {
        let mut t = Table::new(&["KEY", "AT", "KIND", "NAME", "OUTCOME"]);
        for c in &details.checkpoints {
            let outcome = match &c.outcome {
                CheckpointOutcome::Ok(v) => format!("ok {}", output::clip(&v.to_string(), 60)),
                CheckpointOutcome::Err(e) => format!("error {}", output::clip(e, 60)),
            };
            t.row(vec![
                output::clean(&c.key),
                output::opt_time(c.created_at),
                checkpoint_kind(&c.name).to_string(),
                output::clean(&c.name),
                outcome,
            ]);
        }
        text.push_str(&t.render(2));
    }

    text.push_str(&format!(
        "\nchildren ({}{}):\n",
        details.children.len(),
        if children_cut { "+" } else { "" }
    ));
    if !details.children.is_empty() {
        text.push_str(&table(&details.children).render(2));
    }
    if children_cut {
        text.push_str(&format!(
            "  more: `durable-jobs jobs list --parent {id} --after {}`\n",
            details.children.last().map_or(0, |c| c.id)
        ));
    }
    output::print(&text);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::checkpoint_kind;

    #[test]
    fn checkpoint_names_map_to_kinds() {
        assert_eq!(checkpoint_kind("sleep"), "sleep");
        assert_eq!(checkpoint_kind("signal:shipped"), "signal");
        assert_eq!(checkpoint_kind("signal-deadline:shipped"), "signal timeout");
        assert_eq!(checkpoint_kind("spawn:notify"), "children");
        assert_eq!(checkpoint_kind("join:notify"), "join");
        assert_eq!(checkpoint_kind("charge"), "call/step");
    }
}
