#!/usr/bin/env bash
# A private PostgreSQL cluster for the queue's tests: initdb in a fresh temporary dir, a
# Unix socket inside it (no TCP: listen_addresses=''), run as an unprivileged user
# (initdb refuses root), with a superuser role the tests create their databases with.
#
#   eval "$(.ci/postgres.sh start)"   # exports CIS490_TEST_POSTGRES and CIS490_PG_DIR
#   .ci/postgres.sh stop "$CIS490_PG_DIR"
#
# Installs Debian's postgresql when no server binaries are found (CI only needs this).
set -euo pipefail

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# Runs "$@" as the cluster's owner: root drops to $PG_USER, anyone else runs it as self.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u "$PG_USER" -- "$@"
  else
    "$@"
  fi
}

PG_USER="${CIS490_PG_USER:-cis490pg}"

start() {
  local bin
  if ! bin="$(find_bin)"; then
    echo "postgres.sh: installing postgresql" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    bin="$(find_bin)"
  fi
  if [ "$(id -u)" = 0 ] && ! id "$PG_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
  fi
  local dir
  dir="$(mktemp -d /tmp/cis490-pg.XXXXXX)"
  if [ "$(id -u)" = 0 ]; then
    chown "$PG_USER" "$dir"
  fi
  chmod 700 "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -U cis490 --auth=trust --encoding=UTF8 \
    --locale=C >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  # Durable commits as in production (fsync, synchronous_commit stay on); enough
  # connections for parallel test threads, each with its own small pool.
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses='' -c unix_socket_directories='$dir' -c max_connections=400 \
        -c shared_buffers=32MB" start >&2 || { cat "$dir/server.log" >&2; exit 1; }
  local url="postgresql://cis490@${dir//\//%2F}/postgres"
  echo "export CIS490_TEST_POSTGRES='$url'"
  echo "export CIS490_PG_DIR='$dir'"
}

stop() {
  local dir="${1:?usage: postgres.sh stop DIR}" bin
  bin="$(find_bin)"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
  fi
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-${CIS490_PG_DIR:-}}" ;;
  *) echo "usage: $0 start | stop DIR" >&2; exit 2 ;;
esac
