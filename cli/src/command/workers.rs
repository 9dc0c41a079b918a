//! `workers`: the worker registry, alive or dead.

use super::Ctx;
use crate::database::Db;
use crate::error::CliError;
use crate::output::{self, Table};
use durable_jobs::WorkerInfo;

/// The workers as a table.
pub fn table(workers: &[WorkerInfo]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "HOST",
        "PID",
        "QUEUES",
        "LAST SEEN",
        "STARTED",
        "VERSION",
    ]);
    for w in workers {
        let r = &w.record;
        let queues: Vec<String> = r
            .queues
            .iter()
            .map(|q| format!("{}:{}", q.name, q.concurrency))
            .collect();
        t.row(vec![
            output::clean(&r.name),
            if w.dead { "dead" } else { "alive" }.to_string(),
            output::clean(&r.host),
            r.pid.to_string(),
            output::list(&queues),
            output::time(r.last_seen),
            output::time(r.started_at),
            output::clean(&r.version),
        ]);
    }
    t
}

/// "2 workers: 1 alive, 1 dead".
pub fn headline(workers: &[WorkerInfo]) -> String {
    let dead = workers.iter().filter(|w| w.dead).count();
    format!(
        "{} worker{}: {} alive, {dead} dead",
        workers.len(),
        if workers.len() == 1 { "" } else { "s" },
        workers.len() - dead
    )
}

/// `workers`.
pub async fn run(db: &Db, ctx: Ctx) -> Result<(), CliError> {
    let workers = db.queue.workers().await?;
    if ctx.json {
        return output::print_json(&serde_json::json!({ "workers": workers }));
    }
    if workers.is_empty() {
        output::print("no workers registered\n");
    } else {
        output::print(&format!(
            "{}\n{}",
            headline(&workers),
            table(&workers).render(0)
        ));
    }
    Ok(())
}
