--
-- twin_state's rows are rewritten by every batch that changes their twin
-- (src/stage.c, through util.c's row updater).  The updates must stay HOT:
-- one that is not adds an index entry, and every later update of the key
-- checks the growing chain of dead entries.  So a row's page is pruned
-- before an update when it runs short of room, and only then: pruning at
-- every visit wrote a WAL record per update when batches are small (util.c,
-- dt_page_needs_room).  Autovacuum is off so that only the workers prune.
--
ALTER SYSTEM SET autovacuum = off;
SELECT pg_reload_conf();
CREATE EXTENSION pg_walinspect;
CREATE FUNCTION state_pages_count(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1, 'pad', repeat('p', 100))
$$;
SELECT digitaltwin.create_model('state_pages', 'state_pages_count(text,jsonb,jsonb)');
-- the first batch inserts the rows of 40 twins
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'state_pages', 's' || i, '{}' FROM generate_series(1, 40) i;
SELECT digitaltwin.wait_idle('30s');
-- packed at the fillfactor (two workers inserting at once may extend the
-- table by many pages), so that the updates must prune to stay HOT
VACUUM FULL digitaltwin.twin_state;
SELECT count(*) AS rows
FROM digitaltwin.twin_state s JOIN digitaltwin.models m ON m.id = s.model_id
WHERE m.name = 'state_pages';

-- what happened to twin_state since the mark: its size, its updates, its
-- prunes (from the WAL, which a slot keeps from a checkpoint's recycling;
-- the other tests' twins are idle meanwhile)
SELECT slot_name FROM pg_create_physical_replication_slot('state_pages', true, true);
CREATE TEMP TABLE mark (heap bigint, index bigint, lsn pg_lsn);
CREATE FUNCTION state_pages_mark() RETURNS void LANGUAGE sql AS $$
    DELETE FROM mark;
    INSERT INTO mark SELECT pg_relation_size('digitaltwin.twin_state'),
                            pg_relation_size('digitaltwin.twin_state_pkey'),
                            pg_current_wal_flush_lsn();
$$;
CREATE FUNCTION state_pages_since(OUT heap_kept bool, OUT index_kept bool,
                                  OUT hot_updates bigint, OUT other_updates bigint,
                                  OUT prunes bigint)
LANGUAGE sql AS $$
    SELECT pg_relation_size('digitaltwin.twin_state') = m.heap,
           pg_relation_size('digitaltwin.twin_state_pkey') = m.index,
           count(*) FILTER (WHERE w.record_type = 'HOT_UPDATE'),
           count(*) FILTER (WHERE w.record_type IN ('UPDATE', 'UPDATE+INIT')),
           count(*) FILTER (WHERE w.record_type = 'PRUNE')
    FROM mark m LEFT JOIN pg_get_wal_records_info(m.lsn, pg_current_wal_flush_lsn()) w
         ON w.block_ref LIKE '%/' || pg_relation_filenode('digitaltwin.twin_state') || ' %'
        AND w.resource_manager IN ('Heap', 'Heap2')
    GROUP BY m.heap, m.index
$$;

-- 60 batches, each rewriting 8 of the rows (a fifth, in turn): every
-- update HOT, the table and its index keep their size, the pages are
-- pruned.  (Not all 40 rows at every batch: a page's new versions of one
-- batch cannot be pruned before the batch ends, and 20 of them fill what
-- the fillfactor left free, with or without any prune.)
SELECT state_pages_mark();
\set ECHO none
\o /dev/null
SELECT format($$INSERT INTO digitaltwin.events (model, twin_id, payload)
                SELECT 'state_pages', 's' || i, '{}' FROM generate_series(1, 40) i
                WHERE i %% 5 = %s$$, r % 5),
       $$SELECT digitaltwin.wait_idle('30s')$$
FROM generate_series(1, 60) r \gexec
\o
\set ECHO all
SELECT heap_kept, index_kept, hot_updates >= 480 AS updates_hot, other_updates, prunes > 0 AS pruned
FROM state_pages_since();

-- 200 batches of one event each: the same, and a page is pruned once per
-- several updates, not before each (that was 140 prunes)
SELECT state_pages_mark();
\set ECHO none
\o /dev/null
SELECT format($$INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('state_pages', 's%s', '{}')$$, 1 + i % 40),
       $$SELECT digitaltwin.wait_idle('30s')$$
FROM generate_series(1, 200) i \gexec
\o
\set ECHO all
SELECT heap_kept, index_kept, hot_updates >= 200 AS updates_hot, other_updates, prunes BETWEEN 1 AND 60 AS pruned_seldom
FROM state_pages_since();
SELECT count(*) AS twins, sum((state->>'n')::int) AS events_applied  -- 40 + 480 + 200
FROM digitaltwin.twins WHERE model = 'state_pages';

SELECT digitaltwin.drop_model('state_pages', force => true);
DROP FUNCTION state_pages_count(text, jsonb, jsonb);
DROP FUNCTION state_pages_mark();
DROP FUNCTION state_pages_since();
SELECT pg_drop_replication_slot('state_pages');
DROP EXTENSION pg_walinspect;
ALTER SYSTEM RESET autovacuum;
SELECT pg_reload_conf();
