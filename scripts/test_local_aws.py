#!/usr/bin/env python3
"""Self-check of scripts/local_aws.py and of the Lambda RIE's behaviour it relies on, without
any Rust binary.

    python3 scripts/test_local_aws.py [units front rie bridge ecs]   (default: all)

It installs what it needs through scripts/tools.sh (the venv in ~/.cache/loadwave, the RIE),
re-runs itself with the venv's python, and starts a Kafka broker on $TEST_KAFKA_PORT (19392)
with scripts/kafka.sh for the `bridge` check unless one already answers there (then it leaves
it running). Everything else (fake endpoints, moto_server, the RIE) runs on free loopback
ports and is stopped at the end. Prints `N passed, M failed`; exits 1 on any failure.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

sys.dont_write_bytecode = True  # importing local_aws must leave no __pycache__ in scripts/
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOCAL_AWS = os.path.join(HERE, "local_aws.py")
KAFKA_PORT = int(os.environ.get("TEST_KAFKA_PORT", "19392"))


def _bootstrap_tools() -> None:
    """Re-executes under the venv's python (boto3, confluent_kafka, moto) from tools.sh."""
    if os.environ.get("LW_TEST_REEXEC") == "1":
        return
    script = (
        f'source "{HERE}/common.sh" && source "{HERE}/tools.sh" && ensure_pyenv >&2 && ensure_rie >&2 '
        '&& printf "%s\\n%s\\n" "$LW_PY" "$LW_RIE"'
    )
    out = subprocess.run(["bash", "-c", script], stdout=subprocess.PIPE, timeout=1800, check=True, text=True)
    py, rie = out.stdout.split()[-2:]
    env = dict(os.environ, LW_TEST_REEXEC="1", LW_PY=py, LW_RIE=rie)
    os.execve(py, [py, os.path.abspath(__file__), *sys.argv[1:]], env)


# --------------------------------------------------------------------------------------------
# A tiny harness

RESULTS = {"passed": 0, "failed": 0}
PROCS: list[subprocess.Popen] = []
WORK = ""  # a temporary folder for logs and fakes, made by main()


def check(name: str, ok: bool, detail: Any = "") -> bool:
    RESULTS["passed" if ok else "failed"] += 1
    print(f"  {'ok  ' if ok else 'FAIL'} {name}" + ("" if ok or detail == "" else f": {detail}"), flush=True)
    return ok


def wait_for(cond: Callable[[], Any], timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = cond()
        except Exception:
            value = None
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(os.path.join(WORK, f"{name}.log"), "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    log.close()  # the child has its own descriptor
    proc.log_path = log.name  # type: ignore[attr-defined]
    PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 5.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def tail(proc: subprocess.Popen, lines: int = 15) -> str:
    with open(proc.log_path, errors="replace") as f:  # type: ignore[attr-defined]
        return "".join(f.readlines()[-lines:])


def local_aws(*args: str) -> list[str]:
    return [sys.executable, LOCAL_AWS, *args]


class FakeRie(ThreadingHTTPServer):
    """Stands in for the RIE's invoke endpoint: records events, answers with `respond`."""

    daemon_threads = True

    def __init__(self, respond: Callable[[dict[str, Any], int], tuple[int, bytes]], delay: float = 0.0):
        self.respond = respond
        self.delay = delay
        self.events: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _FakeRieHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/2015-03-31/functions/function/invocations"


class _FakeRieHandler(BaseHTTPRequestHandler):
    server: FakeRie

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.events.append(event)
            n = len(self.server.events)
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        try:
            time.sleep(self.server.delay)
            status, body = self.server.respond(event, n)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")  # what the RIE sends
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def request(port: int, method: str, path: str, body: bytes | None = None,
         headers: list[tuple[str, str]] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers or []:
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# units: the pure pieces


def test_units() -> None:
    sys.path.insert(0, HERE)
    import local_aws as la

    ev = la.http_api_event(
        "GET", "/tests/a%20b?x=1&x=2&y=%20z",
        [("Host", "api.local:8100"), ("X-Dup", "1"), ("x-dup", "2"), ("Cookie", "a=1; b=2"), ("User-Agent", "t/1")],
        b"", source_ip="127.0.0.1", now_ms=1_700_000_000_000, request_id="rid",
    )
    check("v2 event: version, routeKey, decoded rawPath, raw query",
          (ev["version"], ev["routeKey"], ev["rawPath"], ev["rawQueryString"])
          == ("2.0", "$default", "/tests/a b", "x=1&x=2&y=%20z"), ev)
    check("v2 event: headers lowercased, repeats joined, cookies moved out",
          ev["headers"] == {"host": "api.local:8100", "x-dup": "1,2", "user-agent": "t/1"}
          and ev["cookies"] == ["a=1", "b=2"], ev["headers"])
    check("v2 event: query parameters decoded and joined", ev["queryStringParameters"] == {"x": "1,2", "y": " z"})
    rc = ev["requestContext"]
    check("v2 event: requestContext", rc["http"] == {"method": "GET", "path": "/tests/a b", "protocol": "HTTP/1.1",
                                                     "sourceIp": "127.0.0.1", "userAgent": "t/1"}
          and rc["stage"] == "$default" and rc["timeEpoch"] == 1_700_000_000_000
          and rc["time"] == "14/Nov/2023:22:13:20 +0000" and rc["domainName"] == "api.local:8100"
          and rc["requestId"] == "rid" and "body" not in ev and ev["isBase64Encoded"] is False, rc)
    ev = la.http_api_event("POST", "/", [], b"\x00\xff", source_ip="1.2.3.4")
    check("v2 event: binary body base64", ev["isBase64Encoded"] is True and ev["body"] == "AP8="
          and "queryStringParameters" not in ev and "cookies" not in ev, ev)

    status, headers, body = la.http_response_of(json.dumps({
        "statusCode": 201, "headers": {"a": "1", "m": "x"}, "multiValueHeaders": {"m": ["1", "2"]},
        "cookies": ["c=1"], "body": base64.b64encode(b"\x01\x02").decode(), "isBase64Encoded": True}).encode())
    check("response mapping", (status, sorted(headers), body)
          == (201, [("a", "1"), ("m", "1"), ("m", "2"), ("set-cookie", "c=1")], b"\x01\x02"), (status, headers, body))
    check("response without statusCode is a 200 JSON body",
          la.http_response_of(b'{"x":1}') == (200, [("content-type", "application/json")], b'{"x":1}'))

    rie_error = b'{"errorType": "Boom", "errorMessage": "it failed"}'
    check("function error: the RIE's 200 + error document", la.function_error_of(200, {}, rie_error) == "Boom: it failed")
    check("function error: timeout text", bool(la.function_error_of(200, {}, b"Task timed out after 2.00 seconds")))
    check("function error: 502 Runtime.ExitError", "Runtime.ExitError" in (la.function_error_of(
        502, {}, b'{"errorType":"Runtime.ExitError","errorMessage":"exit status 3"}') or ""))
    check("function error: a response is not one", la.function_error_of(200, {}, b'{"statusCode":500,"body":""}') is None)

    recs = [la.KafkaRecord("p-metrics", 1, 7, 5, "CREATE_TIME", None, b"v7"),
            la.KafkaRecord("p-metrics", 1, 6, 4, "CREATE_TIME", b"k", b"v6", [("h", b"\x01\xff")]),
            la.KafkaRecord("p-register", 0, 0, 3, "CREATE_TIME", b"k", None)]
    msk = la.msk_event(recs, "b:1")
    check("MSK event: grouped by topic-partition, offset order, base64, signed header bytes",
          list(msk["records"]) == ["p-metrics-1", "p-register-0"]
          and [r["offset"] for r in msk["records"]["p-metrics-1"]] == [6, 7]
          and msk["records"]["p-metrics-1"][0]["key"] == "aw==" and msk["records"]["p-metrics-1"][1]["key"] is None
          and msk["records"]["p-metrics-1"][0]["headers"] == [{"h": [1, -1]}]
          and msk["records"]["p-register-0"][0]["value"] is None and msk["bootstrapServers"] == "b:1", msk)
    check("driver argv: command after the driver, or naming it",
          la.driver_argv("/b/loadwave-driver", ["--test-id", "t"]) == ["/b/loadwave-driver", "--test-id", "t"]
          and la.driver_argv("/b/loadwave-driver", ["loadwave-driver", "-x"]) == ["/b/loadwave-driver", "-x"])


# --------------------------------------------------------------------------------------------
# front against a fake RIE


def test_front() -> None:
    def respond(event: dict[str, Any], _n: int) -> tuple[int, bytes]:
        path = event["rawPath"]
        if path.startswith("/echo"):
            return 200, json.dumps({
                "statusCode": 201, "headers": {"x-test": "yes", "content-type": "application/json"},
                "multiValueHeaders": {"x-multi": ["a", "b"]}, "cookies": ["c1=v1", "c2=v2"],
                "body": json.dumps(event), "isBase64Encoded": False}).encode()
        if path == "/binary":
            return 200, json.dumps({"statusCode": 200, "body": base64.b64encode(b"\x00\xff\x10").decode(),
                                    "isBase64Encoded": True}).encode()
        if path == "/fail":
            return 200, b'{"errorType": "Boom", "errorMessage": "it failed"}'
        if path == "/crash":
            return 502, b'{"errorType":"Runtime.ExitError","errorMessage":"exit status 3"}'
        if path == "/plain":
            return 200, b'{"hello": "world"}'
        return 200, json.dumps({"statusCode": 200, "body": "slow"}).encode()

    fake = FakeRie(respond, delay=0.05)
    port = free_port()
    front = spawn("front", local_aws("front", "--listen", f"127.0.0.1:{port}", "--invoke", fake.url))
    if not check("front listens", wait_for(lambda: port_open(port), 10), tail(front)):
        return

    status, headers, body = request(port, "GET", "/echo/a%20b?x=1&x=2", headers=[
        ("Cookie", "a=1; b=2"), ("X-Dup", "1"), ("X-Dup", "2"), ("User-Agent", "t/1")])
    event = json.loads(body) if status == 201 else {}
    check("GET: status, single and multi-value headers, cookies mapped back",
          status == 201 and headers["x-test"] == "yes" and headers.get_all("x-multi") == ["a", "b"]
          and headers.get_all("set-cookie") == ["c1=v1", "c2=v2"], (status, headers.items()))
    check("GET: the v2 event as the function saw it",
          event.get("version") == "2.0" and event.get("rawPath") == "/echo/a b"
          and event.get("rawQueryString") == "x=1&x=2" and event.get("queryStringParameters") == {"x": "1,2"}
          and event["headers"].get("x-dup") == "1,2" and "cookie" not in event["headers"]
          and event.get("cookies") == ["a=1", "b=2"]
          and event["requestContext"]["http"]["sourceIp"] == "127.0.0.1"
          and event["requestContext"]["http"]["userAgent"] == "t/1"
          and abs(event["requestContext"]["timeEpoch"] - time.time() * 1000) < 10_000
          and uuid.UUID(event["requestContext"]["requestId"]), event)

    status, _, body = request(port, "POST", "/echo", body=b"\x00\xff\xfe")
    event = json.loads(body)
    check("POST binary body arrives base64", event.get("isBase64Encoded") is True
          and base64.b64decode(event["body"]) == b"\x00\xff\xfe", event)
    status, _, body = request(port, "POST", "/echo", body="héllo".encode(), headers=[("Content-Type", "text/plain")])
    event = json.loads(body)
    check("POST text body arrives as text", event.get("isBase64Encoded") is False and event.get("body") == "héllo")

    status, _, body = request(port, "GET", "/binary")
    check("base64 response body decoded", (status, body) == (200, b"\x00\xff\x10"), (status, body))
    status, headers, body = request(port, "GET", "/plain")
    check("result without statusCode: 200 JSON", status == 200 and json.loads(body) == {"hello": "world"}
          and headers["content-type"] == "application/json")
    status, headers, body = request(port, "HEAD", "/echo")
    check("HEAD: status and no body", status == 201 and body == b"")

    for path, what in (("/fail", "Boom: it failed"), ("/crash", "Runtime.ExitError")):
        status, headers, body = request(port, "GET", path)
        doc = json.loads(body)
        check(f"function error {path} -> 502 JSON", status == 502 and doc["error"]["status"] == 502
              and what in doc["error"]["message"] and headers["content-type"] == "application/json", (status, doc))

    fake.delay, fake.max_in_flight = 0.2, 0
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(request(port, "GET", "/slow")[0])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    check("concurrent requests: all answered, invocations serialized",
          results == [200] * 4 and fake.max_in_flight == 1, (results, fake.max_in_flight))

    dead = free_port()
    port2 = free_port()
    front2 = spawn("front-unreachable", local_aws(
        "front", "--listen", f"127.0.0.1:{port2}", "--invoke", f"http://127.0.0.1:{dead}/x"))
    wait_for(lambda: port_open(port2), 10)
    status, _, body = request(port2, "GET", "/healthz")
    check("unreachable RIE -> 502 JSON", status == 502 and json.loads(body)["error"]["status"] == 502, body)
    check("front stops on SIGTERM", stop(front) == 0 and stop(front2) == 0, tail(front))
    fake.shutdown()


# --------------------------------------------------------------------------------------------
# rie: the emulator's behaviour (the findings in local_aws.py's docstring), and front over it

BOOTSTRAP = r'''#!PYTHON
import json, os, time, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next", timeout=3600) as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    mode = event.get("mode") or ("http" if event.get("version") == "2.0" else "env")
    time.sleep(event.get("sleep", 0))
    if mode == "error":
        url, doc = api + rid + "/error", {"errorType": "Boom", "errorMessage": "it failed"}
        headers = {"Lambda-Runtime-Function-Error-Type": "Unhandled"}
    elif mode == "http":
        time.sleep(0.1)
        url, doc, headers = api + rid + "/response", {"statusCode": 200, "body": event["rawPath"]}, {}
    else:
        url, doc, headers = api + rid + "/response", {"env": dict(os.environ), "pid": os.getpid()}, {}
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), headers=headers, method="POST")
    urllib.request.urlopen(req, timeout=10).read()
'''


def start_rie(name: str, extra_env: dict[str, str]) -> tuple[subprocess.Popen, str, int]:
    bootstrap = os.path.join(WORK, f"{name}-bootstrap")
    with open(bootstrap, "w") as f:
        f.write(BOOTSTRAP.replace("PYTHON", shutil.which("python3") or "/usr/bin/python3"))
    os.chmod(bootstrap, 0o755)
    port, api_port = free_port(), free_port()
    env = dict(os.environ, **extra_env)
    proc = spawn(name, [os.environ["LW_RIE"], "--runtime-interface-emulator-address", f"127.0.0.1:{port}",
                        "--runtime-api-address", f"127.0.0.1:{api_port}", bootstrap], env=env)
    wait_for(lambda: port_open(port), 10)
    return proc, f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations", api_port


def test_rie() -> None:
    sys.path.insert(0, HERE)
    import local_aws as la

    rie, url, api_port = start_rie("rie", {"LW_PROBE": "42", "AWS_ACCESS_KEY_ID": "test",
                                          "AWS_SECRET_ACCESS_KEY": "test", "AWS_LAMBDA_FUNCTION_TIMEOUT": "2"})
    result = la.invoke(url, b'{"mode": "env"}', 30)
    env = json.loads(result.body).get("env", {}) if result.status == 200 else {}
    check("(a) the bootstrap inherits the RIE's environment",
          env.get("LW_PROBE") == "42" and env.get("AWS_ACCESS_KEY_ID") == "test"
          and env.get("AWS_LAMBDA_RUNTIME_API") == f"127.0.0.1:{api_port}", (result.status, result.body[:300]))

    with urllib_request(url, b'{"mode": "error"}') as (status, headers, body):
        check("(b) a function error answers 200, no X-Amz-Function-Error, the error document as body",
              status == 200 and "X-Amz-Function-Error" not in headers
              and json.loads(body) == {"errorType": "Boom", "errorMessage": "it failed"}, (status, headers, body))
    result = la.invoke(url, b'{"mode": "env", "sleep": 3}', 30)
    check("(b) a timeout answers 200 'Task timed out after 2.00 seconds'",
          result.status == 200 and result.body == b"Task timed out after 2.00 seconds" and result.function_error,
          (result.status, result.body))
    result = la.invoke(url, b'{"mode": "env"}', 30)
    check("(b) after a timeout the next invocation starts a new runtime", result.status == 200
          and result.function_error is None, result)

    slow = threading.Thread(target=lambda: _swallow(lambda: la.invoke(url, b'{"mode": "env", "sleep": 1}', 10)))
    slow.start()
    time.sleep(0.4)
    try:
        second = la.invoke(url, b'{"mode": "env"}', 10)
        outcome = f"HTTP {second.status} {second.body[:100]!r}"
    except la.InvokeFailed as err:
        outcome = f"failed: {err}"
    slow.join(15)
    crashed = wait_for(lambda: rie.poll() is not None, 5)
    check("(c) a concurrent invocation crashes the RIE (so invocations must be serialized)",
          bool(crashed) and "ReserveFailed: AlreadyReserved" in tail(rie, 200), f"second: {outcome}; rie: {tail(rie, 5)}")
    stop(rie)

    # front's lock over the real emulator: concurrent requests all succeed, the RIE survives.
    rie, url, _ = start_rie("rie-front", {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
    port = free_port()
    front = spawn("front-rie", local_aws("front", "--listen", f"127.0.0.1:{port}", "--invoke", url))
    wait_for(lambda: port_open(port), 10)
    results: list[tuple[int, bytes]] = []
    threads = [threading.Thread(target=lambda i=i: results.append(request(port, "GET", f"/r{i}")[::2])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check("front over the real RIE: 6 concurrent requests answered, RIE alive",
          sorted(results) == [(200, f"/r{i}".encode()) for i in range(6)] and rie.poll() is None,
          (results, tail(rie, 5)))
    stop(front)
    rc = stop(rie)
    check("SIGTERM stops the RIE and its runtime", rc is not None and not _pids_with(os.path.join(WORK, "rie-front-bootstrap")),
          tail(rie, 5))


def _swallow(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:
        pass


def _pids_with(text: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        pids.append(int(pid))
            except OSError:
                pass
    return pids


class urllib_request:
    """POST body to url; yields (status, headers, body) whatever the status."""

    def __init__(self, url: str, body: bytes):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(url, data=body, method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=30) as r:
                self.value = (r.status, dict(r.headers), r.read())
        except urllib.error.HTTPError as err:
            self.value = (err.code, dict(err.headers), err.read())

    def __enter__(self) -> tuple[int, dict[str, str], bytes]:
        return self.value

    def __exit__(self, *exc: Any) -> None:
        return None


# --------------------------------------------------------------------------------------------
# bridge against a real Kafka broker


def ensure_kafka() -> bool:
    """Starts the broker unless one answers; True when this run started it (and must stop it)."""
    if port_open(KAFKA_PORT):
        return False
    env = dict(os.environ, KAFKA_PORT=str(KAFKA_PORT))
    subprocess.run(["bash", os.path.join(HERE, "kafka.sh"), "up"], env=env, check=True, timeout=900)
    return True


def test_bridge() -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    started_kafka = ensure_kafka()
    try:
        _test_bridge(Consumer, Producer, TopicPartition, AdminClient, NewTopic)
    finally:
        if started_kafka:
            subprocess.run(["bash", os.path.join(HERE, "kafka.sh"), "down"],
                           env=dict(os.environ, KAFKA_PORT=str(KAFKA_PORT)), timeout=60)


def _test_bridge(Consumer: Any, Producer: Any, TopicPartition: Any, AdminClient: Any, NewTopic: Any) -> None:
    brokers = f"127.0.0.1:{KAFKA_PORT}"
    prefix = f"lwtest{random.randrange(10**6)}-"
    group = f"{prefix}lambda-controller"
    topics = {"register": 1, "heartbeat": 1, "metrics": 2}
    admin = AdminClient({"bootstrap.servers": brokers})  # kept alive until the futures resolve
    futures = admin.create_topics(
        [NewTopic(prefix + t, num_partitions=n, replication_factor=1) for t, n in topics.items()])
    for f in futures.values():
        f.result(30)

    def committed() -> dict[str, int]:
        c = Consumer({"bootstrap.servers": brokers, "group.id": group, "enable.auto.commit": False})
        try:
            tps = [TopicPartition(prefix + t, p) for t, n in topics.items() for p in range(n)]
            return {f"{tp.topic}-{tp.partition}": tp.offset for tp in c.committed(tps, timeout=10) if tp.offset >= 0}
        finally:
            c.close()

    seen_committed: list[dict[str, int]] = []

    def respond(event: dict[str, Any], _n: int) -> tuple[int, bytes]:
        if event.get("eventSource") != "aws:kafka":
            return 200, b"null"
        kafka_calls = sum(1 for e in fake.events if e.get("eventSource") == "aws:kafka")
        if kafka_calls <= 2:  # before answering the first two batches: nothing committed yet
            seen_committed.append(committed())
        if kafka_calls == 1:
            return 200, b'{"errorType": "Boom", "errorMessage": "first batch fails"}'
        return 200, b"null"

    fake = FakeRie(respond, delay=0.2)  # slow enough that an unserialized tick would overlap
    producer = Producer({"bootstrap.servers": brokers})
    sent: dict[str, list[tuple[bytes | None, bytes]]] = {}

    def produce(topic: str, partition: int, key: bytes | None, value: bytes, headers: Any = None) -> None:
        producer.produce(prefix + topic, value=value, key=key, partition=partition, headers=headers)
        sent.setdefault(f"{prefix}{topic}-{partition}", []).append((key, value))

    for i in range(5):
        produce("metrics", i % 2, f"k{i}".encode(), bytes([i, 0xFF]) + b"metric")
    produce("register", 0, None, b'{"register": 1}')
    produce("register", 0, b"d1", b'{"register": 2}')
    produce("heartbeat", 0, b"d1", b"hb", headers=[("h", b"\x01\xff")])
    producer.flush(30)

    bridge = spawn("bridge", local_aws(
        "bridge", "--brokers", brokers, "--topic-prefix", prefix, "--invoke", fake.url,
        "--schedule-every", "1", "--batch-window-ms", "500"))

    def kafka_events() -> list[dict[str, Any]]:
        return [e for e in fake.events if e.get("eventSource") == "aws:kafka"]

    def all_records(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            for k, recs in e["records"].items():
                out.setdefault(k, []).extend(recs)
        return out

    delivered = wait_for(lambda: len(kafka_events()) >= 2 and sum(
        len(v) for v in all_records(kafka_events()[1:]).values()) >= 8, 60)
    if not check("bridge delivers the records (a failed first batch, then again)", delivered, tail(bridge)):
        return
    events = kafka_events()
    first, second = events[0], events[1]
    check("the failed batch is re-delivered unchanged", first["records"] == second["records"],
          (list(first["records"]), list(second["records"])))
    check("MSK event shape", first["eventSource"] == "aws:kafka" and first["bootstrapServers"] == brokers
          and first["eventSourceArn"].startswith("arn:aws:kafka:us-east-1:000000000000:cluster/loadwave-local/"),
          {k: v for k, v in first.items() if k != "records"})
    got = {k: [(None if r["key"] is None else base64.b64decode(r["key"]), base64.b64decode(r["value"])) for r in v]
           for k, v in all_records(events[1:]).items()}
    check("records keyed topic-partition, base64 keys/values, each once and in order", got == sent, (got, sent))
    recs = [r for v in all_records(events[1:]).values() for r in v]
    check("record fields", all(r["timestampType"] == "CREATE_TIME" and abs(r["timestamp"] - time.time() * 1000) < 120_000
                               and r["topic"] + "-" + str(r["partition"]) in sent for r in recs), recs[:2])
    hb = all_records(events[1:]).get(f"{prefix}heartbeat-0", [{}])[0]
    check("record headers as signed byte arrays", hb.get("headers") == [{"h": [1, -1]}], hb)
    wait_for(lambda: len(seen_committed) >= 2, 10)  # the second answer may still be on its way
    check("nothing committed before the batch succeeded", seen_committed[:2] == [{}, {}], seen_committed)
    want = {k: len(v) for k, v in sent.items()}
    check("offsets committed after success", wait_for(lambda: committed() == want, 15) is True, (committed(), want))

    produce("metrics", 1, b"late", b"after-commit")
    producer.flush(30)
    later = wait_for(lambda: [e for e in kafka_events()[2:] if e["records"]], 15)
    check("a later record comes alone (the committed ones are not replayed)",
          bool(later) and all_records(later) .get(f"{prefix}metrics-1", [{}])[0].get("offset") == 2
          and sum(len(v) for v in all_records(later).values()) == 1, later)

    ticks = wait_for(lambda: [e for e in fake.events if e.get("detail-type") == "Scheduled Event"][:2], 10)
    tick = ticks[0] if ticks else {}
    check("scheduled events arrive", bool(ticks) and len(ticks) == 2 and tick.get("source") == "aws.events"
          and tick.get("resources") == ["arn:aws:events:us-east-1:000000000000:rule/loadwave-local-tick"]
          and tick.get("account") == "000000000000" and tick.get("detail") == {}
          and len(tick.get("time", "")) == 20 and tick["time"].endswith("Z"), tick)
    check("scheduled and batch invocations never overlap", fake.max_in_flight == 1, fake.max_in_flight)
    started = time.monotonic()
    rc = stop(bridge, grace=15)
    check("bridge stops on SIGTERM", rc == 0 and time.monotonic() - started < 15, (rc, tail(bridge)))
    log = open(bridge.log_path).read()  # type: ignore[attr-defined]
    check("one log line per invocation, with counts and outcome",
          "error in" in log and "Boom: first batch fails" in log and f"{prefix}metrics: 5" in log
          and "invoke scheduled event: ok" in log, log[-800:])

    # Topics that appear after the bridge subscribed (loadwave creates its own) are picked up.
    late = f"lwtest{random.randrange(10**6)}-"
    bridge = spawn("bridge-late", local_aws(
        "bridge", "--brokers", brokers, "--topic-prefix", late, "--invoke", fake.url, "--schedule-every", "0"))
    time.sleep(3)
    for f in admin.create_topics([NewTopic(late + t, num_partitions=1, replication_factor=1)
                                  for t in topics]).values():
        f.result(30)
    producer.produce(late + "register", value=b"late topic")
    producer.flush(30)
    arrived = wait_for(lambda: any(f"{late}register-0" in e.get("records", {}) for e in fake.events), 30)
    check("topics created after the bridge started are consumed", arrived, tail(bridge))
    stop(bridge, grace=15)
    fake.shutdown()


# --------------------------------------------------------------------------------------------
# ecs-watcher + setup-moto against a real moto_server

FAKE_DRIVER = """#!/bin/sh
echo "ARGV: $*"
env | sort | sed 's/^/ENV /'
if [ -n "$FAKE_IGNORE_TERM" ]; then trap '' TERM; else trap 'echo "got SIGTERM"; exit 0' TERM; fi
while :; do sleep 0.1; done
"""


def test_ecs() -> None:
    import boto3

    port = free_port()
    moto_bin = os.path.join(os.path.dirname(sys.executable), "moto_server")
    moto = spawn("moto", [moto_bin, "-H", "127.0.0.1", "-p", str(port)])
    endpoint = f"http://127.0.0.1:{port}"
    up = subprocess.run(local_aws("wait-http", f"{endpoint}/moto-api/data.json", "--timeout", "30"), timeout=40)
    if not check("moto_server answers", up.returncode == 0, tail(moto)):
        return
    setup = subprocess.run(local_aws("setup-moto", "--endpoint", endpoint, "--bucket", "loadwave-local",
                                     "--cluster", "loadwave-local", "--task-family", "loadwave-driver",
                                     "--container", "driver"), stdout=subprocess.PIPE, timeout=60, text=True)
    net = json.loads(setup.stdout.strip().splitlines()[-1]) if setup.returncode == 0 else {}
    check("setup-moto prints subnets, security groups, task definition",
          net.get("subnets") and net.get("security_groups") and ":task-definition/loadwave-driver:" in net.get("task_definition_arn", ""), setup.stdout)
    kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    ecs, s3 = boto3.client("ecs", **kw), boto3.client("s3", **kw)
    check("bucket and cluster exist", "loadwave-local" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
          and ecs.describe_clusters(clusters=["loadwave-local"])["clusters"][0]["status"] == "ACTIVE")
    setup2 = subprocess.run(local_aws("setup-moto", "--endpoint", endpoint, "--bucket", "loadwave-local",
                                      "--cluster", "loadwave-local", "--task-family", "loadwave-driver"),
                            stdout=subprocess.DEVNULL, timeout=60)
    check("setup-moto can run twice", setup2.returncode == 0)
    # A second family with environment in the definition, to see the override win.
    ecs.register_task_definition(
        family="fake-env", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        containerDefinitions=[{"name": "driver", "image": "x", "cpu": 256, "memory": 512, "essential": True,
                               "environment": [{"name": "FROM_TD", "value": "td"}, {"name": "BOTH", "value": "td"}]}])

    driver_bin = os.path.join(WORK, "loadwave-driver")
    with open(driver_bin, "w") as f:
        f.write(FAKE_DRIVER)
    os.chmod(driver_bin, 0o755)
    log_dir = os.path.join(WORK, "drivers")
    env = dict(os.environ, FROM_WATCHER="watcher", BOTH="watcher", AWS_REGION="us-east-1")
    watcher = spawn("ecs-watcher", local_aws("ecs-watcher", "--endpoint", endpoint, "--cluster", "loadwave-local",
                                             "--driver-bin", driver_bin, "--log-dir", log_dir, "--poll-ms", "200"), env=env)

    def run_task(family: str, extra_env: list[dict[str, str]] | None = None) -> str:
        resp = ecs.run_task(
            cluster="loadwave-local", taskDefinition=family, count=1,
            capacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}],
            networkConfiguration={"awsvpcConfiguration": {"subnets": net["subnets"][:1],
                                                          "securityGroups": net["security_groups"]}},
            overrides={"containerOverrides": [{"name": "driver", "command": ["--test-id", "t1"],
                                               "environment": [{"name": "BOTH", "value": "override"}] + (extra_env or [])}]})
        return resp["tasks"][0]["taskArn"]

    def state(arn: str) -> dict[str, Any]:
        with open(os.path.join(log_dir, "tasks.json")) as f:
            return json.load(f).get(arn, {})

    def driver_log(arn: str) -> str:
        with open(os.path.join(log_dir, arn.rsplit("/", 1)[-1] + ".log"), errors="replace") as f:
            return f.read()

    def describe(arn: str) -> dict[str, Any]:
        return ecs.describe_tasks(cluster="loadwave-local", tasks=[arn])["tasks"][0]

    arn = run_task("fake-env")
    if not check("run_task -> a driver process", wait_for(lambda: "ENV ECS_CONTAINER_METADATA_URI_V4" in driver_log(arn)
                                                          and state(arn).get("pid"), 15), tail(watcher)):
        return
    text = driver_log(arn)
    denv = dict(line[4:].split("=", 1) for line in text.splitlines() if line.startswith("ENV ") and "=" in line)
    check("driver argv from the override's command", "ARGV: --test-id t1" in text, text[:300])
    check("driver env: watcher's + task definition's + override's (later wins)",
          denv.get("FROM_WATCHER") == "watcher" and denv.get("FROM_TD") == "td" and denv.get("BOTH") == "override"
          and denv.get("AWS_REGION") == "us-east-1" and "PATH" in denv, {k: denv.get(k) for k in ("FROM_WATCHER", "FROM_TD", "BOTH", "AWS_REGION")})
    meta = denv.get("ECS_CONTAINER_METADATA_URI_V4", "")
    try:
        mport = int(meta.split(":")[2].split("/")[0])
        mpath = "/" + meta.split("/", 3)[3]
        s1, _, task_doc = request(mport, "GET", mpath + "/task")
        s2, _, container_doc = request(mport, "GET", mpath)
        s3_, _, _ = request(mport, "GET", "/v4/nope/task")
        task_doc, container_doc = json.loads(task_doc), json.loads(container_doc)
    except Exception as err:
        s1 = s2 = s3_ = 0
        task_doc = container_doc = {"error": repr(err)}
    check("metadata endpoint: task document with the TaskARN",
          s1 == 200 and task_doc.get("TaskARN") == arn and task_doc.get("LaunchType") == "FARGATE"
          and task_doc.get("KnownStatus") == "RUNNING" and task_doc.get("Family") == "fake-env"
          and task_doc.get("Cluster", "").endswith("cluster/loadwave-local"), task_doc)
    check("metadata endpoint: container document, 404 for unknown tasks",
          s2 == 200 and container_doc.get("Name") == "driver" and container_doc.get("DockerId") and s3_ == 404, container_doc)
    for _ in range(5):
        describe(arn)
    check("manual transition: describes leave the task RUNNING", describe(arn)["lastStatus"] == "RUNNING")

    ecs.stop_task(cluster="loadwave-local", task=arn, reason="test stop")
    stopped = wait_for(lambda: state(arn).get("status") == "exited" and "got SIGTERM" in driver_log(arn), 10)
    check("stop_task -> the driver gets SIGTERM and exits", stopped and state(arn).get("exit_code") == 0,
          (state(arn), tail(watcher)))
    check("a stopped task keeps its own stoppedReason", describe(arn)["stoppedReason"] == "test stop")

    arn2 = run_task("loadwave-driver")
    pid = wait_for(lambda: state(arn2).get("pid") if state(arn2).get("status") == "running" else None, 15)
    if pid:
        os.kill(pid, signal.SIGKILL)
    task = wait_for(lambda: (lambda t: t if t["lastStatus"] == "STOPPED" else None)(describe(arn2)), 10) or {}
    check("a killed driver -> moto shows the task STOPPED, 'Essential container in task exited'",
          task.get("desiredStatus") == "STOPPED" and task.get("stoppedReason") == "Essential container in task exited"
          and state(arn2).get("exit_code") == 137, (task.get("lastStatus"), task.get("stoppedReason"), state(arn2)))

    arn3 = run_task("loadwave-driver", [{"name": "FAKE_IGNORE_TERM", "value": "1"}])
    wait_for(lambda: state(arn3).get("status") == "running", 15)
    ecs.stop_task(cluster="loadwave-local", task=arn3, reason="test stop")
    t0 = time.monotonic()
    killed = wait_for(lambda: state(arn3).get("status") == "exited", 20)
    waited = time.monotonic() - t0
    check("a driver ignoring SIGTERM is SIGKILLed after 10 s", killed and state(arn3).get("exit_code") == 137
          and 9 <= waited <= 14, (state(arn3), round(waited, 1)))

    arn4 = run_task("loadwave-driver")
    wait_for(lambda: state(arn4).get("status") == "running", 15)
    rc = stop(watcher, grace=20)
    check("watcher exits on SIGTERM after stopping its drivers",
          rc == 0 and "got SIGTERM" in driver_log(arn4) and state(arn4).get("status") == "exited", (rc, tail(watcher)))
    check("... and moto shows that task STOPPED", describe(arn4)["desiredStatus"] == "STOPPED")
    stop(moto)


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# stack: scripts/local-aws.sh up/down with stand-ins for the Rust binaries

FAKE_TARGET = """#!PYTHON
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
host, port = sys.argv[sys.argv.index("--listen") + 1].rsplit(":", 1)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers(); self.wfile.write(b"ok\\n")
HTTPServer((host, int(port)), H).serve_forever()
"""

# A function over the runtime API: the api answers every request with its environment; the
# controller says on stderr (the RIE's log) what invoked it.
FAKE_LAMBDA = r'''#!PYTHON
import json, os, sys, urllib.request
api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(api + "next", timeout=3600) as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    print("FAKE EVENT", event.get("detail-type") or event.get("eventSource") or event.get("rawPath"), file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k.startswith(("LOADWAVE_", "AWS_", "KAFKA_", "RUST_"))}
    doc = {"statusCode": 200, "body": json.dumps(env)} if event.get("version") == "2.0" else None
    req = urllib.request.Request(api + rid + "/response", data=json.dumps(doc).encode(), method="POST")
    urllib.request.urlopen(req, timeout=10).read()
'''


def _free_block(offsets: list[int]) -> int:
    for _ in range(200):
        base = random.randrange(20000, 30000)
        if not any(port_open(base + o) for o in offsets):
            return base
    raise RuntimeError("no free ports")


def test_stack() -> None:
    import boto3

    bin_dir = os.path.join(WORK, "bin")
    os.makedirs(bin_dir)
    python = shutil.which("python3") or "/usr/bin/python3"
    for name, text in (("loadwave-target", FAKE_TARGET), ("loadwave-lambda-api", FAKE_LAMBDA),
                       ("loadwave-lambda-controller", FAKE_LAMBDA), ("loadwave-driver", FAKE_DRIVER),
                       ("loadwave", "#!/bin/sh\nexit 0\n")):
        with open(os.path.join(bin_dir, name), "w") as f:
            f.write(text.replace("PYTHON", python))
        os.chmod(os.path.join(bin_dir, name), 0o755)
    # api, target, moto, rie-api, rie-controller, and the RIEs' runtime APIs 10 above them
    base = _free_block([0, 1, 2, 3, 4, 13, 14])
    kafka_port = KAFKA_PORT + 100
    state = os.path.join(WORK, "stack")
    env = dict(os.environ, LOADWAVE_BIN_DIR=bin_dir, LOCAL_AWS_NO_DEMO="1", LOCAL_AWS_STATE_DIR=state,
               LOCAL_AWS_API_PORT=str(base), LOCAL_AWS_TARGET_PORT=str(base + 1), LOCAL_AWS_MOTO_PORT=str(base + 2),
               LOCAL_AWS_API_RIE_PORT=str(base + 3), LOCAL_AWS_CONTROLLER_RIE_PORT=str(base + 4),
               LOCAL_AWS_KAFKA_PORT=str(kafka_port), LOCAL_AWS_TOPIC_PREFIX="stack-")
    script = os.path.join(HERE, "local-aws.sh")
    try:
        started = time.monotonic()
        up = subprocess.run(["bash", script, "up"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=900, text=True)
        print(f"  (up took {time.monotonic() - started:.0f} s)")
        if not check("local-aws.sh up", up.returncode == 0 and f"API: http://127.0.0.1:{base}" in up.stdout.splitlines(),
                     up.stdout[-1500:]):
            return
        status, _, body = request(base, "GET", "/healthz")
        fenv = json.loads(body) if status == 200 else {}
        check("GET /healthz through front -> RIE -> the api function, with the Lambda environment",
              fenv.get("LOADWAVE_STORE") == "s3://loadwave-local/state" and fenv.get("KAFKA_BROKERS") == f"127.0.0.1:{kafka_port}"
              and fenv.get("LOADWAVE_TOPIC_PREFIX") == "stack-" and fenv.get("LOADWAVE_ECS_SUBNETS", "").startswith("subnet-")
              and fenv.get("LOADWAVE_ECS_SECURITY_GROUPS", "").startswith("sg-") and fenv.get("LOADWAVE_KAFKA_AUTH") == "none"
              and fenv.get("AWS_ENDPOINT_URL") == f"http://127.0.0.1:{base + 2}" and fenv.get("AWS_ACCESS_KEY_ID") == "test"
              and fenv.get("LOADWAVE_ECS_CLUSTER") == "loadwave-local" and fenv.get("LOADWAVE_ECS_CONTAINER") == "driver"
              and fenv.get("LOADWAVE_ECS_TASK_DEFINITION") == "loadwave-driver"
              and fenv.get("LOADWAVE_ECS_CAPACITY_PROVIDER") == "FARGATE" and fenv.get("RUST_LOG") == "info", (status, body[:500]))

        def controller_log() -> str:
            with open(os.path.join(state, "rie-controller.log"), errors="replace") as f:
                return f.read()

        check("the bridge invokes the controller on schedule",
              wait_for(lambda: "FAKE EVENT Scheduled Event" in controller_log(), 10), controller_log()[-500:])
        kw = dict(endpoint_url=f"http://127.0.0.1:{base + 2}", region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
        net = json.loads(body)
        arn = boto3.client("ecs", **kw).run_task(
            cluster="loadwave-local", taskDefinition="loadwave-driver", count=1,
            capacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}],
            networkConfiguration={"awsvpcConfiguration": {"subnets": net["LOADWAVE_ECS_SUBNETS"].split(","),
                                                          "securityGroups": net["LOADWAVE_ECS_SECURITY_GROUPS"].split(",")}},
        )["tasks"][0]["taskArn"]
        driver_log = os.path.join(state, "drivers", arn.rsplit("/", 1)[-1] + ".log")
        check("an ECS task of the stack's cluster runs a driver",
              wait_for(lambda: "ENV AWS_REGION=us-east-1" in open(driver_log).read(), 10),
              open(os.path.join(state, "ecs-watcher.log")).read()[-800:])
        pids = []
        for name in os.listdir(state):
            if name.endswith(".pid"):
                with open(os.path.join(state, name)) as f:
                    pids.append(int(f.read()))
        with open(os.path.join(state, "drivers", "tasks.json")) as f:
            pids += [t["pid"] for t in json.load(f).values()]
    finally:
        down = subprocess.run(["bash", script, "down"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=120, text=True)
    check("local-aws.sh down", down.returncode == 0, down.stdout[-1000:])

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False

    check("down leaves no process and no open port behind",
          len(pids) >= 8 and not [p for p in pids if alive(p)]
          and not [p for p in (base, base + 1, base + 2, base + 3, base + 4, kafka_port) if port_open(p)],
          ([p for p in pids if alive(p)], len(pids)))


TESTS = {"units": test_units, "front": test_front, "rie": test_rie, "bridge": test_bridge, "ecs": test_ecs,
         "stack": test_stack}


def main() -> int:
    global WORK
    _bootstrap_tools()
    WORK = tempfile.mkdtemp(prefix="lw-local-aws-test-")
    chosen = sys.argv[1:] or list(TESTS)
    unknown = [c for c in chosen if c not in TESTS]
    if unknown:
        print(f"unknown test(s): {', '.join(unknown)}; choose from {', '.join(TESTS)}", file=sys.stderr)
        return 2
    try:
        for name in chosen:
            print(f"{name}:", flush=True)
            started = time.monotonic()
            try:
                TESTS[name]()
            except Exception:
                check(f"{name} ran to the end", False, traceback.format_exc())
            print(f"  ({time.monotonic() - started:.1f} s)", flush=True)
    finally:
        for proc in PROCS:
            try:
                stop(proc)
            except Exception:
                pass
    if RESULTS["failed"]:
        print(f"logs kept in {WORK}")
    else:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
