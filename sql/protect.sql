--
-- What keeps a model runnable (protect.c, 1.4): its state type cannot be
-- altered, its owner cannot be dropped, its name is printable; the depth of
-- event chains; wait_idle() without a deadline.
--
\set SHOW_CONTEXT never

CREATE ROLE dt_prot_owner;
CREATE ROLE dt_prot_heir;
CREATE ROLE dt_prot_stranger;
CREATE ROLE dt_prot_writer;
CREATE ROLE dt_prot_super SUPERUSER;
GRANT digitaltwin_admin TO dt_prot_owner, dt_prot_heir;
GRANT digitaltwin_writer TO dt_prot_writer;
CREATE SCHEMA prot AUTHORIZATION dt_prot_owner;

-- a state type with a nested composite (in an array) and a table row type
SET ROLE dt_prot_owner;
CREATE TYPE prot.reading AS (bpm int, at timestamptz);
CREATE TYPE prot.vitals AS (n int, last prot.reading[]);
CREATE TABLE prot.tally (n int, note text);
CREATE TYPE prot.unused AS (x int);
CREATE FUNCTION prot.step_vitals(twin_id text, state prot.vitals, event jsonb)
RETURNS prot.vitals LANGUAGE sql
AS $$ SELECT ROW(coalesce(($2).n, 0) + 1, NULL)::prot.vitals $$;
CREATE FUNCTION prot.step_tally(twin_id text, state prot.tally, event jsonb)
RETURNS prot.tally LANGUAGE sql
AS $$ SELECT ROW(coalesce(($2).n, 0) + 1, 'ok')::prot.tally $$;
SELECT digitaltwin.create_model('prot_vitals', 'prot.step_vitals(text,prot.vitals,jsonb)');
SELECT digitaltwin.create_model('prot_tally', 'prot.step_tally(text,prot.tally,jsonb)');
RESET ROLE;

--
-- ALTER of a state type, or of a type inside it, is refused (2BP01)
--
\set VERBOSITY default
ALTER TYPE prot.vitals ADD ATTRIBUTE extra int;
ALTER TYPE prot.vitals DROP ATTRIBUTE last;
ALTER TYPE prot.vitals ALTER ATTRIBUTE n TYPE bigint;
ALTER TYPE prot.vitals RENAME ATTRIBUTE n TO count;
-- the composite inside it (through the array)
ALTER TYPE prot.reading ADD ATTRIBUTE spo2 int;
ALTER TYPE prot.reading ALTER ATTRIBUTE bpm TYPE numeric;
-- a table whose row type is the state type
ALTER TABLE prot.tally ADD COLUMN extra int;
ALTER TABLE prot.tally DROP COLUMN note;
ALTER TABLE prot.tally ALTER COLUMN n TYPE bigint;
ALTER TABLE prot.tally RENAME COLUMN note TO remark;
-- one refused subcommand among allowed ones refuses the whole command
ALTER TABLE prot.tally ALTER COLUMN note SET DEFAULT 'x', ADD COLUMN y int;
\set VERBOSITY terse
-- ... and the same for its owner, in a transaction: nothing changed
SET ROLE dt_prot_owner;
BEGIN;
ALTER TYPE prot.reading DROP ATTRIBUTE at;
ROLLBACK;
RESET ROLE;
SELECT attrelid::regclass, attname, atttypid::regtype
FROM pg_attribute
WHERE attrelid IN ('prot.vitals'::regclass, 'prot.reading'::regclass, 'prot.tally'::regclass)
  AND attnum > 0 AND NOT attisdropped
ORDER BY attrelid::regclass::text, attnum;

-- allowed: what keeps stored states and model code working
ALTER TYPE prot.vitals OWNER TO dt_prot_heir;
ALTER TYPE prot.vitals OWNER TO dt_prot_owner;
ALTER TYPE prot.reading RENAME TO reading2;
ALTER TYPE prot.reading2 RENAME TO reading;
COMMENT ON TYPE prot.vitals IS 'state of prot_vitals';
ALTER TABLE prot.tally ALTER COLUMN note SET DEFAULT 'none';
ALTER TABLE prot.tally ADD CONSTRAINT positive CHECK (n > 0);
ALTER TABLE prot.tally OWNER TO dt_prot_owner;
CREATE SCHEMA prot2;
ALTER TYPE prot.vitals SET SCHEMA prot2;
ALTER TYPE prot2.vitals SET SCHEMA prot;
-- a type no model uses
ALTER TYPE prot.unused ADD ATTRIBUTE y int;
-- the models still work
SELECT digitaltwin.send('prot_vitals', 'v1', '{}') > 0 AS sent,
       digitaltwin.send('prot_tally', 't1', '{}') > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
SELECT model, twin_id, state, event_count FROM digitaltwin.twins
WHERE model LIKE 'prot\_%' ORDER BY model;

-- the trigger functions cannot be called, nor used in another trigger,
-- by an ordinary role (a writer may use the schema)
SET ROLE dt_prot_writer;
SELECT digitaltwin.protect_model_types();
SELECT digitaltwin.protect_model_objects();
CREATE EVENT TRIGGER stolen ON ddl_command_end
    EXECUTE FUNCTION digitaltwin.protect_model_types();
RESET ROLE;
SELECT p.oid::regprocedure, has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_call
FROM pg_proc p
WHERE p.oid IN ('digitaltwin.protect_model_types()'::regprocedure,
                'digitaltwin.protect_model_objects()'::regprocedure,
                'digitaltwin._alters_row_type(pg_ddl_command)'::regprocedure)
ORDER BY 1::text;
SELECT proname, prosecdef, proconfig FROM pg_proc
WHERE proname IN ('protect_model_types', 'protect_model_objects') ORDER BY 1;

-- a hostile search_path: operators planted first in the path are not used
-- by the triggers, which run as the extension's owner
CREATE SCHEMA planted;
GRANT USAGE ON SCHEMA planted TO PUBLIC;
CREATE FUNCTION planted.eq(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'planted operator called (superuser: %)',
        (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user);
    RETURN $1 OPERATOR(pg_catalog.=) $2;
END $$;
CREATE FUNCTION planted.eq(oid, regtype) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'planted operator called (superuser: %)',
        (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user);
    RETURN $1 OPERATOR(pg_catalog.=) $2::oid;
END $$;
CREATE OPERATOR planted.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = planted.eq);
CREATE OPERATOR planted.= (LEFTARG = oid, RIGHTARG = regtype, FUNCTION = planted.eq);
SET search_path = planted, pg_catalog;
-- the planted operators work (exact matches, found first) ...
SELECT 1::oid = 1::oid AS planted_works;
-- ... but not inside the triggers
ALTER TYPE prot.vitals ADD ATTRIBUTE extra int;
DROP TYPE prot.vitals CASCADE;
ALTER TYPE prot.unused ADD ATTRIBUTE z int;
RESET search_path;

--
-- DROP ROLE of a model's owner is refused; REASSIGN OWNED moves the models
--
\set VERBOSITY default
DROP ROLE dt_prot_owner;
DROP ROLE IF EXISTS dt_prot_stranger, dt_prot_owner;
\set VERBOSITY terse
SELECT rolname FROM pg_roles WHERE rolname = 'dt_prot_stranger';
-- a model owner that owns nothing else (its functions are another role's):
-- PostgreSQL alone would drop it and orphan the model
CREATE ROLE dt_prot_bare;
GRANT digitaltwin_admin TO dt_prot_bare;
CREATE FUNCTION prot_bare_step(twin_id text, state jsonb, event jsonb)
RETURNS jsonb LANGUAGE sql AS $$ SELECT $3 $$;
SET ROLE dt_prot_bare;
SELECT digitaltwin.create_model('prot_bare', 'prot_bare_step(text,jsonb,jsonb)');
RESET ROLE;
\set VERBOSITY default
DROP ROLE dt_prot_bare;
\set VERBOSITY terse
SELECT digitaltwin.drop_model('prot_bare', force => true);
DROP ROLE dt_prot_bare;
DROP FUNCTION prot_bare_step(text, jsonb, jsonb);
DROP ROLE dt_prot_nobody;
DROP ROLE IF EXISTS dt_prot_nobody;
REASSIGN OWNED BY dt_prot_owner TO dt_prot_heir;
SELECT name, owner FROM digitaltwin.models WHERE name LIKE 'prot\_%' ORDER BY name;
-- its functions went with it, and the models run as the new owner
SELECT p.oid::regprocedure, pg_get_userbyid(p.proowner)
FROM pg_proc p WHERE p.pronamespace = 'prot'::regnamespace ORDER BY 1::text;
DROP OWNED BY dt_prot_owner;
DROP ROLE dt_prot_owner;
SELECT digitaltwin.send('prot_tally', 't1', '{}') > 0 AS sent;
SELECT digitaltwin.wait_idle('60s');
SELECT model, twin_id, state, event_count FROM digitaltwin.twins
WHERE model = 'prot_tally';
SELECT count(*) AS dead FROM digitaltwin.dead_letters WHERE model LIKE 'prot\_%';
-- a reassignment in a transaction that rolls back leaves the models alone
BEGIN;
REASSIGN OWNED BY dt_prot_heir TO dt_prot_writer;
SELECT name, owner FROM digitaltwin.models WHERE name LIKE 'prot\_%' ORDER BY name;
ROLLBACK;
SELECT name, owner FROM digitaltwin.models WHERE name LIKE 'prot\_%' ORDER BY name;
-- to a superuser: allowed here (digitaltwin.allow_superuser_models is on in
-- the tests), refused when off
BEGIN;
REASSIGN OWNED BY dt_prot_heir TO dt_prot_super;
SELECT name, owner FROM digitaltwin.models
WHERE name LIKE 'prot\_%' ORDER BY name;
ROLLBACK;
ALTER SYSTEM SET digitaltwin.allow_superuser_models = off;
SELECT pg_reload_conf();
-- a new session starts with the postmaster's reloaded settings
\c
\set SHOW_CONTEXT never
SHOW digitaltwin.allow_superuser_models;
\set VERBOSITY default
REASSIGN OWNED BY dt_prot_heir TO dt_prot_super;
\set VERBOSITY terse
SELECT name, owner FROM digitaltwin.models WHERE name LIKE 'prot\_%' ORDER BY name;
ALTER SYSTEM RESET digitaltwin.allow_superuser_models;
SELECT pg_reload_conf();
\c
\set SHOW_CONTEXT never
\set VERBOSITY terse
SHOW digitaltwin.allow_superuser_models;

--
-- Model names: not empty, blank, padded, nor holding control characters
--
\set VERBOSITY default
SELECT digitaltwin.create_model('', 'prot.step_tally(text,prot.tally,jsonb)');
SELECT digitaltwin.create_model('   ', 'prot.step_tally(text,prot.tally,jsonb)');
SELECT digitaltwin.create_model(' lead', 'prot.step_tally(text,prot.tally,jsonb)');
SELECT digitaltwin.create_model('trail ', 'prot.step_tally(text,prot.tally,jsonb)');
SELECT digitaltwin.create_model(E'new\nline', 'prot.step_tally(text,prot.tally,jsonb)');
SELECT digitaltwin.create_model(E'tab\there', 'prot.step_tally(text,prot.tally,jsonb)');
SELECT digitaltwin.create_model(E'del\x7f', 'prot.step_tally(text,prot.tally,jsonb)');
SELECT digitaltwin.create_model(E'c1\u0085', 'prot.step_tally(text,prot.tally,jsonb)');
\set VERBOSITY terse
-- printable names, spaces inside and non-ASCII letters included, are fine
SELECT digitaltwin.create_model('prot tally ü', 'prot.step_tally(text,prot.tally,jsonb)');
SELECT name FROM digitaltwin.models WHERE name LIKE 'prot%' ORDER BY name;
SELECT digitaltwin.drop_model('prot tally ü', force => true);

--
-- Chain depth: a column writers cannot set, 0 for what they send
--
SELECT c.oid::regclass, a.attnum, a.atttypid::regtype, a.attnotnull, a.atthasmissing,
       pg_get_expr(d.adbin, d.adrelid) AS default
FROM pg_class c
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'depth'
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.oid IN ('digitaltwin.events'::regclass, 'digitaltwin.events_0'::regclass,
                'digitaltwin.events_1'::regclass, 'digitaltwin.events_2'::regclass)
ORDER BY 1::text;
SELECT digitaltwin._event_depth(), getdatabaseencoding();
BEGIN;
SET LOCAL ROLE dt_prot_writer;
INSERT INTO digitaltwin.events (model, twin_id, payload, depth)
VALUES ('prot_tally', 'forged', '{}', -100);
ROLLBACK;
BEGIN;
SET LOCAL ROLE dt_prot_writer;
UPDATE digitaltwin.events SET depth = -100;
ROLLBACK;
BEGIN;
SET LOCAL ROLE dt_prot_writer;
INSERT INTO digitaltwin.events (model, twin_id, payload)
VALUES ('prot_tally', 'unforged', '{}');
RESET ROLE;
-- (uncommitted: the workers do not see it yet)
SELECT twin_id, depth FROM digitaltwin.events WHERE twin_id = 'unforged';
COMMIT;
SET digitaltwin.max_message_depth = 3;
SELECT name, setting, context, min_val, max_val FROM pg_settings
WHERE name = 'digitaltwin.max_message_depth';

--
-- wait_idle(): a deadline beyond the range of timestamps is no deadline
--
SELECT digitaltwin.wait_idle('1000000 years') AS idle;
SELECT digitaltwin.wait_idle('-1000000 years') IS NOT NULL AS returned;
SELECT digitaltwin.wait_idle('2147483647 days 2147483647 months') AS idle;
-- ... and a cancel or statement_timeout still ends the wait: a model
-- that runs past digitaltwin.model_timeout (2s) keeps a worker busy
CREATE FUNCTION prot.slow(twin_id text, state jsonb, event jsonb)
RETURNS jsonb LANGUAGE sql AS $$ SELECT pg_sleep(30)::text::jsonb $$;
SELECT digitaltwin.create_model('prot_slow', 'prot.slow(text,jsonb,jsonb)');
SELECT digitaltwin.send('prot_slow', 's', '{}') > 0 AS sent;
SET statement_timeout = '300ms';
\set VERBOSITY default
SELECT digitaltwin.wait_idle('1000000 years');
\set VERBOSITY terse
RESET statement_timeout;
SELECT digitaltwin.wait_idle('60s');
SELECT error, sqlstate FROM digitaltwin.dead_letters WHERE model = 'prot_slow';

-- a model whose init function was dropped behind the event trigger's back
-- (a superuser disabled it) is broken, but its twins are still loaded from
-- twin_state when the workers start, with its state type's layout, and
-- read whole
CREATE FUNCTION prot.gone_init(twin_id text) RETURNS jsonb
LANGUAGE sql AS $$ SELECT '{"n": 40}'::jsonb $$;
CREATE FUNCTION prot.gone_step(twin_id text, state jsonb, event jsonb)
RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('n', (state->>'n')::int + 1) $$;
SELECT digitaltwin.create_model('prot_gone', 'prot.gone_step(text,jsonb,jsonb)',
                                'prot.gone_init(text)');
SELECT digitaltwin.create_model('prot_beat', 'prot.gone_step(text,jsonb,jsonb)',
                                'prot.gone_init(text)');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'prot_gone', 'g' || i, '{}' FROM generate_series(1, 4) i;
SELECT digitaltwin.wait_idle('60s');
ALTER EVENT TRIGGER digitaltwin_protect_models DISABLE;
DROP FUNCTION prot.gone_init(text);
ALTER EVENT TRIGGER digitaltwin_protect_models ENABLE;
-- restarted workers (their model cache is new) load the twins, before
-- the batch these events make for each of them
SELECT clock_timestamp() AS before_restart \gset
SELECT count(pg_terminate_backend(pid)) AS terminated FROM pg_stat_activity
WHERE backend_type = 'digitaltwin worker' AND datname = current_database();
SELECT wait_for(format($$(SELECT count(*) FROM pg_stat_activity
                          WHERE backend_type = 'digitaltwin worker'
                            AND datname = current_database()
                            AND backend_start > %L) = 2$$, :'before_restart'));
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'prot_beat', 'b' || i, '{}' FROM generate_series(1, 8) i;
SELECT digitaltwin.wait_idle('60s');
SELECT twin_id, state, event_count FROM digitaltwin.twins
WHERE model = 'prot_gone' ORDER BY 1;
SELECT digitaltwin.drop_model('prot_gone', force => true);
SELECT digitaltwin.drop_model('prot_beat', force => true);

-- clean up
SELECT digitaltwin.drop_model('prot_slow', force => true);
SELECT digitaltwin.drop_model('prot_vitals', force => true);
SELECT digitaltwin.drop_model('prot_tally', force => true);
DELETE FROM digitaltwin.dead_letters WHERE model LIKE 'prot\_%';
DROP SCHEMA prot, prot2, planted CASCADE;
DROP ROLE dt_prot_heir, dt_prot_stranger, dt_prot_writer, dt_prot_super;
