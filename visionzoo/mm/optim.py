"""An optimiser constructor that exempts each zoo backbone's ``no_weight_decay()`` parameters from decay."""
from __future__ import annotations

import fnmatch

from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from visionzoo.mm.backbone import VisionZooBackbone


def _exempt_names(backbone: VisionZooBackbone, prefix: str) -> list[str]:
    patterns = backbone.model.no_weight_decay()
    names = [name for name, _ in backbone.model.named_parameters()]
    return [
        f"{prefix}model.{name}"
        for name in names
        if any(name == p or name.startswith(p + ".") or fnmatch.fnmatch(name, p) for p in patterns)
    ]


class ZooOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor, plus decay 0 for the position biases, tokens and tables that each
    zoo family lists in ``no_weight_decay()`` (the papers' exemptions); norms and biases follow
    ``paramwise_cfg`` as usual (``norm_decay_mult=0.`` in our configs)."""

    def __call__(self, model: nn.Module) -> OptimWrapper:
        target = model.module if hasattr(model, "module") else model
        custom_keys = dict(self.paramwise_cfg.get("custom_keys", {}))
        for module_name, module in target.named_modules():
            if isinstance(module, VisionZooBackbone):
                prefix = f"{module_name}." if module_name else ""
                for name in _exempt_names(module, prefix):
                    custom_keys.setdefault(name, dict(decay_mult=0.0))
        if custom_keys:
            self.paramwise_cfg = {**self.paramwise_cfg, "custom_keys": custom_keys}
            self._validate_cfg()
        return super().__call__(model)
