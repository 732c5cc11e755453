# SHViT-S4 Mask R-CNN 1x (paper: box AP 39.0, mask AP 35.9). The backbone's stride-16/32/64 maps reach
# strides 4 and 8 through two transposed convs; its BatchNorms stay in eval mode while training.
_base_ = ['../_base_/mask-rcnn_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_shvit_s4', out_indices=(0, 1, 2), norm_eval=True),
    neck=dict(
        _delete_=True, type='TransposedConvFPN', in_channels=[224, 336, 448], out_channels=256, num_outs=5,
        num_upsample=2),
)
