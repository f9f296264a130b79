"""Compact a training checkpoint for release: model weights in fp16, no optimiser state.

The result loads wherever a checkpoint is taken (``--checkpoint``, ``train --init-from``); per-subnet
calibration recomputes the statistics, so fp16 storage costs no measurable accuracy (the reference
figures in docs/results.md are of the fp16 file).

    python scripts/release_checkpoint.py RUN/checkpoint.pt OUT.pt [--notes "how it was trained"]
"""

from __future__ import annotations

import argparse
import sys

from qfa_deploy.checkpoint import load_checkpoint, save_checkpoint
from qfa_deploy.digest import file_sha256
from qfa_deploy.errors import QfaError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a training run's checkpoint.pt")
    ap.add_argument("target", help="the compact checkpoint to write")
    ap.add_argument("--notes", default=None, help="how it was trained (default: the source's notes, if any)")
    args = ap.parse_args()
    try:
        run = load_checkpoint(args.source)
    except QfaError as exc:
        sys.exit(f"error: {exc}")
    model = {k: v.half() if v.is_floating_point() else v for k, v in run["model"].items()}
    extra = {k: run[k] for k in ("act_quantizer", "step", "train_config") if k in run}
    notes = args.notes if args.notes is not None else run.get("notes")
    if notes is not None:
        extra["notes"] = notes
    save_checkpoint(args.target, run["space"], model, **extra)
    print(f"{args.target}: space {run['space']}, step {run.get('step')}, sha256 {file_sha256(args.target)}")


if __name__ == "__main__":
    main()
