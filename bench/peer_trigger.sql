-- The "trigger peer": what users write today without digitaltwin.  An AFTER
-- INSERT trigger applies the same heart-rate logic as
-- examples/heart_rate.sql, keeping each patient's state in a table with
-- UPSERT and inserting alerts, synchronously in the inserting transaction.
CREATE TABLE peer_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model       text NOT NULL,
    twin_id     text NOT NULL,
    payload     jsonb NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE peer_state (twin_id text PRIMARY KEY, state jsonb NOT NULL);
CREATE TABLE peer_alerts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    twin_id text, severity text, message text, details jsonb,
    raised_at timestamptz DEFAULT now()
);

CREATE FUNCTION peer_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    st      jsonb;
    bpm     int := (NEW.payload->>'bpm')::int;
    lim     int;
    streak  int;
BEGIN
    SELECT state INTO st FROM peer_state WHERE twin_id = NEW.twin_id FOR UPDATE;
    IF st IS NULL THEN
        st := heart_rate_init(NEW.twin_id);
    END IF;
    lim := coalesce((st->>'limit')::int, 180);
    streak := (st->>'over_streak')::int;
    IF bpm > lim THEN
        streak := streak + 1;
        INSERT INTO peer_alerts (twin_id, severity, message, details)
        VALUES (NEW.twin_id, 'critical',
                format('%s: heart rate %s above limit %s', NEW.twin_id, bpm, lim),
                jsonb_build_object('bpm', bpm, 'limit', lim));
        PERFORM pg_notify('peer_alerts', NEW.twin_id);
    ELSE
        streak := 0;
    END IF;
    st := st || jsonb_build_object('limit', lim,
        'readings', (st->>'readings')::bigint + 1, 'sum', (st->>'sum')::bigint + bpm,
        'max', greatest((st->>'max')::int, bpm), 'last', bpm, 'over_streak', streak);
    INSERT INTO peer_state VALUES (NEW.twin_id, st)
    ON CONFLICT (twin_id) DO UPDATE SET state = excluded.state;
    RETURN NULL;
END $$;

CREATE TRIGGER peer_apply AFTER INSERT ON peer_events
    FOR EACH ROW EXECUTE FUNCTION peer_apply();

-- the physical limit: the same columns in a plain heap, no identity, no
-- index, no constraint (issue 15: every ratio is measured against it)
CREATE TABLE heap_events (
    model       text NOT NULL,
    twin_id     text NOT NULL,
    payload     jsonb NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);

-- the "queue table": plain inserts into a table of the same shape with an
-- identity primary key, as a queue needs one (the reference before issue 15)
CREATE TABLE raw_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model       text NOT NULL,
    twin_id     text NOT NULL,
    payload     jsonb NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now()
);
