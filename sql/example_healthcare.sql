--
-- The healthcare example (examples/healthcare): the twins' alerts against
-- an independent query over the generated readings, with short timers
-- (silence after 1 s, a summary every 0.5 s) so that the test stays fast
--
-- (pg_regress runs in the tree's root: examples/ is at hand; the example's
-- files are not echoed, so that editing their comments changes nothing here)
CREATE SCHEMA healthcare_example;
SET search_path = healthcare_example, public;
SET client_min_messages = warning;
\set ECHO none
\i examples/healthcare/model.sql
\set ECHO all
UPDATE healthcare_settings SET silence_s = 1, summary_s = 0.5;
\set ECHO none
\set patients 12
\set rounds 15
\set every 0.2
\set seed 0.42
\i examples/healthcare/generate.sql
\set ECHO all
RESET client_min_messages;
SELECT digitaltwin.wait_idle('60s');

-- Waiting for timers is waiting for time to pass: poll (wait_for, from
-- setup.sql).  Done when no timer is pending: every wearable that went
-- silent has had its silence alert (which stops its summaries), and the
-- discharged patients' timers are cancelled.
SELECT wait_for($$NOT EXISTS (SELECT 1 FROM digitaltwin.timers WHERE model = 'healthcare')$$);
SELECT digitaltwin.wait_idle('60s');

-- The reference, from healthcare_readings and patients alone.  Each
-- reading with the next event of its patient (a reading or the discharge).
CREATE TEMP TABLE ref_reading AS
SELECT h.*,
       lead(h.reading) OVER w AS next_reading,
       lead(h.committed_by) OVER w AS next_committed_by,
       coalesce(p.max_heart_rate,
                round((220 - p.age) * CASE WHEN 'arrhythmia' = ANY (p.conditions)
                                           THEN 0.9 ELSE 1.0 END)) AS lim
FROM healthcare_readings h JOIN patients p ON p.patient_id = h.patient
WINDOW w AS (PARTITION BY h.patient ORDER BY h.reading);
-- high rate: a reading above the record's limit
CREATE TEMP TABLE ref_high AS
SELECT patient, reading FROM ref_reading WHERE NOT discharge AND bpm > lim;
-- silence, required: after the last reading of a patient who was not
-- discharged (nothing re-armed the timer it armed)
CREATE TEMP TABLE ref_silence_required AS
SELECT patient, reading FROM ref_reading WHERE NOT discharge AND next_reading IS NULL;
-- silence, allowed: those, and a reading whose next event was committed
-- 0.9 s or more after it was sent (on a machine so loaded that the stream
-- stalled for N seconds).  Any other reading was followed, less than N
-- after it was armed, by one committed before its timer was due, which
-- re-armed (or cancelled) it: its silence alert cannot exist.
CREATE TEMP TABLE ref_silence_allowed AS
SELECT patient, reading FROM ref_silence_required
UNION
SELECT patient, reading FROM ref_reading
WHERE NOT discharge AND next_committed_by - sent_at >= interval '0.9 s';

CREATE TEMP TABLE model_alerts AS
SELECT a.details->>'rule' AS rule, a.twin_id AS patient,
       coalesce(a.details->>'reading', a.details->>'last_reading')::bigint AS reading,
       a.severity, a.message, a.details
FROM digitaltwin.alerts a WHERE a.model = 'healthcare';

-- the same high-rate alerts, each once
SELECT (SELECT count(*) FROM (SELECT patient, reading FROM ref_high
                              EXCEPT ALL
                              SELECT patient, reading FROM model_alerts
                              WHERE rule = 'high_rate') m) AS missing,
       (SELECT count(*) FROM (SELECT patient, reading FROM model_alerts
                              WHERE rule = 'high_rate'
                              EXCEPT ALL
                              SELECT patient, reading FROM ref_high) u) AS unexpected,
       (SELECT count(*) FROM model_alerts WHERE rule = 'high_rate') AS high_rate_alerts;
-- silence: every wearable that stopped, once, after its last reading; none
-- while readings were arriving less than N seconds apart
SELECT (SELECT count(*) FROM (SELECT patient, reading FROM ref_silence_required
                              EXCEPT ALL
                              SELECT patient, reading FROM model_alerts
                              WHERE rule = 'silence') m) AS missing,
       (SELECT count(*) FROM (SELECT patient, reading FROM model_alerts
                              WHERE rule = 'silence'
                              EXCEPT ALL
                              SELECT patient, reading FROM ref_silence_allowed) u) AS unexpected,
       (SELECT count(*) FROM model_alerts m JOIN ref_silence_required r USING (patient, reading)
        WHERE m.rule = 'silence') AS silence_alerts_of_stopped;
-- summaries: every reading in exactly one summary or in the readings since
-- the last one; the state agrees with the alerts; a patient who streamed
-- until discharged (3 s) had at least 2 summaries (one every 0.5 s)
SELECT count(*) AS patients,
       count(*) FILTER (WHERE s.summarised + (t.state->>'since')::int <> r.readings
                           OR (t.state->>'readings')::int <> r.readings
                           OR (t.state->>'summaries')::int <> s.summaries) AS mismatched,
       count(*) FILTER (WHERE r.discharged AND s.summaries < 2) AS discharged_under_2_summaries
FROM (SELECT patient, count(*) FILTER (WHERE NOT discharge) AS readings,
             bool_or(discharge) AS discharged
      FROM healthcare_readings GROUP BY patient) r
JOIN digitaltwin.twins t ON t.model = 'healthcare' AND t.twin_id = r.patient
LEFT JOIN LATERAL (SELECT count(*) AS summaries,
                          coalesce(sum((m.details->>'readings')::int), 0) AS summarised
                   FROM model_alerts m
                   WHERE m.rule = 'summary' AND m.patient = r.patient) s ON true;
SELECT rule, severity, count(DISTINCT patient) > 0 AS raised
FROM model_alerts GROUP BY rule, severity ORDER BY rule;

-- what the stream exercised: patients who stopped early, patients
-- discharged; the twins' end state; nothing left pending
SELECT count(*) FILTER (WHERE NOT discharge) AS readings,
       count(DISTINCT patient) FILTER (WHERE discharge) AS discharged,
       (SELECT count(*) FROM ref_silence_required) AS stopped,
       count(*) FILTER (WHERE bpm > lim) AS above_limit,
       count(*) FILTER (WHERE bpm <= lim AND bpm > lim - 10) AS just_under
FROM ref_reading;
SELECT count(*) FILTER (WHERE (state->>'silent')::boolean) AS silent,
       count(*) FILTER (WHERE (state->>'discharged')::boolean) AS discharged,
       count(*) FILTER (WHERE (state->>'summary_on')::boolean) AS summarising
FROM digitaltwin.twins WHERE model = 'healthcare';
SELECT count(*) AS timers FROM digitaltwin.timers WHERE model = 'healthcare';
SELECT count(*) AS dead_letters FROM digitaltwin.dead_letters WHERE model = 'healthcare';

-- the patients who stopped: their silence alert (the last reading is the
-- generator's number)
SELECT m.patient, h.round AS last_round, m.severity, m.message
FROM model_alerts m JOIN ref_silence_required r USING (patient, reading)
JOIN healthcare_readings h USING (reading)
WHERE m.rule = 'silence'
ORDER BY m.patient;
-- hc-01 (stopped after round 3 or later): every alert but the summaries
SELECT rule, severity, message, details - 'last_reading' - 'reading' AS details
FROM model_alerts WHERE patient = 'hc-01' AND rule <> 'summary'
ORDER BY reading, rule;

SELECT digitaltwin.drop_model('healthcare', force => true);
RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA healthcare_example CASCADE;
RESET client_min_messages;
