#!/usr/bin/env bash
# What defines a run is agreed at start, under real mpirun on N ranks, the last rank launched with
# "divergent" (MPMD): every rank prints the same exact error naming the setting and each rank's
# value, the job exits 1, and no checkpoint is written. The control case trains and saves.
set -uo pipefail
binary=$1
n=$2
source tests/mpi/mpi_lib.sh  # OpenMPI as root, ASan leak setting, `mpi` and `fail`
tmp=${TEST_TMPDIR:-$(mktemp -d)}
if [[ $n -eq 2 ]]; then others="rank 0"; last="rank 1"; else others="ranks 0-$((n - 2))"; last="rank $((n - 1))"; fi

declare -A want
# The trainer's EarlyStopping, named by its score function (a lambda of Run()). Lambdas are
# compared without their number, which depends on the compiler's numbering (g++ 12 counts every
# lambda of the function, g++ 13 those of one signature) and on the code above them; a reported
# difference is itself the proof that the two callables were told apart.
es='EarlyStopping(score_function=Run()::{lambda()#N}, patience=5; MEAN)'
norm() { sed -E 's/\{lambda\(\)#[0-9]+\}/{lambda()#N}/g'; }
want[engine_order]="Engine::Run differ across ranks: synchronized handlers at EPOCH_COMPLETED is $es then Checkpoint(MAX) on $others, Checkpoint(MAX) then $es on $last"
want[engine_attach]="Engine::Run differ across ranks: synchronized handlers at EPOCH_COMPLETED is $es then Checkpoint(MAX) on $others, $es on $last"
want[engine_epochs]="Engine::Run differ across ranks: max_epochs is 2 on $others, 3 on $last"
want[ddp_shape]="DataParallel parameters differ across ranks: parameter 0.weight is Float[6,4] on $others, Float[4,6] on $last; parameter 0.bias is Float[6] on $others, Float[4] on $last; parameter 1.weight is Float[4,6] on $others, Float[6,4] on $last; parameter 1.bias is Float[4] on $others, Float[6] on $last"
want[save_on_rank]="ModelCheckpoint options differ across ranks: save_on_rank is 0 on $others, 1 on $last"
want[metrics_order]="Metrics: agreement of 4 sums: the ranks' agreements differ (layout), detected before any value was used: rank 0 (agreement #0) Metrics at COMPLETED: a (Const, 2 sums), b (Const, 2 sums); $last (agreement #0) Metrics at COMPLETED: b (Const, 2 sums), a (Const, 2 sums). Every rank must run the same program: the same handlers, registered in the same order, at the same events [at COMPLETED, epoch 1, iteration 2] [at EPOCH_COMPLETED, epoch 1, iteration 8]"
want[es_order]="Engine::Run differ across ranks: synchronized handlers at EPOCH_COMPLETED is EarlyStopping(score=accuracy, patience=5; MEAN) then EarlyStopping(score=loss, patience=5; MEAN) then Checkpoint(MAX) on $others, EarlyStopping(score=loss, patience=5; MEAN) then EarlyStopping(score=accuracy, patience=5; MEAN) then Checkpoint(MAX) on $last"
want[filter_args]="Engine::Run differ across ranks: synchronized handlers at EPOCH_COMPLETED is $es then Checkpoint(MAX; every=2) on $others, $es then Checkpoint(MAX; every=3) on $last"
want[score_fn]="Engine::Run differ across ranks: synchronized handlers at EPOCH_COMPLETED is $es then Checkpoint(MAX) on $others, $es then Checkpoint(MAX) on $last"
want[es_patience]="Engine::Run differ across ranks: synchronized handlers at EPOCH_COMPLETED is $es then Checkpoint(MAX) on $others, EarlyStopping(score_function=Run()::{lambda()#N}, patience=3; MEAN) then Checkpoint(MAX) on $last"
want[filter_fn]="Engine::Run differ across ranks: synchronized handlers at EPOCH_COMPLETED is $es then Checkpoint(MAX; event_filter=Run()::{lambda()#N}) on $others, $es then Checkpoint(MAX; event_filter=Run()::{lambda()#N}) on $last"
want[sharded]="ShardedSource options differ across ranks: global_batch is 8 on $others, 16 on $last"

# Every rank but the last reports a line matching $1, the last one matching $2 (extended
# regular expressions); no checkpoint was written.
expect_split() {
  local r
  for ((r = 0; r < n - 1; ++r)); do
    grep -qE "^rank $r: $1" <<<"$out" || fail "$kind: rank $r did not report: $1"
  done
  grep -qE "^rank $((n - 1)): $2" <<<"$out" || fail "$kind: rank $((n - 1)) did not report: $2"
  [[ -z $(ls "$dir" 2>/dev/null | grep '\.pt') ]] || fail "$kind: a checkpoint was written"
}

kinds=(same engine_order engine_attach engine_none engine_none_strict engine_epochs ddp_shape save_on_rank sharded
  metrics_order es_order es_patience filter_args score_fn filter_fn)
if [[ $n -gt 2 ]]; then
  # Above 2 ranks, the cases whose path differs with the world: several ranks on one side of the
  # difference ("ranks 0-2"), the all-gathered header and description exchange of an agreement,
  # the waits of several ranks, a model of another size. The others repeat the 2-rank world's
  # code with other numbers (CI time).
  kinds=(same engine_order engine_none engine_none_strict ddp_shape metrics_order score_fn)
fi
for kind in "${kinds[@]}"; do
  dir="$tmp/$kind"
  rm -rf "$dir"
  start=$(date +%s)
  if [[ $kind == engine_none_strict ]]; then
    # engine_none under strict mode (EMBER_DISTRIBUTED_DEBUG=DETAIL on every rank): the collectives
    # are compared before each one, so the rank that skipped the start agreement is seen at once.
    out=$(EMBER_DISTRIBUTED_DEBUG=DETAIL timeout 180 "${mpi[@]}" -x EMBER_DISTRIBUTED_DEBUG -np $((n - 1)) "$binary" \
      engine_none "$dir" : -np 1 "$binary" engine_none "$dir" divergent 2>&1 | norm)
  else
    out=$(timeout 180 "${mpi[@]}" -np $((n - 1)) "$binary" "$kind" "$dir" : -np 1 "$binary" "$kind" "$dir" divergent 2>&1 | norm)
  fi
  rc=$?  # pipefail: the launch's status (norm exits 0)
  took=$(($(date +%s) - start))
  echo "== $kind: exit $rc; files: $(ls "$dir" 2>/dev/null | tr '\n' ' ')"
  echo "$out" | grep -E "^rank " | sort
  if [[ $kind == same ]]; then
    [[ $rc -eq 0 ]] || fail "$kind: exit $rc"
    [[ $(grep -c "^rank [0-9]*: OK$" <<<"$out") -eq $n ]] || fail "$kind: not every rank finished"
    [[ $(ls "$dir" | grep -c '\.pt$') -eq 2 ]] || fail "$kind: expected two checkpoints (n_saved=2)"
    continue
  fi
  [[ $rc -eq 1 ]] || fail "$kind: exit $rc, expected 1"
  if [[ $kind == engine_none ]]; then
    # No rank can see the other's program: the ranks in the agreement wait out its deadline (10 s)
    # and say why it likely failed; the divergent rank fails in its gradient all-reduce at its own
    # deadline (10 s). Nothing hangs, nothing is written.
    expect_split "DEADLINE_EXCEEDED: agreeing on Engine::Run: .*a rank that registered none skips this agreement: register the same synchronized handlers on every rank" \
      "DEADLINE_EXCEEDED: DataParallel: step 1: gradient all-reduce"
    continue
  fi
  if [[ $kind == engine_none_strict ]]; then
    # Every rank names the collective each rank is in: FAILED_PRECONDITION, which only the
    # fingerprint comparison gives (a waited-out deadline is DEADLINE_EXCEEDED). The time, launch
    # included, is a loose check only: under ASan on a loaded 2-core machine the launch alone took
    # seconds (11 s in all once, against a 10 s deadline).
    [[ $took -lt 25 ]] || fail "$kind: took ${took}s, not at once (the deadline is 10 s)"
    expect_split "FAILED_PRECONDITION: agreeing on Engine::Run: collective #[0-9]+ differs across ranks \(EMBER_DISTRIBUTED_DEBUG=DETAIL\): .* StartAllReduce of [0-9]+ float32 \(SUM\)" \
      "FAILED_PRECONDITION: DataParallel: step 1: gradient all-reduce of bucket 0 .* differs across ranks"
    continue
  fi
  code=INVALID_ARGUMENT
  [[ $kind == metrics_order ]] && code=FAILED_PRECONDITION
  [[ $(grep -cxF "rank $((n - 1)): $code: ${want[$kind]}" <<<"$out") -eq 1 ]] || fail "$kind: the divergent rank's error"
  for ((r = 0; r < n; ++r)); do
    grep -qxF "rank $r: $code: ${want[$kind]}" <<<"$out" || fail "$kind: rank $r did not report: ${want[$kind]}"
  done
  [[ -z $(ls "$dir" 2>/dev/null | grep '\.pt') ]] || fail "$kind: a checkpoint was written"
done
echo OK
