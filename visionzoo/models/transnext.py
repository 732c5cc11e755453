"""TransNeXt: Robust Foveal Visual Perception for Vision Transformers (Dai Shi, CVPR 2024, arXiv 2311.17132).

A four-stage pyramid of overlapping patch embeddings and blocks that mix tokens with aggregated
(pixel-focused) attention, a 3×3 sliding window plus pooled tokens under one softmax, and a
convolutional-GLU feed-forward; the last stage uses full attention. Official code:
https://github.com/DaiShiResearch/TransNeXt (Apache-2.0).

Unlike the official classification model, every grid-dependent quantity (window padding mask, length
scale, pooled grid, continuous position bias) is computed at forward time from the actual input, so one
checkpoint serves every input size; at the construction size the outputs are the official ones.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq
from torch import nn

from visionzoo.layers.aggregated_attention import AggregatedAttention, LengthScaledCosineAttention
from visionzoo.layers.conv_glu import ConvGlu
from visionzoo.layers.drop import DropPath, drop_path_rates
from visionzoo.models._base import Backbone
from visionzoo.models._checkpoint import _unwrap as unwrap_state_dict
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family

__all__ = ["TransNeXt", "checkpoint_filter_fn"]

# Buffers the official code stores for one fixed input size; the zoo recomputes them per forward.
OFFICIAL_SIZE_BUFFERS = ("relative_pos_index", "relative_coords_table", "seq_length_scale", "padding_mask")


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping kernels (padding k // 2), then LayerNorm; NCHW in, NHWC out."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2, device=device, dtype=dtype
        )
        self.norm = nn.LayerNorm(out_chs, eps=1e-5, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class TransNeXtBlock(nn.Module):
    """Pre-norm block on NHWC maps: x + mixer(LN(x)), then x + ConvGLU(LN(x)), both with stochastic depth."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        pretrain_size: tuple[int, int],
        window_size: int = 3,
        fixed_pool_size: int | None = None,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **factory)
        if sr_ratio > 1:
            self.attn = AggregatedAttention(
                dim, num_heads, sr_ratio, pretrain_size, window_size=window_size,
                fixed_pool_size=fixed_pool_size, **factory,
            )
        else:
            self.attn = LengthScaledCosineAttention(dim, num_heads, pretrain_size, **factory)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **factory)
        # The GLU's two hidden halves together cost what an MLP of ratio mlp_ratio would.
        self.mlp = ConvGlu(dim, int(2 * int(dim * mlp_ratio) / 3), **factory)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class TransNeXtStage(nn.Module):
    """Patch embedding, blocks and the stage LayerNorm; NCHW map in, normalised NCHW map out."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        pretrain_size: tuple[int, int],
        first: bool,
        window_size: int = 3,
        fixed_pool_size: int | None = None,
        drop_path_rates: list[float] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        kernel_size, stride = (7, 4) if first else (3, 2)
        self.patch_embed = OverlapPatchEmbed(in_chs, out_chs, kernel_size, stride, **factory)
        drop_path_rates = drop_path_rates or [0.0] * depth
        self.blocks = nn.Sequential(*[
            TransNeXtBlock(
                out_chs, num_heads, mlp_ratio, sr_ratio, pretrain_size, window_size=window_size,
                fixed_pool_size=fixed_pool_size, drop_path=drop_path_rates[index], **factory,
            )
            for index in range(depth)
        ])
        self.norm = nn.LayerNorm(out_chs, eps=1e-6, **factory)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x).permute(0, 3, 1, 2)


class TransNeXt(Backbone):
    """TransNeXt classifier/backbone (arXiv 2311.17132).

    ``pretrain_size`` is the training resolution that normalises the continuous-position-bias offsets (keep
    the checkpoint's value when running at another size); ``fixed_pool_size`` fixes the pooled grid of the
    aggregated-attention stages to P×P (the paper's linear-complexity inference mode) instead of H/sr × W/sr.
    """

    model_name = "TransNeXt"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: tuple[int, ...] = (48, 96, 192, 384),
        num_heads: tuple[int, ...] = (2, 4, 8, 16),
        depths: tuple[int, ...] = (2, 2, 15, 2),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        window_size: int = 3,
        pretrain_size: int = 224,
        fixed_pool_size: int | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes)
        lengths = {len(embed_dims), len(num_heads), len(depths), len(mlp_ratios), len(sr_ratios)}
        if len(lengths) != 1:
            raise ValueError("embed_dims, num_heads, depths, mlp_ratios and sr_ratios need one entry per stage")
        factory = dict(device=device, dtype=dtype)
        self.num_features = self.head_hidden_size = embed_dims[-1]

        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info = [], []
        prev_chs = in_chans
        for index, depth in enumerate(depths):
            reduction = 2 ** (index + 2)
            stage_pretrain = pretrain_size // reduction
            stages.append(TransNeXtStage(
                prev_chs, embed_dims[index], depth, num_heads[index], mlp_ratios[index], sr_ratios[index],
                (stage_pretrain, stage_pretrain), first=index == 0, window_size=window_size,
                fixed_pool_size=fixed_pool_size if sr_ratios[index] > 1 else None,
                drop_path_rates=rates[sum(depths[:index]):sum(depths[:index + 1])], **factory,
            ))
            self.feature_info.append(dict(num_chs=embed_dims[index], reduction=reduction, module=f"stages.{index}"))
            # The smallest input whose every stage still pools to at least one token.
            pooled_side = fixed_pool_size if fixed_pool_size and sr_ratios[index] > 1 else sr_ratios[index]
            self.min_input_size = max(self.min_input_size, reduction * pooled_side)
            prev_chs = embed_dims[index]
        self.stages = nn.Sequential(*stages)
        self._init_pooled_head(num_classes, global_pool, drop_rate, **factory)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, std=(2.0 / fan_out) ** 0.5)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        keywords = ("query_embedding", "relative_pos_bias_local", "cpb", "temperature")
        return {name for name, _ in self.named_parameters() if any(word in name for word in keywords)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stages\.0\.patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.(?:patch_embed|norm)", (99999,)),
            ],
        )

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return x  # each stage opens with its own patch embedding


def _official_key(key: str) -> str:
    key = re.sub(r"^patch_embed(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.patch_embed.", key)
    key = re.sub(r"^block(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.", key)
    key = re.sub(r"^norm(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm.", key)
    return key.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv.")


def checkpoint_filter_fn(state_dict: Mapping, model: nn.Module) -> dict:
    """Convert a checkpoint to this layout: ours passes through; the official one (``patch_embed1``,
    ``block1.0``, ``norm1``, ``mlp.dwconv.dwconv``) is renamed, and its size-specific buffers are dropped."""
    state_dict = unwrap_state_dict(state_dict, "the state dict")
    if not any(key.startswith(("patch_embed1.", "block1.")) for key in state_dict):
        return state_dict
    return {
        _official_key(key): value
        for key, value in state_dict.items()
        if key.rsplit(".", 1)[-1].rstrip("0123456789") not in OFFICIAL_SIZE_BUFFERS
    }


def _create_transnext(variant: str, pretrained: bool = False, **kwargs) -> TransNeXt:
    return build_model_with_cfg(
        TransNeXt,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **dict(MODEL_ARGS[variant], **kwargs),
    )




def _cfg(input_size: tuple[int, int, int] = (3, 224, 224), **kwargs) -> dict:
    return {
        "num_classes": 1000,
        "input_size": input_size,
        "pool_size": (input_size[1] // 32, input_size[2] // 32),
        # The official evaluation centre-crops 87.5 % below 384 and warps to the square at 384 and above; the
        # card's eval settings of each tag say which.
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2311.17132",
        "paper_name": "TransNeXt: Robust Foveal Visual Perception for Vision Transformers",
        "origin_url": "https://github.com/DaiShiResearch/TransNeXt",
        **kwargs,
    }


# Tags, sources and eval settings come from the model card (visionzoo/cards/transnext.yaml).
default_cfgs = generate_default_cfgs(pretrained_cfgs("transnext", _cfg))

# embed_dims, num_heads, depths (head dim 24 throughout; mlp ratios 8, 8, 4, 4).
MODEL_ARGS = {
    "vz_transnext_micro": dict(embed_dims=(48, 96, 192, 384), num_heads=(2, 4, 8, 16), depths=(2, 2, 15, 2)),
    "vz_transnext_tiny": dict(embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), depths=(2, 2, 15, 2)),
    "vz_transnext_small": dict(embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24), depths=(5, 5, 22, 5)),
    "vz_transnext_base": dict(embed_dims=(96, 192, 384, 768), num_heads=(4, 8, 16, 32), depths=(5, 5, 23, 5)),
    # Aggregated attention in all four stages (paper App. D.6), trained at 256.
    "vz_transnext_micro_aaaa": dict(
        embed_dims=(48, 96, 192, 384), num_heads=(2, 4, 8, 16), depths=(2, 2, 15, 2),
        sr_ratios=(16, 8, 4, 2), pretrain_size=256,
    ),
}


@register_model
def vz_transnext_micro(pretrained: bool = False, **kwargs) -> TransNeXt:
    return _create_transnext("vz_transnext_micro", pretrained, **kwargs)


@register_model
def vz_transnext_tiny(pretrained: bool = False, **kwargs) -> TransNeXt:
    return _create_transnext("vz_transnext_tiny", pretrained, **kwargs)


@register_model
def vz_transnext_small(pretrained: bool = False, **kwargs) -> TransNeXt:
    return _create_transnext("vz_transnext_small", pretrained, **kwargs)


@register_model
def vz_transnext_base(pretrained: bool = False, **kwargs) -> TransNeXt:
    return _create_transnext("vz_transnext_base", pretrained, **kwargs)


@register_model
def vz_transnext_micro_aaaa(pretrained: bool = False, **kwargs) -> TransNeXt:
    return _create_transnext("vz_transnext_micro_aaaa", pretrained, **kwargs)


FAMILY = register_family(Family(name="transnext", model_classes=(TransNeXt,), checkpoint_filter_fn=checkpoint_filter_fn))
