--
-- The life of a model: versions (alter_model, migrate, model_versions),
-- drop_model's force, pause and resume
--
CREATE ROLE dt_author;
CREATE ROLE dt_other;
GRANT digitaltwin_admin TO dt_author;
GRANT USAGE ON SCHEMA digitaltwin TO dt_other;
GRANT EXECUTE ON FUNCTION digitaltwin.alter_model(text, regprocedure, regprocedure, regprocedure),
                          digitaltwin.pause_model(text), digitaltwin.resume_model(text),
                          digitaltwin.drop_model(text, boolean) TO dt_other;
GRANT CREATE ON SCHEMA public TO dt_author, dt_other;
SET ROLE dt_author;

-- version 1: counts readings, alerts above 100
CREATE FUNCTION gauge_v1(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'v')::int > 100 THEN
        PERFORM digitaltwin.alert('high', 'v1 saw ' || (event->>'v'));
    END IF;
    IF event ? 'fail' THEN
        RAISE EXCEPTION 'v1 refuses';
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'last', (event->>'v')::int);
END $$;
-- version 2: same state, alerts above 50
CREATE FUNCTION gauge_v2(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'v')::int > 50 THEN
        PERFORM digitaltwin.alert('high', 'v2 saw ' || (event->>'v'));
    END IF;
    IF event ? 'fail' THEN
        RAISE EXCEPTION 'v2 refuses';
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'last', (event->>'v')::int);
END $$;
SELECT digitaltwin.create_model('gauge', 'gauge_v1(text,jsonb,jsonb)');
SELECT name, version, state_version, paused FROM digitaltwin.models WHERE name = 'gauge';
SELECT model, version, process, init, migrate, state_type, created_by
FROM digitaltwin.model_versions WHERE model = 'gauge';

INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('gauge', 'g1', '{"v": 70}'), ('gauge', 'g1', '{"v": 120}'),
    ('gauge', 'g2', '{"v": 10, "fail": true}');
SELECT digitaltwin.wait_idle('30s');

-- a duplicate create_model() points at alter_model()
SELECT digitaltwin.create_model('gauge', 'gauge_v2(text,jsonb,jsonb)');

-- version 2: same state type, the twins are kept as they are
SELECT digitaltwin.alter_model('gauge', 'gauge_v2(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('gauge', 'g1', '{"v": 70}'), ('gauge', 'g2', '{"v": 10, "fail": true}');
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state, event_count FROM digitaltwin.twins WHERE model = 'gauge' ORDER BY twin_id;
-- alerts and dead letters record the version that produced them
SELECT message, model_version FROM digitaltwin.alerts WHERE model = 'gauge' ORDER BY id;
SELECT error, model_version FROM digitaltwin.dead_letters WHERE model = 'gauge' ORDER BY event_id;
SELECT name, version, state_version FROM digitaltwin.models WHERE name = 'gauge';
SELECT version, process, created_by FROM digitaltwin.model_versions
WHERE model = 'gauge' ORDER BY version;

--
-- A new state type needs a migration, run in the same transaction
--
CREATE TYPE gauge_state AS (n int, last int, peak int);
CREATE FUNCTION gauge_v3(twin_id text, state gauge_state, event jsonb) RETURNS gauge_state
LANGUAGE plpgsql AS $$
BEGIN
    RETURN ROW(coalesce(state.n, 0) + 1, (event->>'v')::int,
               greatest(coalesce(state.peak, 0), (event->>'v')::int))::gauge_state;
END $$;
CREATE FUNCTION gauge_migrate(twin_id text, old jsonb) RETURNS gauge_state
LANGUAGE sql AS $$
    SELECT ROW((old->>'n')::int, (old->>'last')::int, (old->>'last')::int)::gauge_state
$$;
CREATE FUNCTION gauge_bad_migrate(twin_id text, old jsonb) RETURNS gauge_state
LANGUAGE plpgsql AS $$
BEGIN
    IF twin_id = 'g1' THEN
        RAISE EXCEPTION 'cannot convert %', old;
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION gauge_null_migrate(twin_id text, old jsonb) RETURNS gauge_state
LANGUAGE sql AS 'SELECT NULL::gauge_state';
CREATE FUNCTION gauge_wrong_migrate(twin_id text, old gauge_state) RETURNS gauge_state
LANGUAGE sql AS 'SELECT old';

-- refused: no migration, a migration of the wrong type, nothing to change
SELECT digitaltwin.alter_model('gauge', 'gauge_v3(text,gauge_state,jsonb)');
SELECT digitaltwin.alter_model('gauge', 'gauge_v3(text,gauge_state,jsonb)',
                               migrate => 'gauge_wrong_migrate(text,gauge_state)');
SELECT digitaltwin.alter_model('gauge');
SELECT digitaltwin.alter_model('nonesuch', 'gauge_v2(text,jsonb,jsonb)');
SELECT digitaltwin.alter_model(NULL, 'gauge_v2(text,jsonb,jsonb)');
-- a migration that fails changes nothing, and says which twin
SELECT digitaltwin.alter_model('gauge', 'gauge_v3(text,gauge_state,jsonb)',
                               migrate => 'gauge_bad_migrate(text,jsonb)');
SELECT digitaltwin.alter_model('gauge', 'gauge_v3(text,gauge_state,jsonb)',
                               migrate => 'gauge_null_migrate(text,jsonb)');
SELECT name, version, state_type FROM digitaltwin.models WHERE name = 'gauge';
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'gauge' ORDER BY twin_id;

-- the migration: the live view shows the new states as soon as it
-- commits, whether or not the workers have reloaded them yet
SELECT digitaltwin.alter_model('gauge', 'gauge_v3(text,gauge_state,jsonb)',
                               migrate => 'gauge_migrate(text,jsonb)');
SELECT twin_id, state, event_count FROM digitaltwin.twins WHERE model = 'gauge' ORDER BY twin_id;
SELECT name, version, state_version, state_type FROM digitaltwin.models WHERE name = 'gauge';
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('gauge', 'g1', '{"v": 5}'), ('gauge', 'g3', '{"v": 7}');
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state, event_count FROM digitaltwin.twins WHERE model = 'gauge' ORDER BY twin_id;
SELECT version, process, migrate, state_type FROM digitaltwin.model_versions
WHERE model = 'gauge' ORDER BY version;

--
-- Who may switch: the owner and digitaltwin_admin; the functions run as
-- the owner, who must be allowed to call them
--
RESET ROLE;
SET ROLE dt_other;
SELECT digitaltwin.alter_model('gauge', 'gauge_v2(text,jsonb,jsonb)');
SELECT digitaltwin.pause_model('gauge');
SELECT digitaltwin.drop_model('gauge', force => true);
CREATE FUNCTION others_v4(twin_id text, state gauge_state, event jsonb) RETURNS gauge_state
LANGUAGE sql AS 'SELECT state';
REVOKE EXECUTE ON FUNCTION others_v4(text, gauge_state, jsonb) FROM PUBLIC;
RESET ROLE;
GRANT digitaltwin_admin TO dt_other;
SET ROLE dt_other;
SELECT digitaltwin.alter_model('gauge', 'others_v4(text,gauge_state,jsonb)');
RESET ROLE;
REVOKE digitaltwin_admin FROM dt_other;
SET ROLE dt_author;
-- not from a model
CREATE FUNCTION sneaky(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.alter_model('gauge', 'gauge_v2(text,jsonb,jsonb)');
    RETURN state;
END $$;
SELECT digitaltwin.create_model('sneaky', 'sneaky(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('sneaky', 's1', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT error, sqlstate FROM digitaltwin.dead_letters WHERE model = 'sneaky';

-- the migration runs as the model's owner, with the search_path of the
-- new version, in a restricted operation
CREATE TABLE migration_seen (who name, path text);
CREATE FUNCTION gauge_v5(twin_id text, state gauge_state, event jsonb) RETURNS gauge_state
LANGUAGE sql AS 'SELECT state';
CREATE FUNCTION gauge_probe_migrate(twin_id text, old gauge_state) RETURNS gauge_state
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO migration_seen VALUES (current_user, current_setting('search_path'));
    RETURN old;
END $$;
RESET ROLE;
SET search_path = public, pg_temp;
SELECT digitaltwin.alter_model('gauge', 'gauge_v5(text,gauge_state,jsonb)',
                               migrate => 'gauge_probe_migrate(text,gauge_state)');
RESET search_path;
SELECT DISTINCT who, path FROM migration_seen;
SET ROLE dt_author;
CREATE FUNCTION gauge_temp_migrate(twin_id text, old gauge_state) RETURNS gauge_state
LANGUAGE plpgsql AS $$
BEGIN
    CREATE TEMP TABLE leftover (x int);
    RETURN old;
END $$;
SELECT digitaltwin.alter_model('gauge', migrate => 'gauge_temp_migrate(text,gauge_state)');
RESET ROLE;
-- each twin kept its own state (a migrate returning its argument as it is)
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'gauge' ORDER BY twin_id;

-- two switches in one statement: the second converts what the first wrote
CREATE FUNCTION gauge_jsonb(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS 'SELECT state';
CREATE FUNCTION gauge_to_jsonb(twin_id text, old gauge_state) RETURNS jsonb
LANGUAGE plpgsql AS $$ BEGIN RETURN to_jsonb(old) || jsonb_build_object('id', twin_id); END $$;
CREATE FUNCTION gauge_mark(twin_id text, old jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$ BEGIN RETURN old || jsonb_build_object('marked', old ? 'id'); END $$;
SELECT digitaltwin.alter_model('gauge', 'gauge_jsonb(text,jsonb,jsonb)', migrate => 'gauge_to_jsonb(text,gauge_state)') AS first,
       digitaltwin.alter_model('gauge', migrate => 'gauge_mark(text,jsonb)') AS second;
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'gauge' ORDER BY twin_id;

-- a switch needs a snapshot taken after its lock: not in REPEATABLE READ
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT digitaltwin.alter_model('gauge', migrate => 'gauge_mark(text,jsonb)');
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT digitaltwin.pause_model('gauge');
ROLLBACK;
-- the workers wait for its transaction: no wait_idle() in it, no PREPARE
BEGIN;
SELECT digitaltwin.pause_model('gauge');
SELECT digitaltwin.wait_idle('1s');
ROLLBACK;
BEGIN;
SELECT digitaltwin.pause_model('gauge');
PREPARE TRANSACTION 'switch';
-- the caller's session keeps its advisory locks and prepared statements
SELECT pg_advisory_lock(4242);
PREPARE still_here AS SELECT 1 AS still_here;
SELECT digitaltwin.alter_model('gauge', migrate => 'gauge_mark(text,jsonb)') > 0 AS altered;
EXECUTE still_here;
SELECT count(*) AS advisory_locks FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid();
SELECT pg_advisory_unlock(4242);
DEALLOCATE still_here;
-- a migrate function cannot switch
CREATE FUNCTION gauge_nested(twin_id text, old jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.pause_model('gauge');
    RETURN old;
END $$;
SELECT digitaltwin.alter_model('gauge', migrate => 'gauge_nested(text,jsonb)');
SET ROLE dt_author;

--
-- drop_model() of a model with twins needs force
--
SELECT digitaltwin.drop_model('gauge');
SELECT digitaltwin.create_model('empty', 'gauge_v1(text,jsonb,jsonb)');
SELECT digitaltwin.drop_model('empty');

--
-- Pause: events are held, nothing is dead-lettered, timers wait, other
-- models go on; resume puts them back ahead of the later events
--
CREATE FUNCTION pz(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    s jsonb := coalesce(state, '{"seen": [], "fired": 0}');
BEGIN
    IF (digitaltwin.current_event()).kind = 'timer' THEN
        RETURN jsonb_set(s, '{fired}', to_jsonb((s->>'fired')::int + 1));
    END IF;
    IF event ? 'arm' THEN
        PERFORM digitaltwin.set_timer('ping', '3 s');
    END IF;
    IF event ? 'fail' THEN
        RAISE EXCEPTION 'pz refuses';
    END IF;
    RETURN jsonb_set(s, '{seen}', (s->'seen') || (event->'v'));
END $$;
CREATE FUNCTION other(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1) $$;
SELECT digitaltwin.create_model('pz', 'pz(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('other', 'other(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('pz', 'p1', '{"v": 1, "arm": true}');
SELECT digitaltwin.wait_idle('30s');
SELECT digitaltwin.pause_model('pz');
SELECT digitaltwin.pause_model('pz');
SELECT name, paused, paused_at IS NOT NULL AS since FROM digitaltwin.models WHERE name = 'pz';
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('pz', 'p1', '{"v": 2}'), ('other', 'p1', '{}'), ('pz', 'p1', '{"v": 3, "fail": true}'),
    ('pz', 'p2', '{"v": 4}'), ('other', 'p1', '{}');
-- wait_idle does not wait for held events
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state FROM digitaltwin.twins WHERE model IN ('pz', 'other') ORDER BY model, twin_id;
SELECT id > 0 AS has_id, model, twin_id, payload FROM digitaltwin.held_events ORDER BY id;
SELECT count(*) AS dead FROM digitaltwin.dead_letters WHERE model = 'pz';
RESET ROLE;
SELECT count(*) AS queued FROM digitaltwin.events WHERE model = 'pz';
SET ROLE dt_author;
-- the timer fell due while paused: it waits (a batch of the same twin ran since)
SELECT wait_for($$(SELECT due_at < clock_timestamp() FROM digitaltwin.timers WHERE model = 'pz')$$);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('other', 'p1', '{}');
SELECT digitaltwin.wait_idle('30s');
SELECT state->'fired' AS fired FROM digitaltwin.twins WHERE model = 'pz' AND twin_id = 'p1';
SELECT count(*) AS pending_timers FROM digitaltwin.timers WHERE model = 'pz';
-- a paused model cannot be dropped by accident: it has held events
SELECT digitaltwin.drop_model('pz');
-- resume: held events first, in their order, then those queued after
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('pz', 'p1', '{"v": 5}');
-- (once a batch has held it too)
SELECT wait_for($$(SELECT count(*) FROM digitaltwin.held_events WHERE model = 'pz') = 4$$) AS held;
SELECT digitaltwin.resume_model('pz');
SELECT digitaltwin.resume_model('pz');
SELECT digitaltwin.wait_idle('30s');
SELECT wait_for($$(SELECT (state->>'fired')::int = 1 FROM digitaltwin.twins
                   WHERE model = 'pz' AND twin_id = 'p1')$$);
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'pz' ORDER BY twin_id;
SELECT count(*) AS held FROM digitaltwin.held_events;
SELECT payload, error FROM digitaltwin.dead_letters WHERE model = 'pz';
SELECT name, paused, paused_at FROM digitaltwin.models WHERE name = 'pz';

-- clean up
SELECT digitaltwin.drop_model(name, force => true) FROM digitaltwin.models
WHERE name IN ('gauge', 'pz', 'other', 'sneaky') ORDER BY name;
RESET ROLE;
DELETE FROM digitaltwin.dead_letters WHERE model IN ('gauge', 'pz', 'sneaky');
DELETE FROM digitaltwin.alerts WHERE model = 'gauge';
DROP TABLE migration_seen;
DROP FUNCTION gauge_v1, gauge_v2, gauge_v3, gauge_v5, gauge_migrate, gauge_bad_migrate,
    gauge_null_migrate, gauge_wrong_migrate, gauge_probe_migrate, gauge_temp_migrate,
    gauge_jsonb, gauge_to_jsonb, gauge_mark, gauge_nested,
    others_v4, sneaky, pz, other;
DROP TYPE gauge_state;
REVOKE CREATE ON SCHEMA public FROM dt_author, dt_other;
REVOKE USAGE ON SCHEMA digitaltwin FROM dt_other;
REVOKE EXECUTE ON FUNCTION digitaltwin.alter_model(text, regprocedure, regprocedure, regprocedure),
                           digitaltwin.pause_model(text), digitaltwin.resume_model(text),
                           digitaltwin.drop_model(text, boolean) FROM dt_other;
REVOKE digitaltwin_admin FROM dt_author;
DROP ROLE dt_author, dt_other;
