#!/bin/bash
# Install what building and testing digitaltwin needs, from Debian's
# packages, when it is missing.  Sourced by test.sh, demo.sh and bench.
#
# Sets PG_CONFIG and PGBIN for the caller.

PG_MAJOR=15
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
PGBIN=/usr/lib/postgresql/$PG_MAJOR/bin
export PG_CONFIG PGBIN

dt_missing_packages() {
	local pkgs="postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib libipc-run-perl make gcc"
	local p missing=""
	for p in $pkgs; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing="$missing $p"
	done
	echo "$missing"
}

dt_install_deps() {
	local missing
	missing=$(dt_missing_packages)
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

# initdb and postgres refuse to run as root: run the instance as postgres.
dt_run_user() {
	if [ "$(id -u)" = 0 ]; then
		echo postgres
	else
		id -un
	fi
}
