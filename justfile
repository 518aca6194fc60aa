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

# Run the inventory service on :50051 against the local infrastructure
up: (run "inventory" "50051")

# Run one service (inventory, order, payment, fulfillment, notification, saga) on a port against the local infrastructure
run service port: infra
    ZENTRA_DATABASE__URL=${ZENTRA_DATABASE__URL:-postgres://postgres@127.0.0.1:5432/zentra_{{service}}} \
    ZENTRA_GRPC__LISTEN_ADDR=${ZENTRA_GRPC__LISTEN_ADDR:-127.0.0.1:{{port}}} \
    cargo run -p zentra-{{service}}

# Formatting, clippy (warnings are errors) and buf lint
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cd proto && buf lint

# Format Rust and proto sources
fmt:
    cargo fmt --all
    cd proto && buf format -w

# Everything CI checks: lint, then the whole test suite against real PostgreSQL and Kafka
test *args: tools infra lint
    cargo nextest run --workspace --profile ${NEXTEST_PROFILE:-default} "$@"
