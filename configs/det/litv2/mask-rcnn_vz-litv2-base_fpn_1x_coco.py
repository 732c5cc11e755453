# LITv2-B Mask R-CNN 1x with stage-3 HiLo window 2 (paper: box AP 47.3, mask AP 42.6).
_base_ = ['./mask-rcnn_vz-litv2-small_fpn_1x_coco.py']
model = dict(backbone=dict(model_name='vz_litv2_base'), neck=dict(in_channels=[128, 256, 512, 1024]))
