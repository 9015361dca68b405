#!/bin/bash
# Install what building and testing digitaltwin needs, from Debian's
# packages, when it is missing.  Sourced by test.sh, demo.sh and bench.
#
# Sets PG_CONFIG and PGBIN for the caller: Debian's PostgreSQL, or with
# DT_PGTREE=<dir> the relocated copy of Debian's tree under <dir> (its
# usr/lib/postgresql/15), so that a benchmark can build the extension into
# a private tree and run from it without writing to /usr.

PG_MAJOR=15
PG_CONFIG=${DT_PGTREE:-}/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
PGBIN=${DT_PGTREE:-}/usr/lib/postgresql/$PG_MAJOR/bin
if [ -n "${DT_PGTREE:-}" ] && [ ! -x "$PG_CONFIG" ]; then
	echo "DT_PGTREE=$DT_PGTREE: no $PG_CONFIG" >&2
	exit 1
fi
export PG_CONFIG PGBIN

dt_missing_packages() {
	local pkgs=${*:-"postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib libipc-run-perl make gcc"}
	local p missing=""
	for p in $pkgs; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing="$missing $p"
	done
	echo "$missing"
}

dt_install_deps() {
	dt_install_packages
}

# What the tests need besides: t/020_prometheus.pl runs Debian's
# prometheus-postgres-exporter against a test instance.  Its postinst adds
# the user prometheus and enables the service prometheus-postgres-exporter
# (:9187); the service starts only under systemd (invoke-rc.d obeys
# policy-rc.d, which denies it in a container), and with the package's
# empty DATA_SOURCE_NAME it exits at once ("malformed dsn").  The test runs
# its own exporter on a free port, so it neither needs nor meets that one.
DT_TEST_PACKAGES="prometheus-postgres-exporter"

dt_install_test_deps() {
	dt_install_packages
	dt_install_packages $DT_TEST_PACKAGES
}

# Install the given packages (default: what building and testing needs)
# when missing.
dt_install_packages() {
	local missing
	missing=$(dt_missing_packages "$@")
	if [ -n "$missing" ]; then
		if [ "$(id -u)" != 0 ]; then
			echo "missing packages:$missing (run as root to install them)" >&2
			exit 1
		fi
		echo "installing:$missing"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends $missing >/dev/null
	fi
}

# Build and install the extension (as root: it writes to PostgreSQL's
# directories).
dt_build_install() {
	local src=$1
	make -C "$src" -s PG_CONFIG="$PG_CONFIG" >/dev/null
	make -C "$src" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
}

# Remove what dt_build_install installed.
dt_uninstall() {
	make -C "$1" -s PG_CONFIG="$PG_CONFIG" uninstall >/dev/null
}

# initdb and postgres refuse to run as root: run the instance as postgres.
dt_run_user() {
	if [ "$(id -u)" = 0 ]; then
		echo postgres
	else
		id -un
	fi
}

# A throwaway instance in directory $1 (created), listening only on a Unix
# socket there, with the extension preloaded; extra postgresql.conf lines in
# $2.  Sets DT_DIR and DT_CONN; dt_instance_stop removes it.
dt_as_user() {
	if [ "$(id -u)" = 0 ]; then runuser -u "$(dt_run_user)" -- "$@"; else "$@"; fi
}

dt_instance_start() {
	DT_DIR=$1
	mkdir -p "$DT_DIR"
	chown "$(dt_run_user)" "$DT_DIR"
	dt_as_user "$PGBIN/initdb" -D "$DT_DIR/data" -A trust -U postgres >/dev/null
	cat >>"$DT_DIR/data/postgresql.conf" <<EOC
listen_addresses = ''
unix_socket_directories = '$DT_DIR'
port = 5432
shared_preload_libraries = 'digitaltwin'
# the demo and the benchmark create their models as the bootstrap superuser
digitaltwin.allow_superuser_models = on
$2
EOC
	dt_as_user "$PGBIN/pg_ctl" -D "$DT_DIR/data" -l "$DT_DIR/server.log" -w start >/dev/null
	DT_CONN="host=$DT_DIR port=5432 user=postgres dbname=postgres"
	export DT_DIR DT_CONN
}

dt_instance_stop() {
	[ -n "${DT_DIR:-}" ] || return 0
	dt_as_user "$PGBIN/pg_ctl" -D "$DT_DIR/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$DT_DIR"
	DT_DIR=
}

dt_psql() {
	"$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DT_DIR" -p 5432 -U postgres -d postgres "$@"
}
