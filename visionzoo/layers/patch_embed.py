"""Patch embeddings: a single strided conv (ViT style) and a stack of stride-2 ConvNorm layers."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from visionzoo.layers.conv_bn import ConvNorm


class PatchEmbed(nn.Module):
    """Non-overlapping (or overlapping, with ``kernel_size > patch_size``) conv patchify to an NCHW map."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int,
        kernel_size: int | None = None,
        norm_layer: type[nn.Module] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        kernel_size = kernel_size or patch_size
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size, stride=patch_size, padding=(kernel_size - patch_size + 1) // 2,
            device=device, dtype=dtype,
        )
        self.norm = norm_layer(embed_dim, device=device, dtype=dtype) if norm_layer else nn.Identity()
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if isinstance(self.norm, nn.LayerNorm):
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.norm(x)


class ConvStem(nn.Sequential):
    """``len(widths)`` ConvNorm 3×3/stride-2 layers with an activation between them (none after the last)."""

    def __init__(
        self,
        in_chans: int,
        widths: Sequence[int],
        act_layer: type[nn.Module] = nn.ReLU,
        device=None,
        dtype=None,
    ):
        super().__init__()
        prev = in_chans
        for index, width in enumerate(widths):
            self.add_module(f"conv{index}", ConvNorm(prev, width, 3, 2, device=device, dtype=dtype))
            if index < len(widths) - 1:
                self.add_module(f"act{index}", act_layer())
            prev = width
        self.stride = 2 ** len(widths)
