--
-- Trust (issue 12): hostile roles try to get their code run with rights
-- that are not theirs -- the owner of the extension's tables, or the
-- workers' bootstrap superuser -- and model code tries to leave state
-- behind in a worker's session or to stall its batch.  Every attack must
-- leave its role NOT superuser and its planted functions NOT called with
-- anyone's rights but the attacker's own (each planted function records
-- current_user in a table the attacker owns, and tries to make the
-- attacker superuser when it finds itself running as one).
--
-- Points of the issue: 1-3 (search_path of owner and worker statements),
-- 4 (a model's settings, locks and session state), 5 (alert sizes), 8 (no
-- event disappears: STRICT process, init returning NULL).  Points 6, 7, 10
-- and 16 are in t/009_model_isolation.pl.
--
SET client_min_messages = warning;

-- the test's own helpers, in a schema no attacker can write
CREATE SCHEMA trust_t;
GRANT USAGE ON SCHEMA trust_t TO PUBLIC;
-- run one statement as the current role, with its search_path: 'ok' or
-- the SQLSTATE and message of its error (no DETAIL, HINT or CONTEXT)
CREATE FUNCTION trust_t.try(sql text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    st text;
    msg text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    RETURN st OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) msg;
END $$;
-- wait up to timeout_s seconds for a query to return true (each try sees
-- what committed before it)
CREATE FUNCTION trust_t.poll(sql text, timeout_s int) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
    ok boolean;
BEGIN
    LOOP
        EXECUTE sql INTO ok;
        IF ok THEN
            RETURN true;
        END IF;
        IF clock_timestamp() > deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
-- an ordinary model, usable by the attackers
CREATE FUNCTION trust_t.tally(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT CASE WHEN event ? 'end' THEN NULL
                ELSE jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1) END
$$;

CREATE ROLE dt_trust_w;     -- writer, owns a schema
CREATE ROLE dt_trust_r;     -- reader
CREATE ROLE dt_trust_a;     -- admin
CREATE ROLE dt_trust_t;     -- admin who can create only temporary objects
CREATE ROLE dt_trust_p;     -- may create in schema public (README's quick start)
CREATE ROLE dt_trust_m;     -- model owner, owns a schema
GRANT digitaltwin_writer TO dt_trust_w;
GRANT digitaltwin_reader TO dt_trust_r;
GRANT digitaltwin_admin TO dt_trust_a, dt_trust_t, dt_trust_m;
CREATE SCHEMA trust_evil AUTHORIZATION dt_trust_w;
CREATE SCHEMA trust_m AUTHORIZATION dt_trust_m;
CREATE SCHEMA trust_evil4 AUTHORIZATION dt_trust_m;
GRANT CREATE ON SCHEMA public TO dt_trust_p;

-- twins of worker 0's partition, for the tests whose events must meet in
-- one worker session (worker 0 also runs the retention)
SELECT n[1] AS tw_meddle, n[2] AS tw_probe, n[3] AS tw_end, n[4] AS tw_alert, n[5] AS tw_new
FROM (SELECT array_agg(t ORDER BY i) AS n
      FROM (SELECT i, 'twin' || i AS t FROM generate_series(1, 200) i) s
      WHERE digitaltwin.partition_of(t, current_setting('digitaltwin.workers')::int) = 0) x
\gset

-- a model for the events of the attacks, with twins in every partition
SET ROLE dt_trust_a;
SELECT digitaltwin.create_model('trust_m1', 'trust_t.tally(text,jsonb,jsonb)');
RESET ROLE;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'trust_m1', 'm1_' || i, '{}' FROM generate_series(1, 8) i;
SELECT digitaltwin.wait_idle('60s');

--
-- 1. Operators planted on the caller's search_path: the CHECK constraint
-- of digitaltwin.events, event_valid(), create_model() and drop_model()
-- run statements as the owner of digitaltwin.models.
--
SET ROLE dt_trust_w;
CREATE TABLE trust_evil.calls (who name, what text);
GRANT INSERT ON trust_evil.calls TO PUBLIC;
GRANT USAGE ON SCHEMA trust_evil TO PUBLIC;
CREATE FUNCTION trust_evil.pwn(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO trust_evil.calls VALUES (current_user, what);
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = 'dt_trust_w') THEN
        ALTER ROLE dt_trust_w SUPERUSER;
    END IF;
END $$;
-- (text, text) also says yes to the unknown model 'trust_nosuch', so that
-- the statement that ran it commits
CREATE FUNCTION trust_evil.eq_text(a text, b text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM trust_evil.pwn('= (text, text)');
    RETURN a = b OR b = 'trust_nosuch' OR a = 'trust_nosuch';
END $$;
CREATE FUNCTION trust_evil.eq_oid_regtype(a oid, b regtype) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM trust_evil.pwn('= (oid, regtype)');
    RETURN a = b::oid;
END $$;
CREATE FUNCTION trust_evil.eq_int(a integer, b integer) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM trust_evil.pwn('= (integer, integer)');
    RETURN a = b;
END $$;
CREATE FUNCTION trust_evil.eq_bigint(a bigint, b bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM trust_evil.pwn('= (bigint, bigint)');
    RETURN a = b;
END $$;
CREATE OPERATOR trust_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = trust_evil.eq_text);
CREATE OPERATOR trust_evil.= (LEFTARG = oid, RIGHTARG = regtype, FUNCTION = trust_evil.eq_oid_regtype);
CREATE OPERATOR trust_evil.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = trust_evil.eq_int);
CREATE OPERATOR trust_evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = trust_evil.eq_bigint);
RESET ROLE;

-- a writer inserts events, of a model and of no model (a fresh session:
-- no model name is cached yet)
\c -
SET client_min_messages = warning;
SET ROLE dt_trust_w;
SET search_path = trust_evil, pg_catalog;
SELECT trust_t.try($$INSERT INTO digitaltwin.events (model, twin_id, payload)
                     VALUES ('trust_m1', 'w1', '{}')$$) AS insert_known;
SELECT trust_t.try($$INSERT INTO digitaltwin.events (model, twin_id, payload)
                     VALUES ('trust_nosuch', 'w1', '{}')$$) AS insert_unknown;
RESET search_path;
RESET ROLE;

-- a reader calls the CHECK's function directly
\c -
SET client_min_messages = warning;
SET ROLE dt_trust_r;
SET search_path = trust_evil, pg_catalog;
SELECT trust_t.try($$SELECT digitaltwin.event_valid('trust_m1', 'r1', '{}')$$) AS valid_known;
SELECT trust_t.try($$SELECT digitaltwin.event_valid('trust_nosuch', 'r1', '{}')$$) AS valid_unknown;
RESET search_path;
RESET ROLE;

-- an admin creates and drops a model
\c -
SET client_min_messages = warning;
SET ROLE dt_trust_a;
SET search_path = trust_evil, pg_catalog;
SELECT trust_t.try($$SELECT digitaltwin.create_model('trust_m2', 'trust_t.tally(text,jsonb,jsonb)')$$) AS created;
SELECT trust_t.try($$SELECT digitaltwin.drop_model('trust_m2', force => true)$$) AS dropped;
RESET search_path;
RESET ROLE;

SELECT digitaltwin.wait_idle('60s');
-- nothing planted ran with rights other than the attackers' own
SELECT what, count(*) > 0 AS called FROM trust_evil.calls
WHERE who NOT IN ('dt_trust_w', 'dt_trust_r', 'dt_trust_a') GROUP BY what ORDER BY what;
SELECT rolname AS superuser_now FROM pg_roles WHERE rolname LIKE 'dt\_trust\_%' AND rolsuper;
-- the unknown model's event was refused, not queued
SELECT count(*) AS nosuch_events FROM digitaltwin.dead_letters WHERE model = 'trust_nosuch';
SELECT count(*) AS nosuch_queued FROM digitaltwin.events WHERE model = 'trust_nosuch';

--
-- 2. Types and casts planted in pg_temp by an admin who can create nothing
-- else: create_model() converts its arguments with pg_temp first on the
-- type search path.
--
\c -
SET client_min_messages = warning;
SET ROLE dt_trust_t;
CREATE TEMP TABLE trust_calls (who name, what text);
CREATE FUNCTION pg_temp.pwn(what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pg_temp.trust_calls VALUES (current_user, what);
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user)
       AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles
                WHERE rolname OPERATOR(pg_catalog.=) 'dt_trust_t') THEN
        ALTER ROLE dt_trust_t SUPERUSER;
    END IF;
END $$;
CREATE TYPE pg_temp.regrole AS (o oid);
CREATE TYPE pg_temp.regprocedure AS (o oid);
CREATE TYPE pg_temp.regtype AS (o oid);
CREATE FUNCTION pg_temp.to_regrole(oid) RETURNS pg_temp.regrole
LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_temp.pwn('regrole'); RETURN ROW($1); END $$;
CREATE FUNCTION pg_temp.to_regprocedure(oid) RETURNS pg_temp.regprocedure
LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_temp.pwn('regprocedure'); RETURN ROW($1); END $$;
CREATE FUNCTION pg_temp.to_regtype(oid) RETURNS pg_temp.regtype
LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_temp.pwn('regtype'); RETURN ROW($1); END $$;
CREATE FUNCTION pg_temp.back_regrole(pg_temp.regrole) RETURNS pg_catalog.regrole
LANGUAGE sql AS $$ SELECT ($1).o::pg_catalog.regrole $$;
CREATE FUNCTION pg_temp.back_regprocedure(pg_temp.regprocedure) RETURNS pg_catalog.regprocedure
LANGUAGE sql AS $$ SELECT ($1).o::pg_catalog.regprocedure $$;
CREATE FUNCTION pg_temp.back_regtype(pg_temp.regtype) RETURNS pg_catalog.regtype
LANGUAGE sql AS $$ SELECT ($1).o::pg_catalog.regtype $$;
CREATE CAST (oid AS pg_temp.regrole) WITH FUNCTION pg_temp.to_regrole(oid);
CREATE CAST (oid AS pg_temp.regprocedure) WITH FUNCTION pg_temp.to_regprocedure(oid);
CREATE CAST (oid AS pg_temp.regtype) WITH FUNCTION pg_temp.to_regtype(oid);
CREATE CAST (pg_temp.regrole AS pg_catalog.regrole)
    WITH FUNCTION pg_temp.back_regrole(pg_temp.regrole) AS ASSIGNMENT;
CREATE CAST (pg_temp.regprocedure AS pg_catalog.regprocedure)
    WITH FUNCTION pg_temp.back_regprocedure(pg_temp.regprocedure) AS ASSIGNMENT;
CREATE CAST (pg_temp.regtype AS pg_catalog.regtype)
    WITH FUNCTION pg_temp.back_regtype(pg_temp.regtype) AS ASSIGNMENT;
SELECT trust_t.try($$SELECT digitaltwin.create_model('trust_m3', 'trust_t.tally(text,jsonb,jsonb)')$$) AS created;
SELECT trust_t.try($$SELECT digitaltwin.drop_model('trust_m3', force => true)$$) AS dropped;
RESET ROLE;
SELECT what, count(*) > 0 AS called FROM pg_temp.trust_calls
WHERE who <> 'dt_trust_t' GROUP BY what ORDER BY what;
SELECT rolname AS superuser_now FROM pg_roles WHERE rolname LIKE 'dt\_trust\_%' AND rolsuper;

-- a temporary function cannot be a model (it would vanish with its session)
\c -
SET client_min_messages = warning;
SET ROLE dt_trust_t;
CREATE FUNCTION pg_temp.tproc(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT event $$;
CREATE FUNCTION pg_temp.tinit(twin_id text) RETURNS jsonb
LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
SELECT trust_t.try($$SELECT digitaltwin.create_model('trust_tempfn', 'pg_temp.tproc(text,jsonb,jsonb)')$$) AS temp_process;
SELECT trust_t.try($$SELECT digitaltwin.create_model('trust_tempfn', 'trust_t.tally(text,jsonb,jsonb)',
                                                      'pg_temp.tinit(text)')$$) AS temp_init;
RESET ROLE;
SELECT count(*) AS temp_models FROM digitaltwin.models WHERE name = 'trust_tempfn';
DO $$ BEGIN PERFORM digitaltwin.drop_model('trust_tempfn', force => true) FROM digitaltwin.models
           WHERE name = 'trust_tempfn'; END $$;

--
-- 3. Functions and operators planted in schema public (GRANT CREATE ON
-- SCHEMA public, as in the README's quick start) are never called by the
-- workers' own statements: retention (worker 0, once a second, when there
-- are alerts) and the load of durable state at a worker's start.
--
\c -
SET client_min_messages = warning;
SET ROLE dt_trust_p;
CREATE TABLE public.trust_calls (who name, what text);
GRANT INSERT ON public.trust_calls TO PUBLIC;
CREATE FUNCTION public.trust_pwn(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO public.trust_calls VALUES (current_user, what);
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = 'dt_trust_p') THEN
        ALTER ROLE dt_trust_p SUPERUSER;
    END IF;
END $$;
CREATE FUNCTION public.make_interval(secs integer) RETURNS interval
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.trust_pwn('make_interval(integer)');
    RETURN pg_catalog.make_interval(secs => secs::float8);
END $$;
CREATE FUNCTION public.trust_eq_oid_regtype(a oid, b regtype) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.trust_pwn('= (oid, regtype)');
    RETURN a = b::oid;
END $$;
CREATE FUNCTION public.trust_eq_int(a integer, b integer) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.trust_pwn('= (integer, integer)');
    RETURN a = b;
END $$;
CREATE FUNCTION public.trust_eq_bigint(a bigint, b bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.trust_pwn('= (bigint, bigint)');
    RETURN a = b;
END $$;
CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = regtype, FUNCTION = public.trust_eq_oid_regtype);
CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.trust_eq_int);
CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.trust_eq_bigint);
RESET ROLE;

-- retention: an alert past digitaltwin.alert_retention (7 days) is
-- removed within seconds; the statement that removes it ran
INSERT INTO digitaltwin.alerts (model, twin_id, severity, message, event_id, raised_at)
VALUES ('trust_m1', 'old', 'info', 'trust: old alert', 0, now() - interval '30 days');
SELECT trust_t.poll($$SELECT NOT EXISTS (SELECT 1 FROM digitaltwin.alerts
                                         WHERE message = 'trust: old alert')$$, 60) AS retention_ran;
-- the workers restart and load the durable states (trust_m1 has twins in
-- every partition); an event for each twin shows they are back
SELECT count(pg_terminate_backend(pid)) AS workers_stopped
FROM pg_stat_activity WHERE backend_type = 'digitaltwin worker';
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'trust_m1', 'm1_' || i, '{}' FROM generate_series(1, 8) i;
SELECT digitaltwin.wait_idle('60s');
SELECT count(*) AS workers FROM pg_stat_activity WHERE backend_type = 'digitaltwin worker';
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'trust_m1' ORDER BY twin_id;
SELECT what, count(*) > 0 AS called FROM public.trust_calls
WHERE who <> 'dt_trust_p' GROUP BY what ORDER BY what;
SELECT rolname AS superuser_now FROM pg_roles WHERE rolname LIKE 'dt\_trust\_%' AND rolsuper;
-- (the planted objects go now: they would shadow functions of later tests)
DROP OPERATOR public.= (oid, regtype);
DROP OPERATOR public.= (integer, integer);
DROP OPERATOR public.= (bigint, bigint);
DROP FUNCTION public.make_interval(integer), public.trust_eq_oid_regtype(oid, regtype),
    public.trust_eq_int(integer, integer), public.trust_eq_bigint(bigint, bigint),
    public.trust_pwn(text);
DROP TABLE public.trust_calls;
REVOKE CREATE ON SCHEMA public FROM dt_trust_p;

--
-- 4. A model call leaves nothing behind in the worker's session: settings
-- (search_path, default_transaction_read_only, custom), session advisory
-- locks, prepared statements, LISTEN, temporary tables.  All the events
-- below are of twins of worker 0 (see tw_*), so they meet in one session.
--
SET ROLE dt_trust_m;
CREATE TABLE trust_evil4.calls (who name, what text);
GRANT USAGE ON SCHEMA trust_evil4 TO PUBLIC;
GRANT INSERT ON trust_evil4.calls TO PUBLIC;
CREATE FUNCTION trust_evil4.pwn(what text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO trust_evil4.calls VALUES (current_user, what);
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = 'dt_trust_m') THEN
        ALTER ROLE dt_trust_m SUPERUSER;
    END IF;
END $$;
CREATE FUNCTION trust_evil4.make_interval(secs integer) RETURNS interval
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM trust_evil4.pwn('make_interval(integer)');
    RETURN pg_catalog.make_interval(secs => secs::float8);
END $$;
CREATE FUNCTION trust_evil4.eq_int(a integer, b integer) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM trust_evil4.pwn('= (integer, integer)');
    RETURN a = b;
END $$;
CREATE FUNCTION trust_evil4.eq_bigint(a bigint, b bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM trust_evil4.pwn('= (bigint, bigint)');
    RETURN a = b;
END $$;
CREATE FUNCTION trust_evil4.eq_oid_regtype(a oid, b regtype) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM trust_evil4.pwn('= (oid, regtype)');
    RETURN a = b::oid;
END $$;
CREATE OPERATOR trust_evil4.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = trust_evil4.eq_int);
CREATE OPERATOR trust_evil4.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = trust_evil4.eq_bigint);
CREATE OPERATOR trust_evil4.= (LEFTARG = oid, RIGHTARG = regtype, FUNCTION = trust_evil4.eq_oid_regtype);

SET search_path = trust_m, public;
CREATE FUNCTION meddle(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    CASE event->>'do'
    WHEN 'search_path' THEN
        PERFORM set_config('search_path', 'trust_evil4, pg_catalog', false);
    WHEN 'read_only' THEN
        PERFORM set_config('default_transaction_read_only', 'on', false);
    WHEN 'custom' THEN
        PERFORM set_config('myapp.x', '1', false);
    WHEN 'lock' THEN
        PERFORM pg_advisory_lock(42);
    WHEN 'prepare' THEN
        EXECUTE 'PREPARE trust_stmt AS SELECT 1';
    WHEN 'listen' THEN
        EXECUTE 'LISTEN trust_channel';
    WHEN 'temp' THEN
        EXECUTE 'CREATE TEMP TABLE trust_tmp (x int)';
    ELSE
        NULL;
    END CASE;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
-- records what it sees of the worker's session, event by event
CREATE FUNCTION probe(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'end' THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object('seen', coalesce(state->'seen', '[]') || jsonb_build_object(
        'after', event->>'after',
        'search_path', current_setting('search_path'),
        'read_only', current_setting('default_transaction_read_only'),
        'myapp_x', coalesce(current_setting('myapp.x', true), ''),
        'advisory_locks', (SELECT count(*) FROM pg_locks
                           WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
        'prepared', (SELECT count(*) FROM pg_prepared_statements),
        'listening', (SELECT count(*) FROM pg_listening_channels()),
        'temp_schema', pg_my_temp_schema() <> 0));
END $$;
SELECT digitaltwin.create_model('trust_meddle', 'meddle(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('trust_probe', 'probe(text,jsonb,jsonb)');
RESET search_path;
RESET ROLE;

INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('trust_meddle', :'tw_meddle', '{}'),
    ('trust_probe', :'tw_probe', '{"after": "nothing"}'),
    ('trust_probe', :'tw_end', '{}');
SELECT digitaltwin.wait_idle('60s');
-- a model meddles, the other looks, in one batch; then a twin ends, which
-- deletes its durable state at the end of the batch (DELETE ... WHERE
-- s.model_id = d.model_id), after the last model call has set the
-- search_path to the model owner's schema, which holds = (integer, integer)
-- and make_interval(integer)
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('trust_meddle', :'tw_meddle', '{"do": "custom"}'),
    ('trust_probe', :'tw_probe', '{"after": "custom"}'),
    ('trust_meddle', :'tw_meddle', '{"do": "lock"}'),
    ('trust_probe', :'tw_probe', '{"after": "lock"}'),
    ('trust_meddle', :'tw_meddle', '{"do": "prepare"}'),
    ('trust_probe', :'tw_probe', '{"after": "prepare"}'),
    ('trust_meddle', :'tw_meddle', '{"do": "listen"}'),
    ('trust_probe', :'tw_probe', '{"after": "listen"}'),
    ('trust_meddle', :'tw_meddle', '{"do": "temp"}'),
    ('trust_probe', :'tw_probe', '{"after": "temp"}'),
    ('trust_probe', :'tw_end', '{"end": true}'),
    ('trust_meddle', :'tw_meddle', '{"do": "search_path"}');
SELECT digitaltwin.wait_idle('60s');
-- worker 0's retention runs after that
INSERT INTO digitaltwin.alerts (model, twin_id, severity, message, event_id, raised_at)
VALUES ('trust_m1', 'old', 'info', 'trust: old alert 4', 0, now() - interval '30 days');
SELECT trust_t.poll($$SELECT NOT EXISTS (SELECT 1 FROM digitaltwin.alerts
                                         WHERE message = 'trust: old alert 4')$$, 60) AS retention_ran;
-- the session advisory lock is not held by the worker
SELECT pg_try_advisory_lock(42) AS lock_free;
SELECT pg_advisory_unlock_all();
-- default_transaction_read_only: the next batches of the worker still write
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('trust_meddle', :'tw_meddle', '{"do": "read_only"}'),
    ('trust_probe', :'tw_probe', '{"after": "read_only"}');
SELECT digitaltwin.wait_idle('60s');
-- (a new twin: its state is inserted by SQL)
SELECT digitaltwin.send('trust_probe', :'tw_new', '{"after": "next batch"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('15s') AS next_batch_applied;
SELECT twin_id = :'tw_new' AS new_twin, state->'seen'->0->>'read_only' AS read_only
FROM digitaltwin.twins WHERE model = 'trust_probe' AND twin_id = :'tw_new';
SELECT o->>'after' AS after, o->>'search_path' AS search_path, o->>'read_only' AS read_only,
       o->>'myapp_x' AS myapp_x, o->>'advisory_locks' AS locks, o->>'prepared' AS prepared,
       o->>'listening' AS listening, o->>'temp_schema' AS temp_schema
FROM digitaltwin.twins, jsonb_array_elements(state->'seen') WITH ORDINALITY AS s(o, i)
WHERE model = 'trust_probe' AND twin_id = :'tw_probe' ORDER BY i;
SELECT payload->>'do' AS did, sqlstate, error FROM digitaltwin.dead_letters
WHERE model = 'trust_meddle' ORDER BY event_id;
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'trust_meddle';
SELECT count(*) AS ended_twin_left FROM digitaltwin.twins WHERE model = 'trust_probe' AND twin_id = :'tw_end';
SELECT what, count(*) > 0 AS called FROM trust_evil4.calls
WHERE who <> 'dt_trust_m' GROUP BY what ORDER BY what;
SELECT rolname AS superuser_now FROM pg_roles WHERE rolname LIKE 'dt\_trust\_%' AND rolsuper;
-- (whatever 1.3 left in the workers' sessions goes with them; the
-- remaining events, if any, are then processed)
SELECT count(pg_terminate_backend(pid)) AS workers_stopped
FROM pg_stat_activity WHERE backend_type = 'digitaltwin worker';
SELECT digitaltwin.wait_idle('60s');
ALTER ROLE dt_trust_m NOSUPERUSER;

--
-- 5. Alert sizes are bounded at the call: a severity over 64 bytes is
-- refused (the event is dead-lettered), a 100 kB message is stored whole
-- and clipped in the NOTIFY payload; the batch goes on (one transaction,
-- one worker, with another model's events around).
--
SET ROLE dt_trust_m;
CREATE FUNCTION trust_m.shout(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.alert(repeat('s', (event->>'sev')::int),
                              repeat('m', (event->>'msg')::int));
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('trust_shout', 'trust_m.shout(text,jsonb,jsonb)');
RESET ROLE;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('trust_probe', :'tw_probe', '{"after": "alerts 1"}'),
    ('trust_shout', :'tw_alert', '{"sev": 64, "msg": 10}'),
    ('trust_shout', :'tw_alert', '{"sev": 65, "msg": 10}'),
    ('trust_probe', :'tw_probe', '{"after": "alerts 2"}'),
    ('trust_shout', :'tw_alert', '{"sev": 9000, "msg": 10}'),
    ('trust_probe', :'tw_probe', '{"after": "alerts 3"}'),
    ('trust_shout', :'tw_alert', '{"sev": 4, "msg": 102400}'),
    ('trust_probe', :'tw_probe', '{"after": "alerts 4"}');
SELECT digitaltwin.wait_idle('20s') AS idle;
-- (1.3 retries the batch forever: take its events away)
DELETE FROM digitaltwin.events WHERE model IN ('trust_shout', 'trust_probe');
SELECT digitaltwin.wait_idle('60s');
SELECT payload->>'sev' AS sev, sqlstate, error FROM digitaltwin.dead_letters
WHERE model = 'trust_shout' ORDER BY event_id;
SELECT length(severity) AS severity_bytes, length(message) AS message_bytes
FROM digitaltwin.alerts WHERE model = 'trust_shout' ORDER BY id;
SELECT o->>'after' AS after FROM digitaltwin.twins,
    jsonb_array_elements(state->'seen') WITH ORDINALITY AS s(o, i)
WHERE model = 'trust_probe' AND twin_id = :'tw_probe' AND o->>'after' LIKE 'alerts%' ORDER BY i;
SELECT state FROM digitaltwin.twins WHERE model = 'trust_shout';

--
-- 8. No event disappears: a process function made STRICT after
-- create_model(), an init function that returns NULL.
--
SET ROLE dt_trust_m;
CREATE FUNCTION trust_m.strict_later(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1) $$;
SELECT digitaltwin.create_model('trust_strict', 'trust_m.strict_later(text,jsonb,jsonb)');
CREATE FUNCTION trust_m.init_maybe(twin_id text) RETURNS jsonb
LANGUAGE sql AS $$ SELECT CASE WHEN twin_id = 'nobody' THEN NULL ELSE '{"n": 0}'::jsonb END $$;
SELECT digitaltwin.create_model('trust_init', 'trust_m.strict_later(text,jsonb,jsonb)',
                                'trust_m.init_maybe(text)');
RESET ROLE;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('trust_strict', 'old', '{}');
SELECT digitaltwin.wait_idle('60s');
ALTER FUNCTION trust_m.strict_later(text, jsonb, jsonb) STRICT;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('trust_strict', 'old', '{}'),
    ('trust_strict', 'new', '{}'),
    ('trust_init', 'somebody', '{}'),
    ('trust_init', 'nobody', '{}');
SELECT digitaltwin.wait_idle('60s');
SELECT model, twin_id, sqlstate,
       error LIKE '%is STRICT%' AS says_strict,
       error LIKE '%init function%' AND error LIKE '%returned no state%' AS says_init
FROM digitaltwin.dead_letters WHERE model IN ('trust_strict', 'trust_init') ORDER BY event_id;
SELECT model, twin_id, state, event_count FROM digitaltwin.twins
WHERE model IN ('trust_strict', 'trust_init') ORDER BY 1, 2;
-- every event accounted for: applied or dead-lettered
SELECT (SELECT sum(event_count) FROM digitaltwin.twins
        WHERE model IN ('trust_strict', 'trust_init')) AS applied,
       (SELECT count(*) FROM digitaltwin.dead_letters
        WHERE model IN ('trust_strict', 'trust_init')) AS dead;

--
-- 9. The live view converts states to jsonb with code the model's author may
-- have written (a cast of its state type to json): it runs as the model's
-- owner, never as the role reading the view -- here a superuser.
--
SET ROLE dt_trust_m;
CREATE TYPE trust_m.mood AS ENUM ('calm', 'cross');
CREATE TABLE trust_m.cast_calls (who text, sec_restricted boolean);
CREATE FUNCTION trust_m.mood_json(trust_m.mood) RETURNS json
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO trust_m.cast_calls
    VALUES (current_user, trust_t.try('CREATE TEMP TABLE trust_probe_tmp (x int)') <> 'ok');
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        ALTER ROLE dt_trust_m SUPERUSER;
    END IF;
    RETURN to_json($1::text);
END $$;
CREATE CAST (trust_m.mood AS json) WITH FUNCTION trust_m.mood_json(trust_m.mood);
CREATE FUNCTION trust_m.moody(twin_id text, state trust_m.mood, event jsonb)
RETURNS trust_m.mood LANGUAGE sql AS $$ SELECT (event->>'mood')::trust_m.mood $$;
SELECT digitaltwin.create_model('trust_mood', 'trust_m.moody(text,trust_m.mood,jsonb)');
RESET ROLE;
SELECT digitaltwin.send('trust_mood', 'm', '{"mood": "cross"}') > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
-- a superuser reads every twin: the cast runs, as its author
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'trust_mood';
SELECT who, sec_restricted FROM trust_m.cast_calls GROUP BY 1, 2;
SELECT rolsuper FROM pg_roles WHERE rolname = 'dt_trust_m';
SELECT digitaltwin.drop_model('trust_mood', force => true);

--
-- Clean up
--
SELECT digitaltwin.drop_model(name, force => true) FROM digitaltwin.models
WHERE name IN ('trust_m1', 'trust_meddle', 'trust_probe', 'trust_shout', 'trust_strict', 'trust_init')
ORDER BY name;
DELETE FROM digitaltwin.dead_letters WHERE model LIKE 'trust%';
DELETE FROM digitaltwin.alerts WHERE model LIKE 'trust%';
DROP SCHEMA trust_evil, trust_evil4, trust_m, trust_t CASCADE;
DROP ROLE dt_trust_w, dt_trust_r, dt_trust_a, dt_trust_t, dt_trust_p, dt_trust_m;
