--
-- Sending events: INSERT, multi-row INSERT, COPY, send(), and every refusal
--
-- Workers see only committed events: inside this transaction the queue can
-- be inspected before any of it is consumed.
BEGIN;
SELECT digitaltwin.send('counter', 'e1', '{"v": 1}') > 0 AS sent;
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('counter', 'e1', '{"v": 2}'), ('counter', 'e2', '{"v": 3}');
COPY digitaltwin.events (model, twin_id, payload) FROM stdin;
counter	e1	{"v": 4}
counter	e3	{"v": 5}
\.
SELECT model, twin_id, payload FROM digitaltwin.events ORDER BY id;
-- ids follow insertion order
SELECT array_agg(payload->>'v' ORDER BY id) FROM digitaltwin.events;
ROLLBACK;

-- refusals, each with its SQLSTATE
SELECT digitaltwin.send('no_such_model', 't', '{}');
SELECT digitaltwin.send(NULL, 't', '{}');
SELECT digitaltwin.send('counter', NULL, '{}');
SELECT digitaltwin.send('counter', '', '{}');
SELECT digitaltwin.send('counter', repeat('x', 64), '{}');
SELECT digitaltwin.send('counter', 't', NULL);
SELECT digitaltwin.send('counter', 't', '[1, 2]');
SELECT digitaltwin.send('counter', 't', '42');
SELECT digitaltwin.send('counter', 't', '"text"');
SELECT digitaltwin.send('counter', 't', 'null');
SELECT digitaltwin.send('counter', 't', '{"v": ');
-- the SQLSTATE of each refusal
CREATE FUNCTION pg_temp.sqlstate_of(cmd text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'accepted';
EXCEPTION WHEN others THEN
    RETURN SQLSTATE;
END $$;
SELECT cmd, pg_temp.sqlstate_of(cmd) FROM (VALUES
    ($$SELECT digitaltwin.send('no_such_model', 't', '{}')$$),
    ($$SELECT digitaltwin.send(NULL, 't', '{}')$$),
    ($$SELECT digitaltwin.send('counter', NULL, '{}')$$),
    ($$SELECT digitaltwin.send('counter', '', '{}')$$),
    ($$SELECT digitaltwin.send('counter', repeat('x', 64), '{}')$$),
    ($$SELECT digitaltwin.send('counter', 't', NULL)$$),
    ($$SELECT digitaltwin.send('counter', 't', '[]')$$),
    ($$SELECT digitaltwin.send('counter', 't', '1')$$),
    ($$INSERT INTO digitaltwin.events (model, twin_id) VALUES ('counter', 't')$$)
) AS c(cmd);

-- a 63-byte twin id is the longest accepted
BEGIN;
SELECT digitaltwin.send('counter', repeat('x', 63), '{}') > 0 AS sent;
ROLLBACK;

-- payload size limit
SET digitaltwin.max_payload_size = '1kB';
SELECT digitaltwin.send('counter', 't', jsonb_build_object('big', repeat('x', 2000)));
RESET digitaltwin.max_payload_size;

-- one bad row refuses the whole statement: nothing of it is queued
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('counter', 'ok', '{}'), ('counter', 'ok', '[]');
COPY digitaltwin.events (model, twin_id, payload) FROM stdin;
counter	ok	{}
nope	ok	{}
\.
-- ids are not for the sender to choose: they are the queue order
INSERT INTO digitaltwin.events (id, model, twin_id, payload)
VALUES (1, 'counter', 'ok', '{}');
SELECT count(*) FROM digitaltwin.events;

-- a model created in the same transaction accepts events at once
BEGIN;
CREATE FUNCTION tx_model(text, jsonb, jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT $3';
SELECT digitaltwin.create_model('tx_model', 'tx_model(text,jsonb,jsonb)');
SELECT digitaltwin.send('tx_model', 't', '{}') > 0 AS sent;
ROLLBACK;
-- ... and forgets it with the rollback
SELECT digitaltwin.send('tx_model', 't', '{}');
