/* digitaltwin--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION digitaltwin" to load this file. \quit

-- The schema "digitaltwin" is created by CREATE EXTENSION (see the control file).

--------------------------------------------------------------------------
-- Model registry
--------------------------------------------------------------------------

CREATE TABLE digitaltwin.models (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE
                CHECK (length(name) BETWEEN 1 AND 63),
    process     regprocedure NOT NULL,
    init        regprocedure,
    state_type  regtype NOT NULL,
    owner       regrole NOT NULL,
    search_path text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE digitaltwin.models IS
'Registered twin models: the process (and optional init) function and the state type. Maintained by create_model() and drop_model().';

--------------------------------------------------------------------------
-- Event queue
--------------------------------------------------------------------------

-- The queue rotates through three partitions, one per "generation" modulo
-- 3, so that consumed events are removed in bulk: new events go to the
-- partition of the current generation; once a previous generation's
-- partition has been consumed, the coordinating worker truncates it, and
-- the queue advances to the next generation when that partition is empty
-- (see queue.c).  Workers also delete each event they consume, in the
-- transaction that applies it: that is what marks it consumed, exactly once;
-- the truncation then reclaims the space without VACUUM.
--
-- twin_id uses the "C" collation: twins are identified byte-wise, and the
-- partitioning of twins among workers hashes the bytes.
CREATE TABLE digitaltwin.queue_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation      bigint NOT NULL,
    drained_through bigint NOT NULL,
    rotated_at      timestamptz NOT NULL
);
INSERT INTO digitaltwin.queue_state VALUES (true, 0, -1, now());

COMMENT ON TABLE digitaltwin.queue_state IS
'Position of the event queue''s partition rotation: the current generation, and the last generation whose partition was consumed and truncated.';

-- STABLE: one statement's events all go to one partition, and COPY can
-- insert in batches (it cannot with a volatile default).
CREATE FUNCTION digitaltwin.queue_partition()
RETURNS integer
AS 'MODULE_PATHNAME', 'digitaltwin_queue_partition'
LANGUAGE C STABLE;

COMMENT ON FUNCTION digitaltwin.queue_partition() IS
'Partition of digitaltwin.events that new events go to (current generation modulo 3).';

CREATE FUNCTION digitaltwin.event_valid(model text, twin_id text, payload jsonb)
RETURNS boolean
AS 'MODULE_PATHNAME', 'digitaltwin_event_valid'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION digitaltwin.event_valid(text, text, jsonb) IS
'Check of digitaltwin.events: true for a valid event, else an error saying what is wrong (unknown model, NULL or over-long twin id, payload not a JSON object or too large).';

-- Validation is a CHECK constraint and the wake-up a statement trigger, not
-- a BEFORE ROW trigger, which would make COPY and multi-row INSERT insert
-- row by row.  The model and payload columns have no NOT NULL: the check
-- refuses NULLs with a clearer message.
CREATE TABLE digitaltwin.events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    model       text,
    twin_id     text COLLATE "C",
    payload     jsonb,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    part        smallint NOT NULL DEFAULT digitaltwin.queue_partition(),
    PRIMARY KEY (id, part),
    CONSTRAINT event_valid CHECK (digitaltwin.event_valid(model, twin_id, payload))
) PARTITION BY LIST (part);

-- VACUUM has nothing to do on the partitions: consumed rows go with TRUNCATE.
CREATE TABLE digitaltwin.events_0 PARTITION OF digitaltwin.events
    FOR VALUES IN (0) WITH (autovacuum_enabled = false);
CREATE TABLE digitaltwin.events_1 PARTITION OF digitaltwin.events
    FOR VALUES IN (1) WITH (autovacuum_enabled = false);
CREATE TABLE digitaltwin.events_2 PARTITION OF digitaltwin.events
    FOR VALUES IN (2) WITH (autovacuum_enabled = false);

COMMENT ON TABLE digitaltwin.events IS
'Durable event queue. INSERT (single or multi-row) or COPY (model, twin_id, payload); background workers consume each committed event exactly once.';
COMMENT ON TABLE digitaltwin.events_0 IS 'Partition of digitaltwin.events (generations 0, 3, 6...).';
COMMENT ON TABLE digitaltwin.events_1 IS 'Partition of digitaltwin.events (generations 1, 4, 7...).';
COMMENT ON TABLE digitaltwin.events_2 IS 'Partition of digitaltwin.events (generations 2, 5, 8...).';

CREATE FUNCTION digitaltwin.events_inserted()
RETURNS trigger
AS 'MODULE_PATHNAME', 'digitaltwin_events_inserted'
LANGUAGE C;

COMMENT ON FUNCTION digitaltwin.events_inserted() IS
'Trigger: wakes the workers when the transaction that inserted events commits.';

CREATE TRIGGER events_inserted
    AFTER INSERT ON digitaltwin.events
    FOR EACH STATEMENT EXECUTE FUNCTION digitaltwin.events_inserted();

CREATE FUNCTION digitaltwin.send(model text, twin_id text, payload jsonb)
RETURNS bigint
LANGUAGE sql
AS $$
    INSERT INTO digitaltwin.events (model, twin_id, payload)
    VALUES ($1, $2, $3)
    RETURNING id
$$;

COMMENT ON FUNCTION digitaltwin.send(text, text, jsonb) IS
'Enqueue one event for a twin of a model; returns the event id.';

--------------------------------------------------------------------------
-- Durable twin state (the source of truth for the shared-memory twins)
--------------------------------------------------------------------------

-- "state" holds the model's state value: for a variable-length state type
-- (jsonb, bytea, composite types) the value itself, so that a bytea state
-- reads back as the model returned it; for other types the bytes of the
-- value.  It is written in the same transaction that consumes the events
-- that produced it, which is what makes the effect of each event
-- exactly-once.
CREATE TABLE digitaltwin.twin_state (
    model_id    integer NOT NULL REFERENCES digitaltwin.models (id) ON DELETE CASCADE,
    twin_id     text COLLATE "C" NOT NULL,
    state       bytea NOT NULL,
    event_count bigint NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (model_id, twin_id)
) WITH (fillfactor = 50);   -- room for HOT updates: one update per twin per batch

COMMENT ON TABLE digitaltwin.twin_state IS
'Durable copy of every twin''s state, written with the consumption of its events; the shared-memory twins are rebuilt from it after a restart.';

--------------------------------------------------------------------------
-- Alerts and dead letters
--------------------------------------------------------------------------

CREATE TABLE digitaltwin.alerts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model       text NOT NULL,
    twin_id     text COLLATE "C" NOT NULL,
    severity    text NOT NULL,
    message     text NOT NULL,
    details     jsonb,
    event_id    bigint NOT NULL,
    raised_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX alerts_raised_at_idx ON digitaltwin.alerts (raised_at);

COMMENT ON TABLE digitaltwin.alerts IS
'Alerts raised by models with digitaltwin.alert(); each committed alert is also announced by NOTIFY digitaltwin_alerts.';

CREATE TABLE digitaltwin.dead_letters (
    event_id    bigint PRIMARY KEY,
    model       text NOT NULL,
    twin_id     text COLLATE "C" NOT NULL,
    payload     jsonb NOT NULL,
    error       text NOT NULL,
    sqlstate    text NOT NULL,
    enqueued_at timestamptz NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_failed_at_idx ON digitaltwin.dead_letters (failed_at);

COMMENT ON TABLE digitaltwin.dead_letters IS
'Events whose model raised an error (or whose model no longer exists), with the error; the twin''s state is as if the event never came.';

--------------------------------------------------------------------------
-- Model API
--------------------------------------------------------------------------

CREATE FUNCTION digitaltwin.create_model(name text, process regprocedure,
                                         init regprocedure DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_create_model'
LANGUAGE C;

COMMENT ON FUNCTION digitaltwin.create_model(text, regprocedure, regprocedure) IS
'Register a model: process(twin_id text, state S, event jsonb) RETURNS S, and optionally init(twin_id text) RETURNS S. The functions run as the calling role.';

CREATE FUNCTION digitaltwin.drop_model(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_drop_model'
LANGUAGE C;

COMMENT ON FUNCTION digitaltwin.drop_model(text) IS
'Unregister a model and forget its twins; its queued events are dead-lettered.';

CREATE FUNCTION digitaltwin.alert(severity text, message text, details jsonb DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_alert_sql'
LANGUAGE C;

COMMENT ON FUNCTION digitaltwin.alert(text, text, jsonb) IS
'Inside a model function: raise an alert for the current twin and event (committed with the event, then announced by NOTIFY digitaltwin_alerts).';

CREATE FUNCTION digitaltwin.wait_idle(timeout interval DEFAULT '60s')
RETURNS boolean
AS 'MODULE_PATHNAME', 'digitaltwin_wait_idle'
LANGUAGE C STRICT;

COMMENT ON FUNCTION digitaltwin.wait_idle(interval) IS
'Wait until every event committed before the call has been processed or dead-lettered and its twin published; false on timeout.';

CREATE FUNCTION digitaltwin.partition_of(twin_id text, partitions integer)
RETURNS integer
AS 'MODULE_PATHNAME', 'digitaltwin_partition_of'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION digitaltwin.partition_of(text, integer) IS
'The worker (0 .. partitions-1) that owns a twin id: every event of a twin goes to the same worker, which keeps the twin''s order.';

--------------------------------------------------------------------------
-- Live views
--------------------------------------------------------------------------

CREATE FUNCTION digitaltwin.twin_entries(
    OUT model_id integer,
    OUT twin_id text,
    OUT state jsonb,
    OUT event_count bigint,
    OUT updated_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'digitaltwin_twin_entries'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION digitaltwin.twin_entries() IS
'Every twin in shared memory, its state shown as jsonb; read through the view digitaltwin.twins.';

CREATE VIEW digitaltwin.twins AS
    SELECT m.name AS model, t.twin_id, t.state, t.event_count, t.updated_at
    FROM digitaltwin.twin_entries() t
    JOIN digitaltwin.models m ON m.id = t.model_id;

COMMENT ON VIEW digitaltwin.twins IS
'Live twins, read from shared memory while the workers run: model, twin_id, state (jsonb), event_count, updated_at.';

CREATE FUNCTION digitaltwin.worker_stats(
    OUT worker integer,
    OUT pid integer,
    OUT events_processed bigint,
    OUT events_per_second double precision,
    OUT dead_letters bigint,
    OUT alerts bigint,
    OUT batches bigint,
    OUT twins bigint,
    OUT memory_bytes bigint,
    OUT last_batch_at timestamptz,
    OUT last_error text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'digitaltwin_worker_stats'
LANGUAGE C STRICT VOLATILE;

COMMENT ON FUNCTION digitaltwin.worker_stats() IS
'Counters of each background worker, from shared memory; read through the view digitaltwin.stats.';

CREATE VIEW digitaltwin.stats AS
    WITH w AS (
        SELECT * FROM digitaltwin.worker_stats()
    ), q AS (
        SELECT digitaltwin.partition_of(e.twin_id,
                   greatest(current_setting('digitaltwin.workers', true)::integer, 1)) AS worker,
               count(*) AS queue_depth,
               min(e.enqueued_at) AS oldest
        FROM digitaltwin.events e
        GROUP BY 1
    )
    SELECT w.worker, w.pid, w.events_processed, w.events_per_second,
           coalesce(q.queue_depth, 0) AS queue_depth,
           now() - q.oldest AS oldest_event_age,
           w.dead_letters, w.alerts, w.twins, w.memory_bytes,
           w.last_batch_at, w.last_error
    FROM w LEFT JOIN q ON q.worker = w.worker
    UNION ALL
    SELECT NULL, NULL,
           (SELECT sum(events_processed) FROM w)::bigint,
           (SELECT sum(events_per_second) FROM w),
           (SELECT count(*) FROM digitaltwin.events),
           now() - (SELECT min(enqueued_at) FROM digitaltwin.events),
           (SELECT sum(dead_letters) FROM w)::bigint,
           (SELECT sum(alerts) FROM w)::bigint,
           (SELECT sum(twins) FROM w)::bigint,
           (SELECT sum(memory_bytes) FROM w)::bigint,
           (SELECT max(last_batch_at) FROM w),
           NULL;

COMMENT ON VIEW digitaltwin.stats IS
'One row per worker and a total row (worker IS NULL): events processed, rate, queue depth, oldest unprocessed event age, dead letters, alerts, twins in memory, shared memory used.';

--------------------------------------------------------------------------
-- Privileges: the queue is written through the API; state is internal.
--------------------------------------------------------------------------

REVOKE ALL ON digitaltwin.twin_state FROM PUBLIC;
GRANT SELECT ON digitaltwin.models TO PUBLIC;
GRANT SELECT ON digitaltwin.queue_state TO PUBLIC;
REVOKE ALL ON FUNCTION digitaltwin.create_model(text, regprocedure, regprocedure) FROM PUBLIC;
REVOKE ALL ON FUNCTION digitaltwin.drop_model(text) FROM PUBLIC;
