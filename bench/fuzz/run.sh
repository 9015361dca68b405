#!/bin/bash
# Bounded fuzzing of digitaltwin's SQL entry points (not part of the test
# suite):
#
#   bash bench/fuzz/run.sh [seconds]        (default 120)
#
# digitaltwin has no parser of its own: payloads are parsed by jsonb_in,
# twin ids are text.  The C code that interprets input is the insert-side
# validation (digitaltwin.event_valid: model, twin id, payload shape and
# size), the public C-model helpers of include/digitaltwin.h (used by the C
# heart-rate model to read "bpm" from any payload), state images, alerts
# and the registry.  This script throws random input at all of them from
# several sessions at once, through a throwaway instance: random model
# names (registered, unknown, NULL, over-long), random twin ids (empty,
# NULL, random Unicode, up to 80 bytes), random JSON values (any type,
# nested up to 40 levels, big strings and numbers, sizes around
# digitaltwin.max_payload_size), sent by send(), INSERT and multi-row
# INSERT to a jsonb model, the C model and a model that raises alerts with
# random arguments; plus create_model/drop_model with random arguments.
#
# It fails (exit 1) if any call ends in an internal error (SQLSTATE XX000),
# if the server crashes or restarts, or if the events accepted are not all
# accounted for (applied or dead-lettered) once the workers are idle.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
. "$ROOT/scripts/deps.sh"
DURATION=${1:-120}
SESSIONS=${SESSIONS:-3}

dt_install_deps
dt_build_install "$ROOT"
trap dt_instance_stop EXIT
dt_instance_start "$(mktemp -d /tmp/digitaltwin-fuzz.XXXXXX)" "
digitaltwin.workers = 2
digitaltwin.model_timeout = '2s'
digitaltwin.max_payload_size = '64kB'
digitaltwin.max_state_size = '64kB'
digitaltwin.max_twins_per_model = 5000"
dt_psql -c "SET client_min_messages = warning" -f "$ROOT/examples/heart_rate.sql" >/dev/null
dt_psql -c "CREATE EXTENSION digitaltwin_heart_rate" >/dev/null
dt_psql -f "$ROOT/bench/fuzz/fuzz.sql" >/dev/null

start_restarts=$(dt_psql -At -c "SELECT pg_postmaster_start_time()")
pids=()
for s in $(seq "$SESSIONS"); do
	dt_psql -At -c "CALL fuzz_run($DURATION, $s)" >"$DT_DIR/session_$s.out" 2>&1 &
	pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
cat "$DT_DIR"/session_*.out
[ "$status" = 0 ] || { echo "FAIL: a fuzzing session died (server crash?)"; exit 1; }

dt_psql -At -c "SELECT digitaltwin.wait_idle('300s')" | grep -qx t || { echo "FAIL: workers not idle"; exit 1; }
[ "$(dt_psql -At -c "SELECT pg_postmaster_start_time()")" = "$start_restarts" ] ||
	{ echo "FAIL: the server restarted"; exit 1; }
dt_psql -At -f "$ROOT/bench/fuzz/check.sql" | tee "$DT_DIR/check.out"
grep -q '^FAIL' "$DT_DIR/check.out" && exit 1
if grep -E "PANIC|terminated by signal|TRAP" "$DT_DIR/server.log"; then
	echo "FAIL: see the server log"; exit 1
fi
echo "fuzzing: no internal error, no crash, every accepted event accounted for"
