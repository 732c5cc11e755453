# TransNeXt-Tiny Mask R-CNN 1x (paper: box AP 49.9, mask AP 44.6): single-scale 1333x800 training, per-level
# LayerNorms, AdamW lr 1e-4, wd 0.05 with no decay for norms and the attention's tokens, temperatures and biases.
_base_ = ['../_base_/mask-rcnn_vz_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_transnext_tiny', drop_path_rate=0.4, out_norms=True),
    neck=dict(in_channels=[72, 144, 288, 576]),
)
