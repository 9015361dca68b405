/* digitaltwin--1.5--1.6.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.6'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  An update that
-- altered a table a batch then waits for, and then waited itself for that
-- batch's lock on models, would deadlock with it; so the update takes
-- models whole before touching anything, once the transactions that use
-- it have ended, and holds it until it commits.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

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
    depth    integer NOT NULL,  -- its fire's depth in a chain of messages
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
--------------------------------------------------------------------------
-- The outbox: messages from models back to the data sources
--
-- A model calls send_to_source(payload); the worker inserts the row in the
-- batch transaction of the event that sent it (so it exists exactly when
-- the event was consumed) and announces it with NOTIFY digitaltwin_outbox,
-- payload the row's id.  Gateways take rows with take_outbox(): FOR UPDATE
-- SKIP LOCKED, so concurrent gateways never get the same row, and a row
-- is gone for good only when the taking transaction commits.  Taken rows
-- are deleted digitaltwin.outbox_retention after taken_at.
--
-- Privileges: a new role, digitaltwin_gateway, alone may take (taking
-- changes the outbox; neither a reader, who changes nothing, nor a writer,
-- who sends to the twins, should consume the twins' commands).  Readers may
-- read the outbox, as they read alerts: they cannot lock its rows (that
-- needs UPDATE), so they cannot hold up a gateway.  Admins may delete rows
-- (a backlog of a retired gateway), as they may delete alerts.
--------------------------------------------------------------------------

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                   WHERE rolname OPERATOR(pg_catalog.=) 'digitaltwin_gateway') THEN
        CREATE ROLE digitaltwin_gateway NOLOGIN;
    END IF;
END
$$;

COMMENT ON ROLE digitaltwin_gateway IS
'digitaltwin: may take the models'' messages to the data sources (digitaltwin.take_outbox()), nothing else.';

GRANT USAGE ON SCHEMA digitaltwin TO digitaltwin_gateway;

CREATE TABLE digitaltwin.outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model       text NOT NULL,
    twin_id     text COLLATE "C" NOT NULL,
    payload     jsonb NOT NULL,
    event_id    bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    taken_at    timestamptz
);

-- take_outbox(): the oldest pending rows, whatever the number taken
CREATE INDEX outbox_pending_idx ON digitaltwin.outbox (id) WHERE taken_at IS NULL;
-- retention: the taken rows, by age
CREATE INDEX outbox_taken_at_idx ON digitaltwin.outbox (taken_at) WHERE taken_at IS NOT NULL;

COMMENT ON TABLE digitaltwin.outbox IS
'Messages models sent to their data sources with digitaltwin.send_to_source(), committed with the sending event and announced by NOTIFY digitaltwin_outbox (payload: the id); gateways take them with digitaltwin.take_outbox().';
COMMENT ON COLUMN digitaltwin.outbox.id IS 'Order of the messages; the payload of their NOTIFY digitaltwin_outbox.';
COMMENT ON COLUMN digitaltwin.outbox.model IS 'Model that sent the message.';
COMMENT ON COLUMN digitaltwin.outbox.twin_id IS 'Twin that sent the message.';
COMMENT ON COLUMN digitaltwin.outbox.payload IS 'The message, as the model sent it.';
COMMENT ON COLUMN digitaltwin.outbox.event_id IS 'Event whose processing sent the message.';
COMMENT ON COLUMN digitaltwin.outbox.created_at IS 'When the batch that sent the message started.';
COMMENT ON COLUMN digitaltwin.outbox.taken_at IS 'When a gateway took the message (NULL: pending); deleted digitaltwin.outbox_retention later.';
COMMENT ON INDEX digitaltwin.outbox_pending_idx IS 'The pending messages in id order, for digitaltwin.take_outbox().';
COMMENT ON INDEX digitaltwin.outbox_taken_at_idx IS 'The taken messages by age, for digitaltwin.outbox_retention.';

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.outbox_id_seq', '');

CREATE FUNCTION digitaltwin.send_to_source(payload jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_send_to_source_sql'
LANGUAGE C PARALLEL RESTRICTED;

COMMENT ON FUNCTION digitaltwin.send_to_source(jsonb) IS
'Inside a model function: send a message to the data source of the current twin (a row of digitaltwin.outbox committed with the event, then announced by NOTIFY digitaltwin_outbox with its id).  Elsewhere: error 55000.';

-- SECURITY DEFINER (the gateway has no privilege on the table), so: search
-- path pinned, every operator qualified, nothing resolved by name through
-- the caller's settings (sql/outbox.sql plants operators and functions on
-- the caller's search_path and in pg_temp).  plpgsql for a clear error on a
-- bad max; columns win over the parameters of the same name.
CREATE FUNCTION digitaltwin.take_outbox(max int DEFAULT 100, model text DEFAULT NULL)
RETURNS SETOF digitaltwin.outbox
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF take_outbox.max IS NULL OR take_outbox.max OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'max must be a number of messages, 0 or more'
            USING ERRCODE = '22023', DETAIL = pg_catalog.format('max is %s.', coalesce(take_outbox.max::pg_catalog.text, 'NULL'));
    END IF;
    -- rows locked by another gateway are skipped, not waited for; a row
    -- another gateway took and committed meanwhile fails the re-check of
    -- taken_at IS NULL and is skipped too
    RETURN QUERY
    WITH taken AS (
        UPDATE digitaltwin.outbox o
        SET taken_at = pg_catalog.now()
        FROM (SELECT p.id FROM digitaltwin.outbox p
              WHERE p.taken_at IS NULL
                AND (take_outbox.model IS NULL OR p.model OPERATOR(pg_catalog.=) take_outbox.model)
              ORDER BY p.id
              LIMIT take_outbox.max
              FOR UPDATE SKIP LOCKED) t
        WHERE o.id OPERATOR(pg_catalog.=) t.id
        RETURNING o.*)
    SELECT * FROM taken ORDER BY taken.id;
END
$$;

COMMENT ON FUNCTION digitaltwin.take_outbox(integer, text) IS
'For gateways (digitaltwin_gateway): take up to max pending messages of digitaltwin.outbox, oldest first, of one model or all (model NULL); concurrent callers never get the same row; a rolled-back take leaves the rows pending.';

REVOKE ALL ON FUNCTION digitaltwin.take_outbox(integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.take_outbox(integer, text) TO digitaltwin_gateway;
GRANT SELECT ON digitaltwin.outbox TO digitaltwin_reader;
GRANT DELETE ON digitaltwin.outbox TO digitaltwin_admin;
-- [end section: outbox]

-- [section: send]

--------------------------------------------------------------------------
-- send() in C: a message costs what an alert costs
--
-- send() was a LANGUAGE sql function with SET search_path, never inlined:
-- every message a model sent re-parsed, re-planned and ran an INSERT of its
-- own.  In C (src/messages.c), the same signature and contract: outside a
-- model it inserts the event as the caller, through one kept plan, so the
-- caller's privileges and the queue's CHECK apply as before; inside a model
-- it checks the message at once (privileges, chain depth, the CHECK), takes
-- its id and stages it, and the worker inserts the batch's messages with
-- one statement before its commit.  OR REPLACE keeps the grants and the
-- comment, restated here all the same.
--------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION digitaltwin.send(model text, twin_id text, payload jsonb,
                                            event_time timestamptz DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'digitaltwin_send'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.send(text, text, jsonb, timestamptz) IS
'Enqueue one event for a twin of a model, at event_time (default: now, or inside a model the time of the event being processed); returns the event id.  Inside a model the event is a message, written when the sending event commits.';

REVOKE ALL ON FUNCTION digitaltwin.send(text, text, jsonb, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.send(text, text, jsonb, timestamptz) TO digitaltwin_writer;
-- [end section: send]
