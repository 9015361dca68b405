/* digitaltwin--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.1'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  An update that
-- altered a table a batch then waits for, and then waited itself for that
-- batch's lock on models, would deadlock with it; so the update takes
-- models whole before touching anything, once the transactions that use
-- it have ended, and holds it until it commits.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- Predefined roles
--
-- Three group roles (NOLOGIN) carry the privileges; grant them to login
-- roles.  Roles belong to the cluster, not to the database: they are created
-- only if missing (another database may have installed the extension), and
-- DROP EXTENSION leaves them.
--
--   digitaltwin_writer  sends events (INSERT or COPY into digitaltwin.events,
--                       digitaltwin.send); cannot read twins, alerts or the
--                       queue.
--   digitaltwin_reader  reads the live twins, the alerts and the statistics;
--                       cannot send events.
--   digitaltwin_admin   both, plus create_model/drop_model (of any model)
--                       and the dead letters.
--------------------------------------------------------------------------

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['digitaltwin_writer', 'digitaltwin_reader', 'digitaltwin_admin']
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$$;

COMMENT ON ROLE digitaltwin_writer IS 'digitaltwin: may send events, not read twins or alerts.';
COMMENT ON ROLE digitaltwin_reader IS 'digitaltwin: may read twins, alerts and statistics, not send events.';
COMMENT ON ROLE digitaltwin_admin IS 'digitaltwin: writer and reader, may create and drop models and read dead letters.';

GRANT digitaltwin_writer, digitaltwin_reader TO digitaltwin_admin;

GRANT USAGE ON SCHEMA digitaltwin TO digitaltwin_writer, digitaltwin_reader;

-- Writers: the three columns an event is made of.  The id is readable so
-- that INSERT ... RETURNING id and send() work; the rest of the queue is not.
GRANT INSERT (model, twin_id, payload), SELECT (id) ON digitaltwin.events TO digitaltwin_writer;
REVOKE ALL ON FUNCTION digitaltwin.send(text, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.send(text, text, jsonb) TO digitaltwin_writer;

-- Readers.  A view calls its functions with the privileges of the querying
-- user, so the functions behind the views are granted to readers only:
-- otherwise anyone could call twin_entries() directly.
REVOKE ALL ON FUNCTION digitaltwin.twin_entries() FROM PUBLIC;
REVOKE ALL ON FUNCTION digitaltwin.worker_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.twin_entries() TO digitaltwin_reader;
GRANT EXECUTE ON FUNCTION digitaltwin.worker_stats() TO digitaltwin_reader;
GRANT SELECT ON digitaltwin.twins, digitaltwin.stats, digitaltwin.alerts TO digitaltwin_reader;

-- Waiting for the workers reveals nothing but is a wait: members only.
REVOKE ALL ON FUNCTION digitaltwin.wait_idle(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.wait_idle(interval)
    TO digitaltwin_writer, digitaltwin_reader;

-- Admins.  drop_model also lets a model's owner drop it (it checks).
GRANT EXECUTE ON FUNCTION digitaltwin.create_model(text, regprocedure, regprocedure)
    TO digitaltwin_admin;
GRANT EXECUTE ON FUNCTION digitaltwin.drop_model(text) TO digitaltwin_admin;
GRANT SELECT, DELETE ON digitaltwin.dead_letters TO digitaltwin_admin;
GRANT DELETE ON digitaltwin.alerts TO digitaltwin_admin;
