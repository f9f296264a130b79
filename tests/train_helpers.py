"""Small real-data splits and a tiny training config for the training tests."""

from __future__ import annotations

from dataclasses import replace

from qfa_deploy.data import Splits, load_splits
from qfa_deploy.space import create_space
from qfa_deploy.train import TrainConfig


def tiny_splits(n_train: int = 192, n_val: int = 100) -> Splits:
    full = load_splits(create_space("qfa-mbv3-cifar10"))
    return Splits(train=full.train.subset(n_train), val=full.val.subset(n_val), test=full.test.subset(n_val))


def tiny_config(out: str, **overrides) -> TrainConfig:
    cfg = TrainConfig(
        space="qfa-mbv3-cifar10", out=out, fp_epochs=0.5, q_epochs=0.5, batch_size=32, num_random=1,
        warmup_steps=1, checkpoint_every=2, eval_every_epochs=100.0, eval_images=50,
    )
    return replace(cfg, **overrides)
