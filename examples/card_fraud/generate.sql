--
-- Card fraud: a deterministic stream of card transactions.
--
--   psql -v ON_ERROR_STOP=1 [-v cards=200] [-v seed=0.42] -f examples/card_fraud/generate.sql
--
-- Every transaction is kept in the ordinary table card_fraud_transactions
-- (the queue deletes the events it has processed), with the time it happened
-- (event_time, the terminal's clock), the time it reached us (arrival) and
-- the id of its event in digitaltwin.events: the events are queued in
-- arrival order, so a terminal that uploads late makes a card's events
-- arrive out of event-time order.  Anyone can then check the twins' alerts
-- against the transactions with plain SQL (sql/example_card_fraud.sql does).
--
-- Cards (setseed() makes the stream the same on every run):
--   most       a few transactions an hour, in their home city;
--   bursting   some run 3 to 7 transactions a few seconds apart;
--   jumping    some pay once in another city minutes after paying at home;
--   travelling some fly to another city, no faster than a plane;
-- and about one transaction in ten reaches us 5 s to 15 min after it
-- happened.  Three hand-written cards show the out-of-order rules:
--   card-late-burst   4 transactions in 30 s, the second-to-last arriving
--                     last (but within 60 s): it completes the burst;
--   card-too-late     the same, the last one arriving after a transaction
--                     3 minutes later: late, not judged;
--   card-late-jump    Paris, then Paris 2 minutes later, then, arriving
--                     last, New York in between: two jumps.
--
CREATE TABLE IF NOT EXISTS card_fraud_transactions (
    txn         bigint PRIMARY KEY,
    card        text NOT NULL,
    event_time  timestamptz NOT NULL,
    arrival     timestamptz NOT NULL,
    lat         float8 NOT NULL,
    lon         float8 NOT NULL,
    amount      numeric(10,2) NOT NULL,
    event_id    bigint
);

COMMENT ON TABLE card_fraud_transactions IS
'Card fraud example: every generated transaction, with its event time, arrival time and queued event id.';

CREATE OR REPLACE FUNCTION card_fraud_generate(cards int DEFAULT 200,
                                               seed float8 DEFAULT 0.42,
                                               start timestamptz DEFAULT '2026-03-01 12:00:00+00')
RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    city_lat constant float8[] := '{48.8566, 51.5074, 52.5200, 40.4168, 41.9028,
                                     59.3293, 52.2297, 40.7128, 35.6762, -33.8688}';
    city_lon constant float8[] := '{2.3522, -0.1278, 13.4050, -3.7038, 12.4964,
                                     18.0686, 21.0122, -74.0060, 139.6503, 151.2093}';
    ncities constant int := 10;
    first_txn bigint := (SELECT coalesce(max(txn), 0) FROM card_fraud_transactions);
    card    text;
    profile float8;
    home    int;
    here    int;
    there   int;
    lat     float8;
    lon     float8;
    n       int;
    special int;       -- the transaction where the card's profile shows
    burst   int;
    t       timestamptz;
    r       float8;
    delay   interval;
    km      float8;
    added   bigint;
BEGIN
    PERFORM setseed(seed);
    CREATE TEMP TABLE card_fraud_new (card text, k int, event_time timestamptz,
                                      arrival timestamptz, lat float8, lon float8,
                                      amount numeric(10,2)) ON COMMIT DROP;

    FOR c IN 1..cards LOOP
        card := 'card-' || lpad(c::text, 4, '0');
        profile := random();
        home := 1 + floor(random() * ncities)::int;
        here := home;
        -- the card's usual shop: within a few km of its city's centre
        lat := city_lat[home] + (random() - 0.5) * 0.1;
        lon := city_lon[home] + (random() - 0.5) * 0.1;
        n := 6 + floor(random() * 10)::int;
        special := 2 + floor(random() * (n - 2))::int;
        burst := 0;
        t := start + random() * interval '1 hour';
        FOR k IN 1..n LOOP
            IF burst > 0 THEN
                -- bursting: seconds apart
                t := t + (2 + random() * 18) * interval '1 second';
                burst := burst - 1;
            ELSIF k = special AND profile >= 0.15 AND profile < 0.25 THEN
                -- jumping: minutes after the last purchase
                t := t + (60 + random() * 840) * interval '1 second';
            ELSIF random() < 0.1 THEN
                -- now and then two purchases close together, by anyone
                t := t + (5 + random() * 25) * interval '1 second';
            ELSE
                t := t + (60 + random() * 3540) * interval '1 second';
            END IF;

            -- when it reaches us: most at once, some late
            r := random();
            delay := CASE WHEN r < 0.90 THEN random() * 2
                          WHEN r < 0.97 THEN 5 + random() * 55
                          ELSE 90 + random() * 810 END * interval '1 second';

            IF k = special AND profile < 0.15 THEN
                burst := 2 + floor(random() * 5)::int;
            ELSIF k = special AND profile < 0.25 THEN
                -- in another city; the next purchase is back home
                there := 1 + (home + floor(random() * (ncities - 1))::int) % ncities;
                INSERT INTO card_fraud_new VALUES
                    (card, k, t, t + delay,
                     city_lat[there] + (random() - 0.5) * 0.1,
                     city_lon[there] + (random() - 0.5) * 0.1,
                     round((5 + random() * 500)::numeric, 2));
                CONTINUE;
            ELSIF k = special AND profile < 0.35 THEN
                -- travelling: flies to another city at 200 to 800 km/h
                there := 1 + (here + floor(random() * (ncities - 1))::int) % ncities;
                km := card_fraud_km(city_lat[here], city_lon[here],
                                    city_lat[there], city_lon[there]);
                t := t + (km / (200 + random() * 600)) * interval '1 hour';
                here := there;
                lat := city_lat[here] + (random() - 0.5) * 0.1;
                lon := city_lon[here] + (random() - 0.5) * 0.1;
            END IF;
            INSERT INTO card_fraud_new VALUES
                (card, k, t, t + delay, lat, lon, round((5 + random() * 200)::numeric, 2));
        END LOOP;
    END LOOP;

    -- the hand-written cards (seconds after start: event time, arrival)
    INSERT INTO card_fraud_new
    SELECT v.card, v.k, start + v.et * interval '1 second', start + v.arr * interval '1 second',
           city_lat[v.city], city_lon[v.city], 10
    FROM (VALUES ('card-late-burst', 1,   0,   0, 1), ('card-late-burst', 2,  10,  10, 1),
                 ('card-late-burst', 3,  20,  45, 1), ('card-late-burst', 4,  30,  30, 1),
                 ('card-too-late',   1,   0,   0, 1), ('card-too-late',   2,  10,  10, 1),
                 ('card-too-late',   3,  20,  20, 1), ('card-too-late',   4, 200, 200, 1),
                 ('card-too-late',   5,  30, 230, 1),
                 ('card-late-jump',  1,   0,   0, 1), ('card-late-jump',  2, 120, 120, 1),
                 ('card-late-jump',  3,  70, 130, 8)) v(card, k, et, arr, city);

    INSERT INTO card_fraud_transactions (txn, card, event_time, arrival, lat, lon, amount)
    SELECT first_txn + row_number() OVER (ORDER BY f.arrival, f.card, f.k),
           f.card, f.event_time, f.arrival, f.lat, f.lon, f.amount
    FROM card_fraud_new f;
    GET DIAGNOSTICS added = ROW_COUNT;
    DROP TABLE card_fraud_new;

    -- queue them in arrival order, and remember each one's event id
    WITH queued AS (
        INSERT INTO digitaltwin.events (model, twin_id, payload, event_time)
        SELECT 'card_fraud', x.card,
               jsonb_build_object('txn', x.txn, 'lat', x.lat, 'lon', x.lon,
                                  'amount', x.amount),
               x.event_time
        FROM card_fraud_transactions x
        WHERE x.txn > first_txn
        ORDER BY x.txn
        RETURNING id, (payload->>'txn')::bigint AS txn)
    UPDATE card_fraud_transactions x SET event_id = q.id
    FROM queued q WHERE x.txn = q.txn;

    RETURN added;
END
$$;

COMMENT ON FUNCTION card_fraud_generate(int, float8, timestamptz) IS
'Card fraud example: queue a deterministic stream of transactions for the card_fraud model, kept in card_fraud_transactions.';

\if :{?cards}
\else
\set cards 200
\endif
\if :{?seed}
\else
\set seed 0.42
\endif
SELECT card_fraud_generate(:cards, :seed) AS transactions;
