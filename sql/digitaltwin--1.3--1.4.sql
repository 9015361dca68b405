/* digitaltwin--1.3--1.4.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.4'" to load this file. \quit

--------------------------------------------------------------------------
-- Version 1.4: trust.  Every statement the extension runs with rights other
-- than the caller's pins search_path = pg_catalog, pg_temp and qualifies its
-- operators (docs/architecture.md, "Trust rules").
--------------------------------------------------------------------------

-- [section: model protection (ALTER of state types)]

-- [end section: model protection]

-- [section: chain depth]

-- [end section: chain depth]

-- [section: backup (configuration tables)]

-- [end section: backup]
