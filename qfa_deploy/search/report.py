"""Search outputs: pareto.json, the best config, and a plot of the front."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qfa_deploy.atomic import atomic_write_bytes, write_text_atomic
from qfa_deploy.errors import QfaError
from qfa_deploy.plot_format import plot_format
from qfa_deploy.search.nsga import SearchResult

__all__ = ["plot_front", "write_best", "write_pareto"]



def write_pareto(result: SearchResult, path: str | Path) -> None:
    """A JSON list, cheapest first: {arch, digest, predicted_top1, mflops, gbitops[, latency_ms]}."""
    write_text_atomic(path, json.dumps(result.records(), indent=1) + "\n")


def write_best(result: SearchResult, path: str | Path) -> None:
    """The most accurate (predicted) Pareto member as a cfg.json (``qfa-deploy export`` reads it)."""
    write_text_atomic(path, result.configs()[result.best_index()].to_json())


def plot_front(result: SearchResult, path: str | Path, title: str | None = None) -> None:
    """Final population (grey; infeasible hollow) and the Pareto front, predicted top-1 vs cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, obj = result.objective.metric, result.objective
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    try:
        feas = result.population_feasible
        ax.scatter(
            result.population_cost[feas],
            100 * result.population_predicted[feas],
            s=8,
            c="0.7",
            label="final population",
        )
        if (~feas).any():
            ax.scatter(
                result.population_cost[~feas],
                100 * result.population_predicted[~feas],
                s=8,
                facecolors="none",
                edgecolors="0.7",
                label="infeasible",
            )
        cost, acc = result.costs[metric], 100 * result.predicted
        order = np.argsort(cost)
        ax.plot(cost[order], acc[order], "o-", ms=3, lw=1, c="tab:blue", label="Pareto front")
        best = result.best_index()
        ax.plot([cost[best]], [acc[best]], "*", ms=12, c="tab:red", label="chosen")
        for m, bound in result.constraints.items():
            if m == metric:
                ax.axvline(bound, ls="--", c="tab:red", lw=1, label="budget")
        ax.set_xlabel(obj.label)
        ax.set_ylabel("predicted top-1 (%)")
        ax.set_title(
            title
            or f"NSGA-II {result.settings.get('pop')}x{result.settings.get('gen')}; "
            f"budgets: {result.constraints.describe()}",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        path = Path(path)
        fmt = plot_format(path)
        atomic_write_bytes(path, lambda f: fig.savefig(f, format=fmt))  # never a half-written image
    except OSError as exc:
        raise QfaError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
