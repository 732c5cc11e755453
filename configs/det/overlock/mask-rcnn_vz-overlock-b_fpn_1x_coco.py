# OverLoCK-B Mask R-CNN 1x (paper: box AP 49.9, mask AP 44.4): AdamW lr 2e-4, wd 0.05 with no decay for norms;
# a LayerNorm on each level as the official dense backbone (which also adds a projection of the Overview-Net's
# context to the stride-32 level: not reproduced, see docs/overlock.md).
_base_ = ['../_base_/mask-rcnn_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_overlock_b', drop_path_rate=0.6, out_norms=True),
    neck=dict(in_channels=[80, 160, 528, 720]),
)
optim_wrapper = dict(optimizer=dict(lr=2e-4))
