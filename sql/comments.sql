--
-- psql ergonomics: every object of the extension has a COMMENT (\dx+
-- digitaltwin, \df+, \d+ show what each is for)
--
SELECT pg_describe_object(d.classid, d.objid, d.objsubid) AS without_comment
FROM pg_depend d
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'digitaltwin'
WHERE d.deptype = 'e'
  AND d.refclassid = 'pg_extension'::regclass
  AND obj_description(d.objid, (SELECT relname FROM pg_class WHERE oid = d.classid)) IS NULL
  -- a table's row type and array type are described by the table
  AND NOT (d.classid = 'pg_type'::regclass AND EXISTS (
          SELECT FROM pg_type t WHERE t.oid = d.objid AND (t.typrelid <> 0 OR t.typelem <> 0)))
ORDER BY 1;
-- and the extension itself
SELECT obj_description(oid, 'pg_extension') IS NOT NULL AS described
FROM pg_extension WHERE extname = 'digitaltwin';
