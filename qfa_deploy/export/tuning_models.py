"""QDQ ONNX models of a few subnets of a space, whose workloads ``qfa-deploy tune --space`` tunes."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import torch

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.calibrate import calibrate
from qfa_deploy.errors import QfaError
from qfa_deploy.export.onnx_export import export_onnx, save_onnx
from qfa_deploy.extract import extract
from qfa_deploy.fold import fold
from qfa_deploy.nn.supernet import QFASupernet
from qfa_deploy.space import create_space

__all__ = ["space_models"]


def space_models(space: str, resolution: int, count: int, folder: Path, seed: int = 0) -> list[Path]:
    """QDQ ONNX models of ``count`` subnets of ``space`` at ``resolution`` (largest, smallest, random).

    Their weights are random (a schedule does not depend on them); statistics come from two random
    calibration batches. Here, not in deploy/: tuning sees only the ONNX models this writes.
    """
    sp = create_space(space)
    if resolution not in sp.resolutions:
        raise QfaError(f"--resolution {resolution} is not one of {space}'s ({sp.resolutions[0]}..{sp.resolutions[-1]})")
    rng = random.Random(seed)
    cfgs = [replace(ArchConfig.largest(space), resolution=resolution),
            replace(ArchConfig.smallest(space), resolution=resolution)]
    cfgs += [sample_arch(space, rng, resolutions=[resolution]) for _ in range(max(0, count - 2))]
    torch.manual_seed(seed)
    supernet = QFASupernet(space).eval()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, cfg in enumerate(cfgs[:count]):
        subnet = extract(supernet, cfg)
        g = torch.Generator().manual_seed(seed + i)
        calibrate(subnet, (torch.randn(2, 3, resolution, resolution, generator=g) for _ in range(2)), resolution, 2)
        path = folder / f"subnet{i}-{cfg.digest()[:8]}.onnx"
        save_onnx(export_onnx(fold(subnet.eval()), batch=1), path)
        paths.append(path)
    return paths
