"""Turns the raw outputs of tools/bench/reproduce.sh into the performance tables of
docs/performance.md.

Usage: /usr/bin/python3 tools/bench/report.py OUT_DIR > OUT_DIR/report.md
Every figure is "min / median / max" over the runs found in OUT_DIR; a ratio is computed within
each run first (both sides measured in the same run), then summarised the same way.
"""
import glob
import json
import os
import statistics
import sys

MiB = 1 << 20


def mmm(values, fmt="%.2f"):
    if not values:
        return "n/a"
    return " / ".join(fmt % v for v in (min(values), statistics.median(values), max(values)))


def google_benchmark_runs(out, prefix):
    """One dict per run: (name, args...) -> the benchmark's JSON record."""
    runs = []
    for path in sorted(glob.glob(os.path.join(out, prefix + "-*.json"))):
        with open(path) as f:
            data = json.load(f)
        records = {}
        for b in data.get("benchmarks", []):
            if b.get("run_type", "iteration") != "iteration":
                continue
            parts = b["name"].split("/")
            args = tuple(int(p) for p in parts[1:] if p.isdigit())
            records[(parts[0],) + args] = b
        runs.append(records)
    if not runs:
        sys.exit(f"report.py: no {prefix}-*.json in {out}")
    return runs


def per_run(runs, fn):
    values = []
    for records in runs:
        try:
            values.append(fn(records))
        except KeyError:
            pass
    return values


def engine(out):
    runs = google_benchmark_runs(out, "engine")
    rows = [
        ("BM_EngineNoHandler", "no handler, void step", "<= 10 ns, 0"),
        ("BM_EngineNoHandlerScalarOutput", "no handler, step returns a double", ""),
        ("BM_EngineFourHandlers", "4 handlers (Timer-like 2 clock reads, NaN check, 2 per-epoch)", "<= 100 ns"),
        ("BM_EngineFilteredHandlers", "2 filtered handlers (every=100, once)", ""),
        ("BM_EngineRealHandlers", "the real Timer + TerminateOnNan + EarlyStopping + Checkpoint (in memory, per epoch)",
         "<= 100 ns"),
    ]
    print("### Engine overhead per iteration (engine_benchmark)\n")
    print("| benchmark | ns / iteration | heap allocations / iteration (max) | target |")
    print("|---|---|---|---|")
    for name, label, target in rows:
        # The counter is a rate inverted: seconds per iteration.
        ns = per_run(runs, lambda r: r[(name,)]["ns_per_iter"] * 1e9)
        allocs = per_run(runs, lambda r: r[(name,)]["allocs_per_iter"])
        print(f"| {label} | {mmm(ns, '%.1f')} | {'%g' % max(allocs) if allocs else 'n/a'} | {target} |")
    print()


def serialization(out):
    runs = google_benchmark_runs(out, "serialization")
    gbs = lambda b: b["bytes_per_second"] / 1e9
    print("### Checkpoint save and load against raw I/O (serialization_benchmark)\n")
    print("| state size | raw write+fsync GB/s | Ember save+fsync GB/s | ratio | raw read GB/s | Ember load GB/s |")
    print("|---|---|---|---|---|---|")
    for size in (1 * MiB, 64 * MiB, 256 * MiB):
        raw = per_run(runs, lambda r: gbs(r[("BM_RawWriteFsync", size)]))
        save = per_run(runs, lambda r: gbs(r[("BM_TorchSaveFsync", size)]))
        ratio = per_run(runs, lambda r: gbs(r[("BM_TorchSaveFsync", size)]) / gbs(r[("BM_RawWriteFsync", size)]))
        read = per_run(runs, lambda r: gbs(r[("BM_RawRead", size)]))
        load = per_run(runs, lambda r: gbs(r[("BM_TorchLoad", size)]))
        print(f"| {size // MiB} MiB | {mmm(raw)} | {mmm(save)} | {mmm(ratio)} | {mmm(read, '%.1f')} | {mmm(load, '%.1f')} |")
    print()
    print("DiskSaver (temporary file, fsync, rename, fsync of the directory) against a raw write+fsync:\n")
    print("| state size | raw write+fsync ms | DiskSaver save ms | ratio of throughputs (raw time / DiskSaver time) |")
    print("|---|---|---|---|")
    for size in (1 * MiB, 64 * MiB, 512 * MiB):
        raw = per_run(runs, lambda r: r[("BM_RawWriteFsync", size)]["real_time"])
        disk = per_run(runs, lambda r: r[("BM_DiskSaverSave", size)]["real_time"])
        ratio = per_run(runs, lambda r: r[("BM_RawWriteFsync", size)]["real_time"] / r[("BM_DiskSaverSave", size)]["real_time"])
        print(f"| {size // MiB} MiB | {mmm(raw, '%.1f')} | {mmm(disk, '%.1f')} | {mmm(ratio)} |")
    print()
    print("What a save blocks the training thread (each run's figure is the median of 5 saves):\n")
    print("| state | `async_save`: blocked ms | bound: warm memcpy + 1 ms | `snapshot_in_background`: blocked at the firing ms "
          "| then at the fence, next step computing 0 ms | ... computing 20 ms (64 MiB) / 200 ms (512 MiB) |")
    print("|---|---|---|---|---|---|")
    for size, compute in ((1 * MiB, None), (64 * MiB, 20), (512 * MiB, 200)):
        blocked = per_run(runs, lambda r: r[("BM_AsyncSaveBlocking", size)]["blocked_ms"])
        bound = per_run(runs, lambda r: r[("BM_AsyncSaveBlocking", size)]["bound_ms"])
        cells = [f"{size // MiB} MiB", mmm(blocked), mmm(bound)]
        if compute is None:
            cells += ["", "", ""]
        else:
            cells.append(mmm(per_run(runs, lambda r: r[("BM_SnapshotInBackground", size, 0)]["firing_ms"])))
            cells.append(mmm(per_run(runs, lambda r: r[("BM_SnapshotInBackground", size, 0)]["fence_ms"])))
            cells.append(mmm(per_run(runs, lambda r: r[("BM_SnapshotInBackground", size, compute)]["fence_ms"])))
        print("| " + " | ".join(cells) + " |")
    print()


def consensus(out):
    print("### One synchronized firing against bare MPI collectives (consensus_benchmark, µs)\n")
    print("| ranks | bare MPI_Allreduce, 4 doubles | bare MPI_Allgather | bare MPI_Iallgather + MPI_Test "
          "| Ember firing, 4 handlers | firing / MPI_Allreduce | firing / MPI_Iallgather | collectives per firing |")
    print("|---|---|---|---|---|---|---|---|")
    for np in (2, 4):
        runs = []
        for path in sorted(glob.glob(os.path.join(out, f"consensus-{np}-*.jsonl"))):
            with open(path) as f:
                runs.append({d["measure"]: d for d in map(json.loads, filter(str.strip, f))})
        if not runs:
            continue
        get = lambda key: per_run(runs, lambda r: r[key]["us"])
        firing_key = "engine firing with 4 synchronized handler(s), minus the bare engine"
        allreduce = "bare MPI_Allreduce of 4 doubles"
        iallgather = "bare MPI_Iallgather + MPI_Test polling of 4 doubles"
        vs_blocking = per_run(runs, lambda r: r[firing_key]["us"] / r[allreduce]["us"])
        vs_nonblocking = per_run(runs, lambda r: r[firing_key]["us"] / r[iallgather]["us"])
        per_firing = per_run(runs, lambda r: r[firing_key]["collectives_per_firing"])
        print(f"| {np} | {mmm(get(allreduce))} | {mmm(get('bare MPI_Allgather of 4 doubles'))} | {mmm(get(iallgather))} "
              f"| {mmm(get(firing_key))} | {mmm(vs_blocking)} | {mmm(vs_nonblocking)} | {mmm(per_firing, '%.0f')} |")
    print()


def read_optional(out, name):
    """The text of OUT_DIR/name, or None when that stage did not run."""
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def data_parallel(out):
    text = read_optional(out, "data_parallel.jsonl")
    if text is None:
        return
    print("### Data parallel step time, 2 ranks (data_parallel_benchmark, ms per step)\n")
    print("| model (gradients, buckets) | mode | step ms | collectives / step | buckets started during backward / step |")
    print("|---|---|---|---|---|")
    for d in map(json.loads, filter(str.strip, text.splitlines())):
        s = d["step_ms"]
        print(f"| {d['model']} ({d['gradient_MiB']} MiB, {d['buckets']}) | {d['mode']} "
              f"| {s['min']:.2f} / {s['median']:.2f} / {s['max']:.2f} | {d['collectives_per_step']:.2f} "
              f"| {d['buckets_started_during_backward_per_step']:.2f} |")
    print()


def throughput(out):
    base, one, two, vs_base, scaling = [], [], [], [], []
    for path in sorted(glob.glob(os.path.join(out, "train-*.json"))):
        run = path.rsplit("-", 1)[1].split(".")[0]
        with open(path) as f:
            t = json.load(f)
        with open(os.path.join(out, f"handwritten-{run}.json")) as f:
            h = json.loads(f.read().strip().splitlines()[-1])["samples_per_s"]
        base.append(h)
        one.append(t["one_rank"])
        two.append(t["two_ranks"])
        vs_base.append(t["one_rank"] / h)
        scaling.append(t["two_ranks"] / t["one_rank"])
    if not base:
        return
    print("### Trainer throughput on Fashion-MNIST (samples/s, one epoch's training time)\n")
    print("| | samples/s | ratio | target |")
    print("|---|---|---|---|")
    print(f"| hand-written LibTorch loop | {mmm(base, '%.0f')} | 1 | |")
    print(f"| trainer, 1 rank | {mmm(one, '%.0f')} | {mmm(vs_base)} of the hand-written loop | >= 0.97 |")
    print(f"| trainer, 2 ranks (MPI) | {mmm(two, '%.0f')} | {mmm(scaling)} x one rank | >= 1.8 |")
    print()


def goodput(out):
    text = read_optional(out, "goodput.txt")
    if text is None:
        return
    print("### What checkpointing costs the trainer (checkpoint_goodput.sh)\n")
    print("```\n" + text.rstrip() + "\n```\n")


def checkpoint_io(out):
    """Issue 27's growth table: every cost of a checkpoint against its raw baseline, per state size.

    Each record holds the runs of one size; a ratio is raw / Ember (or raw / Python) per run
    (higher is better, 1 = the disk's speed), then min / median / max over the runs."""
    text = read_optional(out, "checkpoint_io.jsonl")
    if text is None:
        return
    ember, python, resume = {}, {}, {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        target = {"save_and_read": ember, "python_save_and_load": python, "resume": resume}.get(d.get("bench"))
        if target is not None and "mib" in d:
            target[d["mib"]] = d
    if not ember:
        return

    def ratios(raw, ours):
        n = min(len(raw), len(ours))
        return [raw[i] / ours[i] for i in range(n) if ours[i] > 0]

    def cell(d, key, raw_key=None):
        if d is None or key not in d:
            return "n/a"
        if raw_key is None:
            return mmm(d[key], "%.3f")
        return f"{mmm(d[key], '%.3f')} ({mmm(ratios(d[raw_key], d[key]), '%.2f')}x)"

    print("### Checkpoint I/O against the state size (reproduce.sh --checkpoint_io; seconds, min / median / max)\n")
    print("Ratios in parentheses are the raw baseline's time over the row's time, per run (1.00x = the "
          "disk's speed). Save: temporary file, write, fsync, rename, fsync of the directory, on both "
          "sides. Reads are of a cold file (dropped from the page cache). Resume: 2 ranks, rank 0 reads "
          "and verifies, broadcasts with a CRC check, every rank loads into its model (ranks: see the "
          "records), against rank 0's raw read of the file into 2 MiB pages alone and against a raw "
          "read + MPI broadcast of the bytes (no check, no load).\n")
    print("| state | raw write+fsync | Ember save | torch.save (Python) | async save blocks (first save) "
          "| warm memcpy | raw read | `ckpt verify` | Ember load | torch.load (Python) | resume, all ranks |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mib in sorted(ember):
        e, p, r = ember[mib], python.get(mib), resume.get(mib)
        size = f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"
        blocked = "n/a"
        if "async_blocked_s" in e:
            blocked = f"{mmm(e['async_blocked_s'], '%.3f')} ({e['async_first_blocked_s']:.3f})"
        resume_cell = "n/a"
        if r is not None:
            resume_cell = (f"{mmm(r['trainer_resume_s'], '%.3f')} "
                           f"({mmm(ratios(r['raw_read_hugepages_s'], r['trainer_resume_s']), '%.2f')}x a read; "
                           f"{mmm(ratios(r['raw_read_broadcast_s'], r['trainer_resume_s']), '%.2f')}x a read + broadcast)")
        memcpy = f"{e['memcpy_s']:.3f}" if "memcpy_s" in e else "n/a"
        cells = [size, cell(e, "raw_save_s"), cell(e, "ember_save_s", "raw_save_s"),
                 cell(p, "torch_save_s", "raw_save_s"), blocked, memcpy, cell(e, "raw_read_hugepages_s"),
                 cell(e, "verify_s", "raw_read_hugepages_s"), cell(e, "load_s", "raw_read_hugepages_s"),
                 cell(p, "torch_load_s", "raw_read_s"), resume_cell]
        print("| " + " | ".join(cells) + " |")
    print()
    print("The raw read is into 2 MiB pages (base/large_buffer.h); a plain read into 4 KiB pages, the "
          "Python side's baseline, is in the raw records below. Python's torch.save writes and fsyncs "
          "the same tensors (checkpoint_io_python.py), beside its own raw baseline in the same run.\n")


def main():
    if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
        sys.exit("usage: report.py OUT_DIR (the folder tools/bench/reproduce.sh wrote)")
    out = sys.argv[1]
    print("## Ember performance figures (min / median / max of the runs)\n")
    with open(os.path.join(out, "machine.txt")) as f:
        print("```\n" + f.read().rstrip() + "\n```\n")
    if glob.glob(os.path.join(out, "engine-*.json")):  # absent with reproduce.sh --checkpoint_io
        engine(out)
        serialization(out)
        consensus(out)
        data_parallel(out)
        throughput(out)
        goodput(out)
    checkpoint_io(out)


if __name__ == "__main__":
    main()
