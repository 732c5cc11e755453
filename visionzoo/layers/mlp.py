"""Feed-forward blocks shared by the families."""
from __future__ import annotations

import torch
from torch import nn

from visionzoo.layers.conv_bn import ConvNorm


class Mlp(nn.Module):
    """Token MLP: Linear → activation → dropout → Linear → dropout, on (..., C) inputs."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, device=device, dtype=dtype)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, device=device, dtype=dtype)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class ConvNormFfn(nn.Module):
    """Pointwise FFN on (B, C, H, W) maps: ConvNorm(C→h) → activation → ConvNorm(h→C), the second BN starting at 0."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        act_layer: type[nn.Module] = nn.ReLU,
        out_bn_weight_init: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.pw1 = ConvNorm(dim, hidden_dim, device=device, dtype=dtype)
        self.act = act_layer()
        self.pw2 = ConvNorm(hidden_dim, dim, bn_weight_init=out_bn_weight_init, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))
