"""MetaSchedule tuning databases: where they live, their digest, and applying one to a module.

``compile_artifact`` applies a database and ``tune`` fills one; both import this module, not each other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from qfa_deploy.deploy._text import one_line
from qfa_deploy.deploy.device import Device
from qfa_deploy.errors import QfaError
from qfa_deploy.resources import cache_root

__all__ = ["apply_database", "database_sha256", "default_database_dir"]

_DB_FILES = ("database_workload.json", "database_tuning_record.json")


def default_database_dir(device: Device) -> Path:
    return cache_root() / "tuning" / device.name


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
