//! `enqueue` and `signal`: writing to jobs from outside a worker.

use super::Ctx;
use crate::cli::{EnqueueArgs, SignalArgs};
use crate::database::Db;
use crate::error::CliError;
use crate::output;
use durable_jobs::{Error, JobOptions};
use serde_json::Value;

/// `enqueue TASK [--payload JSON] [--queue Q] [--priority N] [--delay D] [--key K]`.
pub async fn enqueue(db: &Db, args: EnqueueArgs, ctx: Ctx) -> Result<(), CliError> {
    let mut options = JobOptions::new();
    if let Some(q) = &args.queue {
        options = options.queue(q.clone());
    }
    if let Some(p) = args.priority {
        options = options.priority(p);
    }
    if let Some(d) = args.delay {
        options = options.delay(d);
    }
    if let Some(k) = &args.key {
        options = options.dedupe_key(k.clone());
    }
    if let Some(r) = args.retries {
        options = options.retries(r);
    }
    for tag in &args.tags {
        options = options.tag(tag.clone());
    }
    for (key, value) in args.meta {
        options = options.meta(key, value);
    }
    let payload = args.payload.unwrap_or(Value::Null);
    // This process registers no handlers, so nothing can check the payload against the
    // task's argument type: build the job from options alone (what `Queue::enqueue_raw`
    // does) and insert it, keeping whether a job key deduplicated it.
    let job = options.build(&args.task, payload)?;
    output::note(&format!(
        "note: the payload is not checked against a handler for `{}` (none is known here); \
         a worker fails the job if its arguments do not fit",
        output::clean(&args.task)
    ));
    let enqueued = db.queue.enqueue_job(job).await?;
    if ctx.json {
        return output::print_json(&serde_json::json!({
            "id": enqueued.id,
            "created": enqueued.created,
        }));
    }
    let line = if enqueued.created {
        format!("enqueued job {}\n", enqueued.id)
    } else {
        format!(
            "job {} already holds key `{}`: nothing new was enqueued\n",
            enqueued.id,
            output::clean(args.key.as_deref().unwrap_or_default())
        )
    };
    output::print(&line);
    Ok(())
}

/// `signal ID NAME [--payload JSON]`.
pub async fn signal(db: &Db, args: SignalArgs, ctx: Ctx) -> Result<(), CliError> {
    let payload = args.payload.unwrap_or(Value::Null);
    match db.queue.signal(args.id, &args.name, &payload).await {
        Ok(()) => {}
        Err(Error::JobNotFound(id)) => {
            return Err(CliError::NotFound(format!("job {id} not found")))
        }
        Err(Error::JobFinished { job_id, status }) => {
            return Err(CliError::Refused(format!(
                "job {job_id} has finished ({status}): it can no longer receive signals"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    if ctx.json {
        return output::print_json(&serde_json::json!({
            "id": args.id,
            "signal": args.name,
            "sent": true,
        }));
    }
    output::print(&format!(
        "sent signal `{}` to job {}\n",
        output::clean(&args.name),
        args.id
    ));
    Ok(())
}
