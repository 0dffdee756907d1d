#!/usr/bin/env bash
# A throwaway PostgreSQL server for the storage tests (tests/search/test_search_postgres.py).
#
#   .ci/postgres.sh install      install the server (Debian's `postgresql` package) if it is missing
#   .ci/postgres.sh start        start a fresh cluster in a new temporary folder on a free loopback port and
#                                print HGC_TUNE_TEST_POSTGRES_URL=… and HGC_TUNE_TEST_POSTGRES_DIR=… lines
#   .ci/postgres.sh stop DIR     stop that cluster and delete its folder
#
# initdb refuses to run as root: as root the cluster belongs to the `postgres` user the package creates.
# Every failure exits non-zero with one line on stderr; the tests then skip with that reason.
set -euo pipefail

fail() {
  echo "postgres.sh: $*" >&2
  exit 1
}

bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] || return 1
  echo "$dir"
}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

install() {
  bindir >/dev/null && return 0
  [ "$(id -u)" -eq 0 ] || fail "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
  command -v apt-get >/dev/null || fail "PostgreSQL is not installed and there is no apt-get to install it"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1 || fail "apt-get update failed"
  apt-get install -y -qq postgresql >/dev/null 2>&1 || fail "apt-get install postgresql failed"
  bindir >/dev/null || fail "postgresql was installed, but no initdb was found under /usr/lib/postgresql"
}

start() {
  local bin dir port password
  bin=$(bindir) || fail "PostgreSQL is not installed: run .ci/postgres.sh install"
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || fail "running as root, but there is no postgres user to own the cluster"
  fi
  dir=$(mktemp -d /tmp/hgc-tune-postgres.XXXXXX)
  chmod 755 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
  password=hgc-test-secret
  echo "$password" >"$dir/pwfile"
  [ "$(id -u)" -eq 0 ] && chown postgres "$dir/pwfile"
  as_owner "$bin/initdb" -D "$dir/data" -U hgc --pwfile="$dir/pwfile" --auth=scram-sha-256 \
    --encoding=UTF8 --no-instructions >"$dir/initdb.log" 2>&1 || fail "initdb failed: see $dir/initdb.log"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=50 -c fsync=off" start \
    >/dev/null 2>&1 || fail "the server did not start: see $dir/server.log"
  echo "HGC_TUNE_TEST_POSTGRES_URL=postgresql+psycopg2://hgc:$password@127.0.0.1:$port/postgres"
  echo "HGC_TUNE_TEST_POSTGRES_DIR=$dir"
}

stop() {
  local bin dir=${1:-}
  [ -n "$dir" ] && [ -d "$dir/data" ] || fail "stop needs the folder that start printed"
  bin=$(bindir) || fail "PostgreSQL is not installed"
  as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop "${2:-}" ;;
  *) fail "usage: $0 install | start | stop DIR" ;;
esac
