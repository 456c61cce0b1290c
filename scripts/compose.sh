#!/usr/bin/env bash
# The stack of docker-compose.yml (Kafka, orchestrator, pool drivers, target) on whichever
# container engine answers: a Docker engine (DOCKER_HOST or /var/run/docker.sock), or
# Podman's Docker-compatible service (/run/podman/podman.sock, or the one `up` starts on
# .local/podman/podman.sock when nothing answers, installing Podman if it must).
#
#   scripts/compose.sh engine   print `docker` or `podman` and exit 0 when an engine answers,
#                               else exit 1 (`make local` uses compose only then)
#   scripts/compose.sh up       build the images, start the stack, wait until it is healthy,
#                               run a demo Avalanche and Tsunami test through the REST API
#   scripts/compose.sh down     stop it and drop its volumes (and the Podman service it started)
#   scripts/compose.sh ps|logs  what docker-compose ps / logs say
#
# With Docker the stack is on its own bridge network, ports published on 127.0.0.1 (the
# plain docker-compose.yml). With Podman every service is on the host's network bound to
# 127.0.0.1 (docker-compose.host.yml on top): Podman's bridge would put the load on 10.88.x.
# COMPOSE_NETWORK=bridge|host overrides that choice.
#
# Sourced (by compose-check.sh) it only defines the functions.
#
# The orchestrator listens on 0.0.0.0 inside its container, so it needs an explicit API
# token: LOADWAVE_TOKEN if set, else one generated once into .local/$COMPOSE_PROJECT.token
# (mode 0600) and passed to the container as LOADWAVE_TOKEN. `loadwave --token-file
# .local/loadwave.token ...` (or LOADWAVE_TOKEN) reaches the API with it.
#
# Environment: ORCHESTRATOR_PORT (8000), TARGET_PORT (8080), KAFKA_PORT (9092),
# KAFKA_CONTROLLER_PORT (KAFKA_PORT + 1, host network only), DRIVERS (3),
# COMPOSE_PROJECT (loadwave), KAFKA_IMAGE, LOADWAVE_IMAGE_PREFIX, LOADWAVE_IMAGE_TAG,
# CARGO_PROFILE (release), COMPOSE_NETWORK.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/images.sh"

PODMAN_DIR="$STATE_DIR/podman"
PODMAN_SOCK="$PODMAN_DIR/podman.sock"
PODMAN_SERVICE=podman-service   # its pid and log in $STATE_DIR/$PODMAN_SERVICE.{pid,log}

# _api SOCKET PATH: GET PATH from the Docker API on a unix socket; prints the body, fails
# unless the answer is a 200.
_api() {
  [[ -S $1 ]] || return 1
  python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(b"GET " + sys.argv[2].encode() + b" HTTP/1.0\r\nHost: d\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
sys.stdout.write(body.decode(errors="replace"))
sys.exit(0 if b" 200 " in head.split(b"\r\n", 1)[0] + b" " else 1)
PY
}
_ping() { _api "$1" /_ping >/dev/null; }
_is_podman() { _api "$1" /version | grep -q Podman; }

# detect_engine: sets ENGINE (docker|podman) and exports DOCKER_HOST, or fails. A socket that
# answers wins: DOCKER_HOST, Docker's own, Podman's system socket, the one this script runs.
detect_engine() {
  local sock
  for sock in "${DOCKER_HOST:+${DOCKER_HOST#unix://}}" /var/run/docker.sock /run/podman/podman.sock "$PODMAN_SOCK"; do
    [[ -n $sock && $sock != tcp://* ]] || continue
    if _ping "$sock"; then
      export DOCKER_HOST="unix://$sock"
      if _is_podman "$sock"; then
        ENGINE=podman
      else
        ENGINE=docker
      fi
      return 0
    fi
  done
  return 1
}

# start_podman_service: Podman's Docker-compatible API on $PODMAN_SOCK (no idle timeout).
start_podman_service() {
  ensure_tools
  mkdir -p "$PODMAN_DIR"
  if _ping "$PODMAN_SOCK"; then
    export DOCKER_HOST="unix://$PODMAN_SOCK"
    return 0
  fi
  rm -f "$PODMAN_SOCK"
  log "starting podman system service on $PODMAN_SOCK"
  start_bg "$PODMAN_SERVICE" podman system service --time=0 "unix://$PODMAN_SOCK"
  for _ in $(seq 100); do
    _ping "$PODMAN_SOCK" && break
    sleep 0.1
  done
  _ping "$PODMAN_SOCK" || die "podman system service did not answer; see $STATE_DIR/$PODMAN_SERVICE.log"
  export DOCKER_HOST="unix://$PODMAN_SOCK"
}

stop_podman_service() {
  stop_bg "$PODMAN_SERVICE"
  rm -f "$PODMAN_SOCK"
}

# Podman has no systemd here to run the health checks on their interval, and compose waits
# on them (depends_on: service_healthy); this loop runs the checks of the project's
# containers that are not yet healthy, every 2 s, until it is stopped (once the stack is up).
health_ticker() {
  local project=$1 id status
  while :; do
    for id in $(podman ps -q --filter "label=com.docker.compose.project=$project" 2>/dev/null); do
      status=$(podman inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null || true)
      if [[ $status == starting || $status == unhealthy ]]; then
        podman healthcheck run "$id" >/dev/null 2>&1 || true
      fi
    done
    sleep 2
  done
}

start_health_ticker() {
  [[ ${ENGINE:-} == podman && ! -d /run/systemd/system ]] || return 0
  stop_health_ticker
  health_ticker "$COMPOSE_PROJECT" >/dev/null 2>&1 &
  HEALTH_TICKER_PID=$!
  echo "$HEALTH_TICKER_PID" >"$STATE_DIR/$COMPOSE_PROJECT-health.pid"
}

stop_health_ticker() {
  local pidfile="$STATE_DIR/$COMPOSE_PROJECT-health.pid" pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

# compose ARGS...: docker-compose (v1) or `docker compose` (v2) with this stack's project
# name and files; COMPOSE_TIMEOUT (seconds) bounds a call when set.
compose() {
  local cmd=(docker compose) files=(-f "$ROOT/docker-compose.yml")
  command -v docker-compose >/dev/null && cmd=(docker-compose --ansi never)
  [[ $COMPOSE_NETWORK == host ]] && files+=(-f "$ROOT/docker-compose.host.yml")
  if [[ -n ${COMPOSE_TIMEOUT:-} ]]; then cmd=(timeout "$COMPOSE_TIMEOUT" "${cmd[@]}"); fi
  "${cmd[@]}" -p "$COMPOSE_PROJECT" "${files[@]}" "$@"
}

# compose_settings: the ports, names and network of the stack, as docker-compose.yml reads them.
compose_settings() {
  export ORCHESTRATOR_PORT=${ORCHESTRATOR_PORT:-8000}
  export TARGET_PORT=${TARGET_PORT:-8080}
  export KAFKA_PORT=${KAFKA_PORT:-9092}
  export KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
  export DRIVERS=${DRIVERS:-3}
  export LOADWAVE_IMAGE_PREFIX LOADWAVE_IMAGE_TAG CARGO_PROFILE
  COMPOSE_PROJECT=${COMPOSE_PROJECT:-loadwave}
  if [[ -z ${COMPOSE_NETWORK:-} ]]; then
    if [[ ${ENGINE:-} == podman ]]; then COMPOSE_NETWORK=host; else COMPOSE_NETWORK=bridge; fi
  fi
  # Where the drivers find the target.
  if [[ $COMPOSE_NETWORK == host ]]; then
    TARGET_BASE="http://127.0.0.1:$TARGET_PORT"
  else
    TARGET_BASE="http://target:8080"
  fi
  API="http://127.0.0.1:$ORCHESTRATOR_PORT"
  compose_token
}

# compose_token: exports LOADWAVE_TOKEN (given, or kept in $TOKEN_FILE, generated once) for
# the orchestrator container and this script's own API calls.
compose_token() {
  TOKEN_FILE="$STATE_DIR/$COMPOSE_PROJECT.token"
  if [[ -n ${LOADWAVE_TOKEN:-} ]]; then
    (umask 077 && printf '%s\n' "$LOADWAVE_TOKEN" >"$TOKEN_FILE")
  elif [[ ! -s $TOKEN_FILE ]]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE" && echo >>"$TOKEN_FILE")
  fi
  chmod 600 "$TOKEN_FILE"
  LOADWAVE_TOKEN=$(tr -d ' \n' <"$TOKEN_FILE")
  export LOADWAVE_TOKEN
}

# api_get PATH: GET PATH from the orchestrator with the token (bash's /dev/tcp only).
api_get() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$ORCHESTRATOR_PORT" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nAuthorization: Bearer %s\r\n\r\n' \
      "$1" "$ORCHESTRATOR_PORT" "$LOADWAVE_TOKEN" >&3
    cat <&3
  ) 2>/dev/null
}

# ports_free PORT...: nothing listens there on 127.0.0.1.
ports_free() {
  local port
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      die "port $port is taken on 127.0.0.1; choose other ports (see the header of $0)"
    fi
  done
}

count_idle_drivers() {
  api_get /drivers | grep -o '"state":"idle"' | wc -l
}

# wait_stack SECONDS: the orchestrator is ready (/readyz: up and its Kafka reachable), the
# target answers /healthz and $DRIVERS drivers are idle in the pool.
wait_stack() {
  local limit=${1:-120} start=$SECONDS
  wait_http 127.0.0.1 "$ORCHESTRATOR_PORT" /readyz "$limit" || return 1
  wait_http 127.0.0.1 "$TARGET_PORT" /healthz $((limit - SECONDS + start)) || return 1
  while ((SECONDS - start < limit)); do
    [[ $(count_idle_drivers) -ge $DRIVERS ]] && return 0
    sleep 0.5
  done
  return 1
}

# run_api_test NAME SPEC_JSON: submits the test through the REST API, follows it to its
# end, and compares its summary with the target's own /metrics count. Prints one line of
# figures; fails when the test did not complete, lost or errored requests, or the counts
# disagree. Plain HTTP from python3's standard library, no proxy.
run_api_test() {
  python3 - "$API" "http://127.0.0.1:$TARGET_PORT/metrics" "$1" "$2" <<'PY'
import json, os, sys, time, urllib.request

api, metrics_url, name, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def call(url, body=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"},
                                 method="GET" if body is None else "POST")
    if url.startswith(api):
        req.add_header("authorization", "Bearer " + os.environ["LOADWAVE_TOKEN"])
    with http.open(req, timeout=15) as resp:
        return json.load(resp)

before = call(metrics_url)["requests"]
started = time.monotonic()
test = call(api + "/tests", {"name": name, **spec})
deadline = started + 300
while test["status"] not in ("completed", "failed", "stopped"):
    if time.monotonic() > deadline:
        print(f"FAIL {name}: still {test['status']} after 300 s (test {test['id']})")
        sys.exit(1)
    time.sleep(0.5)
    test = call(f"{api}/tests/{test['id']}")
after = call(metrics_url)["requests"]

s = test.get("summary") or {}
lat = s.get("latency_ms") or {}
expected = spec["drivers"] * spec["requests_per_driver"]
served = after - before
figures = (f"status={test['status']} requests={s.get('requests')} expected={expected} "
           f"target_metrics={served} errors={s.get('errors')} rps={s.get('rps', 0):.0f} "
           f"p50={lat.get('p50')}ms p99={lat.get('p99')}ms max={lat.get('max')}ms "
           f"late={s.get('late')} verdict={'pass' if (test.get('verdict') or {}).get('passed') else 'FAIL'} "
           f"wall={time.monotonic() - started:.1f}s")
problems = []
if test["status"] != "completed":
    problems.append(f"status {test['status']}")
if s.get("requests") != expected:
    problems.append(f"summary requests {s.get('requests')} != {expected}")
if s.get("requests") != served:
    problems.append(f"summary requests {s.get('requests')} != target /metrics {served}")
if s.get("errors"):
    problems.append(f"{s.get('errors')} errors")
print(("PASS" if not problems else "FAIL") + f" {name}: {figures}"
      + ("" if not problems else "  <- " + "; ".join(problems)))
sys.exit(1 if problems else 0)
PY
}

# stack_up: images, containers, health, as the engine and network call for.
stack_up() {
  if [[ $ENGINE == podman ]]; then
    # No image registry here: the local base images stand in, the project images are built
    # from their Dockerfiles with them, and compose only starts containers.
    build_bases
    build_project
    export KAFKA_IMAGE=${KAFKA_IMAGE:-$BASE_KAFKA_IMAGE}
    compose_build=(--no-build)
  else
    compose_build=(--build)
  fi
  [[ $COMPOSE_NETWORK == host ]] && ports_free "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$ORCHESTRATOR_PORT" "$TARGET_PORT"
  start_health_ticker
  log "docker-compose up ($ENGINE, $COMPOSE_NETWORK network, project $COMPOSE_PROJECT, $DRIVERS drivers)"
  COMPOSE_TIMEOUT=600 compose up -d "${compose_build[@]}" --scale "driver=$DRIVERS" \
    || die "docker-compose up failed"
  wait_stack 180 || { compose ps >&2 || true; compose logs --tail 30 >&2 || true; die "the stack did not become ready"; }
  # Nothing waits on the health checks any more.
  stop_health_ticker
}

stack_down() {
  COMPOSE_TIMEOUT=180 compose down -v --remove-orphans --timeout 10 || true
  stop_health_ticker
}

_cli() {
  local action=${1:-up}
  if [[ $action == engine ]]; then
    detect_engine || exit 1
    echo "$ENGINE"
    exit 0
  fi
  if ! detect_engine; then
    if [[ $action != up ]]; then
      log "no container engine answers: no compose stack to look at"
      exit 0
    fi
    start_podman_service
    ENGINE=podman
  fi
  compose_settings
  case "$action" in
    up)
      stack_up
      log "demo 1/2: Avalanche — $DRIVERS drivers × 20,000 requests, 16 in flight each"
      run_api_test "demo avalanche" "{\"target_url\": \"$TARGET_BASE/ping\", \"test_type\": \"avalanche\", \"drivers\": $DRIVERS, \"requests_per_driver\": 20000, \"concurrency\": 16, \"thresholds\": [\"p99 < 100ms\", \"error_rate < 1%\"]}"
      log "demo 2/2: Tsunami — $DRIVERS drivers × 400 requests, one every 5 ms per driver, target answering in 2 ms"
      run_api_test "demo tsunami" "{\"target_url\": \"$TARGET_BASE/ping?delay_ms=2\", \"test_type\": \"tsunami\", \"drivers\": $DRIVERS, \"requests_per_driver\": 400, \"concurrency\": 8, \"delay_ms\": 5, \"thresholds\": [\"p99 < 50ms\"]}"
      cat <<TXT

The stack is up ($ENGINE, project $COMPOSE_PROJECT, $COMPOSE_NETWORK network):
  REST API      $API/tests   (OpenAPI: $API/openapi.json)
  API token     $TOKEN_FILE
  drivers       $API/drivers
  target        $TARGET_BASE/ping, as the drivers reach it (counts: http://127.0.0.1:$TARGET_PORT/metrics)
  engine        DOCKER_HOST=$DOCKER_HOST

Try:
  loadwave start --orchestrator $API --token-file $TOKEN_FILE --target-url $TARGET_BASE/ping --test-type avalanche --drivers $DRIVERS --requests-per-driver 10000 --wait
  $0 logs
  $0 down
TXT
      ;;
    down)
      stack_down
      [[ ${DOCKER_HOST:-} == "unix://$PODMAN_SOCK" ]] && stop_podman_service
      log "compose stack $COMPOSE_PROJECT stopped"
      ;;
    ps) compose ps ;;
    logs) compose logs --tail 100 ;;
    *) die "usage: $0 engine|up|down|ps|logs" ;;
  esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  _cli "$@"
fi
