# NAT-Base UperNet 160k (paper: mIoU 48.5): AdamW lr 6e-5, wd 0.01, drop path 0.5,
# dilation 1 everywhere
# (SHI-Labs/Neighborhood-Attention-Transformer segmentation/configs); auxiliary FCN head on stage 3.
_base_ = ['../_base_/upernet_vz_512x512_160k_ade20k.py']
model = dict(
    backbone=dict(
        model_name='vz_nat_base', drop_path_rate=0.5, out_norms=True,
    ),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
