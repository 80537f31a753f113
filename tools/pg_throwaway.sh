#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and benchmarks: initdb into a fresh temporary
# directory, start on a free local TCP port (and a Unix socket in that directory), print
# the DSN. Nothing outside the directory is touched; `stop DIR` kills it and deletes it.
#
#   dir=$(mktemp -d) && dsn=$(tools/pg_throwaway.sh start "$dir") && echo "$dsn"
#   tools/pg_throwaway.sh stop "$dir"
#   tools/pg_throwaway.sh restart "$dir" fast|immediate   # a real restart, same port
#
# initdb and postgres refuse to run as root, so as root the server runs as the user in
# $OSUPGRADE_PG_USER (default: postgres), which gets ownership of the directory.
# Binaries come from $PG_BIN, else PATH, else the newest /usr/lib/postgresql/*/bin.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR | stop DIR | restart DIR fast|immediate" >&2
  exit 2
}

find_bin() {
  if [ -n "${PG_BIN:-}" ]; then
    echo "$PG_BIN"
  elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
  else
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$newest" ]; then
      echo "pg_throwaway: no initdb/pg_ctl found (set PG_BIN)" >&2
      exit 1
    fi
    echo "$newest"
  fi
}

# Run a command as the server's user: ourselves, or $OSUPGRADE_PG_USER when we are root.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u "${OSUPGRADE_PG_USER:-postgres}" -- "$@"
  else
    "$@"
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start() {
  local dir=$1 bin port
  bin=$(find_bin)
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then
    chown "${OSUPGRADE_PG_USER:-postgres}" "$dir"
  fi
  as_owner "$bin/initdb" --pgdata="$dir/data" --username=postgres --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
  }
  port=$(free_port)
  # fsync stays on: the numbers we measure are those of a durable server.
  as_owner "$bin/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --wait --timeout=60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
        -c max_connections=300 -c shared_buffers=128MB" \
    start >/dev/null || {
    cat "$dir/server.log" >&2
    exit 1
  }
  echo "$port" >"$dir/port"
  echo "postgresql://postgres@127.0.0.1:$port/postgres"
}

stop() {
  local dir=$1 bin
  bin=$(find_bin)
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" --pgdata="$dir/data" --mode=immediate --wait stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
}

# A real restart of the running server (fault tests): `fast` ends every session
# cleanly, `immediate` kills the server as a crash would (recovery from WAL on start).
# pg_ctl reuses the options of the last start, so the port and socket stay the same.
restart() {
  local dir=$1 mode=$2 bin
  case $mode in fast | immediate) ;; *) usage ;; esac
  bin=$(find_bin)
  as_owner "$bin/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --mode="$mode" \
    --wait --timeout=60 restart >/dev/null || {
    cat "$dir/server.log" >&2
    exit 1
  }
}

case ${1:-} in
  start) [ $# -eq 2 ] || usage; start "$2" ;;
  stop) [ $# -eq 2 ] || usage; stop "$2" ;;
  restart) [ $# -eq 3 ] || usage; restart "$2" "$3" ;;
  *) usage ;;
esac
