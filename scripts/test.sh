#!/usr/bin/env bash
# `make test`: build the workspace once (binaries and test binaries together), start a
# real Apache Kafka broker (KRaft, jars from Maven Central), run every unit and
# integration test against them, stop the broker.
#
# Environment: TEST_KAFKA_PORT (19092), the broker the tests use.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"

log "building the workspace (binaries and tests, one build)"
cargo build --workspace --bins --tests --locked

export KAFKA_PORT=${TEST_KAFKA_PORT:-19092}
export KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
trap 'bash "$ROOT/scripts/kafka.sh" down' EXIT
bash "$ROOT/scripts/kafka.sh" up
export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"

log "running the tests (Kafka at $KAFKA_BROKERS)"
out="$STATE_DIR/test-output.txt"
set +e
cargo test --workspace --locked -- --test-threads 2 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo prints one per binary, the last often a
# crate's empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
exit "$status"
