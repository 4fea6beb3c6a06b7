#!/usr/bin/env bash
# The trainer under a real one-machine Slurm (munge, slurmctld, slurmd, started and stopped here;
# reported as skipped with the reason where they cannot start):
#   1. srun --mpi=pmix on 2 ranks (the uninterrupted reference) and on 4 ranks;
#   2. scancel --signal=TERM on a running step: every rank agrees to stop, saves, exits 0;
#   3. a batch job with --signal=USR1@50 (10 s before its 1-minute limit) and --requeue: the ranks
#      are signalled, save, the job script requeues the job, it resumes by itself (--resume), and
#      ends bitwise equal to the uninterrupted run, every sample of every epoch used once.
#      slurmctld checks time limits every 30 s, so USR1@50 arrives 10 to 40 s into the job: the job's
#      255 steps (3 epochs) sleep 170 ms each (--inject_step_delay_ms, 43 s in all) so that no run
#      can finish before it, and the rest fits in one or two more runs.
# Needs from the machine: root, Debian's munge, slurmctld, slurmd and slurm-client (tools/setup.sh),
# two free TCP ports in 20000..31999. Leaves nothing: the cluster (slurm_cluster.sh) lives in a
# mktemp directory under /tmp with its own slurm.conf, munge key and socket, state, ports and
# cluster name; every exit path stops its daemons and processes and removes the directory. The
# machine's /etc/slurm, /etc/munge, /var/spool/slurm*, /var/log/{slurm,munge}, /var/lib/munge,
# /run/{munge,slurm} are compared byte for byte before and after, and any change fails the test;
# a site's running Slurm is left alone (the test's cluster runs beside it on other ports).
#   slurm_test.sh TRAIN CKPT
set -uo pipefail
train=$(realpath "$1")
ckpt=$(realpath "$2")
MODE=slurm
source "$(dirname "$0")/lib.sh"
cluster=$(realpath "$(dirname "$0")/slurm_cluster.sh")
# The machine's Slurm and munge files, byte for byte, before and after: the test must leave them
# alone. (Where a site's daemons run, only /etc is compared: their state and logs change by
# themselves.)
system_paths=(/etc/slurm /etc/munge /etc/slurm-llnl /etc/default/munge /etc/default/slurmctld /etc/default/slurmd)
site=""
for d in slurmctld slurmd slurmdbd munged; do pgrep -r R,S,D,T -x "$d" >/dev/null && site+=" $d"; done
if [[ -n $site ]]; then
  echo "running here already:$site; this test's cluster runs beside them; only /etc is compared"
else
  system_paths+=(/var/spool/slurmctld /var/spool/slurmd /var/spool/slurm /var/log/slurm /var/log/munge
    /var/lib/slurm /var/lib/munge /run/munge /run/slurm)  # /var/lib/slurm: Debian's own StateSaveLocation
fi
snapshot() {
  local p
  for p in "${system_paths[@]}"; do
    if [[ -e $p ]]; then
      find "$p" -printf '%p %y %m %u:%g %s %l\n'
      find "$p" -type f -exec sha256sum {} +
    else
      echo "$p absent"
    fi
  done 2>&1 | sort
}
before=$(snapshot)
# A short private directory (it holds the daemons' Unix sockets); the cluster lives in daemons/.
work=$(mktemp -d /tmp/ember-slurm-test.XXXXXX) || fail "mktemp"
chmod 0711 "$work"  # munged wants every directory above its socket searchable by all
daemons=$work/daemons
finish() {
  local rc=$? after
  # A failed run keeps its logs and the daemons' in Bazel's test outputs.
  [[ $rc -ne 0 && -n ${TEST_UNDECLARED_OUTPUTS_DIR:-} ]] &&
    cp "$work"/*.log "$work"/*.out "$daemons"/*.log "$daemons"/*.out "$TEST_UNDECLARED_OUTPUTS_DIR"/ 2>/dev/null
  kill_jobs
  "$cluster" stop "$daemons" || rc=1
  rm -rf "$work"
  after=$(snapshot)
  if [[ $after != "$before" ]]; then
    echo "FAIL: the test changed the machine's Slurm or munge files:"
    diff <(echo "$before") <(echo "$after")
    [[ -n ${SKIP_XML:-} ]] && rm -f "$SKIP_XML"  # not a skip: Bazel reports the failure
    rc=1
  fi
  exit $rc
}
trap finish EXIT
trap 'exit 143' TERM INT HUP
# Clients use this cluster only: its slurm.conf, no variable of an enclosing Slurm job.
for v in $(compgen -e | grep -E '^SLURM_'); do unset "$v"; done
export SLURM_CONF=$daemons/slurm.conf
why=$("$cluster" start "$daemons" 2>&1); rc=$?
if [[ $rc -ne 0 ]]; then
  [[ $rc -eq 2 ]] && skip "no Slurm here: $why"
  fail "starting Slurm: $why"
fi
args=(--data=synthetic --epochs=3 --hidden=512,512 --global_batch=96 --patience=100 --progress=none)
state() { "$ckpt" show "$1"/checkpoint_3_*.pt | sed 's/"file": "[^"]*", //'; }
job_state() { scontrol show job "$1" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p'; }

# 1. srun with PMIx, 2 and 4 ranks.
# --foreground: srun stays in the test's process group, so Bazel's TERM at a timeout reaches it and
# bash runs the EXIT trap (which stops the cluster) at once instead of after srun.
out=$(timeout --foreground 300 srun -n 2 -O --mpi=pmix "$train" "${args[@]}" --output_dir="$work/ref" 2>&1) || fail "srun -n 2: $out"
[[ $(grep -c '"stopped_by": "completed"' <<<"$out") -eq 2 ]] || fail "srun -n 2: $out"
out=$(timeout --foreground 300 srun -n 4 -O --mpi=pmix "$train" --data=synthetic --epochs=1 --progress=none --output_dir="$work/four" 2>&1) ||
  fail "srun -n 4: $out"
[[ $(grep -c '"world_size": 4, "epoch": 1' <<<"$out") -eq 4 ]] || fail "srun -n 4: $out"
echo "srun --mpi=pmix: 2 and 4 ranks completed"

# 2. scancel --signal=TERM on a running step.
timeout 300 srun -n 2 -O --mpi=pmix --job-name=ember-scancel "$train" "${args[@]}" --epochs=1000 --output_dir="$work/cancel" \
  >"$work/cancel.log" 2>&1 &
step=$!
for _ in $(seq 1 300); do [[ -f $work/cancel/metrics.jsonl ]] && break; sleep 0.1; done
[[ -f $work/cancel/metrics.jsonl ]] || fail "the step did not train: $(cat "$work/cancel.log")"
t0=$(date +%s.%N)
scancel --signal=TERM --name=ember-scancel || fail "scancel failed"
wait "$step"; rc=$?
took=$(echo "$(date +%s.%N) - $t0" | bc)
grep -h "preempted at" "$work/cancel.log"
[[ $rc -eq 0 ]] || fail "the cancelled step exited $rc: $(cat "$work/cancel.log")"
[[ $(grep -c '"stopped_by": "preempted"' "$work/cancel.log") -eq 2 ]] || fail "both ranks must stop preempted: $(cat "$work/cancel.log")"
"$ckpt" verify "$work"/cancel/preempted_checkpoint_*.pt || fail "the preemption's checkpoint does not verify"
echo "scancel --signal=TERM: both ranks saved and exited 0, ${took}s after scancel"

# 3. A batch job signalled before its time limit, requeued, resumed by itself.
cat >"$work/job.sh" <<JOB
#!/bin/bash
#SBATCH -n 2 -O --requeue --time=1 --signal=USR1@50 -o $work/job-%j.out
log=$work/run-\${SLURM_RESTART_COUNT:-0}.log
srun --mpi=pmix -O "$train" ${args[*]} --inject_step_delay_ms=170 --ledger --resume --output_dir="$work/batch" >"\$log" 2>&1
echo "srun exit \$?"
# Requeue unless the run completed: preempted (saved), or killed by a signal Slurm sent before
# the trainer had installed its handlers (Slurm may send --signal up to 60 s early).
grep -q '"stopped_by": "completed"' "\$log" || scontrol requeue "\$SLURM_JOB_ID"
JOB
job=$(sbatch --parsable "$work/job.sh") || fail "sbatch failed"
states=""
# Each run of the job trains 10 to 40 s before its USR1 and then waits ~30 s to be requeued: on a
# loaded machine the 3 epochs may take several runs. Waited for by the clock (9 minutes at most,
# within Bazel's 15 for a large test), not by a count of polls that slow down with the load.
deadline=$(( $(date +%s) + 540 ))
while [[ $(date +%s) -lt $deadline ]]; do
  s=$(job_state "$job")
  [[ $s != "${states##* }" ]] && states+=" $s"
  # A requeued job is held until its previous credential expires (cred_expire=15 in the test
  # cluster's slurm.conf). Forcing it to start earlier gets it allocated and killed with "Job
  # credential revoked" (FAILED): wait as Slurm intends.
  [[ $s == COMPLETED || $s == FAILED || $s == CANCELLED || $s == TIMEOUT ]] && break
  sleep 1
done
cat "$work"/run-*.log | grep -E "preempted at|resumed from" | sed "s|$work/||g"
[[ $s == COMPLETED ]] || fail "the batch job ended $s (states:$states): $(cat "$work"/job-*.out "$work"/run-*.log 2>/dev/null | tail -n 20)
slurmctld: $(grep -E "JobId=$job|job_id=$job|_job_complete|requeue" "$daemons/slurmctld.log" | tail -n 15)"
[[ -f $work/run-1.log ]] || fail "the job was never requeued (no second run)"
# grep reads the files itself: `cat | grep -q` under pipefail fails when grep exits at its first
# match while cat still writes (SIGPIPE), which long logs made happen.
grep -q "preempted at iteration" "$work"/run-*.log || fail "no run was preempted by USR1"
grep -q "resumed from $work/batch/preempted_checkpoint_" "$work"/run-*.log || fail "no requeued run resumed by itself"
[[ "$(state "$work/batch")" == "$(state "$work/ref")" ]] || { diff <(state "$work/batch") <(state "$work/ref"); fail "the requeued run differs from the uninterrupted one"; }
"$ckpt" ledger "$work/batch" || fail "ledger"
echo "OK: signalled by USR1@50, saved, requeued, resumed by itself, bitwise equal to the uninterrupted run"
