#!/usr/bin/env bash
# Static checks of the Terraform in infra/ (`make infra-check`, and part of `make test`):
#
#   fmt         terraform fmt -check -recursive
#   validate    terraform validate, when the AWS provider can be had (it cannot without
#               the Terraform registry or a local mirror: then skipped, and said so)
#   checkov     offline, every failed check fixed or skipped in place with a reason
#   tfsec       likewise
#   test_infra  scripts/test_infra.py: the HCL against the Rust sources (environment,
#               topics, binaries) and the deploy script's preflight
#
# Tools are installed once into ~/.cache/loadwave (or $LOADWAVE_CACHE): checkov in a venv
# of its own (its pinned dependencies stay out of moto's venv), python-hcl2 into the
# shared venv, tfsec built from the Go module proxy. Exits non-zero if any check fails.
set -uo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# shellcheck source=scripts/tools.sh
source "$ROOT/scripts/tools.sh"

INFRA="$ROOT/infra"
CHECKOV_VERSION=3.3.30
HCL2_VERSION=8.1.4
TFSEC_MODULE=github.com/aquasecurity/tfsec/cmd/tfsec
TFSEC_VERSION=v1.26.0

# A CLI configuration variable pointing at a missing file only makes terraform warn.
if [[ -n ${TF_CLI_CONFIG_FILE:-} && ! -f $TF_CLI_CONFIG_FILE ]]; then
  unset TF_CLI_CONFIG_FILE
fi

SUMMARY=()
FAILED=0
pass() { SUMMARY+=("$(printf '%-10s ok       %s' "$1" "$2")"); }
fail() { SUMMARY+=("$(printf '%-10s FAILED   %s' "$1" "$2")"); FAILED=1; }
skip() { SUMMARY+=("$(printf '%-10s skipped  %s' "$1" "$2")"); }
elapsed() { echo "$(($(date +%s) - $1))s"; }

# --- installs (each once, under the cache's lock) ------------------------------------------

_checkov_ready() {
  [[ -x $LW_CACHE/venv-checkov/bin/checkov && "$(cat "$LW_CACHE/venv-checkov/.loadwave-checkov" 2>/dev/null)" == "$CHECKOV_VERSION" ]]
}

_install_checkov() {
  _checkov_ready && return 0
  local venv="$LW_CACHE/venv-checkov"
  log "installing checkov $CHECKOV_VERSION from PyPI into $venv (once, about two minutes)"
  rm -rf "$venv"
  timeout 120 python3 -m venv "$venv" || { rm -rf "$venv"; return 1; }
  timeout 900 "$venv/bin/python" -m pip install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION" \
    || { rm -rf "$venv"; return 1; }
  echo "$CHECKOV_VERSION" >"$venv/.loadwave-checkov"
}

_hcl2_ready() {
  [[ "$(cat "$LW_CACHE/venv/.loadwave-hcl2" 2>/dev/null)" == "$HCL2_VERSION" ]]
}

_install_hcl2() {
  _hcl2_ready && return 0
  log "installing python-hcl2 $HCL2_VERSION from PyPI into $LW_CACHE/venv (once)"
  timeout 600 "$LW_CACHE/venv/bin/python" -m pip install -q --disable-pip-version-check "python-hcl2==$HCL2_VERSION" \
    || return 1
  echo "$HCL2_VERSION" >"$LW_CACHE/venv/.loadwave-hcl2"
}

_tfsec_ready() {
  [[ -x $LW_CACHE/bin/tfsec && "$(cat "$LW_CACHE/bin/.tfsec.version" 2>/dev/null)" == "$TFSEC_VERSION" ]]
}

_install_tfsec() {
  _tfsec_ready && return 0
  command -v go >/dev/null || return 1
  log "building tfsec $TFSEC_VERSION from the Go module proxy into $LW_CACHE/bin (once, about two minutes)"
  mkdir -p "$LW_CACHE/bin"
  if ! GOBIN="$LW_CACHE/bin" GOMODCACHE="$LW_CACHE/go/mod" GOCACHE="$LW_CACHE/go/build" \
    GOFLAGS="${GOFLAGS:-} -modcacherw" GOTOOLCHAIN=local \
    timeout 900 go install "$TFSEC_MODULE@$TFSEC_VERSION" >"$LW_CACHE/tfsec-build.log" 2>&1; then
    tail -n 20 "$LW_CACHE/tfsec-build.log" >&2
    return 1
  fi
  echo "$TFSEC_VERSION" >"$LW_CACHE/bin/.tfsec.version"
}

# --- the checks ------------------------------------------------------------------------------

check_fmt() {
  if ! command -v terraform >/dev/null; then
    skip fmt "terraform is not installed (https://developer.hashicorp.com/terraform/install): fmt and validate not run"
    return
  fi
  local out
  if out=$(terraform fmt -check -recursive -list=true "$INFRA" 2>&1); then
    pass fmt "terraform fmt -check -recursive infra"
  else
    printf '%s\n' "$out" >&2
    fail fmt "files need \`terraform fmt -recursive infra\`: $(echo "$out" | tr '\n' ' ')"
  fi
}

# Validates a copy of infra/ (init writes .terraform and a lock file, which do not belong
# in the work tree), with providers cached under the cache directory.
check_validate() {
  command -v terraform >/dev/null || { skip validate "terraform is not installed"; return; }
  local work
  work=$(mktemp -d)
  cp "$INFRA"/*.tf "$work"/
  mkdir -p "$LW_CACHE/terraform-plugins"
  if ! TF_PLUGIN_CACHE_DIR="$LW_CACHE/terraform-plugins" TF_IN_AUTOMATION=1 \
    timeout 60 terraform -chdir="$work" init -backend=false -input=false -no-color >"$work/init.log" 2>&1; then
    echo "terraform validate skipped: the AWS provider cannot be downloaded on this machine (no Terraform registry)" >&2
    skip validate "the AWS provider cannot be downloaded on this machine (no Terraform registry): $(grep -m1 '^Error:' "$work/init.log" | cut -c8-100)"
    rm -rf "$work"
    return
  fi
  local out
  if out=$(terraform -chdir="$work" validate -no-color 2>&1); then
    pass validate "terraform validate"
  else
    printf '%s\n' "$out" >&2
    fail validate "terraform validate reported errors (above)"
  fi
  rm -rf "$work"
}

check_checkov() {
  if ! { _checkov_ready || _lw_locked _install_checkov; }; then
    fail checkov "could not install checkov $CHECKOV_VERSION from PyPI into $LW_CACHE/venv-checkov"
    return
  fi
  local out rc
  # Offline: no policy download, no platform mapping, no version check.
  out=$(cd "$ROOT" && BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=TRUE \
    timeout 600 "$LW_CACHE/venv-checkov/bin/checkov" -d infra --framework terraform \
    --skip-download --quiet --compact 2>&1)
  rc=$?
  local counts
  counts=$(echo "$out" | grep -m1 -oE 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+')
  if [[ $rc -eq 0 ]]; then
    # --quiet prints nothing when nothing failed; count the skips from the sources.
    pass checkov "no failed checks ($(grep -rho "#checkov:skip=" "$INFRA" | wc -l) skip comments in infra/, each with its reason)"
  else
    printf '%s\n' "$out" >&2
    fail checkov "${counts:-checkov exited with $rc} (details above)"
  fi
}

check_tfsec() {
  if ! { _tfsec_ready || _lw_locked _install_tfsec; }; then
    if ! command -v go >/dev/null; then
      skip tfsec "Go is not installed (needed to build tfsec from the module proxy): tfsec not run"
    else
      fail tfsec "could not build $TFSEC_MODULE@$TFSEC_VERSION"
    fi
    return
  fi
  local out rc
  out=$(timeout 300 "$LW_CACHE/bin/tfsec" "$INFRA" --no-module-downloads --no-colour 2>&1)
  rc=$?
  local counts
  counts=$(echo "$out" | grep -E '^\s+(passed|ignored|critical|high|medium|low)\s' | awk '{printf "%s %s, ", $2, $1}' | sed 's/, $//')
  if [[ $rc -eq 0 ]]; then
    pass tfsec "no problems (${counts:-see tfsec output})"
  else
    printf '%s\n' "$out" >&2
    fail tfsec "${counts:-tfsec exited with $rc} (details above)"
  fi
}

check_test_infra() {
  if ! { _hcl2_ready || _lw_locked _install_hcl2; }; then
    fail test_infra "could not install python-hcl2 $HCL2_VERSION into $LW_CACHE/venv"
    return
  fi
  local out rc
  out=$("$LW_PY" "$ROOT/scripts/test_infra.py" 2>&1)
  rc=$?
  printf '%s\n' "$out" >&2
  if [[ $rc -eq 0 ]]; then
    pass test_infra "$(echo "$out" | tail -n 1)"
  else
    fail test_infra "$(echo "$out" | tail -n 1)"
  fi
}

main() {
  local start t
  start=$(date +%s)
  ensure_pyenv

  for step in fmt validate checkov tfsec test_infra; do
    t=$(date +%s)
    log "infra-check: $step"
    "check_$step"
    SUMMARY[-1]="${SUMMARY[-1]} [$(elapsed "$t")]"
  done

  echo
  echo "infra-check summary ($(elapsed "$start")):"
  printf '  %s\n' "${SUMMARY[@]}"
  if [[ $FAILED -ne 0 ]]; then
    echo "infra-check: FAILED"
    exit 1
  fi
  echo "infra-check: ok"
}

main "$@"
