"""ImageFolder trees (the ImageNet layout): ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``.

Images stay on disk and are decoded per batch, in DataLoader worker processes when ``workers > 0``.
Classes are the sorted folder names of ``train/``; a fixed validation split (calibration, predictor
data) is carved from train, and ``val/`` is the test split (only for reporting), as for CIFAR-10.

Augmentation is the standard ImageNet recipe (random resized crop, horizontal flip); evaluation
resizes the shorter side to resolution / 0.875 and takes the centre crop. Every random draw comes
from ``BatchPlan.generator`` in the parent process, so batches do not depend on which worker
decoded them, and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qfa_deploy.errors import QfaError
from qfa_deploy.sources import SPLIT_SEED, BatchPlan, ImageSource, Splits, normalise

__all__ = ["IMAGE_SUFFIXES", "ImageFolderSource", "is_image_folder", "load_image_folder"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
VAL_FRACTION, VAL_MAX = 10, 10_000  # carved from train: a tenth, at most 10,000 images (OFA's choice)
EVAL_CROP = 0.875  # centre crop / resized shorter side
CROP_SCALE, CROP_RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


@dataclass
class ImageFolderSource(ImageSource):
    """Image files with their labels, decoded to ``resolution`` when batched."""

    files: list[str]
    labels: torch.Tensor  # int64 [N]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resolution: int
    workers: int = 0  # DataLoader worker processes; 0 decodes in this process

    def select(self, idx: torch.Tensor) -> ImageFolderSource:
        files = [self.files[i] for i in idx.tolist()]
        return ImageFolderSource(files, self.labels[idx], self.mean, self.std, self.resolution, self.workers)

    def _planned(self, plan: BatchPlan, start: int, augment: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        planned = _PlannedBatches(self, plan, start, augment)
        if self.workers == 0:
            items = (planned[i] for i in range(len(planned)))
        else:
            items = torch.utils.data.DataLoader(planned, batch_size=None, num_workers=self.workers,
                                                worker_init_fn=_one_thread, prefetch_factor=2)
        for item in items:
            if isinstance(item, QfaError):
                raise item
            yield item


class _PlannedBatches(torch.utils.data.Dataset):
    """Item ``i``: batch ``start + i`` of ``plan``, decoded (one item per worker task)."""

    def __init__(self, source: ImageFolderSource, plan: BatchPlan, start: int, augment: bool) -> None:
        self.source, self.plan, self.start, self.augment = source, plan, start, augment

    def __len__(self) -> int:
        return max(0, self.plan.num_batches - self.start)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor] | QfaError:
        # a bad file's error comes back as a value: raised in a worker, DataLoader would re-raise it
        # wrapped in the worker's traceback
        try:
            return self._decode(self.start + i)
        except QfaError as exc:
            return exc

    def _decode(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.plan.indices(b)
        size = self.source.resolution
        if self.augment:
            # 10 crop attempts (area, log aspect ratio, two offsets) and a flip per image
            gen = self.plan.generator(b)
            draws = torch.rand(len(idx), 10, 4, generator=gen).numpy()
            flips = (torch.rand(len(idx), generator=gen) < 0.5).tolist()
        images = np.empty((len(idx), size, size, 3), dtype=np.uint8)
        for k, i in enumerate(idx.tolist()):
            path = self.source.files[i]
            if self.augment:
                images[k] = _train_crop(path, size, draws[k], flips[k])
            else:
                images[k] = _eval_crop(path, size)
        labels = self.source.labels[idx]
        return normalise(torch.from_numpy(images), self.source.mean, self.source.std), labels


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker decodes; the ranks' threads do the maths


def _open(path: str, draft: int | None = None):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        if draft is not None:
            im.draft("RGB", (draft, draft))  # JPEG: decode at a reduced scale that still covers `draft`
        return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise QfaError(f"{path}: not a readable image ({exc.__class__.__name__})") from None


def _train_crop(path: str, size: int, draws: np.ndarray, flip: bool) -> np.ndarray:
    """Random resized crop (area in CROP_SCALE, aspect in CROP_RATIO; the centre square after 10
    misses) to ``size`` x ``size``, flipped if ``flip``."""
    from PIL import Image

    im = _open(path)
    width, height = im.size
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    box = None
    for u_area, u_ratio, u_x, u_y in draws:
        target = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u_area)
        ratio = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            x, y = int(u_x * (width - w + 1)), int(u_y * (height - h + 1))
            box = (x, y, x + w, y + h)
            break
    if box is None:
        side = min(width, height)
        x, y = (width - side) // 2, (height - side) // 2
        box = (x, y, x + side, y + side)
    out = im.resize((size, size), Image.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def _eval_crop(path: str, size: int) -> np.ndarray:
    """Shorter side resized to size / EVAL_CROP, then the centre ``size`` x ``size``."""
    from PIL import Image

    short = round(size / EVAL_CROP)
    im = _open(path, draft=short)
    width, height = im.size
    scale = short / min(width, height)
    w, h = max(size, round(width * scale)), max(size, round(height * scale))
    im = im.resize((w, h), Image.BILINEAR)
    x, y = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((x, y, x + size, y + size)))


def is_image_folder(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def _list_tree(folder: Path, classes: list[str] | None) -> tuple[list[str], list[str], list[int]]:
    """(classes, files, labels) of one split; ``classes`` given: the split must use only those."""
    found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not found:
        raise QfaError(f"{folder}: no class folders")
    if classes is None:
        classes = found
    elif set(found) - set(classes):
        extra = sorted(set(found) - set(classes))
        raise QfaError(f"{folder}: class folder {extra[0]!r} is not in train/ ({len(extra)} such)")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for name in found:
        names = sorted(e.name for e in os.scandir(folder / name)
                       if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
        files += [str(folder / name / n) for n in names]
        labels += [index[name]] * len(names)
    if not files:
        raise QfaError(f"{folder}: no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return classes, files, labels


def load_image_folder(root: Path, num_classes: int, mean, std, resolution: int, workers: int = 0) -> Splits:
    """Train / validation / test splits of the ImageFolder tree at ``root``."""
    classes, files, labels = _list_tree(root / "train", None)
    if len(classes) != num_classes:
        raise QfaError(f"{root / 'train'}: {len(classes)} class folders, the space has {num_classes} classes")
    _, test_files, test_labels = _list_tree(root / "val", classes)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    n_val = min(VAL_MAX, len(files) // VAL_FRACTION)
    if n_val < 1:
        raise QfaError(f"{root / 'train'}: {len(files)} images, too few to carve a validation split")
    train_labels = torch.tensor(labels, dtype=torch.int64)

    def make(file_list, label_tensor):
        return ImageFolderSource(file_list, label_tensor, tuple(mean), tuple(std), resolution, workers)

    whole = make(files, train_labels)
    return Splits(
        train=whole.select(torch.from_numpy(perm[n_val:])),
        val=whole.select(torch.from_numpy(perm[:n_val])),  # shuffled: calibration batches mix the classes
        test=make(test_files, torch.tensor(test_labels, dtype=torch.int64)),
    )
