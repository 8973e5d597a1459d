#!/usr/bin/env bash
# ops/redis/stop.sh - stop the throwaway redis-server started by ops/redis/start.sh.
#
# Usage: ops/redis/stop.sh [--keep]
#
# Stops only the instance whose pid is in our pidfile (never any other redis), then
# removes its directory unless --keep is given. Succeeds when nothing is running.
#
# Environment: FLASHSALE_REDIS_PORT, FLASHSALE_REDIS_DIR as for start.sh.
set -euo pipefail
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=redis
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

keep=0
case ${1:-} in
-h | --help)
	usage_from_header "${BASH_SOURCE[0]}"
	exit 0
	;;
--keep) keep=1 ;;
"") ;;
*) die "unexpected argument: $1 (see --help)" ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir=$(abs_path "${FLASHSALE_REDIS_DIR:-$repo/.services/redis}")
pidfile=$dir/redis.pid

if [[ -f $pidfile ]]; then
	pid=$(cat "$pidfile")
	if pid_alive "$pid" && pid_cmdline_has "$pid" redis-server; then
		kill_bounded "$pid" 15 "redis-server" || die "could not stop redis-server (pid $pid)"
	else
		log "no live redis-server for $pidfile"
	fi
else
	log "not running (no $pidfile)"
fi
if ((keep == 0)) && [[ -d $dir ]]; then
	rm -rf "$dir"
fi
log "stopped"
