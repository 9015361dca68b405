/* digitaltwin--1.3--1.4.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.4'" to load this file. \quit

--------------------------------------------------------------------------
-- Version 1.4: trust.  Every statement the extension runs with rights other
-- than the caller's pins search_path = pg_catalog, pg_temp and qualifies its
-- operators (docs/architecture.md, "Trust rules").
--------------------------------------------------------------------------

-- send() runs as its caller; pinned all the same, so that it behaves the
-- same whatever the caller's search_path (inside a model too).
CREATE OR REPLACE FUNCTION digitaltwin.send(model text, twin_id text, payload jsonb)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO digitaltwin.events (model, twin_id, payload)
    VALUES ($1, $2, $3)
    RETURNING id
$$;

-- [section: model protection (ALTER of state types)]

-- [end section: model protection]

-- [section: chain depth]

-- [end section: chain depth]

-- [section: backup (configuration tables)]

-- [end section: backup]
