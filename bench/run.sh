#!/bin/bash
# digitaltwin benchmark: end-to-end events per second (ingested and fully
# processed, until wait_idle) for the same heart-rate logic, side by side:
# raw inserts into a plain table (the limit), the trigger peer, and
# digitaltwin with the plpgsql and the C model; then alert latency, memory
# per twin, an aggregate over 1M live twins, and recovery time.
#
#   bash bench/run.sh            (or: make bench)
#
# Parameters (environment): EVENTS (200000), TWINS (10000), WORKERS (2),
# BATCH (50000), CLIENTS (8), BIG_TWINS (1000000), PARTS (which parts to
# run, default "throughput deadlocks latency big"), HOWS (ingestion methods
# of the throughput part, default "copy multi single"), REPEAT (runs of each
# COPY and multi-row scenario, default 3: the median is reported),
# SINGLE_ROUNDS (the single-row scenarios take turns in rounds of
# EVENTS/SINGLE_ROUNDS events, default 5), SINGLE_DELAY (batch_delay of the
# extra single-row run of the C model, default 10ms), EXTRA_CONF (lines
# added to postgresql.conf).  Output: a table, and CSV
# in bench/out/results.csv.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/deps.sh"
EVENTS=${EVENTS:-200000}
TWINS=${TWINS:-10000}
WORKERS=${WORKERS:-2}
BATCH=${BATCH:-50000}
CLIENTS=${CLIENTS:-8}
BIG_TWINS=${BIG_TWINS:-1000000}
ROWS=100                        # rows per multi-row INSERT
PARTS=${PARTS:-throughput deadlocks latency big}
HOWS=${HOWS:-copy multi single}
REPEAT=${REPEAT:-3}
SINGLE_ROUNDS=${SINGLE_ROUNDS:-5}
SINGLE_DELAY=${SINGLE_DELAY:-10ms}
part() { [[ " $PARTS " == *" $1 "* ]]; }

dt_install_deps
dt_build_install "$ROOT"
trap dt_instance_stop EXIT
dt_instance_start "$(mktemp -d /tmp/digitaltwin-bench.XXXXXX)" "
digitaltwin.workers = $WORKERS
digitaltwin.batch_size = $BATCH
digitaltwin.max_memory = '2GB'
shared_buffers = '1GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
synchronous_commit = on
${EXTRA_CONF:-}"
OUT="$ROOT/bench/out"
mkdir -p "$OUT"
CSV="$OUT/results.csv"
echo "scenario,ingestion,events,seconds,events_per_second,note" >"$CSV"
gcc -O2 -o "$DT_DIR/alert_latency" "$ROOT/bench/alert_latency.c" \
	-I"$("$PG_CONFIG" --includedir)" -L"$("$PG_CONFIG" --libdir)" -lpq

dt_psql -c "SET client_min_messages = warning" -f "$ROOT/examples/heart_rate.sql" >/dev/null
dt_psql -c "CREATE EXTENSION digitaltwin_heart_rate" >/dev/null
dt_psql -f "$ROOT/bench/peer_trigger.sql" >/dev/null
dt_psql -c "INSERT INTO patients (patient_id, name, age, max_heart_rate)
            SELECT 'patient-' || i, 'Patient ' || i, 20 + i % 60, CASE WHEN i % 3 = 0 THEN 140 END
            FROM generate_series(51, $TWINS) i ON CONFLICT DO NOTHING" >/dev/null

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# The same readings for everyone: a COPY file per target table.
dt_psql -c "COPY (SELECT 'MODEL', 'patient-' || (1 + (i * 7919) % $TWINS),
                         jsonb_build_object('bpm', 60 + (i * 31) % 70 + CASE WHEN i % 97 = 0 THEN 80 ELSE 0 END)
                  FROM generate_series(1, $EVENTS) i) TO '$DT_DIR/events.tsv'"
for m in heart_rate heart_rate_c; do
	sed "s/^MODEL/$m/" "$DT_DIR/events.tsv" >"$DT_DIR/events_$m.tsv"
done

# pgbench scripts: multi-row INSERT of $ROWS rows, single-row INSERT
multi_script() {
	cat >"$DT_DIR/multi_$2.sql" <<EOS
INSERT INTO $1 (model, twin_id, payload)
SELECT '$2', 'patient-' || (1 + (random() * ($TWINS - 1))::int),
       jsonb_build_object('bpm', 60 + (random() * 70)::int)
FROM generate_series(1, $ROWS);
EOS
}
single_script() {
	cat >"$DT_DIR/single_$2.sql" <<EOS
\set t random(1, $TWINS)
\set b random(60, 130)
INSERT INTO $1 (model, twin_id, payload) VALUES ('$2', 'patient-' || :t, jsonb_build_object('bpm', :b));
EOS
}
multi_script raw_events raw; single_script raw_events raw
multi_script peer_events peer; single_script peer_events peer
for m in heart_rate heart_rate_c; do
	multi_script digitaltwin.events $m; single_script digitaltwin.events $m
done

reset_all() {
	dt_psql -c "TRUNCATE raw_events, peer_events, peer_state, peer_alerts" \
		-c "TRUNCATE digitaltwin.alerts, digitaltwin.dead_letters" \
		-c "VACUUM ANALYZE digitaltwin.twin_state" >/dev/null
}

declare -A RESULT RATIO
record() {		# scenario ingestion events ms [note]
	local eps=$(($3 * 1000 / ($4 > 0 ? $4 : 1)))
	RESULT["$1|$2"]=$eps
	echo "$1,$2,$3,$(awk "BEGIN{printf \"%.3f\", $4/1000}"),$eps,${5:-}" >>"$CSV"
	printf '  %-26s %-20s %9d events %8.2f s %10d ev/s %s\n' "$1" "$2" "$3" \
		"$(awk "BEGIN{print $4/1000}")" "$eps" "${5:-}"
}

wait_idle() { dt_psql -At -c "SELECT digitaltwin.wait_idle('600s')" | grep -qx t; }

# ingestion methods; $1 = target table, $2 = model/tag, $3 = copy file
ingest() {
	local how=$1 table=$2 tag=$3 file=${4:-}
	case $how in
	copy) dt_psql -c "COPY $table (model, twin_id, payload) FROM '$file'" ;;
	multi)
		# two writers, except for the trigger peer: its concurrent writers
		# deadlock (measured separately below)
		local c=2
		[ "$tag" = peer ] && c=1
		"$PGBIN/pgbench" -n -c $c -j $c -t $((EVENTS / ROWS / c)) -f "$DT_DIR/multi_$tag.sql" \
			-h "$DT_DIR" -p 5432 -U postgres postgres >/dev/null ;;
	single) "$PGBIN/pgbench" -n -c "$CLIENTS" -j 2 -t $((${SINGLE_EVENTS:-$EVENTS} / CLIENTS)) -f "$DT_DIR/single_$tag.sql" \
		-h "$DT_DIR" -p 5432 -U postgres postgres >/dev/null ;;
	esac
}

if part throughput; then
echo "== end-to-end throughput ($EVENTS events, $TWINS twins, $WORKERS workers, batch $BATCH)"
# median of the runs' times in ms; $1 = number of runs, then the command
timed() {
	local n=$1 i t0 t1; shift
	for i in $(seq "$n"); do
		reset_all
		t0=$(now_ms); "$@" >/dev/null; t1=$(now_ms)
		echo $((t1 - t0))
	done | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'
}
dt_ingest() { ingest "$1" digitaltwin.events "$2" "$DT_DIR/events_$2.tsv"; wait_idle; }

# Single-row runs take tens of seconds each, long enough for this kind of
# machine to drift by more than the differences measured: the targets take
# turns, SINGLE_ROUNDS rounds of EVENTS/SINGLE_ROUNDS events each, in
# reverse order every other round (so a drift favours no one), and each
# reports its median round; the ratios to raw are the medians of the
# per-round ratios.  "heart_rate_c, batch_delay" is the C model with
# digitaltwin.batch_delay = $SINGLE_DELAY (off by default), set by reload.
set_batch_delay() {
	dt_psql -c "ALTER SYSTEM SET digitaltwin.batch_delay = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
}
single_rounds() {
	local r target t0 t1 order
	local -A times=() ratios=()
	local targets="raw peer heart_rate heart_rate_c heart_rate_c_delay"
	SINGLE_EVENTS=$((EVENTS / SINGLE_ROUNDS))
	for r in $(seq "$SINGLE_ROUNDS"); do
		order=$targets
		[ $((r % 2)) = 0 ] && order=$(tr ' ' '\n' <<<"$targets" | tac | tr '\n' ' ')
		local -A round=()
		for target in $order; do
			reset_all
			[ "$target" = heart_rate_c_delay ] && set_batch_delay "$SINGLE_DELAY"
			t0=$(now_ms)
			case $target in
			raw) ingest single raw_events raw ;;
			peer) ingest single peer_events peer ;;
			heart_rate_c_delay) dt_ingest single heart_rate_c ;;
			*) dt_ingest single "$target" ;;
			esac >/dev/null
			t1=$(now_ms)
			[ "$target" = heart_rate_c_delay ] && set_batch_delay 0
			times[$target]+="$((t1 - t0)) "
			round[$target]=$((t1 - t0))
		done
		for target in $targets; do
			ratios[$target]+="$(awk "BEGIN{printf \"%.3f\", ${round[raw]} / ${round[$target]}}") "
		done
	done
	med() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'; }
	local note="median of $SINGLE_ROUNDS interleaved rounds"
	record "raw insert (limit)" single "$SINGLE_EVENTS" "$(med "${times[raw]}")" "$note"
	record "trigger peer" single "$SINGLE_EVENTS" "$(med "${times[peer]}")" "$note"
	record "digitaltwin heart_rate" single "$SINGLE_EVENTS" "$(med "${times[heart_rate]}")" "$note"
	record "digitaltwin heart_rate_c" single "$SINGLE_EVENTS" "$(med "${times[heart_rate_c]}")" "$note"
	record "digitaltwin heart_rate_c" "single, delay $SINGLE_DELAY" "$SINGLE_EVENTS" \
		"$(med "${times[heart_rate_c_delay]}")" "$note; digitaltwin.batch_delay = $SINGLE_DELAY"
	for target in $targets; do
		RATIO[$target]=$(med "${ratios[$target]}")
		echo "    $target / raw, per round: ${ratios[$target]}"
	done
}

for how in $HOWS; do
	if [ "$how" = single ]; then
		single_rounds
		continue
	fi
	runs=$REPEAT
	note="median of $runs"
	record "raw insert (limit)" "$how" "$EVENTS" \
		"$(timed "$runs" ingest "$how" raw_events raw "$DT_DIR/events_heart_rate.tsv")" "$note"
	record "trigger peer" "$how" "$EVENTS" \
		"$(timed "$runs" ingest "$how" peer_events peer "$DT_DIR/events_heart_rate.tsv")" "$note"
	for m in heart_rate heart_rate_c; do
		record "digitaltwin $m" "$how" "$EVENTS" "$(timed "$runs" dt_ingest "$how" "$m")" "$note"
	done
done

fi

if part deadlocks; then
echo "== trigger peer with two concurrent batch writers (COPY batches of 2000, random twin order)"
reset_all
split -l 2000 "$DT_DIR/events_heart_rate.tsv" "$DT_DIR/batch_"
ls "$DT_DIR"/batch_* >"$DT_DIR/batches"
failed=0; total=0
writer() {
	local f n=0 bad=0
	while read -r f; do
		if ! sort -R "$f" | dt_psql -c "COPY peer_events (model, twin_id, payload) FROM STDIN" 2>>"$DT_DIR/deadlocks.log"; then
			bad=$((bad + 1))
		fi
		n=$((n + 1))
	done
	echo "$n $bad"
}
t0=$(now_ms)
writer <"$DT_DIR/batches" >"$DT_DIR/w1" &
writer <"$DT_DIR/batches" >"$DT_DIR/w2" &
wait
t1=$(now_ms)
read -r n1 b1 <"$DT_DIR/w1"; read -r n2 b2 <"$DT_DIR/w2"
deadlocks=$(grep -c "deadlock detected" "$DT_DIR/deadlocks.log" || true)
ok_events=$(dt_psql -At -c "SELECT count(*) FROM peer_events")
record "trigger peer, 2 writers" "copy" "$ok_events" $((t1 - t0)) \
	"$((b1 + b2)) of $((n1 + n2)) batches failed ($deadlocks deadlocks)"

fi

if part latency; then
echo "== alert latency, insert-commit to NOTIFY received, at a steady 10000 events/s"
reset_all
echo "INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT 'heart_rate_c', 'patient-' || (1 + (random() * ($TWINS - 1))::int), jsonb_build_object('bpm', 60 + (random() * 70)::int)
FROM generate_series(1, 100);" >"$DT_DIR/steady.sql"
"$PGBIN/pgbench" -n -c 2 -j 2 -R 100 -T 25 -f "$DT_DIR/steady.sql" \
	-h "$DT_DIR" -p 5432 -U postgres postgres >/dev/null 2>&1 &
BG=$!
sleep 3		# let the steady load settle (pacing, not synchronisation)
latency=$("$DT_DIR/alert_latency" "$DT_CONN" heart_rate_c 20 400)
wait "$BG" || true
echo "  $latency"
echo "alert latency at 10k ev/s,probe,400,,,$latency" >>"$CSV"
wait_idle

fi

if part big; then
echo "== $BIG_TWINS twins: memory, aggregate over the live view, recovery"
# a jsonb model keeping a small state, fed one event per twin
dt_psql -c "TRUNCATE digitaltwin.twin_state" >/dev/null
dt_psql -c "CREATE FUNCTION gauge(twin_id text, state jsonb, event jsonb) RETURNS jsonb
            LANGUAGE sql AS \$\$ SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                                                        'last', event->'bpm', 'max', event->'bpm') \$\$;
            SELECT digitaltwin.create_model('gauge', 'gauge(text,jsonb,jsonb)')" >/dev/null
t0=$(now_ms)
dt_psql -c "INSERT INTO digitaltwin.events (model, twin_id, payload)
            SELECT 'gauge', 'device-' || i, jsonb_build_object('bpm', 60 + i % 70)
            FROM generate_series(1, $BIG_TWINS) i" >/dev/null
wait_idle
t1=$(now_ms)
record "digitaltwin, new twins" "insert-select" "$BIG_TWINS" $((t1 - t0)) "every event creates a twin"
dt_as_user "$PGBIN/pg_ctl" -D "$DT_DIR/data" -l "$DT_DIR/server.log" -w restart -m fast >/dev/null
dt_psql -At -c "SELECT 1" >/dev/null
until [ "$(dt_psql -At -c "SELECT sum(twins) FROM digitaltwin.stats WHERE worker IS NOT NULL")" -ge "$BIG_TWINS" ]; do
	sleep 0.2
done
recovery=$(grep -o 'loaded [0-9]* twins in [0-9.]* ms' "$DT_DIR/server.log" | tail -n "$WORKERS" |
	awk '{ if ($5 > m) m = $5; n += $2 } END { printf "%d twins in %.0f ms", n, m }')
echo "  recovery: $recovery (workers load in parallel)"
echo "recovery,restart,$BIG_TWINS,,,$recovery" >>"$CSV"
mem=$(dt_psql -At -c "SELECT round(memory_bytes::numeric / twins, 1) || ' bytes per twin, state ' ||
                             (SELECT avg(length(state))::int FROM digitaltwin.twin_state) || ' bytes (jsonb)'
                      FROM digitaltwin.stats WHERE worker IS NULL")
echo "  shared memory: $mem"
echo "memory per twin,$BIG_TWINS twins,,,,$mem" >>"$CSV"

# aggregates while the workers process a steady stream of the C model: one
# over a column kept beside the state, one that reads every state
agg_queries=("SELECT count(*), avg(event_count) FROM digitaltwin.twins"
             "SELECT count(*), avg((state->>'last')::int) FROM digitaltwin.twins")
processed() { dt_psql -At -c "SELECT events_processed FROM digitaltwin.stats WHERE worker IS NULL"; }
"$PGBIN/pgbench" -n -c 2 -j 2 -T 30 -f "$DT_DIR/multi_heart_rate_c.sql" \
	-h "$DT_DIR" -p 5432 -U postgres postgres >/dev/null 2>&1 &
BG=$!
sleep 4
p0=$(processed); t0=$(now_ms); sleep 8; p1=$(processed); t1=$(now_ms)
base=$(((p1 - p0) * 1000 / (t1 - t0)))
echo "  worker throughput alone: $base ev/s"
for agg_query in "${agg_queries[@]}"; do
	# in one session, as an analyst's psql or a pooled connection runs it
	# (pgbench connects once and reports the mean latency), then the first
	# query of a new connection, which also attaches the shared memory
	echo "$agg_query;" >"$DT_DIR/agg.sql"
	p0=$(processed); t0=$(now_ms)
	agg_ms=$("$PGBIN/pgbench" -n -c 1 -T 8 -f "$DT_DIR/agg.sql" -h "$DT_DIR" -p 5432 -U postgres postgres 2>/dev/null |
		awk '/^latency average/ { printf "%.0f", $4 }')
	p1=$(processed); t1=$(now_ms)
	during=$(((p1 - p0) * 1000 / (t1 - t0)))
	a0=$(now_ms); dt_psql -At -c "$agg_query" >/dev/null; a1=$(now_ms)
	echo "  $agg_query"
	echo "    over $BIG_TWINS live twins: $agg_ms ms (mean, one session), $((a1 - a0)) ms (new connection);" \
		"worker throughput meanwhile $during ev/s"
	echo "aggregate over live twins,\"$agg_query\",$BIG_TWINS,$(awk "BEGIN{printf \"%.3f\", $agg_ms/1000}"),,one session; new connection $((a1 - a0)) ms; throughput $base -> $during ev/s" >>"$CSV"
done
wait "$BG" || true

fi

echo "== ratios"
r() {
	if [ -n "${RESULT[$1]:-}" ] && [ -n "${RESULT[$2]:-}" ]; then
		awk "BEGIN{printf \"%.2f\", ${RESULT[$1]}/${RESULT[$2]}}"
	else
		echo "n/a"
	fi
}
echo "  plpgsql model COPY / trigger peer COPY:      $(r 'digitaltwin heart_rate|copy' 'trigger peer|copy')  (target >= 3)"
echo "  C model COPY / raw COPY:                      $(r 'digitaltwin heart_rate_c|copy' 'raw insert (limit)|copy')  (target >= 0.5)"
if [ -n "${RATIO[raw]:-}" ]; then
echo "  single-row / raw single-row, medians of the per-round ratios (target >= 0.9):"
echo "    C model ${RATIO[heart_rate_c]}, plpgsql model ${RATIO[heart_rate]}," \
	"C model with batch_delay $SINGLE_DELAY ${RATIO[heart_rate_c_delay]}, trigger peer ${RATIO[peer]}"
fi
echo "CSV: $CSV"
