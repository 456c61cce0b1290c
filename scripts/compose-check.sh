#!/usr/bin/env bash
# `make compose-check`: docker-compose.yml and the three Dockerfiles, end to end, on this
# machine — no Docker engine and no image registry needed.
#
#  1. Podman, runc, debootstrap and docker-compose from Debian's packages (once); the base
#     images made locally (scripts/images.sh: Debian by debootstrap, a Rust builder with
#     this machine's toolchain, Kafka from Maven Central's jars), cached after the first run.
#  2. The project's images built from their real Dockerfiles, the bases substituted
#     through --build-arg (RUST_IMAGE, RUNTIME_IMAGE; CARGO_PROFILE=dev by default here).
#  3. Podman's Docker-compatible service on a socket of its own; docker-compose (v1.29)
#     starts docker-compose.yml + docker-compose.host.yml against it with
#     KAFKA_IMAGE=localhost/loadwave-kafka:local: Kafka, the orchestrator, 3 pool drivers
#     and the target, every one on 127.0.0.1 (host network), health checks waited for.
#  4. An Avalanche test (3 drivers × 5,000) and a Tsunami test (3 drivers × 300, 5 ms apart)
#     through the orchestrator container's REST API; each summary's `requests` must equal
#     the work asked for and the target container's own /metrics count, with no errors.
#  5. docker-compose down -v, and the Podman service stopped — also on failure or Ctrl-C.
#
# Prints PASS or FAIL with the figures and the time each stage took; exits 1 on failure.
#
# Environment: COMPOSE_CHECK_KAFKA_PORT (29092; the controller on +1),
# COMPOSE_CHECK_ORCHESTRATOR_PORT (28000), COMPOSE_CHECK_TARGET_PORT (28080),
# COMPOSE_CHECK_PROFILE (dev; `release` builds what ships, fat LTO: much slower),
# COMPOSE_CHECK_KEEP=1 (leave the stack up for a look; `scripts/compose-check.sh down` ends it).
set -euo pipefail
source "$(dirname "$0")/compose.sh"
cd "$ROOT"

CHECK_DIR="$STATE_DIR/compose-check"
PODMAN_DIR="$CHECK_DIR"
PODMAN_SOCK="$CHECK_DIR/podman.sock"
PODMAN_SERVICE=compose-check-podman
export KAFKA_PORT=${COMPOSE_CHECK_KAFKA_PORT:-29092}
export KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
export ORCHESTRATOR_PORT=${COMPOSE_CHECK_ORCHESTRATOR_PORT:-28000}
export TARGET_PORT=${COMPOSE_CHECK_TARGET_PORT:-28080}
export DRIVERS=3
export CARGO_PROFILE=${COMPOSE_CHECK_PROFILE:-dev}
# Tagged apart from what `make images` builds (release), so neither replaces the other.
export LOADWAVE_IMAGE_TAG=check-$CARGO_PROFILE
export KAFKA_IMAGE=$BASE_KAFKA_IMAGE
COMPOSE_PROJECT=loadwave-check
API="http://127.0.0.1:$ORCHESTRATOR_PORT"
COMPOSE_NETWORK=host
ENGINE=podman
mkdir -p "$CHECK_DIR"
# The orchestrator's API token (its container listens beyond loopback): LOADWAVE_TOKEN.
compose_token

timings=()
stage_start=$SECONDS
stage() {
  timings+=("$(printf '%-22s %4ds' "$1" $((SECONDS - stage_start)))")
  stage_start=$SECONDS
}
check_start=$SECONDS

# The builder stage must stay the same text in the three Dockerfiles, or each image
# compiles the dependencies again.
builder_text() { sed -n '/^ARG RUST_IMAGE=/,/^# ---- end of builder/p' "$1"; }
check_builder_stages() {
  local reference=driver-image/Dockerfile other
  [[ -n $(builder_text "$reference") ]] || die "$reference has no builder section"
  for other in target-image/Dockerfile crates/loadwave-orchestrator/Dockerfile; do
    diff <(builder_text "$reference") <(builder_text "$other") >&2 \
      || die "the builder stage of $other differs from $reference's (keep them the same text)"
  done
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n ${COMPOSE_CHECK_KEEP:-} && $status == 0 ]]; then
    log "COMPOSE_CHECK_KEEP: the stack stays up (DOCKER_HOST=unix://$PODMAN_SOCK); '$0 down' ends it"
    exit 0
  fi
  if ((stack_up)); then
    if ((status != 0)); then
      compose ps >&2 2>/dev/null || true
      compose logs --tail 40 >"$CHECK_DIR/compose.log" 2>&1 || true
      log "container logs: $CHECK_DIR/compose.log"
    fi
    log "docker-compose down -v"
    stack_down >"$CHECK_DIR/down.log" 2>&1 || true
  fi
  stop_health_ticker
  stop_podman_service
  exit "$status"
}

if [[ ${1:-} == down ]]; then
  start_podman_service
  stack_down
  stop_podman_service
  exit 0
fi

stack_up=0
trap cleanup EXIT
trap 'exit 130' INT TERM

check_builder_stages
log "base images (cached after the first run)"
build_bases
stage "base images"
build_project
stage "project images"

start_podman_service
ports_free "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$ORCHESTRATOR_PORT" "$TARGET_PORT"
# Left over from an interrupted run.
COMPOSE_TIMEOUT=120 compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
start_health_ticker
stack_up=1
log "docker-compose up: Kafka 127.0.0.1:$KAFKA_PORT, orchestrator :$ORCHESTRATOR_PORT, $DRIVERS drivers, target :$TARGET_PORT"
COMPOSE_TIMEOUT=600 compose up -d --no-build --scale "driver=$DRIVERS" >"$CHECK_DIR/up.log" 2>&1 \
  || { cat "$CHECK_DIR/up.log" >&2; die "docker-compose up failed"; }
wait_stack 180 || die "the stack did not become ready within 180 s (orchestrator, target, $DRIVERS idle drivers)"
stop_health_ticker
stage "stack up"
compose ps

failed=0
results=()
target="http://127.0.0.1:$TARGET_PORT/ping"
log "Avalanche: $DRIVERS drivers × 5,000 requests through the orchestrator container"
if line=$(run_api_test "compose-check avalanche" \
  "{\"target_url\": \"$target\", \"test_type\": \"avalanche\", \"drivers\": $DRIVERS, \"requests_per_driver\": 5000, \"concurrency\": 10}"); then :; else failed=1; fi
results+=("$line")
echo "$line"
log "Tsunami: $DRIVERS drivers × 300 requests, one every 5 ms per driver"
if line=$(run_api_test "compose-check tsunami" \
  "{\"target_url\": \"$target\", \"test_type\": \"tsunami\", \"drivers\": $DRIVERS, \"requests_per_driver\": 300, \"concurrency\": 10, \"delay_ms\": 5}"); then :; else failed=1; fi
results+=("$line")
echo "$line"
stage "tests"

if [[ -z ${COMPOSE_CHECK_KEEP:-} ]]; then
  log "docker-compose down -v"
  stack_down >"$CHECK_DIR/down.log" 2>&1 || failed=1
  stack_up=0
  stage "stack down"
fi

echo
echo "compose-check ($LOADWAVE_IMAGE_PREFIX-*:$LOADWAVE_IMAGE_TAG, Kafka $KAFKA_IMAGE, Podman $(podman --version | awk '{print $3}'), docker-compose $(docker-compose version --short 2>/dev/null || echo v2))"
printf '  %s\n' "${results[@]}"
printf '  %s\n' "${timings[@]}"
printf '  %-22s %4ds\n' "total" $((SECONDS - check_start))
if ((failed)); then
  echo "compose-check: FAIL"
  exit 1
fi
echo "compose-check: PASS"
