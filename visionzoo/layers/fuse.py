"""The deploy form: fold every BatchNorm into its neighbouring conv/linear layer, everywhere in a model.

Modules that know how to fold themselves expose ``fuse() -> nn.Module`` (ConvNorm, NormLinear,
Residual, and family-specific blocks); anything else is searched for adjacent Conv2d→BatchNorm2d
and BatchNorm1d→Linear pairs inside ``nn.Sequential`` containers. Bench and export share this.
"""
from __future__ import annotations

import copy

from torch import nn

from visionzoo.layers.conv_bn import fuse_bn_linear, fuse_conv_bn


def _fuse_sequential_pairs(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    index = 0
    while index < len(names) - 1:
        first, second = seq._modules[names[index]], seq._modules[names[index + 1]]
        if isinstance(first, nn.Conv2d) and type(second) is nn.BatchNorm2d and second.track_running_stats:
            seq._modules[names[index]] = fuse_conv_bn(first, second)
            seq._modules[names[index + 1]] = nn.Identity()
            index += 2
        elif type(first) is nn.BatchNorm1d and first.track_running_stats and isinstance(second, nn.Linear):
            seq._modules[names[index]] = nn.Identity()
            seq._modules[names[index + 1]] = fuse_bn_linear(first, second)
            index += 2
        else:
            index += 1


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if hasattr(child, "fuse") and callable(child.fuse):
            fused = child.fuse()
            module._modules[name] = fused
            if fused is not child:
                _fuse_children(fused)
            else:
                _fuse_children(child)
        else:
            _fuse_children(child)
    if isinstance(module, nn.Sequential):
        _fuse_sequential_pairs(module)


def fuse_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` in deploy form (eval mode, BatchNorms folded); outputs agree with eval mode."""
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    _fuse_children(target)
    return target
