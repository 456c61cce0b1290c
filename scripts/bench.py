#!/usr/bin/env python3
"""`make bench`: one loadwave driver against wrk and oha, interleaved, on this machine.

The target is nginx (`return 200`, one worker, on core 0; loadwave-target when nginx is
missing); each load generator in turn gets core 1, the same connection count and the same
target URL. Rounds interleave the tools so drift in the machine's state hits all of them
alike; the median round of each tool is reported, with loadwave's ratio to each peer.

Then the figures that do not depend on the machine's mood:
- user-space instructions per request under callgrind (valgrind), loadwave and wrk, each
  as the difference of two runs of different lengths (start-up and tear-down cancel out);
- open-model precision: Tsunami's send lag (due time to send) and its p50 against the
  closed model's p50 on the same fast target (the tester's timing error shows up there).

Then the distributed figures: three `loadwave-driver` processes over a real Kafka broker
against `loadwave run` with the same total work (three drivers in one process), and the
start skew across the drivers (spread of their first requests around the common start
instant). The drivers are not pinned here: three busy processes on one core would measure
the scheduler's time slices (4 ms and more), not the start trigger.

Environment: CONNECTIONS (64), REQUESTS (200000, oha and loadwave), DURATION (5, seconds
for wrk, which runs by time), ROUNDS (3), PORT (18181), BIN (target/release),
DIST_REQUESTS (50000 per driver), DIST_CONCURRENCY (16), BENCH_KAFKA_PORT (19192),
RSS_REQUESTS (10000000: the driver's resident set is read at 1/10 and at the end),
ONLY (`http`, `callgrind`, `pacing` or `distributed` to run one part).
"""

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target", "release"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "64"))
REQUESTS = int(os.environ.get("REQUESTS", "200000"))
DURATION = int(os.environ.get("DURATION", "5"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PORT = int(os.environ.get("PORT", "18181"))
URL = f"http://127.0.0.1:{PORT}/ping"
TOOLS_BIN = os.path.expanduser("~/.cache/loadwave-tools/bin")
DIST_REQUESTS = int(os.environ.get("DIST_REQUESTS", "50000"))
DIST_CONCURRENCY = int(os.environ.get("DIST_CONCURRENCY", "16"))
KAFKA_PORT = int(os.environ.get("BENCH_KAFKA_PORT", "19192"))
ONLY = os.environ.get("ONLY", "")
RSS_REQUESTS = int(os.environ.get("RSS_REQUESTS", "10000000"))


def pinned(core, argv):
    """Runs argv on one core when taskset exists and the machine has two."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core)] + argv
    return argv


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk():
    out = subprocess.run(
        pinned(1, ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}s", "--latency", URL]),
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+([\d.]+\w+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+([\d.]+\w+)", out).group(1))
    return rps, p50, p99


def run_oha(oha):
    out = subprocess.run(
        pinned(1, [oha, "-n", str(REQUESTS), "-c", str(CONNECTIONS), "--no-tui",
                   "--output-format", "json", URL]),
        capture_output=True, text=True, check=True,
    ).stdout
    data = json.loads(out)
    pct = data["latencyPercentiles"]
    return data["summary"]["requestsPerSec"], pct["p50"] * 1000, pct["p99"] * 1000


def run_loadwave():
    out = subprocess.run(
        pinned(1, [os.path.join(BIN, "loadwave"), "run", "--target-url", URL,
                   "--test-type", "avalanche", "--drivers", "1",
                   "--requests-per-driver", str(REQUESTS), "--concurrency", str(CONNECTIONS),
                   "--json", "--no-progress"]),
        capture_output=True, text=True, check=True,
    ).stdout
    s = json.loads(out)["summary"]
    assert s["requests"] == REQUESTS, f"loadwave counted {s['requests']} of {REQUESTS}"
    assert s["responses"] == REQUESTS, f"{REQUESTS - s['responses']} requests failed"
    return s["rps"], s["latency_ms"]["p50"], s["latency_ms"]["p99"]


def wait_port(port=PORT):
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing came up on {port}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url):
    import urllib.request
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def kafka(action):
    env = dict(os.environ, KAFKA_PORT=str(KAFKA_PORT), KAFKA_CONTROLLER_PORT=str(KAFKA_PORT + 1))
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "kafka.sh"), action], env=env, check=True)


def distributed():
    """3 drivers over Kafka vs `loadwave run` with 3 drivers, same total work."""
    kafka("up")
    procs = []
    tmp = __import__("tempfile").mkdtemp(prefix="loadwave-bench-")
    try:
        api_port = free_port()
        api = f"http://127.0.0.1:{api_port}"
        prefix = f"bench{int(time.time())}."
        brokers = f"127.0.0.1:{KAFKA_PORT}"
        log = open(os.path.join(tmp, "stack.log"), "w")
        procs.append(subprocess.Popen(
            [os.path.join(BIN, "loadwave-orchestrator"), "--listen", f"127.0.0.1:{api_port}",
             "--brokers", brokers, "--topic-prefix", prefix, "--data-dir", os.path.join(tmp, "data")],
            stdout=log, stderr=log))
        wait_port(api_port)
        for i in range(3):
            procs.append(subprocess.Popen(
                [os.path.join(BIN, "loadwave-driver"), "--brokers", brokers,
                 "--topic-prefix", prefix, "--driver-id", f"bench-{i + 1}"],
                stdout=log, stderr=log))
        for _ in range(300):
            if sum(d["state"] == "idle" for d in http_json(f"{api}/drivers")) >= 3:
                break
            time.sleep(0.1)
        else:
            sys.exit(f"drivers did not register; see {tmp}/stack.log")
        spec = ["--target-url", URL, "--test-type", "avalanche", "--drivers", "3",
                "--requests-per-driver", str(DIST_REQUESTS), "--concurrency", str(DIST_CONCURRENCY),
                "--json", "--no-progress"]
        loadwave = os.path.join(BIN, "loadwave")
        print(f"\ndistributed: 3 drivers × {DIST_REQUESTS} requests, {DIST_CONCURRENCY} in flight each · "
              f"target on core 0, drivers unpinned · {ROUNDS} interleaved rounds")
        runs = {"kafka": [], "run": []}
        for r in range(ROUNDS):
            for name, argv in (("kafka", [loadwave, "start", "--orchestrator", api, "--wait"] + spec),
                               ("run", [loadwave, "run"] + spec)):
                out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
                view = json.loads(out)
                s = view["summary"]
                assert s["requests"] == 3 * DIST_REQUESTS, f"{name} counted {s['requests']}"
                runs[name].append((s["rps"], s.get("start_skew_ms") or 0.0))
                delays = " ".join(f"{d.get('start_delay_ms') or 0:.2f}" for d in view["drivers"])
                print(f"  round {r + 1}  {name:<6} {s['rps']:>11,.0f} rps  start skew "
                      f"{s.get('start_skew_ms') or 0.0:6.3f} ms  (first requests at +{delays} ms)",
                      flush=True)
        kafka_rps = statistics.median(x[0] for x in runs["kafka"])
        run_rps = statistics.median(x[0] for x in runs["run"])
        skews = [x[1] for x in runs["kafka"]]
        print()
        print(f"3 drivers over Kafka / loadwave run rps: {kafka_rps / run_rps:.2f}x   (goal >= 0.95x)")
        print(f"start skew across drivers over Kafka: median {statistics.median(skews):.3f} ms, "
              f"max {max(skews):.3f} ms   (goal <= 5 ms)")
        pids = {f"bench-{i + 1}": procs[i + 1].pid for i in range(3)}
        driver_memory(api, pids)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        kafka("down")


def vm(pid, field):
    """A /proc/<pid>/status figure in MiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def driver_memory(api, pids):
    """One driver, RSS_REQUESTS requests: its resident set at a tenth and at nine tenths of
    them (while running), and after."""
    import urllib.request
    total = RSS_REQUESTS
    spec = {"target_url": URL, "test_type": "avalanche", "drivers": 1,
            "requests_per_driver": total, "concurrency": 64}
    req = urllib.request.Request(f"{api}/tests", data=json.dumps(spec).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        test_id = json.loads(r.read())["id"]
    print(f"\ndriver memory: one loadwave-driver, {total:,} requests, 64 connections")
    at_tenth = at_end = None
    before = None
    deadline = time.time() + 1800
    while time.time() < deadline:
        view = http_json(f"{api}/tests/{test_id}")
        drivers = view["drivers"]
        pid = pids.get(drivers[0]["id"]) if drivers else None
        if pid and before is None:
            before = vm(pid, "VmRSS")
        done = view["summary"]["requests"]
        if pid and at_tenth is None and done >= total // 10:
            at_tenth = (done, vm(pid, "VmRSS"))
        if pid and at_end is None and done >= total * 9 // 10:
            at_end = (done, vm(pid, "VmRSS"))
        if view["status"] in ("completed", "failed", "stopped"):
            break
        time.sleep(0.5)
    else:
        sys.exit("the memory test did not finish in 30 minutes")
    assert view["summary"]["requests"] == total, f"counted {view['summary']['requests']} of {total}"
    after = vm(pid, "VmRSS")
    print(f"  before the test     RSS {before:7.1f} MiB")
    print(f"  at {at_tenth[0]:>11,} (running)  RSS {at_tenth[1]:7.1f} MiB")
    print(f"  at {at_end[0]:>11,} (running)  RSS {at_end[1]:7.1f} MiB")
    print(f"  after {total:,}  RSS {after:7.1f} MiB   (peak {vm(pid, 'VmHWM'):.1f} MiB, "
          f"{view['summary']['rps']:,.0f} rps)")
    print(f"driver RSS growth from {at_tenth[0]:,} to {at_end[0]:,} requests: "
          f"{at_end[1] - at_tenth[1]:+.1f} MiB   (goal: flat)")


NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{ return 200 "ok\\n"; }}
  }}
}}
"""


def start_target():
    """nginx on core 0 (loadwave-target if nginx is missing); returns (process, name)."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx:
        tmp = __import__("tempfile").mkdtemp(prefix="loadwave-bench-nginx-")
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(dir=tmp, port=PORT))
        proc = subprocess.Popen(pinned(0, [nginx, "-p", tmp, "-c", os.path.join(tmp, "nginx.conf")]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc, "nginx (1 worker, return 200)"
    proc = subprocess.Popen(
        pinned(0, [os.path.join(BIN, "loadwave-target"), "--listen", f"127.0.0.1:{PORT}",
                   "--threads", "1"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, "loadwave-target (1 thread)"


def main():
    oha = shutil.which("oha") or os.path.join(TOOLS_BIN, "oha")
    for tool in ("wrk", oha, os.path.join(BIN, "loadwave"), os.path.join(BIN, "loadwave-target")):
        if not shutil.which(tool) and not os.path.exists(tool):
            sys.exit(f"missing {tool}: run `make bench`, which installs it")
    target, name = start_target()
    print(f"target: {name} on 127.0.0.1:{PORT}")
    try:
        wait_port()
        if ONLY in ("", "http"):
            peers(oha)
        if ONLY in ("", "callgrind"):
            callgrind()
        if ONLY in ("", "pacing"):
            pacing()
    finally:
        target.terminate()
        target.wait()
    if ONLY in ("", "distributed"):
        # The distributed part counts against loadwave-target's own /metrics.
        own = subprocess.Popen(
            pinned(0, [os.path.join(BIN, "loadwave-target"), "--listen", f"127.0.0.1:{PORT}",
                       "--threads", "1"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port()
            distributed()
        finally:
            own.terminate()
            own.wait()


def instructions(argv):
    """User-space instructions callgrind counted for argv (every thread), and its stdout."""
    out = os.path.join(__import__("tempfile").mkdtemp(prefix="loadwave-cg-"), "cg.out")
    run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + argv,
                         capture_output=True, text=True, check=True)
    m = re.search(r"Collected : (\d+)", run.stderr)
    if not m:
        sys.exit(f"callgrind printed no total for {argv[0]}:\n{run.stderr[-2000:]}")
    return int(m.group(1)), run.stdout


def callgrind():
    """Instructions per request, loadwave vs wrk, as marginal costs of longer runs."""
    if not shutil.which("valgrind"):
        print("\ncallgrind: valgrind is missing (make bench installs it); skipped")
        return
    short, long = 20000, 60000
    print(f"\ncallgrind: one driver, {CONNECTIONS} connections, same target; marginal "
          f"instructions per request between two runs of each tool")
    lw = []
    for n in (short, long):
        total, out = instructions([os.path.join(BIN, "loadwave"), "run", "--target-url", URL,
                                   "--test-type", "avalanche", "--drivers", "1",
                                   "--requests-per-driver", str(n), "--concurrency",
                                   str(CONNECTIONS), "--json", "--no-progress"])
        got = json.loads(out)["summary"]
        assert got["responses"] == n, f"loadwave under callgrind: {got['responses']} of {n}"
        lw.append((n, total))
    wrk = []
    for seconds in (2, 6):
        total, out = instructions(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", URL])
        n = int(re.search(r"(\d+) requests in", out).group(1))
        wrk.append((n, total))
    per = lambda runs: (runs[1][1] - runs[0][1]) / (runs[1][0] - runs[0][0])
    lw_per, wrk_per = per(lw), per(wrk)
    print(f"  loadwave  {lw_per:8,.0f} instructions per request  ({lw[0][0]:,} vs {lw[1][0]:,} requests)")
    print(f"  wrk       {wrk_per:8,.0f} instructions per request  ({wrk[0][0]:,} vs {wrk[1][0]:,} requests)")
    print(f"loadwave / wrk instructions per request: {lw_per / wrk_per:.2f}x   (goal <= 1.50x)")


def pacing():
    """Tsunami against the closed model on the same fast target, and the send lag."""
    loadwave = os.path.join(BIN, "loadwave")
    base = [loadwave, "run", "--target-url", URL, "--drivers", "1", "--json", "--no-progress"]
    closed, opened, lags = [], [], []
    print(f"\npacing: closed model (1 connection, 3,000 requests) against Tsunami (2 ms apart, "
          f"4 connections, 1,500 requests), {ROUNDS} interleaved rounds, load on core 1")
    for r in range(ROUNDS):
        out = subprocess.run(pinned(1, base + ["--test-type", "avalanche", "--concurrency", "1",
                                               "--requests-per-driver", "3000"]),
                             capture_output=True, text=True, check=True).stdout
        closed.append(json.loads(out)["summary"]["latency_ms"]["p50"])
        out = subprocess.run(pinned(1, base + ["--test-type", "tsunami", "--delay-ms", "2",
                                               "--concurrency", "4", "--requests-per-driver", "1500"]),
                             capture_output=True, text=True, check=True).stdout
        s = json.loads(out)["summary"]
        assert s["requests"] == 1500, f"tsunami counted {s['requests']}"
        opened.append(s["latency_ms"]["p50"])
        lags.append(s["send_lag_ms"])
        lag = s["send_lag_ms"]
        print(f"  round {r + 1}  closed p50 {closed[-1]:.3f} ms  tsunami p50 {opened[-1]:.3f} ms  "
              f"send lag p50 {lag['p50'] * 1000:.0f} us  p99 {lag['p99'] * 1000:.0f} us  "
              f"max {lag['max'] * 1000:.0f} us", flush=True)
    diff = statistics.median(opened) - statistics.median(closed)
    p50 = statistics.median(l["p50"] for l in lags) * 1000
    p99 = statistics.median(l["p99"] for l in lags) * 1000
    print(f"tsunami send lag (median of rounds): p50 {p50:.0f} us, p99 {p99:.0f} us   (goal: within 50 us)")
    print(f"tsunami p50 - closed p50: {diff:+.3f} ms   (goal: within 0.2 ms)")


def peers(oha):
    """One loadwave driver against wrk and oha."""
    print(f"target: 1 thread on core 0 · load: core 1 · {CONNECTIONS} connections · "
          f"{REQUESTS} requests (wrk: {DURATION} s) · {ROUNDS} interleaved rounds")
    runs = {"wrk": [], "oha": [], "loadwave": []}
    for r in range(ROUNDS):
        for name, fn in (("wrk", run_wrk), ("oha", lambda: run_oha(oha)),
                         ("loadwave", run_loadwave)):
            rps, p50, p99 = fn()
            runs[name].append((rps, p50, p99))
            print(f"  round {r + 1}  {name:<9} {rps:>11,.0f} rps  p50 {p50:7.3f} ms  "
                  f"p99 {p99:7.3f} ms", flush=True)
    med = {name: sorted(v)[len(v) // 2] for name, v in runs.items()}
    print()
    print(f"{'median':<10}{'rps':>12}{'p50 ms':>10}{'p99 ms':>10}")
    for name, (rps, p50, p99) in med.items():
        print(f"{name:<10}{rps:>12,.0f}{p50:>10.3f}{p99:>10.3f}")
    lw = med["loadwave"][0]
    print()
    print(f"loadwave / oha rps: {lw / med['oha'][0]:.2f}x   (goal >= 1.00x)")
    print(f"loadwave / wrk rps: {lw / med['wrk'][0]:.2f}x   (goal >= 1.00x)")
    spread = {n: statistics.pstdev([x[0] for x in v]) / statistics.mean([x[0] for x in v])
              for n, v in runs.items()}
    print("round-to-round spread (stdev/mean): "
          + ", ".join(f"{n} {s:.1%}" for n, s in spread.items()))


if __name__ == "__main__":
    main()
