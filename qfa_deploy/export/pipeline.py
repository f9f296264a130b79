"""``export_subnet``: a subnet of a checkpoint to an artifact folder, the library function behind
``qfa-deploy export``.

Every check that needs no work runs first (the arch config, the target device, the output folder),
then the supernet loads, the subnet is calibrated (or keeps the checkpoint's statistics), and
``artifact.build_artifact`` folds, exports, compiles and writes it into a staged folder that is
renamed into place when complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qfa_deploy.errors import QfaError
from qfa_deploy.export.artifact import CompileFn

__all__ = ["CALIB_BATCH_SIZE", "ExportConfig", "compiler_for", "export_subnet"]

CALIB_BATCH_SIZE = 100  # images per calibration batch


@dataclass(frozen=True)
class ExportConfig:
    """What ``export_subnet`` builds (``qfa-deploy export``'s options), validated when made.

    Attributes:
        arch: the subnet's cfg.json.
        out: the artifact folder to create.
        target: "onnx", or a device to compile for with TVM (x86, arm64, cuda, a device file).
        checkpoint: the supernet checkpoint (None: the embedded reference one).
        calib_batches: calibration batches of ``CALIB_BATCH_SIZE`` validation images; 0 keeps the
            checkpoint's stored statistics and reads no data.
        data_dir: data directory (None: $QFA_DATA_DIR, else the shipped calibration images).
        force: replace ``out`` if it exists.
        schedule: the ``compile_artifact`` schedule of CPU workloads no tuning database covers
            (None: its default).
        debug_symbols: keep the compiled library's debug sections (``.debug_*``; by default the
            library ships without them).
    """

    arch: str | Path
    out: str | Path
    target: str = "onnx"
    checkpoint: str | Path | None = None
    calib_batches: int = 20
    data_dir: str | Path | None = None
    force: bool = False
    schedule: str | None = None
    debug_symbols: bool = False

    def __post_init__(self) -> None:
        if self.calib_batches < 0:
            raise QfaError("--calib-batches must be at least 0")


def compiler_for(target: str, schedule: str | None = None, debug_symbols: bool = False) -> CompileFn:
    """``compile_artifact`` of the TVM deploy module for ``target`` with ``schedule`` (the library with its
    debug sections if ``debug_symbols``); an unknown device
    (or for CUDA a bad $QFA_CUDA_KERNELS, or fatbin without nvcc) is a QfaError now, before any work."""
    from qfa_deploy.deploy.compile import DEFAULT_SCHEDULE, compile_artifact
    from qfa_deploy.deploy.device import load_device

    device = load_device(target)
    if device.target_kind == "cuda":
        from qfa_deploy.deploy.targets.cuda.kernels import check_cuda_request

        check_cuda_request()
    schedule = schedule or DEFAULT_SCHEDULE
    return lambda onnx_path, device, out_dir: compile_artifact(
        onnx_path, device, out_dir, schedule=schedule, debug_symbols=debug_symbols
    )


def export_subnet(config: ExportConfig) -> dict:
    """Calibrate, fold and export the subnet ``config`` names into ``config.out`` (``model.onnx``, QDQ;
    compiled files for a device target; ``meta.json``). Returns the meta dict written to ``meta.json``."""
    from qfa_deploy.arch import load_arch
    from qfa_deploy.atomic import check_output, staged_directory
    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.export.artifact import build_artifact
    from qfa_deploy.reference import default_checkpoint

    load_arch(config.arch)  # missing or malformed config: fail before anything is written
    compile_fn = None if config.target == "onnx" else compiler_for(config.target, config.schedule, config.debug_symbols)
    ckpt = Path(config.checkpoint) if config.checkpoint else default_checkpoint()
    check_output(config.out, config.force, folder=True, option="--out",  # parent exists and is writable
                 inputs=(config.arch, ckpt, config.data_dir))
    with staged_directory(config.out, config.force) as folder:
        net = load_supernet(str(ckpt))
        cfg = load_arch(config.arch, expect_space=net.space.name)
        subnet, calibration = _calibrated(net, cfg, config)
        return build_artifact(
            folder, subnet, target=config.target, checkpoint=ckpt, calibration=calibration, compile_fn=compile_fn
        )


def _calibrated(net, cfg, config: ExportConfig) -> tuple[object, dict]:
    """The subnet ``cfg`` of ``net`` calibrated as ``config`` asks, and the record of that for ``meta.json``."""
    from qfa_deploy.data import calibration_images
    from qfa_deploy.export.artifact import CALIBRATION_SEED, calibrate_for_export

    batches = config.calib_batches
    if batches == 0:  # the checkpoint's stored statistics; no data is read
        subnet = calibrate_for_export(net, cfg, None, 0, CALIB_BATCH_SIZE)
        return subnet, {
            "split": None,
            "batches": 0,
            "batch_size": CALIB_BATCH_SIZE,
            "images": 0,
            "statistics": "stored",
            "data_dir": None,
        }
    val = calibration_images(net.space, config.data_dir, batches * CALIB_BATCH_SIZE)
    subnet = calibrate_for_export(net, cfg, val, batches, CALIB_BATCH_SIZE)
    return subnet, {
        "split": "val",
        "batches": batches,
        "batch_size": CALIB_BATCH_SIZE,
        "images": min(len(val), batches * CALIB_BATCH_SIZE),
        "seed": CALIBRATION_SEED,
        "data_dir": str(Path(config.data_dir).resolve()) if config.data_dir else None,
    }
