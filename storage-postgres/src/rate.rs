//! Rate limits per queue: setting and listing them, and the claim of several queues when
//! one of them is limited. The single-queue claim enforces the limit itself (see
//! `sql::RATE_BUMP`); the several-queue claim has one LIMIT for all its queues, so when
//! one is limited each queue is claimed in turn instead.

use crate::error::db;
use crate::exec::{Exec, Fetch};
use crate::options::quote_ident;
use crate::storage::PostgresStorage;
use durable_jobs::{ClaimedJob, DequeueParams, RateLimit, Result, Storage};
use sqlx::AssertSqlSafe;
use std::time::Duration;

impl PostgresStorage {
    fn rate_table(&self) -> String {
        format!("{}.queue_rate_limits", quote_ident(self.schema()))
    }

    /// The rate-limited queues among `queues`.
    pub(crate) async fn rate_limited_among(&self, queues: &[String]) -> Result<Vec<String>> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT queue FROM {} WHERE queue = ANY($1::text[])",
            self.rate_table()
        )))
        .bind(queues)
        .fetch_all_on(self.db())
        .await
        .map_err(db)
    }

    /// Claims each queue in turn (each claim enforcing its queue's limit), up to
    /// `params.limit` in all, handed out in claim order.
    pub(crate) async fn dequeue_each(&self, params: DequeueParams) -> Result<Vec<ClaimedJob>> {
        let mut out: Vec<ClaimedJob> = Vec::new();
        for queue in &params.queues {
            let room = params.limit - out.len();
            if room == 0 {
                break;
            }
            let one = DequeueParams {
                queues: vec![queue.clone()],
                limit: room,
                ..params.clone()
            };
            out.extend(self.dequeue(one).await?);
        }
        out.sort_by(|a, b| {
            (std::cmp::Reverse(a.job.priority), a.job.run_at, a.job.id).cmp(&(
                std::cmp::Reverse(b.job.priority),
                b.job.run_at,
                b.job.id,
            ))
        });
        Ok(out)
    }

    /// Sets (keeping the current window and its count) or removes a queue's limit.
    pub(crate) async fn set_rate_limit_row(
        &self,
        queue: &str,
        limit: Option<RateLimit>,
    ) -> Result<()> {
        let table = self.rate_table();
        match limit {
            Some(l) => {
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO {table} (queue, max_starts, period_us) VALUES ($1, $2, $3) \
                     ON CONFLICT (queue) DO UPDATE SET max_starts = excluded.max_starts, \
                     period_us = excluded.period_us"
                )))
                .bind(queue)
                .bind(i32::try_from(l.max_starts).unwrap_or(i32::MAX))
                .bind(i64::try_from(l.period.as_micros()).unwrap_or(i64::MAX))
                .execute_on(self.db())
                .await
                .map_err(db)?;
            }
            None => {
                sqlx::query(AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE queue = $1"
                )))
                .bind(queue)
                .execute_on(self.db())
                .await
                .map_err(db)?;
            }
        }
        // A raised or removed limit may make jobs claimable now.
        self.wake_local();
        Ok(())
    }

    /// The rate-limited queues, by queue.
    pub(crate) async fn rate_limit_rows(&self) -> Result<Vec<(String, RateLimit)>> {
        let rows: Vec<(String, i32, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT queue, max_starts, period_us FROM {} ORDER BY queue",
            self.rate_table()
        )))
        .fetch_all_on(self.db())
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(queue, max_starts, period_us)| {
                let limit = RateLimit {
                    max_starts: u32::try_from(max_starts).unwrap_or(1),
                    period: Duration::from_micros(u64::try_from(period_us).unwrap_or(1)),
                };
                (queue, limit)
            })
            .collect())
    }
}
