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
SELECT digitaltwin.drop_model('fragile');
COMMIT;
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, error, sqlstate FROM digitaltwin.dead_letters WHERE twin_id = 'late';
SELECT count(*) FROM digitaltwin.twins WHERE model = 'fragile';

-- the workers carried on: nothing left in the queue, no worker error
SELECT queue_depth, last_error FROM digitaltwin.stats WHERE worker IS NULL;
