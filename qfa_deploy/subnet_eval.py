"""``eval_subnet``: the test-split top-1 of one subnet of a checkpoint, the library function behind
``qfa-deploy eval``.

The arch config is read first (a missing or malformed file fails before the supernet loads), then
the supernet, the test split (optionally fetched with torchvision) and the calibration images; the
subnet is calibrated on ``calib_batches`` x 100 validation images (0: the checkpoint's stored
statistics, no calibration data read) and scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qfa_deploy.errors import QfaError

__all__ = ["EvalConfig", "eval_subnet"]

@dataclass(frozen=True)
class EvalConfig:
    """One evaluation (``qfa-deploy eval``'s options), validated when made."""

    arch: str  # the subnet's cfg.json
    checkpoint: str | None = None  # default: the embedded reference checkpoint
    data_dir: str | None = None
    calib_batches: int = 20  # 0: the checkpoint's stored statistics
    limit: int | None = None  # the first N test images only
    download: bool = False  # fetch CIFAR-10 with torchvision into data_dir (or $QFA_DATA_DIR) first

    def __post_init__(self) -> None:
        if self.calib_batches < 0:
            raise QfaError("--calib-batches must be at least 0")
        if self.limit is not None and self.limit < 1:
            raise QfaError("--limit must be at least 1")


def eval_subnet(config: EvalConfig) -> dict:
    """Top-1 of ``config.arch`` on the test split: {"arch", "digest", "top1", "images", "calib_batches"}."""
    from qfa_deploy.arch import load_arch
    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.data import calibration_images
    from qfa_deploy.evaluate import evaluate_arch
    from qfa_deploy.export.pipeline import CALIB_BATCH_SIZE  # export calibrates on the same batches
    from qfa_deploy.reference import default_checkpoint

    load_arch(config.arch)  # a missing or malformed config fails before the supernet loads
    net = load_supernet(config.checkpoint or default_checkpoint())
    cfg = load_arch(config.arch, expect_space=net.space.name)
    test = _test_split(net.space, config)
    test = test.subset(config.limit) if config.limit else test
    batches = config.calib_batches
    val = calibration_images(net.space, config.data_dir, batches * CALIB_BATCH_SIZE) if batches else None
    top1 = evaluate_arch(net, cfg, val, test, batches)
    return {"arch": cfg.short(), "digest": cfg.digest(), "top1": top1, "images": len(test), "calib_batches": batches}


def _test_split(space, config: EvalConfig):
    """The test split of ``config.data_dir`` (downloaded first with ``config.download``)."""
    from qfa_deploy.data import default_data_dir, download_cifar10, load_splits

    data_dir = config.data_dir
    if config.download:
        if space.num_classes != 10:
            raise QfaError(f"--download fetches CIFAR-10; space {space.name!r} needs its own data (--data)")
        data_dir = str(download_cifar10(data_dir if data_dir is not None else default_data_dir()))
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not root.is_dir():  # a folder that is there but damaged: load_splits says what is wrong with it
        raise QfaError(f"test-set accuracy needs the test set: no data folder {root} (--data DIR, or --download)")
    return load_splits(space, root).test
