"""Compile a QDQ ONNX model with Apache TVM (Relax) for a device profile into ``model.so``.

``compile_artifact(onnx_path, device, out_dir)`` is what ``qfa-deploy export`` and
``qfa-deploy compile`` call. The library is written atomically; its metadata (target, TVM
version, tuning database hash, sha256) is returned for the caller's ``meta.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from qfa_deploy.atomic import atomic_write_bytes
from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.device import Device, load_device
from qfa_deploy.deploy.elf import constant_sections
from qfa_deploy.deploy.registry import AUTO, NONE, TargetSchedule, resolve, schedule_names
from qfa_deploy.deploy.targets.cuda.kernels import CUDA_SOURCE_NAME
from qfa_deploy.digest import file_sha256
from qfa_deploy.errors import QfaError

__all__ = [
    "LIBRARY_NAME", "CUDA_SOURCE_NAME", "DEBUG_SYMBOLS_HELP", "DEFAULT_SCHEDULE", "SCHEDULES", "compile_artifact",
    "onnx_input_specs", "resolve_schedule",
]

log = logging.getLogger(__name__)

LIBRARY_NAME = "model.so"
STRIP_DEBUG = "-Wl,--strip-debug"  # GNU ld (host and aarch64 cross gcc): no .debug_* sections in the library
DEBUG_SYMBOLS_HELP = ("Keep the DWARF debug sections (.debug_*) of the generated code in the library "
                      "(default: the library ships without them; code and constants are the same either way).")
SCHEDULES = schedule_names()  # auto, the target packages' schedules, none (qfa_deploy.deploy.registry)
# "auto" resolves per target (resolve_schedule); latency tables record the resolved name and are
# validated and searched with it, so changing what "auto" picks means rebuilding them
DEFAULT_SCHEDULE = AUTO


def compile_artifact(
    onnx_path: Path,
    device: str | Device,
    out_dir: Path,
    *,
    database: Path | None = None,
    batch_size: int = 1,
    schedule: str = DEFAULT_SCHEDULE,
    cuda_kernels: str | None = None,
    debug_symbols: bool = False,
) -> dict:
    """Import ``onnx_path``, compile it for ``device`` and write ``out_dir/model.so``.

    Args:
        onnx_path: a (QDQ) ONNX model with float32 inputs.
        device: a device name, alias (x86, arm64, cuda) or device file path.
        out_dir: where the library goes (created if needed).
        database: a MetaSchedule database folder from ``qfa-deploy tune`` whose schedules are
            applied (workloads it does not cover stay untuned).
        batch_size: the value given to symbolic (dynamic) input dimensions.
        schedule: for the CPU workloads no database covers: "auto" (the default: the device
            profile's schedule, else the best its target's features allow: "tiled-vnni" with
            AVX512-VNNI, "tiled-cpu" on other x86, "tiled-dotprod" on aarch64 with the dot-product
            extension, "tiled-neon" on other aarch64, "dlight" on CUDA), a schedule of the target's
            package (``qfa_deploy.deploy.registry``: "tiled-vnni", "tiled-cpu", "generic" on x86;
            "tiled-dotprod", "tiled-neon", "tiled-cpu", "generic" on aarch64; "dlight" on CUDA) or
            "none" (TVM's naive loops on CPUs; on CUDA, TVM's pipeline applies DLight's rules
            either way); all give bit-identical results.
        cuda_kernels: CUDA devices only: "fatbin" (the kernels compiled with nvcc here and embedded
            in the library, which then loads with TVM's runtime alone), "source" (CUDA C source,
            compiled when the library is loaded), "auto" (fatbin when nvcc is on PATH, else source
            with a one-line warning); None reads ``$QFA_CUDA_KERNELS`` (default "auto").
            ``model.cu`` (the source) is written beside the library either way.
        debug_symbols: keep the DWARF sections (``.debug_*``) of the generated code in the library; by
            default the linker drops them (``--strip-debug``: the code, constants and symbol table
            are unchanged, the file about a quarter smaller).

    Returns:
        JSON-ready metadata: device, target, tvm_version, tuning_database (sha256 or None),
        schedule, library (file name), library_sha256, constant_bytes (the bytes of the library's
        read-only data sections, which hold the model's constants: ``deploy.elf.constant_sections``),
        constant_sections (those sections' sizes), debug_symbols, inputs, compile_seconds; for CUDA also
        cuda_kernels, read back from the library: format ("fatbin"; "cuda" for source), arch,
        code_bytes, the fatbin's images, nvcc_seconds.

    Raises:
        QfaError: unreadable ONNX, unsupported operator, missing cross compiler, bad database,
            ``cuda_kernels`` "fatbin" without nvcc or nvcc failing.
    """
    dev = load_device(device)
    onnx_path = Path(onnx_path)
    model = _load_onnx(onnx_path)
    inputs = onnx_input_specs(model, batch_size=batch_size)
    cuda_kernels = _check_tools(dev, cuda_kernels)
    from tvm.relax.frontend.onnx import from_onnx  # imported before the clock starts

    target = dev.tvm_target()
    start = time.perf_counter()
    mod = _import_onnx(from_onnx, model, inputs, onnx_path)
    mod, applied, db_hash = _schedule(mod, target, resolve(schedule, dev), database)
    executable = _build(mod, target, onnx_path, dev)
    lib_path, cuda_meta = _write_library(executable, dev, target, Path(out_dir), cuda_kernels, debug_symbols)
    seconds = time.perf_counter() - start
    log.info("compiled %s for %s in %.1f s -> %s", onnx_path, dev.name, seconds, lib_path)
    return _metadata(dev, target, (applied, db_hash), lib_path, inputs, seconds, cuda_meta, debug_symbols)


def _check_tools(dev: Device, cuda_kernels: str | None) -> str | None:
    """Before any work: the device's cross compiler is installed; for CUDA, the kernel mode (a bad mode,
    "fatbin" without nvcc) checked and returned."""
    if dev.cc and shutil.which(dev.cc) is None:
        raise QfaError(
            f"cross compiler {dev.cc} (device {dev.name}) is not installed "
            "(Debian: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross)"
        )
    if dev.target_kind == "cuda":
        from qfa_deploy.deploy.targets.cuda.kernels import check_cuda_request

        return check_cuda_request(cuda_kernels)
    return cuda_kernels


def _import_onnx(from_onnx, model, inputs: list[dict], onnx_path: Path):
    """The Relax module of ``model`` (by TVM's ``from_onnx``) with the static input shapes ``inputs``."""
    try:
        return from_onnx(model, shape_dict={i["name"]: i["shape"] for i in inputs}, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises many kinds (NotImplementedError, TVMError, ...)
        raise QfaError(f"TVM cannot import {onnx_path}: {one_line(exc)}") from None


def _schedule(mod, target, chosen: TargetSchedule | None, database: Path | None):
    """(module for ``tvm.compile``, the schedule label meta.json records, the database's sha256 or None):
    ``chosen``'s rewrite, the database's schedules, then ``chosen`` applied to the legalized, fused module
    (a schedule without ``apply`` is left to ``tvm.compile``'s own pipeline)."""
    if chosen is not None and chosen.rewrite is not None:
        mod = chosen.rewrite(mod)
    db_hash = None
    if database is not None:
        from qfa_deploy.deploy.database import apply_database, database_sha256

        db_hash = database_sha256(database)
        mod = apply_database(mod, target, database)  # legalizes and fuses, then swaps in the schedules
    applied = "metaschedule" if database is not None else "none"
    if chosen is None:
        return mod, applied, db_hash
    if chosen.apply is not None:
        from tvm import relax

        if database is None:
            with target:
                mod = relax.get_pipeline("zero")(mod)  # legalize + fuse, as tvm.compile would
        mod = chosen.apply(mod)
    applied = f"metaschedule+{chosen.label}" if database is not None else chosen.label
    return mod, applied, db_hash


def _build(mod, target, onnx_path: Path, dev: Device):
    """``tvm.compile`` of ``mod`` for ``target`` (on CPUs with scratch tiles on the stack:
    ``targets.cpu.stack_scratch``); its failure as one line."""
    import tvm

    tir_pipeline = "default"
    if dev.target_kind != "cuda":
        from qfa_deploy.deploy.targets.cpu.stack_scratch import register_pipeline

        tir_pipeline = register_pipeline()
    try:
        return tvm.compile(mod, target=target, tir_pipeline=tir_pipeline)
    except Exception as exc:
        raise QfaError(f"TVM cannot compile {onnx_path} for {dev.name}: {one_line(exc)}") from None


def _write_library(executable, dev: Device, target, out_dir: Path, cuda_kernels: str | None,
                   debug_symbols: bool = False):
    """(``out_dir/model.so``, what its CUDA kernels are or None): ``executable`` linked there (without
    debug sections unless ``debug_symbols``); for CUDA with the kernels prepared as ``cuda_kernels``
    says and their source written beside it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lib_path = out_dir / LIBRARY_NAME
    if dev.target_kind != "cuda":
        _export_atomic(executable, lib_path, dev.cc, debug_symbols=debug_symbols)
        return lib_path, None
    from qfa_deploy.deploy.targets.cuda.kernels import prepare_cuda_kernels

    kernels = prepare_cuda_kernels(executable, str(target.attrs.get("arch", "")), cuda_kernels)
    _export_atomic(executable, lib_path, dev.cc, fpack_imports=kernels.pack_imports(), debug_symbols=debug_symbols)
    text = kernels.source.encode()
    atomic_write_bytes(lib_path.parent / CUDA_SOURCE_NAME, lambda f: f.write(text))
    cuda_meta, note = kernels.describe(lib_path)  # read back from the library
    if note:
        log.warning("%s", note)
    return lib_path, cuda_meta


def _metadata(dev: Device, target, schedule: tuple[str, str | None], lib_path: Path, inputs: list[dict],
              seconds: float, cuda_meta: dict | None, debug_symbols: bool) -> dict:
    """compile_artifact's JSON-ready result; ``schedule``: (the label applied, the database's sha256)."""
    import tvm

    applied, db_hash = schedule
    sections = constant_sections(lib_path)
    meta = {
        "device": dev.name,
        "target": _target_json(target),
        "tvm_version": tvm.__version__,
        "tuning_database": db_hash,
        "schedule": applied,
        "library": LIBRARY_NAME,
        "library_sha256": file_sha256(lib_path),
        "constant_bytes": sum(sections.values()),
        "constant_sections": sections,
        "debug_symbols": debug_symbols,
        "inputs": inputs,
        "compile_seconds": round(seconds, 3),
    }
    if cuda_meta is not None:
        meta["cuda_kernels"] = cuda_meta
    return meta


def resolve_schedule(schedule: str, dev: str | Device) -> str:
    """The name of the schedule ``compile_artifact`` applies on ``dev`` for ``schedule`` ("auto"
    resolved by ``registry.resolve``; "none" where nothing is applied).

    Raises:
        QfaError: an unknown name, or one the device's target cannot run (one line).
    """
    chosen = resolve(schedule, dev)
    return NONE if chosen is None else chosen.name


def onnx_input_specs(model, batch_size: int = 1) -> list[dict]:
    """Name, static shape and dtype of each graph input (symbolic dimensions -> ``batch_size``)."""
    import onnx

    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else batch_size for d in dims]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        specs.append({"name": value.name, "shape": shape, "dtype": dtype})
    if not specs:
        raise QfaError("the ONNX model has no inputs")
    return specs


def _load_onnx(path: Path):
    import onnx

    if not path.is_file():
        raise QfaError(f"ONNX model {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends
        raise QfaError(f"{path} is not a readable ONNX model: {one_line(exc)}") from None


def _export_atomic(executable, lib_path: Path, cc: str | None, fpack_imports=None, debug_symbols: bool = False) -> None:
    """``executable`` linked into ``lib_path`` atomically, by the host's or the device's (cross) gcc, the
    DWARF sections of TVM's generated code dropped by the linker unless ``debug_symbols``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{lib_path.stem}.", suffix=".so", dir=lib_path.parent)
    os.close(fd)
    try:
        kwargs = {"cc": cc} if cc else {}
        if not debug_symbols:
            kwargs["options"] = [STRIP_DEBUG]
        if fpack_imports is not None:  # CUDA: the module blob with the kernels' fatbin (deploy.targets.cuda.kernels)
            kwargs["fpack_imports"] = fpack_imports
        try:
            executable.export_library(tmp, **kwargs)
        except Exception as exc:
            raise QfaError(f"cannot link {lib_path.name}: {one_line(exc)}") from None
        os.chmod(tmp, 0o644)
        os.replace(tmp, lib_path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _target_json(target) -> dict:
    """``target.export()`` (tvm_ffi Map/Array/String) as plain JSON types."""
    return json.loads(json.dumps(_plain(target.export())))


def _plain(value):
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "__iter__"):
        return [_plain(v) for v in value]
    return str(value)
