#!/usr/bin/env python3
"""edge-guard's benchmark: what the filter costs per request and per WebSocket
connection, side by side with Envoy alone and with a minimal wasm filter.

Started by bench/run.sh (which builds the artefacts and installs the tools);
see BENCHMARKS.md for the method. Owns the runs, their order, the
measurements and the report; never decides what a config looks like
(bench/gen.py does). Every process it starts is ended by PID when it exits,
however it exits.
"""

import argparse
import array
import atexit
import datetime
import json
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "work")
RUN_DIR = os.path.join(WORK, "run")
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "bench.local"

VARIANT_LABEL = {
    "none": "Envoy, no wasm filter",
    "passthrough": "pass-through wasm filter",
    "passthrough-b": "pass-through wasm filter, again (control: a second, identical Envoy)",
    "edge-guard": "edge-guard (50 routes)",
    "eg-10": "edge-guard, 10 routes",
    "eg-1000": "edge-guard, 1,000 routes",
    "eg-10000": "edge-guard, 10,000 routes",
    "eg-hist": "edge-guard (50 routes) + request_duration histogram",
}

# Variants whose policy turns on the opt-in duration histogram.
HISTOGRAM_VARIANTS = {"eg-hist"}

# ---------------------------------------------------------------- processes

STARTED = []


def _cleanup():
    for proc in list(reversed(STARTED)):
        reap(proc)


atexit.register(_cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))


def log(msg):
    print(f"\033[1m==> {msg}\033[0m", file=sys.stderr, flush=True)


def spawn(cmd, cpu=None, **kwargs):
    """Starts a process (pinned to `cpu` when pinning is possible) and
    remembers its PID so that it is ended at exit."""
    if cpu is not None and PIN:
        cmd = ["taskset", "-c", str(cpu)] + cmd  # taskset execs: same PID
    proc = subprocess.Popen(cmd, **kwargs)
    STARTED.append(proc)
    return proc


def reap(proc, timeout=10):
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGCONT)  # a paused Envoy only handles SIGTERM once continued
        except ProcessLookupError:
            pass
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in STARTED:
        STARTED.remove(proc)


def run_tool(cmd, cpu, timeout):
    """Runs a load tool to completion; returns its stdout."""
    proc = spawn(cmd, cpu, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        reap(proc)
        raise RuntimeError(f"{cmd[0]} did not finish within {timeout}s")
    reap(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.strip()[-500:]}")
    return out


def cpus():
    allowed = sorted(os.sched_getaffinity(0))
    return allowed


def cpu_times(cpu):
    """(busy, steal, total) clock ticks of one CPU since boot."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]
                return sum(v[:8]) - idle, v[7], sum(v[:8])
    return 0, 0, 0


class Interference:
    """How much of the Envoy CPU's time went to anything but the measured
    Envoy during a run: other processes (another session's tests) or the
    hypervisor (steal). Reported per run; large values void a run."""

    def __init__(self, envoy):
        self.envoy = envoy
        self.cpu_before = cpu_times(ENVOY_CPU) if PIN else None
        self.envoy_before = envoy.cpu_ticks()

    def share(self):
        if self.cpu_before is None:
            return 0.0
        busy, steal, total = cpu_times(ENVOY_CPU)
        envoy = self.envoy.cpu_ticks() - self.envoy_before
        d_busy = busy - self.cpu_before[0]
        d_total = total - self.cpu_before[2]
        return max(0.0, (d_busy - envoy) / max(d_total, 1))


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


class Envoy:
    """One Envoy process on a generated config; listener `edge` on an
    OS-chosen port, admin on another."""

    def __init__(self, name, config, concurrency):
        self.name = name
        base = os.path.join(RUN_DIR, name)
        self.config_path = base + ".json"
        self.admin_path = base + ".admin"
        self.log_path = base + ".log"
        for path in (self.admin_path, self.log_path):
            if os.path.exists(path):
                os.remove(path)
        with open(self.config_path, "w") as f:
            json.dump(config, f)
        out = open(base + ".out", "w")
        self.proc = spawn(
            [ENVOY, "-c", self.config_path, "--concurrency", str(concurrency),
             "--disable-hot-restart", "--admin-address-path", self.admin_path,
             "--log-path", self.log_path, "-l", "warn"],
            ENVOY_CPU, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        out.close()
        self.admin = None
        self.port = None

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Envoy {self.name} exited: {self.log_tail()}")
            if self.admin is None and os.path.exists(self.admin_path):
                with open(self.admin_path) as f:
                    self.admin = f.read().strip() or None
            if self.admin:
                try:
                    status, body = http_get(f"http://{self.admin}/ready", 2)
                    if status == 200 and "LIVE" in body:
                        break
                except OSError:
                    pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"Envoy {self.name} not ready within {timeout}s: {self.log_tail()}")
        _, body = http_get(f"http://{self.admin}/listeners?format=json")
        for listener in json.loads(body)["listener_statuses"]:
            if listener["name"] == "edge":
                self.port = listener["local_address"]["socket_address"]["port_value"]
        if not self.port:
            raise RuntimeError(f"Envoy {self.name}: no edge listener")
        return self

    def log_tail(self, lines=15):
        for path in (self.log_path, self.config_path[:-5] + ".out"):
            if os.path.exists(path) and os.path.getsize(path):
                with open(path, errors="replace") as f:
                    return "".join(f.readlines()[-lines:])
        return "(no log)"

    def url(self, path=""):
        return f"http://127.0.0.1:{self.port}{path}"

    def cpu_ticks(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def open_fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stats(self, regex):
        """Counters and gauges whose name matches `regex`: {name: int}."""
        _, body = http_get(f"http://{self.admin}/stats?filter={urllib.request.quote(regex)}")
        values = {}
        for line in body.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                values[name] = int(value)
            else:
                values[name] = value.strip()
        return values

    def pause(self):
        """Freezes an Envoy between its runs: its timers (stats flush, wasm
        ticks) must not steal the measured Envoy's CPU."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        reap(self.proc)


def start_upstream(name):
    proc = spawn([DEMO_UPSTREAM, "--listen", "127.0.0.1:0", "--name", name], LOAD_CPU,
                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                 stderr=open(os.path.join(RUN_DIR, f"{name}.log"), "w"), text=True)
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "LISTENING":
        raise RuntimeError(f"demo-upstream did not start: {line}")
    return proc, int(line[1])


# ---------------------------------------------------------------- statistics

def summary(values):
    """(median, min, max) of a non-empty list."""
    return statistics.median(values), min(values), max(values)


def fmt(values, digits=1, scale=1.0):
    if not values:
        return "n/a"
    med, lo, hi = summary([v * scale for v in values])
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} [{lo:,.{digits}f}–{hi:,.{digits}f}]"


# ---------------------------------------------------------------- HTTP runs

def write_wrk_script(paths):
    path = os.path.join(RUN_DIR, "paths.lua")
    quoted = ", ".join(json.dumps(p) for p in paths)
    with open(path, "w") as f:
        f.write(f"""-- generated by bench/bench.py: cycle through the benchmark's paths
local paths = {{{quoted}}}
local reqs = {{}}
local n = 0
init = function(args)
  for i, p in ipairs(paths) do reqs[i] = wrk.format("GET", p) end
end
request = function()
  n = n + 1
  return reqs[(n % #reqs) + 1]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99)))
end
""")
    return path


def wrk(envoy, seconds, connections):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", WRK_SCRIPT,
           "-H", f"host: {HOST}", envoy.url()]
    watch = Interference(envoy)
    before = envoy.cpu_ticks()
    out = run_tool(cmd, LOAD_CPU, seconds + 30)
    after = envoy.cpu_ticks()
    other = watch.share()
    line = next((l for l in out.splitlines() if l.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out[-500:]}")
    r = json.loads(line[len("WRK_RESULT "):])
    requests = r["requests"]
    errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {
        "rps": requests / (r["duration_us"] / 1e6),
        "requests": requests,
        "cpu_us_per_req": (after - before) / CLK_TCK * 1e6 / max(requests, 1),
        "errors": errors,
        "non_2xx": r["status"],
        "other_cpu_share": other,
    }


def openloop(envoy, rate, seconds, latencies=None):
    """One open-loop run; with `latencies` (a list), every completed request's
    latency in µs is appended to it, so that rounds can be pooled."""
    cmd = [OPENLOOP, "--target", f"127.0.0.1:{envoy.port}", "--rate", str(rate),
           "--duration", str(seconds), "--connections", "64", "--host", HOST]
    lat_path = os.path.join(RUN_DIR, f"{envoy.name}.latencies")
    if latencies is not None:
        cmd += ["--latencies", lat_path]
    for p in gen.request_paths():
        cmd += ["--path", p]
    watch = Interference(envoy)
    before = envoy.cpu_ticks()
    out = run_tool(cmd, LOAD_CPU, seconds + 30)
    after = envoy.cpu_ticks()
    r = json.loads(out.strip().splitlines()[-1])
    r["other_cpu_share"] = watch.share()
    r["cpu_us_per_req"] = (after - before) / CLK_TCK * 1e6 / max(r["completed"], 1)
    r["errors"] = r["errors"] + r["unfinished"]
    if latencies is not None:
        with open(lat_path, "rb") as f:
            latencies.extend(array.array("I", f.read()))
        os.remove(lat_path)
    return r


def pooled_percentiles(latencies):
    """p50, p99, p99.9 and max of every request of every round together."""
    ordered = sorted(latencies)

    def pct(q):
        if not ordered:
            return 0
        return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]

    return {"p50_us": pct(0.5), "p99_us": pct(0.99), "p999_us": pct(0.999),
            "max_us": ordered[-1] if ordered else 0, "requests": len(ordered)}


def check_first_request(envoy):
    try:
        status, _ = http_get(envoy.url(gen.request_paths()[0]))
    except urllib.error.HTTPError as e:
        status = e.code
    if status != 200:
        raise RuntimeError(f"{envoy.name}: first request answered {status}: {envoy.log_tail()}")


def record_problems(section, variant, r):
    if r.get("errors") or r.get("non_2xx"):
        PROBLEMS.append(f"{section}/{variant}: {r.get('errors', 0)} socket errors, "
                        f"{r.get('non_2xx', 0)} non-2xx responses")


def check_edge_guard_stats(envoy, variant):
    """The cross-check ran and agreed, nothing was rejected, metrics were recorded."""
    mismatches = envoy.stats(r"edge_guard\.route\..*\.mismatch$")
    rejected = envoy.stats(r"edge_guard\.rejected\.")
    total_mismatch = sum(v for v in mismatches.values() if isinstance(v, int))
    total_rejected = sum(v for v in rejected.values() if isinstance(v, int))
    histogram = envoy.stats(r"edge_guard\.route\.course\.class\.standard\.request_duration_ms$")
    recorded = any("P50" in str(v) for v in histogram.values())
    if total_mismatch or total_rejected:
        PROBLEMS.append(f"{variant}: {total_mismatch} route mismatches, "
                        f"{total_rejected} edge-guard rejections")
    # The histogram is opt-in (metrics.request_duration): recorded exactly
    # where the policy asks for it.
    wanted = variant in HISTOGRAM_VARIANTS
    if wanted and not recorded:
        PROBLEMS.append(f"{variant}: edge-guard's request_duration_ms histogram recorded nothing")
    if histogram and not wanted:
        PROBLEMS.append(f"{variant}: a request_duration_ms histogram without metrics.request_duration")
    return {"mismatch": total_mismatch, "rejected": total_rejected, "histogram": recorded,
            "histogram_wanted": wanted}


def http_envoy(v, policies, dispatcher_stats=False):
    """The loopback-upstream Envoy of variant `v` (not started yet)."""
    if v in ("none", "passthrough", "passthrough-b"):
        flt = gen.variant_filter(v.removesuffix("-b"), EDGE_GUARD_WASM, PASSTHROUGH_WASM)
    else:
        flt = gen.variant_filter("edge-guard", EDGE_GUARD_WASM, PASSTHROUGH_WASM,
                                 gen.policy(policies[v], request_duration=v in HISTOGRAM_VARIANTS))
    config = gen.envoy_config(flt)
    if dispatcher_stats:
        # Envoy's own event-loop histograms (each loop iteration's duration):
        # what a filter's longest piece of work could add to a request's wait.
        config["enable_dispatcher_stats"] = True
    return Envoy(f"http-{v}" + ("-open" if dispatcher_stats else ""), config, 1)


def start_http_envoys(cfg, envoys, results=None):
    for v, envoy in envoys.items():
        started = time.time()
        envoy.wait_ready()
        check_first_request(envoy)
        wrk(envoy, cfg["warmup_s"], cfg["wrk_connections"])
        if results is not None:
            results.setdefault("startup_s", {})[v] = round(time.time() - started, 1)
            results.setdefault("rss_idle_kib", {})[v] = envoy.rss_kib()
        envoy.pause()


def finish_http_envoys(envoys, policies, results):
    """Every response was a 2xx, edge-guard agreed with Envoy's routing and
    rejected nothing; then stops the Envoys."""
    for v in envoys:
        envoys[v].resume()
    checks = results.setdefault("edge_guard_checks", {})
    for v in envoys:
        if v in policies:
            checks.setdefault(v, check_edge_guard_stats(envoys[v], v))
        codes = envoys[v].stats(r"^http\.edge\.downstream_rq_[1-5]xx$")
        bad = sum(n for name, n in codes.items() if not name.endswith("2xx") and isinstance(n, int))
        if bad:
            PROBLEMS.append(f"{v}: Envoy counted {bad} non-2xx downstream responses")
        envoys[v].stop()


def worker_loop_quantiles(envoy):
    """Cumulative quantiles of the worker's event-loop iteration duration, µs."""
    regex = urllib.request.quote(r"worker_0\.dispatcher\.loop_duration_us$")
    _, body = http_get(f"http://{envoy.admin}/stats?filter={regex}&format=json")
    for h in json.loads(body).get("stats", []):
        hist = h.get("histograms")
        if not hist:
            continue
        for computed in hist.get("computed_quantiles", []):
            return {q: v.get("cumulative") for q, v in zip(hist["supported_quantiles"], computed["values"])}
    return {}


def http_loopback(cfg, results):
    """Closed loop for seven variants (none, pass-through, edge-guard at 50
    routes with and without its histogram, at 10, 1,000 and 10,000 routes),
    then the open loop for none, pass-through twice and edge-guard, on fresh
    Envoys with Envoy's dispatcher stats on."""
    variants = ["none", "passthrough", "edge-guard", "eg-hist", "eg-10", "eg-1000", "eg-10000"]
    policies = {"edge-guard": 50, "eg-hist": 50, "eg-10": 10, "eg-1000": 1000, "eg-10000": 10_000}
    log(f"HTTP, loopback upstream: starting {len(variants)} Envoys (--concurrency 1)")
    envoys = {v: http_envoy(v, policies) for v in variants}
    start_http_envoys(cfg, envoys, results)

    closed = results.setdefault("closed", {v: [] for v in variants})
    for rnd in range(cfg["rounds"]):
        log(f"closed loop, round {rnd + 1}/{cfg['rounds']}")
        for v in variants:
            envoys[v].resume()
            wrk(envoys[v], cfg["run_warmup_s"], cfg["wrk_connections"])
            r = wrk(envoys[v], cfg["closed_s"], cfg["wrk_connections"])
            envoys[v].pause()
            record_problems("closed", v, r)
            closed[v].append(r)
    finish_http_envoys(envoys, policies, results)

    eg_rps = statistics.median(r["rps"] for r in closed["edge-guard"])
    rate = max(100, int(eg_rps * cfg["open_fraction"]) // 100 * 100)
    results["open_rate"] = rate
    # The control, "passthrough-b", is a second Envoy identical to the
    # pass-through one: its ratio to the first is what the run can resolve.
    open_variants = ["none", "passthrough", "passthrough-b", "edge-guard"]
    log(f"HTTP open loop: starting {len(open_variants)} Envoys with dispatcher stats")
    envoys = {v: http_envoy(v, policies, dispatcher_stats=True) for v in open_variants}
    start_http_envoys(cfg, envoys)
    opened = results.setdefault("open", {v: [] for v in open_variants})
    pooled = {v: [] for v in open_variants}
    for rnd in range(cfg["open_rounds"]):
        log(f"open loop at {rate} req/s, round {rnd + 1}/{cfg['open_rounds']}")
        for v in open_variants:
            envoys[v].resume()
            openloop(envoys[v], rate, cfg["run_warmup_s"])
            r = openloop(envoys[v], rate, cfg["open_s"], pooled[v])
            envoys[v].pause()
            record_problems("open", v, r)
            opened[v].append(r)
    results["open_pooled"] = {v: pooled_percentiles(pooled[v]) for v in open_variants}
    for v in open_variants:
        envoys[v].resume()
        results["open_pooled"][v]["worker_loop_us"] = worker_loop_quantiles(envoys[v])
    finish_http_envoys(envoys, policies, results)


def http_upstream(cfg, results):
    variants = ["none", "passthrough", "edge-guard"]
    upstream, port = start_upstream("http-upstream")
    log(f"HTTP, real upstream (demo-upstream on :{port}): starting three Envoys")
    envoys = {}
    for v in variants:
        flt = gen.variant_filter(v, EDGE_GUARD_WASM, PASSTHROUGH_WASM, gen.policy(50))
        envoys[v] = Envoy(f"upstream-{v}", gen.envoy_config(flt, port), 1)
    for v in variants:
        envoys[v].wait_ready()
        check_first_request(envoys[v])
        wrk(envoys[v], cfg["warmup_s"], cfg["wrk_connections"])
        envoys[v].pause()
    runs = results.setdefault("upstream", {v: [] for v in variants})
    for rnd in range(cfg["upstream_rounds"]):
        log(f"real upstream, round {rnd + 1}/{cfg['upstream_rounds']}")
        for v in variants:
            envoys[v].resume()
            wrk(envoys[v], cfg["run_warmup_s"], cfg["wrk_connections"])
            r = wrk(envoys[v], cfg["closed_s"], cfg["wrk_connections"])
            envoys[v].pause()
            record_problems("upstream", v, r)
            runs[v].append(r)
    envoys["edge-guard"].resume()
    check_edge_guard_stats(envoys["edge-guard"], "upstream/edge-guard")
    for v in variants:
        envoys[v].stop()
    reap(upstream)


# ---------------------------------------------------------------- WebSocket runs

def ws_envoy(variant, port, name):
    flt = gen.variant_filter(variant, EDGE_GUARD_WASM, PASSTHROUGH_WASM, gen.policy(50))
    return Envoy(name, gen.envoy_config(flt, port), 2).wait_ready()


def ws_hold_clients(envoy, n, prefix):
    """Starts a client holding n connections; returns (process, held, failed)."""
    proc = spawn([WSCLIENT, "hold", "--target", f"127.0.0.1:{envoy.port}", "--path", gen.WS_PATH,
                  "--n", str(n), "--user-prefix", prefix], LOAD_CPU,
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 stderr=open(os.path.join(RUN_DIR, f"wsclient-{prefix}.log"), "w"), text=True)
    line = proc.stdout.readline().split()
    if len(line) != 3 or line[0] != "HELD":
        reap(proc)
        raise RuntimeError(f"wsclient hold printed {line}")
    return proc, int(line[1]), int(line[2])


def release(proc):
    proc.stdin.close()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    reap(proc)


def ws_hold(cfg, results):
    """Per variant and round: a fresh upstream and Envoy, RSS idle, RSS
    holding the small N, RSS holding the big N. The figure that counts is the
    marginal RSS per connection between the two: memory the allocator kept
    from start-up (which differs per variant) is used up by the first
    connections and would otherwise flatter the variant that had more."""
    variants = ["none", "passthrough", "edge-guard"]
    small, big = cfg["ws_ns"]
    hold = results.setdefault("hold", {v: [] for v in variants})
    for rnd in range(cfg["hold_rounds"]):
        log(f"WebSocket hold {small:,} then {big:,} connections, round {rnd + 1}/{cfg['hold_rounds']}")
        for v in variants:
            upstream, port = start_upstream(f"ws-upstream-{v}")
            envoy = ws_envoy(v, port, f"ws-hold-{v}")
            # Warm-up: first-connection allocations (pools, VM code) are
            # not per-connection costs.
            warm, _, _ = ws_hold_clients(envoy, cfg["ws_warmup"], f"warm-{v}-")
            release(warm)
            time.sleep(1.0)
            rss_idle = envoy.rss_kib()
            first, held_a, failed_a = ws_hold_clients(envoy, small, f"a-{v}-")
            time.sleep(1.0)
            rss_small = envoy.rss_kib()
            second, held_b, failed_b = ws_hold_clients(envoy, big - small, f"b-{v}-")
            time.sleep(1.0)
            rss_big = envoy.rss_kib()
            fds = envoy.open_fds()
            held = held_a + held_b
            if held != big or failed_a or failed_b:
                PROBLEMS.append(f"hold {big}/{v}: {held} held, {failed_a + failed_b} failed")
            if v == "edge-guard":
                gauge = envoy.stats(r"(^|\.)edge_guard\.websocket\.active$")
                active = next(iter(gauge.values()), None)
                if active != held:
                    PROBLEMS.append(f"hold {big}/{v}: edge-guard counts {active} open, client holds {held}")
            release(second)
            release(first)
            envoy.stop()
            reap(upstream)
            hold[v].append({"rss_idle_kib": rss_idle, "rss_small_kib": rss_small,
                            "rss_big_kib": rss_big, "small": held_a, "big": held, "fds": fds})


def ws_echo(cfg, results):
    variants = ["none", "passthrough", "edge-guard"]
    upstream, port = start_upstream("ws-echo-upstream")
    log(f"WebSocket echo: starting three Envoys (--concurrency 2), upstream on :{port}")
    envoys = {v: ws_envoy(v, port, f"ws-echo-{v}") for v in variants}
    for envoy in envoys.values():
        envoy.pause()
    runs = results.setdefault("echo", {v: [] for v in variants})
    for rnd in range(cfg["echo_rounds"]):
        log(f"WebSocket echo, round {rnd + 1}/{cfg['echo_rounds']}")
        for v in variants:
            envoy = envoys[v]
            envoy.resume()
            proc = spawn([WSCLIENT, "echo", "--target", f"127.0.0.1:{envoy.port}",
                          "--path", gen.WS_PATH, "--connections", str(cfg["echo_connections"]),
                          "--window", str(cfg["echo_window"]), "--size", str(cfg["echo_size"]),
                          "--duration", str(cfg["echo_s"]), "--user-prefix", f"echo-{v}-{rnd}-"],
                         LOAD_CPU, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
            if proc.stdout.readline().strip() != "READY":
                reap(proc)
                raise RuntimeError("wsclient echo did not get ready")
            watch = Interference(envoy)
            before = envoy.cpu_ticks()
            proc.stdin.write("GO\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            after = envoy.cpu_ticks()
            reap(proc)
            envoy.pause()
            r = json.loads(line)
            r["other_cpu_share"] = watch.share()
            r["cpu_us_per_msg"] = (after - before) / CLK_TCK * 1e6 / max(r["messages"], 1)
            if r["failed_connections"]:
                PROBLEMS.append(f"echo/{v}: {r['failed_connections']} connections failed")
            runs[v].append(r)
    for envoy in envoys.values():
        envoy.resume()
    closed = envoys["edge-guard"].stats(r"edge_guard\.route\.events\.websocket\.closed\.")
    tripped = {k: n for k, n in closed.items() if isinstance(n, int) and n}
    if tripped:
        PROBLEMS.append(f"echo/edge-guard: limits closed connections: {tripped}")
    for v in variants:
        envoys[v].stop()
    reap(upstream)


# ---------------------------------------------------------------- report

def per_round(results_a, results_b, key, op):
    return [op(a[key], b[key]) for a, b in zip(results_a, results_b)]


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"/(\d+\.\d+\.\d+)/", envoy_version)
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "envoy": m.group(1) if m else envoy_version.strip(),
        "wrk": wrk_version.split(" [")[0],
        "pinning": (f"Envoy on CPU {ENVOY_CPU}, load generators and upstreams on CPU {LOAD_CPU}"
                    if PIN else "no pinning (fewer than 2 CPUs available)"),
    }


def verdict(ok):
    return "met" if ok else "**missed**"


def report(cfg, results, meta):
    R = results
    lines = []
    add = lines.append
    closed, opened = R["closed"], R["open"]

    def added(v):
        return per_round(closed[v], closed["none"], "cpu_us_per_req", lambda a, b: a - b)

    add(f"# edge-guard benchmark — {meta['when']}" + (" (SMOKE: numbers meaningless)" if cfg["smoke"] else ""))
    add("")
    m = meta["machine"]
    add(f"- Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; {m['pinning']}.")
    add(f"- Envoy {m['envoy']} (`--concurrency 1` for HTTP, `2` for WebSocket), V8 wasm runtime; {m['wrk']}; "
        f"open loop with bench/tools `openloop`; WebSocket with bench/tools `wsclient`.")
    add(f"- edge-guard {meta['git']}; variants interleaved A B C … for {cfg['rounds']} rounds (HTTP closed loop), "
        f"{cfg['open_rounds']} (open loop), "
        f"{cfg['upstream_rounds']} (real upstream), {cfg['hold_rounds']} (WebSocket hold), "
        f"{cfg['echo_rounds']} (echo). Figures: median [min–max] over rounds.")
    add("")

    # Targets. Ratios are ratios of medians: a per-round ratio of two added
    # costs divides by a difference that is within one run's noise.
    def med(values):
        return statistics.median(values)

    def ratio_of(a, b):
        return med(a) / med(b) if med(b) > 0 else float("inf")

    ratio = ratio_of(added("edge-guard"), added("passthrough"))
    cpu_of = {v: [r["cpu_us_per_req"] for r in closed[v]] for v in closed}
    scale_total = ratio_of(cpu_of["eg-10000"], cpu_of["eg-10"])
    scale_added = ratio_of(added("eg-10000"), added("eg-10"))
    small_n, big_n = cfg["ws_ns"]
    hold = R["hold"]

    def first_growth(run):
        return (run["rss_small_kib"] - run["rss_idle_kib"]) * 1024 / max(run["small"], 1)

    def marginal(run):
        return (run["rss_big_kib"] - run["rss_small_kib"]) * 1024 / max(run["big"] - run["small"], 1)

    attributable = [marginal(e) - marginal(n) for e, n in zip(hold["edge-guard"], hold["none"])]
    echo_ratio = per_round(R["echo"]["edge-guard"], R["echo"]["none"], "msgs_per_s", lambda a, b: a / b)
    echo_cpu_ratio = ratio_of([r["cpu_us_per_msg"] for r in R["echo"]["none"]],
                              [r["cpu_us_per_msg"] for r in R["echo"]["edge-guard"]])
    own = [marginal(e) - marginal(p) for e, p in zip(hold["edge-guard"], hold["passthrough"])]
    floor = [marginal(p) - marginal(n) for p, n in zip(hold["passthrough"], hold["none"])]
    size = meta["wasm_bytes"]["edge_guard.wasm"]
    add("## Targets")
    add("")
    add("| target | measured | |")
    add("| --- | --- | --- |")
    add(f"| edge-guard's added Envoy CPU per HTTP request ≤ 1.25 × the pass-through filter's | "
        f"{ratio:.2f} × ({med(added('edge-guard')):.1f} vs {med(added('passthrough')):.1f} µs/request) | "
        f"{verdict(ratio <= 1.25)} |")
    add(f"| 10,000 routes ≤ 1.1 × 10 routes (Envoy CPU per request) | "
        f"{scale_total:.3f} × ({med(cpu_of['eg-10000']):.1f} vs {med(cpu_of['eg-10']):.1f} µs/request) | "
        f"{verdict(scale_total <= 1.1)} |")
    # Tail ratios: percentiles of every request of every round pooled (one
    # round's p99.9 is its ~10th-worst request), beside the same ratio between
    # two identical pass-through Envoys, which shows what the run can resolve.
    pooled = R["open_pooled"]
    for key, label in (("p99_us", "p99"), ("p999_us", "p99.9")):
        eg_p, pt_p, ctl_p = (pooled[v][key] for v in ("edge-guard", "passthrough", "passthrough-b"))
        rel = eg_p / pt_p if pt_p > 0 else float("inf")
        ctl = ctl_p / pt_p if pt_p > 0 else float("inf")
        add(f"| open-loop {label} at {int(cfg['open_fraction'] * 100)} % load ≤ 1.15 × the pass-through filter's | "
            f"{rel:.2f} × ({eg_p:,.0f} vs {pt_p:,.0f} µs, all {cfg['open_rounds']} rounds' requests pooled); "
            f"control, a second identical pass-through Envoy: {ctl:.2f} × | {verdict(rel <= 1.15)} |")
    add(f"| edge-guard's own Envoy RSS per open WebSocket above the pass-through filter's ≤ 400 B, from {small_n:,} to {big_n:,} connections | "
        f"{fmt(own, 0)} B (above no filter: {fmt(attributable, 0)} B; the pass-through filter alone: "
        f"{fmt(floor, 0)} B) | {verdict(med(own) <= 400)} |")
    add(f"| small-message WebSocket echo throughput with edge-guard ≥ 80 % of without | "
        f"{fmt(echo_ratio, 1, 100)} % (by Envoy CPU per echo: {echo_cpu_ratio * 100:.1f} %) | "
        f"{verdict(med(echo_ratio) >= 0.8)} |")
    add(f"| edge_guard.wasm ≤ 300 KB | {size:,} B | {verdict(size <= 300_000)} |")
    add("")

    # HTTP closed loop
    add(f"## HTTP, closed loop — loopback upstream (wrk -t1 -c{cfg['wrk_connections']}, {cfg['closed_s']} s per run)")
    add("")
    add("Upstream: an internal listener in the same Envoy answering with a `direct_response`, "
        "reached through a real cluster, so edge-guard's cross-check compares real cluster names.")
    add("")
    add("| variant | req/s | Envoy CPU µs/request | added µs/request vs no filter | added ÷ pass-through's added |")
    add("| --- | ---: | ---: | ---: | ---: |")
    for v in closed:
        rps = [r["rps"] for r in closed[v]]
        cpu = [r["cpu_us_per_req"] for r in closed[v]]
        if v == "none":
            add(f"| {VARIANT_LABEL[v]} | {fmt(rps, 0)} | {fmt(cpu, 2)} | — | — |")
            continue
        a = added(v)
        rel = ratio_of(a, added("passthrough"))
        add(f"| {VARIANT_LABEL[v]} | {fmt(rps, 0)} | {fmt(cpu, 2)} | {fmt(a, 2)} | {rel:.2f} |")
    add("")
    add(f"Route scaling, 10,000 ÷ 10 routes: Envoy CPU per request {scale_total:.3f} ×; "
        f"edge-guard's added CPU per request {scale_added:.2f} × (ratios of medians).")
    add("")

    # Open loop
    add(f"## HTTP, open loop at {R['open_rate']:,} req/s — loopback upstream ({cfg['open_s']} s per run)")
    add("")
    add("Latency from each request's scheduled send time (no coordinated omission), "
        f"64 keep-alive connections; the rate is {int(cfg['open_fraction'] * 100)} % of edge-guard's "
        "closed-loop throughput. Unsaturated, Envoy spends more CPU per request than in the closed "
        "loop (fewer requests per event-loop wake-up); the last column is its resulting utilisation.")
    add("")
    add("| variant | p50 µs | p99 µs | p99.9 µs | max µs | Envoy CPU µs/request | added µs/request | Envoy CPU busy |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v in opened:
        rs = opened[v]
        cell = lambda k: fmt([r[k] for r in rs], 0)  # noqa: E731
        cpu = [r["cpu_us_per_req"] for r in rs]
        a = "—" if v == "none" else fmt(per_round(rs, opened["none"], "cpu_us_per_req", lambda x, y: x - y), 2)
        busy = med(cpu) * R["open_rate"] / 1e6 * 100
        add(f"| {VARIANT_LABEL[v]} | {cell('p50_us')} | {cell('p99_us')} | {cell('p999_us')} | "
            f"{cell('max_us')} | {fmt(cpu, 2)} | {a} | {busy:.0f} % |")
    add("")
    add(f"All rounds' requests pooled (the target's figures), and each variant's p99 and p99.9 as a ratio "
        f"to the pass-through filter's; the control is a second Envoy identical to the pass-through one, "
        f"measured in the same rounds: its ratio is what this run's noise alone makes of two equal filters.")
    add("")
    add("The last two columns are Envoy's own measure of the worker's event-loop iterations "
        "(`enable_dispatcher_stats`, cumulative over the section): how long the worker ran without "
        "returning to its event loop, all filter work and ticks included. A request can wait behind "
        "at most one such iteration; a latency far above them is time Envoy was not running.")
    add("")
    add("| variant | requests | p50 µs | p99 µs | p99.9 µs | max µs | p99 ÷ pass-through | p99.9 ÷ pass-through "
        "| worker loop p99 µs | worker loop p99.9 µs |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    pt = pooled["passthrough"]
    for v, p in pooled.items():
        r99 = p["p99_us"] / pt["p99_us"] if pt["p99_us"] else float("inf")
        r999 = p["p999_us"] / pt["p999_us"] if pt["p999_us"] else float("inf")
        loop = p.get("worker_loop_us", {})
        cell = lambda q: f"{loop[q]:,.0f}" if loop.get(q) is not None else "—"  # noqa: E731
        add(f"| {VARIANT_LABEL[v]} | {p['requests']:,} | {p['p50_us']:,} | {p['p99_us']:,} | "
            f"{p['p999_us']:,} | {p['max_us']:,} | {r99:.2f} | {r999:.2f} | {cell(99)} | {cell(99.9)} |")
    add("")

    # Real upstream
    up = R["upstream"]
    add(f"## HTTP, closed loop — real upstream (demo-upstream, wrk -t1 -c{cfg['wrk_connections']}, {cfg['closed_s']} s per run)")
    add("")
    add("The upstream shares the load generator's CPU, so req/s is bound by it; Envoy CPU per request is the figure to compare.")
    add("")
    add("| variant | req/s | Envoy CPU µs/request | added µs/request vs no filter |")
    add("| --- | ---: | ---: | ---: |")
    for v in up:
        rps = [r["rps"] for r in up[v]]
        cpu = [r["cpu_us_per_req"] for r in up[v]]
        a = "—" if v == "none" else fmt(per_round(up[v], up["none"], "cpu_us_per_req", lambda x, y: x - y), 2)
        add(f"| {VARIANT_LABEL[v]} | {fmt(rps, 0)} | {fmt(cpu, 2)} | {a} |")
    add("")

    # WebSocket hold
    add("## WebSocket — holding connections (Envoy `--concurrency 2`)")
    add("")
    add("Each run: fresh upstream and Envoy, a warm-up of "
        f"{cfg['ws_warmup']} connections opened and closed, Envoy RSS idle; then {small_n:,} connections "
        f"(one user each) upgraded with one 32-byte message echoed on each, RSS; then up to {big_n:,}, RSS. "
        f"Marginal = (RSS at {big_n:,} − RSS at {small_n:,}) ÷ {big_n - small_n:,}; attributable = marginal "
        "with the filter − marginal without. The growth from idle to the first connections is shown too; "
        "it is distorted by memory the allocator kept from start-up, which differs per variant.")
    if cfg["ws_n_note"]:
        add("")
        add(cfg["ws_n_note"])
    add("")
    add(f"| variant | RSS idle MiB | RSS at {small_n:,} MiB | RSS at {big_n:,} MiB | growth idle→{small_n:,}, B/connection | "
        f"marginal, B/connection | attributable vs no filter, B | vs pass-through, B |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for v, runs in hold.items():
        mib = lambda k: fmt([r[k] / 1024 for r in runs], 1)  # noqa: E731
        attr = vs_pt = "—"
        if v != "none":
            attr = fmt([marginal(a) - marginal(b) for a, b in zip(runs, hold["none"])], 0)
        if v == "edge-guard":
            vs_pt = fmt([marginal(a) - marginal(b) for a, b in zip(runs, hold["passthrough"])], 0)
        add(f"| {VARIANT_LABEL[v].replace(' (50 routes)', '')} | {mib('rss_idle_kib')} | {mib('rss_small_kib')} | "
            f"{mib('rss_big_kib')} | {fmt([first_growth(r) for r in runs], 0)} | {fmt([marginal(r) for r in runs], 0)} | "
            f"{attr} | {vs_pt} |")
    add(f"\nEnvoy held {max(r['fds'] for runs in hold.values() for r in runs):,} open files at {big_n:,} connections.")
    add("")

    # WebSocket echo
    echo = R["echo"]
    add(f"## WebSocket — small-message echo ({cfg['echo_connections']} connections × "
        f"{cfg['echo_window']} messages in flight, {cfg['echo_size']}-byte binary messages, {cfg['echo_s']} s per run)")
    add("")
    add("edge-guard with all WebSocket limits on (message size, rate, idle, duration); the rate "
        "limit is set above the rate offered per connection, so every frame is checked and none trips. "
        "Where Envoy is below 100 % busy, the client and the upstream (sharing the other CPU) set the "
        "pace; Envoy CPU per echo is then the figure that compares the filters.")
    add("")
    add("| variant | echoes/s | ÷ no filter | Envoy CPU µs/echo | Envoy CPU busy (of its one CPU) |")
    add("| --- | ---: | ---: | ---: | ---: |")
    for v, runs in echo.items():
        rate = [r["msgs_per_s"] for r in runs]
        rel = "—" if v == "none" else fmt(per_round(runs, echo["none"], "msgs_per_s", lambda a, b: a / b), 3)
        cpu = [r['cpu_us_per_msg'] for r in runs]
        busy = med([r["msgs_per_s"] * r["cpu_us_per_msg"] / 1e6 for r in runs]) * 100
        add(f"| {VARIANT_LABEL[v].replace(' (50 routes)', '')} | {fmt(rate, 0)} | {rel} | "
            f"{fmt(cpu, 2)} | {busy:.0f} % |")
    add("")

    add("## Wasm binaries (release profile: lto, codegen-units 1, strip; opt-level \"z\" for edge-guard, "
        "\"s\" for the pass-through filter (its cheapest); "
        f"post-processing: {meta['wasm_post']})")
    add("")
    add("| file | bytes |")
    add("| --- | ---: |")
    for name, b in meta["wasm_bytes"].items():
        add(f"| {name} | {b:,} |")
    add("")
    add("## Checks")
    add("")
    checks = R.get("edge_guard_checks", {})
    for v, c in checks.items():
        if c.get("histogram_wanted"):
            hist = "request_duration_ms histogram " + ("recorded" if c["histogram"] else "EMPTY")
        else:
            hist = "no request_duration_ms histogram (opt-in, off)"
        add(f"- {VARIANT_LABEL[v]}: {c['mismatch']} route mismatches, {c['rejected']} rejections, {hist}.")
    add(f"- Envoy startup until ready and warm (s): " +
        ", ".join(f"{VARIANT_LABEL[v]} {s}" for v, s in R.get("startup_s", {}).items()) + ".")
    add(f"- Envoy RSS idle after warm-up (MiB): " +
        ", ".join(f"{VARIANT_LABEL[v]} {k / 1024:.0f}" for v, k in R.get("rss_idle_kib", {}).items()) + ".")
    shares = [r["other_cpu_share"] for section in ("closed", "open", "upstream", "echo")
              for runs in R.get(section, {}).values() for r in runs if "other_cpu_share" in r]
    if shares:
        add(f"- Share of Envoy's CPU used by anything else during a run (other processes, the "
            f"hypervisor): median {statistics.median(shares) * 100:.1f} %, max {max(shares) * 100:.1f} %"
            + (" — **the machine was not quiet: treat the figures with care**." if max(shares) > 0.05 else "."))
    if PROBLEMS:
        add("- **Problems:** " + "; ".join(PROBLEMS))
    else:
        add("- No errors, no non-2xx responses, every WebSocket connection held and echoed.")
    add("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

FULL = {
    "smoke": False, "rounds": 10, "open_rounds": 10, "warmup_s": 2, "run_warmup_s": 1,
    "closed_s": 3, "open_s": 8,
    "open_fraction": 0.3, "wrk_connections": 32, "upstream_rounds": 5,
    "hold_rounds": 3, "ws_warmup": 20, "echo_rounds": 3, "echo_s": 5,
    "echo_connections": 32, "echo_window": 8, "echo_size": 64,
}
SMOKE = dict(FULL, smoke=True, rounds=1, open_rounds=1, warmup_s=1, closed_s=1, open_s=1,
             upstream_rounds=1, hold_rounds=1, ws_warmup=5, echo_rounds=1, echo_s=1)


def ws_sizes(smoke):
    """1,000 and 10,000 connections, or the largest N that Envoy's open-files
    limit allows: each held connection is two sockets in Envoy."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if smoke:
        return [50, 200], ""
    limit = hard if hard != resource.RLIM_INFINITY else 1 << 20
    big = min(10_000, (limit - 150) // 2 // 100 * 100)
    note = ""
    if big < 10_000:
        note = (f"N = {big:,} instead of 10,000: the open-files hard limit here is {limit:,}, and "
                f"each held connection is two sockets in Envoy (client side and upstream side), so "
                f"10,000 connections need more than {limit:,} descriptors in one Envoy process.")
    return [1000, big], note


def main():
    global ENVOY, EDGE_GUARD_WASM, PASSTHROUGH_WASM, DEMO_UPSTREAM, OPENLOOP, WSCLIENT
    global PIN, ENVOY_CPU, LOAD_CPU, WRK_SCRIPT, PROBLEMS
    parser = argparse.ArgumentParser(description="edge-guard benchmark (see BENCHMARKS.md)")
    parser.add_argument("--smoke", action="store_true", help="tiny durations, one round: checks that everything runs")
    parser.add_argument("--envoy", required=True)
    parser.add_argument("--edge-guard-wasm", required=True)
    parser.add_argument("--passthrough-wasm", required=True)
    parser.add_argument("--demo-upstream", required=True)
    parser.add_argument("--tools-dir", required=True)
    parser.add_argument("--wasm-post", default="none", help="post-processing applied to both wasm files")
    parser.add_argument("--results-dir", required=True)
    args = parser.parse_args()
    ENVOY, EDGE_GUARD_WASM, PASSTHROUGH_WASM = args.envoy, args.edge_guard_wasm, args.passthrough_wasm
    DEMO_UPSTREAM = args.demo_upstream
    OPENLOOP = os.path.join(args.tools_dir, "openloop")
    WSCLIENT = os.path.join(args.tools_dir, "wsclient")
    PROBLEMS = []
    allowed = cpus()
    PIN = len(allowed) >= 2
    ENVOY_CPU, LOAD_CPU = (allowed[-1], allowed[0]) if PIN else (None, None)
    os.makedirs(RUN_DIR, exist_ok=True)
    WRK_SCRIPT = write_wrk_script(gen.request_paths())

    cfg = dict(SMOKE if args.smoke else FULL)
    cfg["ws_ns"], cfg["ws_n_note"] = ws_sizes(args.smoke)
    started = time.time()
    now = datetime.datetime.now(datetime.timezone.utc)
    git = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip() or "(no git)"
    meta = {
        "when": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "git": git,
        "wasm_post": args.wasm_post,
        "wasm_bytes": {"edge_guard.wasm": os.path.getsize(EDGE_GUARD_WASM),
                       "passthrough.wasm": os.path.getsize(PASSTHROUGH_WASM)},
    }
    results = {}
    http_loopback(cfg, results)
    http_upstream(cfg, results)
    ws_hold(cfg, results)
    ws_echo(cfg, results)
    text = report(cfg, results, meta)
    text += f"\nTotal benchmark time: {time.time() - started:.0f} s.\n"
    # A smoke run's numbers mean nothing: it never lands in bench/results.
    out_dir = WORK if args.smoke else args.results_dir
    os.makedirs(out_dir, exist_ok=True)
    name = "smoke.md" if args.smoke else now.strftime("%Y-%m-%d") + ".md"
    out_path = os.path.join(out_dir, name)
    with open(out_path, "w") as f:
        f.write(text)
    with open(os.path.join(WORK, "last-results.json"), "w") as f:
        json.dump({"config": cfg, "meta": meta, "results": results, "problems": PROBLEMS}, f, indent=1)
    print(text)
    log(f"written to {os.path.relpath(out_path, ROOT)}")
    if PROBLEMS:
        log("the run had problems (see Checks): its numbers are not valid")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
