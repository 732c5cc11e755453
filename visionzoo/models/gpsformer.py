"""GPSFormer-style point-cloud networks (Wang et al., "GPSFormer: A Global Perception and Local Structure
Fitting-based Transformer for Point Cloud Understanding", ECCV 2024, arXiv 2407.13519).

No official code or weights exist: this is the re-implementation that specs/gpsformer.md §4-§5 fixes, sized to the
published parameter counts (2.36 M classifier, 0.68 M elite). Inputs are clouds (B, N, 3 + extra channels),
channels-last; channels 0-2 are the coordinates used for sampling, grouping and geometry.

* :class:`GPSFormer` — classification: embed → 3 GPS blocks (GPM → FPS to N/2 → LSFConv) → [max ; mean] pool →
  MLP head.
* :class:`GPSFormerPartSeg` — part segmentation: 5 GPS blocks, a U-Net decoder of 3-NN feature propagation, the
  object category as a one-hot embedding, per-point logits over the 50 ShapeNetPart parts.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from visionzoo.layers.point_conv import GPSBlock, LinearNormAct
from visionzoo.models._base import Backbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._registry import Family, register_family
from visionzoo.ops import trace_leaf
from visionzoo.ops.points import index_points, knn_point, square_distance

__all__ = ["GPSFormer", "GPSFormerPartSeg", "checkpoint_filter_fn"]

SHAPENET_PART_COUNTS = (4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3)


@trace_leaf
def check_points_input(x: torch.Tensor, in_chans: int, min_points: int, model_name: str) -> None:
    """Raise unless ``x`` is a finite floating-point (B, N, in_chans) cloud with N ≥ ``min_points``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{model_name} expects a floating-point point cloud tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() != 3 or x.shape[-1] != in_chans:
        hint = ""
        if x.dim() == 3 and x.shape[1] == in_chans:
            hint = " (it looks channels-first (B, C, N): pass x.transpose(1, 2))"
        elif x.dim() == 2:
            hint = " (add a batch dimension with x.unsqueeze(0))"
        elif x.dim() == 3:
            hint = f" (build the model with in_chans={x.shape[-1]} for xyz plus {x.shape[-1] - 3} extra channels)"
        raise ValueError(
            f"{model_name} expects points of shape (B, N, {in_chans}) (xyz first), got {tuple(x.shape)}{hint}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{model_name} got an empty batch (shape {tuple(x.shape)})")
    if x.shape[1] < min_points:
        raise ValueError(
            f"{model_name} needs at least {min_points} points per cloud for its stages (each halves the cloud and "
            f"the last groups up to 32 neighbours), got {x.shape[1]}"
        )
    if not torch.compiler.is_compiling() and not torch.isfinite(x[..., :3]).all():
        raise ValueError(f"{model_name} got NaN or infinite coordinates; drop or repair those points first")


class GPSFormerStem(LinearNormAct):
    """Per-point embedding: Linear (no bias) → BN → ReLU, in_chans → embed_dim."""


class _PointBackbone(Backbone):
    """What both GPSFormer models share: the embed, the GPS blocks and the point-cloud input contract."""

    feature_fmt = "NLC"
    model_name = "GPSFormer"

    def __init__(
        self, num_classes: int, in_chans: int, embed_dim: int, dims: Sequence[int], out_dims: Sequence[int],
        k: int = 20, num_heads: int = 4, hoconv_mode: str = "learnable", random_start: bool = False,
        drop_path_rate: float = 0.0, device=None, dtype=None,
    ) -> None:
        """The embed and GPS blocks; ``k`` is ADGConv's graph size, ``random_start`` FPS's training start."""
        super().__init__(in_chans, num_classes)
        if drop_path_rate:
            raise ValueError("GPSFormer has no stochastic depth; leave drop_path_rate at 0")
        dd = dict(device=device, dtype=dtype)
        if in_chans < 3:
            raise ValueError(f"in_chans counts xyz plus extra per-point channels, so it is at least 3, got {in_chans}")
        self.stem = GPSFormerStem(in_chans, embed_dim, **dd)
        blocks, points, self.feature_info = [], 1, []
        for index, (dim, out_dim) in enumerate(zip(dims, out_dims)):
            blocks.append(GPSBlock(dim, out_dim, k, num_heads, hoconv_mode, random_start, **dd))
            points *= 2
            self.feature_info.append(dict(num_chs=out_dim, reduction=points, module=f"stages.{index}"))
        self.stages = nn.Sequential(*blocks)
        # The last block's input must hold its 32-point balls and the kNN graphs their k points.
        self.min_input_size = max(32, k) * 2 ** (len(dims) - 1)

    def check_input(self, x: torch.Tensor) -> None:
        check_points_input(x, self.in_chans, self.min_input_size, self.model_name)

    def forward_stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., :3], self.stem(x)

    def encode(self, x: torch.Tensor, indices=None, stop_early: bool = False):
        """(xyz, features) after the stages, and those of the stages in ``indices``."""
        self.check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        state, kept = self.forward_stem(x), []
        for index, stage in enumerate(self.stages[: max_index + 1] if stop_early else self.stages):
            state = stage(state)
            if index in take_indices:
                kept.append(state)
        return state, kept

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        tail = [(r"^decoder\.(\d+)", (99998,)), (r"^(?:category_embed|pre_logits|head)", (99999,))]
        blocks = [(r"^stages\.(\d+)", None)] if coarse else [
            (r"^stages\.(\d+)\.gpm", (0,)), (r"^stages\.(\d+)\.lsf", (1,))
        ]
        return dict(stem=r"^stem", blocks=blocks + tail)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {name for name, _ in self.named_parameters() if name.endswith(".p")}


class GPSFormer(_PointBackbone):
    """GPSFormer classifier: B × N × in_chans → B × num_classes (specs/gpsformer.md §4).

    ``forward_features`` gives the last block's (B, N/8, C) centre features; the head pools max and mean
    (``global_pool="maxavg"``; ``""`` keeps the points) and runs the MLP; the recipes set its dropout to 0.5."""

    global_pools = ("maxavg", "")

    def __init__(
        self,
        num_classes: int = 40,
        in_chans: int = 3,
        embed_dim: int = 64,
        dims: Sequence[int] = (64, 128, 256),
        out_dims: Sequence[int] = (128, 256, 256),
        head_dims: Sequence[int] = (640, 256),
        global_pool: str = "maxavg",
        drop_rate: float = 0.0,
        device=None,
        dtype=None,
        **encoder_kwargs,
    ):
        super().__init__(num_classes, in_chans, embed_dim, dims, out_dims, device=device, dtype=dtype, **encoder_kwargs)
        dd = dict(device=device, dtype=dtype)
        self.num_features = out_dims[-1]
        self.head_hidden_size = head_dims[-1]
        layers, width = [], 2 * out_dims[-1]
        for hidden in head_dims:
            layers += [LinearNormAct(width, hidden, **dd), nn.Dropout(drop_rate)]
            width = hidden
        self.global_pool = self._checked_pool(global_pool)
        self.pre_logits = nn.Sequential(*layers)
        self.head_drop = nn.Identity()  # the dropout sits inside pre_logits, after each hidden layer
        self.head = self._make_classifier(num_classes, **dd)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0][1]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if not self.global_pool:
            return x
        return self.pre_logits(torch.cat([x.amax(dim=1), x.mean(dim=1)], dim=-1))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        return x if pre_logits else self.head(x)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
        stop_early: bool = False, output_fmt: str = "NLC", intermediates_only: bool = False,
    ):
        """Per-block (B, points, C) centre features; ``forward_intermediates_xyz`` also returns their coordinates."""
        if output_fmt != "NLC":
            raise ValueError(f"{self.model_name} returns (B, points, C) intermediates only (output_fmt='NLC')")
        (_, features), kept = self.encode(x, indices, stop_early or intermediates_only)
        intermediates = [f for _, f in kept]
        return intermediates if intermediates_only else (features, intermediates)

    def forward_intermediates_xyz(self, x: torch.Tensor, indices=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(centre xyz, centre features) of each block in ``indices``: what a segmentation decoder consumes."""
        return self.encode(x, indices)[1]

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_head or max_index < len(self.feature_info) - 1:
            self.pre_logits = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.reset_classifier(0, "")
        return take_indices


def _three_nn_interpolate(fine_xyz, coarse_xyz, coarse_features):
    """Coarse features at the fine points by 3-NN inverse squared-distance weights, w = 1/(d² + 1e-8)."""
    neighbours = knn_point(3, coarse_xyz, fine_xyz)
    distance = square_distance(fine_xyz, coarse_xyz).gather(-1, neighbours)
    weight = 1.0 / (distance + 1e-8)
    weight = weight / weight.sum(-1, keepdim=True)
    return (index_points(coarse_features, neighbours) * weight.unsqueeze(-1)).sum(2)


class GPSFormerPropagation(nn.Module):
    """One decoder step: interpolate coarse features to the finer points, concatenate the skip, two Linear → BN →
    ReLU layers."""

    def __init__(self, in_dim: int, skip_dim: int, dim: int, device=None, dtype=None):
        super().__init__()
        self.mlp = nn.Sequential(
            LinearNormAct(in_dim + skip_dim, dim, device=device, dtype=dtype),
            LinearNormAct(dim, dim, device=device, dtype=dtype),
        )

    def forward(self, fine_xyz, skip, coarse_xyz, coarse_features):
        return self.mlp(torch.cat([_three_nn_interpolate(fine_xyz, coarse_xyz, coarse_features), skip], dim=-1))


class GPSFormerPartSeg(_PointBackbone):
    """GPSFormer part segmentation: B × N × in_chans (and the (B,) object category) → B × N × num_classes part
    logits (specs/gpsformer.md §5). Without a category the one-hot is all zeros."""

    global_pools = ("",)

    def __init__(
        self,
        num_classes: int = 50,
        in_chans: int = 3,
        num_categories: int = 16,
        embed_dim: int = 64,
        dims: Sequence[int] = (64, 128, 256, 256, 512),
        out_dims: Sequence[int] = (128, 256, 256, 512, 512),
        decoder_dims: Sequence[int] = (512, 256, 256, 128, 128),
        category_dim: int = 64,
        drop_rate: float = 0.0,
        device=None,
        dtype=None,
        **encoder_kwargs,
    ):
        super().__init__(num_classes, in_chans, embed_dim, dims, out_dims, device=device, dtype=dtype, **encoder_kwargs)
        self.num_categories = num_categories
        dd = dict(device=device, dtype=dtype)
        skips = (embed_dim, *out_dims[:-1])[::-1]
        steps, width = [], out_dims[-1]
        for skip, dim in zip(skips, decoder_dims):
            steps.append(GPSFormerPropagation(width, skip, dim, **dd))
            width = dim
        self.decoder = nn.ModuleList(steps)
        self.category_embed = nn.Sequential(
            nn.Linear(num_categories, category_dim, **dd), nn.BatchNorm1d(category_dim, **dd), nn.ReLU()
        )
        self.num_features = self.head_hidden_size = width
        self.global_pool = ""
        self.pre_logits = nn.Sequential(LinearNormAct(width + category_dim, width, **dd), nn.Dropout(drop_rate))
        self.head = self._make_classifier(num_classes, **dd)

    def forward_features(self, x: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        """Per-point decoder features with the category embedding appended: (B, N, width + category_dim)."""
        (xyz, features), levels = self.encode(x)
        fine = [self.forward_stem(x), *levels[:-1]][::-1]
        for (fine_xyz, skip), step in zip(fine, self.decoder):
            features = step(fine_xyz, skip, xyz, features)
            xyz = fine_xyz
        one_hot = torch.zeros(x.shape[0], self.num_categories, device=x.device, dtype=features.dtype)
        if category is not None:
            one_hot = F.one_hot(category.long(), self.num_categories).to(features.dtype)
        embedded = self.category_embed(one_hot).unsqueeze(1).expand(-1, features.shape[1], -1)
        return torch.cat([features, embedded], dim=-1)

    def encode(self, x: torch.Tensor, indices=None, stop_early: bool = False):
        return super().encode(x, indices if indices is not None else len(self.stages), stop_early)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, category: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, category))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """No foreign layout exists (no official weights): training checkpoints are unwrapped, keys kept."""
    return dict(_unwrap(state_dict, "the checkpoint"))


def _create_gpsformer(variant: str, pretrained: bool = False, **kwargs):
    kwargs = dict(MODEL_ARGS[variant], **kwargs)
    model_cls = kwargs.pop("model_cls", GPSFormer)
    out_indices = kwargs.pop("out_indices", (0, 1, 2))
    # timm reads input_size as (C, H, W) to default in_chans; ours is (points, dims): hide it during the build.
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    input_size = overlay.pop("input_size", default_cfgs[variant].default.input_size)
    model = build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        pretrained_cfg_overlay=dict(overlay, input_size=None),
        **kwargs,
    )
    model.pretrained_cfg = model.default_cfg = dict(model.pretrained_cfg, input_size=tuple(input_size))
    return model


def _cfg(num_points: int = 1024, **kwargs) -> dict:
    return {
        "num_classes": 40, "input_size": (num_points, 3), "first_conv": "stem.linear", "classifier": "head",
        "license": "apache-2.0", "paper_ids": "arXiv:2407.13519",
        "origin_url": "https://github.com/changshuowang/GPSFormer",
        "notes": ("GPSFormer-style re-implementation; no official weights",),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vz_gpsformer_cls": _cfg(),
    "vz_gpsformer_elite_cls": _cfg(),
    "vz_gpsformer_partseg": _cfg(num_points=2048, num_classes=50),
})

MODEL_ARGS = {
    "vz_gpsformer_cls": dict(),
    "vz_gpsformer_elite_cls": dict(embed_dim=32, dims=(32, 64, 128), out_dims=(64, 128, 128), head_dims=(384, 256)),
    "vz_gpsformer_partseg": dict(model_cls=GPSFormerPartSeg, out_indices=(0, 1, 2, 3, 4)),
}


@register_model
def vz_gpsformer_cls(pretrained: bool = False, **kwargs) -> GPSFormer:
    """GPSFormer classifier: 2.36 M params (40 classes), 3 GPS blocks 64 → 128 → 256 at 1024 points."""
    return _create_gpsformer("vz_gpsformer_cls", pretrained, **kwargs)


@register_model
def vz_gpsformer_elite_cls(pretrained: bool = False, **kwargs) -> GPSFormer:
    """GPSFormer-elite classifier: 0.68 M params (40 classes), widths halved, head 384 → 256."""
    return _create_gpsformer("vz_gpsformer_elite_cls", pretrained, **kwargs)


@register_model
def vz_gpsformer_partseg(pretrained: bool = False, **kwargs) -> GPSFormerPartSeg:
    """GPSFormer part segmentation (ShapeNetPart, 50 parts, 16 categories): 5 GPS blocks and a U-Net decoder."""
    return _create_gpsformer("vz_gpsformer_partseg", pretrained, **kwargs)


FAMILY = register_family(Family(
    name="gpsformer", model_classes=(GPSFormer, GPSFormerPartSeg), checkpoint_filter_fn=checkpoint_filter_fn,
    input_kind="points",
))
