/* digitaltwin--1.5--1.6.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.6'" to load this file. \quit

--------------------------------------------------------------------------
-- Version 1.6: durable timers, quiescent messages, an outbox to the data
-- sources (issue 13).
--------------------------------------------------------------------------

-- [section: timers]

--------------------------------------------------------------------------
-- Durable timers
--
-- A model arms a timer of the twin it processes with set_timer(); when it
-- falls due, the model is called for that twin with the timer's payload
-- as the event (current_event().kind = 'timer').  timer_state is written
-- by the workers only, in the transaction of the event that armed,
-- re-armed or cancelled the timer, and of the batch that fired it
-- (src/timers.c): a timer fires exactly once per due time.  Its rows go
-- with the model (ON DELETE CASCADE) and with the twin.
--------------------------------------------------------------------------

CREATE TABLE digitaltwin.timer_state (
    model_id integer NOT NULL REFERENCES digitaltwin.models (id) ON DELETE CASCADE,
    twin_id  text COLLATE "C" NOT NULL,
    name     text COLLATE "C" NOT NULL,
    due_at   timestamptz NOT NULL,
    every    interval,
    payload  jsonb NOT NULL,
    fire_id  bigint NOT NULL,   -- the id its fire will have (events_id_seq)
    PRIMARY KEY (model_id, twin_id, name)
) WITH (fillfactor = 50);   -- room for HOT updates: re-armed at every event

COMMENT ON TABLE digitaltwin.timer_state IS
'Durable copy of every pending timer, written by the workers with the events that arm, cancel or fire them; each worker keeps its own timers in local memory and reloads them from here.';

REVOKE ALL ON digitaltwin.timer_state FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.timer_state', '');

CREATE VIEW digitaltwin.timers AS
SELECT m.name AS model, t.twin_id, t.name, t.due_at, t.every, t.payload
FROM digitaltwin.timer_state t
JOIN digitaltwin.models m ON m.id OPERATOR(pg_catalog.=) t.model_id;

COMMENT ON VIEW digitaltwin.timers IS
'Every pending timer: its model, twin, name, next due time, period (NULL: fires once) and payload.';

REVOKE ALL ON digitaltwin.timers FROM PUBLIC;
GRANT SELECT ON digitaltwin.timers TO digitaltwin_reader;

CREATE FUNCTION digitaltwin.set_timer(name text, after interval,
                                      payload jsonb DEFAULT '{}',
                                      every interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_set_timer_sql'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION digitaltwin.set_timer(text, interval, jsonb, interval) IS
'Inside a model function: arm (or re-arm) the current twin''s timer of that name, due after the given delay, with every => a period for a recurring timer; when due, the model is called for the twin with the payload as the event.  Elsewhere: error 55000.';

CREATE FUNCTION digitaltwin.cancel_timer(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'digitaltwin_cancel_timer_sql'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION digitaltwin.cancel_timer(text) IS
'Inside a model function: cancel the current twin''s timer of that name; false if it had none.  Elsewhere: error 55000.';

COMMENT ON TYPE digitaltwin.event_info IS
'The event a model processes, as digitaltwin.current_event() returns it; kind is ''event'' (from an application), ''message'' (from a model) or ''timer'' (a timer of the twin, named in timer).';

-- [end section: timers]

-- [section: outbox]
-- [end section: outbox]
