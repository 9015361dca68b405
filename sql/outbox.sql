--
-- The outbox (issue 13): models send messages back to their data sources
-- with send_to_source(); gateways take them with take_outbox().
--
-- A row exists exactly for each command of a consumed event (compared with
-- what was sent, kept in a table of the test: the queue is consumed), an
-- event that fails leaves none, each row is announced by one
-- NOTIFY digitaltwin_outbox carrying its id, a row taken is taken once, a
-- rolled-back take leaves it, only digitaltwin_gateway may take, and what
-- the caller plants is never used by take_outbox() (SECURITY DEFINER).
-- Two concurrent gateways: specs/outbox_gateways.spec.
--

-- wait up to timeout_s seconds for a query to return true
CREATE FUNCTION ob_poll(sql text, timeout_s int) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
    ok boolean;
BEGIN
    LOOP
        EXECUTE sql INTO ok;
        IF ok THEN
            RETURN true;
        END IF;
        IF clock_timestamp() > deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;

-- a car asks its driver to slow down above 100 km/h; some events ask for
-- more, or fail after sending
CREATE FUNCTION ob_car(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    speed int := (event->>'speed')::int;
BEGIN
    IF speed > 100 THEN
        PERFORM digitaltwin.send_to_source(jsonb_build_object('cmd', 'slow_down', 'speed', speed));
    END IF;
    IF event ? 'horn' THEN
        PERFORM digitaltwin.send_to_source(jsonb_build_object('cmd', 'horn'));
    END IF;
    IF event ? 'fail' THEN
        RAISE EXCEPTION 'car failed after sending';
    END IF;
    IF event ? 'flood' THEN
        FOR i IN 1 .. (event->>'flood')::int LOOP
            PERFORM digitaltwin.send_to_source(jsonb_build_object('i', i));
        END LOOP;
    END IF;
    IF event ? 'null' THEN
        PERFORM digitaltwin.send_to_source(NULL);
    END IF;
    IF event ? 'huge' THEN
        PERFORM digitaltwin.send_to_source(jsonb_build_object('x', repeat('x', 1100 * 1024)));
    END IF;
    RETURN jsonb_build_object('speed', speed);
END $$;
SELECT digitaltwin.create_model('ob_car', 'ob_car(text,jsonb,jsonb)');
-- a second model, for take_outbox's model filter
CREATE FUNCTION ob_gate(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.send_to_source(jsonb_build_object('open', twin_id));
    RETURN '{}';
END $$;
SELECT digitaltwin.create_model('ob_gate', 'ob_gate(text,jsonb,jsonb)');

LISTEN digitaltwin_outbox;
-- psql prints each notification with the listener's PID: collect them in
-- a file and read them back (\o takes query results and notifications)
\set ob_notes `pwd`/results/outbox_notifications.txt
\o :ob_notes

-- what the test sends, with the ids the queue gave the events
CREATE TABLE ob_sent (id bigint, model text, twin_id text COLLATE "C", payload jsonb);
WITH s AS (
    INSERT INTO digitaltwin.events (model, twin_id, payload)
    SELECT 'ob_car', 'car' || (i % 5), p
    FROM generate_series(1, 40) i,
         LATERAL (SELECT CASE
             WHEN i = 7 THEN jsonb_build_object('speed', 150, 'fail', true)
             WHEN i = 8 THEN jsonb_build_object('speed', 20, 'horn', true, 'fail', true)
             WHEN i = 9 THEN '{"speed": 50, "flood": 1001}'
             WHEN i = 10 THEN '{"speed": 50, "null": true}'
             WHEN i = 11 THEN '{"speed": 50, "huge": true}'
             WHEN i = 12 THEN '{"speed": 50, "flood": 1000}'
             WHEN i % 3 = 0 THEN jsonb_build_object('speed', 120, 'horn', true)
             ELSE jsonb_build_object('speed', 80 + i) END) x(p)
    ORDER BY i
    RETURNING id, model, twin_id, payload)
INSERT INTO ob_sent SELECT * FROM s;
WITH s AS (
    INSERT INTO digitaltwin.events (model, twin_id, payload)
    VALUES ('ob_gate', 'g1', '{}'), ('ob_gate', 'g2', '{}')
    RETURNING id, model, twin_id, payload)
INSERT INTO ob_sent SELECT * FROM s;
SELECT digitaltwin.wait_idle('60s');
-- the notifications were sent at the workers' commits, before wait_idle
-- returned; one more round trip for good measure
SELECT 1;
\o

-- the failing events are dead-lettered
SELECT s.payload, d.sqlstate, d.error
FROM digitaltwin.dead_letters d JOIN ob_sent s ON s.id = d.event_id
ORDER BY s.id;

-- the rows are exactly the commands of the consumed events, computed
-- independently from what was sent: none of a dead-lettered event
CREATE TEMP VIEW ob_expected AS
SELECT s.id AS event_id, s.model, s.twin_id, c.payload
FROM ob_sent s
CROSS JOIN LATERAL (
    SELECT jsonb_build_object('cmd', 'slow_down', 'speed', (s.payload->>'speed')::int)
    WHERE s.model = 'ob_car' AND (s.payload->>'speed')::int > 100
    UNION ALL
    SELECT '{"cmd": "horn"}' WHERE s.model = 'ob_car' AND s.payload ? 'horn'
    UNION ALL
    SELECT jsonb_build_object('i', i)
    FROM generate_series(1, coalesce((s.payload->>'flood')::int, 0)) i
    WHERE s.model = 'ob_car'
    UNION ALL
    SELECT jsonb_build_object('open', s.twin_id) WHERE s.model = 'ob_gate') c(payload)
WHERE s.id NOT IN (SELECT event_id FROM digitaltwin.dead_letters);
SELECT (SELECT count(*) FROM ob_expected) AS expected,
       (SELECT count(*) FROM digitaltwin.outbox) AS rows,
       (SELECT count(*) FROM (SELECT event_id, model, twin_id, payload FROM digitaltwin.outbox
                              EXCEPT ALL SELECT * FROM ob_expected) x) AS unexpected,
       (SELECT count(*) FROM (SELECT * FROM ob_expected
                              EXCEPT ALL SELECT event_id, model, twin_id, payload FROM digitaltwin.outbox) x) AS missing;
SELECT count(*) AS of_dead_events FROM digitaltwin.outbox
WHERE event_id IN (SELECT event_id FROM digitaltwin.dead_letters);
-- within a twin, in the order of its events; all pending, just created
SELECT bool_and(ok) AS in_order FROM (
    SELECT event_id >= lag(event_id) OVER (PARTITION BY model, twin_id ORDER BY id) AS ok
    FROM digitaltwin.outbox) s;
SELECT count(*) FILTER (WHERE taken_at IS NULL) AS pending,
       bool_and(created_at <= now()) AS created
FROM digitaltwin.outbox;

-- one notification per row, its id as payload: none merged, none extra
CREATE TEMP TABLE ob_notes AS
SELECT m[1] AS channel, m[2] AS payload
FROM regexp_matches(pg_read_file(:'ob_notes'),
                    'Asynchronous notification "([^"]*)" with payload "([^"]*)"', 'g') m;
SELECT channel, count(*) AS notifications, count(DISTINCT payload) AS distinct_payloads
FROM ob_notes GROUP BY channel;
SELECT count(*) AS rows_without_notification FROM digitaltwin.outbox o
WHERE NOT EXISTS (SELECT FROM ob_notes n WHERE n.payload = o.id::text);
SELECT count(*) AS notifications_without_row FROM ob_notes n
WHERE NOT EXISTS (SELECT FROM digitaltwin.outbox o WHERE n.payload = o.id::text);
UNLISTEN digitaltwin_outbox;

-- outside a model: 55000
SELECT digitaltwin.send_to_source('{"cmd": "stop"}');
\set VERBOSITY sqlstate
SELECT digitaltwin.send_to_source('{"cmd": "stop"}');
\set VERBOSITY default

--
-- Privileges: only digitaltwin_gateway takes; readers read
--
CREATE ROLE dt_ob_writer;
CREATE ROLE dt_ob_reader;
CREATE ROLE dt_ob_admin;
CREATE ROLE dt_ob_gw;
GRANT digitaltwin_writer TO dt_ob_writer;
GRANT digitaltwin_reader TO dt_ob_reader;
GRANT digitaltwin_admin TO dt_ob_admin;
GRANT digitaltwin_gateway TO dt_ob_gw;
SELECT rolname, rolcanlogin, shobj_description(oid, 'pg_authid') IS NOT NULL AS documented
FROM pg_roles WHERE rolname = 'digitaltwin_gateway';
SELECT r AS role,
       has_function_privilege(r, 'digitaltwin.take_outbox(integer, text)', 'EXECUTE') AS take,
       has_table_privilege(r, 'digitaltwin.outbox', 'SELECT') AS read,
       has_table_privilege(r, 'digitaltwin.outbox', 'UPDATE') AS lock,
       has_table_privilege(r, 'digitaltwin.outbox', 'DELETE') AS delete
FROM unnest(ARRAY['dt_ob_writer', 'dt_ob_reader', 'dt_ob_admin', 'dt_ob_gw', 'public']) r;
SET ROLE dt_ob_writer;
SELECT * FROM digitaltwin.take_outbox();
SELECT count(*) FROM digitaltwin.outbox;
RESET ROLE;
SET ROLE dt_ob_reader;
SELECT * FROM digitaltwin.take_outbox();
SELECT count(*) AS readable FROM digitaltwin.outbox;
SELECT id FROM digitaltwin.outbox LIMIT 1 FOR UPDATE SKIP LOCKED;
RESET ROLE;
SET ROLE dt_ob_admin;
SELECT * FROM digitaltwin.take_outbox();
RESET ROLE;

--
-- Taking, as a gateway
--
-- the oldest commands first, in id order, marked taken by this transaction
SELECT array_agg(id ORDER BY id) AS oldest3 FROM (
    SELECT id FROM digitaltwin.outbox WHERE taken_at IS NULL ORDER BY id LIMIT 3) s \gset
SET ROLE dt_ob_gw;
SELECT array_agg(id) = :'oldest3'::bigint[] AS oldest_first,
       bool_and(taken_at = now()) AS taken_now
FROM digitaltwin.take_outbox(3);
-- one model only
SELECT model, twin_id, payload FROM digitaltwin.take_outbox(100, 'ob_gate') ORDER BY twin_id;
SELECT count(*) FROM digitaltwin.take_outbox(100, 'ob_gate');
SELECT count(*) FROM digitaltwin.take_outbox(100, 'no_such_model');
-- nothing with max 0; a bad max is refused
SELECT count(*) FROM digitaltwin.take_outbox(0);
SELECT count(*) FROM digitaltwin.take_outbox(-1);
SELECT count(*) FROM digitaltwin.take_outbox(NULL);
-- a rolled-back take leaves its rows to the next take
BEGIN;
SELECT array_agg(id ORDER BY id) AS rolled_back FROM digitaltwin.take_outbox(5) \gset
ROLLBACK;
SELECT array_agg(id ORDER BY id) = :'rolled_back'::bigint[] AS taken_again
FROM digitaltwin.take_outbox(5);
-- a committed take is final: the rest, then nothing
SELECT count(*) > 0 AS rest FROM digitaltwin.take_outbox(100000);
SELECT count(*) AS left_over FROM digitaltwin.take_outbox(100000);
RESET ROLE;
SELECT count(*) AS rows, count(taken_at) AS taken,
       count(DISTINCT id) AS distinct_ids FROM digitaltwin.outbox;

--
-- Trust: take_outbox() runs as the extension's owner.  A gateway that owns
-- a schema plants operators and functions there and in pg_temp, and puts
-- them first on its search_path: none may run with the owner's rights (nor
-- at all, as the function names pg_catalog's).
--
CREATE SCHEMA ob_evil AUTHORIZATION dt_ob_gw;
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('ob_car', 'car1', '{"speed": 130}'), ('ob_gate', 'g3', '{}');
SELECT digitaltwin.wait_idle('60s');
SET ROLE dt_ob_gw;
CREATE TABLE ob_evil.calls (who name, what text);
GRANT INSERT ON ob_evil.calls TO PUBLIC;
CREATE FUNCTION ob_evil.pwn(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO ob_evil.calls VALUES (current_user, what);
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = 'dt_ob_gw') THEN
        ALTER ROLE dt_ob_gw SUPERUSER;
    END IF;
END $$;
CREATE FUNCTION ob_evil.eq_int8(a bigint, b bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM ob_evil.pwn('= (bigint, bigint)'); RETURN a = b; END $$;
CREATE FUNCTION ob_evil.eq_text(a text, b text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM ob_evil.pwn('= (text, text)'); RETURN a = b; END $$;
CREATE FUNCTION ob_evil.lt_int4(a int, b int) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM ob_evil.pwn('< (int, int)'); RETURN a < b; END $$;
CREATE FUNCTION ob_evil.now() RETURNS timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM ob_evil.pwn('now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION ob_evil.format(text, text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM ob_evil.pwn('format()'); RETURN 'x'; END $$;
CREATE OPERATOR ob_evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = ob_evil.eq_int8);
CREATE OPERATOR ob_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = ob_evil.eq_text);
CREATE OPERATOR ob_evil.< (LEFTARG = int, RIGHTARG = int, FUNCTION = ob_evil.lt_int4);
CREATE OPERATOR pg_temp.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = ob_evil.eq_int8);
CREATE OPERATOR pg_temp.= (LEFTARG = text, RIGHTARG = text, FUNCTION = ob_evil.eq_text);
CREATE OPERATOR pg_temp.< (LEFTARG = int, RIGHTARG = int, FUNCTION = ob_evil.lt_int4);
CREATE FUNCTION pg_temp.now() RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN PERFORM ob_evil.pwn('pg_temp.now()'); RETURN pg_catalog.now(); END $$;
-- the planted objects work where the caller's search_path reaches them
SET search_path = pg_temp, ob_evil, pg_catalog;
SELECT 1::bigint = 1::bigint AS planted_works;
SELECT who, what FROM ob_evil.calls;
DELETE FROM ob_evil.calls;
-- take_outbox() does not reach them: by model (= on text), by max (<), a
-- refused max (format()), all (= on bigint, now())
SELECT model, twin_id, payload FROM digitaltwin.take_outbox(10, 'ob_gate');
SELECT count(*) FROM digitaltwin.take_outbox(-5);
SELECT model, twin_id, payload FROM digitaltwin.take_outbox();
RESET search_path;
SELECT count(*) AS planted_calls FROM ob_evil.calls;
RESET ROLE;
SELECT rolsuper FROM pg_roles WHERE rolname = 'dt_ob_gw';

--
-- Retention: taken rows go digitaltwin.outbox_retention after taken_at
-- (worker 0's maintenance); pending rows stay
--
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('ob_gate', 'g4', '{}');
SELECT digitaltwin.wait_idle('60s');
ALTER SYSTEM SET digitaltwin.outbox_retention = '1s';
SELECT pg_reload_conf();
SELECT ob_poll('SELECT count(*) = 1 FROM digitaltwin.outbox', 60) AS only_pending_left;
SELECT model, twin_id, payload, taken_at FROM digitaltwin.outbox;
ALTER SYSTEM RESET digitaltwin.outbox_retention;
SELECT pg_reload_conf();

--
-- Clean up
--
SELECT digitaltwin.drop_model('ob_car', force => true);
SELECT digitaltwin.drop_model('ob_gate', force => true);
DELETE FROM digitaltwin.outbox;
DELETE FROM digitaltwin.dead_letters WHERE model LIKE 'ob\_%';
DROP OWNED BY dt_ob_gw;     -- ob_evil, and what it planted in pg_temp
DROP VIEW ob_expected;
DROP TABLE ob_sent;
DROP FUNCTION ob_car(text, jsonb, jsonb), ob_gate(text, jsonb, jsonb), ob_poll(text, int);
DROP ROLE dt_ob_writer, dt_ob_reader, dt_ob_admin, dt_ob_gw;
