--
-- Event log and state history (opt-in per model): written with the batch,
-- partitioned by time, old partitions dropped whole; twins_as_of()
--
CREATE FUNCTION tally(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'fail' THEN
        RAISE EXCEPTION 'tally refuses';
    END IF;
    IF event ? 'end' THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'sum', coalesce((state->>'sum')::int, 0) + (event->>'v')::int);
END $$;
CREATE TYPE tally_state AS (n int, sum int);
CREATE FUNCTION tally_typed(twin_id text, state tally_state, event jsonb) RETURNS tally_state
LANGUAGE sql AS $$
    SELECT ROW(coalesce(state.n, 0) + 1, coalesce(state.sum, 0) + (event->>'v')::int)::tally_state
$$;
-- partitions of a second, so that the test sees them come and go
ALTER SYSTEM SET digitaltwin.log_partition_interval = '1s';
SELECT pg_reload_conf();
SELECT digitaltwin.create_model('tally', 'tally(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('typed', 'tally_typed(text,tally_state,jsonb)');
-- a twin that exists before the history starts is recorded when it starts
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('tally', 'a', '{"v": 1000}');
SELECT digitaltwin.wait_idle('30s');

-- errors
SELECT digitaltwin.set_event_log('tally', '-1 hour');
SELECT digitaltwin.set_event_log('tally', '0');
SELECT digitaltwin.set_history('nonesuch', '1 hour');
SELECT digitaltwin.set_history(NULL, '1 hour');

SELECT digitaltwin.set_event_log('tally', '1 hour');
SELECT digitaltwin.set_history('tally', '1 hour');
SELECT digitaltwin.set_history('typed', '1 hour');
SELECT name, event_log_keep, history_keep FROM digitaltwin.models WHERE name IN ('tally', 'typed') ORDER BY name;
SELECT model, twin_id, state, event_count FROM digitaltwin.state_history ORDER BY model, twin_id;

-- two rounds of events; the time between them is a point of history
CREATE TABLE sent_round (round int, model text, twin_id text, v int, fail boolean);
INSERT INTO sent_round
SELECT 1, m, 't' || (i % 5), i, i % 7 = 0
FROM generate_series(1, 40) i, unnest(ARRAY['tally', 'typed']) m;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT model, twin_id, CASE WHEN fail AND model = 'tally' THEN jsonb_build_object('v', v, 'fail', true)
                            ELSE jsonb_build_object('v', v) END
FROM sent_round WHERE round = 1 ORDER BY v, model;
SELECT digitaltwin.wait_idle('30s');
CREATE TABLE between_rounds AS SELECT clock_timestamp() AS at;
INSERT INTO sent_round
SELECT 2, m, 't' || (i % 5), i, false
FROM generate_series(41, 60) i, unnest(ARRAY['tally', 'typed']) m;
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT model, twin_id, jsonb_build_object('v', v) FROM sent_round WHERE round = 2 ORDER BY v, model;
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('tally', 'a', '{"end": true}');
SELECT digitaltwin.wait_idle('30s');

-- the event log holds exactly the applied events of the logged model
SELECT count(*) AS logged,
       count(*) FILTER (WHERE kind = 'event') AS events,
       count(DISTINCT event_id) AS distinct_ids,
       bool_and(model_version = 1) AS version_1
FROM digitaltwin.event_log;
SELECT (SELECT count(*) FROM sent_round WHERE model = 'tally' AND NOT fail) + 1 AS expected;
SELECT count(*) AS not_logged FROM (
    SELECT twin_id, (payload->>'v')::int AS v FROM digitaltwin.event_log WHERE payload ? 'v'
    EXCEPT
    SELECT twin_id, v FROM sent_round WHERE model = 'tally' AND NOT fail) x;
SELECT count(*) AS dead_logged FROM digitaltwin.event_log WHERE payload ? 'fail';

-- twins_as_of() between the rounds: against the events of round 1
SELECT h.model, h.twin_id, h.state,
       h.state = jsonb_build_object('n', e.n, 'sum', e.sum) AS matches
FROM (SELECT * FROM digitaltwin.twins_as_of((SELECT at FROM between_rounds)) WHERE twin_id <> 'a') h
LEFT JOIN (SELECT model, twin_id, count(*) AS n, sum(v) AS sum FROM sent_round
           WHERE round = 1 AND NOT (fail AND model = 'tally') GROUP BY 1, 2) e
  USING (model, twin_id)
ORDER BY h.model, h.twin_id;
-- and now: the live twins, twin 'a' ended
SELECT count(*) AS differ FROM (
    (SELECT model, twin_id, state, event_count FROM digitaltwin.twins_as_of(clock_timestamp())
     EXCEPT
     SELECT model, twin_id, state, event_count FROM digitaltwin.twins WHERE model IN ('tally', 'typed'))
    UNION ALL
    (SELECT model, twin_id, state, event_count FROM digitaltwin.twins WHERE model IN ('tally', 'typed')
     EXCEPT
     SELECT model, twin_id, state, event_count FROM digitaltwin.twins_as_of(clock_timestamp()))) d;
SELECT state FROM digitaltwin.twins_as_of((SELECT at FROM between_rounds)) WHERE twin_id = 'a';
SELECT twin_id, state, valid_to IS NULL AS current FROM digitaltwin.twin_history
WHERE model = 'tally' AND twin_id = 'a' ORDER BY valid_from;

-- a retried dead letter is logged when applied, as a retry; a new version too
SELECT digitaltwin.alter_model('tally', 'tally(text,jsonb,jsonb)');
UPDATE digitaltwin.dead_letters SET payload = payload - 'fail' WHERE model = 'tally';
SELECT digitaltwin.retry_dead_letters('tally') AS retried;
SELECT digitaltwin.wait_idle('30s');
SELECT kind, model_version, count(*), bool_and(retry_of IS NOT NULL) AS with_original
FROM digitaltwin.event_log GROUP BY 1, 2 ORDER BY 1, 2;

-- a DBA's index on the log: the batches then insert through the parent
CREATE INDEX event_log_by_twin ON digitaltwin.event_log (twin_id);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('tally', 't1', '{"v": 7}');
SELECT digitaltwin.wait_idle('30s');
SELECT count(*) AS logged_through_the_index FROM digitaltwin.event_log
WHERE twin_id = 't1' AND payload = '{"v": 7}';
DROP INDEX digitaltwin.event_log_by_twin;

-- the rows are in time partitions, which worker 0 created
SELECT wait_for($$(SELECT count(*) FROM digitaltwin.log_partitions WHERE parent = 'event_log') >= 2$$);
SELECT wait_for($$(SELECT count(*) FROM digitaltwin.event_log_default) = 0
                  AND (SELECT count(*) FROM digitaltwin.state_history_default) = 0$$) AS moved_out;
SELECT count(DISTINCT tableoid) >= 1 AS partitioned,
       bool_and(tableoid::regclass::text ~ '^digitaltwin\.event_log_\d{8}_\d{6}$') AS in_time_partitions
FROM digitaltwin.event_log;

-- who may read and change what
CREATE ROLE dt_hist_reader IN ROLE digitaltwin_reader;
SET ROLE dt_hist_reader;
SELECT count(*) > 0 AS readable FROM digitaltwin.twins_as_of(clock_timestamp());
SELECT count(*) > 0 AS readable FROM digitaltwin.twin_history;
SELECT count(*) FROM digitaltwin.event_log;
SELECT digitaltwin.set_event_log('tally', NULL);
RESET ROLE;

-- twins_as_of() (C, one pass) against the plain SQL definition of a state
-- as of a time, at every time a row starts, just before it and before all
CREATE TABLE asof_times AS
    SELECT DISTINCT t FROM digitaltwin.state_history,
           LATERAL (VALUES (valid_from), (valid_from - interval '1 microsecond')) v(t);
SELECT count(*) >= 4 AS times, sum(differ) AS differ FROM (
    SELECT t, (SELECT count(*) FROM (
        (SELECT * FROM digitaltwin.twins_as_of(t)
         EXCEPT ALL
         SELECT h.model, h.twin_id, h.state, h.event_count, h.valid_from
         FROM (SELECT DISTINCT ON (model_id, twin_id) * FROM digitaltwin.state_history
               WHERE valid_from <= t ORDER BY model_id, twin_id, valid_from DESC) h
         WHERE h.state IS NOT NULL)
        UNION ALL
        (SELECT h.model, h.twin_id, h.state, h.event_count, h.valid_from
         FROM (SELECT DISTINCT ON (model_id, twin_id) * FROM digitaltwin.state_history
               WHERE valid_from <= t ORDER BY model_id, twin_id, valid_from DESC) h
         WHERE h.state IS NOT NULL
         EXCEPT ALL
         SELECT * FROM digitaltwin.twins_as_of(t))) d) AS differ
    FROM asof_times) x;
SELECT count(*) AS before_all FROM digitaltwin.twins_as_of('-infinity');
SELECT count(*) AS of_null FROM digitaltwin.twins_as_of(NULL);
-- a partition a DBA attached, its columns in another order: found by name;
-- a twin's latest row may be in any partition
CREATE TABLE digitaltwin.state_history_y2k (valid_from timestamptz NOT NULL, state jsonb,
    twin_id text COLLATE "C" NOT NULL, event_count bigint NOT NULL, model text NOT NULL,
    model_id integer NOT NULL);
INSERT INTO digitaltwin.state_history_y2k
SELECT '2000-01-01 12:00+00', '{"old": true}', 'y2k', 1, name, id FROM digitaltwin.models WHERE name = 'tally';
INSERT INTO digitaltwin.state_history_y2k
SELECT '2000-01-01 13:00+00', NULL, 'y2k', 2, name, id FROM digitaltwin.models WHERE name = 'tally';
ALTER TABLE digitaltwin.state_history ATTACH PARTITION digitaltwin.state_history_y2k
    FOR VALUES FROM ('2000-01-01 00:00+00') TO ('2000-01-02 00:00+00');
SELECT * FROM digitaltwin.twins_as_of('2000-01-01 12:30+00');
SELECT count(*) AS ended FROM digitaltwin.twins_as_of('2000-01-01 13:30+00');
SELECT count(*) AS y2k_now FROM digitaltwin.twins_as_of(clock_timestamp()) WHERE twin_id = 'y2k';
-- a row written by hand whose twin id no twin can have
INSERT INTO digitaltwin.state_history_y2k VALUES ('2000-01-01 14:00+00', '{}', repeat('x', 70000), 1, 'tally', 0);
SELECT count(*) FROM digitaltwin.twins_as_of('2000-01-01 15:00+00');
ALTER TABLE digitaltwin.state_history DETACH PARTITION digitaltwin.state_history_y2k;
DROP TABLE digitaltwin.state_history_y2k;
-- a partition that is not a table (a foreign archive) is refused, not skipped
CREATE EXTENSION file_fdw;
CREATE SERVER history_archive FOREIGN DATA WRAPPER file_fdw;
CREATE FOREIGN TABLE digitaltwin.state_history_1999 (model_id integer NOT NULL, model text NOT NULL,
    twin_id text COLLATE "C" NOT NULL, state jsonb, event_count bigint NOT NULL, valid_from timestamptz NOT NULL)
    SERVER history_archive OPTIONS (filename '/dev/null');
ALTER TABLE digitaltwin.state_history ATTACH PARTITION digitaltwin.state_history_1999
    FOR VALUES FROM ('1999-01-01 00:00+00') TO ('1999-01-02 00:00+00');
SELECT count(*) FROM digitaltwin.twins_as_of(clock_timestamp());
ALTER TABLE digitaltwin.state_history DETACH PARTITION digitaltwin.state_history_1999;
DROP EXTENSION file_fdw CASCADE;
-- it reads as the caller: a role that may not read the history may not,
-- and a policy on the table is not bypassed
CREATE ROLE dt_no_reader;
GRANT USAGE ON SCHEMA digitaltwin TO dt_no_reader;
GRANT EXECUTE ON FUNCTION digitaltwin.twins_as_of(timestamptz) TO dt_no_reader;
SET ROLE dt_no_reader;
SELECT count(*) FROM digitaltwin.twins_as_of(clock_timestamp());
RESET ROLE;
ALTER TABLE digitaltwin.state_history ENABLE ROW LEVEL SECURITY;
SET ROLE dt_hist_reader;
SELECT count(*) FROM digitaltwin.twins_as_of(clock_timestamp());
RESET ROLE;
ALTER TABLE digitaltwin.state_history DISABLE ROW LEVEL SECURITY;
REVOKE ALL ON FUNCTION digitaltwin.twins_as_of(timestamptz) FROM dt_no_reader;
REVOKE ALL ON SCHEMA digitaltwin FROM dt_no_reader;
DROP ROLE dt_no_reader;
DROP TABLE asof_times;

--
-- Bounded: short partitions, a short keep; expired partitions are dropped
-- whole, and each twin's last state is carried forward
--
SELECT digitaltwin.set_event_log('tally', '1 second');
SELECT digitaltwin.set_history('tally', '1 second');
SELECT digitaltwin.set_history('typed', '1 second');
-- (waiting reads only log_partitions: a transaction that read the tables
-- would hold off the drop of their partitions until it ends)
CREATE TABLE last_logged AS SELECT clock_timestamp() AS at;
SELECT wait_for($$NOT EXISTS (SELECT FROM digitaltwin.log_partitions
                              WHERE from_time <= (SELECT at FROM last_logged))$$) AS expired_dropped;
SELECT count(*) AS logged FROM digitaltwin.event_log;
SELECT min(valid_from) > (SELECT at FROM last_logged) AS history_trimmed FROM digitaltwin.state_history;
-- the twins are all still there as of now, with their current states
SELECT count(*) AS differ FROM (
    (SELECT model, twin_id, state FROM digitaltwin.twins_as_of(clock_timestamp())
     EXCEPT
     SELECT model, twin_id, state FROM digitaltwin.twins WHERE model IN ('tally', 'typed'))
    UNION ALL
    (SELECT model, twin_id, state FROM digitaltwin.twins WHERE model IN ('tally', 'typed')
     EXCEPT
     SELECT model, twin_id, state FROM digitaltwin.twins_as_of(clock_timestamp()))) d;
-- stopping: no more rows, and the partitions go
SELECT digitaltwin.set_event_log('tally', NULL);
SELECT digitaltwin.set_history('tally', NULL);
SELECT digitaltwin.set_history('typed', NULL);
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES ('tally', 't1', '{"v": 1}');
SELECT digitaltwin.wait_idle('30s');
SELECT wait_for($$(SELECT count(*) FROM digitaltwin.log_partitions) = 0$$) AS partitions_gone;
SELECT (SELECT count(*) FROM digitaltwin.event_log) AS logged,
       (SELECT count(*) FROM digitaltwin.state_history) AS history;
ALTER SYSTEM RESET digitaltwin.log_partition_interval;
SELECT pg_reload_conf();

-- clean up
SELECT digitaltwin.drop_model('tally', force => true);
SELECT digitaltwin.drop_model('typed', force => true);
DELETE FROM digitaltwin.dead_letters WHERE model = 'tally';
DROP TABLE sent_round, between_rounds, last_logged;
DROP FUNCTION tally, tally_typed;
DROP TYPE tally_state;
DROP ROLE dt_hist_reader;
