#!/usr/bin/env python3
"""`make bench`: one loadwave driver against wrk and oha, interleaved, on this machine.

The target gets core 0 (one thread); each load generator in turn gets core 1, the same
connection count and the same target URL. Rounds interleave the tools so drift in the
machine's state hits all of them alike; the median round of each tool is reported, with
loadwave's ratio to each peer.

Environment: CONNECTIONS (64), REQUESTS (200000, oha and loadwave), DURATION (5, seconds
for wrk, which runs by time), ROUNDS (3), PORT (18181), BIN (target/release).
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


def wait_port():
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", PORT), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"target did not come up on {PORT}")


def main():
    oha = shutil.which("oha") or os.path.join(TOOLS_BIN, "oha")
    for tool in ("wrk", oha, os.path.join(BIN, "loadwave"), os.path.join(BIN, "loadwave-target")):
        if not shutil.which(tool) and not os.path.exists(tool):
            sys.exit(f"missing {tool}: run `make bench`, which installs it")
    target = subprocess.Popen(
        pinned(0, [os.path.join(BIN, "loadwave-target"), "--listen", f"127.0.0.1:{PORT}",
                   "--threads", "1"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port()
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
        print(f"loadwave / wrk rps: {lw / med['wrk'][0]:.2f}x   (goal >= 0.90x)")
        spread = {n: statistics.pstdev([x[0] for x in v]) / statistics.mean([x[0] for x in v])
                  for n, v in runs.items()}
        print("round-to-round spread (stdev/mean): "
              + ", ".join(f"{n} {s:.1%}" for n, s in spread.items()))
    finally:
        target.terminate()
        target.wait()


if __name__ == "__main__":
    main()
