--
-- Which databases are served (version 1.7): refusals, never a silent queue;
-- workers reload twins that another transaction wrote into twin_state.
--
CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

CREATE FUNCTION db_count(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1)
$$;
SELECT digitaltwin.create_model('db_count', 'db_count(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'db_count', 'd' || (i % 3), '{}' FROM generate_series(1, 30) i;
SELECT digitaltwin.wait_idle('60s');
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'db_count' ORDER BY 1;

-- only the extension's owner asks for service (CREATE EXTENSION does)
SELECT has_function_privilege('public', 'digitaltwin.serve_database()', 'EXECUTE') AS public_may_serve;
SELECT digitaltwin.serve_database();	-- served already: nothing to do

-- excluded by digitaltwin.databases: the workers stop, the queue refuses
ALTER SYSTEM SET digitaltwin.databases = 'some_other_db, "Quoted"';
SELECT pg_reload_conf();
SELECT wait_for($$(SELECT status FROM digitaltwin.stats
                   WHERE worker IS NULL AND database = current_database()) LIKE 'not served%'$$);
SELECT status FROM digitaltwin.stats WHERE worker IS NULL AND database = current_database();
SELECT wait_for($$NOT EXISTS (SELECT FROM pg_stat_activity
                              WHERE backend_type = 'digitaltwin worker'
                                AND datname = current_database())$$);
SELECT try($$INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('db_count', 'd0', '{}')$$);
SELECT try($$COPY digitaltwin.events (model, twin_id, payload) FROM PROGRAM 'printf ''db_count\td0\t{}\n'''$$);
SELECT try($$SELECT digitaltwin.send('db_count', 'd0', '{}')$$);
SELECT try($$SELECT digitaltwin.wait_idle('1s')$$);
SELECT try($$SELECT digitaltwin.serve_database()$$);
SELECT count(*) AS queued FROM digitaltwin.events;
-- the twins stay readable (from twin_state)
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'db_count' ORDER BY 1;

-- listed again: served again, nothing lost
ALTER SYSTEM RESET digitaltwin.databases;
SELECT pg_reload_conf();
SELECT wait_for($$(SELECT status FROM digitaltwin.stats
                   WHERE worker IS NULL AND database = current_database()) = 'served'$$);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('db_count', 'd0', '{}');
SELECT digitaltwin.wait_idle('60s');
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'db_count' ORDER BY 1;

-- twin_state written by another transaction (a restore, a repair): the
-- workers reload it when that transaction commits
-- (states are binary images: d1 gets a copy of d0's)
UPDATE digitaltwin.twin_state s SET state = d0.state
FROM digitaltwin.twin_state d0
WHERE d0.model_id = s.model_id AND d0.twin_id = 'd0' AND s.twin_id = 'd1'
  AND s.model_id = (SELECT id FROM digitaltwin.models WHERE name = 'db_count');
SELECT wait_for($$(SELECT state FROM digitaltwin.twins
                   WHERE model = 'db_count' AND twin_id = 'd1') = '{"n": 11}'$$);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('db_count', 'd1', '{}');
SELECT digitaltwin.wait_idle('60s');
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'db_count' ORDER BY 1;
-- a rolled-back change reloads nothing that was not there
BEGIN;
DELETE FROM digitaltwin.twin_state
WHERE model_id = (SELECT id FROM digitaltwin.models WHERE name = 'db_count');
INSERT INTO digitaltwin.twin_state (model_id, twin_id, state, event_count, updated_at)
SELECT id, 'd9', '\x', 0, now() FROM digitaltwin.models WHERE name = 'db_count';
ROLLBACK;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('db_count', 'd2', '{}');
SELECT digitaltwin.wait_idle('60s');
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'db_count' ORDER BY 1;
-- a worker reads twin_state's pages itself when it reloads, as the
-- extension created the table; altered by a superuser (a column added,
-- then dropped), the table is read by a query, by column names
ALTER TABLE digitaltwin.twin_state ADD COLUMN note text;
UPDATE digitaltwin.twin_state s SET state = d1.state, note = 'repaired'
FROM digitaltwin.twin_state d1
WHERE d1.model_id = s.model_id AND d1.twin_id = 'd1' AND s.twin_id = 'd0'
  AND s.model_id = (SELECT id FROM digitaltwin.models WHERE name = 'db_count');
SELECT wait_for($$(SELECT state FROM digitaltwin.twins
                   WHERE model = 'db_count' AND twin_id = 'd0') = '{"n": 12}'$$);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('db_count', 'd0', '{}');
SELECT digitaltwin.wait_idle('60s');
ALTER TABLE digitaltwin.twin_state DROP COLUMN note;
UPDATE digitaltwin.twin_state s SET state = d0.state
FROM digitaltwin.twin_state d0
WHERE d0.model_id = s.model_id AND d0.twin_id = 'd0' AND s.twin_id = 'd2'
  AND s.model_id = (SELECT id FROM digitaltwin.models WHERE name = 'db_count');
SELECT wait_for($$(SELECT state FROM digitaltwin.twins
                   WHERE model = 'db_count' AND twin_id = 'd2') = '{"n": 13}'$$);
SELECT twin_id, state, event_count FROM digitaltwin.twins WHERE model = 'db_count' ORDER BY 1;

-- a transaction that wrote twin_state cannot be prepared: COMMIT PREPARED
-- would not tell the workers to reload
BEGIN;
UPDATE digitaltwin.twin_state SET event_count = event_count WHERE false;
PREPARE TRANSACTION 'dt_reload';

-- DROP/ALTER DATABASE need the database without its workers, and hold
-- them off until the transaction ends; but only for who may run them
CREATE ROLE db_nobody LOGIN;
BEGIN;
SAVEPOINT s;
SET LOCAL ROLE db_nobody;
ALTER DATABASE contrib_regression RENAME TO elsewhere;
ROLLBACK TO s;
SELECT status FROM digitaltwin.stats WHERE worker IS NULL AND database = current_database();
SAVEPOINT s;
SET LOCAL ROLE db_nobody;
DROP DATABASE contrib_regression;
ROLLBACK TO s;
SELECT status FROM digitaltwin.stats WHERE worker IS NULL AND database = current_database();
COMMIT;
-- the owner's command that fails in a savepoint gives the workers back at
-- the rollback to it (the open database cannot be renamed)
BEGIN;
SAVEPOINT s;
ALTER DATABASE contrib_regression RENAME TO elsewhere;
ROLLBACK TO s;
SELECT wait_for($$(SELECT status FROM digitaltwin.stats
                   WHERE worker IS NULL AND database = current_database()) = 'served'$$);
SELECT wait_for($$(SELECT count(*) FROM pg_stat_activity
                   WHERE backend_type = 'digitaltwin worker'
                     AND datname = current_database()) = 2$$) AS workers_back;
COMMIT;
DROP ROLE db_nobody;

-- the trigger function is not for calling
SELECT try('SELECT digitaltwin.durable_state_changed()');

SELECT digitaltwin.drop_model('db_count', force => true);
DROP FUNCTION db_count(text, jsonb, jsonb);
DROP FUNCTION try(text);
