#!/bin/bash
# The digitaltwin demo: a throwaway PostgreSQL 15 instance with the
# extension preloaded, the heart-rate monitor (plpgsql and C models)
# streaming readings of 50 patients, alerts printed as their NOTIFY
# arrives, and a summary query over the live twins; then the card fraud
# example judging transactions on their own timestamps; a timer alert
# (healthcare: a wearable stops sending) and a command arriving at a
# gateway (rental car: a speeding car is told to slow down).
#
#   bash scripts/demo.sh            (as root on Debian, or as a user who can
#                                    run make install)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/deps.sh"

ROUNDS=${DEMO_ROUNDS:-20}
PER_ROUND=${DEMO_EVENTS_PER_ROUND:-500}
CARDS=${DEMO_CARDS:-100}

echo "== installing and building"
dt_install_deps
dt_build_install "$ROOT"

LISTENER_PID=
GATEWAY_PID=
cleanup() {
	[ -n "$LISTENER_PID" ] && kill "$LISTENER_PID" 2>/dev/null || true
	[ -n "$GATEWAY_PID" ] && kill "$GATEWAY_PID" 2>/dev/null || true
	dt_instance_stop
}
trap cleanup EXIT

DIR=$(mktemp -d /tmp/digitaltwin-demo.XXXXXX)
echo "== starting a throwaway instance in $DIR"
dt_instance_start "$DIR" "digitaltwin.workers = 2"
CONN=$DT_CONN
psql_demo() { dt_psql "$@"; }

echo "== loading the heart-rate models (examples/heart_rate.sql, examples/heart_rate_c)"
psql_demo -c "SET client_min_messages = warning" -f "$ROOT/examples/heart_rate.sql" >/dev/null
psql_demo -c "CREATE EXTENSION digitaltwin_heart_rate" >/dev/null
psql_demo -c "SELECT name AS model, process, init, state_type FROM digitaltwin.models ORDER BY id"

# the listener confirms each notified alert by its id in digitaltwin.alerts
# before printing or counting it: anyone who can connect may NOTIFY the
# channel (README, "Listening safely")
gcc -O2 -o "$DIR/listen_alerts" "$ROOT/scripts/listen_alerts.c" \
	-I"$("$PG_CONFIG" --includedir)" -L"$("$PG_CONFIG" --libdir)" -lpq
"$DIR/listen_alerts" "$CONN" 12 &
LISTENER_PID=$!

echo "== streaming $ROUNDS rounds of $PER_ROUND readings per model (multi-row INSERT and COPY)"
start_ms=$(($(date +%s%N) / 1000000))
for round in $(seq 1 "$ROUNDS"); do
	# plpgsql model: one multi-row INSERT per round
	psql_demo -c "
		INSERT INTO digitaltwin.events (model, twin_id, payload)
		SELECT 'heart_rate', 'patient-' || (1 + (random() * 49)::int),
		       jsonb_build_object('bpm', 62 + (random() * 45)::int
		                                 + CASE WHEN random() < 0.02 THEN 90 ELSE 0 END)
		FROM generate_series(1, $PER_ROUND)"
	# C model: the same kind of readings by COPY
	for i in $(seq 1 "$PER_ROUND"); do
		bpm=$((62 + RANDOM % 45))
		[ $((RANDOM % 50)) -eq 0 ] && bpm=$((bpm + 90))
		printf 'heart_rate_c\tpatient-%d\t{"bpm": %d}\n' $((1 + RANDOM % 50)) "$bpm"
	done | psql_demo -c "COPY digitaltwin.events (model, twin_id, payload) FROM STDIN"
done
psql_demo -At -c "SELECT digitaltwin.wait_idle('120s')" | grep -qx t ||
	{ echo "events were not all processed in time" >&2; exit 1; }
elapsed_ms=$(($(date +%s%N) / 1000000 - start_ms))
psql_demo -c "NOTIFY digitaltwin_demo_done"
wait "$LISTENER_PID"
LISTENER_PID=

echo "== $((ROUNDS * PER_ROUND * 2)) events ingested and processed in ${elapsed_ms} ms"
echo "== summary over the live twins (digitaltwin.twins; a typed view, patient_vitals, joined with patients)"
psql_demo <<'EOSQL'
SELECT t.model,
       count(*) AS patients,
       sum(coalesce((t.state->>'readings')::bigint, (c).readings)) AS readings,
       round(avg(coalesce((t.state->>'sum')::numeric / nullif((t.state->>'readings')::numeric, 0),
                          (c).avg_bpm::numeric)), 1) AS avg_bpm,
       max(coalesce((t.state->>'max')::numeric, (c).max_bpm::numeric)) AS max_bpm
FROM digitaltwin.twins t
LEFT JOIN LATERAL (
    SELECT heart_rate_c_summary(s.state) AS c
    FROM digitaltwin.twin_state s JOIN digitaltwin.models m ON m.id = s.model_id
    WHERE m.name = t.model AND s.twin_id = t.twin_id AND t.model = 'heart_rate_c') c ON true
GROUP BY t.model ORDER BY t.model;

-- a typed view: one column per state property, no casts in the query
SELECT digitaltwin.create_twin_view('heart_rate', 'patient_vitals',
                                    'limit int, max int, last int, readings bigint') \gset
SELECT p.patient_id, p.name, p.age, v."limit", v.max AS max_bpm, v.last AS last_bpm,
       a.alerts
FROM patients p
JOIN patient_vitals v ON v.twin_id = p.patient_id
JOIN (SELECT twin_id, count(*) AS alerts FROM digitaltwin.alerts
      WHERE model = 'heart_rate' GROUP BY twin_id) a ON a.twin_id = p.patient_id
ORDER BY a.alerts DESC, p.patient_id LIMIT 5;

SELECT model, severity, count(*) AS alerts FROM digitaltwin.alerts
GROUP BY 1, 2 ORDER BY 1, 2;

SELECT coalesce(worker::text, 'total') AS worker, events_processed, queue_depth,
       dead_letters, alerts, twins, pg_size_pretty(memory_bytes) AS memory
FROM digitaltwin.stats;
EOSQL
echo "== card fraud (examples/card_fraud): $CARDS cards, judged on the terminals' clocks, some transactions late"
psql_demo -c "SET client_min_messages = warning" -v cards="$CARDS" \
	-f "$ROOT/examples/card_fraud/model.sql" -f "$ROOT/examples/card_fraud/generate.sql" >/dev/null
psql_demo -At -c "SELECT digitaltwin.wait_idle('120s')" | grep -qx t ||
	{ echo "transactions were not all processed in time" >&2; exit 1; }
psql_demo <<'EOSQL'
SELECT details->>'rule' AS rule, severity, count(*) AS alerts, count(DISTINCT twin_id) AS cards
FROM digitaltwin.alerts WHERE model = 'card_fraud' GROUP BY 1, 2 ORDER BY 1;

-- the hand-written cards: a late transaction completing a burst, one too
-- late to judge, a late one between two others
SELECT c.card, c.transactions, (t.state->>'late')::int AS late, a.message
FROM (SELECT card, count(*) AS transactions FROM card_fraud_transactions
      WHERE card NOT LIKE 'card-0%' GROUP BY card) c
JOIN digitaltwin.twins t ON t.model = 'card_fraud' AND t.twin_id = c.card
LEFT JOIN digitaltwin.alerts a ON a.model = 'card_fraud' AND a.twin_id = c.card
ORDER BY c.card, a.id;
EOSQL

echo "== timers (examples/healthcare): 4 wearables, one reading every 0.25 s for 2 s; two stop early"
psql_demo -c "SET client_min_messages = warning" -f "$ROOT/examples/healthcare/model.sql" \
	-c "UPDATE healthcare_settings SET silence_s = 1, summary_s = 0.5" \
	-v patients=4 -v rounds=8 -v every=0.25 -f "$ROOT/examples/healthcare/generate.sql" >/dev/null
# no reading for 1 s: each silent wearable's timer fires; the others are
# discharged (timers cancelled).  Nothing to wait on but time: poll.
for _ in $(seq 1 100); do
	[ "$(psql_demo -At -c "SELECT count(*) FROM digitaltwin.timers WHERE model = 'healthcare'")" = 0 ] && break
	sleep 0.1
done
psql_demo <<'EOSQL'
SELECT a.twin_id, a.severity, a.message,
       round(extract(epoch FROM a.raised_at - h.committed_by)::numeric, 1) AS after_last_reading_s
FROM digitaltwin.alerts a
LEFT JOIN healthcare_readings h ON h.reading = (a.details->>'last_reading')::bigint
WHERE a.model = 'healthcare' AND a.details->>'rule' <> 'summary'
ORDER BY a.id;
SELECT twin_id, count(*) AS summaries, sum((details->>'readings')::int) AS readings_summarised
FROM digitaltwin.alerts WHERE model = 'healthcare' AND details->>'rule' = 'summary'
GROUP BY twin_id ORDER BY twin_id;
EOSQL

echo "== commands (examples/rental_car): a gateway LISTENs on digitaltwin_outbox; car-01 speeds"
psql_demo -c "SET client_min_messages = warning" -f "$ROOT/examples/rental_car/model.sql" \
	-v cars=5 -v positions=0 -v queue=off -f "$ROOT/examples/rental_car/generate.sql" \
	-c "CREATE ROLE demo_gateway LOGIN IN ROLE digitaltwin_gateway" >/dev/null
gcc -O2 -o "$DIR/gateway" "$ROOT/examples/rental_car/gateway.c" \
	-I"$("$PG_CONFIG" --includedir)" -L"$("$PG_CONFIG" --libdir)" -lpq
# two commands expected (150 and 165 km/h are over any driver's limit)
"$DIR/gateway" "$CONN user=demo_gateway" rental_car 2 20 >"$DIR/gateway.out" 2>"$DIR/gateway.err" &
GATEWAY_PID=$!
for _ in $(seq 1 100); do
	grep -q listening "$DIR/gateway.err" && break
	sleep 0.1
done
psql_demo <<'EOSQL'
SELECT r.car_id, d.age, d.points, d.accidents FROM rentals r JOIN drivers d USING (driver_id)
WHERE r.car_id = 'car-01';
INSERT INTO digitaltwin.events (model, twin_id, payload) VALUES
    ('rental_car', 'car-01', '{"reading": 1, "lat": 45.76, "lon": 4.84, "speed": 70}'),
    ('rental_car', 'car-01', '{"reading": 2, "lat": 45.77, "lon": 4.85, "speed": 150}'),
    ('rental_car', 'car-01', '{"reading": 3, "lat": 45.81, "lon": 4.86, "speed": 165}');
EOSQL
wait "$GATEWAY_PID" || { cat "$DIR/gateway.err" >&2; exit 1; }
GATEWAY_PID=
echo "-- the gateway printed:"
cat "$DIR/gateway.out"
psql_demo <<'EOSQL'
SELECT twin_id AS region, state->'count' AS cars, state->'cars' AS speeds
FROM digitaltwin.twins WHERE model = 'rental_region' ORDER BY twin_id;
EOSQL
echo "== done; the instance is removed"
