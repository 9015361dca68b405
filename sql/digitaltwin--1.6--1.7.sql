/* digitaltwin--1.6--1.7.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.7'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  An update that
-- altered a table a batch then waits for, and then waited itself for that
-- batch's lock on models, would deadlock with it; so the update takes
-- models whole before touching anything, once the transactions that use
-- it have ended, and holds it until it commits.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

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

--------------------------------------------------------------------------
-- Dead letters you can act on (issue 16, first part): the whole error
-- (detail, hint, the context's function and line), the event's time and
-- its original id are kept; retry_dead_letters() queues them again, in
-- their original order, and the model can tell a retried event
-- (current_event().kind = 'retry', .retry_of = its original id).
--------------------------------------------------------------------------

ALTER TABLE digitaltwin.dead_letters
    ADD COLUMN event_time  timestamptz,
    ADD COLUMN detail      text,
    ADD COLUMN hint        text,
    ADD COLUMN context     text,
    ADD COLUMN original_id bigint,
    ADD COLUMN model_id    integer;

COMMENT ON COLUMN digitaltwin.dead_letters.event_id IS 'Id the event had in the queue.';
COMMENT ON COLUMN digitaltwin.dead_letters.error IS 'The error''s message.';
COMMENT ON COLUMN digitaltwin.dead_letters.sqlstate IS 'The error''s SQLSTATE.';
COMMENT ON COLUMN digitaltwin.dead_letters.event_time IS 'The event''s time (digitaltwin.events.event_time); NULL for dead letters of versions before 1.7.';
COMMENT ON COLUMN digitaltwin.dead_letters.detail IS 'The error''s DETAIL, if any.';
COMMENT ON COLUMN digitaltwin.dead_letters.hint IS 'The error''s HINT, if any.';
COMMENT ON COLUMN digitaltwin.dead_letters.context IS 'The error''s CONTEXT: where in the model it happened (function and line).';
COMMENT ON COLUMN digitaltwin.dead_letters.model_id IS 'Id of the model (digitaltwin.models.id) the event was of, NULL if it no longer existed: a model created later under the same name is another model.';
COMMENT ON COLUMN digitaltwin.dead_letters.original_id IS 'Id of the event when it was first queued, for an event queued again by retry_dead_letters(); NULL otherwise (then event_id is the original).';

-- a retried event: its original id (the column default is NULL)
ALTER TABLE digitaltwin.events ADD COLUMN retry_of bigint;

COMMENT ON COLUMN digitaltwin.events.retry_of IS 'For an event queued again by digitaltwin.retry_dead_letters(): the id it had when first queued.';

ALTER TYPE digitaltwin.event_info ADD ATTRIBUTE retry_of bigint;

COMMENT ON TYPE digitaltwin.event_info IS
'The event a model processes, as digitaltwin.current_event() returns it: kind is ''event'', ''message'', ''timer'' or ''retry'' (retry_of: its original id).';

CREATE FUNCTION digitaltwin.retry_dead_letters(model text DEFAULT NULL, event_ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    n bigint;
    in_model boolean := true;
BEGIN
    -- not from a model: its events must be the batch's messages (send())
    BEGIN
        PERFORM digitaltwin.current_event();
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        in_model := false;
    END;
    IF in_model THEN
        RAISE EXCEPTION 'digitaltwin.retry_dead_letters() cannot be called by a model'
            USING ERRCODE = '0A000';
    END IF;
    -- Oldest first: identity values follow the ORDER BY of an INSERT ...
    -- SELECT, so the retried events keep their original order.  Dead
    -- letters of a model that no longer exists stay where they are, even
    -- when another model has its name now (its owner must not get them).
    WITH d AS (
        DELETE FROM digitaltwin.dead_letters l
        WHERE (retry_dead_letters.model IS NULL
               OR l.model OPERATOR(pg_catalog.=) retry_dead_letters.model)
          AND (retry_dead_letters.event_ids IS NULL
               OR l.event_id OPERATOR(pg_catalog.=) ANY (retry_dead_letters.event_ids)
               OR l.original_id OPERATOR(pg_catalog.=) ANY (retry_dead_letters.event_ids))
          -- of the model that has the name now: by id, or for a dead letter
          -- of an older version (no model_id), one written after the model
          -- was created
          AND EXISTS (SELECT FROM digitaltwin.models m
                      WHERE m.name OPERATOR(pg_catalog.=) l.model
                        AND (m.id OPERATOR(pg_catalog.=) l.model_id
                             OR (l.model_id IS NULL
                                 AND l.failed_at OPERATOR(pg_catalog.>=) m.created_at)))
        RETURNING l.*)
    INSERT INTO digitaltwin.events (model, twin_id, payload, event_time, retry_of)
    SELECT d.model, d.twin_id, d.payload, coalesce(d.event_time, d.enqueued_at),
           coalesce(d.original_id, d.event_id)
    FROM d
    ORDER BY coalesce(d.original_id, d.event_id);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION digitaltwin.retry_dead_letters(text, bigint[]) IS
'Queues dead letters again (of one model, or all with model NULL; those whose event_id or original_id is in event_ids, or all), oldest first, keeping their event time; the model sees them with current_event().kind = ''retry'' and retry_of = the original id.  Returns how many.  For digitaltwin_admin.';

REVOKE ALL ON FUNCTION digitaltwin.retry_dead_letters(text, bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.retry_dead_letters(text, bigint[]) TO digitaltwin_admin;

-- Last: serve this database (CREATE EXTENSION, ALTER EXTENSION UPDATE).
SELECT digitaltwin.serve_database();
