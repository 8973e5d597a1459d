#!/usr/bin/env bash
# ops/redis/start.sh - start a throwaway redis-server on 127.0.0.1 for the benchmark baseline.
#
# Usage: ops/redis/start.sh
#
# Installs Debian's redis-server (apt-get) when it is missing, then starts it bound to
# 127.0.0.1 only, with persistence off, in a throwaway directory. Idempotent: when our
# instance already answers, it just prints the URL again. Prints exactly one line on
# stdout, the URL (redis://127.0.0.1:PORT/); every message goes to stderr.
#
# Environment:
#   FLASHSALE_REDIS_PORT  TCP port on 127.0.0.1 (default 16379)
#   FLASHSALE_REDIS_DIR   working directory (default <repo>/.services/redis)
#
# Stop it with ops/redis/stop.sh (same environment).
set -euo pipefail
# shellcheck disable=SC2034 # read by lib.sh
OPS_NAME=redis
# shellcheck source-path=SCRIPTDIR source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

case ${1:-} in
-h | --help)
	usage_from_header "${BASH_SOURCE[0]}"
	exit 0
	;;
"") ;;
*) die "unexpected argument: $1 (see --help)" ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
port=${FLASHSALE_REDIS_PORT:-16379}
dir=$(abs_path "${FLASHSALE_REDIS_DIR:-$repo/.services/redis}")
if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
	die "FLASHSALE_REDIS_PORT is not a port: $port"
fi
url="redis://127.0.0.1:$port/"

install_redis() {
	log "redis-server not found: installing Debian's package"
	# Keep the package's post-install from starting a system-wide redis on 6379: the
	# standard Debian hook for that is a policy-rc.d that answers 101. Only add ours
	# (and remove it after) when the machine has none.
	local policy=/usr/sbin/policy-rc.d added=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod +x "$policy"
		added=1
	fi
	local rc=0
	{ DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } >&2 || rc=$?
	((added == 0)) || rm -f "$policy"
	((rc == 0)) || die "apt-get install redis-server failed (exit $rc)"
}

command -v redis-server >/dev/null 2>&1 || install_redis
command -v redis-cli >/dev/null 2>&1 || die "redis-cli missing (package redis-tools)"

ping_ok() { [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]]; }

mkdir -p "$dir"
pidfile=$dir/redis.pid
if [[ -f $pidfile ]] && pid_alive "$(cat "$pidfile")" && pid_cmdline_has "$(cat "$pidfile")" redis-server; then
	if ping_ok; then
		log "already running (pid $(cat "$pidfile")) on port $port"
		echo "$url"
		exit 0
	fi
	die "pid $(cat "$pidfile") from $pidfile is alive but does not answer on port $port"
fi
rm -f "$pidfile"
port_open "$port" && die "port $port on 127.0.0.1 is taken by another process (set FLASHSALE_REDIS_PORT)"

log "starting redis-server on 127.0.0.1:$port (dir $dir)"
# Throwaway: no RDB snapshots, no AOF. protected-mode stays on; we only bind loopback.
redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" \
	--daemonize yes --pidfile "$pidfile" --logfile "$dir/redis.log" \
	--save "" --appendonly no --protected-mode yes --maxclients 4096 >&2 ||
	die "redis-server failed to start; see $dir/redis.log"

wait_until 20 "redis on port $port" ping_ok || {
	tail -n 20 "$dir/redis.log" >&2 || true
	die "redis-server did not answer on port $port"
}
log "ready (pid $(cat "$pidfile" 2>/dev/null || echo '?'))"
echo "$url"
