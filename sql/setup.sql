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
