"""Top-1 accuracy of a subnet after per-subnet calibration (or with the checkpoint's stored statistics)."""

from __future__ import annotations

import torch
from torch import nn

from qfa_deploy.arch import ArchConfig
from qfa_deploy.calibrate import calibrate
from qfa_deploy.data import ImageSource, resize
from qfa_deploy.extract import StaticSubnet, extract
from qfa_deploy.nn.supernet import QFASupernet

__all__ = ["accuracy", "calibrated_subnet", "evaluate_arch"]


@torch.no_grad()
def accuracy(model: nn.Module, source: ImageSource, resolution: int, batch_size: int = 500) -> float:
    model.eval()
    device = next(model.parameters()).device  # batches come from the CPU; the model may be on a GPU
    correct = 0
    for x, y in source.batches(batch_size):
        correct += (model(resize(x.to(device), resolution)).argmax(1).cpu() == y).sum().item()
    return correct / len(source)


def calibrated_subnet(
    supernet: QFASupernet,
    cfg: ArchConfig,
    calib: ImageSource | None,
    calib_batches: int = 20,
    batch_size: int = 100,
) -> StaticSubnet:
    """Extract ``cfg`` and calibrate it on the first batches of ``calib`` (a fixed, ordered pass).

    With ``calib_batches == 0`` nothing is recomputed: the subnet keeps the supernet's stored BN and
    BatchQuant statistics (sliced to the subnet as ``extract`` does), ``calib`` is not read (it may be
    None) and the subnet is returned in eval mode.
    """
    if calib_batches < 0:
        raise ValueError(f"calib_batches must be >= 0, not {calib_batches}")
    supernet.set_active(cfg)
    subnet = extract(supernet, cfg)
    if calib_batches == 0:
        return subnet.eval()
    if calib is None:
        raise ValueError("calibration needs images (calib is None)")
    images = (x for x, _ in calib.batches(batch_size))
    calibrate(subnet, images, cfg.resolution, calib_batches)
    return subnet


def evaluate_arch(
    supernet: QFASupernet,
    cfg: ArchConfig,
    calib: ImageSource | None,
    test: ImageSource,
    calib_batches: int = 20,
) -> float:
    return accuracy(calibrated_subnet(supernet, cfg, calib, calib_batches), test, cfg.resolution)
