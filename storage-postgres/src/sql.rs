//! Every SQL statement the storage runs, as templates rendered once per schema.
//!
//! Statements are rendered into `Arc<str>` when the storage is built, so each call reuses
//! the same string and sqlx's per-connection prepared-statement cache hits every time.
//! All times come from the database (`now()`), never from the client.

use crate::options::{channel, quote_ident, quote_literal};
use durable_jobs::AttemptOutcome;
use std::sync::Arc;

/// The columns a [`durable_jobs::Job`] is read from, in the order `job_from_row` decodes
/// them by position. Every statement that returns jobs selects exactly these, so rows
/// are decoded without a by-name lookup per column, and a claim does not send the columns
/// no `Job` holds (the wake request, the attempt history).
pub(crate) const JOB_COLUMNS: [&str; 27] = [
    "id",
    "task",
    "payload",
    "queue",
    "priority",
    "status",
    "attempt",
    "max_attempts",
    "run_at",
    "lease_holder",
    "lease_token",
    "lease_expires_at",
    "last_error",
    "result",
    "dedupe_key",
    "timeout_ms",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
    "trace_context",
    "parent_id",
    "tags",
    "flags",
    "serial_key",
    "progress",
    "metadata",
];

/// The position of `name` in [`JOB_COLUMNS`], for decoding by position; used in const
/// context, so a name that is not in the list fails the build instead of a decode.
pub(crate) const fn job_column(name: &str) -> usize {
    let mut i = 0;
    while i < JOB_COLUMNS.len() {
        let (a, b) = (JOB_COLUMNS[i].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut k = 0;
            while k < a.len() && a[k] == b[k] {
                k += 1;
            }
            if k == a.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("not one of JOB_COLUMNS")
}

/// [`JOB_COLUMNS`] as a select list, each qualified with `alias.` when one is given.
fn job_columns(alias: &str) -> String {
    JOB_COLUMNS
        .iter()
        .map(|c| {
            if alias.is_empty() {
                (*c).to_string()
            } else {
                format!("{alias}.{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The attempt history with the running attempt of the row being updated appended as
/// ended, for the `{history}` slot of a statement that ends attempts (see the `attempts`
/// column and the `attempt` type in `006_timeline.sql`). The attempt, worker and start
/// are the row's values before the update (an UPDATE's expressions read the old row), so
/// a statement can clear the lease and step the attempt back in the same SET. `error` is
/// an SQL text expression (or `NULL`). Unqualified column names: the statements' other
/// FROM items have none of these. The type is named with the `{schema}` placeholder,
/// which `render` qualifies (quoted) like every table.
pub(crate) fn with_history(template: &str, outcome: AttemptOutcome, error: &str) -> String {
    template.replace(
        "{history}",
        &format!(
            "array_append(coalesce(attempts, '{{}}'), ROW(attempt, lease_holder, \
             coalesce(started_at, {{now}}), {{now}}, '{}'::text, {error})::{{schema}}.attempt)",
            outcome.as_str()
        ),
    )
}

/// Unfinished statuses: the set a dedupe key is unique within.
const UNFINISHED: &str = "('pending', 'retrying', 'running', 'waiting')";

/// One batch claim from a single queue (what workers ask for). It never visits a row it
/// cannot claim because of its time, however deep the backlog of jobs due later, parked
/// workflows (waiting without a timer: run_at at the far future) or timers not yet due:
/// `prios` finds the distinct priorities of the queue's claimable jobs, highest first,
/// with one descent of the `jobs_claimable` index each (a loose index scan: a backlog
/// has few priorities, whatever its size), and `cand` reads each priority's jobs as an
/// index range that ends at `run_at <= now`, so the scan stops at the first job not yet
/// due instead of filtering every later one. Claim order (priority desc, run_at, id) is
/// the order the ranges are read in. A paused queue stops the claim before any index
/// page is read (a one-time filter on the `prios` anchor). A keyed job is a candidate
/// only if no job of its key this claim could take comes before it in claim order
/// (`jobs_serial_order`, one descent): a racing claim that skipped the key's first job
/// (another claim holds it locked) must not start the second one. Within a range, rows other
/// claimers hold and jobs carrying a forbidden flag are skipped row by row; `rl` caps the
/// claim at what the queue's rate limit leaves in its window; the serial-key CTEs let at
/// most one job per key through, into a free slot number (see `serial_slots`); the
/// UPDATE leases what remains.
///
/// Nor does it visit, more than once, jobs behind a busy serial key (one running as many
/// jobs as its limit allows: `key_limits`, 1 by default). Parked jobs (`blocked`, see
/// `013_parked_serial_jobs.sql`) are not in the index at all. A due job of a full key
/// that is not parked yet (enqueued while the key had room, or come due since) is skipped
/// row by row in `cand`, and parked by the same claim: `parkable` reads the keyed jobs of
/// the part of the index `cand` walked (`edge` is where it stopped: its last row when it
/// took all it may, else the end of every due range), along `jobs_claimable_keyed`, so a
/// queue without keyed jobs pays one empty index page for it; `busy` share-locks the
/// slots of their keys and keeps the keys whose slots are all still taken, so no slot of
/// a parked key can be freed before the parking commits, and the write that frees one
/// then sees the parked jobs and unparks the key's next ones. A slot freed since the
/// claim's snapshot is gone, and one being freed right now is locked by its writer and
/// skipped (never waited for: a claim waiting on a batch completion that waits on the
/// claim's share lock of another key's slot would deadlock); either way its key is not
/// counted full and not parked, which is always safe. At most [`PARK_BATCH`] jobs are
/// parked per claim, which bounds the writes of the first claim to meet a deep backlog
/// of a busy key; the next claims park the rest. What parking costs a claim that parks
/// nothing: the keyed jobs of the walked part of the index are read a second time. A
/// queue without keyed jobs pays one descent of `jobs_claimable_keyed` (the `EXISTS`,
/// evaluated once), not one per priority: on a deep backlog spread over many
/// priorities, the per-priority walk made an empty claim about twice as expensive.
///
/// A claim commits without waiting for its WAL to reach disk (`synchronous_commit` is
/// turned off for this one transaction; the claim always runs autocommitted on the pool).
/// Nothing durable rides on it: a claim lost in a server crash leaves its jobs as they
/// were before it, which is what an expired lease leads to anyway (the job runs again,
/// and the lost lease's holder gets `LeaseLost`). Every write that must survive (enqueue,
/// completion, failure, checkpoint) still waits for the flush, and since WAL is flushed
/// in order, a checkpoint or completion that is durable implies its claim is too. Not
/// waiting takes an fsync off the enqueue-to-start path and out of every claim round trip.
/// $1 queue, $2 tasks (empty = any), $3 limit, $4 holder, $5 token, $6 lease (µs),
/// $7 forbidden flags.
const CLAIM: &str = "
WITH RECURSIVE rl AS (
    SELECT greatest(r.max_starts - CASE WHEN {rate_window_open} THEN r.starts ELSE 0 END, 0)
           AS room
    FROM {schema}.queue_rate_limits r WHERE r.queue = $1
    FOR UPDATE
),
prios AS (
    (SELECT a.priority FROM {schema}.jobs AS a
     WHERE a.status IN ('pending', 'retrying', 'waiting') AND NOT a.blocked
       AND a.queue = $1
       AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM {schema}.paused_queues p WHERE p.queue = $1)
     ORDER BY a.priority DESC
     LIMIT 1)
    UNION ALL
    SELECT (SELECT n.priority FROM {schema}.jobs AS n
            WHERE n.status IN ('pending', 'retrying', 'waiting') AND NOT n.blocked
              AND n.queue = $1
              AND n.priority < prios.priority
            ORDER BY n.priority DESC
            LIMIT 1)
    FROM prios
    WHERE prios.priority IS NOT NULL
),
cand AS (
    SELECT due.* FROM prios CROSS JOIN LATERAL (
        SELECT c.id, c.serial_key, c.priority, c.run_at FROM {schema}.jobs AS c
        WHERE {candidate}
        ORDER BY c.run_at, c.id
        LIMIT least($3, coalesce((SELECT room FROM rl), $3))
        FOR UPDATE SKIP LOCKED
    ) AS due
    WHERE prios.priority IS NOT NULL
    LIMIT least($3, coalesce((SELECT room FROM rl), $3))
),
{park}
{lease}";

/// A candidate of both claims (on the row aliased `c`, per priority of `prios`):
/// claimable, unparked, in a claimed queue (`{c_queue}`), due, of a handled task, with
/// no forbidden flag; a keyed job only while its key has a free slot and no job of its
/// key that this claim could take (in `{e_queue}`) comes before it in claim order (see
/// [`CLAIM`]).
const CANDIDATE: &str = "c.status IN ('pending', 'retrying', 'waiting') AND NOT c.blocked
          AND {c_queue}
          AND c.priority = prios.priority
          AND c.run_at <= {now}
          AND (cardinality($2::text[]) = 0 OR c.task = ANY($2::text[]))
          AND NOT (c.flags && $7::text[])
          AND (c.serial_key IS NULL OR ((
              SELECT count(*) FROM {schema}.serial_slots s WHERE s.serial_key = c.serial_key)
              < {schema}.key_limit(c.serial_key)
              AND NOT EXISTS (
                  SELECT 1 FROM {schema}.jobs AS e
                  WHERE e.serial_key = c.serial_key
                    AND e.status IN ('pending', 'retrying', 'waiting') AND NOT e.blocked
                    AND (e.priority > c.priority
                         OR (e.priority = c.priority AND (e.run_at, e.id) < (c.run_at, c.id)))
                    AND {e_queue}
                    AND e.run_at <= {now}
                    AND (cardinality($2::text[]) = 0 OR e.task = ANY($2::text[]))
                    AND NOT (e.flags && $7::text[]))))";

/// What both claims share to park the jobs of full keys (see [`CLAIM`]): `edge` is where
/// `cand` stopped (it took `{limit}` jobs) or that it did not; `parkable` reads the
/// keyed jobs of full keys in the part of each claimed queue's ranges (`{park_from}`
/// adds the queues to the walk, `{k_queue}` and `{kq_queue}` name them) that `cand`
/// walked; of those, the ones whose key still has every slot taken (`busy`, the slots
/// share-locked so none frees before the parking commits) are parked.
const PARK: &str = "edge AS (
    SELECT (SELECT count(*) FROM cand) >= {limit} AS stopped,
           l.priority, l.run_at, l.id
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT e.priority, e.run_at, e.id FROM cand e
        ORDER BY e.priority, e.run_at DESC, e.id DESC
        LIMIT 1
    ) AS l ON true
),
parkable AS (
    SELECT full_key.* FROM edge CROSS JOIN prios{park_from}
    CROSS JOIN LATERAL (
        SELECT CASE WHEN edge.stopped AND prios.priority = edge.priority
                    THEN edge.run_at ELSE 'infinity'::timestamptz END AS run_at,
               CASE WHEN edge.stopped AND prios.priority = edge.priority
                    THEN edge.id ELSE 9223372036854775807 END AS id
    ) AS bound
    CROSS JOIN LATERAL (
        SELECT k.id, k.serial_key FROM {schema}.jobs AS k
        WHERE k.status IN ('pending', 'retrying', 'waiting') AND NOT k.blocked
          AND k.serial_key IS NOT NULL
          AND {k_queue}
          AND k.priority = prios.priority
          AND k.run_at <= {now}
          AND (k.run_at, k.id) <= (bound.run_at, bound.id)
          AND (SELECT count(*) FROM {schema}.serial_slots s WHERE s.serial_key = k.serial_key)
              >= {schema}.key_limit(k.serial_key)
        ORDER BY k.run_at, k.id
        LIMIT {park_batch}
        FOR UPDATE SKIP LOCKED
    ) AS full_key
    WHERE prios.priority IS NOT NULL
      AND (NOT edge.stopped OR prios.priority >= edge.priority)
      AND EXISTS (SELECT 1 FROM {schema}.jobs AS kq
                  WHERE kq.status IN ('pending', 'retrying', 'waiting') AND NOT kq.blocked
                    AND kq.serial_key IS NOT NULL AND {kq_queue})
    LIMIT {park_batch}
),
busy AS (
    SELECT h.serial_key FROM (
        SELECT s.serial_key FROM {schema}.serial_slots AS s
        WHERE s.serial_key = ANY(ARRAY(SELECT DISTINCT serial_key FROM parkable))
        FOR SHARE OF s SKIP LOCKED
    ) AS h
    GROUP BY h.serial_key
    HAVING count(*) >= {schema}.key_limit(h.serial_key)
),
parked AS (
    UPDATE {schema}.jobs AS p SET blocked = true
    WHERE p.id = ANY(ARRAY(
        SELECT k.id FROM parkable k WHERE k.serial_key IN (SELECT serial_key FROM busy)))
)";

/// The same claim across several queues ($1 is then an array of queue names), also
/// committed without waiting for the flush (see [`CLAIM`]); it serves `Storage::dequeue`
/// calls naming several queues (workers claim per routing queue, with [`CLAIM`]). Like
/// [`CLAIM`], it never visits a row it cannot claim because of its time, its status or
/// a paused queue, and parks the jobs of full keys it meets instead of reading them
/// again at every claim. The index holds each queue's jobs in claim order, not all of
/// them together, so the walk is [`CLAIM`]'s per queue: `qs` is the named queues that
/// are not paused (dropped once, before any index page is read); `prios` the distinct
/// priorities of their claimable jobs, highest first (per step, one descent of
/// `jobs_claimable` per queue); and for each priority `cand` reads every queue's due range
/// in claim order, up to the limit each, and merges them in claim order. Reading a range
/// up to the limit locks (`SKIP LOCKED`) as many rows as it reads, so a claim of N jobs
/// from Q queues may hold up to Q x N rows locked until its commit, taking only N: other
/// claimers pass the rest over for that moment. A keyed job is a candidate only if no
/// job of its key in any of the named queues comes before it in claim order. Parking
/// reads the keyed jobs of each queue's walked part of the index, bounded by where the
/// merge stopped, as [`CLAIM`] does for its one queue. A rate-limited queue among the
/// named ones is claimed with [`CLAIM`] queue by queue instead (see `rate.rs`).
/// $1 queues, $2 tasks (empty = any), $3 limit, $4 holder, $5 token, $6 lease (µs),
/// $7 forbidden flags.
const CLAIM_QUEUES: &str = "
WITH RECURSIVE qs AS (
    SELECT q FROM unnest($1::text[]) AS q
    WHERE NOT EXISTS (SELECT 1 FROM {schema}.paused_queues p WHERE p.queue = q)
      AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
),
prios AS (
    (SELECT max(t.priority) AS priority FROM qs CROSS JOIN LATERAL (
        SELECT a.priority FROM {schema}.jobs AS a
        WHERE a.status IN ('pending', 'retrying', 'waiting') AND NOT a.blocked
          AND a.queue = qs.q
        ORDER BY a.priority DESC
        LIMIT 1) AS t)
    UNION ALL
    SELECT (SELECT max(t.priority) FROM qs CROSS JOIN LATERAL (
        SELECT n.priority FROM {schema}.jobs AS n
        WHERE n.status IN ('pending', 'retrying', 'waiting') AND NOT n.blocked
          AND n.queue = qs.q
          AND n.priority < prios.priority
        ORDER BY n.priority DESC
        LIMIT 1) AS t)
    FROM prios
    WHERE prios.priority IS NOT NULL
),
cand AS (
    SELECT due.* FROM prios CROSS JOIN LATERAL (
        SELECT x.* FROM qs CROSS JOIN LATERAL (
            SELECT c.id, c.serial_key, c.priority, c.run_at FROM {schema}.jobs AS c
            WHERE {candidate}
            ORDER BY c.run_at, c.id
            LIMIT $3
            FOR UPDATE SKIP LOCKED
        ) AS x
        ORDER BY x.run_at, x.id
        LIMIT $3
    ) AS due
    WHERE prios.priority IS NOT NULL
    LIMIT $3
),
{park}
{lease}";

/// What both claims share: one job per serial key takes a free slot of its key (numbers
/// 1 to the key's limit; a racing claimer that took the same number wins), then the
/// UPDATE leases the claimed jobs, found by primary key from an array of their ids. (A
/// join with the claimed rows let the planner, which cannot know how many rows the CTEs
/// yield and guesses about 200, hash them against a scan of the whole table once fresh
/// statistics showed a table under about 50,000 rows; the plan tests check this.)
const LEASE: &str = ",
firsts AS (
    SELECT DISTINCT ON (serial_key) id, serial_key FROM cand
    WHERE serial_key IS NOT NULL
    ORDER BY serial_key, priority DESC, run_at, id
),
slots AS (
    INSERT INTO {schema}.serial_slots (serial_key, slot, job_id)
    SELECT f.serial_key, free.slot, f.id FROM firsts f
    CROSS JOIN LATERAL (
        SELECT n AS slot FROM generate_series(1, {schema}.key_limit(f.serial_key)) AS n
        WHERE NOT EXISTS (SELECT 1 FROM {schema}.serial_slots x
                          WHERE x.serial_key = f.serial_key AND x.slot = n)
        LIMIT 1
    ) free
    ON CONFLICT (serial_key, slot) DO NOTHING
    RETURNING job_id
),
c AS (
    SELECT id FROM cand WHERE serial_key IS NULL
    UNION ALL
    SELECT job_id FROM slots
)
UPDATE {schema}.jobs AS j
SET status = 'running',
    attempt = j.attempt + 1,
    lease_holder = $4,
    lease_token = $5,
    lease_expires_at = {now} + $6::bigint * interval '1 microsecond',
    wake_requested = false,
    started_at = {now},
    updated_at = {now}
WHERE j.id = ANY(ARRAY(SELECT id FROM c))
RETURNING {job_columns_j}, j.attempts IS NULL AS no_history";

/// A rate-limited queue's window is open (on the row aliased `r`): it opened less than
/// a period ago. NULL (no window yet) is not open.
const RATE_WINDOW_OPEN: &str = "r.opened_at + r.period_us * interval '1 microsecond' > {now}";

/// The single-queue claim's rate limit (see `queue_rate_limits`): `rl` above locks the
/// queue's window row, so claimers of a limited queue take turns, and limits the
/// candidates to the starts it has left; this counts what was claimed into the window,
/// opening a new one when none is open. A queue without a limit has no row: one primary
/// key lookup, no lock.
const RATE_BUMP: &str = ",
bump AS (
    UPDATE {schema}.queue_rate_limits r
    SET starts = CASE WHEN {rate_window_open} THEN r.starts ELSE 0 END
                 + (SELECT count(*) FROM c),
        opened_at = CASE WHEN {rate_window_open} THEN r.opened_at ELSE {now} END
    WHERE r.queue = $1 AND EXISTS (SELECT 1 FROM c)
)";

/// Bulk insert in input order with dedupe keys (see `tx.rs` for the contract).
/// Ids are drawn in input order before the insert so each input row knows its id; a
/// duplicate key inside the batch maps to its first occurrence; a key held by an
/// unfinished job maps to that job.
const ENQUEUE: &str = "
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[],
                         $6::timestamptz[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[],
                         $11::text[], $12::text[], $13::text[], $14::text[], $15::text[])
        WITH ORDINALITY AS t(task, payload, queue, priority, max_attempts,
                             run_at, delay_us, dedupe_key, timeout_ms, parent_id,
                             serial_key, flags_json, tags_json, trace_context,
                             metadata_json, ord)
),
ranked AS (
    SELECT i.*, row_number() OVER (PARTITION BY i.dedupe_key ORDER BY i.ord) AS rn
    FROM input i
),
numbered AS (
    SELECT nextval({seq}::regclass) AS id, f.*
    FROM (SELECT * FROM ranked WHERE dedupe_key IS NULL OR rn = 1 ORDER BY ord) f
),
ins AS (
    INSERT INTO {schema}.jobs
        (id, task, payload, queue, priority, max_attempts, run_at, dedupe_key, timeout_ms,
         parent_id, serial_key, flags, tags, trace_context, metadata, created_at, updated_at)
    SELECT id, task, payload::jsonb, queue, priority, max_attempts,
           coalesce(run_at, {now} + coalesce(delay_us, 0) * interval '1 microsecond'),
           dedupe_key, timeout_ms, parent_id, serial_key,
           CASE WHEN flags_json IS NULL THEN '{}'::text[]
                ELSE ARRAY(SELECT jsonb_array_elements_text(flags_json::jsonb)) END,
           CASE WHEN tags_json IS NULL THEN '{}'::text[]
                ELSE ARRAY(SELECT jsonb_array_elements_text(tags_json::jsonb)) END,
           trace_context, coalesce(metadata_json::jsonb, '{}'::jsonb), {now}, {now}
    FROM numbered
    ORDER BY id
    ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN {unfinished}
    DO NOTHING
    RETURNING id
)
SELECT coalesce(ins.id, existing.id, first.id) AS id, ins.id IS NOT NULL AS created
FROM input i
LEFT JOIN numbered n ON n.ord = i.ord
LEFT JOIN ins ON ins.id = n.id
LEFT JOIN LATERAL (
    -- LIMIT keeps this a per-row lookup in the dedupe index, whatever the statistics.
    SELECT e.id FROM {schema}.jobs e
    WHERE e.dedupe_key = i.dedupe_key AND e.status IN {unfinished}
    LIMIT 1
) existing ON i.dedupe_key IS NOT NULL
LEFT JOIN (SELECT n2.id, n2.dedupe_key FROM numbered n2 JOIN ins i2 ON i2.id = n2.id) first
       ON first.dedupe_key = i.dedupe_key
ORDER BY i.ord";

/// Bulk insert of plain jobs: no dedupe key, flags or tags (see `tx::is_plain`). Nothing
/// can conflict and no row needs another row, so this is one scan of the arrays: no
/// window, no join back, no per-row `jsonb_array_elements`. Ids come from the column
/// default, drawn row by row in array order, so ascending ids are input order (the
/// caller sorts what RETURNING gives). With no join in it, the cached generic plan is as
/// good as a custom one for any batch size.
/// $1 task, $2 payload, $3 queue, $4 priority, $5 max attempts, $6 run_at, $7 delay (µs),
/// $8 timeout, $9 parent, $10 serial key, $11 trace context.
const ENQUEUE_PLAIN: &str = "
INSERT INTO {schema}.jobs
    (task, payload, queue, priority, max_attempts, run_at, timeout_ms, parent_id, serial_key,
     trace_context, created_at, updated_at)
SELECT task, payload::jsonb, queue, priority, max_attempts,
       coalesce(run_at, {now} + coalesce(delay_us, 0) * interval '1 microsecond'),
       timeout_ms, parent_id, serial_key, trace_context, {now}, {now}
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::timestamptz[],
            $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], $11::text[])
    AS t(task, payload, queue, priority, max_attempts, run_at, delay_us, timeout_ms,
         parent_id, serial_key, trace_context)
RETURNING id";

/// Bulk insert of plain jobs that differ only in their payload (what `enqueue_many` with
/// one set of options sends, all from one span): every other column is bound once as a
/// scalar, so the server unpacks one array instead of eleven and the client encodes one.
/// $1 payloads, $2 task, $3 queue, $4 priority, $5 max attempts, $6 run_at, $7 delay (µs),
/// $8 timeout, $9 parent, $10 serial key, $11 trace context.
const ENQUEUE_UNIFORM: &str = "
INSERT INTO {schema}.jobs
    (task, payload, queue, priority, max_attempts, run_at, timeout_ms, parent_id, serial_key,
     trace_context, created_at, updated_at)
SELECT $2, p::jsonb, $3, $4, $5,
       coalesce($6::timestamptz, {now} + coalesce($7::bigint, 0) * interval '1 microsecond'),
       $8::bigint, $9::bigint, $10::text, $11::text, {now}, {now}
FROM unnest($1::text[]) AS t(p)
RETURNING id";

/// One replace-mode keyed job (see `tx::replace_one`). $1 task, $2 payload, $3 queue,
/// $4 priority, $5 max attempts, $6 run_at, $7 delay (µs), $8 key, $9 timeout,
/// $10 parent, $11 serial key, $12 flags, $13 tags, $14 keep the holder's run_at,
/// $15 trace context, $16 metadata. A replaced job takes the replacing enqueue's trace context with
/// its payload: the run it makes is the one that enqueue asked for.
const REPLACE_KEYED: &str = "
INSERT INTO {schema}.jobs AS j
    (task, payload, queue, priority, max_attempts, run_at, dedupe_key, timeout_ms,
     parent_id, serial_key, flags, tags, trace_context, metadata, created_at, updated_at)
VALUES ($1, $2::jsonb, $3, $4, $5,
        coalesce($6, {now} + coalesce($7, 0) * interval '1 microsecond'),
        $8, $9, $10, $11, $12, $13, $15, $16, {now}, {now})
ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL AND status IN {unfinished}
DO UPDATE SET task = excluded.task, payload = excluded.payload, queue = excluded.queue,
    priority = excluded.priority, max_attempts = excluded.max_attempts,
    timeout_ms = excluded.timeout_ms, serial_key = excluded.serial_key,
    flags = excluded.flags, tags = excluded.tags, trace_context = excluded.trace_context,
    metadata = excluded.metadata,
    run_at = CASE WHEN $14 THEN j.run_at ELSE excluded.run_at END,
    attempt = 0, status = 'pending', last_error = NULL, updated_at = {now}
WHERE j.status IN ('pending', 'retrying')
RETURNING j.id, (j.xmax = 0) AS created";

/// A running or suspended holder gives up its key to a replacing enqueue. $1 key.
const RELEASE_KEY: &str = "
UPDATE {schema}.jobs SET dedupe_key = NULL, updated_at = {now}
WHERE dedupe_key = $1 AND status IN ('running', 'waiting')";

/// The unfinished jobs holding these dedupe keys (a concurrent enqueue won the race).
const BY_DEDUPE_KEYS: &str = "
SELECT dedupe_key, id FROM {schema}.jobs
WHERE dedupe_key = ANY($1::text[]) AND status IN {unfinished}";

/// Completes many leases at once; returns the ids it completed. Fenced per row: a row is
/// completed only when it runs under the token paired with its id.
///
/// The shape is chosen so that no statistics can lead the planner astray:
/// - `j.id = ANY(ARRAY(SELECT unnest($1)))` is the only index condition on offer, so the
///   rows are found by primary key. The ids go through a one-time subquery so that the
///   planner cannot count them: with the array itself in view, a custom plan (every
///   connection's first five executions) on a table never analyzed weighed 1000 ids
///   against its guess of the table's size and scanned the whole table instead (35 ms
///   against 15 ms per batch of 1000 on 100,000 jobs). Not knowing the count, it looks
///   the rows up through the primary key in page order (a bitmap scan).
///   The running check sits inside a CASE on purpose: written as a plain
///   `status = 'running'` it lets the planner pick the `jobs_running_lease` partial index
///   (stale statistics say almost nothing runs) and scan every running job of every
///   worker to find this batch's.
/// - Each row's token and result come from the same arrays, unnested and joined on id.
///   The other side of the join is already cut down to the batch by the primary key, so
///   the planner hashes one batch against the other (O(n)) rather than rescanning the
///   arrays per row; the plan tests check this with stale statistics, for generic and
///   custom plans. It replaced a JSON object keyed by id (`{"<id>": [token, result]}`)
///   that the server parsed and searched twice per row: in `bench/sql/statement_costs.sh`
///   the object cost about 0.5 µs of server time per job more (0.2 to parse, 0.3 to
///   search), and the client no longer builds it.
///
/// Each row's ended attempt is appended to its history in the same update.
///
/// `$1` ids (each at most once), `$2` their tokens, `$3` their results, in the same order.
const COMPLETE_MANY: &str = "
UPDATE {schema}.jobs AS j
SET status = 'completed',
    result = d.result,
    attempts = {history},
    lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL,
    completed_at = {now}, updated_at = {now}
FROM unnest($1::bigint[], $2::bigint[], $3::jsonb[]) AS d(id, token, result)
WHERE j.id = ANY(ARRAY(SELECT unnest($1::bigint[]))) AND j.id = d.id
  AND CASE WHEN j.status = 'running' THEN j.lease_token = d.token ELSE false END
RETURNING j.id";

/// One completion, with its attempt appended to the history. $1 id, $2 token, $3 result.
const COMPLETE: &str = "
UPDATE {schema}.jobs
SET status = 'completed', result = $3::jsonb, attempts = {history},
    lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL,
    completed_at = {now}, updated_at = {now}
WHERE id = $1 AND status = 'running' AND lease_token = $2";

/// A failed attempt that will retry (recorded as `retrying`). $1 id, $2 token, $3 error,
/// $4 delay (µs).
const FAIL_RETRY: &str = "
UPDATE {schema}.jobs
SET status = 'retrying', last_error = $3, attempts = {history},
    run_at = {now} + $4::bigint * interval '1 microsecond',
    lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = {now}
WHERE id = $1 AND status = 'running' AND lease_token = $2";

/// A failed attempt that ends the job (recorded as `failed`). $1 id, $2 token, $3 error.
const FAIL_TERMINAL: &str = "
UPDATE {schema}.jobs
SET status = 'failed', last_error = $3, attempts = {history},
    lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL,
    completed_at = {now}, updated_at = {now}
WHERE id = $1 AND status = 'running' AND lease_token = $2";

/// Gives a job back without spending its attempt (recorded as `released`, under the
/// attempt number it ran as), and wakes listeners since it is due at once. $1 id, $2 token.
const RELEASE: &str = "
WITH u AS (
    UPDATE {schema}.jobs
    SET attempts = {history},
        attempt = attempt - 1,
        status = CASE WHEN attempt - 1 > 0 THEN 'retrying' ELSE 'pending' END,
        run_at = {now},
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = {now}
    WHERE id = $1 AND status = 'running' AND lease_token = $2
    RETURNING id
)
SELECT u.id, pg_notify({channel}, '') FROM u";

/// Snoozes: like `RELEASE`, but due after the delay (recorded as `snoozed`), and without
/// a NOTIFY: the job is not due now. $1 id, $2 token, $3 delay (µs).
const SNOOZE: &str = "
UPDATE {schema}.jobs
SET attempts = {history},
    attempt = attempt - 1,
    status = CASE WHEN attempt - 1 > 0 THEN 'retrying' ELSE 'pending' END,
    run_at = {now} + $3::bigint * interval '1 microsecond',
    lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = {now}
WHERE id = $1 AND status = 'running' AND lease_token = $2";

/// Stores a running job's progress. $1 id, $2 token, $3 progress.
const SET_PROGRESS: &str = "
UPDATE {schema}.jobs SET progress = $3::jsonb, updated_at = {now}
WHERE id = $1 AND status = 'running' AND lease_token = $2";

/// Marks an unfinished job as awaited, so its final write sends a NOTIFY, and returns it.
/// No row: the job is finished or missing (a fresh read tells which). $1 id.
const WATCH_JOB: &str = "
UPDATE {schema}.jobs SET awaited = true
WHERE id = $1 AND status IN {unfinished}
RETURNING {job_columns}";

/// Renews a lease. $1 id, $2 token, $3 extension (µs).
const HEARTBEAT: &str = "
UPDATE {schema}.jobs
SET lease_expires_at = {now} + $3::bigint * interval '1 microsecond', updated_at = {now}
WHERE id = $1 AND status = 'running' AND lease_token = $2
RETURNING lease_expires_at";

/// Renews many leases in one statement, fenced per row like `COMPLETE_MANY` and planned
/// the same way (rows by primary key, tokens paired by a hash join; see the plan tests).
/// Returns each renewed row's id, token and new expiry. $1 ids, $2 their tokens, in the
/// same order, $3 extension (µs).
const HEARTBEAT_MANY: &str = "
UPDATE {schema}.jobs AS j
SET lease_expires_at = {now} + $3::bigint * interval '1 microsecond', updated_at = {now}
FROM unnest($1::bigint[], $2::bigint[]) AS d(id, token)
WHERE j.id = ANY(ARRAY(SELECT unnest($1::bigint[]))) AND j.id = d.id
  AND CASE WHEN j.status = 'running' THEN j.lease_token = d.token ELSE false END
RETURNING j.id, j.lease_token, j.lease_expires_at";

/// Returns expired leases' jobs to retrying, or fails them when no attempt is left, and
/// returns one row per released job: id, queue, task, the attempt whose lease expired,
/// and the status it left. Rows another sweeper holds are skipped rather than waited for.
/// Each released attempt is recorded as `reclaimed`, with the reason as its error.
///
/// When something was released, listeners are woken (the retried jobs are due at once)
/// by one NOTIFY from the `notified` CTE. A CTE that modifies no data runs only as far as
/// the query reads it, so the final SELECT reads it through a join that cannot drop a
/// row: it is evaluated (once: it is materialized) whenever `u` has a row, and yields
/// exactly one row then, or nothing when no lease expired, without a NOTIFY.
const RECLAIM: &str = "
WITH expired AS (
    SELECT id,
           'lease expired: the worker stopped heartbeating'::text AS reason
    FROM {schema}.jobs
    WHERE status = 'running' AND lease_expires_at <= {now}
    FOR UPDATE SKIP LOCKED
),
u AS (
    UPDATE {schema}.jobs AS j
    SET status = CASE WHEN j.attempt < j.max_attempts THEN 'retrying' ELSE 'failed' END,
        run_at = CASE WHEN j.attempt < j.max_attempts THEN {now} ELSE j.run_at END,
        completed_at = CASE WHEN j.attempt < j.max_attempts THEN NULL ELSE {now} END,
        last_error = expired.reason,
        attempts = {history},
        lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL, updated_at = {now}
    FROM expired
    WHERE j.id = expired.id
    RETURNING j.id, j.queue, j.task, j.attempt, j.status
),
notified AS MATERIALIZED (
    SELECT pg_notify({channel}, '')::text AS sent
    FROM (SELECT 1 FROM u LIMIT 1) AS released
)
SELECT u.id, u.queue, u.task, u.attempt, u.status
FROM u LEFT JOIN notified ON true";

/// Stores a checkpoint if the lease is current, written now; the row lock on the job
/// keeps a concurrent reclaim from slipping in between the check and the write.
/// $1 job id, $2 token, $3 key, $4 name, $5 ok (JSON text), $6 err, $7 arguments' hash.
const CHECKPOINT: &str = "
WITH held AS (
    SELECT id FROM {schema}.jobs
    WHERE id = $1 AND status = 'running' AND lease_token = $2
    FOR SHARE
)
INSERT INTO {schema}.checkpoints (job_id, key, name, ok, err, created_at, args_hash)
SELECT held.id, $3, $4, $5::jsonb, $6, {now}, $7 FROM held
ON CONFLICT (job_id, key) DO UPDATE
SET name = excluded.name, ok = excluded.ok, err = excluded.err,
    created_at = excluded.created_at, args_hash = excluded.args_hash";

/// Locks the job row for a transactional step and checks the lease, so no reclaim can
/// start another attempt until the step's transaction ends. $1 job id, $2 token.
const LOCK_LEASE: &str = "
SELECT id FROM {schema}.jobs
WHERE id = $1 AND status = 'running' AND lease_token = $2
FOR SHARE";

/// Read by position in this order (see `list_checkpoints`).
const LIST_CHECKPOINTS: &str = "
SELECT key, name, ok, err, created_at, args_hash FROM {schema}.checkpoints WHERE job_id = $1
ORDER BY key";

/// The checkpoints of several jobs, grouped by job and in key order within each (see
/// `list_checkpoints_many`). $1 job ids.
const LIST_CHECKPOINTS_MANY: &str = "
SELECT job_id, key, name, ok, err, created_at, args_hash FROM {schema}.checkpoints
WHERE job_id = ANY($1::bigint[])
ORDER BY job_id, key";

const DELETE_CHECKPOINTS: &str = "DELETE FROM {schema}.checkpoints WHERE job_id = $1";

const NOW: &str = "SELECT {now}";

const GET_JOB: &str = "SELECT {job_columns} FROM {schema}.jobs WHERE id = $1";

/// Cancels an unfinished job and every unfinished descendant (children spawned by
/// workflows); running members lose their lease, and their attempt is recorded as
/// `cancelled`. Returns the ids it cancelled. $1 id.
const CANCEL: &str = "
WITH RECURSIVE tree AS (
    SELECT id FROM {schema}.jobs WHERE id = $1 AND status IN {unfinished}
    UNION ALL
    SELECT c.id FROM {schema}.jobs c JOIN tree t ON c.parent_id = t.id
)
UPDATE {schema}.jobs AS j
SET status = 'cancelled',
    attempts = CASE WHEN j.status = 'running' THEN {history} ELSE j.attempts END,
    lease_holder = NULL, lease_token = NULL, lease_expires_at = NULL,
    completed_at = {now}, updated_at = {now}
FROM tree
WHERE j.id = tree.id AND j.status IN {unfinished}
RETURNING j.id";

const JOB_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM {schema}.jobs WHERE id = $1)";

/// A job's ended attempts, oldest first (array order), then its current one when it
/// runs. Read by position: attempt, worker, started_at, finished_at, outcome, error.
/// $1 id.
const LIST_ATTEMPTS: &str = "
SELECT h.attempt, h.worker, h.started_at, h.finished_at, h.outcome, h.error, h.n
FROM {schema}.jobs j,
     unnest(j.attempts) WITH ORDINALITY
         AS h(attempt, worker, started_at, finished_at, outcome, error, n)
WHERE j.id = $1
UNION ALL
SELECT attempt, lease_holder, coalesce(started_at, updated_at), NULL, 'running', NULL, NULL
FROM {schema}.jobs
WHERE id = $1 AND status = 'running'
ORDER BY 7 NULLS LAST";

/// Jobs per queue and final status that finished at or after $1, through the
/// `jobs_finished` partial index. Unordered: `finished_counts` sorts the few rows by
/// queue and status in lifecycle order (`JobStatus`'s order), which neither the status
/// text nor the database's collation gives.
const FINISHED_COUNTS: &str = "
SELECT queue, status, count(*) FROM {schema}.jobs
WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at >= $1
GROUP BY queue, status";

/// Jobs per queue and status, in (queue, status) text order: what the metrics sampler
/// reads every interval, so it never reads the table's rows. Each branch counts one
/// group of statuses from the partial index that holds exactly its jobs, index-only:
/// claimable jobs from `jobs_claimable`, parked ones from `jobs_blocked` (both carry the
/// status), finished ones (usually most of the table) from `jobs_finished` (which
/// carries the queue). Running jobs, a few per worker, are read through
/// `jobs_running_lease`. The branches split the statuses without overlap, so the sums
/// are the table's exact counts (the plan tests check the plan and the numbers).
const COUNTS: &str = "
SELECT queue, status, sum(n)::bigint FROM (
    SELECT queue, status, count(*) AS n FROM {schema}.jobs
    WHERE status IN ('pending', 'retrying', 'waiting') AND NOT blocked
    GROUP BY queue, status
    UNION ALL
    SELECT queue, status, count(*) FROM {schema}.jobs
    WHERE status IN ('pending', 'retrying', 'waiting') AND blocked
    GROUP BY queue, status
    UNION ALL
    SELECT queue, status, count(*) FROM {schema}.jobs
    WHERE status = 'running'
    GROUP BY queue, status
    UNION ALL
    SELECT queue, status, count(*) FROM {schema}.jobs
    WHERE status IN ('completed', 'failed', 'cancelled')
    GROUP BY queue, status
) AS c
GROUP BY queue, status
ORDER BY queue, status";

/// The statements for one schema.
#[derive(Debug, Clone)]
pub(crate) struct Sql {
    pub claim: Arc<str>,
    pub claim_queues: Arc<str>,
    pub enqueue: Arc<str>,
    pub enqueue_plain: Arc<str>,
    pub enqueue_uniform: Arc<str>,
    pub by_dedupe_keys: Arc<str>,
    pub replace_keyed: Arc<str>,
    pub release_key: Arc<str>,
    pub complete: Arc<str>,
    pub complete_many: Arc<str>,
    pub fail_retry: Arc<str>,
    pub fail_terminal: Arc<str>,
    pub release: Arc<str>,
    pub snooze: Arc<str>,
    pub set_progress: Arc<str>,
    pub watch_job: Arc<str>,
    pub heartbeat: Arc<str>,
    pub heartbeat_many: Arc<str>,
    pub reclaim: Arc<str>,
    pub checkpoint: Arc<str>,
    pub lock_lease: Arc<str>,
    pub list_checkpoints: Arc<str>,
    pub list_checkpoints_many: Arc<str>,
    pub delete_checkpoints: Arc<str>,
    pub now: Arc<str>,
    pub get_job: Arc<str>,
    pub cancel: Arc<str>,
    pub job_exists: Arc<str>,
    pub list_attempts: Arc<str>,
    pub finished_counts: Arc<str>,
    pub counts: Arc<str>,
}

/// The storage's clock in SQL: the database's `now()`, or, for tests (feature `testing`),
/// `now()` plus the schema's test-clock offset.
pub(crate) fn now_expr(schema: &str, test_clock: bool) -> String {
    if test_clock {
        format!("{}.test_now()", quote_ident(schema))
    } else {
        "now()".to_string()
    }
}

/// Renders a statement template for `schema` (already validated); `{now}` becomes `now`.
pub(crate) fn render(template: &str, schema: &str, now: &str) -> Arc<str> {
    let q = quote_ident(schema);
    template
        .replace("{now}", now)
        .replace("{schema}", &q)
        .replace("{seq}", &quote_literal(&format!("{q}.jobs_id_seq")))
        .replace("{channel}", &quote_literal(&channel(schema)))
        .replace("{unfinished}", UNFINISHED)
        .replace("{job_columns_j}", &job_columns("j"))
        .replace("{job_columns}", &job_columns(""))
        .into()
}

/// The most jobs of full serial keys one claim parks (see [`CLAIM`]).
const PARK_BATCH: u32 = 10_000;

/// The single-queue claim's template: [`CLAIM`] with the lease shared by both claims
/// and the rate limit's count ([`RATE_BUMP`]) before its UPDATE, and the arguments
/// that steer its plan read through sub-selects (see [`hide_from_planner`]).
fn claim_template() -> String {
    hide_from_planner(
        &CLAIM
            .replace(
                "{candidate}",
                &CANDIDATE
                    .replace("{c_queue}", "c.queue = $1")
                    .replace("{e_queue}", "e.queue = $1"),
            )
            .replace(
                "{park}",
                &PARK
                    .replace("{limit}", "least($3, coalesce((SELECT room FROM rl), $3))")
                    .replace("{park_from}", "")
                    .replace("{k_queue}", "k.queue = $1")
                    .replace("{kq_queue}", "kq.queue = $1"),
            )
            .replace("{park_batch}", &PARK_BATCH.to_string())
            .replace(
                "\n{lease}",
                &LEASE.replacen(
                    "\nUPDATE {schema}.jobs AS j",
                    &format!("{RATE_BUMP}\nUPDATE {{schema}}.jobs AS j"),
                    1,
                ),
            )
            .replace("{rate_window_open}", RATE_WINDOW_OPEN),
    )
}

/// The claim's arguments its plan depends on (queue, tasks, limit and forbidden flags),
/// each read through a sub-select, which the planner turns into an init plan whose
/// value it does not know when planning, even when it plans for the arguments given.
///
/// Why: a prepared statement's first five executions get plans made for their
/// arguments (custom plans); after that PostgreSQL keeps the one generic plan only if
/// its estimated cost is below the custom plans' average, and re-plans every execution
/// otherwise. Planning the claim takes about 1-2 ms, several times what running it
/// takes. Beside a deep backlog the estimates with the arguments known came out a few
/// percent cheaper (the task filter looks more selective when the planner sees it
/// names one task of two), so every claim was planned anew: an empty claim took 2.0 ms
/// instead of 0.24 (`pgbench -M prepared` on the backlog scenario's tables). With the
/// arguments out of sight both kinds of plan are the same plan at the same cost, and the
/// planning cost PostgreSQL adds to custom plans then always makes the generic one win.
/// The generic plan is the one the plan tests check anyway. The lease's own arguments
/// ($4 to $6) only fill in the updated columns and change no estimate.
fn hide_from_planner(template: &str) -> String {
    template
        .replace("$2::text[]", "(SELECT $2::text[])::text[]")
        .replace("$7::text[]", "(SELECT $7::text[])::text[]")
        // The several-queue claim's array first, out of the scalar's way.
        .replace("$1::text[]", "{queues}")
        .replace("$1", "(SELECT $1::text)")
        .replace("{queues}", "(SELECT $1::text[])::text[]")
        .replace("$3", "(SELECT $3::bigint)")
}

/// The several-queue claim's template: [`CLAIM_QUEUES`] with the shared lease, its
/// arguments read through sub-selects as the single-queue claim's are.
fn claim_queues_template() -> String {
    hide_from_planner(
        &CLAIM_QUEUES
            .replace(
                "{candidate}",
                &CANDIDATE
                    .replace("{c_queue}", "c.queue = qs.q")
                    .replace("{e_queue}", "e.queue = ANY(ARRAY(SELECT q FROM qs))"),
            )
            .replace(
                "{park}",
                &PARK
                    .replace("{limit}", "$3")
                    .replace("{park_from}", " CROSS JOIN qs")
                    .replace("{k_queue}", "k.queue = qs.q")
                    .replace("{kq_queue}", "kq.queue = ANY(ARRAY(SELECT q FROM qs))"),
            )
            .replace("{park_batch}", &PARK_BATCH.to_string())
            .replace("\n{lease}", LEASE),
    )
}

impl Sql {
    /// Renders every statement for `schema` (already validated) with `now` as the clock.
    pub fn new(schema: &str, now: &str) -> Self {
        let r = |t: &str| render(t, schema, now);
        Sql {
            claim: r(&claim_template()),
            claim_queues: r(&claim_queues_template()),
            enqueue: r(ENQUEUE),
            enqueue_plain: r(ENQUEUE_PLAIN),
            enqueue_uniform: r(ENQUEUE_UNIFORM),
            by_dedupe_keys: r(BY_DEDUPE_KEYS),
            replace_keyed: r(REPLACE_KEYED),
            release_key: r(RELEASE_KEY),
            complete: r(&with_history(COMPLETE, AttemptOutcome::Completed, "NULL")),
            complete_many: r(&with_history(
                COMPLETE_MANY,
                AttemptOutcome::Completed,
                "NULL",
            )),
            fail_retry: r(&with_history(
                FAIL_RETRY,
                AttemptOutcome::Retrying,
                "$3::text",
            )),
            fail_terminal: r(&with_history(
                FAIL_TERMINAL,
                AttemptOutcome::Failed,
                "$3::text",
            )),
            release: r(&with_history(RELEASE, AttemptOutcome::Released, "NULL")),
            snooze: r(&with_history(SNOOZE, AttemptOutcome::Snoozed, "NULL")),
            set_progress: r(SET_PROGRESS),
            watch_job: r(WATCH_JOB),
            heartbeat: r(HEARTBEAT),
            heartbeat_many: r(HEARTBEAT_MANY),
            reclaim: r(&with_history(
                RECLAIM,
                AttemptOutcome::Reclaimed,
                "expired.reason",
            )),
            checkpoint: r(CHECKPOINT),
            lock_lease: r(LOCK_LEASE),
            list_checkpoints: r(LIST_CHECKPOINTS),
            list_checkpoints_many: r(LIST_CHECKPOINTS_MANY),
            delete_checkpoints: r(DELETE_CHECKPOINTS),
            now: r(NOW),
            get_job: r(GET_JOB),
            cancel: r(&with_history(CANCEL, AttemptOutcome::Cancelled, "NULL")),
            job_exists: r(JOB_EXISTS),
            list_attempts: r(LIST_ATTEMPTS),
            finished_counts: r(FINISHED_COUNTS),
            counts: r(COUNTS),
        }
    }
}

#[cfg(test)]
mod hidden_argument_tests {
    /// Every use of the arguments that steer the claim's plan goes through its sub-select
    /// (a bare one would let the custom plans' estimates differ again), and the plain
    /// text replacement met no `$1` that was the start of `$10` and up.
    #[test]
    fn the_claim_reads_its_steering_arguments_only_through_sub_selects() {
        for (claim, queue) in [
            (super::claim_template(), "(SELECT $1::text)"),
            (super::claim_queues_template(), "(SELECT $1::text[])"),
        ] {
            for (arg, hidden) in [
                ("$1", queue),
                ("$2", "(SELECT $2::text[])"),
                ("$3", "(SELECT $3::bigint)"),
                ("$7", "(SELECT $7::text[])"),
            ] {
                assert!(claim.contains(hidden), "{arg} is used");
                assert_eq!(
                    claim.matches(arg).count(),
                    claim.matches(hidden).count(),
                    "every {arg} is hidden"
                );
            }
            let digits = claim
                .as_bytes()
                .windows(3)
                .any(|w| w[0] == b'$' && w[1].is_ascii_digit() && w[2].is_ascii_digit());
            assert!(!digits, "the claim has no argument past $9");
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod plan_tests {
    use super::{
        claim_queues_template, claim_template, render, with_history, COMPLETE_MANY,
        FINISHED_COUNTS, HEARTBEAT_MANY,
    };
    use crate::options::quote_literal;
    use crate::testing::TestSchema;
    use durable_jobs::AttemptOutcome;
    use durable_jobs::{DequeueParams, NewJob, Storage};
    use sqlx::{AssertSqlSafe, Row};
    use std::time::Duration;

    /// The statistics a statement may meet: never analyzed (autovacuum off or not yet
    /// round), analyzed while empty (stale after a bulk enqueue), analyzed after the
    /// enqueue, and a table that is mostly finished jobs kept for retention.
    #[derive(Debug, Clone, Copy)]
    enum Stats {
        Never,
        StaleEmpty,
        Fresh,
        MostlyFinished,
    }

    const ALL_STATS: [Stats; 4] = [
        Stats::Never,
        Stats::StaleEmpty,
        Stats::Fresh,
        Stats::MostlyFinished,
    ];

    /// A fresh schema with `n` pending jobs and statistics of the kind `stats` (for
    /// `MostlyFinished`, all but one job in 400 completed), and a connection to explain on.
    async fn jobs_with(
        stats: Stats,
        n: usize,
    ) -> (TestSchema, sqlx::pool::PoolConnection<sqlx::Postgres>) {
        let t = TestSchema::new().await.expect("schema");
        let q = crate::options::quote_ident(t.schema());
        let mut conn = t.storage().pool().acquire().await.expect("conn");
        let analyze = format!("ANALYZE {q}.jobs");
        if matches!(stats, Stats::StaleEmpty) {
            run(&mut conn, &analyze).await;
        }
        let jobs: Vec<NewJob> = (0..n)
            .map(|i| NewJob::new("t", serde_json::json!(i)))
            .collect();
        t.storage().enqueue_many(jobs).await.expect("enqueue");
        if matches!(stats, Stats::MostlyFinished) {
            let finish = format!(
                "UPDATE {q}.jobs SET status = 'completed', completed_at = now() WHERE id % 400 <> 0"
            );
            run(&mut conn, &finish).await;
        }
        if matches!(stats, Stats::Fresh | Stats::MostlyFinished) {
            run(&mut conn, &analyze).await;
        }
        (t, conn)
    }

    async fn run(conn: &mut sqlx::PgConnection, sql: &str) {
        sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(conn)
            .await
            .expect(sql);
    }

    /// The plan of `EXECUTE {execute}` under plan cache `mode`, one line per node (the
    /// conditions, which repeat the long arguments, left out).
    async fn explain(conn: &mut sqlx::PgConnection, mode: &str, execute: &str) -> String {
        run(conn, &format!("SET plan_cache_mode = {mode}")).await;
        let plan: Vec<String> = sqlx::query(AssertSqlSafe(format!("EXPLAIN EXECUTE {execute}")))
            .fetch_all(conn)
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get::<String, _>(0))
            .filter(|l| {
                let l = l.trim_start();
                l.starts_with("->") || l.starts_with("Update") || l.starts_with("Limit")
            })
            .collect();
        plan.join("\n")
    }

    /// The batch completion and the batch heartbeat find their rows by primary key
    /// whatever the statistics say: never by a scan of the whole table (which a table
    /// never analyzed once got for the first custom plans), and never through the
    /// `jobs_running_lease` partial index, which stale statistics that say nothing runs
    /// would make look cheap and which holds every running job of every worker. Each pairs
    /// its rows with their tokens by a hash join, not a nested loop over the unnested
    /// arrays. Checked for custom plans (a connection's first five executions) and the
    /// generic plan a prepared statement settles on.
    #[tokio::test]
    async fn batch_writes_are_planned_by_primary_key_whatever_the_statistics() {
        for stats in ALL_STATS {
            let (t, mut conn) = jobs_with(stats, 50_000).await;
            let claimed = t
                .storage()
                .dequeue(DequeueParams {
                    queues: vec!["default".into()],
                    tasks: Vec::new(),
                    limit: 1_000,
                    lease_duration: Duration::from_secs(60),
                    holder: "plan".into(),
                    forbidden_flags: Vec::new(),
                })
                .await
                .expect("dequeue");
            assert!(!claimed.is_empty());
            let ids: Vec<String> = claimed.iter().map(|c| c.job.id.to_string()).collect();
            let tokens: Vec<String> = claimed.iter().map(|c| c.lease.token.to_string()).collect();
            let results = vec!["null"; claimed.len()];
            let ids = quote_literal(&format!("{{{}}}", ids.join(",")));
            let tokens = quote_literal(&format!("{{{}}}", tokens.join(",")));
            let results = quote_literal(&format!("{{{}}}", results.join(",")));
            // (name, statement, parameter types, arguments as literals: EXECUTE takes no
            // bind parameters). EXPLAIN runs neither, so both see the same running batch.
            let statements = [
                (
                    "complete_many",
                    COMPLETE_MANY,
                    "bigint[], bigint[], jsonb[]",
                    format!("{ids}::bigint[], {tokens}::bigint[], {results}::jsonb[]"),
                ),
                (
                    "heartbeat_many",
                    HEARTBEAT_MANY,
                    "bigint[], bigint[], bigint",
                    format!("{ids}::bigint[], {tokens}::bigint[], 60000000"),
                ),
            ];
            for (name, template, types, args) in statements {
                // (The heartbeat has no history slot: this leaves it as it is.)
                let template = with_history(template, AttemptOutcome::Completed, "NULL");
                let stmt = render(&template, t.schema(), "now()");
                run(&mut conn, &format!("PREPARE {name}({types}) AS {stmt}")).await;
                for mode in ["force_custom_plan", "force_generic_plan"] {
                    let plan = explain(&mut conn, mode, &format!("{name}({args})")).await;
                    let what = format!("{name}, {stats:?}, {mode}");
                    assert!(plan.contains("jobs_pkey"), "{what}:\n{plan}");
                    assert!(!plan.contains("jobs_running_lease"), "{what}:\n{plan}");
                    assert!(!plan.contains("Seq Scan on jobs"), "{what}:\n{plan}");
                    // A nested loop would rescan one side per row of the other: O(n²).
                    assert!(plan.contains("Hash Join"), "{what}:\n{plan}");
                    assert!(!plan.contains("Nested Loop"), "{what}:\n{plan}");
                }
            }
            drop(conn);
            t.drop_schema().await.expect("drop");
        }
    }

    /// Both claim statements find their candidates through the `jobs_claimable` partial
    /// index whatever the statistics say and whatever the limit, and their UPDATE finds
    /// the claimed rows by primary key, never by a scan of the whole table. Both walk the
    /// index in claim order (the several-queue claim per queue). Checked for
    /// custom plans (what a claim gets: its limit is a parameter, so the generic plan's
    /// guess of 10% of the rows never wins) and for the generic plan too.
    #[tokio::test]
    async fn claims_walk_the_claimable_index_whatever_the_statistics() {
        for stats in ALL_STATS {
            let (t, mut conn) = jobs_with(stats, 20_000).await;
            for (name, template, queue_type, queue) in [
                ("cl", claim_template(), "text", "'default'"),
                (
                    "clq",
                    claim_queues_template(),
                    "text[]",
                    "'{default,spare}'::text[]",
                ),
            ] {
                let stmt = render(&template, t.schema(), "now()");
                let types = format!("{queue_type}, text[], bigint, text, bigint, bigint, text[]");
                run(&mut conn, &format!("PREPARE {name}({types}) AS {stmt}")).await;
                for mode in ["force_custom_plan", "force_generic_plan"] {
                    for limit in [1, 1000] {
                        let execute = format!(
                            "{name}({queue}, '{{}}', {limit}, 'plan', 7, 60000000, '{{}}')"
                        );
                        let plan = explain(&mut conn, mode, &execute).await;
                        let what = format!("{name}, {stats:?}, {mode}, limit {limit}");
                        // The candidate scan is `jobs c` (a range per priority, and per
                        // queue across queues); `jobs j` is the UPDATE's.
                        let cand: Vec<&str> = plan
                            .lines()
                            .filter(|l| l.contains(" on jobs c  ("))
                            .collect();
                        assert_eq!(cand.len(), 1, "{what}:\n{plan}");
                        assert!(!plan.contains("Seq Scan on jobs"), "{what}:\n{plan}");
                        assert!(
                            cand[0].contains("Index Scan using jobs_claimable on jobs c "),
                            "{what}:\n{plan}"
                        );
                        // The priorities come from the same index, one probe each.
                        assert!(
                            plan.contains("using jobs_claimable on jobs a "),
                            "{what}:\n{plan}"
                        );
                        // Jobs to park are looked for among the keyed ones only.
                        assert!(
                            plan.contains("using jobs_claimable_keyed on jobs k "),
                            "{what}:\n{plan}"
                        );
                    }
                }
            }
            drop(conn);
            t.drop_schema().await.expect("drop");
        }
    }

    /// The claim is never JIT-compiled on the storage's connections, whatever its
    /// estimated cost: a claim beside a deep backlog was estimated above every JIT
    /// threshold and spent about 0.9 s in LLVM to run for under 1 ms (see
    /// `crate::exec::NO_JIT_BEGIN`).
    /// The thresholds are set to zero here, so any plan would be compiled where JIT is on,
    /// as a connection opened without the storage's options shows.
    #[tokio::test]
    async fn claims_are_never_jit_compiled_on_the_storage_s_connections() {
        let (t, mut conn) = jobs_with(Stats::Fresh, 1_000).await;
        let mut plain = <sqlx::PgConnection as sqlx::Connection>::connect(t.url())
            .await
            .expect("plain connection");
        let stmt = render(&claim_template(), t.schema(), "now()");
        let types = "text, text[], bigint, text, bigint, bigint, text[]";
        let execute = "cl('default', '{}', 500, 'plan', 7, 60000000, '{}')";
        let mut plans = Vec::new();
        for c in [&mut *conn, &mut plain] {
            run(
                c,
                "SET jit_above_cost = 0; SET jit_inline_above_cost = 0; \
                 SET jit_optimize_above_cost = 0",
            )
            .await;
            run(c, &format!("PREPARE cl({types}) AS {stmt}")).await;
            let plan: Vec<String> =
                sqlx::query_scalar(AssertSqlSafe(format!("EXPLAIN EXECUTE {execute}")))
                    .fetch_all(&mut *c)
                    .await
                    .expect("explain");
            plans.push(plan.join("\n"));
        }
        assert!(
            !plans[0].contains("JIT:"),
            "storage's connection:\n{}",
            plans[0]
        );
        assert!(plans[1].contains("JIT:"), "plain connection:\n{}", plans[1]);
        drop((conn, plain));
        t.drop_schema().await.expect("drop");
    }

    /// `finished_counts` and the retention purge find their rows through the
    /// `jobs_finished` partial index on a table of many finished jobs kept over time,
    /// when the window they ask for is a small part of it: never by a scan of the whole
    /// table. Checked for custom plans (a time bound is a parameter whose value the
    /// planner sees: its generic plan, guessing a third of the rows, never beats them).
    #[tokio::test]
    async fn finished_counts_and_purge_use_the_finished_index() {
        let (t, mut conn) = jobs_with(Stats::Never, 50_000).await;
        let q = crate::options::quote_ident(t.schema());
        // All but one job in 400 finished, one a minute over the last 35 days.
        run(
            &mut conn,
            &format!(
                "UPDATE {q}.jobs SET status = (ARRAY['completed', 'failed', 'cancelled'])[id % 3 + 1],
                     completed_at = now() - id * interval '1 minute'
                 WHERE id % 400 <> 0;
                 ANALYZE {q}.jobs"
            ),
        )
        .await;
        let statements = [
            (
                "finished_counts",
                FINISHED_COUNTS,
                "now() - interval '1 hour'",
            ),
            // What a retention policy keeping 30 days deletes.
            (
                "purge",
                crate::operations::PURGE,
                "now() - interval '30 days'",
            ),
        ];
        for (name, template, arg) in statements {
            let stmt = render(template, t.schema(), "now()");
            run(&mut conn, &format!("PREPARE {name}(timestamptz) AS {stmt}")).await;
            let plan = explain(&mut conn, "force_custom_plan", &format!("{name}({arg})")).await;
            assert!(plan.contains("jobs_finished"), "{name}:\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{name}:\n{plan}");
        }
        // The counts themselves: 60 finished in the last hour and a half minute (ids 1 to
        // 60), 20 of each status.
        let since = t.storage().now().await.expect("now") - chrono::Duration::seconds(3_630);
        let counts = t.storage().finished_counts(since).await.expect("counts");
        let got: Vec<_> = counts
            .iter()
            .map(|c| (c.queue.as_str(), c.status.as_str(), c.count))
            .collect();
        assert_eq!(
            got,
            [
                ("default", "completed", 20),
                ("default", "failed", 20),
                ("default", "cancelled", 20)
            ]
        );
        drop(conn);
        t.drop_schema().await.expect("drop");
    }

    /// `counts()` (which the metrics sampler runs every interval) never reads the table's
    /// rows: each group of statuses is counted index-only from its partial index, on a
    /// table of mostly finished jobs and on one with a deep backlog of pending jobs,
    /// vacuumed (the visibility map kept up, as autovacuum does); and its numbers are the
    /// table's own, with parked jobs counted as what they are (pending). The finished
    /// jobs carry a payload and a result of a modest size: with rows as narrow as their
    /// index entries, reading the table is as cheap as reading the index, and the
    /// planner rightly takes either.
    #[tokio::test]
    async fn counts_read_indexes_not_the_table() {
        for pending in [100, 50_000] {
            let t = TestSchema::new().await.expect("schema");
            let q = crate::options::quote_ident(t.schema());
            let mut conn = t.storage().pool().acquire().await.expect("conn");
            // Parked jobs of a busy key, and running ones: the key's and three more.
            fill_the_keys(&t, Backlog::BusySerialKey).await;
            run(
                &mut conn,
                &format!(
                    "INSERT INTO {q}.jobs (task, payload, serial_key, run_at)
                     SELECT 't', '{{}}', 'hot', now() - interval '1 hour'
                     FROM generate_series(1, 500);
                     INSERT INTO {q}.jobs
                         (task, payload, queue, status, attempt, completed_at, result)
                     SELECT 't', jsonb_build_object('order', i, 'note', repeat('x', 120)),
                            (ARRAY['default', 'other'])[i % 2 + 1],
                            (ARRAY['completed', 'failed', 'cancelled'])[i % 3 + 1], 1,
                            now() - i * interval '1 second', jsonb_build_object('ok', i)
                     FROM generate_series(1, 100000) AS i;
                     INSERT INTO {q}.jobs (task, payload, queue, priority, run_at)
                     SELECT 't', '{{}}', (ARRAY['default', 'other'])[i % 2 + 1], i % 3,
                            now() + interval '1 day'
                     FROM generate_series(1, {pending}) AS i;
                     INSERT INTO {q}.jobs (task, payload, status, attempt, run_at)
                     SELECT 't', '{{}}', (ARRAY['waiting', 'retrying'])[i % 2 + 1], 1,
                            timestamptz '9999-12-31 00:00:00+00'
                     FROM generate_series(1, 1000) AS i"
                ),
            )
            .await;
            let execute = Claimer::Worker.prepare(&mut conn, &t, "default").await;
            park_the_backlog(&mut conn, &q, Claimer::Worker, &execute).await;
            vacuum_clean(&mut conn, &q).await;
            let stmt = render(super::COUNTS, t.schema(), "now()");
            let plan: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {stmt}"
            )))
            .fetch_all(&mut *conn)
            .await
            .expect("explain");
            let plan = plan.join("\n");
            assert!(!plan.contains("Seq Scan"), "{pending}:\n{plan}");
            for index in ["jobs_claimable", "jobs_blocked", "jobs_finished"] {
                assert!(
                    plan.contains(&format!("Index Only Scan using {index} on jobs")),
                    "{pending}, {index}:\n{plan}"
                );
            }
            let counts = t.storage().counts().await.expect("counts");
            let got: Vec<(String, String, i64)> = counts
                .iter()
                .map(|c| {
                    let n = i64::try_from(c.count).expect("count");
                    (c.queue.clone(), c.status.as_str().to_string(), n)
                })
                .collect();
            let want: Vec<(String, String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT queue, status, count(*) FROM {q}.jobs
                 GROUP BY queue, status ORDER BY queue, status"
            )))
            .fetch_all(&mut *conn)
            .await
            .expect("counts by scan");
            assert_eq!(got, want, "{pending}");
            assert!(
                got.iter().any(|(_, s, n)| s == "running" && *n == 4),
                "{got:?}"
            );
            drop(conn);
            t.drop_schema().await.expect("drop");
        }
    }

    /// What a deep backlog that a claim cannot take is made of.
    #[derive(Debug, Clone, Copy)]
    enum Backlog {
        /// Pending jobs due tomorrow, at several priorities.
        NotYetDue,
        /// Workflows waiting: parked without a timer (run_at at the far future) and with
        /// timers due tomorrow.
        Waiting,
        /// Due jobs in a paused queue.
        Paused,
        /// Due jobs of serial keys whose one slot is taken by a running job: 100,000 of
        /// one key and 1,000 of each of three more, at several priorities.
        BusySerialKey,
        /// Due jobs of a key whose limit allows two running jobs, and two run.
        BusyKeyLimit,
    }

    /// The buffers of `jobs` and its indexes that the current transaction has touched
    /// (hit or read) so far: whatever part of a statement touched them (its main query,
    /// or a data-modifying CTE that EXPLAIN shows apart from it).
    async fn jobs_buffers(conn: &mut sqlx::PgConnection, q: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT sum(pg_stat_get_xact_blocks_fetched(c.oid))::bigint FROM pg_class c
             WHERE c.oid = '{q}.jobs'::regclass
                OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = '{q}.jobs'::regclass)"
        )))
        .fetch_one(conn)
        .await
        .expect("xact buffers")
    }

    /// VACUUM ANALYZE of `jobs`, indexes included, until it leaves no dead row behind and every page
    /// all-visible (what autovacuum keeps a table close to, and what index-only scans
    /// need). Parking a backlog leaves its rows' old versions in the claim index until a
    /// vacuum removes them (as finishing jobs does); a vacuum can neither remove versions
    /// nor mark fresh rows all-visible while a transaction running elsewhere (another
    /// test's, on this shared server) may still see the table as it was, so this waits,
    /// vacuuming again, until no such transaction is left: at most five minutes.
    async fn vacuum_clean(conn: &mut sqlx::PgConnection, q: &str) {
        let lit = quote_literal(&format!("{q}.jobs"));
        let mut last = (0, 0, 0);
        for _ in 0..3000 {
            // INDEX_CLEANUP ON: a vacuum that finds dead rows on under 2% of the pages
            // leaves them (and their pages not all-visible) for a later vacuum.
            run(
                conn,
                &format!("VACUUM (ANALYZE, INDEX_CLEANUP ON) {q}.jobs"),
            )
            .await;
            last = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT s.n_dead_tup, c.relpages::bigint, c.relallvisible::bigint
                 FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
                 WHERE s.relid = {lit}::regclass"
            )))
            .fetch_one(&mut *conn)
            .await
            .expect("vacuum state");
            let (dead, pages, visible): (i64, i64, i64) = last;
            if dead == 0 && visible >= pages {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{q}.jobs after vacuum: (dead rows, pages, all-visible pages) = {last:?}");
    }

    /// For the busy-key backlogs: makes every key of the backlog run as many jobs as its
    /// limit allows (through the storage's own enqueue and claim), so the backlog seeded
    /// next is due but cannot be taken.
    async fn fill_the_keys(t: &TestSchema, kind: Backlog) {
        let s = t.storage();
        let keys: &[&str] = match kind {
            Backlog::BusySerialKey => &["hot", "k1", "k2", "k3"],
            Backlog::BusyKeyLimit => {
                s.set_key_limit("pair", Some(2)).await.expect("limit");
                &["pair", "pair"]
            }
            _ => &[],
        };
        for key in keys {
            let mut j = NewJob::new("t", serde_json::json!(key));
            j.serial_key = Some((*key).to_string());
            s.enqueue(j).await.expect("enqueue");
        }
        let mut running = 0;
        // One job per key per claim: a claim per slot of the busiest key at most.
        for _ in 0..keys.len() {
            running += s
                .dequeue(DequeueParams {
                    queues: vec!["default".into()],
                    tasks: Vec::new(),
                    limit: 10,
                    lease_duration: Duration::from_secs(3600),
                    holder: "plan".into(),
                    forbidden_flags: Vec::new(),
                })
                .await
                .expect("dequeue")
                .len();
        }
        assert_eq!(running, keys.len(), "{kind:?}: every slot taken");
    }

    /// The buffers (shared hit plus read) the whole statement touched, from the first
    /// `Buffers:` line of EXPLAIN (ANALYZE, BUFFERS): the top node's, which counts its
    /// children's.
    async fn buffers(conn: &mut sqlx::PgConnection, execute: &str) -> (u64, String) {
        let plan: Vec<String> = sqlx::query(AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) EXECUTE {execute}"
        )))
        .fetch_all(conn)
        .await
        .expect("explain analyze")
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
        let plan = plan.join("\n");
        // Only the execution's lines: the planner's own buffers (its catalog reads, many
        // more while other tests' DDL invalidates the caches) come after `Planning:`, and
        // a statement that touched no buffer at all has no `Buffers:` line of its own.
        let executed = plan.split("\nPlanning").next().unwrap_or_default();
        let total = executed
            .lines()
            .find(|l| l.trim_start().starts_with("Buffers: shared"))
            .map_or(0, |line| {
                ["hit=", "read="]
                    .iter()
                    .filter_map(|k| line.split(k).nth(1))
                    .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                    .sum()
            });
        (total, plan)
    }

    /// The worker's claim never visits rows it cannot take because of their time, their
    /// queue or their serial key: on a table holding 100,000 such rows (seeded
    /// set-based, analyzed) beside a few due jobs, the claim that takes the due jobs and
    /// the empty claim after it touch a few dozen buffers, not the thousands of index
    /// pages the backlog spans (a claim that filtered the backlog row by row read every
    /// one of them).
    ///
    /// Jobs behind a busy key are met once: the first claims to walk them park them (at
    /// most `PARK_BATCH` per claim, taking nothing), and every claim after that passes
    /// them by. Freeing a slot lets exactly the key's next job in, which the next claim
    /// takes without walking the rest.
    ///
    /// The same holds for the claim naming several queues (`Storage::dequeue` with a
    /// second, empty queue beside the backlog's), which parks the busy keys' jobs itself.
    #[tokio::test]
    async fn claims_never_visit_a_backlog_they_cannot_take() {
        for (kind, claimer) in [
            Backlog::NotYetDue,
            Backlog::Waiting,
            Backlog::Paused,
            Backlog::BusySerialKey,
            Backlog::BusyKeyLimit,
        ]
        .into_iter()
        .flat_map(|kind| {
            [Claimer::Worker, Claimer::SeveralQueues, Claimer::SqlGetJob].map(|c| (kind, c))
        }) {
            let t = TestSchema::new().await.expect("schema");
            let q = crate::options::quote_ident(t.schema());
            let mut conn = t.storage().pool().acquire().await.expect("conn");
            fill_the_keys(&t, kind).await;
            let seed = match kind {
                Backlog::NotYetDue => format!(
                    "INSERT INTO {q}.jobs (task, payload, priority, run_at)
                     SELECT 't', '{{}}', i % 3, now() + interval '1 day' + i * interval '1 ms'
                     FROM generate_series(1, 100000) AS i"
                ),
                Backlog::Waiting => format!(
                    "INSERT INTO {q}.jobs (task, payload, status, attempt, run_at)
                     SELECT 't', '{{}}', 'waiting', 1,
                            CASE WHEN i % 2 = 0 THEN timestamptz '9999-12-31 00:00:00+00'
                                 ELSE now() + interval '1 day' END
                     FROM generate_series(1, 100000) AS i"
                ),
                Backlog::Paused => format!(
                    "INSERT INTO {q}.jobs (task, payload, queue, run_at)
                     SELECT 't', '{{}}', 'held', now() - interval '1 minute'
                     FROM generate_series(1, 100000) AS i;
                     INSERT INTO {q}.paused_queues (queue) VALUES ('held')"
                ),
                // Due since yesterday, one a millisecond, so none is due in the future.
                Backlog::BusySerialKey => format!(
                    "INSERT INTO {q}.jobs (task, payload, priority, serial_key, run_at)
                     SELECT 't', '{{}}', i % 3,
                            CASE WHEN i <= 100000 THEN 'hot' ELSE 'k' || (i % 3 + 1) END,
                            now() - interval '1 day' + i * interval '1 ms'
                     FROM generate_series(1, 103000) AS i"
                ),
                Backlog::BusyKeyLimit => format!(
                    "INSERT INTO {q}.jobs (task, payload, priority, serial_key, run_at)
                     SELECT 't', '{{}}', i % 3, 'pair',
                            now() - interval '1 day' + i * interval '1 ms'
                     FROM generate_series(1, 100000) AS i"
                ),
            };
            run(&mut conn, &seed).await;
            let (queue, due) = match kind {
                Backlog::Paused => ("held", 0),
                _ => ("default", 3),
            };
            let execute = claimer.prepare(&mut conn, &t, queue).await;
            if matches!(kind, Backlog::BusySerialKey | Backlog::BusyKeyLimit) {
                park_the_backlog(&mut conn, &q, claimer, &execute).await;
            }
            let jobs = (0..due)
                .map(|i| NewJob::new("t", serde_json::json!(i)))
                .collect();
            t.storage().enqueue_many(jobs).await.expect("enqueue");
            vacuum_clean(&mut conn, &q).await;
            // (Leasing the due jobs writes their rows and index entries: a few dozen
            // buffers more than a claim that finds nothing.) The SQL worker takes one job
            // a call: one call per due job, each within the bound.
            let calls = if claimer == Claimer::SqlGetJob {
                due
            } else {
                1
            };
            let per_call = if claimer == Claimer::SqlGetJob {
                1
            } else {
                due
            };
            // The claim naming two queues walks both queues' ranges: twice the bound.
            let queues = if claimer == Claimer::SeveralQueues {
                2
            } else {
                1
            };
            let mut cases: Vec<(&str, i64, u64)> = (0..calls)
                .map(|_| ("the claim of the due jobs", per_call, 150 * queues))
                .collect();
            cases.push(("an empty claim", 0, 50 * queues));
            for (what, claimed, most) in cases {
                let what = format!("{kind:?}, {claimer:?}, {what}");
                let (got, touched, all, plan) =
                    claim_counted(&mut conn, &q, claimer, &execute).await;
                // (The SQL function's plan is not shown: only the table's count below
                // bounds it.)
                if let Some(touched) = touched {
                    assert!(touched < most, "{what}: {touched} buffers\n{plan}");
                }
                // Counted by the table, so the parking CTEs (which EXPLAIN shows outside
                // the statement's top node) and the SQL function's statements count too.
                // (Planning reads each index's metapage, which these count: hence twice
                // the bound, still far below the backlog's thousands of pages.)
                assert!(
                    all < 2 * i64::try_from(most).unwrap_or(i64::MAX / 2),
                    "{what}: {all} buffers of jobs and its indexes\n{plan}"
                );
                assert_eq!(got, claimed, "{what}: claims\n{plan}");
                // A queue without keyed jobs never walks the keyed index per priority.
                if matches!(kind, Backlog::NotYetDue | Backlog::Waiting)
                    && claimer != Claimer::SqlGetJob
                {
                    assert!(
                        plan.contains("using jobs_claimable_keyed on jobs k (never executed)"),
                        "{what}: walked the keyed jobs\n{plan}"
                    );
                }
            }
            if matches!(kind, Backlog::BusySerialKey | Backlog::BusyKeyLimit) {
                next_job_of_a_freed_key_runs(&t, &mut conn, &q, claimer, &execute).await;
            }
            drop(conn);
            t.drop_schema().await.expect("drop");
        }
    }

    /// Which claim a plan test runs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Claimer {
        /// The worker's claim of one queue ([`super::CLAIM`]).
        Worker,
        /// The claim naming several queues ([`super::CLAIM_QUEUES`]): the backlog's queue
        /// and an empty one.
        SeveralQueues,
        /// The SQL worker's `get_job`, naming no queue (so it looks in every one).
        SqlGetJob,
    }

    impl Claimer {
        /// Prepares the claim of `queue` on `conn` (as `cl`, for the storage's claims)
        /// and returns the statement that runs it once.
        async fn prepare(
            self,
            conn: &mut sqlx::PgConnection,
            t: &TestSchema,
            queue: &str,
        ) -> String {
            let (template, queue_type, queue_arg) = match self {
                Claimer::Worker => (super::claim_template(), "text", format!("'{queue}'")),
                Claimer::SeveralQueues => (
                    super::claim_queues_template(),
                    "text[]",
                    format!("'{{{queue},spare}}'::text[]"),
                ),
                Claimer::SqlGetJob => {
                    let q = crate::options::quote_ident(t.schema());
                    return format!(
                        "SELECT count(*) FROM {q}.get_job('plan', NULL, interval '1 hour', NULL)"
                    );
                }
            };
            let stmt = render(&template, t.schema(), "now()");
            run(
                conn,
                &format!(
                    "PREPARE cl({queue_type}, text[], bigint, text, bigint, bigint, text[]) \
                     AS {stmt}"
                ),
            )
            .await;
            format!("cl({queue_arg}, '{{}}', 1000, 'plan', 7, 60000000, '{{}}')")
        }
    }

    /// Runs one claim (`execute`, from [`Claimer::prepare`]) in a transaction of its own
    /// and returns the jobs it claimed, the buffers its plan says it touched, the buffers
    /// of `jobs` and its indexes the transaction fetched (planning included), and the
    /// plan. For the SQL function, whose statements EXPLAIN does not show, there is no
    /// plan and no plan count: only the table's count says what it read (its statements
    /// are planned anew at each of a session's first calls, which that count includes).
    async fn claim_counted(
        conn: &mut sqlx::PgConnection,
        q: &str,
        claimer: Claimer,
        execute: &str,
    ) -> (i64, Option<u64>, i64, String) {
        run(conn, "BEGIN").await;
        let before = jobs_buffers(conn, q).await;
        let (claimed, touched, plan) = if claimer == Claimer::SqlGetJob {
            let claimed: i64 = sqlx::query_scalar(AssertSqlSafe(execute.to_string()))
                .fetch_one(&mut *conn)
                .await
                .expect("get_job");
            (claimed, None, String::new())
        } else {
            let (touched, plan) = buffers(conn, execute).await;
            let claimed = plan
                .split("Update on jobs j (actual rows=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next()?.parse::<i64>().ok())
                .unwrap_or_else(|| panic!("no claim in the plan\n{plan}"));
            (claimed, Some(touched), plan)
        };
        let all = jobs_buffers(conn, q).await - before;
        run(conn, "COMMIT").await;
        (claimed, touched, all, plan)
    }

    /// Runs the claim until the whole busy-key backlog (the due pending jobs of the busy
    /// keys) is parked: one claim per `PARK_BATCH` jobs (and the claim that finds nothing
    /// left), none taking a job.
    async fn park_the_backlog(
        conn: &mut sqlx::PgConnection,
        q: &str,
        claimer: Claimer,
        execute: &str,
    ) {
        let backlog: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {q}.jobs
             WHERE status = 'pending' AND serial_key IS NOT NULL AND run_at <= now()"
        )))
        .fetch_one(&mut *conn)
        .await
        .expect("count");
        let claims = usize::try_from(backlog).expect("count") / super::PARK_BATCH as usize + 2;
        for _ in 0..claims {
            let (got, _, _, plan) = claim_counted(conn, q, claimer, execute).await;
            assert_eq!(got, 0, "{claimer:?}: a busy key's job was claimed\n{plan}");
        }
        let parked: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {q}.jobs WHERE blocked"
        )))
        .fetch_one(&mut *conn)
        .await
        .expect("count");
        assert_eq!(parked, backlog, "{claimer:?}: parked after {claims} claims");
    }

    /// A busy key's running job completes: the key's next job (in claim order) is
    /// unparked in the same transaction, and the next claim takes exactly it, still
    /// without walking the rest of the backlog.
    async fn next_job_of_a_freed_key_runs(
        t: &TestSchema,
        conn: &mut sqlx::PgConnection,
        q: &str,
        claimer: Claimer,
        execute: &str,
    ) {
        // The first job that ran: a key's (the unkeyed due jobs ran after them).
        let (id, key, token): (i64, String, i64) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT id, serial_key, lease_token FROM {q}.jobs
             WHERE status = 'running' ORDER BY id LIMIT 1"
        )))
        .fetch_one(&mut *conn)
        .await
        .expect("running");
        let next: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT id FROM {q}.jobs WHERE status = 'pending' AND serial_key = {}
             ORDER BY priority DESC, run_at, id LIMIT 1",
            quote_literal(&key)
        )))
        .fetch_one(&mut *conn)
        .await
        .expect("next");
        let lease = durable_jobs::Lease {
            job_id: id,
            attempt: 1,
            token,
            expires_at: chrono::Utc::now(),
        };
        t.storage()
            .complete(&lease, serde_json::json!(null))
            .await
            .expect("complete");
        let (claimed, touched, all, plan) = claim_counted(conn, q, claimer, execute).await;
        assert!(
            touched.is_none_or(|t| t < 150) && all < 300,
            "{claimer:?}, {key}: {touched:?}, {all}\n{plan}"
        );
        assert_eq!(claimed, 1, "{claimer:?}\n{plan}");
        let status: String = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT status FROM {q}.jobs WHERE id = {next}"
        )))
        .fetch_one(&mut *conn)
        .await
        .expect("status");
        assert_eq!(status, "running", "{key}: the next job in order runs");
    }

    /// The claim keeps one generic plan beside a deep backlog instead of being planned
    /// again on every execution (see `hide_from_planner`): after the five custom plans a
    /// prepared statement starts with, every claim runs the cached generic plan. The
    /// tables are the backlog scenario's in miniature: jobs due tomorrow, waiting
    /// workflows of another task, and retained completed jobs, analyzed; the claims name
    /// the task, as workers do. Without the sub-selects PostgreSQL planned all 20 claims
    /// anew here. Read from `pg_prepared_statements` on the storage's only connection.
    #[tokio::test]
    async fn the_claim_keeps_its_generic_plan_beside_a_deep_backlog() {
        let t = TestSchema::with_options(crate::PostgresOptions::new().max_connections(1))
            .await
            .expect("schema");
        let q = crate::options::quote_ident(t.schema());
        let mut conn = t.storage().pool().acquire().await.expect("conn");
        run(
            &mut conn,
            &format!(
                "INSERT INTO {q}.jobs (task, payload, run_at)
                 SELECT 'noop', '{{}}', now() + interval '1 day' + i * interval '1 ms'
                 FROM generate_series(1, 20000) AS i;
                 INSERT INTO {q}.jobs (task, payload, status, attempt, run_at, started_at)
                 SELECT 'workflow', '{{}}', 'waiting', 1, 'infinity', now()
                 FROM generate_series(1, 2000);
                 INSERT INTO {q}.jobs (task, payload, status, attempt, run_at, started_at,
                                       completed_at, result)
                 SELECT 'noop', '{{}}', 'completed', 1, now() - interval '1 hour',
                        now() - interval '1 hour', now() - interval '1 hour', 'null'
                 FROM generate_series(1, 20000);
                 ANALYZE {q}.jobs"
            ),
        )
        .await;
        drop(conn);
        let params = DequeueParams {
            queues: vec!["default".into()],
            tasks: vec!["noop".into()],
            limit: 100,
            lease_duration: Duration::from_secs(60),
            holder: "plan".into(),
            forbidden_flags: Vec::new(),
        };
        for _ in 0..20 {
            let claimed = t.storage().dequeue(params.clone()).await.expect("claim");
            assert!(claimed.is_empty(), "nothing is due");
        }
        let (generic, custom): (i64, i64) = sqlx::query_as(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements
             WHERE statement LIKE '%WITH RECURSIVE rl AS%'",
        )
        .fetch_one(t.storage().pool())
        .await
        .expect("the claim is prepared on the storage's connection");
        assert_eq!(
            (generic, custom),
            (15, 5),
            "(generic, custom) plans of 20 claims"
        );
        t.drop_schema().await.expect("drop");
    }

    /// Both claim statements turn `synchronous_commit` off for the transaction they run
    /// in (the library runs them autocommitted, so that is the claim's own commit). Run
    /// here inside an explicit transaction, where the setting can be read back before
    /// the transaction ends.
    #[tokio::test]
    async fn claims_commit_without_waiting_for_the_flush() {
        let t = TestSchema::new().await.expect("schema");
        let s = t.storage();
        s.enqueue_many(
            (0..4)
                .map(|i| NewJob::new("t", serde_json::json!(i)))
                .collect(),
        )
        .await
        .expect("enqueue");
        for (name, template) in [
            ("CLAIM", claim_template()),
            ("CLAIM_QUEUES", claim_queues_template()),
        ] {
            let stmt = render(&template, t.schema(), "now()");
            let mut tx = s.pool().begin().await.expect("begin");
            let q = sqlx::query(AssertSqlSafe(stmt.to_string()));
            let q = if name == "CLAIM" {
                q.bind("default")
            } else {
                q.bind(vec!["default".to_string()])
            };
            let claimed = q
                .bind(Vec::<String>::new())
                .bind(2_i64)
                .bind("plan")
                .bind(7_i64)
                .bind(60_000_000_i64)
                .bind(Vec::<String>::new())
                .fetch_all(&mut *tx)
                .await
                .expect("claim");
            assert_eq!(claimed.len(), 2, "{name}");
            let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(&mut *tx)
                .await
                .expect("show");
            assert_eq!(setting, "off", "{name}");
            tx.rollback().await.expect("rollback");
        }
        t.drop_schema().await.expect("drop");
    }
}
