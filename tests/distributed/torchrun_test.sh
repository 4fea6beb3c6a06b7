#!/usr/bin/env bash
# The TCP rendezvous (how the NCCL backend shares its ncclUniqueId under torchrun) under a real
# torchrun: Debian's torch.distributed.run (PyTorch 1.13, /usr/bin/python3), 2 and 4 ranks.
#  - static rendezvous (torchrun's default): the agent serves its TCPStore on MASTER_PORT and
#    says TORCHELASTIC_USE_AGENT_STORE=True; rank 0 must listen elsewhere (MASTER_PORT + 1);
#  - --standalone (c10d rendezvous): MASTER_PORT is a free port left for rank 0;
#  - EMBER_RENDEZVOUS_PORT chooses the port.
# Every rank must get rank 0's payload. Then the trainer itself under torchrun: one rank trains;
# two ranks on CPU (no MPI launcher, no GPU) train on Gloo and end the same on every rank.
# Python 3.11 breaks torchrun 1.13's default output
# redirection (Std.NONE is not iterated any more), hence --redirects 1 --tee 1.
set -uo pipefail
probe=$1
train=$2
py=/usr/bin/python3
if ! "$py" -c "import torch.distributed.run" 2>/dev/null; then
  echo "python3-torch is not installed (tools/setup.sh installs it)"; exit 1
fi
fail() { echo "FAIL: $*"; exit 1; }
base=$((21000 + ($$ % 4000) * 2))
export OMP_NUM_THREADS=1
logs=${TEST_TMPDIR:-$(mktemp -d)}

run() {  # run NAME NPROC EXPECTED_PORT_SOURCE [torchrun args...]
  local name=$1 n=$2 source=$3
  shift 3
  echo "== $name: $n ranks"
  local out
  out=$(timeout 120 "$py" -m torch.distributed.run --nproc_per_node="$n" --redirects 1 --tee 1 \
    --log_dir "$logs/$name" "$@" --no_python "$probe" 2>&1)
  local rc=$?
  grep -E "rank " <<<"$out"
  [[ $rc -eq 0 ]] || { echo "$out" | tail -n 30; fail "$name: torchrun exited $rc"; }
  local ids
  ids=$(grep -o "of $n: got '[^']*'" <<<"$out" | sort -u)
  [[ $(grep -c "of $n: got 'unique-id-of-pid-[0-9]*'" <<<"$out") -eq $n ]] || fail "$name: not every rank got a payload"
  [[ $(wc -l <<<"$ids") -eq 1 ]] || fail "$name: the ranks got different payloads: $ids"
  grep -q "($source" <<<"$out" || fail "$name: the port was not chosen by $source"
}

run static-2 2 "MASTER_PORT + 1 (torchrun's agent holds MASTER_PORT" --master_port "$base"
grep -q "on port $((base + 1)) " <<<"$(cat "$logs"/static-2/*/attempt_0/*/stdout.log)" ||
  fail "static-2: rank 0 did not listen on MASTER_PORT + 1 = $((base + 1))"
run static-4 4 "MASTER_PORT + 1 (torchrun's agent holds MASTER_PORT" --master_port "$base"
run standalone-2 2 "MASTER_PORT)" --standalone
EMBER_RENDEZVOUS_PORT=$((base + 7)) run chosen-2 2 "EMBER_RENDEZVOUS_PORT)" --master_port "$base"

echo "== the trainer under torchrun: 1 rank"
out=$(timeout 300 "$py" -m torch.distributed.run --nproc_per_node=1 --redirects 2 --tee 2 --master_port "$base" \
  --log_dir "$logs/train-1" --no_python "$train" --data=synthetic --epochs=2 --output_dir="$logs/out-1" \
  --progress=none 2>&1)
rc=$?
final=$(grep -E '^\{"rank"' <<<"$out")
echo "$final"
[[ $rc -eq 0 ]] || { echo "$out" | tail -n 20; fail "the trainer under torchrun exited $rc"; }
grep -q '"world_size": 1, "epoch": 2, "iteration": 256, "stopped_by": "completed"' <<<"$final" || fail "final line: $final"
ls "$logs/out-1"/checkpoint_2_*.pt >/dev/null || fail "no checkpoint of epoch 2"

echo "== the trainer under torchrun: 2 ranks on CPU (Gloo, chosen by --backend=auto)"
out=$(timeout 300 "$py" -m torch.distributed.run --nproc_per_node=2 --redirects 2 --tee 2 --master_port "$base" \
  --log_dir "$logs/train-2" --no_python "$train" --data=synthetic --epochs=2 --output_dir="$logs/out-2" \
  --progress=none 2>&1)
rc=$?
final=$(grep -E '^\{"rank"' <<<"$out")
echo "$final"
[[ $rc -eq 0 ]] || { echo "$out" | tail -n 20; fail "2 CPU ranks under torchrun exited $rc"; }
for r in 0 1; do
  grep -q "\"rank\": $r, \"world_size\": 2, \"epoch\": 2, \"iteration\": 128, \"stopped_by\": \"completed\"" <<<"$final" ||
    fail "rank $r did not complete 2 epochs on 2 ranks: $final"
done
[[ $(sed 's/"rank": [0-9]*, //' <<<"$final" | sort -u | wc -l) -eq 1 ]] || fail "the ranks ended differently: $final"
echo OK
