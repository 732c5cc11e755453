"""ImageNet-style loaders on timm's pipeline, made resumable mid-epoch and reproducible per sample.

Two things make a killed run resume to the same weights as an uninterrupted one:

* the sampler order of an epoch depends only on (seed, epoch), and the loader can start part-way through it;
* each sample's augmentation is drawn from RNGs seeded by (seed, epoch, rank, position in the epoch), so it
  does not depend on worker count, worker scheduling, or where the run was resumed.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment, create_dataset, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset


class ResumableSampler(Sampler):
    """Wraps a per-epoch deterministic sampler; yields ``(index, sample_seed)`` from position ``start`` on."""

    def __init__(self, sampler: Sampler, seed: int, rank: int):
        self.sampler = sampler
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.epoch = epoch
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self.sampler)
        seeds = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(len(indices), np.uint64)
        for position in range(self.start, len(indices)):
            yield indices[position], int(seeds[position] >> np.uint64(1))

    def __len__(self) -> int:
        return len(self.sampler) - self.start


class SeededDataset(Dataset):
    """Applies the wrapped dataset's random transforms under a per-sample seed, leaving global RNGs untouched."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


class DatasetError(ValueError):
    """A data folder is missing or too small for the requested batches."""


def _split_root(data_dir: str | Path, split: str) -> Path:
    root = Path(data_dir) / split
    if not root.is_dir():
        raise DatasetError(
            f"{root} does not exist; data.dir must hold an ImageNet-style {split}/ folder with one sub-folder per "
            f"class (make a small one with `visionzoo data digits OUT_DIR`)"
        )
    return root


def create_folder_dataset(data_dir: str | Path, split: str, transform) -> Dataset:
    """An ImageNet-style split (a folder per class) read by timm's folder reader."""
    dataset = create_dataset("", root=str(_split_root(data_dir, split)), split=split, search_split=False)
    dataset.transform = transform
    return dataset


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """Posterize that keeps 0 bits as a black image, as Pillow did before 12 began refusing 0.

    RandAugment's ``inc1`` posterize reaches 0 bits at magnitude 10, which ``mstd0.5`` noise around 9 hits
    for a few per cent of images: the papers' recipes would crash on a current Pillow without this.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def train_transform(cfg: dict, data_config: dict):
    aug = cfg["aug"]
    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name] = _posterize
    return create_transform(
        input_size=data_config["input_size"],
        is_training=True,
        scale=tuple(aug["scale"]),
        ratio=tuple(aug["ratio"]),
        hflip=aug["hflip"],
        color_jitter=aug["color_jitter"],
        auto_augment=aug["auto_augment"],
        interpolation=aug["train_interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        re_prob=aug["re_prob"],
        re_mode=aug["re_mode"],
        re_count=aug["re_count"],
    )


def eval_transform(data_config: dict):
    return create_transform(
        input_size=data_config["input_size"],
        is_training=False,
        interpolation=data_config["interpolation"],
        mean=data_config["mean"],
        std=data_config["std"],
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config.get("crop_mode"),
    )


def create_train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    repeats: int,
    workers: int,
    pin_memory: bool,
) -> DataLoader:
    """Shuffled, drop-last, rank-sharded batches; ``loader.sampler.set_epoch(epoch, start)`` positions it."""
    if repeats > 0:
        inner = RepeatAugSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, num_repeats=repeats)
    else:
        inner = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    if len(inner) < batch_size:
        raise DatasetError(
            f"each of {world_size} process(es) sees {len(inner)} training images per epoch, fewer than one batch of "
            f"{batch_size}; lower train.batch_size or train.global_batch_size"
        )
    return DataLoader(
        SeededDataset(dataset),
        batch_size=batch_size,
        sampler=ResumableSampler(inner, seed, rank),
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=True,
        # The loader draws its workers' base seed from this generator rather than the global RNG, so building an
        # iterator mid-run does not shift the RNG stream that dropout, drop-path and mixup draw from.
        generator=torch.Generator().manual_seed(seed),
    )


def create_eval_loader(
    dataset: Dataset, batch_size: int, rank: int, world_size: int, workers: int, pin_memory: bool
) -> DataLoader:
    """Every image exactly once over all ranks (no padding), so summed counts give exact metrics."""
    shard = Subset(dataset, range(rank, len(dataset), world_size)) if world_size > 1 else dataset
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory)
