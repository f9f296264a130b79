"""NSGA-II (pymoo) over genomes: maximise predicted accuracy, minimise latency / MACs / BitOPs.

Variables are the genome's integer genes, varied with SBX crossover and polynomial mutation then
rounded; a repair step makes every genome canonical (inactive blocks' genes to 0) so that equal
subnets are equal vectors and duplicates are dropped by a hash of the row. With a latency table the
resolution gene is pinned to the table's resolution. Budgets are pymoo inequality constraints
(``cost - bound <= 0``), so every returned Pareto member satisfies all of them. Objectives are
evaluated for the whole offspring matrix at once (one predictor forward, array lookups for costs),
and pymoo's per-generation bookkeeping reads them as arrays (``search.pymoo_arrays``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.optimize import minimize
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from qfa_deploy.arch import ArchConfig
from qfa_deploy.errors import QfaError
from qfa_deploy.search.genome import BIT_GENES, GenomeSpace
from qfa_deploy.search.objectives import Constraints, CostEvaluator, Objective
from qfa_deploy.search.pymoo_arrays import NSGA2Arrays

__all__ = ["SearchResult", "run_nsga"]

log = logging.getLogger(__name__)


class _CanonicalRepair(Repair):
    """Round to the nearest choice index, clip to bounds, reset inactive blocks' genes.

    Returns float64 (whole numbers): the type SBX and PM work in, so pymoo converts nothing.
    """

    def __init__(self, genome: GenomeSpace) -> None:
        super().__init__()
        self.genome = genome

    def _do(self, problem, X, **kwargs):
        X = np.clip(np.rint(np.asarray(X, dtype=np.float64)), problem.xl, problem.xu).astype(np.int64)
        return self.genome.canonical(X).astype(np.float64)

    def do(self, problem, pop, **kwargs):
        # Repair.do, with each row assigned directly rather than through Population.set's probes.
        X = self._do(problem, np.array([ind.X for ind in pop]), **kwargs)
        for ind, x in zip(pop, X, strict=True):
            ind.X = x.copy()  # a copy, as Population.set makes: a row view would pin the whole matrix
        return pop


def _row_key(ind) -> bytes:
    """The bytes of an individual's genome as float64, cached on it (valid while its X is the same).

    float64 is the type X has after the repair, so no copy is made; other types convert exactly.
    """
    cached = ind.data.get("qfa_row_key")
    if cached is not None and cached[0] is ind.X:
        return cached[1]
    key = np.asarray(ind.X, dtype=np.float64).tobytes()
    ind.data["qfa_row_key"] = (ind.X, key)
    return key


def _row_keys(pop) -> list[bytes]:
    # Direct attribute access: much cheaper than Population.get for large populations.
    return [_row_key(ind) for ind in pop]


class _RowDuplicates(DuplicateElimination):
    """Exact duplicates by the bytes of each (integer) row: linear time, unlike pairwise distances."""

    def do(self, pop, *args, return_indices=False, to_itself=True):
        # One pass for all of DuplicateElimination.do's filters (itself, then each population in
        # args): a row is kept iff it is in no arg and, with to_itself, is its first occurrence.
        if return_indices or len(pop) == 0:
            return super().do(pop, *args, return_indices=return_indices, to_itself=to_itself)
        seen = {k for other in args for k in _row_keys(other)}
        keep = []
        for i, k in enumerate(_row_keys(pop)):
            if k not in seen:
                keep.append(i)
                if to_itself:
                    seen.add(k)
        return pop[keep]

    def _do(self, pop, other, is_duplicate):
        seen = set(_row_keys(other)) if other is not None else set()
        for i, k in enumerate(_row_keys(pop)):
            if k in seen:
                is_duplicate[i] = True
            else:
                seen.add(k)
        return is_duplicate


class _SubnetProblem(Problem):
    def __init__(self, genome, predictor, costs, objective, constraints, xl, xu) -> None:
        super().__init__(n_var=genome.length, n_obj=2, n_ieq_constr=len(constraints.items()), xl=xl, xu=xu, vtype=int)
        self.genome, self.predictor, self.costs = genome, predictor, costs
        self.objective, self.constraints = objective, constraints
        self.needed = {objective.metric} | {m for m, _ in constraints.items()}
        self.evaluations = 0

    def _evaluate(self, X, out, *args, **kwargs):
        G = np.asarray(X, dtype=np.int64)
        self.evaluations += len(G)
        acc = self.predictor.predict_genomes(G)
        cost = self.costs.evaluate(G, only=self.needed)
        out["F"] = np.stack([-acc, cost[self.objective.metric]], axis=1)
        if self.n_ieq_constr:
            out["G"] = np.stack([cost[m] - bound for m, bound in self.constraints.items()], axis=1)


@dataclass
class SearchResult:
    """The feasible Pareto front (sorted by cost) and the final population."""

    genome: GenomeSpace
    objective: Objective
    constraints: Constraints
    genomes: np.ndarray  # (k, length) Pareto members, canonical, by increasing cost
    predicted: np.ndarray  # (k,) predicted top-1
    costs: dict[str, np.ndarray]  # metric -> (k,)
    population: np.ndarray  # final population genomes
    population_predicted: np.ndarray
    population_cost: np.ndarray  # the objective metric of the final population
    population_feasible: np.ndarray
    seconds: float
    evaluations: int
    settings: dict = field(default_factory=dict)

    def configs(self) -> list[ArchConfig]:
        return self.genome.decode_all(self.genomes)

    def best_index(self) -> int:
        """The Pareto member with the highest predicted accuracy (all satisfy the budgets)."""
        return int(np.argmax(self.predicted))

    def records(self) -> list[dict]:
        """pareto.json: one object per Pareto member, cheapest first."""
        out = []
        for i, cfg in enumerate(self.configs()):
            rec = {"arch": cfg.to_dict(), "digest": cfg.digest(), "predicted_top1": float(self.predicted[i])}
            rec.update({m: float(v[i]) for m, v in self.costs.items()})
            out.append(rec)
        return out


def run_nsga(
    genome: GenomeSpace,
    predictor,
    costs: CostEvaluator,
    objective: Objective | str = Objective.FLOPS,
    constraints: Constraints | None = None,
    pop_size: int = 100,
    generations: int = 100,
    seed: int = 0,
    *,
    bits: int | None = None,
    pymoo_stock: bool = False,
) -> SearchResult:
    """Run NSGA-II; raise a one-line QfaError if no subnet meets the budgets.

    ``bits``: every conv's weights and activations at this width only (a uniform-bit search, the
    baseline a mixed-bit one is measured against); default: every bit choice of every conv.

    ``pymoo_stock``: pymoo's own per-individual evaluator, tournament and survival instead of the
    array-based ones of ``search.pymoo_arrays`` - same result, slower; tests compare the two.
    """
    objective = Objective(objective)
    constraints = constraints or Constraints()
    _check_problem(genome, predictor, costs, objective, constraints, pop_size, generations)
    xl, xu = _bounds(genome, costs, bits)
    init = _initial_population(genome, xl, xu, pop_size, seed)
    problem = _SubnetProblem(genome, predictor, costs, objective, constraints, xl, xu)
    algorithm = _algorithm(genome, init, pymoo_stock)
    start = time.perf_counter()
    res = minimize(problem, algorithm, ("n_gen", generations), seed=seed, verbose=False)
    seconds = time.perf_counter() - start
    X = np.asarray(res.pop.get("X"), dtype=np.int64)
    F = np.asarray(res.pop.get("F"))
    cv = np.asarray(res.pop.get("CV")).reshape(-1)
    feasible = cv <= 0
    if not feasible.any():
        _raise_infeasible(X, cv, costs, constraints)
    front, predicted = _feasible_front(X[feasible], F[feasible])
    return SearchResult(
        genome=genome,
        objective=objective,
        constraints=constraints,
        genomes=front,
        predicted=predicted,
        costs=costs.evaluate(front),
        population=X,
        population_predicted=-F[:, 0],
        population_cost=F[:, 1],
        population_feasible=feasible,
        seconds=seconds,
        evaluations=problem.evaluations,
        settings={
            "pop": pop_size,
            "gen": generations,
            "seed": seed,
            "objective": objective.value,
            "constraints": {m: b for m, b in constraints.items()},
            "bits": bits if bits is not None else "mixed",
        },
    )


def _check_problem(genome, predictor, costs, objective, constraints, pop_size, generations) -> None:
    """Refuse a search that cannot run: another space's predictor, latency without a table, no budget met."""
    if predictor.space != genome.space.name:
        raise QfaError(f"predictor is for space {predictor.space!r}, the search is over {genome.space.name!r}")
    if objective is Objective.LATENCY and costs.latency is None:
        raise QfaError("--objective latency needs a latency table (--table)")
    if pop_size < 2 or generations < 1:
        raise QfaError("--pop must be at least 2 and --gen at least 1")
    costs.check_feasible(constraints)


def _bounds(genome: GenomeSpace, costs: CostEvaluator, bits: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive gene bounds; with a latency table the resolution gene is pinned to the table's, with
    ``bits`` every bit gene to that width."""
    xl = np.zeros(genome.length, dtype=np.int64)
    xu = genome.sizes - 1
    if costs.latency is not None:
        xl[0] = xu[0] = costs.latency.resolution_index
    for name in BIT_GENES if bits is not None else ():
        genes = genome.slices.get(name)
        if genes is None:
            continue
        choices = genome.choices[genes.start]
        if bits not in choices:
            raise QfaError(f"--bits must be one of {', '.join(map(str, choices))} in space {genome.space.name}, "
                           f"not {bits}")
        xl[genes] = xu[genes] = choices.index(bits)
    return xl, xu


def _initial_population(genome: GenomeSpace, xl: np.ndarray, xu: np.ndarray, pop_size: int, seed: int) -> np.ndarray:
    """Seeded random genomes, the first two replaced by the smallest and largest subnets; canonical."""
    rng = np.random.default_rng(seed)
    init = rng.integers(xl, xu + 1, size=(pop_size, genome.length))
    anchors = genome.encode([ArchConfig.smallest(genome.space.name), ArchConfig.largest(genome.space.name)])
    anchors = np.clip(anchors, xl, xu)
    init[: min(2, pop_size)] = anchors[: min(2, pop_size)]
    return genome.canonical(init)


def _algorithm(genome: GenomeSpace, init: np.ndarray, pymoo_stock: bool):
    """NSGA-II with integer-friendly operators, the canonical repair and row-hash duplicate removal."""
    return (NSGA2 if pymoo_stock else NSGA2Arrays)(
        pop_size=len(init),
        sampling=init.astype(np.float64),
        # Wide distributions (eta 3, pymoo's recipe for integer variables): with 3 choices a gene,
        # narrow ones mostly round back to the parent's value (measured: lower hypervolume).
        # No vtype: the repair keeps X float (integral values), which saves pymoo a per-individual
        # astype after every operator.
        crossover=SBX(prob=0.9, eta=3),
        mutation=PM(prob=1.0, eta=3),
        repair=_CanonicalRepair(genome),
        eliminate_duplicates=_RowDuplicates(),
    )


def _raise_infeasible(X: np.ndarray, cv: np.ndarray, costs: CostEvaluator, constraints: Constraints) -> None:
    """No final individual meets the budgets: name the costs of the least violating one."""
    worst = min(zip(cv, range(len(X)), strict=True))[1]
    got = costs.evaluate(X[worst : worst + 1], only={m for m, _ in constraints.items()})
    near = ", ".join(f"{m} {v[0]:.4g}" for m, v in got.items())
    raise QfaError(f"no subnet found within the budget ({constraints.describe()}); closest: {near}")


def _feasible_front(fx: np.ndarray, ff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(genomes, predicted top-1) of the non-dominated feasible members, deduplicated, by increasing cost."""
    front = NonDominatedSorting().do(ff, only_non_dominated_front=True)
    fx, ff = fx[front], ff[front]
    _, unique = np.unique(fx, axis=0, return_index=True)
    order = unique[np.lexsort((ff[unique, 0], ff[unique, 1]))]
    return fx[order], -ff[order, 0]
