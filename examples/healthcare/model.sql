--
-- Healthcare: the digital twin of a patient's wearable heart-rate monitor.
--
-- Each patient's twin judges every reading against the patient's medical
-- record (the ordinary table "patients", read once by the init function
-- when the twin starts) and watches the wearable itself with two durable
-- timers (digitaltwin.set_timer), so that no outside loop has to send
-- "tick" events:
--
--   high rate  a reading above the patient's limit: a critical alert.  The
--              limit is the cardiologist's (patients.max_heart_rate) when
--              there is one, else 220 - age, 10% lower with a known
--              arrhythmia;
--   silence    "no reading for N seconds": every reading re-arms the
--              one-shot timer 'silence' N seconds ahead (replacing the one
--              the previous reading armed), so it fires only when N seconds
--              pass without a reading.  It raises a warning and pauses the
--              summaries until the next reading;
--   summary    a recurring timer 'summary', every M seconds while the
--              wearable sends: an 'info' alert with the number, mean and
--              maximum of the readings since the previous summary.
--
-- N and M come from the one-row table healthcare_settings (30 s and 60 s
-- unless changed), read into the twin's state by init: a twin keeps the
-- values it started with.  A {"discharge": true} event ends the monitoring
-- of a patient: both timers are cancelled.
--
--   psql -v ON_ERROR_STOP=1 -f examples/healthcare/model.sql
--   psql -v ON_ERROR_STOP=1 -f examples/healthcare/generate.sql
--
-- Events: {"reading": 17, "bpm": 97} (reading: the generator's number of
-- the reading, named by the alerts it raises), {"discharge": true}.
--
CREATE EXTENSION IF NOT EXISTS digitaltwin;

-- The medical record (the same shape as examples/heart_rate.sql's, so that
-- both examples can share it).
CREATE TABLE IF NOT EXISTS patients (
    patient_id      text PRIMARY KEY,
    name            text NOT NULL,
    age             int NOT NULL CHECK (age BETWEEN 0 AND 130),
    max_heart_rate  int CHECK (max_heart_rate BETWEEN 40 AND 250),
    conditions      text[] NOT NULL DEFAULT '{}'
);

COMMENT ON TABLE patients IS
'Medical records: the heart-rate twins take their alert limit from here.';

CREATE TABLE IF NOT EXISTS healthcare_settings (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    silence_s   numeric NOT NULL DEFAULT 30 CHECK (silence_s > 0),
    summary_s   numeric NOT NULL DEFAULT 60 CHECK (summary_s > 0)
);

COMMENT ON TABLE healthcare_settings IS
'Healthcare model: seconds without a reading before a silence alert (silence_s), seconds between summaries (summary_s); read when a twin starts.';

INSERT INTO healthcare_settings DEFAULT VALUES ON CONFLICT DO NOTHING;

--
-- init: the starting state of a patient's twin, from the record and the
-- settings.  A patient with no record is monitored with a limit of 180.
--
CREATE OR REPLACE FUNCTION healthcare_init(twin_id text)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object(
        'limit', coalesce(p.max_heart_rate,
                          round((220 - p.age) *
                                CASE WHEN 'arrhythmia' = ANY (p.conditions)
                                     THEN 0.9 ELSE 1.0 END),
                          180),
        'silence_s', s.silence_s,
        'summary_s', s.summary_s,
        'readings', 0,          -- all readings
        'last_reading', NULL,   -- the last one's number
        'since', 0,             -- readings since the last summary
        'since_sum', 0,
        'since_max', 0,
        'summaries', 0,
        'summary_on', false,    -- is the summary timer armed?
        'silent', false,
        'discharged', false)
    FROM (SELECT NULL) dummy
    LEFT JOIN patients p ON p.patient_id = twin_id
    LEFT JOIN healthcare_settings s ON true
$$;

COMMENT ON FUNCTION healthcare_init(text) IS
'Healthcare model: starting state of a patient''s wearable twin, from patients and healthcare_settings.';

--
-- process: a reading, a discharge, or one of the twin's timers.
--
CREATE OR REPLACE FUNCTION healthcare_process(twin_id text, state jsonb, event jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    ev      digitaltwin.event_info := digitaltwin.current_event();
    lim     int := (state->>'limit')::int;
    bpm     int;
    reading bigint;
    since   int := (state->>'since')::int;
BEGIN
    IF ev.kind = 'timer' AND ev.timer = 'silence' THEN
        -- N seconds without a reading: the timer the last reading armed
        PERFORM digitaltwin.alert('warning',
            format('%s: no reading for %s s', twin_id, state->>'silence_s'),
            jsonb_build_object('rule', 'silence', 'last_reading', event->'last_reading'));
        -- nothing to summarise until the wearable is back
        PERFORM digitaltwin.cancel_timer('summary');
        RETURN state || '{"silent": true, "summary_on": false}';
    END IF;

    IF ev.kind = 'timer' AND ev.timer = 'summary' THEN
        PERFORM digitaltwin.alert('info',
            format('%s: %s readings, mean %s, max %s', twin_id, since,
                   CASE WHEN since > 0
                        THEN round((state->>'since_sum')::numeric / since) END,
                   CASE WHEN since > 0 THEN state->>'since_max' END),
            jsonb_build_object('rule', 'summary', 'readings', since,
                               'mean', CASE WHEN since > 0
                                            THEN round((state->>'since_sum')::numeric / since, 1) END,
                               'max', CASE WHEN since > 0 THEN (state->>'since_max')::int END));
        RETURN state || jsonb_build_object('since', 0, 'since_sum', 0, 'since_max', 0,
                                           'summaries', (state->>'summaries')::int + 1);
    END IF;

    IF event ? 'discharge' THEN
        PERFORM digitaltwin.cancel_timer('silence');
        PERFORM digitaltwin.cancel_timer('summary');
        RETURN state || '{"discharged": true, "summary_on": false}';
    END IF;

    bpm := (event->>'bpm')::int;
    reading := (event->>'reading')::bigint;
    IF bpm IS NULL OR bpm <= 0 OR bpm > 300 THEN
        -- a broken sensor reading: dead-letter it, keep the twin as it was
        RAISE EXCEPTION 'implausible heart rate % for %', event->'bpm', twin_id
            USING ERRCODE = 'data_exception';
    END IF;

    IF bpm > lim THEN
        PERFORM digitaltwin.alert('critical',
            format('%s: heart rate %s above limit %s', twin_id, bpm, lim),
            jsonb_build_object('rule', 'high_rate', 'reading', reading,
                               'bpm', bpm, 'limit', lim));
    END IF;

    -- re-arm "no reading for N seconds": replaces the previous reading's
    PERFORM digitaltwin.set_timer('silence',
        make_interval(secs => (state->>'silence_s')::float8),
        jsonb_build_object('last_reading', reading));
    IF NOT (state->>'summary_on')::boolean THEN
        PERFORM digitaltwin.set_timer('summary',
            make_interval(secs => (state->>'summary_s')::float8), '{}',
            every => make_interval(secs => (state->>'summary_s')::float8));
    END IF;

    RETURN state || jsonb_build_object(
        'readings', (state->>'readings')::bigint + 1,
        'last_reading', reading,
        'since', since + 1,
        'since_sum', (state->>'since_sum')::bigint + bpm,
        'since_max', greatest((state->>'since_max')::int, bpm),
        'summary_on', true,
        'silent', false,
        'discharged', false);
END
$$;

COMMENT ON FUNCTION healthcare_process(text, jsonb, jsonb) IS
'Healthcare model: a patient''s wearable: readings against the record, silence and summary timers.';

SELECT digitaltwin.create_model('healthcare',
                                'healthcare_process(text,jsonb,jsonb)',
                                'healthcare_init(text)')
WHERE NOT EXISTS (SELECT 1 FROM digitaltwin.models WHERE name = 'healthcare');
