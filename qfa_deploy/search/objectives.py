"""What the search minimises besides error, and the budgets it must respect.

Costs of many genomes at once: MACs ("FLOPs", reported in millions) and BitOPs (in billions) from
the analytic ``CostModel``, latency (ms) from a ``LatencyModel`` over a device's latency table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from qfa_deploy.errors import QfaError
from qfa_deploy.search.cost import CostModel
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.search.latency import LatencyModel

__all__ = ["Constraints", "CostEvaluator", "Objective"]


class Objective(str, Enum):
    LATENCY = "latency"
    FLOPS = "flops"
    BITOPS = "bitops"

    @property
    def metric(self) -> str:
        """The key of this objective in ``CostEvaluator.evaluate``'s result."""
        return {"latency": "latency_ms", "flops": "mflops", "bitops": "gbitops"}[self.value]

    @property
    def label(self) -> str:
        return {"latency": "latency (ms)", "flops": "MACs (M)", "bitops": "BitOPs (G)"}[self.value]


@dataclass(frozen=True)
class Constraints:
    """Upper bounds; ``None`` means unbounded."""

    max_latency_ms: float | None = None
    max_mflops: float | None = None
    max_gbitops: float | None = None

    def items(self) -> list[tuple[str, float]]:
        """(metric, bound) of every bound that is set."""
        pairs = [("latency_ms", self.max_latency_ms), ("mflops", self.max_mflops), ("gbitops", self.max_gbitops)]
        return [(m, float(b)) for m, b in pairs if b is not None]

    def describe(self) -> str:
        units = {"latency_ms": "ms latency", "mflops": "M MACs", "gbitops": "G BitOPs"}
        return ", ".join(f"<= {b:g} {units[m]}" for m, b in self.items()) or "none"


class CostEvaluator:
    """MACs, BitOPs and (with a table) latency of genome rows."""

    def __init__(self, genome: GenomeSpace, latency: LatencyModel | None = None) -> None:
        self.genome = genome
        self.cost = CostModel(genome)
        self.latency = latency

    def metrics(self) -> list[str]:
        return ["mflops", "gbitops"] + (["latency_ms"] if self.latency is not None else [])

    def evaluate(self, G: np.ndarray, only: set[str] | None = None) -> dict[str, np.ndarray]:
        """{"mflops", "gbitops"[, "latency_ms"]} -> (n,) float arrays (``only``: just these keys)."""
        want = set(self.metrics()) if only is None else set(only)
        out: dict[str, np.ndarray] = {}
        if "mflops" in want:
            out["mflops"] = self.cost.macs(G) / 1e6
        if "gbitops" in want:
            out["gbitops"] = self.cost.bitops(G) / 1e9
        if "latency_ms" in want:
            if self.latency is None:
                raise QfaError("latency needs a latency table (--table)")
            out["latency_ms"] = self.latency.predict(G)
        return out

    def lower_bounds(self) -> dict[str, float]:
        """The smallest value each metric takes over the searchable subnets."""
        res = (self.genome.space.resolutions[self.latency.resolution_index],) if self.latency else None
        macs, bitops = self.cost.minimum(res)
        bounds = {"mflops": macs / 1e6, "gbitops": bitops / 1e9}
        if self.latency is not None:
            bounds["latency_ms"] = self.latency.minimum()
        return bounds

    def check_feasible(self, constraints: Constraints) -> None:
        """One-line QfaError if a bound is below what any subnet can reach."""
        low = self.lower_bounds()
        names = {
            "latency_ms": ("--max-latency-ms", "ms"),
            "mflops": ("--max-flops", "M MACs"),
            "gbitops": ("--max-bitops", "G BitOPs"),
        }
        for metric, bound in constraints.items():
            if metric not in low:
                raise QfaError(f"{names[metric][0]} needs a latency table (--table)")
            if bound < low[metric]:
                flag, unit = names[metric]
                raise QfaError(f"{flag} {bound:g} is infeasible: the cheapest subnet needs {low[metric]:.4g} {unit}")
