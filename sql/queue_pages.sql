--
-- The queue without an index (version 1.12): the workers read its pages
-- and keep the oldest events they find, remembering the pages that hold
-- nothing for them (src/fetch.c).  Batches of 7 events over backlogs
-- spread across many pages, in and against physical order: every event
-- once, each twin's in id order.
--
ALTER SYSTEM SET digitaltwin.batch_size = 7;
SELECT pg_reload_conf();
CREATE FUNCTION pages_seen(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('seen', coalesce(state->'seen', '[]'::jsonb) || (event->'n'))
$$;
SELECT digitaltwin.create_model('pages', 'pages_seen(text,jsonb,jsonb)');
-- workers read the new batch size between batches: make each fetch once
SELECT digitaltwin.send('pages', 'warm-up', '{"n": 0}') > 0 AS sent;
SELECT digitaltwin.wait_idle('30s');

-- 1000 events of 40 twins with a 300-byte pad (about 40 pages), one
-- transaction: about 70 batches per worker, each reading what is left
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'pages', 't' || (i % 40), jsonb_build_object('n', i, 'pad', repeat('x', 300))
FROM generate_series(1, 1000) i;
SELECT digitaltwin.wait_idle('120s');
SELECT count(*) AS twins, sum(event_count) AS events,
       bool_and(state->'seen' = (SELECT jsonb_agg(i ORDER BY i) FROM generate_series(1, 1000) i
                                 WHERE 't' || (i % 40) = twin_id)) AS each_in_order
FROM digitaltwin.twins WHERE model = 'pages' AND twin_id LIKE 't%';

-- a rolled-back insert leaves dead rows on the pages; later events on the
-- same pages are found
BEGIN;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'pages', 't' || (i % 40), jsonb_build_object('n', -i) FROM generate_series(1, 100) i;
ROLLBACK;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'pages', 't' || (i % 40), jsonb_build_object('n', i) FROM generate_series(1001, 1100) i;
SELECT digitaltwin.wait_idle('60s');
SELECT count(*) AS twins, sum(event_count) AS events,
       bool_and(state->'seen' = (SELECT jsonb_agg(i ORDER BY i) FROM generate_series(1, 1100) i
                                 WHERE 't' || (i % 40) = twin_id)) AS each_in_order
FROM digitaltwin.twins WHERE model = 'pages' AND twin_id LIKE 't%';

-- ids against the physical order (the owner may give ids taken from the
-- sequence, as the extension does for held events): the rows written last
-- have the oldest ids, and are applied first
SELECT setval('digitaltwin.events_id_seq', nextval('digitaltwin.events_id_seq') + 1000) > 0 AS reserved;
INSERT INTO digitaltwin.events (id, model, twin_id, payload) OVERRIDING SYSTEM VALUE
SELECT currval('digitaltwin.events_id_seq') - i, 'pages', 'd' || (i % 10),
       jsonb_build_object('n', i, 'pad', repeat('y', 300))
FROM generate_series(1, 500) i;
SELECT digitaltwin.wait_idle('120s');
SELECT count(*) AS twins, sum(event_count) AS events,
       bool_and(state->'seen' = (SELECT jsonb_agg(i ORDER BY i DESC) FROM generate_series(1, 500) i
                                 WHERE 'd' || (i % 10) = twin_id)) AS each_in_id_order
FROM digitaltwin.twins WHERE model = 'pages' AND twin_id LIKE 'd%';
SELECT count(*) AS left_in_queue FROM digitaltwin.events WHERE model = 'pages';

ALTER SYSTEM RESET digitaltwin.batch_size;
SELECT pg_reload_conf();
SELECT digitaltwin.drop_model('pages', force => true);
DROP FUNCTION pages_seen(text, jsonb, jsonb);
