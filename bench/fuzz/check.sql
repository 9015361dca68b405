-- After fuzzing: every accepted event applied or dead-lettered, and no
-- internal error anywhere.  Lines starting with FAIL fail the run.
\pset format unaligned
\pset fieldsep ' '
\pset tuples_only on
WITH acc AS (SELECT model, sum(n) AS accepted FROM fuzz_accepted GROUP BY model),
     app AS (SELECT model, sum(event_count) AS applied FROM digitaltwin.twins GROUP BY model),
     dead AS (SELECT model, count(*) AS dead FROM digitaltwin.dead_letters GROUP BY model)
SELECT CASE WHEN acc.accepted = coalesce(applied, 0) + coalesce(dead, 0) THEN 'ok  '
            -- the example models may end twins (their events then leave no count)
            WHEN acc.model NOT IN ('fuzz_keep', 'fuzz_alert') THEN 'ok? '
            ELSE 'FAIL' END,
       'model ' || acc.model || ': accepted ' || accepted || ', applied ' || coalesce(applied, 0)
       || ', dead-lettered ' || coalesce(dead, 0)
FROM acc LEFT JOIN app USING (model) LEFT JOIN dead USING (model) ORDER BY acc.model;
SELECT 'calls ending in SQLSTATE ' || sqlstate || ': ' || sum(calls)
FROM fuzz_outcomes GROUP BY sqlstate ORDER BY sum(calls) DESC;
SELECT 'dead letters with SQLSTATE ' || sqlstate || ': ' || count(*)
FROM digitaltwin.dead_letters GROUP BY sqlstate ORDER BY count(*) DESC;
SELECT CASE WHEN count(*) > 0 THEN 'FAIL' ELSE 'ok  ' END || ' internal errors (XX000): ' || count(*)
FROM (SELECT sqlstate FROM fuzz_outcomes WHERE sqlstate = 'XX000'
      UNION ALL SELECT sqlstate FROM digitaltwin.dead_letters WHERE sqlstate = 'XX000') e;
