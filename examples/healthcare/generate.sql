--
-- Healthcare: patients and a deterministic stream of their wearables'
-- readings, sent in real time (the model's timers watch the clock).
--
--   psql -v ON_ERROR_STOP=1 [-v patients=12] [-v rounds=15] [-v every=0.2] \
--        [-v seed=0.42] -f examples/healthcare/generate.sql
--
-- A round every `every` seconds: each patient still wearing a monitor
-- sends one reading, all of them in one transaction.  A third of the
-- patients (hc-01, hc-04, ...) stop sending after a round of their own
-- (their wearable went silent: the model's silence timer fires N seconds
-- later); the others send until the last round and are then discharged
-- ({"discharge": true}: their timers are cancelled).  One reading in ten or so spikes around the patient's limit.
-- setseed() makes the patients and the readings the same on every run;
-- only the clock times differ.
--
-- Every reading and discharge is kept in the ordinary table
-- healthcare_readings (the queue deletes the events it has processed) with
-- the id of its event and two clock times bracketing its transaction:
-- sent_at (just before the INSERT) and committed_by (just after the
-- COMMIT).  So a check can tell from the table alone whether two readings
-- of a patient were committed less than N seconds apart (then the silence
-- timer the first one armed cannot have fired: the second one was queued
-- before it was due, and re-armed it); sql/example_healthcare.sql does.
--
-- Run it with CALL outside a transaction block (it commits every round).
--
CREATE TABLE IF NOT EXISTS healthcare_readings (
    reading      bigint PRIMARY KEY,
    patient      text NOT NULL,
    round        int NOT NULL,
    bpm          int,               -- NULL for a discharge
    discharge    boolean NOT NULL DEFAULT false,
    sent_at      timestamptz NOT NULL,
    committed_by timestamptz,
    event_id     bigint
);

COMMENT ON TABLE healthcare_readings IS
'Healthcare example: every generated reading (and discharge), its event id, and clock times just before its INSERT and just after its COMMIT.';

CREATE OR REPLACE PROCEDURE healthcare_stream(npatients int DEFAULT 12,
                                              rounds int DEFAULT 15,
                                              every_s float8 DEFAULT 0.2,
                                              seed float8 DEFAULT 0.42)
LANGUAGE plpgsql
AS $$
DECLARE
    first_reading bigint := (SELECT coalesce(max(reading), 0) FROM healthcare_readings);
    next_reading bigint := first_reading;
    last_round int[];       -- per patient: the round of its last reading, NULL: all
    lim     int[];
    patient text;
    lo      int;
    bpm     int;
    started timestamptz;
BEGIN
    PERFORM setseed(seed);

    -- the records: a third have a cardiologist's limit, a quarter a
    -- known arrhythmia
    FOR i IN 1..npatients LOOP
        INSERT INTO patients (patient_id, name, age, max_heart_rate, conditions)
        VALUES ('hc-' || lpad(i::text, 2, '0'), 'Wearer ' || i,
                25 + floor(random() * 60)::int,
                CASE WHEN random() < 0.33 THEN 110 + 5 * floor(random() * 5)::int END,
                CASE WHEN random() < 0.25 THEN ARRAY['arrhythmia'] ELSE '{}' END)
        ON CONFLICT (patient_id) DO NOTHING;
        -- a third stop early, after a round of their own
        last_round[i] := CASE WHEN i % 3 = 1
                              THEN 3 + floor(random() * greatest(rounds - 6, 1))::int END;
        SELECT coalesce(p.max_heart_rate,
                        round((220 - p.age) * CASE WHEN 'arrhythmia' = ANY (p.conditions)
                                                   THEN 0.9 ELSE 1.0 END))
        INTO lo
        FROM patients p WHERE p.patient_id = 'hc-' || lpad(i::text, 2, '0');
        lim[i] := lo;
    END LOOP;
    COMMIT;

    FOR r IN 1..rounds + 1 LOOP
        started := clock_timestamp();
        FOR i IN 1..npatients LOOP
            patient := 'hc-' || lpad(i::text, 2, '0');
            CONTINUE WHEN r > coalesce(last_round[i], rounds + 1);
            next_reading := next_reading + 1;
            IF r = rounds + 1 THEN
                -- those who stayed to the end go home
                INSERT INTO healthcare_readings (reading, patient, round, discharge, sent_at)
                VALUES (next_reading, patient, r, true, started);
                CONTINUE;
            END IF;
            bpm := CASE WHEN random() < 0.1
                        THEN lim[i] - 10 + floor(random() * 40)::int   -- a spike
                        ELSE 60 + floor(random() * 35)::int END;
            INSERT INTO healthcare_readings (reading, patient, round, bpm, sent_at)
            VALUES (next_reading, patient, r, bpm, started);
        END LOOP;

        WITH queued AS (
            INSERT INTO digitaltwin.events (model, twin_id, payload)
            SELECT 'healthcare', h.patient,
                   CASE WHEN h.discharge THEN '{"discharge": true}'
                        ELSE jsonb_build_object('reading', h.reading, 'bpm', h.bpm) END
                   || jsonb_build_object('reading', h.reading)
            FROM healthcare_readings h
            WHERE h.reading > first_reading AND h.round = r
            ORDER BY h.reading
            RETURNING id, (payload->>'reading')::bigint AS reading)
        UPDATE healthcare_readings h SET event_id = q.id
        FROM queued q WHERE h.reading = q.reading;
        COMMIT;

        UPDATE healthcare_readings SET committed_by = clock_timestamp()
        WHERE reading > first_reading AND round = r;
        COMMIT;

        PERFORM pg_sleep(greatest(0, every_s - extract(epoch FROM clock_timestamp() - started)));
    END LOOP;
END
$$;

COMMENT ON PROCEDURE healthcare_stream(int, int, float8, float8) IS
'Healthcare example: create patients and send their readings for the healthcare model in real time, one round every every_s seconds, kept in healthcare_readings.';

\if :{?patients}
\else
\set patients 12
\endif
\if :{?rounds}
\else
\set rounds 15
\endif
\if :{?every}
\else
\set every 0.2
\endif
\if :{?seed}
\else
\set seed 0.42
\endif
CALL healthcare_stream(:patients, :rounds, :every, :seed);
