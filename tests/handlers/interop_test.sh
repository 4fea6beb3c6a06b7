#!/usr/bin/env bash
# Both directions of torch.save compatibility, with Debian's Python torch (/usr/bin/python3).
set -euo pipefail
tool=$1
script=$2
py=/usr/bin/python3
if ! "$py" -c "import torch" 2>/dev/null; then
  echo "python3-torch is not installed (tools/setup.sh installs it)"; exit 1
fi
dir=${TEST_TMPDIR:-$(mktemp -d)}
echo "== Ember writes, Python reads"
"$tool" write "$dir/ember.pt"
"$py" "$script" check "$dir/ember.pt"
echo "== Ember writes zip64 records, Python reads"
"$tool" write-zip64 "$dir/ember64.pt"
"$py" "$script" check "$dir/ember64.pt"
echo "== Python writes, Ember reads"
"$py" "$script" write "$dir"
"$tool" check "$dir/py_matrix.pt"
"$tool" expect-error "$dir/legacy.pt" "legacy (pre-1.6, non-zip) torch.save format is not supported"
echo OK
