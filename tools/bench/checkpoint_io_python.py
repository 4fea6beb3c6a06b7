#!/usr/bin/python3
"""Python's torch.save / torch.load of the state checkpoint_io_benchmark saves (issue 27, item 4).

The same state (four float32 tensors, "layer0.weight".."layer3.weight", adding up to N MiB, in an
ordered dict), the same durability protocol and the same cold reads as the C++ benchmark, so that
both print into one table:
  save: torch.save into a temporary file, flush, fsync, rename, fsync of the directory (what
        DiskSaver::Save and the C++ raw baseline do);
  load: torch.load of the file after dropping it from the page cache exactly as the C++ benchmark
        does (open read-only, fdatasync, posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), close);
  raw:  beside them, in the same run and alternating which goes first, the raw baselines of the
        C++ benchmark (write of the tensors' bytes with the same protocol; one sequential read of
        the cold file), so a drift of the disk between the two programs can be seen.
One JSON object per line on stdout, times in seconds per run (lists), like checkpoint_io_benchmark:
  {"bench": "python_save_and_load", "mib": 64, "raw_save_s": [...], "torch_save_s": [...],
   "save_ratio_median": raw/torch.save, "raw_read_s": [...], "torch_load_s": [...],
   "load_ratio_median": raw read/torch.load, "torch": "1.13.0"}

  /usr/bin/python3 tools/bench/checkpoint_io_python.py [--sizes_mib=64,512] [--runs=3] [--dir=/tmp]
(--sizes_mib=64,512,2048 for 2 GiB: needs about 3x the size in memory and 2x on disk.)
"""
import argparse
import collections
import json
import os
import shutil
import sys
import time

import torch


def make_state(nbytes):
    # As MakeState in checkpoint_io_benchmark.cc: four float32 tensors of nbytes / 16 elements.
    return collections.OrderedDict(
        ("layer%d.weight" % i, torch.rand(nbytes // 16, dtype=torch.float32)) for i in range(4))


def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_cache(path):
    # DropCache of checkpoint_io_benchmark.cc.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_all(fd, view):
    view = memoryview(view).cast("B")
    while len(view):
        n = os.write(fd, view)
        if n <= 0:
            raise OSError("raw write failed")
        view = view[n:]


def raw_save(state, d):
    tmp, path = os.path.join(d, ".raw.bin.tmp"), os.path.join(d, "raw.bin")
    t0 = time.perf_counter()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for t in state.values():
            write_all(fd, t.numpy())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(d)
    return time.perf_counter() - t0


def torch_save(state, d):
    tmp, path = os.path.join(d, ".bench.pt.tmp"), os.path.join(d, "bench.pt")
    t0 = time.perf_counter()
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    fsync_dir(d)
    return time.perf_counter() - t0, path


def raw_read(path):
    drop_cache(path)
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(os.fstat(f.fileno()).st_size)
        view, got = memoryview(buf), 0
        while got < len(buf):
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    return time.perf_counter() - t0


def torch_load(path):
    drop_cache(path)
    t0 = time.perf_counter()
    back = torch.load(path)
    return time.perf_counter() - t0, back


def median(xs):
    # The upper median, as checkpoint_io_benchmark's Median.
    return sorted(xs)[len(xs) // 2]


def save_and_load(mib, runs, root):
    d = os.path.join(root, "ember_io_bench_python_%d" % mib)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    state = make_state(mib << 20)
    raw_s, save_s, raw_read_s, load_s = [], [], [], []
    try:
        for r in range(runs):
            # Alternating which goes first, as the C++ benchmark does.
            if r % 2 == 0:
                raw_s.append(raw_save(state, d))
            t, path = torch_save(state, d)
            save_s.append(t)
            if r % 2 == 1:
                raw_s.append(raw_save(state, d))
            raw_read_s.append(raw_read(path))
            t, back = torch_load(path)
            load_s.append(t)
            if r == 0 and (list(back) != list(state) or
                           not all(torch.equal(back[k], v) for k, v in state.items())):
                sys.exit("checkpoint_io_python: torch.load gave back other tensors")
            del back
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(json.dumps({
        "bench": "python_save_and_load", "mib": mib,
        "raw_save_s": raw_s, "torch_save_s": save_s,
        "save_ratio_median": round(median(raw_s) / median(save_s), 3),
        "raw_read_s": raw_read_s, "torch_load_s": load_s,
        "load_ratio_median": round(median(raw_read_s) / median(load_s), 3),
        "torch": torch.__version__.split("+")[0],
    }), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes_mib", default="64,512", help="comma-separated sizes in MiB (2048 optional)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--dir", default="/tmp")
    a = p.parse_args()
    try:
        sizes = [int(s) for s in a.sizes_mib.split(",")]
    except ValueError:
        p.error("bad --sizes_mib '%s'" % a.sizes_mib)
    if a.runs <= 0 or any(s <= 0 for s in sizes):
        p.error("--runs and every size must be positive")
    for mib in sizes:
        save_and_load(mib, a.runs, a.dir)


if __name__ == "__main__":
    main()
