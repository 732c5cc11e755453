# DiNAT-s-Tiny Cascade Mask R-CNN 3x (paper: box AP 51.0, mask AP 44.1): AdamW lr 1e-4, wd 0.05, drop path 0.3,
# the official config's per-layer dilations for COCO-sized inputs
# (SHI-Labs/Neighborhood-Attention-Transformer detection/configs). Each level gets its own LayerNorm.
_base_ = ['../_base_/cascade-mask-rcnn_vz_fpn_3x_coco.py']
model = dict(
    backbone=dict(
        model_name='vz_dinat_s_tiny', drop_path_rate=0.3, out_norms=True,
        model_kwargs=dict(dilations=((1, 28), (1, 14), (1, 3, 1, 5, 1, 7), (1, 3))),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
