"""ImageNet-style loaders on timm's pipeline, made resumable mid-epoch and reproducible per sample.

Two things make a killed run resume to the same weights as an uninterrupted one:

* the sampler order of an epoch depends only on (seed, epoch), and the loader can start part-way through it;
* each sample's augmentation is drawn from RNGs seeded by (seed, epoch, rank, position in the epoch), so it
  does not depend on worker count, worker scheduling, or where the run was resumed.
"""
from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.readers.reader_image_folder import find_images_and_targets
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset, default_collate


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


# Grayscale modes Pillow gives 16-bit PNG/TIFF scans; ``convert("RGB")`` would clip every value above 255.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
LOAD_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def inspect_image(path: str) -> tuple[str | None, str | None]:
    """``(problem, mode)`` from the file's header alone: why it cannot be used (None if it can), its mode."""
    if os.path.getsize(path) == 0:
        return "empty file", None
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode = image.mode
    except Image.DecompressionBombError as error:
        return f"decompression bomb ({error})", None
    except LOAD_ERRORS as error:
        return f"not a readable image ({type(error).__name__}: {error})", None
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        return f"decompression bomb ({width}x{height} pixels, over Pillow's limit of {Image.MAX_IMAGE_PIXELS})", mode
    return None, mode


def load_rgb(path: str) -> Image.Image:
    """An RGB image; 16-bit grayscale is scaled to 8 bits (value / 257) rather than clipped."""
    with Image.open(path) as image:
        if image.mode in SIXTEEN_BIT_MODES:
            pixels = np.asarray(image, dtype=np.float64) / 257.0
            return Image.fromarray(pixels.round().clip(0, 255).astype(np.uint8)).convert("RGB")
        return image.convert("RGB")


class ImageFolder(Dataset):
    """One split of an ImageNet-style folder whose unusable images are left out, counted and described.

    Every file's header is read once up front (in threads): empty files, files that are no image, and images
    over Pillow's pixel limit (decompression bombs) are skipped, so a bad file cannot crash a run, or every
    resume of it, at the same sample. A file whose pixels fail to decode later (a truncated body) is replaced
    by the next readable sample when ``substitute`` (training), else returned as None for
    :func:`collate_readable` to drop and count (evaluation, where counts must be exact).
    """

    def __init__(self, root: Path, transform=None, substitute: bool = True):
        self.root, self.transform, self.substitute = Path(root), transform, substitute
        samples, self.class_to_idx = find_images_and_targets(str(self.root))
        if not samples:
            raise DatasetError(f"{self.root} holds no images in class sub-folders")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with ThreadPoolExecutor(max_workers=min(16, 2 * (os.cpu_count() or 1))) as pool:
                checks = list(pool.map(inspect_image, (path for path, _ in samples)))
        self.samples = [sample for sample, (problem, _) in zip(samples, checks) if problem is None]
        self.skipped = [(path, problem) for (path, _), (problem, _) in zip(samples, checks) if problem is not None]
        self.sixteen_bit = sum(1 for problem, mode in checks if problem is None and mode in SIXTEEN_BIT_MODES)
        if not self.samples:
            raise DatasetError(f"none of the {len(samples)} images in {self.root} can be read: {self.notice()}")

    def __len__(self) -> int:
        return len(self.samples)

    def notice(self) -> str | None:
        """What the scan left out or converted, for the user; None when every image is fine."""
        lines = []
        if self.skipped:
            total = len(self.samples) + len(self.skipped)
            shown = "; ".join(f"{Path(path).relative_to(self.root)}: {problem}" for path, problem in self.skipped[:5])
            more = f"; ... ({len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
            lines.append(f"skipped {len(self.skipped)} of {total} images in {self.root} that cannot be used: "
                         f"{shown}{more}")
        if self.sixteen_bit:
            lines.append(f"{self.sixteen_bit} images in {self.root} are 16-bit grayscale; they are scaled to 8 bits "
                         f"(value / 257), not clipped")
        return "\n".join(lines) or None

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            path, target = self.samples[(index + offset) % len(self.samples)]
            try:
                image = load_rgb(path)
            except LOAD_ERRORS as error:
                warnings.warn(f"skipped {path}: its pixels cannot be decoded ({error})", stacklevel=2)
                if not self.substitute:
                    return None
                continue
            return (self.transform(image) if self.transform is not None else image), target
        raise DatasetError(f"no image in {self.root} can be decoded")


def collate_readable(batch: list):
    """``(images, targets, unreadable)``: the batch without the samples that failed to decode, and their count."""
    kept = [sample for sample in batch if sample is not None]
    unreadable = len(batch) - len(kept)
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), unreadable
    images, targets = default_collate(kept)
    return images, targets, unreadable


def create_folder_dataset(data_dir: str | Path, split: str, transform, substitute: bool = True) -> ImageFolder:
    """An ImageNet-style split (a folder per class); see :class:`ImageFolder` for what it skips."""
    return ImageFolder(_split_root(data_dir, split), transform, substitute)


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
    """Every image exactly once over all ranks (no padding), so summed counts give exact metrics.

    Batches are ``(images, targets, unreadable)``, see :func:`collate_readable`.
    """
    shard = Subset(dataset, range(rank, len(dataset), world_size)) if world_size > 1 else dataset
    return DataLoader(
        shard, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
        collate_fn=collate_readable,
    )
