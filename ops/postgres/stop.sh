#!/usr/bin/env bash
# ops/postgres/stop.sh - stop the cluster started by ops/postgres/start.sh and remove it.
#
# Usage: ops/postgres/stop.sh [--help] [--keep]
#
#   (no option)  pg_ctl stop -m fast (bounded by FLASHSALE_PG_STOP_TIMEOUT s [30]; then
#                -m immediate, then SIGKILL), then delete the state dir and the cluster.
#   --keep       stop, but keep the cluster: a later start.sh with the same environment
#                starts it again with its data (used by fault tests that take Postgres
#                away for a while).
#
# Same environment as start.sh: FLASHSALE_PG_DIR, or FLASHSALE_PG_PORT to find the
# default dir ${TMPDIR:-/tmp}/flashsale-pg-PORT. Exits 0 when nothing runs.
# Only a dir that start.sh made (it holds .flashsale-pg) is ever deleted.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=postgres/stop
# shellcheck source-path=SCRIPTDIR/.. source=lib.sh
. "$HERE/../lib.sh"

KEEP=0
for arg in "$@"; do
	case $arg in
	-h | --help)
		usage_from_header "${BASH_SOURCE[0]}"
		exit 0
		;;
	--keep) KEEP=1 ;;
	*) die "unknown argument: $arg (see --help)" ;;
	esac
done

PORT=${FLASHSALE_PG_PORT:-15432}
DIR=$(abs_path "${FLASHSALE_PG_DIR:-${TMPDIR:-/tmp}/flashsale-pg-$PORT}")
BIN=${FLASHSALE_PG_BIN:-/usr/lib/postgresql/15/bin}
STOP_TIMEOUT=${FLASHSALE_PG_STOP_TIMEOUT:-30}
SOCKDIR=/tmp/flashsale-pg-$PORT.sock
MARKER=$DIR/.flashsale-pg

if [[ ! -d $DIR ]]; then
	log "nothing to stop: $DIR does not exist"
	exit 0
fi
[[ -f $MARKER ]] || die "$DIR was not made by ops/postgres/start.sh (no $MARKER); not touching it"

as_pg() { (cd / && runuser -u postgres -- "$@"); }

LINKED=0
if [[ -L $DIR/data ]]; then
	LINKED=1
	DATA=$(readlink -f "$DIR/data" || true)
else
	DATA=$DIR/data
fi

postmaster_pid() {
	local pid
	pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
	pid_alive "$pid" && pid_cmdline_has "$pid" "postgres" && printf '%s\n' "$pid"
}

rc=0
if [[ -n $DATA && -f $DATA/postmaster.pid ]] && pid=$(postmaster_pid); then
	log "stopping PostgreSQL (pid $pid, pg_ctl stop -m fast, up to ${STOP_TIMEOUT}s)"
	if ! as_pg "$BIN/pg_ctl" stop -D "$DATA" -m fast -w -t "$STOP_TIMEOUT" >&2; then
		warn "fast shutdown did not finish: trying immediate"
		as_pg "$BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 10 >&2 || true
		if pid=$(postmaster_pid); then
			kill_bounded "$pid" 5 "postmaster" || rc=1
		fi
	fi
else
	log "no PostgreSQL running for $DIR"
fi
((rc == 0)) || die "could not stop PostgreSQL of $DIR"

if ((KEEP)); then
	log "stopped; kept $DIR"
	exit 0
fi
if ((LINKED)) && [[ -n $DATA && -d $DATA && $DATA == /tmp/flashsale-pg-* ]]; then
	rm -rf "$DATA" "$DATA.log"
fi
rm -rf "$DIR"
rmdir "$SOCKDIR" 2>/dev/null || true
log "stopped; removed $DIR"
