#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the workflow's cluster test.
#
#   tests/slurm/minicluster.sh start DIR   install slurm-wlm + munge if missing, write the
#                                          configs under DIR, start munged, slurmctld and
#                                          slurmd; prints `export SLURM_CONF=...`
#   tests/slurm/minicluster.sh stop DIR    stop every daemon started from DIR
#
# One node (this host) with all its CPUs and memory and a `gpu` gres backed by a dummy
# device file, so GPU-requesting jobs are scheduled (they run on the CPU). No slurmdbd:
# job status comes from `squeue`, so finished jobs stay visible for MinJobAge seconds.
# No systemd, no cgroup control: proctrack/linuxproc and task/none. Ports are picked free;
# munge runs on its own key and socket; the config goes to /etc/slurm only where none is.
# Exit codes: 0 ready, 3 cannot run here (reason on stderr), other: unexpected failure.
set -euo pipefail

cmd=${1:-}
dir=${2:-}
if [[ -z "$cmd" || -z "$dir" ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi

# The job-step plugin (snakemake-executor-plugin-slurm-jobstep) clears every SLURM_*
# variable, SLURM_CONF included, before its nested srun: the configuration must sit at
# Slurm's default path. It is installed there only where no other Slurm configuration is.
ETC=/etc/slurm
MARK="written by clipes tests/slurm/minicluster.sh"

cannot() { echo "minicluster: $*" >&2; exit 3; }

stop_pid() {  # stop_pid PIDFILE
  local f=$1 pid
  [[ -f "$f" ]] || return 0
  pid=$(cat "$f" 2>/dev/null || true)
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

if [[ "$cmd" == stop ]]; then
  if [[ -f "$dir/slurm.conf" ]]; then
    # cancel what is still queued, then the daemons (slurmd first, then the controller)
    SLURM_CONF="$dir/slurm.conf" scancel --quiet --user "$(id -un)" 2>/dev/null || true
  fi
  stop_pid "$dir/slurmd.pid"
  stop_pid "$dir/slurmctld.pid"
  stop_pid "$dir/munged.pid"
  # the configuration installed at Slurm's default path, if it is still ours
  for f in slurm.conf gres.conf cgroup.conf; do
    if grep -qs "$MARK" "$ETC/$f"; then rm -f "$ETC/$f"; fi
  done
  exit 0
fi
[[ "$cmd" == start ]] || { echo "unknown command: $cmd (start|stop)" >&2; exit 2; }

# --- packages ---------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  [[ $(id -u) -eq 0 ]] || cannot "slurm-wlm/munge are not installed and installing needs root"
  command -v apt-get >/dev/null || cannot "slurm-wlm/munge are not installed and there is no apt-get"
  echo "minicluster: installing slurm-wlm and munge from Debian's packages" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends slurm-wlm munge; } >"$dir.apt.log" 2>&1 \
    || cannot "apt-get install slurm-wlm munge failed (log: $dir.apt.log)"
fi
# slurmd launches jobs as their owner, which needs root
[[ $(id -u) -eq 0 ]] || cannot "slurmd must run as root to launch jobs (running as $(id -un))"

host=$(hostname -s)
mkdir -p "$dir"/{state,"spool/$host",log,munge}
dir=$(cd "$dir" && pwd)
user=$(id -un)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [[ "$slurmd_port" == "$ctld_port" ]]; do slurmd_port=$(free_port); done

# the node as slurmd sees it (CPUs, sockets, memory), minus some memory for the OS
node_line=$(slurmd -C | head -n 1)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
mem=$((mem * 95 / 100))

# --- munge on its own key and socket ----------------------------------------------------
sock="$dir/munge/munge.socket"
[[ ${#sock} -lt 100 ]] || cannot "state folder path too long for a unix socket: $dir"
if [[ ! -f "$dir/munge/munge.key" ]]; then
  dd if=/dev/urandom of="$dir/munge/munge.key" bs=1 count=1024 status=none
fi
chmod 700 "$dir/munge"
chmod 400 "$dir/munge/munge.key"
munged --force --socket="$sock" --key-file="$dir/munge/munge.key" \
  --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
  --seed-file="$dir/munge/munged.seed" 2>"$dir/log/munged.err" \
  || cannot "munged did not start: $(tail -n 3 "$dir/log/munged.err" "$dir/log/munged.log" 2>/dev/null | tr '\n' ' ')"

# --- slurm configuration ----------------------------------------------------------------
for f in slurm.conf gres.conf; do
  if [[ -e "$ETC/$f" ]] && ! grep -qs "$MARK" "$ETC/$f"; then
    stop_pid "$dir/munged.pid"
    cannot "$ETC/$f exists: this machine has a Slurm installation of its own, not touching it"
  fi
done
ln -sfn /dev/null "$dir/gpu0"   # the dummy device behind the gpu gres (a character device)
cat >"$dir/gres.conf" <<EOF
# $MARK
NodeName=$host Name=gpu File=$dir/gpu0
EOF
cat >"$dir/slurm.conf" <<EOF
# $MARK (state in $dir)
ClusterName=clipes-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$user
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
MinJobAge=3600
InactiveLimit=0
KillWait=5
Waittime=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mkdir -p "$ETC"
cp "$dir/slurm.conf" "$dir/gres.conf" "$ETC/"
export SLURM_CONF="$ETC/slurm.conf"

slurmctld -f "$SLURM_CONF" -i 2>"$dir/log/slurmctld.err" \
  || cannot "slurmctld did not start: $(tail -n 3 "$dir/log/slurmctld.log" "$dir/log/slurmctld.err" 2>/dev/null | tr '\n' ' ')"
# slurmd loads a cgroup plugin even with task/none; where cgroups cannot be used, Slurm
# 23.02 and later accept CgroupPlugin=disabled (22.05 only knows v1, v2 and autodetect)
if ! slurmd -f "$SLURM_CONF" 2>"$dir/log/slurmd.err"; then
  if grep -q "cgroup" "$dir/log/slurmd.log" 2>/dev/null && [[ ! -f "$ETC/cgroup.conf" ]]; then
    printf '# %s\nCgroupPlugin=disabled\n' "$MARK" >"$ETC/cgroup.conf"
    slurmd -f "$SLURM_CONF" 2>"$dir/log/slurmd.err"
  else
    false
  fi
fi || cannot "slurmd did not start: $(tail -n 3 "$dir/log/slurmd.log" "$dir/log/slurmd.err" 2>/dev/null | tr '\n' ' ')"

# wait for the node to register and become idle
for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o '%t' 2>/dev/null || true)
  if [[ "$state" == idle* ]]; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.5
done
cannot "node $host did not become idle (state '${state:-unknown}'): $(tail -n 3 "$dir/log/slurmd.log" "$dir/log/slurmctld.log" 2>/dev/null | tr '\n' ' ')"
