"""lut validate: predicted vs measured end-to-end latency of unseen random subnets.

Reports MAPE, the share of subnets within +-10% (and within a chosen tolerance), Spearman's rank
correlation, and optionally a predicted-vs-measured scatter plot. The subnets come from seeds
disjoint from the ones the table's correction was fitted on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from qfa_deploy.atomic import atomic_write_bytes
from qfa_deploy.deploy.device import Device, load_device
from qfa_deploy.deploy.runner import open_session
from qfa_deploy.errors import QfaError
from qfa_deploy.lut.build import sample_subnets
from qfa_deploy.lut.measure import measure_onnx
from qfa_deploy.lut.parts import PartModels
from qfa_deploy.lut.table import LatencyTable
from qfa_deploy.plot_format import plot_format

__all__ = ["check_table_device", "timing_caveat", "validate_table"]


def check_table_device(table: LatencyTable, device: str) -> Device:
    """The profile of ``device``, refused if it measures other numbers than ``table`` holds: another
    statistic (median / min) or another TVM target (the table's predictions would not be its latencies)."""
    dev = load_device(device)
    built_on = (table.provenance.get("protocol") or {}).get("statistic", "median")
    if built_on != dev.protocol.statistic:
        raise QfaError(f"the table holds {built_on} latencies, device {dev.name}'s protocol measures the "
                       f"{dev.protocol.statistic}: use the profile it was built with")
    built_for = table.provenance.get("tvm_target")
    if built_for is not None and built_for != str(dev.tvm_target()):
        raise QfaError(f"the table was measured for TVM target {built_for}, device {dev.name} compiles for "
                       f"{dev.tvm_target()}: use the profile it was built with")
    return dev


def validate_table(
    table: LatencyTable, device: str, samples: int, seed: int, plot: str | Path | None = None,
    progress: bool = True, tolerance: float = 0.10,
) -> dict:
    if samples < 2:
        raise QfaError("--samples must be at least 2")
    if not 0 < tolerance < 1:
        raise QfaError(f"--tolerance must be a percentage between 0 and 100, not {100 * tolerance:g}")
    dev = check_table_device(table, device)
    schedule = table.schedule
    cfgs = sample_subnets(table.space, table.resolution, samples, seed)
    models = PartModels(table.space, table.resolution, seed)
    predicted, stats = [], []
    with open_session(dev) as session:
        for cfg in tqdm(cfgs, unit="subnet", desc=f"validate {dev.name}", disable=None if progress else True):
            predicted.append(table.predict(cfg))
            stats.append(measure_onnx(models.subnet(cfg), dev, session, schedule))
    measured = [dev.protocol.latency(s) for s in stats]
    p, m = np.asarray(predicted), np.asarray(measured)
    rel = (p - m) / m
    report = {
        "device": dev.name,
        "emulated": dev.emulated,
        "simulated": dev.runner.kind == "simulated",
        "space": table.space,
        "resolution": table.resolution,
        "samples": samples,
        "seed": seed,
        "statistic": dev.protocol.statistic,
        "mape_percent": float(100 * np.abs(rel).mean()),
        "within_10_percent": float((np.abs(rel) <= 0.10).mean()),
        "tolerance_percent": float(100 * tolerance),
        "within_tolerance": float((np.abs(rel) <= tolerance).mean()),
        "spearman": float(spearmanr(p, m).statistic),
        "max_abs_error_percent": float(100 * np.abs(rel).max()),
        "measured_ms": {"min": float(m.min()), "median": float(np.median(m)), "max": float(m.max())},
        "points": [
            {"digest": c.digest(), "predicted_ms": float(a), "measured_ms": float(b), "stats_ms": st}
            for c, a, b, st in zip(cfgs, p, m, stats, strict=True)
        ],
    }
    if plot:
        _scatter(p, m, report, Path(plot))
    return report


def _scatter(p: np.ndarray, m: np.ndarray, report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = min(p.min(), m.min()) * 0.9, max(p.max(), m.max()) * 1.1
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="ideal")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="±10%")
    ax.scatter(m, p, s=14)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    label = f" ({timing_caveat(report)})" if timing_caveat(report) else ""
    ax.set_title(
        f"{report['device']}{label}, {report['space']} @{report['resolution']}\n"
        f"MAPE {report['mape_percent']:.1f}%, within ±10%: {100 * report['within_10_percent']:.0f}%, "
        f"Spearman {report['spearman']:.3f}",
        fontsize=9,
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fmt = plot_format(path)
    try:
        atomic_write_bytes(Path(path), lambda f: fig.savefig(f, format=fmt, dpi=120))  # never half-written
    finally:
        plt.close(fig)


def timing_caveat(report: dict) -> str:
    """What the device's timings are when they are not a board's latency ("" when they are)."""
    if report.get("simulated"):
        return "simulated: estimated cycles, not latency"
    return "emulated: not latency" if report["emulated"] else ""
