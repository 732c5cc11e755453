# DaViT-B UperNet 160k (paper: mIoU 49.4); the paper states drop path only for T, whose 0.3 is kept.
_base_ = ['./upernet_vz-davit-tiny_512x512_160k_ade20k.py']
model = dict(
    backbone=dict(model_name='vz_davit_base'),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
