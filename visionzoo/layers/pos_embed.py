"""Position encodings: computed from the input itself, or learned on one grid and resampled to another."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from visionzoo.ops import trace_leaf


class ConvPosEnc(nn.Module):
    """Conditional position encoding x + DWConv(x) (CPVT, arXiv 2102.10882) on a channels-last (B, H, W, C) map.

    The depthwise conv runs on the channels-last memory directly (an NCHW view of it), so no copy is made, and
    the identity rides in the conv as +1 on the centre tap, which saves a full pass over the map for the sum.
    """

    def __init__(self, dim: int, kernel_size: int = 3, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(
            dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, device=device, dtype=dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.proj
        centre = conv.kernel_size[0] // 2
        identity_tap = F.pad(conv.weight.new_ones(1, 1, 1, 1), (centre, centre, centre, centre))
        out = F.conv2d(x.permute(0, 3, 1, 2), conv.weight + identity_tap, conv.bias, padding=conv.padding, groups=conv.groups)
        return out.permute(0, 2, 3, 1)


# PIL's bicubic kernel constant, which torch's antialiased bicubic uses too (plain bicubic uses -0.75).
_AA_BICUBIC_A = -0.5


def _aa_bicubic_kernel(x: float) -> float:
    x = abs(x)
    if x < 1.0:
        return ((_AA_BICUBIC_A + 2.0) * x - (_AA_BICUBIC_A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return (((x - 5.0) * x + 8.0) * x - 4.0) * _AA_BICUBIC_A
    return 0.0


@functools.lru_cache(maxsize=64)
def aa_bicubic_weights(in_size: int, out_size: int) -> tuple[tuple[float, ...], ...]:
    """The (out_size, in_size) matrix of ``F.interpolate(mode='bicubic', antialias=True, align_corners=False)``
    along one axis: when shrinking, the kernel widens by the scale so every input sample is averaged in."""
    scale = in_size / out_size
    support = 2.0 * max(scale, 1.0)
    stretch = 1.0 / max(scale, 1.0)
    rows = []
    for index in range(out_size):
        centre = scale * (index + 0.5)
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        taps = [_aa_bicubic_kernel((tap - centre + 0.5) * stretch) for tap in range(first, last)]
        total = math.fsum(taps)
        row = [0.0] * in_size
        for offset, weight in enumerate(taps):
            row[first + offset] = weight / total if total else 0.0
        rows.append(tuple(row))
    return tuple(rows)


def resample_grid_embed(embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int]) -> torch.Tensor:
    """Resample a (B, H*W, C) embedding learned on ``old_grid`` to ``new_grid`` with antialiased bicubic
    interpolation (as timm's ``resample_abs_pos_embed``).

    When exporting at a static size it is two small matrix products with constant weights instead, the same
    function in ops every exporter and runtime has (ExecuTorch's core ATen set has no antialiased upsampling).
    """
    (new_h, new_w), (old_h, old_w) = new_grid, old_grid
    channels = embed.shape[-1]
    grid = embed.reshape(embed.shape[0], old_h, old_w, channels)
    if grid.dtype in (torch.float16, torch.bfloat16):
        grid = grid.float()  # the antialiased kernels have no half-precision CPU implementation
    if torch.compiler.is_exporting() and all(isinstance(size, int) for size in (new_h, new_w, old_h, old_w)):
        rows = grid.new_tensor(aa_bicubic_weights(old_h, new_h))
        cols = grid.new_tensor(aa_bicubic_weights(old_w, new_w))
        resampled = torch.einsum("ph,bhwc,qw->bpqc", rows, grid, cols)
    else:
        resampled = F.interpolate(
            grid.permute(0, 3, 1, 2), size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False
        ).permute(0, 2, 3, 1)
    return resampled.reshape(embed.shape[0], new_h * new_w, channels).to(embed.dtype)


@trace_leaf
def grid_pos_embed(pos_embed: torch.Tensor, grid_size: tuple[int, int], trained_grid: tuple[int, int],
                   num_prefix_tokens: int = 0) -> torch.Tensor:
    """The (1, P + H·W, C) position embedding of a ``grid_size`` patch grid: as trained, or its patch rows resampled
    from ``trained_grid`` (:func:`resample_grid_embed`) with its ``num_prefix_tokens`` leading rows (class token)
    kept. An FX leaf: the choice depends on the input's size, which a symbolic trace cannot branch on."""
    grid_size, trained_grid = tuple(grid_size), tuple(trained_grid)
    if grid_size == trained_grid:
        return pos_embed
    patches = resample_grid_embed(pos_embed[:, num_prefix_tokens:], grid_size, trained_grid)
    if not num_prefix_tokens:
        return patches
    return torch.cat([pos_embed[:, :num_prefix_tokens], patches], dim=1)
