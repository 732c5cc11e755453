# OverLoCK-T UperNet 160k (paper: mIoU 50.3): AdamW lr 6e-5, wd 0.01, poly schedule, auxiliary FCN head on
# the stride-16 level; a LayerNorm on each level as the official dense backbone.
_base_ = ['../_base_/upernet_vz_512x512_160k_ade20k.py']
model = dict(
    backbone=dict(model_name='vz_overlock_t', drop_path_rate=0.2, out_norms=True),
    decode_head=dict(in_channels=[64, 128, 384, 640]),
    auxiliary_head=dict(in_channels=384),
)
