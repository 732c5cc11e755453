# DaViT-B Mask R-CNN 1x (paper: box AP 48.2, mask AP 43.3); drop path 0.2, the dense base config's default.
_base_ = ['./mask-rcnn_vz-davit-tiny_fpn_1x_coco.py']
model = dict(
    backbone=dict(model_name='vz_davit_base', drop_path_rate=0.2),
    neck=dict(in_channels=[128, 256, 512, 1024]),
)
