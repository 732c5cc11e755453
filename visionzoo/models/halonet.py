"""HaloNet: "Scaling Local Self-Attention for Parameter Efficient Visual Backbones" (Vaswani et al., CVPR 2021,
arXiv 2103.12731).

ResNet-style bottleneck networks whose 3×3 convs are replaced, in some or all blocks, by blocked local
self-attention with a halo (``visionzoo.ops.halo``). Two groups of variants:

* ``vz_halonet26t``, ``vz_sehalonet33ts``, ``vz_halonet50ts``, ``vz_eca_halonext26ts``: the hybrids timm trained
  (the only HaloNet weights that exist); the state-dict layout is timm's, so its checkpoints load unchanged.
* ``vz_halonet_h0`` … ``vz_halonet_h4``: the paper's all-attention family (architecture only; H1 equals timm's
  ``halonet_h1``).

Unlike timm's, these models run at any input size that is a multiple of 32: each halo layer pads its map to
whole blocks and masks the padding, which leaves block-aligned sizes (multiples of 256 for block 8) unchanged.
In eval mode a conv + BatchNorm pair runs as one conv with the BatchNorm folded in where that is cheaper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, make_divisible
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from visionzoo.layers.stages import check_nchw_only
from visionzoo.layers.conv_bn import fuse_conv_bn
from visionzoo.layers.drop import DropPath, drop_path_rates
from visionzoo.layers.halo import HaloAttention
from visionzoo.models._base import Backbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family

NETWORK_STRIDE = 32
_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU}


@dataclass(frozen=True)
class HaloNetCfg:
    """One variant: four stages of bottleneck ('bottle') and halo-attention ('halo') blocks."""

    widths: tuple[int, ...]  # block output channels per stage
    block_types: tuple[tuple[str, ...], ...]  # per stage, the type of each block
    bottle_ratios: tuple[float, ...]  # block mid width = make_divisible(width · ratio)
    block_size: int = 8
    halo_size: int = 3
    num_heads: tuple[int, ...] = (8, 8, 8, 8)
    dim_head: int | None = None  # per-head query/key width; None: the value width
    stem: str = "tiered"  # 'tiered': three 3×3 convs (24, 32, 64 ch); '7x7': one 7×7 conv (64 ch)
    stem_pool: bool = True  # max-pool after the stem; without it the last stem conv has stride 2
    act: str = "relu"
    channel_attn: str | None = None  # 'se' or 'eca' after the 3×3 conv of bottleneck blocks
    group_size: int | None = None  # channels per group of the bottleneck 3×3 conv; None: dense
    num_features: int = 0  # width of a final 1×1 conv before the head; 0: none


class ConvBnAct(nn.Module):
    """Conv (no bias) → BatchNorm → activation; in eval mode the BatchNorm is folded into the conv where cheaper.

    Not an ``nn.Sequential`` (unlike ``layers.conv_bn.ConvNorm``): timm's feature extraction flattens
    top-level Sequentials, and ``final_conv`` must stay one feature module.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act_layer: type[nn.Module] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False,
            device=device, dtype=dtype,
        )
        self.bn = nn.BatchNorm2d(out_chs, device=device, dtype=dtype)
        self.act = act_layer(inplace=True) if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        # Folding rescales the weights on every call, a BatchNorm pass reads and writes the output map:
        # fold where the weights per output pixel are fewer than the output pixels per channel. Exporters get
        # the plain pair, which they fold themselves into constant weights, and so does an FX symbolic trace,
        # which cannot branch on the input's size.
        if self.training or torch.compiler.is_exporting() or is_fx_symbolic_tracing():
            return self.act(self.bn(conv(x)))
        out_pixels = x.shape[0] * (x.shape[-2] // conv.stride[0]) * (x.shape[-1] // conv.stride[1])
        if conv.weight[0].numel() > out_pixels:
            return self.act(self.bn(conv(x)))
        scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = self.bn.bias - self.bn.running_mean * scale
        return self.act(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups))

    def fuse(self) -> ConvAct:
        """The deploy form: one conv with the BatchNorm folded in for good (static weights, as exporters need)."""
        return ConvAct(fuse_conv_bn(self.conv, self.bn), self.act)


class ConvAct(nn.Module):
    """A conv whose BatchNorm is folded in, then the activation: :meth:`ConvBnAct.fuse`'s result."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv = conv
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class BatchNormAct(nn.BatchNorm2d):
    """BatchNorm2d followed by an activation, with BatchNorm2d's parameter names."""

    def __init__(self, num_features: int, act_layer: type[nn.Module], device=None, dtype=None):
        super().__init__(num_features, device=device, dtype=dtype)
        self.act = act_layer(inplace=True)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        _check_batch_norm_2d_input(x)  # BatchNorm2d's check, in a form a symbolic trace records as one call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def _check_batch_norm_2d_input(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected 4D input (got {x.dim()}D input)")


torch.fx.wrap("_check_batch_norm_2d_input")


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate: channel means → 1×1 conv → ReLU → 1×1 conv → sigmoid."""

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        reduced = make_divisible(channels / 16, 8, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, reduced, 1, device=device, dtype=dtype)
        self.fc2 = nn.Conv2d(reduced, channels, 1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)), inplace=True))
        return x * gate.sigmoid()


class EfficientChannelAttention(nn.Module):
    """ECA gate: channel means → 1D conv across channels (kernel grows with log2 channels) → sigmoid."""

    def __init__(self, channels: int, device=None, dtype=None):
        super().__init__()
        odd = int(abs(math.log2(channels) + 1) / 2)
        kernel_size = max(odd if odd % 2 else odd + 1, 3)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv(x.mean((2, 3))[:, None, :])
        return x * gate.sigmoid()[:, 0, :, None, None]


_CHANNEL_ATTENTION = {"se": SqueezeExcite, "eca": EfficientChannelAttention}


def _shortcut(in_chs: int, out_chs: int, stride: int, dd: dict) -> nn.Module:
    if in_chs == out_chs and stride == 1:
        return nn.Identity()
    return ConvBnAct(in_chs, out_chs, 1, stride, **dd)


class ResidualBlock(nn.Module):
    """Shared tail of both block types: out = act(branch(x) + shortcut(x)), branch ending in ``conv3_1x1``."""

    def _residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        # In place: on CPU a fresh activation-sized buffer costs more (page faults) than the add itself.
        out = self.drop_path(branch)
        out += self.shortcut(x)
        return self.act(out)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.conv3_1x1.bn.weight)


class BottleneckBlock(ResidualBlock):
    """1×1 reduce → 3×3 conv (strided, optionally grouped) → [SE / ECA] → 1×1 expand, plus shortcut."""

    def __init__(self, in_chs, out_chs, mid_chs, stride, cfg: HaloNetCfg, drop_path_rate=0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        act_layer = _ACTIVATIONS[cfg.act]
        groups = mid_chs // cfg.group_size if cfg.group_size else 1
        self.shortcut = _shortcut(in_chs, out_chs, stride, dd)
        self.conv1_1x1 = ConvBnAct(in_chs, mid_chs, 1, act_layer=act_layer, **dd)
        self.conv2_kxk = ConvBnAct(mid_chs, mid_chs, 3, stride, groups=groups, act_layer=act_layer, **dd)
        self.attn = _CHANNEL_ATTENTION[cfg.channel_attn](mid_chs, **dd) if cfg.channel_attn else nn.Identity()
        self.conv3_1x1 = ConvBnAct(mid_chs, out_chs, 1, **dd)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual(x, self.conv3_1x1(self.attn(self.conv2_kxk(self.conv1_1x1(x)))))


class HaloBlock(ResidualBlock):
    """1×1 reduce → halo attention (strided queries to downsample) → BN + act → 1×1 expand, plus shortcut."""

    def __init__(
        self, in_chs, out_chs, mid_chs, stride, cfg: HaloNetCfg, num_heads=8, drop_path_rate=0.0, device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        act_layer = _ACTIVATIONS[cfg.act]
        self.shortcut = _shortcut(in_chs, out_chs, stride, dd)
        self.conv1_1x1 = ConvBnAct(in_chs, mid_chs, 1, act_layer=act_layer, **dd)
        self.self_attn = HaloAttention(
            mid_chs, stride=stride, num_heads=num_heads, dim_head=cfg.dim_head, block_size=cfg.block_size,
            halo_size=cfg.halo_size, **dd,
        )
        self.post_attn = BatchNormAct(mid_chs, act_layer, **dd)
        self.conv3_1x1 = ConvBnAct(mid_chs, out_chs, 1, **dd)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._residual(x, self.conv3_1x1(self.post_attn(self.self_attn(self.conv1_1x1(x)))))


def _stem(cfg: HaloNetCfg, in_chans: int, dd: dict) -> tuple[nn.Sequential, str, int]:
    """The stem, the name of its last stride-2 layer (the first feature tap) and its output width."""
    act_layer = _ACTIVATIONS[cfg.act]
    stem = nn.Sequential()
    if cfg.stem == "7x7":
        stem.add_module("conv1", ConvBnAct(in_chans, 64, 7, 2, act_layer=act_layer, **dd))
        tap = "conv1"
    else:
        widths = (3 * 64 // 8, 64 // 2, 64)
        strides = (2, 1, 1) if cfg.stem_pool else (2, 1, 2)
        prev_chs = in_chans
        for index, (width, stride) in enumerate(zip(widths, strides), start=1):
            stem.add_module(f"conv{index}", ConvBnAct(prev_chs, width, 3, stride, act_layer=act_layer, **dd))
            prev_chs = width
        tap = "conv3" if cfg.stem_pool else "conv2"
    if cfg.stem_pool:
        stem.add_module("pool", nn.MaxPool2d(3, 2, 1))
    return stem, tap, 64


class HaloNetStage(nn.Sequential):
    """A stage's blocks, run under gradient checkpointing when asked (keys stay ``stages.{i}.{j}``)."""

    def __init__(self, *blocks: nn.Module):
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self, x)
        return super().forward(x)


class HaloNet(Backbone):
    """HaloNet / HaloNet-hybrid backbone with a pooled linear classifier."""

    model_name = "HaloNet"

    def __init__(
        self,
        cfg: HaloNetCfg,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        zero_init_last: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes, min_input_size=NETWORK_STRIDE, input_multiple=NETWORK_STRIDE)
        dd = dict(device=device, dtype=dtype)
        self.stem, stem_tap, prev_chs = _stem(cfg, in_chans, dd)
        stem_tap_chs = getattr(self.stem, stem_tap).conv.out_channels
        self._stem_tap_index = list(self.stem._modules).index(stem_tap)
        self.feature_info = [dict(num_chs=stem_tap_chs, reduction=2, module=f"stem.{stem_tap}")]

        depths = [len(types) for types in cfg.block_types]
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages = []
        reduction = 4
        for stage_index, (width, types, ratio) in enumerate(zip(cfg.widths, cfg.block_types, cfg.bottle_ratios)):
            blocks = []
            mid_chs = make_divisible(width * ratio)
            for block_index, block_type in enumerate(types):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                common = dict(drop_path_rate=rates.pop(0), **dd)
                if block_type == "halo":
                    heads = cfg.num_heads[stage_index]
                    block = HaloBlock(prev_chs, width, mid_chs, stride, cfg, num_heads=heads, **common)
                else:
                    block = BottleneckBlock(prev_chs, width, mid_chs, stride, cfg, **common)
                blocks.append(block)
                prev_chs = width
            reduction *= 2 if stage_index > 0 else 1
            stages.append(HaloNetStage(*blocks))
            if stage_index < len(cfg.widths) - 1:
                self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{stage_index}"))
        self.stages = nn.Sequential(*stages)
        if cfg.num_features:
            self.final_conv = ConvBnAct(prev_chs, cfg.num_features, 1, act_layer=_ACTIVATIONS[cfg.act], **dd)
            prev_chs = cfg.num_features
        else:
            self.final_conv = nn.Identity()
        self.feature_info.append(dict(num_chs=prev_chs, reduction=reduction, module="final_conv"))
        self.num_features = self.head_hidden_size = prev_chs
        self.drop_rate = drop_rate
        self.head = ClassifierHead(prev_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self._init_weights(zero_init_last)

    @torch.no_grad()
    def _init_weights(self, zero_init_last: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, HaloAttention):
                module.reset_parameters()  # its own fan-in init, replacing the generic conv init above
            elif isinstance(module, ResidualBlock) and zero_init_last:
                module.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=[(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None), (r"^final_conv", (99999,))],
        )

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Feature maps at strides 2, 4, 8, 16, 32 (the last after ``final_conv``); no norm layer to apply.

        Feature 0 is tapped inside the stem; feature i > 0 is stage i - 1's output."""
        check_nchw_only(output_fmt, self.model_name)
        self.check_input(x)
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        for index, layer in enumerate(self.stem):
            x = layer(x)
            if index == self._stem_tap_index and 0 in take_indices:
                intermediates.append(x)
        stages = self.stages[:max_index] if stop_early or intermediates_only else self.stages
        for index, stage in enumerate(stages, start=1):
            x = stage(x)
            if index == len(self.stages):
                x = self.forward_neck(x)
            if index in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.stages = self.stages[:max_index]
        if max_index == 0:
            for name in list(self.stem._modules)[self._stem_tap_index + 1:]:
                setattr(self.stem, name, nn.Identity())
        if max_index < len(self.feature_info) - 1:
            # final_conv and the head are sized for the last stage, which is gone.
            self.final_conv = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def checkpoint_filter_fn(state_dict: dict, model: HaloNet) -> dict:
    """Our parameter names are timm's ByobNet names, so timm checkpoints pass through once unwrapped.

    Training-checkpoint wrappers (``model`` / ``state_dict``) and DistributedDataParallel ``module.``
    prefixes are removed; nothing is recomputed, so no buffer is dropped.
    """
    return _unwrap(state_dict, "the checkpoint")


def _create_halonet(variant: str, pretrained: bool = False, **kwargs) -> HaloNet:
    return build_model_with_cfg(
        HaloNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4)),
        **dict(MODEL_ARGS[variant], **kwargs),
    )


def _timm_hybrid(widths, block_types, bottle_ratios=(0.25,) * 4, **kwargs) -> dict:
    return dict(cfg=HaloNetCfg(widths=widths, block_types=block_types, bottle_ratios=bottle_ratios, **kwargs))


def _paper(layers3: int, block_size: int, halo_size: int, width_mult: float, num_features: int = 0) -> dict:
    """Paper §4 family: all-attention stages of depth (3, 3, l3, 3); mid width 64·2^i, output width × rb."""
    return dict(cfg=HaloNetCfg(
        widths=tuple(int(64 * width_mult * 2 ** i) for i in range(4)),
        block_types=tuple(("halo",) * depth for depth in (3, 3, layers3, 3)),
        bottle_ratios=(1 / width_mult,) * 4,
        block_size=block_size,
        halo_size=halo_size,
        stem="7x7",
        num_features=num_features,
    ))


_B, _H = "bottle", "halo"
MODEL_ARGS = {
    "vz_halonet26t": _timm_hybrid(
        (256, 512, 1024, 2048), ((_B, _B), (_B, _B), (_B, _H), (_H, _H)), halo_size=2,
    ),
    "vz_sehalonet33ts": _timm_hybrid(
        (256, 512, 1024, 1536), ((_B, _B), (_B, _B, _H), (_B, _B, _H), (_H, _H)), (0.25, 0.25, 0.25, 0.333),
        stem_pool=False, act="silu", channel_attn="se", num_features=1280,
    ),
    "vz_halonet50ts": _timm_hybrid(
        (256, 512, 1024, 2048), ((_B,) * 3, (_B, _B, _B, _H), (_B, _H) * 3, (_B, _H, _B)),
        num_heads=(8, 4, 8, 8), act="silu",
    ),
    "vz_eca_halonext26ts": _timm_hybrid(
        (256, 512, 1024, 2048), ((_B, _B), (_B, _B), (_B, _H), (_H, _H)), halo_size=2, dim_head=16, act="silu",
        channel_attn="eca", group_size=16,
    ),
    "vz_halonet_h0": _paper(7, 8, 3, 0.5),
    "vz_halonet_h1": _paper(10, 8, 3, 1.0),
    "vz_halonet_h2": _paper(11, 8, 3, 1.25),
    "vz_halonet_h3": _paper(12, 10, 3, 1.5, num_features=1024),
    "vz_halonet_h4": _paper(12, 12, 2, 3.0, num_features=1280),
}




def _cfg(input_size: tuple[int, int, int] = (3, 256, 256), **kwargs) -> dict:
    return {
        "num_classes": 1000,
        "input_size": input_size,
        "pool_size": (input_size[1] // 32, input_size[2] // 32),
        "min_input_size": (3, 32, 32),
        "crop_pct": 0.95,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv",
        "classifier": "head.fc",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2103.12731",
        "paper_name": "Scaling Local Self-Attention for Parameter Efficient Visual Backbones",
        "origin_url": "https://github.com/huggingface/pytorch-image-models",
        **kwargs,
    }


# Tags, sources and eval settings come from the model card (visionzoo/cards/halonet.yaml).
default_cfgs = generate_default_cfgs(pretrained_cfgs("halonet", _cfg))


@register_model
def vz_halonet26t(pretrained: bool = False, **kwargs) -> HaloNet:
    """timm's HaloNet-26T hybrid: tiered stem, halo attention (block 8, halo 2) in the last 3 blocks."""
    return _create_halonet("vz_halonet26t", pretrained, **kwargs)


@register_model
def vz_sehalonet33ts(pretrained: bool = False, **kwargs) -> HaloNet:
    """timm's SE-HaloNet-33TS hybrid: SE bottlenecks, SiLU, halo attention in the last block of stages 2–4."""
    return _create_halonet("vz_sehalonet33ts", pretrained, **kwargs)


@register_model
def vz_halonet50ts(pretrained: bool = False, **kwargs) -> HaloNet:
    """timm's HaloNet-50TS hybrid: ResNet-50 depths, SiLU, halo attention interleaved from stage 2."""
    return _create_halonet("vz_halonet50ts", pretrained, **kwargs)


@register_model
def vz_eca_halonext26ts(pretrained: bool = False, **kwargs) -> HaloNet:
    """timm's ECA-HaloNeXt-26TS hybrid: grouped ECA bottlenecks, halo attention with 16-dim heads."""
    return _create_halonet("vz_eca_halonext26ts", pretrained, **kwargs)


@register_model
def vz_halonet_h0(pretrained: bool = False, **kwargs) -> HaloNet:
    """Paper HaloNet-H0 (b 8, h 3, rb 0.5, l3 7), 256 px."""
    return _create_halonet("vz_halonet_h0", pretrained, **kwargs)


@register_model
def vz_halonet_h1(pretrained: bool = False, **kwargs) -> HaloNet:
    """Paper HaloNet-H1 (b 8, h 3, rb 1.0, l3 10), 256 px; timm's ``halonet_h1``."""
    return _create_halonet("vz_halonet_h1", pretrained, **kwargs)


@register_model
def vz_halonet_h2(pretrained: bool = False, **kwargs) -> HaloNet:
    """Paper HaloNet-H2 (b 8, h 3, rb 1.25, l3 11), 256 px."""
    return _create_halonet("vz_halonet_h2", pretrained, **kwargs)


@register_model
def vz_halonet_h3(pretrained: bool = False, **kwargs) -> HaloNet:
    """Paper HaloNet-H3 (b 10, h 3, rb 1.5, l3 12, final conv 1024), 320 px."""
    return _create_halonet("vz_halonet_h3", pretrained, **kwargs)


@register_model
def vz_halonet_h4(pretrained: bool = False, **kwargs) -> HaloNet:
    """Paper HaloNet-H4 (b 12, h 2, rb 3.0, l3 12, final conv 1280), 384 px."""
    return _create_halonet("vz_halonet_h4", pretrained, **kwargs)


FAMILY = register_family(Family(name="halonet", model_classes=(HaloNet,), checkpoint_filter_fn=checkpoint_filter_fn))
