"""SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design.

Seokju Yun and Youngmin Ro, CVPR 2024, https://arxiv.org/abs/2401.16456 (code: https://github.com/ysj9909/SHViT).

A four-conv 16×16 stem feeds three stages at strides 16, 32 and 64. Every block is a depthwise-conv residual,
then (stages 2 and 3) global single-head attention on a slice of the channels, then a pointwise FFN. Stage
transitions wrap an inverted-bottleneck patch merging with squeeze-excite between two conv/FFN pairs. There is
no positional embedding, so any input size works. Every BatchNorm folds away with
:func:`visionzoo.layers.fuse.fuse_model`, and so does the identity of each depthwise residual.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import SqueezeExcite
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from visionzoo.layers.attention import SingleHeadSelfAttention
from visionzoo.layers.conv_bn import ConvNorm, NormLinear
from visionzoo.layers.drop import drop_path_rates
from visionzoo.layers.mlp import ConvNormFfn
from visionzoo.layers.patch_embed import ConvStem
from visionzoo.layers.residual import Residual
from visionzoo.models._base import Backbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family

__all__ = ["SHViT", "checkpoint_filter_fn"]

STEM_STRIDE = 16


def _channels_last_for_cpu_inference(x: torch.Tensor, training: bool) -> torch.Tensor:
    """oneDNN's convolutions, nearly all of SHViT's CPU time, run faster on NHWC maps; every layer keeps the
    format, so converting the input once suffices. Compilers and exporters choose layouts themselves."""
    if training or x.device.type != "cpu" or torch.compiler.is_compiling():
        return x
    return x.contiguous(memory_format=torch.channels_last)


# A device switch, which a symbolic trace cannot follow: traced graphs call it as one node.
torch.fx.wrap("_channels_last_for_cpu_inference")


def _depthwise_residual(dim: int, bn_weight_init: float, drop_path: float, dd: dict) -> Residual:
    return Residual(ConvNorm(dim, dim, 3, groups=dim, bn_weight_init=bn_weight_init, **dd), drop_path)


def _ffn_residual(dim: int, drop_path: float, dd: dict) -> Residual:
    return Residual(ConvNormFfn(dim, dim * 2, **dd), drop_path)


class PatchMerging(nn.Sequential):
    """Stride-2 inverted bottleneck (expansion 4) with squeeze-excite on the expanded map."""

    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        hidden = in_dim * 4
        super().__init__(OrderedDict(
            conv1=ConvNorm(in_dim, hidden, **dd),
            act1=nn.ReLU(),
            conv2=ConvNorm(hidden, hidden, 3, stride=2, groups=hidden, **dd),
            act2=nn.ReLU(),
            se=SqueezeExcite(hidden, rd_ratio=0.25, **dd),
            conv3=ConvNorm(hidden, out_dim, **dd),
        ))


class SHViTBlock(nn.Module):
    """Depthwise-conv residual → optional single-head attention residual → FFN residual."""

    def __init__(
        self,
        dim: int,
        qk_dim: int,
        partial_dim: int,
        use_attention: bool,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        # The block's branches start at zero (BN weight 0), so a fresh block is the identity.
        self.conv = _depthwise_residual(dim, 0.0, drop_path, dd)
        self.mixer = (
            Residual(SingleHeadSelfAttention(dim, qk_dim, partial_dim, **dd), drop_path)
            if use_attention else nn.Identity()
        )
        self.ffn = _ffn_residual(dim, drop_path, dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.mixer(self.conv(x)))


class SHViTStage(nn.Module):
    """An optional transition (conv/FFN pair, patch merging, conv/FFN pair) followed by ``depth`` blocks."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        depth: int,
        qk_dim: int,
        partial_dim: int,
        use_attention: bool,
        drop_path: Sequence[float],
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.downsample = nn.Sequential(
            _depthwise_residual(in_dim, 1.0, 0.0, dd),
            _ffn_residual(in_dim, 0.0, dd),
            PatchMerging(in_dim, dim, **dd),
            _depthwise_residual(dim, 1.0, 0.0, dd),
            _ffn_residual(dim, 0.0, dd),
        ) if in_dim != dim else nn.Identity()
        self.blocks = nn.Sequential(*[
            SHViTBlock(dim, qk_dim, partial_dim, use_attention, drop_path[index], **dd) for index in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing:
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class SHViT(Backbone):
    """SHViT backbone and classifier (global pool → BatchNorm1d → Linear)."""

    model_name = "SHViT"
    global_pools = ("avg", "max", "avgmax", "")

    def __init__(
        self,
        embed_dims: Sequence[int] = (128, 224, 320),
        depths: Sequence[int] = (2, 4, 5),
        partial_dims: Sequence[int] = (32, 48, 68),
        use_attention: Sequence[bool] = (False, True, True),
        qk_dim: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes, min_input_size=STEM_STRIDE)
        if not len(embed_dims) == len(depths) == len(partial_dims) == len(use_attention):
            raise ValueError(
                f"embed_dims, depths, partial_dims and use_attention need one entry per stage, got lengths "
                f"{len(embed_dims)}, {len(depths)}, {len(partial_dims)}, {len(use_attention)}"
            )
        if embed_dims[0] % 8:
            raise ValueError(
                f"embed_dims[0] must be divisible by 8 (the stem widths are C/8, C/4, C/2, C), got {embed_dims[0]}"
            )
        dd = dict(device=device, dtype=dtype)

        first = embed_dims[0]
        self.stem = ConvStem(in_chans, [first // 8, first // 4, first // 2, first], **dd)
        # Stochastic depth grows linearly over the blocks (not the transitions); the paper trains with none.
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info, prev, start = [], [], first, 0
        for index, (dim, depth) in enumerate(zip(embed_dims, depths)):
            stages.append(SHViTStage(
                prev, dim, depth, qk_dim, partial_dims[index], use_attention[index], rates[start:start + depth], **dd
            ))
            self.feature_info.append(dict(num_chs=dim, reduction=STEM_STRIDE * 2**index, module=f"stages.{index}"))
            prev, start = dim, start + depth
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = prev
        self._init_pooled_head(num_classes, global_pool, drop_rate, **dd)

    def _make_classifier(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return NormLinear(self.head_hidden_size, num_classes, device=device, dtype=dtype)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        # The deploy form (fuse_model) replaces the NormLinear head with the folded Linear.
        return self.head.linear if isinstance(self.head, NormLinear) else self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.stages(self.stem(_channels_last_for_cpu_inference(x, self.training)))


def _official_to_timm(key: str) -> str:
    """Official ``blocks{s}.{j}`` → timm's ``stages.{s-1}``; stages 2-3 keep their transition at j = 0, 1, 2."""
    match = re.match(r"blocks(\d)\.(\d+)\.", key)
    if match is None:
        return key
    stage, index, rest = int(match[1]) - 1, int(match[2]), key[match.end():]
    if stage == 0:
        return f"stages.0.blocks.{index}.{rest}"
    if index >= 3:
        return f"stages.{stage}.blocks.{index - 3}.{rest}"
    if index == 1:
        return f"stages.{stage}.downsample.2.{rest}"
    # Entries 0 and 2 are (depthwise residual, FFN residual) pairs around the patch merging.
    part, rest = rest.split(".", 1)
    return f"stages.{stage}.downsample.{int(part) + (3 if index == 2 else 0)}.{rest}"


def _timm_to_ours(key: str) -> str:
    key = re.sub(r"^patch_embed\.(\d+)\.", lambda m: f"stem.conv{int(m[1]) // 2}.", key)
    key = re.sub(r"(^|\.)c\.", r"\1conv.", key)
    return re.sub(r"^head\.l\.", "head.linear.", key)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert our layout (unchanged), timm's ``shvit_s*`` layout or the official release's layout to ours.

    Wrappers (``model``, ``state_dict``) and DistributedDataParallel ``module.`` prefixes are removed. As in the
    official loader, a 2-D tensor where the model holds a 1×1 conv weight is reshaped into that conv weight.
    """
    own = model.state_dict()
    converted = {}
    for key, value in _unwrap(state_dict, "the state dict").items():
        key = _timm_to_ours(_official_to_timm(key))
        target = own.get(key)
        if target is not None and value.dim() == 2 and target.dim() == 4 and target.shape[2:] == (1, 1):
            value = value[:, :, None, None]
        converted[key] = value
    return converted




def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (4, 4), "min_input_size": (3, STEM_STRIDE, STEM_STRIDE),
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv0.conv", "classifier": "head.linear",
        "license": "mit",
        "paper_ids": "arXiv:2401.16456",
        "paper_name": "SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design",
        "origin_url": "https://github.com/ysj9909/SHViT",
        **kwargs,
    }


# Tags, sources and eval settings come from the model card (visionzoo/cards/shvit.yaml).
default_cfgs = generate_default_cfgs(pretrained_cfgs("shvit", _cfg))


def _create_shvit(variant: str, pretrained: bool = False, **kwargs: Any) -> SHViT:
    return build_model_with_cfg(
        SHViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2), flatten_sequential=True),
        **dict(MODEL_ARGS[variant], **kwargs),
    )


# Widths (C1, C2, C3), blocks per stage and attention widths P2, P3 (the stage-1 value is unused) [code].
MODEL_ARGS = {
    "vz_shvit_s1": dict(embed_dims=(128, 224, 320), depths=(2, 4, 5), partial_dims=(32, 48, 68)),
    "vz_shvit_s2": dict(embed_dims=(128, 308, 448), depths=(2, 4, 5), partial_dims=(32, 66, 96)),
    "vz_shvit_s3": dict(embed_dims=(192, 352, 448), depths=(3, 5, 5), partial_dims=(48, 75, 96)),
    "vz_shvit_s4": dict(embed_dims=(224, 336, 448), depths=(4, 7, 6), partial_dims=(48, 72, 96)),
}


@register_model
def vz_shvit_s1(pretrained: bool = False, **kwargs: Any) -> SHViT:
    return _create_shvit("vz_shvit_s1", pretrained, **kwargs)


@register_model
def vz_shvit_s2(pretrained: bool = False, **kwargs: Any) -> SHViT:
    return _create_shvit("vz_shvit_s2", pretrained, **kwargs)


@register_model
def vz_shvit_s3(pretrained: bool = False, **kwargs: Any) -> SHViT:
    return _create_shvit("vz_shvit_s3", pretrained, **kwargs)


@register_model
def vz_shvit_s4(pretrained: bool = False, **kwargs: Any) -> SHViT:
    return _create_shvit("vz_shvit_s4", pretrained, **kwargs)


FAMILY = register_family(Family(name="shvit", model_classes=(SHViT,), checkpoint_filter_fn=checkpoint_filter_fn))
