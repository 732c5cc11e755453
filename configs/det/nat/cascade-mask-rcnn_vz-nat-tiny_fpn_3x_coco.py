# NAT-Tiny Cascade Mask R-CNN 3x (paper: box AP 51.4, mask AP 44.5): AdamW lr 1e-4, wd 0.05, drop path 0.3,
# dilation 1 everywhere
# (SHI-Labs/Neighborhood-Attention-Transformer detection/configs). Each level gets its own LayerNorm.
_base_ = ['../_base_/cascade-mask-rcnn_vz_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        model_name='vz_nat_tiny', drop_path_rate=0.3, out_norms=True,
    ),
    neck=dict(in_channels=[64, 128, 256, 512]),
)
