#!/usr/bin/env bash
# Stops the broker that infra-up.sh started (PostgreSQL and Redis are left running).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/env.sh"
for pidfile in "$ZENTRA_CACHE"/run/tansu-*.pid; do
  [ -f "$pidfile" ] || continue
  kill "$(cat "$pidfile")" 2>/dev/null || true
  rm -f "$pidfile"
done
