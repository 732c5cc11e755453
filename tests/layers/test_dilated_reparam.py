"""The dilated reparam block: its merged conv computes the training form, and bad settings say what is wrong."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from bn_stats import randomize_batchnorm

from visionzoo.layers.dilated_reparam import DILATED_BRANCHES, DilatedReparamBlock, dilated_to_dense
from visionzoo.layers.fuse import fuse_model


def _randomised(block: DilatedReparamBlock) -> DilatedReparamBlock:
    return randomize_batchnorm(block).eval()


@pytest.mark.parametrize("kernel_size", sorted(DILATED_BRANCHES))
def test_fused_conv_equals_the_branches(kernel_size):
    block = _randomised(DilatedReparamBlock(6, kernel_size))
    fused = block.fuse()
    assert isinstance(fused, torch.nn.Conv2d) and fused.kernel_size == (kernel_size, kernel_size)
    x = torch.randn(2, 6, kernel_size + 3, kernel_size - 2)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), rtol=1e-5, atol=1e-5)


def test_fuse_model_replaces_the_block_and_deploy_form_has_the_merged_parameters_only():
    model = torch.nn.Sequential(_randomised(DilatedReparamBlock(4, 7)), torch.nn.BatchNorm2d(4)).eval()
    deployed = fuse_model(model)
    assert [type(m).__name__ for m in deployed] == ["Conv2d", "Identity"]
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-5, atol=1e-5)
    merged = DilatedReparamBlock(4, 7, deploy=True)
    assert sorted(merged.state_dict()) == ["lk_origin.bias", "lk_origin.weight"]
    assert merged.fuse() is merged.lk_origin


def test_dilated_kernel_becomes_a_centred_dense_kernel():
    kernel = torch.randn(3, 1, 3, 3)
    dense = dilated_to_dense(kernel, 2, 7)
    x = torch.randn(1, 3, 11, 11)
    torch.testing.assert_close(F.conv2d(x, dense, padding=3, groups=3),
                               F.conv2d(x, kernel, padding=2, dilation=2, groups=3))


def test_bad_settings_raise_with_the_reason():
    with pytest.raises(ValueError, match="kernel sizes \\[7, 13, 15, 17\\], got 11"):
        DilatedReparamBlock(4, 11)
    with pytest.raises(ValueError, match="does not centre in a 5x5 kernel"):
        dilated_to_dense(torch.randn(1, 1, 3, 3), 3, 5)
