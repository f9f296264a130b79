"""Search: measured accuracy -> accuracy predictor -> NSGA-II under latency / FLOPs / BitOPs budgets.

One idea per module:

- ``genome``: every choice of a subnet as an integer vector (and back to an ArchConfig);
- ``encoding``: one-hot features of genomes for the predictor;
- ``cost``: analytic MACs / BitOPs of many genomes at once (equal to ``metrics.subnet_cost``);
- ``latency``: a latency table's part entries as arrays indexed by genes;
- ``objectives``: what is minimised and the budgets (``Objective``, ``Constraints``);
- ``collect``: measured validation top-1 of sampled subnets, resumable JSON lines;
- ``predictor`` / ``fitting``: the MLP accuracy predictor, its file, its held-out report;
- ``nsga``: NSGA-II (pymoo) over genomes; ``report``: pareto.json, best cfg.json, plot;
- ``end_to_end``: the chosen subnet measured on the test split (and on a device);
- ``run``: ``run_search(SearchConfig)``, all of the above as the ``search`` verb does it.
"""

from qfa_deploy.search.cost import CostModel
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.search.latency import LatencyModel
from qfa_deploy.search.nsga import SearchResult, run_nsga
from qfa_deploy.search.objectives import Constraints, CostEvaluator, Objective
from qfa_deploy.search.predictor import AccuracyPredictor, fit_predictor
from qfa_deploy.search.run import SearchConfig, SearchOutcome, run_search

__all__ = [
    "AccuracyPredictor",
    "Constraints",
    "CostEvaluator",
    "CostModel",
    "GenomeSpace",
    "LatencyModel",
    "Objective",
    "SearchConfig",
    "SearchOutcome",
    "SearchResult",
    "fit_predictor",
    "run_nsga",
    "run_search",
]
