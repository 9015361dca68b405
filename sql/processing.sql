--
-- Events reach their twins: state, init, order, ending a twin, state types
--
-- A model that keeps every value it saw, in order
CREATE FUNCTION remember(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object(
        'seen', coalesce(state->'seen', '[]'::jsonb) || to_jsonb((event->>'v')::int),
        'sum', coalesce((state->>'sum')::int, 0) + (event->>'v')::int);
END $$;
SELECT digitaltwin.create_model('remember', 'remember(text,jsonb,jsonb)');

-- one session, many statements: each twin applies its events in order
SELECT digitaltwin.send('remember', 'a', '{"v": 1}') IS NOT NULL AS sent;
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('remember', 'a', '{"v": 2}'), ('remember', 'b', '{"v": 10}'),
       ('remember', 'a', '{"v": 3}'), ('remember', 'b', '{"v": 20}');
COPY digitaltwin.events (model, twin_id, payload) FROM stdin;
remember	a	{"v": 4}
remember	c	{"v": 100}
remember	b	{"v": 30}
\.
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state, event_count FROM digitaltwin.twins
WHERE model = 'remember' ORDER BY twin_id;

-- the durable copy holds the same twins
SELECT t.twin_id, t.event_count
FROM digitaltwin.twin_state t JOIN digitaltwin.models m ON m.id = t.model_id
WHERE m.name = 'remember' ORDER BY 1;

-- a large multi-row INSERT, spread over both workers: each event once
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'remember', 'bulk' || (i % 50), jsonb_build_object('v', i)
FROM generate_series(1, 5000) i;
SELECT digitaltwin.wait_idle('60s');
SELECT count(*) AS twins, sum(event_count) AS events,
       sum((state->>'sum')::bigint) AS total,
       (SELECT sum(i) FROM generate_series(1, 5000) i) AS expected_total,
       bool_and((SELECT array_agg(x::int) FROM jsonb_array_elements_text(state->'seen') x)
                = (SELECT array_agg(x::int ORDER BY x::int) FROM jsonb_array_elements_text(state->'seen') x))
           AS all_in_order
FROM digitaltwin.twins WHERE model = 'remember' AND twin_id LIKE 'bulk%';
-- both workers took part
SELECT count(*) FILTER (WHERE events_processed > 0) AS busy_workers
FROM digitaltwin.stats WHERE worker IS NOT NULL;

-- init builds a new twin's starting state from an ordinary table
CREATE TABLE patients (patient_id text PRIMARY KEY, max_bpm int NOT NULL);
INSERT INTO patients VALUES ('p1', 120), ('p2', 150);
CREATE FUNCTION hr_init(twin_id text) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('limit', coalesce(
        (SELECT max_bpm FROM patients WHERE patient_id = twin_id), 100), 'over', 0)
$$;
CREATE FUNCTION hr_process(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT state || jsonb_build_object(
        'last', event->'bpm',
        'over', (state->>'over')::int
                + CASE WHEN (event->>'bpm')::int > (state->>'limit')::int THEN 1 ELSE 0 END)
$$;
SELECT digitaltwin.create_model('hr', 'hr_process(text,jsonb,jsonb)', 'hr_init(text)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('hr', 'p1', '{"bpm": 130}'), ('hr', 'p2', '{"bpm": 130}'),
    ('hr', 'p3', '{"bpm": 130}'), ('hr', 'p1', '{"bpm": 125}');
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state, event_count FROM digitaltwin.twins
WHERE model = 'hr' ORDER BY twin_id;
-- init runs once per new twin, not per event
SELECT twin_id, state->>'limit' AS lim FROM digitaltwin.twins
WHERE model = 'hr' AND twin_id = 'p1';

-- models registered earlier: without init a twin starts from NULL, with
-- init from what it returns
SELECT digitaltwin.send('counter', 'x', '{}') IS NOT NULL AS sent,
       digitaltwin.send('counter_from_100', 'x', '{}') IS NOT NULL AS sent;
SELECT digitaltwin.wait_idle('30s');
SELECT model, twin_id, state FROM digitaltwin.twins
WHERE model IN ('counter', 'counter_from_100') ORDER BY 1;

-- returning NULL ends the twin; a later event starts a new one
CREATE FUNCTION session(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT CASE WHEN event ? 'end' THEN NULL
                ELSE jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1) END
$$;
SELECT digitaltwin.create_model('session', 'session(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('session', 's1', '{}'), ('session', 's1', '{}'), ('session', 's2', '{}'),
    ('session', 's2', '{"end": true}');
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state, event_count FROM digitaltwin.twins
WHERE model = 'session' ORDER BY twin_id;
SELECT count(*) FROM digitaltwin.twin_state t JOIN digitaltwin.models m ON m.id = t.model_id
WHERE m.name = 'session' AND t.twin_id = 's2';
SELECT digitaltwin.send('session', 's2', '{}') IS NOT NULL AS sent;
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state, event_count FROM digitaltwin.twins
WHERE model = 'session' ORDER BY twin_id;

-- other state types are shown as jsonb in the view
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('summary', 'r1', '{"v": 1.5}'), ('summary', 'r1', '{"v": 2}'),
    ('raw', 'r1', '{"v": "AB"}');
SELECT digitaltwin.wait_idle('30s');
SELECT model, twin_id, state, jsonb_typeof(state) FROM digitaltwin.twins
WHERE model IN ('summary', 'raw') ORDER BY 1;

-- the model sees its twin id; and runs with its creator's search_path
CREATE SCHEMA app;
CREATE TABLE app.limits (twin_id text, lim int);
INSERT INTO app.limits VALUES ('w1', 7);
CREATE FUNCTION app.who(twin text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object('twin', twin, 'user', current_user,
                              'lim', (SELECT lim FROM limits WHERE twin_id = twin));
END $$;
SET search_path = app, public;
SELECT digitaltwin.create_model('who', 'who(text,jsonb,jsonb)');
RESET search_path;
SELECT digitaltwin.send('who', 'w1', '{}') IS NOT NULL AS sent;
SELECT digitaltwin.wait_idle('30s');
SELECT state = jsonb_build_object('twin', 'w1', 'lim', 7, 'user', current_user) AS ok
FROM digitaltwin.twins WHERE model = 'who';

-- wait_idle needs to see the workers' commits
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT digitaltwin.wait_idle();
ROLLBACK;
SELECT digitaltwin.wait_idle(NULL);
-- nor wait for events its own transaction queued (they are invisible to the
-- workers until it commits)
BEGIN;
SELECT digitaltwin.send('counter', 'x', '{}') IS NOT NULL AS sent;
SELECT digitaltwin.wait_idle('1s');
ROLLBACK;

-- A worker remembers where it last wrote each twin's row of twin_state and
-- looks there first; the place is only a hint, checked against the twin's
-- key: rows ended and vacuumed away, their places taken by other twins'
-- rows, every row moved by VACUUM FULL.  Live and durable states agree.
-- the model of the sessions above: NULL on 'end' ends the twin
SELECT digitaltwin.create_model('place', 'session(text,jsonb,jsonb)');
CREATE FUNCTION place_round(ids text[], payload jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO digitaltwin.events (model, twin_id, payload)
    SELECT 'place', id, payload FROM unnest(ids) id;
    RETURN true;
END $$;
CREATE VIEW place_ids AS
SELECT array_agg('p' || i) FILTER (WHERE i <= 10) AS p_low,
       array_agg('p' || i) AS p_all,
       array_agg('q' || i) FILTER (WHERE i <= 10) AS q
FROM generate_series(1, 20) i;
SELECT place_round(p_all, '{}') FROM place_ids;
SELECT digitaltwin.wait_idle('30s');
SELECT place_round(p_all, '{}') FROM place_ids;
SELECT digitaltwin.wait_idle('30s');
SELECT place_round(p_low, '{"end": true}') FROM place_ids;
SELECT digitaltwin.wait_idle('30s');
VACUUM digitaltwin.twin_state;
SELECT place_round(q, '{}') FROM place_ids;
SELECT digitaltwin.wait_idle('30s');
SELECT place_round(p_low, '{}') FROM place_ids;
SELECT digitaltwin.wait_idle('30s');
SELECT place_round(q || p_all, '{}') FROM place_ids;
SELECT digitaltwin.wait_idle('30s');
VACUUM FULL digitaltwin.twin_state;
SELECT place_round(q || p_all, '{}') FROM place_ids;
SELECT digitaltwin.wait_idle('30s');
SELECT left(v.twin_id, 1) AS kind, (v.state->>'n')::int AS n, count(*) AS twins,
       bool_and(s.event_count = v.event_count AND s.event_count = (v.state->>'n')::int) AS durable_agrees
FROM digitaltwin.twins v
JOIN digitaltwin.models m ON m.name = v.model
JOIN digitaltwin.twin_state s ON s.model_id = m.id AND s.twin_id = v.twin_id
WHERE v.model = 'place' GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) AS durable_rows FROM digitaltwin.twin_state s
JOIN digitaltwin.models m ON m.id = s.model_id WHERE m.name = 'place';
DROP VIEW place_ids;
DROP FUNCTION place_round(text[], jsonb);
SELECT digitaltwin.drop_model('place', force => true);
