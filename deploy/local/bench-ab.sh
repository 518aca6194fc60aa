#!/usr/bin/env bash
# One benchmark run of a given build on a stack of its own: fresh databases (a prefix of their
# own), a fresh broker (the stack's own; a broker left on the Kafka port is stopped first, since
# its old events would reach the new databases' consumers from offset 0), one `zentra-bench`
# run, then the stack stopped and its databases dropped. Alternate it between two builds to
# compare them in one sitting:
#
#   deploy/local/bench-ab.sh LABEL BINDIR [zentra-bench args...]
#   deploy/local/bench-ab.sh before-1 /tmp/bin-before --rate 30 --count 1800 --no-idle --no-pgbench
#
# BINDIR holds a release build's binaries (copy them out of target/release after each build, and
# compare checksums: two checkouts sharing one CARGO_TARGET_DIR can leave the second build
# untouched). Output: $ZENTRA_CACHE/bench/LABEL/{stack.log,bench.txt,report.json,statements.tsv}.
#
# A PostgreSQL with autovacuum off (some CI machines set it so) gets it switched on for the run
# (ALTER SYSTEM, reset afterwards): without it every saga transition leaves a dead row that
# nothing removes, and a run of minutes measures the pile-up, not the platform
# (docs/BENCHMARKS.md, session 20). ZENTRA_BENCH_KEEP_AUTOVACUUM=1 leaves the server as it is;
# the report records the setting either way (postgres_settings).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"

[ $# -ge 2 ] || { sed -n '2,13p' "$0" >&2; exit 2; }
label=$1 bin=$2
shift 2
[ -x "$bin/zentra-stack" ] && [ -x "$bin/zentra-bench" ] || { echo "bench-ab: no zentra-stack and zentra-bench in $bin" >&2; exit 2; }
out="$ZENTRA_CACHE/bench/$label"
rm -rf "$out"
mkdir -p "$out"
prefix="ab_$(printf '%s' "$label" | tr -c 'a-z0-9' '_')_"
pg_url=${ZENTRA_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
services="inventory order payment fulfillment notification saga"
drop() {
  for service in $services; do
    psql "$pg_url" -qc "DROP DATABASE IF EXISTS ${prefix}$service WITH (FORCE)" 2>/dev/null || true
  done
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

autovacuum_switched=0
if [ "${ZENTRA_BENCH_KEEP_AUTOVACUUM:-0}" != 1 ] \
  && [ "$(psql "$pg_url" -qAtc 'SHOW autovacuum')" = off ]; then
  echo "bench-ab: switching autovacuum on for this run (ALTER SYSTEM; reset when it ends)" >&2
  psql "$pg_url" -qc "ALTER SYSTEM SET autovacuum = on" -c "SELECT pg_reload_conf()" >/dev/null
  autovacuum_switched=1
fi
restore_autovacuum() {
  if [ "$autovacuum_switched" = 1 ]; then
    psql "$pg_url" -qc "ALTER SYSTEM RESET autovacuum" -c "SELECT pg_reload_conf()" >/dev/null || true
    autovacuum_switched=0
  fi
}
trap restore_autovacuum EXIT

drop
"$here/infra-down.sh" >/dev/null 2>&1 || true
# A stack stopped just before may still be letting go of its ports.
for _ in $(seq 60); do
  port_busy "${ZENTRA_STACK_GATEWAY_PORT:-8080}" || port_busy "${ZENTRA_STACK_KAFKA_PORT:-9092}" || break
  sleep 1
done
# shellcheck disable=SC2046
ZENTRA_INFRA_BROKER=0 "$here/infra-up.sh" $(for service in $services; do printf '%s ' "$prefix$service"; done) 2>>"$out/stack.log"

mkdir -p "$out/ui"
ZENTRA_STACK_DB_PREFIX=$prefix ZENTRA_FULFILLMENT__STEP_DELAY=0s ZENTRA_STACK_MAIL_LOG=0 \
  ZENTRA_STACK_STATIC_DIR="$out/ui" setsid "$bin/zentra-stack" >>"$out/stack.log" 2>&1 &
stack=$!
# Every statement the run's databases executed, most frequent first (when pg_stat_statements is
# loaded): where a saga's statements go.
statements() {
  psql "$pg_url" -qAt -F $'\t' -c "SELECT d.datname, s.calls, round(s.total_exec_time::numeric, 1), \
      left(regexp_replace(s.query, '\s+', ' ', 'g'), 300) \
    FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
    WHERE d.datname LIKE '${prefix}%' ORDER BY s.calls DESC" >"$out/statements.tsv" 2>/dev/null || true
}
stop() {
  kill -INT "$stack" 2>/dev/null || true
  wait "$stack" 2>/dev/null || true
  statements
  drop
  restore_autovacuum
}
trap stop EXIT
for _ in $(seq 300); do
  grep -q "Zentra is up" "$out/stack.log" && break
  kill -0 "$stack" 2>/dev/null || { echo "bench-ab: the stack stopped; see $out/stack.log" >&2; exit 1; }
  sleep 1
done
grep -q "Zentra is up" "$out/stack.log" || { echo "bench-ab: the stack did not come up; see $out/stack.log" >&2; exit 1; }
echo "bench-ab: $label: $bin on databases $prefix*" >&2
"$bin/zentra-bench" --db-prefix "$prefix" --json "$out/report.json" "$@" | tee "$out/bench.txt"
