# NAT-Tiny UperNet 160k (paper: mIoU 47.1): AdamW lr 6e-5, wd 0.01, drop path 0.3, dilation 1 everywhere
# (SHI-Labs/Neighborhood-Attention-Transformer segmentation/configs); auxiliary FCN head on stage 3.
_base_ = ['../_base_/upernet_vz_512x512_160k_ade20k.py']
model = dict(
    backbone=dict(
        model_name='vz_nat_tiny', drop_path_rate=0.3, out_norms=True,
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256),
)
