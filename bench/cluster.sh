#!/bin/bash
# digitaltwin benchmark, scale-out (issue 18): ingestion into a cluster of
# 1, 2 and 3 nodes on this machine, each node its own instance on a Unix
# socket, plus a coordinator instance routing through
# digitaltwin.cluster_events (postgres_fdw foreign partitions).  For each
# size, the same events (run.sh's heart-rate readings; the C model,
# heart_rate_c, on every node):
#
#   local    multi-row INSERTs ($ROWS rows each, MULTI_CLIENTS clients)
#            straight into one node's digitaltwin.events, of the twins that
#            node owns, one node at a time; their sum is what N separate
#            machines would ingest directly; then all nodes at once, which
#            is what this machine gives; and COPY into each node, one at a
#            time (the baseline of the COPY paths)
#   routed   through the coordinator: multi-row INSERT ($ROWS rows,
#            MULTI_CLIENTS clients), single-row INSERT (CLIENTS clients,
#            SINGLE_EVENTS events), COPY into digitaltwin.cluster_events,
#            and COPY into digitaltwin.cluster_ingest (version 1.11: batched
#            per node) when the coordinator has it, "n/a" when not
#
# Each is measured twice: "ingest" until the statements returned (the
# nodes' workers run meanwhile), "e2e" until every event is processed
# (wait_idle on the node, cluster_wait_idle through the coordinator).
# Efficiency = routed rate / sum of the nodes' local multi-row rates (and
# for the COPY paths / sum of the local COPY rates); scaling = routed rate
# at N nodes / at 1 node.  Every instance shares this machine's cores: the
# sum of local rates measured one node at a time is what separate machines
# would give, not what N nodes here can give together (the "all at once"
# row is that).  Each run's CPU use of the whole machine (all processes,
# /proc/stat) is in the CSV.
#
#   bash bench/cluster.sh                 (or: make bench-cluster)
#   DT_PGTREE=/tmp/pgtree bash bench/cluster.sh    (a private PG tree)
#
# Parameters (environment): EVENTS (200000), TWINS (10000), NODES (the
# cluster sizes, "1 2 3"), PARTITIONS (cluster_setup(), 32), WORKERS (per
# node, 2), BATCH (50000), MULTI_CLIENTS (2), CLIENTS (single-row, 8),
# SINGLE_EVENTS (EVENTS/10), REPEAT (runs of each measure, median
# reported; 1), SHARED_BUFFERS (per instance, 256MB), EXTRA_CONF (lines
# added to every postgresql.conf).  Output: the runs as they go, a table
# side by side, and CSV in bench/out/cluster.csv.
set -euo pipefail
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/deps.sh"
EVENTS=${EVENTS:-200000}
TWINS=${TWINS:-10000}
NODES=${NODES:-1 2 3}
PARTITIONS=${PARTITIONS:-32}
WORKERS=${WORKERS:-2}
BATCH=${BATCH:-50000}
MULTI_CLIENTS=${MULTI_CLIENTS:-2}
CLIENTS=${CLIENTS:-8}
SINGLE_EVENTS=${SINGLE_EVENTS:-$((EVENTS / 10))}
REPEAT=${REPEAT:-1}
ROWS=100                        # rows per multi-row INSERT
MODEL=heart_rate_c

dt_install_deps
dt_build_install "$ROOT"
BASE=$(mktemp -d /tmp/digitaltwin-cluster.XXXXXX)
chown "$(dt_run_user)" "$BASE"
declare -A INST=()              # instance name -> its directory (socket there)
stop_all() {
	local n
	for n in "${!INST[@]}"; do
		DT_DIR=${INST[$n]} dt_instance_stop
		unset "INST[$n]"
	done
}
trap 'stop_all; rm -rf "$BASE"' EXIT

OUT="$ROOT/bench/out"
mkdir -p "$OUT"
CSV="$OUT/cluster.csv"
echo "nodes,measure,events,ingest_seconds,ingest_per_second,e2e_seconds,e2e_per_second,cpu_ingest,cpu_e2e,note" >"$CSV"

CONF="digitaltwin.batch_size = $BATCH
shared_buffers = '${SHARED_BUFFERS:-256MB}'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
synchronous_commit = on
${EXTRA_CONF:-}"

start_instance() {	# name, extra postgresql.conf lines
	dt_instance_start "$BASE/$1" "$CONF
$2"
	INST[$1]=$DT_DIR
	DT_DIR=
}
q() { local n=$1; shift; DT_DIR=${INST[$n]} dt_psql "$@"; }
bench_pgbench() {	# instance, pgbench options
	local n=$1; shift
	"$PGBIN/pgbench" -n -h "${INST[$n]}" -p 5432 -U postgres "$@" postgres >"$BASE/pgbench_$n.out" 2>&1 ||
		{ cat "$BASE/pgbench_$n.out" >&2; return 1; }
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# busy and total jiffies of the whole machine
cpu_now() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
cpu_pct() {	# "busy total" at start, at end: the machine's use in %
	local a=($1) b=($2)
	awk "BEGIN { d = ${b[1]} - ${a[1]}; printf \"%.0f\", (d > 0 ? 100 * (${b[0]} - ${a[0]}) / d : 0) }"
}
med() { sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'; }

not_idle() { echo "$1: not idle after 600 s" >&2; return 1; }
wait_node() { [ "$(q "$1" -At -c "SELECT digitaltwin.wait_idle('600s')")" = t ] || not_idle "$1"; }
wait_nodes() { local n; for n in $CUR_NODES; do wait_node "$n"; done; }
wait_cluster() { [ "$(q coord -At -c "SELECT digitaltwin.cluster_wait_idle('600s')")" = t ] || not_idle cluster; }

# Before each run: the alerts of the last go, the twins' table is vacuumed
# (as run.sh does), the slices start again at the first.
reset_all() {
	local n
	for n in $CUR_NODES; do
		q "$n" -c "TRUNCATE digitaltwin.alerts" -c "VACUUM ANALYZE digitaltwin.twin_state" \
			-c "SELECT setval('slice', 1, false)" >/dev/null
	done
	q coord -c "SELECT setval('slice', 1, false)" >/dev/null
}

# One run: reset, the ingestion command, then the waiter; prints
# "ingest_ms e2e_ms cpu_ingest cpu_e2e".
run_once() {	# waiter, command...
	local waiter=$1 t0 t1 t2 c0 c1 c2
	shift
	reset_all
	c0=$(cpu_now); t0=$(now_ms)
	"$@" >/dev/null
	t1=$(now_ms); c1=$(cpu_now)
	$waiter
	t2=$(now_ms); c2=$(cpu_now)
	echo "$((t1 - t0)) $((t2 - t0)) $(cpu_pct "$c0" "$c1") $(cpu_pct "$c0" "$c2")"
}
# REPEAT runs; the median of each column
timed() {
	local out i
	out=$(for i in $(seq "$REPEAT"); do run_once "$@"; done)
	echo "$(awk '{ print $1 }' <<<"$out" | med) $(awk '{ print $2 }' <<<"$out" | med)" \
		"$(awk '{ print $3 }' <<<"$out" | med) $(awk '{ print $4 }' <<<"$out" | med)"
}

declare -A ING E2E               # "nodes|measure" -> events per second
SENT=0                          # events sent to the current cluster
record() {	# measure, events, "ingest_ms e2e_ms cpu cpu", note
	local t=($3) ing e2e
	ing=$(($2 * 1000 / (t[0] > 0 ? t[0] : 1)))
	e2e=$(($2 * 1000 / (t[1] > 0 ? t[1] : 1)))
	ING["$N|$1"]=$ing
	E2E["$N|$1"]=$e2e
	echo "$N,$1,$2,$(awk "BEGIN{printf \"%.3f\", ${t[0]}/1000}"),$ing,$(awk "BEGIN{printf \"%.3f\", ${t[1]}/1000}"),$e2e,${t[2]},${t[3]},\"${4:-}\"" >>"$CSV"
	printf '  %-34s %7d events  ingest %7.2f s %8d ev/s  e2e %7.2f s %8d ev/s  cpu %3s%%/%3s%%\n' \
		"$1" "$2" "$(awk "BEGIN{print ${t[0]}/1000}")" "$ing" "$(awk "BEGIN{print ${t[1]}/1000}")" "$e2e" "${t[2]}" "${t[3]}"
}

# pgbench scripts.  Multi-row: each transaction takes the next slice of
# $ROWS events of table ev (the same events, in the same order, on every
# path) by a sequence; single-row: a random twin, as in run.sh.
cat >"$BASE/multi_local.sql" <<EOS
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT model, twin_id, payload FROM ev WHERE (seq - 1) / $ROWS = (SELECT nextval('slice') - 1);
EOS
sed 's/digitaltwin\.events/digitaltwin.cluster_events/' "$BASE/multi_local.sql" >"$BASE/multi_routed.sql"
sed 's/digitaltwin\.events/digitaltwin.cluster_ingest/' "$BASE/multi_local.sql" >"$BASE/multi_ingest.sql"
cat >"$BASE/single_routed.sql" <<EOS
\set t random(1, $TWINS)
\set b random(60, 130)
INSERT INTO digitaltwin.cluster_events (model, twin_id, payload) VALUES ('$MODEL', 'patient-' || :t, jsonb_build_object('bpm', :b));
EOS

multi() {	# instance, script, events
	local slices=$((($3 + ROWS - 1) / ROWS))
	bench_pgbench "$1" -c "$MULTI_CLIENTS" -j "$MULTI_CLIENTS" \
		-t $(((slices + MULTI_CLIENTS - 1) / MULTI_CLIENTS)) -f "$BASE/$2"
}
local_multi() { multi "$1" multi_local.sql "${NODE_EVENTS[$1]}"; }
local_all() {
	local n pids=()
	for n in $CUR_NODES; do
		local_multi "$n" & pids+=($!)
	done
	for n in "${pids[@]}"; do wait "$n"; done
}
local_copy() { q "$1" -c "COPY digitaltwin.events (model, twin_id, payload) FROM '$BASE/events_$1.tsv'"; }
routed_multi() { multi coord multi_routed.sql "$EVENTS"; }
ingest_multi() { multi coord multi_ingest.sql "$EVENTS"; }
routed_single() {
	bench_pgbench coord -c "$CLIENTS" -j 2 -t $((SINGLE_EVENTS / CLIENTS)) -f "$BASE/single_routed.sql"
}
routed_copy() { q coord -c "COPY digitaltwin.$1 (model, twin_id, payload) FROM '$BASE/events.tsv'"; }

# The cluster of N nodes: a coordinator (one worker, idle: CREATE EXTENSION
# needs a served database; its queue stays empty) and nodes n1..nN, each
# with the heart-rate models and the patients' records.
setup_cluster() {
	local i n
	CUR_NODES=
	start_instance coord "digitaltwin.workers = 1"
	for i in $(seq "$N"); do
		n=n$i
		CUR_NODES+="$n "
		start_instance "$n" "digitaltwin.workers = $WORKERS
max_prepared_transactions = 10"
		q "$n" -c "SET client_min_messages = warning" -f "$ROOT/examples/heart_rate.sql" >/dev/null
		q "$n" -c "CREATE EXTENSION digitaltwin_heart_rate" \
			-c "INSERT INTO patients (patient_id, name, age, max_heart_rate)
			    SELECT 'patient-' || i, 'Patient ' || i, 20 + i % 60, CASE WHEN i % 3 = 0 THEN 140 END
			    FROM generate_series(51, $TWINS) i ON CONFLICT DO NOTHING" >/dev/null
	done
	q coord -c "CREATE EXTENSION digitaltwin" >/dev/null
	for n in $CUR_NODES; do
		q coord -c "SET client_min_messages = warning" \
			-c "SELECT digitaltwin.cluster_add_node('$n', '${INST[$n]}', 5432, 'postgres')" >/dev/null
	done
	q coord -c "SELECT digitaltwin.cluster_setup($PARTITIONS)" >/dev/null

	# The readings of run.sh, each with the node that owns its twin; a COPY
	# file of them all and one per node.
	q coord -c "CREATE TABLE ev (seq bigint PRIMARY KEY, model text, twin_id text, payload jsonb, node text)" \
		-c "INSERT INTO ev
		    SELECT e.i, '$MODEL', e.twin, e.payload, m.node
		    FROM (SELECT i, 'patient-' || (1 + (i * 7919) % $TWINS) AS twin,
		                 jsonb_build_object('bpm', 60 + (i * 31) % 70 + CASE WHEN i % 97 = 0 THEN 80 ELSE 0 END) AS payload
		          FROM generate_series(1, $EVENTS) i) e
		    JOIN digitaltwin.cluster_map m ON m.partition = digitaltwin.cluster_partition_of(e.twin, $PARTITIONS)" \
		-c "CREATE INDEX ev_slice ON ev (((seq - 1) / $ROWS))" -c "ANALYZE ev" \
		-c "CREATE SEQUENCE slice" \
		-c "COPY (SELECT model, twin_id, payload FROM ev ORDER BY seq) TO '$BASE/events.tsv'" >/dev/null
	for n in $CUR_NODES; do
		q coord -c "COPY (SELECT model, twin_id, payload FROM ev WHERE node = '$n' ORDER BY seq) TO '$BASE/events_$n.tsv'"
		q "$n" -c "CREATE TABLE ev (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, model text, twin_id text, payload jsonb)" \
			-c "COPY ev (model, twin_id, payload) FROM '$BASE/events_$n.tsv'" \
			-c "CREATE INDEX ev_slice ON ev (((seq - 1) / $ROWS))" -c "ANALYZE ev" \
			-c "CREATE SEQUENCE slice" >/dev/null
		NODE_EVENTS[$n]=$(q "$n" -At -c "SELECT count(*) FROM ev")
	done

	# every twin exists before the first measure (init reads the records)
	q coord -c "INSERT INTO digitaltwin.cluster_events (model, twin_id, payload)
	            SELECT '$MODEL', 'patient-' || i, '{\"bpm\": 70}' FROM generate_series(1, $TWINS) i" >/dev/null
	wait_cluster
	SENT=$TWINS
}

# The events sent, every one applied once, on the node that owns it.
FAILED=0
check_cluster() {
	local got
	got=$(q coord -At -c "SET enable_partitionwise_aggregate = on" -c "
		SELECT count(*) || ' twins, ' || coalesce(sum(event_count), 0) || ' events'
		FROM digitaltwin.cluster_twins WHERE model = '$MODEL'")
	local dead=0 n
	for n in $CUR_NODES; do
		dead=$((dead + $(q "$n" -At -c "SELECT count(*) FROM digitaltwin.dead_letters")))
	done
	if [ "$got" = "$TWINS twins, $SENT events" ] && [ "$dead" = 0 ]; then
		echo "  check: $got applied, no dead letter"
	else
		echo "  CHECK FAILED: $got applied (expected $TWINS twins, $SENT events), $dead dead letters" >&2
		FAILED=1
	fi
}

declare -A NODE_EVENTS
HAS_INGEST=no
T_START=$(now_ms)
echo "== scale-out: $EVENTS events, $TWINS twins, $PARTITIONS partitions, model $MODEL (C)," \
	"$WORKERS workers per node, $MULTI_CLIENTS multi-row clients, $CLIENTS single-row clients" \
	"($SINGLE_EVENTS events), median of $REPEAT; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for N in $NODES; do
	echo "== $N node(s); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
	setup_cluster
	echo "  events per node: $(for n in $CUR_NODES; do printf '%s %s  ' "$n" "${NODE_EVENTS[$n]}"; done)"

	for n in $CUR_NODES; do
		r=$(timed "wait_node $n" local_multi "$n")
		record "local multi-row $n" "${NODE_EVENTS[$n]}" "$r" "straight into the node, its own twins only"
		SENT=$((SENT + REPEAT * ${NODE_EVENTS[$n]}))
	done
	if [ "$N" -gt 1 ]; then
		r=$(timed wait_nodes local_all)
		record "local multi-row, all at once" "$EVENTS" "$r" "every node its own clients, at the same time"
		SENT=$((SENT + REPEAT * EVENTS))
	fi
	for n in $CUR_NODES; do
		r=$(timed "wait_node $n" local_copy "$n")
		record "local COPY $n" "${NODE_EVENTS[$n]}" "$r" "straight into the node, its own twins only"
		SENT=$((SENT + REPEAT * ${NODE_EVENTS[$n]}))
	done

	r=$(timed wait_cluster routed_multi)
	record "routed multi-row" "$EVENTS" "$r" "INSERT into cluster_events, $ROWS rows each"
	SENT=$((SENT + REPEAT * EVENTS))
	r=$(timed wait_cluster routed_single)
	record "routed single-row" $((SINGLE_EVENTS / CLIENTS * CLIENTS)) "$r" "INSERT into cluster_events, $CLIENTS clients"
	SENT=$((SENT + REPEAT * (SINGLE_EVENTS / CLIENTS * CLIENTS)))
	r=$(timed wait_cluster routed_copy cluster_events)
	record "routed COPY" "$EVENTS" "$r" "COPY into cluster_events (row by row in PG 15)"
	SENT=$((SENT + REPEAT * EVENTS))
	if [ "$(q coord -At -c "SELECT to_regclass('digitaltwin.cluster_ingest') IS NOT NULL")" = t ]; then
		HAS_INGEST=yes
		r=$(timed wait_cluster routed_copy cluster_ingest)
		record "COPY cluster_ingest" "$EVENTS" "$r" "COPY into cluster_ingest (batched per node)"
		SENT=$((SENT + REPEAT * EVENTS))
		r=$(timed wait_cluster ingest_multi)
		record "multi-row cluster_ingest" "$EVENTS" "$r" "INSERT into cluster_ingest, $ROWS rows each"
		SENT=$((SENT + REPEAT * EVENTS))
	else
		echo "  COPY cluster_ingest: n/a (no digitaltwin.cluster_ingest on the coordinator)"
	fi
	check_cluster
	stop_all
done

# ---------------------------------------------------------------------
# The table: one column per cluster size, "ingest / e2e" in each cell.
# ---------------------------------------------------------------------
k() { awk "BEGIN{printf \"%.1fk\", $1 / 1000}"; }
cell() {	# "nodes|measure": "ingest / e2e" in thousands, or n/a
	if [ -n "${E2E[$1]:-}" ]; then echo "$(k "${ING[$1]}") / $(k "${E2E[$1]}")"; else echo n/a; fi
}
sum_of() {	# nodes, measure prefix ("local multi-row"), ING or E2E: the nodes' sum
	local -n arr=$3
	local s=0 i
	for i in $(seq "$1"); do s=$((s + ${arr["$1|$2 n$i"]:-0})); done
	echo "$s"
}
# ratio of two rates, or n/a
ratio() { if [ -n "$1" ] && [ -n "$2" ] && [ "$2" != 0 ]; then awk "BEGIN{printf \"%.2f\", $1 / $2}"; else echo n/a; fi; }
row() {	# label, cells...
	local label=$1; shift
	printf '  %-44s' "$label"
	printf ' %-19s' "$@"
	echo
}
csv_ratio() { echo "$1,ratio: $2,,,$3,,$4,,,\"routed / its reference, both ingest and e2e\"" >>"$CSV"; }

echo "== side by side: events per second, ingest / end to end (e2e); ratios ingest / e2e"
hdr=()
for N in $NODES; do hdr+=("$N node(s)"); done
row "" "${hdr[@]}"
maxn=$(tr ' ' '\n' <<<"$NODES" | sort -n | tail -1)
for i in $(seq "$maxn"); do
	c=(); for N in $NODES; do c+=("$(cell "$N|local multi-row n$i")"); done
	row "local multi-row, n$i alone" "${c[@]}"
done
declare -A SUM_ING SUM_E2E SUMC_ING SUMC_E2E
for N in $NODES; do
	SUM_ING[$N]=$(sum_of "$N" "local multi-row" ING); SUM_E2E[$N]=$(sum_of "$N" "local multi-row" E2E)
	SUMC_ING[$N]=$(sum_of "$N" "local COPY" ING); SUMC_E2E[$N]=$(sum_of "$N" "local COPY" E2E)
	# one node: "all at once" is that node alone
	if [ "$N" = 1 ]; then
		ING["1|local multi-row, all at once"]=${ING["1|local multi-row n1"]}
		E2E["1|local multi-row, all at once"]=${E2E["1|local multi-row n1"]}
	fi
done
c=(); for N in $NODES; do c+=("$(k "${SUM_ING[$N]}") / $(k "${SUM_E2E[$N]}")"); done
row "sum of local multi-row (one at a time)" "${c[@]}"
c=(); for N in $NODES; do c+=("$(cell "$N|local multi-row, all at once")"); done
row "local multi-row, all nodes at once" "${c[@]}"
c=(); for N in $NODES; do c+=("$(k "${SUMC_ING[$N]}") / $(k "${SUMC_E2E[$N]}")"); done
row "sum of local COPY (one at a time)" "${c[@]}"
ROUTED=("routed multi-row" "routed single-row" "routed COPY" "COPY cluster_ingest" "multi-row cluster_ingest")
for m in "${ROUTED[@]}"; do
	c=(); for N in $NODES; do c+=("$(cell "$N|$m")"); done
	row "$m" "${c[@]}"
done
echo "  efficiency: routed / sum of local multi-row (one at a time)"
for m in "${ROUTED[@]}"; do
	c=()
	for N in $NODES; do
		a=$(ratio "${ING[$N|$m]:-}" "${SUM_ING[$N]}"); b=$(ratio "${E2E[$N|$m]:-}" "${SUM_E2E[$N]}")
		c+=("$a / $b"); csv_ratio "$N" "$m / sum of local multi-row" "$a" "$b"
	done
	row "  $m" "${c[@]}"
done
echo "  efficiency of the COPY paths: / sum of local COPY (one at a time)"
for m in "routed COPY" "COPY cluster_ingest"; do
	c=()
	for N in $NODES; do
		a=$(ratio "${ING[$N|$m]:-}" "${SUMC_ING[$N]}"); b=$(ratio "${E2E[$N|$m]:-}" "${SUMC_E2E[$N]}")
		c+=("$a / $b"); csv_ratio "$N" "$m / sum of local COPY" "$a" "$b"
	done
	row "  $m" "${c[@]}"
done
echo "  on this machine: routed / local multi-row, all nodes at once"
for m in "${ROUTED[@]}"; do
	c=()
	for N in $NODES; do
		a=$(ratio "${ING[$N|$m]:-}" "${ING[$N|local multi-row, all at once]:-}")
		b=$(ratio "${E2E[$N|$m]:-}" "${E2E[$N|local multi-row, all at once]:-}")
		c+=("$a / $b"); csv_ratio "$N" "$m / local multi-row all at once" "$a" "$b"
	done
	row "  $m" "${c[@]}"
done
echo "  scaling: routed at N nodes / routed at 1 node"
for m in "${ROUTED[@]}"; do
	c=()
	for N in $NODES; do
		a=$(ratio "${ING[$N|$m]:-}" "${ING[1|$m]:-}"); b=$(ratio "${E2E[$N|$m]:-}" "${E2E[1|$m]:-}")
		c+=("$a / $b"); csv_ratio "$N" "$m / at 1 node" "$a" "$b"
	done
	row "  $m" "${c[@]}"
done
[ "$HAS_INGEST" = yes ] || echo "  (COPY cluster_ingest: n/a, the coordinator has no digitaltwin.cluster_ingest)"
echo "  run time $((($(now_ms) - T_START) / 1000)) s; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "CSV: $CSV"
exit "$FAILED"
