#!/bin/sh
# A throwaway PostgreSQL cluster for tests/test_tune_distributed.py (Debian's `postgresql` package).
#   eval "$(tests/pg.sh start /tmp/cryptoml-pg)"   # starts it, prints: export CRYPTOML_TEST_PG=postgresql://...
#   tests/pg.sh stop /tmp/cryptoml-pg              # stops it and removes the folder
# PG_MAX_CONNECTIONS sets the server's max_connections (default 50).
# Run as root (the server runs as the `postgres` user) or as any non-root user that can write DIR.
set -eu
cmd=${1:?usage: pg.sh start|stop DIR}; dir=${2:?usage: pg.sh start|stop DIR}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
  # a free port, asked of the kernel; another process may take it before the server binds it, so try a few
  for attempt in 1 2 3 4 5; do
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=${PG_MAX_CONNECTIONS:-50}" start >/dev/null \
      && break
    [ "$attempt" = 5 ] && { tail -n 5 "$dir/server.log" >&2; exit 1; }
  done
  as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres optuna
  echo "export CRYPTOML_TEST_PG=postgresql://postgres@127.0.0.1:$port/optuna" ;;
stop)
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null
  rm -rf "$dir" ;;
*) echo "usage: pg.sh start|stop DIR" >&2; exit 2 ;;
esac
