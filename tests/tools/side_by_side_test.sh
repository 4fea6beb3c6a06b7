#!/usr/bin/env bash
# tools/bench/side_by_side.py: each run's figure is the median of its epochs after the first, each
# side's min / median / max and ms per step, the ratio of medians; a run without an epoch line and
# a malformed argument are refused naming them.
set -uo pipefail
script=$1
t=$TEST_TMPDIR
fail() { echo "FAIL: $*"; exit 1; }
ember() {  # ember FILE RATE...: a metrics.jsonl
  local f=$1 e=0; shift
  : >"$f"
  for r in "$@"; do e=$((e + 1)); echo "{\"epoch\": $e, \"train_loss\": 0.5599795, \"samples_per_s\": $r}" >>"$f"; done
}
ddp() {  # ddp FILE RATE...: a ddp_baseline.py log, torchrun's noise around its JSON lines
  local f=$1 e=0; shift
  echo "WARNING: torchrun says something" >"$f"
  for r in "$@"; do e=$((e + 1)); echo "{\"baseline\": \"PyTorch DistributedDataParallel\", \"epoch\": $e, \"train_loss\": 0.5599796, \"samples_per_s\": $r}" >>"$f"; done
}
ember "$t/e1" 100 1000 1100 1200; ember "$t/e2" 50 900; ember "$t/e3" 1300 1400 1500
ddp "$t/d1" 80 800; ddp "$t/d2" 90 1000; ddp "$t/d3" 70 1200
python3 "$script" --global_batch=64 "ember:$t/e1,$t/e2,$t/e3" "ddp:$t/d1,$t/d2,$t/d3" >"$t/out" 2>&1 || fail "exit $?: $(cat "$t/out")"
cat "$t/out"
# e1: median(1000, 1100, 1200) = 1100; e2: 900; e3: median(1400, 1500) = 1450.
grep -qx "ember  3 run(s): 1100, 900, 1450 samples/s; min 900, median 1100 (58.182 ms/step), max 1450; train loss after epoch 1: 0.5599795" "$t/out" || fail "ember's line"
grep -qx "ddp    3 run(s): 800, 1000, 1200 samples/s; min 800, median 1000 (64.000 ms/step), max 1200; train loss after epoch 1: 0.5599796" "$t/out" || fail "ddp's line"
grep -qx "ember / ddp (medians): 1.100x" "$t/out" || fail "the ratio"
# A run of one epoch gives that epoch.
ember "$t/one" 777
python3 "$script" "ember:$t/one" >"$t/out1" 2>&1 || fail "one epoch: $(cat "$t/out1")"
grep -q "min 777, median 777, max 777" "$t/out1" || fail "one epoch's figure: $(cat "$t/out1")"
# A failed run (no epoch line) is named, never averaged away.
echo "train: rank 0: error: boom" >"$t/crashed"
python3 "$script" "ember:$t/e1,$t/crashed" "ddp:$t/d1" >"$t/out2" 2>&1 && fail "a crashed run was accepted"
grep -q "$t/crashed has no epoch line" "$t/out2" || fail "the crashed run is not named: $(cat "$t/out2")"
# An unreadable run, a rate that is not > 0, an empty entry and a side given twice are refused.
python3 "$script" "ember:$t/nonexistent" >"$t/out4" 2>&1 && fail "a missing run was accepted"
grep -q "cannot read $t/nonexistent" "$t/out4" || fail "the missing run is not named: $(cat "$t/out4")"
ember "$t/zero" 100 0
python3 "$script" "ember:$t/zero" >"$t/out5" 2>&1 && fail "a rate of 0 was accepted"
grep -q "epoch 2 has samples_per_s 0, not > 0" "$t/out5" || fail "the zero rate is not named: $(cat "$t/out5")"
python3 "$script" "ember:$t/e1" "ember:$t/e2" >"$t/out6" 2>&1 && fail "a side given twice was accepted"
grep -q "the side 'ember' is given twice" "$t/out6" || fail "$(cat "$t/out6")"
# All-reduces a step: Ember's from gradient_buckets_reduced over the epoch's steps, DDP's sizes.
printf '%s\n' '{"epoch": 1, "iteration": 10, "train_loss": 0.5, "samples_per_s": 100, "gradient_buckets_reduced": 40}' \
  '{"epoch": 2, "iteration": 20, "train_loss": 0.4, "samples_per_s": 200, "gradient_buckets_reduced": 40}' >"$t/eb"
printf '%s\n' '{"baseline": "x", "epoch": 1, "train_loss": 0.5, "samples_per_s": 100, "bucket_bytes": [1071144, 1607680]}' >"$t/db"
python3 "$script" "ember:$t/eb" "ddp:$t/db" >"$t/out7" 2>&1 || fail "buckets: $(cat "$t/out7")"
grep -q "^ember .*all-reduces a step: 4$" "$t/out7" && grep -q "^ddp .*all-reduces a step: 2$" "$t/out7" || fail "buckets: $(cat "$t/out7")"
for bad in "ember" "ember:" ":$t/e1" "ember:$t/e1,,$t/e2" "--global_batch=0" "--global_batch=x"; do
  python3 "$script" "$bad" "ddp:$t/d1" >"$t/out3" 2>&1 && fail "'$bad' was accepted"
  grep -q "side_by_side.py" "$t/out3" || fail "'$bad': no message naming the script: $(cat "$t/out3")"
done
echo PASS
