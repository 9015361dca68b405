--
-- Dead letters: a failing event is set aside, the twin is as if it never
-- came, and the worker goes on
--
CREATE FUNCTION fragile(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'raise' THEN
        RAISE EXCEPTION 'bad reading %', event->>'v' USING ERRCODE = 'data_exception';
    ELSIF event ? 'divide' THEN
        RETURN jsonb_build_object('x', 1 / 0);
    ELSIF event ? 'array' THEN
        RETURN '[1, 2]';
    ELSIF event ? 'sleep' THEN
        PERFORM pg_sleep(10);
    END IF;
    RETURN jsonb_build_object('sum', coalesce((state->>'sum')::int, 0) + (event->>'v')::int,
                              'n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('fragile', 'fragile(text,jsonb,jsonb)');

INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('fragile', 'f1', '{"v": 1}'),
    ('fragile', 'f1', '{"v": 2, "raise": true}'),
    ('fragile', 'f1', '{"v": 4}'),
    ('fragile', 'f1', '{"v": 8, "divide": true}'),
    ('fragile', 'f1', '{"v": 16, "array": true}'),
    ('fragile', 'f1', '{"v": 32}'),
    ('fragile', 'f2', '{"v": 64, "raise": true}'),
    ('fragile', 'f3', '{"v": 128}');
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, payload, error, sqlstate FROM digitaltwin.dead_letters
WHERE model = 'fragile' ORDER BY event_id;
-- f1 = 1 + 4 + 32; f2 never got a state
SELECT twin_id, state, event_count FROM digitaltwin.twins
WHERE model = 'fragile' ORDER BY twin_id;
-- a dead letter keeps the event's id and enqueue time
SELECT count(*) FROM digitaltwin.dead_letters
WHERE model = 'fragile' AND event_id > 0 AND enqueued_at <= failed_at;

-- since 1.7 a dead letter keeps the whole error (detail, hint, where in
-- the model), the event's time and its original id; the events can be
-- queued again, in their original order, and the model can tell
CREATE TABLE picky_gate (ok boolean);
INSERT INTO picky_gate VALUES (false);
CREATE FUNCTION picky(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    ev digitaltwin.event_info := digitaltwin.current_event();
BEGIN
    IF (event->>'v')::int < 0 AND NOT (SELECT ok FROM public.picky_gate) THEN
        RAISE EXCEPTION 'negative reading %', event->>'v'
            USING DETAIL = 'A reading is 0 or more.', HINT = 'Check the device.',
                  ERRCODE = 'data_exception';
    END IF;
    RETURN jsonb_build_object('seen', coalesce(state->'seen', '[]') ||
        jsonb_build_array(jsonb_build_object('v', event->'v', 'kind', ev.kind,
                                             'time', ev.event_time,
                                             'retry_of', ev.retry_of)));
END $$;
SELECT digitaltwin.create_model('picky', 'picky(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload, event_time) VALUES
    ('picky', 'p1', '{"v": 1}', '2026-01-01 00:00:01+00'),
    ('picky', 'p1', '{"v": -2}', '2026-01-01 00:00:02+00'),
    ('picky', 'p1', '{"v": -3}', '2026-01-01 00:00:03+00'),
    ('picky', 'p1', '{"v": 4}', '2026-01-01 00:00:04+00');
SELECT digitaltwin.wait_idle('30s');
SELECT payload, error, sqlstate, detail, hint, event_time, original_id,
       context LIKE '%PL/pgSQL function picky(text,jsonb,jsonb) line % at RAISE%' AS context_says_where
FROM digitaltwin.dead_letters WHERE model = 'picky' ORDER BY event_id;
CREATE TEMP TABLE picky_dead AS
SELECT event_id FROM digitaltwin.dead_letters WHERE model = 'picky';
-- dead letters that leave the table when retried (sql/views.sql counts them)
CREATE TABLE dead_letters_retried (n bigint);
-- only an admin may queue them again
SET ROLE dt_modeler;
SELECT digitaltwin.retry_dead_letters('picky');
RESET ROLE;
UPDATE picky_gate SET ok = true;
SELECT digitaltwin.retry_dead_letters('picky', ARRAY[0]);	-- none of these ids
WITH r AS (SELECT digitaltwin.retry_dead_letters('picky') AS n)
INSERT INTO dead_letters_retried SELECT n FROM r RETURNING n AS retried;
SELECT digitaltwin.wait_idle('30s');
SELECT count(*) AS still_dead FROM digitaltwin.dead_letters WHERE model = 'picky';
-- the retried events came after the others, in their original order, with
-- their own event time, seen as retries of their original ids
SELECT e->>'v' AS v, e->>'kind' AS kind, (e->>'time')::timestamptz AS event_time,
       CASE WHEN n <= 2 THEN e->'retry_of' = 'null'
            ELSE (e->>'retry_of')::bigint = (SELECT event_id FROM picky_dead
                                             ORDER BY event_id OFFSET n - 3 LIMIT 1)
       END AS retry_of_right
FROM digitaltwin.twins t, jsonb_array_elements(t.state->'seen') WITH ORDINALITY x(e, n)
WHERE t.model = 'picky' ORDER BY n;
-- a retried event that fails again keeps its original id
UPDATE picky_gate SET ok = false;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('picky', 'p2', '{"v": -5}');
SELECT digitaltwin.wait_idle('30s');
WITH r AS (SELECT digitaltwin.retry_dead_letters('picky',
                (SELECT array_agg(event_id) FROM digitaltwin.dead_letters WHERE twin_id = 'p2')) AS n)
INSERT INTO dead_letters_retried SELECT n FROM r RETURNING n AS retried;
SELECT digitaltwin.wait_idle('30s');
SELECT original_id IS NOT NULL AND original_id < event_id AS keeps_original_id
FROM digitaltwin.dead_letters WHERE twin_id = 'p2';
-- not from a model (its events are the batch's messages: send())
CREATE FUNCTION retrier(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.retry_dead_letters();
    RETURN event;
END $$;
SELECT digitaltwin.create_model('retrier', 'retrier(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('retrier', 'r', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT error, sqlstate FROM digitaltwin.dead_letters WHERE model = 'retrier';
SELECT count(*) AS picky_still_dead FROM digitaltwin.dead_letters WHERE model = 'picky';
SELECT digitaltwin.drop_model('retrier', force => true);
DROP FUNCTION retrier(text, jsonb, jsonb);
WITH r AS (SELECT count(*) AS n FROM digitaltwin.dead_letters WHERE model = 'retrier')
INSERT INTO dead_letters_retried SELECT n FROM r;
DELETE FROM digitaltwin.dead_letters WHERE model = 'retrier';
SELECT digitaltwin.drop_model('picky', force => true);
DROP FUNCTION picky(text, jsonb, jsonb);
DROP TABLE picky_gate;
-- its dead letter stays, even when another model gets the name: that
-- model's owner must not receive the dropped model's events
CREATE FUNCTION other_picky(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS 'SELECT event';
SELECT digitaltwin.create_model('picky', 'other_picky(text,jsonb,jsonb)');
SELECT digitaltwin.retry_dead_letters('picky') AS retried_into_another_model;
SELECT count(*) AS still_dead FROM digitaltwin.dead_letters WHERE model = 'picky';
SELECT digitaltwin.drop_model('picky', force => true);
DROP FUNCTION other_picky(text, jsonb, jsonb);

-- a dead letter keeps at most 8 kB of each part of an error, and says so
CREATE FUNCTION loud(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', repeat('m', 20000) USING DETAIL = repeat('d', 20000);
END $$;
SELECT digitaltwin.create_model('loud', 'loud(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('loud', 'l', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT length(error) AS error_length, right(error, 25) AS error_end,
       length(detail) AS detail_length, right(detail, 25) AS detail_end
FROM digitaltwin.dead_letters WHERE model = 'loud';
SELECT digitaltwin.drop_model('loud', force => true);
DROP FUNCTION loud(text, jsonb, jsonb);

-- a model that runs too long is stopped (digitaltwin.model_timeout = 2s
-- in this instance) and its event dead-lettered; later events go on
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('fragile', 'slow', '{"v": 1, "sleep": true}'),
    ('fragile', 'slow', '{"v": 2}');
SELECT digitaltwin.wait_idle('60s');
SELECT payload, error, sqlstate FROM digitaltwin.dead_letters
WHERE twin_id = 'slow';
SELECT state FROM digitaltwin.twins WHERE twin_id = 'slow';

-- a model runs as the role that registered it, not as the superuser
CREATE TABLE secrets (s text);
INSERT INTO secrets VALUES ('only for the superuser');
SET ROLE dt_modeler;
CREATE FUNCTION peek(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'peek' THEN
        RETURN jsonb_build_object('secret', (SELECT s FROM public.secrets));
    END IF;
    RETURN jsonb_build_object('user', current_user);
END $$;
SELECT digitaltwin.create_model('peek', 'peek(text,jsonb,jsonb)');
RESET ROLE;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('peek', 'p', '{}'), ('peek', 'p', '{"peek": true}');
SELECT digitaltwin.wait_idle('30s');
SELECT state FROM digitaltwin.twins WHERE model = 'peek';
SELECT error, sqlstate FROM digitaltwin.dead_letters WHERE model = 'peek';

-- events of a model dropped while they wait are dead-lettered, not lost
BEGIN;
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('fragile', 'late', '{"v": 1}');
SELECT digitaltwin.drop_model('fragile', force => true);
COMMIT;
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, error, sqlstate FROM digitaltwin.dead_letters WHERE twin_id = 'late';
SELECT count(*) FROM digitaltwin.twins WHERE model = 'fragile';

-- the workers carried on: nothing left in the queue, no worker error
SELECT queue_depth, last_error FROM digitaltwin.stats WHERE worker IS NULL;
