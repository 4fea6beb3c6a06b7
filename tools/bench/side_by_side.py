"""Ember's trainer against PyTorch DDP from their own outputs, run by run:

  side_by_side.py [--global_batch=N] ember:RUN1,RUN2,RUN3 ddp:RUN1,RUN2,RUN3

Each RUN is an Ember metrics.jsonl or a ddp_baseline.py log (its '"baseline"' JSON lines). A run's
figure is the median samples/s of its epochs after the first (the first warms up; a run of one
epoch gives that epoch). Prints, per side, the runs' figures and their min / median / max, the ratio
of the medians (Ember / DDP), and each side's train loss after epoch 1 (the two run the same
computation: the same weights, data order and batches, so the losses agree to float noise).
With --global_batch (samples per step over all ranks), each median is also given as ms per step.
A run with no epoch line is an error naming the file: a crashed run is never averaged away.
"""
import json
import statistics
import sys


def epochs_of(path):
    lines = []
    try:
        f = open(path)
    except OSError as e:
        raise SystemExit(f"side_by_side.py: cannot read {path}: {e.strerror} (did that run fail?)")
    with f:
        for raw in f:
            raw = raw.strip()
            if not raw.startswith("{"):
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if "samples_per_s" in line and "epoch" in line:
                lines.append(line)
    if not lines:
        raise SystemExit(f"side_by_side.py: {path} has no epoch line with samples_per_s (did that run fail?)")
    for l in lines:
        if not isinstance(l["samples_per_s"], (int, float)) or not l["samples_per_s"] > 0:
            raise SystemExit(f"side_by_side.py: {path}: epoch {l['epoch']} has samples_per_s {l['samples_per_s']}, not > 0")
    return lines


def buckets_per_step(lines):
    """Gradient all-reduces per step: Ember's from gradient_buckets_reduced, DDP's from its sizes."""
    last = lines[-1]
    if "bucket_bytes" in last:
        return len(last["bucket_bytes"]) if last["bucket_bytes"] else None
    if "gradient_buckets_reduced" in last and "iteration" in last:
        before = lines[-2]["iteration"] if len(lines) > 1 else 0
        steps = last["iteration"] - before
        return last["gradient_buckets_reduced"] / steps if steps > 0 else None
    return None


def figure(lines):
    rates = [l["samples_per_s"] for l in lines]
    return statistics.median(rates[1:] or rates)


def main(argv):
    sides = []
    global_batch = 0
    for arg in argv:
        if arg.startswith("--global_batch="):
            value = arg.split("=", 1)[1]
            global_batch = int(value) if value.isdigit() else 0
            if global_batch < 1:
                raise SystemExit(f"side_by_side.py: {arg}: must be >= 1")
            continue
        name, sep, files = arg.partition(":")
        if not sep or not name or not files or "" in files.split(","):
            raise SystemExit(f"side_by_side.py: '{arg}' is not NAME:FILE[,FILE...]")
        if name in [n for n, _ in sides]:
            raise SystemExit(f"side_by_side.py: the side '{name}' is given twice")
        runs = [epochs_of(p) for p in files.split(",")]
        sides.append((name, runs))
    if not sides:
        raise SystemExit(__doc__)
    medians = {}
    for name, runs in sides:
        figures = [figure(r) for r in runs]
        medians[name] = statistics.median(figures)
        loss = runs[0][0].get("train_loss")
        step = " (%.3f ms/step)" % (1000.0 * global_batch / medians[name]) if global_batch else ""
        b = buckets_per_step(runs[0])
        print("%-6s %d run(s): %s samples/s; min %.0f, median %.0f%s, max %.0f; train loss after epoch 1: %s%s" %
              (name, len(figures), ", ".join("%.0f" % f for f in figures), min(figures), medians[name], step,
               max(figures), "%.7f" % loss if loss is not None else "?",
               "; all-reduces a step: %g" % b if b is not None else ""))
    if "ember" in medians and "ddp" in medians:
        print("ember / ddp (medians): %.3fx" % (medians["ember"] / medians["ddp"]))


if __name__ == "__main__":
    main(sys.argv[1:])
