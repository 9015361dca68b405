#!/bin/bash
# The Debian package: build postgresql-15-digitaltwin from the checkout's
# files with dpkg-buildpackage (pg_buildext), install it with apt, and run
# the pg_regress suite against the installed files (no make install).
# Then remove it and put the make-installed build back.
#
#   bash scripts/test_package.sh      (scripts/test.sh runs it last)
#
# As root (apt).  Holds /tmp/digitaltwin-test.lock, or runs under the
# caller's hold of it (scripts/test.sh passes it down).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/deps.sh"

if [ "$(id -u)" != 0 ]; then
	echo "test_package.sh: skipped (installing a package needs root)"
	exit 0
fi
dt_install_deps
dt_install_packages debhelper postgresql-server-dev-all dpkg-dev
if [ -z "${DT_LOCK_HELD:-}" ]; then
	exec 9>/tmp/digitaltwin-test.lock
	flock 9
fi

BUILD=$(mktemp -d /tmp/digitaltwin-deb.XXXXXX)
chmod 755 "$BUILD"	# the suite runs as another user
RUN_AS=$(dt_run_user)
cleanup() {
	rm -rf "$BUILD"
	# leave the machine as the other stages expect it: the make-installed build
	if dpkg-query -W -f='${Status}' postgresql-15-digitaltwin 2>/dev/null | grep -q "install ok installed"; then
		apt-get remove -y -qq postgresql-15-digitaltwin postgresql-15-digitaltwin-example >/dev/null 2>&1 || true
	fi
	dt_build_install "$ROOT"
}
trap cleanup EXIT

# the package is built from the checkout's files only, as from a clean clone
mkdir "$BUILD/digitaltwin"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
	git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
		(cd "$ROOT" && xargs -0 cp --parents -t "$BUILD/digitaltwin")
else
	cp -a "$ROOT/." "$BUILD/digitaltwin/"
	make -C "$BUILD/digitaltwin" -s clean PG_CONFIG="$PG_CONFIG" >/dev/null
fi
echo "== building the Debian package (dpkg-buildpackage -us -uc -b)"
if ! (cd "$BUILD/digitaltwin" && dpkg-buildpackage -us -uc -b >"$BUILD/build.log" 2>&1); then
	tail -n 40 "$BUILD/build.log"
	echo "digitaltwin package: build FAILED"
	exit 1
fi
# the make-installed files go first: the suite must run on the package's
dt_uninstall "$ROOT"
debs=("$BUILD"/postgresql-15-digitaltwin_*.deb "$BUILD"/postgresql-15-digitaltwin-example_*.deb)
echo "== installing ${debs[*]##*/}"
apt-get install -y -qq --reinstall "${debs[@]}" >"$BUILD/install.log" 2>&1 || { cat "$BUILD/install.log"; exit 1; }

# the installed files are the package's, of this version
pkglib=$("$PG_CONFIG" --pkglibdir)
share=$("$PG_CONFIG" --sharedir)/extension
version=$(sed -n "s/^default_version = '\(.*\)'/\1/p" "$ROOT/digitaltwin.control")
fail=0
owned_by() {	# package file
	if ! dpkg -S "$2" 2>/dev/null | grep -q "^$1:"; then
		echo "not installed by $1: $2"
		fail=1
	fi
}
# the upgrade script to the current version, whatever it comes from
latest=$(cd "$ROOT/sql" && ls digitaltwin--*--"$version".sql)
for f in "$pkglib/digitaltwin.so" "$share/digitaltwin.control" "$share/digitaltwin--1.0.sql" \
	"$share/$latest"; do
	owned_by postgresql-15-digitaltwin "$f"
done
owned_by postgresql-15-digitaltwin-example "$pkglib/digitaltwin_heart_rate.so"
owned_by postgresql-15-digitaltwin-example "$share/digitaltwin_heart_rate.control"
pkgversion=$(dpkg-query -W -f='${Version}' postgresql-15-digitaltwin)
[ "$pkgversion" = "$version" ] || { echo "package version $pkgversion, extension $version"; fail=1; }

echo "== the regression suite against the installed package"
WORK="$BUILD/check"
mkdir "$WORK"
cp -a "$BUILD/digitaltwin/." "$WORK/"
chown -R "$RUN_AS" "$WORK"
set +e
runuser -u "$RUN_AS" -- make -C "$WORK" -s PG_CONFIG="$PG_CONFIG" ISOLATION= TAP_TESTS= \
	installcheck >"$WORK/test.log" 2>&1
status=$?
set -e
cat "$WORK/test.log"
[ -s "$WORK/regression.diffs" ] && cat "$WORK/regression.diffs"
passed=$(grep -Ec '^(ok|test) .*\.\.\. ok' "$WORK/test.log" || true)
failed=$(grep -Ec '\.\.\. FAILED' "$WORK/test.log" || true)
echo "digitaltwin package: $passed passed, $failed failed (package $pkgversion)"
if [ $status -ne 0 ] || [ "$failed" -ne 0 ] || [ $fail -ne 0 ] || [ "$passed" -eq 0 ]; then
	exit 1
fi
