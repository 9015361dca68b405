--
-- create_model() and drop_model(): registration and every error path
--
CREATE FUNCTION counter(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1)
$$;
CREATE FUNCTION counter_init(twin_id text) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('n', 100) $$;

SELECT digitaltwin.create_model('counter', 'counter(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('counter_from_100', 'counter(text,jsonb,jsonb)',
                                'counter_init(text)');
SELECT name, process, init, state_type, owner = current_user::regrole AS mine,
       search_path
FROM digitaltwin.models ORDER BY id;

-- duplicate name
SELECT digitaltwin.create_model('counter', 'counter(text,jsonb,jsonb)');
-- NULL and bad names
SELECT digitaltwin.create_model(NULL, 'counter(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('x', NULL);
SELECT digitaltwin.create_model('', 'counter(text,jsonb,jsonb)');
SELECT digitaltwin.create_model(repeat('x', 64), 'counter(text,jsonb,jsonb)');
-- missing function: the regprocedure cast itself fails
SELECT digitaltwin.create_model('x', 'no_such_function(text,jsonb,jsonb)');
-- an OID that is no function
SELECT digitaltwin.create_model('x', 0::regprocedure);

-- wrong signatures
CREATE FUNCTION two_args(text, jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT $2';
SELECT digitaltwin.create_model('x', 'two_args(text,jsonb)');
CREATE FUNCTION wrong_types(int, jsonb, jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT $2';
SELECT digitaltwin.create_model('x', 'wrong_types(int,jsonb,jsonb)');
CREATE FUNCTION wrong_return(text, jsonb, jsonb) RETURNS text LANGUAGE sql AS 'SELECT $1';
SELECT digitaltwin.create_model('x', 'wrong_return(text,jsonb,jsonb)');
CREATE FUNCTION returns_set(text, jsonb, jsonb) RETURNS SETOF jsonb LANGUAGE sql AS 'SELECT $2';
SELECT digitaltwin.create_model('x', 'returns_set(text,jsonb,jsonb)');
CREATE FUNCTION poly(text, anyelement, jsonb) RETURNS anyelement LANGUAGE sql AS 'SELECT $2';
SELECT digitaltwin.create_model('x', 'poly(text,anyelement,jsonb)');
CREATE PROCEDURE a_procedure(text, jsonb, jsonb) LANGUAGE sql AS 'SELECT 1';
SELECT digitaltwin.create_model('x', 'a_procedure(text,jsonb,jsonb)');
CREATE FUNCTION strict_counter(text, jsonb, jsonb) RETURNS jsonb
LANGUAGE sql STRICT AS 'SELECT $2';
SELECT digitaltwin.create_model('x', 'strict_counter(text,jsonb,jsonb)');
-- a STRICT process function is fine with an init function
SELECT digitaltwin.create_model('strict_ok', 'strict_counter(text,jsonb,jsonb)',
                                'counter_init(text)');
SELECT digitaltwin.drop_model('strict_ok', force => true);

-- init functions
CREATE FUNCTION init_wrong_args(int) RETURNS jsonb LANGUAGE sql AS 'SELECT NULL::jsonb';
SELECT digitaltwin.create_model('x', 'counter(text,jsonb,jsonb)', 'init_wrong_args(int)');
CREATE FUNCTION init_wrong_type(text) RETURNS int LANGUAGE sql AS 'SELECT 1';
SELECT digitaltwin.create_model('x', 'counter(text,jsonb,jsonb)', 'init_wrong_type(text)');

-- other state types: a composite, and bytea
CREATE TYPE reading_summary AS (n int, total float8);
CREATE FUNCTION summarize(twin_id text, s reading_summary, e jsonb)
RETURNS reading_summary LANGUAGE sql AS $$
    SELECT ROW(coalesce(s.n, 0) + 1, coalesce(s.total, 0) + (e->>'v')::float8)::reading_summary
$$;
SELECT digitaltwin.create_model('summary', 'summarize(text,reading_summary,jsonb)');
CREATE FUNCTION last_bytes(twin_id text, s bytea, e jsonb) RETURNS bytea
LANGUAGE sql AS $$ SELECT convert_to(e->>'v', 'UTF8') $$;
SELECT digitaltwin.create_model('raw', 'last_bytes(text,bytea,jsonb)');
SELECT name, state_type FROM digitaltwin.models ORDER BY id;

-- privileges: only roles allowed to execute the functions may register them
CREATE ROLE dt_modeler;
GRANT USAGE ON SCHEMA digitaltwin TO dt_modeler;
GRANT CREATE ON SCHEMA public TO dt_modeler;
GRANT EXECUTE ON FUNCTION digitaltwin.create_model(text, regprocedure, regprocedure),
                          digitaltwin.drop_model(text, boolean) TO dt_modeler;
CREATE FUNCTION private_model(text, jsonb, jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT $2';
REVOKE EXECUTE ON FUNCTION private_model(text, jsonb, jsonb) FROM PUBLIC;
SET ROLE dt_modeler;
SELECT digitaltwin.create_model('x', 'private_model(text,jsonb,jsonb)');
-- and only the owner of a model may drop it
SELECT digitaltwin.drop_model('counter', force => true);
-- a model of its own, it may register and drop
CREATE FUNCTION modeler_fn(text, jsonb, jsonb) RETURNS jsonb LANGUAGE sql AS 'SELECT $3';
SELECT digitaltwin.create_model('modelers', 'modeler_fn(text,jsonb,jsonb)');
SELECT name, owner FROM digitaltwin.models WHERE name = 'modelers';
SELECT digitaltwin.drop_model('modelers', force => true);
RESET ROLE;
-- a role without EXECUTE on create_model cannot call it at all
CREATE ROLE dt_nobody;
GRANT USAGE ON SCHEMA digitaltwin TO dt_nobody;
SET ROLE dt_nobody;
SELECT digitaltwin.create_model('x', 'counter(text,jsonb,jsonb)');
RESET ROLE;

-- drop_model errors
SELECT digitaltwin.drop_model('no_such_model', force => true);
SELECT digitaltwin.drop_model(NULL);

-- nothing half-registered by the failures above
SELECT count(*) FROM digitaltwin.models WHERE name = 'x';
