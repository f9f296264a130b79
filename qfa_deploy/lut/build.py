"""lut build: measure every part of a space at one resolution on a device, fit the correction.

Work items are the parts (``space_keys``), the parts again at the bits where the device's schedule
runs kernels of their own (``lut.bit_kernels``: kept as keys with bits when they measure apart from
the highest bits' part), a few parts again at the lowest bitwidth where the schedule says the bits
change nothing (to check it; recorded in the provenance), and ``fit_samples`` random whole subnets
(for the linear correction). Every finished item is appended to a journal beside the
output, so a killed build resumes where it stopped; the table itself is written atomically once
all items are in, and the journal is then removed. With an RPC-tracker device, ``workers`` boards
under the key measure in parallel (compiles take turns on the host), and their results merge
into the one journal.
"""

from __future__ import annotations

import datetime
import logging
import platform
import random
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from qfa_deploy.arch import ArchConfig, sample_arch
from qfa_deploy.deploy.compile import DEFAULT_SCHEDULE, resolve_schedule
from qfa_deploy.deploy.cpu_share import FOREIGN_CPU_LIMIT, over_limit
from qfa_deploy.deploy.device import Device, host_cpu, load_device
from qfa_deploy.deploy.registry import NONE, resolve
from qfa_deploy.deploy.runner import open_session
from qfa_deploy.deploy.sim.estimate import simulation_provenance
from qfa_deploy.errors import QfaError
from qfa_deploy.lut.bit_kernels import BitKernels
from qfa_deploy.lut.journal import Journal
from qfa_deploy.lut.keys import bits_length, space_keys
from qfa_deploy.lut.measure import measure_onnx
from qfa_deploy.lut.parts import PartModels
from qfa_deploy.lut.table import LatencyTable
from qfa_deploy.space import create_space
from qfa_deploy.strict_json import check_number, check_type

__all__ = ["BuildPlan", "build_table", "fit_correction", "sample_subnets"]

log = logging.getLogger(__name__)

FIT_SEED_BASE = 1_000_000  # fit subnets come from seeds disjoint from validation's
BITS_NOISE = 0.03  # parts with bits within this of their highest-bits part are not worth keys


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


def _shared_measurements(records: list[dict]) -> dict | None:
    """The provenance's record of how much other work shared the measuring CPUs (local devices on Linux:
    ``deploy.cpu_share``), with a warning when some measurements stayed over the limit; None where it is
    not known."""
    shares = {r["item"]: r["foreign_cpu"] for r in records if r.get("foreign_cpu") is not None}
    if not shares:
        return None
    over = sorted(item for item, share in shares.items() if over_limit(share))
    if over:
        log.warning("%d of %d measurements ran while other work took more than %.0f%% of the measuring CPUs "
                    "(up to %.0f%%): their latencies are too high; rebuild on a core of its own",
                    len(over), len(shares), 100 * FOREIGN_CPU_LIMIT, 100 * max(shares.values()))
    return {"max": max(shares.values()), "limit": FOREIGN_CPU_LIMIT, "over_limit": over}


def build_table(plan: BuildPlan, out: str | Path, workers: int = 1, progress: bool = True) -> LatencyTable:
    """Measure every work item of ``plan`` (resuming ``out``'s journal), fit the correction, write ``out``
    atomically and remove the journal; see the module docstring."""
    dev = load_device(plan.device)
    sp = create_space(plan.space)
    if plan.resolution not in sp.resolutions:
        raise QfaError(f"resolution {plan.resolution} is not one of space {sp.name}'s {list(sp.resolutions)}")
    if workers > 1 and dev.runner.kind != "rpc-tracker":
        raise QfaError("--workers > 1 needs a device behind an RPC tracker (parallel local timings interfere)")
    out = Path(out)
    journal = Journal(out.with_name(out.name + ".journal"))
    header, resumed = _open_journal(journal, plan.header(dev))
    models = PartModels(sp.name, plan.resolution, plan.seed)
    kernels = _bit_kernels(dev, header["schedule"], sp, plan.resolution)
    work = _work_items(plan, sp, kernels)
    done = {r["item"] for r in resumed}
    todo = [(name, what) for name, what in work.items if name not in done]
    measure = _Measure(dev, journal, models, min(sp.bit_choices), header["schedule"])
    bar = tqdm(total=len(work.items), initial=len(work.items) - len(todo), unit="part", desc=f"lut {dev.name}",
               disable=None if progress else True, dynamic_ncols=True)
    try:
        measure.run_all(todo, workers, bar)
    except BaseException:
        if not resumed and len(journal.read()) <= 1:  # this run's journal, nothing measured: nothing to resume
            journal.remove()
        raise
    finally:
        bar.close()
    records = journal.read()[1:]
    latency = {r["item"]: dev.protocol.latency(r) for r in records}  # the journal keeps every stat
    table = _fitted_table(work, latency, sp.name, plan.resolution, kernels)
    table.provenance = _provenance(dev, plan, _bits_probe(work, latency, kernels))
    shared = _shared_measurements(records)
    if shared is not None:
        table.provenance["foreign_cpu"] = shared
    table.save(out)
    journal.remove()
    return table


def _bit_kernels(dev: Device, schedule: str, sp, resolution: int) -> BitKernels:
    """The 1x1 convs whose kernels follow their bits under ``schedule`` on ``dev`` (none for most)."""
    chosen = None if schedule == NONE else resolve(schedule, dev)
    rule = chosen.bit_kernel if chosen is not None else None
    return BitKernels.of_schedule(rule, space_keys(sp, resolution), sp.bit_choices)


def _open_journal(journal: Journal, header: dict) -> tuple[dict, list[dict]]:
    """``header`` and the items a journal already holds (``header`` written first into a new one); a
    journal of another build (another header) is refused."""
    records = journal.read()
    if records and not isinstance(records[0], dict):
        raise QfaError(f"{journal.path}:1: not a lut build journal (its header is a JSON "
                       f"{type(records[0]).__name__}, not an object); remove it to start over")
    if records and records[0] != header:
        changed = sorted(k for k in header.keys() | records[0].keys() if header.get(k) != records[0].get(k))
        raise QfaError(f"{journal.path} belongs to another build (differs in {', '.join(changed)}); "
                       "remove it to start over")
    statistic = header["protocol"]["statistic"]
    for line, rec in enumerate(records[1:], 2):  # each measurement as _Measure.run appends it
        try:
            check_type(rec, dict, "the record")
            check_type(rec.get("item"), str, "'item'")
            check_number(rec.get(statistic), f"{statistic!r}", low=0)
        except QfaError as exc:
            raise QfaError(f"{journal.path}:{line}: not a measurement of this build ({exc}); "
                           "remove the journal to start over") from None
    if not records:
        journal.append(header)
    return header, records[1:]


@dataclass(frozen=True)
class _WorkItems:
    keys: list  # every part of the space (LatencyKey)
    bit_keys: list  # parts with bits: at the bits where the schedule runs kernels of their own
    probe_keys: list  # block parts measured again at the lowest bitwidth
    fit_cfgs: list[ArchConfig]  # whole subnets for the correction
    items: list[tuple[str, object]]  # (journal item name, key or config), in measuring order


def _work_items(plan: BuildPlan, sp, kernels: BitKernels) -> _WorkItems:
    """The parts, their variants with bits, the lowest-bitwidth probes and the fit subnets ``plan``
    measures, named as in the journal."""
    keys = space_keys(sp, plan.resolution)
    variants = {k: kernels.variants(k, bits_length(k, sp)) for k in keys}
    bit_keys = [v for k in keys for v in variants[k]]
    block_keys = [k for k in keys if k.kind == "block" and not variants[k]]
    probe_keys = block_keys[:: max(1, len(block_keys) // max(1, plan.bits_probe))][: plan.bits_probe]
    fit_cfgs = sample_subnets(sp.name, plan.resolution, plan.fit_samples, FIT_SEED_BASE + plan.seed)
    items: list[tuple[str, object]] = [(f"part:{k}", k) for k in keys]
    items += [(f"bits2:{k}", k) for k in probe_keys]
    items += [(f"part:{k}", k) for k in bit_keys]
    items += [(f"subnet:{c.digest()}", c) for c in fit_cfgs]
    return _WorkItems(keys, bit_keys, probe_keys, fit_cfgs, items)


@dataclass(frozen=True)
class _Measure:
    """Measures work items on a device, each result appended to the journal."""

    dev: Device
    journal: Journal
    models: PartModels
    lowest_bits: int
    schedule: str

    def model_of(self, name: str, what):
        if name.startswith("part:"):
            return self.models.part(what)
        if name.startswith("bits2:"):
            return self.models.part_at_bits(what, self.lowest_bits)
        return self.models.subnet(what)

    def run(self, queue: list, bar) -> None:
        with open_session(self.dev) as session:
            for name, what in queue:
                stats = measure_onnx(self.model_of(name, what), self.dev, session, self.schedule)
                self.journal.append({"item": name, **stats})
                bar.update(1)

    def run_all(self, todo: list, workers: int, bar) -> None:
        """``todo`` in this thread, or sharded over ``workers`` boards (one session each)."""
        if workers <= 1:
            self.run(todo, bar)
            return
        shards = [todo[i::workers] for i in range(workers)]
        with ThreadPoolExecutor(workers) as pool:
            for future in as_completed([pool.submit(self.run, s, bar) for s in shards if s]):
                future.result()


def _fitted_table(work: _WorkItems, latency: dict[str, float], space: str, resolution: int,
                  kernels: BitKernels) -> LatencyTable:
    """The table of the measured parts (with bits where they measure apart), its correction fitted
    on the measured subnets."""
    keyed = _bits_measure_apart(_bit_ratios(work, latency))
    entries = {str(k): latency[f"part:{k}"] for k in work.keys + (work.bit_keys if keyed else [])}
    table = LatencyTable(space=space, resolution=resolution, entries=entries,
                         bit_kernels=kernels if keyed else None)
    part_sums = [table.part_sum(c) for c in work.fit_cfgs]
    measured = [latency[f"subnet:{c.digest()}"] for c in work.fit_cfgs]
    table.scale, table.offset_ms = fit_correction(part_sums, measured)
    return table


def _bit_ratios(work: _WorkItems, latency: dict[str, float]) -> list[float]:
    """Each part with bits measured against the same part at the highest bits."""
    return [latency[f"part:{k}"] / latency[f"part:{replace(k, bits=())}"] for k in work.bit_keys]


def _bits_measure_apart(bit_ratios: list[float]) -> bool:
    """Whether the parts with bits are worth keys of their own: one of them differs from its
    highest-bits part by more than this build's noise (else the keys would only chase noise)."""
    return any(abs(r - 1) > BITS_NOISE for r in bit_ratios)


def _bits_probe(work: _WorkItems, latency: dict[str, float], kernels: BitKernels) -> dict:
    """The provenance's record of the parts measured at other bits: the lowest-bitwidth probes (parts
    whose kernels the schedule says the bits do not change) and the parts with bits."""
    ratios = [latency[f"bits2:{k}"] / latency[f"part:{k}"] for k in work.probe_keys]
    record = {
        "parts": [str(k) for k in work.probe_keys],
        "latency_ratio_lowest_vs_highest_bits": [round(r, 4) for r in ratios],
        "note": "parts whose kernels the schedule says the bits do not change, measured at the lowest bits",
    }
    if work.bit_keys:
        bit_ratios = _bit_ratios(work, latency)
        record["bit_kernels"] = {
            "convs": kernels.to_list(),
            "parts": len(work.bit_keys),
            "latency_ratio_to_highest_bits": {"min": round(min(bit_ratios), 4),
                                              "median": round(float(np.median(bit_ratios)), 4),
                                              "max": round(max(bit_ratios), 4)},
            "keyed": _bits_measure_apart(bit_ratios),
            "note": f"parts keyed on their bits when one differs from its highest-bits part by more than "
                    f"{BITS_NOISE:.0%}",
        }
    return record
