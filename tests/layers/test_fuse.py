"""fuse_model: BatchNorm folding into convs/linears and depthwise residual folding, on toy modules."""
import copy

import pytest
import torch
from torch import nn

from bn_stats import randomize_batchnorm
from visionzoo.layers.conv_bn import ConvNorm, NormLinear
from visionzoo.layers.fuse import fuse_model
from visionzoo.layers.mlp import ConvNormFfn
from visionzoo.layers.residual import Residual


def _assert_same_outputs(model: nn.Module, fused: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, actual = model.eval()(x), fused(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(module, kind) for module in model.modules())


def test_conv_bn_pair_in_sequential_folds():
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
    fused = fuse_model(model)
    assert _count(fused, nn.BatchNorm2d) == 0
    assert isinstance(fused[0], nn.Conv2d) and fused[0].bias is not None
    _assert_same_outputs(model, fused, torch.randn(2, 3, 9, 7))


def test_bn1d_linear_pair_folds():
    model = randomize_batchnorm(nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 4)))
    fused = fuse_model(model)
    assert _count(fused, nn.BatchNorm1d) == 0
    _assert_same_outputs(model, fused, torch.randn(5, 6))


def test_norm_linear_folds_to_linear():
    model = randomize_batchnorm(nn.Sequential(NormLinear(6, 4)))
    fused = fuse_model(model)
    assert isinstance(fused[0], nn.Linear)
    assert sum(p.numel() for p in fused.parameters()) == 6 * 4 + 4
    _assert_same_outputs(model, fused, torch.randn(5, 6))


def test_depthwise_residual_folds_into_one_conv():
    model = randomize_batchnorm(nn.Sequential(Residual(ConvNorm(8, 8, 3, groups=8))))
    fused = fuse_model(model)
    assert type(fused[0]) is nn.Conv2d and fused[0].groups == 8
    # Folding the identity adds no parameter: the conv gains only the BN's bias.
    assert sum(p.numel() for p in fused.parameters()) == 8 * 9 + 8
    _assert_same_outputs(model, fused, torch.randn(2, 8, 5, 6))


@pytest.mark.parametrize("branch", [
    lambda: ConvNorm(8, 8),          # dense 1x1: the identity is not one tap of the conv
    lambda: ConvNorm(8, 8, 3),       # dense 3x3: likewise
    lambda: ConvNormFfn(8, 16),      # two convs with an activation in between
], ids=["dense-1x1", "dense-3x3", "ffn"])
def test_non_foldable_residual_keeps_its_identity(branch):
    model = randomize_batchnorm(nn.Sequential(Residual(branch())))
    fused = fuse_model(model)
    assert isinstance(fused[0], Residual)
    assert _count(fused, nn.BatchNorm2d) == 0
    _assert_same_outputs(model, fused, torch.randn(2, 8, 5, 6))


def test_bn_without_running_stats_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, track_running_stats=False))
    fused = fuse_model(model)
    assert _count(fused, nn.BatchNorm2d) == 1


def test_fuse_model_copies_unless_inplace():
    model = randomize_batchnorm(nn.Sequential(ConvNorm(3, 4), nn.ReLU()))
    original = copy.deepcopy(model.state_dict())
    fuse_model(model.train())
    assert model.training and isinstance(model[0], ConvNorm)
    assert all(torch.equal(original[key], value) for key, value in model.state_dict().items())
    fused = fuse_model(model, inplace=True)
    assert fused is model and not model.training and isinstance(model[0], nn.Conv2d)
