"""search.pymoo_arrays: the array-based NSGA-II plug-ins decide exactly as pymoo's stock ones."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pymoo.algorithms.moo.nsga2 import binary_tournament as pymoo_binary_tournament
from pymoo.core.individual import Individual, calc_cv
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from test_search import SPACE, _table  # tests/ is on sys.path (as for train_helpers)

from qfa_deploy.search.cost import CostModel
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.search.latency import LatencyModel
from qfa_deploy.search.nsga import run_nsga
from qfa_deploy.search.objectives import Constraints, CostEvaluator
from qfa_deploy.search.predictor import fit_predictor
from qfa_deploy.search.pymoo_arrays import FeasibleFirstRankAndCrowding, binary_tournament, constraint_violation

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def predictor():
    g = GenomeSpace(SPACE)
    G = g.random(200, np.random.default_rng(0))
    y = 0.5 + 0.005 * np.log(CostModel(g).bitops(G)) + np.random.default_rng(1).normal(0, 0.002, len(G))
    return fit_predictor(SPACE, G, y, hidden=16, max_epochs=5, seed=0)


def _population(n: int, seed: int, n_constr: int = 1) -> Population:
    """Evaluated individuals with ties on purpose: repeated F rows, equal violations, inf crowding."""
    rng = np.random.default_rng(seed)
    F = rng.integers(0, 6, size=(n, 2)).astype(float)
    G = np.where(rng.random((n, n_constr)) < 0.5, -1.0, rng.integers(1, 4, size=(n, n_constr)).astype(float))
    crowding = rng.choice([0.5, 1.0, np.inf], size=n)
    pop = Population.new("X", rng.random((n, 3)))
    for ind, f, g, c, r in zip(pop, F, G, crowding, rng.integers(0, 3, n), strict=True):
        ind.F, ind.G, ind.H = f, g, np.zeros(0)
        ind.set("crowding", c)
        ind.set("rank", r)
    return pop


def test_constraint_violation_equals_pymoo_calc_cv():
    rng = np.random.default_rng(0)
    for n_ieq, n_eq in [(1, 0), (3, 0), (0, 0), (2, 2), (0, 1)]:
        G, H = rng.normal(size=(40, n_ieq)), rng.normal(size=(40, n_eq)) * 1e-3
        for config in (None, dict(Individual.default_config(), cv_ieq=dict(eps=0.1, scale=2.0, pow=2, func=np.sum))):
            ref = [calc_cv(G=g, H=h, config=config or Individual.default_config()) for g, h in zip(G, H, strict=True)]
            assert np.array_equal(constraint_violation(G, H, 40, config), np.array(ref, dtype=float))


@pytest.mark.parametrize("seed", range(5))
def test_binary_tournament_equals_pymoo(seed):
    pop = _population(60, seed)
    P = np.random.default_rng(seed + 100).integers(0, len(pop), size=(200, 2))
    runs = []
    for fn in (pymoo_binary_tournament, binary_tournament):
        rng = np.random.default_rng(seed)
        algorithm = SimpleNamespace(tournament_type="comp_by_dom_and_crowding", random_state=rng)
        runs.append((fn(pop, P, algorithm), rng.random()))  # same winners, same draws consumed
    (stock, stock_next), (ours, ours_next) = runs
    assert np.array_equal(stock, ours)
    assert stock_next == ours_next


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_survive", [10, 30, 55])
def test_feasible_first_survival_equals_pymoo(seed, n_survive):
    problem = Problem(n_var=3, n_obj=2, n_ieq_constr=1, xl=0.0, xu=1.0)
    pop = _population(60, seed)
    survive = lambda survival: survival.do(  # noqa: E731
        problem, pop, n_survive=n_survive, random_state=np.random.default_rng(seed)
    )
    stock = survive(RankAndCrowding())
    marks = [(ind.get("rank"), ind.get("crowding")) for ind in pop]  # as pymoo set them
    ours = survive(FeasibleFirstRankAndCrowding())
    assert [id(i) for i in stock] == [id(i) for i in ours]
    assert marks == [(ind.get("rank"), ind.get("crowding")) for ind in pop]


@pytest.mark.parametrize(
    ("objective", "budget"),
    [
        ("latency", lambda low: Constraints(max_latency_ms=low["latency_ms"] * 1.3)),  # mostly infeasible at first
        ("flops", lambda low: Constraints(max_latency_ms=low["latency_ms"] * 1.5, max_gbitops=low["gbitops"] * 3)),
        ("bitops", lambda low: None),
    ],
)
def test_search_with_array_plugins_equals_pymoo_stock_search(predictor, objective, budget):
    g = GenomeSpace(SPACE)
    costs = CostEvaluator(g, LatencyModel(_table(False), g))
    constraints = budget(costs.lower_bounds())
    runs = [
        run_nsga(g, predictor, costs, objective, constraints, pop_size=40, generations=12, seed=1, pymoo_stock=stock)
        for stock in (True, False)
    ]
    stock, ours = runs
    for field in ("population", "population_predicted", "population_cost", "population_feasible", "genomes"):
        assert np.array_equal(getattr(stock, field), getattr(ours, field)), field
