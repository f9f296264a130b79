"""Fit a predictor on measured subnets and report how well it ranks subnets it has not seen."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qfa_deploy.arch import ArchConfig
from qfa_deploy.errors import QfaError
from qfa_deploy.search.cost import CostModel
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.search.predictor import AccuracyPredictor, fit_predictor, regression_metrics

__all__ = ["fit_and_report", "holdout_split"]


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a seeded random split, at least one on each side."""
    if n < 4:
        raise QfaError(f"need at least 4 measured subnets to fit and check a predictor, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(n - 2, max(2, int(round(fraction * n))))
    return np.sort(perm[k:]), np.sort(perm[:k])


def fit_and_report(
    space: str,
    cfgs: Sequence[ArchConfig],
    top1: np.ndarray,
    *,
    holdout: float = 0.2,
    seed: int = 0,
    sources: list[str] | None = None,
    **fit_kwargs,
) -> tuple[AccuracyPredictor, dict]:
    """Fit on a seeded train part, report Spearman / Kendall / RMSE on the held-out part.

    The returned predictor is the one that was scored (it never saw the held-out subnets). Its
    ``info["holdout"]`` keeps the report.
    """
    genome = GenomeSpace(space)
    G, y = genome.encode(cfgs), np.asarray(top1, dtype=np.float64)
    tr, ho = holdout_split(len(y), holdout, seed)
    pred = fit_predictor(space, G[tr], y[tr], seed=seed, **fit_kwargs)
    metrics = regression_metrics(pred.predict_genomes(G[ho]), y[ho])
    macs = CostModel(genome).macs(G[ho]).astype(np.float64)
    baseline = regression_metrics(macs, y[ho])["spearman"]  # how far MACs alone go
    report = {
        "space": space,
        "n_train": int(len(tr)),
        "holdout": metrics,
        "train": regression_metrics(pred.predict_genomes(G[tr]), y[tr]),
        "baseline_mflops_spearman": baseline,
        "ensemble": len(pred.members),
        "cost_features": pred.cost_features,
        "sources": sources or [],
        "seed": seed,
    }
    pred.info.update({"holdout": metrics, "baseline_mflops_spearman": baseline, "sources": sources or []})
    return pred, report
