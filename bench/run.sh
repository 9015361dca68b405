#!/bin/bash
# digitaltwin benchmark: end-to-end events per second (ingested and fully
# processed, until wait_idle) for the same heart-rate logic, side by side:
# plain inserts, the trigger peer, and
# digitaltwin with the plpgsql and the C model, each against the physical
# limit (a plain heap of the same columns: no identity, no index) and the
# queue table (the same with an identity primary key); then alert latency, memory
# per twin, an aggregate over 1M live twins, and recovery time; then
# (version 1.6) 1M pending timers (disk, shared and worker memory, reload),
# the cost of arming a timer at every event, firing rate and lateness, a
# two-hop chain of messages against one hop, and the outbox's latency to a
# gateway (bench/outbox_latency.c).
#
#   bash bench/run.sh            (or: make bench)
#
# Parameters (environment): EVENTS (200000), TWINS (10000), WORKERS (2),
# BATCH (50000), CLIENTS (8), BIG_TWINS (1000000), PARTS (which parts to
# run, default "throughput deadlocks latency big timers messages outbox
# history"), HISTORY_TWINS (twins for twins_as_of(), default BIG_TWINS),
# TIMER_TWINS (1000000 pending timers), FIRE_TIMERS (200000 due at once),
# FIRE_LEAD (20: seconds between arming and the due time), LATE_RATE (10000
# due per second) for LATE_SECONDS (10), REGIONS (100), OUTBOX_RATE (1000
# commands per second), OUTBOX_COUNT (10000), OUTBOX_SENDERS (2), HOWS (ingestion methods
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
PARTS=${PARTS:-throughput deadlocks latency big timers messages outbox history}
HOWS=${HOWS:-copy multi single}
REPEAT=${REPEAT:-3}
SINGLE_ROUNDS=${SINGLE_ROUNDS:-5}
SINGLE_DELAY=${SINGLE_DELAY:-10ms}
TIMER_TWINS=${TIMER_TWINS:-1000000}
FIRE_TIMERS=${FIRE_TIMERS:-200000}
FIRE_LEAD=${FIRE_LEAD:-20}
LATE_RATE=${LATE_RATE:-10000}
LATE_SECONDS=${LATE_SECONDS:-10}
REGIONS=${REGIONS:-100}
OUTBOX_RATE=${OUTBOX_RATE:-1000}
OUTBOX_COUNT=${OUTBOX_COUNT:-10000}
OUTBOX_SENDERS=${OUTBOX_SENDERS:-2}
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
multi_script heap_events heap; single_script heap_events heap
multi_script raw_events raw; single_script raw_events raw
multi_script peer_events peer; single_script peer_events peer
for m in heart_rate heart_rate_c; do
	multi_script digitaltwin.events $m; single_script digitaltwin.events $m
done

reset_all() {
	dt_psql -c "TRUNCATE heap_events, raw_events, peer_events, peer_state, peer_alerts" \
		-c "TRUNCATE digitaltwin.alerts, digitaltwin.dead_letters" \
		-c "VACUUM ANALYZE digitaltwin.twin_state" >/dev/null
}

declare -A RESULT RATIO RATIO_HEAP
record() {		# scenario ingestion events ms [note]
	local eps=$(($3 * 1000 / ($4 > 0 ? $4 : 1)))
	# the first figure of a scenario: the ratios compare figures measured
	# side by side in the throughput part, not a later part's rerun (the
	# timers part records the plpgsql model's COPY again, taking turns)
	[ -n "${RESULT["$1|$2"]:-}" ] || RESULT["$1|$2"]=$eps
	echo "$1,$2,$3,$(awk "BEGIN{printf \"%.3f\", $4/1000}"),$eps,${5:-}" >>"$CSV"
	printf '  %-26s %-20s %9d events %8.2f s %10d ev/s %s\n' "$1" "$2" "$3" \
		"$(awk "BEGIN{print $4/1000}")" "$eps" "${5:-}"
}

wait_idle() { dt_psql -At -c "SELECT digitaltwin.wait_idle('600s')" | grep -qx t; }
worker_pids() { dt_psql -At -c "SELECT pid FROM digitaltwin.worker_stats() ORDER BY worker"; }
# Before a latency measurement: the parts before it leave gigabytes of WAL
# and dead rows behind; flush them (CHECKPOINT, VACUUM) and let autovacuum
# finish, so that the tail measured is the extension's, not the cleanup's.
settle() {
	dt_psql -c "CHECKPOINT" -c "VACUUM" >/dev/null
	for _ in $(seq 120); do
		[ "$(dt_psql -At -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" = 0 ] && break
		sleep 0.5
	done
	dt_psql -c "CHECKPOINT" >/dev/null
}

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
# the insert alone into digitaltwin.events (the workers run meanwhile, and
# are waited for after the clock stopped); median of $1 runs, in ms
timed_ingest_only() {
	local n=$1 how=$2 m=$3 i t0 t1
	for i in $(seq "$n"); do
		reset_all
		t0=$(now_ms); ingest "$how" digitaltwin.events "$m" "$DT_DIR/events_$m.tsv" >/dev/null; t1=$(now_ms)
		wait_idle
		echo $((t1 - t0))
	done | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'
}

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
	local -A times=() ratios=() hratios=()
	local targets="heap raw peer heart_rate heart_rate_c heart_rate_c_delay"
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
			heap) ingest single heap_events heap ;;
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
			hratios[$target]+="$(awk "BEGIN{printf \"%.3f\", ${round[heap]} / ${round[$target]}}") "
		done
	done
	med() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'; }
	local note="median of $SINGLE_ROUNDS interleaved rounds"
	record "heap insert (limit)" single "$SINGLE_EVENTS" "$(med "${times[heap]}")" "$note"
	record "raw insert (queue table)" single "$SINGLE_EVENTS" "$(med "${times[raw]}")" "$note"
	record "trigger peer" single "$SINGLE_EVENTS" "$(med "${times[peer]}")" "$note"
	record "digitaltwin heart_rate" single "$SINGLE_EVENTS" "$(med "${times[heart_rate]}")" "$note"
	record "digitaltwin heart_rate_c" single "$SINGLE_EVENTS" "$(med "${times[heart_rate_c]}")" "$note"
	record "digitaltwin heart_rate_c" "single, delay $SINGLE_DELAY" "$SINGLE_EVENTS" \
		"$(med "${times[heart_rate_c_delay]}")" "$note; digitaltwin.batch_delay = $SINGLE_DELAY"
	for target in $targets; do
		RATIO[$target]=$(med "${ratios[$target]}")
		RATIO_HEAP[$target]=$(med "${hratios[$target]}")
		echo "    $target / raw, per round: ${ratios[$target]}; / heap: ${hratios[$target]}"
	done
}

for how in $HOWS; do
	if [ "$how" = single ]; then
		single_rounds
		continue
	fi
	runs=$REPEAT
	note="median of $runs"
	record "heap insert (limit)" "$how" "$EVENTS" \
		"$(timed "$runs" ingest "$how" heap_events heap "$DT_DIR/events_heart_rate.tsv")" "$note"
	record "raw insert (queue table)" "$how" "$EVENTS" \
		"$(timed "$runs" ingest "$how" raw_events raw "$DT_DIR/events_heart_rate.tsv")" "$note"
	[ "$how" = copy ] && record "digitaltwin.events, ingest only" "$how" "$EVENTS" \
		"$(timed_ingest_only "$runs" "$how" heart_rate_c)" "$note; the COPY alone, C model's events"
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
LAT_P99=$(grep -o 'from INSERT sent: p50 [0-9.]* ms p90 [0-9.]* ms p99 [0-9.]*' <<<"$latency" | awk '{ print $NF }')
LAT_FLOOR=$(grep -o 'round trip (the floor): p50 [0-9.]* ms p99 [0-9.]*' <<<"$latency" | awk '{ print $NF }')
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
# $REPEAT restarts; each: the slowest worker's load (a worker that waited
# for the load at start counts its wait), then the median of them
recoveries=()
for _ in $(seq "$REPEAT"); do
	dt_as_user "$PGBIN/pg_ctl" -D "$DT_DIR/data" -l "$DT_DIR/server.log" -w restart -m fast >/dev/null
	dt_psql -At -c "SELECT 1" >/dev/null
	until [ "$(dt_psql -At -c "SELECT sum(twins) FROM digitaltwin.stats WHERE worker IS NOT NULL")" -ge "$BIG_TWINS" ]; do
		sleep 0.2
	done
	recovery=$(grep -o 'loaded [0-9]* twins and [0-9]* timers in [0-9.]* ms' "$DT_DIR/server.log" | tail -n "$WORKERS" |
		awk '{ if ($8 > m) m = $8; n += $2 } END { printf "%d twins in %.0f ms", n, m }')
	echo "  recovery: $recovery (one worker loads every partition at start)"
	recoveries+=("$(awk '{ print $(NF - 1) }' <<<"$recovery")")
done
RECOVERY_MS=$(printf '%s\n' "${recoveries[@]}" | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }')
recovery="$BIG_TWINS twins in $RECOVERY_MS ms, median of $REPEAT restarts (${recoveries[*]} ms)"
echo "  recovery: $recovery"
echo "recovery,restart,$BIG_TWINS,,,$recovery" >>"$CSV"
mem=$(dt_psql -At -c "SELECT round(memory_bytes::numeric / twins, 1) || ' bytes per twin, state ' ||
                             (SELECT avg(length(state))::int FROM digitaltwin.twin_state) || ' bytes (jsonb)'
                      FROM digitaltwin.stats WHERE worker IS NULL")
echo "  shared memory: $mem"
MEM_BEYOND=$(dt_psql -At -c "SELECT round(memory_bytes::numeric / twins -
                                     (SELECT avg(length(state)) FROM digitaltwin.twin_state))
                             FROM digitaltwin.stats WHERE worker IS NULL")
echo "memory per twin,$BIG_TWINS twins,,,,$mem" >>"$CSV"

# aggregates while the workers process a steady stream of the C model: one
# over a column kept beside the state, one that reads every state
agg_queries=("SELECT count(*), avg(event_count) FROM digitaltwin.twins"
             "SELECT count(*), avg((state->>'last')::int) FROM digitaltwin.twins")
processed() { dt_psql -At -c "SELECT events_processed FROM digitaltwin.stats WHERE worker IS NULL"; }
# Where the CPU goes (the aggregate's cost to the workers): the workers'
# CPU time and the machine's idle time, in clock ticks, read before and
# after each window; cpu_share prints the window's cores used by the
# workers, cores left idle, and events processed per second of worker CPU.
TICKS=$(getconf CLK_TCK)
cpu_reading() {
	local p w=0
	for p in $(worker_pids); do
		# printf: mawk prints integers past 2^31 as 2.1e+09
		w=$((w + $(awk '{ printf "%.0f\n", $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
	done
	echo "$w $(awk '/^cpu / { printf "%.0f\n", $5 + $6 }' /proc/stat)"
}
cpu_share() {	# reading-before reading-after events milliseconds
	awk -v t="$TICKS" -v n="$3" -v ms="$4" 'BEGIN {
		split(ARGV[1], a, " "); split(ARGV[2], b, " "); ARGC = 1
		s = ms / 1000; w = (b[1] - a[1]) / t
		printf "workers on CPU %.2f cores, idle %.2f cores, %d events per worker-CPU second",
			w / s, (b[2] - a[2]) / t / s, (w > 0 ? n / w : 0) }' "$1" "$2"
}
"$PGBIN/pgbench" -n -c 2 -j 2 -T 30 -f "$DT_DIR/multi_heart_rate_c.sql" \
	-h "$DT_DIR" -p 5432 -U postgres postgres >/dev/null 2>&1 &
BG=$!
sleep 4
c0=$(cpu_reading); p0=$(processed); t0=$(now_ms); sleep 8; p1=$(processed); t1=$(now_ms); c1=$(cpu_reading)
base=$(((p1 - p0) * 1000 / (t1 - t0)))
CPU_ALONE=$(cpu_share "$c0" "$c1" $((p1 - p0)) $((t1 - t0)))
echo "  worker throughput alone: $base ev/s ($CPU_ALONE)"
for agg_query in "${agg_queries[@]}"; do
	# in one session, as an analyst's psql or a pooled connection runs it
	# (pgbench connects once and reports the mean latency), then the first
	# query of a new connection, which also attaches the shared memory
	echo "$agg_query;" >"$DT_DIR/agg.sql"
	c0=$(cpu_reading); p0=$(processed); t0=$(now_ms)
	agg_ms=$("$PGBIN/pgbench" -n -c 1 -T 8 -f "$DT_DIR/agg.sql" -h "$DT_DIR" -p 5432 -U postgres postgres 2>/dev/null |
		awk '/^latency average/ { printf "%.0f", $4 }')
	p1=$(processed); t1=$(now_ms); c1=$(cpu_reading)
	during=$(((p1 - p0) * 1000 / (t1 - t0)))
	CPU_DURING=$(cpu_share "$c0" "$c1" $((p1 - p0)) $((t1 - t0)))
	a0=$(now_ms); dt_psql -At -c "$agg_query" >/dev/null; a1=$(now_ms)
	echo "  $agg_query"
	echo "    over $BIG_TWINS live twins: $agg_ms ms (mean, one session), $((a1 - a0)) ms (new connection);" \
		"worker throughput meanwhile $during ev/s"
	echo "    meanwhile: $CPU_DURING"
	echo "aggregate over live twins,\"$agg_query\",$BIG_TWINS,$(awk "BEGIN{printf \"%.3f\", $agg_ms/1000}"),,one session; new connection $((a1 - a0)) ms; throughput $base -> $during ev/s" >>"$CSV"
	AGG_MS=$agg_ms AGG_BASE=$base AGG_DURING=$during	# the last: every state read
done
wait "$BG" || true

fi

# ---------------------------------------------------------------------
# Version 1.6: timers, messages, the outbox.  Each part prints its
# figures and adds a line to the summary printed at the end (measure,
# figure, target, met).
# ---------------------------------------------------------------------
SUMMARY=()
summary() {	# measure figure target met
	SUMMARY+=("$(printf '  %-46s %-44s %-14s %s' "$1" "$2" "$3" "$4")")
}
median() { sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'; }
now_s() { date +%s.%N; }
processed_total() { dt_psql -At -c "SELECT sum(events_processed) FROM digitaltwin.worker_stats()"; }
met() { awk "BEGIN{ exit !($1) }" && echo yes || echo NO; }
# ms to COPY events_$1.tsv and process it (until wait_idle)
copy_run() {
	local t0 t1
	reset_all
	t0=$(now_ms)
	dt_psql -c "COPY digitaltwin.events (model, twin_id, payload) FROM '$DT_DIR/events_$1.tsv'" >/dev/null
	wait_idle
	t1=$(now_ms)
	echo $((t1 - t0))
}
# Wait until the workers have processed $1 events in all (timers fire
# outside wait_idle), polling from one session so as not to take the
# workers' CPU with new connections; prints the epoch when seen.
dt_psql -c "CREATE FUNCTION bench_wait_processed(target bigint, timeout interval DEFAULT '600s')
            RETURNS float8 LANGUAGE plpgsql AS \$\$
            DECLARE
                deadline timestamptz := clock_timestamp() + timeout;
            BEGIN
                WHILE (SELECT sum(events_processed) FROM digitaltwin.worker_stats()) < target LOOP
                    IF clock_timestamp() > deadline THEN
                        RAISE EXCEPTION 'processed % of % events', (SELECT sum(events_processed) FROM digitaltwin.worker_stats()), target;
                    END IF;
                    PERFORM pg_sleep(0.01);
                END LOOP;
                RETURN extract(epoch FROM clock_timestamp());
            END \$\$" >/dev/null
wait_processed() { dt_psql -At -c "SELECT bench_wait_processed($1)"; }

if part timers; then
echo "== timers: $TIMER_TWINS pending timers, arming cost, firing rate and lateness"
# the big part's million twins would blur the reload times
dt_psql -c "SELECT digitaltwin.drop_model(name, force => true) FROM digitaltwin.models WHERE name = 'gauge'" >/dev/null
cat >"$DT_DIR/timer_models.sql" <<'EOS'
-- hold: {"after": interval} arms a timer; the state never changes, so
-- that what arming adds to memory is the timers alone
CREATE FUNCTION hold(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'after' THEN
        PERFORM digitaltwin.set_timer('hold', (event->>'after')::interval);
    END IF;
    RETURN '{"v": 1}';
END $$;
SELECT digitaltwin.create_model('hold', 'hold(text,jsonb,jsonb)');
-- fire: {"at": epoch} arms a timer due at that moment; the fire records
-- how late the model was called (its due time is current_event().event_time)
CREATE FUNCTION fire(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event ? 'at' THEN
        PERFORM digitaltwin.set_timer('due', greatest(to_timestamp((event->>'at')::float8) - clock_timestamp(),
                                                      interval '0'));
        RETURN '{"armed": true}';
    END IF;
    RETURN jsonb_build_object('late_ms',
        extract(epoch FROM clock_timestamp() - (digitaltwin.current_event()).event_time) * 1000);
END $$;
SELECT digitaltwin.create_model('fire', 'fire(text,jsonb,jsonb)');
-- the plpgsql heart-rate model, plus a "no reading" timer re-armed by
-- every reading (due in an hour: none falls due during the measure)
DO $$
DECLARE
    d text := pg_get_functiondef('heart_rate_process(text,jsonb,jsonb)'::regprocedure);
BEGIN
    d := replace(d, 'heart_rate_process', 'heart_rate_timer_process');
    d := regexp_replace(d, E'\nBEGIN\n', E'\nBEGIN\n    PERFORM digitaltwin.set_timer(''silence'', ''1 hour'');\n');
    EXECUTE d;
END $$;
SELECT digitaltwin.create_model('heart_rate_timer', 'heart_rate_timer_process(text,jsonb,jsonb)',
                                'heart_rate_init(text)');
EOS
dt_psql -f "$DT_DIR/timer_models.sql" >/dev/null
dt_psql -At -c "SELECT prosrc FROM pg_proc WHERE proname = 'heart_rate_timer_process'" | grep -q "set_timer('silence'"

# anonymous resident memory of the workers (their local memory), kB
rss_anon_kb() {
	local p s=0
	for p in $(worker_pids); do
		s=$((s + $(awk '/^RssAnon/ { print $2 }' "/proc/$p/status")))
	done
	echo "$s"
}
# bytes of the workers' "digitaltwin timers" memory contexts (the index:
# the context and its hashes), from pg_log_backend_memory_contexts
timer_context_bytes() {
	local p from b total=0 i
	for p in $(worker_pids); do
		from=$(wc -l <"$DT_DIR/server.log")
		dt_psql -At -c "SELECT pg_log_backend_memory_contexts($p)" >/dev/null
		for i in $(seq 300); do
			tail -n +"$((from + 1))" "$DT_DIR/server.log" | grep -q "\[$p\].*Grand total" && break
			sleep 0.1
		done
		b=$(tail -n +"$((from + 1))" "$DT_DIR/server.log" | grep "\[$p\]" | grep "digitaltwin timers" |
			grep -o '[0-9]* total in' | awk '{ s += $1 } END { print s + 0 }')
		total=$((total + b))
	done
	echo "$total"
}
# restart; prints "twins timers ms" from the workers' "loaded" lines (ms:
# the slowest worker; they load in parallel)
restart_loaded() {
	local from i
	from=$(wc -l <"$DT_DIR/server.log")
	dt_as_user "$PGBIN/pg_ctl" -D "$DT_DIR/data" -l "$DT_DIR/server.log" -w restart -m fast >/dev/null
	for i in $(seq 1500); do
		[ "$(tail -n +"$((from + 1))" "$DT_DIR/server.log" | grep -c 'loaded [0-9]* twins and [0-9]* timers in')" -ge "$WORKERS" ] && break
		sleep 0.2
	done
	tail -n +"$((from + 1))" "$DT_DIR/server.log" | grep -o 'loaded [0-9]* twins and [0-9]* timers in [0-9.]* ms' |
		tail -n "$WORKERS" | awk '{ n += $2; t += $5; if ($8 > m) m = $8 } END { printf "%d %d %.0f\n", n, t, m }'
}
reloads() {	# median of REPEAT restarts: "twins timers ms"
	local i
	for i in $(seq "$REPEAT"); do restart_loaded; done >"$DT_DIR/reloads"
	echo "$(awk '{ print $1, $2; exit }' "$DT_DIR/reloads") $(awk '{ print $3 }' "$DT_DIR/reloads" | median)"
	echo "    restarts (twins timers ms): $(tr '\n' ';' <"$DT_DIR/reloads")" >&2
}

# 1. TIMER_TWINS pending timers: twins first, measured, then one timer each
dt_psql -c "INSERT INTO digitaltwin.events (model, twin_id, payload)
            SELECT 'hold', 'dev-' || i, '{}' FROM generate_series(1, $TIMER_TWINS) i" >/dev/null
wait_idle
read -r n_twins _ reload_a <<<"$(reloads)"
rss_a=$(rss_anon_kb); ctx_a=$(timer_context_bytes); shm_a=$(dt_psql -At -c "SELECT sum(memory_bytes) FROM digitaltwin.worker_stats()")
t0=$(now_ms)
dt_psql -c "INSERT INTO digitaltwin.events (model, twin_id, payload)
            SELECT 'hold', 'dev-' || i, '{\"after\": \"1 day\"}' FROM generate_series(1, $TIMER_TWINS) i" >/dev/null
wait_idle
t1=$(now_ms)
record "arm 1 timer per twin (hold)" "insert-select" "$TIMER_TWINS" $((t1 - t0)) "events re-arming no timer to one each"
shm_b=$(dt_psql -At -c "SELECT sum(memory_bytes) FROM digitaltwin.worker_stats()")
ctx_b=$(timer_context_bytes); rss_b=$(rss_anon_kb)
read -r n_timers disk_bytes <<<"$(dt_psql -At -F ' ' -c "SELECT count(*), pg_total_relation_size('digitaltwin.timer_state') FROM digitaltwin.timer_state")"
read -r _ n_loaded reload_b <<<"$(reloads)"
rss_d=$(rss_anon_kb); ctx_d=$(timer_context_bytes)
disk_per=$(awk "BEGIN{printf \"%.0f\", $disk_bytes / $n_timers}")
shm_per=$(awk "BEGIN{printf \"%.1f\", ($shm_b - $shm_a) / $n_timers}")
ctx_per=$(awk "BEGIN{printf \"%.0f\", ($ctx_d - $ctx_a) / $n_timers}")
ctx_live_per=$(awk "BEGIN{printf \"%.0f\", ($ctx_b - $ctx_a) / $n_timers}")
rss_per=$(awk "BEGIN{printf \"%.0f\", ($rss_d - $rss_a) * 1024 / $n_timers}")
rss_live_per=$(awk "BEGIN{printf \"%.0f\", ($rss_b - $rss_a) * 1024 / $n_timers}")
reload_per=$(awk "BEGIN{printf \"%.2f\", ($reload_b - $reload_a) * 1000 / $n_timers}")
echo "  $n_timers pending timers on $n_twins twins:"
echo "    disk: $disk_bytes bytes for timer_state and its index, $disk_per bytes per timer"
echo "    shared memory: $shm_a -> $shm_b bytes (digitaltwin.stats memory), $shm_per bytes per timer"
echo "    worker local memory, \"digitaltwin timers\" contexts: $ctx_a -> $ctx_b bytes armed live, $ctx_d after a reload: $ctx_per bytes per timer (live: $ctx_live_per)"
echo "    worker RssAnon: $rss_a kB -> $rss_b kB armed live, $rss_d kB after a reload: $rss_per bytes per timer (live: $rss_live_per)"
echo "    reload at restart (slowest worker, median of $REPEAT): $reload_a ms twins only, $reload_b ms with $n_loaded timers: +$reload_per us per timer"
echo "pending timers,disk,$n_timers,,,$disk_per bytes per timer ($disk_bytes bytes)" >>"$CSV"
echo "pending timers,shared memory,$n_timers,,,$shm_per bytes per timer ($shm_a -> $shm_b)" >>"$CSV"
echo "pending timers,worker memory,$n_timers,,,$ctx_per bytes per timer (timers context after reload; live $ctx_live_per); RssAnon $rss_per (live $rss_live_per)" >>"$CSV"
echo "pending timers,reload,$n_timers,$(awk "BEGIN{printf \"%.3f\", $reload_b / 1000}"),,$reload_a ms twins only -> $reload_b ms with timers (median of $REPEAT restarts)" >>"$CSV"
summary "disk per pending timer" "$disk_per B" "-" "-"
summary "shared memory per pending timer" "$shm_per B (stats memory $shm_a -> $shm_b)" "0 by design" "$(met "$shm_b == $shm_a")"
summary "worker local memory per pending timer" "$ctx_per B (RssAnon $rss_per B)" "-" "-"
summary "reload of $n_loaded timers at restart" "+$((reload_b - reload_a)) ms ($reload_a -> $reload_b)" "-" "-"
dt_psql -c "SELECT digitaltwin.drop_model('hold', force => true)" >/dev/null

# 2. arming cost: the plpgsql heart-rate model with and without a timer
# re-armed at every event, COPY end to end, taking turns
sed "s/^MODEL/heart_rate_timer/" "$DT_DIR/events.tsv" >"$DT_DIR/events_heart_rate_timer.tsv"
: >"$DT_DIR/arm_plain"; : >"$DT_DIR/arm_timer"; : >"$DT_DIR/arm_ratio"
for r in $(seq "$REPEAT"); do
	if [ $((r % 2)) = 1 ]; then
		a=$(copy_run heart_rate); b=$(copy_run heart_rate_timer)
	else
		b=$(copy_run heart_rate_timer); a=$(copy_run heart_rate)
	fi
	echo "$a" >>"$DT_DIR/arm_plain"; echo "$b" >>"$DT_DIR/arm_timer"
	awk "BEGIN{printf \"%.3f\n\", $a / $b}" >>"$DT_DIR/arm_ratio"
done
[ "$(dt_psql -At -c "SELECT count(*) FROM digitaltwin.timers WHERE model = 'heart_rate_timer'")" = "$TWINS" ]
note="median of $REPEAT, taking turns"
record "digitaltwin heart_rate" "copy" "$EVENTS" "$(median <"$DT_DIR/arm_plain")" "$note"
record "heart_rate + set_timer" "copy" "$EVENTS" "$(median <"$DT_DIR/arm_timer")" "$note; set_timer at every event"
arm_ratio=$(median <"$DT_DIR/arm_ratio")
echo "    with timer / without, per round: $(tr '\n' ' ' <"$DT_DIR/arm_ratio")"
summary "arming cost: plpgsql model + set_timer, COPY" "$(awk "BEGIN{printf \"%.0f%% slower (ratio %.2f)\", (1 - $arm_ratio) * 100, $arm_ratio}")" "<= 20% slower" "$(met "$arm_ratio >= 0.8")"
dt_psql -c "SELECT digitaltwin.drop_model('heart_rate_timer', force => true)" >/dev/null

# 3. firing: FIRE_TIMERS timers due at the same moment (one per twin),
# then LATE_RATE due per second for LATE_SECONDS
arm_at() {	# prefix count "at expression of i"; returns when armed
	dt_psql -c "INSERT INTO digitaltwin.events (model, twin_id, payload)
	            SELECT 'fire', '$1-' || i, jsonb_build_object('at', $3)
	            FROM generate_series(1, $2) i" >/dev/null
	wait_idle
	[ "$(dt_psql -At -c "SELECT count(*) FROM digitaltwin.timers WHERE model = 'fire' AND twin_id LIKE '$1-%'")" = "$2" ]
}
sleep_until() { local d; d=$(awk "BEGIN{ d = $1 - $(now_s); print (d > 0 ? d : 0) }"); sleep "$d"; }
: >"$DT_DIR/fire_rates"
for r in $(seq "$REPEAT"); do
	at=$(awk "BEGIN{printf \"%.3f\", $(now_s) + $FIRE_LEAD}")
	arm_at burst "$FIRE_TIMERS" "$at"
	left=$(awk "BEGIN{printf \"%.1f\", $at - $(now_s)}")
	base=$(processed_total)
	sleep_until "$at"
	t1=$(wait_processed $((base + FIRE_TIMERS)))
	secs=$(awk "BEGIN{printf \"%.3f\", $t1 - $at}")
	last=$(dt_psql -At -c "SELECT round(max((state->>'late_ms')::numeric)) FROM digitaltwin.twins WHERE model = 'fire' AND twin_id LIKE 'burst-%'")
	rate=$(awk "BEGIN{printf \"%.0f\", $FIRE_TIMERS / $secs}")
	echo "$rate" >>"$DT_DIR/fire_rates"
	echo "    round $r: $FIRE_TIMERS timers due at once (armed ${left} s ahead): all fired and committed after $secs s, $rate timers/s (last model call at +$last ms)"
done
fire_rate=$(median <"$DT_DIR/fire_rates")
echo "timer fires,due at once,$FIRE_TIMERS,,$fire_rate,median of $REPEAT: $(tr '\n' ' ' <"$DT_DIR/fire_rates")" >>"$CSV"
summary "firing: $FIRE_TIMERS timers due at once" "$fire_rate timers/s" ">= 50,000/s" "$(met "$fire_rate >= 50000")"

late_n=$((LATE_RATE * LATE_SECONDS))
: >"$DT_DIR/late"
for r in $(seq "$REPEAT"); do
	at=$(awk "BEGIN{printf \"%.3f\", $(now_s) + $FIRE_LEAD}")
	arm_at late "$late_n" "$at + (i - 1) / $LATE_RATE.0"
	base=$(processed_total)
	sleep_until "$at"
	wait_processed $((base + late_n)) >/dev/null
	l=$(dt_psql -At -F ' ' -c "SELECT count(*),
	        round(percentile_cont(0.5) WITHIN GROUP (ORDER BY l)::numeric, 1),
	        round(percentile_cont(0.99) WITHIN GROUP (ORDER BY l)::numeric, 1),
	        round(max(l)::numeric, 1)
	    FROM (SELECT (state->>'late_ms')::float8 AS l FROM digitaltwin.twins
	          WHERE model = 'fire' AND twin_id LIKE 'late-%' AND state ? 'late_ms') s")
	echo "$l" >>"$DT_DIR/late"
	read -r n p50 p99 mx <<<"$l"
	echo "    round $r: $n timers due at $LATE_RATE/s over $LATE_SECONDS s, due -> model call: p50 $p50 ms p99 $p99 ms max $mx ms"
done
late_p50=$(awk '{ print $2 }' "$DT_DIR/late" | median)
late_p99=$(awk '{ print $3 }' "$DT_DIR/late" | median)
late_max=$(awk '{ print $4 }' "$DT_DIR/late" | median)
echo "timer lateness,$LATE_RATE due/s,$late_n,,,median of $REPEAT: p50 $late_p50 ms p99 $late_p99 ms max $late_max ms" >>"$CSV"
summary "lateness at $LATE_RATE due/s (due -> model call)" "p50 $late_p50 ms, p99 $late_p99 ms, max $late_max ms" "p99 <= 50 ms" "$(met "$late_p99 <= 50")"
dt_psql -c "SELECT digitaltwin.drop_model('fire', force => true)" >/dev/null

fi

if part messages; then
echo "== messages: car -> region (two hops) against the cars alone (one hop), COPY end to end"
cat >"$DT_DIR/message_models.sql" <<'EOS'
-- the same car, alone and reporting to its region; the region sums
CREATE FUNCTION car_solo(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1, 'speed', event->'speed');
END $$;
CREATE FUNCTION car(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM digitaltwin.send('region', event->>'region',
                             jsonb_build_object('car', twin_id, 'speed', event->'speed'));
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1, 'speed', event->'speed');
END $$;
CREATE FUNCTION region(twin_id text, state jsonb, event jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                              'sum', coalesce((state->>'sum')::bigint, 0) + (event->>'speed')::int);
END $$;
SELECT digitaltwin.create_model('car_solo', 'car_solo(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('car', 'car(text,jsonb,jsonb)');
SELECT digitaltwin.create_model('region', 'region(text,jsonb,jsonb)');
EOS
dt_psql -f "$DT_DIR/message_models.sql" >/dev/null
dt_psql -c "COPY (SELECT 'MODEL', 'car-' || c, jsonb_build_object('speed', 50 + i % 90, 'region', 'region-' || c % $REGIONS)
                  FROM (SELECT i, 1 + (i * 7919) % $TWINS AS c FROM generate_series(1, $EVENTS) i) s)
            TO '$DT_DIR/cars.tsv'"
for m in car car_solo; do
	sed "s/^MODEL/$m/" "$DT_DIR/cars.tsv" >"$DT_DIR/events_$m.tsv"
done
region_n() { dt_psql -At -c "SELECT coalesce(sum((state->>'n')::bigint), 0) FROM digitaltwin.twins WHERE model = 'region'"; }
: >"$DT_DIR/hop1"; : >"$DT_DIR/hop2"; : >"$DT_DIR/hop_ratio"
for r in $(seq "$REPEAT"); do
	if [ $((r % 2)) = 1 ]; then
		a=$(copy_run car_solo); n0=$(region_n); b=$(copy_run car)
	else
		n0=$(region_n); b=$(copy_run car); a=$(copy_run car_solo)
	fi
	n1=$(region_n)
	# wait_idle waits for the messages: all there when it returned
	[ $((n1 - n0)) = "$EVENTS" ] || { echo "    region twins got $((n1 - n0)) of $EVENTS messages after wait_idle" >&2; exit 1; }
	echo "$a" >>"$DT_DIR/hop1"; echo "$b" >>"$DT_DIR/hop2"
	awk "BEGIN{printf \"%.3f\n\", $a / $b}" >>"$DT_DIR/hop_ratio"
done
note="median of $REPEAT, taking turns"
record "cars alone (one hop)" "copy" "$EVENTS" "$(median <"$DT_DIR/hop1")" "$note"
record "car -> region (two hops)" "copy" "$EVENTS" "$(median <"$DT_DIR/hop2")" "$note; one message per event, $REGIONS regions"
hop_ratio=$(median <"$DT_DIR/hop_ratio")
echo "    two hops / one hop, per round: $(tr '\n' ' ' <"$DT_DIR/hop_ratio")"
summary "two-hop chain (car -> region) / one hop" "$hop_ratio" ">= 0.5" "$(met "$hop_ratio >= 0.5")"
for m in car car_solo region; do dt_psql -c "SELECT digitaltwin.drop_model('$m', force => true)" >/dev/null; done

fi

if part outbox; then
settle
echo "== outbox: event commit -> gateway has the command, $OUTBOX_RATE commands/s"
dt_psql -c "CREATE FUNCTION cmd(twin_id text, state jsonb, event jsonb) RETURNS jsonb
            LANGUAGE plpgsql AS \$\$
            BEGIN
                PERFORM digitaltwin.send_to_source(jsonb_build_object('seq', event->'seq'));
                RETURN jsonb_build_object('seq', event->'seq');
            END \$\$;
            SELECT digitaltwin.create_model('cmd', 'cmd(text,jsonb,jsonb)')" >/dev/null
gcc -O2 -o "$DT_DIR/outbox_latency" "$ROOT/bench/outbox_latency.c" \
	-I"$("$PG_CONFIG" --includedir)" -L"$("$PG_CONFIG" --libdir)" -lpq
: >"$DT_DIR/outbox"
for r in $(seq "$REPEAT"); do
	out=$("$DT_DIR/outbox_latency" "$DT_CONN" cmd "$OUTBOX_RATE" "$OUTBOX_COUNT" "$OUTBOX_SENDERS") || true
	echo "    round $r: $out"
	# p50, p99 and max from commit acknowledged to the gateway having it
	sed -E 's/.*commit acknowledged to gateway has it: p50 ([0-9.]+) ms p90 [0-9.]+ ms p99 ([0-9.]+) ms max ([0-9.]+) ms.*/\1 \2 \3/' <<<"$out" >>"$DT_DIR/outbox"
done
ob_p50=$(awk '{ print $1 }' "$DT_DIR/outbox" | median)
ob_p99=$(awk '{ print $2 }' "$DT_DIR/outbox" | median)
ob_max=$(awk '{ print $3 }' "$DT_DIR/outbox" | median)
echo "outbox latency,$OUTBOX_RATE commands/s,$OUTBOX_COUNT,,,median of $REPEAT: p50 $ob_p50 ms p99 $ob_p99 ms max $ob_max ms (commit acknowledged -> take_outbox returned it)" >>"$CSV"
summary "outbox at $OUTBOX_RATE/s: commit -> gateway has it" "p50 $ob_p50 ms, p99 $ob_p99 ms, max $ob_max ms" "p99 <= 10 ms" "$(met "$ob_p99 <= 10")"
wait_idle
dt_psql -c "SELECT digitaltwin.drop_model('cmd', force => true)" >/dev/null

fi

# Version 1.8: what the event log and the state history cost COPY end to
# end (C model), each against the same run without them, rounds taking
# turns; then twins_as_of() over HISTORY_TWINS twins.
if part history; then
settle
echo "== event log and history: COPY end to end, C model ($EVENTS events, median of $REPEAT interleaved rounds)"
hist_mode() {
	local log=NULL hist=NULL
	[ "$1" = log ] && log="'1 day'"
	[ "$1" = history ] && hist="'1 day'"
	dt_psql -c "SELECT digitaltwin.set_event_log('heart_rate_c', $log)" \
		-c "SELECT digitaltwin.set_history('heart_rate_c', $hist)" >/dev/null
}
declare -A HT=()
for r in $(seq "$REPEAT"); do
	for mode in none log history; do
		reset_all
		dt_psql -c "TRUNCATE digitaltwin.event_log, digitaltwin.state_history" >/dev/null
		hist_mode "$mode"
		t0=$(now_ms)
		dt_psql -c "COPY digitaltwin.events (model, twin_id, payload) FROM '$DT_DIR/events_heart_rate_c.tsv'" >/dev/null
		wait_idle
		t1=$(now_ms)
		HT[$mode]+="$((t1 - t0)) "
	done
done
echo "    per round (ms): none ${HT[none]}; event log ${HT[log]}; history ${HT[history]}"
# a rehearsal of the C model over the log of one more round
reset_all
dt_psql -c "TRUNCATE digitaltwin.event_log, digitaltwin.state_history" >/dev/null
hist_mode log
dt_psql -c "COPY digitaltwin.events (model, twin_id, payload) FROM '$DT_DIR/events_heart_rate_c.tsv'" >/dev/null
wait_idle
hist_mode none
t0=$(now_ms)
dt_psql -At -c "SELECT digitaltwin.rehearse('heart_rate_c', process, init) FROM digitaltwin.models WHERE name = 'heart_rate_c'" >/dev/null
t1=$(now_ms)
record "rehearse(), heart_rate_c" "event log" "$EVENTS" $((t1 - t0)) "the same events, replayed in a sandbox"
rehearse_ms=$((t1 - t0))
hmed() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'; }
record "digitaltwin heart_rate_c" copy "$EVENTS" "$(hmed "${HT[none]}")" "median of $REPEAT; no event log, no history"
record "heart_rate_c + event log" copy "$EVENTS" "$(hmed "${HT[log]}")" "median of $REPEAT; set_event_log"
record "heart_rate_c + history" copy "$EVENTS" "$(hmed "${HT[history]}")" "median of $REPEAT; set_history"
log_cost=$(awk "BEGIN{printf \"%.2f\", 1 - $(hmed "${HT[none]}") / $(hmed "${HT[log]}")}")
hist_cost=$(awk "BEGIN{printf \"%.2f\", 1 - $(hmed "${HT[none]}") / $(hmed "${HT[history]}")}")
summary "event log: COPY e2e throughput lost" "$log_cost" "<= 0.25" "$(met "$log_cost <= 0.25")"
summary "history: COPY e2e throughput lost" "$hist_cost" "<= 0.25" "$(met "$hist_cost <= 0.25")"
rehearse_ratio=$(awk "BEGIN{printf \"%.2f\", $(hmed "${HT[none]}") / $rehearse_ms}")
summary "rehearsal rate / live COPY e2e rate" "$rehearse_ratio" ">= 0.5" "$(met "$rehearse_ratio >= 0.5")"

HISTORY_TWINS=${HISTORY_TWINS:-$BIG_TWINS}
dt_psql -c "CREATE FUNCTION hgauge(twin_id text, state jsonb, event jsonb) RETURNS jsonb
            LANGUAGE sql AS \$\$ SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                                                        'last', event->'bpm') \$\$;
            SELECT digitaltwin.create_model('hgauge', 'hgauge(text,jsonb,jsonb)');
            SELECT digitaltwin.set_history('hgauge', '1 day')" >/dev/null
for round in 1 2; do
	dt_psql -c "INSERT INTO digitaltwin.events (model, twin_id, payload)
	            SELECT 'hgauge', 'device-' || i, jsonb_build_object('bpm', $round * 100 + i % 70)
	            FROM generate_series(1, $HISTORY_TWINS) i" >/dev/null
	wait_idle
	[ "$round" = 1 ] && mid=$(dt_psql -At -c "SELECT clock_timestamp()")
done
dt_psql -c "VACUUM ANALYZE digitaltwin.state_history" >/dev/null
for at in "'$mid'" "clock_timestamp()"; do
	t0=$(now_ms)
	n=$(dt_psql -At -c "SELECT count(*) FROM digitaltwin.twins_as_of($at) WHERE model = 'hgauge'")
	t1=$(now_ms)
	echo "  twins_as_of($at): $n twins in $((t1 - t0)) ms ($((2 * HISTORY_TWINS)) history rows)"
	echo "twins_as_of,$at,$n,$(awk "BEGIN{printf \"%.3f\", ($t1 - $t0)/1000}"),,$((2 * HISTORY_TWINS)) history rows" >>"$CSV"
	[ "$at" = "'$mid'" ] && asof_ms=$((t1 - t0))
done
# the SQL definition it replaced (version 1.8), on the same rows, as the peer
dt_psql -c "CREATE FUNCTION twins_as_of_sql(at timestamptz)
            RETURNS TABLE (model text, twin_id text, state jsonb, event_count bigint, updated_at timestamptz)
            LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS \$\$
                SELECT h.model, h.twin_id, h.state, h.event_count, h.valid_from
                FROM (SELECT DISTINCT ON (s.model_id, s.twin_id) s.* FROM digitaltwin.state_history s
                      WHERE s.valid_from <= at ORDER BY s.model_id, s.twin_id, s.valid_from DESC) h
                WHERE h.state IS NOT NULL \$\$" >/dev/null
t0=$(now_ms)
n=$(dt_psql -At -c "SELECT count(*) FROM twins_as_of_sql('$mid') WHERE model = 'hgauge'")
t1=$(now_ms)
echo "  the SQL definition of 1.8, as of the middle: $n twins in $((t1 - t0)) ms"
echo "twins_as_of (SQL of 1.8),'$mid',$n,$(awk "BEGIN{printf \"%.3f\", ($t1 - $t0)/1000}"),,$((2 * HISTORY_TWINS)) history rows" >>"$CSV"
dt_psql -c "DROP FUNCTION twins_as_of_sql(timestamptz)" >/dev/null
summary "twins_as_of() over $HISTORY_TWINS twins" "$asof_ms ms (SQL of 1.8: $((t1 - t0)) ms)" "< 2000 ms" "$(met "$asof_ms < 2000")"
dt_psql -c "SELECT digitaltwin.drop_model('hgauge', force => true)" \
	-c "SELECT digitaltwin.set_history(name, NULL) FROM digitaltwin.models WHERE history_keep IS NOT NULL" >/dev/null
fi

if [ ${#SUMMARY[@]} -gt 0 ]; then
echo "== timers, messages, outbox (medians of $REPEAT)"
printf '  %-46s %-44s %-14s %s\n' measure figure target met
printf '%s\n' "${SUMMARY[@]}"
fi

echo "== ratios"
r() {
	if [ -n "${RESULT[$1]:-}" ] && [ -n "${RESULT[$2]:-}" ]; then
		awk "BEGIN{printf \"%.2f\", ${RESULT[$1]}/${RESULT[$2]}}"
	else
		echo "n/a"
	fi
}
echo "  against the heap (the physical limit; issue 15):"
echo "    COPY into digitaltwin.events alone / heap COPY:   $(r 'digitaltwin.events, ingest only|copy' 'heap insert (limit)|copy')  (target >= 0.90)"
echo "    COPY end to end, C model / heap COPY:             $(r 'digitaltwin heart_rate_c|copy' 'heap insert (limit)|copy')  (target >= 0.50)"
echo "    COPY, plpgsql model / trigger peer:               $(r 'digitaltwin heart_rate|copy' 'trigger peer|copy')  (target >= 5)"
echo "    multi-row INSERT, C model / heap multi-row:       $(r 'digitaltwin heart_rate_c|multi' 'heap insert (limit)|multi')  (target >= 0.75)"
if [ -n "${RATIO_HEAP[heap]:-}" ]; then
echo "    single-row INSERT, C model / heap single-row:     ${RATIO_HEAP[heart_rate_c]}  (target >= 0.90; medians of the per-round ratios)"
fi
echo "  against the queue table (raw: identity primary key):"
echo "    heap COPY / queue table COPY:                     $(r 'heap insert (limit)|copy' 'raw insert (queue table)|copy')"
echo "    C model COPY / queue table COPY:                  $(r 'digitaltwin heart_rate_c|copy' 'raw insert (queue table)|copy')"
echo "    C model multi-row / queue table multi-row:        $(r 'digitaltwin heart_rate_c|multi' 'raw insert (queue table)|multi')"
if [ -n "${RATIO[raw]:-}" ]; then
echo "    single-row / queue table single-row, medians of the per-round ratios:"
echo "      C model ${RATIO[heart_rate_c]}, plpgsql model ${RATIO[heart_rate]}," \
	"C model with batch_delay $SINGLE_DELAY ${RATIO[heart_rate_c_delay]}, trigger peer ${RATIO[peer]}"
fi
# issue 15's table, each line measured in this run (n/a: its part did not run)
i15() {	# measure figure target condition
	local ok=n/a
	[ "$2" != n/a ] && [ -n "$2" ] && ok=$(met "$4")
	printf '    %-60s %-10s %-12s %s\n' "$1" "$2" "$3" "$ok"
}
val() { [ -n "$1" ] && echo "$1" || echo n/a; }
echo "  issue 15 targets (this run):"
printf '    %-60s %-10s %-12s %s\n' measure figure target met
h_copy=$(r 'digitaltwin.events, ingest only|copy' 'heap insert (limit)|copy')
i15 "COPY into digitaltwin.events alone / heap COPY" "$h_copy" ">= 0.90" "$h_copy >= 0.90"
h_e2e=$(r 'digitaltwin heart_rate_c|copy' 'heap insert (limit)|copy')
i15 "COPY end to end, C model / heap COPY" "$h_e2e" ">= 0.50" "$h_e2e >= 0.50"
p_peer=$(r 'digitaltwin heart_rate|copy' 'trigger peer|copy')
i15 "COPY, plpgsql model / trigger peer" "$p_peer" ">= 5" "$p_peer >= 5"
h_multi=$(r 'digitaltwin heart_rate_c|multi' 'heap insert (limit)|multi')
i15 "multi-row INSERT, C model / heap multi-row" "$h_multi" ">= 0.75" "$h_multi >= 0.75"
h_single=$(val "${RATIO_HEAP[heart_rate_c]:-}")
i15 "single-row INSERT (8 clients), C model / heap single-row" "$h_single" ">= 0.90" "$h_single >= 0.90"
lat=$(val "${LAT_P99:-}")
i15 "alert latency p99 at 10k events/s (ms)" "$lat" "<= 5" "$lat <= 5"
i15 "  the probe INSERT's own commit round trip, p99 (ms)" "$(val "${LAT_FLOOR:-}")" "(the floor)" "1"
agg=$(val "${AGG_MS:-}")
i15 "aggregate over every state, $BIG_TWINS twins, loaded (ms)" "$agg" "<= 500" "$agg <= 500"
rec=$(val "${RECOVERY_MS:-}")
i15 "recovery of $BIG_TWINS twins after a restart (ms)" "$rec" "<= 2000" "$rec <= 2000"
mem=$(val "${MEM_BEYOND:-}")
i15 "shared memory per twin beyond the state (bytes)" "$mem" "<= 64" "$mem <= 64"
drop=n/a
[ -n "${AGG_BASE:-}" ] && drop=$(awk "BEGIN{printf \"%.2f\", $AGG_DURING / $AGG_BASE}")
i15 "worker throughput while that aggregate runs / alone" "$drop" "no drop" "$drop >= 0.95"
if [ -n "${CPU_ALONE:-}" ]; then
	echo "      alone:     $CPU_ALONE"
	echo "      meanwhile: $CPU_DURING"
fi
echo "CSV: $CSV"
