# OverLoCK-S Mask R-CNN 3x with multi-scale training (paper: box AP 51.0, mask AP 45.0): AdamW lr 1e-4, wd 0.05
# with no decay for norms; a LayerNorm on each level as the official dense backbone.
_base_ = ['../_base_/mask-rcnn_vz_fpn_ms-crop-3x_coco.py']
model = dict(
    backbone=dict(model_name='vz_overlock_s', drop_path_rate=0.4, out_norms=True),
    neck=dict(in_channels=[64, 128, 448, 640]),
)
