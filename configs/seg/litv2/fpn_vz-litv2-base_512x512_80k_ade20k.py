# LITv2-B Semantic FPN 80k (paper: mIoU 47.2).
_base_ = ['./fpn_vz-litv2-small_512x512_80k_ade20k.py']
model = dict(backbone=dict(model_name='vz_litv2_base'), neck=dict(in_channels=[128, 256, 512, 1024]))
