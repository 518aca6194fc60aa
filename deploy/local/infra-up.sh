#!/usr/bin/env bash
# Makes sure the local infrastructure runs: PostgreSQL and Redis (started if installed but
# stopped) and the tansu Kafka-protocol broker (installed on first use, started on 127.0.0.1).
# Idempotent and quick when everything already runs.
#
#   ZENTRA_KAFKA_PORT  broker port (default 9092)
#   ZENTRA_PG_URL      admin URL of PostgreSQL (default postgres://postgres@127.0.0.1:5432/postgres)
#   ZENTRA_INFRA_BROKER  0: leave the broker alone (`just up` runs its own under its supervisor)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/local/env.sh
source "$here/env.sh"

kafka_port=${ZENTRA_KAFKA_PORT:-9092}
pg_url=${ZENTRA_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
run_dir="$ZENTRA_CACHE/run"
mkdir -p "$run_dir"

log() { printf 'infra: %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    port_open "$port" && return 0
    sleep 0.1
  done
  log "$what did not open port $port"; return 1
}

ensure_postgres() {
  if psql "$pg_url" -Atqc 'select 1' >/dev/null 2>&1; then return 0; fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql >/dev/null 2>&1; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 50); do
      psql "$pg_url" -Atqc 'select 1' >/dev/null 2>&1 && return 0
      sleep 0.2
    done
  fi
  log "PostgreSQL is not reachable at $pg_url: install it with 'apt-get install -y postgresql' (trust auth on 127.0.0.1)"
  return 1
}

ensure_redis() {
  if port_open 6379; then return 0; fi
  if command -v redis-server >/dev/null 2>&1; then
    log "starting Redis"
    mkdir -p "$run_dir/redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir "$run_dir/redis" --logfile "$run_dir/redis.log"
    wait_port 6379 Redis && return 0
  fi
  log "Redis is not reachable on 127.0.0.1:6379: install it with 'apt-get install -y redis-server'"
  return 1
}

ensure_broker() {
  if port_open "$kafka_port"; then return 0; fi
  "$here/install-tools.sh" tansu
  log "starting tansu on 127.0.0.1:$kafka_port (in-memory storage)"
  nohup "$ZENTRA_BIN/tansu" broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine "memory://tansu/" \
    >"$run_dir/tansu-$kafka_port.log" 2>&1 &
  echo $! >"$run_dir/tansu-$kafka_port.pid"
  wait_port "$kafka_port" tansu
}

# Creates each named database that does not exist yet.
ensure_databases() {
  for db in "$@"; do
    if [ "$(psql "$pg_url" -Atqc "select 1 from pg_database where datname = '$db'")" != 1 ]; then
      log "creating database $db"
      psql "$pg_url" -qc "create database \"$db\"" >/dev/null
    fi
  done
}

ensure_postgres
ensure_redis
if [ "${ZENTRA_INFRA_BROKER:-1}" != 0 ]; then ensure_broker; fi
ensure_databases "$@"
