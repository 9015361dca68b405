/* digitaltwin--1.9--1.10.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION digitaltwin UPDATE TO '1.10'" to load this file. \quit

-- Keep the workers out first: every batch locks digitaltwin.models
-- before anything else (and may have read it already).  Taking models
-- whole before touching anything, once the transactions that use it have
-- ended, and until the update commits, the ALTER TABLEs below (row level
-- security on alerts and dead letters) cannot deadlock with a batch.
LOCK TABLE digitaltwin.models IN ACCESS EXCLUSIVE MODE;

--------------------------------------------------------------------------
-- Per-model rights (issue 17, src/rights.c).  'send', 'read' and 'admin'
-- (which includes the other two) on one model; digitaltwin_writer,
-- digitaltwin_reader and digitaltwin_admin keep meaning every model.
-- Enforced in the events' CHECK (insert time), in the live views (the
-- twins of other models are left out, typed views included), by row
-- level security on alerts and dead_letters, in model_stats, and in the
-- functions that act on one model.
--------------------------------------------------------------------------

CREATE TABLE digitaltwin.model_grants (
    model_id    integer NOT NULL REFERENCES digitaltwin.models (id) ON DELETE CASCADE,
    grantee     regrole NOT NULL,
    privilege   text NOT NULL CHECK (privilege IN ('send', 'read', 'admin')),
    granted_by  regrole,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, grantee, privilege)
);

COMMENT ON TABLE digitaltwin.model_grants IS
'Rights of roles on single models, given by digitaltwin.grant_model() and taken back by revoke_model(); DROP ROLE is refused while a role has one, DROP OWNED BY removes them.';
COMMENT ON COLUMN digitaltwin.model_grants.privilege IS '''send'' (queue events), ''read'' (twins, alerts, statistics) or ''admin'' (both, and pause, resume, drop, reset_stats, retry_dead_letters, dead letters, granting).';

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.model_grants', '');
GRANT SELECT ON digitaltwin.model_grants TO PUBLIC;

-- grant_model() and revoke_model() are executable by everyone, as GRANT
-- is: they check that the caller administers the model.
CREATE FUNCTION digitaltwin.grant_model(model text, role regrole, privilege text)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_grant_model'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.grant_model(text, regrole, text) IS
'Gives a role ''send'', ''read'' or ''admin'' on one model, with the object privileges that right needs (schema usage, INSERT on the queue, SELECT on the views...).  For the model''s owner, its administrators and digitaltwin_admin.';

CREATE FUNCTION digitaltwin.revoke_model(model text, role regrole, privilege text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'digitaltwin_revoke_model'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.revoke_model(text, regrole, text) IS
'Takes back a right given by grant_model(); false if the role did not have it.  The object privileges stay: without a model right they show and accept nothing.  For the model''s owner, its administrators and digitaltwin_admin.';

CREATE FUNCTION digitaltwin._may_all(privilege text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'digitaltwin_may_all'
LANGUAGE C STABLE STRICT;

COMMENT ON FUNCTION digitaltwin._may_all(text) IS
'Internal: whether the current role has the privilege on every model (superuser, or member of digitaltwin_writer, digitaltwin_reader or digitaltwin_admin); for the row level security policies.';

CREATE FUNCTION digitaltwin._models_allowed(privilege text)
RETURNS text[]
AS 'MODULE_PATHNAME', 'digitaltwin_models_allowed'
LANGUAGE C STABLE STRICT;

COMMENT ON FUNCTION digitaltwin._models_allowed(text) IS
'Internal: the models on which the current role has the privilege; for the row level security policies.';

-- Each policy calls the functions once per query (sub-selects become
-- InitPlans), not once per row.  The workers and the extension's own
-- statements run as the tables' owner, to whom policies do not apply.
ALTER TABLE digitaltwin.alerts ENABLE ROW LEVEL SECURITY;
-- A model that has the name of a dropped one is another model: its owner
-- and grantees must not see what the dropped one left (alerts by time,
-- dead letters by model id, as retry_dead_letters() decides).
CREATE POLICY alerts_by_model ON digitaltwin.alerts
    USING ((SELECT digitaltwin._may_all('read'))
           OR (model = ANY ((SELECT digitaltwin._models_allowed('read'))::text[])
               AND EXISTS (SELECT FROM digitaltwin.models m
                           WHERE m.name = alerts.model
                             AND alerts.raised_at >= m.created_at)));
COMMENT ON POLICY alerts_by_model ON digitaltwin.alerts IS
'A role sees the alerts of the models it may read (digitaltwin_reader: all).';

ALTER TABLE digitaltwin.dead_letters ENABLE ROW LEVEL SECURITY;
CREATE POLICY dead_letters_by_model ON digitaltwin.dead_letters
    USING ((SELECT digitaltwin._may_all('admin'))
           OR (model = ANY ((SELECT digitaltwin._models_allowed('admin'))::text[])
               AND EXISTS (SELECT FROM digitaltwin.models m
                           WHERE m.name = dead_letters.model
                             AND (m.id = dead_letters.model_id
                                  OR (dead_letters.model_id IS NULL
                                      AND dead_letters.failed_at >= m.created_at)))));
COMMENT ON POLICY dead_letters_by_model ON digitaltwin.dead_letters IS
'A role sees the dead letters of the models it administers (digitaltwin_admin: all).';


--------------------------------------------------------------------------
-- Statistics per model (issue 17, src/model_stats.c).  The counters are
-- rows written by each batch in its own transaction, so they are exact
-- after a crash and survive restarts; a worker writes only its own rows
-- (model, worker), so batches never wait for each other on them.  What
-- happens between commits (the batch in flight, the rate) comes from
-- shared memory through _model_live_stats().
--------------------------------------------------------------------------

CREATE TABLE digitaltwin.model_counters (
    model_id          integer NOT NULL REFERENCES digitaltwin.models (id) ON DELETE CASCADE,
    worker            integer NOT NULL,
    events_processed  bigint NOT NULL DEFAULT 0,
    dead_letters      bigint NOT NULL DEFAULT 0,
    alerts            bigint NOT NULL DEFAULT 0,
    model_calls       bigint NOT NULL DEFAULT 0,
    model_time_ms     double precision NOT NULL DEFAULT 0,
    model_time_max_ms double precision NOT NULL DEFAULT 0,
    last_batch_at     timestamptz,
    last_error        text,
    last_error_at     timestamptz,
    stats_reset       timestamptz,
    PRIMARY KEY (model_id, worker)
) WITH (fillfactor = 50);   -- room for HOT updates: one update per batch

COMMENT ON TABLE digitaltwin.model_counters IS
'Committed statistics of each model, one row per worker: added to by each batch in its own transaction (exact after a crash); read through digitaltwin.model_stats.';
COMMENT ON COLUMN digitaltwin.model_counters.events_processed IS 'Events of the queue consumed: applied or dead-lettered (timer fires are model calls, not events).';
COMMENT ON COLUMN digitaltwin.model_counters.model_calls IS 'Events and timer fires whose model call returned (a call rolled back with a failing neighbour and run again counts twice).';
COMMENT ON COLUMN digitaltwin.model_counters.model_time_ms IS 'Time spent in the model''s functions (init and process) by those calls, in milliseconds.';
COMMENT ON COLUMN digitaltwin.model_counters.stats_reset IS 'The reset (model_stats_resets.reset_at) the row counts from (NULL: never reset).';

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.model_counters', '');

-- reset_stats() writes here, never into model_counters: a reset held in
-- an open transaction must not make a batch wait on a row lock (and with
-- it every model of its worker).  A counters row whose stats_reset is
-- older than its model's reset_at counts as zero, in the view and in the
-- batch that next adds to it (which then zeroes it).
CREATE TABLE digitaltwin.model_stats_resets (
    model_id  integer PRIMARY KEY REFERENCES digitaltwin.models (id) ON DELETE CASCADE,
    reset_at  timestamptz NOT NULL
);

COMMENT ON TABLE digitaltwin.model_stats_resets IS
'When reset_stats() last reset each model''s statistics; the counters older than that count as zero.';

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.model_stats_resets', '');

CREATE FUNCTION digitaltwin._model_live_stats(
    OUT model_id integer,
    OUT worker integer,
    OUT twins bigint,
    OUT events_in_flight bigint,
    OUT events_per_second double precision)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'digitaltwin_model_live_stats'
LANGUAGE C VOLATILE STRICT;

COMMENT ON FUNCTION digitaltwin._model_live_stats() IS
'Internal: per model and worker, what shared memory knows between commits (twins, events applied by the batch in flight, rate); read through the view digitaltwin.model_stats.';

REVOKE ALL ON FUNCTION digitaltwin._model_live_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin._model_live_stats() TO digitaltwin_reader;

-- (the view filters by the per-model rights of the section below)
-- security_barrier: without it the planner may run a caller's function
-- (cheap, or pushed down into the counters' aggregate as a HAVING clause)
-- on the rows of the models the WHERE clause leaves out, and so show
-- their last_error and counters to a role that may read one model.
CREATE VIEW digitaltwin.model_stats WITH (security_barrier) AS
    WITH k AS (
        -- a row older than its model's last reset counts as zero
        SELECT c.*, r.reset_at IS NOT NULL
                    AND (c.stats_reset IS NULL OR c.stats_reset < r.reset_at) AS stale
        FROM digitaltwin.model_counters c
        LEFT JOIN digitaltwin.model_stats_resets r ON r.model_id = c.model_id
    ), c AS (
        SELECT model_id,
               coalesce(sum(events_processed) FILTER (WHERE NOT stale), 0)::bigint AS events_processed,
               coalesce(sum(dead_letters) FILTER (WHERE NOT stale), 0)::bigint AS dead_letters,
               coalesce(sum(alerts) FILTER (WHERE NOT stale), 0)::bigint AS alerts,
               coalesce(sum(model_calls) FILTER (WHERE NOT stale), 0)::bigint AS model_calls,
               sum(model_time_ms) FILTER (WHERE NOT stale) AS model_time_ms,
               max(model_time_max_ms) FILTER (WHERE NOT stale) AS model_time_max,
               max(last_batch_at) AS last_batch_at,
               (array_agg(last_error ORDER BY last_error_at DESC NULLS LAST)
                    FILTER (WHERE NOT stale))[1] AS last_error,
               max(last_error_at) FILTER (WHERE NOT stale) AS last_error_at
        FROM k
        GROUP BY model_id
    ), l AS (
        SELECT model_id,
               sum(twins)::bigint AS twins,
               sum(events_in_flight)::bigint AS events_in_flight,
               sum(events_per_second) AS events_per_second
        FROM digitaltwin._model_live_stats()
        GROUP BY model_id
    ), q AS (
        SELECT model, count(*) AS depth, min(enqueued_at) AS oldest
        FROM digitaltwin.events
        GROUP BY model
    ), h AS (
        SELECT model_id, count(*) AS depth, min(enqueued_at) AS oldest
        FROM digitaltwin.held_events
        GROUP BY model_id
    )
    SELECT m.name AS model,
           coalesce(c.events_processed, 0) AS events_processed,
           coalesce(l.events_per_second, 0) AS events_per_second,
           coalesce(q.depth, 0) + coalesce(h.depth, 0) AS queue_depth,
           now() - least(q.oldest, h.oldest) AS oldest_event_age,
           coalesce(c.dead_letters, 0) AS dead_letters,
           coalesce(c.alerts, 0) AS alerts,
           coalesce(l.twins, 0) AS twins,
           CASE WHEN c.model_calls > 0 THEN c.model_time_ms / c.model_calls END AS model_time_avg,
           c.model_time_max,
           c.last_batch_at,
           c.last_error,
           m.paused,
           coalesce(l.events_in_flight, 0) AS events_in_flight,
           coalesce(c.model_calls, 0) AS model_calls,
           c.last_error_at,
           coalesce(r.reset_at, m.created_at) AS stats_since
    FROM digitaltwin.models m
    LEFT JOIN digitaltwin.model_stats_resets r ON r.model_id = m.id
    LEFT JOIN c ON c.model_id = m.id
    LEFT JOIN l ON l.model_id = m.id
    LEFT JOIN q ON q.model = m.name
    LEFT JOIN h ON h.model_id = m.id
    -- the models the caller may read (rights.c; once per query)
    WHERE (SELECT digitaltwin._may_all('read'))
       OR m.name = ANY ((SELECT digitaltwin._models_allowed('read'))::text[]);

COMMENT ON VIEW digitaltwin.model_stats IS
'One row per model: events consumed (applied or dead-lettered), dead letters, alerts and model time since the model was created or its statistics reset (stats_since), committed with the batches (exact after a crash); events_in_flight, events_per_second and twins from shared memory (they move while a batch runs); queue_depth and oldest_event_age over the queue and the held events of a paused model.  Times in milliseconds.';
COMMENT ON COLUMN digitaltwin.model_stats.events_processed IS 'Events consumed by committed batches: applied or dead-lettered.';
COMMENT ON COLUMN digitaltwin.model_stats.events_in_flight IS 'Events applied so far by batches not yet committed (not in events_processed).';
COMMENT ON COLUMN digitaltwin.model_stats.events_per_second IS 'Rate of the model''s events over the last second or so, batches in flight included.';
COMMENT ON COLUMN digitaltwin.model_stats.queue_depth IS 'Events of the model waiting: in the queue, and held while it is paused.';
COMMENT ON COLUMN digitaltwin.model_stats.model_time_avg IS 'Mean time of a model call (init and process), in milliseconds.';
COMMENT ON COLUMN digitaltwin.model_stats.model_time_max IS 'Longest model call, in milliseconds.';
COMMENT ON COLUMN digitaltwin.model_stats.last_error IS 'Error of the model''s last dead letter, with its SQLSTATE.';
COMMENT ON COLUMN digitaltwin.model_stats.stats_since IS 'Since when the counters count: the model''s creation or the last reset_stats().';

GRANT SELECT ON digitaltwin.model_stats TO digitaltwin_reader;

CREATE FUNCTION digitaltwin.reset_stats(model text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'digitaltwin_reset_stats'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.reset_stats(text) IS
'Zeroes the statistics of one model (digitaltwin.model_stats; for its owner, its administrators and digitaltwin_admin), or with no argument of every model and the workers'' counters of digitaltwin.stats (for digitaltwin_admin).  It records the reset in model_stats_resets and never waits for, nor holds up, the workers.  The workers'' counters are in shared memory: their reset is not undone by a rollback.';

REVOKE ALL ON FUNCTION digitaltwin.reset_stats(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION digitaltwin.reset_stats(text) TO digitaltwin_admin;


-- retry_dead_letters() checks the caller's right on the model, which a
-- SECURITY DEFINER function cannot see: it is in C now (alerts.c), and
-- runs its statement as the tables' owner after the check.
CREATE OR REPLACE FUNCTION digitaltwin.retry_dead_letters(model text DEFAULT NULL, event_ids bigint[] DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'digitaltwin_retry_dead_letters'
LANGUAGE C VOLATILE;

COMMENT ON FUNCTION digitaltwin.retry_dead_letters(text, bigint[]) IS
'Queues dead letters again (of one model, or all with model NULL; those whose event_id or original_id is in event_ids, or all), oldest first, keeping their event time; the model sees them with current_event().kind = ''retry'' and retry_of = the original id.  Returns how many.  For digitaltwin_admin (every model) and a model''s administrators (that model).';

--------------------------------------------------------------------------
-- Scale-out, first part (issue 18, src/cluster.c): a coordinator routes
-- events by twin id to N nodes with PostgreSQL's own hash partitioning
-- and postgres_fdw foreign partitions; each node refuses the events of
-- twins it does not own; the coordinator reads every node's twins and
-- alerts through foreign partitions (aggregates are pushed down per node).
-- The objects made at run time (servers, foreign partitions) live in the
-- schema digitaltwin_cluster; DROP EXTENSION on a coordinator is refused
-- without CASCADE (protect.c) rather than silently dropping its foreign
-- partitions.
--------------------------------------------------------------------------

-- On every node: its name, and the hash partitions of the twin id it owns
-- (written by the coordinator's cluster_add_node() and cluster_setup()).
CREATE TABLE digitaltwin.cluster_node_name (
    name text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$')
);
CREATE UNIQUE INDEX cluster_node_name_one ON digitaltwin.cluster_node_name ((true));
COMMENT ON TABLE digitaltwin.cluster_node_name IS
'On a node of a cluster: its name (one row, written by the coordinator''s cluster_add_node()).';
COMMENT ON INDEX digitaltwin.cluster_node_name_one IS 'A node has one name.';

CREATE TABLE digitaltwin.cluster_shard (
    modulus   integer NOT NULL CHECK (modulus > 0),
    remainder integer NOT NULL,
    PRIMARY KEY (modulus, remainder),
    CHECK (remainder >= 0 AND remainder < modulus)
);
COMMENT ON TABLE digitaltwin.cluster_shard IS
'On a node of a cluster: the hash partitions of the twin id it owns (FOR VALUES WITH (MODULUS, REMAINDER) of the coordinator''s digitaltwin.cluster_events).  When it has rows, the node refuses events of other twins (23514).';

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.cluster_node_name', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.cluster_shard', '');

-- what the coordinator reads of a node, with the node's name
CREATE VIEW digitaltwin.cluster_local_twins AS
    SELECT (SELECT n.name FROM digitaltwin.cluster_node_name n) AS node, t.*
    FROM digitaltwin.twins t;
COMMENT ON VIEW digitaltwin.cluster_local_twins IS
'On a node: digitaltwin.twins with the node''s name first; the coordinator''s digitaltwin.cluster_twins reads it.';
GRANT SELECT ON digitaltwin.cluster_local_twins TO digitaltwin_reader;

-- as the querying (remote) role: the alerts' row level security applies
CREATE VIEW digitaltwin.cluster_local_alerts WITH (security_invoker = true) AS
    SELECT (SELECT n.name FROM digitaltwin.cluster_node_name n) AS node,
           a.id, a.model, a.twin_id, a.severity, a.message, a.details, a.event_id, a.raised_at
    FROM digitaltwin.alerts a;
COMMENT ON VIEW digitaltwin.cluster_local_alerts IS
'On a node: digitaltwin.alerts with the node''s name first; the coordinator''s digitaltwin.cluster_alerts reads it.';
GRANT SELECT ON digitaltwin.cluster_local_alerts TO digitaltwin_reader;

CREATE VIEW digitaltwin.cluster_local_stats AS
    SELECT (SELECT n.name FROM digitaltwin.cluster_node_name n) AS node, s.*
    FROM digitaltwin.stats s
    WHERE s.database = pg_catalog.current_database();
COMMENT ON VIEW digitaltwin.cluster_local_stats IS
'On a node: its rows of digitaltwin.stats (its workers and their total) with the node''s name first; the coordinator''s digitaltwin.cluster_stats reads it.';
GRANT SELECT ON digitaltwin.cluster_local_stats TO digitaltwin_reader;

CREATE VIEW digitaltwin.cluster_local_model_stats AS
    SELECT (SELECT n.name FROM digitaltwin.cluster_node_name n) AS node, s.*
    FROM digitaltwin.model_stats s;
COMMENT ON VIEW digitaltwin.cluster_local_model_stats IS
'On a node: digitaltwin.model_stats with the node''s name first; the coordinator''s digitaltwin.cluster_model_stats reads it.';
GRANT SELECT ON digitaltwin.cluster_local_model_stats TO digitaltwin_reader;

-- On the coordinator.
CREATE TABLE digitaltwin.cluster_nodes (
    name    text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    host    text NOT NULL,
    port    integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    dbname  text NOT NULL,
    server  name NOT NULL UNIQUE,
    added_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE digitaltwin.cluster_nodes IS
'On a coordinator: the nodes registered by cluster_add_node(), each with its postgres_fdw server (in schema digitaltwin_cluster).';

CREATE TABLE digitaltwin.cluster_map (
    partition integer PRIMARY KEY CHECK (partition >= 0),
    modulus   integer NOT NULL CHECK (partition < modulus),
    node      text NOT NULL REFERENCES digitaltwin.cluster_nodes (name)
);
COMMENT ON TABLE digitaltwin.cluster_map IS
'On a coordinator: which node owns each hash partition of the twin id (written by cluster_setup()).';

SELECT pg_catalog.pg_extension_config_dump('digitaltwin.cluster_nodes', '');
SELECT pg_catalog.pg_extension_config_dump('digitaltwin.cluster_map', '');

CREATE VIEW digitaltwin.cluster_partitions AS
    SELECT partition, node FROM digitaltwin.cluster_map;
COMMENT ON VIEW digitaltwin.cluster_partitions IS
'Partition p of digitaltwin.cluster_events (FOR VALUES WITH (MODULUS n, REMAINDER p)) and the node that owns it.';

-- Insert here (single or multi-row) to route each event to its node.
CREATE TABLE digitaltwin.cluster_events (
    model      text,
    twin_id    text COLLATE "C",
    payload    jsonb,
    -- postgres_fdw sends every column: the nodes' default (the insert
    -- time) is given here
    event_time timestamptz NOT NULL DEFAULT now()
) PARTITION BY HASH (twin_id);
COMMENT ON TABLE digitaltwin.cluster_events IS
'On a coordinator: INSERT events here (model, twin_id, payload, event_time); each goes to the digitaltwin.events of the node that owns its twin id''s hash partition.';

CREATE TABLE digitaltwin.cluster_twins (
    node        text,
    model       text,
    twin_id     text COLLATE "C",
    state       jsonb,
    event_count bigint,
    updated_at  timestamptz
) PARTITION BY LIST (node);
COMMENT ON TABLE digitaltwin.cluster_twins IS
'On a coordinator: the twins of every node (one foreign partition per node, read from its digitaltwin.cluster_local_twins); a missing node is an error, not a silent gap.';

CREATE TABLE digitaltwin.cluster_alerts (
    node      text,
    id        bigint,
    model     text,
    twin_id   text COLLATE "C",
    severity  text,
    message   text,
    details   jsonb,
    event_id  bigint,
    raised_at timestamptz
) PARTITION BY LIST (node);
COMMENT ON TABLE digitaltwin.cluster_alerts IS
'On a coordinator: the alerts of every node (one foreign partition per node).';

CREATE TABLE digitaltwin.cluster_stats (
    node text, worker integer, pid integer, events_processed bigint,
    events_per_second double precision, queue_depth bigint, oldest_event_age interval,
    dead_letters bigint, alerts bigint, twins bigint, memory_bytes bigint,
    last_batch_at timestamptz, last_error text, database text, status text
) PARTITION BY LIST (node);
COMMENT ON TABLE digitaltwin.cluster_stats IS
'On a coordinator: digitaltwin.stats of every node (its workers and their total), one foreign partition per node.';

CREATE TABLE digitaltwin.cluster_model_stats (
    node text, model text, events_processed bigint, events_per_second double precision,
    queue_depth bigint, oldest_event_age interval, dead_letters bigint, alerts bigint,
    twins bigint, model_time_avg double precision, model_time_max double precision,
    last_batch_at timestamptz, last_error text, paused boolean, events_in_flight bigint,
    model_calls bigint, last_error_at timestamptz, stats_since timestamptz
) PARTITION BY LIST (node);
COMMENT ON TABLE digitaltwin.cluster_model_stats IS
'On a coordinator: digitaltwin.model_stats of every node, one foreign partition per node; sum over node for the cluster''s figures.';

REVOKE ALL ON digitaltwin.cluster_stats, digitaltwin.cluster_model_stats FROM PUBLIC;
GRANT SELECT ON digitaltwin.cluster_stats, digitaltwin.cluster_model_stats TO digitaltwin_reader;

REVOKE ALL ON digitaltwin.cluster_events, digitaltwin.cluster_twins, digitaltwin.cluster_alerts FROM PUBLIC;
GRANT INSERT ON digitaltwin.cluster_events TO digitaltwin_writer;
GRANT SELECT ON digitaltwin.cluster_twins, digitaltwin.cluster_alerts, digitaltwin.cluster_partitions TO digitaltwin_reader;
-- cluster_node_of() reads the map as its caller
GRANT SELECT ON digitaltwin.cluster_map TO digitaltwin_reader, digitaltwin_writer;

CREATE FUNCTION digitaltwin.cluster_add_node(name text, host text, port integer,
                                             dbname text DEFAULT current_database())
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    server name := 'digitaltwin_node_' || cluster_add_node.name;
    twins bigint;
BEGIN
    IF cluster_add_node.name IS NULL OR cluster_add_node.name !~ '^[a-z][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'invalid node name %', coalesce(quote_literal(cluster_add_node.name), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'A node name is a lower-case letter followed by up to 39 lower-case letters, digits or underscores.';
    END IF;
    IF EXISTS (SELECT FROM digitaltwin.cluster_map) THEN
        RAISE EXCEPTION 'the cluster is already set up'
            USING ERRCODE = '55000',
                  DETAIL = 'Adding a node to a cluster in use would move partitions; that is not available yet.';
    END IF;
    -- the schema's objects are written as superuser (cluster_setup()): a
    -- schema someone else made first could hold their own "shard_" table
    -- with a trigger in place of ours
    IF EXISTS (SELECT FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
               WHERE n.nspname = 'digitaltwin_cluster' AND NOT r.rolsuper) THEN
        RAISE EXCEPTION 'schema digitaltwin_cluster is not owned by a superuser'
            USING ERRCODE = '42501',
                  HINT = 'Drop it or give it to a superuser: the cluster''s objects live there.';
    END IF;
    CREATE SCHEMA IF NOT EXISTS digitaltwin_cluster;
    IF EXISTS (SELECT FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
               WHERE e.extname IN ('postgres_fdw', 'dblink') AND n.nspname <> 'digitaltwin_cluster') THEN
        RAISE EXCEPTION 'postgres_fdw or dblink is installed in another schema'
            USING ERRCODE = '55000',
                  HINT = 'Move it with ALTER EXTENSION ... SET SCHEMA digitaltwin_cluster.';
    END IF;
    CREATE EXTENSION IF NOT EXISTS postgres_fdw SCHEMA digitaltwin_cluster;
    CREATE EXTENSION IF NOT EXISTS dblink SCHEMA digitaltwin_cluster;
    EXECUTE format('CREATE SERVER %I FOREIGN DATA WRAPPER postgres_fdw '
                   'OPTIONS (host %L, port %L, dbname %L, batch_size %L, async_capable %L, fetch_size %L)',
                   server, host, port::text, dbname, '100', 'true', '10000');
    -- each local role connects as the remote role of the same name
    EXECUTE format('CREATE USER MAPPING FOR PUBLIC SERVER %I', server);
    INSERT INTO digitaltwin.cluster_nodes (name, host, port, dbname, server)
    VALUES (cluster_add_node.name, host, port, dbname, server);
    -- a node starts empty: twins made before the routing might be of
    -- partitions another node will own, and get a second copy there
    SELECT r.n INTO twins
    FROM digitaltwin_cluster.dblink(server::text,
             'SELECT (SELECT count(*) FROM digitaltwin.twin_state) + '
             '(SELECT count(*) FROM digitaltwin.events) + '
             '(SELECT count(*) FROM digitaltwin.held_events) + '
             '(SELECT count(*) FROM digitaltwin.timer_state)') AS r(n bigint);
    IF twins > 0 THEN
        RAISE EXCEPTION 'node % already has twins, events or timers', cluster_add_node.name
            USING ERRCODE = '55000',
                  HINT = 'A node joins a cluster empty; drop its models, or start from a new database.';
    END IF;

    EXECUTE format('CREATE FOREIGN TABLE digitaltwin_cluster.%I (name text) SERVER %I '
                   'OPTIONS (schema_name %L, table_name %L)',
                   'node_name_' || cluster_add_node.name, server, 'digitaltwin', 'cluster_node_name');
    EXECUTE format('CREATE FOREIGN TABLE digitaltwin_cluster.%I (modulus integer, remainder integer) SERVER %I '
                   'OPTIONS (schema_name %L, table_name %L)',
                   'shard_' || cluster_add_node.name, server, 'digitaltwin', 'cluster_shard');
    EXECUTE format('CREATE FOREIGN TABLE digitaltwin_cluster.%I PARTITION OF digitaltwin.cluster_twins '
                   'FOR VALUES IN (%L) SERVER %I OPTIONS (schema_name %L, table_name %L)',
                   'twins_' || cluster_add_node.name, cluster_add_node.name, server,
                   'digitaltwin', 'cluster_local_twins');
    EXECUTE format('CREATE FOREIGN TABLE digitaltwin_cluster.%I PARTITION OF digitaltwin.cluster_alerts '
                   'FOR VALUES IN (%L) SERVER %I OPTIONS (schema_name %L, table_name %L)',
                   'alerts_' || cluster_add_node.name, cluster_add_node.name, server,
                   'digitaltwin', 'cluster_local_alerts');
    EXECUTE format('CREATE FOREIGN TABLE digitaltwin_cluster.%I PARTITION OF digitaltwin.cluster_stats '
                   'FOR VALUES IN (%L) SERVER %I OPTIONS (schema_name %L, table_name %L)',
                   'stats_' || cluster_add_node.name, cluster_add_node.name, server,
                   'digitaltwin', 'cluster_local_stats');
    EXECUTE format('CREATE FOREIGN TABLE digitaltwin_cluster.%I PARTITION OF digitaltwin.cluster_model_stats '
                   'FOR VALUES IN (%L) SERVER %I OPTIONS (schema_name %L, table_name %L)',
                   'model_stats_' || cluster_add_node.name, cluster_add_node.name, server,
                   'digitaltwin', 'cluster_local_model_stats');
    -- the node learns its name (and that it owns nothing yet)
    EXECUTE format('DELETE FROM digitaltwin_cluster.%I', 'node_name_' || cluster_add_node.name);
    EXECUTE format('INSERT INTO digitaltwin_cluster.%I (name) VALUES (%L)',
                   'node_name_' || cluster_add_node.name, cluster_add_node.name);
    EXECUTE format('DELETE FROM digitaltwin_cluster.%I', 'shard_' || cluster_add_node.name);
END
$$;
COMMENT ON FUNCTION digitaltwin.cluster_add_node(text, text, integer, text) IS
'On a coordinator: registers a node (a postgres_fdw server with a user mapping for PUBLIC, in schema digitaltwin_cluster), its partitions of cluster_twins and cluster_alerts, and tells the node its name.  Before cluster_setup().  For superusers.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_add_node(text, text, integer, text) FROM PUBLIC;

CREATE FUNCTION digitaltwin.cluster_setup(partitions integer DEFAULT 32)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    nodes text[] := ARRAY(SELECT n.name FROM digitaltwin.cluster_nodes n ORDER BY n.name);
    node text;
    p integer;
BEGIN
    IF cardinality(nodes) = 0 THEN
        RAISE EXCEPTION 'the cluster has no nodes'
            USING ERRCODE = '55000', HINT = 'Register them with digitaltwin.cluster_add_node() first.';
    END IF;
    IF partitions IS NULL OR partitions < cardinality(nodes) OR partitions > 4096 THEN
        RAISE EXCEPTION 'partitions must be between the number of nodes (%) and 4096', cardinality(nodes)
            USING ERRCODE = '22023',
                  HINT = 'Use many more partitions than nodes (32 for up to 8 nodes), so that growing moves whole partitions.';
    END IF;
    IF EXISTS (SELECT FROM digitaltwin.cluster_map) THEN
        RAISE EXCEPTION 'the cluster is already set up' USING ERRCODE = '55000';
    END IF;
    FOR p IN 0 .. partitions - 1 LOOP
        node := nodes[1 + p % cardinality(nodes)];
        EXECUTE format('CREATE FOREIGN TABLE digitaltwin_cluster.%I PARTITION OF digitaltwin.cluster_events '
                       'FOR VALUES WITH (MODULUS %s, REMAINDER %s) SERVER %I '
                       'OPTIONS (schema_name %L, table_name %L)',
                       'events_p' || p, partitions, p,
                       (SELECT n.server FROM digitaltwin.cluster_nodes n WHERE n.name = node),
                       'digitaltwin', 'events');
        INSERT INTO digitaltwin.cluster_map (partition, modulus, node) VALUES (p, partitions, node);
    END LOOP;
    -- each node learns what it owns, and from then on refuses the rest
    FOREACH node IN ARRAY nodes LOOP
        EXECUTE format('DELETE FROM digitaltwin_cluster.%I', 'shard_' || node);
        EXECUTE format('INSERT INTO digitaltwin_cluster.%I (modulus, remainder) '
                       'SELECT m.modulus, m.partition FROM digitaltwin.cluster_map m WHERE m.node = %L',
                       'shard_' || node, node);
    END LOOP;
    RETURN partitions;
END
$$;
COMMENT ON FUNCTION digitaltwin.cluster_setup(integer) IS
'On a coordinator: creates the routing, partitions hash partitions of the twin id (foreign partitions of digitaltwin.cluster_events, spread over the nodes in turn), and tells each node which it owns.  Returns the number of partitions.  For superusers.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_setup(integer) FROM PUBLIC;

CREATE FUNCTION digitaltwin.cluster_wait_idle(timeout interval DEFAULT '60s')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n record;
    idle boolean;
    all_idle boolean := true;
BEGIN
    -- dblink, not postgres_fdw: wait_idle() cannot run in the REPEATABLE
    -- READ transactions postgres_fdw opens on the nodes
    FOR n IN SELECT c.name, c.server FROM digitaltwin.cluster_nodes c ORDER BY c.name LOOP
        SELECT r.idle INTO idle
        FROM digitaltwin_cluster.dblink(n.server::text,
                 format('SELECT digitaltwin.wait_idle(%L)', timeout)) AS r(idle boolean);
        all_idle := all_idle AND idle;
    END LOOP;
    RETURN all_idle;
END
$$;
COMMENT ON FUNCTION digitaltwin.cluster_wait_idle(interval) IS
'On a coordinator: waits on every node, in turn, until the events committed there before the call are processed; false if one timed out.  For superusers.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_wait_idle(interval) FROM PUBLIC;

CREATE FUNCTION digitaltwin.cluster_partition_of(twin_id text, modulus integer)
RETURNS integer
AS 'MODULE_PATHNAME', 'digitaltwin_cluster_partition_of'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION digitaltwin.cluster_partition_of(text, integer) IS
'The hash partition (REMAINDER) of a twin id among modulus partitions, as digitaltwin.cluster_events routes it and a node''s guard checks it.';

CREATE FUNCTION digitaltwin.cluster_shard_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'digitaltwin_cluster_shard_changed'
LANGUAGE C;
COMMENT ON FUNCTION digitaltwin.cluster_shard_changed() IS
'Internal: after a change of digitaltwin.cluster_shard, every backend of the node reloads the partitions it owns.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_shard_changed() FROM PUBLIC;

CREATE TRIGGER cluster_shard_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON digitaltwin.cluster_shard
    FOR EACH STATEMENT EXECUTE FUNCTION digitaltwin.cluster_shard_changed();
COMMENT ON TRIGGER cluster_shard_changed ON digitaltwin.cluster_shard IS
'A node''s guard reads the shard from a cache: a change drops it in every backend.';

-- A twin id lookup that reads one node only: WHERE twin_id = x AND node =
-- digitaltwin.cluster_node_of(x) lets the executor prune the other nodes'
-- partitions at its start (the function is STABLE), and the node answers
-- with one hash lookup.
CREATE FUNCTION digitaltwin.cluster_node_of(twin_id text)
RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT m.node FROM digitaltwin.cluster_map m
    WHERE m.partition OPERATOR(pg_catalog.=)
          digitaltwin.cluster_partition_of(twin_id, m.modulus)
$$;
COMMENT ON FUNCTION digitaltwin.cluster_node_of(text) IS
'On a coordinator: the node that owns a twin id (NULL before cluster_setup()).  Add node = digitaltwin.cluster_node_of(id) to a lookup by twin id so that only that node is asked.';

-- The same statements on every node, all or nothing: each node runs them
-- in a transaction that it prepares (two-phase commit); only when every
-- node has prepared are they committed, else every prepared one is rolled
-- back.  Needs max_prepared_transactions > 0 on the nodes.  dblink, not
-- postgres_fdw, which runs no arbitrary statement.
CREATE FUNCTION digitaltwin.cluster_exec(sql text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n record;
    -- the node's name in it too: nodes may be databases of one instance
    gid_prefix text := format('digitaltwin_exec_%s_%s', txid_current(),
                              (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);
    opened text[] := '{}';
    failed text[] := '{}';
    c text;
    tag text;
BEGIN
    IF sql IS NULL THEN
        RAISE EXCEPTION 'sql must not be null' USING ERRCODE = '22004';
    END IF;
    IF NOT EXISTS (SELECT FROM digitaltwin.cluster_nodes) THEN
        RAISE EXCEPTION 'the cluster has no nodes'
            USING ERRCODE = '55000', HINT = 'Register them with digitaltwin.cluster_add_node() first.';
    END IF;
    BEGIN
        FOR n IN SELECT c2.name, c2.server FROM digitaltwin.cluster_nodes c2 ORDER BY c2.name LOOP
            c := 'digitaltwin_exec_' || n.name;
            IF c = ANY (coalesce(digitaltwin_cluster.dblink_get_connections(), '{}')) THEN
                PERFORM digitaltwin_cluster.dblink_disconnect(c);
            END IF;
            PERFORM digitaltwin_cluster.dblink_connect(c, n.server::text);
            opened := opened || c;
            PERFORM digitaltwin_cluster.dblink_exec(c, 'BEGIN');
            PERFORM digitaltwin_cluster.dblink_exec(c, sql);
            -- a COMMIT or ROLLBACK in sql would make this prepare nothing
            tag := digitaltwin_cluster.dblink_exec(c, format('PREPARE TRANSACTION %L', gid_prefix || '_' || n.name));
            IF tag IS DISTINCT FROM 'PREPARE TRANSACTION' THEN
                RAISE EXCEPTION 'node % did not prepare the transaction', n.name
                    USING ERRCODE = '25000',
                          DETAIL = 'The statements must not end their transaction (COMMIT, ROLLBACK).';
            END IF;
        END LOOP;
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        -- no node keeps anything: every one opened is rolled back, prepared
        -- or not (a prepared transaction outlives its connection)
        FOREACH c IN ARRAY opened LOOP
            BEGIN
                PERFORM digitaltwin_cluster.dblink_exec(c, 'ROLLBACK');
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
            BEGIN
                PERFORM digitaltwin_cluster.dblink_exec(c, format('ROLLBACK PREPARED %L',
                            gid_prefix || '_' || substr(c, length('digitaltwin_exec_') + 1)));
            EXCEPTION WHEN OTHERS THEN
                NULL;   -- not prepared there
            END;
            PERFORM digitaltwin_cluster.dblink_disconnect(c);
        END LOOP;
        RAISE;
    END;
    -- every node prepared: commit them all, whatever fails on one
    FOREACH c IN ARRAY opened LOOP
        BEGIN
            PERFORM digitaltwin_cluster.dblink_exec(c, format('COMMIT PREPARED %L',
                        gid_prefix || '_' || substr(c, length('digitaltwin_exec_') + 1)));
        EXCEPTION WHEN OTHERS THEN
            failed := failed || substr(c, length('digitaltwin_exec_') + 1);
        END;
        BEGIN
            PERFORM digitaltwin_cluster.dblink_disconnect(c);
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
    IF cardinality(failed) > 0 THEN
        RAISE EXCEPTION 'cluster_exec prepared on every node but could not commit on %',
                        array_to_string(failed, ', ')
            USING ERRCODE = '08006',
                  DETAIL = format('The other nodes committed.  The transactions %s_<node> stay prepared there.', gid_prefix),
                  HINT = 'When the node is back, COMMIT PREPARED its transaction (see pg_prepared_xacts there).';
    END IF;
    RETURN cardinality(opened);
END
$$;
COMMENT ON FUNCTION digitaltwin.cluster_exec(text) IS
'On a coordinator: runs the statements on every node, all or nothing (two-phase commit: needs max_prepared_transactions > 0 on the nodes); returns the number of nodes.  A node lost between its prepare and its commit keeps a prepared transaction named digitaltwin_exec_..., to COMMIT PREPARED when it is back.  For superusers.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_exec(text) FROM PUBLIC;

CREATE FUNCTION digitaltwin.cluster_create_model(name text, process text, init text DEFAULT NULL)
RETURNS integer
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    -- dblink_exec() takes no statement that returns rows: PERFORM it (the
    -- block's text quoted as a literal: no value can end it)
    SELECT digitaltwin.cluster_exec(format('DO %L',
               format('BEGIN PERFORM digitaltwin.create_model(%L, %L, %L); END', name, process, init)))
$$;
COMMENT ON FUNCTION digitaltwin.cluster_create_model(text, text, text) IS
'On a coordinator: create_model() on every node, all or nothing; process and init are function signatures as text (they exist on the nodes, not necessarily here).  Returns the number of nodes.  For superusers.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_create_model(text, text, text) FROM PUBLIC;
