--
-- Statistics per model: digitaltwin.model_stats and reset_stats()
--
CREATE ROLE dt_stats_ops;
CREATE ROLE dt_stats_reader;
CREATE ROLE dt_stats_writer;
GRANT digitaltwin_admin TO dt_stats_ops;
GRANT digitaltwin_reader TO dt_stats_reader;
GRANT digitaltwin_writer TO dt_stats_writer;

-- counts, alerts on 'hot', fails on 'bad', takes 0.2 s on 'slow'
CREATE FUNCTION meter(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'bad' THEN
        RAISE EXCEPTION 'meter refuses %', event->>'bad' USING ERRCODE = '22023';
    END IF;
    IF event ? 'hot' THEN
        PERFORM digitaltwin.alert('warning', 'hot ' || twin_id);
    END IF;
    IF event ? 'slow' THEN
        PERFORM pg_sleep(0.2);
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('meter', 'meter(text,jsonb,jsonb)');

-- a model without events has a row of zeros, counted since its creation
SELECT model, events_processed, events_per_second, queue_depth, oldest_event_age,
       dead_letters, alerts, twins, model_time_avg, model_time_max, last_batch_at,
       last_error, paused, events_in_flight, model_calls,
       stats_since = (SELECT created_at FROM digitaltwin.models WHERE name = 'meter') AS since_creation
FROM digitaltwin.model_stats WHERE model = 'meter';

-- what is sent, kept aside to check the statistics against
CREATE TABLE meter_sent AS
SELECT 'm' || (i % 37) AS twin_id,
       CASE WHEN i % 50 = 0 THEN jsonb_build_object('bad', i)
            WHEN i % 7 = 0 THEN '{"hot": true}'::jsonb
            ELSE '{}'::jsonb END AS payload
FROM generate_series(1, 1000) i;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'meter', twin_id, payload FROM meter_sent;
SELECT digitaltwin.wait_idle('60s');

-- each figure equals an independent count over what was sent and produced
SELECT s.events_processed = (SELECT count(*) FROM meter_sent) AS events_ok,
       s.dead_letters = (SELECT count(*) FROM meter_sent WHERE payload ? 'bad') AS dead_ok,
       s.dead_letters = (SELECT count(*) FROM digitaltwin.dead_letters WHERE model = 'meter') AS dead_table_ok,
       s.alerts = (SELECT count(*) FROM digitaltwin.alerts WHERE model = 'meter') AS alerts_ok,
       s.alerts = (SELECT count(*) FROM meter_sent WHERE payload ? 'hot') AS alerts_sent_ok,
       s.twins = (SELECT count(*) FROM digitaltwin.twins WHERE model = 'meter') AS twins_ok,
       s.twins = (SELECT count(DISTINCT twin_id) FROM meter_sent) AS twins_sent_ok,
       s.model_calls >= s.events_processed - s.dead_letters AS calls_ok,
       s.model_time_avg > 0 AND s.model_time_max >= s.model_time_avg AS times_ok,
       s.queue_depth = 0 AND s.oldest_event_age IS NULL AS queue_ok,
       s.events_in_flight = 0 AS none_in_flight,
       s.last_batch_at > now() - interval '1 minute' AS recent,
       s.last_error ~ '^meter refuses [0-9]+ \(SQLSTATE 22023\)$' AS last_error_ok
FROM digitaltwin.model_stats s WHERE s.model = 'meter';

-- the sum over twins of their event counts: events applied, not dead
SELECT (SELECT sum(event_count) FROM digitaltwin.twins WHERE model = 'meter')
     = s.events_processed - s.dead_letters AS applied_ok
FROM digitaltwin.model_stats s WHERE s.model = 'meter';

-- the counters are rows of the workers' batches, one per worker
SELECT count(*) BETWEEN 1 AND 2 AS rows_per_worker,
       sum(events_processed) = 1000 AS sum_ok
FROM digitaltwin.model_counters c JOIN digitaltwin.models m ON m.id = c.model_id
WHERE m.name = 'meter';

-- a paused model's held events count in its queue depth
SELECT digitaltwin.pause_model('meter');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'meter', 'm1', '{}' FROM generate_series(1, 5);
SELECT digitaltwin.wait_idle('30s');
SELECT queue_depth, paused, oldest_event_age > interval '0' AS aged, events_processed
FROM digitaltwin.model_stats WHERE model = 'meter';
SELECT digitaltwin.resume_model('meter');
SELECT digitaltwin.wait_idle('30s');
SELECT queue_depth, paused, events_processed FROM digitaltwin.model_stats WHERE model = 'meter';

-- a long batch: the figures move before its commit
CREATE FUNCTION slow_meter(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.05);
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('slow_meter', 'slow_meter(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'slow_meter', 'one', '{}' FROM generate_series(1, 60);
-- wait (at most 30 s) until the batch in flight shows
DO $$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '30 seconds';
BEGIN
    LOOP
        PERFORM 1 FROM digitaltwin.model_stats
        WHERE model = 'slow_meter' AND events_in_flight > 0;
        EXIT WHEN FOUND OR clock_timestamp() > deadline;
        PERFORM pg_sleep(0.02);
    END LOOP;
END $$;
SELECT events_in_flight > 0 AS moving, events_processed < 60 AS not_all_committed,
       events_per_second > 0 AS has_rate
FROM digitaltwin.model_stats WHERE model = 'slow_meter';
SELECT digitaltwin.wait_idle('60s');
SELECT events_processed, events_in_flight, model_calls, model_time_avg >= 50 AS slow_calls
FROM digitaltwin.model_stats WHERE model = 'slow_meter';

-- who reads: readers, not writers
SET ROLE dt_stats_reader;
SELECT model, events_processed FROM digitaltwin.model_stats
WHERE model IN ('meter', 'slow_meter') ORDER BY model;
SET ROLE dt_stats_writer;
SELECT * FROM digitaltwin.model_stats;
SELECT * FROM digitaltwin.model_counters;
SELECT digitaltwin.reset_stats('meter');
RESET ROLE;

-- who resets: an admin; not a reader
SET ROLE dt_stats_reader;
SELECT digitaltwin.reset_stats();
RESET ROLE;
SELECT digitaltwin.reset_stats('no_such_model');
SET ROLE dt_stats_ops;
SELECT digitaltwin.reset_stats('meter');
RESET ROLE;
SELECT events_processed, dead_letters, alerts, model_calls, model_time_avg, last_error,
       stats_since > now() - interval '1 minute' AS reset_now
FROM digitaltwin.model_stats WHERE model = 'meter';
-- the other model kept its counts
SELECT events_processed FROM digitaltwin.model_stats WHERE model = 'slow_meter';
-- counting goes on after a reset
SELECT digitaltwin.send('meter', 'm1', '{}') > 0 AS sent;
SELECT digitaltwin.wait_idle('30s');
SELECT events_processed FROM digitaltwin.model_stats WHERE model = 'meter';
-- every model, and the workers' counters of digitaltwin.stats
SET ROLE dt_stats_ops;
SELECT digitaltwin.reset_stats();
RESET ROLE;
SELECT model, events_processed FROM digitaltwin.model_stats
WHERE model IN ('meter', 'slow_meter') ORDER BY model;
SELECT events_processed, dead_letters, alerts FROM digitaltwin.stats
WHERE worker IS NULL AND database = current_database();

-- a caller's search_path and pg_temp objects play no part in the reset
CREATE FUNCTION pg_temp.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
SET search_path = pg_temp, public;
SELECT digitaltwin.reset_stats('meter');
RESET search_path;
SELECT stats_since > now() - interval '1 minute' AS real_now
FROM digitaltwin.model_stats WHERE model = 'meter';

-- dropped with the model
SELECT id AS slow_id FROM digitaltwin.models WHERE name = 'slow_meter' \gset
SELECT count(*) > 0 AS has_rows FROM digitaltwin.model_counters WHERE model_id = :slow_id;
SELECT digitaltwin.drop_model('slow_meter', force => true);
SELECT count(*) AS rows_left FROM digitaltwin.model_counters WHERE model_id = :slow_id;
SELECT digitaltwin.drop_model('meter', force => true);
DROP TABLE meter_sent;

-- A worker's first batch of a model inserts its row (the upsert); the
-- next ones add to it through the table AM: the same figures, the same
-- reset rule.  One twin, so one worker; one event per batch, so that
-- the model calls are exact.
SELECT digitaltwin.create_model('fast_a', 'meter(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('fast_b', 'meter(text,jsonb,jsonb)');
CREATE VIEW fast_counters AS
SELECT m.name, count(*) AS rows, sum(c.events_processed) AS events,
       sum(c.dead_letters) AS dead, sum(c.alerts) AS alerts, sum(c.model_calls) AS calls,
       max(c.model_time_max_ms) >= 200 AS slow_max,
       bool_and(c.model_time_ms >= c.model_time_max_ms) AS time_ge_max,
       max(c.last_error) AS last_error,
       bool_and((c.last_error IS NULL) = (c.last_error_at IS NULL)
                AND coalesce(c.last_error_at <= c.last_batch_at, true)) AS error_at_ok,
       bool_and(c.stats_reset IS NOT DISTINCT FROM r.reset_at) AS reset_ok,
       (SELECT ROW(s.events_processed, s.dead_letters, s.alerts, s.model_calls, s.last_error)
               IS NOT DISTINCT FROM ROW(sum(c.events_processed), sum(c.dead_letters), sum(c.alerts),
                     sum(c.model_calls), max(c.last_error))
        FROM digitaltwin.model_stats s WHERE s.model = m.name) AS view_ok
FROM digitaltwin.models m
JOIN digitaltwin.model_counters c ON c.model_id = m.id
LEFT JOIN digitaltwin.model_stats_resets r ON r.model_id = m.id
WHERE m.name IN ('fast_a', 'fast_b')
GROUP BY m.name, m.id ORDER BY m.name;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT * FROM fast_counters;
-- batches of the same model add up: an alert, a dead letter, a slow call
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{"hot": true}');
SELECT digitaltwin.wait_idle('30s');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{"bad": 1}');
SELECT digitaltwin.wait_idle('30s');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{"slow": true}');
SELECT digitaltwin.wait_idle('30s');
SELECT * FROM fast_counters;
-- one batch, two models: one row added to, one inserted
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{}'), ('fast_b', 'f1', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT * FROM fast_counters;
-- after a reset, the next batch starts the row again (no slow call, no
-- error any more), and the one after adds to it
SELECT digitaltwin.reset_stats('fast_a');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT * FROM fast_counters;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{"bad": 2}');
SELECT digitaltwin.wait_idle('30s');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{"hot": true}');
SELECT digitaltwin.wait_idle('30s');
SELECT * FROM fast_counters;
-- a row deleted by its owner: the next batch makes a new one, which
-- counts from the model's reset
DELETE FROM digitaltwin.model_counters c USING digitaltwin.models m
WHERE m.id = c.model_id AND m.name = 'fast_a';
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT * FROM fast_counters;
-- drop_model() deletes the rows; a model of the same name counts anew
SELECT digitaltwin.drop_model('fast_a', force => true);
SELECT digitaltwin.create_model('fast_a', 'meter(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{"hot": true}');
SELECT digitaltwin.wait_idle('30s');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT * FROM fast_counters;
-- a column added to model_counters by its owner: the batches go on, by
-- the upsert (which names its columns), and still count exactly
ALTER TABLE digitaltwin.model_counters ADD COLUMN note text;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fast_a', 'f1', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT * FROM fast_counters;
ALTER TABLE digitaltwin.model_counters DROP COLUMN note;
DROP VIEW fast_counters;
SELECT digitaltwin.drop_model('fast_a', force => true);
SELECT digitaltwin.drop_model('fast_b', force => true);
DROP FUNCTION meter(text, jsonb, jsonb), slow_meter(text, jsonb, jsonb);
DROP OWNED BY dt_stats_ops, dt_stats_reader, dt_stats_writer;
DROP ROLE dt_stats_ops, dt_stats_reader, dt_stats_writer;
