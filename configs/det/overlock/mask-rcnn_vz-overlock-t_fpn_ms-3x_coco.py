# OverLoCK-T Mask R-CNN 3x with multi-scale training (paper: box AP 49.6, mask AP 43.9): AdamW lr 1e-4, wd 0.05
# with no decay for norms; a LayerNorm on each level as the official dense backbone.
_base_ = ['../_base_/mask-rcnn_vz_fpn_ms-crop-3x_coco.py']
model = dict(
    backbone=dict(model_name='vz_overlock_t', drop_path_rate=0.2, out_norms=True),
    neck=dict(in_channels=[64, 128, 384, 640]),
)
