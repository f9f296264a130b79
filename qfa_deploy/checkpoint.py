"""Checkpoints: a versioned dict naming its space, written atomically, read with weights_only=True."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from qfa_deploy.atomic import atomic_write_bytes
from qfa_deploy.errors import QfaError

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "atomic_write_bytes", "float32_model_state", "load_checkpoint",
    "load_supernet", "read_torch_file", "save_checkpoint",
]

CHECKPOINT_FORMAT = "qfa-supernet"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, space: str, model_state: dict, **extra: Any) -> None:
    """Write a checkpoint atomically; model weights that are NaN or infinite are refused, never written."""
    bad = next((k for k, t in model_state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise QfaError(f"{path}: not written: {bad} holds non-finite values (the previous checkpoint is kept)")
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "space": space, "model": model_state}
    payload.update(extra)
    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def _load_failure(exc: Exception) -> str:
    """One short reason from torch.load's (long, multi-line, advice-laden) exception text."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    if isinstance(exc, EOFError) or not text:
        return "empty or truncated file" if isinstance(exc, EOFError) else exc.__class__.__name__
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        found = re.search(r"GLOBAL (\S+)", detail)
        if found:
            return f"it refers to {found.group(1)}; only tensors and plain data are loaded"
        return f"corrupt, or not a PyTorch file: {detail[:80]}"
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text.splitlines()[0])
    return first.split(". ")[0][:120] or exc.__class__.__name__


def read_torch_file(path: str | Path):
    """What ``path`` holds, read with ``weights_only`` (a pickle that holds code is refused); a missing
    or unreadable file is a one-line QfaError."""
    path = Path(path)
    if not path.is_file():
        raise QfaError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / foreign files
        raise QfaError(f"{path}: not a readable checkpoint ({_load_failure(exc)})") from None


def load_checkpoint(path: str | Path, expect_space: str | None = None) -> dict:
    """Load and check a checkpoint; every problem is a one-line QfaError."""
    path = Path(path)
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise QfaError(f"{path}: not a qfa-deploy supernet checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        version = payload.get("version")
        raise QfaError(f"{path}: checkpoint format version {version!r}, this tool reads {CHECKPOINT_VERSION}")
    if not isinstance(payload.get("space"), str):
        raise QfaError(f"{path}: checkpoint names no search space")
    if expect_space is not None and payload.get("space") != expect_space:
        raise QfaError(f"{path}: checkpoint is of space {payload.get('space')!r}, expected {expect_space!r}")
    model = payload.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise QfaError(f"{path}: checkpoint has no model weights")
    return payload


def float32_model_state(payload: dict) -> dict:
    """A loaded checkpoint's model state with floating tensors in float32 (released ones are fp16)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in payload["model"].items()}


def load_supernet(path: str | Path, space: str | None = None):
    """The supernet stored in checkpoint ``path``, in eval mode (``space``: refuse another space).

    ``reference.default_checkpoint()`` is the embedded one (kept out of here: reference imports this module).
    """
    from qfa_deploy.nn.supernet import QFASupernet

    path = Path(path)
    payload = load_checkpoint(path, expect_space=space)
    net = QFASupernet(payload["space"], act_quantizer=payload.get("act_quantizer", "batchquant"))
    try:
        net.load_state_dict(float32_model_state(payload))
    except RuntimeError:
        raise QfaError(f"{path}: weights do not match the {payload['space']!r} supernet") from None
    return net.eval()
