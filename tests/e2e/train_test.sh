#!/usr/bin/env bash
# End-to-end tests of //tools:train, as a user runs it: one process and under mpirun.
# Needs from the machine: mpirun (OpenMPI); full_disk also needs root (unshare -m, mount) and is
# skipped with the reason without it. Writes only under TEST_TMPDIR (or a mktemp directory):
# full_disk's tmpfs is mounted inside a private mount namespace of its own (unshare -m makes every
# mount private), so the machine never sees it, and it goes away with the namespace's last process.
#   train_test.sh TRAIN CKPT MODE
set -uo pipefail
train=$(realpath "$1")
ckpt=$(realpath "$2")
mode=$3
MODE=$mode
source "$(dirname "$0")/lib.sh"
work=${TEST_TMPDIR:-$(mktemp -d)}/$mode
rm -rf "$work"
mkdir -p "$work"
trap kill_jobs EXIT
trap 'exit 143' TERM INT HUP
mpi() { local n=$1; shift; timeout 600 mpirun --oversubscribe -np "$n" --mca btl self,vader "$@"; }

case $mode in
synthetic)
  out=$("$train" --data=synthetic --epochs=8 --output_dir="$work/one" --progress=none 2>&1); rc=$?
  echo "$out" | tail -n 3
  [[ $rc -eq 0 ]] || fail "1 rank exited $rc"
  line=$(finals "$out")
  awk -v s="$(field "$line" best_score)" 'BEGIN { exit !(s > 0.9) }' || fail "1 rank: best_score $(field "$line" best_score) <= 0.9"
  out=$(mpi 4 "$train" --data=synthetic --epochs=8 --output_dir="$work/four" --progress=none 2>&1); rc=$?
  finals "$out"
  [[ $rc -eq 0 ]] || fail "4 ranks exited $rc"
  [[ $(finals "$out" | wc -l) -eq 4 ]] || fail "not 4 final lines"
  # Every rank agrees on where it stopped, why, and which checkpoints exist.
  [[ $(finals "$out" | sed 's/"rank": [0-9]*, //' | sort -u | wc -l) -eq 1 ]] || fail "ranks disagree"
  line=$(finals "$out" | head -n 1)
  awk -v s="$(field "$line" best_score)" 'BEGIN { exit !(s > 0.9) }' || fail "4 ranks: best_score <= 0.9"
  best=$(field "$line" best_checkpoint)
  [[ $best == /* && -f $best ]] || fail "best checkpoint '$best' is not an absolute path to a file"
  "$ckpt" list "$work/four" || fail "ckpt list found a corrupt file"
  [[ $(wc -l <"$work/four/metrics.jsonl") -eq $(field "$line" epoch) ]] || fail "one metrics line per epoch expected"
  grep -q '"world_size": 4' "$work/four/metrics.jsonl" || fail "metrics log lacks world_size"
  # Goodput accounting on every line: where the epoch's time went.
  /usr/bin/python3 - "$work/four/metrics.jsonl" <<'PY' || fail "goodput fields"
import json, sys
for raw in open(sys.argv[1]):
    line = json.loads(raw)
    for k in ("epoch_s", "checkpoint_blocked_s", "checkpoint_blocked_share", "checkpoint_background_s", "collectives_s", "samples_per_s"):
        assert k in line and line[k] >= 0, (k, line)
    assert 0 < line["checkpoint_blocked_s"] < line["epoch_s"], line   # every epoch saves here
    assert 0 < line["collectives_s"] < line["epoch_s"], line           # 4 ranks: gradients, agreements
    assert abs(line["checkpoint_blocked_share"] - line["checkpoint_blocked_s"] / line["epoch_s"]) < 1e-6, line
PY
  # Python reads the best checkpoint with a plain torch.load, and the model state loads strictly.
  /usr/bin/python3 - "$best" <<'PY' || fail "python could not load the checkpoint"
import sys, torch
ck = torch.load(sys.argv[1])
assert set(ck) == {"model", "optimizer", "trainer", "early_stopping", "data", "run", "epoch_so_far"}, ck.keys()
assert ck["run"] == {"global_batch": 256, "batch_size": 64, "world_size": 4, "model": "mlp", "hidden": "256,128", "patience": 3}, ck["run"]
# An epoch-end checkpoint carries nothing of an epoch in progress (zeros: bitwise-stable).
assert ck["epoch_so_far"] == {"output_sum": 0.0, "steps": 0, "samples": 0, "train_s": 0.0, "epoch_s": 0.0}, ck["epoch_so_far"]
# The position in the sample order: a finished epoch of 8192 // 256 global batches of 4 x 64.
d = ck["data"]
assert (d["global_batch"], d["dataset_size"], d["consumed"]) == (256, 8192, 8192), d
assert ck["trainer"]["iteration"] == d["epoch"] * 32, (dict(ck["trainer"]), d)
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
model.load_state_dict(ck["model"])
print("python: loaded", sys.argv[1], "trainer state", dict(ck["trainer"]))
PY
  ;;
cnn)
  # --model=cnn: nothing in the library pieces is MLP-specific (2 ranks, synthetic 8x8 images).
  out=$(mpi 2 "$train" --data=synthetic --model=cnn --hidden=32 --epochs=3 --output_dir="$work/cnn" --progress=none 2>&1); rc=$?
  finals "$out"
  [[ $rc -eq 0 ]] || fail "exited $rc: $(tail -n 3 <<<"$out")"
  line=$(finals "$out" | head -n 1)
  awk -v s="$(field "$line" best_score)" 'BEGIN { exit !(s > 0.8) }' || fail "cnn: best_score $(field "$line" best_score) <= 0.8"
  /usr/bin/python3 - "$(field "$line" best_checkpoint)" <<'PY' || fail "the CNN checkpoint does not load into the same network in Python"
import sys, torch
ck = torch.load(sys.argv[1])
net = torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(128, 32), torch.nn.ReLU(),
                          torch.nn.Linear(32, 10))
net.load_state_dict(ck["model"])
PY
  ;;
nan)
  out=$(mpi 2 "$train" --data=synthetic --epochs=3 --inject_nan=1:7 --output_dir="$work/nan" --progress=none 2>&1); rc=$?
  finals "$out"
  echo "$out" | grep TerminateOnNan
  [[ $rc -eq 3 ]] || fail "expected exit code 3, got $rc"
  [[ $(finals "$out" | grep -c '"iteration": 7, "stopped_by": "terminate_on_nan"') -eq 2 ]] || fail "both ranks must stop at iteration 7"
  grep -q "non-finite output on rank(s) 1 at iteration 7" <<<"$out" || fail "the message does not name rank 1 and iteration 7"
  ;;
resume)
  common=(--data=synthetic --patience=100 --seed=7 --progress=none --n_saved=1)
  mpi 2 "$train" "${common[@]}" --epochs=4 --output_dir="$work/straight" >"$work/a.log" 2>&1 || fail "uninterrupted run: $(tail -n 5 "$work/a.log")"
  mpi 2 "$train" "${common[@]}" --epochs=2 --output_dir="$work/resumed" >"$work/b.log" 2>&1 || fail "first half: $(tail -n 5 "$work/b.log")"
  mpi 2 "$train" "${common[@]}" --epochs=4 --output_dir="$work/resumed" --resume >"$work/c.log" 2>&1 || fail "resumed half: $(tail -n 5 "$work/c.log")"
  grep -q "resumed from $work/resumed/checkpoint_2_" "$work/c.log" || fail "did not resume from epoch 2: $(grep -i resum "$work/c.log")"
  a=$(finals "$(cat "$work/a.log")" | head -n 1)
  c=$(finals "$(cat "$work/c.log")" | head -n 1)
  [[ $(field "$a" iteration) == $(field "$c" iteration) ]] || fail "iterations differ: $a vs $c"
  sa=$("$ckpt" show "$(field "$a" latest_checkpoint)" | grep -o '"model[^}]*}' )
  sc=$("$ckpt" show "$(field "$c" latest_checkpoint)" | grep -o '"model[^}]*}' )
  [[ -n $sa && "$sa" == "$sc" ]] || fail "weights differ after resume:\n$sa\nvs\n$sc"
  echo "weights identical: $(wc -l <<<"$sa") model tensors"
  # Every checkpoint corrupt (a bit flipped inside a tensor, where only the checksum sees it):
  # --resume fails with exit 1 naming the files, moves them aside and trains nothing; with
  # --start_over it trains from scratch, the unusable files kept.
  cp -r "$work/straight" "$work/corrupt"
  for f in "$work"/corrupt/*.pt; do
    /usr/bin/python3 - "$f" <<'PY'
import struct, sys, zipfile
path = sys.argv[1]
info = [i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename and i.file_size >= 8][0]
raw = bytearray(open(path, "rb").read())
n, m = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
raw[info.header_offset + 30 + n + m + 3] ^= 0x10
open(path, "wb").write(bytes(raw))
PY
  done
  out=$(mpi 2 "$train" "${common[@]}" --epochs=6 --output_dir="$work/corrupt" --resume 2>&1); rc=$?
  [[ $rc -eq 1 ]] || fail "resume from only corrupt checkpoints exited $rc: $(tail -n 3 <<<"$out")"
  grep -q "no usable checkpoint to resume from" <<<"$out" || fail "the error does not say why: $(tail -n 3 <<<"$out")"
  grep -q -- "--start_over" <<<"$out" || fail "the error does not name --start_over"
  [[ $(ls "$work"/corrupt/*.pt.corrupt | wc -l) -ge 1 && -z $(ls "$work"/corrupt/*.pt 2>/dev/null) ]] ||
    fail "corrupt checkpoints were not moved aside: $(ls "$work/corrupt")"
  out=$(mpi 2 "$train" "${common[@]}" --epochs=1 --output_dir="$work/corrupt" --resume --start_over 2>&1) ||
    fail "--start_over: $(tail -n 3 <<<"$out")"
  [[ $(ls "$work"/corrupt/*.pt | wc -l) -ge 1 ]] || fail "--start_over wrote no checkpoint"
  # Issue 12.1: rerunning a finished job says so and exits 0, touching nothing.
  before=$(cd "$work/straight" && ls -l --time-style=+%s.%N && md5sum ./*)
  out=$(mpi 2 "$train" "${common[@]}" --epochs=4 --output_dir="$work/straight" --resume 2>&1) || fail "rerun of a finished job: $(tail -n 3 <<<"$out")"
  grep -q "already finished epoch 4 of --epochs=4: nothing to do" <<<"$out" || fail "the rerun does not say it is finished: $(tail -n 3 <<<"$out")"
  [[ $(finals "$out" | grep -c '"epoch": 4, "iteration": ') -eq 2 ]] || fail "final lines: $(finals "$out")"
  after=$(cd "$work/straight" && ls -l --time-style=+%s.%N && md5sum ./*)
  [[ "$before" == "$after" ]] || fail "the rerun touched the directory"
  # Issue 12.7: an error exit (a rank stalls) reports the checkpoints that are on disk.
  mpi 2 "$train" "${common[@]}" --epochs=1000 --output_dir="$work/straight" --resume --deadline_s=2 >"$work/stall.log" 2>&1 &
  job=$!
  for _ in $(seq 1 150); do grep -q "resumed from" "$work/stall.log" && break; sleep 0.2; done
  sleep 0.5
  victim=$(pgrep -f -- "--output_dir=$work/straight" | grep -v "^$job\$" | while read -r p; do
    [[ $(cat /proc/$p/comm) == train ]] && echo "$p"; done | tail -n 1)
  [[ -n $victim ]] || fail "no trainer process found"
  kill -STOP "$victim"
  wait "$job"
  kill -9 "$victim" 2>/dev/null
  finals "$(cat "$work/stall.log")"
  finals "$(cat "$work/stall.log")" | grep -q '"stopped_by": "error", "best_checkpoint": "/' ||
    fail "an error exit must report the checkpoints on disk: $(finals "$(cat "$work/stall.log")")"
  ;;
bad_input)
  expect_error() {  # expected message, then args
    local msg=$1; shift
    out=$("$train" "$@" 2>&1); rc=$?
    [[ $rc -eq 1 ]] || fail "$* exited $rc, expected 1"
    grep -qF -- "$msg" <<<"$out" || fail "$*: message lacks '$msg': $out"
    echo "ok: $* -> $(grep error <<<"$out" | head -n 1)"
  }
  expect_error "--epochs must be >= 1, got 0" --epochs=0 --data=synthetic --output_dir="$work/x"
  expect_error "--hidden='256,x'" --hidden=256,x --data=synthetic --output_dir="$work/x"
  mkdir -p "$work/emptydir"
  expect_error "no train-images-idx3-ubyte or train-images-idx3-ubyte.gz in $work/emptydir" --data=mnist:"$work/emptydir" --output_dir="$work/x"
  printf 'label,a,b\n1,0.5,0.25\n0,0.1\n' >"$work/bad.csv"
  expect_error "bad.csv:3: 1 features, expected 2" --data=csv:"$work/bad.csv" --output_dir="$work/x"
  expect_error "cannot be sharded over 1 ranks with --batch_size=100000" --data=synthetic --batch_size=100000 --output_dir="$work/x"
  mkdir -p "$work/full"
  echo keep >"$work/full/precious.pt"
  expect_error "--output_dir=$work/full already holds a run (precious.pt): pass --resume to continue it" --data=synthetic --output_dir="$work/full"
  [[ $(cat "$work/full/precious.pt") == keep && $(ls "$work/full") == precious.pt ]] || fail "the output dir was touched"
  touch "$work/afile"
  expect_error "is not a directory" --data=synthetic --output_dir="$work/afile"
  out=$(mpi 2 "$train" --epochs=0 --data=synthetic --output_dir="$work/y" 2>&1); rc=$?
  [[ $rc -ne 0 && $(grep -c -- "--epochs must be >= 1" <<<"$out") -eq 2 ]] || fail "2 ranks: each rank must report the bad flag"
  # Issue 12: one message and exit 1, never a LibTorch abort (exit 134), for each of these.
  expect_error "--threads must be in [1, 256], got 0" --threads=0 --data=synthetic --output_dir="$work/x"
  expect_error "--threads must be in [1, 256], got -1" --threads=-1 --data=synthetic --output_dir="$work/x"
  expect_error "--threads must be in [1, 256], got 100000" --threads=100000 --data=synthetic --output_dir="$work/x"
  expect_error "--inject_step_delay_ms must be in [0, 60000], got -5" --inject_step_delay_ms=-5 --data=synthetic --output_dir="$work/x"
  expect_error "--hidden='1,,2': '' is not a layer size" --hidden=1,,2 --data=synthetic --output_dir="$work/x"
  expect_error "--hidden is empty" --hidden= --data=synthetic --output_dir="$work/x"
  expect_error "--model='resnet': allowed: mlp, cnn" --model=resnet --data=synthetic --output_dir="$work/x"
  { echo "label,a,b,c"; for i in $(seq 1 200); do echo "$((i % 2)),0.$i,0.5,1"; done; } >"$work/three.csv"
  expect_error "--model=cnn needs square images of at least 4x4, but the data has 3 features" --model=cnn --data=csv:"$work/three.csv" --output_dir="$work/x"
  expect_error "--lr must be in (0, 10], got 1e+308" --lr=1e308 --data=synthetic --output_dir="$work/x"
  # An IDX label file that says 0 labels.
  mkdir -p "$work/idx0"
  /usr/bin/python3 - "$work/idx0" <<'PY'
import struct, sys
d = sys.argv[1]
for split in ("train", "t10k"):  # one image each, but the label files say 0 labels
    open(f"{d}/{split}-images-idx3-ubyte", "wb").write(struct.pack(">IIII", 2051, 1, 2, 2) + bytes(4))
    open(f"{d}/{split}-labels-idx1-ubyte", "wb").write(struct.pack(">II", 2049, 0))
PY
  expect_error "the header says 0 labels" --data=mnist:"$work/idx0" --output_dir="$work/x"
  # A CSV label far too large for a class index (it would allocate a 2e9-class layer).
  { echo "label,a"; for i in $(seq 1 20); do echo "$((i % 2)),0.$i"; done; echo "2000000000,0.5"; } >"$work/big.csv"
  expect_error "label 2000000000 is too large: labels are class indices 0-9999" --data=csv:"$work/big.csv" --output_dir="$work/x"
  # Real causes, not "missing" or "no data rows".
  mkdir -p "$work/adir.csv"
  expect_error "adir.csv is a directory, not a data file" --data=csv:"$work/adir.csv" --output_dir="$work/x"
  expect_error "stat $work/nodir: No such file or directory" --data=mnist:"$work/nodir" --output_dir="$work/x"
  # The final line is valid JSON whatever the path holds (a tab here).
  out=$("$train" --data=synthetic --epochs=1 --output_dir="$work/tab$(printf '\t')dir" --progress=none 2>/dev/null) || fail "tab in path: exit $?"
  /usr/bin/python3 -c 'import json, sys; d = json.loads(sys.stdin.read().strip().splitlines()[-1]); assert "\t" in d["best_checkpoint"], d' <<<"$out" ||
    fail "the final line is not valid JSON: $out"
  # abseil's own flag errors end with the final line too.
  expect_error "Illegal value 'abc' specified for flag 'epochs'" --epochs=abc
  finals "$out" | grep -q '"stopped_by": "error"' || fail "no final line after a malformed flag: $out"
  expect_error "Unknown command line flag 'epoch'" --epoch=3
  finals "$out" | grep -q '"stopped_by": "error"' || fail "no final line after an unknown flag: $out"
  out=$("$train" --help 2>&1); rc=$?
  [[ $rc -eq 0 ]] || fail "--help exited $rc"
  ;;
preempt)
  mpi 2 "$train" --data=synthetic --epochs=1000 --patience=1000 --output_dir="$work/p" --progress=none >"$work/p.log" 2>&1 &
  job=$!
  for _ in $(seq 1 100); do [[ -f $work/p/metrics.jsonl ]] && break; sleep 0.2; done
  victim=$(pgrep -f -- "--output_dir=$work/p" | grep -v "^$job\$" | while read -r p; do
    [[ $(cat /proc/$p/comm) == train ]] && echo "$p"; done | tail -n 1)
  [[ -n $victim ]] || fail "no trainer process found"
  kill -TERM "$victim"
  wait "$job"; rc=$?
  cat "$work/p.log" | grep -E '^\{"rank"'
  [[ $rc -eq 0 ]] || fail "preempted job exited $rc"
  [[ $(grep -c '"stopped_by": "preempted"' "$work/p.log") -eq 2 ]] || fail "both ranks must report preempted"
  "$ckpt" verify "$work"/p/*.pt || fail "checkpoints after preemption do not verify"
  # A preemption in the last iteration of an epoch (85 of 85) stops after that epoch's evaluation
  # and checkpoint; the resumed run ends bitwise equal to the uninterrupted one (soak trial 196).
  args=(--data=synthetic --epochs=2 --global_batch=96 --patience=100 --progress=none)
  mpi 2 "$train" "${args[@]}" --output_dir="$work/ref" >/dev/null 2>&1 || fail "reference run"
  out=$(mpi 2 "$train" "${args[@]}" --output_dir="$work/edge" --inject_preempt=1:85 2>&1) || fail "preempted run: $out"
  grep -q "preempted at iteration 85" <<<"$out" || fail "not preempted at iteration 85: $out"
  [[ $(wc -l <"$work/edge/metrics.jsonl") -eq 1 ]] || fail "epoch 1's end did not run before the stop"
  ls "$work"/edge/checkpoint_1_*.pt >/dev/null || fail "no epoch-1 checkpoint"
  out=$(mpi 2 "$train" "${args[@]}" --output_dir="$work/edge" --resume 2>&1) || fail "resume: $out"
  st() { "$ckpt" show "$1"/checkpoint_2_*.pt | sed 's/"file": "[^"]*", //'; }
  [[ "$(st "$work/edge")" == "$(st "$work/ref")" ]] || { diff <(st "$work/edge") <(st "$work/ref"); fail "epoch-end preemption: the resumed run differs"; }
  echo "epoch-end preemption: stopped after epoch 1's end; resumed bitwise equal"
  # Issue 24.15: the metrics line of an epoch cut by a preemption covers the whole epoch (its
  # samples and loss as the uninterrupted run's), not only the part after the resume.
  out=$(mpi 2 "$train" "${args[@]}" --output_dir="$work/mid" --inject_preempt=0:130 2>&1) || fail "mid-epoch preemption: $out"
  mpi 2 "$train" "${args[@]}" --output_dir="$work/mid" --resume >/dev/null 2>&1 || fail "mid-epoch resume"
  epoch2() { sed -n 2p "$1/metrics.jsonl"; }
  [[ $(field "$(epoch2 "$work/mid")" train_samples) == $(field "$(epoch2 "$work/ref")" train_samples) ]] ||
    fail "train_samples of the cut epoch: $(epoch2 "$work/mid") vs $(epoch2 "$work/ref")"
  awk -v a="$(field "$(epoch2 "$work/mid")" train_loss)" -v b="$(field "$(epoch2 "$work/ref")" train_loss)" \
    'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-6 * b) }' ||
    fail "train_loss of the cut epoch: $(epoch2 "$work/mid") vs $(epoch2 "$work/ref")"
  echo "mid-epoch preemption: the cut epoch's line covers the whole epoch"
  # A crafted or damaged record is refused, naming it; a record that is absent (Python) is said.
  cut=$(ls "$work"/mid/preempted_checkpoint_130.pt) || fail "no preemption checkpoint at 130"
  for how in huge steps none; do
    /usr/bin/python3 - "$cut" "$work/$how.pt" "$how" <<'PY'
import sys, torch
ck = torch.load(sys.argv[1])
how = sys.argv[3]
if how == "huge":
    ck["epoch_so_far"].update(steps=2**63 - 1, samples=2**63 - 1)
elif how == "steps":
    ck["epoch_so_far"]["steps"] += 1
else:
    del ck["epoch_so_far"]
torch.save(ck, sys.argv[2])
PY
    rm -rf "$work/crafted"
    out=$(mpi 2 "$train" "${args[@]}" --output_dir="$work/crafted" --resume_from="$work/$how.pt" 2>&1); rc=$?
    if [[ $how == none ]]; then
      [[ $rc -eq 0 ]] || fail "a record-less mid-epoch checkpoint: exit $rc: $(tail -n 3 <<<"$out")"
      grep -q 'has no "epoch_so_far" record' <<<"$out" || fail "a record-less mid-epoch checkpoint was not said: $out"
    else
      [[ $rc -eq 1 ]] || fail "a crafted epoch_so_far ($how): exit $rc, expected 1: $(tail -n 3 <<<"$out")"
      grep -q 'DATA_LOSS\|epoch_so_far' <<<"$out" && grep -q '"epoch_so_far" record has "steps"' <<<"$out" ||
        fail "a crafted epoch_so_far ($how) is not named: $out"
    fi
  done
  echo "crafted epoch_so_far records refused, an absent one said"
  ;;
kill9)
  # kill -9 of the whole job at random moments after the first checkpoint exists (often while
  # it saves): at least one checkpoint is there, and whatever is under a final name loads; only
  # temporary files may be torn. (kill -9 cannot test fsync: power loss is the fault-injecting
  # file system's, in //tests/handlers:checkpoint_test.)
  seed=${KILL9_SEED:-$RANDOM}
  RANDOM=$seed
  echo "kill -9 delays drawn with seed $seed (KILL9_SEED=$seed reproduces them)"
  for trial in 1 2 3; do
    dir="$work/k$trial"
    mpi 2 "$train" --data=synthetic --epochs=1000 --patience=1000 --hidden=512,512 --output_dir="$dir" --progress=none >/dev/null 2>&1 &
    job=$!
    shopt -s nullglob
    for ((i = 0; i < 600; ++i)); do
      files=("$dir"/*.pt)
      [[ ${#files[@]} -gt 0 ]] && break
      sleep 0.1
    done
    [[ ${#files[@]} -gt 0 ]] || { pkill -9 -f -- "--output_dir=$dir"; fail "no checkpoint was written within 60 s"; }
    delay=$(printf '%d.%03d' $((RANDOM % 3)) $((RANDOM % 1000)))
    sleep "$delay"
    pkill -9 -f -- "--output_dir=$dir"
    kill -9 "$job" 2>/dev/null
    wait "$job" 2>/dev/null
    files=("$dir"/*.pt)
    echo "killed ${delay}s after the first checkpoint: ${#files[@]} checkpoint(s), temporary: $(ls -A "$dir" | grep -c ember-tmp || true)"
    [[ ${#files[@]} -ge 1 ]] || fail "kill -9 left no checkpoint although one existed before"
    "$ckpt" verify "${files[@]}" || fail "a checkpoint under a final name does not load after kill -9"
  done
  # ...and the next run resumes from them, cleaning up the temporary files.
  out=$(mpi 2 "$train" --data=synthetic --epochs=5 --patience=1000 --hidden=512,512 --output_dir="$work/k3" --resume --progress=none 2>&1) || fail "resume after kill -9: $out"
  [[ $(ls -A "$work/k3" | grep -c ember-tmp) -eq 0 ]] || fail "stale temporary files were not removed"
  ;;
full_disk)
  # --output_dir on a 1.1 MB tmpfs that fills up: the save fails on every rank with the same error
  # naming the file, the earlier checkpoints stay intact, exit code 1.
  if ! unshare -m true 2>/dev/null; then skip "unshare -m is not permitted here (needs root / CAP_SYS_ADMIN)"; fi
  out=$(unshare -m bash -c '
    set -e
    mkdir -p "$1/disk"
    mount -t tmpfs -o size=1100k tmpfs "$1/disk" || exit 77
    timeout 300 mpirun --oversubscribe -np 2 --mca btl self,vader "$2" --data=synthetic --epochs=30 --patience=100 \
      --output_dir="$1/disk/ckpt" --progress=none 2>&1 || echo "exit=$?"
    for f in "$1"/disk/ckpt/*.pt; do "$3" verify "$f" || echo "CORRUPT $f"; done
    ls -la "$1/disk/ckpt"
  ' _ "$work" "$train" "$ckpt" 2>&1); rc=$?
  [[ $rc -eq 77 ]] && skip "mounting a tmpfs is not permitted here"
  echo "$out" | grep -E '^\{"rank"|error|exit=|ok$|CORRUPT|\.pt'
  grep -q "^exit=1$" <<<"$out" || fail "the job must exit 1"
  [[ $(grep -c '"stopped_by": "error"' <<<"$out") -eq 2 ]] || fail "both ranks must print their final line with stopped_by error"
  [[ $(grep -c "No space left on device" <<<"$out") -ge 2 ]] || fail "both ranks must report the full disk"
  grep -q "rank 1: error: rank 0: saving .*/disk/ckpt/checkpoint_.*\.pt failed" <<<"$out" || fail "rank 1 must report rank 0's error naming the file"
  ! grep -q CORRUPT <<<"$out" || fail "a checkpoint left on the full disk does not load"
  [[ $(grep -c ': ok (' <<<"$out") -ge 1 ]] || fail "no earlier checkpoint survived"
  ;;
fashion_mnist)
  out=$(mpi 2 "$train" --epochs=3 --output_dir="$work/fm" --progress=none 2>&1); rc=$?
  echo "$out" | grep -E 'val_accuracy|"rank"'
  [[ $rc -eq 0 ]] || fail "exited $rc"
  line=$(finals "$out" | head -n 1)
  awk -v s="$(field "$line" best_score)" 'BEGIN { exit !(s > 0.85) }' || fail "test accuracy $(field "$line" best_score) <= 0.85"
  ;;
ckpt_tool)
  # Issue 12.11: list and verify apply the same checks to any torch.save archive: the zip CRC-32
  # of every record, Ember's checksum where present, and a safe parse of the pickle.
  "$train" --data=synthetic --epochs=1 --output_dir="$work/run" --progress=none >/dev/null 2>&1 || fail "training run failed"
  ember=$(ls "$work"/run/*.pt | head -n 1)
  /usr/bin/python3 - "$work" "$ember" <<'PY' || fail "could not build the test files"
import re, struct, sys, zipfile, zlib, torch
work, ember = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = torch.nn.Linear(64, 32)
torch.save({"model": model.state_dict()}, f"{work}/python.pt")
def flip_in_tensor(src, dst):
    raw = bytearray(open(src, "rb").read())
    info = [i for i in zipfile.ZipFile(src).infolist() if "/data/" in i.filename and i.file_size >= 64][0]
    n, m = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + n + m + 5] ^= 0x01
    open(dst, "wb").write(bytes(raw))
flip_in_tensor(f"{work}/python.pt", f"{work}/python_flipped.pt")
# A hostile pickle in an Ember checkpoint whose Ember checksum was forged to match it.
src = zipfile.ZipFile(ember)
records = {i.filename: src.read(i.filename) for i in src.infolist()}
top = next(iter(records)).split("/")[0]
records[f"{top}/data.pkl"] = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85q\x01Rq\x02."
lines = ["ember-checkpoint 1"]
for name, data in records.items():
    short = name.split("/", 1)[1]
    if short != "ember_checksum":
        lines.append(f"crc32 {short} {zlib.crc32(data):08x} {len(data)}")
records[f"{top}/ember_checksum"] = ("\n".join(lines) + "\n").encode()
with zipfile.ZipFile(f"{work}/hostile.pt", "w", zipfile.ZIP_STORED) as out:
    for name, data in records.items():
        out.writestr(name, data)
PY
  out=$("$ckpt" verify "$work/python.pt" "$ember" 2>&1) || fail "intact files must verify: $out"
  echo "$out"
  grep -q "python.pt: ok (.* records: zip CRC-32; no Ember checksum, pickle parsed)" <<<"$out" || fail "python file: $out"
  grep -q "checkpoint_.*: ok (.* records: zip CRC-32 and Ember checksum, pickle parsed)" <<<"$out" || fail "ember file: $out"
  for bad in python_flipped hostile; do
    out=$("$ckpt" verify "$work/$bad.pt" 2>&1); rc=$?
    echo "$out"
    [[ $rc -eq 1 ]] || fail "verify $bad.pt exited $rc: $out"
  done
  grep -q "zip CRC-32 mismatch in record data/" <<<"$("$ckpt" verify "$work/python_flipped.pt")" || fail "the flipped byte is not named"
  grep -q "os.system" <<<"$("$ckpt" verify "$work/hostile.pt")" || fail "the hostile global is not named"
  mkdir -p "$work/listed"
  cp "$work/python.pt" "$work/python_flipped.pt" "$work/hostile.pt" "$ember" "$work/listed/"
  out=$("$ckpt" list "$work/listed" 2>&1); rc=$?
  echo "$out"
  [[ $rc -eq 1 ]] || fail "list of a directory with bad files exited $rc"
  for f in python_flipped hostile; do grep -q "^$f.pt .*CORRUPT: " <<<"$out" || fail "list does not reject $f.pt"; done
  [[ $(grep -c " ok (" <<<"$out") -eq 2 ]] || fail "list must accept exactly the two intact files"
  out=$("$ckpt" verify "$work/listed" 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q "is a directory" <<<"$out" || fail "verify on a directory: $out"
  ;;
output_dir)
  # Issue 12.4: the output directory belongs to one run. A directory holding a run's metrics but
  # no checkpoint is refused without --resume, naming the trainer's flags; nothing is touched.
  mkdir -p "$work/old"
  echo '{"epoch": 1, "iteration": 10}' >"$work/old/metrics.jsonl"
  out=$("$train" --data=synthetic --epochs=1 --output_dir="$work/old" --progress=none 2>&1); rc=$?
  [[ $rc -eq 1 ]] || fail "a directory with metrics.jsonl was accepted without --resume (exit $rc)"
  grep -qF -- "--output_dir=$work/old already holds a run (metrics.jsonl): pass --resume to continue it" <<<"$out" || fail "message: $out"
  ! grep -q "require_empty" <<<"$out" || fail "the message names ignite's API, not the trainer's flags"
  [[ $(cat "$work/old/metrics.jsonl") == '{"epoch": 1, "iteration": 10}' ]] || fail "metrics.jsonl was touched"
  # A second trainer on a directory in use fails, naming the holder; the first is undisturbed.
  "$train" --data=synthetic --epochs=1000 --patience=1000 --output_dir="$work/busy" --progress=none >"$work/busy.log" 2>&1 &
  first=$!
  for _ in $(seq 1 100); do [[ -s $work/busy/metrics.jsonl ]] && break; sleep 0.2; done
  out=$("$train" --data=synthetic --epochs=1000 --output_dir="$work/busy" --resume --progress=none 2>&1); rc=$?
  [[ $rc -eq 1 ]] || fail "a second trainer on a directory in use exited $rc"
  grep -qF -- "--output_dir: $work/busy is in use by another run (pid $first on host" <<<"$out" || fail "message: $out"
  kill -0 "$first" || fail "the first trainer died"
  kill -TERM "$first"
  wait "$first" || fail "the first trainer exited $? after SIGTERM"
  grep -q '"stopped_by": "preempted"' "$work/busy.log" || fail "the first trainer did not stop cleanly"
  # A lock left by a killed trainer is not in force: the next run resumes at once.
  "$train" --data=synthetic --epochs=1000 --patience=1000 --output_dir="$work/busy" --resume --progress=none >/dev/null 2>&1 &
  victim=$!
  sleep 2
  kill -9 "$victim"; wait "$victim" 2>/dev/null
  [[ -f $work/busy/.ember.lock ]] || fail "no lock file"
  out=$("$train" --data=synthetic --epochs=1 --output_dir="$work/busy" --resume --progress=none 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q "already at epoch" <<<"$out" || fail "after kill -9 the lock was still in force: $out"

  # Issue 12.2: a checkpoint written in Python (the layout ckpt show prints, no Ember metadata)
  # is seen and said; --resume fails naming it; --resume_from continues from it.
  "$train" --data=synthetic --epochs=2 --output_dir="$work/src" --progress=none >/dev/null 2>&1 || fail "source run"
  mkdir -p "$work/py"
  /usr/bin/python3 - "$work/src" "$work/py/from_python.pt" <<'PY' || fail "python re-save"
import glob, sys, torch
src = sorted(glob.glob(sys.argv[1] + "/checkpoint_2_*.pt"))[0]
ck = torch.load(src)
torch.save({k: ck[k] for k in ("model", "optimizer", "trainer", "early_stopping")}, sys.argv[2])
PY
  out=$("$train" --data=synthetic --epochs=3 --output_dir="$work/py" --resume --progress=none 2>&1); rc=$?
  [[ $rc -eq 1 ]] || fail "--resume with only a Python-written checkpoint exited $rc"
  grep -q "from_python.pt: not written by Ember (no ember_meta record)" <<<"$out" || fail "the file is not named with its reason: $out"
  grep -q -- "--resume_from=PATH" <<<"$out" || fail "the message does not name --resume_from: $out"
  out=$("$train" --data=synthetic --epochs=3 --output_dir="$work/py" --resume_from="$work/py/from_python.pt" --progress=none 2>&1) ||
    fail "--resume_from a Python checkpoint: $out"
  grep -q "resumed from $work/py/from_python.pt" <<<"$out" || fail "not resumed: $out"
  [[ $(field "$(finals "$out")" epoch) == 3 && $(wc -l <"$work/py/metrics.jsonl") -eq 1 ]] || fail "expected one more epoch: $out"
  [[ -f $work/py/from_python.pt ]] || fail "the Python file was removed"

  # Issue 12.3: settings that change what an epoch means are refused, naming the flag and both
  # values; a --momentum given on the command line replaces the checkpoint's.
  out=$("$train" --data=synthetic --epochs=3 --output_dir="$work/src" --resume --batch_size=32 --progress=none 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q -- "this run's global batch is 32 (32 per rank x 1 rank(s)) but .* was trained with a global batch of 64" <<<"$out" ||
    fail "batch size change: $out"
  out=$(mpi 2 "$train" --data=synthetic --epochs=3 --output_dir="$work/src" --resume --progress=none 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q "this run's global batch is 128 (64 per rank x 2 rank(s)) but .* resume with --global_batch=64" <<<"$out" ||
    fail "world size change without --global_batch: $out"
  out=$("$train" --data=synthetic --epochs=3 --output_dir="$work/src" --resume --momentum=0.5 --progress=none 2>&1) || fail "momentum: $out"
  grep -q -- "--momentum=0.5 replaces the checkpoint's 0.9" <<<"$out" || fail "the new momentum is not said: $out"
  /usr/bin/python3 - "$(field "$(finals "$out")" latest_checkpoint)" <<'PY' || fail "the new momentum was not used"
import sys, torch
m = torch.load(sys.argv[1])["optimizer"]["param_groups"][0]["momentum"]
assert m == 0.5, m
PY

  # Issue 12.5: a resume from an older checkpoint (the newest is corrupt) leaves metrics.jsonl
  # reading as one run; the file resumed from is dropped by retention once a newer one is durable.
  "$train" --data=synthetic --epochs=3 --n_saved=3 --output_dir="$work/m" --progress=none >/dev/null 2>&1 || fail "metrics run"
  newest=$(ls -t "$work"/m/*.pt | head -n 1)
  printf 'garbage' | dd of="$newest" bs=1 seek=2000 conv=notrunc status=none
  out=$("$train" --data=synthetic --epochs=5 --n_saved=1 --output_dir="$work/m" --resume --progress=none 2>&1) || fail "resume: $out"
  grep -q "dropped 1 line(s) after iteration 256" <<<"$out" || fail "the truncation is not said: $out"
  /usr/bin/python3 - "$work/m/metrics.jsonl" <<'PY' || fail "metrics.jsonl does not read as one run: $(cat "$work/m/metrics.jsonl")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert [l["epoch"] for l in lines] == [1, 2, 3, 4, 5], lines
PY
  line=$(finals "$out")
  on_disk=$(cd "$work/m" && ls *.pt | sort | tr '\n' ' ')
  expected=$(printf '%s\n' "$(basename "$(field "$line" best_checkpoint)")" "$(basename "$(field "$line" latest_checkpoint)")" | sort -u | tr '\n' ' ')
  [[ $on_disk == "$expected" ]] || fail "checkpoints on disk: $on_disk; expected only best and latest: $expected"
  ;;
resume_anywhere)
  # Issue 14: a preemption mid-epoch saves where the run is; the resumed run continues at the next
  # global batch on the same or another number of ranks, every sample of every finished epoch
  # used exactly once (the ledger), and ends as the uninterrupted run (bitwise on the same world
  # size, within 1e-4 of its validation loss on another).
  c=(--data=synthetic --epochs=3 --global_batch=96 --ledger --patience=100 --progress=none)
  last() { tail -n 1 "$1/metrics.jsonl"; }
  # The model, optimizer, handler and data state of the final checkpoint, without timings.
  state() { "$ckpt" show "$1"/checkpoint_3_*.pt | sed 's/"file": "[^"]*", //'; }
  close() { /usr/bin/python3 -c "import sys; a, b = map(float, sys.argv[1:]); sys.exit(abs(a - b) > 1e-4)" "$1" "$2"; }
  for n in 1 2 4; do
    out=$(mpi $n "$train" "${c[@]}" --output_dir="$work/u$n" 2>&1) || fail "uninterrupted on $n: $out"
  done
  # 0. Issue 13: --async_save (the copy and the write on a background thread, the step waiting
  #    at the fence before optimizer.step()) ends bitwise equal to synchronous saves, with the
  #    write time of its files accounted as background time.
  out=$(mpi 2 "$train" "${c[@]}" --async_save --output_dir="$work/async" 2>&1) || fail "--async_save: $out"
  [[ "$(state "$work/async")" == "$(state "$work/u2")" ]] || { diff <(state "$work/async") <(state "$work/u2"); fail "--async_save differs from synchronous saves"; }
  /usr/bin/python3 - "$work/async/metrics.jsonl" <<'PY' || fail "--async_save: no background write time in metrics.jsonl"
import json, sys
lines = [json.loads(raw) for raw in open(sys.argv[1])]
# Each background write is counted in the window of the epoch in which it ended: the same epoch's
# line when it ended before that line was written (a small state on a fast disk), else the next
# one's. So the total, not each line, says the writes were accounted.
assert all(l["checkpoint_background_s"] >= 0 for l in lines), lines
assert sum(l["checkpoint_background_s"] for l in lines) > 0, lines
PY
  "$ckpt" verify "$work"/async/*.pt || fail "--async_save wrote a file that does not verify"
  # 1. 2 -> 2 ranks, preempted at iteration 100 (epoch 2 of 85-iteration epochs): bitwise.
  out=$(mpi 2 "$train" "${c[@]}" --output_dir="$work/same" --inject_preempt=1:100 2>&1) || fail "preempted run: $out"
  [[ $(grep -c '"stopped_by": "preempted"' <<<"$out") -eq 2 && $(grep -c '"iteration": 100,' <<<"$out") -eq 2 ]] ||
    fail "both ranks must stop at iteration 100: $out"
  grep -E "preempted at iteration 100; .*preempted_checkpoint_100.pt durable [0-9]+ ms after the signal" <<<"$out" ||
    fail "the signal-to-durable time is not said: $out"
  out=$(mpi 2 "$train" "${c[@]}" --output_dir="$work/same" --resume 2>&1) || fail "resume 2 -> 2: $out"
  grep -q "resumed from $work/same/preempted_checkpoint_100.pt" <<<"$out" || fail "not resumed from the preemption: $out"
  [[ "$(state "$work/same")" == "$(state "$work/u2")" ]] || { diff <(state "$work/same") <(state "$work/u2"); fail "2 -> 2 differs from the uninterrupted run"; }
  "$ckpt" ledger "$work/same" || fail "ledger 2 -> 2"
  # 2. Other world sizes: 4 -> 2, 2 -> 3, 1 -> 4, 4 -> 1 (the global batch of 96 fixed), each
  #    preempted mid-epoch. (A stop agreed in an epoch's last iteration waits for the epoch's end,
  #    whose checkpoint is then as new as the preemption's: train_preempt_test covers that case.)
  for pair in 4:2:120 2:3:50 1:4:160 4:1:30; do
    IFS=: read -r a b at <<<"$pair"
    d="$work/w$a-$b"
    out=$(mpi "$a" "$train" "${c[@]}" --output_dir="$d" --inject_preempt=0:"$at" 2>&1) || fail "$a ranks preempted: $out"
    out=$(mpi "$b" "$train" "${c[@]}" --output_dir="$d" --resume 2>&1) || fail "resume $a -> $b: $out"
    grep -q "resumed from $d/preempted_checkpoint_$at.pt" <<<"$out" || fail "$a -> $b: not resumed at iteration $at: $out"
    m=$(last "$d")
    echo "$a -> $b at iteration $at: $m"
    [[ $(field "$m" epoch) == 3 && $(field "$m" iteration) == 255 && $(field "$m" world_size) == "$b" ]] || fail "$a -> $b: $m"
    close "$(field "$m" val_loss)" "$(field "$(last "$work/u$a")" val_loss)" ||
      fail "$a -> $b: val_loss $(field "$m" val_loss) is not within 1e-4 of the uninterrupted $(field "$(last "$work/u$a")" val_loss)"
    "$ckpt" ledger "$d" || fail "ledger $a -> $b"
  done
  # 3. A corrupt newest checkpoint: the resume falls back to the epoch-1 one (iteration 85), the
  #    ledger is cut back there, and still proves exactly-once at the end.
  d="$work/corrupt"
  mpi 2 "$train" "${c[@]}" --output_dir="$d" --inject_preempt=0:150 >/dev/null 2>&1 || fail "preempted run (corrupt)"
  printf 'garbage' | dd of="$d/preempted_checkpoint_150.pt" bs=1 seek=2000 conv=notrunc status=none
  out=$(mpi 2 "$train" "${c[@]}" --output_dir="$d" --resume 2>&1) || fail "resume past a corrupt checkpoint: $out"
  grep -q "resumed from $d/checkpoint_1_" <<<"$out" && grep -q "ledger: dropped .* after iteration 85" <<<"$out" ||
    fail "no fallback to the epoch-1 checkpoint: $out"
  [[ -f $d/preempted_checkpoint_150.pt.corrupt ]] || fail "the corrupt file was not set aside"
  "$ckpt" ledger "$d" || fail "ledger after the fallback"
  # 4. Refused before training, touching nothing: a global batch the new world size cannot
  #    divide, another global batch, another model.
  d="$work/w4-2"
  before=$(cd "$d" && find . -type f ! -name .ember.lock | sort | xargs md5sum)
  out=$(mpi 5 "$train" "${c[@]}" --output_dir="$d" --resume 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q -- "--global_batch=96 is not divisible by the 5 rank(s) of this job" <<<"$out" || fail "5 ranks: $out"
  out=$(mpi 2 "$train" --data=synthetic --epochs=4 --ledger --progress=none --output_dir="$d" --resume 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q "this run's global batch is 128 (64 per rank x 2 rank(s)) but .* was trained with a global batch of 96: .* resume with --global_batch=96" <<<"$out" ||
    fail "another global batch: $out"
  out=$(mpi 2 "$train" "${c[@]}" --epochs=4 --hidden=32 --output_dir="$d" --resume 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -qi "shape\|size" <<<"$out" || fail "another model: $out"
  [[ "$(cd "$d" && find . -type f ! -name .ember.lock | sort | xargs md5sum)" == "$before" ]] || fail "a refused resume changed the output directory"
  ;;
eval_shards)
  # Issue 12.10: with 3 ranks every held-out sample is evaluated exactly once, the accuracy equals
  # that of the same weights on 1 and 2 ranks, and the training count is whole global batches.
  out=$(mpi 3 "$train" --data=synthetic --epochs=1 --output_dir="$work/e" --progress=none 2>&1) || fail "3 ranks: $out"
  m=$(tail -n 1 "$work/e/metrics.jsonl")
  echo "$m"
  [[ $(field "$m" val_samples) == 2048 ]] || fail "3 ranks evaluated $(field "$m" val_samples) of 2048 samples"
  [[ $(field "$m" train_samples) == 8064 ]] || fail "3 ranks trained on $(field "$m" train_samples) samples, expected 42 global batches of 3 x 64 = 8064 (8192 // 192)"
  for n in 1 2; do
    out=$(mpi $n "$train" --data=synthetic --epochs=1 --output_dir="$work/e" --resume --eval_only --progress=none 2>&1) || fail "eval on $n: $out"
    e=$(grep '^{"checkpoint"' <<<"$out")
    echo "$n rank(s): $e"
    [[ $(field "$e" val_samples) == 2048 && $(field "$e" val_accuracy) == $(field "$m" val_accuracy) ]] ||
      fail "$n rank(s): $e differs from the 3-rank evaluation $m"
  done
  # Shards of 512 and 513 samples (6150 rows, the last 1025 held out, 2 ranks): cut every 512
  # they were one batch against two, and the evaluator's start agreement refused the run after
  # its first epoch ("epoch_length is 1 on rank 0, 2 on rank 1"). Every rank now cuts its shard
  # into the same number of batches.
  /usr/bin/python3 -c 'import sys; sys.stdout.write("label,a,b\n" + "".join("%d,%d,%d\n" % (i % 2, i % 7, i % 5) for i in range(6150)))' >"$work/uneven.csv"
  out=$(mpi 2 "$train" --data=csv:"$work/uneven.csv" --epochs=1 --output_dir="$work/u" --progress=none 2>&1) || fail "uneven shards on 2 ranks: $out"
  m=$(tail -n 1 "$work/u/metrics.jsonl")
  echo "$m"
  [[ $(field "$m" val_samples) == 1025 ]] || fail "uneven shards: evaluated $(field "$m" val_samples) of 1025 samples"
  ;;
agree)
  # Issue 23: the run-defining flags are agreed once at start. An MPMD job whose ranks differ in
  # one of them ends with the same error on every rank naming the flag and each rank's value, a
  # final line on every rank, exit 1, and nothing written.
  base=(--data=synthetic --progress=none --deadline_s=20)
  mpmd() {  # expected message, rank 0's extra flags, then '--', rank 1's extra flags
    local msg=$1; shift
    local a=() b=()
    while [[ $1 != -- ]]; do a+=("$1"); shift; done
    shift
    b=("$@")
    rm -rf "$work/d"
    out=$(timeout 300 mpirun --oversubscribe --mca btl self,vader -np 1 "$train" "${base[@]}" --output_dir="$work/d" "${a[@]}" : \
      -np 1 "$train" "${base[@]}" --output_dir="$work/d" "${b[@]}" 2>&1); rc=$?
    [[ $rc -eq 1 ]] || fail "${a[*]} vs ${b[*]}: exit $rc, expected 1: $(tail -n 5 <<<"$out")"
    [[ $(finals "$out" | grep -c '"stopped_by": "error"') -eq 2 ]] || fail "${a[*]} vs ${b[*]}: not 2 error final lines: $out"
    for r in 0 1; do
      grep -qF -- "train: rank $r: error: trainer flags differ across ranks: $msg" <<<"$out" ||
        fail "${a[*]} vs ${b[*]}: rank $r does not say '$msg': $out"
    done
    [[ ! -e $work/d ]] || fail "${a[*]} vs ${b[*]}: the output directory was created: $(ls -A "$work/d")"
    echo "ok: ${a[*]} vs ${b[*]} -> $msg"
  }
  mpmd "--lr is 0.1 on rank 0, 0.2 on rank 1" --lr=0.1 -- --lr=0.2
  mpmd "--batch_size is 64 on rank 0, 32 on rank 1" --batch_size=64 -- --batch_size=32
  mpmd "--epochs is 3 on rank 0, 4 on rank 1" --epochs=3 -- --epochs=4
  mpmd "--patience is 2 on rank 0, 5 on rank 1" --patience=2 -- --patience=5
  mpmd "--seed is 1 on rank 0, 7 on rank 1" --seed=1 -- --seed=7
  mpmd "--hidden is 64 on rank 0, 32 on rank 1" --hidden=64 -- --hidden=32
  mpmd "--eval_only is false on rank 0, true on rank 1" --resume -- --resume --eval_only
  mpmd "--bucket_mib is 1 on rank 0, 2 on rank 1" --bucket_mib=1 -- --bucket_mib=2
  mpmd "--output_dir is $work/d on rank 0, $work/e on rank 1" -- --output_dir="$work/e"
  # --lr given on one rank only: on a resume it would replace the checkpoint's there and not on
  # the other rank, so it differs even at the default's value.
  mpmd "--lr is 0.05 (default) on rank 0, 0.05 on rank 1" -- --lr=0.05
  # The default given explicitly on one rank (--n_saved=2) is the same run: it trains.
  rm -rf "$work/d"
  out=$(timeout 300 mpirun --oversubscribe --mca btl self,vader -np 1 "$train" "${base[@]}" --epochs=1 --output_dir="$work/d" : \
    -np 1 "$train" "${base[@]}" --epochs=1 --output_dir="$work/d" --n_saved=2 2>&1) ||
    fail "--n_saved=2 on rank 1 only (the default) did not train: $(tail -n 5 <<<"$out")"
  [[ $(finals "$out" | grep -c '"stopped_by": "completed"') -eq 2 ]] || fail "an explicit default: $(finals "$out")"
  [[ ! -e $work/e ]] || fail "rank 1's output directory was created"
  # Strict mode (EMBER_DISTRIBUTED_DEBUG=DETAIL) on rank 1 only: agreed when the World is made, so
  # both ranks fail at once naming it, instead of pairing one rank's fingerprints with the other's
  # collectives until a deadline (issue 23, review item c).
  rm -rf "$work/d"
  start=$SECONDS
  out=$(timeout 300 mpirun --oversubscribe --mca btl self,vader -np 1 "$train" "${base[@]}" --output_dir="$work/d" : \
    -np 1 -x EMBER_DISTRIBUTED_DEBUG=DETAIL "$train" "${base[@]}" --output_dir="$work/d" 2>&1); rc=$?
  [[ $rc -eq 1 ]] || fail "strict mode on rank 1 only: exit $rc, expected 1: $(tail -n 5 <<<"$out")"
  [[ $(grep -cF "train: error: EMBER_DISTRIBUTED_DEBUG differs across ranks: DETAIL (strict mode) on rank(s) 1, not on rank(s) 0" <<<"$out") -eq 2 ]] ||
    fail "strict mode on rank 1 only: not both ranks named it: $out"
  (( SECONDS - start < 15 )) || fail "strict mode on rank 1 only: took $((SECONDS - start)) s (a deadline was waited out)"
  [[ ! -e $work/d ]] || fail "strict mode on rank 1 only: the output directory was created"
  echo "ok: EMBER_DISTRIBUTED_DEBUG=DETAIL on rank 1 only -> both ranks name it"
  # A value that is no level (a typo) on rank 1 only: refused on both ranks at once, naming rank 1
  # (it used to be refused on rank 1 before any communicator existed, and rank 0 waited for it).
  rm -rf "$work/d"
  start=$SECONDS
  out=$(timeout 300 mpirun --oversubscribe --mca btl self,vader -np 1 "$train" "${base[@]}" --output_dir="$work/d" : \
    -np 1 -x EMBER_DISTRIBUTED_DEBUG=detial "$train" "${base[@]}" --output_dir="$work/d" 2>&1); rc=$?
  [[ $rc -eq 1 ]] || fail "a bad EMBER_DISTRIBUTED_DEBUG on rank 1: exit $rc, expected 1: $(tail -n 5 <<<"$out")"
  [[ $(grep -cF "train: error: EMBER_DISTRIBUTED_DEBUG is not a debug level on rank(s) 1 (this rank's: " <<<"$out") -eq 2 ]] ||
    fail "a bad EMBER_DISTRIBUTED_DEBUG on rank 1: not both ranks named it: $out"
  grep -qF "(this rank's: 'detial'); allowed, in any case: OFF, INFO" <<<"$out" || fail "rank 1 did not show its value: $out"
  (( SECONDS - start < 15 )) || fail "a bad EMBER_DISTRIBUTED_DEBUG on rank 1: took $((SECONDS - start)) s"
  [[ ! -e $work/d ]] || fail "a bad EMBER_DISTRIBUTED_DEBUG on rank 1: the output directory was created"
  echo "ok: EMBER_DISTRIBUTED_DEBUG=detial on rank 1 only -> both ranks name it"
  # A flag error on one rank only: the other rank names it instead of waiting.
  mpmd "--n_saved is 2 on rank 0, 0 on rank 1; flag error is (absent) on rank 0, --n_saved must be >= 1, got 0 on rank 1" -- --n_saved=0
  # A failure of one rank alone, outside any collective (the same --data=csv:d.csv, but each
  # rank's working directory holds another file, as per-node paths do; rank 1's is malformed):
  # rank 0 fails at once with rank 1's error, not after --deadline_s=60.
  # The trainer on 2 ranks, each in its own working directory (per-node paths), both reading
  # --data=csv:d.csv there.
  two_dirs() {
    timeout 300 mpirun --oversubscribe --mca btl self,vader -np 1 -wdir "$work/$1" "$train" --data=csv:d.csv \
      --deadline_s=60 --progress=none --output_dir="$work/d" : -np 1 -wdir "$work/$2" "$train" --data=csv:d.csv \
      --deadline_s=60 --progress=none --output_dir="$work/d" 2>&1
  }
  mkdir -p "$work/wa" "$work/wb"
  /usr/bin/python3 -c 'import sys; sys.stdout.write("".join("%d,%d,%d\n" % (i % 2, i % 7, i % 5) for i in range(600)))' >"$work/wa/d.csv"
  sed '3s/.*/1,2/' "$work/wa/d.csv" >"$work/wb/d.csv"
  rm -rf "$work/d"
  start=$(date +%s)
  out=$(two_dirs wa wb); rc=$?
  took=$(( $(date +%s) - start ))
  [[ $rc -eq 1 ]] || fail "one rank's bad data: exit $rc: $(tail -n 5 <<<"$out")"
  grep -q "train: rank 1: error: d.csv:3: 1 features, expected 2" <<<"$out" || fail "rank 1 does not name its error: $out"
  grep -q "train: rank 0: error: .*rank 1 failed: INVALID_ARGUMENT: d.csv:3: 1 features" <<<"$out" ||
    fail "rank 0 does not name rank 1's failure: $out"
  [[ $(finals "$out" | grep -c '"stopped_by": "error"') -eq 2 ]] || fail "not 2 error final lines: $out"
  [[ $took -lt 30 ]] || fail "one rank's bad data: took ${took}s (the deadline was waited out)"
  echo "ok: one rank's bad data ends both ranks in ${took}s, rank 0 naming rank 1's error"
  # The same --data text, another content on rank 1 (one label changed, well-formed: a stale copy
  # on one node): the data's content is agreed at start (M5), both ranks name each rank's CRC.
  mkdir -p "$work/wc"
  sed '3s/^0,/1,/' "$work/wa/d.csv" >"$work/wc/d.csv"
  rm -rf "$work/d"
  out=$(two_dirs wa wc); rc=$?
  [[ $rc -eq 1 ]] || fail "one rank's other data: exit $rc: $(tail -n 5 <<<"$out")"
  for r in 0 1; do
    grep -qE "train: rank $r: error: training data \(--data=csv:d.csv\) differ across ranks: (train|validation) split is [0-9]+ samples of 2 features, crc32 [0-9a-f]{8} on rank 0, [0-9]+ samples of 2 features, crc32 [0-9a-f]{8} on rank 1" <<<"$out" ||
      fail "one rank's other data: rank $r does not name the data's difference: $out"
  done
  [[ ! -e $work/d ]] || [[ -z $(ls "$work/d"/*.pt 2>/dev/null) ]] || fail "one rank's other data: a checkpoint was written"
  echo "ok: the same --data with another content on rank 1 is refused at start, naming both CRCs"
  # A smaller stale copy on rank 1 (50 rows: too few training samples for 2 ranks of 64): the
  # same agreement error on both ranks, not rank 1's own "cannot be sharded" (rank 0 waiting).
  mkdir -p "$work/wd"
  head -n 50 "$work/wa/d.csv" >"$work/wd/d.csv"
  rm -rf "$work/d"
  out=$(two_dirs wa wd); rc=$?
  [[ $rc -eq 1 ]] || fail "one rank's smaller data: exit $rc: $(tail -n 5 <<<"$out")"
  for r in 0 1; do
    grep -qE "train: rank $r: error: training data \(--data=csv:d.csv\) differ across ranks: .* on rank 0, [0-9]+ samples of 2 features, crc32 [0-9a-f]{8} on rank 1" <<<"$out" ||
      fail "one rank's smaller data: rank $r does not name the data's difference: $out"
  done
  echo "ok: a smaller stale copy on rank 1 is refused at start on both ranks, naming the difference"
  ;;
finished)
  # Issue 24.5: a run that ended by a decision (early stopping) is finished: --resume changes
  # nothing, trains nothing and exits with the same outcome, every time.
  c=(--data=synthetic --epochs=40 --patience=1 --n_saved=1 --lr=0.5 --momentum=0 --progress=none)
  out=$(mpi 2 "$train" "${c[@]}" --output_dir="$work/es" 2>&1); rc=$?
  first=$(finals "$out" | head -n 1)
  echo "$first"
  [[ $rc -eq 0 && $(field "$first" stopped_by) == early_stopping ]] || fail "the setup run did not stop early: $first"
  for attempt in 1 2; do
    before=$(cd "$work/es" && ls -l --time-style=+%s.%N && md5sum ./*)
    out=$(mpi 2 "$train" "${c[@]}" --output_dir="$work/es" --resume 2>&1); rc=$?
    again=$(finals "$out" | head -n 1)
    [[ $rc -eq 0 ]] || fail "rerun $attempt exited $rc: $(tail -n 3 <<<"$out")"
    [[ $(finals "$out" | grep -c '"stopped_by": "early_stopping"') -eq 2 ]] || fail "rerun $attempt: $(finals "$out")"
    [[ $(field "$again" epoch) == $(field "$first" epoch) && $(field "$again" iteration) == $(field "$first" iteration) ]] ||
      fail "rerun $attempt trained: $first vs $again"
    grep -q "already stopped by EarlyStopping at epoch $(field "$first" epoch): nothing to do" <<<"$out" ||
      fail "rerun $attempt does not say it is finished: $(grep -v '^{' <<<"$out" | tail -n 3)"
    after=$(cd "$work/es" && ls -l --time-style=+%s.%N && md5sum ./*)
    [[ "$before" == "$after" ]] || fail "rerun $attempt touched the directory"
  done
  # Only a stop that happened is "finished": the epoch before the stop (EarlyStopping's counter
  # at 1 of --patience=2), resumed with --patience=1, trains on (and EarlyStopping stops it at
  # its next evaluation without improvement), never "already stopped".
  c=(--data=synthetic --epochs=40 --patience=2 --n_saved=40 --lr=0.5 --momentum=0 --progress=none --output_dir="$work/es2")
  first=$(finals "$("$train" "${c[@]}" 2>&1)")
  stop=$(field "$first" epoch)
  [[ $(field "$first" stopped_by) == early_stopping && $stop -ge 2 ]] || fail "the --patience=2 run did not stop early: $first"
  out=$("$train" "${c[@]}" --patience=1 --resume_from="$(ls "$work"/es2/checkpoint_$((stop - 1))_*.pt)" 2>&1); rc=$?
  again=$(finals "$out")
  [[ $rc -eq 0 ]] || fail "resumed with --patience=1: exit $rc: $(tail -n 3 <<<"$out")"
  grep -q "already stopped" <<<"$out" && fail "a smaller --patience claimed a stop that did not happen: $out"
  [[ $(field "$again" epoch) -eq $stop && $(field "$again" stopped_by) == early_stopping ]] ||
    fail "resumed at epoch $((stop - 1)) with --patience=1: expected an early stop at epoch $stop, got $again"
  ;;
resume_choice)
  # Issue 24.6: corrupt epoch checkpoints beside a valid preemption checkpoint: --resume and
  # --resume --start_over make the same choice (the preemption file), whatever ran before.
  c=(--data=synthetic --epochs=3 --patience=100 --progress=none)
  mpi 2 "$train" "${c[@]}" --output_dir="$work/p" --inject_preempt=1:100 >/dev/null 2>&1 || fail "preempted run"
  ls "$work"/p/preempted_checkpoint_100.pt >/dev/null || fail "no preemption checkpoint"
  for f in "$work"/p/checkpoint_*.pt; do
    /usr/bin/python3 - "$f" <<'PY'
import struct, sys, zipfile
path = sys.argv[1]
info = [i for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename and i.file_size >= 8][0]
raw = bytearray(open(path, "rb").read())
n, m = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
raw[info.header_offset + 30 + n + m + 3] ^= 0x10
open(path, "wb").write(bytes(raw))
PY
  done
  cp -a "$work/p" "$work/q"
  for run in "p:" "q:--start_over"; do
    d=$work/${run%%:*}
    extra=${run#*:}
    out=$(mpi 2 "$train" "${c[@]}" --output_dir="$d" --resume $extra 2>&1); rc=$?
    [[ $rc -eq 0 ]] || fail "--resume $extra exited $rc: $(tail -n 3 <<<"$out")"
    grep -q "resumed from $d/preempted_checkpoint_100.pt" <<<"$out" || fail "--resume $extra did not resume from the preemption file: $(grep -i resum <<<"$out")"
    echo "--resume $extra: $(grep 'resumed from' <<<"$out")"
  done
  st() { "$ckpt" show "$1"/checkpoint_3_*.pt | sed 's/"file": "[^"]*", //'; }
  [[ "$(st "$work/p")" == "$(st "$work/q")" ]] || fail "--resume and --resume --start_over ended differently"
  # Issue 24.2: --resume_from an older checkpoint into the run's own directory: the abandoned
  # future's checkpoints (epoch 3, and a preemption file at iteration 450) are set aside (renamed
  # .abandoned, said), never ranked as the best, reported, evicting this run's files or resumed.
  c=(--data=synthetic --patience=100 --n_saved=3 --progress=none --output_dir="$work/f")
  "$train" "${c[@]}" --epochs=3 >/dev/null 2>&1 || fail "the 3-epoch run"
  "$train" "${c[@]}" --epochs=4 --resume --inject_preempt=0:450 >/dev/null 2>&1 || fail "the preempted 4th epoch"
  ls "$work"/f/preempted_checkpoint_450.pt >/dev/null || fail "no preemption checkpoint at 450: $(ls "$work/f")"
  first=$(ls "$work"/f/checkpoint_1_*.pt)
  future=("$work"/f/checkpoint_3_*.pt "$work"/f/preempted_checkpoint_450.pt)
  out=$("$train" "${c[@]}" --epochs=2 --resume_from="$first" 2>&1); rc=$?
  [[ $rc -eq 0 ]] || fail "--resume_from the epoch-1 file exited $rc: $(tail -n 3 <<<"$out")"
  for f in "${future[@]}"; do
    [[ -f $f.abandoned && ! -e $f ]] || fail "$(basename "$f") was not set aside: $(ls "$work/f")"
  done
  grep -q "set aside as .*checkpoint_3_.*\.abandoned" <<<"$out" || fail "the set-aside was not said: $out"
  best=$(field "$(finals "$out")" best_checkpoint)
  [[ $(basename "$best") == checkpoint_[12]_* && -f $best ]] || fail "best_checkpoint '$best' is not one of this run's files"
  out=$("$train" "${c[@]}" --epochs=2 --resume 2>&1) || fail "--resume after it: $out"
  grep -q "already finished epoch 2" <<<"$out" || fail "--resume went back to the abandoned future: $(grep -i resum <<<"$out")"
  # --resume_from another directory's checkpoint continues another run: every checkpoint already
  # here is set aside, whatever its step, and the best is this run's own.
  "$train" --data=synthetic --epochs=2 --seed=1 --lr=0.005 --progress=none --output_dir="$work/y" >/dev/null 2>&1 || fail "run y"
  mine=("$work"/f/checkpoint_*.pt)
  out=$("$train" "${c[@]}" --epochs=3 --seed=1 --lr=0.0001 --resume_from="$(ls "$work"/y/checkpoint_2_*.pt)" 2>&1); rc=$?
  [[ $rc -eq 0 ]] || fail "--resume_from another directory: exit $rc: $(tail -n 3 <<<"$out")"
  for f in "${mine[@]}"; do [[ -f $f.abandoned && ! -e $f ]] || fail "$(basename "$f") was not set aside: $(ls "$work/f")"; done
  grep -q "by a run this one does not continue: set aside as" <<<"$out" || fail "not said: $out"
  best=$(field "$(finals "$out")" best_checkpoint)
  [[ $(basename "$best") == checkpoint_3_* && -f $best ]] || fail "best_checkpoint '$best' is not this run's"
  ;;
eval_readonly)
  # Issue 24.8: --eval_only writes nothing: a live run's temporary files stay, no lock, no
  # ./runs/train, and a read-only copy of a run can be evaluated.
  "$train" --data=synthetic --epochs=1 --output_dir="$work/r" --progress=none >/dev/null 2>&1 || fail "training run"
  echo partial >"$work/r/.checkpoint_2_val_accuracy=0.9.pt.ember-tmp"
  mkdir -p "$work/cwd"
  snap() { (cd "$1" && ls -lA --time-style=+%s.%N && md5sum ./* ./.??* 2>/dev/null); }
  before=$(snap "$work/r")
  for how in --resume "--resume_from=$(ls "$work"/r/checkpoint_1_*.pt)"; do
    out=$(cd "$work/cwd" && "$train" --data=synthetic --epochs=1 --output_dir="$work/r" $how --eval_only --progress=none 2>&1) ||
      fail "--eval_only $how: $(tail -n 3 <<<"$out")"
    grep -q '^{"checkpoint"' <<<"$out" || fail "--eval_only $how printed no metrics line: $out"
    [[ "$(snap "$work/r")" == "$before" ]] || fail "--eval_only $how changed the run's directory: $(diff <(echo "$before") <(snap "$work/r"))"
  done
  out=$(cd "$work/cwd" && "$train" --data=synthetic --resume_from="$(ls "$work"/r/checkpoint_1_*.pt)" --eval_only --progress=none 2>&1) ||
    fail "--eval_only without --output_dir: $out"
  [[ -z $(ls -A "$work/cwd") ]] || fail "--eval_only created $(ls -A "$work/cwd") in the working directory"
  # A read-only copy (a read-only bind mount: root ignores file modes).
  if unshare -m true 2>/dev/null; then
    out=$(unshare -m bash -c 'mount --bind -o ro "$1" "$1" && "$2" --data=synthetic --output_dir="$1" --resume --eval_only --progress=none' _ "$work/r" "$train" 2>&1) ||
      fail "--eval_only on a read-only directory: $out"
    grep -q '^{"checkpoint"' <<<"$out" || fail "read-only: no metrics line: $out"
    # Issue 24.20: training into a read-only directory says so, not "wait for that run to end".
    out=$(unshare -m bash -c 'mount --bind -o ro "$1" "$1" && "$2" --data=synthetic --output_dir="$1" --resume --progress=none' _ "$work/r" "$train" 2>&1); rc=$?
    [[ $rc -eq 1 ]] || fail "training into a read-only directory exited $rc"
    grep -q "is not writable" <<<"$out" && ! grep -q "wait for that run to end" <<<"$out" || fail "read-only directory: $out"
  else
    echo "read-only case not run: unshare -m is not permitted here"
  fi
  ;;
final_line)
  # Issue 24.16: the final line names the files on disk: a preemption's checkpoint as the latest;
  # after --resume_from, the run's existing checkpoints even before its first epoch end.
  c=(--data=synthetic --epochs=4 --patience=100 --progress=none)
  out=$(mpi 2 "$train" "${c[@]}" --output_dir="$work/f" --inject_preempt=1:100 2>&1) || fail "preempted run: $out"
  [[ $(finals "$out" | grep -c "\"latest_checkpoint\": \"$work/f/preempted_checkpoint_100.pt\"") -eq 2 ]] ||
    fail "the final lines do not name the preemption checkpoint: $(finals "$out")"
  from=$(ls "$work"/f/checkpoint_1_*.pt)
  out=$(mpi 2 "$train" "${c[@]}" --output_dir="$work/f" --resume_from="$from" --inject_preempt=0:70 2>&1) || fail "--resume_from run: $out"
  finals "$out"
  for line in $(finals "$out" | tr ' ' '~'); do
    line=${line//\~/ }
    b=$(field "$line" best_checkpoint); l=$(field "$line" latest_checkpoint)
    [[ $b != null && -f $b && $l == "$work/f/preempted_checkpoint_70.pt" && -f $l ]] || fail "after --resume_from: $line"
  done
  ;;
model_mismatch)
  # Issue 24.20: resuming with another model names the flags the checkpoint was trained with, and
  # does not suggest --start_over (which would fail the same way).
  "$train" --data=synthetic --epochs=1 --model=cnn --hidden=32 --output_dir="$work/m" --progress=none >/dev/null 2>&1 || fail "cnn run"
  out=$("$train" --data=synthetic --epochs=2 --output_dir="$work/m" --resume --progress=none 2>&1); rc=$?
  [[ $rc -eq 1 ]] || fail "a resume with another model exited $rc"
  grep -q "was trained with --model=cnn --hidden=32" <<<"$out" || fail "the message does not name the checkpoint's model: $out"
  ! grep -q -- "--start_over" <<<"$out" || fail "the message suggests --start_over: $out"
  ;;
lr_schedule)
  # --lr_schedule (issue 28.6): a cosine with a linear warm-up on 2 ranks, preempted mid-epoch and
  # resumed, ends bitwise equal to the uninterrupted run (the schedule's position is in every
  # checkpoint as "lr_scheduler", which Python reads with ignite's ConcatScheduler keys); each
  # metrics line's lr is the schedule's; a piecewise schedule's values are exact.
  args=(--data=synthetic --epochs=2 --global_batch=96 --patience=100 --progress=none --lr=0.1
        --lr_schedule=cosine --warmup_iters=10)
  mpi 2 "$train" "${args[@]}" --output_dir="$work/ref" >/dev/null 2>&1 || fail "reference run"
  out=$(mpi 2 "$train" "${args[@]}" --output_dir="$work/cut" --inject_preempt=0:130 2>&1) || fail "preempted run: $out"
  grep -q "preempted at iteration 130" <<<"$out" || fail "not preempted at iteration 130: $out"
  out=$(mpi 2 "$train" "${args[@]}" --output_dir="$work/cut" --resume 2>&1) || fail "resume: $out"
  st() { "$ckpt" show "$1"/checkpoint_2_*.pt | sed 's/"file": "[^"]*", //'; }
  [[ "$(st "$work/cut")" == "$(st "$work/ref")" ]] || { diff <(st "$work/cut") <(st "$work/ref"); fail "the resumed schedule differs"; }
  /usr/bin/python3 - "$work/ref" <<'PY' || fail "the schedule in the checkpoints or metrics"
import glob, json, math, sys, torch
ref = sys.argv[1]
lines = [json.loads(l) for l in open(ref + "/metrics.jsonl")]
# iteration i's lr (fired at ITERATION_STARTED): the cosine's event i - 10 over 170 - 9 events.
want = [0.1 * (1 + math.cos(math.pi * (l["iteration"] - 10) / 161)) / 2 for l in lines]
assert all(abs(l["lr"] - w) <= 1e-8 * w for l, w in zip(lines, want)), (lines, want)
ck = torch.load(glob.glob(ref + "/checkpoint_2_*.pt")[0])
s = ck["lr_scheduler"]
assert list(s)[:4] == ["event_index", "param_name", "save_history", "param_group_index"], list(s)
assert s["param_name"] == "lr" and s["schedulers"][1]["event_index"] == 170 - 9, s  # the cosine after 9 warm-up events
assert abs(ck["optimizer"]["param_groups"][0]["lr"] - want[-1]) < 1e-12, ck["optimizer"]["param_groups"]
PY
  echo "cosine with warm-up: preempted and resumed bitwise equal; lr per epoch as the formula; Python reads the state"
  "$train" --data=synthetic --epochs=2 --global_batch=96 --patience=100 --progress=none \
    --lr_schedule=piecewise:0=0.1,85=0.01,100=0.001 --output_dir="$work/pw" >/dev/null 2>&1 || fail "piecewise run"
  lr1=$(sed -n 1p "$work/pw/metrics.jsonl"); lr2=$(sed -n 2p "$work/pw/metrics.jsonl")
  [[ $(field "$lr1" lr) == 0.01 ]] || fail "piecewise lr at iteration 85 (its milestone): $lr1"
  [[ $(field "$lr2" lr) == 0.001 ]] || fail "piecewise lr at iteration 170: $lr2"
  # A schedule that differs between ranks is refused before anything runs, naming both values.
  out=$(mpi 1 "$train" --data=synthetic --epochs=1 --progress=none --output_dir="$work/d" --lr_schedule=cosine : \
        -np 1 "$train" --data=synthetic --epochs=1 --progress=none --output_dir="$work/d" --lr_schedule=constant 2>&1)
  [[ $? -ne 0 ]] || fail "ranks with different schedules ran"
  grep -q -- "--lr_schedule" <<<"$out" || fail "the disagreement does not name --lr_schedule: $out"
  [[ ! -e $work/d ]] || [[ -z $(ls "$work/d"/*.pt 2>/dev/null) ]] || fail "a checkpoint was written after the disagreement"
  # A resume continues only the checkpoint's own schedule: one trained at a constant lr, or with
  # another schedule, is refused naming both; dropping the schedule goes on at its last lr, said.
  one=(--data=synthetic --global_batch=96 --patience=100 --progress=none)
  "$train" "${one[@]}" --epochs=1 --output_dir="$work/c" >/dev/null 2>&1 || fail "constant run"
  out=$("$train" "${one[@]}" --epochs=2 --output_dir="$work/c" --resume --lr_schedule=cosine 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q "was trained with a constant lr (no --lr_schedule), this run asks for --lr_schedule=cosine" <<<"$out" ||
    fail "a schedule over a constant-lr checkpoint (rc $rc): $out"
  "$train" "${one[@]}" --epochs=1 --output_dir="$work/s" --lr_schedule=cosine --warmup_iters=4 >/dev/null 2>&1 || fail "cosine run"
  out=$("$train" "${one[@]}" --epochs=2 --output_dir="$work/s" --resume --lr_schedule=cosine 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q "was trained with --lr_schedule=cosine --warmup_iters=4 over 85 iterations, this run asks for --lr_schedule=cosine over 170 iterations:" <<<"$out" ||
    fail "another schedule (rc $rc): $out"
  # A cosine cannot be stretched: the same flags with another --epochs are refused too.
  out=$("$train" "${one[@]}" --epochs=2 --output_dir="$work/s" --resume --lr_schedule=cosine --warmup_iters=4 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q "over 85 iterations, this run asks for --lr_schedule=cosine --warmup_iters=4 over 170 iterations" <<<"$out" ||
    fail "a cosine resumed with another --epochs (rc $rc): $out"
  out=$("$train" "${one[@]}" --epochs=2 --output_dir="$work/s" --resume 2>&1) || fail "resume without the schedule: $out"
  grep -q "without it this run goes on at a constant lr" <<<"$out" || fail "dropping the schedule is not said: $out"
  # Malformed values are named with what is allowed.
  out=$("$train" --data=synthetic --lr_schedule=cosin --output_dir="$work/bad" --progress=none 2>&1); rc=$?
  [[ $rc -eq 1 ]] && grep -q "unknown schedule (allowed: constant, cosine or piecewise:" <<<"$out" || fail "bad schedule (rc $rc): $out"
  ;;
training_loop)
  # Issue 28.6: --accumulate, --clip_grad_norm, --precision and --time_limit, as a user runs them.
  # 2 ranks, 2 micro-batches per step, clipping, bfloat16 autocast: it learns, and a preemption at
  # a window's end (iteration 130 of K=2) resumes bitwise equal to the uninterrupted run.
  args=(--data=synthetic --epochs=2 --global_batch=96 --patience=100 --progress=none --accumulate=2
        --clip_grad_norm=1.0 --precision=bfloat16)
  out=$(mpi 2 "$train" "${args[@]}" --output_dir="$work/ref" 2>&1) || fail "accumulate run: $out"
  acc=$(field "$(sed -n 2p "$work/ref/metrics.jsonl")" val_accuracy)
  awk -v a="$acc" 'BEGIN { exit !(a > 0.9) }' || fail "accumulate run: val_accuracy $acc"
  out=$(mpi 2 "$train" "${args[@]}" --output_dir="$work/cut" --inject_preempt=0:130 2>&1) || fail "preempted: $out"
  out=$(mpi 2 "$train" "${args[@]}" --output_dir="$work/cut" --resume 2>&1) || fail "resume: $out"
  st() { "$ckpt" show "$1"/checkpoint_2_*.pt | sed 's/"file": "[^"]*", //'; }
  [[ "$(st "$work/cut")" == "$(st "$work/ref")" ]] || { diff <(st "$work/cut") <(st "$work/ref"); fail "accumulate: the resumed run differs"; }
  echo "accumulate 2 + clip + bfloat16 on 2 ranks: val_accuracy $acc; preempted at a window's end and resumed bitwise equal"
  # Ranks that disagree on --accumulate are refused before anything runs, naming the flag.
  out=$(mpi 1 "$train" --data=synthetic --epochs=1 --progress=none --output_dir="$work/d" --accumulate=2 : \
        -np 1 "$train" --data=synthetic --epochs=1 --progress=none --output_dir="$work/d" 2>&1)
  [[ $? -ne 0 ]] && grep -q -- "--accumulate" <<<"$out" || fail "ranks with different --accumulate: $out"
  # --time_limit=4 on 2 ranks with slow steps: both stop at the same iteration before the budget
  # runs out, save a checkpoint, exit 0 with stopped_by "time_limit"; --resume finishes the run,
  # bitwise equal to an uninterrupted one.
  tl=(--data=synthetic --epochs=3 --global_batch=96 --patience=100 --progress=none)
  mpi 2 "$train" "${tl[@]}" --output_dir="$work/tref" >/dev/null 2>&1 || fail "time-limit reference run"
  start=$(date +%s.%N)
  out=$(mpi 2 "$train" "${tl[@]}" --output_dir="$work/t" --time_limit=4 --inject_step_delay_ms=15 2>&1); rc=$?
  took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  [[ $rc -eq 0 ]] || fail "time limit: exit $rc: $out"
  [[ $(grep -c '"stopped_by": "time_limit"' <<<"$out") -eq 2 ]] || fail "time limit: both ranks must report time_limit: $out"
  its=$(finals "$out" | sed -n 's/.*"iteration": \([0-9]*\).*/\1/p' | sort -u)
  [[ $(wc -l <<<"$its") -eq 1 && $its -lt 255 ]] || fail "time limit: the ranks stopped at iterations $its"
  l=$(field "$(finals "$out" | head -n 1)" latest_checkpoint)
  [[ $l == "$work/t/preempted_checkpoint_$its.pt" ]] && "$ckpt" verify "$l" >/dev/null || fail "time limit: no durable checkpoint at $its: $l"
  grep -q "time limit: stopped at iteration $its after" <<<"$out" || fail "time limit: the stop is not said: $out"
  echo "time limit: stopped at iteration $its, job took ${took}s"
  out=$(mpi 2 "$train" "${tl[@]}" --output_dir="$work/t" --resume 2>&1) || fail "resume after the time limit: $out"
  st3() { "$ckpt" show "$1"/checkpoint_3_*.pt | sed 's/"file": "[^"]*", //'; }
  [[ "$(st3 "$work/t")" == "$(st3 "$work/tref")" ]] || fail "time limit: the resumed run differs from the uninterrupted one"
  # --ema=0.05 on 2 ranks: the EMA is what is evaluated and checkpointed ("ema_model", loaded by
  # Python into the same network; "ema_handler"), and a mid-epoch preemption resumes bitwise.
  em=(--data=synthetic --epochs=2 --global_batch=96 --patience=100 --progress=none --ema=0.05)
  mpi 2 "$train" "${em[@]}" --output_dir="$work/eref" >/dev/null 2>&1 || fail "ema run"
  out=$(mpi 2 "$train" "${em[@]}" --output_dir="$work/ecut" --inject_preempt=1:120 2>&1) || fail "ema preempted: $out"
  out=$(mpi 2 "$train" "${em[@]}" --output_dir="$work/ecut" --resume 2>&1) || fail "ema resume: $out"
  [[ "$(st "$work/ecut")" == "$(st "$work/eref")" ]] || fail "ema: the resumed run differs"
  /usr/bin/python3 - "$work/eref" <<'PY' || fail "ema: the checkpoint's EMA"
import glob, json, sys, torch
ck = torch.load(glob.glob(sys.argv[1] + "/checkpoint_2_*.pt")[0])
assert "ema_model" in ck and "ema_handler" in ck, list(ck)
net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
net.load_state_dict(ck["ema_model"])
assert any(not torch.equal(ck["ema_model"][k], ck["model"][k]) for k in ck["model"]), "the EMA equals the model"
line = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")][-1]
assert line["val_accuracy"] > 0.9, line
PY
  one=(--data=synthetic --global_batch=96 --patience=100 --progress=none)
  "$train" "${one[@]}" --epochs=1 --output_dir="$work/noema" >/dev/null 2>&1 || fail "run without ema"
  out=$("$train" "${one[@]}" --epochs=2 --output_dir="$work/noema" --resume --ema=0.05 2>&1) || fail "ema over a checkpoint without: $out"
  grep -q "has no EMA (trained without --ema): the average starts from its weights" <<<"$out" || fail "ema start not said: $out"
  echo "ema: evaluated, checkpointed (Python loads it), resumed bitwise"
  # Malformed values are named with what is allowed.
  for bad in "--ema=1|--ema must be 0 (none) or a momentum in (0, 1)" "--accumulate=0|--accumulate must be >= 1" "--clip_grad_norm=nan|--clip_grad_norm must be 0" \
             "--precision=fp16|allowed: float32, bfloat16, float16" "--precision=float16|--precision=float16 needs --device=cuda" "--time_limit=2h|allowed: a whole number of seconds >= 1, or 'slurm'" \
             "--time_limit=slurm|SLURM_JOB_END_TIME" "--bucket_mib=0|--bucket_mib must be in (0, 1024]" \
             "--bucket_mib=2000|--bucket_mib must be in (0, 1024]" "--bucket_mib=nan|--bucket_mib must be in (0, 1024]"; do
    out=$(env -u SLURM_JOB_END_TIME "$train" --data=synthetic "${bad%%|*}" --output_dir="$work/bad" --progress=none 2>&1); rc=$?
    [[ $rc -eq 1 ]] && grep -qF -- "${bad#*|}" <<<"$out" || fail "${bad%%|*} (rc $rc): $out"
  done
  # Issue 25.10: --reduce_alone runs the bucket path at world size 1 (as PyTorch DDP does alone),
  # here in buckets of 1 KiB, and changes no number; without it nothing is reduced.
  one=(--data=synthetic --epochs=1 --global_batch=96 --patience=100 --progress=none)
  "$train" "${one[@]}" --output_dir="$work/plain" >/dev/null 2>&1 || fail "world size 1 without --reduce_alone"
  out=$("$train" "${one[@]}" --output_dir="$work/alone" --reduce_alone --bucket_mib=0.001 2>&1) || fail "--reduce_alone: $out"
  p=$(tail -n 1 "$work/plain/metrics.jsonl"); a=$(tail -n 1 "$work/alone/metrics.jsonl")
  [[ $(field "$p" gradient_buckets_reduced) == 0 ]] || fail "without --reduce_alone, buckets were reduced: $p"
  its=$(field "$a" iteration); nb=$(field "$a" gradient_buckets_reduced)
  # 6 parameter tensors (64-256-128-10), each over 1 KiB with the one before it: a bucket each.
  [[ $its -gt 0 && $nb -eq $((its * 6)) ]] || fail "--reduce_alone --bucket_mib=0.001: $nb buckets in $its steps, expected 6 a step: $a"
  for k in train_loss val_loss val_accuracy; do
    [[ $(field "$p" $k) == "$(field "$a" $k)" ]] || fail "--reduce_alone changed $k: $(field "$p" $k) against $(field "$a" $k)"
  done
  echo "reduce_alone: $((nb / its)) buckets a step, the same losses and accuracy as without"
  ;;
*) fail "unknown mode $mode" ;;
esac
echo OK
