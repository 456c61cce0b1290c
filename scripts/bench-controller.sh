#!/usr/bin/env bash
# `make bench-controller`: the controller at scale (crates/loadwave-orchestrator/benches/
# controller.rs; release builds), in three parts:
#
#   1. in process: 1,000 synthetic drivers report every second for 60 s (realistic
#      histograms, the JSON payloads of the wire) through the real decoding, fold and
#      snapshot writes, in simulated time: CPU per report, RSS, heap per second;
#   2. snapshots: bytes written per second for a 1-hour, 10-driver test (simulated),
#      against a whole rewrite every second;
#   3. over Kafka: a real broker on its own port, the release orchestrator, drivers as a
#      few `loadwave-driver --agents N` processes, a bounded, low-rate Tsunami test
#      against loadwave-target on 127.0.0.1: the orchestrator's CPU per report and RSS.
#
# Environment: BENCH_CONTROLLER_KAFKA_PORT (19592; its controller listener on +1),
# BENCH_DRIVER_PROCESSES (5), BENCH_AGENTS (agents per process, 200; a test takes
# at most 1,000 drivers), BENCH_SECONDS (30),
# BENCH_RATE (requests per second per driver, 2); BENCH_CONTROLLER_KAFKA=0 skips part 3.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

bench() {
  cargo bench --locked -q -p loadwave-orchestrator --bench controller -- "$@"
}

log "building the orchestrator, driver and target (release) and the controller bench"
cargo build --release --locked -p loadwave-orchestrator -p driver-image -p target-image --bins
cargo bench --locked -p loadwave-orchestrator --bench controller --no-run

bench in-process --dir "$STATE_DIR/bench-controller"
bench snapshots

if [[ ${BENCH_CONTROLLER_KAFKA:-1} == 0 ]]; then
  exit 0
fi
export KAFKA_PORT=${BENCH_CONTROLLER_KAFKA_PORT:-19592}
export KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
trap 'bash "$ROOT/scripts/kafka.sh" down' EXIT
bash "$ROOT/scripts/kafka.sh" up
bench kafka --brokers "127.0.0.1:$KAFKA_PORT" \
  --processes "${BENCH_DRIVER_PROCESSES:-5}" --agents "${BENCH_AGENTS:-200}" \
  --seconds "${BENCH_SECONDS:-30}" --rate "${BENCH_RATE:-2}" \
  --dir "$STATE_DIR/bench-controller-kafka"
