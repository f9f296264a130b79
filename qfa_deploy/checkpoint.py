"""Checkpoints: a versioned dict naming its space, written atomically, read with weights_only=True."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch

from qfa_deploy.atomic import atomic_write_bytes
from qfa_deploy.errors import QfaError

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "atomic_write_bytes", "first_non_finite", "load_model_state",
    "float32_model_state", "load_checkpoint", "load_supernet", "read_torch_file", "save_checkpoint", "short_repr",
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
        with warnings.catch_warnings():  # a sparse tensor's: a line on stderr; load_checkpoint refuses it
            warnings.filterwarnings("ignore", message="Validating sparse tensor invariants")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / foreign files
        raise QfaError(f"{path}: not a readable checkpoint ({_load_failure(exc)})") from None


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` on one short line (a hostile key or field may be anything, a tensor included)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_non_finite(tensors: dict) -> str | None:
    """The name of the first floating tensor of ``tensors`` holding a NaN or an infinity, else None
    (~17 ms over the embedded checkpoint, beside ~110 ms of torch.load)."""
    return next((k for k, v in tensors.items()
                 if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()), None)


def load_checkpoint(path: str | Path, expect_space: str | None = None) -> dict:
    """Load and check a checkpoint; every problem is a one-line QfaError.

    Checked here, for every reader: the format, version and space; the model weights (string names,
    tensors, every floating value finite); the plain fields readers use (``act_quantizer``, ``step``,
    ``train_config``) of the right type. Whether the weights fit a supernet: ``load_model_state``.
    """
    path = Path(path)
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or not (isinstance(payload.get("format"), str)
                                             and payload["format"] == CHECKPOINT_FORMAT):
        raise QfaError(f"{path}: not a qfa-deploy supernet checkpoint")
    if type(payload.get("version")) is not int or payload["version"] != CHECKPOINT_VERSION:
        version = payload.get("version")
        raise QfaError(f"{path}: checkpoint format version {short_repr(version)}, this tool reads {CHECKPOINT_VERSION}")
    if not isinstance(payload.get("space"), str):
        raise QfaError(f"{path}: checkpoint names no search space")
    if expect_space is not None and payload.get("space") != expect_space:
        raise QfaError(f"{path}: checkpoint is of space {short_repr(payload.get('space'))}, expected {expect_space!r}")
    model = payload.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise QfaError(f"{path}: checkpoint has no model weights")
    sparse = next((k for k, v in model.items() if v.layout != torch.strided), None)
    if sparse is not None:
        raise QfaError(f"{path}: model weight {short_repr(sparse)} is not a dense tensor")
    bad_key = next((k for k in model if not isinstance(k, str)), None)
    if bad_key is not None:
        raise QfaError(f"{path}: model weight key {short_repr(bad_key)} is not a name ({type(bad_key).__name__}, "
                       "expected a string)")
    bad = first_non_finite(model)
    if bad is not None:
        raise QfaError(f"{path}: model weight {short_repr(bad)} holds non-finite values (NaN or infinity)")
    _check_fields(path, payload)
    return payload


def _check_fields(path: Path, payload: dict) -> None:
    """The plain fields a reader takes from a checkpoint, when present, are of the right type."""
    from qfa_deploy.quant import ACT_QUANTIZERS

    if "act_quantizer" in payload and (not isinstance(payload["act_quantizer"], str)
                                       or payload["act_quantizer"] not in ACT_QUANTIZERS):
        raise QfaError(f"{path}: unknown activation quantizer {short_repr(payload['act_quantizer'])} "
                       f"(known: {', '.join(ACT_QUANTIZERS)})")
    step = payload.get("step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
        raise QfaError(f"{path}: step {short_repr(step)} is not a non-negative integer")
    saved = payload.get("train_config")
    if saved is not None and (not isinstance(saved, dict) or not all(isinstance(k, str) for k in saved)):
        raise QfaError(f"{path}: train_config is not a table of settings (a {type(saved).__name__})")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def load_model_state(path: str | Path, net: torch.nn.Module, state: dict, ignore=None) -> None:
    """``net.load_state_dict(state)``, every mismatch a one-line QfaError naming the first offending
    weight: a missing or unexpected name, another shape, integer values where ``net`` holds floating
    ones (or back; ``load_state_dict`` would silently cast). Loading goes through the modules' own
    ``_load_from_state_dict`` (which read former layouts). ``ignore(name)``: names left out on both
    sides (a partial load: fresh values stay). After an error ``net`` is half-loaded: discard it."""
    if ignore is not None:
        state = {k: v for k, v in state.items() if not ignore(k)}
    current = net.state_dict()
    for k, got in state.items():
        want = current.get(k)
        if want is not None and (got.is_complex() or got.is_floating_point() != want.is_floating_point()):
            _mismatch(path, net, f"{k}: {_dtype(got)} values, expected {_dtype(want)}")
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes: torch lists every mismatch, several lines
        _mismatch(path, net, _first_load_error(exc))
    missing = [k for k in missing if ignore is None or not ignore(k)]
    if missing:
        _mismatch(path, net, f"missing {short_repr(missing[0])}")
    if unexpected:
        _mismatch(path, net, f"unexpected {short_repr(unexpected[0])}")


def _first_load_error(exc: RuntimeError) -> str:
    """The first of ``load_state_dict``'s complaints, short."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc).strip()]
    first = lines[0]
    size = re.match(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from checkpoint, "
                    r"the shape in current model is torch\.Size\((\[.*?\])\)", first)
    if size:
        return f"{size.group(1)}: shape {size.group(2)}, expected {size.group(3)}"
    return first[:120]


def _mismatch(path: str | Path, net: torch.nn.Module, problem: str) -> NoReturn:
    space = getattr(getattr(net, "space", None), "name", None)
    what = f"the {space!r} supernet" if space else "the model"
    raise QfaError(f"{path}: weights do not match {what} ({problem})")


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
    load_model_state(path, net, float32_model_state(payload))
    return net.eval()
