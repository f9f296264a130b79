"""The embedded reference checkpoint (the CIFAR-10 supernet trained by this project) and the
accuracy predictor fitted on its subnets.

The checkpoint is stored compactly (fp16 weights) inside the package and used whenever a command
is given no ``--checkpoint``; the predictor whenever ``search`` is given no ``--predictor``.
"""

from __future__ import annotations

from pathlib import Path

from qfa_deploy.checkpoint import load_checkpoint, save_checkpoint
from qfa_deploy.errors import QfaError
from qfa_deploy.resources import asset

__all__ = ["REFERENCE_SPACE", "compact_checkpoint", "default_checkpoint", "default_predictor"]

REFERENCE_SPACE = "qfa-mbv3-cifar10"
_ASSET = asset("qfa-mbv3-cifar10.pt")


def default_checkpoint() -> Path:
    if not _ASSET.is_file():
        raise QfaError("no embedded reference checkpoint in this install; pass --checkpoint")
    return _ASSET


def default_predictor() -> Path:
    """The accuracy predictor fitted on subnets of the embedded checkpoint (``assets/predictor/``:
    beside it the measured subnets it was fitted on and the fit's report)."""
    path = asset("predictor/predictor.pt")
    if not path.is_file():
        raise QfaError("no embedded accuracy predictor in this install: pass --predictor "
                       "(`qfa-deploy collect` then `qfa-deploy predictor fit` make one)")
    return path


def compact_checkpoint(src: str | Path, dst: str | Path, **extra) -> None:
    """Copy a training checkpoint keeping only the model, in fp16, plus provenance."""
    payload = load_checkpoint(src)
    state = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    save_checkpoint(
        dst, payload["space"], state, act_quantizer=payload.get("act_quantizer", "batchquant"),
        step=payload.get("step"), train_config=payload.get("train_config"), **extra,
    )


