#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server for the test suite (the embedded server is PostgreSQL 18).
#
#   scripts/pg15.sh make test    # runs the command with TEST_DATABASE_URL pointing at the 15 server, then stops it
#   scripts/pg15.sh              # starts it, prints `export PGPASSFILE=… TEST_DATABASE_URL=…`, runs until Ctrl-C / SIGTERM
#
# Installs postgresql-15 with apt-get when /usr/lib/postgresql/15/bin/postgres is missing (root, Debian/Ubuntu),
# initdb's a temporary data folder (as the `postgres` user when run as root: initdb refuses root), listens on
# 127.0.0.1 on a free port, with a superuser `runbook` whose random password is checked (scram-sha-256).
# The data folder is removed when the script ends.
set -euo pipefail

BIN=${PG15_BIN:-/usr/lib/postgresql/15/bin}
if [ ! -x "$BIN/postgres" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "pg15.sh: $BIN/postgres is missing; install postgresql-15 (apt-get install postgresql-15)" >&2
    exit 1
  fi
  echo "pg15.sh: installing postgresql-15" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq </dev/null >/dev/null
  apt-get install -y -qq --no-install-recommends postgresql-15 </dev/null >/dev/null
fi

AS=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  AS=(runuser -u postgres --)
fi

DATA=$(mktemp -d /tmp/pg15-data.XXXXXX)
PASSWORD=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf '%s\n' "$PASSWORD" >"$DATA/.pw"
chmod 600 "$DATA/.pw"
[ ${#AS[@]} -eq 0 ] || chown -R postgres "$DATA"

SLEEPER=
stop() {
  [ -z "$SLEEPER" ] || kill "$SLEEPER" 2>/dev/null || true
  "${AS[@]}" "$BIN/pg_ctl" -D "$DATA/db" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$DATA"
}
trap stop EXIT
trap 'exit 130' INT TERM

"${AS[@]}" "$BIN/initdb" -D "$DATA/db" -U runbook --pwfile="$DATA/.pw" --auth=scram-sha-256 \
  --encoding=UTF8 --locale=C.UTF-8 >"$DATA/initdb.log" 2>&1 || { cat "$DATA/initdb.log" >&2; exit 1; }
rm -f "$DATA/.pw"
"${AS[@]}" "$BIN/pg_ctl" -D "$DATA/db" -l "$DATA/server.log" -w -t 60 start \
  -o "-p $PORT -c listen_addresses=127.0.0.1 -k $DATA -c fsync=off -c max_connections=200" >/dev/null \
  || { cat "$DATA/server.log" >&2; exit 1; }

# the password never enters a URL (nor a log line): libpq reads it from a .pgpass file of this server's own
(umask 077; printf '127.0.0.1:%s:*:runbook:%s\n' "$PORT" "$PASSWORD" >"$DATA/.pgpass")
export PGPASSFILE="$DATA/.pgpass"
export TEST_DATABASE_URL="postgresql://runbook@127.0.0.1:$PORT/postgres"
echo "pg15.sh: PostgreSQL $("$BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT (data $DATA)" >&2
if [ $# -gt 0 ]; then
  "$@"
else
  echo "export PGPASSFILE=$PGPASSFILE TEST_DATABASE_URL=$TEST_DATABASE_URL"
  sleep infinity &
  SLEEPER=$!
  wait "$SLEEPER"
fi
