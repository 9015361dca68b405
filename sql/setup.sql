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

-- the launcher serves this database: CREATE EXTENSION waited for its workers
SELECT database = current_database() AS here, status
FROM digitaltwin.stats WHERE worker IS NULL;

-- Waiting for a timer is waiting for time to pass: the tests poll a
-- condition with this, as PostgreSQL's TAP tests use poll_query_until.
CREATE FUNCTION wait_for(cond text, timeout interval DEFAULT '60s')
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
    deadline timestamptz := clock_timestamp() + timeout;
BEGIN
    LOOP
        -- pg_stat_activity would otherwise stay as first read in this transaction
        PERFORM pg_stat_clear_snapshot();
        EXECUTE 'SELECT ' || cond INTO ok;
        IF ok THEN RETURN true; END IF;
        IF clock_timestamp() > deadline THEN RETURN false; END IF;
        PERFORM pg_sleep(0.02);
    END LOOP;
END $$;

-- its workers, one per partition (digitaltwin.workers), connected to it
SELECT wait_for($$(SELECT count(*) FROM pg_stat_activity
                   WHERE backend_type = 'digitaltwin worker'
                     AND datname = current_database()) = 2$$) AS workers_run;
