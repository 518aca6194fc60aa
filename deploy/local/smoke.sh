#!/usr/bin/env bash
# `just up` end to end, as CI runs it: starts the whole platform on spare ports with its own
# databases, topics, keys and broker, places an order through the gateway over grpc-web (with
# buf curl, a client nobody here wrote), waits for its saga to complete and the order to be
# CONFIRMED, installs the Python client (clients/python) into a fresh virtual environment and runs
# its example for an approved and a declined order, builds and tests the TypeScript client
# (clients/typescript: the same two orders over gRPC and over grpc-web), runs the control
# center's end-to-end tests in headless Chromium when the control center is built
# (`just control-center`), then stops the stack as Ctrl-C would and checks it stopped cleanly. A
# short benchmark run proves `zentra-bench` works against the same stack, and a small chaos audit
# (`just chaos`) kills every process once and audits the databases.
#
#   ZENTRA_SMOKE_PORT_BASE  first of the ports it uses (default 46000; it takes base+25 .. base+92)
#   ZENTRA_SMOKE_BROWSER    0: skip the browser tests
#   ZENTRA_SMOKE_BENCH      0: skip the benchmark's smoke run
#   ZENTRA_SMOKE_CHAOS      0: skip the chaos audit's smoke run
#   ZENTRA_SMOKE_CLIENTS    0: skip the generated clients' examples
#   ZENTRA_E2E_SCREENSHOTS  a directory: the browser tests save their screenshots there
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=deploy/local/env.sh
source deploy/local/env.sh

base=${ZENTRA_SMOKE_PORT_BASE:-46000}
suffix=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
export ZENTRA_STACK_DB_PREFIX="zentra_smoke_${suffix}_"
export ZENTRA_STACK_TOPIC_PREFIX="smoke-${suffix}."
export ZENTRA_STACK_BASE_PORT=$((base + 50))
export ZENTRA_STACK_GATEWAY_PORT=$((base + 80))
export ZENTRA_STACK_KAFKA_PORT=$((base + 92))
export ZENTRA_STACK_SMTP_PORT=$((base + 25))
# Prometheus beside the stack, as `just up --prometheus` runs it: the control center's charts
# read their history from it (a short interval, so it has some within the run).
export ZENTRA_STACK_PROMETHEUS_PORT=$((base + 90))
export ZENTRA_STACK_PROMETHEUS_INTERVAL=2s
pg_url=${ZENTRA_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
# A short shipment timeout, so the chaos audit's freeze can outlast it in seconds, not minutes.
shipment_timeout_s=15
export ZENTRA_SAGA__RETRY__SHIPMENT_TIMEOUT="${shipment_timeout_s}s"
state=$(mktemp -d)
log="$state/up.log"
gateway="http://127.0.0.1:$ZENTRA_STACK_GATEWAY_PORT"

say() { printf 'smoke: %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; say "last lines of the stack:"; tail -n 60 "$log" >&2 || true; exit 1; }

stack_pid() { pgrep -f "zentra-stack --state-dir $state" | head -n1; }
cleanup() {
  local pid; pid=$(stack_pid || true)
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  wait "$up" 2>/dev/null || true
  for service in inventory order payment fulfillment notification saga; do
    psql "$pg_url" -qc "drop database if exists \"${ZENTRA_STACK_DB_PREFIX}${service}\" with (force)" >/dev/null 2>&1 || true
  done
  rm -rf "$state"
}

say "starting the platform with just up (state in $state)"
just up --state-dir "$state" --prometheus >"$log" 2>&1 &
up=$!
trap cleanup EXIT

# The first run builds everything: allow for it.
for _ in $(seq 1 1800); do
  grep -q "Zentra is up" "$log" && break
  kill -0 "$up" 2>/dev/null || fail "just up exited before the platform was ready"
  sleep 0.5
done
grep -q "Zentra is up" "$log" || fail "the platform was not ready within 15 minutes"
say "ready"

# shellcheck disable=SC1091
source "$state/dev-keys.env"
# Sourced, the file exports the keys: the programs started below (buf, node) see them.
env | grep -q '^ZENTRA_OPERATOR_KEY=zk_' || fail "dev-keys.env does not export its keys"
call() { # call KEY METHOD JSON
  # The schema from the gateway's reflection, as the README's example has it (any directory).
  buf curl --protocol grpcweb --http2-prior-knowledge -H "x-api-key: $1" -d "$3" "$gateway/$2"
}
json() { python3 -c "import json,sys; data=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': data}))" "$1"; }

call "$ZENTRA_OPERATOR_KEY" zentra.inventory.v1.InventoryService/CreateProduct \
  '{"sku":"SMOKE-1","name":"Smoke mug","initial_stock":5,"unit_price":{"currency_code":"USD","amount_minor":1299},"idempotency_key":"smoke-product"}' >/dev/null \
  || fail "CreateProduct through the gateway"
order_id=$(call "$ZENTRA_OPERATOR_KEY" zentra.order.v1.OrderService/PlaceOrder \
  '{"customer_id":"smoke-customer","customer_email":"smoke@customers.zentra.test","shipping_address":{"recipient":"Ada","lines":["1 Main St"],"city":"Springfield","postal_code":"12345","country_code":"US"},"lines":[{"sku":"SMOKE-1","quantity":2,"unit_price":{"currency_code":"USD","amount_minor":1299}}],"currency_code":"USD","payment_method_token":"tok_approve","idempotency_key":"smoke-order"}' \
  | json 'd["order"]["orderId"]') || fail "PlaceOrder through the gateway"
say "order $order_id placed; waiting for its saga"

state_of_saga=""
for _ in $(seq 1 240); do
  state_of_saga=$(call "$ZENTRA_VIEWER_KEY" zentra.saga.v1.SagaService/ListSagas "{\"order_id\":\"$order_id\"}" \
    | json 'd.get("sagas", [{}])[0].get("state", "")' 2>/dev/null || true)
  case "$state_of_saga" in
    SAGA_STATE_COMPLETED) break ;;
    SAGA_STATE_COMPENSATED|SAGA_STATE_COMPENSATION_FAILED|SAGA_STATE_FAILED) fail "saga ended $state_of_saga" ;;
  esac
  sleep 0.5
done
[ "$state_of_saga" = SAGA_STATE_COMPLETED ] || fail "saga not completed within 2 minutes (last: ${state_of_saga:-none})"
status=$(call "$ZENTRA_VIEWER_KEY" zentra.order.v1.OrderService/GetOrder "{\"order_id\":\"$order_id\"}" | json 'd["order"]["status"]')
[ "$status" = ORDER_STATUS_CONFIRMED ] || fail "order is $status, not ORDER_STATUS_CONFIRMED"
say "saga completed, order confirmed"

if [ "${ZENTRA_SMOKE_CLIENTS:-1}" != 0 ]; then
  # The Python client as a user installs it: a fresh virtual environment, the package built from
  # a clean generation of the contracts, its example run over gRPC: an approved order and a
  # declined one, each followed to its end.
  say "python client: pip install clients/python in a fresh virtual environment"
  python3 -m venv "$state/py"
  "$state/py/bin/pip" install --quiet --disable-pip-version-check clients/python >"$state/pip.log" 2>&1 \
    || { cat "$state/pip.log" >&2; fail "pip install clients/python"; }
  for example in approve decline; do
    flags=(); [ "$example" = decline ] && flags=(--decline)
    (cd "$state" && ZENTRA_GATEWAY="127.0.0.1:$ZENTRA_STACK_GATEWAY_PORT" \
      "$state/py/bin/python" -m zentra_client.examples.order_and_follow "${flags[@]}") >"$state/py-$example.log" 2>&1 \
      || { cat "$state/py-$example.log" >&2; fail "the python example ($example)"; }
    say "python example ($example): $(tail -n1 "$state/py-$example.log")"
  done
  # The TypeScript client as its README says: npm ci && npm test (a clean generation, the build,
  # then the example: both orders over gRPC and over grpc-web).
  say "typescript client: npm ci && npm test in clients/typescript"
  (cd clients/typescript && npm ci --silent --no-audit --no-fund \
    && ZENTRA_GATEWAY="$gateway" npm test) >"$state/ts.log" 2>&1 \
    || { cat "$state/ts.log" >&2; fail "the typescript client's tests"; }
  grep -E '^# (tests|pass|fail)' "$state/ts.log" >&2 || true
fi

if [ "${ZENTRA_SMOKE_BROWSER:-1}" != 0 ]; then
  [ -f control-center/dist/index.html ] || fail "the control center is not built: run just control-center (or set ZENTRA_SMOKE_BROWSER=0)"
  say "control center in headless Chromium"
  # A message the inventory's command consumer cannot read: the DLQ page has a record to show.
  echo '{"value": {"poison": "from the smoke test"}}' \
    | tansu cat produce --broker "tcp://127.0.0.1:$ZENTRA_STACK_KAFKA_PORT" "${ZENTRA_STACK_TOPIC_PREFIX}inventory.commands" >/dev/null \
    || fail "producing a poison message"
  (cd control-center/e2e && npm ci --silent --no-audit --no-fund)
  ZENTRA_E2E_URL="$gateway" ZENTRA_E2E_PROMETHEUS=1 node --test --test-concurrency=1 control-center/e2e/ >"$state/e2e.log" 2>&1 \
    || { cat "$state/e2e.log" >&2; fail "browser tests"; }
  grep -E '^# (tests|pass|fail)' "$state/e2e.log" >&2 || true
fi

if [ "${ZENTRA_SMOKE_BENCH:-1}" != 0 ]; then
  # The benchmark proves it works: a few orders, a short pgbench; its numbers mean nothing here.
  say "benchmark smoke run"
  "${CARGO_TARGET_DIR:-target}/debug/zentra-bench" --base-port "$ZENTRA_STACK_BASE_PORT" --db-prefix "$ZENTRA_STACK_DB_PREFIX" --state-dir "$state" \
    --rate 10 --count 20 --declined 10 --pgbench-duration 2s --json "$state/bench.json" >"$state/bench.log" 2>&1 \
    || { cat "$state/bench.log" >&2; fail "the benchmark"; }
  python3 - "$state/bench.json" <<'PY' || { cat "$state/bench.log" >&2; fail "the benchmark's report"; }
import json, sys
report = json.load(open(sys.argv[1]))
run = report["runs"][0]
assert run["sent"] == 20 and run["completed"] == 18 and run["compensated"] == 2, run
assert run["end_to_end_ms"]["count"] == 20 and run["end_to_end_ms"]["p99"] > 0, run
assert run["cost_per_saga"]["commits"] > 0 and run["cost_per_saga"]["kafka_records"] > 0, run
assert report["pgbench_tps"] > 0 and report["commit_bound_fraction"] > 0, report
assert len(report["peak_rss_kib"]) == 6, report
PY
  say "benchmark: $(grep -m1 'sagas/s' "$state/bench.log" | sed 's/^ *//')"
fi

if [ "${ZENTRA_SMOKE_CHAOS:-1}" != 0 ]; then
  # The chaos audit, small: every service, the orchestrator and the broker killed once with
  # SIGKILL, fulfillment frozen past the shipment timeout, then every database audited.
  say "chaos audit (60 orders, every process killed once, one freeze)"
  "${CARGO_TARGET_DIR:-target}/debug/zentra-chaos" --count 60 --rate 5 --freeze "fulfillment:$((shipment_timeout_s + 10))s" \
    --settle 240 --pg-url "$pg_url" --state-dir "$state" >"$state/chaos.log" 2>&1 \
    || { cat "$state/chaos.log" >&2; fail "the chaos audit"; }
  grep -E '^(inventory|order|payment|fulfillment|notification|saga|broker) |every saga ended|chaos audit' "$state/chaos.log" >&2 || true
fi

# Ctrl-C reaches the stack (children have their own process group): everything stops in order.
kill -INT "$(stack_pid)"
if ! wait "$up"; then fail "just up did not exit cleanly"; fi
grep -q "| stopped$" "$log" || fail "the stack did not report a clean stop"
say "stopped cleanly: passed"
