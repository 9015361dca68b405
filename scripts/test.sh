#!/bin/bash
# Run the whole digitaltwin test suite: pg_regress, isolation and TAP tests,
# each against its own temporary PostgreSQL 15 instance.
#
#   bash scripts/test.sh
#
# A subset: REGRESS="setup trust" ISOLATION= PROVE_TESTS="t/008_x.pl" bash
# scripts/test.sh (empty REGRESS or ISOLATION skips that part; the TAP part
# is skipped with PROVE_TESTS=none).  The whole suite ends with the Debian
# package (scripts/test_package.sh).  The install and the run hold a lock
# (/tmp/digitaltwin-test.lock): several checkouts on one machine share the
# server's extension directory.
#
# Installs the Debian packages it needs when missing (as root; among them
# prometheus-postgres-exporter, for t/020), builds and installs the
# extension, then runs the tests as an ordinary user (initdb refuses root)
# in a scratch copy of the tree.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/deps.sh"

dt_install_test_deps
exec 9>/tmp/digitaltwin-test.lock
flock 9
dt_build_install "$ROOT"

RUN_AS=$(dt_run_user)
WORK=$(mktemp -d /tmp/digitaltwin-test.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cp -a "$ROOT/." "$WORK/"
chown -R "$RUN_AS" "$WORK"

LOG="$WORK/test.log"
SUBSET=()
[ -n "${REGRESS+set}" ] && SUBSET+=("REGRESS=$REGRESS")
[ -n "${ISOLATION+set}" ] && SUBSET+=("ISOLATION=$ISOLATION")
if [ "${PROVE_TESTS:-}" = none ]; then
	SUBSET+=("TAP_TESTS=")
elif [ -n "${PROVE_TESTS:-}" ]; then
	SUBSET+=("PROVE_TESTS=$PROVE_TESTS")
fi
set +e
if [ "$(id -u)" = 0 ]; then
	runuser -u "$RUN_AS" -- make -C "$WORK" -s PG_CONFIG="$PG_CONFIG" "${SUBSET[@]}" installcheck >"$LOG" 2>&1
else
	make -C "$WORK" -s PG_CONFIG="$PG_CONFIG" "${SUBSET[@]}" installcheck >"$LOG" 2>&1
fi
status=$?
set -e
cat "$LOG"

# pg_regress prints one "ok"/"FAILED" line per test, prove one per file
# plus "not ok" per failed assertion.
passed=$(grep -Ec '^(ok|test) .*\.\.\. ok|^ok [0-9]+ +[-+] |^t/.*\.\. ok$' "$LOG" || true)
failed=$(grep -Ec '\.\.\. FAILED|^not ok [0-9]+ +[-+] |^Dubious, test returned|^Bailout called' "$LOG" || true)
for f in "$WORK"/regression.diffs "$WORK"/output_iso/regression.diffs; do
	[ -s "$f" ] && { echo "=== $f"; cat "$f"; }
done
[ -d "$WORK/tmp_check/log" ] && [ $status -ne 0 ] &&
	tail -n 50 "$WORK"/tmp_check/log/*.log 2>/dev/null | tail -n 200
echo "digitaltwin tests: $passed passed, $failed failed"
if [ $status -ne 0 ] || [ "$failed" -ne 0 ]; then
	exit 1
fi

# The Debian package, built and tested last (the whole suite only: a
# subset skips it; PACKAGE_TEST=0 too).  Under this lock.
if [ -z "${REGRESS+set}${ISOLATION+set}${PROVE_TESTS:-}" ] && [ "${PACKAGE_TEST:-1}" != 0 ]; then
	DT_LOCK_HELD=1 bash "$ROOT/scripts/test_package.sh"
fi
