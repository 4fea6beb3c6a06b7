#!/usr/bin/env bash
# A private one-machine Slurm cluster for tests (../shared/examples/slurm-single-node): munged,
# slurmctld and slurmd, as root, every file of theirs under DIR. Nothing under /etc, /var or /run
# is read or written: its own slurm.conf (DIR/slurm.conf, given to every daemon and client through
# SLURM_CONF), munge key and socket (AuthInfo=socket=), StateSaveLocation, SlurmdSpoolDir, TmpFS,
# pid and log files, an empty plugstack.conf, a cluster name of its own (ember-test) and two free
# ports picked here (never 6817/6818), so it runs beside a site's Slurm without touching it.
#   slurm_cluster.sh start DIR    DIR: a new directory, or an empty one (short: it holds Unix
#                                 sockets). Prints nothing on success; exit 2 with the reason (and
#                                 the daemon's log tail) when the daemons cannot start here (not
#                                 root, packages missing, a daemon fails).
#   slurm_cluster.sh stop DIR     cancels the cluster's jobs, stops its daemons and every process
#                                 they left (each carries SLURM_CONF=DIR/slurm.conf in its
#                                 environment), then removes DIR. Safe to call more than once, or
#                                 after a failed start.
# Clients: export SLURM_CONF=DIR/slurm.conf (and no other SLURM_* variable) before srun, sbatch...
set -uo pipefail
cmd=${1:-} dir=${2:-}
[[ ($cmd == start || $cmd == stop) && -n $dir ]] || { echo "usage: slurm_cluster.sh start|stop DIR" >&2; exit 64; }
dir=$(realpath -m "$dir")
conf=$dir/slurm.conf
why() { echo "$*"; exit 2; }
tail_of() { [[ -f $1 ]] && echo "; last lines of $1:" && tail -n "${2:-8}" "$1"; }

# The processes of this cluster: every process whose environment holds SLURM_CONF=$conf (the
# daemons, slurmstepd, job steps, srun clients), except this script and its ancestors.
ours() {
  local -A skip=()
  local p=$$ stat
  while [[ $p -gt 1 ]]; do
    skip[$p]=1
    read -r stat <"/proc/$p/stat" 2>/dev/null || break
    stat=${stat##*) }
    read -r _ p _ <<<"$stat"
  done
  local e kv env
  for e in /proc/[0-9]*/environ; do
    p=${e#/proc/}; p=${p%/environ}
    [[ -n ${skip[$p]:-} || $p == "$BASHPID" ]] && continue
    { mapfile -d '' env <"$e"; } 2>/dev/null || continue
    for kv in "${env[@]}"; do
      [[ $kv == "SLURM_CONF=$conf" ]] && { echo "$p"; break; }
    done
  done
}
# alive PID NAME: PID is running and its command is NAME (a PID from a pid file may be reused).
alive() { [[ -n $1 && $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]]; }
# running PID: PID exists and is not a zombie.
running() {
  local stat
  read -r stat 2>/dev/null <"/proc/$1/stat" || return 1  # 2> first: it also hides the redirect's own error
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}
# end PID...: TERM, then KILL what is left after 5 s (Bazel allows a timed-out test 15 s to clean up).
end() {
  [[ $# -eq 0 ]] && return 0
  kill -TERM "$@" 2>/dev/null
  local p left
  for _ in $(seq 1 50); do
    left=0
    for p in "$@"; do running "$p" && left=1; done
    [[ $left -eq 0 ]] && return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null
  sleep 0.2
}
pid_of() { [[ -f $dir/$1.pid ]] && alive "$(cat "$dir/$1.pid")" "$2" && cat "$dir/$1.pid"; }

# free_port [EXCEPT]: a TCP port nothing listens on, in 20000..31999 (below Linux's ephemeral
# range, far from Slurm's 6817/6818).
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    [[ $p == "${1:-}" ]] && continue
    [[ -z $(ss -Hltn "sport = :$p" 2>/dev/null) ]] && { echo "$p"; return 0; }
  done
  return 1
}

case $cmd in
start)
  [[ $(id -u) -eq 0 ]] || why "the Slurm daemons need root"
  for b in /usr/sbin/munged munge unmunge /usr/sbin/slurmctld /usr/sbin/slurmd srun sbatch sinfo squeue scontrol scancel ss; do
    command -v "$b" >/dev/null || why "$b is not installed (tools/setup.sh installs slurmctld slurmd slurm-client munge iproute2)"
  done
  if [[ -e $dir ]]; then
    [[ -d $dir && -z $(ls -A "$dir") ]] || why "$dir exists and is not an empty directory"
  fi
  mkdir -p "$dir/state" "$dir/spool" "$dir/tmp" || why "cannot create $dir"
  d=$dir
  while [[ $d != / ]]; do
    d=$(dirname "$d")
    [[ $(( 0$(stat -c %a "$d") & 1 )) -eq 1 ]] ||
      why "munged needs every directory above its socket searchable by all (chmod o+x): $d is $(stat -c %A "$d")"
  done
  # munged wants its socket's directories searchable by everyone, its key private.
  chmod 0755 "$dir" && chmod 0700 "$dir/state" "$dir/spool" && chmod 1777 "$dir/tmp" || why "cannot set the modes of $dir"
  [[ ${#dir} -le 80 ]] || why "$dir is too long for the Unix sockets under it (80 characters at most)"
  export SLURM_CONF=$conf
  for v in $(compgen -e | grep -E '^SLURM_' | grep -vx SLURM_CONF); do unset "$v"; done

  head -c 1024 /dev/urandom >"$dir/munge.key" && chmod 0400 "$dir/munge.key" || why "cannot write $dir/munge.key"
  /usr/sbin/munged --key-file="$dir/munge.key" --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" >"$dir/munged.out" 2>&1 ||
    why "munged does not start: $(cat "$dir/munged.out")$(tail_of "$dir/munged.log")"
  munge -S "$dir/munge.socket" -n 2>&1 | unmunge -S "$dir/munge.socket" >/dev/null 2>&1 ||
    why "munge does not authenticate through $dir/munge.socket$(tail_of "$dir/munged.log")"

  ctld_port=$(free_port) && slurmd_port=$(free_port "$ctld_port") || why "no free TCP port in 20000..31999"
  host=$(hostname -s)
  cpus=$(nproc)
  : >"$dir/plugstack.conf"
  cat >"$conf" <<CONF
# Written by tests/e2e/slurm_cluster.sh: a private test cluster, removed when the test ends.
ClusterName=ember-test
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# This cluster's own munged. A job's credential expires 15 s after it is issued (Slurm's default:
# 120 s): a requeued job is held until its previous credential has expired, so this bounds the wait.
AuthInfo=socket=$dir/munge.socket,cred_expire=15
PlugStackConfig=$dir/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
TmpFS=$dir/tmp
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
MpiDefault=none
NodeName=$host CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  /usr/sbin/slurmctld -f "$conf" -c -i >"$dir/slurmctld.out" 2>&1 ||
    why "slurmctld does not start: $(cat "$dir/slurmctld.out")$(tail_of "$dir/slurmctld.log")"
  /usr/sbin/slurmd -f "$conf" >"$dir/slurmd.out" 2>&1 ||
    why "slurmd does not start: $(cat "$dir/slurmd.out")$(tail_of "$dir/slurmd.log")"
  for _ in $(seq 1 60); do
    sinfo -h -o %t 2>/dev/null | grep -qE '^idle' && exit 0
    sleep 0.5
  done
  why "the node did not become idle: $(sinfo 2>&1 | tail -n 2)$(tail_of "$dir/slurmctld.log")$(tail_of "$dir/slurmd.log")"
  ;;
stop)
  [[ -d $dir ]] || exit 0
  export SLURM_CONF=$conf
  # The jobs first, while the daemons can still end them cleanly (only with this cluster's conf:
  # never the site's).
  if [[ -f $conf && -n $(pid_of slurmctld slurmctld) ]]; then
    timeout 10 scancel --quiet --full --user="$(id -un)" 2>/dev/null
    for _ in $(seq 1 20); do
      [[ -z $(timeout 3 squeue -h -o %i 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
  end $(pid_of slurmd slurmd) $(pid_of slurmctld slurmctld)
  munged=$(pid_of munged munged)
  rest=()
  for p in $(ours); do [[ $p != "$munged" ]] && rest+=("$p"); done
  end "${rest[@]}"
  end $munged
  left=$(ours)
  [[ -z $left ]] || { echo "slurm_cluster.sh: processes of $dir still running: $left" >&2; exit 1; }
  rm -rf "$dir"
  ;;
esac
