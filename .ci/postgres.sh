#!/usr/bin/env bash
# A private PostgreSQL cluster for the queue's tests: initdb in a fresh temporary dir, a
# Unix socket inside it (no TCP: listen_addresses=''), run as an unprivileged user
# (initdb refuses root), with a superuser role the tests create their databases with.
#
#   eval "$(.ci/postgres.sh start)"   # exports CIS490_TEST_POSTGRES and CIS490_PG_DIR
#   .ci/postgres.sh stop "$CIS490_PG_DIR"
#
# With CIS490_PG_TLS_CERT and CIS490_PG_TLS_KEY (PEM files) and CIS490_PG_PORT, the cluster
# also listens on localhost:PORT, TLS only (pg_hba rejects plain TCP), and exports
# CIS490_TEST_POSTGRES_TLS (the TCP URL, without sslmode). CIS490_PG_TLS_CLIENT_CA (a PEM CA)
# turns on `cert` authentication: the client certificate's CN must be the role, cis490.
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
  local listen="-c listen_addresses=''" port="${CIS490_PG_PORT:-5432}"
  if [ -n "${CIS490_PG_TLS_CERT:-}" ]; then
    listen="$(tls_setup "$dir" "$port")"
  fi
  # Durable commits as in production (fsync, synchronous_commit stay on); enough
  # connections for parallel test threads, each with its own small pool.
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "$listen -c port=$port -c unix_socket_directories='$dir' -c max_connections=400 \
        -c shared_buffers=32MB" start >&2 || { cat "$dir/server.log" >&2; exit 1; }
  local url="postgresql://cis490@${dir//\//%2F}:$port/postgres"
  echo "export CIS490_TEST_POSTGRES='$url'"
  if [ -n "${CIS490_PG_TLS_CERT:-}" ]; then
    echo "export CIS490_TEST_POSTGRES_TLS='postgresql://cis490@localhost:$port/postgres'"
  fi
  echo "export CIS490_PG_DIR='$dir'"
}

# Copies the TLS files into the cluster's dir (PostgreSQL wants its key owned by itself,
# mode 0600), writes a pg_hba.conf that takes TCP over TLS only, and prints the options.
tls_setup() {
  local dir="$1" port="$2" auth=trust opts
  install -m 600 "${CIS490_PG_TLS_CERT}" "$dir/server.crt"
  install -m 600 "${CIS490_PG_TLS_KEY:?CIS490_PG_TLS_CERT needs CIS490_PG_TLS_KEY}" "$dir/server.key"
  opts="-c listen_addresses=localhost -c ssl=on -c ssl_cert_file='$dir/server.crt' -c ssl_key_file='$dir/server.key'"
  if [ -n "${CIS490_PG_TLS_CLIENT_CA:-}" ]; then
    install -m 600 "$CIS490_PG_TLS_CLIENT_CA" "$dir/client-ca.crt"
    opts="$opts -c ssl_ca_file='$dir/client-ca.crt'"
    auth=cert
  fi
  if [ "$(id -u)" = 0 ]; then
    chown "$PG_USER" "$dir"/server.crt "$dir"/server.key "$dir"/client-ca.crt 2>/dev/null || true
  fi
  cat >"$dir/data/pg_hba.conf" <<HBA
local     all all               trust
hostssl   all all 127.0.0.1/32  $auth
hostssl   all all ::1/128       $auth
hostnossl all all 0.0.0.0/0     reject
hostnossl all all ::/0          reject
HBA
  if [ "$(id -u)" = 0 ]; then
    chown "$PG_USER" "$dir/data/pg_hba.conf"
  fi
  echo "$opts"
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
