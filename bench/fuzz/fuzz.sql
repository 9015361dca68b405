-- Random input generators and the fuzzing procedure of bench/fuzz/run.sh.

-- a twin id: NULL, empty, random Unicode, or up to 80 bytes
CREATE FUNCTION fuzz_text(maxlen int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    n int := (random() * maxlen)::int;
    s text := '';
BEGIN
    IF random() < 0.02 THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. n LOOP
        s := s || CASE (random() * 4)::int
                  WHEN 0 THEN chr(32 + (random() * 94)::int)
                  WHEN 1 THEN chr(160 + (random() * 2000)::int)
                  WHEN 2 THEN chr(19968 + (random() * 20000)::int)
                  WHEN 3 THEN chr(65536 + (random() * 60000)::int)
                  ELSE chr(1 + (random() * 31)::int) END;
    END LOOP;
    RETURN s;
END $$;

-- any JSON value, nested up to 'depth' levels; below the top few levels
-- containers have at most one member, so that the size stays bounded
CREATE FUNCTION fuzz_json(depth int) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r float8 := random();
    j jsonb;
    width int := CASE WHEN depth > 3 THEN 1 ELSE 4 END;
BEGIN
    IF depth <= 0 OR r < 0.35 THEN
        RETURN CASE (random() * 7)::int
            WHEN 0 THEN 'null'::jsonb
            WHEN 1 THEN to_jsonb(random() < 0.5)
            WHEN 2 THEN to_jsonb((random() * 400)::int)
            WHEN 3 THEN to_jsonb(('1e' || (random() * 300)::int)::numeric)
            WHEN 4 THEN to_jsonb(-random() * 1e9)
            WHEN 5 THEN to_jsonb(repeat(coalesce(fuzz_text(8), 'x'), (random() * 3000)::int))
            ELSE to_jsonb(coalesce(fuzz_text(20), '')) END;
    ELSIF r < 0.6 THEN
        SELECT coalesce(jsonb_agg(fuzz_json(depth - 1)), '[]') INTO j
        FROM generate_series(1, (random() * width)::int);
        RETURN j;
    END IF;
    SELECT coalesce(jsonb_object_agg(k, fuzz_json(depth - 1)), '{}') INTO j
    FROM (SELECT DISTINCT CASE WHEN random() < 0.3 THEN 'bpm' ELSE coalesce(fuzz_text(10), 'k') END AS k
          FROM generate_series(1, (random() * width)::int)) keys;
    RETURN j;
END $$;

-- models: one keeping the last payload, the C heart-rate model (created by
-- examples), and one raising alerts with whatever the event holds
CREATE FUNCTION fuzz_keep(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN coalesce(state, '{}') || event || jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
CREATE FUNCTION fuzz_alert(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.alert(event->>'severity', event->>'message', event->'details');
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1);
END $$;
SELECT digitaltwin.create_model('fuzz_keep', 'fuzz_keep(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('fuzz_alert', 'fuzz_alert(text,jsonb,jsonb)');

-- accepted events, as the senders saw them (committed with the events)
CREATE TABLE fuzz_accepted (model text, n bigint);
CREATE TABLE fuzz_outcomes (session int, sqlstate text, calls bigint);

CREATE PROCEDURE fuzz_run(seconds int, session int) LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => seconds);
    model text;
    payload jsonb;
    n int;
    state text;
    outcomes jsonb := '{}';
BEGIN
    WHILE clock_timestamp() < deadline LOOP
        model := CASE (random() * 6)::int
                 WHEN 0 THEN 'fuzz_keep' WHEN 1 THEN 'heart_rate_c' WHEN 2 THEN 'fuzz_alert'
                 WHEN 3 THEN fuzz_text(70) WHEN 4 THEN 'heart_rate' ELSE 'fuzz_keep' END;
        state := '00000';
        BEGIN
            CASE (random() * 5)::int
            WHEN 0, 1 THEN
                payload := fuzz_json(CASE WHEN random() < 0.2 THEN 40 ELSE 3 END);
                PERFORM digitaltwin.send(model, fuzz_text(80), payload);
                INSERT INTO fuzz_accepted VALUES (model, 1);
            WHEN 2 THEN
                INSERT INTO digitaltwin.events (model, twin_id, payload)
                SELECT model, 'patient-' || (random() * 200)::int,
                       CASE WHEN random() < 0.5 THEN jsonb_build_object('bpm', fuzz_json(0),
                                                                      'severity', fuzz_text(10),
                                                                      'message', fuzz_text(30),
                                                                      'details', fuzz_json(3))
                            ELSE fuzz_json(3) END
                FROM generate_series(1, 1 + (random() * 20)::int);
                GET DIAGNOSTICS n = ROW_COUNT;
                INSERT INTO fuzz_accepted VALUES (model, n);
            WHEN 3 THEN
                PERFORM digitaltwin.create_model(fuzz_text(70),
                    (ARRAY['fuzz_keep(text,jsonb,jsonb)', 'fuzz_json(int)', 'fuzz_text(int)',
                           'fuzz_alert(text,jsonb,jsonb)'])[1 + (random() * 3)::int]::regprocedure,
                    CASE WHEN random() < 0.5 THEN NULL ELSE 'fuzz_text(int)'::regprocedure END);
            ELSE
                PERFORM digitaltwin.drop_model(fuzz_text(10));
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            state := SQLSTATE;
            IF state = 'XX000' THEN
                RAISE WARNING 'internal error: %', SQLERRM;
            END IF;
        END;
        outcomes := jsonb_set(outcomes, ARRAY[state],
                              to_jsonb(coalesce((outcomes->>state)::bigint, 0) + 1));
        COMMIT;
    END LOOP;
    INSERT INTO fuzz_outcomes SELECT session, key, value::bigint FROM jsonb_each_text(outcomes);
    COMMIT;
END $$;
