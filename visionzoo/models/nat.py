"""NAT, DiNAT and DiNAT-s: hierarchical transformers on neighbourhood attention.

* NAT: "Neighborhood Attention Transformer" (Hassani, Walton, Li, Li, Shi, CVPR 2023, arXiv 2204.07143).
* DiNAT: "Dilated Neighborhood Attention Transformer" (Hassani & Shi, arXiv 2209.15001): NAT whose layers
  alternate plain and dilated neighbourhoods (dilation chosen per layer so a stage's map is covered).
* DiNAT-s: DiNAT's layers on Swin's layout (4×4 patch embedding, patch-merging downsamplers, no layer scale).

Every layer attends, per query, to a k×k neighbourhood clamped inside the map
(:mod:`visionzoo.ops.neighborhood_attention`) with a learned relative position bias. Blocks run on channels-last
(B, H, W, C) maps; stages take and return NCHW views of that memory. Any input size works: the convolutional stem and downsamplers round up, and a map
smaller than kernel · dilation is padded as the released models' NATTEN did (see
:mod:`visionzoo.layers.neighborhood_attention`).

Checkpoints: the official release (``levels.*`` for NAT/DiNAT, ``layers.*`` for DiNAT-s) and the Hugging Face
``transformers`` layout (``NatForImageClassification`` / ``DinatForImageClassification``) are converted by
:func:`checkpoint_filter_fn`.
"""
from __future__ import annotations

import re

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from torch import nn

from visionzoo.layers.drop import drop_path_rates
from visionzoo.layers.neighborhood_attention import NATBlock
from visionzoo.models._base import Backbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family
from visionzoo.ops.window import pad_to_windows

__all__ = ["NAT", "checkpoint_filter_fn"]


class NATStem(nn.Module):
    """NCHW image → NCHW view of a normed channels-last map at stride 4.

    ``"conv"`` (NAT, DiNAT): two 3×3 stride-2 convs (C/2 then C, no activation between); ``"patch"`` (DiNAT-s):
    zero-pad to a multiple of 4, then a 4×4 stride-4 conv. A LayerNorm over channels follows either.
    """

    def __init__(self, in_chans: int, out_chs: int, kind: str, norm_eps: float, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.kind = kind
        if kind == "conv":
            self.proj = nn.Sequential(
                nn.Conv2d(in_chans, out_chs // 2, 3, stride=2, padding=1, **dd),
                nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1, **dd),
            )
        else:
            self.proj = nn.Conv2d(in_chans, out_chs, 4, stride=4, **dd)
        self.norm = nn.LayerNorm(out_chs, eps=norm_eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "patch":
            x = pad_to_windows(x.permute(0, 2, 3, 1), (4, 4)).permute(0, 3, 1, 2)
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NATConvDownsample(nn.Module):
    """Conv 3×3 / 2 (no bias) doubling the width, then LayerNorm; channels-last in and out (NAT, DiNAT)."""

    def __init__(self, in_chs: int, out_chs: int, norm_eps: float, device=None, dtype=None):
        super().__init__()
        self.reduction = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, bias=False, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(out_chs, eps=norm_eps, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATPatchMerging(nn.Module):
    """Swin's patch merging: pad to even sides, stack the four parity sub-maps, LayerNorm(4C), Linear(4C → 2C)."""

    def __init__(self, in_chs: int, out_chs: int, norm_eps: float, device=None, dtype=None):
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_chs, eps=norm_eps, device=device, dtype=dtype)
        self.reduction = nn.Linear(4 * in_chs, out_chs, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_windows(x, (2, 2))
        # (even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col), as Swin orders them.
        merged = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(merged))


class NATStage(nn.Module):
    """Optional downsample, then one NAT block per entry of ``dilations``; NCHW views in and out."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        num_heads: int,
        kernel_size: int,
        dilations: list[int],
        mlp_ratio: float,
        layer_scale: float | None,
        drop_path_rates: list[float],
        downsample: str | None,
        norm_eps: float,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        if downsample is None:
            self.downsample = nn.Identity()
        else:
            layer = NATConvDownsample if downsample == "conv" else NATPatchMerging
            self.downsample = layer(in_chs, out_chs, norm_eps, **dd)
        self.blocks = nn.Sequential(*[
            NATBlock(out_chs, num_heads, kernel_size, dilation, mlp_ratio, rate, layer_scale, norm_eps, **dd)
            for dilation, rate in zip(dilations, drop_path_rates)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x.permute(0, 2, 3, 1))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class NAT(Backbone):
    """NAT / DiNAT / DiNAT-s backbone and classifier; any input size, 4-level pyramid at strides 4–32.

    ``dilations`` lists one dilation per layer and stage (all 1, the default, is NAT); ``stem`` and
    ``downsample`` pick NAT's convolutional tokenizer and downsamplers (``"conv"``) or Swin's (``"patch"``,
    ``"merge"``: DiNAT-s).
    """

    model_name = "NAT"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 64,
        depths: tuple[int, ...] = (3, 4, 6, 5),
        num_heads: tuple[int, ...] = (2, 4, 8, 16),
        kernel_size: int = 7,
        dilations: tuple[tuple[int, ...], ...] | None = None,
        mlp_ratio: float = 3.0,
        layer_scale: float | None = None,
        stem: str = "conv",
        downsample: str = "conv",
        norm_eps: float = 1e-5,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes)
        dilations = dilations or tuple((1,) * depth for depth in depths)
        if not len(depths) == len(num_heads) == len(dilations):
            raise ValueError(
                f"depths, num_heads and dilations need one entry per stage, got {len(depths)}, {len(num_heads)} "
                f"and {len(dilations)}"
            )
        if [len(d) for d in dilations] != list(depths):
            raise ValueError(f"dilations need one entry per layer: depths {list(depths)}, dilations {dilations}")
        if stem not in ("conv", "patch") or downsample not in ("conv", "merge"):
            raise ValueError(f"stem must be 'conv' or 'patch' and downsample 'conv' or 'merge', got {stem!r}, "
                             f"{downsample!r}")
        dd = dict(device=device, dtype=dtype)
        widths = [embed_dim * 2**index for index in range(len(depths))]
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate

        self.stem = NATStem(in_chans, embed_dim, stem, norm_eps, **dd)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info, in_chs = [], [], embed_dim
        for index, (width, heads, stage_dilations) in enumerate(zip(widths, num_heads, dilations)):
            first = sum(depths[:index])
            stages.append(NATStage(
                in_chs, width, heads, kernel_size, list(stage_dilations), mlp_ratio, layer_scale,
                rates[first : first + depths[index]], downsample if index > 0 else None, norm_eps, **dd,
            ))
            self.feature_info.append(dict(num_chs=width, reduction=4 * 2**index, module=f"stages.{index}"))
            in_chs = width
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps, **dd)
        self._init_pooled_head(num_classes, global_pool, drop_rate, **dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # The official recipe exempts the relative position bias tables (3-D, so timm would decay them).
        return {name for name, _ in self.named_parameters() if name.endswith(".rpb")}

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
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def prune_neck(self) -> None:
        self.norm = nn.Identity()


_OFFICIAL_RENAMES = (
    (r"^patch_embed\.", "stem."),
    (r"^(?:levels|layers)\.(\d+)\.blocks\.", r"stages.\1.blocks."),
)

_HF_RENAMES = (
    (r"^embeddings\.patch_embeddings\.projection\.", "stem.proj."),
    (r"^embeddings\.norm\.", "stem.norm."),
    (r"^encoder\.levels\.(\d+)\.layers\.", r"stages.\1.blocks."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.attention\.self\.rpb$", ".attn.rpb"),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"^layernorm\.", "norm."),
)


def _renamed(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for pattern, replacement in renames:
        key = re.sub(pattern, replacement, key)
    return key


def _downsample_key(key: str) -> str:
    """The official and HF layouts downsample at the end of a level; ours at the start of the next stage."""
    return re.sub(r"^(?:encoder\.)?(?:levels|layers)\.(\d+)\.downsample\.",
                  lambda m: f"stages.{int(m.group(1)) + 1}.downsample.", key)


def _from_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_renamed(_downsample_key(key), _OFFICIAL_RENAMES): value for key, value in state_dict.items()}


def _transformers_name(key: str) -> str:
    return _renamed(_downsample_key(key), _HF_RENAMES)


def _from_transformers(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``NatForImageClassification`` / ``DinatForImageClassification``: q, k, v and the two layer-scale rows are
    separate tensors there, one ``qkv`` and ``gamma1``/``gamma2`` here."""
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("classifier."):
            converted["head." + key.removeprefix("classifier.")] = value
            continue
        name = key.removeprefix(prefix)
        projection = re.fullmatch(r"(.*)\.attention\.self\.(query|key|value)\.(weight|bias)", name)
        if projection:
            block, part, kind = projection.groups()
            if part == "query":
                parts = [state_dict[f"{prefix}{block}.attention.self.{p}.{kind}"] for p in ("query", "key", "value")]
                converted[f"{_transformers_name(block)}.attn.qkv.{kind}"] = torch.cat(parts)
        elif name.endswith(".layer_scale_parameters"):
            block = _transformers_name(name.removesuffix(".layer_scale_parameters"))
            converted[f"{block}.gamma1"], converted[f"{block}.gamma2"] = value.unbind(0)
        else:
            converted[_transformers_name(name)] = value
    return converted


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert the official release (NAT/DiNAT ``levels.*``, DiNAT-s ``layers.*``) or the Hugging Face
    ``transformers`` layout (``nat.*`` / ``dinat.*`` plus ``classifier.*``) to ours; ours passes through."""
    state_dict = _unwrap(state_dict, "the NAT state dict")
    if "patch_embed.norm.weight" in state_dict:
        state_dict = _from_official(state_dict)
    else:
        for prefix in ("dinat.", "nat."):
            if f"{prefix}embeddings.norm.weight" in state_dict:
                state_dict = _from_transformers(state_dict, prefix)
                break
    if not model.num_classes:
        # A headless model (the IN-22k tags' backbone) keeps no classifier, whatever head the file carries.
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("head.")}
    return state_dict


def _create_nat(variant: str, pretrained: bool = False, **kwargs) -> NAT:
    kwargs = dict(MODEL_ARGS[variant], **kwargs)
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs["depths"]))))
    return build_model_with_cfg(
        NAT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj.0", "classifier": "head",
        "license": "mit", "paper_ids": "arXiv:2204.07143",
        "origin_url": "https://github.com/SHI-Labs/Neighborhood-Attention-Transformer",
        **kwargs,
    }


# Tags, sources and eval settings come from the model card (visionzoo/cards/nat.yaml).
default_cfgs = generate_default_cfgs(pretrained_cfgs("nat", _cfg))


def _dinat_dilations(depths: tuple[int, ...], stage1: int, stage2: int, stage3: int) -> tuple[tuple[int, ...], ...]:
    """DiNAT's schedule: layers alternate dilation 1 and the stage's dilation (the last stage is all 1)."""
    return tuple(
        tuple(1 if layer % 2 == 0 else dilation for layer in range(depth))
        for depth, dilation in zip(depths, (stage1, stage2, stage3, 1))
    )


_MINI = dict(embed_dim=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.0)
_TINY = dict(_MINI, depths=(3, 4, 18, 5))
_SMALL = dict(embed_dim=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.0)
_BASE = dict(embed_dim=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.0,
             layer_scale=1e-5)
_LARGE = dict(embed_dim=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.0)
_SWIN_DEPTHS = (2, 2, 18, 2)


def _dinat_s(embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...],
             stage_dilations: tuple[int, int, int] = (8, 4, 2)) -> dict:
    """DiNAT-s: DiNAT's layers in Swin's layout (patch-4 stem, patch merging, MLP ratio 4, no layer scale)."""
    return dict(embed_dim=embed_dim, depths=depths, num_heads=num_heads, mlp_ratio=4.0, stem="patch",
                downsample="merge", dilations=_dinat_dilations(depths, *stage_dilations))

# Widths, layers per stage, heads (32 channels each), MLP ratio, layer scale, per-layer dilations at 224
# (drop path is a training setting: the recipes in configs/cls set the official builders' rates)
# (DiNAT's 384 models use 13 / 6 / 3 so that a stage's map is still covered).
MODEL_ARGS = {
    "vz_nat_mini": _MINI,
    "vz_nat_tiny": _TINY,
    "vz_nat_small": dict(_SMALL, layer_scale=1e-5),
    "vz_nat_base": _BASE,
    "vz_dinat_mini": dict(_MINI, dilations=_dinat_dilations(_MINI["depths"], 8, 4, 2)),
    "vz_dinat_tiny": dict(_TINY, dilations=_dinat_dilations(_TINY["depths"], 8, 4, 2)),
    "vz_dinat_small": dict(_SMALL, dilations=_dinat_dilations(_SMALL["depths"], 8, 4, 2)),
    "vz_dinat_base": dict(_BASE, dilations=_dinat_dilations(_BASE["depths"], 8, 4, 2)),
    "vz_dinat_large": dict(_LARGE, dilations=_dinat_dilations(_LARGE["depths"], 8, 4, 2)),
    "vz_dinat_large_384": dict(_LARGE, dilations=_dinat_dilations(_LARGE["depths"], 13, 6, 3)),
    "vz_dinat_large_384_k11": dict(_LARGE, kernel_size=11, dilations=_dinat_dilations(_LARGE["depths"], 8, 4, 2)),
    "vz_dinat_s_tiny": _dinat_s(96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "vz_dinat_s_small": _dinat_s(96, _SWIN_DEPTHS, (3, 6, 12, 24)),
    "vz_dinat_s_base": _dinat_s(128, _SWIN_DEPTHS, (4, 8, 16, 32)),
    "vz_dinat_s_large": _dinat_s(192, _SWIN_DEPTHS, (6, 12, 24, 48)),
    "vz_dinat_s_large_384": _dinat_s(192, _SWIN_DEPTHS, (6, 12, 24, 48), stage_dilations=(13, 6, 3)),
}


@register_model
def vz_nat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Mini: 20.0M params, 2.7 GMACs at 224, 81.8 % IN-1k top-1."""
    return _create_nat("vz_nat_mini", pretrained, **kwargs)


@register_model
def vz_nat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Tiny: 27.9M params, 4.3 GMACs at 224, 83.2 % IN-1k top-1."""
    return _create_nat("vz_nat_tiny", pretrained, **kwargs)


@register_model
def vz_nat_small(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Small: 50.7M params, 7.8 GMACs at 224, 83.7 % IN-1k top-1."""
    return _create_nat("vz_nat_small", pretrained, **kwargs)


@register_model
def vz_nat_base(pretrained: bool = False, **kwargs) -> NAT:
    """NAT-Base: 89.8M params, 13.7 GMACs at 224, 84.3 % IN-1k top-1."""
    return _create_nat("vz_nat_base", pretrained, **kwargs)


@register_model
def vz_dinat_mini(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Mini: 20.0M params, 2.7 GMACs at 224, 81.8 % IN-1k top-1."""
    return _create_nat("vz_dinat_mini", pretrained, **kwargs)


@register_model
def vz_dinat_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Tiny: 27.9M params, 4.3 GMACs at 224, 82.7 % IN-1k top-1."""
    return _create_nat("vz_dinat_tiny", pretrained, **kwargs)


@register_model
def vz_dinat_small(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Small: 50.7M params, 7.8 GMACs at 224, 83.8 % IN-1k top-1."""
    return _create_nat("vz_dinat_small", pretrained, **kwargs)


@register_model
def vz_dinat_base(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Base: 89.8M params, 13.7 GMACs at 224, 84.4 % IN-1k top-1."""
    return _create_nat("vz_dinat_base", pretrained, **kwargs)


@register_model
def vz_dinat_large(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large (IN-22k pre-trained): 200.9M params, 30.5 GMACs at 224, 86.6 % IN-1k top-1."""
    return _create_nat("vz_dinat_large", pretrained, **kwargs)


@register_model
def vz_dinat_large_384(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large at 384, dilations 13 / 6 / 3: 200.9M params, 89.5 GMACs, 87.4 % IN-1k top-1."""
    return _create_nat("vz_dinat_large_384", pretrained, **kwargs)


@register_model
def vz_dinat_large_384_k11(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-Large at 384 with 11×11 neighbourhoods: 201.1M params, 92.1 GMACs, 87.5 % IN-1k top-1."""
    return _create_nat("vz_dinat_large_384_k11", pretrained, **kwargs)


@register_model
def vz_dinat_s_tiny(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-s-Tiny (Swin layout): 28.3M params, 4.5 GMACs at 224, 81.8 % IN-1k top-1."""
    return _create_nat("vz_dinat_s_tiny", pretrained, **kwargs)


@register_model
def vz_dinat_s_small(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-s-Small (Swin layout): 49.6M params, 8.7 GMACs at 224, 83.5 % IN-1k top-1."""
    return _create_nat("vz_dinat_s_small", pretrained, **kwargs)


@register_model
def vz_dinat_s_base(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-s-Base (Swin layout): 87.8M params, 15.4 GMACs at 224, 83.8 % IN-1k top-1."""
    return _create_nat("vz_dinat_s_base", pretrained, **kwargs)


@register_model
def vz_dinat_s_large(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-s-Large (IN-22k pre-trained): 196.5M params, 34.5 GMACs at 224, 86.5 % IN-1k top-1."""
    return _create_nat("vz_dinat_s_large", pretrained, **kwargs)


@register_model
def vz_dinat_s_large_384(pretrained: bool = False, **kwargs) -> NAT:
    """DiNAT-s-Large at 384, dilations 13 / 6 / 3: 196.5M params, 101.3 GMACs, 87.4 % IN-1k top-1."""
    return _create_nat("vz_dinat_s_large_384", pretrained, **kwargs)


FAMILY = register_family(Family(name="nat", model_classes=(NAT,), checkpoint_filter_fn=checkpoint_filter_fn))
