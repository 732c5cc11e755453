# LITv2-S Semantic FPN 80k (paper: mIoU 44.3): AdamW lr 1e-4, wd 1e-4.
_base_ = ['../_base_/fpn_vz_512x512_80k_ade20k.py']
model = dict(backbone=dict(model_name='vz_litv2_small'), neck=dict(in_channels=[96, 192, 384, 768]))
