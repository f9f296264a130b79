"""ImageFolder trees (the ImageNet layout): splits, deterministic decoding in worker processes,
training and evaluation from the CLI, and one-line errors for bad trees."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from qfa_deploy.data import load_splits
from qfa_deploy.errors import QfaError
from qfa_deploy.space import create_space

CIFAR_SPACE = create_space("qfa-mbv3-cifar10")


def make_tree(root, classes=10, train_per_class=12, val_per_class=2, seed=0):
    """Random-noise JPEGs of assorted sizes and aspect ratios, ``root/{train,val}/cNNN/*.jpg``."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"c{c:03d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                h, w = rng.integers(20, 70, size=2)
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("imagefolder"))


def test_splits_carve_a_fixed_validation_split_from_train(tree):
    splits = load_splits(CIFAR_SPACE, tree, workers=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (108, 12, 20)
    again = load_splits(CIFAR_SPACE, tree, workers=0)
    assert splits.val.files == again.val.files and not set(splits.val.files) & set(splits.train.files)
    # labels are the sorted class folders' positions
    pairs = zip(splits.train.files, splits.train.labels.tolist(), strict=True)
    assert all(f"/c{label:03d}/" in path for path, label in pairs)
    assert sorted(set(splits.test.labels.tolist())) == list(range(10))


def test_batches_do_not_depend_on_worker_processes_and_resume_exactly(tree):
    inline = load_splits(CIFAR_SPACE, tree, workers=0).train
    pooled = load_splits(CIFAR_SPACE, tree, workers=2).train
    kwargs = dict(seed=3, epoch=1, augment=True, drop_last=True)
    a = list(inline.batches(16, **kwargs))
    b = list(pooled.batches(16, **kwargs))
    assert len(a) == len(b) == 108 // 16
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == (16, 3, 32, 32) and torch.equal(xa, xb) and torch.equal(ya, yb)
    resumed = list(inline.batches(16, start=2, **kwargs))
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(resumed, a[2:], strict=True))
    other_epoch = next(inline.batches(16, seed=3, epoch=2, augment=True))
    assert not torch.equal(other_epoch[0], a[0][0])
    ranks = [next(inline.batches(16, rank=r, world=2, **kwargs)) for r in (0, 1)]
    assert torch.equal(torch.cat([ranks[0][1], ranks[1][1]]).sort().values, a[0][1].sort().values)


def test_evaluation_crop_keeps_a_solid_colour_and_the_centre(tmp_path):
    root = tmp_path / "t"
    for split in ("train", "val"):
        for c in range(10):
            (root / split / f"c{c}").mkdir(parents=True)
            # 40 x 80 image: red outer quarters, green centre half
            pixels = np.zeros((40, 80, 3), dtype=np.uint8)
            pixels[:, :20, 0] = pixels[:, 60:, 0] = 255
            pixels[:, 20:60, 1] = 255
            Image.fromarray(pixels).save(root / split / f"c{c}" / "0.png")
    x, _ = next(load_splits(CIFAR_SPACE, root, workers=0).test.batches(10))
    mean, std = torch.tensor(CIFAR_SPACE.image_mean), torch.tensor(CIFAR_SPACE.image_std)
    pixels = (x * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)) * 255
    # resized to 37 x 74, the green half spans columns 18.5-55.5 and the centre crop columns 21-52
    assert torch.allclose(pixels[:, 1], torch.full_like(pixels[:, 1], 255), atol=1)
    assert pixels[:, 0].abs().max() < 1


@pytest.mark.parametrize("mutate, message", [
    (lambda root: (root / "train" / "c009").rename(root / "train" / "zz"), "class folder 'c009' is not in train/"),
    (lambda root: (root / "val" / "c000" / "0.jpg").write_bytes(b"not a jpeg"), "not a readable image"),
    (lambda root: [p.unlink() for p in (root / "val").rglob("*.jpg")], "no images"),
    (lambda root: (root / "train" / "c010").mkdir(), "11 class folders, the space has 10 classes"),
])
@pytest.mark.parametrize("workers", [0, 1])
def test_bad_trees_are_one_line_errors(tmp_path, mutate, message, workers):
    root = make_tree(tmp_path / "t", train_per_class=2, val_per_class=1)
    mutate(root)
    with pytest.raises(QfaError, match=message) as err:
        splits = load_splits(CIFAR_SPACE, root, workers=workers)
        list(splits.test.batches(10))
    assert "\n" not in str(err.value)


def test_an_imagenet_space_on_cifar_files_names_the_layout_it_needs(tmp_path):
    (tmp_path / "train.npz").write_bytes(b"")
    with pytest.raises(QfaError, match="1000 classes and needs an ImageFolder tree"):
        load_splits(create_space("qfa-mbv3-w1.2"), tmp_path)


def _cli(*args, timeout=600):
    code = "from qfa_deploy.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


def test_train_and_eval_from_an_image_folder(tree, tmp_path):
    run = tmp_path / "run"
    done = _cli("train", "--space", "qfa-mbv3-cifar10", "--data", str(tree), "--out", str(run),
                "--fp-epochs", "1", "--q-epochs", "1", "--batch-size", "16", "--max-steps", "8",
                "--num-random", "1", "--threads", "1", "--data-workers", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(s.get("step", 0) for s in steps) >= 6
    arch = tmp_path / "arch.json"
    sample = _cli("sample", "--space", "qfa-mbv3-cifar10", "--seed", "1", "-o", str(arch))
    assert sample.returncode == 0, sample.stderr
    scored = _cli("eval", "--checkpoint", str(run / "checkpoint.pt"), "--arch", str(arch), "--data", str(tree),
                  "--calib-batches", "1", "--json", "--threads", "1")
    assert scored.returncode == 0, scored.stderr[-2000:]
    result = json.loads(scored.stdout)
    assert result["images"] == 20 and 0.0 <= result["top1"] <= 1.0


@pytest.mark.slow
def test_the_imagenet_space_trains_from_an_image_folder(tmp_path):
    """The 1000-class ImageNet space at its 224-pixel base resolution, one data-parallel-free step."""
    root = make_tree(tmp_path / "imagenet", classes=1000, train_per_class=1, val_per_class=1)
    run = tmp_path / "run"
    done = _cli("train", "--space", "qfa-mbv3-w1.2", "--data", str(root), "--out", str(run),
                "--fp-epochs", "1", "--q-epochs", "1", "--batch-size", "4", "--max-steps", "1",
                "--num-random", "1", "--threads", "2", "--data-workers", "2", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "checkpoint.pt").is_file()
