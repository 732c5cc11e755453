# DaViT-T RetinaNet 1x (paper: box AP 44.0); FPN from stage 2 with extra convs on the input, per-level LayerNorms.
_base_ = ['../_base_/retinanet_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_davit_tiny', drop_path_rate=0.1, out_norms=True),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
