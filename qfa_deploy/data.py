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
import pickle
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qfa_deploy.checkpoint import atomic_write_bytes
from qfa_deploy.errors import QfaError
from qfa_deploy.resources import asset
from qfa_deploy.sources import SPLIT_SEED, BatchPlan, ImageSource, Splits, normalise  # re-exported
from qfa_deploy.space import SearchSpace

__all__ = [
    "ArraySource", "BatchPlan", "CALIBRATION_ASSET", "ImageSource", "Splits", "calibration_images",
    "default_data_dir", "default_workers", "download_cifar10", "load_splits", "normalise", "resize",
]

log = logging.getLogger(__name__)
VAL_SIZE_CIFAR = 5000
# The first 2,000 images of CIFAR-10's validation split (the default 20 calibration batches of 100),
# as the data set's own JPEG bytes: export and calibration work on a machine without the data set.
CALIBRATION_ASSET = "cifar10-calibration.npz"
_WHERE = ("put CIFAR-10 there (train.npz + test.npz, or torchvision's cifar-10-batches-py/), "
          "or pass --data DIR / set QFA_DATA_DIR")


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
class ArraySource(ImageSource):
    """Images held in memory as uint8 NHWC (small datasets such as CIFAR-10)."""

    images: torch.Tensor  # uint8 [N, H, W, 3]
    labels: torch.Tensor  # int64 [N]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def select(self, idx: torch.Tensor) -> ArraySource:
        return ArraySource(self.images[idx], self.labels[idx], self.mean, self.std)

    def _planned(self, plan: BatchPlan, start: int, augment: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b in range(start, plan.num_batches):
            idx = plan.indices(b)
            x = _augment(self.images[idx], plan.generator(b)) if augment else self.images[idx]
            yield normalise(x, self.mean, self.std), self.labels[idx]


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


def cifar_val_indices(n_train: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation, train) indices into CIFAR-10's training images: a fixed split."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n_train)
    return perm[:VAL_SIZE_CIFAR], perm[VAL_SIZE_CIFAR:]


def calibration_images(space: SearchSpace, data_dir: str | Path | None = None, images: int = 0) -> ImageSource:
    """The validation images that calibration reads, in order.

    From ``data_dir`` (or ``$QFA_DATA_DIR``, or the shared copy beside a checkout) when given or
    present; otherwise, for a CIFAR-10 space, from the package's own copy of the first
    validation images (bit-identical: the same JPEG bytes, decoded the same way).

    Raises:
        QfaError: no data for this space, or fewer shipped images than ``images``.
    """
    explicit = data_dir is not None or bool(os.environ.get("QFA_DATA_DIR"))
    if explicit or default_data_dir().is_dir():
        return load_splits(space, data_dir).val
    shipped = asset(CALIBRATION_ASSET)
    if space.num_classes != 10 or not shipped.is_file():
        where = _WHERE if space.num_classes == 10 else "pass --data DIR (an ImageFolder tree: train/, val/)"
        raise QfaError(f"no calibration data for space {space.name!r}: {where}")
    x, y = _decode_jpeg_npz(shipped)
    if images > len(y):
        raise QfaError(f"{images} calibration images asked for, the package ships {len(y)}: "
                       "pass --data DIR (or set QFA_DATA_DIR) with the full CIFAR-10")
    return ArraySource(torch.from_numpy(x), torch.from_numpy(y), space.image_mean, space.image_std)


def _read_jpeg_npz(path: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(JPEG bytes, offsets, labels) of a CIFAR-10 .npz of this project's layout, checked: a truncated
    or foreign file, offsets that do not cut the bytes into one image per label, labels that are not
    integers in ``[0, num_classes)`` or no images at all are one-line errors naming ``path``."""
    try:
        with np.load(path) as z:
            blob, offsets, labels = z["jpeg"], z["offsets"], z["y"]
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # foreign or corrupt
        raise QfaError(f"{path}: not a CIFAR-10 .npz of this project's layout (jpeg, offsets, y): "
                       f"{exc.__class__.__name__}") from None
    if blob.ndim != 1 or blob.dtype != np.uint8:
        raise QfaError(f"{path}: 'jpeg' must be a 1-D uint8 array of JPEG bytes, not {blob.dtype} {list(blob.shape)}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise QfaError(f"{path}: labels 'y' must be a 1-D integer array, not {labels.dtype} {list(labels.shape)}")
    if len(labels) == 0:
        raise QfaError(f"{path}: no images in it (the split is empty)")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise QfaError(f"{path}: label {labels[i]} of image {i} is outside 0..{num_classes - 1} "
                       f"({int(bad.sum())} such)")
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) != len(labels) + 1:
        raise QfaError(f"{path}: 'offsets' must be {len(labels) + 1} integers (one more than the labels), "
                       f"not {offsets.dtype} {list(offsets.shape)}")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != len(blob) or (np.diff(offsets) <= 0).any():
        raise QfaError(f"{path}: 'offsets' do not cut the {len(blob)} JPEG bytes into one image per label "
                       "(they must rise from 0 to the byte count)")
    return blob, offsets, labels.astype(np.int64)


def _decode_jpeg_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    from tqdm import tqdm

    blob, offsets, labels = _read_jpeg_npz(path)
    images = np.empty((len(labels), 32, 32, 3), dtype=np.uint8)
    for i in tqdm(range(len(labels)), desc=f"decoding {path.name}", unit="img", leave=False, disable=None):
        try:
            with Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError
            raise QfaError(f"{path}: image {i} is not a readable JPEG ({exc.__class__.__name__})") from None
        if image.shape != (32, 32, 3):
            raise QfaError(f"{path}: image {i} is {image.shape[1]}x{image.shape[0]}, CIFAR-10's are 32x32")
        images[i] = image
    return images, labels


def _cached_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    _read_jpeg_npz(path)  # checked even when decoded before: a cache never hides a broken file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"{path.stem}-{digest}.npz"
    if cached.is_file():
        try:
            with np.load(cached) as z:
                return z["x"], z["y"]
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error):
            log.warning("%s: unreadable cache, decoding %s again", cached, path)
    images, labels = _decode_jpeg_npz(path)
    atomic_write_bytes(cached, lambda f: np.savez(f, x=images, y=labels))
    return images, labels


def _torchvision_cifar(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        raise QfaError(f"{root}: torchvision's CIFAR-10 layout needs torchvision "
                       "(pip install 'qfa-deploy[torchvision]'), or use the JPEG .npz layout") from None

    folder = root / "cifar-10-batches-py"
    try:  # torchvision checks every batch file's md5 first: a missing or damaged one is a RuntimeError
        ds = CIFAR10(str(root), train=train, download=False)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        raise QfaError(f"{folder}: torchvision's CIFAR-10 files are missing or corrupt ({exc.__class__.__name__}); "
                       "remove the folder and download it again") from None
    images, labels = np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)
    if len(labels) == 0:
        raise QfaError(f"{folder}: no {'training' if train else 'test'} images in it (the split is empty)")
    return images, labels


def download_cifar10(root: str | Path) -> Path:
    """torchvision's CIFAR-10 download into ``root`` (``cifar-10-batches-py/``; a complete copy
    already there is verified and kept). Needs torchvision and the internet."""
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        raise QfaError("--download needs torchvision (pip install 'qfa-deploy[torchvision]')") from None
    root = Path(root)
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            CIFAR10(str(root), train=train, download=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a bad archive a RuntimeError
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # nothing arrived: leave no empty folder behind
        text = " ".join(str(exc).split()) or exc.__class__.__name__
        raise QfaError(f"{root}: CIFAR-10 download failed: {text}") from None
    return root


def _load_cifar(root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    if (root / "train.npz").is_file() and (root / "test.npz").is_file():
        return _cached_npz(root / "train.npz"), _cached_npz(root / "test.npz")
    if (root / "cifar-10-batches-py").is_dir():
        return _torchvision_cifar(root, True), _torchvision_cifar(root, False)
    raise QfaError(
        f"{root}: no CIFAR-10 here (expected train.npz + test.npz, or torchvision's cifar-10-batches-py/)"
    )


def default_workers() -> int:
    """Decoding processes for image files: up to 4, no more than this process's CPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS has none
    return min(4, cpus)


def load_splits(space: SearchSpace, data_dir: str | Path | None = None, workers: int | None = None) -> Splits:
    """Train / validation / test splits for ``space`` from ``data_dir``: an ImageFolder tree
    (``train/``, ``val/``), or CIFAR-10 (this project's JPEG .npz files, or torchvision's folder).
    ``workers`` decode an ImageFolder's files (default: ``default_workers()``)."""
    from qfa_deploy.imagefolder import is_image_folder, load_image_folder

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not root.is_dir():
        raise QfaError(f"{root}: data directory not found: {_WHERE}")
    if is_image_folder(root):
        workers = default_workers() if workers is None else workers
        return load_image_folder(root, space.num_classes, space.image_mean, space.image_std,
                                 max(space.resolutions), workers)
    if space.num_classes != 10:
        raise QfaError(f"{root}: space {space.name!r} has {space.num_classes} classes and needs an ImageFolder "
                       "tree here (train/<class>/*.jpg, val/<class>/*.jpg)")
    (x_train, y_train), (x_test, y_test) = _load_cifar(root)
    val_idx, train_idx = cifar_val_indices(len(y_train))
    make = lambda x, y: ArraySource(  # noqa: E731
        torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), space.image_mean, space.image_std
    )
    return Splits(
        train=make(x_train[train_idx], y_train[train_idx]),
        val=make(x_train[val_idx], y_train[val_idx]),
        test=make(x_test, y_test),
    )
