--
-- The card fraud example (examples/card_fraud): the twins' alerts against
-- an independent query over the generated transactions
--
-- (pg_regress runs in the tree's root: examples/ is at hand; the example's
-- files are not echoed, so that editing their comments changes nothing here)
CREATE SCHEMA card_fraud_example;
SET search_path = card_fraud_example, public;
SET client_min_messages = warning;
\set ECHO none
\i examples/card_fraud/model.sql
\set cards 300
\set seed 0.42
\i examples/card_fraud/generate.sql
\set ECHO all
RESET client_min_messages;
SELECT digitaltwin.wait_idle('120s');

-- The reference, from card_fraud_transactions alone, with the model's
-- parameters (3 transactions in 60 s, 60 s of lateness, 900 km/h).  A
-- transaction is late when it is more than 60 s older than the newest one
-- of its card queued before it.
CREATE TEMP TABLE ref_txn AS
SELECT x.*,
       coalesce(x.event_time < max(x.event_time) OVER (
                    PARTITION BY x.card ORDER BY x.event_id
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                - interval '60 seconds', false) AS late
FROM card_fraud_transactions x;
-- velocity: more than 3 transactions (not late) in [t - 60 s, t]
CREATE TEMP TABLE ref_alerts AS
SELECT 'velocity' AS rule, v.card, v.txn AS from_txn, NULL::bigint AS to_txn
FROM (SELECT r.card, r.txn,
             count(*) OVER (PARTITION BY r.card ORDER BY r.event_time
                            RANGE BETWEEN interval '60 seconds' PRECEDING
                                      AND CURRENT ROW) AS n
      FROM ref_txn r WHERE NOT r.late) v
WHERE v.n > 3;
-- location jumps: a transaction (not late) and its neighbours in event time
-- among those of its card queued before it and not late
CREATE TEMP TABLE ref_pairs AS
SELECT t.card,
       CASE WHEN o.before THEN o.txn ELSE t.txn END AS from_txn,
       CASE WHEN o.before THEN t.txn ELSE o.txn END AS to_txn,
       2 * 6371 * asin(sqrt(sin(radians(o.lat - t.lat) / 2) ^ 2
                            + cos(radians(t.lat)) * cos(radians(o.lat))
                              * sin(radians(o.lon - t.lon) / 2) ^ 2)) AS km,
       abs(extract(epoch FROM t.event_time - o.event_time)) AS seconds
FROM ref_txn t
CROSS JOIN LATERAL (
    (SELECT true AS before, p.txn, p.lat, p.lon, p.event_time FROM ref_txn p
     WHERE p.card = t.card AND NOT p.late AND p.event_id < t.event_id
       AND (p.event_time, p.txn) < (t.event_time, t.txn)
     ORDER BY p.event_time DESC, p.txn DESC LIMIT 1)
    UNION ALL
    (SELECT false, s.txn, s.lat, s.lon, s.event_time FROM ref_txn s
     WHERE s.card = t.card AND NOT s.late AND s.event_id < t.event_id
       AND (s.event_time, s.txn) > (t.event_time, t.txn)
     ORDER BY s.event_time, s.txn LIMIT 1)) o
WHERE NOT t.late;
INSERT INTO ref_alerts
SELECT 'location_jump', card, from_txn, to_txn FROM ref_pairs
WHERE km / 900 * 3600 > seconds;
-- no pair within 1% of 900 km/h, where rounding could decide
SELECT count(*) AS borderline_pairs FROM ref_pairs
WHERE km / 900 * 3600 BETWEEN seconds * 0.99 AND seconds * 1.01;

CREATE TEMP TABLE model_alerts AS
SELECT a.details->>'rule' AS rule, a.twin_id AS card,
       coalesce(a.details->>'txn', a.details->>'from_txn')::bigint AS from_txn,
       (a.details->>'to_txn')::bigint AS to_txn, a.event_id
FROM digitaltwin.alerts a WHERE a.model = 'card_fraud';

-- the same alerts, each once
SELECT (SELECT count(*) FROM (SELECT rule, card, from_txn, to_txn FROM ref_alerts
                              EXCEPT ALL
                              SELECT rule, card, from_txn, to_txn FROM model_alerts) m) AS missing,
       (SELECT count(*) FROM (SELECT rule, card, from_txn, to_txn FROM model_alerts
                              EXCEPT ALL
                              SELECT rule, card, from_txn, to_txn FROM ref_alerts) u) AS unexpected;
SELECT rule, count(*) AS alerts, count(DISTINCT card) AS cards
FROM model_alerts GROUP BY rule ORDER BY rule;

-- what the stream exercised: transactions queued after a later one of
-- their card, late ones, and velocity alerts raised by a transaction that
-- arrived after the one it flags (a late one completing a burst)
SELECT count(*) AS transactions,
       count(*) FILTER (WHERE event_time < max_before AND NOT late) AS out_of_order_judged,
       count(*) FILTER (WHERE late) AS late
FROM (SELECT r.*, max(r.event_time) OVER (PARTITION BY r.card ORDER BY r.event_id
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                  AS max_before
      FROM ref_txn r) s;
SELECT count(*) AS velocity_completed_late
FROM model_alerts m JOIN card_fraud_transactions x ON x.txn = m.from_txn
WHERE m.rule = 'velocity' AND m.event_id <> x.event_id;
-- the twins counted every transaction and the same late ones
SELECT sum((state->>'n')::bigint) AS counted, sum((state->>'late')::bigint) AS late
FROM digitaltwin.twins WHERE model = 'card_fraud';
SELECT count(*) AS dead_letters FROM digitaltwin.dead_letters WHERE model = 'card_fraud';

-- the hand-written cards (generate.sql)
-- (seconds after the stream's start: the flagged transaction or pair, and
-- the transaction whose arrival raised the alert)
SELECT m.card, m.rule,
       extract(epoch FROM f.event_time - '2026-03-01 12:00:00+00')::int AS flagged_s,
       extract(epoch FROM t.event_time - '2026-03-01 12:00:00+00')::int AS to_s,
       extract(epoch FROM e.event_time - '2026-03-01 12:00:00+00')::int AS raised_by_s
FROM model_alerts m
JOIN card_fraud_transactions f ON f.txn = m.from_txn
LEFT JOIN card_fraud_transactions t ON t.txn = m.to_txn
JOIN card_fraud_transactions e ON e.event_id = m.event_id
WHERE m.card IN ('card-late-burst', 'card-too-late', 'card-late-jump')
ORDER BY m.card, f.event_time, t.event_time;
SELECT twin_id, state->'n' AS n, state->'late' AS late
FROM digitaltwin.twins
WHERE model = 'card_fraud' AND twin_id IN ('card-late-burst', 'card-too-late', 'card-late-jump')
ORDER BY twin_id;

SELECT digitaltwin.drop_model('card_fraud', force => true);
RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA card_fraud_example CASCADE;
RESET client_min_messages;
