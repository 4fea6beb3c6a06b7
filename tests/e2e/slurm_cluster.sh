#!/usr/bin/env bash
# A one-machine Slurm cluster for tests (../shared/examples/slurm-single-node): munge, slurmctld
# and slurmd, as root, with their state under DIR.
#   slurm_cluster.sh start DIR    prints nothing on success; exit 2 with the reason when the
#                                 daemons cannot start here (not root, packages missing, ...)
#   slurm_cluster.sh stop DIR     stops the daemons it started
set -uo pipefail
cmd=$1 dir=$2
why() { echo "$*"; exit 2; }
case $cmd in
start)
  [[ $(id -u) -eq 0 ]] || why "the Slurm daemons need root"
  for b in /usr/sbin/munged /usr/sbin/slurmctld /usr/sbin/slurmd srun sbatch sinfo; do
    command -v "$b" >/dev/null || why "$b is not installed (tools/setup.sh installs slurmctld slurmd slurm-client munge)"
  done
  pgrep -x slurmctld >/dev/null && why "a slurmctld is already running on this machine"
  mkdir -p /etc/slurm /var/spool/slurmd /var/spool/slurmctld /var/log/slurm /run/munge /etc/munge "$dir"
  if [[ ! -s /etc/munge/munge.key ]]; then
    head -c 1024 /dev/urandom >/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key /run/munge && chmod 0400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || /usr/sbin/munged --force || why "munged does not start"
  munge -n | unmunge >/dev/null 2>&1 || why "munge does not authenticate"
  host=$(hostname -s)
  cpus=$(nproc)
  cat >/etc/slurm/slurm.conf <<CONF
ClusterName=ember
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A job's credential expires 15 s after it is issued (Slurm's default: 120 s). A requeued job is
# held until its previous credential has expired, so this bounds the wait before it runs again.
AuthInfo=cred_expire=15
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
MpiDefault=none
NodeName=$host CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  rm -f /etc/slurm/cgroup.conf
  /usr/sbin/slurmctld -c -i || why "slurmctld does not start (see $dir/slurmctld.log)"
  /usr/sbin/slurmd || why "slurmd does not start (see $dir/slurmd.log)"
  for _ in $(seq 1 60); do
    sinfo -h -o %t 2>/dev/null | grep -qE '^idle' && exit 0
    sleep 0.5
  done
  why "the node did not become idle: $(sinfo 2>&1 | tail -n 2)"
  ;;
stop)
  for f in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null
  done
  sleep 1
  ;;
esac
