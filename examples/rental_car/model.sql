--
-- Rental car telematics: the digital twin of a rented car, and of the
-- region it drives in.
--
-- A car's twin takes its rules from two ordinary tables, read once by the
-- init function when the twin starts: the rental (which driver, and the
-- geofence: the box of latitudes and longitudes the car may be driven in)
-- and the driver's record.  On each position {"reading", "lat", "lon",
-- "speed"} (km/h) it checks:
--
--   speeding  a speed above the driver's limit: 130 km/h, 20 less for a
--             driver under 25, 10 less with 6 points or more on the
--             licence, 10 less per accident on record (at most 2).  A
--             warning alert, and a command back to the car through the
--             outbox: digitaltwin.send_to_source({"car", "command":
--             "slow_down", "limit", "speed", "reading"}), which a gateway
--             (examples/rental_car/gateway.c) takes and delivers;
--   geofence  a position outside the rental's box when the previous one
--             was inside (or was none): a critical alert, once per exit;
--
-- and forwards the position as a message (digitaltwin.send inside a
-- model) to the twin of its region, model rental_region, twin id the cell
-- of a 0.1 degree grid ("grid-457-48": floor(lat * 10), floor(lon * 10)).
-- A car that changes cell also tells its old region it left.  A region
-- keeps a roll-up of the cars now in it (each one's latest speed) and of
-- the positions it was sent; it learns which car from
-- current_event().sender_twin, and accepts only messages from cars.
--
--   psql -v ON_ERROR_STOP=1 -f examples/rental_car/model.sql
--   psql -v ON_ERROR_STOP=1 -f examples/rental_car/generate.sql
--
CREATE EXTENSION IF NOT EXISTS digitaltwin;

CREATE TABLE IF NOT EXISTS drivers (
    driver_id   text PRIMARY KEY,
    name        text NOT NULL,
    age         int NOT NULL CHECK (age BETWEEN 17 AND 120),
    points      int NOT NULL DEFAULT 0 CHECK (points >= 0),    -- on the licence
    accidents   int NOT NULL DEFAULT 0 CHECK (accidents >= 0)  -- on record
);

COMMENT ON TABLE drivers IS
'Rental car example: drivers and their record (the car twins take their speed limit from here).';

CREATE TABLE IF NOT EXISTS rentals (
    car_id      text PRIMARY KEY,
    driver_id   text NOT NULL REFERENCES drivers,
    min_lat     float8 NOT NULL,
    max_lat     float8 NOT NULL,
    min_lon     float8 NOT NULL,
    max_lon     float8 NOT NULL
);

COMMENT ON TABLE rentals IS
'Rental car example: the current rental of each car, its driver and geofence (a box of latitudes and longitudes).';

--
-- The region of a position: a cell of a 0.1 degree grid.
--
CREATE OR REPLACE FUNCTION rental_car_region(lat float8, lon float8)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT format('grid-%s-%s', floor(lat * 10)::int, floor(lon * 10)::int)
$$;

COMMENT ON FUNCTION rental_car_region(float8, float8) IS
'Rental car model: the region twin of a position (a cell of a 0.1 degree grid).';

--
-- init of a car: its limit and fence from the rental and the driver.  A
-- car with no rental is monitored at 130 km/h, with no fence.
--
CREATE OR REPLACE FUNCTION rental_car_init(twin_id text)
RETURNS jsonb
LANGUAGE sql STABLE
AS $$
    SELECT jsonb_build_object(
        'driver', r.driver_id,
        'limit', 130 - CASE WHEN d.age < 25 THEN 20 ELSE 0 END
                     - CASE WHEN d.points >= 6 THEN 10 ELSE 0 END
                     - 10 * least(coalesce(d.accidents, 0), 2),
        'fence', CASE WHEN r.car_id IS NOT NULL THEN
                     jsonb_build_object('min_lat', r.min_lat, 'max_lat', r.max_lat,
                                        'min_lon', r.min_lon, 'max_lon', r.max_lon) END,
        'readings', 0,
        'outside', false,
        'region', NULL)
    FROM (SELECT NULL) dummy
    LEFT JOIN rentals r ON r.car_id = twin_id
    LEFT JOIN drivers d ON d.driver_id = r.driver_id
$$;

COMMENT ON FUNCTION rental_car_init(text) IS
'Rental car model: starting state of a car twin (speed limit, geofence), from rentals and drivers.';

--
-- process of a car: one position.
--
CREATE OR REPLACE FUNCTION rental_car_process(twin_id text, state jsonb, event jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    reading bigint := (event->>'reading')::bigint;
    lat     float8 := (event->>'lat')::float8;
    lon     float8 := (event->>'lon')::float8;
    speed   int := (event->>'speed')::int;
    lim     int := (state->>'limit')::int;
    fence   jsonb := state->'fence';
    outside boolean;
    region  text;
BEGIN
    IF lat IS NULL OR lon IS NULL OR speed IS NULL
       OR lat NOT BETWEEN -90 AND 90 OR lon NOT BETWEEN -180 AND 180
       OR speed NOT BETWEEN 0 AND 400 THEN
        -- a malformed position: dead-letter it, keep the car as it was
        RAISE EXCEPTION 'car %: malformed position %', twin_id, event
            USING ERRCODE = 'data_exception';
    END IF;

    IF speed > lim THEN
        PERFORM digitaltwin.alert('warning',
            format('%s: %s km/h, limit %s', twin_id, speed, lim),
            jsonb_build_object('rule', 'speeding', 'reading', reading,
                               'speed', speed, 'limit', lim));
        PERFORM digitaltwin.send_to_source(
            jsonb_build_object('car', twin_id, 'command', 'slow_down', 'limit', lim,
                               'speed', speed, 'reading', reading));
    END IF;

    outside := fence IS NOT NULL
        AND (lat NOT BETWEEN (fence->>'min_lat')::float8 AND (fence->>'max_lat')::float8
             OR lon NOT BETWEEN (fence->>'min_lon')::float8 AND (fence->>'max_lon')::float8);
    IF outside AND NOT (state->>'outside')::boolean THEN
        PERFORM digitaltwin.alert('critical',
            format('%s: left its geofence', twin_id),
            jsonb_build_object('rule', 'geofence', 'reading', reading,
                               'lat', lat, 'lon', lon));
    END IF;

    -- the roll-up: tell the region (and the old one, when it changes)
    region := rental_car_region(lat, lon);
    IF state->>'region' IS DISTINCT FROM region AND state->>'region' IS NOT NULL THEN
        PERFORM digitaltwin.send('rental_region', state->>'region', '{"left": true}');
    END IF;
    PERFORM digitaltwin.send('rental_region', region,
                             jsonb_build_object('speed', speed, 'reading', reading));

    RETURN state || jsonb_build_object('readings', (state->>'readings')::bigint + 1,
                                       'outside', outside, 'region', region,
                                       'speed', speed);
END
$$;

COMMENT ON FUNCTION rental_car_process(text, jsonb, jsonb) IS
'Rental car model: apply one position to a car twin (speeding, geofence), command it to slow down, tell its region.';

--
-- process of a region: a message from a car, {"speed", "reading"} or
-- {"left": true}.  The state: {"cars": {car: latest speed}, "count": cars
-- in the region, "positions": positions received}.
--
CREATE OR REPLACE FUNCTION rental_region_process(twin_id text, state jsonb, event jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    ev      digitaltwin.event_info := digitaltwin.current_event();
    cars    jsonb := coalesce(state->'cars', '{}');
BEGIN
    IF ev.kind IS DISTINCT FROM 'message' OR ev.sender_model IS DISTINCT FROM 'rental_car' THEN
        RAISE EXCEPTION 'region %: only cars send to regions (got a %)', twin_id, ev.kind
            USING ERRCODE = 'data_exception';
    END IF;

    IF event ? 'left' THEN
        cars := cars - ev.sender_twin;
    ELSE
        cars := cars || jsonb_build_object(ev.sender_twin, (event->>'speed')::int);
    END IF;

    RETURN jsonb_build_object(
        'cars', cars,
        'count', (SELECT count(*) FROM jsonb_object_keys(cars)),
        'positions', coalesce((state->>'positions')::bigint, 0)
                     + CASE WHEN event ? 'left' THEN 0 ELSE 1 END);
END
$$;

COMMENT ON FUNCTION rental_region_process(text, jsonb, jsonb) IS
'Rental car model: a region twin''s roll-up of the cars in it (latest speeds) and of the positions they sent.';

SELECT digitaltwin.create_model('rental_region', 'rental_region_process(text,jsonb,jsonb)')
WHERE NOT EXISTS (SELECT 1 FROM digitaltwin.models WHERE name = 'rental_region');
SELECT digitaltwin.create_model('rental_car', 'rental_car_process(text,jsonb,jsonb)',
                                'rental_car_init(text)')
WHERE NOT EXISTS (SELECT 1 FROM digitaltwin.models WHERE name = 'rental_car');
