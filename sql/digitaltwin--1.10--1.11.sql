/* digitaltwin--1.10--1.11.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.11'" to load this file. \quit

-- Keep the workers out first (see the 1.10 script): every batch locks
-- digitaltwin.models before anything else.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- Scale-out, second part (issue 18).

-- COPY on a coordinator, batched per node (src/cluster_ingest.c).
-- PostgreSQL 15 sends a COPY into cluster_events' foreign partitions one
-- row at a time; COPY (or INSERT) into this view instead: its rows are
-- kept in memory and routed by one INSERT into cluster_events every
-- 10,000 rows and at the end of the statement, which postgres_fdw sends in
-- batches to each node.  It runs as the caller: the caller needs INSERT on
-- the view and on cluster_events, and a user mapping, as for cluster_events.
CREATE VIEW digitaltwin.cluster_ingest AS
    SELECT NULL::text AS model, NULL::text COLLATE "C" AS twin_id,
           NULL::jsonb AS payload, NULL::timestamptz AS event_time
    WHERE false;
ALTER VIEW digitaltwin.cluster_ingest ALTER COLUMN event_time SET DEFAULT now();
COMMENT ON VIEW digitaltwin.cluster_ingest IS
'On a coordinator: COPY (or INSERT) events here (model, twin_id, payload, event_time) to route them like digitaltwin.cluster_events, in batches per node; reads nothing.';
COMMENT ON COLUMN digitaltwin.cluster_ingest.event_time IS
'The event''s time; the statement''s time when left out.';

CREATE FUNCTION digitaltwin.cluster_ingest_row()
RETURNS trigger
AS 'MODULE_PATHNAME', 'digitaltwin_cluster_ingest_row'
LANGUAGE C;
COMMENT ON FUNCTION digitaltwin.cluster_ingest_row() IS
'Internal: keeps a row of digitaltwin.cluster_ingest until its statement ends (or 10,000 rows are kept).';
REVOKE ALL ON FUNCTION digitaltwin.cluster_ingest_row() FROM PUBLIC;

CREATE FUNCTION digitaltwin.cluster_ingest_flush()
RETURNS trigger
AS 'MODULE_PATHNAME', 'digitaltwin_cluster_ingest_flush'
LANGUAGE C;
COMMENT ON FUNCTION digitaltwin.cluster_ingest_flush() IS
'Internal: at the end of a statement into digitaltwin.cluster_ingest, routes the rows it kept to the nodes.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_ingest_flush() FROM PUBLIC;

CREATE TRIGGER cluster_ingest_row
    INSTEAD OF INSERT ON digitaltwin.cluster_ingest
    FOR EACH ROW EXECUTE FUNCTION digitaltwin.cluster_ingest_row();
COMMENT ON TRIGGER cluster_ingest_row ON digitaltwin.cluster_ingest IS
'Keeps each row in memory until its statement ends.';
CREATE TRIGGER cluster_ingest_flush
    AFTER INSERT ON digitaltwin.cluster_ingest
    FOR EACH STATEMENT EXECUTE FUNCTION digitaltwin.cluster_ingest_flush();
COMMENT ON TRIGGER cluster_ingest_flush ON digitaltwin.cluster_ingest IS
'Routes the statement''s rows to the nodes, in batches.';

REVOKE ALL ON digitaltwin.cluster_ingest FROM PUBLIC;
GRANT INSERT ON digitaltwin.cluster_ingest TO digitaltwin_writer;
