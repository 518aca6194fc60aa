# Zentra's one entry point. `just` lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

export PATH := env_var("HOME") + "/.cache/zentra/bin:" + env_var("PATH")

# List the recipes
default:
    @just --list

# Install the project's tools (tansu, grpcurl, buf, aiosmtpd, just) into ~/.cache/zentra
tools:
    deploy/local/install-tools.sh

# Start PostgreSQL, Redis and the tansu broker if they are not running
infra:
    deploy/local/infra-up.sh zentra_inventory zentra_order zentra_payment zentra_fulfillment zentra_notification zentra_saga

# Stop the broker started by `just infra`
infra-down:
    deploy/local/infra-down.sh

# Build and run the whole platform: broker, mail sink, every service and the gateway on :8080 (Ctrl-C stops it)
up *args:
    deploy/local/install-tools.sh tansu
    # Prometheus too, when asked for (Debian's package, unpacked into the tools directory).
    if [[ " $* " == *" --prometheus "* ]]; then deploy/local/install-tools.sh prometheus; fi
    # The control center too, when it was never built (ZENTRA_UP_UI=0 skips it; a build made while the stack runs is served at once).
    if [ "${ZENTRA_UP_UI:-1}" != 0 ] && [ -z "${ZENTRA_STACK_STATIC_DIR:-}" ] && [ ! -f control-center/dist/index.html ]; then just control-center; fi
    ZENTRA_INFRA_BROKER=0 deploy/local/infra-up.sh $(for service in inventory order payment fulfillment notification saga; do printf '%s ' "${ZENTRA_STACK_DB_PREFIX:-zentra_}$service"; done)
    cargo build --profile ${ZENTRA_UP_PROFILE:-dev} --workspace --exclude zentra-control-center --bins
    ZENTRA_STACK_STATIC_DIR=${ZENTRA_STACK_STATIC_DIR:-$PWD/control-center/dist} cargo run -q --profile ${ZENTRA_UP_PROFILE:-dev} -p zentra-stack -- "$@"

# The stack as `just bench` measures it: release builds, shipments dispatched without simulated delays, mail taken and not printed
up-bench *args:
    ZENTRA_UP_PROFILE=release ZENTRA_FULFILLMENT__STEP_DELAY=0s ZENTRA_STACK_MAIL_LOG=0 just up "$@"

# Measure a running stack (`just up-bench` in another terminal): throughput, latency, cost per saga, commit bound, memory; `--sweep` finds the peak rate
bench *args:
    cargo build --release --workspace --exclude zentra-control-center --bins
    ${CARGO_TARGET_DIR:-target}/release/zentra-bench --json docs/bench/latest.json "$@"

# Chaos audit of a running stack (`just up` in another terminal): orders under SIGKILL of every process and the broker and a freeze, then an audit of every database; non-zero exit on any violation
chaos *args:
    cargo build -q --profile ${ZENTRA_UP_PROFILE:-dev} -p zentra-bench --bin zentra-chaos
    profile=${ZENTRA_UP_PROFILE:-dev}; ${CARGO_TARGET_DIR:-target}/${profile/#dev/debug}/zentra-chaos "$@"

# One bench run of the release binaries in BINDIR on a fresh stack of their own (fresh databases and broker); alternate two builds to compare them in one sitting
bench-ab label bindir *args:
    deploy/local/bench-ab.sh "$@"

# Flame graph of every process (PostgreSQL, broker, services) for N seconds, while `just bench` runs: docs/bench/flamegraph.svg
flamegraph seconds="10" output="docs/bench/flamegraph.svg":
    deploy/local/flamegraph.sh {{seconds}} {{output}}

# Build the control center (release wasm, optimised) into control-center/dist; `just up` serves it
control-center:
    deploy/local/install-tools.sh wasm
    deploy/local/build-control-center.sh

# `just up` end to end: an order placed through the gateway over grpc-web completes its saga, then the control center's browser tests
smoke:
    deploy/local/smoke.sh

# Retake the control center's screenshots in docs/screenshots (they are committed)
screenshots: control-center
    mkdir -p docs/screenshots
    ZENTRA_E2E_SCREENSHOTS=$PWD/docs/screenshots deploy/local/smoke.sh

# Run one service (inventory, order, payment, fulfillment, notification, saga, gateway) on a port against the local infrastructure
run service port: infra
    ZENTRA_DATABASE__URL=${ZENTRA_DATABASE__URL:-postgres://postgres@127.0.0.1:5432/zentra_{{service}}} \
    ZENTRA_GRPC__LISTEN_ADDR=${ZENTRA_GRPC__LISTEN_ADDR:-127.0.0.1:{{port}}} \
    cargo run -p zentra-{{service}}

# Formatting, clippy (warnings are errors), buf lint, cargo deny (licences, bans, sources, advisories), Prometheus's configuration and alert rules (promtool check and test)
lint:
    deploy/local/install-tools.sh wasm_target deny prometheus
    cargo fmt --all -- --check
    cargo clippy --workspace --exclude zentra-control-center --all-targets -- -D warnings
    cargo clippy -p zentra-control-center --target wasm32-unknown-unknown -- -D warnings
    cd proto && buf lint
    deploy/local/buf-breaking.sh
    deploy/local/deny.sh
    promtool check config --syntax-only deploy/observability/prometheus.yml
    promtool check rules deploy/observability/rules.yml
    cd deploy/observability && promtool test rules rules.test.yml

# Format Rust and proto sources
fmt:
    cargo fmt --all
    cd proto && buf format -w

# Everything CI checks: lint, the whole test suite against real PostgreSQL, Kafka and Redis, then the `just up` smoke test
test *args: tools infra lint
    cargo nextest run --workspace --exclude zentra-control-center --profile ${NEXTEST_PROFILE:-default} "$@"
    just control-center
    deploy/local/smoke.sh
