"""The embedded reference checkpoint: the CIFAR-10 supernet trained by this project.

It is stored compactly (fp16 weights) inside the package and used whenever a command is given no
``--checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

from qfa_deploy.checkpoint import load_checkpoint, save_checkpoint
from qfa_deploy.errors import QfaError

__all__ = ["REFERENCE_SPACE", "compact_checkpoint", "default_checkpoint"]

REFERENCE_SPACE = "qfa-mbv3-cifar10"
_ASSET = Path(__file__).parent / "assets" / "qfa-mbv3-cifar10.pt"


def default_checkpoint() -> Path:
    if not _ASSET.is_file():
        raise QfaError("no embedded reference checkpoint in this install; pass --checkpoint")
    return _ASSET


def compact_checkpoint(src: str | Path, dst: str | Path, **extra) -> None:
    """Copy a training checkpoint keeping only the model, in fp16, plus provenance."""
    payload = load_checkpoint(src)
    state = {k: v.half() if v.is_floating_point() else v for k, v in payload["model"].items()}
    save_checkpoint(
        dst, payload["space"], state, act_quantizer=payload.get("act_quantizer", "batchquant"),
        step=payload.get("step"), train_config=payload.get("train_config"), **extra,
    )


