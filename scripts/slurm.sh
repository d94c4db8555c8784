#!/usr/bin/env bash
# A real single-node Slurm cluster (slurmctld + slurmd + munged) on loopback, for tests that
# submit, watch, signal and cancel jobs through the ordinary Slurm command line (sbatch,
# squeue, scontrol, scancel, sacct -c) instead of a mock. Three commands:
#   scripts/slurm.sh up DIR       # start; prints "slurm up: DIR (SLURM_CONF=DIR/slurm.conf)"
#   scripts/slurm.sh status DIR   # exit 0 and print sinfo when up, exit 1 otherwise
#   scripts/slurm.sh down DIR     # stop; idempotent
# e.g.
#   scripts/slurm.sh up "$d" && . "$d/env" && id=$(sbatch --parsable --wrap 'echo hi') && ...
#   scripts/slurm.sh down "$d"
#
# Everything lives under DIR (made absolute; created if missing): slurm.conf, the munge key,
# socket, pid, log and seed files, the controller's state, slurmd's spool, daemon pid/log
# files, the job completion file and DIR/env (`export SLURM_CONF=...`, for `source`). Nothing
# in /etc or /var is touched, so clusters in different DIRs do not collide; each `up` picks
# two free loopback ports for SlurmctldPort/SlurmdPort.
#
# up: installs `slurm-wlm munge` with apt-get when sbatch/slurmctld/slurmd/munged are
#   missing (root only; otherwise it says how and exits 3). munged runs as user munge with its
#   socket in DIR (AuthInfo=socket=...); slurmctld and slurmd run as root in the foreground
#   (-D), in the background of this script, their pids in DIR/pids. Ready when sinfo reports
#   the node idle (~1.5 s; UP_TIMEOUT_S, default 30, else, or when a daemon exits or `up` is
#   interrupted, the daemons' log tails are printed, what was started is stopped, exit 1),
#   and then once slurmctld's scheduler has made its first pass (~3 s after the controller
#   starts; jobs submitted before it pend until then). `up` on a DIR that is up says so.
#   The node: localhost at 127.0.0.1 with CPUs=$(nproc) and RealMemory = MemTotal - 1 GiB,
#   in one partition `debug` (default, no time limit). No cgroups (proctrack/linuxproc,
#   task/none): memory is not enforced. EnforcePartLimits=ALL makes sbatch refuse at submit
#   what the node can never run (too many CPUs, memory, any GPU gres) instead of leaving it
#   pending forever. No slurmdbd: plain `sacct` fails; `sacct -c` reads DIR/jobcomp.txt.
#   Finished jobs stay visible to squeue/scontrol for MinJobAge=300 s.
# down: cancels the cluster's jobs (so no job processes outlive it), then stops exactly the
#   pids listed in DIR/pids (only those still running the expected program): SIGTERM, up to
#   10 s, then SIGKILL; removes DIR/pids. Files in DIR are kept.
# DIR must be short (unix socket paths, munge's and slurmstepd's in DIR, are limited to 107
# bytes) and free of whitespace (slurm.conf cannot quote paths); user munge must be able to
# reach DIR: munged wants every parent directory searchable by all (a+x, as /tmp is).
# Needs python3 or bash's /dev/tcp (ports), setpriv and timeout (util-linux, coreutils).
set -euo pipefail

UP_TIMEOUT_S="${UP_TIMEOUT_S:-30}"
STOP_GRACE_S=10
DAEMONS=(munged slurmctld slurmd)

die() {
  echo "slurm.sh: $*" >&2
  exit 2
}

usage() {
  echo "usage: $0 up|down|status DIR" >&2
  exit 2
}

# An absolute path for $1 without requiring it to exist.
absolute() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
  esac
}

# Pid recorded for daemon $1 in $D/pids, if any.
recorded_pid() {
  [ -f "$D/pids" ] || return 0
  awk -v n="$1" '$1 == n { print $2 }' "$D/pids"
}

# Whether pid $2 is alive (a zombie is not) and still runs program $1.
is_program() {
  local name="$1" pid="$2" comm cmd
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && return 1
  comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
  [ "$comm" = "$name" ] && return 0
  cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmd" == *"$name"* ]]
}

# slurm SECONDS COMMAND ARGS...: a Slurm client command against this cluster, time-limited.
slurm() {
  SLURM_CONF="$D/slurm.conf" timeout "$1" "${@:2}"
}

node_state() {
  [ -f "$D/slurm.conf" ] || return 1
  SLURM_CONF="$D/slurm.conf" timeout 5 sinfo -h -o %T 2>/dev/null
}

is_up() {
  local name pid
  [ -f "$D/pids" ] || return 1
  for name in "${DAEMONS[@]}"; do
    pid="$(recorded_pid "$name")"
    is_program "$name" "$pid" || return 1
  done
  node_state >/dev/null
}

# Cancels every job of this cluster and waits (up to KillWait + a margin) until none runs.
cancel_jobs() {
  local pid i
  pid="$(recorded_pid slurmctld)"
  is_program slurmctld "$pid" || return 0
  [ -f "$D/slurm.conf" ] || return 0
  slurm 5 scancel --partition=debug >/dev/null 2>&1 || return 0
  for ((i = 0; i < 40; i++)); do
    if [ -z "$(slurm 5 squeue -h -t PD,R,CG,S,SO -o %i 2>/dev/null)" ]; then
      return 0
    fi
    sleep 0.25
  done
  echo "slurm.sh: jobs still completing in $D after 10 s; stopping the daemons anyway" >&2
}

stop_pids() {
  local name pid i alive entry
  local -a pids=()
  if [ -f "$D/pids" ]; then
    while read -r name pid; do
      if [ -n "${name:-}" ] && is_program "$name" "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$name:$pid")
      fi
    done <"$D/pids"
  fi
  for ((i = 0; i < STOP_GRACE_S * 10; i++)); do
    alive=0
    for entry in "${pids[@]+"${pids[@]}"}"; do
      is_program "${entry%%:*}" "${entry#*:}" && alive=1
    done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for entry in "${pids[@]+"${pids[@]}"}"; do
    if is_program "${entry%%:*}" "${entry#*:}"; then
      echo "slurm.sh: ${entry%%:*} (pid ${entry#*:}) ignored SIGTERM for ${STOP_GRACE_S} s; SIGKILL" >&2
      kill -KILL "${entry#*:}" 2>/dev/null || true
    fi
  done
  rm -f "$D/pids"
}

ensure_installed() {
  local cmd missing=()
  for cmd in sbatch slurmctld slurmd munged; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "slurm.sh: missing ${missing[*]}; install them as root with:" >&2
    echo "  apt-get install -y --no-install-recommends slurm-wlm munge" >&2
    exit 3
  fi
  echo "slurm.sh: installing slurm-wlm munge (missing: ${missing[*]})" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends slurm-wlm munge >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends slurm-wlm munge >&2
  fi
}

# Two distinct free TCP ports on 127.0.0.1, space-separated.
free_ports() {
  if command -v python3 >/dev/null 2>&1 && python3 - <<'EOF' 2>/dev/null; then
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
    return 0
  fi
  local port ports=()
  while [ "${#ports[@]}" -lt 2 ]; do
    port=$((20000 + RANDOM % 30000))
    [ "${#ports[@]}" = 1 ] && [ "${ports[0]}" = "$port" ] && continue
    # A refused connection means nobody listens there.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      ports+=("$port")
    fi
  done
  echo "${ports[@]}"
}

log_tails() {
  local f
  for f in "$D"/munge/munged.log "$D"/slurmctld.out "$D"/slurmd.out; do
    [ -f "$f" ] || continue
    echo "--- tail $f" >&2
    tail -n 20 "$f" >&2
  done
}

fail_up() {
  echo "slurm.sh: $*" >&2
  log_tails
  cancel_jobs
  stop_pids
  exit 1
}

# wait_for WHAT DEADLINE COMMAND...: until COMMAND succeeds; fails `up` at DEADLINE ($SECONDS)
# or as soon as a daemon started so far has exited.
wait_for() {
  local what="$1" deadline="$2" name pid
  shift 2
  until "$@"; do
    while read -r name pid; do
      is_program "$name" "$pid" || fail_up "$name (pid $pid) exited while waiting for $what in $D"
    done <"$D/pids"
    [ "$SECONDS" -lt "$deadline" ] || fail_up "$what not ready after ${UP_TIMEOUT_S} s in $D"
    sleep 0.1
  done
}

munge_ok() {
  [ -S "$D/munge/munge.sock" ] &&
    munge -n -S "$D/munge/munge.sock" 2>/dev/null | unmunge -S "$D/munge/munge.sock" >/dev/null 2>&1
}

node_idle() {
  [ "$(node_state)" = idle ]
}

# Whether slurmctld's log, past byte $1, shows the scheduler's first pass.
scheduler_ran() {
  tail -c +"$(($1 + 1))" "$D/slurmctld.log" 2>/dev/null | grep -q 'SchedulerParameters='
}

write_conf() {
  local ctld_port="$1" slurmd_port="$2" cpus mem_mb
  cpus="$(nproc)"
  mem_mb="$(awk '/^MemTotal:/ { print int($2 / 1024) - 1024 }' /proc/meminfo)"
  [ "$mem_mb" -ge 1000 ] || mem_mb=1000
  cat >"$D/slurm.conf" <<EOF
# Written by scripts/slurm.sh: a single-node test cluster on loopback, all state under $D.
ClusterName=selfredteam
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/munge/munge.sock
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/slurmd
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/slurmctld.log
SlurmdLogFile=$D/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
DependencyParameters=kill_invalid_depend
EnforcePartLimits=ALL
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$D/jobcomp.txt
ReturnToService=2
MinJobAge=300
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munged() {
  local m="$D/munge"
  id munge >/dev/null 2>&1 || die "user munge does not exist (is the munge package installed?)"
  mkdir -p "$m"
  if [ ! -s "$m/munge.key" ]; then
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile="$m/munge.key"
    else
      dd if=/dev/urandom of="$m/munge.key" bs=1024 count=1 status=none
    fi
  fi
  chown -R munge:munge "$m"
  chmod 755 "$m"
  chmod 600 "$m/munge.key"
  if ! setpriv --reuid=munge --regid=munge --init-groups test -r "$m/munge.key"; then
    fail_up "user munge cannot reach $m: every directory above it must be searchable by all (chmod a+x)"
  fi
  rm -f "$m/munge.sock" "$m/munge.sock.lock"
  setpriv --reuid=munge --regid=munge --init-groups \
    munged -F --socket="$m/munge.sock" --key-file="$m/munge.key" --pid-file="$m/munged.pid" \
    --seed-file="$m/munged.seed" </dev/null >>"$m/munged.log" 2>&1 &
  echo "munged $!" >>"$D/pids"
}

up() {
  local deadline log_offset i
  if is_up; then
    echo "slurm.sh: already running in $D" >&2
    echo "slurm up: $D (SLURM_CONF=$D/slurm.conf)"
    return 0
  fi
  cancel_jobs
  stop_pids
  ensure_installed
  command -v setpriv >/dev/null 2>&1 || die "setpriv (util-linux) is needed to run munged as user munge"
  [ "$(id -u)" = 0 ] || die "up must run as root (munged runs as user munge; slurmd as root)"
  mkdir -p "$D/state" "$D/slurmd"
  # munged wants search permission for all on its socket's directories: DIR itself here; its
  # parents are the caller's business.
  chmod a+x "$D"
  : >>"$D/jobcomp.txt"
  read -r ctld_port slurmd_port <<<"$(free_ports)"
  write_conf "$ctld_port" "$slurmd_port"
  echo "export SLURM_CONF=$D/slurm.conf" >"$D/env"
  deadline=$((SECONDS + UP_TIMEOUT_S))
  trap 'fail_up "interrupted"' INT TERM HUP
  log_offset="$(stat -c %s "$D/slurmctld.log" 2>/dev/null || echo 0)"
  start_munged
  wait_for munged "$deadline" munge_ok
  SLURM_CONF="$D/slurm.conf" slurmctld -D -f "$D/slurm.conf" </dev/null >>"$D/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >>"$D/pids"
  SLURM_CONF="$D/slurm.conf" slurmd -D -N localhost -f "$D/slurm.conf" </dev/null >>"$D/slurmd.out" 2>&1 &
  echo "slurmd $!" >>"$D/pids"
  wait_for "node localhost (sinfo idle)" "$deadline" node_idle
  # Wait for the scheduler's first pass (best effort, at most 5 s: known by its log line).
  for ((i = 0; i < 50; i++)); do
    scheduler_ran "$log_offset" && break
    sleep 0.1
  done
  trap - INT TERM HUP
  echo "slurm up: $D (SLURM_CONF=$D/slurm.conf)"
}

down() {
  if [ ! -f "$D/pids" ]; then
    echo "slurm down: $D (was not running)"
    return 0
  fi
  cancel_jobs
  stop_pids
  echo "slurm down: $D"
}

status() {
  if is_up; then
    SLURM_CONF="$D/slurm.conf" timeout 10 sinfo
    return 0
  fi
  echo "slurm down: $D" >&2
  return 1
}

check_dir() {
  case "$D" in
    *[[:space:]]* | *[\'\"\\\$\`]*) die "DIR must not contain whitespace or quotes: $D" ;;
  esac
  # Unix sockets in DIR: munge/munge.sock.lock, slurmd/localhost_JOBID.STEPID (~35 bytes).
  [ "${#D}" -le 64 ] || die "DIR is too long for unix socket paths (${#D} > 64 bytes): $D"
}

[ "$#" = 2 ] || usage
cmd="$1"
D="$(absolute "$2")"
D="${D%/}"
check_dir

case "$cmd" in
  up)
    mkdir -p "$D"
    D="$(cd "$D" && pwd -P)"
    check_dir
    up
    ;;
  down) down ;;
  status) status ;;
  *) usage ;;
esac
