--
-- The cookbook (docs/patterns.md): each snippet of it, verbatim, in order
-- (t/019_cookbook.pl checks), with waits and checks in between
--
CREATE FUNCTION power_windows(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    taken  timestamptz := (digitaltwin.current_event()).event_time;
    bucket timestamptz := date_bin('1 minute', taken, timestamptz '2000-01-01');
BEGIN
    IF state IS NULL THEN
        RETURN jsonb_build_object('start', bucket, 'n', 1, 'watts', event->'watts', 'late', 0);
    ELSIF bucket < (state->>'start')::timestamptz THEN
        RETURN state || jsonb_build_object('late', (state->>'late')::int + 1);
    ELSIF bucket > (state->>'start')::timestamptz THEN
        PERFORM digitaltwin.alert('info', 'window closed',
            jsonb_build_object('start', state->'start', 'n', state->'n', 'watts', state->'watts'));
        RETURN state || jsonb_build_object('start', bucket, 'n', 1, 'watts', event->'watts');
    END IF;
    RETURN state || jsonb_build_object('n', (state->>'n')::int + 1,
                                       'watts', (state->>'watts')::numeric + (event->>'watts')::numeric);
END $$;
SELECT digitaltwin.create_model('power_windows', 'power_windows(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload, event_time) VALUES
    ('power_windows', 'meter-1', '{"watts": 100}', '2026-12-01 10:00:10+00'),
    ('power_windows', 'meter-1', '{"watts": 120}', '2026-12-01 10:00:50+00'),
    ('power_windows', 'meter-1', '{"watts": 90}',  '2026-12-01 10:01:05+00'),
    ('power_windows', 'meter-1', '{"watts": 80}',  '2026-12-01 10:00:59+00'),
    ('power_windows', 'meter-1', '{"watts": 70}',  '2026-12-01 10:02:00+00');
SELECT digitaltwin.wait_idle('30s');
SELECT details->>'start' AS window_start, details->'n' AS readings, details->'watts' AS watts
FROM digitaltwin.alerts WHERE model = 'power_windows' ORDER BY id;
-- independent: the closed windows from the events sent, late ones apart
SELECT (SELECT count(*) FROM digitaltwin.alerts WHERE model = 'power_windows') AS closed,
       (SELECT state FROM digitaltwin.twins WHERE model = 'power_windows') AS open_window;
CREATE FUNCTION watchdog(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (digitaltwin.current_event()).kind = 'timer' THEN
        PERFORM digitaltwin.alert('warning', 'silent since ' || (state->>'last_seen'));
        RETURN state || '{"silent": true}';
    END IF;
    PERFORM digitaltwin.set_timer('silence', interval '1 second');
    RETURN jsonb_build_object('last_seen', (digitaltwin.current_event()).event_time, 'silent', false);
END $$;
SELECT digitaltwin.create_model('watchdog', 'watchdog(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('watchdog', 'sensor-7', '{}');
SELECT wait_for($$EXISTS (SELECT FROM digitaltwin.alerts WHERE model = 'watchdog')$$) AS fired;
SELECT severity, message LIKE 'silent since %' AS silent_message FROM digitaltwin.alerts WHERE model = 'watchdog';
SELECT state->'silent' AS silent FROM digitaltwin.twins WHERE model = 'watchdog';
CREATE FUNCTION fleet_car(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.send('fleet_region', event->>'region',
                             jsonb_build_object('km', event->'km'));
    RETURN jsonb_build_object('region', event->'region',
                              'km', coalesce((state->>'km')::numeric, 0) + (event->>'km')::numeric);
END $$;
CREATE FUNCTION fleet_region(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'km', coalesce((state->>'km')::numeric, 0) + (event->>'km')::numeric,
        'cars', coalesce(state->'cars', '{}') || jsonb_build_object((digitaltwin.current_event()).sender_twin, true))
$$;
SELECT digitaltwin.create_model('fleet_region', 'fleet_region(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('fleet_car', 'fleet_car(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'fleet_car', 'car-' || (i % 5), jsonb_build_object('region', 'north-' || (i % 2), 'km', i)
FROM generate_series(1, 20) i;
SELECT digitaltwin.wait_idle('30s');
-- independent: each region's kilometres and cars from the events sent
SELECT r.twin_id, r.state->'km' AS km, (SELECT count(*) FROM jsonb_object_keys(r.state->'cars')) AS cars,
       (r.state->>'km')::numeric = (SELECT sum(i) FROM generate_series(1, 20) i WHERE 'north-' || (i % 2) = r.twin_id) AS km_matches
FROM digitaltwin.twins r WHERE r.model = 'fleet_region' ORDER BY r.twin_id;
CREATE FUNCTION speed_guard(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'speed')::int > 130 THEN
        PERFORM digitaltwin.send_to_source(jsonb_build_object('cmd', 'slow_down', 'speed', event->'speed'));
    END IF;
    RETURN jsonb_build_object('speed', event->'speed');
END $$;
SELECT digitaltwin.create_model('speed_guard', 'speed_guard(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('speed_guard', 'car-A', '{"speed": 120}'), ('speed_guard', 'car-A', '{"speed": 150}'),
    ('speed_guard', 'car-B', '{"speed": 135}');
SELECT digitaltwin.wait_idle('30s');
BEGIN;
SELECT twin_id, payload->>'cmd' AS cmd, payload->'speed' AS speed
FROM digitaltwin.take_outbox(100, 'speed_guard') ORDER BY twin_id;
-- ... deliver each command to its device, then:
COMMIT;
SELECT count(*) AS left_in_outbox FROM digitaltwin.outbox WHERE model = 'speed_guard' AND taken_at IS NULL;
CREATE TABLE rentals (car text PRIMARY KEY, renter text NOT NULL);
INSERT INTO rentals VALUES ('car-9', 'alice');
CREATE FUNCTION rental_init(twin_id text) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('renter', (SELECT renter FROM rentals WHERE car = twin_id))
$$;
CREATE FUNCTION rental(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'refresh' THEN
        RETURN state || jsonb_build_object('renter', (SELECT renter FROM rentals WHERE car = twin_id));
    END IF;
    RETURN state || jsonb_build_object('km', event->'km');
END $$;
SELECT digitaltwin.create_model('rental', 'rental(text,jsonb,jsonb)', 'rental_init(text)');
CREATE FUNCTION rentals_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.send('rental', NEW.car, '{"refresh": true}');
    RETURN NULL;
END $$;
CREATE TRIGGER rentals_changed AFTER UPDATE ON rentals
    FOR EACH ROW WHEN (OLD.renter IS DISTINCT FROM NEW.renter) EXECUTE FUNCTION rentals_changed();
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('rental', 'car-9', '{"km": 12}');
SELECT digitaltwin.wait_idle('30s');
SELECT state FROM digitaltwin.twins WHERE model = 'rental';
UPDATE rentals SET renter = 'bob' WHERE car = 'car-9';
SELECT digitaltwin.wait_idle('30s');
SELECT state FROM digitaltwin.twins WHERE model = 'rental';
CREATE FUNCTION limits_v1(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'temp')::numeric > 80 THEN
        PERFORM digitaltwin.alert('warning', 'hot: ' || (event->>'temp'));
    END IF;
    RETURN jsonb_build_object('temp', event->'temp');
END $$;
CREATE FUNCTION limits_v2(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (event->>'temp')::numeric > 75 THEN
        PERFORM digitaltwin.alert('warning', 'hot: ' || (event->>'temp'));
    END IF;
    RETURN jsonb_build_object('temp', event->'temp');
END $$;
SELECT digitaltwin.create_model('limits', 'limits_v1(text,jsonb,jsonb)');
SELECT digitaltwin.set_event_log('limits', '7 days');
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'limits', 'oven-' || (i % 3), jsonb_build_object('temp', 60 + i * 2) FROM generate_series(1, 12) i;
SELECT digitaltwin.wait_idle('30s');
SELECT digitaltwin.rehearse('limits', 'limits_v2(text,jsonb,jsonb)') AS rehearsal \gset
SELECT kind, twin_id, message FROM digitaltwin.rehearsal_diff(:rehearsal)
WHERE kind <> 'state' ORDER BY kind, twin_id, message;
SELECT digitaltwin.alter_model('limits', 'limits_v2(text,jsonb,jsonb)');
-- independent: the readings between the two limits, each alerted by v2 only
SELECT count(*) AS between_limits FROM generate_series(1, 12) i WHERE 60 + i * 2 > 75 AND 60 + i * 2 <= 80;
SELECT name, version FROM digitaltwin.models WHERE name = 'limits';
CREATE FUNCTION strict_meter(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('total', coalesce((state->>'total')::numeric, 0) + (event->>'kwh')::numeric)
$$;
SELECT digitaltwin.create_model('strict_meter', 'strict_meter(text,jsonb,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('strict_meter', 'm-1', '{"kwh": 5}'), ('strict_meter', 'm-1', '{"kwh": "five"}'),
    ('strict_meter', 'm-1', '{"kwh": 7}');
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, payload, sqlstate, error FROM digitaltwin.dead_letters WHERE model = 'strict_meter';
UPDATE digitaltwin.dead_letters SET payload = '{"kwh": 5}'
WHERE model = 'strict_meter' AND payload->>'kwh' = 'five';
SELECT digitaltwin.retry_dead_letters('strict_meter');
SELECT digitaltwin.wait_idle('30s');
SELECT state FROM digitaltwin.twins WHERE model = 'strict_meter';
SELECT count(*) AS dead_letters_left FROM digitaltwin.dead_letters WHERE model = 'strict_meter';
CREATE TABLE meters (meter text PRIMARY KEY, customer text, tariff numeric);
INSERT INTO meters VALUES ('meter-1', 'ACME', 0.25);
SELECT digitaltwin.create_twin_view('power_windows', 'meter_windows',
                                    'start timestamptz, n int, watts numeric, late int');
SELECT m.customer, w.start, w.n, w.watts, w.watts * m.tariff AS cost, w.late
FROM meters m JOIN meter_windows w ON w.twin_id = m.meter;
CREATE TYPE thermo_state AS (readings int, max_temp numeric);
CREATE FUNCTION thermo(twin_id text, state thermo_state, event jsonb) RETURNS thermo_state
LANGUAGE sql AS $$
    SELECT ROW(coalesce(state.readings, 0) + 1,
               greatest(state.max_temp, (event->>'temp')::numeric))::thermo_state
$$;
SELECT digitaltwin.create_model('thermo', 'thermo(text,thermo_state,jsonb)');
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('thermo', 'th-1', '{"temp": 21.5}'), ('thermo', 'th-1', '{"temp": 19}');
SELECT digitaltwin.wait_idle('30s');
SELECT twin_id, state FROM digitaltwin.twins WHERE model = 'thermo';

-- clean up
SELECT digitaltwin.drop_model(m, force => true)
FROM unnest(ARRAY['power_windows', 'watchdog', 'fleet_car', 'fleet_region', 'speed_guard', 'rental',
                  'limits', 'strict_meter', 'thermo']) m;
DELETE FROM digitaltwin.outbox WHERE model = 'speed_guard';
DROP TABLE rentals, meters;
DROP FUNCTION power_windows, watchdog, fleet_car, fleet_region, speed_guard, rental_init, rental,
              rentals_changed, limits_v1, limits_v2, strict_meter, thermo;
DROP TYPE thermo_state;
