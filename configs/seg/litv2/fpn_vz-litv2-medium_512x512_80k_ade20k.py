# LITv2-M Semantic FPN 80k (paper: mIoU 45.7).
_base_ = ['./fpn_vz-litv2-small_512x512_80k_ade20k.py']
model = dict(backbone=dict(model_name='vz_litv2_medium'))
