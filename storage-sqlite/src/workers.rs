//! The SQL behind the worker registry (`durable_jobs_workers`): register, touch,
//! deregister, list and prune. Like [`crate::query`], each function runs on the writer's
//! connection inside its transaction (or on a reader). `last_seen` always comes from the
//! storage's clock, passed in by the caller, never from the record.

use crate::error::{bad_json, QResult};
use crate::query::{micros, time};
use durable_jobs::{Error, WorkerQueue, WorkerRecord};
use rusqlite::{params, Connection};

/// A worker registering again under its name replaces its old record whole.
const REGISTER: &str = "INSERT OR REPLACE INTO durable_jobs_workers \
     (name, host, pid, queues, version, started_at, last_seen, lease_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const TOUCH: &str = "UPDATE durable_jobs_workers SET last_seen = ?2 WHERE name = ?1";

const DEREGISTER: &str = "DELETE FROM durable_jobs_workers WHERE name = ?1";

const LIST: &str = "SELECT name, host, pid, queues, version, started_at, last_seen, lease_ms \
     FROM durable_jobs_workers ORDER BY name";

const PRUNE: &str = "DELETE FROM durable_jobs_workers WHERE last_seen < ?1";

/// Records a worker (replacing one with the same name) as seen at `now`.
pub(crate) fn register_worker(conn: &Connection, w: &WorkerRecord, now: i64) -> QResult<()> {
    let queues = serde_json::to_string(&w.queues).map_err(Error::from)?;
    conn.prepare_cached(REGISTER)?.execute(params![
        w.name,
        w.host,
        w.pid,
        queues,
        w.version,
        micros(w.started_at),
        now,
        w.lease_ms,
    ])?;
    Ok(())
}

/// Marks a worker seen at `now`; false when none has this name.
pub(crate) fn touch_worker(conn: &Connection, name: &str, now: i64) -> QResult<bool> {
    Ok(conn.prepare_cached(TOUCH)?.execute(params![name, now])? > 0)
}

/// Removes a worker's record; false when none has this name.
pub(crate) fn deregister_worker(conn: &Connection, name: &str) -> QResult<bool> {
    Ok(conn.prepare_cached(DEREGISTER)?.execute([name])? > 0)
}

/// Every worker, by name.
pub(crate) fn list_workers(conn: &Connection) -> QResult<Vec<WorkerRecord>> {
    let mut stmt = conn.prepare_cached(LIST)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let queues: String = row.get(3)?;
        let queues: Vec<WorkerQueue> = serde_json::from_str(&queues)
            .map_err(|e| bad_json("durable_jobs_workers.queues", e))?;
        out.push(WorkerRecord {
            name: row.get(0)?,
            host: row.get(1)?,
            pid: row.get(2)?,
            queues,
            version: row.get(4)?,
            started_at: time("started_at", row.get(5)?)?,
            last_seen: time("last_seen", row.get(6)?)?,
            lease_ms: row.get(7)?,
        });
    }
    Ok(out)
}

/// Removes workers last seen before `before` (microseconds, rounded up by the caller so
/// that a stored time is before it exactly when the instant it stands for is).
pub(crate) fn prune_workers(conn: &Connection, before: i64) -> QResult<u64> {
    Ok(conn.prepare_cached(PRUNE)?.execute([before])? as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_queues_are_json() {
        let conn = Connection::open_in_memory().expect("open");
        crate::migrate::migrate(&conn, 0).expect("migrate");
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("time");
        let w = WorkerRecord {
            name: "w".into(),
            host: "h".into(),
            pid: u32::MAX,
            queues: vec![WorkerQueue {
                name: "default".into(),
                concurrency: 4,
            }],
            version: "0.1.0".into(),
            started_at: at,
            last_seen: chrono::DateTime::UNIX_EPOCH,
            lease_ms: 30_000,
        };
        register_worker(&conn, &w, micros(at) + 5).expect("register");
        let got = list_workers(&conn).expect("list");
        assert_eq!(
            got,
            vec![WorkerRecord {
                last_seen: at + chrono::Duration::microseconds(5),
                ..w
            }]
        );
        let text: String = conn
            .query_row("SELECT queues FROM durable_jobs_workers", [], |r| r.get(0))
            .expect("queues");
        assert_eq!(text, r#"[{"name":"default","concurrency":4}]"#);
    }
}
