# ops/lib.sh - helpers shared by the ops/ scripts. Source it; do not run it.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
#
# Every message goes to stderr; stdout is kept for the one result a script prints
# (a bootstrap address, a URL).

# shellcheck shell=bash

OPS_NAME=${OPS_NAME:-$(basename "${BASH_SOURCE[1]:-ops}")}

log() { printf '[%s] %s\n' "$OPS_NAME" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$OPS_NAME" "$*" >&2; }
die() {
	printf '[%s] ERROR: %s\n' "$OPS_NAME" "$*" >&2
	exit 1
}

# Prints the comment block at the top of the calling script (the usage text).
usage_from_header() {
	local file=$1
	sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$file" >&2
}

# port_open PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 0.2 s until it succeeds or the
# deadline passes (returns 1 then).
wait_until() {
	local secs=$1 what=$2
	shift 2
	local deadline=$((SECONDS + secs))
	while ! "$@"; do
		if ((SECONDS >= deadline)); then
			warn "gave up after ${secs}s waiting for: $what"
			return 1
		fi
		sleep 0.2
	done
}

# pid_alive PID: true if PID exists (and is not a zombie).
pid_alive() {
	local pid=$1
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	local state
	state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
	[[ $state != Z ]]
}

# pid_cmdline_has PID STRING: true if the command line of PID contains STRING.
pid_cmdline_has() {
	local pid=$1 needle=$2
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

# kill_bounded PID SECONDS DESCRIPTION: SIGTERM, wait up to SECONDS, then SIGKILL.
kill_bounded() {
	local pid=$1 secs=$2 what=$3
	pid_alive "$pid" || return 0
	log "stopping $what (pid $pid, SIGTERM, up to ${secs}s)"
	kill -TERM "$pid" 2>/dev/null || true
	local deadline=$((SECONDS + secs))
	while pid_alive "$pid"; do
		if ((SECONDS >= deadline)); then
			warn "$what (pid $pid) still alive after ${secs}s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			local kdeadline=$((SECONDS + 10))
			while pid_alive "$pid"; do
				((SECONDS < kdeadline)) || {
					warn "pid $pid survived SIGKILL"
					return 1
				}
				sleep 0.1
			done
			return 0
		fi
		sleep 0.2
	done
	return 0
}

# abs_path PATH: absolute path, without requiring it to exist.
abs_path() {
	case $1 in
	/*) printf '%s\n' "$1" ;;
	*) printf '%s/%s\n' "$(pwd)" "$1" ;;
	esac
}
