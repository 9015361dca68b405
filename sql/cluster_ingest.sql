--
-- cluster_ingest: a coordinator's COPY path, batched (version 1.11).
-- No node here: digitaltwin.cluster_events gets one local partition, so
-- that what the view routes can be read back (t/021_cluster.pl sends it to
-- real nodes).
--
CREATE TABLE ingest_local PARTITION OF digitaltwin.cluster_events
    FOR VALUES WITH (MODULUS 1, REMAINDER 0);

-- COPY: every row arrives, once, the time left out is the statement's
BEGIN;
COPY digitaltwin.cluster_ingest (model, twin_id, payload) FROM STDIN;
m1	a	{"v": 1}
m1	b	{"v": 2}
m2	a	{"v": 3}
\.
SELECT model, twin_id, payload, event_time = now() AS default_time
FROM ingest_local ORDER BY payload->>'v';
COMMIT;

-- more rows than one batch (10,000), each once
BEGIN;
INSERT INTO digitaltwin.cluster_ingest
SELECT 'm3', 't' || i, jsonb_build_object('v', i), '2026-01-01'::timestamptz + i * interval '1s'
FROM generate_series(1, 25000) i;
-- sent in this transaction, nothing kept back
SELECT count(*), count(DISTINCT twin_id), sum((payload->>'v')::int) = 25000 * 25001 / 2 AS sum_ok,
       min(event_time), max(event_time)
FROM ingest_local WHERE model = 'm3';
ROLLBACK;
SELECT count(*) FROM ingest_local WHERE model = 'm3';

-- multi-row INSERT, INSERT ... SELECT, RETURNING
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload)
VALUES ('m4', 'x', '{"v": 1}'), ('m4', 'y', '{"v": 2}')
RETURNING model, twin_id, payload;
INSERT INTO digitaltwin.cluster_ingest
SELECT 'm4', 'z' || i, '{}', '2026-01-01' FROM generate_series(1, 3) i;
SELECT count(*) FROM ingest_local WHERE model = 'm4';

-- a subtransaction rolled back takes its rows with it, and only them
BEGIN;
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m5', 'kept1', '{}');
SAVEPOINT s;
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m5', 'gone', '{}');
ROLLBACK TO SAVEPOINT s;
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m5', 'kept2', '{}');
COMMIT;
SELECT twin_id FROM ingest_local WHERE model = 'm5' ORDER BY 1;

-- a row inserted by a function inside an exception block, within a
-- statement into the view: the block's failure throws away its own rows,
-- not the statement's
CREATE FUNCTION ingest_inner(i int) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload)
        VALUES ('m6', 'inner' || i, '{}');
        IF i % 2 = 0 THEN
            RAISE EXCEPTION 'undone';
        END IF;
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
    RETURN 'outer' || i;
END $$;
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload)
SELECT 'm6', ingest_inner(i), '{}' FROM generate_series(1, 4) i;
SELECT string_agg(twin_id, ',' ORDER BY twin_id) FROM ingest_local WHERE model = 'm6';

-- a statement that fails half-way inside an exception block: the rows it
-- had kept are thrown away with its subtransaction, the rest commits
DO $$
BEGIN
    INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m10', 'before', '{}');
    BEGIN
        INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload)
        SELECT 'm10', 'half' || i, jsonb_build_object('v', 1 / (3 - i)) FROM generate_series(1, 5) i;
    EXCEPTION WHEN division_by_zero THEN
        NULL;
    END;
    INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m10', 'after', '{}');
END $$;
SELECT string_agg(twin_id, ',' ORDER BY twin_id) FROM ingest_local WHERE model = 'm10';

-- a row that cannot be routed fails the statement, which leaves nothing
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload, event_time)
VALUES ('m7', 'ok', '{}', now()), ('m7', 'bad', '{}', NULL);
SELECT count(*) FROM ingest_local WHERE model = 'm7';

-- a trigger on cluster_events that inserts into the view while the view's
-- rows are being sent: refused (not added to the rows being sent)
CREATE FUNCTION ingest_again() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m9', 'again', '{}');
    RETURN NULL;
END $$;
CREATE TRIGGER again AFTER INSERT ON ingest_local FOR EACH ROW EXECUTE FUNCTION ingest_again();
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m9', 'first', '{}');
DROP TRIGGER again ON ingest_local;
DROP FUNCTION ingest_again();
SELECT count(*) FROM ingest_local WHERE model = 'm9';

-- the view reads nothing; the trigger functions are not for other tables
SELECT count(*) FROM digitaltwin.cluster_ingest;
CREATE TABLE not_ingest (a text, b text, c jsonb, d timestamptz);
CREATE TRIGGER t BEFORE INSERT ON not_ingest FOR EACH ROW EXECUTE FUNCTION digitaltwin.cluster_ingest_row();
INSERT INTO not_ingest VALUES ('m', 't', '{}', now());
SELECT has_function_privilege('public', 'digitaltwin.cluster_ingest_row()', 'EXECUTE') AS public_may;

-- rights: a writer may, a reader may not; the caller's search_path is not
-- the statement's (a pg_temp or public unnest() and a look-alike table
-- are never used)
CREATE ROLE dt_ci_writer IN ROLE digitaltwin_writer;
CREATE ROLE dt_ci_reader IN ROLE digitaltwin_reader;
GRANT CREATE ON SCHEMA public TO dt_ci_writer;
SET ROLE dt_ci_reader;
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m8', 'r', '{}');
SET ROLE dt_ci_writer;
CREATE FUNCTION public.unnest(text[], text[], jsonb[], timestamptz[])
RETURNS TABLE (m text, t text, p jsonb, e timestamptz) LANGUAGE sql
AS $$ SELECT 'hijacked', 'hijacked', '{}'::jsonb, now() $$;
CREATE TABLE public.cluster_events (model text, twin_id text, payload jsonb, event_time timestamptz);
SET search_path = public, pg_catalog, pg_temp;
INSERT INTO digitaltwin.cluster_ingest (model, twin_id, payload) VALUES ('m8', 'w', '{}');
RESET search_path;
SELECT count(*) AS hijacked FROM public.cluster_events;
RESET ROLE;
SELECT model, twin_id FROM ingest_local WHERE model IN ('m8', 'hijacked');

DROP FUNCTION public.unnest(text[], text[], jsonb[], timestamptz[]);
DROP TABLE public.cluster_events, not_ingest, ingest_local;
DROP FUNCTION ingest_inner(int);
REVOKE CREATE ON SCHEMA public FROM dt_ci_writer;
DROP ROLE dt_ci_writer, dt_ci_reader;
