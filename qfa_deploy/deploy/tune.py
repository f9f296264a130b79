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

import logging
import os
from pathlib import Path

from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.database import apply_database, database_sha256, default_database_dir  # re-exported
from qfa_deploy.deploy.device import Device, load_device
from qfa_deploy.errors import QfaError

__all__ = ["apply_database", "database_sha256", "default_database_dir", "tune_model"]

log = logging.getLogger(__name__)

_WORKER_TIMEOUT_S = 900.0  # MetaSchedule's import alone takes ~100 s per worker here


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

    from qfa_deploy.deploy.compile import _import_onnx, _load_onnx, onnx_input_specs

    if trials < 1:
        raise QfaError("--trials must be at least 1")
    dev = load_device(device)
    if dev.runner.kind != "local" or dev.target_kind != "llvm":
        raise QfaError(f"tuning runs on this machine's CPU only; device {dev.name} is not a local llvm device "
                       "(an ARM board is not tuned: its integer schedules are hand-written, see docs/deploy.md)")
    work_dir = Path(work_dir) if work_dir else default_database_dir(dev)
    model = _load_onnx(Path(onnx_path))
    specs = onnx_input_specs(model)
    # MetaSchedule needs the core count in the target (it sizes the parallel loops with it).
    target = tvm.target.Target({**_target_dict(dev), "num-cores": dev.threads or os.cpu_count() or 1})
    from tvm.relax.frontend.onnx import from_onnx

    mod = _import_onnx(from_onnx, model, specs, Path(onnx_path))
    with target:
        mod = relax.get_pipeline("zero")(mod)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    work_dir.mkdir(parents=True, exist_ok=True)  # once the model is known to import: no empty folder left
    try:
        database = ms.database.JSONDatabase(work_dir=str(work_dir))
    except Exception as exc:  # TVM's parser raises its own errors on a corrupt or foreign file
        raise QfaError(f"cannot read the tuning database {work_dir}: {one_line(exc)}") from None
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
