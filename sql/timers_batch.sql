--
-- A fire and events of its twin in the same
-- batch.  The events were queued before the timer's due time, so they come
-- first: the twin ends (its timers with it) and is created again; the fire
-- is dropped, and nothing of the old twin's timer survives.
--
CREATE TABLE rb_seen (twin_id text, kind text, timer text);
GRANT INSERT ON rb_seen TO PUBLIC;
CREATE FUNCTION rb_model(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rb_seen VALUES (twin_id, (digitaltwin.current_event()).kind,
                                (digitaltwin.current_event()).timer);
    IF event ? 'arm' THEN
        PERFORM digitaltwin.set_timer(event->>'arm', (event->>'after')::interval);
    END IF;
    IF event ? 'sleep' THEN
        PERFORM pg_sleep((event->>'sleep')::float8);
    END IF;
    IF event ? 'end' THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('rb', 'rb_model(text,jsonb,jsonb)');
SELECT t AS slow FROM generate_series(1, 100) g, LATERAL (SELECT 's' || g AS t) x
WHERE digitaltwin.partition_of(t, 2) = digitaltwin.partition_of('a', 2) LIMIT 1 \gset

SELECT digitaltwin.send('rb', 'a', '{"arm": "x", "after": "2s"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('20s');
-- hold the worker past the due time
SELECT digitaltwin.send('rb', :'slow', '{"sleep": 4}') > 0 AS sent;
SELECT wait_for($$(SELECT count(*) = 1 FROM pg_stat_activity
                      WHERE backend_type = 'digitaltwin worker' AND wait_event = 'PgSleep')$$);
-- queued before the due time, consumed with the fire
BEGIN;
SELECT now() < (SELECT due_at FROM digitaltwin.timers WHERE twin_id = 'a') AS before_due;
SELECT digitaltwin.send('rb', 'a', '{"end": true}') > 0 AS sent;
SELECT digitaltwin.send('rb', 'a', '{}') > 0 AS sent;
COMMIT;
SELECT wait_for($$(SELECT count(*) = 0 FROM digitaltwin.events)$$);
SELECT pg_sleep(0.5);
SELECT digitaltwin.wait_idle('20s');
-- expected: no fire; 'a' was created again with one event; no timer left
SELECT count(*) AS fires FROM rb_seen WHERE kind = 'timer';
SELECT event_count FROM digitaltwin.twins WHERE model = 'rb' AND twin_id = 'a';
SELECT count(*) AS timers FROM digitaltwin.timers;

-- the twin re-arms in the same batch as its fire: the earlier event wins
SELECT digitaltwin.send('rb', 'b', '{"arm": "y", "after": "2s"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('20s');
SELECT digitaltwin.send('rb', :'slow', '{"sleep": 4}') > 0 AS sent;
SELECT wait_for($$(SELECT count(*) = 1 FROM pg_stat_activity
                      WHERE backend_type = 'digitaltwin worker' AND wait_event = 'PgSleep')$$);
SELECT digitaltwin.send('rb', 'b', '{"arm": "y", "after": "1 hour"}') > 0 AS sent;
SELECT wait_for($$(SELECT count(*) = 0 FROM digitaltwin.events)$$);
SELECT pg_sleep(0.5);
SELECT digitaltwin.wait_idle('20s');
SELECT count(*) AS fires_of_b FROM rb_seen WHERE kind = 'timer' AND twin_id = 'b';
SELECT name, due_at > now() + interval '50 minutes' AS re_armed FROM digitaltwin.timers;
SELECT digitaltwin.drop_model('rb', force => true);
DROP TABLE rb_seen;
DROP FUNCTION rb_model(text, jsonb, jsonb);
