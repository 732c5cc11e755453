# S2AFormer-mini (reconstruction) Semantic FPN 40k (paper: mIoU 36.7, second-hand; the benchmark record's
# "Panoptic FPN" read as Semantic FPN): the PVT protocol, a zoo choice (spec §7).
_base_ = ['../_base_/fpn_vz_512x512_40k_ade20k.py']
model = dict(backbone=dict(model_name='vz_s2aformer_mini'), neck=dict(in_channels=[24, 48, 128, 512]))
