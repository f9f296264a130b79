"""Measured accuracy of sampled subnets: the predictor's training data, one JSON line per subnet.

Sample ``i`` of a run is ``sample_arch`` with ``random.Random(f"qfa-collect:{seed}:{i}")``, so it
depends only on (seed, i): a rerun with the same settings measures only the samples the file lacks.
Each line is written whole and flushed; a partial last line left by a kill is cut off on resume.
Each subnet is calibrated on the first ``calib_batches`` x 100 images of the validation split and
scored on the *last* ``val_images`` images of it (disjoint from calibration while they fit).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.data import ImageSource
from qfa_deploy.errors import QfaError
from qfa_deploy.strict_json import check_number

__all__ = [
    "CollectConfig", "CollectSettings", "collect", "load_records", "records_to_arrays", "run_collect", "sample_for",
]

log = logging.getLogger(__name__)
CALIB_BATCH = 100


def sample_for(space: str, seed: int, index: int) -> ArchConfig:
    """Sample ``index`` of a collection run with ``seed``."""
    return sample_arch(space, random.Random(f"qfa-collect:{seed}:{index}"))


@dataclass(frozen=True)
class CollectSettings:
    """What makes two runs' measurements comparable (checked on resume)."""

    space: str
    seed: int
    calib_batches: int
    val_images: int
    checkpoint: str  # sha256 prefix of the checkpoint file

    def check(self, record: dict, path: Path, line: int) -> None:
        for name in ("space", "seed", "calib_batches", "val_images", "checkpoint"):
            if record.get(name) != getattr(self, name):
                raise QfaError(
                    f"{path}:{line}: collected with {name} = {record.get(name)!r}, this run has "
                    f"{getattr(self, name)!r} (use another output file)"
                )


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _read_lines(path: Path) -> tuple[list[dict], int]:
    """Whole, valid JSON lines of ``path`` and the byte length they occupy (a torn tail excluded)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    except (IsADirectoryError, PermissionError) as exc:
        raise QfaError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    records, good = [], 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:  # no newline: the torn last line of a killed run
            break
        raw = data[pos:end]
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):  # ValueError: also integers of >4300 digits
            if data.find(b"\n", end + 1) < 0 and not data[end + 1 :].strip():
                break  # garbage only in the last line: treat as torn
            raise QfaError(f"{path}:{len(records) + 1}: not a JSON line") from None
        if not isinstance(rec, dict):
            raise QfaError(f"{path}:{len(records) + 1}: not a JSON object")
        records.append(rec)
        pos = good = end + 1
    return records, good


def load_records(path: str | Path) -> list[dict]:
    """The measured subnets of a collect file (whole lines only)."""
    path = Path(path)
    if not path.is_file():
        raise QfaError(f"{path}: no such accuracy file (run `qfa-deploy collect` first)")
    records, _ = _read_lines(path)
    if not records:
        raise QfaError(f"{path}: no measured subnets in it")
    return records


def records_to_arrays(records: list[dict], path: str | Path = "records") -> tuple[str, list[ArchConfig], np.ndarray]:
    """(space, configs, top-1 array) of collect records, validated."""
    cfgs, top1 = [], []
    for i, rec in enumerate(records, 1):
        try:
            cfgs.append(ArchConfig.from_dict(rec["arch"]))
            top1.append(float(check_number(rec["top1"], "top1", low=0, high=1)))  # NaN would fit a NaN predictor
        except QfaError as exc:
            raise QfaError(f"{path}:{i}: {exc}") from None
        except (KeyError, TypeError, ValueError):
            raise QfaError(f"{path}:{i}: a record needs 'arch' (a cfg dict) and 'top1' (a number)") from None
    spaces = {c.space for c in cfgs}
    if len(spaces) != 1:
        raise QfaError(f"{path}: records mix spaces {sorted(spaces)}")
    return spaces.pop(), cfgs, np.asarray(top1)


_RECORD_START = b'{"index":'


def check_journal(out: str | Path) -> tuple[list[dict], int]:
    """The records of ``out`` and their byte length, if ``out`` is a collect journal or does not exist.

    A file of something else is refused, never truncated: ``collect`` only appends to its own journal.
    """
    out = Path(out)
    if out.is_dir():
        raise QfaError(f"{out} is a directory")
    if not out.parent.is_dir():
        raise QfaError(f"{out.parent}: no such folder (-o); create it first")
    records, good = _read_lines(out)
    if not records and out.exists() and out.stat().st_size > 0:
        with open(out, "rb") as f:  # a first record torn by a kill still starts as collect writes it
            ours = f.read(len(_RECORD_START)) == _RECORD_START
        if not ours:
            raise QfaError(f"{out}: not a collect journal (it would be truncated; choose another -o)")
    for line, rec in enumerate(records, 1):
        if not isinstance(rec.get("index"), int) or isinstance(rec.get("index"), bool):
            raise QfaError(f"{out}:{line}: record has no integer 'index' (not a collect journal)")
        _check_record(rec, out, line)
    return records, good


def _check_record(rec: dict, out: Path, line: int) -> None:
    """A whole journal line that is not a record ``collect`` writes (a sample index below 0, a top-1
    that is not a number in [0, 1], an arch that is not a config of the record's space) is refused
    with the file and line: resuming on it would report or fit corrupt data."""
    if rec["index"] < 0:
        raise QfaError(f"{out}:{line}: 'index' = {rec['index']} is negative (not a collect journal)")
    try:
        check_number(rec.get("top1"), "'top1'", low=0, high=1)
    except QfaError as exc:
        raise QfaError(f"{out}:{line}: {exc} (a corrupt collect record; use another output file)") from None
    try:
        cfg = ArchConfig.from_dict(rec.get("arch"))
    except QfaError as exc:
        raise QfaError(f"{out}:{line}: 'arch' is not a subnet config ({exc}; a corrupt collect record: "
                       "use another output file)") from None
    if cfg.space != rec.get("space"):
        raise QfaError(f"{out}:{line}: 'arch' is of space {cfg.space!r}, the record's space is "
                       f"{rec.get('space')!r} (a corrupt collect record; use another output file)")


def collect(
    out: str | Path,
    samples: int,
    settings: CollectSettings,
    measure: Callable[[ArchConfig], float],
    progress: bool | None = None,
) -> list[dict]:
    """Measure samples ``0..samples-1`` missing from ``out`` with ``measure(cfg) -> top1``, appending.

    Returns every record of the file afterwards (in index order).
    """
    from tqdm import tqdm

    from qfa_deploy.search.cost import CostModel
    from qfa_deploy.search.genome import GenomeSpace

    out = Path(out)
    done, good = _resume(out, settings)
    todo = [i for i in range(samples) if i not in done]
    genome = GenomeSpace(settings.space)
    cost = CostModel(genome)
    with _open_journal(out, good) as f:
        bar = tqdm(
            total=samples,
            initial=samples - len(todo),
            desc="collect",
            unit="subnet",
            disable=True if progress is False else None,
        )
        with bar:
            for i in todo:
                rec = _measure_sample(i, settings, measure, genome, cost)
                f.write((json.dumps(rec, separators=(",", ":")) + "\n").encode())
                f.flush()
                done[i] = rec
                bar.update(1)
    return [done[i] for i in sorted(done)]


def _resume(out: Path, settings: CollectSettings) -> tuple[dict[int, dict], int]:
    """The records already in ``out`` by index (each checked against ``settings``) and their byte length."""
    records, good = check_journal(out)
    done: dict[int, dict] = {}
    for line, rec in enumerate(records, 1):
        settings.check(rec, out, line)
        done[rec["index"]] = rec
    return done, good


def _open_journal(out: Path, good: int):
    """``out`` opened for appending after its first ``good`` bytes (a torn last line is cut off)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        f = open(out, "r+b" if out.exists() else "wb")
    except OSError as exc:
        raise QfaError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        if good < f.seek(0, os.SEEK_END):
            log.warning("%s: dropping a partial last line (an interrupted run)", out)
            f.truncate(good)
        f.seek(good)
    except BaseException:
        f.close()
        raise
    return f


def _measure_sample(i: int, settings: CollectSettings, measure, genome, cost) -> dict:
    """The journal record of sample ``i``: its measured top-1, costs, time taken and config."""
    cfg = sample_for(settings.space, settings.seed, i)
    start = time.perf_counter()
    top1 = float(measure(cfg))
    g = genome.encode([cfg])
    macs, bitops = int(cost.macs(g)[0]), float(cost.bitops(g)[0])
    return {
        "index": i,
        "space": settings.space,
        "seed": settings.seed,
        "calib_batches": settings.calib_batches,
        "val_images": settings.val_images,
        "checkpoint": settings.checkpoint,
        "top1": top1,
        "macs": macs,
        "bitops": bitops,
        "mflops": macs / 1e6,
        "gbitops": bitops / 1e9,
        "seconds": round(time.perf_counter() - start, 3),
        "digest": cfg.digest(),
        "arch": cfg.to_dict(),
    }


def val_scorer(net, val: ImageSource, calib_batches: int, val_images: int) -> Callable[[ArchConfig], float]:
    """``measure(cfg)``: calibrate on the first batches of ``val``, score on its last ``val_images``."""
    from qfa_deploy.evaluate import evaluate_arch

    if calib_batches < 1:
        raise QfaError("--calib-batches must be at least 1")
    if not 1 <= val_images <= len(val):
        raise QfaError(f"--val-images must be between 1 and {len(val)} (the validation split)")
    if calib_batches * CALIB_BATCH > len(val):
        raise QfaError(
            f"--calib-batches {calib_batches} needs {calib_batches * CALIB_BATCH} images, validation has {len(val)}"
        )
    scored = val.select(torch.arange(len(val) - val_images, len(val)))
    return lambda cfg: evaluate_arch(net, cfg, val, scored, calib_batches)


@dataclass(frozen=True)
class CollectConfig:
    """One ``collect`` run: measure samples ``0..samples-1`` of the supernet into the journal ``output``."""

    output: str  # JSON lines, appended (a rerun adds only missing samples)
    samples: int
    checkpoint: str | None = None  # default: the embedded reference checkpoint
    data_dir: str | None = None
    seed: int = 0  # sample i is drawn from (seed, i)
    calib_batches: int = 10  # batches of 100 images, the first of the validation split
    val_images: int = 2000  # scored on the last M images of the validation split

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise QfaError("--samples must be at least 1")
        if self.calib_batches < 1:
            raise QfaError("--calib-batches must be at least 1")
        if self.val_images < 1:
            raise QfaError("--val-images must be at least 1")


def run_collect(config: CollectConfig, progress: bool | None = None) -> list[dict]:
    """``qfa-deploy collect`` from Python: check the journal, load the supernet and data, measure.

    Returns every record of ``config.output`` afterwards (in index order).
    """
    from qfa_deploy.atomic import check_output
    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.data import load_splits
    from qfa_deploy.reference import default_checkpoint

    check_output(config.output, append=True)  # a file of ours, in a writable folder: appended to
    check_journal(config.output)  # before the supernet loads: -o must be this command's journal, or new
    path = Path(config.checkpoint) if config.checkpoint else default_checkpoint()
    net = load_supernet(path)
    splits = load_splits(net.space, config.data_dir)
    measure = val_scorer(net, splits.val, config.calib_batches, config.val_images)
    settings = CollectSettings(net.space.name, config.seed, config.calib_batches, config.val_images, file_digest(path))
    return collect(config.output, config.samples, settings, measure, progress)
