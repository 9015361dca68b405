--
-- The live views: ordinary SQL over shared memory
--
-- aggregates and joins over live twins
SELECT model, count(*) AS twins, sum(event_count) AS events
FROM digitaltwin.twins GROUP BY model ORDER BY model;
SELECT p.patient_id, p.max_bpm, t.state->>'last' AS last_bpm,
       (t.state->>'last')::int > p.max_bpm AS over_limit
FROM patients p LEFT JOIN digitaltwin.twins t
    ON t.model = 'hr' AND t.twin_id = p.patient_id
ORDER BY 1;
-- the view is planned like any other
EXPLAIN (COSTS OFF) SELECT count(*) FROM digitaltwin.twins WHERE model = 'hr';

-- the live view agrees with the durable state, twin by twin
SELECT count(*) AS live,
       (SELECT count(*) FROM digitaltwin.twin_state) AS durable,
       count(*) FILTER (WHERE s.twin_id IS NULL OR s.event_count <> t.event_count) AS mismatched
FROM digitaltwin.twins t
JOIN digitaltwin.models m ON m.name = t.model
LEFT JOIN digitaltwin.twin_state s ON s.model_id = m.id AND s.twin_id = t.twin_id;

-- stats: one row per worker and a total
SELECT worker, pid IS NOT NULL AS running FROM digitaltwin.stats ORDER BY worker;
SELECT (SELECT sum(events_processed) FROM digitaltwin.stats WHERE worker IS NOT NULL)
           = events_processed AS processed_adds_up,
       (SELECT sum(twins) FROM digitaltwin.stats WHERE worker IS NOT NULL) = twins
           AS twins_add_up,
       twins = (SELECT count(*) FROM digitaltwin.twin_state) AS twins_counted,
       dead_letters = (SELECT count(*) FROM digitaltwin.dead_letters) AS dead_counted,
       alerts = (SELECT count(*) FROM digitaltwin.alerts) AS alerts_counted,
       memory_bytes > 0 AS uses_memory,
       queue_depth, oldest_event_age
FROM digitaltwin.stats WHERE worker IS NULL;

-- queued events show up as depth and age, per worker and in total
BEGIN;
INSERT INTO digitaltwin.events (model, twin_id, payload, enqueued_at)
VALUES ('counter', 'q', '{}', now() - interval '1 hour');
SELECT worker IS NULL AS total, queue_depth, oldest_event_age >= interval '1 hour' AS old
FROM digitaltwin.stats
WHERE queue_depth > 0 ORDER BY worker;
ROLLBACK;

-- which worker owns a twin
SELECT digitaltwin.partition_of('a', 2) IN (0, 1) AS in_range,
       digitaltwin.partition_of('a', 2) = digitaltwin.partition_of('a', 2) AS stable,
       digitaltwin.partition_of('a', 1) AS single;
SELECT digitaltwin.partition_of('a', 0);
