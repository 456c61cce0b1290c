#!/usr/bin/env bash
# `make bench`: installs the peers and tools if missing (wrk, valgrind and nginx from Debian,
# oha from crates.io, all outside the repository), builds loadwave in release mode and runs
# scripts/bench.py.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

TOOLS="$HOME/.cache/loadwave-tools"
export PATH="$TOOLS/bin:$PATH"

# wrk (the peer), valgrind (callgrind's instruction counts), nginx (the target).
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
if (( ${#missing[@]} )); then
  log "installing ${missing[*]} (Debian packages)"
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  # The nginx package starts a system server on port 80; the bench runs its own.
  { $SUDO systemctl stop nginx || $SUDO service nginx stop || true; } >/dev/null 2>&1
fi
if ! command -v oha >/dev/null; then
  log "installing oha (crates.io) into $TOOLS"
  cargo install --locked oha --root "$TOOLS"
fi

log "building loadwave (release)"
cargo build --release --bins --locked

python3 scripts/bench.py

# Then the controller at scale (make bench-controller).
bash "$ROOT/scripts/bench-controller.sh"
