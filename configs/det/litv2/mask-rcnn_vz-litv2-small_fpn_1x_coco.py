# LITv2-S Mask R-CNN 1x with stage-3 HiLo window 2 (paper: box AP 44.9, mask AP 40.8): AdamW lr 2e-4,
# wd 1e-4 with no decay for norms, mixed precision.
_base_ = ['../_base_/mask-rcnn_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_litv2_small'),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
optim_wrapper = dict(type='AmpOptimWrapper', optimizer=dict(lr=2e-4, weight_decay=1e-4))
