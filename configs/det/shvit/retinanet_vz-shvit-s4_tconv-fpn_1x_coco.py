# SHViT-S4 RetinaNet 1x (paper: box AP 38.8). One transposed conv gives stride 8; a stride-2 conv on the last
# backbone map gives stride 128, for the strides 8-128 that RetinaNet's anchors expect.
_base_ = ['../_base_/retinanet_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_shvit_s4', out_indices=(0, 1, 2), norm_eval=True),
    neck=dict(
        _delete_=True, type='TransposedConvFPN', in_channels=[224, 336, 448], out_channels=256, num_outs=5,
        num_upsample=1, add_extra_convs='on_input'),
)
