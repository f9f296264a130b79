"""From a searched config to measured numbers: test accuracy, and on a device its latency.

The chosen subnet is extracted and calibrated once (on the validation split); that very subnet is
scored on the test split and, when a device is given, folded, exported to QDQ ONNX, compiled with
TVM and profiled there (``qfa_deploy.deploy``, imported only then). Predictions sit beside the
measurements so the gap is visible.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from qfa_deploy.arch import ArchConfig
from qfa_deploy.errors import QfaError

__all__ = ["evaluate_choice"]

log = logging.getLogger(__name__)


def _deploy_api():
    """(fold, export_onnx, save_onnx, compile_artifact, profile_artifact), or None if not installed."""
    try:
        from qfa_deploy.deploy import compile_artifact, profile_artifact
        from qfa_deploy.export import export_onnx, save_onnx
        from qfa_deploy.fold import fold
    except ImportError as exc:
        log.info("deploy stage unavailable: %s", exc)
        return None
    return fold, export_onnx, save_onnx, compile_artifact, profile_artifact


def _spread_subset(source, n: int):
    """``n`` images drawn by a fixed permutation: the CIFAR-10 test file is sorted by class, so its
    first ``n`` images (``ArraySource.subset``) would be one or two classes only."""
    import torch

    if not 1 <= n <= len(source):
        raise QfaError(f"--test-limit must be between 1 and {len(source)}")
    idx = torch.randperm(len(source), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return source.select(idx)


def evaluate_choice(
    supernet,
    cfg: ArchConfig,
    splits,
    predicted: dict,
    *,
    calib_batches: int = 20,
    test_limit: int | None = None,
    device: str | None = None,
    artifact_dir: str | Path | None = None,
    schedule: str = "auto",
) -> dict:
    """Measure ``cfg``: top-1 on the test split, and latency on ``device`` if given.

    Args:
        supernet: the trained supernet (``checkpoint.load_supernet``).
        splits: ``data.load_splits`` of its space (val calibrates, test scores).
        predicted: what the search predicted (``predicted_top1``, ``latency_ms``, ...), echoed.
        test_limit: score on N test images only (a fixed random subset, all classes).
        device: a device name / profile for ``qfa_deploy.deploy``; None: accuracy only.
        artifact_dir: where the ONNX model and compiled library go (default: ./search-artifact).
        schedule: the CPU schedule to compile with (``compile_artifact``'s): the latency table's, so
            that the measured latency is comparable to the predicted one.

    Returns:
        JSON-ready dict with ``predicted``, ``measured`` ({"top1", "test_images"[, "latency_ms"]}) and
        ``deploy`` (what happened to the device stage, in words).
    """
    from qfa_deploy.evaluate import accuracy, calibrated_subnet

    if calib_batches < 1:
        raise QfaError("--calib-batches must be at least 1")
    test = _spread_subset(splits.test, test_limit) if test_limit else splits.test
    subnet = calibrated_subnet(supernet, cfg, splits.val, calib_batches)
    top1 = accuracy(subnet, test, cfg.resolution)
    out = {
        "arch": cfg.short(),
        "digest": cfg.digest(),
        "predicted": predicted,
        "measured": {"top1": top1, "test_images": len(test), "calib_batches": calib_batches},
        "deploy": "no device given: accuracy only",
    }
    if device is None:
        return out
    _measure_on_device(subnet, cfg, device, Path(artifact_dir or "search-artifact"), schedule, out)
    return out


def _measure_on_device(subnet, cfg: ArchConfig, device: str, folder: Path, schedule: str, out: dict) -> None:
    """Fold, export, compile and profile ``subnet`` on ``device`` in ``folder``; its latency goes into ``out``."""
    api = _deploy_api()
    if api is None:
        out["deploy"] = "the deploy package (qfa_deploy.deploy) is not installed: accuracy only, no latency"
        return
    fold, export_onnx, save_onnx, compile_artifact, profile_artifact = api
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = save_onnx(export_onnx(fold(subnet.eval())), folder / "model.onnx")
    compiled = compile_artifact(onnx_path, device, folder, schedule=schedule)
    (folder / "meta.json").write_text(json.dumps({"arch": cfg.to_dict(), **compiled}, indent=1) + "\n")
    profile = profile_artifact(folder, device)
    out["measured"]["latency_ms"] = profile["latency_ms"]
    out["measured"]["timing"] = profile.get("timing")
    # the statistic the device's protocol (and so its latency table) stands for: median, or min on a shared host
    out["measured"]["statistic"] = profile["protocol"]["statistic"]
    out["deploy"] = f"compiled for {compiled.get('device', device)} and profiled ({profile.get('timing')})"
    out["artifact"] = str(folder)
