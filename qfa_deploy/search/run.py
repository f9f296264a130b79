"""``run_search``: the whole search verb as one library call (``qfa-deploy search`` is a thin layer over it).

Load the predictor (and latency table), check every output and the device before minutes of search,
run NSGA-II, write pareto.json / cfg.json / the plot and, with ``evaluate``, measure the chosen
subnet on the test split (and on a device). Every problem is a one-line ``QfaError``; the checks run
in the order the CLI has always reported them, cheapest and earliest-known first.

Example::

    from qfa_deploy.search.run import SearchConfig, run_search

    outcome = run_search(SearchConfig(output="pareto.json", max_flops=20, pop_size=50, generations=20))
    print(outcome.best.short(), outcome.best_record["predicted_top1"])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from qfa_deploy.arch import ArchConfig
from qfa_deploy.atomic import check_output, staged_directory
from qfa_deploy.errors import QfaError
from qfa_deploy.plot_format import plot_format
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.search.latency import LatencyModel
from qfa_deploy.search.nsga import SearchResult, run_nsga
from qfa_deploy.search.objectives import Constraints, CostEvaluator, Objective
from qfa_deploy.search.predictor import AccuracyPredictor
from qfa_deploy.search.report import plot_front, write_best, write_pareto

__all__ = ["SearchConfig", "SearchOutcome", "check_device", "check_outputs", "run_search"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """One search: what to optimise, under which budgets, what to write and whether to measure the pick.

    Field names are the CLI's option names (``--max-flops`` is ``max_flops``); paths are strings.
    Construction refuses combinations that cannot work (a QfaError naming the options).
    """

    output: str  # pareto.json
    predictor: str | None = None  # default: the embedded predictor (for the embedded checkpoint)
    table: str | None = None  # a device's latency table (file or packaged name)
    objective: str | None = None  # latency / flops / bitops; default: latency with a table, else flops
    max_latency_ms: float | None = None
    max_flops: float | None = None  # millions of MACs
    max_bitops: float | None = None  # billions of BitOPs
    bits: int | None = None  # every conv at this width only (a uniform-bit search); default: mixed
    pop_size: int = 100
    generations: int = 100
    seed: int = 0
    best_out: str | None = None  # cfg.json of the chosen subnet
    plot: str | None = None  # PNG of the front
    evaluate: bool = False  # measure the chosen subnet: test top-1 (and latency with ``device``)
    device: str | None = None
    artifacts: str = "search-artifact"  # with ``device``: folder for the ONNX model and compiled library
    checkpoint: str | None = None  # supernet for ``evaluate`` (default: the embedded one)
    data_dir: str | None = None
    calib_batches: int = 20
    test_limit: int | None = None
    force: bool = False  # replace output, best_out, plot and artifacts if they exist

    def __post_init__(self) -> None:
        if self.device and not self.evaluate:
            raise QfaError("--device goes with --evaluate")
        if self.table is None and (self.objective == "latency" or self.max_latency_ms is not None):
            raise QfaError("latency (--objective latency / --max-latency-ms) needs a latency table (--table)")
        if self.objective is not None and self.objective not in {o.value for o in Objective}:
            known = ", ".join(o.value for o in Objective)
            raise QfaError(f"--objective must be one of {known}, not {self.objective!r}")
        for name in ("max_latency_ms", "max_flops", "max_bitops"):
            bound = getattr(self, name)
            if bound is not None and not (math.isfinite(bound) and bound > 0):
                raise QfaError(f"--{name.replace('_', '-')} must be a positive number, not {bound!r}")
        if self.pop_size < 2 or self.generations < 1:
            raise QfaError("--pop must be at least 2 and --gen at least 1")
        if self.calib_batches < 1 or (self.test_limit is not None and self.test_limit < 1):
            raise QfaError("--calib-batches and --test-limit must be at least 1")

    @property
    def constraints(self) -> Constraints:
        return Constraints(self.max_latency_ms, self.max_flops, self.max_bitops)

    def resolved_objective(self) -> Objective:
        """The objective given, else latency with a table, else MACs."""
        return Objective(self.objective or ("latency" if self.table else "flops"))


@dataclass(frozen=True)
class SearchOutcome:
    """What ``run_search`` found and wrote; ``summary`` is the JSON the CLI prints with ``--json``."""

    result: SearchResult
    best: ArchConfig  # the Pareto member with the highest predicted accuracy
    best_record: dict  # its pareto.json record (arch, digest, predicted_top1, costs)
    summary: dict


@dataclass(frozen=True)
class _Inputs:
    """Everything loaded and checked before the search runs."""

    predictor: AccuracyPredictor
    genome: GenomeSpace
    lut: object | None  # qfa_deploy.lut.LatencyTable
    latency: LatencyModel | None
    supernet: object | None  # with ``evaluate``
    splits: object | None  # with ``evaluate``


def run_search(config: SearchConfig, warn: Callable[[str], None] | None = None) -> SearchOutcome:
    """Search, write the outputs of ``config`` and (with ``config.evaluate``) measure the chosen subnet.

    ``warn`` receives warnings that do not stop the search (a table measured with a schedule this host
    would not pick); default: ``logging.warning``.
    """
    inputs = _load_inputs(config, warn or log.warning)
    objective, constraints = config.resolved_objective(), config.constraints
    costs = CostEvaluator(inputs.genome, inputs.latency)
    result = run_nsga(inputs.genome, inputs.predictor, costs, objective, constraints,
                      config.pop_size, config.generations, config.seed, bits=config.bits)
    _write_outputs(result, config)
    best, best_rec = result.configs()[result.best_index()], result.records()[result.best_index()]
    summary = _summary(config, result, best_rec)
    if config.evaluate:
        summary["evaluation"] = _evaluate_best(config, inputs, best, best_rec)
    return SearchOutcome(result, best, best_rec, summary)


def _load_inputs(config: SearchConfig, warn: Callable[[str], None]) -> _Inputs:
    """Predictor, table, outputs, device and (for ``evaluate``) supernet and data: refused before the search."""
    from qfa_deploy.lut import LatencyTable

    predictor_path = config.predictor
    if predictor_path is None:
        from qfa_deploy.reference import default_predictor

        predictor_path = default_predictor()
    pred = AccuracyPredictor.load(predictor_path)
    genome = GenomeSpace(pred.space)
    lut = LatencyTable.load(config.table) if config.table else None
    latency = LatencyModel(lut, genome) if lut else None
    if lut and (warning := lut.stale_schedule()):  # once the table fits the search: no warning beside an error
        warn(warning)
    check_outputs(config.force, {"-o": config.output, "--best-out": config.best_out, "--plot": config.plot},
                  inputs=(predictor_path, config.table))
    if config.plot is not None:
        plot_format(config.plot)
    if config.device:  # before minutes of search: a device that cannot be measured, or not against this table
        check_device(config.device, lut)
        check_output(config.artifacts, config.force, folder=True, option="--artifacts")
    net = splits = None
    if config.evaluate:
        net, splits = _evaluation_data(config, pred.space)
    elif config.checkpoint:  # only evaluate uses it; still, a supernet of another space is a mistake
        from qfa_deploy.checkpoint import load_checkpoint

        load_checkpoint(config.checkpoint, expect_space=pred.space)
    return _Inputs(pred, genome, lut, latency, net, splits)


def _evaluation_data(config: SearchConfig, space: str):
    """The supernet and its data splits (missing test data: refused before the search, not after)."""
    from qfa_deploy.checkpoint import load_supernet
    from qfa_deploy.data import load_splits
    from qfa_deploy.reference import default_checkpoint

    net = load_supernet(config.checkpoint or default_checkpoint(), space)
    return net, load_splits(net.space, config.data_dir)


def _write_outputs(result: SearchResult, config: SearchConfig) -> None:
    write_pareto(result, config.output)
    if config.best_out:
        write_best(result, config.best_out)
    if config.plot:
        plot_front(result, config.plot)


def _summary(config: SearchConfig, result: SearchResult, best_rec: dict) -> dict:
    return {
        "space": result.genome.space.name,
        "objective": result.objective.value,
        "constraints": dict(result.constraints.items()),
        "bits": result.settings["bits"],
        "pareto_size": len(result.genomes),
        "seconds": round(result.seconds, 2),
        "evaluations": result.evaluations,
        "best": {k: v for k, v in best_rec.items() if k != "arch"},
        "files": {"pareto": config.output, "best": config.best_out, "plot": config.plot},
    }


def _evaluate_best(config: SearchConfig, inputs: _Inputs, best: ArchConfig, best_rec: dict) -> dict:
    """``end_to_end.evaluate_choice`` of the chosen subnet; with a device, its files go to ``artifacts``."""
    from qfa_deploy.search.end_to_end import evaluate_choice

    predicted = {k: v for k, v in best_rec.items() if k not in ("arch", "digest")}
    staging = staged_directory(config.artifacts, config.force) if config.device else nullcontext()
    with staging as artifact_dir:
        evaluation = evaluate_choice(
            inputs.supernet,
            best,
            inputs.splits,
            predicted,
            calib_batches=config.calib_batches,
            test_limit=config.test_limit,
            device=config.device,
            artifact_dir=artifact_dir,
            schedule=inputs.lut.schedule if inputs.lut else "auto",
        )
    if config.device:
        evaluation["artifact"] = config.artifacts
    return evaluation


def check_outputs(force: bool, outputs: dict[str, str | None], inputs: tuple = ()) -> None:
    """Every file the search will write, checked before it runs (no two the same, none an input)."""
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        where = check_output(path, force, option=option, inputs=inputs)
        if where in seen:
            raise QfaError(f"{option} and {seen[where]} are the same file ({path})")
        seen[where] = option


def check_device(device: str, lut) -> None:
    """``device`` can be measured, and against ``lut`` (same target and statistic) when one is given."""
    from qfa_deploy.deploy.device import load_device
    from qfa_deploy.deploy.runner import open_session

    if lut is not None:  # the same refusal as `lut validate`: other target or statistic = unlike numbers
        from qfa_deploy.lut.validate import check_table_device

        check_table_device(lut, device)
    dev = load_device(device)
    if dev.runner.kind != "local" and dev.runner.kind != "simulated":  # a dead tracker: seconds, not after the search
        open_session(dev, timeout=10.0).close()
