# OverLoCK-T Mask R-CNN 1x (paper: box AP 48.3, mask AP 43.3): AdamW lr 2e-4, wd 0.05 with no decay for norms;
# a LayerNorm on each level as the official dense backbone (which also adds a projection of the Overview-Net's
# context to the stride-32 level: not reproduced, see docs/overlock.md).
_base_ = ['../_base_/mask-rcnn_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_overlock_t', drop_path_rate=0.2, out_norms=True),
    neck=dict(in_channels=[64, 128, 384, 640]),
)
optim_wrapper = dict(optimizer=dict(lr=2e-4))
