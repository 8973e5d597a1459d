#!/usr/bin/env bash
# What trace export costs (issue 7): the same scenario against two embedded servers
# running side by side in one run, one exporting traces (1 % sampled, OTLP/HTTP) to a
# local sink, one with export off; rounds alternate off/on so drift hits both alike.
#
#   benches/scripts/bench-telemetry.sh            # 3 rounds each, 1 % sampling
#   ROUNDS=5 WRITE_RATE=600 SAMPLE=0.01 benches/scripts/bench-telemetry.sh
#   BIN_DIR=<dir> uses prebuilt flashsale and flashsale-bench; KEEP=1 keeps the reports.
#
# Per round and target: a steady open-loop run (capacity.toml's hot SKU at WRITE_RATE
# reservations/s plus READS availability reads per reservation, SECS seconds) while the
# server's CPU time is read from /proc: CPU per answered request is what caps throughput
# on a CPU-bound box, and unlike find-max it is stable on a shared machine. Then the
# closed-loop availability-read ceiling (reads are traced too), also as a share of the
# untraced /health ceiling of the same server. Prints each round and the medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/flashsale-target}"
ROUNDS="${ROUNDS:-3}"
SAMPLE="${SAMPLE:-0.01}"
B="${BIN_DIR:-$CARGO_TARGET_DIR/release}"
if [[ -z "${BIN_DIR:-}" ]]; then
    # `flashsale` from whichever workspace crate holds it (it is moving between crates).
    cargo build --release -p flashsale-bench --bin flashsale-bench
    cargo build --release --bin flashsale
fi
tmp="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "${KEEP:-}" ]]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A local OTLP/HTTP sink: accepts POST /v1/traces, counts requests and bytes, answers an
# empty ExportTraceServiceResponse.
SINK_PORT="$(free_port)"
python3 - "$SINK_PORT" "$tmp/sink.txt" <<'EOF' &
import http.server, sys
port, out = int(sys.argv[1]), sys.argv[2]
stats = {"requests": 0, "bytes": 0}
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        stats["requests"] += 1; stats["bytes"] += n
        open(out, "w").write(f'{stats["requests"]} requests, {stats["bytes"]} bytes\n')
        self.send_response(200); self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
EOF
pids+=($!)

start() { # name port extra...
    local name="$1" port="$2"; shift 2
    "$B/flashsale" serve --listen "127.0.0.1:$port" --admin-token bench-admin-token \
        --data-dir "$tmp/$name" --partitions 8 --log warn "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
    pids+=($!)
    LAST_PID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return; sleep 0.1; done
    echo "server $name did not start"; cat "$tmp/$name.err"; exit 2
}
OFF_PORT="$(free_port)"; ON_PORT="$(free_port)"
start off "$OFF_PORT"
OFF_PID="$LAST_PID"
start on "$ON_PORT" --otlp-endpoint "http://127.0.0.1:$SINK_PORT" --trace-sample-ratio "$SAMPLE"
ON_PID="$LAST_PID"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # name port pid round
    local name="$1" port="$2" pid="$3" r="$4"
    local before after
    before="$(cpu_ticks "$pid")"
    "$B/flashsale-bench" --target "http://127.0.0.1:$port" --label "trace-$name" \
        --scenario benches/scenarios/capacity.toml --write-rate "$WRITE_RATE" --reads-per-write "$READS" \
        --duration-secs "$SECS" --warmup-secs 2 --sku-prefix "T$name$r" --progress off \
        --json-out "$tmp/$name-$r.json" >"$tmp/$name-$r.txt" 2>&1 || true
    after="$(cpu_ticks "$pid")"
    echo "$((after - before))" >"$tmp/$name-$r.cpu"
    "$B/flashsale-bench" --target "http://127.0.0.1:$port" --label "trace-$name" \
        --products 1 --inventory 10 --users 10 --write-rate 1 --reads-per-write 0 --duration-secs 1 --warmup-secs 0 \
        --sku-prefix "R$name$r" --read-ceiling-secs "$CEILING_SECS" --progress off \
        --json-out "$tmp/$name-$r-ceiling.json" >"$tmp/$name-$r-ceiling.txt" 2>&1 || true
    python3 - "$tmp" "$name" "$r" <<'EOF2'
import json, sys
tmp, name, r = sys.argv[1:]
rep = json.load(open(f"{tmp}/{name}-{r}.json"))
ticks = int(open(f"{tmp}/{name}-{r}.cpu").read())
ops = rep.get("operations") or rep.get("ops") or {}
answered = sum(o.get("ok", 0) + (sum(o["rejected"].values()) if isinstance(o.get("rejected"), dict) else o.get("rejected", 0)) for o in ops.values())
res = ops.get("reserve", {}) if isinstance(ops, dict) else {}
rc = json.load(open(f"{tmp}/{name}-{r}-ceiling.json")).get("read_ceiling") or {}
us = ticks * 10000 / answered if answered else float("nan")
print(f"round {r} trace-{name:<3}  answered {answered}  server CPU {ticks / 100:.2f} s = {us:.1f} us/request  "
      f"reserve p50 {res.get('latency_ms', {}).get('p50')} ms p99 {res.get('latency_ms', {}).get('p99')} ms  "
      f"read ceiling: availability {rc.get('availability_per_s', 0):.0f}/s, /health {rc.get('health_per_s', 0):.0f}/s")
EOF2
}
WRITE_RATE="${WRITE_RATE:-400}"
READS="${READS:-4}"
SECS="${SECS:-10}"
CEILING_SECS="${CEILING_SECS:-3}"
for r in $(seq "$ROUNDS"); do
    run off "$OFF_PORT" "$OFF_PID" "$r"
    run on "$ON_PORT" "$ON_PID" "$r"
done
python3 - "$tmp" "$ROUNDS" <<'EOF2'
import json, sys, statistics
tmp, rounds = sys.argv[1], int(sys.argv[2])
def per_request(name, r):
    rep = json.load(open(f"{tmp}/{name}-{r}.json"))
    ops = rep.get("operations") or rep.get("ops") or {}
    answered = sum(o.get("ok", 0) + (sum(o["rejected"].values()) if isinstance(o.get("rejected"), dict) else o.get("rejected", 0)) for o in ops.values())
    return int(open(f"{tmp}/{name}-{r}.cpu").read()) * 10000 / answered
def ceiling(name, r, key):
    return (json.load(open(f"{tmp}/{name}-{r}-ceiling.json")).get("read_ceiling") or {}).get(key, float("nan"))
rs = range(1, rounds + 1)
off = [per_request("off", r) for r in rs]; on = [per_request("on", r) for r in rs]
m_off, m_on = statistics.median(off), statistics.median(on)
print(f"server CPU per answered request (median of {rounds}): off {m_off:.1f} us, on {m_on:.1f} us: "
      f"throughput cost at saturation ~ {100 * (1 - m_off / m_on):.1f} %")
a_off = [ceiling("off", r, "availability_per_s") for r in rs]; a_on = [ceiling("on", r, "availability_per_s") for r in rs]
n_off = [ceiling("off", r, "ratio") for r in rs]; n_on = [ceiling("on", r, "ratio") for r in rs]
print(f"availability read ceiling (median): off {statistics.median(a_off):.0f}/s, on {statistics.median(a_on):.0f}/s "
      f"(on/off {statistics.median(a_on) / statistics.median(a_off):.3f}); as a share of /health: off {statistics.median(n_off):.3f}, "
      f"on {statistics.median(n_on):.3f} (on/off {statistics.median(n_on) / statistics.median(n_off):.3f})")
EOF2
echo "sink: $(cat "$tmp/sink.txt" 2>/dev/null || echo 'no export received')"
