# NAT-Base Cascade Mask R-CNN 3x (paper: box AP 52.3, mask AP 45.1): AdamW lr 1e-4, wd 0.05, drop path 0.5,
# dilation 1 everywhere
# (SHI-Labs/Neighborhood-Attention-Transformer detection/configs). Each level gets its own LayerNorm.
_base_ = ['../_base_/cascade-mask-rcnn_vz_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        model_name='vz_nat_base', drop_path_rate=0.5, out_norms=True,
    ),
    neck=dict(in_channels=[128, 256, 512, 1024]),
)
