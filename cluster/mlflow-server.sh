#!/usr/bin/env bash
# The MLflow tracking server of a cluster's head, with its database: one script, so that the cloud configs, the
# on-prem config and the tests start it exactly the same way.
#
#   cluster/mlflow-server.sh start     # idempotent; prints the tracking URI and writes it to $MLFLOW_DIR/tracking_uri
#   cluster/mlflow-server.sh stop      # the server, then its database
#   cluster/mlflow-server.sh dump      # a copy of the database, $MLFLOW_DIR/mlflow.dump, to keep before `ray down`
#
# Settings (environment; the defaults suit a head):
#   MLFLOW_DIR        state: database, logs, pid files, the tracking URI          (default ~/mlflow)
#   MLFLOW_BACKEND    postgres: a PostgreSQL cluster of its own in $MLFLOW_DIR/pg, on 127.0.0.1 only, with a
#                     generated password kept in $MLFLOW_DIR/pgpass (mode 600, never on a command line);
#                     sqlite: $MLFLOW_DIR/mlflow.db (fine for one host)            (default postgres)
#   MLFLOW_HOST       the address the server binds                                 (default 127.0.0.1)
#                     127.0.0.1 suits every `ray up` head: the sweep's driver runs there and is the only
#                     process that writes MLflow (trials send their metrics with their Tune reports), so no
#                     worker needs a route to it. `private` = this host's first address (`hostname -I`): only
#                     KubeRay's sidecar uses it, for the driver of a RayJob, which runs in another pod
#   MLFLOW_PORT       (default 5000)        MLFLOW_PG_PORT   PostgreSQL's port on 127.0.0.1 (default 5433)
#   MLFLOW_ARTIFACTS  where artifacts go: s3://bucket/path, gs://bucket/path or a folder (default
#                     $MLFLOW_DIR/artifacts). The server proxies every upload, so the driver needs only reach
#                     the server.
#   MLFLOW_WORKERS    server processes (default 2)
#
# As root (tests, CI) PostgreSQL runs as the `postgres` user that Debian's package creates: $MLFLOW_DIR must
# then be reachable by that user. The PostgreSQL binaries are found in /usr/lib/postgresql/*/bin (Debian, Ubuntu) or on PATH.
set -euo pipefail
shopt -s inherit_errexit

MLFLOW_DIR=${MLFLOW_DIR:-$HOME/mlflow}
MLFLOW_BACKEND=${MLFLOW_BACKEND:-postgres}
MLFLOW_HOST=${MLFLOW_HOST:-127.0.0.1}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
MLFLOW_PG_PORT=${MLFLOW_PG_PORT:-5433}
MLFLOW_ARTIFACTS=${MLFLOW_ARTIFACTS:-$MLFLOW_DIR/artifacts}
MLFLOW_WORKERS=${MLFLOW_WORKERS:-2}
if [[ $MLFLOW_HOST == private ]]; then
    MLFLOW_HOST=$(hostname -I | cut -d' ' -f1)
fi
PGDATA=$MLFLOW_DIR/pg
export PGPASSFILE=$MLFLOW_DIR/pgpass  # libpq (psql, createdb, MLflow's psycopg2) reads the password here
PYTHON=$(command -v python3 || command -v python)

die() { echo "mlflow-server.sh: $*" >&2; exit 1; }

pg_bin() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -z $found ]] && command -v pg_ctl >/dev/null; then found=$(dirname "$(readlink -f "$(command -v pg_ctl)")"); fi
    [[ -n $found ]] || die "PostgreSQL not found (apt-get install postgresql), or set MLFLOW_BACKEND=sqlite"
    echo "$found"
}

as_pg() {  # PostgreSQL refuses to run as root
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

healthy() {
    "$PYTHON" - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/health", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except OSError:
    sys.exit(1)
EOF
}

start_postgres() {
    local bin
    bin=$(pg_bin)
    if [[ $(id -u) == 0 ]]; then
        id postgres >/dev/null 2>&1 || die "as root, PostgreSQL runs as the user postgres, which does not exist"
        chown postgres "$MLFLOW_DIR"
        runuser -u postgres -- test -w "$MLFLOW_DIR" || die "$MLFLOW_DIR: the user postgres cannot reach it"
    fi
    if [[ ! -f $PGDATA/PG_VERSION ]]; then
        local pw
        pw=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))')
        (umask 077 && echo "127.0.0.1:$MLFLOW_PG_PORT:*:mlflow:$pw" >"$PGPASSFILE")
        (umask 077 && echo "$pw" >"$MLFLOW_DIR/pg.pw")
        if [[ $(id -u) == 0 ]]; then chown postgres "$MLFLOW_DIR/pg.pw"; fi
        as_pg "$bin/initdb" -D "$PGDATA" -U mlflow --pwfile="$MLFLOW_DIR/pg.pw" --auth=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >"$MLFLOW_DIR/logs/initdb.log" 2>&1 || {
            rm -f "$MLFLOW_DIR/pg.pw"; die "initdb failed: $(tail -n 3 "$MLFLOW_DIR/logs/initdb.log")"; }
        rm -f "$MLFLOW_DIR/pg.pw"
    fi
    if ! as_pg "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        # 127.0.0.1 only, no Unix socket (its folder would need to exist and be writable)
        as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -c port=$MLFLOW_PG_PORT -c unix_socket_directories=''" start \
            >/dev/null || die "PostgreSQL did not start: $(tail -n 5 "$PGDATA/postgres.log")"
    fi
    if ! "$bin/psql" -h 127.0.0.1 -p "$MLFLOW_PG_PORT" -U mlflow -d postgres -tAc \
        "select 1 from pg_database where datname = 'mlflow'" | grep -q 1; then
        "$bin/createdb" -h 127.0.0.1 -p "$MLFLOW_PG_PORT" -U mlflow mlflow
    fi
    echo "postgresql://mlflow@127.0.0.1:$MLFLOW_PG_PORT/mlflow"
}

start() {
    mkdir -p "$MLFLOW_DIR/logs"
    local uri="http://$MLFLOW_HOST:$MLFLOW_PORT" backend
    if [[ -f $MLFLOW_DIR/mlflow.pid ]] && kill -0 "$(cat "$MLFLOW_DIR/mlflow.pid")" 2>/dev/null && healthy "$uri"; then
        echo "$uri"
        return
    fi
    case $MLFLOW_BACKEND in
        postgres) backend=$(start_postgres) ;;
        sqlite) backend="sqlite:///$MLFLOW_DIR/mlflow.db" ;;
        *) die "MLFLOW_BACKEND: expected postgres or sqlite, got $MLFLOW_BACKEND" ;;
    esac
    command -v mlflow >/dev/null || die "mlflow is not on PATH (the node's Python environment must be)"
    # its own session, so that stop ends the server and its worker processes together
    setsid mlflow server --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
        --backend-store-uri "$backend" --artifacts-destination "$MLFLOW_ARTIFACTS" \
        >"$MLFLOW_DIR/logs/mlflow.log" 2>&1 </dev/null &
    echo $! >"$MLFLOW_DIR/mlflow.pid"
    for _ in $(seq 240); do
        if healthy "$uri"; then
            echo "$uri" >"$MLFLOW_DIR/tracking_uri"
            echo "$uri"
            return
        fi
        kill -0 "$(cat "$MLFLOW_DIR/mlflow.pid")" 2>/dev/null || break
        sleep 0.5
    done
    die "the MLflow server did not answer at $uri: $(tail -n 5 "$MLFLOW_DIR/logs/mlflow.log")"
}

stop() {
    if [[ -f $MLFLOW_DIR/mlflow.pid ]]; then
        local pid
        pid=$(cat "$MLFLOW_DIR/mlflow.pid")
        kill -TERM -- "-$pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        rm -f "$MLFLOW_DIR/mlflow.pid" "$MLFLOW_DIR/tracking_uri"
    fi
    if [[ -f $PGDATA/PG_VERSION ]]; then
        as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

dump() {  # pg_restore -d DB mlflow.dump (PostgreSQL) or the SQLite file itself restores it
    local out=$MLFLOW_DIR/mlflow.dump
    if [[ $MLFLOW_BACKEND == postgres ]]; then
        "$(pg_bin)/pg_dump" -Fc -h 127.0.0.1 -p "$MLFLOW_PG_PORT" -U mlflow -f "$out" mlflow
    else
        "$PYTHON" -c 'import sqlite3, sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))' \
            "$MLFLOW_DIR/mlflow.db" "$out"
    fi
    echo "$out"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    dump) dump ;;
    *) die "usage: $0 start|stop|dump" ;;
esac
