"""Image sources and how they are batched: what ``data`` (CIFAR-10 in memory) and ``imagefolder``
(decoded files) share, so that neither imports the other's module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["SPLIT_SEED", "BatchPlan", "ImageSource", "Splits", "normalise"]

SPLIT_SEED = 20211206  # fixed: the validation split never changes


class ImageSource(ABC):
    """A split: labelled images, batched by a ``BatchPlan``. ``data.ArraySource`` holds them in memory,
    ``imagefolder.ImageFolderSource`` decodes files."""

    labels: torch.Tensor  # int64 [N]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> ImageSource:
        return self.select(torch.arange(min(n, len(self))))

    @abstractmethod
    def select(self, idx: torch.Tensor) -> ImageSource:
        """The images at ``idx``, in that order."""

    @abstractmethod
    def _planned(self, plan: BatchPlan, start: int, augment: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start``, ``start + 1``, ... of ``plan``, normalised (and augmented)."""

    def batches(
        self,
        batch_size: int,
        *,
        seed: int | None = None,
        epoch: int = 0,
        augment: bool = False,
        start: int = 0,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in order (``seed=None``) or shuffled by (seed, epoch), from batch ``start``.

        With ``world > 1`` each rank gets its own slice of every global batch.
        """
        return self._planned(BatchPlan(len(self), batch_size, seed, epoch, rank, world, drop_last), start, augment)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NHWC images -> float NCHW, standardised per channel."""
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    return ((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).contiguous()


@dataclass(frozen=True)
class BatchPlan:
    """Which images make batch ``b`` of an epoch, and its augmentation's random generator: functions of
    (seed, epoch, b) only, so that every source, worker process and resumed run agree."""

    n: int
    batch_size: int
    seed: int | None  # None: in order, no shuffling
    epoch: int = 0
    rank: int = 0
    world: int = 1
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.seed is None:
            order = torch.arange(self.n)
        else:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        object.__setattr__(self, "_order", order)

    @property
    def num_batches(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def indices(self, b: int) -> torch.Tensor:
        """This rank's slice of global batch ``b``."""
        return self._order[b * self.batch_size : (b + 1) * self.batch_size][self.rank :: self.world]

    def generator(self, b: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed or 0) * 1_000_003 + self.epoch * 10_007 + b)


@dataclass
class Splits:
    train: ImageSource
    val: ImageSource
    test: ImageSource
