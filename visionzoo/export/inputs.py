"""Inputs for parity checks: seeded random tensors and real photographs from scikit-image's sample data.

Random input can hide divergence (e.g. a wrong normalisation or a saturating branch that noise never
reaches), so every export is also compared on three photographs — ``skimage.data`` astronaut, chelsea
and coffee, shipped inside the scikit-image package (no download) — resized so the shorter side fits,
centre-cropped to the input size and normalised with the model's ``pretrained_cfg`` mean/std.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visionzoo.models._registry import example_input, family_of

PHOTOS = ("astronaut", "chelsea", "coffee")


def random_input(model: nn.Module, batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """The model family's declared example input (its channels, device and dtype), seeded; for a point-cloud
    family ``height`` is the number of points (``width`` its point dims, fixed by the model)."""
    size = height if family_of(model).input_kind == "points" else (height, width)
    return example_input(model, batch, size, torch.Generator().manual_seed(seed))


def _photo(name: str) -> np.ndarray:
    try:
        import skimage.data
    except ImportError as error:
        raise ImportError(
            "photo parity needs scikit-image: pip install 'visionzoo[export]' (or scikit-image==0.26.0)"
        ) from error
    return getattr(skimage.data, name)()


def photo_batch(height: int, width: int, mean, std, names=PHOTOS) -> torch.Tensor:
    """(len(names), 3, height, width) float32: each photo resized (bicubic, shorter side), centre-cropped, normalised."""
    images = []
    for name in names:
        image = torch.from_numpy(_photo(name)).permute(2, 0, 1)[None].float() / 255.0
        scale = max(height / image.shape[-2], width / image.shape[-1])
        size = (max(height, round(image.shape[-2] * scale)), max(width, round(image.shape[-1] * scale)))
        image = F.interpolate(image, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - height) // 2, (size[1] - width) // 2
        images.append(image[..., top:top + height, left:left + width])
    batch = torch.cat(images)
    mean = torch.tensor(mean, dtype=batch.dtype).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=batch.dtype).view(1, -1, 1, 1)
    return (batch - mean) / std


def max_relative_error(out, ref) -> float:
    """max|out − ref| / max|ref| over the whole output (one number per comparison, scale-free)."""
    out, ref = (torch.as_tensor(np.asarray(t.detach() if isinstance(t, torch.Tensor) else t), dtype=torch.float64)
                for t in (out, ref))
    if out.shape != ref.shape:
        raise ValueError(f"runtime output shape {tuple(out.shape)} differs from PyTorch's {tuple(ref.shape)}")
    denominator = ref.abs().max().item()
    return (out - ref).abs().max().item() / (denominator if denominator > 0 else 1.0)
