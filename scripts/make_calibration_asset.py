"""Write qfa_deploy/assets/cifar10-calibration.npz: the first images of CIFAR-10's fixed validation
split, as the data set's own JPEG bytes (same layout as the data set's .npz: jpeg, offsets, y).

    python scripts/make_calibration_asset.py [--data ../shared/data/cifar10] [--images 2000]

Run once when the split or the default calibration changes; tests/test_calibration_asset.py checks
that the shipped file still equals what this script makes from the full data set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from qfa_deploy.checkpoint import atomic_write_bytes
from qfa_deploy.data import CALIBRATION_ASSET, cifar_val_indices, default_data_dir
from qfa_deploy.resources import asset


def calibration_subset(train_npz: Path, images: int) -> dict[str, np.ndarray]:
    with np.load(train_npz) as z:
        blob, offsets, labels = z["jpeg"], z["offsets"], z["y"]
    val_idx, _ = cifar_val_indices(len(labels))
    chosen = val_idx[:images]
    pieces = [blob[offsets[i] : offsets[i + 1]] for i in chosen]
    new_offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return {"jpeg": np.concatenate(pieces), "offsets": new_offsets, "y": labels[chosen]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    arrays = calibration_subset(args.data / "train.npz", args.images)
    out = asset(CALIBRATION_ASSET)
    atomic_write_bytes(out, lambda f: np.savez_compressed(f, **arrays))
    print(f"wrote {out}: {len(arrays['y'])} images, {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
