#!/usr/bin/env python3
"""Failover windows of Kafka mode (issue 13): 2 engines, 1 gateway, 8 SKUs on 8
partitions, each SKU asked (a new user's hold) every ~20 ms by its own thread; then
one engine is killed (`kill -9`) or stopped (SIGTERM, as a rolling restart does), or the
broker is paused (SIGSTOP for --pause-ms, then SIGCONT: a broker starved of CPU or in a
long GC pause) while both engines live.

Prints, per SKU, the window from the fault to its first 201 again (kill -9) and the
number of 503 answers (SIGTERM), then the worst window and the total of 503s.

Usage (services up, `set -a; . ./.services.env; set +a`, `cargo build --release --bin
flashsale` or a debug build):
    python3 benches/scripts/failover.py --fault kill9   [--bin target/release/flashsale]
    python3 benches/scripts/failover.py --fault sigterm
    python3 benches/scripts/failover.py --fault broker-pause --broker-pid PID [--pause-ms 1500]
(broker-pause: a broker of your own, not a shared one: every client of it stalls; the
engines' `--group-protocol` is read from FLASHSALE_GROUP_PROTOCOL, consumer by default:
its session is the broker's, so use a broker started by ops/kafka/start.sh.) Also
printed: how many times an engine let its partitions go because the group session was
lost.
Uses fresh topics (a unique prefix, left on the broker: `make services-down` removes
them) and a temporary directory (its path is printed); stops what it started.
Standard library only.
"""

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

SKUS = [f"FAILOVER{i}" for i in range(8)]
TOKEN = "failover-bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(conn, method, path, body=None, headers=None):
    h = {"content-type": "application/json"}
    h.update(headers or {})
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fault", choices=["kill9", "sigterm", "broker-pause"], required=True)
    ap.add_argument("--broker-pid", type=int, help="broker-pause: the broker's pid")
    ap.add_argument("--pause-ms", type=float, default=1500.0, help="broker-pause: how long")
    ap.add_argument("--bin", default=os.environ.get("FLASHSALE_BIN", "target/release/flashsale"),
                    help="the flashsale binary (default target/release/flashsale, or $FLASHSALE_BIN)")
    ap.add_argument("--kafka", default=os.environ.get("FLASHSALE_KAFKA"),
                    help="brokers (default $FLASHSALE_KAFKA from .services.env)")
    ap.add_argument("--every-ms", type=float, default=20.0, help="gap between two asks of one SKU")
    ap.add_argument("--before-s", type=float, default=5.0, help="load before the fault")
    ap.add_argument("--after-s", type=float, default=10.0, help="load after the fault")
    a = ap.parse_args()
    if a.fault == "broker-pause" and not a.broker_pid:
        sys.exit("--fault broker-pause needs --broker-pid")
    if not a.kafka:
        sys.exit("no --kafka and no FLASHSALE_KAFKA: run `make services-up` and load .services.env")
    if not os.path.exists(a.bin):
        sys.exit(f"no binary at {a.bin}: `cargo build --release --bin flashsale` or pass --bin")
    prefix = f"flashsale-failover-{uuid.uuid4().hex[:8]}."
    tmp = tempfile.mkdtemp(prefix="flashsale-failover-")
    common = ["--kafka", a.kafka, "--topic-prefix", prefix]
    env = dict(os.environ, FLASHSALE_LOG="info,librdkafka=warn")
    env.pop("FLASHSALE_POSTGRES", None)
    procs = []

    def spawn(name, args):
        log = open(os.path.join(tmp, f"{name}.log"), "w")
        p = subprocess.Popen([a.bin] + args, stdout=subprocess.DEVNULL, stderr=log, env=env)
        procs.append(p)
        return p

    try:
        subprocess.run([a.bin, "topics", "create", "--partitions", "8"] + common, check=True,
                       stdout=subprocess.DEVNULL, env=env)
        engines = [spawn(f"engine{i}", ["engine", "--engine-group", prefix + "engine",
                                        "--data-dir", os.path.join(tmp, "engines")] + common)
                   for i in range(2)]
        port = free_port()
        spawn("gateway", ["gateway", "--listen", f"127.0.0.1:{port}", "--admin-token", TOKEN,
                          "--rate-limit-per-user", "0"] + common)
        conn = None
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                if request(conn, "GET", "/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        sale = {"name": "Failover bench", "startsAt": "2020-01-01T00:00:00Z", "endsAt": "2099-01-01T00:00:00Z",
                "reservationTtlSeconds": 120,
                "products": [{"skuId": s, "name": s, "basePrice": 10.0, "flashSalePrice": 5.0,
                              "totalInventory": 10_000_000, "perUserLimit": 1} for s in SKUS]}
        while True:
            st, body = request(conn, "POST", "/api/v1/admin/sales", sale, {"authorization": f"Bearer {TOKEN}"})
            if st == 201:
                break
            if time.time() > deadline:
                sys.exit(f"cannot create the sale: {st} {body[:200]!r}")
            time.sleep(0.5)
        time.sleep(3)  # both engines settled in the group

        stop = threading.Event()
        fault_at = [None]
        results = {s: {"first_201_after": None, "503": 0, "asked": 0} for s in SKUS}

        def asker(sku):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            n = 0
            while not stop.is_set():
                t0 = time.time()
                n += 1
                try:
                    st, _ = request(c, "POST", "/api/v1/reservations",
                                    {"userId": f"{sku}-{uuid.uuid4().hex[:12]}", "skuId": sku, "quantity": 1})
                except (OSError, http.client.HTTPException):
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    st = 0
                r = results[sku]
                r["asked"] += 1
                f = fault_at[0]
                if f is not None:
                    if st == 503:
                        r["503"] += 1
                    if st == 201 and r["first_201_after"] is None and t0 >= f:
                        r["first_201_after"] = time.time() - f
                gap = a.every_ms / 1000 - (time.time() - t0)
                if gap > 0:
                    time.sleep(gap)

        threads = [threading.Thread(target=asker, args=(s,), daemon=True) for s in SKUS]
        for t in threads:
            t.start()
        time.sleep(a.before_s)
        fault_at[0] = time.time()
        if a.fault == "kill9":
            engines[0].send_signal(signal.SIGKILL)
        elif a.fault == "sigterm":
            engines[0].send_signal(signal.SIGTERM)
        else:
            os.kill(a.broker_pid, signal.SIGSTOP)
            try:
                time.sleep(a.pause_ms / 1000)
            finally:
                os.kill(a.broker_pid, signal.SIGCONT)
        time.sleep(a.after_s)
        stop.set()
        for t in threads:
            t.join()
        worst = 0.0
        for s in SKUS:
            r = results[s]
            w = r["first_201_after"]
            print(f"{s}: asked {r['asked']}, 503 after the fault {r['503']}, first 201 after the fault "
                  + (f"{w * 1000:.0f} ms" if w is not None else "never"))
            worst = max(worst, w if w is not None else float("inf"))
        print(f"fault {a.fault}: worst per-SKU window {worst * 1000:.0f} ms; "
              f"503 answers {sum(r['503'] for r in results.values())}")
        lost = 0
        for i in range(2):
            with open(os.path.join(tmp, f"engine{i}.log"), errors="replace") as f:
                lost += sum("session was lost" in line for line in f)
        print(f"group sessions lost (an engine let its partitions go): {lost}")
        print(f"logs: {tmp}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
