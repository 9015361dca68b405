/* digitaltwin--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.3'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  An update that
-- altered a table a batch then waits for, and then waited itself for that
-- batch's lock on models, would deadlock with it; so the update takes
-- models whole before touching anything, once the transactions that use
-- it have ended, and holds it until it commits.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- A model's functions and state type cannot be dropped under it
--
-- digitaltwin.models refers to its functions and state type by OID
-- (regprocedure, regtype), which records no dependency in pg_depend: a
-- DROP FUNCTION used to succeed and leave the model dead-lettering every
-- event.  A sql_drop event trigger refuses such a drop instead, as
-- PostgreSQL refuses to drop an object others depend on, CASCADE included
-- (dropping a model is digitaltwin.drop_model()'s job, which also forgets
-- its twins).  An event trigger fires after the objects are gone from the
-- catalogs but before the command commits, so raising an error undoes the
-- whole command.
--
-- SECURITY DEFINER: whoever drops a function must not need to read
-- digitaltwin.models for the check to work.  The trigger does not fire
-- while the extension itself is dropped: it is among the objects dropped.
-- A superuser can bypass it (ALTER EVENT TRIGGER ... DISABLE); the workers
-- then dead-letter the model's events, as before.
--------------------------------------------------------------------------

CREATE FUNCTION digitaltwin.protect_model_objects()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    used record;
BEGIN
    SELECT d.object_type, d.object_identity, m.name AS model
    INTO used
    FROM pg_event_trigger_dropped_objects() d
    JOIN digitaltwin.models m
      ON (d.classid = 'pg_catalog.pg_proc'::regclass
          AND d.objid IN (m.process::oid, m.init::oid))
      OR (d.classid = 'pg_catalog.pg_type'::regclass
          AND d.objid = m.state_type::oid)
    ORDER BY m.name
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot drop % % because digitaltwin model "%" uses it',
                        used.object_type, used.object_identity, used.model
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = format('Drop the model first: SELECT digitaltwin.drop_model(%L);',
                                used.model);
    END IF;
END
$$;

COMMENT ON FUNCTION digitaltwin.protect_model_objects() IS
'Event trigger function: refuses to drop a function or type that a registered model uses.';

REVOKE ALL ON FUNCTION digitaltwin.protect_model_objects() FROM PUBLIC;

-- No WHEN TAG filter: DROP TABLE drops a row type, DROP SCHEMA, DROP
-- EXTENSION and DROP OWNED drop functions; the check is one join per DROP.
CREATE EVENT TRIGGER digitaltwin_protect_models ON sql_drop
    EXECUTE FUNCTION digitaltwin.protect_model_objects();

COMMENT ON EVENT TRIGGER digitaltwin_protect_models IS
'digitaltwin: a function or type that a model uses cannot be dropped while the model exists.';
