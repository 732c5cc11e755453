"""nn.Modules with parameters that the families share: attention blocks, MLPs, norms, patch embeds, conv-BN units."""
from visionzoo.layers.attention import MultiHeadSelfAttention, SingleHeadSelfAttention
from visionzoo.layers.checks import check_image_input
from visionzoo.layers.conv_bn import ConvNorm, NormLinear, fuse_bn_linear, fuse_conv_bn
from visionzoo.layers.drop import DropPath, drop_path
from visionzoo.layers.fuse import fuse_model
from visionzoo.layers.mlp import ConvNormFfn, Mlp
from visionzoo.layers.patch_embed import ConvStem, PatchEmbed
from visionzoo.layers.point_conv import ADGConv, GlobalPerceptionModule, HOConv, LOConv, LSFConv, ResidualCrossAttention
from visionzoo.layers.residual import Residual

__all__ = [
    "ConvNorm",
    "ConvNormFfn",
    "ConvStem",
    "DropPath",
    "Mlp",
    "MultiHeadSelfAttention",
    "NormLinear",
    "PatchEmbed",
    "Residual",
    "SingleHeadSelfAttention",
    "check_image_input",
    "drop_path",
    "fuse_bn_linear",
    "fuse_conv_bn",
    "fuse_model",
    "ADGConv",
    "GlobalPerceptionModule",
    "HOConv",
    "LOConv",
    "LSFConv",
    "ResidualCrossAttention",
]
