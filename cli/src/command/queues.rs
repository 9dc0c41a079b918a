//! `queues list|pause|resume`, and the per-queue counts `status` shows.

use super::Ctx;
use crate::database::Db;
use crate::error::CliError;
use crate::output::{self, Table};
use durable_jobs::{JobStatus, QueueCount};
use serde::Serialize;
use std::collections::BTreeMap;

/// One queue: its job counts by status (zeros included) and whether it is paused.
#[derive(Debug, Clone, Serialize)]
pub struct QueueSummary {
    /// The queue's name.
    pub queue: String,
    /// True when workers do not claim from it.
    pub paused: bool,
    /// Jobs per status, every status present.
    pub counts: BTreeMap<&'static str, u64>,
    /// All its jobs.
    pub total: u64,
}

/// Queues by name: every queue that has jobs or is paused.
pub fn summaries(counts: &[QueueCount], paused: &[String]) -> Vec<QueueSummary> {
    fn entry<'a>(
        by_queue: &'a mut BTreeMap<String, QueueSummary>,
        name: &str,
    ) -> &'a mut QueueSummary {
        by_queue
            .entry(name.to_string())
            .or_insert_with(|| QueueSummary {
                queue: name.to_string(),
                paused: false,
                counts: JobStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
                total: 0,
            })
    }
    let mut by_queue = BTreeMap::new();
    for c in counts {
        let q = entry(&mut by_queue, &c.queue);
        *q.counts.entry(c.status.as_str()).or_insert(0) += c.count;
        q.total += c.count;
    }
    for name in paused {
        entry(&mut by_queue, name).paused = true;
    }
    by_queue.into_values().collect()
}

/// The queues as a table.
pub fn table(queues: &[QueueSummary]) -> Table {
    let mut headers = vec!["QUEUE", "PAUSED"];
    let upper: Vec<String> = JobStatus::ALL
        .iter()
        .map(|s| s.as_str().to_ascii_uppercase())
        .collect();
    headers.extend(upper.iter().map(String::as_str));
    headers.push("TOTAL");
    let mut t = Table::new(&headers);
    for q in queues {
        let mut row = vec![
            output::clean(&q.queue),
            if q.paused { "yes" } else { "no" }.to_string(),
        ];
        for s in JobStatus::ALL {
            row.push(q.counts.get(s.as_str()).copied().unwrap_or(0).to_string());
        }
        row.push(q.total.to_string());
        t.row(row);
    }
    t
}

/// `queues list`.
pub async fn list(db: &Db, ctx: Ctx) -> Result<(), CliError> {
    let counts = db.queue.counts().await?;
    let paused = db.queue.paused_queues().await?;
    let queues = summaries(&counts, &paused);
    if ctx.json {
        return output::print_json(&serde_json::json!({ "queues": queues }));
    }
    if queues.is_empty() {
        output::print("no queues: no jobs and nothing paused\n");
    } else {
        output::print(&table(&queues).render(0));
    }
    Ok(())
}

/// `queues pause NAME` and `queues resume NAME`.
pub async fn set_paused(db: &Db, name: &str, paused: bool, ctx: Ctx) -> Result<(), CliError> {
    let was_paused = db.queue.paused_queues().await?.iter().any(|q| q == name);
    if paused {
        db.queue.pause_queue(name).await?;
    } else {
        db.queue.resume_queue(name).await?;
    }
    let changed = was_paused != paused;
    if ctx.json {
        return output::print_json(&serde_json::json!({
            "queue": name,
            "paused": paused,
            "changed": changed,
        }));
    }
    let name = output::clean(name);
    let line = match (paused, changed) {
        (true, true) => {
            format!("paused queue {name}: workers claim nothing from it until it is resumed\n")
        }
        (true, false) => format!("queue {name} was already paused\n"),
        (false, true) => format!("resumed queue {name}\n"),
        (false, false) => format!("queue {name} was not paused\n"),
    };
    output::print(&line);
    Ok(())
}
