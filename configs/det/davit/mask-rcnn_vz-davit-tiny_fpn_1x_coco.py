# DaViT-T Mask R-CNN 1x (paper: box AP 45.0, mask AP 41.1). Each level gets its own LayerNorm, as in the
# paper's dense backbone; DETR-style multi-scale AutoAugment training; AdamW lr 1e-4, wd 0.05.
_base_ = ['../_base_/mask-rcnn_vz_fpn_ms-1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_davit_tiny', drop_path_rate=0.1, out_norms=True),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
