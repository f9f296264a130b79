"""Accuracy predictor: an MLP (or a small ensemble of them) on one-hot genome features, or a ridge
regression on summary features.

``model="mlp"`` is the seed's: the input is a one-hot encoding of every choice (``search.encoding``)
and the model an MLP with 3 hidden layers of 400 units, trained with Adam on measured (subnet,
top-1) pairs. Two additions: the log MACs and log BitOPs of the subnet as two extra standardised
inputs (on by default: nearly free, the search computes them anyway), and optionally an ensemble of
members (different initialisation and early-stopping split) whose mean is the prediction
(``ensemble=1`` by default: every member multiplies the predictor's share of the search time). Each
member stops early on a held-out part of the training data.

``model="ridge"`` is for few measured subnets (hundreds, what a small machine collects): a linear
model on ~30 standardised summary features (``search.summary_features``), fitted in closed form with
its L2 penalty chosen by 5-fold cross-validation on the training data. On the embedded predictor's
183 CIFAR-10 subnets it ranks the held-out ones better than the MLP and than MACs alone
(docs/search.md). It is stored as an MLP without hidden layers.

File format (``torch.save`` of plain data, read back with ``weights_only=True``)::

    {"format": "qfa-predictor", "version": 2, "space": ..., "features": "onehot" | "summary",
     "hidden": 400, "layers": 3 (0 and 0 for ridge), "cost_features": True,
     "feature_mean": tensor, "feature_std": tensor (the cost columns for "onehot", every column for
     "summary"), "target_mean": float, "target_std": float, "members": [{param name: tensor}, ...],
     "info": {...}}

Version 1 files (before "features") are one-hot MLPs and still load.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qfa_deploy.arch import ArchConfig
from qfa_deploy.checkpoint import atomic_write_bytes
from qfa_deploy.errors import QfaError
from qfa_deploy.search.cost import CostModel
from qfa_deploy.search.encoding import OneHotEncoder
from qfa_deploy.search.genome import GenomeSpace
from qfa_deploy.search.summary_features import SummaryEncoder
from qfa_deploy.strict_json import check_number, check_type

__all__ = ["MODELS", "PREDICTOR_VERSION", "AccuracyPredictor", "fit_predictor", "regression_metrics"]

log = logging.getLogger(__name__)
PREDICTOR_FORMAT = "qfa-predictor"
PREDICTOR_VERSION = 2
_READS = (1, PREDICTOR_VERSION)  # version 1: one-hot MLPs, no "features" key
MODELS = ("mlp", "ridge")
FEATURES = {"mlp": "onehot", "ridge": "summary"}  # each model's encoder (the file records the features)
RIDGE_PENALTIES = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)  # the grid the cross-validation picks from
RIDGE_FOLDS = 5


def _mlp(in_features: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden ReLU layers of ``hidden`` units, then one output (no hidden layer: linear)."""
    mods: list[nn.Module] = []
    width = in_features
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, 1))
    return nn.Sequential(*mods)


class AccuracyPredictor:
    """Predicted top-1 (a fraction) of genomes / configs of one search space."""

    def __init__(
        self,
        space: str,
        members: Sequence[nn.Module],
        *,
        features: str = "onehot",
        hidden: int,
        layers: int,
        cost_features: bool,
        feature_mean: np.ndarray,
        feature_std: np.ndarray,
        target_mean: float,
        target_std: float,
        info: dict | None = None,
    ) -> None:
        self.genome = GenomeSpace(space)
        self.features_kind = features
        self.encoder = _encoder(features, self.genome)
        self.cost = CostModel(self.genome)
        self.members = [m.eval() for m in members]
        self.hidden, self.layers, self.cost_features = hidden, layers, cost_features
        self.feature_mean = np.asarray(feature_mean, dtype=np.float32)
        self.feature_std = np.asarray(feature_std, dtype=np.float32)
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.info = dict(info or {})

    @property
    def space(self) -> str:
        return self.genome.space.name

    # -- inference -------------------------------------------------------------------------------

    @property
    def model(self) -> str:
        """"mlp" or "ridge" (``MODELS``), told by the features it reads."""
        return next(model for model, features in FEATURES.items() if features == self.features_kind)

    def features(self, G: np.ndarray) -> np.ndarray:
        if self.features_kind == "summary":
            return (self.encoder(G) - self.feature_mean) / self.feature_std
        return _features(self.encoder, self.cost, G, self.cost_features, self.feature_mean, self.feature_std)

    @torch.inference_mode()
    def predict_genomes(self, G: np.ndarray) -> np.ndarray:
        """Predicted top-1 of every genome row (float64)."""
        x = torch.from_numpy(self.features(G))
        out = torch.stack([m(x)[:, 0] for m in self.members]).mean(0)
        return out.double().numpy() * self.target_std + self.target_mean

    def predict(self, cfgs: Sequence[ArchConfig]) -> np.ndarray:
        return self.predict_genomes(self.genome.encode(cfgs))

    # -- files -----------------------------------------------------------------------------------

    def to_payload(self) -> dict:
        return {
            "format": PREDICTOR_FORMAT,
            "version": PREDICTOR_VERSION,
            "space": self.space,
            "features": self.features_kind,
            "hidden": self.hidden,
            "layers": self.layers,
            "cost_features": self.cost_features,
            "feature_mean": torch.from_numpy(self.feature_mean.copy()),
            "feature_std": torch.from_numpy(self.feature_std.copy()),
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "members": [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.members],
            "info": self.info,
        }

    def save(self, path: str | Path) -> None:
        payload = self.to_payload()
        try:
            atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))
        except OSError as exc:
            raise QfaError(f"cannot write {path}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: str | Path, expect_space: str | None = None) -> AccuracyPredictor:
        """Read a predictor file; every problem is a one-line QfaError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise QfaError(f"{path}: no such predictor file")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for corrupt / foreign files
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else exc.__class__.__name__
            raise QfaError(f"{path}: not a readable predictor file ({reason})") from None
        if not isinstance(payload, dict) or payload.get("format") != PREDICTOR_FORMAT:
            raise QfaError(f"{path}: not a qfa-deploy accuracy predictor")
        if payload.get("version") not in _READS:
            raise QfaError(
                f"{path}: predictor format version {payload.get('version')!r}, this tool reads "
                + " and ".join(map(str, _READS))
            )
        space = payload.get("space")
        if expect_space is not None and space != expect_space:
            raise QfaError(f"{path}: predictor is for space {space!r}, expected {expect_space!r}")
        try:
            _check_finite(payload)
            genome = GenomeSpace(space)
            features = payload["features"] if payload["version"] > 1 else "onehot"
            in_features = _encoder(features, genome).num_features
            if features == "onehot":
                in_features += 2 if payload["cost_features"] else 0
            # the normalisation: of every summary feature, or of the 2 cost columns of one-hot inputs
            _check_normalisation(payload, in_features if features == "summary" else 2)
            members = []
            for state in payload["members"]:
                m = _mlp(in_features, int(payload["hidden"]), int(payload["layers"]))
                m.load_state_dict(state)
                members.append(m)
            if not members:
                raise ValueError("no members")
            return cls(
                space,
                members,
                features=features,
                hidden=int(payload["hidden"]),
                layers=int(payload["layers"]),
                cost_features=bool(payload["cost_features"]),
                feature_mean=payload["feature_mean"].numpy(),
                feature_std=payload["feature_std"].numpy(),
                target_mean=float(payload["target_mean"]),
                target_std=float(payload["target_std"]),
                info=dict(payload.get("info") or {}),
            )
        except QfaError as exc:
            raise QfaError(f"{path}: {exc}") from None
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else exc.__class__.__name__
            raise QfaError(f"{path}: malformed predictor file ({reason})") from None


MAX_WEIGHT = 1e6  # of normalised inputs and targets: a fit is orders of magnitude below it


def _check_finite(payload: dict) -> None:
    """Sizes bounded, every weight and statistic finite: a NaN predictor would rank subnets by nothing."""
    check_number(payload["hidden"], "hidden", low=0, high=65536, integer=True)
    check_number(payload["layers"], "layers", low=0, high=64, integer=True)
    # top-1 as a fraction or a percentage: a mean beyond it or a std of 0 or less is no fitted predictor
    check_number(payload["target_mean"], "target_mean", low=-1000, high=1000)
    check_number(payload["target_std"], "target_std", low=1e-9, high=1000)
    check_type(payload["cost_features"], bool, "cost_features")
    named = [("feature_mean", payload["feature_mean"]), ("feature_std", payload["feature_std"])]
    named += [(f"members[{i}].{k}", t) for i, m in enumerate(payload["members"]) for k, t in m.items()]
    for name, t in named:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise QfaError(f"{name} holds non-finite values")
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and t.abs().max() > MAX_WEIGHT:
            raise QfaError(f"{name} holds values beyond {MAX_WEIGHT:g}: not a fitted predictor")


def _check_normalisation(payload: dict, width: int) -> None:
    for key in ("feature_mean", "feature_std"):
        t = payload[key]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (width,):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise QfaError(f"{key} has shape {shape}, expected ({width},)")
    if not bool((payload["feature_std"] > 0).all()):
        raise QfaError("feature_std holds values <= 0")


def _encoder(features: str, genome: GenomeSpace):
    """The genome encoder of a predictor's ``features`` kind (one line on an unknown kind)."""
    if features == "onehot":
        return OneHotEncoder(genome)
    if features == "summary":
        return SummaryEncoder(genome)
    raise QfaError(f"unknown predictor features {features!r} (one of: onehot, summary)")


def _cost_columns(cost: CostModel, G: np.ndarray) -> np.ndarray:
    return np.stack([np.log(cost.macs(G).astype(np.float64)), np.log(cost.bitops(G))], 1).astype(np.float32)


def _features(encoder, cost, G, cost_features, mean, std) -> np.ndarray:
    X = encoder(G)
    if not cost_features:
        return X
    return np.concatenate([X, (_cost_columns(cost, G) - mean) / std], 1)


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """Spearman and Kendall rank correlation, RMSE and MAE (in top-1 points, i.e. x100)."""
    from scipy.stats import kendalltau, spearmanr

    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    err = pred - target
    constant = len(target) < 2 or np.ptp(target) == 0 or np.ptp(pred) == 0
    return {
        "n": int(len(target)),
        "spearman": float("nan") if constant else float(spearmanr(pred, target).statistic),
        "kendall": float("nan") if constant else float(kendalltau(pred, target).statistic),
        "rmse_points": float(100 * math.sqrt(np.mean(err**2))),
        "mae_points": float(100 * np.mean(np.abs(err))),
    }


def _train_member(
    X: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    hidden: int,
    layers: int,
    lr: float,
    weight_decay: float,
    max_epochs: int,
    patience: int,
    val_fraction: float,
    batch_size: int,
) -> tuple[nn.Module, int, float]:
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    n_val = max(1, int(round(val_fraction * len(y)))) if len(y) > 4 else 0
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.float32))
    torch.manual_seed(seed)
    model = _mlp(X.shape[1], hidden, layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, best_epoch, bad = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(max_epochs):
        model.train()
        order = tr_idx[torch.randperm(len(tr_idx), generator=gen)]
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = nn.functional.mse_loss(model(Xt[idx])[:, 0], yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if n_val == 0:
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
            continue
        model.eval()
        with torch.no_grad():
            val = nn.functional.mse_loss(model(Xt[val_idx])[:, 0], yt[val_idx]).item()
        if val < best - 1e-6:
            best, best_state, best_epoch, bad = val, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= patience:
                break
    model.load_state_dict(best_state)
    return model.eval(), best_epoch, best


def fit_predictor(
    space: str,
    G: np.ndarray,
    y: np.ndarray,
    *,
    model: str = "mlp",
    seed: int = 0,
    ensemble: int = 1,
    cost_features: bool = True,
    hidden: int = 400,
    layers: int = 3,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    max_epochs: int = 400,
    patience: int = 40,
    val_fraction: float = 0.15,
    batch_size: int = 128,
    info: dict | None = None,
) -> AccuracyPredictor:
    """Train a predictor (``model``: "mlp" or "ridge", see the module) on genomes ``G`` (n, length) and
    top-1 fractions ``y`` (n,). ``ridge`` ignores the MLP's arguments (ensemble, hidden, layers, ...)."""
    if model not in MODELS:
        raise QfaError(f"unknown predictor model {model!r} (one of: {', '.join(MODELS)})")
    genome = GenomeSpace(space)
    G, y = _checked_training_data(genome, G, y, ensemble)
    if model == "ridge":
        return _fit_ridge(genome, G, y, seed, info)
    X, mean, std = _standardised_features(genome, G, cost_features)
    t_mean, t_std = float(y.mean()), float(y.std()) or 1.0
    yn = (y - t_mean) / t_std
    members, epochs = [], []
    for k in range(ensemble):
        member, epoch, _ = _train_member(
            X,
            yn,
            seed=seed * 1000 + k,
            hidden=hidden,
            layers=layers,
            lr=lr,
            weight_decay=weight_decay,
            max_epochs=max_epochs,
            patience=patience,
            val_fraction=val_fraction,
            batch_size=batch_size,
        )
        log.info("predictor member %d: best epoch %d", k, epoch)
        members.append(member)
        epochs.append(epoch)
    meta = {"n_train": int(len(y)), "ensemble": ensemble, "best_epochs": epochs, "seed": seed, **(info or {})}
    return AccuracyPredictor(
        space,
        members,
        hidden=hidden,
        layers=layers,
        cost_features=cost_features,
        feature_mean=mean,
        feature_std=std,
        target_mean=t_mean,
        target_std=t_std,
        info=meta,
    )


def _checked_training_data(genome: GenomeSpace, G, y, ensemble: int) -> tuple[np.ndarray, np.ndarray]:
    """(canonical int64 genomes, float64 targets), refused when they cannot train ``ensemble`` members."""
    G = np.asarray(G, dtype=np.int64)
    genome.check(G)
    G = genome.canonical(G)
    y = np.asarray(y, dtype=np.float64)
    if len(y) != len(G):
        raise QfaError(f"{len(G)} genomes but {len(y)} targets")
    if len(y) < 2:
        raise QfaError(f"need at least 2 measured subnets to fit a predictor, got {len(y)}")
    if ensemble < 1:
        raise QfaError("ensemble must be at least 1")
    return G, y


def _standardised_features(genome: GenomeSpace, G: np.ndarray, cost_features: bool):
    """(features, cost-column mean, cost-column std): the mean and std are fitted here and stored."""
    encoder, cost = OneHotEncoder(genome), CostModel(genome)
    if cost_features:
        cols = _cost_columns(cost, G)
        mean, std = cols.mean(0), cols.std(0) + 1e-6
    else:
        mean = std = np.zeros(0, dtype=np.float32)
    return _features(encoder, cost, G, cost_features, mean, std), mean, std


def _fit_ridge(genome: GenomeSpace, G: np.ndarray, y: np.ndarray, seed: int, info: dict | None) -> AccuracyPredictor:
    """Ridge regression on the standardised summary features, its penalty the one of ``RIDGE_PENALTIES``
    with the least squared error over ``RIDGE_FOLDS`` seeded folds of the training data."""
    X = SummaryEncoder(genome)(G).astype(np.float64)
    mean, std = X.mean(0), X.std(0) + 1e-6
    Z = (X - mean) / std
    t_mean, t_std = float(y.mean()), float(y.std()) or 1.0
    yn = (y - t_mean) / t_std
    folds = np.array_split(np.random.default_rng(seed).permutation(len(y)), min(RIDGE_FOLDS, len(y)))

    def cv_error(penalty: float) -> float:
        error = 0.0
        for held in folds:
            train = np.setdiff1d(np.arange(len(y)), held)
            weights, bias = _ridge(Z[train], yn[train], penalty)
            error += float(np.sum((Z[held] @ weights + bias - yn[held]) ** 2))
        return error

    penalty = min(RIDGE_PENALTIES, key=cv_error)
    weights, bias = _ridge(Z, yn, penalty)
    linear = _mlp(Z.shape[1], 0, 0)
    with torch.no_grad():
        linear[0].weight.copy_(torch.from_numpy(weights[None, :].astype(np.float32)))
        linear[0].bias.fill_(bias)
    meta = {"n_train": int(len(y)), "ensemble": 1, "seed": seed, "ridge_penalty": penalty, **(info or {})}
    return AccuracyPredictor(genome.space.name, [linear], features=FEATURES["ridge"], hidden=0, layers=0,
                             cost_features=True, feature_mean=mean.astype(np.float32),
                             feature_std=std.astype(np.float32), target_mean=t_mean, target_std=t_std, info=meta)


def _ridge(Z: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
    """(w, b) = argmin |Z w + b - y|^2 + penalty |w|^2 (the intercept not penalised)."""
    z_mean, y_mean = Z.mean(0), float(y.mean())
    Zc = Z - z_mean
    weights = np.linalg.solve(Zc.T @ Zc + penalty * np.eye(Z.shape[1]), Zc.T @ (y - y_mean))
    return weights, y_mean - float(z_mean @ weights)
