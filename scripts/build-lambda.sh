#!/usr/bin/env bash
# `make build-lambda`: the two Lambda functions as the zips Terraform deploys
# (target/lambda/loadwave-lambda-api/bootstrap.zip,
#  target/lambda/loadwave-lambda-controller/bootstrap.zip), built by cargo-lambda (PyPI;
# it brings zig, which links against a glibc the Lambda runtime has). `make deploy` runs it.
#
# Environment: LOADWAVE_LAMBDA_ARCH — arm64 (default; Graviton is cheaper per GB-second)
# or x86_64. arm64 needs Rust's aarch64-unknown-linux-gnu target, which cargo-lambda adds
# through rustup.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"

ARCH=${LOADWAVE_LAMBDA_ARCH:-arm64}
case "$ARCH" in
  arm64) flag=--arm64 ;;
  x86_64) flag=--x86-64 ;;
  *) die "LOADWAVE_LAMBDA_ARCH must be arm64 or x86_64, not '$ARCH'" ;;
esac
command -v cargo >/dev/null || die "cargo is not installed (https://rustup.rs)"
cargo lambda --version >/dev/null 2>&1 || die "cargo lambda is missing: pip install cargo-lambda"
log "building loadwave-lambda-api and loadwave-lambda-controller for Lambda ($ARCH, release)"
cargo lambda build --release "$flag" --output-format zip \
  --bin loadwave-lambda-api --bin loadwave-lambda-controller
for b in loadwave-lambda-api loadwave-lambda-controller; do
  [[ -f target/lambda/$b/bootstrap.zip ]] || die "cargo lambda did not produce target/lambda/$b/bootstrap.zip"
done
ls -l target/lambda/*/bootstrap.zip
