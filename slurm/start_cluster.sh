#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost for clap_bench's tests and small sweeps:
# munge + MariaDB + slurmdbd (accounting: submitit reads job states with sacct) + slurmctld +
# slurmd, loopback only, no systemd. Idempotent: when the cluster is already up it says so and
# exits 0. Every daemon we start has its PID recorded under the state dir; stop_cluster.sh stops
# exactly those.
#
# Settings (environment):
#   CLAPBENCH_SLURM_DIR=/tmp/clapbench-slurm   state, spool, logs, pids and database live here
#   CLAPBENCH_SLURM_INSTALL=1                   0: never call apt-get (fail if packages are missing)
#   CLAPBENCH_SLURM_PARTITION=debug             name of the one partition
#   CLAPBENCH_SLURM_DB_PORT=13306               MariaDB port (127.0.0.1 only)
#
# Exit status: 0 running, 2 cannot run here (not root / no apt / packages missing), 1 start failure.
set -euo pipefail

STATE_DIR=${CLAPBENCH_SLURM_DIR:-/tmp/clapbench-slurm}
INSTALL=${CLAPBENCH_SLURM_INSTALL:-1}
PARTITION=${CLAPBENCH_SLURM_PARTITION:-debug}
DB_PORT=${CLAPBENCH_SLURM_DB_PORT:-13306}
DB_PASS=clapbench-slurmdb
CLUSTER=clapbench

log() { echo "[start_cluster $(date +%T)] $*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
wait_for() {  # wait_for <timeout_s> <what> <command...>
  local limit=$1 what=$2; shift 2
  local end=$(( $(date +%s) + limit ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$end" ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.25
  done
}

if [ "$(id -u)" != 0 ]; then
  log "must run as root (it installs packages and starts system daemons)"; exit 2
fi

T_ALL=$(now)
node_ok() { sinfo -h -n localhost -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)$'; }
cluster_up() {
  command -v scontrol >/dev/null && scontrol ping 2>/dev/null | grep -q UP && node_ok \
    && sacctmgr -n list cluster >/dev/null 2>&1
}
if cluster_up; then
  log "already running (state in $STATE_DIR)"; exit 0
fi

# ---------------------------------------------------------------- 1. packages
T=$(now)
PKGS="slurm-wlm slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
MISSING=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING="$MISSING $p"
done
if [ -n "$MISSING" ]; then
  if [ "$INSTALL" != 1 ]; then log "missing packages:$MISSING (CLAPBENCH_SLURM_INSTALL=0)"; exit 2; fi
  if ! command -v apt-get >/dev/null; then log "missing packages:$MISSING and no apt-get"; exit 2; fi
  log "installing:$MISSING"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $MISSING >/dev/null
fi
log "packages: $(elapsed "$T")s (slurm $(dpkg-query -W -f='${Version}' slurmctld), munge $(dpkg-query -W -f='${Version}' munge))"

# A half-started cluster from an earlier attempt: stop what we recorded, then start clean.
if ls "$STATE_DIR"/pids/*.pid >/dev/null 2>&1; then
  log "stopping the daemons of an earlier, incomplete start"
  "$(dirname "$0")/stop_cluster.sh" >/dev/null 2>&1 || true
fi

T_DAEMONS=$(now)
mkdir -p "$STATE_DIR"/{log,pids,state,spool,dbrun} /etc/slurm
chmod 755 "$STATE_DIR"
rm -rf "$STATE_DIR"/state/* "$STATE_DIR"/spool/*

# ---------------------------------------------------------------- 2. slurm.conf (before any Slurm command)
# NodeName is forced to "localhost" (slurmd -N localhost) so the machine's hostname does not
# matter; the hardware line comes from slurmd -C. No cgroups in containers: linuxproc + task/none.
HW=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/pids/slurmctld.pid
SlurmdPidFile=$STATE_DIR/pids/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
MpiDefault=none
MailProg=/bin/true
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

# ---------------------------------------------------------------- 3. munge
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running (not ours: stop_cluster.sh leaves it alone)"
else
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for 15 munged sh -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$STATE_DIR/pids/munged.pid"
  log "munged pid $(cat "$STATE_DIR/pids/munged.pid")"
fi

# ---------------------------------------------------------------- 4. MariaDB + slurmdbd
chown mysql:mysql "$STATE_DIR/dbrun"   # the socket dir must be writable by mysql
if [ ! -d "$STATE_DIR/mysql/mysql" ]; then
  mariadb-install-db --no-defaults --user=mysql --datadir="$STATE_DIR/mysql" \
    --auth-root-authentication-method=socket --skip-test-db >"$STATE_DIR/log/mariadb-install.log" 2>&1
fi
nohup /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE_DIR/mysql" \
  --socket="$STATE_DIR/dbrun/mysqld.sock" --pid-file="$STATE_DIR/dbrun/mariadb.pid" \
  --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
  --log-error="$STATE_DIR/log/mariadb.log" >/dev/null 2>&1 &
echo $! > "$STATE_DIR/pids/mariadbd.pid"
wait_for 60 mariadb mariadb-admin --socket="$STATE_DIR/dbrun/mysqld.sock" ping
mariadb --socket="$STATE_DIR/dbrun/mysqld.sock" -e "
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
  FLUSH PRIVILEGES;"
log "mariadbd pid $(cat "$STATE_DIR/pids/mariadbd.pid") on 127.0.0.1:$DB_PORT"

cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$STATE_DIR/log/slurmdbd.log
PidFile=$STATE_DIR/pids/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
CONF
chown root:root /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf  # slurmdbd refuses otherwise
slurmdbd
wait_for 30 slurmdbd sacctmgr -n list cluster
log "slurmdbd pid $(cat "$STATE_DIR/pids/slurmdbd.pid")"

# ---------------------------------------------------------------- 5. slurmctld + slurmd
slurmctld
wait_for 30 slurmctld sh -c 'scontrol ping | grep -q UP'
log "slurmctld pid $(cat "$STATE_DIR/pids/slurmctld.pid")"
slurmd -N localhost
wait_for 30 slurmd test -s "$STATE_DIR/pids/slurmd.pid"
log "slurmd pid $(cat "$STATE_DIR/pids/slurmd.pid")"
if ! wait_for 30 "node idle" node_ok; then
  log "node state: $(sinfo -h -n localhost -o '%T %E'); resuming it"
  scontrol update NodeName=localhost State=RESUME || true
  wait_for 30 "node idle after resume" node_ok
fi
log "daemons: $(elapsed "$T_DAEMONS")s"

# ---------------------------------------------------------------- 6. one real job through sbatch
OUT="$STATE_DIR/log/start-check.out"
rm -f "$OUT"
JOB=$(sbatch -p "$PARTITION" --parsable -t 1 -o "$OUT" --wrap 'echo start-check-ok')
wait_for 60 "check job $JOB" sh -c "[ -z \"\$(squeue -h -j $JOB 2>/dev/null)\" ]"  # sbatch --wait notices late
grep -q start-check-ok "$OUT" || { log "check job failed: $(cat "$OUT" 2>/dev/null)"; exit 1; }
log "running: partition $PARTITION, node localhost ($HW); total $(elapsed "$T_ALL")s"
