--
-- Card fraud: the digital twin of a payment card.
--
-- Each card's twin watches its transactions for two patterns, both judged
-- on EVENT time (the terminal's clock, digitaltwin.current_event().event_time),
-- never on now(): the queue may deliver a burst seconds or hours after it
-- happened, and a terminal that was offline uploads its transactions late.
--
--   velocity       more than 3 transactions within 60 seconds: a transaction
--                  is flagged when the card's transactions with an event
--                  time in [its time - 60 s, its time] (itself included)
--                  number more than 3;
--   location jump  two transactions, neighbours in event time, whose places
--                  are farther apart than 900 km/h could travel between
--                  their times (great-circle distance).
--
-- Out-of-order transactions.  A card's transactions arrive in queue order,
-- which need not be their event-time order.  The twin keeps the recent ones
-- sorted by (event time, txn):
--
--   * A transaction no more than 60 s older than the newest event time the
--     card has seen is placed where it belongs in that order and counted in
--     every window it falls in: it can complete a burst whose later
--     transactions already arrived (the velocity alert then names the
--     transaction whose window went over the limit, and is raised by the
--     late one), and it is checked for a location jump against its
--     neighbours in event time at the moment it arrives.
--   * A transaction more than 60 s older than that is late: it is counted
--     in the state ("late") and not judged; it raises no alert and does not
--     count in anyone's window.
--
-- An alert, once raised, stands: a later arrival that separates two
-- transactions which were neighbours does not withdraw their jump alert.
-- Each transaction is flagged for velocity at most once, each neighbour
-- pair at most once.  Keeping 120 s of event time (the longest window a
-- transaction that is not late can touch) plus the transaction just before
-- it bounds the state whatever the card's history.
--
--   psql -v ON_ERROR_STOP=1 -f examples/card_fraud/model.sql
--   psql -v ON_ERROR_STOP=1 -f examples/card_fraud/generate.sql
--
-- Events: {"txn": 17, "lat": 48.85, "lon": 2.35, "amount": 12.5}, with the
-- transaction's time in digitaltwin.events.event_time.
--
CREATE EXTENSION IF NOT EXISTS digitaltwin;

--
-- Great-circle distance in km (haversine, mean Earth radius 6371 km).
--
CREATE OR REPLACE FUNCTION card_fraud_km(lat1 float8, lon1 float8,
                                         lat2 float8, lon2 float8)
RETURNS float8
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT 2 * 6371 * asin(least(1, sqrt(
               sin(radians(lat2 - lat1) / 2) ^ 2
               + cos(radians(lat1)) * cos(radians(lat2))
                 * sin(radians(lon2 - lon1) / 2) ^ 2)))
$$;

COMMENT ON FUNCTION card_fraud_km(float8, float8, float8, float8) IS
'Card fraud model: great-circle distance in km between two (lat, lon) points.';

--
-- process: one transaction.  The state:
--   {"n": transactions seen, "late": of which late,
--    "newest": newest event time seen (epoch seconds),
--    "recent": [{"t": epoch, "txn", "lat", "lon", "fast": flagged}, ...]
--              sorted by (t, txn)}
--
CREATE OR REPLACE FUNCTION card_fraud_process(twin_id text, state jsonb, event jsonb)
RETURNS jsonb
LANGUAGE plpgsql
AS $$
DECLARE
    -- the rules' parameters (the regression test's reference query
    -- repeats them)
    max_in_window constant int := 3;
    window_s    constant numeric := 60;
    lateness_s  constant numeric := 60;
    speed_kmh   constant float8 := 900;

    ev      digitaltwin.event_info := digitaltwin.current_event();
    t       numeric := extract(epoch FROM ev.event_time);
    txn     bigint;
    lat     float8;
    lon     float8;
    newest  numeric := (state->>'newest')::numeric;
    recent  jsonb := coalesce(state->'recent', '[]');
    pos     int;
    len     int;
    horizon numeric;
    n_in    int;
    u       record;
    other   jsonb;
    other_first boolean;
    km      float8;
    secs    numeric;
BEGIN
    -- (a value that is not a number fails the cast: dead-lettered too;
    -- no exception block, which would cost a subtransaction per event)
    txn := (event->>'txn')::bigint;
    lat := (event->>'lat')::float8;
    lon := (event->>'lon')::float8;
    IF txn IS NULL OR lat IS NULL OR lon IS NULL
       OR lat NOT BETWEEN -90 AND 90 OR lon NOT BETWEEN -180 AND 180 THEN
        -- a malformed transaction: dead-letter it, keep the card as it was
        RAISE EXCEPTION 'card %: malformed transaction %', twin_id, event
            USING ERRCODE = 'data_exception';
    END IF;

    state := coalesce(state, '{"n": 0, "late": 0}') ||
        jsonb_build_object('n', coalesce((state->>'n')::bigint, 0) + 1);

    IF newest IS NOT NULL AND t < newest - lateness_s THEN
        -- too late to judge: the windows it belonged to are gone
        RETURN state || jsonb_build_object('late', (state->>'late')::bigint + 1);
    END IF;

    -- place it in event-time order
    SELECT jsonb_agg(e ORDER BY (e->>'t')::numeric, (e->>'txn')::bigint)
    INTO recent
    FROM (SELECT e FROM jsonb_array_elements(recent) e
          UNION ALL
          SELECT jsonb_build_object('t', t, 'txn', txn, 'lat', lat, 'lon', lon,
                                    'fast', false)) x;
    SELECT a.ord - 1 INTO pos
    FROM jsonb_array_elements(recent) WITH ORDINALITY a(e, ord)
    WHERE (a.e->>'txn')::bigint = txn;
    len := jsonb_array_length(recent);

    -- velocity: the windows this transaction falls in are those of the
    -- transactions in [t, t + 60 s] (itself, and later ones already here)
    FOR u IN
        SELECT a.ord - 1 AS i, a.e
        FROM jsonb_array_elements(recent) WITH ORDINALITY a(e, ord)
        WHERE (a.e->>'t')::numeric BETWEEN t AND t + window_s
          AND NOT (a.e->>'fast')::boolean
        ORDER BY a.ord
    LOOP
        SELECT count(*) INTO n_in
        FROM jsonb_array_elements(recent) o
        WHERE (o->>'t')::numeric BETWEEN (u.e->>'t')::numeric - window_s
                                     AND (u.e->>'t')::numeric;
        IF n_in > max_in_window THEN
            recent := jsonb_set(recent, ARRAY[u.i::text, 'fast'], 'true');
            PERFORM digitaltwin.alert('warning',
                format('card %s: %s transactions within %s s', twin_id, n_in, window_s),
                jsonb_build_object('rule', 'velocity', 'txn', u.e->'txn',
                                   'transactions', n_in,
                                   'event_time', to_timestamp((u.e->>'t')::float8)));
        END IF;
    END LOOP;

    -- location jump: against the neighbours in event time
    FOREACH other IN ARRAY ARRAY[CASE WHEN pos > 0 THEN recent->(pos - 1) END,
                                 CASE WHEN pos < len - 1 THEN recent->(pos + 1) END]
    LOOP
        CONTINUE WHEN other IS NULL;
        other_first := (other->>'t')::numeric < t
            OR ((other->>'t')::numeric = t AND (other->>'txn')::bigint < txn);
        km := card_fraud_km((other->>'lat')::float8, (other->>'lon')::float8, lat, lon);
        secs := abs(t - (other->>'t')::numeric);
        IF km * 3600 > speed_kmh * secs THEN
            PERFORM digitaltwin.alert('critical',
                format('card %s: %s km in %s s', twin_id, round(km::numeric),
                       trim_scale(round(secs, 1))),
                jsonb_build_object('rule', 'location_jump',
                                   'from_txn', CASE WHEN other_first THEN other->'txn'
                                                    ELSE to_jsonb(txn) END,
                                   'to_txn', CASE WHEN other_first THEN to_jsonb(txn)
                                                  ELSE other->'txn' END,
                                   'km', round(km::numeric, 1),
                                   'seconds', secs));
        END IF;
    END LOOP;

    -- forget what no transaction that is not late can reach any more,
    -- but keep the one just before: the neighbour of the next arrival
    newest := greatest(newest, t);
    horizon := newest - lateness_s - window_s;
    SELECT coalesce(jsonb_agg(a.e ORDER BY a.ord), '[]') INTO recent
    FROM jsonb_array_elements(recent) WITH ORDINALITY a(e, ord)
    WHERE a.ord >= (SELECT coalesce(max(b.ord), 1)
                    FROM jsonb_array_elements(recent) WITH ORDINALITY b(e, ord)
                    WHERE (b.e->>'t')::numeric < horizon);

    RETURN state || jsonb_build_object('newest', newest, 'recent', recent);
END
$$;

COMMENT ON FUNCTION card_fraud_process(text, jsonb, jsonb) IS
'Card fraud model: judge one card transaction (velocity and location jumps, in event time).';

SELECT digitaltwin.create_model('card_fraud', 'card_fraud_process(text,jsonb,jsonb)')
WHERE NOT EXISTS (SELECT 1 FROM digitaltwin.models WHERE name = 'card_fraud');
