--
-- A recurring timer whose period would overflow the range of timestamps:
-- refused when it is armed (the arming event is dead-lettered), never an
-- error after the model (which would fail the batch for every twin of the
-- partition, at every retry).  The other twins go on.
--
CREATE TABLE rv_seen (twin_id text, kind text, at timestamptz DEFAULT clock_timestamp());
GRANT INSERT ON rv_seen TO PUBLIC;
CREATE FUNCTION rv_model(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'arm' THEN
        PERFORM digitaltwin.set_timer(event->>'arm', (event->>'after')::interval,
                                      every => (event->>'every')::interval);
    END IF;
    INSERT INTO rv_seen (twin_id, kind) VALUES (twin_id, (digitaltwin.current_event()).kind);
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('rv', 'rv_model(text,jsonb,jsonb)');

-- a twin of the same partition as 'a' (2 workers)
SELECT t AS other FROM generate_series(1, 100) g, LATERAL (SELECT 'o' || g AS t) x
WHERE digitaltwin.partition_of(t, 2) = digitaltwin.partition_of('a', 2) LIMIT 1 \gset

-- a period the timestamp range cannot hold (positive, so accepted)
SELECT digitaltwin.send('rv', 'a', '{"arm": "huge", "after": "0.2s", "every": "300000 years"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('20s');
-- the fire is due now; then an ordinary event of the same partition
SELECT pg_sleep(0.5);
SELECT digitaltwin.send('rv', :'other', '{}') > 0 AS sent;
-- expected: the partition goes on
SELECT digitaltwin.wait_idle('60s') AS idle;
SELECT count(*) AS other_processed FROM rv_seen WHERE twin_id = :'other';
-- (the fix may refuse the period when armed, or dead-letter the fire)
SELECT count(*) BETWEEN 0 AND 1 AS at_most_one_dead_letter FROM digitaltwin.dead_letters WHERE model = 'rv';
SELECT count(*) AS workers_in_error FROM digitaltwin.stats WHERE last_error <> '';
SELECT count(*) AS events_stuck FROM digitaltwin.events;
-- clean up: dropping the model frees the partition
SELECT digitaltwin.drop_model('rv', force => true);
SELECT digitaltwin.wait_idle('20s');
DELETE FROM digitaltwin.dead_letters;
DROP TABLE rv_seen;
DROP FUNCTION rv_model(text, jsonb, jsonb);
