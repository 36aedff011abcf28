#!/usr/bin/env python3
"""Loss/accuracy curves of an lctx-train run: reads metrics.jsonl, writes loss.png beside it.

usage: python3 launch/plot.py runs/quickstart/metrics.jsonl [--out FILE.png]
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    train, evals = {}, {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            # A resumed run may repeat steps: the last record of a step wins.
            (evals if r.get("split") == "eval" else train)[r["step"]] = r
    return [train[k] for k in sorted(train)], [evals[k] for k in sorted(evals)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics")
    ap.add_argument("--out", help="PNG path (default: loss.png beside the metrics)")
    a = ap.parse_args()
    train, evals = read(a.metrics)
    if not train and not evals:
        print(f"plot: no records in {a.metrics}", file=sys.stderr)
        return 1
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.metrics)), "loss.png")
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    for recs, label, style in ((train, "train", "-"), (evals, "eval", "o--")):
        pts = [(r["step"], r["loss"]) for r in recs if r.get("loss") is not None]
        if pts:
            ax_l.plot(*zip(*pts), style, label=f"{label} loss")
        pts = [(r["step"], 100.0 * r["accuracy"]) for r in recs if r.get("accuracy") is not None]
        if pts:
            ax_a.plot(*zip(*pts), style, label=f"{label} accuracy")
    skipped = [r["step"] for r in train if r.get("skipped")]
    for s in skipped:
        ax_l.axvline(s, color="red", alpha=0.3)
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("cross-entropy (scored tokens)")
    ax_l.set_yscale("log")
    ax_l.grid(alpha=0.3)
    ax_l.legend()
    ax_a.set_xlabel("step")
    ax_a.set_ylabel("accuracy on answer tokens (%)")
    ax_a.set_ylim(0, 100)
    ax_a.grid(alpha=0.3)
    ax_a.legend()
    fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(a.metrics))))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    last = train[-1] if train else evals[-1]
    print(f"plot: {out} (step {last['step']}, loss {last['loss']:.4f}, accuracy {100 * last['accuracy']:.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
