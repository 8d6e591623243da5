#!/usr/bin/env bash
# The README's test command: makes sure everything the tests need is here and running (PostgreSQL,
# RabbitMQ with rabbitmq_prometheus, promtool, docker compose for `config`, curl, PgBouncer,
# Chromium and chromedriver),
# installing from Debian's packages what is missing, then runs the whole suite. Extra arguments go
# to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

wait_for() {
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "$what did not come up within 60 s" >&2
  return 1
}

ensure_postgres() {
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq postgresql
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
  fi
  wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
  wait_for "PostgreSQL login" psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1'
}

ensure_rabbitmq() {
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing RabbitMQ"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq rabbitmq-server
  fi
  if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    log "starting RabbitMQ"
    rabbitmq-server -detached || true
  fi
  wait_for RabbitMQ rabbitmq-diagnostics -q check_port_connectivity
  # Queue depth for the dashboard comes from rabbitmq_prometheus; the tests check its series.
  rabbitmq-plugins enable --quiet rabbitmq_prometheus >/dev/null
  wait_for "rabbitmq_prometheus" curl -fsS -o /dev/null http://127.0.0.1:15692/metrics
}

ensure_tools() {
  local missing=()
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)   # promtool and the server
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # Tests start their own PgBouncer (as the postgres user); the package's service stays stopped.
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq --no-install-recommends "${missing[@]}"
  fi
  # The console's browser tests drive Debian's Chromium through chromedriver; installed with its
  # recommended fonts, so screenshots show text.
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    log "installing chromium and chromium-driver"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq chromium chromium-driver
  fi
}

ensure_tools
ensure_postgres
ensure_rabbitmq

log "cargo test --workspace"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$test_log"
# cargo prints one "test result" line per test binary, the last often a doc-test run of zero;
# add them up so the run ends on the real totals.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$test_log"
