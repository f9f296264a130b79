"""Data: CIFAR-10 (the project's JPEG .npz, or torchvision's folder) and ImageFolder trees.

Every source yields normalised float batches at the space's base resolution; callers resize to a
subnet's resolution with ``resize``. The order of a shuffled pass depends only on (seed, epoch), so
a resumed run sees exactly the batches it would have seen. A fixed validation split is carved from
train (calibration and predictor data); the test split is only for reporting.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qfa_deploy.checkpoint import atomic_write_bytes
from qfa_deploy.errors import QfaError
from qfa_deploy.space import SearchSpace

__all__ = ["ArraySource", "Splits", "default_data_dir", "load_splits", "resize"]

log = logging.getLogger(__name__)
VAL_SIZE_CIFAR = 5000
SPLIT_SEED = 20211206  # fixed: the validation split never changes


def default_data_dir() -> Path:
    """``$QFA_DATA_DIR``, else the shared CIFAR-10 copy beside the project checkout."""
    if os.environ.get("QFA_DATA_DIR"):
        return Path(os.environ["QFA_DATA_DIR"])
    here = Path(__file__).resolve().parents[1]
    return here.parent / "shared" / "data" / "cifar10"


def cache_dir() -> Path:
    return Path(os.environ.get("QFA_CACHE_DIR", Path.home() / ".cache" / "qfa-deploy"))


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    if x.shape[-1] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)


@dataclass
class ArraySource:
    """Images held in memory as uint8 NHWC (small datasets such as CIFAR-10)."""

    images: torch.Tensor  # uint8 [N, H, W, 3]
    labels: torch.Tensor  # int64 [N]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __len__(self) -> int:
        return len(self.labels)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    def subset(self, n: int) -> ArraySource:
        return ArraySource(self.images[:n], self.labels[:n], self.mean, self.std)

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
        n = len(self)
        if seed is None:
            order = torch.arange(n)
        else:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        num = n // batch_size if drop_last else -(-n // batch_size)
        for b in range(start, num):
            idx = order[b * batch_size : (b + 1) * batch_size]
            idx = idx[rank::world]
            x = self.images[idx]
            if augment:
                gen = torch.Generator().manual_seed((seed or 0) * 1_000_003 + epoch * 10_007 + b)
                x = _augment(x, gen)
            yield self._normalise(x), self.labels[idx]


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip (the standard CIFAR recipe), per image."""
    n, h, w, _ = x.shape
    pad = 4
    padded = F.pad(x.permute(0, 3, 1, 2), (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, :, None].expand(n, h, w)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, :].expand(n, h, w)
    flip = torch.rand(n, generator=gen) < 0.5
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    return padded[torch.arange(n)[:, None, None], rows, cols]


@dataclass
class Splits:
    train: ArraySource
    val: ArraySource
    test: ArraySource


def _decode_jpeg_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from tqdm import tqdm

    with np.load(path) as z:
        blob, offsets, labels = z["jpeg"], z["offsets"], z["y"]
    images = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    for i in tqdm(range(len(labels)), desc=f"decoding {path.name}", unit="img", leave=False, disable=None):
        with Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())) as im:
            images[i] = np.asarray(im.convert("RGB"))
    return images, labels.astype(np.int64)


def _cached_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"{path.stem}-{digest}.npz"
    if cached.is_file():
        with np.load(cached) as z:
            return z["x"], z["y"]
    images, labels = _decode_jpeg_npz(path)
    atomic_write_bytes(cached, lambda f: np.savez(f, x=images, y=labels))
    return images, labels


def _torchvision_cifar(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(str(root), train=train, download=False)
    return np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)


def _load_cifar(root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    if (root / "train.npz").is_file() and (root / "test.npz").is_file():
        return _cached_npz(root / "train.npz"), _cached_npz(root / "test.npz")
    if (root / "cifar-10-batches-py").is_dir():
        return _torchvision_cifar(root, True), _torchvision_cifar(root, False)
    raise QfaError(
        f"{root}: no CIFAR-10 here (expected train.npz + test.npz, or torchvision's cifar-10-batches-py/)"
    )


def load_splits(space: SearchSpace, data_dir: str | Path | None = None) -> Splits:
    """Train / validation / test splits for ``space`` from ``data_dir``."""
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not root.is_dir():
        raise QfaError(f"{root}: data directory not found")
    if space.num_classes != 10:
        raise QfaError(
            f"space {space.name!r} needs an ImageFolder tree (train/, val/); use qfa_deploy.imagefolder"
        )
    (x_train, y_train), (x_test, y_test) = _load_cifar(root)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y_train))
    val_idx, train_idx = perm[:VAL_SIZE_CIFAR], perm[VAL_SIZE_CIFAR:]
    make = lambda x, y: ArraySource(  # noqa: E731
        torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), space.image_mean, space.image_std
    )
    return Splits(
        train=make(x_train[train_idx], y_train[train_idx]),
        val=make(x_train[val_idx], y_train[val_idx]),
        test=make(x_test, y_test),
    )
