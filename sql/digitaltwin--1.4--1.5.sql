/* digitaltwin--1.4--1.5.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.5'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  An update that
-- altered a table a batch then waits for, and then waited itself for that
-- batch's lock on models, would deadlock with it; so the update takes
-- models whole before touching anything, once the transactions that use
-- it have ended, and holds it until it commits.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- Version 1.5: event time and context
--
-- An event carries the application's time of the event (event_time: the
-- device's clock, say; by default the insert time), and a model sees the
-- event it processes through digitaltwin.current_event(): its kind
-- ('event' from an application, 'message' from a model), its times and,
-- for a message, the model and twin that sent it.  The sender columns and
-- the default event time of a message are filled by defaults that read
-- the worker's current event (src/context.c); writers cannot set them.
--------------------------------------------------------------------------

CREATE FUNCTION digitaltwin._default_event_time()
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'digitaltwin_default_event_time'
LANGUAGE C STABLE PARALLEL RESTRICTED;

COMMENT ON FUNCTION digitaltwin._default_event_time() IS
'Internal: default of digitaltwin.events.event_time; the insert time (now()), or inside a model the time of the event that sends.';

CREATE FUNCTION digitaltwin._sender_model()
RETURNS text
AS 'MODULE_PATHNAME', 'digitaltwin_sender_model'
LANGUAGE C STABLE PARALLEL RESTRICTED;

COMMENT ON FUNCTION digitaltwin._sender_model() IS
'Internal: default of digitaltwin.events.sender_model; NULL, or inside a model the model that sends.';

CREATE FUNCTION digitaltwin._sender_twin()
RETURNS text
AS 'MODULE_PATHNAME', 'digitaltwin_sender_twin'
LANGUAGE C STABLE PARALLEL RESTRICTED;

COMMENT ON FUNCTION digitaltwin._sender_twin() IS
'Internal: default of digitaltwin.events.sender_twin; NULL, or inside a model the twin that sends.';

-- STABLE defaults: COPY and multi-row INSERT still insert in batches, and
-- the columns are added without rewriting the queue.
ALTER TABLE digitaltwin.events
    ADD COLUMN event_time timestamptz NOT NULL DEFAULT digitaltwin._default_event_time(),
    ADD COLUMN sender_model text DEFAULT digitaltwin._sender_model(),
    ADD COLUMN sender_twin text COLLATE "C" DEFAULT digitaltwin._sender_twin();

COMMENT ON COLUMN digitaltwin.events.event_time IS
'When the event happened, by the application''s clock (default: the insert time; a message: the time of the event that sent it).';
COMMENT ON COLUMN digitaltwin.events.sender_model IS
'For a message (an event a model sent): the sending model; NULL for an application''s event.';
COMMENT ON COLUMN digitaltwin.events.sender_twin IS
'For a message: the sending twin; NULL for an application''s event.';

GRANT INSERT (event_time) ON digitaltwin.events TO digitaltwin_writer;

-- send() takes the event time; called with three arguments as before.
DROP FUNCTION digitaltwin.send(text, text, jsonb);

CREATE FUNCTION digitaltwin.send(model text, twin_id text, payload jsonb,
                                 event_time timestamptz DEFAULT NULL)
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO digitaltwin.events (model, twin_id, payload, event_time)
    VALUES ($1, $2, $3, coalesce($4, digitaltwin._default_event_time()))
    RETURNING id
$$;

COMMENT ON FUNCTION digitaltwin.send(text, text, jsonb, timestamptz) IS
'Enqueue one event for a twin of a model, at event_time (default: now, or inside a model the time of the event being processed); returns the event id.  Inside a model the event is a message.';

REVOKE ALL ON FUNCTION digitaltwin.send(text, text, jsonb, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.send(text, text, jsonb, timestamptz) TO digitaltwin_writer;

CREATE TYPE digitaltwin.event_info AS (
    id           bigint,
    model        text,
    twin_id      text,
    kind         text,
    event_time   timestamptz,
    enqueued_at  timestamptz,
    sender_model text,
    sender_twin  text,
    timer        text
);

COMMENT ON TYPE digitaltwin.event_info IS
'The event a model processes, as digitaltwin.current_event() returns it; kind is ''event'' or ''message'' (timer is for timers, in a later version).';

CREATE FUNCTION digitaltwin.current_event()
RETURNS digitaltwin.event_info
AS 'MODULE_PATHNAME', 'digitaltwin_current_event'
LANGUAGE C STABLE PARALLEL RESTRICTED;

COMMENT ON FUNCTION digitaltwin.current_event() IS
'Inside a model function: the event being processed (id, model, twin, kind, event and enqueue times, sender of a message).  Elsewhere: error 55000.';
