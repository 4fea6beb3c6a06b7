#!/usr/bin/env bash
# ckpt against special files, a malformed ledger and keys that need JSON escaping.
set -uo pipefail
ckpt=$1
fail() { echo "FAIL: $*"; exit 1; }
work=$(mktemp -d "${TEST_TMPDIR:-/tmp}/ckpt_test.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. Special files: refused at once with a message naming them, never waited on or read whole.
mkdir -p "$work/run/ledger"
mkfifo "$work/run/model_1.pt"
out=$(timeout 20 "$ckpt" verify "$work/run/model_1.pt" 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "ckpt verify FIFO: exit $rc (124 = hung): $out"
grep -q "model_1.pt: not a regular file (a FIFO)" <<<"$out" || fail "ckpt verify FIFO: $out"
out=$(timeout 20 "$ckpt" list "$work/run" 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "ckpt list with a FIFO: exit $rc (124 = hung): $out"
grep -q "model_1.pt.*not a regular file (a FIFO)" <<<"$out" || fail "ckpt list with a FIFO: $out"
out=$(timeout 20 "$ckpt" verify /dev/zero 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "ckpt verify /dev/zero: exit $rc (124 = read without bound): $out"
grep -q "/dev/zero: not a regular file (a character device)" <<<"$out" || fail "ckpt verify /dev/zero: $out"
mkfifo "$work/run/ledger/from-0.rank-1.jsonl"
out=$(timeout 20 "$ckpt" ledger "$work/run" 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "ckpt ledger with a FIFO: exit $rc (124 = hung): $out"
grep -q "from-0.rank-1.jsonl: not a regular file (a FIFO)" <<<"$out" || fail "ckpt ledger with a FIFO: $out"
rm "$work/run/ledger/from-0.rank-1.jsonl"

# 2. A malformed ledger line: an error naming the file, the line and the field, no abort.
ledger="$work/run/ledger/from-0.rank-0.jsonl"
{
  echo '{"ledger": 1, "dataset_size": 4, "global_batch": 2, "epoch_length": 2, "world_size": 1, "rank": 0, "from_iteration": 0}'
  echo '{"epoch": 1, "iteration": 1, "ids": [0, 1]}'
  echo '{"epoch": 1, "iteration": "5", "ids": [2, 3]}'
  echo '{"epoch": 1, "iteration": 3, "ids": [2, 3]}'
} >"$ledger"
out=$(timeout 20 "$ckpt" ledger "$work/run" 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "malformed ledger: exit $rc (134 = abort): $out"
grep -qF "from-0.rank-0.jsonl: line 3: \"iteration\" is \"5\", not an integer" <<<"$out" || fail "malformed ledger: $out"
sed -i 's/"iteration": "5", "ids": \[2, 3\]/"iteration": 2, "ids": [2, "x"]/' "$ledger"
out=$(timeout 20 "$ckpt" ledger "$work/run" 2>&1); rc=$?
[[ $rc -eq 1 ]] || fail "malformed ids: exit $rc: $out"
grep -qF 'line 3: "ids" holds "x", not an integer' <<<"$out" || fail "malformed ids: $out"
sed -i 's/"epoch_length": 2/"epoch_length": 2.5/' "$ledger"
out=$(timeout 20 "$ckpt" ledger "$work/run" 2>&1); rc=$?
grep -qF 'line 1: "epoch_length" is 2.5, not an integer' <<<"$out" || fail "malformed header: $out"

# 3. ckpt show: valid JSON whatever the keys hold (a tab, a control character, a quote).
if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  /usr/bin/python3 - "$work/keys.pt" <<'PY'
import sys, torch
torch.save({"a\tb": torch.zeros(2), "c\x01\"d": 3, "e\\f": "g\th"}, sys.argv[1])
PY
  out=$("$ckpt" show "$work/keys.pt" 2>&1) || fail "ckpt show: $out"
  /usr/bin/python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
assert "a\tb" in d["tensors"], d
assert d["scalars"]["c\x01\"d"] == 3, d
assert d["scalars"]["e\\f"] == "g\th", d
' <<<"$out" || fail "ckpt show printed invalid JSON or lost a key: $out"
fi
echo OK
