--
-- Rehearsal: a candidate version over the recorded events, in a sandbox,
-- and what it would have done differently
--
CREATE TABLE side_effects (note text);
CREATE FUNCTION thr_v1(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'v')::int > 100 THEN
        PERFORM digitaltwin.alert('high', 'v1: ' || (event->>'v'));
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'max', greatest(coalesce((state->>'max')::int, 0), (event->>'v')::int));
END $$;
-- the candidate: one threshold changed (90 instead of 100), and it writes
-- to a table and to the data source, which a rehearsal keeps to itself
CREATE FUNCTION thr_v2(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'v')::int > 90 THEN
        PERFORM digitaltwin.alert('high', 'v2: ' || (event->>'v'));
        PERFORM digitaltwin.send_to_source(jsonb_build_object('slow_down', twin_id));
    END IF;
    IF (event->>'v')::int = 13 THEN
        RAISE EXCEPTION 'v2 fails on 13';
    END IF;
    INSERT INTO side_effects VALUES (twin_id);
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'max', greatest(coalesce((state->>'max')::int, 0), (event->>'v')::int));
END $$;
SELECT digitaltwin.create_model('thr', 'thr_v1(text,jsonb,jsonb)');
SELECT digitaltwin.set_event_log('thr', '1 day');
SELECT digitaltwin.set_history('thr', '1 day');

-- recorded events, with their device times
CREATE TABLE sent_thr (seq int, twin_id text, v int, at timestamptz);
INSERT INTO sent_thr
SELECT i, 'm' || (i % 4), (i * 37) % 120, '2026-01-01'::timestamptz + i * interval '1 minute'
FROM generate_series(1, 200) i;
INSERT INTO digitaltwin.events (model, twin_id, payload, event_time)
SELECT 'thr', twin_id, jsonb_build_object('v', v), at FROM sent_thr WHERE seq <= 100 ORDER BY seq;
SELECT digitaltwin.wait_idle('30s');
CREATE TABLE half_time AS SELECT clock_timestamp() AS at;
INSERT INTO digitaltwin.events (model, twin_id, payload, event_time)
SELECT 'thr', twin_id, jsonb_build_object('v', v), at FROM sent_thr WHERE seq > 100 ORDER BY seq;
SELECT digitaltwin.wait_idle('30s');
SELECT count(*) AS live_alerts FROM digitaltwin.alerts WHERE model = 'thr';

-- errors
SELECT digitaltwin.rehearse('nonesuch', 'thr_v2(text,jsonb,jsonb)');
SELECT digitaltwin.rehearse('thr', NULL);
CREATE FUNCTION thr_bad(twin_id text, state int, event jsonb) RETURNS text LANGUAGE sql AS 'SELECT NULL';
SELECT digitaltwin.rehearse('thr', 'thr_bad(text,int,jsonb)');

-- the rehearsal
CREATE TABLE r1 AS SELECT digitaltwin.rehearse('thr', 'thr_v2(text,jsonb,jsonb)') AS id;
SELECT model, candidate_process, from_history, events, timers_fired, failed
FROM digitaltwin.rehearsals WHERE id = (SELECT id FROM r1);
-- nothing live changed: no new alert, no outbox row, nothing written by the candidate
SELECT count(*) AS live_alerts FROM digitaltwin.alerts WHERE model = 'thr';
SELECT count(*) AS outbox FROM digitaltwin.outbox;
SELECT count(*) AS side_effects FROM side_effects;
-- the candidate's own alerts, messages and failures are the rehearsal's
SELECT count(*) AS alerts FROM digitaltwin.rehearsal_alerts WHERE rehearsal = (SELECT id FROM r1);
SELECT count(*) AS messages FROM digitaltwin.rehearsal_outbox WHERE rehearsal = (SELECT id FROM r1);
SELECT twin_id, error, sqlstate FROM digitaltwin.rehearsal_dead_letters WHERE rehearsal = (SELECT id FROM r1);

-- the diff lists exactly the alerts of the changed threshold: the events
-- with 90 < v <= 100 (an independent query over what was sent)
SELECT kind, count(*) FROM digitaltwin.rehearsal_diff((SELECT id FROM r1)) GROUP BY kind ORDER BY kind;
SELECT count(*) AS unexplained FROM (
    (SELECT twin_id, (regexp_match(message, '\d+$'))[1]::int AS v
     FROM digitaltwin.rehearsal_diff((SELECT id FROM r1)) WHERE kind = 'candidate_only_alert'
     EXCEPT ALL
     SELECT twin_id, v FROM sent_thr WHERE v > 90 AND v <= 100 AND v <> 13)
    UNION ALL
    (SELECT twin_id, v FROM sent_thr WHERE v > 90 AND v <= 100 AND v <> 13
     EXCEPT ALL
     SELECT twin_id, (regexp_match(message, '\d+$'))[1]::int
     FROM digitaltwin.rehearsal_diff((SELECT id FROM r1)) WHERE kind = 'candidate_only_alert')) d;
-- the twins whose final states differ: those the failing event (v = 13) skipped
SELECT d.twin_id, d.live_state->'n' AS live_n, d.candidate_state->'n' AS candidate_n
FROM digitaltwin.rehearsal_diff((SELECT id FROM r1)) d WHERE kind = 'state' ORDER BY 1;
SELECT twin_id, count(*) FROM sent_thr WHERE v = 13 GROUP BY 1 ORDER BY 1;

-- the same version rehearsed finds no difference
SELECT count(*) AS differences
FROM digitaltwin.rehearsal_diff(digitaltwin.rehearse('thr', 'thr_v1(text,jsonb,jsonb)'));

-- from the history: the sandbox starts with the twins as of 'since' and
-- takes only the events after it; the result is the live one
SELECT count(*) AS differences
FROM digitaltwin.rehearsal_diff(digitaltwin.rehearse('thr', 'thr_v1(text,jsonb,jsonb)',
                                since => (SELECT at FROM half_time)));
SELECT from_history, events FROM digitaltwin.rehearsals ORDER BY id DESC LIMIT 1;

-- timers fall due in event time: a quiet twin (no reading for 30 minutes
-- of device time) is found at once, not half an hour later
CREATE FUNCTION quiet(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (digitaltwin.current_event()).kind = 'timer' THEN
        PERFORM digitaltwin.alert('quiet', 'no reading since ' || (state->>'last'));
        RETURN state;
    END IF;
    PERFORM digitaltwin.set_timer('watch', '30 minutes');
    RETURN jsonb_build_object('last', (digitaltwin.current_event()).event_time);
END $$;
-- the same, failing on a reading the live one takes: the failed event must
-- arm nothing in the rehearsal either
CREATE FUNCTION quiet_c(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (digitaltwin.current_event()).kind = 'timer' THEN
        PERFORM digitaltwin.alert('quiet', 'no reading since ' || (state->>'last'));
        RETURN state;
    END IF;
    PERFORM digitaltwin.set_timer('watch', '30 minutes');
    IF event ? 'flaky' THEN
        RAISE EXCEPTION 'quiet_c fails';
    END IF;
    RETURN jsonb_build_object('last', (digitaltwin.current_event()).event_time);
END $$;
SELECT digitaltwin.create_model('quiet', 'quiet(text,jsonb,jsonb)');
SELECT digitaltwin.set_event_log('quiet', '1 day');
INSERT INTO digitaltwin.events (model, twin_id, payload, event_time) VALUES
    ('quiet', 'q1', '{}', '2026-01-01 00:00'), ('quiet', 'q1', '{}', '2026-01-01 00:10'),
    ('quiet', 'q1', '{}', '2026-01-01 01:30'), ('quiet', 'q1', '{}', '2026-01-01 01:40'),
    ('quiet', 'q2', '{}', '2026-01-01 00:05'), ('quiet', 'q3', '{"flaky": true}', '2026-01-01 00:06');
SELECT digitaltwin.wait_idle('30s');
CREATE TABLE r2 AS SELECT digitaltwin.rehearse('quiet', 'quiet_c(text,jsonb,jsonb)') AS id;
SELECT events, timers_fired FROM digitaltwin.rehearsals WHERE id = (SELECT id FROM r2);
SELECT twin_id, message FROM digitaltwin.rehearsal_alerts WHERE rehearsal = (SELECT id FROM r2) ORDER BY 1, 2;
-- a failed event armed nothing, in the rehearsal as live
SELECT twin_id, error FROM digitaltwin.rehearsal_dead_letters WHERE rehearsal = (SELECT id FROM r2);
-- live, the timers are 30 minutes of wall time away: nothing yet (and q3's
-- is armed)
SELECT count(*) AS live_quiet FROM digitaltwin.alerts WHERE model = 'quiet';

-- only the model's owner rehearses (the candidate runs as the owner)
CREATE ROLE dt_rehearser IN ROLE digitaltwin_admin;
SET ROLE dt_rehearser;
SELECT digitaltwin.rehearse('thr', 'thr_v2(text,jsonb,jsonb)');
RESET ROLE;
DROP ROLE dt_rehearser;

-- a rehearsal goes with its model, or on its own
DELETE FROM digitaltwin.rehearsals WHERE id = (SELECT id FROM r2);
SELECT count(*) FROM digitaltwin.rehearsal_alerts WHERE rehearsal = (SELECT id FROM r2);
SELECT digitaltwin.drop_model('thr', force => true);
SELECT digitaltwin.drop_model('quiet', force => true);
SELECT count(*) AS rehearsals_left FROM digitaltwin.rehearsals;
DELETE FROM digitaltwin.alerts WHERE model IN ('thr', 'quiet');
DROP TABLE side_effects, sent_thr, half_time, r1, r2;
DROP FUNCTION thr_v1, thr_v2, thr_bad, quiet, quiet_c;
