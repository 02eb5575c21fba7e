#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the store tests, in a temporary folder, as the postgres user
# (PostgreSQL refuses to run as root). Prints the DSN to use.
#   eval "$(bash scripts/postgres.sh start)"   # sets POW_TEST_POSTGRES and POW_TEST_PGDATA
#   bash scripts/postgres.sh stop "$POW_TEST_PGDATA"
set -euo pipefail
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
case "${1:-}" in
  start)
    if [ -z "$BIN" ]; then echo "echo 'note: PostgreSQL is not installed; its store tests will skip' >&2"; exit 0; fi
    PORT=${PGPORT_TEST:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    DIR=$(mktemp -d /tmp/pow-pg.XXXXXX)
    RUN_AS=()
    if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; RUN_AS=(runuser -u postgres --); fi
    "${RUN_AS[@]}" "$BIN/initdb" -D "$DIR/data" -A trust -U postgres >"$DIR/initdb.log" 2>&1
    "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=on -c max_connections=200" start >/dev/null
    echo "export POW_TEST_POSTGRES=postgresql://postgres@127.0.0.1:$PORT/postgres POW_TEST_PGDATA=$DIR"
    ;;
  stop)
    DIR=${2:?usage: postgres.sh stop DIR}
    RUN_AS=()
    if [ "$(id -u)" = 0 ]; then RUN_AS=(runuser -u postgres --); fi
    "${RUN_AS[@]}" "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
    ;;
  *) echo "usage: postgres.sh start | stop DIR" >&2; exit 2 ;;
esac
