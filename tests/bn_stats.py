"""Test helper: BatchNorm layers with non-trivial statistics, so that folding them is actually exercised."""
import torch
from torch import nn


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (in place); return ``model``."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(shape, generator=generator) * 1.5 + 0.5)
            module.weight.copy_(torch.randn(shape, generator=generator) * 0.2 + 1.0)
            module.bias.copy_(torch.randn(shape, generator=generator) * 0.2)
    return model
