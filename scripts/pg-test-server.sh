#!/usr/bin/env bash
# Starts (once) a throwaway PostgreSQL server for the tests, from Debian's
# packages, and prints its URL. Its data lives in target/pg (removed and made
# anew when the server is not running); it listens on 127.0.0.1 only, with
# trust authentication, and runs as the `postgres` user (PostgreSQL refuses
# to run as root). The tests check behaviour, not power loss: fsync is off.
# The benchmarks run a durable one (fsync and synchronous commit on, as in
# production) elsewhere:
#   AGENTRT_PG_DIR=target/pg-bench AGENTRT_TEST_PG_PORT=55433 AGENTRT_PG_DURABLE=1 scripts/pg-test-server.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PORT="${AGENTRT_TEST_PG_PORT:-55432}"
BIN=""
for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && BIN="$dir"
done
if [ -z "$BIN" ]; then
    echo "installing postgresql" >&2
    apt-get install -y -q postgresql >/dev/null
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && BIN="$dir"
    done
fi

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

DATA="$PWD/${AGENTRT_PG_DIR:-target/pg}"
if ! as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    rm -rf "$DATA"
    mkdir -p "$DATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$DATA"
    as_postgres "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --no-sync -E UTF8 >/dev/null
    if [ "${AGENTRT_PG_DURABLE:-0}" = 1 ]; then
        DURABILITY="-c fsync=on -c synchronous_commit=on"
    else
        DURABILITY="-c fsync=off -c synchronous_commit=off"
    fi
    as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w start \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k /tmp $DURABILITY -c max_connections=300" >/dev/null
fi
echo "postgres://postgres@127.0.0.1:$PORT/postgres"
