"""A small real ImageNet-style data set from scikit-learn's handwritten digits (shipped inside the package).

1,797 8x8 greyscale scans of the digits 0-9 (UCI "optical recognition of handwritten digits"), upsampled to
RGB images and written as ``OUT/train/<class>/*.png`` and ``OUT/val/<class>/*.png``, so that the training
tools can be run end to end on real data without a download.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

DIGITS_MAX_VALUE = 16  # the scans hold 0..16 ink counts per cell


def make_digits(
    out_dir: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0, max_per_class: int | None = None
) -> dict[str, int]:
    """Write the digits split into train/ and val/ folders; returns the number of images per split.

    The split is stratified: every class gives the same fraction of its images to val. ``max_per_class``
    keeps a random subset of each class (about 180 each in full) for quicker smoke runs.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("the digits data ships with scikit-learn: pip install 'visionzoo[dev]'") from error
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if size < 8:
        raise ValueError(f"size must be at least the scans' 8 pixels, got {size}")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    counts = {"train": 0, "val": 0}
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))[:max_per_class]
        n_val = round(len(indices) * val_fraction)
        for split, chosen in (("val", indices[:n_val]), ("train", indices[n_val:])):
            class_dir = out_dir / split / str(label)
            class_dir.mkdir(parents=True, exist_ok=True)
            for index in chosen:
                pixels = (digits.images[index] * (255 / DIGITS_MAX_VALUE)).round().astype(np.uint8)
                image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
                image.convert("RGB").save(class_dir / f"{index:04d}.png")
            counts[split] += len(chosen)
    return counts


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    """``visionzoo data digits OUT_DIR``: write a small real data set for trying the training tools."""
    parser = subparsers.add_parser("data", help="write small ImageNet-style data sets")
    kinds = parser.add_subparsers(dest="data_kind", required=True)
    digits = kinds.add_parser("digits", help="scikit-learn's handwritten digits as train/ and val/ class folders")
    digits.add_argument("out_dir", help="folder to write train/ and val/ into")
    digits.add_argument("--size", type=int, default=32, help="side of the upsampled RGB images (default 32)")
    digits.add_argument("--val-fraction", type=float, default=0.2)
    digits.add_argument("--seed", type=int, default=0)
    digits.add_argument("--max-per-class", type=int, help="keep at most this many images of each digit")
    from visionzoo.data.points import add_point_shapes_parser

    add_point_shapes_parser(kinds)
    return parser


def run_data(args: argparse.Namespace) -> int:
    if args.data_kind == "point-shapes":
        from visionzoo.data.points import run_point_shapes

        return run_point_shapes(args)
    counts = make_digits(args.out_dir, args.size, args.val_fraction, args.seed, args.max_per_class)
    print(f"wrote {counts['train']} train and {counts['val']} val images of 10 classes to {args.out_dir}")
    return 0
