"""S2AFormer: "S2AFormer: Strip Self-Attention for Efficient Vision Transformer", Xu, Huang, Jia, Li, Gao and Qi,
IEEE TIP 2025 (arXiv 2505.22195). **A reconstruction**: no code or weights were published and the paper's
configuration table could not be read.

From the paper (through its abstract and second-hand summaries; ``shared/specs/s2aformer.md`` §3): a
four-stage pyramid (strides 4–32) after a three-conv stem whose first conv has stride 2; each stage is a patch
embedding and Hybrid Perception Blocks (:class:`visionzoo.layers.strip_attention.HybridPerceptionBlock`:
depthwise-conv residual, strip self-attention with spatially reduced K/V and channel-compressed Q/K, LIM, MLP).

Zoo decisions (sheet §5, fitted to the published parameter and MAC budgets): stem width C₁/2 with BN/GELU;
stride-2 3×3 conv + BN patch embeddings; K/V reduction r = 8, 4, 2, 1; Q/K width max(8·heads, C/4) with
heads = C // 32; MLP ratio 4; LIM = dwconv 3×3 → BN → GELU → 1×1; a BatchNorm → average pool → linear head.

Any input size runs: strided convs round up, and SSA zero-pads a map whose sides are not multiples of r
(including one smaller than r) before the reduction. Every BatchNorm except the head's folds away with
:func:`visionzoo.layers.fuse.fuse_model`.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from visionzoo.layers.drop import drop_path_rates
from visionzoo.layers.strip_attention import HybridPerceptionBlock
from visionzoo.models._base import Backbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family

__all__ = ["S2AFormer", "checkpoint_filter_fn"]

STEM_STRIDE = 2


def _conv_bn(in_dim: int, out_dim: int, stride: int, dd: dict) -> list[tuple[str, nn.Module]]:
    return [
        ("conv", nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1, bias=False, **dd)),
        ("bn", nn.BatchNorm2d(out_dim, **dd)),
    ]


class S2AFormerStem(nn.Sequential):
    """Three 3×3 convs (the first stride 2), BN after each, GELU between: (B, 3, H, W) → (B, S, ⌈H/2⌉, ⌈W/2⌉)."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        layers = []
        for index, (in_dim, stride) in enumerate(((in_chans, 2), (dim, 1), (dim, 1))):
            layers += [(f"{name}{index + 1}", module) for name, module in _conv_bn(in_dim, dim, stride, dd)]
            if index < 2:
                layers.append((f"act{index + 1}", nn.GELU()))
        super().__init__(OrderedDict(layers))


class S2AFormerDownsample(nn.Sequential):
    """Patch embedding: a stride-2 3×3 conv and BN (sides round up)."""

    def __init__(self, in_dim: int, dim: int, device=None, dtype=None):
        super().__init__(OrderedDict(_conv_bn(in_dim, dim, 2, dict(device=device, dtype=dtype))))


class S2AFormerStage(nn.Module):
    """Patch embedding from the previous width, then ``len(drop_path)`` Hybrid Perception Blocks."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_heads: int,
        qk_dim: int,
        reduction: int,
        mlp_ratio: float,
        drop_path: Sequence[float],
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsample = S2AFormerDownsample(in_dim, dim, **dd)
        self.blocks = nn.Sequential(*[
            HybridPerceptionBlock(dim, qk_dim, num_heads, reduction, mlp_ratio, rate, **dd) for rate in drop_path
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class S2AFormer(Backbone):
    """S2AFormer classifier and feature pyramid (strides 4, 8, 16, 32), NCHW throughout, at any input size."""

    model_name = "S2AFormer"

    def __init__(
        self,
        embed_dims: Sequence[int] = (24, 48, 128, 512),
        depths: Sequence[int] = (1, 1, 4, 1),
        num_heads: Sequence[int] = (1, 1, 4, 16),
        qk_dims: Sequence[int] = (8, 12, 32, 128),
        reductions: Sequence[int] = (8, 4, 2, 1),
        stem_dim: int | None = None,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes)
        lengths = {len(embed_dims), len(depths), len(num_heads), len(qk_dims), len(reductions)}
        if len(lengths) != 1:
            raise ValueError(
                f"embed_dims, depths, num_heads, qk_dims and reductions need one entry per stage, got lengths "
                f"{len(embed_dims)}, {len(depths)}, {len(num_heads)}, {len(qk_dims)}, {len(reductions)}"
            )
        dd = dict(device=device, dtype=dtype)
        stem_dim = embed_dims[0] // 2 if stem_dim is None else stem_dim
        self.stem = S2AFormerStem(in_chans, stem_dim, **dd)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info, prev, start = [], [], stem_dim, 0
        for index, (dim, depth) in enumerate(zip(embed_dims, depths)):
            stages.append(S2AFormerStage(
                prev, dim, num_heads[index], qk_dims[index], reductions[index], mlp_ratio,
                rates[start:start + depth], **dd,
            ))
            reduction = STEM_STRIDE * 2 ** (index + 1)
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{index}"))
            prev, start = dim, start + depth
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.norm = nn.BatchNorm2d(prev, **dd)
        self._init_pooled_head(num_classes, global_pool, drop_rate, **dd)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)

    def prune_neck(self) -> None:
        self.norm = nn.Identity()


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: S2AFormer) -> dict[str, torch.Tensor]:
    """No layout but ours exists (nothing was published): unwrap training checkpoints (``model`` / ``state_dict``,
    ``module.`` prefixes) and pass the tensors through."""
    return _unwrap(state_dict, "the checkpoint")


def _cfg(input_size: tuple[int, int, int] = (3, 224, 224), **kwargs) -> dict:
    return {
        "num_classes": 1000,
        "input_size": input_size,
        "pool_size": (input_size[1] // 32, input_size[2] // 32),
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1",
        "classifier": "head",
        "paper_ids": "arXiv:2505.22195",
        "paper_name": "S2AFormer: Strip Self-Attention for Efficient Vision Transformer",
        **kwargs,
    }


# No weights exist; the card lists none, so each variant gets one tagless cfg.
default_cfgs = generate_default_cfgs(pretrained_cfgs("s2aformer", _cfg))


def _create_s2aformer(variant: str, pretrained: bool = False, **kwargs) -> S2AFormer:
    return build_model_with_cfg(
        S2AFormer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **dict(MODEL_ARGS[variant], **kwargs),
    )


# The sheet's budget-fitted design (§5.2), not the paper's Table I (unreadable): widths, depths, heads, Q/K
# widths; shared: stem C₁/2, reductions (8, 4, 2, 1), MLP ratio 4. Drop-path rates live in the recipes.
MODEL_ARGS = {
    "vz_s2aformer_mini": dict(
        embed_dims=(24, 48, 128, 512), depths=(1, 1, 4, 1), num_heads=(1, 1, 4, 16), qk_dims=(8, 12, 32, 128)
    ),
    "vz_s2aformer_t": dict(
        embed_dims=(32, 64, 128, 512), depths=(1, 1, 8, 1), num_heads=(1, 2, 4, 16), qk_dims=(8, 16, 32, 128)
    ),
    "vz_s2aformer_xs": dict(
        embed_dims=(32, 64, 192, 512), depths=(2, 2, 4, 1), num_heads=(1, 2, 6, 16), qk_dims=(8, 16, 48, 128)
    ),
    "vz_s2aformer_s": dict(
        embed_dims=(32, 64, 384, 512), depths=(1, 1, 3, 1), num_heads=(1, 2, 12, 16), qk_dims=(8, 16, 96, 128)
    ),
    "vz_s2aformer_m": dict(
        embed_dims=(48, 96, 384, 512), depths=(1, 1, 11, 1), num_heads=(1, 3, 12, 16), qk_dims=(12, 24, 96, 128)
    ),
}


@register_model
def vz_s2aformer_mini(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-mini (reconstruction): paper 5.02M params, 0.43 GMACs at 224, 75.1% top-1."""
    return _create_s2aformer("vz_s2aformer_mini", pretrained, **kwargs)


@register_model
def vz_s2aformer_t(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-T (reconstruction): paper 5.80M params, 0.655 GMACs at 224, 77.7% top-1."""
    return _create_s2aformer("vz_s2aformer_t", pretrained, **kwargs)


@register_model
def vz_s2aformer_xs(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-XS (reconstruction): paper 6.54M params, 0.786 GMACs at 224, 78.9% top-1."""
    return _create_s2aformer("vz_s2aformer_xs", pretrained, **kwargs)


@register_model
def vz_s2aformer_s(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-S (reconstruction): paper 10.69M params, 1.38 GMACs at 224, 80.8% top-1."""
    return _create_s2aformer("vz_s2aformer_s", pretrained, **kwargs)


@register_model
def vz_s2aformer_m(pretrained: bool = False, **kwargs) -> S2AFormer:
    """S2AFormer-M (reconstruction): paper 24.87M params, 4.12 GMACs at 224, 82.3% top-1."""
    return _create_s2aformer("vz_s2aformer_m", pretrained, **kwargs)


FAMILY = register_family(
    Family(name="s2aformer", model_classes=(S2AFormer,), checkpoint_filter_fn=checkpoint_filter_fn)
)
