# Hierarchical SpectFormer-B Mask R-CNN 1x on COCO (see the S config for what the paper does and does not give).
_base_ = ['./mask-rcnn_vz-spectformer-h-s_fpn_1x_coco.py']
model = dict(backbone=dict(model_name='vz_spectformer_h_b'), neck=dict(in_channels=[64, 128, 320, 512]))
