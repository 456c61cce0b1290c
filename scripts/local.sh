#!/usr/bin/env bash
# `make local`: build loadwave, start the target server, and run a demo Avalanche and
# Tsunami test with `loadwave run`, printing both summaries. The target stays up for
# your own runs; `make local-down` stops it.
#
# Environment: TARGET_PORT (default 8080).
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

TARGET_PORT=${TARGET_PORT:-8080}
BIN="$ROOT/target/release"

down() {
  stop_bg target
  log "local stack stopped"
}

up() {
  command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
  log "building loadwave (release)"
  cargo build --release --bins --locked

  stop_bg target
  log "starting loadwave-target on 127.0.0.1:$TARGET_PORT"
  start_bg target "$BIN/loadwave-target" --listen "127.0.0.1:$TARGET_PORT"
  wait_http 127.0.0.1 "$TARGET_PORT" /healthz 20 \
    || die "the target did not come up; see $STATE_DIR/target.log"

  local url="http://127.0.0.1:$TARGET_PORT/ping"
  log "demo 1/2: Avalanche — 3 drivers × 20,000 requests, 16 in flight each, as fast as the target answers"
  "$BIN/loadwave" run --name "demo avalanche" --target-url "$url" --test-type avalanche \
    --drivers 3 --requests-per-driver 20000 --concurrency 16 \
    --threshold 'p99 < 100ms' --threshold 'error_rate < 1%'

  log "demo 2/2: Tsunami — 3 drivers × 400 requests, one every 5 ms per driver (600 rps), target answering in 2 ms"
  "$BIN/loadwave" run --name "demo tsunami" --target-url "$url?delay_ms=2" --test-type tsunami \
    --drivers 3 --requests-per-driver 400 --concurrency 8 --delay-ms 5 \
    --threshold 'p99 < 50ms'

  cat <<TXT

The target is still up:
  load it     $BIN/loadwave run --target-url $url --test-type avalanche --requests-per-driver 10000
  its counts  http://127.0.0.1:$TARGET_PORT/metrics
  stop it     make local-down
TXT
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
