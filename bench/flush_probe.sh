#!/bin/bash
# How much does CPU taken by other processes slow a sender's commits on this
# machine?  No digitaltwin involved: two clients send multi-row INSERTs into
# a plain table while 0, 1 or 2 shell loops (no I/O at all) spin, at normal
# and at the lowest priority; for each window, the rate and the mean time of
# a WAL flush (pg_stat_wal with track_wal_io_timing).  docs/performance.md,
# issue 15 round 7, explains why this bounds the multi-row and single-row
# targets: the workers have to take CPU while the senders send.
#
#   bash bench/flush_probe.sh
#
# Parameters (environment): SECONDS_EACH (8), ROUNDS (2).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/deps.sh"
SECONDS_EACH=${SECONDS_EACH:-8}
LOOPS=()

stop_loops() {
	local pid
	for pid in "${LOOPS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${LOOPS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	LOOPS=()
}

start_loops() {	# count nice
	local i
	for ((i = 0; i < $1; i++)); do
		nice -n "$2" bash -c 'while :; do :; done' &
		LOOPS+=($!)
	done
}

dt_instance_start "$(mktemp -d /tmp/dtflush.XXXXXX)" "
shared_buffers = '1GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
track_wal_io_timing = on
synchronous_commit = on"
trap 'stop_loops; dt_instance_stop' EXIT

dt_psql -c "CREATE TABLE heap_events (model text, twin_id text, payload jsonb)" >/dev/null
cat >"$DT_DIR/multi.sql" <<'EOS'
INSERT INTO heap_events (model, twin_id, payload)
SELECT 'heart_rate_c', 'patient-' || (1 + (random() * 9999)::int),
       jsonb_build_object('bpm', 60 + (random() * 70)::int)
FROM generate_series(1, 100);
EOS

window() {	# label
	local s0 t0 s1 t1 tps
	dt_psql -c "CHECKPOINT" >/dev/null
	read -r s0 t0 < <(dt_psql -At -F ' ' -c "SELECT wal_sync, wal_sync_time FROM pg_stat_wal")
	tps=$("$PGBIN/pgbench" -n -c 2 -j 2 -T "$SECONDS_EACH" -f "$DT_DIR/multi.sql" \
		-h "$DT_DIR" -p 5432 -U postgres postgres 2>/dev/null | awk '/^tps/ { print $3 }')
	read -r s1 t1 < <(dt_psql -At -F ' ' -c "SELECT wal_sync, wal_sync_time FROM pg_stat_wal")
	awk -v l="$1" -v tps="$tps" -v s=$((s1 - s0)) -v t0="$t0" -v t1="$t1" -v secs="$SECONDS_EACH" \
		'BEGIN { printf "  %-30s %8.0f events/s  %6.0f flushes/s  %6.3f ms per flush\n", l, tps * 100, s / secs, (t1 - t0) / s }'
	dt_psql -c "TRUNCATE heap_events" >/dev/null
}

echo "== a plain table's multi-row INSERTs (2 clients x 100 rows) beside busy loops doing no I/O"
for ((r = 1; r <= ${ROUNDS:-2}; r++)); do
	echo " round $r"
	window "alone"
	start_loops 1 0; window "1 busy loop"; stop_loops
	start_loops 1 19; window "1 busy loop at nice 19"; stop_loops
	start_loops 2 19; window "2 busy loops at nice 19"; stop_loops
done
