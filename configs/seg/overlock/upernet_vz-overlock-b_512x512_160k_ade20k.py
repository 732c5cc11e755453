# OverLoCK-B UperNet 160k (paper: mIoU 51.7): AdamW lr 6e-5, wd 0.01, poly schedule, auxiliary FCN head on
# the stride-16 level; a LayerNorm on each level as the official dense backbone.
_base_ = ['../_base_/upernet_vz_512x512_160k_ade20k.py']
model = dict(
    backbone=dict(model_name='vz_overlock_b', drop_path_rate=0.5, out_norms=True),
    decode_head=dict(in_channels=[80, 160, 528, 720]),
    auxiliary_head=dict(in_channels=528),
)
