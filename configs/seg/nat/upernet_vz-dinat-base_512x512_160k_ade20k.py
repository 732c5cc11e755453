# DiNAT-Base UperNet 160k (paper: mIoU 49.6): AdamW lr 6e-5, wd 0.01, drop path 0.5,
# the official config's per-layer dilations for 512x512 crops
# (SHI-Labs/Neighborhood-Attention-Transformer segmentation/configs); auxiliary FCN head on stage 3.
_base_ = ['../_base_/upernet_vz_512x512_160k_ade20k.py']
model = dict(
    backbone=dict(
        model_name='vz_dinat_base', drop_path_rate=0.5, out_norms=True,
        model_kwargs=dict(dilations=((1, 16, 1), (1, 4, 1, 8), (1, 2, 1, 3, 1, 4) * 3, (1, 2, 1, 2, 1))),
    ),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512),
)
