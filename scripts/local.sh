#!/usr/bin/env bash
# `make local`: the whole stack as native processes — a real Apache Kafka broker (KRaft),
# the orchestrator, three pool drivers and the target — then a demo Avalanche and Tsunami
# test through the REST API with `loadwave start --wait`. The stack stays up;
# `make local-down` stops everything this started.
#
# The orchestrator writes its API token to .local/orchestrator/token (mode 0600); the
# `loadwave` CLI finds it there when run from the repository root (or give --data-dir).
#
# Environment: KAFKA_PORT (9092), ORCHESTRATOR_PORT (8000), TARGET_PORT (8080),
# DRIVERS (3).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

export KAFKA_PORT=${KAFKA_PORT:-9092}
ORCHESTRATOR_PORT=${ORCHESTRATOR_PORT:-8000}
TARGET_PORT=${TARGET_PORT:-8080}
DRIVERS=${DRIVERS:-3}
BIN="$ROOT/target/release"
API="http://127.0.0.1:$ORCHESTRATOR_PORT"
DATA_DIR="$STATE_DIR/orchestrator"
TOKEN_FILE="$DATA_DIR/token"

down() {
  for pidfile in "$STATE_DIR"/driver-*.pid; do
    [[ -e $pidfile ]] && stop_bg "$(basename "$pidfile" .pid)"
  done
  stop_bg orchestrator
  stop_bg target
  bash "$ROOT/scripts/kafka.sh" down
  log "local stack stopped"
}

# api_get PATH: GET PATH from the orchestrator with its token (bash's /dev/tcp only).
api_get() {
  local token
  token=$(cat "$TOKEN_FILE" 2>/dev/null) || return 1
  (
    exec 3<>"/dev/tcp/127.0.0.1/$ORCHESTRATOR_PORT" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nAuthorization: Bearer %s\r\n\r\n' \
      "$1" "$ORCHESTRATOR_PORT" "$token" >&3
    cat <&3
  ) 2>/dev/null
}

count_idle_drivers() {
  api_get /drivers | grep -o '"state":"idle"' | wc -l
}

up() {
  command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
  log "building loadwave (release)"
  cargo build --release --bins --locked

  down >/dev/null 2>&1 || true
  bash "$ROOT/scripts/kafka.sh" up

  log "starting loadwave-target on 127.0.0.1:$TARGET_PORT"
  start_bg target "$BIN/loadwave-target" --listen "127.0.0.1:$TARGET_PORT"
  wait_http 127.0.0.1 "$TARGET_PORT" /healthz 20 || die "the target did not come up; see $STATE_DIR/target.log"

  log "starting loadwave-orchestrator on $API (pool launcher, data in .local/orchestrator)"
  # A new token each start (written to $TOKEN_FILE before the API listens).
  rm -f "$TOKEN_FILE"
  start_bg orchestrator "$BIN/loadwave-orchestrator" --listen "127.0.0.1:$ORCHESTRATOR_PORT" \
    --brokers "127.0.0.1:$KAFKA_PORT" --data-dir "$DATA_DIR" --launcher pool
  wait_http 127.0.0.1 "$ORCHESTRATOR_PORT" /readyz 30 \
    || die "the orchestrator did not become ready (/readyz); see $STATE_DIR/orchestrator.log"

  log "starting $DRIVERS pool drivers"
  for i in $(seq "$DRIVERS"); do
    start_bg "driver-$i" "$BIN/loadwave-driver" --brokers "127.0.0.1:$KAFKA_PORT" --driver-id "local-driver-$i"
  done
  for _ in $(seq 300); do
    [[ $(count_idle_drivers) -ge $DRIVERS ]] && break
    sleep 0.1
  done
  [[ $(count_idle_drivers) -ge $DRIVERS ]] || die "drivers did not register; see $STATE_DIR/driver-*.log"
  log "stack is up: $DRIVERS drivers idle"

  local url="http://127.0.0.1:$TARGET_PORT/ping"
  log "demo 1/2: Avalanche — $DRIVERS drivers × 20,000 requests, 16 in flight each, over Kafka"
  "$BIN/loadwave" start --orchestrator "$API" --data-dir "$DATA_DIR" --wait --name "demo avalanche" \
    --target-url "$url" --test-type avalanche --drivers "$DRIVERS" --requests-per-driver 20000 \
    --concurrency 16 --threshold 'p99 < 100ms' --threshold 'error_rate < 1%'

  log "demo 2/2: Tsunami — $DRIVERS drivers × 400 requests, one every 5 ms per driver, target answering in 2 ms"
  "$BIN/loadwave" start --orchestrator "$API" --data-dir "$DATA_DIR" --wait --name "demo tsunami" \
    --target-url "$url?delay_ms=2" --test-type tsunami --drivers "$DRIVERS" --requests-per-driver 400 \
    --concurrency 8 --delay-ms 5 --threshold 'p99 < 50ms'

  cat <<TXT

The stack is up:
  REST API      $API/tests   (OpenAPI: $API/openapi.json)
  API token     $TOKEN_FILE   (curl -H "Authorization: Bearer \$(cat $TOKEN_FILE)" $API/tests)
  drivers       $API/drivers
  target        $url   (its counts: http://127.0.0.1:$TARGET_PORT/metrics)
  Kafka         127.0.0.1:$KAFKA_PORT
  logs          $STATE_DIR/*.log

Try (from $ROOT, where loadwave finds the token; elsewhere add --data-dir $DATA_DIR):
  $BIN/loadwave list
  $BIN/loadwave start --target-url $url --test-type avalanche --drivers 2 --requests-per-driver 10000 --wait
  $BIN/loadwave report ID -o report.html
  make local-down
TXT
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
