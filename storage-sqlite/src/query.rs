//! The SQL behind each storage call, run synchronously on a connection (the writer
//! thread's inside its transaction, or a reader's). Times are integer microseconds since
//! the Unix epoch, from the storage's clock.

use crate::error::{bad_json, QResult, QueryError};
use chrono::{DateTime, Utc};
use durable_jobs::{
    AttemptOutcome, AttemptRecord, Checkpoint, CheckpointOutcome, ClaimedJob, Completion,
    DequeueParams, Error, Failure, Job, JobId, JobStatus, Lease, LeaseInfo, QueueCount,
    ReleasedJob, StaleLocks, StorageErrorKind,
};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use serde_json::Value;
use std::sync::LazyLock;
use std::time::Duration;

/// Every job column, in the order [`job_from_row`] reads them (by position: the claim's
/// `RETURNING`, `get_job` and `list_jobs` all select exactly these).
pub(crate) const JOB_COLUMNS: &str =
    "id, task, payload, queue, priority, status, attempt, max_attempts, \
     run_at, lease_holder, lease_token, lease_expires_at, last_error, result, dedupe_key, \
     timeout_ms, created_at, started_at, completed_at, updated_at, trace_context, \
     parent_id, serial_key, flags, tags, progress, metadata";

pub(crate) const UNFINISHED: &str = "('pending', 'retrying', 'running', 'waiting')";

/// The fence every lease-holding write carries: same job, running, same token.
pub(crate) const FENCE: &str = "id = ?1 AND status = 'running' AND lease_token = ?2";

// Each statement that ends an attempt appends it to the job's history in the same
// write (`append_attempt!`): no extra statement, no extra round trip.

/// Completes one leased job, fenced. No `RETURNING`: SQLite would buffer it in a
/// temporary b-tree opened and closed per statement (and journal the statement), which
/// cost more than the update; a batch reads its jobs' parents once instead
/// ([`BATCH_PARENTS`]).
const COMPLETE: &str = concat!(
    "UPDATE durable_jobs SET status = 'completed', result = ?3, \
     completed_at = ?4, updated_at = ?4, ",
    append_attempt!("completed", "?4", "NULL"),
    ", lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?2"
);

/// The parents of a batch's jobs that have one: `?1` is a JSON array of job ids, each
/// found by its id.
const BATCH_PARENTS: &str = "SELECT id, parent_id FROM durable_jobs \
     WHERE id IN (SELECT value FROM json_each(?1)) AND parent_id IS NOT NULL";

const FAIL_RETRY: &str = concat!(
    "UPDATE durable_jobs SET status = 'retrying', last_error = ?3, \
     run_at = ?5, updated_at = ?4, ",
    append_attempt!("retrying", "?4", "?3"),
    ", lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?2"
);

const FAIL_TERMINAL: &str = concat!(
    "UPDATE durable_jobs SET status = 'failed', last_error = ?3, \
     completed_at = ?4, updated_at = ?4, ",
    append_attempt!("failed", "?4", "?3"),
    ", lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?2 \
     RETURNING parent_id"
);

const RELEASE: &str = concat!(
    "UPDATE durable_jobs SET attempt = attempt - 1, \
     status = CASE WHEN attempt - 1 > 0 THEN 'retrying' ELSE 'pending' END, \
     run_at = ?3, updated_at = ?3, ",
    append_attempt!("released", "?3", "NULL"),
    ", lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?2"
);

/// Snoozes: like `RELEASE`, but due at `?4` and recorded as `snoozed`.
const SNOOZE: &str = concat!(
    "UPDATE durable_jobs SET attempt = attempt - 1, \
     status = CASE WHEN attempt - 1 > 0 THEN 'retrying' ELSE 'pending' END, \
     run_at = ?4, updated_at = ?3, ",
    append_attempt!("snoozed", "?3", "NULL"),
    ", lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?2"
);

/// Stores a running job's progress. Fenced.
const SET_PROGRESS: &str = "UPDATE durable_jobs SET progress = ?3, updated_at = ?4 \
     WHERE id = ?1 AND status = 'running' AND lease_token = ?2";

const HEARTBEAT: &str = "UPDATE durable_jobs SET lease_expires_at = ?3, updated_at = ?4 \
     WHERE id = ?1 AND status = 'running' AND lease_token = ?2";

const RECLAIM: &str = concat!(
    "UPDATE durable_jobs SET \
     status = CASE WHEN attempt < max_attempts THEN 'retrying' ELSE 'failed' END, \
     run_at = CASE WHEN attempt < max_attempts THEN ?1 ELSE run_at END, \
     completed_at = CASE WHEN attempt < max_attempts THEN NULL ELSE ?1 END, \
     last_error = 'lease expired: the worker stopped heartbeating', ",
    append_attempt!(
        "reclaimed",
        "?1",
        "'lease expired: the worker stopped heartbeating'"
    ),
    ", updated_at = ?1, lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL \
     WHERE status = 'running' AND lease_expires_at <= ?1 \
     RETURNING id, queue, task, attempt, status, parent_id"
);

/// A claimed row that does not decode (a payload that is not JSON, a value of the wrong
/// type, written by another tool) fails at once, its attempt recorded as failed, inside
/// the claim's transaction: it never reaches a worker and never blocks the claim again.
/// `?4` is the claim's lease token, so only the row this claim just took is touched.
const FAIL_CORRUPT: &str = concat!(
    "UPDATE durable_jobs SET status = 'failed', last_error = ?3, \
     completed_at = ?2, updated_at = ?2, ",
    append_attempt!("failed", "?2", "?3"),
    ", lease_holder = NULL, lease_token = NULL, \
     lease_expires_at = NULL WHERE id = ?1 AND status = 'running' AND lease_token = ?4 \
     RETURNING CASE WHEN typeof(parent_id) = 'integer' THEN parent_id END"
);

const SAVE_CHECKPOINT: &str = "INSERT OR REPLACE INTO durable_jobs_checkpoints \
     (job_id, key, name, ok, value, created_at, args_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// The history and what the current attempt needs, without the job's other columns (so
/// a row whose payload does not decode still shows its attempts).
const ATTEMPTS: &str = "SELECT attempts, status, attempt, lease_holder, started_at, updated_at \
     FROM durable_jobs WHERE id = ?1";

/// Finished jobs per queue and final status since a time: reads only the covering,
/// partial index of finished jobs (its WHERE matches this status term word for word).
pub(crate) const FINISHED_COUNTS: &str = "SELECT queue, status, count(*) FROM durable_jobs \
     WHERE (status = 'completed' OR status = 'failed' OR status = 'cancelled') AND completed_at >= ?1 \
     GROUP BY queue, status";

/// Jobs per queue and status, by queue then status (text order): what the metrics
/// sampler reads every interval, so it never scans the table. Each branch counts one
/// group of statuses along the partial index that holds exactly its jobs (each WHERE
/// matches its index's word for word): claimable jobs along the claim index (a row
/// lookup each for the status: as many as the backlog, not the table), parked ones along
/// the parked index, running ones along the lease index, finished ones (usually most of
/// the table) from the covering index of finished jobs alone. The groups do not overlap,
/// so the counts are exact; a queue and status with both parked and unparked jobs comes
/// as two adjacent rows, which [`counts`] adds up.
/// A row whose status this version does not know (written by another tool) is in none
/// of them and not counted: it is no job of any status. Reads that return it (get, list)
/// report it as corrupt. (Counting it here would take a scan of the table, or an index
/// whose condition every write of a job would pay for.)
pub(crate) const COUNTS: &str = "SELECT queue, status, count(*) FROM durable_jobs \
     WHERE (status = 'pending' OR status = 'retrying' OR status = 'waiting') AND blocked = 0 \
     GROUP BY queue, status \
     UNION ALL \
     SELECT queue, status, count(*) FROM durable_jobs \
     WHERE blocked = 1 AND (status = 'pending' OR status = 'retrying' OR status = 'waiting') \
     GROUP BY queue, status \
     UNION ALL \
     SELECT queue, status, count(*) FROM durable_jobs \
     WHERE status = 'running' GROUP BY queue, status \
     UNION ALL \
     SELECT queue, status, count(*) FROM durable_jobs \
     WHERE (status = 'completed' OR status = 'failed' OR status = 'cancelled') \
     GROUP BY queue, status \
     ORDER BY 1, 2";

/// A time as stored: microseconds since the Unix epoch.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn time(column: &str, us: i64) -> QResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| {
        crate::error::corrupt(format!(
            "sqlite: column `{column}` holds an out-of-range time {us}"
        ))
        .into()
    })
}

fn opt_time(column: &str, us: Option<i64>) -> QResult<Option<DateTime<Utc>>> {
    us.map(|us| time(column, us)).transpose()
}

fn after(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

pub(crate) fn json_text(v: &Value) -> QResult<String> {
    Ok(serde_json::to_string(v).map_err(Error::from)?)
}

fn parse_json(column: &str, text: &str) -> QResult<Value> {
    Ok(serde_json::from_str(text).map_err(|e| bad_json(column, e))?)
}

/// A JSON array of strings stored on the job row (flags, tags); NULL is empty.
fn string_list(column: &str, text: Option<String>) -> QResult<Vec<String>> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => Ok(serde_json::from_str(&t).map_err(|e| bad_json(column, e))?),
    }
}

/// The job's metadata object as stored (NULL is empty).
fn metadata_object(text: Option<String>) -> QResult<durable_jobs::Metadata> {
    match text {
        None => Ok(durable_jobs::Metadata::new()),
        Some(t) => Ok(serde_json::from_str(&t).map_err(|e| bad_json("metadata", e))?),
    }
}

pub(crate) fn job_from_row(row: &Row<'_>) -> QResult<Job> {
    let payload: String = row.get(2)?;
    let status: String = row.get(5)?;
    let holder: Option<String> = row.get(9)?;
    let token: Option<i64> = row.get(10)?;
    let expires: Option<i64> = row.get(11)?;
    let result: Option<String> = row.get(13)?;
    let progress: Option<String> = row.get(25)?;
    let lease = match (holder, token, expires) {
        (Some(holder), Some(token), Some(exp)) => Some(LeaseInfo {
            holder,
            token,
            expires_at: time("lease_expires_at", exp)?,
        }),
        _ => None,
    };
    Ok(Job {
        id: row.get(0)?,
        task: row.get(1)?,
        payload: parse_json("payload", &payload)?,
        queue: row.get(3)?,
        priority: row.get(4)?,
        status: status.parse::<JobStatus>()?,
        attempt: row.get(6)?,
        max_attempts: row.get(7)?,
        run_at: time("run_at", row.get(8)?)?,
        lease,
        last_error: row.get(12)?,
        result: result.map(|r| parse_json("result", &r)).transpose()?,
        dedupe_key: row.get(14)?,
        timeout_ms: row.get(15)?,
        created_at: time("created_at", row.get(16)?)?,
        started_at: opt_time("started_at", row.get(17)?)?,
        completed_at: opt_time("completed_at", row.get(18)?)?,
        updated_at: time("updated_at", row.get(19)?)?,
        trace_context: row.get(20)?,
        parent_id: row.get(21)?,
        serial_key: row.get(22)?,
        flags: string_list("flags", row.get(23)?)?,
        tags: string_list("tags", row.get(24)?)?,
        progress: progress.map(|p| parse_json("progress", &p)).transpose()?,
        metadata: metadata_object(row.get(26)?)?,
    })
}

fn lease_lost(lease: &Lease) -> QResult<()> {
    Err(Error::LeaseLost {
        job_id: lease.job_id,
    }
    .into())
}

/// The shape of one claim statement: how many queues, task names and forbidden flags it
/// binds (statements are cached per shape).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimShape {
    pub queues: usize,
    pub tasks: usize,
    pub flags: usize,
}

impl ClaimShape {
    /// The shape of a claim of `queues` with `p`'s tasks and forbidden flags.
    fn of(p: &DequeueParams, queues: usize) -> Self {
        ClaimShape {
            queues,
            tasks: p.tasks.len(),
            flags: p.forbidden_flags.len(),
        }
    }

    /// The number of the parameter that follows the claim's queues, tasks and flags
    /// (the priority of [`claim_sql`] and [`park_sql`]).
    fn priority_param(self) -> usize {
        6 + self.queues + self.tasks + self.flags
    }
}

/// How many jobs of the key `key` (an SQL expression) run, and how many may: its limit,
/// 1 unless `durable_jobs_key_limits` sets one. The claim, the parking and the
/// unparking all decide a key's room from these two.
fn key_running(key: &str) -> String {
    format!(
        "(SELECT count(*) FROM durable_jobs r WHERE r.serial_key = {key} AND r.status = 'running')"
    )
}

/// See [`key_running`].
fn key_limit(key: &str) -> String {
    format!(
        "coalesce((SELECT l.max_running FROM durable_jobs_key_limits l \
         WHERE l.serial_key = {key}), 1)"
    )
}

/// `?start, ?start+1, ...` for `n` parameters.
fn marks(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The terms a job must meet to be claimed, on the table aliased `t` (before serial keys):
/// claimable, due, in a claimed queue, of a handled task, and carrying no forbidden flag.
/// The status term matches the claim index's WHERE word for word, so the index applies.
/// `Parked::Excluded` adds the claim index's other term (not parked); `Parked::Included`
/// leaves it out, for the key-order check, which must see a key's parked jobs too.
fn claimable_terms(t: &str, shape: ClaimShape, parked: Parked) -> String {
    let unparked = match parked {
        Parked::Excluded => format!(" AND {t}.blocked = 0"),
        Parked::Included => String::new(),
    };
    let mut sql = format!(
        "({t}.status = 'pending' OR {t}.status = 'retrying' OR {t}.status = 'waiting'){unparked} \
         AND {t}.queue IN ({}) AND {t}.run_at <= ?4",
        marks(6, shape.queues)
    );
    if shape.tasks > 0 {
        sql.push_str(&format!(
            " AND {t}.task IN ({})",
            marks(6 + shape.queues, shape.tasks)
        ));
    }
    if shape.flags > 0 {
        // Unflagged jobs (NULL) pass on one column read; only flagged ones parse JSON.
        // Flags that are not valid JSON (written by another tool) do not fail the whole
        // claim: the job is claimed, does not decode, and fails alone (see `dequeue`).
        sql.push_str(&format!(
            " AND ({t}.flags IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(\
             CASE WHEN json_valid({t}.flags) THEN {t}.flags ELSE '[]' END) \
             WHERE value IN ({})))",
            marks(6 + shape.queues + shape.tasks, shape.flags)
        ));
    }
    sql
}

/// Whether [`claimable_terms`] counts parked jobs (see migration 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parked {
    Excluded,
    Included,
}

/// The column of [`claim_sql`]'s rows that holds the job's `run_at` (see [`JOB_COLUMNS`]).
const RUN_AT: usize = 8;

/// The column of [`claim_sql`]'s rows, after the job's, that says whether the job's
/// attempt history is empty.
const CLAIM_NO_HISTORY: usize = column_count(JOB_COLUMNS);

/// How many columns a comma-separated select list names.
const fn column_count(list: &str) -> usize {
    let bytes = list.as_bytes();
    let (mut i, mut n) = (0, 1);
    while i < bytes.len() {
        if bytes[i] == b',' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The claim's select for one shape and one priority: due, claimable jobs of that
/// priority in claim order through the partial claim index, read as they are; then
/// [`TAKE_CLAIMED`] flips exactly those to running. Both run inside the writer's
/// `BEGIN IMMEDIATE` transaction, so no other connection can claim them in between.
/// (One `UPDATE ... RETURNING` did both, but SQLite buffers every returned row, the
/// whole job, in a temporary b-tree before handing out the first.) With the priority
/// fixed, the index range is (queue, priority, run_at <= now): it ends at the first job
/// not yet due, so jobs due later and parked workflows (waiting with run_at at the far
/// future) are never visited. [`dequeue`] runs it once per priority, highest first,
/// taking each round's jobs before selecting the next.
///
/// Serial keys: a keyed job qualifies only when fewer jobs of its key run than the key's
/// limit (1 unless `durable_jobs_key_limits` says otherwise; counted through the small
/// index of running keys) and it is the first claimable job of its key in claim order
/// (the index of claimable keyed jobs, over every priority), so a batch never takes two
/// jobs of one key and each key starts in order. Unkeyed jobs pass on `serial_key IS NULL`.
///
/// `?1` to `?3` are not used here (they are [`TAKE_CLAIMED`]'s); the parameter numbers
/// stay those of the claim's other terms. The limit is `CAST(?5 AS INTEGER)`, not a bare
/// `?5`: SQLite plans a bare parameter limit from its bound value and marks the statement
/// stale whenever that parameter is bound again, so every claim (whose size varies)
/// would re-parse and re-plan it. The cast keeps the value out of the plan, and the
/// cached statement is reused as is.
pub(crate) fn claim_sql(shape: ClaimShape) -> String {
    format!(
        "SELECT {JOB_COLUMNS}, j.attempts IS NULL FROM durable_jobs j \
         WHERE {outer} AND j.priority = ?{prio} \
           AND (j.serial_key IS NULL OR ({running} < {limit} \
             AND j.id = (SELECT k.id FROM durable_jobs k \
               WHERE k.serial_key = j.serial_key AND {inner} \
               ORDER BY k.priority DESC, k.run_at, k.id LIMIT 1))) \
         ORDER BY j.priority DESC, j.run_at, j.id LIMIT CAST(?5 AS INTEGER)",
        outer = claimable_terms("j", shape, Parked::Excluded),
        inner = claimable_terms("k", shape, Parked::Included),
        running = key_running("j.serial_key"),
        limit = key_limit("j.serial_key"),
        prio = shape.priority_param(),
    )
}

/// Parks the due keyed jobs of one priority that a claim's select walked past because
/// their key is full: as many of the key's jobs run as its limit allows (see migration
/// 11). Parked, they leave the claim index until something gives their key room, so the
/// next claims never read them. Runs after the round's jobs were taken (a key whose job
/// this claim started is full now). The walk follows the index of claimable keyed jobs
/// over the select's range: the whole due range of the priority, or, when the select
/// stopped at its limit, up to the last job it returned (`?p+1`, `?p+2`: its run_at and
/// id), past which it read nothing.
pub(crate) fn park_sql(shape: ClaimShape) -> String {
    let prio = shape.priority_param();
    format!(
        "UPDATE durable_jobs SET blocked = 1 WHERE id IN (\
           SELECT j.id FROM durable_jobs j \
           WHERE j.serial_key IS NOT NULL AND {terms} AND j.priority = ?{prio} \
             AND (j.run_at < ?{at} OR (j.run_at = ?{at} AND j.id <= ?{id})) \
             AND {running} >= {limit})",
        terms = claimable_terms("j", shape, Parked::Excluded),
        running = key_running("j.serial_key"),
        limit = key_limit("j.serial_key"),
        at = prio + 1,
        id = prio + 2,
    )
}

/// The first key with parked jobs: one descent of the parked index.
const FIRST_PARKED_KEY: &str = "SELECT serial_key FROM durable_jobs \
     WHERE blocked = 1 AND serial_key IS NOT NULL ORDER BY serial_key LIMIT 1";

/// The next key with parked jobs after `?1`: one descent each, so the keys cost one
/// probe each however many jobs they park.
const NEXT_PARKED_KEY: &str = "SELECT serial_key FROM durable_jobs \
     WHERE blocked = 1 AND serial_key > ?1 ORDER BY serial_key LIMIT 1";

/// A key's (`?1`) free slots: its limit less its running jobs (see [`key_running`]).
/// Built once: every claim that finds parked keys prepares it.
static KEY_FREE_SLOTS: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {} - {}", key_limit("?1"), key_running("?1")));

/// A key's first group (queue, task, flags) of parked jobs: one descent of the parked
/// index.
const FIRST_PARKED_GROUP: &str = "SELECT queue, task, ifnull(flags, '') FROM durable_jobs \
     WHERE blocked = 1 AND serial_key = ?1 \
     ORDER BY queue, task, ifnull(flags, '') LIMIT 1";

/// A key's next group of parked jobs after (`?2`, `?3`, `?4`): the next flags of the same
/// queue and task, else the next task of the queue, else the next queue; each branch one
/// descent of the parked index (a row-value comparison over the index's expression
/// column would read every parked job of the key instead), and the first that finds a
/// group ends the statement.
const NEXT_PARKED_GROUP: &str =
    "SELECT * FROM (SELECT queue, task, ifnull(flags, '') FROM durable_jobs \
       WHERE blocked = 1 AND serial_key = ?1 AND queue = ?2 AND task = ?3 \
         AND ifnull(flags, '') > ?4 \
       ORDER BY ifnull(flags, '') LIMIT 1) \
     UNION ALL SELECT * FROM (SELECT queue, task, ifnull(flags, '') FROM durable_jobs \
       WHERE blocked = 1 AND serial_key = ?1 AND queue = ?2 AND task > ?3 \
       ORDER BY task, ifnull(flags, '') LIMIT 1) \
     UNION ALL SELECT * FROM (SELECT queue, task, ifnull(flags, '') FROM durable_jobs \
       WHERE blocked = 1 AND serial_key = ?1 AND queue > ?2 \
       ORDER BY queue, task, ifnull(flags, '') LIMIT 1) \
     LIMIT 1";

/// Unparks a group's first `?5` parked jobs in claim order that are claimable and due
/// (`?6`: now). A parked row a hand edit finished or moved later is passed over: it is
/// no job a claim could start.
const UNPARK_GROUP: &str = "UPDATE durable_jobs SET blocked = 0 WHERE id IN (\
     SELECT id FROM durable_jobs \
     WHERE blocked = 1 AND serial_key = ?1 AND queue = ?2 AND task = ?3 \
       AND ifnull(flags, '') = ?4 \
       AND (status = 'pending' OR status = 'retrying' OR status = 'waiting') AND run_at <= ?6 \
     ORDER BY priority DESC, run_at, id LIMIT ?5)";

/// Unparks the first due jobs of every key with parked jobs that has room: in each group
/// of its parked jobs (queue, task, flags: what a claimer filters on), as many as the key
/// has free slots, in claim order. Per group, because a claimer that takes only some
/// queues, tasks or flags must still find the first job it may take (a key's first job
/// overall may be one no running worker takes); as many as the free slots, so a key
/// whose limit was raised fills every slot. Unparking more than a claim then takes is
/// harmless: a later claim parks the surplus again while the key is full. Runs in the
/// claim's write transaction, before its select, so the select sees every key with room
/// with its first due jobs unparked. Costs one probe per key with parked jobs, and a few
/// more per key with room. Keys, queues, tasks and flags are read and passed back as the
/// values they are, so a row another tool wrote with a value of another type is unparked
/// like the rest instead of failing every claim.
fn unpark_keys_with_room(conn: &Connection, now_us: i64) -> QResult<()> {
    let mut first_key = conn.prepare_cached(FIRST_PARKED_KEY)?;
    let Some(mut key) = first_key
        .query_row([], |r| r.get::<_, SqlValue>(0))
        .optional()?
    else {
        return Ok(());
    };
    let mut next_key = conn.prepare_cached(NEXT_PARKED_KEY)?;
    let mut free_slots = conn.prepare_cached(&KEY_FREE_SLOTS)?;
    let mut first = conn.prepare_cached(FIRST_PARKED_GROUP)?;
    let mut next = conn.prepare_cached(NEXT_PARKED_GROUP)?;
    let mut unpark = conn.prepare_cached(UNPARK_GROUP)?;
    let group = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, SqlValue>(0)?,
            r.get::<_, SqlValue>(1)?,
            r.get::<_, SqlValue>(2)?,
        ))
    };
    loop {
        let free: i64 = free_slots.query_row([&key], |r| r.get(0))?;
        if free > 0 {
            let mut at = first.query_row([&key], group).optional()?;
            while let Some((queue, task, flags)) = at {
                unpark.execute(params![key, queue, task, flags, free, now_us])?;
                at = next
                    .query_row(params![key, queue, task, flags], group)
                    .optional()?;
            }
        }
        match next_key
            .query_row([&key], |r| r.get::<_, SqlValue>(0))
            .optional()?
        {
            Some(k) => key = k,
            None => return Ok(()),
        }
    }
}

/// Takes the jobs a claim's select picked: `?5` is a JSON array of their ids. Each is
/// found by its id (no scan), and the claimed values are those [`claim`] hands out.
pub(crate) const TAKE_CLAIMED: &str = "UPDATE durable_jobs SET status = 'running', \
     attempt = attempt + 1, lease_holder = ?1, lease_token = ?2, lease_expires_at = ?3, \
     started_at = ?4, updated_at = ?4, wake_requested = 0 \
     WHERE id IN (SELECT value FROM json_each(?5))";

/// The highest priority below `below` among one queue's claimable jobs, due or not: one
/// descent of the claim index (SQLite answers `max` on an index column this way). The
/// claim walks the distinct priorities with it, so a backlog costs one probe per
/// priority, not one row read per job.
const NEXT_PRIORITY: &str = "SELECT max(priority) FROM durable_jobs \
     WHERE (status = 'pending' OR status = 'retrying' OR status = 'waiting') AND blocked = 0 \
     AND queue = ?1 AND priority < ?2";

/// The highest priority below `below` among the claimable jobs of `queues`.
fn next_priority(conn: &Connection, queues: &[String], below: i64) -> QResult<Option<i64>> {
    let mut stmt = conn.prepare_cached(NEXT_PRIORITY)?;
    let mut best = None;
    for q in queues {
        let p: Option<i64> = stmt.query_row(params![q, below], |r| r.get(0))?;
        best = best.max(p);
    }
    Ok(best)
}

/// The paused queues among `queues`, read inside the claim's transaction.
fn unpaused(conn: &Connection, queues: &[String]) -> QResult<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT queue FROM durable_jobs_paused_queues")?;
    let paused = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<std::collections::HashSet<_>, _>>()?;
    Ok(queues
        .iter()
        .filter(|q| !paused.contains(*q))
        .cloned()
        .collect())
}

/// Claims up to `limit` due jobs; see [`durable_jobs::Storage::dequeue`]. With a
/// rate-limited queue among those named, each queue is claimed in turn, the limited ones
/// up to what their window has left, and their windows count the starts (all in the
/// writer's transaction, so processes sharing the file respect the limit together).
pub(crate) fn dequeue(
    conn: &Connection,
    p: &DequeueParams,
    now: DateTime<Utc>,
    token: i64,
) -> QResult<Vec<ClaimedJob>> {
    if p.queues.is_empty() || p.limit == 0 {
        return Ok(Vec::new());
    }
    let now_us = micros(now);
    unpark_keys_with_room(conn, now_us)?;
    let queues = unpaused(conn, &p.queues)?;
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    let windows = crate::rate::windows_left(conn, &queues, now_us)?;
    let mut out = if windows.is_empty() {
        claim(conn, p, &queues, p.limit, now_us, token)?
    } else {
        let mut out = Vec::new();
        for queue in &queues {
            let room = p.limit - out.len();
            let cap = windows.get(queue).map_or(room, |left| room.min(*left));
            if cap == 0 {
                continue;
            }
            let got = claim(conn, p, std::slice::from_ref(queue), cap, now_us, token)?;
            if windows.contains_key(queue) && !got.is_empty() {
                crate::rate::record_starts(conn, queue, got.len(), now_us)?;
            }
            out.extend(got);
        }
        out
    };
    // RETURNING yields rows in no particular order; hand them out in claim order.
    out.sort_by(|a, b| {
        (std::cmp::Reverse(a.job.priority), a.job.run_at, a.job.id).cmp(&(
            std::cmp::Reverse(b.job.priority),
            b.job.run_at,
            b.job.id,
        ))
    });
    Ok(out)
}

/// One claim statement over `queues` (unpaused), for up to `limit` jobs.
fn claim(
    conn: &Connection,
    p: &DequeueParams,
    queues: &[String],
    limit: usize,
    now_us: i64,
    token: i64,
) -> QResult<Vec<ClaimedJob>> {
    let expires = after(now_us, p.lease_duration);
    let expires_at = time("lease_expires_at", expires)?;
    let mut args: Vec<SqlValue> = vec![
        SqlValue::Text(p.holder.clone()),
        SqlValue::Integer(token),
        SqlValue::Integer(expires),
        SqlValue::Integer(now_us),
        SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
    ];
    args.extend(queues.iter().map(|q| SqlValue::Text(q.clone())));
    args.extend(p.tasks.iter().map(|t| SqlValue::Text(t.clone())));
    args.extend(p.forbidden_flags.iter().map(|f| SqlValue::Text(f.clone())));
    let shape = ClaimShape::of(p, queues.len());
    let mut out = Vec::with_capacity(limit.min(1024));
    let mut corrupt = Vec::new();
    let sql = claim_sql(shape);
    let park = park_sql(shape);
    let started = time("started_at", now_us)?;
    let mut below = i64::MAX;
    while out.len() + corrupt.len() < limit {
        let Some(priority) = next_priority(conn, queues, below)? else {
            break;
        };
        below = priority;
        let left = limit - out.len() - corrupt.len();
        args[4] = SqlValue::Integer(i64::try_from(left).unwrap_or(i64::MAX));
        let mut ids = String::from("[");
        // How far the select read: its rows, and the last one's run_at and id (None
        // when that row's run_at does not read as a time: parking then waits for a
        // later claim, which is always safe).
        let mut returned = 0;
        let mut last = None;
        {
            let mut stmt = conn.prepare_cached(&sql)?;
            let bound = args.iter().cloned().chain([SqlValue::Integer(priority)]);
            let mut rows = stmt.query(params_from_iter(bound))?;
            while let Some(row) = rows.next()? {
                let id: JobId = row.get(0)?;
                returned += 1;
                last = row.get::<_, i64>(RUN_AT).ok().map(|at| (at, id));
                if ids.len() > 1 {
                    ids.push(',');
                }
                ids.push_str(&id.to_string());
                // No attempt ended yet (the history is empty), so none wrote a
                // checkpoint: the worker need not read them.
                let none: bool = row.get(CLAIM_NO_HISTORY)?;
                match job_from_row(row)
                    .and_then(|job| as_claimed(job, &p.holder, token, expires_at, started))
                {
                    Ok(job) => {
                        out.push(ClaimedJob::new(job, token, expires_at).with_no_checkpoints(none))
                    }
                    Err(e) => {
                        let e = Error::from(e);
                        if e.storage_kind() != Some(StorageErrorKind::Corrupt) {
                            return Err(e.into());
                        }
                        corrupt.push((id, e));
                    }
                }
            }
        }
        if ids.len() > 1 {
            ids.push(']');
            // Taken before the parking and the next priority's select, which must see
            // them running (a key with a job running is busy).
            conn.prepare_cached(TAKE_CLAIMED)?
                .execute(params![p.holder, token, expires, now_us, ids])?;
        }
        // The jobs the select passed over because their key is full, up to where it
        // read. A select that stopped at its limit read up to its last row; one that
        // came back short read the whole due range of this priority.
        let reach = if returned < left {
            Some((i64::MAX, JobId::MAX))
        } else {
            last
        };
        if let Some((at, id)) = reach {
            let bound = args.iter().cloned().chain([
                SqlValue::Integer(priority),
                SqlValue::Integer(at),
                SqlValue::Integer(id),
            ]);
            conn.prepare_cached(&park)?
                .execute(params_from_iter(bound))?;
        }
    }
    for (id, e) in corrupt {
        fail_corrupt(conn, id, &e, now_us, token)?;
    }
    Ok(out)
}

/// A job as read by the claim's select, as [`TAKE_CLAIMED`] leaves it: running under
/// this claim's lease, one attempt further, started now.
fn as_claimed(
    mut job: Job,
    holder: &str,
    token: i64,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> QResult<Job> {
    job.attempt = job.attempt.checked_add(1).ok_or_else(|| {
        QueryError::from(crate::error::corrupt(format!(
            "sqlite: column `attempt` of job {} holds {}, too large to start again",
            job.id, job.attempt
        )))
    })?;
    job.status = JobStatus::Running;
    job.lease = Some(LeaseInfo {
        holder: holder.to_string(),
        token,
        expires_at,
    });
    job.started_at = Some(now);
    job.updated_at = now;
    Ok(job)
}

/// Fails a row the claim took but could not decode (see [`FAIL_CORRUPT`]), waking its
/// parent as any final write does.
fn fail_corrupt(conn: &Connection, id: JobId, e: &Error, now: i64, token: i64) -> QResult<()> {
    let message = format!("the stored job could not be read, so it was failed: {e}");
    tracing::error!(job_id = id, error = %e, "failed a claimed job whose stored row does not decode");
    let parent: Option<Option<JobId>> = conn
        .prepare_cached(FAIL_CORRUPT)?
        .query_row(params![id, now, message, token], |r| r.get(0))
        .optional()?;
    wake_parent(conn, parent.flatten(), now)?;
    Ok(())
}

/// Completions ready for [`complete_batch`], their results serialized by the caller
/// before the write, so the writer thread (which every write of the process waits on)
/// only runs the statements.
pub(crate) struct PackedCompletions {
    items: Vec<Completion>,
    /// Each item's result as stored (JSON text).
    results: Vec<String>,
    /// The items' job ids as a JSON array, for [`BATCH_PARENTS`].
    ids: String,
}

impl PackedCompletions {
    /// Serializes `items`' results and ids.
    pub(crate) fn new(items: Vec<Completion>) -> QResult<Self> {
        let results = items
            .iter()
            .map(|c| json_text(&c.result))
            .collect::<QResult<Vec<_>>>()?;
        let ids = serde_json::to_string(&items.iter().map(|c| c.lease.job_id).collect::<Vec<_>>())
            .map_err(Error::from)?;
        Ok(PackedCompletions {
            items,
            results,
            ids,
        })
    }
}

/// Completes a batch of leased jobs in order, each fenced on its own (a lost lease fails
/// its item only, with [`Error::LeaseLost`]; a job named twice completes once), and
/// wakes their parents. Returns each item's outcome and whether a parent was woken.
pub(crate) fn complete_batch(
    conn: &Connection,
    batch: &PackedCompletions,
    now: i64,
) -> QResult<(Vec<durable_jobs::Result<()>>, bool)> {
    let mut parents = std::collections::HashMap::new();
    {
        let mut stmt = conn.prepare_cached(BATCH_PARENTS)?;
        let mut rows = stmt.query([&batch.ids])?;
        while let Some(row) = rows.next()? {
            parents.insert(row.get::<_, JobId>(0)?, row.get::<_, JobId>(1)?);
        }
    }
    let mut out = Vec::with_capacity(batch.items.len());
    let mut woke = false;
    let mut stmt = conn.prepare_cached(COMPLETE)?;
    for (c, result) in batch.items.iter().zip(&batch.results) {
        let id = c.lease.job_id;
        if stmt.execute(params![id, c.lease.token, result, now])? == 0 {
            out.push(Err(Error::LeaseLost { job_id: id }));
            continue;
        }
        woke |= wake_parent(conn, parents.get(&id).copied(), now)?;
        out.push(Ok(()));
    }
    Ok((out, woke))
}

/// A finished child's parent is woken in the child's transaction, so no crash can leave
/// the parent waiting for a child that is done.
fn wake_parent(conn: &Connection, parent: Option<JobId>, now: i64) -> QResult<bool> {
    match parent {
        Some(p) => crate::workflow::wake_job(conn, p, now),
        None => Ok(false),
    }
}

/// Records a failed attempt; a terminal failure wakes the parent. Fenced. True when a
/// parent was woken.
pub(crate) fn fail(conn: &Connection, lease: &Lease, f: &Failure, now: i64) -> QResult<bool> {
    match f.retry_in {
        Some(d) => {
            let n = conn.prepare_cached(FAIL_RETRY)?.execute(params![
                lease.job_id,
                lease.token,
                f.error,
                now,
                after(now, d)
            ])?;
            if n == 0 {
                return lease_lost(lease).map(|()| false);
            }
            Ok(false)
        }
        None => {
            let parent: Option<Option<JobId>> = conn
                .prepare_cached(FAIL_TERMINAL)?
                .query_row(params![lease.job_id, lease.token, f.error, now], |r| {
                    r.get(0)
                })
                .optional()?;
            match parent {
                None => lease_lost(lease).map(|()| false),
                Some(parent) => wake_parent(conn, parent, now),
            }
        }
    }
}

/// Returns a running job unspent. Fenced.
pub(crate) fn release(conn: &Connection, lease: &Lease, now: i64) -> QResult<()> {
    let n = conn
        .prepare_cached(RELEASE)?
        .execute(params![lease.job_id, lease.token, now])?;
    if n == 0 {
        return lease_lost(lease);
    }
    Ok(())
}

/// Snoozes a running job for `delay` without spending its attempt. Fenced.
pub(crate) fn snooze(conn: &Connection, lease: &Lease, delay: Duration, now: i64) -> QResult<()> {
    let n = conn.prepare_cached(SNOOZE)?.execute(params![
        lease.job_id,
        lease.token,
        now,
        after(now, delay)
    ])?;
    if n == 0 {
        return lease_lost(lease);
    }
    Ok(())
}

/// Stores a running job's progress. Fenced.
pub(crate) fn set_progress(
    conn: &Connection,
    lease: &Lease,
    progress: &Value,
    now: i64,
) -> QResult<()> {
    let n = conn.prepare_cached(SET_PROGRESS)?.execute(params![
        lease.job_id,
        lease.token,
        json_text(progress)?,
        now
    ])?;
    if n == 0 {
        return lease_lost(lease);
    }
    Ok(())
}

/// Extends a lease. Fenced.
pub(crate) fn heartbeat(
    conn: &Connection,
    lease: &Lease,
    extend: Duration,
    now: i64,
) -> QResult<Lease> {
    let expires = after(now, extend);
    let n = conn.prepare_cached(HEARTBEAT)?.execute(params![
        lease.job_id,
        lease.token,
        expires,
        now
    ])?;
    if n == 0 {
        lease_lost(lease)?;
    }
    Ok(Lease {
        expires_at: time("lease_expires_at", expires)?,
        ..lease.clone()
    })
}

/// Returns expired leases' jobs to retrying, or fails them when out of attempts (waking
/// their parents), then heals one window of waiting parents (from id `heal_after`; see
/// [`crate::workflow::heal_waiting_parents`]). Returns what it did and where the next
/// heal window starts.
pub(crate) fn release_stale_locks(
    conn: &Connection,
    now: i64,
    heal_after: i64,
) -> QResult<(StaleLocks, i64)> {
    let mut failed_parents = Vec::new();
    let mut released = Vec::new();
    {
        let mut stmt = conn.prepare_cached(RECLAIM)?;
        let mut rows = stmt.query([now])?;
        while let Some(row) = rows.next()? {
            let status: String = row.get(4)?;
            let status = status.parse::<JobStatus>()?;
            let parent: Option<JobId> = row.get(5)?;
            if let (Some(p), JobStatus::Failed) = (parent, status) {
                failed_parents.push(p);
            }
            released.push(ReleasedJob {
                job_id: row.get(0)?,
                queue: row.get(1)?,
                task: row.get(2)?,
                attempt: row.get(3)?,
                status,
            });
        }
    }
    for p in failed_parents {
        crate::workflow::wake_job(conn, p, now)?;
    }
    // RETURNING yields rows in no particular order.
    released.sort_by_key(|j| j.job_id);
    let (parents_woken, next) = crate::workflow::heal_waiting_parents(conn, now, heal_after)?;
    Ok((
        StaleLocks {
            released,
            parents_woken,
        },
        next,
    ))
}

/// Stores a checkpoint, written at `now`. Fenced.
pub(crate) fn save_checkpoint(
    conn: &Connection,
    lease: &Lease,
    cp: &Checkpoint,
    now: i64,
) -> QResult<()> {
    let held: Option<i64> = conn
        .prepare_cached(&format!("SELECT 1 FROM durable_jobs WHERE {FENCE}"))?
        .query_row(params![lease.job_id, lease.token], |r| r.get(0))
        .optional()?;
    if held.is_none() {
        return lease_lost(lease);
    }
    let (ok, value) = match &cp.outcome {
        CheckpointOutcome::Ok(v) => (true, json_text(v)?),
        CheckpointOutcome::Err(msg) => (false, msg.clone()),
    };
    conn.prepare_cached(SAVE_CHECKPOINT)?.execute(params![
        lease.job_id,
        cp.key,
        cp.name,
        ok,
        value,
        now,
        cp.args_hash
    ])?;
    Ok(())
}

/// A job's checkpoints in key order.
pub(crate) fn checkpoints(conn: &Connection, job_id: JobId) -> QResult<Vec<Checkpoint>> {
    let mut stmt = conn.prepare_cached(
        "SELECT key, name, ok, value, created_at, args_hash FROM durable_jobs_checkpoints \
         WHERE job_id = ?1 ORDER BY key",
    )?;
    let mut rows = stmt.query([job_id])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let ok: bool = row.get(2)?;
        let value: String = row.get(3)?;
        out.push(Checkpoint {
            key: row.get(0)?,
            name: row.get(1)?,
            outcome: if ok {
                CheckpointOutcome::Ok(parse_json("value", &value)?)
            } else {
                CheckpointOutcome::Err(value)
            },
            created_at: opt_time("created_at", row.get(4)?)?,
            args_hash: row.get(5)?,
        });
    }
    Ok(out)
}

/// Deletes a job's checkpoints.
pub(crate) fn delete_checkpoints(conn: &Connection, job_id: JobId) -> QResult<u64> {
    Ok(conn
        .prepare_cached("DELETE FROM durable_jobs_checkpoints WHERE job_id = ?1")?
        .execute([job_id])? as u64)
}

/// One job by id.
pub(crate) fn get_job(conn: &Connection, job_id: JobId) -> QResult<Option<Job>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM durable_jobs WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([job_id])?;
    match rows.next()? {
        Some(row) => Ok(Some(job_from_row(row)?)),
        None => Ok(None),
    }
}

fn bad_history(job_id: JobId, what: &str) -> QueryError {
    crate::error::corrupt(format!("sqlite: column `attempts` of job {job_id} {what}")).into()
}

/// One ended attempt as the history column stores it: an object with `attempt`,
/// `worker`, `started_at` and `finished_at` (microseconds), `outcome` and `error`.
fn stored_attempt(job_id: JobId, v: &Value) -> QResult<AttemptRecord> {
    let int = |key: &str| v.get(key).and_then(Value::as_i64);
    let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let attempt = int("attempt")
        .and_then(|a| i32::try_from(a).ok())
        .ok_or_else(|| bad_history(job_id, "holds an attempt without its number"))?;
    let started_at = int("started_at")
        .ok_or_else(|| bad_history(job_id, "holds an attempt without its start"))?;
    let outcome = v.get("outcome").and_then(Value::as_str).unwrap_or_default();
    let outcome = AttemptOutcome::parse(outcome).ok_or_else(|| {
        bad_history(
            job_id,
            &format!("holds an unknown attempt outcome `{outcome}`"),
        )
    })?;
    Ok(AttemptRecord {
        attempt,
        worker: text("worker"),
        started_at: time("attempts.started_at", started_at)?,
        finished_at: opt_time("attempts.finished_at", int("finished_at"))?,
        outcome,
        error: text("error"),
    })
}

/// A job's attempts, oldest first, then its current one while it runs; see
/// [`durable_jobs::Storage::list_attempts`].
pub(crate) fn list_attempts(conn: &Connection, job_id: JobId) -> QResult<Vec<AttemptRecord>> {
    type Row = (
        Option<String>,
        String,
        i32,
        Option<String>,
        Option<i64>,
        i64,
    );
    let row: Option<Row> = conn
        .prepare_cached(ATTEMPTS)?
        .query_row([job_id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let Some((history, status, attempt, holder, started_at, updated_at)) = row else {
        return Ok(Vec::new());
    };
    let stored = match history {
        Some(text) => match parse_json("attempts", &text)? {
            Value::Array(items) => items,
            _ => return Err(bad_history(job_id, "is not a JSON array")),
        },
        None => Vec::new(),
    };
    let mut out = Vec::with_capacity(stored.len() + 1);
    for item in &stored {
        out.push(stored_attempt(job_id, item)?);
    }
    if status == JobStatus::Running.as_str() {
        out.push(AttemptRecord {
            attempt,
            worker: holder,
            started_at: time("started_at", started_at.unwrap_or(updated_at))?,
            finished_at: None,
            outcome: AttemptOutcome::Running,
            error: None,
        });
    }
    Ok(out)
}

/// Jobs per queue and status, by queue then status (see [`COUNTS`]).
pub(crate) fn counts(conn: &Connection) -> QResult<Vec<QueueCount>> {
    let rows = queue_counts(&mut conn.prepare_cached(COUNTS)?.query([])?)?;
    // Parked and unparked jobs of one queue and status come as two adjacent rows.
    let mut out: Vec<QueueCount> = Vec::with_capacity(rows.len());
    for row in rows {
        match out.last_mut() {
            Some(prev) if prev.queue == row.queue && prev.status == row.status => {
                prev.count += row.count;
            }
            _ => out.push(row),
        }
    }
    Ok(out)
}

/// Reads (queue, status, count) rows.
fn queue_counts(rows: &mut rusqlite::Rows<'_>) -> QResult<Vec<QueueCount>> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let status: String = row.get(1)?;
        let count: i64 = row.get(2)?;
        out.push(QueueCount {
            queue: row.get(0)?,
            status: status.parse()?,
            count: u64::try_from(count).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Jobs per queue and final status that finished at or after `since` (microseconds,
/// rounded up by the caller), by queue then status.
pub(crate) fn finished_counts(conn: &Connection, since: i64) -> QResult<Vec<QueueCount>> {
    let mut out = queue_counts(&mut conn.prepare_cached(FINISHED_COUNTS)?.query([since])?)?;
    out.sort_by(|a, b| (&a.queue, a.status).cmp(&(&b.queue, b.status)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh in-memory database at the current schema.
    fn migrated() -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        crate::migrate::migrate(&conn, 0).expect("migrate");
        conn
    }

    /// A claim of up to `limit` jobs of any task from the default queue.
    fn default_queue(limit: usize, holder: &str) -> DequeueParams {
        DequeueParams {
            queues: vec!["default".into()],
            tasks: Vec::new(),
            limit,
            lease_duration: std::time::Duration::from_secs(30),
            holder: holder.into(),
            forbidden_flags: Vec::new(),
        }
    }

    /// The shape of a [`default_queue`] claim.
    const ONE_QUEUE: ClaimShape = ClaimShape {
        queues: 1,
        tasks: 0,
        flags: 0,
    };

    /// The column the claim reads its history flag from is the prepared claim's last,
    /// and is that flag, for every shape of claim.
    #[test]
    fn the_claim_s_history_flag_is_the_column_it_reads() {
        let conn = migrated();
        for (queues, tasks, flags) in [(1, 0, 0), (3, 2, 1)] {
            let shape = ClaimShape {
                queues,
                tasks,
                flags,
            };
            let stmt = conn.prepare(&claim_sql(shape)).expect("prepare");
            assert_eq!(stmt.column_count(), CLAIM_NO_HISTORY + 1);
            assert_eq!(
                stmt.column_name(CLAIM_NO_HISTORY).expect("name"),
                "j.attempts IS NULL"
            );
            assert_eq!(stmt.column_name(RUN_AT).expect("name"), "run_at");
        }
    }

    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("prepare");
        let n = stmt.parameter_count();
        let args: Vec<SqlValue> = (0..n).map(|_| SqlValue::Integer(0)).collect();
        stmt.query_map(params_from_iter(args), |r| r.get::<_, String>(3))
            .expect("plan")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows")
            .join("\n")
    }

    /// Counting finished jobs reads only the covering index of finished jobs, and
    /// purging walks it, instead of scanning every job.
    #[test]
    fn finish_time_queries_use_the_finished_index() {
        let conn = migrated();
        let counts = plan(&conn, FINISHED_COUNTS);
        assert!(
            counts.contains("USING COVERING INDEX durable_jobs_finished"),
            "{counts}"
        );
        let purge = plan(&conn, crate::operations::PURGE);
        assert!(purge.contains("durable_jobs_finished"), "{purge}");
    }

    /// Counting jobs per queue and status never scans the table: claimable and running
    /// jobs are found through their partial indexes, finished ones counted from the
    /// covering index of finished jobs alone. With and without statistics.
    #[test]
    fn counts_never_scan_the_table() {
        let conn = migrated();
        for analyzed in [false, true] {
            if analyzed {
                conn.execute_batch(
                    "INSERT INTO durable_jobs (task, payload, queue, status, max_attempts, run_at,
                                               created_at, updated_at, completed_at)
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                     SELECT 't', '{}', 'default',
                            CASE WHEN i % 50 = 0 THEN 'pending' ELSE 'completed' END,
                            1, 0, 0, 0, CASE WHEN i % 50 = 0 THEN NULL ELSE i END
                     FROM n;
                     ANALYZE;",
                )
                .expect("seed");
            }
            let counts = plan(&conn, COUNTS);
            assert!(
                counts.contains("USING INDEX durable_jobs_claim")
                    && counts.contains("USING INDEX durable_jobs_blocked")
                    && counts.contains("USING INDEX durable_jobs_lease_expiry")
                    && counts.contains("USING COVERING INDEX durable_jobs_finished"),
                "{analyzed}: {counts}"
            );
            assert!(
                !counts
                    .lines()
                    .any(|l| l.trim_end().ends_with("SCAN durable_jobs")),
                "{analyzed}: {counts}"
            );
        }
    }

    /// No partial index on the jobs table has an IN list in its WHERE: SQLite checks that
    /// WHERE for every row a write changes and builds such a list into a temporary
    /// b-tree each time. And the queries meant to use those indexes still do.
    #[test]
    fn partial_indexes_test_rows_without_in_lists() {
        let conn = migrated();
        let mut stmt = conn
            .prepare(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' \
                 AND tbl_name = 'durable_jobs' AND sql LIKE '%WHERE%'",
            )
            .expect("prepare");
        let indexes: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("indexes")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert!(indexes.len() >= 8, "{indexes:?}");
        for (name, sql) in &indexes {
            let predicate = sql.split("WHERE").nth(1).unwrap_or_default();
            assert!(
                !predicate.to_ascii_uppercase().contains(" IN "),
                "{name}: {sql}"
            );
        }
        let roots = plan(&conn, crate::retention::DUE_ROOTS);
        assert!(roots.contains("durable_jobs_finished"), "{roots}");
        let holder = plan(&conn, crate::enqueue::FIND_KEY_HOLDER);
        assert!(holder.contains("durable_jobs_dedupe"), "{holder}");
    }

    /// Every statement that ends an attempt records it under a name the history reader
    /// knows.
    #[test]
    fn recorded_outcomes_are_known() {
        for sql in [
            COMPLETE,
            FAIL_RETRY,
            FAIL_TERMINAL,
            RELEASE,
            SNOOZE,
            RECLAIM,
            FAIL_CORRUPT,
            crate::workflow::SUSPEND,
            crate::workflow::CANCEL_SUBTREE,
        ] {
            let name = sql
                .split("'outcome', '")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
                .expect("the statement appends an attempt");
            assert!(AttemptOutcome::parse(name).is_some(), "{name}");
        }
    }

    /// The claim must walk the partial claim index, not scan the table and sort.
    #[test]
    fn claim_walks_the_partial_claim_index() {
        let conn = migrated();
        for (queues, tasks, flags) in [(1, 1, 0), (1, 0, 0), (3, 2, 0), (1, 1, 2)] {
            let shape = ClaimShape {
                queues,
                tasks,
                flags,
            };
            let sql = format!("EXPLAIN QUERY PLAN {}", claim_sql(shape));
            let mut stmt = conn.prepare(&sql).expect("prepare");
            let n = stmt.parameter_count();
            let args: Vec<SqlValue> = (0..n).map(|_| SqlValue::Integer(0)).collect();
            let plan: Vec<String> = stmt
                .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
                .expect("plan")
                .collect::<Result<_, _>>()
                .expect("rows");
            let plan = plan.join("\n");
            let shape = format!("{queues} queues, {tasks} tasks, {flags} flags");
            // One priority at a time, so the range ends at the first job not yet due.
            assert!(
                plan.contains(
                    "USING INDEX durable_jobs_claim (queue=? AND priority=? AND run_at<?)"
                ),
                "{shape}:\n{plan}"
            );
            // Serial keys are checked through their own small indexes, never a scan.
            assert!(
                plan.contains("durable_jobs_serial_running"),
                "{shape}:\n{plan}"
            );
            assert!(
                plan.contains("durable_jobs_serial_claim"),
                "{shape}:\n{plan}"
            );
            assert!(!plan.contains("SCAN durable_jobs"), "{shape}:\n{plan}");
            // With one queue the index already yields claim order, so LIMIT stops early.
            if queues == 1 {
                let outer = plan.split("CORRELATED").next().unwrap_or_default();
                assert!(
                    !outer.contains("TEMP B-TREE"),
                    "sorts for one queue:\n{plan}"
                );
            }
        }
    }

    /// The next priority is one descent of the claim index, never a scan.
    #[test]
    fn next_priority_is_one_index_probe() {
        let conn = migrated();
        let plan = plan(&conn, NEXT_PRIORITY);
        assert!(
            plan.contains("USING INDEX durable_jobs_claim (queue=? AND priority<?)"),
            "{plan}"
        );
    }

    /// The batch completion and the claim's take drive from their batch of ids and find
    /// each job by its id; they never walk the jobs table.
    #[test]
    fn batch_completion_looks_jobs_up_by_id() {
        let conn = migrated();
        let plan = plan(&conn, BATCH_PARENTS);
        assert!(
            plan.contains("SEARCH durable_jobs USING INTEGER PRIMARY KEY (rowid=?)"),
            "{plan}"
        );
        assert!(!plan.contains("SCAN durable_jobs"), "{plan}");
        let take = self::plan(&conn, TAKE_CLAIMED);
        assert!(
            take.contains("SEARCH durable_jobs USING INTEGER PRIMARY KEY (rowid=?)"),
            "{take}"
        );
        assert!(!take.contains("SCAN durable_jobs"), "{take}");
    }

    /// Claims `n` fresh jobs on `conn` with the given token.
    fn claimed(conn: &Connection, n: usize, token: i64) -> Vec<ClaimedJob> {
        let now = Utc::now();
        for i in 0..n {
            crate::enqueue::insert_job(
                conn,
                &durable_jobs::NewJob::new("t", serde_json::json!(i)),
                now,
            )
            .expect("enqueue");
        }
        let p = default_queue(n, "w");
        dequeue(conn, &p, now, token).expect("claim")
    }

    fn stored_result(conn: &Connection, id: JobId) -> Option<String> {
        conn.query_row("SELECT result FROM durable_jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .expect("read")
    }

    /// A batch stores each result as the one-row statement does (the same JSON text,
    /// escapes, non-ASCII text and numbers included), fences each item on its own token
    /// (the extremes of the token range included) and fails only the items whose lease
    /// is gone.
    #[test]
    fn batch_completion_matches_one_by_one() {
        let conn = migrated();
        let jobs = claimed(&conn, 4, 7);
        let tokens = [i64::MIN, i64::MAX, -1, 0];
        for (c, t) in jobs.iter().zip(tokens) {
            conn.execute(
                "UPDATE durable_jobs SET lease_token = ?2 WHERE id = ?1",
                params![c.job.id, t],
            )
            .expect("token");
        }
        let results = [
            serde_json::json!({"s": "quote \" backslash \\ tab \t nul \u{0} é ✓ 😀"}),
            serde_json::json!([1.5, -0.0, 1e300, 12345678901234567_i64, null, true]),
            serde_json::json!("plain"),
            Value::Null,
        ];
        let items: Vec<Completion> = jobs
            .iter()
            .zip(tokens)
            .zip(&results)
            .enumerate()
            .map(|(i, ((c, t), r))| Completion {
                lease: Lease {
                    // The third item holds a stale token.
                    token: if i == 2 { t + 1 } else { t },
                    ..c.lease.clone()
                },
                result: r.clone(),
            })
            .collect();
        let batch = PackedCompletions::new(items).expect("pack");
        let (out, woke) = complete_batch(&conn, &batch, micros(Utc::now())).expect("complete");
        assert!(!woke);
        assert!(
            out[0].is_ok() && out[1].is_ok() && out[3].is_ok(),
            "{out:?}"
        );
        assert!(matches!(out[2], Err(Error::LeaseLost { .. })), "{out:?}");
        for i in [0, 1, 3] {
            assert_eq!(
                stored_result(&conn, jobs[i].job.id),
                Some(json_text(&results[i]).expect("text")),
                "item {i}"
            );
        }
        assert_eq!(stored_result(&conn, jobs[2].job.id), None);
        let history: String = conn
            .query_row(
                "SELECT attempts FROM durable_jobs WHERE id = ?1",
                [jobs[0].job.id],
                |r| r.get(0),
            )
            .expect("history");
        let history: Value = serde_json::from_str(&history).expect("json");
        assert_eq!(history[0]["outcome"], "completed");
        assert_eq!(history[0]["worker"], "w");
        assert_eq!(history.as_array().map(Vec::len), Some(1));
    }

    /// Two items for one job go one by one, in order: the first completes it, the second
    /// finds the lease ended.
    #[test]
    fn batch_completion_of_one_job_twice_completes_it_once() {
        let conn = migrated();
        let jobs = claimed(&conn, 1, 7);
        let item = |r: i64| Completion {
            lease: jobs[0].lease.clone(),
            result: serde_json::json!(r),
        };
        let batch = PackedCompletions::new(vec![item(1), item(2)]).expect("pack");
        let (out, _) = complete_batch(&conn, &batch, micros(Utc::now())).expect("complete");
        assert!(out[0].is_ok(), "{out:?}");
        assert!(matches!(out[1], Err(Error::LeaseLost { .. })), "{out:?}");
        assert_eq!(stored_result(&conn, jobs[0].job.id).as_deref(), Some("1"));
    }

    /// Claims of different sizes reuse the cached claim statement as prepared: its limit
    /// is no part of its plan, so binding a new one never makes SQLite re-prepare it.
    #[test]
    fn claims_of_any_size_reuse_the_prepared_statement() {
        let conn = migrated();
        for limit in [3, 1, 2] {
            assert_eq!(claimed(&conn, limit, 7).len(), limit);
        }
        let shape = ONE_QUEUE;
        let reprepared = conn
            .prepare_cached(&claim_sql(shape))
            .expect("cached")
            .get_status(rusqlite::StatementStatus::RePrepare);
        assert_eq!(reprepared, 0);
    }

    /// The virtual-machine steps the claim's statements took so far on `conn` (their
    /// cached handles keep the counters).
    fn claim_steps(conn: &Connection, shape: ClaimShape) -> i32 {
        [
            claim_sql(shape),
            NEXT_PRIORITY.to_string(),
            park_sql(shape),
            FIRST_PARKED_KEY.to_string(),
            NEXT_PARKED_KEY.to_string(),
            KEY_FREE_SLOTS.clone(),
            FIRST_PARKED_GROUP.to_string(),
            NEXT_PARKED_GROUP.to_string(),
            UNPARK_GROUP.to_string(),
        ]
        .iter()
        .map(|sql| {
            conn.prepare_cached(sql)
                .expect("cached")
                .get_status(rusqlite::StatementStatus::VmStep)
        })
        .sum()
    }

    /// On 100,000 claimable rows the claim cannot take because of their time (pending
    /// jobs due tomorrow at three priorities, parked workflows, timers due tomorrow),
    /// claiming the few due jobs and then finding nothing take a few hundred virtual
    /// machine steps in all, not one per backlog row (a claim that filtered the backlog
    /// row by row took hundreds of thousands).
    #[test]
    fn claims_never_visit_a_backlog_they_cannot_take() {
        // Never analyzed (the library does not run ANALYZE) and analyzed.
        for analyzed in [false, true] {
            claim_beside_a_backlog(analyzed);
        }
    }

    fn claim_beside_a_backlog(analyzed: bool) {
        let conn = migrated();
        let now = Utc::now();
        let now_us = micros(now);
        let tomorrow = now_us + 86_400_000_000;
        let far = micros(durable_jobs::job::far_future());
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
             INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts,
                                       run_at, created_at, updated_at)
             SELECT 't', '{}', 'default', i % 3,
                    CASE WHEN i % 3 = 0 THEN 'waiting' ELSE 'pending' END, 4,
                    CASE WHEN i % 6 = 0 THEN ?2 ELSE ?1 + i END, ?3, ?3
             FROM n",
            params![tomorrow, far, now_us],
        )
        .expect("seed");
        conn.execute(
            "INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts,
                                       run_at, created_at, updated_at)
             VALUES ('t', '1', 'default', 0, 'pending', 4, ?1, ?1, ?1),
                    ('t', '2', 'default', 2, 'pending', 4, ?1, ?1, ?1),
                    ('t', '3', 'default', 5, 'pending', 4, ?1, ?1, ?1)",
            [now_us - 1],
        )
        .expect("due");
        if analyzed {
            conn.execute_batch("ANALYZE").expect("analyze");
        }
        let p = default_queue(1000, "plan");
        let shape = ONE_QUEUE;
        let claimed = dequeue(&conn, &p, now, 7).expect("claim");
        let priorities: Vec<i32> = claimed.iter().map(|c| c.job.priority).collect();
        assert_eq!(
            priorities,
            [5, 2, 0],
            "analyzed: {analyzed}: the due jobs, in claim order"
        );
        let steps = claim_steps(&conn, shape);
        assert!(
            steps < 1_000,
            "analyzed: {analyzed}: the claim of the due jobs took {steps} steps"
        );
        assert!(dequeue(&conn, &p, now, 8).expect("claim").is_empty());
        let empty = claim_steps(&conn, shape) - steps;
        assert!(
            empty < 500,
            "analyzed: {analyzed}: an empty claim took {empty} steps"
        );
    }

    /// Parking and unparking walk their own indexes: the claim's range of keyed jobs,
    /// and the parked jobs one key and group at a time; never the table.
    #[test]
    fn parking_walks_its_indexes() {
        let conn = migrated();
        for (queues, tasks, flags) in [(1, 1, 0), (1, 0, 0), (3, 2, 1)] {
            let shape = ClaimShape {
                queues,
                tasks,
                flags,
            };
            let park = plan(&conn, &park_sql(shape));
            assert!(
                park.contains("USING INDEX durable_jobs_claim_keyed (queue=? AND priority=?"),
                "{queues} {tasks} {flags}: {park}"
            );
            assert!(park.contains("durable_jobs_serial_running"), "{park}");
            assert!(!park.contains("SCAN durable_jobs"), "{park}");
        }
        for (name, sql) in [
            ("first key", FIRST_PARKED_KEY),
            ("next key", NEXT_PARKED_KEY),
            ("first group", FIRST_PARKED_GROUP),
            ("next group", NEXT_PARKED_GROUP),
            ("unpark", UNPARK_GROUP),
        ] {
            let plan = plan(&conn, sql);
            assert!(plan.contains("durable_jobs_blocked"), "{name}: {plan}");
            assert!(!plan.contains("SCAN durable_jobs"), "{name}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{name}: {plan}");
        }
        // Each branch of the next group's probe is a range of the index, not a filter
        // over the key's parked jobs.
        let next = plan(&conn, NEXT_PARKED_GROUP);
        for range in [
            "(serial_key=? AND queue=? AND task=? AND <expr>>?)",
            "(serial_key=? AND queue=? AND task>?)",
            "(serial_key=? AND queue>?)",
        ] {
            assert!(next.contains(range), "{range}: {next}");
        }
    }

    /// Inserts `n` due jobs of `key` (task `task`) and one running job of it.
    fn busy_key(conn: &Connection, key: &str, task: &str, n: i64, now_us: i64) {
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
             INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts,
                                       run_at, created_at, updated_at, serial_key)
             SELECT ?2, '{}', 'default', 0, 'pending', 4, ?3 - 1000000 + i, ?3, ?3, ?4 FROM n",
            params![n, task, now_us, key],
        )
        .expect("seed the key's backlog");
        conn.execute(
            "INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts,
                                       run_at, created_at, updated_at, serial_key,
                                       lease_holder, lease_token, lease_expires_at)
             VALUES (?1, '{}', 'default', 0, 'running', 4, ?2, ?2, ?2, ?3, 'w', 1, ?4)",
            params![task, now_us, key, now_us + 60_000_000],
        )
        .expect("the key's running job");
    }

    /// How many jobs are parked.
    fn parked(conn: &Connection) -> i64 {
        conn.query_row(
            "SELECT count(*) FROM durable_jobs WHERE blocked = 1",
            [],
            |r| r.get(0),
        )
        .expect("parked")
    }

    /// Claims from queue `default` on `conn` for any task; returns the claimed ids and the
    /// virtual-machine steps the claim's statements took.
    fn claim_any(conn: &Connection, now: DateTime<Utc>) -> (Vec<JobId>, i32) {
        let shape = ONE_QUEUE;
        let p = default_queue(100, "plan");
        let before = claim_steps(conn, shape);
        let got = dequeue(conn, &p, now, 9).expect("claim");
        let ids = got.iter().map(|c| c.job.id).collect();
        (ids, claim_steps(conn, shape) - before)
    }

    /// 100,000 due jobs behind one busy key: the first claim that meets them parks them,
    /// and from then on claims take a few hundred virtual machine steps, not one per
    /// parked job. When the key's running job ends, the next claim unparks the key's
    /// next job in each group and takes the first, again without walking the rest.
    #[test]
    fn claims_never_revisit_jobs_behind_a_busy_key() {
        let conn = migrated();
        let now = Utc::now();
        let now_us = micros(now);
        busy_key(&conn, "busy", "t", 100_000, now_us);
        let first_other: JobId = conn
            .query_row(
                "SELECT min(id) FROM durable_jobs WHERE serial_key = 'busy' AND task = 't'
                 AND status = 'pending'",
                [],
                |r| r.get(0),
            )
            .expect("first");
        // A second group of the key: another task, due after every job of the first.
        conn.execute(
            "INSERT INTO durable_jobs (task, payload, queue, priority, status, max_attempts,
                                       run_at, created_at, updated_at, serial_key)
             VALUES ('u', '{}', 'default', 0, 'pending', 4, ?1, ?1, ?1, 'busy')",
            [now_us - 1],
        )
        .expect("other group");
        let (ids, _) = claim_any(&conn, now);
        assert!(ids.is_empty(), "the key is busy: {ids:?}");
        let parked = parked(&conn);
        assert_eq!(
            parked, 100_001,
            "the claim parked every job of the busy key"
        );
        let (ids, steps) = claim_any(&conn, now);
        assert!(ids.is_empty());
        assert!(
            steps < 500,
            "an empty claim beside parked jobs took {steps} steps"
        );
        // The running job ends: its key has room for one job per group.
        conn.execute(
            "UPDATE durable_jobs SET status = 'completed', completed_at = ?1
             WHERE serial_key = 'busy' AND status = 'running'",
            [now_us],
        )
        .expect("complete");
        let (ids, steps) = claim_any(&conn, now);
        assert_eq!(ids, vec![first_other], "the key's first job, and only it");
        assert!(
            steps < 1_000,
            "the claim after the key freed took {steps} steps"
        );
        let unparked: i64 = conn
            .query_row(
                "SELECT count(*) FROM durable_jobs
                 WHERE serial_key = 'busy' AND status = 'pending' AND blocked = 0",
                [],
                |r| r.get(0),
            )
            .expect("unparked");
        assert_eq!(unparked, 0, "the other group's job was parked again");
        let counts = counts(&conn).expect("counts");
        let pending: u64 = counts
            .iter()
            .filter(|c| c.status == JobStatus::Pending)
            .map(|c| c.count)
            .sum();
        assert_eq!(
            pending, 100_000,
            "parked jobs are still counted: {counts:?}"
        );
        assert_eq!(
            counts
                .iter()
                .filter(|c| c.status == JobStatus::Pending)
                .count(),
            1,
            "one row per queue and status: {counts:?}"
        );
    }

    /// Writes by hand (another tool on the file) give a key room as the library's do: a
    /// running job deleted, a limit raised by an update.
    #[test]
    fn hand_written_changes_unpark_a_keys_jobs() {
        let conn = migrated();
        let now = Utc::now();
        let now_us = micros(now);
        busy_key(&conn, "k", "t", 5, now_us);
        assert!(claim_any(&conn, now).0.is_empty(), "the key is busy");
        conn.execute(
            "DELETE FROM durable_jobs WHERE serial_key = 'k' AND status = 'running'",
            [],
        )
        .expect("delete the running job");
        assert_eq!(claim_any(&conn, now).0.len(), 1, "its slot is free");
        assert!(claim_any(&conn, now).0.is_empty(), "busy again");
        conn.execute(
            "INSERT INTO durable_jobs_key_limits (serial_key, max_running) VALUES ('k', 2)",
            [],
        )
        .expect("limit 2");
        assert_eq!(claim_any(&conn, now).0.len(), 1, "a second slot");
        conn.execute(
            "UPDATE durable_jobs_key_limits SET max_running = 4 WHERE serial_key = 'k'",
            [],
        )
        .expect("limit 4");
        // One job of a key per claim: two claims fill the two new slots.
        assert_eq!(claim_any(&conn, now).0.len(), 1);
        assert_eq!(claim_any(&conn, now).0.len(), 1);
        assert!(claim_any(&conn, now).0.is_empty(), "four run");
    }

    /// A key another tool stored as a blob is parked and unparked like a text one: the
    /// claim passes values back as they are and never fails on their type. (The job it
    /// then takes does not decode, so it is failed as corrupt, alone.)
    #[test]
    fn a_key_of_another_type_is_unparked_too() {
        let conn = migrated();
        let now = Utc::now();
        let now_us = micros(now);
        busy_key(&conn, "42", "t", 3, now_us);
        conn.execute(
            "UPDATE durable_jobs SET serial_key = x'3432' WHERE serial_key = '42'",
            [],
        )
        .expect("retype the key");
        assert!(claim_any(&conn, now).0.is_empty(), "the key is busy");
        let parked = parked(&conn);
        assert_eq!(parked, 3);
        conn.execute("DELETE FROM durable_jobs WHERE status = 'running'", [])
            .expect("free the key");
        assert!(claim_any(&conn, now).0.is_empty());
        let (failed, parked): (i64, i64) = conn
            .query_row(
                "SELECT count(*) FILTER (WHERE status = 'failed'),
                        count(*) FILTER (WHERE blocked = 1) FROM durable_jobs",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("states");
        assert_eq!(
            (failed, parked),
            (1, 2),
            "its next job was taken (and failed)"
        );
    }
}
