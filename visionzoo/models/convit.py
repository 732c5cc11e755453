"""ConViT: a DeiT whose first blocks use gated positional self-attention (GPSA) initialised as convolutions.

d'Ascoli, Touvron, Leavitt, Morcos, Biroli, Sagun, "ConViT: Improving Vision Transformers with Soft
Convolutional Inductive Biases", ICML 2021 (arXiv 2103.10697). Official code: facebookresearch/convit.

Blocks 0..9 run GPSA on the patch tokens alone; the class token joins before the last two (plain
multi-head attention) blocks. Unlike the official model and timm's, which are fixed at their build size,
any input whose sides are multiples of 16 works: the position embedding is resampled bicubically and
the relative positions are rebuilt for the actual (possibly non-square) patch grid.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from visionzoo.layers.attention import MultiHeadSelfAttention
from visionzoo.layers.drop import DropPath
from visionzoo.layers.gpsa import GatedPositionalSelfAttention
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.layers.pos_embed import grid_pos_embed
from visionzoo.models._base import TokenBackbone
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family

__all__ = ["ConViT", "checkpoint_filter_fn"]

def _init_linear_and_norm(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ConViTBlock(nn.Module):
    """Pre-norm transformer block whose attention is GPSA (patch tokens on a grid) or plain multi-head."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        use_gpsa: bool,
        grid_size: tuple[int, int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        locality_strength: float = 1.0,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.use_gpsa = use_gpsa
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        if use_gpsa:
            self.attn = GatedPositionalSelfAttention(
                dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop,
                locality_strength=locality_strength, grid_size=grid_size, device=device, dtype=dtype,
            )
        else:
            self.attn = MultiHeadSelfAttention(
                dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, device=device, dtype=dtype
            )
            self.attn.apply(_init_linear_and_norm)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, device=device, dtype=dtype)
        self.mlp.apply(_init_linear_and_norm)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        normed = self.norm1(x)
        attended = self.attn(normed, grid_size) if self.use_gpsa else self.attn(normed)
        x = x + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConViT(TokenBackbone):
    """ConViT (arXiv 2103.10697): patch embed + absolute position embedding, GPSA blocks, class token, MHSA blocks."""

    model_name = "ConViT"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        local_up_to_layer: int = 10,
        locality_strength: float = 1.0,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes, min_input_size=patch_size, input_multiple=patch_size)
        if not 0 <= local_up_to_layer <= depth:
            raise ValueError(f"local_up_to_layer must be in [0, depth={depth}], got {local_up_to_layer}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.local_up_to_layer = local_up_to_layer
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_prefix_tokens = 1

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, device=device, dtype=dtype)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim, device=device, dtype=dtype)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, device=device, dtype=dtype))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        drop_path_rates = [drop_path_rate * index / max(depth - 1, 1) for index in range(depth)]
        self.blocks = nn.ModuleList(
            ConViTBlock(
                embed_dim, num_heads, use_gpsa=index < local_up_to_layer, grid_size=self.grid_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, locality_strength=locality_strength,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=drop_path_rates[index],
                device=device, dtype=dtype,
            )
            for index in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, device=device, dtype=dtype)
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{index}") for index in range(depth)
        ]
        self._init_pooled_head(num_classes, global_pool, drop_rate, device=device, dtype=dtype)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _embed(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Patch tokens (B, N, C) plus the position embedding for ``grid_size``."""
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.pos_drop(x + grid_pos_embed(self.pos_embed, grid_size, self.grid_size))

    def _block_args(self, grid_size: tuple[int, int]) -> tuple:
        return (grid_size,)

    def _run_block(self, index: int, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        if index == self.local_up_to_layer and self.cls_token is not None:
            x = self._with_class_token(x)
        return super()._run_block(index, x, grid_size)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last wanted index (and the class token if it would never join)."""
        if feature_take_indices(len(self.blocks), indices)[1] < self.local_up_to_layer:
            self.cls_token = None
            self.num_prefix_tokens = 0
            prune_head = prune_head or self.global_pool == "token"
        return super().prune_intermediate_layers(indices, prune_norm, prune_head)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ConViT) -> dict[str, torch.Tensor]:
    """Our, timm's and the official layouts (all the same keys) to ours.

    Unwraps ``model``/``state_dict`` containers and ``module.`` prefixes, drops cached relative-position
    buffers (we rebuild them) and resamples ``pos_embed`` when the model was built for another grid.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module."):]: value for key, value in state_dict.items()}
    converted = {}
    for key, value in state_dict.items():
        if key.endswith((".rel_indices", ".rel_pos")):
            continue
        if key == "pos_embed" and value.shape[1] != model.pos_embed.shape[1]:
            old_side = int(round(value.shape[1] ** 0.5))
            value = grid_pos_embed(value, model.grid_size, (old_side, old_side))
        converted[key] = value
    return converted


def _create_convit(variant: str, pretrained: bool = False, **kwargs) -> ConViT:
    kwargs = dict(MODEL_ARGS[variant], **kwargs)
    # Every block's map by default, as the zoo contract asks (timm's convit_* default to the last 3).
    out_indices = kwargs.pop("out_indices", tuple(range(kwargs.get("depth", 12))))
    return build_model_with_cfg(
        ConViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )




def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "fixed_input_size": False,
        "min_input_size": (3, 16, 16),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2103.10697",
        "paper_name": "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases",
        "origin_url": "https://github.com/facebookresearch/convit",
        **kwargs,
    }


# Tags, sources and eval settings come from the model card (visionzoo/cards/convit.yaml).
default_cfgs = generate_default_cfgs(pretrained_cfgs("convit", _cfg))

# 48 channels per head (64 in the "+" models, released without weights); the first 10 of 12 blocks use GPSA.
MODEL_ARGS = {
    "vz_convit_tiny": dict(embed_dim=192, num_heads=4),
    "vz_convit_small": dict(embed_dim=432, num_heads=9),
    "vz_convit_base": dict(embed_dim=768, num_heads=16),
    "vz_convit_tiny_plus": dict(embed_dim=256, num_heads=4),
    "vz_convit_small_plus": dict(embed_dim=576, num_heads=9),
    "vz_convit_base_plus": dict(embed_dim=1024, num_heads=16),
}


@register_model
def vz_convit_tiny(pretrained: bool = False, **kwargs) -> ConViT:
    return _create_convit("vz_convit_tiny", pretrained, **kwargs)


@register_model
def vz_convit_small(pretrained: bool = False, **kwargs) -> ConViT:
    return _create_convit("vz_convit_small", pretrained, **kwargs)


@register_model
def vz_convit_base(pretrained: bool = False, **kwargs) -> ConViT:
    return _create_convit("vz_convit_base", pretrained, **kwargs)


@register_model
def vz_convit_tiny_plus(pretrained: bool = False, **kwargs) -> ConViT:
    return _create_convit("vz_convit_tiny_plus", pretrained, **kwargs)


@register_model
def vz_convit_small_plus(pretrained: bool = False, **kwargs) -> ConViT:
    return _create_convit("vz_convit_small_plus", pretrained, **kwargs)


@register_model
def vz_convit_base_plus(pretrained: bool = False, **kwargs) -> ConViT:
    return _create_convit("vz_convit_base_plus", pretrained, **kwargs)


FAMILY = register_family(Family(name="convit", model_classes=(ConViT,), checkpoint_filter_fn=checkpoint_filter_fn))
