--
-- Predefined roles, superuser-owned models, twins per model
--
-- the three roles exist, with the expected membership
SELECT rolname, rolcanlogin, shobj_description(oid, 'pg_authid') IS NOT NULL AS documented
FROM pg_roles WHERE rolname LIKE 'digitaltwin\_%' ORDER BY rolname;
SELECT pg_has_role('digitaltwin_admin', 'digitaltwin_writer', 'MEMBER') AS admin_writes,
       pg_has_role('digitaltwin_admin', 'digitaltwin_reader', 'MEMBER') AS admin_reads,
       pg_has_role('digitaltwin_writer', 'digitaltwin_reader', 'MEMBER') AS writer_reads,
       pg_has_role('digitaltwin_reader', 'digitaltwin_writer', 'MEMBER') AS reader_writes;

CREATE ROLE dt_sensor;
CREATE ROLE dt_analyst;
CREATE ROLE dt_ops;
CREATE ROLE dt_ops2;
GRANT digitaltwin_writer TO dt_sensor;
GRANT digitaltwin_reader TO dt_analyst;
GRANT digitaltwin_admin TO dt_ops, dt_ops2;

CREATE FUNCTION tally(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'alert' THEN
        PERFORM digitaltwin.alert('info', 'tally ' || twin_id);
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'owner', current_user);
END $$;

-- an admin registers a model; it runs as that admin
SET ROLE dt_ops;
SELECT digitaltwin.create_model('tally', 'tally(text,jsonb,jsonb)');
RESET ROLE;
SELECT name, owner FROM digitaltwin.models WHERE name = 'tally';

-- a writer sends by INSERT, multi-row INSERT, COPY and send() ...
SET ROLE dt_sensor;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('tally', 't1', '{}');
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('tally', 't1', '{}'), ('tally', 't2', '{"alert": true}') RETURNING id > 0 AS queued;
COPY digitaltwin.events (model, twin_id, payload) FROM STDIN;
tally	t2	{}
tally	t3	{}
\.
SELECT digitaltwin.send('tally', 't3', '{}') > 0 AS sent;
SELECT digitaltwin.wait_idle('30s');
-- ... but reads neither twins, nor alerts, nor the queue, nor the state
SELECT * FROM digitaltwin.twins;
SELECT * FROM digitaltwin.twin_entries();
SELECT * FROM digitaltwin.live_twins;
SELECT * FROM digitaltwin.alerts;
SELECT * FROM digitaltwin.stats;
SELECT payload FROM digitaltwin.events;
SELECT * FROM digitaltwin.twin_state;
SELECT * FROM digitaltwin.dead_letters;
-- and cannot register or drop models
SELECT digitaltwin.create_model('mine', 'tally(text,jsonb,jsonb)');
SELECT digitaltwin.drop_model('tally', force => true);
RESET ROLE;

-- a reader reads twins, alerts and statistics ...
SET ROLE dt_analyst;
SELECT twin_id, state, event_count FROM digitaltwin.twins WHERE model = 'tally' ORDER BY twin_id;
SELECT count(*) FROM digitaltwin.live_twins;
SELECT twin_id, severity, message FROM digitaltwin.alerts WHERE model = 'tally';
SELECT count(*) > 0 AS has_workers FROM digitaltwin.stats WHERE worker IS NOT NULL;
-- ... but sends nothing, sees no dead letters, and manages no models
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('tally', 't9', '{}');
SELECT digitaltwin.send('tally', 't9', '{}');
COPY digitaltwin.events (model, twin_id, payload) FROM STDIN;
tally	t9	{}
\.
SELECT * FROM digitaltwin.dead_letters;
SELECT digitaltwin.drop_model('tally', force => true);
RESET ROLE;

-- PUBLIC, without any of the roles, can do none of it
CREATE ROLE dt_stranger;
GRANT USAGE ON SCHEMA digitaltwin TO dt_stranger;
SET ROLE dt_stranger;
SELECT digitaltwin.send('tally', 't9', '{}');
SELECT count(*) FROM digitaltwin.twins;
SELECT count(*) FROM digitaltwin.live_twins;
SELECT digitaltwin.wait_idle('1s');
RESET ROLE;

-- every event the writer sent was applied; another admin may drop any model
SELECT count(*) AS dead FROM digitaltwin.dead_letters WHERE model = 'tally';
SET ROLE dt_ops2;
SELECT digitaltwin.drop_model('tally', force => true);
RESET ROLE;

--
-- Superuser-owned models need digitaltwin.allow_superuser_models (on in
-- this test instance; t/007_security.pl tests it off)
--
SELECT current_setting('digitaltwin.allow_superuser_models') AS allowed,
       (SELECT context FROM pg_settings WHERE name = 'digitaltwin.allow_superuser_models');

--
-- Twins per model: digitaltwin.max_twins_per_model is 0 (no limit) here;
-- t/007_security.pl sets it.
--
SELECT current_setting('digitaltwin.max_twins_per_model') AS max_twins;

DROP FUNCTION tally(text, jsonb, jsonb);
REVOKE USAGE ON SCHEMA digitaltwin FROM dt_stranger;
DROP ROLE dt_sensor, dt_analyst, dt_ops, dt_ops2, dt_stranger;
