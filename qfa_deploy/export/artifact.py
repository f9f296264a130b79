"""Export artifacts: a folder with ``model.onnx`` (+ compiled files) and ``meta.json``, written whole.

The folder is built in a temporary sibling (``.NAME.XXXX.tmp``) and renamed into place only when
everything is written, so a reader never sees a half-written artifact, and a failed or interrupted
export leaves nothing behind. ``meta.json`` records the arch config, space, target, calibration,
the checkpoint (path and sha256, so ``verify`` can rebuild the subnet), package versions and the
sha256 of every other file of the folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from qfa_deploy.arch import ArchConfig
from qfa_deploy.digest import file_sha256
from qfa_deploy.errors import QfaError

__all__ = [
    "CALIBRATION_SEED",
    "ARTIFACT_FORMAT",
    "ARTIFACT_VERSION",
    "META_NAME",
    "ONNX_NAME",
    "build_artifact",
    "calibrate_for_export",
    "read_artifact",
    "staged_directory",
]

CALIBRATION_SEED = 0
ARTIFACT_FORMAT = "qfa-artifact"
ARTIFACT_VERSION = 1
ONNX_NAME = "model.onnx"
META_NAME = "meta.json"

CompileFn = Callable[[Path, str, Path], dict]  # (onnx_path, device, out_dir) -> extra meta


def calibrate_for_export(supernet, cfg: ArchConfig, calib, batches: int, batch_size: int = 100):
    """``evaluate.calibrated_subnet`` under a fixed torch seed, returned in eval mode.

    Calibration runs in training mode, where the head's dropout draws random masks that reach the
    classifier's activation range; seeding makes ``verify`` rebuild the exported constants.
    """
    import torch

    from qfa_deploy.evaluate import calibrated_subnet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CALIBRATION_SEED)
        return calibrated_subnet(supernet, cfg, calib, batches, batch_size).eval()


def _oserror(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


@contextmanager
def staged_directory(out: str | Path, force: bool = False) -> Iterator[Path]:
    """A fresh temporary folder beside ``out`` that becomes ``out`` when the block succeeds.

    Raises ``QfaError`` at once if ``out`` exists (and ``force`` is not set), is not a directory,
    or its parent cannot be written. On any exception the temporary folder is removed; with
    ``force`` an existing ``out`` is only replaced once the new one is complete.
    """
    out = Path(out).absolute()
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise QfaError(f"{out} exists and is not a directory")
        if not force:
            raise QfaError(f"{out} already exists (use --force to replace it)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise QfaError(f"cannot write {out}: {_oserror(exc)}") from None
    try:
        yield tmp
        try:
            _move_into_place(tmp, out)
        except OSError as exc:
            raise QfaError(f"cannot write {out}: {_oserror(exc)}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    try:
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old / out.name, out)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def build_artifact(
    folder: Path,
    subnet,
    *,
    target: str,
    checkpoint: Path,
    calibration: dict,
    compile_fn: CompileFn | None = None,
    opset: int | None = None,
) -> dict:
    """Fold and export ``subnet`` into ``folder`` (``model.onnx``), compile it, write ``meta.json``.

    Args:
        folder: an empty folder (from ``staged_directory``).
        subnet: a calibrated eval-mode ``StaticSubnet`` (its ``arch`` is recorded).
        target: "onnx", or a device for ``compile_fn``.
        checkpoint: the supernet checkpoint the subnet came from (path and sha256 are recorded).
        calibration: how it was calibrated (split, batches, batch size, data folder).
        compile_fn: ``(onnx_path, target, folder) -> extra meta`` for targets other than "onnx";
            its fields go under ``"compile"``.
        opset: ONNX opset (default: the exporter's).

    Returns:
        The meta dict written to ``meta.json``.
    """
    from qfa_deploy.export.onnx_export import DEFAULT_OPSET, export_onnx, package_versions, save_onnx
    from qfa_deploy.fold import fold

    folder = Path(folder)
    cfg: ArchConfig = subnet.arch
    folded = fold(subnet)
    model = export_onnx(folded, opset=opset or DEFAULT_OPSET)
    onnx_path = save_onnx(model, folder / ONNX_NAME)
    meta = {
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "target": target,
        "space": cfg.space,
        "arch": cfg.to_dict(),
        "arch_digest": cfg.digest(),
        "arch_short": cfg.short(),
        "checkpoint": {"path": str(Path(checkpoint).resolve()), "sha256": file_sha256(Path(checkpoint))},
        "calibration": calibration,
        "onnx": {
            "file": ONNX_NAME,
            "opset": model.opset_import[0].version,
            "input": {
                "name": "input",
                "shape": ["batch", 3, cfg.resolution, cfg.resolution],
                "dtype": "float32",
            },
            "output": {
                "name": "logits",
                "shape": ["batch", folded.classifier.out_channels],
                "dtype": "float32",
            },
        },
        "bits": {k: v for k, v in folded.bits_summary().items() if k != "per_conv"},
        "versions": package_versions(),
    }
    if target != "onnx":
        if compile_fn is None:
            raise QfaError(f"target {target!r} needs a compile function")
        meta["compile"] = compile_fn(onnx_path, target, folder)
    meta["files"] = {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != META_NAME
    }
    (folder / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_artifact(folder: str | Path, check_files: bool = True) -> dict:
    """``meta.json`` of an artifact folder, validated; with ``check_files`` every sha256 is checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QfaError(f"{folder}: no such artifact folder")
    path = folder / META_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise QfaError(f"{folder}: no {META_NAME} (not an export artifact)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QfaError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise QfaError(f"{path}: not a qfa-deploy export artifact")
    if meta.get("version") != ARTIFACT_VERSION:
        raise QfaError(f"{path}: artifact version {meta.get('version')!r}, this tool reads {ARTIFACT_VERSION}")
    for key in ("arch", "checkpoint", "calibration", "files", "onnx"):
        if key not in meta:
            raise QfaError(f"{path}: missing field {key!r}")
    if check_files:
        for name, digest in meta["files"].items():
            file = folder / name
            if not file.is_file():
                raise QfaError(f"{folder}: {name} is missing")
            if file_sha256(file) != digest:
                raise QfaError(f"{folder}: {name} does not match its sha256 in {META_NAME}")
    return meta
