"""Global filter layer (GFNet / SpectFormer): a learned complex gain per frequency and channel, applied through the
:mod:`visionzoo.ops.spectral_gating` op to a channels-last token map."""
from __future__ import annotations

import torch
from torch import nn

from visionzoo.ops import trace_leaf
from visionzoo.ops.spectral_gating import resize_spectral_filter, spectral_gating


@trace_leaf
def filter_for_grid(
    weight: torch.Tensor, grid: tuple[int, int], trained_grid: tuple[int, int], resize: bool, owner: str
) -> torch.Tensor:
    """``weight`` for a ``grid`` token map: as learned on ``trained_grid``, or resampled when ``resize`` allows."""
    grid, trained_grid = tuple(grid), tuple(trained_grid)
    if grid == trained_grid:
        return weight
    if not resize:
        raise ValueError(
            f"{owner}: its spectral filters were learned on a {trained_grid[0]}x{trained_grid[1]} token grid and "
            f"this input gives {grid[0]}x{grid[1]}; build the model with resize_filters=True to resample them, or "
            f"with img_size set to this input's size for fresh filters"
        )
    return resize_spectral_filter(weight, grid, trained_grid)


class SpectralGatingFilter(nn.Module):
    """(B, H, W, C) → (B, H, W, C): y = irfft2(rfft2(x) · W) with W the learned ``complex_weight``
    (H, W // 2 + 1, C, 2), defined on ``grid_size``.

    Other grids resample W by :func:`visionzoo.ops.spectral_gating.resize_spectral_filter` when
    ``resize_filters`` is set and raise a ValueError otherwise. The op computes in float32 (the official code
    keeps the result in float32); the result is cast back to the input's dtype, so a bfloat16 model stays
    bfloat16 and under autocast the residual stream, float32 already, is unchanged.
    """

    def __init__(self, dim: int, grid_size: tuple[int, int], resize_filters: bool = True, device=None, dtype=None):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.resize_filters = resize_filters
        height, width = self.grid_size
        self.complex_weight = nn.Parameter(torch.empty(height, width // 2 + 1, dim, 2, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.complex_weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = filter_for_grid(
            self.complex_weight, x.shape[1:3], self.grid_size, self.resize_filters, type(self).__name__
        )
        return spectral_gating(x, weight).to(x.dtype)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, resize_filters={self.resize_filters}"
