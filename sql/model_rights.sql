--
-- Per-model rights: grant_model(), revoke_model(), enforced role by role
--
CREATE ROLE dt_mr_sender;       -- will send to fleet_a only
CREATE ROLE dt_mr_reader;       -- will read fleet_a only
CREATE ROLE dt_mr_admin;        -- will administer fleet_a only
CREATE ROLE dt_mr_all_reader IN ROLE digitaltwin_reader;
CREATE ROLE dt_mr_owner;        -- owns a model, no group role
CREATE ROLE "dt mr; odd""name"; -- a name that needs quoting
GRANT CREATE ON SCHEMA public TO dt_mr_reader, dt_mr_all_reader, dt_mr_owner;

CREATE FUNCTION fleet(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'bad' THEN
        RAISE EXCEPTION 'fleet refuses this event';
    END IF;
    IF (event->>'speed')::int > 100 THEN
        PERFORM digitaltwin.alert('warning', 'speeding ' || twin_id);
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'speed', (event->>'speed')::int);
END $$;
SELECT digitaltwin.create_model('fleet_a', 'fleet(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('fleet_b', 'fleet(text,jsonb,jsonb)');
-- the same twin ids in both models
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT m, 'car' || i, jsonb_build_object('speed', 90 + 10 * i)
FROM unnest(ARRAY['fleet_a', 'fleet_b']) m, generate_series(1, 3) i;
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('fleet_a', 'car1', '{"bad": true}'), ('fleet_b', 'car1', '{"bad": true}');
SELECT digitaltwin.wait_idle('30s');

-- without a grant, nothing
SET ROLE dt_mr_sender;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fleet_a', 'car9', '{}');
RESET ROLE;

-- who may grant: the owner, digitaltwin_admin, a model's administrators
SET ROLE dt_mr_sender;
SELECT digitaltwin.grant_model('fleet_a', 'dt_mr_sender', 'send');
RESET ROLE;
SELECT digitaltwin.grant_model('fleet_a', 'dt_mr_sender', 'sned');
SELECT digitaltwin.grant_model('no_such_model', 'dt_mr_sender', 'send');
SELECT digitaltwin.grant_model('fleet_a', NULL, 'send');
SELECT digitaltwin.grant_model('fleet_a', 'dt_mr_sender', 'send');
SELECT digitaltwin.grant_model('fleet_a', 'dt_mr_sender', 'send');   -- again: no error
SELECT digitaltwin.grant_model('fleet_a', 'dt_mr_reader', 'read');
SELECT digitaltwin.grant_model('fleet_a', 'dt_mr_admin', 'admin');
SELECT m.name AS model, g.grantee, g.privilege, g.granted_by
FROM digitaltwin.model_grants g JOIN digitaltwin.models m ON m.id = g.model_id
ORDER BY 1, 2, 3;

-- send: INSERT, multi-row INSERT, COPY and send() for fleet_a, never fleet_b
SET ROLE dt_mr_sender;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fleet_a', 'car4', '{"speed": 50}');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fleet_b', 'car4', '{"speed": 50}');
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('fleet_a', 'car5', '{"speed": 50}'), ('fleet_b', 'car5', '{"speed": 50}');
COPY digitaltwin.events (model, twin_id, payload) FROM STDIN;
fleet_a	car6	{"speed": 60}
\.
COPY digitaltwin.events (model, twin_id, payload) FROM STDIN;
fleet_b	car6	{"speed": 60}
\.
SELECT digitaltwin.send('fleet_a', 'car7', '{"speed": 70}') > 0 AS sent;
SELECT digitaltwin.send('fleet_b', 'car7', '{"speed": 70}') > 0 AS sent;
SELECT digitaltwin.wait_idle('30s');
-- ... cannot raise its own rights
SELECT digitaltwin.grant_model('fleet_a', 'dt_mr_sender', 'admin');
-- ... and reads nothing
SELECT count(*) FROM digitaltwin.twins;
RESET ROLE;
SELECT model, count(*) FROM digitaltwin.twins WHERE twin_id IN ('car4', 'car5', 'car6', 'car7')
GROUP BY model ORDER BY model;

-- read: twins, alerts and statistics of fleet_a only
SET ROLE dt_mr_reader;
SELECT model, twin_id, state->>'n' AS n FROM digitaltwin.twins ORDER BY 1, 2;
-- a lookup by id (Twin Lookup) leaves fleet_b's car1 out too
SELECT model, twin_id FROM digitaltwin.twins WHERE twin_id = 'car1';
SELECT count(*) AS live_twins FROM digitaltwin.live_twins;
SELECT model, message FROM digitaltwin.alerts ORDER BY message;
SELECT model, events_processed, dead_letters, alerts FROM digitaltwin.model_stats
WHERE model LIKE 'fleet%' ORDER BY model;
-- not the dead letters (admin), nor send
SELECT count(*) FROM digitaltwin.dead_letters;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fleet_a', 'car9', '{}');
-- a typed view of the model it reads; not of the other
SELECT digitaltwin.create_twin_view('fleet_a', 'public.fleet_a_cars', 'speed int');
SELECT twin_id, speed FROM fleet_a_cars ORDER BY twin_id;
SELECT digitaltwin.create_twin_view('fleet_b', 'public.fleet_b_cars', 'speed int');
RESET ROLE;

-- a typed view shows each reader what that reader may read
SET ROLE dt_mr_all_reader;
SELECT digitaltwin.create_twin_view('fleet_b', 'public.fleet_b_all', 'speed int');
SELECT count(*) AS all_reader_sees FROM fleet_b_all;
GRANT SELECT ON fleet_b_all TO dt_mr_reader;
-- the group role still means every model
SELECT model, count(*) FROM digitaltwin.twins WHERE model LIKE 'fleet%' GROUP BY model ORDER BY model;
SELECT model, count(*) FROM digitaltwin.alerts WHERE model LIKE 'fleet%' GROUP BY model ORDER BY model;
RESET ROLE;
SET ROLE dt_mr_reader;
SELECT count(*) AS fleet_a_reader_sees FROM fleet_b_all;
RESET ROLE;

-- admin: fleet_a's dead letters, reset, retry, grant; not the switches,
-- which hold every worker of the database (pause, resume, drop...)
SET ROLE dt_mr_admin;
SELECT model, error FROM digitaltwin.dead_letters ORDER BY event_id;
SELECT digitaltwin.pause_model('fleet_a');
SELECT digitaltwin.resume_model('fleet_a');
SELECT digitaltwin.pause_model('fleet_b');
SELECT digitaltwin.reset_stats('fleet_a');
SELECT digitaltwin.reset_stats('fleet_b');
SELECT digitaltwin.reset_stats();
SELECT digitaltwin.retry_dead_letters();
SELECT digitaltwin.retry_dead_letters('fleet_b');
SELECT digitaltwin.retry_dead_letters('fleet_a');
SELECT digitaltwin.wait_idle('30s');
SELECT model, count(*) AS dead_again FROM digitaltwin.dead_letters GROUP BY model;
SELECT digitaltwin.grant_model('fleet_a', '"dt mr; odd""name"', 'read');
SELECT digitaltwin.grant_model('fleet_b', '"dt mr; odd""name"', 'read');
SELECT digitaltwin.revoke_model('fleet_b', 'dt_mr_sender', 'send');
-- 'admin' includes read and send
SELECT model, count(*) AS admin_reads FROM digitaltwin.twins GROUP BY model;
SELECT digitaltwin.send('fleet_a', 'car8', '{"speed": 80}') > 0 AS admin_sends;
SELECT digitaltwin.wait_idle('30s');
-- but not altering its code, which runs as the owner
SELECT digitaltwin.alter_model('fleet_a', 'fleet(text,jsonb,jsonb)');
RESET ROLE;
SET ROLE "dt mr; odd""name";
SELECT count(*) AS odd_name_reads FROM digitaltwin.twins WHERE model = 'fleet_a';
RESET ROLE;

-- a model's sends need the right of its owner on the target model
GRANT EXECUTE ON FUNCTION digitaltwin.create_model(text, regprocedure, regprocedure) TO dt_mr_owner;
GRANT USAGE ON SCHEMA digitaltwin TO dt_mr_owner;
SET ROLE dt_mr_owner;
CREATE FUNCTION relay(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.send('fleet_b', 'relayed', jsonb_build_object('speed', 1));
    RETURN '{}';
END $$;
SELECT digitaltwin.create_model('relay', 'relay(text,jsonb,jsonb)');
RESET ROLE;
-- its owner may send to its own model (and so execute send()), not to fleet_b
SELECT digitaltwin.grant_model('relay', 'dt_mr_owner', 'send');
SELECT digitaltwin.send('relay', 'r1', '{}') > 0 AS sent;
SELECT digitaltwin.wait_idle('30s');
SELECT sqlstate, error FROM digitaltwin.dead_letters WHERE model = 'relay';
SELECT digitaltwin.grant_model('fleet_b', 'dt_mr_owner', 'send');
SELECT digitaltwin.retry_dead_letters('relay');
SELECT digitaltwin.wait_idle('30s');
SELECT count(*) AS relayed FROM digitaltwin.twins WHERE model = 'fleet_b' AND twin_id = 'relayed';

-- revoke: the model right goes, the object privileges give nothing alone
SELECT digitaltwin.revoke_model('fleet_a', 'dt_mr_sender', 'send');
SELECT digitaltwin.revoke_model('fleet_a', 'dt_mr_sender', 'send');
SET ROLE dt_mr_sender;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('fleet_a', 'car9', '{}');
RESET ROLE;
SELECT digitaltwin.revoke_model('fleet_a', 'dt_mr_reader', 'read');
SET ROLE dt_mr_reader;
SELECT count(*) FROM digitaltwin.twins;
SELECT count(*) FROM digitaltwin.alerts;
SELECT count(*) FROM digitaltwin.model_stats;
SELECT count(*) FROM fleet_a_cars;
RESET ROLE;

-- roles with rights cannot be dropped; DROP OWNED BY takes the rights away
DROP ROLE dt_mr_admin;
DROP OWNED BY dt_mr_admin;
SELECT count(*) FROM digitaltwin.model_grants WHERE grantee::oid = 'dt_mr_admin'::regrole::oid;
DROP ROLE dt_mr_admin;

-- rights go with their model
SELECT digitaltwin.drop_model('relay', force => true);
SELECT digitaltwin.drop_model('fleet_b', force => true);
SELECT digitaltwin.drop_model('fleet_a', force => true);
SELECT count(*) FROM digitaltwin.model_grants;
DROP FUNCTION fleet(text, jsonb, jsonb);
DROP OWNED BY dt_mr_sender, dt_mr_reader, dt_mr_all_reader, dt_mr_owner, "dt mr; odd""name";
DROP ROLE dt_mr_sender, dt_mr_reader, dt_mr_all_reader, dt_mr_owner, "dt mr; odd""name";
