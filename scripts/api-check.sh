#!/usr/bin/env bash
# `make api-check`: schemathesis (every check, `--checks all`) against a real orchestrator
# built from this workspace, so the OpenAPI document is held to what the API does: every
# schema-valid request accepted, every schema-invalid one refused with a 4xx, responses as
# documented, authentication enforced, no 5xx.
#
# The orchestrator runs with the pool launcher on a topic prefix of its own and no driver
# ever joins it, so no generated target gets a single request: tests wait for drivers and
# fail. It needs a Kafka broker: KAFKA_BROKERS (as `make test` exports), else one is started
# on API_CHECK_KAFKA_PORT (19192) for the check and stopped after.
#
# Environment: API_CHECK_PORT (18400), API_CHECK_EXAMPLES (per operation and phase, 60),
# ORCHESTRATOR_BIN (target/debug/loadwave-orchestrator, built if missing).
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/tools.sh"
cd "$ROOT"

PORT=${API_CHECK_PORT:-18400}
EXAMPLES=${API_CHECK_EXAMPLES:-60}
BIN=${ORCHESTRATOR_BIN:-$ROOT/target/debug/loadwave-orchestrator}
DIR="$STATE_DIR/api-check"

ensure_schemathesis
if [[ ! -x $BIN ]]; then
  log "building loadwave-orchestrator"
  cargo build -p loadwave-orchestrator --bin loadwave-orchestrator
fi

own_kafka=""
cleanup() {
  stop_bg api-check-orchestrator
  if [[ -n $own_kafka ]]; then
    KAFKA_PORT=$own_kafka bash "$ROOT/scripts/kafka.sh" down
  fi
}
trap cleanup EXIT
if [[ -z ${KAFKA_BROKERS:-} ]]; then
  own_kafka=${API_CHECK_KAFKA_PORT:-19192}
  KAFKA_PORT=$own_kafka KAFKA_CONTROLLER_PORT=$((own_kafka + 1)) bash "$ROOT/scripts/kafka.sh" up
  KAFKA_BROKERS="127.0.0.1:$own_kafka"
fi

rm -rf "$DIR"
mkdir -p "$DIR"
TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$TOKEN" >"$DIR/token"
chmod 600 "$DIR/token"
log "orchestrator on 127.0.0.1:$PORT (pool launcher, no drivers, topics api-check-$$-*)"
start_bg api-check-orchestrator "$BIN" --listen "127.0.0.1:$PORT" --brokers "$KAFKA_BROKERS" \
  --topic-prefix "api-check-$$-" --data-dir "$DIR/data" --token-file "$DIR/token" \
  --launcher pool --driver-wait-ms 1000
wait_http 127.0.0.1 "$PORT" /healthz 60 \
  || die "the orchestrator did not start; see $STATE_DIR/api-check-orchestrator.log"

log "schemathesis --checks all ($EXAMPLES examples per operation and phase)"
status=0
SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$ROOT/scripts/schemathesis" \
  "$LW_SCHEMATHESIS" --config-file "$ROOT/scripts/schemathesis/schemathesis.toml" \
  run "http://127.0.0.1:$PORT/openapi.json" \
  --checks all --header "Authorization: Bearer $TOKEN" \
  --max-examples "$EXAMPLES" --workers 2 --continue-on-failure \
  ${API_CHECK_SEED:+--seed "$API_CHECK_SEED"} --no-color \
  --report junit --report-dir "$DIR" || status=$?
if grep -Eq 'panicked|internal error' "$STATE_DIR/api-check-orchestrator.log"; then
  echo "the orchestrator logged a panic or an internal error:" >&2
  grep -E 'panicked|internal error' "$STATE_DIR/api-check-orchestrator.log" | head -5 >&2
  status=1
fi
if [[ $status == 0 ]]; then
  echo "api-check: PASS"
else
  echo "api-check: FAIL (schemathesis exit $status)" >&2
fi
exit "$status"
