"""lut build: measure every part of a space at one resolution on a device, fit the correction.

Work items are the parts (``space_keys``), a few parts again at the lowest bitwidth (to measure
whether bits change the kernels that run; recorded in the provenance), and ``fit_samples`` random
whole subnets (for the linear correction). Every finished item is appended to a journal beside the
output, so a killed build resumes where it stopped; the table itself is written atomically once
all items are in, and the journal is then removed. With an RPC-tracker device, ``workers`` boards
under the key measure in parallel (compiles take turns on the host), and their results merge
into the one journal.
"""

from __future__ import annotations

import datetime
import platform
import random
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.deploy.compile import DEFAULT_SCHEDULE, resolve_schedule
from qfa_deploy.deploy.device import Device, host_cpu, load_device
from qfa_deploy.deploy.runner import open_session
from qfa_deploy.deploy.sim.estimate import simulation_provenance
from qfa_deploy.errors import QfaError
from qfa_deploy.lut.journal import Journal
from qfa_deploy.lut.keys import space_keys
from qfa_deploy.lut.measure import measure_onnx
from qfa_deploy.lut.parts import PartModels
from qfa_deploy.lut.table import LatencyTable
from qfa_deploy.space import create_space

__all__ = ["BuildPlan", "build_table", "fit_correction", "sample_subnets"]

FIT_SEED_BASE = 1_000_000  # fit subnets come from seeds disjoint from validation's


def sample_subnets(space: str, resolution: int, n: int, seed: int) -> list[ArchConfig]:
    return [sample_arch(space, random.Random(seed * 100_003 + i), resolutions=[resolution]) for i in range(n)]


@dataclass(frozen=True)
class BuildPlan:
    device: str
    space: str
    resolution: int
    fit_samples: int = 20
    bits_probe: int = 3  # parts measured again at the lowest bitwidth
    seed: int = 0

    def header(self, dev: Device) -> dict:
        """The journal's first record: a resumed build must measure exactly the same way."""
        return {"kind": "header", "device": self.device, "space": self.space, "resolution": self.resolution,
                "fit_samples": self.fit_samples, "seed": self.seed, **_measured_with(dev)}


def _measured_with(dev: Device) -> dict:
    """How every measurement of a build is taken (in the journal's header and the table's provenance)."""
    return {"tvm_target": str(dev.tvm_target()), "threads": dev.threads, "protocol": dev.protocol.to_dict(),
            "schedule": resolve_schedule(DEFAULT_SCHEDULE, dev)}


def fit_correction(part_sums: list[float], measured: list[float]) -> tuple[float, float]:
    """Least-squares ``measured ~ scale * part_sum + offset`` (scale only below 3 points)."""
    x, y = np.asarray(part_sums), np.asarray(measured)
    if len(x) < 3:
        return (float(y.sum() / x.sum()) if len(x) else 1.0), 0.0
    scale, offset = np.polyfit(x, y, 1)
    return float(scale), float(offset)


def _provenance(dev: Device, plan: BuildPlan, bits_probe: dict) -> dict:
    import tvm

    return {
        "device": dev.name,
        **_measured_with(dev),
        "tvm_version": tvm.__version__,
        "tuning_db": None,
        "runner": dev.runner.to_dict(),
        "emulated": dev.emulated,
        "host_cpu": host_cpu(),
        "host": platform.node(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fit_samples": plan.fit_samples,
        "bits_probe": bits_probe,
        **({"simulated": simulation_provenance(dev.runner.cpu)} if dev.runner.kind == "simulated" else {}),
    }


def build_table(plan: BuildPlan, out: str | Path, workers: int = 1, progress: bool = True) -> LatencyTable:
    dev = load_device(plan.device)
    sp = create_space(plan.space)
    if plan.resolution not in sp.resolutions:
        raise QfaError(f"resolution {plan.resolution} is not one of space {sp.name}'s {list(sp.resolutions)}")
    if workers > 1 and dev.runner.kind != "rpc-tracker":
        raise QfaError("--workers > 1 needs a device behind an RPC tracker (parallel local timings interfere)")
    out = Path(out)
    journal = Journal(out.with_name(out.name + ".journal"))
    records = journal.read()
    header = plan.header(dev)
    if records and records[0] != header:
        changed = sorted(k for k in header.keys() | records[0].keys() if header.get(k) != records[0].get(k))
        raise QfaError(f"{journal.path} belongs to another build (differs in {', '.join(changed)}); "
                       "remove it to start over")
    if not records:
        journal.append(header)
    done = {r["item"]: r for r in records[1:]}

    models = PartModels(sp.name, plan.resolution, plan.seed)
    keys = space_keys(sp, plan.resolution)
    block_keys = [k for k in keys if k.kind == "block"]
    probe_keys = block_keys[:: max(1, len(block_keys) // max(1, plan.bits_probe))][: plan.bits_probe]
    fit_cfgs = sample_subnets(sp.name, plan.resolution, plan.fit_samples, FIT_SEED_BASE + plan.seed)
    items: list[tuple[str, object]] = [(f"part:{k}", k) for k in keys]
    items += [(f"bits2:{k}", k) for k in probe_keys]
    items += [(f"subnet:{c.digest()}", c) for c in fit_cfgs]
    todo = [(name, what) for name, what in items if name not in done]

    def model_of(name: str, what):
        if name.startswith("part:"):
            return models.part(what)
        if name.startswith("bits2:"):
            return models.part_at_bits(what, min(sp.bit_choices))
        return models.subnet(what)

    schedule = header["schedule"]

    def run(queue: list) -> None:
        with open_session(dev) as session:
            for name, what in queue:
                stats = measure_onnx(model_of(name, what), dev, session, schedule)
                journal.append({"item": name, **stats})
                bar.update(1)

    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="part", desc=f"lut {dev.name}",
               disable=None if progress else True, dynamic_ncols=True)
    try:
        if workers <= 1:
            run(todo)
        else:
            shards = [todo[i::workers] for i in range(workers)]
            with ThreadPoolExecutor(workers) as pool:
                for future in as_completed([pool.submit(run, s) for s in shards if s]):
                    future.result()
    except BaseException:
        if not records and len(journal.read()) <= 1:  # this run's journal, nothing measured: nothing to resume
            journal.remove()
        raise
    finally:
        bar.close()

    done = {r["item"]: r for r in journal.read()[1:]}
    latency = {name: dev.protocol.latency(stats) for name, stats in done.items()}  # the journal keeps every stat
    entries = {str(k): latency[f"part:{k}"] for k in keys}
    table = LatencyTable(space=sp.name, resolution=plan.resolution, entries=entries)
    part_sums = [table.part_sum(c) for c in fit_cfgs]
    measured = [latency[f"subnet:{c.digest()}"] for c in fit_cfgs]
    table.scale, table.offset_ms = fit_correction(part_sums, measured)
    ratios = [latency[f"bits2:{k}"] / latency[f"part:{k}"] for k in probe_keys]
    bits_probe = {
        "parts": [str(k) for k in probe_keys],
        "latency_ratio_lowest_vs_highest_bits": [round(r, 4) for r in ratios],
        "note": "bits are not in the keys when these ratios are within measurement noise",
    }
    table.provenance = _provenance(dev, plan, bits_probe)
    table.save(out)
    journal.remove()
    return table


