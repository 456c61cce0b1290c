#!/usr/bin/env bash
# `make local`: the whole stack as native processes — a real Apache Kafka broker (KRaft),
# the orchestrator, three pool drivers and the target — then a demo Avalanche and Tsunami
# test through the REST API with `loadwave start --wait`. The stack stays up;
# `make local-down` stops everything this started.
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

down() {
  for pidfile in "$STATE_DIR"/driver-*.pid; do
    [[ -e $pidfile ]] && stop_bg "$(basename "$pidfile" .pid)"
  done
  stop_bg orchestrator
  stop_bg target
  bash "$ROOT/scripts/kafka.sh" down
  log "local stack stopped"
}

count_idle_drivers() {
  http_get 127.0.0.1 "$ORCHESTRATOR_PORT" /drivers | grep -o '"state":"idle"' | wc -l
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
  start_bg orchestrator "$BIN/loadwave-orchestrator" --listen "127.0.0.1:$ORCHESTRATOR_PORT" \
    --brokers "127.0.0.1:$KAFKA_PORT" --data-dir "$STATE_DIR/orchestrator" --launcher pool
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
  "$BIN/loadwave" start --orchestrator "$API" --wait --name "demo avalanche" \
    --target-url "$url" --test-type avalanche --drivers "$DRIVERS" --requests-per-driver 20000 \
    --concurrency 16 --threshold 'p99 < 100ms' --threshold 'error_rate < 1%'

  log "demo 2/2: Tsunami — $DRIVERS drivers × 400 requests, one every 5 ms per driver, target answering in 2 ms"
  "$BIN/loadwave" start --orchestrator "$API" --wait --name "demo tsunami" \
    --target-url "$url?delay_ms=2" --test-type tsunami --drivers "$DRIVERS" --requests-per-driver 400 \
    --concurrency 8 --delay-ms 5 --threshold 'p99 < 50ms'

  cat <<TXT

The stack is up:
  REST API      $API/tests   (OpenAPI: $API/openapi.json)
  drivers       $API/drivers
  target        $url   (its counts: http://127.0.0.1:$TARGET_PORT/metrics)
  Kafka         127.0.0.1:$KAFKA_PORT
  logs          $STATE_DIR/*.log

Try:
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
