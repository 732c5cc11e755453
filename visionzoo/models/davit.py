"""DaViT: Dual Attention Vision Transformers (Ding et al., ECCV 2022, arXiv 2204.03645).

Each stage stacks "dual blocks": a spatial block (multi-head attention inside 7×7 windows) followed by a
channel block (attention among channel groups over all tokens), both with conditional position encodings
(x + DWConv3×3(x)) before the mixer and before the MLP. Any input size works: the stem, the downsamplers
and the windows pad at the bottom/right and crop back.

Blocks run on channels-last (B, H, W, C) tensors; stages take and return NCHW views of that memory, so the
stage boundaries, ``forward_features`` and the feature pyramid cost no copies. Parameter names follow timm's
``davit_*`` models, so timm checkpoints load unchanged; the official release's layout is converted by
:func:`checkpoint_filter_fn`.
"""
from __future__ import annotations

import re
from functools import partial

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d, NormMlpClassifierHead, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq
from timm.models import generate_default_cfgs, register_model
from torch import nn

from visionzoo.layers.activations import InferenceInplaceGELU
from visionzoo.layers.channel_attention import ChannelGroupAttention
from visionzoo.layers.drop import DropPath, drop_path_rates
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.pos_embed import ConvPosEnc
from visionzoo.layers.window_attention import WindowAttention
from visionzoo.models._base import Backbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family
from visionzoo.ops.window import pad_to_windows

__all__ = ["DaViT", "checkpoint_filter_fn"]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad an NCHW map at the bottom/right to sides that are multiples of ``multiple`` (no copy if they are)."""
    pad_bottom, pad_right = -x.shape[-2] % multiple, -x.shape[-1] % multiple
    if pad_bottom or pad_right:
        x = F.pad(x, (0, pad_right, 0, pad_bottom))
    return x


# The padding depends on the input's size, which a symbolic trace cannot branch on: traced graphs call it whole.
torch.fx.wrap("_pad_to_multiple")


class DaViTStem(nn.Module):
    """Zero-pad to a multiple of 4, Conv 7×7 / 4, LayerNorm over channels; NCHW in, NCHW view of NHWC out."""

    def __init__(self, in_chans: int, out_chs: int, norm_eps: float, device=None, dtype=None):
        super().__init__()
        self.stride = 4
        self.conv = nn.Conv2d(in_chans, out_chs, 7, stride=self.stride, padding=3, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(out_chs, eps=norm_eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pad_to_multiple(x, self.stride)
        # A channels-last input makes the conv write channels-last: the 3-channel copy here saves a wide one later.
        x = self.conv(x.contiguous(memory_format=torch.channels_last))
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DaViTDownsample(nn.Module):
    """LayerNorm (input width), zero-pad to even size, Conv 2×2 / 2; channels-last in and out."""

    def __init__(self, in_chs: int, out_chs: int, norm_eps: float, device=None, dtype=None):
        super().__init__()
        self.norm = nn.LayerNorm(in_chs, eps=norm_eps, device=device, dtype=dtype)
        self.conv = nn.Conv2d(in_chs, out_chs, 2, stride=2, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_windows(self.norm(x), (2, 2))
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class DaViTBlock(nn.Module):
    """cpe1 → x + mixer(norm1(x)) → cpe2 → x + mlp(norm2(x)), on channels-last maps; the mixer is window or
    channel-group attention (DaViT's spatial and channel blocks)."""

    def __init__(
        self,
        dim: int,
        mixer: nn.Module,
        mlp_ratio: float,
        drop_path: float,
        norm_eps: float,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cpe1 = ConvPosEnc(dim, 3, **dd)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.attn = mixer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.cpe2 = ConvPosEnc(dim, 3, **dd)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=InferenceInplaceGELU, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The residual sums land in the branch outputs in place: those are fresh tensors that no backward
        # formula needs (linear and drop path keep their inputs, not outputs), so autograd is unaffected.
        x = self.cpe1(x)
        x = self.drop_path1(self.attn(self.norm1(x))).add_(x)
        x = self.cpe2(x)
        return self.drop_path2(self.mlp(self.norm2(x))).add_(x)


class DaViTStage(nn.Module):
    """Optional downsample, then ``depth`` dual blocks (spatial, channel); NCHW views in and out."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_rates: list[float],
        norm_eps: float,
        downsample: bool,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.downsample = DaViTDownsample(in_chs, out_chs, norm_eps, **dd) if downsample else nn.Identity()
        dual_blocks = []
        for index in range(depth):
            spatial_rate, channel_rate = drop_path_rates[2 * index : 2 * index + 2]
            spatial = DaViTBlock(
                out_chs, WindowAttention(out_chs, num_heads, window_size, qkv_bias, **dd),
                mlp_ratio, spatial_rate, norm_eps, **dd,
            )
            channel = DaViTBlock(
                out_chs, ChannelGroupAttention(out_chs, num_heads, qkv_bias, **dd),
                mlp_ratio, channel_rate, norm_eps, **dd,
            )
            dual_blocks.append(nn.Sequential(spatial, channel))
        self.blocks = nn.Sequential(*dual_blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x.permute(0, 2, 3, 1))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class DaViT(Backbone):
    """DaViT backbone and classifier (arXiv 2204.03645); any input size, 4-level pyramid at strides 4–32."""

    model_name = "DaViT"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: tuple[int, ...] = (96, 192, 384, 768),
        depths: tuple[int, ...] = (1, 1, 3, 1),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-5,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes)
        if not len(embed_dims) == len(depths) == len(num_heads):
            raise ValueError(
                f"embed_dims, depths and num_heads need one entry per stage, got {len(embed_dims)}, "
                f"{len(depths)} and {len(num_heads)}"
            )
        dd = dict(device=device, dtype=dtype)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate

        self.stem = DaViTStem(in_chans, embed_dims[0], norm_eps, **dd)
        # Stochastic depth grows linearly over every spatial and channel block, as in the official code.
        rates = drop_path_rates(drop_path_rate, 2 * sum(depths))
        stages, self.feature_info, in_chs = [], [], embed_dims[0]
        for index, (width, depth, heads) in enumerate(zip(embed_dims, depths, num_heads)):
            first = 2 * sum(depths[:index])
            stages.append(DaViTStage(
                in_chs, width, depth, heads, window_size, mlp_ratio, qkv_bias,
                rates[first : first + 2 * depth], norm_eps, downsample=index > 0, **dd,
            ))
            self.feature_info.append(dict(num_chs=width, reduction=4 * 2**index, module=f"stages.{index}"))
            in_chs = width
        self.stages = nn.Sequential(*stages)
        self.head = NormMlpClassifierHead(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate,
            norm_layer=partial(LayerNorm2d, eps=norm_eps), **dd,
        )
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


_OFFICIAL_RENAMES = (
    (r"^patch_embeds\.0\.proj\.", "stem.conv."),
    (r"^patch_embeds\.0\.norm\.", "stem.norm."),
    (r"^patch_embeds\.(\d+)\.proj\.", r"stages.\1.downsample.conv."),
    (r"^patch_embeds\.(\d+)\.norm\.", r"stages.\1.downsample.norm."),
    (r"^main_blocks\.(\d+)\.(\d+)\.(\d+)\.cpe\.0\.", r"stages.\1.blocks.\2.\3.cpe1."),
    (r"^main_blocks\.(\d+)\.(\d+)\.(\d+)\.cpe\.1\.", r"stages.\1.blocks.\2.\3.cpe2."),
    (r"^main_blocks\.(\d+)\.", r"stages.\1.blocks."),
    (r"^norms\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert our layout (= timm's ``davit_*``, passed through) or the official release's (dingmyu/davit)."""
    state_dict = _unwrap(state_dict, "the DaViT state dict")
    if "patch_embeds.0.proj.weight" not in state_dict:
        return state_dict
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in _OFFICIAL_RENAMES:
            key, count = re.subn(pattern, replacement, key)
            if count:
                break
        converted[key] = value
    return converted


def _create_davit(variant: str, pretrained: bool = False, **kwargs) -> DaViT:
    kwargs = dict(MODEL_ARGS[variant], **kwargs)
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs["depths"]))))
    return build_model_with_cfg(
        DaViT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )




def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.95, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv", "classifier": "head.fc",
        "license": "mit", "paper_ids": "arXiv:2204.03645",
        "origin_url": "https://github.com/dingmyu/davit",
        **kwargs,
    }


# Tags, sources and eval settings come from the model card (visionzoo/cards/davit.yaml).
default_cfgs = generate_default_cfgs(pretrained_cfgs("davit", _cfg))

# Widths, dual blocks per stage, heads (= channel groups; 32 channels each everywhere).
MODEL_ARGS = {
    "vz_davit_tiny": dict(embed_dims=(96, 192, 384, 768), depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24)),
    "vz_davit_small": dict(embed_dims=(96, 192, 384, 768), depths=(1, 1, 9, 1), num_heads=(3, 6, 12, 24)),
    "vz_davit_base": dict(embed_dims=(128, 256, 512, 1024), depths=(1, 1, 9, 1), num_heads=(4, 8, 16, 32)),
    "vz_davit_large": dict(embed_dims=(192, 384, 768, 1536), depths=(1, 1, 9, 1), num_heads=(6, 12, 24, 48)),
    "vz_davit_huge": dict(embed_dims=(256, 512, 1024, 2048), depths=(1, 1, 9, 1), num_heads=(8, 16, 32, 64)),
    "vz_davit_giant": dict(embed_dims=(384, 768, 1536, 3072), depths=(1, 1, 12, 3), num_heads=(12, 24, 48, 96)),
}


@register_model
def vz_davit_tiny(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-T: 28.4M params, 4.5 GMACs at 224, 82.8 % IN-1k top-1."""
    return _create_davit("vz_davit_tiny", pretrained, **kwargs)


@register_model
def vz_davit_small(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-S: 49.7M params, 8.8 GMACs at 224, 84.2 % IN-1k top-1."""
    return _create_davit("vz_davit_small", pretrained, **kwargs)


@register_model
def vz_davit_base(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-B: 88.0M params, 15.5 GMACs at 224, 84.6 % IN-1k top-1."""
    return _create_davit("vz_davit_base", pretrained, **kwargs)


@register_model
def vz_davit_large(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-L, window 7 at 224 as in timm (the official config used window_size=12 at 384); no weights."""
    return _create_davit("vz_davit_large", pretrained, **kwargs)


@register_model
def vz_davit_huge(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-H, window 7 at 224 as in timm; no weights."""
    return _create_davit("vz_davit_huge", pretrained, **kwargs)


@register_model
def vz_davit_giant(pretrained: bool = False, **kwargs) -> DaViT:
    """DaViT-G, window 7 at 224 as in timm; no weights."""
    return _create_davit("vz_davit_giant", pretrained, **kwargs)


FAMILY = register_family(Family(name="davit", model_classes=(DaViT,), checkpoint_filter_fn=checkpoint_filter_fn))
