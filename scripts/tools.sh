# shellcheck shell=bash
# Tools that local runs need beyond the Rust workspace, installed once into a cache outside
# the repository (~/.cache/loadwave, or $LOADWAVE_CACHE) so a second run starts at once and
# a fresh machine still gets them. Source it after common.sh (it uses log and die).
#
#   ensure_pyenv   a venv with moto (the AWS emulation), boto3 and confluent-kafka; sets LW_PY
#   ensure_rie     the AWS Lambda runtime interface emulator, built with Go;      sets LW_RIE
#   ensure_nginx   nginx from Debian (the system's package manager)  sets LOADWAVE_TEST_NGINX
#   ensure_schemathesis  schemathesis (PyPI) in a venv of its own;          sets LW_SCHEMATHESIS
#
# Only package registries are used: PyPI through pip, the Go module proxy through `go install`,
# Debian's archive through apt.

LW_CACHE=${LOADWAVE_CACHE:-$HOME/.cache/loadwave}

# confluent-kafka's wheels carry librdkafka inside, so nothing is compiled here.
LW_PY_REQUIREMENTS=("moto[server]==5.*" "boto3" "confluent-kafka")

# Pinned to a pseudo-version so every machine runs the same emulator; the module proxy serves
# it from the repository's commit.
LW_RIE_MODULE=github.com/aws/aws-lambda-runtime-interface-emulator/cmd/aws-lambda-rie
LW_RIE_VERSION=v0.0.0-20261030222936-bef5c4ba774d

# _lw_locked CMD...: runs CMD in a subshell holding the cache's install lock, so that two
# runs starting together (make local-aws beside the self-test) install once, not over each
# other. CMD re-checks what it installs: the other run may have just done it.
_lw_locked() {
  mkdir -p "$LW_CACHE"
  (
    if command -v flock >/dev/null; then
      flock -w 1800 9 || die "waited 30 minutes for another install into $LW_CACHE"
    fi
    "$@"
  ) 9>"$LW_CACHE/.install.lock"
}

# The marker holds the requirement list and the interpreter that built the venv: a change to
# either (a new requirement, a python3 upgrade) rebuilds it from scratch, so no stale package
# or dangling interpreter link survives.
_lw_pyenv_marker() {
  printf '%s\n' "${LW_PY_REQUIREMENTS[@]}"
  python3 -c 'import sys; print("python:", sys.executable, sys.version.split()[0])'
}

_lw_pyenv_ready() {
  local venv="$LW_CACHE/venv"
  [[ -x $venv/bin/python && -f $venv/.loadwave-requirements ]] &&
    [[ "$(cat "$venv/.loadwave-requirements")" == "$(_lw_pyenv_marker)" ]]
}

_lw_install_pyenv() {
  _lw_pyenv_ready && return 0
  local venv="$LW_CACHE/venv"
  log "installing ${LW_PY_REQUIREMENTS[*]} from PyPI into $venv (once)"
  rm -rf "$venv"
  timeout 120 python3 -m venv "$venv" \
    || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  timeout 900 "$venv/bin/python" -m pip install -q --disable-pip-version-check "${LW_PY_REQUIREMENTS[@]}" \
    || { rm -rf "$venv"; die "pip install ${LW_PY_REQUIREMENTS[*]} failed"; }
  # Written last: an interrupted install leaves no marker and is redone next time.
  _lw_pyenv_marker >"$venv/.loadwave-requirements"
}

ensure_pyenv() {
  command -v python3 >/dev/null || die "python3 (3.9 or newer) is needed"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
    || die "python3 is $(python3 --version 2>&1); 3.9 or newer is needed"
  _lw_pyenv_ready || _lw_locked _lw_install_pyenv || die "could not set up $LW_CACHE/venv"
  export LW_PY="$LW_CACHE/venv/bin/python"
}

_lw_rie_ready() {
  [[ -x $LW_CACHE/bin/aws-lambda-rie && "$(cat "$LW_CACHE/bin/.aws-lambda-rie.version" 2>/dev/null)" == "$LW_RIE_VERSION" ]]
}

_lw_install_rie() {
  _lw_rie_ready && return 0
  command -v go >/dev/null || die "Go is needed to build the Lambda runtime interface emulator (https://go.dev/dl)"
  log "building aws-lambda-rie from the Go module proxy into $LW_CACHE/bin (about a minute, once)"
  mkdir -p "$LW_CACHE/bin"
  # The module and build caches go under the cache too (-modcacherw so `rm -rf` can clear
  # them); GOTOOLCHAIN=local because fetching another Go toolchain is not a registry download.
  GOBIN="$LW_CACHE/bin" GOMODCACHE="$LW_CACHE/go/mod" GOCACHE="$LW_CACHE/go/build" \
    GOFLAGS="${GOFLAGS:-} -modcacherw" GOTOOLCHAIN=local \
    timeout 900 go install "$LW_RIE_MODULE@$LW_RIE_VERSION" \
    || die "go install $LW_RIE_MODULE@$LW_RIE_VERSION failed"
  echo "$LW_RIE_VERSION" >"$LW_CACHE/bin/.aws-lambda-rie.version"
}

ensure_rie() {
  _lw_rie_ready || _lw_locked _lw_install_rie || die "could not build the Lambda runtime interface emulator"
  export LW_RIE="$LW_CACHE/bin/aws-lambda-rie"
}

# nginx (Debian package): the engine's HTTP/1.1 client is tested against it (chunked
# gzip, Connection: close, large bodies, https). Sets LOADWAVE_TEST_NGINX.
ensure_nginx() {
  local bin
  bin=$(command -v nginx || echo /usr/sbin/nginx)
  if [[ ! -x $bin ]]; then
    [[ $(id -u) -eq 0 ]] || die "nginx is needed for the tests (apt-get install nginx-light)"
    log "installing nginx (Debian package nginx-light)"
    { apt-get install -y -qq nginx-light >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }; } \
      || die "apt-get install nginx-light failed"
    # The package starts a system nginx on port 80; the tests run their own.
    { systemctl stop nginx || service nginx stop || true; } >/dev/null 2>&1
    bin=/usr/sbin/nginx
  fi
  export LOADWAVE_TEST_NGINX="$bin"
}

# Schemathesis (PyPI), in a venv of its own so its dependencies never meet moto's. Pinned so
# every machine runs the same checks. Sets LW_SCHEMATHESIS.
LW_SCHEMATHESIS_VERSION=4.32.5

_lw_schemathesis_ready() {
  local venv="$LW_CACHE/schemathesis"
  [[ -x $venv/bin/schemathesis && "$(cat "$venv/.loadwave-version" 2>/dev/null)" == "$LW_SCHEMATHESIS_VERSION" ]]
}

_lw_install_schemathesis() {
  _lw_schemathesis_ready && return 0
  local venv="$LW_CACHE/schemathesis"
  log "installing schemathesis $LW_SCHEMATHESIS_VERSION from PyPI into $venv (once)"
  rm -rf "$venv"
  timeout 120 python3 -m venv "$venv" \
    || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  timeout 900 "$venv/bin/python" -m pip install -q --disable-pip-version-check \
    "schemathesis==$LW_SCHEMATHESIS_VERSION" \
    || { rm -rf "$venv"; die "pip install schemathesis failed"; }
  echo "$LW_SCHEMATHESIS_VERSION" >"$venv/.loadwave-version"
}

ensure_schemathesis() {
  _lw_schemathesis_ready || _lw_locked _lw_install_schemathesis || die "could not set up schemathesis"
  export LW_SCHEMATHESIS="$LW_CACHE/schemathesis/bin/schemathesis"
}
