/* digitaltwin--1.1--1.2.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.2'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  An update that
-- altered a table a batch then waits for, and then waited itself for that
-- batch's lock on models, would deadlock with it; so the update takes
-- models whole before touching anything, once the transactions that use
-- it have ended, and holds it until it commits.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- The live view reads shared memory through a foreign table
--
-- digitaltwin.twins read twin_entries(), a set-returning function that
-- cannot know which columns its query uses: every query copied every
-- twin's id and state.  A foreign scan reads only the columns its query
-- uses, gives the planner the number of twins, and the view's join to
-- digitaltwin.models becomes a LEFT JOIN on its primary key, which the
-- planner removes when no model name is used (SELECT count(*) ...).  The
-- scan shows no twin whose model is gone, so no row has a NULL model.
-- twin_entries() stays, unchanged.
--------------------------------------------------------------------------

CREATE FUNCTION digitaltwin.live_handler()
RETURNS fdw_handler
AS 'MODULE_PATHNAME', 'digitaltwin_live_handler'
LANGUAGE C STRICT;

COMMENT ON FUNCTION digitaltwin.live_handler() IS
'Handler of the foreign data wrapper digitaltwin_live, which reads the live twins out of shared memory.';

CREATE FUNCTION digitaltwin.live_validator(text[], oid)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_live_validator'
LANGUAGE C STRICT;

COMMENT ON FUNCTION digitaltwin.live_validator(text[], oid) IS
'Validator of the foreign data wrapper digitaltwin_live: it takes no options.';

CREATE FOREIGN DATA WRAPPER digitaltwin_live
    HANDLER digitaltwin.live_handler
    VALIDATOR digitaltwin.live_validator;

COMMENT ON FOREIGN DATA WRAPPER digitaltwin_live IS
'Reads the live twins out of the shared memory of this server.';

CREATE SERVER digitaltwin_live FOREIGN DATA WRAPPER digitaltwin_live;

COMMENT ON SERVER digitaltwin_live IS
'The shared memory of this server, where the digitaltwin workers keep the live twins.';

CREATE FOREIGN TABLE digitaltwin.live_twins (
    model_id    integer,
    twin_id     text,
    state       jsonb,
    event_count bigint,
    updated_at  timestamptz
) SERVER digitaltwin_live;

COMMENT ON FOREIGN TABLE digitaltwin.live_twins IS
'Every twin in shared memory, its state shown as jsonb; read through the view digitaltwin.twins.';

CREATE OR REPLACE VIEW digitaltwin.twins AS
    SELECT m.name AS model, t.twin_id, t.state, t.event_count, t.updated_at
    FROM digitaltwin.live_twins t
    LEFT JOIN digitaltwin.models m ON m.id = t.model_id;

-- Tables are not readable by PUBLIC; the view reads live_twins with its
-- owner's privileges, so readers need only the view.  Granted anyway, as
-- twin_entries() is.
GRANT SELECT ON digitaltwin.live_twins TO digitaltwin_reader;
