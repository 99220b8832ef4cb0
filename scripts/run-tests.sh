#!/usr/bin/env bash
# Runs the whole test suite against real servers, then stops what it started.
# - PostgreSQL: the one on 127.0.0.1:5432 when it answers; otherwise a private
#   throwaway cluster (initdb + pg_ctl) on a free port, removed at exit.
# - S3: the tests start SeaweedFS themselves (aindex_assets_tests/servers.py).
# Extra arguments go to pytest (e.g. `scripts/run-tests.sh -m slow`).
set -euo pipefail
set -m  # own process group, so SIGTERM reaches everything we start
cd "$(dirname "$0")/.."

PG_HOST=127.0.0.1
PG_PORT=5432
private_pg=""

cleanup() {
    if [[ -n "$private_pg" ]]; then
        runuser -u postgres -- pg_ctl -D "$private_pg/data" -m fast stop >/dev/null 2>&1 || true
        rm -rf "$private_pg"
    fi
}
trap cleanup EXIT

pg_answers() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1 || ! pg_answers; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    fi
fi
if ! pg_answers; then
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    if [[ -n "$bindir" ]]; then
        echo "PostgreSQL is not answering on $PG_HOST:5432: starting a private cluster" >&2
        private_pg=$(mktemp -d /tmp/aindex-pg.XXXXXX)
        chown postgres "$private_pg"
        PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        runuser -u postgres -- "$bindir/initdb" -D "$private_pg/data" -A trust -U postgres >/dev/null
        runuser -u postgres -- "$bindir/pg_ctl" -D "$private_pg/data" -w -l "$private_pg/log" \
            -o "-h $PG_HOST -p $PG_PORT -k $private_pg" start >/dev/null
        export PATH="$bindir:$PATH"
    fi
fi
export AINDEX_TEST_POSTGRES_URL="postgresql+psycopg2://postgres@$PG_HOST:$PG_PORT/postgres"

# Headless Chromium renders the HTML report and the Dagster UI in the browser tests; a
# clean CI machine (root, Debian) gets the package, elsewhere those tests skip without it.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    echo "Chromium is missing: installing the Debian package for the browser tests" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } \
        || echo "could not install chromium: the browser tests will skip or fail" >&2
fi

status=0
log=$(mktemp /tmp/aindex-tests.XXXXXX)
.venv/bin/python -m pytest aindex_assets_tests "$@" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
# pytest exits 5 when nothing was collected: that must not pass as green.
# Errors at interpreter exit come after pytest's verdict and would not change it: a SQLite
# connection left open in a thread that ended and closed from another one is a leak.
if grep -q "can only be used in that same thread" "$log"; then
    echo "FAILED: a SQLite connection made in one thread was closed in another (see above)" >&2
    status=1
fi
rm -f "$log"
exit "$status"
