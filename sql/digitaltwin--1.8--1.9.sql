/* digitaltwin--1.8--1.9.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.9'" to load this file. \quit

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
