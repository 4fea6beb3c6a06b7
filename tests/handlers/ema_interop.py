"""Python side of the EMA checkpoint test (Debian's /usr/bin/python3): ema_interop.py DIR.

DIR holds the one checkpoint ema_interop_tool wrote ({"model", "ema_model"}) and its
ema_reference.txt (each EMA tensor read from the C++ module). torch.load(weights_only=True) must
read "ema_model" with exactly the keys, in the order, of the same architecture's state_dict in
Python, each tensor bit for bit the reference's; it must load strictly into that architecture;
and it must differ from the online model (the EMA is not a copy of it).
"""
import glob
import os
import sys

import torch


def main(d):
    files = glob.glob(os.path.join(d, "*.pt"))
    if len(files) != 1:
        sys.exit(f"expected one checkpoint in {d}, found {files}")
    ckpt = torch.load(files[0], weights_only=True)
    failures = []
    if list(ckpt.keys()) != ["model", "ema_model"]:
        failures.append(f"checkpoint keys {list(ckpt.keys())}")
    ema = ckpt["ema_model"]
    ref = {}
    with open(os.path.join(d, "ema_reference.txt")) as f:
        for line in f:
            name, dtype, shape, hexbytes = line.split()
            ref[name] = (dtype, shape, b"" if hexbytes == "-" else bytes.fromhex(hexbytes))
    python_model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    expected_keys = list(python_model.state_dict().keys())
    if list(ema.keys()) != expected_keys:
        failures.append(f"ema_model keys {list(ema.keys())}, Python's state_dict has {expected_keys}")
    if set(ref) != set(expected_keys):
        failures.append(f"reference names {sorted(ref)}")
    for name, t in ema.items():
        if name not in ref:
            continue
        dtype, shape, data = ref[name]
        got_shape = ",".join(str(s) for s in t.shape) or "()"
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        if got_shape != shape or raw != data:
            failures.append(f"{name}: {t} differs from the C++ EMA model's ({dtype} {shape})")
    python_model.load_state_dict(ema, strict=True)
    for name, t in python_model.state_dict().items():
        if not torch.equal(t, ema[name]):
            failures.append(f"{name} changed on load_state_dict")
    if all(torch.equal(ema[k], ckpt["model"][k]) for k in expected_keys if ema[k].is_floating_point()):
        failures.append("the EMA model equals the online model")
    # The GradScaler's state: torch's own GradScaler reads it and gives it back unchanged (CUDA is
    # absent here, so it is built as if it were; load_state_dict/state_dict are host code).
    scaler_files = glob.glob(os.path.join(d, "scaler", "*.pt"))
    if len(scaler_files) != 1:
        sys.exit(f"expected one scaler checkpoint in {d}/scaler, found {scaler_files}")
    # torch 1.13's weights_only reader refuses pickled floats (BINFLOAT), as for Python's own.
    # One object in a Checkpoint: the file holds its state itself (ignite's rule).
    scaler = torch.load(scaler_files[0], weights_only=False)
    want = {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 7, "_growth_tracker": 1}
    if list(scaler.keys()) != list(want) or scaler != want or [type(v) for v in scaler.values()] != [float, float, float, int, int]:
        failures.append(f"scaler state {scaler}, want {want} with Python's types")
    cuda_available = torch.cuda.is_available
    torch.cuda.is_available = lambda: True  # GradScaler switches itself off without CUDA
    try:
        torch_scaler = torch.cuda.amp.GradScaler()
    finally:
        torch.cuda.is_available = cuda_available
    torch_scaler.load_state_dict(scaler)
    if torch_scaler.state_dict() != scaler:
        failures.append(f"torch's GradScaler gives back {torch_scaler.state_dict()} for {scaler}")
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"ema_model: {len(ema)} tensors read equal to the C++ EMA model's state_dict; scaler: torch's GradScaler round-trips it")


if __name__ == "__main__":
    main(sys.argv[1])
