"""Sparsifiner: a DeiT whose every query attends only to the top-K keys a light predictor picks for it.

Wei, Duke, Jiang, Aarabi, Taylor, Shkurti, "Sparsifiner: Learning Sparse Instance-Dependent Attention for
Efficient Vision Transformers", CVPR 2023 (arXiv 2303.13755). Official code: lim142857/Sparsifiner (MIT).

Each block's mask predictor reads the block's own queries and keys, builds a low-rank approximation of the attention
map (a sparse mix of learned basis rows) and keeps, for every patch query, the K = ⌈keep_rate · N⌉ keys with the
largest approximate scores; the class-token query keeps every key. Attention then runs over the kept keys only
(:func:`visionzoo.ops.sparse_attention.sparse_topk_attention`).

Zoo decisions (not in the paper): at an input size other than the one built for, the predictor's token tables
(indexed by token position, like a position embedding) are resampled the way the position embedding is, the
down-projection rescaled so that its sum over tokens keeps its size; ``keep_rate`` is a constructor argument, and a
keep rate of 1.0 skips the predictor (every key is kept, which is dense attention).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from visionzoo.layers.drop import DropPath, drop_path_rates
from visionzoo.layers.inference_cache import InferenceCache
from visionzoo.layers.mlp import Mlp
from visionzoo.layers.patch_embed import PatchEmbed
from visionzoo.layers.pos_embed import grid_pos_embed, resample_grid_embed
from visionzoo.models._base import TokenBackbone
from visionzoo.models._checkpoint import _unwrap
from visionzoo.models._pretrained import pretrained_cfgs
from visionzoo.models._registry import Family, register_family
from visionzoo.ops import trace_leaf
from visionzoo.ops.sparse_attention import (
    approximate_attention,
    largest_scores_index,
    predicted_top_keys,
    sparse_topk_attention,
)

__all__ = ["Sparsifiner", "checkpoint_filter_fn"]

Record = dict[str, list[torch.Tensor]]


# Grid sizes whose selection tables each predictor keeps (about 150 kB a size and block for DeiT-S at 384).
SELECTION_CACHE_SIZES = 4


def _init_linear_and_norm(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _token_table(table: torch.Tensor, grid_size: tuple[int, int], trained_grid: tuple[int, int],
                 keep_sum: bool = False) -> torch.Tensor:
    """A (1 + H·W, C) table indexed by token (class token first) for a ``grid_size`` patch grid; ``keep_sum``
    rescales the patch rows so that a sum over tokens keeps its size."""
    if tuple(grid_size) == tuple(trained_grid):
        return table
    patches = resample_grid_embed(table[None, 1:], tuple(grid_size), tuple(trained_grid))[0]
    if keep_sum:
        patches = patches * (trained_grid[0] * trained_grid[1] / (grid_size[0] * grid_size[1]))
    return torch.cat([table[:1], patches], dim=0)


# It depends on the input's size, which a symbolic trace cannot branch on: traced graphs call it whole.
torch.fx.wrap("_token_table")


@trace_leaf
def top_keys(approx_attention: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """The ⌈keep_rate · N⌉ keys with the largest approximate scores per query (no gradient flows through the choice;
    zero scores, which the thresholded basis makes often, ranked by lower key index)."""
    return largest_scores_index(approx_attention, max(1, math.ceil(keep_rate * approx_attention.shape[-1])))


class SparsifinerMaskPredictor(nn.Module):
    """Approximate attention Â = C U from the block's queries and keys (paper §3.2, one predictor for all heads).

    ``proj_c_q`` / ``proj_c_k`` halve the head width, ``proj_n`` projects the keys down to ``reduced_tokens`` token
    mixtures, and the rows of |``proj_back_n``|ᵀ (entries at most ``basis_threshold`` zeroed) are the basis that the
    coefficients C, kept to their ``coef_topk`` largest per query, combine. In the attention-reconstruction phase
    (``reconstruction=True``) the raw basis and dense coefficients are used, so that Â is trained end to end.
    """

    def __init__(self, head_dim: int, num_heads: int, num_tokens: int, reduced_tokens: int | None = None,
                 reduce_c_factor: int = 2, reduce_n_factor: int = 6, coef_topk: int = 8, basis_threshold: float = 0.02,
                 device=None, dtype=None):
        super().__init__()
        reduced_dim = head_dim // reduce_c_factor
        reduced_tokens = num_tokens // reduce_n_factor if reduced_tokens is None else reduced_tokens
        if reduced_tokens < 1:
            raise ValueError(f"the predictor reduces {num_tokens} tokens to {reduced_tokens}: build the model for an "
                             f"img_size with at least {reduce_n_factor} tokens, or pass reduced_tokens >= 1")
        self.coef_topk = min(coef_topk, reduced_tokens)
        self.basis_threshold = basis_threshold
        self.scale = num_heads**-0.5
        self.proj_c_q = nn.Linear(head_dim, reduced_dim, device=device, dtype=dtype)
        self.proj_c_k = nn.Linear(head_dim, reduced_dim, device=device, dtype=dtype)
        self.proj_n = nn.Parameter(torch.empty(num_tokens, reduced_tokens, device=device, dtype=dtype))
        self.proj_back_n = nn.Parameter(torch.empty(num_tokens, reduced_tokens, device=device, dtype=dtype))
        nn.init.trunc_normal_(self.proj_n, std=0.02)
        nn.init.trunc_normal_(self.proj_back_n, std=0.02)
        self._selection_cache = InferenceCache(SELECTION_CACHE_SIZES)

    def _tables(self, grid_size: tuple[int, int], trained_grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The down- and up-projections (1 + H·W, n) for a ``grid_size`` patch grid."""
        return (_token_table(self.proj_n, grid_size, trained_grid, keep_sum=True),
                _token_table(self.proj_back_n, grid_size, trained_grid))

    def _coefficients(self, q: torch.Tensor, k: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        """The patch queries' coefficients C (B, heads, H·W, n)."""
        reduced_keys = self.proj_c_k(k).transpose(-2, -1) @ down
        return ((self.proj_c_q(q) @ reduced_keys) * self.scale).softmax(dim=-1)[:, :, 1:]

    def _basis(self, up: torch.Tensor) -> torch.Tensor:
        basis = up.abs().transpose(0, 1)
        return basis.masked_fill(basis <= self.basis_threshold, 0.0)

    def _selection_tables(self, grid_size: tuple[int, int],
                          trained_grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The down-projection and the thresholded basis that :meth:`kept_keys` uses, kept between inference calls
        (resampling and thresholding both tables at every call cost a 224-trained DeiT-S 6 ms per forward at 384)."""

        def make() -> tuple[torch.Tensor, torch.Tensor]:
            down, up = self._tables(grid_size, trained_grid)
            return down, self._basis(up)

        return self._selection_cache.get((tuple(grid_size), tuple(trained_grid)), (self.proj_n, self.proj_back_n),
                                         make)

    def forward(self, q: torch.Tensor, k: torch.Tensor, grid_size: tuple[int, int], trained_grid: tuple[int, int],
                reconstruction: bool = False) -> torch.Tensor:
        """q, k (B, heads, 1 + H·W, head_dim) → Â (B, heads, H·W, 1 + H·W): patch queries against every key."""
        down, up = self._tables(grid_size, trained_grid)
        coefficients = self._coefficients(q, k, down)
        if reconstruction:
            return coefficients @ up.transpose(0, 1)
        return approximate_attention(coefficients, self._basis(up), self.coef_topk)

    def kept_keys(self, q: torch.Tensor, k: torch.Tensor, grid_size: tuple[int, int], trained_grid: tuple[int, int],
                  keep_rate: float) -> torch.Tensor:
        """The keys each patch query keeps (B, heads, H·W, ⌈keep_rate · (1 + H·W)⌉), the top keys of :meth:`forward`'s
        Â chosen without building it (:func:`~visionzoo.ops.sparse_attention.predicted_top_keys`)."""
        down, basis = self._selection_tables(grid_size, trained_grid)
        return predicted_top_keys(self._coefficients(q, k, down), basis, self.coef_topk, keep_rate)


class SparsifinerAttention(nn.Module):
    """Multi-head self-attention over the keys the mask predictor keeps for each query (the class token keeps all)."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, keep_rate: float, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, device=None, dtype=None, **predictor_kwargs):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.keep_rate = keep_rate
        self.reconstruction = False
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, device=device, dtype=dtype)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.proj_drop = nn.Dropout(proj_drop)
        self.mask_predictor = SparsifinerMaskPredictor(
            self.head_dim, num_heads, num_tokens, device=device, dtype=dtype, **predictor_kwargs)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], trained_grid: tuple[int, int],
                record: Record | None = None) -> torch.Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if record is not None and "attention" in record:
            record["attention"].append(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        if self.keep_rate >= 1.0:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            if self.reconstruction or (record is not None and "approx_attention" in record):
                approx = self.mask_predictor(q, k, grid_size, trained_grid, self.reconstruction)
                if record is not None and "approx_attention" in record:
                    record["approx_attention"].append(approx)
                key_index = top_keys(approx, self.keep_rate)
            else:  # Â itself is not needed: the fused selection never builds it
                key_index = self.mask_predictor.kept_keys(q, k, grid_size, trained_grid, self.keep_rate)
            out = sparse_topk_attention(q, k, v, key_index, scale=self.scale, dense_queries=1)
        out = out.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(out))


class SparsifinerBlock(nn.Module):
    """Pre-norm transformer block (DeiT) with Sparsifiner attention."""

    def __init__(self, dim: int, num_heads: int, num_tokens: int, keep_rate: float, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 reduced_tokens: int | None = None, device=None, dtype=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.attn = SparsifinerAttention(dim, num_heads, num_tokens, keep_rate, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                         proj_drop=proj_drop, reduced_tokens=reduced_tokens, device=device,
                                         dtype=dtype)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], trained_grid: tuple[int, int],
                record: Record | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid_size, trained_grid, record))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Sparsifiner(TokenBackbone):
    """Sparsifiner on a DeiT backbone (arXiv 2303.13755): class token, position embedding, sparse-attention blocks.

    ``keep_rate`` is the share of keys each patch query keeps (0.25 in the official default config);
    ``reduced_tokens`` the predictor's token mixtures (default: ⌊(1 + tokens at img_size) / 6⌋, 32 at 224);
    ``reconstruction`` starts in the attention-reconstruction phase (:meth:`set_reconstruction`).
    """

    model_name = "Sparsifiner"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        keep_rate: float = 0.25,
        reduced_tokens: int | None = None,
        reconstruction: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__(in_chans, num_classes, min_input_size=patch_size, input_multiple=patch_size)
        if not 0.0 < keep_rate <= 1.0:
            raise ValueError(f"keep_rate is the share of keys each query keeps, in (0, 1]; got {keep_rate}")
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.keep_rate = keep_rate
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_prefix_tokens = 1
        num_tokens = 1 + self.grid_size[0] * self.grid_size[1]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, device=device, dtype=dtype)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, device=device, dtype=dtype))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim, device=device, dtype=dtype))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        self.blocks = nn.ModuleList(
            SparsifinerBlock(embed_dim, num_heads, num_tokens, keep_rate, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                             proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, drop_path=rate,
                             reduced_tokens=reduced_tokens, device=device, dtype=dtype)
            for rate in drop_path_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, device=device, dtype=dtype)
        self.feature_info = [
            dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{index}") for index in range(depth)
        ]
        self._init_pooled_head(num_classes, global_pool, drop_rate, device=device, dtype=dtype)

        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for block in self.blocks:
            for name, module in block.named_modules():
                if not name.startswith("attn.mask_predictor"):
                    _init_linear_and_norm(module)
            block.attn.mask_predictor.apply(_init_linear_and_norm)
        self.set_reconstruction(reconstruction)

    def set_reconstruction(self, enable: bool = True) -> None:
        """Attention-reconstruction phase (paper §3.3, the first training epochs): raw basis, dense coefficients."""
        for block in self.blocks:
            block.attn.reconstruction = enable

    def _embed(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Class token and patch tokens (B, 1 + H·W, C) plus the position embedding for ``grid_size``."""
        x = self._with_class_token(self.patch_embed(x).flatten(2).transpose(1, 2))
        return self.pos_drop(x + grid_pos_embed(self.pos_embed, grid_size, self.grid_size, self.num_prefix_tokens))

    def _block_args(self, grid_size: tuple[int, int]) -> tuple:
        return grid_size, self.grid_size

    def forward_distill(self, x: torch.Tensor, record: Sequence[str] = ()) -> dict[str, torch.Tensor | list]:
        """What the training losses compare: ``logits``, final patch ``tokens`` and, per block, each map named in
        ``record`` (``approx_attention``: the predictor's Â; ``attention``: the dense softmax attention)."""
        grid_size = self._patch_grid(x)
        recorded: Record = {name: [] for name in record}
        x = self._embed(x, grid_size)
        for block in self.blocks:
            x = block(x, grid_size, self.grid_size, recorded)  # not checkpointed: a rerun would record twice
        x = self.norm(x)
        return dict(logits=self.forward_head(x), tokens=x[:, self.num_prefix_tokens:], **recorded)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Sparsifiner) -> dict[str, torch.Tensor]:
    """Ours, the official Sparsifiner layout and timm's ``deit_*`` layout to ours.

    The official layout is ours (DeiT keys plus ``blocks.{i}.attn.mask_predictor.*``); it converts strictly. A DeiT
    checkpoint (timm's or the DeiT release's) has no mask predictors: they keep the model's own initialisation, as
    the paper starts from DeiT weights. Position embeddings and predictor token tables made for another grid are
    resampled; a distilled DeiT's distillation token and head are refused with what to use instead.
    """
    state_dict = _unwrap(state_dict, "the state dict")
    if "dist_token" in state_dict:
        raise ValueError("this is a distilled DeiT (deit_*_distilled_*: it has a dist_token and a head_dist); "
                         "Sparsifiner starts from the plain deit_*_patch16_224 weights")
    own = model.state_dict()
    converted = {}
    for key, value in state_dict.items():
        if key == "pos_embed" and value.shape != own[key].shape:
            old_side = int(round((value.shape[1] - 1) ** 0.5))
            value = grid_pos_embed(value, model.grid_size, (old_side, old_side), model.num_prefix_tokens)
        elif key.endswith(("mask_predictor.proj_n", "mask_predictor.proj_back_n")) and value.shape != own[key].shape:
            if value.shape[1] != own[key].shape[1]:
                raise ValueError(f"{key} holds {value.shape[1]} reduced tokens but the model was built with "
                                 f"{own[key].shape[1]}: build it with reduced_tokens={value.shape[1]}")
            old_side = int(round((value.shape[0] - 1) ** 0.5))
            value = _token_table(value, model.grid_size, (old_side, old_side), keep_sum=key.endswith("proj_n"))
        converted[key] = value
    if not any(".mask_predictor." in key for key in state_dict):
        converted.update({key: value for key, value in own.items() if ".mask_predictor." in key})
    return converted


def _create_sparsifiner(variant: str, pretrained: bool = False, **kwargs) -> Sparsifiner:
    kwargs = dict(MODEL_ARGS[variant], **kwargs)
    out_indices = kwargs.pop("out_indices", tuple(range(kwargs.get("depth", 12))))
    return build_model_with_cfg(
        Sparsifiner,
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
        "license": "mit",
        "paper_ids": "arXiv:2303.13755",
        "paper_name": "Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers",
        "origin_url": "https://github.com/lim142857/Sparsifiner",
        **kwargs,
    }


# No released weights: the card says so, and the backbone starts from timm's DeiT weights (checkpoint_filter_fn).
default_cfgs = generate_default_cfgs(pretrained_cfgs("sparsifiner", _cfg))

# DeiT shapes (head width 64); keep rate 0.25 is the official default config. Tiny and base are zoo extensions.
MODEL_ARGS = {
    "vz_sparsifiner_deit_tiny": dict(embed_dim=192, num_heads=3),
    "vz_sparsifiner_deit_small": dict(embed_dim=384, num_heads=6),
    "vz_sparsifiner_deit_base": dict(embed_dim=768, num_heads=12),
}


@register_model
def vz_sparsifiner_deit_tiny(pretrained: bool = False, **kwargs) -> Sparsifiner:
    return _create_sparsifiner("vz_sparsifiner_deit_tiny", pretrained, **kwargs)


@register_model
def vz_sparsifiner_deit_small(pretrained: bool = False, **kwargs) -> Sparsifiner:
    return _create_sparsifiner("vz_sparsifiner_deit_small", pretrained, **kwargs)


@register_model
def vz_sparsifiner_deit_base(pretrained: bool = False, **kwargs) -> Sparsifiner:
    return _create_sparsifiner("vz_sparsifiner_deit_base", pretrained, **kwargs)


FAMILY = register_family(Family(name="sparsifiner", model_classes=(Sparsifiner,),
                                checkpoint_filter_fn=checkpoint_filter_fn))
