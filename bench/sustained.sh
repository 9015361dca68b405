#!/bin/bash
# Sustained load: are the queue and the tables bounded?
#
#   bash bench/sustained.sh [seconds] [events_per_second]
#
# Streams heart-rate readings (plpgsql model, multi-row INSERTs from
# pgbench at a fixed rate) into 10000 twins for the given time (default
# 600 s, at 5000 events/s), and samples every 30 s the sizes of the event
# queue, the durable state and the alerts, as a table and as CSV
# (bench/out/sustained.csv).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/deps.sh"
SECONDS_TOTAL=${1:-600}
RATE=${2:-5000}
ROWS=100                          # events per pgbench transaction
TPS=$((RATE / ROWS))
SAMPLE=30

dt_install_deps
dt_build_install "$ROOT"
trap dt_instance_stop EXIT
dt_instance_start "$(mktemp -d /tmp/digitaltwin-sustained.XXXXXX)" "
digitaltwin.workers = 2
digitaltwin.alert_retention = '60s'
shared_buffers = '512MB'
max_wal_size = '4GB'"
dt_psql -c "SET client_min_messages = warning" -f "$ROOT/examples/heart_rate.sql" >/dev/null

cat >"$DT_DIR/stream.sql" <<EOS
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'heart_rate', 'device-' || (random() * 9999)::int,
       jsonb_build_object('bpm', 60 + (random() * 60)::int + CASE WHEN random() < 0.01 THEN 100 ELSE 0 END)
FROM generate_series(1, $ROWS);
EOS
mkdir -p "$ROOT/bench/out"
CSV="$ROOT/bench/out/sustained.csv"
echo "elapsed_s,events_processed,queue_rows,queue_bytes,twin_state_bytes,alerts_rows,alerts_bytes,generation" >"$CSV"

"$PGBIN/pgbench" -n -c 2 -R "$TPS" -T "$SECONDS_TOTAL" -f "$DT_DIR/stream.sql" \
	-h "$DT_DIR" -p 5432 -U postgres postgres >"$DT_DIR/pgbench.log" 2>&1 &
PGBENCH=$!

printf '%8s %12s %10s %12s %12s %10s %12s %5s\n' elapsed processed queue_rows queue_size state_size alerts alerts_size gen
start=$(date +%s)
while kill -0 "$PGBENCH" 2>/dev/null; do
	sleep "$SAMPLE"
	row=$(dt_psql -At -F, -c "
		SELECT $(($(date +%s) - start)),
		       (SELECT events_processed FROM digitaltwin.stats WHERE worker IS NULL),
		       (SELECT count(*) FROM digitaltwin.events),
		       (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
		        WHERE c.relnamespace = 'digitaltwin'::regnamespace AND c.relname ~ '^events_[0-9]\$'),
		       pg_total_relation_size('digitaltwin.twin_state'),
		       (SELECT count(*) FROM digitaltwin.alerts),
		       pg_total_relation_size('digitaltwin.alerts'),
		       (SELECT generation FROM digitaltwin.queue_state)")
	echo "$row" >>"$CSV"
	IFS=, read -r e p qr qb sb ar ab g <<<"$row"
	printf '%8s %12s %10s %12s %12s %10s %12s %5s\n' "$e" "$p" "$qr" \
		"$(numfmt --to=iec "$qb")" "$(numfmt --to=iec "$sb")" "$ar" "$(numfmt --to=iec "$ab")" "$g"
done
wait "$PGBENCH" || true
grep -E "tps|latency average" "$DT_DIR/pgbench.log" || true
echo "CSV: $CSV"
