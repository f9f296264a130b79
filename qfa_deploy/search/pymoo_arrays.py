"""pymoo NSGA-II plug-ins that read and write a population's values as arrays, once per generation.

pymoo 0.6 keeps a population as an array of ``Individual`` objects. Its stock evaluator, binary
tournament and feasibility split reach every individual through ``Individual.get`` (``hasattr``
then ``getattr``, so each property getter runs twice) and compute each constraint violation
lazily with ``calc_cv``; at 500 x 1000 that was about a third of the search's CPU time. The
replacements below plug into NSGA2's own extension points (``evaluator=``,
``TournamentSelection(func_comp=)``, ``survival=``, and ``_set_optimum`` in a subclass) and take
the same decisions with the same random draws as pymoo's versions: tests compare each with pymoo's
and whole searches bit for bit. Non-dominated sorting, crowding distances, SBX, PM, mating and the
generation loop remain pymoo's.
"""

from __future__ import annotations

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.moo.nsga2 import binary_tournament as pymoo_binary_tournament
from pymoo.core.evaluator import Evaluator
from pymoo.core.individual import Individual
from pymoo.core.population import Population
from pymoo.operators.selection.tournament import TournamentSelection
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

__all__ = ["ArrayEvaluator", "FeasibleFirstRankAndCrowding", "NSGA2Arrays", "binary_tournament", "constraint_violation"]


def _cv_part(C: np.ndarray, eps: float = 0.0, scale=None, pow=None, func=np.sum) -> np.ndarray:
    """``individual.constr_to_cv`` applied to every row of ``C`` at once."""
    if C.shape[1] == 0:
        return np.zeros(len(C))
    C = np.maximum(0.0, C - eps)
    if scale is not None:
        C = C / scale
    if pow is not None:
        C = C**pow
    return np.asarray(func(C, axis=1), dtype=np.float64)


def constraint_violation(G: np.ndarray | None, H: np.ndarray | None, n: int, config: dict | None = None) -> np.ndarray:
    """(n,) constraint violations of a population, as ``individual.calc_cv`` gives per individual."""
    config = config or Individual.default_config()
    empty = np.zeros((n, 0))
    G = empty if G is None else np.asarray(G, dtype=np.float64).reshape(n, -1)
    H = empty if H is None else np.asarray(H, dtype=np.float64).reshape(n, -1)
    return _cv_part(G, **config["cv_ieq"]) + _cv_part(np.abs(H), **config["cv_eq"])


_CV_EPS = Individual.default_config()["cv_eps"]  # the feasibility threshold of Individual.FEAS


def _cv(pop) -> np.ndarray:
    # Direct property reads: the violation was cached on each individual by ArrayEvaluator.
    return np.array([ind.CV[0] for ind in pop], dtype=np.float64)


class ArrayEvaluator(Evaluator):
    """pymoo's Evaluator, but the constraint violation is computed for the whole matrix.

    The stock one leaves ``CV`` to be computed per individual, on first read, by ``calc_cv``.
    """

    def _eval(self, problem, pop, evaluate_values_of, **kwargs):
        X = np.array([ind.X for ind in pop])
        out = problem.evaluate(X, return_values_of=evaluate_values_of, return_as_dictionary=True, **kwargs)
        cv = constraint_violation(out.get("G"), out.get("H"), len(pop))
        # Rows are views of these fresh per-generation matrices (F, G, H, CV: a few floats per
        # individual, so what survivors keep alive is small) - Population.set copies each row.
        # Each goes where Individual.set would put it (property or data), without its hasattr probe.
        columns = [(k, list(v), hasattr(Individual, k)) for k, v in out.items() if v is not None]
        cv_rows = list(cv[:, None])
        keys = set(out)
        for i, ind in enumerate(pop):
            for k, rows, attribute in columns:
                if attribute:
                    setattr(ind, k, rows[i])
                else:
                    ind.data[k] = rows[i]
            ind.CV = cv_rows[i]
            ind.evaluated.update(keys)


def _tie_break(S: np.ndarray, P: np.ndarray, ties: np.ndarray, random_state) -> None:
    # In tournament order, one draw per tie, exactly as pymoo's compare(return_random_if_equal=True).
    for i in np.flatnonzero(ties):
        S[i] = random_state.choice([P[i, 0], P[i, 1]])


def binary_tournament(pop, P, algorithm, **kwargs):
    """pymoo's NSGA-II ``binary_tournament`` (``comp_by_dom_and_crowding``) over arrays."""
    if P.shape[1] != 2 or algorithm.tournament_type != "comp_by_dom_and_crowding":
        return pymoo_binary_tournament(pop, P, algorithm, **kwargs)
    # Only the contestants are read (mating is repeated for a few offspring after duplicates).
    ids, where = np.unique(P, return_inverse=True)
    where = where.reshape(P.shape)
    inds = [pop[i] for i in ids]
    cv = _cv(inds)
    F = np.array([ind.F for ind in inds], dtype=np.float64)
    crowding = np.array([np.nan if (c := ind.data.get("crowding")) is None else c for ind in inds], dtype=np.float64)
    a, b = where[:, 0], where[:, 1]
    S = np.full(len(P), -1, dtype=np.int64)
    # At least one infeasible: the smaller violation wins.
    infeasible = (cv[a] > 0.0) | (cv[b] > 0.0)
    S = np.where(infeasible & (cv[a] < cv[b]), P[:, 0], S)
    S = np.where(infeasible & (cv[a] > cv[b]), P[:, 1], S)
    # Both feasible: domination (Dominator.get_relation), then the larger crowding distance.
    a_better = (F[a] < F[b]).any(1)
    b_better = (F[b] < F[a]).any(1)
    feasible = ~infeasible
    S = np.where(feasible & a_better & ~b_better, P[:, 0], S)
    S = np.where(feasible & b_better & ~a_better, P[:, 1], S)
    open_ = feasible & (S < 0)
    S = np.where(open_ & (crowding[a] > crowding[b]), P[:, 0], S)
    S = np.where(open_ & (crowding[a] < crowding[b]), P[:, 1], S)
    _tie_break(S, P, S < 0, algorithm.random_state)
    return S[:, None]


class FeasibleFirstRankAndCrowding(RankAndCrowding):
    """RankAndCrowding with pymoo's feasible-first split (``split_by_feasibility``) done on arrays.

    Same rule as ``Survival.do``: rank and crowding among the feasible individuals, then fill up
    with the infeasible ones by increasing violation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.filter_infeasible = False  # Survival.do's per-individual split is replaced by _do's

    def _do(self, problem, pop, *args, n_survive=None, random_state=None, **kwargs):
        if not problem.has_constraints():
            return super()._do(problem, pop, *args, n_survive=n_survive, random_state=random_state, **kwargs)
        cv = _cv(pop)
        ok = cv <= _CV_EPS
        feasible, infeasible = np.where(ok)[0], np.where(~ok)[0]
        infeasible = infeasible[np.argsort(cv[infeasible])]
        survivors = Population()
        if len(feasible):
            survivors = super()._do(
                problem,
                pop[feasible],
                *args,
                n_survive=min(len(feasible), n_survive),
                random_state=random_state,
                **kwargs,
            )
        n_remaining = n_survive - len(survivors)
        if n_remaining > 0:
            survivors = Population.merge(survivors, pop[infeasible[:n_remaining]])
        return survivors


class NSGA2Arrays(NSGA2):
    """pymoo's NSGA2 with the array-based evaluator, tournament and survival above.

    ``_set_optimum`` (the current optimum ``opt``, kept after each generation) is pymoo's too, with
    violation and rank read directly instead of through ``Population.get``.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("selection", TournamentSelection(func_comp=binary_tournament))
        kwargs.setdefault("survival", FeasibleFirstRankAndCrowding())
        kwargs.setdefault("evaluator", ArrayEvaluator())
        super().__init__(**kwargs)

    def _set_optimum(self, **kwargs):
        cv = _cv(self.pop)
        if not (cv <= _CV_EPS).any():
            self.opt = self.pop[[np.argmin(cv)]]
        else:
            self.opt = self.pop[np.array([ind.data.get("rank") for ind in self.pop]) == 0]
