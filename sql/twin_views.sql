--
-- Typed twin views: create_twin_view() makes an ordinary view of the
-- caller's, one typed column per state property
--
CREATE FUNCTION vitals(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT coalesce(state, '{"limit": 120}') || jsonb_build_object(
        'bpm', event->'bpm', 'last_seen', event->'at', 'tags', event->'tags',
        'Note', 'seen ' || coalesce((state->>'n')::int, 0) + 1, 'n', coalesce((state->>'n')::int, 0) + 1)
$$;
CREATE TYPE meter_state AS (reading numeric(10,2), ok boolean, dropped int);
ALTER TYPE meter_state DROP ATTRIBUTE dropped;
CREATE FUNCTION meter(twin_id text, state meter_state, event jsonb) RETURNS meter_state
LANGUAGE sql AS $$
    SELECT ROW(coalesce(state.reading, 0) + (event->>'kwh')::numeric, (event->>'kwh')::numeric < 10)::meter_state
$$;
CREATE FUNCTION tick(twin_id text, state int, event jsonb) RETURNS int
LANGUAGE sql AS $$ SELECT coalesce(state, 0) + 1 $$;
SELECT digitaltwin.create_model('vitals', 'vitals(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('meter', 'meter(text,meter_state,jsonb)');
SELECT digitaltwin.create_model('tick', 'tick(text,int,jsonb)');

CREATE TABLE sent_vitals AS
SELECT 'w' || (i % 4) AS twin_id, 60 + i AS bpm,
       timestamptz '2026-12-01 10:00+00' + i * interval '1 minute' AS at,
       ARRAY['t' || i, 'x'] AS tags, i
FROM generate_series(1, 20) i;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'vitals', twin_id, jsonb_build_object('bpm', bpm, 'at', at, 'tags', to_jsonb(tags))
FROM sent_vitals ORDER BY i;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'meter', 'm' || (i % 3), jsonb_build_object('kwh', i * 1.5) FROM generate_series(1, 9) i;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'tick', 'c' || (i % 2), '{}' FROM generate_series(1, 5) i;
SELECT digitaltwin.wait_idle('30s');

-- a jsonb state: the columns named, keywords and quoted names too
SELECT digitaltwin.create_twin_view('vitals', 'vitals_v',
    'bpm int, limit int, last_seen timestamptz, tags text[], "Note" text');
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = 'vitals_v'::regclass AND attnum > 0 ORDER BY attnum;
SELECT twin_id, bpm, "limit", last_seen, tags, "Note", event_count, updated_at > now() - interval '1 hour' AS recent
FROM vitals_v ORDER BY twin_id;
-- against the events sent: each twin's last reading
CREATE TEMP VIEW expected_vitals AS
    SELECT DISTINCT ON (twin_id) twin_id, bpm, at, tags, count(*) OVER (PARTITION BY twin_id) AS n
    FROM sent_vitals ORDER BY twin_id, i DESC;
SELECT count(*) AS differ FROM (
    (SELECT twin_id, bpm, last_seen, tags, event_count FROM vitals_v
     EXCEPT SELECT * FROM expected_vitals)
    UNION ALL
    (SELECT * FROM expected_vitals
     EXCEPT SELECT twin_id, bpm, last_seen, tags, event_count FROM vitals_v)) d;
-- the caller's view: owned by the caller, in the caller's schema
SELECT c.relkind, n.nspname, pg_get_userbyid(c.relowner) = current_user AS mine,
       obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = 'vitals_v';
-- what makes the live view fast still works through it: a lookup by
-- twin_id, and no state copied when no state column is used
-- (the scan's lines of the plan: the join above it depends on how many
-- twins the whole suite has made)
CREATE FUNCTION twin_scan(query text) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    line text;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
        IF line ~ 'live_twins|Twin ' THEN
            RETURN NEXT btrim(regexp_replace(line, '->', ''));
        END IF;
    END LOOP;
END $$;
SELECT twin_scan($$SELECT bpm FROM vitals_v WHERE twin_id = 'w1'$$);
SELECT twin_scan($$SELECT twin_id, event_count FROM vitals_v$$);
SELECT bpm, "limit" FROM vitals_v WHERE twin_id = 'w1';

-- a composite state: its attributes, with their types (dropped ones not)
SELECT digitaltwin.create_twin_view('meter', 'meter_v');
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = 'meter_v'::regclass AND attnum > 0 ORDER BY attnum;
SELECT m.twin_id, m.reading, m.ok, m.event_count,
       m.reading = (SELECT sum(i * 1.5) FROM generate_series(1, 9) i WHERE 'm' || (i % 3) = m.twin_id) AS matches
FROM meter_v m ORDER BY twin_id;
-- a state of another type: one column, the state
SELECT digitaltwin.create_twin_view('tick', 'tick_v');
SELECT twin_id, state, pg_typeof(state) FROM tick_v ORDER BY twin_id;
-- in another schema, with its name qualified
CREATE SCHEMA analytics;
SELECT digitaltwin.create_twin_view('meter', 'analytics.meters', 'reading numeric(12,4), ok bool');
SELECT twin_id, reading, ok FROM analytics.meters ORDER BY twin_id;

-- errors
SELECT digitaltwin.create_twin_view('vitals', 'v_err');
SELECT digitaltwin.create_twin_view('nonesuch', 'v_err', 'a int');
SELECT digitaltwin.create_twin_view(NULL, 'v_err', 'a int');
SELECT digitaltwin.create_twin_view('vitals', NULL, 'a int');
SELECT digitaltwin.create_twin_view('vitals', 'vitals_v', 'bpm int');
SELECT digitaltwin.create_twin_view('vitals', 'v_err', 'bpm');
SELECT digitaltwin.create_twin_view('vitals', 'v_err', 'bpm int,');
SELECT digitaltwin.create_twin_view('vitals', 'v_err', 'bpm int, , x int');
SELECT digitaltwin.create_twin_view('vitals', 'v_err', 'bpm nosuchtype');
SELECT digitaltwin.create_twin_view('vitals', 'v_err', 'bpm int, BPM int');
SELECT digitaltwin.create_twin_view('vitals', 'v_err', 'twin_id int');
SELECT digitaltwin.create_twin_view('vitals', 'v_err', '"unterminated int');
SELECT digitaltwin.create_twin_view('vitals', 'v_err', 'x anyelement');
SELECT digitaltwin.create_twin_view('vitals', 'nosuchschema.v_err', 'bpm int');
SELECT count(*) AS no_stray_views FROM pg_class WHERE relname = 'v_err';

-- the caller's search_path cannot change what the view means: an
-- operator ->> and a cast of the caller's are not used
CREATE SCHEMA hostile;
CREATE FUNCTION hostile.fake_arrow(jsonb, text) RETURNS text LANGUAGE sql AS $$ SELECT '666' $$;
CREATE OPERATOR hostile.->> (LEFTARG = jsonb, RIGHTARG = text, FUNCTION = hostile.fake_arrow);
SET search_path = hostile, public;
SELECT digitaltwin.create_twin_view('vitals', 'public.vitals_safe', 'bpm int');
SELECT count(*) FILTER (WHERE bpm = 666) AS hijacked, count(*) AS twins FROM public.vitals_safe;
RESET search_path;

-- rights: a reader creates one in a schema where it may create; a role
-- that may not read the twins may not
CREATE ROLE dt_view_reader IN ROLE digitaltwin_reader;
CREATE ROLE dt_view_stranger;
GRANT USAGE, CREATE ON SCHEMA analytics TO dt_view_reader, dt_view_stranger;
GRANT USAGE ON SCHEMA digitaltwin TO dt_view_stranger;
GRANT EXECUTE ON FUNCTION digitaltwin.create_twin_view(text, text, text) TO dt_view_stranger;
SET ROLE dt_view_reader;
SELECT digitaltwin.create_twin_view('vitals', 'analytics.readers_view', 'bpm int');
SELECT count(*) AS readable FROM analytics.readers_view;
SELECT digitaltwin.create_twin_view('vitals', 'public.not_here', 'bpm int');
RESET ROLE;
SET ROLE dt_view_stranger;
SELECT digitaltwin.create_twin_view('vitals', 'analytics.stranger_view', 'bpm int');
RESET ROLE;
SELECT pg_get_userbyid(relowner) AS owner FROM pg_class WHERE relname = 'readers_view';

-- too many columns: refused before anything is built
SELECT digitaltwin.create_twin_view('vitals', 'v_err',
    (SELECT string_agg('c' || i || ' int', ', ') FROM generate_series(1, 1700) i));

-- dropped by DROP VIEW, or with the model.  A view of a user's that reads
-- a typed view keeps that typed view (with a warning), not the model: no
-- reader can stop a model's drop.  A typed view renamed or given to
-- another owner is no longer the registered one and stays.
DROP VIEW tick_v;
SELECT digitaltwin.drop_model('tick', force => true);
CREATE VIEW my_summary AS SELECT count(*) AS n FROM meter_v;
ALTER VIEW analytics.meters RENAME TO meters_renamed;
SELECT digitaltwin.drop_model('meter', force => true);
SELECT count(*) AS meter_gone FROM digitaltwin.models WHERE name = 'meter';
SELECT n AS twins_seen FROM my_summary;
DROP VIEW my_summary, meter_v, analytics.meters_renamed;
SELECT digitaltwin.drop_model('vitals', force => true);
SELECT c.relname FROM pg_class c
WHERE c.relname IN ('vitals_v', 'meter_v', 'tick_v', 'meters', 'vitals_safe', 'readers_view');
SELECT count(*) AS registered FROM digitaltwin.twin_views;

-- clean up
DROP SCHEMA analytics, hostile CASCADE;
REVOKE ALL ON FUNCTION digitaltwin.create_twin_view(text, text, text) FROM dt_view_stranger;
REVOKE ALL ON SCHEMA digitaltwin FROM dt_view_stranger;
DROP ROLE dt_view_reader, dt_view_stranger;
DROP VIEW expected_vitals;
DROP FUNCTION twin_scan;
DROP TABLE sent_vitals;
DROP FUNCTION vitals, meter, tick;
DROP TYPE meter_state;
