# TransNeXt-Base UperNet 160k (paper: mIoU 53.0).
_base_ = ['./upernet_vz-transnext-tiny_512x512_160k_ade20k.py']
model = dict(
    backbone=dict(model_name='vz_transnext_base', drop_path_rate=0.7),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
)
