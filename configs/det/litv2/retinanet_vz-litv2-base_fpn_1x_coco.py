# LITv2-B RetinaNet 1x with stage-3 HiLo window 2 (paper: box AP 46.7).
_base_ = ['./retinanet_vz-litv2-small_fpn_1x_coco.py']
model = dict(backbone=dict(model_name='vz_litv2_base'), neck=dict(in_channels=[128, 256, 512, 1024]))
