#!/usr/bin/env bash
# Stop the single-node cluster started by start_cluster.sh: cancel its jobs, then stop each
# daemon by the PID recorded at start (only those, never by name).
# Usage: stop_cluster.sh [--purge]   --purge also deletes state, database, logs and the
#                                    generated /etc/slurm/{slurm,slurmdbd}.conf
set -uo pipefail
STATE_DIR=${CLAPBENCH_SLURM_DIR:-/tmp/clapbench-slurm}
log() { echo "[stop_cluster $(date +%T)] $*"; }
if [ "$(id -u)" != 0 ]; then log "must run as root"; exit 2; fi

# 1. cancel every job first so no job process outlives slurmd
if command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
  ids=$(squeue -h -o %A 2>/dev/null | sort -u)
  if [ -n "$ids" ]; then
    log "cancelling jobs: $(echo $ids)"; scancel $ids 2>/dev/null || true
    for _ in $(seq 1 60); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi

# 2. daemons in reverse start order, by recorded PID, checking the process is what we started
alive() { [ -d "/proc/$1" ] && ! grep -q "^State:[[:space:]]*Z" "/proc/$1/status" 2>/dev/null; }
stop_pid() {  # stop_pid <name> <expected command name>
  local file="$STATE_DIR/pids/$1.pid" pid
  [ -s "$file" ] || return 0
  pid=$(cat "$file")
  if alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 80); do alive "$pid" || break; sleep 0.25; done
    if alive "$pid"; then log "$1 ($pid) ignored SIGTERM; sending SIGKILL"; kill -KILL "$pid"; fi
    log "$1 ($pid) stopped"
  else
    log "$1: pid $pid is not a running $2; nothing to stop"
  fi
  rm -f "$file"
}
stop_pid slurmd slurmd
stop_pid slurmctld slurmctld
stop_pid slurmdbd slurmdbd
stop_pid mariadbd mariadbd
stop_pid munged munged   # recorded only when start_cluster.sh started it

if [ "${1:-}" = "--purge" ]; then
  rm -rf "$STATE_DIR"/{state,spool,mysql,dbrun,log,pids}
  rm -f /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf
  log "purged $STATE_DIR and /etc/slurm/{slurm,slurmdbd}.conf"
fi
