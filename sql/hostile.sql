--
-- Hostile input: every case ends in a clear error or a dead letter, the
-- server stays up, and no event is lost (each is applied or dead-lettered).
-- (NULL arguments, unknown models, bad payloads, wrong signatures, models
-- that raise, divide by zero, return non-objects or call alert() with NULLs
-- are in events.sql, models.sql, dead_letters.sql and alerts.sql.)
--
CREATE TABLE hostile_log (twin_id text, note text);
CREATE FUNCTION hostile(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    i int;
BEGIN
    -- a side effect, then a failure: the side effect must not survive
    INSERT INTO hostile_log VALUES (twin_id, event->>'note');
    IF event ? 'fail_after_write' THEN
        RAISE EXCEPTION 'failed after writing';
    ELSIF event ? 'recurse' THEN
        RETURN hostile(twin_id, state, event);
    ELSIF event ? 'flood' THEN
        -- sends to itself until stopped by digitaltwin.model_timeout
        LOOP
            PERFORM digitaltwin.send('hostile', twin_id, '{"note": "flood"}');
        END LOOP;
    ELSIF event ? 'hops' AND (event->>'hops')::int > 0 THEN
        -- a bounded chain of events to itself: each one is applied once
        PERFORM digitaltwin.send('hostile', twin_id,
                                 jsonb_build_object('hops', (event->>'hops')::int - 1,
                                                    'note', 'hop'));
    ELSIF event ? 'fork' THEN
        -- two events to itself per event: stopped by digitaltwin.max_message_depth
        PERFORM digitaltwin.send('hostile', twin_id, '{"note": "fork", "fork": true}');
        PERFORM digitaltwin.send('hostile', twin_id, '{"note": "fork", "fork": true}');
    ELSIF event ? 'wait' THEN
        PERFORM digitaltwin.wait_idle('1s');
    ELSIF event ? 'drop' THEN
        PERFORM digitaltwin.drop_model('hostile', force => true);
    ELSIF event ? 'create' THEN
        PERFORM digitaltwin.create_model('hostile2', 'hostile(text,jsonb,jsonb)');
    ELSIF event ? 'temp' THEN
        -- would shadow other models' tables in the worker's session
        CREATE TEMP TABLE patients (x int);
    ELSIF event ? 'setrole' THEN
        PERFORM set_config('role', 'dt_modeler', true);
    ELSIF event ? 'scalar' THEN
        RETURN to_jsonb(42);
    ELSIF event ? 'json_null' THEN
        RETURN 'null'::jsonb;
    ELSIF event ? 'big_state' THEN
        RETURN jsonb_build_object('big', repeat('x', 2 * 1024 * 1024));
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'depth', coalesce(event->>'depth', '0'));
END $$;
SELECT digitaltwin.create_model('hostile', 'hostile(text,jsonb,jsonb)');

-- deeply nested payloads: accepted when they are objects, refused clearly
-- when the nesting exceeds what the server can parse
SELECT digitaltwin.send('hostile', 'deep',
    (repeat('{"a":', 1000) || '1' || repeat('}', 1000))::jsonb || '{"depth": "1000"}') > 0 AS sent;
SELECT digitaltwin.send('hostile', 'deep', (repeat('[', 1000000) || repeat(']', 1000000))::jsonb);
-- a payload over digitaltwin.max_payload_size (1MB) and a huge twin id
SELECT digitaltwin.send('hostile', 'huge', jsonb_build_object('x', repeat('y', 2 * 1024 * 1024)));
SELECT digitaltwin.send('hostile', repeat('z', 10000), '{}');
-- a string where a jsonb belongs, and invalid UTF-8 in a twin id
SELECT digitaltwin.send('hostile', 't', 'not json');
SELECT digitaltwin.send('hostile', convert_from('\xc3'::bytea, 'UTF8'), '{}');
-- invalid regprocedures and OIDs
SELECT digitaltwin.create_model('x', 'hostile');
SELECT digitaltwin.create_model('x', 'hostile(text)');
SELECT digitaltwin.create_model('x', 4294967295::oid::regprocedure);
SELECT digitaltwin.create_model('x', 'hostile(text,jsonb,jsonb)', 'hostile(text,jsonb,jsonb)');
-- the internal functions refuse NULLs and misuse too
SELECT digitaltwin.event_valid(NULL, NULL, NULL);
SELECT digitaltwin.partition_of('t', 0), digitaltwin.partition_of('t', NULL);
SELECT digitaltwin.wait_idle(NULL);
-- (a timeout already passed still returns, true only if the workers were quick)
SELECT digitaltwin.wait_idle('-1s') IS NOT NULL AS returned;

-- events that break the model in every way, each between good ones
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('hostile', 'h', '{"note": "ok 1"}'),
    ('hostile', 'h', '{"note": "write then fail", "fail_after_write": true}'),
    ('hostile', 'h', '{"note": "recursion", "recurse": true}'),
    ('hostile', 'h', '{"note": "scalar state", "scalar": true}'),
    ('hostile', 'h', '{"note": "json null state", "json_null": true}'),
    ('hostile', 'h', '{"note": "state too big", "big_state": true}'),
    ('hostile', 'h', '{"note": "wait_idle", "wait": true}'),
    ('hostile', 'h', '{"note": "drop_model", "drop": true}'),
    ('hostile', 'h', '{"note": "create_model", "create": true}'),
    ('hostile', 'h', '{"note": "temp table", "temp": true}'),
    ('hostile', 'h', '{"note": "set role", "setrole": true}'),
    ('hostile', 'h', '{"note": "ok 2"}'),
    ('hostile', 'chain', '{"note": "start", "hops": 5}');
-- each wait covers the events committed before it, and each hop of the
-- chain is committed with the batch that consumed the previous one
SELECT bool_and(digitaltwin.wait_idle('60s')) AS idle FROM generate_series(1, 6);
SELECT payload->>'note' AS note, error, sqlstate
FROM digitaltwin.dead_letters WHERE model = 'hostile' ORDER BY event_id;
-- only the events that were applied left their side effect
SELECT twin_id, note, count(*) FROM hostile_log GROUP BY 1, 2 ORDER BY 1, 2;
SELECT twin_id, state, event_count FROM digitaltwin.twins
WHERE model = 'hostile' ORDER BY twin_id;
-- the model is still registered, hostile2 was never created
SELECT name FROM digitaltwin.models WHERE name LIKE 'hostile%' ORDER BY name;

-- a model that floods the queue with events to itself is stopped by
-- digitaltwin.model_timeout (2s here); the events it sent go with it
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('hostile', 'flood', '{"note": "flood", "flood": true}');
SELECT digitaltwin.wait_idle('60s');
SELECT error, sqlstate FROM digitaltwin.dead_letters WHERE twin_id = 'flood';
SELECT count(*) AS flood_events_left FROM digitaltwin.events WHERE twin_id = 'flood';
SELECT count(*) AS flood_twins FROM digitaltwin.twins WHERE twin_id = 'flood';

-- a model that sends two events to itself per event is stopped by
-- digitaltwin.max_message_depth (5 here): the events of depth 0 to 4 are
-- applied (1 + 2 + 4 + 8 + 16), the 32 of depth 5 fail to send theirs and
-- are dead-lettered.  The workers reload the setting before the first
-- event's batch ends (a new session sees the postmaster's reloaded
-- settings, so it has signalled them), and the chain reaches the limit
-- only in later batches.
ALTER SYSTEM SET digitaltwin.max_message_depth = 5;
SELECT pg_reload_conf();
\c
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('hostile', 'fork', '{"note": "fork", "fork": true}');
-- each wait covers one more level of the chain
SELECT bool_and(digitaltwin.wait_idle('60s')) AS idle FROM generate_series(1, 7);
SELECT error, sqlstate, count(*) FROM digitaltwin.dead_letters
WHERE twin_id = 'fork' GROUP BY 1, 2;
SELECT state->'n' AS n, event_count FROM digitaltwin.twins WHERE twin_id = 'fork';
SELECT count(*) AS applied_forks FROM hostile_log WHERE twin_id = 'fork';
SELECT count(*) AS fork_events_left FROM digitaltwin.events WHERE twin_id = 'fork';
ALTER SYSTEM RESET digitaltwin.max_message_depth;
SELECT pg_reload_conf();

-- every event sent in this file is accounted for: applied (event_count) or
-- dead-lettered
SELECT (SELECT sum(event_count) FROM digitaltwin.twins WHERE model = 'hostile') AS applied,
       (SELECT count(*) FROM digitaltwin.dead_letters WHERE model = 'hostile') AS dead;

SELECT digitaltwin.drop_model('hostile', force => true);
DROP FUNCTION hostile(text, jsonb, jsonb);
DROP TABLE hostile_log;
