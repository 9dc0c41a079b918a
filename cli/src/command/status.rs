//! `status`: queues with counts by status, paused queues, workers and schedules.

use super::{queues, schedules, workers, Ctx};
use crate::database::Db;
use crate::error::CliError;
use crate::output;

/// `status`.
pub async fn run(db: &Db, ctx: Ctx) -> Result<(), CliError> {
    let counts = db.queue.counts().await?;
    let paused = db.queue.paused_queues().await?;
    let worker_list = db.queue.workers().await?;
    let schedule_list = schedules::views(db).await?;
    let queue_list = queues::summaries(&counts, &paused);
    if ctx.json {
        return output::print_json(&serde_json::json!({
            "queues": queue_list,
            "paused_queues": paused,
            "workers": worker_list,
            "schedules": schedule_list,
        }));
    }
    let mut text = String::new();
    let total: u64 = queue_list.iter().map(|q| q.total).sum();
    text.push_str(&format!("Queues ({total} jobs)\n"));
    if queue_list.is_empty() {
        text.push_str("  none\n");
    } else {
        text.push_str(&queues::table(&queue_list).render(2));
    }
    text.push_str(&format!(
        "\nPaused queues: {}\n",
        if paused.is_empty() {
            "none".to_string()
        } else {
            output::clean(&paused.join(", "))
        }
    ));
    if worker_list.is_empty() {
        text.push_str("\nWorkers: none registered\n");
    } else {
        text.push_str(&format!(
            "\nWorkers ({})\n",
            workers::headline(&worker_list)
        ));
        text.push_str(&workers::table(&worker_list).render(2));
    }
    if schedule_list.is_empty() {
        text.push_str("\nSchedules: none\n");
    } else {
        text.push_str(&format!("\nSchedules ({})\n", schedule_list.len()));
        text.push_str(&schedules::table(&schedule_list).render(2));
    }
    output::print(&text);
    Ok(())
}
