"""Convolutional GLU feed-forward (TransNeXt, Shi, CVPR 2024, arXiv 2311.17132, §3.4)."""
from __future__ import annotations

import torch
from torch import nn


class ConvGlu(nn.Module):
    """GLU whose gated half passes a 3×3 depthwise conv: y = fc2(act(dwconv(a)) ⊙ g), [a, g] = fc1(x).

    Works on channels-last maps (B, H, W, C); the depthwise conv gives each token its neighbourhood as
    gating context, which lets the model drop positional embeddings.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features * 2, device=device, dtype=dtype)
        self.dwconv = nn.Conv2d(
            hidden_features, hidden_features, 3, padding=1, groups=hidden_features, device=device, dtype=dtype
        )
        self.act = act_layer()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.fc1(x).chunk(2, dim=-1)
        value = self.act(self.dwconv(value.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        return self.drop(self.fc2(self.drop(value * gate)))
