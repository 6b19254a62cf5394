# Source this file (do not execute it) to get a throw-away local PostgreSQL for the search tests:
#
#     source .ci/postgres.sh      # exports DS3KIT_TEST_POSTGRES_URL when a server is up
#
# Installs PostgreSQL with apt when missing, starts a private cluster on 127.0.0.1 (port $DS3KIT_PG_PORT, default
# 55432) under a temporary folder, creates the database ds3kit_test, and exports
# DS3KIT_TEST_POSTGRES_URL=postgresql://ds3kit@127.0.0.1:PORT/ds3kit_test. It never fails the sourcing shell: with
# no apt, no root, or any failed step it prints why and leaves the variable unset, so the PostgreSQL tests skip.
# Safe under `set -euo pipefail`: every step runs inside a function called in an `||` list.

_ds3kit_pg_log() { echo "ci/postgres: $*" >&2; }

_ds3kit_pg_setup() {
    local port="${DS3KIT_PG_PORT:-55432}"
    local as_root=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then as_root="sudo -n"; else as_root="none"; fi
    fi
    local bindir
    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
        if [ "$as_root" = "none" ]; then _ds3kit_pg_log "PostgreSQL is not installed and apt needs root"; return 1; fi
        if ! command -v apt-get >/dev/null 2>&1; then _ds3kit_pg_log "no apt-get on this machine"; return 1; fi
        _ds3kit_pg_log "installing postgresql with apt"
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || { _ds3kit_pg_log "apt-get update failed"; return 1; }
        $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 \
            || { _ds3kit_pg_log "apt-get install postgresql failed"; return 1; }
        bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
        [ -x "$bindir/initdb" ] || { _ds3kit_pg_log "initdb not found after installing"; return 1; }
    fi

    # The server refuses to run as root: as root, run it as the "postgres" user the package creates.
    local run=""
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || { _ds3kit_pg_log "no postgres user to run the server as"; return 1; }
        run="runuser -u postgres --"
    fi
    local data
    data="$(mktemp -d /tmp/ds3kit-pg.XXXXXX)" || return 1
    chmod 755 "$data"
    [ -z "$run" ] || chown postgres "$data" || return 1
    $run "$bindir/initdb" -D "$data/db" -U ds3kit --auth=trust >"$data/initdb.log" 2>&1 \
        || { _ds3kit_pg_log "initdb failed (see $data/initdb.log)"; return 1; }
    $run "$bindir/pg_ctl" -D "$data/db" -l "$data/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $data" start >/dev/null 2>&1 \
        || { _ds3kit_pg_log "the server did not start (see $data/server.log)"; return 1; }
    $run "$bindir/createdb" -h 127.0.0.1 -p "$port" -U ds3kit ds3kit_test \
        || { _ds3kit_pg_log "createdb failed"; return 1; }
    export DS3KIT_TEST_POSTGRES_URL="postgresql://ds3kit@127.0.0.1:${port}/ds3kit_test"
    export DS3KIT_PG_DATA="$data/db"
    export DS3KIT_PG_STOP="$run $bindir/pg_ctl -D $data/db -m fast stop"
    _ds3kit_pg_log "PostgreSQL up: DS3KIT_TEST_POSTGRES_URL=$DS3KIT_TEST_POSTGRES_URL (stop: $run $bindir/pg_ctl -D $data/db stop)"
}

_ds3kit_pg_setup || _ds3kit_pg_log "no PostgreSQL; the PostgreSQL search tests will skip"
unset -f _ds3kit_pg_setup _ds3kit_pg_log
true
