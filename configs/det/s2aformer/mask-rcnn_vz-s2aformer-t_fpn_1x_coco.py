# S2AFormer-T (reconstruction) Mask R-CNN 1x (paper: box AP 37.6, mask AP 35.4, second-hand): mmdetection
# 1x, AdamW lr 1e-4, wd 0.05, batch 16, single scale 1333x800; the zoo reproduction protocol (spec §7): the paper's detection settings are unverified.
_base_ = ['../_base_/mask-rcnn_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_s2aformer_t'),
    neck=dict(in_channels=[32, 64, 128, 512]),
)
