"""The GPU machine's inventory for tools/gpu/gpu_checks.sh; exits non-zero (a FAILURE, never a
warning) when there is no GPU, when torch has no CUDA or sees no device, or when no NCCL library is
found (PyTorch's nvidia-nccl wheel, or LD_LIBRARY_PATH)."""
import glob
import os
import subprocess
import sys

problems = []
try:
    print(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.strip())
except (OSError, subprocess.SubprocessError) as e:
    problems.append("nvidia-smi: %s" % e)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11 abi", torch._C._GLIBCXX_USE_CXX11_ABI)
    if not torch.version.cuda:
        problems.append("this torch is built without CUDA")
    elif not torch.cuda.is_available():
        problems.append("torch sees no CUDA device")
    else:
        print("device", torch.cuda.get_device_name(0), "torch's nccl", torch.cuda.nccl.version())
except ImportError as e:
    problems.append("no torch: %s" % e)
libs = [f for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d for f in glob.glob(os.path.join(d, "libnccl.so*"))]
print("libnccl:", libs[0] if libs else "none")
if not libs:
    problems.append("no libnccl.so* in LD_LIBRARY_PATH (PyTorch's nvidia/nccl/lib)")
if problems:
    sys.exit("machine: " + "; ".join(problems))
print("machine: GPU, CUDA torch and NCCL present")
