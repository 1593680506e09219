#!/usr/bin/env bash
# A real single-machine cluster in one folder, to run and test sweeps as they run on a site's cluster
# (docs/sweeps.md, "On a cluster"): Slurm (Debian's slurm-wlm and munge) or Ray (from PyPI).
#
#   scripts/local_cluster.sh slurm|ray start [--cpus N] [--host 127.0.0.1] [--forward PORT,...] DIR
#   scripts/local_cluster.sh slurm|ray status DIR
#   scripts/local_cluster.sh slurm|ray stop DIR
#   scripts/local_cluster.sh slurm|ray kill-node DIR    # the compute node dies (SIGKILL, its jobs too)
#   scripts/local_cluster.sh slurm kill-controller DIR  # slurmctld dies (SIGKILL) and stays down
#   scripts/local_cluster.sh reap                       # stop what a killed owner left (any cluster)
#   scripts/local_cluster.sh ray exec DIR -- COMMAND... # run a driver (a sweep) inside the Ray cluster
#
# slurm: munged (its key DIR/munge.key, mode 600, and its socket under DIR), slurmctld and one slurmd, all
#   on 127.0.0.1, with DIR/slurm.conf (ports picked free at the first start; partition `debug`; batch jobs
#   are not requeued after a node failure, so a lost job stays lost until the sweep is run again).
#   Needs root (slurmd starts jobs as their users) and /usr/sbin/{munged,slurmctld,slurmd}.
# ray: a head node that runs no jobs (--num-cpus 0: it holds the cluster's state) and one worker node
#   with N CPUs, so a lost worker loses jobs and the head lives on. Ray's servers bind every address of
#   the machine and Ray turns 127.0.0.1 into the machine's address, so the cluster runs in a network
#   namespace of its own that has only loopback (unshare --net; a user namespace too when not root):
#   nothing of it is reachable from outside, and a driver runs inside it (`ray exec DIR -- COMMAND`).
#   --forward PORT,... makes this machine's 127.0.0.1:PORT (a tracking server) reachable from inside
#   (scripts/netns_forward.py). Token authentication is on (RAY_AUTH_MODE=token, DIR/ray_auth_token).
#
# `start` prints the lines to export on stdout (SLURM_CONF, or RAY_ADDRESS), everything else on stderr,
# so `eval "$(scripts/local_cluster.sh slurm start DIR)"` works; `start` brings back whatever is down
# (after `kill-node`: the node) and is otherwise idempotent; `status` exits 0 when everything runs and 3
# otherwise; `stop` and `kill-node` touch only the processes this folder's cluster started (pid files,
# and for Slurm the job steps whose environment names DIR/slurm.conf).
#
# Nothing is left running (harness/core/processes.py): every daemon carries MPREC_DAEMONS=<this cluster's
# token> in its environment (so do its children, the jobs' steps included), and the cluster is recorded in
# the per-user state folder with the command that stops it. A process is this cluster's only if it carries
# the token (never by its name, so a reused PID is never signalled); `stop` ends with whatever still
# carries it; `start` and `reap` first stop every cluster whose owner (a test, a benchmark) is gone.
# Everything listens on 127.0.0.1 only (slurm.conf's CommunicationParameters), checked after each start:
# a daemon listening on any other address fails the start.
set -euo pipefail
umask 022

PYTHON=${PYTHON:-python3}
START_TIMEOUT_S=${CLUSTER_START_TIMEOUT_S:-60}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
SELF=$ROOT/scripts/local_cluster.sh

die() { printf 'local_cluster: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'local_cluster: %s\n' "$*" >&2; }
usage() { sed -n '5,11p' "$0" | sed 's/^# \{0,1\}//'; }
leftovers() { PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} timeout 180 "$PYTHON" -m harness.leftovers "$@"; }

if [ "${1:-}" = reap ]; then leftovers reap >&2; exit; fi

kind=${1:-}
command=${2:-}
case $kind in slurm|ray) ;; -h|--help|help) usage; exit 0 ;; *) usage >&2; exit 2 ;; esac
case $command in start|stop|status|kill-node) ;; kill-controller) [ "$kind" = slurm ] || die "kill-controller is for slurm" ;;
  exec) [ "$kind" = ray ] || die "exec is for ray" ;;
  *) usage >&2; exit 2 ;; esac
shift 2
CPUS=$(nproc) HOST=127.0.0.1 FORWARD='' dir=''
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; break ;;
    --cpus) CPUS=${2:?--cpus needs a number}; shift 2 ;;
    --forward) FORWARD=${2:?--forward needs ports}; shift 2 ;;
    --host) HOST=${2:?--host needs an address}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$dir" ] || die "one folder only (got $dir and $1)"; dir=$1; shift ;;
  esac
done
[ -n "$dir" ] || die "name the cluster's folder (DIR)"
case $HOST in
  127.0.0.1) ;;
  *) die "--host $HOST: this cluster is for one machine and listens on loopback only (127.0.0.1); a site's cluster is configured by its administrators" ;;
esac
case $CPUS in ''|*[!0-9]*|0) die "--cpus must be a positive number, got '$CPUS'" ;; esac
case ${FORWARD//,/} in *[!0-9]*) die "--forward takes ports separated by commas, got '$FORWARD'" ;; esac
[ "$command" != exec ] || [ $# -gt 0 ] || die "exec needs a command after --"
if [ "$command" = start ]; then mkdir -p "$dir"; fi
[ -d "$dir" ] || die "no cluster in $dir (scripts/local_cluster.sh $kind start $dir creates one)"
DIR=$(cd "$dir" && pwd -P)
RUN=$DIR/run LOGS=$DIR/logs

free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

TOKEN_FILE=$DIR/daemons.token
TOKEN=$(cat "$TOKEN_FILE" 2>/dev/null || true)

alive() {  # pid file [name] -> its pid, if that process still runs and carries this cluster's token
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -z "$TOKEN" ]; then  # a cluster started before tokens (no DIR/daemons.token): its command line
    [ -n "${2:-}" ] && grep -qa -- "$2" "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
    return
  fi
  tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "MPREC_DAEMONS=$TOKEN" && echo "$pid"
}

mark_daemons() {  # reap what dead owners left, then record this cluster; what starts next carries its token
  leftovers reap >&2 || true
  TOKEN=$(leftovers record --what "$kind cluster" --folder "$DIR" ${TOKEN:+--token "$TOKEN"} -- \
    "$SELF" "$kind" stop "$DIR") || die "could not record the cluster (python -m harness.leftovers)"
  printf '%s\n' "$TOKEN" > "$TOKEN_FILE"
  export MPREC_DAEMONS=$TOKEN
}

check_loopback() {  # every daemon of this cluster listens on loopback only, or the start fails
  leftovers loopback "$TOKEN" || { "$SELF" "$kind" stop "$DIR" >&2 || true; die "a daemon listens beyond loopback (above): stopped"; }
}

forget_daemons() {  # after an orderly stop: whatever still carries the token, then the record
  [ -z "$TOKEN" ] || leftovers stop-set "$TOKEN" >&2 || true
}

descendants() {  # every process below the given pids (read from ps once)
  ps -eo pid=,ppid= | awk -v roots="$*" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2; order[NR] = $1 }
    END { changed = 1
          while (changed) { changed = 0
            for (i = 1; i <= NR; i++) { p = order[i]
              if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } }
          for (p in keep) print p }'
}

wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
  local deadline=$((SECONDS + $1)) seconds=$1 what=$2
  shift 2
  until "$@"; do
    [ $SECONDS -lt $deadline ] || die "$what did not come up within $seconds s: see $LOGS"
    sleep 0.2
  done
}

# --- Slurm -----------------------------------------------------------------------------------------------
SLURM_CONF_FILE=$DIR/slurm.conf
MUNGE_SOCKET=$RUN/munge.socket

slurm_conf() {
  local node ctld_port slurmd_port
  node=$(hostname -s)
  ctld_port=$(free_port) slurmd_port=$(free_port)
  cat > "$SLURM_CONF_FILE" <<EOF
# scripts/local_cluster.sh: one machine, loopback only
ClusterName=mprec-local
SlurmctldHost=$node($HOST)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# Bind to SlurmctldHost's and NodeAddr's address (127.0.0.1), not to every address of the machine
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
# No cgroups needed: processes are tracked by their parents, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# A node that stops answering is DOWN after 10 s and its jobs end NODE_FAIL (not requeued); it returns
# to service by itself when its slurmd is back.
SlurmdTimeout=10
# slurmctld's ping of a dead node waits MessageTimeout (10 s by default) per try; on loopback an answer
# takes milliseconds, so 3 s lets the node be seen DOWN sooner.
MessageTimeout=3
ReturnToService=2
JobRequeue=0
KillWait=5
MinJobAge=300
NodeName=$node NodeAddr=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

slurm_start() {
  [ "$(id -u)" = 0 ] || die "a local Slurm cluster needs root (slurmd starts each job as its user)"
  local binary
  for binary in /usr/sbin/munged /usr/sbin/slurmctld /usr/sbin/slurmd; do
    [ -x "$binary" ] || die "$binary not found: apt-get install slurm-wlm munge (Debian/Ubuntu)"
  done
  chmod 711 "$DIR"  # munged wants every folder above its socket searchable
  mkdir -p "$RUN" "$LOGS" "$DIR/state" "$DIR/spool"
  mark_daemons
  [ -f "$SLURM_CONF_FILE" ] || slurm_conf
  if [ ! -s "$DIR/munge.key" ]; then
    (umask 077 && dd if=/dev/urandom of="$DIR/munge.key" bs=1024 count=1 status=none)
  fi
  if ! alive "$RUN/munged.pid" munged >/dev/null; then
    timeout 60 /usr/sbin/munged --key-file="$DIR/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$RUN/munged.pid" \
      --log-file="$LOGS/munged.log" --seed-file="$RUN/munged.seed" || die "munged did not start: see $LOGS/munged.log"
    say "munged running (socket $MUNGE_SOCKET)"
  fi
  export SLURM_CONF=$SLURM_CONF_FILE
  if ! alive "$RUN/slurmctld.pid" slurmctld >/dev/null; then
    timeout 60 /usr/sbin/slurmctld || die "slurmctld did not start: see $LOGS/slurmctld.log"
    say "slurmctld running"
  fi
  if ! alive "$RUN/slurmd.pid" slurmd >/dev/null; then
    timeout 60 /usr/sbin/slurmd || die "slurmd did not start: see $LOGS/slurmd.log"
    say "slurmd running ($CPUS CPUs)"
  fi
  wait_until "$START_TIMEOUT_S" "the Slurm node" slurm_node_up
  check_loopback
  say "Slurm: partition debug, node $(hostname -s) idle on $HOST"
  printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
}

slurm_node_up() {
  local state
  state=$(SLURM_CONF=$SLURM_CONF_FILE timeout 10 sinfo -h -N -o %T 2>/dev/null | head -n 1)
  case $state in idle|mixed|allocated|completing) return 0 ;; *) return 1 ;; esac
}

slurm_steps() {  # this cluster's job steps (slurmstepd) and everything they run
  local pid roots=''
  for pid in $(pgrep -x slurmstepd || true); do
    if tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF_FILE"; then
      roots="$roots $pid"
    fi
  done
  [ -n "$roots" ] && descendants $roots
  return 0
}

slurm_kill_node() {
  local pid steps
  pid=$(alive "$RUN/slurmd.pid" slurmd) || die "no slurmd of this cluster runs"
  steps=$(slurm_steps)
  # shellcheck disable=SC2086
  kill -KILL "$pid" $steps 2>/dev/null || true
  rm -f "$RUN/slurmd.pid"
  say "node $(hostname -s) lost: slurmd (pid $pid) and $(echo $steps | wc -w) job processes killed; Slurm marks it DOWN within SlurmdTimeout (10 s); 'start' brings it back"
}

slurm_stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    if pid=$(alive "$RUN/$name.pid" "$name"); then
      kill -TERM "$pid"
      local deadline=$((SECONDS + 20))
      while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
      say "$name stopped"
    fi
    rm -f "$RUN/$name.pid"
  done
  local steps
  steps=$(slurm_steps)
  # shellcheck disable=SC2086
  [ -z "$steps" ] || kill -KILL $steps 2>/dev/null || true
  forget_daemons
}

slurm_status() {
  local up=0 name pid
  for name in munged slurmctld slurmd; do
    if pid=$(alive "$RUN/$name.pid" "$name"); then say "$name: running (pid $pid)"; up=$((up + 1))
    else say "$name: stopped"; fi
  done
  if [ "$up" = 3 ] && slurm_node_up; then
    printf 'export SLURM_CONF=%q\n' "$SLURM_CONF_FILE"
    return 0
  fi
  return 3
}

# --- Ray -------------------------------------------------------------------------------------------------
RAY_CONF=$DIR/ray.conf

ray_port() {
  if [ ! -s "$RAY_CONF" ]; then
    mkdir -p "$DIR"
    printf 'PORT=%s\nCPUS=%s\n' "$(free_port)" "$CPUS" > "$RAY_CONF"
  fi
  local key value
  while IFS='=' read -r key value; do
    case $key in PORT) PORT=$value ;; CPUS) CPUS=$value ;; esac
  done < "$RAY_CONF"
}

NETNS_PID=$RUN/netns.pid
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$DIR/ray_auth_token

ray_netns() {  # the cluster's network namespace (only loopback, up), held by a sleeping process
  alive "$NETNS_PID" >/dev/null && return
  command -v unshare >/dev/null && command -v nsenter >/dev/null || die "unshare and nsenter (util-linux) are needed"
  local userns=''
  [ "$(id -u)" = 0 ] || userns='--user --map-root-user'
  rm -f "$NETNS_PID"
  # shellcheck disable=SC2086
  (exec setsid unshare $userns --net -- "$PYTHON" -c '
import fcntl, os, socket, struct, sys
s = socket.socket()
flags = struct.unpack("16sH14x", fcntl.ioctl(s, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", flags | 1))  # SIOCSIFFLAGS: IFF_UP
open(sys.argv[1], "w").write(str(os.getpid()))
os.execvp("sleep", ["sleep", "infinity"])' "$NETNS_PID") < /dev/null >> "$LOGS/netns.log" 2>&1 &
  wait_until 30 "the network namespace" test -s "$NETNS_PID"
  sleep 0.2
}

set_enter() {  # ENTER: the command prefix that enters the cluster's network namespace
  local pid
  pid=$(alive "$NETNS_PID") || die "the Ray cluster in $DIR is not running (scripts/local_cluster.sh ray start $DIR)"
  if [ "$(id -u)" = 0 ]; then ENTER=(nsenter --net="/proc/$pid/ns/net" --)
  else ENTER=(nsenter --target "$pid" --user --net --preserve-credentials --); fi
}

in_ns() {  # run a command inside the cluster's network namespace
  set_enter
  "${ENTER[@]}" "$@"
}

ray_forward() {  # this machine's 127.0.0.1:PORTs reachable from inside the namespace: two relays that
  [ -n "$FORWARD" ] || return 0  # meet at Unix sockets in RUN (scripts/netns_forward.py)
  local side
  for side in outside inside; do
    alive "$RUN/forward-$side.pid" >/dev/null && continue
    : > "$LOGS/forward-$side.log"
    local enter=()
    [ $side = outside ] || enter=("${ENTER[@]}")
    # shellcheck disable=SC2086
    (exec setsid sh -c 'echo $$ > "$0" && exec "$@"' "$RUN/forward-$side.pid" "${enter[@]}" "$PYTHON" \
        "$ROOT/scripts/netns_forward.py" $side "$RUN" ${FORWARD//,/ }) < /dev/null >> "$LOGS/forward-$side.log" 2>&1 &
    wait_until 30 "the port forwarder ($side)" grep -q forwarding "$LOGS/forward-$side.log"
  done
  say "127.0.0.1:{${FORWARD}} of this machine reachable from the cluster"
}

ray_daemon() {  # ray_daemon NAME ARGS...: `ray start --block` as its own process group, pid in RUN/NAME.pid
  local name=$1
  shift
  rm -f "$RUN/$name.pid"
  set_enter
  (exec setsid sh -c 'echo $$ > "$0" && exec "$@"' "$RUN/$name.pid" "${ENTER[@]}" "$PYTHON" -m ray.scripts.scripts \
      start --block --disable-usage-stats "$@") < /dev/null >> "$LOGS/$name.log" 2>&1 &
  wait_until "$START_TIMEOUT_S" "ray $name" test -s "$RUN/$name.pid"
}

ray_nodes() {  # "head" once the head answers, then the ids of the alive nodes that offer CPUs (workers)
  RAY_ADDRESS=$HOST:$PORT in_ns timeout 60 "$PYTHON" - <<'EOF' 2>/dev/null
import logging, ray
ray.init(logging_level=logging.ERROR, log_to_driver=False)
print("head")
for node in ray.nodes():
    if node["Alive"] and node["Resources"].get("CPU", 0) > 0:
        print(node["NodeID"])
EOF
}

# A worker counts as up once a node is alive that was not there before it started: a killed worker stays
# "alive" in the head's table until its health checks fail.
ray_up() { [ -n "$(ray_nodes | grep -v '^head$' | grep -vxF -f "$RUN/nodes.before" || true)" ]; }

ray_start() {
  "$PYTHON" -c 'import ray' 2>/dev/null || die "$PYTHON lacks ray: pip install -e \".[cluster]\""
  mkdir -p "$RUN" "$LOGS"
  ray_port
  mark_daemons
  [ -s "$RAY_AUTH_TOKEN_PATH" ] || (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$RAY_AUTH_TOKEN_PATH")
  ray_netns
  set_enter
  ray_forward
  if ! alive "$RUN/head.pid" ray >/dev/null; then
    ray_daemon head --head --node-ip-address="$HOST" --port="$PORT" --num-cpus=0 \
      --include-dashboard=false --temp-dir="$DIR/tmp"
    say "ray head on $HOST:$PORT (no CPUs: it runs no jobs)"
  fi
  if ! alive "$RUN/worker.pid" ray >/dev/null; then
    wait_until "$START_TIMEOUT_S" "the ray head" ray_head_answers
    ray_nodes | grep -v '^head$' > "$RUN/nodes.before" || true
    ray_daemon worker --address="$HOST:$PORT" --node-ip-address="$HOST" --num-cpus="$CPUS"
    say "ray worker node with $CPUS CPUs"
  fi
  [ -f "$RUN/nodes.before" ] || : > "$RUN/nodes.before"
  wait_until "$START_TIMEOUT_S" "the ray worker node" ray_up
  check_loopback
  ray_exports
}

ray_exports() {
  printf 'export RAY_ADDRESS=%q RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=%q\n' "$HOST:$PORT" "$RAY_AUTH_TOKEN_PATH"
}

ray_head_answers() { [ -n "$(ray_nodes)" ]; }

ray_kill_group() {  # SIGKILL a daemon's process group and anything it started elsewhere
  local pid
  pid=$(alive "$RUN/$1.pid") || return 1
  # shellcheck disable=SC2046
  kill -KILL -- "-$pid" $(descendants "$pid") 2>/dev/null || true
  rm -f "$RUN/$1.pid"
}

ray_stop() {
  local name pid
  for name in worker head; do
    if pid=$(alive "$RUN/$name.pid" ray); then
      kill -TERM "$pid"  # `ray start --block` stops the node's processes on SIGTERM
      local deadline=$((SECONDS + 20))
      while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
      say "ray $name stopped"
    fi
    rm -f "$RUN/$name.pid"
  done
  for name in forward-inside forward-outside netns; do
    if pid=$(alive "$RUN/$name.pid"); then kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$RUN/$name.pid"
  done
  forget_daemons  # what the leaders' SIGTERM left (a group whose leader is gone), by its token
}

ray_status() {
  ray_port
  local up=0 name pid
  for name in head worker; do
    if pid=$(alive "$RUN/$name.pid" ray); then say "ray $name: running (pid $pid)"; up=$((up + 1))
    else say "ray $name: stopped"; fi
  done
  if [ "$up" = 2 ] && [ -n "$(ray_nodes | grep -v '^head$' || true)" ]; then
    ray_exports
    return 0
  fi
  return 3
}

case $kind-$command in
  slurm-start) slurm_start ;;
  slurm-stop) slurm_stop ;;
  slurm-status) slurm_status ;;
  slurm-kill-node) slurm_kill_node ;;
  slurm-kill-controller)
    pid=$(alive "$RUN/slurmctld.pid") || die "no slurmctld of this cluster runs"
    kill -KILL "$pid"
    say "slurmctld (pid $pid) killed: 'start' brings it back" ;;
  ray-start) ray_start ;;
  ray-stop) ray_stop ;;
  ray-status) ray_status ;;
  ray-exec) ray_port; RAY_ADDRESS=$HOST:$PORT in_ns "$@" ;;
  ray-kill-node)
    ray_kill_group worker || die "no ray worker of this cluster runs"
    say "ray worker node lost (SIGKILL, its jobs too); 'start' brings it back" ;;
esac
