--
-- Dropping models and the extension
--
SELECT digitaltwin.drop_model('remember', force => true);
-- its twins leave the live view and the durable state at once
SELECT count(*) FROM digitaltwin.twins WHERE model = 'remember';
SELECT count(*) FROM digitaltwin.twin_state s
WHERE NOT EXISTS (SELECT 1 FROM digitaltwin.models m WHERE m.id = s.model_id);
-- a model of the same name starts from scratch
SELECT digitaltwin.create_model('remember', 'counter(text,jsonb,jsonb)');
SELECT digitaltwin.send('remember', 'a', '{}') IS NOT NULL AS sent;
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state, event_count FROM digitaltwin.twins WHERE model = 'remember';

-- a model's functions and state type cannot be dropped under it (1.3),
-- not even with CASCADE or with the schema or table that holds them
CREATE SCHEMA doomed_models;
CREATE TABLE doomed_models.reading (bpm int);
CREATE FUNCTION doomed_models.doomed(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS 'SELECT $3';
CREATE FUNCTION doomed_models.start(twin_id text) RETURNS jsonb
LANGUAGE sql AS 'SELECT ''{}''::jsonb';
CREATE FUNCTION doomed_models.typed(twin_id text, state doomed_models.reading, event jsonb)
RETURNS doomed_models.reading LANGUAGE sql AS 'SELECT ROW(1)::doomed_models.reading';
CREATE FUNCTION doomed_models.unused() RETURNS int LANGUAGE sql AS 'SELECT 1';
SELECT digitaltwin.create_model('doomed', 'doomed_models.doomed(text,jsonb,jsonb)',
                                'doomed_models.start(text)');
SELECT digitaltwin.create_model('typed', 'doomed_models.typed(text,doomed_models.reading,jsonb)');
\set SHOW_CONTEXT never
DROP FUNCTION doomed_models.doomed(text, jsonb, jsonb);
DROP FUNCTION doomed_models.start(text) CASCADE;
DROP TABLE doomed_models.reading CASCADE;
DROP SCHEMA doomed_models CASCADE;
\set VERBOSITY sqlstate
DROP FUNCTION doomed_models.doomed(text, jsonb, jsonb);
\set VERBOSITY default
\set SHOW_CONTEXT errors
-- all still there, and other objects drop as usual
SELECT count(*) AS kept FROM pg_proc WHERE pronamespace = 'doomed_models'::regnamespace;
DROP FUNCTION doomed_models.unused();
-- a role that may drop its function but not read digitaltwin.models: the
-- check runs as the extension's owner, and refuses all the same
CREATE ROLE dt_dropper;
ALTER FUNCTION doomed_models.doomed(text, jsonb, jsonb) OWNER TO dt_dropper;
GRANT USAGE ON SCHEMA doomed_models TO dt_dropper;
SET ROLE dt_dropper;
\set SHOW_CONTEXT never
DROP FUNCTION doomed_models.doomed(text, jsonb, jsonb);
\set SHOW_CONTEXT errors
RESET ROLE;
-- a superuser can bypass the trigger: the model's events are then
-- dead-lettered, not lost
ALTER EVENT TRIGGER digitaltwin_protect_models DISABLE;
DROP FUNCTION doomed_models.doomed(text, jsonb, jsonb);
ALTER EVENT TRIGGER digitaltwin_protect_models ENABLE;
SELECT digitaltwin.send('doomed', 'd', '{}') IS NOT NULL AS sent;
SELECT digitaltwin.wait_idle('30s');
SELECT error, sqlstate FROM digitaltwin.dead_letters WHERE model = 'doomed';
-- once the models are dropped, so can their objects be
SELECT digitaltwin.drop_model('doomed', force => true);
SELECT digitaltwin.drop_model('typed', force => true);
DROP SCHEMA doomed_models CASCADE;
DROP ROLE dt_dropper;

-- DROP EXTENSION and CREATE EXTENSION: a fresh start, no old twin shows up
DROP EXTENSION digitaltwin;
CREATE EXTENSION digitaltwin;
SELECT count(*) FROM digitaltwin.twins;
SELECT digitaltwin.create_model('again', 'counter(text,jsonb,jsonb)');
SELECT digitaltwin.send('again', 'a', '{}') IS NOT NULL AS sent;
SELECT digitaltwin.wait_idle('30s');
SELECT model, twin_id, state FROM digitaltwin.twins;
DROP EXTENSION digitaltwin;

-- version 1.0 and the update to 1.1 (roles and privileges)
CREATE EXTENSION digitaltwin VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'digitaltwin';
SELECT has_function_privilege('public', 'digitaltwin.twin_entries()', 'EXECUTE') AS public_reads;
ALTER EXTENSION digitaltwin UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'digitaltwin';
SELECT has_function_privilege('public', 'digitaltwin.twin_entries()', 'EXECUTE') AS public_reads,
       has_function_privilege('digitaltwin_reader', 'digitaltwin.twin_entries()', 'EXECUTE') AS reader_reads,
       has_column_privilege('digitaltwin_writer', 'digitaltwin.events', 'payload', 'INSERT') AS writer_sends,
       has_table_privilege('digitaltwin_reader', 'digitaltwin.live_twins', 'SELECT') AS reader_reads_live,
       has_table_privilege('digitaltwin_writer', 'digitaltwin.live_twins', 'SELECT') AS writer_reads_live;
DROP EXTENSION digitaltwin;

-- version 1.1 with twins, and the update to 1.2 (the view reads a foreign
-- table instead of twin_entries()): the same twins before and after
CREATE EXTENSION digitaltwin VERSION '1.1';
SELECT digitaltwin.create_model('kept', 'counter(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'kept', 'k' || i % 7, '{}' FROM generate_series(1, 50) i;
SELECT digitaltwin.wait_idle('30s');
CREATE TEMP TABLE before_update AS SELECT * FROM digitaltwin.twins;
EXPLAIN (COSTS OFF) SELECT count(*) FROM digitaltwin.twins;
ALTER EXTENSION digitaltwin UPDATE TO '1.2';
EXPLAIN (COSTS OFF) SELECT count(*) FROM digitaltwin.twins;
SELECT count(*) AS twins,
       count(*) FILTER (WHERE (b.model, b.twin_id, b.state, b.event_count, b.updated_at)
                       IS NOT DISTINCT FROM (t.model, t.twin_id, t.state, t.event_count, t.updated_at))
           AS unchanged
FROM before_update b FULL JOIN digitaltwin.twins t USING (twin_id);
-- the update to 1.3 protects the functions of models registered before it
ALTER EXTENSION digitaltwin UPDATE TO '1.3';
\set SHOW_CONTEXT never
DROP FUNCTION counter(text, jsonb, jsonb);
\set SHOW_CONTEXT errors
SELECT evtname, evtevent, evtenabled FROM pg_event_trigger
WHERE evtname = 'digitaltwin_protect_models';
-- the trigger is part of the extension and goes with it, models and all
DROP EXTENSION digitaltwin;
SELECT count(*) AS triggers_left FROM pg_event_trigger
WHERE evtname = 'digitaltwin_protect_models';

-- version 1.3 with twins, updated to the newest version: the twins stay,
-- queued events are processed after the update, and what later versions
-- added works (event time, timers)
CREATE EXTENSION digitaltwin VERSION '1.3';
SELECT digitaltwin.create_model('kept', 'counter(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'kept', 'k' || i % 3, '{}' FROM generate_series(1, 30) i;
SELECT digitaltwin.wait_idle('30s');
ALTER EXTENSION digitaltwin UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'digitaltwin';
INSERT INTO digitaltwin.events (model, twin_id, payload, event_time)
SELECT 'kept', 'k' || i % 3, '{}', '2026-01-01' FROM generate_series(1, 30) i;
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state, event_count FROM digitaltwin.twins ORDER BY twin_id;
SELECT count(*) AS timers FROM digitaltwin.timers;
DROP EXTENSION digitaltwin;
