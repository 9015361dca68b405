--
-- What the contract bounds, through timers:
-- 1. A timer's fire is as deep in a chain of messages as the event that
--    armed it: a model that answers a message with set_timer(.., '0') and
--    the fire with send() is cut at digitaltwin.max_message_depth, with a
--    dead letter, like a chain of messages alone.
-- 2. A model's own EXCEPTION block that rolls back takes back set_timer(),
--    send_to_source() (and alert()) with it, as it takes back a send() or
--    an INSERT made in that block.
--
CREATE TABLE rc_seen (twin_id text, kind text, hop int);
GRANT INSERT ON rc_seen TO PUBLIC;
-- event/timer -> send a message to itself; message -> arm a timer due now
CREATE FUNCTION rc_chain(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    hop int := coalesce((state->>'hop')::int, 0) + 1;
    k text := (digitaltwin.current_event()).kind;
BEGIN
    INSERT INTO rc_seen VALUES (twin_id, k, hop);
    IF hop < 60 THEN
        IF k = 'message' THEN
            PERFORM digitaltwin.set_timer('next', '0');
        ELSE
            PERFORM digitaltwin.send('rc_chain', twin_id, '{}');
        END IF;
    END IF;
    RETURN jsonb_build_object('hop', hop);
END $$;
SELECT digitaltwin.create_model('rc_chain', 'rc_chain(text,jsonb,jsonb)');
SHOW digitaltwin.max_message_depth;
SELECT digitaltwin.send('rc_chain', 'c', '{}') > 0 AS sent;
-- wait_idle() may return while the chain waits in a timer (pending timers
-- are not waited for); wait for the chain to end either way
SELECT digitaltwin.wait_idle('30s') AS idle;
SELECT wait_for($$(SELECT max(hop) = 60 FROM rc_seen)
                   OR (SELECT count(*) > 0 FROM digitaltwin.dead_letters WHERE model = 'rc_chain')$$)
       AS chain_ended;
-- expected (contract): cut at max_message_depth, with a dead letter
SELECT max(hop) <= 2 * 16 + 1 AS chain_cut FROM rc_seen;
SELECT count(*) > 0 AS dead_lettered FROM digitaltwin.dead_letters WHERE model = 'rc_chain';
SELECT digitaltwin.drop_model('rc_chain', force => true);

-- 2. rolled back by the model, kept by the extension
CREATE TABLE rc_side (twin_id text);
GRANT INSERT ON rc_side TO PUBLIC;
CREATE FUNCTION rc_try(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM digitaltwin.set_timer('tried', '1 hour');
        PERFORM digitaltwin.send_to_source('{"cmd": "tried"}');
        PERFORM digitaltwin.send('rc_try', 'other', '{}');
        INSERT INTO rc_side VALUES (twin_id);
        RAISE EXCEPTION 'changed my mind';
    EXCEPTION WHEN OTHERS THEN
        NULL;   -- everything in the block is rolled back
    END;
    RETURN '{}';
END $$;
SELECT digitaltwin.create_model('rc_try', 'rc_try(text,jsonb,jsonb)');
SELECT digitaltwin.send('rc_try', 't', '{}') > 0 AS sent;
SELECT digitaltwin.wait_idle('30s');
-- expected: all 0
SELECT (SELECT count(*) FROM rc_side) AS rows_inserted,
       (SELECT count(*) FROM digitaltwin.twins WHERE model = 'rc_try' AND twin_id = 'other') AS messages,
       (SELECT count(*) FROM digitaltwin.timers WHERE model = 'rc_try') AS timers_armed,
       (SELECT count(*) FROM digitaltwin.outbox WHERE model = 'rc_try') AS commands_sent;
SELECT digitaltwin.drop_model('rc_try', force => true);
DELETE FROM digitaltwin.outbox;
DELETE FROM digitaltwin.dead_letters;
DROP TABLE rc_seen, rc_side;
DROP FUNCTION rc_chain(text, jsonb, jsonb);
DROP FUNCTION rc_try(text, jsonb, jsonb);
