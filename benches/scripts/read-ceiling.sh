#!/usr/bin/env bash
# benches/scripts/read-ceiling.sh - what a read and a refused attempt cost, against the
# HTTP ceiling of the same binary (issue 11 "Reads", issue 12 "the sold-out crowd").
#
# Usage: benches/scripts/read-ceiling.sh [--rounds N] [--secs S] [--bin PATH] [--kafka]
#   --rounds N  alternating rounds [3]
#   --secs S    seconds per wrk run [8]
#   --bin PATH  the flashsale binary [$CARGO_TARGET_DIR/release/flashsale, built if missing]
#   --kafka     serve in Kafka mode (`serve --kafka`, fresh topics under a new prefix) on
#               the broker of .services.env (`make services-up`) instead of embedded
#
# Starts one server (embedded: a temporary data dir; 127.0.0.1:${FLASHSALE_BENCH_PORT:-18800},
# per-user rate limit off), creates a sale of one SKU of 1 unit and holds it, then per
# round runs `wrk -t2 -c64` on, in turn:
#   health   GET /health (the HTTP ceiling of the binary)
#   avail    GET /api/v1/products/SOLDOUT/availability
#   soldout  POST /api/v1/reservations on the sold-out SKU, one user retrying
#            (benches/scripts/wrk-reserve.lua FLASHSALE_WRK_MODE=retry: a static request,
#            so the generator costs what it costs for the reads) - every answer a 409
#            Out of Stock
# and prints requests/s and the server's CPU µs per request (from /proc), then the
# medians, and the medians of the per-round ratios avail/health and soldout/avail (the
# figures to quote: this box drifts by ±15 % between rounds), and of the CPU ratio
# (availability µs / sold-out µs: the rate ratio with wrk's share of the two cores
# taken out). Run it on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=3 SECS=8 BIN= KAFKA=
while (($#)); do
	case $1 in
	--kafka) KAFKA=1; shift ;;
	--rounds) ROUNDS=$2; shift 2 ;;
	--secs) SECS=$2; shift 2 ;;
	--bin) BIN=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "read-ceiling: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
done
command -v wrk >/dev/null || { echo "read-ceiling: wrk is missing: apt-get install -y wrk" >&2; exit 2; }
if [[ -z $BIN ]]; then
	export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
	cargo build --release --bin flashsale
	BIN=$CARGO_TARGET_DIR/release/flashsale
fi
PORT=${FLASHSALE_BENCH_PORT:-18800} TOKEN=read-ceiling SKU=SOLDOUT
DATA=$(mktemp -d)
if [[ -n $KAFKA ]]; then
	# Read, not exported: the server is given the broker by flag.
	BROKERS=$( (set +u; [[ -f .services.env ]] && . ./.services.env; echo "${FLASHSALE_KAFKA:-}"))
	[[ -n $BROKERS ]] || { echo "read-ceiling: --kafka needs FLASHSALE_KAFKA in .services.env: run make services-up" >&2; exit 2; }
	MODE=(--kafka "$BROKERS" --prefix "read-ceiling-$(date +%s)-$$.")
else
	MODE=(--embedded --data-dir "$DATA")
fi
echo "read-ceiling: serve ${MODE[*]}"
FLASHSALE_RATE_LIMIT_PER_USER=0 "$BIN" serve "${MODE[@]}" --partitions 8 \
	--listen "127.0.0.1:$PORT" --admin-token "$TOKEN" --log warn >"$DATA.log" 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA" "$DATA.log"' EXIT
for _ in $(seq 300); do
	[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/ready") == 200 ]] && break
	kill -0 $PID 2>/dev/null || { echo "read-ceiling: the server stopped:" >&2; tail -5 "$DATA.log" >&2; exit 1; }
	sleep 0.2
done
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/ready") == 200 ]] ||
	{ echo "read-ceiling: the server was not ready within 60 s:" >&2; tail -5 "$DATA.log" >&2; exit 1; }
now=$(date -u -d '-1 sec' +%Y-%m-%dT%H:%M:%SZ) end=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
	-d "{\"name\":\"read ceiling\",\"startsAt\":\"$now\",\"endsAt\":\"$end\",\"reservationTtlSeconds\":3600,\"products\":[{\"skuId\":\"$SKU\",\"name\":\"Hot\",\"description\":\"d\",\"category\":\"Bench\",\"basePrice\":100.0,\"flashSalePrice\":79.99,\"totalInventory\":1,\"perUserLimit\":1,\"imageUrl\":\"\"}]}" \
	"http://127.0.0.1:$PORT/api/v1/admin/sales"
curl -sf -o /dev/null -H 'Content-Type: application/json' \
	-d "{\"userId\":\"first\",\"skuId\":\"$SKU\",\"quantity\":1}" "http://127.0.0.1:$PORT/api/v1/reservations"
LUA=benches/scripts/wrk-reserve.lua
declare -A RATE CPU
RATIO_AH= RATIO_SA= RATIO_CPU=
one() { # name, env mode, url
	local c0 c1 out n
	c0=$(awk '{print $14+$15}' /proc/$PID/stat)
	out=$(FLASHSALE_WRK_MODE=$2 FLASHSALE_WRK_SKU=$SKU FLASHSALE_WRK_TAG=retrier \
		wrk -t2 -c64 -d"${SECS}s" --timeout 10s -s $LUA "$3")
	c1=$(awk '{print $14+$15}' /proc/$PID/stat)
	n=$(awk '/requests in/ {print $1}' <<<"$out")
	local rate cpu
	rate=$(awk '/Requests\/sec/ {printf "%d", $2}' <<<"$out")
	cpu=$(( (c1 - c0) * 10000 / (n > 0 ? n : 1) ))
	RATE[$1]+="$rate " CPU[$1]+="$cpu "
	printf '  %-8s %9s req/s  %4s µs CPU/req\n' "$1" "$rate" "$cpu"
}
for r in $(seq "$ROUNDS"); do
	echo "round $r ($(cut -d' ' -f1-3 /proc/loadavg) load)"
	one health get "http://127.0.0.1:$PORT/health"
	one avail get "http://127.0.0.1:$PORT/api/v1/products/$SKU/availability"
	one soldout retry "http://127.0.0.1:$PORT"
	set -- ${RATE[health]} && h=${!#}
	set -- ${RATE[avail]} && a=${!#}
	set -- ${RATE[soldout]} && s=${!#}
	RATIO_AH+="$(awk -v a="$a" -v h="$h" 'BEGIN {printf "%.3f", a/h}') "
	RATIO_SA+="$(awk -v a="$a" -v s="$s" 'BEGIN {printf "%.3f", s/a}') "
	set -- ${CPU[avail]} && a=${!#}
	set -- ${CPU[soldout]} && s=${!#}
	RATIO_CPU+="$(awk -v a="$a" -v s="$s" 'BEGIN {printf "%.3f", a/s}') "
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
h=$(median "${RATE[health]}") a=$(median "${RATE[avail]}") s=$(median "${RATE[soldout]}")
echo "medians of $ROUNDS: health $h/s ($(median "${CPU[health]}") µs), availability $a/s ($(median "${CPU[avail]}") µs), sold-out attempts $s/s ($(median "${CPU[soldout]}") µs)"
echo "median of the per-round ratios (each round's three runs back to back, so slow drift cancels): availability / health $(median "$RATIO_AH")x; sold-out attempts / availability $(median "$RATIO_SA")x; CPU per availability read / per sold-out attempt $(median "$RATIO_CPU")x"
