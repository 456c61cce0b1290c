#!/usr/bin/env bash
# `make test`: build the workspace once (binaries and test binaries together), install the
# tools the AWS tests need (moto, the Lambda runtime interface emulator; cached in
# ~/.cache/loadwave), start a real Apache Kafka broker (KRaft, jars from Maven Central) with
# a plaintext and a TLS listener (a throwaway CA) and moto for S3 and ECS, run every unit
# and integration test against them, stop everything; then `make infra-check` (Terraform
# checks) and `make compose-check` (the images built from their Dockerfiles and the compose
# stack run under Podman), with `make api-check` (schemathesis against the orchestrator's
# OpenAPI document) before them.
#
# Environment: TEST_KAFKA_PORT (19092; its TLS listener on +2), TEST_MOTO_PORT (15055).
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/tools.sh"
cd "$ROOT"

command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
# librdkafka is built with TLS against the system's OpenSSL.
if [[ ! -f /usr/include/openssl/ssl.h ]] || ! command -v pkg-config >/dev/null; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing OpenSSL's headers and pkg-config (Debian packages)"
    apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config >/dev/null
  else
    die "OpenSSL's headers and pkg-config are needed (apt-get install libssl-dev pkg-config)"
  fi
fi

log "building the workspace (binaries and tests, one build)"
cargo build --workspace --bins --tests --locked

ensure_pyenv
ensure_rie
ensure_nginx
ensure_schemathesis
export LW_PY LW_RIE LOADWAVE_TEST_NGINX

export KAFKA_PORT=${TEST_KAFKA_PORT:-19092}
export KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
# Not exported: tests that start a broker of their own through kafka.sh must not inherit it.
KAFKA_TLS_PORT=$((KAFKA_PORT + 2))
MOTO_PORT=${TEST_MOTO_PORT:-15055}
cleanup() {
  stop_bg test-moto
  bash "$ROOT/scripts/kafka.sh" down
}
trap cleanup EXIT
KAFKA_TLS_PORT=$KAFKA_TLS_PORT bash "$ROOT/scripts/kafka.sh" up
export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
export LOADWAVE_TEST_KAFKA_TLS="127.0.0.1:$KAFKA_TLS_PORT"
export LOADWAVE_TEST_KAFKA_CA="$STATE_DIR/kafka-$KAFKA_PORT/tls/ca.pem"

log "starting moto (S3, ECS) on 127.0.0.1:$MOTO_PORT"
start_bg test-moto "$(dirname "$LW_PY")/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
wait_http 127.0.0.1 "$MOTO_PORT" /moto-api/ 30 || die "moto did not start; see $STATE_DIR/test-moto.log"
export LOADWAVE_TEST_MOTO="http://127.0.0.1:$MOTO_PORT"

log "running the tests (Kafka at $KAFKA_BROKERS)"
out="$STATE_DIR/test-output.txt"
set +e
cargo test --workspace --locked --no-fail-fast -- --test-threads 2 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
log "fuzzing the API against its OpenAPI document (make api-check)"
api_status=0
API_CHECK_SEED=${API_CHECK_SEED:-20261205} API_CHECK_EXAMPLES=${API_CHECK_EXAMPLES:-100} \
  bash "$ROOT/scripts/api-check.sh" || api_status=$?
log "checking infra/ (make infra-check)"
infra_status=0
bash "$ROOT/scripts/infra-check.sh" || infra_status=$?
log "checking the images and docker-compose.yml (make compose-check)"
compose_status=0
bash "$ROOT/scripts/compose-check.sh" || compose_status=$?
# One closing line over every test binary (cargo prints one per binary, the last often a
# crate's empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$out"
if [[ $status == 0 && $api_status != 0 ]]; then
  echo "make api-check failed (above)" >&2
  status=$api_status
fi
if [[ $status == 0 && $infra_status != 0 ]]; then
  echo "make infra-check failed (above)" >&2
  status=$infra_status
fi
if [[ $status == 0 && $compose_status != 0 ]]; then
  echo "make compose-check failed (above)" >&2
  status=$compose_status
fi
exit "$status"
