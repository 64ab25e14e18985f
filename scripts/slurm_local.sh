#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests of the SLURM launcher.
#   scripts/slurm_local.sh start    # prints `export SLURM_CONF=...` for the client commands
#   scripts/slurm_local.sh stop
# Needs root and Debian's slurm-wlm and munge packages (`make slurm` installs them). Everything
# lives in $SLURM_LOCAL_DIR, so the machine's own /etc/slurm is never touched; the daemons are
# stopped by their pid files. Ports: $SLURM_LOCAL_PORT (slurmctld) and the next one (slurmd).
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
PORT=${SLURM_LOCAL_PORT:-6917}
CONF=$DIR/slurm.conf
HOST=$(hostname -s)

die() { echo "slurm_local: $*" >&2; exit 1; }

start() {
  [ "$(id -u)" = 0 ] || die "must run as root (slurmd runs jobs as their submitting user)"
  for cmd in slurmctld slurmd munged sbatch; do
    command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || die "$cmd not found; apt-get install slurm-wlm munge"
  done
  mkdir -p "$DIR/state" "$DIR/spool"
  # munge authenticates every SLURM message; its key must exist and belong to munge.
  if [ ! -s /etc/munge/munge.key ]; then
    /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if ! munge -n </dev/null >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
  fi
  local cpus mem
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  cat > "$CONF" <<CONF
# Written by scripts/slurm_local.sh: one node, one partition, no accounting, no cgroups.
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
  stop quiet
  SLURM_CONF=$CONF /usr/sbin/slurmctld -i
  SLURM_CONF=$CONF /usr/sbin/slurmd
  for _ in $(seq 60); do
    if SLURM_CONF=$CONF sinfo --noheader --format=%t 2>/dev/null | grep -qx idle; then
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.5
  done
  tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
  die "the node did not become idle within 30 s (logs above, in $DIR)"
}

stop() {
  for daemon in slurmd slurmctld; do
    local pidfile=$DIR/$daemon.pid pid
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$pidfile"
  done
  [ "${1:-}" = quiet ] || echo "stopped the SLURM daemons of $DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) die "usage: $0 start|stop" ;;
esac
