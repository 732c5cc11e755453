"""Any ``vz_*`` model as an mmdetection / mmsegmentation backbone returning an NCHW pyramid."""
from __future__ import annotations

from typing import Sequence

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from visionzoo.models._checkpoint import CheckpointError, load_state_dict
from visionzoo.models._factory import create_model
from visionzoo.models._registry import family_of


def _first_param_index(names: list[str], module: str) -> int:
    return next(i for i, name in enumerate(names) if name.startswith(module + "."))


def _last_param_index(names: list[str], module: str) -> int:
    return max(i for i, name in enumerate(names) if name.startswith(module + "."))


class VisionZooBackbone(BaseModule):
    """A zoo classifier pruned to its feature pyramid.

    Args:
        model_name: a registered ``vz_*`` name.
        out_indices: which ``feature_info`` levels to return, increasing and without repeats (default: all).
        frozen_stages: -1 trains everything; 0 freezes the stem; k > 0 also freezes the first k levels.
        norm_eval: keep BatchNorm layers in eval mode while training (frozen statistics).
        drop_path_rate: stochastic depth of the backbone.
        out_norms: apply a LayerNorm over channels to each returned level (the dense form DaViT and
            TransNeXt use for detection); these norms are new parameters, trained from scratch.
        model_kwargs: further arguments of the zoo model (e.g. ``img_size``).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix=None)`` loads an ImageNet checkpoint in
            our layout or any layout the family's ``checkpoint_filter_fn`` converts (timm's, the official
            release's); ``prefix`` selects a sub-dict (e.g. ``'backbone.'`` of a detector checkpoint).
    """

    def __init__(
        self,
        model_name: str,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        drop_path_rate: float = 0.0,
        out_norms: bool = False,
        model_kwargs: dict | None = None,
        init_cfg: dict | None = None,
    ):
        super().__init__(init_cfg=None)
        self.pretrained_cfg = init_cfg
        self.model_name = model_name
        self.model = create_model(model_name, drop_path_rate=drop_path_rate, **(model_kwargs or {}))
        input_kind = family_of(model_name).input_kind
        if input_kind != "image":
            raise ValueError(f"{model_name} takes {input_kind}; mmdet/mmseg backbones take images")
        levels = len(self.model.feature_info)
        self.out_indices = tuple(range(levels)) if out_indices is None else tuple(out_indices)
        bad = [index for index in self.out_indices if not -levels <= index < levels]
        if bad:
            raise ValueError(f"{model_name} has {levels} feature levels; out_indices {bad} are out of range")
        self.out_indices = tuple(index % levels for index in self.out_indices)
        ordered = tuple(sorted(set(self.out_indices)))
        if self.out_indices != ordered:
            raise ValueError(
                f"out_indices {tuple(out_indices)} of {model_name} must name each level once, from fine to coarse "
                f"(the pyramid is returned in that order and necks expect it); use {ordered}"
            )
        if not -1 <= frozen_stages <= levels:
            raise ValueError(f"frozen_stages must be in [-1, {levels}] for {model_name}, got {frozen_stages}")
        self.feature_modules = [info["module"] for info in self.model.feature_info]
        self.channels = [self.model.feature_info[index]["num_chs"] for index in self.out_indices]
        self.strides = [self.model.feature_info[index]["reduction"] for index in self.out_indices]
        self.model.prune_intermediate_layers(indices=list(self.out_indices), prune_norm=False, prune_head=True)
        self.out_norms = (
            nn.ModuleList(LayerNorm2d(channels) for channels in self.channels) if out_norms else None
        )
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._freeze_stages()

    def init_weights(self) -> None:
        if not self.pretrained_cfg:
            return
        if self.pretrained_cfg.get("type") != "Pretrained" or not self.pretrained_cfg.get("checkpoint"):
            raise ValueError(
                f"{self.model_name}: init_cfg must be dict(type='Pretrained', checkpoint=PATH) with the ImageNet "
                f"weights of the backbone, got {self.pretrained_cfg}; set it with "
                f"--cfg-options model.backbone.init_cfg.checkpoint=PATH, or init_cfg=None to train from scratch"
            )
        self.load_pretrained(self.pretrained_cfg["checkpoint"], self.pretrained_cfg.get("prefix"))

    def load_pretrained(self, checkpoint: str, prefix: str | None = None) -> None:
        """Load classification weights; the classifier head and unused levels are dropped, nothing else may miss."""
        state_dict = load_state_dict(checkpoint)
        if prefix:
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
            if not state_dict:
                raise CheckpointError(f"{checkpoint} has no keys starting with prefix {prefix!r}")
        state_dict = family_of(self.model_name).checkpoint_filter_fn(state_dict, self.model)
        own = self.model.state_dict()
        missing = [key for key in own if key not in state_dict]
        if missing:
            raise CheckpointError(
                f"{checkpoint} lacks {len(missing)} backbone weights of {self.model_name}: {missing[:10]}"
            )
        mismatched = [key for key in own if state_dict[key].shape != own[key].shape]
        if mismatched:
            raise CheckpointError(f"{checkpoint} has wrong shapes for {self.model_name}: {mismatched[:10]}")
        unused = sorted(set(state_dict) - set(own))
        self.model.load_state_dict({key: state_dict[key] for key in own})
        MMLogger.get_current_instance().info(
            f"loaded {len(own)} tensors of {self.model_name} from {checkpoint}; "
            f"{len(unused)} not used by the pruned backbone (classifier head, unused levels)"
        )

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        names = [name for name, _ in self.model.named_parameters()]
        if self.frozen_stages == 0:
            stop = _first_param_index(names, self.feature_modules[0])
        else:
            stop = _last_param_index(names, self.feature_modules[self.frozen_stages - 1]) + 1
        for index, (_, param) in enumerate(self.model.named_parameters()):
            if index < stop:
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "VisionZooBackbone":
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.model.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        if mode and self.frozen_stages >= 0:
            frozen = {id(p) for p in self.model.parameters() if not p.requires_grad}
            for module in self.model.modules():
                own_params = list(module.parameters(recurse=False))
                if own_params and all(id(p) in frozen for p in own_params):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps = self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
        if self.out_norms is not None:
            maps = [norm(fmap) for norm, fmap in zip(self.out_norms, maps)]
        return tuple(maps)
