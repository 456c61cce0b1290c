#!/usr/bin/env bash
# `make bench`: installs the peers if missing (wrk from Debian, oha from crates.io, both
# outside the repository), builds loadwave in release mode and runs scripts/bench.py.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

TOOLS="$HOME/.cache/loadwave-tools"
export PATH="$TOOLS/bin:$PATH"

if ! command -v wrk >/dev/null; then
  log "installing wrk (Debian package)"
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq wrk >/dev/null
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
