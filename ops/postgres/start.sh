#!/usr/bin/env bash
# ops/postgres/start.sh - start a throwaway PostgreSQL 15 cluster on 127.0.0.1, without
# Docker, and make sure the database `flashsale` exists.
#
# Usage: ops/postgres/start.sh [--help] [--status]
#
#   (no option)  install Debian's postgresql package if PostgreSQL 15 is missing
#                (apt-get update && apt-get install -y postgresql), create a cluster in
#                the state dir (initdb as user postgres, trust auth, first start only),
#                start it with pg_ctl -w, create database flashsale, print
#                postgres://postgres@127.0.0.1:PORT/flashsale on stdout.
#                An existing cluster in the state dir is reused (e.g. after
#                `ops/postgres/stop.sh --keep`); one already running is left as it is.
#   --status     exit 0 if the cluster of this dir runs (and print its URL), 3 if not
#
# Environment (defaults in brackets):
#   FLASHSALE_PG_PORT           TCP port on 127.0.0.1 [15432]
#   FLASHSALE_PG_DIR            state dir; the cluster is in its data/ subdir
#                               [${TMPDIR:-/tmp}/flashsale-pg-PORT]
#   FLASHSALE_PG_DB             database to create [flashsale]
#   FLASHSALE_PG_START_TIMEOUT  seconds for pg_ctl -w [60]
#   FLASHSALE_PG_BIN            PostgreSQL binaries [/usr/lib/postgresql/15/bin]
#
# Logs: $FLASHSALE_PG_DIR/postgres.log. The Unix socket is in
# /tmp/flashsale-pg-PORT.sock/ (psql -h that-dir -p PORT -U postgres).
# Stop with ops/postgres/stop.sh (same environment).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=postgres/start
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$HERE/../lib.sh"

MODE=start
for arg in "$@"; do
	case $arg in
	-h | --help)
		usage_from_header "${BASH_SOURCE[0]}"
		exit 0
		;;
	--status) MODE=status ;;
	*) die "unknown argument: $arg (see --help)" ;;
	esac
done

PORT=${FLASHSALE_PG_PORT:-15432}
DIR=$(abs_path "${FLASHSALE_PG_DIR:-${TMPDIR:-/tmp}/flashsale-pg-$PORT}")
DB=${FLASHSALE_PG_DB:-flashsale}
START_TIMEOUT=${FLASHSALE_PG_START_TIMEOUT:-60}
BIN=${FLASHSALE_PG_BIN:-/usr/lib/postgresql/15/bin}
SOCKDIR=/tmp/flashsale-pg-$PORT.sock
MARKER=$DIR/.flashsale-pg
URL=postgres://postgres@127.0.0.1:$PORT/$DB

[[ $PORT =~ ^[0-9]+$ ]] || die "FLASHSALE_PG_PORT must be a number"
[[ $DB =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "FLASHSALE_PG_DB must be a plain identifier"

as_pg() { (cd / && runuser -u postgres -- "$@"); }

# The cluster's files live in $DIR/data unless user postgres cannot reach $DIR (e.g. it
# is under a mode-700 home): then they live in /tmp and $DIR/data is a symlink to them.
data_dir() {
	if [[ -L $DIR/data ]]; then
		readlink -f "$DIR/data"
	else
		printf '%s\n' "$DIR/data"
	fi
}

is_running() {
	local data
	data=$(data_dir)
	[[ -f $data/PG_VERSION && -x $BIN/pg_ctl ]] || return 1
	as_pg "$BIN/pg_ctl" status -D "$data" >/dev/null 2>&1
}

if [[ $MODE == status ]]; then
	if is_running; then
		log "PostgreSQL running (dir $DIR)"
		echo "$URL"
		exit 0
	fi
	log "no PostgreSQL running for $DIR"
	exit 3
fi

# ---------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------
if [[ ! -x $BIN/initdb || ! -x $BIN/pg_ctl ]]; then
	(($(id -u) == 0)) || die "PostgreSQL 15 is not installed in $BIN and we are not root to apt-get install it"
	log "PostgreSQL 15 not found in $BIN: installing Debian's postgresql package"
	if ! dpkg -s postgresql-common >/dev/null 2>&1 && [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
		# no default 'main' cluster on port 5432: we only use our own throwaway ones
		mkdir -p /etc/postgresql-common
		echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2 || die "apt-get update failed"
	apt-get install -y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
		postgresql >&2 || die "apt-get install postgresql failed"
	[[ -x $BIN/initdb ]] || die "postgresql installed, but $BIN/initdb is still missing (not version 15? set FLASHSALE_PG_BIN)"
fi
id postgres >/dev/null 2>&1 || die "user postgres does not exist (it comes with Debian's postgresql package)"
command -v runuser >/dev/null || die "runuser not found (util-linux)"
(($(id -u) == 0)) || die "run as root: initdb/pg_ctl are run as user postgres through runuser"

if is_running; then
	log "PostgreSQL already running (dir $DIR)"
	echo "$URL"
	exit 0
fi
if port_open "$PORT"; then
	die "port 127.0.0.1:$PORT is already in use by another process (set FLASHSALE_PG_PORT, or run ops/postgres/stop.sh with the env of that cluster)"
fi

# ---------------------------------------------------------------------------------
# cluster (first start of this dir only)
# ---------------------------------------------------------------------------------
if [[ -e $DIR && ! -f $MARKER ]] && [[ -n $(ls -A "$DIR" 2>/dev/null) ]]; then
	die "$DIR exists, is not empty and was not made by this script; refusing to use it"
fi
mkdir -p "$DIR"
touch "$MARKER"
chown postgres:postgres "$DIR"

if [[ ! -e $DIR/data ]]; then
	if as_pg test -w "$DIR"; then
		mkdir -p "$DIR/data"
	else
		real=$(mktemp -d "/tmp/flashsale-pg-$PORT-data.XXXXXX")
		warn "user postgres cannot reach $DIR: keeping the cluster in $real ($DIR/data links to it)"
		ln -s "$real" "$DIR/data"
	fi
fi
DATA=$(data_dir)
chown postgres:postgres "$DATA"
chmod 700 "$DATA"
LOGFILE=$DIR/postgres.log
if ! as_pg test -w "$DIR"; then
	LOGFILE=$DATA.log
fi
touch "$LOGFILE"
chown postgres:postgres "$LOGFILE"

if [[ ! -f $DATA/PG_VERSION ]]; then
	log "initdb: new cluster in $DATA"
	if ! as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C \
		--no-sync >"$DIR/initdb.log" 2>&1; then
		cat "$DIR/initdb.log" >&2
		die "initdb failed"
	fi
	cat >>"$DATA/postgresql.conf" <<EOF

# --- written by ops/postgres/start.sh ---
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCKDIR'
max_connections = 200
fsync = on
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_connections = off
EOF
	cat >"$DATA/pg_hba.conf" <<'EOF'
# written by ops/postgres/start.sh - throwaway test cluster, loopback only, trust
local   all   all                 trust
host    all   all   127.0.0.1/32  trust
host    all   all   ::1/128       trust
local   replication   all                 trust
host    replication   all   127.0.0.1/32  trust
EOF
	chown postgres:postgres "$DATA/pg_hba.conf"
else
	log "reusing the cluster in $DATA"
fi

# ---------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------
mkdir -p "$SOCKDIR"
chown postgres:postgres "$SOCKDIR"
chmod 755 "$SOCKDIR"

log "starting PostgreSQL on 127.0.0.1:$PORT (data $DATA)"
if ! as_pg "$BIN/pg_ctl" start -D "$DATA" -l "$LOGFILE" -w -t "$START_TIMEOUT" \
	-o "-p $PORT -k $SOCKDIR -h 127.0.0.1" >"$DIR/pg_ctl.log" 2>&1; then
	cat "$DIR/pg_ctl.log" >&2 || true
	warn "last lines of $LOGFILE:"
	tail -n 30 "$LOGFILE" >&2 || true
	# do not leave a half-started postmaster behind
	as_pg "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 10 >/dev/null 2>&1 || true
	die "PostgreSQL did not start (log: $LOGFILE)"
fi

psql_q() {
	timeout 30 "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tA "$@"
}
wait_until 20 "a connection on 127.0.0.1:$PORT" psql_q -c 'select 1' >/dev/null ||
	die "PostgreSQL started but does not accept connections on 127.0.0.1:$PORT (log: $LOGFILE)"
if [[ $(psql_q -c "select 1 from pg_database where datname = '$DB'") != 1 ]]; then
	log "creating database $DB"
	psql_q -c "create database \"$DB\"" >/dev/null
fi

log "PostgreSQL ready - log: $LOGFILE"
echo "$URL"
