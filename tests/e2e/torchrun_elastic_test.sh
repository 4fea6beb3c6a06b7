#!/usr/bin/env bash
# Elastic restarts under a real torchrun (Debian's PyTorch 1.13, c10d rendezvous, --max_restarts),
# on Gloo (issue 26.4). Every run keeps the sample ledger (--ledger) and is launched with --resume,
# as an elastic job script is (it starts fresh when nothing is there):
#  (a) a worker killed (SIGKILL) mid-epoch: torchrun restarts the group, the trainer resumes from
#      the newest epoch checkpoint, every sample of every epoch is trained exactly once (`ckpt
#      ledger`), and the run ends bitwise equal to an uninterrupted one;
#  (p) a worker preempted (SIGTERM) mid-epoch with restarts left: every rank saves the preemption
#      checkpoint and exits 4, torchrun restarts the group, the run resumes from that checkpoint
#      (nothing trained twice) and ends bitwise equal to the uninterrupted one;
#  (b) two torchrun agents sharing one rendezvous (--nnodes=1:2, one rank each): killing one agent
#      and its worker (its whole process group, as a lost node) shrinks the world; the survivor's
#      worker restarts on 1 rank and resumes from the same checkpoint (--global_batch fixed), every
#      sample exactly once;
#  (d) ranks whose agents count restarts differently (one joined later) agree on the exit code.
# (a) and (b) print the time from the kill to the first resumed iteration and the iterations redone.
set -uo pipefail
train=$1
ckpt=$2
source "$(dirname "$0")/lib.sh"
py=/usr/bin/python3
"$py" -c "import torch.distributed.run" 2>/dev/null || fail "python3-torch is not installed (tools/setup.sh installs it)"
export OMP_NUM_THREADS=1
work=${TEST_TMPDIR:-$(mktemp -d)}
port=$((23000 + ($$ % 1000) * 3))
# 3 epochs of 128 iterations (8192 synthetic samples, 64 a step over all ranks); the step delay
# makes an epoch last ~3 s, so that a kill lands mid-epoch.
common=(--data=synthetic --patience=100 --seed=7 --progress=none --n_saved=1 --epochs=3 --global_batch=64
  --ledger --resume --deadline_s=30)

now() { date +%s.%N; }
since() { "$py" -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$1" "$(now)"; }
finals() { grep -E '^\{"rank"' "$1"; }
st() { "$ckpt" show "$1"/checkpoint_3_*.pt | sed 's/"file": "[^"]*", //'; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls the command every 50 ms.
wait_for() {
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 20; i++)); do "$@" && return 0; sleep 0.05; done
  fail "waited ${limit}s for $what"
}
ledger_has() { grep -qs "\"iteration\": $2," "$1"/ledger/*.rank-1.jsonl; }  # DIR ITERATION
# The newest ledger file of rank 0 (from-ITERATION.rank-0.jsonl) holds a trained iteration.
resumed_file() { ls "$1"/ledger/from-*.rank-0.jsonl 2>/dev/null | sed 's/.*from-\([0-9]*\)\..*/\1 &/' | sort -n | tail -n 1 | cut -d' ' -f2; }
trained_since() { local f; f=$(resumed_file "$1"); [[ $f == */from-$2.rank-0.jsonl && $(wc -l <"$f") -ge 2 ]]; }
# pid_of_rank DIR RANK: the worker of that rank writing to DIR.
pid_of_rank() {
  local p
  for p in $(pgrep -f -- "--output_dir=$1\$"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "RANK=$2" && { echo "$p"; return 0; }
  done
  return 1
}
elastic() {  # elastic NAME OUT_DIR [train args...]: one agent, 2 workers, c10d rendezvous, 1 restart
  local name=$1
  shift
  timeout 240 "$py" -m torch.distributed.run --nnodes=1 --nproc_per_node=2 --rdzv_backend=c10d \
    --rdzv_endpoint="127.0.0.1:$port" --rdzv_id="$name" --max_restarts=1 --monitor_interval=0.2 \
    --redirects 2 --tee 2 --log_dir "$work/logs-$name" --no_python "$train" "${common[@]}" "$@" >"$work/$name.log" 2>&1
}
ledger_ok() {  # NAME DIR
  "$ckpt" ledger "$2" >"$work/$1.ledger" 2>&1 || { cat "$work/$1.ledger"; fail "$1: the ledger shows samples lost or trained twice"; }
  grep -q "^epoch 3: 8192 samples, each exactly once (finished)" "$work/$1.ledger" || { cat "$work/$1.ledger"; fail "$1: epoch 3 is not complete in the ledger"; }
}
completed_on() {  # NAME WORLD_SIZE: every final line of the last attempt says completed, 3 epochs
  local f
  f=$(finals "$work/$1.log" | grep '"stopped_by": "completed"')
  [[ $(wc -l <<<"$f") -eq $2 ]] || { tail -n 30 "$work/$1.log"; fail "$1: want $2 completed final lines: $f"; }
  grep -q "\"world_size\": $2, \"epoch\": 3, \"iteration\": 384, " <<<"$f" || fail "$1: not 3 epochs on $2 ranks: $f"
  [[ $(sed 's/"rank": [0-9]*, //' <<<"$f" | sort -u | wc -l) -eq 1 ]] || fail "$1: the ranks decided differently: $f"
}

echo "== the uninterrupted run (plain torchrun, 2 ranks)"
timeout 240 "$py" -m torch.distributed.run --nproc_per_node=2 --redirects 2 --tee 2 --master_port "$((port + 1))" \
  --log_dir "$work/logs-ref" --no_python "$train" "${common[@]}" --output_dir="$work/ref" >"$work/ref.log" 2>&1 ||
  { tail -n 20 "$work/ref.log"; fail "the uninterrupted run"; }
completed_on ref 2
ledger_ok ref "$work/ref"

echo "== (a) rank 1 killed with SIGKILL in epoch 2: restarted, resumed from the epoch-1 checkpoint"
elastic a --inject_step_delay_ms=20 --output_dir="$work/a" &
agent=$!
wait_for 120 "run a to reach iteration 150" ledger_has "$work/a" 150
victim=$(pid_of_rank "$work/a" 1) || fail "run a: no worker of rank 1"
killed=$(now)
kill -9 "$victim"
wait_for 120 "run a to train again after the restart" trained_since "$work/a" 128
echo "kill -> first resumed iteration: $(since "$killed") s"
wait "$agent" || { tail -n 30 "$work/a.log"; fail "run a: torchrun failed"; }
grep -q "resumed from $work/a/checkpoint_1_" "$work/a.log" || fail "run a did not resume from epoch 1: $(grep -i resum "$work/a.log")"
failed_at=$(finals "$work/a.log" | grep '"stopped_by": "error"' | sed 's/.*"iteration": \([0-9]*\),.*/\1/')
[[ -n $failed_at ]] || fail "run a: rank 0 of the first attempt did not report the failure"
echo "redone: iterations 129..$failed_at ($((failed_at - 128)) of 384) on each rank"
completed_on a 2
ledger_ok a "$work/a"
[[ -n "$(st "$work/ref")" && "$(st "$work/ref")" == "$(st "$work/a")" ]] ||
  { diff <(st "$work/ref") <(st "$work/a") | head; fail "run a differs from the uninterrupted run"; }
echo "run a: every sample once, bitwise equal to the uninterrupted run"

echo "== (p) rank 1 preempted (SIGTERM) at iteration 150: saved, exit 4, restarted, resumed from that checkpoint"
elastic p --inject_preempt=1:150 --output_dir="$work/p" || { tail -n 30 "$work/p.log"; fail "run p: torchrun failed"; }
[[ $(finals "$work/p.log" | grep -c '"stopped_by": "preempted", .*"latest_checkpoint": "[^"]*preempted_checkpoint_150.pt"') -eq 2 ]] ||
  fail "run p: both ranks must report the preemption checkpoint of iteration 150: $(finals "$work/p.log")"
grep -q "failed (exitcode: 4)" "$work/p.log" || fail "run p: the preempted workers did not exit 4: $(grep -i exitcode "$work/p.log")"
grep -q "resumed from $work/p/preempted_checkpoint_150.pt" "$work/p.log" || fail "run p did not resume from the preemption checkpoint"
[[ -f $work/p/ledger/from-150.rank-0.jsonl ]] || fail "run p: the restart did not continue at iteration 150: $(ls "$work/p/ledger")"
completed_on p 2
ledger_ok p "$work/p"
[[ "$(st "$work/ref")" == "$(st "$work/p")" ]] || { diff <(st "$work/ref") <(st "$work/p") | head; fail "run p differs from the uninterrupted run"; }
echo "run p: nothing redone, bitwise equal to the uninterrupted run"

echo "== (d) the exit code of a preemption is agreed: 4 only when every rank's agent has a restart left and --resume"
# Agents count their own restarts (one that joined later starts at 0): ranks started by hand with
# the variables torchrun sets, each with its own count.
preempt_codes() {  # NAME RESTART_COUNT_OF_RANK_0 RESTART_COUNT_OF_RANK_1 [train args...]: prints "CODE0 CODE1"
  local name=$1 c0=$2 c1=$3 r pids=()
  shift 3
  for r in 0 1; do
    local c=$c0
    ((r == 1)) && c=$c1
    RANK=$r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$((port + 2)) TORCHELASTIC_RESTART_COUNT=$c \
      TORCHELASTIC_MAX_RESTARTS=1 timeout 120 "$train" --data=synthetic --seed=7 --progress=none --epochs=1 \
      --deadline_s=30 --inject_preempt=1:20 --output_dir="$work/$name" "$@" >"$work/$name-$r.log" 2>&1 &
    pids+=($!)
  done
  local codes=()
  for r in 0 1; do wait "${pids[$r]}"; codes+=($?); done
  echo "${codes[*]}"
}
[[ $(preempt_codes d1 0 0 --resume) == "4 4" ]] || fail "d1: restarts left on both ranks: want exit 4 on both: $(cat "$work"/d1-0.log)"
[[ $(preempt_codes d2 1 0 --resume) == "0 0" ]] || fail "d2: rank 0's agent has no restart left: want exit 0 on both: $(cat "$work"/d2-0.log)"
grep -q "a rank's agent has no restart left" "$work/d2-0.log" || fail "d2: rank 0 does not say why it exits 0"
[[ $(preempt_codes d3 0 0) == "0 0" ]] || fail "d3: without --resume a restart cannot continue: want exit 0 on both: $(cat "$work"/d3-0.log)"
grep -q "launched without --resume" "$work/d3-0.log" || fail "d3: rank 0 does not say why it exits 0"
echo "exit codes agreed: 4 4 with restarts left everywhere, 0 0 when one agent has none or without --resume"

echo "== (b) two agents (--nnodes=1:2), one lost with its worker: the survivor goes on alone"
node() {  # node NAME IS_HOST: one agent and its worker, in a process group of their own
  setsid timeout 240 "$py" -m torch.distributed.run --nnodes=1:2 --nproc_per_node=1 --rdzv_backend=c10d \
    --rdzv_endpoint="127.0.0.1:$((port + 2))" --rdzv_id=shrink --rdzv_conf="is_host=$2,last_call_timeout=3" \
    --max_restarts=2 --monitor_interval=0.2 --redirects 2 --tee 2 --log_dir "$work/logs-$1" --no_python "$train" \
    "${common[@]}" --inject_step_delay_ms=20 --output_dir="$work/b" >"$work/$1.log" 2>&1 &
}
node b-host 1
host=$!
node b-lost 0
lost=$!
wait_for 120 "2 ranks to reach iteration 150 in run b" ledger_has "$work/b" 150
killed=$(now)
kill -9 -- "-$lost"
wait "$lost" 2>/dev/null
wait_for 150 "the survivor to train again on 1 rank" trained_since "$work/b" 128
echo "kill -> first resumed iteration: $(since "$killed") s (the lost node is declared dead after 15 s without a heartbeat)"
wait "$host" || { tail -n 30 "$work/b-host.log"; fail "run b: the surviving agent failed"; }
head -n 1 "$(resumed_file "$work/b")" | grep -q '"world_size":1,' || fail "run b: the restart is not on 1 rank: $(head -n 1 "$(resumed_file "$work/b")")"
grep -q "resumed from $work/b/checkpoint_1_" "$work/b-host.log" || fail "run b did not resume from epoch 1: $(grep -i resum "$work/b-host.log")"
completed_on b-host 1
failed_at=$(finals "$work/b-host.log" | grep '"stopped_by": "error"' | sed 's/.*"iteration": \([0-9]*\),.*/\1/')
[[ -n $failed_at ]] && echo "redone: iterations 129..$failed_at ($((failed_at - 128)) of 384)"
ledger_ok b "$work/b"
grep -q '"epoch": 1, .*"world_size": 2' "$work/b/metrics.jsonl" && grep -q '"epoch": 3, .*"world_size": 1' "$work/b/metrics.jsonl" ||
  fail "run b: want epoch 1 on 2 ranks and epoch 3 on 1: $(cat "$work/b/metrics.jsonl")"
"$py" - "$(finals "$work/ref.log" | head -n 1)" "$(finals "$work/b-host.log" | grep completed)" <<'PY' || fail "run b's accuracy is off"
import json, sys
r, b = (json.loads(a)["best_score"] for a in sys.argv[1:])
print(f"best validation accuracy: uninterrupted {r}, shrunk to 1 rank {b}")
sys.exit(0 if abs(r - b) <= 0.01 else 1)
PY
echo OK
