#!/bin/bash
# Run the regression suite with every server process under Valgrind
# memcheck (not part of the test suite; takes several minutes):
#
#   bash bench/valgrind.sh [test ...]       (default: all of REGRESS)
#
# The server is the one from Debian's packages, started through a wrapper
# "postgres" that runs the real binary under valgrind (initdb's bootstrap
# runs without it).  Debian's server is built without USE_VALGRIND, so
# memcheck sees malloc'd memory and the shared segments but not individual
# palloc chunks: it finds invalid reads and writes outside palloc'd blocks,
# uses of uninitialised values, and invalid frees.  Reports go to
# bench/out/valgrind/<pid>.log; the script prints a summary and fails if any
# error is reported in a stack that goes through digitaltwin.so.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/deps.sh"
dt_install_deps
command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
dt_build_install "$ROOT"

WORK=$(mktemp -d /tmp/digitaltwin-valgrind.XXXXXX)
OUT="$ROOT/bench/out/valgrind"
rm -rf "$OUT"; mkdir -p "$OUT" "$WORK/bin"
# initdb and pg_ctl find "postgres" next to themselves: copies, not links
for b in initdb pg_ctl psql; do cp "$PGBIN/$b" "$WORK/bin/"; done
cat >"$WORK/bin/postgres" <<EOW
#!/bin/bash
case " \$* " in
*" --boot "*|*" --single "*|*" -V "*|*" --version "*|*" -C "*|*" --describe-config "*)
	exec "$PGBIN/postgres" "\$@" ;;
esac
exec valgrind --quiet --error-exitcode=0 --leak-check=no --track-origins=yes \\
	--read-var-info=no --num-callers=30 --trace-children=no \\
	--suppressions="$ROOT/bench/valgrind.supp" \\
	--log-file="$OUT/%p.log" "$PGBIN/postgres" "\$@"
EOW
chmod +x "$WORK/bin/postgres"
cp -r "$ROOT"/sql "$ROOT"/expected "$ROOT"/test "$ROOT"/examples "$WORK/"
chown -R "$(dt_run_user)" "$WORK" "$OUT"

tests=${*:-$(sed -n 's/^REGRESS = //p' "$ROOT/Makefile")}
cd "$WORK"
# generous timeouts: everything runs 20-50 times slower
sed -i "s/digitaltwin.model_timeout = .*/digitaltwin.model_timeout = '30s'/" test/regress.conf
set +e
dt_as_user "$(dirname "$(dirname "$("$PG_CONFIG" --pgxs)")")/test/regress/pg_regress" --bindir="$WORK/bin" \
	--inputdir=. --temp-instance="$WORK/tmp" --temp-config=test/regress.conf \
	--dbname=contrib_regression $tests
regress=$?
set -e

errors=$(cat "$OUT"/*.log 2>/dev/null | grep -c '^==[0-9]*== [A-Z].*\(Invalid\|uninitialised\|Mismatched\|free\)' || true)
# an error is ours when its innermost frame, or that of the allocation it
# is about, is in digitaltwin.so ("at" lines; "by" lines are callers)
ours=$(cat "$OUT"/*.log 2>/dev/null | grep -c '^==[0-9]*==    at .*(\(queue\|stage\|shmem\|worker\|model\|alerts\|views\|guc\|digitaltwin\|heart_rate\)\.c:' || true)
echo "valgrind: $(ls "$OUT"/*.log | wc -l) processes, $errors error reports, $ours with the innermost frame in digitaltwin"
for f in "$OUT"/*.log; do
	[ -s "$f" ] && { echo "--- $(basename "$f"): first report"; grep -m1 -A3 '^==[0-9]*== [A-Z]' "$f"; }
done
echo "(pg_regress exit $regress; under valgrind timing-dependent outputs may differ)"
cp "$WORK"/regression.diffs "$OUT"/ 2>/dev/null || true
rm -rf "$WORK"
# 2: the instance did not start or a test could not run at all
[ "$regress" -le 1 ] && [ "$ours" = 0 ]
