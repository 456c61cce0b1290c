#!/usr/bin/env python3
"""The AWS pieces of `make local-aws`, emulated around real processes on 127.0.0.1.

    front        API Gateway (HTTP API, payload format 2.0) in front of a Lambda RIE
    bridge       an MSK event source mapping plus an EventBridge schedule, invoking a Lambda RIE
    ecs-watcher  runs a real driver process for every ECS task moto says is running
    setup-moto   creates the bucket, the ECS cluster and the driver's task definition in moto
    wait-http    waits until a URL answers 200

Only the standard library, boto3 and confluent_kafka are used (the venv of scripts/tools.sh);
the latter two are imported by the subcommands that need them.

What the AWS Lambda runtime interface emulator (aws-lambda-rie, the version pinned in
scripts/tools.sh) does, measured by scripts/test_local_aws.py (its `rie` check) with a small
bootstrap that speaks the runtime API:

  (a) Environment: the bootstrap inherits the RIE's whole environment. The RIE adds
      AWS_LAMBDA_RUNTIME_API and defaults (AWS_LAMBDA_FUNCTION_NAME=test_function,
      AWS_LAMBDA_FUNCTION_MEMORY_SIZE=3008, ...) that its own environment overrides, and it
      passes AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN as *empty strings*
      when they are unset, so they must be set on the RIE. The bootstrap is started lazily,
      by the first invocation (which therefore carries the cold start), not by the RIE's start.
  (b) A function error (the runtime POSTs .../error) answers **200**, with no
      X-Amz-Function-Error header and Content-Type text/plain; the body is the error
      document the runtime posted, e.g. {"errorType": "...", "errorMessage": "..."}. So an
      error can only be told from a result by the body's shape. A runtime that exits answers
      502 with {"errorType":"Runtime.ExitError",...}; a timeout (AWS_LAMBDA_FUNCTION_TIMEOUT,
      default 300 s) answers 200 with the text "Task timed out after N.00 seconds" (the
      runtime is killed and started again by the next invocation).
  (c) Concurrency: none. A second invocation while one is running fails its reservation
      ("ReserveFailed: AlreadyReserved") and then the RIE *crashes* (a nil pointer panic in
      rapidcore.(*Server).Invoke), taking the runtime with it. Every invocation of one RIE
      must therefore be serialized; `front` and `bridge` hold a lock around each.
  Also: the RIE serves its runtime API on 127.0.0.1:9001 unless given
  --runtime-api-address, so two RIEs on one machine need distinct ones; SIGTERM to the RIE
  SIGKILLs its runtime, so stopping the RIE leaves no orphan. Its "managed instances" mode
  (AWS_LAMBDA_MAX_CONCURRENCY set) refuses to start a bootstrap outside a Lambda image
  (Runtime.InvalidEntrypoint), so it is no way around (c).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable

log = logging.getLogger("local-aws")

ACCOUNT_ID = "000000000000"
MSK_CLUSTER_ARN = (
    "arn:aws:kafka:us-east-1:000000000000:cluster/loadwave-local/00000000-0000-0000-0000-000000000000-1"
)
SCHEDULE_RULE_ARN = "arn:aws:events:us-east-1:000000000000:rule/loadwave-local-tick"

# Everything here talks to 127.0.0.1; a proxy configured in the environment must not catch it.
_URL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _loopback_without_proxy() -> None:
    """Keeps boto3 (which honours *_proxy variables) off any proxy for loopback addresses."""
    for name in ("NO_PROXY", "no_proxy"):
        current = [h for h in os.environ.get(name, "").split(",") if h]
        for host in ("127.0.0.1", "localhost"):
            if host not in current:
                current.append(host)
        os.environ[name] = ",".join(current)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _install_stop_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("got %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


# --------------------------------------------------------------------------------------------
# Invoking a function through the RIE


class InvokeFailed(Exception):
    """The RIE could not be reached or did not answer in time; nothing is known of the function."""


@dataclass
class Invocation:
    status: int
    body: bytes
    # "errorType: errorMessage" when the function (or its runtime) failed, else None.
    function_error: str | None


def function_error_of(status: int, headers: Any, body: bytes) -> str | None:
    """Tells a failed invocation from a result, given what the RIE answers (see (b) above)."""
    if headers is not None and headers.get("X-Amz-Function-Error"):
        # What the real Invoke API sets; kept so this also works against a real endpoint.
        return f"{headers.get('X-Amz-Function-Error')}: {_error_text(body)}"
    if status != 200:
        return f"HTTP {status} from the emulator: {_error_text(body)}"
    if body.startswith(b"Task timed out after"):
        return body.decode("utf-8", "replace")
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        return None
    if isinstance(doc, dict) and "errorType" in doc and "errorMessage" in doc and "statusCode" not in doc:
        return f"{doc['errorType']}: {doc['errorMessage']}"
    return None


def _error_text(body: bytes) -> str:
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and "errorMessage" in doc:
            return f"{doc.get('errorType', 'Error')}: {doc['errorMessage']}"
    except ValueError:
        pass
    text = body.decode("utf-8", "replace").strip()
    return text[:500] if text else "(empty body)"


def invoke(url: str, payload: bytes, timeout: float) -> Invocation:
    request = urllib.request.Request(
        url, data=payload, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with _URL_OPENER.open(request, timeout=timeout) as response:
            status, headers, body = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        status, headers, body = err.code, err.headers, err.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        # Refused, reset, timed out (TimeoutError is an OSError) or cut short mid-body.
        reason = getattr(err, "reason", err)
        raise InvokeFailed(f"{url}: {reason}") from err
    return Invocation(status, body, function_error_of(status, headers, body))


# --------------------------------------------------------------------------------------------
# front: API Gateway HTTP API, payload format 2.0

MAX_BODY = 10 * 1024 * 1024  # API Gateway's payload limit
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
# Framing belongs to this hop, not to what the function answered.
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}


def http_api_event(
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    source_ip: str,
    protocol: str = "HTTP/1.1",
    now_ms: int | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The event API Gateway's HTTP API sends a Lambda integration (payload format 2.0)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    request_id = request_id or str(uuid.uuid4())
    split = urllib.parse.urlsplit(target)
    # As measured on AWS: an HTTP API hands over rawPath percent-*decoded*, while
    # rawQueryString stays exactly as the client sent it.
    path = urllib.parse.unquote(split.path or "/")

    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        name = name.lower()
        if name == "cookie":
            # Payload 2.0 moves cookies out of the headers into their own list.
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[name] = f"{joined[name]},{value}" if name in joined else value

    query: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(split.query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value

    domain = joined.get("host", "localhost")
    t = time.gmtime(now_ms / 1000)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": split.query,
        "headers": joined,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": "loadwave-local",
            "domainName": domain,
            "domainPrefix": domain.split(".")[0].split(":")[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": protocol,
                "sourceIp": source_ip,
                "userAgent": joined.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            # strftime's %b would follow the locale; API Gateway's is always English.
            "time": f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000",
            "timeEpoch": now_ms,
        },
        "isBase64Encoded": False,
    }
    # Like API Gateway, absent rather than empty.
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if body:
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


class BadResponse(Exception):
    pass


def http_response_of(payload: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Maps a function's result to (status, headers, body) as API Gateway does for 2.0."""
    try:
        doc = json.loads(payload) if payload.strip() else None
    except ValueError as err:
        raise BadResponse(f"the function's result is not JSON: {err}") from err
    if not isinstance(doc, dict) or "statusCode" not in doc:
        # API Gateway's inference for 2.0: anything without a statusCode is a 200 JSON body.
        return 200, [("content-type", "application/json")], payload
    status = doc["statusCode"]
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise BadResponse(f"statusCode {status!r} is not an HTTP status")
    multi = doc.get("multiValueHeaders") or {}
    headers: list[tuple[str, str]] = []
    for name, value in (doc.get("headers") or {}).items():
        if name not in multi:
            headers.append((name, str(value)))
    for name, values in multi.items():
        for value in values if isinstance(values, list) else [values]:
            headers.append((name, str(value)))
    for cookie in doc.get("cookies") or []:
        headers.append(("set-cookie", str(cookie)))
    body = doc.get("body")
    if body is None:
        data = b""
    elif doc.get("isBase64Encoded"):
        try:
            data = base64.b64decode(body, validate=True)
        except (binascii.Error, TypeError) as err:
            raise BadResponse(f"body is marked base64 but is not: {err}") from err
    else:
        data = body.encode() if isinstance(body, str) else _json_bytes(body)
    headers = [(n, v) for n, v in headers if n.lower() not in _HOP_HEADERS]
    return status, headers, data


class FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], invoke_url: str, invoke_timeout: float):
        self.invoke_url = invoke_url
        self.invoke_timeout = invoke_timeout
        # The RIE crashes on concurrent invocations, see (c).
        self.invoke_lock = threading.Lock()
        super().__init__(address, FrontHandler)


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as load generators and ureq expect
    server_version = "loadwave-local-apigw"
    timeout = 120  # an idle or stalled client connection is dropped after this
    server: FrontServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _handle(self) -> None:
        started = time.monotonic()
        try:
            body = self._read_body()
        except (ValueError, OverflowError) as err:
            # Part of the body may be unread: this connection cannot carry another request.
            self.close_connection = True
            if isinstance(err, OverflowError):
                self._send_error(413, f"request body over {MAX_BODY} bytes")
            else:
                self._send_error(400, f"bad request body: {err}")
            return
        event = http_api_event(
            self.command,
            self.path,
            self.headers.items(),
            body,
            source_ip=self.client_address[0],
            protocol=self.request_version,
        )
        outcome = "ok"
        try:
            result = self._invoke(_json_bytes(event))
            if result.function_error:
                outcome = f"function error: {result.function_error}"
                self._send_error(502, f"the function failed: {result.function_error}")
            else:
                status, headers, data = http_response_of(result.body)
                self._send(status, headers, data)
                outcome = str(status)
        except (InvokeFailed, TimeoutError) as err:
            outcome = f"unreachable: {err}"
            self._send_error(502, f"the Lambda runtime emulator did not answer: {err}")
        except BadResponse as err:
            outcome = f"bad response: {err}"
            self._send_error(502, f"the function's response is malformed: {err}")
        log.info(
            "%s %s -> %s (%d ms)", self.command, self.path, outcome, (time.monotonic() - started) * 1000
        )

    def _invoke(self, payload: bytes) -> Invocation:
        # Bounded wait: requests queue for the emulator, but not longer than one invocation may
        # take, as API Gateway gives up on an integration after its timeout too.
        if not self.server.invoke_lock.acquire(timeout=self.server.invoke_timeout):
            raise TimeoutError(f"still busy with other requests after {self.server.invoke_timeout:g} s")
        try:
            return invoke(self.server.invoke_url, payload, self.server.invoke_timeout)
        finally:
            self.server.invoke_lock.release()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)  # ValueError: 400
        if length < 0:
            raise ValueError("negative Content-Length")
        if length > MAX_BODY:
            raise OverflowError
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"x", 16)
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return bytes(data)
            if len(data) + size > MAX_BODY:
                raise OverflowError
            data += self.rfile.read(size)
            self.rfile.readline(1024)

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_error(self, status: int, message: str) -> None:
        data = _json_bytes({"error": {"status": status, "message": message}})
        self._send(status, [("Content-Type", "application/json")], data)


def cmd_front(args: argparse.Namespace) -> int:
    server = FrontServer(args.listen, args.invoke, args.invoke_timeout)
    stop = threading.Event()
    _install_stop_signals(stop)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    log.info("API Gateway (HTTP API, payload 2.0) on http://%s:%d -> %s", host, port, args.invoke)
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


# --------------------------------------------------------------------------------------------
# bridge: MSK event source mapping + EventBridge schedule


@dataclass
class KafkaRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    timestamp_type: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)


def _java_bytes(data: bytes | None) -> list[int]:
    # MSK events carry header values as Java byte arrays: signed, so 0x80..0xff are negative
    # (aws_lambda_events reads them as Vec<i8> and would reject 128..255).
    return [b - 256 if b > 127 else b for b in (data or b"")]


def msk_event(records: list[KafkaRecord], brokers: str) -> dict[str, Any]:
    """The event an MSK event source mapping invokes a function with, for one batch."""
    grouped: dict[str, list[KafkaRecord]] = {}
    for record in records:
        grouped.setdefault(f"{record.topic}-{record.partition}", []).append(record)
    return {
        "eventSource": "aws:kafka",
        "eventSourceArn": MSK_CLUSTER_ARN,
        "bootstrapServers": brokers,
        "records": {
            key: [
                {
                    "topic": r.topic,
                    "partition": r.partition,
                    "offset": r.offset,
                    "timestamp": r.timestamp_ms,
                    "timestampType": r.timestamp_type,
                    "key": None if r.key is None else base64.b64encode(r.key).decode(),
                    "value": None if r.value is None else base64.b64encode(r.value).decode(),
                    "headers": [{name: _java_bytes(value)} for name, value in r.headers],
                }
                for r in sorted(batch, key=lambda r: r.offset)
            ]
            for key, batch in grouped.items()
        },
    }


def scheduled_event(now: float | None = None) -> dict[str, Any]:
    """What an EventBridge schedule rule (rate(...)) invokes its target with."""
    now = time.time() if now is None else now
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "region": "us-east-1",
        "resources": [SCHEDULE_RULE_ARN],
        "detail": {},
    }


class Bridge:
    def __init__(self, args: argparse.Namespace, stop: threading.Event):
        self.args = args
        self.stop = stop
        # One lock for the batch loop and the scheduler: the RIE takes one invocation at a time.
        self.invoke_lock = threading.Lock()
        self.topics = [args.topic_prefix + t for t in ("register", "heartbeat", "metrics")]
        self._last_kafka_error: dict[str, float] = {}

    # One invocation, serialized; True when the function succeeded.
    def _invoke(self, what: str, event: dict[str, Any]) -> bool:
        payload = _json_bytes(event)
        while not self.invoke_lock.acquire(timeout=0.5):
            if self.stop.is_set():
                return False
        started = time.monotonic()
        try:
            result = invoke(self.args.invoke, payload, self.args.invoke_timeout)
            error = result.function_error
        except InvokeFailed as err:
            error = f"emulator unreachable: {err}"
        finally:
            self.invoke_lock.release()
        ms = (time.monotonic() - started) * 1000
        if error:
            log.warning("invoke %s: error in %.0f ms: %s", what, ms, error)
        else:
            log.info("invoke %s: ok in %.0f ms", what, ms)
        return error is None

    def run_schedule(self) -> None:
        every = self.args.schedule_every
        next_at = time.monotonic() + every
        while not self.stop.wait(max(0.0, next_at - time.monotonic())):
            self._invoke("scheduled event", scheduled_event())
            # A slow invocation skips the ticks it overran, as one rule target does not pile up.
            next_at = max(next_at + every, time.monotonic())

    def run_batches(self) -> None:
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        consumer = Consumer(
            {
                "bootstrap.servers": self.args.brokers,
                "group.id": self.args.group or f"{self.args.topic_prefix}lambda-controller",
                "client.id": "loadwave-local-esm",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                # The topics are created by loadwave itself, possibly after this subscribed:
                # look again every second instead of librdkafka's five minutes.
                "topic.metadata.refresh.interval.ms": 1000,
                # A failing batch is retried without polling in between, for as long as it
                # fails (as an ESM does); the group must not evict us meanwhile.
                "max.poll.interval.ms": 86_400_000,
                # After a crash (no clean leave), a restarted bridge waits for the old member's
                # session to expire before it gets the partitions: keep that short.
                "session.timeout.ms": 10_000,
            }
        )
        consumer.subscribe(self.topics)
        log.info(
            "MSK event source mapping: %s on %s -> %s (batches of up to %d records or %d ms)",
            ", ".join(self.topics), self.args.brokers, self.args.invoke,
            self.args.batch_max, self.args.batch_window_ms,
        )
        try:
            while not self.stop.is_set():
                records = self._collect(consumer)
                if not records or not self._deliver(records):
                    continue
                offsets: dict[tuple[str, int], int] = {}
                for r in records:
                    offsets[(r.topic, r.partition)] = max(offsets.get((r.topic, r.partition), -1), r.offset)
                try:
                    consumer.commit(
                        offsets=[TopicPartition(t, p, o + 1) for (t, p), o in offsets.items()],
                        asynchronous=False,
                    )
                except KafkaException as err:
                    # Not fatal: the records come again and the controller's fold drops them.
                    log.warning("commit failed (the batch may be delivered again): %s", err)
        finally:
            # close() leaves the group; bounded so a vanished broker cannot hold up the exit.
            closer = threading.Thread(target=consumer.close, daemon=True)
            closer.start()
            closer.join(10)

    def _collect(self, consumer: Any) -> list[KafkaRecord]:
        """Up to batch_max records, or what arrived within batch_window_ms of the first."""
        from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME

        records: list[KafkaRecord] = []
        deadline: float | None = None
        while not self.stop.is_set() and len(records) < self.args.batch_max:
            wait = 0.5 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            for msg in consumer.consume(num_messages=self.args.batch_max - len(records), timeout=min(wait, 0.5)):
                if msg.error():
                    self._kafka_error(msg.error())
                    continue
                ts_type, ts = msg.timestamp()
                records.append(
                    KafkaRecord(
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                        timestamp_ms=ts,
                        timestamp_type="LOG_APPEND_TIME" if ts_type == TIMESTAMP_LOG_APPEND_TIME else "CREATE_TIME",
                        key=msg.key(),
                        value=msg.value(),
                        headers=list(msg.headers() or []),
                    )
                )
            if records and deadline is None:
                deadline = time.monotonic() + self.args.batch_window_ms / 1000
        return records

    def _kafka_error(self, error: Any) -> None:
        # Unknown topics repeat on every poll until loadwave creates them: each error is said
        # once a minute (the text names the topic).
        key = error.str()
        now = time.monotonic()
        if now - self._last_kafka_error.get(key, -1e9) >= 60:
            self._last_kafka_error[key] = now
            log.warning("kafka: %s", error)

    def _deliver(self, records: list[KafkaRecord]) -> bool:
        """Invokes until the function takes the batch; False only when stopped first."""
        counts: dict[str, int] = {}
        for r in records:
            counts[r.topic] = counts.get(r.topic, 0) + 1
        what = "kafka batch [" + ", ".join(f"{t}: {n}" for t, n in counts.items()) + "]"
        event = msk_event(records, self.args.brokers)
        attempt = 1
        while not self._invoke(what if attempt == 1 else f"{what} (attempt {attempt})", event):
            # An ESM retries the same batch until it succeeds (or the records expire); the
            # partitions stay blocked meanwhile, which is what the controller relies on.
            if self.stop.wait(self.args.retry_backoff):
                return False
            attempt += 1
        return True


def cmd_bridge(args: argparse.Namespace) -> int:
    stop = threading.Event()
    _install_stop_signals(stop)
    bridge = Bridge(args, stop)
    if args.schedule_every > 0:
        threading.Thread(target=bridge.run_schedule, name="schedule", daemon=True).start()
        log.info("EventBridge schedule: every %g s -> %s", args.schedule_every, args.invoke)
    # The batch loop runs beside the main thread so that a stop is not held up by an
    # invocation in flight (an HTTP call cannot be interrupted): the loop gets a few seconds to
    # finish and close the consumer, then the process exits regardless. A batch cut short was
    # not committed and comes again, as with a real event source mapping.
    failed: list[BaseException] = []

    def batch_loop() -> None:
        try:
            bridge.run_batches()
        except BaseException as err:  # reported by the main thread, which sets the exit code
            failed.append(err)
            log.exception("the batch loop failed")

    batches = threading.Thread(target=batch_loop, name="batches", daemon=True)
    batches.start()
    while batches.is_alive() and not stop.wait(0.5):
        pass
    stop.set()
    batches.join(12)
    if batches.is_alive():
        log.warning("an invocation was still in flight; exiting without it")
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------
# ecs-watcher: moto's ECS tasks made real

STOP_GRACE_S = 10.0  # ECS's default stopTimeout: SIGTERM, then SIGKILL
ESSENTIAL_EXITED = "Essential container in task exited"


def _boto_client(service: str, endpoint: str, region: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        # Bounded calls: a hung moto must not hang the caller.
        config=Config(connect_timeout=2, read_timeout=15, retries={"max_attempts": 2, "mode": "standard"}),
    )


@dataclass
class Driver:
    arn: str
    task_id: str
    log_path: str
    proc: subprocess.Popen | None
    status: str = "running"  # running | stopping | exited
    exit_code: int | None = None
    term_sent_at: float | None = None
    stopped_by_ecs: bool = False  # StopTask asked for it; ECS already knows
    ecs_told: bool = False  # moto was told the task stopped (or already knew)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def driver_argv(driver_bin: str, command: list[str] | None) -> list[str]:
    """ECS's `command` replaces the image's CMD and keeps its ENTRYPOINT, here the driver.

    A command that names the driver itself first (an image without an ENTRYPOINT) is
    accepted too: that first word is the program, not an argument.
    """
    command = list(command or [])
    if command and os.path.basename(command[0]) == os.path.basename(driver_bin):
        command = command[1:]
    return [driver_bin, *command]


def driver_environment(
    base: dict[str, str],
    container: dict[str, Any],
    override: dict[str, Any],
    region: str,
    metadata_uri: str,
) -> dict[str, str]:
    env = dict(base)
    # What Fargate puts in every container, unless the watcher's own environment says otherwise.
    env.setdefault("AWS_REGION", region)
    env.setdefault("AWS_DEFAULT_REGION", env["AWS_REGION"])
    env["AWS_EXECUTION_ENV"] = "AWS_ECS_FARGATE"
    # The task definition's, then the run's overrides: later wins, as in ECS.
    for source in (container.get("environment") or [], override.get("environment") or []):
        env.update({e["name"]: str(e.get("value", "")) for e in source})
    env["ECS_CONTAINER_METADATA_URI_V4"] = metadata_uri
    return env


class Watcher:
    def __init__(self, args: argparse.Namespace, stop: threading.Event):
        self.args = args
        self.stop = stop
        self.ecs = _boto_client("ecs", args.endpoint, args.region)
        self.drivers: dict[str, Driver] = {}
        self.by_task_id: dict[str, Driver] = {}
        self.lock = threading.Lock()  # drivers' metadata, read by the metadata server's threads
        self.task_definitions: dict[str, dict[str, Any]] = {}
        self.metadata_base = ""
        self._written = ""
        self._last_error_at = -1e9
        os.makedirs(args.log_dir, exist_ok=True)

    # ---- the metadata endpoint (Fargate's ECS_CONTAINER_METADATA_URI_V4)

    def serve_metadata(self) -> ThreadingHTTPServer:
        watcher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("metadata: " + format, *args)

            def do_GET(self) -> None:
                parts = [p for p in self.path.split("?")[0].split("/") if p]
                doc = None
                if len(parts) >= 2 and parts[0] == "v4":
                    with watcher.lock:
                        driver = watcher.by_task_id.get(parts[1])
                        if driver is not None:
                            if parts[2:] == []:
                                doc = driver.metadata["container"]
                            elif parts[2:] == ["task"]:
                                doc = driver.metadata["task"]
                status = 200 if doc is not None else 404
                data = _json_bytes(doc if doc is not None else {"error": f"no metadata at {self.path}"})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(self.args.metadata_listen, Handler)
        server.daemon_threads = True
        host, port = server.server_address[:2]
        self.metadata_base = f"http://{host}:{port}"
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        return server

    # ---- the loop

    def run(self) -> None:
        log.info(
            "watching ECS cluster %s at %s; drivers: %s; logs and tasks.json: %s; metadata: %s/v4/",
            self.args.cluster, self.args.endpoint, self.args.driver_bin, self.args.log_dir, self.metadata_base,
        )
        self.write_state()
        while not self.stop.wait(self.args.poll_ms / 1000):
            self.reap()
            try:
                self.sync_with_ecs()
            except Exception as err:  # a moto hiccup must not end the watcher; say it, now and then
                now = time.monotonic()
                if now - self._last_error_at >= 10:
                    self._last_error_at = now
                    log.warning("ECS poll failed: %s", err)
            # Local, so it runs even while moto does not answer.
            self.escalate()
            self.write_state()
        self.shutdown()

    def sync_with_ecs(self) -> None:
        # list_tasks does not touch moto's task state machine; describe_tasks advances it (see
        # setup-moto), so each task is described once, when it first shows up.
        running = self.list_running()
        new = [arn for arn in running if arn not in self.drivers]
        for task in self.describe(new):
            if task.get("desiredStatus") == "RUNNING" and task.get("lastStatus") != "STOPPED":
                self.start(task)
        for driver in list(self.drivers.values()):
            if driver.status == "running" and driver.arn not in running:
                # StopTask (or the task vanished): stop the container as ECS would.
                driver.stopped_by_ecs = True
                driver.ecs_told = True
                log.info("task %s was stopped: SIGTERM to driver pid %s", driver.task_id, driver.pid)
                self.terminate(driver)
            elif driver.status == "exited" and not driver.ecs_told:
                if driver.arn in running:
                    self.ecs.stop_task(cluster=self.args.cluster, task=driver.arn, reason=ESSENTIAL_EXITED)
                    log.info("task %s: told ECS it stopped (%s)", driver.task_id, ESSENTIAL_EXITED)
                driver.ecs_told = True

    def list_running(self) -> set[str]:
        arns: set[str] = set()
        kwargs: dict[str, Any] = {"cluster": self.args.cluster, "desiredStatus": "RUNNING"}
        for _ in range(1000):  # pages of 100; a bound rather than trust in nextToken
            page = self.ecs.list_tasks(**kwargs)
            arns.update(page.get("taskArns", []))
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        return arns

    def describe(self, arns: list[str]) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = []
        for i in range(0, len(arns), 100):
            tasks += self.ecs.describe_tasks(cluster=self.args.cluster, tasks=arns[i : i + 100])["tasks"]
        return tasks

    def task_definition(self, arn: str) -> dict[str, Any]:
        if arn not in self.task_definitions:
            self.task_definitions[arn] = self.ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]
        return self.task_definitions[arn]

    def start(self, task: dict[str, Any]) -> None:
        arn = task["taskArn"]
        task_id = arn.rsplit("/", 1)[-1]
        definition = self.task_definition(task["taskDefinitionArn"])
        containers = definition.get("containerDefinitions") or [{}]
        overrides = (task.get("overrides") or {}).get("containerOverrides") or []
        name = (overrides[0].get("name") if overrides else None) or containers[0].get("name", "driver")
        container = next((c for c in containers if c.get("name") == name), containers[0])
        override = next((o for o in overrides if o.get("name") == name), {})
        argv = driver_argv(self.args.driver_bin, override.get("command") or container.get("command"))
        env = driver_environment(
            dict(os.environ), container, override, self.args.region, f"{self.metadata_base}/v4/{task_id}"
        )
        log_path = os.path.join(self.args.log_dir, f"{task_id}.log")
        driver = Driver(arn=arn, task_id=task_id, log_path=log_path, proc=None)
        driver.metadata = self._metadata(task, definition, name, task_id)
        with open(log_path, "ab") as out:
            out.write(f"# ecs-watcher: task {arn}: {' '.join(argv)}\n".encode())
            out.flush()
            try:
                # A session of its own: the terminal's Ctrl-C is the watcher's to handle,
                # and SIGKILL can take the driver's whole process group.
                driver.proc = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as err:
                out.write(f"# ecs-watcher: cannot start: {err}\n".encode())
                driver.status, driver.exit_code = "exited", 127
                log.warning("task %s: cannot start %s: %s", task_id, argv[0], err)
        with self.lock:
            self.drivers[arn] = driver
            self.by_task_id[task_id] = driver
        if driver.proc:
            log.info("task %s: started driver pid %d (%s)", task_id, driver.pid, log_path)

    def _metadata(self, task: dict[str, Any], definition: dict[str, Any], name: str, task_id: str) -> dict[str, Any]:
        container_doc = {
            # Fargate's form, "<task id>-<number>"; stable for a name (hash() is not).
            "DockerId": f"{task_id}-{zlib.crc32(name.encode()):010d}",
            "Name": name,
            "DockerName": name,
            "Image": next((c.get("image") for c in definition.get("containerDefinitions", []) if c.get("name") == name), ""),
            "Labels": {
                "com.amazonaws.ecs.cluster": task.get("clusterArn", self.args.cluster),
                "com.amazonaws.ecs.container-name": name,
                "com.amazonaws.ecs.task-arn": task["taskArn"],
                "com.amazonaws.ecs.task-definition-family": definition.get("family", ""),
                "com.amazonaws.ecs.task-definition-version": str(definition.get("revision", "")),
            },
            "DesiredStatus": "RUNNING",
            "KnownStatus": "RUNNING",
            "Type": "NORMAL",
            "LaunchType": "FARGATE",
        }
        task_doc = {
            "Cluster": task.get("clusterArn", self.args.cluster),
            "TaskARN": task["taskArn"],
            "Family": definition.get("family", ""),
            "Revision": str(definition.get("revision", "")),
            "DesiredStatus": "RUNNING",
            "KnownStatus": "RUNNING",
            "LaunchType": "FARGATE",
            "AvailabilityZone": f"{self.args.region}a",
            "Containers": [container_doc],
        }
        return {"task": task_doc, "container": container_doc}

    def reap(self) -> None:
        for driver in self.drivers.values():
            if driver.proc is None or driver.status == "exited":
                continue
            code = driver.proc.poll()
            if code is None:
                continue
            # Killed by signal N: ECS (docker) reports 128 + N, e.g. 137 for SIGKILL.
            driver.exit_code = code if code >= 0 else 128 - code
            driver.status = "exited"
            with self.lock:
                for doc in (driver.metadata["task"], driver.metadata["container"]):
                    doc["KnownStatus"] = "STOPPED"
            log.info("task %s: driver pid %d exited with %d", driver.task_id, driver.pid, driver.exit_code)

    def terminate(self, driver: Driver) -> None:
        driver.status = "stopping"
        driver.term_sent_at = time.monotonic()
        try:
            os.kill(driver.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def escalate(self, now: float | None = None) -> None:
        """SIGKILL for drivers that outlived their grace period after SIGTERM."""
        now = time.monotonic() if now is None else now
        for driver in self.drivers.values():
            if driver.status == "stopping" and now - (driver.term_sent_at or now) >= STOP_GRACE_S:
                log.warning("task %s: driver pid %d still there %g s after SIGTERM: SIGKILL",
                            driver.task_id, driver.pid, STOP_GRACE_S)
                try:
                    # Its whole process group (its own session): ECS kills the container.
                    os.killpg(driver.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                driver.term_sent_at = float("inf")  # sent once; reap() sees it go

    def write_state(self) -> None:
        doc = {
            d.arn: {"pid": d.pid, "task_id": d.task_id, "status": d.status, "exit_code": d.exit_code, "log": d.log_path}
            for d in self.drivers.values()
        }
        text = json.dumps(doc, indent=2, sort_keys=True)
        if text == self._written:
            return
        path = os.path.join(self.args.log_dir, "tasks.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
        self._written = text

    def shutdown(self) -> None:
        alive = [d for d in self.drivers.values() if d.status != "exited"]
        if alive:
            log.info("stopping %d driver(s)", len(alive))
        for driver in alive:
            if driver.status == "running":
                self.terminate(driver)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and any(d.status != "exited" for d in self.drivers.values()):
            time.sleep(0.1)
            self.reap()
        self.escalate(now=float("inf"))
        for _ in range(20):
            self.reap()
            if all(d.status == "exited" for d in self.drivers.values()):
                break
            time.sleep(0.1)
        # Their containers are gone: let moto say so too, if it still listens (one try each).
        try:
            running = self.list_running()
            for driver in self.drivers.values():
                if not driver.ecs_told and driver.arn in running:
                    self.ecs.stop_task(cluster=self.args.cluster, task=driver.arn, reason=ESSENTIAL_EXITED)
                driver.ecs_told = True
        except Exception as err:
            log.info("could not mark the stopped tasks in ECS: %s", err)
        self.write_state()


def cmd_ecs_watcher(args: argparse.Namespace) -> int:
    _loopback_without_proxy()
    stop = threading.Event()
    _install_stop_signals(stop)
    watcher = Watcher(args, stop)
    server = watcher.serve_metadata()
    try:
        watcher.run()
    finally:
        server.shutdown()
        server.server_close()
    return 0


# --------------------------------------------------------------------------------------------
# setup-moto


def cmd_setup_moto(args: argparse.Namespace) -> int:
    _loopback_without_proxy()
    from botocore.exceptions import ClientError

    s3 = _boto_client("s3", args.endpoint, args.region)
    ecs = _boto_client("ecs", args.endpoint, args.region)
    ec2 = _boto_client("ec2", args.endpoint, args.region)

    try:
        if args.region == "us-east-1":
            s3.create_bucket(Bucket=args.bucket)
        else:
            s3.create_bucket(
                Bucket=args.bucket, CreateBucketConfiguration={"LocationConstraint": args.region}
            )
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise

    try:
        ecs.create_cluster(
            clusterName=args.cluster,
            capacityProviders=["FARGATE", "FARGATE_SPOT"],
            defaultCapacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}],
        )
    except ClientError as err:
        log.info("cluster with capacity providers refused (%s); creating a plain one", err)
        ecs.create_cluster(clusterName=args.cluster)

    # moto's run_task needs cpu and memory on every container definition (measured).
    definition = ecs.register_task_definition(
        family=args.task_family,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {"name": args.container, "image": "loadwave-driver:local", "cpu": 256, "memory": 512, "essential": True}
        ],
    )["taskDefinition"]

    # Left alone, moto moves a task one state on at every describe_tasks (RUNNING ->
    # DEACTIVATING -> ... -> STOPPED), so a polling launcher would see its drivers stop at
    # once. Manual progression: a task moves on only after 1000 describes.
    request = urllib.request.Request(
        f"{args.endpoint.rstrip('/')}/moto-api/state-manager/set-transition",
        data=_json_bytes({"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000}}),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with _URL_OPENER.open(request, timeout=10) as response:
        response.read()

    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    vpc_filter = [{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}] if vpcs else []
    subnets = ec2.describe_subnets(Filters=vpc_filter)["Subnets"]
    groups = ec2.describe_security_groups(Filters=vpc_filter + [{"Name": "group-name", "Values": ["default"]}])[
        "SecurityGroups"
    ]
    if not subnets or not groups:
        log.error("moto has no default VPC subnets or security group")
        return 1
    print(
        json.dumps(
            {
                "subnets": sorted(s["SubnetId"] for s in subnets),
                "security_groups": [g["GroupId"] for g in groups],
                "task_definition_arn": definition["taskDefinitionArn"],
            }
        ),
        flush=True,
    )
    return 0


# --------------------------------------------------------------------------------------------
# wait-http


def wait_http(url: str, timeout: float, is_up: Callable[[int], bool] = lambda s: s == 200) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _URL_OPENER.open(url, timeout=min(5.0, max(0.5, deadline - time.monotonic()))) as r:
                if is_up(r.status):
                    return True
        except urllib.error.HTTPError as err:
            if is_up(err.code):
                return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def cmd_wait_http(args: argparse.Namespace) -> int:
    if wait_http(args.url, args.timeout):
        return 0
    log.error("%s did not answer 200 within %g s", args.url, args.timeout)
    return 1


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="local_aws.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("front", help="API Gateway HTTP API (payload 2.0) -> a Lambda RIE")
    p.add_argument("--listen", type=_host_port, required=True, metavar="HOST:PORT")
    p.add_argument("--invoke", required=True, metavar="URL", help="the RIE's invocations URL")
    p.add_argument("--invoke-timeout", type=float, default=30.0, metavar="S",
                   help="per request, as API Gateway's integration timeout (30)")
    p.set_defaults(func=cmd_front)

    p = sub.add_parser("bridge", help="MSK event source mapping + EventBridge schedule -> a Lambda RIE")
    p.add_argument("--brokers", required=True)
    p.add_argument("--topic-prefix", default="")
    p.add_argument("--invoke", required=True, metavar="URL")
    p.add_argument("--schedule-every", type=float, default=5.0, metavar="SECONDS", help="0: no schedule")
    p.add_argument("--batch-max", type=_positive_int, default=100)
    p.add_argument("--batch-window-ms", type=_positive_int, default=200)
    p.add_argument("--group", help="consumer group (default: PREFIX + lambda-controller)")
    p.add_argument("--invoke-timeout", type=float, default=330.0, metavar="S",
                   help="above the RIE's own function timeout (300 s by default)")
    p.add_argument("--retry-backoff", type=float, default=1.0, metavar="S")
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("ecs-watcher", help="run a driver process for every running ECS task in moto")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--driver-bin", required=True)
    p.add_argument("--log-dir", required=True)
    p.add_argument("--metadata-listen", type=_host_port, default=("127.0.0.1", 0), metavar="HOST:PORT")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--poll-ms", type=_positive_int, default=300)
    p.set_defaults(func=cmd_ecs_watcher)

    p = sub.add_parser("setup-moto", help="bucket, cluster, task definition; prints the network as JSON")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--task-family", required=True)
    p.add_argument("--container", default="driver")
    p.add_argument("--region", default="us-east-1")
    p.set_defaults(func=cmd_setup_moto)

    p = sub.add_parser("wait-http", help="wait until GET URL answers 200")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_wait_http)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s {args.command} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # boto and librdkafka's Python wrapper are chatty at debug; their warnings still show.
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
