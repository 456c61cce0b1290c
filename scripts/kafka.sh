#!/usr/bin/env bash
# A single-node Apache Kafka broker in KRaft mode, for local runs and tests.
#
#   scripts/kafka.sh up     fetch the jars (Maven Central, once), format, start, wait
#   scripts/kafka.sh down   stop it
#   scripts/kafka.sh stop   stop it, keeping its data (for outage tests)
#   scripts/kafka.sh start  start it again on the data `up` formatted
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT + 1),
# KAFKA_VERSION (from scripts/kafka/pom.xml), KAFKA_HEAP (512m).
# KAFKA_TLS_PORT (unset): when set, `up` also opens an SSL://127.0.0.1:KAFKA_TLS_PORT
# listener (server authentication only, ssl.client.auth=none) whose certificate comes from
# the throwaway CA of scripts/tls.sh, made in KAFKA_TLS_DIR (.local/kafka-PORT/tls, kept
# across `up`s while valid); clients trust KAFKA_TLS_DIR/ca.pem (ssl.ca.location). The
# PLAINTEXT listener is unchanged and stays the inter-broker one.
# The jars are cached in ~/.cache/loadwave/kafka-VERSION/libs, outside the repository;
# the broker's data lives in .local/kafka-PORT and is wiped at every start.
set -euo pipefail
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/tls.sh"

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
KAFKA_VERSION=${KAFKA_VERSION:-$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")}
KAFKA_HEAP=${KAFKA_HEAP:-512m}
LIBS="$HOME/.cache/loadwave/kafka-$KAFKA_VERSION/libs"
DATA="$STATE_DIR/kafka-$KAFKA_PORT"
NAME="kafka-$KAFKA_PORT"
KAFKA_TLS_PORT=${KAFKA_TLS_PORT:-}
KAFKA_TLS_DIR=${KAFKA_TLS_DIR:-$DATA/tls}

fetch() {
  if [[ -f "$LIBS/.complete" ]]; then return; fi
  command -v mvn >/dev/null || die "mvn is needed to fetch the Kafka jars (apt-get install maven)"
  command -v java >/dev/null || die "Java 17 is needed to run Kafka"
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
  rm -rf "$LIBS"
  mvn -q -B -f "$ROOT/scripts/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS"
  touch "$LIBS/.complete"
}

up() {
  fetch
  stop_bg "$NAME"
  if port_open "$KAFKA_PORT"; then
    die "port $KAFKA_PORT is taken by something else; set KAFKA_PORT"
  fi
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
  local advertised="PLAINTEXT://127.0.0.1:$KAFKA_PORT"
  local protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [[ -n $KAFKA_TLS_PORT ]]; then
    [[ $KAFKA_TLS_PORT =~ ^[0-9]+$ ]] || die "KAFKA_TLS_PORT must be a port number"
    if [[ $KAFKA_TLS_PORT == "$KAFKA_PORT" || $KAFKA_TLS_PORT == "$KAFKA_CONTROLLER_PORT" ]]; then
      die "KAFKA_TLS_PORT must differ from KAFKA_PORT and KAFKA_CONTROLLER_PORT"
    fi
    if port_open "$KAFKA_TLS_PORT"; then
      die "port $KAFKA_TLS_PORT is taken by something else; set KAFKA_TLS_PORT"
    fi
    listeners+=",SSL://127.0.0.1:$KAFKA_TLS_PORT"
    advertised+=",SSL://127.0.0.1:$KAFKA_TLS_PORT"
    protocols+=",SSL:SSL"
  fi
  # Wiped at every start, except the default certificate folder, which make_test_ca reuses
  # while it is valid (so a client's ca.pem stays good across `up`s).
  if [[ -d $DATA ]]; then
    find "$DATA" -mindepth 1 -maxdepth 1 ! -path "$DATA/tls" -exec rm -rf {} +
  fi
  mkdir -p "$DATA"
  cat >"$DATA/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$DATA/logs
# Tuned for tests: topics are created by loadwave itself, one partition, no waiting for
# more consumers to join a group before the first assignment.
auto.create.topics.enable=false
num.partitions=1
group.initial.rebalance.delay.ms=0
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# The log cleaner's dedupe buffer (128 MiB by default) is allocated when the broker starts
# on data with a compacted topic (__consumer_offsets): too much for a small test heap.
log.cleaner.dedupe.buffer.size=16777216
PROPS
  if [[ -n $KAFKA_TLS_PORT ]]; then
    make_test_ca "$KAFKA_TLS_DIR" || die "making the test certificates in $KAFKA_TLS_DIR failed"
    # A PEM key store: the unencrypted PKCS#8 key, then the certificate chain (no password).
    cat "$KAFKA_TLS_DIR/broker.key" "$KAFKA_TLS_DIR/broker.pem" >"$DATA/tls-keystore.pem"
    chmod 600 "$DATA/tls-keystore.pem"
    cat >>"$DATA/server.properties" <<PROPS
# The TLS listener (KAFKA_TLS_PORT): server authentication only; CA in $KAFKA_TLS_DIR/ca.pem.
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$DATA/tls-keystore.pem
listener.name.ssl.ssl.client.auth=none
PROPS
  fi
  local cluster_id
  cluster_id=$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid | tail -n 1)
  "${java_cmd[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$DATA/server.properties" >"$DATA/format.log" 2>&1 \
    || { cat "$DATA/format.log" >&2; die "formatting the Kafka log directory failed"; }
  start
}

java_cmd=(java "-Xms128m" "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:TieredStopAtLevel=1
  "-Dlog4j2.configurationFile=$ROOT/scripts/kafka/log4j2.properties" -cp "$LIBS/*")

start() {
  [[ -f "$DATA/server.properties" ]] || die "no formatted broker in $DATA; run '$0 up'"
  stop_bg "$NAME"
  log "starting Apache Kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$KAFKA_PORT"
  # The TLS port, if `up` configured one (read back, so `start` needs no KAFKA_TLS_PORT).
  local tls_port
  tls_port=$(sed -n 's|^advertised\.listeners=.*SSL://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$DATA/server.properties")
  start_bg "$NAME" "${java_cmd[@]}" kafka.Kafka "$DATA/server.properties"
  local pid
  pid=$(cat "$STATE_DIR/$NAME.pid")
  for _ in $(seq 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$STATE_DIR/$NAME.log" >&2
      die "Kafka exited during start-up"
    fi
    if grep -q "Kafka Server started" "$STATE_DIR/$NAME.log" 2>/dev/null && port_open "$KAFKA_PORT" \
      && { [[ -z $tls_port ]] || port_open "$tls_port"; }; then
      log "Kafka is up on 127.0.0.1:$KAFKA_PORT${tls_port:+ (TLS on 127.0.0.1:$tls_port)}"
      return 0
    fi
    sleep 0.1
  done
  die "Kafka did not start within 60 s; see $STATE_DIR/$NAME.log"
}

down() {
  stop_bg "$NAME"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  start) fetch && start ;;
  stop) down ;;
  *) die "usage: $0 up|down" ;;
esac
