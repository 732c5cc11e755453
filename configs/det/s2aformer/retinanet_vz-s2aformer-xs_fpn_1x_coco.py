# S2AFormer-XS (reconstruction) RetinaNet 1x (paper: box AP 37.9, second-hand): mmdetection 1x,
# AdamW lr 1e-4, wd 0.05, batch 16, single scale 1333x800; the zoo reproduction protocol (spec §7): the paper's detection settings are unverified.
_base_ = ['../_base_/retinanet_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_s2aformer_xs'),
    neck=dict(in_channels=[32, 64, 192, 512]),
)
