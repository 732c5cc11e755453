# S2AFormer-XS (reconstruction) Semantic FPN 40k (paper: mIoU 39.2, second-hand; the benchmark record's
# "Panoptic FPN" read as Semantic FPN): the PVT protocol, a zoo choice (spec §7).
_base_ = ['../_base_/fpn_vz_512x512_40k_ade20k.py']
model = dict(backbone=dict(model_name='vz_s2aformer_xs'), neck=dict(in_channels=[32, 64, 192, 512]))
