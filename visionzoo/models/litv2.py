"""LITv2: "Fast Vision Transformers with HiLo Attention", Pan, Cai and Zhuang, NeurIPS 2022 (arXiv 2205.13213).

A four-stage pyramid (patch 4, widths C·(1, 2, 4, 8)). Stages 1–2 hold MLP-only blocks whose MLP has a
depthwise 3×3 conv (no token mixer: early high-resolution attention is what LITv1 found redundant);
stages 3–4 add HiLo attention (:class:`visionzoo.layers.hilo.HiLoAttention`, window 2 in stage 3,
global in stage 4). Stages are joined by deformable token merging (DTM): a 2×2 stride-2 deformable
conv whose offsets start at zero, BatchNorm and GELU.

Unlike the official classification code (fixed build size), this model runs at any input size like the
official detection backbone: images are zero-padded to a multiple of 4, HiLo pads its windows and crops
back, DTM floors odd sides. Official checkpoints load through :func:`checkpoint_filter_fn`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq
from torch import nn

from visionzoo.layers.deform_conv import DeformConv2d
from visionzoo.layers.drop import DropPath, drop_path_rates
from visionzoo.layers.dwconv_mlp import DwConvMlp
from visionzoo.layers.hilo import HiLoAttention
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.models._base import Backbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family

__all__ = ["LITv2", "checkpoint_filter_fn"]

PATCH_SIZE = 4
# Smallest side whose stage-4 grid is non-empty: ceil(side / 4) must be at least 8.
MIN_INPUT_SIZE = 29


class ConvFfnBlock(nn.Module):
    """Stage 1–2 block: x + DropPath(DwConvMlp(LN(x))), no token mixer."""

    def __init__(self, dim: int, mlp_ratio: float, drop: float, drop_path: float, device=None, dtype=None):
        super().__init__()
        self.norm2 = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.mlp = DwConvMlp(dim, int(dim * mlp_ratio), drop=drop, device=device, dtype=dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HiLoBlock(nn.Module):
    """Stage 3–4 block: x + DropPath(HiLo(LN(x))), then x + DropPath(DwConvMlp(LN(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        alpha: float,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        drop_path: float,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.attn = HiLoAttention(dim, num_heads, window_size, alpha, qkv_bias=qkv_bias, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.mlp = DwConvMlp(dim, int(dim * mlp_ratio), drop=drop, device=device, dtype=dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DeformableTokenMerging(nn.Module):
    """DTM: (B, H, W, C) → deformable 2×2/stride-2 conv → BatchNorm → GELU → (B, ⌊H/2⌋, ⌊W/2⌋, out_dim)."""

    def __init__(self, dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.dconv = DeformConv2d(dim, out_dim, kernel_size=2, stride=2, device=device, dtype=dtype)
        self.norm = nn.BatchNorm2d(out_dim, device=device, dtype=dtype)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.dconv(x.permute(0, 3, 1, 2)))).permute(0, 2, 3, 1)

    @torch.no_grad()
    def fuse(self) -> nn.Module:
        """Deploy form: fold the eval-mode BatchNorm into the deformable conv, linear in its weight and bias."""
        if isinstance(self.norm, nn.BatchNorm2d):
            scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
            self.dconv.bias.copy_((self.dconv.bias - self.norm.running_mean) * scale + self.norm.bias)
            self.dconv.weight.mul_(scale.view(-1, 1, 1, 1))
            self.norm = nn.Identity()
        return self


class LITv2Stage(nn.Module):
    """DTM from the previous stage's width (all stages but the first), then blocks, on (B, H, W, C) maps."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        downsample: bool,
        num_heads: int,
        window_size: int,
        use_attention: bool,
        alpha: float,
        mlp_ratio: float,
        qkv_bias: bool,
        drop: float,
        drop_path: Sequence[float],
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = (
            DeformableTokenMerging(in_dim, dim, device=device, dtype=dtype) if downsample else nn.Identity()
        )
        if use_attention:
            blocks = [
                HiLoBlock(dim, num_heads, window_size, alpha, mlp_ratio, qkv_bias, drop, rate, device, dtype)
                for rate in drop_path
            ]
        else:
            blocks = [ConvFfnBlock(dim, mlp_ratio, drop, rate, device, dtype) for rate in drop_path]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class LITv2(Backbone):
    """LITv2 image classifier and feature pyramid (strides 4, 8, 16, 32) at any input size ≥ 29 pixels."""

    model_name = "LITv2"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_sizes: Sequence[int] = (0, 0, 2, 1),
        attention_stages: Sequence[bool] = (False, False, True, True),
        alpha: float = 0.9,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes, min_input_size=MIN_INPUT_SIZE)
        if not len(depths) == len(num_heads) == len(window_sizes) == len(attention_stages):
            raise ValueError("depths, num_heads, window_sizes and attention_stages need one entry per stage")
        widths = [embed_dim * 2**index for index in range(len(depths))]
        self.num_features = self.head_hidden_size = widths[-1]

        self.patch_embed = PatchEmbed(
            in_chans, embed_dim, PATCH_SIZE, norm_layer=nn.LayerNorm, device=device, dtype=dtype
        )
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info, in_dim = [], [], embed_dim
        for index, width in enumerate(widths):
            stages.append(
                LITv2Stage(
                    in_dim, width, index > 0, num_heads[index], window_sizes[index], attention_stages[index], alpha,
                    mlp_ratio, qkv_bias, drop_rate, rates[sum(depths[:index]):sum(depths[:index + 1])],
                    device=device, dtype=dtype,
                )
            )
            self.feature_info.append(dict(num_chs=width, reduction=PATCH_SIZE * 2**index, module=f"stages.{index}"))
            in_dim = width
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features, device=device, dtype=dtype)
        self._init_pooled_head(num_classes, global_pool, drop_rate, device=device, dtype=dtype)
        self._init_linears()

    def _init_linears(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
                (r"^head", (99999,)),
            ],
        )

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the input to a multiple of the patch size, patchify to a (B, H/4, W/4, C) map."""
        height, width = x.shape[-2:]
        x = F.pad(x, (0, (-width) % PATCH_SIZE, 0, (-height) % PATCH_SIZE))
        return self.patch_embed(x).permute(0, 2, 3, 1)

    def stage_feature(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x).permute(0, 3, 1, 2)

    def prune_neck(self) -> None:
        self.norm = nn.Identity()


_OFFICIAL_RENAMES = (
    # The official DTM closes stage i; ours opens stage i + 1, so its features are the stage outputs.
    (re.compile(r"^layers\.(\d+)\.downsample\.norm_layer\."), lambda m: f"stages.{int(m[1]) + 1}.downsample.norm."),
    (re.compile(r"^layers\.(\d+)\.downsample\."), lambda m: f"stages.{int(m[1]) + 1}.downsample."),
    (re.compile(r"\.mlp\.dwconv\.dwconv\."), lambda m: ".mlp.dwconv."),
    (re.compile(r"^layers\.(\d+)\.blocks\."), lambda m: f"stages.{m[1]}.blocks."),
)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: LITv2) -> dict[str, torch.Tensor]:
    """Convert the official ``ziplab/LITv2`` layout (or ours, passed through) to this model's names.

    Training checkpoints (``{'model': ...}``, ``module.`` prefixes) are unwrapped first. The official
    classification model stores no buffers beyond BatchNorm statistics, which carry over.
    """
    state_dict = _unwrap(state_dict, "the state dict")
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in _OFFICIAL_RENAMES:
            key = pattern.sub(replacement, key)
        converted[key] = value
    return converted




def _cfg(input_size: tuple[int, int, int] = (3, 224, 224), **kwargs) -> dict:
    return {
        "num_classes": 1000,
        "input_size": input_size,
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": (input_size[1] // 32, input_size[2] // 32),
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2205.13213",
        "paper_name": "Fast Vision Transformers with HiLo Attention",
        "origin_url": "https://github.com/ziplab/LITv2",
        **kwargs,
    }


# Tags, sources and eval settings come from the model card (visionzoo/cards/litv2.yaml); the 384 fine-tune is
# evaluated on a direct bicubic resize to 384×384 (no centre crop).
default_cfgs = generate_default_cfgs(pretrained_cfgs("litv2", _cfg))


def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    return build_model_with_cfg(
        LITv2,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **dict(MODEL_ARGS[variant], **kwargs),
    )


# Variant table (paper Table 1 / official configs): stem width, depths, heads. Shared: head dim 32,
# alpha 0.9, HiLo windows (-, -, 2, 1). Training used drop_path_rate 0.2 / 0.3 / 0.5.
MODEL_ARGS = {
    "vz_litv2_small": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "vz_litv2_medium": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "vz_litv2_base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


@register_model
def vz_litv2_small(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-S: 27.8M params, 3.7 GMACs at 224, 82.0% ImageNet top-1."""
    return _create_litv2("vz_litv2_small", pretrained, **kwargs)


@register_model
def vz_litv2_medium(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-M: 48.8M params, 7.5 GMACs at 224, 83.3% ImageNet top-1."""
    return _create_litv2("vz_litv2_medium", pretrained, **kwargs)


@register_model
def vz_litv2_base(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B: 86.5M params, 13.2 GMACs at 224 (83.6% top-1), 39.7 GMACs at 384 (84.7%)."""
    return _create_litv2("vz_litv2_base", pretrained, **kwargs)


FAMILY = register_family(Family(name="litv2", model_classes=(LITv2,), checkpoint_filter_fn=checkpoint_filter_fn))
