#!/usr/bin/env bash
# tools/gpu/gpu_checks.sh --dry-run, here (no GPU): it must run end to end, leave exactly
# summary.txt and logs.tar.gz in $OUT, name every step once, report each step that needs the GPU
# machine as NOT RUN with a reason (never PASS, never a faked figure), and say DRY RUN.
set -uo pipefail
script=$PWD/$1  # in the runfiles tree: no carried third_party/gpu_sources there
root=$(dirname "$(dirname "$(dirname "$script")")")
out=$TEST_TMPDIR/out
fail() { echo "FAIL: $*"; echo "--- summary.txt"; cat "$out/summary.txt" 2>/dev/null; exit 1; }
(cd "$root" && OUT=$out TMPDIR=$TEST_TMPDIR PYTHON=/usr/bin/python3 EMBER_GPU_BUDGET_S=200 "$script" --dry-run) >"$TEST_TMPDIR/run.log" 2>&1
rc=$?
cat "$TEST_TMPDIR/run.log"
[[ -f $out/summary.txt && -f $out/logs.tar.gz ]] || fail "no summary.txt or logs.tar.gz in OUT"
files=$(cd "$out" && ls -A | sort | tr '\n' ' ')
[[ $files == "logs.tar.gz summary.txt " ]] || fail "OUT holds '$files'; only logs.tar.gz and summary.txt may come back"
grep -q 'DRY RUN' "$out/summary.txt" || fail "the summary does not say DRY RUN"
for s in machine smoke_prebuilt ddp build conformance dp_device peer_missing ddp_nccl_1 train_nccl_1 ddp_nccl_2 train_nccl_2 \
    ddp_nccl_3 train_nccl_3 ddp_big train_big train_alone load_gpu; do
  n=$(grep -c "^$s " "$out/summary.txt")
  [[ $n -eq 1 ]] || fail "step $s appears $n times"
  grep -E "^$s +NOT RUN +0 s  .+" "$out/summary.txt" >/dev/null || fail "step $s needs the GPU machine but is not reported NOT RUN with a reason"
done
for s in rdzv_prebuilt load_carried; do  # run here when fetch_sources.sh's files are there
  grep -E "^$s +(PASS|NOT RUN) " "$out/summary.txt" >/dev/null || fail "step $s neither passed nor was reported NOT RUN"
done
grep -q '^figure:' "$out/summary.txt" && fail "a dry run reports a figure"
tar -tzf "$out/logs.tar.gz" >/dev/null || fail "logs.tar.gz does not list"
[[ $rc -eq 0 ]] || fail "the dry run exited $rc"
# A bad argument is refused with what is allowed.
(cd "$root" && OUT=$TEST_TMPDIR/bad "$script" --dryrun) >"$TEST_TMPDIR/bad.log" 2>&1 && fail "--dryrun was accepted"
grep -q "allowed: --dry-run" "$TEST_TMPDIR/bad.log" || fail "the refusal does not say what is allowed: $(cat "$TEST_TMPDIR/bad.log")"
echo PASS
