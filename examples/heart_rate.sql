--
-- Heart-rate monitor: the digital twin of a patient wearing a monitor.
--
-- Each patient's twin judges every heart-rate reading against a limit that
-- depends on the patient's medical record, and remembers the recent past so
-- that it can tell a single spike from a sustained episode.
--
--   psql -v ON_ERROR_STOP=1 -f examples/heart_rate.sql
--
-- Events: {"bpm": 97}   (optionally "ts" for the device time)
--
CREATE EXTENSION IF NOT EXISTS digitaltwin;

-- The medical record, an ordinary table the twin reads when it starts.
CREATE TABLE IF NOT EXISTS patients (
    patient_id      text PRIMARY KEY,
    name            text NOT NULL,
    age             int NOT NULL CHECK (age BETWEEN 0 AND 130),
    max_heart_rate  int CHECK (max_heart_rate BETWEEN 40 AND 250),
    conditions      text[] NOT NULL DEFAULT '{}'
);

COMMENT ON TABLE patients IS
'Medical records: the heart-rate twins take their alert limit from here.';

INSERT INTO patients (patient_id, name, age, max_heart_rate, conditions)
SELECT 'patient-' || i,
       'Patient ' || i,
       20 + (i * 7) % 65,
       -- cardiologists set an explicit limit for a third of the patients
       CASE WHEN i % 3 = 0 THEN 110 + (i % 5) * 5 END,
       CASE WHEN i % 4 = 0 THEN ARRAY['arrhythmia'] ELSE '{}' END
FROM generate_series(1, 50) i
ON CONFLICT (patient_id) DO NOTHING;

--
-- init: the starting state of a patient's twin, from the record.  The limit
-- is the cardiologist's when there is one, else the classic 220 - age, 10%
-- lower for patients with a known arrhythmia.
--
CREATE OR REPLACE FUNCTION heart_rate_init(twin_id text)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object(
        'limit', coalesce(p.max_heart_rate,
                          round((220 - p.age) *
                                CASE WHEN 'arrhythmia' = ANY (p.conditions)
                                     THEN 0.9 ELSE 1.0 END)),
        'readings', 0,
        'sum', 0,
        'max', 0,
        'last', NULL,
        'over_streak', 0)
    FROM (SELECT NULL) dummy
    LEFT JOIN patients p ON p.patient_id = twin_id
$$;

COMMENT ON FUNCTION heart_rate_init(text) IS
'Heart-rate model: starting state of a patient twin, from the patients table.';

--
-- process: one reading.  A reading over the limit raises a critical alert;
-- the third consecutive one raises a "sustained" alert as well.
--
CREATE OR REPLACE FUNCTION heart_rate_process(twin_id text, state jsonb, event jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    bpm     int := (event->>'bpm')::int;
    lim     int := (state->>'limit')::int;
    streak  int := (state->>'over_streak')::int;
BEGIN
    IF bpm IS NULL OR bpm <= 0 OR bpm > 300 THEN
        -- a broken sensor reading: dead-letter it, keep the twin as it was
        RAISE EXCEPTION 'implausible heart rate % for %', event->'bpm', twin_id
            USING ERRCODE = 'data_exception';
    END IF;

    IF lim IS NULL THEN
        -- no medical record: monitor with a conservative default
        lim := 180;
    END IF;

    IF bpm > lim THEN
        streak := streak + 1;
        PERFORM digitaltwin.alert('critical',
            format('%s: heart rate %s above limit %s', twin_id, bpm, lim),
            jsonb_build_object('bpm', bpm, 'limit', lim));
        IF streak = 3 THEN
            PERFORM digitaltwin.alert('sustained',
                format('%s: three readings in a row above %s', twin_id, lim),
                jsonb_build_object('bpm', bpm, 'limit', lim));
        END IF;
    ELSE
        streak := 0;
    END IF;

    RETURN state || jsonb_build_object(
        'limit', lim,
        'readings', (state->>'readings')::bigint + 1,
        'sum', (state->>'sum')::bigint + bpm,
        'max', greatest((state->>'max')::int, bpm),
        'last', bpm,
        'over_streak', streak);
END
$$;

COMMENT ON FUNCTION heart_rate_process(text, jsonb, jsonb) IS
'Heart-rate model: apply one reading {"bpm": n} to a patient twin, alerting above the patient''s limit.';

SELECT digitaltwin.create_model('heart_rate',
                                'heart_rate_process(text,jsonb,jsonb)',
                                'heart_rate_init(text)')
WHERE NOT EXISTS (SELECT 1 FROM digitaltwin.models WHERE name = 'heart_rate');
