--
-- Installation and configuration
--
CREATE EXTENSION digitaltwin;

-- the extension lives in its own schema and is not relocatable
SELECT extname, extversion, extnamespace::regnamespace, extrelocatable
FROM pg_extension WHERE extname = 'digitaltwin';
ALTER EXTENSION digitaltwin SET SCHEMA public;

-- every public object is documented
SELECT c.relname
FROM pg_class c
WHERE c.relnamespace = 'digitaltwin'::regnamespace
  AND c.relkind IN ('r', 'v')
  AND obj_description(c.oid, 'pg_class') IS NULL;
SELECT p.oid::regprocedure
FROM pg_proc p
WHERE p.pronamespace = 'digitaltwin'::regnamespace
  AND obj_description(p.oid, 'pg_proc') IS NULL;

-- configuration parameters, with units and bounds
SELECT name, setting, unit, context, min_val, max_val
FROM pg_settings WHERE name LIKE 'digitaltwin.%' ORDER BY name;
SET digitaltwin.batch_size = 0;
SET digitaltwin.max_payload_size = '2GB';
SET digitaltwin.workers = 3;
SET digitaltwin.nonexistent = 1;

-- the workers of this instance serve this database
SELECT current_database() = current_setting('digitaltwin.database') AS served;

-- Waiting for a timer is waiting for time to pass: the tests poll a
-- condition with this, as PostgreSQL's TAP tests use poll_query_until.
CREATE FUNCTION wait_for(cond text, timeout interval DEFAULT '60s')
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
    deadline timestamptz := clock_timestamp() + timeout;
BEGIN
    LOOP
        EXECUTE 'SELECT ' || cond INTO ok;
        IF ok THEN RETURN true; END IF;
        IF clock_timestamp() > deadline THEN RETURN false; END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
END $$;
