"""Point-cloud layers of GPSFormer (Wang et al., "GPSFormer: A Global Perception and Local Structure Fitting-based
Transformer for Point Cloud Understanding", ECCV 2024, arXiv 2407.13519), as specs/gpsformer.md §4 fixes them.

Every tensor is channels-last: point features (B, N, C), grouped neighbourhoods (B, S, K, C), coordinates
(B, N, 3). The index work (FPS, kNN, ball query) is done by :mod:`visionzoo.ops.points`.

* :class:`ADGConv` — adaptive deformable graph convolution: features shifted by a learned offset query their kNN
  graph in feature space; edges [f_j − f̂_i ; f̂_i] are convolved and max-pooled.
* :class:`ResidualCrossAttention` — the shifted features attend to the ADGConv output (RCA).
* :class:`GlobalPerceptionModule` — ADGConv → RCA → multi-head self-attention → FFN (GPM).
* :class:`LSFConv` — local structure fitting: per ball-query scale a low-order (:class:`LOConv`) plus a
  high-order term (:class:`HOConv`, the basis sign(d)^s·|d|^p weighted by explicit geometry).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from visionzoo.layers.attention import MultiHeadSelfAttention
from visionzoo.layers.mlp import Mlp
from visionzoo.ops import scaled_dot_product_attention
from visionzoo.ops.points import ball_query, farthest_point_sample, index_points, knn_point

# HOConv's basis functions: (sign exponent s, learnable p, initial or fixed p); specs/gpsformer.md §2.3 and §4.4.
HOCONV_MODES = {
    "learnable": (1, True, 1.0),  # s = 1, learnable p (the paper's choice)
    "radial_learnable": (0, True, 1.0),  # s = 0, learnable p (ablation)
    "abf": (1, False, 1.0),  # affine basis function: s = 1, p = 1
    "rbf": (0, False, 2.0),  # radial basis function: s = 0, p = 2
}
# The exponent's range, TaylorSeg's (the authors' released form of the same power basis).
P_RANGE = (1.0, 3.0)


class PointBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last (channel) dim of a channels-last tensor of any rank: statistics over every other
    dim, as Conv1d/Conv2d-then-BN does on the channels-first layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class LinearNormAct(nn.Sequential):
    """Linear (no bias) → BatchNorm → activation on channels-last points; ``fuse()`` folds the norm."""

    def __init__(self, in_features: int, out_features: int, act: type[nn.Module] | None = nn.ReLU,
                 device=None, dtype=None):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.bn = PointBatchNorm(out_features, device=device, dtype=dtype)
        self.act = act() if act is not None else nn.Identity()

    @torch.no_grad()
    def fuse(self) -> nn.Sequential:
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        linear = nn.Linear(self.linear.in_features, self.linear.out_features, device=scale.device, dtype=scale.dtype)
        linear.weight.copy_(self.linear.weight * scale[:, None])
        linear.bias.copy_(self.bn.bias - self.bn.running_mean * scale)
        return nn.Sequential(linear, self.act)


class ADGConv(nn.Module):
    """f̂ = f + offset(f); for each i the ``k`` nearest f_j to f̂_i (feature space); edge
    Conv1×1([f_j − f̂_i ; f̂_i]) → BN → LeakyReLU(0.2) → max over j.

    The edge conv is linear, so W·[f_j − f̂_i ; f̂_i] = W₁f_j + (W₂ − W₁)f̂_i: both terms are computed per point
    and gathered, never as an (N, k, 2C) tensor. Returns (f̂, f^a)."""

    def __init__(self, dim: int, k: int = 20, device=None, dtype=None):
        super().__init__()
        self.k = k
        self.offset = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.edge = nn.Linear(2 * dim, dim, bias=False, device=device, dtype=dtype)
        self.bn = PointBatchNorm(dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shifted = x + self.offset(x)
        neighbours = knn_point(self.k, x, shifted)
        to_neighbour, to_centre = self.edge.weight.chunk(2, dim=1)
        edges = index_points(F.linear(x, to_neighbour), neighbours)
        edges = edges + F.linear(shifted, to_centre - to_neighbour).unsqueeze(2)
        return shifted, F.leaky_relu(self.bn(edges), 0.2).amax(dim=2)


class ResidualCrossAttention(nn.Module):
    """RCA: f^r = f^a + Attn(q = LN(f̂), k = v = LN(f^a)), multi-head over all points."""

    def __init__(self, dim: int, num_heads: int, device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.norm_kv = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.q = nn.Linear(dim, dim, device=device, dtype=dtype)
        self.kv = nn.Linear(dim, 2 * dim, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def forward(self, shifted: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
        batch, points, dim = aggregated.shape
        heads = lambda t: t.reshape(batch, points, -1, dim // self.num_heads).transpose(1, 2)  # noqa: E731
        q = heads(self.q(self.norm_q(shifted)))
        k, v = heads(self.kv(self.norm_kv(aggregated))).chunk(2, dim=1)
        out = scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, points, dim)
        return aggregated + self.proj(out)


class GlobalPerceptionModule(nn.Module):
    """GPM: ADGConv → RCA → pre-norm multi-head self-attention → pre-norm FFN, (B, N, C) → (B, N, C);
    15C² + 22C parameters."""

    def __init__(self, dim: int, k: int = 20, num_heads: int = 4, mlp_ratio: float = 2.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.adg = ADGConv(dim, k, **dd)
        self.rca = ResidualCrossAttention(dim, num_heads, **dd)
        self.norm_attn = nn.LayerNorm(dim, **dd)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=True, **dd)
        self.norm_mlp = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        for linear in (self.rca.q, self.rca.kv, self.rca.proj, self.attn.qkv, self.attn.proj,
                       self.mlp.fc1, self.mlp.fc2):
            trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.rca(*self.adg(x))
        x = x + self.attn(self.norm_attn(x))
        return x + self.mlp(self.norm_mlp(x))


class LOConv(nn.Module):
    """Low-order term: φ(f) per point, max over the neighbourhood, BN, ReLU (the flat, overall trend)."""

    def __init__(self, in_dim: int, dim: int, device=None, dtype=None):
        super().__init__()
        self.phi = nn.Linear(in_dim, dim, device=device, dtype=dtype)
        self.bn = PointBatchNorm(dim, device=device, dtype=dtype)

    def forward(self, features: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(index_points(self.phi(features), neighbours).amax(dim=2)))


class HOConv(nn.Module):
    """High-order term: d_ij = w_ij ⊙ (ψ(f_j) − ψ(f_i)), t = sign(d)^s·(|d| + 1e-6)^p, max_j BN(t), ReLU.

    ``mode`` picks the basis (:data:`HOCONV_MODES`); a learnable p is one scalar clamped to [1, 3]. The power
    runs in fp32 under autocast: |d|^3 overflows fp16 beyond |d| ≈ 40."""

    def __init__(self, in_dim: int, dim: int, mode: str = "learnable", device=None, dtype=None):
        super().__init__()
        if mode not in HOCONV_MODES:
            raise ValueError(f"HOConv mode must be one of {sorted(HOCONV_MODES)}, got {mode!r}")
        self.signed, learnable, p = HOCONV_MODES[mode]
        self.psi = nn.Linear(in_dim, dim, device=device, dtype=dtype)
        self.bn = PointBatchNorm(dim, device=device, dtype=dtype)
        p = torch.full((), p, device=device, dtype=dtype)
        if learnable:
            self.p = nn.Parameter(p)
        else:
            self.register_buffer("p", p)

    def forward(
        self, features: torch.Tensor, centre_index: torch.Tensor, neighbours: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        g = self.psi(features)
        delta = weight * (index_points(g, neighbours) - index_points(g, centre_index).unsqueeze(2))
        with torch.autocast(delta.device.type, enabled=False):
            delta = delta.float()
            basis = (delta.abs() + 1e-6).pow(self.p.float().clamp(*P_RANGE))
            if self.signed:
                basis = delta.sign() * basis
        return F.relu(self.bn(basis.to(weight.dtype)).amax(dim=2))


class LSFConv(nn.Module):
    """Local structure fitting convolution: FPS to ``num_centres``, then per (radius, K) scale a ball query,
    geometry weights ξ([p_i, p_j, p_j − p_i, ‖p_j − p_i‖]), LOConv + HOConv; the scales are concatenated and
    projected to ``out_dim``. (xyz (B, N, 3), f (B, N, C_in)) → (xyz (B, S, 3), f (B, S, out_dim))."""

    def __init__(
        self, in_dim: int, out_dim: int, scales: tuple[tuple[float, int], ...] = ((0.1, 8), (0.2, 16), (0.4, 32)),
        hoconv_mode: str = "learnable", device=None, dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.scales = tuple((float(radius), int(count)) for radius, count in scales)
        width = out_dim // 2
        self.geometry = nn.ModuleList(LinearNormAct(10, width, **dd) for _ in self.scales)
        self.low = nn.ModuleList(LOConv(in_dim, width, **dd) for _ in self.scales)
        self.high = nn.ModuleList(HOConv(in_dim, width, hoconv_mode, **dd) for _ in self.scales)
        self.merge = LinearNormAct(width * len(self.scales), out_dim, **dd)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor, centre_index: torch.Tensor) -> torch.Tensor:
        centres = index_points(xyz, centre_index)
        outputs = []
        for (radius, count), geometry, low, high in zip(self.scales, self.geometry, self.low, self.high):
            neighbours = ball_query(radius, count, xyz, centres)
            p_j = index_points(xyz, neighbours)
            p_i = centres.unsqueeze(2).expand_as(p_j)
            offset = p_j - p_i
            weight = geometry(torch.cat([p_i, p_j, offset, offset.norm(dim=-1, keepdim=True)], dim=-1))
            outputs.append(low(features, neighbours) + high(features, centre_index, neighbours, weight))
        return self.merge(torch.cat(outputs, dim=-1))


class GPSBlock(nn.Module):
    """One GPS block: GPM on all points, FPS to half of them, LSFConv to the new width;
    (xyz, f) → (centre xyz, centre features)."""

    def __init__(self, in_dim: int, out_dim: int, k: int = 20, num_heads: int = 4, hoconv_mode: str = "learnable",
                 random_start: bool = False, device=None, dtype=None):
        super().__init__()
        self.random_start = random_start
        self.grad_checkpointing = False
        self.gpm = GlobalPerceptionModule(in_dim, k, num_heads, device=device, dtype=dtype)
        self.lsf = LSFConv(in_dim, out_dim, hoconv_mode=hoconv_mode, device=device, dtype=dtype)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        xyz, features = inputs
        if self.grad_checkpointing and torch.is_grad_enabled():
            features = checkpoint(self.gpm, features, use_reentrant=False)
        else:
            features = self.gpm(features)
        centre_index = farthest_point_sample(xyz, xyz.shape[1] // 2, self.random_start and self.training)
        return index_points(xyz, centre_index), self.lsf(xyz, features, centre_index)
