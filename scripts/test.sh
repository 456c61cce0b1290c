#!/usr/bin/env bash
# `make test`: build the workspace once (binaries and test binaries together), then run
# every unit and integration test against it. Integration tests start the real binaries.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"

log "building the workspace (binaries and tests, one build)"
cargo build --workspace --bins --tests --locked

log "running the tests"
cargo test --workspace --locked -- --test-threads 2
