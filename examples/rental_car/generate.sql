--
-- Rental car telematics: drivers, rentals and a deterministic stream of
-- the cars' positions.
--
--   psql -v ON_ERROR_STOP=1 [-v cars=30] [-v positions=20] [-v seed=0.42] \
--        [-v queue=off] -f examples/rental_car/generate.sql
--
-- Drivers of all ages and records rent cars around Lyon; each rental's
-- geofence is a box around the city, some small (city only), some large.
-- Each car drives a random walk, one position every 20 s of event time:
-- its heading turns, its speed drifts between 20 and 170 km/h (lead-footed
-- drivers push harder), so some cars speed, some leave their box, and all
-- cross the cells of the regions' 0.1 degree grid.  setseed() makes it the
-- same on every run.
--
-- Every position is kept in the ordinary table rental_car_positions (the
-- queue deletes the events it has processed) with the id of its event, so
-- that anyone can check the alerts, the commands and the regions'
-- roll-ups against the positions with plain SQL
-- (t/012_example_rental_car.pl does).  rental_car_generate() fills the
-- tables, rental_car_queue() queues what is not queued yet: -v queue=off
-- leaves that for later (the test starts its gateway in between).
--
CREATE TABLE IF NOT EXISTS rental_car_positions (
    reading     bigint PRIMARY KEY,
    car         text NOT NULL,
    event_time  timestamptz NOT NULL,
    lat         float8 NOT NULL,
    lon         float8 NOT NULL,
    speed       int NOT NULL,
    event_id    bigint
);

COMMENT ON TABLE rental_car_positions IS
'Rental car example: every generated position, with its queued event id.';

CREATE OR REPLACE FUNCTION rental_car_generate(cars int DEFAULT 30,
                                               positions int DEFAULT 20,
                                               seed float8 DEFAULT 0.42,
                                               start timestamptz DEFAULT '2026-03-01 08:00:00+00')
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    -- Lyon, and the km per degree there
    lat0 constant float8 := 45.76;
    lon0 constant float8 := 4.84;
    km_lat constant float8 := 111.2;
    km_lon constant float8 := 111.2 * cos(radians(45.76));
    reading bigint := (SELECT coalesce(max(reading), 0) FROM rental_car_positions);
    first_reading bigint := reading;
    car     text;
    driver  text;
    lat     float8;
    lon     float8;
    heading float8;
    speed   float8;
    push    float8;
    half    float8;
    t       timestamptz;
BEGIN
    PERFORM setseed(seed);
    FOR c IN 1..cars LOOP
        car := 'car-' || lpad(c::text, 2, '0');
        driver := 'driver-' || lpad(c::text, 2, '0');
        INSERT INTO drivers (driver_id, name, age, points, accidents)
        VALUES (driver, 'Driver ' || c, 19 + floor(random() * 60)::int,
                CASE WHEN random() < 0.3 THEN floor(random() * 12)::int ELSE 0 END,
                CASE WHEN random() < 0.25 THEN 1 + floor(random() * 3)::int ELSE 0 END)
        ON CONFLICT (driver_id) DO NOTHING;
        -- the fence: a box 10 to 40 km wide around the city centre
        half := 5 + random() * 15;
        INSERT INTO rentals (car_id, driver_id, min_lat, max_lat, min_lon, max_lon)
        VALUES (car, driver, lat0 - half / km_lat, lat0 + half / km_lat,
                lon0 - half / km_lon, lon0 + half / km_lon)
        ON CONFLICT (car_id) DO NOTHING;

        lat := lat0 + (random() - 0.5) * 10 / km_lat;
        lon := lon0 + (random() - 0.5) * 10 / km_lon;
        heading := random() * 2 * pi();
        speed := 30 + random() * 70;
        push := CASE WHEN random() < 0.25 THEN 8 ELSE 0 END;  -- a lead foot
        t := start + random() * interval '10 minutes';
        FOR k IN 1..positions LOOP
            reading := reading + 1;
            INSERT INTO rental_car_positions (reading, car, event_time, lat, lon, speed)
            VALUES (reading, car, t, lat, lon, round(speed));
            -- 20 s later
            heading := heading + (random() - 0.5) * 1.2;
            speed := least(170, greatest(20, speed + (random() - 0.5) * 25 + push * random()));
            lat := lat + speed * 20 / 3600 * cos(heading) / km_lat;
            lon := lon + speed * 20 / 3600 * sin(heading) / km_lon;
            t := t + interval '20 seconds';
        END LOOP;
    END LOOP;
    RETURN reading - first_reading;
END
$$;

COMMENT ON FUNCTION rental_car_generate(int, int, float8, timestamptz) IS
'Rental car example: create drivers and rentals and a deterministic stream of positions in rental_car_positions (not queued).';

CREATE OR REPLACE FUNCTION rental_car_queue()
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    queued_n bigint;
BEGIN
    -- in event-time order (each car's positions in its own order), and
    -- remember each one's event id
    WITH queued AS (
        INSERT INTO digitaltwin.events (model, twin_id, payload, event_time)
        SELECT 'rental_car', p.car,
               jsonb_build_object('reading', p.reading, 'lat', p.lat, 'lon', p.lon,
                                  'speed', p.speed),
               p.event_time
        FROM rental_car_positions p
        WHERE p.event_id IS NULL
        ORDER BY p.event_time, p.reading
        RETURNING id, (payload->>'reading')::bigint AS reading)
    UPDATE rental_car_positions p SET event_id = q.id
    FROM queued q WHERE p.reading = q.reading;
    GET DIAGNOSTICS queued_n = ROW_COUNT;
    RETURN queued_n;
END
$$;

COMMENT ON FUNCTION rental_car_queue() IS
'Rental car example: queue the positions of rental_car_positions not queued yet, for the rental_car model.';

\if :{?cars}
\else
\set cars 30
\endif
\if :{?positions}
\else
\set positions 20
\endif
\if :{?seed}
\else
\set seed 0.42
\endif
\if :{?queue}
\else
\set queue on
\endif
SELECT rental_car_generate(:cars, :positions, :seed) AS positions;
\if :queue
SELECT rental_car_queue() AS queued;
\endif
