#!/usr/bin/env bash
# Samples every process on the machine with perf while the platform is under load and draws one
# flame graph: PostgreSQL, the broker and the services side by side, by process and function.
#
#   deploy/local/flamegraph.sh [seconds] [output.svg]      (defaults: 10, docs/bench/flamegraph.svg)
#
# Run it while `just bench` loads a `just up-bench` stack. Needs perf (Debian's linux-perf) and
# permission to sample system-wide (root, or kernel.perf_event_paranoid <= -1).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"
seconds=${1:-10}
output=${2:-docs/bench/flamegraph.svg}

command -v perf >/dev/null || { echo "flamegraph: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
"$here/install-tools.sh" inferno
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "flamegraph: sampling every CPU at 299 Hz for ${seconds}s" >&2
perf record -a -g -F 299 -o "$work/perf.data" -- sleep "$seconds" >/dev/null 2>&1
perf script -i "$work/perf.data" 2>/dev/null \
  | "$ZENTRA_BIN/inferno-collapse-perf" --all \
  | "$ZENTRA_BIN/inferno-flamegraph" --minwidth 0.5 --title "Zentra under load: every process, ${seconds}s" > "$output"
echo "flamegraph: $output" >&2
