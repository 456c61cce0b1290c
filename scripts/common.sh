# Shared helpers for the scripts in this folder; source it, don't run it.

# The repository root, and where local runs keep pids and logs (ignored by git).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="$ROOT/.local"
mkdir -p "$STATE_DIR"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# http_get HOST PORT PATH: prints the status line and body of a GET, using bash's
# /dev/tcp so nothing beyond bash is needed. Fails quietly when nothing listens.
http_get() {
  local host=$1 port=$2 path=$3
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$host" >&3
    cat <&3
  ) 2>/dev/null
}

# port_open PORT: whether something accepts connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http HOST PORT PATH [SECONDS]: until GET answers 200.
wait_http() {
  local host=$1 port=$2 path=$3 limit=${4:-30} i
  for ((i = 0; i < limit * 10; i++)); do
    if http_get "$host" "$port" "$path" | head -n 1 | grep -q ' 200'; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# start_bg NAME CMD...: starts CMD in the background, its pid in $STATE_DIR/NAME.pid and
# its output in $STATE_DIR/NAME.log.
start_bg() {
  local name=$1
  shift
  "$@" >"$STATE_DIR/$name.log" 2>&1 &
  echo $! >"$STATE_DIR/$name.pid"
}

# stop_bg NAME: stops what start_bg started, if it still runs.
stop_bg() {
  local pidfile="$STATE_DIR/$1.pid" pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}
