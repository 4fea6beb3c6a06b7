"""PyTorch's own DistributedDataParallel on the trainer's model, data and batch: the baseline that
Ember's trainer is compared with on a GPU machine (issue 15; tools/gpu/gpu_checks.sh runs both).

  torchrun --nproc_per_node=1 tools/gpu/ddp_baseline.py --data=DIR [--epochs=2] [--device=cuda]
      [--bucket_cap_mb=16]

Same as `train --data=mnist:DIR`: Fashion-MNIST's IDX files, pixels / 255, an MLP 784-256-128-10
with ReLU, SGD lr 0.05 momentum 0.9, 64 samples per rank per step, a new permutation every epoch,
loss.item() every step (Ember's trainer reads it too). Prints one JSON line per epoch from rank 0
with samples/s of that epoch's training time (no evaluation), as Ember's metrics.jsonl does.
--bucket_cap_mb is DDP's own (MiB, despite the name) and the trainer's --bucket_mib: give both the
same number (16 by default here, the trainer's default; DDP's own default is 25). The two cut
buckets differently: DDP closes a bucket once it has passed the cap and caps its first bucket at
1 MiB (after rebuilding them in the first iteration), Ember opens a new bucket before the cap
would be passed; so the counts can differ (784-512-512-10 at 1 MiB: DDP 2, Ember 4). Each JSON
line carries DDP's bucket sizes ("bucket_bytes"), and side_by_side.py prints both counts. DDP runs its
Reducer at world size 1 too; the trainer does so with --reduce_alone (tools/bench/ddp_side_by_side.sh
and tools/gpu/gpu_checks.sh run the two side by side).
"""
import argparse
import gzip
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(directory, stem):
    for suffix in (".gz", ""):
        path = os.path.join(directory, stem + suffix)
        if os.path.exists(path):
            return path
    raise SystemExit(f"ddp_baseline.py: no {stem}[.gz] in {directory}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="folder with Fashion-MNIST's IDX files")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--hidden", default="256,128")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--backend", default=None, help="nccl for cuda, gloo for cpu by default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bucket_cap_mb", type=float, default=16.0,
                   help="DDP's bucket size in MiB, in (0, 1024]: the trainer's --bucket_mib")
    a = p.parse_args()
    if a.epochs < 1 or a.batch_size < 1:
        raise SystemExit(f"ddp_baseline.py: --epochs={a.epochs} and --batch_size={a.batch_size} must be >= 1")
    if not (0 < a.bucket_cap_mb <= 1024):
        raise SystemExit(f"ddp_baseline.py: --bucket_cap_mb={a.bucket_cap_mb} must be in (0, 1024] (MiB per bucket)")
    torch.set_num_threads(a.threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29511")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    backend = a.backend or ("nccl" if a.device == "cuda" else "gloo")
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if a.device == "cuda" else torch.device("cpu")
    if a.device == "cuda":
        torch.cuda.set_device(device)

    x = torch.from_numpy(read_idx(find(a.data, "train-images-idx3-ubyte")).copy()).reshape(-1, 784).float().div_(255.0)
    y = torch.from_numpy(read_idx(find(a.data, "train-labels-idx1-ubyte")).astype(np.int64))
    torch.manual_seed(0)
    sizes = [784] + [int(h) for h in a.hidden.split(",")] + [10]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if a.device == "cuda" else None,
                                                    bucket_cap_mb=a.bucket_cap_mb)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    global_batch = a.batch_size * world
    steps = x.shape[0] // global_batch
    for epoch in range(1, a.epochs + 1):
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(epoch))
        if a.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        total = 0.0
        for s in range(steps):
            ids = order[s * global_batch + rank * a.batch_size:s * global_batch + (rank + 1) * a.batch_size]
            xb, yb = x.index_select(0, ids).to(device), y.index_select(0, ids).to(device)
            opt.zero_grad()
            loss = F.cross_entropy(ddp(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item()
        seconds = time.perf_counter() - start
        buckets = None
        try:  # DDP's own record of its buckets (rebuilt after the first iteration, 1 MiB first)
            info = ddp._get_ddp_logging_data()
            sizes = info.get("rebuilt_bucket_sizes") or info.get("bucket_sizes")
            buckets = [int(b) for b in str(sizes).split(",")] if sizes else None
        except Exception:
            pass
        if rank == 0:
            print(json.dumps({"baseline": "PyTorch DistributedDataParallel", "torch": torch.__version__, "backend": backend,
                              "device": str(device), "world_size": world, "bucket_cap_mb": a.bucket_cap_mb, "bucket_bytes": buckets, "epoch": epoch, "train_loss": total / steps,
                              "samples_per_s": steps * global_batch / seconds}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
