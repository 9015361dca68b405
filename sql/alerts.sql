--
-- Alerts raised by models
--
CREATE FUNCTION watch(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v int := (event->>'v')::int;
BEGIN
    IF v > 100 THEN
        PERFORM digitaltwin.alert('critical', format('value %s over 100', v),
                                  jsonb_build_object('v', v));
    ELSIF v > 50 THEN
        PERFORM digitaltwin.alert('warning', 'value over 50');
    END IF;
    IF event ? 'fail_after_alert' THEN
        PERFORM digitaltwin.alert('critical', 'never seen');
        RAISE EXCEPTION 'model failed after raising an alert';
    END IF;
    RETURN jsonb_build_object('last', v);
END $$;
SELECT digitaltwin.create_model('watch', 'watch(text,jsonb,jsonb)');

INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('watch', 'w1', '{"v": 10}'),
    ('watch', 'w1', '{"v": 60}'),
    ('watch', 'w2', '{"v": 200}'),
    ('watch', 'w2', '{"v": 300, "fail_after_alert": true}'),
    ('watch', 'w2', '{"v": 70}');
SELECT digitaltwin.wait_idle('30s');

-- one alert per qualifying event, tied to its event; the failed event's
-- alert vanished with it
SELECT model, twin_id, severity, message, details
FROM digitaltwin.alerts WHERE model = 'watch' ORDER BY twin_id, event_id;
SELECT count(*) AS alerts, count(DISTINCT event_id) AS events
FROM digitaltwin.alerts WHERE model = 'watch';
SELECT twin_id, error FROM digitaltwin.dead_letters WHERE model = 'watch';
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'watch' ORDER BY 1;
-- within a twin, alerts are recorded in the order of their events
SELECT bool_and(ok) FROM (
    SELECT event_id > lag(event_id) OVER (PARTITION BY twin_id ORDER BY id) AS ok
    FROM digitaltwin.alerts WHERE model = 'watch') s;

-- alert() outside a model
SELECT digitaltwin.alert('warning', 'from a plain session');
\set VERBOSITY sqlstate
SELECT digitaltwin.alert('warning', 'from a plain session');
\set VERBOSITY default

-- bad arguments inside a model dead-letter the event
CREATE FUNCTION bad_alert(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.alert(event->>'severity', event->>'message');
    RETURN '{}';
END $$;
SELECT digitaltwin.create_model('bad_alert', 'bad_alert(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('bad_alert', 'b', '{"message": "no severity"}'),
    ('bad_alert', 'b', '{"severity": "", "message": "empty severity"}'),
    ('bad_alert', 'b', '{"severity": "info"}'),
    ('bad_alert', 'b', '{"severity": "info", "message": "fine"}');
SELECT digitaltwin.wait_idle('30s');
SELECT payload, error, sqlstate FROM digitaltwin.dead_letters
WHERE model = 'bad_alert' ORDER BY event_id;
SELECT severity, message FROM digitaltwin.alerts WHERE model = 'bad_alert';
