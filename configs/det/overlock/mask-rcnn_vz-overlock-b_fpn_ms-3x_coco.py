# OverLoCK-B Mask R-CNN 3x with multi-scale training (paper: box AP 51.4, mask AP 45.3): AdamW lr 1e-4, wd 0.05
# with no decay for norms; a LayerNorm on each level as the official dense backbone.
_base_ = ['../_base_/mask-rcnn_vz_fpn_ms-crop-3x_coco.py']
model = dict(
    backbone=dict(model_name='vz_overlock_b', drop_path_rate=0.6, out_norms=True),
    neck=dict(in_channels=[80, 160, 528, 720]),
)
