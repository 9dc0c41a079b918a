-- The SQL worker's claim walks the claim index as the library's own claims do.
--
-- get_job used to find its job with one ORDER BY over every claimable job of its queues
-- (or of all queues), which sorted jobs due tomorrow and parked workflows with the due
-- ones, and it skipped the jobs of full serial keys row by row at every call without
-- parking them. Now it reads, per queue, only the due ranges of the claim index in claim
-- order (the storage's several-queue claim, `CLAIM_QUEUES` in sql.rs), and parks the
-- jobs of full keys it meets so that no later call reads them again (see 013).

CREATE OR REPLACE FUNCTION {schema}.get_job(
    worker_id        text,
    task_identifiers text[]   DEFAULT NULL,
    job_expiry       interval DEFAULT interval '4 hours',
    queue_names      text[]   DEFAULT NULL
) RETURNS SETOF {schema}.jobs
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := {schema}.clock_now();
    v_tasks   text[] := coalesce(task_identifiers, '{}');
    v_queues  text[];
    v_id      bigint;
    v_key     text;
    v_slot    bigint;
    v_skipped text[] := '{}';
BEGIN
    IF worker_id IS NULL OR length(worker_id) = 0 THEN
        RAISE EXCEPTION 'get_job: worker_id must not be empty' USING ERRCODE = '22023';
    END IF;
    IF job_expiry IS NULL OR job_expiry <= interval '0' THEN
        RAISE EXCEPTION 'get_job: job_expiry must be positive, found %', job_expiry
            USING ERRCODE = '22023';
    END IF;
    -- The queues to look in: the named ones, or every queue holding a claimable job (a
    -- loose scan of the claim index's first column: one descent per queue), less the
    -- paused ones.
    IF queue_names IS NULL THEN
        v_queues := ARRAY(
            WITH RECURSIVE qs AS (
                (SELECT a.queue FROM {schema}.jobs AS a
                 WHERE a.status IN ('pending', 'retrying', 'waiting') AND NOT a.blocked
                 ORDER BY a.queue
                 LIMIT 1)
                UNION ALL
                SELECT (SELECT n.queue FROM {schema}.jobs AS n
                        WHERE n.status IN ('pending', 'retrying', 'waiting') AND NOT n.blocked
                          AND n.queue > qs.queue
                        ORDER BY n.queue
                        LIMIT 1)
                FROM qs
                WHERE qs.queue IS NOT NULL
            )
            SELECT qs.queue FROM qs WHERE qs.queue IS NOT NULL);
    ELSE
        v_queues := queue_names;
    END IF;
    v_queues := ARRAY(
        SELECT DISTINCT q FROM unnest(v_queues) AS q
        WHERE q IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM {schema}.paused_queues p WHERE p.queue = q));
    IF cardinality(v_queues) = 0 THEN
        RETURN;
    END IF;
    LOOP
        -- The first due job in claim order across the queues (per priority, highest
        -- first, each queue's due range read in claim order), skipping keys whose slot
        -- a racing claimer took since; the jobs of full keys met on the way are parked.
        WITH RECURSIVE prios AS (
            (SELECT max(t.priority) AS priority FROM unnest(v_queues) AS qs(q)
             CROSS JOIN LATERAL (
                SELECT a.priority FROM {schema}.jobs AS a
                WHERE a.status IN ('pending', 'retrying', 'waiting') AND NOT a.blocked
                  AND a.queue = qs.q
                ORDER BY a.priority DESC
                LIMIT 1) AS t)
            UNION ALL
            SELECT (SELECT max(t.priority) FROM unnest(v_queues) AS qs(q)
                    CROSS JOIN LATERAL (
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
                SELECT x.* FROM unnest(v_queues) AS qs(q) CROSS JOIN LATERAL (
                    SELECT c.id, c.serial_key, c.priority, c.run_at FROM {schema}.jobs AS c
                    WHERE c.status IN ('pending', 'retrying', 'waiting') AND NOT c.blocked
                      AND c.queue = qs.q
                      AND c.priority = prios.priority
                      AND c.run_at <= v_now
                      AND (cardinality(v_tasks) = 0 OR c.task = ANY(v_tasks))
                      AND (c.serial_key IS NULL OR (c.serial_key <> ALL(v_skipped) AND (
                          SELECT count(*) FROM {schema}.serial_slots s
                          WHERE s.serial_key = c.serial_key)
                          < {schema}.key_limit(c.serial_key)
                          AND NOT EXISTS (
                              SELECT 1 FROM {schema}.jobs AS e
                              WHERE e.serial_key = c.serial_key
                                AND e.status IN ('pending', 'retrying', 'waiting')
                                AND NOT e.blocked
                                AND (e.priority > c.priority
                                     OR (e.priority = c.priority
                                         AND (e.run_at, e.id) < (c.run_at, c.id)))
                                AND e.queue = ANY(v_queues)
                                AND e.run_at <= v_now
                                AND (cardinality(v_tasks) = 0 OR e.task = ANY(v_tasks)))))
                    ORDER BY c.run_at, c.id
                    LIMIT 1
                    FOR UPDATE SKIP LOCKED
                ) AS x
                ORDER BY x.run_at, x.id
                LIMIT 1
            ) AS due
            WHERE prios.priority IS NOT NULL
            LIMIT 1
        ),
        edge AS (
            SELECT (SELECT count(*) FROM cand) >= 1 AS stopped, l.priority, l.run_at, l.id
            FROM (SELECT 1) AS one
            LEFT JOIN LATERAL (SELECT e.priority, e.run_at, e.id FROM cand e) AS l ON true
        ),
        parkable AS (
            SELECT full_key.* FROM edge CROSS JOIN prios CROSS JOIN unnest(v_queues) AS qs(q)
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
                  AND k.queue = qs.q
                  AND k.priority = prios.priority
                  AND k.run_at <= v_now
                  AND (k.run_at, k.id) <= (bound.run_at, bound.id)
                  AND (SELECT count(*) FROM {schema}.serial_slots s
                       WHERE s.serial_key = k.serial_key)
                      >= {schema}.key_limit(k.serial_key)
                ORDER BY k.run_at, k.id
                LIMIT 10000
                FOR UPDATE SKIP LOCKED
            ) AS full_key
            WHERE prios.priority IS NOT NULL
              AND (NOT edge.stopped OR prios.priority >= edge.priority)
              AND EXISTS (SELECT 1 FROM {schema}.jobs AS kq
                          WHERE kq.status IN ('pending', 'retrying', 'waiting')
                            AND NOT kq.blocked
                            AND kq.serial_key IS NOT NULL AND kq.queue = ANY(v_queues))
            LIMIT 10000
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
        )
        SELECT cand.id, cand.serial_key INTO v_id, v_key FROM cand;
        IF v_id IS NULL THEN
            RETURN;
        END IF;
        IF v_key IS NOT NULL THEN
            -- Waits for a racing claimer's commit; a key whose slots were taken meanwhile
            -- is skipped.
            v_slot := NULL;
            INSERT INTO {schema}.serial_slots (serial_key, slot, job_id)
            SELECT v_key, n, v_id FROM generate_series(1, {schema}.key_limit(v_key)) AS n
            WHERE NOT EXISTS (SELECT 1 FROM {schema}.serial_slots x
                              WHERE x.serial_key = v_key AND x.slot = n)
            LIMIT 1
            ON CONFLICT (serial_key, slot) DO NOTHING
            RETURNING job_id INTO v_slot;
            IF v_slot IS NULL THEN
                v_skipped := v_skipped || v_key;
                v_id := NULL;
                CONTINUE;
            END IF;
        END IF;
        RETURN QUERY
        UPDATE {schema}.jobs AS j
        SET status = 'running',
            attempt = j.attempt + 1,
            lease_holder = get_job.worker_id,
            -- 63 random bits: tokens only need to differ between leases of one job.
            lease_token = (floor(random() * 4294967296)::bigint << 31)
                          # floor(random() * 2147483648)::bigint,
            lease_expires_at = v_now + get_job.job_expiry,
            wake_requested = false,
            started_at = v_now,
            updated_at = v_now
        WHERE j.id = v_id
        RETURNING j.*;
        RETURN;
    END LOOP;
END
$$;
