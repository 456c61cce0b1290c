#!/usr/bin/env bash
# Container images on a machine that reaches package registries but no image registry.
#
# Podman stands in for a Docker engine, and the base images the Dockerfiles name
# (rust:…-slim-bookworm, debian:bookworm-slim, apache/kafka) are made here from Debian's
# packages and the tools already on the machine; recipes in images/ (see images/README.md).
#
#   scripts/images.sh [base]  podman & co. (Debian packages), then the three base images:
#                               localhost/loadwave-debian:bookworm  debootstrap minbase + libssl3, ca-certificates
#                               localhost/loadwave-rust:local       that + a C toolchain, OpenSSL headers + this
#                                                                   machine's Rust toolchain
#                               localhost/loadwave-kafka:local      that + Java 17 + the Kafka jars of scripts/kafka.sh
#   scripts/images.sh all     those, then the project's images from their real Dockerfiles on
#                             them: loadwave-{driver,target,orchestrator}:latest (CARGO_PROFILE)
#   scripts/images.sh env     print the exports that point podman at our containers.conf
#
# Sourced (by compose-check.sh, compose.sh), it only defines the functions and variables.
#
# Environment: LOADWAVE_CACHE (~/.cache/loadwave), DEBIAN_MIRROR (deb.debian.org),
# CARGO_PROFILE (release; the check uses a faster one), LOADWAVE_IMAGE_PREFIX (loadwave),
# LOADWAVE_IMAGE_TAG (latest), REBUILD=1 (remake the base images even when they exist).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LW_CACHE=${LOADWAVE_CACHE:-$HOME/.cache/loadwave}
IMG_CACHE="$LW_CACHE/images"
export CONTAINERS_CONF="$LW_CACHE/containers/containers.conf"
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SUITE=bookworm

BASE_DEBIAN_IMAGE=localhost/loadwave-debian:bookworm
BASE_RUST_IMAGE=localhost/loadwave-rust:local
BASE_KAFKA_IMAGE=localhost/loadwave-kafka:local
# What the runtime stages need (ldd of the driver and orchestrator: libssl3, libcrypto,
# libz, libgcc_s, libc); zlib1g and libgcc-s1 are in minbase already.
DEBIAN_PACKAGES=libssl3,ca-certificates

LOADWAVE_IMAGE_PREFIX=${LOADWAVE_IMAGE_PREFIX:-loadwave}
LOADWAVE_IMAGE_TAG=${LOADWAVE_IMAGE_TAG:-latest}
CARGO_PROFILE=${CARGO_PROFILE:-release}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

# image_name COMPONENT: the name docker-compose.yml gives that image.
image_name() { printf '%s-%s:%s' "$LOADWAVE_IMAGE_PREFIX" "$1" "$LOADWAVE_IMAGE_TAG"; }

# ensure_tools: podman (with runc), debootstrap and Debian's docker-compose 1.29.
ensure_tools() {
  local need=() tool
  for tool in podman runc debootstrap docker-compose; do
    command -v "$tool" >/dev/null || need+=("$tool")
  done
  if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${need[*]}; install them (apt-get install ${need[*]})"
    log "installing ${need[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  write_containers_conf
}

# Out of the box `podman run` fails here: crun cannot set RLIMIT_NOFILE, and cgroups are
# mounted in hybrid mode. runc with explicit limits works; there is no systemd to manage
# cgroups or keep a journal.
write_containers_conf() {
  mkdir -p "$(dirname "$CONTAINERS_CONF")"
  cat >"$CONTAINERS_CONF.tmp" <<'CONF'
# Written by scripts/images.sh; used through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  mv "$CONTAINERS_CONF.tmp" "$CONTAINERS_CONF"
}

# _locked CMD...: one image build at a time on this machine (make test and a hand-run
# compose-check may start together).
_locked() {
  mkdir -p "$IMG_CACHE"
  (
    flock -w 3600 9 || die "waited an hour for another image build"
    "$@"
  ) 9>"$IMG_CACHE/.lock"
}

# _label IMAGE KEY: the value of a label, empty when the image or the label is missing.
_label() {
  podman image inspect --format "{{ index .Labels \"$2\" }}" "$1" 2>/dev/null | sed 's/<no value>//' || true
}

# _fresh IMAGE RECIPE_HASH: the image exists and was made from this recipe.
_fresh() {
  [[ -z ${REBUILD:-} ]] && [[ $(_label "$1" loadwave.recipe) == "$2" ]]
}

# --- localhost/loadwave-debian:bookworm ------------------------------------------------
# debootstrap (minbase) into a folder, tarred once into the cache, imported with podman.
build_debian() {
  local recipe tarball rootfs
  recipe=$(printf '%s\n' "$DEBIAN_SUITE" "$DEBIAN_PACKAGES" "$(cat "$ROOT/images/debian/sources.list")" \
    | sha256sum | cut -c1-16)
  if _fresh "$BASE_DEBIAN_IMAGE" "$recipe"; then return 0; fi
  tarball="$IMG_CACHE/debian-$DEBIAN_SUITE-minbase-$recipe.tar"
  if [[ ! -s $tarball ]]; then
    rootfs=$(mktemp -d "$IMG_CACHE/rootfs.XXXXXX")
    log "debootstrap --variant=minbase $DEBIAN_SUITE (+ $DEBIAN_PACKAGES) from $DEBIAN_MIRROR"
    if ! debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" "$DEBIAN_SUITE" "$rootfs" \
      "$DEBIAN_MIRROR" >"$IMG_CACHE/debootstrap.log" 2>&1; then
      tail -n 20 "$IMG_CACHE/debootstrap.log" >&2
      rm -rf "$rootfs"
      die "debootstrap failed; see $IMG_CACHE/debootstrap.log"
    fi
    # An image, not a machine: no package cache or lists, no host's resolv.conf or hostname
    # (the engine provides them), the same apt sources as this machine, and no docs.
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    : >"$rootfs/etc/resolv.conf"
    : >"$rootfs/etc/hostname"
    rm -f "$rootfs/etc/apt/sources.list"
    cp "$ROOT/images/debian/sources.list" "$rootfs/etc/apt/sources.list.d/debian.sources"
    cp "$ROOT/images/debian/apt-slim.conf" "$rootfs/etc/apt/apt.conf.d/90loadwave-slim"
    cp "$ROOT/images/debian/dpkg-slim.cfg" "$rootfs/etc/dpkg/dpkg.cfg.d/90loadwave-slim"
    tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
      -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  fi
  log "importing $BASE_DEBIAN_IMAGE from $tarball"
  podman import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --change "LABEL loadwave.recipe=$recipe" \
    "$tarball" "$BASE_DEBIAN_IMAGE" >/dev/null
}

# --- localhost/loadwave-rust:local -------------------------------------------------------
# The Debian image plus what the workspace's build scripts need, plus this machine's Rust
# toolchain (rustup cannot download one here; the build context is the toolchain itself).
build_rust() {
  local sysroot version recipe
  sysroot=$(cd "$ROOT" && rustc --print sysroot) || die "no Rust toolchain (rustc) on this machine"
  [[ -x $sysroot/bin/cargo && -x $sysroot/bin/rustc ]] \
    || die "$sysroot has no bin/cargo: a rustup toolchain is needed to make $BASE_RUST_IMAGE"
  version=$("$sysroot/bin/rustc" -V)
  recipe=$( { cat "$ROOT/images/rust/Dockerfile"; echo "$version"; _label "$BASE_DEBIAN_IMAGE" loadwave.recipe; } \
    | sha256sum | cut -c1-16)
  if _fresh "$BASE_RUST_IMAGE" "$recipe"; then return 0; fi
  log "building $BASE_RUST_IMAGE ($version, from $sysroot)"
  podman build -q --network host --format docker --pull=never \
    --build-arg "DEBIAN_IMAGE=$BASE_DEBIAN_IMAGE" --label "loadwave.recipe=$recipe" \
    --label "loadwave.rustc=$version" \
    -f "$ROOT/images/rust/Dockerfile" -t "$BASE_RUST_IMAGE" "$sysroot" >/dev/null
}

# --- localhost/loadwave-kafka:local ------------------------------------------------------
# The Debian image plus Java 17 and the broker jars scripts/kafka.sh caches from Maven
# Central, with an entry point that reads the apache/kafka image's KAFKA_* variables.
build_kafka() {
  local version libs ctx recipe
  version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/scripts/kafka/pom.xml")
  libs="$LW_CACHE/kafka-$version/libs"
  if [[ ! -f $libs/.complete ]]; then
    log "fetching the Kafka $version jars through scripts/kafka.sh (a throwaway broker on 19592)"
    KAFKA_PORT=19592 bash "$ROOT/scripts/kafka.sh" up
    KAFKA_PORT=19592 bash "$ROOT/scripts/kafka.sh" down
    rm -rf "$STATE_DIR/kafka-19592"
  fi
  recipe=$( { cat "$ROOT"/images/kafka/*; ls "$libs"; echo "$version"; _label "$BASE_DEBIAN_IMAGE" loadwave.recipe; } \
    | sha256sum | cut -c1-16)
  if _fresh "$BASE_KAFKA_IMAGE" "$recipe"; then return 0; fi
  log "building $BASE_KAFKA_IMAGE (Kafka $version, OpenJDK 17 from Debian)"
  ctx="$IMG_CACHE/kafka-context"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp -a "$ROOT"/images/kafka/. "$ctx/"
  cp -a "$libs" "$ctx/libs"
  rm -f "$ctx/libs/.complete"
  podman build -q --network host --format docker --pull=never \
    --build-arg "DEBIAN_IMAGE=$BASE_DEBIAN_IMAGE" --build-arg "KAFKA_VERSION=$version" \
    --label "loadwave.recipe=$recipe" -f "$ctx/Dockerfile" -t "$BASE_KAFKA_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
}

build_bases() {
  ensure_tools
  mkdir -p "$IMG_CACHE"
  _locked _build_bases
}
_build_bases() {
  build_debian
  build_rust
  build_kafka
}

# --- the project's images ---------------------------------------------------------------
# Built from the real Dockerfiles with the local bases substituted. The builder stage is the
# same in all three, so the dependencies compile once for the three images. Crates come from
# crates.io (host network) into a registry cache kept outside the layers.
PROJECT_IMAGES=(
  "driver:driver-image/Dockerfile"
  "target:target-image/Dockerfile"
  "orchestrator:crates/loadwave-orchestrator/Dockerfile"
)

build_project() {
  ensure_tools
  _locked _build_project
}
_build_project() {
  local entry name dockerfile registry="$IMG_CACHE/cargo-registry" mounts=()
  mkdir -p "$registry"
  mounts=(-v "$registry:/usr/local/cargo/registry")
  # Trust what this machine trusts: where an egress proxy re-signs TLS, cargo in the build
  # needs the machine's CA bundle to reach crates.io. Mounted for the build only, never
  # copied into an image.
  if [[ -f $HOST_CA_BUNDLE ]]; then
    mounts+=(-v "$HOST_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
  fi
  for entry in "${PROJECT_IMAGES[@]}"; do
    name=${entry%%:*}
    dockerfile=${entry#*:}
    log "building $(image_name "$name") from $dockerfile (profile $CARGO_PROFILE)"
    podman build --network host --format docker --layers --pull=never \
      --build-arg "RUST_IMAGE=$BASE_RUST_IMAGE" --build-arg "RUNTIME_IMAGE=$BASE_DEBIAN_IMAGE" \
      --build-arg "CARGO_PROFILE=$CARGO_PROFILE" \
      "${mounts[@]}" \
      -f "$ROOT/$dockerfile" -t "$(image_name "$name")" "$ROOT" >"$IMG_CACHE/build-$name.log" 2>&1 \
      || { tail -n 40 "$IMG_CACHE/build-$name.log" >&2; die "building $(image_name "$name") failed; see $IMG_CACHE/build-$name.log"; }
  done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  case "${1:-base}" in
    base) build_bases ;;
    all) build_bases && build_project ;;
    env) write_containers_conf && printf 'export CONTAINERS_CONF=%q\n' "$CONTAINERS_CONF" ;;
    *) die "usage: $0 base|all|env" ;;
  esac
fi
