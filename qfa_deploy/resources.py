"""Files shipped inside the package (``qfa_deploy/assets/``), found through ``importlib.resources``
so that an installed wheel has them as a checkout does: the reference checkpoint, its calibration
images and accuracy predictor, the device profiles and the committed latency tables; and the one
folder under which the tools cache what they build (``cache_root``)."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

__all__ = ["asset", "cache_root", "devices_dir", "packaged_table", "tables_dir"]


def asset(name: str) -> Path:
    """The path of ``assets/<name>`` (it may not exist: callers say what is missing)."""
    return Path(str(files("qfa_deploy") / "assets" / name))


def devices_dir() -> Path:
    return asset("devices")


def tables_dir() -> Path:
    return asset("latency_tables")


def packaged_table(name: str) -> Path | None:
    """A committed latency table given by its file name (``x86-1t-qfa-mbv3-cifar10-r32.json``)."""
    path = tables_dir() / Path(name).name
    return path if Path(name).name == name and path.is_file() else None


def cache_root() -> Path:
    """$QFA_CACHE, else ~/.cache/qfa-deploy: tuning databases, the emulated Pi, the simulator's plugin
    and block prices each keep a folder under it."""
    return Path(os.environ.get("QFA_CACHE") or Path.home() / ".cache" / "qfa-deploy")
