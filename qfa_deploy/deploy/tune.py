"""MetaSchedule tuning of a model's TIR workloads into a database that ``compile_artifact`` applies.

TVM 0.27 schedules nothing for CPUs by itself (naive loops, one thread). ``tune_model`` extracts
the distinct workloads of a QDQ ONNX model (after the same legalize/fuse steps ``tvm.compile``
runs), tunes each with a few MetaSchedule trials, and records the best schedules in a JSON
database folder. Tuning is resumable: workloads the database already holds are skipped.
``apply_database`` is the ``static_shape_tuning`` pipeline with zero trials: it swaps in the
recorded schedules and leaves the other workloads untuned.

Cost (measured here, 2 cores): importing MetaSchedule takes ~100 s in every builder/runner
worker process, which is why the workers get long timeouts and trials are batched per task.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.device import Device, load_device
from qfa_deploy.errors import QfaError

__all__ = ["apply_database", "database_sha256", "default_database_dir", "space_models", "tune_model"]

log = logging.getLogger(__name__)

_DB_FILES = ("database_workload.json", "database_tuning_record.json")
_WORKER_TIMEOUT_S = 900.0  # MetaSchedule's import alone takes ~100 s per worker here


def default_database_dir(device: Device) -> Path:
    base = os.environ.get("QFA_CACHE") or Path.home() / ".cache" / "qfa-deploy"
    return Path(base) / "tuning" / device.name


def database_sha256(work_dir: Path) -> str:
    """sha256 over the database's workload and record files (what was applied to a build)."""
    work_dir = Path(work_dir)
    files = [work_dir / name for name in _DB_FILES]
    if not all(f.is_file() for f in files):
        raise QfaError(f"{work_dir} is not a MetaSchedule database (needs {' and '.join(_DB_FILES)})")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()


def apply_database(mod, target, work_dir: Path):
    """``mod`` with the schedules recorded in ``work_dir`` applied (legalized and fused first)."""
    from tvm import relax

    try:
        pipeline = relax.get_pipeline("static_shape_tuning", total_trials=0, target=target, work_dir=str(work_dir))
        return pipeline(mod)
    except Exception as exc:
        raise QfaError(f"cannot apply the tuning database {work_dir}: {one_line(exc)}") from None


def tune_model(
    onnx_path: Path,
    device: str | Device,
    work_dir: Path | None = None,
    *,
    trials: int = 16,
    progress: bool = True,
) -> dict:
    """Tune every workload of ``onnx_path`` for ``device`` with ``trials`` MetaSchedule trials each.

    Returns:
        {"database": folder, "tasks": n, "tuned": n newly tuned, "skipped": n already in the database}.
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from qfa_deploy.deploy.compile import _load_onnx, onnx_input_specs

    if trials < 1:
        raise QfaError("--trials must be at least 1")
    dev = load_device(device)
    if dev.runner.kind != "local" or dev.target_kind != "llvm":
        raise QfaError(f"tuning runs on this machine's CPU only; device {dev.name} is not a local llvm device")
    work_dir = Path(work_dir) if work_dir else default_database_dir(dev)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = _load_onnx(Path(onnx_path))
    specs = onnx_input_specs(model)
    # MetaSchedule needs the core count in the target (it sizes the parallel loops with it).
    target = tvm.target.Target({**_target_dict(dev), "num-cores": dev.threads or os.cpu_count() or 1})
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(model, shape_dict={s["name"]: s["shape"] for s in specs}, keep_params_in_input=False)
    with target:
        mod = relax.get_pipeline("zero")(mod)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    todo = [t for t in tasks if not _in_database(database, t)]
    log.info("%d workloads, %d already tuned in %s", len(tasks), len(tasks) - len(todo), work_dir)
    bar = _progress(len(todo), progress)
    tuned = 0
    for task in todo:  # one task at a time: an interrupted run keeps what it finished
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts([task], work_dir=str(work_dir))
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=trials,
            max_trials_per_task=trials, num_trials_per_iter=trials,
            builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=_WORKER_TIMEOUT_S),
            runner=ms.runner.LocalRunner(timeout_sec=_WORKER_TIMEOUT_S, evaluator_config=ms.runner.EvaluatorConfig(
                number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)),
            database=database, cost_model="random",
        )
        tuned += 1
        bar.update(1)
        bar.set_postfix_str(task.task_name[:40])
    bar.close()
    del tvm
    return {"database": str(work_dir), "tasks": len(tasks), "tuned": tuned, "skipped": len(tasks) - len(todo),
            "trials_per_task": trials, "database_sha256": database_sha256(work_dir) if tuned or tasks else None}


def space_models(space: str, resolution: int, count: int, folder: Path, seed: int = 0) -> list[Path]:
    """QDQ ONNX models of ``count`` subnets of ``space`` at ``resolution`` (largest, smallest, random).

    Their weights are random (a schedule does not depend on them); statistics come from two random
    calibration batches. Needs the project's exporter (qfa_deploy.export).
    """
    import random

    import torch

    try:
        from qfa_deploy.export.onnx_export import export_onnx, save_onnx
        from qfa_deploy.fold import fold
    except ImportError:
        raise QfaError("tuning a --space needs the QDQ exporter (qfa_deploy.export); give an ONNX file") from None
    from dataclasses import replace

    from qfa_deploy.arch import ArchConfig, sample_arch
    from qfa_deploy.calibrate import calibrate
    from qfa_deploy.extract import extract
    from qfa_deploy.nn.supernet import QFASupernet
    from qfa_deploy.space import create_space

    sp = create_space(space)
    if resolution not in sp.resolutions:
        raise QfaError(f"--resolution {resolution} is not one of {space}'s ({sp.resolutions[0]}..{sp.resolutions[-1]})")
    rng = random.Random(seed)
    cfgs = [replace(ArchConfig.largest(space), resolution=resolution),
            replace(ArchConfig.smallest(space), resolution=resolution)]
    cfgs += [sample_arch(space, rng, resolutions=[resolution]) for _ in range(max(0, count - 2))]
    torch.manual_seed(seed)
    supernet = QFASupernet(space).eval()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, cfg in enumerate(cfgs[:count]):
        subnet = extract(supernet, cfg)
        g = torch.Generator().manual_seed(seed + i)
        calibrate(subnet, (torch.randn(2, 3, resolution, resolution, generator=g) for _ in range(2)), resolution, 2)
        path = folder / f"subnet{i}-{cfg.digest()[:8]}.onnx"
        save_onnx(export_onnx(fold(subnet.eval()), batch=1), path)
        paths.append(path)
    return paths


def _target_dict(dev: Device) -> dict:
    if isinstance(dev.target, dict):
        return dict(dev.target)
    from qfa_deploy.deploy.compile import _target_json

    exported = _target_json(dev.tvm_target())
    exported.pop("tag", None)
    exported.pop("keys", None)
    return exported


def _in_database(database, task) -> bool:
    mod = task.dispatched[0]
    return database.has_workload(mod) and bool(database.get_top_k(database.commit_workload(mod), 1))


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="task", desc="tuning", disable=not enabled)
