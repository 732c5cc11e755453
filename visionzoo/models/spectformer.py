"""SpectFormer: "Frequency and Attention is what you need in a Vision Transformer", Patro, Namboodiri and
Agneeswaran, WACV 2025 (arXiv 2304.06446). Official code: badripatro/SpectFormers (no licence; rebuilt here from
the facts of its architecture).

Early blocks mix tokens with spectral gating (a learned per-frequency complex filter, the
:mod:`visionzoo.ops.spectral_gating` op), later blocks with multi-head self-attention. Two families:

* :class:`SpectFormer` (vanilla, isotropic): 16×16 patches plus a position embedding, 4 spectral blocks whose one
  residual wraps filter and MLP, then attention blocks; mean-pooled tokens, linear head.
* :class:`HierarchicalSpectFormer`: a conv stem and a four-stage pyramid (strides 4–32); stages 1–2 spectral,
  3–4 attention, every MLP with a depthwise conv; a class-attention block pools the last stage, and an optional
  token-labeling head (``aux_head``) adds half of its per-token maximum to the logits at inference.

Input size: filters and the position embedding are learned on the build size's grid. Another size resamples them
(``resize_filters=True``, the default; the rule is :func:`visionzoo.ops.spectral_gating.resize_spectral_filter`,
the embedding is resampled bicubically); ``resize_filters=False`` raises a ValueError instead, and
``img_size=`` builds fresh filters for another size. Official checkpoints load through
:func:`checkpoint_filter_fn`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._manipulate import checkpoint_seq
from torch import nn

from visionzoo.layers.attention import MultiHeadSelfAttention
from visionzoo.layers.drop import DropPath, drop_path_rates
from visionzoo.layers.dwconv_mlp import DwConvMlp
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.layers.pos_embed import grid_pos_embed
from visionzoo.layers.spectral_gating import SpectralGatingFilter
from visionzoo.models._base import Backbone, TokenBackbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family
from visionzoo.ops import scaled_dot_product_attention, trace_leaf

__all__ = ["SpectFormer", "HierarchicalSpectFormer", "checkpoint_filter_fn"]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------- vanilla family


class SpectFormerSpectralBlock(nn.Module):
    """x + DropPath(MLP(LN2(Filter(LN1(x))))) on a (B, H, W, C) map: one residual around filter and MLP."""

    def __init__(self, dim: int, grid_size: tuple[int, int], mlp_ratio: float, drop_path: float,
                 resize_filters: bool, device=None, dtype=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.filter = SpectralGatingFilter(dim, grid_size, resize_filters, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), device=device, dtype=dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(self.filter(self.norm1(x)))))


class SpectFormerAttentionBlock(nn.Module):
    """Pre-norm transformer block (multi-head self-attention, MLP) on a (B, H, W, C) map."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, device=None, dtype=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=True, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), device=device, dtype=dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm1(x).flatten(1, 2)
        x = x + self.drop_path(self.attn(tokens).reshape(x.shape))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@trace_leaf
def _grid_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], trained_grid: tuple[int, int],
                    resize: bool) -> torch.Tensor:
    """The (1, H, W, C) position embedding for ``grid``: as trained, or resampled bicubically from ``trained_grid``."""
    grid, trained_grid = tuple(grid), tuple(trained_grid)
    if grid != trained_grid and not resize:
        raise ValueError(
            f"SpectFormer: its position embedding and spectral filters were learned on a "
            f"{trained_grid[0]}x{trained_grid[1]} patch grid and this input gives {grid[0]}x{grid[1]}; build it "
            f"with resize_filters=True to resample them, or with img_size set to this input's size"
        )
    return grid_pos_embed(pos_embed, grid, trained_grid).reshape(1, *grid, pos_embed.shape[-1])


class SpectFormer(TokenBackbone):
    """Vanilla SpectFormer (arXiv 2304.06446 §3): isotropic, ``spectral_depth`` spectral blocks then attention
    blocks, on 16×16 patches; input sides must be multiples of the patch size."""

    model_name = "SpectFormer"
    global_pools = ("avg", "")

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 384,
        depth: int = 12,
        spectral_depth: int = 4,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        resize_filters: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes, min_input_size=patch_size, input_multiple=patch_size)
        img_size = _pair(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        if not 0 <= spectral_depth <= depth:
            raise ValueError(f"spectral_depth must be in [0, depth={depth}], got {spectral_depth}")
        self.patch_size = patch_size
        self.resize_filters = resize_filters
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, device=device, dtype=dtype)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim, device=device, dtype=dtype)
        )
        self.pos_drop = nn.Dropout(pos_drop_rate)
        rates = drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[
            SpectFormerSpectralBlock(embed_dim, self.grid_size, mlp_ratio, rate, resize_filters, device, dtype)
            if index < spectral_depth else
            SpectFormerAttentionBlock(embed_dim, num_heads, mlp_ratio, rate, device, dtype)
            for index, rate in enumerate(rates)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, device=device, dtype=dtype)
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{index}") for index in range(depth)
        ]
        self._init_pooled_head(num_classes, global_pool, drop_rate, device=device, dtype=dtype)
        self.apply(_init_linear)
        trunc_normal_(self.pos_embed, std=0.02)

    def _embed(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Checked image → (B, H/16, W/16, C) patch map plus the position embedding."""
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        return self.pos_drop(x + _grid_pos_embed(self.pos_embed, grid_size, self.grid_size, self.resize_filters))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1, 2)


# ------------------------------------------------------------------------------------------ hierarchical family


class SpectFormerAttention(nn.Module):
    """Multi-head attention with separate ``q`` and packed ``kv`` (k | v) projections, on (B, N, C) tokens.

    With ``class_only`` only the first token queries (class attention, CaiT-style): (B, 1 + N, C) → (B, 1, C).
    """

    def __init__(self, dim: int, num_heads: int, class_only: bool = False, device=None, dtype=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.class_only = class_only
        self.q = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.kv = nn.Linear(dim, 2 * dim, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        queries = x[:, :1] if self.class_only else x
        q = self.q(queries).reshape(batch, queries.shape[1], self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).reshape(batch, tokens, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = scaled_dot_product_attention(q, k, v, scale=self.head_dim**-0.5)
        return self.proj(out.transpose(1, 2).reshape(batch, queries.shape[1], -1))


class SpectFormerBlock(nn.Module):
    """x + DropPath(Mixer(LN1(x))), x + DropPath(DwConvMlp(LN2(x))) on a (B, H, W, C) map; the mixer is a
    spectral filter on ``grid_size`` or, when ``grid_size`` is None, multi-head self-attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float,
                 grid_size: tuple[int, int] | None, resize_filters: bool, device=None, dtype=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        if grid_size is None:
            self.attn = SpectFormerAttention(dim, num_heads, device=device, dtype=dtype)
        else:
            self.attn = SpectralGatingFilter(dim, grid_size, resize_filters, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.mlp = DwConvMlp(dim, int(dim * mlp_ratio), device=device, dtype=dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.attn, SpectFormerAttention):
            mixed = self.attn(self.norm1(x).flatten(1, 2)).reshape(x.shape)
        else:
            mixed = self.attn(self.norm1(x))
        x = x + self.drop_path(mixed)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SpectFormerStem(nn.Module):
    """Three conv-BN-ReLU (7×7 stride 2, 3×3, 3×3) → 3×3 stride-2 conv → LayerNorm: (B, 3, H, W) → (B, H/4, W/4, C)."""

    def __init__(self, in_chans: int, hidden_dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        layers = []
        for index, (kernel, stride) in enumerate(((7, 2), (3, 1), (3, 1))):
            layers += [
                nn.Conv2d(in_chans if index == 0 else hidden_dim, hidden_dim, kernel, stride, kernel // 2,
                          bias=False, device=device, dtype=dtype),
                nn.BatchNorm2d(hidden_dim, device=device, dtype=dtype),
                nn.ReLU(inplace=True),
            ]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Conv2d(hidden_dim, out_dim, 3, 2, 1, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(out_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.conv(x)).permute(0, 2, 3, 1))


class SpectFormerDownsample(nn.Module):
    """3×3 stride-2 conv → LayerNorm: (B, H, W, C) → (B, ⌈H/2⌉, ⌈W/2⌉, C')."""

    def __init__(self, in_dim: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, 3, 2, 1, device=device, dtype=dtype)
        self.norm = nn.LayerNorm(out_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class SpectFormerStage(nn.Module):
    """Downsample (all stages but the first), blocks, then a LayerNorm (all stages but the last) on (B, H, W, C)."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 drop_path: Sequence[float], grid_size: tuple[int, int] | None, final_norm: bool,
                 resize_filters: bool, downsample: bool, device=None, dtype=None):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = SpectFormerDownsample(in_dim, dim, device, dtype) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            SpectFormerBlock(dim, num_heads, mlp_ratio, drop_path[index], grid_size, resize_filters, device, dtype)
            for index in range(depth)
        ])
        self.norm = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype) if final_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)


class SpectFormerClassBlock(nn.Module):
    """The class token attends to all tokens, then its own MLP: (B, 1 + N, C) → (B, 1 + N, C), patches unchanged."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, device=None, dtype=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.attn = SpectFormerAttention(dim, num_heads, class_only=True, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1] + self.attn(self.norm1(x))
        cls = cls + self.mlp(self.norm2(cls))
        return torch.cat([cls, x[:, 1:]], dim=1)


def _stage_grids(img_size: tuple[int, int], count: int) -> list[tuple[int, int]]:
    """Token grids of the stages: stride 4 from the stem, then each stride-2 conv (padding 1) rounds up."""
    grid = [-(-img_size[0] // 4), -(-img_size[1] // 4)]
    grids = []
    for index in range(count):
        if index:
            grid = [-(-side // 2) for side in grid]
        grids.append(tuple(grid))
    return grids


class HierarchicalSpectFormer(Backbone):
    """Hierarchical SpectFormer (arXiv 2304.06446 §3, the WaveViT-style pyramid): spectral stages then attention
    stages, class-attention pooling, and with ``aux_head`` the token-labeling head (inference form:
    logits = head(class token) + 0.5 · max over tokens of aux_head(tokens))."""

    model_name = "HierarchicalSpectFormer"
    global_pools = ("token", "")

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        stem_hidden_dim: int = 32,
        embed_dims: Sequence[int] = (64, 128, 320, 448),
        depths: Sequence[int] = (3, 4, 6, 3),
        num_heads: Sequence[int] = (2, 4, 10, 14),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        spectral_stages: int = 2,
        aux_head: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        resize_filters: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes, min_input_size=32)
        if not len(embed_dims) == len(depths) == len(num_heads) == len(mlp_ratios):
            raise ValueError("embed_dims, depths, num_heads and mlp_ratios need one entry per stage")
        self.img_size = _pair(img_size)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.stem = SpectFormerStem(in_chans, stem_hidden_dim, embed_dims[0], device=device, dtype=dtype)
        grids = _stage_grids(self.img_size, len(depths))
        rates = drop_path_rates(drop_path_rate, sum(depths))
        stages, self.feature_info = [], []
        for index, (dim, depth) in enumerate(zip(embed_dims, depths)):
            stages.append(SpectFormerStage(
                embed_dims[index - 1] if index else dim, dim, depth, num_heads[index], mlp_ratios[index],
                rates[sum(depths[:index]):sum(depths[:index + 1])],
                grids[index] if index < spectral_stages else None, index < len(depths) - 1, resize_filters,
                downsample=index > 0, device=device, dtype=dtype,
            ))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2**index, module=f"stages.{index}"))
        self.stages = nn.Sequential(*stages)
        self.class_block = SpectFormerClassBlock(
            embed_dims[-1], num_heads[-1], mlp_ratios[-1], device=device, dtype=dtype
        )
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6, device=device, dtype=dtype)
        self.has_aux_head = aux_head
        self._init_pooled_head(num_classes, global_pool, drop_rate, device=device, dtype=dtype)
        self.aux_head = self._make_classifier(num_classes, device, dtype) if aux_head else None
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _init_linear(module)
            elif isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.norm", (99998,)),
                (r"^class_block|^norm", (99999,)),
            ],
        )

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if self.has_aux_head:
            self.aux_head = self._make_classifier(num_classes, **self._factory_kwargs()).train(self.training)

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)

    def stage_feature(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, H, W) last-stage map → class-attention pooling → norm → logits (plus the token-labeling term)."""
        if not self.global_pool:
            return super().forward_head(x, pre_logits)
        patches = x.flatten(2).transpose(1, 2)
        tokens = self.norm(self.class_block(torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)))
        pooled = self.head_drop(tokens[:, 0])
        if pre_logits:
            return pooled
        logits = self.head(pooled)
        if self.aux_head is not None and self.num_classes > 0:
            logits = logits + 0.5 * self.aux_head(tokens[:, 1:]).amax(dim=1)
        return logits


# --------------------------------------------------------------------------------------------- checkpoints

_HIERARCHICAL_RENAMES = (
    (re.compile(r"^patch_embed1\."), lambda m: "stem."),
    (re.compile(r"^patch_embed(\d)\."), lambda m: f"stages.{int(m[1]) - 1}.downsample."),
    (re.compile(r"^block(\d)\.(\d+)\.mlp\.dwconv\.dwconv\."), lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.mlp.dwconv."),
    (re.compile(r"^block(\d)\."), lambda m: f"stages.{int(m[1]) - 1}.blocks."),
    (re.compile(r"^post_network\.0\."), lambda m: "class_block."),
)


def _hierarchical_key(key: str, num_stages: int) -> str:
    norm = re.match(r"^norm(\d)\.(.*)$", key)
    if norm:
        # norm1..norm3 close stages 1-3; the last one normalises the class-attention output.
        index = int(norm[1])
        return f"norm.{norm[2]}" if index == num_stages else f"stages.{index - 1}.norm.{norm[2]}"
    for pattern, replacement in _HIERARCHICAL_RENAMES:
        key, count = pattern.subn(replacement, key)
        if count:
            break
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Convert the official ``badripatro/SpectFormers`` layouts (or ours, passed through) to this model's names.

    Training checkpoints (``{'model': ...}``, ``module.`` prefixes) are unwrapped first. The vanilla layout is
    ours already. The hierarchical one renames ``patch_embed1`` → ``stem``, ``patch_embed{i}`` / ``block{i}`` /
    ``norm{i}`` → stage ``i − 1``'s downsample / blocks / norm (the last norm → ``norm``),
    ``post_network.0`` → ``class_block`` and ``mlp.dwconv.dwconv`` → ``mlp.dwconv``; ``aux_head.*`` is dropped for a
    model built with ``aux_head=False``.
    """
    state_dict = _unwrap(state_dict, "the state dict")
    if not isinstance(model, HierarchicalSpectFormer):
        return dict(state_dict)
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("aux_head.") and not model.has_aux_head:
            continue
        converted[_hierarchical_key(key, len(model.stages))] = value
    return converted


# ------------------------------------------------------------------------------------------------ registry


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "fixed_input_size": False,
        "classifier": "head",
        "license": "unknown",
        "paper_ids": "arXiv:2304.06446",
        "paper_name": "SpectFormer: Frequency and Attention is what you need in a Vision Transformer",
        "origin_url": "https://github.com/badripatro/SpectFormers",
        **kwargs,
    }


# No weights were published (card: weights_note); the cfgs carry the family's eval settings.
default_cfgs = generate_default_cfgs(pretrained_cfgs("spectformer", _cfg))


def _create_spectformer(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    kwargs = dict(MODEL_ARGS[variant], **kwargs)
    hierarchical = variant.startswith("vz_spectformer_h_")
    model_class = HierarchicalSpectFormer if hierarchical else SpectFormer
    depth = len(kwargs.get("depths", ())) if hierarchical else kwargs.get("depth", 12)
    out_indices = kwargs.pop("out_indices", tuple(range(depth)))
    return build_model_with_cfg(
        model_class,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


# Vanilla: width D, 12 or 19 blocks of which the first 4 spectral. The released attention hard-codes 6 heads,
# which divides only 384; T and B take 4 and 8 here (head count does not change the parameters).
# Hierarchical: the official configs (stem width, widths, depths, heads, MLP ratios); stages 1-2 spectral.
MODEL_ARGS = {
    "vz_spectformer_t": dict(embed_dim=256, depth=12, num_heads=4),
    "vz_spectformer_xs": dict(embed_dim=384, depth=12, num_heads=6),
    "vz_spectformer_s": dict(embed_dim=384, depth=19, num_heads=6),
    "vz_spectformer_b": dict(embed_dim=512, depth=19, num_heads=8),
    "vz_spectformer_h_s": dict(stem_hidden_dim=32, embed_dims=(64, 128, 320, 448), depths=(3, 4, 6, 3),
                               num_heads=(2, 4, 10, 14)),
    "vz_spectformer_h_b": dict(stem_hidden_dim=64, embed_dims=(64, 128, 320, 512), depths=(3, 4, 12, 3),
                               num_heads=(2, 4, 10, 16)),
    "vz_spectformer_h_l": dict(stem_hidden_dim=64, embed_dims=(96, 192, 384, 512), depths=(3, 6, 18, 3),
                               num_heads=(3, 6, 12, 16)),
}


@register_model
def vz_spectformer_t(pretrained: bool = False, **kwargs) -> SpectFormer:
    """SpectFormer-T: 9.2M params, 1.8 GMACs at 224, 76.9% ImageNet top-1."""
    return _create_spectformer("vz_spectformer_t", pretrained, **kwargs)


@register_model
def vz_spectformer_xs(pretrained: bool = False, **kwargs) -> SpectFormer:
    """SpectFormer-XS: 20.0M params, 4.0 GMACs at 224, 80.2% ImageNet top-1."""
    return _create_spectformer("vz_spectformer_xs", pretrained, **kwargs)


@register_model
def vz_spectformer_s(pretrained: bool = False, **kwargs) -> SpectFormer:
    """SpectFormer-S: 32.4M params, 6.6 GMACs at 224, 81.7% ImageNet top-1."""
    return _create_spectformer("vz_spectformer_s", pretrained, **kwargs)


@register_model
def vz_spectformer_b(pretrained: bool = False, **kwargs) -> SpectFormer:
    """SpectFormer-B: 57.2M params, 11.6 GMACs at 224, 82.1% ImageNet top-1."""
    return _create_spectformer("vz_spectformer_b", pretrained, **kwargs)


@register_model
def vz_spectformer_h_s(pretrained: bool = False, **kwargs) -> HierarchicalSpectFormer:
    """Hierarchical SpectFormer-S: 22.2M params (21.8M without the token-labeling head), 84.3% top-1."""
    return _create_spectformer("vz_spectformer_h_s", pretrained, **kwargs)


@register_model
def vz_spectformer_h_b(pretrained: bool = False, **kwargs) -> HierarchicalSpectFormer:
    """Hierarchical SpectFormer-B: 33.1M params (32.5M without the token-labeling head), 85.0% top-1."""
    return _create_spectformer("vz_spectformer_h_b", pretrained, **kwargs)


@register_model
def vz_spectformer_h_l(pretrained: bool = False, **kwargs) -> HierarchicalSpectFormer:
    """Hierarchical SpectFormer-L: 54.7M params (54.2M without the token-labeling head), 85.7% top-1."""
    return _create_spectformer("vz_spectformer_h_l", pretrained, **kwargs)


FAMILY = register_family(Family(
    name="spectformer", model_classes=(SpectFormer, HierarchicalSpectFormer), checkpoint_filter_fn=checkpoint_filter_fn
))
