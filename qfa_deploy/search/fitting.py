"""Fit a predictor on measured subnets and report how well it ranks subnets it has not seen."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qfa_deploy.arch import ArchConfig
from qfa_deploy.errors import QfaError
from qfa_deploy.search.cost import CostModel
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.search.predictor import MODELS, AccuracyPredictor, fit_predictor, regression_metrics

__all__ = ["PredictorFitConfig", "fit_and_report", "holdout_split", "run_predictor_fit"]


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
        "model": pred.model,
        "ensemble": len(pred.members),
        "cost_features": pred.cost_features,
        "sources": sources or [],
        "seed": seed,
    }
    if "ridge_penalty" in pred.info:
        report["ridge_penalty"] = pred.info["ridge_penalty"]
    pred.info.update({"holdout": metrics, "baseline_mflops_spearman": baseline, "sources": sources or []})
    return pred, report


@dataclass(frozen=True)
class PredictorFitConfig:
    """One ``predictor fit``: the collect files to fit on, the predictor file to write, the model's shape."""

    data: tuple[str, ...]  # acc.jsonl files from ``collect``
    output: str  # the predictor file (pred.pt)
    holdout: float = 0.2  # fraction of subnets held out for the reported Spearman / RMSE
    model: str = "mlp"  # or "ridge" (few subnets: predictor.py)
    ensemble: int = 1
    cost_features: bool = True
    hidden: int = 400
    layers: int = 3
    max_epochs: int = 400
    seed: int = 0
    force: bool = False  # replace ``output`` if it exists

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(self.data))  # click gives a tuple; a list from Python is fine too
        if not self.data:
            raise QfaError("no accuracy files given (DATA)")
        if self.model not in MODELS:
            raise QfaError(f"--model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if not 0.05 <= self.holdout <= 0.5:  # also false for NaN
            raise QfaError(f"--holdout must be between 0.05 and 0.5, not {self.holdout!r}")
        for name in ("ensemble", "hidden", "layers", "max_epochs"):
            if getattr(self, name) < 1:
                raise QfaError(f"--{name.replace('_', '-')} must be at least 1")


def run_predictor_fit(config: PredictorFitConfig) -> dict:
    """``qfa-deploy predictor fit`` from Python: fit on ``config.data``, write ``config.output``.

    Returns ``fit_and_report``'s report (with ``"output"``); the predictor is the file written.
    """
    from qfa_deploy.atomic import check_output
    from qfa_deploy.search.collect import load_records, records_to_arrays

    check_output(config.output, config.force, inputs=config.data)
    records = []
    for path in config.data:
        records += load_records(path)
    space, cfgs, top1 = records_to_arrays(records, ", ".join(config.data))
    # a fit would divide by a zero spread and report NaN (fewer than 4 subnets: holdout_split says so)
    if len(top1) >= 4 and np.ptp(top1) == 0:
        raise QfaError(f"{', '.join(config.data)}: all {len(top1)} subnets have the same top-1 "
                       f"({100 * float(top1[0]):.2f}%): nothing to fit a predictor on")
    pred, report = fit_and_report(
        space,
        cfgs,
        top1,
        holdout=config.holdout,
        seed=config.seed,
        model=config.model,
        ensemble=config.ensemble,
        cost_features=config.cost_features,
        hidden=config.hidden,
        layers=config.layers,
        max_epochs=config.max_epochs,
        sources=list(config.data),
    )
    pred.save(config.output)
    report["output"] = config.output
    return report
