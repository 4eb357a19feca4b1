# Start a throwaway Debian PostgreSQL 15 on a Unix socket (sourced by .ci/run and usable by hand).
PG15_BIN=/usr/lib/postgresql/15/bin

start_pg15() {
  if [ ! -x "$PG15_BIN/initdb" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql-15 >/dev/null
  fi
  PG15_DIR=$(mktemp -d /tmp/logline-pg15.XXXXXX)
  chown postgres "$PG15_DIR"
  local as_pg=(runuser -u postgres --)
  [ "$(id -u)" = 0 ] || as_pg=()
  "${as_pg[@]}" "$PG15_BIN/initdb" -D "$PG15_DIR/data" -U postgres --auth=trust -E UTF8 >/dev/null
  "${as_pg[@]}" "$PG15_BIN/pg_ctl" -D "$PG15_DIR/data" -w -l "$PG15_DIR/log" \
    -o "-k $PG15_DIR -c listen_addresses='' -c fsync=off -c max_connections=200" start >/dev/null
  PG15_URL="postgresql://postgres@/postgres?host=$PG15_DIR"
  export PG15_URL PG15_DIR
}

stop_pg15() {
  local as_pg=(runuser -u postgres --)
  [ "$(id -u)" = 0 ] || as_pg=()
  "${as_pg[@]}" "$PG15_BIN/pg_ctl" -D "$PG15_DIR/data" -m fast -w stop >/dev/null || true
  rm -rf "$PG15_DIR"
}
