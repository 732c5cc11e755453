# DaViT-S UperNet 160k (paper: mIoU 48.8); the paper states drop path only for T, whose 0.3 is kept.
_base_ = ['./upernet_vz-davit-tiny_512x512_160k_ade20k.py']
model = dict(backbone=dict(model_name='vz_davit_small'))
