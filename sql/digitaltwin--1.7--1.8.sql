/* digitaltwin--1.7--1.8.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.8'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  An update that
-- altered a table a batch then waits for, and then waited itself for that
-- batch's lock on models, would deadlock with it; so the update takes
-- models whole before touching anything, once the transactions that use
-- it have ended, and holds it until it commits.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- Version 1.8: the life of a model (issue 16): versions, alter_model()
-- with a migration of the states, pause and resume.
--
-- A switch (alter_model, pause_model, resume_model) takes digitaltwin.models
-- in EXCLUSIVE mode.  Every worker batch holds it in ROW SHARE mode from
-- before its snapshot to its commit, so a switch waits for the batches in
-- flight and the batches after it see it whole: no event is applied under
-- a mix of versions, no state is half migrated.  Readers (ACCESS SHARE) are
-- not held up.
--------------------------------------------------------------------------

-- [section: versions]
ALTER TABLE digitaltwin.models
    ADD COLUMN version       integer NOT NULL DEFAULT 1,
    ADD COLUMN state_version integer NOT NULL DEFAULT 1,
    ADD COLUMN paused_at     timestamptz,
    ADD COLUMN paused        boolean GENERATED ALWAYS AS (paused_at IS NOT NULL) STORED;

COMMENT ON TABLE digitaltwin.models IS
'Registered twin models: the current version''s process (and optional init) function and state type.  Maintained by create_model(), alter_model(), pause_model(), resume_model() and drop_model(); every version is kept in digitaltwin.model_versions.';
COMMENT ON COLUMN digitaltwin.models.version IS 'Current version: 1 at create_model(), one more at each alter_model().';
COMMENT ON COLUMN digitaltwin.models.state_version IS 'Bumped by each alter_model() that migrated the states: tells a twin image of the current encoding from an older one.';
COMMENT ON COLUMN digitaltwin.models.paused_at IS 'When pause_model() paused the model; NULL while it runs.';
COMMENT ON COLUMN digitaltwin.models.paused IS 'Paused by pause_model(): its events are held in digitaltwin.held_events until resume_model().';

CREATE TABLE digitaltwin.model_versions (
    model_id    integer NOT NULL REFERENCES digitaltwin.models (id) ON DELETE CASCADE,
    model       text NOT NULL,
    version     integer NOT NULL,
    process     regprocedure NOT NULL,
    init        regprocedure,
    migrate     regprocedure,
    state_type  regtype NOT NULL,
    search_path text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  regrole NOT NULL,
    PRIMARY KEY (model_id, version)
);

COMMENT ON TABLE digitaltwin.model_versions IS
'Every version of every model: created by create_model() (version 1) and alter_model(); dropped with the model.';
COMMENT ON COLUMN digitaltwin.model_versions.model IS 'Name of the model.';
COMMENT ON COLUMN digitaltwin.model_versions.version IS 'Version number, from 1.';
COMMENT ON COLUMN digitaltwin.model_versions.process IS 'Process function of this version.';
COMMENT ON COLUMN digitaltwin.model_versions.init IS 'Init function of this version, if any.';
COMMENT ON COLUMN digitaltwin.model_versions.migrate IS 'Function that converted the states of the previous version into this one''s, if any.';
COMMENT ON COLUMN digitaltwin.model_versions.state_type IS 'State type of this version.';
COMMENT ON COLUMN digitaltwin.model_versions.search_path IS 'search_path its functions run with (that of the role that created the version).';
COMMENT ON COLUMN digitaltwin.model_versions.created_at IS 'When the version was created.';
COMMENT ON COLUMN digitaltwin.model_versions.created_by IS 'Role that created the version.';

INSERT INTO digitaltwin.model_versions
    (model_id, model, version, process, init, state_type, search_path, created_at, created_by)
SELECT id, name, 1, process, init, state_type, search_path, created_at, owner
FROM digitaltwin.models;

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.model_versions', '');
GRANT SELECT ON digitaltwin.model_versions TO PUBLIC;

ALTER TABLE digitaltwin.alerts ADD COLUMN model_version integer;
COMMENT ON COLUMN digitaltwin.alerts.model_version IS 'Version of the model that raised the alert (NULL before version 1.8).';
ALTER TABLE digitaltwin.dead_letters ADD COLUMN model_version integer;
COMMENT ON COLUMN digitaltwin.dead_letters.model_version IS 'Version of the model the event failed with (NULL if the model no longer existed, or before version 1.8).';

CREATE FUNCTION digitaltwin.alter_model(name text, process regprocedure DEFAULT NULL,
                                        init regprocedure DEFAULT NULL,
                                        migrate regprocedure DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'digitaltwin_alter_model'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.alter_model(text, regprocedure, regprocedure, regprocedure) IS
'Switches a model to new functions between two batches, keeping its twins, timers and queued events; migrate(twin_id text, old_state OLD) RETURNS NEW converts every state in the same transaction (required when the state type changes).  Returns the new version.  For the model''s owner and digitaltwin_admin.';

REVOKE ALL ON FUNCTION digitaltwin.alter_model(text, regprocedure, regprocedure, regprocedure) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.alter_model(text, regprocedure, regprocedure, regprocedure) TO digitaltwin_admin;

-- drop_model() gains 'force': a model with twins is not dropped by accident
DROP FUNCTION digitaltwin.drop_model(text);

CREATE FUNCTION digitaltwin.drop_model(name text, force boolean DEFAULT false)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_drop_model'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.drop_model(text, boolean) IS
'Drops a model with its versions, twins, timers and held events; a model that has twins or held events is dropped only with force => true.  To change a model and keep its twins, use alter_model().';

REVOKE ALL ON FUNCTION digitaltwin.drop_model(text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.drop_model(text, boolean) TO digitaltwin_admin;
-- DROP FUNCTION / DROP TYPE of what a model uses: the way out is a new
-- version now, or a forced drop
CREATE OR REPLACE FUNCTION digitaltwin.protect_model_objects()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    used record;
BEGIN
    SELECT d.object_type, d.object_identity, m.name AS model
    INTO used
    FROM pg_catalog.pg_event_trigger_dropped_objects() d
    JOIN digitaltwin.models m
      ON (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass
          AND (d.objid OPERATOR(pg_catalog.=) m.process::pg_catalog.oid
               OR d.objid OPERATOR(pg_catalog.=) m.init::pg_catalog.oid))
      OR (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass
          AND d.objid OPERATOR(pg_catalog.=) m.state_type::pg_catalog.oid)
    ORDER BY m.name
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot drop % % because digitaltwin model "%" uses it',
                        used.object_type, used.object_identity, used.model
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = pg_catalog.format('Switch the model to other functions first with digitaltwin.alter_model(%L, ...), or drop it with its twins: SELECT digitaltwin.drop_model(%L, force => true);',
                                           used.model, used.model);
    END IF;
END
$$;
-- [end section: versions]

-- [section: pause]
--------------------------------------------------------------------------
-- Pause.  The workers move the queued events of a paused model to
-- held_events (in the batch that would have applied them) instead of
-- calling the model: the queue partitions drain and rotate as for every
-- other model, and nothing is dead-lettered.  resume_model() puts them
-- back in the queue under their original ids, so they come before any
-- later event of the same twin.  Due timers of a paused model wait.
--------------------------------------------------------------------------
CREATE TABLE digitaltwin.held_events (
    id           bigint PRIMARY KEY,
    model_id     integer NOT NULL REFERENCES digitaltwin.models (id) ON DELETE CASCADE,
    model        text NOT NULL,
    twin_id      text COLLATE "C" NOT NULL,
    payload      jsonb,
    enqueued_at  timestamptz NOT NULL,
    depth        integer NOT NULL DEFAULT 0,
    event_time   timestamptz,
    sender_model text,
    sender_twin  text,
    retry_of     bigint,
    held_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX held_events_model_idx ON digitaltwin.held_events (model_id, id);

COMMENT ON TABLE digitaltwin.held_events IS
'Events of paused models (pause_model()), taken out of the queue by the workers and put back, under their original ids, by resume_model().';
COMMENT ON COLUMN digitaltwin.held_events.id IS 'The event''s id in the queue, which it gets back on resume.';
COMMENT ON COLUMN digitaltwin.held_events.held_at IS 'When a worker took the event out of the queue.';
COMMENT ON INDEX digitaltwin.held_events_model_idx IS 'The held events of one model in queue order, for resume_model().';

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.held_events', '');
GRANT SELECT ON digitaltwin.held_events TO digitaltwin_admin;

CREATE FUNCTION digitaltwin.pause_model(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_pause_model'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.pause_model(text) IS
'Pauses a model once the batches in flight have committed: its events are held (digitaltwin.held_events), its due timers wait, nothing is dead-lettered; other models go on.  For the model''s owner and digitaltwin_admin.';

CREATE FUNCTION digitaltwin.resume_model(name text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'digitaltwin_resume_model'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.resume_model(text) IS
'Resumes a paused model: its held events go back to the queue in their original order, ahead of its later events, and its timers fire.  Returns how many events were held.  For the model''s owner and digitaltwin_admin.';

REVOKE ALL ON FUNCTION digitaltwin.pause_model(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION digitaltwin.resume_model(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.pause_model(text) TO digitaltwin_admin;
GRANT EXECUTE ON FUNCTION digitaltwin.resume_model(text) TO digitaltwin_admin;
-- [end section: pause]

-- [section: event log and history]
--------------------------------------------------------------------------
-- Event log and history (opt-in per model).  The workers write them in the
-- batch's transaction: the events a batch applied to a model with an
-- event log, and the state each changed twin of a model with history had
-- at the end of the batch.  Both tables are partitioned by time; worker 0
-- creates the partitions ahead (digitaltwin.log_partition_interval wide)
-- and drops whole the partitions older than the longest keep of the
-- models using the table (src/partitions.c).  A row that finds no
-- partition (the first moments after set_event_log()) goes to the DEFAULT
-- partition, so a batch never fails for want of one.
--------------------------------------------------------------------------
ALTER TABLE digitaltwin.models
    ADD COLUMN event_log_keep interval CHECK (event_log_keep > '0'),
    ADD COLUMN history_keep   interval CHECK (history_keep > '0');

COMMENT ON COLUMN digitaltwin.models.event_log_keep IS 'How long processed events are kept in digitaltwin.event_log (set_event_log()); NULL: not logged.';
COMMENT ON COLUMN digitaltwin.models.history_keep IS 'How long past states are kept in digitaltwin.state_history (set_history()); NULL: no history.';

CREATE TABLE digitaltwin.event_log (
    event_id      bigint NOT NULL,
    model_id      integer NOT NULL,
    model         text NOT NULL,
    model_version integer NOT NULL,
    twin_id       text COLLATE "C" NOT NULL,
    kind          text NOT NULL,
    payload       jsonb,
    event_time    timestamptz NOT NULL,
    enqueued_at   timestamptz NOT NULL,
    sender_model  text,
    sender_twin   text,
    timer         text,
    retry_of      bigint,
    logged_at     timestamptz NOT NULL
) PARTITION BY RANGE (logged_at);

CREATE TABLE digitaltwin.event_log_default PARTITION OF digitaltwin.event_log DEFAULT;

COMMENT ON TABLE digitaltwin.event_log IS
'Events the workers applied to models with an event log (set_event_log()), written in the batch that applied them; partitioned by logged_at, old partitions dropped whole.';
COMMENT ON COLUMN digitaltwin.event_log.event_id IS 'The event''s id in the queue (for a timer, the id it was armed with).';
COMMENT ON COLUMN digitaltwin.event_log.model_version IS 'Version of the model that applied it.';
COMMENT ON COLUMN digitaltwin.event_log.kind IS 'event, message, timer or retry, as current_event().kind said.';
COMMENT ON COLUMN digitaltwin.event_log.logged_at IS 'Start of the batch that applied it (the partition key).';
COMMENT ON TABLE digitaltwin.event_log_default IS 'Rows of digitaltwin.event_log that no time partition covered yet.';

CREATE TABLE digitaltwin.state_history (
    model_id    integer NOT NULL,
    model       text NOT NULL,
    twin_id     text COLLATE "C" NOT NULL,
    state       jsonb,
    event_count bigint NOT NULL,
    valid_from  timestamptz NOT NULL
) PARTITION BY RANGE (valid_from);

CREATE TABLE digitaltwin.state_history_default PARTITION OF digitaltwin.state_history DEFAULT;
-- Each partition has its own index, not one of a partitioned index of the
-- parent: restoring a dump creates and attaches the partitions (the user's
-- tables) before their indexes, and a partitioned index of the
-- extension's would make ATTACH create one of the same name first.
CREATE INDEX state_history_default_twin_idx ON digitaltwin.state_history_default (model_id, twin_id, valid_from);

COMMENT ON TABLE digitaltwin.state_history IS
'Past states of the twins of models with history (set_history()): one row per twin changed by a batch, valid from the batch''s start until the twin''s next row; state NULL when the twin ended.  Partitioned by valid_from, old partitions dropped whole (the last state of each twin carried forward).';
COMMENT ON COLUMN digitaltwin.state_history.state IS 'The state as jsonb (to_jsonb() of a state of another type); NULL: the twin ended.';
COMMENT ON COLUMN digitaltwin.state_history.valid_from IS 'Start of the batch that produced the state (the partition key).';
COMMENT ON INDEX digitaltwin.state_history_default_twin_idx IS 'A twin''s states in time order (each time partition has the same), for twins_as_of() and twin_history.';
COMMENT ON TABLE digitaltwin.state_history_default IS 'Rows of digitaltwin.state_history that no time partition covered yet.';

CREATE TABLE digitaltwin.log_partitions (
    name      text PRIMARY KEY,
    parent    text NOT NULL CHECK (parent IN ('event_log', 'state_history')),
    from_time timestamptz NOT NULL,
    to_time   timestamptz NOT NULL CHECK (to_time > from_time)
);

COMMENT ON TABLE digitaltwin.log_partitions IS
'The time partitions of digitaltwin.event_log and digitaltwin.state_history that worker 0 created and will drop.';

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.event_log_default', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.state_history_default', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.log_partitions', '');

GRANT SELECT ON digitaltwin.event_log TO digitaltwin_admin;
GRANT SELECT ON digitaltwin.state_history TO digitaltwin_reader;

CREATE VIEW digitaltwin.twin_history AS
    SELECT h.model, h.twin_id, h.state, h.event_count, h.valid_from,
           pg_catalog.lead(h.valid_from) OVER w AS valid_to
    FROM digitaltwin.state_history h
    WINDOW w AS (PARTITION BY h.model_id, h.twin_id ORDER BY h.valid_from);

COMMENT ON VIEW digitaltwin.twin_history IS
'Each twin''s past states with their validity period [valid_from, valid_to), for charts: filter by model and twin_id.';
GRANT SELECT ON digitaltwin.twin_history TO digitaltwin_reader;

-- jit off: over a million rows the planner's costs call for JIT, whose
-- compilation took a second of the 2.3 s (docs/performance.md)
CREATE FUNCTION digitaltwin.twins_as_of(at timestamptz)
RETURNS TABLE (model text, twin_id text, state jsonb, event_count bigint, updated_at timestamptz)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $$
    SELECT h.model, h.twin_id, h.state, h.event_count, h.valid_from
    FROM (SELECT DISTINCT ON (s.model_id, s.twin_id) s.*
          FROM digitaltwin.state_history s
          WHERE s.valid_from OPERATOR(pg_catalog.<=) twins_as_of.at
          ORDER BY s.model_id, s.twin_id, s.valid_from DESC) h
    WHERE h.state IS NOT NULL
$$;

COMMENT ON FUNCTION digitaltwin.twins_as_of(timestamptz) IS
'The twins of the models with history as they were at a time (within the models'' history_keep), with the columns of digitaltwin.twins; updated_at is when that state was produced.';
REVOKE ALL ON FUNCTION digitaltwin.twins_as_of(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.twins_as_of(timestamptz) TO digitaltwin_reader;

CREATE FUNCTION digitaltwin.set_event_log(model text, keep interval)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_set_event_log'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.set_event_log(text, interval) IS
'Keeps the events the model processes in digitaltwin.event_log for at least keep (NULL: stop logging), from the next batch on.  For the model''s owner and digitaltwin_admin.';

CREATE FUNCTION digitaltwin.set_history(model text, keep interval)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_set_history'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.set_history(text, interval) IS
'Keeps every committed change of the model''s twins in digitaltwin.state_history for at least keep (NULL: stop); the twins'' current states are recorded at once.  For the model''s owner and digitaltwin_admin.';

REVOKE ALL ON FUNCTION digitaltwin.set_event_log(text, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION digitaltwin.set_history(text, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.set_event_log(text, interval) TO digitaltwin_admin;
GRANT EXECUTE ON FUNCTION digitaltwin.set_history(text, interval) TO digitaltwin_admin;
-- [end section: event log and history]

-- [section: rehearsal]
--------------------------------------------------------------------------
-- Rehearsal: a candidate version run over the logged events of a model,
-- in event order, in a sandbox (src/rehearsal.c).  Its twins, alerts,
-- outbox messages and failures go to the tables below, never to the live
-- ones; nothing is notified, nothing delivered; its timers fire in event
-- time; whatever the candidate writes to other tables is rolled back.
--------------------------------------------------------------------------
CREATE TABLE digitaltwin.rehearsals (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id          integer NOT NULL REFERENCES digitaltwin.models (id) ON DELETE CASCADE,
    model             text NOT NULL,
    candidate_process regprocedure NOT NULL,
    candidate_init    regprocedure,
    since             timestamptz,
    until             timestamptz,
    from_history      boolean NOT NULL,
    events            bigint NOT NULL DEFAULT 0,
    timers_fired      bigint NOT NULL DEFAULT 0,
    failed            bigint NOT NULL DEFAULT 0,
    created_by        regrole NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE digitaltwin.rehearsal_twins (
    rehearsal   bigint NOT NULL REFERENCES digitaltwin.rehearsals (id) ON DELETE CASCADE,
    twin_id     text COLLATE "C" NOT NULL,
    state       jsonb NOT NULL,
    event_count bigint NOT NULL,
    PRIMARY KEY (rehearsal, twin_id)
);

CREATE TABLE digitaltwin.rehearsal_alerts (
    rehearsal bigint NOT NULL REFERENCES digitaltwin.rehearsals (id) ON DELETE CASCADE,
    twin_id   text COLLATE "C" NOT NULL,
    event_id  bigint NOT NULL,
    severity  text NOT NULL,
    message   text NOT NULL,
    details   jsonb
);
CREATE INDEX rehearsal_alerts_idx ON digitaltwin.rehearsal_alerts (rehearsal, event_id);

CREATE TABLE digitaltwin.rehearsal_outbox (
    rehearsal bigint NOT NULL REFERENCES digitaltwin.rehearsals (id) ON DELETE CASCADE,
    twin_id   text COLLATE "C" NOT NULL,
    event_id  bigint NOT NULL,
    payload   jsonb NOT NULL
);
CREATE INDEX rehearsal_outbox_idx ON digitaltwin.rehearsal_outbox (rehearsal, event_id);

CREATE TABLE digitaltwin.rehearsal_dead_letters (
    rehearsal bigint NOT NULL REFERENCES digitaltwin.rehearsals (id) ON DELETE CASCADE,
    twin_id   text COLLATE "C" NOT NULL,
    event_id  bigint NOT NULL,
    error     text NOT NULL,
    sqlstate  text NOT NULL
);
CREATE INDEX rehearsal_dead_letters_idx ON digitaltwin.rehearsal_dead_letters (rehearsal, event_id);

COMMENT ON TABLE digitaltwin.rehearsals IS
'Rehearsals run by rehearse(): which candidate, over which events, how many were applied, fired or failed.';
COMMENT ON TABLE digitaltwin.rehearsal_twins IS 'The final state of each twin of a rehearsal (as jsonb).';
COMMENT ON TABLE digitaltwin.rehearsal_alerts IS 'The alerts a rehearsal''s candidate raised (never notified).';
COMMENT ON TABLE digitaltwin.rehearsal_outbox IS 'The messages to the data sources a rehearsal''s candidate sent (never delivered).';
COMMENT ON TABLE digitaltwin.rehearsal_dead_letters IS 'The events a rehearsal''s candidate failed on, with the error.';
COMMENT ON INDEX digitaltwin.rehearsal_alerts_idx IS 'A rehearsal''s alerts by event, for rehearsal_diff().';
COMMENT ON INDEX digitaltwin.rehearsal_outbox_idx IS 'A rehearsal''s messages by event.';
COMMENT ON INDEX digitaltwin.rehearsal_dead_letters_idx IS 'A rehearsal''s failures by event.';

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.rehearsals', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.rehearsals_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.rehearsal_twins', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.rehearsal_alerts', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.rehearsal_outbox', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.rehearsal_dead_letters', '');
GRANT SELECT, DELETE ON digitaltwin.rehearsals, digitaltwin.rehearsal_twins,
    digitaltwin.rehearsal_alerts, digitaltwin.rehearsal_outbox,
    digitaltwin.rehearsal_dead_letters TO digitaltwin_admin;

CREATE FUNCTION digitaltwin.rehearse(model text, candidate_process regprocedure,
                                     candidate_init regprocedure DEFAULT NULL,
                                     since timestamptz DEFAULT NULL,
                                     until timestamptz DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'digitaltwin_rehearse'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.rehearse(text, regprocedure, regprocedure, timestamptz, timestamptz) IS
'Runs a candidate version of a model over its logged events (set_event_log()) that the live model processed in [since, until), in event order, in a sandbox (digitaltwin.rehearsal_*); starts from the twins as of since when the model has a history, else empty.  Returns the rehearsal''s id.  For the model''s owner.';

REVOKE ALL ON FUNCTION digitaltwin.rehearse(text, regprocedure, regprocedure, timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.rehearse(text, regprocedure, regprocedure, timestamptz, timestamptz) TO digitaltwin_admin;

-- What the live model did with the same events, against the candidate:
-- alerts matched by event and severity (as multisets), and the final
-- states (live: as of the rehearsal's until with a history, else now).
CREATE FUNCTION digitaltwin.rehearsal_diff(rehearsal bigint)
RETURNS TABLE (twin_id text, kind text, event_id bigint, severity text, message text,
               live_state jsonb, candidate_state jsonb)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH r AS (
        SELECT * FROM digitaltwin.rehearsals x WHERE x.id OPERATOR(pg_catalog.=) rehearsal_diff.rehearsal
    ), ev AS (
        SELECT l.event_id FROM digitaltwin.event_log l, r
        WHERE l.model_id OPERATOR(pg_catalog.=) r.model_id
          AND (r.since IS NULL OR l.logged_at OPERATOR(pg_catalog.>=) r.since)
          AND (r.until IS NULL OR l.logged_at OPERATOR(pg_catalog.<) r.until)
    ), live AS (
        SELECT a.twin_id, a.event_id, a.severity, a.message,
               pg_catalog.row_number() OVER (PARTITION BY a.event_id, a.severity ORDER BY a.id) AS n
        FROM digitaltwin.alerts a, r
        WHERE a.model OPERATOR(pg_catalog.=) r.model
          AND a.event_id IN (SELECT ev.event_id FROM ev)
    ), cand AS (
        SELECT c.twin_id, c.event_id, c.severity, c.message,
               pg_catalog.row_number() OVER (PARTITION BY c.event_id, c.severity ORDER BY c.ctid) AS n
        FROM digitaltwin.rehearsal_alerts c
        WHERE c.rehearsal OPERATOR(pg_catalog.=) rehearsal_diff.rehearsal
    ), live_twins AS (
        SELECT t.twin_id, t.state FROM r, digitaltwin.twins_as_of(r.until) t
        WHERE r.until IS NOT NULL AND t.model OPERATOR(pg_catalog.=) r.model
        UNION ALL
        SELECT t.twin_id, t.state FROM r, digitaltwin.twins t
        WHERE r.until IS NULL AND t.model OPERATOR(pg_catalog.=) r.model
    )
    SELECT l.twin_id, 'live_only_alert', l.event_id, l.severity, l.message, NULL::jsonb, NULL::jsonb
    FROM live l
    WHERE NOT EXISTS (SELECT FROM cand c WHERE c.event_id OPERATOR(pg_catalog.=) l.event_id
                        AND c.severity OPERATOR(pg_catalog.=) l.severity AND c.n OPERATOR(pg_catalog.=) l.n)
    UNION ALL
    SELECT c.twin_id, 'candidate_only_alert', c.event_id, c.severity, c.message, NULL, NULL
    FROM cand c
    WHERE NOT EXISTS (SELECT FROM live l WHERE l.event_id OPERATOR(pg_catalog.=) c.event_id
                        AND l.severity OPERATOR(pg_catalog.=) c.severity AND l.n OPERATOR(pg_catalog.=) c.n)
    UNION ALL
    SELECT coalesce(lt.twin_id, ct.twin_id), 'state', NULL, NULL, NULL, lt.state, ct.state
    FROM live_twins lt
    FULL JOIN (SELECT x.twin_id, x.state FROM digitaltwin.rehearsal_twins x
               WHERE x.rehearsal OPERATOR(pg_catalog.=) rehearsal_diff.rehearsal) ct
      ON ct.twin_id OPERATOR(pg_catalog.=) lt.twin_id
    WHERE lt.state IS DISTINCT FROM ct.state
    ORDER BY 3 NULLS LAST, 2, 1
$$;

COMMENT ON FUNCTION digitaltwin.rehearsal_diff(bigint) IS
'What a rehearsal''s candidate did differently from the live model over the same events: alerts only the live model raised (live_only_alert), only the candidate (candidate_only_alert), matched by event and severity, and one ''state'' row per twin whose final states differ.';
REVOKE ALL ON FUNCTION digitaltwin.rehearsal_diff(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.rehearsal_diff(bigint) TO digitaltwin_admin;
-- [end section: rehearsal]
