#!/usr/bin/env bash
# Builds examples/user_workspace from its own WORKSPACE (Ember through local_repository and
# ember_dependencies()) with a nested Bazel, checks that the user guide (docs/library.md) shows
# its user_trainer.cc verbatim, and runs it: one process, then 2 ranks under mpirun (same decisions
# on every rank), then a resume; then 2 ranks under torchrun on Gloo (same decisions on every rank,
# checkpoints that `ckpt verify` passes), then a resume; then 4 ranks under torchrun.
set -uo pipefail
fail() { echo "FAIL: $*"; exit 1; }
ckpt=$(readlink -f "$1")   # //tools:ckpt
[[ -x $ckpt ]] || fail "no ckpt tool at $1"
src=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)   # the source tree's examples/
ws=$src/user_workspace
guide=$src/../docs/library.md
[[ -f $ws/WORKSPACE && -f $guide ]] || fail "source tree not found from $0"

# 1. The user guide shows the example verbatim (between the markers around its code block).
grep -q '<!-- user_trainer.cc begin -->' "$guide" || fail "no '<!-- user_trainer.cc begin -->' marker in docs/library.md"
awk '/<!-- user_trainer.cc begin -->/{on=1; next} /<!-- user_trainer.cc end -->/{on=0} on' "$guide" |
  sed '1d;$d' >"${TEST_TMPDIR:-/tmp}/guide_example.cc"
diff -u "$ws/user_trainer.cc" "${TEST_TMPDIR:-/tmp}/guide_example.cc" || fail "docs/library.md's user guide example differs from examples/user_workspace/user_trainer.cc"

# 2. A nested Bazel, as the user runs it (its own output root, kept between runs for speed).
for v in $(env | grep -oE '^(TEST_[A-Z_]*|RUNFILES_[A-Z_]*|JAVA_RUNFILES|PYTHON_RUNFILES|BUILD_WORKSPACE_DIRECTORY|XML_OUTPUT_FILE)='); do unset "${v%=}"; done
root=/tmp/ember-user-workspace-bazel-$(id -u)
(cd "$ws" && timeout 2400 bazel --output_user_root="$root" build //...) || fail "the user workspace does not build"
# A second `bazel build //...`, as a user's second command: Bazel must not descend into the
# convenience symlinks the first build left (bazel-user_workspace; .bazelignore lists them).
(cd "$ws" && timeout 600 bazel --output_user_root="$root" build //...) ||
  fail "the user workspace does not build a second time (bazel-* symlinks not in .bazelignore?)"
bin=$(cd "$ws" && bazel --output_user_root="$root" info bazel-bin 2>/dev/null)/user_trainer
[[ -x $bin ]] || fail "no binary at $bin"
(cd "$ws" && bazel --output_user_root="$root" shutdown)

work=$(mktemp -d)
decisions() { grep '^rank' <<<"$1" | sed 's/^rank [01]\/2: //; s/, [0-9.]* ms\/iteration//'; }  # equal on every rank
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# 3. One process.
out=$("$bin" "$work/one" 3 2>&1) || fail "1 process: $out"
echo "$out" | grep '^rank'
grep -q "^rank 0/1: completed at epoch 3, accuracy 0\.[5-9]" <<<"$out" || fail "1 process: $out"
# 4. Two ranks: the same outcome, epoch, score and best checkpoint on both.
out=$(timeout 600 mpirun --oversubscribe -np 2 --mca btl self,vader "$bin" "$work/two" 3 2>&1) || fail "2 ranks: $out"
echo "$out" | grep '^rank'
[[ $(grep -c '^rank [01]/2: completed at epoch 3' <<<"$out") -eq 2 ]] || fail "2 ranks: $out"
[[ $(decisions "$out" | sort -u | wc -l) -eq 1 ]] || fail "the ranks decided differently: $out"
[[ $(ls "$work"/two/*.pt | wc -l) -ge 1 ]] || fail "no checkpoint written"
mpi_accuracy=$(grep -m1 -oE '^rank 0/2: .*, accuracy [0-9.]+' <<<"$out" | sed 's/.* //')
# 5. Resume on 2 ranks: continues from epoch 3 to 5.
out=$(timeout 600 mpirun --oversubscribe -np 2 --mca btl self,vader "$bin" "$work/two" 5 2>&1) || fail "resume: $out"
echo "$out" | grep '^rank'
[[ $(grep -cE '^rank [01]/2: (completed at epoch 5|terminated by EarlyStopping)' <<<"$out") -eq 2 ]] || fail "resume: $out"
# 6. Two ranks under torchrun (Debian's PyTorch), as a user without MPI launches them: no MPI
#    launcher and MASTER_ADDR set, so LaunchWorld's "auto" picks Gloo (a world of 2 CPU ranks that
#    mpirun did not start: only Gloo connects them). The same decisions on both ranks (epoch, stop
#    reason, accuracy, best checkpoint), the MPI run's accuracy within float tolerance (the
#    reductions sum in another order), checkpoints that verify; then a resume from epoch 3 to 5.
py=/usr/bin/python3
"$py" -c "import torch.distributed.run" 2>/dev/null || fail "python3-torch is not installed (tools/setup.sh installs it)"
port=$((21000 + ($$ % 2000) * 2))
torchrun() {  # torchrun NAME EPOCHS: the trainer on 2 ranks, in $work/gloo
  OMP_NUM_THREADS=1 timeout 300 "$py" -m torch.distributed.run --nproc_per_node=2 --redirects 2 --tee 2 \
    --master_port "$port" --log_dir "$work/logs-$1" --no_python "$bin" "$work/gloo" "$2" 2>&1
}
out=$(torchrun g1 3) || fail "torchrun, 2 ranks: $out"
echo "$out" | grep '^rank'
[[ $(grep -c '^rank [01]/2: completed at epoch 3, accuracy 0\.[5-9]' <<<"$out") -eq 2 ]] || fail "torchrun, 2 ranks: $out"
[[ $(decisions "$out" | sort -u | wc -l) -eq 1 ]] || fail "torchrun: the ranks decided differently: $out"
best=$(decisions "$out" | head -n 1 | sed -n 's/.*, best //p')
[[ $best == "$work"/gloo/checkpoint_3_*.pt && -f $best ]] || fail "torchrun: best checkpoint '$best' not written"
"$ckpt" verify "$work"/gloo/*.pt || fail "torchrun: the checkpoints do not verify"
gloo_accuracy=$(grep -m1 -oE '^rank 0/2: .*, accuracy [0-9.]+' <<<"$out" | sed 's/.* //')
awk -v g="$gloo_accuracy" -v m="$mpi_accuracy" 'BEGIN { d = g - m; exit !(m != "" && d <= 0.01 && d >= -0.01) }' ||
  fail "torchrun: accuracy $gloo_accuracy, MPI's $mpi_accuracy: beyond tolerance"
out=$(torchrun g2 5) || fail "torchrun, resume: $out"
echo "$out" | grep '^rank'
[[ $(grep -cE '^rank [01]/2: (completed at epoch 5|terminated by EarlyStopping)' <<<"$out") -eq 2 ]] || fail "torchrun, resume: $out"
[[ $(decisions "$out" | sort -u | wc -l) -eq 1 ]] || fail "torchrun, resume: the ranks decided differently: $out"
"$ckpt" verify "$work"/gloo/*.pt >/dev/null || fail "torchrun, resume: the checkpoints do not verify"
# 7. Four ranks under torchrun: the same decisions on every rank.
out=$(OMP_NUM_THREADS=1 timeout 300 "$py" -m torch.distributed.run --nproc_per_node=4 --redirects 2 --tee 2 \
  --master_port "$port" --log_dir "$work/logs-g4" --no_python "$bin" "$work/gloo4" 2 2>&1) || fail "torchrun, 4 ranks: $out"
echo "$out" | grep '^rank'
[[ $(grep -c '^rank [0-3]/4: completed at epoch 2, accuracy 0\.[5-9]' <<<"$out") -eq 4 ]] || fail "torchrun, 4 ranks: $out"
[[ $(grep '^rank' <<<"$out" | sed 's/^rank [0-3]\/4: //; s/, [0-9.]* ms\/iteration//' | sort -u | wc -l) -eq 1 ]] ||
  fail "torchrun, 4 ranks: the ranks decided differently: $out"
rm -rf "$work"
echo OK
