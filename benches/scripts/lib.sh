# benches/scripts/lib.sh - the shell helpers the bench scripts share (sourced, never run):
# messages, --help from the script's header, processes, ports, wrk, release binaries and
# CPU ticks from /proc. The sourcing script sets NAME (its name in messages) first; the
# helpers that need them read REPO, tsv (record) and kafka (broker_pids).
# shellcheck shell=bash

log() { printf '[%s] %s\n' "$NAME" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$NAME" "$*" >&2; }
# Set-up failures exit 2, so that 1 keeps meaning "correctness violations".
fail() {
	printf '[%s] ERROR: %s\n' "$NAME" "$*" >&2
	exit 2
}
# usage: the script's header comment (from its second line to the first non-comment).
usage() { sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$0"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
abs_path() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$(pwd)" "$1" ;; esac }
alive() { kill -0 "$1" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }
# stop_pid PID: SIGTERM, up to 15 s, then SIGKILL. Only ever called on pids the script
# started.
stop_pid() {
	local pid=$1 i
	alive "$pid" || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 75; i++)); do
		alive "$pid" || return 0
		sleep 0.2
	done
	warn "pid $pid still alive after 15 s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
}

# free_port: the first port from next_port on (the script sets it) that nothing listens on.
free_port() {
	while port_open "$next_port"; do next_port=$((next_port + 1)); done
	echo "$next_port"
	next_port=$((next_port + 1))
}
http_ok() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$1$2") == 200 ]]; }
# record WHAT FIGURE VALUE: one line of the results' measurements.tsv ($tsv).
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$tsv"; }

# ensure_wrk: installs Debian's wrk when it is missing.
ensure_wrk() {
	command -v wrk >/dev/null && return 0
	log "wrk not found: installing Debian's package"
	if ((EUID == 0)); then
		apt-get install -y wrk >&2 || { apt-get update >&2 && apt-get install -y wrk >&2; } ||
			fail "could not install wrk"
	else
		sudo apt-get install -y wrk >&2 || fail "could not install wrk (apt-get install wrk)"
	fi
}

# release_binaries: sets BENCH (flashsale-bench) and FLASHSALE (FLASHSALE_BIN, else the
# release build in $CARGO_TARGET_DIR) and builds both (nice, release) unless
# FLASHSALE_BENCH_NO_BUILD=1; fails when one is missing.
release_binaries() {
	local bin=$CARGO_TARGET_DIR/release b
	BENCH=$bin/flashsale-bench
	FLASHSALE=${FLASHSALE_BIN:+$(abs_path "$FLASHSALE_BIN")}
	FLASHSALE=${FLASHSALE:-$bin/flashsale}
	if [[ ${FLASHSALE_BENCH_NO_BUILD:-} != 1 ]]; then
		log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
		(cd "$REPO" && nice -n 10 cargo build --release -p flashsale-bench --bins) >&2 ||
			fail "cargo build (bench) failed"
		if [[ -z ${FLASHSALE_BIN:-} ]]; then
			# Whichever workspace crate holds the `flashsale` binary.
			(cd "$REPO" && nice -n 10 cargo build --release --bin flashsale) >&2 ||
				fail "cargo build --bin flashsale failed"
		fi
	fi
	for b in "$BENCH" "$FLASHSALE"; do
		[[ -x $b ]] || fail "missing binary $b"
	done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk_tck=$(getconf CLK_TCK)
# ticks_of PID...: utime + stime of these processes together (0 for one that is gone).
ticks_of() {
	local t=0 p
	for p in "$@"; do
		[[ -r /proc/$p/stat ]] && t=$((t + $(cpu_ticks "$p")))
	done
	echo "$t"
}
# broker_pids: the Kafka broker(s) of $kafka: the pid listening on each bootstrap port
# (ss), else every `kafka.Kafka` JVM of this machine (ops/kafka/start.sh runs one).
broker_pids() {
	local hp pids=""
	for hp in ${kafka//,/ }; do
		pids+=" $(ss -Hltnp "sport = :${hp##*:}" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' ')"
	done
	pids=$(echo $pids)
	[[ -n $pids ]] || pids=$(pgrep -f kafka.Kafka | tr '\n' ' ' || true)
	echo $pids
}
