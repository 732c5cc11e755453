"""The per-model half of timm's contract, written once: a family file holds only its architecture.

A family builds its layers on :class:`Backbone` and sets what timm reads (``num_classes``, ``num_features``,
``head_hidden_size``, ``feature_info``). The base gives it the input check, ``forward_features`` /
``forward_head`` / ``forward``, ``reset_classifier`` / ``get_classifier``, ``forward_intermediates``,
``prune_intermediate_layers``, gradient checkpointing and the ``group_matcher`` / ``no_weight_decay`` defaults.

A hierarchical family runs ``stem`` then ``stages`` (each stage checkpoints its own blocks) then its neck, and
overrides the hooks :meth:`forward_stem`, :meth:`stage_feature`, :meth:`forward_neck` and :meth:`prune_neck`
where its layout needs more than the identity.

Heads come in the two forms the families' checkpoints hold: a timm head (``ClassifierHead``,
``NormMlpClassifierHead``; keys ``head.fc.*``), or pooling by name, dropout and a bare classifier ``head``
built by :meth:`_make_classifier` (keys ``head.*``), set up with :meth:`_init_pooled_head`.

An isotropic family (one patch grid, a ViT's ``patch_embed`` / ``pos_embed`` / ``blocks`` / ``norm``) builds on
:class:`TokenBackbone` instead, which runs ``blocks`` one by one and owns token pooling (class token or mean),
intermediates as patch-token maps and block pruning; the family writes its ``_embed`` and, where its
blocks take more than the tokens, :meth:`TokenBackbone._block_args`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ClassifierHead, NormMlpClassifierHead, trunc_normal_
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from visionzoo.layers.checks import check_image_input
from visionzoo.layers.stages import check_nchw_only, prune_stages, run_stages, set_stage_checkpointing
from visionzoo.models._layout_hook import convert_foreign_layout

# The check reads Python values off the input, which a symbolic trace (torch.fx.symbolic_trace, torchvision's
# create_feature_extractor, timm's FX features) cannot; wrapped, it runs as one call node in the traced graph.
torch.fx.wrap("check_image_input")

TIMM_HEADS = (ClassifierHead, NormMlpClassifierHead)


def pool_nchw(x: torch.Tensor, pool_type: str) -> torch.Tensor:
    """(B, C, H, W) → (B, C) by ``pool_type`` as timm's SelectAdaptivePool2d(flatten=True) does; '' keeps the map."""
    if pool_type == "avg":
        return x.mean((2, 3))
    if pool_type == "max":
        return x.amax((2, 3))
    if pool_type == "avgmax":
        return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
    return x


class Backbone(nn.Module):
    """timm's per-model methods over a family's ``stem``, ``stages`` and head."""

    model_name: str = "the model"
    # The pool types a pooled head takes; families with a timm head leave the check to it.
    global_pools: tuple[str, ...] = ("avg", "")
    # The layout forward_features returns: "NCHW" maps, or "NLC" tokens (isotropic models).
    feature_fmt: str = "NCHW"

    def __init__(self, in_chans: int, num_classes: int, min_input_size: int = 1, input_multiple: int = 1):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.min_input_size = min_input_size
        self.input_multiple = input_multiple
        self.grad_checkpointing = False
        # timm's checkpoint_path= and a plain load_state_dict both end here: convert timm's and official layouts.
        self.register_load_state_dict_pre_hook(convert_foreign_layout)

    def _init_pooled_head(
        self, num_classes: int, global_pool: str, drop_rate: float, device=None, dtype=None
    ) -> None:
        self.global_pool = self._checked_pool(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_classifier(num_classes, device=device, dtype=dtype)

    def _checked_pool(self, global_pool: str) -> str:
        if global_pool not in self.global_pools:
            widens = " (it changes the pooled width, which this head cannot take)" if global_pool == "catavgmax" else ""
            raise ValueError(
                f"{self.model_name} takes global_pool in {self.global_pools}, got {global_pool!r}{widens}"
            )
        return global_pool

    def _make_classifier(self, num_classes: int, device=None, dtype=None) -> nn.Module:
        """The pooled head's classifier on ``head_hidden_size`` features; the identity for ``num_classes`` 0."""
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(self.head_hidden_size, num_classes, device=device, dtype=dtype)
        trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head

    def _factory_kwargs(self) -> dict[str, Any]:
        reference = next(self.parameters())
        return dict(device=reference.device, dtype=reference.dtype)

    def check_input(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, self.min_input_size, self.model_name, self.input_multiple)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^head\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_stage_checkpointing(self, enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc if isinstance(self.head, TIMM_HEADS) else self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if isinstance(self.head, TIMM_HEADS):
            self.head.reset(num_classes, global_pool)
            return
        if global_pool is not None:
            self.global_pool = self._checked_pool(global_pool)
        self.head = self._make_classifier(num_classes, **self._factory_kwargs()).train(self.training)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The checked input to the first stage's input."""
        return self.stem(x)

    def stage_feature(self, x: torch.Tensor) -> torch.Tensor:
        """A stage output as the NCHW map forward_intermediates returns."""
        return x

    def forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output to forward_features' output (a final norm, conv or layout change)."""
        return x

    def prune_neck(self) -> None:
        """Remove what forward_neck adds, once the stages it was sized for are pruned."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_neck(self.stages(self.forward_stem(x)))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return pool_nchw(x, self.global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if isinstance(self.head, TIMM_HEADS):
            return self.head(x, pre_logits=pre_logits)
        x = self.head_drop(self.pool(x))
        if pre_logits:
            return x
        if self.global_pool or self.feature_fmt == "NLC":
            return self.head(x)
        return self.head(x.movedim(1, -1)).movedim(-1, 1)  # an unpooled map is classified at every position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs as NCHW maps at ``indices`` (timm's meaning: last n if int, all if None); ``norm``
        passes the last stage's map through the neck, as forward_features does."""
        check_nchw_only(output_fmt, self.model_name)
        self.check_input(x)
        last_index = len(self.stages) - 1

        def keep(index: int, feature: torch.Tensor) -> torch.Tensor:
            return self.forward_neck(feature) if norm and index == last_index else self.stage_feature(feature)

        x, intermediates = run_stages(
            self.stages, self.forward_stem(x), indices, stop_early or intermediates_only, keep=keep
        )
        if intermediates_only:
            return intermediates
        ran_all = not stop_early or feature_take_indices(len(self.stages), indices)[1] == last_index
        return (self.forward_neck(x) if ran_all else self.stage_feature(x)), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last of ``indices`` (the neck with ``prune_norm``); the head goes too when
        it was sized for a dropped stage. Returns the kept indices."""
        take_indices, max_index = prune_stages(self, indices)
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_norm:
            self.prune_neck()
        if prune_head:
            self.reset_classifier(0, "")
            if isinstance(self.head, NormMlpClassifierHead):
                self.head.reset(0, reset_other=True)  # its norm is sized for the last stage
        return take_indices


class TokenBackbone(Backbone):
    """timm's per-model methods over an isotropic family's ``patch_embed``, ``blocks`` and ``norm``.

    The family sets ``patch_size`` and ``grid_size`` (the patch grid it was built for) and ``num_prefix_tokens``
    (1 while it has a class token, which leads the tokens), and writes ``_embed(x, grid_size)``: the checked image
    to the first block's input on a ``grid_size`` patch grid. Blocks may keep a (B, H, W, C) map instead of
    tokens: the family's :meth:`_tokens` flattens it for the outputs.
    """

    global_pools = ("token", "avg", "")
    feature_fmt = "NLC"
    num_prefix_tokens = 0

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set(self._token_parameters())

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        stem = "|".join(f"^{name}" for name in (*self._token_parameters(), "patch_embed"))
        return dict(stem=stem, blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    def _token_parameters(self) -> tuple[str, ...]:
        return tuple(name for name in ("cls_token", "pos_embed") if name in self._parameters)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _checked_pool(self, global_pool: str) -> str:
        global_pool = super()._checked_pool(global_pool)
        if global_pool == "token" and not self.num_prefix_tokens:
            raise ValueError("token pooling needs the class token, which prune_intermediate_layers removed")
        return global_pool

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "token":
            return x[:, 0]
        if self.global_pool == "avg":
            return x[:, self.num_prefix_tokens:].mean(dim=1)
        return x

    def _patch_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The checked input's patch grid."""
        self.check_input(x)
        height, width = x.shape[-2:]
        return height // self.patch_size, width // self.patch_size

    def _with_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens → (B, 1 + N, C), the class token first."""
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)

    def _block_args(self, grid_size: tuple[int, int]) -> tuple:
        """What each block takes after its input."""
        return ()

    def _run_block(self, index: int, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        block = self.blocks[index]
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, *self._block_args(grid_size), use_reentrant=False)
        return block(x, *self._block_args(grid_size))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """A block output as (B, L, C) tokens."""
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised tokens (B, P + N, C), the ``num_prefix_tokens`` class token first."""
        grid_size = self._patch_grid(x)
        x = self._embed(x, grid_size)
        for index in range(len(self.blocks)):
            x = self._run_block(index, x, grid_size)
        return self._tokens(self.norm(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Block outputs as patch-token maps (B, C, H, W) or tokens (B, H·W, C), class token removed; ``indices``
        as in timm; ``norm`` passes each through the final norm."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        grid_size = self._patch_grid(x)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        last_index = max_index if stop_early or intermediates_only else len(self.blocks) - 1
        x = self._embed(x, grid_size)
        intermediates = []
        for index in range(last_index + 1):
            x = self._run_block(index, x, grid_size)
            if index in take_indices:
                tokens = self._tokens(self.norm(x) if norm else x)
                patch_tokens = tokens[:, tokens.shape[1] - grid_size[0] * grid_size[1]:]
                if output_fmt == "NCHW":
                    patch_tokens = patch_tokens.reshape(x.shape[0], *grid_size, -1).permute(0, 3, 1, 2).contiguous()
                intermediates.append(patch_tokens)
        if intermediates_only:
            return intermediates
        return self._tokens(self.norm(x)), intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (the final norm with ``prune_norm``). Returns the kept
        indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices
