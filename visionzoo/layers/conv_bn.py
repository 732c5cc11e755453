"""Conv + BatchNorm and BatchNorm + Linear units that fold into one layer for inference."""
from __future__ import annotations

import torch
from torch import nn


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv computing bn(conv(x)) with the BN statistics of eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias + (conv_bias - bn.running_mean) * scale)
    return fused


def fuse_bn_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    """A linear layer computing linear(bn(x)) with the BN statistics of eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    fused = nn.Linear(
        linear.in_features, linear.out_features, bias=True, device=linear.weight.device, dtype=linear.weight.dtype
    )
    linear_bias = linear.bias if linear.bias is not None else torch.zeros_like(fused.bias)
    with torch.no_grad():
        fused.weight.copy_(linear.weight * scale[None, :])
        fused.bias.copy_(linear.weight @ shift + linear_bias)
    return fused


class ConvNorm(nn.Sequential):
    """Conv2d (no bias) followed by BatchNorm2d; ``bn_weight_init=0`` starts a residual branch at zero."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        bn_weight_init: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        padding = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False, device=device, dtype=dtype
        )
        self.bn = nn.BatchNorm2d(out_chs, device=device, dtype=dtype)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        return fuse_conv_bn(self.conv, self.bn)


class NormLinear(nn.Sequential):
    """BatchNorm1d followed by Linear, the classifier form of several efficient ViTs."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, std: float = 0.02, device=None, dtype=None):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features, device=device, dtype=dtype)
        self.linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        nn.init.trunc_normal_(self.linear.weight, std=std)
        if bias:
            nn.init.zeros_(self.linear.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        return fuse_bn_linear(self.bn, self.linear)
