"""Top-1 on the CIFAR-10 (JPEG q75) test set of the reference checkpoint's subnets.

The largest subnet at W4A4, the smallest at W2A2 and 20 random mixed-precision subnets, each after
per-subnet calibration on the validation split. Writes a JSON report and prints a Markdown table.

    python scripts/reference_accuracy.py [--checkpoint C] [--random 20] [--out docs/results/accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.commands.common import load_supernet, write_text_atomic
from qfa_deploy.data import load_splits
from qfa_deploy.evaluate import evaluate_arch
from qfa_deploy.metrics import subnet_cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--random", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--calib-batches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/results/accuracy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_supernet(args.checkpoint)
    space = net.space.name
    splits = load_splits(net.space)
    rng = random.Random(args.seed)
    subnets = [("largest W4A4", ArchConfig.largest(space, 4)), ("smallest W2A2", ArchConfig.smallest(space, 2))]
    subnets += [(f"random {i}", sample_arch(space, rng)) for i in range(args.random)]
    rows = []
    for name, cfg in subnets:
        t = time.time()
        top1 = evaluate_arch(net, cfg, splits.val, splits.test, args.calib_batches)
        cost = subnet_cost(cfg, net)
        rows.append({"name": name, "top1": top1, "mflops": cost.macs / 1e6, "gbitops": cost.bitops / 1e9,
                     "arch": cfg.short(), "cfg": cfg.to_dict(), "seconds": round(time.time() - t, 1)})
        mflops, gbitops = cost.macs / 1e6, cost.bitops / 1e9
        print(f"| {name} | {100 * top1:.2f} | {mflops:.2f} | {gbitops:.4f} | `{cfg.short()[:60]}...` |", flush=True)
    randoms = [r["top1"] for r in rows[2:]]
    summary = {}
    if randoms:
        summary = {"random_mean": statistics.mean(randoms), "random_min": min(randoms), "random_max": max(randoms)}
    print(f"random subnets: mean {100 * summary.get('random_mean', 0):.2f}%, "
          f"min {100 * summary.get('random_min', 0):.2f}%, max {100 * summary.get('random_max', 0):.2f}%")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"space": space, "test_images": len(splits.test), "rows": rows,
                                            "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
