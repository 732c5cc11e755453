"""OverLoCK: An Overview-first-Look-Closely-next ConvNet with Context-Mixing Dynamic Kernels (Lou & Yu, CVPR 2025,
arXiv 2502.20087).

Three sub-networks: the Base-Net (a stem and three stages of reparameterisable large-kernel conv blocks) makes a
stride-16 map; the Overview-Net (one more downsample and stage) turns it into a coarse stride-32 context; the
Focus-Net runs dynamic-kernel blocks on the stride-16 and stride-32 maps, each carrying the context as extra
channels. A Focus-Net block predicts, per pixel and channel group, a 5×5 and a K×K kernel from the affinity of its
query with 7×7 pooled context tokens, and aggregates values over border-clamped neighbourhoods (NATTEN's
``na2d_av``, here :func:`visionzoo.ops.neighborhood_av`).

Module layout: ``stem``; ``stages.0``-``stages.2`` the Base-Net stages, ``stages.3`` the Overview-Net,
``context_proj`` its projection to the context width, ``stages.4`` / ``stages.5`` the Focus-Net stages (their
outputs, stride-16 and stride-32 maps with the context channels appended, are the last two pyramid levels);
``neck`` (1×1 conv, BN, SiLU) and ``head``. ``aux_head=True`` adds the Overview-Net's auxiliary classifier, which
only the paper's training loss uses (``aux_logits``); without it the released files' ``aux_head`` tensors are
dropped on load, and no parameter of the model goes unused by ``forward``. ``deploy=True`` builds the
reparameterised form of the official ``*_reparam`` checkpoints; ``visionzoo.layers.fuse_model`` reaches it (and
folds every BatchNorm) from the training form.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d, SEModule, trunc_normal_
from timm.layers.grn import GlobalResponseNorm
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from visionzoo.layers.dilated_reparam import DilatedReparamBlock
from visionzoo.layers.drop import DropPath, drop_path_rates
from visionzoo.layers.stages import check_nchw_only
from visionzoo.models._base import Backbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family
from visionzoo.ops import neighborhood_av
from visionzoo.ops.neighborhood_attention import neighbor_indices

__all__ = ["OverLoCK", "checkpoint_filter_fn"]

SMALL_KERNEL = 5
CONTEXT_TOKENS = 7  # the key side pools the context to 7×7 region tokens


def _neighborhood_bias(rpb: torch.Tensor, height: int, width: int, kernel_size: int) -> torch.Tensor:
    """NATTEN's relative position bias for border-clamped k×k windows: (G, 2k-1, 2k-1) → (G, H, W, k·k)."""
    _, rows = neighbor_indices(height, kernel_size, 1, rpb.device)
    _, cols = neighbor_indices(width, kernel_size, 1, rpb.device)
    return rpb[:, rows[:, None, :, None], cols[None, :, None, :]].flatten(-2)


def _cover_kernel(value: torch.Tensor, features: torch.Tensor, kernel_size: int):
    """Upsample both maps bilinearly so that the shorter side is ``kernel_size`` (the other scaled alike, truncated),
    as the official code does for maps smaller than the large kernel; maps that cover it pass unchanged."""
    height, width = value.shape[-2:]
    if min(height, width) >= kernel_size:
        return value, features
    if height < width:
        size = (kernel_size, int(kernel_size / height * width))
    else:
        size = (int(kernel_size / width * height), kernel_size)
    resize = lambda x: F.interpolate(x, size=size, mode="bilinear", align_corners=False)  # noqa: E731
    return resize(value), resize(features)


def _pool_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Average-pool ``x`` back to ``like``'s spatial size when :func:`_cover_kernel` enlarged it."""
    return x if x.shape[-2:] == like.shape[-2:] else F.adaptive_avg_pool2d(x, like.shape[-2:])


def _resize_like(context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(context, size=x.shape[-2:], mode="bilinear", align_corners=False)


# Size-dependent choices and index tables: symbolic traces call them whole and so run at any input size.
for _name in ("_neighborhood_bias", "_cover_kernel", "_pool_to", "_resize_like"):
    torch.fx.wrap(_name)


class ChannelAffine(nn.Module):
    """Per-channel scale and shift as a depthwise 1×1 conv (the official ``LayerScale``; weight (C, 1, 1, 1))."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, 1, 1, 1, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, groups=x.shape[1])


class ResidualDWConv(nn.Conv2d):
    """x + DWConv3×3(x) (with bias)."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__(dim, dim, 3, padding=1, groups=dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, dd=None) -> nn.Sequential:
    dd = dd or {}
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False, **dd),
        nn.BatchNorm2d(out_chs, **dd),
    )


def _squeeze_excite(dim: int, dd) -> SEModule:
    return SEModule(dim, rd_channels=max(16, dim // 8), act_layer=nn.GELU, **dd)


def _conv_mlp(dim: int, hidden: int, dd) -> list[nn.Module]:
    """1×1 up, GELU, residual 3×3 depthwise, GRN, 1×1 down."""
    return [
        nn.Conv2d(dim, hidden, 1, **dd), nn.GELU(), ResidualDWConv(hidden, **dd),
        GlobalResponseNorm(hidden, channels_last=False, **dd), nn.Conv2d(hidden, dim, 1, **dd),
    ]


class OverLoCKStem(nn.Sequential):
    """Four 3×3 conv + BN units (GELU between), strides 2, 1, 2, 1: widths C/2, C/2, C, C."""

    def __init__(self, in_chans: int, dim: int, device=None, dtype=None):
        dd = dict(device=device, dtype=dtype)
        layers, in_chs = [], in_chans
        for index, (out_chs, stride) in enumerate(((dim // 2, 2), (dim // 2, 1), (dim, 2), (dim, 1))):
            layers += [*_conv_bn(in_chs, out_chs, 3, stride, dd)] + ([nn.GELU()] if index < 3 else [])
            in_chs = out_chs
        super().__init__(*layers)


class OverLoCKRepConvBlock(nn.Module):
    """Base-/Overview-Net block: x + DWConv3×3(x), then LS(x) + P(x) with P = LN → dilated reparam conv → BN → SE
    → conv MLP (GRN) → drop path; LS (stages 3-4) scales the shortcut, not the branch."""

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: float, layer_scale: bool, drop_path: float,
                 deploy: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dwconv = ResidualDWConv(dim, **dd)
        self.proj = nn.Sequential(
            LayerNorm2d(dim, eps=1e-6, **dd),
            DilatedReparamBlock(dim, kernel_size, deploy=deploy, **dd),
            nn.BatchNorm2d(dim, **dd),
            _squeeze_excite(dim, dd),
            *_conv_mlp(dim, int(dim * mlp_ratio), dd),
            DropPath(drop_path) if drop_path > 0 else nn.Identity(),
        )
        self.ls = ChannelAffine(dim, **dd) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(x)
        return self.ls(x) + self.proj(x)


class OverLoCKDynamicConvBlock(nn.Module):
    """Focus-Net block on the concatenation [x (C) | context h (Cc)] and a reference context r (Cc).

    Context-mixing dynamic conv: per-pixel 5×5 and K×K kernels for G channel groups, from the affinity between the
    pixel's query and 49 pooled context tokens (shared 49 → 25 + K² projection, relative position bias, softmax),
    aggregate two halves of the fused features over border-clamped neighbourhoods; then a large-kernel positional
    term, SE, a SiLU gate, and the conv MLP. ``first`` (the first Focus-Net block) takes h as it comes; later blocks
    mix it with r through two per-channel affines.
    """

    def __init__(self, dim: int, context_dim: int, kernel_size: int, groups: int, mlp_ratio: float,
                 drop_path: float, first: bool = False, deploy: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        fused_dim = dim + context_dim
        self.dim, self.context_dim = dim, context_dim
        self.kernel_size, self.groups = kernel_size, groups
        # The official scale uses C / G, twice the width of a group's query.
        self.scale = (dim // groups) ** -0.5
        self.rpb1 = nn.Parameter(torch.zeros(groups, 2 * SMALL_KERNEL - 1, 2 * SMALL_KERNEL - 1, **dd))
        self.rpb2 = nn.Parameter(torch.zeros(groups, 2 * kernel_size - 1, 2 * kernel_size - 1, **dd))
        if not first:
            self.x_scale = ChannelAffine(context_dim, **dd)
            self.h_scale = ChannelAffine(context_dim, **dd)
        self.dwconv1 = ResidualDWConv(fused_dim, **dd)
        self.norm1 = LayerNorm2d(fused_dim, eps=1e-6, **dd)
        self.fusion = nn.Sequential(
            nn.Conv2d(fused_dim, fused_dim, 3, padding=1, groups=fused_dim, **dd),
            nn.BatchNorm2d(fused_dim, **dd),
            nn.GELU(),
            nn.Conv2d(fused_dim, dim, 1, **dd),
            GlobalResponseNorm(dim, channels_last=False, **dd),
        )
        self.weight_query = _conv_bn(dim, dim // 2, dd=dd)
        self.weight_key = nn.Sequential(nn.AdaptiveAvgPool2d(CONTEXT_TOKENS), *_conv_bn(context_dim, dim // 2, dd=dd))
        self.weight_proj = nn.Conv2d(CONTEXT_TOKENS**2, kernel_size**2 + SMALL_KERNEL**2, 1, **dd)
        self.dyconv_proj = _conv_bn(dim, dim, dd=dd)
        self.lepe = nn.Sequential(DilatedReparamBlock(dim, kernel_size, deploy=deploy, **dd), nn.BatchNorm2d(dim, **dd))
        self.se_layer = _squeeze_excite(dim, dd)
        self.gate = nn.Sequential(*_conv_bn(dim, dim, dd=dd), nn.SiLU())
        self.proj = nn.Sequential(nn.BatchNorm2d(dim, **dd), nn.Conv2d(dim, fused_dim, 1, **dd))
        self.dwconv2 = ResidualDWConv(fused_dim, **dd)
        self.norm2 = LayerNorm2d(fused_dim, eps=1e-6, **dd)
        self.mlp = nn.Sequential(*_conv_mlp(fused_dim, int(dim * mlp_ratio), dd))
        self.ls1 = ChannelAffine(fused_dim, **dd)
        self.ls2 = ChannelAffine(fused_dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def dynamic_conv(self, value: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Aggregate ``value`` (B, C, H, W) with kernels predicted from ``features`` (B, C + Cc, H, W)."""
        enlarged_value, features = _cover_kernel(value, features, self.kernel_size)
        batch, _, height, width = enlarged_value.shape
        groups = self.groups
        query, context = features.split([self.dim, self.context_dim], dim=1)
        query = (self.weight_query(query) * self.scale).reshape(batch, groups, -1, height * width)
        key = self.weight_key(context).reshape(batch, groups, -1, CONTEXT_TOKENS**2)
        affinity = (query.transpose(-1, -2) @ key).permute(0, 3, 1, 2)  # (B, 49 tokens, G, H·W)
        logits = self.weight_proj(affinity).permute(0, 2, 3, 1).reshape(batch, groups, height, width, -1)
        small, large = logits.split([SMALL_KERNEL**2, self.kernel_size**2], dim=-1)
        small = (small + _neighborhood_bias(self.rpb1, height, width, SMALL_KERNEL)).softmax(-1)
        large = (large + _neighborhood_bias(self.rpb2, height, width, self.kernel_size)).softmax(-1)
        halves = enlarged_value.reshape(batch, 2, groups, -1, height, width).permute(1, 0, 2, 4, 5, 3)
        out = torch.cat([
            neighborhood_av(small, halves[0], SMALL_KERNEL),
            neighborhood_av(large, halves[1], self.kernel_size),
        ], dim=1)  # (B, 2G, H, W, C / 2G): small-kernel groups, then large-kernel groups
        out = out.permute(0, 1, 4, 2, 3).reshape(batch, self.dim, height, width)
        return _pool_to(out, value)

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "x_scale"):
            x, context = x.split([self.dim, self.context_dim], dim=1)
            x = torch.cat([x, self.x_scale(context) + self.h_scale(reference)], dim=1)
        shortcut = self.dwconv1(x)
        features = self.norm1(shortcut)
        fused = self.fusion(features)
        gate = self.gate(fused)
        y = self.dyconv_proj(self.dynamic_conv(fused, features)) + self.lepe(fused)
        y = self.proj(gate * self.se_layer(y))
        x = self.dwconv2(self.ls1(shortcut) + self.drop_path(y))
        return self.ls2(x) + self.drop_path(self.mlp(self.norm2(x)))


class OverLoCKStage(nn.Module):
    """Base-/Overview-Net stage: optional 3×3 / 2 conv + BN downsample, then reparameterisable conv blocks."""

    def __init__(self, in_chs: int, dim: int, depth: int, kernel_size: int, mlp_ratio: float, layer_scale: bool,
                 drop_path_rates: list[float], downsample: bool, deploy: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.downsample = _conv_bn(in_chs, dim, 3, 2, dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            OverLoCKRepConvBlock(dim, kernel_size, mlp_ratio, layer_scale, rate, deploy, **dd)
            for rate in drop_path_rates
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class OverLoCKContextDownsample(nn.Module):
    """3×3 / 2 conv + BN on each part of [x | h]: x widens to the next stage's width, h keeps its width."""

    def __init__(self, in_chs: int, out_chs: int, context_dim: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.in_chs = in_chs
        self.x_proj = _conv_bn(in_chs, out_chs, 3, 2, dd)
        self.h_proj = _conv_bn(context_dim, context_dim, 3, 2, dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, context = x.split([self.in_chs, x.shape[1] - self.in_chs], dim=1)
        return torch.cat([self.x_proj(x), self.h_proj(context)], dim=1)


class OverLoCKFocusStage(nn.Module):
    """Focus-Net stage on [x | h] with reference context r. The first (stride 16) starts h as the context
    resized to x's grid, which is also its r; the second (stride 32) downsamples [x | h] and uses the stride-32
    context itself as r. Returns [x | h]."""

    def __init__(self, in_chs: int, dim: int, context_dim: int, depth: int, kernel_size: int, groups: int,
                 mlp_ratio: float, drop_path_rates: list[float], downsample: bool, deploy: bool = False,
                 device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.downsample = OverLoCKContextDownsample(in_chs, dim, context_dim, **dd) if downsample else None
        self.blocks = nn.ModuleList([
            OverLoCKDynamicConvBlock(dim, context_dim, kernel_size, groups, mlp_ratio, rate,
                                     first=not downsample and index == 0, deploy=deploy, **dd)
            for index, rate in enumerate(drop_path_rates)
        ])

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.downsample is None:
            context = _resize_like(context, x)
            x = torch.cat([x, context], dim=1)
        else:
            x = self.downsample(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, context, use_reentrant=False)
            else:
                x = block(x, context)
        return x


class OverLoCK(Backbone):
    """OverLoCK backbone and classifier (arXiv 2502.20087); any input size, 4-level pyramid at strides 4-32
    (the last two levels carry the context channels)."""

    model_name = "OverLoCK"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: tuple[int, ...] = (64, 128, 256, 512),
        depths: tuple[int, ...] = (4, 4, 6, 2),
        focus_depths: tuple[int, int] = (12, 2),
        focus_groups: tuple[int, int] = (8, 16),
        kernel_sizes: tuple[int, ...] = (17, 15, 13, 7),
        mlp_ratio: float = 4.0,
        focus_mlp_ratio: float = 3.0,
        head_dim: int = 1024,
        aux_head: bool = False,
        deploy: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes)
        if not (len(embed_dims) == len(depths) == len(kernel_sizes) == 4
                and len(focus_depths) == len(focus_groups) == 2):
            raise ValueError(
                f"OverLoCK needs 4 embed_dims, depths and kernel_sizes and 2 focus_depths and focus_groups, got "
                f"{len(embed_dims)}, {len(depths)}, {len(kernel_sizes)}, {len(focus_depths)} and {len(focus_groups)}"
            )
        dd = dict(device=device, dtype=dtype)
        context_dim = embed_dims[3] // 4
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = head_dim
        rates = drop_path_rates(drop_path_rate, sum(depths) + sum(focus_depths))
        starts = [sum(depths[:index]) for index in range(4)] + [sum(depths), sum(depths) + focus_depths[0]]

        self.stem = OverLoCKStem(in_chans, embed_dims[0], **dd)
        stages = [
            OverLoCKStage(
                embed_dims[max(index - 1, 0)], embed_dims[index], depths[index], kernel_sizes[index], mlp_ratio,
                layer_scale=index >= 2, drop_path_rates=rates[starts[index] : starts[index] + depths[index]],
                downsample=index > 0, deploy=deploy, **dd,
            )
            for index in range(4)
        ]
        for level, index in enumerate((2, 3)):
            stages.append(OverLoCKFocusStage(
                embed_dims[1 + level], embed_dims[index], context_dim, focus_depths[level], kernel_sizes[index],
                focus_groups[level], focus_mlp_ratio,
                rates[starts[4 + level] : starts[4 + level] + focus_depths[level]],
                downsample=level == 1, deploy=deploy, **dd,
            ))
        self.stages = nn.ModuleList(stages)
        self.context_proj = nn.Conv2d(embed_dims[3], context_dim, 1, **dd)
        self.aux_head = nn.Sequential(
            nn.BatchNorm2d(embed_dims[3], **dd), nn.AdaptiveAvgPool2d(1),
            *([nn.Conv2d(embed_dims[3], num_classes, 1, **dd)] if num_classes > 0 else []),
        ) if aux_head else None
        self.neck = nn.Sequential(*_conv_bn(embed_dims[3] + context_dim, head_dim, dd=dd), nn.SiLU())
        self.feature_info = [
            dict(num_chs=embed_dims[0], reduction=4, module="stages.0"),
            dict(num_chs=embed_dims[1], reduction=8, module="stages.1"),
            dict(num_chs=embed_dims[2] + context_dim, reduction=16, module="stages.4"),
            dict(num_chs=embed_dims[3] + context_dim, reduction=32, module="stages.5"),
        ]
        self.apply(self._init_weights)
        self._init_pooled_head(num_classes, global_pool, drop_rate, **dd)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def _levels(self, x: torch.Tensor, last: int) -> list[torch.Tensor]:
        """Pyramid levels 0..``last`` from the stem's output."""
        levels = [self.stages[0](x)]
        if last >= 1:
            levels.append(self.stages[1](levels[0]))
        if last >= 2:
            x = self.stages[2](levels[1])
            context = self.context_proj(self.stages[3](x))
            levels.append(self.stages[4](x, context))
            if last >= 3:
                levels.append(self.stages[5](levels[2], context))
        return levels

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(x)

    def prune_neck(self) -> None:
        self.neck = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.neck(self._levels(self.stem(x), 3)[-1])

    def forward_intermediates(self, x, indices=None, norm=False, stop_early=False, output_fmt="NCHW",
                              intermediates_only=False):
        """Pyramid levels at ``indices`` (timm's meaning); ``norm`` passes the last level through the neck."""
        check_nchw_only(output_fmt, self.model_name)
        self.check_input(x)
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last = max_index if stop_early or intermediates_only else len(self.feature_info) - 1
        levels = self._levels(self.stem(x), last)
        intermediates = [
            self.neck(levels[index]) if norm and index == len(self.feature_info) - 1 else levels[index]
            for index in take_indices
        ]
        if intermediates_only:
            return intermediates
        final = self.neck(levels[-1]) if last == len(self.feature_info) - 1 else levels[-1]
        return final, intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm=False, prune_head=True) -> list[int]:
        """Drop what only levels after the last of ``indices`` need (and the auxiliary head); the neck with
        ``prune_norm`` or when level 3 goes. Returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.stages = self.stages[: (1, 2, 5, 6)[max_index]]
        self.aux_head = None
        if max_index < 2:
            self.context_proj = nn.Identity()
        if max_index < 3 or prune_norm:
            self.prune_neck()
        if max_index < 3:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if self.aux_head is not None:
            width = self.aux_head[0].num_features
            conv = [nn.Conv2d(width, num_classes, 1, **self._factory_kwargs())] if num_classes > 0 else []
            self.aux_head = nn.Sequential(*self.aux_head[:2], *conv)

    def aux_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary classifier's logits on the Overview-Net's context, for the paper's training loss
        (cross-entropy on the main logits + 0.4 × on these); the model needs ``aux_head=True``."""
        if self.aux_head is None:
            raise RuntimeError(f"{self.model_name} was built without its auxiliary head; pass aux_head=True")
        self.check_input(x)
        return self.aux_head(self.stages[3](self.stages[2](self.stages[1](self.stages[0](self.stem(x)))))).flatten(1)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            # context_proj runs between the Overview-Net (stage 3) and the Focus-Net (stage 4).
            blocks=[(r"^stages\.(\d+)", None), (r"^context_proj", (3.5,))] if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^context_proj", (3.5,)),
                (r"^neck|^aux_head", (99999,)),
            ],
        )


def _official_key(key: str) -> str:
    for pattern, replacement in _OFFICIAL_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


_OFFICIAL_RENAMES = (
    (r"^patch_embed1\.", "stem."),
    (r"^patch_embed([234])\.", lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (r"^blocks([1234])\.", lambda m: f"stages.{int(m[1]) - 1}.blocks."),
    (r"^sub_blocks3\.", "stages.4.blocks."),
    (r"^sub_blocks4\.", "stages.5.blocks."),
    (r"^patch_embedx\.", "stages.5.downsample."),
    (r"^high_level_proj\.", "context_proj."),
    (r"^head\.([01])\.", r"neck.\1."),
    (r"^head\.4\.", "head."),
    (r"\.(proj\.3|se_layer)\.proj\.1\.", r".\1.fc1."),
    (r"\.(proj\.3|se_layer)\.proj\.3\.", r".\1.fc2."),
    (r"\.gamma$", ".weight"),
    (r"\.beta$", ".bias"),
)


def _reparam_into_branches(state_dict: dict, own: dict) -> dict:
    """Load merged ``lk_origin`` kernels (a ``_reparam`` file) into a training-form model: the merged conv goes to
    ``lk_origin`` with an identity ``origin_bn`` carrying its bias, and the dilated branches are zero, so the
    eval-mode function is the merged one exactly."""
    converted = dict(state_dict)
    for key in [k for k in state_dict if k.endswith("lk_origin.bias")]:
        block = key[: -len("lk_origin.bias")]
        bias = converted.pop(key)
        norm = f"{block}origin_bn."
        eps = 1e-5  # nn.BatchNorm2d's default, which every OverLoCK BatchNorm uses
        converted.update({
            f"{norm}weight": torch.ones_like(bias), f"{norm}bias": bias,
            f"{norm}running_mean": torch.zeros_like(bias), f"{norm}running_var": torch.full_like(bias, 1 - eps),
            f"{norm}num_batches_tracked": torch.zeros((), dtype=torch.long),
        })
        for name, tensor in own.items():
            if name.startswith(f"{block}dil_"):
                if name.endswith("running_var") or (".dil_bn_" in name and name.endswith(".weight")):
                    converted[name] = torch.ones_like(tensor)
                else:
                    converted[name] = torch.zeros_like(tensor)
    return converted


def _branches_into_reparam(state_dict: dict, model: nn.Module) -> dict:
    """Merge the dilated branches of a training-form file for a ``deploy=True`` model."""
    converted = dict(state_dict)
    for name, module in model.named_modules():
        if not isinstance(module, DilatedReparamBlock) or f"{name}.origin_bn.weight" not in state_dict:
            continue
        prefix = f"{name}."
        trained = DilatedReparamBlock(module.lk_origin.in_channels, module.kernel_size)
        trained.load_state_dict({k[len(prefix):]: converted.pop(k) for k in list(converted) if k.startswith(prefix)})
        merged = trained.eval().fuse()
        converted[f"{prefix}lk_origin.weight"] = merged.weight.detach()
        converted[f"{prefix}lk_origin.bias"] = merged.bias.detach()
    return converted


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert the official release's layouts (``overlock_*_in1k_224.pth`` and ``..._reparam.pth``) into ours,
    for either form of the model; our own layout passes through."""
    state_dict = _unwrap(state_dict, "the OverLoCK state dict")
    if "patch_embed1.0.weight" in state_dict:
        converted = {}
        for key, value in state_dict.items():
            key = _official_key(key)
            if key == "head.weight":
                value = value.flatten(1)  # a 1×1 conv there, our classifier is linear
            if re.search(r"\.(proj\.7|fusion\.4|mlp\.3)\.(weight|bias)$", key):
                value = value.flatten()  # GRN's (1, C, 1, 1) gamma / beta
            converted[key] = value
        state_dict = converted
    own = model.state_dict()
    if not any(key.startswith("aux_head.") for key in own):
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("aux_head.")}
    model_is_merged = not any(key.endswith("origin_bn.weight") for key in own)
    file_is_merged = any(key.endswith("lk_origin.bias") for key in state_dict)
    if file_is_merged and not model_is_merged:
        return _reparam_into_branches(state_dict, own)
    if model_is_merged and not file_is_merged:
        return _branches_into_reparam(state_dict, model)
    return state_dict


def _create_overlock(variant: str, pretrained: bool = False, **kwargs) -> OverLoCK:
    return build_model_with_cfg(
        OverLoCK, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **dict(MODEL_ARGS[variant], **kwargs),
    )


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.95, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0", "classifier": "head",
        "license": "apache-2.0", "paper_ids": "arXiv:2502.20087",
        "origin_url": "https://github.com/LMMMEng/OverLoCK",
        **kwargs,
    }


# Tags, sources and eval settings come from the model card (visionzoo/cards/overlock.yaml).
default_cfgs = generate_default_cfgs(pretrained_cfgs("overlock", _cfg))

# Widths, Base-/Overview-Net depths, Focus-Net depths and dynamic-kernel groups (twice the official sub_num_heads).
MODEL_ARGS = {
    "vz_overlock_xt": dict(embed_dims=(56, 112, 256, 336), depths=(2, 2, 3, 2), focus_depths=(6, 2),
                           focus_groups=(8, 12)),
    "vz_overlock_t": dict(embed_dims=(64, 128, 256, 512), depths=(4, 4, 6, 2), focus_depths=(12, 2),
                          focus_groups=(8, 16)),
    "vz_overlock_s": dict(embed_dims=(64, 128, 320, 512), depths=(6, 6, 8, 3), focus_depths=(16, 3),
                          focus_groups=(16, 32)),
    "vz_overlock_b": dict(embed_dims=(80, 160, 384, 576), depths=(8, 8, 10, 4), focus_depths=(20, 4),
                          focus_groups=(12, 18)),
}


@register_model
def vz_overlock_xt(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-XT: 16M params (reparameterised), 2.6 GFLOPs at 224, 82.7 % IN-1k top-1."""
    return _create_overlock("vz_overlock_xt", pretrained, **kwargs)


@register_model
def vz_overlock_t(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-T: 33M params (reparameterised), 5.5 GFLOPs at 224, 84.2 % IN-1k top-1."""
    return _create_overlock("vz_overlock_t", pretrained, **kwargs)


@register_model
def vz_overlock_s(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-S: 56M params (reparameterised), 9.7 GFLOPs at 224, 84.8 % IN-1k top-1."""
    return _create_overlock("vz_overlock_s", pretrained, **kwargs)


@register_model
def vz_overlock_b(pretrained: bool = False, **kwargs) -> OverLoCK:
    """OverLoCK-B: 95M params (reparameterised), 16.7 GFLOPs at 224, 85.1 % IN-1k top-1."""
    return _create_overlock("vz_overlock_b", pretrained, **kwargs)


FAMILY = register_family(Family(name="overlock", model_classes=(OverLoCK,), checkpoint_filter_fn=checkpoint_filter_fn))
