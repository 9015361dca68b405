--
-- Event time and context (version 1.5): an application's events carry
-- their own time; a model sees the event it processes through
-- current_event(); an event a model sends is a message, with its sender
-- and the time of the event that sent it.  Writers set the time, never the
-- sender.
--
CREATE ROLE dt_ctx_writer;
GRANT digitaltwin_writer TO dt_ctx_writer;
CREATE TABLE ctx_seen (model text, info digitaltwin.event_info);
GRANT INSERT ON ctx_seen TO PUBLIC;

-- records what it sees; forwards an event with "forward" to the model relay
CREATE FUNCTION ctx_watch(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ctx_seen VALUES ('ctx_watch', digitaltwin.current_event());
    IF event ? 'forward' THEN
        PERFORM digitaltwin.send('ctx_relay', 'r-' || twin_id, event - 'forward');
        INSERT INTO digitaltwin.events (model, twin_id, payload)
        VALUES ('ctx_relay', 'i-' || twin_id, '{}');
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
CREATE FUNCTION ctx_relay(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ctx_seen VALUES ('ctx_relay', digitaltwin.current_event());
    RETURN '{}';
END $$;
SELECT digitaltwin.create_model('ctx_watch', 'ctx_watch(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('ctx_relay', 'ctx_relay(text,jsonb,jsonb)');

-- the application's time, given or by default the insert time
BEGIN;
INSERT INTO digitaltwin.events (model, twin_id, payload, event_time) VALUES
    ('ctx_watch', 'a', '{"n": 1}', '2026-01-01 10:00:00+00'),
    ('ctx_watch', 'a', '{"n": 2, "forward": true}', '2026-01-01 10:00:05+00');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('ctx_watch', 'b', '{}');
SELECT digitaltwin.send('ctx_watch', 'c', '{}', '2026-02-02 12:00:00+00') > 0 AS sent;
SELECT digitaltwin.send('ctx_watch', 'd', '{}') > 0 AS sent;
CREATE TEMP TABLE ctx_now AS SELECT now() AS t;
COMMIT;
-- a writer may set the time, not the sender
SET ROLE dt_ctx_writer;
INSERT INTO digitaltwin.events (model, twin_id, payload, event_time)
VALUES ('ctx_watch', 'e', '{}', '2025-12-31 23:59:59+00');
INSERT INTO digitaltwin.events (model, twin_id, payload, sender_model, sender_twin)
VALUES ('ctx_watch', 'f', '{}', 'ctx_relay', 'x');
RESET ROLE;
-- (the second wait covers the messages the first batch sent)
SELECT digitaltwin.wait_idle('60s');
SELECT digitaltwin.wait_idle('60s');

-- what each call saw, against the queue's own record (the events table is
-- consumed: compare with what was sent above)
SELECT s.model, (s.info).twin_id, (s.info).kind,
       CASE WHEN (s.info).event_time = (SELECT t FROM ctx_now) THEN 'insert time'
            ELSE (s.info).event_time::text END AS event_time,
       (s.info).enqueued_at IS NOT NULL AS enqueued,
       (s.info).sender_model, (s.info).sender_twin, (s.info).timer,
       (s.info).model = s.model AS own_model
FROM ctx_seen s
ORDER BY (s.info).twin_id COLLATE "C", (s.info).id;
-- ids are the events' own and distinct
SELECT count(DISTINCT (info).id) = count(*) AS distinct_ids FROM ctx_seen;

-- outside a model there is no current event
SELECT digitaltwin.current_event();
-- an event time cannot be NULL (the message names the queue's partition)
DO $$
BEGIN
    INSERT INTO digitaltwin.events (model, twin_id, payload, event_time)
    VALUES ('ctx_watch', 'g', '{}', NULL);
EXCEPTION WHEN not_null_violation THEN
    RAISE NOTICE 'refused: %', SQLSTATE;
END $$;

-- send() inside a model (version 1.6: staged in the batch, inserted at its
-- end): the id it returns is the id the receiver sees; an event that sends
-- and then fails leaves no message, nor does a subtransaction of the model
-- that rolls back; a model owner who may not insert events cannot send.
CREATE TABLE ctx_sent (sender text, id bigint);
GRANT INSERT ON ctx_sent TO PUBLIC;
CREATE FUNCTION ctx_sender(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ctx_sent VALUES (twin_id,
        digitaltwin.send('ctx_relay', 'to-' || twin_id, jsonb_build_object('from', twin_id)));
    IF event ? 'caught' THEN
        BEGIN
            PERFORM digitaltwin.send('ctx_relay', 'caught-' || twin_id, '{}');
            RAISE EXCEPTION 'rolled back';
        EXCEPTION WHEN raise_exception THEN
            NULL;
        END;
    END IF;
    IF event ? 'fail' THEN
        RAISE EXCEPTION 'sender fails after sending';
    END IF;
    RETURN '{}';
END $$;
SELECT digitaltwin.create_model('ctx_sender', 'ctx_sender(text,jsonb,jsonb)');
-- an owner with EXECUTE on send() but no INSERT on the queue
CREATE ROLE dt_ctx_noinsert;
GRANT USAGE ON SCHEMA digitaltwin TO dt_ctx_noinsert;
GRANT EXECUTE ON FUNCTION digitaltwin.create_model(text, regprocedure, regprocedure),
                          digitaltwin.send(text, text, jsonb, timestamptz) TO dt_ctx_noinsert;
SET ROLE dt_ctx_noinsert;
SELECT digitaltwin.create_model('ctx_noinsert', 'ctx_sender(text,jsonb,jsonb)');
RESET ROLE;
TRUNCATE ctx_seen;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('ctx_sender', 'ok1', '{}'),
    ('ctx_sender', 'fails', '{"fail": true}'),
    ('ctx_sender', 'ok2', '{"caught": true}'),
    ('ctx_noinsert', 'denied', '{}');
SELECT digitaltwin.wait_idle('60s');
-- every message delivered is one whose id send() returned, seen as such
SELECT s.sender, (r.info).twin_id, (r.info).kind, (r.info).sender_twin,
       (r.info).id = s.id AS same_id
FROM ctx_seen r LEFT JOIN ctx_sent s ON s.id = (r.info).id
ORDER BY (r.info).twin_id COLLATE "C";
-- the failed sender and the owner without INSERT: dead letters, no message
SELECT model, twin_id, sqlstate, error FROM digitaltwin.dead_letters
WHERE model IN ('ctx_sender', 'ctx_noinsert') ORDER BY model;
DELETE FROM digitaltwin.dead_letters WHERE model IN ('ctx_sender', 'ctx_noinsert');
-- the commit of the batch that wrote the messages wakes the workers: with
-- an hour between polls, and no wait_idle() (which wakes them itself), the
-- receivers in both workers' partitions get their messages at once.  The
-- sender takes its time, so that the other worker, woken by the commit of
-- the sender's event, has looked at the queue and gone back to sleep
-- before the messages commit.  A worker's latch is also set by the alarm
-- of a model call's timeout, which may ring after the call (up to
-- model_timeout + 1 s): the timeout is an hour too, and the test waits
-- until the alarms of the calls made before are past.
CREATE FUNCTION ctx_fanout(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.3);
    FOR i IN 1..20 LOOP
        PERFORM digitaltwin.send('ctx_relay', 'w' || i, '{}');
    END LOOP;
    RETURN '{}';
END $$;
SELECT digitaltwin.create_model('ctx_fanout', 'ctx_fanout(text,jsonb,jsonb)');
SELECT count(DISTINCT digitaltwin.partition_of('w' || i, 2)) AS partitions
FROM generate_series(1, 20) i;
ALTER SYSTEM SET digitaltwin.poll_interval = '1h';
ALTER SYSTEM SET digitaltwin.model_timeout = '1h';
SELECT pg_reload_conf();
SELECT digitaltwin.wait_idle('60s');
-- (the calls above ran with model_timeout = 2s: their alarms ring within 3 s)
SELECT pg_sleep(3.5);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('ctx_fanout', 'f', '{}');
DO $$
DECLARE
    deadline timestamptz := clock_timestamp() + interval '30 s';
BEGIN
    WHILE (SELECT count(*) FROM digitaltwin.twins
           WHERE model = 'ctx_relay' AND twin_id LIKE 'w%') < 20 LOOP
        IF clock_timestamp() > deadline THEN
            RAISE EXCEPTION 'the messages were not processed within 30 s';
        END IF;
        PERFORM pg_sleep(0.01);
    END LOOP;
    RAISE NOTICE 'all 20 messages processed';
END $$;
ALTER SYSTEM RESET digitaltwin.poll_interval;
ALTER SYSTEM RESET digitaltwin.model_timeout;
SELECT pg_reload_conf();
SELECT digitaltwin.drop_model('ctx_fanout', force => true);
DROP FUNCTION ctx_fanout(text, jsonb, jsonb);
SELECT digitaltwin.drop_model('ctx_sender', force => true);
SELECT digitaltwin.drop_model('ctx_noinsert', force => true);
DROP TABLE ctx_sent;
DROP FUNCTION ctx_sender(text, jsonb, jsonb);
REVOKE ALL ON SCHEMA digitaltwin FROM dt_ctx_noinsert;
REVOKE ALL ON FUNCTION digitaltwin.create_model(text, regprocedure, regprocedure),
                       digitaltwin.send(text, text, jsonb, timestamptz) FROM dt_ctx_noinsert;
DROP ROLE dt_ctx_noinsert;

SELECT digitaltwin.drop_model('ctx_watch', force => true);
SELECT digitaltwin.drop_model('ctx_relay', force => true);
DROP TABLE ctx_seen;
DROP FUNCTION ctx_watch(text, jsonb, jsonb), ctx_relay(text, jsonb, jsonb);
DROP ROLE dt_ctx_writer;
