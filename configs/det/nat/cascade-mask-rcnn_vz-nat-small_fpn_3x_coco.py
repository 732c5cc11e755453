# NAT-Small Cascade Mask R-CNN 3x (paper: box AP 52.0, mask AP 44.9): AdamW lr 1e-4, wd 0.05, drop path 0.3,
# dilation 1 everywhere
# (SHI-Labs/Neighborhood-Attention-Transformer detection/configs). Each level gets its own LayerNorm.
_base_ = ['../_base_/cascade-mask-rcnn_vz_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        model_name='vz_nat_small', drop_path_rate=0.3, out_norms=True,
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
