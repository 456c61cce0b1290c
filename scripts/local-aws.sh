#!/usr/bin/env bash
# `make local-aws`: the AWS deployment's shape on this machine, as native processes, with no
# AWS account and no Docker engine:
#
#   loadwave CLI ──▶ front (API Gateway HTTP API, payload 2.0) ──▶ RIE ──▶ loadwave-lambda-api
#   Kafka (for MSK) ──▶ bridge (MSK event source mapping + EventBridge schedule) ──▶ RIE ──▶ loadwave-lambda-controller
#   moto (S3 state store, ECS) ◀── RunTask/StopTask ── the Lambdas;  ecs-watcher runs a loadwave-driver per ECS task
#
# then a demo Avalanche and Tsunami test through the API with `loadwave start --wait`. The
# stack stays up; `make local-aws-down` stops everything this started.
#
#   scripts/local-aws.sh up     stop leftovers, start everything, run the demos
#   scripts/local-aws.sh down   stop everything
#
# Environment (defaults keep clear of `make local`'s ports, so both stacks can run at once):
#   LOCAL_AWS_API_PORT (8100)             the API, as API Gateway would serve it
#   LOCAL_AWS_TARGET_PORT (8081)          the demo target
#   LOCAL_AWS_KAFKA_PORT (9292)           Kafka, and its controller on the port after it
#   LOCAL_AWS_MOTO_PORT (5055)            moto: S3, ECS, EC2
#   LOCAL_AWS_API_RIE_PORT (9101), LOCAL_AWS_CONTROLLER_RIE_PORT (9102)
#                                         the two Lambda runtime emulators; their runtime APIs
#                                         listen 10 ports higher (9111, 9112)
#   LOCAL_AWS_TOPIC_PREFIX ("")           Kafka topic prefix
#   LOCAL_AWS_STATE_DIR (.local/aws)      pids, logs, drivers/ (one log per ECS task, tasks.json)
#   LOADWAVE_BIN_DIR                      use these binaries instead of building release ones
#   LOCAL_AWS_NO_DEMO=1                   skip the demo tests
#
# Tools beyond the Rust workspace (moto, boto3, confluent-kafka, the Lambda runtime interface
# emulator) are installed once into ~/.cache/loadwave by scripts/tools.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/tools.sh"
cd "$ROOT"

API_PORT=${LOCAL_AWS_API_PORT:-8100}
TARGET_PORT=${LOCAL_AWS_TARGET_PORT:-8081}
KAFKA_PORT=${LOCAL_AWS_KAFKA_PORT:-9292}
MOTO_PORT=${LOCAL_AWS_MOTO_PORT:-5055}
API_RIE_PORT=${LOCAL_AWS_API_RIE_PORT:-9101}
CONTROLLER_RIE_PORT=${LOCAL_AWS_CONTROLLER_RIE_PORT:-9102}
# Each RIE serves the runtime API to its function on a port of its own: left to the default
# (127.0.0.1:9001) the second RIE could not start.
API_RUNTIME_PORT=$((API_RIE_PORT + 10))
CONTROLLER_RUNTIME_PORT=$((CONTROLLER_RIE_PORT + 10))
TOPIC_PREFIX=${LOCAL_AWS_TOPIC_PREFIX:-}

# start_bg and stop_bg keep their pids and logs in STATE_DIR: a folder of its own, so that
# `make local` (.local/*.pid) and this stack never stop each other's processes.
STATE_DIR=${LOCAL_AWS_STATE_DIR:-$STATE_DIR/aws}
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
DRIVER_LOGS="$STATE_DIR/drivers"

CLUSTER=loadwave-local
TASK_FAMILY=loadwave-driver
BUCKET=loadwave-local
MOTO="http://127.0.0.1:$MOTO_PORT"
API="http://127.0.0.1:$API_PORT"
INVOKE_PATH=/2015-03-31/functions/function/invocations
LOCAL_AWS_PY="$ROOT/scripts/local_aws.py"

# kafka.sh keys its state by port; its controller port is passed too, so a value exported
# for another broker (`make test` exports one) cannot leak in.
kafka() {
  KAFKA_PORT=$KAFKA_PORT KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1)) bash "$ROOT/scripts/kafka.sh" "$1"
}

# wait_port NAME PORT SECONDS: until something accepts on PORT; fails early if NAME died.
wait_port() {
  local name=$1 port=$2 limit=$3 pid i
  pid=$(cat "$STATE_DIR/$name.pid")
  for ((i = 0; i < limit * 10; i++)); do
    port_open "$port" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# The watcher gets longer than stop_bg's 5 s: it gives each driver 10 s after SIGTERM (as
# ECS does) before SIGKILL. Should it die first anyway, the drivers it listed in tasks.json
# are killed here, so none is left behind.
stop_watcher() {
  local pidfile="$STATE_DIR/ecs-watcher.pid" pid
  if [[ -f $pidfile ]]; then
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 250); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  fi
  [[ -f $DRIVER_LOGS/tasks.json ]] || return 0
  local driver
  for driver in $(python3 -c 'import json, sys
for t in json.load(open(sys.argv[1])).values():
    if t.get("pid") and t.get("status") != "exited":
        print(t["pid"])' "$DRIVER_LOGS/tasks.json" 2>/dev/null); do
    # Only if that pid is still a driver (pids are reused).
    if grep -qa loadwave-driver "/proc/$driver/cmdline" 2>/dev/null; then
      kill -9 -- "-$driver" 2>/dev/null || kill -9 "$driver" 2>/dev/null || true
    fi
  done
}

down() {
  stop_watcher
  stop_bg bridge
  stop_bg front
  stop_bg rie-controller
  stop_bg rie-api
  stop_bg target
  stop_bg moto
  kafka down
  log "local AWS stack stopped"
}

up() {
  down >/dev/null 2>&1 || true
  for port in "$API_PORT" "$TARGET_PORT" "$MOTO_PORT" "$API_RIE_PORT" "$CONTROLLER_RIE_PORT" \
    "$API_RUNTIME_PORT" "$CONTROLLER_RUNTIME_PORT"; do
    ! port_open "$port" || die "port $port is taken by something else; see the LOCAL_AWS_*_PORT variables in $0"
  done

  ensure_pyenv
  ensure_rie

  local bin
  if [[ -n ${LOADWAVE_BIN_DIR:-} ]]; then
    bin=$(cd "$LOADWAVE_BIN_DIR" && pwd)
  else
    command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
    log "building loadwave (release)"
    cargo build --release --bins --locked
    bin="$ROOT/target/release"
  fi
  local b
  for b in loadwave loadwave-target loadwave-driver loadwave-lambda-api loadwave-lambda-controller; do
    [[ -x $bin/$b ]] || die "$bin/$b is missing"
  done

  kafka up

  log "starting moto (S3, ECS, EC2) on $MOTO"
  start_bg moto "$(dirname "$LW_PY")/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
  "$LW_PY" "$LOCAL_AWS_PY" wait-http "$MOTO/moto-api/data.json" --timeout 30 \
    || die "moto did not come up; see $STATE_DIR/moto.log"
  local network subnets security_groups
  network=$("$LW_PY" "$LOCAL_AWS_PY" setup-moto --endpoint "$MOTO" --bucket "$BUCKET" --cluster "$CLUSTER" \
    --task-family "$TASK_FAMILY" --container driver) || die "setting up moto failed"
  subnets=$("$LW_PY" -c 'import json, sys; print(",".join(json.loads(sys.argv[1])["subnets"]))' "$network")
  security_groups=$("$LW_PY" -c 'import json, sys; print(",".join(json.loads(sys.argv[1])["security_groups"]))' "$network")
  log "moto: bucket $BUCKET, cluster $CLUSTER, task definition $TASK_FAMILY"

  log "starting loadwave-target on 127.0.0.1:$TARGET_PORT"
  start_bg target "$bin/loadwave-target" --listen "127.0.0.1:$TARGET_PORT"
  wait_http 127.0.0.1 "$TARGET_PORT" /healthz 20 || die "the target did not come up; see $STATE_DIR/target.log"

  # What both functions see, as their Lambda configuration would set it. AWS_PROFILE and a
  # session token from the caller's shell are dropped: they would mix real credentials in.
  local lambda_env=(
    -u AWS_PROFILE -u AWS_DEFAULT_PROFILE -u AWS_SESSION_TOKEN
    AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
    AWS_ENDPOINT_URL="$MOTO"
    LOADWAVE_STORE="s3://$BUCKET/state"
    KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT" LOADWAVE_TOPIC_PREFIX="$TOPIC_PREFIX" LOADWAVE_KAFKA_AUTH=none
    LOADWAVE_ECS_CLUSTER="$CLUSTER" LOADWAVE_ECS_TASK_DEFINITION="$TASK_FAMILY"
    LOADWAVE_ECS_SUBNETS="$subnets" LOADWAVE_ECS_SECURITY_GROUPS="$security_groups"
    LOADWAVE_ECS_CAPACITY_PROVIDER=FARGATE LOADWAVE_ECS_CONTAINER=driver
    RUST_LOG=info
  )
  log "starting the Lambda runtime emulators: api on :$API_RIE_PORT, controller on :$CONTROLLER_RIE_PORT"
  # API Gateway gives up after 30 s, so the API function's timeout is that; the controller
  # gets Lambda's usual 5 minutes.
  start_bg rie-api env "${lambda_env[@]}" AWS_LAMBDA_FUNCTION_NAME=loadwave-api AWS_LAMBDA_FUNCTION_TIMEOUT=30 \
    "$LW_RIE" --runtime-interface-emulator-address "127.0.0.1:$API_RIE_PORT" \
    --runtime-api-address "127.0.0.1:$API_RUNTIME_PORT" "$bin/loadwave-lambda-api"
  start_bg rie-controller env "${lambda_env[@]}" AWS_LAMBDA_FUNCTION_NAME=loadwave-controller AWS_LAMBDA_FUNCTION_TIMEOUT=300 \
    "$LW_RIE" --runtime-interface-emulator-address "127.0.0.1:$CONTROLLER_RIE_PORT" \
    --runtime-api-address "127.0.0.1:$CONTROLLER_RUNTIME_PORT" "$bin/loadwave-lambda-controller"
  wait_port rie-api "$API_RIE_PORT" 10 || die "the api RIE did not come up; see $STATE_DIR/rie-api.log"
  wait_port rie-controller "$CONTROLLER_RIE_PORT" 10 \
    || die "the controller RIE did not come up; see $STATE_DIR/rie-controller.log"

  log "starting API Gateway (front) on $API, the MSK mapping and schedule (bridge), the ECS watcher"
  start_bg front "$LW_PY" "$LOCAL_AWS_PY" front --listen "127.0.0.1:$API_PORT" \
    --invoke "http://127.0.0.1:$API_RIE_PORT$INVOKE_PATH"
  start_bg bridge "$LW_PY" "$LOCAL_AWS_PY" bridge --brokers "127.0.0.1:$KAFKA_PORT" --topic-prefix "$TOPIC_PREFIX" \
    --invoke "http://127.0.0.1:$CONTROLLER_RIE_PORT$INVOKE_PATH" --schedule-every 2
  # The drivers get the watcher's environment plus what the launcher puts in the task's
  # overrides (the brokers among it), as a Fargate task gets its definition's and overrides'.
  start_bg ecs-watcher env -u AWS_PROFILE -u AWS_DEFAULT_PROFILE -u AWS_SESSION_TOKEN \
    AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_ENDPOINT_URL="$MOTO" RUST_LOG=info \
    "$LW_PY" "$LOCAL_AWS_PY" ecs-watcher --endpoint "$MOTO" --cluster "$CLUSTER" \
    --driver-bin "$bin/loadwave-driver" --log-dir "$DRIVER_LOGS"

  # The whole chain: front → RIE → loadwave-lambda-api (its cold start included) → S3 in moto.
  wait_http 127.0.0.1 "$API_PORT" /healthz 60 || die "GET $API/healthz did not answer 200 within 60 s;" \
    "see $STATE_DIR/front.log (the request's outcome) and $STATE_DIR/rie-api.log (loadwave-lambda-api's output)"
  log "the API answers: $API/healthz"
  local name
  for name in bridge ecs-watcher; do
    kill -0 "$(cat "$STATE_DIR/$name.pid")" 2>/dev/null || die "the $name exited; see $STATE_DIR/$name.log"
  done

  if [[ ${LOCAL_AWS_NO_DEMO:-} != 1 ]]; then
    local url="http://127.0.0.1:$TARGET_PORT/ping"
    log "demo 1/2: Avalanche — 3 drivers (ECS tasks) × 5,000 requests, 8 in flight each"
    "$bin/loadwave" start --orchestrator "$API" --wait --name "demo avalanche (local AWS)" \
      --target-url "$url" --test-type avalanche --drivers 3 --requests-per-driver 5000 \
      --concurrency 8 --threshold 'p99 < 100ms' --threshold 'error_rate < 1%'

    log "demo 2/2: Tsunami — 2 drivers × 200 requests, one every 5 ms per driver, target answering in 2 ms"
    "$bin/loadwave" start --orchestrator "$API" --wait --name "demo tsunami (local AWS)" \
      --target-url "$url?delay_ms=2" --test-type tsunami --drivers 2 --requests-per-driver 200 \
      --concurrency 8 --delay-ms 5 --threshold 'p99 < 50ms'

    log "the target's own counts (GET http://127.0.0.1:$TARGET_PORT/metrics)"
    # The body only: everything after the blank line that ends the headers.
    http_get 127.0.0.1 "$TARGET_PORT" /metrics | sed '1,/^\r\{0,1\}$/d'
    echo
  fi

  cat <<TXT

The local AWS stack is up:
  API (API Gateway → Lambda)   $API/tests
  moto (S3, ECS)               $MOTO   (state: s3://$BUCKET/state)
  Kafka (for MSK)              127.0.0.1:$KAFKA_PORT
  target                       http://127.0.0.1:$TARGET_PORT/ping   (its counts: /metrics)
  logs                         $STATE_DIR/*.log; one per ECS task in $DRIVER_LOGS (tasks.json lists them)

Try:
  LOADWAVE_ORCHESTRATOR=$API $bin/loadwave list
  LOADWAVE_ORCHESTRATOR=$API $bin/loadwave start --target-url http://127.0.0.1:$TARGET_PORT/ping --test-type avalanche --drivers 2 --requests-per-driver 10000 --wait
  make local-aws-down

API: $API
TXT
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
