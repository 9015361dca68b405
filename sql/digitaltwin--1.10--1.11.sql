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

-- cluster_ingest sends each node's rows in one statement into the node's
-- queue: a foreign table per node, digitaltwin_cluster.queue_<node>, with
-- batches of 1000 rows (postgres_fdw batches per foreign table; through
-- cluster_events' 32 partitions a statement sends a few rows per
-- partition).  Writers insert into it as themselves (their user mapping):
-- digitaltwin_writer may, as it may insert into cluster_events.
CREATE FUNCTION digitaltwin._cluster_node_queue(node text, server name)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('CREATE FOREIGN TABLE digitaltwin_cluster.%I (model text, twin_id text COLLATE "C", '
                   'payload jsonb, event_time timestamptz) SERVER %I '
                   'OPTIONS (schema_name %L, table_name %L, batch_size %L)',
                   'queue_' || node, server, 'digitaltwin', 'events', '1000');
    EXECUTE format('GRANT INSERT ON digitaltwin_cluster.%I TO digitaltwin_writer', 'queue_' || node);
    GRANT USAGE ON SCHEMA digitaltwin_cluster TO digitaltwin_writer;
END
$$;
COMMENT ON FUNCTION digitaltwin._cluster_node_queue(text, name) IS
'Internal: creates a node''s queue on a coordinator (the foreign table digitaltwin_cluster.queue_<node> that cluster_ingest sends that node''s rows to).';
REVOKE ALL ON FUNCTION digitaltwin._cluster_node_queue(text, name) FROM PUBLIC;

-- the nodes registered under 1.10 get theirs, and commit at once.  Made
-- in this script, a queue would be a member of the extension, left out of
-- pg_dump like the extension's own objects: it is the DBA's, as the
-- servers and partitions cluster_add_node() makes at run time.
DO $$
DECLARE
    n record;
BEGIN
    FOR n IN SELECT c.name, c.server FROM digitaltwin.cluster_nodes c LOOP
        PERFORM digitaltwin._cluster_node_queue(n.name, n.server);
        EXECUTE format('ALTER EXTENSION digitaltwin DROP FOREIGN TABLE digitaltwin_cluster.%I',
                       'queue_' || n.name);
        IF NOT EXISTS (SELECT FROM pg_foreign_server s, unnest(s.srvoptions) o
                       WHERE s.srvname = n.server AND o LIKE 'parallel\_commit=%') THEN
            EXECUTE format('ALTER SERVER %I OPTIONS (ADD parallel_commit %L)', n.server, 'true');
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION digitaltwin.cluster_add_node(name text, host text, port integer,
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
    -- (from 1.11 also to a cluster in use: the node owns no partition, and
    -- refuses every event, until cluster_move_partition() gives it some)
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
    -- parallel_commit: a statement's nodes commit at once, not in turn
    EXECUTE format('CREATE SERVER %I FOREIGN DATA WRAPPER postgres_fdw '
                   'OPTIONS (host %L, port %L, dbname %L, batch_size %L, async_capable %L, fetch_size %L, '
                   'parallel_commit %L)',
                   server, host, port::text, dbname, '100', 'true', '10000', 'true');
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

    PERFORM digitaltwin._cluster_node_queue(cluster_add_node.name, server);
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
'On a coordinator: registers a node (a postgres_fdw server with a user mapping for PUBLIC, in schema digitaltwin_cluster), its queue for cluster_ingest, its partitions of cluster_twins and cluster_alerts, and tells the node its name.  Before cluster_setup(), or after it: the node then owns no partition until cluster_move_partition() moves some to it.  For superusers.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_add_node(text, text, integer, text) FROM PUBLIC;

-- cluster_wait_idle() and cluster_exec() name the node an error comes from
-- (dblink's own errors do not: a connection refused says host and port).
CREATE OR REPLACE FUNCTION digitaltwin.cluster_wait_idle(timeout interval DEFAULT '60s')
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n record;
    idle boolean;
    all_idle boolean := true;
    e_state text;
    e_message text;
    e_detail text;
BEGIN
    -- dblink, not postgres_fdw: wait_idle() cannot run in the REPEATABLE
    -- READ transactions postgres_fdw opens on the nodes
    FOR n IN SELECT c.name, c.server FROM digitaltwin.cluster_nodes c ORDER BY c.name LOOP
        BEGIN
            SELECT r.idle INTO idle
            FROM digitaltwin_cluster.dblink(n.server::text,
                     format('SELECT digitaltwin.wait_idle(%L)', timeout)) AS r(idle boolean);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_message = MESSAGE_TEXT,
                                    e_detail = PG_EXCEPTION_DETAIL;
            RAISE EXCEPTION 'node %: %', n.name, e_message
                USING ERRCODE = e_state, DETAIL = coalesce(e_detail, '');
        END;
        all_idle := all_idle AND idle;
    END LOOP;
    RETURN all_idle;
END
$$;
COMMENT ON FUNCTION digitaltwin.cluster_wait_idle(interval) IS
'On a coordinator: waits on every node, in turn, until the events committed there before the call are processed; false if one timed out.  For superusers.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_wait_idle(interval) FROM PUBLIC;

CREATE OR REPLACE FUNCTION digitaltwin.cluster_exec(sql text)
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
    at_node text;
    e_state text;
    e_message text;
    e_detail text;
    e_hint text;
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
            at_node := n.name;
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
        GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_message = MESSAGE_TEXT,
                                e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
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
        IF e_state = '57014' THEN
            RAISE;
        END IF;
        -- the node's error, naming the node
        RAISE EXCEPTION 'node %: %', at_node, e_message
            USING ERRCODE = e_state, DETAIL = coalesce(e_detail, ''), HINT = coalesce(e_hint, '');
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

-- Growing: move one hash partition's twins to another node.  Inserts
-- through the coordinator wait (they do not fail) until the move commits:
-- all partitions' inserts, because swapping a foreign partition takes
-- cluster_events' ACCESS EXCLUSIVE lock; taken first (within timeout), it
-- also serializes moves, and the map is read under it.
--
-- The steps, each a committed transaction on one node, so that running
-- the function again after any failure finishes the move (or it is
-- undone: the source owns the partition again).  Who owns the partition
-- is asked of the nodes, not taken from the map, which is the last to
-- change:
--   1. the source processes the partition's events (wait_idle), then, in
--      one transaction that holds its batches (models) and inserts (the
--      queue) and finds none of them left, leaves its cluster_shard: from
--      then on its guard refuses the partition's events and its workers
--      fire none of those twins' timers;
--   2. the target takes the twins, timers and held events, and the
--      partition, in one transaction (its workers reload at its commit);
--   3. the source deletes them (its workers reload);
--   4. the coordinator routes the partition to the target.
-- Model ids differ between nodes: rows go by model name, and a model's
-- state type must have the same name on both (and be a built-in base type:
-- an image of an enum, a composite or an array of a user-defined type
-- holds OIDs of its node).  Timers' fire ids and held events' ids are
-- event ids of the node: the target gives them new ones.  The remote
-- sessions run with a pinned search_path and ISO date styles, as the
-- values travel as text.
CREATE FUNCTION digitaltwin.cluster_move_partition(partition integer, to_node text,
                                                   timeout interval DEFAULT '60s')
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET datestyle = 'ISO, YMD'
SET intervalstyle = 'postgres'
SET lock_timeout = 0
AS $$
DECLARE
    p integer := cluster_move_partition.partition;
    m integer;
    src record;
    dst record;
    src_c text := 'digitaltwin_move_source';
    dst_c text := 'digitaltwin_move_target';
    session_setup text := 'SET search_path = pg_catalog, pg_temp; SET datestyle = ''ISO, YMD''; '
                          'SET intervalstyle = ''postgres''; SET bytea_output = ''hex''';
    -- the source takes the partition back; its workers reload (its parked
    -- timers of the partition fire again)
    reown text;
    deadline timestamptz;
    owners text[] := '{}';
    owns boolean;
    node_name text;
    finishing boolean := false;
    idle boolean;
    moved bigint := 0;
    missing text;
    types record;
    twins record;
    timers record;
    held record;
    of_partition text;
BEGIN
    IF timeout IS NULL OR timeout <= '0'::interval THEN
        RAISE EXCEPTION 'timeout must be positive' USING ERRCODE = '22023';
    END IF;
    deadline := clock_timestamp() + timeout;
    IF NOT EXISTS (SELECT FROM digitaltwin.cluster_map c WHERE c.partition = p) THEN
        RAISE EXCEPTION 'partition % does not exist', coalesce(p::text, 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'digitaltwin.cluster_partitions lists them (cluster_setup() makes them).';
    END IF;
    SELECT n.name, n.server INTO dst FROM digitaltwin.cluster_nodes n WHERE n.name = to_node;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'node % is not registered', coalesce(quote_literal(to_node), 'NULL')
            USING ERRCODE = '22023', HINT = 'digitaltwin.cluster_nodes lists the nodes.';
    END IF;

    PERFORM set_config('lock_timeout', (extract(epoch FROM timeout) * 1000)::bigint::text, true);
    LOCK TABLE digitaltwin.cluster_events IN ACCESS EXCLUSIVE MODE;
    PERFORM set_config('lock_timeout', '0', true);
    SELECT c.modulus INTO m FROM digitaltwin.cluster_map c WHERE c.partition = p FOR UPDATE;
    SELECT n.name, n.server INTO src
    FROM digitaltwin.cluster_map c JOIN digitaltwin.cluster_nodes n ON n.name = c.node
    WHERE c.partition = p;
    of_partition := format('digitaltwin.cluster_partition_of(twin_id, %s) OPERATOR(pg_catalog.=) %s', m, p);
    reown := format('INSERT INTO digitaltwin.cluster_shard (modulus, remainder) VALUES (%s, %s) '
                    'ON CONFLICT DO NOTHING; DELETE FROM digitaltwin.twin_state WHERE false', m, p);

    -- who owns it, according to the nodes
    FOR node_name IN SELECT n.name FROM digitaltwin.cluster_nodes n ORDER BY n.name LOOP
        EXECUTE format('SELECT EXISTS (SELECT FROM digitaltwin_cluster.%I WHERE modulus = $1 AND remainder = $2)',
                       'shard_' || node_name) INTO owns USING m, p;
        IF owns THEN
            owners := owners || node_name;
        END IF;
    END LOOP;
    IF cardinality(owners) > 1 THEN
        RAISE EXCEPTION 'partition % is owned by several nodes: %', p, array_to_string(owners, ', ')
            USING ERRCODE = '55000',
                  HINT = 'Keep it on the node that has its twins: delete it from the others'' digitaltwin.cluster_shard.';
    END IF;
    IF cardinality(owners) = 1 AND owners[1] <> src.name THEN
        -- a move to owners[1] committed there and not here: finish it
        IF owners[1] <> dst.name THEN
            RAISE EXCEPTION 'partition % is being moved to node %', p, owners[1]
                USING ERRCODE = '55000',
                      HINT = format('Finish that move first: SELECT digitaltwin.cluster_move_partition(%s, %L).',
                                    p, owners[1]);
        END IF;
        finishing := true;
    END IF;

    IF src.name = dst.name AND cardinality(owners) = 1 THEN
        RETURN 0;
    END IF;

    FOREACH node_name IN ARRAY ARRAY[src_c, dst_c] LOOP
        IF node_name = ANY (coalesce(digitaltwin_cluster.dblink_get_connections(), '{}')) THEN
            PERFORM digitaltwin_cluster.dblink_disconnect(node_name);
        END IF;
    END LOOP;
    PERFORM digitaltwin_cluster.dblink_connect(src_c, src.server::text);
    PERFORM digitaltwin_cluster.dblink_exec(src_c, session_setup);
    PERFORM digitaltwin_cluster.dblink_connect(dst_c, dst.server::text);
    PERFORM digitaltwin_cluster.dblink_exec(dst_c, session_setup);

    IF src.name = dst.name THEN
        -- a move away from it stopped after its first step
        PERFORM digitaltwin_cluster.dblink_exec(src_c, reown);
        PERFORM digitaltwin_cluster.dblink_disconnect(src_c);
        PERFORM digitaltwin_cluster.dblink_disconnect(dst_c);
        RETURN 0;
    END IF;

    IF NOT finishing THEN
        BEGIN
            -- 1. the source processes what it has of the partition, and
            -- leaves it once nothing is left (a batch in between may have
            -- queued more: again)
            LOOP
                SELECT r.idle INTO idle FROM digitaltwin_cluster.dblink(src_c,
                    format('SELECT digitaltwin.wait_idle(%L)', greatest(deadline - clock_timestamp(), '1ms')))
                    AS r(idle boolean);
                IF NOT idle THEN
                    RAISE EXCEPTION 'node % did not process the events of partition % within %', src.name, p, timeout
                        USING ERRCODE = '57014', HINT = 'Try again, with a longer timeout.';
                END IF;
                BEGIN
                    PERFORM digitaltwin_cluster.dblink_exec(src_c, format(
                        'DO $step$ BEGIN '
                        'PERFORM set_config(''lock_timeout'', %L, true); '
                        'LOCK TABLE digitaltwin.models IN EXCLUSIVE MODE; '
                        'LOCK TABLE digitaltwin.events IN SHARE MODE; '
                        'IF EXISTS (SELECT FROM digitaltwin.events WHERE %s) THEN '
                        '    RAISE EXCEPTION ''digitaltwin: events of the partition are queued''; '
                        'END IF; '
                        'DELETE FROM digitaltwin.cluster_shard WHERE modulus = %s AND remainder = %s; '
                        'END $step$',
                        greatest((extract(epoch FROM deadline - clock_timestamp()) * 1000)::bigint, 1)::text,
                        of_partition, m, p));
                    EXIT;
                EXCEPTION WHEN OTHERS THEN
                    IF SQLERRM NOT LIKE '%events of the partition are queued%'
                       OR clock_timestamp() >= deadline THEN
                        RAISE;
                    END IF;
                END;
            END LOOP;

            -- the models of the partition's twins (none can start there
            -- now), and their state types
            SELECT * INTO types FROM digitaltwin_cluster.dblink(src_c, format(
                'SELECT array_agg(m.name ORDER BY m.name), '
                '       array_agg(format_type(m.state_type::oid, NULL) ORDER BY m.name), '
                '       string_agg(CASE WHEN n.nspname <> ''pg_catalog'' OR t.typtype <> ''b'' '
                '                       OR t.typcategory = ''A'' THEN m.name END, '', '') '
                'FROM digitaltwin.models m JOIN pg_type t ON t.oid = m.state_type::oid '
                'JOIN pg_namespace n ON n.oid = t.typnamespace '
                'WHERE m.id IN (SELECT model_id FROM digitaltwin.twin_state WHERE %1$s '
                '               UNION SELECT model_id FROM digitaltwin.timer_state WHERE %1$s '
                '               UNION SELECT model_id FROM digitaltwin.held_events WHERE %1$s)',
                of_partition)) AS r(models text[], types text[], unmovable text);
            IF types.unmovable IS NOT NULL THEN
                RAISE EXCEPTION 'cannot move the twins of model % to another node', types.unmovable
                    USING ERRCODE = '0A000',
                          DETAIL = 'Their state type is not a built-in base type: its values hold object ids of their node.',
                          HINT = 'Use a jsonb (or another built-in) state for models of a cluster that grows.';
            END IF;
            SELECT r.missing INTO missing FROM digitaltwin_cluster.dblink(dst_c, format(
                'SELECT string_agg(u.n || CASE WHEN m.name IS NULL THEN '''' '
                '       ELSE '' (state type '' || format_type(m.state_type::oid, NULL) || '')'' END, '', '') '
                'FROM unnest(%L::text[], %L::text[]) u(n, t) LEFT JOIN digitaltwin.models m ON m.name = u.n '
                'WHERE m.name IS NULL OR format_type(m.state_type::oid, NULL) <> u.t',
                coalesce(types.models, '{}'), coalesce(types.types, '{}'))) AS r(missing text);
            IF missing IS NOT NULL THEN
                RAISE EXCEPTION 'node % has no model %', dst.name, missing
                    USING ERRCODE = '55000',
                          DETAIL = 'The target needs each model of the partition''s twins, with the same state type.',
                          HINT = 'Register the models on every node, with digitaltwin.cluster_create_model().';
            END IF;

            -- 2.
            SELECT * INTO twins FROM digitaltwin_cluster.dblink(src_c, format(
                'SELECT array_agg(m.name), array_agg(s.twin_id), array_agg(s.state), '
                'array_agg(s.event_count), array_agg(s.updated_at) '
                'FROM digitaltwin.twin_state s JOIN digitaltwin.models m ON m.id = s.model_id WHERE %s',
                of_partition))
                AS r(models text[], ids text[], states bytea[], counts bigint[], times timestamptz[]);
            SELECT * INTO timers FROM digitaltwin_cluster.dblink(src_c, format(
                'SELECT array_agg(m.name), array_agg(s.twin_id), array_agg(s.name), array_agg(s.due_at), '
                'array_agg(s.every), array_agg(s.payload), array_agg(s.depth) '
                'FROM digitaltwin.timer_state s JOIN digitaltwin.models m ON m.id = s.model_id WHERE %s',
                of_partition))
                AS r(models text[], ids text[], names text[], dues timestamptz[], everys interval[],
                     payloads jsonb[], depths integer[]);
            SELECT * INTO held FROM digitaltwin_cluster.dblink(src_c, format(
                'SELECT array_agg(h.model ORDER BY h.id), array_agg(h.twin_id ORDER BY h.id), '
                'array_agg(h.payload ORDER BY h.id), array_agg(h.enqueued_at ORDER BY h.id), '
                'array_agg(h.depth ORDER BY h.id), array_agg(h.event_time ORDER BY h.id), '
                'array_agg(h.sender_model ORDER BY h.id), array_agg(h.sender_twin ORDER BY h.id), '
                'array_agg(h.held_at ORDER BY h.id), array_agg(h.retry_of ORDER BY h.id) '
                'FROM digitaltwin.held_events h WHERE %s', of_partition))
                AS r(models text[], ids text[], payloads jsonb[], enqueued timestamptz[], depths integer[],
                     times timestamptz[], sender_models text[], sender_twins text[], held_at timestamptz[],
                     retry_of bigint[]);
            moved := coalesce(cardinality(twins.ids), 0);

            PERFORM digitaltwin_cluster.dblink_exec(dst_c, 'BEGIN');
            PERFORM digitaltwin_cluster.dblink_exec(dst_c, format(
                'INSERT INTO digitaltwin.twin_state (model_id, twin_id, state, event_count, updated_at) '
                'SELECT m.id, u.t, u.s, u.c, u.u FROM ROWS FROM (unnest(%L::text[]), unnest(%L::text[]), '
                'unnest(%L::bytea[]), unnest(%L::bigint[]), unnest(%L::timestamptz[])) AS u(n, t, s, c, u) '
                'JOIN digitaltwin.models m ON m.name = u.n',
                twins.models, twins.ids, twins.states, twins.counts, twins.times));
            PERFORM digitaltwin_cluster.dblink_exec(dst_c, format(
                'INSERT INTO digitaltwin.timer_state (model_id, twin_id, name, due_at, every, payload, fire_id, depth) '
                'SELECT m.id, u.t, u.k, u.d, u.e, u.p, nextval(''digitaltwin.events_id_seq''), u.h '
                'FROM ROWS FROM (unnest(%L::text[]), unnest(%L::text[]), unnest(%L::text[]), '
                'unnest(%L::timestamptz[]), unnest(%L::interval[]), unnest(%L::jsonb[]), unnest(%L::integer[])) '
                'AS u(n, t, k, d, e, p, h) JOIN digitaltwin.models m ON m.name = u.n',
                timers.models, timers.ids, timers.names, timers.dues, timers.everys, timers.payloads,
                timers.depths));
            -- held events (their model paused on the source) stay held if
            -- the model is paused on the target too, else join its queue
            PERFORM digitaltwin_cluster.dblink_exec(dst_c, format(
                'CREATE TEMP TABLE moved_held ON COMMIT DROP AS '
                'SELECT m.id AS model_id, u.n, u.t, u.p, u.q, u.d, u.e, u.sm, u.st, u.h, u.r, u.o, m.paused '
                'FROM ROWS FROM (unnest(%L::text[]), unnest(%L::text[]), unnest(%L::jsonb[]), '
                'unnest(%L::timestamptz[]), unnest(%L::integer[]), unnest(%L::timestamptz[]), '
                'unnest(%L::text[]), unnest(%L::text[]), unnest(%L::timestamptz[]), unnest(%L::bigint[])) '
                'WITH ORDINALITY AS u(n, t, p, q, d, e, sm, st, h, r, o) JOIN digitaltwin.models m ON m.name = u.n',
                held.models, held.ids, held.payloads, held.enqueued, held.depths, held.times,
                held.sender_models, held.sender_twins, held.held_at, held.retry_of));
            PERFORM digitaltwin_cluster.dblink_exec(dst_c,
                'INSERT INTO digitaltwin.held_events (id, model_id, model, twin_id, payload, enqueued_at, '
                'depth, event_time, sender_model, sender_twin, held_at, retry_of) '
                'SELECT nextval(''digitaltwin.events_id_seq''), model_id, n, t, p, q, d, e, sm, st, h, r '
                'FROM pg_temp.moved_held WHERE paused ORDER BY o');
            -- (the partition first: the target's guard takes them)
            PERFORM digitaltwin_cluster.dblink_exec(dst_c, format(
                'INSERT INTO digitaltwin.cluster_shard (modulus, remainder) VALUES (%s, %s)', m, p));
            PERFORM digitaltwin_cluster.dblink_exec(dst_c,
                'INSERT INTO digitaltwin.events (model, twin_id, payload, enqueued_at, depth, event_time, '
                'sender_model, sender_twin, retry_of) '
                'SELECT n, t, p, q, d, e, sm, st, r FROM pg_temp.moved_held WHERE NOT paused ORDER BY o');
            PERFORM digitaltwin_cluster.dblink_exec(dst_c, 'COMMIT');
        EXCEPTION WHEN OTHERS OR query_canceled THEN
            -- not moved: the source takes the partition back
            BEGIN
                PERFORM digitaltwin_cluster.dblink_exec(dst_c, 'ROLLBACK');
            EXCEPTION WHEN OTHERS THEN
                NULL;
            END;
            BEGIN
                SELECT r.owns INTO owns FROM digitaltwin_cluster.dblink(dst_c,
                    format('SELECT EXISTS (SELECT FROM digitaltwin.cluster_shard WHERE modulus = %s AND remainder = %s)', m, p))
                    AS r(owns boolean);
                IF NOT owns THEN
                    PERFORM digitaltwin_cluster.dblink_exec(src_c, reown);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                NULL;   -- reported below: running the move again finishes or undoes it
            END;
            PERFORM digitaltwin_cluster.dblink_disconnect(src_c);
            PERFORM digitaltwin_cluster.dblink_disconnect(dst_c);
            RAISE;
        END;
    END IF;

    -- 3. (also when a move that failed after step 2 is run again)
    PERFORM digitaltwin_cluster.dblink_exec(src_c, format(
        'DO $step$ BEGIN IF NOT EXISTS (SELECT FROM digitaltwin.cluster_shard '
        'WHERE modulus = %1$s AND remainder = %2$s) THEN '
        'DELETE FROM digitaltwin.twin_state WHERE %3$s; '
        'DELETE FROM digitaltwin.timer_state WHERE %3$s; '
        'DELETE FROM digitaltwin.held_events WHERE %3$s; END IF; END $step$',
        m, p, of_partition));
    PERFORM digitaltwin_cluster.dblink_disconnect(src_c);
    PERFORM digitaltwin_cluster.dblink_disconnect(dst_c);

    -- 4.
    EXECUTE format('ALTER TABLE digitaltwin.cluster_events DETACH PARTITION digitaltwin_cluster.%I',
                   'events_p' || p);
    EXECUTE format('DROP FOREIGN TABLE digitaltwin_cluster.%I', 'events_p' || p);
    EXECUTE format('CREATE FOREIGN TABLE digitaltwin_cluster.%I PARTITION OF digitaltwin.cluster_events '
                   'FOR VALUES WITH (MODULUS %s, REMAINDER %s) SERVER %I '
                   'OPTIONS (schema_name %L, table_name %L)',
                   'events_p' || p, m, p, dst.server, 'digitaltwin', 'events');
    UPDATE digitaltwin.cluster_map SET node = dst.name WHERE cluster_map.partition = p;
    RETURN moved;
END
$$;
COMMENT ON FUNCTION digitaltwin.cluster_move_partition(integer, text, interval) IS
'On a coordinator: moves a hash partition''s twins (states, timers, held events) to another node, with nothing lost or applied twice; inserts through the coordinator wait until it commits.  Returns the number of twins moved.  Run it again after a failure: it finishes the move or the source keeps the partition.  For superusers.';
REVOKE ALL ON FUNCTION digitaltwin.cluster_move_partition(integer, text, interval) FROM PUBLIC;

-- One listener for every node (issue 18): the relay forwards each node's
-- NOTIFY digitaltwin_alerts and digitaltwin_outbox to the coordinator's
-- channels of the same names, with the node's name in the payload.  A
-- procedure (it commits after each round, which is when its notifications
-- go out), so it cannot have a SET clause: it pins search_path itself at
-- the start of each transaction.
CREATE PROCEDURE digitaltwin.cluster_relay(duration interval DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    nodes text[];
    retry_at timestamptz[];
    i integer;
    conn text;
    note record;
    payload jsonb;
    until timestamptz;
BEGIN
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    nodes := ARRAY(SELECT n.name FROM digitaltwin.cluster_nodes n ORDER BY n.name);
    IF cardinality(nodes) = 0 THEN
        RAISE EXCEPTION 'the cluster has no nodes'
            USING ERRCODE = '55000', HINT = 'Register them with digitaltwin.cluster_add_node() first.';
    END IF;
    until := CASE WHEN duration IS NULL THEN 'infinity'::timestamptz ELSE clock_timestamp() + duration END;
    retry_at := array_fill('-infinity'::timestamptz, ARRAY[cardinality(nodes)]);
    LOOP
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        FOR i IN 1 .. cardinality(nodes) LOOP
            conn := 'digitaltwin_relay_' || nodes[i];
            CONTINUE WHEN clock_timestamp() < retry_at[i];
            BEGIN
                IF NOT conn = ANY (coalesce(digitaltwin_cluster.dblink_get_connections(), '{}')) THEN
                    PERFORM digitaltwin_cluster.dblink_connect(conn, 'digitaltwin_node_' || nodes[i]);
                    PERFORM digitaltwin_cluster.dblink_exec(conn, 'LISTEN digitaltwin_alerts');
                    PERFORM digitaltwin_cluster.dblink_exec(conn, 'LISTEN digitaltwin_outbox');
                END IF;
                FOR note IN SELECT * FROM digitaltwin_cluster.dblink_get_notify(conn) LOOP
                    IF note.notify_name = 'digitaltwin_outbox' THEN
                        payload := jsonb_build_object('node', nodes[i], 'id', note.extra);
                    ELSE
                        BEGIN
                            payload := note.extra::jsonb || jsonb_build_object('node', nodes[i]);
                        EXCEPTION WHEN OTHERS THEN
                            payload := jsonb_build_object('node', nodes[i], 'payload', note.extra);
                        END;
                    END IF;
                    IF octet_length(payload::text) < 8000 THEN
                        PERFORM pg_notify(note.notify_name, payload::text);
                    END IF;
                END LOOP;
            EXCEPTION WHEN OTHERS THEN
                -- a node down: said once a second, retried as often
                RAISE WARNING 'cluster_relay: node %: %', nodes[i], SQLERRM;
                retry_at[i] := clock_timestamp() + interval '1s';
                IF conn = ANY (coalesce(digitaltwin_cluster.dblink_get_connections(), '{}')) THEN
                    PERFORM digitaltwin_cluster.dblink_disconnect(conn);
                END IF;
            END;
        END LOOP;
        COMMIT;
        -- a new transaction: the caller's search_path again
        PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
        EXIT WHEN clock_timestamp() >= until;
        PERFORM pg_catalog.pg_sleep(0.005);
    END LOOP;
    FOR i IN 1 .. cardinality(nodes) LOOP
        conn := 'digitaltwin_relay_' || nodes[i];
        IF conn = ANY (coalesce(digitaltwin_cluster.dblink_get_connections(), '{}')) THEN
            PERFORM digitaltwin_cluster.dblink_disconnect(conn);
        END IF;
    END LOOP;
END
$$;
COMMENT ON PROCEDURE digitaltwin.cluster_relay(interval) IS
'On a coordinator: forwards every node''s NOTIFY digitaltwin_alerts and digitaltwin_outbox to the coordinator''s channels of the same names, with "node" in the JSON payload, for duration (NULL: until cancelled).  Run it with CALL outside a transaction block, under a supervisor.  Notifications are hints (at most once, none while the relay is down): confirm in cluster_alerts by (node, id).  For superusers.';
REVOKE ALL ON PROCEDURE digitaltwin.cluster_relay(interval) FROM PUBLIC;
