--
-- Durable timers (version 1.6): armed, re-armed and cancelled with the
-- event that did it; fired once per due time through the batch, as an
-- event of kind 'timer'; ended with the twin and with the model.
--
CREATE TABLE tm_seen (twin_id text, info digitaltwin.event_info, event jsonb,
                      cancelled boolean);
GRANT INSERT ON tm_seen TO PUBLIC;

-- {"arm": name, "after": interval, "every": interval, "payload": {...}},
-- {"cancel": name}, {"end": true}, {"fail": true} (after arming)
CREATE FUNCTION tm_model(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    c boolean;
BEGIN
    IF event ? 'arm' THEN
        IF event ? 'payload' THEN
            PERFORM digitaltwin.set_timer(event->>'arm', (event->>'after')::interval,
                                          event->'payload', (event->>'every')::interval);
        ELSE
            PERFORM digitaltwin.set_timer(event->>'arm', (event->>'after')::interval,
                                          every => (event->>'every')::interval);
        END IF;
    END IF;
    IF event ? 'cancel' THEN
        c := digitaltwin.cancel_timer(event->>'cancel');
    END IF;
    INSERT INTO tm_seen VALUES (twin_id, digitaltwin.current_event(), event, c);
    IF event ? 'fail' THEN
        RAISE EXCEPTION 'failing on purpose';
    END IF;
    IF event ? 'end' THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('tm', 'tm_model(text,jsonb,jsonb)');

-- outside a model
SELECT digitaltwin.set_timer('x', '1s');
SELECT digitaltwin.cancel_timer('x');

-- a timer fires once, with its payload, as kind 'timer'
SELECT digitaltwin.send('tm', 'a', '{"arm": "soon", "after": "3s", "payload": {"p": 1}}') > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
SELECT model, twin_id, name, due_at > now() - interval '1s' AS due_soon, every, payload
FROM digitaltwin.timers;
SELECT wait_for($$(SELECT count(*) = 1 FROM tm_seen WHERE (info).kind = 'timer')$$);
SELECT twin_id, (info).kind, (info).timer, (info).model, event,
       (info).event_time = (info).enqueued_at AS time_is_due_time,
       (info).id > 0 AS has_id, (info).sender_model
FROM tm_seen WHERE (info).kind = 'timer';
SELECT count(*) AS pending FROM digitaltwin.timers;
SELECT event_count FROM digitaltwin.twins WHERE model = 'tm' AND twin_id = 'a';

-- re-arming replaces; cancel says whether there was one
SELECT digitaltwin.send('tm', 'b', '{"arm": "later", "after": "1 hour"}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'b', '{"arm": "later", "after": "2 hours"}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'b', '{"arm": "other", "after": "1 hour"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
SELECT twin_id, name, due_at > now() + interval '90 minutes' AS re_armed, payload
FROM digitaltwin.timers ORDER BY name;
SELECT digitaltwin.send('tm', 'b', '{"cancel": "later"}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'b', '{"cancel": "later"}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'b', '{"cancel": "never"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
SELECT event->>'cancel' AS name, cancelled FROM tm_seen
WHERE twin_id = 'b' AND event ? 'cancel' ORDER BY (info).id;
SELECT twin_id, name FROM digitaltwin.timers ORDER BY name;

-- an event that fails arms nothing; bad arguments fail the event
SELECT digitaltwin.send('tm', 'c', '{"arm": "x", "after": "1 hour", "fail": true}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'c', '{"arm": "x", "after": "-1 second"}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'c', '{"arm": "x", "after": "1 second", "every": "0"}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'c', jsonb_build_object('arm', repeat('n', 64), 'after', '1s')) > 0 AS sent;
SELECT digitaltwin.send('tm', 'c', '{"arm": "x", "after": "300000 years"}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'c', '{"arm": "x", "after": "1 hour", "every": "1000000 years"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
SELECT twin_id, sqlstate, error FROM digitaltwin.dead_letters WHERE model = 'tm' ORDER BY event_id;
SELECT count(*) AS timers_of_c FROM digitaltwin.timers WHERE twin_id = 'c';

-- the twin's end ends its timers, committed ones and those armed in the
-- same batch; a new twin of that id starts without them
BEGIN;
SELECT digitaltwin.send('tm', 'b', '{"arm": "third", "after": "1 hour"}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'b', '{"end": true}') > 0 AS sent;
SELECT digitaltwin.send('tm', 'b', '{"cancel": "other"}') > 0 AS sent;
COMMIT;
SELECT digitaltwin.wait_idle('60s');
SELECT count(*) AS timers_of_b FROM digitaltwin.timers WHERE twin_id = 'b';
SELECT cancelled FROM tm_seen WHERE twin_id = 'b' AND event->>'cancel' = 'other';

-- a recurring timer fires until cancelled; a timer that fails is
-- dead-lettered and consumed all the same
SELECT digitaltwin.send('tm', 'd', '{"arm": "tick", "after": "0.1s", "every": "0.1s"}') > 0 AS sent;
SELECT wait_for($$(SELECT count(*) >= 3 FROM tm_seen WHERE twin_id = 'd' AND (info).timer = 'tick')$$);
SELECT every FROM digitaltwin.timers WHERE twin_id = 'd';
SELECT digitaltwin.send('tm', 'd', '{"cancel": "tick"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
CREATE TEMP TABLE tm_ticks AS
SELECT count(*) AS n FROM tm_seen WHERE twin_id = 'd' AND (info).timer = 'tick';
SELECT digitaltwin.send('tm', 'd', '{"arm": "sentinel", "after": "0.3s", "payload": {"fail": true}}') > 0 AS sent;
SELECT wait_for($$(SELECT count(*) = 1 FROM digitaltwin.dead_letters WHERE twin_id = 'd')$$);
SELECT (SELECT count(*) FROM tm_seen WHERE twin_id = 'd' AND (info).timer = 'tick') = n
       AS no_tick_after_cancel FROM tm_ticks;
SELECT twin_id, payload, sqlstate, error FROM digitaltwin.dead_letters WHERE twin_id = 'd';
SELECT count(*) AS timers_of_d FROM digitaltwin.timers WHERE twin_id = 'd';

-- dropping the model drops its timers
SELECT digitaltwin.send('tm', 'e', '{"arm": "long", "after": "1 day"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
SELECT count(*) AS before_drop FROM digitaltwin.timers;
SELECT digitaltwin.drop_model('tm', force => true);
SELECT count(*) AS after_drop FROM digitaltwin.timers;

-- who may read the timers: readers, not writers; nobody writes them
CREATE ROLE tm_reader IN ROLE digitaltwin_reader;
CREATE ROLE tm_writer IN ROLE digitaltwin_writer;
SET ROLE tm_reader;
SELECT count(*) FROM digitaltwin.timers;
SELECT count(*) FROM digitaltwin.timer_state;
SET ROLE tm_writer;
SELECT count(*) FROM digitaltwin.timers;
RESET ROLE;
DROP ROLE tm_reader, tm_writer;
DELETE FROM digitaltwin.dead_letters;
DROP TABLE tm_seen;
DROP FUNCTION tm_model(text, jsonb, jsonb);
