"""Export artifacts: a folder with ``model.onnx`` (+ compiled files) and ``meta.json``, written whole.

The folder is built in a staging sibling (``.NAME.PID.XXXX.tmp``, ``qfa_deploy.atomic``) and renamed into place when
everything is written, so a reader never sees a half-written artifact, and a failed or interrupted
export leaves nothing behind. ``meta.json`` records the arch config, space, target, calibration,
the checkpoint (path and sha256, so ``verify`` can rebuild the subnet), package versions and the
sha256 of every other file of the folder.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path

from qfa_deploy.arch import ArchConfig
from qfa_deploy.atomic import staged_directory
from qfa_deploy.digest import file_sha256
from qfa_deploy.errors import QfaError
from qfa_deploy.strict_json import check_number, check_type, read_json

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
    from qfa_deploy.export.onnx_export import DEFAULT_OPSET, export_onnx, save_onnx
    from qfa_deploy.fold import fold

    folder = Path(folder)
    folded = fold(subnet)
    model = export_onnx(folded, opset=opset or DEFAULT_OPSET)
    onnx_path = save_onnx(model, folder / ONNX_NAME)
    meta = artifact_meta(folded, model, target=target, checkpoint=checkpoint, calibration=calibration)
    if target != "onnx":
        if compile_fn is None:
            raise QfaError(f"target {target!r} needs a compile function")
        meta["compile"] = compile_fn(onnx_path, target, folder)
    meta["files"] = _file_digests(folder)
    (folder / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def artifact_meta(folded, model, *, target: str, checkpoint: Path, calibration: dict) -> dict:
    """``meta.json`` of an artifact of ``folded`` (a ``FoldedSubnet``) exported as ``model``, before
    its compile record and file digests: format, arch, checkpoint, calibration, ONNX interface, bits."""
    from qfa_deploy.export.onnx_export import package_versions

    cfg: ArchConfig = folded.arch
    return {
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


def _file_digests(folder: Path) -> dict[str, str]:
    """The sha256 of every file under ``folder`` but ``meta.json``, by path relative to it."""
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != META_NAME
    }


def read_artifact(folder: str | Path, check_files: bool = True) -> dict:
    """``meta.json`` of an artifact folder, validated; with ``check_files`` every sha256 is checked."""
    folder = Path(folder)
    if not folder.is_dir():
        raise QfaError(f"{folder}: no such artifact folder")
    path = folder / META_NAME
    if not path.exists():
        raise QfaError(f"{folder}: no {META_NAME} (not an export artifact)")
    meta = read_json(path, META_NAME)
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise QfaError(f"{path}: not a qfa-deploy export artifact")
    if meta.get("version") != ARTIFACT_VERSION:
        raise QfaError(f"{path}: artifact version {meta.get('version')!r}, this tool reads {ARTIFACT_VERSION}")
    _check_meta(meta, path)
    if check_files:
        for name, digest in meta["files"].items():
            file = folder / name
            if not file.is_file():
                raise QfaError(f"{folder}: {name} is missing")
            if file_sha256(file) != digest:
                raise QfaError(f"{folder}: {name} does not match its sha256 in {META_NAME}")
    return meta


def _check_meta(meta: dict, path: Path) -> None:
    """Fields and types of ``meta.json`` that readers rely on (a tampered file is one line, not a traceback)."""
    for key, kind in (("target", str), ("space", str), ("arch", dict), ("checkpoint", dict),
                      ("calibration", dict), ("files", dict), ("onnx", dict)):
        if key not in meta:
            raise QfaError(f"{path}: missing field {key!r}")
        check_type(meta[key], kind, f"{path}: {key}")
    for key in ("path", "sha256"):
        check_type(meta["checkpoint"].get(key), str, f"{path}: checkpoint.{key}")
    check_type(meta["onnx"].get("file"), str, f"{path}: onnx.file")
    for name, digest in meta["files"].items():
        check_type(digest, str, f"{path}: files[{name!r}]")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise QfaError(f"{path}: files[{name!r}] is not a path inside the artifact")
    calib = meta["calibration"]
    check_number(calib.get("batches"), f"{path}: calibration.batches", low=0, high=10**6, integer=True)
    check_number(calib.get("batch_size", 100), f"{path}: calibration.batch_size", low=1, high=10**6, integer=True)
    check_type(calib.get("data_dir"), (str, type(None)), f"{path}: calibration.data_dir")
