"""torch.load(weights_only=True) of the newest Ember checkpoint in a folder (tools/gpu/gpu_checks.sh):
  python3 tools/gpu/load_check.py DIR
Prints torch's version, the file, its keys and the model's tensor shapes; exits non-zero when there
is no checkpoint, when PyTorch refuses it under weights_only=True, or when it has no "model"."""
import glob
import os
import sys

import torch

if len(sys.argv) != 2:
    sys.exit("usage: load_check.py DIR")
files = sorted(glob.glob(os.path.join(sys.argv[1], "*.pt")), key=os.path.getmtime)
if not files:
    sys.exit("load_check.py: no *.pt in %s" % sys.argv[1])
sd = torch.load(files[-1], weights_only=True, map_location="cpu")
if not isinstance(sd, dict) or "model" not in sd:
    sys.exit("load_check.py: %s is not an Ember training checkpoint (keys: %s)" %
             (files[-1], sorted(sd) if isinstance(sd, dict) else type(sd).__name__))
shapes = {k: tuple(v.shape) for k, v in sd["model"].items()}
print("torch %s loaded %s with weights_only=True: keys %s, model %s" %
      (torch.__version__, os.path.basename(files[-1]), sorted(sd), shapes))
