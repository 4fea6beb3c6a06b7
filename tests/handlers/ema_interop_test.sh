#!/usr/bin/env bash
# The EMA model checkpointed like any model: Ember writes model + ema_model with a Checkpoint,
# Python's torch.load reads ema_model equal to the C++ EMA model's state_dict (ema_interop.py).
set -euo pipefail
tool=$1
script=$2
py=/usr/bin/python3
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "python3-torch is not installed (tools/setup.sh installs it)"; exit 1
fi
dir=${TEST_TMPDIR:-$(mktemp -d)}/ema_ckpt
"$tool" "$dir"
"$py" "$script" "$dir"
echo OK
