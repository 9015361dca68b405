--
-- The shared table of twins (twin_table.c): growth, deleted slots, states
-- replaced by longer or shorter ones, all checked against twin_state
--
-- A model whose state grows with 'pad', ends on 'end', and keeps its size
-- on 'same' (an overwrite in place)
CREATE FUNCTION churn(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT CASE
        WHEN (event->>'end')::bool THEN NULL
        WHEN event ? 'same' THEN jsonb_set(state, '{n}', to_jsonb((state->>'n')::int + 1))
        ELSE jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                                'pad', repeat('x', (event->>'pad')::int))
    END $$;
SELECT digitaltwin.create_model('churn', 'churn(text,jsonb,jsonb)');

-- the live table against the durable one: the same twins and counts, each
-- state the one its events made (n counts them); and the memory the
-- workers account for back to what the twins cost: the image (a jsonb
-- datum: twin_state keeps it without its 4-byte header) + the entry's
-- 27-byte header + id + two slots; other files' twins, whose states may
-- be of other types, are left out by measuring from before this file's,
-- once the workers have forgotten the twins of the model views.sql
-- dropped last: its cascade into twin_state makes them reload theirs
-- after the drop commits, and a loaded CI machine may still be at it
SELECT wait_for($$(SELECT sum(twins) FROM digitaltwin.stats WHERE worker IS NOT NULL) =
                  (SELECT count(*) FROM digitaltwin.twin_state)$$) AS dropped_forgotten;
CREATE TEMP TABLE memory_before AS
SELECT (SELECT sum(memory_bytes) FROM digitaltwin.stats WHERE worker IS NOT NULL) -
       (SELECT coalesce(sum(octet_length(state) + 4 + 27 + octet_length(twin_id) + 16), 0)
        FROM digitaltwin.twin_state) AS unexplained;
CREATE FUNCTION churn_differs() RETURNS TABLE (twins bigint, differing bigint,
                                               states_ok bool, memory_ok bool)
LANGUAGE sql AS $$
    WITH live AS (SELECT twin_id, event_count, state FROM digitaltwin.twins
                  WHERE model = 'churn'),
         durable AS (SELECT s.twin_id, s.event_count
                     FROM digitaltwin.twin_state s
                     JOIN digitaltwin.models m ON m.id = s.model_id
                     WHERE m.name = 'churn')
    SELECT (SELECT count(*) FROM live),
           (SELECT count(*) FROM ((SELECT twin_id, event_count FROM live EXCEPT ALL TABLE durable)
                                  UNION ALL
                                  (TABLE durable EXCEPT ALL SELECT twin_id, event_count FROM live)) d),
           (SELECT bool_and((state->>'n')::bigint = event_count) IS NOT FALSE FROM live),
           (SELECT sum(memory_bytes) FROM digitaltwin.stats WHERE worker IS NOT NULL) -
           (SELECT coalesce(sum(octet_length(state) + 4 + 27 + octet_length(twin_id) + 16), 0)
            FROM digitaltwin.twin_state) = (SELECT unexplained FROM memory_before)
$$;

-- 23000 twins, about 22 per stripe: nearly every stripe's slots grow from 16
-- to 64 (the g- twins are there for that, the c- ones for what follows)
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'churn', 'c-' || i, jsonb_build_object('pad', i % 7) FROM generate_series(1, 3000) i
UNION ALL
SELECT 'churn', 'g-' || i, jsonb_build_object('pad', i % 7) FROM generate_series(1, 20000) i;
SELECT digitaltwin.wait_idle('60s');
SELECT * FROM churn_differs();

-- readers while the workers write: every state read whole, with the
-- event count published with it (n counts the events too), while ten
-- events per twin replace states by longer and shorter ones
CREATE FUNCTION torn_reads(passes int) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    bad bigint := 0;
    n bigint;
BEGIN
    FOR k IN 1..passes LOOP
        SELECT count(*) INTO n FROM digitaltwin.twins
        WHERE model = 'churn' AND (state->>'n')::bigint <> event_count;
        bad := bad + n;
    END LOOP;
    RETURN bad;
END $$;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'churn', 'c-' || i, jsonb_build_object('pad', (i * j) % 40)
FROM generate_series(1, 10) j, generate_series(1, 3000) i ORDER BY j, i;
SELECT torn_reads(20) AS torn;
SELECT digitaltwin.wait_idle('60s');
SELECT torn_reads(1) AS torn, sum(event_count) AS events FROM digitaltwin.twins WHERE model = 'churn';
SELECT * FROM churn_differs();

-- rounds of churn: end a third, grow a third, keep a third's size, and
-- create new twins, so that deleted slots pile up and are reused (each
-- round commits before the next looks at the twins)
CREATE FUNCTION churn_round(r int) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO digitaltwin.events (model, twin_id, payload)
    SELECT 'churn', 'c-' || i,
           CASE (i + r) % 3 WHEN 0 THEN '{"end": true}'::jsonb
                            WHEN 1 THEN jsonb_build_object('pad', 10 + r * 20)
                            ELSE '{"same": 1}' END
    FROM generate_series(1, 3000) i
    WHERE EXISTS (SELECT 1 FROM digitaltwin.twins WHERE model = 'churn' AND twin_id = 'c-' || i);
    INSERT INTO digitaltwin.events (model, twin_id, payload)
    SELECT 'churn', 'n' || r || '-' || i, jsonb_build_object('pad', i % 5)
    FROM generate_series(1, 1000) i;
    SELECT count(*) FROM digitaltwin.events
$$;
SELECT churn_round(1) > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
SELECT * FROM churn_differs();
SELECT churn_round(2) > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
SELECT * FROM churn_differs();
-- one twin looked up by id finds the same state as the pass over all
SELECT (SELECT state FROM digitaltwin.twins WHERE model = 'churn' AND twin_id = 'n2-7') =
       (SELECT state FROM digitaltwin.twin_entries() e JOIN digitaltwin.models m ON m.id = e.model_id
        WHERE m.name = 'churn' AND e.twin_id = 'n2-7') AS same_state;
-- twins that ended are not found, by id or by a pass
SELECT count(*) AS ended_found FROM digitaltwin.twins
WHERE model = 'churn' AND twin_id IN ('c-2', 'c-4', 'c-7');
SELECT count(*) FILTER (WHERE twin_id LIKE 'c-%') AS first_left,
       count(*) FILTER (WHERE twin_id LIKE 'n%') AS new_ones,
       count(*) FILTER (WHERE twin_id LIKE 'c-%' AND substr(twin_id, 3)::int % 3 <> 0) AS ended_found,
       count(*) FILTER (WHERE state->>'pad' = repeat('x', 30) AND event_count = 13) AS grown_then_kept
FROM digitaltwin.twins WHERE model = 'churn';

-- end them all: nothing left, no memory accounted
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'churn', twin_id, '{"end": true}' FROM digitaltwin.twins WHERE model = 'churn';
SELECT digitaltwin.wait_idle('60s');
SELECT * FROM churn_differs();
SELECT (SELECT sum(twins) FROM digitaltwin.stats WHERE worker IS NOT NULL) =
       (SELECT count(*) FROM digitaltwin.twin_state) AS twins_ok;
-- and the deleted slots are reused by the next twins
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'churn', 'c-' || i, '{"pad": 1}' FROM generate_series(1, 3000) i;
SELECT digitaltwin.wait_idle('60s');
SELECT * FROM churn_differs();
-- a durable row written by hand with an id longer than any event's
-- (63 bytes at most): the worker reloading it stops with a clear error
-- instead of overrunning its buffers, and goes on once the row is repaired
CREATE FUNCTION worker_error_like(pattern text) RETURNS bool
LANGUAGE plpgsql AS $$
BEGIN
    FOR k IN 1..300 LOOP
        IF EXISTS (SELECT 1 FROM digitaltwin.stats WHERE last_error LIKE pattern) THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN false;
END $$;
INSERT INTO digitaltwin.twin_state (model_id, twin_id, state, event_count, updated_at)
SELECT model_id, repeat('L', 70), state, 1, now() FROM digitaltwin.twin_state s
JOIN digitaltwin.models m ON m.id = s.model_id WHERE m.name = 'churn' AND s.twin_id = 'c-1';
SELECT worker_error_like('%has an id of 70 bytes%') AS reported;
DELETE FROM digitaltwin.twin_state WHERE twin_id = repeat('L', 70);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('churn', 'c-1', '{"pad": 2}');
SELECT digitaltwin.wait_idle('60s');
SELECT * FROM churn_differs();
DROP FUNCTION worker_error_like(text);
SELECT digitaltwin.drop_model('churn', force => true);
DROP FUNCTION churn_differs();
DROP FUNCTION churn_round(int);
DROP FUNCTION torn_reads(int);
DROP FUNCTION churn(text, jsonb, jsonb);
