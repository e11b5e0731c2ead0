#!/usr/bin/env bash
# Single-node SLURM (Debian 12, slurm 22.05) for the SLURM workflow test. Run as root.
# WITH_DBD=1 also sets up MariaDB + slurmdbd so that `sacct` works (the executor plugin
# needs it for its status checks). From the project's shared recipe (shared/recipes/).
set -euo pipefail
BASE=${BASE:-${TMPDIR:-/tmp}/slurm-local}          # state, logs, pids
WITH_DBD=${WITH_DBD:-0}
export DEBIAN_FRONTEND=noninteractive
T0=$(date +%s)
pkgs="slurmctld slurmd slurm-client munge"
[ "$WITH_DBD" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
apt-get update -qq
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
echo "[$(( $(date +%s)-T0 ))s] packages installed"

mkdir -p "$BASE"/{state,spool,log,run} /etc/slurm
# --- munge ---
[ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
install -d -o munge -g munge -m 0755 /run/munge
runuser -u munge -- /usr/sbin/munged          # daemonizes; pid in /run/munge/munged.pid
munge -n | unmunge >/dev/null

# --- slurm.conf: MUST be /etc/slurm/slurm.conf (the snakemake slurm-jobstep plugin
#     strips SLURM_* env vars, incl. SLURM_CONF, before its nested srun) ---
MEM=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) - 1024 ))
if [ "$WITH_DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=localcluster
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
MinJobAge=300
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.txt
$ACCT
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

if [ "$WITH_DBD" = 1 ]; then
  # --- MariaDB in a private datadir, TCP 127.0.0.1:3307 ---
  install -d -o mysql -g mysql "$BASE/mysql" "$BASE/mysqlrun"
  [ -d "$BASE/mysql/mysql" ] || mariadb-install-db --user=mysql --datadir="$BASE/mysql" >"$BASE/log/mariadb-install.log" 2>&1
  mariadbd --user=mysql --datadir="$BASE/mysql" --socket="$BASE/mysqlrun/mysqld.sock" \
    --pid-file="$BASE/mysqlrun/mysqld.pid" --port=3307 --bind-address=127.0.0.1 \
    --log-error="$BASE/mysqlrun/mariadb.err" >/dev/null 2>&1 &
  for i in $(seq 1 60); do mariadb -S "$BASE/mysqlrun/mysqld.sock" -e 'select 1' >/dev/null 2>&1 && break; sleep 0.5; done
  mariadb -S "$BASE/mysqlrun/mysqld.sock" -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
  slurmdbd
  for i in $(seq 1 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  sacctmgr -i add cluster localcluster >/dev/null || true   # non-zero if it already exists
  echo "[$(( $(date +%s)-T0 ))s] mariadb + slurmdbd up"
fi

slurmctld
slurmd -N localhost
for i in $(seq 1 60); do sinfo -h -o %T 2>/dev/null | grep -qx idle && break; sleep 0.5; done
sinfo
echo "[$(( $(date +%s)-T0 ))s] slurm up"
