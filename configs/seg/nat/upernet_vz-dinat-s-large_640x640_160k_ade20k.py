# DiNAT-s-Large UperNet 160k (paper: mIoU 53.4): AdamW lr 6e-5, wd 0.01, drop path 0.3,
# the official config's per-layer dilations for 640x640 crops
# (SHI-Labs/Neighborhood-Attention-Transformer segmentation/configs); auxiliary FCN head on stage 3.
# Starts from the IN-22k pre-training: --cfg-options model.backbone.init_cfg.checkpoint=<vz_dinat_s_large.in22k file>.
_base_ = ['../_base_/upernet_vz_640x640_160k_ade20k.py']
model = dict(
    backbone=dict(
        model_name='vz_dinat_s_large', drop_path_rate=0.3, out_norms=True,
        model_kwargs=dict(dilations=((1, 20), (1, 10), (1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5), (1, 2))),
    ),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768),
)
