"""Top-1 agreement of PyTorch, onnxruntime (optimisations off and default) and TVM x86 on CIFAR-10.

TVM x86 is measured twice: a plain ``tvm.compile`` of the QDQ model (``tvm_x86``) and the library
``qfa-deploy export --target x86`` ships (``tvm_artifact``: the x86 profile, the default schedule,
batch 1).

For the largest, the smallest and N random subnets of a checkpoint (default: the embedded reference),
each calibrated, folded and exported as in ``qfa-deploy export``, on the test split. The JSON report
is rewritten after every subnet, so a long run shows its progress; the criterion (DESIGN.md,
"Numerics contract") is agreement >= 99.9% for every runtime. The same check is the slow test
``tests/test_onnx_export.py::test_checkpoint_agreement_on_cifar10_test_set``.

    python scripts/export_agreement.py [--checkpoint C] [--random 5] [--limit N] [--out agreement.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.commands.common import load_supernet, write_text_atomic
from qfa_deploy.data import load_splits
from qfa_deploy.deploy.compile import compile_artifact
from qfa_deploy.digest import file_sha256
from qfa_deploy.export.verify import checkpoint_agreement
from qfa_deploy.reference import default_checkpoint

CRITERION = 0.999


def shipped_x86_library(onnx_path, folder) -> dict:
    """As ``qfa-deploy export --target x86`` compiles: the x86 profile, default schedule, batch 1."""
    return compile_artifact(onnx_path, "x86", folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--random", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--calib-batches", type=int, default=20)
    ap.add_argument("--limit", type=int, default=None, help="First N test images only.")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="export_agreement.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    net = load_supernet(args.checkpoint)
    space = net.space.name
    rng = random.Random(args.seed)
    cfgs = [ArchConfig.largest(space), ArchConfig.smallest(space)]
    cfgs += [sample_arch(space, rng) for _ in range(args.random)]
    splits = load_splits(net.space)
    test = splits.test.subset(args.limit) if args.limit else splits.test
    checkpoint = args.checkpoint or str(default_checkpoint())
    result = {"checkpoint": {"path": checkpoint, "sha256": file_sha256(checkpoint)}, "images": len(test), "subnets": []}
    for cfg in cfgs:
        start = time.time()
        (report,) = checkpoint_agreement(
            net, [cfg], splits.val, test, calib_batches=args.calib_batches, threads=args.threads,
            compile_library=shipped_x86_library,
        )
        report["seconds"] = round(time.time() - start, 1)
        result["subnets"].append(report)
        result["passed"] = all(r["agreement"] >= CRITERION for s in result["subnets"] for r in s["runtimes"].values())
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
        print(f"{cfg.short()}  ({report['seconds']:.0f} s)", flush=True)
        for name, r in report["runtimes"].items():
            print(
                f"  {name:12s} top-1 {100 * r['top1']:6.2f}%  agreement {100 * r['agreement']:7.3f}%  "
                f"max|dlogit| {r['max_abs_logit_diff']:.3g}  disagreements {r['disagreements']} "
                f"(PyTorch top-2 margin <= {r['max_margin_of_disagreements']:.3g})",
                flush=True,
            )
    print("passed" if result["passed"] else "FAILED", flush=True)


if __name__ == "__main__":
    main()
