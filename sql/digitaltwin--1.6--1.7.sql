/* digitaltwin--1.6--1.7.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.7'" to load this file. \quit

--------------------------------------------------------------------------
-- Version 1.7: every database of the cluster (issue 14).
--
-- A launcher background worker starts the workers of each database that
-- has the extension (src/launcher.c).  CREATE EXTENSION asks it to serve
-- this database and fails if it cannot (src/databases.c); inserting into
-- the queue of a database that will not be served fails too.
--------------------------------------------------------------------------

CREATE FUNCTION digitaltwin.serve_database()
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_serve_database'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.serve_database() IS
'Has the digitaltwin launcher start the workers of this database, or fails with the reason it cannot (digitaltwin.databases, max_worker_processes, digitaltwin.max_databases).  CREATE EXTENSION calls it; the workers then wait for that transaction to commit.';

REVOKE ALL ON FUNCTION digitaltwin.serve_database() FROM PUBLIC;

CREATE FUNCTION digitaltwin.database_stats(
    OUT database name,
    OUT status text,
    OUT workers integer,
    OUT events_processed bigint,
    OUT dead_letters bigint,
    OUT alerts bigint,
    OUT twins bigint,
    OUT memory_bytes bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'digitaltwin_database_stats'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION digitaltwin.database_stats() IS
'Every database of the cluster that digitaltwin serves or refuses: its status, running workers, counters and share of the shared memory (digitaltwin.max_memory); read through the view digitaltwin.stats.';

REVOKE ALL ON FUNCTION digitaltwin.database_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.database_stats() TO digitaltwin_reader;

-- The columns of 1.0 first, then the database and its status; one row per
-- worker of this database, its total (worker IS NULL), and one row per
-- other database the launcher knows.
CREATE OR REPLACE VIEW digitaltwin.stats AS
    WITH w AS (
        SELECT * FROM digitaltwin.worker_stats()
    ), q AS (
        SELECT digitaltwin.partition_of(e.twin_id,
                   greatest(current_setting('digitaltwin.workers', true)::integer, 1)) AS worker,
               count(*) AS queue_depth,
               min(e.enqueued_at) AS oldest
        FROM digitaltwin.events e
        GROUP BY 1
    ), d AS (
        SELECT * FROM digitaltwin.database_stats()
    )
    SELECT w.worker, w.pid, w.events_processed, w.events_per_second,
           coalesce(q.queue_depth, 0) AS queue_depth,
           now() - q.oldest AS oldest_event_age,
           w.dead_letters, w.alerts, w.twins, w.memory_bytes,
           w.last_batch_at, w.last_error,
           pg_catalog.current_database() AS database,
           coalesce((SELECT d.status FROM d WHERE d.database = pg_catalog.current_database()),
                    'not served') AS status
    FROM w LEFT JOIN q ON q.worker = w.worker
    UNION ALL
    SELECT NULL, NULL,
           (SELECT sum(events_processed) FROM w)::bigint,
           (SELECT sum(events_per_second) FROM w),
           (SELECT count(*) FROM digitaltwin.events),
           now() - (SELECT min(enqueued_at) FROM digitaltwin.events),
           (SELECT sum(dead_letters) FROM w)::bigint,
           (SELECT sum(alerts) FROM w)::bigint,
           (SELECT sum(twins) FROM w)::bigint,
           (SELECT sum(memory_bytes) FROM w)::bigint,
           (SELECT max(last_batch_at) FROM w),
           NULL,
           pg_catalog.current_database(),
           coalesce((SELECT d.status FROM d WHERE d.database = pg_catalog.current_database()),
                    'not served')
    UNION ALL
    SELECT NULL, NULL, d.events_processed, NULL, NULL, NULL,
           d.dead_letters, d.alerts, d.twins, d.memory_bytes, NULL, NULL,
           d.database, d.status
    FROM d
    WHERE d.database <> pg_catalog.current_database();

COMMENT ON VIEW digitaltwin.stats IS
'One row per worker of this database and its total (worker IS NULL): events processed, rate, queue depth, oldest unprocessed event age, dead letters, alerts, twins in memory, shared memory used; then one row per other database digitaltwin serves or refuses (its counters, memory and status).  status says whether the database is served, and if not why.';

--------------------------------------------------------------------------
-- twin_state and timer_state are written by the workers; when anyone else
-- writes them (pg_restore loading them into a served database, a
-- superuser's repair, the cascade of drop_model()), the workers reload
-- their twins and timers once that transaction commits.
--------------------------------------------------------------------------

CREATE FUNCTION digitaltwin.durable_state_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'digitaltwin_durable_state_changed'
LANGUAGE C;

COMMENT ON FUNCTION digitaltwin.durable_state_changed() IS
'Trigger of twin_state and timer_state: a change by a transaction other than a worker''s makes the workers of this database reload their twins and timers at its commit.';

REVOKE ALL ON FUNCTION digitaltwin.durable_state_changed() FROM PUBLIC;

CREATE TRIGGER durable_state_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON digitaltwin.twin_state
    FOR EACH STATEMENT EXECUTE FUNCTION digitaltwin.durable_state_changed();

CREATE TRIGGER durable_state_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON digitaltwin.timer_state
    FOR EACH STATEMENT EXECUTE FUNCTION digitaltwin.durable_state_changed();

-- Last: serve this database (CREATE EXTENSION, ALTER EXTENSION UPDATE).
SELECT digitaltwin.serve_database();
