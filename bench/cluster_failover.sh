#!/bin/bash
# Failover of a node (issue 18, "HA of each node"; docs/scale-out.md): how
# long after its standby's promotion are the node's twins live again?
#
#   bash bench/cluster_failover.sh
#   DT_PGTREE=/tmp/mytree bash bench/cluster_failover.sh
#
# A primary with TWINS twins (default 1,000,000: one event each, a small
# jsonb state) and a synchronous streaming standby.  The primary crashes
# (pg_ctl stop -m immediate) and the standby is promoted with pg_promote().
# Reported, from pg_promote() returning:
#   - twins live: the workers hold every twin in shared memory again
#     (digitaltwin.stats, polled every 10 ms in one session);
#   - probes processed: one new event in each worker's partition, sent at
#     once, until wait_idle() (a worker processes events only once it has
#     rebuilt its partition);
# and pg_promote()'s own time and each worker's rebuild as its log says;
# then the same after a plain restart of the promoted node, for comparison.
# Run by hand, once: it is not part of the test suite.
#
# Builds and installs the extension into DT_PGTREE (a relocatable copy of
# Debian's PostgreSQL 15 tree) when it is set, else into Debian's tree (as
# root, installing missing packages).  Parameters (environment): TWINS,
# WORKERS (2), VACUUM (1: VACUUM twin_state on the primary before the
# standby is made, as a table that has settled; default 0: the twins were
# just written, the worst case), DT_PGTREE (scripts/deps.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/deps.sh"
TWINS=${TWINS:-1000000}
WORKERS=${WORKERS:-2}
VACUUM=${VACUUM:-0}

# (deps.sh points PG_CONFIG and PGBIN into DT_PGTREE when it is set)
[ -n "${DT_PGTREE:-}" ] || dt_install_deps
dt_build_install "$ROOT"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
standby_psql() {
	"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DT_DIR" -p 5433 -U postgres -d postgres "$@"
}
# when (epoch ms) the workers hold every twin in shared memory: one session
# polling the live counts every 10 ms
wait_live() {
	standby_psql -At -c "
	DO \$\$
	BEGIN
	    WHILE (SELECT coalesce(sum(twins), 0) FROM digitaltwin.stats WHERE worker IS NOT NULL) < $TWINS LOOP
	        PERFORM pg_sleep(0.01);
	    END LOOP;
	END \$\$;
	SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
}
worker_logs() {
	tail -c +"$1" "$DT_DIR/standby.log" |
		grep -o 'digitaltwin worker [0-9]* loaded [0-9]* twins and [0-9]* timers in [0-9.]* ms' | sed 's/^/  /'
}
cleanup() {
	if [ -n "${DT_DIR:-}" ] && [ -d "$DT_DIR/standby" ]; then
		dt_as_user "$PGBIN/pg_ctl" -D "$DT_DIR/standby" -m immediate stop >/dev/null 2>&1 || true
	fi
	dt_instance_stop
}
trap cleanup EXIT

dt_instance_start "$(mktemp -d /tmp/digitaltwin-failover.XXXXXX)" "
digitaltwin.workers = $WORKERS
digitaltwin.max_memory = '2GB'
shared_buffers = '1GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
wal_level = replica
max_wal_senders = 4"

echo "== $TWINS twins on the primary"
dt_psql -c "CREATE EXTENSION digitaltwin" >/dev/null
dt_psql -c "CREATE FUNCTION gauge(twin_id text, state jsonb, event jsonb) RETURNS jsonb
            LANGUAGE sql AS \$\$ SELECT jsonb_build_object('n', coalesce((state->>'n')::int, 0) + 1,
                                                        'last', event->'bpm') \$\$;
            SELECT digitaltwin.create_model('gauge', 'gauge(text,jsonb,jsonb)')" >/dev/null
t0=$(now_ms)
dt_psql -c "INSERT INTO digitaltwin.events (model, twin_id, payload)
            SELECT 'gauge', 'device-' || i, jsonb_build_object('bpm', 60 + i % 70)
            FROM generate_series(1, $TWINS) i" >/dev/null
dt_psql -At -c "SELECT digitaltwin.wait_idle('900s')" | grep -qx t
echo "  created in $(($(now_ms) - t0)) ms"
if [ "$VACUUM" = 1 ]; then
	# as autovacuum leaves a table that has settled: hint bits set and
	# pages marked all-visible, which the standby receives with the WAL
	dt_psql -c "VACUUM digitaltwin.twin_state"
	echo "  twin_state vacuumed"
fi
dt_psql -c "CHECKPOINT"

echo "== a synchronous standby"
# synchronous_standby_names is set after the copy: the promoted standby has
# no standby of its own, and would wait for one at every commit
dt_as_user "$PGBIN/pg_basebackup" -h "$DT_DIR" -p 5432 -U postgres -D "$DT_DIR/standby" \
	-R -X stream -c fast
dt_as_user "$PGBIN/pg_ctl" -D "$DT_DIR/standby" -l "$DT_DIR/standby.log" \
	-o "-p 5433 -c cluster_name=standby" -w start >/dev/null
dt_psql -c "ALTER SYSTEM SET synchronous_standby_names = 'standby'" -c "SELECT pg_reload_conf()" >/dev/null
until [ "$(dt_psql -At -c "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'")" = sync ]; do
	sleep 0.1
done
lsn=$(dt_psql -At -c "SELECT pg_current_wal_flush_lsn()")
until [ "$(standby_psql -At -c "SELECT pg_last_wal_replay_lsn() >= '$lsn'")" = t ]; do
	sleep 0.1
done
# (nothing reads twin_state on the standby before its promotion: its
# workers' first scan also sets the tuples' hint bits there, the worst case)

echo "== crash of the primary, promotion"
dt_as_user "$PGBIN/pg_ctl" -D "$DT_DIR/data" -m immediate stop >/dev/null
log_from=$(($(stat -c %s "$DT_DIR/standby.log") + 1))
t_call=$(now_ms)
standby_psql -At -c "SELECT pg_promote(true, 60)" | grep -qx t
t_promoted=$(now_ms)

wait_live >"$DT_DIR/live.out" &
POLLER=$!
# a probe in each worker's partition
standby_psql -c "
INSERT INTO digitaltwin.events (model, twin_id, payload)
SELECT DISTINCT ON (digitaltwin.partition_of('device-' || i, $WORKERS))
       'gauge', 'device-' || i, '{\"bpm\": 1}'
FROM generate_series(1, 1000) i
ORDER BY digitaltwin.partition_of('device-' || i, $WORKERS), i" >/dev/null
standby_psql -At -c "SELECT digitaltwin.wait_idle('120s')" | grep -qx t
t_probes=$(now_ms)
wait "$POLLER"
t_live=$(tail -n 1 "$DT_DIR/live.out")

echo "  pg_promote(): $((t_promoted - t_call)) ms"
echo "  twins live: $((t_live - t_promoted)) ms after pg_promote() returned"
echo "  probes processed: $((t_probes - t_promoted)) ms after pg_promote() returned"
worker_logs "$log_from"
standby_psql -At -c "SELECT '  live twins: ' || twins || ', ' || pg_size_pretty(memory_bytes) || ' of shared memory'
                     FROM digitaltwin.stats WHERE worker IS NULL"

# for comparison: the same node restarted (its workers rebuild the same
# twins, now from pages a first pass has already read and hinted)
echo "== restart of the promoted node, for comparison"
log_from=$(($(stat -c %s "$DT_DIR/standby.log") + 1))
dt_as_user "$PGBIN/pg_ctl" -D "$DT_DIR/standby" -l "$DT_DIR/standby.log" -m fast -w restart >/dev/null
t_started=$(now_ms)
wait_live >"$DT_DIR/live.out"
echo "  twins live: $(($(tail -n 1 "$DT_DIR/live.out") - t_started)) ms after pg_ctl restart returned"
worker_logs "$log_from"
