--
-- The heart-rate monitor, as a plpgsql model (examples/heart_rate.sql) and
-- as a C model with a binary state (examples/heart_rate_c): same events,
-- same verdicts
--
CREATE SCHEMA hr;
SET search_path = hr, public;
\i examples/heart_rate.sql
CREATE EXTENSION digitaltwin_heart_rate;
SELECT name, process, init, state_type FROM digitaltwin.models
WHERE name LIKE 'heart_rate%' ORDER BY name;

INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT m, 'patient-' || (1 + i % 20), jsonb_build_object('bpm', 60 + (i * 37) % 120)
FROM generate_series(1, 2000) i,
     (VALUES ('heart_rate'), ('heart_rate_c')) v(m);
-- a broken sensor, and a patient without a record
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('heart_rate', 'patient-1', '{"bpm": -1}'), ('heart_rate_c', 'patient-1', '{"bpm": -1}'),
    ('heart_rate', 'patient-1', '{"pulse": 80}'), ('heart_rate_c', 'patient-1', '{"pulse": 80}'),
    ('heart_rate', 'visitor', '{"bpm": 185}'), ('heart_rate_c', 'visitor', '{"bpm": 185}');
SELECT digitaltwin.wait_idle('60s');

-- the same alerts, twin by twin
SELECT count(*) AS twins_compared,
       count(*) FILTER (WHERE p.n IS DISTINCT FROM c.n) AS differing
FROM (SELECT twin_id, severity, count(*) AS n FROM digitaltwin.alerts
      WHERE model = 'heart_rate' GROUP BY 1, 2) p
FULL JOIN (SELECT twin_id, severity, count(*) AS n FROM digitaltwin.alerts
           WHERE model = 'heart_rate_c' GROUP BY 1, 2) c USING (twin_id, severity);
SELECT model, severity, count(*) FROM digitaltwin.alerts
WHERE model LIKE 'heart_rate%' GROUP BY 1, 2 ORDER BY 1, 2;
SELECT message FROM digitaltwin.alerts
WHERE model = 'heart_rate_c' AND twin_id = 'visitor';

-- the same states: the C state decoded from the durable table
SELECT count(*) AS twins,
       count(*) FILTER (WHERE (p.state->>'limit')::float8 = c."limit"
                          AND (p.state->>'readings')::bigint = c.readings
                          AND (p.state->>'max')::float8 = c.max_bpm
                          AND (p.state->>'last')::float8 = c.last_bpm
                          AND (p.state->>'over_streak')::int = c.over_streak) AS equal
FROM digitaltwin.twins p
JOIN digitaltwin.twin_state s ON s.twin_id = p.twin_id
    AND s.model_id = (SELECT id FROM digitaltwin.models WHERE name = 'heart_rate_c')
CROSS JOIN LATERAL heart_rate_c_summary(s.state) c
WHERE p.model = 'heart_rate';
SELECT "limit", readings, max_bpm, last_bpm
FROM digitaltwin.twin_state s, heart_rate_c_summary(s.state)
WHERE s.twin_id = 'patient-3'
  AND s.model_id = (SELECT id FROM digitaltwin.models WHERE name = 'heart_rate_c');
-- the live view shows a binary state as jsonb (a hex string)
SELECT jsonb_typeof(state), length(state #>> '{}')
FROM digitaltwin.twins WHERE model = 'heart_rate_c' AND twin_id = 'patient-3';

-- bad readings are dead-lettered by both
SELECT model, payload, error, sqlstate FROM digitaltwin.dead_letters
WHERE model LIKE 'heart_rate%' ORDER BY model, event_id;

-- the C functions outside a worker: no alert, and the binary state checks
SELECT (heart_rate_c_summary(heart_rate_c_process('visitor', heart_rate_c_init('visitor'),
                                                  '{"bpm": 190}'))).readings;
SELECT heart_rate_c_summary('\x00'::bytea);

-- timers through the C API: a reading with "silence_after" arms the
-- twin's silence timer (a later one re-arms or, with 0, cancels it); it
-- fires when no reading follows in time
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('heart_rate_c', 'patient-2', '{"bpm": 70, "silence_after": 3600}'),
    ('heart_rate_c', 'patient-2', '{"bpm": 72, "silence_after": 0.2}'),
    ('heart_rate_c', 'patient-4', '{"bpm": 70, "silence_after": 0.2}'),
    ('heart_rate_c', 'patient-4', '{"bpm": 71, "silence_after": 0}');
SELECT digitaltwin.wait_idle('60s');
DO $$
BEGIN
    FOR i IN 1 .. 1500 LOOP
        EXIT WHEN EXISTS (SELECT FROM digitaltwin.alerts
                          WHERE model = 'heart_rate_c' AND severity = 'warning');
        PERFORM pg_sleep(0.02);
    END LOOP;
END $$;
SELECT twin_id, message FROM digitaltwin.alerts
WHERE model = 'heart_rate_c' AND severity = 'warning';
SELECT count(*) AS pending FROM digitaltwin.timers WHERE model = 'heart_rate_c';

-- the extension that holds a model's functions cannot go before the model
\set SHOW_CONTEXT never
DROP EXTENSION digitaltwin_heart_rate;
\set SHOW_CONTEXT errors
SELECT digitaltwin.drop_model('heart_rate_c', force => true);
DROP EXTENSION digitaltwin_heart_rate;
SELECT digitaltwin.drop_model('heart_rate', force => true);
RESET search_path;
