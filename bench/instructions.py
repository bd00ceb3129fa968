#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: a measure of a filter's
cost that does not depend on how loaded the machine is (wall-clock CPU
figures on a shared 2-core VM swing by ±20 % from run to run; instruction
counts repeat to well under 1 %).

Runs one Envoy (`--concurrency 1`) under `valgrind --tool=callgrind` with the
benchmark's config for one variant (bench/gen.py), sends N sequential GETs on
one keep-alive connection (the same paths as the closed loop), and reports
the worker thread's instructions per request. Ticks run during the
measurement too (and under valgrind a run takes seconds), so the worker's
idle instruction rate is measured afterwards and subtracted; it is reported
as well: it is what the root context's tick costs when nothing is due.

    python3 bench/instructions.py --envoy ENVOY_BINARY --variant edge-guard \
        --wasm target/wasm32-wasip1/release/edge_guard.wasm [--n 400] [--histogram]

ENVOY_BINARY is the real binary, not the venv's Python launcher (valgrind
must run Envoy itself): .venv/lib/python3*/site-packages/envoy/_bin/envoy.
Health probes are spaced to 60 s (with the same fail-fast policy): under
valgrind a 2 s probe timeout would mark every cluster unhealthy.
Needs valgrind (Debian's `valgrind` package). Ends the Envoy it started.
"""

import argparse
import glob
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envoy", required=True)
    p.add_argument("--variant", choices=["none", "passthrough", "edge-guard"], required=True)
    p.add_argument("--wasm", default="")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--histogram", action="store_true", help="metrics.request_duration on")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="eg-instructions-")
    policy = gen.policy(50, request_duration=args.histogram)
    policy["health_checks"] = dict(policy["health_checks"], interval="60s", timeout="60s")
    flt = gen.variant_filter(args.variant, args.wasm, args.wasm, policy)
    config = os.path.join(work, "envoy.json")
    with open(config, "w") as f:
        json.dump(gen.envoy_config(flt), f)
    admin_file = os.path.join(work, "admin.txt")
    out = os.path.join(work, "cg")
    cmd = ["valgrind", "--tool=callgrind", "--smc-check=all", "--separate-threads=yes",
           "--dump-line=no", f"--callgrind-out-file={out}.%p",
           args.envoy, "-c", config, "--concurrency", "1", "--admin-address-path", admin_file,
           "--use-dynamic-base-id", "--disable-hot-restart", "-l", "warning"]
    log = open(os.path.join(work, "envoy.log"), "w")
    envoy = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        print(json.dumps(measure(envoy, admin_file, out, args)))
    finally:
        envoy.send_signal(signal.SIGTERM)
        try:
            envoy.wait(120)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait()


def get(host, port, path):
    c = http.client.HTTPConnection(host, port, timeout=1200)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return body


def measure(envoy, admin_file, out, args):
    started = time.time()
    while not (os.path.exists(admin_file) and open(admin_file).read().strip()):
        if envoy.poll() is not None or time.time() - started > 1800:
            raise SystemExit(f"Envoy did not start; see {os.path.dirname(out)}/envoy.log")
        time.sleep(1)
    host, port = open(admin_file).read().strip().rsplit(":", 1)
    while True:
        listeners = get(host, int(port), "/listeners?format=json").decode()
        m = re.search(r'"edge".*?"port_value":\s*(\d+)', listeners, re.S)
        if m:
            break
        time.sleep(1)
    conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=1200)
    paths = gen.request_paths()

    def run(n):
        for i in range(n):
            conn.request("GET", paths[i % len(paths)], headers={"host": "bench.local"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise SystemExit(f"GET {paths[i % len(paths)]}: {r.status}")

    def control(flag):
        subprocess.run(["callgrind_control", flag, str(envoy.pid)], check=True, capture_output=True)

    def per_thread():
        """Instructions per thread in the newest dump."""
        files = glob.glob(f"{out}.{envoy.pid}.*")
        last = max(int(re.match(r".*\.(\d+)-\d+$", f).group(1)) for f in files)
        counts = {}
        for f in files:
            m = re.match(r".*\.(\d+)-(\d+)$", f)
            if int(m.group(1)) != last:
                continue
            text = open(f).read()
            s = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
            counts[m.group(2)] = int(s.group(1)) if s else 0
        return counts

    run(100)  # warm-up: first-request allocations, lazily compiled code
    time.sleep(0.5)
    control("-z")
    t0 = time.time()
    run(args.n)
    control("-d")
    t_run = time.time() - t0
    time.sleep(0.5)
    busy = per_thread()
    control("-z")
    t1 = time.time()
    time.sleep(3.0)
    control("-d")
    t_idle = time.time() - t1
    time.sleep(0.5)
    idle = per_thread()
    worker = max(busy, key=busy.get)
    idle_rate = idle.get(worker, 0) / t_idle
    return {
        "variant": args.variant + (" + histogram" if args.histogram else ""),
        "wasm": args.wasm,
        "requests": args.n,
        "instructions_per_request": round((busy[worker] - idle_rate * t_run) / args.n),
        "idle_instructions_per_s": round(idle_rate),
        "uncorrected_per_request": round(busy[worker] / args.n),
        "run_s": round(t_run, 1),
    }


if __name__ == "__main__":
    main()
