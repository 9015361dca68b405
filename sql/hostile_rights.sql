--
-- Per-model rights, as an attacker (see sql/model_rights.sql for the rules)
--
CREATE ROLE dt_hr_reader;       -- 'read' on hr_a only
CREATE ROLE dt_hr_author;       -- a model author
GRANT EXECUTE ON FUNCTION digitaltwin.create_model(text, regprocedure, regprocedure) TO dt_hr_author;
GRANT USAGE ON SCHEMA digitaltwin TO dt_hr_author;
GRANT CREATE ON SCHEMA public TO dt_hr_reader, dt_hr_author;

CREATE FUNCTION hr_model(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'bad' THEN
        RAISE EXCEPTION 'refused: %', event->>'bad';
    END IF;
    PERFORM digitaltwin.alert('info', 'seen ' || (event->>'secret'));
    RETURN jsonb_build_object('secret', event->'secret');
END $$;
SELECT digitaltwin.create_model('hr_a', 'hr_model(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('hr_b', 'hr_model(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('hr_a', 'a1', '{"secret": "a"}'),
    ('hr_b', 'b1', '{"secret": "b-alert-secret"}'),
    ('hr_b', 'b2', '{"bad": "b-dead-letter-secret"}');
SELECT digitaltwin.wait_idle('30s');
SELECT digitaltwin.grant_model('hr_a', 'dt_hr_reader', 'read');

-- model_stats is a security barrier: a cheap function of the caller's,
-- even one the planner could push into the counters' aggregate, sees only
-- the rows of the models the caller may read
SET ROLE dt_hr_reader;
CREATE FUNCTION public.hr_leak(text, bigint) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT COST 0.0000001 AS $$
BEGIN
    RAISE NOTICE 'seen: % %', $1, $2;
    RETURN true;
END $$;
SELECT model FROM digitaltwin.model_stats WHERE public.hr_leak(last_error, events_processed);
SELECT model FROM digitaltwin.model_stats WHERE public.hr_leak(coalesce(last_error, '-'), events_processed);
-- _model_live_stats(), granted with 'read', shows only the models it may read
SELECT DISTINCT m.name FROM digitaltwin._model_live_stats() l
JOIN digitaltwin.models m ON m.id = l.model_id ORDER BY 1;
RESET ROLE;
DROP FUNCTION public.hr_leak(text, bigint);

-- a model created under the name of a dropped one is another model: its
-- owner sees neither the alerts nor the dead letters the dropped one left
SELECT model, payload FROM digitaltwin.dead_letters WHERE model = 'hr_b';
SELECT digitaltwin.drop_model('hr_b', force => true);
SET ROLE dt_hr_author;
CREATE FUNCTION public.hr_mine(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'bad' THEN
        RAISE EXCEPTION 'mine refused: %', event->>'bad';
    END IF;
    PERFORM digitaltwin.alert('info', 'mine ' || twin_id);
    RETURN event;
END $$;
SELECT digitaltwin.create_model('hr_b', 'public.hr_mine(text,jsonb,jsonb)');
SELECT digitaltwin.grant_model('hr_b', 'dt_hr_author', 'admin');
SELECT model, payload FROM digitaltwin.dead_letters;
SELECT model, message FROM digitaltwin.alerts;
SELECT digitaltwin.retry_dead_letters('hr_b');
-- ... but what the new model raises, it sees
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('hr_b', 'n1', '{}'), ('hr_b', 'n2', '{"bad": "mine"}');
SELECT digitaltwin.wait_idle('30s');
SELECT model, payload FROM digitaltwin.dead_letters;
SELECT model, message FROM digitaltwin.alerts;
RESET ROLE;
SELECT count(*) AS all_dead_letters FROM digitaltwin.dead_letters WHERE model = 'hr_b';

SELECT digitaltwin.drop_model('hr_b', force => true);
SELECT digitaltwin.drop_model('hr_a', force => true);
DELETE FROM digitaltwin.dead_letters WHERE model LIKE 'hr\_%';
DELETE FROM digitaltwin.alerts WHERE model LIKE 'hr\_%';
DROP FUNCTION hr_model(text, jsonb, jsonb);
DROP OWNED BY dt_hr_reader, dt_hr_author;
DROP ROLE dt_hr_reader, dt_hr_author;
