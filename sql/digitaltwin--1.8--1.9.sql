/* digitaltwin--1.8--1.9.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.9'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  An update that
-- altered a table a batch then waits for, and then waited itself for that
-- batch's lock on models, would deadlock with it; so the update takes
-- models whole before touching anything, once the transactions that use
-- it have ended, and holds it until it commits.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- Version 1.9: twins_as_of() in C (src/as_of.c).  The SQL version was a
-- DISTINCT ON that sorted every history row at or before the time, whole
-- states included; this one keeps each twin's latest row position in a
-- hash table and fetches only the winners.  Same signature, same rows.
--------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION digitaltwin.twins_as_of(at timestamptz)
RETURNS TABLE (model text, twin_id text, state jsonb, event_count bigint, updated_at timestamptz)
AS 'MODULE_PATHNAME', 'digitaltwin_twins_as_of'
LANGUAGE C STABLE STRICT;

COMMENT ON FUNCTION digitaltwin.twins_as_of(timestamptz) IS
'The twins of the models with history as they were at a time (within the models'' history_keep), with the columns of digitaltwin.twins; updated_at is when that state was produced.  Reads digitaltwin.state_history as the caller, in one pass (memory: about 80 bytes per twin).';

--------------------------------------------------------------------------
-- Typed twin views (issue 17, src/twin_views.c): create_twin_view()
-- makes an ordinary view of the caller's, one typed column per state
-- property; drop_model() drops the model's typed views.
--------------------------------------------------------------------------

-- A row names its view by number and by identity (schema, name, owner):
-- drop_model() drops a view only if all of them still match, so that a
-- row left by a view the user dropped can never make it drop another
-- relation that got the number later (or in a restored database).
CREATE TABLE digitaltwin.twin_views (
    view        regclass PRIMARY KEY,
    view_schema name NOT NULL,
    view_name   name NOT NULL,
    owner       regrole NOT NULL,
    model_id    integer NOT NULL REFERENCES digitaltwin.models (id) ON DELETE CASCADE,
    columns     text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE digitaltwin.twin_views IS
'The typed views create_twin_view() made, dropped with their model (a row whose view the user dropped or renamed names no view any more, and is ignored).';
COMMENT ON COLUMN digitaltwin.twin_views.columns IS 'The column list given; NULL: the attributes of a composite state, or the whole state.';

-- dumped: the rows whose view still exists under its name
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.twin_views',
    'WHERE EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace '
    'WHERE c.oid OPERATOR(pg_catalog.=) view::pg_catalog.oid AND c.relname OPERATOR(pg_catalog.=) view_name '
    'AND n.nspname OPERATOR(pg_catalog.=) view_schema AND c.relowner OPERATOR(pg_catalog.=) owner::pg_catalog.oid)');
GRANT SELECT ON digitaltwin.twin_views TO digitaltwin_reader;

CREATE FUNCTION digitaltwin.create_twin_view(model text, view_name text, columns text DEFAULT NULL)
RETURNS regclass
AS 'MODULE_PATHNAME', 'digitaltwin_create_twin_view'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.create_twin_view(text, text, text) IS
'Creates view view_name (in your schema, owned by you) over the model''s live twins: twin_id, one typed column per state property, event_count, updated_at.  columns: ''name type, ...'' (required for a jsonb state; default: the attributes of a composite state, or the state itself).  Dropped with the model or by DROP VIEW.  For digitaltwin_reader.';
REVOKE ALL ON FUNCTION digitaltwin.create_twin_view(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.create_twin_view(text, text, text) TO digitaltwin_reader;

--------------------------------------------------------------------------
-- psql ergonomics (issue 17): every object of the extension has a comment
-- (sql/comments.sql checks it); the identity sequences had none.
--------------------------------------------------------------------------
COMMENT ON SEQUENCE digitaltwin.alerts_id_seq IS 'Ids of digitaltwin.alerts (identity).';
COMMENT ON SEQUENCE digitaltwin.events_id_seq IS 'Ids of the queued events (identity of digitaltwin.events): their order, kept by held, retried and logged events.';
COMMENT ON SEQUENCE digitaltwin.models_id_seq IS 'Ids of digitaltwin.models (identity).';
COMMENT ON SEQUENCE digitaltwin.outbox_id_seq IS 'Ids of digitaltwin.outbox (identity).';
COMMENT ON SEQUENCE digitaltwin.rehearsals_id_seq IS 'Ids of digitaltwin.rehearsals (identity).';

--------------------------------------------------------------------------
-- Rules-based models (issue 17, src/rules.c): the rules become a plpgsql
-- model function of the caller's, registered with create_model() /
-- alter_model() as the caller; digitaltwin.models shows the rules.
--------------------------------------------------------------------------
ALTER TABLE digitaltwin.models ADD COLUMN rules jsonb;
COMMENT ON COLUMN digitaltwin.models.rules IS 'The rules of a rules-based model (create_rule_model(), alter_rule_model()); NULL for a model of functions.';

CREATE FUNCTION digitaltwin.create_rule_model(name text, rules jsonb, init regprocedure DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_create_rule_model'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.create_rule_model(text, jsonb, regprocedure) IS
'Creates a model from rules, a JSON array applied in order: {"when": expr, "set": {"property": expr}, "alert": {"severity": "...", "message": expr}, "timer": {"name": "...", "after": expr}, "outbox": expr}, each expr an SQL expression over state, event, twin_id and digitaltwin.current_event(); the state is jsonb.  The rules become the function <name>_rules_v1, yours, in the first schema of your search_path.  For digitaltwin_admin.';
REVOKE ALL ON FUNCTION digitaltwin.create_rule_model(text, jsonb, regprocedure) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.create_rule_model(text, jsonb, regprocedure) TO digitaltwin_admin;

CREATE FUNCTION digitaltwin.alter_rule_model(name text, rules jsonb)
RETURNS integer
AS 'MODULE_PATHNAME', 'digitaltwin_alter_rule_model'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.alter_rule_model(text, jsonb) IS
'Replaces the rules of a rules-based model, keeping its twins, as alter_model() does (the rules become <name>_rules_v<version>); returns the new version.  For the model''s owner.';
REVOKE ALL ON FUNCTION digitaltwin.alter_rule_model(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.alter_rule_model(text, jsonb) TO digitaltwin_admin;
