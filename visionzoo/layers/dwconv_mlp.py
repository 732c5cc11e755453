"""Token MLP with a depthwise 3×3 conv between the two linears (PVTv2 / LITv2 "DWMlp")."""
from __future__ import annotations

import math

import torch
from torch import nn


class DwConvMlp(nn.Module):
    """(B, H, W, C) → Linear(C→h) → depthwise 3×3 conv (bias) → activation → dropout → Linear(h→C) → dropout.

    The depthwise conv gives the MLP the local positional cue that replaces position embeddings; it comes
    before the activation. It starts at normal(0, √(2/9)) with zero bias (fan-out init), linears at
    trunc-normal(0.02) with zero bias.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, device=device, dtype=dtype)
        self.dwconv = nn.Conv2d(
            hidden_features, hidden_features, 3, padding=1, groups=hidden_features, device=device, dtype=dtype
        )
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, in_features, device=device, dtype=dtype)
        self.drop2 = nn.Dropout(drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in (self.fc1, self.fc2):
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
        nn.init.normal_(self.dwconv.weight, std=math.sqrt(2.0 / 9))
        nn.init.zeros_(self.dwconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.drop2(self.fc2(self.drop1(self.act(x))))
