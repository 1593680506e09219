#!/usr/bin/env bash
# A team's MLflow tracking server in one folder: a PostgreSQL cluster (the backend store) and
# `mlflow server` (artifacts proxied into DIR/artifacts). docs/sweeps.md, "A team's tracking server".
#
#   scripts/team_server.sh start  [--host H] [--port P] [--workers N] [--auth | --no-auth] [--insecure]
#                                 [--allowed-hosts LIST] [DIR]
#   scripts/team_server.sh status [DIR]
#   scripts/team_server.sh stop   [DIR]
#   scripts/team_server.sh reap                # stop every team server whose owner (a test) is gone
#
# DIR (default $MPREC_TEAM_DIR, else ~/mprec-team-server) holds everything: pgdata/ (the cluster),
# artifacts/, logs/, pgpass (the database password, generated at the first start; mode 600) and
# server.conf (ports and options, remembered for the next start). `start` prints the lines to export on
# stdout, everything else on stderr, so `eval "$(scripts/team_server.sh start)"` works; `start` and
# `stop` are idempotent; `status` exits 0 when both servers run and 3 otherwise.
#
# Bound to 127.0.0.1 unless --host says otherwise; any other interface is refused without --auth
# (MLflow's basic-auth app; the admin password is generated into DIR/admin_password) or --insecure, given
# with that --host (an authenticating proxy stands in front). PostgreSQL listens on 127.0.0.1 only, on no
# Unix socket. One server worker by default: with --workers N > 1, uvicorn (0.54) leaves Nagle's algorithm
# on for its shared socket (Kludex/uvicorn#3149), and every call on a kept-alive connection waits ~40 ms.
# The database password is never on a command line: libpq reads it from DIR/pgpass (PGPASSFILE), and
# the backend store URI, which carries none, reaches mlflow as MLFLOW_BACKEND_STORE_URI (psycopg2 named
# in it: SQLAlchemy 2.1 otherwise picks psycopg 3).
#
# PostgreSQL refuses to run as root: started by root, the cluster runs as the owner of DIR/pgdata (the
# first time: $PG_USER, default `postgres`), which must be able to enter DIR. Needs PostgreSQL (initdb,
# pg_ctl: $PG_BIN, else pg_config, /usr/lib/postgresql/*/bin or PATH) and a Python ($PYTHON, default
# python3) with mlflow and psycopg2: pip install -e ".[team]".
#
# Nothing is left running (harness/core/processes.py): PostgreSQL and the mlflow server carry
# MPREC_DAEMONS=<this server's token> in their environment and the server is recorded in the per-user
# state folder with its stop command; a process is this server's only if it carries the token (never by
# its name). `start` and `reap` first stop every server or cluster whose owner is gone; `stop` ends with
# whatever still carries the token. On loopback (the default), a start whose daemons listen on any other
# address fails.
set -euo pipefail
umask 077

DB_USER=mlflow
DB_NAME=mlflow
AUTH_DB_NAME=mlflow_auth
ADMIN_USER=admin
PYTHON=${PYTHON:-python3}
START_TIMEOUT_S=${MLFLOW_START_TIMEOUT_S:-180}

die() { printf 'team_server: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'team_server: %s\n' "$*" >&2; }

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
leftovers() { PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} timeout 180 "$PYTHON" -m harness.leftovers "$@"; }

# --- arguments -----------------------------------------------------------------------------------------
command=${1:-}
[ $# -gt 0 ] && shift
case $command in
  start|stop|status) ;;
  reap) leftovers reap >&2; exit ;;
  -h|--help|help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac
opt_host='' opt_port='' opt_workers='' opt_auth='' opt_insecure='' opt_allowed='' dir=''
while [ $# -gt 0 ]; do
  case $1 in
    --host) opt_host=${2:?--host needs an interface}; shift 2 ;;
    --port) opt_port=${2:?--port needs a number}; shift 2 ;;
    --workers) opt_workers=${2:?--workers needs a number}; shift 2 ;;
    --allowed-hosts) opt_allowed=${2:?--allowed-hosts needs a list}; shift 2 ;;
    --auth) opt_auth=1; shift ;;
    --no-auth) opt_auth=0; shift ;;
    --insecure) opt_insecure=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$dir" ] || die "one folder only (got $dir and $1)"; dir=$1; shift ;;
  esac
done
if [ "$command" != start ] && [ -n "$opt_host$opt_port$opt_workers$opt_allowed$opt_auth$opt_insecure" ]; then
  die "options belong to start; $command takes only DIR"
fi
dir=${dir:-${MPREC_TEAM_DIR:-$HOME/mprec-team-server}}
if [ -d "$dir" ]; then
  DIR=$(cd "$dir" && pwd -P)
elif [ "$command" = start ]; then
  DIR=$(realpath -m -- "$dir")  # created by start, once its options are known to be valid
else
  die "no team server in $dir (scripts/team_server.sh start $dir creates one)"
fi
PGDATA=$DIR/pgdata
CONF=$DIR/server.conf
PIDFILE=$DIR/mlflow.pid
LOGS=$DIR/logs
TOKEN_FILE=$DIR/daemons.token
TOKEN=$(cat "$TOKEN_FILE" 2>/dev/null || true)

mark_daemons() {  # reap what dead owners left, then record this server; what starts next carries its token
  leftovers reap >&2 || true
  mkdir -p "$DIR"
  TOKEN=$(leftovers record --what "team server" --folder "$DIR" ${TOKEN:+--token "$TOKEN"} -- \
    "$ROOT/scripts/team_server.sh" stop "$DIR") || die "could not record the server (python -m harness.leftovers)"
  printf '%s\n' "$TOKEN" > "$TOKEN_FILE"
  export MPREC_DAEMONS=$TOKEN
}

carries_token() { [ -n "$TOKEN" ] && tr '\0' '\n' < "/proc/$1/environ" 2>/dev/null | grep -qxF "MPREC_DAEMONS=$TOKEN"; }

# --- settings remembered in server.conf (read as data, never sourced) ----------------------------------
HOST=127.0.0.1 PORT=5000 PG_PORT='' WORKERS=1 AUTH=0 INSECURE=0 ALLOWED_HOSTS=''
if [ -f "$CONF" ]; then
  while IFS='=' read -r key value; do
    case $key in HOST|PORT|PG_PORT|WORKERS|AUTH|INSECURE|ALLOWED_HOSTS) printf -v "$key" '%s' "$value" ;; esac
  done < "$CONF"
fi
if [ -n "$opt_host" ]; then HOST=$opt_host INSECURE=0; fi  # --insecure holds for the --host it came with
[ -n "$opt_port" ] && PORT=$opt_port
[ -n "$opt_workers" ] && WORKERS=$opt_workers
[ -n "$opt_allowed" ] && ALLOWED_HOSTS=$opt_allowed
[ -n "$opt_auth" ] && AUTH=$opt_auth
[ -n "$opt_insecure" ] && INSECURE=1
case $PORT in ''|*[!0-9]*) die "--port must be a number, got '$PORT'" ;; esac
case $WORKERS in ''|*[!0-9]*|0) die "--workers must be a positive number, got '$WORKERS'" ;; esac
case $HOST in
  127.*|localhost|::1) loopback=1 ;;
  *) loopback=0 ;;
esac
if [ "$loopback" = 0 ] && [ "$AUTH" != 1 ] && [ "$INSECURE" != 1 ]; then
  die "--host $HOST serves beyond this machine without authentication: add --auth (MLflow's basic-auth app), or --insecure if an authenticating proxy stands in front"
fi

# --- PostgreSQL: where it is, and as whom it runs ------------------------------------------------------
find_pg_bin() {
  if [ -n "${PG_BIN:-}" ]; then
    [ -x "$PG_BIN/initdb" ] || die "PG_BIN=$PG_BIN holds no initdb"
    return
  fi
  local candidate
  if command -v pg_config >/dev/null 2>&1; then
    candidate=$(pg_config --bindir 2>/dev/null || true)
    [ -n "$candidate" ] && [ -x "$candidate/initdb" ] && { PG_BIN=$candidate; return; }
  fi
  for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$candidate/initdb" ] && { PG_BIN=$candidate; return; }
  done
  candidate=$(command -v initdb 2>/dev/null || true)
  [ -n "$candidate" ] && { PG_BIN=$(dirname "$candidate"); return; }
  die "PostgreSQL not found (no initdb): install it (Debian/Ubuntu: apt-get install postgresql) or set PG_BIN to its bin folder"
}

if [ "$(id -u)" = 0 ]; then
  if [ -d "$PGDATA" ]; then PG_OWNER=$(stat -c %U "$PGDATA"); else PG_OWNER=${PG_USER:-postgres}; fi
  [ "$PG_OWNER" != root ] || die "$PGDATA belongs to root: PostgreSQL refuses to run as root"
  id "$PG_OWNER" >/dev/null 2>&1 \
    || die "no user '$PG_OWNER' to run PostgreSQL as (it refuses root): create one, or set PG_USER"
  command -v runuser >/dev/null 2>&1 || die "runuser (util-linux) is needed to run PostgreSQL as $PG_OWNER"
  as_pg() { (cd / && runuser -u "$PG_OWNER" -- "$@"); }
else
  PG_OWNER=$(id -un)
  as_pg() { "$@"; }
fi

pg_running() { [ -f "$PGDATA/PG_VERSION" ] && as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

# psql as the store's owner over loopback TCP; the password comes from DIR/pgpass.
pg_sql() {
  PGPASSFILE=$DIR/pgpass timeout 60 "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d postgres -Atc "$1"
}

random_secret() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_in_use() {
  "$PYTHON" - "$1" "$2" <<'EOF' 2>/dev/null && return 1 || return 0
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
EOF
}

save_conf() {
  printf '%s\n' "HOST=$HOST" "PORT=$PORT" "PG_PORT=$PG_PORT" "WORKERS=$WORKERS" "AUTH=$AUTH" \
    "INSECURE=$INSECURE" "ALLOWED_HOSTS=$ALLOWED_HOSTS" > "$CONF"
}

init_cluster() {
  if [ -d "$PGDATA" ] && [ -n "$(ls -A "$PGDATA" 2>/dev/null)" ]; then
    die "$PGDATA holds files but no cluster (an interrupted first start?): remove it and start again"
  fi
  say "creating a PostgreSQL cluster in $PGDATA (runs as $PG_OWNER)"
  local password
  password=$(random_secret)
  printf '127.0.0.1:*:*:%s:%s\n' "$DB_USER" "$password" > "$DIR/pgpass"  # umask 077: mode 600
  mkdir -p "$PGDATA"
  # initdb reads the password from a file its user can read (not a pipe: /dev/stdin of another user's
  # pipe is refused), removed as soon as the cluster exists.
  INITDB_PWFILE=$(mktemp "$DIR/.initdb-password.XXXXXX")
  trap 'rm -f "$INITDB_PWFILE"' EXIT
  printf '%s\n' "$password" > "$INITDB_PWFILE"
  if [ "$(id -u)" = 0 ]; then
    chown "$PG_OWNER" "$PGDATA" "$INITDB_PWFILE"
  fi
  as_pg "$PG_BIN/initdb" -D "$PGDATA" -U "$DB_USER" --pwfile="$INITDB_PWFILE" --auth-host=scram-sha-256 \
    --auth-local=peer -E UTF8 --locale=C > "$LOGS/initdb.log" 2>&1 \
    || die "initdb failed: see $LOGS/initdb.log"
  rm -f "$INITDB_PWFILE"
  trap - EXIT
  # Loopback TCP only, no Unix socket (Debian's default socket folder is not writable by a normal user).
  as_pg sh -c 'cat >> "$1"' sh "$PGDATA/postgresql.conf" <<EOF

# scripts/team_server.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
EOF
}

start_pg() {
  find_pg_bin
  mkdir -p "$DIR"
  if [ -z "$PG_PORT" ]; then PG_PORT=$(free_port); fi
  if [ "$(id -u)" = 0 ]; then
    chmod 711 "$DIR"  # the cluster's user enters DIR to reach pgdata; it lists nothing
    as_pg test -x "$DIR" || die "user $PG_OWNER (PostgreSQL's, as it refuses root) cannot enter $DIR: choose a folder whose parents it can enter (e.g. under /srv or /tmp), or chmod o+x the parents"
  fi
  mkdir -p "$LOGS" "$DIR/artifacts"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then init_cluster; fi
  save_conf
  if pg_running; then
    say "PostgreSQL already running on 127.0.0.1:$PG_PORT"
  else
    touch "$LOGS/postgres.log"
    if [ "$(id -u)" = 0 ]; then chmod 711 "$LOGS" && chown "$PG_OWNER" "$LOGS/postgres.log"; fi
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$LOGS/postgres.log" -w -t 60 start > /dev/null \
      || die "PostgreSQL did not start: see $LOGS/postgres.log"
    say "PostgreSQL running on 127.0.0.1:$PG_PORT"
  fi
  local db
  for db in "$DB_NAME" $([ "$AUTH" = 1 ] && echo "$AUTH_DB_NAME"); do
    if [ -z "$(pg_sql "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
      pg_sql "CREATE DATABASE $db" || die "could not create database $db: see $LOGS/postgres.log"
    fi
  done
}

mlflow_pid() {  # the server's process group leader, if it still runs (and carries this server's token)
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -z "$TOKEN" ]; then  # a server started before tokens (no DIR/daemons.token): its command line
    grep -qa mlflow "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
    return
  fi
  carries_token "$pid" && echo "$pid"
}

client_host() {
  case $HOST in
    0.0.0.0|::) hostname -f 2>/dev/null || hostname ;;
    *:*) echo "[$HOST]" ;;
    *) echo "$HOST" ;;
  esac
}

healthy() {
  local probe=$HOST
  case $probe in 0.0.0.0) probe=127.0.0.1 ;; ::) probe=::1 ;; esac
  case $probe in *:*) probe="[$probe]" ;; esac
  "$PYTHON" - "http://$probe:$PORT/health" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
EOF
}

start_mlflow() {
  local pid
  if pid=$(mlflow_pid); then
    say "mlflow server already running (pid $pid)"
    return
  fi
  port_in_use "$HOST" "$PORT" && die "port $PORT on $HOST is in use: --port N picks another"
  local args=(-m mlflow server --host "$HOST" --port "$PORT" --workers "$WORKERS"
              --serve-artifacts --artifacts-destination "$DIR/artifacts")
  [ -n "$ALLOWED_HOSTS" ] && args+=(--allowed-hosts "$ALLOWED_HOSTS")
  if [ "$AUTH" = 1 ]; then
    [ -s "$DIR/admin_password" ] || random_secret > "$DIR/admin_password"
    [ -s "$DIR/auth_secret_key" ] || random_secret > "$DIR/auth_secret_key"
    # Users and permissions in PostgreSQL beside the runs. EDIT by default: a team's jobs log into shared
    # experiments (`mprec`), which READ would refuse; deleting still needs MANAGE (the creator's, or the
    # admin's grant). Checking a password (PBKDF2) costs ~0.1 s of CPU per request: a verified credential
    # is cached for 60 s (a change through the API clears it at once on the worker that made it; on
    # others, with --workers > 1, within 60 s).
    printf '%s\n' "[mlflow]" "default_permission = EDIT" \
      "database_uri = postgresql+psycopg2://$DB_USER@127.0.0.1:$PG_PORT/$AUTH_DB_NAME" \
      "admin_username = $ADMIN_USER" \
      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" \
      "auth_cache_ttl_seconds = 60" > "$DIR/basic_auth.ini"
    args+=(--app-name basic-auth)
  fi
  say "starting mlflow server on $HOST:$PORT (workers: $WORKERS; log: $LOGS/mlflow.log)"
  # setsid: the server, uvicorn and its workers form one process group, stopped (or killed) together.
  rm -f "$PIDFILE"
  (
    cd "$DIR"
    export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://$DB_USER@127.0.0.1:$PG_PORT/$DB_NAME"
    export PGPASSFILE=$DIR/pgpass
    # MLflow's server-side job runner (GenAI scorers; 8 more processes) is not what a harness needs.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}
    if [ "$AUTH" = 1 ]; then
      MLFLOW_AUTH_ADMIN_PASSWORD=$(cat "$DIR/admin_password")
      MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$DIR/auth_secret_key")
      export MLFLOW_AUTH_CONFIG_PATH=$DIR/basic_auth.ini
      export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    # The leader writes its own pid: setsid forks when started as a group leader (a shell with job
    # control), and $! would then name a process that has already exited.
    exec setsid sh -c 'echo $$ > "$0" && exec "$@"' "$PIDFILE" "$PYTHON" "${args[@]}"
  ) < /dev/null >> "$LOGS/mlflow.log" 2>&1 &
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until [ -s "$PIDFILE" ]; do
    [ $SECONDS -lt $deadline ] || die "mlflow server did not start: see $LOGS/mlflow.log"
    sleep 0.1
  done
  pid=$(cat "$PIDFILE")
  until healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      tail -n 15 "$LOGS/mlflow.log" >&2
      die "mlflow server exited at start: see $LOGS/mlflow.log"
    fi
    [ $SECONDS -lt $deadline ] \
      || die "mlflow server did not answer within $START_TIMEOUT_S s: see $LOGS/mlflow.log"
    sleep 0.5
  done
  say "mlflow server running on http://$(client_host):$PORT (pid $pid)"
}

print_exports() {
  printf 'export MLFLOW_TRACKING_URI=%q\n' "http://$(client_host):$PORT"
  if [ "$AUTH" = 1 ]; then
    printf 'export MLFLOW_TRACKING_USERNAME=%q\n' "$ADMIN_USER"
    printf 'export MLFLOW_TRACKING_PASSWORD="$(cat %q)"\n' "$DIR/admin_password"
  fi
}

stop_mlflow() {
  local pid
  if ! pid=$(mlflow_pid); then
    rm -f "$PIDFILE"
    say "mlflow server not running"
    return
  fi
  kill -TERM -- "-$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 -- "-$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  say "mlflow server stopped"
}

stop_pg() {
  find_pg_bin
  if pg_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop > /dev/null \
      || die "PostgreSQL did not stop: see $LOGS/postgres.log"
    say "PostgreSQL stopped"
  else
    say "PostgreSQL not running"
  fi
}

status() {
  find_pg_bin
  local up=0 pid
  if pg_running; then
    say "PostgreSQL: running on 127.0.0.1:$PG_PORT, data in $PGDATA (as $PG_OWNER)"
    up=$((up + 1))
  else
    say "PostgreSQL: stopped (data in $PGDATA)"
  fi
  if pid=$(mlflow_pid) && healthy; then
    local auth_note=''
    [ "$AUTH" = 1 ] && auth_note=', basic-auth'
    say "mlflow server: running on http://$(client_host):$PORT (pid $pid), artifacts in $DIR/artifacts$auth_note"
    up=$((up + 1))
  elif pid=$(mlflow_pid); then
    say "mlflow server: process $pid runs but does not answer on $HOST:$PORT (starting? see $LOGS/mlflow.log)"
  else
    say "mlflow server: stopped"
  fi
  if [ "$up" = 2 ]; then print_exports; return 0; fi
  return 3
}

if [ "$command" = start ] && [ -n "$opt_host$opt_port$opt_workers$opt_allowed$opt_auth$opt_insecure" ] \
  && running_pid=$(mlflow_pid); then
  die "the mlflow server runs already (pid $running_pid) with its options: stop it first to change them"
fi
case $command in
  start)
    "$PYTHON" -c 'import mlflow, psycopg2' 2>/dev/null \
      || die "$PYTHON lacks mlflow or psycopg2: pip install -e \".[team]\" (or set PYTHON to the interpreter that has them)"
    if [ "$AUTH" = 1 ]; then
      "$PYTHON" -c 'import flask_wtf' 2>/dev/null || die "--auth needs mlflow's auth extra: pip install -e \".[team]\""
    fi
    mark_daemons
    start_pg; start_mlflow
    if [ "$loopback" = 1 ] && ! leftovers loopback "$TOKEN"; then
      stop_mlflow; stop_pg; die "a daemon listens beyond loopback (above): stopped"
    fi
    print_exports ;;
  stop) stop_mlflow; stop_pg; [ -z "$TOKEN" ] || leftovers stop-set "$TOKEN" >&2 || true ;;
  status) status ;;
esac
