#!/usr/bin/env bash
# Installs the command-line tools the project needs, into a cache directory outside the clone so
# repeated runs are fast. Idempotent: a tool already at the pinned version is left alone.
#
#   ZENTRA_CACHE  where tools live (default: ~/.cache/zentra)
#
# Usage: deploy/local/install-tools.sh [tansu] [just] [buf] [grpcurl]   (no args: all)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"

TANSU_VERSION=0.6.0
JUST_VERSION=1.43.0
BUF_VERSION=1.61.0
GRPCURL_WRAPPER_VERSION=1.8.6

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

main() {
  mkdir -p "$ZENTRA_BIN"
  local wanted=("$@")
  [ ${#wanted[@]} -gt 0 ] || wanted=(tansu)
  for tool in "${wanted[@]}"; do
    "install_$tool"
  done
}

main "$@"
